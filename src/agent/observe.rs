//! What a round looks at: the sentinel, our Node (read, or reused while waiting for the lock),
//! the boot ID, the lock as it stands for this node, and the reboot window — gathered into the
//! [`Observation`] that [`decide`](crate::decide::decide) takes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use tracing::warn;

use super::Agent;
use crate::agent_state::RebootLoop;
use crate::controls::{self, NodeControls};
use crate::decide::{self, LockView, LoopRecord, Observation, OurEntry, SentinelView};
use crate::lock::{LockEntry, LockRecord, LockSnapshot, RebootLock, Slot, Standing};
use crate::node;
use crate::notify::Notifier;

/// A Node read while waiting for the lock stands in for a new read at the next waiting round for
/// at most this long (see [`Agent::observe`]).
const WAITING_NODE_REUSE: Duration = Duration::from_secs(600);

impl<N: Notifier, L: RebootLock> Agent<N, L> {
    pub(super) async fn check_sentinel(&self) -> SentinelView {
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

    pub(super) async fn refresh_metric(&self) {
        if let SentinelView::Failed(e) = self.check_sentinel().await {
            warn!(node = %self.config.node_id, error = %e, "sentinel check failed");
        }
    }

    /// Gathers what `decide` needs. The lock is read in full and judged by the lock's own rules
    /// ([`RebootLock::standing`]), so "available" means exactly what `acquire` would conclude.
    ///
    /// The Node comes from the watch of it when the watch is provably current: it delivered the
    /// version of the Node this agent last read or wrote ([`Agent::watched_node`]), so it has
    /// that version or a later one, with every write of ours in it. Every write to the Node
    /// goes through [`OwnNode`](node::OwnNode), which keeps the Node each write returns and
    /// forgets it when a write fails (the write may have been made): then this round reads it.
    /// The status write of the condition `RebootRequired` goes through an `OwnNode` of its own
    /// (it runs beside the rounds), so it is not what the rounds keep; that needs nothing: the
    /// watch delivers its version after the one kept, so a watch that vouches for the kept one
    /// may or may not have it yet, and the round takes nothing from the Node's conditions.
    ///
    /// Where the watch cannot vouch (RBAC forbids it, it is recovering, or it lags): while the
    /// agent waits for the lock, holding nothing, the Node last read or written stands in (up to
    /// [`WAITING_NODE_REUSE`]): nothing the decision takes from it changes meanwhile but by this
    /// agent's own writes (kured's cordon record, our taint), which are kept as written, and the
    /// round that takes the lock reads the Node afresh for what it records (the cordon of others).
    /// Otherwise the Node is read.
    pub(super) async fn observe(
        &self,
        now: Timestamp,
        sentinel: SentinelView,
    ) -> Result<(Observation, LockSnapshot), String> {
        let reuse = self.waiting.swap(false, Ordering::Relaxed);
        let node = match self
            .watched_node()
            .or_else(|| self.node.known(WAITING_NODE_REUSE).filter(|_| reuse))
        {
            Some(node) => node,
            None => self.read_node().await.map_err(|e| crate::error_chain(&e))?,
        };
        self.adopt_published(&node);
        self.lock
            .note_labels(node.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()));
        let controls = self.controls_of(&node);
        let boot_id = self.boot_id_of(&node).unwrap_or_default();
        let taint_present = self
            .config
            .prefer_no_schedule_taint
            .as_deref()
            .is_some_and(|key| node::prefer_no_schedule_taint(&node, key).is_some());
        let (lock, seen) = match self.lock.read().await {
            Ok(state) => {
                let record = state.record.as_ref();
                self.note_lock_entry(record.and_then(|r| r.held_by(&self.config.node_id, now)));
                self.metrics.set_lock_age(oldest_holder_age(record, now));
                (self.lock_view(&state.seen, now), state.seen)
            }
            Err(e) if e.is_corrupt() => {
                let seen = e.seen().unwrap_or_else(|| LockSnapshot::new(None));
                (LockView::Unreadable(crate::error_chain(&e)), seen)
            }
            Err(e) => (
                LockView::ReadFailed(crate::error_chain(&e)),
                LockSnapshot::new(None),
            ),
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
            paused: controls.paused,
            reboot_now: controls.reboot_now,
            halt_mark: controls.halted,
            last_reboot: self.last_reboot(),
            reboot_loop: self
                .reboot_loop
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(loop_record),
        };
        Ok((observation, seen))
    }

    /// Records our live lock entry as read or written (`None`: we hold none): `kured_lock_held`,
    /// and its `created` as the start of the reboot cycle (see [`Agent::release`]).
    pub(super) fn note_lock_entry(&self, own: Option<&LockEntry>) {
        self.metrics.set_lock_held(own.is_some());
        *self.lock_taken.lock().unwrap_or_else(|e| e.into_inner()) = own.and_then(|e| e.created);
    }

    /// What `node`'s annotations ask of us; a value read on its safe side is logged, once.
    pub(super) fn controls_of(&self, node: &Node) -> NodeControls {
        let controls = controls::node_controls(node.metadata.annotations.as_ref());
        let mut logged = self.control_warnings.lock().unwrap_or_else(|e| e.into_inner());
        if *logged != controls.warnings {
            for warning in controls.warnings.iter().filter(|w| !logged.contains(w)) {
                warn!(node = %self.config.node_id, "{warning}");
            }
            logged.clone_from(&controls.warnings);
        }
        controls
    }

    /// When this agent (or one before it on this node) last finished a reboot.
    fn last_reboot(&self) -> Option<Timestamp> {
        let published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        published.as_ref()?.last_reboot.as_deref()?.parse().ok()
    }

    /// Records the reboot loop that holds for `obs` (see [`decide::reboot_loop`]), to be
    /// published with the state: in a round that needs a reboot, holds no slot and is not paused
    /// — the rounds where [`decide::decide`] looks at it. A reboot asked for by hand leaves the
    /// record as it is.
    pub(super) fn note_reboot_loop(&self, obs: &Observation, now: Timestamp) {
        let Some(guard) = &self.policy.loop_guard else {
            return;
        };
        if obs.sentinel != SentinelView::Required
            || obs.reboot_now
            || obs.paused.is_some()
            || matches!(obs.lock, LockView::Ours(_))
        {
            return;
        }
        let record = decide::reboot_loop(obs, guard, now).map(|r| RebootLoop {
            count: r.count,
            reboot: r.reboot.to_string(),
            until: r.until.to_string(),
        });
        let mut kept = self.reboot_loop.lock().unwrap_or_else(|e| e.into_inner());
        if *kept != record {
            if let Some(r) = &record {
                warn!(node = %self.config.node_id, count = r.count, until = %r.until,
                    "reboot needed again right after the last one: a reboot loop; backing off");
            }
            *kept = record;
        }
    }

    /// The lock as `seen`, as this node sees it. Our own entry counts as ours also once its TTL
    /// has run out: the node it put out of service must be brought back either way.
    fn lock_view(&self, seen: &LockSnapshot, now: Timestamp) -> LockView {
        match self.lock.standing(seen, now) {
            Ok(Standing { own: Some(entry), .. }) => LockView::Ours(OurEntry {
                expired: entry.is_expired(now),
                boot_id: entry.boot_id,
                was_unschedulable: entry.metadata.unschedulable,
                release_after: entry.release_after,
                gate_since: entry.gate_since,
                halted: entry.halted,
            }),
            Ok(Standing { slot: Slot::Free, .. }) => LockView::Available,
            Ok(Standing {
                slot: Slot::Taken { holders, next_expiry },
                ..
            }) => LockView::HeldByOthers {
                holders: holders.into_iter().map(|h| h.node_id).collect(),
                next_expiry,
            },
            Ok(Standing {
                slot: Slot::Halted { holders },
                ..
            }) => LockView::Halted {
                holders: holders
                    .into_iter()
                    .map(|h| (h.node_id, h.halted.unwrap_or_default()))
                    .collect(),
            },
            Ok(Standing {
                slot: Slot::Paused { value },
                ..
            }) => LockView::FleetPaused(
                controls::fleet_paused(Some(&value), &self.config.lock_object.describe())
                    .unwrap_or_else(|| format!("fleet paused ({value:?})")),
            ),
            Err(e) => LockView::Unreadable(crate::error_chain(&e)),
        }
    }

    /// When the reboot window closes: `None` when it stays open, now when it is closed already.
    /// Waiting for the lock ends there, so the taint comes off and nothing is taken outside the
    /// window.
    pub(super) fn window_closes(&self) -> Option<Timestamp> {
        let now = Timestamp::now();
        match self.config.window.next_windows(now, 1).first() {
            Some(w) if w.contains(now) => w.closes,
            _ => Some(now),
        }
    }

    /// The boot ID of the running kernel; the Node's reported one only when the kernel's cannot
    /// be read. The kubelet reports a new boot ID only some time after the boot, and an agent
    /// that judged by a stale one would take its finished reboot for one still to do.
    pub(super) fn boot_id_of(&self, node: &Node) -> Option<String> {
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

    /// Reads our Node (kept by [`OwnNode`](node::OwnNode) as the newest it knows).
    pub(super) async fn read_node(&self) -> Result<Node, node::NodeError> {
        self.node.get().await
    }

    /// The watch's Node, if it is at least as new as every Node this agent read or wrote: the
    /// watch delivered the version of the one last read or written
    /// ([`NodeWatch::current_since`](crate::node::NodeWatch::current_since)). Kept as the newest
    /// known, so the next round asks about its version.
    fn watched_node(&self) -> Option<Node> {
        let node = self.node_watch.current_since(&self.node.known_version()?)?;
        self.node.keep(&node);
        Some(node)
    }
}

/// How long the oldest live holder of the lock `record` has held it at `now` (from its entry's
/// `created`); zero when nobody holds it, or no live entry says when it was written.
fn oldest_holder_age(record: Option<&LockRecord>, now: Timestamp) -> Duration {
    record
        .into_iter()
        .flat_map(|r| r.holders(now))
        .filter_map(|entry| entry.created)
        .min()
        .map_or(Duration::ZERO, |created| decide::time_until(now, created))
}

/// The loop record as published, read back; `None` when it is not one this build wrote.
fn loop_record(published: &RebootLoop) -> Option<LoopRecord> {
    Some(LoopRecord {
        count: published.count,
        reboot: published.reboot.parse().ok()?,
        until: published.until.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_age_is_the_oldest_live_holders() {
        let now: Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        let record = |json: &str| LockRecord::parse(json).unwrap();
        let one = record(r#"{"nodeID":"a","created":"2026-12-06T11:30:00Z","TTL":0}"#);
        assert_eq!(oldest_holder_age(Some(&one), now), Duration::from_secs(1800));
        // b's entry expired by its TTL of 10 minutes: the live c's counts.
        let two = record(
            r#"{"maxOwners":2,"locks":[{"nodeID":"b","created":"2026-12-06T10:00:00Z","TTL":600000000000},{"nodeID":"c","created":"2026-12-06T11:59:00Z","TTL":0},{"nodeID":"d","created":"2026-12-06T11:59:30Z","TTL":0}]}"#,
        );
        assert_eq!(oldest_holder_age(Some(&two), now), Duration::from_secs(60));
        let empty = record(r#"{"maxOwners":2,"locks":[]}"#);
        assert_eq!(oldest_holder_age(Some(&empty), now), Duration::ZERO);
        assert_eq!(oldest_holder_age(None, now), Duration::ZERO);
        // Written a moment ahead of our clock: just now.
        let ahead = record(r#"{"nodeID":"a","created":"2026-12-06T12:00:05Z","TTL":0}"#);
        assert_eq!(oldest_holder_age(Some(&ahead), now), Duration::ZERO);
    }
}
