//! The fault tests' observer itself: it must see what it is there to see, or the tests that rely
//! on it prove nothing. Needs `scripts/testcluster up`.

mod support;

use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::objects::{create_deployment, scope_with_lock};
use support::observer::{Observer, REBOOTING_LABEL, STATE_ANNOTATION, lock_holders, write_lock};

#[test]
fn lock_holders_reads_both_forms() {
    let cases: [(&str, Result<Vec<&str>, ()>); 7] = [
        (
            r#"{"nodeID":"n1","metadata":{"unschedulable":false},"created":"2026-01-01T00:00:00.1Z","TTL":0}"#,
            Ok(vec!["n1"]),
        ),
        (
            r#"{"nodeID":"","created":"2026-01-01T00:00:00Z","TTL":0}"#,
            Ok(vec![]),
        ),
        (
            r#"{"maxOwners":2,"locks":[{"nodeID":"a","TTL":0},{"nodeID":"b","TTL":0}]}"#,
            Ok(vec!["a", "b"]),
        ),
        (r#"{"maxOwners":2,"locks":[]}"#, Ok(vec![])),
        ("not json", Err(())),
        (r#"{"locks":{}}"#, Err(())),
        (r#"{"nodeID":7}"#, Err(())),
    ];
    for (text, expected) in cases {
        let got = lock_holders(text).map_err(|_| ());
        let expected = expected.map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
        assert_eq!(got, expected, "{text}");
    }
}

/// Nodes and a lock changed by hand, as a misbehaving agent would: the observer counts the
/// cordons (but not a pre-cordoned node's) and the holders, and records each excess.
#[tokio::test]
async fn the_observer_records_too_many_cordons_and_holders() {
    let scope = scope_with_lock("observer").await;
    let names = scope.create_nodes(3).await;
    scope.set_unschedulable(&names[2], true).await;
    let observer = Observer::start(&scope, 1, &[&names[2]]).await;
    assert_eq!(
        observer.max_cordoned_by_kured(),
        0,
        "the pre-cordoned node does not count"
    );

    scope.set_unschedulable(&names[0], true).await;
    observer
        .until("one node cordoned by kured", Duration::from_secs(10), |s| {
            s.cordoned_by_kured == [names[0].clone()]
        })
        .await;
    assert!(observer.violations().is_empty(), "{:?}", observer.violations());
    scope.set_unschedulable(&names[1], true).await;
    observer
        .until("two nodes cordoned by kured", Duration::from_secs(10), |s| {
            s.cordoned_by_kured.len() == 2
        })
        .await;
    let violations = observer.violations();
    assert!(
        violations.len() == 1 && violations[0].starts_with("2 nodes cordoned by kured at once (limit 1)"),
        "{violations:?}"
    );

    for name in &names[..2] {
        scope.set_unschedulable(name, false).await;
    }
    observer
        .until("no node cordoned by kured", Duration::from_secs(10), |s| {
            s.cordoned_by_kured.is_empty()
        })
        .await;

    let two = r#"{"maxOwners":2,"locks":[{"nodeID":"a","TTL":0},{"nodeID":"b","TTL":0}]}"#;
    write_lock(&scope, Some(two)).await;
    observer
        .until("two holders", Duration::from_secs(10), |s| s.holders.len() == 2)
        .await;
    write_lock(&scope, None).await;
    observer
        .until("the lock gone", Duration::from_secs(10), |s| s.lock.is_none())
        .await;
    let violations = observer.violations();
    assert!(
        violations.len() == 2 && violations[1].starts_with("2 lock holders at once (limit 1)"),
        "{violations:?}"
    );
    assert!(
        violations[1].contains(two),
        "the lock text is in: {}",
        violations[1]
    );
    assert_eq!((observer.max_cordoned_by_kured(), observer.max_holders()), (2, 2));
    assert_eq!(
        observer.holders_seen(),
        ["a".to_owned(), "b".to_owned()].into(),
        "every holder seen"
    );
}

/// What a node-init and an agent write to a Node, written by hand: the observer keeps each
/// node's boot IDs and published phases in order, an unchanged value once.
#[tokio::test]
async fn the_observer_keeps_each_nodes_boot_ids_and_phases() {
    let scope = scope_with_lock("observer-history").await;
    let name = scope.create_nodes(1).await.remove(0);
    let observer = Observer::start(&scope, 1, &[]).await;
    let nodes: Api<Node> = Api::all(scope.client.clone());
    let steps = [
        ("b1", "draining"),
        ("b1", "rebooting"),
        ("b2", "rebooting"),
        ("b2", "idle"),
    ];
    for (boot_id, phase) in steps {
        let status = json!({ "status": { "nodeInfo": { "bootID": boot_id } } });
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("setting the boot ID");
        let state = json!({ "phase": phase }).to_string();
        let annotation = json!({ "metadata": { "annotations": { STATE_ANNOTATION: state } } });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(annotation))
            .await
            .expect("publishing a phase");
        observer
            .until(&format!("{boot_id}, {phase}"), Duration::from_secs(10), |s| {
                s.nodes
                    .get(&name)
                    .is_some_and(|n| n.boot_id == boot_id && n.phase.as_deref() == Some(phase))
            })
            .await;
    }
    assert_eq!(observer.boot_ids(&name), ["b1", "b2"]);
    assert_eq!(observer.phases(&name), ["draining", "rebooting", "idle"]);
}

/// A workload scaled below its budget by hand, as a drain that ignored the budget would leave
/// it: the observer records the violation, and `assert_settled` fails on it at once.
#[tokio::test]
async fn the_observer_records_a_broken_budget() {
    let scope = scope_with_lock("observer-budget").await;
    scope.create_nodes(2).await;
    create_deployment(&scope, "web", 3, None).await;
    let mut observer = Observer::start(&scope, 1, &[]).await;
    observer.watch_budget(&scope, "web", 3).await;
    observer
        .until("the workload at full strength", Duration::from_secs(60), |_| {
            observer.lowest_ready("web") == Some(3)
        })
        .await;
    assert!(observer.violations().is_empty(), "{:?}", observer.violations());

    scope
        .api::<Deployment>()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await
        .expect("scaling web down");
    observer
        .until("fewer ready pods", Duration::from_secs(60), |_| {
            observer.lowest_ready("web").is_some_and(|l| l < 3)
        })
        .await;
    let violations = observer.violations();
    assert!(
        !violations.is_empty()
            && violations
                .iter()
                .all(|v| v.contains("ready pods of web, below its budget's 3")),
        "{violations:?}"
    );
    let settled = std::panic::AssertUnwindSafe(observer.assert_settled(&[], Duration::from_secs(30)))
        .catch_unwind()
        .await;
    let message = panic_message(settled.expect_err("a broken budget is never settled"));
    assert!(message.contains("below its budget's 3"), "{message}");
}

/// A lock annotation left behind with no holder in it is not a free lock: `assert_settled`
/// waits for it to go, and fails naming it when it does not.
#[tokio::test]
async fn a_lock_annotation_left_without_holders_is_not_settled() {
    let scope = scope_with_lock("observer-leftover").await;
    scope.create_nodes(1).await;
    let observer = Observer::start(&scope, 2, &[]).await;
    let empty = r#"{"maxOwners":2,"locks":[]}"#;
    write_lock(&scope, Some(empty)).await;
    observer
        .until("the empty lock", Duration::from_secs(10), |s| {
            s.lock.as_deref() == Some(empty)
        })
        .await;
    let settled = std::panic::AssertUnwindSafe(observer.assert_settled(&[], Duration::from_secs(8)))
        .catch_unwind()
        .await;
    let message = panic_message(settled.expect_err("a lock annotation is left"));
    assert!(
        message.contains("not settled after") && message.contains("the lock annotation is left"),
        "{message}"
    );

    // Once it is gone, everything is settled.
    write_lock(&scope, None).await;
    observer.assert_settled(&[], Duration::from_secs(30)).await;
    assert!(observer.violations().is_empty(), "{:?}", observer.violations());
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// A node cordoned, given back and cordoned again is two cordons; a node that goes down for a
/// reboot (node-init's label) while schedulable is a violation, one that is cordoned is not.
#[tokio::test]
async fn the_observer_counts_cordons_and_records_a_reboot_while_schedulable() {
    let scope = scope_with_lock("observer-reboot").await;
    let names = scope.create_nodes(2).await;
    let observer = Observer::start(&scope, 2, &[]).await;
    let set_rebooting = |name: String, on: bool| {
        let nodes: Api<Node> = Api::all(scope.client.clone());
        async move {
            let value = on.then_some("true");
            let patch = json!({ "metadata": { "labels": { REBOOTING_LABEL: value } } });
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("labelling the node");
        }
    };

    for cordoned in [true, false, true] {
        scope.set_unschedulable(&names[0], cordoned).await;
        observer
            .until("the cordon seen", Duration::from_secs(10), |s| {
                s.cordoned(&names[0]) == cordoned
            })
            .await;
    }
    set_rebooting(names[0].clone(), true).await;
    set_rebooting(names[1].clone(), true).await;
    observer
        .until("both nodes down", Duration::from_secs(10), |s| {
            names.iter().all(|n| s.nodes.get(n).is_some_and(|n| n.rebooting))
        })
        .await;
    assert_eq!((observer.cordons(&names[0]), observer.cordons(&names[1])), (2, 0));
    let violations = observer.violations();
    assert_eq!(
        violations,
        [format!("{} went down for a reboot while not cordoned", names[1])]
    );
}
