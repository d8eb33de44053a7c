//! Objects in a scope's namespace, created from JSON as a manifest writes them: pods,
//! Deployments, DaemonSets (the lock's among them) and PodDisruptionBudgets; and waiting until
//! their pods run where they should.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::scope::{SCOPE_LABEL, Scope};
use super::wait::eventually;

/// How long pods may take to be created, scheduled and reported Running by kwok.
pub const STARTUP: Duration = Duration::from_secs(60);

/// Creates the namespaced object `object` (JSON, as in a manifest) in the scope's namespace.
pub async fn create<K>(scope: &Scope, object: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    <K as kube::Resource>::DynamicType: Default,
{
    let object: K = serde_json::from_value(object).expect("a valid object");
    let kind = K::kind(&Default::default()).into_owned();
    scope
        .api::<K>()
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {kind} {:?}: {e}", object.meta().name))
}

/// `base` with the fields of `extra` added or replaced, when both are JSON objects.
fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

// ---------------------------------------------------------------------------------------------
// Pods

/// Whether the pod runs, and is not on its way out.
pub fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Whether the pod reports Ready=True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node the pod is bound to; "" before it is scheduled.
pub fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// A pod `name` labelled `labels`, bound to `node` directly, without a controller. `extra` is
/// merged into its spec.
pub async fn create_pod(scope: &Scope, name: &str, node: &str, labels: Value, extra: Value) {
    let spec = json!({
        "nodeName": node,
        "containers": [{ "name": "app", "image": "registry.invalid/app:1" }],
    });
    create::<Pod>(
        scope,
        json!({ "metadata": { "name": name, "labels": labels }, "spec": merged(spec, extra) }),
    )
    .await;
}

/// Deletes pod `name` of the scope (gracefully, as kubectl does).
pub async fn delete_pod(scope: &Scope, name: &str) {
    scope
        .api::<Pod>()
        .delete(name, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("deleting pod {name}: {e}"));
}

/// A template for the pods of app `app`, on the scope's nodes (or on `node` only), each pod
/// taking a second to terminate. `extra` is merged into the pod spec.
pub fn pod_template(scope: &Scope, app: &str, node: Option<&str>, extra: Value) -> Value {
    let mut selector = json!({ SCOPE_LABEL: scope.id });
    if let Some(node) = node {
        selector["kubernetes.io/hostname"] = json!(node);
    }
    let spec = json!({
        "nodeSelector": selector,
        "terminationGracePeriodSeconds": 1,
        "containers": [{ "name": "app", "image": "registry.invalid/app:1" }],
    });
    json!({ "metadata": { "labels": { "app": app } }, "spec": merged(spec, extra) })
}

/// A Deployment `app` of `replicas` pods of app `app` on the scope's nodes (or on `node` only),
/// as [`pod_template`] makes them.
pub async fn create_deployment(scope: &Scope, app: &str, replicas: i32, node: Option<&str>) {
    create_deployment_of(scope, app, replicas, pod_template(scope, app, node, json!({}))).await;
}

/// A Deployment `app` of `replicas` pods from `template`, whose pods are labelled `app: <app>`.
pub async fn create_deployment_of(scope: &Scope, app: &str, replicas: i32, template: Value) {
    create::<Deployment>(
        scope,
        json!({
            "metadata": { "name": app },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": app } },
                "template": template,
            },
        }),
    )
    .await;
}

/// A DaemonSet `app` of pods from `template`, whose pods are labelled `app: <app>`.
pub async fn create_daemonset(scope: &Scope, app: &str, template: Value) {
    create::<DaemonSet>(
        scope,
        json!({
            "metadata": { "name": app },
            "spec": {
                "selector": { "matchLabels": { "app": app } },
                "template": template,
            },
        }),
    )
    .await;
}

/// The pod label with which a pod runs but never becomes Ready (testenv/kwok-stages.yaml): a
/// workload that does not come back after a reboot.
pub const NEVER_READY: &str = "kured.test/never-ready";

/// A DaemonSet `app` whose one pod, on `node`, runs but never becomes Ready ([`NEVER_READY`]);
/// returns once the pod runs there.
pub async fn create_never_ready_daemonset(scope: &Scope, app: &str, node: &str) {
    let mut template = pod_template(scope, app, Some(node), json!({}));
    template["metadata"]["labels"][NEVER_READY] = json!("true");
    create_daemonset(scope, app, template).await;
    let pods = running_on(scope, &format!("app={app}"), &[node]).await;
    assert!(
        pods.iter().all(|p| !is_ready(p)),
        "the pods of DaemonSet {app} are not Ready: {:?}",
        pods.iter().map(|p| &p.status).collect::<Vec<_>>()
    );
}

/// Takes the [`NEVER_READY`] label off the pods of app `app` and waits until they are Ready: the
/// workload fixed.
pub async fn make_ready(scope: &Scope, app: &str) {
    let api = scope.api::<Pod>();
    let selector = format!("app={app}");
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap_or_else(|e| panic!("listing the pods of {app}: {e}"));
    for pod in &pods.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { NEVER_READY: null } } })),
        )
        .await
        .unwrap_or_else(|e| panic!("taking label {NEVER_READY} off pod {name}: {e}"));
    }
    eventually(&format!("the pods of {app} to become Ready"), STARTUP, || async {
        let list = api.list(&ListParams::default().labels(&selector)).await.ok()?;
        (!list.items.is_empty() && list.items.iter().all(is_ready)).then_some(())
    })
    .await;
}

/// The DaemonSet `kured` in the scope's namespace, which carries the lock of the scope's agents.
/// Its pods never run: the agents run under node-init instead. Returns once the DaemonSet
/// controller has written the status of this generation, so that no write of its own changes
/// the object's resourceVersion under a test afterwards.
pub async fn create_lock_daemonset(scope: &Scope) {
    let template = json!({
        "metadata": { "labels": { "app": "kured" } },
        "spec": {
            // The agents run as node-init's children here, not as pods.
            "nodeSelector": { "kured.test/no-such-node": "true" },
            "containers": [{ "name": "kured", "image": "registry.invalid/kured:test" }],
        },
    });
    create_daemonset(scope, "kured", template).await;
    let api = scope.api::<DaemonSet>();
    eventually(
        "the DaemonSet controller to observe the lock DaemonSet",
        Duration::from_secs(60),
        || async {
            let ds = api.get("kured").await.ok()?;
            let observed = ds.status.as_ref()?.observed_generation?;
            (Some(observed) >= ds.metadata.generation).then_some(())
        },
    )
    .await;
}

/// A new scope ([`Scope::new`]) with the lock's DaemonSet ([`create_lock_daemonset`]).
pub async fn scope_with_lock(test: &str) -> Scope {
    let scope = Scope::new(test).await;
    create_lock_daemonset(&scope).await;
    scope
}

/// All pods on `node`, in any phase and namespace.
pub async fn pods_on(scope: &Scope, node: &str) -> Vec<Pod> {
    Api::<Pod>::all(scope.client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .expect("listing the node's pods")
        .items
}

/// The running pods in the scope that match `selector`, once `placed` accepts them.
async fn running_where(
    scope: &Scope,
    selector: &str,
    what: &str,
    placed: impl Fn(&[Pod]) -> bool,
) -> Vec<Pod> {
    let pods: Api<Pod> = scope.api();
    let params = ListParams::default().labels(selector);
    let placed = &placed;
    eventually(what, STARTUP, || {
        let (pods, params) = (pods.clone(), params.clone());
        async move {
            let list = pods.list(&params).await.ok()?;
            let running: Vec<Pod> = list.items.into_iter().filter(is_running).collect();
            placed(&running).then_some(running)
        }
    })
    .await
}

/// Running pods in the scope matching `selector`, once there are exactly `count` of them, all on
/// `node` if given.
pub async fn running(scope: &Scope, selector: &str, count: usize, node: Option<&str>) -> Vec<Pod> {
    let what = format!(
        "{count} running pods of {selector:?} on {}",
        node.unwrap_or("any node")
    );
    running_where(scope, selector, &what, |pods| {
        pods.len() == count && node.is_none_or(|n| pods.iter().all(|p| node_of(p) == n))
    })
    .await
}

/// Running pods in the scope matching `selector`, once they run on exactly `nodes` (one per
/// entry).
pub async fn running_on(scope: &Scope, selector: &str, nodes: &[&str]) -> Vec<Pod> {
    let mut wanted: Vec<&str> = nodes.to_vec();
    wanted.sort_unstable();
    let what = format!("pods {selector} running on {wanted:?}");
    running_where(scope, selector, &what, |pods| {
        let mut on: Vec<&str> = pods.iter().map(node_of).collect();
        on.sort_unstable();
        on == wanted
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// PodDisruptionBudgets

/// A PodDisruptionBudget `app` that keeps `min_available` pods of app `app`, once the disruption
/// controller has computed it ([`budget_computed`]). So what it refuses is its decision, not a
/// status not computed yet.
pub async fn create_pdb(scope: &Scope, app: &str, min_available: i32, healthy: i32) {
    create::<PodDisruptionBudget>(
        scope,
        json!({
            "metadata": { "name": app },
            "spec": { "minAvailable": min_available, "selector": { "matchLabels": { "app": app } } },
        }),
    )
    .await;
    budget_computed(scope, app, min_available, healthy).await;
}

/// Changes the `minAvailable` of PodDisruptionBudget `app`.
pub async fn set_min_available(scope: &Scope, app: &str, min_available: i32) {
    scope
        .api::<PodDisruptionBudget>()
        .patch(
            app,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "minAvailable": min_available } })),
        )
        .await
        .unwrap_or_else(|e| panic!("setting minAvailable={min_available} on PodDisruptionBudget {app}: {e}"));
}

/// Waits until the disruption controller has computed PodDisruptionBudget `app` for its current
/// generation: `healthy` pods of the app counted, and as many disruptions allowed as that leaves
/// above `min_available`.
pub async fn budget_computed(scope: &Scope, app: &str, min_available: i32, healthy: i32) {
    let allowed = (healthy - min_available).max(0);
    let pdbs = scope.api::<PodDisruptionBudget>();
    eventually(
        &format!("PodDisruptionBudget {app} to count {healthy} healthy pods and allow {allowed} disruptions"),
        Duration::from_secs(60),
        || async {
            let pdb = pdbs.get(app).await.ok()?;
            let status = pdb.status?;
            (status.observed_generation == pdb.metadata.generation
                && status.current_healthy == Some(healthy)
                && status.disruptions_allowed == Some(allowed))
            .then_some(())
        },
    )
    .await;
}
