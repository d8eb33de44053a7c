//! The command line: every upstream flag with its upstream default and its `KURED_*` twin, as
//! clap declares them. What the values mean is checked in [`super::agent`].

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use jiff::Timestamp;

use crate::duration::GoDuration;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a test message to each notification URL and report, per URL, whether it got through.
    Notify(NotifyArgs),
    /// Print whether an instant is inside the reboot window, and the window's next openings.
    Schedule(ScheduleArgs),
    /// Show every node's reboot need, agent phase, lock holders and cordon state.
    Status(StatusArgs),
    /// Keep NODE, or without NODE every node, from rebooting (kured.dev/pause=true).
    Pause(ControlArgs),
    /// Undo `kured pause` for NODE (and clear its kured.dev/halted), or for every node.
    Resume(ControlArgs),
    /// Reboot NODE as if it needed it, when window, blockers and lock allow.
    Reboot(RebootArgs),
}

/// Where the lock is: shared by the agent and `kured status`.
#[derive(Debug, Clone, Args)]
pub struct LockArgs {
    /// Object that carries the lock: the DaemonSet (as upstream; the agents may update it) or a
    /// coordination.k8s.io Lease of the same name and namespace (no write access to any workload)
    #[arg(long, env = "KURED_LOCK_BACKEND", value_enum, default_value_t = LockBackend::Daemonset)]
    pub lock_backend: LockBackend,
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

/// The cluster and the lock object, for the commands an operator runs.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// Path of a kubeconfig file (default: KUBECONFIG, ~/.kube/config, then in-cluster)
    #[arg(long, env = "KURED_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: OperatorArgs,
    /// Keep showing the status, refreshed every two seconds, until interrupted
    #[arg(long)]
    pub watch: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The Node; without it, the lock object (the DaemonSet, or the Lease with --lock-backend=lease)
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub node: Option<String>,
    #[command(flatten)]
    pub cluster: OperatorArgs,
}

#[derive(Debug, Args)]
pub struct RebootArgs {
    /// The Node
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub node: String,
    #[command(flatten)]
    pub cluster: OperatorArgs,
}

/// How the agent reboots its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootMethod {
    /// Run --reboot-command in the host's mount namespace (needs a privileged pod with hostPID).
    Command,
    /// Send --reboot-signal to PID 1 (needs hostPID and CAP_KILL only).
    Signal,
}

/// Where the lock is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockBackend {
    /// An annotation of the DaemonSet --ds-namespace/--ds-name.
    Daemonset,
    /// An annotation of the Lease --ds-namespace/--ds-name, created by the first agent that
    /// takes the lock.
    Lease,
}

impl LockBackend {
    pub fn backend(self) -> crate::lock::Backend {
        match self {
            LockBackend::Daemonset => crate::lock::Backend::DaemonSet,
            LockBackend::Lease => crate::lock::Backend::Lease,
        }
    }
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
        default_value_t = crate::reboot::DEFAULT_SIGNAL,
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
    /// At most N nodes at a time per value of the node label KEY, on top of --concurrency (KEY=N, repeatable)
    #[arg(long, env = "KURED_CONCURRENCY_PER_LABEL", value_delimiter = ',')]
    pub concurrency_per_label: Vec<String>,

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

    /// After the reboot, keep the lock until the node and its DaemonSet pods are Ready
    #[arg(long, env = "KURED_POST_REBOOT_GATE", default_value = "false", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub post_reboot_gate: bool,
    /// How long the node must stay healthy after the reboot before the lock is released (turns on the gate)
    #[arg(long, env = "KURED_POST_REBOOT_SETTLE", default_value = "0", value_parser = parse_duration)]
    pub post_reboot_settle: GoDuration,
    /// Halt the rollout when the node is not healthy this long after the reboot (0: never; turns on the gate)
    #[arg(long, env = "KURED_POST_REBOOT_TIMEOUT", default_value = "0", value_parser = parse_duration)]
    pub post_reboot_timeout: GoDuration,
    /// After the reboot, a firing alert whose name matches this regular expression holds the lock (turns on the gate)
    #[arg(long, env = "KURED_POST_REBOOT_ALERT_FILTER", default_value = "")]
    pub post_reboot_alert_filter: String,
    /// A reboot needed again this soon after the last one is a reboot loop (0: no loop guard)
    #[arg(long, env = "KURED_REBOOT_LOOP_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub reboot_loop_window: GoDuration,
    /// Wait this long before rebooting a looping node, doubled at each loop in a row (at most 24h)
    #[arg(long, env = "KURED_REBOOT_LOOP_BACKOFF", default_value = "30m", value_parser = parse_duration)]
    pub reboot_loop_backoff: GoDuration,

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
