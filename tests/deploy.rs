//! The shipped manifests, `deploy/kured.yaml` (reboot by command) and `deploy/kured-signal.yaml`
//! (reboot by signal):
//! - they hold the objects upstream kured's manifests hold, under the same names, so `kubectl apply`
//!   replaces an upstream install in place; the API server accepts them as they are;
//! - applied to the test cluster, the DaemonSet's pods run on kwok nodes;
//! - their RBAC is enough: the real agent, on a simulated node, with nothing but the
//!   ServiceAccount's token, goes through a whole reboot cycle without a single 403;
//! - and each rule is used: with one withheld, the agent meets a 403 that names it (the drain fails,
//!   or the lock is polled instead of watched).
//!
//! The objects live in kube-system under fixed names, and tests run in parallel on one cluster, so
//! each test applies a copy rewritten line by line into its own scope (see [`Isolated`]).
//! Needs `scripts/testcluster up`, kubectl, and root (for the simulated node's `unshare`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::ResourceExt;
use serde_json::json;
use support::cli::agent_accepts;
use support::cluster::{delete_cluster_rbac, kubectl};
use support::nodes::{boot_id, has_prefer_no_schedule_taint, unschedulable};
use support::objects::{create_daemonset, create_deployment, create_pdb, pod_template, running_on};
use support::observer::{held_by, read_lock, write_lock};
use support::rbac::service_account_client;
use support::scope::{SCOPE_LABEL, Scope};
use support::simulated::SimulatedNode;
use support::wait::eventually;

const REBOOT_IN_PROGRESS: &str = "weave.works/kured-reboot-in-progress";
const MOST_RECENT_REBOOT_NEEDED: &str = "weave.works/kured-most-recent-reboot-needed";

/// One shipped manifest and how a simulated node reboots under it.
struct Manifest {
    path: &'static str,
    text: &'static str,
    /// The reboot method's flags for an agent on a simulated node: node-init treats SIGRTMIN+5 to
    /// its PID 1 as a reboot, whether the agent sends it (signal) or a command does.
    reboot_args: &'static [&'static str],
}

const COMMAND: Manifest = Manifest {
    path: "deploy/kured.yaml",
    text: include_str!("../deploy/kured.yaml"),
    reboot_args: &["--reboot-method=command", "--reboot-command=kill -s RTMIN+5 1"],
};

const SIGNAL: Manifest = Manifest {
    path: "deploy/kured-signal.yaml",
    text: include_str!("../deploy/kured-signal.yaml"),
    reboot_args: &["--reboot-method=signal"],
};

const MANIFESTS: [&Manifest; 2] = [&COMMAND, &SIGNAL];

/// The objects of upstream kured 1.23's manifests, as (kind, namespace, name): kured-rbac.yaml
/// holds the ClusterRole, ClusterRoleBinding, Role and RoleBinding; kured-ds.yaml and
/// kured-ds-signal.yaml each hold the ServiceAccount and the DaemonSet.
const UPSTREAM_OBJECTS: [(&str, &str, &str); 6] = [
    ("ServiceAccount", "kube-system", "kured"),
    ("ClusterRole", "", "kured"),
    ("ClusterRoleBinding", "", "kured"),
    ("Role", "kube-system", "kured"),
    ("RoleBinding", "kube-system", "kured"),
    ("DaemonSet", "kube-system", "kured"),
];

/// Upstream's DaemonSet selector. A DaemonSet's selector cannot change, so `kubectl apply` over an
/// upstream install works only with this one.
const UPSTREAM_SELECTOR: (&str, &str) = ("name", "kured");

// ---------------------------------------------------------------------------------------------
// Reading the manifests: just enough YAML for documents, kinds and metadata, without a YAML crate.
// The API server's own reading (a server-side dry run) is compared with this one below.

/// The manifest's documents (split at `---` lines), leaving out those with nothing but comments.
fn documents(yaml: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("at least one document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// A scalar's value without its trailing comment.
fn scalar(value: &str) -> &str {
    value.split(" #").next().unwrap_or_default().trim()
}

/// The document's `kind`.
fn kind(doc: &str) -> &str {
    doc.lines()
        .find_map(|l| l.strip_prefix("kind: "))
        .map(scalar)
        .unwrap_or_else(|| panic!("a document without a kind:\n{doc}"))
}

/// A direct child of the document's `metadata`; "" when absent.
fn metadata(doc: &str, key: &str) -> String {
    let prefix = format!("  {key}: ");
    doc.lines()
        .skip_while(|l| *l != "metadata:")
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.trim_start().starts_with('#') || l.is_empty())
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| scalar(v).to_owned())
        .unwrap_or_default()
}

/// (kind, namespace, name) of every object in the manifest.
fn objects(yaml: &str) -> BTreeSet<(String, String, String)> {
    documents(yaml)
        .iter()
        .map(|d| (kind(d).to_owned(), metadata(d, "namespace"), metadata(d, "name")))
        .collect()
}

fn upstream_objects() -> BTreeSet<(String, String, String)> {
    UPSTREAM_OBJECTS
        .iter()
        .map(|(k, ns, n)| ((*k).to_owned(), (*ns).to_owned(), (*n).to_owned()))
        .collect()
}

/// The agent's flags in the DaemonSet's command, and those shown commented out as examples.
fn flag_lines(yaml: &str) -> Vec<String> {
    yaml.lines()
        .map(str::trim_start)
        .filter_map(|l| l.strip_prefix("- --").or_else(|| l.strip_prefix("# - --")))
        .map(|flag| format!("--{flag}"))
        .collect()
}

#[test]
fn manifests_hold_upstreams_objects_under_upstreams_names() {
    for manifest in MANIFESTS {
        assert_eq!(
            objects(manifest.text),
            upstream_objects(),
            "{}: (kind, namespace, name) of its objects",
            manifest.path
        );
        assert_eq!(
            documents(manifest.text).len(),
            UPSTREAM_OBJECTS.len(),
            "{}",
            manifest.path
        );
    }
}

#[test]
fn both_manifests_grant_the_same_rbac() {
    // Switching between the variants must not change what the ServiceAccount may do.
    let rbac = |yaml: &str| -> Vec<String> {
        documents(yaml)
            .into_iter()
            .filter(|d| kind(d) != "DaemonSet")
            .collect()
    };
    assert_eq!(rbac(COMMAND.text), rbac(SIGNAL.text));
}

#[test]
fn every_flag_in_the_manifests_is_accepted() {
    for manifest in MANIFESTS {
        let flags = flag_lines(manifest.text);
        assert!(
            flags
                .iter()
                .any(|f| f == "--reboot-sentinel=/sentinel/reboot-required"),
            "{}: {flags:?}",
            manifest.path
        );
        let args = [&["--node-id=n1".to_owned()][..], &flags[..]].concat();
        agent_accepts(&args, []).unwrap_or_else(|e| panic!("{}: {flags:?} refused: {e}", manifest.path));
    }
}

// ---------------------------------------------------------------------------------------------
// The manifests as the API server reads them.

/// The manifest's objects as the API server would store them: `kubectl apply --server-side
/// --dry-run=server`, with kubectl's strict field validation (an unknown field is an error).
async fn dry_run(manifest: &Manifest) -> Vec<serde_json::Value> {
    let out = kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=kured-deploy-test",
            "-o",
            "json",
            "-f",
            "-",
        ],
        manifest.text,
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&out).expect("kubectl's JSON output");
    list["items"]
        .as_array()
        .cloned()
        .expect("a List of the applied objects")
}

fn find<'a>(items: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    items
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} among {items:?}"))
}

fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        verbs: strings(verbs),
        non_resource_urls: None,
    }
}

#[tokio::test]
async fn the_api_server_accepts_the_manifests_as_specified() {
    for manifest in MANIFESTS {
        let items = dry_run(manifest).await;
        let read: BTreeSet<(String, String, String)> = items
            .iter()
            .map(|o| {
                let field = |f: &str| o["metadata"][f].as_str().unwrap_or_default().to_owned();
                (
                    o["kind"].as_str().unwrap_or_default().to_owned(),
                    field("namespace"),
                    field("name"),
                )
            })
            .collect();
        assert_eq!(
            read,
            objects(manifest.text),
            "{}: as the API server reads it",
            manifest.path
        );

        // Exactly these rules, each needed by the agent (see the comments in the manifest and the
        // withheld-rule tests below). A new rule is a decision, not an accident.
        let cluster_role: ClusterRole =
            serde_json::from_value(find(&items, "ClusterRole").clone()).expect("a ClusterRole");
        assert_eq!(
            cluster_role.rules.unwrap_or_default(),
            [
                rule(&[""], &["nodes"], &[], &["get", "patch", "list", "watch"]),
                rule(&[""], &["nodes/status"], &[], &["patch"]),
                rule(&[""], &["pods"], &[], &["get", "list", "watch"]),
                rule(&[""], &["pods/eviction"], &[], &["create"]),
                rule(&["apps"], &["daemonsets"], &[], &["get"]),
                rule(&["events.k8s.io"], &["events"], &[], &["create", "patch"]),
            ],
            "{}",
            manifest.path
        );
        let role: Role = serde_json::from_value(find(&items, "Role").clone()).expect("a Role");
        assert_eq!(
            role.rules.unwrap_or_default(),
            [
                rule(
                    &["apps"],
                    &["daemonsets"],
                    &["kured"],
                    &["get", "update", "list", "watch"]
                ),
                // Read only: the Lease backend's holders count while a fleet switches backends.
                rule(&["coordination.k8s.io"], &["leases"], &["kured"], &["get"]),
            ],
            "{}: the lock's DaemonSet, and no other; the Lease of the other backend, read only",
            manifest.path
        );

        let ds: DaemonSet = serde_json::from_value(find(&items, "DaemonSet").clone()).expect("a DaemonSet");
        let spec = ds.spec;
        let (key, value) = UPSTREAM_SELECTOR;
        assert_eq!(
            spec.selector.match_labels,
            Some([(key.to_owned(), value.to_owned())].into()),
            "{}: upstream's selector",
            manifest.path
        );
        let pod = spec.template.spec.expect("a pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("kured"));
        assert_eq!(
            pod.host_pid,
            Some(true),
            "{}: hostPID, to reach the host's PID 1",
            manifest.path
        );
        let sentinel = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "sentinel")
            .and_then(|v| v.host_path)
            .expect("the sentinel hostPath volume");
        assert_eq!(sentinel.path, "/var/run");
        let container = &pod.containers[0];
        let command = container.command.clone().unwrap_or_default();
        assert_eq!(command[0], "/usr/bin/kured");
        assert!(command.contains(&"--reboot-sentinel=/sentinel/reboot-required".to_owned()));
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "sentinel")
            .expect("the sentinel mount");
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/sentinel", Some(true))
        );
        let node_id = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "KURED_NODE_ID")
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(node_id, Some("spec.nodeName"));
        let ports = container.ports.clone().unwrap_or_default();
        assert_eq!(ports[0].container_port, 8080);
        for probe in [&container.liveness_probe, &container.readiness_probe] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("an HTTP probe");
            assert_eq!(get.path.as_deref(), Some("/healthz"));
        }
        let security = container.security_context.clone().expect("a security context");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        let signal = command.contains(&"--reboot-method=signal".to_owned());
        assert_eq!(signal, manifest.path == SIGNAL.path);
        if signal {
            assert_eq!(security.privileged, Some(false));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            let caps = security.capabilities.expect("capabilities");
            assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
            assert_eq!(caps.add, Some(vec!["KILL".to_owned()]));
            assert_eq!(
                security.seccomp_profile.map(|p| p.type_).as_deref(),
                Some("RuntimeDefault")
            );
        } else {
            assert_eq!(
                security.privileged,
                Some(true),
                "setns into the host's mount namespace"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Applying the manifests to the test cluster and running agents under their RBAC.

/// A permission taken away from a manifest: in the document of kind `kind`, the exact line `line`
/// becomes `replacement`.
#[derive(Clone, Copy)]
struct Withhold {
    kind: &'static str,
    line: &'static str,
    replacement: &'static str,
}

/// The ClusterRole's eviction rule, for a resource no request names (RBAC accepts any name; a
/// rule without verbs it does not).
const NO_EVICTION: Withhold = Withhold {
    kind: "ClusterRole",
    line: r#"    resources: ["pods/eviction"]"#,
    replacement: r#"    resources: ["pods/eviction-withheld-by-test"]"#,
};

/// The ClusterRole's rule for reading any DaemonSet, likewise.
const NO_DAEMONSET_READ: Withhold = Withhold {
    kind: "ClusterRole",
    line: r#"    resources: ["daemonsets"]"#,
    replacement: r#"    resources: ["daemonsets-withheld-by-test"]"#,
};

/// The Role without list and watch on the lock's DaemonSet.
const NO_LOCK_WATCH: Withhold = Withhold {
    kind: "Role",
    line: r#"    verbs: ["get", "update", "list", "watch"]"#,
    replacement: r#"    verbs: ["get", "update"]"#,
};

/// A manifest rewritten to be applied inside a [`Scope`], by exact-line replacements only, each
/// counted so that a reformatted manifest fails here instead of being applied half-rewritten:
/// - every `namespace: kube-system` line (metadata and subjects; a trailing comment goes) names
///   the scope's namespace;
/// - in the ClusterRole and ClusterRoleBinding, the `  name: kured` lines (metadata.name, and the
///   binding's roleRef.name) get the suffix `-<scope id>`, so parallel tests do not share these
///   cluster-wide objects; the subject's `    name: kured` (the ServiceAccount) is indented
///   further and stays;
/// - the DaemonSet's nodeSelector line `        kubernetes.io/os: linux` is followed by the scope's
///   node label, so its pods run on this scope's nodes only;
/// - optionally, a [`Withhold`] takes one permission away.
///
/// The cluster-wide objects are deleted on drop.
struct Isolated {
    yaml: String,
    cluster_name: String,
}

impl Isolated {
    fn new(manifest: &Manifest, scope: &Scope, withheld: Option<Withhold>) -> Isolated {
        let cluster_name = format!("kured-{}", scope.id);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut count = |what: &str| *counts.entry(what.to_owned()).or_default() += 1;
        let mut docs = Vec::new();
        for doc in documents(manifest.text) {
            let kind = kind(&doc).to_owned();
            let mut out = String::new();
            for line in doc.lines() {
                let indent = &line[..line.len() - line.trim_start().len()];
                if line.trim_start().strip_prefix("namespace: ").map(scalar) == Some("kube-system") {
                    count("namespace");
                    out.push_str(&format!("{indent}namespace: {}\n", scope.namespace));
                } else if line == "  name: kured" && (kind == "ClusterRole" || kind == "ClusterRoleBinding") {
                    count(&format!("{kind} name"));
                    out.push_str(&format!("  name: {cluster_name}\n"));
                } else if line == "        kubernetes.io/os: linux" && kind == "DaemonSet" {
                    count("nodeSelector");
                    out.push_str(&format!("{line}\n        {}: {}\n", SCOPE_LABEL, scope.id));
                } else if let Some(w) = withheld.filter(|w| w.kind == kind && w.line == line) {
                    count("withheld");
                    out.push_str(w.replacement);
                    out.push('\n');
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            docs.push(out);
        }
        let mut expected: BTreeMap<String, usize> = [
            // ServiceAccount, Role, RoleBinding and DaemonSet metadata, and both bindings' subjects.
            ("namespace".to_owned(), 6),
            ("ClusterRole name".to_owned(), 1),
            ("ClusterRoleBinding name".to_owned(), 2),
            ("nodeSelector".to_owned(), 1),
        ]
        .into();
        if withheld.is_some() {
            expected.insert("withheld".to_owned(), 1);
        }
        assert_eq!(
            counts, expected,
            "rewriting {} for scope {}",
            manifest.path, scope.id
        );
        Isolated {
            yaml: docs.join("---\n"),
            cluster_name,
        }
    }

    async fn apply(&self) {
        kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=kured-deploy-test",
                "-f",
                "-",
            ],
            &self.yaml,
        )
        .await;
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        delete_cluster_rbac(&[&self.cluster_name]);
    }
}

/// The `--prefer-no-schedule-taint` the full-cycle tests give the agent.
const WAITING_TAINT: &str = "kured.test/waiting";

/// A scope with two kwok nodes and what a drain of node 0 meets in a real cluster, with the
/// manifest applied (isolated) and the agent's kubeconfig holding only the ServiceAccount's token:
/// - the kured DaemonSet's pods on both nodes (the drain leaves its own pod alone);
/// - another DaemonSet's pod (`logger`), which the drain may leave only after reading its DaemonSet;
/// - both pods of Deployment `web` on node 0, guarded by a PodDisruptionBudget that allows one
///   disruption at a time, and node 1 cordoned (by the test, not by kured): the first evicted pod's
///   replacement cannot start, so the second eviction is refused (429) until the test reopens
///   node 1. (With node 1 open, kwok starts a replacement within milliseconds, and the second
///   eviction, a few milliseconds after the first, is often allowed already.)
struct Cluster {
    scope: Scope,
    nodes: Vec<String>,
    _manifest: Isolated,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new(manifest: &Manifest, test: &str, withheld: Option<Withhold>) -> Cluster {
        let started = Instant::now();
        let scope = Scope::new(test).await;
        let nodes = scope.create_nodes(2).await;
        let (n0, n1) = (nodes[0].as_str(), nodes[1].as_str());
        let isolated = Isolated::new(manifest, &scope, withheld);
        isolated.apply().await;
        // The DaemonSet's pods land on this scope's kwok nodes, one each, and run.
        running_on(&scope, "name=kured", &[n0, n1]).await;
        eprintln!(
            "{}: applied, pods running after {:?}",
            manifest.path,
            started.elapsed()
        );

        create_daemonset(&scope, "logger", pod_template(&scope, "logger", None, json!({}))).await;
        // Node 1 closed, so that both of web's pods land on node 0, and stay there.
        scope.set_unschedulable(n1, true).await;
        create_deployment(&scope, "web", 2, None).await;
        running_on(&scope, "app=web", &[n0, n0]).await;
        // One disruption allowed: web's two pods are healthy, the budget keeps one.
        create_pdb(&scope, "web", 1, 2).await;
        running_on(&scope, "app=logger", &[n0, n1]).await;
        // Cordoned nodes keep DaemonSet pods: they tolerate node.kubernetes.io/unschedulable.

        let dir = tempfile::tempdir().expect("a temp dir");
        let (kubeconfig, _) = service_account_client(&scope, "kured", "kured", dir.path()).await;
        eprintln!("{}: set up after {:?}", manifest.path, started.elapsed());
        Cluster {
            scope,
            nodes,
            _manifest: isolated,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Starts the agent for node 0 with the ServiceAccount's credentials.
    fn start_agent(&self, manifest: &Manifest, extra_args: &[&str]) -> SimulatedNode {
        let args = [manifest.reboot_args, extra_args].concat();
        SimulatedNode::start_as(&self.scope, &self.nodes[0], &self.kubeconfig, &args)
    }

    async fn node(&self, i: usize) -> Node {
        self.scope.node(&self.nodes[i]).await
    }
}

/// Every line of the agent's log that reports a refusal by RBAC.
fn forbidden_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
        .collect()
}

async fn full_cycle_with_the_manifests_rbac(manifest: &Manifest, test: &str) {
    let started = Instant::now();
    let cluster = Cluster::new(manifest, test, None).await;
    let setup = started.elapsed();
    // Node 1 holds the lock at first, so the agent waits for it: it taints its node and watches
    // the DaemonSet until the lock is free.
    write_lock(&cluster.scope, Some(&held_by(&cluster.nodes[1]))).await;
    let sim = cluster.start_agent(
        manifest,
        &[
            "--annotate-nodes",
            "--pre-reboot-node-labels=kured.test/reboot=pending",
            "--post-reboot-node-labels=kured.test/reboot=done",
            &format!("--prefer-no-schedule-taint={WAITING_TAINT}"),
        ],
    );
    sim.waiting_for_lock_tainted(&cluster.scope, WAITING_TAINT).await;
    write_lock(&cluster.scope, None).await;
    // Refused by web's budget.
    sim.logged(
        "\"msg\":\"eviction refused for now; retrying\"",
        Duration::from_secs(60),
    )
    .await;
    cluster.scope.set_unschedulable(&cluster.nodes[1], false).await;
    let node = eventually(
        "node 0 drained, rebooted, uncordoned, lock released",
        Duration::from_secs(120),
        || async {
            let node = cluster.node(0).await;
            let boots = sim.boot_ids();
            let rebooted = sim.reboots() == 1 && boots.len() == 2 && boot_id(&node) == boots[1];
            let back = rebooted && !sim.sentinel.exists() && !unschedulable(&node);
            (back && read_lock(&cluster.scope).await.is_none()).then_some(node)
        },
    )
    .await;
    let log = sim.log();
    eprintln!(
        "{}: set up in {setup:?}, reboot cycle in {:?}",
        manifest.path,
        started.elapsed() - setup
    );
    assert!(
        forbidden_lines(&log).is_empty(),
        "{}: the agent was refused something:\n{}",
        manifest.path,
        forbidden_lines(&log).join("\n")
    );
    // What the cycle went through, each step under the ServiceAccount's permissions.
    for step in [
        "\"msg\":\"lock acquired\"",
        "\"msg\":\"cordoned\"",
        "\"msg\":\"eviction refused for now; retrying\"",
        "\"msg\":\"drained\"",
        "\"msg\":\"uncordoned\"",
        "\"msg\":\"lock released\"",
    ] {
        assert!(
            log.contains(step),
            "{}: no {step} in the log:\n{log}",
            manifest.path
        );
    }
    let skipped = |pod: &str| {
        log.lines()
            .any(|l| l.contains("\"msg\":\"not evicting\"") && l.contains(pod))
    };
    assert!(skipped("/kured-"), "the agent's own pod stays:\n{log}");
    assert!(skipped("/logger-"), "another DaemonSet's pod stays:\n{log}");
    let web = running_on(&cluster.scope, "app=web", &[&cluster.nodes[1], &cluster.nodes[1]]).await;
    assert_eq!(web.len(), 2, "web moved to node 1");
    assert_eq!(
        node.labels().get("kured.test/reboot").map(String::as_str),
        Some("done")
    );
    assert!(node.annotations().contains_key(MOST_RECENT_REBOOT_NEEDED));
    assert!(!node.annotations().contains_key(REBOOT_IN_PROGRESS));
    assert!(
        !has_prefer_no_schedule_taint(&node, WAITING_TAINT),
        "the waiting taint is gone: {:?}",
        node.spec
    );
    // The DaemonSet's pods are still in place (the drain left them alone).
    running_on(
        &cluster.scope,
        "name=kured",
        &[&cluster.nodes[0], &cluster.nodes[1]],
    )
    .await;
}

#[tokio::test]
async fn with_the_command_manifests_rbac_a_node_goes_through_a_whole_reboot_cycle() {
    full_cycle_with_the_manifests_rbac(&COMMAND, "deploy-command").await;
}

#[tokio::test]
async fn with_the_signal_manifests_rbac_a_node_goes_through_a_whole_reboot_cycle() {
    full_cycle_with_the_manifests_rbac(&SIGNAL, "deploy-signal").await;
}

/// With `withheld` taken away, the drain fails with a 403 that names `resource`, and the node is
/// given back without a reboot.
async fn withholding_fails_the_drain(withheld: Withhold, resource: &str, test: &str) {
    let cluster = Cluster::new(&SIGNAL, test, Some(withheld)).await;
    let sim = cluster.start_agent(&SIGNAL, &[]);
    let failure = sim
        .logged(
            "drain failed; giving the node back and releasing the lock",
            Duration::from_secs(60),
        )
        .await;
    eprintln!("{failure}");
    assert!(
        failure.contains("403") && failure.contains("forbidden") && failure.contains(resource),
        "the failure names the refusal of {resource}: {failure}"
    );
    eventually(
        "node 0 given back and the lock free",
        Duration::from_secs(30),
        || async {
            let node = cluster.node(0).await;
            (!unschedulable(&node) && read_lock(&cluster.scope).await.is_none()).then_some(())
        },
    )
    .await;
    assert_eq!(sim.reboots(), 0, "no reboot after a failed drain:\n{}", sim.log());
    assert!(Path::new(&sim.sentinel).exists());
}

#[tokio::test]
async fn without_creating_evictions_the_drain_fails_with_403() {
    withholding_fails_the_drain(
        NO_EVICTION,
        r#"cannot create resource \"pods/eviction\""#,
        "deploy-noevict",
    )
    .await;
}

#[tokio::test]
async fn without_reading_daemonsets_the_drain_fails_with_403() {
    withholding_fails_the_drain(
        NO_DAEMONSET_READ,
        r#"cannot get resource \"daemonsets\""#,
        "deploy-nods",
    )
    .await;
}

/// Without list and watch on its DaemonSet, an agent waiting for the lock is refused the watch
/// (403, in the log, which the full-cycle tests forbid) and falls back to polling.
#[tokio::test]
async fn without_watching_the_lock_a_waiting_agent_is_refused_and_polls() {
    let cluster = Cluster::new(&SIGNAL, "deploy-nowatch", Some(NO_LOCK_WATCH)).await;
    write_lock(&cluster.scope, Some(&held_by(&cluster.nodes[1]))).await;
    let sim = cluster.start_agent(&SIGNAL, &[]);
    let refused = sim
        .logged("may not watch the lock object; polling", Duration::from_secs(60))
        .await;
    eprintln!("{refused}");
    assert!(
        refused.contains("403")
            && (refused.contains(r#"cannot list resource \"daemonsets\""#)
                || refused.contains(r#"cannot watch resource \"daemonsets\""#)),
        "{refused}"
    );
    assert!(!forbidden_lines(&sim.log()).is_empty());
    assert_eq!(sim.reboots(), 0);
}
