//! The reboot-loop guard on the test cluster: a node whose sentinel is back after every boot (a
//! package or sentinel command that always asks for another reboot) is rebooted once as usual,
//! then backs off (phase `backing-off`, the published `rebootLoop` with its count and `until`),
//! each back-off twice the one before, and is never rebooted before the `until` it published —
//! checked against the times node-init recorded the reboot requests at. Needs
//! `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::time::Duration;

use jiff::Timestamp;
use support::agents::Fleet;
use support::observer::Observer;
use support::simulated::{NodeOptions, SimulatedNode};

/// Generous: a few reboot cycles and back-offs of seconds each, on a shared machine.
const SETTLE: Duration = Duration::from_secs(240);

const WINDOW: &str = "--reboot-loop-window=1h";

/// One back-off the node published: the count, the reboot it was counted for, no reboot before
/// `until`.
#[derive(Debug, Clone, PartialEq)]
struct BackOff {
    count: u64,
    reboot: Timestamp,
    until: Timestamp,
    detail: String,
}

fn timestamp(value: &serde_json::Value, what: &str) -> Timestamp {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what} is an RFC 3339 time: {value}"))
}

/// The back-offs `node`'s agent published in phase `backing-off`, in order, each distinct one
/// once.
fn back_offs(observer: &Observer, node: &str) -> Vec<BackOff> {
    let mut seen: Vec<BackOff> = Vec::new();
    for state in observer.published(node) {
        if state["phase"] != "backing-off" {
            continue;
        }
        let guard = &state["rebootLoop"];
        let back_off = BackOff {
            count: guard["count"]
                .as_u64()
                .unwrap_or_else(|| panic!("rebootLoop has a count: {state}")),
            reboot: timestamp(&guard["reboot"], "rebootLoop.reboot"),
            until: timestamp(&guard["until"], "rebootLoop.until"),
            detail: state["detail"].as_str().unwrap_or_default().to_owned(),
        };
        if !seen
            .iter()
            .any(|b| (b.count, b.until) == (back_off.count, back_off.until))
        {
            seen.push(back_off);
        }
    }
    seen
}

/// A node whose sentinel is back after each of its first `returns` reboots, its agent started
/// with the guard's window and `backoff`, and an observer.
async fn looping(test: &str, returns: u32, backoff: &str) -> (Fleet, Observer, SimulatedNode) {
    let fleet = Fleet::new(test, 1).await;
    let observer = Observer::start(&fleet.scope, 1, &[]).await;
    let options = NodeOptions {
        sentinel_returns: returns,
        ..NodeOptions::default()
    };
    let backoff = format!("--reboot-loop-backoff={backoff}");
    let sim = fleet.start_with(0, &options, &[WINDOW, &backoff]);
    (fleet, observer, sim)
}

/// Reboot request `k` (0 first) came no earlier than `back_off.until`.
fn not_before(sim: &SimulatedNode, k: usize, back_off: &BackOff) {
    let requests = sim.reboot_request_times();
    let at = requests
        .get(k)
        .unwrap_or_else(|| panic!("reboot request {k} recorded: {requests:?}"));
    assert!(
        *at >= back_off.until,
        "reboot {} was asked for at {at}, before the back-off's until {}: {back_off:?}; all requests: {requests:?}\nagent log:\n{}",
        k + 1,
        back_off.until,
        sim.log_tail(30)
    );
}

#[tokio::test]
async fn a_sentinel_back_after_every_boot_backs_off_twice_as_long_each_time() {
    let (_fleet, observer, sim) = looping("loop-backoff", 2, "3s").await;
    // Reboot 1 as usual; the sentinel is back: back-off 1 (3 s), reboot 2; back again: back-off
    // 2 (6 s), reboot 3; the sentinel stays away after that.
    observer.assert_settled(&[(&sim, 3)], SETTLE).await;

    let node = &sim.name;
    let seen = back_offs(&observer, node);
    let counts: Vec<u64> = seen.iter().map(|b| b.count).collect();
    assert_eq!(
        counts,
        [1, 2],
        "one back-off after each of the first two reboots, counted 1 then 2, each with one until: {seen:#?}\npublished: {:#?}\nagent log:\n{}",
        observer.published(node),
        sim.log_tail(60)
    );
    for back_off in &seen {
        assert!(
            back_off.detail.contains("reboot loop"),
            "the detail says it is a reboot loop: {back_off:?}"
        );
    }
    let (first, second) = (&seen[0], &seen[1]);
    assert!(
        second.until.duration_since(second.reboot) > first.until.duration_since(first.reboot),
        "the second back-off is longer than the first: {seen:#?}"
    );
    assert!(
        second.reboot > first.reboot,
        "each counted for its own reboot: {seen:#?}"
    );
    not_before(&sim, 1, first);
    not_before(&sim, 2, second);
}

#[tokio::test]
async fn a_back_off_survives_the_agent_killed_meanwhile() {
    let (fleet, observer, sim) = looping("loop-kill", 1, "20s").await;
    let node = &sim.name;
    observer
        .until_seen(
            "the node to back off after its first reboot",
            SETTLE,
            &[&sim],
            |s| sim.reboots() == 1 && s.in_phase(node, "backing-off"),
        )
        .await;
    sim.kill_agent().await;
    let published = support::observer::published_state(&fleet.scope.node(node).await).unwrap_or_default();
    assert!(
        published["phase"] == "backing-off" && sim.reboots() == 1,
        "the agent was killed while backing off: {published}\n{}",
        observer.report(&[&sim])
    );

    observer.assert_settled(&[(&sim, 2)], SETTLE).await;
    let seen = back_offs(&observer, node);
    assert!(
        seen.len() == 1 && seen[0].count == 1,
        "one back-off, whose until the restarted agent kept: {seen:#?}\npublished: {:#?}\nagent log:\n{}",
        observer.published(node),
        sim.log_tail(60)
    );
    not_before(&sim, 1, &seen[0]);
}
