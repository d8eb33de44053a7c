//! The agent under API faults: a real agent on a simulated node talks to the test cluster through
//! the fault proxy (tests/support/faultproxy.rs), which fails chosen requests, black-holes
//! everything or plays a stopped API server. An independent observer (tests/support/observer.rs)
//! checks throughout that at most one node is cordoned by kured and that no node goes down
//! uncordoned, and at the end that the node was rebooted exactly once, uncordoned, the lock free,
//! no agent crash-looping. Each test also asserts that its fault fired. Needs
//! `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::time::Duration;

use support::faultproxy::{Fault, Rule};
use support::rig::{Rig, SETTLE};
use support::wait::eventually;

#[tokio::test]
async fn evictions_answered_503_or_reset_a_few_times_do_not_fail_the_drain() {
    let rig = Rig::new("apifault-evict").await;
    let unavailable = rig
        .proxy
        .inject(Rule::new("create", "pods/eviction", Fault::Status(503)).first(2));
    let reset = rig
        .proxy
        .inject(Rule::new("create", "pods/eviction", Fault::Reset).first(1));

    let sim = rig.start(&[]);
    rig.settled_after_one_drain(&sim).await;
    assert_eq!((unavailable.fired(), reset.fired()), (2, 1));
}

#[tokio::test]
async fn with_force_reboot_a_transient_eviction_error_never_reboots_an_undrained_node() {
    let rig = Rig::new("apifault-evict-force").await;
    let before = rig.pods_on_the_node().await;
    let unavailable = rig
        .proxy
        .inject(Rule::new("create", "pods/eviction", Fault::Status(503)).first(2));

    let sim = rig.start(&["--force-reboot"]);
    rig.observer.assert_settled(&[(&sim, 1)], SETTLE).await;
    assert_eq!(unavailable.fired(), 2);
    // After its reboot the node has nothing left to drain: a pod from before that is still
    // there was on the node when it rebooted.
    let left: Vec<String> = rig
        .pods_on_the_node()
        .await
        .intersection(&before)
        .cloned()
        .collect();
    assert!(
        left.is_empty(),
        "pods {left:?} were never evicted: the node rebooted undrained; agent log:\n{}",
        sim.log_tail(30)
    );
}

#[tokio::test]
async fn with_force_reboot_a_failing_cordon_never_reboots_the_node_uncordoned() {
    let rig = Rig::new("apifault-cordon").await;
    let patches = rig
        .proxy
        .inject(Rule::new("patch", "nodes", Fault::Status(503)).named(&rig.node));

    let sim = rig.start(&["--force-reboot"]);
    eventually("several failed node patches", SETTLE, || async {
        (patches.fired() >= 3).then_some(())
    })
    .await;
    // A few more periods for an agent that would reboot anyway; the observer records a node
    // going down uncordoned whenever it happens.
    tokio::time::sleep(Duration::from_secs(10)).await;
    patches.clear();
    rig.settled_after_one_drain(&sim).await;
}

#[tokio::test]
async fn lock_reads_failing_after_the_reboot_do_not_keep_the_node_for_a_period() {
    let rig = Rig::new("apifault-lockread").await;
    // An hour between rounds: only a retry of the failed read brings the node back in time.
    let sim = rig.start(&["--period=1h"]);
    eventually("the reboot", SETTLE, || async {
        (sim.reboots() == 1).then_some(())
    })
    .await;
    let reads = rig
        .proxy
        .inject(Rule::new("get", "daemonsets", Fault::Status(503)));
    eventually("the new agent to fail to read the lock", SETTLE, || async {
        (reads.fired() >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    reads.clear();
    rig.observer
        .assert_settled(&[(&sim, 1)], Duration::from_secs(120))
        .await;
}

#[tokio::test]
async fn a_black_hole_mid_drain_does_not_abandon_the_drain() {
    let rig = Rig::new("apifault-blackhole").await;
    let sim = rig.start_held(&[]).await;

    rig.proxy.black_hole_for(Duration::from_secs(20));
    eventually("the agent's requests to vanish", SETTLE, || async {
        (rig.proxy.held() >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(rig.proxy.dropped() >= 1, "the black hole dropped the connections");
    rig.let_the_drain_go().await;
    rig.settled_after_one_drain(&sim).await;
}

#[tokio::test]
async fn the_api_server_down_for_30s_mid_drain_does_not_abandon_the_drain() {
    let rig = Rig::new("apifault-down-drain").await;
    let sim = rig.start_held(&[]).await;

    rig.proxy.down_for(Duration::from_secs(30)).await;
    assert!(rig.proxy.dropped() >= 1, "the agent's connections were dropped");
    rig.proxy.up().await;
    rig.let_the_drain_go().await;
    rig.settled_after_one_drain(&sim).await;
}

#[tokio::test]
async fn the_api_server_down_for_30s_mid_release_still_releases() {
    let rig = Rig::new("apifault-down-release").await;
    let sim = rig.start(&["--lock-release-delay=15s"]);
    // Back from the reboot and uncordoned, the agent keeps the lock for the release delay.
    rig.observer
        .until("the node back, uncordoned, the lock still held", SETTLE, |s| {
            sim.reboots() == 1 && !s.cordoned(&rig.node) && s.holds(&rig.node)
        })
        .await;
    rig.proxy.down_for(Duration::from_secs(30)).await;
    rig.proxy.up().await;
    assert!(
        rig.observer.snapshot().holds(&rig.node),
        "the release fell due while the API server was down, so it has not happened yet"
    );
    rig.settled_after_one_drain(&sim).await;
}

/// The fresh read of the lock right before the reboot fails: no reboot until it is read, and
/// then exactly one, the node cordoned throughout.
#[tokio::test]
async fn the_lock_read_before_the_reboot_failing_holds_the_reboot_until_it_succeeds() {
    let rig = Rig::new("apifault-confirm").await;
    let sim = rig.start_held(&["--period=5s"]).await;
    // From here on, the only read of the lock from the API server is the one before the reboot.
    let reads = rig
        .proxy
        .inject(Rule::new("get", "daemonsets", Fault::Status(503)).first(2));
    rig.let_the_drain_go().await;
    sim.logged(
        "reading the lock before the reboot; not rebooting until it is read",
        SETTLE,
    )
    .await;
    assert!(reads.fired() >= 1, "the read before the reboot failed");
    assert_eq!(sim.reboots(), 0, "no reboot while the lock could not be read");
    rig.settled_after_one_drain(&sim).await;
}

/// A drain that fails gives the node back: uncordon, then release. The release fails (503) and
/// the agent is killed right there, the node uncordoned and the lock still its own. The next
/// agent takes the entry for an unfinished cycle: it drains again, and once the budget allows,
/// reboots once and releases — nothing left cordoned, the lock free.
#[tokio::test]
async fn killed_between_a_give_backs_uncordon_and_its_release() {
    let rig = Rig::new("apifault-giveback-kill").await;
    let sim = rig.start_held(&["--drain-timeout=3s", "--period=5s"]).await;
    let releases = rig
        .proxy
        .inject(Rule::new("update", "daemonsets", Fault::Status(503)));
    sim.logged(
        "drain failed; giving the node back and releasing the lock",
        SETTLE,
    )
    .await;
    rig.observer
        .until("the node uncordoned, the lock still held", SETTLE, |s| {
            !s.cordoned(&rig.node) && s.holds(&rig.node)
        })
        .await;
    eventually("the release to fail", SETTLE, || async {
        (releases.fired() >= 1).then_some(())
    })
    .await;
    // While every release fails, the agent can only try it again: it stays where it is.
    let seen = rig.observer.snapshot();
    assert!(
        !seen.cordoned(&rig.node) && seen.holds(&rig.node) && sim.reboots() == 0,
        "not between the uncordon and the release: {seen:?}; agent log:\n{}",
        sim.log_tail(20)
    );
    sim.kill_agent().await;
    assert_eq!(sim.kills(), 1, "one agent killed");
    releases.clear();
    rig.let_the_drain_go().await;
    rig.observer.assert_settled(&[(&sim, 1)], SETTLE).await;
}

/// No proxy here: the agent's own HTTP server must answer while a round takes long.
#[tokio::test]
async fn healthz_and_metrics_answer_within_a_second_throughout_a_long_drain() {
    let rig = Rig::new("apifault-healthz").await;
    rig.hold_the_drain().await;
    let sim = rig.agents.start(&rig.scope, &rig.node, &["--drain-timeout=10m"]);
    rig.observer
        .until("the node cordoned", SETTLE, |s| s.cordoned(&rig.node))
        .await;

    // Two minutes, a probe of each every second, as a liveness probe and a scraper would.
    let mut failures = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    for second in 0..120 {
        ticks.tick().await;
        for path in ["/healthz", "/metrics"] {
            match sim.probe(path, Duration::from_secs(1)).await {
                Ok(200) => {}
                Ok(code) => failures.push(format!("{second}s {path}: status {code}")),
                Err(e) => failures.push(format!("{second}s {path}: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 240 probes failed during the drain, the first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(sim.reboots(), 0, "the budget held the drain throughout");
    rig.let_the_drain_go().await;
    rig.settled_after_one_drain(&sim).await;
}
