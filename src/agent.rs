//! The agent: runs on every node, serves its metrics and keeps track of whether the node needs a
//! reboot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::{self, Metrics, MetricsError};

/// Upstream refreshes `kured_reboot_required` every minute, whatever `--period` is; so do we,
/// so that dashboards and alerts see a sentinel change within a minute.
const METRIC_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new(&config.node_id));
    let server = {
        let mut shutdown = shutdown.clone();
        metrics::serve(&config.metrics_addr, metrics.clone(), async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
    };
    tokio::pin!(server);

    info!(
        node = %config.node_id,
        sentinel = %config.sentinel.describe(),
        rebooter = %config.rebooter.describe(),
        window = %config.window,
        "agent started"
    );
    let mut interval = tokio::time::interval(METRIC_REFRESH.min(config.period));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    loop {
        tokio::select! {
            result = &mut server => return result.map_err(AgentError::from),
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = interval.tick() => {
                match config.sentinel.check().await {
                    Ok(required) => {
                        metrics.set_reboot_required(required);
                        if last != Some(required) {
                            info!(node = %config.node_id, reboot_required = required, "sentinel checked");
                            last = Some(required);
                        }
                    }
                    Err(e) => {
                        metrics.count_sentinel_error();
                        warn!(node = %config.node_id, error = %crate::error_chain(&e), "sentinel check failed");
                    }
                }
            }
        }
    }
    // Let the metrics server finish its graceful shutdown.
    server.await?;
    info!("agent stopped");
    Ok(())
}
