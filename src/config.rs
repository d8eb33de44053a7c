//! Command line and environment: every upstream kured flag with its upstream default, each also
//! settable as `KURED_<FLAG_IN_UPPER_SNAKE>` (which wins over the flag, as upstream's does),
//! parsed once and validated once into [`Config`].

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jiff::Timestamp;
use regex::Regex;

use crate::duration::GoDuration;
use crate::notify::Target;
use crate::reboot::{HostNamespace, Rebooter, valid_signal_range};
use crate::selector::{self, LabelSelector};
use crate::sentinel::Sentinel;
use crate::window::{RebootWindow, WindowError};

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
    /// reads the variables after the flags (see [`Meeting`]).
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

/// What becomes of a flag given on the command line when its `KURED_*` variable is set too,
/// following upstream, which sets each flag again from its variable after parsing the command
/// line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meeting {
    /// A single-valued flag: the variable's value replaces the flag's.
    VariableWins,
    /// A comma-separated list (`--reboot-days`, the node-label flags): the variable's values
    /// are added after the flag's, as setting a list flag again does in upstream.
    Appended,
    /// A repeatable flag whose values may contain commas (`--notify-url`,
    /// `--blocking-pod-selector`): upstream never reads these variables, so the flag's values
    /// stand; the variable counts only when the flag is not given.
    FlagWins,
}

/// A flag given on the command line whose `KURED_*` variable is set too.
#[derive(Debug)]
struct Override {
    long: String,
    variable: String,
    meeting: Meeting,
    /// Whether `--long VALUE` takes the next argument as its value (flags with an optional
    /// value take it only as `--long=VALUE`).
    takes_next: bool,
    flag_values: Vec<OsString>,
    variable_value: OsString,
    delimiter: Option<char>,
}

/// Flags whose values may carry credentials: their values are never shown in a warning.
const SECRET_FLAGS: [&str; 3] = ["notify-url", "slack-hook-url", "prometheus-url"];

impl Override {
    /// The warning for a variable whose value differs from the flag's; none when they agree.
    fn warning(&self) -> Option<String> {
        let given: Vec<String> = self
            .flag_values
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let from_variable = self.variable_value.to_string_lossy();
        let same = match self.delimiter {
            Some(d) => given.join(&d.to_string()) == from_variable,
            None => given.len() == 1 && given[0] == from_variable,
        };
        if same {
            return None;
        }
        let (variable, long) = (&self.variable, &self.long);
        let outcome = match self.meeting {
            Meeting::VariableWins => "the variable's value is used, as in upstream kured",
            Meeting::Appended => "the variable's values are added to the flag's, as in upstream kured",
            Meeting::FlagWins => "the flag's values are used: upstream kured never reads this variable",
        };
        Some(if SECRET_FLAGS.contains(&long.as_str()) {
            format!(
                "both {variable} and --{long} are set, to different values (not shown: they may hold credentials); {outcome}"
            )
        } else {
            let given: Vec<String> = given.iter().map(|v| format!("--{long}={v:?}")).collect();
            format!(
                "both {variable}={from_variable:?} and {} are set; {outcome}",
                given.join(" ")
            )
        })
    }
}

/// The flags of the command `matches` ran (the agent's or a subcommand's) that were given on the
/// command line while their variable is set.
fn env_overrides(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    env: impl Fn(&str) -> Option<OsString>,
) -> Vec<Override> {
    let (command, matches) = match matches.subcommand() {
        Some((name, sub)) => match command.find_subcommand(name) {
            Some(found) => (found, sub),
            None => return Vec::new(),
        },
        None => (command, matches),
    };
    command
        .get_arguments()
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_str()?;
            let long = arg.get_long()?;
            if matches.value_source(arg.get_id().as_str()) != Some(clap::parser::ValueSource::CommandLine) {
                return None;
            }
            // An empty variable counts as unset, as clap reads it.
            let variable_value = env(variable).filter(|v| !v.is_empty())?;
            let flag_values = matches
                .get_raw(arg.get_id().as_str())
                .map(|values| values.map(OsStr::to_owned).collect())
                .unwrap_or_default();
            let optional_value = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            let takes_next =
                arg.get_action().takes_values() && !optional_value && !arg.is_require_equals_set();
            let delimiter = arg.get_value_delimiter();
            let meeting = match (arg.get_action(), delimiter) {
                (clap::ArgAction::Append, Some(_)) => Meeting::Appended,
                (clap::ArgAction::Append, None) => Meeting::FlagWins,
                _ => Meeting::VariableWins,
            };
            Some(Override {
                long: long.to_owned(),
                variable: variable.to_owned(),
                meeting,
                takes_next,
                flag_values,
                variable_value,
                delimiter,
            })
        })
        .collect()
}

/// `args` with the variables of `met` applied: the flags a variable wins over removed (each
/// `--long=VALUE`, or `--long` and, for a flag that takes one, the value after it, so that clap
/// takes the variable), and `--long=VALUE` added for the lists a variable adds to. Nothing after
/// `--` is touched.
fn with_variables(args: &[OsString], met: &[Override]) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut rest = args.iter();
    let mut after_separator = Vec::new();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            after_separator.push(arg.clone());
            after_separator.extend(rest.by_ref().cloned());
            break;
        }
        let text = arg.to_string_lossy();
        let named = text
            .strip_prefix("--")
            .map(|s| s.split_once('=').map_or((s, false), |(n, _)| (n, true)));
        let replaced = named.and_then(|(name, with_value)| {
            met.iter()
                .find(|o| o.long == name && o.meeting == Meeting::VariableWins)
                .map(|o| (o, with_value))
        });
        match replaced {
            Some((o, false)) if o.takes_next => {
                rest.next();
            }
            Some(_) => {}
            None => kept.push(arg.clone()),
        }
    }
    for o in met.iter().filter(|o| o.meeting == Meeting::Appended) {
        let mut added = OsString::from(format!("--{}=", o.long));
        added.push(&o.variable_value);
        kept.push(added);
    }
    kept.extend(after_separator);
    kept
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a test message to each notification URL and report, per URL, whether it got through.
    Notify(NotifyArgs),
    /// Print whether an instant is inside the reboot window, and the window's next openings.
    Schedule(ScheduleArgs),
    /// Show every node's reboot need, agent phase, lock holders and cordon state.
    Status(StatusArgs),
}

/// Where the lock is: shared by the agent and `kured status`.
#[derive(Debug, Clone, Args)]
pub struct LockArgs {
    /// Namespace of the DaemonSet that carries the lock
    #[arg(long, env = "KURED_DS_NAMESPACE", default_value = "kube-system")]
    pub ds_namespace: String,
    /// Name of the DaemonSet that carries the lock
    #[arg(long, env = "KURED_DS_NAME", default_value = "kured")]
    pub ds_name: String,
    /// Annotation on the DaemonSet that records the lock holders
    #[arg(
        long,
        env = "KURED_LOCK_ANNOTATION",
        default_value = "weave.works/kured-node-lock"
    )]
    pub lock_annotation: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Path of a kubeconfig file (default: KUBECONFIG, ~/.kube/config, then in-cluster)
    #[arg(long, env = "KURED_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Keep showing the status, refreshed every two seconds, until interrupted
    #[arg(long)]
    pub watch: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// How the agent reboots its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootMethod {
    /// Run --reboot-command in the host's mount namespace (needs a privileged pod with hostPID).
    Command,
    /// Send --reboot-signal to PID 1 (needs hostPID and CAP_KILL only).
    Signal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// The reboot window flags, shared by the agent and `kured schedule`.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Schedule reboots only on these days (names, 2/3-letter abbreviations or 0-6, 0 = Sunday)
    #[arg(
        long,
        env = "KURED_REBOOT_DAYS",
        value_delimiter = ',',
        default_value = "su,mo,tu,we,th,fr,sa"
    )]
    pub reboot_days: Vec<String>,
    /// Schedule reboots only after this time of day (15:04, 15:04:05, 03:04pm, 15, 03pm, 3pm)
    #[arg(long, env = "KURED_START_TIME", default_value = "0:00")]
    pub start_time: String,
    /// Schedule reboots only before this time of day
    #[arg(long, env = "KURED_END_TIME", default_value = "23:59:59")]
    pub end_time: String,
    /// Time zone of --start-time and --end-time (an IANA name such as Europe/Berlin, or UTC)
    #[arg(long, env = "KURED_TIME_ZONE", default_value = "UTC")]
    pub time_zone: String,
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub window: WindowArgs,
    /// The instant to evaluate, RFC 3339 (default: now)
    #[arg(long, value_parser = parse_timestamp)]
    pub at: Option<Timestamp>,
    /// How many openings to list
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,
    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Where notifications go, shared by the agent and `kured notify`.
#[derive(Debug, Clone, Args)]
pub struct NotifyUrlArgs {
    /// Notification URL in shoutrrr syntax (repeatable)
    #[arg(long, env = "KURED_NOTIFY_URL")]
    pub notify_url: Vec<String>,
    /// Slack incoming webhook URL [deprecated: use --notify-url]
    #[arg(long, env = "KURED_SLACK_HOOK_URL", default_value = "")]
    pub slack_hook_url: String,
    /// Slack user name for notifications
    #[arg(long, env = "KURED_SLACK_USERNAME", default_value = "kured")]
    pub slack_username: String,
    /// Slack channel for notifications
    #[arg(long, env = "KURED_SLACK_CHANNEL", default_value = "")]
    pub slack_channel: String,
}

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub urls: NotifyUrlArgs,
    /// The message to send
    #[arg(long, default_value = "Test notification from kured")]
    pub message: String,
}

/// The agent's flags. Names, defaults and meanings follow upstream kured.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Name of the node this agent runs on (set KURED_NODE_ID from spec.nodeName)
    #[arg(long, env = "KURED_NODE_ID")]
    pub node_id: Option<String>,
    /// Path of a kubeconfig file, for running outside the cluster (default: KUBECONFIG, then in-cluster)
    #[arg(long, env = "KURED_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Sentinel check period
    #[arg(long, env = "KURED_PERIOD", default_value = "1h", value_parser = parse_duration)]
    pub period: GoDuration,
    /// Path of the file whose existence means a reboot is required
    #[arg(
        long,
        env = "KURED_REBOOT_SENTINEL",
        default_value = "/var/run/reboot-required"
    )]
    pub reboot_sentinel: PathBuf,
    /// Command whose exit code 0 means a reboot is required (1: not required); overrides --reboot-sentinel
    #[arg(long, env = "KURED_REBOOT_SENTINEL_COMMAND", default_value = "")]
    pub reboot_sentinel_command: String,

    /// How to reboot
    #[arg(long, env = "KURED_REBOOT_METHOD", value_enum, default_value_t = RebootMethod::Command)]
    pub reboot_method: RebootMethod,
    /// Command that reboots the host, run in the host's mount namespace (--reboot-method=command)
    #[arg(long, env = "KURED_REBOOT_COMMAND", default_value = "/bin/systemctl reboot")]
    pub reboot_command: String,
    /// Signal sent to PID 1 (--reboot-method=signal); 39 is SIGRTMIN+5, systemd's reboot request
    #[arg(
        long,
        env = "KURED_REBOOT_SIGNAL",
        default_value_t = 39,
        allow_negative_numbers = true
    )]
    pub reboot_signal: i32,
    /// Wait this long after draining before rebooting
    #[arg(long, env = "KURED_REBOOT_DELAY", default_value = "0", value_parser = parse_duration)]
    pub reboot_delay: GoDuration,
    /// Reboot even if the drain fails or times out
    #[arg(long, env = "KURED_FORCE_REBOOT", default_value = "false", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub force_reboot: bool,

    /// Wait this long after taking the lock before draining
    #[arg(long, env = "KURED_DRAIN_DELAY", default_value = "0", value_parser = parse_duration)]
    pub drain_delay: GoDuration,
    /// Abort the drain after this long (0: no limit)
    #[arg(long, env = "KURED_DRAIN_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    pub drain_timeout: GoDuration,
    /// Seconds each evicted pod gets to terminate; negative: the pod's own terminationGracePeriodSeconds
    #[arg(long, env = "KURED_DRAIN_GRACE_PERIOD", default_value_t = -1, allow_negative_numbers = true)]
    pub drain_grace_period: i64,
    /// Drain only pods matching this label selector (default: all pods)
    #[arg(long, env = "KURED_DRAIN_POD_SELECTOR", default_value = "")]
    pub drain_pod_selector: String,
    /// When above zero, stop waiting for pods whose deletion began more than this many seconds ago
    #[arg(long, env = "KURED_SKIP_WAIT_FOR_DELETE_TIMEOUT", default_value_t = 0)]
    pub skip_wait_for_delete_timeout: u64,

    #[command(flatten)]
    pub lock: LockArgs,
    /// Treat a lock held longer than this as abandoned (0: never)
    #[arg(long, env = "KURED_LOCK_TTL", default_value = "0", value_parser = parse_duration)]
    pub lock_ttl: GoDuration,
    /// Keep the lock this long after the node is back, before the next node may go
    #[arg(long, env = "KURED_LOCK_RELEASE_DELAY", default_value = "0", value_parser = parse_duration)]
    pub lock_release_delay: GoDuration,
    /// How many nodes may reboot at the same time
    #[arg(long, env = "KURED_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,

    /// Prometheus server to ask for active alerts; any active alert blocks reboots
    #[arg(long, env = "KURED_PROMETHEUS_URL", default_value = "")]
    pub prometheus_url: String,
    /// Ignore alerts whose name matches this regular expression
    #[arg(long, env = "KURED_ALERT_FILTER_REGEXP", default_value = "")]
    pub alert_filter_regexp: String,
    /// Block only on alerts that match --alert-filter-regexp (inverts the filter)
    #[arg(long, env = "KURED_ALERT_FILTER_MATCH_ONLY", default_value = "false", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub alert_filter_match_only: bool,
    /// Consider only firing alerts, not pending ones
    #[arg(long, env = "KURED_ALERT_FIRING_ONLY", default_value = "false", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub alert_firing_only: bool,
    /// Label selector of pods on this node whose presence blocks reboots (repeatable)
    #[arg(long, env = "KURED_BLOCKING_POD_SELECTOR")]
    pub blocking_pod_selector: Vec<String>,

    /// Taint with this key and effect PreferNoSchedule while waiting for the lock (default: off)
    #[arg(long, env = "KURED_PREFER_NO_SCHEDULE_TAINT", default_value = "")]
    pub prefer_no_schedule_taint: String,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Annotate nodes with weave.works/kured-reboot-in-progress and weave.works/kured-most-recent-reboot-needed
    #[arg(long, env = "KURED_ANNOTATE_NODES", default_value = "false", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub annotate_nodes: bool,
    /// Labels (key=value) to set on the node before cordoning
    #[arg(long, env = "KURED_PRE_REBOOT_NODE_LABELS", value_delimiter = ',')]
    pub pre_reboot_node_labels: Vec<String>,
    /// Labels (key=value) to set on the node after uncordoning
    #[arg(long, env = "KURED_POST_REBOOT_NODE_LABELS", value_delimiter = ',')]
    pub post_reboot_node_labels: Vec<String>,

    #[command(flatten)]
    pub notify: NotifyUrlArgs,
    /// Message sent when draining starts (%s: the node)
    #[arg(
        long,
        env = "KURED_MESSAGE_TEMPLATE_DRAIN",
        default_value = "Draining node %s"
    )]
    pub message_template_drain: String,
    /// Message sent before rebooting (%s: the node)
    #[arg(
        long,
        env = "KURED_MESSAGE_TEMPLATE_REBOOT",
        default_value = "Rebooting node %s"
    )]
    pub message_template_reboot: String,
    /// Message sent after the node is back and uncordoned (%s: the node)
    #[arg(
        long,
        env = "KURED_MESSAGE_TEMPLATE_UNCORDON",
        default_value = "Node %s rebooted & uncordoned successfully!"
    )]
    pub message_template_uncordon: String,

    /// Log format: text, or json keyed time, level, msg as upstream
    #[arg(long, env = "KURED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address to serve /metrics and /healthz on (default: every IPv6 and IPv4 address)
    #[arg(long, env = "KURED_METRICS_HOST", default_value = "")]
    pub metrics_host: String,
    /// Port to serve /metrics and /healthz on
    #[arg(long, env = "KURED_METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,
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

/// A label to set on the node, from `--pre-reboot-node-labels` / `--post-reboot-node-labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLabel {
    pub key: String,
    pub value: String,
}

/// Which alerts block a reboot.
#[derive(Debug, Clone)]
pub struct AlertFilter {
    pub regexp: Option<Regex>,
    pub match_only: bool,
    pub firing_only: bool,
}

/// The validated configuration of an agent.
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
    /// `None`: no limit.
    pub drain_timeout: Option<Duration>,
    /// `None`: each pod's own grace period.
    pub drain_grace_period: Option<Duration>,
    pub drain_pod_selector: LabelSelector,
    /// `None`: always wait for deletions to finish.
    pub skip_wait_for_delete_timeout: Option<Duration>,
    pub ds_namespace: String,
    pub ds_name: String,
    pub lock_annotation: String,
    /// `None`: a lock never expires.
    pub lock_ttl: Option<Duration>,
    pub lock_release_delay: Duration,
    pub concurrency: u32,
    pub prometheus_url: Option<url::Url>,
    pub alert_filter: AlertFilter,
    pub blocking_pod_selectors: Vec<LabelSelector>,
    pub prefer_no_schedule_taint: Option<String>,
    pub window: RebootWindow,
    pub annotate_nodes: bool,
    pub pre_reboot_node_labels: Vec<NodeLabel>,
    pub post_reboot_node_labels: Vec<NodeLabel>,
    /// From `--notify-url`, or else the deprecated `--slack-hook-url`; Slack targets carry
    /// `--slack-username` and `--slack-channel` where their URL sets neither.
    pub notify_targets: Vec<Target>,
    pub slack_username: String,
    pub slack_channel: Option<String>,
    pub message_template_drain: String,
    pub message_template_reboot: String,
    pub message_template_uncordon: String,
    pub log_format: LogFormat,
    pub metrics_addr: String,
    /// Things worth a warning at start-up that do not stop the agent.
    pub warnings: Vec<String>,
    /// Errors at start-up that do not stop the agent (a notification URL that cannot be used).
    pub errors: Vec<String>,
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

fn parse_duration(value: &str) -> Result<GoDuration, String> {
    value
        .parse::<GoDuration>()
        .map_err(|e| format!("{e} (expected a Go duration such as 90s, 30m, 1h30m)"))
}

fn parse_timestamp(value: &str) -> Result<Timestamp, String> {
    value
        .parse::<Timestamp>()
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-27T22:00:00Z)"))
}

/// Go's `strconv.ParseBool`, which upstream's flags and environment variables accept.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn non_negative(flag: &'static str, d: GoDuration) -> Result<Duration, ConfigError> {
    d.to_std()
        .ok_or_else(|| invalid(flag, &d.to_string(), "expected a duration that is not negative"))
}

/// `0` means "off" for several upstream durations.
fn zero_is_none(flag: &'static str, d: GoDuration) -> Result<Option<Duration>, ConfigError> {
    non_negative(flag, d).map(|d| (!d.is_zero()).then_some(d))
}

fn parse_selector(flag: &'static str, value: &str) -> Result<LabelSelector, ConfigError> {
    LabelSelector::parse(strip_quotes(value))
        .map_err(|e| invalid(flag, value, format!("not a label selector: {e}")))
}

fn parse_labels(flag: &'static str, values: &[String]) -> Result<Vec<NodeLabel>, ConfigError> {
    values
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| {
            let (key, value) = v
                .split_once('=')
                .ok_or_else(|| invalid(flag, v, "expected key=value"))?;
            selector::check_key(key).map_err(|e| invalid(flag, v, e))?;
            selector::check_value(value).map_err(|e| invalid(flag, v, e))?;
            Ok(NodeLabel {
                key: key.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect()
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

impl NotifyUrlArgs {
    /// The notification targets: each `--notify-url`, or else the deprecated `--slack-hook-url`
    /// (with upstream's warnings). A URL that cannot be used is an error (`kured notify`).
    pub fn targets(&self, warnings: &mut Vec<String>) -> Result<Vec<Target>, ConfigError> {
        self.collect(warnings, None)
    }

    /// The agent's targets: as [`NotifyUrlArgs::targets`], except that a URL that cannot be used
    /// does not stop the agent. It becomes a [`Target::unusable`], whose every notification
    /// fails and is counted, and its error (the URL redacted) goes to `errors` to be logged at
    /// start.
    pub fn agent_targets(&self, warnings: &mut Vec<String>, errors: &mut Vec<String>) -> Vec<Target> {
        match self.collect(warnings, Some(errors)) {
            Ok(targets) => targets,
            // `collect` with a place for errors returns none.
            Err(e) => {
                errors.push(e.to_string());
                Vec::new()
            }
        }
    }

    fn collect(
        &self,
        warnings: &mut Vec<String>,
        mut errors: Option<&mut Vec<String>>,
    ) -> Result<Vec<Target>, ConfigError> {
        let username = strip_quotes(&self.slack_username);
        let channel = non_empty(&self.slack_channel);
        // A URL that cannot be used: an error, or with `errors`, a target that fails.
        let mut unusable =
            |labelled_as: &str, shown: String, error: ConfigError, reason: String| match &mut errors {
                Some(errors) => {
                    errors.push(error.to_string());
                    Ok(Target::unusable(labelled_as, shown, reason))
                }
                None => Err(error),
            };
        let mut targets = Vec::new();
        for url in self.notify_url.iter().filter_map(|u| non_empty(u)) {
            let target = match Target::parse(url) {
                Ok(target) => target.with_slack_defaults(username, channel),
                Err(e) => {
                    let shown = redact_url(url);
                    let reason = e.to_string();
                    unusable(url, shown.clone(), invalid("notify-url", &shown, e), reason)?
                }
            };
            targets.push(target);
        }
        let Some(hook) = non_empty(&self.slack_hook_url) else {
            return Ok(targets);
        };
        if !targets.is_empty() {
            warnings
                .push("both --notify-url and --slack-hook-url are set; only --notify-url is used".to_owned());
            return Ok(targets);
        }
        warnings.push("--slack-hook-url is deprecated; use --notify-url".to_owned());
        let url = parse_url("slack-hook-url", hook, true).and_then(|url| {
            if matches!(url.scheme(), "http" | "https") {
                Ok(url)
            } else {
                Err(invalid(
                    "slack-hook-url",
                    &redact_url(hook),
                    "expected an https:// webhook URL",
                ))
            }
        });
        let target = match url {
            Ok(url) => Target::slack_hook(url, username, channel),
            // Counted under `slack`, the service the flag is for.
            Err(e) => {
                let reason = e.to_string();
                unusable("slack://", redact_url(hook), e, reason)?
            }
        };
        Ok(vec![target])
    }
}

impl NotifyArgs {
    /// The targets to test, and warnings to show; at least one target.
    pub fn targets(&self) -> Result<(Vec<Target>, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let targets = self.urls.targets(&mut warnings)?;
        if targets.is_empty() {
            return Err(invalid(
                "notify-url",
                "",
                "expected at least one notification URL (or --slack-hook-url)",
            ));
        }
        Ok((targets, warnings))
    }
}

/// A URL fit for a log line: scheme and host only. Notification URLs carry their secrets in the
/// user-info, the path or the query (Slack webhooks, Teams workflow signatures, SMTP passwords),
/// and for some services in the host, which is then left out too.
pub fn redact_url(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(u) => match u.host_str() {
            Some(_) if crate::notify::services::host_is_secret(u.scheme()) => {
                format!("{}://<redacted>", u.scheme())
            }
            Some(host) if !u.cannot_be_a_base() => format!("{}://{host}/<redacted>", u.scheme()),
            _ => format!("{}:<redacted>", u.scheme()),
        },
        Err(_) => match value.split_once("://") {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme.len() < 32
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
            {
                format!("{scheme}://<redacted>")
            }
            _ => "<redacted>".to_owned(),
        },
    }
}

impl WindowArgs {
    pub fn window(&self) -> Result<RebootWindow, ConfigError> {
        let days: Vec<&str> = self.reboot_days.iter().map(|d| d.trim()).collect();
        let window = RebootWindow::new(
            &days,
            strip_quotes(&self.start_time),
            strip_quotes(&self.end_time),
            strip_quotes(&self.time_zone),
        )?;
        Ok(window)
    }
}

impl AgentArgs {
    /// Checks every flag and builds the configuration, or names the first flag that is wrong.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let period = non_negative("period", self.period)?;
        if period.is_zero() {
            return Err(invalid(
                "period",
                &self.period.to_string(),
                "expected a duration above zero",
            ));
        }

        let host = HostNamespace::pid1();
        let sentinel_path = self.reboot_sentinel.to_string_lossy();
        let sentinel_path = strip_quotes(&sentinel_path);
        let sentinel_command = strip_quotes(&self.reboot_sentinel_command);
        if sentinel_command.trim().is_empty() && !sentinel_path.starts_with('/') {
            return Err(invalid(
                "reboot-sentinel",
                sentinel_path,
                "expected an absolute path",
            ));
        }
        let sentinel = Sentinel::new(sentinel_path, sentinel_command, host).map_err(|e| {
            invalid(
                "reboot-sentinel-command",
                sentinel_command,
                format!("{e}: expected a command line with balanced quotes"),
            )
        })?;

        let rebooter = match self.reboot_method {
            RebootMethod::Command => {
                let line = strip_quotes(&self.reboot_command);
                Rebooter::command(line, host).map_err(|e| {
                    invalid(
                        "reboot-command",
                        line,
                        format!("{e}: expected a command line with balanced quotes"),
                    )
                })?
            }
            RebootMethod::Signal => Rebooter::signal(self.reboot_signal).map_err(|_| {
                let range = valid_signal_range();
                invalid(
                    "reboot-signal",
                    &self.reboot_signal.to_string(),
                    format!(
                        "expected a real-time signal number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            })?,
        };

        if self.concurrency == 0 {
            return Err(invalid("concurrency", "0", "expected at least 1"));
        }
        let lock_annotation = strip_quotes(&self.lock.lock_annotation);
        selector::check_key(lock_annotation).map_err(|e| invalid("lock-annotation", lock_annotation, e))?;
        let prefer_no_schedule_taint = non_empty(&self.prefer_no_schedule_taint)
            .map(|t| {
                selector::check_key(t).map_err(|e| invalid("prefer-no-schedule-taint", t, e))?;
                Ok::<_, ConfigError>(t.to_owned())
            })
            .transpose()?;

        let regexp = non_empty(&self.alert_filter_regexp)
            .map(|r| {
                Regex::new(r).map_err(|e| {
                    // The regex crate's message spans lines, pointing at the error; keep its verdict.
                    let detail = e.to_string();
                    let reason = detail
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("")
                        .trim();
                    invalid(
                        "alert-filter-regexp",
                        r,
                        format!("not a regular expression ({reason})"),
                    )
                })
            })
            .transpose()?;
        let prometheus_url = non_empty(&self.prometheus_url)
            // Its user, password or query may hold credentials: an error shows it redacted.
            .map(|u| parse_url("prometheus-url", u, true))
            .transpose()?;

        let blocking_pod_selectors = self
            .blocking_pod_selector
            .iter()
            .filter_map(|s| non_empty(s))
            .map(|s| parse_selector("blocking-pod-selector", s))
            .collect::<Result<Vec<_>, _>>()?;

        let pre_reboot_node_labels = parse_labels("pre-reboot-node-labels", &self.pre_reboot_node_labels)?;
        let post_reboot_node_labels = parse_labels("post-reboot-node-labels", &self.post_reboot_node_labels)?;
        let mut warnings = Vec::new();
        fn keys(labels: &[NodeLabel]) -> Vec<&str> {
            let mut k: Vec<&str> = labels.iter().map(|l| l.key.as_str()).collect();
            k.sort_unstable();
            k
        }
        if keys(&pre_reboot_node_labels) != keys(&post_reboot_node_labels) {
            warnings.push(
                "the keys of --pre-reboot-node-labels and --post-reboot-node-labels differ; labels set before a reboot may stay after it"
                    .to_owned(),
            );
        }

        let mut errors = Vec::new();
        let notify_targets = self.notify.agent_targets(&mut warnings, &mut errors);
        let drain_delay = non_negative("drain-delay", self.drain_delay)?;
        let drain_timeout = zero_is_none("drain-timeout", self.drain_timeout)?;
        let reboot_delay = non_negative("reboot-delay", self.reboot_delay)?;
        let lock_ttl = zero_is_none("lock-ttl", self.lock_ttl)?;
        warnings.extend(lock_ttl_warning(
            lock_ttl,
            drain_delay + reboot_delay,
            drain_timeout,
        ));

        let metrics_host = strip_quotes(&self.metrics_host);
        let metrics_addr = if metrics_host.is_empty() {
            format!("[::]:{}", self.metrics_port)
        } else if metrics_host.contains(':') {
            format!("[{metrics_host}]:{}", self.metrics_port)
        } else {
            format!("{metrics_host}:{}", self.metrics_port)
        };

        let window = self.window.window()?;
        let node_id = self.node_id.as_deref().map(strip_quotes).unwrap_or_default();
        if node_id.is_empty() {
            return Err(invalid(
                "node-id",
                node_id,
                "expected the name of this node (set KURED_NODE_ID from the pod's spec.nodeName)",
            ));
        }

        Ok(Config {
            node_id: node_id.to_owned(),
            kubeconfig: self.kubeconfig.clone(),
            period,
            sentinel,
            rebooter,
            reboot_delay,
            force_reboot: self.force_reboot,
            drain_delay,
            drain_timeout,
            drain_grace_period: u64::try_from(self.drain_grace_period)
                .ok()
                .map(Duration::from_secs),
            drain_pod_selector: parse_selector("drain-pod-selector", &self.drain_pod_selector)?,
            skip_wait_for_delete_timeout: (self.skip_wait_for_delete_timeout > 0)
                .then(|| Duration::from_secs(self.skip_wait_for_delete_timeout)),
            ds_namespace: strip_quotes(&self.lock.ds_namespace).to_owned(),
            ds_name: strip_quotes(&self.lock.ds_name).to_owned(),
            lock_annotation: lock_annotation.to_owned(),
            lock_ttl,
            lock_release_delay: non_negative("lock-release-delay", self.lock_release_delay)?,
            concurrency: self.concurrency,
            prometheus_url,
            alert_filter: AlertFilter {
                regexp,
                match_only: self.alert_filter_match_only,
                firing_only: self.alert_firing_only,
            },
            blocking_pod_selectors,
            prefer_no_schedule_taint,
            window,
            annotate_nodes: self.annotate_nodes,
            pre_reboot_node_labels,
            post_reboot_node_labels,
            notify_targets,
            slack_username: strip_quotes(&self.notify.slack_username).to_owned(),
            slack_channel: non_empty(&self.notify.slack_channel).map(str::to_owned),
            message_template_drain: self.message_template_drain.clone(),
            message_template_reboot: self.message_template_reboot.clone(),
            message_template_uncordon: self.message_template_uncordon.clone(),
            log_format: self.log_format,
            metrics_addr,
            warnings,
            errors,
        })
    }
}

/// What a reboot takes once requested, for judging `--lock-ttl`: the host's shutdown, firmware
/// and boot, and the kubelet starting the agent again. Ten minutes covers slow bare-metal hosts.
pub const REBOOT_ALLOWANCE: Duration = Duration::from_secs(600);

/// A warning when `--lock-ttl` may run out while the node is still out of service, so that the
/// slot could pass to another node with this one down (`delays`: `--drain-delay` plus
/// `--reboot-delay`). The agent re-checks its slot before rebooting, so this costs a drain, not
/// the concurrency limit; but a node whose TTL runs out while it reboots lets another node go
/// down with it.
fn lock_ttl_warning(
    ttl: Option<Duration>,
    delays: Duration,
    drain_timeout: Option<Duration>,
) -> Option<String> {
    let ttl = ttl?;
    let shown = |d: Duration| {
        crate::duration::GoDuration::from_std(d).map_or_else(|_| format!("{d:?}"), |g| g.to_string())
    };
    match drain_timeout {
        None => Some(format!(
            "--lock-ttl={} with no --drain-timeout: a long drain can outlast the TTL; set --drain-timeout so that drain and reboot ({} allowed) fit in the TTL",
            shown(ttl),
            shown(REBOOT_ALLOWANCE)
        )),
        Some(drain) if ttl < delays + drain + REBOOT_ALLOWANCE => Some(format!(
            "--lock-ttl={} is shorter than the delays, --drain-timeout={} and a reboot ({} allowed): the lock may expire while the node is out of service",
            shown(ttl),
            shown(drain),
            shown(REBOOT_ALLOWANCE)
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::slack::{Slack, SlackDest};

    /// Serialises the tests that build the command line: clap reads `KURED_*` variables when it
    /// builds the command, and one test sets them.
    static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn parse(args: &[&str]) -> Result<Config, String> {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let cli = Cli::parse_from(std::iter::once("kured").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.agent.validate().map_err(|e| e.to_string())
    }

    fn ok(args: &[&str]) -> Config {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Ok(c) => panic!("{args:?} should be rejected, got {c:?}"),
            Err(e) => e,
        }
    }

    fn env_name(flag: &str) -> String {
        format!("KURED_{}", flag.to_uppercase().replace('-', "_"))
    }

    #[test]
    fn every_flag_has_its_kured_env_twin() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut flags: Vec<&str> = Vec::new();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(env.as_deref(), Some(env_name(long).as_str()), "--{long}");
            flags.push(long);
        }
        flags.sort_unstable();
        let mut expected = vec![
            "node-id",
            "period",
            "reboot-sentinel",
            "reboot-sentinel-command",
            "reboot-method",
            "reboot-command",
            "reboot-signal",
            "reboot-delay",
            "force-reboot",
            "drain-delay",
            "drain-timeout",
            "drain-grace-period",
            "drain-pod-selector",
            "skip-wait-for-delete-timeout",
            "ds-namespace",
            "ds-name",
            "lock-annotation",
            "lock-ttl",
            "lock-release-delay",
            "concurrency",
            "prometheus-url",
            "alert-filter-regexp",
            "alert-filter-match-only",
            "alert-firing-only",
            "blocking-pod-selector",
            "prefer-no-schedule-taint",
            "reboot-days",
            "start-time",
            "end-time",
            "time-zone",
            "annotate-nodes",
            "pre-reboot-node-labels",
            "post-reboot-node-labels",
            "notify-url",
            "slack-hook-url",
            "slack-username",
            "slack-channel",
            "message-template-drain",
            "message-template-reboot",
            "message-template-uncordon",
            "log-format",
            "metrics-host",
            "metrics-port",
            "kubeconfig",
        ];
        expected.sort_unstable();
        assert_eq!(flags, expected);
    }

    #[test]
    fn upstream_defaults() {
        let c = ok(&["--node-id=n1"]);
        assert_eq!(c.period, Duration::from_secs(3600));
        assert_eq!(c.sentinel, Sentinel::File("/var/run/reboot-required".into()));
        assert_eq!(
            c.rebooter.describe(),
            Rebooter::command("/bin/systemctl reboot", HostNamespace::pid1())
                .unwrap()
                .describe()
        );
        assert_eq!(c.reboot_delay, Duration::ZERO);
        assert!(!c.force_reboot);
        assert_eq!(c.drain_delay, Duration::ZERO);
        assert_eq!(c.drain_timeout, None);
        assert_eq!(c.drain_grace_period, None);
        assert!(c.drain_pod_selector.is_empty());
        assert_eq!(c.skip_wait_for_delete_timeout, None);
        assert_eq!(
            (c.ds_namespace.as_str(), c.ds_name.as_str()),
            ("kube-system", "kured")
        );
        assert_eq!(c.lock_annotation, "weave.works/kured-node-lock");
        assert_eq!(
            (c.lock_ttl, c.lock_release_delay, c.concurrency),
            (None, Duration::ZERO, 1)
        );
        assert!(c.prometheus_url.is_none() && c.alert_filter.regexp.is_none());
        assert!(!c.alert_filter.match_only && !c.alert_filter.firing_only);
        assert!(c.blocking_pod_selectors.is_empty() && c.prefer_no_schedule_taint.is_none());
        assert_eq!(
            c.window.to_string(),
            RebootWindow::new(
                &["su", "mo", "tu", "we", "th", "fr", "sa"],
                "0:00",
                "23:59:59",
                "UTC"
            )
            .unwrap()
            .to_string()
        );
        assert!(!c.annotate_nodes);
        assert!(c.pre_reboot_node_labels.is_empty() && c.post_reboot_node_labels.is_empty());
        assert!(c.notify_targets.is_empty() && c.slack_channel.is_none());
        assert_eq!(c.slack_username, "kured");
        assert_eq!(c.message_template_drain, "Draining node %s");
        assert_eq!(c.message_template_reboot, "Rebooting node %s");
        assert_eq!(
            c.message_template_uncordon,
            "Node %s rebooted & uncordoned successfully!"
        );
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.metrics_addr, "[::]:8080");
        assert!(c.warnings.is_empty());
    }

    /// The argument list of upstream's kured-ds.yaml, commented out there, exactly as written in
    /// the manifest's `command:` list (no shell, so `""` arrives as two quote characters).
    #[test]
    fn upstream_manifest_argument_lines_parse_to_their_documented_values() {
        let lines = [
            "--reboot-sentinel=/sentinel/reboot-required",
            "--force-reboot=false",
            "--drain-grace-period=-1",
            "--skip-wait-for-delete-timeout=0",
            "--drain-delay=0",
            "--drain-timeout=0",
            "--drain-pod-selector=\"\"",
            "--period=1h",
            "--ds-namespace=kube-system",
            "--ds-name=kured",
            "--lock-annotation=weave.works/kured-node-lock",
            "--lock-ttl=0",
            "--prometheus-url=http://prometheus.monitoring.svc.cluster.local",
            "--alert-filter-regexp=^RebootRequired$",
            "--alert-filter-match-only=false",
            "--alert-firing-only=false",
            "--prefer-no-schedule-taint=\"\"",
            "--reboot-sentinel-command=\"\"",
            "--reboot-method=command",
            "--reboot-signal=39",
            "--slack-hook-url=https://hooks.slack.com/...",
            "--slack-username=prod",
            "--slack-channel=alerting",
            "--notify-url=\"\"",
            "--message-template-drain=Draining node %s",
            "--message-template-reboot=Rebooting node %s",
            "--message-template-uncordon=Node %s rebooted & uncordoned successfully!",
            "--blocking-pod-selector=runtime=long,cost=expensive",
            "--blocking-pod-selector=name=temperamental",
            "--reboot-days=sun,mon,tue,wed,thu,fri,sat",
            "--reboot-delay=90s",
            "--start-time=0:00",
            "--end-time=23:59:59",
            "--time-zone=UTC",
            "--annotate-nodes=false",
            "--lock-release-delay=30m",
            "--log-format=text",
            "--metrics-host=\"\"",
            "--metrics-port=8080",
            "--concurrency=1",
        ];
        let mut args = vec!["--node-id=n1"];
        args.extend(lines);
        let c = ok(&args);
        assert_eq!(c.sentinel, Sentinel::File("/sentinel/reboot-required".into()));
        assert!(!c.force_reboot);
        assert_eq!(c.drain_grace_period, None);
        assert_eq!(c.skip_wait_for_delete_timeout, None);
        assert_eq!((c.drain_delay, c.drain_timeout), (Duration::ZERO, None));
        assert!(c.drain_pod_selector.is_empty());
        assert_eq!(c.period, Duration::from_secs(3600));
        assert_eq!(c.lock_ttl, None);
        assert_eq!(
            c.prometheus_url.as_ref().map(|u| u.as_str()),
            Some("http://prometheus.monitoring.svc.cluster.local/")
        );
        assert!(
            c.alert_filter
                .regexp
                .as_ref()
                .is_some_and(|r| r.is_match("RebootRequired") && !r.is_match("XRebootRequired"))
        );
        assert!(c.prefer_no_schedule_taint.is_none());
        assert!(c.rebooter.describe().contains("/bin/systemctl reboot"));
        // `--notify-url=""` is no URL, so the deprecated hook URL is used, as given.
        let [target] = c.notify_targets.as_slice() else {
            panic!("one target: {:?}", c.notify_targets)
        };
        let slack = target.service::<Slack>().expect("a Slack target");
        assert_eq!(
            slack.dest,
            SlackDest::Webhook(url::Url::parse("https://hooks.slack.com/...").expect("a URL"))
        );
        assert_eq!(
            (slack.username.as_deref(), slack.channel.as_deref()),
            (Some("prod"), Some("alerting"))
        );
        assert_eq!(
            (c.slack_username.as_str(), c.slack_channel.as_deref()),
            ("prod", Some("alerting"))
        );
        let selectors: Vec<String> = c.blocking_pod_selectors.iter().map(ToString::to_string).collect();
        assert_eq!(selectors, ["runtime=long,cost=expensive", "name=temperamental"]);
        assert_eq!(c.reboot_delay, Duration::from_secs(90));
        assert_eq!(c.lock_release_delay, Duration::from_secs(30 * 60));
        assert_eq!(c.metrics_addr, "[::]:8080");
        assert_eq!(c.concurrency, 1);
        assert_eq!(c.warnings, ["--slack-hook-url is deprecated; use --notify-url"]);

        // The manifest's last selector line, `--blocking-pod-selector=...`, is a placeholder for
        // "add more"; taken literally it is not a selector, and says so.
        let e = err(&["--node-id=n1", "--blocking-pod-selector=..."]);
        assert!(e.contains("--blocking-pod-selector \"...\""), "{e}");
    }

    #[test]
    fn flags_and_their_env_twins_give_the_same_config() {
        // Each flag set on the command line, then the same value through its environment
        // variable (clap's env support, exercised via Command::try_get_matches_from with env).
        let cases: &[(&str, &str)] = &[
            ("period", "10m"),
            ("reboot-days", "mo,tu"),
            ("start-time", "22:00"),
            ("end-time", "04:00"),
            ("time-zone", "Europe/Berlin"),
            ("concurrency", "3"),
            ("force-reboot", "true"),
            ("annotate-nodes", "1"),
            ("drain-grace-period", "-1"),
            ("pre-reboot-node-labels", "a=1,b=2"),
            ("blocking-pod-selector", "app=db,tier in (x,y)"),
        ];
        for (flag, value) in cases {
            let from_flag = ok(&["--node-id=n1", &format!("--{flag}={value}")]);
            let var = env_name(flag);
            // clap reads an argument's environment variable when the command is built.
            let from_env = temp_env(&var, value, || {
                Cli::parse_from(["kured", "--node-id=n1"])
                    .expect("parses")
                    .agent
                    .validate()
                    .expect("validates")
            });
            assert_eq!(
                format!("{from_flag:?}"),
                format!("{from_env:?}"),
                "--{flag} vs {var}"
            );
        }
    }

    #[test]
    fn liveness_bounds_follow_the_drain_and_reboot_flags() {
        use crate::metrics::PhaseLimits;
        use crate::reboot::{COMMAND_TIMEOUT, EFFECT_LIMIT};
        let limits = PhaseLimits::from_config(&ok(&[
            "--node-id=n1",
            "--drain-timeout=30m",
            "--drain-delay=1m",
            "--reboot-delay=2m",
        ]));
        assert_eq!(limits.drain, Some(Duration::from_secs(33 * 60)));
        assert!(limits.reboot > Some(COMMAND_TIMEOUT + EFFECT_LIMIT), "{limits:?}");
        let limits = PhaseLimits::from_config(&ok(&["--node-id=n1", "--reboot-method=signal"]));
        assert_eq!(limits.drain, None, "no --drain-timeout: no bound");
        assert_eq!(limits.reboot, Some(EFFECT_LIMIT));
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The overrides `args` meets with the variables `vars` set, found as `Cli::parse_from` does.
    fn overrides(args: &[&str], vars: &[(&str, &str)]) -> Vec<Override> {
        let command = Cli::command();
        let matches = command
            .clone()
            .try_get_matches_from(os(args))
            .expect("valid arguments");
        env_overrides(&command, &matches, |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn a_variable_set_beside_its_flag_meets_it_as_upstream_has_them_meet() {
        let found = overrides(
            &[
                "kured",
                "--period=10m",
                "--reboot-days",
                "mo",
                "--reboot-days=tu",
                "--blocking-pod-selector=app=batch,tier=db",
                "--post-reboot-node-labels=kured=done",
                "--ds-name=kured",
            ],
            &[
                ("KURED_PERIOD", "5m"),
                ("KURED_REBOOT_DAYS", "mo,tu"),
                ("KURED_BLOCKING_POD_SELECTOR", "app=other"),
                ("KURED_POST_REBOOT_NODE_LABELS", "zone=a"),
                ("KURED_DRAIN_DELAY", "1m"),
                ("KURED_DS_NAME", ""),
            ],
        );
        let found: Vec<_> = found
            .iter()
            .map(|o| (o.long.as_str(), o.meeting, o.warning()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "period",
                    Meeting::VariableWins,
                    Some(
                        "both KURED_PERIOD=\"5m\" and --period=\"10m\" are set; the variable's value is used, \
                         as in upstream kured"
                            .to_owned()
                    )
                ),
                (
                    "blocking-pod-selector",
                    Meeting::FlagWins,
                    Some(
                        "both KURED_BLOCKING_POD_SELECTOR=\"app=other\" and \
                         --blocking-pod-selector=\"app=batch,tier=db\" are set; the flag's values are used: \
                         upstream kured never reads this variable"
                            .to_owned()
                    )
                ),
                // The same days, written once as a list: nothing to warn about.
                ("reboot-days", Meeting::Appended, None),
                (
                    "post-reboot-node-labels",
                    Meeting::Appended,
                    Some(
                        "both KURED_POST_REBOOT_NODE_LABELS=\"zone=a\" and \
                         --post-reboot-node-labels=\"kured=done\" are set; the variable's values are added \
                         to the flag's, as in upstream kured"
                            .to_owned()
                    )
                ),
            ],
            "a variable without its flag (drain delay) or empty (ds name) meets nothing"
        );
        let subcommand = overrides(
            &["kured", "status", "--ds-namespace=a"],
            &[("KURED_DS_NAMESPACE", "b")],
        );
        assert_eq!(
            subcommand.len(),
            1,
            "a subcommand's flags are found too: {subcommand:?}"
        );
    }

    #[test]
    fn a_secret_flag_met_by_its_variable_is_named_without_its_values() {
        let found = overrides(
            &["kured", "--prometheus-url=http://u:pa55@prom:9090"],
            &[("KURED_PROMETHEUS_URL", "http://u:other-pa55@prom:9090")],
        );
        let warning = found.first().and_then(Override::warning).expect("a warning");
        assert!(!warning.contains("pa55"), "{warning}");
        assert!(
            warning.starts_with("both KURED_PROMETHEUS_URL and --prometheus-url are set"),
            "{warning}"
        );
    }

    #[test]
    fn the_variables_are_applied_to_the_command_line_in_each_form() {
        let found = overrides(
            &[
                "kured",
                "--period",
                "10m",
                "--force-reboot",
                "--reboot-days=mo",
                "--notify-url=generic://a",
            ],
            &[
                ("KURED_PERIOD", "5m"),
                ("KURED_FORCE_REBOOT", "false"),
                ("KURED_REBOOT_DAYS", "tu,we"),
                ("KURED_NOTIFY_URL", "generic://b"),
            ],
        );
        // Flags with an optional value take it only after `=`: the argument after one stays.
        let args = os(&[
            "kured",
            "--period",
            "10m",
            "--force-reboot",
            "n2",
            "--reboot-days=mo",
            "--notify-url=generic://a",
            "--period=1m",
            "--",
            "--period=1s",
        ]);
        assert_eq!(
            with_variables(&args, &found),
            os(&[
                "kured",
                "n2",
                "--reboot-days=mo",
                "--notify-url=generic://a",
                "--reboot-days=tu,we",
                "--",
                "--period=1s"
            ])
        );
    }

    /// Runs `f` with one environment variable set, holding the lock that `parse` takes.
    fn temp_env<T>(var: &str, value: &str, f: impl FnOnce() -> T) -> T {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // Edition 2024 makes set_var unsafe because another thread may read the environment
        // at the same time; in this module only these tests touch it, under the lock above.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(var, value)
        };
        let out = f();
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(var)
        };
        out
    }

    #[test]
    fn list_flags_take_comma_separated_and_repeated_forms() {
        let a = ok(&["--node-id=n", "--reboot-days=mo,tu", "--reboot-days=we"]);
        let b = ok(&["--node-id=n", "--reboot-days=mo,tu,we"]);
        assert_eq!(a.window.to_string(), b.window.to_string());
        let c = ok(&[
            "--node-id=n",
            "--post-reboot-node-labels=a=1",
            "--post-reboot-node-labels=b=2,c=3",
        ]);
        let keys: Vec<&str> = c.post_reboot_node_labels.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        // Selectors contain commas, so --blocking-pod-selector is repeated, never split.
        let d = ok(&[
            "--node-id=n",
            "--blocking-pod-selector=a=1,b=2",
            "--blocking-pod-selector=c",
        ]);
        assert_eq!(d.blocking_pod_selectors.len(), 2);
    }

    #[test]
    fn bad_values_name_the_flag_the_value_and_what_is_expected() {
        for (args, needle) in [
            (&["--reboot-days=funday"][..], "--reboot-days"),
            (&["--start-time=25:00"], "--start-time \"25:00\""),
            (&["--end-time=9:30am"], "--end-time \"9:30am\""),
            (&["--time-zone=Mars/Olympus"], "--time-zone \"Mars/Olympus\""),
            (&["--drain-pod-selector=a b"], "--drain-pod-selector \"a b\""),
            (
                &["--blocking-pod-selector=app=a=b"],
                "--blocking-pod-selector \"app=a=b\"",
            ),
            (&["--alert-filter-regexp=("], "--alert-filter-regexp \"(\""),
            (&["--reboot-command='unbalanced"], "--reboot-command"),
            (&["--reboot-sentinel-command=\"x"], "--reboot-sentinel-command"),
            (
                &["--reboot-sentinel=relative/path"],
                "--reboot-sentinel \"relative/path\"",
            ),
            (
                &["--prometheus-url=prometheus:9090"],
                "--prometheus-url \"prometheus:<redacted>\"",
            ),
            (
                &["--reboot-method=signal", "--reboot-signal=9"],
                "--reboot-signal \"9\"",
            ),
            (
                &["--reboot-method=signal", "--reboot-signal=65"],
                "--reboot-signal \"65\"",
            ),
            (&["--concurrency=0"], "--concurrency \"0\""),
            (&["--period=0"], "--period \"0s\""),
            (&["--lock-ttl=-1s"], "--lock-ttl \"-1s\""),
            (
                &["--pre-reboot-node-labels=novalue"],
                "--pre-reboot-node-labels \"novalue\"",
            ),
            (
                &["--prefer-no-schedule-taint=Bad Taint"],
                "--prefer-no-schedule-taint \"Bad Taint\"",
            ),
            (&["--lock-annotation=a/b/c"], "--lock-annotation \"a/b/c\""),
        ] {
            let mut full = vec!["--node-id=n1"];
            full.extend(args);
            let e = err(&full);
            assert!(e.contains(needle), "{args:?}: {e:?} does not contain {needle:?}");
            assert!(!e.contains('\n'), "{args:?}: one line, got {e:?}");
        }
        // Syntax errors found by clap itself name the flag and value too.
        for (args, needle) in [
            (&["--period=1d"][..], "'1d' for '--period"),
            (&["--reboot-method=reboot"], "'reboot' for '--reboot-method"),
            (&["--force-reboot=yes"], "'yes' for '--force-reboot"),
            (&["--metrics-port=99999"], "'99999' for '--metrics-port"),
        ] {
            let mut full = vec!["--node-id=n1"];
            full.extend(args);
            let e = err(&full);
            assert!(e.contains(needle), "{args:?}: {e:?}");
        }
        assert!(err(&[]).contains("--node-id"));
    }

    #[test]
    fn an_invalid_prometheus_url_is_shown_without_its_credentials() {
        for (value, shown) in [
            ("http://admin:hunter2@prom etheus:9090", "\"http://<redacted>\""),
            ("admin:hunter2@prometheus:9090", "\"admin:<redacted>\""),
            ("https://user:hunter2@prom:99999/", "\"https://<redacted>\""),
        ] {
            let e = err(&["--node-id=n1", &format!("--prometheus-url={value}")]);
            assert!(
                e.starts_with(&format!("invalid --prometheus-url {shown}")),
                "{value}: {e}"
            );
            assert!(!e.contains("hunter2"), "{value}: {e}");
        }
        // A valid URL keeps its credentials for the requests, which send them as basic auth.
        let c = ok(&[
            "--node-id=n1",
            "--prometheus-url=http://admin:hunter2@prometheus:9090",
        ]);
        assert_eq!(c.prometheus_url.unwrap().password(), Some("hunter2"));
    }

    #[test]
    fn differing_pre_and_post_label_keys_warn_as_upstream() {
        let c = ok(&[
            "--node-id=n",
            "--pre-reboot-node-labels=a=1",
            "--post-reboot-node-labels=b=1",
        ]);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let same = ok(&[
            "--node-id=n",
            "--pre-reboot-node-labels=a=1",
            "--post-reboot-node-labels=a=2",
        ]);
        assert!(same.warnings.is_empty());
    }

    #[test]
    fn notify_and_slack_urls_are_never_shown_with_their_secrets() {
        let hook = "https://hooks.slack.com/services/T0000/B0000/XXXXSECRET";
        assert_eq!(redact_url(hook), "https://hooks.slack.com/<redacted>");
        assert_eq!(
            redact_url("smtp://user:hunter2@mail:587/?to=a@b"),
            "smtp://mail/<redacted>"
        );
        assert!(!redact_url("slack://xoxb-SECRET@channel").contains("SECRET"));
        assert!(!redact_url("teams://not a url SECRET").contains("SECRET"));
        // Pushbullet's token and Pushover's user key are the URL's host.
        assert_eq!(
            redact_url("pushbullet://o.SECRETSECRETSECRETSECRETSECRET12/#ops"),
            "pushbullet://<redacted>"
        );
        assert_eq!(
            redact_url("Pushover://shoutrrr:SECRET@SECRETUSER/?devices=a"),
            "pushover://<redacted>"
        );
    }

    #[test]
    fn notify_urls_become_targets_with_the_slack_flags_as_defaults() {
        let hook = "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook";
        let c = ok(&[
            "--node-id=n1",
            &format!("--notify-url=\"{hook}\""),
            "--notify-url=discord://tok@123",
            "--notify-url=''",
            "--slack-channel=#ops",
        ]);
        let schemes: Vec<&str> = c.notify_targets.iter().map(Target::scheme).collect();
        assert_eq!(schemes, ["slack", "discord"]);
        let slack = c.notify_targets[0]
            .service::<Slack>()
            .unwrap_or_else(|| panic!("not slack: {:?}", c.notify_targets[0]));
        assert_eq!(
            (slack.username.as_deref(), slack.channel.as_deref()),
            (Some("kured"), Some("#ops"))
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let both = ok(&[
            "--node-id=n1",
            &format!("--notify-url={hook}"),
            "--slack-hook-url=https://hooks.slack.com/services/T/B/X",
        ]);
        assert_eq!(both.notify_targets.len(), 1);
        assert_eq!(
            both.warnings,
            ["both --notify-url and --slack-hook-url are set; only --notify-url is used"]
        );
    }

    #[test]
    fn bad_notify_urls_name_the_scheme_and_never_the_secret() {
        let cases = [
            (
                "nosuch://shoutrrr:SECRET@user",
                "unknown notification scheme \"nosuch\"",
                "unknown",
            ),
            (
                "slack://hook:SECRET@webhook",
                "slack: the token is not a Slack token",
                "slack",
            ),
            (
                "smtp://u:SECRET@mail.example.com/?to=a@b.c",
                "smtp: no from=… address given",
                "smtp",
            ),
            ("teams://SECRET@tenant/a/b", "teams: ", "teams"),
            (
                "slack://tok en@chan nel",
                "--notify-url \"slack://<redacted>\"",
                "slack",
            ),
            (
                "generic://host/x?template=SECRETTPL",
                "generic: parameter \"template\"",
                "generic",
            ),
        ];
        for (url, needle, scheme) in cases {
            // The agent starts: the URL is logged as an error and kept as a target whose
            // notifications fail, counted under its scheme; the good URL is kept as it is.
            let c = ok(&[
                "--node-id=n1",
                &format!("--notify-url={url}"),
                "--notify-url=discord://tok@123",
            ]);
            let [e] = c.errors.as_slice() else {
                panic!("{url}: one error expected, got {:?}", c.errors)
            };
            assert!(e.contains(needle), "{url}: {e}");
            assert!(e.starts_with("invalid --notify-url"), "{url}: {e}");
            assert!(!e.contains("SECRET") && !e.contains('\n'), "{url}: {e}");
            let schemes: Vec<&str> = c.notify_targets.iter().map(Target::scheme).collect();
            assert_eq!(schemes, [scheme, "discord"], "{url}");
            assert!(c.notify_targets[0].is_unusable() && !c.notify_targets[1].is_unusable());
            assert!(!c.notify_targets[0].shown().contains("SECRET"), "{url}");

            // `kured notify` refuses it.
            let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let cli = Cli::parse_from(["kured", "notify", &format!("--notify-url={url}")]).expect("parses");
            let Some(Command::Notify(args)) = cli.command else {
                panic!("not notify")
            };
            let e = args.targets().expect_err("a bad URL").to_string();
            assert!(e.contains(needle) && !e.contains("SECRET"), "{url}: {e}");
        }
        let c = ok(&["--node-id=n1", "--slack-hook-url=ftp://hooks.example.com/SECRET"]);
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(
            c.errors[0].contains("--slack-hook-url") && !c.errors[0].contains("SECRET"),
            "{:?}",
            c.errors
        );
        let schemes: Vec<&str> = c.notify_targets.iter().map(Target::scheme).collect();
        assert_eq!(schemes, ["slack"]);
        assert!(c.notify_targets[0].is_unusable());
        assert!(ok(&["--node-id=n1"]).errors.is_empty());
    }

    #[test]
    fn notify_subcommand_needs_a_url_and_reads_the_agent_flags() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let cli = Cli::parse_from([
            "kured",
            "notify",
            "--notify-url=discord://tok@123",
            "--notify-url=generic+https://example.com/hook",
            "--message=hello",
        ])
        .expect("parses");
        let Some(Command::Notify(args)) = cli.command else {
            panic!("not notify")
        };
        let (targets, warnings) = args.targets().expect("targets");
        assert_eq!(
            (targets.len(), warnings.len(), args.message.as_str()),
            (2, 0, "hello")
        );

        let cli = Cli::parse_from(["kured", "notify"]).expect("parses");
        let Some(Command::Notify(args)) = cli.command else {
            panic!("not notify")
        };
        let e = args.targets().expect_err("no URL").to_string();
        assert!(e.contains("--notify-url"), "{e}");
    }

    #[test]
    fn surrounding_quotes_are_stripped_once() {
        assert_eq!(strip_quotes("\"\""), "");
        assert_eq!(strip_quotes("'x'"), "x");
        assert_eq!(strip_quotes("\"x'"), "\"x'");
        assert_eq!(strip_quotes("\"\"x\"\""), "\"x\"");
        assert_eq!(strip_quotes("\""), "\"");
    }

    #[test]
    fn help_output() {
        let help = Cli::command().term_width(100).render_long_help().to_string();
        insta::assert_snapshot!("help", help);
        let schedule = Cli::command()
            .term_width(100)
            .find_subcommand_mut("schedule")
            .expect("schedule")
            .render_long_help()
            .to_string();
        insta::assert_snapshot!("schedule_help", schedule);
        let notify = Cli::command()
            .term_width(100)
            .find_subcommand_mut("notify")
            .expect("notify")
            .render_long_help()
            .to_string();
        insta::assert_snapshot!("notify_help", notify);
    }

    #[test]
    fn a_lock_ttl_that_can_run_out_while_the_node_is_out_is_warned_about() {
        let min = |m: u64| Duration::from_secs(60 * m);
        assert_eq!(
            lock_ttl_warning(None, Duration::ZERO, None),
            None,
            "no TTL: never expires"
        );
        assert_eq!(
            lock_ttl_warning(Some(min(30)), Duration::ZERO, Some(min(15))),
            None,
            "15m drain and a 10m reboot fit in 30m"
        );
        let short = lock_ttl_warning(Some(min(20)), min(1), Some(min(15))).expect("a warning");
        assert!(
            short.contains("--lock-ttl=20m0s") && short.contains("--drain-timeout=15m0s"),
            "{short}"
        );
        let unbounded = lock_ttl_warning(Some(min(60)), Duration::ZERO, None).expect("a warning");
        assert!(unbounded.contains("no --drain-timeout"), "{unbounded}");
    }
}
