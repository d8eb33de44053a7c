//! The decisions taken on the lock annotation: how a node takes a slot, releases it (honouring the
//! release delay durably), and how the entry of a node that is gone is reclaimed. Each returns the
//! write it needs, if any, and what the caller learns once that write succeeded; the caller writes
//! on condition that the annotation has not changed since it was read. Pure: no I/O, no clock.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

pub use super::admit::{Around, BlockedBy, crowded, decide_acquire_in, pauses};
use super::labels::LabelLimit;
use super::record::{LockEntry, LockRecord, MultiRecord, NodeMeta, Result, read};
use crate::duration::GoDuration;

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
    /// At most so many holders per value of a node label (`--concurrency-per-label`), on top
    /// of `concurrency`; see [`labels`](super::labels).
    pub per_label: Vec<LabelLimit>,
}

/// What we record about our node when we take the lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// The node was unschedulable before we cordon it: leave it cordoned after the reboot.
    pub unschedulable: bool,
    /// The node's current boot ID (`/proc/sys/kernel/random/boot_id`), to recognise the reboot.
    pub boot_id: Option<String>,
}

/// What the lock object looked like when it was read: [`RebootLock::changed`](super::RebootLock::changed) waits for it to
/// look different. The lock annotation's text (`None`: absent) and the object's pause annotation
/// ([`PAUSE_ANNOTATION`](super::PAUSE_ANNOTATION)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockSnapshot {
    annotation: Option<String>,
    pause: Option<String>,
}

impl LockSnapshot {
    /// The lock annotation's text, without a pause annotation.
    pub fn new(annotation: Option<String>) -> LockSnapshot {
        LockSnapshot {
            annotation,
            pause: None,
        }
    }

    /// The same, with the lock object's pause annotation as read (`None`: absent).
    pub fn with_pause(self, pause: Option<String>) -> LockSnapshot {
        LockSnapshot { pause, ..self }
    }

    /// The annotation's text, `None` when it was absent.
    pub fn annotation(&self) -> Option<&str> {
        self.annotation.as_deref()
    }

    /// The lock object's pause annotation, `None` when it was absent.
    pub fn pause(&self) -> Option<&str> {
        self.pause.as_deref()
    }

    /// The pause annotation's value when it pauses the fleet (see [`pauses`]).
    pub fn paused(&self) -> Option<&str> {
        self.pause().filter(|_| pauses(self.pause()))
    }
}

/// The answer to [`RebootLock::acquire`](super::RebootLock::acquire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// We wrote this entry: the lock is ours.
    Acquired(LockEntry),
    /// The lock already held our live entry, written before (by this agent before a restart, or
    /// before the reboot). Nothing was written.
    AlreadyHeld(LockEntry),
    /// No slot is free.
    Blocked {
        /// Why.
        reason: BlockedBy,
        /// The live holders in our way: every one for [`BlockedBy::Concurrency`] and
        /// [`BlockedBy::Paused`], those counted against our value for [`BlockedBy::Label`], the
        /// halted ones for [`BlockedBy::Halted`].
        holders: Vec<LockEntry>,
        /// How many holders the record admits for us (1 for a single-form holder).
        limit: u32,
        /// When the first of `holders` expires by its TTL, which frees a slot without any write
        /// (for [`BlockedBy::Halted`], the last of them; none for a pause).
        next_expiry: Option<Timestamp>,
        /// What was read; pass it to [`RebootLock::changed`](super::RebootLock::changed).
        seen: LockSnapshot,
    },
}

/// Where our node stands in the lock as read; see [`RebootLock::standing`](super::RebootLock::standing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// Our node's entry, live or expired by its TTL (the live one, when there are both).
    pub own: Option<LockEntry>,
    /// What [`RebootLock::acquire`](super::RebootLock::acquire) would find for our node.
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
    /// These live holders of other nodes say their post-reboot health gate timed out: no node
    /// takes a slot until they are cleared or gone.
    Halted { holders: Vec<LockEntry> },
    /// The lock object's pause annotation (`value`, as read) stops every node from taking a slot.
    Paused { value: String },
}

impl Acquire {
    /// Whether the answer leaves our node a slot, as [`Standing::slot`] says it.
    pub fn slot(self) -> Slot {
        match self {
            Acquire::Acquired(_) | Acquire::AlreadyHeld(_) => Slot::Free,
            Acquire::Blocked {
                reason: BlockedBy::Paused { value },
                ..
            } => Slot::Paused { value },
            Acquire::Blocked {
                reason: BlockedBy::Halted,
                holders,
                ..
            } => Slot::Halted { holders },
            Acquire::Blocked {
                holders, next_expiry, ..
            } => Slot::Taken { holders, next_expiry },
        }
    }
}

/// The answer to [`RebootLock::release`](super::RebootLock::release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Our entry is gone.
    Released,
    /// Our entry stays until this time (its `releaseAfter`); call again then.
    NotBefore(Timestamp),
    /// There was no entry of ours to remove.
    NotHeld,
}

/// The answer to [`ObjectLock::reclaim`](super::ObjectLock::reclaim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// The entry was removed: its slot is free.
    Reclaimed,
    /// The lock no longer holds that entry (another agent reclaimed it first, or its holder
    /// rewrote it); nothing was written.
    NotPresent,
}

/// What to do to the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set it to this value.
    Set(String),
    /// Remove it.
    Remove,
}

/// A decision: the write it needs, if any, and what the caller learns once that write succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<T> {
    pub change: Option<Change>,
    pub outcome: T,
}

impl<T> Decision<T> {
    pub(super) fn read_only(outcome: T) -> Self {
        Decision {
            change: None,
            outcome,
        }
    }

    fn write(record: &LockRecord, outcome: T) -> Result<Self> {
        Ok(Decision {
            change: Some(Change::Set(record.to_json()?)),
            outcome,
        })
    }
}

/// Decides how `settings.node_id` takes a slot of the lock whose annotation is `current`.
///
/// - Our own live entry (single or multi form): [`Acquire::AlreadyHeld`], nothing is written.
/// - Absent, or only expired entries: we write a fresh record, single form at concurrency 1 and
///   multi form above it. Expired entries are dropped.
/// - A live single-form holder blocks us at any concurrency. Its writer ran at concurrency 1 and
///   assumes it is the only holder: adding a second holder would exceed that writer's limit, and
///   converting the record to the multi form would make an upstream agent at concurrency 1 read it
///   as held by a node named `""`, so it could neither see its own lock nor release it.
/// - Multi form: at most `limit` live holders, where `limit` is the smaller of our concurrency and
///   the record's `maxOwners` (when it says one). An agent at a lower concurrency thus holds the
///   whole fleet to its limit while its record is in use, and a mixed fleet never exceeds the
///   limit of the agent that wrote the record. We write `maxOwners` as that `limit` while other
///   holders remain, and as our own concurrency when we are the only one, so a record left by an
///   old setting does not outlive its holders.
pub fn decide_acquire(
    current: Option<&str>,
    settings: &LockSettings,
    claim: &Claim,
    now: Timestamp,
) -> Result<Decision<Acquire>> {
    let seen = LockSnapshot::new(current.map(str::to_owned));
    take(current, entry_of(settings, claim, None, now), settings, now, seen)
}

/// Our entry as we write it when taking a slot.
pub(super) fn entry_of(
    settings: &LockSettings,
    claim: &Claim,
    labels: Option<BTreeMap<String, String>>,
    now: Timestamp,
) -> LockEntry {
    LockEntry {
        metadata: NodeMeta {
            unschedulable: claim.unschedulable,
        },
        boot_id: claim.boot_id.clone(),
        labels,
        ..LockEntry::new(settings.node_id.clone(), now, settings.ttl)
    }
}

/// [`decide_acquire`] with our entry `ours` as it is to be written.
pub(super) fn take(
    current: Option<&str>,
    ours: LockEntry,
    settings: &LockSettings,
    now: Timestamp,
    seen: LockSnapshot,
) -> Result<Decision<Acquire>> {
    let concurrency = settings.concurrency.max(1);
    let Some(record) = read(current)? else {
        return Decision::write(&fresh(ours.clone(), concurrency), Acquire::Acquired(ours));
    };
    if let Some(entry) = record.held_by(&settings.node_id, now) {
        return Ok(Decision::read_only(Acquire::AlreadyHeld(entry.clone())));
    }
    match record {
        LockRecord::Single(entry) if !entry.is_expired(now) => Ok(Decision::read_only(Acquire::Blocked {
            reason: BlockedBy::Concurrency,
            next_expiry: entry.expires_at(),
            holders: vec![entry],
            limit: 1,
            seen,
        })),
        LockRecord::Single(_) => Decision::write(&fresh(ours.clone(), concurrency), Acquire::Acquired(ours)),
        LockRecord::Multi(multi) => {
            let limit = if multi.max_owners >= 1 {
                u32::try_from(multi.max_owners).map_or(concurrency, |theirs| theirs.min(concurrency))
            } else {
                concurrency
            };
            let live: Vec<LockEntry> = multi.locks.into_iter().filter(|e| !e.is_expired(now)).collect();
            if live.len() >= limit as usize {
                return Ok(Decision::read_only(Acquire::Blocked {
                    reason: BlockedBy::Concurrency,
                    next_expiry: first_expiry(&live),
                    holders: live,
                    limit,
                    seen,
                }));
            }
            if live.is_empty() {
                return Decision::write(&fresh(ours.clone(), concurrency), Acquire::Acquired(ours));
            }
            let mut locks = live;
            locks.push(ours.clone());
            let record = LockRecord::Multi(MultiRecord {
                max_owners: i64::from(limit),
                locks,
                extra: multi.extra,
            });
            Decision::write(&record, Acquire::Acquired(ours))
        }
    }
}

pub(super) fn first_expiry(holders: &[LockEntry]) -> Option<Timestamp> {
    holders.iter().filter_map(LockEntry::expires_at).min()
}

/// Decides how to put `entry`, our own entry as another lock object kept it (the other
/// backend's, before a switch of backends), into the lock whose annotation is `current`, as it
/// is: same `created`, TTL, boot ID and release time, so that the cycle it stands for goes on.
/// Whatever entry of ours `current` has is replaced; expired entries of others are dropped.
/// The limit is not checked: the entry held its slot already, and is moved, not taken.
pub fn decide_adopt(
    current: Option<&str>,
    entry: &LockEntry,
    settings: &LockSettings,
    now: Timestamp,
) -> Result<Decision<()>> {
    let others: Vec<LockEntry> = read(current)?
        .map(|record| {
            record
                .entries()
                .iter()
                .filter(|e| e.node_id != entry.node_id && !e.is_expired(now))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if others.is_empty() {
        return Decision::write(&fresh(entry.clone(), settings.concurrency.max(1)), ());
    }
    let mut locks = others;
    locks.push(entry.clone());
    let record = LockRecord::Multi(MultiRecord {
        max_owners: i64::from(settings.concurrency.max(1)),
        locks,
        extra: BTreeMap::new(),
    });
    Decision::write(&record, ())
}

/// A record with our entry alone, in the form our concurrency writes.
fn fresh(entry: LockEntry, concurrency: u32) -> LockRecord {
    if concurrency <= 1 {
        LockRecord::Single(entry)
    } else {
        LockRecord::Multi(MultiRecord {
            max_owners: i64::from(concurrency),
            locks: vec![entry],
            extra: BTreeMap::new(),
        })
    }
}

/// Decides how `settings.node_id` releases its slot of the lock whose annotation is `current`.
///
/// The release delay is durable: the first call on a live entry without `releaseAfter` writes
/// `releaseAfter = now + settings.release_delay` and answers [`Release::NotBefore`]; calls before
/// that time answer the same without writing; the first call at or after it removes our entry. A
/// stored `releaseAfter` wins over the caller's delay, so a restarted agent keeps the original
/// schedule. An expired entry is removed at once: others may already take its slot.
///
/// Only our entries are removed: the single form loses the annotation, the multi form keeps every
/// other entry unchanged (and its `maxOwners`), and the annotation goes when no entry is left —
/// upstream leaves `{"maxOwners":N,"locks":[]}` instead, which an upstream agent at concurrency 1
/// reads as held by a node named `""` forever.
pub fn decide_release(
    current: Option<&str>,
    settings: &LockSettings,
    now: Timestamp,
) -> Result<Decision<Release>> {
    let Some(record) = read(current)? else {
        return Ok(Decision::read_only(Release::NotHeld));
    };
    let node_id = settings.node_id.as_str();
    if !record.entries().iter().any(|e| e.node_id == node_id) {
        return Ok(Decision::read_only(Release::NotHeld));
    }
    if let Some(live) = record.held_by(node_id, now) {
        match live.release_after {
            Some(after) if now < after => return Ok(Decision::read_only(Release::NotBefore(after))),
            Some(_) => {}
            None if !settings.release_delay.is_zero() => {
                let after = SignedDuration::try_from(settings.release_delay)
                    .ok()
                    .and_then(|delay| now.checked_add(delay).ok())
                    .unwrap_or(Timestamp::MAX);
                let mut record = record;
                match &mut record {
                    LockRecord::Single(entry) => entry.release_after = Some(after),
                    LockRecord::Multi(multi) => multi
                        .locks
                        .iter_mut()
                        .filter(|e| e.node_id == node_id && !e.is_expired(now))
                        .for_each(|e| e.release_after = Some(after)),
                }
                return Decision::write(&record, Release::NotBefore(after));
            }
            None => {}
        }
    }
    match record {
        LockRecord::Single(_) => Ok(Decision {
            change: Some(Change::Remove),
            outcome: Release::Released,
        }),
        LockRecord::Multi(mut multi) => {
            multi.locks.retain(|e| e.node_id != node_id);
            if multi.locks.is_empty() {
                return Ok(Decision {
                    change: Some(Change::Remove),
                    outcome: Release::Released,
                });
            }
            Decision::write(&LockRecord::Multi(multi), Release::Released)
        }
    }
}

/// The live entries of other nodes that may be reclaimed should their Node be gone: every holder
/// but `own_node`, except entries without `created`. Agents always write `created`; an entry
/// without it was written by hand (`{"nodeID":"manual"}` pauses every reboot) and names no node.
pub fn reclaim_candidates(current: Option<&str>, own_node: &str, now: Timestamp) -> Result<Vec<LockEntry>> {
    Ok(read(current)?.map_or_else(Vec::new, |record| {
        record
            .holders(now)
            .into_iter()
            .filter(|e| e.node_id != own_node && e.created.is_some())
            .cloned()
            .collect()
    }))
}

/// Decides how to remove `entry`, a holder whose Node no longer exists, from the lock whose
/// annotation is `current`.
///
/// Only an entry equal to `entry` in every field is removed: one the holder rewrote since it was
/// judged (a `releaseAfter`, a fresh `created`) proves it alive and is kept, and so is an entry
/// of the same node taken afresh. Nothing else changes: the single form loses the annotation, the
/// multi form keeps every other entry, its `maxOwners` and unknown keys as they were, and the
/// annotation goes when no entry is left (as [`decide_release`] does).
pub fn decide_reclaim(current: Option<&str>, entry: &LockEntry) -> Result<Decision<Reclaim>> {
    let Some(record) = read(current)? else {
        return Ok(Decision::read_only(Reclaim::NotPresent));
    };
    if !record.entries().contains(entry) {
        return Ok(Decision::read_only(Reclaim::NotPresent));
    }
    match record {
        LockRecord::Single(_) => Ok(Decision {
            change: Some(Change::Remove),
            outcome: Reclaim::Reclaimed,
        }),
        LockRecord::Multi(mut multi) => {
            multi.locks.retain(|e| e != entry);
            if multi.locks.is_empty() {
                return Ok(Decision {
                    change: Some(Change::Remove),
                    outcome: Reclaim::Reclaimed,
                });
            }
            Decision::write(&LockRecord::Multi(multi), Reclaim::Reclaimed)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::duration::GoDuration;
    use crate::lock::record::tests::{NOW, entry, ids, lock_record, multi, ts};
    use crate::lock::record::{RecordError, format_time};

    fn settings(node: &str, concurrency: u32) -> LockSettings {
        LockSettings {
            node_id: node.to_owned(),
            concurrency,
            ttl: GoDuration::ZERO,
            release_delay: Duration::ZERO,
            per_label: Vec::new(),
        }
    }

    /// What acquiring did, in short: "acquired: <annotation>", "held", "blocked by a,b (limit n)".
    fn acquire(current: Option<&str>, settings: &LockSettings) -> String {
        let decision = decide_acquire(current, settings, &Claim::default(), ts(NOW)).unwrap();
        match (decision.outcome, decision.change) {
            (Acquire::Acquired(_), Some(Change::Set(text))) => format!("acquired: {text}"),
            (Acquire::AlreadyHeld(_), None) => "held".to_owned(),
            (Acquire::Blocked { holders, limit, .. }, None) => {
                format!("blocked by {} (limit {limit})", ids(&holders).join(","))
            }
            (outcome, change) => panic!("inconsistent decision: {outcome:?} with {change:?}"),
        }
    }

    /// Upstream's `TestCanAcquireMultiple` (its TTL argument, one minute, is the TTL of the new
    /// entry; each existing entry is judged by its own TTL).
    #[test]
    fn upstream_can_acquire_multiple_cases() {
        let minute_ago = "2026-11-27T08:59:00.123456789Z";
        let hour_ago = "2026-11-27T08:00:00.123456789Z";
        let zero = "0001-01-01T00:00:00Z";
        let s = LockSettings {
            ttl: GoDuration::from_secs(60),
            ..settings("n1", 2)
        };
        // Name, current annotation, and the holders after acquiring (`None`: blocked).
        type Case<'a> = (&'a str, Option<String>, Option<&'a [&'a str]>);
        let cases: &[Case] = &[
            ("empty_lock", None, Some(&["n1"])),
            (
                "partial_lock",
                Some(multi(2, &[entry("n2", zero, 0)])),
                Some(&["n2", "n1"]),
            ),
            (
                "full_lock",
                Some(multi(
                    2,
                    &[entry("n2", minute_ago, 3600), entry("n3", minute_ago, 3600)],
                )),
                None,
            ),
            (
                "full_with_one_expired_lock",
                Some(multi(
                    2,
                    &[entry("n2", hour_ago, 60), entry("n3", minute_ago, 3600)],
                )),
                Some(&["n3", "n1"]),
            ),
            (
                "full_with_all_expired_locks",
                Some(multi(2, &[entry("n2", hour_ago, 60), entry("n3", hour_ago, 60)])),
                Some(&["n1"]),
            ),
            // Upstream 1.23 judges a lock by the TTL it recorded: a zero TTL never expires.
            (
                "full_with_lock_taken_before_ttl_was_configured",
                Some(multi(
                    2,
                    &[entry("n2", hour_ago, 0), entry("n3", minute_ago, 3600)],
                )),
                None,
            ),
        ];
        for (name, current, want) in cases {
            let decision = decide_acquire(current.as_deref(), &s, &Claim::default(), ts(NOW)).unwrap();
            match (want, decision.change) {
                (Some(want), Some(Change::Set(text))) => {
                    let LockRecord::Multi(m) = LockRecord::parse(&text).unwrap() else {
                        panic!("{name}: multi form expected: {text}")
                    };
                    assert_eq!(m.max_owners, 2, "{name}");
                    assert_eq!(&ids(&m.locks), want, "{name}");
                    let new = m.locks.last().unwrap();
                    assert_eq!(
                        (new.created, new.ttl),
                        (Some(ts(NOW)), GoDuration::from_secs(60)),
                        "{name}"
                    );
                }
                (None, None) => assert!(matches!(decision.outcome, Acquire::Blocked { .. }), "{name}"),
                (want, change) => panic!("{name}: want {want:?}, got {change:?}"),
            }
        }
    }

    #[test]
    fn acquire_decisions() {
        let live = "2026-11-27T08:59:00Z";
        let expired = "2020-05-05T14:15:00Z";
        let ours_single = entry("me", NOW, 0);
        let new_single = entry("me", NOW, 0);
        let new_multi = |max: i64, others: &[String]| {
            let mut all = others.to_vec();
            all.push(entry("me", NOW, 0));
            format!("acquired: {}", multi(max, &all))
        };
        let cases: Vec<(&str, Option<String>, u32, String)> = vec![
            (
                "absent, concurrency 1: single form",
                None,
                1,
                format!("acquired: {new_single}"),
            ),
            ("absent, concurrency 3: multi form", None, 3, new_multi(3, &[])),
            ("our single entry", Some(ours_single.clone()), 1, "held".into()),
            (
                "our single entry at concurrency 3",
                Some(ours_single),
                3,
                "held".into(),
            ),
            (
                "our entry in a multi record at concurrency 1",
                Some(multi(2, &[entry("a", live, 0), entry("me", live, 0)])),
                1,
                "held".into(),
            ),
            (
                "live single holder",
                Some(entry("a", live, 0)),
                1,
                "blocked by a (limit 1)".into(),
            ),
            (
                "live single holder blocks concurrency 3 too",
                Some(entry("a", live, 0)),
                3,
                "blocked by a (limit 1)".into(),
            ),
            (
                "expired single holder, concurrency 1",
                Some(entry("a", expired, 60)),
                1,
                format!("acquired: {new_single}"),
            ),
            (
                "expired single holder, concurrency 3",
                Some(entry("a", expired, 60)),
                3,
                new_multi(3, &[]),
            ),
            (
                "our own expired entry is taken afresh",
                Some(entry("me", expired, 60)),
                1,
                format!("acquired: {new_single}"),
            ),
            (
                "manual lock at concurrency 1",
                Some(r#"{"nodeID":"manual"}"#.into()),
                1,
                "blocked by manual (limit 1)".into(),
            ),
            (
                "manual lock at concurrency 5",
                Some(r#"{"nodeID":"manual"}"#.into()),
                5,
                "blocked by manual (limit 1)".into(),
            ),
            (
                "manual lock in multi form",
                Some(r#"{"maxOwners":5,"locks":[{"nodeID":"manual"}]}"#.into()),
                1,
                "blocked by manual (limit 1)".into(),
            ),
            (
                "room in a multi record",
                Some(multi(3, &[entry("a", live, 0)])),
                3,
                new_multi(3, &[entry("a", live, 0)]),
            ),
            (
                "their smaller maxOwners limits us",
                Some(multi(2, &[entry("a", live, 0), entry("b", live, 0)])),
                3,
                "blocked by a,b (limit 2)".into(),
            ),
            (
                "their smaller maxOwners is kept while they hold",
                Some(multi(2, &[entry("a", live, 0)])),
                3,
                new_multi(2, &[entry("a", live, 0)]),
            ),
            (
                "our smaller concurrency limits us",
                Some(multi(5, &[entry("a", live, 0), entry("b", live, 0)])),
                2,
                "blocked by a,b (limit 2)".into(),
            ),
            (
                "our smaller concurrency is written",
                Some(multi(5, &[entry("a", live, 0)])),
                2,
                new_multi(2, &[entry("a", live, 0)]),
            ),
            (
                "missing maxOwners: ours",
                Some(r#"{"locks":[{"nodeID":"a"}]}"#.into()),
                2,
                new_multi(
                    2,
                    &[r#"{"nodeID":"a","metadata":{"unschedulable":false},"TTL":0}"#.to_owned()],
                ),
            ),
            (
                "multi holder at concurrency 1",
                Some(multi(3, &[entry("a", live, 0)])),
                1,
                "blocked by a (limit 1)".into(),
            ),
            (
                "only expired multi holders, concurrency 1: single form",
                Some(multi(3, &[entry("a", expired, 60)])),
                1,
                format!("acquired: {new_single}"),
            ),
            (
                "a stale maxOwners goes with its holders",
                Some(multi(2, &[entry("a", expired, 60)])),
                3,
                new_multi(3, &[]),
            ),
            (
                "empty multi record left by upstream",
                Some(r#"{"maxOwners":2,"locks":[]}"#.into()),
                1,
                format!("acquired: {new_single}"),
            ),
        ];
        for (name, current, concurrency, want) in cases {
            assert_eq!(
                acquire(current.as_deref(), &settings("me", concurrency)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn blocked_reports_the_next_expiry_and_what_was_seen() {
        let current = multi(2, &[entry("a", NOW, 60), entry("b", NOW, 30)]);
        let decision =
            decide_acquire(Some(&current), &settings("me", 2), &Claim::default(), ts(NOW)).unwrap();
        let Acquire::Blocked {
            next_expiry, seen, ..
        } = decision.outcome
        else {
            panic!("blocked expected: {decision:?}")
        };
        assert_eq!(next_expiry, Some(ts("2026-11-27T09:00:30.123456789Z")));
        assert_eq!(seen.annotation(), Some(current.as_str()));
    }

    #[test]
    fn claim_and_settings_are_recorded() {
        let s = LockSettings {
            ttl: GoDuration::from_secs(3600),
            ..settings("me", 1)
        };
        let claim = Claim {
            unschedulable: true,
            boot_id: Some("b00t".into()),
        };
        let decision = decide_acquire(None, &s, &claim, ts(NOW)).unwrap();
        assert_eq!(
            decision.change,
            Some(Change::Set(
                r#"{"nodeID":"me","metadata":{"unschedulable":true},"created":"2026-11-27T09:00:00.123456789Z","TTL":3600000000000,"bootID":"b00t"}"#.into()
            ))
        );
    }

    /// What releasing did, in short: "released: <annotation>|removed", "not before <t>[: <annotation>]",
    /// "not held".
    fn release(current: Option<&str>, settings: &LockSettings) -> String {
        let decision = decide_release(current, settings, ts(NOW)).unwrap();
        match (decision.outcome, decision.change) {
            (Release::Released, Some(Change::Remove)) => "released: removed".into(),
            (Release::Released, Some(Change::Set(text))) => format!("released: {text}"),
            (Release::NotBefore(t), None) => format!("not before {}", format_time(t)),
            (Release::NotBefore(t), Some(Change::Set(text))) => {
                format!("not before {}: {text}", format_time(t))
            }
            (Release::NotHeld, None) => "not held".into(),
            (outcome, change) => panic!("inconsistent decision: {outcome:?} with {change:?}"),
        }
    }

    #[test]
    fn release_decisions() {
        let live = "2026-11-27T08:59:00Z";
        let expired = "2020-05-05T14:15:00Z";
        let with_after = |node: &str, after: &str| {
            format!(
                r#"{{"nodeID":"{node}","metadata":{{"unschedulable":false}},"created":"{live}","TTL":0,"releaseAfter":"{after}"}}"#
            )
        };
        let delayed = LockSettings {
            release_delay: Duration::from_secs(90),
            ..settings("me", 1)
        };
        let cases: Vec<(&str, Option<String>, LockSettings, String)> = vec![
            ("absent", None, settings("me", 1), "not held".into()),
            (
                "someone else's single entry",
                Some(entry("a", live, 0)),
                settings("me", 1),
                "not held".into(),
            ),
            (
                "our single entry",
                Some(entry("me", live, 0)),
                settings("me", 1),
                "released: removed".into(),
            ),
            (
                "our single entry with a delay: schedule it",
                Some(entry("me", live, 0)),
                delayed.clone(),
                format!(
                    "not before 2026-11-27T09:01:30.123456789Z: {}",
                    with_after("me", "2026-11-27T09:01:30.123456789Z")
                ),
            ),
            (
                "a stored releaseAfter in the future wins",
                Some(with_after("me", "2026-11-27T09:00:10Z")),
                delayed.clone(),
                "not before 2026-11-27T09:00:10Z".into(),
            ),
            (
                "a stored releaseAfter holds without a delay configured",
                Some(with_after("me", "2026-11-27T09:00:10Z")),
                settings("me", 1),
                "not before 2026-11-27T09:00:10Z".into(),
            ),
            (
                "a stored releaseAfter in the past: release",
                Some(with_after("me", "2026-11-27T09:00:00Z")),
                delayed.clone(),
                "released: removed".into(),
            ),
            (
                "releaseAfter exactly now: release",
                Some(with_after("me", NOW)),
                delayed.clone(),
                "released: removed".into(),
            ),
            (
                "our expired entry goes at once",
                Some(entry("me", expired, 60)),
                delayed.clone(),
                "released: removed".into(),
            ),
            (
                "multi: only our entry goes",
                Some(multi(
                    3,
                    &[entry("a", live, 0), entry("me", live, 0), entry("b", expired, 1)],
                )),
                settings("me", 3),
                format!(
                    "released: {}",
                    multi(3, &[entry("a", live, 0), entry("b", expired, 1)])
                ),
            ),
            (
                "multi: the last entry takes the annotation with it",
                Some(multi(3, &[entry("me", live, 0)])),
                settings("me", 3),
                "released: removed".into(),
            ),
            (
                "multi: a delay is recorded on our entry only",
                Some(multi(3, &[entry("a", live, 0), entry("me", live, 0)])),
                delayed.clone(),
                format!(
                    "not before 2026-11-27T09:01:30.123456789Z: {}",
                    multi(
                        3,
                        &[
                            entry("a", live, 0),
                            with_after("me", "2026-11-27T09:01:30.123456789Z")
                        ]
                    )
                ),
            ),
            (
                "multi without our entry",
                Some(multi(3, &[entry("a", live, 0)])),
                settings("me", 3),
                "not held".into(),
            ),
        ];
        for (name, current, s, want) in cases {
            assert_eq!(release(current.as_deref(), &s), want, "{name}");
        }
    }

    #[test]
    fn corrupt_annotations_are_never_overwritten() {
        for decision in [
            decide_acquire(Some("not json"), &settings("me", 1), &Claim::default(), ts(NOW)).map(|_| ()),
            decide_release(Some("not json"), &settings("me", 1), ts(NOW)).map(|_| ()),
        ] {
            assert!(matches!(decision, Err(RecordError::Parse { .. })), "{decision:?}");
        }
    }

    #[test]
    fn held_by_finds_a_live_entry_only() {
        let now = ts(NOW);
        let current = multi(3, &[entry("a", NOW, 0), entry("me", "2020-05-05T14:15:00Z", 60)]);
        let record = read(Some(&current)).unwrap().expect("a record");
        assert_eq!(
            record.held_by("a", now).map(|e| e.node_id.clone()),
            Some("a".into())
        );
        assert_eq!(record.held_by("me", now), None, "expired");
        assert_eq!(read(None).unwrap(), None, "absent: no record, so no holder");
    }

    /// What reclaiming `gone` (an entry as text) did, in short: "reclaimed: <annotation>|removed",
    /// "not present".
    fn reclaim(current: Option<&str>, gone: &str) -> String {
        let gone = LockRecord::parse(gone).unwrap().entries()[0].clone();
        let decision = decide_reclaim(current, &gone).unwrap();
        match (decision.outcome, decision.change) {
            (Reclaim::Reclaimed, Some(Change::Remove)) => "reclaimed: removed".into(),
            (Reclaim::Reclaimed, Some(Change::Set(text))) => format!("reclaimed: {text}"),
            (Reclaim::NotPresent, None) => "not present".into(),
            (outcome, change) => panic!("inconsistent decision: {outcome:?} with {change:?}"),
        }
    }

    #[test]
    fn reclaim_decisions() {
        let live = "2026-11-27T08:59:00Z";
        let gone = entry("gone", live, 0);
        // One of ours, with both optional fields and a key this version does not know.
        let ours = r#"{"nodeID":"b","metadata":{"unschedulable":true},"created":"2026-11-27T08:58:00.5Z","TTL":3600000000000,"releaseAfter":"2026-11-27T09:30:00Z","bootID":"b00t","future":1}"#;
        let cases: Vec<(&str, Option<String>, String)> = vec![
            ("absent", None, "not present".into()),
            (
                "single form: the annotation goes",
                Some(gone.clone()),
                "reclaimed: removed".into(),
            ),
            (
                "single form held by another node",
                Some(entry("a", live, 0)),
                "not present".into(),
            ),
            (
                "multi form: the others stay byte for byte, maxOwners and unknown keys too",
                Some(format!(
                    r#"{{"maxOwners":3,"locks":[{},{gone},{ours}],"x":"y"}}"#,
                    entry("a", live, 0)
                )),
                format!(
                    r#"reclaimed: {{"maxOwners":3,"locks":[{},{ours}],"x":"y"}}"#,
                    entry("a", live, 0)
                ),
            ),
            (
                "multi form: the last entry takes the annotation with it",
                Some(multi(2, std::slice::from_ref(&gone))),
                "reclaimed: removed".into(),
            ),
            (
                "multi form: an expired entry of another node stays",
                Some(multi(
                    2,
                    &[entry("old", "2020-05-05T14:15:00Z", 60), gone.clone()],
                )),
                format!(
                    "reclaimed: {}",
                    multi(2, &[entry("old", "2020-05-05T14:15:00Z", 60)])
                ),
            ),
            (
                "the holder wrote its releaseAfter since: alive, kept",
                Some(format!(
                    r#"{{"nodeID":"gone","metadata":{{"unschedulable":false}},"created":"{live}","TTL":0,"releaseAfter":"2026-11-27T09:05:00Z"}}"#
                )),
                "not present".into(),
            ),
            (
                "the same node took the lock afresh: kept",
                Some(entry("gone", NOW, 0)),
                "not present".into(),
            ),
        ];
        for (name, current, want) in cases {
            assert_eq!(reclaim(current.as_deref(), &gone), want, "{name}");
        }
        assert!(matches!(
            decide_reclaim(
                Some("not json"),
                &LockEntry::new("gone", ts(NOW), GoDuration::ZERO)
            ),
            Err(RecordError::Parse { .. })
        ));
    }

    #[test]
    fn reclaim_candidates_are_other_nodes_live_entries_written_by_agents() {
        let now = ts(NOW);
        let current = multi(
            5,
            &[
                entry("a", NOW, 0),
                entry("me", NOW, 0),
                entry("expired", "2020-05-05T14:15:00Z", 60),
                r#"{"nodeID":"manual"}"#.to_owned(),
                entry("b", NOW, 3600),
            ],
        );
        let found = reclaim_candidates(Some(&current), "me", now).unwrap();
        assert_eq!(ids(&found), ["a", "b"]);
        assert_eq!(
            reclaim_candidates(Some(r#"{"nodeID":"manual","TTL":0}"#), "me", now).unwrap(),
            [],
            "an entry without created is an operator's pause"
        );
        assert_eq!(reclaim_candidates(None, "me", now).unwrap(), []);
        assert!(reclaim_candidates(Some("{"), "me", now).is_err());
    }

    proptest! {
        /// Whatever the annotation, acquiring never leaves more live holders than the limit allows,
        /// and never adds a second holder to a live single-form entry.
        #[test]
        fn acquiring_never_exceeds_the_limit(record in lock_record(), concurrency in 1u32..5) {
            let now = Timestamp::new(1_800_000_000, 0).unwrap();
            let text = record.to_json().unwrap();
            let before = record.holders(now).len();
            let s = settings("me", concurrency);
            let decision = decide_acquire(Some(&text), &s, &Claim::default(), now).unwrap();
            if let Some(Change::Set(after)) = decision.change {
                let after = LockRecord::parse(&after).unwrap();
                let live = after.holders(now).len();
                prop_assert!(live <= concurrency as usize, "{} holders at concurrency {}", live, concurrency);
                if let (LockRecord::Multi(old), LockRecord::Multi(_)) = (&record, &after)
                    && old.max_owners >= 1 && before > 0
                {
                    prop_assert!(live as i64 <= old.max_owners);
                }
                prop_assert!(!matches!(&record, LockRecord::Single(e) if !e.is_expired(now)));
                prop_assert!(after.held_by("me", now).is_some());
            }
        }
    }

    fn held(node: &str, created: &str) -> LockEntry {
        LockRecord::parse(&entry(node, created, 0)).unwrap().entries()[0].clone()
    }

    /// An entry moved from the other backend's object keeps every field, replaces our own and
    /// drops expired entries of others, in the form our concurrency writes when it is alone.
    #[test]
    fn an_adopted_entry_is_kept_as_it_was() {
        let minute_ago = "2026-11-27T08:59:00Z";
        let hour_ago = "2026-11-27T08:00:00Z";
        let moved = LockEntry {
            boot_id: Some("boot-1".to_owned()),
            release_after: Some(ts("2026-11-27T09:05:00Z")),
            ..held("n1", hour_ago)
        };
        let adopt = |current: Option<&str>, c: u32| -> LockRecord {
            match decide_adopt(current, &moved, &settings("n1", c), ts(NOW))
                .unwrap()
                .change
            {
                Some(Change::Set(text)) => LockRecord::parse(&text).unwrap(),
                other => panic!("expected a write, got {other:?}"),
            }
        };
        assert_eq!(adopt(None, 1), LockRecord::Single(moved.clone()));
        let others = multi(
            3,
            &[
                entry("n2", minute_ago, 0),
                entry("n1", minute_ago, 0),
                entry("n3", hour_ago, 60),
            ],
        );
        let record = adopt(Some(&others), 3);
        assert_eq!(
            ids(record.entries()),
            ["n2", "n1"],
            "expired n3 dropped, ours replaced"
        );
        assert_eq!(record.entries()[1], moved);
    }
}
