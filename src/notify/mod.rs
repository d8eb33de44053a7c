//! Notifications at the three moments operators are told about: drain, reboot, and the node back
//! in service. Messages come from `--message-template-*` with `%s` replaced by the node name, and
//! go to every `--notify-url` (shoutrrr syntax, parsed in [`target`]) at once.
//!
//! Layout: each service lives in one file under `services/` (its URL parsing, redacted display,
//! secrets and requests) and is listed once in the registry in `services/mod.rs`, whose module
//! doc says how to add one. [`target`] holds the [`Target`] wrapper and the `Service` trait the
//! services implement; `url_syntax` the query and URL helpers they share; `request` the HTTP
//! request type; `deliver` sending with retries. Nothing outside `services/` names a service.
//!
//! Sending never blocks a reboot for long: each attempt is bounded in time, a failed attempt is
//! tried again a few times with back-off when trying again can help, and a notification that
//! still fails is logged and counted in `kured_notifications_failed_total{scheme}` — never
//! returned to the agent, which goes on with the drain or reboot.

mod deliver;
mod request;
pub(crate) mod services;
pub mod target;
mod template;
mod url_syntax;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn};
use url::Url;

pub use deliver::SendError;
pub use target::{Target, TargetError};
pub use template::render;

use crate::http::{self, HttpError};
use crate::metrics::NotificationFailures;
use deliver::Link;

/// How many times one message is tried on one target: a 5xx, 429 or dropped connection usually
/// clears within seconds; more attempts would only hold the drain or reboot back longer.
const ATTEMPTS: u32 = 3;
/// How long one attempt may take, connection and TLS included: webhooks answer within a second,
/// so 10 s covers a slow handshake or a busy receiver without holding a reboot for long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait before the first retry, doubled for each one after: time for a rate limit to lift or
/// a receiver to restart, short enough that all attempts fit in [`DEADLINE`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The most one notification may add to a drain or reboot, retries included, whatever the
/// receiver does: every attempt timing out plus the back-off fits, with a little to spare.
const DEADLINE: Duration = Duration::from_secs(35);

/// The moments a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Drain,
    Reboot,
    Uncordon,
    /// The post-reboot health gate timed out: the rollout is halted at the node.
    Halted,
}

impl Event {
    /// The title of the message where a service has one (an e-mail's subject, the generic JSON
    /// body's `title`), as upstream passes it.
    pub fn title(self) -> &'static str {
        match self {
            Event::Drain => "Starting drain",
            Event::Reboot => "Rebooting node",
            Event::Uncordon => "Node uncordoned successfully",
            Event::Halted => "Rollout halted",
        }
    }
}

/// Sends a message about a node. Sending never blocks a reboot: implementations bound their time
/// and report failures in logs and metrics, not to the caller.
pub trait Notifier: Send + Sync {
    fn notify(&self, event: Event, message: &str) -> impl Future<Output = ()> + Send;
}

/// Attempts, time-outs and back-off of one notification on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub attempt_timeout: Duration,
    pub first_backoff: Duration,
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: ATTEMPTS,
            attempt_timeout: ATTEMPT_TIMEOUT,
            first_backoff: FIRST_BACKOFF,
            deadline: DEADLINE,
        }
    }
}

/// How [`Notifications`] reaches its targets; the defaults are production's.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Sends every service's requests (all but `generic`, whose URL is the endpoint itself) to
    /// this base instead of the service's host, the path and query kept. For tests, whose
    /// receivers run on loopback; `None` in production.
    pub api_base: Option<Url>,
    /// CA certificates trusted besides the system's bundle (HTTPS and SMTP alike).
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub retry: RetryPolicy,
}

/// Setting up the notifier.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot set up the HTTP client for notifications")]
    Http(#[from] HttpError),
}

/// The outcome of one message on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The target without its secrets.
    pub target: String,
    pub scheme: &'static str,
    pub result: Result<u32, Failure>,
}

/// A message that did not get through: after how many attempts, and why (secrets redacted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub attempts: u32,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.attempts == 1 { "" } else { "s" };
        write!(f, "{} ({} attempt{plural})", self.error, self.attempts)
    }
}

struct Route {
    target: Target,
    shown: String,
    secrets: Vec<String>,
}

/// The notifier of `--notify-url` (or the deprecated `--slack-hook-url`): each message goes to
/// every target at once. Without targets it only logs.
pub struct Notifications {
    routes: Vec<Route>,
    client: reqwest::Client,
    roots: Vec<CertificateDer<'static>>,
    api_base: Option<Url>,
    retry: RetryPolicy,
    failures: NotificationFailures,
}

impl fmt::Debug for Notifications {
    /// Targets as [`Target::shown`] gives them, without secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let targets: Vec<&str> = self.routes.iter().map(|r| r.shown.as_str()).collect();
        f.debug_struct("Notifications")
            .field("targets", &targets)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Notifications {
    /// A notifier for `targets`. Reads the system's CA bundle when a target uses TLS (a missing
    /// bundle is an error then, unless `options` brings roots of its own).
    pub fn new(
        targets: Vec<Target>,
        options: Options,
        failures: NotificationFailures,
    ) -> Result<Notifications, NotifyError> {
        let api_base = options.api_base.as_ref();
        let needs_tls = targets
            .iter()
            .any(|t| t.as_service().uses_tls(base_for(t, api_base)));
        let mut roots = Vec::new();
        if needs_tls {
            match http::system_roots() {
                Ok(system) => roots.extend(system),
                Err(e) if options.extra_roots.is_empty() => return Err(e.into()),
                Err(e) => debug!(error = %e, "no system CA bundle; trusting the given roots only"),
            }
        }
        roots.extend(options.extra_roots.iter().cloned());
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(roots.iter().cloned());
        let client = http::client(store)?;
        let routes = targets
            .into_iter()
            .map(|target| {
                failures.register(target.scheme());
                Route {
                    shown: target.shown(),
                    secrets: target.secrets(),
                    target,
                }
            })
            .collect();
        Ok(Notifications {
            routes,
            client,
            roots,
            api_base: options.api_base,
            retry: options.retry,
            failures,
        })
    }

    /// The targets, as logs show them.
    pub fn targets(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.shown.as_str()).collect()
    }

    /// Sends `message` to every target at once and reports each outcome. Failures are logged and
    /// counted here.
    pub async fn send(&self, title: &str, message: &str) -> Vec<Delivery> {
        let sends = self.routes.iter().map(|route| async move {
            let tried = AtomicU32::new(0);
            let delivery = self.deliver(route, title, message, &tried);
            let result = match tokio::time::timeout(self.retry.deadline, delivery).await {
                Ok(result) => result,
                Err(_) => Err((
                    tried.load(Ordering::Relaxed),
                    SendError::Deadline(self.retry.deadline),
                )),
            };
            let result = result.map_err(|(attempts, error)| Failure {
                attempts,
                error: target::scrub(&crate::error_chain(&error), &route.secrets),
            });
            match &result {
                Ok(attempts) => {
                    debug!(url = %route.shown, scheme = route.target.scheme(), attempts, "notification sent")
                }
                Err(failure) => {
                    self.failures.count(route.target.scheme());
                    warn!(
                        url = %route.shown,
                        scheme = route.target.scheme(),
                        attempts = failure.attempts,
                        error = %failure.error,
                        "notification failed"
                    );
                }
            }
            Delivery {
                target: route.shown.clone(),
                scheme: route.target.scheme(),
                result,
            }
        });
        futures_util::future::join_all(sends).await
    }

    /// One message to one target, as its service delivers it.
    async fn deliver(
        &self,
        route: &Route,
        title: &str,
        message: &str,
        tried: &AtomicU32,
    ) -> Result<u32, (u32, SendError)> {
        let link = Link {
            client: &self.client,
            api_base: base_for(&route.target, self.api_base.as_ref()),
            roots: &self.roots,
            retry: self.retry,
            tried,
        };
        route.target.as_service().deliver(&link, title, message).await
    }
}

impl Notifier for Notifications {
    async fn notify(&self, event: Event, message: &str) {
        if self.routes.is_empty() {
            info!(event = ?event, message, "notification (no --notify-url configured)");
            return;
        }
        let deliveries = self.send(event.title(), message).await;
        let sent = deliveries.iter().filter(|d| d.result.is_ok()).count();
        info!(event = ?event, message, sent, failed = deliveries.len() - sent, "notification");
    }
}

/// Where `target`'s requests go instead of its own host: `api_base`, unless the service's URL is
/// the endpoint itself.
fn base_for<'a>(target: &Target, api_base: Option<&'a Url>) -> Option<&'a Url> {
    api_base.filter(|_| target.as_service().follows_api_base())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_fits_the_deadline() {
        let p = RetryPolicy::default();
        let backoff: Duration = (0..p.attempts - 1).map(|i| p.first_backoff * 2u32.pow(i)).sum();
        assert!(backoff + p.attempt_timeout * p.attempts < p.deadline, "{p:?}");
    }

    #[tokio::test]
    async fn no_targets_only_logs_and_debug_shows_no_secrets() {
        let target = Target::parse("discord://SECRETTOKEN@1234").expect("parses");
        let n = Notifications::new(vec![target], Options::default(), NotificationFailures::default())
            .expect("a notifier");
        assert!(!format!("{n:?}").contains("SECRET"));
        assert_eq!(n.targets(), ["discord://<redacted>@1234"]);
        let none = Notifications::new(Vec::new(), Options::default(), NotificationFailures::default())
            .expect("a notifier");
        none.notify(Event::Drain, "Draining node n1").await;
    }
}
