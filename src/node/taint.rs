//! The `--prefer-no-schedule-taint` taint. `spec.taints` is a list, which a merge patch would
//! replace whole: it is changed by a JSON Patch that first tests the list as read (or, when the
//! Node had no taints, its resourceVersion) and then adds or removes our one entry, so that no
//! other writer's taint is ever lost.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::Patch;
use serde_json::{Value, json};
use tracing::{debug, info};

use super::{MAX_ATTEMPTS, NodeError, OwnNode, PREFER_NO_SCHEDULE, RETRY_PAUSE, Result};
use crate::kube_error::is_lost_race;

/// The node's taint with `key` and effect PreferNoSchedule, if it has it.
pub fn prefer_no_schedule_taint<'a>(node: &'a Node, key: &str) -> Option<&'a Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .and_then(|ts| ts.iter().find(|t| t.key == key && t.effect == PREFER_NO_SCHEDULE))
}

impl OwnNode {
    /// Adds the taint `key:PreferNoSchedule`; returns false if the node already had it.
    pub async fn add_prefer_no_schedule_taint(&self, key: &str) -> Result<bool> {
        let changed = self.change_taint(key, true).await?;
        if changed {
            info!(node = %self.name, taint = %key, "PreferNoSchedule taint added");
        }
        Ok(changed)
    }

    /// Removes the taint `key:PreferNoSchedule`; returns false if the node did not have it.
    pub async fn remove_prefer_no_schedule_taint(&self, key: &str) -> Result<bool> {
        let changed = self.change_taint(key, false).await?;
        if changed {
            info!(node = %self.name, taint = %key, "PreferNoSchedule taint removed");
        }
        Ok(changed)
    }

    async fn change_taint(&self, key: &str, present: bool) -> Result<bool> {
        let action = if present { "add" } else { "remove" };
        let failed = |source| NodeError::Taint {
            node: self.name.clone(),
            key: key.to_owned(),
            action,
            source,
        };
        let mut attempt = 1;
        loop {
            let node = self.get().await?;
            let Some(ops) = taint_patch(&node, key, present) else {
                return Ok(false);
            };
            let patch: Patch<()> =
                Patch::Json(
                    serde_json::from_value(ops).map_err(|source| NodeError::BuildPatch {
                        node: self.name.clone(),
                        source,
                    })?,
                );
            match self.write(&patch, false).await {
                Ok(_) => return Ok(true),
                Err(e) if is_lost_race(&e) && attempt < MAX_ATTEMPTS => {
                    debug!(node = %self.name, taint = %key, attempt, "taints changed meanwhile; re-reading");
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(failed(e)),
            }
        }
    }
}

/// The JSON Patch operations that add or remove our taint on `node` as read, guarded by a `test`
/// of exactly what was read; `None` if the node is already as wanted.
fn taint_patch(node: &Node, key: &str, present: bool) -> Option<Value> {
    let taints: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let position = taints
        .iter()
        .position(|t| t.key == key && t.effect == PREFER_NO_SCHEDULE);
    let ours = json!({ "key": key, "effect": PREFER_NO_SCHEDULE });
    match (present, position) {
        (true, Some(_)) | (false, None) => None,
        // No list to test: guard with the resourceVersion instead.
        (true, None) if taints.is_empty() => Some(json!([
            { "op": "test", "path": "/metadata/resourceVersion", "value": node.metadata.resource_version },
            { "op": "add", "path": "/spec/taints", "value": [ours] },
        ])),
        (true, None) => Some(json!([
            { "op": "test", "path": "/spec/taints", "value": taints },
            { "op": "add", "path": "/spec/taints/-", "value": ours },
        ])),
        (false, Some(i)) => Some(json!([
            { "op": "test", "path": "/spec/taints", "value": taints },
            { "op": "remove", "path": format!("/spec/taints/{i}") },
        ])),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    use super::*;

    fn node(taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: (!taints.is_empty()).then(|| {
                    taints
                        .iter()
                        .map(|(k, e)| Taint {
                            key: (*k).into(),
                            effect: (*e).into(),
                            ..Taint::default()
                        })
                        .collect()
                }),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn adding_to_a_node_without_taints_tests_the_resource_version() {
        let ops = taint_patch(&node(&[]), "kured", true).expect("a patch");
        assert_eq!(
            ops,
            json!([
                { "op": "test", "path": "/metadata/resourceVersion", "value": "42" },
                { "op": "add", "path": "/spec/taints", "value": [{ "key": "kured", "effect": "PreferNoSchedule" }] },
            ])
        );
    }

    #[test]
    fn adding_to_existing_taints_tests_the_list_and_appends() {
        let ops = taint_patch(&node(&[("other", "NoSchedule")]), "kured", true).expect("a patch");
        assert_eq!(
            ops,
            json!([
                { "op": "test", "path": "/spec/taints", "value": [{ "key": "other", "effect": "NoSchedule" }] },
                { "op": "add", "path": "/spec/taints/-", "value": { "key": "kured", "effect": "PreferNoSchedule" } },
            ])
        );
    }

    #[test]
    fn removing_tests_the_list_and_removes_only_our_entry() {
        let n = node(&[
            ("kured", "NoSchedule"),
            ("a", "NoExecute"),
            ("kured", "PreferNoSchedule"),
        ]);
        let ops = taint_patch(&n, "kured", false).expect("a patch");
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["value"].as_array().map(Vec::len), Some(3));
        assert_eq!(ops[1], json!({ "op": "remove", "path": "/spec/taints/2" }));
    }

    #[test]
    fn nothing_to_do_when_already_as_wanted() {
        assert!(taint_patch(&node(&[("kured", "PreferNoSchedule")]), "kured", true).is_none());
        assert!(taint_patch(&node(&[("kured", "NoSchedule")]), "kured", false).is_none());
        assert!(taint_patch(&node(&[]), "kured", false).is_none());
    }
}
