//! Draining kwok nodes of the test cluster through the Eviction API: what is evicted and what is
//! skipped, PodDisruptionBudgets, the pod selector, the grace period, skip-wait-for-delete, the
//! timeout, and how soon the drain notices the last deletion. Needs `scripts/testcluster up`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use kured::drain::{DrainError, DrainSettings, DrainSummary, Drainer, PodRef, SkipReason};
use kured::node::OwnNode;
use kured::selector::LabelSelector;
use serde_json::json;
use support::objects::{
    STARTUP, create_daemonset, create_deployment, create_deployment_of, create_pdb, create_pod, node_of,
    pod_template, pods_on, running, set_min_available,
};
use support::scope::Scope;
use support::wait::eventually;
use tokio::time::Instant;

/// Bounds drains that are expected to succeed, so that a broken drain fails the test instead of
/// hanging it.
const GENEROUS: Duration = Duration::from_secs(120);

fn settings() -> DrainSettings {
    DrainSettings {
        timeout: Some(GENEROUS),
        ..DrainSettings::default()
    }
}

fn refs(scope: &Scope, names: &[&str]) -> BTreeSet<PodRef> {
    names
        .iter()
        .map(|n| PodRef {
            namespace: scope.namespace.clone(),
            name: (*n).to_owned(),
        })
        .collect()
}

fn pod_refs(pods: &[Pod]) -> BTreeSet<PodRef> {
    pods.iter().map(PodRef::of).collect()
}

/// A drain of `node` with [`settings`], in a task of its own, checked to be still running after
/// `wait` (`why` says what holds it).
async fn held_drain(
    scope: &Scope,
    node: &str,
    wait: Duration,
    why: &str,
) -> tokio::task::JoinHandle<Result<DrainSummary, DrainError>> {
    let drainer = Drainer::new(scope.client.clone(), settings());
    let node = node.to_owned();
    let drain = tokio::spawn(async move { drainer.drain(&node).await });
    tokio::time::sleep(wait).await;
    assert!(!drain.is_finished(), "{why}");
    drain
}

async fn exists(scope: &Scope, name: &str) -> bool {
    scope
        .api::<Pod>()
        .get_opt(name)
        .await
        .expect("reading a pod")
        .is_some()
}

#[tokio::test]
async fn drain_evicts_workloads_and_leaves_daemon_set_pods() {
    let scope = Scope::new("drain-basic").await;
    let nodes = scope.create_nodes(2).await;
    let (a, b) = (nodes[0].as_str(), nodes[1].as_str());
    let (node_a, node_b) = (
        OwnNode::new(scope.client.clone(), a),
        OwnNode::new(scope.client.clone(), b),
    );
    // Everything starts on A: B is cordoned until the drain.
    node_b.cordon().await.expect("cordoning B");
    create_deployment(&scope, "web", 3, None).await;
    let scratch = json!({ "volumes": [{ "name": "scratch", "emptyDir": {} }] });
    create_deployment_of(&scope, "cache", 1, pod_template(&scope, "cache", None, scratch)).await;
    create_daemonset(&scope, "agent", pod_template(&scope, "agent", None, json!({}))).await;
    create_pod(&scope, "bare", a, json!({ "app": "bare" }), json!({})).await;

    let web = running(&scope, "app=web", 3, Some(a)).await;
    let cache = running(&scope, "app=cache", 1, Some(a)).await;
    let agents = running(&scope, "app=agent", 2, None).await;
    let bare = running(&scope, "app=bare", 1, Some(a)).await;
    let agent_on_a = agents
        .iter()
        .find(|p| node_of(p) == a)
        .expect("a DaemonSet pod on A")
        .clone();

    node_b.uncordon().await.expect("uncordoning B");
    node_a.cordon().await.expect("cordoning A");
    let summary = Drainer::new(scope.client.clone(), settings())
        .drain(a)
        .await
        .expect("draining A");

    let evicted: BTreeSet<PodRef> = summary.evicted.iter().cloned().collect();
    let expected: BTreeSet<PodRef> = [&web[..], &cache[..], &bare[..]]
        .concat()
        .iter()
        .map(PodRef::of)
        .collect();
    assert_eq!(evicted, expected, "evicted");
    assert_eq!(
        summary.skipped,
        vec![(PodRef::of(&agent_on_a), SkipReason::DaemonSet)]
    );
    assert!(summary.not_waited_for.is_empty());

    // Only the DaemonSet pod is left on A, untouched.
    let left = pods_on(&scope, a).await;
    assert_eq!(left.len(), 1, "pods left on A: {:?}", pod_refs(&left));
    assert_eq!(left[0].metadata.uid, agent_on_a.metadata.uid);
    assert!(left[0].metadata.deletion_timestamp.is_none());
    // The controllers recreated their pods on B; the bare pod is gone for good.
    let web_after = running(&scope, "app=web", 3, Some(b)).await;
    assert!(pod_refs(&web_after).is_disjoint(&pod_refs(&web)));
    running(&scope, "app=cache", 1, Some(b)).await;
    assert!(!exists(&scope, "bare").await);
}

#[tokio::test]
async fn disruption_budget_holds_the_drain_until_relaxed() {
    let scope = Scope::new("drain-pdb").await;
    let nodes = scope.create_nodes(2).await;
    let (a, b) = (nodes[0].clone(), nodes[1].as_str());
    let node_b = OwnNode::new(scope.client.clone(), b);
    node_b.cordon().await.expect("cordoning B");
    create_deployment(&scope, "guarded", 2, None).await;
    let guarded = running(&scope, "app=guarded", 2, Some(&a)).await;
    node_b.uncordon().await.expect("uncordoning B");
    OwnNode::new(scope.client.clone(), &a)
        .cordon()
        .await
        .expect("cordoning A");

    // The disruption controller must have computed the budget, so the refusals are its decision.
    create_pdb(&scope, "guarded", 2, 2).await;

    // The budget never allows an eviction: the drain retries until its timeout and names the pods.
    let timeout = Duration::from_secs(8);
    let started = Instant::now();
    let refused = Drainer::new(
        scope.client.clone(),
        DrainSettings {
            timeout: Some(timeout),
            ..DrainSettings::default()
        },
    )
    .drain(&a)
    .await;
    let took = started.elapsed();
    match refused {
        Err(DrainError::Timeout { node, remaining, .. }) => {
            assert_eq!(node, a);
            let remaining: BTreeSet<PodRef> = remaining.into_iter().collect();
            assert_eq!(remaining, pod_refs(&guarded));
        }
        other => panic!("expected the drain to time out, got {other:?}"),
    }
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(3),
        "timed out after {took:?}"
    );
    for pod in &guarded {
        let now = scope
            .api::<Pod>()
            .get(&pod.name_any())
            .await
            .expect("the pod is still there");
        assert!(
            now.metadata.deletion_timestamp.is_none(),
            "{} was not evicted",
            pod.name_any()
        );
    }

    // Relaxed while a drain retries, the budget lets the pods go one by one.
    let drain = held_drain(
        &scope,
        &a,
        Duration::from_secs(2),
        "the drain waits for the budget",
    )
    .await;
    set_min_available(&scope, "guarded", 1).await;
    let summary = drain
        .await
        .expect("the drain task")
        .expect("draining once the budget allows it");
    let evicted: BTreeSet<PodRef> = summary.evicted.into_iter().collect();
    assert_eq!(evicted, pod_refs(&guarded));
    assert!(pods_on(&scope, &a).await.is_empty());
    running(&scope, "app=guarded", 2, Some(b)).await;
}

#[tokio::test]
async fn a_pod_replaced_under_its_name_is_not_evicted() {
    let scope = Scope::new("drain-replaced").await;
    let nodes = scope.create_nodes(2).await;
    let (a, b) = (nodes[0].clone(), nodes[1].as_str());
    create_pod(&scope, "db-0", &a, json!({ "app": "db" }), json!({})).await;
    let original = running(&scope, "app=db", 1, Some(&a)).await.remove(0);
    create_pdb(&scope, "db", 1, 1).await;
    let pdbs: Api<PodDisruptionBudget> = scope.api();
    OwnNode::new(scope.client.clone(), &a)
        .cordon()
        .await
        .expect("cordoning A");

    let drain = held_drain(
        &scope,
        &a,
        Duration::from_millis(1500),
        "the budget holds the drain",
    )
    .await;
    // While the drain waits to retry the refused eviction, the pod is replaced by one of the same
    // name on B (as a StatefulSet does), and the budget no longer stands in the way.
    scope
        .api::<Pod>()
        .delete("db-0", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("deleting the pod");
    eventually("the pod to go", STARTUP, || async {
        (!exists(&scope, "db-0").await).then_some(())
    })
    .await;
    create_pod(&scope, "db-0", b, json!({ "app": "db" }), json!({})).await;
    pdbs.delete("db", &Default::default())
        .await
        .expect("deleting the budget");
    let replacement = running(&scope, "app=db", 1, Some(b)).await.remove(0);
    assert_ne!(replacement.metadata.uid, original.metadata.uid);

    let summary = drain.await.expect("the drain task").expect("the drain");
    assert_eq!(summary.evicted, vec![PodRef::of(&original)], "gone, so done");
    let now = scope.api::<Pod>().get("db-0").await.expect("the replacement");
    assert_eq!(now.metadata.uid, replacement.metadata.uid);
    assert!(
        now.metadata.deletion_timestamp.is_none(),
        "the replacement was not evicted"
    );
}

#[tokio::test]
async fn pod_selector_limits_the_drain() {
    let scope = Scope::new("drain-selector").await;
    let a = scope.create_nodes(1).await.remove(0);
    create_pod(&scope, "picked", &a, json!({ "drain": "yes" }), json!({})).await;
    create_pod(
        &scope,
        "also-picked",
        &a,
        json!({ "drain": "yes", "tier": "x" }),
        json!({}),
    )
    .await;
    create_pod(&scope, "kept", &a, json!({ "drain": "no" }), json!({})).await;
    create_pod(&scope, "unlabelled", &a, json!({}), json!({})).await;
    let before = running(&scope, "", 4, Some(&a)).await;
    OwnNode::new(scope.client.clone(), &a)
        .cordon()
        .await
        .expect("cordoning");

    let summary = Drainer::new(
        scope.client.clone(),
        DrainSettings {
            pod_selector: LabelSelector::parse("drain=yes").expect("a selector"),
            ..settings()
        },
    )
    .drain(&a)
    .await
    .expect("draining");

    let evicted: BTreeSet<PodRef> = summary.evicted.into_iter().collect();
    assert_eq!(evicted, refs(&scope, &["also-picked", "picked"]));
    assert!(
        summary.skipped.is_empty(),
        "non-matching pods are not even listed"
    );
    let left = pods_on(&scope, &a).await;
    assert_eq!(pod_refs(&left), refs(&scope, &["kept", "unlabelled"]));
    for pod in &left {
        assert!(pod.metadata.deletion_timestamp.is_none());
        let original = before.iter().find(|p| p.name_any() == pod.name_any());
        assert_eq!(
            original.and_then(|p| p.metadata.uid.as_ref()),
            pod.metadata.uid.as_ref()
        );
    }
}

/// Records, for each pod of the scope, the first deletionGracePeriodSeconds it shows while
/// terminating. kwok finishes every deletion about a second later with grace period 0.
fn record_grace_periods(scope: &Scope) -> Arc<Mutex<BTreeMap<String, i64>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let events = watcher::watcher(scope.api::<Pod>(), watcher::Config::default());
    let record = seen.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            let (watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) = event.expect("watching pods")
            else {
                continue;
            };
            if let Some(grace) = pod.metadata.deletion_grace_period_seconds {
                record
                    .lock()
                    .expect("the record")
                    .entry(pod.name_any())
                    .or_insert(grace);
            }
        }
    });
    seen
}

#[tokio::test]
async fn grace_period_reaches_the_evicted_pods() {
    let scope = Scope::new("drain-grace").await;
    let nodes = scope.create_nodes(2).await;
    let own_grace = json!({ "terminationGracePeriodSeconds": 30 });
    create_pod(&scope, "shortened", &nodes[0], json!({}), own_grace.clone()).await;
    create_pod(&scope, "own", &nodes[1], json!({}), own_grace).await;
    running(&scope, "", 2, None).await;
    let seen = record_grace_periods(&scope);
    // The recorder's watch must be established before the pods start terminating.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let with_grace = Drainer::new(
        scope.client.clone(),
        DrainSettings {
            grace_period: Some(Duration::from_secs(7)),
            ..settings()
        },
    );
    with_grace
        .drain(&nodes[0])
        .await
        .expect("draining with --drain-grace-period=7");
    Drainer::new(scope.client.clone(), settings())
        .drain(&nodes[1])
        .await
        .expect("draining with the pods' own grace period");

    let seen = seen.lock().expect("the record").clone();
    assert_eq!(seen.get("shortened"), Some(&7), "{seen:?}");
    assert_eq!(seen.get("own"), Some(&30), "{seen:?}");
}

#[tokio::test]
async fn skip_wait_for_delete_and_timeout_while_waiting() {
    const FINALIZER: &str = "kured.test/hold";
    let scope = Scope::new("drain-skip-wait").await;
    let a = scope.create_nodes(1).await.remove(0);
    // A finalizer keeps the pod terminating until the test removes it.
    create_pod(&scope, "stuck", &a, json!({}), json!({})).await;
    scope
        .api::<Pod>()
        .patch(
            "stuck",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": [FINALIZER] } })),
        )
        .await
        .expect("adding the finalizer");
    running(&scope, "", 1, Some(&a)).await;

    let skip = Duration::from_secs(3);
    let skipping = Drainer::new(
        scope.client.clone(),
        DrainSettings {
            skip_wait_for_delete_timeout: Some(skip),
            ..settings()
        },
    );
    // Evicted, then no longer waited for once its deletion is more than 3 whole seconds old.
    let first = skipping.drain(&a).await;
    // Evicting it again is accepted, but it never goes: the drain runs out of time waiting.
    let second = Drainer::new(
        scope.client.clone(),
        DrainSettings {
            timeout: Some(Duration::from_secs(3)),
            ..DrainSettings::default()
        },
    )
    .drain(&a)
    .await;
    // Its deletion began long ago now: not even evicted.
    let third = skipping.drain(&a).await;
    scope
        .api::<Pod>()
        .patch(
            "stuck",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .expect("removing the finalizer");

    let stuck = refs(&scope, &["stuck"]).into_iter().collect::<Vec<_>>();
    let first = first.expect("the first drain");
    assert_eq!(first.evicted, stuck);
    assert_eq!(first.not_waited_for, stuck);
    assert!(
        first.elapsed > skip && first.elapsed < skip + Duration::from_secs(5),
        "stopped waiting after {:?}",
        first.elapsed
    );
    match second {
        Err(DrainError::Timeout { remaining, .. }) => assert_eq!(remaining, stuck),
        other => panic!("expected the second drain to time out, got {other:?}"),
    }
    let third = third.expect("the third drain");
    assert!(third.evicted.is_empty());
    assert_eq!(
        third.skipped,
        vec![(stuck[0].clone(), SkipReason::DeletedLongAgo)]
    );
    eventually("the pod to go", STARTUP, || async {
        (!exists(&scope, "stuck").await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn drain_returns_as_soon_as_the_last_pod_is_gone() {
    const PODS: usize = 4;
    let scope = Scope::new("drain-latency").await;
    let a = scope.create_nodes(1).await.remove(0);
    for i in 0..PODS {
        create_pod(&scope, &format!("p{i}"), &a, json!({}), json!({})).await;
    }
    running(&scope, "", PODS, Some(&a)).await;
    OwnNode::new(scope.client.clone(), &a)
        .cordon()
        .await
        .expect("cordoning");

    // When each pod vanished, as seen by a watch of the test's own.
    let (sender, mut deletions) = tokio::sync::mpsc::unbounded_channel();
    let events = watcher::watcher(scope.api::<Pod>(), watcher::Config::default());
    let recorder = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if let watcher::Event::Delete(pod) = event.expect("watching pods") {
                let _ = sender.send((pod.name_any(), Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let summary = Drainer::new(scope.client.clone(), settings())
        .drain(&a)
        .await
        .expect("draining");
    let returned = Instant::now();
    assert_eq!(summary.evicted.len(), PODS);
    assert!(pods_on(&scope, &a).await.is_empty());

    let mut gone = BTreeMap::new();
    while gone.len() < PODS {
        let (name, at) = tokio::time::timeout(Duration::from_secs(10), deletions.recv())
            .await
            .expect("a deletion seen by the test's watch")
            .expect("the recorder runs");
        gone.insert(name, at);
    }
    recorder.abort();
    let last = gone.values().max().copied().expect("deletions");
    let after_last = if returned >= last {
        format!("+{:?}", returned - last)
    } else {
        format!("-{:?}", last - returned)
    };
    println!(
        "drain of {PODS} pods took {:?}; returned {after_last} relative to the last deletion the test saw",
        returned - started
    );
}
