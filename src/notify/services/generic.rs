//! Any HTTP endpoint: `generic://host/path?…` (https unless `disabletls=yes`) and
//! `generic+https://…` / `generic+http://…`.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Map, Value};
use url::Url;

use crate::notify::request::{Expect, HttpRequest};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{
    decode, form, host_port, parameter, parse_bool, parse_url, reject_unknown, secret_segments, set_query,
    take,
};

pub(crate) const SCHEMES: &[&str] = &["generic", "generic+https", "generic+http"];

/// Path segments of a generic URL at least this long are treated as secrets: tokens are longer,
/// while `api`, `v1` or `webhook` are not worth blanking out of error messages.
const GENERIC_SEGMENT_SECRET_LEN: usize = 8;

/// Any HTTP endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct Generic {
    /// Without user and password; with the query parameters forwarded to the endpoint.
    pub(crate) url: Url,
    pub(crate) basic_auth: Option<(String, String)>,
    pub(crate) method: String,
    pub(crate) content_type: String,
    pub(crate) json: bool,
    pub(crate) title: Option<String>,
    pub(crate) title_key: String,
    pub(crate) message_key: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) extra: Vec<(String, String)>,
}

debug_as_shown!(Generic);

pub(crate) fn parse(scheme: &str, value: &str) -> Result<Target, TargetError> {
    let explicit = match scheme {
        "generic+https" => Some("https"),
        "generic+http" => Some("http"),
        _ => None,
    };
    parse_generic(value, explicit).map(Target::new)
}

impl Service for Generic {
    fn scheme(&self) -> &'static str {
        "generic"
    }

    fn shown(&self) -> String {
        format!("generic+{}://{}/{REDACTED}", self.url.scheme(), host_port(&self.url))
    }

    fn secrets(&self) -> Vec<String> {
        let g = self;
        let mut secrets = vec![g.url.path().to_owned()];
        // Any path segment may be a token; short ones are words like `api` or `hook`.
        secrets.extend(
            secret_segments(&g.url)
                .into_iter()
                .filter(|s| s.len() >= GENERIC_SEGMENT_SECRET_LEN),
        );
        secrets.extend(g.url.query_pairs().map(|(_, v)| v.into_owned()));
        secrets.extend(g.headers.iter().map(|(_, v)| v.clone()));
        if let Some((user, password)) = &g.basic_auth {
            secrets.push(user.clone());
            secrets.push(password.clone());
        }
        secrets
    }

    /// The URL is the endpoint itself, whatever `api_base` says.
    fn follows_api_base(&self) -> bool {
        false
    }

    fn uses_tls(&self, _api_base: Option<&Url>) -> bool {
        self.url.scheme() == "https"
    }

    /// The message as the body, or with `template=json` an object of title, message and the
    /// `$key=value` extras.
    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let g = self;
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
        vec![HttpRequest {
            method: Method::from_bytes(g.method.as_bytes()).unwrap_or(Method::POST),
            url: g.url.clone(),
            headers,
            basic_auth: g.basic_auth.clone(),
            body,
            expect: Expect::Success,
        }]
    }
}

/// shoutrrr's generic service parameters; any other query parameter goes to the endpoint.
const GENERIC_KEYS: &[&str] = &[
    "contenttype",
    "disabletls",
    "template",
    "title",
    "titlekey",
    "messagekey",
    "method",
];

/// `generic://host/path?…` (https unless `disabletls=yes`) and `generic+https://…` /
/// `generic+http://…`. `@Name=value` sets a header, `$key=value` adds a field to the JSON body
/// (`template=json`), `__key=value` forwards a parameter whose name the service uses itself.
fn parse_generic(value: &str, explicit: Option<&str>) -> Result<Generic, TargetError> {
    const S: &str = "generic";
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("");
    if host.is_empty() {
        return Err(form(
            S,
            "expected generic://host/path or generic+https://host/path",
        ));
    }
    let mut headers = Vec::new();
    let mut extra = Vec::new();
    let mut own = BTreeMap::new();
    let mut forwarded = Vec::new();
    for (k, v) in url.query_pairs() {
        if let Some(name) = k.strip_prefix('@') {
            headers.push((header_name(name), v.into_owned()));
        } else if let Some(key) = k.strip_prefix('$') {
            extra.push((key.to_owned(), v.into_owned()));
        } else if let Some(key) = k.strip_prefix("__")
            && GENERIC_KEYS.contains(&key.to_ascii_lowercase().as_str())
        {
            forwarded.push((key.to_owned(), v.into_owned()));
        } else if explicit.is_none() && GENERIC_KEYS.contains(&k.to_ascii_lowercase().as_str()) {
            own.entry(k.to_ascii_lowercase())
                .or_insert_with(|| v.into_owned());
        } else {
            forwarded.push((k.into_owned(), v.into_owned()));
        }
    }
    for (name, value) in &headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(parameter(
                S,
                &format!("@{name}"),
                "expected a valid HTTP header name and value",
            ));
        }
    }
    let disable_tls = parse_bool(S, "disabletls", take(&mut own, &["disabletls"]), false)?;
    let target_scheme = explicit.unwrap_or(if disable_tls { "http" } else { "https" });
    let template = take(&mut own, &["template"]);
    let json = match template.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => false,
        Some("json") => true,
        Some(_) => {
            return Err(parameter(
                S,
                "template",
                "expected json (named templates cannot be loaded from a URL)",
            ));
        }
    };
    let method = take(&mut own, &["method"]).unwrap_or_else(|| "POST".to_owned());
    if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
        return Err(parameter(
            S,
            "method",
            "expected an HTTP method such as POST or PUT",
        ));
    }
    let content_type = take(&mut own, &["contenttype"]).unwrap_or_else(|| "application/json".to_owned());
    let title = take(&mut own, &["title"]);
    let title_key = take(&mut own, &["titlekey"]).unwrap_or_else(|| "title".to_owned());
    let message_key = take(&mut own, &["messagekey"]).unwrap_or_else(|| "message".to_owned());
    reject_unknown(S, &own)?;

    let basic_auth = (!url.username().is_empty() || url.password().is_some()).then(|| {
        (
            decode(url.username()),
            url.password().map(decode).unwrap_or_default(),
        )
    });
    let port = crate::notify::url_syntax::port_suffix(&url);
    let mut endpoint = parse_url(S, &format!("{target_scheme}://{host}{port}{}", url.path()))?;
    set_query(&mut endpoint, &forwarded);
    Ok(Generic {
        url: endpoint,
        basic_auth,
        method: method.to_ascii_uppercase(),
        content_type,
        json,
        title,
        title_key,
        message_key,
        headers,
        extra,
    })
}

/// shoutrrr's header names: `@authorization` and `@XApiKey` become `Authorization` and
/// `X-Api-Key`.
fn header_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2);
    let mut prev: Option<char> = None;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev.is_some_and(|p| p != '-') {
                out.push('-');
            }
            out.push(c);
        } else if prev.is_none_or(|p| p == '-') {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c);
        }
        prev = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{err, one, parsed};

    #[test]
    fn generic_forms() {
        let g: Generic = parsed(
            "generic://example.com/api/v1/hook?template=json&@Authorization=Bearer+abc&@XApiKey=k1&$cluster=prod&foo=bar&__title=forwarded&titlekey=subject",
        );
        assert_eq!(
            g.url.as_str(),
            "https://example.com/api/v1/hook?foo=bar&title=forwarded"
        );
        assert!(g.json);
        assert_eq!(
            g.headers,
            [
                ("Authorization".to_owned(), "Bearer abc".to_owned()),
                ("X-Api-Key".to_owned(), "k1".to_owned())
            ]
        );
        assert_eq!(g.extra, [("cluster".to_owned(), "prod".to_owned())]);
        assert_eq!(
            (g.title_key.as_str(), g.message_key.as_str()),
            ("subject", "message")
        );

        let g: Generic = parsed("generic://example.com:8080/x?disabletls=yes&method=put");
        assert_eq!(g.url.as_str(), "http://example.com:8080/x");
        assert_eq!(g.method, "PUT");
        assert!(!g.json);

        // The shortcut forwards the service's own keys, as shoutrrr's escaping does.
        let g: Generic = parsed("generic+https://user:pw@example.com/hook?template=json&@Authorization=x");
        assert_eq!(g.url.as_str(), "https://example.com/hook?template=json");
        assert!(!g.json);
        assert_eq!(g.basic_auth, Some(("user".to_owned(), "pw".to_owned())));
        assert_eq!(g.headers.len(), 1);

        assert!(err("generic://example.com/?template=news").contains("template"));
        assert!(err("generic://example.com/?@Bad%20Name=x").contains("parameter \"@Bad"));
    }

    #[test]
    fn header_names_follow_shoutrrr() {
        assert_eq!(header_name("authorization"), "Authorization");
        assert_eq!(header_name("XApiKey"), "X-Api-Key");
        assert_eq!(header_name("content-type"), "Content-Type");
    }

    #[test]
    fn generic_bodies_headers_and_methods() {
        let r = one("generic+https://u:pw@example.com/hook?@Authorization=Bearer+t&@XApiKey=k");
        assert_eq!(r.body, b"Draining node n1");
        assert_eq!(r.header_value("Content-Type"), Some("application/json"));
        assert_eq!(r.header_value("Authorization"), Some("Bearer t"));
        assert_eq!(r.header_value("X-Api-Key"), Some("k"));
        assert_eq!(r.basic_auth, Some(("u".to_owned(), "pw".to_owned())));

        let r = one(
            "generic://example.com/h?template=json&title=Custom&titlekey=subject&messagekey=body&method=PUT&contenttype=application/vnd.kured%2Bjson",
        );
        assert_eq!(r.method, Method::PUT);
        assert_eq!(
            r.json_body(),
            serde_json::json!({ "subject": "Custom", "body": "Draining node n1" })
        );
        assert_eq!(r.header_value("Content-Type"), Some("application/vnd.kured+json"));
    }
}
