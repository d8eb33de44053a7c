//! Prometheus metrics and the small HTTP server for `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} for /metrics and /healthz")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving /metrics and /healthz on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockedLabels {
    node: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemeLabel {
    scheme: String,
}

/// `kured_notifications_failed_total{scheme}`: notifications given up on after their retries.
/// A cheap handle: clones count into the same counters, so the notifier counts into the family
/// that its [`Metrics`] registry exposes ([`Metrics::notification_failures`]).
#[derive(Clone, Debug, Default)]
pub struct NotificationFailures(Family<SchemeLabel, Counter>);

impl NotificationFailures {
    pub fn count(&self, scheme: &str) {
        self.0.get_or_create(&scheme_label(scheme)).inc();
    }

    /// Shows `scheme` with 0 until its first failure, so a dashboard sees 0 rather than no data.
    pub fn register(&self, scheme: &str) {
        drop(self.0.get_or_create(&scheme_label(scheme)));
    }

    /// The failures counted for `scheme` so far.
    pub fn get(&self, scheme: &str) -> u64 {
        self.0.get_or_create(&scheme_label(scheme)).get()
    }
}

fn scheme_label(scheme: &str) -> SchemeLabel {
    SchemeLabel {
        scheme: scheme.to_owned(),
    }
}

/// The agent's metrics. Names and labels of upstream's metrics are kept as they are.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node: NodeLabel,
    reboot_required: Family<NodeLabel, Gauge>,
    sentinel_errors: Family<NodeLabel, Counter>,
    reboot_blocked: Family<BlockedLabels, Gauge>,
    notification_failures: NotificationFailures,
    lock_reclaimed: Family<NodeLabel, Counter>,
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let mut registry = Registry::default();
        let reboot_required = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "kured_reboot_required",
            "OS requires reboot due to software updates",
            reboot_required.clone(),
        );
        let sentinel_errors = Family::<NodeLabel, Counter>::default();
        registry.register(
            "kured_sentinel_errors",
            "Reboot sentinel checks that failed (command error, unreadable file)",
            sentinel_errors.clone(),
        );
        // Upstream's name exactly, without the `_total` OpenMetrics requires of a counter: so it is
        // exposed as a gauge, one that only ever goes up.
        let reboot_blocked = Family::<BlockedLabels, Gauge>::default();
        registry.register(
            "kured_reboot_blocked_reason",
            "Times a needed reboot was found blocked, by blocker (prometheus_alert, blocker_pod)",
            reboot_blocked.clone(),
        );
        let notification_failures = NotificationFailures::default();
        registry.register(
            "kured_notifications_failed",
            "Notifications that could not be delivered after their retries, by URL scheme",
            notification_failures.0.clone(),
        );
        let lock_reclaimed = Family::<NodeLabel, Counter>::default();
        registry.register(
            "kured_lock_reclaimed",
            "Lock entries of nodes that no longer exist, removed by this agent to free their slots",
            lock_reclaimed.clone(),
        );
        let node = NodeLabel {
            node: node.to_owned(),
        };
        // Present from the start, so a dashboard sees 0 rather than no data.
        drop(sentinel_errors.get_or_create(&node));
        drop(lock_reclaimed.get_or_create(&node));
        Metrics {
            registry,
            node,
            reboot_required,
            sentinel_errors,
            reboot_blocked,
            notification_failures,
            lock_reclaimed,
        }
    }

    pub fn set_reboot_required(&self, required: bool) {
        self.reboot_required
            .get_or_create(&self.node)
            .set(i64::from(required));
    }

    pub fn count_sentinel_error(&self) {
        self.sentinel_errors.get_or_create(&self.node).inc();
    }

    /// Counts one check that found the reboot blocked by blocker `reason` (the blocker kind's
    /// upstream label, [`crate::blockers::BlockKind::metric_label`]).
    pub fn count_blocked(&self, reason: &str) {
        let labels = BlockedLabels {
            node: self.node.node.clone(),
            reason: reason.to_owned(),
        };
        self.reboot_blocked.get_or_create(&labels).inc();
    }

    /// Counts one lock entry of a node that no longer exists, removed by this agent.
    pub fn count_lock_reclaimed(&self) {
        self.lock_reclaimed.get_or_create(&self.node).inc();
    }

    pub fn count_notification_failure(&self, scheme: &str) {
        self.notification_failures.count(scheme);
    }

    /// A handle on the counters [`Metrics::count_notification_failure`] counts into.
    pub fn notification_failures(&self) -> NotificationFailures {
        self.notification_failures.clone()
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be a bug in an encoder.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// How far past its expected end a pause between the agent's rounds may run before `/healthz`
/// calls the agent stalled: a metric refresh during the pause may run a sentinel command for up
/// to a minute, and a busy node may be slow to schedule the agent.
pub const PAUSE_GRACE: Duration = Duration::from_secs(120);

/// Whether the agent's loop still turns, for `/healthz`. The loop says how long each pause
/// between its rounds may last; one overdue by more than [`PAUSE_GRACE`] makes `/healthz` answer
/// 503, so that the liveness probe restarts an agent whose loop stalled (the lock and the Node say
/// where a fresh one resumes). While a round runs — a drain may take as long as its time-out — no
/// deadline is set.
#[derive(Debug, Default)]
pub struct Liveness {
    due: Mutex<Option<tokio::time::Instant>>,
}

impl Liveness {
    /// The loop pauses for at most `longest`.
    pub fn pausing(&self, longest: Duration) {
        // A deadline past what the clock can hold is never overdue.
        let due = tokio::time::Instant::now().checked_add(longest.saturating_add(PAUSE_GRACE));
        *self.due.lock().unwrap_or_else(|e| e.into_inner()) = due;
    }

    /// The loop runs a round.
    pub fn working(&self) {
        *self.due.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// How long the current pause has run past its deadline, grace included; `None` while the
    /// loop keeps its time.
    pub fn overdue(&self) -> Option<Duration> {
        let due = (*self.due.lock().unwrap_or_else(|e| e.into_inner()))?;
        let late = tokio::time::Instant::now().checked_duration_since(due)?;
        (!late.is_zero()).then_some(late)
    }

    /// The answer of `/healthz`.
    fn report(&self) -> (StatusCode, String) {
        match self.overdue() {
            None => (StatusCode::OK, "ok\n".to_owned()),
            Some(late) => {
                let late = whole_seconds(late);
                tracing::error!(
                    overdue = %late,
                    "the agent's loop is stalled: its pause between rounds ran past its end; reporting unhealthy"
                );
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "stalled: the pause between rounds is {late} past its end (grace {} included)\n",
                        whole_seconds(PAUSE_GRACE)
                    ),
                )
            }
        }
    }
}

/// `d` in whole seconds, written as Go writes durations (`2m5s`).
fn whole_seconds(d: Duration) -> crate::duration::GoDuration {
    crate::duration::GoDuration::from_secs(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    liveness: Arc<Liveness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    tracing::info!(addr = %local, "serving /metrics and /healthz");
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let liveness = liveness.clone();
                async move { liveness.report().into_response() }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| MetricsError::Serve { addr: local, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_required_is_exposed_per_node_as_upstream_names_it() {
        let m = Metrics::new("node-a");
        m.set_reboot_required(true);
        let text = m.encode();
        assert!(text.contains("# TYPE kured_reboot_required gauge"), "{text}");
        assert!(
            text.contains("kured_reboot_required{node=\"node-a\"} 1"),
            "{text}"
        );
        m.set_reboot_required(false);
        assert!(m.encode().contains("kured_reboot_required{node=\"node-a\"} 0"));
    }

    #[test]
    fn sentinel_errors_are_counted_from_zero() {
        let m = Metrics::new("node-a");
        assert!(
            m.encode()
                .contains("kured_sentinel_errors_total{node=\"node-a\"} 0")
        );
        m.count_sentinel_error();
        m.count_sentinel_error();
        assert!(
            m.encode()
                .contains("kured_sentinel_errors_total{node=\"node-a\"} 2")
        );
    }

    #[test]
    fn blocked_reboots_are_counted_under_upstreams_name_and_labels() {
        let m = Metrics::new("node-a");
        assert!(!m.encode().contains("kured_reboot_blocked_reason{"));
        m.count_blocked("blocker_pod");
        m.count_blocked("blocker_pod");
        m.count_blocked("prometheus_alert");
        let text = m.encode();
        assert!(
            text.contains("# TYPE kured_reboot_blocked_reason gauge"),
            "{text}"
        );
        assert!(
            text.contains("kured_reboot_blocked_reason{node=\"node-a\",reason=\"blocker_pod\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kured_reboot_blocked_reason{node=\"node-a\",reason=\"prometheus_alert\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn notification_failures_are_counted_per_scheme() {
        let m = Metrics::new("node-a");
        m.count_notification_failure("slack");
        m.notification_failures().count("slack");
        assert!(
            m.encode()
                .contains("kured_notifications_failed_total{scheme=\"slack\"} 2"),
            "{}",
            m.encode()
        );
        assert!(
            !Metrics::new("node-b").encode().contains("scheme=\"slack\""),
            "registries are separate"
        );

        let own = NotificationFailures::default();
        own.register("smtp");
        own.count("slack");
        assert_eq!((own.get("smtp"), own.get("slack")), (0, 1));
    }

    #[test]
    fn reclaimed_entries_are_counted_from_zero() {
        let m = Metrics::new("node-a");
        assert!(
            m.encode()
                .contains("kured_lock_reclaimed_total{node=\"node-a\"} 0"),
            "{}",
            m.encode()
        );
        m.count_lock_reclaimed();
        assert!(
            m.encode()
                .contains("kured_lock_reclaimed_total{node=\"node-a\"} 1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_once_a_pause_runs_past_its_end_and_the_grace() {
        let live = Liveness::default();
        assert_eq!(live.report().0, StatusCode::OK, "healthy before the first pause");

        live.pausing(Duration::from_secs(3600));
        tokio::time::advance(Duration::from_secs(3600) + PAUSE_GRACE).await;
        assert_eq!(
            live.report(),
            (StatusCode::OK, "ok\n".to_owned()),
            "within the grace"
        );

        tokio::time::advance(Duration::from_secs(65)).await;
        assert_eq!(live.overdue(), Some(Duration::from_secs(65)));
        assert_eq!(
            live.report(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stalled: the pause between rounds is 1m5s past its end (grace 2m0s included)\n".to_owned()
            )
        );

        // A round starts: however long it takes, the loop is not called stalled.
        live.working();
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert_eq!(live.report().0, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_without_end_is_never_overdue() {
        let live = Liveness::default();
        live.pausing(Duration::MAX);
        tokio::time::advance(Duration::from_secs(10 * 365 * 86_400)).await;
        assert_eq!(live.overdue(), None);
    }
}
