//! What each service receives: the HTTP requests a message becomes, following each service's
//! documented webhook or API format. Pure, so every mapping is table-tested without a network.

use reqwest::Method;
use serde_json::{Map, Value, json};
use url::Url;

use super::target::{
    Discord, Generic, GoogleChat, Mattermost, ParseMode, Slack, SlackDest, Teams, TeamsDest, Telegram,
};

/// Slack's Web API method that posts a message as a bot or user.
const SLACK_POST_MESSAGE: &str = "https://slack.com/api/chat.postMessage";
/// Discord's webhook endpoint; the id and token follow.
const DISCORD_WEBHOOKS: &str = "https://discord.com/api/webhooks";
/// Telegram's Bot API; `bot<token>/<method>` follows.
const TELEGRAM_API: &str = "https://api.telegram.org";
/// The Adaptive Card schema version that Teams Workflows render (1.2 and earlier, per Microsoft).
const ADAPTIVE_CARD_VERSION: &str = "1.2";

/// One HTTP request to send.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct HttpRequest {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub basic_auth: Option<(String, String)>,
    pub body: Vec<u8>,
    pub expect: Expect,
}

/// How to tell that the service took the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Any 2xx status.
    Success,
    /// A 2xx status and a JSON body with `"ok": true`: Slack's Web API answers errors with 200.
    SlackApiOk,
}

impl HttpRequest {
    fn post_json(url: Url, body: &Value) -> HttpRequest {
        HttpRequest {
            method: Method::POST,
            url,
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            basic_auth: None,
            body: body.to_string().into_bytes(),
            expect: Expect::Success,
        }
    }

    /// The body as JSON, for tests and error messages.
    #[cfg(test)]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn url(base: &str) -> Option<Url> {
    Url::parse(base).ok()
}

fn set(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), Value::String(v.to_owned()));
    }
}

/// Slack's and Mattermost's icon override: a URL is `icon_url`, anything else an emoji name.
fn set_icon(body: &mut Map<String, Value>, icon: Option<&str>) {
    if let Some(icon) = icon {
        let key = if icon.starts_with("http://") || icon.starts_with("https://") {
            "icon_url"
        } else {
            "icon_emoji"
        };
        body.insert(key.to_owned(), Value::String(icon.to_owned()));
    }
}

fn with_title(title: Option<&str>, message: &str, open: &str, close: &str) -> String {
    match title {
        Some(t) => format!("{open}{t}{close}\n{message}"),
        None => message.to_owned(),
    }
}

/// Slack's message payload, the same for webhooks and `chat.postMessage`: `text` (the title in
/// bold above the message), or with `color=` the message in a coloured attachment.
pub(crate) fn slack(s: &Slack, message: &str) -> Option<HttpRequest> {
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
    match &s.dest {
        SlackDest::Webhook(hook) => Some(HttpRequest::post_json(hook.clone(), &body)),
        SlackDest::Api { token } => {
            let mut request = HttpRequest::post_json(url(SLACK_POST_MESSAGE)?, &body);
            request.headers = vec![
                (
                    "Content-Type".to_owned(),
                    "application/json; charset=utf-8".to_owned(),
                ),
                ("Authorization".to_owned(), format!("Bearer {token}")),
            ];
            request.expect = Expect::SlackApiOk;
            Some(request)
        }
    }
}

/// Teams: a connector's MessageCard, or a Workflows message carrying an Adaptive Card.
pub(crate) fn teams(t: &Teams, message: &str) -> HttpRequest {
    match &t.dest {
        TeamsDest::Connector(hook) => {
            let mut card = Map::new();
            card.insert("@type".to_owned(), json!("MessageCard"));
            card.insert("@context".to_owned(), json!("http://schema.org/extensions"));
            // A MessageCard needs a summary (the notification preview); the title, or the message.
            card.insert(
                "summary".to_owned(),
                Value::String(t.title.clone().unwrap_or_else(|| message.to_owned())),
            );
            set(&mut card, "title", t.title.as_deref());
            set(&mut card, "themeColor", t.color.as_deref());
            card.insert("text".to_owned(), Value::String(message.to_owned()));
            HttpRequest::post_json(hook.clone(), &Value::Object(card))
        }
        TeamsDest::Workflow(hook) => {
            let mut blocks = Vec::new();
            if let Some(title) = &t.title {
                blocks.push(json!({ "type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true }));
            }
            blocks.push(json!({ "type": "TextBlock", "text": message, "wrap": true }));
            let body = json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": ADAPTIVE_CARD_VERSION,
                        "body": blocks,
                    },
                }],
            });
            HttpRequest::post_json(hook.clone(), &body)
        }
    }
}

/// Discord's Execute Webhook: `content`, optional `username` and `avatar_url`; `thread_id` in
/// the query.
pub(crate) fn discord(d: &Discord, message: &str) -> Option<HttpRequest> {
    let mut hook = url(&format!("{DISCORD_WEBHOOKS}/{}/{}", d.id, d.token))?;
    if let Some(thread) = &d.thread_id {
        hook.query_pairs_mut().append_pair("thread_id", thread);
    }
    if d.raw_json {
        let mut request = HttpRequest::post_json(hook, &Value::Null);
        request.body = message.as_bytes().to_vec();
        return Some(request);
    }
    let mut body = Map::new();
    body.insert(
        "content".to_owned(),
        Value::String(with_title(d.title.as_deref(), message, "**", "**")),
    );
    set(&mut body, "username", d.username.as_deref());
    set(&mut body, "avatar_url", d.avatar.as_deref());
    Some(HttpRequest::post_json(hook, &Value::Object(body)))
}

/// Any endpoint: the message as the body, or with `template=json` an object of title, message
/// and the `$key=value` extras.
pub(crate) fn generic(g: &Generic, message: &str, title: &str) -> HttpRequest {
    let body = if g.json {
        let mut object = Map::new();
        let title = g.title.as_deref().unwrap_or(title);
        if !title.is_empty() {
            object.insert(g.title_key.clone(), Value::String(title.to_owned()));
        }
        object.insert(g.message_key.clone(), Value::String(message.to_owned()));
        for (k, v) in &g.extra {
            object.insert(k.clone(), Value::String(v.clone()));
        }
        Value::Object(object).to_string().into_bytes()
    } else {
        message.as_bytes().to_vec()
    };
    let mut headers = vec![("Content-Type".to_owned(), g.content_type.clone())];
    headers.extend(g.headers.iter().cloned());
    HttpRequest {
        method: Method::from_bytes(g.method.as_bytes()).unwrap_or(Method::POST),
        url: g.url.clone(),
        headers,
        basic_auth: g.basic_auth.clone(),
        body,
        expect: Expect::Success,
    }
}

/// Telegram's `sendMessage`, once per chat. Without a parse mode the message is escaped and sent
/// as HTML (so a title can be bold), as shoutrrr does.
pub(crate) fn telegram(t: &Telegram, message: &str) -> Vec<HttpRequest> {
    let Some(endpoint) = url(&format!("{TELEGRAM_API}/bot{}/sendMessage", t.token)) else {
        return Vec::new();
    };
    let (text, mode) = match t.parse_mode {
        ParseMode::None => (
            with_title(
                t.title.as_deref().map(escape_html).as_deref(),
                &escape_html(message),
                "<b>",
                "</b>",
            ),
            "HTML",
        ),
        ParseMode::Html => (with_title(t.title.as_deref(), message, "<b>", "</b>"), "HTML"),
        ParseMode::Markdown => (message.to_owned(), "Markdown"),
        ParseMode::MarkdownV2 => (message.to_owned(), "MarkdownV2"),
    };
    t.chats
        .iter()
        .map(|chat| {
            let mut body = json!({
                "chat_id": chat.id,
                "text": text,
                "parse_mode": mode,
                "disable_notification": !t.notification,
                "disable_web_page_preview": !t.preview,
            });
            if let (Some(thread), Some(object)) = (chat.thread, body.as_object_mut()) {
                object.insert("message_thread_id".to_owned(), json!(thread));
            }
            HttpRequest::post_json(endpoint.clone(), &body)
        })
        .collect()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Google Chat's incoming webhook: a simple text message.
pub(crate) fn googlechat(g: &GoogleChat, message: &str) -> HttpRequest {
    let mut request = HttpRequest::post_json(g.url.clone(), &json!({ "text": message }));
    request.headers = vec![(
        "Content-Type".to_owned(),
        "application/json; charset=UTF-8".to_owned(),
    )];
    request
}

/// Mattermost's incoming webhook: `text`, and the overrides it allows (`username`, `channel`,
/// `icon_url` or `icon_emoji`).
pub(crate) fn mattermost(m: &Mattermost, message: &str) -> HttpRequest {
    let mut body = Map::new();
    body.insert(
        "text".to_owned(),
        Value::String(with_title(m.title.as_deref(), message, "**", "**")),
    );
    set(&mut body, "username", m.username.as_deref());
    set(&mut body, "channel", m.channel.as_deref());
    set_icon(&mut body, m.icon.as_deref());
    HttpRequest::post_json(m.url.clone(), &Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::super::target::Target;
    use super::*;

    fn requests(url: &str, message: &str) -> Vec<HttpRequest> {
        let target = Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        match &target {
            Target::Slack(s) => slack(s, message).into_iter().collect(),
            Target::Teams(t) => vec![teams(t, message)],
            Target::Discord(d) => discord(d, message).into_iter().collect(),
            Target::Generic(g) => vec![generic(g, message, "Starting drain")],
            Target::Telegram(t) => telegram(t, message),
            Target::GoogleChat(g) => vec![googlechat(g, message)],
            Target::Mattermost(m) => vec![mattermost(m, message)],
            Target::Smtp(_) => Vec::new(),
        }
    }

    fn one(url: &str) -> HttpRequest {
        let mut all = requests(url, "Draining node n1");
        assert_eq!(all.len(), 1, "{url}");
        all.remove(0)
    }

    fn header<'a>(r: &'a HttpRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// (notify URL, method, request URL, JSON body) as each service's documentation gives them.
    #[test]
    fn each_scheme_maps_to_its_documented_request() {
        let cases: Vec<(&str, &str, &str, Value)> = vec![
            (
                "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook",
                "POST",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                json!({ "text": "Draining node n1" }),
            ),
            (
                "slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L?botname=kured&icon=:ghost:",
                "POST",
                "https://slack.com/api/chat.postMessage",
                json!({ "text": "Draining node n1", "channel": "C001CH4NN3L", "username": "kured", "icon_emoji": ":ghost:" }),
            ),
            (
                "teams://11111111-4444-4444-8444-cccccccccccc@22222222-4444-4444-8444-cccccccccccc/33333333012222222222333333333344/44444444-4444-4444-8444-cccccccccccc/V2ESyij_gAljSoUQHvZoZYzlpAoAXExyOl26dlf1xHEx05?host=contoso.webhook.office.com",
                "POST",
                "https://contoso.webhook.office.com/webhookb2/11111111-4444-4444-8444-cccccccccccc@22222222-4444-4444-8444-cccccccccccc/IncomingWebhook/33333333012222222222333333333344/44444444-4444-4444-8444-cccccccccccc/V2ESyij_gAljSoUQHvZoZYzlpAoAXExyOl26dlf1xHEx05",
                json!({ "@type": "MessageCard", "@context": "http://schema.org/extensions", "summary": "Draining node n1", "text": "Draining node n1" }),
            ),
            (
                "teams+https://prod-00.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=s1g",
                "POST",
                "https://prod-00.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=s1g",
                json!({
                    "type": "message",
                    "attachments": [{
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "contentUrl": null,
                        "content": {
                            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                            "type": "AdaptiveCard",
                            "version": "1.2",
                            "body": [{ "type": "TextBlock", "text": "Draining node n1", "wrap": true }],
                        },
                    }],
                }),
            ),
            (
                "discord://W3dE2OZz4C13_4z-uHfD@693853386302554172?username=kured&thread_id=42",
                "POST",
                "https://discord.com/api/webhooks/693853386302554172/W3dE2OZz4C13_4z-uHfD?thread_id=42",
                json!({ "content": "Draining node n1", "username": "kured" }),
            ),
            (
                "generic://example.com/hook?template=json&$cluster=prod&foo=bar",
                "POST",
                "https://example.com/hook?foo=bar",
                json!({ "title": "Starting drain", "message": "Draining node n1", "cluster": "prod" }),
            ),
            (
                "telegram://110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw@telegram?chats=@kured",
                "POST",
                "https://api.telegram.org/bot110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
                json!({ "chat_id": "@kured", "text": "Draining node n1", "parse_mode": "HTML", "disable_notification": false, "disable_web_page_preview": false }),
            ),
            (
                "googlechat://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz",
                "POST",
                "https://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz",
                json!({ "text": "Draining node n1" }),
            ),
            (
                "mattermost://bot@mm.example.com/bywsw8zt5jgpte3nm65qjiru6h/alerts?icon=https://x/i.png",
                "POST",
                "https://mm.example.com/hooks/bywsw8zt5jgpte3nm65qjiru6h",
                json!({ "text": "Draining node n1", "username": "bot", "channel": "alerts", "icon_url": "https://x/i.png" }),
            ),
        ];
        for (notify_url, method, url, body) in cases {
            let r = one(notify_url);
            assert_eq!(r.method.as_str(), method, "{notify_url}");
            assert_eq!(r.url.as_str(), url, "{notify_url}");
            assert_eq!(r.json(), body, "{notify_url}");
            assert!(
                header(&r, "Content-Type").is_some_and(|v| v.starts_with("application/json")),
                "{notify_url}"
            );
        }
    }

    #[test]
    fn slack_api_requests_carry_the_token_and_check_ok() {
        let r = one("slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L");
        assert_eq!(
            header(&r, "Authorization"),
            Some("Bearer xoxb-123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N")
        );
        assert_eq!(r.expect, Expect::SlackApiOk);
        let hook = one("slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook");
        assert_eq!(
            (hook.expect, header(&hook, "Authorization")),
            (Expect::Success, None)
        );
    }

    #[test]
    fn titles_colours_and_options() {
        let r =
            one("slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook?color=danger&title=kured");
        assert_eq!(
            r.json(),
            json!({ "text": "kured", "attachments": [{ "color": "danger", "text": "Draining node n1", "fallback": "Draining node n1" }] })
        );
        let r = one(
            "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook?title=kured&thread_ts=1.2",
        );
        assert_eq!(
            r.json(),
            json!({ "text": "*kured*\nDraining node n1", "thread_ts": "1.2" })
        );

        let r = one("teams+https://prod-00.westeurope.logic.azure.com/workflows/abc?sig=x&title=Reboots");
        assert_eq!(
            r.json()["attachments"][0]["content"]["body"][0],
            json!({ "type": "TextBlock", "text": "Reboots", "weight": "Bolder", "size": "Medium", "wrap": true })
        );

        let chats = requests(
            "telegram://1:A-b_c@telegram?chats=@one,-1002:7&notification=no&preview=no&title=a<b",
            "x & y",
        );
        assert_eq!(chats.len(), 2);
        assert_eq!(chats[0].json()["text"], "<b>a&lt;b</b>\nx &amp; y");
        assert_eq!(chats[1].json()["chat_id"], "-1002");
        assert_eq!(chats[1].json()["message_thread_id"], 7);
        assert_eq!(chats[1].json()["disable_notification"], true);
        assert_eq!(chats[1].json()["disable_web_page_preview"], true);
        let md = requests("telegram://1:A@telegram?chats=@c&parsemode=MarkdownV2", "*b*");
        assert_eq!(
            (md[0].json()["text"].clone(), md[0].json()["parse_mode"].clone()),
            (json!("*b*"), json!("MarkdownV2"))
        );
    }

    #[test]
    fn generic_bodies_headers_and_methods() {
        let r = one("generic+https://u:pw@example.com/hook?@Authorization=Bearer+t&@XApiKey=k");
        assert_eq!(r.body, b"Draining node n1");
        assert_eq!(header(&r, "Content-Type"), Some("application/json"));
        assert_eq!(header(&r, "Authorization"), Some("Bearer t"));
        assert_eq!(header(&r, "X-Api-Key"), Some("k"));
        assert_eq!(r.basic_auth, Some(("u".to_owned(), "pw".to_owned())));

        let r = one(
            "generic://example.com/h?template=json&title=Custom&titlekey=subject&messagekey=body&method=PUT&contenttype=application/vnd.kured%2Bjson",
        );
        assert_eq!(r.method, Method::PUT);
        assert_eq!(
            r.json(),
            json!({ "subject": "Custom", "body": "Draining node n1" })
        );
        assert_eq!(header(&r, "Content-Type"), Some("application/vnd.kured+json"));
    }
}
