//! Operations on the agent's own Node: cordon and uncordon, the `--pre-reboot-node-labels` and
//! `--post-reboot-node-labels`, the `--annotate-nodes` annotations, the
//! `--prefer-no-schedule-taint` taint, the boot ID, and the status (a condition of ours).
//!
//! Other writers change the same Node at the same time: the kubelet's heartbeats, autoscalers,
//! other operators' labels and taints, an administrator's `kubectl`. No write here can undo theirs:
//! - labels and annotations are JSON merge patches that name only our keys, and a merge patch of a
//!   map key touches that key alone;
//! - `spec.unschedulable` is a merge patch that carries the resourceVersion it was decided on, so
//!   the API server refuses it with 409 Conflict if the Node changed in between, and we re-read;
//! - `spec.taints` is a list, which a merge patch would replace whole. It is changed by a JSON
//!   Patch that first tests the list we read (or, when the Node had no taints, its
//!   resourceVersion) and then adds or removes our one entry. A failed test (422) or conflict (409)
//!   re-reads and tries again, at most [`MAX_ATTEMPTS`] times.
//!
//! What upstream kured 1.23 does, and this module keeps:
//! - pre-reboot labels are set before cordoning; post-reboot labels are set after uncordoning and
//!   only set: keys that appear only in the pre-reboot labels stay on the Node;
//! - with `--annotate-nodes`, [`REBOOT_IN_PROGRESS`] and [`MOST_RECENT_REBOOT_NEEDED`] are both set
//!   to the same RFC 3339 time (UTC, whole seconds) when a reboot is about to be attempted and the
//!   first one is not yet there; after the reboot only [`REBOOT_IN_PROGRESS`] is removed, so
//!   [`MOST_RECENT_REBOOT_NEEDED`] keeps the time of the last reboot;
//! - the taint has effect PreferNoSchedule, no value, and the key given by the flag.
//!
//! An [`OwnNode`] keeps the Node as its last request returned it — each read and each write
//! (a patch returns the Node as written) — and forgets it when a write fails, since a write whose
//! answer was lost may have been made: [`OwnNode::known`] is then at least as new as everything
//! this `OwnNode` wrote or read, or nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tracing::{debug, info};

pub use self::taint::prefer_no_schedule_taint;
use crate::kube_error::{is_lost_race, is_transient};

mod taint;
mod watch;

pub use watch::NodeWatch;

/// A label to set on the node, from `--pre-reboot-node-labels` / `--post-reboot-node-labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLabel {
    pub key: String,
    pub value: String,
}

/// Set, with the time the reboot was decided, while a reboot of the node is under way.
pub const REBOOT_IN_PROGRESS: &str = "weave.works/kured-reboot-in-progress";
/// The time a reboot of the node was last decided; stays after the reboot.
pub const MOST_RECENT_REBOOT_NEEDED: &str = "weave.works/kured-most-recent-reboot-needed";
/// Set by kured in the same write that cordons the node, with the time, and removed in the same
/// write that uncordons it: the durable record that the cordon is kured's own. It outlives the
/// lock entry (an expired TTL, a re-created DaemonSet), so a node kured cordoned is always
/// returned to service, and a node someone else cordoned never is.
pub const CORDONED_BY_KURED: &str = "kured.dev/cordoned";
/// Where the kernel gives the ID of the current boot; the kubelet reports the same value as the
/// Node's `status.nodeInfo.bootID`, but only once it has started and posted its status.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// The effect of the `--prefer-no-schedule-taint` taint.
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";

/// Contention on one Node settles within a few rounds; a Node rewritten faster than that by others
/// is better left to the caller's next attempt than hammered.
pub const MAX_ATTEMPTS: u32 = 10;
/// Pause before re-reading after a lost race, times the attempt number: long enough for the
/// competing writer to finish, short against anything the agent waits for.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot read node {node}")]
    Get {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot cordon node {node}")]
    Cordon {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot uncordon node {node}")]
    Uncordon {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot set labels {labels} on node {node}")]
    Label {
        node: String,
        labels: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot {action} annotations of node {node}")]
    Annotate {
        node: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot {action} taint {key}:{PREFER_NO_SCHEDULE} on node {node}")]
    Taint {
        node: String,
        key: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write the status of node {node}")]
    Status {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot build the patch for node {node}")]
    BuildPatch {
        node: String,
        #[source]
        source: serde_json::Error,
    },
}

impl NodeError {
    /// A later attempt may succeed without anything being reconfigured: the API server was
    /// unavailable or overloaded, or other writers kept winning the race for the Node.
    pub fn is_retryable(&self) -> bool {
        self.api_error()
            .is_some_and(|e| is_transient(e) || is_lost_race(e))
    }

    fn api_error(&self) -> Option<&kube::Error> {
        match self {
            NodeError::Get { source, .. }
            | NodeError::Cordon { source, .. }
            | NodeError::Uncordon { source, .. }
            | NodeError::Label { source, .. }
            | NodeError::Annotate { source, .. }
            | NodeError::Taint { source, .. }
            | NodeError::Status { source, .. } => Some(source),
            NodeError::BuildPatch { .. } => None,
        }
    }
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// What [`OwnNode::cordon`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cordon {
    /// The node is cordoned by kured: it was schedulable and is now cordoned, or kured had
    /// cordoned it before (it carries [`CORDONED_BY_KURED`]).
    Cordoned,
    /// The node was already unschedulable, cordoned by someone else; nothing was written.
    AlreadyCordoned,
}

/// Whether the node carries kured's record of its own cordon ([`CORDONED_BY_KURED`]).
pub fn cordoned_by_kured(node: &Node) -> bool {
    has_annotation(node, CORDONED_BY_KURED)
}

/// The boot ID the kernel reports ([`BOOT_ID_PATH`]), the same value the kubelet reports once it
/// has posted the Node's status after a boot.
pub fn local_boot_id() -> std::io::Result<String> {
    boot_id_from(std::path::Path::new(BOOT_ID_PATH))
}

fn boot_id_from(path: &std::path::Path) -> std::io::Result<String> {
    let id = std::fs::read_to_string(path)?.trim().to_owned();
    if id.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(id)
}

/// Whether the node is cordoned.
pub fn is_unschedulable(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// The node's boot ID as its kubelet reports it (`status.nodeInfo.bootID`); `None` when not
/// reported. A new value means the node has rebooted.
pub fn boot_id(node: &Node) -> Option<&str> {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.as_str())
        .filter(|id| !id.is_empty())
}

/// The annotation value upstream writes: RFC 3339 in UTC, whole seconds (`2006-01-02T15:04:05Z`).
fn annotation_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Annotations of ours to set (a string) or remove (`null`) along with another write.
pub type Annotations = serde_json::Map<String, Value>;

/// The agent's own Node. Clones share what is kept of it ([`OwnNode::known`]); requests through
/// clones must not overlap, or an older answer could be kept over a newer one.
#[derive(Clone)]
pub struct OwnNode {
    api: Api<Node>,
    name: String,
    /// The Node as the last request returned it, and when; `None` before the first, and after a
    /// failed write.
    kept: Arc<Mutex<Option<(Node, tokio::time::Instant)>>>,
}

impl OwnNode {
    pub fn new(client: Client, name: impl Into<String>) -> OwnNode {
        OwnNode {
            api: Api::all(client),
            name: name.into(),
            kept: Arc::new(Mutex::new(None)),
        }
    }

    pub async fn get(&self) -> Result<Node> {
        self.read().await.map_err(|source| NodeError::Get {
            node: self.name.clone(),
            source,
        })
    }

    /// The Node as last read or written, if that was at most `max_age` ago: at least as new as
    /// every Node read or written here.
    pub fn known(&self, max_age: Duration) -> Option<Node> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.as_ref()
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(node, _)| node.clone())
    }

    /// The resourceVersion of the Node as last read or written (at any age); `None` when none is
    /// kept (see [`OwnNode::known`]).
    pub fn known_version(&self) -> Option<String> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.as_ref()?.0.metadata.resource_version.clone()
    }

    /// Keeps `node`, learnt otherwise than by a request here, in place of the one kept. Only for
    /// a Node known to be at least as new as that one: the watch's, when
    /// [`NodeWatch::current_since`] vouches for it.
    pub fn keep(&self, node: &Node) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((node.clone(), tokio::time::Instant::now()));
    }

    /// Keeps what a request returned: the Node, or, after a failed write, nothing.
    fn kept_from(&self, answer: &Result<Node, kube::Error>) {
        match answer {
            Ok(node) => self.keep(node),
            Err(_) => *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = None,
        }
    }

    /// Reads the Node, and keeps it.
    async fn read(&self) -> Result<Node, kube::Error> {
        let read = self.api.get(&self.name).await;
        if let Ok(node) = &read {
            self.keep(node);
        }
        read
    }

    /// Applies `patch` to the Node (its status with `status`), and keeps the Node as written;
    /// forgets the one kept if the write failed.
    async fn write<P: serde::Serialize + std::fmt::Debug>(
        &self,
        patch: &Patch<P>,
        status: bool,
    ) -> Result<Node, kube::Error> {
        let params = PatchParams::default();
        let written = if status {
            self.api.patch_status(&self.name, &params, patch).await
        } else {
            self.api.patch(&self.name, &params, patch).await
        };
        self.kept_from(&written);
        written
    }

    /// The node's current boot ID; see [`boot_id`].
    pub async fn boot_id(&self) -> Result<Option<String>> {
        Ok(boot_id(&self.get().await?).map(str::to_owned))
    }

    /// Cordons the node and records, in the same write, that kured did ([`CORDONED_BY_KURED`]),
    /// unless someone else had cordoned it already.
    pub async fn cordon(&self) -> Result<Cordon> {
        Ok(self.cordon_with(None, &Annotations::new()).await?.0)
    }

    /// [`OwnNode::cordon`], deciding its first attempt on `known` (a Node read a moment ago)
    /// instead of a new read, and setting `annotations` in the same write. The write is
    /// conditional on the resourceVersion it was decided on either way. The second value tells
    /// whether the write was made (and so the annotations set).
    pub async fn cordon_with(
        &self,
        known: Option<Node>,
        annotations: &Annotations,
    ) -> Result<(Cordon, bool)> {
        let failed = |source| NodeError::Cordon {
            node: self.name.clone(),
            source,
        };
        let at = annotation_time(Timestamp::now());
        let written = self
            .set_unschedulable(known, |node| {
                if is_unschedulable(node) {
                    return None;
                }
                let mut ours = annotations.clone();
                ours.insert(CORDONED_BY_KURED.to_owned(), Value::String(at.clone()));
                Some(json!({
                    "metadata": { "annotations": ours },
                    "spec": { "unschedulable": true },
                }))
            })
            .await
            .map_err(failed)?;
        match written {
            Written::Patched => {
                info!(node = %self.name, "cordoned");
                Ok((Cordon::Cordoned, true))
            }
            Written::Unchanged(node) if cordoned_by_kured(&node) => {
                info!(node = %self.name, "already cordoned by kured");
                Ok((Cordon::Cordoned, false))
            }
            Written::Unchanged(_) => {
                info!(node = %self.name, "already cordoned by someone else; it stays cordoned after the reboot");
                Ok((Cordon::AlreadyCordoned, false))
            }
        }
    }

    /// Marks the node schedulable and removes kured's record of its cordon, in one write; returns
    /// false if it was schedulable without the record already.
    pub async fn uncordon(&self) -> Result<bool> {
        self.uncordon_with(None, &Annotations::new()).await
    }

    /// [`OwnNode::uncordon`], deciding its first attempt on `known` (a Node read a moment ago)
    /// and setting `annotations` in the same write; returns whether the write was made.
    pub async fn uncordon_with(&self, known: Option<Node>, annotations: &Annotations) -> Result<bool> {
        let written = self
            .set_unschedulable(known, |node| {
                if !is_unschedulable(node) && !cordoned_by_kured(node) {
                    return None;
                }
                let mut ours = annotations.clone();
                ours.insert(CORDONED_BY_KURED.to_owned(), Value::Null);
                Some(json!({
                    "metadata": { "annotations": ours },
                    "spec": { "unschedulable": false },
                }))
            })
            .await
            .map_err(|source| NodeError::Uncordon {
                node: self.name.clone(),
                source,
            })?;
        match written {
            Written::Patched => {
                info!(node = %self.name, "uncordoned");
                Ok(true)
            }
            Written::Unchanged(_) => {
                debug!(node = %self.name, "already schedulable");
                Ok(false)
            }
        }
    }

    /// Applies the merge patch `change` builds from the current Node (`known`, else read now), if
    /// it builds one. The patch carries the resourceVersion it was built on, so a concurrent change
    /// makes it fail and it is built again from a fresh read.
    async fn set_unschedulable(
        &self,
        mut known: Option<Node>,
        change: impl Fn(&Node) -> Option<Value>,
    ) -> Result<Written, kube::Error> {
        let mut attempt = 1;
        loop {
            let node = match known.take() {
                Some(node) => node,
                None => self.read().await?,
            };
            let Some(mut patch) = change(&node) else {
                return Ok(Written::Unchanged(Box::new(node)));
            };
            patch["metadata"]["resourceVersion"] = json!(node.metadata.resource_version);
            match self.write(&Patch::Merge(&patch), false).await {
                Ok(_) => return Ok(Written::Patched),
                Err(e) if is_lost_race(&e) && attempt < MAX_ATTEMPTS => {
                    debug!(node = %self.name, attempt, "node changed while setting unschedulable; re-reading");
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets these labels on the node, leaving every other label as it is.
    pub async fn set_labels(&self, labels: &[NodeLabel]) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let map: serde_json::Map<String, Value> = labels
            .iter()
            .map(|l| (l.key.clone(), Value::String(l.value.clone())))
            .collect();
        let shown = labels
            .iter()
            .map(|l| format!("{}={}", l.key, l.value))
            .collect::<Vec<_>>()
            .join(",");
        let patch = json!({ "metadata": { "labels": map } });
        self.write(&Patch::Merge(&patch), false)
            .await
            .map_err(|source| NodeError::Label {
                node: self.name.clone(),
                labels: shown.clone(),
                source,
            })?;
        info!(node = %self.name, labels = %shown, "labels set");
        Ok(())
    }

    /// Merge-patches `annotations` (a value of `null` removes one), leaving the others as they are;
    /// returns the Node as written.
    async fn patch_annotations(&self, annotations: serde_json::Value, action: &'static str) -> Result<Node> {
        let patch = json!({ "metadata": { "annotations": annotations } });
        self.write(&Patch::Merge(&patch), false)
            .await
            .map_err(|source| NodeError::Annotate {
                node: self.name.clone(),
                action,
                source,
            })
    }

    /// Sets one annotation of ours, leaving every other annotation as it is; returns the Node as
    /// written.
    pub async fn set_annotation(&self, key: &str, value: &str) -> Result<Node> {
        self.patch_annotations(json!({ key: value }), "set").await
    }

    /// Removes one annotation, leaving every other as it is; nothing changes when it is absent.
    /// Returns the Node as written.
    pub async fn remove_annotation(&self, key: &str) -> Result<Node> {
        self.patch_annotations(json!({ key: null }), "remove").await
    }

    /// Strategic-merge-patches `patch` into the Node's status (subresource `nodes/status`): a
    /// condition there merges by `type`, leaving the others as they are. Returns the Node as
    /// written.
    pub async fn patch_status(&self, patch: &Value) -> Result<Node> {
        self.write(&Patch::Strategic(patch), true)
            .await
            .map_err(|source| NodeError::Status {
                node: self.name.clone(),
                source,
            })
    }

    /// Records that a reboot is starting, as upstream does: if [`REBOOT_IN_PROGRESS`] is absent,
    /// sets it and [`MOST_RECENT_REBOOT_NEEDED`] to `now`. Returns false, writing nothing, if a
    /// reboot was already recorded as in progress (its start time is kept).
    pub async fn annotate_reboot_started(&self, now: Timestamp) -> Result<bool> {
        let node = self.get().await?;
        if has_annotation(&node, REBOOT_IN_PROGRESS) {
            return Ok(false);
        }
        let at = annotation_time(now);
        self.patch_annotations(
            json!({ REBOOT_IN_PROGRESS: at, MOST_RECENT_REBOOT_NEEDED: at }),
            "set",
        )
        .await?;
        info!(node = %self.name, at = %at, "annotated reboot in progress");
        Ok(true)
    }

    /// Removes [`REBOOT_IN_PROGRESS`] after the reboot; returns false if it was not there.
    /// [`MOST_RECENT_REBOOT_NEEDED`] stays.
    pub async fn annotate_reboot_finished(&self) -> Result<bool> {
        self.annotate_reboot_finished_on(None).await
    }

    /// [`OwnNode::annotate_reboot_finished`], looking for the annotation on `known` (a Node read
    /// a moment ago) instead of reading the Node again. Only kured sets or removes it.
    pub async fn annotate_reboot_finished_on(&self, known: Option<&Node>) -> Result<bool> {
        let read;
        let node = match known {
            Some(node) => node,
            None => {
                read = self.get().await?;
                &read
            }
        };
        if !has_annotation(node, REBOOT_IN_PROGRESS) {
            return Ok(false);
        }
        self.patch_annotations(json!({ REBOOT_IN_PROGRESS: null }), "remove")
            .await?;
        info!(node = %self.name, "removed reboot-in-progress annotation");
        Ok(true)
    }
}

/// What a conditional write of the Node did.
enum Written {
    /// Nothing needed writing; the Node as read.
    Unchanged(Box<Node>),
    /// The patch was applied.
    Patched,
}

fn has_annotation(node: &Node, key: &str) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_boot_id_is_read_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("boot_id");
        std::fs::write(&path, "3f1c0d6e-4b1a-4c55-9c0e-0d5f2a1b7e11\n").expect("writing");
        assert_eq!(
            boot_id_from(&path).expect("a boot ID"),
            "3f1c0d6e-4b1a-4c55-9c0e-0d5f2a1b7e11"
        );
        std::fs::write(&path, "\n").expect("writing");
        let empty = boot_id_from(&path).expect_err("an empty file is no boot ID");
        assert!(empty.to_string().contains("is empty"), "{empty}");
        assert!(boot_id_from(&dir.path().join("missing")).is_err());
        // On Linux the kernel always has one.
        assert!(!local_boot_id().expect("the kernel's boot ID").is_empty());
    }

    #[test]
    fn annotation_time_is_rfc3339_utc_whole_seconds() {
        let at: Timestamp = "2024-03-10T22:15:07.123456789+01:00"
            .parse()
            .expect("a timestamp");
        assert_eq!(annotation_time(at), "2024-03-10T21:15:07Z");
    }
}
