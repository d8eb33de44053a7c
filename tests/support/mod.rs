//! Test support for the integration tests, most of which run against the local test cluster
//! (`scripts/testcluster up`). Every such test gets a [`scope::Scope`]: its own namespace and its
//! own node names, so tests run in parallel on one cluster without seeing each other's objects.
//!
//! By subject:
//! - [`cluster`]: reaching the test cluster (its kubeconfig, clients, kubectl, the script), and
//!   the failure that says how to start it; [`scope`]: one test's corner of it; [`wait`]: bounded
//!   waits that fail naming what they waited for;
//! - [`objects`]: pods, Deployments, DaemonSets (the lock's among them) and
//!   PodDisruptionBudgets in a scope; [`nodes`]: its kwok Nodes;
//! - [`rbac`]: ServiceAccount tokens and the clients made from them; [`access`]: what the
//!   authorizer lets a client do;
//! - [`simulated`]: simulated nodes (node-init in a PID namespace of its own running the real
//!   agent); [`agents`]: the agents' lock and credentials as the manifest has them, and the
//!   setting of a test of whole agents;
//! - [`cli`]: running the `kured` binary and reading its output; [`http`]: plain HTTP on loopback;
//! - [`faultproxy`], [`observer`], [`prometheus`], [`rig`]: the fault proxy, the independent
//!   observer of reboots, a real Prometheus, and the setting of the fault scenarios.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod access;
pub mod agents;
pub mod cli;
pub mod cluster;
pub mod faultproxy;
pub mod http;
pub mod nodes;
pub mod objects;
pub mod observer;
pub mod prometheus;
pub mod rbac;
pub mod rig;
pub mod scope;
pub mod simulated;
pub mod wait;
