//! kured — the Kubernetes Reboot Daemon.
//!
//! Each agent watches its own node for a pending reboot, waits for the reboot window and for
//! blockers to clear, takes a cluster-wide lock, drains the node through the Eviction API, reboots
//! it, and after the reboot returns it to service. The binary in `main.rs` only parses, sets up
//! and reports; everything it runs lives in this library.
// `unsafe` is denied everywhere except `sys`, the one module that makes raw system calls.
#![deny(unsafe_code)]

pub mod agent;
pub mod blockers;
pub mod config;
pub mod decide;
pub mod drain;
pub mod duration;
pub mod http;
pub mod lock;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod reboot;
pub mod selector;
pub mod sentinel;
pub mod state;
pub mod status;
mod sys;
pub mod window;

/// The version of this build, as `kured --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error and its causes on one line, `outer: inner: root`, for log fields.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
