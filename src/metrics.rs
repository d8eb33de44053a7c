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
use tokio::time::Instant;

use crate::agent_state::Phase;

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
struct FailureLabels {
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
    reboot_failures: Family<FailureLabels, Counter>,
    halted: Family<NodeLabel, Gauge>,
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
        let reboot_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "kured_reboot_failures",
            "Reboots that failed, by reason: failed (the request failed), timeout (the reboot command \
             was killed at its time-out), no_effect (requested, but the node did not go down)",
            reboot_failures.clone(),
        );
        let halted = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "kured_post_reboot_halted",
            "1 while the node's post-reboot health gate has timed out and the rollout is halted at it",
            halted.clone(),
        );
        let node = NodeLabel {
            node: node.to_owned(),
        };
        drop(halted.get_or_create(&node));
        // Present from the start, so a dashboard sees 0 rather than no data.
        drop(sentinel_errors.get_or_create(&node));
        drop(lock_reclaimed.get_or_create(&node));
        for reason in crate::reboot::FAILURE_REASONS {
            drop(reboot_failures.get_or_create(&FailureLabels {
                node: node.node.clone(),
                reason: reason.to_owned(),
            }));
        }
        Metrics {
            registry,
            node,
            reboot_required,
            sentinel_errors,
            reboot_blocked,
            notification_failures,
            lock_reclaimed,
            reboot_failures,
            halted,
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

    /// Counts one failed reboot, by [`crate::reboot::RebootError::metric_reason`].
    pub fn count_reboot_failure(&self, reason: &str) {
        let labels = FailureLabels {
            node: self.node.node.clone(),
            reason: reason.to_owned(),
        };
        self.reboot_failures.get_or_create(&labels).inc();
    }

    /// A handle on the counters of `kured_notifications_failed_total`, for the notifier.
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

/// How far past its bound a pause between the agent's rounds, or a round, may run before
/// `/healthz` calls the agent stuck: a metric refresh during a pause may run a sentinel command
/// for up to a minute, and a busy node may be slow to schedule the agent.
pub const GRACE: Duration = Duration::from_secs(120);

/// The longest a round may take besides its drain and its reboot: a handful of API requests, each
/// of which may wait out kube's 295 s read time-out when the API server stops answering, a
/// sentinel command (60 s at most), blockers (10 s) and notifications (35 s each).
pub const ROUND_LIMIT: Duration = Duration::from_secs(15 * 60);

/// How long the steps of a round that may take long may legitimately last, on top of
/// [`ROUND_LIMIT`]; `None`: no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseLimits {
    /// The drain, from the start of the `draining` phase to the reboot request: `--drain-delay`,
    /// `--drain-timeout` and `--reboot-delay`. Without `--drain-timeout` a drain has no bound.
    pub drain: Option<Duration>,
    /// The reboot request and the wait for it to take effect ([`Rebooter::longest`]).
    ///
    /// [`Rebooter::longest`]: crate::reboot::Rebooter::longest
    pub reboot: Option<Duration>,
}

impl PhaseLimits {
    /// How long the rest of a round may take once it enters `phase`; `None`: no bound.
    pub fn of(&self, phase: Phase) -> Option<Duration> {
        let own = match phase {
            Phase::Draining => self.drain?,
            Phase::Rebooting => self.reboot?,
            _ => Duration::ZERO,
        };
        Some(own.saturating_add(ROUND_LIMIT))
    }
}

/// What the agent's loop is doing, as far as `/healthz` is concerned.
#[derive(Debug, Clone, Copy)]
enum Doing {
    /// Pausing between rounds until `due` (`None`: a pause without end).
    Pausing { due: Option<Instant> },
    /// Running a round, in `phase` if it said so, since `since`, for at most `limit`.
    Working {
        phase: Option<Phase>,
        since: Instant,
        limit: Option<Duration>,
    },
}

/// Why `/healthz` calls the agent stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stuck {
    /// The pause between rounds ran `late` past its end, [`GRACE`] included.
    Pause { late: Duration },
    /// A round (in `phase`, when it entered one) has run for `running`, past its `limit` and
    /// [`GRACE`].
    Round {
        phase: Option<Phase>,
        running: Duration,
        limit: Duration,
    },
}

/// Whether the agent's loop still turns, for `/healthz`. The loop says how long each pause
/// between its rounds may last, and each round how long it may take: [`ROUND_LIMIT`], and once it
/// enters a phase that may take long (a drain, the reboot) that phase's [`PhaseLimits`] on top.
/// A pause or a round past its bound by more than [`GRACE`] makes `/healthz` answer 503, so that
/// the liveness probe restarts an agent whose loop stalled (the lock and the Node say where a
/// fresh one resumes). A drain without `--drain-timeout` has no bound: it is never called stuck.
#[derive(Debug)]
pub struct Liveness {
    limits: PhaseLimits,
    doing: Mutex<Doing>,
}

impl Default for Liveness {
    /// Without phase limits: a drain or a reboot request is never called stuck.
    fn default() -> Self {
        Liveness::new(PhaseLimits::default())
    }
}

impl Liveness {
    pub fn new(limits: PhaseLimits) -> Liveness {
        Liveness {
            limits,
            // Until the first pause, the start-up counts as a round.
            doing: Mutex::new(Doing::Working {
                phase: None,
                since: Instant::now(),
                limit: Some(ROUND_LIMIT),
            }),
        }
    }

    fn set(&self, doing: Doing) {
        *self.doing.lock().unwrap_or_else(|e| e.into_inner()) = doing;
    }

    /// The loop pauses for at most `longest`.
    pub fn pausing(&self, longest: Duration) {
        // A deadline past what the clock can hold is never overdue.
        let due = Instant::now().checked_add(longest.saturating_add(GRACE));
        self.set(Doing::Pausing { due });
    }

    /// The loop starts a round, which may take [`ROUND_LIMIT`].
    pub fn working(&self) {
        self.set(Doing::Working {
            phase: None,
            since: Instant::now(),
            limit: Some(ROUND_LIMIT),
        });
    }

    /// The round enters `phase`: from now, it may take as long as [`PhaseLimits::of`] says.
    pub fn entering(&self, phase: Phase) {
        self.set(Doing::Working {
            phase: Some(phase),
            since: Instant::now(),
            limit: self.limits.of(phase),
        });
    }

    /// Whether, and how, the loop is stuck; `None` while it keeps its time.
    fn stuck(&self) -> Option<Stuck> {
        let doing = *self.doing.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match doing {
            Doing::Pausing { due } => {
                let late = now.checked_duration_since(due?)?;
                (!late.is_zero()).then_some(Stuck::Pause { late })
            }
            Doing::Working { phase, since, limit } => {
                let limit = limit?;
                let running = now.saturating_duration_since(since);
                (running > limit.saturating_add(GRACE)).then_some(Stuck::Round {
                    phase,
                    running,
                    limit,
                })
            }
        }
    }

    /// The answer of `/healthz`.
    fn report(&self) -> (StatusCode, String) {
        let grace = whole_seconds(GRACE);
        let text = match self.stuck() {
            None => return (StatusCode::OK, "ok\n".to_owned()),
            Some(Stuck::Pause { late }) => {
                let late = whole_seconds(late);
                tracing::error!(
                    overdue = %late,
                    "the agent's loop is stalled: its pause between rounds ran past its end; reporting unhealthy"
                );
                format!("stalled: the pause between rounds is {late} past its end (grace {grace} included)\n")
            }
            Some(Stuck::Round {
                phase,
                running,
                limit,
            }) => {
                let what = match phase {
                    Some(Phase::Draining) => "the drain (phase draining)".to_owned(),
                    Some(Phase::Rebooting) => "the reboot request (phase rebooting)".to_owned(),
                    Some(phase) => format!("a round (phase {phase})"),
                    None => "a round".to_owned(),
                };
                let (running, limit) = (whole_seconds(running), whole_seconds(limit));
                tracing::error!(
                    stuck = %what,
                    running = %running,
                    limit = %limit,
                    "the agent's loop is stuck: a round ran past its bound; reporting unhealthy"
                );
                format!(
                    "stuck: {what} has run for {running}, past its bound of {limit} and a grace of {grace}\n"
                )
            }
        };
        (StatusCode::SERVICE_UNAVAILABLE, text)
    }
}

/// `d` in whole seconds, written as Go writes durations (`2m5s`).
fn whole_seconds(d: Duration) -> crate::duration::GoDuration {
    crate::duration::GoDuration::from_secs(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
        m.notification_failures().count("slack");
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

    #[test]
    fn reboot_failures_are_counted_by_reason_from_zero() {
        let m = Metrics::new("node-a");
        let text = m.encode();
        for reason in crate::reboot::FAILURE_REASONS {
            let zero = format!("kured_reboot_failures_total{{node=\"node-a\",reason=\"{reason}\"}} 0");
            assert!(text.contains(&zero), "{zero} in {text}");
        }
        m.count_reboot_failure("timeout");
        m.count_reboot_failure("timeout");
        let text = m.encode();
        assert!(
            text.contains("kured_reboot_failures_total{node=\"node-a\",reason=\"timeout\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kured_reboot_failures_total{node=\"node-a\",reason=\"no_effect\"} 0"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_once_a_pause_runs_past_its_end_and_the_grace() {
        let live = Liveness::default();
        assert_eq!(live.report().0, StatusCode::OK, "healthy before the first pause");

        live.pausing(Duration::from_secs(3600));
        tokio::time::advance(Duration::from_secs(3600) + GRACE).await;
        assert_eq!(
            live.report(),
            (StatusCode::OK, "ok\n".to_owned()),
            "within the grace"
        );

        tokio::time::advance(Duration::from_secs(65)).await;
        assert!(
            matches!(live.stuck(), Some(Stuck::Pause { late }) if late == Duration::from_secs(65)),
            "{:?}",
            live.stuck()
        );
        assert_eq!(
            live.report(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stalled: the pause between rounds is 1m5s past its end (grace 2m0s included)\n".to_owned()
            )
        );

        // A round starts: the pause's deadline no longer counts.
        live.working();
        assert_eq!(live.report().0, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_once_a_round_runs_past_its_bound_and_the_grace() {
        let live = Liveness::default();
        live.working();
        tokio::time::advance(ROUND_LIMIT + GRACE).await;
        assert_eq!(live.report().0, StatusCode::OK, "within the grace");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            live.report(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stuck: a round has run for 17m1s, past its bound of 15m0s and a grace of 2m0s\n".to_owned()
            )
        );
        // The next pause makes it healthy again.
        live.pausing(Duration::from_secs(60));
        assert_eq!(live.report().0, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_is_judged_by_its_own_bound_from_its_start() {
        let limits = PhaseLimits {
            drain: Some(Duration::from_secs(3600)),
            reboot: Some(crate::reboot::COMMAND_TIMEOUT + crate::reboot::EFFECT_LIMIT),
        };
        let live = Liveness::new(limits);
        live.working();
        // A round that spent 10 minutes before its drain still gets the drain's full bound.
        tokio::time::advance(Duration::from_secs(600)).await;
        live.entering(Phase::Draining);
        tokio::time::advance(Duration::from_secs(3600) + ROUND_LIMIT + GRACE).await;
        assert_eq!(
            live.report().0,
            StatusCode::OK,
            "a drain within --drain-timeout is not stuck"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            live.stuck(),
            Some(Stuck::Round {
                phase: Some(Phase::Draining),
                running: Duration::from_secs(3600) + ROUND_LIMIT + GRACE + Duration::from_secs(1),
                limit: Duration::from_secs(3600) + ROUND_LIMIT,
            })
        );
        assert!(
            live.report()
                .1
                .starts_with("stuck: the drain (phase draining) has run for 1h17m1s")
        );

        live.entering(Phase::Rebooting);
        let bound = limits.reboot.unwrap() + ROUND_LIMIT;
        tokio::time::advance(bound + GRACE).await;
        assert_eq!(live.report().0, StatusCode::OK, "within the reboot's bound");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            live.report(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "stuck: the reboot request (phase rebooting) has run for 28m1s, past its bound of 26m0s \
                 and a grace of 2m0s\n"
                    .to_owned()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_without_a_time_out_is_never_stuck() {
        let live = Liveness::new(PhaseLimits {
            drain: None,
            reboot: Some(crate::reboot::EFFECT_LIMIT),
        });
        live.entering(Phase::Draining);
        tokio::time::advance(Duration::from_secs(30 * 86_400)).await;
        assert_eq!(live.stuck(), None);
    }

    #[test]
    fn phase_limits_follow_the_configuration() {
        let limits = PhaseLimits {
            drain: Some(Duration::from_secs(100)),
            reboot: Some(Duration::from_secs(10)),
        };
        let unbounded = PhaseLimits::default();
        let cases = [
            (
                limits,
                Phase::Draining,
                Some(Duration::from_secs(100) + ROUND_LIMIT),
            ),
            (
                limits,
                Phase::Rebooting,
                Some(Duration::from_secs(10) + ROUND_LIMIT),
            ),
            (limits, Phase::Recovering, Some(ROUND_LIMIT)),
            (limits, Phase::WaitingForLock, Some(ROUND_LIMIT)),
            (unbounded, Phase::Draining, None),
            (unbounded, Phase::Rebooting, None),
            (unbounded, Phase::Idle, Some(ROUND_LIMIT)),
        ];
        for (limits, phase, want) in cases {
            assert_eq!(limits.of(phase), want, "{phase} with {limits:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_without_end_is_never_overdue() {
        let live = Liveness::default();
        live.pausing(Duration::MAX);
        tokio::time::advance(Duration::from_secs(10 * 365 * 86_400)).await;
        assert!(live.stuck().is_none(), "{:?}", live.stuck());
    }
}
