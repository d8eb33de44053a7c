//! The watch that keeps [`ObjectLock`]'s copy of the lock object, so that waiting for a change,
//! reading and a first write attempt need no request of their own; and the polling that stands in
//! for it when RBAC forbids watching.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use kube::Api;
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tracing::warn;

use super::{ObjectLock, Snapshot};
use crate::lock::{LockError, LockSnapshot};

/// Polling period when RBAC forbids watching the DaemonSet: one GET per waiting agent per 10 s
/// keeps a waiting fleet of 100 nodes at 10 requests per second.
pub(super) const POLL_INTERVAL: Duration = Duration::from_secs(10);

/// What the watch of the lock object last saw.
#[derive(Debug, Clone)]
pub(super) enum Cached {
    /// Not watching, or (re)listing after an error: read from the API server.
    Unknown,
    /// The DaemonSet does not exist.
    Absent,
    Present(Box<Snapshot>),
}

impl Cached {
    /// The lock object as the watch saw it; `None` when it knows nothing.
    pub(super) fn seen(&self) -> Option<LockSnapshot> {
        match self {
            Cached::Unknown => None,
            Cached::Absent => Some(LockSnapshot::default()),
            Cached::Present(snapshot) => Some(snapshot.seen()),
        }
    }
}

impl ObjectLock {
    /// Starts the watch of the lock object, once.
    pub(super) fn start_watch(&self) {
        self.watching.get_or_init(|| {
            let task = WatchTask {
                api: self.api.clone(),
                name: self.name.clone(),
                object: self.object.clone(),
                annotation: self.annotation.clone(),
                cache: self.cache.clone(),
                poll: self.poll.clone(),
            };
            tokio::spawn(task.run()).abort_handle()
        });
    }
}

/// Keeps [`ObjectLock`]'s cache up to date from a watch of the lock object, until the lock is
/// dropped or RBAC forbids the watch.
struct WatchTask {
    api: Api<DynamicObject>,
    name: String,
    object: String,
    annotation: String,
    cache: Arc<watch::Sender<Cached>>,
    poll: Arc<AtomicBool>,
}

impl WatchTask {
    async fn run(self) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        // The watcher lists, then watches, and lists again when the watch expires; after an
        // error it backs off (up to about a minute) before trying again.
        let mut events = std::pin::pin!(watcher::watcher(self.api.clone(), config).default_backoff());
        let mut listed = Cached::Absent;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listed = Cached::Absent,
                Ok(Event::InitApply(object)) => {
                    listed = Cached::Present(Box::new(Snapshot::of(object, &self.annotation)))
                }
                Ok(Event::InitDone) => {
                    self.cache
                        .send_replace(std::mem::replace(&mut listed, Cached::Absent));
                }
                Ok(Event::Apply(object)) => {
                    self.cache
                        .send_replace(Cached::Present(Box::new(Snapshot::of(object, &self.annotation))));
                }
                Ok(Event::Delete(_)) => {
                    self.cache.send_replace(Cached::Absent);
                }
                Err(source) => {
                    let error = LockError::Watch {
                        object: self.object.clone(),
                        source,
                    };
                    if error.is_forbidden() {
                        warn!(object = %self.object, error = %crate::error_chain(&error),
                            "may not watch the lock object; polling it every {POLL_INTERVAL:?} instead \
                             (grant list and watch on daemonsets to see a freed lock at once)");
                        // Before waking the waiters, so that they see it.
                        self.poll.store(true, Ordering::Relaxed);
                        self.cache.send_replace(Cached::Unknown);
                        return;
                    }
                    warn!(object = %self.object, error = %crate::error_chain(&error),
                        "watching the lock object failed; reading it directly until the watch is back");
                    self.cache.send_replace(Cached::Unknown);
                }
            }
        }
    }
}
