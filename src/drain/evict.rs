//! Evicting the selected pods: a few at a time, each retried while a PodDisruptionBudget refuses,
//! with the pod's UID as a precondition so that a retry never evicts a replacement.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Preconditions};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use kube::core::Status;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::select::ToEvict;
use super::{DrainError, Drainer, PodRef, Result, sleep_until, until};
use crate::kube_error::{self, ApiAnswer, is_transient, retry_pause};

/// Evictions in flight at once. Each one makes the API server check and update the pod's
/// PodDisruptionBudget; a handful in parallel drains a busy node in a few rounds without sending
/// hundreds of requests at the same budgets.
const MAX_PARALLEL_EVICTIONS: usize = 8;
/// Wait before retrying an eviction a PodDisruptionBudget refused: kubectl's interval. The budget
/// allows the next eviction only once a replacement pod is Ready, which takes seconds.
const EVICTION_RETRY: Duration = Duration::from_secs(5);
/// Spread of the retry wait, ±20%, so that nodes draining against the same budget do not retry in
/// lockstep.
const EVICTION_RETRY_JITTER: f64 = 0.2;

/// How one pod's eviction ended, short of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evicted {
    Accepted,
    AlreadyGone,
    OutOfTime,
}

impl Drainer {
    /// Evicts the pods, at most [`MAX_PARALLEL_EVICTIONS`] at a time. The first error aborts the
    /// evictions still running and is returned.
    pub(super) async fn evict_all(
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
        match error.status() {
            Some(status) if kube_error::is_not_found(status) => {
                debug!(node = %node, pod = %pod, "already gone");
                return Ok(Evicted::AlreadyGone);
            }
            // The UID precondition failed (the pod was replaced), or the API server lost a race
            // updating the budget: find out which.
            Some(status) if kube_error::is_conflict(status) => {
                match still_there(api, pod, uid, deadline).await {
                    Some(false) => return Ok(Evicted::AlreadyGone),
                    Some(true) => {
                        info!(node = %node, pod = %pod, reason = %status.message, "eviction conflicted; retrying");
                    }
                    None => return Ok(Evicted::OutOfTime),
                }
            }
            Some(status) if kube_error::is_too_many_requests(status) => {
                info!(node = %node, pod = %pod, reason = %status.message, "eviction refused for now; retrying");
            }
            Some(status) if kube_error::is_forbidden(status) && is_namespace_terminating(status) => {
                // Evictions are refused in a namespace being deleted; the namespace's deletion
                // takes the pod anyway.
                debug!(node = %node, pod = %pod, "namespace terminating; retrying");
            }
            Some(_) if is_transient(&error) => {
                warn!(node = %node, pod = %pod, error = %crate::error_chain(&error), "eviction failed for now; retrying");
            }
            // The request never got an answer (reset, refused, timed out): it may or may not
            // have been carried out, and asking again is safe either way.
            None if is_transient(&error) => {
                warn!(node = %node, pod = %pod, error = %crate::error_chain(&error), "eviction request failed; retrying");
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

/// `base` spread by ±[`EVICTION_RETRY_JITTER`].
fn jittered(base: Duration) -> Duration {
    // Each RandomState is seeded afresh, which is all the randomness a retry spread needs.
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    let unit = (random % 10_000) as f64 / 10_000.0;
    base.mul_f64(1.0 - EVICTION_RETRY_JITTER + 2.0 * EVICTION_RETRY_JITTER * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
