//! Signing and verifying keys: generation, PEM forms and key ids.

#![allow(clippy::unwrap_used)]

use rollcall_pack::{PackError, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

#[test]
fn private_key_pem_round_trips() {
    let key = SigningKey::generate().unwrap();

    let pem = key.to_pkcs8_pem().unwrap();
    let read = SigningKey::from_pkcs8_pem(&pem).unwrap();

    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{}",
        pem.as_str()
    );
    assert_eq!(read.verifying_key(), key.verifying_key());
    assert_eq!(read.to_pkcs8_pem().unwrap().as_str(), pem.as_str());
}

#[test]
fn public_key_pem_round_trips() {
    let key = SigningKey::generate().unwrap().verifying_key();

    let pem = key.to_public_key_pem().unwrap();
    let read = VerifyingKey::from_public_key_pem(&pem).unwrap();

    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(read, key);
}

#[test]
fn generated_keys_differ() {
    let first = SigningKey::generate().unwrap();
    let second = SigningKey::generate().unwrap();

    assert_ne!(first.verifying_key(), second.verifying_key());
}

#[test]
fn key_id_is_sha256_prefix() {
    let key = SigningKey::generate().unwrap().verifying_key();

    let key_id = key.key_id();

    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    assert_eq!(key_id.len(), 16);
    assert_eq!(key_id, digest[..16]);
}

#[test]
fn openssl_key_reads_with_known_id() {
    // A key from `openssl genpkey -algorithm ed25519` (OpenSSL 3.0), its public key from
    // `openssl pkey -pubout`, and the key id worked out separately with Python's hashlib.
    let private = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIDq6xd75ofjqqHcslf2Hkq4+36VZxjmVSQEbWvI6Gc+D\n\
                   -----END PRIVATE KEY-----\n";
    let public = "-----BEGIN PUBLIC KEY-----\n\
                  MCowBQYDK2VwAyEApSRVpmC/1thAUQdfHYUOVeKPhzakv434N2K9ftHaM5g=\n\
                  -----END PUBLIC KEY-----\n";

    let key = SigningKey::from_pkcs8_pem(private).unwrap();

    let verifying = key.verifying_key();
    assert_eq!(verifying.key_id(), "c3ac1afa599a24fc");
    assert_eq!(verifying.to_public_key_pem().unwrap(), public);
    assert_eq!(
        VerifyingKey::from_public_key_pem(public).unwrap(),
        verifying
    );
}

#[test]
fn debug_output_hides_secret() {
    let key = SigningKey::generate().unwrap();
    let pem = key.to_pkcs8_pem().unwrap();
    let body: String = pem.lines().nth(1).unwrap().to_owned();

    let debug = format!("{key:?}");

    assert!(debug.contains(&key.verifying_key().key_id()), "{debug}");
    assert!(!debug.contains(&body), "{debug}");
}

fn private_error(pem: &str) -> String {
    match SigningKey::from_pkcs8_pem(pem) {
        Err(error @ PackError::InvalidPrivateKeyPem(_)) => error.to_string(),
        other => panic!("expected InvalidPrivateKeyPem, got {other:?}"),
    }
}

fn public_error(pem: &str) -> String {
    match VerifyingKey::from_public_key_pem(pem) {
        Err(error @ PackError::InvalidPublicKeyPem(_)) => error.to_string(),
        other => panic!("expected InvalidPublicKeyPem, got {other:?}"),
    }
}

#[test]
fn text_without_pem_is_rejected() {
    let message = private_error("not a key");

    assert!(message.contains("no PEM block found"), "{message}");
    assert!(message.contains("-----BEGIN PRIVATE KEY-----"), "{message}");

    let message = public_error("");
    assert!(message.contains("-----BEGIN PUBLIC KEY-----"), "{message}");
}

#[test]
fn public_key_given_as_private_is_rejected() {
    let public = SigningKey::generate()
        .unwrap()
        .verifying_key()
        .to_public_key_pem()
        .unwrap();

    let message = private_error(&public);

    assert!(
        message.contains("found -----BEGIN PUBLIC KEY-----"),
        "{message}"
    );
    assert!(message.contains("This is a public key"), "{message}");
}

#[test]
fn private_key_given_as_public_is_rejected() {
    let private = SigningKey::generate().unwrap().to_pkcs8_pem().unwrap();

    let message = public_error(&private);

    assert!(message.contains("This is a private key"), "{message}");
    assert!(message.contains("openssl pkey"), "{message}");
}

#[test]
fn encrypted_private_key_is_rejected() {
    let message = private_error(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );

    assert!(
        message.contains("Encrypted keys are not supported"),
        "{message}"
    );
}

#[test]
fn damaged_pem_body_is_rejected() {
    let message = private_error("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");

    assert!(
        message.contains("not an unencrypted PKCS#8 Ed25519 private key"),
        "{message}"
    );
}

#[test]
fn rsa_public_key_is_rejected() {
    // An RSA public key from `openssl pkey -pubout`: the right PEM label, the wrong algorithm.
    let rsa = "-----BEGIN PUBLIC KEY-----\n\
               MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC9YaeyZu/dH/1eIMv+XpDnXk+w\n\
               lsv72zirKIMZ2EOitDIsJFu1JMGYx2oWtVioXVsDhgqj1a3493jCOYjo3Shp8bkU\n\
               U2w0n02ReiCrU87tuF02RpfpiwxIHFNr1hS4A53YsCyHNiUHIH/bdi6FI10Jbpo9\n\
               Q2vgJAHW0If7kuxIXQIDAQAB\n\
               -----END PUBLIC KEY-----\n";

    let message = public_error(rsa);

    assert!(
        message.contains("not a SubjectPublicKeyInfo Ed25519 public key"),
        "{message}"
    );
}
