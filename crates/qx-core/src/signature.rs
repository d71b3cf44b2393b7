//! minisign (Ed25519) detached signatures over the exact manifest bytes, readable and
//! writable by the stock `minisign` command-line tool.

use std::path::{Path, PathBuf};

use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature was provided for the manifest")]
    Missing,
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    #[error(
        "the manifest is signed by key {key_id}, which is not among the trusted keys ({trusted})"
    )]
    UntrustedKey { key_id: String, trusted: String },
    #[error("the signature by key {key_id} does not match the manifest bytes (tampered manifest or signature)")]
    Invalid { key_id: String },
    #[error("public key {what} is invalid: {reason}")]
    BadPublicKey { what: String, reason: String },
    #[error("secret key {path}: {reason}")]
    BadSecretKey { path: PathBuf, reason: String },
    #[error("no trusted public keys are configured")]
    NoTrustedKeys,
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A minisign key id as the CLI prints it: 16 upper-case hex digits of the little-endian id.
pub(crate) fn key_id_hex(id: &[u8]) -> String {
    id.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// The key id a signature file names (line 2: base64 of alg[2] + keyid[8] + sig[64]).
fn signature_key_id(sig_text: &str) -> Result<String, SignatureError> {
    let line = sig_text
        .lines()
        .nth(1)
        .ok_or_else(|| SignatureError::Malformed("missing signature line".into()))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .map_err(|e| SignatureError::Malformed(format!("signature line is not base64: {e}")))?;
    if raw.len() != 74 {
        return Err(SignatureError::Malformed(format!(
            "signature line has {} bytes, expected 74",
            raw.len()
        )));
    }
    Ok(key_id_hex(&raw[2..10]))
}

/// One trusted public key.
#[derive(Clone)]
struct TrustedKey {
    id: String,
    key: minisign_verify::PublicKey,
}

/// The public keys an agent trusts (two during a rotation).
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.id))
            .finish()
    }
}

impl TrustedKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key given as the base64 line of a `.pub` file or the whole file text.
    pub fn add(&mut self, text: &str) -> Result<String, SignatureError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| SignatureError::BadPublicKey {
                what: "(empty)".into(),
                reason: "no key line".into(),
            })?;
        let bad = |reason: String| SignatureError::BadPublicKey {
            what: line.chars().take(16).collect::<String>() + "…",
            reason,
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| bad(format!("not base64: {e}")))?;
        if raw.len() != 42 || &raw[..2] != b"Ed" {
            return Err(bad("not a minisign Ed25519 public key".into()));
        }
        let key = minisign_verify::PublicKey::from_base64(line).map_err(|e| bad(e.to_string()))?;
        let id = key_id_hex(&raw[2..10]);
        self.keys.push(TrustedKey {
            id: id.clone(),
            key,
        });
        Ok(id)
    }

    pub fn add_file(&mut self, path: &Path) -> Result<String, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignatureError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.add(&text)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Verifies `sig_text` (a `.minisig` file) over `data`; returns the signing key's id.
    pub fn verify(&self, data: &[u8], sig_text: &str) -> Result<String, SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::NoTrustedKeys);
        }
        if sig_text.trim().is_empty() {
            return Err(SignatureError::Missing);
        }
        let key_id = signature_key_id(sig_text)?;
        let sig = minisign_verify::Signature::decode(sig_text)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let key = self.keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
            SignatureError::UntrustedKey {
                key_id: key_id.clone(),
                trusted: self.ids().join(", "),
            }
        })?;
        key.key
            .verify(data, &sig, false)
            .map_err(|_| SignatureError::Invalid { key_id })?;
        Ok(key.id.clone())
    }
}

#[cfg(all(test, feature = "sign"))]
mod tests {
    use super::*;
    use crate::signing::{KeyPair, SigningKey};

    fn pair() -> (SigningKey, TrustedKeys) {
        let kp = KeyPair::generate().expect("keygen");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        std::fs::write(&path, &kp.secret_key_file).expect("write");
        let sk = SigningKey::from_file(&path).expect("load");
        let mut keys = TrustedKeys::new();
        keys.add(&kp.public_key_file).expect("pub");
        assert_eq!(sk.key_id(), kp.key_id);
        (sk, keys)
    }

    #[test]
    fn sign_then_verify() {
        let (sk, keys) = pair();
        let sig = sk.sign(b"hello", "t").expect("sign");
        assert_eq!(keys.verify(b"hello", &sig).expect("verify"), sk.key_id());
    }

    #[test]
    fn tampered_data_is_refused() {
        let (sk, keys) = pair();
        let sig = sk.sign(b"hello", "t").expect("sign");
        assert!(matches!(
            keys.verify(b"hellO", &sig),
            Err(SignatureError::Invalid { .. })
        ));
    }

    #[test]
    fn other_key_is_untrusted() {
        let (sk, _) = pair();
        let (_, other) = pair();
        let sig = sk.sign(b"x", "t").expect("sign");
        assert!(matches!(
            other.verify(b"x", &sig),
            Err(SignatureError::UntrustedKey { .. })
        ));
    }

    #[test]
    fn rotation_trusts_either_key() {
        let (sk1, mut keys) = pair();
        let (sk2, keys2) = pair();
        let _ = keys2;
        keys.add(&sk2.public_key_file().expect("pub")).expect("add");
        for sk in [&sk1, &sk2] {
            let sig = sk.sign(b"x", "t").expect("sign");
            assert!(keys.verify(b"x", &sig).is_ok());
        }
    }

    #[test]
    fn missing_and_garbage_signatures() {
        let (_, keys) = pair();
        assert!(matches!(
            keys.verify(b"x", ""),
            Err(SignatureError::Missing)
        ));
        assert!(matches!(
            keys.verify(b"x", "untrusted comment: x\nnot base64!!\n"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn no_keys_configured() {
        assert!(matches!(
            TrustedKeys::new().verify(b"x", "sig"),
            Err(SignatureError::NoTrustedKeys)
        ));
    }
}
