//! Google Chat: an incoming webhook, `googlechat://chat.googleapis.com/v1/spaces/…/messages?key=…&token=…`
//! (the webhook URL with `https` replaced); `hangouts://` is its old name.


use serde_json::json;
use url::Url;

use crate::notify::request::HttpRequest;
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{form, host_port, parse_url, port_suffix};

pub(crate) const SCHEMES: &[&str] = &["googlechat", "hangouts"];

/// A Google Chat webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct GoogleChat {
    pub(crate) url: Url,
}

debug_as_shown!(GoogleChat);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    const S: &str = "googlechat";
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("");
    if host.is_empty() || url.path().len() <= 1 {
        return Err(form(
            S,
            "expected the webhook URL with googlechat:// for https://",
        ));
    }
    let mut hook = parse_url(S, &format!("https://{host}{}{}", port_suffix(&url), url.path()))?;
    hook.set_query(url.query());
    Ok(Target::new(GoogleChat { url: hook }))
}

impl Service for GoogleChat {
    fn scheme(&self) -> &'static str {
        "googlechat"
    }

    fn shown(&self) -> String {
        format!("googlechat://{}/{REDACTED}", host_port(&self.url))
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.url.path().to_owned()];
        secrets.extend(self.url.query_pairs().map(|(_, v)| v.into_owned()));
        secrets
    }

    /// The incoming webhook: a simple text message.
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let mut request = HttpRequest::post_json(self.url.clone(), &json!({ "text": message }));
        request.headers = vec![(
            "Content-Type".to_owned(),
            "application/json; charset=UTF-8".to_owned(),
        )];
        vec![request]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{parse, parsed};

    #[test]
    fn googlechat_forms() {
        let g: GoogleChat = parsed("googlechat://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz");
        assert_eq!(
            g.url.as_str(),
            "https://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz"
        );
        assert_eq!(
            parse("hangouts://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz").scheme(),
            "googlechat"
        );
    }
}
