//! End-to-end rolling reboots: many simulated nodes, each with its own real agent, all needing a
//! reboot at once. The shared observer (`observer`) watches the Nodes, the lock and, where
//! a test has one, the budgeted workload's pods throughout, and the rollout must settle as it
//! requires: every node rebooted exactly once, nothing left cordoned by kured, the lock gone.
//! Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::json;
use support::agents::{Fleet, window_opening_soon};
use support::objects::{create_deployment, create_pdb, create_pod, delete_pod};
use support::observer::Observer;
use support::simulated::{NodeOptions, SimulatedNode};
use support::wait::eventually;

/// Starts the agents of all the fleet's nodes at `concurrency`, with `extra` arguments.
fn start_agents(fleet: &Fleet, concurrency: u32, extra: &[&str]) -> Vec<SimulatedNode> {
    let c = format!("--concurrency={concurrency}");
    let args: Vec<&str> = [&[c.as_str()], extra].concat();
    fleet.start_all(&NodeOptions::default(), &args)
}

async fn rolling_reboot(test: &str, nodes: usize, concurrency: u32) {
    let fleet = Fleet::new(test, nodes).await;
    let observer = Observer::start(&fleet.scope, concurrency as usize, &[]).await;
    let sims = start_agents(&fleet, concurrency, &[]);
    let started = std::time::Instant::now();
    observer
        .assert_each_rebooted_once(&sims, Duration::from_secs(240))
        .await;
    eprintln!(
        "{nodes} nodes at concurrency {concurrency}: settled after {:?}",
        started.elapsed()
    );
    if concurrency > 1 {
        assert!(
            observer.max_cordoned_by_kured() > 1,
            "concurrency {concurrency} was used: {}",
            observer.max_cordoned_by_kured()
        );
    }
}

#[tokio::test]
async fn eight_nodes_one_at_a_time() {
    rolling_reboot("rollout-c1", 8, 1).await;
}

#[tokio::test]
async fn eight_nodes_three_at_a_time() {
    rolling_reboot("rollout-c3", 8, 3).await;
}

#[tokio::test]
async fn pre_cordoned_and_blocked_nodes_and_a_budgeted_workload() {
    let fleet = Fleet::new("rollout-mixed", 5).await;
    let (scope, names) = (&fleet.scope, &fleet.names);

    // names[0] is cordoned by an operator before the rollout.
    scope.set_unschedulable(&names[0], true).await;

    // A workload of 6 replicas over the scope's nodes with a budget of 5 available.
    create_deployment(scope, "web", 6, None).await;
    create_pdb(scope, "web", 5, 6).await;

    // names[1] runs a pod that blocks its reboot.
    create_pod(
        scope,
        "long-job",
        &names[1],
        json!({ "runtime": "long" }),
        json!({}),
    )
    .await;

    let mut observer = Observer::start(scope, 1, &[&names[0]]).await;
    observer.watch_budget(scope, "web", 5).await;
    let sims = start_agents(&fleet, 1, &["--blocking-pod-selector=runtime=long"]);

    // Everyone but the blocked node finishes; the blocked one waits.
    let others: Vec<&SimulatedNode> = sims
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, s)| s)
        .collect();
    eventually(
        "the unblocked nodes to reboot",
        Duration::from_secs(240),
        || async { others.iter().all(|s| s.reboots() == 1).then_some(()) },
    )
    .await;
    assert_eq!(sims[1].reboots(), 0, "the blocked node waits");
    assert!(sims[1].log().contains("long-job"), "the block names the pod");

    delete_pod(scope, "long-job").await;
    observer
        .assert_each_rebooted_once(&sims, Duration::from_secs(240))
        .await;
    let min_ready = observer.lowest_ready("web");
    assert!(
        min_ready.is_some_and(|m| m >= 5),
        "ready pods never below 5: {min_ready:?}"
    );
    let ready = scope
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items
        .len();
    assert!(ready >= 6, "the workload is whole again: {ready} pods");
}

#[tokio::test]
async fn a_closed_window_holds_the_rollout_until_it_opens() {
    let fleet = Fleet::new("rollout-window", 3).await;
    let observer = Observer::start(&fleet.scope, 1, &[]).await;
    let (window, _) = window_opening_soon();
    let args: Vec<&str> = window.iter().map(String::as_str).collect();
    let sims = start_agents(&fleet, 1, &args);

    tokio::time::sleep(Duration::from_secs(8)).await;
    for sim in &sims {
        assert_eq!(sim.reboots(), 0, "nothing happens before the window opens");
        assert!(
            sim.log().contains("waiting for the reboot window"),
            "{}",
            sim.log()
        );
    }
    observer
        .assert_each_rebooted_once(&sims, Duration::from_secs(180))
        .await;
}
