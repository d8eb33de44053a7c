//! Microsoft Teams: an Office 365 connector webhook (MessageCard) or a Workflows / Power
//! Automate webhook (Adaptive Card). `teams://group@tenant/altId/groupOwner[/extraId]?host=…`
//! and `teams+https://<webhook URL>`.

use std::fmt;

use serde_json::{Map, Value, json};
use url::Url;

use crate::notify::request::{HttpRequest, set};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{
    Params, decode, form, host_port, is_hex32, is_token, is_uuid, non_empty, parse_url, secret_segments,
    segments,
};

pub(crate) const SCHEMES: &[&str] = &["teams", "teams+https", "teams+http"];

/// The Adaptive Card schema version that Teams Workflows render (1.2 and earlier, per Microsoft).
const ADAPTIVE_CARD_VERSION: &str = "1.2";

/// A Teams target.
#[derive(Clone, PartialEq, Eq)]
pub struct Teams {
    pub(crate) dest: TeamsDest,
    pub(crate) title: Option<String>,
    pub(crate) color: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum TeamsDest {
    Connector(Url),
    Workflow(Url),
}


debug_as_shown!(Teams);

impl fmt::Debug for TeamsDest {
    /// The host only: path and query are the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeamsDest::Connector(url) => write!(f, "Connector({}/{REDACTED})", host_port(url)),
            TeamsDest::Workflow(url) => write!(f, "Workflow({}/{REDACTED})", host_port(url)),
        }
    }
}

pub(crate) fn parse(scheme: &str, value: &str) -> Result<Target, TargetError> {
    match scheme {
        "teams" => parse_teams(value),
        _ => parse_teams_url(&value["teams+".len()..]),
    }
    .map(Target::new)
}

impl Service for Teams {
    fn scheme(&self) -> &'static str {
        "teams"
    }

    fn shown(&self) -> String {
        match &self.dest {
            TeamsDest::Connector(url) => {
                format!("teams://{REDACTED}?host={}", url.host_str().unwrap_or(""))
            }
            TeamsDest::Workflow(url) => format!("teams+{}://{}/{REDACTED}", url.scheme(), host_port(url)),
        }
    }

    fn secrets(&self) -> Vec<String> {
        let (TeamsDest::Connector(url) | TeamsDest::Workflow(url)) = &self.dest;
        let mut secrets = vec![url.path().to_owned()];
        secrets.extend(secret_segments(url));
        secrets.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
        secrets
    }

    /// A connector's MessageCard, or a Workflows message carrying an Adaptive Card.
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let t = self;
        vec![
    match &t.dest {
        TeamsDest::Connector(hook) => {
            let mut card = Map::new();
            card.insert("@type".to_owned(), json!("MessageCard"));
            card.insert("@context".to_owned(), json!("http://schema.org/extensions"));
            // A MessageCard needs a summary (the notification preview); the title, or the message.
            card.insert(
                "summary".to_owned(),
                Value::String(t.title.clone().unwrap_or_else(|| message.to_owned())),
            );
            set(&mut card, "title", t.title.as_deref());
            set(&mut card, "themeColor", t.color.as_deref());
            card.insert("text".to_owned(), Value::String(message.to_owned()));
            HttpRequest::post_json(hook.clone(), &Value::Object(card))
        }
        TeamsDest::Workflow(hook) => {
            let mut blocks = Vec::new();
            if let Some(title) = &t.title {
                blocks.push(json!({ "type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true }));
            }
            blocks.push(json!({ "type": "TextBlock", "text": message, "wrap": true }));
            let body = json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": ADAPTIVE_CARD_VERSION,
                        "body": blocks,
                    },
                }],
            });
            HttpRequest::post_json(hook.clone(), &body)
        }
    }]
    }
}

/// The connector host shoutrrr assumes when a `teams://` URL names none (the retired
/// `outlook.office.com`, whose path starts with `webhook` rather than `webhookb2`).
const TEAMS_LEGACY_HOST: &str = "outlook.office.com";

/// `teams://group@tenant/altId/groupOwner[/extraId]?host=org.webhook.office.com`.
fn parse_teams(value: &str) -> Result<Teams, TargetError> {
    const S: &str = "teams";
    let url = parse_url(S, value)?;
    let group = decode(url.username());
    let tenant = url.host_str().map(decode).unwrap_or_default();
    let parts = segments(&url);
    if !(2..=3).contains(&parts.len()) {
        return Err(form(
            S,
            "expected teams://group@tenant/altId/groupOwner[/extraId]?host=…",
        ));
    }
    if !is_uuid(&group) || !is_uuid(&tenant) {
        return Err(form(S, "group and tenant must be the UUIDs of the webhook URL"));
    }
    if !is_hex32(&parts[0]) || !is_uuid(&parts[1]) {
        return Err(form(
            S,
            "altId must be 32 hex digits and groupOwner a UUID, as in the webhook URL",
        ));
    }
    if let Some(extra) = parts.get(2)
        && !is_token(extra)
    {
        return Err(form(S, "extraId has characters a webhook URL does not"));
    }
    let mut p = Params::of(S, &url);
    let host = p.take(&["host"]).unwrap_or_else(|| TEAMS_LEGACY_HOST.to_owned());
    let title = p.take(&["title"]);
    let color = p.take(&["color"]);
    p.finish()?;
    let path = if host == TEAMS_LEGACY_HOST {
        "webhook"
    } else {
        "webhookb2"
    };
    let mut hook = format!(
        "https://{host}/{path}/{group}@{tenant}/IncomingWebhook/{}/{}",
        parts[0], parts[1]
    );
    if let Some(extra) = parts.get(2) {
        hook.push('/');
        hook.push_str(extra);
    }
    Ok(Teams {
        dest: TeamsDest::Connector(parse_url(S, &hook)?),
        title,
        color,
    })
}

/// `teams+https://<webhook URL>`: a connector URL (`…/IncomingWebhook/…`) or a Workflows URL
/// (Power Automate, `…/workflows/…/triggers/manual/paths/invoke?…&sig=…`), as Teams shows it.
fn parse_teams_url(value: &str) -> Result<Teams, TargetError> {
    const S: &str = "teams";
    let mut url = parse_url(S, value)?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(form(S, "expected teams+https://<webhook URL as Teams shows it>"));
    }
    let mut title = None;
    let mut color = None;
    for (k, v) in url.query_pairs() {
        match k.to_ascii_lowercase().as_str() {
            "title" => title = non_empty(&v),
            "color" => color = non_empty(&v),
            _ => {}
        }
    }
    // The rest of the query goes to the webhook exactly as written: a Workflows URL's
    // signature covers it.
    let kept: Vec<&str> = url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let key = decode(pair.split('=').next().unwrap_or("")).to_ascii_lowercase();
            !pair.is_empty() && key != "title" && key != "color"
        })
        .collect();
    let kept = kept.join("&");
    url.set_query((!kept.is_empty()).then_some(kept.as_str()));
    let dest = if url.path().contains("/IncomingWebhook/") {
        TeamsDest::Connector(url)
    } else {
        TeamsDest::Workflow(url)
    };
    Ok(Teams { dest, title, color })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{err, one, parsed};

    #[test]
    fn teams_forms() {
        let ids = "11111111-4444-4444-8444-cccccccccccc@22222222-4444-4444-8444-cccccccccccc/33333333012222222222333333333344/44444444-4444-4444-8444-cccccccccccc";
        let t: Teams = parsed(&format!(
            "teams://{ids}/V2ESyij_gAljSoUQHvZoZYzlpAoAXExyOl26dlf1xHEx05?host=contoso.webhook.office.com&color=FF0000&title=Alert"
        ));
        assert_eq!(
            t.dest,
            TeamsDest::Connector(
                Url::parse("https://contoso.webhook.office.com/webhookb2/11111111-4444-4444-8444-cccccccccccc@22222222-4444-4444-8444-cccccccccccc/IncomingWebhook/33333333012222222222333333333344/44444444-4444-4444-8444-cccccccccccc/V2ESyij_gAljSoUQHvZoZYzlpAoAXExyOl26dlf1xHEx05")
                    .expect("url")
            )
        );
        assert_eq!(
            (t.title.as_deref(), t.color.as_deref()),
            (Some("Alert"), Some("FF0000"))
        );

        let t: Teams = parsed(&format!("teams://{ids}"));
        let TeamsDest::Connector(url) = t.dest else {
            panic!()
        };
        assert!(
            url.as_str()
                .starts_with("https://outlook.office.com/webhook/11111111"),
            "{url}"
        );

        let workflow = "https://prod-00.westeurope.logic.azure.com:443/workflows/0123abcd/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SIGSECRET";
        let t: Teams = parsed(&format!("teams+{workflow}&title=Reboots"));
        assert_eq!(t.title.as_deref(), Some("Reboots"));
        let TeamsDest::Workflow(url) = &t.dest else {
            panic!()
        };
        assert_eq!(
            url.as_str(),
            "https://prod-00.westeurope.logic.azure.com/workflows/0123abcd/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SIGSECRET"
        );
        assert!(!t.shown().contains("SIGSECRET"));

        assert!(err("teams://not-a-uuid@x/y/z").contains("UUID"));
    }

    #[test]
    fn workflow_titles_are_bold_text_blocks() {
        let r = one("teams+https://prod-00.westeurope.logic.azure.com/workflows/abc?sig=x&title=Reboots");
        assert_eq!(
            r.json_body()["attachments"][0]["content"]["body"][0],
            json!({ "type": "TextBlock", "text": "Reboots", "weight": "Bolder", "size": "Medium", "wrap": true })
        );
    }
}
