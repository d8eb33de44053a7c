//! Join (joaoapps): a push to devices, `join://shoutrrr:apikey@join/?devices=id1[,id2]&title=…&icon=…`.
//!
//! The request is Join's `sendPush` API: a POST whose query carries `apikey`, `deviceIds`,
//! `text` and the optional `title` and `icon`, as Join's API documents (and shoutrrr sends).


use reqwest::Method;

use crate::notify::request::{Expect, HttpRequest, url};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, list, parse_url};

pub(crate) const SCHEMES: &[&str] = &["join"];

const S: &str = "join";

/// Join's push endpoint.
const JOIN_SEND_PUSH: &str = "https://joinjoaomgcd.appspot.com/_ah/api/messaging/v1/sendPush";

/// An API key and the devices it pushes to.
#[derive(Clone, PartialEq, Eq)]
pub struct Join {
    pub(crate) api_key: String,
    pub(crate) devices: Vec<String>,
    pub(crate) title: Option<String>,
    pub(crate) icon: Option<String>,
}

debug_as_shown!(Join);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let url = parse_url(S, value)?;
    let api_key = url.password().map(decode).unwrap_or_default();
    if api_key.is_empty() {
        return Err(form(S, "expected join://shoutrrr:apikey@join/?devices=…"));
    }
    let mut p = Params::of(S, &url);
    let devices = list(p.take(&["devices"]));
    if devices.is_empty() {
        return Err(form(S, "no devices=… given"));
    }
    let title = p.take(&["title"]);
    let icon = p.take(&["icon"]);
    p.finish()?;
    Ok(Target::new(Join {
        api_key,
        devices,
        title,
        icon,
    }))
}

impl Service for Join {
    fn scheme(&self) -> &'static str {
        S
    }

    fn shown(&self) -> String {
        format!("join://{REDACTED}@join/?devices={}", self.devices.join(","))
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.api_key.clone()]
    }

    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let Some(mut endpoint) = url(JOIN_SEND_PUSH) else {
            return Vec::new();
        };
        {
            let mut query = endpoint.query_pairs_mut();
            query
                .append_pair("apikey", &self.api_key)
                .append_pair("deviceIds", &self.devices.join(","))
                .append_pair("text", message);
            let title = self.title.as_deref().unwrap_or(title);
            if !title.is_empty() {
                query.append_pair("title", title);
            }
            if let Some(icon) = &self.icon {
                query.append_pair("icon", icon);
            }
        }
        vec![HttpRequest {
            method: Method::POST,
            url: endpoint,
            headers: vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            basic_auth: None,
            body: Vec::new(),
            expect: Expect::Success,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, one, parsed};

    #[test]
    fn join_forms() {
        let j: Join = parsed("join://shoutrrr:AP1K3Y@join/?devices=d1,d2&title=Reboots&icon=https://x/i.png");
        assert_eq!(j.api_key, "AP1K3Y");
        assert_eq!(j.devices, ["d1", "d2"]);
        assert_eq!(
            (j.title.as_deref(), j.icon.as_deref()),
            (Some("Reboots"), Some("https://x/i.png"))
        );
    }

    #[test]
    fn bad_join_urls_name_what_is_wrong() {
        assert!(err("join://join/?devices=d1").contains("apikey"));
        assert!(err("join://shoutrrr:k@join/").contains("devices"));
        assert!(err("join://shoutrrr:k@join/?devices=d1&sound=x").contains("unknown parameter \"sound\""));
    }

    #[test]
    fn join_requests_and_redaction() {
        let r = one("join://shoutrrr:AP1K3Y@join/?devices=d1,d2");
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(
            r.url.as_str(),
            "https://joinjoaomgcd.appspot.com/_ah/api/messaging/v1/sendPush?apikey=AP1K3Y&deviceIds=d1%2Cd2&text=Draining+node+n1&title=Starting+drain"
        );
        assert!(r.body.is_empty());
        assert_redacted("join://shoutrrr:SECRETKEY@join/?devices=d1", "SECRET");
    }
}
