//! An API fault proxy: a plain-HTTP hop on a loopback port between a client (an agent) and the
//! test cluster's API server, which it reaches over TLS, verifying the cluster's CA. It has no
//! credentials of its own: the client's `Authorization` header passes through untouched, so the
//! API server sees the client's own identity. Responses stream, so watches work through it.
//!
//! Faults are injected by [`Rule`]s, chosen by verb (`get`, `list`, `watch`, `create`, `update`,
//! `patch`, `delete`, `deletecollection`, as the API server's authorizer names them) and resource
//! (`nodes`, `daemonsets`, `pods/eviction`, optionally one object's name): an error status with a
//! `metav1.Status` body, a request held and then dropped unanswered (a time-out), or a connection
//! reset. Globally, [`FaultProxy::black_hole_for`] stalls everything, and
//! [`FaultProxy::down_for`] makes the API server look stopped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use kube::config::{AuthInfo, Kubeconfig};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

/// What a matching request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An error response with this status code and a `metav1.Status` body, as the API server
    /// sends it (503 ServiceUnavailable, 429 TooManyRequests, 500 InternalError, ...).
    Status(u16),
    /// No answer for this long, then the connection is closed: a time-out as the client sees it.
    Hold(Duration),
    /// The connection is reset (TCP RST) without an answer.
    Reset,
}

/// Which requests get a [`Fault`], and for how many.
#[derive(Debug, Clone)]
pub struct Rule {
    verb: &'static str,
    resource: String,
    name: Option<String>,
    fault: Fault,
    first: Option<u32>,
}

const VERBS: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

impl Rule {
    /// Requests with `verb` on `resource` (`nodes`, `daemonsets`, `pods/eviction`: a resource
    /// and maybe a subresource, in any namespace) get `fault`, until the rule is cleared.
    pub fn new(verb: &str, resource: &str, fault: Fault) -> Rule {
        let verb = VERBS
            .iter()
            .copied()
            .find(|v| *v == verb)
            .unwrap_or_else(|| panic!("faultproxy: unknown verb {verb:?}; one of {VERBS:?}"));
        Rule {
            verb,
            resource: resource.to_owned(),
            name: None,
            fault,
            first: None,
        }
    }

    /// Only requests for the object called `name`.
    pub fn named(mut self, name: &str) -> Rule {
        self.name = Some(name.to_owned());
        self
    }

    /// Only the first `k` matching requests; later ones pass.
    pub fn first(mut self, k: u32) -> Rule {
        self.first = Some(k);
        self
    }

    fn matches(&self, call: &Call) -> bool {
        self.verb == call.verb
            && self.resource == call.resource
            && self.name.as_ref().is_none_or(|n| Some(n) == call.name.as_ref())
    }
}

/// A rule in force; counts the requests it answered with its fault.
#[derive(Debug, Clone)]
pub struct Injected(Arc<RuleState>);

#[derive(Debug)]
struct RuleState {
    rule: Rule,
    fired: AtomicU32,
    cleared: std::sync::atomic::AtomicBool,
}

impl Injected {
    /// How many requests got the fault so far.
    pub fn fired(&self) -> u32 {
        self.0.fired.load(Ordering::SeqCst)
    }

    /// Stops the fault: matching requests pass from now on.
    pub fn clear(&self) {
        self.0.cleared.store(true, Ordering::SeqCst);
    }

    /// Takes one of the rule's shots at `call`, if it matches and has shots left.
    fn take(&self, call: &Call) -> Option<Fault> {
        let state = &self.0;
        if state.cleared.load(Ordering::SeqCst) || !state.rule.matches(call) {
            return None;
        }
        let limit = state.rule.first.unwrap_or(u32::MAX);
        state
            .fired
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| state.rule.fault)
    }
}

/// A request as the API server's authorizer sees it: verb, resource (with subresource), name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub verb: String,
    pub resource: String,
    pub name: Option<String>,
}

impl Call {
    /// Reads verb and resource from a request line: `/api/v1/...` or `/apis/GROUP/VERSION/...`,
    /// then `namespaces/NS/` (if any), the resource, its name and subresource. Other paths
    /// (`/readyz`, `/version`) have an empty resource.
    pub fn of(method: &Method, uri: &Uri) -> Call {
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        let mut rest: &[&str] = match segments.first() {
            Some(&"api") => segments.get(2..).unwrap_or_default(),
            Some(&"apis") => segments.get(3..).unwrap_or_default(),
            _ => &[],
        };
        // The deprecated watch paths: /api/v1/watch/namespaces/NS/pods.
        let watch_path = rest.first() == Some(&"watch");
        if watch_path {
            rest = &rest[1..];
        }
        if rest.len() >= 3 && rest[0] == "namespaces" {
            rest = &rest[2..];
        }
        let resource = match rest {
            [resource, _, sub, ..] => format!("{resource}/{sub}"),
            [resource, ..] => (*resource).to_owned(),
            [] => String::new(),
        };
        let name = rest.get(1).map(|n| (*n).to_owned());
        let watch_query = uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
        let verb = match *method {
            Method::GET if watch_path || watch_query => "watch",
            Method::GET if name.is_some() => "get",
            Method::GET => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if name.is_some() => "delete",
            Method::DELETE => "deletecollection",
            _ => "",
        };
        let verb = if verb.is_empty() {
            method.as_str().to_ascii_lowercase()
        } else {
            verb.to_owned()
        };
        Call { verb, resource, name }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " {name}")?;
        }
        Ok(())
    }
}

/// The proxy. Dropping it closes its port and every connection through it.
pub struct FaultProxy {
    /// The loopback port clients connect to (plain HTTP).
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: kube::Client,
    rules: Mutex<Vec<Injected>>,
    /// True while everything is black-holed.
    black_hole: watch::Sender<bool>,
    /// True while the API server plays stopped: the port is closed.
    down: watch::Sender<bool>,
    /// Whether the port is open (the accept loop's answer to `down`).
    listening: watch::Sender<bool>,
    /// Bumped to drop every connection open at that moment.
    drops: watch::Sender<u64>,
    forwarded: Mutex<BTreeMap<(String, String), u32>>,
    held: AtomicU32,
    dropped: AtomicU32,
}

/// How the proxy ends a connection on its own.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Close it (FIN), as after a time-out.
    Close,
    /// Reset it (RST).
    Reset,
}

impl FaultProxy {
    /// Starts a proxy to the test cluster's API server, on a free loopback port.
    pub async fn start() -> FaultProxy {
        let mut config = super::cluster::admin_config().await;
        // No credentials of its own (the admin's client certificate is in here): each request
        // carries its client's.
        config.auth_info = AuthInfo::default();
        let upstream = kube::Client::try_from(config).expect("a client for the test cluster's API server");
        let listener = bind(0).await.expect("a loopback port for the fault proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::default(),
            black_hole: watch::Sender::new(false),
            down: watch::Sender::new(false),
            listening: watch::Sender::new(true),
            drops: watch::Sender::new(0),
            forwarded: Mutex::default(),
            held: AtomicU32::new(0),
            dropped: AtomicU32::new(0),
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener, port));
        FaultProxy { port, shared, accept }
    }

    /// The proxy's URL, for a kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes to `path` a copy of kubeconfig `original` (its credentials) whose clusters point
    /// at the proxy.
    pub fn kubeconfig(&self, original: &Path, path: &Path) {
        let mut kubeconfig = Kubeconfig::read_from(original)
            .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", original.display()));
        for named in &mut kubeconfig.clusters {
            if let Some(cluster) = named.cluster.as_mut() {
                cluster.server = Some(self.url());
                cluster.certificate_authority = None;
                cluster.certificate_authority_data = None;
            }
        }
        let text = serde_json::to_string(&kubeconfig).expect("a kubeconfig as JSON");
        std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Puts `rule` in force; the returned handle counts its hits and clears it.
    pub fn inject(&self, rule: Rule) -> Injected {
        let injected = Injected(Arc::new(RuleState {
            rule,
            fired: AtomicU32::new(0),
            cleared: Default::default(),
        }));
        self.shared
            .rules
            .lock()
            .expect("rules not poisoned")
            .push(injected.clone());
        injected
    }

    /// How many requests with `verb` on `resource` were passed to the API server.
    pub fn forwarded(&self, verb: &str, resource: &str) -> u32 {
        let forwarded = self.shared.forwarded.lock().expect("counts not poisoned");
        forwarded
            .get(&(verb.to_owned(), resource.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Every request passed to the API server so far, counted by verb and resource.
    pub fn forwarded_all(&self) -> BTreeMap<(String, String), u32> {
        self.shared.forwarded.lock().expect("counts not poisoned").clone()
    }

    /// How many requests, responses and response chunks a black hole has swallowed so far.
    pub fn held(&self) -> u32 {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// How many open connections a black hole's end or `down_for` has dropped so far.
    pub fn dropped(&self) -> u32 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// From now on for `duration`, nothing passes: requests are accepted but not answered,
    /// responses and watch events on their way are held. Then every connection open at the
    /// end is dropped unanswered, and traffic flows again.
    pub fn black_hole_for(&self, duration: Duration) {
        self.shared.black_hole.send_replace(true);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            shared.drop_connections();
            shared.black_hole.send_replace(false);
        });
    }

    /// From now on for `duration`, the API server looks stopped: the port refuses connections
    /// and every open one is dropped. Returns once the port is closed.
    pub async fn down_for(&self, duration: Duration) {
        self.shared.down.send_replace(true);
        until(&mut self.shared.listening.subscribe(), false).await;
        self.shared.drop_connections();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            shared.down.send_replace(false);
        });
    }

    /// Whether the API server looks stopped now ([`FaultProxy::down_for`]).
    pub fn is_down(&self) -> bool {
        *self.shared.down.borrow()
    }

    /// Waits until the port is open again after `down_for`.
    pub async fn up(&self) {
        until(&mut self.shared.listening.subscribe(), true).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.drop_connections();
    }
}

impl Shared {
    fn drop_connections(&self) {
        // Each open connection holds a receiver.
        let open = u32::try_from(self.drops.receiver_count()).unwrap_or(u32::MAX);
        self.dropped.fetch_add(open, Ordering::SeqCst);
        self.drops.send_modify(|n| *n += 1);
    }

    fn black_holed(&self) -> bool {
        *self.black_hole.borrow()
    }

    /// Counts one thing swallowed by the black hole and waits until it ends.
    async fn swallow(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        until(&mut self.black_hole.subscribe(), false).await;
    }

    fn fault_for(&self, call: &Call) -> Option<Fault> {
        let rules = self.rules.lock().expect("rules not poisoned");
        rules.iter().find_map(|rule| rule.take(call))
    }
}

/// A listening socket on 127.0.0.1:`port` (0: any free port). Reusing the address lets the
/// port open again right after `down_for` closed it, while its old connections linger.
async fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(1024)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, port: u16) {
    let mut down = shared.down.subscribe();
    let mut listener = Some(listener);
    loop {
        let open = match listener.take() {
            Some(l) => l,
            None => reopen(port).await,
        };
        shared.listening.send_replace(true);
        loop {
            tokio::select! {
                accepted = open.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(connection(shared.clone(), stream));
                    }
                    Err(e) => {
                        eprintln!("faultproxy: accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = until(&mut down, true) => break,
            }
        }
        drop(open);
        shared.listening.send_replace(false);
        until(&mut down, false).await;
    }
}

/// Waits until the flag is `value`.
async fn until(flag: &mut watch::Receiver<bool>, value: bool) {
    // Only a closed channel fails, when the proxy is gone.
    let _ = flag.wait_for(|v| *v == value).await.map(|_| ());
}

/// Opens the proxy's port again after a `down_for`; something else may hold it for a moment.
async fn reopen(port: u16) -> TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match bind(port).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("faultproxy: cannot open port {port} again after it was down: {last:?}")
}

/// Serves one client connection until it ends, the proxy ends it (a fault), or all are dropped.
async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut drops = shared.drops.subscribe();
    // A second handle on the socket, to reset it while hyper owns the stream.
    let Ok((stream, twin)) = twin(stream) else {
        return;
    };
    let (end_tx, mut end_rx) = mpsc::unbounded_channel();
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let (shared, end) = (shared.clone(), end_tx.clone());
            async move { Ok::<_, Infallible>(handle(&shared, &end, req).await) }
        })
    };
    let serve = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = drops.changed() => {}
        ending = end_rx.recv() => {
            if let Some(Ending::Reset) = ending {
                let _ = twin.set_zero_linger();
            }
        }
        _ = serve => {}
    }
}

fn twin(stream: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let stream = stream.into_std()?;
    let copy = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, TcpStream::from_std(copy)?))
}

/// Answers one request: a fault, or the API server's response.
async fn handle(
    shared: &Arc<Shared>,
    end: &mpsc::UnboundedSender<Ending>,
    req: Request<Incoming>,
) -> Response<axum::body::Body> {
    let call = Call::of(req.method(), req.uri());
    if shared.black_holed() {
        shared.swallow().await;
        return unanswered(end, Ending::Close).await;
    }
    match shared.fault_for(&call) {
        Some(Fault::Status(code)) => return status(code, &call),
        Some(Fault::Hold(duration)) => {
            tokio::time::sleep(duration).await;
            return unanswered(end, Ending::Close).await;
        }
        Some(Fault::Reset) => return unanswered(end, Ending::Reset).await,
        None => {}
    }
    match forward(shared, req).await {
        Ok(response) if shared.black_holed() => {
            drop(response);
            shared.swallow().await;
            unanswered(end, Ending::Close).await
        }
        Ok(response) => {
            let mut forwarded = shared.forwarded.lock().expect("counts not poisoned");
            *forwarded.entry((call.verb, call.resource)).or_default() += 1;
            response
        }
        Err(e) => {
            // The client sees the API server unreachable, as it would without the proxy.
            eprintln!("faultproxy: forwarding {call}: {e}");
            unanswered(end, Ending::Reset).await
        }
    }
}

/// Has the connection ended as `ending` says; the request is never answered.
async fn unanswered(end: &mpsc::UnboundedSender<Ending>, ending: Ending) -> Response<axum::body::Body> {
    let _ = end.send(ending);
    std::future::pending().await
}

/// Headers that belong to one hop, not to the request or response passed on.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::HOST,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&header::HeaderName, &header::HeaderValue)> {
    headers.iter().filter(|(name, _)| !hop_by_hop(name))
}

/// Passes the request on and streams the response back; response chunks that arrive during a
/// black hole are held, and the stream ends with an error when the black hole does.
async fn forward(shared: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<axum::body::Body>, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(axum::body::Body::new(body), usize::MAX)
        .await
        .map_err(|e| format!("reading the request body: {e}"))?;
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    for (name, value) in end_to_end(&parts.headers) {
        upstream = upstream.header(name, value);
    }
    let upstream = upstream
        .body(kube::client::Body::from(body))
        .map_err(|e| format!("building the request: {e}"))?;
    let response = shared
        .upstream
        .send(upstream)
        .await
        .map_err(|e| format!("sending it to the API server: {e}"))?;
    let (parts, body) = response.into_parts();
    let mut answer = Response::builder().status(parts.status);
    for (name, value) in end_to_end(&parts.headers) {
        answer = answer.header(name, value);
    }
    let gate = shared.clone();
    let chunks = axum::body::Body::new(body).into_data_stream().then(move |chunk| {
        let gate = gate.clone();
        async move {
            if gate.black_holed() {
                gate.swallow().await;
                return Err(std::io::Error::other("dropped by the black hole"));
            }
            chunk.map_err(std::io::Error::other)
        }
    });
    answer
        .body(axum::body::Body::from_stream(chunks))
        .map_err(|e| format!("building the response: {e}"))
}

/// An error response as the API server sends it.
fn status(code: u16, call: &Call) -> Response<axum::body::Body> {
    let reason = match code {
        400 => "BadRequest",
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    };
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("injected by the fault proxy: {call}"),
        "reason": reason,
        "code": code,
    });
    let mut response = Response::builder()
        .status(StatusCode::from_u16(code).expect("a valid status code"))
        .header(header::CONTENT_TYPE, "application/json");
    if code == 429 {
        response = response.header(header::RETRY_AFTER, "1");
    }
    response
        .body(axum::body::Body::from(body.to_string()))
        .expect("a valid response")
}
