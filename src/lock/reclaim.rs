//! Freeing the slots of lock holders whose Node no longer exists.
//!
//! An entry stays until its holder releases it or its TTL runs out, and the default `--lock-ttl`
//! is 0: never. A holder whose Node was deleted before it released — scaled away by an autoscaler,
//! replaced while it rebooted — would block its slot for good (upstream kured#173, where fleets
//! waited for months). So an agent that finds every slot taken asks the API server, with a fresh
//! GET of each holder's Node (never a cached copy), whether it still exists. Only the API
//! server's own answer that this Node is not found counts; any other answer or error leaves the
//! entry alone. The entry is then removed by the lock's conditional write, only as it was judged
//! ([`policy::decide_reclaim`]): when several waiting agents find
//! the same gone holder, one write wins and the others find nothing left to remove.
//!
//! Entries without `created` are never reclaimed: agents always write it, so such an entry was
//! written by hand, such as the documented `{"nodeID":"manual"}` that pauses every reboot.
//!
//! Nor are entries younger than [`MIN_AGE`] looked at: a holder that just took its slot is
//! cordoning and draining its node, and a rollout hands slots on every few seconds, so checking
//! every new holder would cost each waiting agent a GET per hand-off. An entry a minute old is
//! checked at the waiting agents' next round, as before.
//!
//! Each round checks one of the entries old enough, drawn at random, not all of them: at
//! concurrency 5 with drains of several minutes, checking all cost every waiting agent five GETs
//! a `--period`. The waiting agents between them still check every holder about once a period;
//! a lone waiter finds a gone holder among `c` within `c` rounds on average, and a round that
//! reclaims one is followed at once by another.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::core::Status;
use tracing::{debug, warn};

use super::policy;
use super::record::LockRecord;
use super::{LockEntry, LockSnapshot, ObjectLock, Reclaim};
use crate::kube_error;

/// Entries younger than this are not checked (see the [module documentation](self)).
pub const MIN_AGE: SignedDuration = SignedDuration::from_secs(60);

/// Whether `status`, the API server's answer to a GET of Node `node`, says that the Node does not
/// exist: [not found](kube_error::is_not_found), with details naming that node. A 404 without
/// them came from something else on the way (a proxy, a wrong path) and proves nothing.
fn says_node_is_gone(status: &Status, node: &str) -> bool {
    kube_error::is_not_found(status)
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.name == node && d.kind == "nodes")
}

/// Looks up the Node of one other live holder in `seen` (the lock as the caller read it), drawn at
/// random among those held for [`MIN_AGE`], and removes its entry if the Node no longer exists.
/// Returns the entry removed by this call, if any.
/// Never fails: whatever cannot be checked or written is logged and left for the next round.
pub(super) async fn reclaim_gone_holders(
    lock: &ObjectLock,
    seen: &LockSnapshot,
    now: Timestamp,
) -> Vec<LockEntry> {
    let own = &lock.settings().node_id;
    // An unreadable annotation is for the caller's round to report.
    let Ok(mut candidates) = policy::reclaim_candidates(seen.annotation(), own, now) else {
        return Vec::new();
    };
    candidates.retain(|e| old_enough(e, now));
    if candidates.is_empty() {
        return Vec::new();
    }
    // One a round (see the module documentation). Each `RandomState` is keyed afresh, which is
    // randomness enough for the draw.
    let drawn = RandomState::new().hash_one(own) % candidates.len() as u64;
    let entry = candidates.swap_remove(usize::try_from(drawn).unwrap_or(0));
    let holder = &entry.node_id;
    let nodes: Api<Node> = Api::all(lock.client());
    match nodes.get(holder).await {
        Ok(_) => return Vec::new(),
        Err(kube::Error::Api(status)) if says_node_is_gone(&status, holder) => {}
        Err(e) => {
            warn!(node = %own, holder = %holder, error = %crate::error_chain(&e),
                "cannot tell whether the lock holder's node exists; leaving its entry");
            return Vec::new();
        }
    }
    let shown = LockRecord::Single(entry.clone()).to_json().unwrap_or_default();
    match lock.reclaim(&entry).await {
        Ok(Reclaim::Reclaimed) => {
            warn!(node = %own, holder = %holder, entry = %shown, object = %lock.object(),
                "the lock holder's node no longer exists; its entry was removed to free its slot");
            vec![entry]
        }
        Ok(Reclaim::NotPresent) => {
            debug!(node = %own, holder = %holder, "the gone holder's entry was already removed or rewritten");
            Vec::new()
        }
        Err(e) => {
            warn!(node = %own, holder = %holder, entry = %shown, error = %crate::error_chain(&e),
                "the lock holder's node no longer exists, but its entry could not be removed; trying again later");
            Vec::new()
        }
    }
}

/// Whether `entry` has been held for at least [`MIN_AGE`] at `now`.
fn old_enough(entry: &LockEntry, now: Timestamp) -> bool {
    entry
        .created
        .is_some_and(|created| now.duration_since(created) >= MIN_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_held_a_minute_or_longer_are_checked() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let held = |secs: i64| {
            LockEntry::new(
                "n1",
                now - SignedDuration::from_secs(secs),
                crate::duration::GoDuration::ZERO,
            )
        };
        assert!(!old_enough(&held(0), now), "just taken");
        assert!(!old_enough(&held(59), now));
        assert!(old_enough(&held(60), now));
        assert!(old_enough(&held(3600), now));
        assert!(!old_enough(&held(-5), now), "created in the future (clock skew)");
        let mut manual = held(3600);
        manual.created = None;
        assert!(!old_enough(&manual, now), "a hand-written entry");
    }

    fn status(value: serde_json::Value) -> Status {
        serde_json::from_value(value).expect("a Status")
    }

    #[test]
    fn only_the_api_servers_not_found_for_that_node_means_gone() {
        let api_server = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "nodes \"n1\" not found", "reason": "NotFound",
            "details": { "name": "n1", "kind": "nodes" }, "code": 404,
        });
        let mut other_node = api_server.clone();
        other_node["details"]["name"] = "n2".into();
        let mut other_kind = api_server.clone();
        other_kind["details"]["kind"] = "pods".into();
        let cases = [
            ("the API server's answer", api_server.clone(), true),
            ("about another node", other_node, false),
            ("about another kind", other_kind, false),
            (
                "a 404 without details (a proxy's page)",
                serde_json::json!({ "code": 404, "reason": "NotFound", "message": "404 page not found" }),
                false,
            ),
            (
                "an unparsable error body kube turned into a Status",
                serde_json::json!({ "code": 404, "reason": "Failed to parse error data", "message": "<html>" }),
                false,
            ),
            (
                "forbidden",
                serde_json::json!({ "code": 403, "reason": "Forbidden", "details": { "name": "n1", "kind": "nodes" } }),
                false,
            ),
            (
                "unavailable",
                serde_json::json!({ "code": 503, "reason": "ServiceUnavailable" }),
                false,
            ),
        ];
        for (name, value, gone) in cases {
            assert_eq!(says_node_is_gone(&status(value), "n1"), gone, "{name}");
        }
    }
}
