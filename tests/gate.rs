//! The post-reboot health gate on the test cluster: after its reboot a node keeps its slot of the
//! lock, in phase `verifying`, until it is Ready, every DaemonSet pod on it is Ready and the settle
//! time has passed; a gate that times out halts the rollout (phase `halted`, annotation
//! `kured.dev/halted`, the lock entry's `halted`, the metric, a log line, a notification) until an
//! operator clears the mark or the gate passes. A DaemonSet pod that never becomes Ready is
//! testenv's (`kured.test/never-ready`). The independent observer checks the concurrency
//! throughout. Needs `scripts/testcluster up` and root (for `unshare`).

mod receivers;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use receivers::HttpReceiver;
use support::access;
use support::agents::Fleet;
use support::faultproxy::{Fault, FaultProxy, Injected, Rule};
use support::objects::{create_never_ready_daemonset, make_ready};
use support::observer::{Observer, Snapshot, lock_entry, read_lock};
use support::rig::Rig;
use support::scope::Scope;
use support::simulated::SimulatedNode;
use support::wait::{eventually, eventually_or};

/// Generous: a few reboot cycles of seconds each, on a shared machine.
const SETTLE: Duration = Duration::from_secs(240);

/// A gate that has not passed this long after it started halts the rollout.
const TIMEOUT: &str = "--post-reboot-timeout=5s";

/// The mark of a halted node, which the operator removes to resume the rollout.
const HALTED: &str = "kured.dev/halted";

/// The DaemonSet whose pod never becomes Ready.
const BROKEN: &str = "never-ready";

/// Longer than a few of the agents' periods (3 s): what has not happened by then is not about to.
const A_WHILE: Duration = Duration::from_secs(10);

/// The value of `kured_post_reboot_halted{node="<node>"}` in the agent's metrics; `None` when
/// the series is not there.
fn halted_metric(metrics: &str, node: &str) -> Option<f64> {
    let series = format!("kured_post_reboot_halted{{node=\"{node}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until the agent on `sim` reports `kured_post_reboot_halted` for its node as `expected`
/// says (1, or anything but 1: 0 or no series).
async fn halted_metric_is(sim: &SimulatedNode, halted: bool) {
    let last = std::cell::RefCell::new(String::new());
    eventually_or(
        Duration::from_secs(60),
        || async {
            let metrics = sim.metrics().await.unwrap_or_else(|e| e);
            let value = halted_metric(&metrics, &sim.name);
            *last.borrow_mut() = metrics;
            ((value == Some(1.0)) == halted).then_some(())
        },
        || {
            format!(
                "the agent on {} never reported kured_post_reboot_halted {}; its metrics:\n{}\nlog:\n{}",
                sim.name,
                if halted { "= 1" } else { "other than 1" },
                last.borrow(),
                sim.log_tail(20)
            )
        },
    )
    .await;
}

/// Whether `node`'s lock entry as the observer saw it last says halted.
fn entry_halted(s: &Snapshot, node: &str) -> bool {
    s.lock
        .as_deref()
        .and_then(|l| lock_entry(l, node))
        .is_some_and(|e| e["halted"].is_string())
}

/// The entry of `node` in the lock as the API server has it now.
async fn entry_of(scope: &Scope, node: &str) -> Option<serde_json::Value> {
    read_lock(scope).await.and_then(|l| lock_entry(&l, node))
}

/// The state `node`'s agent has published, read fresh.
async fn published(scope: &Scope, node: &str) -> serde_json::Value {
    let node = scope.node(node).await;
    support::observer::published_state(&node).unwrap_or_default()
}

/// Checks everything a halted node shows, from a fresh read: the mark with a reason, the reason
/// in the lock entry and in the published detail, the entry's gate start, the metric, a warning or
/// error in the agent's log.
async fn assert_halted(scope: &Scope, observer: &Observer, sim: &SimulatedNode) {
    let node = &sim.name;
    let report = || observer.report(&[sim]);
    let mark = scope.node_annotation(node, HALTED).await;
    assert!(
        mark.as_deref().is_some_and(|m| !m.trim().is_empty()),
        "{node} is marked {HALTED} with a reason: {mark:?}\n{}",
        report()
    );
    let entry = entry_of(scope, node).await;
    let reason = entry.as_ref().and_then(|e| e["halted"].as_str());
    assert!(
        reason.is_some_and(|r| !r.is_empty()) && entry.as_ref().is_some_and(|e| e["gateSince"].is_string()),
        "{node}'s lock entry carries its gate's start and halted with the reason: {entry:?}\n{}",
        report()
    );
    let state = published(scope, node).await;
    assert!(
        state["phase"] == "halted" && state["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{node} publishes phase halted with the reason: {state}\n{}",
        report()
    );
    halted_metric_is(sim, true).await;
    let logged = sim.log_entries().into_iter().any(|e| {
        let level = e["level"].as_str().unwrap_or_default().to_ascii_uppercase();
        (level == "WARN" || level == "ERROR") && e.to_string().to_ascii_lowercase().contains("halt")
    });
    assert!(
        logged,
        "the agent on {node} logs the halt as a warning or an error:\n{}",
        sim.log_tail(30)
    );
}

/// A rollout at concurrency 1 with the gate and its time-out, node 0 running a DaemonSet pod that
/// never becomes Ready. Node 0's agent starts first and takes the lock, then the others start.
struct Halt {
    fleet: Fleet,
    observer: Observer,
    sims: Vec<SimulatedNode>,
    receiver: HttpReceiver,
}

impl Halt {
    /// Returns once node 0 is halted, all its marks checked ([`Halt::halted`]).
    async fn new(test: &str, nodes: usize) -> Halt {
        let halt = Halt::started(test, nodes, None).await;
        halt.halted().await;
        halt
    }

    /// Returns once node 0's agent (talking through `proxy`, if given) holds the lock and the
    /// others' agents are started.
    async fn started(test: &str, nodes: usize, proxy: Option<&FaultProxy>) -> Halt {
        let fleet = Fleet::new(test, nodes).await;
        let scope = &fleet.scope;
        let bad = fleet.names[0].clone();
        create_never_ready_daemonset(scope, BROKEN, &bad).await;
        let observer = Observer::start(scope, 1, &[]).await;
        let receiver = HttpReceiver::start();
        let notify = format!("--notify-url=generic+{}/hook", receiver.base());
        let args = ["--concurrency=1", TIMEOUT, notify.as_str()];
        let first = match proxy {
            Some(proxy) => fleet.agents.start_through(scope, &bad, proxy, &args),
            None => fleet.start(0, &args),
        };
        let mut sims = vec![first];
        observer
            .until_seen("node 0 to take the lock", SETTLE, &[&sims[0]], |s| s.holds(&bad))
            .await;
        sims.extend((1..nodes).map(|i| fleet.start(i, &args)));
        Halt {
            fleet,
            observer,
            sims,
            receiver,
        }
    }

    /// Waits until node 0 is halted, holding the lock, checks all its marks ([`assert_halted`])
    /// and waits for a notification about the halt.
    async fn halted(&self) {
        let bad = self.bad();
        self.observer
            .until_seen(
                "node 0 to halt, holding the lock",
                SETTLE,
                &[&self.sims[0]],
                |s| s.holds(bad) && s.in_phase(bad, "halted"),
            )
            .await;
        assert_halted(&self.fleet.scope, &self.observer, &self.sims[0]).await;
        self.notified_of_the_halt().await;
    }

    /// Waits until node 0 is back from its reboot, holding the lock, in its gate; from then on
    /// the observer checks that the lock never says halted while the node is not marked (the
    /// mark goes first), until the returned flag is set (the test removes the mark).
    async fn verifying(&self) -> Arc<AtomicBool> {
        verifying(&self.observer, &self.sims[0]).await;
        let bad = self.bad().to_owned();
        let lifting = Arc::new(AtomicBool::new(false));
        let lifted = lifting.clone();
        self.observer.forbid(
            "node 0's lock entry halted while the node is not marked halted",
            move |s| {
                !lifted.load(Ordering::SeqCst) && entry_halted(s, &bad) && s.control(&bad, HALTED).is_none()
            },
        );
        lifting
    }

    /// Node 0's agent has logged `error` (the write that failed) and `rule` refused at least one
    /// request: the fault hit that write.
    async fn refused(&self, rule: &Injected, error: &str) {
        let sim = &self.sims[0];
        eventually_or(
            SETTLE,
            || async {
                let logged = sim.log_entries().iter().any(|e| {
                    e["level"]
                        .as_str()
                        .is_some_and(|l| l.eq_ignore_ascii_case("error"))
                        && e.to_string().contains(error)
                });
                (logged && rule.fired() >= 1).then_some(())
            },
            || {
                format!(
                    "the agent never logged {error:?} after a refused write ({} refused); log:\n{}",
                    rule.fired(),
                    sim.log_tail(30)
                )
            },
        )
        .await;
    }

    fn bad(&self) -> &str {
        &self.fleet.names[0]
    }

    fn all(&self) -> Vec<&SimulatedNode> {
        self.sims.iter().collect()
    }

    async fn notified_of_the_halt(&self) {
        let bad = self.bad();
        eventually_or(
            Duration::from_secs(60),
            || async {
                self.receiver
                    .requests()
                    .iter()
                    .any(|r| {
                        let text = r.text().to_ascii_lowercase();
                        text.contains("halt") && text.contains(bad)
                    })
                    .then_some(())
            },
            || {
                let texts: Vec<String> = self.receiver.requests().iter().map(|r| r.text()).collect();
                format!("no notification names the halt of {bad}; received: {texts:#?}")
            },
        )
        .await;
    }

    /// While node 0 is halted, nobody else takes a slot or reboots, and every other node keeps
    /// waiting for the lock, for [`A_WHILE`].
    async fn the_rollout_stays_stopped(&self) {
        let bad = self.bad().to_owned();
        let others = &self.sims[1..];
        let waiting = |s: &Snapshot| others.iter().all(|o| s.in_phase(&o.name, "waiting-for-lock"));
        self.observer
            .until_seen(
                "the other nodes to wait for the lock",
                SETTLE,
                &self.all(),
                waiting,
            )
            .await;
        self.observer
            .stays(
                "node 0 halted and holding the only slot, the others waiting, none rebooted",
                A_WHILE,
                &self.all(),
                |s| {
                    s.holders == [bad.as_str()]
                        && s.in_phase(&bad, "halted")
                        && waiting(s)
                        && others
                            .iter()
                            .all(|o| o.reboots() == 0 && o.reboot_requests() == 0)
                },
            )
            .await;
        for other in others {
            let state = published(&self.fleet.scope, &other.name).await;
            assert!(
                state["detail"].as_str().is_some_and(|d| d.contains(&bad)),
                "{} says it waits for the halted {bad}: {state}",
                other.name
            );
        }
    }

    /// The rollout finished: every node rebooted once, nothing cordoned, the lock gone, and no
    /// node left marked halted or reporting itself halted.
    async fn completes(&self) {
        self.observer.assert_each_rebooted_once(&self.sims, SETTLE).await;
        for sim in &self.sims {
            let mark = self.fleet.scope.node_annotation(&sim.name, HALTED).await;
            assert_eq!(mark, None, "{} is no longer marked halted", sim.name);
        }
        halted_metric_is(&self.sims[0], false).await;
    }
}

#[tokio::test]
async fn a_node_whose_daemonset_pod_never_becomes_ready_halts_the_rollout_until_the_mark_is_cleared() {
    let halt = Halt::new("gate-halt", 4).await;
    halt.the_rollout_stays_stopped().await;

    // The operator's documented one-liner: kubectl annotate node NODE kured.dev/halted-
    halt.fleet
        .scope
        .annotate_node(halt.bad(), json!({ HALTED: null }))
        .await;
    halt.completes().await;
}

#[tokio::test]
async fn a_halted_node_whose_pod_becomes_ready_resumes_the_rollout_itself() {
    let halt = Halt::new("gate-fixed", 2).await;
    halt.the_rollout_stays_stopped().await;

    make_ready(&halt.fleet.scope, BROKEN).await;
    halt.completes().await;
    let bad = halt.bad();
    let phases = halt.observer.phases(bad);
    assert!(
        phases.iter().any(|p| p == "halted"),
        "{bad} was halted before it resumed: {phases:?}"
    );
}

/// One node, the agents' lock, an observer; the node's agent not started yet.
async fn one_node(test: &str) -> (Fleet, Observer) {
    let fleet = Fleet::new(test, 1).await;
    let observer = Observer::start(&fleet.scope, 1, &[]).await;
    (fleet, observer)
}

/// Waits until `sim`'s node is back from its reboot, uncordoned and holding the lock in phase
/// `verifying`.
async fn verifying(observer: &Observer, sim: &SimulatedNode) -> Snapshot {
    let node = &sim.name;
    observer
        .until_seen(
            "the node back, uncordoned, verifying with the lock",
            SETTLE,
            &[sim],
            |s| sim.reboots() == 1 && !s.cordoned(node) && s.holds(node) && s.in_phase(node, "verifying"),
        )
        .await
}

/// One node whose agent runs with `--post-reboot-settle=<settle>`, once it is verifying
/// ([`verifying`]).
async fn verifying_with_settle(test: &str, settle: &str) -> (Fleet, Observer, SimulatedNode) {
    let (fleet, observer) = one_node(test).await;
    let sim = fleet.start(0, &[&format!("--post-reboot-settle={settle}")]);
    verifying(&observer, &sim).await;
    (fleet, observer, sim)
}

/// The gate starts of `node` in every text the lock had, in order, each once.
fn gate_starts(observer: &Observer, node: &str) -> Vec<String> {
    let mut starts: Vec<String> = Vec::new();
    for text in observer.locks() {
        if let Some(since) = lock_entry(&text, node).and_then(|e| e["gateSince"].as_str().map(str::to_owned))
            && !starts.contains(&since)
        {
            starts.push(since);
        }
    }
    starts
}

#[tokio::test]
async fn the_node_keeps_the_lock_in_verifying_until_the_settle_time_has_passed() {
    let (fleet, observer, sim) = verifying_with_settle("gate-settle", "10s").await;
    let node = &sim.name;
    let state = published(&fleet.scope, node).await;
    assert!(
        state["detail"]
            .as_str()
            .is_some_and(|d| d.contains("settl") && d.contains("10s")),
        "the detail says the settle time of 10s is what is pending: {state}"
    );
    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
    let phases = observer.phases(node);
    assert!(
        !phases.iter().any(|p| p == "halted"),
        "no time-out, no halt: {phases:?}"
    );
    assert_eq!(
        gate_starts(&observer, node).len(),
        1,
        "the lock entry carried the gate's start: {:?}",
        observer.locks()
    );
}

#[tokio::test]
async fn an_agent_killed_while_verifying_resumes_the_same_gate() {
    let (fleet, observer, sim) = verifying_with_settle("gate-kill-verify", "20s").await;
    let node = &sim.name;
    let since = entry_of(&fleet.scope, node).await.map(|e| e["gateSince"].clone());
    assert!(
        since.as_ref().is_some_and(|s| s.is_string()),
        "the lock entry carries the gate's start: {since:?}"
    );
    sim.kill_agent().await;
    let seen = observer.snapshot();
    assert!(
        seen.holds(node) && sim.reboots() == 1,
        "the agent was killed while verifying, holding the lock\n{}",
        observer.report(&[&sim])
    );
    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
    let starts = gate_starts(&observer, node);
    assert_eq!(
        starts.len(),
        1,
        "the restarted agent kept the gate's start, not restarting its clock: {starts:?}; lock texts seen: {:#?}",
        observer.locks()
    );
}

#[tokio::test]
async fn an_agent_killed_while_halted_stays_halted() {
    let (fleet, observer) = one_node("gate-kill-halted").await;
    let scope = &fleet.scope;
    create_never_ready_daemonset(scope, BROKEN, &fleet.names[0]).await;
    let sim = fleet.start(0, &[TIMEOUT]);
    let node = &sim.name;
    observer
        .until_seen("the node to halt, holding the lock", SETTLE, &[&sim], |s| {
            s.holds(node) && s.in_phase(node, "halted")
        })
        .await;
    sim.kill_agent().await;
    eventually("the agent after the kill to start", SETTLE, || async {
        (sim.agent_starts() == 3).then_some(())
    })
    .await;
    // The new agent's own metric says it found itself halted.
    halted_metric_is(&sim, true).await;
    assert_halted(scope, &observer, &sim).await;
    observer
        .stays("the node halted, holding the lock", A_WHILE, &[&sim], |s| {
            s.holds(node) && s.in_phase(node, "halted") && sim.reboots() == 1
        })
        .await;

    scope.annotate_node(node, json!({ HALTED: null })).await;
    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
}

/// One node whose agent talks through the rig's proxy, its DaemonSet pod never Ready, once it
/// is verifying ([`verifying`]).
async fn verifying_through_proxy(test: &str) -> (Rig, SimulatedNode) {
    let rig = Rig::new(test).await;
    create_never_ready_daemonset(&rig.scope, BROKEN, &rig.node).await;
    let sim = rig.start(&["--post-reboot-gate"]);
    verifying(&rig.observer, &sim).await;
    (rig, sim)
}

/// The API server unreachable for 30 s while the node is verifying, its DaemonSet pod not Ready:
/// nothing is released meanwhile or after on stale knowledge; once the API is back and the pod
/// Ready, the gate passes.
#[tokio::test]
async fn the_api_server_down_during_the_gate_releases_nothing_early() {
    let (rig, sim) = verifying_through_proxy("gate-apifault").await;

    rig.proxy.down_for(Duration::from_secs(30)).await;
    assert!(rig.proxy.dropped() >= 1, "the agent's connections were dropped");
    rig.proxy.up().await;
    let total = || rig.proxy.forwarded_all().values().sum::<u32>();
    let before = total();
    eventually("the agent to reach the API server again", SETTLE, || async {
        (total() > before).then_some(())
    })
    .await;
    let node = &rig.node;
    rig.observer
        .stays("the node verifying, holding the lock", A_WHILE, &[&sim], |s| {
            s.holds(node) && s.in_phase(node, "verifying")
        })
        .await;

    make_ready(&rig.scope, BROKEN).await;
    rig.settled_after_one_drain(&sim).await;
}

/// The halt's second write (the lock entry's `halted`) refused, the agent SIGKILLed with the node
/// marked and the entry not: the next agent writes the entry, the rollout stays halted, and
/// removing the mark completes it.
#[tokio::test]
async fn an_agent_killed_between_the_halts_two_writes_halts_the_rollout_when_back() {
    let proxy = FaultProxy::start().await;
    let halt = Halt::started("gate-kill-halting", 2, Some(&proxy)).await;
    let lifting = halt.verifying().await;
    // The DaemonSet lock is written with a replace (verb update) of DaemonSet `kured`.
    let rule = proxy.inject(Rule::new("update", "daemonsets", Fault::Status(503)).named("kured"));
    halt.refused(&rule, "marking the rollout halted in the lock")
        .await;
    let (bad, sim) = (halt.bad(), &halt.sims[0]);
    halt.observer
        .until_seen("node 0 marked, its entry not halted", SETTLE, &halt.all(), |s| {
            s.holds(bad) && s.control(bad, HALTED).is_some() && !entry_halted(s, bad)
        })
        .await;
    sim.kill_agent().await;
    rule.clear();
    assert!(
        !entry_halted(&halt.observer.snapshot(), bad),
        "killed between the two writes\n{}",
        halt.observer.report(&halt.all())
    );

    halt.halted().await;
    halt.the_rollout_stays_stopped().await;
    lifting.store(true, Ordering::SeqCst);
    halt.fleet.scope.annotate_node(bad, json!({ HALTED: null })).await;
    halt.completes().await;
}

/// The halt mark's Node patch answered 503 for a while: the node keeps its slot, nobody else
/// reboots, and once the patches pass the halt is written, the mark first.
#[tokio::test]
async fn a_refused_halt_mark_keeps_the_slot_and_is_written_first_once_it_passes() {
    let proxy = FaultProxy::start().await;
    let halt = Halt::started("gate-mark-refused", 2, Some(&proxy)).await;
    halt.verifying().await;
    let bad = halt.bad().to_owned();
    let rule = proxy.inject(Rule::new("patch", "nodes", Fault::Status(503)).named(&bad));
    halt.refused(&rule, "marking the node halted").await;
    let other = &halt.sims[1];
    halt.observer
        .stays(
            "node 0 holding the only slot, not halted, node 1 not rebooted",
            Duration::from_secs(5),
            &halt.all(),
            |s| {
                s.holders == [bad.as_str()]
                    && !entry_halted(s, &bad)
                    && other.reboots() == 0
                    && other.reboot_requests() == 0
            },
        )
        .await;

    rule.clear();
    halt.halted().await;
    let violations = halt.observer.violations();
    assert!(violations.is_empty(), "{violations:#?}");
}

/// A verifying node's rounds take its Node from the watch of it, which has caught up with the
/// agent's own reads and writes, instead of reading it once a round (as they did: as many reads
/// of the Node as rounds). Each verifying round checks the gate, which lists the node's pods once.
#[tokio::test]
async fn verifying_rounds_take_the_node_from_its_watch() {
    let (rig, sim) = verifying_through_proxy("gate-node-reads").await;
    let count = |verb: &str, resource: &str| rig.proxy.forwarded(verb, resource);
    let (reads, checks) = (count("get", "nodes"), count("list", "pods"));
    let rounds = || count("list", "pods") - checks;
    eventually("ten more verifying rounds", SETTLE, || async {
        (rounds() >= 10).then_some(())
    })
    .await;
    let (reads, rounds) = (count("get", "nodes") - reads, rounds());
    let node = &rig.node;
    let now = rig.observer.snapshot();
    assert!(
        now.holds(node) && now.in_phase(node, "verifying"),
        "still verifying, holding the lock\n{}",
        rig.observer.report(&[&sim])
    );
    assert!(
        reads * 3 <= rounds,
        "{reads} reads of the Node in {rounds} verifying rounds: {:?}",
        rig.proxy.forwarded_all()
    );
    make_ready(&rig.scope, BROKEN).await;
    rig.settled_after_one_drain(&sim).await;
}

/// Where RBAC grants `get` and `patch` on nodes but not `list` and `watch` (upstream's
/// manifests), the agent cannot watch its Node and the gate reads it instead: the node verifies
/// behind its DaemonSet pod that is not Ready, and once the pod is Ready the gate passes and the
/// lock is released. The agent says so, once per agent.
#[tokio::test]
async fn without_watching_nodes_the_gate_reads_the_node_and_passes() {
    let (fleet, observer) = one_node("gate-unwatched").await;
    let scope = &fleet.scope;
    let node = fleet.names[0].clone();
    let watch = access::request("watch", "/nodes", "", "");
    fleet
        .edit_rules(
            |rules| {
                let nodes = rules
                    .iter_mut()
                    .find(|r| r.resources.as_deref() == Some(&["nodes".to_owned()]))
                    .expect("the manifest's rule on nodes");
                nodes.verbs.retain(|v| v != "list" && v != "watch");
                assert_eq!(nodes.verbs, ["get", "patch"], "{nodes:?}");
            },
            &watch,
        )
        .await;
    create_never_ready_daemonset(scope, BROKEN, &node).await;
    let sim = fleet.start(0, &["--post-reboot-gate"]);
    verifying(&observer, &sim).await;
    observer
        .stays(
            "the node verifying with the lock while its pod is not Ready",
            Duration::from_secs(5),
            &[&sim],
            |s| s.holds(&node) && s.in_phase(&node, "verifying"),
        )
        .await;

    make_ready(scope, BROKEN).await;
    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
    let refusals = sim.log_lines_with("may not watch this node");
    assert_eq!(refusals, 2, "once per agent; agent log:\n{}", sim.log_tail(60));
}
