//! Bark (iOS push through a Bark server):
//! `bark://:devicekey@host[:port][/path]?title=…&sound=…&badge=…&icon=…&group=…&url=…&category=…&copy=…&scheme=http|https`.
//!
//! The request is the Bark server's `POST <path>/push` with a JSON body: `device_key`, `body`,
//! `title` and the optional fields the URL sets.


use serde_json::{Map, Value, json};
use url::Url;

use crate::notify::request::{HttpRequest, set};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, host_port, origin, parameter, parse_url, segments};

pub(crate) const SCHEMES: &[&str] = &["bark"];

const S: &str = "bark";

/// A device on a Bark server.
#[derive(Clone, PartialEq, Eq)]
pub struct Bark {
    /// `…/push` on the server.
    pub(crate) endpoint: Url,
    pub(crate) device_key: String,
    pub(crate) title: Option<String>,
    pub(crate) badge: Option<i64>,
    /// Optional string fields of the payload (`sound`, `icon`, `group`, `url`, `category`,
    /// `copy`), in that order.
    pub(crate) fields: Vec<(&'static str, String)>,
}

debug_as_shown!(Bark);

/// The payload fields a URL parameter of the same name sets.
const FIELDS: &[&str] = &["sound", "icon", "group", "url", "category", "copy"];

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let url = parse_url(S, value)?;
    let device_key = url.password().map(decode).unwrap_or_default();
    if device_key.is_empty() {
        return Err(form(S, "expected bark://:devicekey@host[/path]"));
    }
    let mut p = Params::of(S, &url);
    let web = match p.take(&["scheme"]).as_deref() {
        None | Some("https") => "https",
        Some("http") => "http",
        Some(_) => return Err(parameter(S, "scheme", "expected http or https")),
    };
    let title = p.take(&["title"]);
    let badge = p.parsed("badge", "expected a whole number")?;
    let fields = FIELDS
        .iter()
        .filter_map(|key| p.take(&[key]).map(|v| (*key, v)))
        .collect();
    p.finish()?;
    let mut path = String::new();
    for part in segments(&url) {
        path.push('/');
        path.push_str(&part);
    }
    let endpoint = parse_url(S, &format!("{}{path}/push", origin(S, &url, web)?))?;
    Ok(Target::new(Bark {
        endpoint,
        device_key,
        title,
        badge,
        fields,
    }))
}

impl Service for Bark {
    fn scheme(&self) -> &'static str {
        S
    }

    fn shown(&self) -> String {
        format!("bark://{REDACTED}@{}", host_port(&self.endpoint))
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.device_key.clone()]
    }

    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let mut body = Map::new();
        body.insert("device_key".to_owned(), json!(self.device_key));
        body.insert("body".to_owned(), json!(message));
        body.insert("title".to_owned(), json!(self.title.as_deref().unwrap_or(title)));
        if let Some(badge) = self.badge {
            body.insert("badge".to_owned(), json!(badge));
        }
        for (key, value) in &self.fields {
            set(&mut body, key, Some(value));
        }
        vec![HttpRequest::post_json(
            self.endpoint.clone(),
            &Value::Object(body),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, assert_request, err, one, parsed};

    #[test]
    fn bark_forms_and_defaults() {
        let b: Bark = parsed("bark://:K3YK3Y@api.day.app");
        assert_eq!(b.endpoint.as_str(), "https://api.day.app/push");
        assert_eq!((b.device_key.as_str(), b.badge), ("K3YK3Y", None));
        assert!(b.fields.is_empty());

        let b: Bark = parsed(
            "bark://:K3YK3Y@bark.example.com:8080/sub/path/?scheme=http&title=Reboots&sound=alarm&badge=3&group=kured&url=https://x.example/",
        );
        assert_eq!(b.endpoint.as_str(), "http://bark.example.com:8080/sub/path/push");
        assert_eq!((b.title.as_deref(), b.badge), (Some("Reboots"), Some(3)));
        assert_eq!(
            b.fields,
            [
                ("sound", "alarm".to_owned()),
                ("group", "kured".to_owned()),
                ("url", "https://x.example/".to_owned())
            ]
        );
    }

    #[test]
    fn bad_bark_urls_name_what_is_wrong() {
        assert!(err("bark://api.day.app").contains("devicekey"));
        assert!(err("bark://:k@api.day.app?scheme=ftp").contains("parameter \"scheme\""));
        assert!(err("bark://:k@api.day.app?badge=many").contains("parameter \"badge\""));
        assert!(err("bark://:k@api.day.app?level=active").contains("unknown parameter \"level\""));
        assert!(err("bark://:k@/").contains("bark:"));
    }

    #[test]
    fn bark_requests_and_redaction() {
        let r = one("bark://:K3YK3Y@api.day.app?sound=alarm&badge=1");
        assert_request(&r, "POST", "https://api.day.app/push");
        assert_eq!(
            r.json_body(),
            json!({ "device_key": "K3YK3Y", "body": "Draining node n1", "title": "Starting drain", "badge": 1, "sound": "alarm" })
        );
        assert_redacted("bark://:SECRETKEY@api.day.app", "SECRET");
    }
}
