//! Mattermost: an incoming webhook,
//! `mattermost://[username@]host[:port]/token[/channel][?icon=…&disabletls=yes&title=…]`.


use serde_json::{Map, Value};
use url::Url;

use crate::notify::request::{HttpRequest, set, set_icon, with_title};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{
    Params, decode, form, host_port, is_token, non_empty, parse_url, port_suffix, secret_segments, segments,
    web_scheme,
};

pub(crate) const SCHEMES: &[&str] = &["mattermost"];

/// A Mattermost webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Mattermost {
    pub(crate) url: Url,
    pub(crate) username: Option<String>,
    pub(crate) channel: Option<String>,
    pub(crate) icon: Option<String>,
    pub(crate) title: Option<String>,
}

debug_as_shown!(Mattermost);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    const S: &str = "mattermost";
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("");
    let parts = segments(&url);
    if host.is_empty() || parts.is_empty() || parts.len() > 2 || !is_token(&parts[0]) {
        return Err(form(S, "expected mattermost://[username@]host/token[/channel]"));
    }
    let mut p = Params::of(S, &url);
    let disable_tls = p.bool("disabletls", &[], false)?;
    let icon = p.take(&["icon"]);
    let title = p.take(&["title"]);
    let username = p.take(&["username"]).or_else(|| non_empty(&decode(url.username())));
    let channel = p.take(&["channel"]).or_else(|| parts.get(1).cloned());
    p.finish()?;
    let hook = parse_url(
        S,
        &format!(
            "{}://{host}{}/hooks/{}",
            web_scheme(disable_tls),
            port_suffix(&url),
            parts[0]
        ),
    )?;
    Ok(Target::new(Mattermost {
        url: hook,
        username,
        channel,
        icon,
        title,
    }))
}

impl Service for Mattermost {
    fn scheme(&self) -> &'static str {
        "mattermost"
    }

    fn shown(&self) -> String {
        format!("mattermost://{}/{REDACTED}", host_port(&self.url))
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.url.path().to_owned()];
        secrets.extend(secret_segments(&self.url));
        secrets
    }

    /// The incoming webhook: `text`, and the overrides it allows (`username`, `channel`,
    /// `icon_url` or `icon_emoji`).
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let mut body = Map::new();
        body.insert(
            "text".to_owned(),
            Value::String(with_title(self.title.as_deref(), message, "**", "**")),
        );
        set(&mut body, "username", self.username.as_deref());
        set(&mut body, "channel", self.channel.as_deref());
        set_icon(&mut body, self.icon.as_deref());
        vec![HttpRequest::post_json(self.url.clone(), &Value::Object(body))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::parsed;

    #[test]
    fn mattermost_forms() {
        let m: Mattermost = parsed("mattermost://bot@mm.example.com/bywsw8zt5jgpte3nm65qjiru6h/alerts?icon=ghost");
        assert_eq!(
            m.url.as_str(),
            "https://mm.example.com/hooks/bywsw8zt5jgpte3nm65qjiru6h"
        );
        assert_eq!(
            (m.username.as_deref(), m.channel.as_deref()),
            (Some("bot"), Some("alerts"))
        );
        let m: Mattermost = parsed("mattermost://mm.example.com:8065/tok123?disabletls=yes");
        assert_eq!(m.url.as_str(), "http://mm.example.com:8065/hooks/tok123");
    }
}
