//! What besides the record's own count decides whether our node may take a slot: the lock
//! object's pause annotation, a halted holder, the holders kept in the other backend's object,
//! and the per-label limits ([`labels`]). [`decide_acquire_in`] puts them in front
//! of [`decide_acquire`](super::policy::decide_acquire). Pure: no I/O, no clock.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::gate;
use super::labels;
use super::policy::{Acquire, Claim, Decision, LockSettings, LockSnapshot, entry_of, first_expiry, take};
use super::record::{LockEntry, Result, read};

/// Whether the lock object's pause annotation `value` stops every node from taking a slot:
/// `"true"` does, `"false"` and an absent one do not, and any other value does too — the safe
/// reading of a value nobody meant.
pub fn pauses(value: Option<&str>) -> bool {
    crate::controls::Switch::read(value).paused()
}

/// Why no slot is free for our node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockedBy {
    /// Every slot of the concurrency is taken (a single-form holder takes them all).
    Concurrency,
    /// The holders counted against our node's `value` of the label `key` reach its limit.
    Label { key: String, value: String, max: u32 },
    /// Per-label limits are set and our node's labels are not known yet
    /// ([`RebootLock::note_labels`](super::RebootLock::note_labels)).
    LabelsUnknown,
    /// A live holder's post-reboot health gate timed out: the rollout stops.
    Halted,
    /// The lock object's pause annotation, with this value.
    Paused { value: String },
}

impl std::fmt::Display for BlockedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockedBy::Concurrency => write!(f, "every slot is taken"),
            BlockedBy::Label { key, value, max } => {
                write!(f, "the limit of {max} for {key}={value:?} is reached")
            }
            BlockedBy::LabelsUnknown => write!(f, "the node's labels are not known yet"),
            BlockedBy::Halted => write!(f, "a holder's post-reboot health gate timed out"),
            BlockedBy::Paused { value } => write!(f, "the lock is paused (kured.dev/pause={value:?})"),
        }
    }
}

/// What, besides the record, decides whether a slot is free for our node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Around<'a> {
    /// Live holders of other nodes kept in another lock object (the other backend's, during a
    /// switch of backends): they count as holders of this one.
    pub outside: &'a [LockEntry],
    /// The lock object's pause annotation as read (`None`: absent).
    pub pause: Option<&'a str>,
    /// Our node's values of the per-label keys; `None`: not known yet.
    pub labels: Option<&'a BTreeMap<String, String>>,
}

/// [`decide_acquire`](super::policy::decide_acquire) with what [`Around`] the record decides too, in this order:
///
/// - our own live entry: [`Acquire::AlreadyHeld`] whatever else holds (a holder finishes its
///   cycle);
/// - the lock object's pause annotation ([`pauses`]): blocked, nothing is written;
/// - [`crowded`]: a halted holder, our labels unknown, `outside` holders (those of the other
///   backend's object) filling the concurrency with this record's, a per-label limit reached;
/// - then the record's own rules ([`decide_acquire`](super::policy::decide_acquire)). Our entry records our per-label values
///   when limits are set; without them it is upstream's entry.
pub fn decide_acquire_in(
    current: Option<&str>,
    around: &Around,
    settings: &LockSettings,
    claim: &Claim,
    now: Timestamp,
) -> Result<Decision<Acquire>> {
    let seen = LockSnapshot::new(current.map(str::to_owned)).with_pause(around.pause.map(str::to_owned));
    let record = read(current)?;
    if let Some(entry) = record.as_ref().and_then(|r| r.held_by(&settings.node_id, now)) {
        return Ok(Decision::read_only(Acquire::AlreadyHeld(entry.clone())));
    }
    let mut others: Vec<LockEntry> = record
        .map(|r| r.holders(now).into_iter().cloned().collect())
        .unwrap_or_default();
    others.extend(around.outside.iter().filter(|e| !e.is_expired(now)).cloned());
    let limit = settings.concurrency.max(1);
    let blocked = |reason, holders, next_expiry| Acquire::Blocked {
        reason,
        holders,
        limit,
        next_expiry,
        seen: seen.clone(),
    };
    if pauses(around.pause) {
        let value = around.pause.unwrap_or_default().to_owned();
        return Ok(Decision::read_only(blocked(
            BlockedBy::Paused { value },
            others,
            None,
        )));
    }
    if let Some((reason, holders, next_expiry)) = crowded(&others, settings, around.labels) {
        return Ok(Decision::read_only(blocked(reason, holders, next_expiry)));
    }
    let labels = (!settings.per_label.is_empty()).then(|| around.labels.cloned().unwrap_or_default());
    take(
        current,
        entry_of(settings, claim, labels, now),
        settings,
        now,
        seen,
    )
}

/// Why one more holder does not fit beside `others` (the live holders of other nodes, wherever
/// they are kept), the holders in the way and when the first of them expires; `None` when it fits
/// (the record's own form and `maxOwners` aside: see [`decide_acquire`](super::policy::decide_acquire)). A halted holder stops
/// every other node; with per-label limits, our `labels` must be known and leave room for us.
pub fn crowded(
    others: &[LockEntry],
    settings: &LockSettings,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<(BlockedBy, Vec<LockEntry>, Option<Timestamp>)> {
    let (halted, until) = gate::halted(others);
    if !halted.is_empty() {
        return Some((BlockedBy::Halted, halted, until));
    }
    if others.len() >= settings.concurrency.max(1) as usize {
        return Some((BlockedBy::Concurrency, others.to_vec(), first_expiry(others)));
    }
    if settings.per_label.is_empty() {
        return None;
    }
    let Some(ours) = labels else {
        return Some((BlockedBy::LabelsUnknown, Vec::new(), None));
    };
    let full = labels::full(&settings.per_label, ours, others)?;
    let next_expiry = first_expiry(&full.holders);
    let reason = BlockedBy::Label {
        key: full.key,
        value: full.value,
        max: full.max,
    };
    Some((reason, full.holders, next_expiry))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::duration::GoDuration;
    use crate::lock::labels::LabelLimit;
    use crate::lock::policy::{Change, Slot};
    use crate::lock::record::tests::{NOW, entry, ids, multi, ts};
    use crate::lock::record::{LockRecord, MultiRecord};

    const ZONE: &str = "topology.kubernetes.io/zone";
    const RACK: &str = "rack";
    const LIVE: &str = "2026-11-27T08:59:00Z";

    fn settings(node: &str, concurrency: u32, per_label: &[(&str, u32)]) -> LockSettings {
        LockSettings {
            node_id: node.to_owned(),
            concurrency,
            ttl: GoDuration::ZERO,
            release_delay: Duration::ZERO,
            per_label: per_label
                .iter()
                .map(|(key, max)| LabelLimit {
                    key: (*key).to_owned(),
                    max: *max,
                })
                .collect(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A live entry of `node` as our agents write it with per-label limits: its `labels`.
    fn labelled(node: &str, labels: &[(&str, &str)]) -> String {
        let labels = serde_json::to_string(&map(labels)).unwrap();
        format!(
            r#"{{"nodeID":"{node}","metadata":{{"unschedulable":false}},"created":"{LIVE}","TTL":0,"labels":{labels}}}"#
        )
    }

    fn halted(node: &str) -> String {
        format!(
            r#"{{"nodeID":"{node}","metadata":{{"unschedulable":false}},"created":"{LIVE}","TTL":0,"gateSince":"{LIVE}","halted":"pod x not Ready"}}"#
        )
    }

    fn parsed(text: &str) -> LockEntry {
        LockRecord::parse(text).unwrap().entries()[0].clone()
    }

    /// One ask of the lock, and what came of it in short: "acquired", "held",
    /// "<reason>: a,b (limit n)".
    struct Ask<'a> {
        current: Option<String>,
        outside: Vec<LockEntry>,
        pause: Option<&'a str>,
        labels: Option<BTreeMap<String, String>>,
        settings: LockSettings,
    }

    impl Ask<'_> {
        fn decide(&self) -> Decision<Acquire> {
            let around = Around {
                outside: &self.outside,
                pause: self.pause,
                labels: self.labels.as_ref(),
            };
            decide_acquire_in(
                self.current.as_deref(),
                &around,
                &self.settings,
                &Claim::default(),
                ts(NOW),
            )
            .unwrap()
        }

        fn verdict(&self) -> String {
            let decision = self.decide();
            match (decision.outcome, decision.change) {
                (Acquire::Acquired(_), Some(Change::Set(_))) => "acquired".to_owned(),
                (Acquire::AlreadyHeld(_), None) => "held".to_owned(),
                (
                    Acquire::Blocked {
                        reason,
                        holders,
                        limit,
                        ..
                    },
                    None,
                ) => format!("{reason}: {} (limit {limit})", ids(&holders).join(",")),
                (outcome, change) => panic!("inconsistent decision: {outcome:?} with {change:?}"),
            }
        }
    }

    fn ask<'a>(current: Option<String>, settings: LockSettings) -> Ask<'a> {
        Ask {
            current,
            outside: Vec::new(),
            pause: None,
            labels: None,
            settings,
        }
    }

    #[test]
    fn per_label_decisions() {
        let zone1 = settings("me", 3, &[(ZONE, 1)]);
        let zone_a = Some(map(&[(ZONE, "a")]));
        let three_zones = multi(
            3,
            &[labelled("a1", &[(ZONE, "a")]), labelled("b1", &[(ZONE, "b")])],
        );
        let with =
            |current: Option<String>, labels: &Option<BTreeMap<String, String>>, s: &LockSettings| Ask {
                labels: labels.clone(),
                ..ask(current, s.clone())
            };
        let cases: Vec<(&str, Ask, &str)> = vec![
            ("free lock, zone known", with(None, &zone_a, &zone1), "acquired"),
            (
                "labels not noted yet: no slot",
                with(None, &None, &zone1),
                "the node's labels are not known yet:  (limit 3)",
            ),
            (
                "a holder in our zone",
                with(Some(three_zones.clone()), &zone_a, &zone1),
                r#"the limit of 1 for topology.kubernetes.io/zone="a" is reached: a1 (limit 3)"#,
            ),
            (
                "holders in other zones only",
                with(Some(three_zones.clone()), &Some(map(&[(ZONE, "c")])), &zone1),
                "acquired",
            ),
            (
                "an upstream multi-form entry counts against every zone",
                with(
                    Some(multi(3, &[entry("up", LIVE, 0)])),
                    &Some(map(&[(ZONE, "c")])),
                    &zone1,
                ),
                r#"the limit of 1 for topology.kubernetes.io/zone="c" is reached: up (limit 3)"#,
            ),
            (
                "an upstream single-form entry blocks by the count first",
                with(
                    Some(entry("up", LIVE, 0)),
                    &zone_a,
                    &settings("me", 3, &[(ZONE, 2)]),
                ),
                "every slot is taken: up (limit 1)",
            ),
            (
                "a holder of ours that recorded no zone counts against every zone",
                with(
                    Some(multi(3, &[labelled("r", &[(RACK, "r1")])])),
                    &Some(map(&[(ZONE, "c"), (RACK, "r2")])),
                    &settings("me", 3, &[(ZONE, 1), (RACK, 1)]),
                ),
                r#"the limit of 1 for topology.kubernetes.io/zone="c" is reached: r (limit 3)"#,
            ),
            (
                "several keys: the rack is full",
                with(
                    Some(three_zones.replace(
                        r#"{"topology.kubernetes.io/zone":"b"}"#,
                        r#"{"rack":"r1","topology.kubernetes.io/zone":"b"}"#,
                    )),
                    &Some(map(&[(ZONE, "c"), (RACK, "r1")])),
                    &settings("me", 3, &[(ZONE, 1), (RACK, 1)]),
                ),
                // a1 recorded no rack: it counts against r1 too.
                r#"the limit of 1 for rack="r1" is reached: a1,b1 (limit 3)"#,
            ),
            (
                "the count comes before the labels",
                with(
                    Some(multi(
                        2,
                        &[labelled("a1", &[(ZONE, "a")]), labelled("b1", &[(ZONE, "b")])],
                    )),
                    &zone_a,
                    &settings("me", 2, &[(ZONE, 1)]),
                ),
                "every slot is taken: a1,b1 (limit 2)",
            ),
            (
                "an expired holder in our zone does not count",
                with(
                    Some(multi(
                        3,
                        &[labelled("a1", &[(ZONE, "a")]).replace(r#""TTL":0"#, r#""TTL":1"#)],
                    )),
                    &zone_a,
                    &zone1,
                ),
                "acquired",
            ),
            (
                "our own entry is held whatever the labels",
                with(
                    Some(multi(3, &[labelled("a1", &[(ZONE, "a")]), entry("me", LIVE, 0)])),
                    &zone_a,
                    &zone1,
                ),
                "held",
            ),
        ];
        for (name, ask, want) in cases {
            assert_eq!(ask.verdict(), want, "{name}");
        }
    }

    #[test]
    fn holders_beside_the_lock_count_against_the_count_and_the_labels() {
        let beside = |current: Option<String>, outside: &[&str], s: LockSettings, labels: &[(&str, &str)]| {
            Ask {
                outside: outside.iter().map(|e| parsed(e)).collect(),
                labels: Some(map(labels)),
                ..ask(current, s)
            }
            .verdict()
        };
        let n9 = entry("n9", LIVE, 0);
        let one = multi(2, &[entry("n2", LIVE, 0)]);
        let none: &[(&str, &str)] = &[];
        assert_eq!(beside(None, &[], settings("n1", 1, &[]), none), "acquired");
        assert_eq!(
            beside(None, &[&n9], settings("n1", 1, &[]), none),
            "every slot is taken: n9 (limit 1)"
        );
        assert_eq!(beside(None, &[&n9], settings("n1", 2, &[]), none), "acquired");
        assert_eq!(
            beside(Some(one.clone()), &[&n9], settings("n1", 2, &[]), none),
            "every slot is taken: n2,n9 (limit 2)"
        );
        assert_eq!(
            beside(Some(one), &[&n9], settings("n1", 3, &[]), none),
            "acquired"
        );
        // Our own entry is ours whatever is kept elsewhere.
        let ours = multi(2, &[entry("n1", LIVE, 0)]);
        assert_eq!(beside(Some(ours), &[&n9], settings("n1", 1, &[]), none), "held");
        // The other object's holders count per label as ours do.
        let zone_b = labelled("b9", &[(ZONE, "b")]);
        let zones = settings("n1", 3, &[(ZONE, 1)]);
        assert_eq!(
            beside(None, &[&zone_b], zones.clone(), &[(ZONE, "b")]),
            r#"the limit of 1 for topology.kubernetes.io/zone="b" is reached: b9 (limit 3)"#
        );
        assert_eq!(
            beside(None, &[&zone_b], zones.clone(), &[(ZONE, "a")]),
            "acquired"
        );
        assert_eq!(
            beside(None, &[&n9], zones, &[(ZONE, "a")]),
            r#"the limit of 1 for topology.kubernetes.io/zone="a" is reached: n9 (limit 3)"#
        );
    }

    #[test]
    fn a_halted_holder_stops_every_other_node() {
        let s = settings("me", 5, &[]);
        let cases: Vec<(&str, Ask, &str)> = vec![
            (
                "one halted among others",
                ask(Some(multi(5, &[entry("a", LIVE, 0), halted("h")])), s.clone()),
                "a holder's post-reboot health gate timed out: h (limit 5)",
            ),
            (
                "halted single form",
                ask(Some(halted("h")), s.clone()),
                "a holder's post-reboot health gate timed out: h (limit 5)",
            ),
            (
                "halted beside",
                Ask {
                    outside: vec![parsed(&halted("h"))],
                    ..ask(None, s.clone())
                },
                "a holder's post-reboot health gate timed out: h (limit 5)",
            ),
            (
                "an expired halted entry holds nothing",
                ask(
                    Some(multi(5, &[halted("h").replace(r#""TTL":0"#, r#""TTL":1"#)])),
                    s.clone(),
                ),
                "acquired",
            ),
            (
                "our own halted entry is ours",
                ask(Some(multi(5, &[halted("me"), entry("a", LIVE, 0)])), s.clone()),
                "held",
            ),
            (
                "a gate that started but did not halt blocks nothing",
                ask(
                    Some(multi(
                        5,
                        &[halted("g").replace(r#","halted":"pod x not Ready""#, "")],
                    )),
                    s.clone(),
                ),
                "acquired",
            ),
        ];
        for (name, ask, want) in cases {
            assert_eq!(ask.verdict(), want, "{name}");
        }
    }

    #[test]
    fn a_paused_lock_admits_nobody_and_is_checked_first() {
        let paused = |pause: Option<&'static str>, current: Option<String>, concurrency: u32| {
            Ask {
                pause,
                ..ask(current, settings("me", concurrency, &[]))
            }
            .verdict()
        };
        assert_eq!(
            paused(Some("true"), None, 2),
            r#"the lock is paused (kured.dev/pause="true"):  (limit 2)"#
        );
        assert_eq!(paused(Some("false"), None, 2), "acquired");
        assert_eq!(paused(None, None, 2), "acquired");
        assert_eq!(
            paused(Some("yes"), None, 2),
            r#"the lock is paused (kured.dev/pause="yes"):  (limit 2)"#,
            "any other value pauses: the safe reading"
        );
        assert_eq!(
            paused(Some(""), None, 2),
            r#"the lock is paused (kured.dev/pause=""):  (limit 2)"#
        );
        assert_eq!(
            paused(
                Some("true"),
                Some(multi(3, &[halted("h"), entry("a", LIVE, 0)])),
                3
            ),
            r#"the lock is paused (kured.dev/pause="true"): h,a (limit 3)"#,
            "before a halted holder"
        );
        assert_eq!(
            paused(Some("true"), Some(multi(3, &[entry("me", LIVE, 0)])), 3),
            "held",
            "a holder finishes its cycle"
        );
        assert_eq!(
            paused(Some("true"), Some(entry("me", "2020-05-05T14:15:00Z", 60)), 1),
            r#"the lock is paused (kured.dev/pause="true"):  (limit 1)"#,
            "an expired entry of ours is not renewed"
        );
        let seen = match (Ask {
            pause: Some("true"),
            ..ask(None, settings("me", 1, &[]))
        })
        .decide()
        .outcome
        {
            Acquire::Blocked {
                seen, next_expiry, ..
            } => {
                assert_eq!(next_expiry, None, "an expiry ends no pause");
                seen
            }
            other => panic!("blocked expected, got {other:?}"),
        };
        assert_eq!(seen, LockSnapshot::new(None).with_pause(Some("true".into())));
        assert_eq!(seen.paused(), Some("true"));
        assert_eq!(
            LockSnapshot::new(None).with_pause(Some("false".into())).paused(),
            None
        );
    }

    #[test]
    fn the_slot_says_why() {
        let slot = |ask: Ask| ask.decide().outcome.slot();
        let s = settings("me", 2, &[]);
        assert_eq!(slot(ask(None, s.clone())), Slot::Free);
        assert_eq!(
            slot(Ask {
                pause: Some("true"),
                ..ask(None, s.clone())
            }),
            Slot::Paused { value: "true".into() }
        );
        assert_eq!(
            slot(ask(Some(multi(2, &[halted("h")])), s.clone())),
            Slot::Halted {
                holders: vec![parsed(&halted("h"))]
            }
        );
        assert_eq!(
            slot(ask(
                Some(multi(2, &[entry("a", LIVE, 0), entry("b", LIVE, 3600)])),
                s
            )),
            Slot::Taken {
                holders: vec![parsed(&entry("a", LIVE, 0)), parsed(&entry("b", LIVE, 3600))],
                next_expiry: Some(ts("2026-11-27T09:59:00Z")),
            }
        );
    }

    #[test]
    fn our_entry_records_our_values_only_with_per_label_limits() {
        let written = |s: LockSettings, labels: Option<BTreeMap<String, String>>| match (Ask {
            labels,
            ..ask(None, s)
        })
        .decide()
        .change
        {
            Some(Change::Set(text)) => text,
            other => panic!("a write expected, got {other:?}"),
        };
        assert_eq!(
            written(settings("me", 1, &[]), Some(map(&[(ZONE, "a")]))),
            entry("me", NOW, 0),
            "without limits: upstream's bytes"
        );
        assert_eq!(
            written(
                settings("me", 2, &[(ZONE, 1), (RACK, 1)]),
                Some(map(&[(ZONE, "a"), (RACK, "")]))
            ),
            r#"{"maxOwners":2,"locks":[{"nodeID":"me","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0,"labels":{"rack":"","topology.kubernetes.io/zone":"a"}}]}"#,
            "maxOwners stays the concurrency"
        );
    }

    fn labelled_entry() -> impl Strategy<Value = LockEntry> {
        (
            "[a-e]",
            proptest::option::of(proptest::collection::btree_map(
                prop_oneof![Just(ZONE.to_owned()), Just(RACK.to_owned())],
                "[xyz]?",
                0..3,
            )),
            any::<bool>(),
        )
            .prop_map(|(node, labels, halted)| LockEntry {
                labels,
                halted: halted.then(|| "timed out".to_owned()),
                ..LockEntry::new(node, ts(LIVE), GoDuration::ZERO)
            })
    }

    proptest! {
        /// Whatever the holders and their labels, a slot taken leaves at most `max` holders counted
        /// against our value of each key, our entry included, and none halted.
        #[test]
        fn taking_a_slot_never_exceeds_a_label_limit(
            locks in proptest::collection::vec(labelled_entry(), 0..6),
            zone in "[xyz]?",
            rack in "[xyz]?",
            zone_max in 1u32..3,
            rack_max in 1u32..3,
        ) {
            let text = LockRecord::Multi(MultiRecord { max_owners: 9, locks, extra: BTreeMap::new() })
                .to_json()
                .unwrap();
            let s = settings("me", 9, &[(ZONE, zone_max), (RACK, rack_max)]);
            let ours = map(&[(ZONE, &zone), (RACK, &rack)]);
            let decision = Ask { labels: Some(ours.clone()), ..ask(Some(text), s) }.decide();
            if let Some(Change::Set(after)) = decision.change {
                let after = LockRecord::parse(&after).unwrap();
                let holders: Vec<LockEntry> = after.holders(ts(NOW)).into_iter().cloned().collect();
                prop_assert!(holders.iter().filter(|e| e.node_id != "me").all(|e| e.halted.is_none()));
                for (key, max) in [(ZONE, zone_max), (RACK, rack_max)] {
                    let counted = holders
                        .iter()
                        .filter(|h| crate::lock::labels::counts_against(h, key, &ours[key]))
                        .count();
                    prop_assert!(counted <= max as usize, "{} holders for {}={:?}, max {}", counted, key, ours[key], max);
                }
            }
        }
    }
}
