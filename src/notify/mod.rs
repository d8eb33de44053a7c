//! Notifications at the three moments operators are told about: drain, reboot, and the node back
//! in service. Messages come from `--message-template-*` with `%s` replaced by the node name.

use std::future::Future;

/// The moments a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Drain,
    Reboot,
    Uncordon,
}

/// Sends a message about a node. Sending never blocks a reboot: implementations bound their time
/// and report failures in logs and metrics, not to the caller.
pub trait Notifier: Send + Sync {
    fn notify(&self, event: Event, message: &str) -> impl Future<Output = ()> + Send;
}

/// Upstream's `%s` substitution: the first `%s` becomes the node name (Go's `fmt.Sprintf` with
/// one argument). A template without `%s` is sent as it is.
pub fn render(template: &str, node: &str) -> String {
    template.replacen("%s", node, 1)
}

/// A notifier that only logs each message: what runs when no notification URL is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogOnly;

impl Notifier for LogOnly {
    async fn notify(&self, event: Event, message: &str) {
        tracing::info!(event = ?event, message, "notification");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_substitute_the_node_name_like_upstream() {
        assert_eq!(render("Draining node %s", "n1"), "Draining node n1");
        assert_eq!(
            render("Node %s rebooted & uncordoned successfully!", "n1"),
            "Node n1 rebooted & uncordoned successfully!"
        );
        assert_eq!(render("no placeholder", "n1"), "no placeholder");
        assert_eq!(render("%s and %s", "n1"), "n1 and %s");
    }
}
