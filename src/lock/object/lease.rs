//! What the Lease backend writes beyond the annotation: the Lease itself, created by the first
//! write, and its `spec.holderIdentity`.

use kube::api::{DynamicObject, ObjectMeta};

use super::{ObjectLock, node_ids};
use crate::lock::record::{self, Change};

impl ObjectLock {
    /// A Lease of our name, to create with the first write.
    pub(super) fn new_lease(&self) -> DynamicObject {
        new_lease(&self.name)
    }
}

/// An empty Lease named `name`, for the first write that needs the Lease to create: the lock's,
/// or an operator's `kured pause` of the fleet.
pub fn new_lease(name: &str) -> DynamicObject {
    DynamicObject {
        types: Some(kube::api::TypeMeta {
            api_version: "coordination.k8s.io/v1".to_owned(),
            kind: "Lease".to_owned(),
        }),
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: serde_json::json!({ "spec": {} }),
    }
}

/// Sets a Lease's `spec.holderIdentity` to the holders the record `change` writes, comma
/// separated, or removes it when there are none: what `kubectl get lease` shows. The record
/// written is valid (it was just encoded), so a parse failure only leaves the field out.
pub(super) fn set_holder_identity(object: &mut DynamicObject, change: &Change) {
    let holders = match change {
        Change::Set(value) => record::read(Some(value))
            .ok()
            .flatten()
            .map(|r| node_ids(r.entries()))
            .unwrap_or_default(),
        Change::Remove => String::new(),
    };
    if !object.data.is_object() {
        object.data = serde_json::json!({});
    }
    let Some(data) = object.data.as_object_mut() else {
        return;
    };
    let spec = data.entry("spec").or_insert_with(|| serde_json::json!({}));
    if !spec.is_object() {
        *spec = serde_json::json!({});
    }
    if let Some(spec) = spec.as_object_mut() {
        if holders.is_empty() {
            spec.remove("holderIdentity");
        } else {
            spec.insert("holderIdentity".to_owned(), holders.into());
        }
    }
}
