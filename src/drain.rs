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
//!   [`EVICTION_RETRY`], as is one refused because the pod's namespace is being deleted; 404 means
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

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::BuildHasher;
use std::pin::pin;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Preconditions};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::core::Status;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::kube_error::{is_transient, retry_pause};
use crate::selector::LabelSelector;

/// Evictions in flight at once. Each one makes the API server check and update the pod's
/// PodDisruptionBudget; a handful in parallel drains a busy node in a few rounds without sending
/// hundreds of requests at the same budgets.
pub const MAX_PARALLEL_EVICTIONS: usize = 8;
/// Wait before retrying an eviction a PodDisruptionBudget refused: kubectl's interval. The budget
/// allows the next eviction only once a replacement pod is Ready, which takes seconds.
pub const EVICTION_RETRY: Duration = Duration::from_secs(5);
/// Spread of the retry wait, ±20%, so that nodes draining against the same budget do not retry in
/// lockstep.
const EVICTION_RETRY_JITTER: f64 = 0.2;

/// The annotation the kubelet puts on the API copy of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

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
    pub node: String,
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
    /// The drain ran out of time (`--drain-timeout`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, DrainError::Timeout { .. })
    }

    /// A later drain may succeed without anything being reconfigured: it timed out (a budget may
    /// allow it later), or the API server was unavailable or overloaded.
    pub fn is_retryable(&self) -> bool {
        match self {
            DrainError::Timeout { .. } | DrainError::WatchEnded { .. } => true,
            DrainError::ListPods { source, .. }
            | DrainError::GetDaemonSet { source, .. }
            | DrainError::Evict { source, .. } => is_transient(source),
            DrainError::Watch { source, .. } => !watch_error_is_permanent(source),
            DrainError::Task { .. } => false,
        }
    }
}

pub type Result<T, E = DrainError> = std::result::Result<T, E>;

/// What the filters decide for one pod, before any API call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Skip(SkipReason),
    /// Evict; the note says why that deserves a mention (kubectl's warnings under `--force` and
    /// `--delete-emptydir-data`).
    Evict(Option<&'static str>),
    /// Controlled by this DaemonSet: skip if it exists, evict if it is gone.
    AskDaemonSet(String),
}

/// kubectl drain's filters, in its order: deleted long ago, DaemonSet, mirror, local storage,
/// unreplicated. `now` is in Unix seconds.
fn classify(pod: &Pod, now: i64, skip_wait: Option<Duration>) -> Verdict {
    if let (Some(skip), Some(deleted)) = (skip_wait, deletion_second(pod))
        && now - deleted > duration_secs(skip)
    {
        return Verdict::Skip(SkipReason::DeletedLongAgo);
    }
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let controller = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true));
    if let Some(owner) = controller
        && owner.kind == "DaemonSet"
        && !finished
    {
        return Verdict::AskDaemonSet(owner.name.clone());
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
    {
        return Verdict::Skip(SkipReason::Mirror);
    }
    if finished {
        return Verdict::Evict(None);
    }
    // kubectl keeps only the last filter's warning; so does this.
    if controller.is_none() {
        return Verdict::Evict(Some("pod declares no controller"));
    }
    let has_empty_dir = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|v| v.empty_dir.is_some());
    if has_empty_dir {
        return Verdict::Evict(Some("deleting pod with local storage (emptyDir)"));
    }
    Verdict::Evict(None)
}

fn deletion_second(pod: &Pod) -> Option<i64> {
    pod.metadata.deletion_timestamp.as_ref().map(|t| t.0.as_second())
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The pods of a node, sorted by [`classify`] and the DaemonSet check.
#[derive(Debug, Default)]
struct Plan {
    to_evict: Vec<ToEvict>,
    skipped: Vec<(PodRef, SkipReason)>,
}

#[derive(Debug)]
struct ToEvict {
    pod: PodRef,
    uid: String,
    /// Why evicting it deserves a mention in the log.
    note: Option<&'static str>,
}

/// How one pod's eviction ended, short of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evicted {
    Accepted,
    AlreadyGone,
    OutOfTime,
}

/// A pod whose deletion is awaited.
#[derive(Debug, Clone)]
struct Pending {
    uid: String,
    /// When its deletion began, in Unix seconds, as last seen.
    deletion: Option<i64>,
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

    pub fn settings(&self) -> &DrainSettings {
        &self.settings
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
            node: node.to_owned(),
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

    /// [`Drainer::plan`], again after transient API errors (the caller bounds it by the deadline).
    async fn plan_retrying(&self, node: &str) -> Result<Plan> {
        let mut attempt = 1;
        loop {
            match self.plan(node).await {
                Err(e) if e.is_retryable() => {
                    warn!(node = %node, error = %crate::error_chain(&e), attempt, "listing the node's pods failed; retrying");
                    tokio::time::sleep(retry_pause(attempt)).await;
                    attempt += 1;
                }
                planned => return planned,
            }
        }
    }

    /// Lists the node's pods and sorts them into those to evict and those to leave.
    async fn plan(&self, node: &str) -> Result<Plan> {
        let mut params = ListParams::default().fields(&format!("spec.nodeName={node}"));
        if !self.settings.pod_selector.is_empty() {
            params = params.labels(&self.settings.pod_selector.to_string());
        }
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&params)
            .await
            .map_err(|source| DrainError::ListPods {
                node: node.to_owned(),
                source,
            })?;
        let now = unix_now();
        let mut plan = Plan::default();
        for pod in &pods.items {
            let pod_ref = PodRef::of(pod);
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            match classify(pod, now, self.settings.skip_wait_for_delete_timeout) {
                Verdict::Skip(reason) => plan.skipped.push((pod_ref, reason)),
                Verdict::Evict(note) => plan.to_evict.push(ToEvict {
                    pod: pod_ref,
                    uid,
                    note,
                }),
                Verdict::AskDaemonSet(daemon_set) => {
                    let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &pod_ref.namespace);
                    match api.get_opt(&daemon_set).await {
                        Ok(Some(_)) => plan.skipped.push((pod_ref, SkipReason::DaemonSet)),
                        Ok(None) => plan.to_evict.push(ToEvict {
                            pod: pod_ref,
                            uid,
                            note: Some("its DaemonSet is gone"),
                        }),
                        Err(source) => {
                            return Err(DrainError::GetDaemonSet {
                                namespace: pod_ref.namespace.clone(),
                                pod: pod_ref,
                                daemon_set,
                                source,
                            });
                        }
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Evicts the pods, at most [`MAX_PARALLEL_EVICTIONS`] at a time. The first error aborts the
    /// evictions still running and is returned.
    async fn evict_all(
        &self,
        node: &str,
        pods: Vec<ToEvict>,
        deadline: Option<Instant>,
    ) -> Result<Vec<(PodRef, String, Evicted)>> {
        let grace_seconds = self
            .settings
            .grace_period
            .map(|g| i64::try_from(g.as_secs()).unwrap_or(i64::MAX));
        let mut queue = pods.into_iter();
        let mut running = JoinSet::new();
        let mut done = Vec::new();
        let spawn = |running: &mut JoinSet<_>, ToEvict { pod, uid, note }: ToEvict| {
            if let Some(note) = note {
                info!(node = %node, pod = %pod, note, "evicting");
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
            let node = node.to_owned();
            running.spawn(async move {
                let outcome = evict(&api, &node, &pod, &uid, grace_seconds, deadline).await;
                outcome.map(|o| (pod, uid, o))
            });
        };
        for item in queue.by_ref().take(MAX_PARALLEL_EVICTIONS) {
            spawn(&mut running, item);
        }
        while let Some(joined) = running.join_next().await {
            let finished = joined.map_err(|source| DrainError::Task {
                node: node.to_owned(),
                source,
            })??;
            done.push(finished);
            if let Some(item) = queue.next() {
                spawn(&mut running, item);
            }
        }
        Ok(done)
    }

    /// Waits, with a watch of the node's pods, until every pending pod is gone or no longer
    /// waited for.
    async fn wait_for_deletion(
        &self,
        node: &str,
        mut pending: BTreeMap<PodRef, Pending>,
        deadline: Option<Instant>,
    ) -> Result<Waited> {
        let mut not_waited_for = Vec::new();
        if pending.is_empty() {
            return Ok(Waited::AllGone { not_waited_for });
        }
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut events =
            pin!(watcher::watcher(Api::<Pod>::all(self.client.clone()), config).default_backoff());
        // The pods seen in the listing under way, after an Init event.
        let mut listed: Option<BTreeSet<PodRef>> = None;
        let skip_wait = self.settings.skip_wait_for_delete_timeout.map(duration_secs);
        loop {
            if let Some(skip) = skip_wait {
                let now = unix_now();
                pending.retain(|pod, p| match p.deletion {
                    Some(deleted) if now - deleted > skip => {
                        info!(node = %node, pod = %pod, "deletion began more than --skip-wait-for-delete-timeout ago; not waiting for it");
                        not_waited_for.push(pod.clone());
                        false
                    }
                    _ => true,
                });
            }
            if pending.is_empty() {
                return Ok(Waited::AllGone { not_waited_for });
            }
            // The next moment a pending pod passes --skip-wait-for-delete-timeout.
            let skip_at = skip_wait.and_then(|skip| {
                let first = pending.values().filter_map(|p| p.deletion).min()?;
                let wait = (first + skip + 1 - unix_now()).max(0);
                Some(Instant::now() + Duration::from_secs(wait.unsigned_abs()))
            });
            tokio::select! {
                () = sleep_until(deadline) => {
                    return Ok(Waited::OutOfTime { remaining: pending.into_keys().collect() });
                }
                () = sleep_until(skip_at) => {}
                event = events.next() => match event {
                    None => return Err(DrainError::WatchEnded { node: node.to_owned() }),
                    Some(Err(e)) if watch_error_is_permanent(&e) => {
                        return Err(DrainError::Watch { node: node.to_owned(), source: e });
                    }
                    Some(Err(e)) => {
                        warn!(node = %node, error = %crate::error_chain(&e), "watch of the node's pods failed; retrying");
                    }
                    Some(Ok(event)) => observe(node, &mut pending, &mut listed, event),
                },
            }
        }
    }
}

enum Waited {
    AllGone { not_waited_for: Vec<PodRef> },
    OutOfTime { remaining: Vec<PodRef> },
}

/// Updates the pending pods from one watch event.
fn observe(
    node: &str,
    pending: &mut BTreeMap<PodRef, Pending>,
    listed: &mut Option<BTreeSet<PodRef>>,
    event: Event<Pod>,
) {
    let gone = |pod: &PodRef, pending: &mut BTreeMap<PodRef, Pending>| {
        if pending.remove(pod).is_some() {
            debug!(node = %node, pod = %pod, "pod deleted");
        }
    };
    match event {
        Event::Init => *listed = Some(BTreeSet::new()),
        Event::InitApply(pod) | Event::Apply(pod) => {
            let key = PodRef::of(&pod);
            let Some(p) = pending.get_mut(&key) else {
                return;
            };
            if pod.metadata.uid.as_deref() != Some(p.uid.as_str()) {
                // Another pod took the name: ours is gone.
                gone(&key, pending);
                return;
            }
            p.deletion = deletion_second(&pod);
            if let Some(listed) = listed {
                listed.insert(key);
            }
        }
        Event::Delete(pod) => gone(&PodRef::of(&pod), pending),
        Event::InitDone => {
            // A pending pod missing from a complete listing was deleted while not watched.
            if let Some(listed) = listed.take() {
                let missing: Vec<PodRef> = pending.keys().filter(|k| !listed.contains(*k)).cloned().collect();
                for pod in &missing {
                    gone(pod, pending);
                }
            }
        }
    }
}

/// Evicts one pod, retrying while a PodDisruptionBudget refuses, until accepted, gone, out of
/// time, or failed.
async fn evict(
    api: &Api<Pod>,
    node: &str,
    pod: &PodRef,
    uid: &str,
    grace_seconds: Option<i64>,
    deadline: Option<Instant>,
) -> Result<Evicted> {
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            ..ObjectMeta::default()
        },
        delete_options: Some(DeleteOptions {
            grace_period_seconds: grace_seconds,
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteOptions::default()
        }),
    };
    let failed = |source| DrainError::Evict {
        pod: pod.clone(),
        source,
    };
    loop {
        // `Api::evict` sends its delete options under a key the API server ignores, which would
        // drop the grace period; post the Eviction object itself.
        let posted = until(
            deadline,
            api.create_subresource::<_, Status>("eviction", &pod.name, &PostParams::default(), &eviction),
        )
        .await;
        let error = match posted {
            None => return Ok(Evicted::OutOfTime),
            Some(Ok(_)) => {
                info!(node = %node, pod = %pod, "evicted");
                return Ok(Evicted::Accepted);
            }
            Some(Err(e)) => e,
        };
        match &error {
            kube::Error::Api(status) => match status.code {
                404 => {
                    debug!(node = %node, pod = %pod, "already gone");
                    return Ok(Evicted::AlreadyGone);
                }
                // The UID precondition failed (the pod was replaced), or the API server lost a
                // race updating the budget: find out which.
                409 => match still_there(api, pod, uid, deadline).await {
                    Some(false) => return Ok(Evicted::AlreadyGone),
                    Some(true) => {
                        info!(node = %node, pod = %pod, reason = %status.message, "eviction conflicted; retrying");
                    }
                    None => return Ok(Evicted::OutOfTime),
                },
                429 => {
                    info!(node = %node, pod = %pod, reason = %status.message, "eviction refused for now; retrying");
                }
                403 if is_namespace_terminating(status) => {
                    // Evictions are refused in a namespace being deleted; the namespace's deletion
                    // takes the pod anyway.
                    debug!(node = %node, pod = %pod, "namespace terminating; retrying");
                }
                _ if is_transient(&error) => {
                    warn!(node = %node, pod = %pod, error = %crate::error_chain(&error), "eviction failed for now; retrying");
                }
                _ => return Err(failed(error)),
            },
            // The request never got an answer (reset, refused, timed out): it may or may not
            // have been carried out, and asking again is safe either way.
            e if is_transient(e) => {
                warn!(node = %node, pod = %pod, error = %crate::error_chain(e), "eviction request failed; retrying");
            }
            _ => return Err(failed(error)),
        }
        let retry_at = Instant::now() + jittered(EVICTION_RETRY);
        if deadline.is_some_and(|d| d <= retry_at) {
            sleep_until(deadline).await;
            return Ok(Evicted::OutOfTime);
        }
        tokio::time::sleep_until(retry_at).await;
        match still_there(api, pod, uid, deadline).await {
            Some(true) => {}
            Some(false) => return Ok(Evicted::AlreadyGone),
            None => return Ok(Evicted::OutOfTime),
        }
    }
}

/// Whether the pod with this UID still exists; `None` if the deadline passed first. Transient
/// API errors are retried; any other error reads as "still there", which the eviction that
/// follows settles.
async fn still_there(api: &Api<Pod>, pod: &PodRef, uid: &str, deadline: Option<Instant>) -> Option<bool> {
    let mut attempt = 1;
    loop {
        match until(deadline, api.get_opt(&pod.name)).await? {
            Ok(current) => {
                return Some(current.is_some_and(|p| p.metadata.uid.as_deref() == Some(uid)));
            }
            Err(e) if is_transient(&e) => {
                debug!(pod = %pod, error = %crate::error_chain(&e), attempt, "reading the pod failed; retrying");
                until(deadline, tokio::time::sleep(retry_pause(attempt))).await?;
                attempt += 1;
            }
            Err(e) => {
                debug!(pod = %pod, error = %crate::error_chain(&e), "reading the pod failed; evicting it again");
                return Some(true);
            }
        }
    }
}

fn is_namespace_terminating(status: &Status) -> bool {
    status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// A watch failure that retrying will not cure: the request itself is refused (no permission to
/// watch pods, a bad field selector).
fn watch_error_is_permanent(error: &watcher::Error) -> bool {
    let source = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(status) => {
            return matches!(status.code, 400 | 401 | 403 | 404);
        }
        watcher::Error::NoResourceVersion => return true,
    };
    matches!(source, kube::Error::Api(s) if matches!(s.code, 400 | 401 | 403 | 404))
}

/// `base` spread by ±[`EVICTION_RETRY_JITTER`].
fn jittered(base: Duration) -> Duration {
    // Each RandomState is seeded afresh, which is all the randomness a retry spread needs.
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    let unit = (random % 10_000) as f64 / 10_000.0;
    base.mul_f64(1.0 - EVICTION_RETRY_JITTER + 2.0 * EVICTION_RETRY_JITTER * unit)
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
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(spec).expect("a valid Pod")
    }

    fn owned_by(kind: &str, controller: bool) -> serde_json::Value {
        json!([{ "apiVersion": "apps/v1", "kind": kind, "name": "owner", "uid": "u", "controller": controller }])
    }

    const NOW: i64 = 1_700_000_000;

    fn at(second: i64) -> String {
        jiff::Timestamp::from_second(second)
            .expect("a valid time")
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    #[test]
    fn replicated_pods_are_evicted_without_a_note() {
        let p = pod(json!({ "metadata": { "name": "a", "ownerReferences": owned_by("ReplicaSet", true) } }));
        assert_eq!(classify(&p, NOW, None), Verdict::Evict(None));
    }

    #[test]
    fn pods_without_a_controller_are_evicted_as_with_force() {
        let bare = pod(json!({ "metadata": { "name": "a" } }));
        assert_eq!(
            classify(&bare, NOW, None),
            Verdict::Evict(Some("pod declares no controller"))
        );
        // An owner that is not the controller does not count.
        let owned =
            pod(json!({ "metadata": { "name": "a", "ownerReferences": owned_by("ReplicaSet", false) } }));
        assert!(matches!(classify(&owned, NOW, None), Verdict::Evict(Some(_))));
    }

    #[test]
    fn pods_with_empty_dir_are_evicted_as_with_delete_emptydir_data() {
        let p = pod(json!({
            "metadata": { "name": "a", "ownerReferences": owned_by("ReplicaSet", true) },
            "spec": { "containers": [], "volumes": [{ "name": "scratch", "emptyDir": {} }] },
        }));
        assert!(matches!(classify(&p, NOW, None), Verdict::Evict(Some(n)) if n.contains("emptyDir")));
    }

    #[test]
    fn daemon_set_pods_depend_on_their_daemon_set() {
        let p = pod(json!({ "metadata": { "name": "a", "ownerReferences": owned_by("DaemonSet", true) } }));
        assert_eq!(classify(&p, NOW, None), Verdict::AskDaemonSet("owner".into()));
    }

    #[test]
    fn finished_daemon_set_pods_are_evicted() {
        for phase in ["Succeeded", "Failed"] {
            let p = pod(json!({
                "metadata": { "name": "a", "ownerReferences": owned_by("DaemonSet", true) },
                "status": { "phase": phase },
            }));
            assert_eq!(classify(&p, NOW, None), Verdict::Evict(None), "{phase}");
        }
    }

    #[test]
    fn finished_pods_are_evicted_without_a_note() {
        let p = pod(json!({ "metadata": { "name": "a" }, "status": { "phase": "Succeeded" } }));
        assert_eq!(classify(&p, NOW, None), Verdict::Evict(None));
    }

    #[test]
    fn mirror_pods_are_skipped() {
        let p = pod(json!({
            "metadata": { "name": "a", "annotations": { MIRROR_POD_ANNOTATION: "hash" },
                          "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u", "controller": true }] },
        }));
        assert_eq!(classify(&p, NOW, None), Verdict::Skip(SkipReason::Mirror));
    }

    #[test]
    fn pods_deleted_longer_ago_than_the_skip_timeout_are_skipped() {
        let deleted = |ago: i64| {
            pod(
                json!({ "metadata": { "name": "a", "deletionTimestamp": at(NOW - ago),
                                      "ownerReferences": owned_by("ReplicaSet", true) } }),
            )
        };
        let skip = Some(Duration::from_secs(10));
        assert_eq!(
            classify(&deleted(11), NOW, skip),
            Verdict::Skip(SkipReason::DeletedLongAgo)
        );
        // kubectl compares whole seconds with `>`: exactly the timeout is still waited for.
        assert_eq!(classify(&deleted(10), NOW, skip), Verdict::Evict(None));
        assert_eq!(classify(&deleted(1000), NOW, None), Verdict::Evict(None));
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        for _ in 0..1000 {
            let d = jittered(EVICTION_RETRY);
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
                "{d:?}"
            );
        }
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
        assert!(e.is_timeout() && e.is_retryable());
    }

    fn pending_pod(uid: &str) -> Pending {
        Pending {
            uid: uid.into(),
            deletion: None,
        }
    }

    #[test]
    fn watch_events_resolve_pending_pods() {
        let key = |n: &str| PodRef {
            namespace: "ns".into(),
            name: n.into(),
        };
        let p = |n: &str, uid: &str| pod(json!({ "metadata": { "namespace": "ns", "name": n, "uid": uid } }));
        let mut pending: BTreeMap<PodRef, Pending> = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]
            .map(|(n, u)| (key(n), pending_pod(u)))
            .into();
        let mut listed = None;

        observe("n", &mut pending, &mut listed, Event::Delete(p("a", "1")));
        assert!(!pending.contains_key(&key("a")), "deleted");
        observe("n", &mut pending, &mut listed, Event::Apply(p("b", "other")));
        assert!(
            !pending.contains_key(&key("b")),
            "replaced by a pod with another UID"
        );

        // A relisting that no longer contains d: it was deleted while the watch was down.
        observe("n", &mut pending, &mut listed, Event::Init);
        observe("n", &mut pending, &mut listed, Event::InitApply(p("c", "3")));
        assert!(
            pending.contains_key(&key("d")),
            "not gone before the listing is complete"
        );
        observe("n", &mut pending, &mut listed, Event::InitDone);
        assert_eq!(pending.keys().cloned().collect::<Vec<_>>(), vec![key("c")]);
    }
}
