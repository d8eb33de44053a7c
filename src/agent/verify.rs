//! The post-reboot health gate, as the agent runs it: started once the node is back in service
//! (its start recorded in our lock entry, so that an agent restarted meanwhile goes on with the
//! same time-out), checked at every change of what it looks at ([`crate::gate`]), and the lock
//! released when it passes. When it has not passed within `--post-reboot-timeout`, the rollout
//! halts at this node: the node keeps its slot, and its lock entry says so, which keeps every
//! other node from taking one.
//!
//! A halt is marked twice, in this order: the node's `kured.dev/halted` annotation (the mark an
//! operator sees and removes), then our lock entry's `halted` (what other agents see). An entry
//! marked halted on a node without the mark means the operator removed it: the lock is released
//! without the gate. Lifting a halt goes the other way round — the mark first, then the entry —
//! so an agent killed between two of these writes resumes into the same decision.

use jiff::Timestamp;
use tracing::{error, info, warn};

use super::{Agent, Wait};
use crate::agent_state::Phase;
use crate::controls;
use crate::decide::Situation;
use crate::events::Reason;
use crate::gate::{self, Verdict};
use crate::lock::{Gate, RebootLock};
use crate::notify::{Event, Notifier};

impl<N: Notifier, L: RebootLock> Agent<N, L> {
    /// The node is back in service: records the gate's start in our lock entry, then checks it.
    pub(super) async fn start_gate(&self, required: Option<bool>) -> Wait {
        let since = Timestamp::now();
        if let Err(e) = self.lock.record_gate(Some(Gate { since, halted: None })).await {
            error!(node = %self.config.node_id, error = %crate::error_chain(&e), "recording the start of the post-reboot health gate");
            return self.wait(Situation::ApiError);
        }
        info!(node = %self.config.node_id, "node back in service; holding the lock until the post-reboot health gate passes");
        self.verify_health(since, false, required).await
    }

    /// Checks the gate started at `since` (`halted`: it timed out before): releases the lock when
    /// it passes, halts the rollout when it times out, else waits for a change.
    pub(super) async fn verify_health(&self, since: Timestamp, halted: bool, required: Option<bool>) -> Wait {
        let node = &self.config.node_id;
        let Some(gate) = &self.gate else {
            // Started by an agent with the gate on; this one has it off: nothing to wait for.
            return self.gate_passed(halted).await;
        };
        let now = Timestamp::now();
        // Also after a restart: the halt outlives the agent that marked it.
        self.metrics.set_halted(halted);
        let phase = if halted { Phase::Halted } else { Phase::Verifying };
        let (what, next) = match gate.check(now, &self.node_watch).await {
            Ok(Verdict::Passed) => return self.gate_passed(halted).await,
            Ok(Verdict::Pending { what, next }) => (what, next),
            Err(e) => {
                let e = crate::error_chain(&e);
                warn!(node = %node, error = %e, "checking the post-reboot health gate");
                (format!("cannot check: {e}"), None)
            }
        };
        let deadline = gate::deadline(since, gate.settings().timeout);
        if !halted && deadline.is_some_and(|at| at <= now) {
            return self.halt(since, &what, required).await;
        }
        let detail = match deadline {
            Some(at) if !halted => format!("{what}; halts the rollout at {at}"),
            _ => what,
        };
        if self.publish(required, phase, detail.clone()).await {
            info!(node = %node, pending = %detail, "waiting for the post-reboot health gate");
        }
        let next = if halted {
            next
        } else {
            [next, deadline].into_iter().flatten().min()
        };
        self.wait(Situation::Verifying { next })
    }

    /// The gate passed: lifts a halt (the mark first, then our entry), then releases the lock.
    async fn gate_passed(&self, halted: bool) -> Wait {
        let node = &self.config.node_id;
        let marked = self
            .node
            .known(super::LOCK_READ_REUSE)
            .is_none_or(|n| controls::node_controls(n.metadata.annotations.as_ref()).halted);
        if (halted || marked)
            && let Err(e) = self.node.remove_annotation(controls::HALTED_ANNOTATION).await
        {
            error!(node = %node, error = %crate::error_chain(&e), "removing the halt mark");
            return self.wait(Situation::ApiError);
        }
        if halted {
            let since = Timestamp::now();
            if let Err(e) = self.lock.record_gate(Some(Gate { since, halted: None })).await {
                error!(node = %node, error = %crate::error_chain(&e), "lifting the halt in the lock");
                return self.wait(Situation::ApiError);
            }
            info!(node = %node, "the post-reboot health gate passed after all; the rollout resumes");
        } else {
            info!(node = %node, "post-reboot health gate passed");
        }
        self.metrics.set_halted(false);
        if let Some(gate) = &self.gate {
            gate.reset();
        }
        self.release().await
    }

    /// The gate timed out: the rollout halts at this node.
    async fn halt(&self, since: Timestamp, what: &str, required: Option<bool>) -> Wait {
        let node = &self.config.node_id;
        let reason = format!("not healthy after the reboot: {what}");
        if let Err(e) = self
            .node
            .set_annotation(controls::HALTED_ANNOTATION, &reason)
            .await
        {
            error!(node = %node, error = %crate::error_chain(&e), "marking the node halted");
            return self.wait(Situation::ApiError);
        }
        let gate = Gate {
            since,
            halted: Some(reason.clone()),
        };
        if let Err(e) = self.lock.record_gate(Some(gate)).await {
            error!(node = %node, error = %crate::error_chain(&e), "marking the rollout halted in the lock");
            return self.wait(Situation::ApiError);
        }
        self.metrics.set_halted(true);
        error!(node = %node, reason = %reason,
            "post-reboot health gate timed out; the rollout is halted here (resume: kubectl annotate node {node} {}-)",
            controls::HALTED_ANNOTATION);
        self.events.record(Reason::Halted, reason.clone());
        self.notifier
            .notify(Event::Halted, &format!("Rollout halted at node {node}: {reason}"))
            .await;
        self.publish(required, Phase::Halted, reason).await;
        self.wait(Situation::LookAgain)
    }

    /// The operator removed the halt mark: the lock goes at once, without the gate or the
    /// release delay.
    pub(super) async fn halt_lifted(&self) -> Wait {
        let node = &self.config.node_id;
        info!(node = %node, "halt mark removed by hand; releasing the lock without the post-reboot health gate");
        if let Err(e) = self.lock.release_now().await {
            error!(node = %node, error = %crate::error_chain(&e), "releasing the lock");
            return self.wait(Situation::ApiError);
        }
        self.events.step(Reason::LockReleased);
        self.metrics.set_halted(false);
        if let Some(gate) = &self.gate {
            gate.reset();
        }
        self.wait(Situation::LookAgain)
    }
}
