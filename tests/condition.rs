//! The Node condition `RebootRequired`, as the API server has it: a whole reboot cycle turns it
//! from False to True (through the phases) and back to False, its lastTransitionTime changing
//! exactly with its status; it survives the heartbeats of the node's kubelet (kwok) and an agent
//! killed while it is True; `nodes/status` patches answered 503, then 500, throughout a cycle
//! hold nothing up, and the condition converges once the API server takes them; without the
//! RBAC rule the cycle completes and each agent says so once. The agents hold only the
//! manifest's RBAC (`tests/support/agents.rs`). Needs `scripts/testcluster up` and root (for
//! `unshare`).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use support::access;
use support::agents::{Fleet, back_from_one_reboot};
use support::faultproxy::{Fault, Rule};
use support::objects::{create_deployment, running_on};
use support::observer::{upstream_entry, write_lock};
use support::rig::{Rig, SETTLE};
use support::scope::Scope;
use support::simulated::{NodeOptions, SimulatedNode};
use support::wait::{eventually, eventually_or};

const CONDITION: &str = "RebootRequired";

/// What the agent logs each time it finds every lock slot taken.
const WAITING: &str = "\"msg\":\"reboot required; waiting for the lock\"";

/// One state of the condition as a watch of the Node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: String,
    reason: String,
    transition: String,
}

/// What a watch of one Node (with the admin's client) has seen: each change of the condition,
/// and the heartbeats of the kubelet's Ready condition.
#[derive(Default)]
struct History {
    condition: Vec<Seen>,
    ready_heartbeats: Vec<String>,
}

/// A watch of Node `node` recording its [`History`]; stopped when dropped.
struct ConditionWatch {
    history: Arc<Mutex<History>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConditionWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
}

fn seen(c: &NodeCondition) -> Seen {
    Seen {
        status: c.status.clone(),
        reason: c.reason.clone().unwrap_or_default(),
        transition: c
            .last_transition_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}

impl ConditionWatch {
    fn start(client: &Client, node: &str) -> ConditionWatch {
        let api: Api<Node> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
        let history = Arc::new(Mutex::new(History::default()));
        let record = history.clone();
        let task = tokio::spawn(async move {
            let mut nodes = std::pin::pin!(watcher::watcher(api, config).default_backoff().applied_objects());
            while let Some(next) = nodes.next().await {
                let Ok(node) = next else { continue };
                let mut history = record.lock().expect("the history");
                if let Some(now) = condition(&node, CONDITION).map(seen)
                    && history.condition.last() != Some(&now)
                {
                    history.condition.push(now);
                }
                if let Some(beat) = condition(&node, "Ready")
                    .and_then(|c| c.last_heartbeat_time.as_ref())
                    .map(|t| t.0.to_string())
                    && history.ready_heartbeats.last() != Some(&beat)
                {
                    history.ready_heartbeats.push(beat);
                }
            }
        });
        ConditionWatch { history, task }
    }

    fn condition(&self) -> Vec<Seen> {
        self.history.lock().expect("the history").condition.clone()
    }

    fn heartbeats(&self) -> usize {
        self.history.lock().expect("the history").ready_heartbeats.len()
    }

    fn last(&self) -> Option<Seen> {
        self.condition().last().cloned()
    }

    /// Waits until the last state seen satisfies `done`; fails with the history and the agent's
    /// log otherwise.
    async fn until(
        &self,
        sim: &SimulatedNode,
        what: &str,
        limit: Duration,
        done: impl Fn(&Seen) -> bool,
    ) -> Seen {
        eventually_or(
            limit,
            || async { self.last().filter(|s| done(s)) },
            || {
                format!(
                    "timed out after {limit:?} waiting for {what}; the condition was: {:#?}\nagent log:\n{}",
                    self.condition(),
                    sim.log_tail(40)
                )
            },
        )
        .await
    }
}

impl ConditionWatch {
    /// [`ConditionWatch::until`] True, waiting for the lock.
    async fn until_waiting(&self, sim: &SimulatedNode) -> Seen {
        self.until(
            sim,
            "True, waiting for the lock",
            SETTLE,
            is("True", "WaitingForLock"),
        )
        .await
    }
}

fn is(status: &'static str, reason: &'static str) -> impl Fn(&Seen) -> bool {
    move |s| s.status == status && s.reason == reason
}

/// The lock held for good by node `holder` (TTL 0, a node that exists: nothing reclaims it).
async fn hold_the_lock(scope: &Scope, holder: &str) {
    let entry = upstream_entry(holder, &jiff::Timestamp::now().to_string(), 0);
    write_lock(scope, Some(&entry)).await;
}

/// `history`'s lastTransitionTime changes exactly where its status does.
fn assert_transitions_follow_the_status(history: &[Seen]) {
    for pair in history.windows(2) {
        assert_eq!(
            pair[0].status != pair[1].status,
            pair[0].transition != pair[1].transition,
            "lastTransitionTime changes with the status and only then: {pair:#?} in {history:#?}"
        );
    }
}

/// The statuses of `history`, each run of one status once.
fn statuses(history: &[Seen]) -> Vec<&str> {
    let mut runs: Vec<&str> = history.iter().map(|s| s.status.as_str()).collect();
    runs.dedup();
    runs
}

/// Frees the lock, waits until the node is back from its reboot and the condition False, and
/// returns the condition's history, its lastTransitionTime checked against its status.
async fn released_until_false(scope: &Scope, sim: &SimulatedNode, watch: &ConditionWatch) -> Vec<Seen> {
    write_lock(scope, None).await;
    back_from_one_reboot(scope, sim, SETTLE).await;
    watch
        .until(
            sim,
            "False after the reboot",
            SETTLE,
            is("False", "RebootNotRequired"),
        )
        .await;
    let history = watch.condition();
    assert_transitions_follow_the_status(&history);
    history
}

#[tokio::test]
async fn a_reboot_cycle_turns_the_condition_true_then_false_through_its_phases() {
    let fleet = Fleet::new("condition-cycle", 2).await;
    let (scope, node, holder) = (&fleet.scope, &fleet.names[0], &fleet.names[1]);
    create_deployment(scope, "web", 1, Some(node)).await;
    running_on(scope, "app=web", &[node]).await;
    let watch = ConditionWatch::start(&scope.client, node);

    let options = NodeOptions {
        needs_reboot: false,
        ..NodeOptions::default()
    };
    let sim = fleet.start_with(0, &options, &[]);
    watch
        .until(
            &sim,
            "False, no reboot required",
            SETTLE,
            is("False", "RebootNotRequired"),
        )
        .await;

    // Needed, and every slot taken: True, waiting for the lock, through the kubelet's heartbeats.
    hold_the_lock(scope, holder).await;
    std::fs::write(&sim.sentinel, "").expect("creating the sentinel");
    let waiting = watch.until_waiting(&sim).await;
    let beats = watch.heartbeats();
    eventually("two more heartbeats of the node's kubelet", SETTLE, || async {
        (watch.heartbeats() >= beats + 2).then_some(())
    })
    .await;
    assert_eq!(
        watch.last(),
        Some(waiting),
        "the kubelet's heartbeats keep the condition"
    );

    let history = released_until_false(scope, &sim, &watch).await;
    assert_eq!(statuses(&history), ["False", "True", "False"], "{history:#?}");
    let reasons: Vec<&str> = history
        .iter()
        .filter(|s| s.status == "True")
        .map(|s| s.reason.as_str())
        .collect();
    assert!(
        reasons.starts_with(&["WaitingForLock", "Draining"]),
        "the phases while True: {history:#?}"
    );
    assert_eq!(sim.reboots(), 1, "rebooted once");
    let now = scope.node(node).await;
    assert_eq!(
        condition(&now, "Ready").map(|c| c.status.as_str()),
        Some("True"),
        "the kubelet's Ready condition is there and its own: {:?}",
        now.status
    );
}

#[tokio::test]
async fn an_agent_killed_while_the_condition_is_true_keeps_its_transition_time() {
    let fleet = Fleet::new("condition-kill", 2).await;
    let (scope, node, holder) = (&fleet.scope, &fleet.names[0], &fleet.names[1]);
    hold_the_lock(scope, holder).await;
    let watch = ConditionWatch::start(&scope.client, node);

    let sim = fleet.start(0, &[]);
    let waiting = watch.until_waiting(&sim).await;
    // Killed before the lock is taken; the next agent waits for it too, its first round on its
    // own (its log says so once more).
    let rounds = sim.log().matches(WAITING).count();
    sim.kill_agent().await;
    eventually("the next agent waiting for the lock", SETTLE, || async {
        (sim.agent_starts() >= 2 && sim.log().matches(WAITING).count() > rounds).then_some(())
    })
    .await;
    assert_eq!(
        watch.last(),
        Some(waiting.clone()),
        "the next agent keeps the condition as it is"
    );

    let history = released_until_false(scope, &sim, &watch).await;
    assert_eq!(statuses(&history), ["True", "False"], "{history:#?}");
    assert!(
        history
            .iter()
            .filter(|s| s.status == "True")
            .all(|s| s.transition == waiting.transition),
        "one transition to True, kept across the restart: {history:#?}"
    );
    assert_eq!(sim.reboots(), 1, "rebooted once");
}

#[tokio::test]
async fn status_patches_answered_503_then_500_hold_nothing_up_and_the_condition_converges_after() {
    let rig = Rig::new("condition-fault").await;
    // The first two 503 (unavailable), every later one 500 (an internal error), until cleared.
    let unavailable = rig
        .proxy
        .inject(Rule::new("patch", "nodes/status", Fault::Status(503)).first(2));
    let refused = rig
        .proxy
        .inject(Rule::new("patch", "nodes/status", Fault::Status(500)));
    let watch = ConditionWatch::start(&rig.scope.client, &rig.node);

    let sim = rig.start(&[]);
    rig.settled_after_one_drain(&sim).await;
    assert_eq!(unavailable.fired(), 2, "the 503s fired");
    assert!(refused.fired() >= 1, "the 500s fired");
    assert_eq!(watch.condition(), [], "no condition while every write fails");

    refused.clear();
    watch
        .until(
            &sim,
            "False once the writes go through",
            SETTLE,
            is("False", "RebootNotRequired"),
        )
        .await;
    assert_eq!(sim.reboots(), 1, "rebooted once");
}

#[tokio::test]
async fn without_the_rbac_for_node_status_a_cycle_completes_and_says_so_once_per_agent() {
    let fleet = Fleet::new("condition-refused", 1).await;
    let (scope, node) = (&fleet.scope, &fleet.names[0]);
    // The fleet's ClusterRole without the nodes/status rule, as upstream's manifests have it.
    let patch = access::request("patch", "/nodes/status", "", node);
    fleet
        .withdraw_rule(
            |r| r.resources.as_deref() == Some(&["nodes/status".to_owned()]),
            &patch,
        )
        .await;

    // The reboot delay keeps the agent before the reboot in a phase longer than the condition
    // takes to be written, so that it tries before it goes through the next ones.
    let sim = fleet.start(0, &["--reboot-delay=3s"]);
    back_from_one_reboot(scope, &sim, SETTLE).await;
    // The agent before the reboot and the one after: each logs the refusal once, however many
    // phases it went through.
    let refusals = || sim.log_lines_with("may not write the node's status");
    eventually_or(
        Duration::from_secs(30),
        || async { (refusals() >= 2).then_some(()) },
        || {
            format!(
                "the refusal logged by each agent; agent log:\n{}",
                sim.log_tail(60)
            )
        },
    )
    .await;
    assert_eq!(refusals(), 2, "agent log:\n{}", sim.log_tail(60));
    assert_eq!(
        condition(&scope.node(node).await, CONDITION),
        None,
        "no condition written"
    );
}
