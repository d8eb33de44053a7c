//! What the API server's authorizer lets a client do, asked with SelfSubjectAccessReviews.

use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use kube::api::PostParams;
use kube::{Api, Client};

/// One request of the authorizer's: `verb` on `resource` (`group/resource[/subresource]`, "" as
/// the core group) named `name` in `namespace` ("" for cluster-wide objects and every namespace).
pub struct Request<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

pub fn request<'a>(verb: &'a str, resource: &'a str, namespace: &'a str, name: &'a str) -> Request<'a> {
    Request {
        verb,
        resource,
        namespace,
        name,
    }
}

impl std::fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:?} in {:?}",
            self.verb, self.resource, self.name, self.namespace
        )
    }
}

/// Whether the user of `client` may make `request`, as the API server's authorizer answers it.
pub async fn may(client: &Client, request: &Request<'_>) -> bool {
    let mut parts = request.resource.splitn(3, '/');
    let group = parts.next().unwrap_or_default();
    let resource = parts.next().unwrap_or_default();
    let subresource = parts.next().unwrap_or_default();
    let review: SelfSubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": { "resourceAttributes": {
            "verb": request.verb,
            "group": group,
            "resource": resource,
            "subresource": subresource,
            "namespace": request.namespace,
            "name": request.name,
        } },
    }))
    .expect("a valid SelfSubjectAccessReview");
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("asking whether {request} is allowed: {e}"));
    answer.status.is_some_and(|s| s.allowed)
}
