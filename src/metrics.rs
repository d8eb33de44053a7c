//! Prometheus metrics and the small HTTP server for `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::agent_state::Phase;

mod liveness;
mod process;

pub use liveness::{GRACE, Liveness, PhaseLimits, ROUND_LIMIT};
pub use process::{ProcessError, ProcessStats};

/// The buckets of `kured_drain_duration_seconds`, in seconds: from a node without pods to
/// evict to a drain that waits an hour on a disruption budget.
const DRAIN_BUCKETS: [f64; 10] = [5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0];

/// The buckets of `kured_reboot_duration_seconds`, in seconds: a whole cycle, drain, reboot,
/// return to service and release delay included.
const REBOOT_BUCKETS: [f64; 9] = [60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0];

/// The text formats `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: what a scraper gets unless it asks for OpenMetrics.
    Prometheus,
    /// OpenMetrics 1.0.0 text, for a request that accepts `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The format a request with these `Accept` header values asks for: OpenMetrics when one of
    /// them names `application/openmetrics-text` with a quality above 0, else Prometheus.
    pub fn negotiate<'a>(accept: impl IntoIterator<Item = &'a str>) -> Format {
        let openmetrics = accept
            .into_iter()
            .flat_map(|value| value.split(','))
            .any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            });
        if openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

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

/// The labels of the families that count by a reason: the blockers, the reboot failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    node: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    node: String,
    phase: String,
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

/// A histogram family of one node; its buckets come from the constructor.
type Histograms = Family<NodeLabel, Histogram, fn() -> Histogram>;

fn drain_histogram() -> Histogram {
    Histogram::new(DRAIN_BUCKETS)
}

fn reboot_histogram() -> Histogram {
    Histogram::new(REBOOT_BUCKETS)
}

/// Registers `metric` in `registry` as `name`, described by `help`, and returns it.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The agent's metrics. Names and labels of upstream's metrics are kept as they are.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node: NodeLabel,
    reboot_required: Family<NodeLabel, Gauge>,
    sentinel_errors: Family<NodeLabel, Counter>,
    reboot_blocked: Family<ReasonLabels, Gauge>,
    blocked_now: Family<ReasonLabels, Gauge>,
    notification_failures: NotificationFailures,
    lock_reclaimed: Family<NodeLabel, Counter>,
    reboot_failures: Family<ReasonLabels, Counter>,
    halted: Family<NodeLabel, Gauge>,
    phase: Family<PhaseLabels, Gauge>,
    lock_held: Family<NodeLabel, Gauge>,
    lock_age: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    drain_duration: Histograms,
    reboot_duration: Histograms,
    reboots: Family<NodeLabel, Counter>,
    drain_failures: Family<NodeLabel, Counter>,
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let mut r = Registry::default();
        let metrics = Metrics {
            node: NodeLabel {
                node: node.to_owned(),
            },
            reboot_required: registered(
                &mut r,
                "kured_reboot_required",
                "OS requires reboot due to software updates",
                Family::default(),
            ),
            sentinel_errors: registered(
                &mut r,
                "kured_sentinel_errors",
                "Reboot sentinel checks that failed (command error, unreadable file)",
                Family::default(),
            ),
            // Upstream's name exactly, without the `_total` OpenMetrics requires of a counter: so
            // it is exposed as a gauge, one that only ever goes up.
            reboot_blocked: registered(
                &mut r,
                "kured_reboot_blocked_reason",
                "Times a needed reboot was found blocked, by blocker (prometheus_alert, blocker_pod)",
                Family::default(),
            ),
            blocked_now: registered(
                &mut r,
                "kured_reboot_blocked",
                "1 while the needed reboot is held back by this blocker (prometheus_alert, blocker_pod), else 0",
                Family::default(),
            ),
            notification_failures: NotificationFailures(registered(
                &mut r,
                "kured_notifications_failed",
                "Notifications that could not be delivered after their retries, by URL scheme",
                Family::default(),
            )),
            lock_reclaimed: registered(
                &mut r,
                "kured_lock_reclaimed",
                "Lock entries of nodes that no longer exist, removed by this agent to free their slots",
                Family::default(),
            ),
            reboot_failures: registered(
                &mut r,
                "kured_reboot_failures",
                "Reboots that failed, by reason: failed (the request failed), timeout (the reboot command \
                 was killed at its time-out), no_effect (requested, but the node did not go down)",
                Family::default(),
            ),
            halted: registered(
                &mut r,
                "kured_post_reboot_halted",
                "1 while the node's post-reboot health gate has timed out and the rollout is halted at it",
                Family::default(),
            ),
            phase: registered(
                &mut r,
                "kured_phase",
                "1 for the phase the agent is in, 0 for every other phase",
                Family::default(),
            ),
            lock_held: registered(
                &mut r,
                "kured_lock_held",
                "1 while this node holds a slot of the reboot lock, else 0",
                Family::default(),
            ),
            lock_age: registered(
                &mut r,
                "kured_lock_age_seconds",
                "Age of the oldest live holder's entry in the lock as this agent last read it, 0 when none",
                Family::default(),
            ),
            drain_duration: registered(
                &mut r,
                "kured_drain_duration_seconds",
                "Drains that succeeded, from the cordon to the last pod gone",
                Histograms::new_with_constructor(drain_histogram),
            ),
            reboot_duration: registered(
                &mut r,
                "kured_reboot_duration_seconds",
                "Reboot cycles, from the lock taken to the lock released",
                Histograms::new_with_constructor(reboot_histogram),
            ),
            reboots: registered(
                &mut r,
                "kured_reboots",
                "Reboots requested by this agent that happened, counted when the node is back",
                Family::default(),
            ),
            drain_failures: registered(
                &mut r,
                "kured_drain_failures",
                "Drains (or the cordons before them) that failed",
                Family::default(),
            ),
            registry: {
                r.register_collector(Box::new(process::ProcessCollector::default()));
                r
            },
        };
        // Present from the start, so a dashboard sees 0 (or an empty histogram) rather than no data.
        let node = &metrics.node;
        drop(metrics.halted.get_or_create(node));
        drop(metrics.sentinel_errors.get_or_create(node));
        drop(metrics.lock_reclaimed.get_or_create(node));
        drop(metrics.lock_held.get_or_create(node));
        drop(metrics.lock_age.get_or_create(node));
        drop(metrics.drain_duration.get_or_create(node));
        drop(metrics.reboot_duration.get_or_create(node));
        drop(metrics.reboots.get_or_create(node));
        drop(metrics.drain_failures.get_or_create(node));
        for reason in crate::reboot::FAILURE_REASONS {
            drop(metrics.reboot_failures.get_or_create(&metrics.reason(reason)));
        }
        metrics.set_blocked_now(&[]);
        metrics.set_phase(Phase::Idle);
        metrics
    }

    fn reason(&self, reason: &str) -> ReasonLabels {
        ReasonLabels {
            node: self.node.node.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Whether the rollout is halted at this node (`kured_post_reboot_halted`).
    pub fn set_halted(&self, halted: bool) {
        self.halted.get_or_create(&self.node).set(i64::from(halted));
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
        self.reboot_blocked.get_or_create(&self.reason(reason)).inc();
    }

    /// The blockers that hold the needed reboot back now, by their metric labels
    /// ([`crate::blockers::METRIC_LABELS`]): each of them 1, every other 0.
    pub fn set_blocked_now(&self, reasons: &[&str]) {
        for reason in crate::blockers::METRIC_LABELS {
            self.blocked_now
                .get_or_create(&self.reason(reason))
                .set(i64::from(reasons.contains(&reason)));
        }
    }

    /// The phase the agent is in: 1 for it, 0 for every other.
    pub fn set_phase(&self, now: Phase) {
        for phase in Phase::ALL {
            let labels = PhaseLabels {
                node: self.node.node.clone(),
                phase: phase.as_str().to_owned(),
            };
            self.phase.get_or_create(&labels).set(i64::from(phase == now));
        }
    }

    /// Whether this node holds a slot of the lock.
    pub fn set_lock_held(&self, held: bool) {
        self.lock_held.get_or_create(&self.node).set(i64::from(held));
    }

    /// The age of the oldest live holder's entry in the lock as last read; zero when none.
    pub fn set_lock_age(&self, age: Duration) {
        self.lock_age.get_or_create(&self.node).set(age.as_secs_f64());
    }

    /// A drain that succeeded, from the cordon to the last pod gone.
    pub fn observe_drain(&self, took: Duration) {
        self.drain_duration
            .get_or_create(&self.node)
            .observe(took.as_secs_f64());
    }

    /// A reboot cycle, from the lock taken to the lock released.
    pub fn observe_reboot_cycle(&self, took: Duration) {
        self.reboot_duration
            .get_or_create(&self.node)
            .observe(took.as_secs_f64());
    }

    /// Counts one reboot this agent asked for that happened: the node is back from it.
    pub fn count_reboot(&self) {
        self.reboots.get_or_create(&self.node).inc();
    }

    /// Counts one drain, or the cordon before it, that failed.
    pub fn count_drain_failure(&self) {
        self.drain_failures.get_or_create(&self.node).inc();
    }

    /// Counts one lock entry of a node that no longer exists, removed by this agent.
    pub fn count_lock_reclaimed(&self) {
        self.lock_reclaimed.get_or_create(&self.node).inc();
    }

    /// Counts one failed reboot, by [`crate::reboot::RebootError::metric_reason`].
    pub fn count_reboot_failure(&self, reason: &str) {
        self.reboot_failures.get_or_create(&self.reason(reason)).inc();
    }

    /// A handle on the counters of `kured_notifications_failed_total`, for the notifier.
    pub fn notification_failures(&self) -> NotificationFailures {
        self.notification_failures.clone()
    }

    /// The registry in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        let encoded = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &self.registry),
        };
        // Writing into a String cannot fail; an error here would be a bug in an encoder.
        if let Err(e) = encoded {
            tracing::error!(error = %e, ?format, "encoding metrics");
        }
        out
    }
}

/// A listener on `addr`. The unspecified IPv6 address (`[::]:PORT`, what an empty
/// `--metrics-host` means) listens on every address of both families, whatever the host's
/// `net.ipv6.bindv6only`; on a host without IPv6 it falls back to every IPv4 address.
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let Ok(parsed) = addr.parse::<SocketAddr>() else {
        // A host name: resolved and bound as given.
        return tokio::net::TcpListener::bind(addr).await;
    };
    if parsed.ip() != std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        return tokio::net::TcpListener::bind(parsed).await;
    }
    match dual_stack(parsed) {
        Err(e)
            if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                || e.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
        {
            tracing::debug!(error = %e, "no IPv6 on this host: listening on IPv4 only");
            tokio::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, parsed.port())).await
        }
        other => other,
    }
}

/// An IPv6 socket that also accepts IPv4 connections (as IPv4-mapped addresses).
fn dual_stack(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v6()?;
    crate::sys::set_ipv6_only(&socket, false)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    liveness: Arc<Liveness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = listen(addr).await.map_err(|source| MetricsError::Bind {
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
            get(move |headers: HeaderMap| {
                let metrics = metrics.clone();
                async move {
                    let accept = headers.get_all(header::ACCEPT);
                    let format = Format::negotiate(accept.iter().filter_map(|v| v.to_str().ok()));
                    (
                        [(header::CONTENT_TYPE, format.content_type())],
                        metrics.encode(format),
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

    /// Connects to `addr` and reads what the listener's accepted side writes.
    async fn round_trip(listener: &tokio::net::TcpListener, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        client?;
        Ok(accepted?.1)
    }

    #[tokio::test]
    async fn an_empty_metrics_host_listens_on_ipv6_and_ipv4_alike() {
        let listener = listen("[::]:0").await.expect("a listener");
        let port = listener.local_addr().expect("its address").port();
        let v6 = round_trip(&listener, (std::net::Ipv6Addr::LOCALHOST, port).into()).await;
        let v4 = round_trip(&listener, (std::net::Ipv4Addr::LOCALHOST, port).into()).await;
        assert_eq!(v6.expect("::1 connects").ip().to_string(), "::1");
        assert_eq!(
            v4.expect("127.0.0.1 connects").ip().to_string(),
            "::ffff:127.0.0.1"
        );
    }

    #[tokio::test]
    async fn a_given_metrics_host_is_the_only_address_listened_on() {
        let listener = listen("127.0.0.1:0").await.expect("a listener");
        let port = listener.local_addr().expect("its address").port();
        let v6 = tokio::net::TcpStream::connect((std::net::Ipv6Addr::LOCALHOST, port)).await;
        assert!(v6.is_err(), "::1 must not reach a listener on 127.0.0.1");
        round_trip(&listener, (std::net::Ipv4Addr::LOCALHOST, port).into())
            .await
            .expect("127.0.0.1 connects");
        let listener = listen("[::1]:0").await.expect("a listener on ::1");
        let port = listener.local_addr().expect("its address").port();
        round_trip(&listener, (std::net::Ipv6Addr::LOCALHOST, port).into())
            .await
            .expect("::1 connects");
    }

    #[test]
    fn reboot_required_is_exposed_per_node_as_upstream_names_it() {
        let m = Metrics::new("node-a");
        m.set_reboot_required(true);
        let text = m.encode(Format::OpenMetrics);
        assert!(text.contains("# TYPE kured_reboot_required gauge"), "{text}");
        assert!(
            text.contains("kured_reboot_required{node=\"node-a\"} 1"),
            "{text}"
        );
        m.set_reboot_required(false);
        assert!(
            m.encode(Format::OpenMetrics)
                .contains("kured_reboot_required{node=\"node-a\"} 0")
        );
    }

    #[test]
    fn sentinel_errors_are_counted_from_zero() {
        let m = Metrics::new("node-a");
        assert!(
            m.encode(Format::OpenMetrics)
                .contains("kured_sentinel_errors_total{node=\"node-a\"} 0")
        );
        m.count_sentinel_error();
        m.count_sentinel_error();
        assert!(
            m.encode(Format::OpenMetrics)
                .contains("kured_sentinel_errors_total{node=\"node-a\"} 2")
        );
    }

    #[test]
    fn blocked_reboots_are_counted_under_upstreams_name_and_labels() {
        let m = Metrics::new("node-a");
        assert!(
            !m.encode(Format::OpenMetrics)
                .contains("kured_reboot_blocked_reason{")
        );
        m.count_blocked("blocker_pod");
        m.count_blocked("blocker_pod");
        m.count_blocked("prometheus_alert");
        let text = m.encode(Format::OpenMetrics);
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
        m.notification_failures().count("slack");
        m.notification_failures().count("slack");
        assert!(
            m.encode(Format::OpenMetrics)
                .contains("kured_notifications_failed_total{scheme=\"slack\"} 2"),
            "{}",
            m.encode(Format::OpenMetrics)
        );
        assert!(
            !Metrics::new("node-b")
                .encode(Format::OpenMetrics)
                .contains("scheme=\"slack\""),
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
            m.encode(Format::OpenMetrics)
                .contains("kured_lock_reclaimed_total{node=\"node-a\"} 0"),
            "{}",
            m.encode(Format::OpenMetrics)
        );
        m.count_lock_reclaimed();
        assert!(
            m.encode(Format::OpenMetrics)
                .contains("kured_lock_reclaimed_total{node=\"node-a\"} 1")
        );
    }

    #[test]
    fn reboot_failures_are_counted_by_reason_from_zero() {
        let m = Metrics::new("node-a");
        let text = m.encode(Format::OpenMetrics);
        for reason in crate::reboot::FAILURE_REASONS {
            let zero = format!("kured_reboot_failures_total{{node=\"node-a\",reason=\"{reason}\"}} 0");
            assert!(text.contains(&zero), "{zero} in {text}");
        }
        m.count_reboot_failure("timeout");
        m.count_reboot_failure("timeout");
        let text = m.encode(Format::OpenMetrics);
        assert!(
            text.contains("kured_reboot_failures_total{node=\"node-a\",reason=\"timeout\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kured_reboot_failures_total{node=\"node-a\",reason=\"no_effect\"} 0"),
            "{text}"
        );
    }

    /// The value of the sample `series` (name and labels as written) in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().expect("a number"))
    }

    #[test]
    fn the_prometheus_format_names_counters_with_their_suffix_and_has_no_eof() {
        let m = Metrics::new("node-a");
        m.count_sentinel_error();
        m.count_blocked("blocker_pod");
        let text = m.encode(Format::Prometheus);
        for line in [
            "# HELP kured_sentinel_errors_total Reboot sentinel checks",
            "# TYPE kured_sentinel_errors_total counter\n",
            "kured_sentinel_errors_total{node=\"node-a\"} 1\n",
            "# TYPE process_cpu_seconds_total counter\n",
            "# TYPE kured_reboot_blocked_reason gauge\n",
            "# TYPE kured_drain_duration_seconds histogram\n",
            "kured_drain_duration_seconds_bucket{node=\"node-a\",le=\"+Inf\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# TYPE kured_sentinel_errors counter"), "{text}");
    }

    #[test]
    fn openmetrics_names_counter_families_without_the_suffix_and_ends_with_eof() {
        let m = Metrics::new("node-a");
        m.count_sentinel_error();
        let text = m.encode(Format::OpenMetrics);
        for line in [
            "# TYPE kured_sentinel_errors counter\n",
            "kured_sentinel_errors_total{node=\"node-a\"} 1\n",
            "# TYPE process_cpu_seconds counter\n",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn openmetrics_is_served_only_to_a_scraper_that_accepts_it() {
        // Prometheus 3's Accept header: OpenMetrics first, the 0.0.4 text format as a fallback.
        let prometheus3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
                           application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;\
                           escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        let cases: [(&[&str], Format); 7] = [
            (&[], Format::Prometheus),
            (&["*/*"], Format::Prometheus),
            (&["text/plain;version=0.0.4"], Format::Prometheus),
            (
                &["application/openmetrics-text; version=1.0.0"],
                Format::OpenMetrics,
            ),
            (&[prometheus3], Format::OpenMetrics),
            (
                &["text/plain", "Application/OpenMetrics-Text"],
                Format::OpenMetrics,
            ),
            (
                &["application/openmetrics-text; q=0, text/plain"],
                Format::Prometheus,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(
                Format::negotiate(accept.iter().copied()),
                want,
                "Accept: {accept:?}"
            );
        }
        assert_eq!(
            Format::Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }

    #[test]
    fn the_phase_is_a_state_set_of_every_phase() {
        let m = Metrics::new("node-a");
        let phase =
            |text: &str, p: Phase| sample(text, &format!("kured_phase{{node=\"node-a\",phase=\"{p}\"}}"));
        let text = m.encode(Format::Prometheus);
        for p in Phase::ALL {
            let want = if p == Phase::Idle { 1.0 } else { 0.0 };
            assert_eq!(phase(&text, p), Some(want), "{p} at the start in:\n{text}");
        }
        m.set_phase(Phase::Draining);
        let text = m.encode(Format::Prometheus);
        for p in Phase::ALL {
            let want = if p == Phase::Draining { 1.0 } else { 0.0 };
            assert_eq!(phase(&text, p), Some(want), "{p} while draining in:\n{text}");
        }
    }

    #[test]
    fn blocked_now_is_one_for_the_blockers_that_hold_the_reboot_back() {
        let m = Metrics::new("node-a");
        let blocked = |m: &Metrics, reason: &str| {
            let series = format!("kured_reboot_blocked{{node=\"node-a\",reason=\"{reason}\"}}");
            sample(&m.encode(Format::Prometheus), &series)
        };
        assert_eq!(blocked(&m, "blocker_pod"), Some(0.0));
        assert_eq!(blocked(&m, "prometheus_alert"), Some(0.0));
        m.set_blocked_now(&["blocker_pod"]);
        assert_eq!(blocked(&m, "blocker_pod"), Some(1.0));
        assert_eq!(blocked(&m, "prometheus_alert"), Some(0.0));
        m.set_blocked_now(&[]);
        assert_eq!(blocked(&m, "blocker_pod"), Some(0.0));
    }

    #[test]
    fn the_lock_and_the_cycle_are_shown_from_zero() {
        let m = Metrics::new("node-a");
        let text = m.encode(Format::Prometheus);
        let gauges = ["kured_lock_held", "kured_lock_age_seconds"];
        let counters = ["kured_reboots_total", "kured_drain_failures_total"];
        let histograms = [
            "kured_drain_duration_seconds_count",
            "kured_reboot_duration_seconds_count",
        ];
        for family in gauges.into_iter().chain(counters).chain(histograms) {
            let series = format!("{family}{{node=\"node-a\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in:\n{text}");
        }
        m.set_lock_held(true);
        m.set_lock_age(Duration::from_millis(90_500));
        m.count_reboot();
        m.count_drain_failure();
        m.count_drain_failure();
        let text = m.encode(Format::Prometheus);
        assert_eq!(sample(&text, "kured_lock_held{node=\"node-a\"}"), Some(1.0));
        assert_eq!(
            sample(&text, "kured_lock_age_seconds{node=\"node-a\"}"),
            Some(90.5)
        );
        assert_eq!(sample(&text, "kured_reboots_total{node=\"node-a\"}"), Some(1.0));
        assert_eq!(
            sample(&text, "kured_drain_failures_total{node=\"node-a\"}"),
            Some(2.0)
        );
    }

    #[test]
    fn durations_fall_into_their_buckets() {
        let m = Metrics::new("node-a");
        m.observe_drain(Duration::from_secs(20));
        m.observe_reboot_cycle(Duration::from_secs(700));
        m.observe_reboot_cycle(Duration::from_secs(20_000));
        let text = m.encode(Format::Prometheus);
        let drain = |le: &str| {
            sample(
                &text,
                &format!("kured_drain_duration_seconds_bucket{{node=\"node-a\",le=\"{le}\"}}"),
            )
        };
        let cycle = |le: &str| {
            sample(
                &text,
                &format!("kured_reboot_duration_seconds_bucket{{node=\"node-a\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(
            (drain("15"), drain("30"), drain("+Inf")),
            (Some(0.0), Some(1.0), Some(1.0)),
            "{text}"
        );
        assert_eq!(
            sample(&text, "kured_drain_duration_seconds_sum{node=\"node-a\"}"),
            Some(20.0)
        );
        assert_eq!(
            (cycle("600"), cycle("900"), cycle("14400"), cycle("+Inf")),
            (Some(0.0), Some(1.0), Some(1.0), Some(2.0)),
            "{text}"
        );
        assert_eq!(
            sample(&text, "kured_reboot_duration_seconds_count{node=\"node-a\"}"),
            Some(2.0)
        );
        // The same buckets in OpenMetrics, which writes bounds as floats.
        let om = m.encode(Format::OpenMetrics);
        assert_eq!(
            sample(
                &om,
                "kured_drain_duration_seconds_bucket{le=\"30.0\",node=\"node-a\"}"
            ),
            Some(1.0),
            "{om}"
        );
    }

    #[test]
    fn process_metrics_describe_this_process_in_both_formats() {
        let m = Metrics::new("node-a");
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = m.encode(format);
            let value =
                |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in {format:?}:\n{text}"));
            assert!(value("process_resident_memory_bytes") > 0.0);
            assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
            assert!(value("process_open_fds") >= 1.0);
            assert!(value("process_max_fds") >= value("process_open_fds"));
            assert!(value("process_cpu_seconds_total") >= 0.0);
            assert!(value("process_start_time_seconds") > 1.7e9, "after 2023");
        }
    }
}
