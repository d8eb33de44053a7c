//! Sending: one HTTP request through reqwest, or one e-mail through an SMTP server (lettre over
//! rustls with the ring provider). [`http`] is one attempt, bounded in time; a [`Link`] gives a
//! service's [`Service::deliver`](super::target::Service::deliver) the shared client, with
//! retries guided by [`SendError::is_retryable`].

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use tracing::debug;
use url::Url;

use super::RetryPolicy;
use super::request::{Expect, HttpRequest};
use crate::http::excerpt;

/// A message on its way to one target: Ok with the most attempts any of its requests took, or
/// the attempts made and the error that ended them.
pub(crate) type Attempted<'a> = BoxFuture<'a, Result<u32, (u32, SendError)>>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot send the request")]
    Request(#[source] reqwest::Error),
    #[error("cannot read the response")]
    Read(#[source] reqwest::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {status}: {excerpt:?}")]
    Status { status: StatusCode, excerpt: String },
    #[error("the Slack API refused the message: {error}")]
    SlackApi { error: String },
    #[error("address {0:?} is not an e-mail address")]
    Address(String),
    #[error("cannot set up TLS for the SMTP server")]
    SmtpTls(#[source] lettre::transport::smtp::Error),
    #[error("cannot build the e-mail")]
    Mail(#[source] lettre::error::Error),
    #[error("the SMTP server did not take the e-mail")]
    Smtp(#[source] lettre::transport::smtp::Error),
    #[error("gave up after {0:?} (the time allowed for one notification)")]
    Deadline(Duration),
    #[error("unexpected answer: {0}")]
    Answer(String),
    #[error("the notification URL cannot be used: {0}")]
    Unusable(String),
}

impl SendError {
    /// Whether trying again may help: a lost connection, a time-out, a busy or failing server
    /// (429, 5xx, SMTP 4xx). A refusal (4xx, a bad token, SMTP 5xx) would only be refused again.
    pub fn is_retryable(&self) -> bool {
        match self {
            SendError::Request(e) => !e.is_builder(),
            SendError::Read(_) | SendError::Timeout(_) => true,
            SendError::Status { status, .. } => {
                status.is_server_error()
                    || matches!(
                        *status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS | StatusCode::TOO_EARLY
                    )
            }
            SendError::SlackApi { error } => error == "ratelimited",
            SendError::Smtp(e) => !e.is_permanent() && !e.is_client(),
            SendError::Address(_)
            | SendError::SmtpTls(_)
            | SendError::Mail(_)
            | SendError::Deadline(_)
            | SendError::Answer(_)
            | SendError::Unusable(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct SlackAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Sends one request and judges the answer; at most `timeout`, connection included. Ok: the
/// body of the 2xx answer (empty if it broke off).
pub(crate) async fn http(
    client: &reqwest::Client,
    request: &HttpRequest,
    timeout: Duration,
) -> Result<Vec<u8>, SendError> {
    let mut builder = client
        .request(request.method.clone(), request.url.clone())
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if let Some((user, password)) = &request.basic_auth {
        builder = builder.basic_auth(user, Some(password));
    }
    let exchange = async {
        // The URLs carry tokens; errors leave them out.
        let response = builder
            .send()
            .await
            .map_err(|e| SendError::Request(e.without_url()))?;
        let status = response.status();
        // A body that breaks off (a peer closing without close_notify, a short body) does not
        // undo the status: a 2xx means the message was taken, and sending it again would
        // deliver it twice. Only an answer that must be read (Slack's API) needs the body.
        let body = response
            .bytes()
            .await
            .map_err(|e| SendError::Read(e.without_url()));
        Ok::<_, SendError>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SendError::Timeout(timeout))??;
    if !status.is_success() {
        return Err(SendError::Status {
            status,
            excerpt: body.as_deref().map(excerpt).unwrap_or_default(),
        });
    }
    if request.expect == Expect::SlackApiOk {
        let body = body?;
        let answer: SlackAnswer = serde_json::from_slice(&body).map_err(|_| SendError::SlackApi {
            error: format!("not a Slack API answer: {:?}", excerpt(&body)),
        })?;
        if !answer.ok {
            return Err(SendError::SlackApi {
                error: answer.error.unwrap_or_else(|| "unknown error".to_owned()),
            });
        }
        return Ok(body.to_vec());
    }
    Ok(body.map(|b| b.to_vec()).unwrap_or_default())
}

/// What a service sends through: the shared HTTP client, where requests go, the CA roots, and
/// the retry policy. One per message and target.
pub(crate) struct Link<'a> {
    pub(crate) client: &'a reqwest::Client,
    /// Replaces each request's scheme, host and port (tests' loopback receivers).
    pub(crate) api_base: Option<&'a Url>,
    /// CA certificates to trust, for services that connect by other means than `client`.
    pub(crate) roots: &'a [CertificateDer<'static>],
    pub(crate) retry: RetryPolicy,
    /// Every attempt made, for a report cut short by the deadline.
    pub(crate) tried: &'a AtomicU32,
}

impl Link<'_> {
    /// Sends `request`, retrying as the policy allows. Ok: the attempts it took and the body of
    /// the answer.
    pub(crate) async fn send(&self, request: &HttpRequest) -> Result<(u32, Vec<u8>), (u32, SendError)> {
        let rebased;
        let request = match self.api_base {
            Some(base) => {
                let mut r = request.clone();
                r.url = rebase(&r.url, base);
                rebased = r;
                &rebased
            }
            None => request,
        };
        self.retrying(|| http(self.client, request, self.retry.attempt_timeout))
            .await
    }

    /// Sends each request in turn, each with its own retries (a Telegram message to two chats is
    /// not sent twice to the first when the second fails). Ok: the most attempts any took.
    pub(crate) async fn send_all(&self, requests: Vec<HttpRequest>) -> Result<u32, (u32, SendError)> {
        let mut most = 0;
        for request in &requests {
            let (attempts, _) = self.send(request).await?;
            most = most.max(attempts);
        }
        Ok(most)
    }

    /// Tries `attempt` until it succeeds, fails for good or runs out of attempts. Ok: the
    /// attempts it took and what the last one returned.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<(u32, T), (u32, SendError)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SendError>>,
    {
        let attempts = self.retry.attempts.max(1);
        let mut backoff = self.retry.first_backoff;
        let mut n = 1;
        loop {
            self.tried.fetch_add(1, Ordering::Relaxed);
            match attempt().await {
                Ok(value) => return Ok((n, value)),
                Err(e) if n < attempts && e.is_retryable() => {
                    debug!(attempt = n, retry_in = ?backoff, "notification attempt failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    n += 1;
                }
                Err(e) => return Err((n, e)),
            }
        }
    }
}

/// `url` with the scheme, host and port of `base`, and base's path before its own.
fn rebase(url: &Url, base: &Url) -> Url {
    let mut out = base.clone();
    let path = format!("{}{}", base.path().trim_end_matches('/'), url.path());
    out.set_path(&path);
    out.set_query(url.query());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        let status = |code: u16| SendError::Status {
            status: StatusCode::from_u16(code).expect("a status"),
            excerpt: String::new(),
        };
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 413] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        assert!(SendError::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(
            SendError::SlackApi {
                error: "ratelimited".to_owned()
            }
            .is_retryable()
        );
        assert!(
            !SendError::SlackApi {
                error: "invalid_auth".to_owned()
            }
            .is_retryable()
        );
        assert!(!SendError::Deadline(Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn rebase_keeps_path_and_query() {
        let base = Url::parse("http://127.0.0.1:8080/prefix/").expect("url");
        let url = Url::parse("https://api.telegram.org/bot1:A/sendMessage?x=1").expect("url");
        assert_eq!(
            rebase(&url, &base).as_str(),
            "http://127.0.0.1:8080/prefix/bot1:A/sendMessage?x=1"
        );
    }
}
