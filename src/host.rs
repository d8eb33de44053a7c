//! Commands run in the mount namespace of another process: the host's, seen from a `hostPID` pod.
//!
//! The sentinel command and the reboot command both run here: split with shell rules, started in
//! the mount namespace of PID 1 (entered just before the exec, so the program is looked up on the
//! host), in a process group of their own so that a time-out kills everything they started, and
//! with the tails of their output kept for the log and for error messages.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::sys;

/// How much of each output stream is kept: the end is where the error is, and 4 KiB still fits
/// in one log line.
const OUTPUT_TAIL_BYTES: usize = 4096;

/// How long the output pipes may stay open after the command exits. Output written before the
/// exit is already in the pipe; a pipe still open later is held by a process it left behind.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// How long to wait for a killed command to be gone. SIGKILL acts at once unless the process is
/// stuck in uninterruptible I/O; then it is left for the runtime to reap in the background.
pub(crate) const REAP_GRACE: Duration = Duration::from_secs(5);

const OWN_NAMESPACE: &str = "/proc/self/ns/mnt";

/// Errors of running a command in another mount namespace. The command itself is named by the
/// error that wraps this one.
#[derive(Debug, thiserror::Error)]
pub enum HostCommandError {
    #[error("not a valid command line: unbalanced quotes or a trailing backslash")]
    Split,
    #[error("the command line is empty")]
    Empty,
    #[error("cannot open mount namespace {}", .path.display())]
    Namespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {}start it", if *.entered { "enter the mount namespace and " } else { "" })]
    Spawn {
        entered: bool,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for it to exit")]
    Wait {
        #[source]
        source: io::Error,
    },
    #[error("still running after {after:?}, killed{}", stderr_note(.stderr))]
    Timeout { after: Duration, stderr: String },
}

/// The mount namespace of a process, where host commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostNamespace {
    pid: u32,
}

impl HostNamespace {
    /// The host's mount namespace: that of PID 1, as an agent with `hostPID: true` sees it.
    pub const fn pid1() -> Self {
        Self { pid: 1 }
    }

    /// The mount namespace of process `pid`, standing in for the host's.
    pub const fn of_pid(pid: u32) -> Self {
        Self { pid }
    }

    /// `/proc/<pid>/ns/mnt`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.pid))
    }

    /// Whether this process already runs in that namespace, so commands need not enter it.
    pub fn is_ours(&self) -> Result<bool, HostCommandError> {
        Ok(self.open_if_foreign()?.is_none())
    }

    /// A command for `argv` that runs in this namespace, and whether it enters it: when it is not
    /// already ours, the child enters it before the exec, so the program is looked up there, and
    /// starts in its `/`.
    fn prepare(&self, argv: &[String]) -> Result<(Command, bool), HostCommandError> {
        let (program, args) = argv.split_first().ok_or(HostCommandError::Empty)?;
        let mut command = Command::new(program);
        command.args(args);
        let entered = match self.open_if_foreign()? {
            Some(namespace) => {
                sys::enter_mount_namespace_on_exec(&mut command, namespace);
                true
            }
            None => false,
        };
        Ok((command, entered))
    }

    /// The namespace, open for `setns`, if it is not ours. An unreadable namespace is an error:
    /// running the command in our own namespace instead would do the wrong thing quietly.
    fn open_if_foreign(&self) -> Result<Option<OwnedFd>, HostCommandError> {
        let path = self.path();
        let opened = File::open(&path).and_then(|file| Ok((file.metadata()?, file)));
        let (theirs, namespace) = opened.map_err(|source| HostCommandError::Namespace { path, source })?;
        let ours = std::fs::metadata(OWN_NAMESPACE).map_err(|source| HostCommandError::Namespace {
            path: OWN_NAMESPACE.into(),
            source,
        })?;
        if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
            Ok(None)
        } else {
            Ok(Some(namespace.into()))
        }
    }
}

impl fmt::Display for HostNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the mount namespace of PID {}", self.pid)
    }
}

/// A command line, split with shell rules, to run in a [`HostNamespace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    line: String,
    argv: Vec<String>,
    host: HostNamespace,
}

impl HostCommand {
    pub fn parse(line: &str, host: HostNamespace) -> Result<Self, HostCommandError> {
        let argv = shlex::split(line).ok_or(HostCommandError::Split)?;
        if argv.is_empty() {
            return Err(HostCommandError::Empty);
        }
        Ok(Self {
            line: line.to_owned(),
            argv,
            host,
        })
    }

    /// The command line split into words.
    #[cfg(test)]
    pub(crate) fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Runs the command to its end, with stdin empty and the tails of stdout and stderr kept.
    /// With a `limit`, a command that runs over is killed together with the processes it
    /// started, and so is one whose caller stops waiting; without, it runs to completion even
    /// then.
    pub(crate) async fn run(&self, limit: Option<Duration>) -> Result<Finished, HostCommandError> {
        let (mut command, entered) = self.host.prepare(&self.argv)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(limit.is_some());
        let mut child = command
            .spawn()
            .map_err(|source| HostCommandError::Spawn { entered, source })?;
        // Closes our copy of the namespace descriptor.
        drop(command);
        let group = child.id();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (mut out, mut err) = (Tail::default(), Tail::default());
        let reading = async {
            tokio::join!(
                out.fill(stdout, &self.line, "stdout"),
                err.fill(stderr, &self.line, "stderr")
            );
        };
        let finishing = wait_and_drain(&mut child, reading, &self.line);
        let waited = match limit {
            None => finishing.await,
            Some(after) => match tokio::time::timeout(after, finishing).await {
                Ok(waited) => waited,
                Err(_elapsed) => {
                    stop(&mut child, group, &self.line).await;
                    return Err(HostCommandError::Timeout {
                        after,
                        stderr: err.text(),
                    });
                }
            },
        };
        let status = waited.map_err(|source| HostCommandError::Wait { source })?;
        let finished = Finished {
            ending: Ending::of(status),
            stdout: out.text(),
            stderr: err.text(),
        };
        info!(
            command = %self.line,
            namespace = %self.host,
            exit = %finished.ending,
            stdout = %finished.stdout,
            stderr = %finished.stderr,
            "host command finished"
        );
        Ok(finished)
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` in {}", self.line, self.host)
    }
}

/// How a command ended, and the tails of its output.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) ending: Ending,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Code(i32),
    Signal(i32),
}

impl Ending {
    fn of(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Code(code),
            (None, Some(signal)) => Ending::Signal(signal),
            // wait(2) without WUNTRACED reports only exits and deaths by signal; for anything
            // else the raw status is the most honest value.
            (None, None) => Ending::Code(status.into_raw()),
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Code(code) => write!(f, "code {code}"),
            Ending::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// `"; stderr: …"` for an error message, or nothing when there was no stderr.
pub(crate) fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// Waits for the child to exit while `reading` drains its output, then gives the output
/// [`OUTPUT_GRACE`] to reach its end.
async fn wait_and_drain(
    child: &mut Child,
    reading: impl Future<Output = ()>,
    line: &str,
) -> io::Result<ExitStatus> {
    let mut reading = pin!(reading);
    let (status, drained) = tokio::select! {
        status = child.wait() => (status?, false),
        () = &mut reading => (child.wait().await?, true),
    };
    if !drained && tokio::time::timeout(OUTPUT_GRACE, reading).await.is_err() {
        warn!(command = %line, "a process left behind by the command holds its output open; output cut short");
    }
    Ok(status)
}

/// Kills a command that ran over, with everything in its process group, and reaps it.
async fn stop(child: &mut Child, group: Option<u32>, line: &str) {
    let group_killed = match group {
        Some(group) => match sys::signal_process_group(group, libc::SIGKILL) {
            Ok(()) => true,
            Err(error) => {
                warn!(command = %line, group, %error, "cannot kill the command's process group");
                false
            }
        },
        None => false,
    };
    if !group_killed && let Err(error) = child.start_kill() {
        warn!(command = %line, %error, "cannot kill the command");
    }
    match tokio::time::timeout(REAP_GRACE, child.wait()).await {
        Ok(Ok(_status)) => {}
        Ok(Err(error)) => warn!(command = %line, %error, "cannot reap the killed command"),
        Err(_elapsed) => {
            warn!(command = %line, "the killed command has not exited yet; leaving it to be reaped later")
        }
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of a stream.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if let Some(excess) = self.bytes.len().checked_sub(OUTPUT_TAIL_BYTES)
            && excess > 0
        {
            self.bytes.drain(..excess);
            self.cut = true;
        }
    }

    async fn fill(&mut self, stream: Option<impl AsyncRead + Unpin>, line: &str, name: &str) {
        let Some(mut stream) = stream else { return };
        let mut chunk = vec![0; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return,
                Ok(read) => self.push(&chunk[..read]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    warn!(command = %line, stream = name, %error, "cannot read the command's output");
                    return;
                }
            }
        }
    }

    /// The tail as text, without trailing whitespace, marked with `…` where it was cut.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let text = text.trim_end();
        if self.cut {
            format!("…{text}")
        } else {
            text.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut tail = Tail::default();
        tail.push(b"hello\n");
        tail.push(b"world\n");
        assert_eq!(tail.text(), "hello\nworld");
    }

    #[test]
    fn long_output_keeps_only_its_end() {
        let mut tail = Tail::default();
        for _ in 0..3 {
            tail.push(&[b'a'; OUTPUT_TAIL_BYTES]);
        }
        tail.push(b"the error");
        let text = tail.text();
        assert!(text.starts_with('…'));
        assert!(text.ends_with("the error"));
        assert_eq!(tail.bytes.len(), OUTPUT_TAIL_BYTES);
    }

    #[test]
    fn output_of_exactly_the_limit_is_not_marked_cut() {
        let mut tail = Tail::default();
        tail.push(&[b'a'; OUTPUT_TAIL_BYTES]);
        assert!(!tail.text().starts_with('…'));
    }

    #[test]
    fn command_lines_are_split_with_shell_rules() {
        let host = HostNamespace::of_pid(7);
        let command = HostCommand::parse(r#"sh -c 'echo "a b"' x\ y"#, host).unwrap();
        assert_eq!(command.argv(), ["sh", "-c", r#"echo "a b""#, "x y"]);
        assert_eq!(
            command.to_string(),
            r#"`sh -c 'echo "a b"' x\ y` in the mount namespace of PID 7"#
        );
    }

    #[test]
    fn unsplittable_and_empty_command_lines_are_refused() {
        let host = HostNamespace::pid1();
        assert!(matches!(
            HostCommand::parse("sh -c 'unterminated", host),
            Err(HostCommandError::Split)
        ));
        assert!(matches!(
            HostCommand::parse("", host),
            Err(HostCommandError::Empty)
        ));
        assert!(matches!(
            HostCommand::parse("   ", host),
            Err(HostCommandError::Empty)
        ));
    }

    #[test]
    fn an_empty_argv_is_refused() {
        assert!(matches!(
            HostNamespace::of_pid(std::process::id()).prepare(&[]),
            Err(HostCommandError::Empty)
        ));
    }

    #[test]
    fn an_unreadable_namespace_is_an_error_naming_its_path() {
        // Beyond the largest possible pid_max (2^22), so /proc has no such entry.
        let err = HostNamespace::of_pid(999_999_999).is_ours().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open mount namespace /proc/999999999/ns/mnt"
        );
    }

    #[test]
    fn our_own_namespace_is_recognised() {
        assert!(HostNamespace::of_pid(std::process::id()).is_ours().unwrap());
    }

    #[test]
    fn exits_and_deaths_by_signal_are_told_apart() {
        assert_eq!(Ending::of(ExitStatus::from_raw(3 << 8)), Ending::Code(3));
        assert_eq!(Ending::of(ExitStatus::from_raw(libc::SIGKILL)), Ending::Signal(9));
    }
}
