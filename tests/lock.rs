//! The DaemonSet lock against the test cluster's API server: contention, TTL expiry, the durable
//! release delay, upstream's wire format, corrupt annotations, optimistic concurrency, and
//! upstream's RBAC. Needs `scripts/testcluster up`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kured::duration::GoDuration;
use kured::lock::record::Change;
use kured::lock::{
    Acquire, Backend, BlockedBy, Claim, Gate, LabelLimit, LockEntry, LockError, LockObject, LockSettings,
    LockSnapshot, ObjectLock, PAUSE_ANNOTATION, RebootLock, Release,
};
use serde_json::json;
use support::access;
use support::cluster::admin_client;
use support::objects::scope_with_lock;
use support::observer::{
    LOCK_ANNOTATION, Observer, annotate_lock_object, read_lock_in, upstream_entry, write_lock_in,
};
use support::rbac::{lease_rules, service_account_with_role};
use support::scope::Scope;
use support::wait::{eventually, wait_for};

/// The lock's DaemonSet, as [`support::objects::create_lock_daemonset`] names it.
const DS: &str = "kured";

/// The fixed clock of the wire-format tests.
const FIXED_NOW: &str = "2026-11-27T09:00:00.123456789Z";

fn fixed_now() -> Timestamp {
    FIXED_NOW.parse().expect("a valid timestamp")
}

fn settings(node: &str, concurrency: u32) -> LockSettings {
    LockSettings {
        node_id: node.to_owned(),
        concurrency,
        ttl: GoDuration::ZERO,
        release_delay: Duration::ZERO,
        per_label: Vec::new(),
    }
}

/// The live entry of `node` in the lock as read now.
async fn live_entry(lock: &ObjectLock, node: &str) -> Result<Option<LockEntry>, LockError> {
    let state = lock.read().await?;
    Ok(state
        .record
        .and_then(|record| record.held_by(node, Timestamp::now()).cloned()))
}

/// One case's scope with the lock's DaemonSet, and the backend whose object keeps the lock.
struct Case {
    scope: Scope,
    backend: Backend,
}

impl Case {
    async fn new(test: &str, backend: Backend) -> Case {
        Case {
            scope: scope_with_lock(test).await,
            backend,
        }
    }

    fn object(&self) -> LockObject {
        LockObject {
            backend: self.backend,
            namespace: self.scope.namespace.clone(),
            name: DS.to_owned(),
            annotation: LOCK_ANNOTATION.to_owned(),
        }
    }

    fn lock_with(&self, client: Client, settings: LockSettings) -> ObjectLock {
        ObjectLock::new(client, &self.object(), settings)
    }

    fn lock(&self, node: &str, concurrency: u32) -> ObjectLock {
        self.lock_with(self.scope.client.clone(), settings(node, concurrency))
    }

    /// The lock annotation as the API server has it now.
    async fn read(&self) -> Option<String> {
        read_lock_in(&self.scope, self.backend).await
    }

    /// Sets the lock annotation, as an operator would.
    async fn write(&self, text: Option<&str>) {
        write_lock_in(&self.scope, self.backend, text).await
    }
}

fn node_ids(holders: &[kured::lock::LockEntry]) -> Vec<&str> {
    holders.iter().map(|e| e.node_id.as_str()).collect()
}

/// How long until `t`; zero when it has passed.
fn until(t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
}

fn minute_ago() -> String {
    let t = Timestamp::now() - SignedDuration::from_secs(60);
    kured::lock::record::format_time(t)
}

/// Asserts that `lock` takes a slot for `claim`.
async fn expect_acquired(lock: &ObjectLock, claim: &Claim) {
    match lock.acquire(claim).await.expect("acquiring") {
        Acquire::Acquired(_) => {}
        other => panic!(
            "{} should acquire the lock, got {other:?}",
            lock.settings().node_id
        ),
    }
}

async fn expect_blocked(lock: &ObjectLock) -> (Vec<String>, u32) {
    match lock.acquire(&Claim::default()).await.expect("acquiring") {
        Acquire::Blocked { holders, limit, .. } => {
            (node_ids(&holders).into_iter().map(str::to_owned).collect(), limit)
        }
        other => panic!("{} should be blocked, got {other:?}", lock.settings().node_id),
    }
}

/// Runs each lock case on both backends, as `<case>::daemonset` and `<case>::lease`: the lock
/// means the same on the DaemonSet and on the Lease.
macro_rules! on_both_backends {
    ($($([$($runtime:tt)*])? $case:ident;)*) => {$(
        mod $case {
            use super::*;

            #[tokio::test$(($($runtime)*))?]
            async fn daemonset() {
                super::$case(Backend::DaemonSet).await;
            }

            #[tokio::test$(($($runtime)*))?]
            async fn lease() {
                super::$case(Backend::Lease).await;
            }
        }
    )*};
}

on_both_backends! {
    [flavor = "multi_thread", worker_threads = 4]
    twenty_agents_at_concurrency_1_hold_the_lock_one_at_a_time;
    [flavor = "multi_thread", worker_threads = 4]
    twenty_agents_at_concurrency_3_hold_it_at_most_three_at_a_time;
    an_abandoned_lock_is_taken_over_after_its_ttl_and_not_before;
    the_release_delay_survives_an_agent_restart;
    upstream_single_form_blocks_at_every_concurrency_until_it_expires;
    upstream_multi_form_limits_every_concurrency;
    a_manual_lock_blocks_every_agent;
    what_we_write_is_byte_identical_to_upstream;
    a_corrupt_annotation_is_reported_and_never_overwritten;
    of_two_writes_based_on_the_same_read_exactly_one_wins;
    a_waiting_agent_sees_a_freed_lock_at_once;
    per_label_limits_hold_on_the_lock_object;
    a_paused_lock_object_admits_nobody_and_wakes_its_waiters_when_resumed;
    a_halted_holder_stops_every_other_node_until_its_gate_is_cleared;
}

/// Twenty agents, each with a client of its own, try again and again to take the lock, hold it
/// briefly and release it, until each has held it once. The shared observer checks every version
/// of the annotation it sees against the limit.
async fn contention(test: &str, backend: Backend, concurrency: u32) {
    const AGENTS: usize = 20;
    let case = Case::new(test, backend).await;

    let observer = Observer::start(&case.scope, concurrency as usize, &[]).await;

    let started = Instant::now();
    let contended = Arc::new(AtomicUsize::new(0));
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let lock = case.lock_with(
            admin_client().await,
            settings(&case.scope.node_name(i), concurrency),
        );
        let contended = contended.clone();
        agents.push(tokio::spawn(async move {
            let mut acquired = 0;
            let mut blocked = 0;
            loop {
                match lock.acquire(&Claim::default()).await {
                    Ok(Acquire::Acquired(_)) => {
                        acquired += 1;
                        break;
                    }
                    Ok(Acquire::Blocked { seen, .. }) => {
                        blocked += 1;
                        // A waiting agent bounds its wait by its period; so does this one.
                        let _ = tokio::time::timeout(Duration::from_secs(5), lock.changed(&seen)).await;
                    }
                    Ok(Acquire::AlreadyHeld(entry)) => panic!("never held before: {entry:?}"),
                    Err(e) if e.is_conflict() => {
                        contended.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("acquiring: {}", kured::error_chain(&e)),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            loop {
                match lock.release().await {
                    Ok(Release::Released) => break,
                    Ok(other) => panic!("releasing without a delay: {other:?}"),
                    Err(e) if e.is_conflict() => {
                        contended.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("releasing: {}", kured::error_chain(&e)),
                }
            }
            (
                lock.settings().node_id.clone(),
                acquired,
                blocked,
                lock.conflicts(),
            )
        }));
    }
    let mut conflicts = 0;
    let mut blocked_total = 0;
    let mut held: BTreeMap<String, u32> = BTreeMap::new();
    for agent in agents {
        let (node, acquired, blocked, agent_conflicts) = wait_for(
            "an agent to hold and release the lock",
            Duration::from_secs(120),
            agent,
        )
        .await;
        held.insert(node, acquired);
        conflicts += agent_conflicts;
        blocked_total += blocked;
    }
    let elapsed = started.elapsed();
    // Watch events come in order: once the observer sees the lock gone, it has seen every
    // version before.
    observer
        .until("the lock to be free", Duration::from_secs(10), |s| {
            s.lock.is_none() && s.lease_lock.is_none()
        })
        .await;

    println!(
        "concurrency {concurrency}: {AGENTS} agents in {elapsed:?}; {conflicts} conflicts (409), \
         {} attempts gave up on conflicts, {blocked_total} blocked answers, at most {} holders at once",
        contended.load(Ordering::Relaxed),
        observer.max_holders()
    );
    let violations = observer.violations();
    assert!(violations.is_empty(), "over the limit: {violations:#?}");
    assert!(
        held.values().all(|&n| n == 1),
        "each agent acquired exactly once: {held:?}"
    );
    let all: BTreeSet<String> = held.keys().cloned().collect();
    assert_eq!(
        observer.holders_seen(),
        all,
        "the observer saw every agent hold the lock"
    );
    assert_eq!(case.read().await, None, "the lock is free at the end");
}

async fn twenty_agents_at_concurrency_1_hold_the_lock_one_at_a_time(backend: Backend) {
    contention("lock-c1", backend, 1).await;
}

async fn twenty_agents_at_concurrency_3_hold_it_at_most_three_at_a_time(backend: Backend) {
    contention("lock-c3", backend, 3).await;
}

async fn an_abandoned_lock_is_taken_over_after_its_ttl_and_not_before(backend: Backend) {
    let case = Case::new("lock-ttl", backend).await;
    let ttl = Duration::from_secs(2);
    let gone = case.lock_with(
        case.scope.client.clone(),
        LockSettings {
            ttl: GoDuration::from_std(ttl).expect("a small duration"),
            ..settings("gone", 1)
        },
    );
    let Acquire::Acquired(entry) = gone.acquire(&Claim::default()).await.expect("acquiring") else {
        panic!("a free lock is acquired")
    };
    let expires = entry.created.expect("created is set") + SignedDuration::try_from(ttl).expect("fits");

    let next = case.lock("next", 1);
    let mut blocked = 0;
    let taken_at = loop {
        match next.acquire(&Claim::default()).await.expect("acquiring") {
            Acquire::Acquired(_) => break Timestamp::now(),
            Acquire::Blocked {
                holders,
                next_expiry,
                seen,
                ..
            } => {
                blocked += 1;
                assert_eq!(node_ids(&holders), ["gone"]);
                assert_eq!(
                    next_expiry,
                    Some(expires),
                    "the blocked answer says when the lock expires"
                );
                let wait = until(expires) + Duration::from_millis(10);
                let _ = tokio::time::timeout(wait, next.changed(&seen)).await;
            }
            Acquire::AlreadyHeld(e) => panic!("never held: {e:?}"),
        }
    };
    assert!(blocked >= 1, "blocked while the TTL ran");
    assert!(
        taken_at >= expires,
        "taken over at {taken_at}, before the expiry at {expires}"
    );
    assert_eq!(
        live_entry(&gone, "gone").await.expect("reading"),
        None,
        "the old holder lost it"
    );
    assert_eq!(gone.release().await.expect("releasing"), Release::NotHeld);
    assert_eq!(
        live_entry(&next, "next")
            .await
            .expect("reading")
            .map(|e| e.node_id),
        Some("next".to_owned())
    );
}

async fn the_release_delay_survives_an_agent_restart(backend: Backend) {
    let case = Case::new("lock-delay", backend).await;
    let delay = Duration::from_secs(3);
    let first = case.lock_with(
        case.scope.client.clone(),
        LockSettings {
            release_delay: delay,
            ..settings("rebooted", 1)
        },
    );
    let claim = Claim {
        unschedulable: true,
        boot_id: Some("boot-before".into()),
    };
    expect_acquired(&first, &claim).await;
    let asked = Timestamp::now();
    let Release::NotBefore(after) = first.release().await.expect("releasing") else {
        panic!("a release delay defers the release")
    };
    let scheduled = after.duration_since(asked);
    assert!(
        scheduled >= SignedDuration::from_secs(3) && scheduled < SignedDuration::from_millis(3500),
        "release scheduled {scheduled} after asking"
    );
    drop(first);

    // The restarted agent: a new client, a new lock, and no delay configured any more.
    let restarted = case.lock_with(admin_client().await, settings("rebooted", 1));
    let entry = live_entry(&restarted, "rebooted")
        .await
        .expect("reading")
        .expect("still held after the restart");
    assert_eq!(entry.release_after, Some(after));
    assert_eq!(entry.boot_id.as_deref(), Some("boot-before"));
    assert!(entry.metadata.unschedulable);
    assert!(matches!(
        restarted.acquire(&Claim::default()).await.expect("acquiring"),
        Acquire::AlreadyHeld(_)
    ));

    let other = case.lock("other", 1);
    assert_eq!(expect_blocked(&other).await, (vec!["rebooted".to_owned()], 1));

    let before = case.read().await;
    assert!(
        Timestamp::now() < after,
        "the test got here too slowly to check an early release"
    );
    assert_eq!(
        restarted.release().await.expect("releasing"),
        Release::NotBefore(after)
    );
    assert_eq!(case.read().await, before, "an early release changes nothing");
    assert_eq!(expect_blocked(&other).await.0, ["rebooted"]);

    tokio::time::sleep(until(after)).await;
    assert_eq!(restarted.release().await.expect("releasing"), Release::Released);
    assert_eq!(case.read().await, None);
    expect_acquired(&other, &Claim::default()).await;
}

async fn upstream_single_form_blocks_at_every_concurrency_until_it_expires(backend: Backend) {
    let case = Case::new("lock-up1", backend).await;
    let live = upstream_entry("upstream-1", &minute_ago(), 0);
    case.write(Some(&live)).await;
    for concurrency in [1, 3] {
        let ours = case.lock("ours", concurrency);
        assert_eq!(
            expect_blocked(&ours).await,
            (vec!["upstream-1".to_owned()], 1),
            "concurrency {concurrency}"
        );
        assert_eq!(ours.release().await.expect("releasing"), Release::NotHeld);
    }
    assert_eq!(
        case.read().await.as_deref(),
        Some(live.as_str()),
        "left as it was"
    );

    // Upstream's TestTtlExpired vector: created 2020-05-05T14:15:00Z with a TTL of one second.
    case.write(Some(&upstream_entry(
        "upstream-1",
        "2020-05-05T14:15:00Z",
        1_000_000_000,
    )))
    .await;
    let ours = case.lock("ours", 1).with_clock(fixed_now);
    expect_acquired(&ours, &Claim::default()).await;
    assert_eq!(case.read().await, Some(upstream_entry("ours", FIXED_NOW, 0)));
}

async fn upstream_multi_form_limits_every_concurrency(backend: Backend) {
    let case = Case::new("lock-upm", backend).await;
    let now = kured::lock::record::format_time(fixed_now());
    let n1 = upstream_entry("n1", &now, 3_600_000_000_000);
    let n2 = upstream_entry("n2", &now, 3_600_000_000_000);
    let full = format!(r#"{{"maxOwners":2,"locks":[{n1},{n2}]}}"#);
    case.write(Some(&full)).await;
    for concurrency in [1, 2, 3] {
        let ours = case.lock("ours", concurrency).with_clock(fixed_now);
        let want = (vec!["n1".to_owned(), "n2".to_owned()], concurrency.min(2));
        assert_eq!(expect_blocked(&ours).await, want, "concurrency {concurrency}");
    }

    // Upstream's full_with_one_expired_lock: the expired entry makes room and is dropped.
    let expired = upstream_entry("n1", "2026-11-27T08:00:00Z", 60_000_000_000);
    case.write(Some(&format!(r#"{{"maxOwners":2,"locks":[{expired},{n2}]}}"#)))
        .await;
    let ours = case.lock("ours", 3).with_clock(fixed_now);
    expect_acquired(&ours, &Claim::default()).await;
    let ours_entry = upstream_entry("ours", FIXED_NOW, 0);
    assert_eq!(
        case.read().await,
        Some(format!(r#"{{"maxOwners":2,"locks":[{n2},{ours_entry}]}}"#)),
        "their smaller maxOwners is kept while n2 holds"
    );

    // Releasing removes our entry only, and leaves upstream's bytes as they were.
    assert_eq!(ours.release().await.expect("releasing"), Release::Released);
    assert_eq!(
        case.read().await,
        Some(format!(r#"{{"maxOwners":2,"locks":[{n2}]}}"#))
    );
}

async fn a_manual_lock_blocks_every_agent(backend: Backend) {
    let case = Case::new("lock-manual", backend).await;
    let manual = r#"{"nodeID":"manual"}"#;
    case.write(Some(manual)).await;
    for concurrency in [1, 2, 5] {
        let ours = case.lock("ours", concurrency);
        assert_eq!(
            expect_blocked(&ours).await,
            (vec!["manual".to_owned()], 1),
            "concurrency {concurrency}"
        );
        assert_eq!(ours.release().await.expect("releasing"), Release::NotHeld);
    }
    let state = case.lock("status", 1).read().await.expect("reading");
    let holders: Vec<&str> = state
        .record
        .iter()
        .flat_map(|r| r.holders(Timestamp::now()))
        .map(|e| e.node_id.as_str())
        .collect();
    assert_eq!(holders, ["manual"]);
    assert_eq!(case.read().await.as_deref(), Some(manual), "left as it was");

    // A hand-written entry in the multi form takes one slot, as upstream counts it.
    let manual = r#"{"maxOwners":2,"locks":[{"nodeID":"manual"}]}"#;
    case.write(Some(manual)).await;
    assert_eq!(
        expect_blocked(&case.lock("ours", 1)).await,
        (vec!["manual".to_owned()], 1)
    );
    let ours = case.lock("ours", 2).with_clock(fixed_now);
    expect_acquired(&ours, &Claim::default()).await;
    assert_eq!(
        case.read().await.as_deref(),
        Some(concat!(
            r#"{"maxOwners":2,"locks":[{"nodeID":"manual","metadata":{"unschedulable":false},"TTL":0},"#,
            r#"{"nodeID":"ours","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0}]}"#
        ))
    );
    assert_eq!(ours.release().await.expect("releasing"), Release::Released);
    assert_eq!(
        case.read().await.as_deref(),
        Some(r#"{"maxOwners":2,"locks":[{"nodeID":"manual","metadata":{"unschedulable":false},"TTL":0}]}"#),
        "the manual entry stays"
    );
}

async fn what_we_write_is_byte_identical_to_upstream(backend: Backend) {
    let case = Case::new("lock-bytes", backend).await;

    let plain = case.lock("n1", 1).with_clock(fixed_now);
    expect_acquired(&plain, &Claim::default()).await;
    assert_eq!(
        case.read().await.as_deref(),
        Some(
            r#"{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0}"#
        )
    );
    assert_eq!(plain.release().await.expect("releasing"), Release::Released);
    assert_eq!(
        case.read().await,
        None,
        "upstream deletes the annotation on release"
    );

    let cordoned = case
        .lock_with(
            case.scope.client.clone(),
            LockSettings {
                ttl: GoDuration::from_secs(3600),
                ..settings("n1", 1)
            },
        )
        .with_clock(fixed_now);
    let claim = Claim {
        unschedulable: true,
        boot_id: None,
    };
    expect_acquired(&cordoned, &claim).await;
    assert_eq!(
        case.read().await.as_deref(),
        Some(
            r#"{"nodeID":"n1","metadata":{"unschedulable":true},"created":"2026-11-27T09:00:00.123456789Z","TTL":3600000000000}"#
        )
    );
    assert_eq!(cordoned.release().await.expect("releasing"), Release::Released);

    let multi = case.lock("n2", 2).with_clock(fixed_now);
    expect_acquired(&multi, &Claim::default()).await;
    assert_eq!(
        case.read().await.as_deref(),
        Some(
            r#"{"maxOwners":2,"locks":[{"nodeID":"n2","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0}]}"#
        )
    );

    // Our own fields come after upstream's, only when set.
    let with_boot = case.lock("n3", 2).with_clock(fixed_now);
    let claim = Claim {
        unschedulable: false,
        boot_id: Some("6c1f2c3a-3b2d-4a55-9d33-0b6f3f0c2a11".into()),
    };
    expect_acquired(&with_boot, &claim).await;
    assert_eq!(
        case.read().await.as_deref(),
        Some(concat!(
            r#"{"maxOwners":2,"locks":["#,
            r#"{"nodeID":"n2","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0},"#,
            r#"{"nodeID":"n3","metadata":{"unschedulable":false},"created":"2026-11-27T09:00:00.123456789Z","TTL":0,"bootID":"6c1f2c3a-3b2d-4a55-9d33-0b6f3f0c2a11"}"#,
            r#"]}"#
        ))
    );
}

async fn a_corrupt_annotation_is_reported_and_never_overwritten(backend: Backend) {
    let case = Case::new("lock-corrupt", backend).await;
    case.write(Some("not json")).await;
    let ours = case.lock("ours", 1);

    let error = ours
        .acquire(&Claim::default())
        .await
        .expect_err("a corrupt annotation is an error");
    assert!(error.is_corrupt(), "{error:?}");
    let message = kured::error_chain(&error);
    assert!(
        message.contains(&format!("{} {}/{DS}", backend.kind(), case.scope.namespace))
            && message.contains(LOCK_ANNOTATION),
        "the error names the object and the annotation: {message}"
    );
    assert!(ours.release().await.expect_err("releasing").is_corrupt());
    assert!(live_entry(&ours, "ours").await.expect_err("reading").is_corrupt());
    assert_eq!(case.read().await.as_deref(), Some("not json"), "left untouched");

    // The agent waits for the annotation to change; an operator fixes it.
    let seen = error.seen().expect("the corrupt value");
    assert_eq!(seen, LockSnapshot::new(Some("not json".to_owned())));
    let waiting = tokio::spawn(async move { ours.changed(&seen).await.map(|now| (ours, now)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing changed yet");
    case.write(None).await;
    let (ours, now) = wait_for("the fix to be seen", Duration::from_secs(10), waiting)
        .await
        .expect("waiting for a change");
    assert_eq!(now, LockSnapshot::new(None));
    expect_acquired(&ours, &Claim::default()).await;
}

async fn of_two_writes_based_on_the_same_read_exactly_one_wins(backend: Backend) {
    let case = Case::new("lock-409", backend).await;
    let (a, b) = (
        case.lock_with(admin_client().await, settings("a", 1)),
        case.lock_with(admin_client().await, settings("b", 1)),
    );
    for round in 0..5 {
        let (read_a, read_b) = tokio::join!(a.snapshot(), b.snapshot());
        let (read_a, read_b) = (read_a.expect("reading"), read_b.expect("reading"));
        assert_eq!(
            read_a.resource_version(),
            read_b.resource_version(),
            "round {round}"
        );
        let (value_a, value_b) = (Change::Set(format!("a{round}")), Change::Set(format!("b{round}")));
        let (wrote_a, wrote_b) = tokio::join!(a.write(&read_a, &value_a), b.write(&read_b, &value_b));
        let winner = match (wrote_a, wrote_b) {
            (Ok(()), Err(e)) if e.is_conflict() => format!("a{round}"),
            (Err(e), Ok(())) if e.is_conflict() => format!("b{round}"),
            other => panic!("round {round}: exactly one write must win: {other:?}"),
        };
        assert_eq!(case.read().await, Some(winner), "round {round}");
    }
    // A write based on a stale read fails too, without a race.
    let stale = a.snapshot().await.expect("reading");
    case.write(None).await;
    let error = a.write(&stale, &Change::Remove).await.expect_err("a stale write");
    assert!(error.is_conflict(), "{error:?}");
}

async fn a_waiting_agent_sees_a_freed_lock_at_once(backend: Backend) {
    let case = Case::new("lock-wake", backend).await;
    let holder = case.lock("holder", 1);
    let waiter = case.lock_with(admin_client().await, settings("waiter", 1));
    expect_acquired(&holder, &Claim::default()).await;
    let Acquire::Blocked { seen, .. } = waiter.acquire(&Claim::default()).await.expect("acquiring") else {
        panic!("the waiter is blocked")
    };
    let waiting = tokio::spawn(async move {
        let now = waiter.changed(&seen).await;
        (Instant::now(), now)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing changed yet");
    assert_eq!(holder.release().await.expect("releasing"), Release::Released);
    let released = Instant::now();
    let (woke, now) = wait_for("the waiter to wake", Duration::from_secs(10), waiting).await;
    assert_eq!(now.expect("waiting"), LockSnapshot::new(None));
    println!(
        "a waiting agent saw the freed lock {:?} after the release",
        woke - released
    );
}

/// Upstream's manifests grant `get` and `update` on the kured DaemonSet only: the lock works with
/// that, and waiting falls back from watching to polling.
#[tokio::test]
async fn the_lock_works_with_upstreams_rbac() {
    let case = Case::new("lock-rbac", Backend::DaemonSet).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let client = service_account_with_role(
        &case.scope,
        "kured",
        json!([
            { "apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"] },
            { "apiGroups": ["apps"], "resources": ["daemonsets"], "resourceNames": [DS], "verbs": ["update"] },
        ]),
        dir.path(),
    )
    .await;

    let agent = case.lock_with(client.clone(), settings("a", 1));
    // RoleBindings take effect through the RBAC informer: allow a moment.
    let agent_ref = &agent;
    eventually(
        "the Role to take effect",
        Duration::from_secs(10),
        || async move { agent_ref.read().await.ok() },
    )
    .await;
    expect_acquired(&agent, &Claim::default()).await;

    let waiter = case.lock_with(client, settings("b", 1));
    let Acquire::Blocked { seen, .. } = waiter.acquire(&Claim::default()).await.expect("acquiring") else {
        panic!("b is blocked")
    };
    let waiting = tokio::spawn(async move { waiter.changed(&seen).await.map(|now| (waiter, now)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.release().await.expect("releasing"), Release::Released);
    let (waiter, now) = wait_for(
        "the polling waiter to see the release",
        Duration::from_secs(30),
        waiting,
    )
    .await
    .expect("waiting by polling");
    assert_eq!(now, LockSnapshot::new(None));
    expect_acquired(&waiter, &Claim::default()).await;
}

/// The Lease's `spec.holderIdentity`, `None` without a Lease or without the field.
async fn holder_identity(case: &Case) -> Option<String> {
    let lease = case
        .scope
        .api::<Lease>()
        .get_opt(DS)
        .await
        .expect("reading the Lease")?;
    lease.spec?.holder_identity
}

#[tokio::test]
async fn the_first_acquire_creates_the_lease_and_holder_identity_follows_the_holders() {
    let case = Case::new("lease-holders", Backend::Lease).await;
    let leases = case.scope.api::<Lease>();
    assert!(
        leases.get_opt(DS).await.expect("reading").is_none(),
        "no Lease before the first acquire"
    );
    let (a, b) = (case.lock("a", 2), case.lock("b", 2));
    // Reading and waiting need no Lease: nobody holds it.
    assert_eq!(a.read().await.expect("reading").record, None);
    assert_eq!(a.release().await.expect("releasing"), Release::NotHeld);
    assert!(
        leases.get_opt(DS).await.expect("reading").is_none(),
        "a release of nothing creates nothing"
    );

    expect_acquired(&a, &Claim::default()).await;
    assert_eq!(holder_identity(&case).await.as_deref(), Some("a"));
    expect_acquired(&b, &Claim::default()).await;
    assert_eq!(holder_identity(&case).await.as_deref(), Some("a,b"));
    assert_eq!(
        expect_blocked(&case.lock("c", 2)).await,
        (vec!["a".to_owned(), "b".to_owned()], 2)
    );
    assert_eq!(a.release().await.expect("releasing"), Release::Released);
    assert_eq!(holder_identity(&case).await.as_deref(), Some("b"));
    assert_eq!(b.release().await.expect("releasing"), Release::Released);
    assert_eq!(holder_identity(&case).await, None, "nobody holds it");
    assert_eq!(
        case.read().await,
        None,
        "the annotation goes with the last holder"
    );
    assert!(
        leases.get_opt(DS).await.expect("reading").is_some(),
        "the Lease stays for the next cycle"
    );
    assert_eq!(
        read_lock_in(&case.scope, Backend::DaemonSet).await,
        None,
        "the DaemonSet is never written"
    );
}

/// Two agents that find no Lease both create it: one create wins, the other meets 409
/// AlreadyExists, which counts as a conflict, reads again and finds the lock taken.
#[tokio::test]
async fn of_two_agents_creating_the_lease_one_wins_and_the_other_is_blocked() {
    for round in 0..3 {
        let case = Case::new("lease-create", Backend::Lease).await;
        let (a, b) = (
            case.lock_with(admin_client().await, settings("a", 1)),
            case.lock_with(admin_client().await, settings("b", 1)),
        );
        let claim = Claim::default();
        let (got_a, got_b) = tokio::join!(a.acquire(&claim), b.acquire(&claim));
        let outcomes = [("a", got_a), ("b", got_b)];
        let mut winners = Vec::new();
        for (node, outcome) in &outcomes {
            match outcome {
                Ok(Acquire::Acquired(_)) => winners.push(*node),
                Ok(Acquire::Blocked { holders, .. }) => assert_eq!(holders.len(), 1, "round {round}"),
                Err(e) if e.is_conflict() => {}
                other => panic!("round {round}: {node} answered {other:?}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one holds it: {outcomes:?}"
        );
        assert_eq!(
            holder_identity(&case).await.as_deref(),
            Some(winners[0]),
            "round {round}"
        );
        println!(
            "round {round}: {} won; conflicts met: a {}, b {}",
            winners[0],
            a.conflicts(),
            b.conflicts()
        );
    }
}

/// The rules the README gives for `--lock-backend=lease`: `get`, `update`, `list` and `watch` on
/// the one Lease, `create` on leases, and nothing but `get` on DaemonSets. The agent's lock, kept
/// beside the DaemonSet's as the agent keeps it, creates the Lease, counts the DaemonSet's
/// holders, and waits by watching.
#[tokio::test]
async fn the_lease_lock_works_with_the_leases_rbac_and_no_write_on_daemonsets() {
    let case = Case::new("lease-rbac", Backend::Lease).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let client = service_account_with_role(&case.scope, "kured", lease_rules(), dir.path()).await;
    let update_ds = access::request("update", "apps/daemonsets", &case.scope.namespace, DS);
    let create_lease = access::request("create", "coordination.k8s.io/leases", &case.scope.namespace, "");
    eventually("the Role to take effect", Duration::from_secs(30), || async {
        access::may(&client, &create_lease).await.then_some(())
    })
    .await;
    assert!(
        !access::may(&client, &update_ds).await,
        "no write on the DaemonSet"
    );

    let beside = |node: &str| {
        let own = case.lock_with(client.clone(), settings(node, 1));
        let daemonset = LockObject {
            backend: Backend::DaemonSet,
            ..case.object()
        };
        own.beside(ObjectLock::new(client.clone(), &daemonset, settings(node, 1)))
    };
    // A holder in the DaemonSet's annotation (an agent not switched yet) counts.
    write_lock_in(
        &case.scope,
        Backend::DaemonSet,
        Some(&upstream_entry("old", &minute_ago(), 0)),
    )
    .await;
    let agent = beside("a");
    assert_eq!(expect_blocked(&agent).await, (vec!["old".to_owned()], 1));
    // Where it stands counts it too, and no longer once it is gone (read again each round while
    // there are holders there).
    let slot = |lock: &ObjectLock, state: kured::lock::LockState| {
        lock.standing(&state.seen, Timestamp::now())
            .expect("standing")
            .slot
    };
    let state = agent.read().await.expect("reading");
    assert!(
        matches!(slot(&agent, state), kured::lock::Slot::Taken { ref holders, .. } if node_ids(holders) == ["old"]),
        "the DaemonSet's holder takes the slot"
    );
    write_lock_in(&case.scope, Backend::DaemonSet, None).await;
    let state = agent.read().await.expect("reading");
    assert_eq!(
        slot(&agent, state),
        kured::lock::Slot::Free,
        "the DaemonSet's holder gone"
    );

    expect_acquired(&agent, &Claim::default()).await;
    let waiter = beside("b");
    let Acquire::Blocked { seen, .. } = waiter.acquire(&Claim::default()).await.expect("acquiring") else {
        panic!("b is blocked")
    };
    let waiting = tokio::spawn(async move { waiter.changed(&seen).await.map(|now| (waiter, now)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing changed yet");
    assert_eq!(agent.release().await.expect("releasing"), Release::Released);
    let (waiter, now) = wait_for("the waiter to see the release", Duration::from_secs(10), waiting)
        .await
        .expect("waiting by watching");
    assert_eq!(now, LockSnapshot::new(None));
    expect_acquired(&waiter, &Claim::default()).await;
    assert_eq!(holder_identity(&case).await.as_deref(), Some("b"));
}

/// Why `lock` is blocked, and by whom.
async fn blocked_by(lock: &ObjectLock) -> (BlockedBy, Vec<String>) {
    match lock.acquire(&Claim::default()).await.expect("acquiring") {
        Acquire::Blocked { reason, holders, .. } => (
            reason,
            node_ids(&holders).into_iter().map(str::to_owned).collect(),
        ),
        other => panic!("{} should be blocked, got {other:?}", lock.settings().node_id),
    }
}

const ZONE: &str = "topology.kubernetes.io/zone";

/// Three agents at concurrency 3 with one holder per zone: the second of zone a waits for the
/// first, zone b goes beside it; an agent that has not noted its labels takes nothing; each entry
/// records its zone; an upstream entry counts against every zone.
async fn per_label_limits_hold_on_the_lock_object(backend: Backend) {
    let case = Case::new("lock-zones", backend).await;
    let zoned = |node: &str, zone: Option<&str>| {
        let lock = case.lock_with(
            case.scope.client.clone(),
            LockSettings {
                per_label: vec![LabelLimit {
                    key: ZONE.to_owned(),
                    max: 1,
                }],
                ..settings(node, 3)
            },
        );
        if let Some(zone) = zone {
            lock.note_labels(&[(ZONE.to_owned(), zone.to_owned())].into());
        }
        lock
    };
    let (a1, a2, b1) = (
        zoned("a1", Some("a")),
        zoned("a2", Some("a")),
        zoned("b1", Some("b")),
    );
    let unknown = zoned("unknown", None);
    assert_eq!(
        blocked_by(&unknown).await,
        (BlockedBy::LabelsUnknown, vec![]),
        "no slot before the labels are noted"
    );
    assert_eq!(case.read().await, None, "nothing written");
    expect_acquired(&a1, &Claim::default()).await;
    let full = BlockedBy::Label {
        key: ZONE.to_owned(),
        value: "a".to_owned(),
        max: 1,
    };
    assert_eq!(blocked_by(&a2).await, (full.clone(), vec!["a1".to_owned()]));
    expect_acquired(&b1, &Claim::default()).await;
    let text = case.read().await.expect("the lock is held");
    assert!(
        text.starts_with(r#"{"maxOwners":3,"locks":[{"nodeID":"a1""#)
            && text.contains(r#""TTL":0,"labels":{"topology.kubernetes.io/zone":"a"}}"#)
            && text.contains(r#""labels":{"topology.kubernetes.io/zone":"b"}}"#),
        "each entry records its zone, maxOwners the concurrency: {text}"
    );
    assert_eq!(a1.release().await.expect("releasing"), Release::Released);
    expect_acquired(&a2, &Claim::default()).await;
    assert_eq!(a2.release().await.expect("releasing"), Release::Released);
    assert_eq!(b1.release().await.expect("releasing"), Release::Released);

    // An upstream agent's entry says nothing of its zone: it counts against every zone.
    case.write(Some(&multi_upstream(&["up"]))).await;
    let (reason, holders) = blocked_by(&b1).await;
    assert_eq!(
        (reason, holders),
        (
            BlockedBy::Label {
                key: ZONE.to_owned(),
                value: "b".to_owned(),
                max: 1
            },
            vec!["up".to_owned()]
        )
    );
}

/// The multi form as upstream agents at concurrency 3 write it, held by `nodes` since a minute.
fn multi_upstream(nodes: &[&str]) -> String {
    let entries: Vec<String> = nodes
        .iter()
        .map(|n| upstream_entry(n, &minute_ago(), 0))
        .collect();
    format!(r#"{{"maxOwners":3,"locks":[{}]}}"#, entries.join(","))
}

/// `kured.dev/pause=true` on the lock object: nobody takes a slot and nothing is written, a
/// holder keeps its own, any value but `false` pauses, and a waiter sees the pause lifted at once.
async fn a_paused_lock_object_admits_nobody_and_wakes_its_waiters_when_resumed(backend: Backend) {
    let case = Case::new("lock-pause", backend).await;
    let (holder, waiter) = (case.lock("holder", 2), case.lock("waiter", 2));
    expect_acquired(&holder, &Claim::default()).await;
    let pause =
        |value: Option<&'static str>| annotate_lock_object(&case.scope, backend, PAUSE_ANNOTATION, value);
    pause(Some("true")).await;
    let before = case.read().await;
    // A fresh read: the watched copy may not have the pause yet.
    let paused = BlockedBy::Paused {
        value: "true".to_owned(),
    };
    match waiter.confirm(&Claim::default()).await.expect("confirming") {
        Acquire::Blocked { reason, .. } => assert_eq!(reason, paused),
        other => panic!("paused: {other:?}"),
    }
    assert!(matches!(
        holder.confirm(&Claim::default()).await.expect("confirming"),
        Acquire::AlreadyHeld(_)
    ));
    assert_eq!(case.read().await, before, "nothing written while paused");
    pause(Some("yes")).await;
    let seen = eventually("the waiter to see the pause", Duration::from_secs(10), || async {
        match waiter.acquire(&Claim::default()).await.expect("acquiring") {
            Acquire::Blocked {
                reason: BlockedBy::Paused { value },
                seen,
                ..
            } if value == "yes" => Some(seen),
            _ => None,
        }
    })
    .await;
    assert_eq!(seen.pause(), Some("yes"), "any other value pauses too");
    let waiting = tokio::spawn({
        let waiter = case.lock("waiter", 2);
        async move { waiter.changed(&seen).await }
    });
    pause(None).await;
    let now = wait_for(
        "the waiter to see the pause lifted",
        Duration::from_secs(10),
        waiting,
    )
    .await
    .expect("waiting");
    assert_eq!(now.pause(), None);
    expect_acquired(&waiter, &Claim::default()).await;
}

/// A holder whose gate timed out records it in its own entry; while it does, no other node takes
/// a slot whatever the concurrency; clearing it lets the next one go and leaves the holder's
/// entry as upstream writes it. Recording a gate without an entry is an error.
async fn a_halted_holder_stops_every_other_node_until_its_gate_is_cleared(backend: Backend) {
    let case = Case::new("lock-halted", backend).await;
    let (holder, next) = (case.lock("holder", 3), case.lock("next", 3));
    let error = holder.record_gate(None).await.expect_err("no entry yet");
    assert!(error.to_string().contains("holder holds no entry"), "{error}");
    expect_acquired(&holder, &Claim::default()).await;
    let plain = case.read().await;
    let since: Timestamp = FIXED_NOW.parse().expect("a time");
    holder
        .record_gate(Some(Gate { since, halted: None }))
        .await
        .expect("recording the gate");
    let text = case.read().await.expect("held");
    assert!(text.contains(&format!(r#""gateSince":"{FIXED_NOW}""#)), "{text}");
    expect_acquired(&next, &Claim::default()).await;
    assert_eq!(next.release().await.expect("releasing"), Release::Released);
    holder
        .record_gate(Some(Gate {
            since,
            halted: Some("pod kube-system/x not Ready after 5m".to_owned()),
        }))
        .await
        .expect("recording the halt");
    let text = case.read().await.expect("held");
    assert!(
        text.contains(r#""halted":"pod kube-system/x not Ready after 5m""#),
        "{text}"
    );
    let halted = eventually("the halt to be seen", Duration::from_secs(10), || async {
        let blocked = blocked_by(&next).await;
        (blocked.0 == BlockedBy::Halted).then_some(blocked)
    })
    .await;
    assert_eq!(halted.1, ["holder"], "the halted holder is named");
    holder.record_gate(None).await.expect("clearing the gate");
    assert_eq!(case.read().await, plain, "the entry is as it was before the gate");
    eventually(
        "the next node to take a slot",
        Duration::from_secs(10),
        || async { matches!(next.acquire(&Claim::default()).await, Ok(Acquire::Acquired(_))).then_some(()) },
    )
    .await;
}
