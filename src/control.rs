//! The operator's controls of a rollout: annotations on a Node or on the lock object that the
//! agents read, and `kured pause|resume|reboot`, which set them with the operator's credentials.
//!
//! On a Node: [`PAUSE_ANNOTATION`] (never reboot it), [`REBOOT_NOW_ANNOTATION`] (reboot it as if
//! its sentinel said so) and [`HALTED_ANNOTATION`] (written by its agent when the post-reboot
//! health gate timed out; removing it resumes the rollout). On the lock object — the DaemonSet, or
//! the Lease with `--lock-backend=lease` — [`PAUSE_ANNOTATION`] stops every node from taking the
//! lock. Each command is one merge patch: there is nothing to read first, and two operators
//! setting the same annotation agree.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::controls::{HALTED_ANNOTATION, PAUSE_ANNOTATION, REBOOT_NOW_ANNOTATION};
use crate::kube_error;
use crate::lock::object::new_lease;
use crate::lock::{Backend, LockObject};

/// What `kured pause|resume` acts on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// One Node, by name.
    Node(&'a str),
    /// Every node: the lock object.
    Fleet(&'a LockObject),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{object} not found")]
    NotFound { object: String },
    #[error("not allowed to change {object} with these credentials")]
    Forbidden {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("changing {object}")]
    Write {
        object: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// `kured pause`: sets [`PAUSE_ANNOTATION`] to `"true"` on `target`, creating the Lease of the
/// fleet if it does not exist yet. Returns the line to show.
pub async fn pause(client: &Client, target: Target<'_>) -> Result<String> {
    let set = [(PAUSE_ANNOTATION, Some("true"))];
    match target {
        Target::Node(node) => {
            annotate_node(client, node, &set).await?;
            Ok(format!("node {node} paused ({PAUSE_ANNOTATION}=true)"))
        }
        Target::Fleet(lock) => {
            if !annotate_object(client, lock, &set).await? {
                create_lease(client, lock, &set).await?;
            }
            Ok(format!(
                "fleet paused ({PAUSE_ANNOTATION}=true on {})",
                lock.describe()
            ))
        }
    }
}

/// `kured resume`: removes [`PAUSE_ANNOTATION`] from `target`, and from a Node also
/// [`HALTED_ANNOTATION`]. A Lease of the fleet that does not exist is not paused. Returns the line
/// to show.
pub async fn resume(client: &Client, target: Target<'_>) -> Result<String> {
    match target {
        Target::Node(node) => {
            annotate_node(
                client,
                node,
                &[(PAUSE_ANNOTATION, None), (HALTED_ANNOTATION, None)],
            )
            .await?;
            Ok(format!(
                "node {node} resumed ({PAUSE_ANNOTATION} and {HALTED_ANNOTATION} removed)"
            ))
        }
        Target::Fleet(lock) => {
            if annotate_object(client, lock, &[(PAUSE_ANNOTATION, None)]).await? {
                Ok(format!(
                    "fleet resumed ({PAUSE_ANNOTATION} removed from {})",
                    lock.describe()
                ))
            } else {
                Ok(format!("fleet not paused ({} does not exist)", lock.describe()))
            }
        }
    }
}

/// `kured reboot NODE`: sets [`REBOOT_NOW_ANNOTATION`] to `"true"` on `node`. Returns the line to
/// show.
pub async fn request_reboot(client: &Client, node: &str) -> Result<String> {
    annotate_node(client, node, &[(REBOOT_NOW_ANNOTATION, Some("true"))]).await?;
    Ok(format!(
        "node {node} reboot requested ({REBOOT_NOW_ANNOTATION}=true)"
    ))
}

/// The merge patch that sets each annotation to its value, or removes it (`None`).
fn annotations_patch(annotations: &[(&str, Option<&str>)]) -> Value {
    let map: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.map_or(Value::Null, Value::from)))
        .collect();
    json!({ "metadata": { "annotations": map } })
}

async fn annotate_node(client: &Client, node: &str, annotations: &[(&str, Option<&str>)]) -> Result<()> {
    let object = format!("node {node}");
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(annotations_patch(annotations)),
        )
        .await
        .map_err(|source| classify(object, source))?;
    Ok(())
}

/// Patches the lock object; `false` when it is a Lease that does not exist (yet).
async fn annotate_object(
    client: &Client,
    lock: &LockObject,
    annotations: &[(&str, Option<&str>)],
) -> Result<bool> {
    let written = lock
        .api(client.clone())
        .patch(
            &lock.name,
            &PatchParams::default(),
            &Patch::Merge(annotations_patch(annotations)),
        )
        .await;
    match written {
        Ok(_) => Ok(true),
        Err(e) if lock.backend == Backend::Lease && kube_error::is_not_found(&e) => Ok(false),
        Err(source) => Err(classify(lock.describe(), source)),
    }
}

/// Creates the lock's Lease holding only `annotations`; if another writer (an agent taking the
/// lock) created it meanwhile, patches that one instead.
async fn create_lease(
    client: &Client,
    lock: &LockObject,
    annotations: &[(&str, Option<&str>)],
) -> Result<()> {
    let mut lease = new_lease(&lock.name);
    lease.metadata.annotations = Some(
        annotations
            .iter()
            .filter_map(|(key, value)| Some(((*key).to_owned(), (*value)?.to_owned())))
            .collect(),
    );
    match lock
        .api(client.clone())
        .create(&PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if kube_error::is_already_exists(&e) => {
            if annotate_object(client, lock, annotations).await? {
                Ok(())
            } else {
                // Created and deleted again between our two requests.
                Err(ControlError::NotFound {
                    object: lock.describe(),
                })
            }
        }
        Err(source) => Err(classify(lock.describe(), source)),
    }
}

fn classify(object: String, source: kube::Error) -> ControlError {
    if kube_error::is_not_found(&source) {
        ControlError::NotFound { object }
    } else if kube_error::is_forbidden(&source) {
        ControlError::Forbidden { object, source }
    } else {
        ControlError::Write { object, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_and_removes_annotations_only() {
        assert_eq!(
            annotations_patch(&[(PAUSE_ANNOTATION, None), (HALTED_ANNOTATION, None)]),
            json!({ "metadata": { "annotations": { "kured.dev/pause": null, "kured.dev/halted": null } } })
        );
        assert_eq!(
            annotations_patch(&[(REBOOT_NOW_ANNOTATION, Some("true"))]),
            json!({ "metadata": { "annotations": { "kured.dev/reboot-now": "true" } } })
        );
    }

    #[test]
    fn an_api_refusal_names_the_object_and_what_was_refused() {
        let answer = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(
                serde_json::from_value(json!({
                    "status": "Failure", "code": code, "reason": reason,
                    "message": format!("nodes \"n1\" {reason}"),
                }))
                .expect("a Status"),
            ))
        };
        let line = |e: ControlError| crate::error_chain(&e);
        assert_eq!(
            line(classify("node n1".into(), answer(404, "NotFound"))),
            "node n1 not found"
        );
        assert_eq!(
            line(classify("node n1".into(), answer(403, "Forbidden"))),
            "not allowed to change node n1 with these credentials: API error 403 Forbidden: nodes \"n1\" Forbidden"
        );
        assert_eq!(
            line(classify("node n1".into(), answer(500, "InternalError"))),
            "changing node n1: API error 500 InternalError: nodes \"n1\" InternalError"
        );
    }
}
