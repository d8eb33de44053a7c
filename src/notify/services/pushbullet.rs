//! Pushbullet: the Pushes API, `pushbullet://accessToken[/device][/#channel][/email]?title=…`.
//!
//! Each target gets one `note` push, POSTed as JSON to `https://api.pushbullet.com/v2/pushes`
//! with the access token in the `Access-Token` header, as Pushbullet documents it: a device by
//! its `device_iden`, a channel by its `channel_tag` (`#` in the URL), anyone by `email`.
//! Without targets one push goes to all of the token owner's devices.


use serde_json::{Map, Value};

use crate::notify::request::{HttpRequest, url};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, parse_url};

pub(crate) const SCHEMES: &[&str] = &["pushbullet"];

/// Pushbullet's Pushes API.
const PUSHES: &str = "https://api.pushbullet.com/v2/pushes";

/// The length of the access tokens Pushbullet issues (`o.` and 32 characters); shoutrrr refuses
/// others.
const TOKEN_LEN: usize = 34;

/// A Pushbullet account and where its pushes go.
#[derive(Clone, PartialEq, Eq)]
pub struct Pushbullet {
    pub(crate) token: String,
    pub(crate) targets: Vec<PushTarget>,
    pub(crate) title: Option<String>,
}

/// Who receives a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PushTarget {
    Device(String),
    Channel(String),
    Email(String),
}

impl PushTarget {
    /// shoutrrr's reading of a path segment: an address with `@` and a dot after it is an
    /// e-mail, `#tag` a channel, anything else a device.
    fn of(segment: &str) -> PushTarget {
        if let Some(tag) = segment.strip_prefix('#') {
            PushTarget::Channel(tag.to_owned())
        } else if segment
            .split_once('@')
            .is_some_and(|(_, domain)| domain.contains('.'))
        {
            PushTarget::Email(segment.to_owned())
        } else {
            PushTarget::Device(segment.to_owned())
        }
    }

    /// The push's field naming the target, and its value.
    fn field(&self) -> (&'static str, &str) {
        match self {
            PushTarget::Device(iden) => ("device_iden", iden),
            PushTarget::Channel(tag) => ("channel_tag", tag),
            PushTarget::Email(address) => ("email", address),
        }
    }

    fn shown(&self) -> String {
        match self {
            PushTarget::Channel(tag) => format!("#{tag}"),
            PushTarget::Device(s) | PushTarget::Email(s) => s.clone(),
        }
    }
}

debug_as_shown!(Pushbullet);

/// `pushbullet://token[/target…]`: the access token is the host, each path segment (and a
/// `#channel` fragment, which may hold more segments) a target.
pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    const S: &str = "pushbullet";
    let url = parse_url(S, value)?;
    let token = url.host_str().map(decode).unwrap_or_default();
    if token.chars().count() != TOKEN_LEN {
        return Err(form(
            S,
            "expected pushbullet://accessToken[/device|/#channel|/email], the token 34 characters long",
        ));
    }
    let mut path = url.path().to_owned();
    let mut queries = vec![Params::of(S, &url)];
    if let Some(fragment) = url.fragment() {
        // A query written after `#channel` is inside the fragment: read it as a query too.
        let (channels, query) = match fragment.split_once('?') {
            Some((channels, query)) => (channels, Some(query)),
            None => (fragment, None),
        };
        path.push_str("/#");
        path.push_str(channels);
        if let Some(query) = query {
            queries.push(Params::of_query(S, query)?);
        }
    }
    let targets = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| PushTarget::of(&decode(s)))
        .collect();
    let titles: Vec<Option<String>> = queries.iter_mut().map(|p| p.take(&["title"])).collect();
    let title = titles.into_iter().flatten().next();
    for p in queries {
        p.finish()?;
    }
    Ok(Target::new(Pushbullet {
        token,
        targets,
        title,
    }))
}

impl Service for Pushbullet {
    fn scheme(&self) -> &'static str {
        "pushbullet"
    }

    fn shown(&self) -> String {
        let mut shown = format!("pushbullet://{REDACTED}");
        for target in &self.targets {
            shown.push('/');
            shown.push_str(&target.shown());
        }
        shown
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.token.clone()]
    }

    /// A `note` push per target: `title` (the URL's, else the event's) and `body`.
    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let Some(endpoint) = url(PUSHES) else {
            return Vec::new();
        };
        let title = self.title.as_deref().unwrap_or(title);
        let push = |target: Option<&PushTarget>| {
            let mut body = Map::new();
            body.insert("type".to_owned(), Value::from("note"));
            body.insert("title".to_owned(), Value::from(title));
            body.insert("body".to_owned(), Value::from(message));
            if let Some((field, value)) = target.map(PushTarget::field) {
                body.insert(field.to_owned(), Value::from(value));
            }
            HttpRequest::post_json(endpoint.clone(), &Value::Object(body))
                .header("Access-Token", self.token.clone())
        };
        if self.targets.is_empty() {
            return vec![push(None)];
        }
        self.targets.iter().map(|t| push(Some(t))).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, parsed, requests};

    const TOKEN: &str = "o.AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    #[test]
    fn pushbullet_forms() {
        let p: Pushbullet = parsed(&format!(
            "pushbullet://{TOKEN}/ujpah72o0sjAoRtnM0jc/#reboots/ops%40example.com?title=kured"
        ));
        assert_eq!(p.token, TOKEN, "the token's case is kept");
        assert_eq!(
            p.targets,
            [
                PushTarget::Device("ujpah72o0sjAoRtnM0jc".to_owned()),
                PushTarget::Channel("reboots".to_owned()),
                PushTarget::Email("ops@example.com".to_owned()),
            ]
        );
        assert_eq!(p.title.as_deref(), Some("kured"));
        let p: Pushbullet = parsed(&format!("pushbullet://{TOKEN}"));
        assert!(p.targets.is_empty() && p.title.is_none());
        let p: Pushbullet = parsed(&format!("pushbullet://{TOKEN}/#ops"));
        assert_eq!(p.targets, [PushTarget::Channel("ops".to_owned())]);
        // The query may come before the channel, or after it (inside the fragment).
        let p: Pushbullet = parsed(&format!("pushbullet://{TOKEN}/phone?title=kured#ops"));
        assert_eq!(p.targets.len(), 2);
        assert_eq!(p.title.as_deref(), Some("kured"));
        assert!(err(&format!("pushbullet://{TOKEN}/#ops?colour=red")).contains("unknown parameter \"colour\""));
    }

    #[test]
    fn pushbullet_bad_urls_name_the_part() {
        assert!(err("pushbullet://tooshort/dev").contains("34 characters"));
        assert!(err(&format!("pushbullet://{TOKEN}?priority=1")).contains("unknown parameter \"priority\""));
        let e = err("pushbullet://o.S3CRETS3CRET");
        assert!(!e.contains("S3CRET"), "{e}");
    }

    #[test]
    fn pushbullet_hides_the_token() {
        let url = "pushbullet://o.SECRETSECRETSECRETSECRETSECRET12/#ops";
        assert_redacted(url, "SECRET");
        assert_eq!(parsed::<Pushbullet>(url).shown(), "pushbullet://<redacted>/#ops");
    }

    #[test]
    fn pushbullet_pushes_a_note_per_target() {
        let pushes = requests(
            &format!("pushbullet://{TOKEN}/phone/#reboots/ops@example.com"),
            "Draining node n1",
        );
        assert_eq!(pushes.len(), 3);
        for r in &pushes {
            assert_eq!(r.method.as_str(), "POST");
            assert_eq!(r.url.as_str(), "https://api.pushbullet.com/v2/pushes");
            assert_eq!(r.header_value("Access-Token"), Some(TOKEN));
            assert_eq!(r.header_value("Content-Type"), Some("application/json"));
        }
        let note = |field: &str, value: &str| {
            json!({ "type": "note", "title": "Starting drain", "body": "Draining node n1", field: value })
        };
        assert_eq!(pushes[0].json_body(), note("device_iden", "phone"));
        assert_eq!(pushes[1].json_body(), note("channel_tag", "reboots"));
        assert_eq!(pushes[2].json_body(), note("email", "ops@example.com"));

        let all = requests(&format!("pushbullet://{TOKEN}?title=kured"), "Draining node n1");
        assert_eq!(
            all.iter().map(HttpRequest::json_body).collect::<Vec<_>>(),
            [json!({ "type": "note", "title": "kured", "body": "Draining node n1" })]
        );
    }
}
