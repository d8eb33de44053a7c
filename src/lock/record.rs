//! The lock annotation's wire format and the decisions taken on it. Pure: no I/O, no clock — the
//! caller passes `now`.
//!
//! # Wire format (upstream kured's, byte for byte)
//!
//! Single form, written by agents at concurrency 1:
//!
//! ```json
//! {"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0}
//! ```
//!
//! Multi form, written by agents at concurrency > 1:
//!
//! ```json
//! {"maxOwners":2,"locks":[{"nodeID":"n1","metadata":{"unschedulable":false},"created":"…","TTL":0}]}
//! ```
//!
//! - `nodeID`: the holder's node name.
//! - `metadata.unschedulable`: whether the node was cordoned before kured cordoned it, so that the
//!   agent leaves it cordoned after the reboot.
//! - `created`: when the entry was written, Go's `time.RFC3339Nano` in UTC: nanoseconds with trailing
//!   zeros trimmed, no fraction at all when it is zero.
//! - `TTL`: Go's `time.Duration`, an integer count of nanoseconds; `0` (or below) never expires.
//! - `maxOwners`: the concurrency of the agent that wrote the record.
//!
//! Go's encoder also escapes `<`, `>` and `&` in strings; node names cannot contain them, so the
//! bytes agree for every entry an agent writes.
//!
//! Two optional fields of ours follow `TTL` in an entry. They are omitted when unset, so an entry
//! without them is byte-identical to upstream's, and upstream's decoder ignores them:
//!
//! - `releaseAfter` (RFC 3339, like `created`): the holder may release no earlier than this. Written
//!   when the holder starts its `--lock-release-delay`, so the delay survives an agent restart:
//!   the restarted agent neither strands the lock nor releases it early.
//! - `bootID`: the holder's boot ID when it took the lock, so an agent restarted while holding the
//!   lock can tell whether its node has rebooted since.
//!
//! An upstream agent that rewrites a multi-form record decodes it into its own struct, so it drops
//! these two fields from our entries; readers must treat them as "unknown" when missing.
//!
//! # Reading
//!
//! Both forms are read whatever our own concurrency, as Go's decoder reads them: unknown keys are
//! kept (and written back unchanged), key names match case-insensitively, `null` and missing fields
//! take their zero value. A hand-written `{"nodeID":"manual"}` is a holder that never expires and
//! blocks every agent. Anything else — not JSON, not an object, wrong types, both or neither of
//! `nodeID` and `locks` — is a [`RecordError`]; such an annotation is never overwritten.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Acquire, Claim, LockSettings, Reclaim, Release, Seen};
use crate::duration::GoDuration;

/// Why an annotation is not a lock record, or a record cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not JSON")]
    Parse {
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: expected {expected}")]
    Decode { what: String, expected: &'static str },
    #[error("encoding the lock record as JSON")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = RecordError> = std::result::Result<T, E>;

/// Node state recorded with an entry (upstream's `NodeMeta`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeMeta {
    /// The node was unschedulable before kured cordoned it: leave it cordoned after the reboot.
    pub unschedulable: bool,
}

/// One holder of the lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockEntry {
    pub node_id: String,
    pub metadata: NodeMeta,
    /// When the entry was written; `None` when the record does not say (a hand-written lock).
    pub created: Option<Timestamp>,
    /// How long after `created` the entry expires; zero or negative: never.
    pub ttl: GoDuration,
    /// The holder may release no earlier than this (ours: `releaseAfter`).
    pub release_after: Option<Timestamp>,
    /// The holder's boot ID when it took the lock (ours: `bootID`).
    pub boot_id: Option<String>,
    /// Keys this version does not know, written back as they were read.
    pub extra: BTreeMap<String, Value>,
}

impl LockEntry {
    /// A fresh entry as an agent writes it.
    pub fn new(node_id: impl Into<String>, created: Timestamp, ttl: GoDuration) -> LockEntry {
        LockEntry {
            node_id: node_id.into(),
            created: Some(created),
            ttl,
            ..LockEntry::default()
        }
    }

    /// When this entry expires: `created + TTL` for a positive TTL; `None` (never) for a zero or
    /// negative TTL, for an entry without `created`, and beyond the representable range.
    ///
    /// Upstream reads a missing `created` as Go's zero time (year 1), so with a TTL it expires at
    /// once; we keep such an entry, which can only have been written by hand, until it is removed.
    fn expires_at(&self) -> Option<Timestamp> {
        if self.ttl.as_nanos() <= 0 {
            return None;
        }
        self.created?.checked_add(self.ttl.to_signed()).ok()
    }

    /// Whether the entry has expired at `now` (upstream's `ttlExpired`: `now - created >= TTL`).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|at| now >= at)
    }
}

/// The records of holders of the multi form, and the concurrency of its last writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MultiRecord {
    /// The writer's concurrency; zero or below when the record does not say.
    pub max_owners: i64,
    pub locks: Vec<LockEntry>,
    /// Keys this version does not know, written back as they were read.
    pub extra: BTreeMap<String, Value>,
}

/// The value of the lock annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRecord {
    /// One holder, which assumes it is the only one (written at concurrency 1).
    Single(LockEntry),
    /// Up to `maxOwners` holders (written at concurrency > 1).
    Multi(MultiRecord),
}

impl LockRecord {
    /// Reads an annotation value; see the module documentation for what is accepted.
    pub fn parse(text: &str) -> Result<LockRecord> {
        let value: Value = serde_json::from_str(text).map_err(|source| RecordError::Parse { source })?;
        let Value::Object(mut map) = value else {
            return Err(decode("the record", "a JSON object"));
        };
        let single = has_key(&map, "nodeID");
        let multi = has_key(&map, "locks") || has_key(&map, "maxOwners");
        match (single, multi) {
            (true, false) => decode_entry(map, "").map(LockRecord::Single),
            (false, true) => {
                let max_owners = match take(&mut map, "maxOwners") {
                    None | Some(Value::Null) => 0,
                    Some(Value::Number(n)) => n.as_i64().ok_or_else(|| decode("maxOwners", INTEGER))?,
                    Some(_) => return Err(decode("maxOwners", INTEGER)),
                };
                let locks = match take(&mut map, "locks") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| match item {
                            Value::Object(entry) => decode_entry(entry, &format!("locks[{i}].")),
                            _ => Err(decode(format!("locks[{i}]"), "an object")),
                        })
                        .collect::<Result<_>>()?,
                    Some(_) => return Err(decode("locks", "an array")),
                };
                Ok(LockRecord::Multi(MultiRecord {
                    max_owners,
                    locks,
                    extra: map.into_iter().collect(),
                }))
            }
            (true, true) => Err(decode(
                "the record",
                "either nodeID (single form) or locks (multi form), not both",
            )),
            (false, false) => Err(decode("the record", "nodeID (single form) or locks (multi form)")),
        }
    }

    /// The annotation value for this record.
    pub fn to_json(&self) -> Result<String> {
        let encoded = match self {
            LockRecord::Single(entry) => serde_json::to_string(&WireEntry::from(entry)),
            LockRecord::Multi(multi) => serde_json::to_string(&WireMulti {
                max_owners: multi.max_owners,
                locks: multi.locks.iter().map(WireEntry::from).collect(),
                extra: &multi.extra,
            }),
        };
        encoded.map_err(|source| RecordError::Encode { source })
    }

    /// Every entry, expired or not.
    pub fn entries(&self) -> &[LockEntry] {
        match self {
            LockRecord::Single(entry) => std::slice::from_ref(entry),
            LockRecord::Multi(multi) => &multi.locks,
        }
    }

    /// The entries that have not expired at `now`: the nodes holding the lock.
    pub fn holders(&self, now: Timestamp) -> Vec<&LockEntry> {
        self.entries().iter().filter(|e| !e.is_expired(now)).collect()
    }

    /// Our live entry, if we hold the lock at `now`.
    pub fn held_by(&self, node_id: &str, now: Timestamp) -> Option<&LockEntry> {
        self.entries()
            .iter()
            .find(|e| e.node_id == node_id && !e.is_expired(now))
    }
}

const INTEGER: &str = "an integer";

fn decode(what: impl Into<String>, expected: &'static str) -> RecordError {
    RecordError::Decode {
        what: what.into(),
        expected,
    }
}

/// Whether `map` has `name` as Go's decoder matches it: exactly or ignoring ASCII case.
fn has_key(map: &Map<String, Value>, name: &str) -> bool {
    map.keys().any(|k| k.eq_ignore_ascii_case(name))
}

/// Removes every key that matches `name` ignoring ASCII case and returns the value of the exact
/// match, or of the first case-insensitive one. Removing them all keeps a duplicate from being
/// written back among the unknown keys, where a Go reader would take it instead.
fn take(map: &mut Map<String, Value>, name: &str) -> Option<Value> {
    let keys: Vec<String> = map
        .keys()
        .filter(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    let mut exact = None;
    let mut first = None;
    for key in keys {
        let value = map.remove(&key);
        if key == name {
            exact = value;
        } else if first.is_none() {
            first = value;
        }
    }
    exact.or(first)
}

fn decode_entry(mut map: Map<String, Value>, at: &str) -> Result<LockEntry> {
    let field = |name: &str| format!("{at}{name}");
    let node_id = match take(&mut map, "nodeID") {
        Some(Value::String(s)) => s,
        _ => return Err(decode(field("nodeID"), "a string (the holder's node name)")),
    };
    let metadata = match take(&mut map, "metadata") {
        None | Some(Value::Null) => NodeMeta::default(),
        Some(Value::Object(mut meta)) => match take(&mut meta, "unschedulable") {
            None | Some(Value::Null) => NodeMeta::default(),
            Some(Value::Bool(unschedulable)) => NodeMeta { unschedulable },
            Some(_) => return Err(decode(field("metadata.unschedulable"), "true or false")),
        },
        Some(_) => return Err(decode(field("metadata"), "an object")),
    };
    let created = decode_time(take(&mut map, "created"), || field("created"))?;
    let ttl = match take(&mut map, "TTL") {
        None | Some(Value::Null) => GoDuration::ZERO,
        Some(Value::Number(n)) => n
            .as_i64()
            .map(GoDuration::from_nanos)
            .ok_or_else(|| decode(field("TTL"), NANOSECONDS))?,
        Some(_) => return Err(decode(field("TTL"), NANOSECONDS)),
    };
    let release_after = decode_time(take(&mut map, "releaseAfter"), || field("releaseAfter"))?;
    let boot_id = match take(&mut map, "bootID") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(decode(field("bootID"), "a string")),
    };
    Ok(LockEntry {
        node_id,
        metadata,
        created,
        ttl,
        release_after,
        boot_id,
        extra: map.into_iter().collect(),
    })
}

const NANOSECONDS: &str = "an integer count of nanoseconds";
const TIME: &str = "an RFC 3339 time with a year from 0000 to 9999";

fn decode_time(value: Option<Value>, what: impl Fn() -> String) -> Result<Option<Timestamp>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => parse_time(&text).map(Some).ok_or_else(|| decode(what(), TIME)),
        Some(_) => Err(decode(what(), TIME)),
    }
}

/// Parses an RFC 3339 time. Go writes and reads only four-digit years, so other years are refused:
/// a record we could not write back for Go to read is not a record. (jiff's range ends at
/// 9999-12-30T22:00:00Z, a day before Go's; later times are refused too.)
fn parse_time(text: &str) -> Option<Timestamp> {
    let ts: Timestamp = text.parse().ok()?;
    let year = jiff::tz::Offset::UTC.to_datetime(ts).year();
    (0..=9999).contains(&year).then_some(ts)
}

/// Formats `ts` as Go's `time.RFC3339Nano` in UTC: `2006-01-02T15:04:05.999999999Z`, trailing
/// zeros of the fraction trimmed and the fraction left out when it is zero.
pub fn format_time(ts: Timestamp) -> String {
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    let mut text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let nanos = dt.subsec_nanosecond();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// A timestamp that serializes as [`format_time`] prints it.
struct GoTime(Timestamp);

impl Serialize for GoTime {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_time(self.0))
    }
}

/// An entry in upstream's field order: nodeID, metadata, created, TTL; then ours; then unknown keys.
#[derive(Serialize)]
struct WireEntry<'a> {
    #[serde(rename = "nodeID")]
    node_id: &'a str,
    metadata: NodeMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<GoTime>,
    #[serde(rename = "TTL")]
    ttl: GoDuration,
    #[serde(rename = "releaseAfter", skip_serializing_if = "Option::is_none")]
    release_after: Option<GoTime>,
    #[serde(rename = "bootID", skip_serializing_if = "Option::is_none")]
    boot_id: Option<&'a str>,
    #[serde(flatten)]
    extra: &'a BTreeMap<String, Value>,
}

impl<'a> From<&'a LockEntry> for WireEntry<'a> {
    fn from(entry: &'a LockEntry) -> Self {
        WireEntry {
            node_id: &entry.node_id,
            metadata: entry.metadata,
            created: entry.created.map(GoTime),
            ttl: entry.ttl,
            release_after: entry.release_after.map(GoTime),
            boot_id: entry.boot_id.as_deref(),
            extra: &entry.extra,
        }
    }
}

#[derive(Serialize)]
struct WireMulti<'a> {
    #[serde(rename = "maxOwners")]
    max_owners: i64,
    locks: Vec<WireEntry<'a>>,
    #[serde(flatten)]
    extra: &'a BTreeMap<String, Value>,
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
    fn read_only(outcome: T) -> Self {
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

/// The annotation's record, or `None` when the annotation is absent.
pub fn read(current: Option<&str>) -> Result<Option<LockRecord>> {
    current.map(LockRecord::parse).transpose()
}

/// Our live entry in the annotation, if we hold the lock at `now`.
pub fn holding(current: Option<&str>, node_id: &str, now: Timestamp) -> Result<Option<LockEntry>> {
    Ok(read(current)?.and_then(|record| record.held_by(node_id, now).cloned()))
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
    let concurrency = settings.concurrency.max(1);
    let ours = LockEntry {
        metadata: NodeMeta {
            unschedulable: claim.unschedulable,
        },
        boot_id: claim.boot_id.clone(),
        ..LockEntry::new(settings.node_id.clone(), now, settings.ttl)
    };
    let seen = Seen::new(current.map(str::to_owned));
    let Some(record) = read(current)? else {
        return Decision::write(&fresh(ours.clone(), concurrency), Acquire::Acquired(ours));
    };
    if let Some(entry) = record.held_by(&settings.node_id, now) {
        return Ok(Decision::read_only(Acquire::AlreadyHeld(entry.clone())));
    }
    match record {
        LockRecord::Single(entry) if !entry.is_expired(now) => Ok(Decision::read_only(Acquire::Blocked {
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
                    next_expiry: live.iter().filter_map(LockEntry::expires_at).min(),
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

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2026-11-27T09:00:00.123456789Z";

    fn settings(node: &str, concurrency: u32) -> LockSettings {
        LockSettings {
            node_id: node.to_owned(),
            concurrency,
            ttl: GoDuration::ZERO,
            release_delay: Duration::ZERO,
        }
    }

    fn entry(node: &str, created: &str, ttl_secs: i64) -> String {
        format!(
            r#"{{"nodeID":"{node}","metadata":{{"unschedulable":false}},"created":"{created}","TTL":{}}}"#,
            ttl_secs * 1_000_000_000
        )
    }

    fn multi(max: i64, entries: &[String]) -> String {
        format!(r#"{{"maxOwners":{max},"locks":[{}]}}"#, entries.join(","))
    }

    fn ids(holders: &[LockEntry]) -> Vec<&str> {
        holders.iter().map(|e| e.node_id.as_str()).collect()
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

    #[test]
    fn go_rfc3339nano_formatting() {
        let cases = [
            ("2020-05-05T14:15:00Z", "2020-05-05T14:15:00Z"),
            ("2026-11-27T09:00:00.123456789Z", "2026-11-27T09:00:00.123456789Z"),
            ("2026-11-27T09:00:00.120Z", "2026-11-27T09:00:00.12Z"),
            ("2026-11-27T09:00:00.000000001Z", "2026-11-27T09:00:00.000000001Z"),
            ("2026-11-27T09:00:00.5Z", "2026-11-27T09:00:00.5Z"),
            ("2026-11-27T10:00:00+01:00", "2026-11-27T09:00:00Z"),
            ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
            ("9999-12-30T21:59:59.999999999Z", "9999-12-30T21:59:59.999999999Z"),
        ];
        for (input, want) in cases {
            assert_eq!(format_time(ts(input)), want, "{input}");
        }
    }

    /// Upstream's `TestTtlExpired`.
    #[test]
    fn ttl_expiry_as_upstream() {
        let d = "2020-05-05T14:15:00Z";
        let now = ts(NOW);
        let cases = [
            ("long ago, 1s", d, 1, true),
            ("just now, 1s", NOW, 1, false),
            ("long ago, no ttl", d, 0, false),
            ("long ago, negative ttl", d, -1, false),
            (
                "exactly at created + ttl",
                "2026-11-27T08:59:59.123456789Z",
                1,
                true,
            ),
            ("a nanosecond before", "2026-11-27T08:59:59.12345679Z", 1, false),
            ("created in the future", "2026-11-27T10:00:00Z", 1, false),
        ];
        for (name, created, ttl_secs, expired) in cases {
            let entry = LockEntry::new("n", ts(created), GoDuration::from_secs(ttl_secs));
            assert_eq!(entry.is_expired(now), expired, "{name}");
        }
        let manual = LockRecord::parse(r#"{"nodeID":"manual","TTL":1}"#).unwrap();
        assert!(!manual.entries()[0].is_expired(now), "no created: never expires");
    }

    #[test]
    fn upstream_single_form_is_read() {
        let text = r#"{"nodeID":"n1","metadata":{"unschedulable":true},"created":"2026-11-27T09:00:00.123456789Z","TTL":3600000000000}"#;
        let record = LockRecord::parse(text).unwrap();
        let want = LockEntry {
            metadata: NodeMeta { unschedulable: true },
            ..LockEntry::new("n1", ts(NOW), GoDuration::from_secs(3600))
        };
        assert_eq!(record, LockRecord::Single(want));
        assert_eq!(record.to_json().unwrap(), text, "written back byte for byte");
    }

    #[test]
    fn upstream_multi_form_is_read() {
        let text = multi(2, &[entry("n1", NOW, 0), entry("n2", "2020-05-05T14:15:00Z", 60)]);
        let record = LockRecord::parse(&text).unwrap();
        let LockRecord::Multi(m) = &record else {
            panic!("multi form expected: {record:?}")
        };
        assert_eq!(m.max_owners, 2);
        assert_eq!(ids(&m.locks), ["n1", "n2"]);
        assert_eq!(
            ids(&record.holders(ts(NOW)).into_iter().cloned().collect::<Vec<_>>()),
            ["n1"]
        );
        assert_eq!(record.to_json().unwrap(), text, "written back byte for byte");
    }

    #[test]
    fn lenient_reading_like_go() {
        let cases: &[(&str, &str, LockRecord)] = &[
            (
                "manual lock, every other field missing",
                r#"{"nodeID":"manual"}"#,
                LockRecord::Single(LockEntry {
                    node_id: "manual".into(),
                    ..LockEntry::default()
                }),
            ),
            (
                "nulls are zero values",
                r#"{"nodeID":"n","metadata":null,"created":null,"TTL":null}"#,
                LockRecord::Single(LockEntry {
                    node_id: "n".into(),
                    ..LockEntry::default()
                }),
            ),
            (
                "keys match ignoring case",
                r#"{"NodeId":"n","METADATA":{"Unschedulable":true},"ttl":5}"#,
                LockRecord::Single(LockEntry {
                    node_id: "n".into(),
                    metadata: NodeMeta { unschedulable: true },
                    ttl: GoDuration::from_nanos(5),
                    ..LockEntry::default()
                }),
            ),
            (
                "unknown keys are kept",
                r#"{"nodeID":"n","future":[1]}"#,
                LockRecord::Single(LockEntry {
                    node_id: "n".into(),
                    extra: [("future".to_owned(), serde_json::json!([1]))].into(),
                    ..LockEntry::default()
                }),
            ),
            (
                "multi form without maxOwners",
                r#"{"locks":[{"nodeID":"manual"}]}"#,
                LockRecord::Multi(MultiRecord {
                    locks: vec![LockEntry {
                        node_id: "manual".into(),
                        ..LockEntry::default()
                    }],
                    ..MultiRecord::default()
                }),
            ),
            (
                "multi form with null locks",
                r#"{"maxOwners":3,"locks":null}"#,
                LockRecord::Multi(MultiRecord {
                    max_owners: 3,
                    ..MultiRecord::default()
                }),
            ),
            (
                "created with an offset",
                r#"{"nodeID":"n","created":"2026-11-27T10:00:00.123456789+01:00"}"#,
                LockRecord::Single(LockEntry {
                    node_id: "n".into(),
                    created: Some(ts(NOW)),
                    ..LockEntry::default()
                }),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(&LockRecord::parse(text).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn corrupt_annotations_are_errors_that_say_why() {
        let cases = [
            ("not json", "not JSON"),
            ("", "not JSON"),
            ("[]", "the record: expected a JSON object"),
            ("null", "the record: expected a JSON object"),
            (
                "{}",
                "the record: expected nodeID (single form) or locks (multi form)",
            ),
            (
                r#"{"nodeID":"n","locks":[]}"#,
                "the record: expected either nodeID (single form) or locks (multi form), not both",
            ),
            (
                r#"{"nodeID":5}"#,
                "nodeID: expected a string (the holder's node name)",
            ),
            (
                r#"{"nodeID":null}"#,
                "nodeID: expected a string (the holder's node name)",
            ),
            (
                r#"{"nodeID":"n","TTL":"1h"}"#,
                "TTL: expected an integer count of nanoseconds",
            ),
            (
                r#"{"nodeID":"n","TTL":1.5}"#,
                "TTL: expected an integer count of nanoseconds",
            ),
            (
                r#"{"nodeID":"n","created":"yesterday"}"#,
                "created: expected an RFC 3339 time with a year from 0000 to 9999",
            ),
            (
                r#"{"nodeID":"n","created":"-0001-01-01T00:00:00Z"}"#,
                "created: expected an RFC 3339 time with a year from 0000 to 9999",
            ),
            (
                r#"{"nodeID":"n","metadata":true}"#,
                "metadata: expected an object",
            ),
            (
                r#"{"nodeID":"n","metadata":{"unschedulable":"yes"}}"#,
                "metadata.unschedulable: expected true or false",
            ),
            (r#"{"nodeID":"n","bootID":1}"#, "bootID: expected a string"),
            (
                r#"{"maxOwners":"2","locks":[]}"#,
                "maxOwners: expected an integer",
            ),
            (r#"{"maxOwners":2,"locks":{}}"#, "locks: expected an array"),
            (
                r#"{"maxOwners":2,"locks":[null]}"#,
                "locks[0]: expected an object",
            ),
            (
                r#"{"maxOwners":2,"locks":[{"nodeID":"a"},{"TTL":0}]}"#,
                "locks[1].nodeID: expected a string (the holder's node name)",
            ),
        ];
        for (text, want) in cases {
            let message = LockRecord::parse(text).err().map(|e| e.to_string());
            assert_eq!(message.as_deref(), Some(want), "{text:?}");
        }
    }

    #[test]
    fn our_fields_follow_upstreams_and_are_omitted_when_unset() {
        let mut ours = LockEntry::new("n1", ts(NOW), GoDuration::ZERO);
        let plain = LockRecord::Single(ours.clone()).to_json().unwrap();
        assert_eq!(
            plain,
            r#"{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0}"#
        );
        ours.release_after = Some(ts("2026-11-27T09:05:00Z"));
        ours.boot_id = Some("3f1c".into());
        assert_eq!(
            LockRecord::Single(ours).to_json().unwrap(),
            r#"{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0,"releaseAfter":"2026-11-27T09:05:00Z","bootID":"3f1c"}"#
        );
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
    fn holding_finds_our_live_entry() {
        let now = ts(NOW);
        let current = multi(3, &[entry("a", NOW, 0), entry("me", "2020-05-05T14:15:00Z", 60)]);
        assert_eq!(
            holding(Some(&current), "a", now).unwrap().map(|e| e.node_id),
            Some("a".into())
        );
        assert_eq!(holding(Some(&current), "me", now).unwrap(), None, "expired");
        assert_eq!(holding(None, "me", now).unwrap(), None, "absent");
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

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        // From 0000-01-01, the first time Go's RFC 3339 reads, to the last that jiff represents
        // (9999-12-30T22:00:00Z, a day short of Go's last).
        (-62_167_219_200i64..253_402_207_200i64, 0i32..1_000_000_000)
            .prop_map(|(secs, nanos)| Timestamp::new(secs, nanos).unwrap())
    }

    fn lock_entry() -> impl Strategy<Value = LockEntry> {
        (
            "[a-z0-9.\"\\\\<>&-]{0,20}",
            any::<bool>(),
            proptest::option::of(timestamp()),
            any::<i64>(),
            proptest::option::of(timestamp()),
            proptest::option::of("[a-f0-9-]{0,36}"),
            proptest::collection::btree_map("x[a-z]{0,5}", any::<i64>().prop_map(Value::from), 0..2),
        )
            .prop_map(
                |(node_id, unschedulable, created, ttl, release_after, boot_id, extra)| LockEntry {
                    node_id,
                    metadata: NodeMeta { unschedulable },
                    created,
                    ttl: GoDuration::from_nanos(ttl),
                    release_after,
                    boot_id,
                    extra,
                },
            )
    }

    fn lock_record() -> impl Strategy<Value = LockRecord> {
        prop_oneof![
            lock_entry().prop_map(LockRecord::Single),
            (any::<i64>(), proptest::collection::vec(lock_entry(), 0..4)).prop_map(|(max_owners, locks)| {
                LockRecord::Multi(MultiRecord {
                    max_owners,
                    locks,
                    extra: BTreeMap::new(),
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(record in lock_record()) {
            let text = record.to_json().unwrap();
            prop_assert_eq!(LockRecord::parse(&text).unwrap(), record);
        }

        #[test]
        fn written_text_is_stable(record in lock_record()) {
            let text = record.to_json().unwrap();
            prop_assert_eq!(LockRecord::parse(&text).unwrap().to_json().unwrap(), text);
        }

        #[test]
        fn times_round_trip(t in timestamp()) {
            prop_assert_eq!(parse_time(&format_time(t)), Some(t));
        }

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
}
