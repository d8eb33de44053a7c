//! `kured status`: a cluster-wide view for operators — one row per node with its reboot need,
//! the agent's phase (published in [`STATE_ANNOTATION`](crate::agent_state::STATE_ANNOTATION)), lock
//! holders, cordon and last reboot.
//! Needs only `list` on nodes and `get` on the lock object (the agents' DaemonSet or Lease).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use crate::agent_state::{AgentState, Phase};
use crate::kube_error;
use crate::lock::LockObject;
use crate::lock::record::LockRecord;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("listing nodes")]
    ListNodes(#[source] kube::Error),
    #[error("reading the lock on {object}")]
    ReadLock {
        object: String,
        #[source]
        source: kube::Error,
    },
}

/// One node's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    /// `None`: no agent state published, or the sentinel could not be checked.
    pub reboot_required: Option<bool>,
    /// The agent's phase; `None` when no agent has published one.
    pub phase: Option<String>,
    pub detail: String,
    pub lock_holder: bool,
    pub cordoned: bool,
    pub ready: bool,
    pub last_reboot: Option<String>,
}

/// The cluster's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Lock holders, including any that are not nodes (e.g. an operator's `manual` lock).
    pub lock_holders: Vec<String>,
    /// Why the lock could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_error: Option<String>,
    pub nodes: Vec<NodeStatus>,
}

/// The lock annotation of `lock`'s object; `None` when the object or the annotation is absent.
async fn read_annotation(client: &Client, lock: &LockObject) -> Result<Option<String>, kube::Error> {
    Ok(lock
        .api(client.clone())
        .get_opt(&lock.name)
        .await?
        .and_then(|object| object.metadata.annotations)
        .and_then(|mut a| a.remove(&lock.annotation)))
}

/// Reads nodes and the lock once. The holders of the other backend's object count too: during a
/// switch of backends (see the README) both carry holders. That object is read only where it
/// may be: one this user may not read, or that does not exist, holds nobody.
pub async fn gather(
    client: &Client,
    lock: &LockObject,
    now: Timestamp,
) -> Result<ClusterStatus, StatusError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(StatusError::ListNodes)?;
    let annotation = read_annotation(client, lock)
        .await
        .map_err(|source| StatusError::ReadLock {
            object: lock.describe(),
            source,
        })?;
    let other = lock.other();
    let other_annotation = match read_annotation(client, &other).await {
        Ok(a) => a,
        Err(e) if kube_error::is_refused(&e) => None,
        Err(source) => {
            return Err(StatusError::ReadLock {
                object: other.describe(),
                source,
            });
        }
    };
    let locks = [
        (lock, annotation.as_deref()),
        (&other, other_annotation.as_deref()),
    ];
    Ok(assemble(&list.items, &locks, now))
}

/// The status of `nodes` with the lock objects' annotations `locks`, at `now`.
fn assemble(nodes: &[Node], locks: &[(&LockObject, Option<&str>)], now: Timestamp) -> ClusterStatus {
    let mut lock_holders: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for (lock, annotation) in locks {
        match annotation.map(LockRecord::parse) {
            None => {}
            Some(Ok(record)) => {
                for entry in record.holders(now) {
                    if !lock_holders.contains(&entry.node_id) {
                        lock_holders.push(entry.node_id.clone());
                    }
                }
            }
            Some(Err(e)) => errors.push(format!(
                "{} annotation {}: {}",
                lock.describe(),
                lock.annotation,
                crate::error_chain(&e)
            )),
        }
    }
    let lock_error = (!errors.is_empty()).then(|| errors.join("; "));
    let holders: BTreeSet<&str> = lock_holders.iter().map(String::as_str).collect();
    let mut rows: Vec<NodeStatus> = nodes
        .iter()
        .map(|node| {
            let name = node.metadata.name.clone().unwrap_or_default();
            let state = AgentState::published_on(node);
            NodeStatus {
                lock_holder: holders.contains(name.as_str()),
                cordoned: crate::node::is_unschedulable(node),
                ready: node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
                reboot_required: state.as_ref().and_then(|s| s.reboot_required),
                phase: state.as_ref().map(|s| s.phase.to_string()),
                detail: match state.as_ref() {
                    // Agents waiting for the lock do not publish who holds it; the lock says
                    // (nobody, for the moment between a release and the next round).
                    Some(s)
                        if s.phase == Phase::WaitingForLock
                            && s.detail.is_empty()
                            && !lock_holders.is_empty() =>
                    {
                        format!("held by {}", lock_holders.join(","))
                    }
                    Some(s) => s.detail.clone(),
                    None => String::new(),
                },
                last_reboot: state.and_then(|s| s.last_reboot),
                name,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    ClusterStatus {
        lock_holders,
        lock_error,
        nodes: rows,
    }
}

/// A table for people.
pub fn render_text(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let holders = if status.lock_holders.is_empty() {
        "free".to_owned()
    } else {
        status.lock_holders.join(", ")
    };
    let _ = writeln!(out, "Lock: {holders}");
    if let Some(e) = &status.lock_error {
        let _ = writeln!(out, "Lock error: {e}");
    }
    let needed = status
        .nodes
        .iter()
        .filter(|n| n.reboot_required == Some(true))
        .count();
    let _ = writeln!(out, "Nodes: {} ({} need a reboot)\n", status.nodes.len(), needed);
    let header = [
        "NODE",
        "REBOOT",
        "PHASE",
        "LOCK",
        "CORDONED",
        "READY",
        "LAST REBOOT",
        "DETAIL",
    ];
    let rows: Vec<[String; 8]> = status
        .nodes
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                match n.reboot_required {
                    Some(true) => "needed".into(),
                    Some(false) => "-".into(),
                    None => "?".into(),
                },
                n.phase.clone().unwrap_or_else(|| "(no agent)".into()),
                if n.lock_holder { "held".into() } else { "-".into() },
                if n.cordoned { "yes".into() } else { "-".into() },
                if n.ready { "yes".into() } else { "no".into() },
                n.last_reboot.clone().unwrap_or_else(|| "-".into()),
                n.detail.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_state::STATE_ANNOTATION;

    fn node(name: &str, state: Option<&str>) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.to_owned());
        if let Some(state) = state {
            node.metadata.annotations = Some([(STATE_ANNOTATION.to_owned(), state.to_owned())].into());
        }
        node
    }

    #[test]
    fn waiting_nodes_are_told_who_holds_the_lock_from_the_lock_itself() {
        let now: Timestamp = "2026-11-20T03:00:00Z".parse().unwrap();
        let lock = LockObject {
            backend: crate::lock::Backend::DaemonSet,
            namespace: "kube-system".into(),
            name: "kured".into(),
            annotation: "weave.works/kured-node-lock".into(),
        };
        let annotation = r#"{"maxOwners":1,"locks":[{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-20T02:59:00Z","TTL":0}]}"#;
        let nodes = [
            node("n1", Some(r#"{"rebootRequired":true,"phase":"draining"}"#)),
            node(
                "n2",
                Some(r#"{"rebootRequired":true,"phase":"waiting-for-lock"}"#),
            ),
            node(
                "n3",
                Some(r#"{"rebootRequired":true,"phase":"blocked","detail":"blocking-pods: ns/p"}"#),
            ),
            node("n4", None),
        ];
        let status = assemble(&nodes, &[(&lock, Some(annotation))], now);
        assert_eq!(status.lock_holders, ["n1"]);
        assert_eq!(status.lock_error, None);
        let rows: Vec<(&str, bool, Option<&str>, &str)> = status
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.lock_holder,
                    n.phase.as_deref(),
                    n.detail.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("n1", true, Some("draining"), ""),
                ("n2", false, Some("waiting-for-lock"), "held by n1"),
                ("n3", false, Some("blocked"), "blocking-pods: ns/p"),
                ("n4", false, None, ""),
            ]
        );

        // Between a release and the waiting agent's next round, the lock is free.
        let free = assemble(&nodes[1..2], &[(&lock, None)], now);
        assert_eq!(free.nodes[0].phase.as_deref(), Some("waiting-for-lock"));
        assert_eq!(free.nodes[0].detail, "", "no \"held by\" without holders");
    }

    #[test]
    fn table_shows_each_node_and_the_lock() {
        let status = ClusterStatus {
            lock_holders: vec!["n2".into()],
            lock_error: None,
            nodes: vec![
                NodeStatus {
                    name: "n1".into(),
                    reboot_required: Some(true),
                    phase: Some("waiting-for-lock".into()),
                    detail: "held by n2".into(),
                    lock_holder: false,
                    cordoned: false,
                    ready: true,
                    last_reboot: None,
                },
                NodeStatus {
                    name: "n2".into(),
                    reboot_required: Some(true),
                    phase: Some("draining".into()),
                    detail: String::new(),
                    lock_holder: true,
                    cordoned: true,
                    ready: true,
                    last_reboot: Some("2026-11-20T03:00:00Z".into()),
                },
                NodeStatus {
                    name: "n3".into(),
                    reboot_required: None,
                    phase: None,
                    detail: String::new(),
                    lock_holder: false,
                    cordoned: false,
                    ready: false,
                    last_reboot: None,
                },
            ],
        };
        insta::assert_snapshot!(render_text(&status), @r"
        Lock: n2
        Nodes: 3 (2 need a reboot)

        NODE  REBOOT  PHASE             LOCK  CORDONED  READY  LAST REBOOT           DETAIL
        n1    needed  waiting-for-lock  -     -         yes    -                     held by n2
        n2    needed  draining          held  yes       yes    2026-11-20T03:00:00Z
        n3    ?       (no agent)        -     -         no     -
        ");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["lockHolders"][0], "n2");
        assert_eq!(json["nodes"][1]["phase"], "draining");
        assert_eq!(json["nodes"][2]["rebootRequired"], serde_json::Value::Null);
    }
}
