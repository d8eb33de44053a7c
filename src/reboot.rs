//! Rebooters: the two ways of rebooting the host (a command in the host mount namespace, or a signal to PID 1).
//!
//! The agent runs in a pod with `hostPID: true`. The command method runs the configured command line
//! (default `/bin/systemctl reboot`) in the mount namespace of PID 1, so it finds the host's binaries
//! and talks to the host's systemd; the signal method sends SIGRTMIN+5, systemd's reboot request, to
//! PID 1 and needs nothing but CAP_KILL.
//!
//! Neither can tell whether the host accepted the request: `systemctl reboot` returns once the
//! reboot is queued, and a signal is delivered whether or not PID 1 acts on it (an init without a
//! handler for it, such as the agent itself in a pod without `hostPID`, drops it without a word).
//! What does tell is that a reboot ends this process. So [`Rebooter::reboot`] makes the request
//! and then waits: a process still running [`EFFECT_LIMIT`] later reports the reboot as failed.
//! The command has a time-out of its own, [`COMMAND_TIMEOUT`], after which it is killed.

use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::time::Duration;

use tracing::info;

use crate::host::{Ending, stderr_note};
// The host command types are part of this module's API: `Rebooter::command` takes a namespace,
// `Rebooter::Command` holds a command, and `RebootError` wraps their errors.
pub use crate::host::{HostCommand, HostCommandError, HostNamespace};
use crate::{host, sys};

/// The signal upstream sends by default: SIGRTMIN+5, which systemd reads as "reboot".
pub const DEFAULT_SIGNAL: i32 = 39;

/// How long the reboot command may run. `systemctl reboot` returns as soon as systemd has queued
/// the reboot, within a second or two, and gives up by itself after 25 s without an answer over
/// D-Bus; a command still running after a minute is hung, and is killed with its process group.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long after a successful request this process may still run before the reboot counts as
/// failed. A reboot stops every service within its stop time-out (90 s by default) and kubelet's
/// graceful node shutdown within its grace period, ending this agent on the way; a host still
/// running it ten minutes later did not take the request.
pub const EFFECT_LIMIT: Duration = Duration::from_secs(600);

/// The time limits of one reboot: [`COMMAND_TIMEOUT`] and [`EFFECT_LIMIT`] by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebootLimits {
    /// How long the reboot command may run before it is killed.
    pub command: Duration,
    /// How long this process may still run after a successful request.
    pub effect: Duration,
}

impl Default for RebootLimits {
    fn default() -> Self {
        RebootLimits {
            command: COMMAND_TIMEOUT,
            effect: EFFECT_LIMIT,
        }
    }
}

/// SIGRTMIN as glibc defines it. systemd is built against glibc, so its documented names
/// (SIGRTMIN+5 = reboot) count from here, whichever libc this binary is linked with.
const SYSTEMD_SIGRTMIN: i32 = 34;

/// The signals `--reboot-signal` accepts: the real-time signals as systemd numbers them
/// (SIGRTMIN+0 ..= SIGRTMAX), the same whether this binary is linked with glibc or musl.
pub fn valid_signal_range() -> RangeInclusive<i32> {
    SYSTEMD_SIGRTMIN..=libc::SIGRTMAX()
}

/// Errors of rebooting.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error("cannot use {command:?} as reboot command")]
    Parse {
        command: String,
        #[source]
        source: HostCommandError,
    },
    #[error("reboot command {command} failed")]
    Run {
        command: String,
        #[source]
        source: HostCommandError,
    },
    #[error("reboot command {command} exited with code {code}{}", stderr_note(.stderr))]
    Exit {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("reboot command {command} was killed by signal {signal}{}", stderr_note(.stderr))]
    Killed {
        command: String,
        signal: i32,
        stderr: String,
    },
    #[error("reboot signal {signal} is outside the real-time signals {}..={}", .valid.start(), .valid.end())]
    InvalidSignal { signal: i32, valid: RangeInclusive<i32> },
    #[error("cannot send signal {signal} to PID {pid}")]
    Signal {
        signal: i32,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "the reboot was requested ({rebooter}), but the node has not rebooted: this agent is still \
         running {} later", crate::duration::GoDuration::from_std(*.after).unwrap_or(crate::duration::GoDuration::MAX)
    )]
    NoEffect { rebooter: String, after: Duration },
    #[error(
        "--reboot-method=signal cannot reboot this node: PID {pid}, which the signal goes to, is this \
         agent itself, so the pod does not share the host's PID namespace (set hostPID: true in the \
         pod's spec)"
    )]
    SignalsItself { pid: u32 },
}

impl RebootError {
    /// The `reason` label of `kured_reboot_failures_total` for this failure: `timeout` (the
    /// command was killed at its time-out), `no_effect` (requested, but the node did not go down)
    /// or `failed` (the request itself failed).
    pub fn metric_reason(&self) -> &'static str {
        match self {
            RebootError::Run {
                source: HostCommandError::Timeout { .. },
                ..
            } => "timeout",
            RebootError::NoEffect { .. } => "no_effect",
            _ => "failed",
        }
    }
}

/// The values [`RebootError::metric_reason`] takes.
pub const FAILURE_REASONS: [&str; 3] = ["failed", "timeout", "no_effect"];

/// How this agent reboots its node (`--reboot-method`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebooter {
    /// Run a command (`--reboot-command`) in the host mount namespace.
    Command(HostCommand),
    /// Send a real-time signal (`--reboot-signal`) to a process, PID 1 in production.
    Signal { signal: i32, pid: u32 },
}

impl Rebooter {
    /// The command method: `line` is split with shell rules and run in the mount namespace of `host`.
    pub fn command(line: &str, host: HostNamespace) -> Result<Self, RebootError> {
        HostCommand::parse(line, host)
            .map(Rebooter::Command)
            .map_err(|source| RebootError::Parse {
                command: line.to_owned(),
                source,
            })
    }

    /// The signal method: `signal` to PID 1.
    pub fn signal(signal: i32) -> Result<Self, RebootError> {
        Self::signal_to(signal, 1)
    }

    /// The signal method with another target than PID 1, for a process standing in for the host.
    pub fn signal_to(signal: i32, pid: u32) -> Result<Self, RebootError> {
        check_signal(signal)?;
        Ok(Rebooter::Signal { signal, pid })
    }

    /// Reboots the host: [`request`](Self::request)s the reboot and waits for it to end this
    /// process. Returns only when it did not: with the request's error, or
    /// [`RebootError::NoEffect`] when this process still runs [`EFFECT_LIMIT`] later.
    pub async fn reboot(&self) -> Result<(), RebootError> {
        self.reboot_within(RebootLimits::default()).await
    }

    /// [`reboot`](Self::reboot) with other time limits than the defaults.
    pub async fn reboot_within(&self, limits: RebootLimits) -> Result<(), RebootError> {
        self.request_within(limits.command).await?;
        tokio::time::sleep(limits.effect).await;
        Err(RebootError::NoEffect {
            rebooter: self.describe(),
            after: limits.effect,
        })
    }

    /// Asks the host to reboot: runs the command, killed after [`COMMAND_TIMEOUT`], or sends the
    /// signal. Returns once the request is made; whether the host acts on it, only the end of this
    /// process tells.
    pub async fn request(&self) -> Result<(), RebootError> {
        self.request_within(COMMAND_TIMEOUT).await
    }

    async fn request_within(&self, command_limit: Duration) -> Result<(), RebootError> {
        match self {
            Rebooter::Command(command) => {
                info!(command = %command, "running the reboot command");
                let run_error = |source| RebootError::Run {
                    command: command.to_string(),
                    source,
                };
                let finished = command.run(Some(command_limit)).await.map_err(run_error)?;
                match finished.ending {
                    Ending::Code(0) => Ok(()),
                    Ending::Code(code) => Err(RebootError::Exit {
                        command: command.to_string(),
                        code,
                        stderr: finished.stderr,
                    }),
                    Ending::Signal(signal) => Err(RebootError::Killed {
                        command: command.to_string(),
                        signal,
                        stderr: finished.stderr,
                    }),
                }
            }
            &Rebooter::Signal { signal, pid } => {
                check_signal(signal)?;
                info!(signal, pid, "sending the reboot signal");
                sys::send_signal(pid, signal).map_err(|source| RebootError::Signal { signal, pid, source })
            }
        }
    }

    /// The longest [`reboot`](Self::reboot) takes before it reports a failure.
    pub fn longest(&self) -> Duration {
        match self {
            Rebooter::Command(_) => COMMAND_TIMEOUT + host::REAP_GRACE + EFFECT_LIMIT,
            Rebooter::Signal { .. } => EFFECT_LIMIT,
        }
    }

    /// Checks, before the first reboot, what can be checked of the way this rebooter reboots.
    /// For the signal method: a signal to this agent itself can never reboot the node, which is an
    /// error; a target that is not systemd may ignore it, which is worth a warning (returned).
    pub fn check_target(&self) -> Result<Option<String>, RebootError> {
        match *self {
            Rebooter::Command(_) => Ok(None),
            Rebooter::Signal { signal, pid } => {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"));
                judge_signal_target(
                    signal,
                    pid,
                    std::process::id(),
                    comm.as_deref().map_err(|e| e.to_string()),
                )
            }
        }
    }

    /// What [`reboot`](Self::reboot) will do, for logs.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Rebooter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rebooter::Command(command) => write!(f, "command {command}"),
            &Rebooter::Signal { signal, pid } => match systemd_signal_name(signal) {
                Some(name) => write!(f, "signal {signal} ({name}) to PID {pid}"),
                None => write!(f, "signal {signal} to PID {pid}"),
            },
        }
    }
}

fn check_signal(signal: i32) -> Result<(), RebootError> {
    let valid = valid_signal_range();
    if valid.contains(&signal) {
        Ok(())
    } else {
        Err(RebootError::InvalidSignal { signal, valid })
    }
}

/// The verdict of [`Rebooter::check_target`] on a signal to `pid` sent by process `own_pid`, where
/// `comm` is the target's `/proc/<pid>/comm` (or why it could not be read).
fn judge_signal_target(
    signal: i32,
    pid: u32,
    own_pid: u32,
    comm: Result<&str, String>,
) -> Result<Option<String>, RebootError> {
    if pid == own_pid {
        return Err(RebootError::SignalsItself { pid });
    }
    let shown = match systemd_signal_name(signal) {
        Some(name) => format!("signal {signal} ({name})"),
        None => format!("signal {signal}"),
    };
    let after =
        crate::duration::GoDuration::from_std(EFFECT_LIMIT).unwrap_or(crate::duration::GoDuration::MAX);
    match comm.map(str::trim) {
        Ok("systemd") => Ok(None),
        Ok(name) => Ok(Some(format!(
            "--reboot-method=signal: PID {pid} is {name:?}, not systemd; it may ignore {shown}, and \
             then every reboot fails {after} after the request (counted in kured_reboot_failures_total \
             with reason=\"no_effect\")"
        ))),
        Err(error) => Ok(Some(format!(
            "--reboot-method=signal: cannot tell whether PID {pid} is systemd (reading /proc/{pid}/comm: \
             {error}); if it ignores {shown}, every reboot fails {after} after the request"
        ))),
    }
}

/// The name systemd's documentation gives a real-time signal.
fn systemd_signal_name(signal: i32) -> Option<String> {
    match signal - SYSTEMD_SIGRTMIN {
        0 => Some("SIGRTMIN".to_owned()),
        offset if offset > 0 && signal <= libc::SIGRTMAX() => Some(format!("SIGRTMIN+{offset}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_signal_is_valid_and_named_as_systemd_names_it() {
        assert!(valid_signal_range().contains(&DEFAULT_SIGNAL));
        let rebooter = Rebooter::signal(DEFAULT_SIGNAL).unwrap();
        assert_eq!(rebooter, Rebooter::Signal { signal: 39, pid: 1 });
        assert_eq!(rebooter.describe(), "signal 39 (SIGRTMIN+5) to PID 1");
    }

    #[test]
    fn signals_outside_the_real_time_range_are_refused() {
        let valid = valid_signal_range();
        for signal in [
            0,
            libc::SIGKILL,
            libc::SIGTERM,
            valid.start() - 1,
            valid.end() + 1,
        ] {
            let err = Rebooter::signal(signal).unwrap_err();
            assert!(
                matches!(err, RebootError::InvalidSignal { signal: s, .. } if s == signal),
                "{signal}"
            );
        }
    }

    #[tokio::test]
    async fn an_invalid_signal_built_directly_is_refused_before_anything_is_sent() {
        // Signal 0 would only probe for the process; it must not count as a reboot request.
        let rebooter = Rebooter::Signal {
            signal: 0,
            pid: std::process::id(),
        };
        let err = rebooter.reboot().await.unwrap_err();
        assert!(matches!(err, RebootError::InvalidSignal { signal: 0, .. }));
    }

    #[test]
    fn the_default_command_is_described_with_its_namespace() {
        let rebooter = Rebooter::command("/bin/systemctl reboot", HostNamespace::pid1()).unwrap();
        assert_eq!(
            rebooter.describe(),
            "command `/bin/systemctl reboot` in the mount namespace of PID 1"
        );
    }

    #[test]
    fn a_malformed_reboot_command_is_an_error_naming_it() {
        let err = Rebooter::command("systemctl 'reboot", HostNamespace::pid1()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"cannot use "systemctl 'reboot" as reboot command"#
        );
        assert!(matches!(
            err,
            RebootError::Parse {
                source: HostCommandError::Split,
                ..
            }
        ));
    }

    /// What [`judge_signal_target`] should answer.
    #[derive(Debug)]
    enum Want {
        Fine,
        Refused,
        /// A warning containing this.
        Warns(&'static str),
    }

    /// (case, target pid, our pid, its comm, verdict)
    type TargetCase = (&'static str, u32, u32, Result<&'static str, String>, Want);

    #[test]
    fn the_signal_target_is_checked_before_the_first_reboot() {
        let cases: Vec<TargetCase> = vec![
            ("systemd on the host", 1, 4242, Ok("systemd\n"), Want::Fine),
            (
                "the agent is PID 1: no hostPID",
                1,
                1,
                Ok("kured\n"),
                Want::Refused,
            ),
            (
                "ourselves, whatever we are called",
                77,
                77,
                Ok("systemd\n"),
                Want::Refused,
            ),
            (
                "another init",
                1,
                4242,
                Ok("tini\n"),
                Want::Warns(r#"PID 1 is "tini", not systemd; it may ignore signal 39 (SIGRTMIN+5)"#),
            ),
            (
                "unreadable",
                1,
                4242,
                Err("Permission denied (os error 13)".to_owned()),
                Want::Warns("cannot tell whether PID 1 is systemd (reading /proc/1/comm: Permission denied"),
            ),
        ];
        for (case, pid, own, comm, want) in cases {
            let verdict = judge_signal_target(DEFAULT_SIGNAL, pid, own, comm);
            match (&want, verdict) {
                (Want::Refused, Err(RebootError::SignalsItself { pid: p })) => assert_eq!(p, pid, "{case}"),
                (Want::Fine, Ok(None)) => {}
                (Want::Warns(part), Ok(Some(text))) => {
                    assert!(text.contains(part), "{case}: {text}");
                    assert!(text.contains("10m0s"), "{case}: names the limit: {text}");
                }
                (want, other) => panic!("{case}: want {want:?}, got {other:?}"),
            }
        }
        let refusal = judge_signal_target(DEFAULT_SIGNAL, 1, 1, Ok("kured")).unwrap_err();
        assert!(refusal.to_string().contains("set hostPID: true"), "{refusal}");
    }

    #[test]
    fn failures_are_labelled_for_the_metric() {
        let command = "`x` in the mount namespace of PID 1".to_owned();
        let cases = [
            (
                RebootError::Run {
                    command: command.clone(),
                    source: HostCommandError::Timeout {
                        after: COMMAND_TIMEOUT,
                        stderr: String::new(),
                    },
                },
                "timeout",
            ),
            (
                RebootError::NoEffect {
                    rebooter: command.clone(),
                    after: EFFECT_LIMIT,
                },
                "no_effect",
            ),
            (
                RebootError::Exit {
                    command,
                    code: 1,
                    stderr: String::new(),
                },
                "failed",
            ),
            (RebootError::SignalsItself { pid: 1 }, "failed"),
        ];
        for (error, reason) in cases {
            assert_eq!(error.metric_reason(), reason, "{error}");
            assert!(FAILURE_REASONS.contains(&reason));
        }
        let no_effect = RebootError::NoEffect {
            rebooter: "signal 39 (SIGRTMIN+5) to PID 1".into(),
            after: EFFECT_LIMIT,
        };
        assert_eq!(
            no_effect.to_string(),
            "the reboot was requested (signal 39 (SIGRTMIN+5) to PID 1), but the node has not rebooted: \
             this agent is still running 10m0s later"
        );
    }

    #[test]
    fn the_longest_reboot_covers_the_command_and_the_wait_for_the_effect() {
        let command = Rebooter::command("/bin/systemctl reboot", HostNamespace::pid1()).unwrap();
        assert!(command.longest() > COMMAND_TIMEOUT + EFFECT_LIMIT);
        assert_eq!(Rebooter::signal(DEFAULT_SIGNAL).unwrap().longest(), EFFECT_LIMIT);
    }

    #[test]
    fn signals_without_a_systemd_name_are_shown_by_number_only() {
        let rebooter = Rebooter::Signal { signal: 33, pid: 1 };
        assert_eq!(rebooter.describe(), "signal 33 to PID 1");
        let rebooter = Rebooter::Signal { signal: 34, pid: 1 };
        assert_eq!(rebooter.describe(), "signal 34 (SIGRTMIN) to PID 1");
    }
}
