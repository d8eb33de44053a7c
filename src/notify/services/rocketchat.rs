//! Rocket.Chat: an incoming webhook,
//! `rocketchat://[username@]host[:port]/tokenA/tokenB[/channel|/@user]`.
//!
//! Rocket.Chat shows a webhook as `https://host/hooks/tokenA/tokenB`; the message is POSTed there
//! as JSON `text`, with `username` and `channel` overriding the integration's defaults where the
//! URL names them. A channel is sent as `#channel`, a person as `@user`.


use serde_json::{Map, Value};
use url::Url;

use crate::notify::request::{HttpRequest, set};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, host_port, is_token, non_empty, origin, parse_url, segments};

pub(crate) const SCHEMES: &[&str] = &["rocketchat"];

const FORM: &str = "expected rocketchat://[username@]host[:port]/tokenA/tokenB[/channel|/@user]";

/// A Rocket.Chat incoming webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct RocketChat {
    /// `https://host[:port]/hooks/tokenA/tokenB`.
    pub(crate) hook: Url,
    pub(crate) username: Option<String>,
    /// `#channel` or `@user`.
    pub(crate) channel: Option<String>,
}

debug_as_shown!(RocketChat);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    const S: &str = "rocketchat";
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("");
    let parts = segments(&url);
    if host.is_empty() || !(2..=3).contains(&parts.len()) {
        return Err(form(S, FORM));
    }
    if !is_token(&parts[0]) || !is_token(&parts[1]) {
        return Err(form(S, "the webhook tokens have characters Rocket.Chat's do not"));
    }
    // `…/tokenB/#channel` arrives as a fragment; a bare name is a channel.
    let channel = match (url.fragment().filter(|f| !f.is_empty()), parts.get(2)) {
        (Some(fragment), _) => Some(format!("#{}", decode(fragment))),
        (None, Some(to)) if to.starts_with('@') || to.starts_with('#') => Some(to.clone()),
        (None, Some(to)) => Some(format!("#{to}")),
        (None, None) => None,
    };
    Params::of(S, &url).finish()?;
    let hook = parse_url(
        S,
        &format!("{}/hooks/{}/{}", origin(S, &url, "https")?, parts[0], parts[1]),
    )?;
    Ok(Target::new(RocketChat {
        hook,
        username: non_empty(&decode(url.username())),
        channel,
    }))
}

impl Service for RocketChat {
    fn scheme(&self) -> &'static str {
        "rocketchat"
    }

    fn shown(&self) -> String {
        let user = self
            .username
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let channel = self
            .channel
            .as_deref()
            .map(|c| format!("/{c}"))
            .unwrap_or_default();
        format!(
            "rocketchat://{user}{}/{REDACTED}{channel}",
            host_port(&self.hook)
        )
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.hook.path().to_owned()];
        secrets.extend(
            self.hook
                .path_segments()
                .into_iter()
                .flatten()
                .filter(|s| *s != "hooks")
                .map(str::to_owned),
        );
        secrets
    }

    /// The webhook's message: `text`, and `username` and `channel` where the URL sets them.
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let mut body = Map::new();
        body.insert("text".to_owned(), Value::from(message));
        set(&mut body, "username", self.username.as_deref());
        set(&mut body, "channel", self.channel.as_deref());
        vec![HttpRequest::post_json(self.hook.clone(), &Value::Object(body))]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, one, parsed};

    const TOKENS: &str = "8eGdRzc9r4YYNyvge/2XYQcX9NBwJBKfQnphpebPcnXZcPEi32Nt4NKJfrnbhsbRfX";

    #[test]
    fn rocketchat_forms() {
        let cases = [
            (format!("rocketchat://chat.example.com/{TOKENS}"), None, None, "https://chat.example.com/hooks/"),
            (
                format!("rocketchat://kured@chat.example.com:3000/{TOKENS}/reboots"),
                Some("kured"),
                Some("#reboots"),
                "https://chat.example.com:3000/hooks/",
            ),
            (
                format!("rocketchat://chat.example.com/{TOKENS}/#reboots"),
                None,
                Some("#reboots"),
                "https://chat.example.com/hooks/",
            ),
            (
                format!("rocketchat://kured@chat.example.com/{TOKENS}/@jane"),
                Some("kured"),
                Some("@jane"),
                "https://chat.example.com/hooks/",
            ),
        ];
        for (url, username, channel, hook) in cases {
            let r: RocketChat = parsed(&url);
            assert_eq!(r.hook.as_str(), format!("{hook}{TOKENS}"), "{url}");
            assert_eq!(r.username.as_deref(), username, "{url}");
            assert_eq!(r.channel.as_deref(), channel, "{url}");
        }
    }

    #[test]
    fn rocketchat_bad_urls_name_the_part() {
        assert!(err("rocketchat://chat.example.com/onlyone").contains("tokenA/tokenB"));
        assert!(err(&format!("rocketchat://chat.example.com/{TOKENS}/a/b")).contains("tokenA/tokenB"));
        assert!(err("rocketchat:///a/b").contains("tokenA/tokenB"));
        assert!(err("rocketchat://chat.example.com/a%20b/c").contains("tokens"));
        assert!(
            err(&format!("rocketchat://chat.example.com/{TOKENS}?channel=x"))
                .contains("unknown parameter \"channel\"")
        );
        let e = err("rocketchat://chat.example.com/S3CRETONLY");
        assert!(!e.contains("S3CRET"), "{e}");
    }

    #[test]
    fn rocketchat_hides_the_tokens() {
        let url = "rocketchat://kured@chat.example.com/SECRETA/SECRETB/reboots";
        assert_redacted(url, "SECRET");
        assert_eq!(
            parsed::<RocketChat>(url).shown(),
            "rocketchat://kured@chat.example.com/<redacted>/#reboots"
        );
    }

    #[test]
    fn rocketchat_posts_the_webhook_message() {
        let r = one(&format!("rocketchat://kured@chat.example.com/{TOKENS}/@jane"));
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(
            r.url.as_str(),
            format!("https://chat.example.com/hooks/{TOKENS}")
        );
        assert_eq!(r.header_value("Content-Type"), Some("application/json"));
        assert_eq!(
            r.json_body(),
            json!({ "text": "Draining node n1", "username": "kured", "channel": "@jane" })
        );
        let r = one(&format!("rocketchat://chat.example.com/{TOKENS}"));
        assert_eq!(r.json_body(), json!({ "text": "Draining node n1" }));
    }
}
