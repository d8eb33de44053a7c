//! The agent's state, published on its own Node ([`STATE_ANNOTATION`]) for `kured status`:
//! written only when it changes, on its own or along with another write of the Node. Each phase
//! entered is also handed to the keeper of the Node's condition `RebootRequired`.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use tracing::warn;

use super::Agent;
use crate::agent_state::{AgentState, Phase, STATE_ANNOTATION};
use crate::decide::Action;
use crate::lock::RebootLock;
use crate::notify::Notifier;

impl<N: Notifier, L: RebootLock> Agent<N, L> {
    /// Publishes our state on our Node for `kured status`, when it changed; true when it did.
    pub(super) async fn publish(&self, reboot_required: Option<bool>, phase: Phase, detail: String) -> bool {
        match self.stage(reboot_required, phase, detail) {
            Some(next) => {
                self.write_state(next).await;
                true
            }
            None => false,
        }
    }

    /// Enters `phase` and returns the state to publish for it, `None` when it is published
    /// already. The caller writes it, on its own ([`Agent::write_state`]) or along with another
    /// write of the Node (then [`Agent::published_as`]).
    pub(super) fn stage(
        &self,
        reboot_required: Option<bool>,
        phase: Phase,
        detail: String,
    ) -> Option<AgentState> {
        // The phases published are the ones /healthz bounds and `kured_phase` shows.
        self.liveness.entering(phase);
        self.metrics.set_phase(phase);
        self.condition.want(reboot_required, phase, &detail, || {
            let node = self
                .node_watch
                .current()
                .or_else(|| self.node.known(Duration::MAX));
            node.as_ref().and_then(crate::condition::on_node)
        });
        let published = self.published.lock().ok()?;
        let last_reboot = published.as_ref().and_then(|p| p.last_reboot.clone());
        let reboot_loop = self.reboot_loop.lock().ok()?.clone();
        // A reboot asked for again (the first request failed) keeps the time of the first.
        let reboot_requested = (phase == Phase::Rebooting).then(|| {
            published
                .as_ref()
                .filter(|p| p.phase == Phase::Rebooting)
                .and_then(|p| p.reboot_requested.clone())
                .unwrap_or_else(|| to_the_second(Timestamp::now()))
        });
        let next = AgentState {
            reboot_required,
            phase,
            detail,
            last_reboot,
            reboot_loop,
            reboot_requested,
        };
        (published.as_ref() != Some(&next)).then_some(next)
    }

    /// Writes `state` to our Node on its own.
    pub(super) async fn write_state(&self, state: AgentState) {
        match self.node.set_annotation(STATE_ANNOTATION, &state.to_json()).await {
            Ok(_) => self.published_as(state),
            Err(e) => {
                warn!(node = %self.config.node_id, error = %crate::error_chain(&e), "publishing the agent state")
            }
        }
    }

    /// Records that `state` is what our Node says.
    pub(super) fn published_as(&self, state: AgentState) {
        if let Ok(mut published) = self.published.lock() {
            *published = Some(state);
        }
    }

    /// Takes over the last reboot time from what a previous agent on this node published.
    pub(super) fn adopt_published(&self, node: &Node) {
        let Ok(mut published) = self.published.lock() else {
            return;
        };
        if published.is_some() {
            return;
        }
        if let Some(previous) = AgentState::published_on(node) {
            // A need for a reboot that outlived the reboot is a new one, reported as such.
            if previous.phase != Phase::Rebooting {
                self.events.required_before(previous.reboot_required);
            }
            if let Ok(mut reboot_loop) = self.reboot_loop.lock() {
                reboot_loop.clone_from(&previous.reboot_loop);
            }
            *published = Some(previous);
        }
    }
}

/// The detail of a node waiting behind a halted rollout.
pub(super) fn halted_detail(holders: &[(String, String)]) -> String {
    let at: Vec<String> = holders
        .iter()
        .map(|(node, why)| format!("{node} ({why})"))
        .collect();
    format!("rollout halted at {}", at.join(", "))
}

pub(super) fn idle_state() -> AgentState {
    AgentState {
        reboot_required: Some(false),
        phase: Phase::Idle,
        detail: String::new(),
        last_reboot: None,
        reboot_loop: None,
        reboot_requested: None,
    }
}

/// `at` as published: RFC 3339 to the second, never ahead of the clock.
pub(super) fn to_the_second(at: Timestamp) -> String {
    at.round(
        jiff::TimestampRound::new()
            .smallest(jiff::Unit::Second)
            .mode(jiff::RoundMode::Trunc),
    )
    .unwrap_or(at)
    .to_string()
}

/// The phase a step puts the agent in, for `kured status`; `None` for steps that are only a
/// moment (their procedures publish their own phases).
pub(super) fn phase_of(step: &Action) -> Option<(Phase, String)> {
    Some(match step {
        Action::Idle { .. } => (Phase::Idle, String::new()),
        Action::SentinelFailed(e) => (Phase::SentinelError, e.clone()),
        Action::WaitForWindow { opens, .. } => (
            Phase::WaitingForWindow,
            opens.map(|t| format!("opens {t}")).unwrap_or_default(),
        ),
        Action::Blocked(reasons) => (Phase::Blocked, reasons.join("; ")),
        // Not the holders: they change at every hand-off, and waiting agents do not look at each
        // one (see `Agent::lock_may_admit`); `kured status` names them from the lock itself.
        Action::WaitForLock { .. } => (Phase::WaitingForLock, String::new()),
        Action::LockUnreadable(e) | Action::LockReadFailed(e) => (Phase::LockUnreadable, e.clone()),
        Action::ReleaseLockAt(at) => (Phase::Releasing, format!("until {at}")),
        Action::Paused { why, .. } | Action::FleetPaused(why) => (Phase::Paused, why.clone()),
        Action::BackOff(record) => (
            Phase::BackingOff,
            format!(
                "reboot loop ({} in a row): next reboot not before {}",
                record.count, record.until
            ),
        ),
        Action::RolloutHalted(holders) => (Phase::WaitingForLock, halted_detail(holders)),
        Action::CheckBlockers
        | Action::AcquireLock
        | Action::FinishReboot { .. }
        | Action::ResumeReboot { .. }
        | Action::GiveBack { .. }
        | Action::ReleaseLock
        // The gate publishes what it waits for once it has looked.
        | Action::VerifyHealth { .. }
        | Action::HaltLifted => return None,
    })
}
