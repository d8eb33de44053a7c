//! One test's corner of the test cluster: a namespace of its own and its own node names, so that
//! tests run in parallel on one cluster without seeing each other's objects.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use super::cluster::{admin_client, admin_config};

/// Label put on every object a scope creates, so whatever a test leaves behind can be found.
pub const SCOPE_LABEL: &str = "kured.test/scope";

/// A short identifier, unique across the test processes and tests of one run.
fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = (u64::from(std::process::id()) << 32 | u64::from(nanos))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(COUNTER.fetch_add(1, Ordering::Relaxed)));
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = mixed;
    (0..8)
        .map(|_| {
            let c = alphabet[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}

/// One test's corner of the test cluster: a namespace of its own and a prefix for node names
/// (its kwok Nodes: [`Scope::create_nodes`]). Dropping the scope deletes its namespace and its
/// nodes, also when the test panics.
pub struct Scope {
    pub client: Client,
    pub namespace: String,
    pub id: String,
}

impl Scope {
    /// Creates the scope's namespace. `test` is a short name that makes leftovers recognisable.
    pub async fn new(test: &str) -> Scope {
        let client = admin_client().await;
        let id = unique_id();
        let namespace = format!("{test}-{id}");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some([(SCOPE_LABEL.to_owned(), id.clone())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
        Scope {
            client,
            namespace,
            id,
        }
    }

    /// A typed API for namespaced objects in this scope's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Nodes of the cluster (not only this scope's).
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// The name of this scope's node number `i`.
    pub fn node_name(&self, i: usize) -> String {
        format!("node-{}-{i}", self.id)
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // Async work cannot run in Drop, and the test's runtime may be shutting down (a panic):
        // clean up on a thread with a runtime and a client of its own.
        let (namespace, id) = (self.namespace.clone(), self.id.clone());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            rt.block_on(async {
                let Ok(config) = tokio::time::timeout(Duration::from_secs(5), admin_config()).await else {
                    return;
                };
                let Ok(client) = Client::try_from(config) else {
                    return;
                };
                // Namespace first, while kwok still manages the nodes and so finishes the pods'
                // graceful deletion; pods left on a deleted node would linger until pod GC.
                let namespaces: Api<Namespace> = Api::all(client.clone());
                if let Err(e) = namespaces.delete(&namespace, &DeleteParams::background()).await {
                    eprintln!("cleanup: deleting namespace {namespace}: {e}");
                }
                let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while tokio::time::Instant::now() < deadline {
                    match pods.list(&ListParams::default()).await {
                        Ok(list) if list.items.is_empty() => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                        Err(_) => break,
                    }
                }
                let nodes: Api<Node> = Api::all(client);
                let by_scope = ListParams::default().labels(&format!("{SCOPE_LABEL}={id}"));
                if let Err(e) = nodes.delete_collection(&DeleteParams::default(), &by_scope).await {
                    eprintln!("cleanup: deleting nodes of scope {id}: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}
