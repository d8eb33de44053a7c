//! Matrix: a text message to rooms through a homeserver's client-server API,
//! `matrix://user:password@host[:port]/?rooms=!roomid:server,#alias:server&disabletls=yes&title=…`
//! or, with an access token instead of a login, `matrix://:token@host[:port]/?rooms=…`.
//!
//! One message is a short conversation, as shoutrrr holds it:
//! 1. with a user: `GET /_matrix/client/v3/login` must offer `m.login.password`, then
//!    `POST /_matrix/client/v3/login` (`m.id.user` identifier and password) gives an access
//!    token;
//! 2. without `rooms=`, `GET /_matrix/client/v3/joined_rooms` lists the rooms to send to; a room
//!    alias (`#…`, a name without `#` or `!` gets one) is joined with
//!    `POST /_matrix/client/v3/join/{alias}`, which answers its room id;
//! 3. each room gets `PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}` with
//!    `{"msgtype": "m.text", "body": …}`;
//! 4. a token from a login is given back with `POST /_matrix/client/v3/logout`, so the logins
//!    of many messages leave no devices behind on the homeserver.
//!
//! The token travels as `Authorization: Bearer`, as the Matrix specification has it. A room
//! that fails does not stop the others; the first failure is reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::notify::deliver::{Attempted, Link, SendError};
use crate::notify::request::{Expect, HttpRequest, with_title};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, host_port, list, origin, parse_url, web_scheme};

pub(crate) const SCHEMES: &[&str] = &["matrix"];

const S: &str = "matrix";

/// The client-server API's path prefix.
const CLIENT_API: &str = "/_matrix/client/v3";
/// The login flow that takes a user name and password.
const PASSWORD_LOGIN: &str = "m.login.password";

/// A homeserver account and the rooms it posts to.
#[derive(Clone, PartialEq, Eq)]
pub struct Matrix {
    /// `scheme://host[:port]` of the homeserver.
    pub(crate) server: Url,
    /// Empty: `password` is an access token.
    pub(crate) user: String,
    pub(crate) password: String,
    /// Room ids (`!…`) and aliases (`#…`); none: every joined room.
    pub(crate) rooms: Vec<String>,
    pub(crate) title: Option<String>,
}

debug_as_shown!(Matrix);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    let url = parse_url(S, value)?;
    let user = decode(url.username());
    let password = url.password().map(decode).unwrap_or_default();
    if password.is_empty() {
        return Err(form(
            S,
            "expected matrix://user:password@host or matrix://:accesstoken@host",
        ));
    }
    if url.fragment().is_some() {
        return Err(form(
            S,
            "a # starts the URL's fragment: write a room alias as %23alias:server or without the #",
        ));
    }
    let mut p = Params::of(S, &url);
    let disable_tls = p.bool("disabletls", &[], false)?;
    let rooms = list(p.take(&["rooms", "room"]))
        .into_iter()
        .map(|room| {
            if room.starts_with(['#', '!']) {
                room
            } else {
                format!("#{room}")
            }
        })
        .collect();
    let title = p.take(&["title"]);
    p.finish()?;
    let server = parse_url(S, &origin(S, &url, web_scheme(disable_tls))?)?;
    Ok(Target::new(Matrix {
        server,
        user,
        password,
        rooms,
        title,
    }))
}

impl Service for Matrix {
    fn scheme(&self) -> &'static str {
        S
    }

    fn shown(&self) -> String {
        let user = if self.user.is_empty() {
            String::new()
        } else {
            format!("{}:", self.user)
        };
        format!(
            "matrix://{user}{REDACTED}@{}/?rooms={}",
            host_port(&self.server),
            self.rooms.join(",")
        )
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.password.clone()]
    }

    fn deliver<'a>(&'a self, link: &'a Link<'a>, _title: &'a str, message: &'a str) -> Attempted<'a> {
        Box::pin(async move {
            let mut most = 0;
            let token = if self.user.is_empty() {
                self.password.clone()
            } else {
                self.login(link, &mut most).await?
            };
            let sent = self.send_to_rooms(link, &token, message, &mut most).await;
            if !self.user.is_empty() {
                // Best effort: a token left behind expires with its device's removal by an
                // administrator; the message is what counts.
                let _ = link.send(&self.call(Method::POST, &["logout"], Some(&token), json!({}))).await;
            }
            sent.map(|()| most).map_err(|(n, e)| (n.max(most), e))
        })
    }
}

#[derive(Deserialize)]
struct LoginFlows {
    #[serde(default)]
    flows: Vec<LoginFlow>,
}

#[derive(Deserialize)]
struct LoginFlow {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct LoggedIn {
    access_token: String,
}

#[derive(Deserialize)]
struct JoinedRooms {
    joined_rooms: Vec<String>,
}

#[derive(Deserialize)]
struct Joined {
    room_id: String,
}

/// Transaction ids must not repeat for one access token, across restarts too.
fn transaction_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("kured-{nanos}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An answer that is not the JSON the API documents. The body is not quoted: a login answer
/// holds a token.
fn unexpected(what: &str) -> SendError {
    SendError::Answer(format!("the Matrix homeserver's answer to {what} is not the documented JSON"))
}

impl Matrix {
    /// A request to the client-server API: `path` segments after `/_matrix/client/v3`, the token
    /// as a bearer token, a JSON body (none for GET).
    fn call(&self, method: Method, path: &[&str], token: Option<&str>, body: serde_json::Value) -> HttpRequest {
        let mut url = self.server.clone();
        url.set_path(CLIENT_API);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(path);
        }
        let mut request = if method == Method::GET {
            HttpRequest {
                method,
                url,
                headers: Vec::new(),
                basic_auth: None,
                body: Vec::new(),
                expect: Expect::Success,
            }
        } else {
            HttpRequest::json(method, url, &body)
        };
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        request
    }

    /// Sends `request` and reads its JSON answer as `T`, counting attempts in `most`.
    async fn exchange<T: for<'de> Deserialize<'de>>(
        &self,
        link: &Link<'_>,
        request: &HttpRequest,
        what: &str,
        most: &mut u32,
    ) -> Result<T, (u32, SendError)> {
        let (attempts, body) = link.send(request).await?;
        *most = (*most).max(attempts);
        serde_json::from_slice(&body).map_err(|_| (attempts, unexpected(what)))
    }

    /// Logs in with the user's password; the access token.
    async fn login(&self, link: &Link<'_>, most: &mut u32) -> Result<String, (u32, SendError)> {
        let flows: LoginFlows = self
            .exchange(link, &self.call(Method::GET, &["login"], None, json!(null)), "GET login", most)
            .await?;
        if !flows.flows.iter().any(|f| f.kind == PASSWORD_LOGIN) {
            return Err((
                *most,
                SendError::Answer("the Matrix homeserver offers no password login".to_owned()),
            ));
        }
        let body = json!({
            "type": PASSWORD_LOGIN,
            "identifier": { "type": "m.id.user", "user": self.user },
            "password": self.password,
            "initial_device_display_name": "kured",
        });
        let login: LoggedIn = self
            .exchange(link, &self.call(Method::POST, &["login"], None, body), "POST login", most)
            .await?;
        Ok(login.access_token)
    }

    /// The message to every room; the first failure, after trying every room.
    async fn send_to_rooms(
        &self,
        link: &Link<'_>,
        token: &str,
        message: &str,
        most: &mut u32,
    ) -> Result<(), (u32, SendError)> {
        let rooms = if self.rooms.is_empty() {
            let joined: JoinedRooms = self
                .exchange(
                    link,
                    &self.call(Method::GET, &["joined_rooms"], Some(token), json!(null)),
                    "joined_rooms",
                    most,
                )
                .await?;
            joined.joined_rooms
        } else {
            self.rooms.clone()
        };
        let text = with_title(self.title.as_deref(), message, "", "");
        let content = json!({ "msgtype": "m.text", "body": text });
        let mut first_failure = None;
        for room in &rooms {
            let sent = async {
                let room_id = if room.starts_with('!') {
                    room.clone()
                } else {
                    let joined: Joined = self
                        .exchange(
                            link,
                            &self.call(Method::POST, &["join", room], Some(token), json!({})),
                            "join",
                            most,
                        )
                        .await?;
                    joined.room_id
                };
                let txn = transaction_id();
                let path = ["rooms", room_id.as_str(), "send", "m.room.message", txn.as_str()];
                let (attempts, _) = link
                    .send(&self.call(Method::PUT, &path, Some(token), content.clone()))
                    .await?;
                *most = (*most).max(attempts);
                Ok::<(), (u32, SendError)>(())
            };
            if let Err(e) = sent.await {
                first_failure.get_or_insert(e);
            }
        }
        match first_failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::services::testing::{assert_redacted, err, parsed};

    #[test]
    fn matrix_forms_and_defaults() {
        let m: Matrix = parsed("matrix://kured:pa55@matrix.example.org/?rooms=!abc:example.org,ops,%23alerts:example.org");
        assert_eq!(m.server.as_str(), "https://matrix.example.org/");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("kured", "pa55"));
        assert_eq!(m.rooms, ["!abc:example.org", "#ops", "#alerts:example.org"]);

        let m: Matrix = parsed("matrix://:syt_T0K3N@matrix.example.org:8008?disabletls=yes&room=ops&title=kured");
        assert_eq!(m.server.as_str(), "http://matrix.example.org:8008/");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("", "syt_T0K3N"));
        assert_eq!((m.rooms.as_slice(), m.title.as_deref()), (&["#ops".to_owned()][..], Some("kured")));

        let m: Matrix = parsed("matrix://kured:pa55@matrix.example.org");
        assert!(m.rooms.is_empty());
    }

    #[test]
    fn bad_matrix_urls_name_what_is_wrong() {
        assert!(err("matrix://matrix.example.org/?rooms=a").contains("password"));
        assert!(err("matrix://u:p@matrix.example.org/?disabletls=perhaps").contains("parameter \"disabletls\""));
        assert!(err("matrix://u:p@matrix.example.org/?rooms=#ops:example.org").contains("%23"));
        assert!(err("matrix://u:p@matrix.example.org/?channel=a").contains("unknown parameter \"channel\""));
    }

    #[test]
    fn calls_carry_the_token_and_escape_room_aliases() {
        let m: Matrix = parsed("matrix://u:p@matrix.example.org:8448");
        let r = m.call(Method::POST, &["join", "#ops:example.org"], Some("T0K"), json!({}));
        assert_eq!(
            r.url.as_str(),
            "https://matrix.example.org:8448/_matrix/client/v3/join/%23ops:example.org"
        );
        assert_eq!(r.header_value("Authorization"), Some("Bearer T0K"));
        let r = m.call(Method::GET, &["login"], None, json!(null));
        assert!(r.body.is_empty() && r.header_value("Authorization").is_none());
        assert_ne!(transaction_id(), transaction_id());
    }

    #[test]
    fn matrix_redaction() {
        assert_redacted("matrix://kured:SECRETPW@matrix.example.org/?rooms=ops", "SECRET");
        assert_redacted("matrix://:SECRETTOKEN@matrix.example.org/?rooms=ops", "SECRET");
    }
}
