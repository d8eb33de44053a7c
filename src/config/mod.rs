//! Command line and environment: every upstream kured flag with its upstream default, each also
//! settable as `KURED_<FLAG_IN_UPPER_SNAKE>` (which meets the flag as upstream's does), parsed
//! once and checked once. The agent's flags are built into a [`Config`] holding each module's own
//! settings ([`DrainSettings`], [`LockSettings`], [`BlockerSettings`], …): the modules know
//! nothing of flags, and nothing below `main` and the agent imports this one.
//!
//! - `args`: the flags as clap declares them;
//! - `env`: how a `KURED_*` variable meets its flag when both are given;
//! - `agent`: the agent's flags checked and built into [`Config`];
//! - `notify_urls`: `--notify-url` and the Slack flags made into notification targets.

mod agent;
mod args;
mod env;
mod notify_urls;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use agent::REBOOT_ALLOWANCE;
pub use args::{
    AgentArgs, Command, ControlArgs, LockArgs, LockBackend, LogFormat, NotifyArgs, NotifyUrlArgs,
    OperatorArgs, OutputFormat, RebootArgs, RebootMethod, ScheduleArgs, StatusArgs, WindowArgs,
};
pub use notify_urls::redact_url;

use crate::blockers::BlockerSettings;
use crate::decide::LoopGuard;
use crate::drain::DrainSettings;
use crate::gate::GateSettings;
use crate::lock::{LockObject, LockSettings};
use crate::metrics::PhaseLimits;
use crate::node::NodeLabel;
use crate::notify::Target;
use crate::reboot::Rebooter;
use crate::sentinel::Sentinel;
use crate::window::{RebootWindow, WindowError};
use env::{Meeting, Override, env_overrides, with_variables};

/// Kubernetes Reboot Daemon: reboots nodes that need it, a few at a time, safely.
#[derive(Debug, Parser)]
#[command(name = "kured", version = crate::VERSION, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Warnings about `KURED_*` variables that replaced a different value given to their flag on
    /// the command line; shown once logging is set up.
    #[arg(skip)]
    pub env_overrides: Vec<String>,
}

impl Cli {
    /// The command line definition. Values found in the environment are never shown in
    /// `--help`: `KURED_NOTIFY_URL` and friends carry secrets.
    pub fn command() -> clap::Command {
        <Cli as clap::CommandFactory>::command()
            .mut_args(|a| a.hide_env_values(true))
            .mut_subcommands(|sub| sub.mut_args(|a| a.hide_env_values(true)))
    }

    /// Parses arguments and `KURED_*` environment variables, read now. A variable that is set
    /// (and not empty) and its flag given on the command line meet as in upstream kured, which
    /// reads the variables after the flags (see `env::Meeting`).
    pub fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Self::command();
        let mut matches = command.clone().try_get_matches_from(&args)?;
        let met = env_overrides(&command, &matches, |name| std::env::var_os(name));
        if met.iter().any(|o| o.meeting != Meeting::FlagWins) {
            // Parsed again with the variables' part applied to the command line.
            matches = command.try_get_matches_from(with_variables(&args, &met))?;
        }
        let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
        cli.env_overrides = met.iter().filter_map(Override::warning).collect();
        Ok(cli)
    }
}

/// A flag whose value cannot be used: the flag, the value, and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --{flag} {value:?}: {expected}")]
    Invalid {
        flag: &'static str,
        value: String,
        expected: String,
    },
    /// The window's own errors already name the flag and the value.
    #[error(transparent)]
    Window(#[from] WindowError),
}

fn invalid(flag: &'static str, value: &str, expected: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_owned(),
        expected: expected.to_string(),
    }
}

/// The validated configuration of an agent: its own settings, and those of each module it runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub kubeconfig: Option<PathBuf>,
    pub period: Duration,
    pub sentinel: Sentinel,
    pub rebooter: Rebooter,
    pub reboot_delay: Duration,
    pub force_reboot: bool,
    pub drain_delay: Duration,
    pub drain: DrainSettings,
    /// Where the lock is kept.
    pub lock_object: LockObject,
    pub lock: LockSettings,
    pub blockers: BlockerSettings,
    pub prefer_no_schedule_taint: Option<String>,
    /// The post-reboot health gate; `None`: off (the lock is released once the node is back).
    pub gate: Option<GateSettings>,
    /// The reboot-loop guard; `None`: off.
    pub loop_guard: Option<LoopGuard>,
    pub window: RebootWindow,
    pub annotate_nodes: bool,
    pub pre_reboot_node_labels: Vec<NodeLabel>,
    pub post_reboot_node_labels: Vec<NodeLabel>,
    /// From `--notify-url`, or else the deprecated `--slack-hook-url`; Slack targets carry
    /// `--slack-username` and `--slack-channel` where their URL sets neither.
    pub notify_targets: Vec<Target>,
    pub message_template_drain: String,
    pub message_template_reboot: String,
    pub message_template_uncordon: String,
    /// How long a round may take in each phase before `/healthz` reports the agent stuck.
    pub phase_limits: PhaseLimits,
    pub log_format: LogFormat,
    pub metrics_addr: String,
    /// Things worth a warning at start-up that do not stop the agent.
    pub warnings: Vec<String>,
    /// Errors at start-up that do not stop the agent (a notification URL that cannot be used).
    pub errors: Vec<String>,
}

impl LockArgs {
    /// `--lock-backend`, `--ds-namespace`, `--ds-name`, `--lock-annotation`.
    pub fn lock_object(&self) -> Result<LockObject, ConfigError> {
        let annotation = strip_quotes(&self.lock_annotation);
        crate::selector::check_key(annotation).map_err(|e| invalid("lock-annotation", annotation, e))?;
        Ok(LockObject {
            backend: self.lock_backend.backend(),
            namespace: strip_quotes(&self.ds_namespace).to_owned(),
            name: strip_quotes(&self.ds_name).to_owned(),
            annotation: annotation.to_owned(),
        })
    }
}

impl OperatorArgs {
    /// The lock object of an operator's command: as [`LockArgs::lock_object`], and neither its
    /// namespace nor its name empty (the agent finds out when it first reads it).
    pub fn lock_object(&self) -> Result<LockObject, ConfigError> {
        let lock = self.lock.lock_object()?;
        for (flag, value) in [("ds-namespace", &lock.namespace), ("ds-name", &lock.name)] {
            if value.is_empty() {
                return Err(invalid(flag, value, "expected a name"));
            }
        }
        Ok(lock)
    }
}

/// Removes one pair of matching surrounding quotes. A manifest's `command:` list is not run by
/// a shell, so `--notify-url=""` (as in upstream's example manifest) arrives with the quotes.
pub fn strip_quotes(value: &str) -> &str {
    let b = value.as_bytes();
    if b.len() >= 2 && b[0] == b[b.len() - 1] && matches!(b[0], b'"' | b'\'') {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

fn non_empty(value: &str) -> Option<&str> {
    let v = strip_quotes(value);
    (!v.is_empty()).then_some(v)
}

/// Parses a URL flag. The value of a flag that carries secrets (notification URLs) is shown
/// redacted in the error.
fn parse_url(flag: &'static str, value: &str, secret: bool) -> Result<url::Url, ConfigError> {
    let shown = if secret {
        redact_url(value)
    } else {
        value.to_owned()
    };
    let parsed = url::Url::parse(value).map_err(|e| invalid(flag, &shown, format!("not a URL: {e}")))?;
    if parsed.cannot_be_a_base() {
        return Err(invalid(flag, &shown, "expected a URL like scheme://host/path"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests;
