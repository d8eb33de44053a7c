//! The agent: one per node. It gathers an [`Observation`], asks [`decide`] for the next
//! [`Step`], carries it out, and waits for whatever can change the answer — the sentinel file
//! (inotify), the lock object (a watch), the window's next opening (a timer), or the period
//! (the fallback, and the clock for sentinel commands and blockers).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::blockers::{Blocker, BlockerError, Blockers};
use crate::config::Config;
use crate::decide::{self, AfterDrainFailure, LockView, Observation, OurEntry, Policy, SentinelView, Step};
use crate::drain::Drainer;
use crate::kube_error;
use crate::lock::record::decide_acquire;
use crate::lock::{Acquire, Claim, DaemonSetLock, LockState, RebootLock, Release, Seen, turn};
use crate::metrics::{self, Metrics, MetricsError};
use crate::node::{self, Annotations, Cordon, OwnNode};
use crate::notify::{self, Event, Notifier};
use crate::state::{AgentState, Phase, STATE_ANNOTATION};

/// Upstream refreshes `kured_reboot_required` every minute, whatever `--period` is; so do we,
/// so that dashboards and alerts see a sentinel change within a minute.
const METRIC_REFRESH: Duration = Duration::from_secs(60);
/// Blockers (alerts, pods) are looked at again this often while they hold a reboot back: an
/// alert that clears should not cost a whole `--period`.
const BLOCKER_RECHECK: Duration = Duration::from_secs(60);
/// After a failed API call, try again after this long (or the period, if shorter).
const ERROR_RETRY: Duration = Duration::from_secs(10);
/// How long a write that must happen (a cordon without `--drain-timeout`, an uncordon) retries
/// transient API errors within one round: an API server outage of a few minutes costs no
/// round; a longer one ends the round, and the next one starts over from what it observes.
const API_RETRY_LIMIT: Duration = Duration::from_secs(180);
/// Up to this much random delay before acting on a window that just opened, so that many
/// waiting nodes do not all start at the same instant. (A freed lock slot is taken in turns
/// instead: see [`crate::lock::turn`].)
const JITTER: Duration = Duration::from_millis(500);
/// A Node read while waiting for the lock stands in for a new read at the next waiting round for
/// at most this long (see [`Agent::observe`]).
const WAITING_NODE_REUSE: Duration = Duration::from_secs(600);
/// A lock read at the start of a round stands in for the read of a write later in the same round
/// (see [`DaemonSetLock::reusing_reads_for`]).
const LOCK_READ_REUSE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("setting up the blockers")]
    Blockers(#[from] BlockerError),
    #[error("checking the reboot method")]
    Rebooter(#[source] crate::reboot::RebootError),
    #[error("the HTTP server for /metrics and /healthz stopped")]
    Server(#[source] tokio::task::JoinError),
}

/// Everything the agent acts through.
struct Agent<N> {
    config: Config,
    policy: Policy,
    node: OwnNode,
    lock: DaemonSetLock,
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
    /// Our Node as last read or written, and when it was read.
    last_node: std::sync::Mutex<Option<(Node, tokio::time::Instant)>>,
    /// The last round ended waiting for the lock, having written nothing of a reboot: the next
    /// round may decide on `last_node` (see [`Agent::observe`]).
    waiting: AtomicBool,
    /// The lock as it was when this agent's turn to take a free slot came up (see
    /// [`Agent::lock_may_admit`]); taken by the next round.
    turn: std::sync::Mutex<Option<Seen>>,
    /// The last full round found the node idle with nothing of its own anywhere: no lock entry,
    /// no cordon of kured's, no taint. Only this node's agent writes those, so while the sentinel
    /// keeps saying "not needed", a round asks the API server nothing (see [`Agent::step`]).
    settled: AtomicBool,
}

/// What the agent waits for before it looks again.
#[derive(Debug)]
enum Wait {
    /// Look again at once.
    Now,
    /// Until this long has passed, or something we watch changes.
    For(Duration),
    /// Until this instant, or something we watch changes.
    Until(Timestamp),
    /// Until the lock object differs from `seen`, at most `limit`.
    LockChange { seen: Seen, limit: Duration },
}

impl Wait {
    /// The longest this wait can last (see [`Agent::pause`]), ticks of the metric refresh aside.
    fn longest(&self) -> Duration {
        match self {
            Wait::Now => Duration::ZERO,
            Wait::For(d) => *d,
            Wait::Until(at) => until(*at),
            // A failed lock watch adds a retry pause of at most the limit.
            Wait::LockChange { limit, .. } => limit.saturating_mul(2),
        }
    }
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
        },
        node: OwnNode::new(client.clone(), config.node_id.clone()),
        lock: DaemonSetLock::at(client.clone(), &config.lock_object, config.lock.clone())
            .reusing_reads_for(LOCK_READ_REUSE),
        drainer: Drainer::new(client.clone(), config.drain.clone()),
        blockers: Blockers::configured(client, &config.node_id, &config.blockers)?,
        notifier,
        metrics: metrics.clone(),
        liveness: liveness.clone(),
        jitter: Jitter::seeded(&config.node_id),
        published: std::sync::Mutex::new(None),
        boot_id_warned: AtomicBool::new(false),
        drain_failed: AtomicBool::new(false),
        last_node: std::sync::Mutex::new(None),
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
    let mut metric_tick = tokio::time::interval(METRIC_REFRESH.min(agent.config.period));
    metric_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wait = Wait::Now;
    loop {
        liveness.pausing(wait.longest());
        let pause = pause_through_ticks(agent.pause(wait), &mut metric_tick, async || {
            agent.refresh_metric().await;
        });
        tokio::select! {
            served = &mut server => return server_ended(served),
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = sentinel_events.changed() => {
                info!(node = %agent.config.node_id, "sentinel file changed");
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

fn until(at: Timestamp) -> Duration {
    let left = at.duration_since(Timestamp::now());
    Duration::try_from(left).unwrap_or(Duration::ZERO)
}

impl<N: Notifier> Agent<N> {
    fn period(&self) -> Duration {
        self.config.period
    }

    /// Waits as the last round asked.
    async fn pause(&self, wait: Wait) {
        match wait {
            Wait::Now => {}
            Wait::For(d) => tokio::time::sleep(d).await,
            Wait::Until(at) => tokio::time::sleep(until(at)).await,
            Wait::LockChange { seen, limit } => {
                match tokio::time::timeout(limit, self.lock_may_admit(seen)).await {
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(e)) => {
                        warn!(error = %crate::error_chain(&e), "watching the lock");
                        tokio::time::sleep(ERROR_RETRY.min(limit)).await;
                    }
                }
            }
        }
    }

    /// How long the reboot window stays open from now: waiting for the lock ends there, so the
    /// taint comes off and nothing is taken outside the window.
    fn until_window_closes(&self) -> Duration {
        let now = Timestamp::now();
        match self.config.window.next_windows(now, 1).first() {
            Some(w) if w.contains(now) => w.closes.map(until).unwrap_or(Duration::MAX),
            _ => Duration::ZERO,
        }
    }

    async fn check_sentinel(&self) -> SentinelView {
        match self.config.sentinel.check().await {
            Ok(required) => {
                self.metrics.set_reboot_required(required);
                if required {
                    SentinelView::Required
                } else {
                    SentinelView::NotRequired
                }
            }
            Err(e) => {
                self.metrics.count_sentinel_error();
                SentinelView::Failed(crate::error_chain(&e))
            }
        }
    }

    async fn refresh_metric(&self) {
        if let SentinelView::Failed(e) = self.check_sentinel().await {
            warn!(node = %self.config.node_id, error = %e, "sentinel check failed");
        }
    }

    /// Waits until it is this node's turn to take a free slot of the lock, `seen` being the lock
    /// as last read. Changes that leave every slot to others (another hand-off among them, at
    /// higher concurrency) are waited through without a round: no node read, no write. A freed
    /// slot is seen by every waiting agent at once: each waits its turn delay for that state of
    /// the lock ([`turn::turn_delay`]), and takes its turn only if the lock is still as it was,
    /// so that normally one of them writes and the others see its write (the watched copy, no
    /// request) and go on waiting. A slot freed by an entry's TTL changes nothing in the object;
    /// the caller bounds the wait for that, and the round after it waits its turn the same way.
    /// An unreadable lock is waited on until it changes, and left for the round to report.
    async fn lock_may_admit(&self, mut seen: Seen) -> Result<(), crate::lock::LockError> {
        loop {
            match self.lock_admits(&seen) {
                Some(true) => {}
                Some(false) => {
                    seen = self.lock.changed(&seen).await?;
                    continue;
                }
                None => {
                    self.lock.changed(&seen).await?;
                    return Ok(());
                }
            }
            let delay = turn::turn_delay(seen.annotation(), &self.config.node_id, self.jitter.draw());
            tokio::select! {
                () = tokio::time::sleep(delay) => {
                    *self.turn.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
                    return Ok(());
                }
                changed = self.lock.changed(&seen) => seen = changed?,
            }
        }
    }

    /// Whether the lock as `seen` leaves a slot to this node; `None` when it is unreadable.
    fn lock_admits(&self, seen: &Seen) -> Option<bool> {
        decide_acquire(
            seen.annotation(),
            self.lock.settings(),
            &Claim::default(),
            Timestamp::now(),
        )
        .ok()
        .map(|decision| !matches!(decision.outcome, Acquire::Blocked { .. }))
    }

    /// Gathers what `decide` needs. The lock is read in full and evaluated with the lock's own
    /// rules, so "available" means exactly what `acquire` would conclude.
    ///
    /// While the agent waits for the lock, holding nothing, the Node read at an earlier waiting
    /// round stands in (up to [`WAITING_NODE_REUSE`]): nothing the decision takes from it changes
    /// meanwhile but by this agent's own writes (kured's cordon record, our taint), and the round
    /// that takes the lock reads the Node afresh for what it records (the cordon of others).
    async fn observe(&self, now: Timestamp, sentinel: SentinelView) -> Result<(Observation, Seen), String> {
        let reuse = self.waiting.swap(false, Ordering::Relaxed);
        let node = match self.known_node(WAITING_NODE_REUSE).filter(|_| reuse) {
            Some(node) => node,
            None => self.read_node().await.map_err(|e| crate::error_chain(&e))?,
        };
        self.adopt_published(&node);
        let boot_id = self.boot_id_of(&node).unwrap_or_default();
        let taint_present = self
            .config
            .prefer_no_schedule_taint
            .as_deref()
            .is_some_and(|key| node::prefer_no_schedule_taint(&node, key).is_some());
        let (lock, seen) = match self.lock.read().await {
            Ok(state) => (self.lock_view(&state, now), state.seen),
            Err(e) if e.is_corrupt() => {
                let seen = e.seen().unwrap_or_else(|| Seen::new(None));
                (LockView::Unreadable(crate::error_chain(&e)), seen)
            }
            Err(e) => (LockView::ReadFailed(crate::error_chain(&e)), Seen::new(None)),
        };
        let (window_open, window_opens) = if self.config.window.contains(now) {
            (true, None)
        } else {
            (
                false,
                self.config
                    .window
                    .next_windows(now, 1)
                    .first()
                    .and_then(|w| w.opens),
            )
        };
        let observation = Observation {
            sentinel,
            window_open,
            window_opens,
            blockers: None,
            lock,
            boot_id,
            taint_present,
            kured_cordon: node::cordoned_by_kured(&node),
            drain_failed: self.drain_failed.load(Ordering::Relaxed),
        };
        Ok((observation, seen))
    }

    /// The lock as this node sees it. Our own entry counts as ours also once its TTL has run out:
    /// the node it put out of service must be brought back either way.
    fn lock_view(&self, state: &LockState, now: Timestamp) -> LockView {
        let node_id = &self.config.node_id;
        let own = state.record.as_ref().and_then(|record| {
            record
                .held_by(node_id, now)
                .or_else(|| record.entries().iter().find(|e| &e.node_id == node_id))
        });
        if let Some(entry) = own {
            return LockView::Ours(OurEntry {
                boot_id: entry.boot_id.clone(),
                was_unschedulable: entry.metadata.unschedulable,
                release_after: entry.release_after,
                expired: entry.is_expired(now),
            });
        }
        match decide_acquire(
            state.seen.annotation(),
            self.lock.settings(),
            &Claim::default(),
            now,
        ) {
            Ok(decision) => match decision.outcome {
                Acquire::Blocked {
                    holders, next_expiry, ..
                } => LockView::HeldByOthers {
                    holders: holders.iter().map(|h| h.node_id.clone()).collect(),
                    next_expiry,
                },
                Acquire::Acquired(_) | Acquire::AlreadyHeld(_) => LockView::Available,
            },
            Err(e) => LockView::Unreadable(format!(
                "{}/{} annotation {}: {}",
                self.config.lock_object.namespace,
                self.config.lock_object.name,
                self.config.lock_object.annotation,
                crate::error_chain(&e)
            )),
        }
    }

    /// The boot ID of the running kernel; the Node's reported one only when the kernel's cannot
    /// be read. The kubelet reports a new boot ID only some time after the boot, and an agent
    /// that judged by a stale one would take its finished reboot for one still to do.
    fn boot_id_of(&self, node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
        match node::local_boot_id() {
            Ok(id) => Some(id),
            Err(e) => {
                if !self.boot_id_warned.swap(true, Ordering::Relaxed) {
                    warn!(node = %self.config.node_id, path = node::BOOT_ID_PATH, error = %e,
                        "cannot read the kernel's boot ID; using the one the kubelet reports");
                }
                node::boot_id(node).map(str::to_owned)
            }
        }
    }

    /// Reads our Node, and keeps it (see [`Agent::known_node`]).
    async fn read_node(&self) -> Result<Node, node::NodeError> {
        let node = self.node.get().await?;
        self.keep_node(&node, tokio::time::Instant::now());
        Ok(node)
    }

    fn keep_node(&self, node: &Node, at: tokio::time::Instant) {
        *self.last_node.lock().unwrap_or_else(|e| e.into_inner()) = Some((node.clone(), at));
    }

    /// Our Node as last read or written, if that was at most `max_age` ago.
    fn known_node(&self, max_age: Duration) -> Option<Node> {
        let last = self.last_node.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(node, _)| node.clone())
    }

    /// [`Agent::boot_id_of`] our Node, read now.
    async fn current_boot_id(&self) -> Result<Option<String>, node::NodeError> {
        if let Ok(id) = node::local_boot_id() {
            return Ok(Some(id));
        }
        Ok(self.boot_id_of(&self.node.get().await?))
    }

    async fn step(&self) -> Wait {
        let sentinel = self.check_sentinel().await;
        if sentinel == SentinelView::NotRequired && self.settled.load(Ordering::Relaxed) {
            // Idle, as the last full round left it: what it found (no lock entry, cordon or taint
            // of this node's) only this agent could have changed, and the state it published
            // still holds (published again only if publishing it failed). No request: an idle
            // fleet costs the API server nothing.
            self.publish(Some(false), Phase::Idle, String::new()).await;
            return Wait::For(self.period());
        }
        let now = Timestamp::now();
        let (mut obs, seen) = match self.observe(now, sentinel).await {
            Ok(o) => o,
            Err(e) => {
                error!(node = %self.config.node_id, error = %e, "reading the node");
                return Wait::For(ERROR_RETRY.min(self.period()));
            }
        };
        if !matches!(obs.lock, LockView::Ours(_)) {
            self.drain_failed.store(false, Ordering::Relaxed);
        }
        let mut step = decide::decide(&obs, &self.policy, now);
        self.settled.store(
            step == Step::Idle { remove_taint: false }
                && !matches!(obs.lock, LockView::Ours(_))
                && !obs.kured_cordon
                && !obs.taint_present
                && !self.drain_failed.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if step == Step::CheckBlockers {
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
            for label in labels {
                self.metrics.count_blocked(label);
            }
            obs.blockers = Some(reasons.iter().map(ToString::to_string).collect());
            step = decide::decide(&obs, &self.policy, now);
        }
        let required = match obs.sentinel {
            SentinelView::Required => Some(true),
            SentinelView::NotRequired => Some(false),
            SentinelView::Failed(_) => None,
        };
        if let Some((phase, detail)) = phase_of(&step) {
            self.publish(required, phase, detail).await;
        }
        self.execute(step, seen, required).await
    }

    async fn execute(&self, step: Step, seen: Seen, required: Option<bool>) -> Wait {
        let node = &self.config.node_id;
        // Whether this agent's turn for a free slot came up during the last pause, and with the
        // lock as it was then; good for this round only.
        let turn = self.turn.lock().unwrap_or_else(|e| e.into_inner()).take();
        match step {
            Step::Idle { remove_taint } => {
                if remove_taint {
                    self.remove_taint().await;
                }
                Wait::For(self.period())
            }
            Step::SentinelFailed(e) => {
                warn!(node = %node, error = %e, "sentinel check failed; no reboot until it succeeds");
                Wait::For(self.period())
            }
            Step::WaitForWindow { opens, remove_taint } => {
                if remove_taint {
                    self.remove_taint().await;
                }
                info!(node = %node, opens = ?opens.map(|t| t.to_string()), "reboot required; waiting for the reboot window");
                match opens {
                    Some(at) => Wait::Until(at.checked_add(self.jitter.next(JITTER)).unwrap_or(at)),
                    None => Wait::For(self.period()),
                }
            }
            Step::CheckBlockers => Wait::Now,
            Step::Blocked(reasons) => {
                info!(node = %node, blockers = %reasons.join("; "), "reboot required, but blocked");
                Wait::For(BLOCKER_RECHECK.min(self.period()))
            }
            Step::WaitForLock {
                holders,
                next_expiry,
                add_taint,
            } => {
                if self.reclaim_gone_holders(&seen).await {
                    return Wait::Now;
                }
                if add_taint && let Some(key) = &self.config.prefer_no_schedule_taint {
                    self.best_effort(
                        "adding the PreferNoSchedule taint",
                        self.node.add_prefer_no_schedule_taint(key),
                    )
                    .await;
                } else {
                    // Nothing written but our state: the next waiting round may reuse the Node.
                    self.waiting.store(true, Ordering::Relaxed);
                }
                info!(node = %node, holders = %holders.join(","), "reboot required; waiting for the lock");
                Wait::LockChange {
                    seen,
                    limit: self
                        .until_window_closes()
                        .min(self.period())
                        .min(self.until_expiry(next_expiry)),
                }
            }
            Step::LockUnreadable(e) => {
                error!(node = %node, error = %e, "cannot read the lock; leaving it as it is and checking again");
                Wait::LockChange {
                    seen,
                    limit: self.period(),
                }
            }
            Step::LockReadFailed(e) => {
                error!(node = %node, error = %e, "reading the lock failed; trying again");
                Wait::For(ERROR_RETRY.min(self.period()))
            }
            // A free slot is taken in turns (see `lock_may_admit`): a round that finds one without
            // its turn having come up for the lock as it is now waits for it first.
            Step::AcquireLock if turn.as_ref() == Some(&seen) => self.acquire_and_reboot().await,
            Step::AcquireLock => {
                self.waiting.store(true, Ordering::Relaxed);
                Wait::LockChange {
                    seen,
                    limit: self.until_window_closes().min(self.period()),
                }
            }
            Step::ResumeReboot => {
                info!(node = %node, "holding the lock from before a restart; the node has not rebooted yet");
                self.drain_and_reboot(None).await
            }
            Step::GiveBack { uncordon, release } => self.give_back(uncordon, release).await,
            Step::FinishReboot { uncordon } => self.finish_reboot(required, uncordon).await,
            Step::ReleaseLockAt(at) => {
                info!(node = %node, at = %at, "node is back; keeping the lock for the release delay");
                Wait::Until(at)
            }
            Step::ReleaseLock => self.release().await,
        }
    }

    /// How long until a holder's entry expires by its TTL, freeing a slot without any write to
    /// wake us. The waiting agents then take their turns (see `lock_may_admit`).
    fn until_expiry(&self, next_expiry: Option<Timestamp>) -> Duration {
        next_expiry.map_or(Duration::MAX, until)
    }

    async fn acquire_and_reboot(&self) -> Wait {
        let node_id = &self.config.node_id;
        // Read afresh, whatever the round decided on: the claim records whether someone else had
        // cordoned the node, and the cordon's write starts from this read.
        let node = match self.read_node().await {
            Ok(n) => n,
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "reading the node");
                return Wait::For(ERROR_RETRY.min(self.period()));
            }
        };
        let claim = Claim {
            unschedulable: node::is_unschedulable(&node) && !node::cordoned_by_kured(&node),
            boot_id: self.boot_id_of(&node),
        };
        match self.lock.acquire(&claim).await {
            // The lock logs the acquisition itself.
            Ok(Acquire::Acquired(_)) | Ok(Acquire::AlreadyHeld(_)) => self.drain_and_reboot(Some(node)).await,
            Ok(Acquire::Blocked {
                holders,
                seen,
                next_expiry,
                ..
            }) => {
                let holders: Vec<String> = holders.iter().map(|h| h.node_id.clone()).collect();
                info!(node = %node_id, holders = %holders.join(","), "lock taken by others first; waiting");
                self.waiting.store(true, Ordering::Relaxed);
                Wait::LockChange {
                    seen,
                    limit: self.period().min(self.until_expiry(next_expiry)),
                }
            }
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "taking the lock");
                match e.seen() {
                    Some(seen) => Wait::LockChange {
                        seen,
                        limit: self.period(),
                    },
                    None => Wait::For(ERROR_RETRY.min(self.period())),
                }
            }
        }
    }

    /// Cordon, drain and reboot, holding the lock. A drain that fails without `--force-reboot`
    /// gives the node back and releases the lock; a node whose cordon failed is never rebooted.
    /// `known`: our Node as read a moment ago, for the cordon's first attempt.
    ///
    /// The phase `draining` is published in the cordon's own write when nothing comes between
    /// the two but the labels and annotations of the reboot (no `--drain-delay`), else at once.
    async fn drain_and_reboot(&self, mut known: Option<Node>) -> Wait {
        let node_id = &self.config.node_id;
        let draining = self.stage(Some(true), Phase::Draining, String::new());
        let draining = if self.config.drain_delay.is_zero() {
            draining
        } else {
            if let Some(state) = draining {
                self.write_state(state).await;
            }
            None
        };
        if !self.config.pre_reboot_node_labels.is_empty() || self.config.annotate_nodes {
            // Those writes change the Node: the cordon reads it again.
            known = None;
        }
        if let Err(e) = self.node.set_labels(&self.config.pre_reboot_node_labels).await {
            error!(node = %node_id, error = %crate::error_chain(&e), "setting pre-reboot labels");
        }
        if self.config.annotate_nodes {
            self.best_effort(
                "annotating the reboot as in progress",
                self.node.annotate_reboot_started(Timestamp::now()),
            )
            .await;
        }
        // As upstream: the delay first, then the drain's notification, sent as the drain starts.
        if !self.config.drain_delay.is_zero() {
            info!(node = %node_id, delay = ?self.config.drain_delay, "waiting before the drain");
            tokio::time::sleep(self.config.drain_delay).await;
        }
        self.notifier
            .notify(
                Event::Drain,
                &notify::render(&self.config.message_template_drain, node_id),
            )
            .await;
        // Transient API errors are retried until the drain's deadline; without one, for a bounded
        // time, after which the cycle is given up and tried again later.
        let started = tokio::time::Instant::now();
        let drain_deadline = self.config.drain.timeout.map(|t| started + t);
        let mut with_state = Annotations::new();
        if let Some(state) = &draining {
            with_state.insert(STATE_ANNOTATION.to_owned(), state.to_json().into());
        }
        let known = std::sync::Mutex::new(known);
        let cordon = kube_error::retry_transient(
            "cordoning",
            drain_deadline.unwrap_or(started + API_RETRY_LIMIT),
            node::NodeError::is_retryable,
            || {
                let known = known.lock().unwrap_or_else(|e| e.into_inner()).take();
                self.node.cordon_with(known, &with_state)
            },
        )
        .await;
        if let Some(state) = draining {
            match &cordon {
                Ok((_, true)) => self.published_as(state),
                // Nothing written (cordoned before), or the cordon failed: publish on its own.
                _ => self.write_state(state).await,
            }
        }
        let cordon = cordon.map(|(c, _)| c);
        let (cordoned, by_kured, drained) = match cordon {
            Ok(c) => (
                true,
                c == Cordon::Cordoned,
                self.drainer
                    .drain_by(node_id, drain_deadline)
                    .await
                    .map(drop)
                    .map_err(|e| crate::error_chain(&e)),
            ),
            Err(e) => (false, false, Err(crate::error_chain(&e))),
        };
        if let Err(e) = drained {
            match decide::after_drain_failure(&self.policy, cordoned, by_kured) {
                AfterDrainFailure::RebootAnyway => {
                    warn!(node = %node_id, error = %e, "drain failed; rebooting anyway (--force-reboot)");
                }
                AfterDrainFailure::Abort { uncordon } => {
                    error!(node = %node_id, error = %e, cordoned, "drain failed; giving the node back and releasing the lock");
                    self.drain_failed.store(true, Ordering::Relaxed);
                    return self.give_back(uncordon, true).await;
                }
            }
        }
        if !self.config.reboot_delay.is_zero() {
            info!(node = %node_id, delay = ?self.config.reboot_delay, "waiting before the reboot");
            tokio::time::sleep(self.config.reboot_delay).await;
        }
        // The slot may have expired by its TTL during a long drain and been taken by another node:
        // make sure, from a fresh read, that it is still ours before the one step that cannot be
        // undone.
        if let Some(wait) = self.confirm_slot(cordoned && !by_kured, by_kured).await {
            return wait;
        }
        self.notifier
            .notify(
                Event::Reboot,
                &notify::render(&self.config.message_template_reboot, node_id),
            )
            .await;
        let rebooter = self.config.rebooter.describe();
        self.publish(Some(true), Phase::Rebooting, rebooter.clone()).await;
        info!(node = %node_id, rebooter = %rebooter, "rebooting");
        match self.reboot().await {
            // `reboot` returns only when the reboot did not happen (an error); were it ever to
            // return otherwise, the boot ID says at the next round whether it happened.
            Ok(()) => Wait::For(self.period()),
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "reboot failed; the node stays drained and the lock held; trying again");
                Wait::For(ERROR_RETRY.max(self.period().min(Duration::from_secs(300))))
            }
        }
    }

    /// Whether the lock slot is still ours, read fresh; `None` when it is (or was renewed), else
    /// what to wait for after giving the node back (lost) or failing to read (the next round
    /// decides again).
    async fn confirm_slot(&self, was_unschedulable: bool, by_kured: bool) -> Option<Wait> {
        let node_id = &self.config.node_id;
        let boot_id = match self.current_boot_id().await {
            Ok(id) => id,
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "reading the boot ID before the reboot");
                return Some(Wait::For(ERROR_RETRY.min(self.period())));
            }
        };
        let claim = Claim {
            unschedulable: was_unschedulable,
            boot_id,
        };
        match self.lock.confirm(&claim).await {
            Ok(Acquire::AlreadyHeld(_)) => None,
            Ok(Acquire::Acquired(_)) => {
                warn!(node = %node_id, "our lock entry had expired by its TTL before the reboot; a slot was free and it is ours again");
                None
            }
            Ok(Acquire::Blocked { holders, .. }) => {
                warn!(node = %node_id, holders = %holders.iter().map(|h| h.node_id.as_str()).collect::<Vec<_>>().join(","),
                    "our lock entry expired by its TTL before the reboot and the slot is taken; giving the node back and waiting again");
                Some(self.give_back(by_kured, true).await)
            }
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "reading the lock before the reboot; not rebooting until it is read");
                Some(Wait::For(ERROR_RETRY.min(self.period())))
            }
        }
    }

    /// Returns the node to service without a reboot: uncordon (if `uncordon`), put on the
    /// post-reboot labels in place of the pre-reboot ones (as upstream does after a failed drain),
    /// then drop our lock entry (if `release`), without the release delay — the node never went
    /// down. The lock is kept until the uncordon has succeeded, so the node is never left cordoned
    /// without it.
    async fn give_back(&self, uncordon: bool, release: bool) -> Wait {
        let node_id = &self.config.node_id;
        let retry = || Wait::For(ERROR_RETRY.min(self.period()));
        if uncordon {
            let uncordoned = kube_error::retry_transient(
                "uncordoning",
                tokio::time::Instant::now() + API_RETRY_LIMIT,
                node::NodeError::is_retryable,
                || self.node.uncordon(),
            )
            .await;
            if let Err(e) = uncordoned {
                error!(node = %node_id, error = %crate::error_chain(&e), "cannot uncordon; keeping the lock until it is done");
                return retry();
            }
        }
        if let Err(e) = self.node.set_labels(&self.config.post_reboot_node_labels).await {
            error!(node = %node_id, error = %crate::error_chain(&e), "setting post-reboot labels");
        }
        if self.config.annotate_nodes {
            self.best_effort(
                "removing the reboot-in-progress annotation",
                self.node.annotate_reboot_finished(),
            )
            .await;
        }
        if release {
            if let Err(e) = self.lock.release_now().await {
                error!(node = %node_id, error = %crate::error_chain(&e), "releasing the lock");
                return retry();
            }
            info!(node = %node_id, "node given back and lock released");
        } else {
            info!(node = %node_id, "node given back: kured's cordon outlived its lock entry");
        }
        if self.drain_failed.swap(false, Ordering::Relaxed) {
            // The drain failed: try again after a period, as upstream does.
            Wait::For(self.period())
        } else {
            Wait::Now
        }
    }

    /// The node came back from its reboot: return it to service, then release the lock (after
    /// the durable release delay).
    /// The phase `recovering` is published in the uncordon's own write when there is one.
    async fn finish_reboot(&self, required: Option<bool>, uncordon: bool) -> Wait {
        let node_id = &self.config.node_id;
        info!(node = %node_id, uncordon, "node rebooted; returning it to service");
        if let Ok(mut p) = self.published.lock() {
            // The reboot is done: remember when, for `kured status`.
            let at = Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| Timestamp::now())
                .to_string();
            *p = Some(AgentState {
                last_reboot: Some(at),
                ..p.clone().unwrap_or_else(idle_state)
            });
        }
        // The Node this round read: the uncordon starts from it, and it tells whether the
        // reboot-in-progress annotation (only kured writes it) is there to remove.
        let known = self.known_node(LOCK_READ_REUSE);
        let recovering = self.stage(required, Phase::Recovering, String::new());
        let mut unpublished = recovering.clone();
        if uncordon {
            let mut with_state = Annotations::new();
            if let Some(state) = &recovering {
                with_state.insert(STATE_ANNOTATION.to_owned(), state.to_json().into());
            }
            match self.node.uncordon_with(known.clone(), &with_state).await {
                Ok(true) => {
                    if let Some(state) = unpublished.take() {
                        self.published_as(state);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    if let Some(state) = unpublished.take() {
                        self.write_state(state).await;
                    }
                    error!(node = %node_id, error = %crate::error_chain(&e), "uncordoning");
                    return Wait::For(ERROR_RETRY.min(self.period()));
                }
            }
        }
        if let Some(state) = unpublished {
            self.write_state(state).await;
        }
        if let Err(e) = self.node.set_labels(&self.config.post_reboot_node_labels).await {
            error!(node = %node_id, error = %crate::error_chain(&e), "setting post-reboot labels");
            return Wait::For(ERROR_RETRY.min(self.period()));
        }
        self.best_effort(
            "removing the reboot-in-progress annotation",
            self.node.annotate_reboot_finished_on(known.as_ref()),
        )
        .await;
        self.remove_taint().await;
        if uncordon {
            self.notifier
                .notify(
                    Event::Uncordon,
                    &notify::render(&self.config.message_template_uncordon, node_id),
                )
                .await;
        }
        self.release().await
    }

    async fn release(&self) -> Wait {
        let node_id = &self.config.node_id;
        match self.lock.release().await {
            // The lock logs the release and the delay itself. Look again at once, so that the
            // published state says "idle" (with the last reboot) right away.
            Ok(Release::Released) => Wait::Now,
            Ok(Release::NotHeld) => Wait::For(self.period()),
            Ok(Release::NotBefore(at)) => Wait::Until(at),
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "releasing the lock");
                Wait::For(ERROR_RETRY.min(self.period()))
            }
        }
    }

    async fn remove_taint(&self) {
        if let Some(key) = &self.config.prefer_no_schedule_taint {
            self.best_effort(
                "removing the PreferNoSchedule taint",
                self.node.remove_prefer_no_schedule_taint(key),
            )
            .await;
        }
    }

    /// Takes over the last reboot time from what a previous agent on this node published.
    fn adopt_published(&self, node: &k8s_openapi::api::core::v1::Node) {
        let Ok(mut published) = self.published.lock() else {
            return;
        };
        if published.is_some() {
            return;
        }
        let previous = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STATE_ANNOTATION))
            .and_then(|text| AgentState::parse(text).ok());
        if let Some(previous) = previous {
            *published = Some(previous);
        }
    }

    /// Publishes our state on our Node for `kured status`, when it changed.
    async fn publish(&self, reboot_required: Option<bool>, phase: Phase, detail: String) {
        if let Some(next) = self.stage(reboot_required, phase, detail) {
            self.write_state(next).await;
        }
    }

    /// Enters `phase` and returns the state to publish for it, `None` when it is published
    /// already. The caller writes it, on its own ([`Agent::write_state`]) or along with another
    /// write of the Node (then [`Agent::published_as`]).
    fn stage(&self, reboot_required: Option<bool>, phase: Phase, detail: String) -> Option<AgentState> {
        // The phases published are the ones /healthz bounds.
        self.liveness.entering(phase);
        let published = self.published.lock().ok()?;
        let last_reboot = published.as_ref().and_then(|p| p.last_reboot.clone());
        let next = AgentState {
            reboot_required,
            phase,
            detail,
            last_reboot,
        };
        (published.as_ref() != Some(&next)).then_some(next)
    }

    /// Writes `state` to our Node on its own.
    async fn write_state(&self, state: AgentState) {
        match self.node.set_annotation(STATE_ANNOTATION, &state.to_json()).await {
            Ok(node) => {
                self.keep_node(&node, tokio::time::Instant::now());
                self.published_as(state);
            }
            Err(e) => {
                warn!(node = %self.config.node_id, error = %crate::error_chain(&e), "publishing the agent state")
            }
        }
    }

    /// Records that `state` is what our Node says.
    fn published_as(&self, state: AgentState) {
        if let Ok(mut published) = self.published.lock() {
            *published = Some(state);
        }
    }

    /// Removes the lock entries of holders whose Node no longer exists (see `lock::reclaim`), and
    /// counts them; true when a slot was freed.
    async fn reclaim_gone_holders(&self, seen: &Seen) -> bool {
        let reclaimed = crate::lock::reclaim::reclaim_gone_holders(&self.lock, seen, Timestamp::now()).await;
        for _ in &reclaimed {
            self.metrics.count_lock_reclaimed();
        }
        !reclaimed.is_empty()
    }

    /// Reboots through the configured rebooter; a failure is counted by its reason.
    async fn reboot(&self) -> Result<(), crate::reboot::RebootError> {
        let result = self.config.rebooter.reboot().await;
        if let Err(e) = &result {
            self.metrics.count_reboot_failure(e.metric_reason());
        }
        result
    }

    /// Runs a node update whose failure must not stop the agent; the failure is logged.
    async fn best_effort<T, E: std::error::Error + 'static>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, E>>,
    ) {
        if let Err(e) = op.await {
            warn!(node = %self.config.node_id, error = %crate::error_chain(&e), "{what}");
        }
    }
}

/// A small random source for jitter; no cryptographic strength needed.
struct Jitter(std::sync::Mutex<u64>);

impl Jitter {
    fn seeded(node: &str) -> Jitter {
        let mut seed = u64::from(std::process::id()) ^ Timestamp::now().as_nanosecond() as u64;
        for b in node.bytes() {
            seed = seed.rotate_left(5) ^ u64::from(b);
        }
        Jitter(std::sync::Mutex::new(seed | 1))
    }

    /// A duration in `[0, max)`.
    fn next(&self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(self.draw() % nanos)
    }

    /// A random number.
    fn draw(&self) -> u64 {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // xorshift64
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }
}

/// Changes to the sentinel file, through inotify on its directory (the file itself comes and
/// goes). Without a file sentinel, or if inotify is unavailable, it never fires and the period
/// does the work.
struct SentinelWatch {
    events: Option<(inotify::EventStream<Vec<u8>>, std::ffi::OsString)>,
}

impl SentinelWatch {
    fn new(path: Option<&Path>) -> SentinelWatch {
        let events = path.and_then(|path| match Self::watch(path) {
            Ok(events) => Some(events),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot watch the sentinel file; checking it every period");
                None
            }
        });
        SentinelWatch { events }
    }

    fn watch(path: &Path) -> std::io::Result<(inotify::EventStream<Vec<u8>>, std::ffi::OsString)> {
        use inotify::{Inotify, WatchMask};
        let dir: PathBuf = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/"))
            .to_owned();
        let name = path.file_name().map(ToOwned::to_owned).unwrap_or_default();
        let inotify = Inotify::init()?;
        inotify.watches().add(
            &dir,
            WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::CLOSE_WRITE,
        )?;
        Ok((inotify.into_event_stream(vec![0u8; 4096])?, name))
    }

    /// Resolves when the sentinel file is created, removed or replaced.
    async fn changed(&mut self) {
        use futures_util::StreamExt;
        let Some((events, name)) = &mut self.events else {
            return std::future::pending().await;
        };
        loop {
            match events.next().await {
                Some(Ok(event)) if event.name.as_deref() == Some(name.as_os_str()) => return,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    warn!(error = %e, "reading sentinel file events; checking it every period from now on");
                    self.events = None;
                    return std::future::pending().await;
                }
                None => {
                    self.events = None;
                    return std::future::pending().await;
                }
            }
        }
    }
}

fn idle_state() -> AgentState {
    AgentState {
        reboot_required: Some(false),
        phase: Phase::Idle,
        detail: String::new(),
        last_reboot: None,
    }
}

/// The phase a step puts the agent in, for `kured status`; `None` for steps that are only a
/// moment (their procedures publish their own phases).
fn phase_of(step: &Step) -> Option<(Phase, String)> {
    Some(match step {
        Step::Idle { .. } => (Phase::Idle, String::new()),
        Step::SentinelFailed(e) => (Phase::SentinelError, e.clone()),
        Step::WaitForWindow { opens, .. } => (
            Phase::WaitingForWindow,
            opens.map(|t| format!("opens {t}")).unwrap_or_default(),
        ),
        Step::Blocked(reasons) => (Phase::Blocked, reasons.join("; ")),
        // Not the holders: they change at every hand-off, and waiting agents do not look at each
        // one (see `Agent::lock_may_admit`); `kured status` names them from the lock itself.
        Step::WaitForLock { .. } => (Phase::WaitingForLock, String::new()),
        Step::LockUnreadable(e) | Step::LockReadFailed(e) => (Phase::LockUnreadable, e.clone()),
        Step::ReleaseLockAt(at) => (Phase::Releasing, format!("until {at}")),
        Step::CheckBlockers
        | Step::AcquireLock
        | Step::FinishReboot { .. }
        | Step::ResumeReboot
        | Step::GiveBack { .. }
        | Step::ReleaseLock => return None,
    })
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

    #[test]
    fn the_longest_wait_covers_a_lock_watch_error_and_its_retry() {
        let limit = Duration::from_secs(10);
        let lock = Wait::LockChange {
            seen: Seen::new(None),
            limit,
        };
        assert_eq!(lock.longest(), 2 * limit);
        assert_eq!(Wait::For(limit).longest(), limit);
        assert_eq!(Wait::Now.longest(), Duration::ZERO);
        assert_eq!(Wait::Until(Timestamp::UNIX_EPOCH).longest(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_tick_interval_ends_on_time() {
        // The default --period against the minutely metric refresh.
        let (took, ticks) = paused(Duration::from_secs(3600), METRIC_REFRESH).await;
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
