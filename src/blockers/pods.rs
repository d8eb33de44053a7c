//! The pod blocker: pods on this node that match a `--blocking-pod-selector` block reboots.
//!
//! As upstream kured: for each selector, one list of the pods in all namespaces with
//! `labelSelector=<selector>` and the field selector `spec.nodeName=<node>`,
//! `status.phase!=Succeeded`, `status.phase!=Failed`, `status.phase!=Unknown` — pods that have
//! finished do not block, pods that are Pending or Running do. A pod matching several selectors
//! counts once. A list that fails blocks (upstream does too), naming the selector and the error.
//!
//! Unlike upstream, which stops at the first selector with pods and lists at most 10 of them,
//! every selector is checked and the reason counts every blocking pod (naming the first few): the
//! pods of one node are bounded by the kubelet's `maxPods`, so listing them all is cheap.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tracing::debug;

use super::{BlockKind, BlockReason, Blocker, name_list};
use crate::selector::LabelSelector;

/// How long one list may take. The API server answers a list of one node's pods from its cache in
/// milliseconds; one that has not answered in 10 s is in trouble, and the next check retries.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Pods named in a reason, as upstream; the reason still gives the total.
const MAX_NAMES: usize = 10;

/// Pod phases that are over: such pods no longer run and do not block.
const FINISHED_PHASES: [&str; 3] = ["Succeeded", "Failed", "Unknown"];

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("cannot list pods with selector {selector:?} on node {node}")]
    List {
        node: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing pods with selector {selector:?} on node {node} took longer than {timeout:?}")]
    Timeout {
        node: String,
        selector: String,
        timeout: Duration,
    },
}

/// Blocks while pods matching any of its selectors are on its node and have not finished.
#[derive(Clone)]
pub struct PodBlocker {
    pods: Api<Pod>,
    node: String,
    selectors: Vec<LabelSelector>,
    timeout: Duration,
}

impl std::fmt::Debug for PodBlocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBlocker")
            .field("node", &self.node)
            .field("selectors", &self.selectors_text())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PodBlocker {
    /// A blocker for pods on `node` that match any of `selectors`.
    pub fn new(client: Client, node: impl Into<String>, selectors: Vec<LabelSelector>) -> PodBlocker {
        PodBlocker {
            pods: Api::all(client),
            node: node.into(),
            selectors,
            timeout: LIST_TIMEOUT,
        }
    }

    /// The same blocker with another time-out per list than [`LIST_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> PodBlocker {
        self.timeout = timeout;
        self
    }

    fn selectors_text(&self) -> Vec<String> {
        self.selectors.iter().map(ToString::to_string).collect()
    }

    /// One line for the agent's start-up log.
    pub fn describe(&self) -> String {
        format!(
            "pods on node {} matching {}",
            self.node,
            self.selectors_text()
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(" or ")
        )
    }

    /// The unfinished pods on the node that match `selector`, as `namespace/name`.
    pub async fn matching(&self, selector: &LabelSelector) -> Result<BTreeSet<String>, PodsError> {
        let params = ListParams::default()
            .labels(&selector.to_string())
            .fields(&field_selector(&self.node));
        let list = tokio::time::timeout(self.timeout, self.pods.list(&params))
            .await
            .map_err(|_| PodsError::Timeout {
                node: self.node.clone(),
                selector: selector.to_string(),
                timeout: self.timeout,
            })?
            .map_err(|source| PodsError::List {
                node: self.node.clone(),
                selector: selector.to_string(),
                source,
            })?;
        Ok(list
            .items
            .iter()
            // The field selector already leaves finished pods out; this guards against a server
            // or proxy that ignores it.
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str()))
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !phase.is_some_and(|phase| FINISHED_PHASES.contains(&phase))
            })
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect())
    }
}

impl Blocker for PodBlocker {
    async fn check(&self) -> Vec<BlockReason> {
        let mut pods = BTreeSet::new();
        let mut matched = Vec::new();
        let mut reasons = Vec::new();
        for selector in &self.selectors {
            match self.matching(selector).await {
                Ok(found) => {
                    if !found.is_empty() {
                        matched.push(selector.to_string());
                    }
                    pods.extend(found);
                }
                Err(e) => {
                    let cause = describe(&e);
                    debug!(node = %self.node, selector = %selector, error = %cause, "cannot list pods");
                    reasons.push(BlockReason::new(BlockKind::PodListError, cause));
                }
            }
        }
        debug!(node = %self.node, pods = pods.len(), errors = reasons.len(), "blocking pods checked");
        if !pods.is_empty() {
            let names: Vec<String> = pods.into_iter().collect();
            let list = name_list(&names, MAX_NAMES);
            let message = format!(
                "{} pod{} on node {} matching {}: {list}",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                self.node,
                matched
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(" or "),
            );
            reasons.insert(0, BlockReason::new(BlockKind::BlockingPods, message));
        }
        reasons
    }
}

/// The error and its cause on one line. kube's API errors repeat the server's message and show
/// its whole Status object; the message, code and reason say it all.
fn describe(error: &PodsError) -> String {
    match error {
        PodsError::List {
            source: kube::Error::Api(status),
            ..
        } => format!("{error}: {} ({} {})", status.message, status.code, status.reason),
        other => crate::error_chain(other),
    }
}

/// The field selector for unfinished pods on `node`, with the node name escaped as the API server
/// expects (`\`, `,` and `=` preceded by `\`).
fn field_selector(node: &str) -> String {
    let mut escaped = String::with_capacity(node.len());
    for c in node.chars() {
        if matches!(c, '\\' | ',' | '=') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    let mut selector = format!("spec.nodeName={escaped}");
    for phase in FINISHED_PHASES {
        selector.push_str(",status.phase!=");
        selector.push_str(phase);
    }
    selector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selector_matches_upstream_and_escapes() {
        assert_eq!(
            field_selector("node-1"),
            "spec.nodeName=node-1,status.phase!=Succeeded,status.phase!=Failed,status.phase!=Unknown"
        );
        assert!(field_selector(r"a,b=c\d").starts_with(r"spec.nodeName=a\,b\=c\\d,"));
    }
}
