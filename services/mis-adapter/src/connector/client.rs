//! The HTTP client of one school's MIS data broker: bearer-token requests, a request-rate
//! limit, and retries of reads after 429, 5xx replies and network failures.
//!
//! Reads are retried within a run: a 429 waits for its `Retry-After` (or the backoff when it
//! has none), and a 5xx reply, a timeout or a refused connection waits for capped exponential
//! backoff with jitter. A wait longer than `retries.max_retry_seconds` ends the run instead,
//! and the next run waits for it. Write-backs make one attempt per call, because their job
//! keeps its own retries.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::connector::config::{BrokerRetryConfig, SchoolConnectorConfig, read_token};
use crate::delivery::destination::redact_for_log;
use crate::delivery::https::retry_after;

/// The largest reply read, in bytes. A page of 1,000 students with their details is a few
/// megabytes.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// The maximum number of characters of a broker's error reply kept in a message.
const MAX_ERROR_CHARS: usize = 300;

/// The `updated_after` format the broker reads: UTC, to the second.
pub(crate) const UPDATED_AFTER_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Spaces requests to one broker so that no more than `requests_per_minute` start in any
/// minute. Pull runs and write-back jobs of the same school share one limiter.
///
/// NOTE: the limit is kept per server process. Two servers sharing a database may together
/// send up to twice the rate for a school, while one pulls and the other writes back.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    interval: Duration,
    next: Arc<Mutex<Option<Instant>>>,
}

impl RateLimiter {
    pub(crate) fn new(requests_per_minute: u32) -> Self {
        Self {
            interval: Duration::from_secs(60) / requests_per_minute.max(1),
            next: Arc::new(Mutex::new(None)),
        }
    }

    /// Waits until the next request may start, and books the slot after it.
    pub(crate) async fn wait(&self) {
        let mut next = self.next.lock().await;
        let (start, following) = book_slot(*next, Instant::now(), self.interval);
        tokio::time::sleep_until(start).await;
        *next = Some(following);
    }
}

/// Returns when a request may start, given the earliest slot booked and the time now, and the
/// slot after it.
fn book_slot(booked: Option<Instant>, now: Instant, interval: Duration) -> (Instant, Instant) {
    let start = booked.map_or(now, |at| at.max(now));
    (start, start + interval)
}

/// Requests made during a run, for its record.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RequestCounts {
    pub(crate) requests: u32,
    pub(crate) retries: u32,
}

/// The reason a read from the broker failed.
#[derive(Debug, Clone)]
pub(crate) enum BrokerError {
    /// The request failed for good, or after its last attempt.
    Failed { detail: String, http_status: u16 },
    /// The broker asked to wait longer than `retries.max_retry_seconds`.
    Deferred {
        detail: String,
        until: DateTime<Utc>,
    },
}

impl BrokerError {
    pub(crate) fn detail(&self) -> &str {
        match self {
            Self::Failed { detail, .. } | Self::Deferred { detail, .. } => detail,
        }
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.detail())
    }
}

/// The outcome of one attempt.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Worth trying again: 408, 425, 429, a 5xx reply, or no reply.
    Transient {
        detail: String,
        http_status: u16,
        retry_after: Option<Duration>,
    },
    /// Not worth trying again: any other status, or a reply that is not JSON.
    Permanent { detail: String, http_status: u16 },
}

impl AttemptError {
    pub(crate) fn detail(&self) -> &str {
        match self {
            Self::Transient { detail, .. } | Self::Permanent { detail, .. } => detail,
        }
    }
}

/// One page of a list.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    /// The records of the page, as JSON objects.
    pub(crate) records: Vec<Value>,
    /// True when `meta.pagination.more` reports further pages.
    pub(crate) more: bool,
}

/// The client of one school's broker.
#[derive(Clone)]
pub(crate) struct BrokerClient {
    laestab: String,
    school_id: String,
    base_url: Url,
    token: String,
    client: reqwest::Client,
    limiter: RateLimiter,
    retries: BrokerRetryConfig,
}

impl std::fmt::Debug for BrokerClient {
    // The token stays out of debug output.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BrokerClient")
            .field("laestab", &self.laestab)
            .field("school_id", &self.school_id)
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl BrokerClient {
    /// Reads the token and CA certificates of a school's connector and builds its client.
    pub(crate) fn new(
        school: &SchoolConnectorConfig,
        retries: &BrokerRetryConfig,
    ) -> anyhow::Result<Self> {
        let base_url = Url::parse(school.base_url.trim_end_matches('/'))
            .with_context(|| format!("base_url {:?} is not a valid URL", school.base_url))?;
        let token = read_token(school)?;
        let timeout = school.timeout();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            // The token must not follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true);
        if let Some(path) = &school.ca_file {
            for certificate in read_ca_file(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().with_context(|| match &school.ca_file {
            Some(path) => format!(
                "cannot set up the broker's HTTPS client with ca_file {}; check that it is a \
                 PEM CA certificate",
                path.display()
            ),
            None => "cannot set up the broker's HTTPS client".to_owned(),
        })?;
        Ok(Self {
            laestab: school.laestab.clone(),
            school_id: school.school_id.clone(),
            base_url,
            token,
            client,
            limiter: RateLimiter::new(school.requests_per_minute),
            retries: retries.clone(),
        })
    }

    /// Returns the URL of a resource of the school, such as `students`.
    fn url(&self, resource: &str) -> Url {
        let mut url = self.base_url.clone();
        let path = format!(
            "{}/schools/{}{}{resource}",
            url.path().trim_end_matches('/'),
            self.school_id,
            if resource.is_empty() { "" } else { "/" }
        );
        url.set_path(&path);
        url
    }

    /// Reads the school.
    pub(crate) async fn school(&self, counts: &mut RequestCounts) -> Result<Value, BrokerError> {
        let reply = self.get_json(self.url(""), counts).await?;
        Ok(reply.get("data").cloned().unwrap_or(Value::Null))
    }

    /// Reads one page of a list, of records changed after `after`.
    pub(crate) async fn page(
        &self,
        resource: &str,
        after: Option<DateTime<Utc>>,
        page: u32,
        per_page: u32,
        include: &str,
        counts: &mut RequestCounts,
    ) -> Result<Page, BrokerError> {
        let mut url = self.url(resource);
        {
            let mut query = url.query_pairs_mut();
            if let Some(after) = after {
                query.append_pair(
                    "updated_after",
                    &after.format(UPDATED_AFTER_FORMAT).to_string(),
                );
            }
            if !include.is_empty() {
                query.append_pair("include", include);
            }
            query.append_pair("per_page", &per_page.to_string());
            query.append_pair("page", &page.to_string());
        }
        let reply = self.get_json(url, counts).await?;
        parse_page(resource, &reply)
    }

    /// Reads every attendance code the MIS has, as (code, the broker's id of the code).
    pub(crate) async fn attendance_codes(
        &self,
        counts: &mut RequestCounts,
    ) -> Result<Vec<(String, String)>, BrokerError> {
        let mut codes = Vec::new();
        let mut page = 1;
        loop {
            let read = self
                .page("attendance-codes", None, page, 200, "", counts)
                .await?;
            for record in &read.records {
                let code = record.get("code").and_then(Value::as_str);
                let id = record.get("id").and_then(Value::as_str);
                if let (Some(code), Some(id)) = (code, id) {
                    codes.push((code.to_owned(), id.to_owned()));
                }
            }
            if !read.more || read.records.is_empty() {
                return Ok(codes);
            }
            page += 1;
        }
    }

    /// Posts session marks to the MIS once and returns the reply.
    pub(crate) async fn write_session_marks(&self, body: &Value) -> Result<Value, AttemptError> {
        self.limiter.wait().await;
        let request = self.client.post(self.url("attendance/session")).json(body);
        self.send(request).await
    }

    /// Reads JSON from `url`, retrying as the module documentation describes.
    async fn get_json(&self, url: Url, counts: &mut RequestCounts) -> Result<Value, BrokerError> {
        let target = describe_url(&url);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            self.limiter.wait().await;
            counts.requests += 1;
            let error = match self.send(self.client.get(url.clone())).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let (retry_after, http_status) = match &error {
                AttemptError::Permanent {
                    detail,
                    http_status,
                } => {
                    return Err(BrokerError::Failed {
                        detail: format!("GET {target}: {detail}"),
                        http_status: *http_status,
                    });
                }
                AttemptError::Transient {
                    retry_after,
                    http_status,
                    ..
                } => (*retry_after, *http_status),
            };
            if attempt >= self.retries.max_attempts {
                return Err(BrokerError::Failed {
                    detail: format!(
                        "GET {target}: {} (gave up after {attempt} attempts)",
                        error.detail()
                    ),
                    http_status,
                });
            }
            let wait = wait_before_retry(&self.retries, attempt, http_status, retry_after);
            if wait > Duration::from_secs_f64(self.retries.max_retry_seconds) {
                let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
                return Err(BrokerError::Deferred {
                    detail: format!(
                        "GET {target}: {}; the broker asked to wait {} s, longer than \
                         retries.max_retry_seconds, so the next run starts after {}",
                        error.detail(),
                        wait.as_secs(),
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    until,
                });
            }
            tracing::warn!(
                laestab = %self.laestab,
                school_id = %self.school_id,
                target = %target,
                http_status,
                attempt,
                wait_ms = wait.as_millis() as u64,
                error = %redact_for_log(error.detail()),
                "Broker request failed; retrying"
            );
            counts.retries += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends one request with the token and reads a JSON reply.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, AttemptError> {
        let mut authorisation =
            HeaderValue::from_str(&format!("Bearer {}", self.token)).map_err(|_| {
                AttemptError::Permanent {
                    detail: "the token cannot be sent in an HTTP header".to_owned(),
                    http_status: 0,
                }
            })?;
        authorisation.set_sensitive(true);
        let sent = request
            .header(AUTHORIZATION, authorisation)
            .header(ACCEPT, "application/json")
            .send()
            .await;

        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Err(AttemptError::Transient {
                    detail: self.redact(&describe_request_error(&error)),
                    http_status: 0,
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let wait = retry_after(response.headers(), Utc::now());
        let body = read_limited(&mut response).await;
        let http_status = status.as_u16();

        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|error| AttemptError::Permanent {
                detail: format!(
                    "the broker replied {status} with a body that is not JSON: {error}"
                ),
                http_status,
            });
        }
        let text = truncate(String::from_utf8_lossy(&body).trim());
        let detail = self.redact(&match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
                "the broker replied {status}: {text}; check that the token in token_file or \
                 token_env is current and that the school has approved access"
            ),
            StatusCode::NOT_FOUND => {
                format!("the broker replied {status}: {text}; check base_url and school_id")
            }
            _ if status.is_redirection() => format!(
                "the broker replied {status}, a redirect, which rollcall does not follow so \
                 that the token is not sent elsewhere; check base_url"
            ),
            _ => format!("the broker replied {status}: {text}"),
        });

        if is_retryable(status) {
            Err(AttemptError::Transient {
                detail,
                http_status,
                retry_after: wait,
            })
        } else {
            Err(AttemptError::Permanent {
                detail,
                http_status,
            })
        }
    }

    fn redact(&self, text: &str) -> String {
        text.replace(&self.token, "[token]")
    }
}

/// Returns how long to wait before retry number `attempt` (from 1) of a read.
///
/// A 429 waits for its Retry-After when it has one. Any other failure waits for the backoff,
/// which doubles from `first_retry_seconds` up to `max_retry_seconds` and is scaled by a
/// random factor from 0.5 to 1, and never less than a Retry-After the reply gave.
pub(crate) fn wait_before_retry(
    retries: &BrokerRetryConfig,
    attempt: u32,
    http_status: u16,
    retry_after: Option<Duration>,
) -> Duration {
    if http_status == 429
        && let Some(wait) = retry_after
    {
        return wait;
    }
    let first = Duration::from_secs_f64(retries.first_retry_seconds);
    let max = Duration::from_secs_f64(retries.max_retry_seconds);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(first)
        .min(max)
        .mul_f64(rand::random_range(0.5..=1.0));
    backoff.max(retry_after.unwrap_or_default())
}

/// 408 Request Timeout, 425 Too Early, 429 Too Many Requests and every 5xx are retried.
fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status.as_u16() == 425
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Reads `data` and `meta.pagination.more` from a list reply.
fn parse_page(resource: &str, reply: &Value) -> Result<Page, BrokerError> {
    let Some(records) = reply.get("data").and_then(Value::as_array) else {
        return Err(BrokerError::Failed {
            detail: format!(
                "the broker's {resource} reply has no \"data\" array; check that base_url \
                 names the API's version, such as https://api.broker.example/v1.0"
            ),
            http_status: 200,
        });
    };
    let more = reply
        .pointer("/meta/pagination/more")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Page {
        records: records.clone(),
        more,
    })
}

/// Returns a URL's path and query for messages and logs. They carry ids and dates only.
fn describe_url(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// Reads at most [`MAX_REPLY_BYTES`] of the body. A body that cannot be read counts as empty.
async fn read_limited(response: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_REPLY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_REPLY_BYTES);
    body
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
    cut.push_str("...");
    cut
}

/// Describes a failed request with the causes reqwest wraps, such as a refused connection or
/// an untrusted certificate.
fn describe_request_error(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "the request to the broker timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect to the broker".to_owned()
    } else {
        "the request to the broker failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("certificate") {
        text.push_str("; if the broker uses its own certificate authority, set ca_file to it");
    }
    text
}

/// Reads the PEM certificates in `path`.
fn read_ca_file(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot read ca_file {}: {error}; give a PEM file of the CA certificate that \
             issued the broker's server certificate",
            path.display()
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!(
            "ca_file {} contains no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)",
            path.display()
        );
    }
    reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("ca_file {} is not a valid PEM certificate", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries() -> BrokerRetryConfig {
        BrokerRetryConfig {
            max_attempts: 5,
            first_retry_seconds: 2.0,
            max_retry_seconds: 16.0,
        }
    }

    #[test]
    fn rate_limited_reply_waits_for_retry_after() {
        let wait = wait_before_retry(&retries(), 1, 429, Some(Duration::from_secs(7)));
        assert_eq!(wait, Duration::from_secs(7));
        let longer = wait_before_retry(&retries(), 1, 429, Some(Duration::from_secs(90)));
        assert_eq!(longer, Duration::from_secs(90), "the caller defers the run");
    }

    #[test]
    fn server_errors_back_off_with_a_cap() {
        for attempt in 1..=10 {
            let wait = wait_before_retry(&retries(), attempt, 503, None);
            assert!(
                wait >= Duration::from_secs(1),
                "attempt {attempt}: {wait:?}"
            );
            assert!(
                wait <= Duration::from_secs(16),
                "attempt {attempt}: {wait:?}"
            );
        }
        let third = wait_before_retry(&retries(), 3, 500, None);
        assert!(third >= Duration::from_secs(4), "{third:?}");
        let floor = wait_before_retry(&retries(), 1, 503, Some(Duration::from_secs(10)));
        assert!(floor >= Duration::from_secs(10), "{floor:?}");
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                is_retryable(StatusCode::from_u16(code).expect("status")),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(
                !is_retryable(StatusCode::from_u16(code).expect("status")),
                "{code}"
            );
        }
    }

    #[test]
    fn page_needs_data() {
        let page = parse_page(
            "students",
            &serde_json::json!({"data": [{"id": "A1"}], "meta": {"pagination": {"more": true}}}),
        )
        .expect("valid page");
        assert_eq!(page.records.len(), 1);
        assert!(page.more);
        let last = parse_page("students", &serde_json::json!({"data": []})).expect("valid");
        assert!(!last.more);
        let error =
            parse_page("students", &serde_json::json!({"error": "x"})).expect_err("no data");
        assert!(error.detail().contains("no \"data\" array"), "{error}");
    }

    #[test]
    fn rate_limiter_spaces_requests() {
        let interval = RateLimiter::new(60).interval;
        assert_eq!(interval, Duration::from_secs(1));
        let now = Instant::now();
        let (first, next) = book_slot(None, now, interval);
        assert_eq!(first, now, "the first request starts at once");
        let (second, after) = book_slot(Some(next), now, interval);
        assert_eq!(second, now + interval);
        assert_eq!(after, now + interval * 2);
        let later = now + Duration::from_secs(10);
        let (idle, _) = book_slot(Some(after), later, interval);
        assert_eq!(idle, later, "an idle limiter does not delay");
    }
}
