//! ntfy: a message published to a topic,
//! `ntfy://[user:password@]host[:port]/topic?title=…&priority=…&tags=…&…&scheme=http|https`
//! (an access token as the password with an empty user: `ntfy://:tk_…@host/topic`).
//!
//! The request is ntfy's publish: `POST /<topic>` with the message as the body and the options
//! as ntfy's headers (`Title`, `Priority`, `Tags`, `Actions`, `Click`, `Attach`, `Filename`,
//! `Delay`, `Email`, `Icon`, `Cache: no`, `Firebase: no`), credentials as HTTP basic auth.


use reqwest::Method;
use url::Url;

use crate::notify::request::{Expect, HttpRequest};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, host_port, list, origin, parameter, parse_url, segments};

pub(crate) const SCHEMES: &[&str] = &["ntfy"];

const S: &str = "ntfy";

/// A topic on an ntfy server.
#[derive(Clone, PartialEq, Eq)]
pub struct Ntfy {
    /// The topic's URL (the topic is the secret of an open server).
    pub(crate) endpoint: Url,
    pub(crate) topic: String,
    pub(crate) credentials: Option<(String, String)>,
    pub(crate) title: Option<String>,
    /// 1 (min) to 5 (max); 3 is ntfy's default and is not sent.
    pub(crate) priority: u8,
    /// Headers from the other options, in ntfy's names.
    pub(crate) headers: Vec<(&'static str, String)>,
}

debug_as_shown!(Ntfy);

/// ntfy's priorities by name and number.
fn priority(value: &str) -> Option<u8> {
    match value.to_ascii_lowercase().as_str() {
        "min" | "1" => Some(1),
        "low" | "2" => Some(2),
        "default" | "3" => Some(3),
        "high" | "4" => Some(4),
        "max" | "urgent" | "5" => Some(5),
        _ => None,
    }
}

/// URL parameters passed on as a header of the same meaning: (parameter and aliases, header).
const HEADERS: &[(&[&str], &str)] = &[
    (&["click"], "Click"),
    (&["attach"], "Attach"),
    (&["filename"], "Filename"),
    (&["delay", "at", "in"], "Delay"),
    (&["email"], "Email"),
    (&["icon"], "Icon"),
];

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let url = parse_url(S, value)?;
    let topic = segments(&url).join("/");
    if topic.is_empty() {
        return Err(form(S, "expected ntfy://[user:password@]host/topic"));
    }
    let user = decode(url.username());
    let password = url.password().map(decode).unwrap_or_default();
    let credentials = (!user.is_empty() || !password.is_empty()).then_some((user, password));
    let mut p = Params::of(S, &url);
    let web = match p.take(&["scheme"]).as_deref() {
        None | Some("https") => "https",
        Some("http") => "http",
        Some(_) => return Err(parameter(S, "scheme", "expected http or https")),
    };
    let title = p.take(&["title"]);
    let priority = match p.take(&["priority"]) {
        None => 3,
        Some(v) => priority(&v).ok_or_else(|| {
            parameter(S, "priority", "expected min, low, default, high, max or 1–5")
        })?,
    };
    let mut headers = Vec::new();
    let tags = list(p.take(&["tags"]));
    if !tags.is_empty() {
        headers.push(("Tags", tags.join(",")));
    }
    if let Some(actions) = p.take(&["actions"]) {
        headers.push(("Actions", actions));
    }
    for (keys, header) in HEADERS {
        if let Some(v) = p.take(keys) {
            headers.push((header, v));
        }
    }
    if !p.bool("cache", &[], true)? {
        headers.push(("Cache", "no".to_owned()));
    }
    if !p.bool("firebase", &[], true)? {
        headers.push(("Firebase", "no".to_owned()));
    }
    p.finish()?;
    let mut endpoint = parse_url(S, &origin(S, &url, web)?)?;
    endpoint.set_path(&topic);
    Ok(Target::new(Ntfy {
        endpoint,
        topic,
        credentials,
        title,
        priority,
        headers,
    }))
}

impl Service for Ntfy {
    fn scheme(&self) -> &'static str {
        S
    }

    fn shown(&self) -> String {
        let creds = if self.credentials.is_some() {
            format!("{REDACTED}@")
        } else {
            String::new()
        };
        format!("ntfy://{creds}{}/{REDACTED}", host_port(&self.endpoint))
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.topic.clone()];
        if let Some((user, password)) = &self.credentials {
            secrets.push(user.clone());
            secrets.push(password.clone());
        }
        secrets
    }

    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let mut request = HttpRequest {
            method: Method::POST,
            url: self.endpoint.clone(),
            headers: vec![("Content-Type".to_owned(), "text/plain; charset=utf-8".to_owned())],
            basic_auth: self.credentials.clone(),
            body: message.as_bytes().to_vec(),
            expect: Expect::Success,
        };
        let title = self.title.as_deref().unwrap_or(title);
        if !title.is_empty() {
            request = request.header("Title", header_text(title));
        }
        if self.priority != 3 {
            request = request.header("Priority", self.priority.to_string());
        }
        for (name, value) in &self.headers {
            request = request.header(name, header_text(value));
        }
        vec![request]
    }
}

/// A header value as ntfy reads it: ASCII as it is, anything else in RFC 2047's encoded-word
/// form (`=?UTF-8?B?…?=`), which ntfy decodes.
fn header_text(value: &str) -> String {
    if value.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        return value.to_owned();
    }
    format!("=?UTF-8?B?{}?=", base64(value.as_bytes()))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, assert_request, err, one, parsed};

    #[test]
    fn ntfy_forms_and_defaults() {
        let n: Ntfy = parsed("ntfy://ntfy.sh/kured-reboots");
        assert_eq!(n.endpoint.as_str(), "https://ntfy.sh/kured-reboots");
        assert_eq!((n.priority, n.credentials.clone(), n.title.clone()), (3, None, None));
        assert!(n.headers.is_empty());

        let n: Ntfy = parsed(
            "ntfy://u:p4ss@ntfy.example.com:8080/ops?scheme=http&priority=high&tags=warning,skull&delay=10m&cache=no&firebase=no&click=https://x.example/",
        );
        assert_eq!(n.endpoint.as_str(), "http://ntfy.example.com:8080/ops");
        assert_eq!(n.credentials, Some(("u".to_owned(), "p4ss".to_owned())));
        assert_eq!(n.priority, 4);
        assert_eq!(
            n.headers,
            [
                ("Tags", "warning,skull".to_owned()),
                ("Click", "https://x.example/".to_owned()),
                ("Delay", "10m".to_owned()),
                ("Cache", "no".to_owned()),
                ("Firebase", "no".to_owned()),
            ]
        );
        let n: Ntfy = parsed("ntfy://:tk_T0K3N@ntfy.example.com/ops?priority=5");
        assert_eq!(n.credentials, Some((String::new(), "tk_T0K3N".to_owned())));
        assert_eq!(n.priority, 5);
    }

    #[test]
    fn bad_ntfy_urls_name_what_is_wrong() {
        assert!(err("ntfy://ntfy.sh").contains("topic"));
        assert!(err("ntfy://ntfy.sh/t?priority=loud").contains("parameter \"priority\""));
        assert!(err("ntfy://ntfy.sh/t?scheme=ftp").contains("parameter \"scheme\""));
        assert!(err("ntfy://ntfy.sh/t?cache=sometimes").contains("parameter \"cache\""));
        assert!(err("ntfy://ntfy.sh/t?markdown=yes").contains("unknown parameter \"markdown\""));
    }

    #[test]
    fn ntfy_requests_and_redaction() {
        let r = one("ntfy://u:p4ss@ntfy.example.com/ops?priority=max&tags=warning&title=Kured+%E2%9C%93");
        assert_request(&r, "POST", "https://ntfy.example.com/ops");
        assert_eq!(r.body, b"Draining node n1");
        assert_eq!(r.basic_auth, Some(("u".to_owned(), "p4ss".to_owned())));
        assert_eq!(r.header_value("Title"), Some("=?UTF-8?B?S3VyZWQg4pyT?="));
        assert_eq!(r.header_value("Priority"), Some("5"));
        assert_eq!(r.header_value("Tags"), Some("warning"));
        let r = one("ntfy://ntfy.sh/ops");
        assert_eq!(r.header_value("Title"), Some("Starting drain"));
        assert_eq!(r.header_value("Priority"), None);
        assert_redacted("ntfy://user:SECRETPW@ntfy.sh/SECRETTOPIC", "SECRET");
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output, "{input}");
        }
    }
}
