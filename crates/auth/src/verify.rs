//! Turns a request's `authorization` header into a [`Principal`], or returns why it cannot.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tonic::Status;

use crate::keys::KeyStore;
use crate::principal::{Credential, Principal, Schools};
use crate::role::Role;
use crate::settings::TokenSettings;

/// Signature algorithms accepted: public-key signatures only, so a key set can never be used
/// to forge a token.
const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No credential, or one that does not prove who the caller is.
    Unauthenticated(String),
    /// The caller is known but may not do this.
    PermissionDenied(String),
}

impl Refusal {
    /// The gRPC status for the refusal.
    pub fn into_status(self) -> Status {
        match self {
            Refusal::Unauthenticated(message) => Status::unauthenticated(message),
            Refusal::PermissionDenied(message) => Status::permission_denied(message),
        }
    }

    /// The message, for logs.
    pub fn message(&self) -> &str {
        match self {
            Refusal::Unauthenticated(message) | Refusal::PermissionDenied(message) => message,
        }
    }
}

fn unauthenticated(message: impl Into<String>) -> Refusal {
    Refusal::Unauthenticated(message.into())
}

/// A secret the services of one deployment present to each other. It never leaves the
/// process that made it and is never logged.
#[derive(Clone)]
pub struct InternalKey(Arc<str>);

impl InternalKey {
    /// Makes a new random key.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|error| {
            anyhow::anyhow!("cannot read random bytes for the internal key: {error}")
        })?;
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        Ok(InternalKey(Arc::from(format!("rollcall-internal.{hex}"))))
    }

    /// The value of the `authorization` header that carries the key.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    fn matches(&self, token: &str) -> bool {
        self.0.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

impl std::fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalKey(..)")
    }
}

/// How callers are authenticated.
#[derive(Debug)]
pub enum Mode {
    /// No authentication: every caller gets [`Principal::development`]. Loopback only.
    Development,
    /// Bearer tokens from the configured identity provider.
    Tokens(TokenVerifier),
}

/// Authenticates every call the server receives.
#[derive(Debug)]
pub struct Authenticator {
    mode: Mode,
    internal: InternalKey,
}

impl Authenticator {
    /// An authenticator for `mode` that also accepts the services' own `internal` key.
    pub fn new(mode: Mode, internal: InternalKey) -> Self {
        Authenticator { mode, internal }
    }

    /// True in development mode.
    pub fn is_development(&self) -> bool {
        matches!(self.mode, Mode::Development)
    }

    /// Identifies the caller from the `authorization` header, if any.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, Refusal> {
        let token = match header {
            Some(value) => Some(bearer_token(value)?),
            None => None,
        };
        if let Some(token) = token
            && self.internal.matches(token)
        {
            return Ok(Principal::internal());
        }
        match (&self.mode, token) {
            (Mode::Development, _) => Ok(Principal::development()),
            (Mode::Tokens(_), None) => Err(unauthenticated(
                "no bearer token: send the header `authorization: Bearer <token>` with a token \
                 from the trust's identity provider (the rollcall commands read it from \
                 --token-file, ROLLCALL_TOKEN_FILE or ROLLCALL_TOKEN)",
            )),
            (Mode::Tokens(verifier), Some(token)) => verifier.verify(token).await,
        }
    }

    /// True when `request` comes from another of rollcall's own services: it carries this
    /// process's internal key, or a client certificate that the TLS layer verified against
    /// the services' CA.
    pub fn is_service_call<B>(&self, request: &http::Request<B>) -> bool {
        if crate::certificate::has_client_certificate(request) {
            return true;
        }
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| bearer_token(value).ok())
            .is_some_and(|token| self.internal.matches(token))
    }

    /// Returns the subject of the token in a rejected call's `authorization` header when its
    /// signature, issuer and audience check out (see [`TokenVerifier::signed_subject`]), and
    /// an empty string otherwise.
    pub fn rejected_subject(&self, header: Option<&str>) -> String {
        let (Mode::Tokens(verifier), Some(Ok(token))) = (&self.mode, header.map(bearer_token))
        else {
            return String::new();
        };
        verifier.signed_subject(token).unwrap_or_default()
    }
}

fn bearer_token(value: &str) -> Result<&str, Refusal> {
    let mut parts = value.splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default().trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthenticated(
            "the authorization header is not `Bearer <token>`: send the token from the trust's \
             identity provider after the word Bearer",
        ));
    }
    Ok(token)
}

/// Verifies tokens against the identity provider's keys and the settings.
#[derive(Debug)]
pub struct TokenVerifier {
    settings: TokenSettings,
    keys: Arc<KeyStore>,
}

impl TokenVerifier {
    /// Reads the key set and returns a verifier. Fails when the keys cannot be read.
    pub async fn new(settings: TokenSettings) -> anyhow::Result<Self> {
        settings.check()?;
        let keys = Arc::new(KeyStore::load(settings.key_source()?).await?);
        tracing::info!(
            issuer = %settings.issuer,
            audience = %settings.audience,
            keys = %keys.source(),
            clock_skew_secs = settings.clock_skew_seconds,
            "Verifying bearer tokens"
        );
        Ok(TokenVerifier { settings, keys })
    }

    /// Starts reading the key set again on the configured schedule.
    pub fn spawn_refresh(&self) -> tokio::task::JoinHandle<()> {
        Arc::clone(&self.keys).spawn_refresh(std::time::Duration::from_secs(
            self.settings.jwks_refresh_seconds,
        ))
    }

    /// Checks a token's signature, issuer, audience and times, then reads the grants.
    pub async fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            unauthenticated(
                "the bearer token is not a JSON Web Token: send the access token the identity \
                 provider issued for rollcall",
            )
        })?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(unauthenticated(format!(
                "the token is signed with {:?}, which rollcall does not accept: configure the \
                 identity provider to sign with RS256, PS256, ES256 or EdDSA",
                header.alg
            )));
        }
        let mut keys = self.keys.current();
        let mut jwk = find_key(&keys.keys, header.kid.as_deref());
        if jwk.is_none() && self.keys.refresh_for_unknown_key().await {
            keys = self.keys.current();
            jwk = find_key(&keys.keys, header.kid.as_deref());
        }
        let Some(jwk) = jwk else {
            return Err(unauthenticated(format!(
                "the token's key id {:?} is not in the key set from {}: the token comes from \
                 another identity provider, or the keys were rotated and cannot be read",
                header.kid.unwrap_or_default(),
                self.keys.source()
            )));
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|error| {
            unauthenticated(format!(
                "the key {:?} in {} cannot be used: {error}",
                jwk.common.key_id.clone().unwrap_or_default(),
                self.keys.source()
            ))
        })?;
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation(header.alg))
                .map_err(|error| self.explain(error.kind(), token))?
                .claims;
        self.principal(&claims)
    }

    /// The checks every token must pass besides its signature.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.clock_skew_seconds;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.settings.audience]);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation
    }

    /// Returns the subject of a rejected token whose signature, issuer and audience check out,
    /// so the audit record names who was rejected: a token that expired, is not valid yet, or
    /// grants no usable role. Returns `None` for a token that does not prove its subject. The
    /// key set is not read again for an unknown key id.
    pub fn signed_subject(&self, token: &str) -> Option<String> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if !ACCEPTED.contains(&header.alg) {
            return None;
        }
        let keys = self.keys.current();
        let key = DecodingKey::from_jwk(find_key(&keys.keys, header.kid.as_deref())?).ok()?;
        let mut validation = self.validation(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .ok()?
            .claims;
        claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|subject| !subject.is_empty())
            .map(str::to_owned)
    }

    /// Says what was wrong with a token whose check failed.
    fn explain(&self, kind: &ErrorKind, token: &str) -> Refusal {
        let claims = unverified_claims(token);
        let claim = |name: &str| claims.get(name).map(Value::to_string).unwrap_or_default();
        let skew = self.settings.clock_skew_seconds;
        let message = match kind {
            ErrorKind::ExpiredSignature => format!(
                "the token expired at {} (allowing {skew} s of clock skew): sign in again for a \
                 new token",
                time_claim(&claims, "exp")
            ),
            ErrorKind::ImmatureSignature => format!(
                "the token is not valid until {} (allowing {skew} s of clock skew): check the \
                 clocks of this server and of the identity provider",
                time_claim(&claims, "nbf")
            ),
            ErrorKind::InvalidAudience => format!(
                "the token is for audience {}, not {:?}: request a token for rollcall",
                claim("aud"),
                self.settings.audience
            ),
            ErrorKind::InvalidIssuer => format!(
                "the token was issued by {}, not {:?}: use the trust's identity provider",
                claim("iss"),
                self.settings.issuer
            ),
            ErrorKind::InvalidSignature => format!(
                "the token's signature does not match its key in {}: the token was altered or \
                 comes from another identity provider",
                self.keys.source()
            ),
            ErrorKind::MissingRequiredClaim(name) => {
                format!("the token has no {name:?} claim: rollcall needs exp, iss, aud and sub")
            }
            ErrorKind::InvalidAlgorithm => format!(
                "the token's algorithm does not match its key in {}",
                self.keys.source()
            ),
            other => format!("the token cannot be read: {other:?}"),
        };
        unauthenticated(message)
    }

    /// Reads the subject, roles, schools and local authority from verified claims.
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, Refusal> {
        let names = &self.settings.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|subject| !subject.is_empty())
            .ok_or_else(|| unauthenticated("the token's sub claim is empty or not a string"))?
            .to_owned();
        let mut roles = BTreeSet::new();
        for name in strings(claims.get(&names.roles)) {
            match name.parse::<Role>() {
                Ok(Role::Service) | Err(_) => {
                    tracing::debug!(
                        subject,
                        role = name,
                        "Ignored a role rollcall does not grant from tokens"
                    );
                }
                Ok(role) => {
                    roles.insert(role);
                }
            }
        }
        if roles.is_empty() {
            return Err(Refusal::PermissionDenied(format!(
                "the token for {subject} grants no rollcall role in its {:?} claim: ask trust IT \
                 to assign one, such as head_of_year or office_staff",
                names.roles
            )));
        }
        let schools = if roles.iter().any(|role| role.is_trust_wide()) {
            Schools::Trust
        } else {
            let mut granted = BTreeSet::new();
            for school in strings(claims.get(&names.schools)) {
                let laestab = rollcall_domain::school::parse_laestab(school).map_err(|_| {
                    unauthenticated(format!(
                        "the token's {:?} claim has {school:?}, which is not a LAESTAB: the \
                         identity provider should send seven digits, for example \"9192001\"",
                        names.schools
                    ))
                })?;
                granted.insert(laestab);
            }
            Schools::Granted(granted)
        };
        let local_authority = match claims.get(&names.local_authority) {
            None | Some(Value::Null) => None,
            Some(Value::String(code))
                if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(code.clone())
            }
            Some(other) => {
                return Err(unauthenticated(format!(
                    "the token's {:?} claim is {other}, not a three-digit local authority code \
                     such as \"919\"",
                    names.local_authority
                )));
            }
        };
        if roles.contains(&Role::LocalAuthorityAttendanceOfficer) && local_authority.is_none() {
            return Err(Refusal::PermissionDenied(format!(
                "the token for {subject} holds local_authority_attendance_officer but no {:?} claim: the \
                 identity provider must say which authority the officer works for",
                names.local_authority
            )));
        }
        Ok(Principal {
            subject,
            roles,
            schools,
            local_authority,
            credential: Credential::Token {
                issuer: self.settings.issuer.clone(),
            },
        })
    }
}

/// The key the token names, or the only signing key when it names none.
fn find_key<'a>(keys: &'a [Jwk], kid: Option<&str>) -> Option<&'a Jwk> {
    let signing = keys
        .iter()
        .filter(|key| !matches!(key.common.public_key_use, Some(PublicKeyUse::Encryption)));
    match kid {
        Some(kid) => signing
            .into_iter()
            .find(|key| key.common.key_id.as_deref() == Some(kid)),
        None => {
            let all: Vec<&Jwk> = signing.collect();
            (all.len() == 1).then(|| all[0])
        }
    }
}

/// A claim that may be one string, a list of strings, or a space-separated string.
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(text)) => text.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The claims of a token whose signature checked out but whose claims did not, to explain why.
fn unverified_claims(token: &str) -> Map<String, Value> {
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> String {
    claims
        .get(name)
        .and_then(Value::as_i64)
        .and_then(|seconds| DateTime::<Utc>::from_timestamp(seconds, 0))
        .map(|time| time.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "an unreadable time".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_must_be_bearer() {
        assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("bearer  abc "), Ok("abc"));
        assert!(bearer_token("Basic abc").is_err());
        assert!(bearer_token("Bearer").is_err());
    }

    #[test]
    fn claims_may_be_lists_or_strings() {
        let list = serde_json::json!(["a", "b", 3]);
        assert_eq!(strings(Some(&list)), vec!["a", "b"]);
        let text = serde_json::json!("a b");
        assert_eq!(strings(Some(&text)), vec!["a", "b"]);
        assert!(strings(None).is_empty());
    }

    #[tokio::test]
    async fn the_internal_key_is_the_services_identity() {
        let key = InternalKey::generate().expect("random bytes");
        let other = InternalKey::generate().expect("random bytes");
        let auth = Authenticator::new(Mode::Development, key.clone());
        let header = key.header_value();
        assert_eq!(
            auth.authenticate(Some(&header)).await,
            Ok(Principal::internal())
        );
        assert_eq!(
            auth.authenticate(Some(&other.header_value())).await,
            Ok(Principal::development())
        );
        assert!(!format!("{key:?}").contains("rollcall-internal."));
    }
}
