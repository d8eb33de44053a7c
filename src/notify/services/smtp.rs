//! E-mail through an SMTP server: `smtp://[user:password@]host[:port]/?from=…&to=…[,…]` with
//! shoutrrr's parameters, sent with lettre over rustls (the ring provider).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rustls::pki_types::CertificateDer;
use url::Url;

use crate::notify::deliver::{Attempted, Link, SendError};
use crate::notify::target::{REDACTED, Service, Target, TargetError};
use crate::notify::url_syntax::{Params, decode, form, parameter, parse_url};

pub(crate) const SCHEMES: &[&str] = &["smtp"];

/// Where Linux keeps the machine's host name, for `clienthost=auto`.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

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


debug_as_shown!(Smtp);

pub(crate) fn parse(_scheme: &str, value: &str) -> Result<Target, TargetError> {
    parse_smtp(value).map(Target::new)
}

impl Service for Smtp {
    fn scheme(&self) -> &'static str {
        "smtp"
    }

    fn shown(&self) -> String {
        let creds = if self.username.is_empty() && self.password.is_empty() {
            String::new()
        } else {
            format!("{REDACTED}@")
        };
        format!("smtp://{creds}{}:{}/?to={}", self.host, self.port, self.to.join(","))
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.password.clone(), self.username.clone()]
    }

    /// Not HTTP: the server is reached as the URL says.
    fn follows_api_base(&self) -> bool {
        false
    }

    fn uses_tls(&self, _api_base: Option<&Url>) -> bool {
        self.tls() != SmtpTls::None
    }

    /// One e-mail to every recipient, the subject from `subject=` or else `title`.
    fn deliver<'a>(&'a self, link: &'a Link<'a>, title: &'a str, message: &'a str) -> Attempted<'a> {
        Box::pin(async move {
            let mailer = Mailer::new(self, link.roots, link.retry.attempt_timeout).map_err(|e| (0, e))?;
            let (attempts, ()) = link.retrying(|| mailer.send(message, title)).await?;
            Ok(attempts)
        })
    }
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
    let mut p = Params::of(S, &url);
    // A '+' in an address arrives as a space from query decoding; shoutrrr puts it back.
    let address = |a: String| a.trim().replace(' ', "+");
    let from = p.take(&["fromaddress", "from"])
        .map(address)
        .ok_or_else(|| form(S, "no from=… address given"))?;
    let to: Vec<String> = p.take(&["toaddresses", "to"])
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
    let from_name = p.take(&["fromname"]);
    let subject = p.take(&["subject", "title"]);
    let auth = match p.take(&["auth"]).map(|a| a.to_ascii_lowercase()).as_deref() {
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
    let encryption = match p.take(&["encryption"])
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
    let starttls = p.bool("usestarttls", &["starttls"], true)?;
    let html = p.bool("usehtml", &[], false)?;
    let client_host = p.take(&["clienthost"]).unwrap_or_else(|| "localhost".to_owned());
    p.finish()?;
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
    use crate::notify::services::testing::{err, parsed};

    #[test]
    fn smtp_forms_and_tls_modes() {
        let s: Smtp = parsed(
            "smtp://user:p%40ss@mail.example.com:587/?from=kured@example.com&to=a@example.com,b+tag@example.com&subject=Reboots",
        );
        assert_eq!((s.host.as_str(), s.port), ("mail.example.com", 587));
        assert_eq!((s.username.as_str(), s.password.as_str()), ("user", "p@ss"));
        assert_eq!(s.to, ["a@example.com", "b+tag@example.com"]);
        assert_eq!(s.subject.as_deref(), Some("Reboots"));
        assert_eq!((s.auth, s.tls()), (SmtpAuth::Plain, SmtpTls::Required));

        let tls = |q: &str| parsed::<Smtp>(&format!("smtp://{q}")).tls();
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
}
