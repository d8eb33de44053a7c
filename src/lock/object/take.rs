//! Taking a slot ([`RebootLock::acquire`](crate::lock::RebootLock::acquire), [`RebootLock::confirm`](crate::lock::RebootLock::confirm)) and recording our post-reboot
//! gate in our entry ([`RebootLock::record_gate`](crate::lock::RebootLock::record_gate)): read, decide, write, as every change.

use std::collections::BTreeMap;

use tracing::{debug, info};

use super::{ObjectLock, node_ids};
use crate::lock::admit::Around;
use crate::lock::record;
use crate::lock::{Acquire, Claim, Gate, LockError, Result};

impl ObjectLock {
    /// Takes (or keeps) a slot for our node, as [`RebootLock::acquire`](crate::lock::RebootLock::acquire); `fresh` as for
    /// [`ObjectLock::update`]: [`RebootLock::confirm`](crate::lock::RebootLock::confirm) decides on a fresh read.
    pub(super) async fn take_slot(&self, claim: &Claim, fresh: bool) -> Result<Acquire> {
        let settings = &self.settings;
        // The other object's holders as last read (every round reads them again while there
        // are any, and the first read of all does): a slot taken here is checked against a
        // fresh read right after the write anyway. A decision before the reboot reads afresh.
        let outside = if fresh {
            self.holders_beside().await?
        } else {
            self.outside_at((self.clock)())
        };
        let labels = self.labels();
        let outcome = self
            .update(fresh, |read, now| {
                let around = Around {
                    outside: &outside,
                    pause: read.pause(),
                    labels: labels.as_ref(),
                };
                record::decide_acquire_in(read.annotation(), &around, settings, claim, now)
            })
            .await?;
        let outcome = match outcome {
            Acquire::Acquired(entry) if self.other.is_some() => {
                self.check_beside(entry, labels.as_ref()).await?
            }
            outcome => outcome,
        };
        self.log_acquire(&outcome);
        Ok(outcome)
    }

    fn log_acquire(&self, outcome: &Acquire) {
        let node = &self.settings.node_id;
        match outcome {
            Acquire::Acquired(entry) => info!(object = %self.object, node = %node,
                created = ?entry.created, "lock acquired"),
            Acquire::AlreadyHeld(entry) => debug!(object = %self.object, node = %node,
                created = ?entry.created, "lock already held"),
            Acquire::Blocked {
                reason,
                holders,
                limit,
                ..
            } => debug!(object = %self.object, node = %node, %reason,
                holders = %node_ids(holders), limit, "no slot of the lock for us"),
        }
    }

    /// Our node's values of the per-label keys as last noted; `None` before the first note.
    pub(super) fn labels(&self) -> Option<BTreeMap<String, String>> {
        self.labels.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records `gate` in our entry, as [`RebootLock::record_gate`](crate::lock::RebootLock::record_gate).
    pub(super) async fn write_gate(&self, gate: Option<Gate>) -> Result<()> {
        let node = &self.settings.node_id;
        let held = self
            .update(false, |read, _now| {
                record::decide_gate(read.annotation(), node, gate.as_ref())
            })
            .await?;
        if !held {
            return Err(LockError::NotHeld {
                object: self.object.clone(),
                annotation: self.annotation.clone(),
                node: node.clone(),
            });
        }
        info!(object = %self.object, node = %node, gate_since = ?gate.as_ref().map(|g| g.since),
            halted = ?gate.as_ref().and_then(|g| g.halted.as_deref()), "post-reboot gate recorded in the lock");
        Ok(())
    }
}
