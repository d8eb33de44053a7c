//! `kured status`: a cluster-wide view for operators — one row per node with its reboot need,
//! the agent's phase (published in [`STATE_ANNOTATION`](crate::agent_state::STATE_ANNOTATION)), lock
//! holders, cordon and last reboot, and the operator's controls ([`crate::control`]): paused
//! nodes, requested reboots, halted nodes and a paused fleet.
//! Needs only `list` on nodes and `get` on the lock object (the agents' DaemonSet or Lease).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use crate::agent_state::{AgentState, Phase, RebootLoop};
use crate::controls::{HALTED_ANNOTATION, PAUSE_ANNOTATION, REBOOT_NOW_ANNOTATION, Switch};
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
    /// The node's `kured.dev/pause` when it pauses the node: `"true"`, or a value that is not
    /// `"true"`/`"false"` (which pauses it too).
    pub paused: Option<String>,
    /// The node's `kured.dev/reboot-now` when set to anything but `"false"`; only `"true"` asks for
    /// a reboot.
    pub reboot_now: Option<String>,
    /// The node's `kured.dev/halted`: why its post-reboot health gate stopped the rollout.
    pub halted: Option<String>,
    /// The reboot-loop guard's count, while it holds the node back.
    pub reboot_loop: Option<RebootLoop>,
}

/// The lock object's `kured.dev/pause`, when it pauses every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetPause {
    /// `<Kind> <namespace>/<name>`.
    pub object: String,
    /// `"true"`, or a value that is not `"true"`/`"false"` (which pauses too).
    pub value: String,
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
    /// Set when the lock object's `kured.dev/pause` keeps every node from taking the lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_paused: Option<FleetPause>,
    pub nodes: Vec<NodeStatus>,
}

/// The annotations of `lock`'s object; none when the object is absent.
async fn read_annotations(
    client: &Client,
    lock: &LockObject,
) -> Result<BTreeMap<String, String>, kube::Error> {
    Ok(lock
        .api(client.clone())
        .get_opt(&lock.name)
        .await?
        .and_then(|object| object.metadata.annotations)
        .unwrap_or_default())
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
    let annotations = read_annotations(client, lock)
        .await
        .map_err(|source| StatusError::ReadLock {
            object: lock.describe(),
            source,
        })?;
    let other = lock.other();
    let other_annotations = match read_annotations(client, &other).await {
        Ok(a) => a,
        Err(e) if kube_error::is_refused(&e) => BTreeMap::new(),
        Err(source) => {
            return Err(StatusError::ReadLock {
                object: other.describe(),
                source,
            });
        }
    };
    let locks = [
        (lock, annotations.get(&lock.annotation).map(String::as_str)),
        (
            &other,
            other_annotations.get(&other.annotation).map(String::as_str),
        ),
    ];
    let pause = annotations.get(PAUSE_ANNOTATION).map(String::as_str);
    Ok(assemble(&list.items, &locks, pause, now))
}

/// The status of `nodes` with the lock objects' annotations `locks` (the lock's own object first)
/// and that object's `kured.dev/pause`, at `now`.
fn assemble(
    nodes: &[Node],
    locks: &[(&LockObject, Option<&str>)],
    pause: Option<&str>,
    now: Timestamp,
) -> ClusterStatus {
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
            let annotation = |key: &str| {
                node.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .map(String::as_str)
            };
            let set = |key: &str| {
                let value = annotation(key);
                (Switch::read(value) != Switch::Off).then(|| value.unwrap_or_default().to_owned())
            };
            NodeStatus {
                paused: set(PAUSE_ANNOTATION),
                reboot_now: set(REBOOT_NOW_ANNOTATION),
                halted: annotation(HALTED_ANNOTATION).map(str::to_owned),
                reboot_loop: state.as_ref().and_then(|s| s.reboot_loop.clone()),
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
                    Some(AgentState {
                        phase: Phase::Rebooting,
                        detail,
                        reboot_requested: Some(at),
                        ..
                    }) => format!("{detail} (asked for at {at})"),
                    Some(s) => s.detail.clone(),
                    None => String::new(),
                },
                last_reboot: state.and_then(|s| s.last_reboot),
                name,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let fleet_paused = match (Switch::read(pause).paused(), locks.first()) {
        (true, Some((lock, _))) => Some(FleetPause {
            object: lock.describe(),
            value: pause.unwrap_or_default().to_owned(),
        }),
        _ => None,
    };
    ClusterStatus {
        lock_holders,
        lock_error,
        fleet_paused,
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
    for n in &status.nodes {
        if let Some(reason) = &n.halted {
            let _ = writeln!(
                out,
                "rollout halted by {node}: {reason} — resume: kubectl annotate node {node} {HALTED_ANNOTATION}-",
                node = n.name
            );
        }
    }
    if let Some(pause) = &status.fleet_paused {
        let _ = writeln!(
            out,
            "fleet paused: {} — resume: kured resume",
            annotation_text(PAUSE_ANNOTATION, &pause.value, &pause.object)
        );
    }
    let needed = status
        .nodes
        .iter()
        .filter(|n| n.reboot_required == Some(true))
        .count();
    let paused = match status.nodes.iter().filter(|n| n.paused.is_some()).count() {
        0 => String::new(),
        count => format!(", {count} paused"),
    };
    let _ = writeln!(
        out,
        "Nodes: {} ({needed} need a reboot{paused})\n",
        status.nodes.len()
    );
    let header = [
        "NODE",
        "REBOOT",
        "PHASE",
        "MARKS",
        "LOCK",
        "CORDONED",
        "READY",
        "LAST REBOOT",
        "DETAIL",
    ];
    let rows: Vec<[String; 9]> = status
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
                marks(n),
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

/// `key=value on object`, the value quoted, and said to pause, when it is not `"true"`.
fn annotation_text(key: &str, value: &str, object: &str) -> String {
    if value == "true" {
        format!("{key}=true on {object}")
    } else {
        format!("{key}={value:?} on {object} (not true or false: read as paused)")
    }
}

/// The MARKS cell: the operator's controls on the node and the reboot-loop guard; `-` for none.
fn marks(n: &NodeStatus) -> String {
    let mut marks: Vec<String> = Vec::new();
    if n.halted.is_some() {
        marks.push("HALTED".into());
    }
    match n.paused.as_deref() {
        None => {}
        Some("true") => marks.push("paused".into()),
        Some(value) => marks.push(format!("paused ({PAUSE_ANNOTATION}={value:?})")),
    }
    match n.reboot_now.as_deref() {
        None => {}
        Some("true") => marks.push("reboot requested".into()),
        Some(value) => marks.push(format!("{REBOOT_NOW_ANNOTATION}={value:?} ignored")),
    }
    if let Some(l) = &n.reboot_loop {
        marks.push(format!("reboot loop {} until {}", l.count, l.until));
    }
    if marks.is_empty() {
        "-".into()
    } else {
        marks.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_state::STATE_ANNOTATION;

    fn node(name: &str, state: Option<&str>) -> Node {
        annotated(name, state, &[])
    }

    /// Node `name` with its agent's `state` and the `annotations`.
    fn annotated(name: &str, state: Option<&str>, annotations: &[(&str, &str)]) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some(name.to_owned());
        let mut all: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if let Some(state) = state {
            all.insert(STATE_ANNOTATION.to_owned(), state.to_owned());
        }
        if !all.is_empty() {
            node.metadata.annotations = Some(all);
        }
        node
    }

    fn daemonset_lock() -> LockObject {
        LockObject {
            backend: crate::lock::Backend::DaemonSet,
            namespace: "kube-system".into(),
            name: "kured".into(),
            annotation: "weave.works/kured-node-lock".into(),
        }
    }

    /// A row with nothing set, to fill in.
    fn row() -> NodeStatus {
        NodeStatus {
            name: String::new(),
            reboot_required: None,
            phase: None,
            detail: String::new(),
            lock_holder: false,
            cordoned: false,
            ready: true,
            last_reboot: None,
            paused: None,
            reboot_now: None,
            halted: None,
            reboot_loop: None,
        }
    }

    #[test]
    fn waiting_nodes_are_told_who_holds_the_lock_from_the_lock_itself() {
        let now: Timestamp = "2026-11-20T03:00:00Z".parse().unwrap();
        let lock = daemonset_lock();
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
        let status = assemble(&nodes, &[(&lock, Some(annotation))], None, now);
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
        let free = assemble(&nodes[1..2], &[(&lock, None)], None, now);
        assert_eq!(free.nodes[0].phase.as_deref(), Some("waiting-for-lock"));
        assert_eq!(free.nodes[0].detail, "", "no \"held by\" without holders");
    }

    #[test]
    fn table_shows_each_node_and_the_lock() {
        let status = ClusterStatus {
            lock_holders: vec!["n2".into()],
            lock_error: None,
            fleet_paused: None,
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
                    ..row()
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
                    ..row()
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
                    ..row()
                },
            ],
        };
        insta::assert_snapshot!(render_text(&status), @r"
        Lock: n2
        Nodes: 3 (2 need a reboot)

        NODE  REBOOT  PHASE             MARKS  LOCK  CORDONED  READY  LAST REBOOT           DETAIL
        n1    needed  waiting-for-lock  -      -     -         yes    -                     held by n2
        n2    needed  draining          -      held  yes       yes    2026-11-20T03:00:00Z
        n3    ?       (no agent)        -      -     -         no     -
        ");
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["lockHolders"][0], "n2");
        assert_eq!(json["nodes"][1]["phase"], "draining");
        assert_eq!(json["nodes"][2]["rebootRequired"], serde_json::Value::Null);
    }

    #[test]
    fn a_rebooting_node_says_when_its_reboot_was_asked_for() {
        let now: Timestamp = "2026-11-20T03:00:00Z".parse().unwrap();
        let nodes = [
            node(
                "n1",
                Some(
                    r#"{"rebootRequired":true,"phase":"rebooting","detail":"command: systemctl reboot","rebootRequested":"2026-11-20T02:55:00Z"}"#,
                ),
            ),
            // Published by an agent that did not record the time.
            node(
                "n2",
                Some(r#"{"rebootRequired":true,"phase":"rebooting","detail":"command: systemctl reboot"}"#),
            ),
        ];
        let status = assemble(&nodes, &[], None, now);
        let details: Vec<&str> = status.nodes.iter().map(|n| n.detail.as_str()).collect();
        assert_eq!(
            details,
            [
                "command: systemctl reboot (asked for at 2026-11-20T02:55:00Z)",
                "command: systemctl reboot"
            ]
        );
    }

    #[test]
    fn controls_halts_and_the_new_phases_are_shown_with_their_detail() {
        let now: Timestamp = "2026-11-20T03:00:00Z".parse().unwrap();
        let lock = daemonset_lock();
        let record =
            r#"{"nodeID":"n2","metadata":{"unschedulable":false},"created":"2026-11-20T02:50:00Z","TTL":0}"#;
        let gate = "pod kube-system/x not Ready; 20s of 60s settle left";
        let nodes = [
            annotated(
                "n1",
                Some(r#"{"rebootRequired":false,"phase":"idle"}"#),
                &[(PAUSE_ANNOTATION, "true")],
            ),
            annotated(
                "n2",
                Some(&format!(
                    r#"{{"rebootRequired":false,"phase":"verifying","detail":"{gate}"}}"#
                )),
                &[(REBOOT_NOW_ANNOTATION, "true")],
            ),
            annotated(
                "n3",
                Some(r#"{"rebootRequired":false,"phase":"halted","detail":"node not Ready after 10m"}"#),
                &[(HALTED_ANNOTATION, "node not Ready after 10m")],
            ),
            annotated(
                "n4",
                Some(
                    r#"{"rebootRequired":true,"phase":"paused","detail":"node paused (kured.dev/pause=maybe)"}"#,
                ),
                &[(PAUSE_ANNOTATION, "maybe"), (REBOOT_NOW_ANNOTATION, "yes")],
            ),
            annotated(
                "n5",
                Some(
                    r#"{"rebootRequired":true,"phase":"backing-off","detail":"reboot loop (3 in a row): next reboot not before 2026-11-20T05:00:00Z","rebootLoop":{"count":3,"reboot":"2026-11-20T02:00:00Z","until":"2026-11-20T05:00:00Z"}}"#,
                ),
                &[(PAUSE_ANNOTATION, "false"), (REBOOT_NOW_ANNOTATION, "false")],
            ),
        ];
        let status = assemble(&nodes, &[(&lock, Some(record))], Some("true"), now);
        assert_eq!(
            status.fleet_paused,
            Some(FleetPause {
                object: "DaemonSet kube-system/kured".into(),
                value: "true".into()
            })
        );
        let rows: Vec<_> = status
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.phase.as_deref(),
                    n.paused.as_deref(),
                    n.reboot_now.as_deref(),
                    n.halted.as_deref(),
                    n.reboot_loop.as_ref().map(|l| l.count),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("n1", Some("idle"), Some("true"), None, None, None),
                ("n2", Some("verifying"), None, Some("true"), None, None),
                (
                    "n3",
                    Some("halted"),
                    None,
                    None,
                    Some("node not Ready after 10m"),
                    None
                ),
                ("n4", Some("paused"), Some("maybe"), Some("yes"), None, None),
                ("n5", Some("backing-off"), None, None, None, Some(3)),
            ]
        );
        assert_eq!(status.nodes[1].detail, gate);
        assert!(status.nodes[1].lock_holder);

        insta::assert_snapshot!(render_text(&status), @r#"
        Lock: n2
        rollout halted by n3: node not Ready after 10m — resume: kubectl annotate node n3 kured.dev/halted-
        fleet paused: kured.dev/pause=true on DaemonSet kube-system/kured — resume: kured resume
        Nodes: 5 (2 need a reboot, 2 paused)

        NODE  REBOOT  PHASE        MARKS                                                                 LOCK  CORDONED  READY  LAST REBOOT  DETAIL
        n1    -       idle         paused                                                                -     -         no     -
        n2    -       verifying    reboot requested                                                      held  -         no     -            pod kube-system/x not Ready; 20s of 60s settle left
        n3    -       halted       HALTED                                                                -     -         no     -            node not Ready after 10m
        n4    needed  paused       paused (kured.dev/pause="maybe"), kured.dev/reboot-now="yes" ignored  -     -         no     -            node paused (kured.dev/pause=maybe)
        n5    needed  backing-off  reboot loop 3 until 2026-11-20T05:00:00Z                              -     -         no     -            reboot loop (3 in a row): next reboot not before 2026-11-20T05:00:00Z
        "#);

        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["fleetPaused"],
            serde_json::json!({ "object": "DaemonSet kube-system/kured", "value": "true" })
        );
        assert_eq!(json["nodes"][0]["paused"], "true");
        assert_eq!(json["nodes"][1]["rebootNow"], "true");
        assert_eq!(json["nodes"][2]["halted"], "node not Ready after 10m");
        assert_eq!(
            json["nodes"][4]["rebootLoop"],
            serde_json::json!({ "count": 3, "reboot": "2026-11-20T02:00:00Z", "until": "2026-11-20T05:00:00Z" })
        );
        assert_eq!(json["nodes"][4]["paused"], serde_json::Value::Null);

        // A pause of the fleet that is neither true nor false pauses it, and says so.
        let unreadable = assemble(&nodes[..1], &[(&lock, None)], Some("soon"), now);
        assert_eq!(
            unreadable.fleet_paused.as_ref().map(|p| p.value.as_str()),
            Some("soon")
        );
        assert!(
            render_text(&unreadable).contains(
                "fleet paused: kured.dev/pause=\"soon\" on DaemonSet kube-system/kured (not true or false: read as paused) — resume: kured resume\n"
            ),
            "{}",
            render_text(&unreadable)
        );
        for off in [None, Some("false")] {
            let running = assemble(&nodes[..1], &[(&lock, None)], off, now);
            assert_eq!(running.fleet_paused, None, "{off:?}");
            assert!(!render_text(&running).contains("fleet paused"));
            assert!(
                serde_json::to_value(&running)
                    .unwrap()
                    .get("fleetPaused")
                    .is_none()
            );
        }
    }
}
