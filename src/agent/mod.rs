//! The agent: one per node. Each round it gathers an
//! [`Observation`](crate::decide::Observation) (`observe`), asks [`decide`] for the next
//! [`Action`] and carries it out (`act`), publishing its state on its Node as it goes
//! (`publish`). Between rounds it waits for whatever can change the answer — the sentinel file
//! ([`SentinelWatch`]), the lock object (a watch), the window's next opening (a timer), or the
//! period (the fallback, and the clock for sentinel commands and blockers). How long it waits
//! comes from [`decide::next_wait`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::agent_state::{AgentState, Phase, RebootLoop};
use crate::blockers::{Blocker, BlockerError, Blockers};
use crate::config::Config;
use crate::decide::{self, Action, LockView, Policy, SentinelView, Situation};
use crate::drain::Drainer;
use crate::events::Recorder;
use crate::gate::HealthGate;
use crate::lock::{LockError, LockSnapshot, ObjectLock, RebootLock, Slot};
use crate::metrics::{self, Metrics, MetricsError};
use crate::node::{NodeWatch, OwnNode};
use crate::notify::Notifier;
use crate::sentinel::SentinelWatch;

mod act;
mod back;
mod condition;
mod jitter;
mod observe;
mod publish;
mod verify;

use jitter::Jitter;

/// A lock read at the start of a round stands in for the read of a write later in the same round
/// (see [`ObjectLock::reusing_reads_for`]), and so does the Node read with it.
const LOCK_READ_REUSE: Duration = Duration::from_secs(2);

/// What the agent waits for before it looks again.
type Wait = decide::Wait<LockSnapshot>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("setting up the blockers")]
    Blockers(#[from] BlockerError),
    #[error("checking the reboot method")]
    Rebooter(#[source] crate::reboot::RebootError),
    #[error("setting up the post-reboot health gate")]
    Gate(#[from] crate::gate::GateError),
    #[error("the HTTP server for /metrics and /healthz stopped")]
    Server(#[source] tokio::task::JoinError),
}

/// Everything the agent acts through. `L`: the reboot lock, known only through its trait.
struct Agent<N, L> {
    config: Config,
    policy: Policy,
    node: OwnNode,
    lock: L,
    drainer: Drainer,
    blockers: Blockers,
    notifier: N,
    metrics: Arc<Metrics>,
    liveness: Arc<metrics::Liveness>,
    jitter: Jitter,
    /// The state last written to our Node, so it is written only when it changes.
    published: std::sync::Mutex<Option<AgentState>>,
    /// A failed boot ID read has been logged.
    boot_id_warned: AtomicBool,
    /// This agent gave up a cycle (its drain failed) and has not finished giving the node back.
    drain_failed: AtomicBool,
    /// The last round ended waiting for the lock, having written nothing of a reboot: the next
    /// round may decide on the Node last read or written (see [`Agent::observe`]).
    waiting: AtomicBool,
    /// The lock as it was when this agent's turn to take a free slot came up (see
    /// [`Agent::lock_may_admit`]); taken by the next round.
    turn: std::sync::Mutex<Option<LockSnapshot>>,
    /// The last full round found the node idle with nothing of its own anywhere: no lock entry,
    /// no cordon of kured's, no taint. Only this node's agent writes those, so while the sentinel
    /// keeps saying "not needed", a round asks the API server nothing (see [`Agent::step`]).
    settled: AtomicBool,
    /// The post-reboot health gate, when it is on.
    gate: Option<HealthGate>,
    /// Our Node as watched: an idle round reads it from here, so does a full round when the
    /// watch has caught up with our own reads and writes (see [`Agent::observe`]), and a change
    /// of what its annotations ask of us starts a round at once.
    node_watch: NodeWatch,
    /// The reboot loop as recorded, published with the state (see [`decide::reboot_loop`]).
    reboot_loop: std::sync::Mutex<Option<RebootLoop>>,
    /// The warnings about the node's control annotations last logged, so each is logged once.
    control_warnings: std::sync::Mutex<Vec<String>>,
    /// When our lock entry was written (its `created`), as last read or taken: the start of the
    /// reboot cycle `kured_reboot_duration_seconds` measures.
    lock_taken: std::sync::Mutex<Option<Timestamp>>,
    /// The reboot of the lock entry held now has been counted (`kured_reboots_total`), so a
    /// return to service that takes more than one round counts it once.
    reboot_counted: AtomicBool,
    /// The Events on our Node, one for every step.
    events: Recorder,
    /// The condition `RebootRequired` on our Node, following the phase.
    condition: condition::Keeper,
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(
    config: Config,
    client: Client,
    notifier: impl Notifier,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    if let Some(warning) = config.rebooter.check_target().map_err(AgentError::Rebooter)? {
        warn!("{warning}");
    }
    let liveness = Arc::new(metrics::Liveness::new(config.phase_limits));
    // Its own task: /healthz and /metrics answer during a round (a drain may take many minutes)
    // as well as between rounds.
    let mut server = {
        let mut shutdown = shutdown.clone();
        let (addr, metrics, liveness) = (config.metrics_addr.clone(), metrics.clone(), liveness.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            };
            metrics::serve(&addr, metrics, liveness, stop).await
        })
    };

    let agent = Agent {
        policy: Policy {
            taint_while_waiting: config.prefer_no_schedule_taint.is_some(),
            force_reboot: config.force_reboot,
            gate: config.gate.is_some(),
            loop_guard: config.loop_guard,
        },
        gate: config
            .gate
            .clone()
            .map(|settings| HealthGate::new(client.clone(), &config.node_id, settings))
            .transpose()?,
        node_watch: NodeWatch::start(client.clone(), &config.node_id),
        reboot_loop: std::sync::Mutex::new(None),
        control_warnings: std::sync::Mutex::new(Vec::new()),
        lock_taken: std::sync::Mutex::new(None),
        reboot_counted: AtomicBool::new(false),
        events: Recorder::start(client.clone(), &config.node_id),
        condition: condition::Keeper::start(
            OwnNode::new(client.clone(), config.node_id.clone()),
            &config.node_id,
        ),
        node: OwnNode::new(client.clone(), config.node_id.clone()),
        lock: ObjectLock::new(client.clone(), &config.lock_object, config.lock.clone())
            .reusing_reads_for(LOCK_READ_REUSE)
            .beside(ObjectLock::new(
                client.clone(),
                &config.lock_object.other(),
                config.lock.clone(),
            )),
        drainer: Drainer::new(client.clone(), config.drain.clone()),
        blockers: Blockers::configured(client, &config.node_id, &config.blockers)?,
        notifier,
        metrics: metrics.clone(),
        liveness: liveness.clone(),
        jitter: Jitter::seeded(&config.node_id),
        published: std::sync::Mutex::new(None),
        boot_id_warned: AtomicBool::new(false),
        drain_failed: AtomicBool::new(false),
        waiting: AtomicBool::new(false),
        turn: std::sync::Mutex::new(None),
        settled: AtomicBool::new(false),
        config,
    };
    info!(
        node = %agent.config.node_id,
        sentinel = %agent.config.sentinel.describe(),
        rebooter = %agent.config.rebooter.describe(),
        window = %agent.config.window,
        blockers = %agent.blockers.describe(),
        lock = %agent.config.lock_object,
        concurrency = agent.config.lock.concurrency,
        "agent started"
    );

    let mut sentinel_events = SentinelWatch::new(agent.config.sentinel.watch_path());
    let mut metric_tick =
        tokio::time::interval(agent.wait(Situation::MetricRefresh).longest(Timestamp::now()));
    metric_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wait = Wait::Now;
    loop {
        liveness.pausing(wait.longest(Timestamp::now()));
        let pause = pause_through_ticks(agent.pause(wait), &mut metric_tick, async || {
            agent.refresh_metric().await;
        });
        tokio::select! {
            served = &mut server => return server_ended(served),
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = sentinel_events.changed() => {
                info!(node = %agent.config.node_id, "sentinel file changed");
            }
            () = agent.node_watch.controls_changed() => {
                info!(node = %agent.config.node_id, "the node's kured.dev annotations changed");
            }
            () = pause => {}
        }
        liveness.working();
        // A termination request ends a round where it stands. Every step is a sequence of single
        // API writes, each complete or not made, and the next agent resumes from the lock and
        // the Node — as it must after a SIGKILL at any point anyway.
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => {
                info!(node = %agent.config.node_id, "termination requested during a round; stopping it here, the next agent resumes it");
                break;
            }
            served = &mut server => return server_ended(served),
            next = agent.step() => wait = next,
        }
    }
    match server.await {
        Ok(served) => served?,
        Err(e) => return Err(AgentError::Server(e)),
    }
    info!("agent stopped");
    Ok(())
}

/// The HTTP server stopped before the agent: an error, since only a shutdown stops it.
fn server_ended(served: Result<Result<(), MetricsError>, tokio::task::JoinError>) -> Result<(), AgentError> {
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(AgentError::Metrics(e)),
        Err(e) => Err(AgentError::Server(e)),
    }
}

/// Waits for `pause` to end, running `on_tick` at every tick of `ticks` meanwhile. The pause
/// goes on where it was after a tick: one started afresh at every tick would never end if it
/// were longer than the tick interval (an idle agent's `--period` against the minutely metric
/// refresh), and one as long would end only when the timer happened to fire late.
async fn pause_through_ticks(
    pause: impl Future<Output = ()>,
    ticks: &mut tokio::time::Interval,
    mut on_tick: impl AsyncFnMut(),
) {
    let mut pause = std::pin::pin!(pause);
    loop {
        tokio::select! {
            biased;
            () = &mut pause => return,
            _ = ticks.tick() => on_tick().await,
        }
    }
}

/// How long from now until `at`; zero once it has passed.
fn until(at: Timestamp) -> Duration {
    decide::time_until(at, Timestamp::now())
}

impl<N: Notifier, L: RebootLock> Agent<N, L> {
    fn period(&self) -> Duration {
        self.config.period
    }

    /// The wait for `situation`, from now.
    fn wait(&self, situation: Situation<LockSnapshot>) -> Wait {
        decide::next_wait(situation, self.period(), Timestamp::now())
    }

    /// Waits as the last round asked.
    async fn pause(&self, wait: Wait) {
        match wait {
            Wait::Now => {}
            Wait::For(d) => tokio::time::sleep(d).await,
            Wait::Until(at) => tokio::time::sleep(until(at)).await,
            Wait::HealthChange { limit } => match &self.gate {
                Some(gate) => {
                    let _ = tokio::time::timeout(limit, gate.changed(&self.node_watch)).await;
                }
                None => tokio::time::sleep(limit).await,
            },
            Wait::LockChange { seen, limit } => {
                match tokio::time::timeout(limit, self.lock_may_admit(seen)).await {
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(e)) => {
                        warn!(error = %crate::error_chain(&e), "watching the lock");
                        let retry = self.wait(Situation::LockWatchFailed { limit });
                        tokio::time::sleep(retry.longest(Timestamp::now())).await;
                    }
                }
            }
        }
    }

    /// Waits until it is this node's turn to take a free slot of the lock, `seen` being the lock
    /// as last read. Changes that leave every slot to others (another hand-off among them, at
    /// higher concurrency) are waited through without a round: no node read, no write. A freed
    /// slot is seen by every waiting agent at once: each waits its turn delay for that state of
    /// the lock ([`RebootLock::turn_delay`]), and takes its turn only if the lock is still as it
    /// was, so that normally one of them writes and the others see its write (the watched copy,
    /// no request) and go on waiting. The turn is drawn when a slot is first seen free and kept
    /// through changes that leave a slot free (at higher concurrency, another slot freed, or one
    /// of several taken): drawn afresh at each, the turns of a busy lock would keep starting over
    /// and free slots stay empty for seconds (`bench/handoff` at 50 nodes, concurrency 5); kept,
    /// the waiters take the free slots one after the other in the order drawn. A slot freed by an
    /// entry's TTL changes nothing in the object; the caller bounds the wait for that, and the
    /// round after it waits its turn the same way. An unreadable lock is waited on until it
    /// changes, and left for the round to report.
    async fn lock_may_admit(&self, mut seen: LockSnapshot) -> Result<(), LockError> {
        let mut turn_at = None;
        loop {
            match self.lock_admits(&seen) {
                Some(true) => {}
                Some(false) => {
                    turn_at = None;
                    seen = self.lock.changed(&seen).await?;
                    continue;
                }
                None => {
                    self.lock.changed(&seen).await?;
                    return Ok(());
                }
            }
            let at = *turn_at.get_or_insert_with(|| {
                tokio::time::Instant::now() + self.lock.turn_delay(&seen, self.jitter.draw())
            });
            tokio::select! {
                () = tokio::time::sleep_until(at) => {
                    *self.turn.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
                    return Ok(());
                }
                changed = self.lock.changed(&seen) => seen = changed?,
            }
        }
    }

    /// Whether the lock as `seen` leaves a slot to this node; `None` when it is unreadable.
    fn lock_admits(&self, seen: &LockSnapshot) -> Option<bool> {
        self.lock
            .standing(seen, Timestamp::now())
            .ok()
            .map(|standing| standing.slot == Slot::Free)
    }

    /// One round: observe, decide, act.
    async fn step(&self) -> Wait {
        let sentinel = self.check_sentinel().await;
        if sentinel == SentinelView::NotRequired && self.settled.load(Ordering::Relaxed) {
            // Idle, as the last full round left it: what it found (no lock entry, cordon or taint
            // of this node's) only this agent could have changed, and the state it published
            // still holds (published again only if publishing it failed). No request: the Node,
            // for a reboot asked for by hand, comes from the watch (read only where RBAC forbids
            // watching it), and the lock is not read.
            let node = match self.node_watch.current() {
                Some(node) => Ok(node),
                None => self.read_node().await,
            };
            match node {
                Ok(node) if !self.controls_of(&node).reboot_now => {
                    self.publish(Some(false), Phase::Idle, String::new()).await;
                    return self.wait(Situation::Idle);
                }
                Ok(_) => {}
                Err(e) => {
                    error!(node = %self.config.node_id, error = %crate::error_chain(&e), "reading the node");
                    return self.wait(Situation::ApiError);
                }
            }
        }
        let now = Timestamp::now();
        let (mut obs, seen) = match self.observe(now, sentinel).await {
            Ok(o) => o,
            Err(e) => {
                error!(node = %self.config.node_id, error = %e, "reading the node");
                return self.wait(Situation::ApiError);
            }
        };
        if !matches!(obs.lock, LockView::Ours(_)) {
            self.drain_failed.store(false, Ordering::Relaxed);
            self.reboot_counted.store(false, Ordering::Relaxed);
        }
        let mut step = decide::decide(&obs, &self.policy, now);
        self.settled.store(
            step == Action::Idle { remove_taint: false }
                && !matches!(obs.lock, LockView::Ours(_))
                && !obs.kured_cordon
                && !obs.taint_present
                && !self.drain_failed.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        // Only a round that checks the blockers finds the reboot blocked by one.
        let mut blocked_by = Vec::new();
        if step == Action::CheckBlockers {
            if self.config.annotate_nodes {
                self.best_effort(
                    "annotating the reboot as needed",
                    self.node.annotate_reboot_started(now),
                )
                .await;
            }
            let reasons = self.blockers.check().await;
            let mut labels: Vec<&str> = reasons.iter().map(|r| r.kind.metric_label()).collect();
            labels.sort_unstable();
            labels.dedup();
            for label in &labels {
                self.metrics.count_blocked(label);
            }
            blocked_by = labels;
            obs.blockers = Some(reasons.iter().map(ToString::to_string).collect());
            step = decide::decide(&obs, &self.policy, now);
        }
        self.metrics.set_blocked_now(&blocked_by);
        let required = match obs.sentinel {
            SentinelView::Required => Some(true),
            SentinelView::NotRequired => Some(false),
            SentinelView::Failed(_) => None,
        };
        self.note_reboot_loop(&obs, now);
        self.events.round(required, &step);
        if let Some((phase, detail)) = publish::phase_of(&step) {
            self.publish(required, phase, detail).await;
        }
        self.execute(step, seen, required).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, interval, sleep};

    /// Runs `pause_through_ticks` on the paused clock with ticks every `tick` that each take
    /// 10 ms (a sentinel check), and returns how long the pause took and how many ticks it saw.
    async fn paused(pause: Duration, tick: Duration) -> (Duration, u32) {
        let mut ticks = interval(tick);
        let start = Instant::now();
        let mut seen = 0;
        let waiting = pause_through_ticks(sleep(pause), &mut ticks, async || {
            seen += 1;
            sleep(Duration::from_millis(10)).await;
        });
        tokio::time::timeout(pause * 2, waiting)
            .await
            .expect("the pause to end within twice its length");
        (start.elapsed(), seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_tick_interval_ends_on_time() {
        // The default --period against the minutely metric refresh.
        let (took, ticks) = paused(Duration::from_secs(3600), decide::METRIC_REFRESH).await;
        assert_eq!(took, Duration::from_secs(3600));
        assert_eq!(ticks, 60, "one at once, then one a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_as_long_as_the_tick_interval_ends_on_time() {
        let (took, ticks) = paused(Duration::from_secs(3), Duration::from_secs(3)).await;
        assert_eq!(took, Duration::from_secs(3));
        assert_eq!(ticks, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_go_on_during_a_pause() {
        let (took, ticks) = paused(Duration::from_millis(250), Duration::from_millis(100)).await;
        // The ticks at 0, 100 and 200 ms each run 10 ms; the pause ends at 250 ms regardless.
        assert_eq!(took, Duration::from_millis(250));
        assert_eq!(ticks, 3);
    }
}
