//! kured — the Kubernetes Reboot Daemon.
//!
//! Each agent watches its own node for a pending reboot, waits for the reboot window and for
//! blockers to clear, takes a cluster-wide lock, drains the node through the Eviction API, reboots
//! it, and after the reboot returns it to service. The binary in `main.rs` only parses, sets up
//! and reports; everything it runs lives in this library.
// `unsafe` is denied everywhere except `sys`, the one module that makes raw system calls.
#![deny(unsafe_code)]

pub mod agent;
pub mod agent_state;
pub mod blockers;
pub mod condition;
pub mod config;
pub mod control;
pub mod controls;
pub mod decide;
pub mod drain;
pub mod duration;
pub mod events;
pub mod gate;
pub mod host;
pub mod http;
pub mod kube_error;
pub mod lock;
pub mod logformat;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod reboot;
pub mod selector;
pub mod sentinel;
pub mod status;
mod sys;
pub mod window;

pub use sys::{random_access_to_own_binary, release_own_binary_pages};

/// The version of this build, as `kured --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error and its causes on one line, `outer: inner: root`, for log fields and messages. A cause
/// whose text the line already holds (an error that quotes its source, as lettre's do) is left
/// out. An error the API server answered ends the line as `API error <code> <reason>: <message>`,
/// once: kube's own text for it repeats the message and adds the whole status object.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let (text, last) = match e.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => (
                format!("API error {} {}: {}", status.code, status.reason, status.message),
                true,
            ),
            _ => (e.to_string(), false),
        };
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        if last {
            break;
        }
        current = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read node n1")]
    struct ReadNode(#[source] kube::Error);

    #[test]
    fn api_errors_end_the_chain_once_and_briefly() {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "code": 404,
            "reason": "NotFound",
            "message": "nodes \"n1\" not found",
        }))
        .expect("a Status");
        let error = ReadNode(kube::Error::Api(Box::new(status)));
        assert_eq!(
            error_chain(&error),
            r#"cannot read node n1: API error 404 NotFound: nodes "n1" not found"#
        );
    }

    #[test]
    fn causes_the_line_already_quotes_are_left_out() {
        #[derive(Debug, thiserror::Error)]
        enum Outer {
            #[error("outer: {0}")]
            Quotes(#[source] std::io::Error),
            #[error("outer")]
            Wraps(#[source] std::io::Error),
        }
        let refused = || std::io::Error::other("refused");
        for error in [Outer::Quotes(refused()), Outer::Wraps(refused())] {
            assert_eq!(error_chain(&error), "outer: refused", "{error:?}");
        }
    }
}
