//! SIGKILLed agents: an agent killed at any phase of a reboot cycle, and started again as a
//! kubelet would, finishes the cycle: exactly one reboot, nothing left cordoned, the lock free,
//! never more than `--concurrency` nodes cordoned or holding the lock (checked throughout by an
//! independent observer of the Nodes and the lock). Each test first proves that the kill hit the
//! phase it names, from a fresh read of the API server and node-init's own record.
//! Needs `scripts/testcluster up` and root (for `unshare`).

mod support;

use std::time::Duration;

use support::agents::Fleet;
use support::nodes::{boot_id, unschedulable};
use support::objects::{create_deployment, create_pdb, running_on, set_min_available};
use support::observer::{Observer, Snapshot, lock_holders, read_lock};
use support::simulated::{NodeOptions, SimulatedNode};
use support::wait::eventually;

/// Generous: a reboot cycle of one node takes seconds, plus whatever delay a test adds.
const SETTLE: Duration = Duration::from_secs(120);

/// One node that needs a reboot, the agents' credentials and lock, and an observer at
/// concurrency 1, started before the agent.
struct OneNode {
    fleet: Fleet,
    name: String,
    observer: Observer,
}

impl OneNode {
    async fn new(test: &str) -> OneNode {
        let fleet = Fleet::new(test, 1).await;
        let name = fleet.names[0].clone();
        let observer = Observer::start(&fleet.scope, 1, &[]).await;
        OneNode {
            fleet,
            name,
            observer,
        }
    }

    fn start(&self, options: &NodeOptions, args: &[&str]) -> SimulatedNode {
        self.fleet.start_with(0, options, args)
    }

    /// A pod on the node whose budget refuses its eviction: it holds the drain until
    /// [`OneNode::relax_the_budget`].
    async fn pin_a_pod(&self) {
        create_deployment(&self.fleet.scope, "pinned", 1, Some(&self.name)).await;
        create_pdb(&self.fleet.scope, "pinned", 1, 1).await;
    }

    async fn relax_the_budget(&self) {
        set_min_available(&self.fleet.scope, "pinned", 0).await;
    }

    /// The restarted agent finishes the cycle: one reboot, and everything settled.
    async fn settled(&self, sim: &SimulatedNode) {
        self.observer.assert_settled(&[(sim, 1)], SETTLE).await;
    }

    /// The node's cordon, its boot ID and the lock, read fresh from the API server.
    async fn fresh(&self) -> Fresh {
        let node = self.fleet.scope.node(&self.name).await;
        let lock = read_lock(&self.fleet.scope).await;
        Fresh {
            cordoned: unschedulable(&node),
            boot_id: boot_id(&node),
            holders: lock
                .as_deref()
                .map(|l| lock_holders(l).expect("a readable lock"))
                .unwrap_or_default(),
            lock,
        }
    }

    /// Waits until `ready` holds (for what the observer sees, or the node's own record), SIGKILLs
    /// the agent, and asserts from a fresh read that the kill hit `phase`: the node holding the
    /// lock, cordoned or not, rebooted as often as given. Then the restarted agent must finish.
    async fn kill_at(
        &self,
        sim: &SimulatedNode,
        phase: &str,
        ready: impl Fn(&Snapshot) -> bool,
        cordoned: bool,
        reboots: usize,
    ) {
        self.observer
            .until(&format!("the agent to get {phase}"), SETTLE, ready)
            .await;
        sim.kill_agent().await;
        let fresh = self.fresh().await;
        assert!(
            fresh.holders == [self.name.clone()] && fresh.cordoned == cordoned && sim.reboots() == reboots,
            "the agent was not killed {phase}: {fresh:?}, {} reboots; agent log:\n{}",
            sim.reboots(),
            sim.log_tail(20)
        );
        assert_eq!(sim.kills(), 1, "one agent killed");
    }
}

#[derive(Debug)]
#[allow(dead_code)] // read through Debug in failure messages
struct Fresh {
    cordoned: bool,
    boot_id: String,
    holders: Vec<String>,
    lock: Option<String>,
}

#[tokio::test]
async fn killed_after_taking_the_lock_before_the_cordon() {
    let case = OneNode::new("kill-locked").await;
    // The drain delay holds the agent between taking the lock and cordoning.
    let sim = case.start(&NodeOptions::default(), &["--drain-delay=8s"]);
    let phase = "after taking the lock, before the cordon";
    case.kill_at(&sim, phase, |s| s.holds(&case.name), false, 0).await;
    case.settled(&sim).await;
}

#[tokio::test]
async fn killed_mid_drain() {
    let case = OneNode::new("kill-draining").await;
    // A pod on the node whose budget refuses its eviction holds the drain.
    case.pin_a_pod().await;
    let sim = case.start(&NodeOptions::default(), &[]);
    let refused = |_: &Snapshot| sim.log().contains("eviction refused for now; retrying");
    case.kill_at(&sim, "mid-drain", refused, true, 0).await;
    running_on(&case.fleet.scope, "app=pinned", &[&case.name]).await;

    // Now the budget allows the eviction.
    case.relax_the_budget().await;
    case.settled(&sim).await;
}

#[tokio::test]
async fn killed_after_requesting_the_reboot_before_it_happens() {
    let case = OneNode::new("kill-requested").await;
    // The host takes 10 s to go down after the request; the agent runs on meanwhile.
    let options = NodeOptions {
        reboot_delay: Duration::from_secs(10),
        ..NodeOptions::default()
    };
    let sim = case.start(&options, &[]);
    let requested = |_: &Snapshot| sim.reboot_requests() == 1;
    case.kill_at(&sim, "after requesting the reboot", requested, true, 0)
        .await;
    case.settled(&sim).await;
}

#[tokio::test]
async fn killed_after_the_reboot_before_the_uncordon() {
    let case = OneNode::new("kill-rebooted").await;
    // The node stays down for 3 s: time to ask for the kill before the new agent starts, which
    // node-init then kills the moment it starts. The next one starts 5 s later, so the fresh
    // read still sees what the killed one left.
    let options = NodeOptions {
        downtime: Duration::from_secs(3),
        restart_delay: Duration::from_secs(5),
        ..NodeOptions::default()
    };
    let sim = case.start(&options, &[]);
    let down = |_: &Snapshot| sim.reboots() == 1 && sim.agent_starts() == 1;
    case.kill_at(&sim, "after the reboot, before the uncordon", down, true, 1)
        .await;
    assert_eq!(
        sim.agent_starts(),
        2,
        "the agent killed is the one started after the reboot"
    );
    case.settled(&sim).await;
}

#[tokio::test]
async fn killed_between_the_uncordon_and_the_release() {
    let case = OneNode::new("kill-releasing").await;
    // The release delay holds the lock after the uncordon.
    let sim = case.start(&NodeOptions::default(), &["--lock-release-delay=10s"]);
    let name = &case.name;
    let back =
        |s: &Snapshot| sim.reboots() == 1 && s.nodes.contains_key(name) && !s.cordoned(name) && s.holds(name);
    case.kill_at(&sim, "between the uncordon and the release", back, false, 1)
        .await;
    case.settled(&sim).await;
}

/// The Node's status reports the new boot ID only 20 s after the reboot, while the new agent
/// starts at once: the agent must recognise its reboot from the node's own boot ID.
#[tokio::test]
async fn a_boot_id_the_node_reports_late_means_one_reboot() {
    let case = OneNode::new("kill-stale-boot").await;
    let options = NodeOptions {
        boot_id_delay: Duration::from_secs(20),
        ..NodeOptions::default()
    };
    let sim = case.start(&options, &[]);
    let first_boot = case.fleet.scope.first_boot_id(&case.name).await;
    eventually("the agent after the reboot to start", SETTLE, || async {
        (sim.agent_starts() == 2).then_some(())
    })
    .await;
    let fresh = case.fresh().await;
    assert!(
        fresh.boot_id == first_boot && sim.local_boot_id() != first_boot,
        "the Node still reports the boot ID from before the reboot ({first_boot}) while the node \
         has a new one: {fresh:?}, node's own {}",
        sim.local_boot_id()
    );
    case.settled(&sim).await;
}

/// A tiny xorshift generator: the soak's choices, reproducible from the seed it prints.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A rolling reboot of 8 nodes at concurrency 2 while an agent is SIGKILLed every 2 to 4 s, every
/// other time one that holds the lock, until every node has rebooted once and the lock is free;
/// each node's agent at most [`KILLS_PER_NODE`] times.
/// How often the soak kills each node's agent at most.
const KILLS_PER_NODE: usize = 4;

#[tokio::test]
async fn a_rolling_reboot_with_agents_killed_every_few_seconds() {
    const NODES: usize = 8;
    let fleet = Fleet::new("kill-soak", NODES).await;
    let scope = &fleet.scope;
    // Pods to evict, and hosts that take a moment to go down and come back: cycles long enough
    // for kills to land in every phase.
    create_deployment(scope, "web", NODES as i32, None).await;
    let options = NodeOptions {
        downtime: Duration::from_secs(2),
        reboot_delay: Duration::from_secs(2),
        ..NodeOptions::default()
    };
    let observer = Observer::start(scope, 2, &[]).await;
    let sims = fleet.start_all(&options, &["--concurrency=2"]);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("soak: random seed {seed}");
    let mut random = Random(seed);
    let (mut kills, mut holder_kills) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_millis(2000 + random.below(2001))).await;
        let now = observer.snapshot();
        if sims.iter().all(|s| s.reboots() >= 1) && now.holders.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            // Fails, naming what is unfinished, with node-init's events and the agents' logs.
            observer.assert_each_rebooted_once(&sims, Duration::ZERO).await;
            panic!(
                "the rollout did not finish within 300s under kills, yet the observer saw it settled: {now:?}"
            );
        }
        // Each node's agent is killed a bounded number of times: kills faster than an agent on a
        // loaded machine starts and finishes a round would otherwise hold the last holder back
        // for as long as they go on (a kill sent while no agent runs hits the next one at start).
        let killable: Vec<&SimulatedNode> = sims.iter().filter(|s| s.kills() < KILLS_PER_NODE).collect();
        if killable.is_empty() {
            continue;
        }
        let holders: Vec<&SimulatedNode> = killable.iter().copied().filter(|s| now.holds(&s.name)).collect();
        let victim = if kills % 2 == 0 && !holders.is_empty() {
            holder_kills += 1;
            holders[random.below(holders.len() as u64) as usize]
        } else {
            killable[random.below(killable.len() as u64) as usize]
        };
        victim.kill_agent().await;
        kills += 1;
    }
    eprintln!("soak: {kills} agents killed, {holder_kills} of them holding the lock");
    assert!(
        holder_kills >= 2,
        "kills hit lock holders mid-cycle: {holder_kills} of {kills}"
    );
    observer
        .assert_each_rebooted_once(&sims, Duration::from_secs(180))
        .await;
    assert!(
        observer.max_cordoned_by_kured() == 2,
        "concurrency 2 was used: at most {} cordoned at once",
        observer.max_cordoned_by_kured()
    );
}

/// A kubelet stopping the pod mid-drain (a DaemonSet update) sends SIGTERM: the agent ends the
/// round where it stands and exits well within the grace period, and the next agent resumes.
#[tokio::test]
async fn terminated_mid_drain_exits_at_once_and_the_next_agent_resumes() {
    let case = OneNode::new("term-draining").await;
    case.pin_a_pod().await;
    let options = NodeOptions {
        termination_grace: Duration::from_secs(20),
        ..NodeOptions::default()
    };
    let sim = case.start(&options, &[]);
    // The drain is held by the budget.
    sim.logged("eviction refused for now; retrying", Duration::from_secs(60))
        .await;
    let stopped = sim.terminate_agent().await;
    assert_eq!(
        stopped,
        "terminated 0",
        "the agent exits by itself on SIGTERM mid-drain; log:\n{}",
        sim.log_tail(20)
    );
    assert!(
        sim.log().contains("termination requested during a round"),
        "{}",
        sim.log_tail(20)
    );

    case.relax_the_budget().await;
    case.settled(&sim).await;
}
