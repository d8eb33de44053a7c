//! Opsgenie: the Alert API, `opsgenie://host[:port]/apiKey?priority=P3&tags=kured,reboot&…`
//! (host `api.opsgenie.com`, or `api.eu.opsgenie.com` for the EU instance).
//!
//! Each message creates an alert: a JSON POST to `https://host/v2/alerts` with the integration's
//! key as `Authorization: GenieKey …`, as Opsgenie documents it. As in shoutrrr, the alert's
//! `message` is the title (the URL's `title`, else the event's) and its `description` the
//! message, followed by the URL's `description`; every other field comes from the parameter of
//! its name: `alias`, `entity`, `source`, `priority` (P1 to P5), `user`, `note`, comma-separated
//! `tags` and `actions`, `details` as `key:value,…`, and `responders` and `visibleTo` as
//! `type:name,…` (a UUID is an id; `team:NOC`, `user:jane@example.com`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use url::Url;

use crate::notify::request::{HttpRequest, set};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, host_port, is_uuid, list, origin, parameter, parse_url};

pub(crate) const SCHEMES: &[&str] = &["opsgenie"];

/// The longest alert message Opsgenie keeps, in characters.
const MESSAGE_MAX_CHARS: usize = 130;

/// A responder or viewer of an alert: a team, user, escalation or schedule, by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entity {
    kind: String,
    /// `id`, `name` (teams) or `username` (users).
    key: &'static str,
    value: String,
}

impl Entity {
    /// shoutrrr's `type:identifier`: an Opsgenie id (a lower-case UUID) for any type, else a
    /// team's name or a user's username.
    fn parse(s: &str) -> Option<Entity> {
        let (kind, identifier) = s.split_once(':')?;
        if identifier.contains(':') || identifier.is_empty() {
            return None;
        }
        let key = if is_uuid(identifier) && !identifier.chars().any(|c| c.is_ascii_uppercase()) {
            "id"
        } else {
            match kind {
                "team" => "name",
                "user" => "username",
                _ => return None,
            }
        };
        Some(Entity {
            kind: kind.to_owned(),
            key,
            value: identifier.to_owned(),
        })
    }

    fn json(&self) -> Value {
        json!({ "type": self.kind, self.key: self.value })
    }
}

/// An Opsgenie API integration and the fields of the alerts it creates.
#[derive(Clone, PartialEq, Eq)]
pub struct Opsgenie {
    /// `https://host[:port]/v2/alerts`.
    pub(crate) endpoint: Url,
    pub(crate) api_key: String,
    pub(crate) title: Option<String>,
    pub(crate) description: Option<String>,
    /// Fields sent as they are: alias, entity, source, priority, user, note.
    pub(crate) fields: Vec<(&'static str, String)>,
    pub(crate) responders: Vec<Entity>,
    pub(crate) visible_to: Vec<Entity>,
    pub(crate) actions: Vec<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) details: BTreeMap<String, String>,
}

debug_as_shown!(Opsgenie);

const S: &str = "opsgenie";

fn entities(key: &'static str, value: Option<String>) -> Result<Vec<Entity>, TargetError> {
    list(value)
        .iter()
        .map(|e| {
            Entity::parse(e).ok_or_else(|| {
                parameter(
                    S,
                    key,
                    "expected type:name or type:id, comma-separated (team:NOC, user:jane@example.com, schedule:<id>)",
                )
            })
        })
        .collect()
}

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("");
    let api_key = decode(url.path().trim_start_matches('/'));
    if host.is_empty() || api_key.is_empty() || api_key.contains('/') {
        return Err(form(
            S,
            "expected opsgenie://api.opsgenie.com/apiKey (or api.eu.opsgenie.com)",
        ));
    }
    let mut p = Params::of(S, &url);
    let title = p.take(&["title"]);
    let description = p.take(&["description"]);
    let mut fields = Vec::new();
    for key in ["alias", "entity", "source", "priority", "user", "note"] {
        if let Some(v) = p.take(&[key]) {
            fields.push((key, v));
        }
    }
    if let Some((_, priority)) = fields.iter().find(|(k, _)| *k == "priority")
        && !matches!(priority.as_str(), "P1" | "P2" | "P3" | "P4" | "P5")
    {
        return Err(parameter(S, "priority", "expected P1, P2, P3, P4 or P5"));
    }
    let responders = entities("responders", p.take(&["responders"]))?;
    let visible_to = entities("visibleTo", p.take(&["visibleto"]))?;
    let actions = list(p.take(&["actions"]));
    let tags = list(p.take(&["tags"]));
    let details = list(p.take(&["details"]))
        .iter()
        .map(|pair| {
            pair.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| parameter(S, "details", "expected key:value, comma-separated"))
        })
        .collect::<Result<_, _>>()?;
    p.finish()?;
    let endpoint = parse_url(S, &format!("{}/v2/alerts", origin(S, &url, "https")?))?;
    Ok(Target::new(Opsgenie {
        endpoint,
        api_key,
        title,
        description,
        fields,
        responders,
        visible_to,
        actions,
        tags,
        details,
    }))
}

impl Service for Opsgenie {
    fn scheme(&self) -> &'static str {
        "opsgenie"
    }

    fn shown(&self) -> String {
        format!("opsgenie://{}/{REDACTED}", host_port(&self.endpoint))
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.api_key.clone()]
    }

    /// One alert. Without any title the message itself is the alert's message (cut to
    /// Opsgenie's 130 characters, whole in the description if longer).
    fn requests(&self, title: &str, message: &str) -> Vec<HttpRequest> {
        let title = self.title.as_deref().unwrap_or(title);
        let (alert, description) = if !title.is_empty() {
            (title.to_owned(), message.to_owned())
        } else if message.chars().count() > MESSAGE_MAX_CHARS {
            (message.to_owned(), message.to_owned())
        } else {
            (message.to_owned(), String::new())
        };
        let alert: String = alert.chars().take(MESSAGE_MAX_CHARS).collect();
        let description = match (description.is_empty(), &self.description) {
            (true, Some(extra)) => extra.clone(),
            (false, Some(extra)) => format!("{description}\n{extra}"),
            (_, None) => description,
        };
        let mut body = Map::new();
        body.insert("message".to_owned(), Value::from(alert));
        if !description.is_empty() {
            body.insert("description".to_owned(), Value::from(description));
        }
        for (key, value) in &self.fields {
            set(&mut body, key, Some(value));
        }
        let entities = |list: &[Entity]| Value::from(list.iter().map(Entity::json).collect::<Vec<_>>());
        if !self.responders.is_empty() {
            body.insert("responders".to_owned(), entities(&self.responders));
        }
        if !self.visible_to.is_empty() {
            body.insert("visibleTo".to_owned(), entities(&self.visible_to));
        }
        if !self.actions.is_empty() {
            body.insert("actions".to_owned(), Value::from(self.actions.clone()));
        }
        if !self.tags.is_empty() {
            body.insert("tags".to_owned(), Value::from(self.tags.clone()));
        }
        if !self.details.is_empty() {
            let details: Map<String, Value> = self
                .details
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            body.insert("details".to_owned(), Value::Object(details));
        }
        vec![
            HttpRequest::post_json(self.endpoint.clone(), &Value::Object(body))
                .header("Authorization", format!("GenieKey {}", self.api_key)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, one, parsed, requests};

    const KEY: &str = "eb243592-faa2-4ba2-a551q-1afdf565c889";

    #[test]
    fn opsgenie_forms() {
        let o: Opsgenie = parsed(&format!("opsgenie://api.opsgenie.com/{KEY}"));
        assert_eq!(o.endpoint.as_str(), "https://api.opsgenie.com/v2/alerts");
        assert_eq!(o.api_key, KEY);
        assert!(o.fields.is_empty() && o.responders.is_empty() && o.title.is_none());

        let o: Opsgenie = parsed(&format!(
            "opsgenie://api.eu.opsgenie.com:8443/{KEY}?alias=kured&priority=P2&tags=kured,reboot&actions=Ack&details=cluster:prod,zone:a&responders=team:NOC,user:jane@example.com,schedule:4513b7ea-3b91-438f-b7e4-e3e54af9147c&visibleTo=team:ops&title=Reboots&description=See+runbook"
        ));
        assert_eq!(o.endpoint.as_str(), "https://api.eu.opsgenie.com:8443/v2/alerts");
        assert_eq!(
            o.fields,
            [("alias", "kured".to_owned()), ("priority", "P2".to_owned())]
        );
        assert_eq!(o.tags, ["kured", "reboot"]);
        assert_eq!(o.actions, ["Ack"]);
        assert_eq!(
            o.details,
            BTreeMap::from([
                ("cluster".to_owned(), "prod".to_owned()),
                ("zone".to_owned(), "a".to_owned())
            ])
        );
        assert_eq!(
            o.responders.iter().map(Entity::json).collect::<Vec<_>>(),
            [
                json!({ "type": "team", "name": "NOC" }),
                json!({ "type": "user", "username": "jane@example.com" }),
                json!({ "type": "schedule", "id": "4513b7ea-3b91-438f-b7e4-e3e54af9147c" }),
            ]
        );
        assert_eq!(o.visible_to.len(), 1);
        assert_eq!(
            (o.title.as_deref(), o.description.as_deref()),
            (Some("Reboots"), Some("See runbook"))
        );
    }

    #[test]
    fn opsgenie_bad_values_name_the_parameter() {
        let base = format!("opsgenie://api.opsgenie.com/{KEY}");
        for (query, key) in [
            ("priority=high", "priority"),
            ("responders=NOC", "responders"),
            ("responders=schedule:nightly", "responders"),
            ("visibleTo=team:", "visibleTo"),
            ("details=novalue", "details"),
        ] {
            let e = err(&format!("{base}?{query}"));
            assert!(e.contains(&format!("parameter \"{key}\"")), "{query}: {e}");
        }
        assert!(err(&format!("{base}?severity=1")).contains("unknown parameter \"severity\""));
        assert!(err("opsgenie://api.opsgenie.com/").contains("apiKey"));
        assert!(err("opsgenie://api.opsgenie.com/a/b").contains("apiKey"));
        let e = err("opsgenie:///S3CRETKEY");
        assert!(!e.contains("S3CRET"), "{e}");
    }

    #[test]
    fn opsgenie_hides_the_key() {
        let url = "opsgenie://api.opsgenie.com/SECRETKEY?tags=a";
        assert_redacted(url, "SECRET");
        assert_eq!(
            parsed::<Opsgenie>(url).shown(),
            "opsgenie://api.opsgenie.com/<redacted>"
        );
    }

    #[test]
    fn opsgenie_creates_the_documented_alert() {
        let r = one(&format!(
            "opsgenie://api.opsgenie.com/{KEY}?priority=P3&tags=kured&responders=team:NOC&details=cluster:prod&description=See+runbook"
        ));
        assert_eq!(r.method.as_str(), "POST");
        assert_eq!(r.url.as_str(), "https://api.opsgenie.com/v2/alerts");
        assert_eq!(r.header_value("Authorization"), Some(format!("GenieKey {KEY}").as_str()));
        assert_eq!(r.header_value("Content-Type"), Some("application/json"));
        assert_eq!(
            r.json_body(),
            json!({
                "message": "Starting drain",
                "description": "Draining node n1\nSee runbook",
                "priority": "P3",
                "tags": ["kured"],
                "responders": [{ "type": "team", "name": "NOC" }],
                "details": { "cluster": "prod" },
            })
        );
        // The URL's title wins over the event's.
        let r = one(&format!("opsgenie://api.opsgenie.com/{KEY}?title=Reboots"));
        assert_eq!(
            r.json_body(),
            json!({ "message": "Reboots", "description": "Draining node n1" })
        );
        // Without any title: the message is the alert, cut to 130 characters.
        let o: Opsgenie = parsed(&format!("opsgenie://api.opsgenie.com/{KEY}"));
        let short = o.requests("", "Draining node n1");
        assert_eq!(short[0].json_body(), json!({ "message": "Draining node n1" }));
        let long = "x".repeat(200);
        let body = o.requests("", &long)[0].json_body();
        assert_eq!(body["message"].as_str().map(str::len), Some(130));
        assert_eq!(body["description"], long.as_str());
        assert_eq!(requests(&format!("opsgenie://api.opsgenie.com/{KEY}"), "m").len(), 1);
    }
}
