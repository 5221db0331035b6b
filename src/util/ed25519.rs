//! Ed25519 keys through BoringSSL: the signing key of the record store's checkpoints and the
//! public key auditors verify them with. Raw keys are wrapped in their RFC 8410 DER forms, as
//! BoringSSL reads keys only from DER or PEM.

use super::hex::hex;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boring::pkey::{Id, PKey, Private, Public};
use boring::sign::{Signer, Verifier};
use std::path::Path;

/// PKCS#8 `PrivateKeyInfo` of an Ed25519 key, before its 32-byte seed (RFC 8410).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// `SubjectPublicKeyInfo` of an Ed25519 key, before its 32 bytes (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The Ed25519 key checkpoints are signed with.
pub struct SigningKey {
    key: PKey<Private>,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey([redacted], public {})", self.public.id())
    }
}

impl SigningKey {
    pub fn generate() -> Result<SigningKey, String> {
        let key = PKey::generate(Id::ED25519).map_err(|e| format!("generating a key: {e}"))?;
        Self::from_pkey(key)
    }

    /// A key from a PEM file's text (`openssl genpkey -algorithm ed25519`) or the base64 of its
    /// 32-byte seed.
    pub fn from_text(text: &str) -> Result<SigningKey, String> {
        let text = text.trim();
        let key = if text.starts_with("-----BEGIN") {
            PKey::private_key_from_pem(text.as_bytes())
                .map_err(|_| "not a PEM private key".to_string())?
        } else {
            let seed = STANDARD
                .decode(text)
                .ok()
                .filter(|s| s.len() == 32)
                .ok_or("neither a PEM private key nor the base64 of a 32-byte Ed25519 seed")?;
            let mut der = PKCS8_PREFIX.to_vec();
            der.extend_from_slice(&seed);
            PKey::private_key_from_der(&der).map_err(|e| format!("not an Ed25519 seed: {e}"))?
        };
        if key.id() != Id::ED25519 {
            return Err("the key is not an Ed25519 key".into());
        }
        Self::from_pkey(key)
    }

    fn from_pkey(key: PKey<Private>) -> Result<SigningKey, String> {
        let mut raw = [0u8; 32];
        key.raw_public_key(&mut raw)
            .map_err(|e| format!("reading the public key: {e}"))?;
        Ok(SigningKey {
            key,
            public: PublicKey::from_raw(&raw)?,
        })
    }

    /// The key as PEM (PKCS#8), to keep a generated key.
    pub fn to_pem(&self) -> Result<Vec<u8>, String> {
        self.key
            .private_key_to_pem_pkcs8()
            .map_err(|e| format!("encoding the key: {e}"))
    }

    /// The 32-byte seed (tests).
    pub fn seed(&self) -> Result<[u8; 32], String> {
        let mut seed = [0u8; 32];
        self.key
            .raw_private_key(&mut seed)
            .map_err(|e| e.to_string())?;
        Ok(seed)
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        Signer::new_without_digest(&self.key)
            .and_then(|mut s| s.sign_oneshot_to_vec(msg))
            .map_err(|e| format!("signing a checkpoint: {e}"))
    }
}

/// A public key checkpoints are verified with.
#[derive(Clone)]
pub struct PublicKey {
    raw: [u8; 32],
    key: PKey<Public>,
}

impl PublicKey {
    fn from_raw(raw: &[u8]) -> Result<PublicKey, String> {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(raw);
        let key =
            PKey::public_key_from_der(&der).map_err(|_| "not an Ed25519 public key".to_string())?;
        Ok(PublicKey {
            raw: raw.try_into().map_err(|_| "an Ed25519 key has 32 bytes")?,
            key,
        })
    }

    /// `ed25519:BASE64` as `agentgate audit pubkey` prints it (the prefix is optional), or a
    /// file holding that.
    pub fn from_text(text: &str) -> Result<PublicKey, String> {
        let mut t = text.trim().to_string();
        if !t.starts_with("ed25519:") && Path::new(&t).is_file() {
            t = std::fs::read_to_string(&t)
                .map_err(|e| format!("{t}: {e}"))?
                .trim()
                .to_string();
        }
        let b64 = t.strip_prefix("ed25519:").unwrap_or(&t);
        let raw = STANDARD
            .decode(b64)
            .ok()
            .filter(|r| r.len() == 32)
            .ok_or_else(|| format!("`{text}` is not an Ed25519 public key (ed25519:BASE64 of 32 bytes, as `agentgate audit pubkey` prints it)"))?;
        Self::from_raw(&raw)
    }

    pub fn to_text(&self) -> String {
        format!("ed25519:{}", STANDARD.encode(self.raw))
    }

    /// The first 16 hex digits of the SHA-256 of the raw key.
    pub fn id(&self) -> String {
        hex(&boring::sha::sha256(&self.raw)[..8])
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        Verifier::new_without_digest(&self.key)
            .and_then(|mut v| v.verify_oneshot(sig, msg))
            .unwrap_or(false)
    }
}
