//! The API fault proxy of the test support (tests/support/faultproxy.rs), on the real test cluster:
//! requests and watches pass through it with the client's own credentials, and each fault reaches
//! the client as it would from a failing API server or network. Needs `scripts/testcluster up`.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use http::{Method, Uri};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{EvictParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::agents::{Agents, Fleet};
use support::cluster::{client_from_kubeconfig, config_from_kubeconfig};
use support::faultproxy::{Call, Fault, FaultProxy, Rule};
use support::objects::create_pod;
use support::scope::Scope;
use support::wait::eventually;

/// A scope with one node, the agents' ServiceAccount (the RBAC of deploy/kured.yaml), a proxy,
/// and a client that reaches the API server through the proxy with nothing but that account's
/// token.
struct Setup {
    scope: Scope,
    node: String,
    proxy: FaultProxy,
    client: Client,
    /// The kubeconfig of `client`.
    kubeconfig: std::path::PathBuf,
    _agents: Agents,
}

impl Setup {
    async fn new(test: &str) -> Setup {
        let Fleet {
            scope,
            mut names,
            agents,
        } = Fleet::new(test, 1).await;
        let proxy = FaultProxy::start().await;
        let kubeconfig = agents.kubeconfig_through(&proxy);
        let client = client_from_kubeconfig(&kubeconfig).await;
        Setup {
            scope,
            node: names.remove(0),
            proxy,
            client,
            kubeconfig,
            _agents: agents,
        }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// The lock DaemonSet, as the agents' account sees it through the proxy.
    fn daemonsets(&self) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), &self.scope.namespace)
    }

    /// A watch of the lock DaemonSet through the proxy, from its current version.
    async fn watch_lock(
        &self,
    ) -> impl futures::Stream<Item = Result<WatchEvent<DaemonSet>, kube::Error>> + use<> {
        let ds = self
            .daemonsets()
            .get("kured")
            .await
            .expect("reading the DaemonSet");
        let version = ds.resource_version().expect("a resourceVersion");
        let params = WatchParams::default().fields("metadata.name=kured");
        self.daemonsets()
            .watch(&params, &version)
            .await
            .expect("starting a watch through the proxy")
            .boxed()
    }

    /// Annotates the lock DaemonSet as the admin (not through the proxy).
    async fn touch_lock(&self, value: &str) {
        self.scope
            .api::<DaemonSet>()
            .patch(
                "kured",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "annotations": { "kured.test/touch": value } } })),
            )
            .await
            .expect("annotating the DaemonSet");
    }
}

/// The status code and reason of an API error, or a description of another error.
fn api_status(result: Result<impl std::fmt::Debug, kube::Error>) -> Result<(u16, String), String> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.reason.clone())),
        other => Err(format!("{other:?}")),
    }
}

/// A connection-level failure (no HTTP answer), with its text.
fn connection_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => panic!("expected no answer, got the API error {status:?}"),
        Err(e) => kured::error_chain(&e),
        Ok(v) => panic!("expected no answer, got {v:?}"),
    }
}

#[test]
fn requests_are_named_as_the_authorizer_names_them() {
    let cases = [
        ("GET", "/api/v1/nodes/n1", "get", "nodes", Some("n1")),
        ("GET", "/api/v1/nodes?labelSelector=a", "list", "nodes", None),
        (
            "GET",
            "/api/v1/nodes?fieldSelector=x&watch=true",
            "watch",
            "nodes",
            None,
        ),
        ("GET", "/api/v1/watch/namespaces/ns/pods", "watch", "pods", None),
        (
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
            "list",
            "pods",
            None,
        ),
        (
            "POST",
            "/api/v1/namespaces/ns/pods/p/eviction",
            "create",
            "pods/eviction",
            Some("p"),
        ),
        ("PATCH", "/api/v1/nodes/n1", "patch", "nodes", Some("n1")),
        (
            "PATCH",
            "/api/v1/nodes/n1/status",
            "patch",
            "nodes/status",
            Some("n1"),
        ),
        (
            "GET",
            "/apis/apps/v1/namespaces/ns/daemonsets/kured",
            "get",
            "daemonsets",
            Some("kured"),
        ),
        (
            "PUT",
            "/apis/apps/v1/namespaces/ns/daemonsets/kured",
            "update",
            "daemonsets",
            Some("kured"),
        ),
        ("GET", "/api/v1/namespaces/ns", "get", "namespaces", Some("ns")),
        (
            "DELETE",
            "/api/v1/namespaces/ns/pods/p",
            "delete",
            "pods",
            Some("p"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/ns/pods",
            "deletecollection",
            "pods",
            None,
        ),
        ("GET", "/readyz", "list", "", None),
    ];
    for (method, uri, verb, resource, name) in cases {
        let method: Method = method.parse().expect("a method");
        let uri: Uri = uri.parse().expect("a URI");
        let expected = Call {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            name: name.map(str::to_owned),
        };
        assert_eq!(Call::of(&method, &uri), expected, "{method} {uri}");
    }
}

#[tokio::test]
async fn requests_and_watches_pass_with_the_clients_own_credentials() {
    let setup = Setup::new("proxy-pass").await;
    let node = setup
        .nodes()
        .get(&setup.node)
        .await
        .expect("reading the node through the proxy");
    assert_eq!(node.name_any(), setup.node);
    // The proxy adds no credentials: without a token of its own, a client is anonymous.
    let config = kube::Config::new(setup.proxy.url().parse().expect("the proxy's URL"));
    let anonymous = Client::try_from(config).expect("a client without credentials");
    let refused = api_status(Api::<Node>::all(anonymous).get(&setup.node).await);
    assert!(
        matches!(refused, Ok((401 | 403, _))),
        "an anonymous request through the proxy is refused: {refused:?}"
    );

    // A watch streams its events as they happen, through the proxy.
    let mut watch = setup.watch_lock().await;
    setup.touch_lock("1").await;
    let event = tokio::time::timeout(Duration::from_secs(30), watch.try_next())
        .await
        .expect("an event within 30s")
        .expect("a watch event")
        .expect("the watch goes on");
    match event {
        WatchEvent::Modified(ds) => {
            assert_eq!(
                ds.annotations().get("kured.test/touch").map(String::as_str),
                Some("1")
            )
        }
        other => panic!("expected the annotation as a modification, got {other:?}"),
    }
    setup.touch_lock("2").await;
    let second = tokio::time::timeout(Duration::from_secs(30), watch.try_next()).await;
    assert!(
        matches!(second, Ok(Ok(Some(WatchEvent::Modified(_))))),
        "a second event on the same stream: {second:?}"
    );
    // Both gets reached the API server: the account's and the anonymous one.
    assert_eq!(setup.proxy.forwarded("get", "nodes"), 2);
    assert_eq!(setup.proxy.forwarded("watch", "daemonsets"), 1);
}

#[tokio::test]
async fn status_faults_reach_the_client_as_api_errors_on_the_chosen_requests_only() {
    let setup = Setup::new("proxy-status").await;
    let nodes = setup.nodes();

    let unavailable = setup
        .proxy
        .inject(Rule::new("get", "nodes", Fault::Status(503)).first(1));
    assert_eq!(
        api_status(nodes.get(&setup.node).await),
        Ok((503, "ServiceUnavailable".to_owned()))
    );
    nodes.get(&setup.node).await.expect("the second get passes");
    assert_eq!(unavailable.fired(), 1);

    let throttled = setup
        .proxy
        .inject(Rule::new("patch", "nodes", Fault::Status(429)).named(&setup.node));
    let label = Patch::Merge(json!({ "metadata": { "labels": { "kured.test/patched": "yes" } } }));
    for _ in 0..2 {
        assert_eq!(
            api_status(nodes.patch(&setup.node, &PatchParams::default(), &label).await),
            Ok((429, "TooManyRequests".to_owned()))
        );
    }
    assert_eq!(throttled.fired(), 2, "until cleared, every match gets the fault");
    throttled.clear();
    nodes
        .patch(&setup.node, &PatchParams::default(), &label)
        .await
        .expect("the patch passes once the fault is cleared");
    assert_eq!(throttled.fired(), 2);

    // Verb and resource choose: a watch fails while a list of the same object passes.
    let broken_watch = setup
        .proxy
        .inject(Rule::new("watch", "daemonsets", Fault::Status(500)));
    let params = WatchParams::default().fields("metadata.name=kured");
    let watch = setup.daemonsets().watch(&params, "0").await.map(|_| ());
    assert_eq!(api_status(watch), Ok((500, "InternalError".to_owned())));
    let list = setup
        .daemonsets()
        .list(&ListParams::default().fields("metadata.name=kured"))
        .await
        .expect("the list passes");
    assert_eq!(list.items.len(), 1);
    assert_eq!(broken_watch.fired(), 1);

    // A subresource: evictions fail, the pod stays.
    create_pod(&setup.scope, "victim", &setup.node, json!({}), json!({})).await;
    let evictions = setup
        .proxy
        .inject(Rule::new("create", "pods/eviction", Fault::Status(503)));
    let pods: Api<Pod> = Api::namespaced(setup.client.clone(), &setup.scope.namespace);
    assert_eq!(
        api_status(pods.evict("victim", &EvictParams::default()).await),
        Ok((503, "ServiceUnavailable".to_owned()))
    );
    assert_eq!(evictions.fired(), 1);
    let victim = setup.scope.api::<Pod>().get("victim").await.expect("the pod");
    assert!(victim.metadata.deletion_timestamp.is_none(), "not evicted");
}

#[tokio::test]
async fn resets_and_holds_end_the_connection_without_an_answer() {
    let setup = Setup::new("proxy-conn").await;
    let nodes = setup.nodes();

    let reset = setup
        .proxy
        .inject(Rule::new("patch", "nodes", Fault::Reset).first(1));
    let label = Patch::Merge(json!({ "metadata": { "labels": { "kured.test/patched": "yes" } } }));
    let error = connection_error(nodes.patch(&setup.node, &PatchParams::default(), &label).await);
    assert!(error.contains("reset"), "a reset: {error}");
    assert_eq!(reset.fired(), 1);
    let node = setup.scope.node(&setup.node).await;
    assert!(
        !node.labels().contains_key("kured.test/patched"),
        "the reset request never reached the API server"
    );
    nodes
        .patch(&setup.node, &PatchParams::default(), &label)
        .await
        .expect("the next patch passes");

    // Held, then dropped: a client without a time-out of its own sees the connection close.
    let hold = setup
        .proxy
        .inject(Rule::new("get", "nodes", Fault::Hold(Duration::from_secs(1))).first(1));
    let error = connection_error(nodes.get(&setup.node).await);
    assert!(!error.contains("reset"), "closed, not reset: {error}");
    assert_eq!(hold.fired(), 1);

    // A client with a read time-out shorter than the hold gives up on its own.
    let mut config = config_from_kubeconfig(&setup.kubeconfig).await;
    config.read_timeout = Some(Duration::from_secs(1));
    let impatient = Client::try_from(config).expect("a client");
    let long_hold = setup
        .proxy
        .inject(Rule::new("get", "nodes", Fault::Hold(Duration::from_secs(600))));
    let error = connection_error(Api::<Node>::all(impatient).get(&setup.node).await);
    assert!(
        error.contains("timed out") || error.contains("deadline"),
        "a time-out: {error}"
    );
    assert_eq!(long_hold.fired(), 1);
}

#[tokio::test]
async fn a_black_hole_stalls_requests_and_streams_then_drops_their_connections() {
    let setup = Setup::new("proxy-blackhole").await;
    let mut watch = setup.watch_lock().await;
    setup.proxy.black_hole_for(Duration::from_secs(10));

    let nodes = setup.nodes();
    let name = setup.node.clone();
    let stalled = tokio::spawn(async move { nodes.get(&name).await });
    eventually("the request to be swallowed", Duration::from_secs(10), || async {
        (setup.proxy.held() >= 1).then_some(())
    })
    .await;
    setup.touch_lock("during").await;
    eventually(
        "the watch event to be swallowed",
        Duration::from_secs(10),
        || async { (setup.proxy.held() >= 2).then_some(()) },
    )
    .await;

    // When the black hole ends, both connections are dropped: neither the answer nor the
    // event ever arrives.
    let next = tokio::time::timeout(Duration::from_secs(60), watch.try_next())
        .await
        .expect("the watch ends within 60s");
    assert!(
        matches!(next, Err(_) | Ok(None)),
        "the watch ends without the held event: {next:?}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(60), stalled)
        .await
        .expect("the request ends within 60s")
        .expect("the request's task");
    connection_error(answer);
    assert!(setup.proxy.dropped() >= 1, "connections dropped at the end");
    setup
        .nodes()
        .get(&setup.node)
        .await
        .expect("requests pass after the black hole");
}

#[tokio::test]
async fn down_refuses_connections_and_drops_the_open_ones() {
    let setup = Setup::new("proxy-down").await;
    let mut watch = setup.watch_lock().await;
    setup.proxy.down_for(Duration::from_secs(5)).await;

    let refused = std::net::TcpStream::connect(("127.0.0.1", setup.proxy.port)).map(|_| ());
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "new connections are refused"
    );
    let next = tokio::time::timeout(Duration::from_secs(30), watch.try_next())
        .await
        .expect("the watch ends within 30s");
    assert!(
        matches!(next, Err(_) | Ok(None)),
        "the open watch is dropped: {next:?}"
    );
    assert!(setup.proxy.dropped() >= 1);

    setup.proxy.up().await;
    setup
        .nodes()
        .get(&setup.node)
        .await
        .expect("requests pass once the API server is back");
}
