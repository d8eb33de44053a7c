//! Notification URLs in shoutrrr's syntax, parsed once at start-up into a [`Target`].
//!
//! Each service keeps the URL forms shoutrrr documents for it (see the README for the list), so
//! a `--notify-url` that works with upstream kured works here. Parsing never echoes a URL's
//! secrets: errors name the scheme and the offending part or parameter, not its value, and a
//! target's `Debug` and [`Target::shown`] forms are redacted.

use std::collections::BTreeMap;
use std::fmt;

use percent_encoding::percent_decode_str;
use url::Url;

/// What a URL shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The schemes `--notify-url` accepts.
pub const SCHEMES: &[&str] = &[
    "slack",
    "teams",
    "teams+https",
    "discord",
    "generic",
    "generic+https",
    "generic+http",
    "smtp",
    "telegram",
    "googlechat",
    "hangouts",
    "mattermost",
];

/// A notification URL that cannot be used. Messages never include a secret from the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("not a URL of the form scheme://…")]
    NoScheme,
    #[error("unknown notification scheme {scheme:?} (supported: {})", SCHEMES.join(", "))]
    UnknownScheme { scheme: String },
    #[error("{scheme}: not a valid URL ({reason})")]
    Syntax { scheme: &'static str, reason: String },
    #[error("{scheme}: {what}")]
    Form { scheme: &'static str, what: String },
    #[error("{scheme}: unknown parameter {key:?}")]
    UnknownParameter { scheme: &'static str, key: String },
    #[error("{scheme}: parameter {key:?}: {expected}")]
    Parameter {
        scheme: &'static str,
        key: String,
        expected: &'static str,
    },
}

fn parameter(scheme: &'static str, key: &str, expected: &'static str) -> TargetError {
    TargetError::Parameter {
        scheme,
        key: key.to_owned(),
        expected,
    }
}

fn form(scheme: &'static str, what: impl Into<String>) -> TargetError {
    TargetError::Form {
        scheme,
        what: what.into(),
    }
}

/// Where and how one `--notify-url` delivers.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Slack(Slack),
    Teams(Teams),
    Discord(Discord),
    Generic(Generic),
    Telegram(Telegram),
    GoogleChat(GoogleChat),
    Mattermost(Mattermost),
    Smtp(Smtp),
}

/// Slack: an incoming webhook, or the Web API's `chat.postMessage` with a bot or user token.
#[derive(Clone, PartialEq, Eq)]
pub struct Slack {
    pub(crate) dest: SlackDest,
    pub(crate) username: Option<String>,
    pub(crate) channel: Option<String>,
    pub(crate) icon: Option<String>,
    pub(crate) color: Option<String>,
    pub(crate) title: Option<String>,
    pub(crate) thread_ts: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SlackDest {
    /// The webhook URL (its path is the secret).
    Webhook(Url),
    /// `xoxb-…` / `xoxp-…`, sent as a bearer token.
    Api { token: String },
}

/// Microsoft Teams: an Office 365 connector webhook (MessageCard) or a Workflows / Power
/// Automate webhook (Adaptive Card).
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

/// Discord: a channel webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Discord {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) username: Option<String>,
    pub(crate) avatar: Option<String>,
    pub(crate) title: Option<String>,
    pub(crate) thread_id: Option<String>,
    /// The message is a JSON payload of its own, sent as it is.
    pub(crate) raw_json: bool,
}

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

/// Telegram: the Bot API's `sendMessage`, once per chat.
#[derive(Clone, PartialEq, Eq)]
pub struct Telegram {
    pub(crate) token: String,
    pub(crate) chats: Vec<TelegramChat>,
    pub(crate) notification: bool,
    pub(crate) preview: bool,
    pub(crate) parse_mode: ParseMode,
    pub(crate) title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TelegramChat {
    pub(crate) id: String,
    pub(crate) thread: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseMode {
    /// Plain text: escaped and sent as HTML, as shoutrrr does.
    None,
    Html,
    Markdown,
    MarkdownV2,
}

/// Google Chat: an incoming webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct GoogleChat {
    pub(crate) url: Url,
}

/// Mattermost: an incoming webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct Mattermost {
    pub(crate) url: Url,
    pub(crate) username: Option<String>,
    pub(crate) channel: Option<String>,
    pub(crate) icon: Option<String>,
    pub(crate) title: Option<String>,
}

/// E-mail through an SMTP server.
#[derive(Clone, PartialEq, Eq)]
pub struct Smtp {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) from: String,
    pub(crate) from_name: Option<String>,
    pub(crate) to: Vec<String>,
    pub(crate) subject: Option<String>,
    pub(crate) auth: SmtpAuth,
    pub(crate) encryption: Encryption,
    pub(crate) starttls: bool,
    pub(crate) html: bool,
    pub(crate) client_host: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SmtpAuth {
    None,
    Plain,
    Login,
    OAuth2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encryption {
    None,
    ExplicitTls,
    ImplicitTls,
    Auto,
}

/// How a message travels to an SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SmtpTls {
    /// Plain text throughout.
    None,
    /// STARTTLS if the server offers it, else plain text (never with credentials).
    Opportunistic,
    /// STARTTLS, or no mail.
    Required,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
}

/// The port SMTPS listens on, where `encryption=Auto` means implicit TLS.
const SMTPS_PORT: u16 = 465;
/// SMTP's own port, shoutrrr's default when the URL names none.
const SMTP_PORT: u16 = 25;

impl Smtp {
    /// The TLS mode: shoutrrr's `encryption` and `usestarttls`, except that a password never
    /// travels in plain text unless `encryption=None` says so.
    pub(crate) fn tls(&self) -> SmtpTls {
        match self.encryption {
            Encryption::None => SmtpTls::None,
            Encryption::ImplicitTls => SmtpTls::Implicit,
            Encryption::ExplicitTls => SmtpTls::Required,
            Encryption::Auto if self.port == SMTPS_PORT => SmtpTls::Implicit,
            Encryption::Auto if !self.starttls => SmtpTls::None,
            Encryption::Auto if self.auth != SmtpAuth::None => SmtpTls::Required,
            Encryption::Auto => SmtpTls::Opportunistic,
        }
    }
}

impl Target {
    /// Parses one `--notify-url` (surrounding quotes already stripped).
    pub fn parse(value: &str) -> Result<Target, TargetError> {
        let (scheme, rest) = value.split_once("://").ok_or(TargetError::NoScheme)?;
        let lower = scheme.to_ascii_lowercase();
        match lower.as_str() {
            "slack" => parse_slack(rest).map(Target::Slack),
            "teams" => parse_teams(value).map(Target::Teams),
            "teams+https" | "teams+http" => parse_teams_url(&value["teams+".len()..]).map(Target::Teams),
            "discord" => parse_discord(value).map(Target::Discord),
            "generic" => parse_generic(value, None).map(Target::Generic),
            "generic+https" => parse_generic(value, Some("https")).map(Target::Generic),
            "generic+http" => parse_generic(value, Some("http")).map(Target::Generic),
            "telegram" => parse_telegram(value).map(Target::Telegram),
            "googlechat" | "hangouts" => parse_googlechat(value).map(Target::GoogleChat),
            "mattermost" => parse_mattermost(value).map(Target::Mattermost),
            "smtp" => parse_smtp(value).map(Target::Smtp),
            _ => Err(TargetError::UnknownScheme {
                scheme: shown_scheme(scheme),
            }),
        }
    }

    /// The deprecated `--slack-hook-url`: a Slack-style JSON payload posted to the URL as given
    /// (Slack's own, or any Slack-compatible webhook), with `--slack-username` and
    /// `--slack-channel`.
    pub fn slack_hook(url: Url, username: &str, channel: Option<&str>) -> Target {
        Target::Slack(Slack {
            dest: SlackDest::Webhook(url),
            username: non_empty(username),
            channel: channel.and_then(non_empty),
            icon: None,
            color: None,
            title: None,
            thread_ts: None,
        })
    }

    /// Applies `--slack-username` and `--slack-channel` where a Slack URL sets neither.
    pub fn with_slack_defaults(self, username: &str, channel: Option<&str>) -> Target {
        match self {
            Target::Slack(mut s) => {
                if s.username.is_none() {
                    s.username = non_empty(username);
                }
                if s.channel.is_none() {
                    s.channel = channel.and_then(non_empty);
                }
                Target::Slack(s)
            }
            other => other,
        }
    }

    /// The scheme as metrics and logs name it.
    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Slack(_) => "slack",
            Target::Teams(_) => "teams",
            Target::Discord(_) => "discord",
            Target::Generic(_) => "generic",
            Target::Telegram(_) => "telegram",
            Target::GoogleChat(_) => "googlechat",
            Target::Mattermost(_) => "mattermost",
            Target::Smtp(_) => "smtp",
        }
    }

    /// The target without its secrets, for logs and reports.
    pub fn shown(&self) -> String {
        match self {
            Target::Slack(s) => match &s.dest {
                SlackDest::Webhook(url) => match url.host_str() {
                    Some(host) if url.host_str() != Some("hooks.slack.com") => {
                        format!("slack webhook {}://{host}/{REDACTED}", url.scheme())
                    }
                    _ => format!("slack://hook:{REDACTED}@webhook"),
                },
                SlackDest::Api { token } => {
                    let kind = token.get(..4).unwrap_or("xoxb");
                    let channel = s.channel.as_deref().unwrap_or("");
                    format!("slack://{kind}:{REDACTED}@{channel}")
                }
            },
            Target::Teams(t) => match &t.dest {
                TeamsDest::Connector(url) => {
                    format!("teams://{REDACTED}?host={}", url.host_str().unwrap_or(""))
                }
                TeamsDest::Workflow(url) => format!("teams+{}://{}/{REDACTED}", url.scheme(), host_port(url)),
            },
            Target::Discord(d) => format!("discord://{REDACTED}@{}", d.id),
            Target::Generic(g) => format!("generic+{}://{}/{REDACTED}", g.url.scheme(), host_port(&g.url)),
            Target::Telegram(t) => {
                let chats: Vec<&str> = t.chats.iter().map(|c| c.id.as_str()).collect();
                format!("telegram://{REDACTED}@telegram?chats={}", chats.join(","))
            }
            Target::GoogleChat(g) => format!("googlechat://{}/{REDACTED}", host_port(&g.url)),
            Target::Mattermost(m) => format!("mattermost://{}/{REDACTED}", host_port(&m.url)),
            Target::Smtp(s) => {
                let creds = if s.username.is_empty() && s.password.is_empty() {
                    String::new()
                } else {
                    format!("{REDACTED}@")
                };
                format!("smtp://{creds}{}:{}/?to={}", s.host, s.port, s.to.join(","))
            }
        }
    }

    /// Strings that must never appear in a log line or an error: tokens, passwords, the secret
    /// parts of webhook URLs.
    pub(crate) fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        match self {
            Target::Slack(s) => match &s.dest {
                SlackDest::Webhook(url) => {
                    secrets.push(url.path().to_owned());
                    secrets.extend(secret_segments(url));
                    secrets.extend(url.query().map(str::to_owned));
                }
                SlackDest::Api { token } => {
                    secrets.push(token.clone());
                    secrets.extend(token.split('-').skip(1).map(str::to_owned));
                }
            },
            Target::Teams(t) => {
                let (TeamsDest::Connector(url) | TeamsDest::Workflow(url)) = &t.dest;
                secrets.push(url.path().to_owned());
                secrets.extend(secret_segments(url));
                secrets.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
            }
            Target::Discord(d) => secrets.push(d.token.clone()),
            Target::Generic(g) => {
                secrets.push(g.url.path().to_owned());
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
            }
            Target::Telegram(t) => {
                secrets.push(t.token.clone());
                secrets.extend(t.token.split_once(':').map(|(_, s)| s.to_owned()));
            }
            Target::GoogleChat(g) => {
                secrets.push(g.url.path().to_owned());
                secrets.extend(g.url.query_pairs().map(|(_, v)| v.into_owned()));
            }
            Target::Mattermost(m) => {
                secrets.push(m.url.path().to_owned());
                secrets.extend(secret_segments(&m.url));
            }
            Target::Smtp(s) => {
                secrets.push(s.password.clone());
                secrets.push(s.username.clone());
            }
        }
        // Short strings (a path of "/", a one-letter user) would blank out ordinary words.
        secrets.retain(|s| s.len() >= MIN_SECRET_LEN);
        secrets.sort();
        secrets.dedup();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
    }
}

/// The path segments of a webhook URL that identify or authorise it; the services' fixed words
/// (`services`, `IncomingWebhook`, …) are not secret.
fn secret_segments(url: &Url) -> Vec<String> {
    const PUBLIC: &[&str] = &[
        "services",
        "webhook",
        "webhookb2",
        "IncomingWebhook",
        "hooks",
        "workflows",
        "triggers",
        "manual",
        "paths",
        "invoke",
        "powerautomate",
        "automations",
        "direct",
    ];
    url.path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !PUBLIC.contains(s))
        .map(str::to_owned)
        .collect()
}

/// Path segments of a generic URL at least this long are treated as secrets: tokens are longer,
/// while `api`, `v1` or `webhook` are not worth blanking out of error messages.
const GENERIC_SEGMENT_SECRET_LEN: usize = 8;

/// Secrets shorter than this are not scrubbed from messages: a path of "/" or a one-letter
/// user name would blank out ordinary text, and real tokens are far longer.
const MIN_SECRET_LEN: usize = 4;

/// `text` with every secret of `target` replaced by [`REDACTED`].
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

impl fmt::Debug for SlackDest {
    /// The host only: the path or token is the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlackDest::Webhook(url) => write!(f, "Webhook({}/{REDACTED})", host_port(url)),
            SlackDest::Api { .. } => write!(f, "Api({REDACTED})"),
        }
    }
}

impl fmt::Debug for TeamsDest {
    /// The host only: path and query are the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TeamsDest::Connector(url) => write!(f, "Connector({}/{REDACTED})", host_port(url)),
            TeamsDest::Workflow(url) => write!(f, "Workflow({}/{REDACTED})", host_port(url)),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Target").field(&self.shown()).finish()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

/// A scheme as an error may show it: short, and only scheme characters.
fn shown_scheme(scheme: &str) -> String {
    if !scheme.is_empty()
        && scheme.len() <= 32
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        scheme.to_owned()
    } else {
        REDACTED.to_owned()
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn parse_url(scheme: &'static str, value: &str) -> Result<Url, TargetError> {
    // The reason from the url crate names the kind of problem, never the input.
    Url::parse(value).map_err(|e| TargetError::Syntax {
        scheme,
        reason: e.to_string(),
    })
}

/// Query parameters with lower-cased keys; the first value of a repeated key wins, as in
/// shoutrrr.
fn params(url: &Url) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (k, v) in url.query_pairs() {
        map.entry(k.to_ascii_lowercase())
            .or_insert_with(|| v.into_owned());
    }
    map
}

/// Takes the first of `keys` present (aliases), removing all of them.
fn take(params: &mut BTreeMap<String, String>, keys: &[&str]) -> Option<String> {
    let mut found = None;
    for key in keys {
        if let Some(v) = params.remove(*key)
            && found.is_none()
        {
            found = Some(v);
        }
    }
    found.filter(|v| !v.is_empty())
}

fn reject_unknown(scheme: &'static str, params: &BTreeMap<String, String>) -> Result<(), TargetError> {
    match params.keys().next() {
        Some(key) => Err(TargetError::UnknownParameter {
            scheme,
            key: key.clone(),
        }),
        None => Ok(()),
    }
}

/// shoutrrr's booleans: yes/no, true/false, 1/0 and their initials.
fn parse_bool(
    scheme: &'static str,
    key: &str,
    value: Option<String>,
    default: bool,
) -> Result<bool, TargetError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "t" | "1" => Ok(true),
        "no" | "n" | "false" | "f" | "0" => Ok(false),
        _ => Err(parameter(scheme, key, "expected yes or no")),
    }
}

/// A Slack token as shoutrrr reads it: an optional type (`hook`, `xoxb`, `xoxp`, … followed by
/// `:` or `-`), then three parts joined by one kind of separator (`-`, `/` or `,`): two of
/// upper-case letters and digits (Slack's workspace and channel ids), then one of letters and
/// digits. Unlike shoutrrr we do not insist on Slack's current lengths (9+ and 24+).
fn slack_token(token: &str) -> Option<(String, [&str; 3])> {
    let (kind, rest) = if let Some(rest) = token
        .strip_prefix("hook")
        .and_then(|r| r.strip_prefix([':', '-']))
    {
        ("hook".to_owned(), rest)
    } else if token.starts_with("xox")
        && token.len() > 5
        && token.is_char_boundary(4)
        && matches!(token.as_bytes().get(4), Some(b':' | b'-'))
    {
        (token[..4].to_owned(), &token[5..])
    } else {
        ("hook".to_owned(), token.strip_prefix(':').unwrap_or(token))
    };
    let separator = rest.chars().find(|c| matches!(c, '-' | '/' | ','))?;
    let mut parts = rest.split(separator);
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
    let id = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let secret = !c.is_empty() && c.chars().all(|c| c.is_ascii_alphanumeric());
    (parts.next().is_none() && id(a) && id(b) && secret).then_some((kind, [a, b, c]))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Letters, digits, `_` and `-`: what webhook tokens are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// `slack://hook:T…-B…-X…@webhook`, `slack://xoxb:…@C0123456`, and the legacy
/// `slack://[botname@]T…/B…/X…`.
fn parse_slack(rest: &str) -> Result<Slack, TargetError> {
    const S: &str = "slack";
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let main = main.split('#').next().unwrap_or(main).trim_end_matches('/');
    let (token, channel, botname) = match main.rsplit_once('@') {
        Some((token, channel)) if !channel.contains('/') => (decode(token), decode(channel), None),
        _ => {
            let (botname, token) = match main.split_once('@') {
                Some((b, t)) => (non_empty(&decode(b)), t),
                None => (None, main),
            };
            (decode(token), "webhook".to_owned(), botname)
        }
    };
    let (kind, [a, b, c]) = slack_token(&token).ok_or_else(|| {
        form(
            S,
            "the token is not a Slack token (expected hook:T…-B…-X… for a webhook or xoxb:… for the API)",
        )
    })?;
    let dest = if kind == "hook" {
        let url = format!("https://hooks.slack.com/services/{a}/{b}/{c}");
        SlackDest::Webhook(parse_url(S, &url)?)
    } else {
        if channel.is_empty() || channel == "webhook" {
            return Err(form(S, "an API token needs a channel: slack://xoxb:…@C0123456"));
        }
        SlackDest::Api {
            token: format!("{kind}-{a}-{b}-{c}"),
        }
    };
    let dummy = format!("slack://x/?{}", query.unwrap_or(""));
    let mut p = params(&parse_url(S, &dummy)?);
    let username = take(&mut p, &["botname", "username"]).or(botname);
    let icon = take(&mut p, &["icon", "icon_emoji", "icon_url"]);
    let color = take(&mut p, &["color"]);
    let title = take(&mut p, &["title"]);
    let thread_ts = take(&mut p, &["thread_ts"]);
    reject_unknown(S, &p)?;
    Ok(Slack {
        dest,
        username,
        channel: (channel != "webhook" && !channel.is_empty()).then_some(channel),
        icon,
        color,
        title,
        thread_ts,
    })
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
    let parts: Vec<String> = url
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
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
    let mut p = params(&url);
    let host = take(&mut p, &["host"]).unwrap_or_else(|| TEAMS_LEGACY_HOST.to_owned());
    let title = take(&mut p, &["title"]);
    let color = take(&mut p, &["color"]);
    reject_unknown(S, &p)?;
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

fn set_query(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

/// `discord://token@webhookid`.
fn parse_discord(value: &str) -> Result<Discord, TargetError> {
    const S: &str = "discord";
    let url = parse_url(S, value)?;
    let token = decode(url.username());
    let id = url.host_str().map(decode).unwrap_or_default();
    if !is_token(&token) {
        return Err(form(S, "expected discord://token@webhookid"));
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(form(S, "the webhook id (after the @) must be a number"));
    }
    let mut p = params(&url);
    let username = take(&mut p, &["username"]);
    let avatar = take(&mut p, &["avatar", "avatarurl"]);
    let title = take(&mut p, &["title"]);
    let thread_id = take(&mut p, &["thread_id"]);
    let raw_json = parse_bool(S, "json", take(&mut p, &["json"]), false)?;
    // Presentation settings of shoutrrr's embeds: accepted, the message is sent as content.
    for key in [
        "color",
        "colordebug",
        "colorerror",
        "colorinfo",
        "colorwarn",
        "splitlines",
    ] {
        p.remove(key);
    }
    reject_unknown(S, &p)?;
    if let Some(t) = &thread_id
        && !t.chars().all(|c| c.is_ascii_digit())
    {
        return Err(parameter(S, "thread_id", "expected a number"));
    }
    Ok(Discord {
        id,
        token,
        username,
        avatar,
        title,
        thread_id,
        raw_json,
    })
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
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
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

/// `telegram://token@telegram?chats=@channel,-1001234[:thread]`.
fn parse_telegram(value: &str) -> Result<Telegram, TargetError> {
    const S: &str = "telegram";
    let url = parse_url(S, value)?;
    let token = format!(
        "{}:{}",
        decode(url.username()),
        url.password().map(decode).unwrap_or_default()
    );
    if !token
        .split_once(':')
        .is_some_and(|(id, key)| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) && is_token(key))
    {
        return Err(form(S, "expected telegram://<bot token>@telegram?chats=…"));
    }
    if url.host_str() != Some("telegram") {
        return Err(form(
            S,
            "the host must be \"telegram\": telegram://<token>@telegram?chats=…",
        ));
    }
    let mut p = params(&url);
    let chats = take(&mut p, &["chats", "channels"]).ok_or_else(|| form(S, "no chats=… given"))?;
    let chats = chats
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(parse_chat)
        .collect::<Result<Vec<_>, _>>()?;
    if chats.is_empty() {
        return Err(form(S, "no chats=… given"));
    }
    let notification = parse_bool(S, "notification", take(&mut p, &["notification"]), true)?;
    let preview = parse_bool(S, "preview", take(&mut p, &["preview"]), true)?;
    let parse_mode = match take(&mut p, &["parsemode"])
        .map(|m| m.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("none") => ParseMode::None,
        Some("html") => ParseMode::Html,
        Some("markdown") => ParseMode::Markdown,
        Some("markdownv2") => ParseMode::MarkdownV2,
        Some(_) => {
            return Err(parameter(
                S,
                "parsemode",
                "expected None, HTML, Markdown or MarkdownV2",
            ));
        }
    };
    let title = take(&mut p, &["title"]);
    reject_unknown(S, &p)?;
    Ok(Telegram {
        token,
        chats,
        notification,
        preview,
        parse_mode,
        title,
    })
}

fn parse_chat(chat: &str) -> Result<TelegramChat, TargetError> {
    let (id, thread) = match chat.rsplit_once(':') {
        Some((id, thread)) => {
            let thread = thread
                .parse::<i64>()
                .map_err(|_| parameter("telegram", "chats", "expected chat[:thread], the thread a number"))?;
            (id, Some(thread))
        }
        None => (chat, None),
    };
    let valid = id.strip_prefix('@').map_or_else(
        || {
            id.strip_prefix('-')
                .unwrap_or(id)
                .chars()
                .all(|c| c.is_ascii_digit())
                && !id.is_empty()
        },
        |name| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
    );
    if !valid {
        return Err(parameter(
            "telegram",
            "chats",
            "expected @channelname or a numeric chat id",
        ));
    }
    Ok(TelegramChat {
        id: id.to_owned(),
        thread,
    })
}

/// `googlechat://chat.googleapis.com/v1/spaces/…/messages?key=…&token=…` (the webhook URL with
/// `https` replaced); `hangouts://` is its old name.
fn parse_googlechat(value: &str) -> Result<GoogleChat, TargetError> {
    const S: &str = "googlechat";
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("");
    if host.is_empty() || url.path().len() <= 1 {
        return Err(form(
            S,
            "expected the webhook URL with googlechat:// for https://",
        ));
    }
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let mut hook = parse_url(S, &format!("https://{host}{port}{}", url.path()))?;
    hook.set_query(url.query());
    Ok(GoogleChat { url: hook })
}

/// `mattermost://[username@]host[:port]/token[/channel][?icon=…&disabletls=yes&title=…]`.
fn parse_mattermost(value: &str) -> Result<Mattermost, TargetError> {
    const S: &str = "mattermost";
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("");
    let parts: Vec<String> = url
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    if host.is_empty() || parts.is_empty() || parts.len() > 2 || !is_token(&parts[0]) {
        return Err(form(S, "expected mattermost://[username@]host/token[/channel]"));
    }
    let mut p = params(&url);
    let disable_tls = parse_bool(S, "disabletls", take(&mut p, &["disabletls"]), false)?;
    let icon = take(&mut p, &["icon"]);
    let title = take(&mut p, &["title"]);
    let username = take(&mut p, &["username"]).or_else(|| non_empty(&decode(url.username())));
    let channel = take(&mut p, &["channel"]).or_else(|| parts.get(1).cloned());
    reject_unknown(S, &p)?;
    let scheme = if disable_tls { "http" } else { "https" };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hook = parse_url(S, &format!("{scheme}://{host}{port}/hooks/{}", parts[0]))?;
    Ok(Mattermost {
        url: hook,
        username,
        channel,
        icon,
        title,
    })
}

/// `smtp://[user:password@]host[:port]/?from=…&to=…[,…]` with shoutrrr's parameters.
fn parse_smtp(value: &str) -> Result<Smtp, TargetError> {
    const S: &str = "smtp";
    let url = parse_url(S, value)?;
    let host = url.host_str().unwrap_or("").trim_matches(['[', ']']).to_owned();
    if host.is_empty() {
        return Err(form(
            S,
            "expected smtp://[user:password@]host[:port]/?from=…&to=…",
        ));
    }
    let username = decode(url.username());
    let password = url.password().map(decode).unwrap_or_default();
    let mut p = params(&url);
    // A '+' in an address arrives as a space from query decoding; shoutrrr puts it back.
    let address = |a: String| a.trim().replace(' ', "+");
    let from = take(&mut p, &["fromaddress", "from"])
        .map(address)
        .ok_or_else(|| form(S, "no from=… address given"))?;
    let to: Vec<String> = take(&mut p, &["toaddresses", "to"])
        .unwrap_or_default()
        .split(',')
        .map(|a| address(a.to_owned()))
        .filter(|a| !a.is_empty())
        .collect();
    if to.is_empty() {
        return Err(form(S, "no to=… address given"));
    }
    for a in std::iter::once(&from).chain(&to) {
        a.parse::<lettre::Address>().map_err(|_| {
            parameter(
                S,
                if *a == from { "from" } else { "to" },
                "expected e-mail addresses such as kured@example.com",
            )
        })?;
    }
    let from_name = take(&mut p, &["fromname"]);
    let subject = take(&mut p, &["subject", "title"]);
    let auth = match take(&mut p, &["auth"]).map(|a| a.to_ascii_lowercase()).as_deref() {
        None | Some("unknown") if username.is_empty() => SmtpAuth::None,
        None | Some("unknown") | Some("plain") => SmtpAuth::Plain,
        Some("none") => SmtpAuth::None,
        Some("login") => SmtpAuth::Login,
        Some("oauth2") => SmtpAuth::OAuth2,
        Some("crammd5") => {
            return Err(parameter(
                S,
                "auth",
                "CRAM-MD5 is not supported; use Plain or Login (over TLS)",
            ));
        }
        Some(_) => {
            return Err(parameter(
                S,
                "auth",
                "expected None, Plain, Login, OAuth2 or Unknown",
            ));
        }
    };
    let encryption = match take(&mut p, &["encryption"])
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("auto") => Encryption::Auto,
        Some("none") => Encryption::None,
        Some("explicittls") => Encryption::ExplicitTls,
        Some("implicittls") => Encryption::ImplicitTls,
        Some(_) => {
            return Err(parameter(
                S,
                "encryption",
                "expected None, ExplicitTLS, ImplicitTLS or Auto",
            ));
        }
    };
    let starttls = parse_bool(S, "usestarttls", take(&mut p, &["usestarttls", "starttls"]), true)?;
    let html = parse_bool(S, "usehtml", take(&mut p, &["usehtml"]), false)?;
    let client_host = take(&mut p, &["clienthost"]).unwrap_or_else(|| "localhost".to_owned());
    reject_unknown(S, &p)?;
    Ok(Smtp {
        host,
        port: url.port().unwrap_or(SMTP_PORT),
        username,
        password,
        from,
        from_name,
        to,
        subject,
        auth,
        encryption,
        starttls,
        html,
        client_host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOK: &str = "slack://hook:T00000000-B00000000-XXXXXXXXXXXXXXXXXXXXXXXX@webhook";

    fn parse(value: &str) -> Target {
        Target::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn err(value: &str) -> String {
        match Target::parse(value) {
            Ok(t) => panic!("{value} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn slack_forms() {
        let cases = [
            (
                HOOK,
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            (
                "slack://hook:T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX@webhook",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            (
                "slack://T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
            (
                "slack://bot@T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX?color=good",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            ),
        ];
        for (url, hook) in cases {
            let Target::Slack(s) = parse(url) else {
                panic!("{url}: not slack")
            };
            assert_eq!(
                s.dest,
                SlackDest::Webhook(Url::parse(hook).expect("url")),
                "{url}"
            );
            assert_eq!(s.channel, None, "{url}");
        }
        let Target::Slack(s) = parse("slack://bot@T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX?color=good")
        else {
            panic!()
        };
        assert_eq!(
            (s.username.as_deref(), s.color.as_deref()),
            (Some("bot"), Some("good"))
        );

        let Target::Slack(s) = parse(
            "slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L?color=good&title=Great+News&icon=man-scientist&botname=Shoutrrrbot",
        ) else {
            panic!()
        };
        assert_eq!(
            s.dest,
            SlackDest::Api {
                token: "xoxb-123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N".to_owned()
            }
        );
        assert_eq!(s.channel.as_deref(), Some("C001CH4NN3L"));
        assert_eq!(s.title.as_deref(), Some("Great News"));
        assert_eq!(s.icon.as_deref(), Some("man-scientist"));
        assert_eq!(s.username.as_deref(), Some("Shoutrrrbot"));
    }

    #[test]
    fn upstream_notifier_cases() {
        // Upstream kured's own table: old lowercase tokens are not valid any more.
        assert!(Target::parse("slack://xxxx/yyyy/zzzz").is_err());
        parse(
            "slack://xoxb:123456789012-1234567890123-4mt0t4l1YL3g1T5L4cK70k3N@C001CH4NN3L?color=good&title=Great+News&icon=man-scientist&botname=Shoutrrrbot",
        );
        parse(
            "slack://hook:WNA3PBYV6-F20DUQND3RQ-Webc4MAvoacrpPakR8phF0zi@webhook?color=good&title=Great+News&icon=man-scientist&botname=Shoutrrrbot",
        );
    }

    #[test]
    fn teams_forms() {
        let ids = "11111111-4444-4444-8444-cccccccccccc@22222222-4444-4444-8444-cccccccccccc/33333333012222222222333333333344/44444444-4444-4444-8444-cccccccccccc";
        let Target::Teams(t) = parse(&format!(
            "teams://{ids}/V2ESyij_gAljSoUQHvZoZYzlpAoAXExyOl26dlf1xHEx05?host=contoso.webhook.office.com&color=FF0000&title=Alert"
        )) else {
            panic!()
        };
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

        let Target::Teams(t) = parse(&format!("teams://{ids}")) else {
            panic!()
        };
        let TeamsDest::Connector(url) = t.dest else {
            panic!()
        };
        assert!(
            url.as_str()
                .starts_with("https://outlook.office.com/webhook/11111111"),
            "{url}"
        );

        let workflow = "https://prod-00.westeurope.logic.azure.com:443/workflows/0123abcd/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SIGSECRET";
        let Target::Teams(t) = parse(&format!("teams+{workflow}&title=Reboots")) else {
            panic!()
        };
        assert_eq!(t.title.as_deref(), Some("Reboots"));
        let TeamsDest::Workflow(url) = &t.dest else {
            panic!()
        };
        assert_eq!(
            url.as_str(),
            "https://prod-00.westeurope.logic.azure.com/workflows/0123abcd/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=SIGSECRET"
        );
        assert!(!Target::Teams(t).shown().contains("SIGSECRET"));

        assert!(err("teams://not-a-uuid@x/y/z").contains("UUID"));
    }

    #[test]
    fn generic_forms() {
        let Target::Generic(g) = parse(
            "generic://example.com/api/v1/hook?template=json&@Authorization=Bearer+abc&@XApiKey=k1&$cluster=prod&foo=bar&__title=forwarded&titlekey=subject",
        ) else {
            panic!()
        };
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

        let Target::Generic(g) = parse("generic://example.com:8080/x?disabletls=yes&method=put") else {
            panic!()
        };
        assert_eq!(g.url.as_str(), "http://example.com:8080/x");
        assert_eq!(g.method, "PUT");
        assert!(!g.json);

        // The shortcut forwards the service's own keys, as shoutrrr's escaping does.
        let Target::Generic(g) =
            parse("generic+https://user:pw@example.com/hook?template=json&@Authorization=x")
        else {
            panic!()
        };
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
    fn other_services() {
        let Target::Discord(d) = parse(
            "discord://W3dE2OZz4C13_4z-uHfD@693853386302554172?username=kured&thread_id=1234567890123456789",
        ) else {
            panic!()
        };
        assert_eq!(
            (d.id.as_str(), d.token.as_str()),
            ("693853386302554172", "W3dE2OZz4C13_4z-uHfD")
        );
        assert_eq!(d.thread_id.as_deref(), Some("1234567890123456789"));

        let Target::Telegram(t) = parse(
            "telegram://110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw@telegram?chats=@kured,-1001234:42&notification=no&parsemode=html",
        ) else {
            panic!()
        };
        assert_eq!(t.token, "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw");
        assert_eq!(
            t.chats,
            [
                TelegramChat {
                    id: "@kured".to_owned(),
                    thread: None
                },
                TelegramChat {
                    id: "-1001234".to_owned(),
                    thread: Some(42)
                }
            ]
        );
        assert!(!t.notification && t.preview);
        assert_eq!(t.parse_mode, ParseMode::Html);

        let Target::GoogleChat(g) =
            parse("googlechat://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz")
        else {
            panic!()
        };
        assert_eq!(
            g.url.as_str(),
            "https://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz"
        );
        assert!(matches!(
            parse("hangouts://chat.googleapis.com/v1/spaces/FOO/messages?key=bar&token=baz"),
            Target::GoogleChat(_)
        ));

        let Target::Mattermost(m) =
            parse("mattermost://bot@mm.example.com/bywsw8zt5jgpte3nm65qjiru6h/alerts?icon=ghost")
        else {
            panic!()
        };
        assert_eq!(
            m.url.as_str(),
            "https://mm.example.com/hooks/bywsw8zt5jgpte3nm65qjiru6h"
        );
        assert_eq!(
            (m.username.as_deref(), m.channel.as_deref()),
            (Some("bot"), Some("alerts"))
        );
        let Target::Mattermost(m) = parse("mattermost://mm.example.com:8065/tok123?disabletls=yes") else {
            panic!()
        };
        assert_eq!(m.url.as_str(), "http://mm.example.com:8065/hooks/tok123");
    }

    #[test]
    fn smtp_forms_and_tls_modes() {
        let Target::Smtp(s) = parse(
            "smtp://user:p%40ss@mail.example.com:587/?from=kured@example.com&to=a@example.com,b+tag@example.com&subject=Reboots",
        ) else {
            panic!()
        };
        assert_eq!((s.host.as_str(), s.port), ("mail.example.com", 587));
        assert_eq!((s.username.as_str(), s.password.as_str()), ("user", "p@ss"));
        assert_eq!(s.to, ["a@example.com", "b+tag@example.com"]);
        assert_eq!(s.subject.as_deref(), Some("Reboots"));
        assert_eq!((s.auth, s.tls()), (SmtpAuth::Plain, SmtpTls::Required));

        let tls = |q: &str| match parse(&format!("smtp://{q}")) {
            Target::Smtp(s) => s.tls(),
            _ => panic!(),
        };
        assert_eq!(tls("relay/?from=a@b.c&to=d@e.f"), SmtpTls::Opportunistic);
        assert_eq!(tls("relay:465/?from=a@b.c&to=d@e.f"), SmtpTls::Implicit);
        assert_eq!(tls("relay/?from=a@b.c&to=d@e.f&usestarttls=no"), SmtpTls::None);
        assert_eq!(
            tls("u:p@relay/?from=a@b.c&to=d@e.f&encryption=None"),
            SmtpTls::None
        );
        assert_eq!(
            tls("relay:2525/?from=a@b.c&to=d@e.f&encryption=ImplicitTLS"),
            SmtpTls::Implicit
        );
        assert_eq!(
            tls("relay/?from=a@b.c&to=d@e.f&encryption=ExplicitTLS"),
            SmtpTls::Required
        );

        assert!(err("smtp://relay/?to=d@e.f").contains("from"));
        assert!(err("smtp://relay/?from=a@b.c").contains("to"));
        assert!(err("smtp://relay/?from=a@b.c&to=nobody").contains("\"to\""));
        assert!(err("smtp://relay/?from=a@b.c&to=d@e.f&encryption=rot13").contains("encryption"));
    }

    #[test]
    fn unknown_schemes_and_parameters_are_named() {
        assert!(err("pushover://shoutrrr:token@user").contains("unknown notification scheme \"pushover\""));
        assert!(err("no scheme here").contains("scheme://"));
        assert!(
            err(&format!("{HOOK}&colour=red").replace("@webhook&", "@webhook?"))
                .contains("unknown parameter \"colour\"")
        );
    }

    #[test]
    fn errors_debug_and_shown_forms_never_carry_secrets() {
        let secret_urls = [
            HOOK,
            "slack://xoxb:123456789012-1234567890123-SECRETSECRETSECRETSECRET@C0123",
            "teams+https://prod-1.westeurope.logic.azure.com/workflows/SECRETID/triggers/manual/paths/invoke?sig=SECRETSIG",
            "discord://SECRETTOKEN@1234",
            "generic://user:SECRETPW@example.com/SECRETPATH?@Authorization=SECRETHDR&token=SECRETQ",
            "telegram://123:SECRETTOKEN@telegram?chats=@c",
            "googlechat://chat.googleapis.com/v1/spaces/S/messages?key=SECRETKEY&token=SECRETTOK",
            "mattermost://mm.example.com/SECRETTOKEN",
            "smtp://user:SECRETPW@mail.example.com/?from=a@b.c&to=d@e.f",
        ];
        for url in secret_urls {
            let target = parse(url);
            for text in [target.shown(), format!("{target:?}"), target.to_string()] {
                assert!(!text.contains("SECRET"), "{url}: {text}");
                assert!(!text.contains("XXXXXXXXXXXX"), "{url}: {text}");
            }
            let secrets = target.secrets();
            assert!(!secrets.is_empty(), "{url}");
            let scrubbed = scrub(&format!("error at {url}"), &secrets);
            assert!(!scrubbed.contains("SECRET"), "{url}: {scrubbed}");
            assert!(!scrubbed.contains("XXXXXXXXXXXX"), "{url}: {scrubbed}");
        }
        // Parse errors of malformed URLs name no secret either.
        for bad in [
            "slack://hook:SECRETSECRET@webhook",
            "discord://SECRET@notanumber",
            "telegram://SECRET@telegram",
            "smtp://user:SECRET@/?from=a@b.c",
            "teams://SECRET@x/y/z",
            "mattermost://SECRET@/",
        ] {
            let e = err(bad);
            assert!(!e.contains("SECRET"), "{bad}: {e}");
        }
    }
}
