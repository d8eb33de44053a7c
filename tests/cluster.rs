//! The test cluster's real parts do what the agent relies on: kwok nodes become Ready, workloads
//! run on them, PodDisruptionBudgets guard evictions, and RBAC is enforced.
//! Needs `scripts/testcluster up`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{EvictParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::objects::{
    budget_computed, create_deployment, create_pdb, is_ready, is_running, running, set_min_available,
};
use support::rbac::service_account_with_role;
use support::scope::Scope;
use support::wait::{eventually, wait_for};

/// Running pods of app `app` in the scope, once there are exactly `count` of them.
async fn running_pods(scope: &Scope, app: &str, count: usize) -> Vec<Pod> {
    running(scope, &format!("app={app}"), count, None).await
}

#[tokio::test]
async fn kwok_node_becomes_ready_and_keeps_heartbeating() {
    let scope = Scope::new("node-ready").await;
    let names = scope.create_nodes(1).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let node = nodes.get(&names[0]).await.expect("reading the node back");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready.status, "True");
    let first_heartbeat = ready.last_heartbeat_time.expect("a heartbeat time").0;

    // kwok keeps heartbeating, so the node-lifecycle controller does not mark the node NotReady.
    wait_for(
        "a newer heartbeat",
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(nodes.clone(), &names[0], |n: Option<&Node>| {
            n.and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_heartbeat_time.as_ref())
                .is_some_and(|t| t.0 > first_heartbeat)
        }),
    )
    .await;
}

#[tokio::test]
async fn deployment_pods_run_on_kwok_nodes() {
    let scope = Scope::new("deploy").await;
    let nodes: BTreeSet<String> = scope.create_nodes(2).await.into_iter().collect();
    create_deployment(&scope, "web", 2, None).await;
    let pods = running_pods(&scope, "web", 2).await;
    for pod in &pods {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("a scheduled pod");
        assert!(
            nodes.contains(&node),
            "pod scheduled on {node}, outside this test's nodes {nodes:?}"
        );
        assert!(
            is_ready(pod),
            "pod {:?} is Running but not Ready",
            pod.metadata.name
        );
    }
}

/// The node-lifecycle controller marks every pod of a node that missed its heartbeats unready
/// (a status patch setting Ready=False). A kubelet makes them Ready again once the node is back;
/// so must kwok, or a PodDisruptionBudget over those pods stays exhausted and every later drain
/// stalls.
#[tokio::test]
async fn a_running_pod_marked_unready_becomes_ready_again() {
    let scope = Scope::new("pod-ready-again").await;
    scope.create_nodes(1).await;
    create_deployment(&scope, "web", 1, None).await;
    let pod = running_pods(&scope, "web", 1).await.remove(0);
    let name = pod.metadata.name.clone().expect("a named pod");
    assert!(is_ready(&pod), "pod {name} is Running but not Ready");
    let pods: Api<Pod> = scope.api();
    let unready = json!({ "status": { "conditions": [{ "type": "Ready", "status": "False", "reason": "NodeNotReady" }] } });
    let patched = pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(unready))
        .await
        .expect("marking the pod unready, as the node-lifecycle controller does");
    assert!(!is_ready(&patched), "the patch did not mark pod {name} unready");
    wait_for(
        "the pod to be Ready again",
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(pods.clone(), &name, |p: Option<&Pod>| p.is_some_and(is_ready)),
    )
    .await;
}

#[tokio::test]
async fn pod_disruption_budget_refuses_eviction_until_relaxed() {
    let scope = Scope::new("pdb").await;
    scope.create_nodes(2).await;
    create_deployment(&scope, "guarded", 2, None).await;
    let pods = running_pods(&scope, "guarded", 2).await;

    // The disruption controller must have computed the budget, so a refusal below is its decision.
    create_pdb(&scope, "guarded", 2, 2).await;

    let victim = pods[0].metadata.name.clone().expect("a pod name");
    let pod_api: Api<Pod> = scope.api();
    match pod_api.evict(&victim, &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "eviction refused with {status:?}");
            assert!(
                status.message.contains("disruption budget"),
                "refusal names the budget: {status:?}"
            );
        }
        other => {
            panic!("eviction of {victim} under minAvailable=2 should be refused with 429, got {other:?}")
        }
    }

    set_min_available(&scope, "guarded", 1).await;
    // The disruption controller allows 1 disruption.
    budget_computed(&scope, "guarded", 1, 2).await;
    pod_api
        .evict(&victim, &EvictParams::default())
        .await
        .expect("eviction allowed by minAvailable=1");

    // The ReplicaSet controller replaces the evicted pod.
    let old_uids: BTreeSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    let replacement = eventually("a replacement pod", Duration::from_secs(60), || {
        let pod_api = pod_api.clone();
        let old_uids = old_uids.clone();
        async move {
            let list = pod_api
                .list(&ListParams::default().labels("app=guarded"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|p| is_running(p) && p.metadata.uid.as_ref().is_some_and(|u| !old_uids.contains(u)))
        }
    })
    .await;
    assert_ne!(replacement.metadata.name.as_deref(), Some(victim.as_str()));
    running_pods(&scope, "guarded", 2).await;
}

#[tokio::test]
async fn rbac_is_enforced_for_a_service_account() {
    let scope = Scope::new("rbac").await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let narrow = service_account_with_role(
        &scope,
        "narrow",
        json!([{ "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"] }]),
        dir.path(),
    )
    .await;

    // Inside the Role: allowed. RoleBindings take effect through the RBAC informer, so allow a moment.
    let own_pods: Api<Pod> = Api::namespaced(narrow.clone(), &scope.namespace);
    eventually("the Role to take effect", Duration::from_secs(10), || {
        let own_pods = own_pods.clone();
        async move { own_pods.list(&ListParams::default()).await.ok() }
    })
    .await;

    // Outside it: 403 for another namespace, cluster-scoped objects, and verbs not granted.
    let forbidden = |what: &str, result: Result<(), kube::Error>| match result {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{what}: {status:?}"),
        other => panic!("{what} should be forbidden, got {other:?}"),
    };
    let other_ns: Api<Pod> = Api::namespaced(narrow.clone(), "default");
    forbidden(
        "listing pods in another namespace",
        other_ns.list(&ListParams::default()).await.map(drop),
    );
    let nodes: Api<Node> = Api::all(narrow.clone());
    forbidden(
        "listing nodes",
        nodes.list(&ListParams::default()).await.map(drop),
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "sneaky" },
        "spec": { "containers": [{ "name": "c", "image": "registry.invalid/c:1" }] },
    }))
    .expect("a valid Pod");
    forbidden(
        "creating a pod",
        own_pods.create(&PostParams::default(), &pod).await.map(drop),
    );
    let namespaces: Api<Namespace> = Api::all(narrow);
    forbidden(
        "deleting its own namespace",
        namespaces
            .delete(&scope.namespace, &Default::default())
            .await
            .map(drop),
    );
}
