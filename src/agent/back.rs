//! Giving the node back: after its reboot (uncordon, post-reboot labels, the reboot request and
//! our annotation and taint removed, then the lock released after the durable release delay or
//! the health gate), or without one (a failed drain, a lost slot), and releasing the lock.

use std::sync::atomic::Ordering;

use jiff::Timestamp;
use tracing::{error, info};

use super::act::API_RETRY_LIMIT;
use super::publish::{idle_state, to_the_second};
use super::{Agent, LOCK_READ_REUSE, Wait};
use crate::agent_state::{AgentState, Phase, STATE_ANNOTATION};
use crate::controls;
use crate::decide::{self, Situation};
use crate::duration::GoDuration;
use crate::events::Reason;
use crate::kube_error;
use crate::lock::{RebootLock, Release};
use crate::node::{self, Annotations};
use crate::notify::{self, Event, Notifier};

impl<N: Notifier, L: RebootLock> Agent<N, L> {
    /// How long ago, in whole seconds, the reboot that just finished was asked for, as the agent
    /// that asked published it; `None` when that is not known.
    fn away_since_reboot_request(&self, now: Timestamp) -> Option<GoDuration> {
        let published = self.published.lock().ok()?;
        let requested: Timestamp = published
            .as_ref()
            .filter(|p| p.phase == Phase::Rebooting)?
            .reboot_requested
            .as_deref()?
            .parse()
            .ok()?;
        let away = decide::time_until(now, requested);
        Some(GoDuration::from_secs(i64::try_from(away.as_secs()).ok()?))
    }

    /// Returns the node to service without a reboot: uncordon (if `uncordon`), put on the
    /// post-reboot labels in place of the pre-reboot ones (as upstream does after a failed drain),
    /// then drop our lock entry (if `release`), without the release delay — the node never went
    /// down. The lock is kept until the uncordon has succeeded, so the node is never left cordoned
    /// without it.
    pub(super) async fn give_back(&self, uncordon: bool, release: bool) -> Wait {
        let node_id = &self.config.node_id;
        if uncordon {
            let uncordoned = kube_error::retry_transient(
                "uncordoning",
                tokio::time::Instant::now() + API_RETRY_LIMIT,
                node::NodeError::is_retryable,
                || self.node.uncordon(),
            )
            .await;
            if let Err(e) = uncordoned {
                error!(node = %node_id, error = %crate::error_chain(&e), "cannot uncordon; keeping the lock until it is done");
                return self.wait(Situation::ApiError);
            }
            self.events.step(Reason::Uncordoned);
        }
        if let Err(e) = self.node.set_labels(&self.config.post_reboot_node_labels).await {
            error!(node = %node_id, error = %crate::error_chain(&e), "setting post-reboot labels");
        }
        if self.config.annotate_nodes {
            self.best_effort(
                "removing the reboot-in-progress annotation",
                self.node.annotate_reboot_finished(),
            )
            .await;
        }
        if release {
            if let Err(e) = self.lock.release_now().await {
                error!(node = %node_id, error = %crate::error_chain(&e), "releasing the lock");
                return self.wait(Situation::ApiError);
            }
            // No reboot: not a reboot cycle.
            self.note_lock_entry(None);
            info!(node = %node_id, "node given back and lock released");
            self.events.step(Reason::LockReleased);
        } else {
            info!(node = %node_id, "node given back: kured's cordon outlived its lock entry");
        }
        if self.drain_failed.swap(false, Ordering::Relaxed) {
            self.wait(Situation::DrainFailed)
        } else {
            self.wait(Situation::LookAgain)
        }
    }

    /// The node came back from its reboot: return it to service, then release the lock (after
    /// the durable release delay).
    /// The phase `recovering` is published in the uncordon's own write when there is one.
    pub(super) async fn finish_reboot(&self, required: Option<bool>, uncordon: bool) -> Wait {
        let node_id = &self.config.node_id;
        let now = Timestamp::now();
        let away = self.away_since_reboot_request(now);
        match away {
            Some(away) => info!(node = %node_id, uncordon, away = %away,
                "node rebooted; returning it to service"),
            None => info!(node = %node_id, uncordon, "node rebooted; returning it to service"),
        }
        if !self.reboot_counted.swap(true, Ordering::Relaxed) {
            self.metrics.count_reboot();
            self.events.record(Reason::Rebooted, rebooted_note(away));
        }
        if let Ok(mut p) = self.published.lock() {
            // The reboot is done: remember when, for `kured status`.
            *p = Some(AgentState {
                last_reboot: Some(to_the_second(now)),
                ..p.clone().unwrap_or_else(idle_state)
            });
        }
        // The Node this round read: the uncordon starts from it, and it tells whether the
        // reboot-in-progress annotation (only kured writes it) is there to remove.
        let known = self.node.known(LOCK_READ_REUSE);
        let recovering = self.stage(required, Phase::Recovering, String::new());
        let mut unpublished = recovering.clone();
        if uncordon {
            let mut with_state = Annotations::new();
            if let Some(state) = &recovering {
                with_state.insert(STATE_ANNOTATION.to_owned(), state.to_json().into());
            }
            match self.node.uncordon_with(known.clone(), &with_state).await {
                Ok(true) => {
                    self.events.step(Reason::Uncordoned);
                    if let Some(state) = unpublished.take() {
                        self.published_as(state);
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    if let Some(state) = unpublished.take() {
                        self.write_state(state).await;
                    }
                    error!(node = %node_id, error = %crate::error_chain(&e), "uncordoning");
                    return self.wait(Situation::ApiError);
                }
            }
        }
        if let Some(state) = unpublished {
            self.write_state(state).await;
        }
        if let Err(e) = self.node.set_labels(&self.config.post_reboot_node_labels).await {
            error!(node = %node_id, error = %crate::error_chain(&e), "setting post-reboot labels");
            return self.wait(Situation::ApiError);
        }
        self.best_effort(
            "removing the reboot-in-progress annotation",
            self.node.annotate_reboot_finished_on(known.as_ref()),
        )
        .await;
        self.remove_taint().await;
        // A reboot asked for by hand is done: the request goes before the lock does, so that it
        // cannot outlive the cycle and ask for another.
        let requested = known
            .as_ref()
            .is_none_or(|n| controls::node_controls(n.metadata.annotations.as_ref()).reboot_now);
        if requested && let Err(e) = self.node.remove_annotation(controls::REBOOT_NOW_ANNOTATION).await {
            error!(node = %node_id, error = %crate::error_chain(&e), "removing the reboot request");
            return self.wait(Situation::ApiError);
        }
        if uncordon {
            self.notifier
                .notify(
                    Event::Uncordon,
                    &notify::render(&self.config.message_template_uncordon, node_id),
                )
                .await;
        }
        if self.gate.is_some() {
            return self.start_gate(required).await;
        }
        self.release().await
    }

    pub(super) async fn release(&self) -> Wait {
        let node_id = &self.config.node_id;
        match self.lock.release().await {
            // The lock logs the release and the delay itself. Look again at once, so that the
            // published state says "idle" (with the last reboot) right away.
            Ok(Release::Released) => {
                let taken = self.lock_taken.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(at) = taken {
                    // From the entry's `created` until now; zero if that is ahead of our clock.
                    self.metrics
                        .observe_reboot_cycle(decide::time_until(Timestamp::now(), at));
                }
                self.note_lock_entry(None);
                self.events.step(Reason::LockReleased);
                self.wait(Situation::LookAgain)
            }
            Ok(Release::NotHeld) => {
                self.note_lock_entry(None);
                self.wait(Situation::NotHolding)
            }
            Ok(Release::NotBefore(at)) => self.wait(Situation::ReleaseDelay { until: at }),
            Err(e) => {
                error!(node = %node_id, error = %crate::error_chain(&e), "releasing the lock");
                self.wait(Situation::ApiError)
            }
        }
    }
}

/// The note of the `Rebooted` Event: how long the node was away, when known.
fn rebooted_note(away: Option<GoDuration>) -> String {
    match away {
        Some(away) => format!("back from its reboot, {away} after it was asked for"),
        None => Reason::Rebooted.note().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rebooted_note_says_how_long_the_node_was_away_when_known() {
        assert_eq!(
            rebooted_note(Some(GoDuration::from_secs(125))),
            "back from its reboot, 2m5s after it was asked for"
        );
        assert_eq!(rebooted_note(None), "back from its reboot");
    }
}
