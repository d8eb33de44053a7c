//! Prometheus metrics and the small HTTP server for `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

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

/// The agent's metrics. Names and labels of upstream's metrics are kept as they are.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node: NodeLabel,
    reboot_required: Family<NodeLabel, Gauge>,
    sentinel_errors: Family<NodeLabel, Counter>,
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
        let node = NodeLabel {
            node: node.to_owned(),
        };
        // Present from the start, so a dashboard sees 0 rather than no data.
        drop(sentinel_errors.get_or_create(&node));
        Metrics {
            registry,
            node,
            reboot_required,
            sentinel_errors,
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

/// Serves `/metrics` and `/healthz` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
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
            get(|| async { (StatusCode::OK, "ok\n").into_response() }),
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
}
