//! Signing manifests and generating keys: only the publish tool and tests build this (the
//! `sign` feature); agents and the server only verify.

use std::path::Path;

use base64::Engine;

use crate::signature::{key_id_hex, SignatureError};

/// A secret key used by the publisher to sign manifests.
pub struct SigningKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
}

/// A freshly generated key pair, as the texts of minisign's `.key` and `.pub` files.
pub struct KeyPair {
    pub secret_key_file: String,
    pub public_key_file: String,
    pub key_id: String,
}

impl KeyPair {
    /// Generates an unencrypted key pair (the form `minisign -G -W` writes).
    pub fn generate() -> Result<Self, SignatureError> {
        let kp = minisign::KeyPair::generate_unencrypted_keypair()
            .map_err(|e| SignatureError::Sign(e.to_string()))?;
        let secret_key_file = kp
            .sk
            .to_box(None)
            .map_err(|e| SignatureError::Sign(e.to_string()))?
            .to_string();
        let public_key_file = kp
            .pk
            .to_box()
            .map_err(|e| SignatureError::Sign(e.to_string()))?
            .to_string();
        Ok(Self {
            secret_key_file,
            public_key_file,
            key_id: key_id_hex(kp.pk.keynum()),
        })
    }
}

/// Reads an unencrypted minisign secret key file. Key files written by some versions of the
/// command-line tool with `-W` leave the integrity checksum zeroed, which the library refuses;
/// such a key is accepted when its layout is otherwise exactly an unencrypted Ed25519 key.
fn unencrypted_secret_key(text: &str) -> Result<minisign::SecretKey, String> {
    const NOT_SUPPORTED: &str =
        "encrypted keys are not supported; create one with `qx-publish keygen` or `minisign -G -W`";
    let sk_box = minisign::SecretKeyBox::from_string(text).map_err(|e| e.to_string())?;
    match sk_box.into_unencrypted_secret_key() {
        Ok(sk) => Ok(sk),
        Err(first) => {
            let line = text.lines().nth(1).ok_or("missing key line")?.trim();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| format!("key line is not base64: {e}"))?;
            // sig_alg "Ed", kdf_alg 0 (none), chk_alg "B2", then salt/limits/keynum/key/chk.
            if raw.len() != 158 || &raw[..2] != b"Ed" || raw[2..4] != [0, 0] || &raw[4..6] != b"B2"
            {
                return Err(format!("{first} ({NOT_SUPPORTED})"));
            }
            if raw[126..].iter().any(|&b| b != 0) {
                return Err(format!(
                    "{first}: the key's checksum does not match (corrupted key file)"
                ));
            }
            minisign::SecretKey::from_bytes(&raw).map_err(|e| e.to_string())
        }
    }
}

impl SigningKey {
    /// Loads an unencrypted minisign secret key file.
    pub fn from_file(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignatureError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(&text).map_err(|reason| SignatureError::BadSecretKey {
            path: path.to_owned(),
            reason,
        })
    }

    fn from_text(text: &str) -> Result<Self, String> {
        let sk = unencrypted_secret_key(text)?;
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| e.to_string())?;
        Ok(Self { sk, pk })
    }

    pub fn key_id(&self) -> String {
        key_id_hex(self.pk.keynum())
    }

    /// The `.pub` file text of this key.
    pub fn public_key_file(&self) -> Result<String, SignatureError> {
        self.pk
            .to_box()
            .map(|b| b.to_string())
            .map_err(|e| SignatureError::Sign(e.to_string()))
    }

    /// Signs `data`; returns the text of a `.minisig` file.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String, SignatureError> {
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            std::io::Cursor::new(data),
            Some(trusted_comment),
            Some("signature from qx-publish"),
        )
        .map_err(|e| SignatureError::Sign(e.to_string()))?;
        Ok(sig.to_string())
    }
}
