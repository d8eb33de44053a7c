//! The rendered chart applied to the test cluster, in a scope of its own: the agents run on the
//! scope's nodes, and each release's ServiceAccount may do what the agent needs and nothing more.

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;
use kube::api::PostParams;

use crate::render::{Helm, REPRESENTATIVE, Rendered, SECRET_NOTIFY_URL};
use crate::support::access::{may, request};
use crate::support::cluster::{delete_cluster_rbac, kubeconfig_path, kubectl};
use crate::support::objects::running_on;
use crate::support::observer::{LOCK_ANNOTATION, held_by};
use crate::support::rbac::service_account_client;
use crate::support::scope::Scope;

/// The cluster-wide objects of the releases a test applies, the ClusterRole and ClusterRoleBinding
/// named after each release's full name, deleted on drop; the rest goes with the scope's namespace.
struct ClusterWide(Vec<String>);

impl Drop for ClusterWide {
    fn drop(&mut self) {
        let names: Vec<&str> = self.0.iter().map(String::as_str).collect();
        delete_cluster_rbac(&names);
    }
}

#[tokio::test]
async fn applied_to_the_test_cluster_the_agents_run_on_the_scopes_nodes_with_the_access_they_need() {
    let helm = Helm::new();
    let scope = Scope::new("helm").await;
    let nodes = scope.create_nodes(2).await;
    let on_nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let namespace = scope.namespace.clone();

    // Two releases side by side in the scope's namespace: default values (full name = release
    // name, as with `helm install kured`), and the representative ones. Both only on this scope's
    // nodes; their cluster-wide objects carry the scope's id in their names.
    let plain = format!("kured-{}", scope.id);
    let signal_release = format!("sig-{}", scope.id);
    let signal = format!("{signal_release}-kured");
    let _cluster_wide = ClusterWide(vec![plain.clone(), signal.clone()]);
    let on_scope_nodes = format!("nodeSelector.kured\\.test/scope={}", scope.id);
    let plain_yaml = helm
        .template_yaml(&plain, &namespace, &["--set-string", &on_scope_nodes])
        .unwrap_or_else(|e| panic!("helm template {plain}: {e}"));
    // The test cluster serves no ServiceMonitor API, so the representative values go without one.
    let signal_yaml = helm
        .template_yaml(
            &signal_release,
            &namespace,
            &[
                "-f",
                REPRESENTATIVE,
                "--set",
                "metrics.create=false",
                "--set-string",
                &on_scope_nodes,
            ],
        )
        .unwrap_or_else(|e| panic!("helm template {signal_release}: {e}"));
    // What the representative values refer to.
    kubectl(
        &[
            "--namespace",
            &namespace,
            "create",
            "secret",
            "generic",
            "kured-notify",
            &format!("--from-literal=slack={SECRET_NOTIFY_URL}"),
        ],
        "",
    )
    .await;
    kubectl(
        &[
            "--namespace",
            &namespace,
            "create",
            "configmap",
            "kured-channels",
            "--from-literal=ops=ops",
        ],
        "",
    )
    .await;
    for yaml in [&plain_yaml, &signal_yaml] {
        kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=kured-helm-test",
                "-f",
                "-",
            ],
            yaml,
        )
        .await;
    }
    running_on(&scope, &format!("app.kubernetes.io/instance={plain}"), &on_nodes).await;
    let pods = running_on(
        &scope,
        &format!("app.kubernetes.io/instance={signal_release}"),
        &on_nodes,
    )
    .await;
    let pod = pods[0].spec.as_ref().expect("a pod spec");
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(
        pod.containers[0].args,
        Rendered::parse(&signal_yaml).container().args,
        "the pods run the rendered arguments"
    );

    // Each agent's account may do what the agent does, on its own lock only.
    let dir = tempfile::tempdir().expect("a temp dir");
    let plain_agent = service_account_client(&scope, &plain, &plain, dir.path()).await.1;
    let signal_agent = service_account_client(&scope, &signal, &signal, dir.path())
        .await
        .1;
    let node = nodes[0].as_str();
    let ns = namespace.as_str();
    let allowed = [
        request("get", "/nodes", "", node),
        request("patch", "/nodes", "", node),
        request("patch", "/nodes/status", "", node),
        request("list", "/pods", "", ""),
        request("watch", "/pods", "", ""),
        request("get", "/pods", "kube-system", "any"),
        request("create", "/pods/eviction", ns, "any"),
        request("get", "apps/daemonsets", "kube-system", "any"),
        request("get", "apps/daemonsets", ns, &plain),
        request("update", "apps/daemonsets", ns, &plain),
        request("list", "apps/daemonsets", ns, &plain),
        request("watch", "apps/daemonsets", ns, &plain),
    ];
    let refused = [
        request("update", "/nodes", "", node),
        request("delete", "/nodes", "", node),
        request("update", "/nodes/status", "", node),
        request("delete", "/pods", ns, "any"),
        request("create", "/pods", ns, ""),
        request("get", "/secrets", ns, "kured-notify"),
        request("update", "apps/daemonsets", ns, &signal),
        request("update", "apps/daemonsets", "default", &plain),
        request("patch", "apps/daemonsets", ns, &plain),
        request("delete", "apps/daemonsets", ns, &plain),
        request("list", "apps/daemonsets", ns, ""),
    ];
    for request in &allowed {
        assert!(may(&plain_agent, request).await, "{plain}'s agent may {request}");
    }
    for request in &refused {
        assert!(
            !may(&plain_agent, request).await,
            "{plain}'s agent may not {request}"
        );
    }
    let other_lock = request("update", "apps/daemonsets", ns, &plain);
    assert!(
        !may(&signal_agent, &other_lock).await,
        "{signal}'s agent may not {other_lock}"
    );

    // And for real: the agent writes its own lock, and is refused another release's.
    let as_agent: Api<DaemonSet> = Api::namespaced(plain_agent, ns);
    for (name, may_write) in [(&plain, true), (&signal, false)] {
        let mut ds = scope
            .api::<DaemonSet>()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading DaemonSet {name}: {e}"));
        ds.metadata
            .annotations
            .get_or_insert_default()
            .insert(LOCK_ANNOTATION.to_owned(), held_by(node));
        let written = as_agent.replace(name, &PostParams::default(), &ds).await;
        match (may_write, written) {
            (true, Ok(_)) => {}
            (false, Err(kube::Error::Api(e))) if e.code == 403 => {}
            (_, other) => panic!("{plain}'s agent writing the lock on {name}: {other:?}"),
        }
    }

    // metrics.create against the real cluster, which serves no ServiceMonitor API: helm stops.
    let groups = scope.client.list_api_groups().await.expect("listing API groups");
    assert!(
        !groups.groups.iter().any(|g| g.name == "monitoring.coreos.com"),
        "the test cluster is expected to serve no monitoring.coreos.com API"
    );
    let kubeconfig = format!("--kubeconfig={}", kubeconfig_path().display());
    let refusal = helm
        .template_yaml(
            &format!("mon-{}", scope.id),
            &namespace,
            &["--validate", &kubeconfig, "--set", "metrics.create=true"],
        )
        .expect_err("helm template --validate with metrics.create and no ServiceMonitor API");
    assert!(
        refusal.contains("metrics.create needs the Prometheus Operator's ServiceMonitor API"),
        "{refusal}"
    );
}
