//! What the agent trusts on its HTTPS connections to the update server, and what it shows:
//! the `updates.tls` section (docs/agent-tls.md), read and checked when the configuration is
//! loaded, applied to the HTTP client, and TLS failures told in plain words that name the
//! setting to change.
//!
//! Trust: the system's trust store (read at each client set-up; `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` are honoured) plus the bundled WebPKI roots, plus `ca_cert` (a PEM file of
//! extra CA certificates). Mutual TLS: `client_cert` (PEM chain) with `client_key` (PEM key).

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The `updates.tls` section, loaded: the files' PEM bytes, already checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// `ca_cert` (host path) and its PEM bytes.
    pub ca_cert: Option<(PathBuf, Vec<u8>)>,
    /// `client_cert` + `client_key` (host paths) and their PEM bytes, as one identity.
    pub client: Option<ClientIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate chain, then the key (the form the HTTP client reads).
    pem: Vec<u8>,
}

/// A problem with one key of `updates.tls`: (key, message).
pub type TlsKeyError = (&'static str, String);

impl ClientTls {
    /// Reads and checks the files named by `ca_cert`, `client_cert`, `client_key` (host paths
    /// already resolved under the root). The certificate and its key go together.
    pub fn load(
        ca_cert: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
    ) -> Result<ClientTls, TlsKeyError> {
        let ca_cert = match ca_cert {
            None => None,
            Some(path) => {
                let pem = read("tls.ca_cert", &path)?;
                let certs = certificates("tls.ca_cert", &path, &pem)?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c).map_err(|e| {
                        (
                            "tls.ca_cert",
                            format!("{}: not a usable CA certificate: {e}", path.display()),
                        )
                    })?;
                }
                Some((path, pem))
            }
        };
        let client = match (client_cert, client_key) {
            (None, None) => None,
            (Some(cert), None) => {
                return Err(("tls.client_key", format!("is missing: client_cert {} needs its private key (set client_key to its PEM file)", cert.display())));
            }
            (None, Some(key)) => {
                return Err(("tls.client_cert", format!("is missing: client_key {} needs its certificate (set client_cert to its PEM file)", key.display())));
            }
            (Some(cert), Some(key)) => Some(ClientIdentity::load(cert, key)?),
        };
        Ok(ClientTls { ca_cert, client })
    }

    /// The blocking HTTP client builder with this trust and identity.
    pub fn apply(
        &self,
        mut builder: reqwest::blocking::ClientBuilder,
    ) -> Result<reqwest::blocking::ClientBuilder, String> {
        builder = builder.use_rustls_tls().tls_built_in_root_certs(true);
        if let Some((path, pem)) = &self.ca_cert {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("updates.tls.ca_cert {}: {e}", path.display()))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if let Some(id) = &self.client {
            let identity = reqwest::Identity::from_pem(&id.pem)
                .map_err(|e| format!("updates.tls.client_cert {}: {e}", id.cert.display()))?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

impl ClientIdentity {
    fn load(cert: PathBuf, key: PathBuf) -> Result<ClientIdentity, TlsKeyError> {
        let cert_pem = read("tls.client_cert", &cert)?;
        let chain = certificates("tls.client_cert", &cert, &cert_pem)?;
        let key_pem = read("tls.client_key", &key)?;
        let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            (
                "tls.client_key",
                format!("{}: no PEM private key in it ({e})", key.display()),
            )
        })?;
        // The pair must be usable by the TLS library (a supported key type).
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls.client_key", e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, der)
        .map_err(|e| {
            (
                "tls.client_key",
                format!(
                    "{} cannot be used with client_cert {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
        let mut pem = cert_pem;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(&key_pem);
        Ok(ClientIdentity { cert, key, pem })
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsKeyError> {
    std::fs::read(path).map_err(|e| (key, format!("cannot read {}: {e}", path.display())))
}

/// Every certificate of a PEM file; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsKeyError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (key, format!("{}: invalid PEM ({e})", path.display())))?;
    if certs.is_empty() {
        return Err((
            key,
            format!(
                "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// A TLS connection to the update server failed, in plain words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "TLS connection to {} failed: {problem}",
    crate::download::redact_credentials(url)
)]
pub struct TlsFailure {
    pub url: String,
    pub problem: TlsProblem,
}

/// Why a TLS connection failed; each names the setting to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    #[error("the server's certificate is not signed by a trusted CA; set updates.tls.ca_cert to your CA's PEM file")]
    UnknownIssuer,
    #[error("the server's certificate has expired (or this host's clock is wrong); the server's operator must renew it (the server's TLS_CERT)")]
    Expired,
    #[error("the server's certificate is not valid yet; check this host's clock")]
    NotValidYet,
    #[error("the server's certificate is not valid for the host name of updates.server_url; use the name the certificate was issued for")]
    WrongName,
    #[error(
        "the server requires a client certificate; set updates.tls.client_cert and client_key"
    )]
    ClientCertRequired,
    #[error("the server refused this host's client certificate (updates.tls.client_cert): it is not signed by a CA the server trusts (its TLS_CLIENT_CA), or it has expired")]
    ClientCertRefused,
    #[error("the server answered in plain HTTP, not TLS: updates.server_url says https://, but that port speaks http://; use http:// or the server's TLS port")]
    PlainHttp,
    #[error("{0}")]
    Other(String),
}

impl TlsFailure {
    /// The TLS failure behind an HTTP client error, if it is one; `has_client_cert`: a
    /// client certificate was configured (a refusal then concerns it).
    pub fn of(
        url: &str,
        e: &(dyn std::error::Error + 'static),
        has_client_cert: bool,
    ) -> Option<TlsFailure> {
        let problem = match problem(find_rustls(e)?) {
            TlsProblem::ClientCertRefused if !has_client_cert => TlsProblem::ClientCertRequired,
            p => p,
        };
        Some(TlsFailure {
            url: url.to_owned(),
            problem,
        })
    }
}

/// The `rustls::Error` in an error's chain (an I/O error carries it inside).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = find_rustls(inner) {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

fn problem(e: &rustls::Error) -> TlsProblem {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => TlsProblem::UnknownIssuer,
            C::Expired | C::ExpiredContext { .. } => TlsProblem::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsProblem::NotValidYet,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongName,
            other => TlsProblem::Other(format!("the server's certificate is invalid ({other:?}); check updates.tls.ca_cert and the server's certificate")),
        },
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => TlsProblem::PlainHttp,
        E::AlertReceived(A::CertificateRequired) => TlsProblem::ClientCertRequired,
        E::AlertReceived(
            A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::AccessDenied
            | A::HandshakeFailure,
        ) => {
            TlsProblem::ClientCertRefused
        }
        other => TlsProblem::Other(other.to_string()),
    }
}
