//! Pushover: the Message API,
//! `pushover://shoutrrr:apiToken@userKey/?devices=phone,tablet&priority=1&title=…`.
//!
//! One form-encoded POST to `https://api.pushover.net/1/messages.json` carries the application's
//! API token and the user (or group) key in the body, as Pushover documents it. Devices, if any,
//! go in one `device` field, comma-separated; without them Pushover delivers to all of the
//! user's devices.


use crate::notify::request::{HttpRequest, url};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, list, parse_url};

pub(crate) const SCHEMES: &[&str] = &["pushover"];

/// Pushover's Message API.
const MESSAGES: &str = "https://api.pushover.net/1/messages.json";

/// The priorities a message may carry without the extra fields an emergency (2) needs: lowest
/// (no alert) to high. shoutrrr sends these and leaves any other value out, so Pushover uses its
/// default (normal) then; so do we.
const PRIORITIES: std::ops::RangeInclusive<i8> = -2..=1;

/// A Pushover application and the user it notifies.
#[derive(Clone, PartialEq, Eq)]
pub struct Pushover {
    pub(crate) token: String,
    pub(crate) user: String,
    pub(crate) devices: Vec<String>,
    pub(crate) priority: Option<i8>,
    pub(crate) title: Option<String>,
}

debug_as_shown!(Pushover);

/// `pushover://shoutrrr:apiToken@userKey/?devices=…&priority=…&title=…` (the user name before
/// the token is not used).
pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    const S: &str = "pushover";
    let url = parse_url(S, value)?;
    let token = decode(url.password().unwrap_or(""));
    let user = url.host_str().map(decode).unwrap_or_default();
    if user.is_empty() {
        return Err(form(
            S,
            "the user key is missing: expected pushover://shoutrrr:apiToken@userKey/?devices=…",
        ));
    }
    if token.is_empty() {
        return Err(form(
            S,
            "the API token is missing: expected pushover://shoutrrr:apiToken@userKey/?devices=…",
        ));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(form(S, "nothing but the query may follow the user key"));
    }
    let mut p = Params::of(S, &url);
    let devices = list(p.take(&["devices"]));
    let priority = p.parsed::<i8>("priority", "expected a whole number from -2 to 1")?;
    let title = p.take(&["title"]);
    p.finish()?;
    Ok(Target::new(Pushover {
        token,
        user,
        devices,
        priority,
        title,
    }))
}

impl Service for Pushover {
    fn scheme(&self) -> &'static str {
        "pushover"
    }

    fn shown(&self) -> String {
        let mut shown = format!("pushover://{REDACTED}@{REDACTED}/");
        if !self.devices.is_empty() {
            shown.push_str("?devices=");
            shown.push_str(&self.devices.join(","));
        }
        shown
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.token.clone(), self.user.clone()]
    }

    /// One message: `token`, `user`, `message`, and `device`, `title` (the URL's, else the
    /// event's) and `priority` where there are any.
    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let Some(endpoint) = url(MESSAGES) else {
            return Vec::new();
        };
        let devices = self.devices.join(",");
        let title = self.title.as_deref().unwrap_or(title);
        let priority = self
            .priority
            .filter(|p| PRIORITIES.contains(p))
            .map(|p| p.to_string());
        let mut fields = vec![
            ("token", self.token.as_str()),
            ("user", self.user.as_str()),
            ("message", message),
        ];
        if !devices.is_empty() {
            fields.push(("device", &devices));
        }
        if !title.is_empty() {
            fields.push(("title", title));
        }
        if let Some(priority) = &priority {
            fields.push(("priority", priority));
        }
        vec![HttpRequest::post_form(endpoint, &fields)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, one, parsed};

    const URL: &str = "pushover://shoutrrr:azGDORePK8gMaC0QOYAMyEEuzJnyUi@uQiRzpo4DXghDmr9QzzfQu27cmVRsG/?devices=phone,tablet&priority=1&title=Reboots";

    #[test]
    fn pushover_forms_and_defaults() {
        let p: Pushover = parsed(URL);
        assert_eq!(p.token, "azGDORePK8gMaC0QOYAMyEEuzJnyUi");
        assert_eq!(p.user, "uQiRzpo4DXghDmr9QzzfQu27cmVRsG", "the key's case is kept");
        assert_eq!(p.devices, ["phone", "tablet"]);
        assert_eq!((p.priority, p.title.as_deref()), (Some(1), Some("Reboots")));

        let p: Pushover = parsed("pushover://shoutrrr:tok3n@us3r");
        assert_eq!((p.token.as_str(), p.user.as_str()), ("tok3n", "us3r"));
        assert!(p.devices.is_empty());
        assert_eq!((p.priority, p.title), (None, None));
        // Keys are case-insensitive, as in shoutrrr.
        let p: Pushover = parsed("pushover://shoutrrr:t@u/?Devices=phone&PRIORITY=-2");
        assert_eq!((p.devices.as_slice(), p.priority), (&["phone".to_owned()][..], Some(-2)));
    }

    #[test]
    fn pushover_bad_urls_name_the_part() {
        assert!(err("pushover://shoutrrr@us3r").contains("API token is missing"));
        assert!(err("pushover://shoutrrr:tok3n@").contains("pushover:"));
        assert!(err("pushover://shoutrrr:tok3n@us3r/?priority=high").contains("parameter \"priority\""));
        assert!(err("pushover://shoutrrr:tok3n@us3r/?priority=300").contains("parameter \"priority\""));
        assert!(err("pushover://shoutrrr:tok3n@us3r/?sound=bugle").contains("unknown parameter \"sound\""));
        assert!(err("pushover://shoutrrr:tok3n@us3r/phone").contains("pushover:"));
        let e = err("pushover://shoutrrr:S3CRET@us3r/?colour=red");
        assert!(!e.contains("S3CRET"), "{e}");
    }

    #[test]
    fn pushover_hides_the_token_and_the_user_key() {
        assert_redacted(
            "pushover://shoutrrr:SECRETTOKEN@SECRETUSER/?devices=phone",
            "SECRET",
        );
        assert_eq!(
            parsed::<Pushover>("pushover://shoutrrr:SECRETTOKEN@SECRETUSER/?devices=phone").shown(),
            "pushover://<redacted>@<redacted>/?devices=phone"
        );
    }

    #[test]
    fn pushover_posts_the_documented_form() {
        let r = one(URL);
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(r.url.as_str(), "https://api.pushover.net/1/messages.json");
        assert_eq!(
            r.header_value("Content-Type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            r.form_body(),
            [
                ("token", "azGDORePK8gMaC0QOYAMyEEuzJnyUi"),
                ("user", "uQiRzpo4DXghDmr9QzzfQu27cmVRsG"),
                ("message", "Draining node n1"),
                ("device", "phone,tablet"),
                ("title", "Reboots"),
                ("priority", "1"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        // Without a title of its own, the event's; no device field without devices.
        let r = one("pushover://shoutrrr:t0ken@us3r/?priority=0");
        assert_eq!(
            r.form_body(),
            [
                ("token", "t0ken"),
                ("user", "us3r"),
                ("message", "Draining node n1"),
                ("title", "Starting drain"),
                ("priority", "0"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        // An emergency priority needs fields shoutrrr does not send: left out, as shoutrrr does.
        let r = one("pushover://shoutrrr:t0ken@us3r/?priority=2");
        assert!(r.form_body().iter().all(|(k, _)| k != "priority"));
    }
}
