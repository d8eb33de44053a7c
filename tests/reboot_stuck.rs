//! Reboots that do not happen, with the real `kured` binary: a reboot command that hangs, run
//! through a simulated node (on the test cluster, under the shipped manifest's RBAC), and the
//! signal method where it cannot work or may not. Needs `scripts/testcluster up` (except the
//! PID 1 case) and root (for `unshare`).

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::agents::Fleet;
use support::http::free_port;
use support::observer::read_lock;
use support::simulated::{SimulatedNode, in_pid_namespace};
use support::wait::eventually;

/// A process (not a zombie) whose command line is `cmdline` (its arguments, each ended by NUL).
fn running(cmdline: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let line = std::fs::read(entry.path().join("cmdline")).ok()?;
        // A zombie has an empty command line.
        (line == cmdline.as_bytes()).then_some(pid)
    })
}

/// A reboot command that never returns holds the node drained and the lock taken, while the
/// agent looks healthy. With the time-out, the command is killed after 60 s (the real constant)
/// and the reboot is reported as failed: in the log, in `kured_reboot_failures_total`, and tried
/// again later; the loop goes on, so `/healthz` stays ok.
#[tokio::test]
async fn a_hung_reboot_command_is_killed_and_reported_as_a_failed_reboot() {
    let fleet = Fleet::new("reboot-hung", 1).await;
    let (scope, names) = (&fleet.scope, &fleet.names);
    let dir = tempfile::tempdir().expect("a temp dir");
    let ran = dir.path().join("ran");
    // Runs in the simulated node's mount namespace (node-init is its PID 1), which shares our
    // files. It says it ran, then hangs, as a `sleep` with a length no other process uses.
    let length = 1_000_000 + std::process::id();
    let command = format!(
        "--reboot-command=sh -c 'echo ran > {}; exec sleep {length}'",
        ran.display()
    );
    let sim = SimulatedNode::start_as(
        scope,
        &names[0],
        &fleet.agents.kubeconfig,
        &["--reboot-method=command", &command],
    );

    let hung = format!("sleep\0{length}\0");
    eventually("the reboot command to hang", Duration::from_secs(120), || async {
        running(&hung)
    })
    .await;
    // The round is within its bound (the command's time-out): /healthz says so meanwhile.
    let (status, body) = sim
        .get("/healthz", Duration::from_secs(10))
        .await
        .expect("/healthz during the hang");
    assert_eq!(
        (status, body.as_str()),
        (200, "ok\n"),
        "not stuck while within the time-out"
    );
    let failed = eventually(
        "the hung reboot command to be killed and the reboot reported as failed",
        Duration::from_secs(240),
        || async {
            sim.log_entries()
                .into_iter()
                .find(|v| v["msg"] == "reboot failed; the node stays drained and the lock held; trying again")
        },
    )
    .await;
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.ends_with("failed: still running after 60s, killed"),
        "{error}"
    );
    assert_eq!(failed["level"], "ERROR");

    // The fault fired: the command ran, and no process of it runs any more.
    assert_eq!(
        std::fs::read_to_string(&ran).expect("the reboot command ran"),
        "ran\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(pid) = running(&hung) {
        assert!(
            Instant::now() < deadline,
            "the hung command still runs as PID {pid}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let timeouts = format!(
        "kured_reboot_failures_total{{node=\"{}\",reason=\"timeout\"}} 1",
        names[0]
    );
    let metrics = eventually("the failure to be counted", Duration::from_secs(30), || async {
        sim.metrics().await.ok().filter(|m| m.contains(&timeouts))
    })
    .await;
    assert!(metrics.contains(&timeouts), "{metrics}");
    let (status, body) = sim
        .get("/healthz", Duration::from_secs(10))
        .await
        .expect("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"), "the loop goes on");
    assert_eq!(sim.reboots(), 0, "nothing rebooted");
    let lock = read_lock(scope).await.unwrap_or_default();
    assert!(
        lock.contains(&format!("\"nodeID\":\"{}\"", names[0])),
        "the node keeps the lock to try again: {lock}"
    );
}

/// Without `hostPID`, the agent is PID 1 of its container, and a signal to PID 1 goes to itself:
/// no reboot could ever happen. It refuses to start, saying why, before it touches anything.
#[test]
fn an_agent_that_is_pid_1_refuses_the_signal_method() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // Credentials for an API server that is not there: the agent must stop before any request.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        r#"{"apiVersion":"v1","kind":"Config","clusters":[{"name":"c","cluster":{"server":"https://127.0.0.1:9"}}],
            "users":[{"name":"u","user":{"token":"t"}}],"contexts":[{"name":"c","context":{"cluster":"c","user":"u"}}],
            "current-context":"c"}"#,
    )
    .expect("writing a kubeconfig");
    let sentinel = dir.path().join("reboot-required");
    std::fs::write(&sentinel, "").expect("creating the sentinel");
    let port = free_port();
    // `exec` keeps the shell's PID, 1 in the new PID namespace: the script prints it first.
    let mut child = in_pid_namespace()
        .args(["sh", "-c", r#"echo "pid $$"; exec "$@""#, "sh"])
        .arg(env!("CARGO_BIN_EXE_kured"))
        .args([
            "--node-id=n1",
            "--reboot-method=signal",
            "--metrics-host=127.0.0.1",
            &format!("--metrics-port={port}"),
            &format!("--kubeconfig={}", kubeconfig.display()),
            &format!("--reboot-sentinel={}", sentinel.display()),
        ])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running unshare (needs root)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the agent") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
            panic!("the agent as PID 1 still runs after 30 s; its output:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert_eq!(stdout, "pid 1\n", "the agent ran as PID 1 of its namespace");
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "kured: checking the reboot method: --reboot-method=signal cannot reboot this node: PID 1, \
         which the signal goes to, is this agent itself, so the pod does not share the host's PID \
         namespace (set hostPID: true in the pod's spec)",
        "{stderr}"
    );
}

/// When PID 1 is not systemd (here node-init, a bash script, which does take the signal), the agent warns at
/// start and goes on: the reboot happens.
#[tokio::test]
async fn an_init_that_is_not_systemd_is_warned_about_and_still_signalled() {
    let fleet = Fleet::new("reboot-not-systemd", 1).await;
    let sim = fleet.start(0, &[]);
    eventually("the reboot", Duration::from_secs(120), || async {
        (sim.reboots() == 1).then_some(())
    })
    .await;
    let warning = sim
        .log_entries()
        .into_iter()
        .find(|v| v["level"] == "WARN" && v["msg"].as_str().is_some_and(|m| m.contains("not systemd")))
        .unwrap_or_else(|| panic!("no warning about PID 1 in:\n{}", sim.log()));
    assert!(
        warning["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with(r#"--reboot-method=signal: PID 1 is "bash", not systemd"#)),
        "{warning}"
    );
}
