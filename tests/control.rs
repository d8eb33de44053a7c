//! `kured pause|resume|reboot` and `kured status` as an operator runs them: the built binary
//! against real Nodes, DaemonSets and Leases of the test cluster, with the admin's kubeconfig and
//! with a ServiceAccount's that may change none of them. Needs `scripts/testcluster up`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use kured::lock::Backend;
use serde_json::json;
use support::cli::{Ran, kured, run};
use support::cluster::kubeconfig_path;
use support::objects::{create, scope_with_lock};
use support::observer::{LOCK_ANNOTATION, lock_object_annotations};
use support::rbac::{bind_role, service_account_kubeconfig};
use support::scope::Scope;

const PAUSE: &str = "kured.dev/pause";
const REBOOT_NOW: &str = "kured.dev/reboot-now";
const HALTED: &str = "kured.dev/halted";

/// `kured ARGS` with `kubeconfig` and the scope's namespace as the lock's.
fn kured_in(scope: &Scope, kubeconfig: &Path, args: &[&str]) -> Ran {
    run(kured()
        .args(args)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--ds-namespace={}", scope.namespace)))
}

/// `kured ARGS` as the admin; it must succeed, and its output is one line, returned.
fn admin_ok(scope: &Scope, args: &[&str]) -> String {
    let out = kured_in(scope, &kubeconfig_path(), args);
    assert_eq!(out.code, Some(0), "kured {args:?}: {out}");
    assert_eq!(out.stdout.lines().count(), 1, "kured {args:?}: {out}");
    out.stdout.trim_end().to_owned()
}

/// `kured ARGS` with `kubeconfig`; it must fail with exit 1 and one line on stderr, returned.
fn fails(scope: &Scope, kubeconfig: &Path, args: &[&str]) -> String {
    let out = kured_in(scope, kubeconfig, args);
    assert_eq!(out.code, Some(1), "kured {args:?}: {out}");
    assert_eq!(out.stderr.lines().count(), 1, "kured {args:?}: {out}");
    assert_eq!(out.stdout, "", "kured {args:?}: {out}");
    out.last_error_line().to_owned()
}

async fn node_annotations(scope: &Scope, node: &str) -> BTreeMap<String, String> {
    scope.node(node).await.metadata.annotations.unwrap_or_default()
}

async fn daemonset_annotations(scope: &Scope) -> BTreeMap<String, String> {
    lock_object_annotations(scope, Backend::DaemonSet).await
}

async fn lease(scope: &Scope) -> Option<Lease> {
    scope
        .api::<Lease>()
        .get_opt("kured")
        .await
        .expect("reading Lease kured")
}

#[tokio::test]
async fn a_node_is_paused_resumed_and_asked_to_reboot() {
    let scope = scope_with_lock("ctl-node").await;
    let node = scope.create_nodes(1).await.remove(0);
    scope.annotate_node(&node, json!({ "team": "keep-me" })).await;

    assert_eq!(
        admin_ok(&scope, &["pause", &node]),
        format!("node {node} paused (kured.dev/pause=true)")
    );
    assert_eq!(
        node_annotations(&scope, &node)
            .await
            .get(PAUSE)
            .map(String::as_str),
        Some("true")
    );

    assert_eq!(
        admin_ok(&scope, &["reboot", &node]),
        format!("node {node} reboot requested (kured.dev/reboot-now=true)")
    );
    // An agent halted the rollout on it.
    scope
        .annotate_node(&node, json!({ HALTED: "node not Ready after 10m" }))
        .await;
    let annotations = node_annotations(&scope, &node).await;
    assert_eq!(annotations.get(REBOOT_NOW).map(String::as_str), Some("true"));
    assert_eq!(annotations.get(PAUSE).map(String::as_str), Some("true"));

    assert_eq!(
        admin_ok(&scope, &["resume", &node]),
        format!("node {node} resumed (kured.dev/pause and kured.dev/halted removed)")
    );
    let annotations = node_annotations(&scope, &node).await;
    assert_eq!(annotations.get(PAUSE), None, "{annotations:?}");
    assert_eq!(annotations.get(HALTED), None, "{annotations:?}");
    assert_eq!(
        annotations.get(REBOOT_NOW).map(String::as_str),
        Some("true"),
        "resume leaves a requested reboot: {annotations:?}"
    );
    assert_eq!(
        annotations.get("team").map(String::as_str),
        Some("keep-me"),
        "other annotations stay: {annotations:?}"
    );
    // Resuming what is not paused changes nothing and says the same.
    admin_ok(&scope, &["resume", &node]);

    let missing = format!("{node}-missing");
    for command in ["pause", "resume", "reboot"] {
        assert_eq!(
            fails(&scope, &kubeconfig_path(), &[command, &missing]),
            format!("kured: node {missing} not found"),
            "kured {command}"
        );
    }
}

#[tokio::test]
async fn the_fleet_is_paused_on_the_daemonset() {
    let scope = scope_with_lock("ctl-ds").await;
    let held =
        r#"{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-20T02:59:00Z","TTL":0}"#;
    support::observer::write_lock(&scope, Some(held)).await;
    let object = format!("DaemonSet {}/kured", scope.namespace);

    assert_eq!(
        admin_ok(&scope, &["pause"]),
        format!("fleet paused (kured.dev/pause=true on {object})")
    );
    let annotations = daemonset_annotations(&scope).await;
    assert_eq!(annotations.get(PAUSE).map(String::as_str), Some("true"));
    assert_eq!(
        annotations.get(LOCK_ANNOTATION).map(String::as_str),
        Some(held),
        "the lock is untouched"
    );

    assert_eq!(
        admin_ok(&scope, &["resume"]),
        format!("fleet resumed (kured.dev/pause removed from {object})")
    );
    let annotations = daemonset_annotations(&scope).await;
    assert_eq!(annotations.get(PAUSE), None);
    assert_eq!(annotations.get(LOCK_ANNOTATION).map(String::as_str), Some(held));

    // A DaemonSet that does not exist is named.
    let out = run(kured().args([
        "pause",
        &format!("--kubeconfig={}", kubeconfig_path().display()),
        &format!("--ds-namespace={}", scope.namespace),
        "--ds-name=kured-missing",
    ]));
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(
        out.last_error_line(),
        format!("kured: DaemonSet {}/kured-missing not found", scope.namespace)
    );
}

#[tokio::test]
async fn the_fleet_is_paused_on_the_lease_which_pause_creates() {
    let scope = Scope::new("ctl-lease").await;
    let object = format!("Lease {}/kured", scope.namespace);
    let lease_args = |command: &'static str| [command, "--lock-backend=lease"];

    assert_eq!(
        admin_ok(&scope, &lease_args("resume")),
        format!("fleet not paused ({object} does not exist)")
    );
    assert!(lease(&scope).await.is_none(), "resume creates nothing");

    assert_eq!(
        admin_ok(&scope, &lease_args("pause")),
        format!("fleet paused (kured.dev/pause=true on {object})")
    );
    let created = lease(&scope).await.expect("the Lease, created by pause");
    assert_eq!(
        created.metadata.annotations.unwrap_or_default(),
        BTreeMap::from([(PAUSE.to_owned(), "true".to_owned())]),
        "only the pause"
    );
    assert_eq!(
        created.spec.and_then(|s| s.holder_identity),
        None,
        "nobody holds it"
    );
    // Pausing again patches the Lease that is there.
    admin_ok(&scope, &lease_args("pause"));

    // The lock's holders written meanwhile stay when the fleet resumes.
    support::observer::write_lock_in(&scope, Backend::Lease, Some(r#"{"nodeID":"n1"}"#)).await;
    assert_eq!(
        admin_ok(&scope, &lease_args("resume")),
        format!("fleet resumed (kured.dev/pause removed from {object})")
    );
    assert!(lease(&scope).await.is_some(), "the Lease stays");
    let annotations = lock_object_annotations(&scope, Backend::Lease).await;
    assert_eq!(annotations.get(PAUSE), None);
    assert_eq!(
        annotations.get(LOCK_ANNOTATION).map(String::as_str),
        Some(r#"{"nodeID":"n1"}"#)
    );
}

#[tokio::test]
async fn credentials_that_may_not_change_the_object_get_one_line_naming_it() {
    let scope = scope_with_lock("ctl-rbac").await;
    let node = scope.create_nodes(1).await.remove(0);
    // May read the lock objects, and change nothing.
    create::<ServiceAccount>(&scope, json!({ "metadata": { "name": "reader" } })).await;
    bind_role(
        &scope,
        "reader",
        "reader",
        json!([
            { "apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"] },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"] },
        ]),
    )
    .await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let reader = service_account_kubeconfig(&scope, "reader", dir.path()).await;
    let user = format!("system:serviceaccount:{}:reader", scope.namespace);

    for command in ["pause", "resume", "reboot"] {
        let line = fails(&scope, &reader, &[command, &node]);
        assert!(
            line.starts_with(&format!(
                "kured: not allowed to change node {node} with these credentials: API error 403 Forbidden:"
            )) && line.contains(&user),
            "kured {command}: {line}"
        );
    }
    let line = fails(&scope, &reader, &["pause"]);
    assert!(
        line.starts_with(&format!(
            "kured: not allowed to change DaemonSet {}/kured with these credentials: API error 403 Forbidden:",
            scope.namespace
        )),
        "{line}"
    );
    let line = fails(&scope, &reader, &["pause", "--lock-backend=lease"]);
    assert!(
        line.starts_with(&format!(
            "kured: not allowed to change Lease {}/kured with these credentials: API error 403 Forbidden:",
            scope.namespace
        )),
        "{line}"
    );
    assert!(!node_annotations(&scope, &node).await.contains_key(PAUSE));
    assert!(!daemonset_annotations(&scope).await.contains_key(PAUSE));
    assert!(lease(&scope).await.is_none());
}

#[tokio::test]
async fn status_shows_halted_paused_and_verifying_nodes_and_a_paused_fleet() {
    let scope = scope_with_lock("ctl-status").await;
    let nodes = scope.create_nodes(4).await;
    let state = |json: serde_json::Value| json.to_string();
    scope
        .annotate_node(
            &nodes[0],
            json!({
                "kured.dev/agent-state": state(json!({
                    "rebootRequired": false, "phase": "verifying",
                    "detail": "pod kube-system/x not Ready; 20s of 60s settle left",
                })),
            }),
        )
        .await;
    scope
        .annotate_node(
            &nodes[1],
            json!({
                "kured.dev/agent-state": state(json!({
                    "rebootRequired": false, "phase": "halted", "detail": "node not Ready after 10m",
                })),
                HALTED: "node not Ready after 10m",
            }),
        )
        .await;
    scope
        .annotate_node(
            &nodes[2],
            json!({ "kured.dev/agent-state": state(json!({ "rebootRequired": false, "phase": "idle" })) }),
        )
        .await;
    admin_ok(&scope, &["pause", &nodes[2]]);
    scope.annotate_node(&nodes[3], json!({ PAUSE: "later" })).await;
    admin_ok(&scope, &["reboot", &nodes[3]]);
    let holder = format!(
        r#"{{"nodeID":"{}","metadata":{{"unschedulable":false}},"created":"2026-11-20T02:59:00Z","TTL":0}}"#,
        nodes[1]
    );
    support::observer::write_lock(&scope, Some(&holder)).await;
    admin_ok(&scope, &["pause"]);

    let text = admin_ok_text(&scope, &["status"]);
    let line_of = |node: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{text}"))
            .to_owned()
    };
    assert!(
        text.contains(&format!(
            "rollout halted by {n}: node not Ready after 10m — resume: kubectl annotate node {n} kured.dev/halted-\n",
            n = nodes[1]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "fleet paused: kured.dev/pause=true on DaemonSet {}/kured — resume: kured resume\n",
            scope.namespace
        )),
        "{text}"
    );
    let verifying = line_of(&nodes[0]);
    assert!(
        verifying.contains(" verifying ")
            && verifying.ends_with("pod kube-system/x not Ready; 20s of 60s settle left"),
        "{verifying}"
    );
    let halted = line_of(&nodes[1]);
    assert!(
        halted.contains(" halted ") && halted.contains(" HALTED ") && halted.contains(" held "),
        "{halted}"
    );
    let paused = line_of(&nodes[2]);
    assert!(
        paused.contains(" idle ") && paused.contains(" paused "),
        "{paused}"
    );
    let unreadable = line_of(&nodes[3]);
    assert!(
        unreadable.contains(r#" paused (kured.dev/pause="later"), reboot requested "#)
            && unreadable.contains("(no agent)"),
        "{unreadable}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&admin_ok_text(&scope, &["status", "--output=json"])).expect("JSON");
    assert_eq!(
        json["fleetPaused"],
        json!({ "object": format!("DaemonSet {}/kured", scope.namespace), "value": "true" })
    );
    let row = |node: &str| {
        json["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == node)
            .unwrap_or_else(|| panic!("no {node} in {json}"))
            .clone()
    };
    assert_eq!(row(&nodes[0])["phase"], "verifying");
    assert_eq!(row(&nodes[1])["halted"], "node not Ready after 10m");
    assert_eq!(row(&nodes[1])["lockHolder"], true);
    assert_eq!(row(&nodes[2])["paused"], "true");
    assert_eq!(row(&nodes[3])["paused"], "later");
    assert_eq!(row(&nodes[3])["rebootNow"], "true");

    // Resumed, the node and the fleet are no longer shown paused or halted.
    admin_ok(&scope, &["resume", &nodes[1]]);
    admin_ok(&scope, &["resume"]);
    let text = admin_ok_text(&scope, &["status"]);
    assert!(
        !text.contains(&format!("rollout halted by {}", nodes[1])),
        "{text}"
    );
    assert!(
        !text.contains(&format!("DaemonSet {}/kured", scope.namespace)),
        "{text}"
    );
}

/// `kured ARGS` as the admin; it must succeed; returns all it printed.
fn admin_ok_text(scope: &Scope, args: &[&str]) -> String {
    let out = kured_in(scope, &kubeconfig_path(), args);
    assert_eq!(out.code, Some(0), "kured {args:?}: {out}");
    out.stdout
}
