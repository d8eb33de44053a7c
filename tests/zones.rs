//! Whole agents with `--concurrency-per-label` and the fleet pause: six nodes in three zones at
//! `--concurrency=3` with one node per zone, on the DaemonSet and on the Lease; an agent killed
//! right after taking its slot in such a rollout; and a fleet paused by the lock object's
//! `kured.dev/pause` annotation. The observer checks throughout, from the Nodes' own labels, that
//! no two holders share a zone. Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::time::Duration;

use kured::lock::{Backend, PAUSE_ANNOTATION};
use support::agents::Fleet;
use support::nodes::unschedulable;
use support::observer::{Observer, Snapshot, annotate_lock_object, lock_holders, read_lock};
use support::simulated::{NodeOptions, SimulatedNode};
use support::wait::eventually;

const ZONE: &str = "topology.kubernetes.io/zone";

/// Generous: two rounds of reboot cycles of seconds each, on a shared machine.
const SETTLE: Duration = Duration::from_secs(240);

/// What the agents' log line at every round that waits for the lock starts with and contains
/// ("reboot required; waiting for the lock", or, for a lock that is paused or halted, "reboot
/// required, but the rollout is halted or paused; waiting for the lock to change").
const WAITING: (&str, &str) = ("reboot required", "waiting for the lock");

/// Six nodes, two in each of zones a, b and c (node i in zone `a`, `b`, `c` as i % 3), the
/// agents' lock and credentials (the Lease's rules for `backend` Lease), and an observer at
/// concurrency 3 that also checks one holder per zone, started before any agent.
async fn six_nodes_in_three_zones(test: &str, backend: Backend) -> (Fleet, Observer) {
    let fleet = match backend {
        Backend::DaemonSet => Fleet::new(test, 6).await,
        Backend::Lease => Fleet::on_lease(test, 6).await,
    };
    for (i, name) in fleet.names.iter().enumerate() {
        fleet.scope.label_node(name, ZONE, ["a", "b", "c"][i % 3]).await;
    }
    let observer = Observer::start(&fleet.scope, 3, &[]).await;
    observer.check_per_label(ZONE, 1);
    (fleet, observer)
}

/// The agents' arguments: three at a time, one per zone, each holding its slot a few seconds
/// before the drain so that the zones' slots overlap.
fn zone_args(backend: Backend, drain_delay: &str) -> Vec<String> {
    let mut args = vec![
        "--concurrency=3".to_owned(),
        format!("--concurrency-per-label={ZONE}=1"),
        format!("--drain-delay={drain_delay}"),
    ];
    if backend == Backend::Lease {
        args.push("--lock-backend=lease".to_owned());
    }
    args
}

fn start(fleet: &Fleet, args: &[String]) -> Vec<SimulatedNode> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fleet.start_all(&NodeOptions::default(), &args)
}

/// The lock's text in `backend`'s object as the observer sees it.
fn lock_text(seen: &Snapshot, backend: Backend) -> Option<&str> {
    match backend {
        Backend::DaemonSet => seen.lock.as_deref(),
        Backend::Lease => seen.lease_lock.as_deref(),
    }
}

async fn one_node_per_zone_at_a_time(backend: Backend) {
    let test = format!("zones-{}", backend.kind().to_lowercase());
    let (fleet, observer) = six_nodes_in_three_zones(&test, backend).await;
    let sims = start(&fleet, &zone_args(backend, "3s"));
    let recorded = format!(r#""labels":{{"{ZONE}":""#);
    observer
        .until("a holder's entry to record its zone", SETTLE, |s| {
            lock_text(s, backend).is_some_and(|t| t.contains(&recorded))
        })
        .await;
    observer.assert_each_rebooted_once(&sims, SETTLE).await;
    assert!(
        observer.max_holders() > 1,
        "the zones rebooted side by side: at most {} holders at once",
        observer.max_holders()
    );
    assert_eq!(observer.max_per_label(), 1, "never two holders in one zone");
}

#[tokio::test]
async fn six_nodes_in_three_zones_reboot_one_per_zone_on_the_daemonset() {
    one_node_per_zone_at_a_time(Backend::DaemonSet).await;
}

#[tokio::test]
async fn six_nodes_in_three_zones_reboot_one_per_zone_on_the_lease() {
    one_node_per_zone_at_a_time(Backend::Lease).await;
}

/// An agent SIGKILLed right after it took its slot (the drain delay holds it there) is started
/// again, finds its slot and finishes; the zones' limit holds throughout and every node reboots
/// once.
#[tokio::test]
async fn an_agent_killed_right_after_taking_its_zones_slot_resumes() {
    let (fleet, observer) = six_nodes_in_three_zones("zones-kill", Backend::DaemonSet).await;
    let sims = start(&fleet, &zone_args(Backend::DaemonSet, "8s"));
    let seen = observer
        .until("a node to take a slot", SETTLE, |s| !s.holders.is_empty())
        .await;
    let name = seen.holders[0].clone();
    let sim = sims
        .iter()
        .find(|s| s.name == name)
        .expect("a holder of the fleet");
    sim.kill_agent().await;
    let node = fleet.scope.node(&name).await;
    let lock = read_lock(&fleet.scope).await.unwrap_or_default();
    let holders = lock_holders(&lock).expect("a readable lock");
    assert!(
        holders.contains(&name) && !unschedulable(&node) && sim.reboots() == 0,
        "{name} was not killed between taking its slot and the cordon: lock {lock}, cordoned {}, {} reboots; agent log:\n{}",
        unschedulable(&node),
        sim.reboots(),
        sim.log_tail(20)
    );
    observer.assert_each_rebooted_once(&sims, SETTLE).await;
    assert_eq!(sim.kills(), 1, "one agent killed");
    assert_eq!(observer.max_per_label(), 1, "never two holders in one zone");
}

/// How many waiting rounds the agents of `sim` have logged.
fn waiting_rounds(sim: &SimulatedNode) -> usize {
    sim.log_entries()
        .iter()
        .filter(|e| {
            e["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with(WAITING.0) && m.contains(WAITING.1))
        })
        .count()
}

/// With the lock's DaemonSet annotated `kured.dev/pause=true`, the node that held the lock before
/// finishes its cycle, and the others, needing a reboot, go round after round without taking a
/// slot; removing the annotation resumes the rollout.
#[tokio::test]
async fn a_paused_fleet_takes_no_slot_until_resumed_and_a_holder_finishes() {
    let fleet = Fleet::new("zones-pause", 3).await;
    let scope = &fleet.scope;
    let observer = Observer::start(scope, 1, &[]).await;
    let sims = start(
        &fleet,
        &["--concurrency=1".to_owned(), "--drain-delay=5s".to_owned()],
    );
    let first = observer
        .until("a node to take the lock", SETTLE, |s| !s.holders.is_empty())
        .await
        .holders[0]
        .clone();
    annotate_lock_object(scope, Backend::DaemonSet, PAUSE_ANNOTATION, Some("true")).await;

    let holder = sims.iter().find(|s| s.name == first).expect("the holder");
    eventually("the holder to reboot and release the lock", SETTLE, || async {
        (holder.reboots() == 1 && observer.snapshot().holders.is_empty()).then_some(())
    })
    .await;
    let waiting: Vec<&SimulatedNode> = sims.iter().filter(|s| s.name != first).collect();
    let before: Vec<usize> = waiting.iter().map(|s| waiting_rounds(s)).collect();
    eventually(
        "each waiting agent to go three rounds with the lock free and paused",
        SETTLE,
        || async {
            waiting
                .iter()
                .zip(&before)
                .all(|(s, b)| waiting_rounds(s) >= b + 3)
                .then_some(())
        },
    )
    .await;
    let seen = observer.snapshot();
    assert!(seen.holders.is_empty(), "nobody holds the paused lock: {seen:?}");
    assert_eq!(
        observer.holders_seen(),
        [first.clone()].into(),
        "only the node that held the lock before the pause took a slot"
    );
    for sim in &waiting {
        assert_eq!(sim.reboots(), 0, "{} waits while the fleet is paused", sim.name);
        assert!(!seen.cordoned(&sim.name), "{} is not cordoned", sim.name);
    }

    annotate_lock_object(scope, Backend::DaemonSet, PAUSE_ANNOTATION, None).await;
    observer.assert_each_rebooted_once(&sims, SETTLE).await;
}
