//! The whole agent on the test cluster: a real `kured` process on a simulated node
//! (`testenv/node-init` as PID 1 of its own PID namespace, a kwok Node), rebooting through the
//! production signal path. Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{Scope, SimulatedNode, eventually};

const LOCK: &str = "weave.works/kured-node-lock";

async fn lock_annotation(scope: &Scope) -> Option<String> {
    let ds = scope
        .api::<DaemonSet>()
        .get("kured")
        .await
        .expect("reading the DaemonSet");
    ds.annotations().get(LOCK).cloned()
}

/// Waits until node `name` has come back from its reboot number `reboots` (boot ID no longer
/// `boot_before`, sentinel cleared, lock released); on time-out, fails with the agent's log.
async fn wait_for_reboot_cycle(
    scope: &Scope,
    name: &str,
    sim: &SimulatedNode,
    reboots: usize,
    boot_before: &str,
) -> Node {
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let node = nodes.get(name).await.ok();
        let lock = lock_annotation(scope).await;
        let boot = node.as_ref().map(support::boot_id).unwrap_or_default();
        let back = boot != boot_before && sim.reboots() == reboots && !sim.sentinel.exists();
        if let Some(node) = node.filter(|_| back && lock.is_none()) {
            return node;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out after 120s waiting for node {name} to come back from reboot {reboots}: boot ID \
                 {boot:?} (before {boot_before:?}), {} reboots, sentinel exists: {}, lock: {lock:?}; \
                 agent log:\n{}",
                sim.reboots(),
                sim.sentinel.exists(),
                sim.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_node_that_needs_a_reboot_is_drained_rebooted_and_returned() {
    let scope = Scope::new("agent-cycle").await;
    let names = scope.create_nodes(2).await;
    let agents = support::Agents::new(&scope).await;
    support::create_deployment(&scope, "web", 2, None).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());

    // Record whether the node was ever cordoned while the agent worked, and each phase the agent
    // published for `kured status` (kured.dev/agent-state), in order.
    let seen: Arc<Mutex<(bool, Vec<String>)>> = Arc::default();
    let watch = {
        let (nodes, seen) = (nodes.clone(), seen.clone());
        let name = names[0].clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut stream = std::pin::pin!(watcher(nodes, cfg).applied_objects());
            while let Some(Ok(node)) = stream.next().await {
                let phase = node
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kured.dev/agent-state"))
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                    .and_then(|v| v["phase"].as_str().map(str::to_owned));
                let mut seen = seen.lock().expect("not poisoned");
                seen.0 |= support::unschedulable(&node);
                if let Some(phase) = phase
                    && seen.1.last() != Some(&phase)
                {
                    seen.1.push(phase);
                }
            }
        })
    };

    let sim = agents.start(&scope, &names[0], &[]);
    let first_boot = support::first_boot_id(&scope, &names[0]).await;
    let node = wait_for_reboot_cycle(&scope, &names[0], &sim, 1, &first_boot).await;
    assert!(!support::unschedulable(&node), "uncordoned after the reboot");
    // The last phase, idle, is published right after the release.
    eventually("the agent to publish idle", Duration::from_secs(10), || async {
        (seen.lock().expect("not poisoned").1.last().map(String::as_str) == Some("idle")).then_some(())
    })
    .await;
    watch.abort();
    let (cordoned, phases) = seen.lock().expect("not poisoned").clone();
    assert!(cordoned, "the node was cordoned during the drain");
    let expected = ["draining", "rebooting", "recovering", "idle"];
    let tail = &phases[phases.len().saturating_sub(expected.len())..];
    assert_eq!(tail, expected, "published phases, in order: {phases:?}");
    // The sentinel is gone, so the agent stays idle: one reboot, no more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sim.reboots(), 1, "agent log:\n{}", sim.log());
    let log = sim.log();
    eprintln!("{log}");
    assert!(log.contains("\"message\":\"drained\""), "{log}");
    assert!(log.contains("\"message\":\"lock released\""), "{log}");
}

/// A sentinel command has no file to watch: the agent must look again every period, also while
/// the minutely metric refresh keeps running. The fresh agent after the first reboot is idle, and
/// a reboot needed later must still be noticed.
#[tokio::test]
async fn an_idle_agent_with_a_sentinel_command_notices_a_later_reboot() {
    let scope = Scope::new("agent-command-sentinel").await;
    let names = scope.create_nodes(1).await;
    let agents = support::Agents::new(&scope).await;
    // node-init exports the sentinel's path; the agent passes its environment to the command.
    let sim = agents.start(
        &scope,
        &names[0],
        &[r#"--reboot-sentinel-command=sh -c 'test -e "$NODE_INIT_SENTINEL"'"#],
    );
    let first_boot = support::first_boot_id(&scope, &names[0]).await;
    let node = wait_for_reboot_cycle(&scope, &names[0], &sim, 1, &first_boot).await;

    // The fresh agent has started and found nothing to do; then the node needs a reboot again.
    eventually("the fresh agent to start", Duration::from_secs(30), || async {
        (sim.log().matches("\"agent started\"").count() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sim.reboots(), 1, "idle without a sentinel; log:\n{}", sim.log());
    std::fs::write(&sim.sentinel, "").expect("creating the sentinel");
    wait_for_reboot_cycle(&scope, &names[0], &sim, 2, &support::boot_id(&node)).await;
}

#[tokio::test]
async fn a_node_cordoned_by_an_operator_stays_cordoned_after_its_reboot() {
    let scope = Scope::new("agent-cordoned").await;
    let names = scope.create_nodes(1).await;
    let agents = support::Agents::new(&scope).await;
    support::set_unschedulable(&scope, &names[0], true).await;

    let sim = agents.start(&scope, &names[0], &[]);
    let first_boot = support::first_boot_id(&scope, &names[0]).await;
    let node = wait_for_reboot_cycle(&scope, &names[0], &sim, 1, &first_boot).await;
    assert!(
        support::unschedulable(&node),
        "the operator's cordon is kept; log:\n{}",
        sim.log()
    );
}

#[tokio::test]
async fn a_drain_that_times_out_gives_the_node_back_and_releases_the_lock() {
    let scope = Scope::new("agent-drainfail").await;
    let names = scope.create_nodes(1).await;
    let agents = support::Agents::new(&scope).await;
    support::create_deployment(&scope, "pinned", 1, Some(&names[0])).await;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": { "name": "pinned" },
        "spec": { "minAvailable": 1, "selector": { "matchLabels": { "app": "pinned" } } },
    }))
    .expect("a valid PDB");
    scope
        .api::<PodDisruptionBudget>()
        .create(&PostParams::default(), &pdb)
        .await
        .expect("creating the PDB");
    eventually("the pinned pod to run", Duration::from_secs(60), || async {
        let pdb = scope.api::<PodDisruptionBudget>().get("pinned").await.ok()?;
        (pdb.status?.current_healthy == Some(1)).then_some(())
    })
    .await;

    let sim = agents.start(&scope, &names[0], &["--drain-timeout=3s"]);
    eventually("a failed drain", Duration::from_secs(60), || async {
        sim.log()
            .contains("drain failed; giving the node back and releasing the lock")
            .then_some(())
    })
    .await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    eventually(
        "the node uncordoned and the lock free",
        Duration::from_secs(20),
        || {
            let nodes = nodes.clone();
            let name = names[0].clone();
            let scope = &scope;
            async move {
                let node = nodes.get(&name).await.ok()?;
                (!support::unschedulable(&node) && lock_annotation(scope).await.is_none()).then_some(())
            }
        },
    )
    .await;
    assert_eq!(sim.reboots(), 0, "no reboot without --force-reboot");
    assert!(Path::new(&sim.sentinel).exists(), "the reboot is still needed");
}

#[tokio::test]
async fn a_blocking_pod_keeps_the_agent_from_taking_the_lock_until_it_is_gone() {
    let scope = Scope::new("agent-blocked").await;
    let names = scope.create_nodes(1).await;
    let agents = support::Agents::new(&scope).await;
    // A bare pod, deleted directly below: no controller or garbage collector in the way.
    let batch: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": { "name": "batch", "labels": { "app": "batch" } },
        "spec": {
            "nodeName": names[0],
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "batch", "image": "registry.invalid/batch:1" }],
        },
    }))
    .expect("a valid Pod");
    scope
        .api::<k8s_openapi::api::core::v1::Pod>()
        .create(&PostParams::default(), &batch)
        .await
        .expect("creating the blocking pod");
    eventually("the blocking pod to run", Duration::from_secs(60), || async {
        let pods = scope.api::<k8s_openapi::api::core::v1::Pod>();
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=batch"))
            .await
            .ok()?;
        list.items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .then_some(())
    })
    .await;
    let nodes: Api<Node> = Api::all(scope.client.clone());

    let sim = agents.start(&scope, &names[0], &["--blocking-pod-selector=app=batch"]);
    eventually(
        "the agent to report the block",
        Duration::from_secs(30),
        || async { sim.log().contains("reboot required, but blocked").then_some(()) },
    )
    .await;
    assert!(
        sim.log().contains("/batch"),
        "the block names the pod:\n{}",
        sim.log()
    );
    assert_eq!(lock_annotation(&scope).await, None, "no lock while blocked");
    let blocked = format!(
        "kured_reboot_blocked_reason{{node=\"{}\",reason=\"blocker_pod\"}} ",
        names[0]
    );
    let metrics = sim.metrics().expect("the agent's /metrics");
    assert!(metrics.contains(&blocked), "{blocked} in:\n{metrics}");
    let node = nodes.get(&names[0]).await.expect("the node");
    assert!(!support::unschedulable(&node), "not cordoned while blocked");
    assert_eq!(sim.reboots(), 0);

    let first_boot = support::boot_id(&node);
    scope
        .api::<k8s_openapi::api::core::v1::Pod>()
        .delete("batch", &Default::default())
        .await
        .expect("deleting the blocker");
    let node = wait_for_reboot_cycle(&scope, &names[0], &sim, 1, &first_boot).await;
    assert!(!support::unschedulable(&node));
}

#[tokio::test]
async fn a_firing_alert_keeps_the_agent_from_taking_the_lock() {
    let scope = Scope::new("agent-alert").await;
    let names = scope.create_nodes(1).await;
    let agents = support::Agents::new(&scope).await;
    let prometheus = support::prometheus::Prometheus::start(None).await;

    // RebootRequired fires and LongPending is pending: with --alert-firing-only and a filter that
    // ignores RebootRequired, nothing blocks; without the filter, RebootRequired blocks.
    let blocked = agents.start(
        &scope,
        &names[0],
        &[
            &format!("--prometheus-url={}", prometheus.url),
            "--alert-firing-only",
        ],
    );
    eventually(
        "the agent to report the alert",
        Duration::from_secs(30),
        || async {
            blocked
                .log()
                .contains("reboot required, but blocked")
                .then_some(())
        },
    )
    .await;
    assert!(blocked.log().contains("RebootRequired"), "{}", blocked.log());
    assert!(
        !blocked.log().contains("LongPending"),
        "pending alerts are ignored with --alert-firing-only"
    );
    assert_eq!(
        lock_annotation(&scope).await,
        None,
        "no lock while an alert fires"
    );
    assert_eq!(blocked.reboots(), 0);
    drop(blocked);

    let nodes: Api<Node> = Api::all(scope.client.clone());
    let first_boot = support::boot_id(&nodes.get(&names[0]).await.expect("the node"));
    let filtered = agents.start(
        &scope,
        &names[0],
        &[
            &format!("--prometheus-url={}", prometheus.url),
            "--alert-firing-only",
            "--alert-filter-regexp=^RebootRequired$",
        ],
    );
    wait_for_reboot_cycle(&scope, &names[0], &filtered, 1, &first_boot).await;
}

/// Sets (or with `None` removes) the lock annotation, as an operator or another agent would.
async fn set_lock_annotation(scope: &Scope, value: Option<&str>) {
    let patch = json!({ "metadata": { "annotations": { LOCK: value } } });
    scope
        .api::<DaemonSet>()
        .patch(
            "kured",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("writing the lock annotation");
}

/// The lock entry of the node that cordoned this one is gone (its TTL ran out while the node was
/// down, the annotation was removed by hand, the DaemonSet was re-created): kured's record of its
/// cordon on the Node is enough for the node's agent to return it to service. A cordon without
/// that record is someone else's and stays.
#[tokio::test]
async fn a_node_kured_cordoned_is_uncordoned_after_its_lock_entry_is_gone() {
    let scope = Scope::new("agent-stranded").await;
    let names = scope.create_nodes(2).await;
    let agents = support::Agents::new(&scope).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    // Both cordoned; only the first with kured's record, as a cordon by kured leaves it.
    for name in &names {
        support::set_unschedulable(&scope, name, true).await;
    }
    let record = json!({ "metadata": { "annotations": { "kured.dev/cordoned": "2026-12-01T03:00:00Z" } } });
    nodes
        .patch(
            &names[0],
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&record),
        )
        .await
        .expect("recording kured's cordon");

    let stranded = agents.start(&scope, &names[0], &[]);
    let operators = agents.start(&scope, &names[1], &[]);
    // Neither node needs a reboot: this is only about the cordon.
    std::fs::remove_file(&stranded.sentinel).expect("removing the sentinel");
    std::fs::remove_file(&operators.sentinel).expect("removing the sentinel");
    eventually("kured's cordon to be lifted", Duration::from_secs(60), || async {
        let node = nodes.get(&names[0]).await.ok()?;
        let record = node.annotations().contains_key("kured.dev/cordoned");
        (!support::unschedulable(&node) && !record).then_some(())
    })
    .await;
    // The other agent has had as long, and more rounds (--period=3s): its node stays cordoned.
    eventually("the other agent to go idle", Duration::from_secs(30), || async {
        operators.log().contains("\"agent started\"").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let other = nodes.get(&names[1]).await.expect("the other node");
    assert!(
        support::unschedulable(&other),
        "a cordon without kured's record is not kured's; log:\n{}",
        operators.log()
    );
    assert_eq!(stranded.reboots() + operators.reboots(), 0);
}

/// The slot of a node that drained past its lock TTL may have gone to another node meanwhile; it
/// must not reboot on a slot it no longer holds. Here the TTL runs out during `--drain-delay` and
/// a manual hold takes the lock: the agent gives its node back instead of rebooting, and reboots
/// once the lock is free again.
#[tokio::test]
async fn a_slot_lost_by_ttl_before_the_reboot_is_given_back() {
    let scope = Scope::new("agent-ttl-lost").await;
    let names = scope.create_nodes(1).await;
    let agents = support::Agents::new(&scope).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let sim = agents.start(&scope, &names[0], &["--lock-ttl=3s", "--drain-delay=10s"]);
    eventually("the agent to take the lock", Duration::from_secs(60), || async {
        lock_annotation(&scope).await.filter(|l| l.contains(&names[0]))
    })
    .await;
    // Past the entry's TTL, another holder takes the slot, as a waiting agent would.
    tokio::time::sleep(Duration::from_secs(4)).await;
    set_lock_annotation(&scope, Some(r#"{"nodeID":"manual"}"#)).await;
    eventually(
        "the agent to give the node back",
        Duration::from_secs(60),
        || async { sim.log().contains("giving the node back").then_some(()) },
    )
    .await;
    eventually("the node uncordoned", Duration::from_secs(30), || async {
        let node = nodes.get(&names[0]).await.ok()?;
        (!support::unschedulable(&node)).then_some(())
    })
    .await;
    assert_eq!(
        sim.reboots(),
        0,
        "no reboot on a lost slot; log:\n{}",
        sim.log_tail(30)
    );
    assert_eq!(
        lock_annotation(&scope).await.as_deref(),
        Some(r#"{"nodeID":"manual"}"#),
        "the new holder's lock is left alone"
    );

    let first_boot = support::first_boot_id(&scope, &names[0]).await;
    set_lock_annotation(&scope, None).await;
    let node = wait_for_reboot_cycle(&scope, &names[0], &sim, 1, &first_boot).await;
    assert!(!support::unschedulable(&node));
}

/// A holder's TTL running out frees its slot without a write anyone could watch: a waiting agent
/// must look again then, not a `--period` (here an hour) later.
#[tokio::test]
async fn a_waiting_agent_takes_the_lock_when_the_holder_expires() {
    let scope = Scope::new("agent-ttl-wait").await;
    let names = scope.create_nodes(2).await;
    let agents = support::Agents::new(&scope).await;
    // The holder is a real Node whose agent never comes back; its entry expires in 8 s.
    let created = jiff::Timestamp::now().to_string();
    let held = format!(
        r#"{{"nodeID":"{}","metadata":{{"unschedulable":false}},"created":"{created}","TTL":8000000000}}"#,
        names[1]
    );
    set_lock_annotation(&scope, Some(&held)).await;
    let sim = agents.start(&scope, &names[0], &["--period=1h", "--lock-ttl=30m"]);
    let first_boot = support::first_boot_id(&scope, &names[0]).await;
    eventually(
        "the agent to wait for the lock",
        Duration::from_secs(30),
        || async { sim.log().contains("waiting for the lock").then_some(()) },
    )
    .await;
    assert_eq!(sim.reboots(), 0, "not before the holder's TTL ran out");
    wait_for_reboot_cycle(&scope, &names[0], &sim, 1, &first_boot).await;
}
