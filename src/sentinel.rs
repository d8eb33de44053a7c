//! The reboot sentinel: the signal that this node needs a reboot.
//!
//! Either a file whose existence means "reboot needed" (`--reboot-sentinel`, Debian's
//! `/var/run/reboot-required`), or a command run in the host mount namespace
//! (`--reboot-sentinel-command`): exit code 0 means needed, 1 means not needed, and anything else is
//! a failed check, never a reason to reboot. (RHEL's `needs-restarting -r` exits the other way
//! round; the README gives the translation.)
//!
//! A file sentinel is also watched ([`SentinelWatch`], inotify), so that a reboot becomes
//! needed the moment the file appears, not at the next check period.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};

use crate::host::{Ending, HostCommand, HostCommandError, HostNamespace, stderr_note};

/// How long a sentinel command may run: one that has not answered within a minute is hung, and the
/// next check period tries again.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of checking the sentinel.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("cannot check sentinel file {}", .path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot use {command:?} as sentinel command")]
    Parse {
        command: String,
        #[source]
        source: HostCommandError,
    },
    #[error("sentinel command {command} failed")]
    Run {
        command: String,
        #[source]
        source: HostCommandError,
    },
    #[error(
        "sentinel command {command} exited with code {code}, neither 0 (reboot needed) nor 1 (not needed){}",
        stderr_note(.stderr)
    )]
    Exit {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("sentinel command {command} was killed by signal {signal}{}", stderr_note(.stderr))]
    Killed {
        command: String,
        signal: i32,
        stderr: String,
    },
}

/// Where the agent learns that its node needs a reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sentinel {
    /// A reboot is needed while this file exists.
    File(PathBuf),
    /// A reboot is needed when this command exits with 0; it is killed after `timeout`.
    Command { command: HostCommand, timeout: Duration },
}

impl Sentinel {
    /// The sentinel the flags describe: the command when `command` is not blank (it wins, as
    /// upstream), the file otherwise. The command runs in `host` with [`COMMAND_TIMEOUT`].
    pub fn new(file: impl Into<PathBuf>, command: &str, host: HostNamespace) -> Result<Self, SentinelError> {
        if command.trim().is_empty() {
            Ok(Sentinel::File(file.into()))
        } else {
            Self::command(command, host, COMMAND_TIMEOUT)
        }
    }

    /// A sentinel command: `line` is split with shell rules and run in the mount namespace of `host`.
    pub fn command(line: &str, host: HostNamespace, timeout: Duration) -> Result<Self, SentinelError> {
        let command = HostCommand::parse(line, host).map_err(|source| SentinelError::Parse {
            command: line.to_owned(),
            source,
        })?;
        Ok(Sentinel::Command { command, timeout })
    }

    /// Whether the node needs a reboot. A check that cannot tell is an error, never a "yes".
    pub async fn check(&self) -> Result<bool, SentinelError> {
        match self {
            Sentinel::File(path) => {
                let needed = match tokio::fs::metadata(path).await {
                    Ok(_) => true,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => false,
                    Err(source) => {
                        return Err(SentinelError::Stat {
                            path: path.clone(),
                            source,
                        });
                    }
                };
                debug!(sentinel = %path.display(), needed, "checked the sentinel file");
                Ok(needed)
            }
            Sentinel::Command { command, timeout } => {
                let run_error = |source| SentinelError::Run {
                    command: command.to_string(),
                    source,
                };
                let finished = command.run(Some(*timeout)).await.map_err(run_error)?;
                match finished.ending {
                    Ending::Code(0) => Ok(true),
                    Ending::Code(1) => Ok(false),
                    Ending::Code(code) => Err(SentinelError::Exit {
                        command: command.to_string(),
                        code,
                        stderr: finished.stderr,
                    }),
                    Ending::Signal(signal) => Err(SentinelError::Killed {
                        command: command.to_string(),
                        signal,
                        stderr: finished.stderr,
                    }),
                }
            }
        }
    }

    /// What [`check`](Self::check) looks at, for logs.
    pub fn describe(&self) -> String {
        self.to_string()
    }

    /// The file to watch for changes, for the file form.
    pub fn watch_path(&self) -> Option<&Path> {
        match self {
            Sentinel::File(path) => Some(path),
            Sentinel::Command { .. } => None,
        }
    }
}

impl fmt::Display for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sentinel::File(path) => write!(f, "file {}", path.display()),
            Sentinel::Command { command, timeout } => {
                write!(f, "command {command}, killed after {timeout:?}")
            }
        }
    }
}

/// Changes to the sentinel file, through inotify on its directory (the file itself comes and
/// goes). Without a file sentinel, or if inotify is unavailable, it never fires and the period
/// does the work.
pub struct SentinelWatch {
    events: Option<(inotify::EventStream<Vec<u8>>, std::ffi::OsString)>,
}

impl SentinelWatch {
    /// Watches `path` ([`Sentinel::watch_path`]); `None`: nothing to watch.
    pub fn new(path: Option<&Path>) -> SentinelWatch {
        let events = path.and_then(|path| match Self::watch(path) {
            Ok(events) => Some(events),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot watch the sentinel file; checking it every period");
                None
            }
        });
        SentinelWatch { events }
    }

    fn watch(path: &Path) -> io::Result<(inotify::EventStream<Vec<u8>>, std::ffi::OsString)> {
        use inotify::{Inotify, WatchMask};
        let dir: PathBuf = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/"))
            .to_owned();
        let name = path.file_name().map(ToOwned::to_owned).unwrap_or_default();
        let inotify = Inotify::init()?;
        inotify.watches().add(
            &dir,
            WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::CLOSE_WRITE,
        )?;
        Ok((inotify.into_event_stream(vec![0u8; 4096])?, name))
    }

    /// Resolves when the sentinel file is created, removed or replaced.
    pub async fn changed(&mut self) {
        use futures_util::StreamExt;
        let Some((events, name)) = &mut self.events else {
            return std::future::pending().await;
        };
        loop {
            match events.next().await {
                Some(Ok(event)) if event.name.as_deref() == Some(name.as_os_str()) => return,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    warn!(error = %e, "reading sentinel file events; checking it every period from now on");
                    self.events = None;
                    return std::future::pending().await;
                }
                None => {
                    self.events = None;
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn ours() -> HostNamespace {
        HostNamespace::of_pid(std::process::id())
    }

    /// `sh -c <script>` as a command line.
    fn shell(script: &str) -> String {
        format!("sh -c {}", shlex::try_quote(script).unwrap())
    }

    fn shell_sentinel(script: &str, timeout: Duration) -> Sentinel {
        Sentinel::command(&shell(script), ours(), timeout).unwrap()
    }

    /// Whether `pid` has exited: gone from /proc, or a zombie waiting for a parent that is not us.
    fn has_exited(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z')),
            Err(_) => true,
        }
    }

    #[test]
    fn a_blank_command_leaves_the_file() {
        for command in ["", "  "] {
            let sentinel = Sentinel::new("/var/run/reboot-required", command, HostNamespace::pid1()).unwrap();
            assert_eq!(sentinel, Sentinel::File("/var/run/reboot-required".into()));
            assert_eq!(sentinel.watch_path(), Some(Path::new("/var/run/reboot-required")));
            assert_eq!(sentinel.describe(), "file /var/run/reboot-required");
        }
    }

    #[test]
    fn a_command_wins_over_the_file() {
        let sentinel = Sentinel::new(
            "/var/run/reboot-required",
            "needs-restarting -r",
            HostNamespace::pid1(),
        )
        .unwrap();
        let Sentinel::Command { command, timeout } = &sentinel else {
            panic!("{sentinel:?}")
        };
        assert_eq!(command.argv(), ["needs-restarting", "-r"]);
        assert_eq!(*timeout, COMMAND_TIMEOUT);
        assert_eq!(sentinel.watch_path(), None);
        assert_eq!(
            sentinel.describe(),
            "command `needs-restarting -r` in the mount namespace of PID 1, killed after 60s"
        );
    }

    #[test]
    fn a_malformed_command_is_an_error_naming_it() {
        let err = Sentinel::new("/x", "needs-restarting \"-r", HostNamespace::pid1()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cannot use "needs-restarting \"-r" as sentinel command"#
        );
    }

    #[tokio::test]
    async fn an_existing_file_means_reboot_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reboot-required");
        std::fs::write(&path, "").unwrap();
        assert!(Sentinel::File(path).check().await.unwrap());
    }

    #[tokio::test]
    async fn a_missing_file_means_no_reboot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            !Sentinel::File(dir.path().join("reboot-required"))
                .check()
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_dangling_symlink_counts_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reboot-required");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &path).unwrap();
        assert!(!Sentinel::File(path).check().await.unwrap());
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_checked_is_an_error_naming_it() {
        // A regular file where a directory should be: ENOTDIR, not "missing". (Permissions would not
        // do: these tests may run as root.)
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run"), "").unwrap();
        let path = dir.path().join("run/reboot-required");
        let err = Sentinel::File(path.clone()).check().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot check sentinel file {}", path.display())
        );
        assert!(matches!(err, SentinelError::Stat { .. }));
    }

    #[tokio::test]
    async fn exit_code_0_means_reboot_needed() {
        assert!(shell_sentinel("exit 0", COMMAND_TIMEOUT).check().await.unwrap());
    }

    #[tokio::test]
    async fn exit_code_1_means_no_reboot() {
        assert!(
            !shell_sentinel("echo up to date; exit 1", COMMAND_TIMEOUT)
                .check()
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn any_other_exit_code_is_an_error_with_its_stderr() {
        let err = shell_sentinel("echo cannot read rpmdb >&2; exit 2", COMMAND_TIMEOUT)
            .check()
            .await
            .unwrap_err();
        let SentinelError::Exit { code, stderr, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((*code, stderr.as_str()), (2, "cannot read rpmdb"));
        let pid = std::process::id();
        assert_eq!(
            err.to_string(),
            format!(
                "sentinel command `sh -c 'echo cannot read rpmdb >&2; exit 2'` in the mount namespace of PID \
                 {pid} exited with code 2, neither 0 (reboot needed) nor 1 (not needed); stderr: cannot read rpmdb"
            )
        );
    }

    #[tokio::test]
    async fn death_by_signal_is_an_error() {
        let err = shell_sentinel("echo dying >&2; kill -9 $$", COMMAND_TIMEOUT)
            .check()
            .await
            .unwrap_err();
        let SentinelError::Killed { signal, stderr, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((*signal, stderr.as_str()), (9, "dying"));
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let sentinel =
            Sentinel::command("/nonexistent/needs-restarting -r", ours(), COMMAND_TIMEOUT).unwrap();
        let err = sentinel.check().await.unwrap_err();
        let SentinelError::Run {
            source:
                HostCommandError::Spawn {
                    entered: false,
                    source,
                },
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn an_unreadable_namespace_is_an_error_naming_its_path() {
        // Beyond the largest possible pid_max (2^22), so /proc has no such entry.
        let sentinel =
            Sentinel::command("true", HostNamespace::of_pid(999_999_999), COMMAND_TIMEOUT).unwrap();
        let err = sentinel.check().await.unwrap_err();
        let SentinelError::Run {
            source: HostCommandError::Namespace { path, .. },
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(path, Path::new("/proc/999999999/ns/mnt"));
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "sleep 30 & echo $$ $! > {}; echo checking >&2; wait",
            shlex::try_quote(pids.to_str().unwrap()).unwrap()
        );
        let started = Instant::now();
        let err = shell_sentinel(&script, Duration::from_secs(1))
            .check()
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        let SentinelError::Run {
            source: HostCommandError::Timeout { after, stderr },
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((*after, stderr.as_str()), (Duration::from_secs(1), "checking"));
        let pids = std::fs::read_to_string(&pids).unwrap();
        for pid in pids.split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !has_exited(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(has_exited(pid), "process {pid} still running");
        }
    }

    #[tokio::test]
    async fn output_beyond_the_pipe_buffer_does_not_stall_the_command() {
        // 1 MiB on each stream, far beyond a pipe's 64 KiB: the command only exits if both are drained.
        let script =
            "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2; echo; echo the end >&2; exit 1";
        let needed = shell_sentinel(script, Duration::from_secs(20))
            .check()
            .await
            .unwrap();
        assert!(!needed);
    }

    #[tokio::test]
    async fn a_process_left_behind_holding_the_output_does_not_hold_up_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 20 & echo $! > {}; exit 1",
            shlex::try_quote(pid_file.to_str().unwrap()).unwrap()
        );
        let started = Instant::now();
        let needed = shell_sentinel(&script, Duration::from_secs(15)).check().await;
        let elapsed = started.elapsed();
        let left_behind: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The sleep was started by this test, through the shell.
        crate::sys::send_signal(left_behind, libc::SIGKILL).unwrap();
        assert!(!needed.unwrap());
        assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    }

    #[tokio::test]
    async fn the_watch_wakes_for_the_sentinel_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reboot-required");
        let mut watch = SentinelWatch::new(Some(&path));
        assert!(
            watch.events.is_some(),
            "no inotify watch could be set up (are all fs.inotify.max_user_instances in use?)"
        );
        std::fs::write(dir.path().join("other"), "").unwrap();
        let woken = tokio::time::timeout(Duration::from_millis(200), watch.changed()).await;
        assert!(woken.is_err(), "another file in the directory");
        std::fs::write(&path, "").unwrap();
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("woken by the sentinel file");
    }

    #[tokio::test]
    async fn without_a_file_to_watch_the_watch_never_wakes() {
        let mut watch = SentinelWatch::new(None);
        let woken = tokio::time::timeout(Duration::from_millis(50), watch.changed()).await;
        assert!(woken.is_err());
    }
}
