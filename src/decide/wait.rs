//! How long the agent waits before it looks again: one answer for every situation a round can
//! end in, and for the timers that run beside the rounds. Pure, like [`decide`](super::decide):
//! the period and `now` are arguments, and randomness comes in as a number already drawn.

use std::time::Duration;

use jiff::Timestamp;

/// After a failed API call, try again after this long (or the period, if shorter): an outage
/// of a few seconds costs a few seconds, and a whole fleet retrying costs the API server one
/// request per agent every ten seconds.
pub const ERROR_RETRY: Duration = Duration::from_secs(10);
/// Upstream refreshes `kured_reboot_required` every minute, whatever `--period` is; so do we,
/// so that dashboards and alerts see a sentinel change within a minute.
pub const METRIC_REFRESH: Duration = Duration::from_secs(60);
/// Blockers (alerts, pods) are looked at again this often while they hold a reboot back: an
/// alert that clears should not cost a whole `--period`.
pub const BLOCKER_RECHECK: Duration = Duration::from_secs(60);
/// Up to this much random delay before acting on a window that just opened, so that many
/// waiting nodes do not all start at the same instant. (A freed lock slot is taken in turns
/// instead: see [`crate::lock::turn`].)
pub const WINDOW_JITTER: Duration = Duration::from_millis(500);
/// A failed reboot is tried again after the period, but after this long at most: the node stays
/// drained and keeps its lock slot meanwhile, holding the next node back, which a long
/// `--period` must not stretch out.
pub const REBOOT_RETRY_MAX: Duration = Duration::from_secs(300);

/// What the agent waits for before it looks again. `S` is the lock as last read (the agent's
/// [`LockSnapshot`](crate::lock::LockSnapshot)), for waiting until it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait<S> {
    /// Look again at once.
    Now,
    /// Until this long has passed, or something the agent watches changes.
    For(Duration),
    /// Until this instant, or something the agent watches changes.
    Until(Timestamp),
    /// Until the lock differs from `seen`, at most `limit`.
    LockChange { seen: S, limit: Duration },
    /// Until something the post-reboot health gate looks at changes (the Node, a pod on it), at
    /// most `limit`.
    HealthChange { limit: Duration },
}

impl<S> Wait<S> {
    /// The longest this wait can last from `now`, ticks of the metric refresh aside.
    pub fn longest(&self, now: Timestamp) -> Duration {
        match self {
            Wait::Now => Duration::ZERO,
            Wait::For(d) => *d,
            Wait::Until(at) => time_until(*at, now),
            // A failed lock watch adds a retry pause of at most the limit
            // (see `Situation::LockWatchFailed`).
            Wait::LockChange { limit, .. } => limit.saturating_mul(2),
            Wait::HealthChange { limit } => *limit,
        }
    }
}

/// Where a round leaves the agent (or what a timer beside the rounds is for): what
/// [`next_wait`] takes to say how long to wait. `S` as in [`Wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Situation<S> {
    /// The round changed something the next round must see at once: blockers to consult, a
    /// gone holder's slot freed, the node given back, the lock released (so that the published
    /// state says "idle" right away).
    LookAgain,
    /// No reboot needed; the sentinel's watch or the period brings the next look.
    Idle,
    /// The sentinel could not be checked; nothing changes until it can.
    SentinelFailed,
    /// A reboot is needed and the window is closed; it opens at `opens` (`None`: not within
    /// the year ahead). `draw`: a random number, for the jitter.
    WindowClosed { opens: Option<Timestamp>, draw: u64 },
    /// A reboot is needed and blockers hold it back.
    Blocked,
    /// Every slot is taken by others, as `seen`. A slot frees up when the lock changes, or
    /// when the first holder expires by its TTL (`next_expiry`), which changes nothing in the
    /// lock; waiting ends when the window closes (`window_closes`: `None` when it stays open;
    /// `now` or earlier when it is closed), so that nothing is taken outside it.
    LockTaken {
        seen: S,
        next_expiry: Option<Timestamp>,
        window_closes: Option<Timestamp>,
    },
    /// A slot is free in the lock as `seen`, but this node's turn to take it has not come up
    /// for the lock as it is now (see [`crate::lock::turn`]). `window_closes` as for
    /// [`Situation::LockTaken`].
    AwaitingTurn {
        seen: S,
        window_closes: Option<Timestamp>,
    },
    /// Taking the lock found every slot taken by others first, as `seen`; the first of them
    /// expires at `next_expiry`.
    LockTakenFirst { seen: S, next_expiry: Option<Timestamp> },
    /// The lock as `seen` is not a lock record: left alone, looked at again when it changes.
    LockUnreadable { seen: S },
    /// A request to the API server failed, or a write that must happen did not go through.
    ApiError,
    /// The node is back in service and the lock is kept until `until` (the release delay).
    ReleaseDelay { until: Timestamp },
    /// The release found no entry of ours to remove.
    NotHolding,
    /// The reboot was requested and the request returned: the boot ID says at the next round
    /// whether the reboot happened.
    RebootRequested,
    /// The reboot failed; the node stays drained and the lock held.
    RebootFailed,
    /// The drain failed and the node was given back: try again after a period, as upstream does.
    DrainFailed,
    /// Watching the lock failed during a [`Wait::LockChange`] of `limit`: pause before the round.
    LockWatchFailed { limit: Duration },
    /// The refresh of the `kured_reboot_required` metric between rounds.
    MetricRefresh,
    /// The node is paused by its annotation: looked at again every [`BLOCKER_RECHECK`], so that
    /// a resume is seen soon.
    Paused,
    /// The reboot-loop guard holds the reboot back until `until`.
    BackingOff { until: Timestamp },
    /// The post-reboot health gate has not passed: wait for a change of what it looks at, at
    /// most until `next` (the settle time's end, the time-out, an alert's next check).
    Verifying { next: Option<Timestamp> },
}

/// How long to wait in `situation`, with `--period` `period`, at `now`.
pub fn next_wait<S>(situation: Situation<S>, period: Duration, now: Timestamp) -> Wait<S> {
    let retry = ERROR_RETRY.min(period);
    let until_expiry = |expiry: Option<Timestamp>| expiry.map_or(Duration::MAX, |at| time_until(at, now));
    let until_closed = |closes: Option<Timestamp>| closes.map_or(Duration::MAX, |at| time_until(at, now));
    match situation {
        Situation::LookAgain => Wait::Now,
        Situation::Idle
        | Situation::SentinelFailed
        | Situation::NotHolding
        | Situation::RebootRequested
        | Situation::DrainFailed => Wait::For(period),
        Situation::WindowClosed { opens, draw } => match opens {
            Some(at) => Wait::Until(at.checked_add(spread(draw, WINDOW_JITTER)).unwrap_or(at)),
            None => Wait::For(period),
        },
        Situation::Blocked => Wait::For(BLOCKER_RECHECK.min(period)),
        Situation::LockTaken {
            seen,
            next_expiry,
            window_closes,
        } => Wait::LockChange {
            seen,
            limit: until_closed(window_closes)
                .min(period)
                .min(until_expiry(next_expiry)),
        },
        Situation::AwaitingTurn { seen, window_closes } => Wait::LockChange {
            seen,
            limit: until_closed(window_closes).min(period),
        },
        Situation::LockTakenFirst { seen, next_expiry } => Wait::LockChange {
            seen,
            limit: period.min(until_expiry(next_expiry)),
        },
        Situation::LockUnreadable { seen } => Wait::LockChange { seen, limit: period },
        Situation::ApiError => Wait::For(retry),
        Situation::ReleaseDelay { until } => Wait::Until(until),
        // At least `ERROR_RETRY`, so that a short period does not run a failing reboot command
        // in a tight loop.
        Situation::RebootFailed => Wait::For(ERROR_RETRY.max(period.min(REBOOT_RETRY_MAX))),
        Situation::LockWatchFailed { limit } => Wait::For(ERROR_RETRY.min(limit)),
        Situation::MetricRefresh => Wait::For(METRIC_REFRESH.min(period)),
        Situation::Paused => Wait::For(BLOCKER_RECHECK.min(period)),
        // Rounds go on meanwhile, for a pause or a reboot asked for by hand.
        Situation::BackingOff { until } => Wait::For(time_until(until, now).min(period)),
        Situation::Verifying { next } => Wait::HealthChange {
            limit: until_expiry(next).min(period),
        },
    }
}

/// How long from `now` until `at`; zero once it has passed.
pub fn time_until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// A duration in `[0, max)` from the random number `draw`.
fn spread(draw: u64, max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(draw % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-27T10:00:00Z";
    /// The default `--period`.
    const HOUR: Duration = Duration::from_secs(3600);
    const SHORT: Duration = Duration::from_secs(5);

    fn t(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn mins(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    fn lock(limit: Duration) -> Wait<&'static str> {
        Wait::LockChange { seen: "seen", limit }
    }

    #[test]
    fn waits() {
        use Situation as S;
        let taken = |next_expiry: Option<&str>, window_closes: Option<&str>| S::LockTaken {
            seen: "seen",
            next_expiry: next_expiry.map(t),
            window_closes: window_closes.map(t),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Situation<&str>, Duration, Wait<&str>)> = vec![
            ("something changed: look again at once",
             S::LookAgain, HOUR, Wait::Now),
            ("idle: a period",
             S::Idle, HOUR, Wait::For(HOUR)),
            ("sentinel failed: a period",
             S::SentinelFailed, HOUR, Wait::For(HOUR)),
            ("window closed: until it opens, plus the jitter drawn",
             S::WindowClosed { opens: Some(t("2026-11-27T22:00:00Z")), draw: 1_234_567_890 }, HOUR,
             Wait::Until(t("2026-11-27T22:00:00.23456789Z"))),
            ("window closed: the jitter stays under half a second",
             S::WindowClosed { opens: Some(t("2026-11-27T22:00:00Z")), draw: 1_499_999_999 }, HOUR,
             Wait::Until(t("2026-11-27T22:00:00.499999999Z"))),
            ("window closed, no opening within a year: a period",
             S::WindowClosed { opens: None, draw: 7 }, HOUR, Wait::For(HOUR)),
            ("blocked: look at the blockers again within a minute",
             S::Blocked, HOUR, Wait::For(mins(1))),
            ("blocked, period shorter than a minute: the period",
             S::Blocked, SHORT, Wait::For(SHORT)),
            ("lock taken: until it changes, at most until the window closes",
             taken(None, Some("2026-11-27T10:20:00Z")), HOUR, lock(mins(20))),
            ("lock taken: at most until the first holder expires",
             taken(Some("2026-11-27T10:05:00Z"), Some("2026-11-27T10:20:00Z")), HOUR, lock(mins(5))),
            ("lock taken, window open for good, no expiry: at most a period",
             taken(None, None), HOUR, lock(HOUR)),
            ("lock taken, period shorter than all: the period",
             taken(Some("2026-11-27T10:05:00Z"), Some("2026-11-27T10:20:00Z")), SHORT, lock(SHORT)),
            ("lock taken, window closed meanwhile: look again at once",
             taken(None, Some(NOW)), HOUR, lock(Duration::ZERO)),
            ("lock taken, holder expired meanwhile: look again at once",
             taken(Some("2026-11-27T09:59:00Z"), None), HOUR, lock(Duration::ZERO)),
            ("awaiting the turn: until the lock changes, at most until the window closes",
             S::AwaitingTurn { seen: "seen", window_closes: Some(t("2026-11-27T10:20:00Z")) }, HOUR, lock(mins(20))),
            ("awaiting the turn, window open for good: at most a period",
             S::AwaitingTurn { seen: "seen", window_closes: None }, HOUR, lock(HOUR)),
            ("lock taken first: at most until the first holder expires",
             S::LockTakenFirst { seen: "seen", next_expiry: Some(t("2026-11-27T10:05:00Z")) }, HOUR, lock(mins(5))),
            ("lock taken first, no expiry: at most a period",
             S::LockTakenFirst { seen: "seen", next_expiry: None }, HOUR, lock(HOUR)),
            ("lock unreadable: until it changes, at most a period",
             S::LockUnreadable { seen: "seen" }, HOUR, lock(HOUR)),
            ("API error: ten seconds",
             S::ApiError, HOUR, Wait::For(Duration::from_secs(10))),
            ("API error, period shorter: the period",
             S::ApiError, SHORT, Wait::For(SHORT)),
            ("release delay: until it is over",
             S::ReleaseDelay { until: t("2026-11-27T10:05:00Z") }, HOUR, Wait::Until(t("2026-11-27T10:05:00Z"))),
            ("nothing of ours to release: a period",
             S::NotHolding, HOUR, Wait::For(HOUR)),
            ("paused: look again within a minute",
             S::Paused, HOUR, Wait::For(mins(1))),
            ("backing off: until the back-off ends",
             S::BackingOff { until: t("2026-11-27T10:30:00Z") }, HOUR, Wait::For(mins(30))),
            ("backing off for hours: a period at most, for a pause or a reboot asked for",
             S::BackingOff { until: t("2026-11-28T10:00:00Z") }, HOUR, Wait::For(HOUR)),
            ("backing off, over meanwhile: look again at once",
             S::BackingOff { until: t("2026-11-27T09:00:00Z") }, HOUR, Wait::For(Duration::ZERO)),
            ("verifying: until the gate's next deadline, or a change",
             S::Verifying { next: Some(t("2026-11-27T10:00:30Z")) }, HOUR,
             Wait::HealthChange { limit: Duration::from_secs(30) }),
            ("verifying, no deadline: a period at most",
             S::Verifying { next: None }, HOUR, Wait::HealthChange { limit: HOUR }),
            ("reboot requested: a period",
             S::RebootRequested, HOUR, Wait::For(HOUR)),
            ("reboot failed: again within five minutes, whatever the period",
             S::RebootFailed, HOUR, Wait::For(mins(5))),
            ("reboot failed, period of two minutes: the period",
             S::RebootFailed, mins(2), Wait::For(mins(2))),
            ("reboot failed, period shorter than ten seconds: ten seconds",
             S::RebootFailed, SHORT, Wait::For(Duration::from_secs(10))),
            ("drain failed, node given back: a period",
             S::DrainFailed, HOUR, Wait::For(HOUR)),
            ("lock watch failed: pause ten seconds",
             S::LockWatchFailed { limit: mins(1) }, HOUR, Wait::For(Duration::from_secs(10))),
            ("lock watch failed, the wait's limit is shorter: the limit",
             S::LockWatchFailed { limit: Duration::from_secs(3) }, HOUR, Wait::For(Duration::from_secs(3))),
            ("metric refresh: every minute",
             S::MetricRefresh, HOUR, Wait::For(mins(1))),
            ("metric refresh, period shorter than a minute: every period",
             S::MetricRefresh, SHORT, Wait::For(SHORT)),
        ];
        for (name, situation, period, want) in cases {
            assert_eq!(next_wait(situation, period, t(NOW)), want, "{name}");
        }
    }

    #[test]
    fn the_longest_wait_covers_a_lock_watch_error_and_its_retry() {
        let now = t(NOW);
        let limit = Duration::from_secs(10);
        assert_eq!(lock(limit).longest(now), 2 * limit);
        assert_eq!(Wait::<()>::For(limit).longest(now), limit);
        assert_eq!(Wait::<()>::Now.longest(now), Duration::ZERO);
        assert_eq!(
            Wait::<()>::Until(t("2026-11-27T10:00:07Z")).longest(now),
            Duration::from_secs(7)
        );
        assert_eq!(
            Wait::<()>::Until(Timestamp::UNIX_EPOCH).longest(now),
            Duration::ZERO
        );
    }
}
