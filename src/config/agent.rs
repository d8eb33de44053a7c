//! The agent's flags, checked and built into its [`Config`] and each module's settings.

use std::time::Duration;

use regex::Regex;

use super::{
    AgentArgs, Config, ConfigError, RebootMethod, WindowArgs, invalid, non_empty, parse_url, strip_quotes,
};
use crate::blockers::BlockerSettings;
use crate::blockers::prometheus::AlertFilter;
use crate::decide::LoopGuard;
use crate::drain::DrainSettings;
use crate::duration::GoDuration;
use crate::gate::GateSettings;
use crate::lock::{LabelLimit, LockObject, LockSettings};
use crate::metrics::PhaseLimits;
use crate::node::NodeLabel;
use crate::reboot::{HostNamespace, Rebooter, valid_signal_range};
use crate::selector::{self, LabelSelector};
use crate::sentinel::Sentinel;
use crate::window::RebootWindow;

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

fn parse_regexp(flag: &'static str, value: &str) -> Result<Regex, ConfigError> {
    Regex::new(value).map_err(|e| {
        // The regex crate's message spans lines, pointing at the error; keep its verdict.
        let detail = e.to_string();
        let reason = detail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        invalid(flag, value, format!("not a regular expression ({reason})"))
    })
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

/// `--concurrency-per-label`: `KEY=N` each, KEY a label key, N an integer from 1, each KEY once.
fn parse_label_limits(values: &[String]) -> Result<Vec<LabelLimit>, ConfigError> {
    const FLAG: &str = "concurrency-per-label";
    let mut limits: Vec<LabelLimit> = Vec::new();
    for v in values.iter().filter(|v| !v.is_empty()) {
        let (key, max) = v
            .split_once('=')
            .ok_or_else(|| invalid(FLAG, v, "expected KEY=N, a node label key and a number of nodes"))?;
        selector::check_key(key).map_err(|e| invalid(FLAG, v, e))?;
        let max = max
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| invalid(FLAG, v, "expected KEY=N with N an integer of at least 1"))?;
        if limits.iter().any(|l| l.key == key) {
            return Err(invalid(
                FLAG,
                v,
                format!("expected each label key once; {key} is given twice"),
            ));
        }
        limits.push(LabelLimit {
            key: key.to_owned(),
            max,
        });
    }
    Ok(limits)
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
        let sentinel = self.sentinel(host)?;
        let rebooter = self.rebooter(host)?;
        let lock_object = self.lock_object()?;
        let prefer_no_schedule_taint = non_empty(&self.prefer_no_schedule_taint)
            .map(|t| {
                selector::check_key(t).map_err(|e| invalid("prefer-no-schedule-taint", t, e))?;
                Ok::<_, ConfigError>(t.to_owned())
            })
            .transpose()?;
        let blockers = self.blockers()?;
        let gate = self.gate(&blockers)?;
        let loop_guard = self.loop_guard()?;

        let mut warnings = Vec::new();
        let pre_reboot_node_labels = parse_labels("pre-reboot-node-labels", &self.pre_reboot_node_labels)?;
        let post_reboot_node_labels = parse_labels("post-reboot-node-labels", &self.post_reboot_node_labels)?;
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
        let reboot_delay = non_negative("reboot-delay", self.reboot_delay)?;
        let drain = self.drain()?;
        let lock_ttl = zero_is_none("lock-ttl", self.lock_ttl)?;
        warnings.extend(lock_ttl_warning(
            lock_ttl,
            drain_delay + reboot_delay,
            drain.timeout,
        ));
        let phase_limits = PhaseLimits {
            drain: drain
                .timeout
                .map(|timeout| drain_delay.saturating_add(timeout).saturating_add(reboot_delay)),
            reboot: Some(rebooter.longest()),
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
            drain,
            lock_object,
            lock: self.lock_settings(node_id)?,
            blockers,
            prefer_no_schedule_taint,
            gate,
            loop_guard,
            window,
            annotate_nodes: self.annotate_nodes,
            pre_reboot_node_labels,
            post_reboot_node_labels,
            notify_targets,
            message_template_drain: self.message_template_drain.clone(),
            message_template_reboot: self.message_template_reboot.clone(),
            message_template_uncordon: self.message_template_uncordon.clone(),
            phase_limits,
            log_format: self.log_format,
            metrics_addr: self.metrics_addr(),
            warnings,
            errors,
        })
    }

    /// `--reboot-sentinel` and `--reboot-sentinel-command`.
    fn sentinel(&self, host: HostNamespace) -> Result<Sentinel, ConfigError> {
        let path = self.reboot_sentinel.to_string_lossy();
        let path = strip_quotes(&path);
        let command = strip_quotes(&self.reboot_sentinel_command);
        if command.trim().is_empty() && !path.starts_with('/') {
            return Err(invalid("reboot-sentinel", path, "expected an absolute path"));
        }
        Sentinel::new(path, command, host).map_err(|e| {
            invalid(
                "reboot-sentinel-command",
                command,
                format!("{e}: expected a command line with balanced quotes"),
            )
        })
    }

    /// `--reboot-method` with `--reboot-command` or `--reboot-signal`.
    fn rebooter(&self, host: HostNamespace) -> Result<Rebooter, ConfigError> {
        match self.reboot_method {
            RebootMethod::Command => {
                let line = strip_quotes(&self.reboot_command);
                Rebooter::command(line, host).map_err(|e| {
                    invalid(
                        "reboot-command",
                        line,
                        format!("{e}: expected a command line with balanced quotes"),
                    )
                })
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
            }),
        }
    }

    /// `--lock-backend`, `--ds-namespace`, `--ds-name`, `--lock-annotation`; `--concurrency` is
    /// checked first, as it always was.
    fn lock_object(&self) -> Result<LockObject, ConfigError> {
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "0", "expected at least 1"));
        }
        self.lock.lock_object()
    }

    /// The lock settings of `node_id`: `--concurrency`, `--lock-ttl` (checked by the caller: not
    /// negative), `--lock-release-delay`, `--concurrency-per-label`.
    fn lock_settings(&self, node_id: &str) -> Result<LockSettings, ConfigError> {
        Ok(LockSettings {
            node_id: node_id.to_owned(),
            concurrency: self.concurrency,
            ttl: self.lock_ttl,
            release_delay: non_negative("lock-release-delay", self.lock_release_delay)?,
            per_label: parse_label_limits(&self.concurrency_per_label)?,
        })
    }

    /// `--prometheus-url` with its alert filter flags, and `--blocking-pod-selector`.
    fn blockers(&self) -> Result<BlockerSettings, ConfigError> {
        let regexp = non_empty(&self.alert_filter_regexp)
            .map(|r| parse_regexp("alert-filter-regexp", r))
            .transpose()?;
        let prometheus_url = non_empty(&self.prometheus_url)
            // Its user, password or query may hold credentials: an error shows it redacted.
            .map(|u| parse_url("prometheus-url", u, true))
            .transpose()?;
        let pod_selectors = self
            .blocking_pod_selector
            .iter()
            .filter_map(|s| non_empty(s))
            .map(|s| parse_selector("blocking-pod-selector", s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BlockerSettings {
            prometheus_url,
            alert_filter: AlertFilter {
                regexp,
                match_only: self.alert_filter_match_only,
                firing_only: self.alert_firing_only,
            },
            pod_selectors,
        })
    }

    /// `--post-reboot-gate`, `--post-reboot-settle`, `--post-reboot-timeout`,
    /// `--post-reboot-alert-filter` (any of them turns the gate on); the alerts are asked of
    /// `--prometheus-url`.
    fn gate(&self, blockers: &BlockerSettings) -> Result<Option<GateSettings>, ConfigError> {
        let settle = non_negative("post-reboot-settle", self.post_reboot_settle)?;
        let timeout = zero_is_none("post-reboot-timeout", self.post_reboot_timeout)?;
        let alert_filter = non_empty(&self.post_reboot_alert_filter)
            .map(|r| parse_regexp("post-reboot-alert-filter", r))
            .transpose()?;
        if !self.post_reboot_gate && settle.is_zero() && timeout.is_none() && alert_filter.is_none() {
            return Ok(None);
        }
        if let Some(t) = timeout
            && t <= settle
        {
            return Err(invalid(
                "post-reboot-timeout",
                &self.post_reboot_timeout.to_string(),
                format!(
                    "expected a time-out longer than --post-reboot-settle={}: the gate could never pass in time",
                    self.post_reboot_settle
                ),
            ));
        }
        if alert_filter.is_some() && blockers.prometheus_url.is_none() {
            return Err(invalid(
                "post-reboot-alert-filter",
                &self.post_reboot_alert_filter,
                "needs --prometheus-url to ask for alerts",
            ));
        }
        Ok(Some(GateSettings {
            settle,
            timeout,
            alert_filter,
            prometheus_url: blockers.prometheus_url.clone(),
        }))
    }

    /// `--reboot-loop-window` (zero: no guard) and `--reboot-loop-backoff`.
    fn loop_guard(&self) -> Result<Option<LoopGuard>, ConfigError> {
        let window = zero_is_none("reboot-loop-window", self.reboot_loop_window)?;
        let backoff = non_negative("reboot-loop-backoff", self.reboot_loop_backoff)?;
        Ok(window.map(|window| LoopGuard { window, backoff }))
    }

    /// `--drain-timeout`, `--drain-grace-period`, `--drain-pod-selector`,
    /// `--skip-wait-for-delete-timeout`.
    fn drain(&self) -> Result<DrainSettings, ConfigError> {
        Ok(DrainSettings {
            timeout: zero_is_none("drain-timeout", self.drain_timeout)?,
            // Negative: each pod's own grace period, as upstream's -1.
            grace_period: u64::try_from(self.drain_grace_period)
                .ok()
                .map(Duration::from_secs),
            pod_selector: parse_selector("drain-pod-selector", &self.drain_pod_selector)?,
            skip_wait_for_delete_timeout: (self.skip_wait_for_delete_timeout > 0)
                .then(|| Duration::from_secs(self.skip_wait_for_delete_timeout)),
        })
    }

    /// `--metrics-host` and `--metrics-port` as a socket address; no host: every address, IPv6
    /// and IPv4.
    fn metrics_addr(&self) -> String {
        let host = strip_quotes(&self.metrics_host);
        if host.is_empty() {
            format!("[::]:{}", self.metrics_port)
        } else if host.contains(':') {
            format!("[{host}]:{}", self.metrics_port)
        } else {
            format!("{host}:{}", self.metrics_port)
        }
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
pub(super) fn lock_ttl_warning(
    ttl: Option<Duration>,
    delays: Duration,
    drain_timeout: Option<Duration>,
) -> Option<String> {
    let ttl = ttl?;
    let shown = |d: Duration| GoDuration::from_std(d).map_or_else(|_| format!("{d:?}"), |g| g.to_string());
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
