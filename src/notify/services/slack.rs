//! Slack: an incoming webhook, or the Web API's `chat.postMessage` with a bot or user token.
//! `slack://hook:T…-B…-X…@webhook`, `slack://xoxb:…@C0123456`, the legacy
//! `slack://[botname@]T…/B…/X…`, and the deprecated `--slack-hook-url`.

use std::fmt;

use serde_json::{Map, Value, json};
use url::Url;

use crate::notify::request::{Expect, HttpRequest, set, set_icon, url, with_title};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, host_port, non_empty, parse_url, secret_segments};

pub(crate) const SCHEMES: &[&str] = &["slack"];

/// Slack's Web API method that posts a message as a bot or user.
const SLACK_POST_MESSAGE: &str = "https://slack.com/api/chat.postMessage";

/// A Slack target.
#[derive(Clone, PartialEq, Eq)]
pub struct Slack {
    pub(crate) dest: SlackDest,
    pub(crate) username: Option<String>,
    pub(crate) channel: Option<String>,
    pub(crate) icon: Option<String>,
    pub(crate) color: Option<String>,
    pub(crate) title: Option<String>,
    pub(crate) thread_ts: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SlackDest {
    /// The webhook URL (its path is the secret).
    Webhook(Url),
    /// `xoxb-…` / `xoxp-…`, sent as a bearer token.
    Api { token: String },
}


debug_as_shown!(Slack);

impl fmt::Debug for SlackDest {
    /// The host only: the path or token is the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlackDest::Webhook(url) => write!(f, "Webhook({}/{REDACTED})", host_port(url)),
            SlackDest::Api { .. } => write!(f, "Api({REDACTED})"),
        }
    }
}

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    parse_slack(rest).map(Target::new)
}

/// The deprecated `--slack-hook-url`: a Slack-style JSON payload posted to the URL as given.
pub(crate) fn hook(url: Url, username: &str, channel: Option<&str>) -> Target {
    Target::new(Slack {
        dest: SlackDest::Webhook(url),
        username: non_empty(username),
        channel: channel.and_then(non_empty),
        icon: None,
        color: None,
        title: None,
        thread_ts: None,
    })
}

impl Slack {
    /// `--slack-username` and `--slack-channel` where the URL sets neither.
    pub(crate) fn with_defaults(&self, username: &str, channel: Option<&str>) -> Slack {
        let mut s = self.clone();
        if s.username.is_none() {
            s.username = non_empty(username);
        }
        if s.channel.is_none() {
            s.channel = channel.and_then(non_empty);
        }
        s
    }
}

impl Service for Slack {
    fn scheme(&self) -> &'static str {
        "slack"
    }

    fn shown(&self) -> String {
        match &self.dest {
            SlackDest::Webhook(url) => match url.host_str() {
                Some(host) if url.host_str() != Some("hooks.slack.com") => {
                    format!("slack webhook {}://{host}/{REDACTED}", url.scheme())
                }
                _ => format!("slack://hook:{REDACTED}@webhook"),
            },
            SlackDest::Api { token } => {
                let kind = token.get(..4).unwrap_or("xoxb");
                let channel = self.channel.as_deref().unwrap_or("");
                format!("slack://{kind}:{REDACTED}@{channel}")
            }
        }
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        match &self.dest {
            SlackDest::Webhook(url) => {
                secrets.push(url.path().to_owned());
                secrets.extend(secret_segments(url));
                secrets.extend(url.query().map(str::to_owned));
            }
            SlackDest::Api { token } => {
                secrets.push(token.clone());
                secrets.extend(token.split('-').skip(1).map(str::to_owned));
            }
        }
        secrets
    }

    /// Slack's message payload, the same for webhooks and `chat.postMessage`: `text` (the title
    /// in bold above the message), or with `color=` the message in a coloured attachment.
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let s = self;
    let mut body = Map::new();
    match &s.color {
        Some(color) => {
            set(&mut body, "text", s.title.as_deref());
            body.insert(
                "attachments".to_owned(),
                json!([{ "color": color, "text": message, "fallback": message }]),
            );
        }
        None => {
            body.insert(
                "text".to_owned(),
                Value::String(with_title(s.title.as_deref(), message, "*", "*")),
            );
        }
    }
    set(&mut body, "username", s.username.as_deref());
    set(&mut body, "channel", s.channel.as_deref());
    set_icon(&mut body, s.icon.as_deref());
    set(&mut body, "thread_ts", s.thread_ts.as_deref());
    let body = Value::Object(body);
    let request = match &s.dest {
        SlackDest::Webhook(hook) => Some(HttpRequest::post_json(hook.clone(), &body)),
        SlackDest::Api { token } => url(SLACK_POST_MESSAGE).map(|endpoint| {
            let mut request = HttpRequest::post_json(endpoint, &body);
            request.headers = vec![
                (
                    "Content-Type".to_owned(),
                    "application/json; charset=utf-8".to_owned(),
                ),
                ("Authorization".to_owned(), format!("Bearer {token}")),
            ];
            request.expect = Expect::SlackApiOk;
            request
        }),
    };
    request.into_iter().collect()
    }
}

/// A Slack token as shoutrrr reads it: an optional type (`hook`, `xoxb`, `xoxp`, … followed by
/// `:` or `-`), then three parts joined by one kind of separator (`-`, `/` or `,`): two of
/// upper-case letters and digits (Slack's workspace and channel ids), then one of letters and
/// digits. Unlike shoutrrr we do not insist on Slack's current lengths (9+ and 24+).
fn slack_token(token: &str) -> Option<(String, [&str; 3])> {
    let (kind, rest) = if let Some(rest) = token
        .strip_prefix("hook")
        .and_then(|r| r.strip_prefix([':', '-']))
    {
        ("hook".to_owned(), rest)
    } else if token.starts_with("xox")
        && token.len() > 5
        && token.is_char_boundary(4)
        && matches!(token.as_bytes().get(4), Some(b':' | b'-'))
    {
        (token[..4].to_owned(), &token[5..])
    } else {
        ("hook".to_owned(), token.strip_prefix(':').unwrap_or(token))
    };
    let separator = rest.chars().find(|c| matches!(c, '-' | '/' | ','))?;
    let mut parts = rest.split(separator);
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
    let id = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let secret = !c.is_empty() && c.chars().all(|c| c.is_ascii_alphanumeric());
    (parts.next().is_none() && id(a) && id(b) && secret).then_some((kind, [a, b, c]))
}

/// `slack://hook:T…-B…-X…@webhook`, `slack://xoxb:…@C0123456`, and the legacy
/// `slack://[botname@]T…/B…/X…`.
fn parse_slack(rest: &str) -> Result<Slack, TargetError> {
    const S: &str = "slack";
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let main = main.split('#').next().unwrap_or(main).trim_end_matches('/');
    let (token, channel, botname) = match main.rsplit_once('@') {
        Some((token, channel)) if !channel.contains('/') => (decode(token), decode(channel), None),
        _ => {
            let (botname, token) = match main.split_once('@') {
                Some((b, t)) => (non_empty(&decode(b)), t),
                None => (None, main),
            };
            (decode(token), "webhook".to_owned(), botname)
        }
    };
    let (kind, [a, b, c]) = slack_token(&token).ok_or_else(|| {
        form(
            S,
            "the token is not a Slack token (expected hook:T…-B…-X… for a webhook or xoxb:… for the API)",
        )
    })?;
    let dest = if kind == "hook" {
        let url = format!("https://hooks.slack.com/services/{a}/{b}/{c}");
        SlackDest::Webhook(parse_url(S, &url)?)
    } else {
        if channel.is_empty() || channel == "webhook" {
            return Err(form(S, "an API token needs a channel: slack://xoxb:…@C0123456"));
        }
        SlackDest::Api {
            token: format!("{kind}-{a}-{b}-{c}"),
        }
    };
    let mut p = Params::of_query(S, query.unwrap_or(""))?;
    let username = p.take(&["botname", "username"]).or(botname);
    let icon = p.take(&["icon", "icon_emoji", "icon_url"]);
    let color = p.take(&["color"]);
    let title = p.take(&["title"]);
    let thread_ts = p.take(&["thread_ts"]);
    p.finish()?;
    Ok(Slack {
        dest,
        username,
        channel: (channel != "webhook" && !channel.is_empty()).then_some(channel),
        icon,
        color,
        title,
        thread_ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{one, parse, parsed};

    #[test]
    fn slack_forms() {
        let cases = [
            (
                "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            (
                "slack://hook:T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX@webhook",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            (
                "slack://T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            (
                "slack://bot@T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX?color=good",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
        ];
        for (url, hook) in cases {
            let s: Slack = parsed(url);
            assert_eq!(
                s.dest,
                SlackDest::Webhook(Url::parse(hook).expect("url")),
                "{url}"
            );
            assert_eq!(s.channel, None, "{url}");
        }
        let s: Slack = parsed("slack://bot@T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX?color=good");
        assert_eq!(
            (s.username.as_deref(), s.color.as_deref()),
            (Some("bot"), Some("good"))
        );

        let s: Slack = parsed(
            "slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L?color=good&title=Great+News&icon=man-scientist&botname=Shoutrrrbot",
        );
        assert_eq!(
            s.dest,
            SlackDest::Api {
                token: "xoxb-123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N".to_owned()
            }
        );
        assert_eq!(s.channel.as_deref(), Some("C001CH4NN3L"));
        assert_eq!(s.title.as_deref(), Some("Great News"));
        assert_eq!(s.icon.as_deref(), Some("man-scientist"));
        assert_eq!(s.username.as_deref(), Some("Shoutrrrbot"));
    }

    #[test]
    fn upstream_notifier_cases() {
        // Upstream kured's own table: old lowercase tokens are not valid any more.
        assert!(Target::parse("slack://xxxx/yyyy/zzzz").is_err());
        parse(
            "slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L?color=good&title=Great+News&icon=man-scientist&botname=Shoutrrrbot",
        );
        parse(
            "slack://hook:WNA3PBYV6-F20DUQND3RQ-Webc4MAvoacrpPakR8phF0zi@webhook?color=good&title=Great+News&icon=man-scientist&botname=Shoutrrrbot",
        );
    }

    #[test]
    fn slack_api_requests_carry_the_token_and_check_ok() {
        let r = one("slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L");
        assert_eq!(
            r.header_value("Authorization"),
            Some("Bearer xoxb-123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N")
        );
        assert_eq!(r.expect, Expect::SlackApiOk);
        let hook = one("slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook");
        assert_eq!(
            (hook.expect, hook.header_value("Authorization")),
            (Expect::Success, None)
        );
    }

    #[test]
    fn titles_and_colours() {
        let r =
            one("slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook?color=danger&title=kured");
        assert_eq!(
            r.json_body(),
            json!({ "text": "kured", "attachments": [{ "color": "danger", "text": "Draining node n1", "fallback": "Draining node n1" }] })
        );
        let r = one(
            "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook?title=kured&thread_ts=1.2",
        );
        assert_eq!(
            r.json_body(),
            json!({ "text": "*kured*\nDraining node n1", "thread_ts": "1.2" })
        );
    }
}
