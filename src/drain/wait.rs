//! Waiting for the evicted pods to be gone, with one watch of the node's pods.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::pin;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{DrainError, Drainer, PodRef, Result, deletion_second, duration_secs, sleep_until, unix_now};
use crate::kube_error;

/// A pod whose deletion is awaited.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) uid: String,
    /// When its deletion began, in Unix seconds, as last seen.
    pub(super) deletion: Option<i64>,
}

impl Drainer {
    /// Waits, with a watch of the node's pods, until every pending pod is gone or no longer
    /// waited for.
    pub(super) async fn wait_for_deletion(
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
                    Some(Err(e)) if kube_error::watch_is_permanent(&e) => {
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

/// How the wait for deletion ended.
pub(super) enum Waited {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::drain::tests::pod;

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
