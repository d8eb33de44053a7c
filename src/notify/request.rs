//! What a service receives: the HTTP request type each service's [`Service::requests`]
//! (super::target::Service::requests) builds, and the pieces of JSON bodies several services
//! share. Pure, so every mapping is table-tested without a network.

use reqwest::Method;
use serde_json::{Map, Value};
use url::Url;

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
    /// `method` to `url` with `body` as JSON.
    pub(crate) fn json(method: Method, url: Url, body: &Value) -> HttpRequest {
        HttpRequest {
            method,
            url,
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            basic_auth: None,
            body: body.to_string().into_bytes(),
            expect: Expect::Success,
        }
    }

    /// A POST of `body` as JSON.
    pub(crate) fn post_json(url: Url, body: &Value) -> HttpRequest {
        HttpRequest::json(Method::POST, url, body)
    }

    /// Adds a header.
    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The body as JSON, for tests and error messages.
    #[cfg(test)]
    pub fn json_body(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The value of header `name`, for tests.
    #[cfg(test)]
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A POST of `fields` as an HTML form (`application/x-www-form-urlencoded`), in order.
    pub(crate) fn post_form(url: Url, fields: &[(&str, &str)]) -> HttpRequest {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        HttpRequest {
            method: Method::POST,
            url,
            headers: vec![(
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            )],
            basic_auth: None,
            body: body.into_bytes(),
            expect: Expect::Success,
        }
    }

    /// The fields of a form body, in order, for tests.
    #[cfg(test)]
    pub fn form_body(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

/// A URL built from a service's fixed API address; `None` only if the parts make no URL.
pub(crate) fn url(base: &str) -> Option<Url> {
    Url::parse(base).ok()
}

/// Sets `key` to `value` if there is one.
pub(crate) fn set(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), Value::String(v.to_owned()));
    }
}

/// Slack's and Mattermost's icon override: a URL is `icon_url`, anything else an emoji name.
pub(crate) fn set_icon(body: &mut Map<String, Value>, icon: Option<&str>) {
    if let Some(icon) = icon {
        let key = if icon.starts_with("http://") || icon.starts_with("https://") {
            "icon_url"
        } else {
            "icon_emoji"
        };
        body.insert(key.to_owned(), Value::String(icon.to_owned()));
    }
}

/// The message with the title above it, between `open` and `close` (bold in the service's
/// markup).
pub(crate) fn with_title(title: Option<&str>, message: &str, open: &str, close: &str) -> String {
    match title {
        Some(t) => format!("{open}{t}{close}\n{message}"),
        None => message.to_owned(),
    }
}
