//! A local SMS provider for tests, in the shape rollcall's SMS channel speaks: `POST
//! /v1/messages` with a bearer key, an `Idempotency-Key` header and a JSON body
//! `{"to", "from", "body", "reference"}`, with the reply `{"id"}`. A repeated idempotency key
//! returns the first message's id and sends nothing more. A test can make it fail the next
//! requests.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A text message the provider accepted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReceivedSms {
    /// The recipient, in international form.
    pub to: String,
    /// The sender name.
    pub from: String,
    /// The text.
    pub body: String,
    /// The sender's reference.
    pub reference: String,
}

#[derive(Debug, Default)]
struct State {
    api_key: String,
    received: Vec<ReceivedSms>,
    by_key: HashMap<String, String>,
    requests: usize,
    failures: VecDeque<(StatusCode, Option<u64>)>,
}

/// A running local SMS provider. It stops when dropped.
#[derive(Debug)]
pub struct SmsProvider {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for SmsProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SmsProvider {
    /// Starts a provider on a free port of 127.0.0.1 that accepts requests bearing `api_key`.
    pub async fn start(api_key: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            api_key: api_key.to_owned(),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%error, "Test SMS connection ended with an error");
                    }
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Returns the URL of the send endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/v1/messages", self.addr)
    }

    /// Returns every message accepted so far, each once.
    pub fn received(&self) -> Vec<ReceivedSms> {
        lock(&self.state).received.clone()
    }

    /// Requests received, repeats and failures included.
    pub fn requests(&self) -> usize {
        lock(&self.state).requests
    }

    /// Fails the next `count` requests with 503 and a Retry-After of `retry_after` seconds.
    pub fn fail_temporarily(&self, count: usize, retry_after: Option<u64>) {
        let mut state = lock(&self.state);
        for _ in 0..count {
            state
                .failures
                .push_back((StatusCode::SERVICE_UNAVAILABLE, retry_after));
        }
    }

    /// Rejects the next request with 422 (rejected for good).
    pub fn reject_next(&self) {
        lock(&self.state)
            .failures
            .push_back((StatusCode::UNPROCESSABLE_ENTITY, None));
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let authorisation = header("authorization");
    let key = header("idempotency-key");
    let path_ok = request.method() == hyper::Method::POST && request.uri().path() == "/v1/messages";
    let body = request.into_body().collect().await?.to_bytes();

    let mut state = lock(&state);
    state.requests += 1;
    if !path_ok {
        return Ok(reply(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#));
    }
    if authorisation.as_deref() != Some(&format!("Bearer {}", state.api_key)) {
        return Ok(reply(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid API key"}"#,
        ));
    }
    if let Some((status, retry_after)) = state.failures.pop_front() {
        let mut response = reply(status, r#"{"error":"try later"}"#);
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(seconds),
            );
        }
        return Ok(response);
    }
    let Some(key) = key else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            r#"{"error":"Idempotency-Key header missing"}"#,
        ));
    };
    if let Some(id) = state.by_key.get(&key) {
        return Ok(reply(StatusCode::OK, &format!(r#"{{"id":"{id}"}}"#)));
    }
    let Ok(message) = serde_json::from_slice::<ReceivedSms>(&body) else {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid JSON"}"#,
        ));
    };
    if !message.to.starts_with('+') {
        return Ok(reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"error":"the number must be in international form"}"#,
        ));
    }
    state.received.push(message);
    let id = format!("sms-{}", state.received.len());
    state.by_key.insert(key, id.clone());
    Ok(reply(StatusCode::CREATED, &format!(r#"{{"id":"{id}"}}"#)))
}
