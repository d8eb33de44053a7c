#![forbid(unsafe_code)]

use clap::Parser;

/// Kubernetes Reboot Daemon: reboots nodes that need it, one lock holder at a time.
#[derive(Debug, Parser)]
#[command(name = "kured", version = kured::VERSION)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
