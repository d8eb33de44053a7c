//! The whole agent on the test cluster: a real `kured` process on a simulated node
//! (`testenv/node-init` as PID 1 of its own PID namespace, a kwok Node), rebooting through the
//! production signal path. Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use serde_json::json;
use support::agents::Fleet;
use support::nodes::{boot_id, unschedulable};
use support::objects::{create_deployment, create_pdb, create_pod, running_on};
use support::observer::{Observer, Snapshot, read_lock, upstream_entry, write_lock};
use support::scope::Scope;
use support::simulated::{NodeOptions, SimulatedNode};
use support::wait::{eventually, eventually_or};

/// Waits until node `name` has come back from its reboot number `reboots` (boot ID no longer
/// `boot_before`, sentinel cleared, lock released); on time-out, fails with the agent's log.
async fn wait_for_reboot_cycle(
    scope: &Scope,
    name: &str,
    sim: &SimulatedNode,
    reboots: usize,
    boot_before: &str,
) -> Node {
    let nodes = scope.nodes();
    // What was seen last, for the report of a time-out.
    let last = RefCell::new((String::new(), None));
    eventually_or(
        Duration::from_secs(120),
        || async {
            let node = nodes.get(name).await.ok();
            let lock = read_lock(scope).await;
            let boot = node.as_ref().map(boot_id).unwrap_or_default();
            let back = boot != boot_before && sim.reboots() == reboots && !sim.sentinel.exists();
            let done = node.filter(|_| back && lock.is_none());
            *last.borrow_mut() = (boot, lock);
            done
        },
        || {
            let (boot, lock) = &*last.borrow();
            format!(
                "timed out after 120s waiting for node {name} to come back from reboot {reboots}: boot ID \
                 {boot:?} (before {boot_before:?}), {} reboots, sentinel exists: {}, lock: {lock:?}; \
                 agent log:\n{}",
                sim.reboots(),
                sim.sentinel.exists(),
                sim.log_tail(40)
            )
        },
    )
    .await
}

#[tokio::test]
async fn a_node_that_needs_a_reboot_is_drained_rebooted_and_returned() {
    let fleet = Fleet::new("agent-cycle", 2).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    create_deployment(scope, "web", 2, None).await;
    // Sees, among the rest, each phase the agent publishes for `kured status`.
    let observer = Observer::start(scope, 1, &[]).await;

    let sim = fleet.start(0, &[]);
    let first_boot = scope.first_boot_id(&names[0]).await;
    let node = wait_for_reboot_cycle(scope, &names[0], &sim, 1, &first_boot).await;
    assert!(!unschedulable(&node), "uncordoned after the reboot");
    // The last phase, idle, is published right after the release.
    let idle = |s: &Snapshot| s.nodes.get(&names[0]).and_then(|n| n.phase.as_deref()) == Some("idle");
    observer
        .until("the agent to publish idle", Duration::from_secs(10), idle)
        .await;
    // Node 1 runs no agent: the node cordoned by kured was node 0.
    assert_eq!(
        observer.max_cordoned_by_kured(),
        1,
        "the node was cordoned during the drain"
    );
    let phases = observer.phases(&names[0]);
    let expected = ["draining", "rebooting", "recovering", "idle"];
    let tail = &phases[phases.len().saturating_sub(expected.len())..];
    assert_eq!(tail, expected, "published phases, in order: {phases:?}");
    // The sentinel is gone, so the agent stays idle: one reboot, no more.
    observer
        .assert_settled(&[(&sim, 1)], Duration::from_secs(60))
        .await;
    let log = sim.log();
    eprintln!("{log}");
    assert!(log.contains("\"msg\":\"drained\""), "{log}");
    assert!(log.contains("\"msg\":\"lock released\""), "{log}");
}

/// The value of the sample `series` (name and labels as written) in a scrape of `/metrics`.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// One reboot cycle as the metrics show it. The agent that drains is ended by the reboot, so its
/// drain is read while the host goes down; the agent after the reboot counts the reboot and the
/// cycle, and shows the lock released and the phase idle. `/metrics` answers in the Prometheus
/// text format to a scraper that does not ask for OpenMetrics.
#[tokio::test]
async fn a_reboot_cycle_shows_in_the_metrics() {
    let fleet = Fleet::new("agent-metrics", 1).await;
    let (scope, name) = (&fleet.scope, &fleet.names[0]);
    // The host goes down 15 s after the request; the agent that asked answers meanwhile.
    let options = NodeOptions {
        reboot_delay: Duration::from_secs(15),
        ..NodeOptions::default()
    };
    let sim = fleet.start_with(0, &options, &[]);
    let first_boot = scope.first_boot_id(name).await;
    let series = |family: &str| format!("{family}{{node=\"{name}\"}}");
    let phase = |p: &str| format!("kured_phase{{node=\"{name}\",phase=\"{p}\"}}");

    eventually("the reboot to be requested", Duration::from_secs(90), || async {
        (sim.reboot_requests() == 1).then_some(())
    })
    .await;
    let draining_agent = sim
        .metrics()
        .await
        .expect("the /metrics of the agent that drained");
    let before = |s: &str| sample(&draining_agent, s);
    assert_eq!(
        before(&series("kured_drain_duration_seconds_count")),
        Some(1.0),
        "one drain observed, in:\n{draining_agent}"
    );
    assert_eq!(before(&series("kured_drain_failures_total")), Some(0.0));
    assert_eq!(before(&series("kured_lock_held")), Some(1.0), "{draining_agent}");
    assert_eq!(before(&phase("rebooting")), Some(1.0), "{draining_agent}");
    assert_eq!(before(&phase("idle")), Some(0.0), "{draining_agent}");
    assert!(
        draining_agent.contains("# TYPE kured_reboots_total counter\n") && !draining_agent.contains("# EOF"),
        "the Prometheus text format by default:\n{draining_agent}"
    );

    wait_for_reboot_cycle(scope, name, &sim, 1, &first_boot).await;
    // The phase idle is entered by the round right after the release.
    let after = eventually(
        "the agent after the reboot to show the phase idle",
        Duration::from_secs(30),
        || async {
            let scrape = sim.metrics().await.ok()?;
            (sample(&scrape, &phase("idle")) == Some(1.0)).then_some(scrape)
        },
    )
    .await;
    let value = |s: &str| sample(&after, s);
    assert_eq!(value(&series("kured_reboots_total")), Some(1.0), "{after}");
    assert_eq!(
        value(&series("kured_reboot_duration_seconds_count")),
        Some(1.0),
        "{after}"
    );
    assert_eq!(value(&series("kured_lock_held")), Some(0.0), "{after}");
    assert_eq!(value(&series("kured_lock_age_seconds")), Some(0.0), "{after}");
    assert_eq!(value(&phase("recovering")), Some(0.0), "{after}");
    assert_eq!(value(&series("kured_drain_failures_total")), Some(0.0), "{after}");
    assert!(
        value("process_resident_memory_bytes").is_some_and(|v| v > 0.0),
        "{after}"
    );
}

/// A sentinel command has no file to watch: the agent must look again every period, also while
/// the minutely metric refresh keeps running. The fresh agent after the first reboot is idle, and
/// a reboot needed later must still be noticed.
#[tokio::test]
async fn an_idle_agent_with_a_sentinel_command_notices_a_later_reboot() {
    let fleet = Fleet::new("agent-command-sentinel", 1).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    // node-init exports the sentinel's path; the agent passes its environment to the command.
    let sim = fleet.start(
        0,
        &[r#"--reboot-sentinel-command=sh -c 'test -e "$NODE_INIT_SENTINEL"'"#],
    );
    let first_boot = scope.first_boot_id(&names[0]).await;
    let node = wait_for_reboot_cycle(scope, &names[0], &sim, 1, &first_boot).await;

    // The fresh agent has started and found nothing to do; then the node needs a reboot again.
    eventually("the fresh agent to start", Duration::from_secs(30), || async {
        (sim.log().matches("\"agent started\"").count() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sim.reboots(), 1, "idle without a sentinel; log:\n{}", sim.log());
    std::fs::write(&sim.sentinel, "").expect("creating the sentinel");
    wait_for_reboot_cycle(scope, &names[0], &sim, 2, &boot_id(&node)).await;
}

#[tokio::test]
async fn a_node_cordoned_by_an_operator_stays_cordoned_after_its_reboot() {
    let fleet = Fleet::new("agent-cordoned", 1).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    scope.set_unschedulable(&names[0], true).await;

    let sim = fleet.start(0, &[]);
    let first_boot = scope.first_boot_id(&names[0]).await;
    let node = wait_for_reboot_cycle(scope, &names[0], &sim, 1, &first_boot).await;
    assert!(
        unschedulable(&node),
        "the operator's cordon is kept; log:\n{}",
        sim.log()
    );
}

#[tokio::test]
async fn a_drain_that_times_out_gives_the_node_back_and_releases_the_lock() {
    let fleet = Fleet::new("agent-drainfail", 1).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    create_deployment(scope, "pinned", 1, Some(&names[0])).await;
    create_pdb(scope, "pinned", 1, 1).await;

    let sim = fleet.start(
        0,
        &[
            "--drain-timeout=3s",
            "--pre-reboot-node-labels=kured=rebooting",
            "--post-reboot-node-labels=kured=done",
        ],
    );
    sim.logged(
        "drain failed; giving the node back and releasing the lock",
        Duration::from_secs(60),
    )
    .await;
    let nodes = scope.nodes();
    eventually(
        "the node uncordoned and the lock free",
        Duration::from_secs(20),
        || async {
            let node = nodes.get(&names[0]).await.ok()?;
            (!unschedulable(&node) && read_lock(scope).await.is_none()).then_some(())
        },
    )
    .await;
    // As upstream: the node back in service carries the post-reboot labels, not the pre-reboot ones.
    let node = scope.node(&names[0]).await;
    let label = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kured"))
        .cloned();
    assert_eq!(label.as_deref(), Some("done"), "{:?}", node.metadata.labels);
    assert_eq!(sim.reboots(), 0, "no reboot without --force-reboot");
    assert!(Path::new(&sim.sentinel).exists(), "the reboot is still needed");
}

#[tokio::test]
async fn a_blocking_pod_keeps_the_agent_from_taking_the_lock_until_it_is_gone() {
    let fleet = Fleet::new("agent-blocked", 1).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    // A bare pod, deleted directly below: no controller or garbage collector in the way.
    create_pod(
        scope,
        "batch",
        &names[0],
        json!({ "app": "batch" }),
        json!({ "terminationGracePeriodSeconds": 1 }),
    )
    .await;
    running_on(scope, "app=batch", &[&names[0]]).await;

    let sim = fleet.start(0, &["--blocking-pod-selector=app=batch"]);
    sim.logged("reboot required, but blocked", Duration::from_secs(30))
        .await;
    assert!(
        sim.log().contains("/batch"),
        "the block names the pod:\n{}",
        sim.log()
    );
    assert_eq!(read_lock(scope).await, None, "no lock while blocked");
    let blocked = format!(
        "kured_reboot_blocked_reason{{node=\"{}\",reason=\"blocker_pod\"}} ",
        names[0]
    );
    let metrics = sim.metrics().await.expect("the agent's /metrics");
    assert!(metrics.contains(&blocked), "{blocked} in:\n{metrics}");
    let node = scope.node(&names[0]).await;
    assert!(!unschedulable(&node), "not cordoned while blocked");
    assert_eq!(sim.reboots(), 0);

    let first_boot = boot_id(&node);
    scope
        .api::<k8s_openapi::api::core::v1::Pod>()
        .delete("batch", &Default::default())
        .await
        .expect("deleting the blocker");
    let node = wait_for_reboot_cycle(scope, &names[0], &sim, 1, &first_boot).await;
    assert!(!unschedulable(&node));
}

#[tokio::test]
async fn a_firing_alert_keeps_the_agent_from_taking_the_lock() {
    let fleet = Fleet::new("agent-alert", 1).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    let prometheus = support::prometheus::Prometheus::start(None).await;

    // RebootRequired fires and LongPending is pending: with --alert-firing-only and a filter that
    // ignores RebootRequired, nothing blocks; without the filter, RebootRequired blocks.
    let blocked = fleet.start(
        0,
        &[
            &format!("--prometheus-url={}", prometheus.url),
            "--alert-firing-only",
        ],
    );
    blocked
        .logged("reboot required, but blocked", Duration::from_secs(30))
        .await;
    assert!(blocked.log().contains("RebootRequired"), "{}", blocked.log());
    assert!(
        !blocked.log().contains("LongPending"),
        "pending alerts are ignored with --alert-firing-only"
    );
    assert_eq!(read_lock(scope).await, None, "no lock while an alert fires");
    assert_eq!(blocked.reboots(), 0);
    drop(blocked);

    let first_boot = boot_id(&scope.node(&names[0]).await);
    let filtered = fleet.start(
        0,
        &[
            &format!("--prometheus-url={}", prometheus.url),
            "--alert-firing-only",
            "--alert-filter-regexp=^RebootRequired$",
        ],
    );
    wait_for_reboot_cycle(scope, &names[0], &filtered, 1, &first_boot).await;
}

/// The lock entry of the node that cordoned this one is gone (its TTL ran out while the node was
/// down, the annotation was removed by hand, the DaemonSet was re-created): kured's record of its
/// cordon on the Node is enough for the node's agent to return it to service. A cordon without
/// that record is someone else's and stays.
#[tokio::test]
async fn a_node_kured_cordoned_is_uncordoned_after_its_lock_entry_is_gone() {
    let fleet = Fleet::new("agent-stranded", 2).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    let nodes = scope.nodes();
    // Both cordoned; only the first with kured's record, as a cordon by kured leaves it.
    for name in names {
        scope.set_unschedulable(name, true).await;
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

    let stranded = fleet.start(0, &[]);
    let operators = fleet.start(1, &[]);
    // Neither node needs a reboot: this is only about the cordon.
    std::fs::remove_file(&stranded.sentinel).expect("removing the sentinel");
    std::fs::remove_file(&operators.sentinel).expect("removing the sentinel");
    eventually("kured's cordon to be lifted", Duration::from_secs(60), || async {
        let node = nodes.get(&names[0]).await.ok()?;
        let record = node.annotations().contains_key("kured.dev/cordoned");
        (!unschedulable(&node) && !record).then_some(())
    })
    .await;
    // The other agent has had as long, and more rounds (--period=3s): its node stays cordoned.
    operators
        .logged("\"agent started\"", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let other = scope.node(&names[1]).await;
    assert!(
        unschedulable(&other),
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
    let fleet = Fleet::new("agent-ttl-lost", 1).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    let nodes = scope.nodes();
    let sim = fleet.start(0, &["--lock-ttl=3s", "--drain-delay=10s"]);
    eventually("the agent to take the lock", Duration::from_secs(60), || async {
        read_lock(scope).await.filter(|l| l.contains(&names[0]))
    })
    .await;
    // Past the entry's TTL, another holder takes the slot, as a waiting agent would.
    tokio::time::sleep(Duration::from_secs(4)).await;
    write_lock(scope, Some(r#"{"nodeID":"manual"}"#)).await;
    sim.logged("giving the node back", Duration::from_secs(60)).await;
    eventually("the node uncordoned", Duration::from_secs(30), || async {
        let node = nodes.get(&names[0]).await.ok()?;
        (!unschedulable(&node)).then_some(())
    })
    .await;
    assert_eq!(
        sim.reboots(),
        0,
        "no reboot on a lost slot; log:\n{}",
        sim.log_tail(30)
    );
    assert_eq!(
        read_lock(scope).await.as_deref(),
        Some(r#"{"nodeID":"manual"}"#),
        "the new holder's lock is left alone"
    );

    let first_boot = scope.first_boot_id(&names[0]).await;
    write_lock(scope, None).await;
    let node = wait_for_reboot_cycle(scope, &names[0], &sim, 1, &first_boot).await;
    assert!(!unschedulable(&node));
}

/// A holder's TTL running out frees its slot without a write anyone could watch: a waiting agent
/// must look again then, not a `--period` (here an hour) later.
#[tokio::test]
async fn a_waiting_agent_takes_the_lock_when_the_holder_expires() {
    let fleet = Fleet::new("agent-ttl-wait", 2).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    // The holder is a real Node whose agent never comes back; its entry expires in 8 s.
    let created = jiff::Timestamp::now().to_string();
    let held = upstream_entry(&names[1], &created, 8_000_000_000);
    write_lock(scope, Some(&held)).await;
    let sim = fleet.start(0, &["--period=1h", "--lock-ttl=30m"]);
    let first_boot = scope.first_boot_id(&names[0]).await;
    sim.logged("waiting for the lock", Duration::from_secs(30)).await;
    assert_eq!(sim.reboots(), 0, "not before the holder's TTL ran out");
    wait_for_reboot_cycle(scope, &names[0], &sim, 1, &first_boot).await;
}

/// An idle agent asks nothing of the API server: what it must know of its own (a lock entry, a
/// cordon of kured's, the taint) only it writes, so it learns that in one full round, and its
/// sentinel is local. A sentinel that appears again still starts a cycle at once.
#[tokio::test]
async fn an_idle_agent_makes_no_api_request_until_its_node_needs_a_reboot() {
    let rig = support::rig::Rig::new("agent-idle").await;
    let sim = rig.start(&["--period=1s"]);
    rig.settled_after_one_drain(&sim).await;
    // The agent after the reboot returned the node and released the lock; a few rounds later it
    // has had its one full look as an idle agent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rig.proxy.forwarded_all();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = rig.proxy.forwarded_all();
    assert_eq!(
        before,
        after,
        "requests made by an idle agent over eight periods; log:\n{}",
        sim.log_tail(20)
    );

    std::fs::write(&sim.sentinel, "").expect("creating the sentinel");
    eventually("a second cycle to start", Duration::from_secs(60), || async {
        (rig.observer.cordons(&rig.node) >= 2).then_some(())
    })
    .await;
}
