//! The Node condition `RebootRequired` ([`crate::condition`]) on the agent's own Node, following
//! the phase it publishes: each phase the agent enters is handed to a task of its own
//! ([`Keeper::want`], which never waits), and the task writes the condition when it differs from
//! what the Node says. The Node it compares with is the one the agent has (its watch, or the
//! last read or write), then the Node each write returns: an unchanged phase costs no request.
//! Only this agent writes the condition, so what its last write returned stays true; a condition
//! removed by hand meanwhile comes back with the next phase, or with the next agent.
//!
//! Best effort, like the published state: a failed write never holds up or fails the reboot
//! cycle. It is tried again after a pause (the condition converges once the API server answers),
//! and after a refusal by RBAC (upstream's manifests lack `nodes/status`) not for
//! [`FORBIDDEN_PAUSE`], logged once.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::NodeCondition;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::agent_state::Phase;
use crate::condition::{self, Wanted};
use crate::kube_error;
use crate::node::OwnNode;

/// How long the condition is not written after RBAC refused it: without the pause an agent would
/// spend a refused request at every phase; a rule added later is used within this.
const FORBIDDEN_PAUSE: Duration = Duration::from_secs(600);

/// How long after a phase is entered its condition is written: the agent's own write of the
/// Node for that phase (the cordon, the uncordon, the published state), made at once, goes first.
/// Each write of the status changes the Node's resourceVersion, which the cordon and the uncordon
/// carry as their precondition: written at the same moment, one of them would fail with 409 and
/// be read and made again. Phases that pass within it are written as the last of them.
const SETTLE: Duration = Duration::from_secs(1);

/// The first pause before a failed write is tried again, doubled after each failure up to
/// [`RETRY_MAX`]: an API server that is briefly unavailable is not hammered.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the agent wants the condition to say, and the condition on the Node it had then.
#[derive(Debug, Clone)]
struct Want {
    wanted: Wanted,
    on_node: Option<NodeCondition>,
}

/// The keeper of one Node's condition; its task ends when it is dropped.
pub(super) struct Keeper {
    wants: watch::Sender<Option<Want>>,
}

impl Keeper {
    /// Starts the task that writes the condition of `node`.
    pub(super) fn start(node: OwnNode, name: &str) -> Keeper {
        let (wants, receiver) = watch::channel(None);
        tokio::spawn(run(node, name.to_owned(), receiver));
        Keeper { wants }
    }

    /// The agent is in `phase` with `detail`, the sentinel having said `required`; `on_node`
    /// gives the condition on the Node the agent has, asked for only when the phase or its
    /// detail changed. Never waits.
    pub(super) fn want(
        &self,
        required: Option<bool>,
        phase: Phase,
        detail: &str,
        on_node: impl FnOnce() -> Option<NodeCondition>,
    ) {
        let wanted = condition::wanted(required, phase, detail);
        self.wants.send_if_modified(|want| {
            if want.as_ref().is_some_and(|w| w.wanted == wanted) {
                return false;
            }
            *want = Some(Want {
                wanted,
                on_node: on_node(),
            });
            true
        });
    }
}

async fn run(node: OwnNode, name: String, mut wants: watch::Receiver<Option<Want>>) {
    // The condition as the Node holds it after this task's last write; `None` after a failure,
    // when the Node the agent has says better.
    let mut written: Option<NodeCondition> = None;
    let mut retry: Option<Duration> = None;
    let mut forbidden_until: Option<Instant> = None;
    let mut forbidden_logged = false;
    let mut failing = false;
    loop {
        let woken = match retry {
            Some(pause) => tokio::select! {
                changed = wants.changed() => changed,
                () = tokio::time::sleep(pause) => Ok(()),
            },
            None => wants.changed().await,
        };
        if woken.is_err() {
            return;
        }
        tokio::time::sleep(SETTLE).await;
        let Some(want) = wants.borrow_and_update().clone() else {
            continue;
        };
        if let Some(until) = forbidden_until.filter(|t| *t > Instant::now()) {
            retry = Some(until - Instant::now());
            continue;
        }
        let current = written.clone().or(want.on_node);
        let Some(next) = condition::to_write(&want.wanted, current.as_ref(), Timestamp::now()) else {
            written = current;
            retry = None;
            continue;
        };
        match node.patch_status(&condition::patch(&next)).await {
            Ok(updated) => {
                info!(node = %name, status = %next.status, reason = ?next.reason, "node condition RebootRequired set");
                written = condition::on_node(&updated).or(Some(next));
                (retry, forbidden_until, failing) = (None, None, false);
            }
            Err(e) => {
                written = None;
                let forbidden = matches!(&e, crate::node::NodeError::Status { source, .. } if kube_error::is_forbidden(source));
                if forbidden {
                    if !forbidden_logged {
                        warn!(node = %name, error = %crate::error_chain(&e),
                            "may not write the node's status, so its RebootRequired condition is not kept (grant patch on nodes/status); trying again in 10 minutes");
                        forbidden_logged = true;
                    }
                    forbidden_until = Some(Instant::now() + FORBIDDEN_PAUSE);
                    retry = Some(FORBIDDEN_PAUSE);
                } else {
                    if failing {
                        debug!(node = %name, error = %crate::error_chain(&e), "writing the node condition RebootRequired");
                    } else {
                        warn!(node = %name, error = %crate::error_chain(&e), "writing the node condition RebootRequired; trying again");
                    }
                    failing = true;
                    retry = Some(retry.map_or(RETRY_FIRST, |r| (r * 2).min(RETRY_MAX)));
                }
            }
        }
    }
}
