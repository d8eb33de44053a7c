//! Per-label concurrency (`--concurrency-per-label=KEY=N`): at most N holders of the lock per
//! value of the node label KEY, on top of `--concurrency` — one node per zone, say. Pure: no I/O.
//!
//! Each holder records its node's values of the keys in its entry (`labels`, see
//! [`record`](super::record)); a node without the label has the value `""`, and such nodes share
//! it. A holder whose entry says nothing about a key — written by upstream kured, by one of our
//! agents without per-label limits, or rewritten by an upstream agent that dropped our fields —
//! counts against every value of that key: its zone is unknown, so it may be ours.

use std::collections::BTreeMap;

use super::record::LockEntry;

/// At most `max` holders per value of the node label `key` (`--concurrency-per-label=key=max`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelLimit {
    pub key: String,
    /// At least 1.
    pub max: u32,
}

/// A limit that the holders reach for our node's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    pub key: String,
    /// Our node's value of `key`.
    pub value: String,
    pub max: u32,
    /// The holders counted against that value.
    pub holders: Vec<LockEntry>,
}

/// Our node's values of the keys of `limits`, from its `labels`: a label it does not have is `""`.
pub fn values_of(limits: &[LabelLimit], labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    limits
        .iter()
        .map(|limit| {
            let value = labels.get(&limit.key).cloned().unwrap_or_default();
            (limit.key.clone(), value)
        })
        .collect()
}

/// Whether `holder` counts against the value `value` of `key`: its entry records that value, or
/// records nothing for `key`.
pub fn counts_against(holder: &LockEntry, key: &str, value: &str) -> bool {
    holder
        .labels
        .as_ref()
        .and_then(|labels| labels.get(key))
        .is_none_or(|theirs| theirs == value)
}

/// The first of `limits` that `holders` (the live holders of other nodes, wherever kept) already
/// reach for a node whose values are `ours`; `None` when one more holder with `ours` fits every
/// limit. A key missing from `ours` is taken as `""`.
pub fn full(limits: &[LabelLimit], ours: &BTreeMap<String, String>, holders: &[LockEntry]) -> Option<Full> {
    limits.iter().find_map(|limit| {
        let value = ours.get(&limit.key).map_or("", String::as_str);
        let counted: Vec<LockEntry> = holders
            .iter()
            .filter(|h| counts_against(h, &limit.key, value))
            .cloned()
            .collect();
        (counted.len() >= limit.max as usize).then(|| Full {
            key: limit.key.clone(),
            value: value.to_owned(),
            max: limit.max,
            holders: counted,
        })
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::duration::GoDuration;

    const ZONE: &str = "topology.kubernetes.io/zone";
    const RACK: &str = "rack";

    fn limit(key: &str, max: u32) -> LabelLimit {
        LabelLimit {
            key: key.to_owned(),
            max,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A holder named `node` whose entry records `labels` (`None`: no `labels` field at all).
    fn holder(node: &str, labels: Option<&[(&str, &str)]>) -> LockEntry {
        LockEntry {
            labels: labels.map(map),
            ..LockEntry::new(node, Timestamp::UNIX_EPOCH, GoDuration::ZERO)
        }
    }

    #[test]
    fn our_values_are_the_labels_of_the_limited_keys_and_empty_when_missing() {
        let limits = [limit(ZONE, 1), limit(RACK, 2)];
        assert_eq!(
            values_of(&limits, &map(&[(ZONE, "a"), ("kubernetes.io/os", "linux")])),
            map(&[(ZONE, "a"), (RACK, "")])
        );
        assert_eq!(values_of(&[], &map(&[(ZONE, "a")])), map(&[]));
    }

    /// Which holders block a node with `ours` under `limits`: "free", or "KEY=VALUE (max N): a,b".
    fn verdict(limits: &[LabelLimit], ours: &[(&str, &str)], holders: &[LockEntry]) -> String {
        match full(limits, &map(ours), holders) {
            None => "free".to_owned(),
            Some(f) => {
                let ids: Vec<&str> = f.holders.iter().map(|h| h.node_id.as_str()).collect();
                format!("{}={} (max {}): {}", f.key, f.value, f.max, ids.join(","))
            }
        }
    }

    #[test]
    fn per_label_limits() {
        let a1 = holder("a1", Some(&[(ZONE, "a"), (RACK, "r1")]));
        let b1 = holder("b1", Some(&[(ZONE, "b"), (RACK, "r1")]));
        let b2 = holder("b2", Some(&[(ZONE, "b"), (RACK, "r2")]));
        let upstream = holder("up", None);
        let no_zone_recorded = holder("nz", Some(&[(RACK, "r2")]));
        let unlabelled = holder("bare", Some(&[(ZONE, ""), (RACK, "")]));
        let zone1 = [limit(ZONE, 1)];
        let zone2 = [limit(ZONE, 2)];
        let both = [limit(ZONE, 2), limit(RACK, 1)];
        type Case<'a> = (
            &'a str,
            &'a [LabelLimit],
            &'a [(&'a str, &'a str)],
            Vec<LockEntry>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            ("nobody holds", &zone1, &[(ZONE, "a")], vec![], "free"),
            (
                "a holder in another zone",
                &zone1,
                &[(ZONE, "a")],
                vec![b1.clone()],
                "free",
            ),
            (
                "a holder in our zone",
                &zone1,
                &[(ZONE, "a")],
                vec![a1.clone(), b1.clone()],
                "topology.kubernetes.io/zone=a (max 1): a1",
            ),
            (
                "two in zone b, max 2",
                &zone2,
                &[(ZONE, "b")],
                vec![a1.clone(), b1.clone(), b2.clone()],
                "topology.kubernetes.io/zone=b (max 2): b1,b2",
            ),
            (
                "one in zone b, max 2",
                &zone2,
                &[(ZONE, "b")],
                vec![b1.clone()],
                "free",
            ),
            (
                "an upstream entry counts against every zone",
                &zone1,
                &[(ZONE, "c")],
                vec![upstream.clone()],
                "topology.kubernetes.io/zone=c (max 1): up",
            ),
            (
                "an entry without the key counts against every value of it",
                &zone1,
                &[(ZONE, "c")],
                vec![no_zone_recorded.clone()],
                "topology.kubernetes.io/zone=c (max 1): nz",
            ),
            (
                "unknown zones add up with known ones",
                &zone2,
                &[(ZONE, "a")],
                vec![a1.clone(), upstream.clone(), b1.clone()],
                "topology.kubernetes.io/zone=a (max 2): a1,up",
            ),
            (
                "nodes without the label share the empty value",
                &zone1,
                &[(ZONE, "")],
                vec![unlabelled.clone()],
                "topology.kubernetes.io/zone= (max 1): bare",
            ),
            (
                "an unlabelled holder does not block a labelled node",
                &zone1,
                &[(ZONE, "a")],
                vec![unlabelled.clone()],
                "free",
            ),
            (
                "a key missing from ours is the empty value",
                &zone1,
                &[],
                vec![unlabelled.clone()],
                "topology.kubernetes.io/zone= (max 1): bare",
            ),
            (
                "several keys: the zone has room, the rack does not",
                &both,
                &[(ZONE, "b"), (RACK, "r1")],
                vec![a1.clone()],
                "rack=r1 (max 1): a1",
            ),
            (
                "several keys: both have room",
                &both,
                &[(ZONE, "b"), (RACK, "r3")],
                vec![a1.clone(), b1.clone()],
                "free",
            ),
            (
                "several keys: the first full one is named",
                &both,
                &[(ZONE, "b"), (RACK, "r2")],
                vec![b1.clone(), b2.clone()],
                "topology.kubernetes.io/zone=b (max 2): b1,b2",
            ),
            (
                "several keys: an upstream entry counts against each",
                &both,
                &[(ZONE, "b"), (RACK, "r3")],
                vec![upstream.clone()],
                "rack=r3 (max 1): up",
            ),
        ];
        for (name, limits, ours, holders, want) in cases {
            assert_eq!(verdict(limits, ours, &holders), want, "{name}");
        }
    }
}
