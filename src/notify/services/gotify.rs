//! Gotify: a message to a self-hosted server through its REST API,
//! `gotify://host[:port][/path]/token[?priority=…&title=…&disabletls=yes]`.
//!
//! The request is Gotify's `POST /message` with the application token in the `X-Gotify-Key`
//! header (Gotify also takes it as a `token` query parameter; a header keeps it out of access
//! logs), and a JSON body of `message`, `title` and `priority`.


use serde_json::json;
use url::Url;

use crate::notify::request::HttpRequest;
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, form, host_port, origin, parse_url, segments, web_scheme};

pub(crate) const SCHEMES: &[&str] = &["gotify"];

const S: &str = "gotify";

/// A Gotify application on a server.
#[derive(Clone, PartialEq, Eq)]
pub struct Gotify {
    /// `…/message` on the server, its sub-path included.
    pub(crate) endpoint: Url,
    pub(crate) token: String,
    pub(crate) priority: i64,
    pub(crate) title: Option<String>,
}

debug_as_shown!(Gotify);

/// Gotify's application tokens: `A` and 14 more of letters, digits, `.`, `-` and `_` (the rule
/// of Gotify's server, which shoutrrr checks too).
fn is_gotify_token(token: &str) -> bool {
    token.len() == 15
        && token.starts_with('A')
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let url = parse_url(S, value)?;
    let mut parts = segments(&url);
    let token = parts.pop().unwrap_or_default();
    if !is_gotify_token(&token) {
        return Err(form(
            S,
            "expected gotify://host[:port][/path]/token with an application token (A and 14 more characters)",
        ));
    }
    let mut p = Params::of(S, &url);
    let disable_tls = p.bool("disabletls", &[], false)?;
    let priority = p
        .parsed("priority", "expected a whole number such as 0, 5 or 8")?
        .unwrap_or(0);
    let title = p.take(&["title"]);
    p.finish()?;
    let mut path = String::new();
    for part in &parts {
        path.push('/');
        path.push_str(part);
    }
    let endpoint = parse_url(
        S,
        &format!("{}{path}/message", origin(S, &url, web_scheme(disable_tls))?),
    )?;
    Ok(Target::new(Gotify {
        endpoint,
        token,
        priority,
        title,
    }))
}

impl Service for Gotify {
    fn scheme(&self) -> &'static str {
        S
    }

    fn shown(&self) -> String {
        format!("gotify://{}/{REDACTED}", host_port(&self.endpoint))
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.token.clone()]
    }

    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let body = json!({
            "message": message,
            "title": self.title.as_deref().unwrap_or(title),
            "priority": self.priority,
        });
        vec![HttpRequest::post_json(self.endpoint.clone(), &body).header("X-Gotify-Key", self.token.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, assert_request, err, one, parsed};

    #[test]
    fn gotify_forms_and_defaults() {
        let g: Gotify = parsed("gotify://gotify.example.com:443/AzyoeNS.D4iJLVa/?title=Great+News&priority=1");
        assert_eq!(g.endpoint.as_str(), "https://gotify.example.com/message");
        assert_eq!(g.token, "AzyoeNS.D4iJLVa");
        assert_eq!((g.priority, g.title.as_deref()), (1, Some("Great News")));

        let g: Gotify = parsed("gotify://example.com:8080/path/to/gotify/AzyoeNS.D4iJLVa?disabletls=yes");
        assert_eq!(
            g.endpoint.as_str(),
            "http://example.com:8080/path/to/gotify/message"
        );
        assert_eq!((g.priority, g.title), (0, None));
    }

    #[test]
    fn bad_gotify_urls_name_what_is_wrong() {
        assert!(err("gotify://example.com/").contains("application token"));
        assert!(err("gotify://example.com/BzyoeNS.D4iJLVa").contains("application token"));
        assert!(err("gotify://example.com/AzyoeNS.D4iJLVa?priority=high").contains("parameter \"priority\""));
        assert!(err("gotify://example.com/AzyoeNS.D4iJLVa?disabletls=maybe").contains("parameter \"disabletls\""));
        assert!(err("gotify://example.com/AzyoeNS.D4iJLVa?sound=x").contains("unknown parameter \"sound\""));
        let e = err("gotify://example.com/AzyoeNS.D4iJLVa?priority=SECRET");
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn gotify_requests_and_redaction() {
        let r = one("gotify://gotify.example.com/AzyoeNS.D4iJLVa?priority=5");
        assert_request(&r, "POST", "https://gotify.example.com/message");
        assert_eq!(r.header_value("X-Gotify-Key"), Some("AzyoeNS.D4iJLVa"));
        assert_eq!(
            r.json_body(),
            json!({ "message": "Draining node n1", "title": "Starting drain", "priority": 5 })
        );
        assert!(!r.url.as_str().contains("AzyoeNS"));
        assert_redacted("gotify://gotify.example.com/AzyoeNS.D4iJLVa", "AzyoeNS");
    }
}
