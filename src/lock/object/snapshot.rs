//! The lock object as one read saw it: what a write goes back with, and what the lock decides on.

use kube::api::DynamicObject;

use crate::lock::{LockSnapshot, PAUSE_ANNOTATION};

/// The lock object as read: the object to write back, its lock annotation and its pause
/// annotation. A Lease not created yet has no object.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(super) object: Option<DynamicObject>,
    annotation: Option<String>,
    pause: Option<String>,
}

impl Snapshot {
    pub(super) fn of(object: DynamicObject, annotation: &str) -> Snapshot {
        let value = annotation_of(Some(&object), annotation).map(str::to_owned);
        let pause = annotation_of(Some(&object), PAUSE_ANNOTATION).map(str::to_owned);
        Snapshot {
            object: Some(object),
            annotation: value,
            pause,
        }
    }

    /// A Lease that does not exist yet.
    pub(super) fn absent() -> Snapshot {
        Snapshot {
            object: None,
            annotation: None,
            pause: None,
        }
    }

    /// The lock annotation's value, `None` when absent.
    pub fn annotation(&self) -> Option<&str> {
        self.annotation.as_deref()
    }

    /// The object's pause annotation ([`PAUSE_ANNOTATION`]), `None` when absent.
    pub fn pause(&self) -> Option<&str> {
        self.pause.as_deref()
    }

    /// What was read, as [`RebootLock::changed`](crate::lock::RebootLock::changed) compares it.
    pub fn seen(&self) -> LockSnapshot {
        LockSnapshot::new(self.annotation.clone()).with_pause(self.pause.clone())
    }

    /// The resourceVersion a write based on this snapshot is conditional on.
    pub fn resource_version(&self) -> Option<&str> {
        self.object.as_ref()?.metadata.resource_version.as_deref()
    }
}

fn annotation_of<'a>(object: Option<&'a DynamicObject>, annotation: &str) -> Option<&'a str> {
    object?
        .metadata
        .annotations
        .as_ref()?
        .get(annotation)
        .map(String::as_str)
}
