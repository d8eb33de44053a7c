//! The lock on an annotation of one object (`--lock-annotation`): the agent's own DaemonSet
//! (`--ds-namespace`, `--ds-name`), as upstream kured keeps it, or a Lease of the same name and
//! namespace (`--lock-backend=lease`).
//!
//! Every change is read → decide ([`super::record`]) → write the whole object back with the
//! `metadata.resourceVersion` that was read (an `update`, the verb upstream's RBAC grants). A write
//! based on a stale read fails with 409 Conflict; we then read again and decide again, a bounded
//! number of times with jittered back-off. The object goes back as it was read except for the
//! annotation: it is handled as an untyped object, so fields this build does not know survive.
//!
//! The DaemonSet exists for as long as its agents run. The Lease is created by the first write
//! that needs it (a create fails with 409 AlreadyExists when another agent created it first, and
//! counts as a conflict); its `spec.holderIdentity` names the holders for `kubectl get lease`,
//! and the annotation alone is the lock.
//!
//! Waiting for a change starts one long-lived watch of the single object (field selector
//! `metadata.name`), kept for the lock's lifetime: it keeps the last object seen, so that waiting,
//! reading and a first write attempt need no request of their own. A cached object may lag the API
//! server by the watch's delay; since every write is conditional on the resourceVersion read, a
//! stale read costs a conflict and a fresh read, never a wrong lock. Until the watch has listed,
//! and while it recovers from an error, reads go to the API server. When RBAC forbids watching
//! (upstream's manifests grant `get` and `update` only) waiting polls instead.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, info};

use self::cache::{Cached, POLL_INTERVAL};
use super::admit::Around;
use super::record::{self, Change, Decision, RecordError};
use super::{
    Acquire, Backend, Claim, Gate, LockEntry, LockError, LockObject, LockSettings, LockSnapshot, LockState,
    RebootLock, Reclaim, Release, Result, Standing, labels, reclaim, turn,
};

mod beside;
mod cache;
mod lease;
mod snapshot;
mod take;

pub use self::snapshot::Snapshot;

pub use lease::new_lease;

/// Writes in a row that may meet a conflict before we give up. Each conflict means another agent's
/// write just won, so ten in a row is a crowd; the caller's loop tries again later instead of this
/// call holding on.
const MAX_WRITE_ATTEMPTS: u32 = 10;
/// Pause after a first conflict. The winning write is visible at once, so the re-read need not
/// wait; the pause only spreads out agents woken by the same change.
const CONFLICT_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest pause after a conflict (the pause doubles per conflict), so that a freed slot is still
/// taken within about a second.
const CONFLICT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The reboot lock on an object's annotation; see the [module documentation](self).
#[derive(Debug)]
pub struct ObjectLock {
    api: Api<DynamicObject>,
    backend: Backend,
    name: String,
    /// `<Kind> <namespace>/<name>`, for errors and logs.
    object: String,
    annotation: String,
    settings: LockSettings,
    clock: fn() -> Timestamp,
    conflicts: AtomicU64,
    /// Set once a watch was forbidden: from then on, poll.
    poll: Arc<AtomicBool>,
    /// The last object the watch saw, shared with the watch task.
    cache: Arc<watch::Sender<Cached>>,
    /// The watch task, once started; stopped when the lock is dropped.
    watching: OnceLock<tokio::task::AbortHandle>,
    /// How long a read from the API server (or our own write's answer) may stand in for a new
    /// read while the watch has no copy; zero: never (see [`ObjectLock::reusing_reads_for`]).
    reuse: Duration,
    /// The last object read from, or written to, the API server, and when.
    recent: std::sync::Mutex<Option<(tokio::time::Instant, Snapshot)>>,
    /// The other backend's lock object, whose live holders count too (see
    /// [`ObjectLock::beside`]).
    other: Option<Box<ObjectLock>>,
    /// The other object was looked at for an entry of ours, and any moved here.
    other_checked: AtomicBool,
    /// That the other object cannot be read has been logged.
    other_warned: AtomicBool,
    /// The live holders of other nodes in the other object as last read: [`RebootLock::standing`]
    /// counts them (it makes no request), and while there are any, every [`RebootLock::read`]
    /// reads that object again.
    outside: std::sync::Mutex<Vec<LockEntry>>,
    /// Our node's values of the per-label keys, as last noted ([`RebootLock::note_labels`]);
    /// `None` before the first note.
    labels: std::sync::Mutex<Option<BTreeMap<String, String>>>,
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        if let Some(task) = self.watching.get() {
            task.abort();
        }
    }
}

impl ObjectLock {
    /// The lock kept at `object`. The client must not retry by itself
    /// (`Config::default_retry = false`).
    pub fn new(client: Client, object: &LockObject, settings: LockSettings) -> Self {
        ObjectLock {
            api: object.api(client),
            backend: object.backend,
            name: object.name.clone(),
            object: object.describe(),
            annotation: object.annotation.clone(),
            settings,
            clock: Timestamp::now,
            conflicts: AtomicU64::new(0),
            poll: Arc::new(AtomicBool::new(false)),
            cache: Arc::new(watch::Sender::new(Cached::Unknown)),
            watching: OnceLock::new(),
            reuse: Duration::ZERO,
            recent: std::sync::Mutex::new(None),
            other: None,
            other_checked: AtomicBool::new(false),
            other_warned: AtomicBool::new(false),
            outside: std::sync::Mutex::new(Vec::new()),
            labels: std::sync::Mutex::new(None),
        }
    }

    /// Lets a read from the API server, or the answer to our own write, stand in for another read
    /// within `reuse` while the watch has no copy: the agent reads the lock at the start of a
    /// round and writes it a moment later (the release after a reboot), and the write need not
    /// read it again. The same holds as for the watched copy: every write is conditional on the
    /// resourceVersion read, so a copy that is stale costs a conflict and a fresh read, never a
    /// wrong lock; [`RebootLock::confirm`] always reads afresh.
    pub fn reusing_reads_for(mut self, reuse: Duration) -> Self {
        self.reuse = reuse;
        self
    }

    /// Uses `clock` instead of the system clock for `created`, `releaseAfter` and expiry.
    pub fn with_clock(mut self, clock: fn() -> Timestamp) -> Self {
        self.clock = clock;
        self
    }

    pub fn settings(&self) -> &LockSettings {
        &self.settings
    }

    /// `<Kind> <namespace>/<name>`.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// How many of our writes have met a conflict (409) so far.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The object as the watch last saw it, or as read from the API server when the watch has
    /// not seen it (see the [module documentation](self)).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        match &*self.cache.borrow() {
            Cached::Present(snapshot) => return Ok(Snapshot::clone(snapshot)),
            Cached::Absent if self.backend == Backend::Lease => return Ok(Snapshot::absent()),
            Cached::Absent | Cached::Unknown => {}
        }
        if let Some(recent) = self.recent_snapshot() {
            return Ok(recent);
        }
        self.fresh_snapshot().await
    }

    /// Reads the object from the API server. A DaemonSet that does not exist is an error; a
    /// Lease, one not created yet.
    pub async fn fresh_snapshot(&self) -> Result<Snapshot> {
        let read = match self.backend {
            Backend::DaemonSet => self.api.get(&self.name).await.map(Some),
            Backend::Lease => self.api.get_opt(&self.name).await,
        };
        let object = read.map_err(|source| LockError::Read {
            object: self.object.clone(),
            source,
        })?;
        let snapshot = match object {
            Some(object) => Snapshot::of(object, &self.annotation),
            None => Snapshot::absent(),
        };
        self.remember(&snapshot);
        Ok(snapshot)
    }

    /// The last object read or written, if it is recent enough to reuse.
    fn recent_snapshot(&self) -> Option<Snapshot> {
        if self.reuse.is_zero() {
            return None;
        }
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .as_ref()
            .filter(|(at, _)| at.elapsed() <= self.reuse)
            .map(|(_, snapshot)| snapshot.clone())
    }

    fn remember(&self, snapshot: &Snapshot) {
        if !self.reuse.is_zero() {
            *self.recent.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((tokio::time::Instant::now(), snapshot.clone()));
        }
    }

    /// Applies `change` to the annotation of `snapshot` and writes it, on condition that the
    /// object has not changed since `snapshot` was read (or, for a Lease not there then, that
    /// nobody has created it since): otherwise the write fails and the error
    /// [`is_conflict`](LockError::is_conflict).
    pub async fn write(&self, snapshot: &Snapshot, change: &Change) -> Result<()> {
        self.write_attempt(snapshot, change, 1).await
    }

    async fn write_attempt(&self, snapshot: &Snapshot, change: &Change, attempt: u32) -> Result<()> {
        let existing = snapshot.object.is_some();
        let mut object = snapshot.object.clone().unwrap_or_else(|| self.new_lease());
        let annotations = object.metadata.annotations.get_or_insert_with(Default::default);
        match change {
            Change::Set(value) => annotations.insert(self.annotation.clone(), value.clone()),
            Change::Remove => annotations.remove(&self.annotation),
        };
        if self.backend == Backend::Lease {
            lease::set_holder_identity(&mut object, change);
        }
        let written = if existing {
            self.api
                .replace(&self.name, &PostParams::default(), &object)
                .await
        } else {
            self.api.create(&PostParams::default(), &object).await
        };
        match written {
            Ok(written) => {
                // Our write directly follows the version it was based on; when that is the cached
                // one, ours is the newest the watch can still deliver, so cache it right away and
                // the next read sees our own write.
                let written = Snapshot::of(written, &self.annotation);
                self.remember(&written);
                self.cache.send_if_modified(|cached| match cached {
                    Cached::Present(c) if c.resource_version() == snapshot.resource_version() => {
                        *cached = Cached::Present(Box::new(written));
                        true
                    }
                    _ => false,
                });
                Ok(())
            }
            Err(source) => Err(LockError::Write {
                object: self.object.clone(),
                annotation: self.annotation.clone(),
                attempts: attempt,
                source,
            }),
        }
    }

    /// Removes `entry`, a holder whose Node no longer exists, if the lock still holds it as it
    /// is (see [`record::decide_reclaim`]); read, decide, write as every change.
    pub async fn reclaim(&self, entry: &LockEntry) -> Result<Reclaim> {
        self.update(false, |read, _now| {
            record::decide_reclaim(read.annotation(), entry)
        })
        .await
    }

    /// The client this lock talks to the API server with.
    pub fn client(&self) -> Client {
        self.api.clone().into_client()
    }

    /// Read, decide, write; on a conflict, again from the read.
    /// `fresh`: decide the first attempt on a read from the API server rather than the watched
    /// copy, for a decision nothing stale may enter.
    async fn update<T>(
        &self,
        fresh: bool,
        mut decide: impl FnMut(&Snapshot, Timestamp) -> record::Result<Decision<T>> + Send,
    ) -> Result<T> {
        let mut attempt = 1;
        loop {
            // After a conflict the cache may still lag the write that won: read afresh.
            let snapshot = if attempt == 1 && !fresh {
                self.snapshot().await?
            } else {
                self.fresh_snapshot().await?
            };
            let decision = decide(&snapshot, (self.clock)())
                .map_err(|source| self.record_error(&snapshot.seen(), source))?;
            let Some(change) = decision.change else {
                return Ok(decision.outcome);
            };
            match self.write_attempt(&snapshot, &change, attempt).await {
                Ok(()) => return Ok(decision.outcome),
                Err(error) if error.is_conflict() => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    if attempt >= MAX_WRITE_ATTEMPTS {
                        return Err(error);
                    }
                    let pause = conflict_backoff(attempt);
                    debug!(object = %self.object, node = %self.settings.node_id, attempt, ?pause,
                        "lock object changed since it was read; reading again");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The error of the record in `seen` (the object as read), naming the lock object.
    fn record_error(&self, seen: &LockSnapshot, source: RecordError) -> LockError {
        match source {
            RecordError::Encode { .. } => LockError::Encode {
                object: self.object.clone(),
                source,
            },
            RecordError::Parse { .. } | RecordError::Decode { .. } => LockError::Decode {
                object: self.object.clone(),
                annotation: self.annotation.clone(),
                seen: Box::new(seen.clone()),
                source,
            },
        }
    }
}

impl RebootLock for ObjectLock {
    async fn acquire(&self, claim: &Claim) -> Result<Acquire> {
        self.take_slot(claim, false).await
    }

    async fn confirm(&self, claim: &Claim) -> Result<Acquire> {
        self.take_slot(claim, true).await
    }

    async fn read(&self) -> Result<LockState> {
        self.adopt_from_other().await?;
        if !self.outside_at((self.clock)()).is_empty() {
            self.holders_beside().await?;
        }
        let snapshot = self.snapshot().await?;
        let seen = snapshot.seen();
        let record = record::read(seen.annotation()).map_err(|source| self.record_error(&seen, source))?;
        Ok(LockState { record, seen })
    }

    fn standing(&self, seen: &LockSnapshot, now: Timestamp) -> Result<Standing> {
        let current = seen.annotation();
        let error = |source| self.record_error(seen, source);
        let node_id = &self.settings.node_id;
        let own = record::read(current).map_err(error)?.and_then(|record| {
            record
                .held_by(node_id, now)
                .or_else(|| record.entries().iter().find(|e| &e.node_id == node_id))
                .cloned()
        });
        let outside = self.outside_at(now);
        let labels = self.labels();
        let around = Around {
            outside: &outside,
            pause: seen.pause(),
            labels: labels.as_ref(),
        };
        let slot = record::decide_acquire_in(current, &around, &self.settings, &Claim::default(), now)
            .map_err(error)?
            .outcome
            .slot();
        Ok(Standing { own, slot })
    }

    async fn release(&self) -> Result<Release> {
        let settings = &self.settings;
        let outcome = self
            .update(false, |read, now| {
                record::decide_release(read.annotation(), settings, now)
            })
            .await?;
        let node = &settings.node_id;
        match outcome {
            Release::Released => info!(object = %self.object, node = %node, "lock released"),
            Release::NotBefore(after) => info!(object = %self.object, node = %node, %after,
                "lock release delayed"),
            Release::NotHeld => {
                debug!(object = %self.object, node = %node, "lock not held, nothing to release")
            }
        }
        Ok(outcome)
    }

    async fn release_now(&self) -> Result<Release> {
        let settings = LockSettings {
            release_delay: Duration::ZERO,
            ..self.settings.clone()
        };
        let outcome = self
            .update(false, |read, now| {
                record::decide_release(read.annotation(), &settings, now)
            })
            .await?;
        info!(object = %self.object, node = %settings.node_id, ?outcome, "lock released without delay");
        Ok(outcome)
    }

    fn turn_delay(&self, seen: &LockSnapshot, salt: u64) -> Duration {
        turn::turn_delay(seen.annotation(), &self.settings.node_id, salt)
    }

    async fn reclaim_gone_holders(&self, seen: &LockSnapshot, now: Timestamp) -> Vec<LockEntry> {
        reclaim::reclaim_gone_holders(self, seen, now).await
    }

    fn note_labels(&self, labels: &BTreeMap<String, String>) {
        if self.settings.per_label.is_empty() {
            return;
        }
        let values = labels::values_of(&self.settings.per_label, labels);
        *self.labels.lock().unwrap_or_else(|e| e.into_inner()) = Some(values);
    }

    async fn record_gate(&self, gate: Option<Gate>) -> Result<()> {
        self.write_gate(gate).await
    }

    async fn changed(&self, seen: &LockSnapshot) -> Result<LockSnapshot> {
        if !self.poll.load(Ordering::Relaxed) {
            self.start_watch();
            let mut cache = self.cache.subscribe();
            loop {
                if self.poll.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(now) = cache.borrow_and_update().seen()
                    && now != *seen
                {
                    return Ok(now);
                }
                // The sender lives in `self`, so this waits for the watch's next word.
                if cache.changed().await.is_err() {
                    break;
                }
            }
        }
        loop {
            let now = self.snapshot().await?.seen();
            if now != *seen {
                return Ok(now);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

pub(super) fn node_ids(entries: &[LockEntry]) -> String {
    entries
        .iter()
        .map(|e| e.node_id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The pause after conflict number `attempt`: doubling from [`CONFLICT_BACKOFF_BASE`] up to
/// [`CONFLICT_BACKOFF_MAX`], then a random point in its upper half, so that agents that met the
/// same conflict do not read again in step.
fn conflict_backoff(attempt: u32) -> Duration {
    let doubled = CONFLICT_BACKOFF_BASE.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let ceiling = doubled.min(CONFLICT_BACKOFF_MAX);
    // Each `RandomState` is keyed afresh, which is randomness enough for jitter.
    let fraction = RandomState::new().hash_one(attempt) as f64 / u64::MAX as f64;
    ceiling.mul_f64(0.5 + 0.5 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_backoff_doubles_up_to_its_ceiling_with_jitter() {
        for (attempt, low, high) in [
            (1, 25, 50),
            (2, 50, 100),
            (3, 100, 200),
            (5, 400, 800),
            (9, 500, 1000),
        ] {
            for _ in 0..50 {
                let pause = conflict_backoff(attempt);
                assert!(
                    (Duration::from_millis(low)..=Duration::from_millis(high)).contains(&pause),
                    "attempt {attempt}: {pause:?}"
                );
            }
        }
        let pauses: std::collections::BTreeSet<Duration> = (0..20).map(|_| conflict_backoff(3)).collect();
        assert!(pauses.len() > 1, "jittered: {pauses:?}");
        assert!(conflict_backoff(u32::MAX) <= CONFLICT_BACKOFF_MAX);
    }
}
