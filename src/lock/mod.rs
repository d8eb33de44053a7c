//! The cluster-wide reboot lock: at most `--concurrency` nodes hold it at a time.
//!
//! [`RebootLock`] is what the agent needs of a lock; [`DaemonSetLock`] implements it on an
//! annotation of the agent's own DaemonSet, in upstream kured's wire format ([`record`]), so our
//! agents and upstream's can share one lock during a migration.
//!
//! The agent's use, in short:
//!
//! - at start-up, [`RebootLock::holding`]: do we still hold the lock (taken before a reboot or a
//!   restart)? The entry tells whether the node was unschedulable before kured cordoned it, and
//!   its boot ID whether the reboot has happened;
//! - [`RebootLock::acquire`] to take a slot; when it answers [`Acquire::Blocked`], wait with
//!   [`RebootLock::changed`] (bounded by the blocked answer's `next_expiry`) and try again;
//! - [`RebootLock::release`] after the reboot, repeated until it answers [`Release::Released`]
//!   (or [`Release::NotHeld`]): with a release delay it first answers [`Release::NotBefore`];
//! - [`RebootLock::read`] for the holders, as `kured status` shows them, and
//!   [`RebootLock::standing`] for where our node stands in what was read: its own entry, or
//!   whether [`RebootLock::acquire`] would find a slot;
//! - while waiting, [`RebootLock::turn_delay`] before taking a freed slot ([`turn`]), and
//!   [`RebootLock::reclaim_gone_holders`] for slots held by Nodes that no longer exist;
//! - [`RebootLock::release_now`] instead of `release` for a node that never went down.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

use crate::duration::GoDuration;

pub mod daemonset;
pub mod reclaim;
pub mod record;
pub mod turn;

pub use daemonset::DaemonSetLock;
pub use record::{LockEntry, LockRecord, NodeMeta, RecordError};

/// Where the DaemonSet lock is kept: the annotation `annotation` of DaemonSet
/// `namespace/name` (`--ds-namespace`, `--ds-name`, `--lock-annotation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockObject {
    pub namespace: String,
    pub name: String,
    pub annotation: String,
}

impl fmt::Display for LockObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.namespace, self.name, self.annotation)
    }
}

/// How this agent takes and releases the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSettings {
    /// Our node's name, the `nodeID` of our entry.
    pub node_id: String,
    /// How many nodes may hold the lock at once (`--concurrency`); 0 counts as 1.
    pub concurrency: u32,
    /// The TTL recorded in our entry (`--lock-ttl`); zero: never expires.
    pub ttl: GoDuration,
    /// How long to keep the lock once releasing starts (`--lock-release-delay`).
    pub release_delay: Duration,
}

/// What we record about our node when we take the lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// The node was unschedulable before we cordon it: leave it cordoned after the reboot.
    pub unschedulable: bool,
    /// The node's current boot ID (`/proc/sys/kernel/random/boot_id`), to recognise the reboot.
    pub boot_id: Option<String>,
}

/// What the lock object looked like when it was read: [`RebootLock::changed`] waits for it to
/// look different. For the DaemonSet lock, the annotation's text (`None`: absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen(Option<String>);

impl Seen {
    pub fn new(annotation: Option<String>) -> Seen {
        Seen(annotation)
    }

    /// The annotation's text, `None` when it was absent.
    pub fn annotation(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// The answer to [`RebootLock::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// We wrote this entry: the lock is ours.
    Acquired(LockEntry),
    /// The lock already held our live entry, written before (by this agent before a restart, or
    /// before the reboot). Nothing was written.
    AlreadyHeld(LockEntry),
    /// No slot is free.
    Blocked {
        /// The live holders.
        holders: Vec<LockEntry>,
        /// How many holders the record admits for us (1 for a single-form holder).
        limit: u32,
        /// When the first of `holders` expires by its TTL, which frees a slot without any write.
        next_expiry: Option<Timestamp>,
        /// What was read; pass it to [`RebootLock::changed`].
        seen: Seen,
    },
}

/// Where our node stands in the lock as read; see [`RebootLock::standing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Our node's entry, live or expired by its TTL (the live one, when there are both).
    pub own: Option<LockEntry>,
    /// What [`RebootLock::acquire`] would find for our node.
    pub slot: Slot,
}

/// Whether the lock has a slot for our node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// A slot is free, or our live entry holds one.
    Free,
    /// Every slot is taken by these live holders; the first of them expires by its TTL at
    /// `next_expiry`, which frees a slot without any write.
    Taken {
        holders: Vec<LockEntry>,
        next_expiry: Option<Timestamp>,
    },
}

/// The answer to [`RebootLock::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Our entry is gone.
    Released,
    /// Our entry stays until this time (its `releaseAfter`); call again then.
    NotBefore(Timestamp),
    /// There was no entry of ours to remove.
    NotHeld,
}

/// The answer to [`DaemonSetLock::reclaim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// The entry was removed: its slot is free.
    Reclaimed,
    /// The lock no longer holds that entry (another agent reclaimed it first, or its holder
    /// rewrote it); nothing was written.
    NotPresent,
}

/// The lock as read, for `kured status` and for waiting on changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    /// `None`: nobody holds the lock.
    pub record: Option<LockRecord>,
    pub seen: Seen,
}

impl LockState {
    /// The entries that have not expired at `now`.
    pub fn holders(&self, now: Timestamp) -> Vec<&LockEntry> {
        self.record.as_ref().map_or_else(Vec::new, |r| r.holders(now))
    }
}

/// Errors of using the lock. `object` names the lock object, e.g. `DaemonSet kube-system/kured`.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("reading the lock from {object}")]
    Read {
        object: String,
        #[source]
        source: kube::Error,
    },
    /// The annotation is not a lock record. It is left as it is: an operator must fix or remove it.
    #[error("annotation {annotation} on {object} is not a kured lock record (left untouched until fixed)")]
    Decode {
        object: String,
        annotation: String,
        value: String,
        #[source]
        source: RecordError,
    },
    #[error("encoding the lock record for {object}")]
    Encode {
        object: String,
        #[source]
        source: RecordError,
    },
    /// Writing failed; after `attempts` conflicting writes in a row when [`LockError::is_conflict`].
    #[error("writing annotation {annotation} on {object} (attempt {attempts})")]
    Write {
        object: String,
        annotation: String,
        attempts: u32,
        #[source]
        source: kube::Error,
    },
    #[error("watching {object} for changes of the lock")]
    Watch {
        object: String,
        #[source]
        source: kube::runtime::watcher::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

impl LockError {
    /// Another writer changed the object between our read and our write (HTTP 409), every time we
    /// tried: the lock is contended, try again later.
    pub fn is_conflict(&self) -> bool {
        matches!(self, LockError::Write { source, .. } if status(source).is_some_and(|s| s.is_conflict()))
    }

    /// The annotation is not a lock record; see [`LockError::seen`] to wait for someone to fix it.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, LockError::Decode { .. })
    }

    /// The lock object does not exist (wrong `--ds-namespace`/`--ds-name`?).
    pub fn is_not_found(&self) -> bool {
        self.api_status().is_some_and(|s| s.is_not_found())
    }

    /// Our service account may not do this (RBAC).
    pub fn is_forbidden(&self) -> bool {
        self.api_status().is_some_and(|s| s.is_forbidden())
    }

    /// For an unreadable annotation, what was read: pass it to [`RebootLock::changed`] to wait for
    /// the annotation to be fixed.
    pub fn seen(&self) -> Option<Seen> {
        match self {
            LockError::Decode { value, .. } => Some(Seen::new(Some(value.clone()))),
            _ => None,
        }
    }

    fn api_status(&self) -> Option<&kube::core::Status> {
        match self {
            LockError::Read { source, .. } | LockError::Write { source, .. } => status(source),
            LockError::Watch { source, .. } => watch_status(source),
            LockError::Decode { .. } | LockError::Encode { .. } => None,
        }
    }
}

fn status(error: &kube::Error) -> Option<&kube::core::Status> {
    match error {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

fn watch_status(error: &kube::runtime::watcher::Error) -> Option<&kube::core::Status> {
    use kube::runtime::watcher::Error as W;
    match error {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => status(e),
        W::WatchError(s) => Some(s),
        W::NoResourceVersion => None,
    }
}

/// A cluster-wide lock that admits at most `concurrency` nodes. All lock state lives in the lock
/// object: an implementation may keep a recent copy of it to save reads, but decides every write
/// on condition that the object has not changed since it was read, so a new instance (an agent
/// restart) behaves exactly as the old one would have.
pub trait RebootLock {
    /// Takes a slot for our node, recording `claim`, unless our node already holds one.
    fn acquire(&self, claim: &Claim) -> impl Future<Output = Result<Acquire>> + Send;

    /// [`RebootLock::acquire`] decided on a fresh read of the lock object (never a watched copy):
    /// right before an irreversible step, to make sure the slot is still ours. Our live entry
    /// answers [`Acquire::AlreadyHeld`]; an expired one of ours is renewed if a slot is free.
    fn confirm(&self, claim: &Claim) -> impl Future<Output = Result<Acquire>> + Send;

    /// Our live entry, if our node holds the lock.
    fn holding(&self) -> impl Future<Output = Result<Option<LockEntry>>> + Send;

    /// The lock as it is now, every holder included.
    fn read(&self) -> impl Future<Output = Result<LockState>> + Send;

    /// Where our node stands in the lock as `seen`, judged by the rules [`RebootLock::acquire`]
    /// follows, so that a free slot means exactly what `acquire` would conclude. No request: an
    /// error means that `seen` is not a lock record.
    fn standing(&self, seen: &Seen, now: Timestamp) -> Result<Standing>;

    /// Releases our slot, honouring the release delay durably (see [`Release`]).
    fn release(&self) -> impl Future<Output = Result<Release>> + Send;

    /// Releases our slot at once, ignoring the release delay: for a node that never went down
    /// (a drain that failed), where the delay would only hold the next node back.
    fn release_now(&self) -> impl Future<Output = Result<Release>> + Send;

    /// How long our node waits, once the lock as `seen` has a free slot, before it takes it;
    /// `salt` is drawn afresh for every change of the lock (see [`turn`]).
    fn turn_delay(&self, seen: &Seen, salt: u64) -> Duration;

    /// Removes the entries, in the lock as `seen`, of other holders whose Node no longer
    /// exists (see [`reclaim`]), and returns them. Never fails: whatever cannot be checked or
    /// written is logged and left for the next call.
    fn reclaim_gone_holders(
        &self,
        seen: &Seen,
        now: Timestamp,
    ) -> impl Future<Output = Vec<LockEntry>> + Send;

    /// Waits until the lock object differs from `seen`, and returns what it is then. Returns at
    /// once when it already differs. Does not time out: bound it with `tokio::time::timeout`, and
    /// by the blocked answer's `next_expiry`, since an expiry changes nothing in the object.
    fn changed(&self, seen: &Seen) -> impl Future<Output = Result<Seen>> + Send;
}
