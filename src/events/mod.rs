//! Kubernetes Events (`events.k8s.io/v1`) on the agent's own Node, one for every step of a
//! reboot, reported by controller [`REPORTING_CONTROLLER`] with the node's name as the instance,
//! so that `kubectl describe node` and `kubectl events` show what kured did and why it waits.
//!
//! Recording never holds up or fails a round: the agent hands each occurrence to a task of its
//! own ([`Recorder::record`]), which writes them in order — a new Event, or a patch of the
//! `series` of the one it repeats ([`series`]). A write that fails is logged at warn once per
//! kind of failure and otherwise dropped: the Events are for people, the agent's state is
//! elsewhere.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::decide::Action;
use crate::drain::DrainSummary;
use crate::kube_error;
use crate::node::Cordon;

pub mod reason;
pub mod series;

pub use reason::Reason;
use series::{Series, Write};

/// The Events' `reportingController`.
pub const REPORTING_CONTROLLER: &str = "kured.dev/agent";

/// Where the Events of a Node, which has no namespace, go (as the kubelet's).
pub const NAMESPACE: &str = "default";

/// Occurrences waiting to be written: a round reports a few; more waiting means the API server
/// does not answer, and the newest are dropped rather than the round held up.
const QUEUE: usize = 64;

/// How long Events are not written after RBAC refused one (as upstream's manifests, which lack
/// the rule, do): without the pause a waiting agent would spend a refused request every round; a
/// rule added later is used within this.
const FORBIDDEN_PAUSE: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);

/// How long the last Event before a reboot may hold it up: the agent may not come back to write
/// it, and a reboot held longer for an Event is worse than the Event missing.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

enum Message {
    Occurred {
        reason: Reason,
        note: String,
        at: Timestamp,
    },
    Flush(oneshot::Sender<()>),
}

/// The recorder of one Node's Events.
pub struct Recorder {
    sender: mpsc::Sender<Message>,
    /// What the sentinel last said, for [`Reason::RebootRequired`].
    required: std::sync::Mutex<Option<bool>>,
    full_warned: std::sync::atomic::AtomicBool,
}

impl Recorder {
    /// Starts the task that writes the Events of Node `node`; it ends when the recorder is
    /// dropped, after writing what was handed to it.
    pub fn start(client: Client, node: &str) -> Recorder {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let writer = Writer {
            api: Api::namespaced(client, NAMESPACE),
            node: node.to_owned(),
            series: Series::default(),
            warned: BTreeSet::new(),
            forbidden_until: None,
        };
        tokio::spawn(writer.run(receiver));
        Recorder {
            sender,
            required: std::sync::Mutex::new(None),
            full_warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Reports `reason` with `note`, now. Never waits.
    pub fn record(&self, reason: Reason, note: impl Into<String>) {
        let note = reason::bounded(note.into());
        let message = Message::Occurred {
            reason,
            note,
            at: Timestamp::now(),
        };
        if self.sender.try_send(message).is_err()
            && !self.full_warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            warn!(
                reason = reason.as_str(),
                "the Event queue is full (the API server does not take them); dropping Events"
            );
        }
    }

    /// Reports `reason` with the note it has on its own ([`Reason::note`]).
    pub fn step(&self, reason: Reason) {
        self.record(reason, reason.note());
    }

    /// Reports the reboot through `rebooter` and waits (up to `FLUSH_LIMIT`, 5 s) until every
    /// Event so far is written: the agent may not run again to write them.
    pub async fn rebooting(&self, rebooter: &str) {
        self.record(Reason::Rebooting, format!("rebooting: {rebooter}"));
        let (done, written) = oneshot::channel();
        if self.sender.try_send(Message::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_LIMIT, written).await;
        }
    }

    /// Takes what an earlier agent on this node published the sentinel to say (`required`) as
    /// what it said before this agent's first round, so a reboot still needed after an agent
    /// restart is not reported as new. Ignored once a round has reported.
    pub fn required_before(&self, required: Option<bool>) {
        let mut last = self.required.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none() {
            *last = required;
        }
    }

    /// Reports what a round decided ([`reason::of_round`]); `required`: what the sentinel said.
    pub fn round(&self, required: Option<bool>, step: &Action) {
        let was = {
            let mut last = self.required.lock().unwrap_or_else(|e| e.into_inner());
            let was = *last;
            if required.is_some() {
                *last = required;
            }
            was
        };
        for (reason, note) in reason::of_round(was, required, step) {
            self.record(reason, note);
        }
    }

    /// Reports a cordon that went through (kured's own, or one found in place).
    pub fn cordoned<E>(&self, cordon: &Result<Cordon, E>) {
        match cordon {
            Ok(Cordon::Cordoned) => self.record(Reason::Cordoned, "cordoned for the reboot"),
            Ok(_) => self.record(
                Reason::Cordoned,
                "already unschedulable; kept so after the reboot",
            ),
            Err(_) => {}
        }
    }

    /// Reports a drain that finished: pods evicted and how long it took.
    pub fn drained(&self, summary: &DrainSummary) {
        self.record(
            Reason::Drained,
            format!(
                "pods evicted: {}, left on the node: {}, in {:.1} s",
                summary.evicted.len(),
                summary.skipped.len(),
                summary.elapsed.as_secs_f64()
            ),
        );
    }
}

/// The task that writes the Events, in the order they occurred.
struct Writer {
    api: Api<Event>,
    node: String,
    series: Series,
    /// The kinds of failure logged so far.
    warned: BTreeSet<String>,
    /// RBAC refused an Event: none is written until then ([`FORBIDDEN_PAUSE`]).
    forbidden_until: Option<Timestamp>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Message>) {
        loop {
            let message = tokio::select! {
                message = receiver.recv() => message,
                () = sleep_until(self.series.next_due()) => {
                    for write in self.series.due(Timestamp::now()) {
                        if let Write::Patch { name, count, last_observed } = write {
                            self.patch(&name, count, last_observed).await;
                        }
                    }
                    continue;
                }
            };
            match message {
                None => return,
                Some(Message::Flush(done)) => {
                    let _ = done.send(());
                }
                Some(Message::Occurred { at, .. }) if self.forbidden_until.is_some_and(|t| at < t) => {}
                Some(Message::Occurred { reason, note, at }) => {
                    match self.series.observe(reason.as_str(), &note, at) {
                        Write::Create => self.create(reason, &note, at).await,
                        Write::Patch {
                            name,
                            count,
                            last_observed,
                        } => {
                            if !self.patch(&name, count, last_observed).await {
                                // Gone (expired on the API server): this occurrence starts anew.
                                self.create(reason, &note, at).await;
                            }
                        }
                        Write::Held => {}
                    }
                }
            }
        }
    }

    /// Creates the Event of the first occurrence of `reason` with `note`, at `at`.
    async fn create(&mut self, reason: Reason, note: &str, at: Timestamp) {
        // As client-go names Events: the object's name and the time in nanoseconds, in hex.
        let name = format!("{}.{:x}", self.node, at.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(micro_time(at)),
            reason: Some(reason.as_str().to_owned()),
            note: Some(note.to_owned()),
            type_: Some(reason.event_type().to_owned()),
            action: Some(reason.action().to_owned()),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.node.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.node.clone()),
                // As the kubelet's: `kubectl describe node` finds Events by the node's name as
                // its UID as well as by its UID, so no read of the Node is needed for it.
                uid: Some(self.node.clone()),
                ..ObjectReference::default()
            }),
            ..Event::default()
        };
        match self.api.create(&PostParams::default(), &event).await {
            Ok(_) => self.series.created(reason.as_str(), note, &name, at),
            Err(e) => {
                if kube_error::is_forbidden(&e) {
                    self.forbidden_until = at.checked_add(FORBIDDEN_PAUSE).ok();
                }
                self.failed("creating", reason.as_str(), &e);
            }
        }
    }

    /// Writes the series of Event `name`; false when the Event is gone.
    async fn patch(&mut self, name: &str, count: u32, last_observed: Timestamp) -> bool {
        let series = serde_json::json!({
            "series": { "count": count, "lastObservedTime": micro_time(last_observed) },
        });
        match self
            .api
            .patch(name, &PatchParams::default(), &Patch::Merge(&series))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                if kube_error::is_not_found(&e) {
                    self.series.forget(name);
                    return false;
                }
                self.failed("updating the series of", name, &e);
                true
            }
        }
    }

    /// Logs a failed write, once per kind of failure (what was done and the API's answer).
    fn failed(&mut self, what: &str, event: &str, error: &kube::Error) {
        let answer = match error {
            kube::Error::Api(status) => format!("{} {}", status.code, status.reason),
            _ => "no answer".to_owned(),
        };
        if self.warned.insert(format!("{what}: {answer}")) {
            warn!(node = %self.node, event, error = %crate::error_chain(error),
                "{what} an Event failed; Events failing the same way are not logged again");
        }
    }
}

/// `at` as the API's MicroTime (k8s-openapi has a jiff of its own, of the same range: the
/// fallback is never taken). Microseconds are all a MicroTime keeps.
fn micro_time(at: Timestamp) -> MicroTime {
    let micros = at.as_microsecond();
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(micros)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Waits until `at`; forever when `None`.
async fn sleep_until(at: Option<Timestamp>) {
    match at {
        Some(at) => tokio::time::sleep(crate::decide::time_until(at, Timestamp::now())).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_to_the_microsecond() {
        let at: Timestamp = "2026-12-06T21:30:49.123456789Z".parse().expect("a time");
        assert_eq!(
            serde_json::to_value(micro_time(at)).expect("serialized"),
            "2026-12-06T21:30:49.123456Z"
        );
    }
}
