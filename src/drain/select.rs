//! Which pods of the node to evict and which to leave, with kubectl drain's filters.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use tracing::warn;

use super::{DrainError, Drainer, PodRef, Result, SkipReason, deletion_second, duration_secs, unix_now};
use crate::kube_error::retry_pause;

/// The annotation the kubelet puts on the API copy of a static pod.
const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

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

/// The pods of a node, sorted by [`classify`] and the DaemonSet check.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) to_evict: Vec<ToEvict>,
    pub(super) skipped: Vec<(PodRef, SkipReason)>,
}

#[derive(Debug)]
pub(super) struct ToEvict {
    pub(super) pod: PodRef,
    pub(super) uid: String,
    /// Why evicting it deserves a mention in the log.
    pub(super) note: Option<&'static str>,
}

impl Drainer {
    /// [`Drainer::plan`], again after transient API errors (the caller bounds it by the deadline).
    pub(super) async fn plan_retrying(&self, node: &str) -> Result<Plan> {
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
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::drain::tests::pod;

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
}
