//! The scope's kwok Nodes, which `kwok` keeps Ready as a kubelet would: creating and deleting
//! them, and reading and changing what an agent and an operator read and change on them.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;

use super::scope::{SCOPE_LABEL, Scope};
use super::wait::{eventually, wait_for};

impl Scope {
    /// Creates `count` kwok-managed Nodes labelled with this scope and waits until each is Ready.
    pub async fn create_nodes(&self, count: usize) -> Vec<String> {
        let nodes = self.nodes();
        let mut names = Vec::with_capacity(count);
        for i in 0..count {
            let name = self.node_name(i);
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name,
                    "annotations": { "kwok.x-k8s.io/node": "fake" },
                    "labels": {
                        SCOPE_LABEL: self.id,
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "type": "kwok",
                    },
                },
            }))
            .expect("a valid Node");
            nodes
                .create(&PostParams::default(), &node)
                .await
                .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
            names.push(name);
        }
        for name in &names {
            wait_for(
                &format!("node {name} to become Ready"),
                Duration::from_secs(60),
                await_condition(nodes.clone(), name, is_node_ready()),
            )
            .await;
        }
        names
    }

    /// Node `name` as the API server has it now.
    pub async fn node(&self, name: &str) -> Node {
        self.nodes()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading node {name}: {e}"))
    }

    /// Deletes Node `name` and waits until the API server answers 404 for it.
    pub async fn delete_node(&self, name: &str) {
        let nodes = self.nodes();
        nodes
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting node {name}: {e}"));
        eventually(
            &format!("node {name} to be gone"),
            Duration::from_secs(30),
            || {
                let nodes = nodes.clone();
                async move {
                    match nodes.get(name).await {
                        Err(kube::Error::Api(s)) if s.code == 404 => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await;
    }

    /// Cordons (`true`) or uncordons node `node` as an operator would, with `kubectl cordon`.
    pub async fn set_unschedulable(&self, node: &str, unschedulable: bool) {
        let patch = serde_json::json!({ "spec": { "unschedulable": unschedulable } });
        self.merge_into_node(node, patch, &format!("setting unschedulable={unschedulable}"))
            .await;
    }

    /// Sets annotations on node `node` (a `null` value removes one), as the admin, as an operator
    /// with `kubectl annotate` (or an agent) would.
    pub async fn annotate_node(&self, node: &str, annotations: serde_json::Value) {
        let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
        self.merge_into_node(node, patch, "annotating").await;
    }

    /// Merges `patch` into node `node` as the admin; `what` says what it does, for a failure.
    async fn merge_into_node(&self, node: &str, patch: serde_json::Value, what: &str) {
        self.nodes()
            .patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap_or_else(|e| panic!("{what} on {node}: {e}"));
    }

    /// Annotation `key` of node `node` as the API server has it now; `None` when absent.
    pub async fn node_annotation(&self, node: &str, key: &str) -> Option<String> {
        self.node(node).await.metadata.annotations?.get(key).cloned()
    }

    /// Sets label `key` to `value` on node `node` as an operator would, with `kubectl label`.
    pub async fn label_node(&self, node: &str, key: &str, value: &str) {
        let patch = serde_json::json!({ "metadata": { "labels": { key: value } } });
        self.merge_into_node(node, patch, &format!("labelling with {key}={value}"))
            .await;
    }

    /// The boot ID node-init gives a simulated node when it starts, once it is there.
    pub async fn first_boot_id(&self, name: &str) -> String {
        let nodes = self.nodes();
        eventually("node-init to set a boot ID", Duration::from_secs(30), || {
            let nodes = nodes.clone();
            async move {
                nodes
                    .get(name)
                    .await
                    .ok()
                    .map(|n| boot_id(&n))
                    .filter(|b| !b.is_empty())
            }
        })
        .await
    }
}

/// A node condition: the node reports Ready=True.
pub fn is_node_ready() -> impl kube::runtime::wait::Condition<Node> {
    |node: Option<&Node>| {
        node.and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// The node's boot ID as its kubelet (here: node-init) reports it.
pub fn boot_id(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .unwrap_or_default()
}

/// Whether the node is cordoned.
pub fn unschedulable(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// Whether the node carries the taint `key` with effect PreferNoSchedule (`--prefer-no-schedule-taint`).
pub fn has_prefer_no_schedule_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key && t.effect == "PreferNoSchedule"))
}
