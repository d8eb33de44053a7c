//! Whether the agent's loop still turns, for `/healthz`: [`Liveness`] and the bounds it judges by.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::time::Instant;

use crate::agent_state::Phase;

/// How far past its bound a pause between the agent's rounds, or a round, may run before
/// `/healthz` calls the agent stuck: a metric refresh during a pause may run a sentinel command
/// for up to a minute, and a busy node may be slow to schedule the agent.
pub const GRACE: Duration = Duration::from_secs(120);

/// The longest a round may take besides its drain and its reboot: a handful of API requests, each
/// of which may wait out kube's 295 s read time-out when the API server stops answering, a
/// sentinel command (60 s at most), blockers (10 s) and notifications (35 s each).
pub const ROUND_LIMIT: Duration = Duration::from_secs(15 * 60);

/// How long the steps of a round that may take long may legitimately last, on top of
/// [`ROUND_LIMIT`]; `None`: no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseLimits {
    /// The drain, from the start of the `draining` phase to the reboot request: `--drain-delay`,
    /// `--drain-timeout` and `--reboot-delay`. Without `--drain-timeout` a drain has no bound.
    pub drain: Option<Duration>,
    /// The reboot request and the wait for it to take effect ([`Rebooter::longest`]).
    ///
    /// [`Rebooter::longest`]: crate::reboot::Rebooter::longest
    pub reboot: Option<Duration>,
}

impl PhaseLimits {
    /// How long the rest of a round may take once it enters `phase`; `None`: no bound.
    pub fn of(&self, phase: Phase) -> Option<Duration> {
        let own = match phase {
            Phase::Draining => self.drain?,
            Phase::Rebooting => self.reboot?,
            _ => Duration::ZERO,
        };
        Some(own.saturating_add(ROUND_LIMIT))
    }
}

/// What the agent's loop is doing, as far as `/healthz` is concerned.
#[derive(Debug, Clone, Copy)]
enum Doing {
    /// Pausing between rounds until `due` (`None`: a pause without end).
    Pausing { due: Option<Instant> },
    /// Running a round, in `phase` if it said so, since `since`, for at most `limit`.
    Working {
        phase: Option<Phase>,
        since: Instant,
        limit: Option<Duration>,
    },
}

/// Why `/healthz` calls the agent stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stuck {
    /// The pause between rounds ran `late` past its end, [`GRACE`] included.
    Pause { late: Duration },
    /// A round (in `phase`, when it entered one) has run for `running`, past its `limit` and
    /// [`GRACE`].
    Round {
        phase: Option<Phase>,
        running: Duration,
        limit: Duration,
    },
}

/// Whether the agent's loop still turns, for `/healthz`. The loop says how long each pause
/// between its rounds may last, and each round how long it may take: [`ROUND_LIMIT`], and once it
/// enters a phase that may take long (a drain, the reboot) that phase's [`PhaseLimits`] on top.
/// A pause or a round past its bound by more than [`GRACE`] makes `/healthz` answer 503, so that
/// the liveness probe restarts an agent whose loop stalled (the lock and the Node say where a
/// fresh one resumes). A drain without `--drain-timeout` has no bound: it is never called stuck.
#[derive(Debug)]
pub struct Liveness {
    limits: PhaseLimits,
    doing: Mutex<Doing>,
}

impl Default for Liveness {
    /// Without phase limits: a drain or a reboot request is never called stuck.
    fn default() -> Self {
        Liveness::new(PhaseLimits::default())
    }
}

impl Liveness {
    pub fn new(limits: PhaseLimits) -> Liveness {
        Liveness {
            limits,
            // Until the first pause, the start-up counts as a round.
            doing: Mutex::new(Doing::Working {
                phase: None,
                since: Instant::now(),
                limit: Some(ROUND_LIMIT),
            }),
        }
    }

    fn set(&self, doing: Doing) {
        *self.doing.lock().unwrap_or_else(|e| e.into_inner()) = doing;
    }

    /// The loop pauses for at most `longest`.
    pub fn pausing(&self, longest: Duration) {
        // A deadline past what the clock can hold is never overdue.
        let due = Instant::now().checked_add(longest.saturating_add(GRACE));
        self.set(Doing::Pausing { due });
    }

    /// The loop starts a round, which may take [`ROUND_LIMIT`].
    pub fn working(&self) {
        self.set(Doing::Working {
            phase: None,
            since: Instant::now(),
            limit: Some(ROUND_LIMIT),
        });
    }

    /// The round enters `phase`: from now, it may take as long as [`PhaseLimits::of`] says.
    pub fn entering(&self, phase: Phase) {
        self.set(Doing::Working {
            phase: Some(phase),
            since: Instant::now(),
            limit: self.limits.of(phase),
        });
    }

    /// Whether, and how, the loop is stuck; `None` while it keeps its time.
    fn stuck(&self) -> Option<Stuck> {
        let doing = *self.doing.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match doing {
            Doing::Pausing { due } => {
                let late = now.checked_duration_since(due?)?;
                (!late.is_zero()).then_some(Stuck::Pause { late })
            }
            Doing::Working { phase, since, limit } => {
                let limit = limit?;
                let running = now.saturating_duration_since(since);
                (running > limit.saturating_add(GRACE)).then_some(Stuck::Round {
                    phase,
                    running,
                    limit,
                })
            }
        }
    }

    /// The answer of `/healthz`.
    pub(super) fn report(&self) -> (StatusCode, String) {
        let grace = whole_seconds(GRACE);
        let text = match self.stuck() {
            None => return (StatusCode::OK, "ok\n".to_owned()),
            Some(Stuck::Pause { late }) => {
                let late = whole_seconds(late);
                tracing::error!(
                    overdue = %late,
                    "the agent's loop is stalled: its pause between rounds ran past its end; reporting unhealthy"
                );
                format!("stalled: the pause between rounds is {late} past its end (grace {grace} included)\n")
            }
            Some(Stuck::Round {
                phase,
                running,
                limit,
            }) => {
                let what = match phase {
                    Some(Phase::Draining) => "the drain (phase draining)".to_owned(),
                    Some(Phase::Rebooting) => "the reboot request (phase rebooting)".to_owned(),
                    Some(phase) => format!("a round (phase {phase})"),
                    None => "a round".to_owned(),
                };
                let (running, limit) = (whole_seconds(running), whole_seconds(limit));
                tracing::error!(
                    stuck = %what,
                    running = %running,
                    limit = %limit,
                    "the agent's loop is stuck: a round ran past its bound; reporting unhealthy"
                );
                format!(
                    "stuck: {what} has run for {running}, past its bound of {limit} and a grace of {grace}\n"
                )
            }
        };
        (StatusCode::SERVICE_UNAVAILABLE, text)
    }
}

/// `d` in whole seconds, written as Go writes durations (`2m5s`).
fn whole_seconds(d: Duration) -> crate::duration::GoDuration {
    crate::duration::GoDuration::from_secs(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_once_a_pause_runs_past_its_end_and_the_grace() {
        let live = Liveness::default();
        assert_eq!(live.report().0, StatusCode::OK, "healthy before the first pause");

        live.pausing(Duration::from_secs(3600));
        tokio::time::advance(Duration::from_secs(3600) + GRACE).await;
        assert_eq!(
            live.report(),
            (StatusCode::OK, "ok\n".to_owned()),
            "within the grace"
        );

        tokio::time::advance(Duration::from_secs(65)).await;
        assert!(
            matches!(live.stuck(), Some(Stuck::Pause { late }) if late == Duration::from_secs(65)),
            "{:?}",
            live.stuck()
        );
        assert_eq!(
            live.report(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stalled: the pause between rounds is 1m5s past its end (grace 2m0s included)\n".to_owned()
            )
        );

        // A round starts: the pause's deadline no longer counts.
        live.working();
        assert_eq!(live.report().0, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_once_a_round_runs_past_its_bound_and_the_grace() {
        let live = Liveness::default();
        live.working();
        tokio::time::advance(ROUND_LIMIT + GRACE).await;
        assert_eq!(live.report().0, StatusCode::OK, "within the grace");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            live.report(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stuck: a round has run for 17m1s, past its bound of 15m0s and a grace of 2m0s\n".to_owned()
            )
        );
        // The next pause makes it healthy again.
        live.pausing(Duration::from_secs(60));
        assert_eq!(live.report().0, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_is_judged_by_its_own_bound_from_its_start() {
        let limits = PhaseLimits {
            drain: Some(Duration::from_secs(3600)),
            reboot: Some(crate::reboot::COMMAND_TIMEOUT + crate::reboot::EFFECT_LIMIT),
        };
        let live = Liveness::new(limits);
        live.working();
        // A round that spent 10 minutes before its drain still gets the drain's full bound.
        tokio::time::advance(Duration::from_secs(600)).await;
        live.entering(Phase::Draining);
        tokio::time::advance(Duration::from_secs(3600) + ROUND_LIMIT + GRACE).await;
        assert_eq!(
            live.report().0,
            StatusCode::OK,
            "a drain within --drain-timeout is not stuck"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            live.stuck(),
            Some(Stuck::Round {
                phase: Some(Phase::Draining),
                running: Duration::from_secs(3600) + ROUND_LIMIT + GRACE + Duration::from_secs(1),
                limit: Duration::from_secs(3600) + ROUND_LIMIT,
            })
        );
        assert!(
            live.report()
                .1
                .starts_with("stuck: the drain (phase draining) has run for 1h17m1s")
        );

        live.entering(Phase::Rebooting);
        let bound = limits.reboot.unwrap() + ROUND_LIMIT;
        tokio::time::advance(bound + GRACE).await;
        assert_eq!(live.report().0, StatusCode::OK, "within the reboot's bound");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            live.report(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stuck: the reboot request (phase rebooting) has run for 28m1s, past its bound of 26m0s \
                 and a grace of 2m0s\n"
                    .to_owned()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_without_a_time_out_is_never_stuck() {
        let live = Liveness::new(PhaseLimits {
            drain: None,
            reboot: Some(crate::reboot::EFFECT_LIMIT),
        });
        live.entering(Phase::Draining);
        tokio::time::advance(Duration::from_secs(30 * 86_400)).await;
        assert_eq!(live.stuck(), None);
    }

    #[test]
    fn phase_limits_follow_the_configuration() {
        let limits = PhaseLimits {
            drain: Some(Duration::from_secs(100)),
            reboot: Some(Duration::from_secs(10)),
        };
        let unbounded = PhaseLimits::default();
        let cases = [
            (
                limits,
                Phase::Draining,
                Some(Duration::from_secs(100) + ROUND_LIMIT),
            ),
            (
                limits,
                Phase::Rebooting,
                Some(Duration::from_secs(10) + ROUND_LIMIT),
            ),
            (limits, Phase::Recovering, Some(ROUND_LIMIT)),
            (limits, Phase::WaitingForLock, Some(ROUND_LIMIT)),
            (unbounded, Phase::Draining, None),
            (unbounded, Phase::Rebooting, None),
            (unbounded, Phase::Idle, Some(ROUND_LIMIT)),
        ];
        for (limits, phase, want) in cases {
            assert_eq!(limits.of(phase), want, "{phase} with {limits:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_without_end_is_never_overdue() {
        let live = Liveness::default();
        live.pausing(Duration::MAX);
        tokio::time::advance(Duration::from_secs(10 * 365 * 86_400)).await;
        assert!(live.stuck().is_none(), "{:?}", live.stuck());
    }
}
