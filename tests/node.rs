//! Operations on the agent's own Node against the test cluster: cordon, labels, annotations, the
//! PreferNoSchedule taint and the boot ID, and that none of them loses what other writers change on
//! the same Node at the same time. Needs `scripts/testcluster up`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Patch, PatchParams, PostParams};
use kured::node::NodeLabel;
use kured::node::{self, Cordon, MOST_RECENT_REBOOT_NEEDED, OwnNode, PREFER_NO_SCHEDULE, REBOOT_IN_PROGRESS};
use serde_json::json;
use support::scope::Scope;
use support::wait::eventually;
use tracing_subscriber::layer::SubscriberExt;

const TAINT: &str = "weave.works/kured-node-reboot";

/// A scope with one node, and the node as its agent handles it.
async fn own_node(test: &str) -> (Scope, String, OwnNode) {
    let scope = Scope::new(test).await;
    let name = scope.create_nodes(1).await.remove(0);
    let own = OwnNode::new(scope.client.clone(), &name);
    (scope, name, own)
}

fn labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

fn annotations(node: &Node) -> BTreeMap<String, String> {
    node.metadata.annotations.clone().unwrap_or_default()
}

/// The values of the reboot annotations: (in progress, most recent reboot needed).
fn reboot_annotations(a: &BTreeMap<String, String>) -> (Option<&str>, Option<&str>) {
    (
        a.get(REBOOT_IN_PROGRESS).map(String::as_str),
        a.get(MOST_RECENT_REBOOT_NEEDED).map(String::as_str),
    )
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn label(key: &str, value: &str) -> NodeLabel {
    NodeLabel {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

#[tokio::test]
async fn cordon_and_uncordon_report_what_they_changed() {
    let (scope, name, own) = own_node("node-cordon").await;

    assert_eq!(own.cordon().await.expect("cordoning"), Cordon::Cordoned);
    let cordoned = scope.node(&name).await;
    assert!(node::is_unschedulable(&cordoned));
    assert!(
        node::cordoned_by_kured(&cordoned),
        "the cordon is recorded as kured's own"
    );
    // A second cordon (an agent restarted mid-drain) finds kured's own cordon.
    assert_eq!(own.cordon().await.expect("cordoning again"), Cordon::Cordoned);
    assert!(own.uncordon().await.expect("uncordoning"));
    let uncordoned = scope.node(&name).await;
    assert!(!node::is_unschedulable(&uncordoned));
    assert!(
        !node::cordoned_by_kured(&uncordoned),
        "the record goes with the cordon"
    );
    assert!(!own.uncordon().await.expect("uncordoning again"));
}

/// The record outlives an operator's uncordon: the next uncordon removes it, and nothing else.
#[tokio::test]
async fn a_stale_cordon_record_is_removed_by_the_next_uncordon() {
    let (scope, name, own) = own_node("node-stale-cordon").await;
    own.cordon().await.expect("cordoning");
    scope.set_unschedulable(&name, false).await;
    assert!(node::cordoned_by_kured(&scope.node(&name).await));
    assert!(
        own.uncordon().await.expect("uncordoning"),
        "the record was removed"
    );
    let node = scope.node(&name).await;
    assert!(!node::cordoned_by_kured(&node) && !node::is_unschedulable(&node));
}

#[tokio::test]
async fn cordoning_a_node_cordoned_by_someone_else_says_so() {
    let (scope, name, own) = own_node("node-precordoned").await;
    // An administrator cordoned it, as `kubectl cordon` does.
    scope.set_unschedulable(&name, true).await;

    let cordon = own.cordon().await.expect("cordoning");
    assert_eq!(cordon, Cordon::AlreadyCordoned);
    let node = scope.node(&name).await;
    assert!(node::is_unschedulable(&node));
    assert!(
        !node::cordoned_by_kured(&node),
        "someone else's cordon is not recorded as kured's"
    );
}

#[tokio::test]
async fn pre_and_post_reboot_labels_touch_only_their_keys() {
    let (scope, name, own) = own_node("node-labels").await;
    let before = labels(&scope.node(&name).await);

    own.set_labels(&[
        label("kured.dev/state", "rebooting"),
        label("example.com/pre-only", "x"),
    ])
    .await
    .expect("setting pre-reboot labels");
    let pre = labels(&scope.node(&name).await);
    assert_eq!(pre.get("kured.dev/state").map(String::as_str), Some("rebooting"));
    assert_eq!(pre.get("example.com/pre-only").map(String::as_str), Some("x"));

    own.set_labels(&[label("kured.dev/state", "ready")])
        .await
        .expect("setting post-reboot labels");
    let post = labels(&scope.node(&name).await);
    assert_eq!(post.get("kured.dev/state").map(String::as_str), Some("ready"));
    // Upstream only sets the post-reboot labels; a key only in the pre-reboot labels stays.
    assert_eq!(post.get("example.com/pre-only").map(String::as_str), Some("x"));
    for (key, value) in &before {
        assert_eq!(post.get(key), Some(value), "label {key} set by others is kept");
    }
    own.set_labels(&[]).await.expect("setting no labels is a no-op");
}

#[tokio::test]
async fn reboot_annotations_follow_upstream() {
    let (scope, name, own) = own_node("node-annotations").await;

    let first: jiff::Timestamp = "2026-03-01T02:03:04.5Z".parse().expect("a time");
    assert!(own.annotate_reboot_started(first).await.expect("annotating"));
    let a = annotations(&scope.node(&name).await);
    let started = Some("2026-03-01T02:03:04Z");
    assert_eq!(reboot_annotations(&a), (started, started));
    assert_eq!(
        a.get("kwok.x-k8s.io/node").map(String::as_str),
        Some("fake"),
        "others' annotations kept"
    );

    // While the reboot is in progress, its start time is kept.
    let later = first + jiff::SignedDuration::from_mins(5);
    assert!(
        !own.annotate_reboot_started(later)
            .await
            .expect("annotating again")
    );
    let a = annotations(&scope.node(&name).await);
    assert_eq!(reboot_annotations(&a).0, started);

    // After the reboot only the in-progress annotation goes.
    assert!(own.annotate_reboot_finished().await.expect("removing"));
    let a = annotations(&scope.node(&name).await);
    assert_eq!(reboot_annotations(&a), (None, started));
    assert_eq!(a.get("kwok.x-k8s.io/node").map(String::as_str), Some("fake"));
    assert!(!own.annotate_reboot_finished().await.expect("removing again"));

    // The next reboot records its own time in both.
    assert!(
        own.annotate_reboot_started(later)
            .await
            .expect("annotating the next reboot")
    );
    let a = annotations(&scope.node(&name).await);
    let next = Some("2026-03-01T02:08:04Z");
    assert_eq!(reboot_annotations(&a), (next, next));
}

#[tokio::test]
async fn taint_is_added_and_removed_among_other_taints() {
    let (scope, name, own) = own_node("node-taint").await;
    let nodes = scope.nodes();

    // On a node without taints, once the node controller has removed its not-ready taint.
    eventually("the node to have no taints", Duration::from_secs(30), || async {
        taints(&scope.node(&name).await).is_empty().then_some(())
    })
    .await;
    assert!(own.add_prefer_no_schedule_taint(TAINT).await.expect("adding"));
    let node = scope.node(&name).await;
    let ours = node::prefer_no_schedule_taint(&node, TAINT).expect("our taint");
    assert_eq!(
        (ours.effect.as_str(), ours.value.as_deref()),
        (PREFER_NO_SCHEDULE, None)
    );
    assert!(
        !own.add_prefer_no_schedule_taint(TAINT)
            .await
            .expect("adding again")
    );
    let now = taints(&scope.node(&name).await);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(
        own.remove_prefer_no_schedule_taint(TAINT)
            .await
            .expect("removing")
    );
    assert!(taints(&scope.node(&name).await).is_empty());
    assert!(
        !own.remove_prefer_no_schedule_taint(TAINT)
            .await
            .expect("removing again")
    );

    // Among others' taints, one with a timeAdded and one with our key but another effect.
    let theirs = json!([
        { "key": "example.com/maintenance", "value": "yes", "effect": "NoSchedule" },
        { "key": "example.com/evict", "effect": "NoExecute", "timeAdded": "2026-01-02T03:04:05Z" },
        { "key": TAINT, "effect": "NoSchedule" },
    ]);
    nodes
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "taints": theirs } })),
        )
        .await
        .expect("adding others' taints");
    let others = taints(&scope.node(&name).await);
    assert!(
        own.add_prefer_no_schedule_taint(TAINT)
            .await
            .expect("adding among others")
    );
    let with_ours = taints(&scope.node(&name).await);
    assert_eq!(with_ours.len(), 4);
    assert_eq!(
        &with_ours[..3],
        &others[..],
        "others' taints unchanged, ours appended"
    );
    assert!(
        own.remove_prefer_no_schedule_taint(TAINT)
            .await
            .expect("removing among others")
    );
    assert_eq!(taints(&scope.node(&name).await), others);
}

#[tokio::test]
async fn boot_id_is_read_from_node_status() {
    let (scope, name, own) = own_node("node-boot-id").await;
    let nodes = scope.nodes();
    // kwok reports an empty boot ID until one is set, and keeps the one it finds.
    assert_eq!(own.boot_id().await.expect("reading the boot ID"), None);
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "nodeInfo": { "bootID": "boot-1" } } })),
        )
        .await
        .expect("setting the boot ID");
    assert_eq!(
        own.boot_id().await.expect("reading the boot ID").as_deref(),
        Some("boot-1")
    );
}

/// Counts the log events that say a write lost a race and is being retried.
#[derive(Clone, Default)]
struct RetryCounter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RetryCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}").contains("re-reading") {
                    self.0 = true;
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test]
async fn concurrent_writers_never_lose_each_others_changes() {
    const ROUNDS: usize = 40;
    let retries = RetryCounter::default();
    // The test runtime runs on this thread, so a thread-local subscriber sees every event.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(retries.clone()));
    let (scope, name, own) = own_node("node-race").await;
    let nodes = scope.nodes();

    // Ours: toggle the taint, cordon state and our labels, checking each change took.
    let ours = async {
        for round in 0..ROUNDS {
            let add = round % 2 == 0;
            if add {
                own.add_prefer_no_schedule_taint(TAINT)
                    .await
                    .expect("adding our taint");
                own.cordon().await.expect("cordoning");
            } else {
                own.remove_prefer_no_schedule_taint(TAINT)
                    .await
                    .expect("removing our taint");
                own.uncordon().await.expect("uncordoning");
            }
            own.set_labels(&[label("kured.dev/round", &round.to_string())])
                .await
                .expect("setting our label");
            let node = scope.node(&name).await;
            assert_eq!(
                node::prefer_no_schedule_taint(&node, TAINT).is_some(),
                add,
                "our taint after round {round}"
            );
            assert_eq!(node::is_unschedulable(&node), add, "cordoned after round {round}");
        }
    };
    // Theirs: a controller that adds a taint of its own each round with a read-modify-update
    // (optimistic concurrency, as client-go controllers do), and a label with a merge patch.
    let theirs = async {
        let mut conflicts = 0;
        for round in 0..ROUNDS {
            loop {
                let mut node = scope.node(&name).await;
                let spec = node.spec.get_or_insert_default();
                spec.taints.get_or_insert_default().push(Taint {
                    key: format!("other.example/round-{round}"),
                    effect: "NoSchedule".into(),
                    ..Taint::default()
                });
                match nodes.replace(&name, &PostParams::default(), &node).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 => conflicts += 1,
                    Err(e) => panic!("updating the node: {e}"),
                }
            }
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({ "metadata": { "labels": { format!("other.example/round-{round}"): "x" } } }),
                    ),
                )
                .await
                .expect("labelling the node");
        }
        conflicts
    };
    let ((), conflicts) = tokio::join!(ours, theirs);
    println!(
        "the other writer lost {conflicts} races for the node, ours {}",
        retries.0.load(Ordering::Relaxed)
    );

    let node = scope.node(&name).await;
    let keys: Vec<String> = taints(&node).into_iter().map(|t| t.key).collect();
    let node_labels = labels(&node);
    for round in 0..ROUNDS {
        let key = format!("other.example/round-{round}");
        assert!(keys.contains(&key), "their taint {key} was lost: {keys:?}");
        assert!(node_labels.contains_key(&key), "their label {key} was lost");
    }
    assert!(
        node::prefer_no_schedule_taint(&node, TAINT).is_none(),
        "ours removed in the last round"
    );
    assert_eq!(
        node_labels.get("kured.dev/round").map(String::as_str),
        Some((ROUNDS - 1).to_string().as_str())
    );
}
