//! Simulated nodes: `testenv/node-init` as PID 1 of a PID namespace of its own (DESIGN.md §5),
//! running the real `kured` agent for one of the scope's kwok Nodes and turning the agent's
//! reboot into a simulated one, as node-init's record of events says.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cluster::{kubeconfig_path, repo};
use super::nodes::has_prefer_no_schedule_taint;
use super::scope::Scope;
use super::wait::{eventually, eventually_or};

/// `unshare`'s arguments for a process of its own as PID 1 of a new PID namespace, with its own
/// `/proc`, killed with everything in it when `unshare` is. Needs root.
pub const PID_NAMESPACE: [&str; 4] = ["--pid", "--fork", "--mount-proc", "--kill-child"];

/// `unshare` with [`PID_NAMESPACE`]: the program to run as the namespace's PID 1 follows.
pub fn in_pid_namespace() -> Command {
    let mut unshare = Command::new("unshare");
    unshare.args(PID_NAMESPACE);
    unshare
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
    /// Whether the node needs a reboot from the start: its sentinel file exists.
    pub needs_reboot: bool,
    /// After each of the first this many reboots the sentinel is back before the new agent
    /// starts: a package or a sentinel command that asks for a reboot after every boot.
    pub sentinel_returns: u32,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            downtime: Duration::from_secs(1),
            reboot_delay: Duration::ZERO,
            boot_id_delay: Duration::ZERO,
            restart_delay: Duration::from_secs(1),
            termination_grace: Duration::from_secs(30),
            needs_reboot: true,
            sentinel_returns: 0,
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
    /// Arguments added to every agent started from now on, one a line
    /// ([`SimulatedNode::restart_agent_with`]).
    args_file: PathBuf,
    /// The agent's sentinel file; it exists from the start (unless [`NodeOptions::needs_reboot`]
    /// says otherwise), and a reboot removes it.
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
    pub fn start_as(scope: &Scope, node: &str, kubeconfig: &Path, args: &[&str]) -> SimulatedNode {
        SimulatedNode::start_with(scope, node, kubeconfig, args, &NodeOptions::default())
    }

    /// [`SimulatedNode::start_as`], on a node that behaves as `options` say.
    pub fn start_with(
        scope: &Scope,
        node: &str,
        kubeconfig: &Path,
        args: &[&str],
        options: &NodeOptions,
    ) -> SimulatedNode {
        let dir = tempfile::tempdir().expect("a temp dir");
        let sentinel = dir.path().join("reboot-required");
        let events = dir.path().join("events");
        let log = dir.path().join("agent.log");
        let boot_id_file = dir.path().join("boot_id");
        let args_file = dir.path().join("added-args");
        if options.needs_reboot {
            std::fs::write(&sentinel, "").expect("creating the sentinel");
        }
        let port = super::http::free_port();
        let admin = kubeconfig_path();
        let seconds = |d: Duration| d.as_secs().to_string();
        let child = in_pid_namespace()
            .arg(repo().join("testenv/node-init"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--ds-namespace={}", scope.namespace))
            .arg("--ds-name=kured")
            // A short period unless the test sets its own.
            .args((!args.iter().any(|a| a.starts_with("--period="))).then_some("--period=3s"))
            // Tests start a second cycle by putting the sentinel back right after a reboot, which
            // the reboot-loop guard would hold back: off unless the test sets it (tests/loopguard.rs).
            .args(
                (!args.iter().any(|a| a.starts_with("--reboot-loop-window=")))
                    .then_some("--reboot-loop-window=0"),
            )
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
            .env("NODE_INIT_ARGS_FILE", &args_file)
            .env("NODE_INIT_DOWNTIME", seconds(options.downtime))
            .env("NODE_INIT_REBOOT_DELAY", seconds(options.reboot_delay))
            .env("NODE_INIT_BOOT_ID_DELAY", seconds(options.boot_id_delay))
            .env("NODE_INIT_RESTART_DELAY", seconds(options.restart_delay))
            .env("NODE_INIT_TERMINATION_GRACE", seconds(options.termination_grace))
            .env("NODE_INIT_SENTINEL_RETURNS", options.sentinel_returns.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting unshare (needs root)");
        SimulatedNode {
            name: node.to_owned(),
            child,
            events,
            log,
            boot_id_file,
            args_file,
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

    /// When each reboot was asked for ([`SimulatedNode::reboot_requests`]), as node-init's clock
    /// read it on receiving the request.
    pub fn reboot_request_times(&self) -> Vec<jiff::Timestamp> {
        self.tagged("reboot-requested-at ")
            .iter()
            .map(|micros| {
                micros
                    .parse::<i64>()
                    .ok()
                    .and_then(|m| jiff::Timestamp::from_microsecond(m).ok())
                    .unwrap_or_else(|| {
                        panic!("node {}: node-init recorded a request at {micros:?}", self.name)
                    })
            })
            .collect()
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
        let what = format!("node-init of {} to kill the agent", self.name);
        self.signal_and_wait("USR1", &what, Duration::from_secs(60), Self::kills)
            .await;
    }

    /// Stops the node's agent as a kubelet stops a pod (a DaemonSet update, a pod deleted):
    /// SIGTERM, then SIGKILL once the grace period has passed. Returns node-init's event for it:
    /// `terminated <exit status>` when the agent exited by itself, or `terminate-timeout`.
    pub async fn terminate_agent(&self) -> String {
        let what = format!("node-init of {} to stop the agent", self.name);
        self.signal_and_wait("USR2", &what, Duration::from_secs(120), Self::terminations)
            .await;
        self.events()
            .into_iter()
            .rfind(|l| l.starts_with("terminate"))
            .unwrap_or_default()
    }

    /// Stops the node's agent as [`SimulatedNode::terminate_agent`] does, and has node-init start
    /// the next one with `args` added to the arguments the node was started with: a DaemonSet
    /// update that changed the pod's arguments. Returns node-init's event for the stop.
    pub async fn restart_agent_with(&self, args: &[&str]) -> String {
        let lines: String = args.iter().map(|a| format!("{a}\n")).collect();
        std::fs::write(&self.args_file, lines)
            .unwrap_or_else(|e| panic!("writing the added arguments of {}: {e}", self.name));
        self.terminate_agent().await
    }

    /// Sends `signal` to node-init and waits, for at most `limit`, until the events it counts
    /// with `count` have grown by one.
    async fn signal_and_wait(&self, signal: &str, what: &str, limit: Duration, count: fn(&Self) -> usize) {
        let before = count(self);
        self.signal_node_init(signal);
        eventually(what, limit, || async { (count(self) > before).then_some(()) }).await;
    }

    /// Sends `signal` (a name as `kill -s` takes it) to node-init.
    fn signal_node_init(&self, signal: &str) {
        let pid = self.node_init_pid();
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(
            status.success(),
            "kill -s {signal} {pid} (node-init of {}) failed",
            self.name
        );
    }

    /// The status code of the agent's HTTP server's answer to `GET path` (`/healthz`,
    /// `/metrics`), read in full; or why it did not arrive within `limit`.
    pub async fn probe(&self, path: &str, limit: Duration) -> Result<u16, String> {
        let (status, _) = self.get(path, limit).await?;
        Ok(status)
    }

    /// The agent's HTTP server's answer to `GET path`: status code and body.
    pub async fn get(&self, path: &str, limit: Duration) -> Result<(u16, String), String> {
        super::http::get((std::net::Ipv4Addr::LOCALHOST, self.metrics_port), path, limit).await
    }

    /// The agent's `/metrics`, or why they could not be read.
    pub async fn metrics(&self) -> Result<String, String> {
        match self.get("/metrics", Duration::from_secs(10)).await? {
            (200, body) => Ok(body),
            (status, body) => Err(format!("/metrics answered {status}: {body}")),
        }
    }

    /// Everything the agents on this node have written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines the agents on this node have logged that contain `text`.
    pub fn log_lines_with(&self, text: &str) -> usize {
        self.log().lines().filter(|l| l.contains(text)).count()
    }

    /// The agents' log lines as JSON (`--log-format=json`), leaving out any other line.
    pub fn log_entries(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits, for at most `limit`, until the agents on this node have logged a line containing
    /// `text`, and returns the first such line; panics with the log's last lines otherwise.
    pub async fn logged(&self, text: &str, limit: Duration) -> String {
        eventually_or(
            limit,
            || async { self.log().lines().find(|l| l.contains(text)).map(str::to_owned) },
            || {
                format!(
                    "timed out after {limit:?} waiting for the agent on {} to log {text:?}; last log lines:\n{}",
                    self.name,
                    self.log_tail(30)
                )
            },
        )
        .await
    }

    /// Waits, for at most 30 s, until the agent has logged that it waits for the lock and its Node
    /// carries the `--prefer-no-schedule-taint` taint `key`.
    pub async fn waiting_for_lock_tainted(&self, scope: &Scope, key: &str) {
        eventually(
            "the agent to wait for the lock, tainted",
            Duration::from_secs(30),
            || async {
                let waiting = self
                    .log()
                    .contains("\"msg\":\"reboot required; waiting for the lock\"");
                let node = scope.node(&self.name).await;
                (waiting && has_prefer_no_schedule_taint(&node, key)).then_some(())
            },
        )
        .await;
    }

    /// The last `lines` events node-init recorded, for a failure report.
    pub fn events_tail(&self, lines: usize) -> String {
        let events = self.events();
        events[events.len().saturating_sub(lines)..].join("\n")
    }

    /// The last `lines` lines of the agent's output, for a failure report.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The boot IDs node-init gave the Node, first boot first.
    pub fn boot_ids(&self) -> Vec<String> {
        self.tagged("boot ")
    }
}
