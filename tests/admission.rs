//! deploy/kured-admission-policy.yaml on the real API server, against the agents' ServiceAccount
//! with deploy/kured.yaml's RBAC and a token bound to a pod on node A, as the kubelet mounts it:
//! - refused, with a 403 naming the policy and what the write changes: a hostPath volume of `/` in
//!   the DaemonSet's pod template, a label or a foreign annotation on the DaemonSet, a cordon or
//!   uncordon of another node, a foreign label, annotation or taint on node A; through node A's
//!   status, a changed address, a changed Ready condition or a foreign label; kured's condition
//!   on node B's status. The same writes
//!   from the same token are accepted before the policies are installed, so the refusals are
//!   theirs. With the rules of `--lock-backend=lease` added (and `delete` on leases, which no
//!   kured Role grants): a Lease of another name created, a label, a foreign annotation or
//!   `spec.leaseDurationSeconds` changed on the lock's Lease, and the Lease deleted;
//! - allowed: the lock's write on the DaemonSet, kured's condition RebootRequired on node A's
//!   status, the Lease backend's lock creating its Lease,
//!   taking and releasing it, every write of a whole reboot cycle of a simulated node whose agent
//!   has nothing but that token (with pre- and post-reboot labels, the waiting taint and node
//!   annotations), and anything the admin does;
//! - a token bound to no pod is held to the same fields, on any node.
//!
//! The policies are cluster-wide objects: each test installs the shipped file rendered for its
//! scope ([`Policies`]: names of its own, its namespace's ServiceAccount, its flags) and deletes
//! them on drop. Needs `scripts/testcluster up`, kubectl, and root (for the simulated node).

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kured::agent_state::Phase;
use kured::condition;
use kured::duration::GoDuration;
use kured::lock::{Acquire, Backend, Claim, LockObject, LockSettings, ObjectLock, RebootLock, Release};
use serde_json::{Value, json};
use support::access;
use support::agents::Fleet;
use support::cluster::{client_from_kubeconfig, delete_cluster_wide, kubectl};
use support::nodes::{has_prefer_no_schedule_taint, unschedulable};
use support::objects::{create_daemonset, create_deployment, pod_template, running_on};
use support::observer::{
    LOCK_ANNOTATION, Observer, STATE_ANNOTATION, held_by, read_lock, read_lock_in, write_lock,
};
use support::rbac::{bind_role, lease_rules, pod_bound_kubeconfig};
use support::scope::Scope;
use support::simulated::SimulatedNode;
use support::wait::eventually;

const POLICY_FILE: &str = "deploy/kured-admission-policy.yaml";
const POLICY: &str = include_str!("../deploy/kured-admission-policy.yaml");
/// The shipped policies' names; each is also the name of its binding.
const DAEMONSET_POLICY: &str = "kured-daemonset";
const NODE_POLICY: &str = "kured-node";
const LEASE_POLICY: &str = "kured-lease";
/// The user the shipped policies match, as a CEL literal in their matchConditions.
const SHIPPED_USER: &str = "'system:serviceaccount:kube-system:kured'";
/// Label on a test's policies and bindings, with its scope's id, to delete them by.
const POLICY_LABEL: &str = "kured.test/admission";

/// The full cycle's `--prefer-no-schedule-taint` and reboot labels.
const WAITING_TAINT: &str = "kured.test/waiting";
const BEFORE_LABEL: (&str, &str) = ("kured.test/before", "rebooting");
const AFTER_LABEL: (&str, &str) = ("kured.test/after", "done");

/// How long a new policy and binding may take to reach the API server's admission plugin (through
/// its informers).
const ENFORCED_WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The shipped policies, rendered for a scope

/// The agent settings the policies carry besides the lock's location, which in a scope is
/// DaemonSet `kured` in the scope's namespace with the default lock annotation.
#[derive(Default)]
struct Flags {
    /// `--prefer-no-schedule-taint`.
    taint: Option<&'static str>,
    /// The keys of `--pre-reboot-node-labels` and `--post-reboot-node-labels`.
    labels: &'static [&'static str],
}

/// The policies and bindings of deploy/kured-admission-policy.yaml, installed for a scope and
/// deleted on drop. Rendered from the file's objects, each change checked against what the file
/// ships so that a reshaped file fails here rather than being installed half-rendered:
/// - every object's name (and a binding's policyName) gets the suffix `-<scope id>`;
/// - matchConditions name the scope's ServiceAccount `kured` instead of kube-system's;
/// - the variables that stand for flags get the scope's values: `dsNamespace` and
///   `leaseNamespace`, and the [`Flags`]; `dsName`, `leaseName` and `lockAnnotation` keep the
///   defaults, which the scope uses too.
struct Policies {
    id: String,
}

impl Policies {
    async fn install(scope: &Scope, flags: &Flags) -> Policies {
        let objects = render(scope, flags);
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects });
        // Deletes on drop whatever was created, also when the apply fails halfway.
        let policies = Policies { id: scope.id.clone() };
        kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=kured-admission-test",
                "-f",
                "-",
            ],
            &list.to_string(),
        )
        .await;
        policies
    }

    /// Waits until the API server has type-checked the policies against the types they match
    /// (it does so after creating them), and asserts that it found nothing to warn about: a
    /// misspelt field would only show there, as the expression evaluating to an error.
    async fn assert_type_checked(&self) {
        let selector = format!("{POLICY_LABEL}={}", self.id);
        let args = [
            "get",
            "validatingadmissionpolicies",
            "-l",
            &selector,
            "-o",
            "json",
        ];
        let items = eventually("the policies' type checking", ENFORCED_WITHIN, || async {
            let list: Value = serde_json::from_str(&kubectl(&args, "").await).ok()?;
            let items = list["items"].as_array()?.clone();
            let checked = items.len() == 3
                && items.iter().all(|p| {
                    p["status"]["observedGeneration"] == p["metadata"]["generation"]
                        && p["status"].get("typeChecking").is_some()
                });
            checked.then_some(items)
        })
        .await;
        for policy in items {
            assert_eq!(
                policy["status"]["typeChecking"]["expressionWarnings"],
                Value::Null,
                "{}: type-checking warnings",
                policy["metadata"]["name"]
            );
        }
    }

    /// The installed name of shipped policy `policy`, and of its binding.
    fn name(&self, policy: &str) -> String {
        format!("{policy}-{}", self.id)
    }
}

impl Drop for Policies {
    fn drop(&mut self) {
        delete_cluster_wide(
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &["-l", &format!("{POLICY_LABEL}={}", self.id)],
        );
    }
}

/// CEL's literal of `text`.
fn cel(text: &str) -> String {
    format!("'{text}'")
}

fn render(scope: &Scope, flags: &Flags) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(POLICY).unwrap_or_else(|e| panic!("reading {POLICY_FILE}: {e}"));
    let mut objects: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    let labels: Vec<String> = flags.labels.iter().map(|l| cel(l)).collect();
    // (policy, variable, as shipped, as rendered), each used exactly once. The lock's location is
    // the same in the DaemonSet's policy and in the Lease's.
    let mut variables = Vec::new();
    for (policy, object) in [(DAEMONSET_POLICY, "ds"), (LEASE_POLICY, "lease")] {
        variables.extend([
            (
                policy,
                format!("{object}Namespace"),
                cel("kube-system"),
                cel(&scope.namespace),
            ),
            (policy, format!("{object}Name"), cel("kured"), cel("kured")),
            (
                policy,
                "lockAnnotation".to_owned(),
                cel(LOCK_ANNOTATION),
                cel(LOCK_ANNOTATION),
            ),
        ]);
    }
    variables.extend([
        (
            NODE_POLICY,
            "taint".to_owned(),
            cel(""),
            cel(flags.taint.unwrap_or_default()),
        ),
        (
            NODE_POLICY,
            "labels".to_owned(),
            "[]".to_owned(),
            format!("[{}]", labels.join(", ")),
        ),
    ]);
    let mut used = vec![0; variables.len()];
    let user = cel(&format!("system:serviceaccount:{}:kured", scope.namespace));
    let mut seen = Vec::new();
    for object in &mut objects {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        seen.push((kind.clone(), name.clone()));
        object["metadata"]["name"] = json!(format!("{name}-{}", scope.id));
        object["metadata"]["labels"] = json!({ POLICY_LABEL: scope.id });
        let spec = &mut object["spec"];
        if kind == "ValidatingAdmissionPolicyBinding" {
            assert_eq!(spec["policyName"], json!(name), "{POLICY_FILE}: binding {name}");
            spec["policyName"] = json!(format!("{name}-{}", scope.id));
            continue;
        }
        let conditions = spec["matchConditions"].as_array_mut().expect("matchConditions");
        assert_eq!(conditions.len(), 1, "{POLICY_FILE}: {name}'s matchConditions");
        let condition = conditions[0]["expression"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            condition.matches(SHIPPED_USER).count(),
            1,
            "{POLICY_FILE}: {name} matches {SHIPPED_USER}: {condition}"
        );
        conditions[0]["expression"] = json!(condition.replace(SHIPPED_USER, &user));
        for variable in spec["variables"].as_array_mut().expect("variables") {
            for (i, (policy, var, shipped, rendered)) in variables.iter().enumerate() {
                if *policy == name && variable["name"] == *var {
                    assert_eq!(
                        variable["expression"],
                        json!(shipped),
                        "{POLICY_FILE}: {name}'s variable {var}"
                    );
                    variable["expression"] = json!(rendered);
                    used[i] += 1;
                }
            }
        }
    }
    assert_eq!(
        used,
        vec![1; variables.len()],
        "{POLICY_FILE}: each variable rendered once"
    );
    seen.sort();
    let mut expected: Vec<(String, String)> = [DAEMONSET_POLICY, NODE_POLICY, LEASE_POLICY]
        .iter()
        .flat_map(|n| {
            ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
                .map(|k| (k.to_owned(), (*n).to_owned()))
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "{POLICY_FILE}: its objects");
    objects
}

// ---------------------------------------------------------------------------------------------
// The setting: two nodes, the agents' ServiceAccount, and its token bound to a pod on node A

/// A scope with nodes A and B (node 0 and 1), the lock's DaemonSet and ServiceAccount `kured`
/// bound to deploy/kured.yaml's RBAC ([`Fleet`]), and a token of that account bound to a pod on
/// node A: the pod of DaemonSet `agent`, running under the account as the agent's own pod does
/// in a real install. A drain leaves a DaemonSet's pod alone, so the pod, and with it the token,
/// outlives node A's reboot cycle.
struct Setting {
    fleet: Fleet,
    /// A kubeconfig holding nothing but the pod-bound token.
    kubeconfig: PathBuf,
    client: Client,
    token_pod: Pod,
    /// Whether the account may also write Leases ([`Setting::grant_lease_writes`]).
    lease_writes: bool,
    _dir: tempfile::TempDir,
}

impl Setting {
    async fn new(test: &str) -> Setting {
        let fleet = Fleet::new(test, 2).await;
        let a = fleet.names[0].as_str();
        let spec = json!({ "serviceAccountName": "kured", "automountServiceAccountToken": false });
        create_daemonset(
            &fleet.scope,
            "agent",
            pod_template(&fleet.scope, "agent", Some(a), spec),
        )
        .await;
        let token_pod = running_on(&fleet.scope, "app=agent", &[a]).await.remove(0);
        let dir = tempfile::tempdir().expect("a temp dir");
        let kubeconfig = pod_bound_kubeconfig(&fleet.scope, "kured", &token_pod, dir.path()).await;
        let client = client_from_kubeconfig(&kubeconfig).await;
        Setting {
            fleet,
            kubeconfig,
            client,
            token_pod,
            lease_writes: false,
            _dir: dir,
        }
    }

    /// Adds to the account the rules the README gives for `--lock-backend=lease`
    /// ([`lease_rules`]) and `delete` on leases, which no kured Role grants: what the policy
    /// refuses of a Role broader than ours. Waits until they take effect.
    async fn grant_lease_writes(&mut self) {
        let mut rules = lease_rules();
        push(
            &mut rules,
            json!({ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["delete"] }),
        );
        bind_role(self.scope(), "kured-lease", "kured", rules).await;
        let delete = access::request(
            "delete",
            "coordination.k8s.io/leases",
            &self.scope().namespace,
            "",
        );
        eventually("the Lease rules to take effect", ENFORCED_WITHIN, || async {
            access::may(&self.client, &delete).await.then_some(())
        })
        .await;
        self.lease_writes = true;
    }

    fn scope(&self) -> &Scope {
        &self.fleet.scope
    }

    fn a(&self) -> &str {
        &self.fleet.names[0]
    }

    fn b(&self) -> &str {
        &self.fleet.names[1]
    }

    /// Waits until the policies refuse the token's writes (the Lease's where it may write Leases):
    /// the API server's admission plugin learns of new policies and bindings through informers, a
    /// moment after they are created.
    async fn until_enforced(&self, policies: &Policies) {
        let lease = self.lease_writes.then_some(Probe::LeaseAnnotation);
        for probe in [Probe::DaemonSetAnnotation, Probe::OwnNodeAnnotation]
            .into_iter()
            .chain(lease)
        {
            let refused = eventually(
                &format!("the policies to refuse {probe:?}"),
                ENFORCED_WITHIN,
                || async { probe.write(self, &self.client).await.err() },
            )
            .await;
            assert_refused(probe, &Err(refused), self, policies);
        }
        policies.assert_type_checked().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Writes a stolen token could make

/// A value no earlier write used, so that every write is a change.
fn fresh() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed).to_string()
}

/// What root on node A could do with the agent's token, which RBAC allows.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// A hostPath volume of `/` mounted into the DaemonSet's pods: a root shell on every node.
    HostPathVolume,
    DaemonSetLabel,
    DaemonSetAnnotation,
    /// Node B cordoned, or uncordoned when it is cordoned.
    OtherNodeCordon,
    OwnNodeLabel,
    OwnNodeAnnotation,
    /// A NoSchedule taint of its own on node A, beside the others.
    OwnNodeTaint,
    /// A Lease of another name created beside the lock's: as well a free leader-election Lease of
    /// the control plane, where the agents run in its namespace.
    OtherLease,
    LeaseLabel,
    LeaseAnnotation,
    LeaseDuration,
    /// The lock's Lease deleted, with its holders.
    LeaseDelete,
    /// Node A's address changed through its status: the API server's traffic to its kubelet
    /// redirected.
    OwnNodeAddress,
    /// Node A's Ready condition, the kubelet's, changed through its status.
    OwnNodeReady,
    /// A foreign label on node A through its status, which lets metadata through.
    OwnNodeStatusLabel,
    /// kured's own condition written on node B's status.
    OtherNodeCondition,
}

impl Probe {
    /// Every probe; those on Leases need [`Setting::grant_lease_writes`].
    const ALL: [Probe; 16] = [
        Probe::HostPathVolume,
        Probe::DaemonSetLabel,
        Probe::DaemonSetAnnotation,
        Probe::OtherNodeCordon,
        Probe::OwnNodeLabel,
        Probe::OwnNodeAnnotation,
        Probe::OwnNodeTaint,
        Probe::OtherLease,
        Probe::LeaseLabel,
        Probe::LeaseAnnotation,
        Probe::LeaseDuration,
        Probe::LeaseDelete,
        Probe::OwnNodeAddress,
        Probe::OwnNodeReady,
        Probe::OwnNodeStatusLabel,
        Probe::OtherNodeCondition,
    ];

    /// The shipped policy that refuses it, and what its refusal says.
    fn refusal(self, setting: &Setting) -> (&'static str, String) {
        let lock = format!(
            "kured may change annotation {LOCK_ANNOTATION} of DaemonSet {}/kured and nothing else; this write changes ",
            setting.scope().namespace
        );
        let own = format!(
            "kured may change spec.unschedulable, its own taint, labels and annotations of Node {} and nothing else; this write changes ",
            setting.a()
        );
        let status = format!(
            "kured may change condition RebootRequired in the status of Node {} and nothing else; this write changes ",
            setting.a()
        );
        let namespace = &setting.scope().namespace;
        let only_lease =
            format!("kured may create and update Lease {namespace}/kured (its lock) and nothing else; not ");
        let lease = format!(
            "kured may change annotation {LOCK_ANNOTATION} and spec.holderIdentity of Lease {namespace}/kured and nothing else; this write changes "
        );
        match self {
            Probe::HostPathVolume => (DAEMONSET_POLICY, format!("{lock}spec")),
            Probe::DaemonSetLabel => (DAEMONSET_POLICY, format!("{lock}labels")),
            Probe::DaemonSetAnnotation => (DAEMONSET_POLICY, format!("{lock}annotation example.com/probe")),
            Probe::OtherNodeCordon | Probe::OtherNodeCondition => (
                NODE_POLICY,
                format!(
                    "kured may change its own Node, {} (where the pod its token is bound to runs), and no other; not Node {}",
                    setting.a(),
                    setting.b()
                ),
            ),
            Probe::OwnNodeAddress => (NODE_POLICY, format!("{status}status.addresses")),
            Probe::OwnNodeReady => (NODE_POLICY, format!("{status}status.conditions")),
            Probe::OwnNodeStatusLabel => (NODE_POLICY, format!("{status}labels")),
            Probe::OwnNodeLabel => (NODE_POLICY, format!("{own}label example.com/probe")),
            Probe::OwnNodeAnnotation => (NODE_POLICY, format!("{own}annotation example.com/probe")),
            Probe::OwnNodeTaint => (NODE_POLICY, format!("{own}spec.taints")),
            Probe::OtherLease => (
                LEASE_POLICY,
                format!("{only_lease}create Lease {namespace}/probe-"),
            ),
            Probe::LeaseLabel => (LEASE_POLICY, format!("{lease}labels")),
            Probe::LeaseAnnotation => (LEASE_POLICY, format!("{lease}annotation example.com/probe")),
            Probe::LeaseDuration => (LEASE_POLICY, format!("{lease}spec.leaseDurationSeconds")),
            Probe::LeaseDelete => (
                LEASE_POLICY,
                format!("{only_lease}delete Lease {namespace}/kured"),
            ),
        }
    }

    /// Makes the write with `client`'s credentials: the DaemonSet or the lock's Lease read, changed
    /// and written back whole (an update, as the lock's writes are), a Node patched (as the agent
    /// patches). The lock's Lease is created first by the admin where it is absent (the lock
    /// creates it on its first write, and [`Probe::LeaseDelete`] deletes it).
    async fn write(self, setting: &Setting, client: &Client) -> Result<(), kube::Error> {
        let value = fresh();
        match self {
            Probe::HostPathVolume => {
                update_lock_daemonset(setting, client, |ds| {
                    let pod = &mut ds.data["spec"]["template"]["spec"];
                    let name = format!("host-{value}");
                    push(
                        &mut pod["volumes"],
                        json!({ "name": name, "hostPath": { "path": "/" } }),
                    );
                    push(
                        &mut pod["containers"][0]["volumeMounts"],
                        json!({ "name": name, "mountPath": format!("/host-{value}") }),
                    );
                })
                .await
            }
            Probe::DaemonSetLabel => {
                update_lock_daemonset(setting, client, |ds| {
                    ds.labels_mut().insert("example.com/probe".into(), value.clone());
                })
                .await
            }
            Probe::DaemonSetAnnotation => {
                update_lock_daemonset(setting, client, |ds| {
                    ds.annotations_mut()
                        .insert("example.com/probe".into(), value.clone());
                })
                .await
            }
            Probe::OtherNodeCordon => {
                let nodes = Api::<Node>::all(client.clone());
                let cordoned = unschedulable(&nodes.get(setting.b()).await?);
                patch_node(
                    client,
                    setting.b(),
                    json!({ "spec": { "unschedulable": !cordoned } }),
                )
                .await
            }
            Probe::OwnNodeLabel => {
                let patch = json!({ "metadata": { "labels": { "example.com/probe": value } } });
                patch_node(client, setting.a(), patch).await
            }
            Probe::OwnNodeAnnotation => {
                let patch = json!({ "metadata": { "annotations": { "example.com/probe": value } } });
                patch_node(client, setting.a(), patch).await
            }
            Probe::OwnNodeTaint => {
                let node = Api::<Node>::all(client.clone()).get(setting.a()).await?;
                let mut taints = json!(node.spec.and_then(|s| s.taints).unwrap_or_default());
                push(
                    &mut taints,
                    json!({ "key": format!("example.com/probe-{value}"), "effect": "NoSchedule" }),
                );
                let patch = json!({
                    "metadata": { "resourceVersion": node.metadata.resource_version },
                    "spec": { "taints": taints },
                });
                patch_node(client, setting.a(), patch).await
            }
            Probe::OtherLease => {
                let lease = json!({ "metadata": { "name": format!("probe-{value}") }, "spec": {} });
                let lease: Lease = serde_json::from_value(lease).expect("a valid Lease");
                Api::<Lease>::namespaced(client.clone(), &setting.scope().namespace)
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
            Probe::LeaseLabel | Probe::LeaseAnnotation => {
                update_lock_lease(setting, client, |lease| {
                    let keys = match self {
                        Probe::LeaseLabel => lease.labels_mut(),
                        _ => lease.annotations_mut(),
                    };
                    keys.insert("example.com/probe".into(), value.clone());
                })
                .await
            }
            Probe::LeaseDuration => {
                // Above zero, which the Lease's validation wants before admission looks.
                let seconds = value.parse::<u32>().expect("a counter") + 1;
                update_lock_lease(setting, client, |lease| {
                    lease.data["spec"]["leaseDurationSeconds"] = json!(seconds);
                })
                .await
            }
            Probe::OwnNodeAddress => {
                let last = value.parse::<u32>().expect("a counter") % 250 + 1;
                let address = json!({ "type": "InternalIP", "address": format!("10.99.0.{last}") });
                let patch = json!({ "status": { "addresses": [address] } });
                patch_node_status(client, setting.a(), patch).await
            }
            Probe::OwnNodeReady => {
                let ready =
                    json!({ "type": "Ready", "status": "True", "reason": "KubeletReady", "message": value });
                let patch = json!({ "status": { "conditions": [ready] } });
                patch_node_status(client, setting.a(), patch).await
            }
            Probe::OwnNodeStatusLabel => {
                let patch = json!({ "metadata": { "labels": { "example.com/probe": value } } });
                patch_node_status(client, setting.a(), patch).await
            }
            Probe::OtherNodeCondition => write_condition(client, setting.b(), &value).await,
            Probe::LeaseDelete => {
                ensure_lock_lease(setting.scope()).await;
                Api::<Lease>::namespaced(client.clone(), &setting.scope().namespace)
                    .delete("kured", &DeleteParams::default())
                    .await
                    .map(drop)
            }
        }
    }
}

/// Appends `item` to the list at `list`, which may be absent.
fn push(list: &mut Value, item: Value) {
    match list.as_array_mut() {
        Some(items) => items.push(item),
        None => *list = json!([item]),
    }
}

/// Reads the lock's DaemonSet with `client`, applies `change` and writes it back whole
/// ([`update_lock_object`]).
async fn update_lock_daemonset(
    setting: &Setting,
    client: &Client,
    change: impl Fn(&mut DynamicObject),
) -> Result<(), kube::Error> {
    update_lock_object(setting, client, ApiResource::erase::<DaemonSet>(&()), change).await
}

/// Reads the lock's Lease with `client` (created by the admin first where it is absent),
/// applies `change` and writes it back whole ([`update_lock_object`]).
async fn update_lock_lease(
    setting: &Setting,
    client: &Client,
    change: impl Fn(&mut DynamicObject),
) -> Result<(), kube::Error> {
    ensure_lock_lease(setting.scope()).await;
    update_lock_object(setting, client, ApiResource::erase::<Lease>(&()), change).await
}

/// Creates the lock's Lease as the admin, as bare as the lock creates it, where it is absent.
async fn ensure_lock_lease(scope: &Scope) {
    let leases = scope.api::<Lease>();
    if leases
        .get_opt("kured")
        .await
        .expect("reading the lock's Lease")
        .is_none()
    {
        let lease: Lease = serde_json::from_value(json!({ "metadata": { "name": "kured" }, "spec": {} }))
            .expect("a valid Lease");
        leases
            .create(&PostParams::default(), &lease)
            .await
            .expect("creating the lock's Lease");
    }
}

/// Reads the lock's object `kured` of type `resource` with `client`, applies `change` and writes
/// it back whole, on condition of the resourceVersion read, as the agent writes its lock: untyped,
/// so that no field this build does not know is lost. A conflict (the DaemonSet controller writing
/// its status meanwhile) reads again, a few times.
async fn update_lock_object(
    setting: &Setting,
    client: &Client,
    resource: ApiResource,
    change: impl Fn(&mut DynamicObject),
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &setting.scope().namespace, &resource);
    let mut attempts = 0;
    loop {
        let mut object = api.get("kured").await?;
        change(&mut object);
        match api.replace("kured", &PostParams::default(), &object).await {
            Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => attempts += 1,
            result => return result.map(drop),
        }
    }
}

async fn patch_node(client: &Client, node: &str, patch: Value) -> Result<(), kube::Error> {
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

/// Strategic-merge-patches `patch` into the status of `node`, as the agent writes its condition.
async fn patch_node_status(client: &Client, node: &str, patch: Value) -> Result<(), kube::Error> {
    Api::<Node>::all(client.clone())
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(drop)
}

/// Writes the condition RebootRequired on `node` as the agent does, with `detail` in its message
/// so that every write is a change.
async fn write_condition(client: &Client, node: &str, detail: &str) -> Result<(), kube::Error> {
    let wanted = condition::wanted(Some(true), Phase::Blocked, detail);
    let written = condition::to_write(&wanted, None, jiff::Timestamp::now()).expect("a condition to write");
    patch_node_status(client, node, condition::patch(&written)).await
}

/// Asserts that `result` is the refusal of `probe` by its policy: see [`assert_refused_by`].
fn assert_refused(probe: Probe, result: &Result<(), kube::Error>, setting: &Setting, policies: &Policies) {
    let (policy, says) = probe.refusal(setting);
    assert_refused_by(&format!("{probe:?}"), result, &policies.name(policy), &says);
}

/// Asserts that `result`, of the write `what`, is a refusal by installed policy `name`: 403
/// Forbidden, naming the policy and its binding, and saying `says`.
fn assert_refused_by(what: &str, result: &Result<(), kube::Error>, name: &str, says: &str) {
    let named = format!("ValidatingAdmissionPolicy '{name}' with binding '{name}' denied request: ");
    match result {
        Err(kube::Error::Api(status)) => assert!(
            status.code == 403 && status.message.contains(&named) && status.message.contains(says),
            "{what}: expected a 403 saying {named}{says}...; got {} {}: {}",
            status.code,
            status.reason,
            status.message
        ),
        other => panic!("{what}: expected the refusal of {name}, got {other:?}"),
    }
}

/// The Lease backend's lock with `setting`'s token, under the policies: its first acquire
/// creates the Lease, its release and the next acquire update it, each with the lock annotation
/// and `spec.holderIdentity`.
async fn lease_lock_round_trips(setting: &Setting) {
    let scope = setting.scope();
    let leases = scope.api::<Lease>();
    if leases
        .get_opt("kured")
        .await
        .expect("reading the lock's Lease")
        .is_some()
    {
        leases
            .delete("kured", &DeleteParams::default())
            .await
            .expect("deleting the lock's Lease");
    }
    let object = LockObject {
        backend: Backend::Lease,
        namespace: scope.namespace.clone(),
        name: "kured".to_owned(),
        annotation: LOCK_ANNOTATION.to_owned(),
    };
    let settings = LockSettings {
        node_id: setting.a().to_owned(),
        concurrency: 1,
        ttl: GoDuration::ZERO,
        release_delay: Duration::ZERO,
        per_label: Vec::new(),
    };
    let lock = ObjectLock::new(setting.client.clone(), &object, settings);
    let holder = || async {
        let lease = leases.get("kured").await.expect("reading the lock's Lease");
        lease.spec.and_then(|s| s.holder_identity)
    };
    for round in ["creating the Lease", "updating it"] {
        match lock.acquire(&Claim::default()).await {
            Ok(Acquire::Acquired(_)) => {}
            other => panic!("the Lease lock is acquired ({round}) under the policies: {other:?}"),
        }
        assert_eq!(holder().await.as_deref(), Some(setting.a()), "{round}");
        let released = lock.release().await;
        assert!(
            matches!(released, Ok(Release::Released)),
            "the Lease lock is released under the policies: {released:?}"
        );
        assert_eq!(holder().await, None, "released");
        assert_eq!(read_lock_in(scope, Backend::Lease).await, None, "released");
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn the_policies_refuse_what_a_stolen_token_could_do_and_allow_the_lock_and_the_admin() {
    let mut setting = Setting::new("admission-refuse").await;
    setting.grant_lease_writes().await;
    let scope = setting.scope();

    // Before: deploy/kured.yaml's RBAC lets the token make every one of these writes.
    for probe in Probe::ALL {
        probe
            .write(&setting, &setting.client)
            .await
            .unwrap_or_else(|e| panic!("without the policies, {probe:?} is accepted: {e}"));
    }

    let policies = Policies::install(scope, &Flags::default()).await;
    setting.until_enforced(&policies).await;
    for probe in Probe::ALL {
        let result = probe.write(&setting, &setting.client).await;
        assert_refused(probe, &result, &setting, &policies);
    }

    // The lock's writes, taking it and releasing it, as the agent makes them.
    for lock in [Some(held_by(setting.a())), None] {
        update_lock_daemonset(&setting, &setting.client, |ds| {
            let annotations = ds.annotations_mut();
            match &lock {
                Some(text) => annotations.insert(LOCK_ANNOTATION.into(), text.clone()),
                None => annotations.remove(LOCK_ANNOTATION),
            };
        })
        .await
        .unwrap_or_else(|e| panic!("the lock's write ({lock:?}) is allowed: {e}"));
        assert_eq!(read_lock(scope).await, lock);
    }
    lease_lock_round_trips(&setting).await;

    // The agent's condition on its own node's status, which changes nothing else.
    write_condition(&setting.client, setting.a(), &fresh())
        .await
        .unwrap_or_else(|e| panic!("the condition RebootRequired on node A is allowed: {e}"));
    let written = condition::on_node(&scope.node(setting.a()).await).expect("the condition written");
    assert_eq!(written.reason.as_deref(), Some("Blocked"));

    // The admin is not the agents' ServiceAccount: the policies do not look at its writes.
    for probe in Probe::ALL {
        probe
            .write(&setting, &scope.client)
            .await
            .unwrap_or_else(|e| panic!("the admin's {probe:?} is accepted: {e}"));
    }

    // A token bound to no pod names no node: it is held to the same fields, on any node.
    let unbound = client_from_kubeconfig(&setting.fleet.agents.kubeconfig).await;
    Probe::OtherNodeCordon
        .write(&setting, &unbound)
        .await
        .unwrap_or_else(|e| panic!("an unbound token may cordon another node: {e}"));
    let label = json!({ "metadata": { "labels": { "example.com/probe": fresh() } } });
    let says = format!(
        "kured may change spec.unschedulable, its own taint, labels and annotations of Node {} and nothing else; this write changes label example.com/probe",
        setting.b()
    );
    assert_refused_by(
        "a foreign label on node B from an unbound token",
        &patch_node(&unbound, setting.b(), label).await,
        &policies.name(NODE_POLICY),
        &says,
    );
}

#[tokio::test]
async fn under_the_policies_a_node_goes_through_a_whole_reboot_cycle_with_its_pod_bound_token() {
    let setting = Setting::new("admission-cycle").await;
    let (scope, a, b) = (setting.scope(), setting.a(), setting.b());
    let flags = Flags {
        taint: Some(WAITING_TAINT),
        labels: &[BEFORE_LABEL.0, AFTER_LABEL.0],
    };
    let policies = Policies::install(scope, &flags).await;
    setting.until_enforced(&policies).await;

    // Something to drain, and node B holding the lock, so that the agent waits for it, tainted.
    create_deployment(scope, "web", 1, Some(a)).await;
    running_on(scope, "app=web", &[a]).await;
    write_lock(scope, Some(&held_by(b))).await;
    let observer = Observer::start(scope, 1, &[]).await;
    let before = format!("--pre-reboot-node-labels={}={}", BEFORE_LABEL.0, BEFORE_LABEL.1);
    let after = format!("--post-reboot-node-labels={}={}", AFTER_LABEL.0, AFTER_LABEL.1);
    let taint = format!("--prefer-no-schedule-taint={WAITING_TAINT}");
    let sims = vec![SimulatedNode::start_as(
        scope,
        a,
        &setting.kubeconfig,
        &[
            "--reboot-method=signal",
            "--annotate-nodes",
            &before,
            &after,
            &taint,
        ],
    )];
    let sim = &sims[0];
    sim.waiting_for_lock_tainted(scope, WAITING_TAINT).await;
    write_lock(scope, None).await;
    observer
        .assert_each_rebooted_once(&sims, Duration::from_secs(180))
        .await;

    let log = sim.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("denied request") || l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "the agent was refused:\n{}",
        refused.join("\n")
    );
    for step in [
        "\"msg\":\"PreferNoSchedule taint added\"",
        "\"msg\":\"lock acquired\"",
        "\"msg\":\"labels set\"",
        "\"msg\":\"annotated reboot in progress\"",
        "\"msg\":\"cordoned\"",
        "\"msg\":\"drained\"",
        "\"msg\":\"uncordoned\"",
        "\"msg\":\"removed reboot-in-progress annotation\"",
        "\"msg\":\"PreferNoSchedule taint removed\"",
        "\"msg\":\"lock released\"",
    ] {
        assert!(log.contains(step), "no {step} in the agent's log:\n{log}");
    }
    // The condition, written under the policies all along, says the reboot is done.
    eventually(
        "the condition RebootRequired False on node A",
        ENFORCED_WITHIN,
        || async {
            let now = condition::on_node(&scope.node(a).await)?;
            (now.status == "False" && now.reason.as_deref() == Some("RebootNotRequired")).then_some(())
        },
    )
    .await;
    let node = scope.node(a).await;
    for (key, value) in [BEFORE_LABEL, AFTER_LABEL] {
        assert_eq!(
            node.labels().get(key).map(String::as_str),
            Some(value),
            "label {key}"
        );
    }
    let annotations = node.annotations();
    assert!(annotations.contains_key("weave.works/kured-most-recent-reboot-needed"));
    assert!(annotations.contains_key(STATE_ANNOTATION));
    assert!(!annotations.contains_key("weave.works/kured-reboot-in-progress"));
    assert!(!annotations.contains_key("kured.dev/cordoned"));
    assert!(
        !has_prefer_no_schedule_taint(&node, WAITING_TAINT) && !unschedulable(&node),
        "{:?}",
        node.spec
    );

    // The token's pod lived through the cycle, and the policies were in force to the end.
    let pod = running_on(scope, "app=agent", &[a]).await.remove(0);
    assert_eq!(pod.uid(), setting.token_pod.uid());
    let last = Probe::OwnNodeAnnotation.write(&setting, &setting.client).await;
    assert_refused(Probe::OwnNodeAnnotation, &last, &setting, &policies);
}
