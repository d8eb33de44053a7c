//! Blockers against real servers: the pod blocker against the test cluster's API server, the
//! Prometheus blocker against a real Prometheus (the Debian package's `/usr/bin/prometheus`,
//! started here with rules that keep one alert firing and one pending) and against servers that
//! are not Prometheus at all.
//! Needs `scripts/testcluster up` and `apt-get install prometheus` (`scripts/test` does both).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::{Api, Client};
use kured::blockers::prometheus::AlertFilter;
use kured::blockers::{
    BlockKind, BlockReason, Blocker, BlockerSettings, Blockers, PodBlocker, PrometheusBlocker,
};
use kured::selector::LabelSelector;
use regex::Regex;
use serde_json::json;
use support::cluster::admin_config;
use support::http::free_port;
use support::objects::{create, create_pod, running};
use support::prometheus::Prometheus;
use support::scope::Scope;
use support::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

// ---------------------------------------------------------------------------------------------
// Pods

fn selector(text: &str) -> LabelSelector {
    LabelSelector::parse(text).expect("a valid selector")
}

fn pod_phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn only_reason(reasons: &[BlockReason], kind: BlockKind) -> &BlockReason {
    match reasons {
        [reason] if reason.kind == kind => reason,
        other => panic!("expected one {kind} reason, got {other:?}"),
    }
}

#[tokio::test]
async fn pods_matching_a_selector_block_only_their_node() {
    let scope = Scope::new("block-pods").await;
    let nodes = scope.create_nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let long = selector("app=long");
    let on_a = PodBlocker::new(
        scope.client.clone(),
        a.clone(),
        vec![selector("app=other"), long.clone()],
    );
    let on_b = PodBlocker::new(scope.client.clone(), b.clone(), vec![long.clone()]);
    assert!(on_a.check().await.is_empty(), "no pods yet");

    create_pod(&scope, "long", a, json!({ "app": "long" }), json!({})).await;
    create_pod(&scope, "unrelated", a, json!({ "app": "short" }), json!({})).await;
    running(&scope, "app=long", 1, Some(a)).await;

    let reasons = on_a.check().await;
    let reason = only_reason(&reasons, BlockKind::BlockingPods);
    let long_pod = format!("{}/long", scope.namespace);
    assert!(reason.message.contains(&long_pod), "{reason}");
    assert!(reason.message.starts_with("1 pod on node "), "{reason}");
    assert!(!reason.message.contains("unrelated"), "{reason}");
    assert!(
        reason.message.contains("\"app=long\""),
        "names the selector: {reason}"
    );
    assert!(
        on_b.check().await.is_empty(),
        "a pod on node A does not block node B"
    );

    // A finished pod that matches does not block: a Job's pod, which kwok completes.
    create::<Job>(
        &scope,
        json!({
            "metadata": { "name": "batch" },
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": { "labels": { "app": "long" } },
                    "spec": {
                        "nodeName": b,
                        "restartPolicy": "Never",
                        "containers": [{ "name": "main", "image": "registry.invalid/batch:1" }],
                    },
                },
            },
        }),
    )
    .await;
    let pods: Api<Pod> = scope.api();
    let job_pod = eventually("the Job's pod to succeed", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&kube::api::ListParams::default().labels("batch.kubernetes.io/job-name=batch"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|p| pod_phase(p) == Some("Succeeded"))
                .and_then(|p| p.metadata.name)
        }
    })
    .await;
    let reasons = on_b.check().await;
    assert!(
        reasons.is_empty(),
        "Succeeded pod {job_pod} on node B should not block: {reasons:?}"
    );

    // Deleting the blocking pod unblocks node A, once the pod is gone.
    pods.delete("long", &DeleteParams::default())
        .await
        .expect("deleting the blocking pod");
    eventually("node A to be unblocked", Duration::from_secs(60), || {
        let on_a = on_a.clone();
        async move { on_a.check().await.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn several_selectors_name_every_blocking_pod() {
    let scope = Scope::new("block-many").await;
    let nodes = scope.create_nodes(1).await;
    let node = &nodes[0];
    for i in 0..12 {
        create_pod(
            &scope,
            &format!("batch-{i:02}"),
            node,
            json!({ "tier": "batch" }),
            json!({}),
        )
        .await;
    }
    create_pod(&scope, "db", node, json!({ "app": "db" }), json!({})).await;
    create_pod(
        &scope,
        "both",
        node,
        json!({ "app": "db", "tier": "batch" }),
        json!({}),
    )
    .await;
    let blocker = PodBlocker::new(
        scope.client.clone(),
        node.clone(),
        vec![selector("tier=batch"), selector("app in (db,cache)")],
    );
    let reasons = blocker.check().await;
    let reason = only_reason(&reasons, BlockKind::BlockingPods);
    // 12 batch pods, db, and `both` once although it matches both selectors.
    assert!(reason.message.starts_with("14 pods on node "), "{reason}");
    assert!(
        reason.message.ends_with(" and 4 more"),
        "lists 10 names: {reason}"
    );
    assert!(
        reason.message.contains("\"tier=batch\" or \"app in (db,cache)\""),
        "{reason}"
    );
    assert!(
        reason.message.contains(&format!("{}/batch-00", scope.namespace)),
        "{reason}"
    );
}

#[tokio::test]
async fn pod_list_errors_block_and_say_why() {
    let scope = Scope::new("block-podapi").await;
    let node = scope.node_name(0);

    // The API server refuses: a user without the right to list pods.
    let mut config = admin_config().await;
    config.auth_info.impersonate = Some("kured-test-nobody".to_owned());
    let client = Client::try_from(config).expect("a client");
    let reasons = PodBlocker::new(client, node.clone(), vec![selector("app=long")])
        .check()
        .await;
    let reason = only_reason(&reasons, BlockKind::PodListError);
    assert!(
        reason
            .message
            .contains("cannot list pods with selector \"app=long\" on node"),
        "{reason}"
    );
    assert!(
        reason.message.ends_with(
            "User \"kured-test-nobody\" cannot list resource \"pods\" in API group \"\" at the cluster scope (403 Forbidden)"
        ),
        "the server's refusal, once: {reason}"
    );

    // The API server does not answer at all: a closed port.
    let reasons = PodBlocker::new(
        client_for(closed_port()),
        node.clone(),
        vec![selector("app=long")],
    )
    .check()
    .await;
    let reason = only_reason(&reasons, BlockKind::PodListError);
    assert!(reason.message.contains("cannot list pods"), "{reason}");

    // The API server accepts the connection and never answers: the time-out blocks.
    let silent = silent_server().await;
    let reasons = PodBlocker::new(
        client_for(silent),
        node.clone(),
        vec![selector("a"), selector("b")],
    )
    .with_timeout(Duration::from_millis(300))
    .check()
    .await;
    assert_eq!(reasons.len(), 2, "one reason per failed selector: {reasons:?}");
    for reason in &reasons {
        assert_eq!(reason.kind, BlockKind::PodListError);
        assert!(reason.message.contains("took longer than 300ms"), "{reason}");
    }
}

fn client_for(addr: SocketAddr) -> Client {
    let url = format!("http://{addr}").parse().expect("a valid URI");
    Client::try_from(kube::Config::new(url)).expect("a client")
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// A loopback address nothing listens on (just released by the operating system).
fn closed_port() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, free_port()).into()
}

/// A Prometheus blocker on `url`, without filters.
fn unfiltered(url: Url) -> PrometheusBlocker {
    PrometheusBlocker::new(url, filter(None, false, false)).expect("a Prometheus client")
}

/// The one reason among `reasons`, an error querying the Prometheus at `url` (as the message
/// shows it): what the message says after naming it.
fn prometheus_error<'a>(reasons: &'a [BlockReason], url: &str) -> &'a str {
    let reason = only_reason(reasons, BlockKind::PrometheusError);
    let prefix = format!("cannot query Prometheus at {url}: ");
    reason
        .message
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{reason:?} does not start with {prefix:?}"))
}

fn filter(regexp: Option<&str>, match_only: bool, firing_only: bool) -> AlertFilter {
    AlertFilter {
        regexp: regexp.map(|r| Regex::new(r).expect("a valid regexp")),
        match_only,
        firing_only,
    }
}

#[tokio::test]
async fn prometheus_alerts_block_as_the_filters_say() {
    let prometheus = Prometheus::start(None).await;
    let only_reboot = Some("^RebootRequired$");
    // (regexp, match-only, firing-only, blocking alerts)
    let cases: &[(Option<&str>, bool, bool, &[&str])] = &[
        (None, false, false, &["LongPending", "RebootRequired"]),
        (None, false, true, &["RebootRequired"]),
        (None, true, false, &["LongPending", "RebootRequired"]),
        (only_reboot, false, false, &["LongPending"]),
        (only_reboot, false, true, &[]),
        (only_reboot, true, false, &["RebootRequired"]),
        (only_reboot, true, true, &["RebootRequired"]),
        (Some("Long"), true, true, &[]),
        (Some("Long"), true, false, &["LongPending"]),
    ];
    for &(regexp, match_only, firing_only, want) in cases {
        let case = format!("regexp {regexp:?}, match-only {match_only}, firing-only {firing_only}");
        let blocker = prometheus.blocker(filter(regexp, match_only, firing_only));
        let reasons = blocker.check().await;
        if want.is_empty() {
            assert!(reasons.is_empty(), "{case}: not blocked, got {reasons:?}");
            continue;
        }
        let reason = only_reason(&reasons, BlockKind::PrometheusAlerts);
        let expected = format!(
            "{} active alert{} in Prometheus at {}: {}",
            want.len(),
            if want.len() == 1 { "" } else { "s" },
            prometheus.url,
            want.join(", ")
        );
        assert_eq!(reason.message, expected, "{case}");
    }
}

#[tokio::test]
async fn prometheus_under_a_path_prefix() {
    let prometheus = Prometheus::start(Some("/prom")).await;
    for url in [prometheus.url.to_string(), format!("{}/", prometheus.url)] {
        let blocker = PrometheusBlocker::new(url.parse().expect("a URL"), filter(None, false, true))
            .expect("a Prometheus client");
        let names = blocker.active_alerts().await.expect("querying under the prefix");
        assert_eq!(names, ["RebootRequired"], "{url}");
    }
    // The same server without its prefix answers 404: blocked, saying so.
    let mut root = prometheus.url.clone();
    root.set_path("/");
    let reasons = unfiltered(root.clone()).check().await;
    let error = prometheus_error(&reasons, root.as_str());
    assert!(error.contains("HTTP status 404"), "{error}");
}

#[tokio::test]
async fn combined_blockers_report_every_reason() {
    let scope = Scope::new("block-all").await;
    let nodes = scope.create_nodes(1).await;
    create_pod(&scope, "long", &nodes[0], json!({ "app": "long" }), json!({})).await;
    let prometheus = Prometheus::start(None).await;
    let settings = BlockerSettings {
        prometheus_url: Some(prometheus.url.clone()),
        alert_filter: filter(Some("^LongPending$"), false, false),
        pod_selectors: vec![selector("app=long")],
    };
    let blockers = Blockers::configured(scope.client.clone(), &nodes[0], &settings).expect("the blockers");
    let reasons = blockers.check().await;
    let kinds: Vec<BlockKind> = reasons.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [BlockKind::PrometheusAlerts, BlockKind::BlockingPods],
        "{reasons:?}"
    );
    assert!(reasons[0].message.ends_with(": RebootRequired"), "{}", reasons[0]);
    assert!(reasons[1].message.contains("/long"), "{}", reasons[1]);
}

#[tokio::test]
async fn unreachable_prometheus_blocks_naming_the_url() {
    let addr = closed_port();
    let url: Url = format!("http://user:secret@{addr}/prometheus?token=t")
        .parse()
        .expect("a URL");
    let reasons = unfiltered(url).check().await;
    let error = prometheus_error(&reasons, &format!("http://{addr}/prometheus"));
    assert!(error.contains("cannot send the query"), "{error}");
    assert!(!error.contains("secret") && !error.contains("token"), "{error}");
}

#[tokio::test]
async fn prometheus_with_an_untrusted_certificate_blocks() {
    // The test cluster's API server speaks TLS with a certificate from the cluster's own CA,
    // which the system's CA bundle does not hold.
    let config = admin_config().await;
    let url: Url = config.cluster_url.to_string().parse().expect("a URL");
    let reasons = unfiltered(url.clone()).check().await;
    let error = prometheus_error(&reasons, url.as_str());
    assert!(error.contains("UnknownIssuer"), "{error}");
}

/// Reads a request's head (up to its blank line); false if the connection ended first.
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Serves `response` to every connection, after reading the request head.
async fn canned_server(response: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_request_head(&mut stream).await {
                    return;
                }
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Accepts connections and never answers.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn servers_that_are_not_prometheus_block() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "404",
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\n404 page not found\n",
            "HTTP status 404 Not Found, and the body is not a Prometheus error: \"404 page not found\"",
        ),
        (
            "garbage with 200",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html><body>Welcome</body></html>",
            "not a Prometheus API answer: \"<html><body>Welcome</body></html>\"",
        ),
        (
            "another JSON API",
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"kind\":\"Status\"}",
            "not a Prometheus API answer",
        ),
        (
            "a Prometheus error",
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"status\":\"error\",\"errorType\":\"unavailable\",\"error\":\"TSDB not ready\"}",
            "the query failed (HTTP status 503 Service Unavailable): unavailable: TSDB not ready",
        ),
        (
            "a proxy's 502",
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<h1>502 Bad Gateway</h1>",
            "HTTP status 502 Bad Gateway",
        ),
        (
            "a connection closed without an answer",
            "",
            "cannot send the query",
        ),
    ];
    for &(case, response, want) in cases {
        let addr = canned_server(response).await;
        let url: Url = format!("http://{addr}").parse().expect("a URL");
        let reasons = unfiltered(url).check().await;
        let error = prometheus_error(&reasons, &format!("http://{addr}/"));
        assert!(error.contains(want), "{case}: {error:?} should contain {want:?}");
    }

    let addr = silent_server().await;
    let url: Url = format!("http://{addr}").parse().expect("a URL");
    let reasons = unfiltered(url)
        .with_timeout(Duration::from_millis(300))
        .check()
        .await;
    let reason = only_reason(&reasons, BlockKind::PrometheusError);
    assert!(reason.message.ends_with("no answer within 300ms"), "{reason}");
}

/// Serves a 200 answer whose body is `total` bytes of a JSON-looking prefix and spaces, with a
/// Content-Length if `declared`, then holds the connection open; returns its address and the count
/// of body bytes written so far.
async fn flooding_server(
    total: usize,
    declared: bool,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("an address");
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                if !read_request_head(&mut stream).await {
                    return;
                }
                let length = if declared {
                    format!("Content-Length: {total}\r\n")
                } else {
                    String::new()
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}Connection: close\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 << 10];
                while counter.load(Ordering::Relaxed) < total {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len(), Ordering::Relaxed);
                }
                // All sent; never close, as a server that streams on would.
                std::future::pending::<()>().await;
            });
        }
    });
    (addr, sent)
}

#[tokio::test]
async fn an_oversized_answer_is_refused_naming_the_url_and_the_limit() {
    use kured::blockers::prometheus::MAX_ANSWER_BYTES;
    use std::sync::atomic::Ordering;
    for declared in [true, false] {
        // Eight times the limit: far more than the agent may take in.
        let (addr, sent) = flooding_server(8 * MAX_ANSWER_BYTES, declared).await;
        let url: Url = format!("http://user:secret@{addr}/prom?token=t")
            .parse()
            .expect("a URL");
        let reasons = unfiltered(url).check().await;
        assert_eq!(
            prometheus_error(&reasons, &format!("http://{addr}/prom")),
            "the answer is larger than 8 MiB, more than an ALERTS query returns; not read further",
            "Content-Length sent: {declared}"
        );
        if !declared {
            // The fault fired: the server did send more than the limit before the client gave up.
            assert!(
                sent.load(Ordering::Relaxed) > MAX_ANSWER_BYTES,
                "only {} bytes sent",
                sent.load(Ordering::Relaxed)
            );
        }
    }
}
