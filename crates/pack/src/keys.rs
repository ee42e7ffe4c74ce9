//! Ed25519 signing and verifying keys, with their PEM forms and key ids.

use std::fmt;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::PackError;

const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";
const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

/// A trust's private Ed25519 key, used to sign packs.
///
/// The `Debug` output shows only the key id, never the secret.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
}

/// A trust's public Ed25519 key, used to verify packs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: ed25519_dalek::VerifyingKey,
}

impl SigningKey {
    /// Generates a new key from the operating system's cryptographically secure random number
    /// generator.
    pub fn generate() -> Result<Self, PackError> {
        let mut seed = Zeroizing::new([0u8; ed25519_dalek::SECRET_KEY_LENGTH]);
        getrandom::fill(seed.as_mut_slice())
            .map_err(|error| PackError::KeyGeneration(error.to_string()))?;
        Ok(Self {
            inner: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a key from PKCS#8 PEM text (`-----BEGIN PRIVATE KEY-----`), as written by
    /// [`to_pkcs8_pem`](Self::to_pkcs8_pem) or `openssl genpkey -algorithm ed25519`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, PackError> {
        check_pem_label(pem, PRIVATE_KEY_LABEL).map_err(PackError::InvalidPrivateKeyPem)?;
        let inner = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|error| {
            PackError::InvalidPrivateKeyPem(format!(
                "it is not an unencrypted PKCS#8 Ed25519 private key ({error})"
            ))
        })?;
        Ok(Self { inner })
    }

    /// Writes the key as PKCS#8 PEM text with LF line endings. The text is wiped from memory
    /// when the returned value is dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, PackError> {
        self.inner
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|error| PackError::KeyEncoding(error.to_string()))
    }

    /// Returns the public half of the key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            inner: self.inner.verifying_key(),
        }
    }

    /// Signs `message` with pure Ed25519 (RFC 8032, no pre-hashing).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; ed25519_dalek::SIGNATURE_LENGTH] {
        use ed25519_dalek::Signer;
        self.inner.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("key_id", &self.verifying_key().key_id())
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Reads a key from SubjectPublicKeyInfo PEM text (`-----BEGIN PUBLIC KEY-----`), as written
    /// by [`to_public_key_pem`](Self::to_public_key_pem) or `openssl pkey -pubout`.
    pub fn from_public_key_pem(pem: &str) -> Result<Self, PackError> {
        check_pem_label(pem, PUBLIC_KEY_LABEL).map_err(PackError::InvalidPublicKeyPem)?;
        let inner = ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|error| {
            PackError::InvalidPublicKeyPem(format!(
                "it is not a SubjectPublicKeyInfo Ed25519 public key ({error})"
            ))
        })?;
        Ok(Self { inner })
    }

    /// Writes the key as SubjectPublicKeyInfo PEM text with LF line endings.
    pub fn to_public_key_pem(&self) -> Result<String, PackError> {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .map_err(|error| PackError::KeyEncoding(error.to_string()))
    }

    /// Reads a key from its raw 32 bytes, as carried in a manifest's `signature.public_key`.
    /// Returns `None` when the bytes are not a point on the curve.
    pub fn from_bytes(bytes: &[u8; ed25519_dalek::PUBLIC_KEY_LENGTH]) -> Option<Self> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .ok()
            .map(|inner| Self { inner })
    }

    /// Returns the raw 32-byte key.
    pub fn as_bytes(&self) -> &[u8; ed25519_dalek::PUBLIC_KEY_LENGTH] {
        self.inner.as_bytes()
    }

    /// Returns the key id: the first 16 hex digits of the SHA-256 of the raw 32-byte key.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.as_bytes());
        hex::encode(&digest[..8])
    }

    /// Checks `signature` over `message` with the strict rules of `verify_strict`, which also
    /// rejects weak keys and non-canonical signatures.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.inner.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("VerifyingKey")
            .field("key_id", &self.key_id())
            .finish()
    }
}

/// Checks that `pem` is PEM text whose first block has the label `expected`, and explains
/// what was found instead.
fn check_pem_label(pem: &str, expected: &str) -> Result<(), String> {
    let Some(found) = first_pem_label(pem) else {
        return Err(format!(
            "no PEM block found. Expected text starting with -----BEGIN {expected}-----"
        ));
    };
    if found == expected {
        return Ok(());
    }
    let hint = match (expected, found) {
        (PRIVATE_KEY_LABEL, PUBLIC_KEY_LABEL) => {
            " This is a public key, but signing needs the trust's private key.".to_owned()
        }
        (PUBLIC_KEY_LABEL, PRIVATE_KEY_LABEL) => {
            " This is a private key. Pass the public key instead (openssl pkey -in KEY.pem -pubout) and keep the private key secret.".to_owned()
        }
        (PRIVATE_KEY_LABEL, "ENCRYPTED PRIVATE KEY") => {
            " Encrypted keys are not supported, so decrypt it first (openssl pkey -in KEY.pem -out PLAIN.pem).".to_owned()
        }
        _ => String::new(),
    };
    Err(format!(
        "found -----BEGIN {found}----- but expected -----BEGIN {expected}-----.{hint}"
    ))
}

/// Returns the label of the first `-----BEGIN …-----` line, if any.
fn first_pem_label(pem: &str) -> Option<&str> {
    pem.lines().find_map(|line| {
        line.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
    })
}
