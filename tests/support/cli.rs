//! The `kured` binary as an operator runs it: a command line without the caller's `KURED_*`
//! variables, what it printed and how it exited, and whether the agent accepts its flags.

use std::ffi::OsStr;
use std::fmt;
use std::process::Command;

/// The kured binary, with no `KURED_*` variable of the caller's environment: tests set what they
/// need.
pub fn kured() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kured"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KURED_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// How a command ended, and what it printed.
#[derive(Debug)]
pub struct Ran {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The last line of stderr, where the binary puts the error it exits with.
    pub fn last_error_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or_default()
    }
}

/// Both outputs, for a failure message.
impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to its end and reads what it printed.
pub fn run(command: &mut Command) -> Ran {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", command.get_program()));
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether the agent accepts `args` and the environment `env` (and nothing else of the caller's
/// environment). It validates them all at start; valid ones get it as far as reading its
/// kubeconfig, given here as a file that does not exist (exit 1); a bad flag, value or variable
/// stops it before that (exit 2, naming it), which is the error returned.
pub fn agent_accepts<A, E>(args: A, env: E) -> Result<(), String>
where
    A: IntoIterator,
    A::Item: AsRef<OsStr>,
    E: IntoIterator<Item = (String, String)>,
{
    let out = run(Command::new(env!("CARGO_BIN_EXE_kured"))
        .args(args)
        .arg("--kubeconfig=/nonexistent/kubeconfig")
        .env_clear()
        .envs(env));
    if out.code == Some(1) && out.stderr.contains("--kubeconfig /nonexistent/kubeconfig") {
        Ok(())
    } else {
        Err(format!("exit {:?}: {}", out.code, out.stderr))
    }
}
