//! Test support for integration tests that run against the local test cluster
//! (`scripts/testcluster up`). Every test gets a [`Scope`]: its own namespace and its own node
//! names, so tests run in parallel on one cluster without seeing each other's objects.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod access;
pub mod faultproxy;
pub mod observer;
pub mod prometheus;
pub mod rig;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Config};

/// Label put on every object a scope creates, so whatever a test leaves behind can be found.
pub const SCOPE_LABEL: &str = "kured.test/scope";

const HOW_TO_START: &str =
    "start the test cluster with `scripts/testcluster up` (or run everything with `scripts/test`)";

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

/// An admin client for the test cluster, checked to be ready.
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

/// A short identifier, unique across the test processes and tests of one run.
fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = (u64::from(std::process::id()) << 32 | u64::from(nanos))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(COUNTER.fetch_add(1, Ordering::Relaxed)));
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = mixed;
    (0..8)
        .map(|_| {
            let c = alphabet[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}

/// One test's corner of the test cluster: a namespace of its own and a prefix for node names.
/// Dropping the scope deletes its namespace and its nodes, also when the test panics.
pub struct Scope {
    pub client: Client,
    pub namespace: String,
    pub id: String,
}

impl Scope {
    /// Creates the scope's namespace. `test` is a short name that makes leftovers recognisable.
    pub async fn new(test: &str) -> Scope {
        let client = admin_client().await;
        let id = unique_id();
        let namespace = format!("{test}-{id}");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some([(SCOPE_LABEL.to_owned(), id.clone())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
        Scope {
            client,
            namespace,
            id,
        }
    }

    /// A typed API for namespaced objects in this scope's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The name of this scope's node number `i`.
    pub fn node_name(&self, i: usize) -> String {
        format!("node-{}-{i}", self.id)
    }

    /// Creates `count` kwok-managed Nodes labelled with this scope and waits until each is Ready.
    pub async fn create_nodes(&self, count: usize) -> Vec<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut names = Vec::with_capacity(count);
        for i in 0..count {
            let name = self.node_name(i);
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name,
                    "annotations": { "kwok.x-k8s.io/node": "fake" },
                    "labels": {
                        SCOPE_LABEL: self.id,
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "type": "kwok",
                    },
                },
            }))
            .expect("a valid Node");
            nodes
                .create(&PostParams::default(), &node)
                .await
                .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
            names.push(name);
        }
        for name in &names {
            wait_for(
                &format!("node {name} to become Ready"),
                Duration::from_secs(60),
                await_condition(nodes.clone(), name, is_node_ready()),
            )
            .await;
        }
        names
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // Async work cannot run in Drop, and the test's runtime may be shutting down (a panic):
        // clean up on a thread with a runtime and a client of its own.
        let (namespace, id) = (self.namespace.clone(), self.id.clone());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            rt.block_on(async {
                let Ok(config) = tokio::time::timeout(Duration::from_secs(5), admin_config()).await else {
                    return;
                };
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                // Namespace first, while kwok still manages the nodes and so finishes the pods'
                // graceful deletion; pods left on a deleted node would linger until pod GC.
                let namespaces: Api<Namespace> = Api::all(client.clone());
                if let Err(e) = namespaces.delete(&namespace, &DeleteParams::background()).await {
                    eprintln!("cleanup: deleting namespace {namespace}: {e}");
                }
                let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while tokio::time::Instant::now() < deadline {
                    match pods.list(&ListParams::default()).await {
                        Ok(list) if list.items.is_empty() => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                        Err(_) => break,
                    }
                }
                let nodes: Api<Node> = Api::all(client);
                let by_scope = ListParams::default().labels(&format!("{SCOPE_LABEL}={id}"));
                if let Err(e) = nodes.delete_collection(&DeleteParams::default(), &by_scope).await {
                    eprintln!("cleanup: deleting nodes of scope {id}: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A node condition: the node reports Ready=True.
pub fn is_node_ready() -> impl kube::runtime::wait::Condition<Node> {
    |node: Option<&Node>| {
        node.and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// Awaits `fut` for at most `limit`; panics naming `what` if it takes longer or fails.
pub async fn wait_for<T, E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("waiting for {what}: {e}"),
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `check` every 200ms until it returns `Some`, for at most `limit`; panics naming `what`.
/// For conditions that span several objects, where a single-object watch does not fit.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a simulated node behaves around its agent (node-init's `NODE_INIT_*` settings). node-init
/// counts in whole seconds.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// How long the node stays NotReady during a reboot.
    pub downtime: Duration,
    /// From a reboot request to the reboot, the agent still running (a host shutting down).
    pub reboot_delay: Duration,
    /// After a reboot, until the new boot ID reaches the Node's status (a kubelet that has not
    /// reported yet); the node's boot ID file and the new agent do not wait.
    pub boot_id_delay: Duration,
    /// Before an agent that exited or was killed is started again.
    pub restart_delay: Duration,
    /// How long an agent stopped by [`SimulatedNode::terminate_agent`] has to exit on SIGTERM
    /// before it is killed.
    pub termination_grace: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            downtime: Duration::from_secs(1),
            reboot_delay: Duration::ZERO,
            boot_id_delay: Duration::ZERO,
            restart_delay: Duration::from_secs(1),
            termination_grace: Duration::from_secs(30),
        }
    }
}

/// A simulated node: `testenv/node-init` as PID 1 of a PID namespace of its own, running the real
/// `kured` agent for a kwok Node and turning the agent's reboot into a simulated one (see
/// DESIGN.md §5). Needs root, for `unshare`. Killed, with everything in it, on drop.
pub struct SimulatedNode {
    /// The kwok Node's name.
    pub name: String,
    child: std::process::Child,
    events: PathBuf,
    log: PathBuf,
    boot_id_file: PathBuf,
    /// The agent's sentinel file; it exists from the start, and a reboot removes it.
    pub sentinel: PathBuf,
    /// The loopback port the agent serves `/metrics` on.
    pub metrics_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for SimulatedNode {
    fn drop(&mut self) {
        // unshare --kill-child passes SIGKILL on to node-init; the namespace dies with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SimulatedNode {
    /// Starts the agent for `node` with the credentials of `kubeconfig`, the lock on DaemonSet
    /// `kured` in the scope's namespace and `--period=3s` (unless `args` set a period), plus
    /// `args` (the reboot method among them). node-init itself, which plays the node's kubelet,
    /// keeps using the admin kubeconfig.
    pub fn start_as(scope: &Scope, node: &str, kubeconfig: &std::path::Path, args: &[&str]) -> SimulatedNode {
        SimulatedNode::start_with(scope, node, kubeconfig, args, &NodeOptions::default())
    }

    /// [`SimulatedNode::start_as`], on a node that behaves as `options` say.
    pub fn start_with(
        scope: &Scope,
        node: &str,
        kubeconfig: &std::path::Path,
        args: &[&str],
        options: &NodeOptions,
    ) -> SimulatedNode {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().expect("a temp dir");
        let sentinel = dir.path().join("reboot-required");
        let events = dir.path().join("events");
        let log = dir.path().join("agent.log");
        let boot_id_file = dir.path().join("boot_id");
        std::fs::write(&sentinel, "").expect("creating the sentinel");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a port")
            .local_addr()
            .expect("addr")
            .port();
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let admin = kubeconfig_path();
        let seconds = |d: Duration| d.as_secs().to_string();
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(repo.join("testenv/node-init"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--ds-namespace={}", scope.namespace))
            .arg("--ds-name=kured")
            // A short period unless the test sets its own.
            .args((!args.iter().any(|a| a.starts_with("--period="))).then_some("--period=3s"))
            .arg(format!("--reboot-sentinel={}", sentinel.display()))
            .arg("--metrics-host=127.0.0.1")
            .arg(format!("--metrics-port={port}"))
            .arg("--log-format=json")
            .args(args)
            .env("NODE_INIT_NODE", node)
            .env("NODE_INIT_AGENT", env!("CARGO_BIN_EXE_kured"))
            .env("NODE_INIT_SENTINEL", &sentinel)
            .env("NODE_INIT_KUBECONFIG", &admin)
            .env("NODE_INIT_LOG", &log)
            .env("NODE_INIT_EVENTS", &events)
            .env("NODE_INIT_BOOT_ID_FILE", &boot_id_file)
            .env("NODE_INIT_DOWNTIME", seconds(options.downtime))
            .env("NODE_INIT_REBOOT_DELAY", seconds(options.reboot_delay))
            .env("NODE_INIT_BOOT_ID_DELAY", seconds(options.boot_id_delay))
            .env("NODE_INIT_RESTART_DELAY", seconds(options.restart_delay))
            .env("NODE_INIT_TERMINATION_GRACE", seconds(options.termination_grace))
            .stdin(Stdio::null())
            .spawn()
            .expect("starting unshare (needs root)");
        SimulatedNode {
            name: node.to_owned(),
            child,
            events,
            log,
            boot_id_file,
            sentinel,
            metrics_port: port,
            _dir: dir,
        }
    }

    /// The lines node-init has written to its events file so far.
    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|l| *l == event).count()
    }

    /// How many reboots node-init has simulated.
    pub fn reboots(&self) -> usize {
        self.count("reboot")
    }

    /// How many reboots were asked for: the first request of each reboot counts, further ones
    /// while it is pending (`reboot_delay`) do not.
    pub fn reboot_requests(&self) -> usize {
        self.count("reboot-requested")
    }

    /// How many agents node-init has started: the first, one after each reboot, and one after
    /// each agent that was killed or exited (unless a reboot started one first).
    pub fn agent_starts(&self) -> usize {
        self.count("agent-start")
    }

    /// How many agents [`SimulatedNode::kill_agent`] has killed.
    pub fn kills(&self) -> usize {
        self.count("kill")
    }

    /// How many agents [`SimulatedNode::terminate_agent`] has stopped, on SIGTERM or killed after
    /// the grace period.
    pub fn terminations(&self) -> usize {
        self.tagged("terminated ").len() + self.count("terminate-timeout")
    }

    /// What follows `tag` in each event line that starts with it.
    fn tagged(&self, tag: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|l| l.strip_prefix(tag))
            .map(str::to_owned)
            .collect()
    }

    /// The exit status of each agent that exited by itself (not killed, not rebooted).
    pub fn agent_exits(&self) -> Vec<String> {
        self.tagged("agent-exit ")
    }

    /// Whether an agent runs now: none does from a reboot, a kill or an exit until node-init
    /// starts the next.
    pub fn agent_running(&self) -> bool {
        self.events()
            .iter()
            .rev()
            .find(|l| *l == "agent-start" || *l == "reboot" || *l == "kill" || l.starts_with("agent-exit "))
            .is_some_and(|l| l == "agent-start")
    }

    /// The node's boot ID as the node itself has it (what its agent reads from
    /// /proc/sys/kernel/random/boot_id); the Node's status may not show it yet.
    pub fn local_boot_id(&self) -> String {
        std::fs::read_to_string(&self.boot_id_file)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The host PID of node-init (PID 1 of the node's namespace): the one child of `unshare`.
    fn node_init_pid(&self) -> u32 {
        let unshare = self.child.id();
        let tasks = std::fs::read_dir(format!("/proc/{unshare}/task"))
            .unwrap_or_else(|e| panic!("listing the tasks of unshare (PID {unshare}): {e}"));
        let children: Vec<u32> = tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
            .flat_map(|list| {
                list.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        match children[..] {
            [pid] => pid,
            _ => panic!(
                "node {}: expected node-init as the one child of unshare (PID {unshare}), found {children:?}",
                self.name
            ),
        }
    }

    /// SIGKILLs the node's agent, which is not a reboot: node-init kills it on SIGUSR1 and starts
    /// it again after `restart_delay`, as a kubelet would. When no agent runs (a reboot or a
    /// restart in progress), the next one is killed the moment it starts. Returns once node-init
    /// has recorded the kill.
    pub async fn kill_agent(&self) {
        let before = self.kills();
        let pid = self.node_init_pid();
        let status = std::process::Command::new("kill")
            .args(["-s", "USR1", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -s USR1 {pid} (node-init of {}) failed",
            self.name
        );
        eventually(
            &format!("node-init of {} to kill the agent", self.name),
            Duration::from_secs(60),
            move || async move { (self.kills() > before).then_some(()) },
        )
        .await;
    }

    /// Stops the node's agent as a kubelet stops a pod (a DaemonSet update, a pod deleted):
    /// SIGTERM, then SIGKILL once the grace period has passed. Returns node-init's event for it:
    /// `terminated <exit status>` when the agent exited by itself, or `terminate-timeout`.
    pub async fn terminate_agent(&self) -> String {
        let before = self.terminations();
        let pid = self.node_init_pid();
        let status = std::process::Command::new("kill")
            .args(["-s", "USR2", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -s USR2 {pid} (node-init of {}) failed",
            self.name
        );
        eventually(
            &format!("node-init of {} to stop the agent", self.name),
            Duration::from_secs(120),
            move || async move { (self.terminations() > before).then_some(()) },
        )
        .await;
        self.events()
            .into_iter()
            .rfind(|l| l.starts_with("terminate"))
            .unwrap_or_default()
    }

    /// The status code of the agent's HTTP server's answer to `GET path` (`/healthz`,
    /// `/metrics`), read in full; or why it did not arrive within `limit`.
    pub async fn probe(&self, path: &str, limit: Duration) -> Result<u16, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
                .await
                .map_err(|e| format!("connecting to port {}: {e}", self.metrics_port))?;
            let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("sending the request: {e}"))?;
            let mut response = Vec::new();
            stream
                .read_to_end(&mut response)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            let response = String::from_utf8_lossy(&response);
            response
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {response:?}"))
        };
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
    }

    /// The agent's `/metrics`, or why they could not be read.
    pub fn metrics(&self) -> Result<String, String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).map_err(|e| {
            format!(
                "connecting to the agent's metrics port {}: {e}",
                self.metrics_port
            )
        })?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .map_err(|e| format!("asking for /metrics: {e}"))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| format!("reading /metrics: {e}"))?;
        match response.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") => {
                Ok(body.to_owned())
            }
            _ => Err(format!("unexpected /metrics response: {response}")),
        }
    }

    /// Everything the agents on this node have written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits, for at most `limit`, until the agents on this node have logged a line containing
    /// `text`, and returns the first such line; panics with the log's last lines otherwise.
    pub async fn logged(&self, text: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {limit:?} waiting for the agent on {} to log {text:?}; last log lines:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last `lines` lines of the agent's output, for a failure report.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl SimulatedNode {
    /// The boot IDs node-init gave the Node, first boot first.
    pub fn boot_ids(&self) -> Vec<String> {
        self.tagged("boot ")
    }
}

/// Writes a kubeconfig for ServiceAccount `service_account` of the scope's namespace into `dir`,
/// with a token from the TokenRequest API (valid for an hour) and the test cluster's server and CA,
/// and returns its path: the credentials an agent running in a pod under that account would have.
pub async fn service_account_kubeconfig(
    scope: &Scope,
    service_account: &str,
    dir: &std::path::Path,
) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({ "spec": { "audiences": [], "expirationSeconds": 3600 } }))
            .expect("a valid TokenRequest");
    let issued: TokenRequest = scope
        .api::<ServiceAccount>()
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("issuing a token for ServiceAccount {service_account}: {e}"));
    let token = issued
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest's status");
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
        "users": [{ "name": service_account, "user": { "token": token } }],
        "contexts": [{
            "name": service_account,
            "context": { "cluster": cluster.name, "user": service_account },
        }],
        "current-context": service_account,
    });
    let path = dir.join(format!("{service_account}.kubeconfig"));
    std::fs::write(&path, kubeconfig.to_string()).expect("writing the ServiceAccount's kubeconfig");
    path
}

/// ServiceAccount `name` in the scope, bound to a Role of the same name that grants `rules` (JSON,
/// as in a Role), and a client with nothing but a token of it (its kubeconfig written into `dir`).
/// The binding takes effect through the API server's RBAC informer, a moment later: callers wait
/// for what they need.
pub async fn service_account_with_role(
    scope: &Scope,
    name: &str,
    rules: serde_json::Value,
    dir: &std::path::Path,
) -> Client {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    create::<ServiceAccount>(scope, serde_json::json!({ "metadata": { "name": name } })).await;
    create::<Role>(
        scope,
        serde_json::json!({ "metadata": { "name": name }, "rules": rules }),
    )
    .await;
    create::<RoleBinding>(
        scope,
        serde_json::json!({
            "metadata": { "name": name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": scope.namespace }],
        }),
    )
    .await;
    client_from_kubeconfig(&service_account_kubeconfig(scope, name, dir).await).await
}

/// A kubeconfig (written into `dir`) and a client with nothing but a token of the scope's
/// ServiceAccount `service_account`, once its bindings have reached the API server's authorizer
/// (they take effect through an informer): it may read Nodes (its ClusterRoleBinding) and update
/// DaemonSet `daemonset` in the scope's namespace, the lock (its RoleBinding).
pub async fn service_account_client(
    scope: &Scope,
    service_account: &str,
    daemonset: &str,
    dir: &std::path::Path,
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

/// A client with the credentials of kubeconfig file `path`, not retrying by itself.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("reading a kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    config.default_retry = false;
    Client::try_from(config).expect("a client")
}

/// What the agents of a scope share, as in a real install of deploy/kured.yaml: DaemonSet `kured`
/// in the scope's namespace, which carries their lock, and ServiceAccount `kured` there, bound to
/// the manifest's own RBAC rules, whose token is all the agents authenticate with
/// (`scripts/testcluster agent-kubeconfig`). A permission the agent needs and the manifest lacks
/// fails the test. The cluster-wide RBAC objects are deleted on drop (the rest goes with the
/// namespace).
pub struct Agents {
    /// A kubeconfig holding nothing but the ServiceAccount's token.
    pub kubeconfig: PathBuf,
    namespace: String,
    _dir: tempfile::TempDir,
}

impl Agents {
    pub async fn new(scope: &Scope) -> Agents {
        create_lock_daemonset(scope).await;
        let dir = tempfile::tempdir().expect("a temp dir");
        let kubeconfig = dir.path().join("kured.kubeconfig");
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let output = tokio::process::Command::new(repo.join("scripts/testcluster"))
            .arg("agent-kubeconfig")
            .arg(&scope.namespace)
            .arg(&kubeconfig)
            .output()
            .await
            .expect("running scripts/testcluster agent-kubeconfig");
        assert!(
            output.status.success(),
            "scripts/testcluster agent-kubeconfig {} failed: {}",
            scope.namespace,
            String::from_utf8_lossy(&output.stderr)
        );
        Agents {
            kubeconfig,
            namespace: scope.namespace.clone(),
            _dir: dir,
        }
    }

    /// Starts the agent for `node` with the ServiceAccount's token, the lock on DaemonSet `kured`
    /// in the scope's namespace, and `--reboot-method=signal`, plus `extra_args`.
    pub fn start(&self, scope: &Scope, node: &str, extra_args: &[&str]) -> SimulatedNode {
        self.start_with(scope, node, &NodeOptions::default(), extra_args)
    }

    /// [`Agents::start`], on a node that behaves as `options` say.
    pub fn start_with(
        &self,
        scope: &Scope,
        node: &str,
        options: &NodeOptions,
        extra_args: &[&str],
    ) -> SimulatedNode {
        self.launch(scope, node, &self.kubeconfig, options, extra_args)
    }

    /// Like [`Agents::start`], but the agent reaches the API server through `proxy`, with the
    /// same token.
    pub fn start_through(
        &self,
        scope: &Scope,
        node: &str,
        proxy: &faultproxy::FaultProxy,
        extra_args: &[&str],
    ) -> SimulatedNode {
        let kubeconfig = self
            .kubeconfig
            .with_file_name(format!("kured-via-{}.kubeconfig", proxy.port));
        proxy.kubeconfig(&self.kubeconfig, &kubeconfig);
        self.launch(scope, node, &kubeconfig, &NodeOptions::default(), extra_args)
    }

    fn launch(
        &self,
        scope: &Scope,
        node: &str,
        kubeconfig: &std::path::Path,
        options: &NodeOptions,
        extra_args: &[&str],
    ) -> SimulatedNode {
        let args = [&["--reboot-method=signal"], extra_args].concat();
        SimulatedNode::start_with(scope, node, kubeconfig, &args, options)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        let result = std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig_path().display()))
            .args(["delete", "clusterrole,clusterrolebinding", "--wait=false", "-l"])
            .arg(format!("kured.test/agent-rbac={}", self.namespace))
            .stdout(std::process::Stdio::null())
            .status();
        if !result.is_ok_and(|s| s.success()) {
            eprintln!(
                "cleanup: deleting the agents' ClusterRole and ClusterRoleBinding of {} failed",
                self.namespace
            );
        }
    }
}

/// Creates the namespaced object `object` (JSON, as in a manifest) in the scope's namespace.
pub async fn create<K>(scope: &Scope, object: serde_json::Value) -> K
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

/// The DaemonSet `kured` in the scope's namespace, which carries the lock of the scope's agents.
/// Its pods never run: the agents run under node-init instead. Returns once the DaemonSet
/// controller has written the status of this generation, so that no write of its own changes
/// the object's resourceVersion under a test afterwards.
pub async fn create_lock_daemonset(scope: &Scope) {
    create::<k8s_openapi::api::apps::v1::DaemonSet>(
        scope,
        serde_json::json!({
            "metadata": { "name": "kured" },
            "spec": {
                "selector": { "matchLabels": { "app": "kured" } },
                "template": {
                    "metadata": { "labels": { "app": "kured" } },
                    "spec": {
                        // The agents run as node-init's children here, not as pods.
                        "nodeSelector": { "kured.test/no-such-node": "true" },
                        "containers": [{ "name": "kured", "image": "registry.invalid/kured:test" }],
                    },
                },
            },
        }),
    )
    .await;
    let api = scope.api::<k8s_openapi::api::apps::v1::DaemonSet>();
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

/// A Deployment `name` of `replicas` pods on the scope's nodes (or on `node` only), each pod
/// taking a second to terminate.
pub async fn create_deployment(scope: &Scope, name: &str, replicas: i32, node: Option<&str>) {
    let mut selector = serde_json::json!({ SCOPE_LABEL: scope.id });
    if let Some(node) = node {
        selector["kubernetes.io/hostname"] = serde_json::json!(node);
    }
    create::<k8s_openapi::api::apps::v1::Deployment>(
        scope,
        serde_json::json!({
            "metadata": { "name": name },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": name } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": {
                        "nodeSelector": selector,
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{ "name": "app", "image": "registry.invalid/app:1" }],
                    },
                },
            },
        }),
    )
    .await;
}

/// A PodDisruptionBudget `app` that keeps `min_available` pods of app `app`, once the disruption
/// controller has computed it for its current generation: `healthy` pods of the app counted, and
/// as many disruptions allowed as that leaves above `min_available`. So what it refuses is its
/// decision, not a status not computed yet.
pub async fn create_pdb(scope: &Scope, app: &str, min_available: i32, healthy: i32) {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    create::<PodDisruptionBudget>(
        scope,
        serde_json::json!({
            "metadata": { "name": app },
            "spec": { "minAvailable": min_available, "selector": { "matchLabels": { "app": app } } },
        }),
    )
    .await;
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

/// The node's boot ID as its kubelet (here: node-init) reports it.
pub fn boot_id(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .unwrap_or_default()
}

/// Cordons (`true`) or uncordons node `node` as an operator would, with `kubectl cordon`.
pub async fn set_unschedulable(scope: &Scope, node: &str, unschedulable: bool) {
    Api::<Node>::all(scope.client.clone())
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({ "spec": { "unschedulable": unschedulable } })),
        )
        .await
        .unwrap_or_else(|e| panic!("setting unschedulable={unschedulable} on {node}: {e}"));
}

/// Whether the node is cordoned.
pub fn unschedulable(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// The boot ID node-init gives a simulated node when it starts, once it is there.
pub async fn first_boot_id(scope: &Scope, name: &str) -> String {
    let nodes: Api<Node> = Api::all(scope.client.clone());
    eventually("node-init to set a boot ID", Duration::from_secs(30), || {
        let nodes = nodes.clone();
        async move {
            nodes
                .get(name)
                .await
                .ok()
                .map(|n| boot_id(&n))
                .filter(|b| !b.is_empty())
        }
    })
    .await
}

/// Runs kubectl as the test cluster's admin with `stdin` as its input; returns its stdout and
/// panics with its stderr if it fails.
pub async fn kubectl(args: &[&str], stdin: &str) -> String {
    use std::process::Stdio;
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

/// Running pods in the scope matching `labels`, once they run on exactly `nodes` (one per entry).
pub async fn running_on(scope: &Scope, labels: &str, nodes: &[&str]) -> Vec<k8s_openapi::api::core::v1::Pod> {
    use k8s_openapi::api::core::v1::Pod;
    fn is_running(pod: &Pod) -> bool {
        pod.metadata.deletion_timestamp.is_none()
            && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    }
    fn node_of(pod: &Pod) -> String {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    }
    let pods: Api<Pod> = scope.api();
    let mut wanted: Vec<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
    wanted.sort();
    eventually(
        &format!("pods {labels} running on {wanted:?}"),
        Duration::from_secs(60),
        || {
            let (pods, wanted) = (pods.clone(), wanted.clone());
            async move {
                let list = pods.list(&ListParams::default().labels(labels)).await.ok()?;
                let running: Vec<Pod> = list.items.into_iter().filter(is_running).collect();
                let mut on: Vec<String> = running.iter().map(node_of).collect();
                on.sort();
                (on == wanted).then_some(running)
            }
        },
    )
    .await
}

/// The kured binary, with no `KURED_*` variable of the caller's environment: tests set what they
/// need.
pub fn kured() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kured"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KURED_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Whether the agent accepts `args` and the environment `env` (and nothing else of the caller's
/// environment). It validates them all at start; valid ones get it as far as reading its
/// kubeconfig, given here as a file that does not exist (exit 1); a bad flag, value or variable
/// stops it before that (exit 2, naming it), which is the error returned.
pub fn agent_accepts<A, E>(args: A, env: E) -> Result<(), String>
where
    A: IntoIterator,
    A::Item: AsRef<std::ffi::OsStr>,
    E: IntoIterator<Item = (String, String)>,
{
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kured"))
        .args(args)
        .arg("--kubeconfig=/nonexistent/kubeconfig")
        .env_clear()
        .envs(env)
        .output()
        .expect("running kured");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(1) && stderr.contains("--kubeconfig /nonexistent/kubeconfig") {
        Ok(())
    } else {
        Err(format!("exit {:?}: {stderr}", out.status.code()))
    }
}
