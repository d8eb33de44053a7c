//! Telegram: the Bot API's `sendMessage`, once per chat;
//! `telegram://token@telegram?chats=@channel,-1001234[:thread]`.


use serde_json::json;

use crate::notify::request::{HttpRequest, url, with_title};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, is_token, parameter, parse_url};

pub(crate) const SCHEMES: &[&str] = &["telegram"];

/// Telegram's Bot API; `bot<token>/<method>` follows.
const TELEGRAM_API: &str = "https://api.telegram.org";

/// A Telegram bot and the chats it posts to.
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


debug_as_shown!(Telegram);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    parse_telegram(value).map(Target::new)
}

impl Service for Telegram {
    fn scheme(&self) -> &'static str {
        "telegram"
    }

    fn shown(&self) -> String {
        let chats: Vec<&str> = self.chats.iter().map(|c| c.id.as_str()).collect();
        format!("telegram://{REDACTED}@telegram?chats={}", chats.join(","))
    }

    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.token.clone()];
        secrets.extend(self.token.split_once(':').map(|(_, s)| s.to_owned()));
        secrets
    }

    /// `sendMessage`, once per chat. Without a parse mode the message is escaped and sent as
    /// HTML (so a title can be bold), as shoutrrr does.
    fn requests(&self, _title: &str, message: &str) -> Vec<HttpRequest> {
        let t = self;
        let Some(endpoint) = url(&format!("{TELEGRAM_API}/bot{}/sendMessage", t.token)) else {
            return Vec::new();
        };
        let (text, mode) = match t.parse_mode {
            ParseMode::None => (
                with_title(
                    t.title.as_deref().map(escape_html).as_deref(),
                    &escape_html(message),
                    "<b>",
                    "</b>",
                ),
                "HTML",
            ),
            ParseMode::Html => (with_title(t.title.as_deref(), message, "<b>", "</b>"), "HTML"),
            ParseMode::Markdown => (message.to_owned(), "Markdown"),
            ParseMode::MarkdownV2 => (message.to_owned(), "MarkdownV2"),
        };
        t.chats
            .iter()
            .map(|chat| {
                let mut body = json!({
                    "chat_id": chat.id,
                    "text": text,
                    "parse_mode": mode,
                    "disable_notification": !t.notification,
                    "disable_web_page_preview": !t.preview,
                });
                if let (Some(thread), Some(object)) = (chat.thread, body.as_object_mut()) {
                    object.insert("message_thread_id".to_owned(), json!(thread));
                }
                HttpRequest::post_json(endpoint.clone(), &body)
            })
            .collect()
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
    let mut p = Params::of(S, &url);
    let chats = p
        .take(&["chats", "channels"]).ok_or_else(|| form(S, "no chats=… given"))?;
    let chats = chats
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(parse_chat)
        .collect::<Result<Vec<_>, _>>()?;
    if chats.is_empty() {
        return Err(form(S, "no chats=… given"));
    }
    let notification = p.bool("notification", &[], true)?;
    let preview = p.bool("preview", &[], true)?;
    let parse_mode = match p
        .take(&["parsemode"])
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
    let title = p.take(&["title"]);
    p.finish()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{parsed, requests};

    #[test]
    fn telegram_form() {
        let t: Telegram = parsed(
            "telegram://110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw@telegram?chats=@kured,-1001234:42&notification=no&parsemode=html",
        );
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
    }

    #[test]
    fn titles_threads_and_options() {
        let chats = requests(
            "telegram://1:A-b_c@telegram?chats=@one,-1002:7&notification=no&preview=no&title=a<b",
            "x & y",
        );
        assert_eq!(chats.len(), 2);
        assert_eq!(chats[0].json_body()["text"], "<b>a&lt;b</b>\nx &amp; y");
        assert_eq!(chats[1].json_body()["chat_id"], "-1002");
        assert_eq!(chats[1].json_body()["message_thread_id"], 7);
        assert_eq!(chats[1].json_body()["disable_notification"], true);
        assert_eq!(chats[1].json_body()["disable_web_page_preview"], true);
        let md = requests("telegram://1:A@telegram?chats=@c&parsemode=MarkdownV2", "*b*");
        assert_eq!(
            (md[0].json_body()["text"].clone(), md[0].json_body()["parse_mode"].clone()),
            (json!("*b*"), json!("MarkdownV2"))
        );
    }
}
