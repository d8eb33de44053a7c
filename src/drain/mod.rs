//! Draining a node through the Eviction API, with the semantics of the `kubectl drain` upstream
//! kured runs (`--ignore-daemonsets --delete-emptydir-data --force`):
//!
//! - the pods are those with `spec.nodeName` = the node, narrowed by `--drain-pod-selector`;
//! - skipped: pods whose deletion began more than `--skip-wait-for-delete-timeout` seconds ago,
//!   pods controlled by a DaemonSet that still exists (its controller would recreate them at once,
//!   cordon or not), and mirror pods (the kubelet's static pods, which the API cannot delete);
//! - evicted: everything else, including pods without a controller, pods with emptyDir volumes,
//!   finished (Succeeded/Failed) pods, and DaemonSet pods that are finished or whose DaemonSet is
//!   gone;
//! - an eviction refused with 429 (a PodDisruptionBudget says "not yet") is retried after about
//!   five seconds, kubectl's interval, as is one refused because the pod's namespace is being deleted; 404 means
//!   the pod is already gone; 409 (a conflict) is retried unless the pod turns out to be gone; any
//!   other error fails the drain, naming the pod;
//! - then the drain waits until every evicted pod is deleted (gone, or replaced by a pod of the same
//!   name with another UID), except that pods whose deletion began more than
//!   `--skip-wait-for-delete-timeout` seconds ago are no longer waited for;
//! - `--drain-timeout` bounds all of it; running out is [`DrainError::Timeout`], naming the pods
//!   still there.
//!
//! Beyond kubectl: each eviction carries the pod's UID as a precondition, so a retry never evicts a
//! replacement that took the same name (a StatefulSet pod); and deletions are awaited with one
//! watch of the node's pods rather than a GET per pod per second, so the drain returns as soon as
//! the last pod is gone.
//!
//! Not done here: cordoning (the caller cordons first, see [`crate::node::OwnNode::cordon`]) and
//! `--drain-delay` (the caller waits before calling [`Drainer::drain`], as upstream does after
//! setting the pre-reboot labels).
//!
//! The client must be built with `kube::Config::default_retry = false`. kube's default retry
//! layer silently retries 429 responses (up to 15 times, backing off to minutes), which would hide
//! a PodDisruptionBudget's refusal from the drain's own back-off and overrun `--drain-timeout`.
//!
//! The steps live apart: `select.rs` sorts the node's pods into those to evict and those to leave,
//! `evict.rs` evicts them, and `wait.rs` waits for the evicted ones to be gone.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::runtime::watcher;
use tokio::time::Instant;
use tracing::info;

use self::evict::Evicted;
use self::select::Plan;
use self::wait::{Pending, Waited};
use crate::kube_error::{self, is_transient};
use crate::selector::LabelSelector;

mod evict;
mod select;
mod wait;

/// What to drain and how: `--drain-timeout`, `--drain-grace-period`, `--drain-pod-selector`,
/// `--skip-wait-for-delete-timeout`.
#[derive(Debug, Clone, Default)]
pub struct DrainSettings {
    /// Grace period each evicted pod gets; `None`: the pod's own terminationGracePeriodSeconds.
    pub grace_period: Option<Duration>,
    /// Only pods matching this are drained; empty: all pods.
    pub pod_selector: LabelSelector,
    /// Limit for the whole drain; `None`: no limit.
    pub timeout: Option<Duration>,
    /// Pods whose deletion began longer ago than this are neither evicted nor waited for.
    pub skip_wait_for_delete_timeout: Option<Duration>,
}

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn of(pod: &Pod) -> PodRef {
        PodRef {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `ns/a, ns/b`, for messages.
fn pod_list(pods: &[PodRef]) -> String {
    if pods.is_empty() {
        return "none".to_owned();
    }
    pods.iter().map(PodRef::to_string).collect::<Vec<_>>().join(", ")
}

/// Why a pod on the node was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Controlled by a DaemonSet that exists.
    DaemonSet,
    /// A mirror pod of a static pod.
    Mirror,
    /// Its deletion began longer ago than `--skip-wait-for-delete-timeout`.
    DeletedLongAgo,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::DaemonSet => "DaemonSet-managed",
            SkipReason::Mirror => "mirror pod",
            SkipReason::DeletedLongAgo => "deletion began longer ago than --skip-wait-for-delete-timeout",
        })
    }
}

/// What a drain did, for the logs.
#[derive(Debug, Clone, Default)]
pub struct DrainSummary {
    /// Pods whose eviction was accepted, or which were gone when evicted.
    pub evicted: Vec<PodRef>,
    /// Pods left on the node, and why.
    pub skipped: Vec<(PodRef, SkipReason)>,
    /// Evicted pods still terminating that were no longer waited for
    /// (`--skip-wait-for-delete-timeout`).
    pub not_waited_for: Vec<PodRef>,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("cannot list the pods on node {node}")]
    ListPods {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read DaemonSet {namespace}/{daemon_set}, the controller of pod {pod}")]
    GetDaemonSet {
        pod: PodRef,
        namespace: String,
        daemon_set: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot evict pod {pod}")]
    Evict {
        pod: PodRef,
        #[source]
        source: kube::Error,
    },
    #[error("cannot watch the pods on node {node}")]
    Watch {
        node: String,
        #[source]
        source: watcher::Error,
    },
    #[error("the watch of the pods on node {node} ended")]
    WatchEnded { node: String },
    #[error("draining node {node} did not finish within {timeout:?}; pods remaining: {}", pod_list(.remaining))]
    Timeout {
        node: String,
        timeout: Duration,
        remaining: Vec<PodRef>,
    },
    #[error("an eviction task of the drain of node {node} failed")]
    Task {
        node: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl DrainError {
    /// A later drain may succeed without anything being reconfigured: it timed out (a budget may
    /// allow it later), or the API server was unavailable or overloaded.
    pub fn is_retryable(&self) -> bool {
        match self {
            DrainError::Timeout { .. } | DrainError::WatchEnded { .. } => true,
            DrainError::ListPods { source, .. }
            | DrainError::GetDaemonSet { source, .. }
            | DrainError::Evict { source, .. } => is_transient(source),
            DrainError::Watch { source, .. } => !kube_error::watch_is_permanent(source),
            DrainError::Task { .. } => false,
        }
    }
}

pub type Result<T, E = DrainError> = std::result::Result<T, E>;

fn deletion_second(pod: &Pod) -> Option<i64> {
    pod.metadata.deletion_timestamp.as_ref().map(|t| t.0.as_second())
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Drains nodes through the Eviction API. See the module documentation for the semantics.
#[derive(Clone)]
pub struct Drainer {
    client: Client,
    settings: DrainSettings,
}

impl Drainer {
    /// `client` must have kube's default retry turned off; see the module documentation.
    pub fn new(client: Client, settings: DrainSettings) -> Drainer {
        Drainer { client, settings }
    }

    /// Evicts the pods on `node` and waits until they are gone. The node should be cordoned
    /// first, or evicted pods may be scheduled right back onto it.
    pub async fn drain(&self, node: &str) -> Result<DrainSummary> {
        self.drain_by(node, self.settings.timeout.map(|t| Instant::now() + t))
            .await
    }

    /// [`Drainer::drain`], with the `--drain-timeout` deadline counted from an earlier moment
    /// (the cordon's first attempt), so that retrying the cordon does not extend it.
    pub async fn drain_by(&self, node: &str, deadline: Option<Instant>) -> Result<DrainSummary> {
        let started = Instant::now();
        let timed_out = |remaining: Vec<PodRef>| DrainError::Timeout {
            node: node.to_owned(),
            timeout: self.settings.timeout.unwrap_or_default(),
            remaining,
        };
        info!(node = %node, selector = %self.settings.pod_selector, "draining");

        let Some(planned) = until(deadline, self.plan_retrying(node)).await else {
            return Err(timed_out(Vec::new()));
        };
        let Plan { to_evict, skipped } = planned?;
        for (pod, reason) in &skipped {
            info!(node = %node, pod = %pod, reason = %reason, "not evicting");
        }

        let mut summary = DrainSummary {
            skipped,
            ..DrainSummary::default()
        };
        let mut pending = BTreeMap::new();
        let mut out_of_time = Vec::new();
        for (pod, uid, outcome) in self.evict_all(node, to_evict, deadline).await? {
            match outcome {
                Evicted::Accepted => {
                    pending.insert(pod.clone(), Pending { uid, deletion: None });
                    summary.evicted.push(pod);
                }
                Evicted::AlreadyGone => summary.evicted.push(pod),
                Evicted::OutOfTime => out_of_time.push(pod),
            }
        }
        if !out_of_time.is_empty() {
            out_of_time.extend(pending.into_keys());
            out_of_time.sort();
            return Err(timed_out(out_of_time));
        }

        match self.wait_for_deletion(node, pending, deadline).await? {
            Waited::AllGone { not_waited_for } => summary.not_waited_for = not_waited_for,
            Waited::OutOfTime { remaining } => return Err(timed_out(remaining)),
        }
        summary.elapsed = started.elapsed();
        info!(
            node = %node,
            evicted = summary.evicted.len(),
            skipped = summary.skipped.len(),
            not_waited_for = summary.not_waited_for.len(),
            elapsed_ms = summary.elapsed.as_millis(),
            "drained"
        );
        Ok(summary)
    }
}

/// Runs `fut` until `deadline`; `None` if the deadline came first.
async fn until<T>(deadline: Option<Instant>, fut: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(spec).expect("a valid Pod")
    }

    #[test]
    fn timeout_error_names_the_remaining_pods() {
        let e = DrainError::Timeout {
            node: "n1".into(),
            timeout: Duration::from_secs(8),
            remaining: vec![
                PodRef {
                    namespace: "ns".into(),
                    name: "a".into(),
                },
                PodRef {
                    namespace: "ns".into(),
                    name: "b".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "draining node n1 did not finish within 8s; pods remaining: ns/a, ns/b"
        );
        assert!(e.is_retryable());
    }
}
