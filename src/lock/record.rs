//! The lock annotation's wire format: reading and writing the record, byte for byte as upstream
//! does. Pure: no I/O, no clock — the caller passes `now`. The decisions taken on a record
//! (acquire, release, reclaim) are in [`policy`](super::policy); their names are re-exported here.
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
//! Then three more of issue 15, also omitted when unset:
//!
//! - `labels` (an object of strings): the holder node's values of the `--concurrency-per-label`
//!   keys when it took the slot, `""` for a label the node does not have. An entry without a value
//!   for a key counts against every value of that key (see [`labels`](super::labels)).
//! - `gateSince` (RFC 3339): when the holder's post-reboot health gate started.
//! - `halted` (a string, the reason): the holder's gate timed out. While a live entry says so, no
//!   other node takes a slot.
//!
//! An upstream agent that rewrites a multi-form record decodes it into its own struct, so it drops
//! these fields from our entries; readers must treat them as "unknown" when missing (a missing
//! `labels` counts against every value; a dropped `halted` lets the rollout go on, as upstream
//! would).
//!
//! # Reading
//!
//! Both forms are read whatever our own concurrency, as Go's decoder reads them: unknown keys are
//! kept (and written back unchanged), key names match case-insensitively, `null` and missing fields
//! take their zero value. A hand-written `{"nodeID":"manual"}` is a holder that never expires and
//! blocks every agent. Anything else — not JSON, not an object, wrong types, both or neither of
//! `nodeID` and `locks` — is a [`RecordError`]; such an annotation is never overwritten.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};

pub use super::gate::decide_gate;
pub use super::policy::{
    Change, Decision, crowded, decide_acquire, decide_acquire_in, decide_adopt, decide_reclaim,
    decide_release, reclaim_candidates,
};
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
    /// The holder's values of the per-label keys when it took the slot (ours: `labels`).
    pub labels: Option<BTreeMap<String, String>>,
    /// When the holder's post-reboot health gate started (ours: `gateSince`).
    pub gate_since: Option<Timestamp>,
    /// Why the holder's health gate timed out; a live entry with it halts the rollout (ours:
    /// `halted`).
    pub halted: Option<String>,
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
    pub(super) fn expires_at(&self) -> Option<Timestamp> {
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
    let labels = match take(&mut map, "labels") {
        None | Some(Value::Null) => None,
        Some(Value::Object(values)) => Some(
            values
                .into_iter()
                .map(|(key, value)| match value {
                    Value::String(value) => Ok((key, value)),
                    _ => Err(decode(field(&format!("labels.{key}")), "a string")),
                })
                .collect::<Result<_>>()?,
        ),
        Some(_) => return Err(decode(field("labels"), "an object of strings")),
    };
    let gate_since = decode_time(take(&mut map, "gateSince"), || field("gateSince"))?;
    let halted = match take(&mut map, "halted") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(decode(field("halted"), "a string (the reason)")),
    };
    Ok(LockEntry {
        node_id,
        metadata,
        created,
        ttl,
        release_after,
        boot_id,
        labels,
        gate_since,
        halted,
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

/// An entry in upstream's field order: nodeID, metadata, created, TTL; then ours (`releaseAfter`,
/// `bootID`, `labels`, `gateSince`, `halted`); then unknown keys.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a BTreeMap<String, String>>,
    #[serde(rename = "gateSince", skip_serializing_if = "Option::is_none")]
    gate_since: Option<GoTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    halted: Option<&'a str>,
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
            labels: entry.labels.as_ref(),
            gate_since: entry.gate_since.map(GoTime),
            halted: entry.halted.as_deref(),
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

/// The annotation's record, or `None` when the annotation is absent.
pub fn read(current: Option<&str>) -> Result<Option<LockRecord>> {
    current.map(LockRecord::parse).transpose()
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    pub(crate) const NOW: &str = "2026-11-27T09:00:00.123456789Z";

    pub(crate) fn entry(node: &str, created: &str, ttl_secs: i64) -> String {
        format!(
            r#"{{"nodeID":"{node}","metadata":{{"unschedulable":false}},"created":"{created}","TTL":{}}}"#,
            ttl_secs * 1_000_000_000
        )
    }

    pub(crate) fn multi(max: i64, entries: &[String]) -> String {
        format!(r#"{{"maxOwners":{max},"locks":[{}]}}"#, entries.join(","))
    }

    pub(crate) fn ids(holders: &[LockEntry]) -> Vec<&str> {
        holders.iter().map(|e| e.node_id.as_str()).collect()
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
                r#"{"nodeID":"n","labels":["a"]}"#,
                "labels: expected an object of strings",
            ),
            (
                r#"{"maxOwners":2,"locks":[{"nodeID":"n","labels":{"zone":1}}]}"#,
                "locks[0].labels.zone: expected a string",
            ),
            (
                r#"{"nodeID":"n","gateSince":"soon"}"#,
                "gateSince: expected an RFC 3339 time with a year from 0000 to 9999",
            ),
            (
                r#"{"nodeID":"n","halted":true}"#,
                "halted: expected a string (the reason)",
            ),
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

    #[test]
    fn the_fields_of_issue_15_follow_ours_and_are_omitted_when_unset() {
        let upstream = r#"{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0}"#;
        let plain = LockRecord::parse(upstream).unwrap();
        assert_eq!(
            plain.to_json().unwrap(),
            upstream,
            "absent: upstream's bytes exactly"
        );
        let LockRecord::Single(mut ours) = plain else {
            panic!("single form expected")
        };
        ours.boot_id = Some("3f1c".into());
        ours.labels = Some(
            [
                ("topology.kubernetes.io/zone".to_owned(), "a".to_owned()),
                ("rack".to_owned(), String::new()),
            ]
            .into(),
        );
        ours.gate_since = Some(ts("2026-11-27T09:10:00.5Z"));
        ours.halted = Some("pod kube-system/x not Ready after 10m".into());
        ours.extra.insert("future".into(), Value::from(1));
        let text = LockRecord::Single(ours.clone()).to_json().unwrap();
        assert_eq!(
            text,
            r#"{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0,"bootID":"3f1c","labels":{"rack":"","topology.kubernetes.io/zone":"a"},"gateSince":"2026-11-27T09:10:00.5Z","halted":"pod kube-system/x not Ready after 10m","future":1}"#
        );
        assert_eq!(LockRecord::parse(&text).unwrap(), LockRecord::Single(ours));
        let empty = LockEntry {
            labels: Some(BTreeMap::new()),
            ..LockEntry::new("n1", ts(NOW), GoDuration::ZERO)
        };
        let text = LockRecord::Single(empty.clone()).to_json().unwrap();
        assert!(text.ends_with(r#""TTL":0,"labels":{}}"#), "{text}");
        assert_eq!(LockRecord::parse(&text).unwrap(), LockRecord::Single(empty));
    }

    pub(crate) fn timestamp() -> impl Strategy<Value = Timestamp> {
        // From 0000-01-01, the first time Go's RFC 3339 reads, to the last that jiff represents
        // (9999-12-30T22:00:00Z, a day short of Go's last).
        (-62_167_219_200i64..253_402_207_200i64, 0i32..1_000_000_000)
            .prop_map(|(secs, nanos)| Timestamp::new(secs, nanos).unwrap())
    }

    pub(crate) fn lock_entry() -> impl Strategy<Value = LockEntry> {
        (
            "[a-z0-9.\"\\\\<>&-]{0,20}",
            any::<bool>(),
            proptest::option::of(timestamp()),
            any::<i64>(),
            proptest::option::of(timestamp()),
            proptest::option::of("[a-f0-9-]{0,36}"),
            (
                proptest::option::of(proptest::collection::btree_map(
                    "[a-z./]{1,12}",
                    "[a-z0-9\"-]{0,6}",
                    0..3,
                )),
                proptest::option::of(timestamp()),
                proptest::option::of("[ -~]{0,30}"),
            ),
            proptest::collection::btree_map("x[a-z]{0,5}", any::<i64>().prop_map(Value::from), 0..2),
        )
            .prop_map(
                |(
                    node_id,
                    unschedulable,
                    created,
                    ttl,
                    release_after,
                    boot_id,
                    (labels, gate_since, halted),
                    extra,
                )| {
                    LockEntry {
                        node_id,
                        metadata: NodeMeta { unschedulable },
                        created,
                        ttl: GoDuration::from_nanos(ttl),
                        release_after,
                        boot_id,
                        labels,
                        gate_since,
                        halted,
                        extra,
                    }
                },
            )
    }

    pub(crate) fn lock_record() -> impl Strategy<Value = LockRecord> {
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
    }
}
