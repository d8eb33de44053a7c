//! Lock entries of nodes that no longer exist, on the test cluster: real `kured` agents on
//! simulated nodes, with the ServiceAccount and RBAC rules of the shipped manifest, find every
//! slot taken by an entry written by hand. Needs `scripts/testcluster up` and root (for
//! `unshare`).

mod support;

use std::time::Duration;

use support::agents::Fleet;
use support::nodes::{boot_id, unschedulable};
use support::observer::{read_lock, upstream_entry, write_lock};
use support::simulated::SimulatedNode;
use support::wait::eventually;

/// An entry as an agent at concurrency 1 writes it: created a minute ago, TTL 0 (never expires).
fn entry(node: &str) -> String {
    let created = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    upstream_entry(node, &kured::lock::record::format_time(created), 0)
}

/// The lines of the agent's JSON log whose message is `message`.
fn log_lines(sim: &SimulatedNode, message: &str) -> Vec<serde_json::Value> {
    sim.log_entries()
        .into_iter()
        .filter(|v| v["msg"] == message)
        .collect()
}

const RECLAIMED: &str = "the lock holder's node no longer exists; its entry was removed to free its slot";

/// kubereboot/kured#173: the node holding the lock was deleted before it released it. Its entry
/// never expires (TTL 0), so without reclaiming no other node would ever reboot.
#[tokio::test]
async fn the_entry_of_a_deleted_node_is_reclaimed_and_the_waiting_node_reboots() {
    let fleet = Fleet::new("reclaim-gone", 2).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    let gone = names[1].clone();
    let held = entry(&gone);
    write_lock(scope, Some(&held)).await;
    scope.delete_node(&gone).await;

    let sim = fleet.start(0, &[]);
    let first_boot = scope.first_boot_id(&names[0]).await;
    let nodes = scope.nodes();
    eventually(
        "the waiting node to reboot and release the lock",
        Duration::from_secs(120),
        || async {
            let node = nodes.get(&names[0]).await.ok()?;
            let back = boot_id(&node) != first_boot && sim.reboots() == 1;
            (back && read_lock(scope).await.is_none()).then_some(())
        },
    )
    .await;

    let reclaimed = log_lines(&sim, RECLAIMED);
    assert_eq!(reclaimed.len(), 1, "one reclaim, logged once:\n{}", sim.log());
    assert_eq!(reclaimed[0]["level"], "WARN");
    assert_eq!(reclaimed[0]["holder"], gone.as_str());
    assert_eq!(reclaimed[0]["entry"], held.as_str(), "the entry, as it was");
    assert_eq!(reclaimed[0]["node"], names[0].as_str());
    let node = scope.node(&names[0]).await;
    assert!(!unschedulable(&node), "uncordoned after its reboot");
    // One reboot, no more: the sentinel is gone.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sim.reboots(), 1, "agent log:\n{}", sim.log());
}

/// Of two entries that fill the only slot, the deleted node's goes; the entry of a node that
/// still exists (its agent silent, as when it is down for a long reboot) is never taken away,
/// however often the waiting agent looks, and the waiting node does not reboot.
#[tokio::test]
async fn the_entry_of_an_existing_node_is_never_reclaimed() {
    let fleet = Fleet::new("reclaim-alive", 3).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    let (alive, gone) = (names[1].clone(), names[2].clone());
    let alive_entry = entry(&alive);
    write_lock(
        scope,
        Some(&format!(
            r#"{{"maxOwners":1,"locks":[{alive_entry},{}]}}"#,
            entry(&gone)
        )),
    )
    .await;
    scope.delete_node(&gone).await;

    let sim = fleet.start(0, &[]);
    let want = format!(r#"{{"maxOwners":1,"locks":[{alive_entry}]}}"#);
    eventually(
        "the deleted node's entry to be removed",
        Duration::from_secs(60),
        || async { (read_lock(scope).await.as_deref() == Some(want.as_str())).then_some(()) },
    )
    .await;
    let reclaimed = format!("kured_lock_reclaimed_total{{node=\"{}\"}} 1", names[0]);
    eventually("the reclaim to be counted", Duration::from_secs(30), || async {
        sim.metrics()
            .await
            .ok()
            .filter(|m| m.contains(&reclaimed))
            .map(|_| ())
    })
    .await;

    // The agent looks again every --period (3 s): give it several rounds against the live entry.
    eventually(
        "the agent to wait for the lock over three more rounds",
        Duration::from_secs(60),
        || async { (log_lines(&sim, "reboot required; waiting for the lock").len() >= 4).then_some(()) },
    )
    .await;
    assert_eq!(
        read_lock(scope).await.as_deref(),
        Some(want.as_str()),
        "the existing node's entry stays, byte for byte"
    );
    let lines = log_lines(&sim, RECLAIMED);
    assert_eq!(lines.len(), 1, "only the deleted node's entry:\n{}", sim.log());
    assert_eq!(lines[0]["holder"], gone.as_str());
    assert_eq!(sim.reboots(), 0, "the slot is still taken");
    let metrics = sim.metrics().await.expect("the agent's /metrics");
    assert!(metrics.contains(&reclaimed), "{reclaimed} in:\n{metrics}");
}
