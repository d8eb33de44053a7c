//! What each agent publishes about itself, for `kured status`: one annotation on its own Node,
//! [`STATE_ANNOTATION`], holding a small JSON object. Written only when it changes.

use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

/// The annotation on each Node that carries its agent's state.
pub const STATE_ANNOTATION: &str = "kured.dev/agent-state";

/// Where the agent is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No reboot needed.
    Idle,
    /// The sentinel could not be checked.
    SentinelError,
    /// A reboot is needed; the window is closed.
    WaitingForWindow,
    /// A reboot is needed; a blocker holds it back.
    Blocked,
    /// A reboot is needed; every lock slot is taken.
    WaitingForLock,
    /// The lock annotation cannot be read.
    LockUnreadable,
    /// Holding the lock: cordoned and evicting pods.
    Draining,
    /// Drained; the reboot was requested.
    Rebooting,
    /// Back from the reboot: returning the node to service.
    Recovering,
    /// Back in service; holding the lock for the release delay.
    Releasing,
    /// A reboot may be needed, but the node or the whole fleet is paused (`kured.dev/pause`).
    Paused,
    /// Back from the reboot, holding the lock: waiting for the post-reboot health gate.
    Verifying,
    /// The health gate timed out: holding the slot, so the rollout stops, until it passes or
    /// an operator clears the node's `kured.dev/halted`.
    Halted,
    /// The reboot-loop guard: the node needed a reboot again right after one, so the next waits.
    BackingOff,
}

impl Phase {
    /// Every phase, in the order of the enum: the states of `kured_phase`.
    pub const ALL: [Phase; 14] = [
        Phase::Idle,
        Phase::SentinelError,
        Phase::WaitingForWindow,
        Phase::Blocked,
        Phase::WaitingForLock,
        Phase::LockUnreadable,
        Phase::Draining,
        Phase::Rebooting,
        Phase::Recovering,
        Phase::Releasing,
        Phase::Paused,
        Phase::Verifying,
        Phase::Halted,
        Phase::BackingOff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::SentinelError => "sentinel-error",
            Phase::WaitingForWindow => "waiting-for-window",
            Phase::Blocked => "blocked",
            Phase::WaitingForLock => "waiting-for-lock",
            Phase::LockUnreadable => "lock-unreadable",
            Phase::Draining => "draining",
            Phase::Rebooting => "rebooting",
            Phase::Recovering => "recovering",
            Phase::Releasing => "releasing",
            Phase::Paused => "paused",
            Phase::Verifying => "verifying",
            Phase::Halted => "halted",
            Phase::BackingOff => "backing-off",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The published state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    /// What the sentinel said last; `None` when it could not be checked.
    pub reboot_required: Option<bool>,
    pub phase: Phase,
    /// Why: the blockers, the lock holders, when the window opens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// When the agent last brought this node back from a reboot (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reboot: Option<String>,
    /// The reboot-loop guard's count, while it holds this node back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_loop: Option<RebootLoop>,
    /// In phase `rebooting`: when the reboot was asked for (RFC 3339), so that the agent that
    /// runs after it can tell how long the node was away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_requested: Option<String>,
}

/// Consecutive reboots that each found the node needing another one right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebootLoop {
    /// How many in a row.
    pub count: u32,
    /// The `lastReboot` the latest one was counted for (RFC 3339), so a reboot counts once.
    pub reboot: String,
    /// No reboot before this (RFC 3339).
    pub until: String,
}

impl AgentState {
    pub fn to_json(&self) -> String {
        // Strings, bools, numbers and enums always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(text: &str) -> Result<AgentState, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The state published on `node` ([`STATE_ANNOTATION`]); `None` when there is none, or it
    /// is not one this build can read.
    pub fn published_on(node: &Node) -> Option<AgentState> {
        let text = node.metadata.annotations.as_ref()?.get(STATE_ANNOTATION)?;
        AgentState::parse(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_phase_once() {
        // A phase missing from ALL would fail this match's exhaustiveness where it is added.
        let position = |phase: Phase| match phase {
            Phase::Idle => 0,
            Phase::SentinelError => 1,
            Phase::WaitingForWindow => 2,
            Phase::Blocked => 3,
            Phase::WaitingForLock => 4,
            Phase::LockUnreadable => 5,
            Phase::Draining => 6,
            Phase::Rebooting => 7,
            Phase::Recovering => 8,
            Phase::Releasing => 9,
            Phase::Paused => 10,
            Phase::Verifying => 11,
            Phase::Halted => 12,
            Phase::BackingOff => 13,
        };
        for (i, phase) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(position(phase), i, "{phase} at {i} in Phase::ALL");
        }
    }

    #[test]
    fn state_round_trips_in_a_stable_shape() {
        let s = AgentState {
            reboot_required: Some(true),
            phase: Phase::WaitingForLock,
            detail: "held by n1".into(),
            last_reboot: None,
            reboot_loop: None,
            reboot_requested: None,
        };
        assert_eq!(
            s.to_json(),
            r#"{"rebootRequired":true,"phase":"waiting-for-lock","detail":"held by n1"}"#
        );
        assert_eq!(AgentState::parse(&s.to_json()).unwrap(), s);
        let idle = AgentState::parse(r#"{"rebootRequired":null,"phase":"sentinel-error"}"#).unwrap();
        assert_eq!(idle.phase, Phase::SentinelError);
        assert!(AgentState::parse(r#"{"phase":"dancing"}"#).is_err());
    }

    #[test]
    fn the_state_is_read_from_the_nodes_annotation() {
        let node = |annotation: Option<&str>| {
            let mut node = Node::default();
            if let Some(text) = annotation {
                node.metadata.annotations = Some([(STATE_ANNOTATION.to_owned(), text.to_owned())].into());
            }
            node
        };
        let published = node(Some(
            r#"{"rebootRequired":false,"phase":"idle","lastReboot":"2026-01-01T00:00:00Z"}"#,
        ));
        assert_eq!(
            AgentState::published_on(&published),
            Some(AgentState {
                reboot_required: Some(false),
                phase: Phase::Idle,
                detail: String::new(),
                last_reboot: Some("2026-01-01T00:00:00Z".into()),
                reboot_loop: None,
                reboot_requested: None,
            })
        );
        assert_eq!(AgentState::published_on(&node(None)), None, "nothing published");
        assert_eq!(AgentState::published_on(&node(Some("{"))), None, "unreadable");
    }

    #[test]
    fn every_phase_is_named_in_the_json_as_it_prints() {
        let all = Phase::ALL;
        for phase in all {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{phase}\""));
            assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), phase);
        }
        let new: Vec<&str> = all[10..].iter().map(|p| p.as_str()).collect();
        assert_eq!(new, ["paused", "verifying", "halted", "backing-off"]);
    }

    #[test]
    fn the_reboot_request_time_is_written_only_while_rebooting() {
        let s = AgentState {
            reboot_required: Some(true),
            phase: Phase::Rebooting,
            detail: "systemctl reboot".into(),
            last_reboot: None,
            reboot_loop: None,
            reboot_requested: Some("2026-01-01T00:00:00Z".into()),
        };
        let json = s.to_json();
        assert!(
            json.ends_with(r#","rebootRequested":"2026-01-01T00:00:00Z"}"#),
            "{json}"
        );
        assert_eq!(AgentState::parse(&json).unwrap(), s);
        // Written by an agent that did not record it: read as unknown.
        let older = AgentState::parse(r#"{"rebootRequired":true,"phase":"rebooting"}"#).unwrap();
        assert_eq!(older.reboot_requested, None);
        let idle = AgentState {
            phase: Phase::Idle,
            reboot_requested: None,
            ..s
        };
        assert!(!idle.to_json().contains("rebootRequested"), "{}", idle.to_json());
    }

    #[test]
    fn the_reboot_loop_is_written_only_while_there_is_one() {
        let s = AgentState {
            reboot_required: Some(true),
            phase: Phase::BackingOff,
            detail: "reboot loop (3 in a row): next reboot not before 2026-01-01T02:00:00Z".into(),
            last_reboot: Some("2026-01-01T00:00:00Z".into()),
            reboot_loop: Some(RebootLoop {
                count: 3,
                reboot: "2026-01-01T00:00:00Z".into(),
                until: "2026-01-01T02:00:00Z".into(),
            }),
            reboot_requested: None,
        };
        let json = s.to_json();
        assert!(
            json.ends_with(
                r#","rebootLoop":{"count":3,"reboot":"2026-01-01T00:00:00Z","until":"2026-01-01T02:00:00Z"}}"#
            ),
            "{json}"
        );
        assert!(json.contains(r#""phase":"backing-off""#), "{json}");
        assert_eq!(AgentState::parse(&json).unwrap(), s);
        let without = AgentState {
            reboot_loop: None,
            ..s
        };
        assert!(!without.to_json().contains("rebootLoop"), "{}", without.to_json());
        assert_eq!(AgentState::parse(&without.to_json()).unwrap().reboot_loop, None);
        assert!(
            AgentState::parse(r#"{"rebootRequired":true,"phase":"halted","rebootLoop":{"count":1}}"#)
                .is_err(),
            "a reboot loop without its times is not one this build can read"
        );
    }
}
