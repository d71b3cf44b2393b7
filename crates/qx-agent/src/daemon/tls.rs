//! The local API's credentials: the TLS server configuration (the configured certificate and
//! key, or a self-signed certificate generated on first start and kept) and the API token
//! (read from the configured token file, created with a random token on first start).
//!
//! Both generated files are written 0600 into a temporary file beside their final name and
//! renamed into place without replacing an existing file, so two starts at once agree on one
//! certificate and one token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qx_core::Sha256;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use subtle::ConstantTimeEq;

/// File name of the generated self-signed certificate and key (one PEM file, 0600).
pub const SELF_SIGNED_FILE: &str = "self-signed.pem";

/// What went wrong while preparing the API's TLS configuration or token.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{path}: cannot read: {source}; check that the file exists and is readable by the agent"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}; check that the directory is writable by the agent")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: String },
    #[error("api.tls_cert is set to {cert} but api.tls_key is not (or the other way round); set both, or neither to use a self-signed certificate")]
    HalfConfigured { cert: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS certificate {cert} / key {key} rejected: {source}")]
    Rustls {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    /// A token file another user could change or read ([`crate::config::refuse_if_writable_by_others`]).
    #[error(transparent)]
    Insecure(Box<crate::ConfigError>),
    #[error("token file {path} is empty; put a token in it, or delete it to have a random one generated")]
    EmptyToken { path: PathBuf },
}

/// Builds the rustls server configuration of the local API.
///
/// With `cert` and `key` (already resolved under the host root), those PEM files are used.
/// With neither, `<state_dir>/self-signed.pem` is used, generated on first start.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key_der, cert_path, key_path) = match (cert, key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert)?;
            let key_pem = read(key)?;
            let certs = parse_certs(cert, &cert_pem)?;
            let key_der = parse_key(key, &key_pem)?;
            (certs, key_der, cert.to_path_buf(), key.to_path_buf())
        }
        (None, None) => {
            let path = load_or_create_self_signed(state_dir)?;
            let pem = read(&path)?;
            let certs = parse_certs(&path, &pem)?;
            let key_der = parse_key(&path, &pem)?;
            (certs, key_der, path.clone(), path)
        }
        (Some(one), None) | (None, Some(one)) => {
            return Err(TlsError::HalfConfigured {
                cert: one.display().to_string(),
            })
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|source| TlsError::Rustls {
            cert: cert_path,
            key: key_path,
            source,
        })?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Returns the path of the kept self-signed certificate in `dir`, generating it (and `dir`)
/// on first use. The certificate names `localhost`, the host name, 127.0.0.1 and ::1.
pub fn load_or_create_self_signed(dir: &Path) -> Result<PathBuf, TlsError> {
    let path = dir.join(SELF_SIGNED_FILE);
    if path.exists() {
        return Ok(path);
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    if !host.is_empty() && host != "localhost" {
        names.push(host);
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    let mut pem = certified.cert.pem();
    pem.push_str(&certified.key_pair.serialize_pem());
    create_private_file(&path, pem.as_bytes())?;
    tracing::info!(path = %path.display(), "generated a self-signed TLS certificate for the local API");
    Ok(path)
}

/// The bearer token every API call must present.
#[derive(Clone)]
pub struct ApiToken {
    /// SHA-256 of the token: compared in constant time against the SHA-256 of what a client
    /// sends, so neither the content nor the length of the token leaks through timing.
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    pub fn new(token: &str) -> ApiToken {
        ApiToken {
            digest: *Sha256::of(token.as_bytes()).as_bytes(),
        }
    }

    /// Constant-time check of a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        let digest = *Sha256::of(presented.as_bytes()).as_bytes();
        bool::from(self.digest.ct_eq(&digest))
    }
}

/// Reads the token from `path` (surrounding whitespace ignored), or creates the file (0600,
/// parent directories as needed) with a new random token when it does not exist.
pub fn load_or_create_token(path: &Path) -> Result<ApiToken, TlsError> {
    if !path.exists() {
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        let token = hex::encode(bytes);
        create_private_file(path, format!("{token}\n").as_bytes())?;
        tracing::info!(path = %path.display(), "created the local API token file");
    }
    crate::config::refuse_if_writable_by_others("API token file", path)
        .map_err(|e| TlsError::Insecure(Box::new(e)))?;
    let text = read(path)?;
    let text = String::from_utf8_lossy(&text);
    let token = text.trim();
    if token.is_empty() {
        return Err(TlsError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(ApiToken::new(token))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        problem: format!("not a valid PEM certificate file: {e}"),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            problem: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        problem: format!("no usable PRIVATE KEY block found: {e}"),
    })
}

/// Writes `content` to a new file at `path` with mode 0600: temporary file in the same
/// directory, fsync, then a rename that does not replace an existing file. If another process
/// created `path` first, its file is kept.
fn create_private_file(path: &Path, content: &[u8]) -> Result<(), TlsError> {
    let write_err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(write_err)?;
    // tempfile creates its files with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".qx-new-")
        .tempfile_in(dir)
        .map_err(write_err)?;
    tmp.write_all(content).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(write_err(e.error)),
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etc/limiquantix/api-token");
        let first = load_or_create_token(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.trim().len(), 64);
        assert!(first.matches(text.trim()));
        let second = load_or_create_token(&path).expect("reuse");
        assert!(second.matches(text.trim()));
        assert!(!second.matches("wrong"));
        assert!(!second.matches(""));
    }

    #[test]
    fn empty_token_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  \n").expect("write");
        let e = load_or_create_token(&path).unwrap_err();
        assert!(matches!(e, TlsError::EmptyToken { .. }), "{e}");
    }

    #[test]
    fn self_signed_certificate_is_kept_0600_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("data/updates/api");
        server_config(None, None, &state).expect("first start");
        let path = state.join(SELF_SIGNED_FILE);
        let first = std::fs::read(&path).expect("read");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        server_config(None, None, &state).expect("second start");
        assert_eq!(std::fs::read(&path).expect("read"), first);
    }

    #[test]
    fn configured_certificate_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ck = rcgen::generate_simple_self_signed(vec!["example.test".into()]).expect("gen");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write");
        server_config(Some(&cert), Some(&key), dir.path()).expect("config");
        assert!(!dir.path().join(SELF_SIGNED_FILE).exists());
    }

    #[test]
    fn missing_configured_key_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "x").expect("write");
        let key = dir.path().join("missing-key.pem");
        let e = server_config(Some(&cert), Some(&key), dir.path()).unwrap_err();
        assert!(e.to_string().contains("missing-key.pem"), "{e}");
    }

    #[test]
    fn garbage_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not pem").expect("write");
        std::fs::write(&key, "not pem").expect("write");
        let e = server_config(Some(&cert), Some(&key), dir.path()).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
    }

    #[test]
    fn half_configured_tls_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let e = server_config(Some(&cert), None, dir.path()).unwrap_err();
        assert!(matches!(e, TlsError::HalfConfigured { .. }), "{e}");
    }
}
