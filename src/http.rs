//! The HTTP client for services outside the cluster: Prometheus and notification webhooks.
//!
//! reqwest over rustls with the ring provider, trusting the CA certificates of the system's PEM
//! bundle (read once, when the client is built) plus any roots the caller adds, so it works in a
//! minimal image that ships a bundle and in tests that bring their own certificate authority.

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

/// The CA certificates of the first bundle in [`CA_BUNDLES`] that exists.
pub fn system_roots() -> Result<Vec<CertificateDer<'static>>, HttpError> {
    let path = CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(HttpError::NoCaBundle)?;
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
}
