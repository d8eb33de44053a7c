//! Blockers: conditions outside the node that hold a reboot back even when the node needs one
//! and the window is open. They are checked before the lock is taken, as upstream does, so a
//! blocked node never holds the lock while it waits.
//!
//! - [`PrometheusBlocker`]: active alerts in Prometheus (`--prometheus-url`), narrowed by
//!   `--alert-filter-regexp`, `--alert-filter-match-only` and `--alert-firing-only`;
//! - [`PodBlocker`]: pods on this node that match a `--blocking-pod-selector`.
//!
//! A check never fails: it answers with the reasons the reboot is blocked, and a blocker that
//! cannot find out (Prometheus unreachable, the API server refusing the pod list) blocks too, with
//! a reason that says what went wrong. Rebooting because a check could not be made would defeat
//! the point of configuring it. Upstream kured also blocks on such errors.
//!
//! [`Blockers`] runs every configured blocker and keeps every reason, not only the first, so the
//! agent's log and `kured status` show everything that stands in the way. Blockers log only at
//! debug level: the caller logs the reasons it is given, once.

use std::fmt;
use std::future::Future;

use kube::Client;
use tracing::debug;

pub mod pods;
pub mod prometheus;

pub use pods::PodBlocker;
pub use prometheus::{AlertFilter, PrometheusBlocker};

use crate::selector::LabelSelector;

/// What kind of condition blocks a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockKind {
    /// Prometheus reports active alerts that pass the alert filter.
    PrometheusAlerts,
    /// Prometheus could not be asked, or its answer could not be understood.
    PrometheusError,
    /// Pods matching a blocking pod selector are on the node.
    BlockingPods,
    /// The pods on the node could not be listed.
    PodListError,
}

/// Every value of [`BlockKind::metric_label`], in a fixed order: the reasons of the blocker
/// metrics, each shown from the start.
pub const METRIC_LABELS: [&str; 2] = ["prometheus_alert", "blocker_pod"];

impl BlockKind {
    /// A short, stable machine name, for structured logs and `kured status`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::PrometheusAlerts => "prometheus-alerts",
            BlockKind::PrometheusError => "prometheus-error",
            BlockKind::BlockingPods => "blocking-pods",
            BlockKind::PodListError => "pod-list-error",
        }
    }

    /// The value of the `reason` label of upstream's `kured_reboot_blocked_reason` counter: one
    /// per blocker, whether it blocks because of what it found or because it could not look.
    pub fn metric_label(self) -> &'static str {
        match self {
            BlockKind::PrometheusAlerts | BlockKind::PrometheusError => "prometheus_alert",
            BlockKind::BlockingPods | BlockKind::PodListError => "blocker_pod",
        }
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reboot is blocked: a kind, and a message for people that names what blocks (the alerts,
/// the pods, or the error and the server it came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockReason {
    pub kind: BlockKind,
    pub message: String,
}

impl BlockReason {
    pub fn new(kind: BlockKind, message: impl Into<String>) -> BlockReason {
        BlockReason {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Something that can hold a reboot back.
pub trait Blocker: Send + Sync {
    /// Every reason this blocker blocks a reboot right now; empty means it does not block. Errors
    /// are reasons too (see the module documentation): a check never fails open.
    fn check(&self) -> impl Future<Output = Vec<BlockReason>> + Send;
}

/// Errors of setting up the blockers.
#[derive(Debug, thiserror::Error)]
pub enum BlockerError {
    #[error("cannot set up the Prometheus blocker")]
    Prometheus(#[source] prometheus::PrometheusError),
}

/// What may block a reboot: `--prometheus-url` with its alert filter, and
/// `--blocking-pod-selector`.
#[derive(Debug, Clone, Default)]
pub struct BlockerSettings {
    /// `None`: alerts do not block.
    pub prometheus_url: Option<url::Url>,
    pub alert_filter: AlertFilter,
    /// Pods on the node matching any of these block; none: pods do not block.
    pub pod_selectors: Vec<LabelSelector>,
}

/// The blockers an agent is configured with. With none configured nothing blocks.
#[derive(Debug, Clone, Default)]
pub struct Blockers {
    prometheus: Option<PrometheusBlocker>,
    pods: Option<PodBlocker>,
}

impl Blockers {
    /// The blockers `settings` ask for, for pods on `node`: Prometheus alerts when a URL is
    /// set, pods when at least one selector is.
    pub fn configured(
        client: Client,
        node: &str,
        settings: &BlockerSettings,
    ) -> Result<Blockers, BlockerError> {
        let prometheus = settings
            .prometheus_url
            .as_ref()
            .map(|url| PrometheusBlocker::new(url.clone(), settings.alert_filter.clone()))
            .transpose()
            .map_err(BlockerError::Prometheus)?;
        let pods = (!settings.pod_selectors.is_empty())
            .then(|| PodBlocker::new(client, node.to_owned(), settings.pod_selectors.clone()));
        Ok(Blockers { prometheus, pods })
    }

    /// One line describing the configured blockers, for the agent's start-up log.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.prometheus {
            parts.push(p.describe());
        }
        if let Some(p) = &self.pods {
            parts.push(p.describe());
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

impl Blocker for Blockers {
    /// Runs every configured blocker at the same time and returns all their reasons, Prometheus
    /// first.
    async fn check(&self) -> Vec<BlockReason> {
        let prometheus = async {
            match &self.prometheus {
                Some(b) => b.check().await,
                None => Vec::new(),
            }
        };
        let pods = async {
            match &self.pods {
                Some(b) => b.check().await,
                None => Vec::new(),
            }
        };
        let (mut reasons, pods) = tokio::join!(prometheus, pods);
        reasons.extend(pods);
        debug!(
            blocked = !reasons.is_empty(),
            reasons = reasons.len(),
            "blockers checked"
        );
        reasons
    }
}

/// Up to `limit` names joined with ", ", then how many more there are: `a, b, c and 7 more`.
/// Keeps reasons readable in logs and in `kured status` when hundreds of alerts fire.
fn name_list(names: &[String], limit: usize) -> String {
    let shown = names
        .iter()
        .take(limit)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(limit) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_list_caps_and_counts() {
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        assert_eq!(name_list(&names, 10), "a, b, c, d");
        assert_eq!(name_list(&names, 4), "a, b, c, d");
        assert_eq!(name_list(&names, 2), "a, b and 2 more");
        assert_eq!(name_list(&[], 2), "");
    }

    #[test]
    fn kinds_have_stable_names_and_upstream_metric_labels() {
        let cases = [
            (
                BlockKind::PrometheusAlerts,
                "prometheus-alerts",
                "prometheus_alert",
            ),
            (BlockKind::PrometheusError, "prometheus-error", "prometheus_alert"),
            (BlockKind::BlockingPods, "blocking-pods", "blocker_pod"),
            (BlockKind::PodListError, "pod-list-error", "blocker_pod"),
        ];
        for (kind, name, label) in cases {
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.to_string(), name);
            assert_eq!(kind.metric_label(), label);
            assert!(METRIC_LABELS.contains(&label), "{label} in METRIC_LABELS");
        }
    }

    #[tokio::test]
    async fn nothing_configured_blocks_nothing() {
        let blockers = Blockers::default();
        assert_eq!(blockers.describe(), "none");
        assert!(blockers.check().await.is_empty());
    }
}
