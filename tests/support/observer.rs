//! An independent observer of a scope's reboots: it watches the scope's Nodes and the lock (the
//! annotation on DaemonSet `kured` in the scope's namespace, and on the Lease of that name that
//! `--lock-backend=lease` keeps it on) with the admin client, never the agents' logs, and records
//! continuously what must never happen, whatever faults a test injects: more nodes cordoned by
//! kured, or more lock holders across both objects, than the concurrency allows; a node going
//! down for its reboot while not cordoned; optionally ([`Observer::watch_budget`]) fewer ready
//! pods of a workload than its budget keeps. It also keeps each node's history: how often it was
//! cordoned, the boot IDs its Node reported and the phases its agent published. At the end,
//! [`Observer::assert_settled`] checks that everything came back.
//!
//! It sees what the API server tells its watches: a state that lasted shorter than a watch event
//! takes to arrive, or that came and went while the API server was unreachable, can be missed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use kured::lock::Backend;

use super::nodes::{boot_id, unschedulable};
use super::objects::is_ready;
use super::scope::{SCOPE_LABEL, Scope};
use super::simulated::SimulatedNode;
use super::wait::{eventually, eventually_or};

/// The lock annotation upstream kured and ours write.
pub const LOCK_ANNOTATION: &str = "weave.works/kured-node-lock";

/// The Node annotation in which our agent publishes its phase for `kured status`.
pub const STATE_ANNOTATION: &str = "kured.dev/agent-state";

/// How long everything must stay settled before [`Observer::assert_settled`] accepts it: longer
/// than the agents' `--period` in the tests (3 s), so that an agent about to act again is seen.
const QUIET: Duration = Duration::from_secs(5);

/// The holders named by a lock annotation: the single form `{"nodeID":…,"created":…,"TTL":…}`
/// (no holder when `nodeID` is empty) or the multi form `{"maxOwners":N,"locks":[…]}`. Every
/// entry counts, expired or not: an agent replaces an expired entry, it does not add beside it.
pub fn lock_holders(text: &str) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let node_id = |entry: &serde_json::Value| match entry.get("nodeID") {
        Some(serde_json::Value::String(id)) => Ok(id.clone()),
        other => Err(format!("nodeID is {other:?}, not a string")),
    };
    let entries = match value.get("locks") {
        Some(serde_json::Value::Array(locks)) => locks.iter().map(node_id).collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(format!("locks is {other}, not an array")),
        None => vec![node_id(&value)?],
    };
    Ok(entries.into_iter().filter(|id| !id.is_empty()).collect())
}

/// The label node-init puts on a Node for as long as its simulated reboot keeps it down; it is
/// set after the node's agent is gone.
pub const REBOOTING_LABEL: &str = "kured.test/not-ready";

/// The lock annotation on DaemonSet `kured` as the API server has it now; `None` when absent.
pub async fn read_lock(scope: &Scope) -> Option<String> {
    read_lock_in(scope, Backend::DaemonSet).await
}

/// Sets the lock annotation on DaemonSet `kured` to `text` (`None` removes it), as the admin.
pub async fn write_lock(scope: &Scope, text: Option<&str>) {
    write_lock_in(scope, Backend::DaemonSet, text).await
}

/// The lock annotation on `backend`'s object `kured` as the API server has it now; `None` when
/// absent, or when the Lease does not exist.
pub async fn read_lock_in(scope: &Scope, backend: Backend) -> Option<String> {
    lock_object_annotations(scope, backend)
        .await
        .remove(LOCK_ANNOTATION)
}

/// Every annotation of `backend`'s object `kured` as the API server has it now; none when the
/// Lease does not exist.
pub async fn lock_object_annotations(scope: &Scope, backend: Backend) -> BTreeMap<String, String> {
    let annotations = match backend {
        Backend::DaemonSet => {
            scope
                .api::<DaemonSet>()
                .get("kured")
                .await
                .expect("reading the lock's DaemonSet")
                .metadata
                .annotations
        }
        Backend::Lease => scope
            .api::<Lease>()
            .get_opt("kured")
            .await
            .expect("reading the lock's Lease")
            .and_then(|lease| lease.metadata.annotations),
    };
    annotations.unwrap_or_default()
}

/// Sets the lock annotation on `backend`'s object `kured` to `text` (`None` removes it), as the
/// admin; a Lease that does not exist yet is created with it.
pub async fn write_lock_in(scope: &Scope, backend: Backend, text: Option<&str>) {
    annotate_lock_object(scope, backend, LOCK_ANNOTATION, text).await
}

/// Sets the annotation `key` on `backend`'s object `kured` to `value` (`None` removes it), as the
/// admin, as `kubectl annotate` would; a Lease that does not exist yet is created with it.
pub async fn annotate_lock_object(scope: &Scope, backend: Backend, key: &str, value: Option<&str>) {
    let patch = serde_json::json!({ "metadata": { "annotations": { key: value } } });
    let params = PatchParams::default();
    let written = match backend {
        Backend::DaemonSet => scope
            .api::<DaemonSet>()
            .patch("kured", &params, &Patch::Merge(patch))
            .await
            .map(drop),
        Backend::Lease => {
            let leases = scope.api::<Lease>();
            match leases.get_opt("kured").await.expect("reading the lock's Lease") {
                Some(_) => leases
                    .patch("kured", &params, &Patch::Merge(patch))
                    .await
                    .map(drop),
                None => {
                    let lease: Lease = serde_json::from_value(serde_json::json!({
                        "metadata": { "name": "kured", "annotations": { key: value } },
                        "spec": {},
                    }))
                    .expect("a valid Lease");
                    leases.create(&PostParams::default(), &lease).await.map(drop)
                }
            }
        }
    };
    written.unwrap_or_else(|e| panic!("setting annotation {key} on the {} kured: {e}", backend.kind()));
}

/// A lock entry exactly as upstream's `json.Marshal` writes it at concurrency 1: `node` holding
/// the lock since `created`, for `ttl_nanos` (0: no TTL).
pub fn upstream_entry(node: &str, created: &str, ttl_nanos: i64) -> String {
    format!(
        r#"{{"nodeID":"{node}","metadata":{{"unschedulable":false}},"created":"{created}","TTL":{ttl_nanos}}}"#
    )
}

/// The lock as an upstream agent on `node` writes it when it takes the lock (concurrency 1, no
/// TTL), at a fixed time.
pub fn held_by(node: &str) -> String {
    upstream_entry(node, "2026-11-27T09:00:00.123456789Z", 0)
}

/// A Node as the observer last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub unschedulable: bool,
    /// `status.nodeInfo.bootID`.
    pub boot_id: String,
    /// Down for a simulated reboot ([`REBOOTING_LABEL`]).
    pub rebooting: bool,
    /// The phase the node's agent published last ([`STATE_ANNOTATION`]); `None` before any.
    pub phase: Option<String>,
    /// The whole state the node's agent published last; `None` before any.
    pub published: Option<serde_json::Value>,
    /// The Node's labels.
    pub labels: BTreeMap<String, String>,
    /// The Node's `kured.dev/` annotations but the published state: the controls
    /// (`kured.dev/pause`, `reboot-now`, `halted`).
    pub controls: BTreeMap<String, String>,
}

impl NodeState {
    fn of(node: &Node) -> NodeState {
        let published = published_state(node);
        NodeState {
            unschedulable: unschedulable(node),
            boot_id: boot_id(node),
            rebooting: node.labels().contains_key(REBOOTING_LABEL),
            phase: published
                .as_ref()
                .and_then(|v| v["phase"].as_str().map(str::to_owned)),
            published,
            labels: node.labels().clone(),
            controls: node
                .annotations()
                .iter()
                .filter(|(k, _)| k.starts_with("kured.dev/") && *k != STATE_ANNOTATION)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The state the node's agent published ([`STATE_ANNOTATION`]) as JSON; `None` when there is
/// none or it is not JSON.
pub fn published_state(node: &Node) -> Option<serde_json::Value> {
    node.annotations()
        .get(STATE_ANNOTATION)
        .and_then(|s| serde_json::from_str(s).ok())
}

/// The entry of `node` in a lock annotation (either form, see [`lock_holders`]) as JSON; `None`
/// when it holds no slot or the text is not JSON.
pub fn lock_entry(text: &str, node: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let entries = match value.get("locks") {
        Some(serde_json::Value::Array(locks)) => locks.clone(),
        _ => vec![value],
    };
    entries.into_iter().find(|e| e["nodeID"] == node)
}

/// What the observer sees now.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: BTreeMap<String, NodeState>,
    /// The lock annotation's text on the DaemonSet; `None` when absent.
    pub lock: Option<String>,
    /// The lock annotation's text on the Lease; `None` when absent (or no Lease).
    pub lease_lock: Option<String>,
    /// The lock's holders across both objects, each node once (empty when both are absent or
    /// unreadable): a node whose entry is being moved from one object to the other holds one
    /// slot.
    pub holders: Vec<String>,
    /// Nodes cordoned now and not cordoned before the test began.
    pub cordoned_by_kured: Vec<String>,
}

impl Snapshot {
    /// Whether `node` is cordoned now (false for a node not seen).
    pub fn cordoned(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.unschedulable)
    }

    /// Whether `node` holds a slot of the lock now.
    pub fn holds(&self, node: &str) -> bool {
        self.holders.iter().any(|h| h == node)
    }

    /// The phase `node`'s agent published last; `None` before any (or for a node not seen).
    pub fn phase(&self, node: &str) -> Option<&str> {
        self.nodes.get(node).and_then(|n| n.phase.as_deref())
    }

    /// The value of `node`'s control annotation `key` (e.g. `kured.dev/halted`), as last seen.
    pub fn control(&self, node: &str, key: &str) -> Option<&str> {
        self.nodes.get(node)?.controls.get(key).map(String::as_str)
    }

    /// Whether `node`'s agent published `phase` last.
    pub fn in_phase(&self, node: &str, phase: &str) -> bool {
        self.phase(node) == Some(phase)
    }

    fn describe(&self) -> String {
        format!(
            "cordoned by kured: {:?}; lock: {}; lease lock: {}",
            self.cordoned_by_kured,
            self.lock.as_deref().unwrap_or("(absent)"),
            self.lease_lock.as_deref().unwrap_or("(absent)")
        )
    }
}

/// A workload whose budget the observer checks.
#[derive(Debug)]
struct Budget {
    /// The fewest ready pods the budget allows.
    min: usize,
    /// The fewest ready pods seen since `min` were first ready; `None` before.
    lowest: Option<usize>,
    synced: bool,
}

/// How a test recognises a state it forbids ([`Observer::forbid`]).
type Sees = Box<dyn Fn(&Snapshot) -> bool + Send>;

/// What a test forbids from some moment on ([`Observer::forbid`]): what it is, and how to see it.
#[derive(Default)]
struct Forbidden(Vec<(String, Sees)>);

impl std::fmt::Debug for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(what, _)| what))
            .finish()
    }
}

#[derive(Debug, Default)]
struct LockSnapshot {
    now: Snapshot,
    pre_cordoned: BTreeSet<String>,
    max_cordoned_by_kured: usize,
    max_holders: usize,
    /// How often each node was seen going from schedulable to cordoned by kured.
    cordons: BTreeMap<String, usize>,
    /// node → every boot ID its Node reported, in order (an unchanged one counted once).
    boot_ids: BTreeMap<String, Vec<String>>,
    /// node → every phase its agent published, in order (likewise).
    phases: BTreeMap<String, Vec<String>>,
    /// node → every state its agent published, in order (likewise).
    published: BTreeMap<String, Vec<serde_json::Value>>,
    /// Every text of the DaemonSet's lock annotation, in order (likewise; absent not counted).
    locks: Vec<String>,
    /// Every node that held a slot of the lock.
    holders_seen: BTreeSet<String>,
    /// The holders in the DaemonSet's annotation, and in the Lease's.
    daemonset_holders: Vec<String>,
    lease_holders: Vec<String>,
    /// app → its budget.
    budgets: BTreeMap<String, Budget>,
    /// Label keys, each with the most holders one value of it may have ([`Observer::check_per_label`]).
    per_label: Vec<(String, usize)>,
    /// The most holders seen at once whose Nodes share a value of a key of `per_label`.
    max_per_label: usize,
    /// Everything seen that must never happen, each with what was seen then.
    violations: Vec<String>,
    /// What the test forbids besides, checked as the invariants.
    forbidden: Forbidden,
    nodes_synced: bool,
    lock_synced: bool,
    lease_lock_synced: bool,
}

impl LockSnapshot {
    /// Checks the invariants against the state just seen.
    fn check(&mut self, limit: usize) {
        let cordoned: Vec<String> = self
            .now
            .nodes
            .iter()
            .filter(|(name, n)| n.unschedulable && !self.pre_cordoned.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        self.now.cordoned_by_kured = cordoned;
        let (cordoned, holders) = (self.now.cordoned_by_kured.len(), self.now.holders.len());
        self.max_cordoned_by_kured = self.max_cordoned_by_kured.max(cordoned);
        self.max_holders = self.max_holders.max(holders);
        if cordoned > limit {
            let v = format!(
                "{cordoned} nodes cordoned by kured at once (limit {limit}); {}",
                self.now.describe()
            );
            self.record(v);
        }
        if holders > limit {
            let v = format!(
                "{holders} lock holders at once (limit {limit}); {}",
                self.now.describe()
            );
            self.record(v);
        }
        let seen: Vec<String> = (self.forbidden.0.iter())
            .filter(|(_, seen)| seen(&self.now))
            .map(|(what, _)| format!("{what}; {}", self.now.describe()))
            .collect();
        for v in seen {
            self.record(v);
        }
        for (key, max) in self.per_label.clone() {
            // node → its value, as its Node has it; a holder not seen as a Node has a value of
            // its own.
            let mut by_value: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for holder in &self.now.holders {
                let value = match self.now.nodes.get(holder) {
                    Some(node) => node.labels.get(&key).cloned().unwrap_or_default(),
                    None => format!("(no Node {holder})"),
                };
                by_value.entry(value).or_default().push(holder);
            }
            let most = by_value.values().map(Vec::len).max().unwrap_or(0);
            self.max_per_label = self.max_per_label.max(most);
            let over: Vec<String> = by_value
                .iter()
                .filter(|(_, holders)| holders.len() > max)
                .map(|(value, holders)| format!("{key}={value:?}: {}", holders.join(",")))
                .collect();
            if !over.is_empty() {
                let v = format!(
                    "more than {max} lock holders per value of {key}: {}; {}",
                    over.join("; "),
                    self.now.describe()
                );
                self.record(v);
            }
        }
    }

    /// Takes in a node's new state: counts a cordon by kured, records a node going down for its
    /// reboot while not cordoned (kured reboots only a cordoned node: the agent is gone by then,
    /// so nothing can have uncordoned it in between), and adds to the node's history what is new.
    fn set_node(&mut self, name: String, state: NodeState) {
        let before = self.now.nodes.get(&name);
        let was_cordoned = before.is_some_and(|b| b.unschedulable);
        let was_rebooting = before.is_some_and(|b| b.rebooting);
        if state.unschedulable && !was_cordoned && !self.pre_cordoned.contains(&name) {
            *self.cordons.entry(name.clone()).or_default() += 1;
        }
        if state.rebooting && !was_rebooting && !state.unschedulable {
            let v = format!("{name} went down for a reboot while not cordoned");
            self.violations.push(v);
        }
        let push = |history: &mut Vec<String>, value: &str| {
            if !value.is_empty() && history.last().map(String::as_str) != Some(value) {
                history.push(value.to_owned());
            }
        };
        push(self.boot_ids.entry(name.clone()).or_default(), &state.boot_id);
        if let Some(phase) = &state.phase {
            push(self.phases.entry(name.clone()).or_default(), phase);
        }
        if let Some(published) = &state.published {
            let history = self.published.entry(name.clone()).or_default();
            if history.last() != Some(published) {
                history.push(published.clone());
            }
        }
        self.now.nodes.insert(name, state);
    }

    /// Records a violation once, however many events show the same situation.
    fn record(&mut self, violation: String) {
        if !self.violations.contains(&violation) {
            self.violations.push(violation);
        }
    }

    /// Takes in the lock annotation of `backend`'s object as just seen.
    fn set_lock(&mut self, backend: Backend, lock: Option<String>) {
        let holders = match lock.as_deref().map(lock_holders) {
            None => Vec::new(),
            Some(Ok(holders)) => {
                self.holders_seen.extend(holders.iter().cloned());
                holders
            }
            Some(Err(e)) => {
                let text = lock.as_deref().unwrap_or_default();
                self.violations.push(format!(
                    "unreadable lock annotation on the {} ({e}): {text}",
                    backend.kind()
                ));
                Vec::new()
            }
        };
        if let (Backend::DaemonSet, Some(text)) = (backend, &lock)
            && self.locks.last() != Some(text)
        {
            self.locks.push(text.clone());
        }
        match backend {
            Backend::DaemonSet => (self.daemonset_holders, self.now.lock) = (holders, lock),
            Backend::Lease => (self.lease_holders, self.now.lease_lock) = (holders, lock),
        }
        let mut all = self.daemonset_holders.clone();
        for holder in &self.lease_holders {
            if !all.contains(holder) {
                all.push(holder.clone());
            }
        }
        self.now.holders = all;
    }

    fn set_synced(&mut self, backend: Backend) {
        match backend {
            Backend::DaemonSet => self.lock_synced = true,
            Backend::Lease => self.lease_lock_synced = true,
        }
    }
}

/// Watches a scope's Nodes and lock until dropped.
pub struct Observer {
    seen: Arc<Mutex<LockSnapshot>>,
    limit: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// For a fresh read at the end: the scope's Nodes, and the lock's DaemonSets.
    nodes: Api<Node>,
    node_selector: String,
    daemonsets: Api<DaemonSet>,
    leases: Api<Lease>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Observer {
    /// Starts watching the scope's Nodes and lock, checking that at most `concurrency` nodes are
    /// cordoned by kured and at most `concurrency` hold the lock at any time; `pre_cordoned` are
    /// the nodes the test cordoned itself, which do not count. Returns once both watches have
    /// listed what is there. Start it before the nodes' agents: [`Observer::assert_settled`]
    /// expects to have seen every boot ID the nodes reported.
    pub async fn start(scope: &Scope, concurrency: usize, pre_cordoned: &[&str]) -> Observer {
        let seen = Arc::new(Mutex::new(LockSnapshot {
            pre_cordoned: pre_cordoned.iter().map(|n| (*n).to_owned()).collect(),
            ..LockSnapshot::default()
        }));
        let observer = Observer {
            tasks: vec![
                watch_nodes(scope, concurrency, seen.clone()),
                watch_lock::<DaemonSet>(scope, Backend::DaemonSet, concurrency, seen.clone()),
                watch_lock::<Lease>(scope, Backend::Lease, concurrency, seen.clone()),
            ],
            seen,
            limit: concurrency,
            nodes: Api::all(scope.client.clone()),
            node_selector: format!("{SCOPE_LABEL}={}", scope.id),
            daemonsets: scope.api(),
            leases: scope.api(),
        };
        eventually(
            "the observer's watches of the Nodes and the lock's DaemonSet and Lease to list them",
            Duration::from_secs(30),
            || async {
                let seen = observer.seen();
                (seen.nodes_synced && seen.lock_synced && seen.lease_lock_synced).then_some(())
            },
        )
        .await;
        observer
    }

    /// Also watches the pods of app `app` in the scope, and records as a violation every time
    /// fewer than `min` of them are ready, from the moment `min` are. Returns once the watch has
    /// listed them.
    pub async fn watch_budget(&mut self, scope: &Scope, app: &str, min: usize) {
        self.seen().budgets.insert(
            app.to_owned(),
            Budget {
                min,
                lowest: None,
                synced: false,
            },
        );
        self.tasks.push(watch_pods(scope, app, self.seen.clone()));
        eventually(
            &format!("the observer's watch of the pods of {app} to list them"),
            Duration::from_secs(30),
            || async { self.seen().budgets[app].synced.then_some(()) },
        )
        .await;
    }

    fn seen(&self) -> MutexGuard<'_, LockSnapshot> {
        // A panic while holding the lock can only come from a bug here; the record is still
        // the best there is.
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the observer sees now.
    pub fn snapshot(&self) -> Snapshot {
        self.seen().now.clone()
    }

    /// The most nodes cordoned by kured at once so far.
    pub fn max_cordoned_by_kured(&self) -> usize {
        self.seen().max_cordoned_by_kured
    }

    /// Asserts that `concurrency` nodes were cordoned by kured at once at some point: a test of
    /// that concurrency used it.
    pub fn assert_concurrency_used(&self, concurrency: usize) {
        let most = self.max_cordoned_by_kured();
        assert!(
            most == concurrency,
            "concurrency {concurrency} was used: at most {most} cordoned at once"
        );
    }

    /// The most lock holders at once so far.
    pub fn max_holders(&self) -> usize {
        self.seen().max_holders
    }

    /// Also checks, from now on, that at most `max` lock holders at once share a value of the
    /// node label `key`, as their Nodes have it (`--concurrency-per-label=key=max`). Call it
    /// before the agents start.
    pub fn check_per_label(&self, key: &str, max: usize) {
        self.seen().per_label.push((key.to_owned(), max));
    }

    /// The most lock holders seen at once whose Nodes share a value of a key given to
    /// [`Observer::check_per_label`].
    pub fn max_per_label(&self) -> usize {
        self.seen().max_per_label
    }

    /// Every boot ID node `name`'s Node has reported so far, in order.
    pub fn boot_ids(&self, name: &str) -> Vec<String> {
        self.seen().boot_ids.get(name).cloned().unwrap_or_default()
    }

    /// Every phase node `name`'s agent has published so far, in order.
    pub fn phases(&self, name: &str) -> Vec<String> {
        self.seen().phases.get(name).cloned().unwrap_or_default()
    }

    /// Every state node `name`'s agent has published so far, in order.
    pub fn published(&self, name: &str) -> Vec<serde_json::Value> {
        self.seen().published.get(name).cloned().unwrap_or_default()
    }

    /// Every text the DaemonSet's lock annotation has had so far, in order.
    pub fn locks(&self) -> Vec<String> {
        self.seen().locks.clone()
    }

    /// Every node that has held a slot of the lock so far.
    pub fn holders_seen(&self) -> BTreeSet<String> {
        self.seen().holders_seen.clone()
    }

    /// The fewest ready pods of `app` seen since its budget was first met ([`Observer::watch_budget`]);
    /// `None` before, or when not watched.
    pub fn lowest_ready(&self, app: &str) -> Option<usize> {
        self.seen().budgets.get(app).and_then(|b| b.lowest)
    }

    /// How often `node` was seen going from schedulable to cordoned by kured so far: once per
    /// reboot when nothing made the agent give the node back midway.
    pub fn cordons(&self, node: &str) -> usize {
        self.seen().cordons.get(node).copied().unwrap_or(0)
    }

    /// From now on, a state in which `seen` holds is a violation, `what` saying what it is: an
    /// invariant of one test, checked at every change the observer sees, as the general ones.
    pub fn forbid(&self, what: &str, seen: impl Fn(&Snapshot) -> bool + Send + 'static) {
        let mut state = self.seen();
        if seen(&state.now) {
            let v = format!("{what}; {}", state.now.describe());
            state.record(v);
        }
        state.forbidden.0.push((what.to_owned(), Box::new(seen)));
    }

    /// Everything seen so far that must never happen.
    pub fn violations(&self) -> Vec<String> {
        self.seen().violations.clone()
    }

    /// Waits until `done` holds for what the observer sees, for at most `limit`; panics naming
    /// `what` and what was seen last.
    pub async fn until(&self, what: &str, limit: Duration, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let now = self.snapshot();
            if done(&now) {
                return now;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {limit:?} waiting for {what}; seen last: {now:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Observer::until`], failing with a report on `nodes` too: what each published last,
    /// node-init's last events and the agent's last log lines.
    pub async fn until_seen(
        &self,
        what: &str,
        limit: Duration,
        nodes: &[&SimulatedNode],
        done: impl Fn(&Snapshot) -> bool,
    ) -> Snapshot {
        eventually_or(
            limit,
            || async {
                let now = self.snapshot();
                done(&now).then_some(now)
            },
            || {
                format!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    self.report(nodes)
                )
            },
        )
        .await
    }

    /// Watches, for `span`, that `holds` stays true for what the observer sees; panics at the
    /// first moment it does not, saying `what` should have held, with [`Observer::report`]. An
    /// observation over a bounded time, for what must not happen while the test waits.
    pub async fn stays(
        &self,
        what: &str,
        span: Duration,
        nodes: &[&SimulatedNode],
        holds: impl Fn(&Snapshot) -> bool,
    ) {
        let end = tokio::time::Instant::now() + span;
        while tokio::time::Instant::now() < end {
            if !holds(&self.snapshot()) {
                panic!("{what} no longer held\n{}", self.report(nodes));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the observer sees now, and for each of `nodes` what its agent published last, its
    /// reboots, node-init's last events and the agent's last log lines: for a failure message.
    pub fn report(&self, nodes: &[&SimulatedNode]) -> String {
        let now = self.snapshot();
        let mut report = format!("seen now: {}", now.describe());
        for sim in nodes {
            let published = now.nodes.get(&sim.name).and_then(|n| n.published.clone());
            report.push_str(&format!(
                "\n--- {}: published {}; {} reboots, {} kills, {} agent starts; last node-init events:\n{}\nlast agent log lines:\n{}",
                sim.name,
                published.map_or("nothing".to_owned(), |p| p.to_string()),
                sim.reboots(),
                sim.kills(),
                sim.agent_starts(),
                sim.events_tail(10),
                sim.log_tail(20)
            ));
        }
        report
    }

    /// Waits, for at most `limit`, until everything has settled and stays so for a few seconds:
    /// no node cordoned by kured and the test's pre-cordoned nodes still cordoned, the lock free
    /// and its annotation gone; each of `nodes` rebooted exactly as often as given, no longer
    /// needing a reboot (when it was to reboot at all), its Node reporting the boot ID its last
    /// boot gave it and, seen by the watch, exactly the boot IDs node-init gave it, in order; its
    /// agent running, and no agent that exited by itself or started more often than the reboots
    /// and kills explain (a crash loop); and a fresh read of the Nodes and the lock agrees with
    /// what the watches show. Panics at once when an invariant was broken (the concurrency, a
    /// watched budget), a node rebooted too often or an agent crashed, otherwise at the deadline,
    /// saying what was seen and with the tail of the agents' logs.
    pub async fn assert_settled(&self, nodes: &[(&SimulatedNode, usize)], limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut quiet_since: Option<tokio::time::Instant> = None;
        loop {
            let (violations, fatal, mut problems) = self.problems(nodes);
            if !violations.is_empty() || !fatal.is_empty() {
                self.fail("", &[violations, fatal].concat(), nodes);
            }
            let now = tokio::time::Instant::now();
            if problems.is_empty() {
                let since = *quiet_since.get_or_insert(now);
                if now.duration_since(since) >= QUIET {
                    match self.disagreement().await {
                        None => {
                            eprintln!("observer: settled; {}", self.summary());
                            return;
                        }
                        Some(disagreement) => problems.push(disagreement),
                    }
                }
            }
            if !problems.is_empty() {
                quiet_since = None;
                if now >= deadline {
                    self.fail(&format!("not settled after {limit:?}: "), &problems, nodes);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// [`Observer::assert_settled`], each of `nodes` rebooted exactly once.
    pub async fn assert_each_rebooted_once(&self, nodes: &[SimulatedNode], limit: Duration) {
        let expected: Vec<(&SimulatedNode, usize)> = nodes.iter().map(|s| (s, 1)).collect();
        self.assert_settled(&expected, limit).await;
    }

    /// The most seen at once, against the limits.
    fn summary(&self) -> String {
        let seen = self.seen();
        let mut summary = format!(
            "at most {} nodes cordoned by kured and {} lock holders at once (limit {})",
            seen.max_cordoned_by_kured, seen.max_holders, self.limit
        );
        for (app, budget) in &seen.budgets {
            summary.push_str(&format!(
                "; at least {:?} ready pods of {app} (budget {})",
                budget.lowest, budget.min
            ));
        }
        summary
    }

    /// How a fresh read of the scope's Nodes and the lock differs from what the watches show, if
    /// it does: a watch that stopped delivering would otherwise show a settled past.
    async fn disagreement(&self) -> Option<String> {
        let listed = self
            .nodes
            .list(&ListParams::default().labels(&self.node_selector))
            .await;
        let ds = self.daemonsets.get("kured").await;
        let lease = self.leases.get_opt("kured").await;
        let (listed, ds, lease) = match (listed, ds, lease) {
            (Ok(listed), Ok(ds), Ok(lease)) => (listed, ds, lease),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Some(format!("a fresh read failed: {e}"));
            }
        };
        let nodes: BTreeMap<String, NodeState> = listed
            .items
            .iter()
            .map(|n| (n.name_any(), NodeState::of(n)))
            .collect();
        let lock = ds.annotations().get(LOCK_ANNOTATION).cloned();
        let lease_lock = lease.and_then(|l| l.annotations().get(LOCK_ANNOTATION).cloned());
        let seen = self.snapshot();
        (nodes != seen.nodes || lock != seen.lock || lease_lock != seen.lease_lock).then(|| {
            format!(
                "a fresh read disagrees with the watches: Nodes {nodes:?}, lock {lock:?}, lease lock {lease_lock:?}"
            )
        })
    }

    /// (violations of the invariants, problems that cannot go away, problems that may still).
    fn problems(&self, nodes: &[(&SimulatedNode, usize)]) -> (Vec<String>, Vec<String>, Vec<String>) {
        let seen = self.seen();
        let (mut fatal, mut pending) = (Vec::new(), Vec::new());
        for name in &seen.now.cordoned_by_kured {
            pending.push(format!("{name} is cordoned by kured"));
        }
        for name in &seen.pre_cordoned {
            if !seen.now.cordoned(name) {
                fatal.push(format!("{name}, cordoned before the test, is no longer cordoned"));
            }
        }
        for (kind, lock, holders) in [
            ("DaemonSet", &seen.now.lock, &seen.daemonset_holders),
            ("Lease", &seen.now.lease_lock, &seen.lease_holders),
        ] {
            match lock {
                Some(text) if !holders.is_empty() => {
                    pending.push(format!("the lock is held on the {kind}: {text}"))
                }
                Some(text) => pending.push(format!(
                    "the lock annotation is left on the {kind}, with no holder: {text}"
                )),
                None => {}
            }
        }
        for (sim, expected) in nodes {
            let name = &sim.name;
            let (reboots, requests, kills, starts) = (
                sim.reboots(),
                sim.reboot_requests(),
                sim.kills(),
                sim.agent_starts(),
            );
            if reboots > *expected {
                fatal.push(format!("{name} rebooted {reboots} times, expected {expected}"));
            } else if reboots < *expected {
                pending.push(format!(
                    "{name} rebooted {reboots} times so far, expected {expected}"
                ));
            }
            if requests > reboots {
                pending.push(format!("{name} has a reboot requested and not done yet"));
            }
            if *expected > 0 && sim.sentinel.exists() {
                pending.push(format!("{name} still needs a reboot: its sentinel is there"));
            }
            let exits = sim.agent_exits();
            if !exits.is_empty() {
                fatal.push(format!(
                    "{name}: agents exited by themselves, with status {exits:?}"
                ));
            } else if starts > 1 + reboots + kills + sim.terminations() {
                fatal.push(format!(
                    "{name}: {starts} agent starts for {reboots} reboots, {kills} kills and {} terminations",
                    sim.terminations()
                ));
            }
            if !sim.agent_running() {
                pending.push(format!("{name}: no agent runs now"));
            }
            let reported = seen
                .now
                .nodes
                .get(name)
                .map(|n| n.boot_id.clone())
                .unwrap_or_default();
            let last = sim.local_boot_id();
            if reported != last {
                pending.push(format!(
                    "{name} reports boot ID {reported:?}, its last boot gave it {last:?}"
                ));
            }
            let (history, given) = (
                seen.boot_ids.get(name).cloned().unwrap_or_default(),
                sim.boot_ids(),
            );
            if history != given {
                pending.push(format!(
                    "{name}: its Node reported the boot IDs {history:?}, node-init gave it {given:?}"
                ));
            }
        }
        (seen.violations.clone(), fatal, pending)
    }

    fn fail(&self, prefix: &str, problems: &[String], nodes: &[(&SimulatedNode, usize)]) -> ! {
        let snapshot = self.snapshot();
        let mut report = format!(
            "{prefix}{}\nseen now: {}",
            problems.join("\n"),
            snapshot.describe()
        );
        for (sim, _) in nodes {
            if problems.iter().any(|p| p.contains(&sim.name)) {
                report.push_str(&format!(
                    "\n--- {}: {} reboots, {} kills, {} agent starts; last node-init events:\n{}\nlast agent log lines:\n{}",
                    sim.name,
                    sim.reboots(),
                    sim.kills(),
                    sim.agent_starts(),
                    sim.events_tail(15),
                    sim.log_tail(30)
                ));
            }
        }
        panic!("{report}");
    }
}

fn watch_nodes(scope: &Scope, limit: usize, seen: Arc<Mutex<LockSnapshot>>) -> tokio::task::JoinHandle<()> {
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let cfg = watcher::Config::default().labels(&format!("{SCOPE_LABEL}={}", scope.id));
    tokio::spawn(async move {
        // A relist (after a dropped watch) replaces what was known once it is complete.
        let mut relisted: BTreeMap<String, NodeState> = BTreeMap::new();
        let mut stream = std::pin::pin!(watcher(nodes, cfg).default_backoff());
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                watcher::Event::Init => relisted.clear(),
                watcher::Event::InitApply(node) => {
                    relisted.insert(node.name_any(), NodeState::of(&node));
                    continue;
                }
                watcher::Event::InitDone => {
                    let listed = std::mem::take(&mut relisted);
                    seen.now.nodes.retain(|name, _| listed.contains_key(name));
                    for (name, node) in listed {
                        seen.set_node(name, node);
                    }
                    seen.nodes_synced = true;
                }
                watcher::Event::Apply(node) => seen.set_node(node.name_any(), NodeState::of(&node)),
                watcher::Event::Delete(node) => {
                    seen.now.nodes.remove(&node.name_any());
                }
            }
            seen.check(limit);
        }
    })
}

/// Whether the pod counts for its budget: Ready, and not on its way out.
fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && is_ready(pod)
}

fn watch_pods(scope: &Scope, app: &str, seen: Arc<Mutex<LockSnapshot>>) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = scope.api();
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let app = app.to_owned();
    tokio::spawn(async move {
        // pod → ready; a relist replaces it once complete, as for the Nodes.
        let (mut known, mut relisted) = (BTreeMap::new(), BTreeMap::new());
        let mut stream = std::pin::pin!(watcher(pods, cfg).default_backoff());
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            match event {
                watcher::Event::Init => {
                    relisted.clear();
                    continue;
                }
                watcher::Event::InitApply(pod) => {
                    relisted.insert(pod.name_any(), ready(&pod));
                    continue;
                }
                watcher::Event::InitDone => known = std::mem::take(&mut relisted),
                watcher::Event::Apply(pod) => {
                    known.insert(pod.name_any(), ready(&pod));
                }
                watcher::Event::Delete(pod) => {
                    known.remove(&pod.name_any());
                }
            }
            let count = known.values().filter(|r| **r).count();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let Some(budget) = seen.budgets.get_mut(&app) else {
                continue;
            };
            budget.synced = true;
            if budget.lowest.is_none() && count < budget.min {
                continue;
            }
            budget.lowest = Some(budget.lowest.map_or(count, |l| l.min(count)));
            let min = budget.min;
            if count < min {
                let v = format!(
                    "{count} ready pods of {app}, below its budget's {min}; {}",
                    seen.now.describe()
                );
                seen.record(v);
            }
        }
    })
}

/// Watches the lock annotation of `backend`'s object `kured` (of type `K`) in the scope.
fn watch_lock<K>(
    scope: &Scope,
    backend: Backend,
    limit: usize,
    seen: Arc<Mutex<LockSnapshot>>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let objects: Api<K> = scope.api();
    let cfg = watcher::Config::default().fields("metadata.name=kured");
    tokio::spawn(async move {
        let lock = |object: &K| object.annotations().get(LOCK_ANNOTATION).cloned();
        let mut relisted: Option<String> = None;
        let mut stream = std::pin::pin!(watcher(objects, cfg).default_backoff());
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                watcher::Event::Init => relisted = None,
                watcher::Event::InitApply(object) => {
                    relisted = lock(&object);
                    continue;
                }
                watcher::Event::InitDone => {
                    seen.set_lock(backend, relisted.take());
                    seen.set_synced(backend);
                }
                watcher::Event::Apply(object) => seen.set_lock(backend, lock(&object)),
                watcher::Event::Delete(_) => seen.set_lock(backend, None),
            }
            seen.check(limit);
        }
    })
}
