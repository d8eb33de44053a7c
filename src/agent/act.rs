//! Carrying out a [`Action`]: taking the lock, cordon, drain and reboot, the slot confirmed before
//! the reboot, the taint. Giving the node back, after a reboot or without one, is `back`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use tracing::{error, info, warn};

use super::{Agent, Wait};
use crate::agent_state::{Phase, STATE_ANNOTATION};
use crate::decide::{self, Action, AfterDrainFailure, Situation};
use crate::events::Reason;
use crate::kube_error;
use crate::lock::{Acquire, Claim, LockSnapshot, RebootLock};
use crate::node::{self, Annotations, Cordon};
use crate::notify::{self, Event, Notifier};

/// How long a write that must happen (a cordon without `--drain-timeout`, an uncordon) retries
/// transient API errors within one round: an API server outage of a few minutes costs no
/// round; a longer one ends the round, and the next one starts over from what it observes.
pub(super) const API_RETRY_LIMIT: Duration = Duration::from_secs(180);

impl<N: Notifier, L: RebootLock> Agent<N, L> {
    pub(super) async fn execute(&self, step: Action, seen: LockSnapshot, required: Option<bool>) -> Wait {
        let node = &self.config.node_id;
        // Whether this agent's turn for a free slot came up during the last pause, and with the
        // lock as it was then; good for this round only.
        let turn = self.turn.lock().unwrap_or_else(|e| e.into_inner()).take();
        match step {
            Action::Idle { remove_taint } => {
                if remove_taint {
                    self.remove_taint().await;
                }
                self.wait(Situation::Idle)
            }
            Action::SentinelFailed(e) => {
                warn!(node = %node, error = %e, "sentinel check failed; no reboot until it succeeds");
                self.wait(Situation::SentinelFailed)
            }
            Action::WaitForWindow { opens, remove_taint } => {
                if remove_taint {
                    self.remove_taint().await;
                }
                info!(node = %node, opens = ?opens.map(|t| t.to_string()), "reboot required; waiting for the reboot window");
                self.wait(Situation::WindowClosed {
                    opens,
                    draw: self.jitter.draw(),
                })
            }
            Action::CheckBlockers => self.wait(Situation::LookAgain),
            Action::Blocked(reasons) => {
                info!(node = %node, blockers = %reasons.join("; "), "reboot required, but blocked");
                self.wait(Situation::Blocked)
            }
            Action::WaitForLock {
                holders,
                next_expiry,
                add_taint,
            } => {
                if self.reclaim_gone_holders(&seen).await {
                    return self.wait(Situation::LookAgain);
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
                self.wait(Situation::LockTaken {
                    seen,
                    next_expiry,
                    window_closes: self.window_closes(),
                })
            }
            Action::LockUnreadable(e) => {
                error!(node = %node, error = %e, "cannot read the lock; leaving it as it is and checking again");
                self.wait(Situation::LockUnreadable { seen })
            }
            Action::LockReadFailed(e) => {
                error!(node = %node, error = %e, "reading the lock failed; trying again");
                self.wait(Situation::ApiError)
            }
            // A free slot is taken in turns (see `lock_may_admit`): a round that finds one without
            // its turn having come up for the lock as it is now waits for it first.
            Action::AcquireLock if turn.as_ref() == Some(&seen) => self.acquire_and_reboot().await,
            Action::AcquireLock => {
                self.waiting.store(true, Ordering::Relaxed);
                self.wait(Situation::AwaitingTurn {
                    seen,
                    window_closes: self.window_closes(),
                })
            }
            Action::ResumeReboot { boot_id } => {
                info!(node = %node, "holding the lock from before a restart; the node has not rebooted yet");
                self.drain_and_reboot(None, Some(boot_id)).await
            }
            Action::GiveBack { uncordon, release } => self.give_back(uncordon, release).await,
            Action::FinishReboot { uncordon } => self.finish_reboot(required, uncordon).await,
            Action::ReleaseLockAt(at) => {
                info!(node = %node, at = %at, "node is back; keeping the lock for the release delay");
                self.wait(Situation::ReleaseDelay { until: at })
            }
            Action::ReleaseLock => self.release().await,
            Action::Paused { why, remove_taint } => {
                if remove_taint {
                    self.remove_taint().await;
                }
                info!(node = %node, why = %why, "reboot required, but paused");
                self.wait(Situation::Paused)
            }
            Action::BackOff(record) => {
                info!(node = %node, count = record.count, until = %record.until,
                    "reboot required, but holding back: the node loops through reboots");
                self.wait(Situation::BackingOff { until: record.until })
            }
            Action::VerifyHealth { since, halted } => self.verify_health(since, halted, required).await,
            Action::HaltLifted => self.halt_lifted().await,
            Action::RolloutHalted(holders) => {
                info!(node = %node, halted = %super::publish::halted_detail(&holders),
                    "reboot required; the rollout is halted, waiting for the lock to change");
                self.until_lock_changes(seen)
            }
            Action::FleetPaused(why) => {
                info!(node = %node, why = %why, "reboot required; the fleet is paused, waiting for the lock to change");
                self.until_lock_changes(seen)
            }
        }
    }

    /// Nothing of the lock is ours to take until it changes (a halted rollout, a paused fleet);
    /// nothing was written but our state, so the next round may reuse the Node.
    fn until_lock_changes(&self, seen: LockSnapshot) -> Wait {
        self.waiting.store(true, Ordering::Relaxed);
        self.wait(Situation::LockTaken {
            seen,
            next_expiry: None,
            window_closes: self.window_closes(),
        })
    }

    async fn acquire_and_reboot(&self) -> Wait {
        let node_id = &self.config.node_id;
        // Read afresh, whatever the round decided on: the claim records whether someone else had
        // cordoned the node, and the cordon's write starts from this read.
        let node = match self.read_node().await {
            Ok(n) => n,
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "reading the node");
                return self.wait(Situation::ApiError);
            }
        };
        // The round may have decided on a Node read while waiting: a pause set since then is
        // seen here, before the slot is taken.
        if let Some(why) = self.controls_of(&node).paused {
            info!(node = %node_id, why = %why, "reboot required, but paused");
            self.publish(Some(true), Phase::Paused, why).await;
            return self.wait(Situation::Paused);
        }
        self.lock
            .note_labels(node.metadata.labels.as_ref().unwrap_or(&Default::default()));
        let claim = Claim {
            unschedulable: node::is_unschedulable(&node) && !node::cordoned_by_kured(&node),
            boot_id: self.boot_id_of(&node),
        };
        match self.lock.acquire(&claim).await {
            // The lock logs the acquisition itself.
            Ok(Acquire::Acquired(entry)) | Ok(Acquire::AlreadyHeld(entry)) => {
                self.events.step(Reason::LockAcquired);
                self.note_lock_entry(Some(&entry));
                self.drain_and_reboot(Some(node), claim.boot_id).await
            }
            Ok(Acquire::Blocked {
                holders,
                seen,
                next_expiry,
                ..
            }) => {
                let holders: Vec<String> = holders.iter().map(|h| h.node_id.clone()).collect();
                info!(node = %node_id, holders = %holders.join(","), "lock taken by others first; waiting");
                self.waiting.store(true, Ordering::Relaxed);
                self.wait(Situation::LockTakenFirst { seen, next_expiry })
            }
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "taking the lock");
                match e.seen() {
                    Some(seen) => self.wait(Situation::LockUnreadable { seen }),
                    None => self.wait(Situation::ApiError),
                }
            }
        }
    }

    /// Cordon, drain and reboot, holding the lock. A drain that fails without `--force-reboot`
    /// gives the node back and releases the lock; a node whose cordon failed is never rebooted.
    /// `known`: our Node as read a moment ago, for the cordon's first attempt; `boot_id`: the
    /// boot running now, as the lock entry records it.
    ///
    /// The phase `draining` is published in the cordon's own write when nothing comes between
    /// the two but the labels and annotations of the reboot (no `--drain-delay`), else at once.
    async fn drain_and_reboot(&self, mut known: Option<Node>, boot_id: Option<String>) -> Wait {
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
        self.events.cordoned(&cordon);
        let (cordoned, by_kured, drained) = match cordon {
            Ok(c) => (
                true,
                c == Cordon::Cordoned,
                self.drainer
                    .drain_by(node_id, drain_deadline)
                    .await
                    .map(|summary| self.events.drained(&summary))
                    .map_err(|e| crate::error_chain(&e)),
            ),
            Err(e) => (false, false, Err(crate::error_chain(&e))),
        };
        match &drained {
            Ok(()) => self.metrics.observe_drain(started.elapsed()),
            Err(_) => self.metrics.count_drain_failure(),
        }
        if let Err(e) = drained {
            self.events.record(Reason::DrainFailed, e.clone());
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
        let claim = Claim {
            unschedulable: cordoned && !by_kured,
            boot_id,
        };
        if let Some(wait) = self.confirm_slot(&claim, by_kured).await {
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
        self.events.rebooting(&rebooter).await;
        match self.reboot().await {
            // `reboot` returns only when the reboot did not happen (an error); were it ever to
            // return otherwise, the boot ID says at the next round whether it happened.
            Ok(()) => self.wait(Situation::RebootRequested),
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "reboot failed; the node stays drained and the lock held; trying again");
                self.wait(Situation::RebootFailed)
            }
        }
    }

    /// Whether the lock slot is still ours, read fresh; `None` when it is (or was renewed with
    /// `claim`), else what to wait for after giving the node back (lost; uncordoned if
    /// `by_kured`) or failing to read (the next round decides again).
    async fn confirm_slot(&self, claim: &Claim, by_kured: bool) -> Option<Wait> {
        let node_id = &self.config.node_id;
        match self.lock.confirm(claim).await {
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
                Some(self.wait(Situation::ApiError))
            }
        }
    }

    pub(super) async fn remove_taint(&self) {
        if let Some(key) = &self.config.prefer_no_schedule_taint {
            self.best_effort(
                "removing the PreferNoSchedule taint",
                self.node.remove_prefer_no_schedule_taint(key),
            )
            .await;
        }
    }

    /// Removes the lock entries of holders whose Node no longer exists
    /// ([`RebootLock::reclaim_gone_holders`]), and counts them; true when a slot was freed.
    async fn reclaim_gone_holders(&self, seen: &LockSnapshot) -> bool {
        let reclaimed = self.lock.reclaim_gone_holders(seen, Timestamp::now()).await;
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
    pub(super) async fn best_effort<T, E: std::error::Error + 'static>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, E>>,
    ) {
        if let Err(e) = op.await {
            warn!(node = %self.config.node_id, error = %crate::error_chain(&e), "{what}");
        }
    }
}
