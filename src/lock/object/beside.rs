//! Keeping the lock beside the other backend's object, so that a fleet can switch backends
//! while it runs (see [`ObjectLock::beside`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use jiff::Timestamp;
use tracing::info;

use super::{ObjectLock, Snapshot, node_ids};
use crate::kube_error;
use crate::lock::record;
use crate::lock::{Acquire, LockEntry, LockError, RebootLock, Result};

impl ObjectLock {
    /// Keeps the lock beside `other`, the same lock in the other backend's object, so that a
    /// fleet can switch backends while it runs: the live holders kept there count against our
    /// concurrency whenever we take a slot, and a slot taken here at the moment one was taken
    /// there is given back (a holder checks the other object after its write). An entry of our
    /// own node there, from before the switch, is moved here as it is at the first read, so
    /// that its cycle goes on. An other object that does not exist, or that we may not read,
    /// holds nobody.
    pub fn beside(mut self, other: ObjectLock) -> Self {
        self.other = Some(Box::new(other));
        self
    }

    /// The live holders of other nodes in the other backend's object as the API server has it
    /// now; none without one. Kept for [`ObjectLock::outside_at`].
    pub(super) async fn holders_beside(&self) -> Result<Vec<LockEntry>> {
        let Some(other) = &self.other else {
            return Ok(Vec::new());
        };
        let snapshot = self.read_other(other).await?;
        Ok(self.take_in(other, snapshot.as_ref())?.0)
    }

    /// What the other object holds as `snapshot` (`None`: it does not exist, or we may not read
    /// it): the live holders of other nodes, kept for [`ObjectLock::outside_at`] (so that an
    /// object gone or forbidden holds nobody from then on), and our own entry there, if any.
    fn take_in(
        &self,
        other: &ObjectLock,
        snapshot: Option<&Snapshot>,
    ) -> Result<(Vec<LockEntry>, Option<LockEntry>)> {
        let node = &self.settings.node_id;
        let now = (self.clock)();
        let current = snapshot.and_then(Snapshot::annotation);
        let record = record::read(current).map_err(|source| {
            other.record_error(&snapshot.map(Snapshot::seen).unwrap_or_default(), source)
        })?;
        let (outside, own) = match record {
            None => (Vec::new(), None),
            Some(r) => (
                r.holders(now)
                    .into_iter()
                    .filter(|e| &e.node_id != node)
                    .cloned()
                    .collect(),
                r.entries().iter().find(|e| &e.node_id == node).cloned(),
            ),
        };
        *self.outside.lock().unwrap_or_else(|e| e.into_inner()) = outside.clone();
        Ok((outside, own))
    }

    /// The other object's holders as last read, those still live at `now`.
    pub(super) fn outside_at(&self, now: Timestamp) -> Vec<LockEntry> {
        let outside = self.outside.lock().unwrap_or_else(|e| e.into_inner());
        outside.iter().filter(|e| !e.is_expired(now)).cloned().collect()
    }

    /// The other object as the API server has it now; `None` when it does not exist or we may
    /// not read it (logged once).
    pub(super) async fn read_other(&self, other: &ObjectLock) -> Result<Option<Snapshot>> {
        match other.fresh_snapshot().await {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(LockError::Read { source, .. }) if kube_error::is_not_found(&source) => Ok(None),
            Err(e) if e.is_forbidden() => {
                if !self.other_warned.swap(true, Ordering::Relaxed) {
                    info!(object = %other.object, node = %self.settings.node_id, error = %crate::error_chain(&e),
                        "cannot read the other lock backend's object; its holders are not counted \
                         (grant get on it before switching backends)");
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Our slot was just taken (`entry`, with our per-label values `labels`): it stays ours if,
    /// with the live holders of the other object read now, the limits still hold (see
    /// [`record::crowded`]). Another agent switching backends may have taken a slot there between
    /// our reading it and our write; then ours is given back. Both may give back, never both
    /// keep; the next turn settles it.
    pub(super) async fn check_beside(
        &self,
        entry: LockEntry,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<Acquire> {
        let outside = match self.holders_beside().await {
            Ok(outside) => outside,
            Err(e) => {
                self.release_now().await?;
                return Err(e);
            }
        };
        if outside.is_empty() {
            return Ok(Acquire::Acquired(entry));
        }
        let now = (self.clock)();
        let state = self.read().await?;
        let mut others: Vec<LockEntry> = state
            .record
            .map(|r| r.holders(now).into_iter().cloned().collect())
            .unwrap_or_default();
        others.retain(|e| e.node_id != self.settings.node_id);
        others.extend(outside.iter().cloned());
        let Some((reason, holders, next_expiry)) = record::crowded(&others, &self.settings, labels) else {
            return Ok(Acquire::Acquired(entry));
        };
        info!(object = %self.object, node = %self.settings.node_id, beside = %node_ids(&outside), %reason,
            "a slot of the other lock backend's object was taken as we took ours; giving ours back");
        self.release_now().await?;
        Ok(Acquire::Blocked {
            reason,
            holders,
            limit: self.settings.concurrency.max(1),
            next_expiry,
            seen: self.snapshot().await?.seen(),
        })
    }

    /// Moves an entry of our node from the other object to this one, as it is, once per agent:
    /// only our agent writes our entry, so once it is not there it stays away. Added here
    /// first, removed there then, so that the node holds a slot throughout.
    pub(super) async fn adopt_from_other(&self) -> Result<()> {
        let Some(other) = &self.other else {
            return Ok(());
        };
        if self.other_checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let snapshot = self.read_other(other).await?;
        // The holders there are kept too: the first acquire counts them without a read.
        if let (_, Some(entry)) = self.take_in(other, snapshot.as_ref())? {
            let settings = &self.settings;
            self.update(true, |read, now| {
                record::decide_adopt(read.annotation(), &entry, settings, now)
            })
            .await?;
            other.release_now().await?;
            info!(from = %other.object, to = %self.object, node = %settings.node_id,
                "moved our lock entry from the other lock backend's object");
        }
        self.other_checked.store(true, Ordering::Relaxed);
        Ok(())
    }
}
