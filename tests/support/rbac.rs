//! RBAC as the agents meet it: ServiceAccounts whose tokens are all a client has, bound to the
//! rules a test gives or a manifest holds, and the clients and kubeconfigs made from those tokens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::PostParams;
use kube::config::Kubeconfig;
use kube::{Client, ResourceExt};

use super::access;
use super::cluster::{client_from_kubeconfig, kubeconfig_path};
use super::objects::create;
use super::scope::Scope;
use super::wait::eventually;

/// Writes a kubeconfig for ServiceAccount `service_account` of the scope's namespace into `dir`,
/// with a token from the TokenRequest API (valid for an hour) and the test cluster's server and CA,
/// and returns its path: the credentials an agent running in a pod under that account would have.
pub async fn service_account_kubeconfig(scope: &Scope, service_account: &str, dir: &Path) -> PathBuf {
    let token = issue_token(scope, service_account, serde_json::json!({})).await;
    token_kubeconfig(
        &token,
        service_account,
        &dir.join(format!("{service_account}.kubeconfig")),
    )
}

/// [`service_account_kubeconfig`], with a token bound to `pod` (which runs under that account),
/// as the kubelet mounts into the pod: valid only while the pod exists, and naming the pod and its
/// node in the user's extra fields (`authentication.kubernetes.io/node-name`).
pub async fn pod_bound_kubeconfig(scope: &Scope, service_account: &str, pod: &Pod, dir: &Path) -> PathBuf {
    let name = pod.name_any();
    let bound = serde_json::json!({
        "boundObjectRef": { "kind": "Pod", "apiVersion": "v1", "name": name, "uid": pod.uid() },
    });
    let token = issue_token(scope, service_account, bound).await;
    token_kubeconfig(
        &token,
        service_account,
        &dir.join(format!("{service_account}-{name}.kubeconfig")),
    )
}

/// A token of the scope's ServiceAccount `service_account` from the TokenRequest API, valid for an
/// hour, for the API server's own audience; `spec` adds to the request's spec.
async fn issue_token(scope: &Scope, service_account: &str, spec: serde_json::Value) -> String {
    let mut request = serde_json::json!({ "spec": { "audiences": [], "expirationSeconds": 3600 } });
    if let (Some(base), serde_json::Value::Object(extra)) = (request["spec"].as_object_mut(), spec) {
        base.extend(extra);
    }
    let request: TokenRequest = serde_json::from_value(request).expect("a valid TokenRequest");
    let issued: TokenRequest = scope
        .api::<ServiceAccount>()
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("issuing a token for ServiceAccount {service_account}: {e}"));
    issued
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest's status")
}

/// Writes to `path` a kubeconfig with nothing but `token` as user `user`, and the test cluster's
/// server and CA from the admin kubeconfig; returns `path`.
fn token_kubeconfig(token: &str, user: &str, path: &Path) -> PathBuf {
    let admin = Kubeconfig::read_from(kubeconfig_path()).expect("reading the admin kubeconfig");
    let cluster = admin
        .clusters
        .first()
        .expect("a cluster in the admin kubeconfig")
        .clone();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": user,
            "context": { "cluster": cluster.name, "user": user },
        }],
        "current-context": user,
    });
    std::fs::write(path, kubeconfig.to_string()).expect("writing the ServiceAccount's kubeconfig");
    path.to_owned()
}

/// ServiceAccount `name` in the scope, bound to a Role of the same name that grants `rules` (JSON,
/// as in a Role), and a client with nothing but a token of it (its kubeconfig written into `dir`).
/// The binding takes effect through the API server's RBAC informer, a moment later: callers wait
/// for what they need.
pub async fn service_account_with_role(
    scope: &Scope,
    name: &str,
    rules: serde_json::Value,
    dir: &Path,
) -> Client {
    create::<ServiceAccount>(scope, serde_json::json!({ "metadata": { "name": name } })).await;
    bind_role(scope, name, name, rules).await;
    client_from_kubeconfig(&service_account_kubeconfig(scope, name, dir).await).await
}

/// A Role `role` in the scope that grants `rules` (JSON, as in a Role), bound to the scope's
/// ServiceAccount `service_account`; it takes effect a moment later, as for
/// [`service_account_with_role`].
pub async fn bind_role(scope: &Scope, role: &str, service_account: &str, rules: serde_json::Value) {
    create::<Role>(
        scope,
        serde_json::json!({ "metadata": { "name": role }, "rules": rules }),
    )
    .await;
    create::<RoleBinding>(
        scope,
        serde_json::json!({
            "metadata": { "name": role },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role },
            "subjects": [{ "kind": "ServiceAccount", "name": service_account, "namespace": scope.namespace }],
        }),
    )
    .await;
}

/// The namespaced rules the README gives for `--lock-backend=lease` with the lock object `kured`:
/// `get`, `update`, `list` and `watch` on that Lease, `create` on leases (RBAC cannot name an
/// object that does not exist yet), and on DaemonSets only `get`.
pub fn lease_rules() -> serde_json::Value {
    serde_json::json!([
        { "apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"] },
        {
            "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["kured"],
            "verbs": ["get", "update", "list", "watch"],
        },
        { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"] },
    ])
}

/// A kubeconfig (written into `dir`) and a client with nothing but a token of the scope's
/// ServiceAccount `service_account`, once its bindings have reached the API server's authorizer
/// (they take effect through an informer): it may read Nodes (its ClusterRoleBinding) and update
/// DaemonSet `daemonset` in the scope's namespace, the lock (its RoleBinding).
pub async fn service_account_client(
    scope: &Scope,
    service_account: &str,
    daemonset: &str,
    dir: &Path,
) -> (PathBuf, Client) {
    let kubeconfig = service_account_kubeconfig(scope, service_account, dir).await;
    let client = client_from_kubeconfig(&kubeconfig).await;
    let nodes = access::request("get", "/nodes", "", "");
    let lock = access::request("update", "apps/daemonsets", &scope.namespace, daemonset);
    eventually(
        &format!("{service_account}'s bindings to take effect"),
        Duration::from_secs(30),
        || async { (access::may(&client, &nodes).await && access::may(&client, &lock).await).then_some(()) },
    )
    .await;
    (kubeconfig, client)
}
