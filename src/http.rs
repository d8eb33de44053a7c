//! The HTTP client for services outside the cluster: Prometheus and notification webhooks, and
//! how their unexpected answers are quoted in errors.
//!
//! reqwest over rustls with the ring provider, trusting the CA certificates of the system's PEM
//! bundle (read once, when the client is built; `SSL_CERT_FILE` names another, as it does for Go
//! programs such as upstream kured) plus any roots the caller adds, so it works in a minimal image
//! that ships a bundle, with a private certificate authority, and in tests that bring their own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tracing::debug;

/// Where distributions keep their PEM bundle of trusted CA certificates, first match wins:
/// Debian, Ubuntu, Alpine, Arch and distroless; Fedora and RHEL; openSUSE; Alpine, BSDs and macOS.
pub const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot read CA certificates from {}", .path.display())]
    ReadCaBundle {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no CA certificate bundle found (looked for {}); an https URL needs one", CA_BUNDLES.join(", "))]
    NoCaBundle,
    #[error("CA bundle {} holds no usable certificate", .path.display())]
    EmptyCaBundle { path: PathBuf },
    #[error("a trusted root certificate is not usable")]
    Root(#[source] rustls::Error),
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
    #[error("cannot build the HTTP client")]
    BuildClient(#[source] reqwest::Error),
}

/// The variable naming the PEM bundle to trust instead of the system's, as Go's `crypto/x509`
/// reads it on Linux.
const CA_BUNDLE_VARIABLE: &str = "SSL_CERT_FILE";

/// The CA certificates of the bundle `SSL_CERT_FILE` names, or else of the first bundle in
/// [`CA_BUNDLES`] that exists.
pub fn system_roots() -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let named = std::env::var_os(CA_BUNDLE_VARIABLE).filter(|v| !v.is_empty());
    bundle_roots(named.as_deref().map(Path::new))
}

/// The CA certificates of `named`, or else of the first bundle in [`CA_BUNDLES`] that exists.
fn bundle_roots(named: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let path = match named {
        Some(path) => path,
        None => CA_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or(HttpError::NoCaBundle)?,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| HttpError::ReadCaBundle {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(HttpError::EmptyCaBundle {
            path: path.to_owned(),
        });
    }
    debug!(bundle = %path.display(), certificates = certs.len(), "CA certificates read");
    Ok(certs)
}

/// The roots a client trusts: the system bundle when `system` (an https URL needs it; plain http
/// does not), and `extra` in any case.
pub fn root_store(system: bool, extra: &[CertificateDer<'static>]) -> Result<RootCertStore, HttpError> {
    let mut store = RootCertStore::empty();
    if system {
        let certs = system_roots()?;
        let (added, ignored) = store.add_parsable_certificates(certs);
        debug!(added, ignored, "system CA certificates loaded");
        if added == 0 {
            return Err(HttpError::NoCaBundle);
        }
    }
    for cert in extra {
        store.add(cert.clone()).map_err(HttpError::Root)?;
    }
    Ok(store)
}

/// A client trusting `roots`, speaking HTTP/1.1.
pub fn client(roots: RootCertStore) -> Result<reqwest::Client, HttpError> {
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(HttpError::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(HttpError::BuildClient)
}

/// Bytes of an unexpected response body quoted in an error: enough for a service's error message
/// (Slack's `invalid_payload`, Discord's JSON) or to recognise an HTML error page or a proxy's
/// message, short enough for one log line.
pub const BODY_EXCERPT: usize = 200;

/// The start of a response body, on one line, for an error message: at most [`BODY_EXCERPT`]
/// bytes, whitespace runs folded to one space, and `…` where it was cut.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)]);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > BODY_EXCERPT {
        format!("{line}…")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_no_bundle_and_https_loads_the_system_one() {
        assert!(root_store(false, &[]).expect("no roots needed").is_empty());
        if CA_BUNDLES.iter().any(|p| Path::new(p).is_file()) {
            assert!(!root_store(true, &[]).expect("the bundle loads").is_empty());
        } else {
            assert!(matches!(root_store(true, &[]), Err(HttpError::NoCaBundle)));
        }
        assert!(client(RootCertStore::empty()).is_ok());
    }

    #[test]
    fn a_named_bundle_replaces_the_systems_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("missing.pem");
        let e = bundle_roots(Some(&missing)).expect_err("no such file");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("writing");
        let e = bundle_roots(Some(&empty)).expect_err("no certificate in it");
        assert_eq!(
            e.to_string(),
            format!("CA bundle {} holds no usable certificate", empty.display())
        );
        if let Some(system) = CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
            let copy = dir.path().join("copy.pem");
            std::fs::copy(system, &copy).expect("copying the system bundle");
            let named = bundle_roots(Some(&copy)).expect("the named bundle loads");
            assert_eq!(named, bundle_roots(None).expect("the system bundle loads"));
        }
    }

    #[test]
    fn excerpts_are_short_and_on_one_line() {
        assert_eq!(excerpt(b"invalid_payload\n"), "invalid_payload");
        assert_eq!(excerpt(b"404 page\nnot found\n"), "404 page not found");
        assert_eq!(excerpt(&[b'x'; 1000]).chars().count(), BODY_EXCERPT + 1);
        assert_eq!(excerpt(&[b'x'; BODY_EXCERPT]), "x".repeat(BODY_EXCERPT));
    }
}
