//! The Node condition [`CONDITION_TYPE`] the agent keeps on its own Node, so that `kubectl
//! describe node` and any tool reading conditions sees whether the node waits for a reboot and
//! why: what it should say for the agent's phase ([`wanted`]), whether the Node says it already
//! ([`to_write`]), and the strategic-merge patch of `nodes/status` that writes it ([`patch`]).
//! Conditions merge by `type`, so the patch leaves the kubelet's conditions and any other
//! controller's alone.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::agent_state::Phase;

/// The condition's `type`.
pub const CONDITION_TYPE: &str = "RebootRequired";

/// The longest `message`, in bytes: a sentence with a detail (blockers, an error) that a
/// `kubectl describe` reader takes in; the API server would take far more.
pub const MESSAGE_LIMIT: usize = 512;

/// The condition's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// What the condition should say: everything but its times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

/// The condition's `reason` in each phase (CamelCase, one word, as Kubernetes reasons are), and
/// the sentence its `message` starts with.
pub fn reason_of(phase: Phase) -> (&'static str, &'static str) {
    match phase {
        Phase::Idle => ("RebootNotRequired", "No reboot is required"),
        Phase::SentinelError => ("SentinelError", "Whether a reboot is required cannot be checked"),
        Phase::WaitingForWindow => (
            "WaitingForWindow",
            "A reboot is required; the reboot window is closed",
        ),
        Phase::Blocked => ("Blocked", "A reboot is required; a blocker holds it back"),
        Phase::WaitingForLock => (
            "WaitingForLock",
            "A reboot is required; waiting for the reboot lock",
        ),
        Phase::LockUnreadable => (
            "LockUnreadable",
            "A reboot is required; the reboot lock cannot be read",
        ),
        Phase::Draining => ("Draining", "Rebooting: cordoned, evicting pods"),
        Phase::Rebooting => ("Rebooting", "Drained, the reboot was requested"),
        Phase::Recovering => (
            "Recovering",
            "Back from the reboot, returning the node to service",
        ),
        Phase::Releasing => (
            "Releasing",
            "Back from the reboot, holding the lock for the release delay",
        ),
        Phase::Paused => ("Paused", "Reboots are paused"),
        Phase::Verifying => (
            "Verifying",
            "Back from the reboot, waiting for the post-reboot health gate",
        ),
        Phase::Halted => (
            "Halted",
            "Back from the reboot; the health gate timed out and the rollout is halted",
        ),
        Phase::BackingOff => (
            "BackingOff",
            "A reboot is required; the reboot-loop guard holds it back",
        ),
    }
}

/// The phases entered only while a reboot is wanted and not yet done: the condition is True in
/// them whatever the sentinel says (a reboot asked for with `kured.dev/reboot-now`).
fn reboot_pending(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::WaitingForWindow | Phase::Blocked | Phase::WaitingForLock | Phase::Draining | Phase::Rebooting
    )
}

/// The condition for the agent in `phase`, with its `detail`, where the sentinel said
/// `required` (`None`: it could not be checked).
pub fn wanted(required: Option<bool>, phase: Phase, detail: &str) -> Wanted {
    let status = if reboot_pending(phase) {
        Status::True
    } else {
        match (phase, required) {
            (Phase::Idle, _) => Status::False,
            (Phase::SentinelError, _) | (_, None) => Status::Unknown,
            (_, Some(true)) => Status::True,
            (_, Some(false)) => Status::False,
        }
    };
    let (reason, sentence) = reason_of(phase);
    let message = match detail.trim() {
        "" => format!("{sentence}."),
        detail => format!("{sentence}: {detail}."),
    };
    Wanted {
        status,
        reason,
        message: bounded(message),
    }
}

/// `message` cut to [`MESSAGE_LIMIT`] bytes at a character boundary, ending in `…` when cut.
fn bounded(mut message: String) -> String {
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// The [`CONDITION_TYPE`] condition on `node`, if it has one.
pub fn on_node(node: &Node) -> Option<NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)
        .cloned()
}

/// The condition to write for `wanted` where the Node has `current`, at `now`; `None` when
/// `current` says it already (status, reason and message). `lastTransitionTime` changes only
/// with the status: it is kept from `current` otherwise. `lastHeartbeatTime` is the write's.
pub fn to_write(wanted: &Wanted, current: Option<&NodeCondition>, now: Timestamp) -> Option<NodeCondition> {
    let same = |c: &&NodeCondition| {
        c.status == wanted.status.as_str()
            && c.reason.as_deref() == Some(wanted.reason)
            && c.message.as_deref() == Some(wanted.message.as_str())
    };
    if current.filter(same).is_some() {
        return None;
    }
    let transition = current
        .filter(|c| c.status == wanted.status.as_str())
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| api_time(now));
    Some(NodeCondition {
        type_: CONDITION_TYPE.to_owned(),
        status: wanted.status.as_str().to_owned(),
        reason: Some(wanted.reason.to_owned()),
        message: Some(wanted.message.clone()),
        last_transition_time: Some(transition),
        last_heartbeat_time: Some(api_time(now)),
    })
}

/// `at` as the API's Time, which keeps whole seconds (k8s-openapi has a jiff of its own, of the
/// same range: the fallback is never taken).
fn api_time(at: Timestamp) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_second(at.as_second())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The strategic-merge patch of `nodes/status` that sets `condition` alone: the Node's
/// conditions merge by `type`.
pub fn patch(condition: &NodeCondition) -> Value {
    json!({ "status": { "conditions": [condition] } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    #[test]
    fn every_phase_has_a_one_word_camel_case_reason_of_its_own() {
        let reasons: Vec<&str> = Phase::ALL.iter().map(|p| reason_of(*p).0).collect();
        assert_eq!(
            reasons,
            [
                "RebootNotRequired",
                "SentinelError",
                "WaitingForWindow",
                "Blocked",
                "WaitingForLock",
                "LockUnreadable",
                "Draining",
                "Rebooting",
                "Recovering",
                "Releasing",
                "Paused",
                "Verifying",
                "Halted",
                "BackingOff",
            ]
        );
        for reason in &reasons {
            assert!(
                reason.starts_with(|c: char| c.is_ascii_uppercase())
                    && reason.chars().all(|c| c.is_ascii_alphanumeric()),
                "{reason}"
            );
        }
        let mut unique = reasons.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), reasons.len(), "{reasons:?}");
    }

    #[test]
    fn the_status_follows_the_sentinel_and_the_phase() {
        use Phase::*;
        use Status::{False, True, Unknown};
        #[rustfmt::skip]
        let cases = [
            (Some(false), Idle, False),
            (None, SentinelError, Unknown),
            (Some(true), WaitingForWindow, True),
            (Some(true), Blocked, True),
            (Some(true), WaitingForLock, True),
            // A reboot asked for with kured.dev/reboot-now: the sentinel says no.
            (Some(false), WaitingForLock, True),
            (Some(false), Draining, True),
            (Some(false), Rebooting, True),
            (None, WaitingForLock, True),
            (Some(true), LockUnreadable, True),
            (None, LockUnreadable, Unknown),
            (Some(true), Paused, True),
            (Some(false), Paused, False),
            (Some(true), BackingOff, True),
            // Back from the reboot: no longer required, unless the sentinel asks again.
            (Some(false), Recovering, False),
            (Some(false), Verifying, False),
            (Some(false), Halted, False),
            (Some(false), Releasing, False),
            (Some(true), Releasing, True),
            (None, Verifying, Unknown),
        ];
        for (required, phase, status) in cases {
            assert_eq!(wanted(required, phase, "").status, status, "{required:?} {phase}");
        }
    }

    #[test]
    fn the_message_is_one_sentence_with_the_detail_and_bounded() {
        assert_eq!(
            wanted(Some(false), Phase::Idle, "").message,
            "No reboot is required."
        );
        assert_eq!(
            wanted(Some(true), Phase::Blocked, "prometheus alert Foo firing").message,
            "A reboot is required; a blocker holds it back: prometheus alert Foo firing."
        );
        let long = wanted(Some(true), Phase::Blocked, &"é".repeat(1000)).message;
        assert!(long.len() <= MESSAGE_LIMIT, "{}", long.len());
        assert!(long.ends_with('…'), "{long}");
        let short = "x".repeat(MESSAGE_LIMIT);
        assert_eq!(bounded(short.clone()), short, "at the limit: kept whole");
    }

    #[test]
    fn the_transition_time_changes_with_the_status_alone() {
        let then = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-01T01:00:00Z");
        let waiting = wanted(Some(true), Phase::WaitingForLock, "");
        let first = to_write(&waiting, None, then).expect("no condition yet: written");
        assert_eq!(first.last_transition_time, Some(api_time(then)));
        assert_eq!(first.last_heartbeat_time, Some(api_time(then)));
        assert_eq!(first.status, "True");
        assert_eq!(first.reason.as_deref(), Some("WaitingForLock"));

        let draining = wanted(Some(true), Phase::Draining, "");
        let next = to_write(&draining, Some(&first), now).expect("another reason: written");
        assert_eq!(
            next.last_transition_time,
            Some(api_time(then)),
            "still True: kept"
        );
        assert_eq!(next.last_heartbeat_time, Some(api_time(now)));

        let idle = wanted(Some(false), Phase::Idle, "");
        let done = to_write(&idle, Some(&next), now).expect("False: written");
        assert_eq!(done.last_transition_time, Some(api_time(now)), "True to False");

        let mut without_time = first.clone();
        without_time.last_transition_time = None;
        let fixed = to_write(&draining, Some(&without_time), now).expect("written");
        assert_eq!(fixed.last_transition_time, Some(api_time(now)), "none to keep");
    }

    #[test]
    fn nothing_is_written_when_the_node_says_it_already() {
        let then = at("2026-01-01T00:00:00Z");
        let waiting = wanted(Some(true), Phase::WaitingForLock, "");
        let written = to_write(&waiting, None, then).expect("written");
        assert_eq!(
            to_write(&waiting, Some(&written), at("2026-01-02T00:00:00Z")),
            None
        );
        let detail = wanted(Some(true), Phase::WaitingForLock, "rollout halted at n1 (gate)");
        assert!(
            to_write(&detail, Some(&written), then).is_some(),
            "the message differs"
        );
        let mut other = written.clone();
        other.status = "Unknown".into();
        assert!(
            to_write(&waiting, Some(&other), then).is_some(),
            "the status differs"
        );
    }

    #[test]
    fn the_patch_names_the_condition_alone_and_it_is_read_back_from_a_node() {
        let condition = to_write(
            &wanted(Some(false), Phase::Idle, ""),
            None,
            at("2026-01-01T00:00:00Z"),
        )
        .expect("written");
        assert_eq!(
            patch(&condition),
            json!({ "status": { "conditions": [{
                "type": "RebootRequired",
                "status": "False",
                "reason": "RebootNotRequired",
                "message": "No reboot is required.",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            }] } })
        );
        let ready = NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..NodeCondition::default()
        };
        let mut node = Node::default();
        assert_eq!(on_node(&node), None);
        node.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![ready, condition.clone()]),
            ..Default::default()
        });
        assert_eq!(on_node(&node), Some(condition));
    }
}
