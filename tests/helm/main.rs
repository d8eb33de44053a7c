//! The Helm chart, `charts/kured`, rendered by a real helm (built by `testenv/build`):
//! - `helm lint` passes, and the values schema refuses a misspelt or invalid configuration key;
//! - every agent flag is reachable through `configuration.*` or set by the chart itself, and every
//!   configuration key of upstream's chart exists here;
//! - `helm template kured` with default values renders the objects of deploy/kured.yaml under the
//!   same names, with the same RBAC rules, and a DaemonSet that runs /usr/bin/kured as the
//!   manifest's does; another release gets a lock, a Role and flags of its own;
//! - with representative values (tests/helm/values-signal.yaml) the container's arguments and
//!   environment are exactly the expected ones, and the real binary accepts them: its start-up
//!   validation passes, and `kured schedule` with that environment shows the configured window;
//! - the reboot method and the sentinel choose the security context and the hostPath volume;
//!   notification URLs come from a value or a Secret, never both; a ServiceMonitor without the
//!   Prometheus Operator's API stops rendering with a message saying so;
//! - the Grafana dashboard and the PrometheusRule render only when enabled, from copies equal to
//!   deploy/grafana-dashboard.json and deploy/prometheus-rules.yaml, with the sidecar's label and
//!   the rules' thresholds and job from the values;
//! - the admission policies render only where the cluster serves ValidatingAdmissionPolicy: with
//!   default values exactly deploy/kured-admission-policy.yaml, otherwise with the release's names,
//!   account and agent settings, and the API server accepts them;
//! - applied to the test cluster, in a scope of its own, the DaemonSets' pods run on the scope's kwok
//!   nodes, and each release's ServiceAccount may do what the agent needs and nothing more: its
//!   own lock, not another release's.
//!
//! By subject: [`values`] (lint, schema, flags), [`defaults`], [`representative`], [`options`]
//! (what single values choose), [`monitoring`] (dashboard and rules), [`admission`] (the
//! policies) and [`cluster`], all rendering through [`render`].
//!
//! Needs helm (`testenv/build`); the tests in [`cluster`] need the test cluster (`scripts/testcluster up`)
//! and kubectl.

#[path = "../support/mod.rs"]
mod support;

mod admission;
mod cluster;
mod defaults;
mod monitoring;
mod options;
mod render;
mod representative;
mod values;
