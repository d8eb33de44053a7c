//! Sending: one HTTP request through reqwest, or one e-mail through an SMTP server (lettre over
//! rustls with the ring provider). Each call is one attempt, bounded in time; retries are the
//! caller's, guided by [`SendError::is_retryable`].

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use reqwest::StatusCode;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use super::request::{Expect, HttpRequest};
use super::target::{Smtp, SmtpAuth, SmtpTls};

/// Bytes of an error response quoted in an error: enough for a service's error message (Slack's
/// `invalid_payload`, Discord's JSON), short enough for one log line.
const BODY_EXCERPT: usize = 200;

/// Where Linux keeps the machine's host name, for `clienthost=auto`.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

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
            SendError::Address(_) | SendError::SmtpTls(_) | SendError::Mail(_) | SendError::Deadline(_) => {
                false
            }
        }
    }
}

/// The start of a body, on one line, for an error message.
fn excerpt(body: &[u8]) -> String {
    let end = body.len().min(BODY_EXCERPT);
    let text = String::from_utf8_lossy(&body[..end]);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > BODY_EXCERPT {
        format!("{line}…")
    } else {
        line
    }
}

#[derive(Deserialize)]
struct SlackAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Sends one request and judges the answer; at most `timeout`, connection included.
pub(crate) async fn http(
    client: &reqwest::Client,
    request: &HttpRequest,
    timeout: Duration,
) -> Result<(), SendError> {
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
    }
    Ok(())
}

/// An SMTP server and the e-mail it receives.
pub(crate) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: Option<String>,
    html: bool,
    timeout: Duration,
}

impl Mailer {
    /// Sets up the connection parameters; connects only when sending. `roots` are the CA
    /// certificates the server's certificate must chain to.
    pub(crate) fn new(
        smtp: &Smtp,
        roots: &[CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<Mailer, SendError> {
        let tls_parameters = || {
            let mut builder =
                TlsParameters::builder(smtp.host.clone()).certificate_store(CertificateStore::None);
            for root in roots {
                let cert = Certificate::from_der(root.to_vec()).map_err(SendError::SmtpTls)?;
                builder = builder.add_root_certificate(cert);
            }
            builder.build_rustls().map_err(SendError::SmtpTls)
        };
        let tls = match smtp.tls() {
            SmtpTls::None => Tls::None,
            SmtpTls::Opportunistic => Tls::Opportunistic(tls_parameters()?),
            SmtpTls::Required => Tls::Required(tls_parameters()?),
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters()?),
        };
        let client_host = if smtp.client_host.eq_ignore_ascii_case("auto") {
            std::fs::read_to_string(HOSTNAME_FILE)
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_owned())
        } else {
            smtp.client_host.clone()
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
            .port(smtp.port)
            .tls(tls)
            .hello_name(ClientId::Domain(client_host))
            .timeout(Some(timeout));
        let mechanism = match smtp.auth {
            SmtpAuth::None => None,
            SmtpAuth::Plain => Some(Mechanism::Plain),
            SmtpAuth::Login => Some(Mechanism::Login),
            SmtpAuth::OAuth2 => Some(Mechanism::Xoauth2),
        };
        if let Some(mechanism) = mechanism {
            builder = builder
                .credentials(Credentials::new(smtp.username.clone(), smtp.password.clone()))
                .authentication(vec![mechanism]);
        }
        let mailbox = |name: Option<String>, address: &str| {
            address
                .parse()
                .map(|a| Mailbox::new(name, a))
                .map_err(|_| SendError::Address(address.to_owned()))
        };
        Ok(Mailer {
            transport: builder.build(),
            from: mailbox(smtp.from_name.clone(), &smtp.from)?,
            to: smtp
                .to
                .iter()
                .map(|a| mailbox(None, a))
                .collect::<Result<_, _>>()?,
            subject: smtp.subject.clone(),
            html: smtp.html,
            timeout,
        })
    }

    /// One e-mail to every recipient, the subject from `subject=` or else `title`.
    pub(crate) async fn send(&self, message: &str, title: &str) -> Result<(), SendError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(self.subject.as_deref().unwrap_or(title));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let content_type = if self.html {
            ContentType::TEXT_HTML
        } else {
            ContentType::TEXT_PLAIN
        };
        let email = builder
            .header(content_type)
            .body(message.to_owned())
            .map_err(SendError::Mail)?;
        tokio::time::timeout(self.timeout, self.transport.send(email))
            .await
            .map_err(|_| SendError::Timeout(self.timeout))?
            .map_err(SendError::Smtp)?;
        Ok(())
    }
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
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt(b"invalid_payload\n"), "invalid_payload");
        assert_eq!(excerpt(&[b'x'; 1000]).chars().count(), BODY_EXCERPT + 1);
    }
}
