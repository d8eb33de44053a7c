//! The services `--notify-url` reaches, one file each, and the registry that maps URL schemes to
//! them.
//!
//! # Adding a service
//!
//! 1. Write `services/<name>.rs` holding:
//!    - `pub(crate) const SCHEMES: &[&str]`: the URL schemes it takes, lower case, the name
//!      metrics use first;
//!    - `pub(crate) fn parse(scheme: &str, value: &str) -> Result<Target, TargetError>`: the URL
//!      forms shoutrrr documents for it, with [`Params`](super::url_syntax::Params) for the query
//!      (every parameter taken or ignored, then `finish()`ed, so an unknown one is an error that
//!      names it);
//!    - a type implementing [`Service`](super::target::Service): `scheme`, `shown` (the URL
//!      without secrets), `secrets` (what logs must never show) and `requests` (the HTTP
//!      requests one message becomes, as the service's API documents them) — or `deliver` for a
//!      service that must read answers (Matrix logs in first) or does not speak HTTP (SMTP).
//!      Its `Debug` comes from `debug_as_shown!`, which shows no secret.
//!    - unit tests: each URL form, defaults, bad values, redaction, the requests.
//! 2. Add its name to the [`registry!`] list below.
//!
//! Shared pieces: URL and query helpers in [`super::url_syntax`], request building in
//! [`super::request`], sending and retries in [`super::deliver::Link`].

use super::target::{Target, TargetError};

/// A service as the registry knows it: its schemes and its URL parser.
pub(crate) struct Registered {
    pub(crate) schemes: &'static [&'static str],
    pub(crate) parse: fn(scheme: &str, value: &str) -> Result<Target, TargetError>,
}

/// Whether URLs of `scheme` carry a credential as their host (Pushbullet's access token,
/// Pushover's user key), so that an error must not show even the host.
pub(crate) fn host_is_secret(scheme: &str) -> bool {
    let scheme = scheme.to_ascii_lowercase();
    [pushbullet::SCHEMES, pushover::SCHEMES]
        .iter()
        .any(|schemes| schemes.contains(&scheme.as_str()))
}

/// `Debug` for a service type as [`Service::shown`](super::target::Service::shown) gives it: the
/// URL without its secrets, so that no `{:?}` can leak one.
macro_rules! debug_as_shown {
    ($service:ty) => {
        impl std::fmt::Debug for $service {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&crate::notify::target::Service::shown(self))
            }
        }
    };
}

/// Declares each service's module and lists it in [`REGISTRY`].
macro_rules! registry {
    ($($service:ident),* $(,)?) => {
        $(pub(crate) mod $service;)*

        /// Every service, in the order error messages list their schemes.
        pub(crate) const REGISTRY: &[Registered] = &[
            $(Registered { schemes: $service::SCHEMES, parse: $service::parse },)*
        ];
    };
}

registry! {
    slack,
    teams,
    discord,
    generic,
    smtp,
    telegram,
    googlechat,
    mattermost,
    bark,
    gotify,
    ifttt,
    join,
    matrix,
    ntfy,
    pushover,
    pushbullet,
    rocketchat,
    zulip,
    opsgenie,
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the services' unit tests.

    use super::super::request::HttpRequest;
    use super::super::target::{Service, Target, scrub};

    pub(crate) fn parse(value: &str) -> Target {
        Target::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    /// The service of `value`, which must be an `S`.
    pub(crate) fn parsed<S: Service + Clone>(value: &str) -> S {
        parse(value)
            .service::<S>()
            .unwrap_or_else(|| panic!("{value}: another service"))
            .clone()
    }

    /// The error `value` is refused with.
    pub(crate) fn err(value: &str) -> String {
        match Target::parse(value) {
            Ok(t) => panic!("{value} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The requests a message becomes, with title `Starting drain`.
    pub(crate) fn requests(url: &str, message: &str) -> Vec<HttpRequest> {
        parse(url).as_service().requests("Starting drain", message)
    }

    /// The one request `Draining node n1` becomes.
    pub(crate) fn one(url: &str) -> HttpRequest {
        let mut all = requests(url, "Draining node n1");
        assert_eq!(all.len(), 1, "{url}");
        all.remove(0)
    }

    /// The request's method and URL.
    pub(crate) fn assert_request(request: &HttpRequest, method: &str, url: &str) {
        assert_eq!((request.method.as_str(), request.url.as_str()), (method, url));
    }

    /// Neither the shown form, `Debug`, `Display` nor an error scrubbed with its secrets carries
    /// `needle` (a marker inside each secret of `url`).
    pub(crate) fn assert_redacted(url: &str, needle: &str) {
        let target = parse(url);
        for text in [target.shown(), format!("{target:?}"), target.to_string()] {
            assert!(!text.contains(needle), "{url}: {text}");
        }
        let secrets = target.secrets();
        assert!(!secrets.is_empty(), "{url}");
        let scrubbed = scrub(&format!("error at {url}"), &secrets);
        assert!(!scrubbed.contains(needle), "{url}: {scrubbed}");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{err, one, parse};
    use serde_json::{Value, json};

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
            assert_eq!(r.json_body(), body, "{notify_url}");
            assert!(
                r.header_value("Content-Type")
                    .is_some_and(|v| v.starts_with("application/json")),
                "{notify_url}"
            );
        }
    }

    #[test]
    fn every_registered_scheme_parses_to_its_service() {
        for registered in super::REGISTRY {
            let metric = registered.schemes[0];
            for scheme in registered.schemes {
                // Each parser is reached through the registry (a malformed URL reaches the
                // parser, which names its own scheme).
                let e = err(&format!("{scheme}://"));
                assert!(e.starts_with(metric), "{scheme}: {e}");
            }
        }
        assert_eq!(parse("discord://tok@123").scheme(), "discord");
    }

    #[test]
    fn errors_debug_and_shown_forms_never_carry_secrets() {
        let secret_urls = [
            "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook",
            "slack://xoxb:123456789012-1234567890123-SECRETSECRETSECRETSECRET@C0123",
            "teams+https://prod-1.westeurope.logic.azure.com/workflows/SECRETID/triggers/manual/paths/invoke?sig=SECRETSIG",
            "discord://SECRETTOKEN@1234",
            "generic://user:SECRETPW@example.com/SECRETPATH?@Authorization=SECRETHDR&token=SECRETQ",
            "telegram://123:SECRETTOKEN@telegram?chats=@c",
            "googlechat://chat.googleapis.com/v1/spaces/S/messages?key=SECRETKEY&token=SECRETTOK",
            "mattermost://mm.example.com/SECRETTOKEN",
            "smtp://user:SECRETPW@mail.example.com/?from=a@b.c&to=d@e.f",
        ];
        for url in secret_urls {
            super::testing::assert_redacted(url, "SECRET");
            super::testing::assert_redacted(url, "XXXXXXXXXXXX");
        }
        // Parse errors of malformed URLs name no secret either.
        for bad in [
            "slack://hook:SECRETSECRET@webhook",
            "discord://SECRET@notanumber",
            "telegram://SECRET@telegram",
            "smtp://user:SECRET@/?from=a@b.c",
            "teams://SECRET@x/y/z",
            "mattermost://SECRET@/",
            "gotify://example.com/SECRETTOKEN",
            "bark://:SECRET@/",
            "ifttt://SECRET/",
            "join://x:SECRET@join/",
            "matrix://u:SECRET@/",
            "ntfy://u:SECRET@ntfy.sh",
        ] {
            let e = err(bad);
            assert!(!e.contains("SECRET"), "{bad}: {e}");
        }
    }
}
