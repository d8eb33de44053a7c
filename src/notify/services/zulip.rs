//! Zulip: a bot's stream message, `zulip://botmail:botkey@host[:port]/?stream=…&topic=…` (the
//! `@` of the bot's address escaped as `%40`).
//!
//! The message is POSTed to `https://host/api/v1/messages` as a form (`type=stream`, `to`,
//! `content`, and `topic` if the URL names one) with the bot's address and API key as HTTP basic
//! authentication, as Zulip's API documents it.


use url::Url;

use crate::notify::request::HttpRequest;
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, host_port, origin, parameter, parse_url};

pub(crate) const SCHEMES: &[&str] = &["zulip"];

/// The longest topic Zulip takes, in characters (shoutrrr checks it too).
const TOPIC_MAX_CHARS: usize = 60;

const FORM: &str = "expected zulip://botmail:botkey@host/?stream=…&topic=… (with %40 for the @ in botmail)";

/// A Zulip bot and the stream it posts to.
#[derive(Clone, PartialEq, Eq)]
pub struct Zulip {
    /// `https://host[:port]/api/v1/messages`.
    pub(crate) endpoint: Url,
    pub(crate) bot_mail: String,
    pub(crate) bot_key: String,
    pub(crate) stream: String,
    pub(crate) topic: Option<String>,
}

debug_as_shown!(Zulip);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    const S: &str = "zulip";
    let url = parse_url(S, value)?;
    let bot_mail = decode(url.username());
    let bot_key = decode(url.password().unwrap_or(""));
    let host = url.host_str().unwrap_or("");
    if bot_mail.is_empty() || bot_key.is_empty() || host.is_empty() {
        return Err(form(S, FORM));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(form(S, "nothing but the query may follow the host"));
    }
    let mut p = Params::of(S, &url);
    // shoutrrr takes the stream from the URL or from each message's parameters; kured's
    // messages carry none, so without it in the URL Zulip would refuse every message.
    let stream = p.take(&["stream"]).ok_or_else(|| {
        parameter(S, "stream", "required: the stream (channel) name or id to post to")
    })?;
    let topic = p.take(&["topic", "title"]);
    p.finish()?;
    if topic
        .as_deref()
        .is_some_and(|t| t.chars().count() > TOPIC_MAX_CHARS)
    {
        return Err(parameter(S, "topic", "at most 60 characters, as Zulip allows"));
    }
    let endpoint = parse_url(S, &format!("{}/api/v1/messages", origin(S, &url, "https")?))?;
    Ok(Target::new(Zulip {
        endpoint,
        bot_mail,
        bot_key,
        stream,
        topic,
    }))
}

impl Service for Zulip {
    fn scheme(&self) -> &'static str {
        "zulip"
    }

    fn shown(&self) -> String {
        let mail = self.bot_mail.replace('@', "%40");
        format!(
            "zulip://{mail}:{REDACTED}@{}/?stream={}",
            host_port(&self.endpoint),
            self.stream
        )
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.bot_key.clone()]
    }

    /// A stream message: `type=stream`, `to`, `content`, and `topic` if the URL names one.
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let mut fields = vec![
            ("type", "stream"),
            ("to", self.stream.as_str()),
            ("content", message),
        ];
        if let Some(topic) = &self.topic {
            fields.push(("topic", topic));
        }
        let mut request = HttpRequest::post_form(self.endpoint.clone(), &fields);
        request.basic_auth = Some((self.bot_mail.clone(), self.bot_key.clone()));
        vec![request]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, one, parsed};

    const URL: &str = "zulip://kured-bot%40example.zulipchat.com:correcthorsebatterystaple@example.zulipchat.com?stream=ops&topic=Reboots";

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn zulip_forms() {
        let z: Zulip = parsed(URL);
        assert_eq!(z.endpoint.as_str(), "https://example.zulipchat.com/api/v1/messages");
        assert_eq!(
            (z.bot_mail.as_str(), z.bot_key.as_str()),
            ("kured-bot@example.zulipchat.com", "correcthorsebatterystaple")
        );
        assert_eq!((z.stream.as_str(), z.topic.as_deref()), ("ops", Some("Reboots")));
        // `title` is the topic's other name; a port is kept.
        let z: Zulip = parsed("zulip://bot%40zulip.example.com:k3y@zulip.example.com:8443/?stream=42&title=kured");
        assert_eq!(z.endpoint.as_str(), "https://zulip.example.com:8443/api/v1/messages");
        assert_eq!((z.stream.as_str(), z.topic.as_deref()), ("42", Some("kured")));
        let z: Zulip = parsed("zulip://bot%40zulip.example.com:k3y@zulip.example.com?stream=ops");
        assert_eq!(z.topic, None);
    }

    #[test]
    fn zulip_bad_urls_name_the_part() {
        assert!(err("zulip://bot%40x.com@x.com?stream=ops").contains("botmail:botkey"));
        assert!(err("zulip://:k3y@x.com?stream=ops").contains("botmail:botkey"));
        assert!(err("zulip://bot%40x.com:k3y@x.com").contains("parameter \"stream\": required"));
        assert!(
            err(&format!("zulip://b%40x.com:k@x.com?stream=s&topic={}", "t".repeat(61)))
                .contains("parameter \"topic\"")
        );
        assert!(err("zulip://b%40x.com:k@x.com?stream=s&type=private").contains("unknown parameter \"type\""));
        assert!(err("zulip://b%40x.com:k@x.com/api?stream=s").contains("zulip:"));
        let e = err("zulip://b%40x.com:S3CRET@x.com");
        assert!(!e.contains("S3CRET"), "{e}");
    }

    #[test]
    fn zulip_hides_the_bot_key() {
        let url = "zulip://bot%40example.com:SECRETKEY@chat.example.com?stream=ops";
        assert_redacted(url, "SECRET");
        assert_eq!(
            parsed::<Zulip>(url).shown(),
            "zulip://bot%40example.com:<redacted>@chat.example.com/?stream=ops"
        );
    }

    #[test]
    fn zulip_posts_a_stream_message_as_the_bot() {
        let r = one(URL);
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(r.url.as_str(), "https://example.zulipchat.com/api/v1/messages");
        assert_eq!(
            r.header_value("Content-Type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            r.basic_auth,
            Some((
                "kured-bot@example.zulipchat.com".to_owned(),
                "correcthorsebatterystaple".to_owned()
            ))
        );
        assert_eq!(
            r.form_body(),
            pairs(&[
                ("type", "stream"),
                ("to", "ops"),
                ("content", "Draining node n1"),
                ("topic", "Reboots"),
            ])
        );
        let r = one("zulip://b%40x.com:k3y@x.com?stream=ops");
        assert_eq!(
            r.form_body(),
            pairs(&[("type", "stream"), ("to", "ops"), ("content", "Draining node n1")])
        );
    }
}
