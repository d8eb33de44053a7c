//! The post-reboot health gate: after its reboot a node keeps its lock slot until it is really
//! back — the Node `Ready`, every DaemonSet pod on it `Ready`, no firing alert matching
//! `--post-reboot-alert-filter` — and has stayed so for `--post-reboot-settle`. Only then does the
//! next node go down.
//!
//! Checked on changes, not by polling: [`HealthGate::check`] takes the Node from the agent's own
//! watch of it ([`NodeWatch`]) and lists the node's pods, and [`HealthGate::changed`] waits for
//! the watched Node to move past the version that check looked at, and watches the pods from the
//! version the list returned, so no change between the two is missed. Prometheus has no watch:
//! with an alert filter, the gate asks again every [`ALERT_RECHECK`]. While the Node watch does
//! not have the Node — it is recovering from an error, or RBAC forbids watching Nodes (upstream's
//! manifests grant `get` and `patch` only) — the check reads the Node, and the wait reads it again
//! after [`NODE_RECHECK`].

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client, ResourceExt};
use regex::Regex;
use tracing::warn;
use url::Url;

use crate::blockers::prometheus::{AlertFilter, PrometheusBlocker, PrometheusError};
use crate::node::NodeWatch;

/// How often firing alerts are asked for while the gate waits.
pub const ALERT_RECHECK: Duration = Duration::from_secs(15);
/// How often the Node is read while the gate waits, when the Node watch does not have it.
pub const NODE_RECHECK: Duration = Duration::from_secs(5);
/// The pause after a watch failed, before the gate looks again.
const WATCH_RETRY: Duration = Duration::from_secs(5);
/// A watch request's own time-out: the API server ends it then, and the gate looks again.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// `--post-reboot-settle`, `--post-reboot-timeout`, `--post-reboot-alert-filter` (with
/// `--prometheus-url`).
#[derive(Debug, Clone, Default)]
pub struct GateSettings {
    /// How long everything must have been healthy before the gate passes.
    pub settle: Duration,
    /// How long after the gate started it halts the rollout; `None`: never.
    pub timeout: Option<Duration>,
    /// Alerts whose name matches fail the gate while firing.
    pub alert_filter: Option<Regex>,
    pub prometheus_url: Option<Url>,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("reading node {node}")]
    Node {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing the pods on node {node}")]
    Pods {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting up the Prometheus client for the alert filter")]
    Prometheus(#[source] PrometheusError),
}

/// What the gate found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy, and for the settle time.
    Passed,
    /// Not yet: `what` is still pending; the gate should look again by `next` at the latest
    /// (the settle time's end, the next alert check), or when something changes.
    Pending { what: String, next: Option<Timestamp> },
}

/// The health gate of one node; see the [module documentation](self).
pub struct HealthGate {
    node: String,
    nodes: Api<Node>,
    pods: Api<Pod>,
    settings: GateSettings,
    alerts: Option<PrometheusBlocker>,
    /// Since when everything has been found healthy, without a failure in between.
    healthy_since: Mutex<Option<tokio::time::Instant>>,
    /// The resource versions of the Node and the pod list the last check looked at, for
    /// [`HealthGate::changed`].
    versions: Mutex<(Option<String>, Option<String>)>,
}

impl HealthGate {
    pub fn new(client: Client, node: &str, settings: GateSettings) -> Result<HealthGate, GateError> {
        let alerts = match (&settings.alert_filter, &settings.prometheus_url) {
            (Some(regexp), Some(url)) => Some(
                PrometheusBlocker::new(
                    url.clone(),
                    AlertFilter {
                        regexp: Some(regexp.clone()),
                        match_only: true,
                        firing_only: true,
                    },
                )
                .map_err(GateError::Prometheus)?,
            ),
            _ => None,
        };
        Ok(HealthGate {
            node: node.to_owned(),
            nodes: Api::all(client.clone()),
            pods: Api::all(client),
            settings,
            alerts,
            healthy_since: Mutex::new(None),
            versions: Mutex::new((None, None)),
        })
    }

    pub fn settings(&self) -> &GateSettings {
        &self.settings
    }

    /// Looks at everything the gate waits for, once: the Node as `watched` has it (read when the
    /// watch does not have it), the pods, the alerts.
    pub async fn check(&self, now: Timestamp, watched: &NodeWatch) -> Result<Verdict, GateError> {
        let node = match watched.current() {
            Some(node) => node,
            None => self
                .nodes
                .get(&self.node)
                .await
                .map_err(|source| GateError::Node {
                    node: self.node.clone(),
                    source,
                })?,
        };
        let pods = self
            .pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", self.node)))
            .await
            .map_err(|source| GateError::Pods {
                node: self.node.clone(),
                source,
            })?;
        *self.versions.lock().unwrap_or_else(|e| e.into_inner()) =
            (node.resource_version(), pods.metadata.resource_version.clone());

        let mut pending = Vec::new();
        if !node_ready(&node) {
            pending.push(format!("node {} not Ready", self.node));
        }
        pending.extend(unready_daemonset_pods(&pods.items));
        let mut next = None;
        if let Some(alerts) = &self.alerts {
            next = now.checked_add(ALERT_RECHECK).ok();
            match alerts.active_alerts().await {
                Ok(firing) if firing.is_empty() => {}
                Ok(firing) => pending.push(format!("alert firing: {}", firing.join(", "))),
                Err(e) => pending.push(format!(
                    "cannot ask Prometheus for alerts: {}",
                    crate::error_chain(&e)
                )),
            }
        }
        let mut since = self.healthy_since.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            *since = None;
            return Ok(Verdict::Pending {
                what: pending.join("; "),
                next,
            });
        }
        let healthy = *since.get_or_insert_with(tokio::time::Instant::now);
        let left = self.settings.settle.saturating_sub(healthy.elapsed());
        if left.is_zero() {
            return Ok(Verdict::Passed);
        }
        let settle_end = now.checked_add(left).ok();
        Ok(Verdict::Pending {
            what: format!(
                "settling: {}s of {}s left",
                left.as_secs().max(1),
                self.settings.settle.as_secs()
            ),
            next: [next, settle_end].into_iter().flatten().min(),
        })
    }

    /// Forgets how long everything has been healthy: the next gate starts its settle time anew.
    pub fn reset(&self) {
        *self.healthy_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Waits until the Node (as `watched` has it) or a pod on it changes after the last
    /// [`HealthGate::check`]; while the watch does not have the Node, for [`NODE_RECHECK`]. Does
    /// not time out by itself: the caller bounds it.
    pub async fn changed(&self, watched: &NodeWatch) {
        let (node_version, pods_version) = self.versions.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pods = async {
            match pods_version {
                Some(version) => {
                    let params = self.watch_params(format!("spec.nodeName={}", self.node));
                    first_change(self.pods.watch(&params, &version).await).await
                }
                None => Err(None),
            }
        };
        let node = async {
            if watched.knows() {
                watched.node_changed(node_version.as_deref()).await;
            } else {
                tokio::time::sleep(NODE_RECHECK).await;
            }
        };
        let failed = tokio::select! {
            changed = pods => changed.err(),
            () = node => None,
        };
        if let Some(failure) = failed {
            if let Some(e) = &failure {
                warn!(node = %self.node, error = %crate::error_chain(e), "watching the node's pods for the health gate");
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }

    fn watch_params(&self, fields: String) -> WatchParams {
        WatchParams::default().fields(&fields).timeout(WATCH_TIMEOUT_SECS)
    }
}

/// Waits for the first change a watch reports; `Err` when it could not start or failed
/// (`None`: ended without a change or an error, e.g. at its time-out).
async fn first_change<K>(
    stream: kube::Result<impl futures_util::Stream<Item = kube::Result<WatchEvent<K>>>>,
) -> Result<(), Option<kube::Error>> {
    let mut stream = std::pin::pin!(stream.map_err(Some)?);
    while let Some(event) = stream.next().await {
        match event.map_err(Some)? {
            WatchEvent::Bookmark(_) => {}
            // An error answer (e.g. 410 Gone: the version is too old) means look again.
            WatchEvent::Added(_)
            | WatchEvent::Modified(_)
            | WatchEvent::Deleted(_)
            | WatchEvent::Error(_) => {
                return Ok(());
            }
        }
    }
    Err(None)
}

/// The Node reports `Ready=True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The DaemonSet pods among `pods` that are not Ready, named with their DaemonSet. Pods being
/// deleted do not count: their replacement does.
pub fn unready_daemonset_pods(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let owner = p
                .owner_references()
                .iter()
                .find(|o| o.kind == "DaemonSet" && o.controller == Some(true))?;
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (!ready).then(|| {
                format!(
                    "pod {}/{} (DaemonSet {}) not Ready",
                    p.namespace().unwrap_or_default(),
                    p.name_any(),
                    owner.name
                )
            })
        })
        .collect()
}

/// When a gate started at `since` times out, with `timeout`; `None`: never.
pub fn deadline(since: Timestamp, timeout: Option<Duration>) -> Option<Timestamp> {
    let timeout = SignedDuration::try_from(timeout?).ok()?;
    since.checked_add(timeout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn pod(name: &str, owner: Option<(&str, bool)>, ready: Option<bool>, deleting: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.owner_references = owner.map(|(kind, controller)| {
            vec![OwnerReference {
                kind: kind.into(),
                name: format!("{name}-owner"),
                controller: Some(controller),
                ..OwnerReference::default()
            }]
        });
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        p.status = ready.map(|ready| PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        p
    }

    #[test]
    fn only_daemonset_pods_that_are_not_ready_hold_the_gate() {
        let pods = [
            pod("ready", Some(("DaemonSet", true)), Some(true), false),
            pod("unready", Some(("DaemonSet", true)), Some(false), false),
            pod("no-status", Some(("DaemonSet", true)), None, false),
            pod("going", Some(("DaemonSet", true)), Some(false), true),
            pod("replica", Some(("ReplicaSet", true)), Some(false), false),
            pod("not-controller", Some(("DaemonSet", false)), Some(false), false),
            pod("bare", None, Some(false), false),
        ];
        assert_eq!(
            unready_daemonset_pods(&pods),
            [
                "pod ns/unready (DaemonSet unready-owner) not Ready",
                "pod ns/no-status (DaemonSet no-status-owner) not Ready",
            ]
        );
    }

    #[test]
    fn a_node_is_ready_only_when_it_says_so() {
        let node = |status: Option<&str>| Node {
            status: Some(NodeStatus {
                conditions: status.map(|s| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: s.into(),
                        ..NodeCondition::default()
                    }]
                }),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        assert!(node_ready(&node(Some("True"))));
        assert!(!node_ready(&node(Some("False"))));
        assert!(!node_ready(&node(Some("Unknown"))));
        assert!(!node_ready(&node(None)));
        assert!(!node_ready(&Node::default()));
    }

    #[test]
    fn the_deadline_is_the_start_plus_the_timeout() {
        let since: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        assert_eq!(deadline(since, None), None);
        assert_eq!(
            deadline(since, Some(Duration::from_secs(90))),
            Some("2026-12-06T10:01:30Z".parse().unwrap())
        );
        assert_eq!(deadline(since, Some(Duration::MAX)), None, "beyond any date");
    }
}
