//! The `kured` binary as an operator runs it: exit codes, one-line errors, `kured schedule`,
//! and an agent serving its metrics from a real sentinel file (with the test cluster's
//! kubeconfig; its node does not exist there, which the agent reports and survives).

mod support;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cli::{kured, run};
use support::cluster::kubeconfig_path;
use support::http::{free_port, get_blocking};

#[test]
fn bad_flags_exit_2_with_one_line_naming_flag_and_value() {
    let out = run(kured().args(["--node-id=n1", "--start-time=25:00"]));
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(
        out.stderr.starts_with("kured: invalid --start-time \"25:00\""),
        "{out}"
    );

    let out = run(kured().env("KURED_REBOOT_DAYS", "mo,funday").arg("--node-id=n1"));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("\"funday\""));

    let out = run(&mut kured());
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--node-id"));
}

/// As in upstream kured, which reads its variables after its flags, a `KURED_*` variable wins
/// over its flag (a list's adds to it), and the agent says so when their values differ.
#[test]
fn a_variable_and_its_flag_meet_as_in_upstream_with_a_warning_naming_both() {
    let schedule = |vars: &[(&str, &str)]| {
        let out = run(kured()
            .envs(vars.iter().copied())
            .args([
                "schedule",
                "--time-zone=UTC",
                "--start-time=2:00",
                "--end-time=4:00",
            ])
            .args(["--at=2026-12-02T00:00:00Z", "--count=1"]));
        assert_eq!(out.code, Some(0), "{out}");
        (out.stdout, out.stderr)
    };
    let (stdout, stderr) = schedule(&[("KURED_TIME_ZONE", "Europe/Berlin")]);
    assert!(
        stdout.contains("between 02:00 and 04:00 Europe/Berlin"),
        "{stdout}"
    );
    assert_eq!(
        stderr,
        "kured: warning: both KURED_TIME_ZONE=\"Europe/Berlin\" and --time-zone=\"UTC\" are set; the \
         variable's value is used, as in upstream kured\n"
    );
    let (stdout, stderr) = schedule(&[("KURED_TIME_ZONE", "UTC")]);
    assert!(stdout.contains("between 02:00 and 04:00 UTC"), "{stdout}");
    assert_eq!(stderr, "", "the same value in both: nothing to warn about");
    let (stdout, _) = schedule(&[("KURED_TIME_ZONE", "")]);
    assert!(
        stdout.contains("between 02:00 and 04:00 UTC"),
        "an empty variable is unset: {stdout}"
    );

    // A list variable adds to its flag's values.
    let out = run(kured().env("KURED_REBOOT_DAYS", "tu").args([
        "schedule",
        "--reboot-days=mo",
        "--at=2026-12-02T00:00:00Z",
        "--count=1",
    ]));
    assert!(
        out.stdout.contains("Window  ---MonTue------------ between"),
        "{out}"
    );

    // The agent logs the warning at start, the notification URL's values not shown.
    let out = run(kured()
        .env("KURED_NOTIFY_URL", "slack://hook:T000/B000/FROMVARIABLE@webhook")
        .args([
            "--node-id=n1",
            "--notify-url=slack://hook:T000/B000/FROMFLAG@webhook",
        ])
        .arg("--kubeconfig=/nonexistent/kubeconfig"));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("both KURED_NOTIFY_URL and --notify-url are set, to different values"),
        "{out}"
    );
    assert!(
        !out.stderr.contains("FROMFLAG") && !out.stderr.contains("FROMVARIABLE"),
        "{out}"
    );
}

#[test]
fn schedule_prints_json_in_the_documented_shape() {
    let out = run(kured()
        .args([
            "schedule",
            "--at=2026-11-27T10:00:00Z",
            "--count=2",
            "--output=json",
        ])
        .args([
            "--reboot-days=fr,sa",
            "--start-time=22:00",
            "--end-time=04:00",
            "--time-zone=Europe/Berlin",
        ]));
    assert_eq!(out.code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["inside"], false);
    let windows = v["windows"].as_array().expect("windows");
    assert_eq!(windows.len(), 2);
    // Friday 22:00 in Berlin (UTC+1 in November); Saturday night continues into Sunday 04:00
    // only on days in the list, so Friday's window runs to midnight then Saturday's begins.
    assert_eq!(windows[0]["opens"], "2026-11-27T22:00:00+01:00");
    for w in windows {
        let keys: Vec<&String> = w.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["closes", "opens"]);
        for k in ["opens", "closes"] {
            let s = w[k].as_str().expect("string");
            s.parse::<jiff::Timestamp>()
                .unwrap_or_else(|e| panic!("{k} {s:?} is not RFC 3339: {e}"));
        }
    }
}

#[test]
fn schedule_text_says_whether_inside() {
    let out = run(kured().args([
        "schedule",
        "--at=2026-11-27T12:00:00Z",
        "--start-time=9am",
        "--end-time=5pm",
    ]));
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("Inside  yes"), "{out}");
}

/// The agent process, killed on drop so a failing test leaves nothing behind.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of the agent's answer to `GET path` from `ip`, if it is a 200.
fn get_ok(ip: IpAddr, port: u16, path: &str) -> Option<String> {
    match get_blocking((ip, port), path, Duration::from_secs(2)) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

fn wait_for_metric(port: u16, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if get_ok(Ipv4Addr::LOCALHOST.into(), port, "/metrics").is_some_and(|b| b.contains(line)) {
            return;
        }
        assert!(Instant::now() < deadline, "/metrics never showed {line:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An agent with the default `--metrics-host`: every address of both families.
fn start_agent(sentinel: &Path, port: u16, log_format: &str) -> Agent {
    let child = kured()
        .args(["--node-id=test-node", "--period=1s"])
        .arg(format!("--log-format={log_format}"))
        .arg(format!("--reboot-sentinel={}", sentinel.display()))
        .arg(format!("--metrics-port={port}"))
        .arg("--notify-url=slack://hook:T000/B000/SECRETTOKEN@webhook")
        .env("KURED_KUBECONFIG", kubeconfig_path())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    Agent(child)
}

#[test]
fn agent_serves_reboot_required_from_the_sentinel_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sentinel = dir.path().join("reboot-required");
    let port = free_port();
    let mut agent = start_agent(&sentinel, port, "json");

    wait_for_metric(port, "kured_reboot_required{node=\"test-node\"} 0");
    // IPv6-only and IPv6-first clusters scrape and probe over IPv6, the others over IPv4.
    for ip in [Ipv6Addr::LOCALHOST.into(), Ipv4Addr::LOCALHOST.into()] {
        let answer = get_ok(ip, port, "/healthz");
        assert_eq!(answer.as_deref(), Some("ok\n"), "/healthz on {ip}");
    }
    std::fs::write(&sentinel, "").expect("creating the sentinel");
    wait_for_metric(port, "kured_reboot_required{node=\"test-node\"} 1");
    std::fs::remove_file(&sentinel).expect("removing the sentinel");
    wait_for_metric(port, "kured_reboot_required{node=\"test-node\"} 0");

    let logs = stop(&mut agent);
    assert!(!logs.contains("SECRETTOKEN"), "a secret reached the log: {logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(
            v["level"].is_string() && v["msg"].is_string() && v["time"].is_string(),
            "{line}"
        );
    }
    assert!(logs.contains("\"msg\":\"agent started\""), "{logs}");
}

/// Stops the agent with SIGTERM, checks it exits 0, and returns what it logged.
fn stop(agent: &mut Agent) -> String {
    let pid = agent.0.id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let status = agent.0.wait().expect("waits");
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    agent
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut logs)
        .expect("reads logs");
    logs
}

/// Text logs written to a pipe (`kubectl logs`, a collector) carry no terminal colour codes.
#[test]
fn text_logs_to_a_pipe_are_plain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut agent = start_agent(&dir.path().join("reboot-required"), port, "text");
    wait_for_metric(port, "kured_reboot_required{node=\"test-node\"} 0");
    let logs = stop(&mut agent);
    assert!(logs.contains("agent started"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in the log: {logs:?}");
}

#[test]
fn a_taken_metrics_port_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(kured()
        .args([
            "--node-id=n1",
            "--metrics-host=127.0.0.1",
            &format!("--metrics-port={port}"),
        ])
        .arg(format!("--reboot-sentinel={}", dir.path().join("s").display()))
        .env("KURED_KUBECONFIG", kubeconfig_path()));
    assert_eq!(out.code, Some(1));
    assert!(
        out.last_error_line()
            .starts_with(&format!("kured: cannot listen on 127.0.0.1:{port}")),
        "{out}"
    );
}

/// What an operator sees of an invalid `--prometheus-url` that carries a password: the agent's
/// stderr and its termination message. The agent runs in a private mount namespace whose `/dev`
/// is a fresh tmpfs holding an empty `/dev/termination-log`, as a container's does.
#[test]
fn an_invalid_prometheus_url_never_shows_its_password() {
    let script = r#"mount -t tmpfs kured-test /dev && : > /dev/termination-log && "$0" "$@"; code=$?; echo "exit $code"; echo "termination-log: $(cat /dev/termination-log)""#;
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_kured"))
        .args([
            "--node-id=n1",
            "--prometheus-url=http://admin:hunter2@prom etheus:9090",
        ])
        .env_clear());
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    let line =
        "kured: invalid --prometheus-url \"http://<redacted>\": not a URL: invalid international domain name";
    assert!(stdout.contains("exit 2\n"), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.starts_with(line), "{stderr}");
    assert!(
        stdout.contains(&format!("termination-log: {line}")),
        "the termination log holds the same line: {stdout}"
    );
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stdout}\n{stderr}"
    );
}
