//! A local authority's receiving server for tests, in the shape rollcall's HTTPS destination
//! speaks: `POST /referrals` over HTTPS with the referral pack as the body, signed with
//! HMAC-SHA256, and the reply `{"receipt_id", "received_at"}`.
//!
//! The server listens on 127.0.0.1 with a certificate issued at start by a throwaway
//! certificate authority, whose PEM [`ReceivingServer::ca_pem`] returns for the client to
//! trust. It checks every request's signature and timestamp, and stores each pack under its
//! idempotency key: a second request with the same key gets the first receipt back and
//! stores nothing. A test can make it fail, reject or stall the next requests.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The path packs are posted to.
pub const PATH: &str = "/referrals";

/// The maximum difference in seconds between a request's timestamp and the server's clock.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// A pack the server stored: the first one received for its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPack {
    /// The `Idempotency-Key` header: rollcall's referral id.
    pub idempotency_key: String,
    /// The body, a ZIP archive.
    pub body: Vec<u8>,
    /// Every request header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The receipt id returned for it.
    pub receipt_id: String,
    /// The receipt time returned for it, RFC 3339.
    pub received_at: String,
}

impl ReceivedPack {
    /// Returns the value of the first header with this name, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A reply a test requested in place of the normal one.
#[derive(Debug, Clone, Copy)]
enum Injected {
    /// 503 Service Unavailable, with a Retry-After in seconds when given.
    Unavailable(Option<u64>),
    /// 400 Bad Request with an error message.
    Reject,
}

#[derive(Debug, Default)]
struct State {
    key: Vec<u8>,
    stored: Vec<ReceivedPack>,
    by_key: HashMap<String, usize>,
    statuses: Vec<u16>,
    injected: VecDeque<Injected>,
    stall: usize,
    stalled: usize,
}

/// A running receiving server. It stops, with every open connection, when dropped.
#[derive(Debug)]
pub struct ReceivingServer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for ReceivingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReceivingServer {
    /// Starts a server on a free port of 127.0.0.1 that accepts requests signed with
    /// `hmac_key`.
    pub async fn start(hmac_key: &[u8]) -> anyhow::Result<Self> {
        let (acceptor, ca_pem) = crate::tls::tls_acceptor(
            "rollcall test local authority CA",
            "rollcall test receiving server",
        )?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            key: hmac_key.to_vec(),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so that aborting the server closes them too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let acceptor = acceptor.clone();
                let state = shared.clone();
                connections.spawn(async move {
                    let stream = match acceptor.accept(stream).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%error, "Test receiver TLS handshake failed");
                            return;
                        }
                    };
                    let service = service_fn(move |request| handle(state.clone(), request));
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%error, "Test receiver connection ended with an error");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem,
            state,
            task,
        })
    }

    /// Returns the URL packs are posted to.
    pub fn url(&self) -> String {
        format!("https://{}{PATH}", self.addr)
    }

    /// Returns the PEM certificate of the authority that issued the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Returns the packs stored, one per idempotency key, in the order first received.
    pub fn received(&self) -> Vec<ReceivedPack> {
        lock(&self.state).stored.clone()
    }

    /// Returns the number of distinct referrals (idempotency keys) stored.
    pub fn referrals(&self) -> usize {
        lock(&self.state).by_key.len()
    }

    /// Returns the status of every reply sent, in order. Stalled requests have none.
    pub fn statuses(&self) -> Vec<u16> {
        lock(&self.state).statuses.clone()
    }

    /// Fails the next `count` requests with 503, with a Retry-After of `retry_after` seconds
    /// when given.
    pub fn fail_next(&self, count: usize, retry_after: Option<u64>) {
        let mut state = lock(&self.state);
        for _ in 0..count {
            state.injected.push_back(Injected::Unavailable(retry_after));
        }
    }

    /// Rejects the next request with 400 and a JSON error message.
    pub fn reject_next(&self) {
        lock(&self.state).injected.push_back(Injected::Reject);
    }

    /// Stores the next pack, then keeps its connection open without ever replying, like a receiver
    /// whose reply is lost.
    pub fn stall_next(&self) {
        lock(&self.state).stall += 1;
    }

    /// Returns the number of requests held without a reply so far.
    pub fn stalled(&self) -> usize {
        lock(&self.state).stalled
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_reply(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, &serde_json::json!({ "error": message }).to_string())
}

/// Checks `X-Rollcall-Signature` against the HMAC of `"<timestamp>.<body>"`, comparing in
/// constant time.
fn signature_is_valid(key: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(Ok(expected)) = signature.strip_prefix("v1=").map(hex::decode) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let route_ok = request.method() == hyper::Method::POST && request.uri().path() == PATH;
    let body = request.into_body().collect().await?.to_bytes();

    let response = check_and_store(&state, route_ok, &headers, &header, &body);
    let status = response.status().as_u16();
    let stall = {
        let mut state = lock(&state);
        let stall = status == 201 && state.stall > 0;
        if stall {
            state.stall -= 1;
            state.stalled += 1;
        } else {
            state.statuses.push(status);
        }
        stall
    };
    if stall {
        std::future::pending::<()>().await;
    }
    Ok(response)
}

fn check_and_store(
    state: &Mutex<State>,
    route_ok: bool,
    headers: &[(String, String)],
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    if !route_ok {
        return error_reply(StatusCode::NOT_FOUND, "post packs to /referrals");
    }
    let mut missing = Vec::new();
    let mut value_of = |name: &str| {
        let value = header(name);
        if value.is_none() {
            missing.push(name.to_owned());
        }
        value.unwrap_or_default()
    };
    let key = value_of("idempotency-key");
    let timestamp = value_of("x-rollcall-timestamp");
    let signature = value_of("x-rollcall-signature");
    let sha256 = value_of("x-rollcall-pack-sha256");
    value_of("x-rollcall-pack-id");
    if !missing.is_empty() {
        return error_reply(
            StatusCode::BAD_REQUEST,
            &format!("missing headers: {}", missing.join(", ")),
        );
    }
    if header("content-type").as_deref() != Some("application/zip") {
        return error_reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/zip",
        );
    }
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|seconds| (Utc::now().timestamp() - seconds).abs() <= MAX_CLOCK_SKEW_SECONDS);
    if !fresh {
        return error_reply(
            StatusCode::UNAUTHORIZED,
            "X-Rollcall-Timestamp is not within 300 seconds of the receiver's clock",
        );
    }

    let mut state = lock(state);
    if !signature_is_valid(&state.key, &timestamp, body, &signature) {
        return error_reply(StatusCode::UNAUTHORIZED, "invalid X-Rollcall-Signature");
    }
    if hex::encode(Sha256::digest(body)) != sha256 {
        return error_reply(
            StatusCode::BAD_REQUEST,
            "X-Rollcall-Pack-Sha256 does not match the body",
        );
    }
    match state.injected.pop_front() {
        Some(Injected::Unavailable(retry_after)) => {
            let mut response = error_reply(StatusCode::SERVICE_UNAVAILABLE, "try again later");
            if let Some(seconds) = retry_after {
                response.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(seconds),
                );
            }
            return response;
        }
        Some(Injected::Reject) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "the referral is missing the school's contact name",
            );
        }
        None => {}
    }

    if let Some(&index) = state.by_key.get(&key) {
        let first = &state.stored[index];
        return reply(StatusCode::OK, &receipt_json(first));
    }
    let receipt_id = format!("LA-{:06}", state.stored.len() + 1);
    let received = ReceivedPack {
        idempotency_key: key.clone(),
        body: body.to_vec(),
        headers: headers.to_vec(),
        receipt_id,
        received_at: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    };
    let json = receipt_json(&received);
    let index = state.stored.len();
    state.by_key.insert(key, index);
    state.stored.push(received);
    reply(StatusCode::CREATED, &json)
}

fn receipt_json(pack: &ReceivedPack) -> String {
    serde_json::json!({
        "receipt_id": pack.receipt_id,
        "received_at": pack.received_at,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], timestamp: &str, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signature_check_accepts_only_the_key() {
        let key = b"an-example-key-of-32-bytes-long!";
        let signature = sign(key, "1767225600", b"PK\x05\x06");
        assert!(signature_is_valid(
            key,
            "1767225600",
            b"PK\x05\x06",
            &signature
        ));
        assert!(!signature_is_valid(
            key,
            "1767225601",
            b"PK\x05\x06",
            &signature
        ));
        assert!(!signature_is_valid(
            key,
            "1767225600",
            b"PK\x05\x07",
            &signature
        ));
        assert!(!signature_is_valid(
            b"another-key",
            "1767225600",
            b"PK\x05\x06",
            &signature
        ));
        assert!(!signature_is_valid(
            key,
            "1767225600",
            b"PK\x05\x06",
            "v1=zz"
        ));
        assert!(!signature_is_valid(
            key,
            "1767225600",
            b"PK\x05\x06",
            &signature[3..]
        ));
    }
}
