//! The agents of a scope as a real install of deploy/kured.yaml has them: the lock's DaemonSet,
//! and a ServiceAccount bound to the manifest's own RBAC rules, whose token is all an agent on a
//! simulated node authenticates with; and [`Fleet`], the setting of a test of whole agents.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::Api;
use kube::api::{ListParams, PostParams};

use super::access;
use super::cluster::{client_from_kubeconfig, delete_cluster_rbac, kubectl, testcluster};
use super::faultproxy::FaultProxy;
use super::objects::create_lock_daemonset;
use super::observer::read_lock;
use super::rbac::{bind_role, lease_rules};
use super::scope::Scope;
use super::simulated::{NodeOptions, SimulatedNode};
use super::wait::{eventually, eventually_or};

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
        let path = kubeconfig.display().to_string();
        testcluster(&["agent-kubeconfig", &scope.namespace, &path]).await;
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
        proxy: &FaultProxy,
        extra_args: &[&str],
    ) -> SimulatedNode {
        self.start_through_with(scope, node, proxy, &NodeOptions::default(), extra_args)
    }

    /// [`Agents::start_through`], on a node that behaves as `options` say.
    pub fn start_through_with(
        &self,
        scope: &Scope,
        node: &str,
        proxy: &FaultProxy,
        options: &NodeOptions,
        extra_args: &[&str],
    ) -> SimulatedNode {
        let kubeconfig = self.kubeconfig_through(proxy);
        self.launch(scope, node, &kubeconfig, options, extra_args)
    }

    /// A kubeconfig with the ServiceAccount's token that reaches the API server through `proxy`.
    pub fn kubeconfig_through(&self, proxy: &FaultProxy) -> PathBuf {
        let kubeconfig = self
            .kubeconfig
            .with_file_name(format!("kured-via-{}.kubeconfig", proxy.port));
        proxy.kubeconfig(&self.kubeconfig, &kubeconfig);
        kubeconfig
    }

    fn launch(
        &self,
        scope: &Scope,
        node: &str,
        kubeconfig: &Path,
        options: &NodeOptions,
        extra_args: &[&str],
    ) -> SimulatedNode {
        let args = [&["--reboot-method=signal"], extra_args].concat();
        SimulatedNode::start_with(scope, node, kubeconfig, &args, options)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        delete_cluster_rbac(&["-l", &format!("kured.test/agent-rbac={}", self.namespace)]);
    }
}

/// The setting of a test of whole agents: a scope with `count` kwok nodes and the agents' lock
/// and credentials ([`Agents`]). No agent runs until the test starts one.
pub struct Fleet {
    pub scope: Scope,
    /// The nodes' names, node 0 first.
    pub names: Vec<String>,
    pub agents: Agents,
}

impl Fleet {
    pub async fn new(test: &str, count: usize) -> Fleet {
        let scope = Scope::new(test).await;
        let names = scope.create_nodes(count).await;
        let agents = Agents::new(&scope).await;
        Fleet { scope, names, agents }
    }

    /// [`Fleet::new`], whose agents have the shipped manifest's cluster-wide rules, and in the
    /// namespace the Lease's rules ([`lease_rules`]) instead of the manifest's Role: no write on
    /// any DaemonSet, as for `--lock-backend=lease`.
    pub async fn on_lease(test: &str, count: usize) -> Fleet {
        let fleet = Fleet::new(test, count).await;
        let scope = &fleet.scope;
        kubectl(
            &["-n", &scope.namespace, "delete", "rolebinding,role", "kured"],
            "",
        )
        .await;
        bind_role(scope, "kured-lease", "kured", lease_rules()).await;
        fleet.lease_rbac_in_effect(false).await;
        fleet
    }

    /// Waits until the fleet's ServiceAccount may create leases in the scope and, when
    /// `daemonset_update` says so, may or may not update DaemonSet `kured`.
    pub async fn lease_rbac_in_effect(&self, daemonset_update: bool) {
        let client = client_from_kubeconfig(&self.agents.kubeconfig).await;
        let ns = &self.scope.namespace;
        let create_lease = access::request("create", "coordination.k8s.io/leases", ns, "");
        let update_ds = access::request("update", "apps/daemonsets", ns, "kured");
        eventually(
            "the agents' RBAC to take effect",
            Duration::from_secs(30),
            || async {
                (access::may(&client, &create_lease).await
                    && access::may(&client, &update_ds).await == daemonset_update)
                    .then_some(())
            },
        )
        .await;
    }

    /// Takes the rule of the manifest's ClusterRole that `rule` picks out away from the fleet's
    /// ServiceAccount, as upstream's manifests lack it, and waits until `request` is refused.
    pub async fn withdraw_rule(&self, rule: impl Fn(&PolicyRule) -> bool, request: &access::Request<'_>) {
        self.edit_rules(
            |rules| {
                let before = rules.len();
                rules.retain(|r| !rule(r));
                assert_eq!(rules.len(), before - 1, "one rule of the manifest's: {rules:?}");
            },
            request,
        )
        .await;
    }

    /// Changes the rules of the fleet's ClusterRole with `edit`, and waits until `request`, which
    /// the change takes away, is refused.
    pub async fn edit_rules(&self, edit: impl FnOnce(&mut Vec<PolicyRule>), request: &access::Request<'_>) {
        let roles: Api<ClusterRole> = Api::all(self.scope.client.clone());
        let selector = format!("kured.test/agent-rbac={}", self.scope.namespace);
        let mut role = roles
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing the fleet's ClusterRole")
            .items
            .pop()
            .expect("the fleet's ClusterRole");
        edit(role.rules.get_or_insert_with(Vec::new));
        let name = role.metadata.name.clone().expect("a name");
        roles
            .replace(&name, &PostParams::default(), &role)
            .await
            .expect("replacing the ClusterRole");
        let agent = client_from_kubeconfig(&self.agents.kubeconfig).await;
        eventually(
            &format!("{request} withdrawn"),
            Duration::from_secs(30),
            || async { (!access::may(&agent, request).await).then_some(()) },
        )
        .await;
    }

    /// Starts the agent of node `i` ([`Agents::start`]).
    pub fn start(&self, i: usize, extra_args: &[&str]) -> SimulatedNode {
        self.agents.start(&self.scope, &self.names[i], extra_args)
    }

    /// Starts the agents of all the nodes, on nodes that behave as `options` say; node 0's first.
    pub fn start_all(&self, options: &NodeOptions, extra_args: &[&str]) -> Vec<SimulatedNode> {
        (0..self.names.len())
            .map(|i| self.start_with(i, options, extra_args))
            .collect()
    }

    /// Starts the agent of node `i` on a node that behaves as `options` say.
    pub fn start_with(&self, i: usize, options: &NodeOptions, extra_args: &[&str]) -> SimulatedNode {
        self.agents
            .start_with(&self.scope, &self.names[i], options, extra_args)
    }
}

/// Waits, for at most `limit`, until the node of `sim` is back from its one reboot, with an agent
/// started after it, and the lock of `scope` is free.
pub async fn back_from_one_reboot(scope: &Scope, sim: &SimulatedNode, limit: Duration) {
    eventually_or(
        limit,
        || async {
            let back = sim.reboots() == 1 && !sim.sentinel.exists() && sim.agent_starts() >= 2;
            (back && read_lock(scope).await.is_none()).then_some(())
        },
        || {
            format!(
                "timed out waiting for the reboot cycle; agent log:\n{}",
                sim.log_tail(40)
            )
        },
    )
    .await;
}

/// A reboot window (`--start-time`/`--end-time`, UTC) that opens a little from now and lasts an
/// hour, and when it opens. Windows are set in whole minutes: it opens at the first minute
/// boundary at least 20 s away, so that it is surely still closed when a test looks a few seconds
/// after starting its agents.
pub fn window_opening_soon() -> (Vec<String>, jiff::Timestamp) {
    let earliest = jiff::Timestamp::now().as_second() + 20;
    let opens = jiff::Timestamp::from_second((earliest / 60 + 1) * 60).expect("a time");
    let zoned = opens.to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let closes = zoned
        .checked_add(jiff::SignedDuration::from_secs(3600))
        .expect("a time");
    let args = vec![
        format!("--start-time={:02}:{:02}", zoned.hour(), zoned.minute()),
        format!("--end-time={:02}:{:02}", closes.hour(), closes.minute()),
    ];
    (args, opens)
}
