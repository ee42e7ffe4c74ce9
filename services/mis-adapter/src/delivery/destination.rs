//! The destinations a referral pack goes to: a folder, or an HTTPS endpoint of the local
//! authority. Both drop a repeat by themselves, so a pack whose sender stopped mid-attempt can
//! be sent again. The folder already contains the file with the same SHA-256, and the HTTPS
//! receiver returns its first receipt for a repeated idempotency key.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::delivery::config::{DeliveryConfig, DestinationKind};
use crate::delivery::directory::DirectoryDestination;
use crate::delivery::https::HttpsDestination;

/// A pack to deliver, with what the destination needs to name and sign it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) delivery_id: String,
    /// The referral, which is the idempotency key.
    pub(crate) referral_id: String,
    pub(crate) pack_id: String,
    pub(crate) laestab: String,
    pub(crate) file_name: String,
    /// SHA-256 of the pack, lower-case hex.
    pub(crate) sha256: String,
    pub(crate) pack: Vec<u8>,
}

/// The receipt a destination returns for a delivered pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Receipt {
    /// The receiver's reference, or for a folder the delivery that wrote the file.
    pub(crate) receipt_id: String,
    pub(crate) received_at: DateTime<Utc>,
    /// The pack file written, for a folder.
    pub(crate) path: String,
    /// The reply's HTTP status, for HTTPS.
    pub(crate) http_status: i32,
}

/// The failure of one attempt. Details never contain the HMAC key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeliverError {
    /// Worth trying again, no sooner than `retry_after` when the receiver asked for a wait.
    Transient {
        detail: String,
        http_status: i32,
        retry_after: Option<Duration>,
    },
    /// The receiver rejected the pack, and trying again would get the same reply.
    Permanent { detail: String, http_status: i32 },
}

impl DeliverError {
    pub(crate) fn transient(detail: impl Into<String>) -> Self {
        Self::Transient {
            detail: detail.into(),
            http_status: 0,
            retry_after: None,
        }
    }

    pub(crate) fn detail(&self) -> &str {
        match self {
            Self::Transient { detail, .. } | Self::Permanent { detail, .. } => detail,
        }
    }

    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    /// Returns the wait the receiver requested, if any.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent { .. } => None,
        }
    }

    pub(crate) fn http_status(&self) -> i32 {
        match self {
            Self::Transient { http_status, .. } | Self::Permanent { http_status, .. } => {
                *http_status
            }
        }
    }
}

/// One configured destination.
#[derive(Debug)]
pub(crate) enum Destination {
    Directory(DirectoryDestination),
    Https(HttpsDestination),
}

impl Destination {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Directory(directory) => &directory.name,
            Self::Https(https) => &https.name,
        }
    }

    pub(crate) fn kind(&self) -> DestinationKind {
        match self {
            Self::Directory(_) => DestinationKind::Directory,
            Self::Https(_) => DestinationKind::Https,
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            Self::Directory(directory) => directory.timeout,
            Self::Https(https) => https.timeout,
        }
    }

    /// Makes one attempt, which fails as retryable once the destination's timeout passes.
    pub(crate) async fn deliver(&self, outgoing: Arc<Outgoing>) -> Result<Receipt, DeliverError> {
        let timeout = self.timeout();
        let attempt = async {
            match self {
                Self::Directory(directory) => directory.deliver(outgoing).await,
                Self::Https(https) => https.deliver(&outgoing).await,
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(DeliverError::transient(format!(
                    "timed out after {} s (timeout_seconds of destination {:?})",
                    timeout.as_secs(),
                    self.name()
                )))
            })
    }
}

/// The destinations configured, in the order of the settings file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Destinations {
    list: Vec<Arc<Destination>>,
}

impl Destinations {
    /// Builds the destinations, reading HMAC keys and CA certificates. A folder that does not
    /// exist yet is only logged, because a share may be mounted after the server starts.
    pub(crate) fn from_config(config: &DeliveryConfig) -> anyhow::Result<Self> {
        let mut list = Vec::with_capacity(config.destinations.len());
        for destination in &config.destinations {
            let built = match destination.kind {
                DestinationKind::Directory => {
                    Destination::Directory(DirectoryDestination::new(destination)?)
                }
                DestinationKind::Https => {
                    Destination::Https(HttpsDestination::new(destination).map_err(|error| {
                        error.context(format!("destination {:?}", destination.name))
                    })?)
                }
            };
            list.push(Arc::new(built));
        }
        Ok(Self { list })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.list.iter()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Destination>> {
        self.list
            .iter()
            .find(|destination| destination.name() == name)
    }
}

/// Replaces every occurrence of `secret` in `text` with `[secret]`.
pub(crate) fn redact_secret(text: &str, secret: &[u8]) -> String {
    match std::str::from_utf8(secret) {
        Ok(secret) if !secret.is_empty() => text.replace(secret, "[secret]"),
        _ => text.to_owned(),
    }
}

/// Removes what may be personal data from an error before it is logged: words with nine or
/// more digits (UPNs, phone numbers) and words containing `@` (email addresses). Receivers
/// sometimes quote the request back. The error is stored whole, secrets removed, with the
/// delivery.
pub(crate) fn redact_for_log(detail: &str) -> String {
    detail
        .split(' ')
        .map(|word| {
            let digits = word.chars().filter(char::is_ascii_digit).count();
            if word.contains('@') {
                "[address]"
            } else if digits >= 9 {
                "[number]"
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_secret_replaces_every_copy() {
        let key = b"0123456789abcdef0123456789abcdef";
        let text = "bad key 0123456789abcdef0123456789abcdef, expected not \
                    0123456789abcdef0123456789abcdef";
        let redacted = redact_secret(text, key);
        assert_eq!(redacted, "bad key [secret], expected not [secret]");
    }

    #[test]
    fn redact_for_log_removes_upns_and_addresses() {
        assert_eq!(
            redact_for_log("pupil A919200125011 already referred by la@example.org"),
            "pupil [number] already referred by [address]"
        );
        assert_eq!(
            redact_for_log("receiver replied 503: try later"),
            "receiver replied 503: try later"
        );
    }
}
