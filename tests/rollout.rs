//! End-to-end rolling reboots: many simulated nodes, each with its own real agent, all needing a
//! reboot at once. An observer watches the Nodes (and the workload's pods) throughout and
//! records every violation of the invariants; the test fails on any.
//! Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{Scope, SimulatedNode, eventually};

const LOCK: &str = "weave.works/kured-node-lock";

/// What the observer saw.
#[derive(Debug, Default)]
struct Record {
    /// node → (unschedulable, boot ID) as last seen.
    nodes: BTreeMap<String, (bool, String)>,
    /// Nodes cordoned before the rollout: not counted as cordoned by kured.
    pre_cordoned: Vec<String>,
    max_cordoned_by_kured: usize,
    /// node → every distinct boot ID seen, in order.
    boots: BTreeMap<String, Vec<String>>,
    min_ready_pods: Option<usize>,
    violations: Vec<String>,
}

/// Watches the scope's Nodes and checks, at every change, that at most `limit` nodes are
/// cordoned by kured.
fn observe_nodes(scope: &Scope, limit: usize, record: Arc<Mutex<Record>>) -> tokio::task::JoinHandle<()> {
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let cfg = watcher::Config::default().labels(&format!("{}={}", support::SCOPE_LABEL, scope.id));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(nodes, cfg).default_backoff().applied_objects());
        while let Some(Ok(node)) = stream.next().await {
            let mut r = record.lock().expect("the record");
            let name = node.name_any();
            let (cordoned, boot) = (support::unschedulable(&node), support::boot_id(&node));
            let boots = r.boots.entry(name.clone()).or_default();
            if !boot.is_empty() && boots.last() != Some(&boot) {
                boots.push(boot.clone());
            }
            r.nodes.insert(name, (cordoned, boot));
            let by_kured = r
                .nodes
                .iter()
                .filter(|(n, (c, _))| *c && !r.pre_cordoned.contains(n))
                .count();
            r.max_cordoned_by_kured = r.max_cordoned_by_kured.max(by_kured);
            if by_kured > limit {
                let cordoned: Vec<&String> =
                    r.nodes.iter().filter(|(_, (c, _))| *c).map(|(n, _)| n).collect();
                let v = format!("{by_kured} nodes cordoned by kured at once (limit {limit}): {cordoned:?}");
                r.violations.push(v);
            }
        }
    })
}

/// Watches the ready pods of app `app` and records the lowest count seen once all were up.
fn observe_pods(
    scope: &Scope,
    app: &str,
    min: usize,
    record: Arc<Mutex<Record>>,
) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = scope.api();
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let app = app.to_owned();
    tokio::spawn(async move {
        let mut store: BTreeMap<String, bool> = BTreeMap::new();
        let mut stream = std::pin::pin!(watcher(pods, cfg).default_backoff());
        while let Some(Ok(event)) = stream.next().await {
            match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let ready = p.metadata.deletion_timestamp.is_none()
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                    store.insert(p.name_any(), ready);
                }
                watcher::Event::Delete(p) => {
                    store.remove(&p.name_any());
                }
                watcher::Event::Init | watcher::Event::InitDone => continue,
            }
            let ready = store.values().filter(|r| **r).count();
            let mut r = record.lock().expect("the record");
            if r.min_ready_pods.is_some() || ready >= min {
                r.min_ready_pods = Some(r.min_ready_pods.map_or(ready, |m| m.min(ready)));
                if ready < min {
                    r.violations
                        .push(format!("{ready} ready pods of {app}, below the budget's {min}"));
                }
            }
        }
    })
}

struct Rollout {
    agents: support::Agents,
    scope: Scope,
    names: Vec<String>,
    record: Arc<Mutex<Record>>,
}

impl Rollout {
    async fn new(test: &str, nodes: usize) -> Rollout {
        let scope = Scope::new(test).await;
        let names = scope.create_nodes(nodes).await;
        let agents = support::Agents::new(&scope).await;
        Rollout {
            agents,
            scope,
            names,
            record: Arc::default(),
        }
    }

    fn start_agents(&self, concurrency: u32, extra: &[&str]) -> Vec<SimulatedNode> {
        let c = format!("--concurrency={concurrency}");
        let args: Vec<&str> = [&[c.as_str()], extra].concat();
        self.names
            .iter()
            .map(|n| self.agents.start(&self.scope, n, &args))
            .collect()
    }

    /// Waits until every agent in `sims` rebooted its node once and the rollout settled; on
    /// time-out, fails with the tail of the log of each node that did not finish.
    async fn wait_until_done(&self, sims: &[&SimulatedNode], limit: Duration) {
        let ds: Api<DaemonSet> = self.scope.api();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let all = sims.iter().all(|s| s.reboots() == 1 && !s.sentinel.exists());
            let free = ds
                .get("kured")
                .await
                .is_ok_and(|ds| !ds.annotations().contains_key(LOCK));
            if all && free {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let mut report = String::new();
                for (name, sim) in self.names.iter().zip(sims) {
                    if sim.reboots() != 1 {
                        report.push_str(&format!(
                            "\n--- {name}: {} reboots; last log lines:\n{}",
                            sim.reboots(),
                            sim.log_tail(15)
                        ));
                    }
                }
                panic!(
                    "timed out after {limit:?} waiting for every node to reboot once (lock free: {free}){report}"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The invariants after a rollout: each node rebooted exactly once, all uncordoned except
    /// the pre-cordoned ones, never more than the limit cordoned at once.
    async fn check(&self, sims: &[SimulatedNode], limit: usize) {
        let nodes: Api<Node> = Api::all(self.scope.client.clone());
        // Give the agents a few periods: a second reboot would show up now.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (violations, max_cordoned, pre_cordoned, boots_seen) = {
            let r = self.record.lock().expect("the record");
            (
                r.violations.clone(),
                r.max_cordoned_by_kured,
                r.pre_cordoned.clone(),
                r.boots.clone(),
            )
        };
        assert!(violations.is_empty(), "violations: {violations:#?}");
        assert!(max_cordoned <= limit);
        for (name, sim) in self.names.iter().zip(sims) {
            assert_eq!(sim.reboots(), 1, "{name} rebooted once; log:\n{}", sim.log());
            let node = nodes.get(name).await.expect("the node");
            assert_eq!(
                support::unschedulable(&node),
                pre_cordoned.contains(name),
                "{name} cordon state at the end"
            );
            let boots = boots_seen.get(name).cloned().unwrap_or_default();
            assert_eq!(boots.len(), 2, "{name}: one boot ID before, one after: {boots:?}");
            assert_eq!(support::boot_id(&node), boots[1]);
        }
        eprintln!("max cordoned by kured at once: {max_cordoned} (limit {limit})");
    }
}

async fn rolling_reboot(test: &str, nodes: usize, concurrency: u32) {
    let rollout = Rollout::new(test, nodes).await;
    let observer = observe_nodes(&rollout.scope, concurrency as usize, rollout.record.clone());
    let sims = rollout.start_agents(concurrency, &[]);
    let started = std::time::Instant::now();
    rollout
        .wait_until_done(&sims.iter().collect::<Vec<_>>(), Duration::from_secs(240))
        .await;
    eprintln!(
        "{nodes} nodes at concurrency {concurrency}: {:?}",
        started.elapsed()
    );
    rollout.check(&sims, concurrency as usize).await;
    observer.abort();
    let r = rollout.record.lock().expect("the record");
    if concurrency > 1 {
        assert!(
            r.max_cordoned_by_kured > 1,
            "concurrency {concurrency} was used: {}",
            r.max_cordoned_by_kured
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
    let rollout = Rollout::new("rollout-mixed", 5).await;
    let (scope, names) = (&rollout.scope, &rollout.names);

    // names[0] is cordoned by an operator before the rollout.
    support::set_unschedulable(scope, &names[0], true).await;
    rollout
        .record
        .lock()
        .expect("the record")
        .pre_cordoned
        .push(names[0].clone());

    // A workload of 6 replicas over the scope's nodes with a budget of 5 available.
    support::create_deployment(scope, "web", 6, None).await;
    support::create_pdb(scope, "web", 5, 6).await;

    // names[1] runs a pod that blocks its reboot.
    support::create::<Pod>(
        scope,
        json!({
            "metadata": { "name": "long-job", "labels": { "runtime": "long" } },
            "spec": {
                "nodeName": names[1],
                "containers": [{ "name": "job", "image": "registry.invalid/job:1" }],
            },
        }),
    )
    .await;

    let node_observer = observe_nodes(scope, 1, rollout.record.clone());
    let pod_observer = observe_pods(scope, "web", 5, rollout.record.clone());
    let sims = rollout.start_agents(1, &["--blocking-pod-selector=runtime=long"]);

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

    scope
        .api::<Pod>()
        .delete("long-job", &Default::default())
        .await
        .expect("deleting the blocking pod");
    rollout
        .wait_until_done(&sims.iter().collect::<Vec<_>>(), Duration::from_secs(240))
        .await;
    rollout.check(&sims, 1).await;
    node_observer.abort();
    pod_observer.abort();
    let min_ready = rollout.record.lock().expect("the record").min_ready_pods;
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
    let rollout = Rollout::new("rollout-window", 3).await;
    let observer = observe_nodes(&rollout.scope, 1, rollout.record.clone());
    // A window that opens a little from now and lasts an hour. Windows are set in whole minutes:
    // take the first minute boundary at least 20 s away, so that the window is surely still
    // closed when the check below looks (8 s after the agents start).
    let earliest = jiff::Timestamp::now().as_second() + 20;
    let opens = jiff::Timestamp::from_second((earliest / 60 + 1) * 60)
        .expect("a time")
        .to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let start = format!("{:02}:{:02}", opens.hour(), opens.minute());
    let closes = opens
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .expect("a time");
    let end = format!("{:02}:{:02}", closes.hour(), closes.minute());
    let window = [format!("--start-time={start}"), format!("--end-time={end}")];
    let args: Vec<&str> = window.iter().map(String::as_str).collect();
    let sims = rollout.start_agents(1, &args);

    tokio::time::sleep(Duration::from_secs(8)).await;
    for sim in &sims {
        assert_eq!(sim.reboots(), 0, "nothing happens before the window opens");
        assert!(
            sim.log().contains("waiting for the reboot window"),
            "{}",
            sim.log()
        );
    }
    rollout
        .wait_until_done(&sims.iter().collect::<Vec<_>>(), Duration::from_secs(180))
        .await;
    rollout.check(&sims, 1).await;
    observer.abort();
}
