//! Discord: a channel webhook, `discord://token@webhookid`.


use serde_json::{Map, Value};

use crate::notify::request::{HttpRequest, set, url, with_title};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, is_token, parameter, parse_url};

pub(crate) const SCHEMES: &[&str] = &["discord"];

/// Discord's webhook endpoint; the id and token follow.
const DISCORD_WEBHOOKS: &str = "https://discord.com/api/webhooks";

/// A Discord webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Discord {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) username: Option<String>,
    pub(crate) avatar: Option<String>,
    pub(crate) title: Option<String>,
    pub(crate) thread_id: Option<String>,
    /// The message is a JSON payload of its own, sent as it is.
    pub(crate) raw_json: bool,
}

debug_as_shown!(Discord);

/// `discord://token@webhookid`.
pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    const S: &str = "discord";
    let url = parse_url(S, value)?;
    let token = decode(url.username());
    let id = url.host_str().map(decode).unwrap_or_default();
    if !is_token(&token) {
        return Err(form(S, "expected discord://token@webhookid"));
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(form(S, "the webhook id (after the @) must be a number"));
    }
    let mut p = Params::of(S, &url);
    let username = p.take(&["username"]);
    let avatar = p.take(&["avatar", "avatarurl"]);
    let title = p.take(&["title"]);
    let thread_id = p.take(&["thread_id"]);
    let raw_json = p.bool("json", &[], false)?;
    // Presentation settings of shoutrrr's embeds: accepted, the message is sent as content.
    p.ignore(&[
        "color",
        "colordebug",
        "colorerror",
        "colorinfo",
        "colorwarn",
        "splitlines",
    ]);
    p.finish()?;
    if let Some(t) = &thread_id
        && !t.chars().all(|c| c.is_ascii_digit())
    {
        return Err(parameter(S, "thread_id", "expected a number"));
    }
    Ok(Target::new(Discord {
        id,
        token,
        username,
        avatar,
        title,
        thread_id,
        raw_json,
    }))
}

impl Service for Discord {
    fn scheme(&self) -> &'static str {
        "discord"
    }

    fn shown(&self) -> String {
        format!("discord://{REDACTED}@{}", self.id)
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.token.clone()]
    }

    /// Discord's Execute Webhook: `content`, optional `username` and `avatar_url`; `thread_id`
    /// in the query.
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let Some(mut hook) = url(&format!("{DISCORD_WEBHOOKS}/{}/{}", self.id, self.token)) else {
            return Vec::new();
        };
        if let Some(thread) = &self.thread_id {
            hook.query_pairs_mut().append_pair("thread_id", thread);
        }
        if self.raw_json {
            let mut request = HttpRequest::post_json(hook, &Value::Null);
            request.body = message.as_bytes().to_vec();
            return vec![request];
        }
        let mut body = Map::new();
        body.insert(
            "content".to_owned(),
            Value::String(with_title(self.title.as_deref(), message, "**", "**")),
        );
        set(&mut body, "username", self.username.as_deref());
        set(&mut body, "avatar_url", self.avatar.as_deref());
        vec![HttpRequest::post_json(hook, &Value::Object(body))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::parsed;

    #[test]
    fn discord_form() {
        let d: Discord = parsed(
            "discord://W3dE2OZz4C13_4z-uHfD@693853386302554172?username=kured&thread_id=1234567890123456789",
        );
        assert_eq!(
            (d.id.as_str(), d.token.as_str()),
            ("693853386302554172", "W3dE2OZz4C13_4z-uHfD")
        );
        assert_eq!(d.thread_id.as_deref(), Some("1234567890123456789"));
    }
}
