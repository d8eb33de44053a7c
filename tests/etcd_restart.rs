//! The agent across a restart of the test cluster's etcd, mid-drain: the API server stays up but
//! fails or stalls requests until etcd is back, and every watch starts over. Its own test binary,
//! since the restart disturbs every client of the cluster: cargo runs test binaries one after
//! another, so no other test runs meanwhile (run it only on a test cluster nobody else is using at
//! the time). Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use support::cluster::{run_dir, testcluster};
use support::rig::Rig;

/// The pid of the etcd the test cluster runs, from the pid file `scripts/testcluster` keeps.
fn etcd_pid(run_dir: &std::path::Path) -> String {
    let file = run_dir.join("pids/etcd.pid");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_agent_finishes_its_cycle_across_an_etcd_restart_mid_drain() {
    let rig = Rig::new("etcd-restart").await;
    let sim = rig.start_held(&[]).await;

    let run_dir = run_dir();
    let before = etcd_pid(&run_dir);
    testcluster(&["restart", "etcd"]).await;
    assert_ne!(etcd_pid(&run_dir), before, "etcd runs as a new process");

    rig.let_the_drain_go().await;
    rig.settled_after_one_drain(&sim).await;
}
