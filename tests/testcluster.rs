//! `scripts/testcluster` under faults: a port already taken, a component that exits early.
//! Each case uses a run directory and a port range of its own, beside the shared test cluster.
//! Needs the test cluster's binaries (built by `scripts/testcluster up`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testcluster(run_dir: &Path, base_port: u32, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/testcluster");
    let mut cmd = Command::new(script);
    cmd.args(args)
        .env("KURED_TESTCLUSTER_DIR", run_dir)
        .env("KURED_TESTCLUSTER_PORT", base_port.to_string());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("running scripts/testcluster")
}

fn pid_alive(pid_file: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    // A zombie has exited; it only waits to be reaped.
    !stat.is_empty() && !stat.split(") ").nth(1).is_some_and(|rest| rest.starts_with('Z'))
}

#[test]
fn a_taken_port_is_named_with_its_component_and_nothing_starts() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let run = tmp.path().join("run");
    // kube-apiserver's port is the third of the range.
    let holder = TcpListener::bind("127.0.0.1:27442").expect("binding 127.0.0.1:27442 for the test");
    let out = testcluster(&run, 27440, &[], &["up"]);
    drop(holder);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail; stderr: {stderr}");
    assert!(
        stderr.contains("port 27442") && stderr.contains("kube-apiserver"),
        "the message names the port and the component: {stderr}"
    );
    assert!(
        !run.exists(),
        "nothing was started, so no run directory is left: {}",
        run.display()
    );
}

#[test]
fn a_component_that_exits_early_is_named_with_its_log_and_the_rest_is_stopped() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let run = tmp.path().join("run");
    let out = testcluster(
        &run,
        27450,
        &[("KURED_TESTCLUSTER_APISERVER_ARGS", "--no-such-flag-for-this-test")],
        &["up"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail; stderr: {stderr}");
    assert!(
        stderr.contains("kube-apiserver exited early"),
        "names the component: {stderr}"
    );
    let log = run.join("logs/kube-apiserver.log");
    assert!(
        stderr.contains(&log.display().to_string()),
        "names the log: {stderr}"
    );
    let log_text = std::fs::read_to_string(&log).expect("the log exists");
    assert!(
        log_text.contains("no-such-flag-for-this-test"),
        "the log says why: {log_text}"
    );
    assert!(
        !pid_alive(&run.join("pids/etcd.pid")),
        "etcd, started before, was stopped"
    );
    assert!(!pid_alive(&run.join("pids/kube-apiserver.pid")));

    let down = testcluster(&run, 27450, &[], &["down"]);
    assert!(
        down.status.success(),
        "down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!run.exists(), "down removes the run directory");
}

#[test]
fn bad_arguments_are_refused_with_usage() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let run = tmp.path().join("run");
    let out = testcluster(&run, 27460, &[], &["nodes", "zero"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a positive count, got 'zero'"));
    let out = testcluster(&run, 27460, &[], &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/testcluster up"));
    let out = testcluster(&run, 70000, &[], &["up"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KURED_TESTCLUSTER_PORT=70000"));
}
