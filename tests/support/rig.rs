//! The setting of the fault scenarios: one node with two pods pinned to it (the drain has work),
//! the agents' ServiceAccount, a fault proxy for the agent to talk through, and an observer
//! allowing one node at a time.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::DeleteParams;

use super::agents::{Agents, Fleet};
use super::faultproxy::FaultProxy;
use super::objects::{create_deployment, create_pdb, pods_on, running_on};
use super::observer::Observer;
use super::scope::Scope;
use super::simulated::SimulatedNode;
use super::wait::eventually;

/// Ample time for a whole cycle (drain, reboot, return) after a fault has passed.
pub const SETTLE: Duration = Duration::from_secs(180);

pub struct Rig {
    pub scope: Scope,
    pub node: String,
    pub agents: Agents,
    pub proxy: FaultProxy,
    pub observer: Observer,
}

impl Rig {
    pub async fn new(test: &str) -> Rig {
        let Fleet {
            scope,
            mut names,
            agents,
        } = Fleet::new(test, 1).await;
        let node = names.remove(0);
        create_deployment(&scope, "web", 2, Some(&node)).await;
        running_on(&scope, "app=web", &[&node, &node]).await;
        let proxy = FaultProxy::start().await;
        let observer = Observer::start(&scope, 1, &[]).await;
        Rig {
            scope,
            node,
            agents,
            proxy,
            observer,
        }
    }

    /// The node's agent, talking to the API server through the proxy.
    pub fn start(&self, args: &[&str]) -> SimulatedNode {
        self.agents
            .start_through(&self.scope, &self.node, &self.proxy, args)
    }

    /// A PodDisruptionBudget that refuses every eviction of the pods, holding the drain back.
    pub async fn hold_the_drain(&self) {
        create_pdb(&self.scope, "web", 2, 2).await;
    }

    /// Deletes the budget. Retried: the API server may still be recovering from a fault.
    pub async fn let_the_drain_go(&self) {
        let pdbs = self.scope.api::<PodDisruptionBudget>();
        eventually(
            "the PodDisruptionBudget deleted",
            Duration::from_secs(60),
            || async {
                match pdbs.delete("web", &DeleteParams::default()).await {
                    Ok(_) => Some(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Some(()),
                    Err(_) => None,
                }
            },
        )
        .await;
    }

    /// Holds the drain ([`Rig::hold_the_drain`]), starts the agent with `args` and waits until it
    /// is draining ([`Rig::draining`]).
    pub async fn start_held(&self, args: &[&str]) -> SimulatedNode {
        self.hold_the_drain().await;
        let sim = self.start(args);
        self.draining(&sim).await;
        sim
    }

    /// Waits until the agent has cordoned the node and asked for an eviction.
    pub async fn draining(&self, sim: &SimulatedNode) {
        self.observer
            .until("the node cordoned", SETTLE, |s| s.cordoned(&self.node))
            .await;
        eventually("an eviction request", SETTLE, || async {
            (self.proxy.forwarded("create", "pods/eviction") >= 1).then_some(())
        })
        .await;
        assert_eq!(sim.reboots(), 0, "no reboot while the budget holds the drain");
    }

    /// The cycle ends settled with one reboot (see [`Observer::assert_settled`]), and the node
    /// was cordoned once: the agent never gave it back midway to start over.
    pub async fn settled_after_one_drain(&self, sim: &SimulatedNode) {
        self.observer.assert_settled(&[(sim, 1)], SETTLE).await;
        let cordons = self.observer.cordons(&self.node);
        assert_eq!(
            cordons,
            1,
            "the node was cordoned {cordons} times: the agent gave it back midway and started over; agent log:\n{}",
            sim.log_tail(30)
        );
    }

    /// The UIDs of the pods on the node now.
    pub async fn pods_on_the_node(&self) -> BTreeSet<String> {
        let pods = pods_on(&self.scope, &self.node).await;
        pods.iter().filter_map(|p| p.uid()).collect()
    }
}
