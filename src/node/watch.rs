//! A watch of the agent's own Node (field selector `metadata.name`), kept for the agent's
//! lifetime: an idle agent sees a reboot asked for by hand (`kured.dev/reboot-now`) or a pause
//! the moment it is set, without reading its Node every round. Where RBAC forbids watching
//! Nodes (upstream's manifests grant `get` and `patch` only) the watch stops, and the agent reads
//! its Node instead.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controls;
use crate::kube_error;

/// What the watch knows of the Node.
#[derive(Debug, Clone)]
enum Watched {
    /// Not listed yet, or the watch is recovering from an error: read the Node.
    Unknown,
    /// RBAC forbids watching Nodes: read the Node, always.
    Forbidden,
    Present(Box<Node>),
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
                        sender.send_replace(Watched::Present(Box::new(node)));
                    }
                    Ok(Event::Init | Event::InitDone) => {}
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
        match &*self.seen.borrow() {
            Watched::Present(node) => Some((**node).clone()),
            Watched::Unknown | Watched::Forbidden => None,
        }
    }

    /// Whether the watch has the Node now (when not, read it: the watch is recovering, or
    /// forbidden).
    pub fn knows(&self) -> bool {
        matches!(&*self.seen.borrow(), Watched::Present(_))
    }

    /// Waits until the watch has the Node at a resourceVersion other than `version` (that of
    /// the Node last looked at, as [`NodeWatch::current`] or a read gave it), or no longer has it
    /// (read it then); returns at once when that is already so. So no change after that look is
    /// missed, however late this is called.
    pub async fn node_changed(&self, version: Option<&str>) {
        let mut seen = self.seen.clone();
        loop {
            let differs = match &*seen.borrow_and_update() {
                Watched::Present(node) => node.metadata.resource_version.as_deref() != version,
                Watched::Unknown | Watched::Forbidden => true,
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
    match watched {
        Watched::Present(node) => Some(controls::node_controls(node.metadata.annotations.as_ref())),
        Watched::Unknown | Watched::Forbidden => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn node_at(version: &str) -> Watched {
        let mut node = Node::default();
        node.metadata.resource_version = Some(version.to_owned());
        Watched::Present(Box::new(node))
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
}
