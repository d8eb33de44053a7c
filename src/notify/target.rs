//! Notification URLs in shoutrrr's syntax, parsed once at start-up into a [`Target`]: one
//! configured service, whatever it is.
//!
//! A [`Target`] holds one `Service` — the parsed URL of one of the services in
//! `notify::services` — behind a trait object, so the rest of the notifier never names a
//! service. Parsing never echoes a URL's secrets: errors name the scheme and the offending part or
//! parameter, not its value, and a target's `Debug`, `Display` and [`Target::shown`] forms are
//! redacted.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use url::Url;

use super::deliver::{Attempted, Link, SendError};
use super::request::HttpRequest;
use super::services;

/// What a URL shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The schemes `--notify-url` accepts, in the registry's order.
pub fn schemes() -> Vec<&'static str> {
    services::REGISTRY
        .iter()
        .flat_map(|s| s.schemes.iter().copied())
        .collect()
}

/// The scheme each service is counted under in `kured_notifications_failed_total` (the first of
/// its schemes), in the registry's order.
pub fn metric_schemes() -> Vec<&'static str> {
    services::REGISTRY
        .iter()
        .filter_map(|s| s.schemes.first().copied())
        .collect()
}

/// A notification URL that cannot be used. Messages never include a secret from the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("not a URL of the form scheme://…")]
    NoScheme,
    #[error("unknown notification scheme {scheme:?} (supported: {})", schemes().join(", "))]
    UnknownScheme { scheme: String },
    #[error("{scheme}: not a valid URL ({reason})")]
    Syntax { scheme: &'static str, reason: String },
    #[error("{scheme}: {what}")]
    Form { scheme: &'static str, what: String },
    #[error("{scheme}: unknown parameter {key:?}")]
    UnknownParameter { scheme: &'static str, key: String },
    #[error("{scheme}: parameter {key:?}: {expected}")]
    Parameter {
        scheme: &'static str,
        key: String,
        expected: &'static str,
    },
}

/// One service's parsed URL: everything the notifier needs to know about it. Each service
/// implements it in its own file under `services/`.
pub(crate) trait Service: Any + Send + Sync {
    /// The scheme metrics and logs name the service by (`teams` for `teams+https://` too).
    fn scheme(&self) -> &'static str;

    /// The target without its secrets, for logs and reports.
    fn shown(&self) -> String;

    /// Strings that must never appear in a log line or an error: tokens, passwords, the secret
    /// parts of webhook URLs. Strings shorter than [`MIN_SECRET_LEN`] are dropped by the caller.
    fn secrets(&self) -> Vec<String>;

    /// Whether the service's requests go to [`super::Options::api_base`] when one is given
    /// (tests' loopback receivers). Only a service whose URL is the endpoint itself says no.
    fn follows_api_base(&self) -> bool {
        true
    }

    /// Whether sending needs trusted CA roots. `api_base` is the base the requests go to, if
    /// any; by default the service's own host is reached over HTTPS.
    fn uses_tls(&self, api_base: Option<&Url>) -> bool {
        api_base.is_none_or(|b| b.scheme() == "https")
    }

    /// The HTTP requests one message becomes, sent in order, each retried on its own. Pure, so
    /// each service's mapping is table-tested without a network. Services that override
    /// [`Service::deliver`] may leave it empty.
    fn requests(&self, _title: &str, _message: &str) -> Vec<HttpRequest> {
        Vec::new()
    }

    /// Sends one message. By default, the [`Service::requests`]; a service with a conversation
    /// (log in, then send) or that is not HTTP (SMTP) overrides it.
    fn deliver<'a>(&'a self, link: &'a Link<'a>, title: &'a str, message: &'a str) -> Attempted<'a> {
        Box::pin(link.send_all(self.requests(title, message)))
    }
}

/// Where and how one `--notify-url` delivers.
#[derive(Clone)]
pub struct Target(Arc<dyn Service>);

impl Target {
    pub(crate) fn new(service: impl Service) -> Target {
        Target(Arc::new(service))
    }

    /// Parses one `--notify-url` (surrounding quotes already stripped).
    pub fn parse(value: &str) -> Result<Target, TargetError> {
        let (scheme, _) = value.split_once("://").ok_or(TargetError::NoScheme)?;
        let lower = scheme.to_ascii_lowercase();
        let service = services::REGISTRY
            .iter()
            .find(|s| s.schemes.contains(&lower.as_str()))
            .ok_or_else(|| TargetError::UnknownScheme {
                scheme: shown_scheme(scheme),
            })?;
        (service.parse)(&lower, value)
    }

    /// A `--notify-url` that cannot be used (`reason` says why), kept so that the agent runs on
    /// without it: each message it would have carried fails with `reason` and is counted under
    /// its scheme — the service's if the scheme is known, else `unknown`. `shown` is the URL as
    /// logs may show it.
    pub fn unusable(value: &str, shown: String, reason: String) -> Target {
        let scheme = value
            .split_once("://")
            .and_then(|(scheme, _)| {
                let lower = scheme.to_ascii_lowercase();
                services::REGISTRY
                    .iter()
                    .find(|s| s.schemes.contains(&lower.as_str()))
                    .map(|s| s.schemes[0])
            })
            .unwrap_or(UNKNOWN_SCHEME);
        Target::new(Unusable {
            scheme,
            shown,
            reason,
        })
    }

    /// Whether this is a URL that cannot be used ([`Target::unusable`]).
    #[cfg(test)]
    pub(crate) fn is_unusable(&self) -> bool {
        self.service::<Unusable>().is_some()
    }

    /// The deprecated `--slack-hook-url`: a Slack-style JSON payload posted to the URL as given
    /// (Slack's own, or any Slack-compatible webhook), with `--slack-username` and
    /// `--slack-channel`.
    pub fn slack_hook(url: Url, username: &str, channel: Option<&str>) -> Target {
        services::slack::hook(url, username, channel)
    }

    /// Applies `--slack-username` and `--slack-channel` where a Slack URL sets neither.
    pub fn with_slack_defaults(self, username: &str, channel: Option<&str>) -> Target {
        match self.service::<services::slack::Slack>() {
            Some(slack) => Target::new(slack.with_defaults(username, channel)),
            None => self,
        }
    }

    /// The scheme as metrics and logs name it.
    pub fn scheme(&self) -> &'static str {
        self.0.scheme()
    }

    /// The target without its secrets, for logs and reports.
    pub fn shown(&self) -> String {
        self.0.shown()
    }

    /// The secrets of [`Service::secrets`], long ones first (so a secret that contains another
    /// is scrubbed whole), without the short strings that would blank out ordinary words.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets = self.0.secrets();
        secrets.retain(|s| s.len() >= MIN_SECRET_LEN);
        secrets.sort();
        secrets.dedup();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
    }

    pub(crate) fn as_service(&self) -> &dyn Service {
        self.0.as_ref()
    }

    /// The service of this target if it is an `S`.
    pub(crate) fn service<S: Service>(&self) -> Option<&S> {
        let any: &dyn Any = self.0.as_ref();
        any.downcast_ref()
    }
}

/// The metrics label of an unusable URL whose scheme is no service's.
const UNKNOWN_SCHEME: &str = "unknown";

/// A URL that cannot be used: every message to it fails with the reason.
struct Unusable {
    scheme: &'static str,
    shown: String,
    reason: String,
}

impl Service for Unusable {
    fn scheme(&self) -> &'static str {
        self.scheme
    }

    fn shown(&self) -> String {
        self.shown.clone()
    }

    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }

    fn uses_tls(&self, _api_base: Option<&Url>) -> bool {
        false
    }

    fn deliver<'a>(&'a self, _link: &'a Link<'a>, _title: &'a str, _message: &'a str) -> Attempted<'a> {
        Box::pin(std::future::ready(Err((
            0,
            SendError::Unusable(self.reason.clone()),
        ))))
    }
}

/// Secrets shorter than this are not scrubbed from messages: a path of "/" or a one-letter
/// user name would blank out ordinary text, and real tokens are far longer.
const MIN_SECRET_LEN: usize = 4;

/// `text` with every secret of a target replaced by [`REDACTED`].
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Target").field(&self.shown()).finish()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// A scheme as an error may show it: short, and only scheme characters.
fn shown_scheme(scheme: &str) -> String {
    if !scheme.is_empty()
        && scheme.len() <= 32
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        scheme.to_owned()
    } else {
        REDACTED.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use crate::notify::services::testing::err;

    #[test]
    fn unknown_schemes_and_parameters_are_named() {
        assert!(
            err("carrierpigeon://coop:token@loft").contains("unknown notification scheme \"carrierpigeon\"")
        );
        assert!(err("no scheme here").contains("scheme://"));
        assert!(
            err("slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook?colour=red")
                .contains("unknown parameter \"colour\"")
        );
        assert!(err("S3CRET:x@y://z").contains("unknown notification scheme \"<redacted>\""));
    }

    #[test]
    fn unusable_urls_are_labelled_by_their_scheme_or_unknown() {
        use super::Target;
        let cases = [
            ("nosuch://shoutrrr:t@user", "unknown"),
            ("no scheme", "unknown"),
            ("GOTIFY://example.com/short", "gotify"),
            ("teams+https://", "teams"),
            ("hangouts://", "googlechat"),
        ];
        for (value, scheme) in cases {
            let t = Target::unusable(value, "shown".to_owned(), "why".to_owned());
            assert_eq!((t.scheme(), t.shown().as_str()), (scheme, "shown"), "{value}");
            assert!(t.is_unusable());
        }
        assert!(!crate::notify::services::testing::parse("discord://t@1").is_unusable());
    }
}
