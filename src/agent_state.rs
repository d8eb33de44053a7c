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
}

impl Phase {
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
}

impl AgentState {
    pub fn to_json(&self) -> String {
        // A struct of strings, bools and an enum always serialises.
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
    fn state_round_trips_in_a_stable_shape() {
        let s = AgentState {
            reboot_required: Some(true),
            phase: Phase::WaitingForLock,
            detail: "held by n1".into(),
            last_reboot: None,
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
            })
        );
        assert_eq!(AgentState::published_on(&node(None)), None, "nothing published");
        assert_eq!(AgentState::published_on(&node(Some("{"))), None, "unreadable");
    }
}
