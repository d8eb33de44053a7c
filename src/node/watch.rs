//! A watch of the agent's own Node (field selector `metadata.name`), kept for the agent's
//! lifetime: an idle agent sees a reboot asked for by hand (`kured.dev/reboot-now`) or a pause
//! the moment it is set, without reading its Node every round. Where RBAC forbids watching
//! Nodes (upstream's manifests grant `get` and `patch` only) the watch stops, and the agent reads
//! its Node instead.
//!
//! The watch also remembers the resourceVersions it delivered last ([`DELIVERED`]), so it can
//! vouch that its Node is at least as new as one the agent read or wrote
//! ([`NodeWatch::current_since`]): events of one object arrive in order, so a watch that has
//! delivered a version holds that version or a later one. resourceVersions are opaque, only ever
//! compared for equality.

use std::collections::VecDeque;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controls;
use crate::kube_error;

/// How many of the resourceVersions the watch delivered it remembers. Between two rounds the
/// Node changes a few times (the kubelet writes its status every ten seconds at the most, every
/// five minutes when nothing changes), so the version the agent kept last is among these unless
/// the Node changed more often than that since; then the round reads the Node, once.
const DELIVERED: usize = 32;

/// What the watch knows of the Node.
#[derive(Debug, Clone)]
enum Watched {
    /// Not listed yet, or the watch is recovering from an error: read the Node.
    Unknown,
    /// RBAC forbids watching Nodes: read the Node, always.
    Forbidden,
    /// The Node as last delivered, and the resourceVersions delivered since the watch last
    /// (re)listed, oldest first, at most [`DELIVERED`]. A relist starts them afresh: the list
    /// may come from a cache older than what was delivered before it.
    Present {
        node: Box<Node>,
        delivered: VecDeque<String>,
    },
}

impl Watched {
    /// The watch delivered `node`: its Node now, its version the newest delivered.
    fn deliver(&mut self, node: Node) {
        let mut delivered = match std::mem::replace(self, Watched::Unknown) {
            Watched::Present { delivered, .. } => delivered,
            Watched::Unknown | Watched::Forbidden => VecDeque::new(),
        };
        if let Some(version) = &node.metadata.resource_version {
            if delivered.len() == DELIVERED {
                delivered.pop_front();
            }
            delivered.push_back(version.clone());
        }
        *self = Watched::Present {
            node: Box::new(node),
            delivered,
        };
    }

    /// The watch lists again: the versions delivered before no longer vouch for what it will
    /// deliver (the Node stays until the list replaces it). Returns whether anything changed.
    fn relist(&mut self) -> bool {
        match self {
            Watched::Present { delivered, .. } if !delivered.is_empty() => {
                delivered.clear();
                true
            }
            _ => false,
        }
    }

    /// The Node, when delivered and not lost since.
    fn node(&self) -> Option<&Node> {
        match self {
            Watched::Present { node, .. } => Some(node),
            Watched::Unknown | Watched::Forbidden => None,
        }
    }

    /// The Node, if the watch delivered `version` since it last listed: then this Node is at
    /// that version or a later one.
    fn since(&self, version: &str) -> Option<&Node> {
        match self {
            Watched::Present { node, delivered } if delivered.iter().any(|v| v == version) => Some(node),
            _ => None,
        }
    }
}

/// The watch of one Node; stopped when dropped.
#[derive(Debug)]
pub struct NodeWatch {
    seen: watch::Receiver<Watched>,
    task: tokio::task::AbortHandle,
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NodeWatch {
    /// Starts watching Node `name`.
    pub fn start(client: Client, name: &str) -> NodeWatch {
        let (sender, seen) = watch::channel(Watched::Unknown);
        let api: Api<Node> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            // The watcher lists, then watches, and lists again when the watch expires; after an
            // error it backs off (up to about a minute) before trying again.
            let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::InitApply(node) | Event::Apply(node)) => {
                        sender.send_modify(|watched| watched.deliver(node));
                    }
                    Ok(Event::Init) => {
                        sender.send_if_modified(Watched::relist);
                    }
                    Ok(Event::InitDone) => {}
                    Ok(Event::Delete(_)) => {
                        sender.send_replace(Watched::Unknown);
                    }
                    Err(e) => {
                        let forbidden = match &e {
                            watcher::Error::InitialListFailed(source)
                            | watcher::Error::WatchFailed(source) => kube_error::is_forbidden(source),
                            _ => false,
                        };
                        if forbidden {
                            info!(node = %name, error = %crate::error_chain(&e),
                                "may not watch this node; reading it every round instead (grant list and watch on nodes)");
                            sender.send_replace(Watched::Forbidden);
                            return;
                        }
                        warn!(node = %name, error = %crate::error_chain(&e),
                            "watching this node failed; reading it until the watch is back");
                        sender.send_replace(Watched::Unknown);
                    }
                }
            }
        });
        NodeWatch {
            seen,
            task: task.abort_handle(),
        }
    }

    /// The Node as the watch has it now; `None` when it does not know (read the Node then).
    pub fn current(&self) -> Option<Node> {
        self.seen.borrow().node().cloned()
    }

    /// The Node as the watch has it now, if it is at least as new as the Node at resourceVersion
    /// `version`: the watch delivered that version (among its last `DELIVERED`, 32, since it last
    /// listed), so it has that one or a later one. `None` otherwise (read the Node then): the
    /// watch has not got that far yet, lost the Node, listed again, or never had it.
    pub fn current_since(&self, version: &str) -> Option<Node> {
        self.seen.borrow().since(version).cloned()
    }

    /// Whether the watch has the Node now (when not, read it: the watch is recovering, or
    /// forbidden).
    pub fn knows(&self) -> bool {
        self.seen.borrow().node().is_some()
    }

    /// Waits until the watch has the Node at a resourceVersion other than `version` (that of
    /// the Node last looked at, as [`NodeWatch::current`] or a read gave it), or no longer has it
    /// (read it then); returns at once when that is already so. So no change after that look is
    /// missed, however late this is called.
    pub async fn node_changed(&self, version: Option<&str>) {
        let mut seen = self.seen.clone();
        loop {
            let differs = match seen.borrow_and_update().node() {
                Some(node) => node.metadata.resource_version.as_deref() != version,
                None => true,
            };
            if differs {
                return;
            }
            if seen.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until what the Node's annotations ask of the agent ([`controls::node_controls`])
    /// changes from what the watch has now. Never returns once the watch stopped (forbidden).
    pub async fn controls_changed(&self) {
        let mut seen = self.seen.clone();
        seen.mark_unchanged();
        let before = controls_of(&seen.borrow());
        loop {
            if seen.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let now = controls_of(&seen.borrow_and_update());
            if now.is_some() && now != before {
                return;
            }
        }
    }
}

fn controls_of(watched: &Watched) -> Option<controls::NodeControls> {
    watched
        .node()
        .map(|node| controls::node_controls(node.metadata.annotations.as_ref()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(version: &str) -> Node {
        let mut node = Node::default();
        node.metadata.resource_version = Some(version.to_owned());
        node
    }

    fn node_at(version: &str) -> Watched {
        let mut watched = Watched::Unknown;
        watched.deliver(at(version));
        watched
    }

    /// A watch fed by hand through the returned sender.
    fn fed(first: Watched) -> (watch::Sender<Watched>, NodeWatch) {
        let (sender, seen) = watch::channel(first);
        let task = tokio::spawn(std::future::pending::<()>()).abort_handle();
        (sender, NodeWatch { seen, task })
    }

    /// Whether `node_changed(version)` returns within a moment of the paused clock.
    async fn returns(watched: &NodeWatch, version: Option<&str>) -> bool {
        tokio::time::timeout(Duration::from_secs(1), watched.node_changed(version))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn node_changed_waits_only_while_the_watch_has_the_version_looked_at() {
        let (sender, watched) = fed(node_at("5"));
        assert!(watched.knows());
        assert!(!returns(&watched, Some("5")).await, "the same version: waits");
        assert!(
            returns(&watched, Some("4")).await,
            "moved on since the look: at once"
        );
        assert!(returns(&watched, None).await, "looked at nothing: at once");

        let waiting = tokio::spawn(async move {
            watched.node_changed(Some("5")).await;
            watched
        });
        tokio::task::yield_now().await;
        sender.send_replace(node_at("6"));
        let watched = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a new version ends the wait")
            .expect("the task");

        for gone in [Watched::Unknown, Watched::Forbidden] {
            sender.send_replace(gone);
            assert!(!watched.knows());
            assert!(
                returns(&watched, Some("6")).await,
                "the watch lost the Node: read it"
            );
        }
    }

    fn version_of(node: Option<Node>) -> Option<String> {
        node?.metadata.resource_version
    }

    #[tokio::test]
    async fn current_since_vouches_only_for_versions_delivered_since_the_last_list() {
        let (sender, watched) = fed(Watched::Unknown);
        assert_eq!(version_of(watched.current_since("5")), None, "nothing delivered");

        sender.send_modify(|w| w.deliver(at("5")));
        assert_eq!(version_of(watched.current_since("5")), Some("5".into()));
        // Opaque: "4" looks older, but was never delivered, so nothing says "5" is newer.
        assert_eq!(version_of(watched.current_since("4")), None);
        assert_eq!(
            version_of(watched.current_since("6")),
            None,
            "not got that far yet"
        );

        sender.send_modify(|w| w.deliver(at("6")));
        sender.send_modify(|w| w.deliver(at("7")));
        assert_eq!(
            version_of(watched.current_since("5")),
            Some("7".into()),
            "delivered 5, so the current one is 5 or later"
        );
        assert_eq!(version_of(watched.current_since("7")), Some("7".into()));

        // Only the last DELIVERED versions count.
        for n in 0..DELIVERED {
            sender.send_modify(|w| w.deliver(at(&format!("v{n}"))));
        }
        let last = format!("v{}", DELIVERED - 1);
        assert_eq!(version_of(watched.current_since("7")), None, "too long ago");
        assert_eq!(version_of(watched.current_since("v0")), Some(last.clone()));

        // A relist forgets what was delivered; the Node stays until the list delivers again.
        assert!(sender.send_if_modified(Watched::relist));
        assert!(
            !sender.send_if_modified(Watched::relist),
            "nothing more to forget"
        );
        assert!(watched.knows());
        assert_eq!(version_of(watched.current()), Some(last.clone()));
        assert_eq!(
            version_of(watched.current_since(&last)),
            None,
            "listed again since"
        );
        sender.send_modify(|w| w.deliver(at("8")));
        assert_eq!(version_of(watched.current_since("8")), Some("8".into()));
        assert_eq!(version_of(watched.current_since("v0")), None);

        // A Node without a resourceVersion vouches for nothing, and hides none delivered before.
        sender.send_modify(|w| w.deliver(Node::default()));
        assert_eq!(version_of(watched.current_since("8")), None);
        assert!(watched.current_since("8").is_some());

        for gone in [Watched::Unknown, Watched::Forbidden] {
            sender.send_replace(gone);
            assert!(watched.current_since("8").is_none(), "the watch lost the Node");
        }
        sender.send_modify(|w| w.deliver(at("9")));
        assert_eq!(
            version_of(watched.current_since("8")),
            None,
            "delivered before it lost it"
        );
    }
}
