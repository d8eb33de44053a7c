//! The cluster-wide reboot lock: at most `--concurrency` nodes hold it at a time.
//!
//! [`RebootLock`] is what the agent needs of a lock; [`ObjectLock`] implements it on an
//! annotation of the agent's own DaemonSet or of a Lease ([`Backend`]), in upstream kured's wire
//! format ([`record`]), so our agents and upstream's can share one lock during a migration.
//!
//! The agent's use, in short:
//!
//! - at every round, [`RebootLock::read`] and [`RebootLock::standing`]: do we still hold the lock
//!   (taken before a reboot or a restart)? Our entry tells whether the node was unschedulable
//!   before kured cordoned it, and its boot ID whether the reboot has happened;
//! - [`RebootLock::acquire`] to take a slot; when it answers [`Acquire::Blocked`], wait with
//!   [`RebootLock::changed`] (bounded by the blocked answer's `next_expiry`) and try again;
//! - [`RebootLock::release`] after the reboot, repeated until it answers [`Release::Released`]
//!   (or [`Release::NotHeld`]): with a release delay it first answers [`Release::NotBefore`];
//! - [`RebootLock::read`] for the holders, as `kured status` shows them, and
//!   [`RebootLock::standing`] for where our node stands in what was read: its own entry, or
//!   whether [`RebootLock::acquire`] would find a slot;
//! - while waiting, [`RebootLock::turn_delay`] before taking a freed slot ([`turn`]), and
//!   [`RebootLock::reclaim_gone_holders`] for slots held by Nodes that no longer exist;
//! - [`RebootLock::release_now`] instead of `release` for a node that never went down;
//! - [`RebootLock::note_labels`] after every read of its Node, for the per-label limits
//!   ([`labels`]), and [`RebootLock::record_gate`] for the post-reboot health gate ([`gate`]).
//!
//! No node takes a slot while the lock object's [`PAUSE_ANNOTATION`] pauses the fleet, nor while
//! a live holder is halted ([`admit`]); holders finish their cycle either way.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

use crate::kube_error;

pub mod admit;
pub mod gate;
pub mod labels;
pub mod object;
pub mod policy;
pub mod reclaim;
pub mod record;
pub mod turn;

pub use admit::BlockedBy;
pub use gate::Gate;
pub use labels::LabelLimit;
pub use object::ObjectLock;
pub use policy::{Acquire, Claim, LockSettings, LockSnapshot, Reclaim, Release, Slot, Standing};
pub use record::{LockEntry, LockRecord, NodeMeta, RecordError};

/// The lock object's annotation that pauses the fleet: `"true"` (or any value but `"false"`, the
/// safe reading) and no node takes a slot; holders finish their cycle.
pub use crate::controls::PAUSE_ANNOTATION;

/// Which kind of object keeps the lock (`--lock-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// An annotation of the agents' own DaemonSet, as upstream kured keeps it: the agents may
    /// update their DaemonSet.
    #[default]
    DaemonSet,
    /// An annotation of a `coordination.k8s.io/v1` Lease named after the DaemonSet, in its
    /// namespace, created by the first agent that takes the lock: the agents need no write
    /// access to any workload.
    Lease,
}

impl Backend {
    /// The object's kind, as Kubernetes names it.
    pub fn kind(self) -> &'static str {
        match self {
            Backend::DaemonSet => "DaemonSet",
            Backend::Lease => "Lease",
        }
    }

    /// The other backend: during a switch from one to the other, its live holders count too.
    pub fn other(self) -> Backend {
        match self {
            Backend::DaemonSet => Backend::Lease,
            Backend::Lease => Backend::DaemonSet,
        }
    }
}

/// Where the lock is kept: the annotation `annotation` (`--lock-annotation`) of the object of
/// kind `backend` (`--lock-backend`) named `namespace/name` (`--ds-namespace`, `--ds-name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockObject {
    pub backend: Backend,
    pub namespace: String,
    pub name: String,
    pub annotation: String,
}

impl LockObject {
    /// The same place in the other backend's object.
    pub fn other(&self) -> LockObject {
        LockObject {
            backend: self.backend.other(),
            ..self.clone()
        }
    }

    /// The API of objects of this kind in this namespace.
    pub fn api(&self, client: kube::Client) -> kube::Api<kube::api::DynamicObject> {
        use k8s_openapi::api::{apps::v1::DaemonSet, coordination::v1::Lease};
        let resource = match self.backend {
            Backend::DaemonSet => kube::api::ApiResource::erase::<DaemonSet>(&()),
            Backend::Lease => kube::api::ApiResource::erase::<Lease>(&()),
        };
        kube::Api::namespaced_with(client, &self.namespace, &resource)
    }

    /// `<Kind> <namespace>/<name>`, as errors and logs name it.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.backend.kind(), self.namespace, self.name)
    }
}

impl fmt::Display for LockObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.describe(), self.annotation)
    }
}

/// The lock as read, for `kured status` and for waiting on changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    /// `None`: nobody holds the lock.
    pub record: Option<LockRecord>,
    pub seen: LockSnapshot,
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
        /// What was read: the annotation's text, and the object's pause annotation.
        seen: Box<LockSnapshot>,
        #[source]
        source: RecordError,
    },
    /// [`RebootLock::record_gate`] found no entry of our node.
    #[error("{node} holds no entry in annotation {annotation} on {object} to record its gate in")]
    NotHeld {
        object: String,
        annotation: String,
        node: String,
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
    /// Another writer changed the object between our read and our write (HTTP 409), or created
    /// the Lease we meant to create, every time we tried: the lock is contended, try again later.
    pub fn is_conflict(&self) -> bool {
        matches!(self, LockError::Write { source, .. }
            if kube_error::is_conflict(source) || kube_error::is_already_exists(source))
    }

    /// The annotation is not a lock record; see [`LockError::seen`] to wait for someone to fix it.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, LockError::Decode { .. })
    }

    /// Our service account may not do this (RBAC).
    pub fn is_forbidden(&self) -> bool {
        match self {
            LockError::Read { source, .. } | LockError::Write { source, .. } => {
                kube_error::is_forbidden(source)
            }
            LockError::Watch { source, .. } => kube_error::is_forbidden(source),
            LockError::Decode { .. } | LockError::Encode { .. } | LockError::NotHeld { .. } => false,
        }
    }

    /// For an unreadable annotation, what was read: pass it to [`RebootLock::changed`] to wait for
    /// the annotation to be fixed.
    pub fn seen(&self) -> Option<LockSnapshot> {
        match self {
            LockError::Decode { seen, .. } => Some(LockSnapshot::clone(seen)),
            _ => None,
        }
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

    /// The lock as it is now, every holder included.
    fn read(&self) -> impl Future<Output = Result<LockState>> + Send;

    /// Where our node stands in the lock as `seen`, judged by the rules [`RebootLock::acquire`]
    /// follows, so that a free slot means exactly what `acquire` would conclude. No request: an
    /// error means that `seen` is not a lock record.
    fn standing(&self, seen: &LockSnapshot, now: Timestamp) -> Result<Standing>;

    /// Releases our slot, honouring the release delay durably (see [`Release`]).
    fn release(&self) -> impl Future<Output = Result<Release>> + Send;

    /// Releases our slot at once, ignoring the release delay: for a node that never went down
    /// (a drain that failed), where the delay would only hold the next node back.
    fn release_now(&self) -> impl Future<Output = Result<Release>> + Send;

    /// How long our node waits, once the lock as `seen` has a free slot, before it takes it;
    /// `salt` is drawn afresh for every change of the lock (see [`turn`]).
    fn turn_delay(&self, seen: &LockSnapshot, salt: u64) -> Duration;

    /// Removes the entries, in the lock as `seen`, of other holders whose Node no longer
    /// exists (see [`reclaim`]: one holder is looked up a call), and returns them. Never fails:
    /// whatever cannot be checked or written is logged and left for the next call.
    fn reclaim_gone_holders(
        &self,
        seen: &LockSnapshot,
        now: Timestamp,
    ) -> impl Future<Output = Vec<LockEntry>> + Send;

    /// Keeps our node's values of the per-label keys from its `labels` (as read from its Node):
    /// [`RebootLock::standing`] and [`RebootLock::acquire`] judge by them, and our entry records
    /// them when we take a slot. With per-label limits set, no slot is free before the first call.
    fn note_labels(&self, labels: &BTreeMap<String, String>);

    /// Records our post-reboot health gate in our own entry (`gateSince`, `halted`), or removes
    /// both with `None`; conflict-retried like every write. An error when we hold no entry.
    fn record_gate(&self, gate: Option<Gate>) -> impl Future<Output = Result<()>> + Send;

    /// Waits until the lock object differs from `seen` (its lock or its pause annotation), and
    /// returns what it is then. Returns at once when it already differs. Does not time out: bound
    /// it with `tokio::time::timeout`, and by the blocked answer's `next_expiry`, since an expiry
    /// changes nothing in the object.
    fn changed(&self, seen: &LockSnapshot) -> impl Future<Output = Result<LockSnapshot>> + Send;
}
