//! Whole agents with `--lock-backend=lease`: a rolling reboot whose agents may not write their
//! DaemonSet, a running fleet switched from the DaemonSet backend to the Lease mid-cycle, and a
//! GitOps tool replacing the DaemonSet while a node holds the lock (kubereboot/kured#835). The
//! observer counts the holders of both objects against the concurrency throughout. The lock's
//! semantics on the Lease itself are in tests/lock.rs. Needs `scripts/testcluster up` and root
//! (for `unshare`).

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::PostParams;
use serde_json::json;
use support::agents::Fleet;
use support::objects::{create_deployment_of, create_pdb, pod_template, running_on, set_min_available};
use support::observer::{LOCK_ANNOTATION, Observer, Snapshot, lock_holders};
use support::rbac::{bind_role, lease_rules};
use support::simulated::{NodeOptions, SimulatedNode};

const LEASE: &str = "--lock-backend=lease";

/// Generous: a few reboot cycles of seconds each, on a shared machine.
const SETTLE: Duration = Duration::from_secs(240);

/// One pod of app `pinned` on each of the fleet's nodes (required anti-affinity), and a budget
/// that refuses every eviction: a node's drain holds until [`unpin`].
async fn pin_a_pod_on_each_node(fleet: &Fleet) {
    let scope = &fleet.scope;
    let spread = json!({ "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": { "matchLabels": { "app": "pinned" } },
        "topologyKey": "kubernetes.io/hostname",
    }] } } });
    let count = fleet.names.len() as i32;
    create_deployment_of(
        scope,
        "pinned",
        count,
        pod_template(scope, "pinned", None, spread),
    )
    .await;
    let names: Vec<&str> = fleet.names.iter().map(String::as_str).collect();
    running_on(scope, "app=pinned", &names).await;
    create_pdb(scope, "pinned", count, count).await;
}

async fn unpin(fleet: &Fleet) {
    set_min_available(&fleet.scope, "pinned", 0).await;
}

/// Waits until one node holds the lock (in either object) and its drain is held by the budget;
/// returns its index.
async fn one_holds_mid_drain(observer: &Observer, fleet: &Fleet, sims: &[SimulatedNode]) -> usize {
    let holder = observer
        .until("a node to hold the lock", SETTLE, |s| s.holders.len() == 1)
        .await
        .holders[0]
        .clone();
    let i = fleet
        .names
        .iter()
        .position(|n| *n == holder)
        .unwrap_or_else(|| panic!("the holder {holder} is one of the fleet's nodes"));
    sims[i].logged("eviction refused for now; retrying", SETTLE).await;
    i
}

fn holders_in(lock: Option<&str>) -> Vec<String> {
    lock.map(|l| lock_holders(l).expect("a readable lock"))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rolling_reboot_on_the_lease_with_no_write_on_daemonsets() {
    let fleet = Fleet::on_lease("lease-rollout", 4).await;
    let observer = Observer::start(&fleet.scope, 2, &[]).await;
    let sims = fleet.start_all(&NodeOptions::default(), &["--concurrency=2", LEASE]);
    observer.assert_each_rebooted_once(&sims, SETTLE).await;

    let lease = fleet
        .scope
        .api::<Lease>()
        .get("kured")
        .await
        .expect("the agents created the Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "nobody holds it at the end"
    );
    assert_eq!(
        observer.holders_seen().len(),
        fleet.names.len(),
        "every node held the Lease"
    );
    observer.assert_concurrency_used(2);
}

/// The DaemonSet's rolling update that sets `--lock-backend=lease`, while one node holds the
/// DaemonSet's lock mid-drain: first a waiting agent, then the holder's, then the rest. The
/// holder's entry moves to the Lease and its cycle goes on; never more than one holder across
/// both objects.
#[tokio::test]
async fn a_running_fleet_switches_from_the_daemonset_to_the_lease_mid_cycle() {
    let fleet = Fleet::new("lease-switch", 4).await;
    // Step 2 of the README's procedure: the Lease's rules alongside the DaemonSet's.
    bind_role(&fleet.scope, "kured-lease", "kured", lease_rules()).await;
    fleet.lease_rbac_in_effect(true).await;
    pin_a_pod_on_each_node(&fleet).await;
    let observer = Observer::start(&fleet.scope, 1, &[]).await;
    let sims = fleet.start_all(&NodeOptions::default(), &["--concurrency=1"]);

    let holder = one_holds_mid_drain(&observer, &fleet, &sims).await;
    let name = &fleet.names[holder];
    let seen = observer.snapshot();
    assert_eq!(
        (holders_in(seen.lock.as_deref()), seen.lease_lock.as_deref()),
        (vec![name.clone()], None),
        "{name} holds the DaemonSet's lock"
    );

    let waiter = (holder + 1) % sims.len();
    let order = [waiter, holder]
        .into_iter()
        .chain((0..sims.len()).filter(|i| *i != waiter && *i != holder));
    for i in order {
        let stopped = sims[i].restart_agent_with(&[LEASE]).await;
        assert_eq!(
            stopped,
            "terminated 0",
            "{}: {}",
            fleet.names[i],
            sims[i].log_tail(20)
        );
        if i == holder {
            let moved =
                |s: &Snapshot| holders_in(s.lease_lock.as_deref()) == [name.as_str()] && s.lock.is_none();
            observer
                .until("the holder's entry to move to the Lease", SETTLE, moved)
                .await;
            sims[holder]
                .logged(
                    "moved our lock entry from the other lock backend's object",
                    SETTLE,
                )
                .await;
        }
    }
    assert!(
        sims.iter().all(|s| s.reboots() == 0),
        "nobody rebooted while the budget held the drain"
    );
    assert_eq!(
        observer.snapshot().holders,
        [name.as_str()],
        "the holder kept its slot through the switch"
    );

    unpin(&fleet).await;
    observer.assert_each_rebooted_once(&sims, SETTLE).await;
    assert_eq!(
        observer.snapshot().lock,
        None,
        "the DaemonSet's annotation is gone"
    );
    assert_eq!(
        observer.cordons(name),
        1,
        "{name} was cordoned once, before the switch"
    );
}

/// A GitOps tool applies the DaemonSet from Git, annotations and all dropped, while a node holds
/// the lock mid-drain (kubereboot/kured#835): on the Lease, the lock is untouched.
#[tokio::test]
async fn a_daemonset_replaced_by_gitops_mid_drain_leaves_the_lease_lock_alone() {
    let fleet = Fleet::on_lease("lease-gitops", 2).await;
    pin_a_pod_on_each_node(&fleet).await;
    let observer = Observer::start(&fleet.scope, 1, &[]).await;
    let sims = fleet.start_all(&NodeOptions::default(), &["--concurrency=1", LEASE]);
    let holder = one_holds_mid_drain(&observer, &fleet, &sims).await;
    let name = &fleet.names[holder];
    let held = observer.snapshot().lease_lock;

    let daemonsets = fleet.scope.api::<DaemonSet>();
    let mut from_git = daemonsets.get("kured").await.expect("reading the DaemonSet");
    from_git.metadata.annotations = None;
    from_git.metadata.resource_version = None;
    from_git.status = None;
    daemonsets
        .replace("kured", &PostParams::default(), &from_git)
        .await
        .expect("replacing the DaemonSet as a GitOps tool would");
    let replaced = daemonsets.get("kured").await.expect("reading the DaemonSet");
    assert!(
        !replaced.annotations().contains_key(LOCK_ANNOTATION),
        "the DaemonSet carries no lock: {:?}",
        replaced.annotations()
    );

    // Two of the agents' periods (3 s): the waiting agent has looked at the lock since.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let now = observer.snapshot();
    assert_eq!(now.lease_lock, held, "the lock is as it was");
    assert_eq!(now.holders, [name.as_str()], "no second node took a slot");
    assert_eq!(now.cordoned_by_kured, [name.as_str()]);

    unpin(&fleet).await;
    observer.assert_each_rebooted_once(&sims, SETTLE).await;
}
