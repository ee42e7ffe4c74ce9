//! An identity provider for tests: it holds signing keys, publishes them as a JSON Web Key Set
//! (in a file, or over HTTP on loopback) and issues bearer tokens with rollcall's claims.
//!
//! The Ed25519 key is made at random for each provider. The RSA key is a fixed test key kept
//! in this crate, because most identity providers sign with RS256 and generating an RSA key
//! at test time would need another crate; it protects nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const RSA_PEM: &str = include_str!("../fixtures/rsa-test-key.pem");
const RSA_MODULUS: &str = include_str!("../fixtures/rsa-test-key.n");

/// A signing key and its public half as a JSON Web Key.
#[derive(Clone)]
struct Key {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

/// An identity provider that issues tokens for one audience.
#[derive(Clone)]
pub struct IdentityProvider {
    issuer: String,
    audience: String,
    keys: Vec<Key>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// A provider with a new Ed25519 key (key id `ed-1`) and the fixed RSA key (`rsa-1`).
    pub fn new(issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let mut provider = IdentityProvider {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: Vec::new(),
        };
        provider.add_ed25519_key("ed-1")?;
        let rsa = EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).context("the RSA test key")?;
        provider.keys.push(Key {
            kid: "rsa-1".to_owned(),
            algorithm: Algorithm::RS256,
            encoding: rsa,
            jwk: json!({
                "kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
                "n": RSA_MODULUS.trim(), "e": "AQAB",
            }),
        });
        Ok(provider)
    }

    /// Adds a new Ed25519 key, as a provider does when it rotates keys.
    pub fn add_ed25519_key(&mut self, kid: &str) -> anyhow::Result<()> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| anyhow::anyhow!("random bytes: {error}"))?;
        let signing = SigningKey::from_bytes(&seed);
        let der = signing
            .to_pkcs8_der()
            .map_err(|error| anyhow::anyhow!("cannot encode the test key: {error}"))?;
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        self.keys.push(Key {
            kid: kid.to_owned(),
            algorithm: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA", "x": x}),
        });
        Ok(())
    }

    /// The issuer tokens carry.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience tokens carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public keys, as a JSON Web Key Set.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>()})
    }

    /// Writes the key set to `path`.
    pub fn write_jwks(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(&self.jwks())?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Token settings for `rollcall serve --auth` that read the keys from `jwks_file`.
    pub fn settings_with_file(&self, jwks_file: &Path) -> String {
        format!(
            "issuer = {:?}\naudience = {:?}\njwks_file = {:?}\n",
            self.issuer,
            self.audience,
            jwks_file.display().to_string()
        )
    }

    /// Signs `claims` with the key `kid`. The issuer, audience, issue time and a 15-minute
    /// expiry are added where `claims` leaves them out.
    pub fn sign_with(&self, kid: &str, claims: Value) -> anyhow::Result<String> {
        let key = self
            .keys
            .iter()
            .find(|key| key.kid == kid)
            .with_context(|| format!("no test key {kid}"))?;
        let now = chrono::Utc::now().timestamp();
        let mut full = json!({
            "iss": self.issuer, "aud": self.audience, "iat": now, "nbf": now - 1, "exp": now + 900,
        });
        if let (Some(full), Value::Object(given)) = (full.as_object_mut(), claims) {
            full.extend(given);
        }
        let mut header = Header::new(key.algorithm);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &full, &key.encoding).context("cannot sign the test token")
    }

    /// Signs `claims` with the Ed25519 key `ed-1`.
    pub fn sign(&self, claims: Value) -> anyhow::Result<String> {
        self.sign_with("ed-1", claims)
    }

    /// A token for `subject` with `roles`, working for `schools`, and for a local authority
    /// officer the authority 919 (Hertfordshire).
    pub fn token(&self, subject: &str, roles: &[&str], schools: &[&str]) -> anyhow::Result<String> {
        self.sign(json!({
            "sub": subject, "roles": roles, "schools": schools, "local_authority": "919",
        }))
    }
}

/// Serves a JSON Web Key Set over plain HTTP on 127.0.0.1, which rollcall accepts only on
/// loopback. The set served can be replaced while it runs.
#[derive(Debug)]
pub struct KeySetServer {
    addr: SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl KeySetServer {
    /// Starts serving `jwks` at `/keys`.
    pub async fn start(jwks: &Value) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let body = Arc::new(Mutex::new(serde_json::to_vec(jwks)?));
        let requests = Arc::new(Mutex::new(0));
        let (served, counted) = (Arc::clone(&body), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let served = Arc::clone(&served);
                        let counted = Arc::clone(&counted);
                        async move {
                            if let Ok(mut count) = counted.lock() {
                                *count += 1;
                            }
                            let found = request.uri().path() == "/keys";
                            let bytes = served.lock().map(|body| body.clone()).unwrap_or_default();
                            Response::builder()
                                .status(if found { 200 } else { 404 })
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(if found {
                                    bytes
                                } else {
                                    Vec::new()
                                })))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(KeySetServer {
            addr,
            body,
            requests,
            task,
        })
    }

    /// The key set's address.
    pub fn url(&self) -> String {
        format!("http://{}/keys", self.addr)
    }

    /// Serves `jwks` from now on.
    pub fn replace(&self, jwks: &Value) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(jwks)?;
        if let Ok(mut body) = self.body.lock() {
            *body = bytes;
        }
        Ok(())
    }

    /// Returns how many requests the server has served.
    pub fn requests(&self) -> usize {
        self.requests.lock().map(|count| *count).unwrap_or_default()
    }
}

impl Drop for KeySetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
