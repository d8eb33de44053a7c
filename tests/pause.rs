//! The per-node controls on the test cluster: `kured.dev/pause` on a Node keeps it from ever
//! taking the lock (an unreadable value counts as paused, with a warning) until it is removed;
//! `kured.dev/reboot-now=true` reboots a node whose sentinel says no, under the window and the
//! lock as any reboot, and is removed once the node is back. Needs `scripts/testcluster up` and
//! root (for `unshare`).

mod support;

use std::time::Duration;

use serde_json::json;

use support::agents::{Fleet, window_opening_soon};
use support::faultproxy::{Fault, FaultProxy, Rule};
use support::observer::{Observer, published_state};
use support::scope::Scope;
use support::simulated::{NodeOptions, SimulatedNode};
use support::wait::eventually_or;

/// Generous: a few reboot cycles of seconds each, on a shared machine.
const SETTLE: Duration = Duration::from_secs(240);

/// Longer than a few of the agents' periods (3 s): what has not happened by then is not about to.
const A_WHILE: Duration = Duration::from_secs(10);

const PAUSE: &str = "kured.dev/pause";
const REBOOT_NOW: &str = "kured.dev/reboot-now";

/// The detail `node`'s agent published last, read fresh.
async fn detail(scope: &Scope, node: &str) -> String {
    let state = published_state(&scope.node(node).await).unwrap_or_default();
    state["detail"].as_str().unwrap_or_default().to_owned()
}

/// Watches, for a while, that the paused `sim` stays paused and takes no slot, nothing else
/// holding one; then checks it never did, nor asked for a reboot.
async fn stays_paused(observer: &Observer, sim: &SimulatedNode) {
    let node = &sim.name;
    observer
        .stays("the paused node paused, the lock free", A_WHILE, &[sim], |s| {
            s.in_phase(node, "paused") && s.holders.is_empty()
        })
        .await;
    assert!(
        !observer.holders_seen().contains(node) && sim.reboot_requests() == 0,
        "the paused {node} never held a slot nor asked for a reboot\n{}",
        observer.report(&[sim])
    );
}

/// Waits until the agent on `node` has published `phase`, failing with the report.
async fn published(observer: &Observer, sim: &SimulatedNode, phase: &str) {
    let node = &sim.name;
    observer
        .until_seen(&format!("{node} to publish phase {phase}"), SETTLE, &[sim], |s| {
            s.in_phase(node, phase)
        })
        .await;
}

/// A fleet of `nodes`, node 0 annotated `kured.dev/pause=<value>` before any agent starts, and an
/// observer at concurrency 1.
async fn node_0_paused(test: &str, nodes: usize, value: &str) -> (Fleet, Observer) {
    let fleet = Fleet::new(test, nodes).await;
    fleet
        .scope
        .annotate_node(&fleet.names[0], json!({ PAUSE: value }))
        .await;
    let observer = Observer::start(&fleet.scope, 1, &[]).await;
    (fleet, observer)
}

#[tokio::test]
async fn a_paused_node_never_takes_the_lock_while_the_others_reboot_and_reboots_once_resumed() {
    let (fleet, observer) = node_0_paused("pause-node", 3, "true").await;
    let scope = &fleet.scope;
    let paused = fleet.names[0].clone();
    let sims = fleet.start_all(&NodeOptions::default(), &["--concurrency=1"]);
    let all: Vec<&SimulatedNode> = sims.iter().collect();

    observer
        .until_seen(
            "the other nodes rebooted, the lock free, the paused node paused",
            SETTLE,
            &all,
            |s| {
                sims[1..].iter().all(|o| o.reboots() == 1)
                    && s.holders.is_empty()
                    && s.in_phase(&paused, "paused")
            },
        )
        .await;
    let said = detail(scope, &paused).await;
    assert!(
        said.contains("node paused") && said.contains(PAUSE),
        "the detail says the node is paused, and by what: {said:?}"
    );
    // The lock is free now: an agent that ignored the pause would take it.
    stays_paused(&observer, &sims[0]).await;

    scope.annotate_node(&paused, json!({ PAUSE: null })).await;
    observer.assert_each_rebooted_once(&sims, SETTLE).await;
}

#[tokio::test]
async fn an_unreadable_pause_counts_as_paused_with_a_warning_and_false_does_not() {
    let (fleet, observer) = node_0_paused("pause-unreadable", 1, "yes").await;
    let scope = &fleet.scope;
    let node = fleet.names[0].clone();
    let sim = fleet.start(0, &[]);

    published(&observer, &sim, "paused").await;
    let warned = sim.log_entries().into_iter().any(|e| {
        let text = e.to_string();
        e["level"]
            .as_str()
            .is_some_and(|l| l.eq_ignore_ascii_case("warn"))
            && text.contains(PAUSE)
            && text.contains("yes")
            && text.contains(&node)
    });
    assert!(
        warned,
        "a warning names the node, the annotation and its value; agent log:\n{}",
        sim.log_tail(30)
    );
    stays_paused(&observer, &sim).await;

    scope.annotate_node(&node, json!({ PAUSE: "false" })).await;
    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
}

/// A node without a sentinel, its agent started with `args`, once it has published `idle`.
async fn not_needing_a_reboot(fleet: &Fleet, observer: &Observer, args: &[&str]) -> SimulatedNode {
    not_needing_a_reboot_through(fleet, observer, None, args).await
}

/// [`not_needing_a_reboot`], the agent talking through `proxy` if given.
async fn not_needing_a_reboot_through(
    fleet: &Fleet,
    observer: &Observer,
    proxy: Option<&FaultProxy>,
    args: &[&str],
) -> SimulatedNode {
    let options = NodeOptions {
        needs_reboot: false,
        ..NodeOptions::default()
    };
    let sim = match proxy {
        Some(proxy) => fleet
            .agents
            .start_through_with(&fleet.scope, &fleet.names[0], proxy, &options, args),
        None => fleet.start_with(0, &options, args),
    };
    published(observer, &sim, "idle").await;
    sim
}

/// Once the node is back, the agent has removed `kured.dev/reboot-now`.
async fn reboot_now_removed(scope: &Scope, sim: &SimulatedNode) {
    let node = &sim.name;
    let last = std::cell::RefCell::new(None);
    eventually_or(
        Duration::from_secs(60),
        || async {
            let value = scope.node_annotation(node, REBOOT_NOW).await;
            let gone = value.is_none();
            *last.borrow_mut() = value;
            gone.then_some(())
        },
        || {
            format!(
                "{REBOOT_NOW} is still on {node} after its reboot: {:?}; agent log:\n{}",
                last.borrow(),
                sim.log_tail(30)
            )
        },
    )
    .await;
    assert!(!sim.sentinel.exists(), "the node never had a sentinel");
}

#[tokio::test]
async fn reboot_now_reboots_a_node_whose_sentinel_says_no_and_is_removed_after() {
    let fleet = Fleet::new("reboot-now", 1).await;
    let scope = &fleet.scope;
    let observer = Observer::start(scope, 1, &[]).await;
    let sim = not_needing_a_reboot(&fleet, &observer, &[]).await;
    assert_eq!(sim.reboot_requests(), 0, "no reboot while the sentinel says no");

    scope
        .annotate_node(&sim.name, json!({ REBOOT_NOW: "true" }))
        .await;
    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
    reboot_now_removed(scope, &sim).await;
}

#[tokio::test]
async fn reboot_now_waits_for_the_window() {
    let fleet = Fleet::new("reboot-now-window", 1).await;
    let scope = &fleet.scope;
    let observer = Observer::start(scope, 1, &[]).await;
    let (window, opens) = window_opening_soon();
    let args: Vec<&str> = window.iter().map(String::as_str).collect();
    let sim = not_needing_a_reboot(&fleet, &observer, &args).await;

    scope
        .annotate_node(&sim.name, json!({ REBOOT_NOW: "true" }))
        .await;
    // The annotation counts as a reboot needed: the agent waits for the window.
    published(&observer, &sim, "waiting-for-window").await;
    assert_eq!(sim.reboot_requests(), 0, "no reboot before the window opens");

    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
    let requests = sim.reboot_request_times();
    assert!(
        requests.iter().all(|at| *at >= opens),
        "the reboot was asked for once the window opened at {opens}: {requests:?}"
    );
    reboot_now_removed(scope, &sim).await;
}

/// The removal of `kured.dev/reboot-now` after the reboot answered 503 for a while: the lock is
/// not released while the annotation is there (a released lock with it would reboot the node
/// again), and once the patches pass the annotation is gone, the lock free, one reboot. The node
/// is cordoned beforehand, so that the agent has no uncordon to do and the removal is its first
/// Node write that a round cannot do without.
#[tokio::test]
async fn a_refused_reboot_now_removal_keeps_the_lock_until_it_is_removed() {
    let fleet = Fleet::new("reboot-now-refused", 1).await;
    let scope = &fleet.scope;
    let node = fleet.names[0].clone();
    scope.set_unschedulable(&node, true).await;
    let observer = Observer::start(scope, 1, &[&node]).await;
    let proxy = FaultProxy::start().await;
    let sim = not_needing_a_reboot_through(&fleet, &observer, Some(&proxy), &[]).await;
    scope.annotate_node(&node, json!({ REBOOT_NOW: "true" })).await;
    eventually_or(
        SETTLE,
        || async { (sim.reboot_requests() >= 1).then_some(()) },
        || format!("no reboot asked for; log:\n{}", sim.log_tail(30)),
    )
    .await;
    let rule = proxy.inject(Rule::new("patch", "nodes", Fault::Status(503)).named(&node));
    let watched = node.clone();
    observer.forbid(
        "the lock released while kured.dev/reboot-now is still set after the reboot",
        move |s| !s.holds(&watched) && s.control(&watched, REBOOT_NOW).is_some(),
    );
    eventually_or(
        SETTLE,
        || async {
            let logged = sim
                .log_entries()
                .iter()
                .any(|e| e.to_string().contains("removing the reboot request"));
            (logged && rule.fired() >= 1).then_some(())
        },
        || {
            format!(
                "the agent never failed to remove {REBOOT_NOW} ({} refused); log:\n{}",
                rule.fired(),
                sim.log_tail(30)
            )
        },
    )
    .await;
    observer
        .stays(
            "the node back, holding the lock, reboot-now still set",
            Duration::from_secs(5),
            &[&sim],
            |s| s.holds(&node) && s.control(&node, REBOOT_NOW).is_some() && sim.reboots() == 1,
        )
        .await;

    rule.clear();
    observer.assert_settled(&[(&sim, 1)], SETTLE).await;
    reboot_now_removed(scope, &sim).await;
}
