//! The agent's Events on its Node, as the API server has them: a whole reboot cycle reports each
//! step once and in order, and a node waiting for the lock round after round has one
//! `WaitingForLock` Event whose series counts the rounds (and an agent restarted meanwhile does
//! not report the reboot as needed anew). The agents hold only the manifest's
//! RBAC (`tests/support/agents.rs`), so a permission the Events need and the manifest lacks fails
//! here too. Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use support::access;
use support::agents::{Fleet, back_from_one_reboot};
use support::faultproxy::{Fault, Rule};
use support::objects::{create_deployment, running_on};
use support::observer::{read_lock, upstream_entry, write_lock};
use support::rig::{Rig, SETTLE};
use support::scope::Scope;
use support::simulated::SimulatedNode;
use support::wait::eventually_or;

/// Where the agents put the Events of Nodes.
const NAMESPACE: &str = "default";

/// The Events kured's agent reported about Node `node`, in the order they occurred (their
/// `eventTime`, to the microsecond).
async fn node_events(scope: &Scope, node: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(scope.client.clone(), NAMESPACE);
    let mut events: Vec<Event> = api
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("listing the Events in {NAMESPACE}: {e}"))
        .items
        .into_iter()
        .filter(|e| e.reporting_instance.as_deref() == Some(node))
        .collect();
    events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    events
}

fn reason(event: &Event) -> &str {
    event.reason.as_deref().unwrap_or_default()
}

fn reasons(events: &[Event]) -> Vec<&str> {
    events.iter().map(reason).collect()
}

fn series_count(event: &Event) -> i32 {
    event.series.as_ref().map_or(1, |s| s.count)
}

/// What every Event of ours says of itself: reported by the agent of `node`, about Node `node`.
fn assert_about_the_node(events: &[Event], node: &str) {
    for event in events {
        let regarding = event.regarding.as_ref().expect("regarding");
        assert_eq!(
            (regarding.kind.as_deref(), regarding.name.as_deref()),
            (Some("Node"), Some(node)),
            "{event:?}"
        );
        assert_eq!(
            event.reporting_controller.as_deref(),
            Some("kured.dev/agent"),
            "{event:?}"
        );
        assert!(event.event_time.is_some() && event.action.is_some(), "{event:?}");
    }
}

/// Deletes the Events of `node` (they would expire in an hour anyway).
async fn delete_events(scope: &Scope, node: &str) {
    let api: Api<Event> = Api::namespaced(scope.client.clone(), NAMESPACE);
    for event in node_events(scope, node).await {
        if let Some(name) = &event.metadata.name {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }
}

/// Waits until the Events of `node` satisfy `done`; on time-out, fails with what was seen and
/// the agent's log.
async fn until_events(
    scope: &Scope,
    sim: &SimulatedNode,
    what: &str,
    limit: Duration,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let seen = std::sync::Mutex::new(Vec::new());
    eventually_or(
        limit,
        || async {
            let events = node_events(scope, &sim.name).await;
            let found = done(&events).then(|| events.clone());
            *seen.lock().expect("the lock") = events;
            found
        },
        || {
            let seen = seen.lock().expect("the lock");
            let summary: Vec<String> = seen
                .iter()
                .map(|e| {
                    format!(
                        "{} ×{}: {}",
                        reason(e),
                        series_count(e),
                        e.note.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            format!(
                "timed out after {limit:?} waiting for {what}; Events of {}: {summary:#?}\nagent log:\n{}",
                sim.name,
                sim.log_tail(40)
            )
        },
    )
    .await
}

#[tokio::test]
async fn a_reboot_cycle_reports_each_step_in_order() {
    let fleet = Fleet::new("events-cycle", 1).await;
    let (scope, node) = (&fleet.scope, &fleet.names[0]);
    // A pod for the drain to evict.
    create_deployment(scope, "web", 1, None).await;
    running_on(scope, "app=web", &[node]).await;

    let sim = fleet.start(0, &[]);
    let events = until_events(
        scope,
        &sim,
        "the lock released after the reboot",
        Duration::from_secs(180),
        |events| reasons(events).contains(&"LockReleased"),
    )
    .await;
    assert_eq!(sim.reboots(), 1, "rebooted once");
    assert_eq!(read_lock(scope).await, None, "the lock released");
    assert_eq!(
        reasons(&events),
        [
            "RebootRequired",
            "LockAcquired",
            "Cordoned",
            "Drained",
            "Rebooting",
            "Rebooted",
            "Uncordoned",
            "LockReleased"
        ],
        "{events:#?}"
    );
    assert_about_the_node(&events, node);
    assert!(
        events
            .iter()
            .all(|e| e.type_.as_deref() == Some("Normal") && e.series.is_none()),
        "all Normal, each once: {events:#?}"
    );
    // How long the node was away, from the time the agent before the reboot published.
    let rebooted = events.iter().find(|e| reason(e) == "Rebooted").expect("Rebooted");
    let note = rebooted.note.as_deref().unwrap_or_default();
    let away = note
        .strip_prefix("back from its reboot, ")
        .and_then(|rest| rest.strip_suffix(" after it was asked for"))
        .unwrap_or_else(|| panic!("the Rebooted note says how long the node was away: {note:?}"));
    let away = kured::duration::GoDuration::parse(away)
        .unwrap_or_else(|e| panic!("the Rebooted note's time away {away:?}: {e}"));
    assert!(
        away.to_std().is_some_and(|d| d < Duration::from_secs(180)),
        "away no longer than the test waited: {note:?}"
    );
    let drained = events.iter().find(|e| reason(e) == "Drained").expect("Drained");
    assert!(
        drained
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("pods evicted: 1,")),
        "{drained:?}"
    );
    delete_events(scope, node).await;
}

#[tokio::test]
async fn a_node_waiting_for_the_lock_has_one_event_whose_series_grows() {
    let fleet = Fleet::new("events-wait", 2).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    // Node 1 holds the lock for good (TTL 0: no expiry) and exists, so nothing reclaims it; no
    // agent runs on it.
    let holder = upstream_entry(&names[1], &jiff::Timestamp::now().to_string(), 0);
    write_lock(scope, Some(&holder)).await;

    // Rounds every 3 s (the simulated nodes' --period): a first patch of the series a minute
    // after the Event's creation, then one a minute.
    let sim = fleet.start(0, &[]);
    let waiting = |events: &[Event]| -> Vec<Event> {
        events
            .iter()
            .filter(|e| reason(e) == "WaitingForLock")
            .cloned()
            .collect()
    };
    let first = until_events(
        scope,
        &sim,
        "a WaitingForLock series",
        Duration::from_secs(150),
        |events| waiting(events).iter().any(|e| series_count(e) >= 2),
    )
    .await;
    let count = series_count(&waiting(&first)[0]);
    let later = until_events(
        scope,
        &sim,
        "the series to count more rounds",
        Duration::from_secs(150),
        |events| waiting(events).iter().any(|e| series_count(e) > count),
    )
    .await;

    let series = waiting(&later);
    assert_eq!(
        series.len(),
        1,
        "one WaitingForLock Event, not one a round: {later:#?}"
    );
    assert_eq!(
        reasons(&later),
        ["RebootRequired", "WaitingForLock"],
        "nothing else: {later:#?}"
    );
    assert_about_the_node(&later, &names[0]);
    let event = &series[0];
    assert_eq!(
        event.note.as_deref(),
        Some(format!("lock held by {}", names[1]).as_str())
    );
    let observed = event.series.as_ref().expect("a series").last_observed_time.0;
    let created = event.event_time.as_ref().expect("an event time").0;
    assert!(
        observed > created,
        "last observed {observed} after the first occurrence {created}"
    );
    assert_eq!(sim.reboots(), 0, "no reboot without the lock");

    // An agent started again (a SIGKILL, as a kubelet restarts it) still waiting: the reboot it
    // needs is the one already reported. Its waiting is a series of its own (the series is
    // known to the agent that wrote it only: the Events rule has no read).
    sim.kill_agent().await;
    let restarted = until_events(
        scope,
        &sim,
        "the restarted agent's WaitingForLock",
        Duration::from_secs(90),
        |events| sim.agent_starts() == 2 && waiting(events).len() == 2,
    )
    .await;
    assert_eq!(
        reasons(&restarted),
        ["RebootRequired", "WaitingForLock", "WaitingForLock"],
        "RebootRequired once across the restart: {restarted:#?}"
    );
    delete_events(scope, &names[0]).await;
}

#[tokio::test]
async fn without_the_rbac_for_events_a_cycle_completes_and_says_so_once_per_agent() {
    let fleet = Fleet::new("events-refused", 1).await;
    let (scope, node) = (&fleet.scope, &fleet.names[0]);
    // The fleet's ClusterRole without the Events rule, as upstream's manifests have it.
    let create = access::request("create", "events.k8s.io/events", NAMESPACE, "");
    fleet
        .withdraw_rule(
            |r| r.api_groups.as_deref() == Some(&["events.k8s.io".to_owned()]),
            &create,
        )
        .await;

    let sim = fleet.start(0, &[]);
    back_from_one_reboot(scope, &sim, Duration::from_secs(180)).await;
    assert_eq!(node_events(scope, node).await.len(), 0, "no Event written");
    // The agent before the reboot and the one after: each logs the refusal once, however many
    // Events it had to report.
    let refusals = sim.log_lines_with("creating an Event failed");
    assert_eq!(refusals, 2, "agent log:\n{}", sim.log_tail(60));
}

/// The Events writer stuck and the API server down across the reboot. Every Event write is held
/// unanswered (for far longer than the test waits) from the start, so the writer is stuck when
/// the agent flushes it before rebooting: the reboot goes regardless. The API server then looks
/// stopped from the reboot until after the next agent started (the reboot itself needs the API:
/// the agent reads the lock just before it). The cycle completes, and the Events after the
/// outage are written.
#[tokio::test]
async fn a_stuck_events_writer_and_an_api_outage_across_the_reboot_hold_up_neither() {
    let rig = Rig::new("events-outage").await;
    let held = rig.proxy.inject(Rule::new(
        "create",
        "events",
        Fault::Hold(Duration::from_secs(3600)),
    ));
    let sim = rig.start(&[]);
    eventually_or(
        SETTLE,
        || async { (sim.reboot_requests() >= 1).then_some(()) },
        || format!("no reboot asked for; agent log:\n{}", sim.log_tail(30)),
    )
    .await;
    rig.proxy.down_for(Duration::from_secs(10)).await;
    assert!(
        held.fired() >= 1,
        "the reboot was asked for while an Event write was held"
    );
    held.clear();
    eventually_or(
        SETTLE,
        || async { (sim.agent_starts() == 2).then_some(()) },
        || format!("no agent after the reboot; log:\n{}", sim.log_tail(30)),
    )
    .await;
    assert!(
        rig.proxy.is_down(),
        "the next agent started while the API server looked stopped (connections dropped: {})",
        rig.proxy.dropped()
    );
    rig.proxy.up().await;
    rig.settled_after_one_drain(&sim).await;
    assert!(
        sim.log_entries()
            .iter()
            .any(|e| e.to_string().contains("Connection refused")),
        "the next agent met the outage; log:\n{}",
        sim.log_tail(30)
    );
    let after = ["Rebooted", "Uncordoned", "LockReleased"];
    until_events(
        &rig.scope,
        &sim,
        "the Events of the cycle after the outage",
        Duration::from_secs(60),
        |events| after.iter().all(|r| reasons(events).contains(r)),
    )
    .await;
    delete_events(&rig.scope, &sim.name).await;
}
