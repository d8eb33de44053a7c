//! IFTTT: the Webhooks service's trigger, once per event,
//! `ifttt://webhookkey/?events=event1[,event2]&value1=…&value2=…&value3=…&messagevalue=2&titlevalue=0&title=…`.
//!
//! The request is `POST https://maker.ifttt.com/trigger/{event}/with/key/{key}` with a JSON body
//! of `value1`, `value2` and `value3`; the message fills the value `messagevalue` names (2 by
//! default), the title the one `titlevalue` names (none by default).


use serde_json::json;

use crate::notify::request::{HttpRequest, url};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, is_token, list, parameter, parse_url};

pub(crate) const SCHEMES: &[&str] = &["ifttt"];

const S: &str = "ifttt";

/// IFTTT's Webhooks trigger; the event and key follow.
const IFTTT_TRIGGER: &str = "https://maker.ifttt.com/trigger";

/// A Webhooks key and the events it triggers.
#[derive(Clone, PartialEq, Eq)]
pub struct Ifttt {
    pub(crate) key: String,
    pub(crate) events: Vec<String>,
    /// `value1`, `value2`, `value3` as the URL sets them.
    pub(crate) values: [Option<String>; 3],
    /// Which value (1–3) carries the message.
    pub(crate) message_value: usize,
    /// Which value (1–3) carries the title, if any.
    pub(crate) title_value: Option<usize>,
    pub(crate) title: Option<String>,
}

debug_as_shown!(Ifttt);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let url = parse_url(S, value)?;
    let key = url.host_str().map(decode).unwrap_or_default();
    if !is_token(&key) {
        return Err(form(S, "expected ifttt://webhookkey/?events=…"));
    }
    let mut p = Params::of(S, &url);
    let events = list(p.take(&["events"]));
    if events.is_empty() {
        return Err(form(S, "no events=… given"));
    }
    if !events.iter().all(|e| is_token(e)) {
        return Err(parameter(
            S,
            "events",
            "expected event names of letters, digits, _ and -",
        ));
    }
    let values = [p.take(&["value1"]), p.take(&["value2"]), p.take(&["value3"])];
    let message_value: usize = p
        .parsed("messagevalue", "expected 1, 2 or 3")?
        .unwrap_or(2);
    if !(1..=3).contains(&message_value) {
        return Err(parameter(S, "messagevalue", "expected 1, 2 or 3"));
    }
    let title_value: usize = p
        .parsed("titlevalue", "expected 0 (none), 1, 2 or 3")?
        .unwrap_or(0);
    if title_value > 3 {
        return Err(parameter(S, "titlevalue", "expected 0 (none), 1, 2 or 3"));
    }
    if title_value == message_value {
        return Err(parameter(
            S,
            "titlevalue",
            "must name another value than messagevalue",
        ));
    }
    let title = p.take(&["title"]);
    p.finish()?;
    Ok(Target::new(Ifttt {
        key,
        events,
        values,
        message_value,
        title_value: (title_value > 0).then_some(title_value),
        title,
    }))
}

impl Service for Ifttt {
    fn scheme(&self) -> &'static str {
        S
    }

    fn shown(&self) -> String {
        format!("ifttt://{REDACTED}/?events={}", self.events.join(","))
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.key.clone()]
    }

    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let mut values = self.values.clone();
        values[self.message_value - 1] = Some(message.to_owned());
        if let Some(n) = self.title_value {
            values[n - 1] = Some(self.title.as_deref().unwrap_or(title).to_owned());
        }
        let [v1, v2, v3] = values.map(Option::unwrap_or_default);
        let body = json!({ "value1": v1, "value2": v2, "value3": v3 });
        self.events
            .iter()
            .filter_map(|event| url(&format!("{IFTTT_TRIGGER}/{event}/with/key/{}", self.key)))
            .map(|endpoint| HttpRequest::post_json(endpoint, &body))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, parsed, requests};

    #[test]
    fn ifttt_forms_and_defaults() {
        let i: Ifttt = parsed("ifttt://dKeYdKeY/?events=reboot,ops");
        assert_eq!((i.key.as_str(), i.events.as_slice()), ("dKeYdKeY", &["reboot".to_owned(), "ops".to_owned()][..]));
        assert_eq!((i.message_value, i.title_value), (2, None));

        let i: Ifttt = parsed("ifttt://k3y/?events=e&messagevalue=3&titlevalue=1&value2=prod&title=kured");
        assert_eq!((i.message_value, i.title_value), (3, Some(1)));
        assert_eq!(i.values, [None, Some("prod".to_owned()), None]);
    }

    #[test]
    fn bad_ifttt_urls_name_what_is_wrong() {
        assert!(err("ifttt://k3y/").contains("events"));
        assert!(err("ifttt://k3y/?events=a&messagevalue=4").contains("parameter \"messagevalue\""));
        assert!(err("ifttt://k3y/?events=a&titlevalue=x").contains("parameter \"titlevalue\""));
        assert!(err("ifttt://k3y/?events=a&titlevalue=2").contains("parameter \"titlevalue\""));
        assert!(err("ifttt://k3y/?events=a/b").contains("parameter \"events\""));
        assert!(err("ifttt://k3y/?events=a&value4=x").contains("unknown parameter \"value4\""));
    }

    #[test]
    fn one_trigger_per_event_with_the_values() {
        let all = requests(
            "ifttt://dKeYdKeY/?events=reboot,ops&value1=prod&titlevalue=3",
            "Draining node n1",
        );
        let urls: Vec<&str> = all.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://maker.ifttt.com/trigger/reboot/with/key/dKeYdKeY",
                "https://maker.ifttt.com/trigger/ops/with/key/dKeYdKeY"
            ]
        );
        for r in &all {
            assert_eq!(r.method.as_str(), "POST");
            assert_eq!(
                r.json_body(),
                json!({ "value1": "prod", "value2": "Draining node n1", "value3": "Starting drain" })
            );
        }
        assert_redacted("ifttt://SECRETKEY/?events=reboot", "SECRET");
    }
}
