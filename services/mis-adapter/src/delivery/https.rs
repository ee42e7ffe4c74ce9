//! An HTTPS destination: one signed POST per pack.
//!
//! The body is the ZIP file. `Idempotency-Key` is the referral id, so the receiver drops a
//! repeat and a rebuilt pack never opens a second referral. `X-Rollcall-Signature` is
//! `v1=` and the hex HMAC-SHA256, under the shared key, of the timestamp, a full stop and the
//! body. A 200 or 201 reply carries the receipt as JSON: `{"receipt_id", "received_at"}`.
//! docs/delivery.md describes the exchange for the receiver's developers.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use sha2::Sha256;

use crate::delivery::config::{DestinationConfig, read_hmac_key};
use crate::delivery::destination::{DeliverError, Outgoing, Receipt, redact_secret};

/// The maximum number of reply bytes read. A receipt is far smaller, and a longer error page
/// is cut.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The maximum number of characters of a rejection kept with the delivery.
const MAX_ERROR_CHARS: usize = 500;

/// The maximum Retry-After honoured. A receiver that asks for more is retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// An HTTPS destination.
pub(crate) struct HttpsDestination {
    pub(crate) name: String,
    url: reqwest::Url,
    key: Vec<u8>,
    client: reqwest::Client,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for HttpsDestination {
    // The HMAC key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsDestination")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The receipt in a 200 or 201 reply.
#[derive(Debug, Deserialize)]
struct ReceiptReply {
    receipt_id: String,
    received_at: String,
}

impl HttpsDestination {
    /// Reads the key and the extra CA certificates and builds the HTTP client.
    pub(crate) fn new(config: &DestinationConfig) -> anyhow::Result<Self> {
        let url_text = config.url.as_deref().context("url is missing")?;
        let url = reqwest::Url::parse(url_text)
            .with_context(|| format!("url {url_text:?} is not a valid URL"))?;
        let key = read_hmac_key(config)?;
        let timeout = config.timeout();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            // A redirected POST may turn into a GET or go elsewhere, so a redirect is
            // reported instead of followed.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true);
        if let Some(path) = &config.ca_file {
            for certificate in read_ca_file(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        // reqwest decodes the CA certificates only here, so a damaged one fails at this step.
        let client = builder.build().with_context(|| match &config.ca_file {
            Some(path) => format!(
                "cannot set up the HTTPS client with ca_file {}; check that it is the PEM CA \
                 certificate the local authority gave you",
                path.display()
            ),
            None => "cannot set up the HTTPS client".to_owned(),
        })?;
        Ok(Self {
            name: config.name.clone(),
            url,
            key,
            client,
            timeout,
        })
    }

    pub(crate) async fn deliver(&self, outgoing: &Outgoing) -> Result<Receipt, DeliverError> {
        let timestamp = Utc::now().timestamp();
        let signature = sign(&self.key, timestamp, &outgoing.pack);
        let sent = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/zip")
            .header("Idempotency-Key", &outgoing.referral_id)
            .header("X-Rollcall-Pack-Id", &outgoing.pack_id)
            .header("X-Rollcall-Pack-Sha256", &outgoing.sha256)
            .header("X-Rollcall-Timestamp", timestamp.to_string())
            .header("X-Rollcall-Signature", signature)
            .body(outgoing.pack.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                return Err(DeliverError::transient(redact_secret(
                    &describe_request_error(&error),
                    &self.key,
                )));
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers(), Utc::now());
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(&mut response).await;
        let text = String::from_utf8_lossy(&body);
        let http_status = i32::from(status.as_u16());

        if status == StatusCode::OK || status == StatusCode::CREATED {
            return parse_receipt(&body, http_status).map_err(|problem| {
                // The receiver took the pack but its reply is unreadable. Sending again is
                // safe because it drops a repeated idempotency key.
                DeliverError::Transient {
                    detail: redact_secret(
                        &format!("receiver replied {status} without a valid receipt: {problem}"),
                        &self.key,
                    ),
                    http_status,
                    retry_after: None,
                }
            });
        }
        let mut detail = format!("receiver replied {status}: {}", truncate(text.trim()));
        if status.is_redirection() {
            detail = format!(
                "receiver replied {status}, redirecting to {}: set url to the new address if \
                 the local authority confirms it",
                location.as_deref().unwrap_or("an address it did not give")
            );
        }
        let detail = redact_secret(&detail, &self.key);
        if is_retryable(status) {
            Err(DeliverError::Transient {
                detail,
                http_status,
                retry_after,
            })
        } else {
            Err(DeliverError::Permanent {
                detail,
                http_status,
            })
        }
    }
}

/// Returns `v1=` and the hex HMAC-SHA256 of `"<timestamp>.<body>"` under `key`.
pub(crate) fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC pads or hashes a key of any length (RFC 2104), so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// 408 Request Timeout, 425 Too Early, 429 Too Many Requests and every 5xx are retried.
fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status.as_u16() == 425
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

fn parse_receipt(body: &[u8], http_status: i32) -> Result<Receipt, String> {
    let reply: ReceiptReply = serde_json::from_slice(body)
        .map_err(|error| format!("expected JSON with receipt_id and received_at ({error})"))?;
    let receipt_id = reply.receipt_id.trim();
    if receipt_id.is_empty() || receipt_id.len() > 200 {
        return Err(format!(
            "receipt_id must be 1 to 200 characters, not {}",
            receipt_id.len()
        ));
    }
    let received_at = DateTime::parse_from_rfc3339(&reply.received_at)
        .map_err(|error| {
            format!(
                "received_at {:?} is not an RFC 3339 time: {error}",
                truncate(&reply.received_at)
            )
        })?
        .with_timezone(&Utc);
    Ok(Receipt {
        receipt_id: receipt_id.to_owned(),
        received_at,
        path: String::new(),
        http_status,
    })
}

/// Reads a Retry-After header, given either in seconds or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = DateTime::parse_from_rfc2822(value)
                .ok()?
                .with_timezone(&Utc);
            (at - now).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Reads at most [`MAX_REPLY_BYTES`] of the body. A body that cannot be read counts as empty,
/// because the status alone decides what happens next.
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
/// an untrusted certificate. The URL is left out: the destination's name is logged with it.
fn describe_request_error(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "the request timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect to the receiver".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("certificate") {
        text.push_str(
            "; if the local authority uses its own certificate authority, set ca_file to its \
             CA certificate",
        );
    }
    text
}

/// Reads the PEM certificates in `path`.
fn read_ca_file(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot read ca_file {}: {error}; give a PEM file of the CA certificate that the \
             local authority's server certificate is issued by",
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

    #[test]
    fn signature_matches_documented_example() {
        // The worked example in docs/delivery.md.
        let key = b"an-example-key-of-32-bytes-long!";
        // An empty ZIP archive: the end-of-central-directory record alone.
        let mut body = b"PK\x05\x06".to_vec();
        body.extend([0; 18]);
        let signature = sign(key, 1_767_225_600, &body);
        assert_eq!(
            signature,
            "v1=699b68a067599ba06536e17ce34a5375cd4e4ab161859c0cee51ca0c65aa7c14"
        );
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 425, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(code).expect("status");
            assert!(is_retryable(status), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 422] {
            let status = StatusCode::from_u16(code).expect("status");
            assert!(!is_retryable(status), "{code}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_date() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Thu, 01 Jan 2026 12:01:30 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(90)));
        headers.insert(RETRY_AFTER, "9999999".parse().expect("header"));
        assert_eq!(retry_after(&headers, now), Some(MAX_RETRY_AFTER));
        headers.insert(RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn receipt_needs_id_and_time() {
        let receipt = parse_receipt(
            br#"{"receipt_id": "LA-2026-0042", "received_at": "2026-01-01T12:00:00+00:00"}"#,
            201,
        )
        .expect("valid receipt");
        assert_eq!(receipt.receipt_id, "LA-2026-0042");
        assert_eq!(receipt.http_status, 201);
        let error = parse_receipt(br#"{"receipt_id": "x", "received_at": "yesterday"}"#, 200)
            .expect_err("bad time");
        assert!(error.contains("yesterday"), "{error}");
        assert!(parse_receipt(b"OK", 200).is_err());
    }

    #[test]
    fn long_rejection_is_cut() {
        let cut = truncate(&"x".repeat(2_000));
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS + 3);
    }
}
