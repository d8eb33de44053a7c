//! The rebooters and the sentinel command against real processes: a signal delivered to the init of
//! a PID namespace this test creates, and commands run in a mount namespace this test creates.
//! Needs root (for `unshare`); never touches the machine's own PID 1.

mod support;

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kured::reboot::{DEFAULT_SIGNAL, HostCommandError, HostNamespace, RebootError, RebootLimits, Rebooter};
use kured::sentinel::Sentinel;
use support::simulated::in_pid_namespace;

/// Long enough for `unshare` and a shell to start on a loaded machine.
const STARTUP: Duration = Duration::from_secs(15);

/// A process tree this test started through `unshare --fork --kill-child`: killing the `unshare`
/// process, our direct child, takes the rest with it. Done on drop, so a failed assertion cleans up too.
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    fn wait_for_line(&self, expected: &str) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return,
                Ok(_) => {}
                Err(error) => panic!("no line {expected:?} from the process: {error}"),
            }
        }
    }

    /// The process `unshare` forked: the one in the new namespaces.
    fn inner_pid(&self) -> u32 {
        let pid = self.child.id();
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = Instant::now() + STARTUP;
        loop {
            let listed = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(first) = listed.split_whitespace().next() {
                return first.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "unshare {pid} has not forked");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} still running after {within:?}",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Errors mean it has already exited and been reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn quote(path: &Path) -> String {
    shlex::try_quote(path.to_str().unwrap()).unwrap().into_owned()
}

/// `sh -c <script>` as a command line.
fn shell(script: &str) -> String {
    format!("sh -c {}", shlex::try_quote(script).unwrap())
}

/// An error with all its causes, as the agent would log it.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(source) = cause {
        text = format!("{text}: {source}");
        cause = source.source();
    }
    text
}

fn ours() -> HostNamespace {
    HostNamespace::of_pid(std::process::id())
}

/// A pid no process has: beyond the largest possible pid_max (2^22).
const NO_SUCH_PID: u32 = 999_999_999;

#[tokio::test]
async fn the_reboot_signal_reaches_the_init_of_a_pid_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("rebooted");
    let script = format!(
        "trap 'echo got > {}; exit 0' {DEFAULT_SIGNAL}; echo ready; while :; do sleep 0.1; done",
        quote(&mark)
    );
    let mut node = Spawned::start(in_pid_namespace().args(["sh", "-c", &script]));
    node.wait_for_line("ready");
    let init = node.inner_pid();
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|line| line.starts_with("NSpid:") && line.ends_with("\t1")),
        "{status}"
    );

    let rebooter = Rebooter::signal_to(DEFAULT_SIGNAL, init).unwrap();
    assert_eq!(
        rebooter.describe(),
        format!("signal 39 (SIGRTMIN+5) to PID {init}")
    );
    rebooter.request().await.unwrap();

    assert!(node.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "got\n");
}

#[tokio::test]
async fn a_signal_to_a_missing_process_is_an_error_naming_it() {
    let err = Rebooter::signal_to(DEFAULT_SIGNAL, NO_SUCH_PID)
        .unwrap()
        .request()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RebootError::Signal {
                pid: NO_SUCH_PID,
                signal: 39,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        chain(&err),
        "cannot send signal 39 to PID 999999999: No such process (os error 3)"
    );
}

#[tokio::test]
async fn commands_run_in_the_mount_namespace_of_the_target_process() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let inside = point.join("inside");
    let script = format!(
        "mount -t tmpfs kured-test {point} && touch {inside} && echo ready && exec sleep 60",
        point = quote(&point),
        inside = quote(&inside)
    );
    let node = Spawned::start(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        &script,
    ]));
    node.wait_for_line("ready");
    let host = HostNamespace::of_pid(node.inner_pid());
    assert!(!host.is_ours().unwrap());
    assert!(!inside.exists(), "the tmpfs leaked into our namespace");
    let test_inside = format!("test -e {}", quote(&inside));

    // The file exists only there, so these succeed only if the command entered that namespace.
    Rebooter::command(&test_inside, host)
        .unwrap()
        .request()
        .await
        .unwrap();
    let sentinel = Sentinel::command(&test_inside, host, Duration::from_secs(10)).unwrap();
    assert!(sentinel.check().await.unwrap());

    // It starts in that namespace's root, and does not inherit the namespace descriptor.
    let at_root = shell(r#"test "$(pwd)" = / && ! ls -l /proc/$$/fd | grep -q mnt:"#);
    Rebooter::command(&at_root, host)
        .unwrap()
        .request()
        .await
        .unwrap();

    // The same command in our own namespace sees no file.
    let sentinel = Sentinel::command(&test_inside, ours(), Duration::from_secs(10)).unwrap();
    assert!(!sentinel.check().await.unwrap());
    let err = Rebooter::command(&test_inside, ours())
        .unwrap()
        .request()
        .await
        .unwrap_err();
    assert!(matches!(err, RebootError::Exit { code: 1, .. }), "{err:?}");
}

#[tokio::test]
async fn in_our_own_namespace_commands_run_without_entering_it() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    assert!(ours().is_ours().unwrap());
    let rebooter = Rebooter::command(&shell(&format!("echo rebooting > {}", quote(&done))), ours()).unwrap();
    rebooter.request().await.unwrap();
    assert_eq!(std::fs::read_to_string(&done).unwrap(), "rebooting\n");
}

#[tokio::test]
async fn an_unreadable_namespace_is_an_error_naming_its_path() {
    let err = Rebooter::command("true", HostNamespace::of_pid(NO_SUCH_PID))
        .unwrap()
        .request()
        .await
        .unwrap_err();
    assert_eq!(
        chain(&err),
        "reboot command `true` in the mount namespace of PID 999999999 failed: \
         cannot open mount namespace /proc/999999999/ns/mnt: No such file or directory (os error 2)"
    );
}

#[tokio::test]
async fn a_failing_reboot_command_is_an_error_with_its_code_and_stderr() {
    let script = "echo asking systemd; echo 'Failed to reboot: Access denied' >&2; exit 3";
    let err = Rebooter::command(&shell(script), ours())
        .unwrap()
        .request()
        .await
        .unwrap_err();
    let RebootError::Exit { code, stderr, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((*code, stderr.as_str()), (3, "Failed to reboot: Access denied"));
    assert!(
        err.to_string()
            .ends_with("exited with code 3; stderr: Failed to reboot: Access denied"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_reboot_program_is_an_error() {
    let err = Rebooter::command("/nonexistent/systemctl reboot", ours())
        .unwrap()
        .request()
        .await
        .unwrap_err();
    assert!(
        chain(&err).ends_with("failed: cannot start it: No such file or directory (os error 2)"),
        "{err:?}"
    );
}

/// A reboot request that does nothing: this process goes on running, so after the wait for the
/// effect the reboot is reported as failed, naming the request.
#[tokio::test]
async fn a_request_without_effect_is_a_failed_reboot() {
    let limits = RebootLimits {
        command: Duration::from_secs(10),
        effect: Duration::from_millis(300),
    };
    let err = Rebooter::command("true", ours())
        .unwrap()
        .reboot_within(limits)
        .await
        .unwrap_err();
    assert!(matches!(err, RebootError::NoEffect { .. }), "{err:?}");
    assert_eq!(err.metric_reason(), "no_effect");
    assert!(
        err.to_string()
            .starts_with("the reboot was requested (command `true` in the mount namespace"),
        "{err}"
    );
}

/// The init of a PID namespace without a handler for the signal (a pod without hostPID, whose
/// PID 1 is the container's own process) drops it: the request succeeds, nothing happens, and
/// the reboot is reported as failed.
#[tokio::test]
async fn a_signal_the_init_ignores_is_a_failed_reboot() {
    let mut node = Spawned::start(in_pid_namespace().args(["sh", "-c", "echo ready; exec sleep 600"]));
    node.wait_for_line("ready");
    let init = node.inner_pid();
    let limits = RebootLimits {
        command: Duration::from_secs(10),
        effect: Duration::from_secs(2),
    };
    let err = Rebooter::signal_to(DEFAULT_SIGNAL, init)
        .unwrap()
        .reboot_within(limits)
        .await
        .unwrap_err();
    assert!(matches!(err, RebootError::NoEffect { .. }), "{err:?}");
    // The signal was sent and dropped: the namespace's init still runs.
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the init took the signal"
    );
    assert!(Path::new(&format!("/proc/{init}")).exists());
}

/// A reboot command that hangs is killed, with what it started, at the time-out, and the reboot
/// fails without waiting for an effect.
#[tokio::test]
async fn a_hung_reboot_command_is_killed_at_its_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The shell and the sleep it leaves running in the background both record their PIDs.
    let script = format!(
        "echo $$ >> {pids}; sleep 100000 & echo $! >> {pids}; wait",
        pids = quote(&pids)
    );
    let limits = RebootLimits {
        command: Duration::from_secs(2),
        effect: Duration::from_secs(3600),
    };
    let err = Rebooter::command(&shell(&script), ours())
        .unwrap()
        .reboot_within(limits)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RebootError::Run {
                source: HostCommandError::Timeout { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.metric_reason(), "timeout");
    assert!(
        chain(&err).ends_with("failed: still running after 2s, killed"),
        "{}",
        chain(&err)
    );
    let recorded = std::fs::read_to_string(&pids).unwrap();
    let recorded: Vec<&str> = recorded.lines().collect();
    assert_eq!(recorded.len(), 2, "the command ran: {recorded:?}");
    for pid in recorded {
        // SIGKILL was sent to the whole group; a process may take a moment to act on it. Gone, or
        // a zombie left for its new parent to reap, it no longer runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.is_empty() || state.contains(") Z ") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "process {pid} of the hung command still runs 10 s after the kill: {state}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
