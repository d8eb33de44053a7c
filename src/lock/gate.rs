//! The post-reboot health gate as the lock records it: in the holder's own entry, when the gate
//! started (`gateSince`) and, once it timed out, why (`halted`). A live entry with `halted` stops
//! the rollout: no other node takes a slot until it is cleared or released (see
//! [`policy`](super::policy)). Pure: no I/O, no clock.

use jiff::Timestamp;

use super::policy::{Change, Decision};
use super::record::{LockEntry, LockRecord, Result, read};

/// Our holder's gate, as [`RebootLock::record_gate`](super::RebootLock::record_gate) records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// When the gate started: the node is back from its reboot.
    pub since: Timestamp,
    /// The gate timed out, for this reason (one line); `None`: not halted.
    pub halted: Option<String>,
}

/// Decides how to record `gate` in `node_id`'s entries of the lock whose annotation is `current`
/// (`None` removes both fields). Answers whether there was an entry of ours; no write when there
/// is none, or when it says so already. Every other entry, and the record's form, stay as they
/// were.
pub fn decide_gate(current: Option<&str>, node_id: &str, gate: Option<&Gate>) -> Result<Decision<bool>> {
    let Some(mut record) = read(current)? else {
        return Ok(Decision::read_only(false));
    };
    let set = |entry: &mut LockEntry| {
        entry.gate_since = gate.map(|g| g.since);
        entry.halted = gate.and_then(|g| g.halted.clone());
    };
    let before = record.clone();
    let ours = |e: &LockEntry| e.node_id == node_id;
    match &mut record {
        LockRecord::Single(entry) if ours(entry) => set(entry),
        LockRecord::Single(_) => return Ok(Decision::read_only(false)),
        LockRecord::Multi(multi) => {
            if !multi.locks.iter().any(ours) {
                return Ok(Decision::read_only(false));
            }
            multi.locks.iter_mut().filter(|e| ours(e)).for_each(set);
        }
    }
    if record == before {
        return Ok(Decision::read_only(true));
    }
    Ok(Decision {
        change: Some(Change::Set(record.to_json()?)),
        outcome: true,
    })
}

/// The live entries of `holders` that say their gate timed out, and when the last of them expires
/// by its TTL (`None` when one of them never does): until then, no other node takes a slot.
pub fn halted(holders: &[LockEntry]) -> (Vec<LockEntry>, Option<Timestamp>) {
    let halted: Vec<LockEntry> = holders.iter().filter(|e| e.halted.is_some()).cloned().collect();
    let expiries: Option<Vec<Timestamp>> = halted.iter().map(LockEntry::expires_at).collect();
    let until = expiries.and_then(|all| all.into_iter().max());
    (halted, until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::record::tests::{NOW, entry, multi, ts};

    fn gate(halted: Option<&str>) -> Gate {
        Gate {
            since: ts("2026-11-27T09:10:00Z"),
            halted: halted.map(str::to_owned),
        }
    }

    /// What recording did, in short: "not held", "unchanged", or "wrote: <annotation>".
    fn record(current: Option<&str>, gate: Option<&Gate>) -> String {
        let decision = decide_gate(current, "me", gate).unwrap();
        match (decision.outcome, decision.change) {
            (false, None) => "not held".to_owned(),
            (true, None) => "unchanged".to_owned(),
            (true, Some(Change::Set(text))) => format!("wrote: {text}"),
            (held, change) => panic!("inconsistent decision: {held} with {change:?}"),
        }
    }

    #[test]
    fn the_gate_is_recorded_in_our_entry_only() {
        let live = "2026-11-27T08:59:00Z";
        let ours = entry("me", live, 0);
        let with = |fields: &str| format!("{},{fields}}}", ours.trim_end_matches('}'));
        let since = r#""gateSince":"2026-11-27T09:10:00Z""#;
        let halted = r#""halted":"pod kube-system/x not Ready""#;
        let cases: Vec<(&str, Option<String>, Option<Gate>, String)> = vec![
            ("absent", None, Some(gate(None)), "not held".into()),
            (
                "another node's single entry",
                Some(entry("a", live, 0)),
                Some(gate(None)),
                "not held".into(),
            ),
            (
                "multi form without ours",
                Some(multi(2, &[entry("a", live, 0)])),
                Some(gate(None)),
                "not held".into(),
            ),
            (
                "the gate starts",
                Some(ours.clone()),
                Some(gate(None)),
                format!("wrote: {}", with(since)),
            ),
            (
                "started already: nothing to write",
                Some(with(since)),
                Some(gate(None)),
                "unchanged".into(),
            ),
            (
                "it halts",
                Some(with(since)),
                Some(gate(Some("pod kube-system/x not Ready"))),
                format!("wrote: {}", with(&format!("{since},{halted}"))),
            ),
            (
                "it passes: both fields go, the entry is upstream's bytes again",
                Some(with(&format!("{since},{halted}"))),
                None,
                format!("wrote: {ours}"),
            ),
            ("nothing to remove", Some(ours.clone()), None, "unchanged".into()),
            (
                "multi form: the others stay as they were",
                Some(multi(
                    3,
                    &[entry("a", live, 0), ours.clone(), entry("b", NOW, 60)],
                )),
                Some(gate(None)),
                format!(
                    "wrote: {}",
                    multi(3, &[entry("a", live, 0), with(since), entry("b", NOW, 60)])
                ),
            ),
        ];
        for (name, current, gate, want) in cases {
            assert_eq!(record(current.as_deref(), gate.as_ref()), want, "{name}");
        }
        assert!(decide_gate(Some("{"), "me", None).is_err());
    }

    #[test]
    fn halted_holders_hold_until_the_last_of_them_expires() {
        let parse = |text: &str| LockRecord::parse(text).unwrap().entries()[0].clone();
        let halt = |node: &str, ttl: i64| LockEntry {
            halted: Some("timed out".into()),
            ..parse(&entry(node, "2026-11-27T09:00:00Z", ttl))
        };
        let (found, until) = halted(&[parse(&entry("a", NOW, 0)), halt("h1", 60), halt("h2", 120)]);
        let ids: Vec<&str> = found.iter().map(|e| e.node_id.as_str()).collect();
        assert_eq!(ids, ["h1", "h2"]);
        assert_eq!(until, Some(ts("2026-11-27T09:02:00Z")));
        assert_eq!(halted(&[halt("h1", 60), halt("forever", 0)]).1, None);
        assert_eq!(halted(&[parse(&entry("a", NOW, 60))]), (vec![], None));
    }
}
