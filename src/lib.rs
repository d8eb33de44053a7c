//! kured — the Kubernetes Reboot Daemon.
//!
//! Each agent watches its own node for a pending reboot, waits for the reboot window and for
//! blockers to clear, takes a cluster-wide lock, drains the node through the Eviction API, reboots
//! it, and after the reboot returns it to service. The binary in `main.rs` only parses, sets up
//! and reports; everything it runs lives in this library.
// `unsafe` is denied everywhere except `sys`, the one module that makes raw system calls.
#![deny(unsafe_code)]

pub mod duration;
pub mod reboot;
pub mod sentinel;
mod sys;
pub mod window;

/// The version of this build, as `kured --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
