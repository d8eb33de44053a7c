//! Reaching the test cluster that `scripts/testcluster up` runs: its admin kubeconfig, clients,
//! kubectl and the script itself, and the failure that says how to start the cluster when it is
//! not running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

const HOW_TO_START: &str =
    "start the test cluster with `scripts/testcluster up` (or run everything with `scripts/test`)";

/// The repository, where the scripts and the manifests are.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the admin kubeconfig written by `scripts/testcluster up`.
pub fn kubeconfig_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KURED_TEST_KUBECONFIG") {
        return PathBuf::from(path);
    }
    let dir = std::env::var_os("KURED_TESTCLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/kured-testcluster"));
    dir.join("admin.kubeconfig")
}

/// The test cluster's run directory (data, pid files, logs): where its admin kubeconfig is.
pub fn run_dir() -> PathBuf {
    kubeconfig_path()
        .parent()
        .map(PathBuf::from)
        .expect("the test cluster's run directory")
}

/// Client configuration for the test cluster's admin user. Panics, saying how to start the test
/// cluster, when it is not running.
pub async fn admin_config() -> Config {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "integration tests need the test cluster, but its kubeconfig {} cannot be read ({e}): {HOW_TO_START}",
            path.display()
        )
    });
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "kubeconfig {} is not usable ({e}): {HOW_TO_START}",
                path.display()
            )
        });
    // kube's default retry layer silently retries 429 (up to 15 times, backing off to minutes);
    // an eviction refused by a PodDisruptionBudget must reach the test as the 429 it is.
    config.default_retry = false;
    config
}

/// An admin client for the test cluster, checked to be ready; each call gives a client of its
/// own, as a separate agent would have.
pub async fn admin_client() -> Client {
    let client = Client::try_from(admin_config().await).expect("building a client for the test cluster");
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("a valid request");
        client.request_text(req).await
    })
    .await;
    match ready {
        Ok(Ok(body)) if body.trim() == "ok" => client,
        Ok(Ok(body)) => panic!("test cluster API server is not ready ({body}): {HOW_TO_START}"),
        Ok(Err(e)) => panic!("test cluster API server does not answer ({e}): {HOW_TO_START}"),
        Err(_) => panic!("test cluster API server did not answer /readyz within 10s: {HOW_TO_START}"),
    }
}

/// The client configuration of kubeconfig file `path`, not retrying by itself.
pub async fn config_from_kubeconfig(path: &Path) -> Config {
    let kubeconfig =
        Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    config.default_retry = false;
    config
}

/// A client with the credentials of kubeconfig file `path`, not retrying by itself.
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    Client::try_from(config_from_kubeconfig(path).await).expect("a client")
}

/// Runs kubectl as the test cluster's admin with `stdin` as its input; returns its stdout and
/// panics with its stderr if it fails.
pub async fn kubectl(args: &[&str], stdin: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig_path().display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running kubectl");
    let mut input = child.stdin.take().expect("kubectl's stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("writing to kubectl");
    drop(input);
    let out = child.wait_with_output().await.expect("kubectl's output");
    assert!(
        out.status.success(),
        "kubectl {}: {}\ninput:\n{stdin}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 from kubectl")
}

/// Deletes the ClusterRoles and ClusterRoleBindings that `selection` names (their names, or `-l`
/// and a label selector), without waiting; for a `Drop`, so a failure is only reported. The
/// namespaced objects of a test go with its scope's namespace; these are cluster-wide.
pub fn delete_cluster_rbac(selection: &[&str]) {
    delete_cluster_wide("clusterrolebinding,clusterrole", selection);
}

/// Deletes the cluster-wide objects of `kinds` (kubectl's comma-separated resource list) that
/// `selection` names, as [`delete_cluster_rbac`] does.
pub fn delete_cluster_wide(kinds: &str, selection: &[&str]) {
    let result = std::process::Command::new("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig_path().display()))
        .args(["delete", kinds, "--ignore-not-found", "--wait=false"])
        .args(selection)
        .stdout(Stdio::null())
        .status();
    if !result.is_ok_and(|s| s.success()) {
        eprintln!("cleanup: deleting the {kinds} {} failed", selection.join(" "));
    }
}

/// Runs `scripts/testcluster` with `args` on the test cluster the tests use; panics with its
/// stderr if it fails.
pub async fn testcluster(args: &[&str]) {
    let out = tokio::process::Command::new(repo().join("scripts/testcluster"))
        .args(args)
        .env("KURED_TESTCLUSTER_DIR", run_dir())
        .output()
        .await
        .expect("running scripts/testcluster");
    assert!(
        out.status.success(),
        "scripts/testcluster {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
