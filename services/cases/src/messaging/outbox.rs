//! The outbox: delivers queued messages, one claim at a time, with retries and backoff.
//!
//! A message is claimed (status `sending`, with a lease) in a transaction before its channel
//! is called, so two senders never send the same message. The outcome of every attempt is
//! logged in `message_attempts`. A claim whose lease ran out means the sender stopped
//! mid-attempt: the message goes back to the queue only on a channel that drops repeats, and
//! otherwise waits as `unconfirmed` for a person, so a parent never receives it twice.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::CASES_LOCK_KEY;
use crate::messaging::channels::{Channels, Outgoing, SendError};
use crate::messaging::config::DeliveryConfig;

/// A claimed message, as the outbox reads it.
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: String,
    laestab: String,
    channel: String,
    recipient_name: String,
    recipient_address: String,
    subject: String,
    body: String,
    document: Option<Vec<u8>>,
    attempts: i32,
    attempt_base: i32,
    /// The W3C traceparent of the work that wrote the message, when spans were exported.
    traceparent: Option<String>,
}

/// The outbox's settings and handles.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    pub(crate) db: Db,
    pub(crate) channels: Channels,
    pub(crate) config: DeliveryConfig,
    pub(crate) wake: Arc<Notify>,
}

impl Outbox {
    /// Starts delivering. New messages wake the outbox at once; otherwise it looks every poll
    /// interval for retries that have come due.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::info!(
                poll_ms = self.config.poll().as_millis() as u64,
                "Message outbox started"
            );
            loop {
                if let Err(error) = self.run_once().await {
                    tracing::warn!(%error, "Message outbox failed; retrying at the next poll");
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.config.poll()) => {}
                }
            }
        })
    }

    /// Recovers interrupted claims, then delivers every message that is due.
    pub(crate) async fn run_once(&self) -> Result<(), sqlx::Error> {
        self.recover_interrupted().await?;
        while let Some(message) = self.claim_next().await? {
            let span = rollcall_runtime::telemetry::background_span(
                "cases.send_message",
                message.traceparent.as_deref(),
            );
            rollcall_runtime::telemetry::set_attribute(&span, "rollcall.message_id", &message.id);
            self.deliver(message).instrument(span).await?;
        }
        Ok(())
    }

    async fn claim_next(&self) -> Result<Option<Claimed>, sqlx::Error> {
        let now = Utc::now();
        let lease = now + chrono::Duration::seconds(self.config.lease_seconds as i64);
        with_db!(&self.db, |pool| {
            let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
            let due: Option<(String,)> = sqlx::query_as(
                "SELECT id FROM messages WHERE status = 'queued' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at, id LIMIT 1",
            )
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((id,)) = due else {
                return Ok(None);
            };
            sqlx::query(
                "UPDATE messages SET status = 'sending', claimed_until = $1, \
                 attempts = attempts + 1 WHERE id = $2 AND status = 'queued'",
            )
            .bind(lease)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            let claimed: Claimed = sqlx::query_as(
                "SELECT id, laestab, channel, recipient_name, recipient_address, subject, body, \
                 document, attempts, attempt_base, traceparent FROM messages WHERE id = $1",
            )
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(claimed))
        })
    }

    async fn deliver(&self, message: Claimed) -> Result<(), sqlx::Error> {
        let outgoing = Outgoing {
            id: message.id.clone(),
            laestab: message.laestab.clone(),
            recipient_name: message.recipient_name.clone(),
            recipient_address: message.recipient_address.clone(),
            subject: message.subject.clone(),
            body: message.body.clone(),
            document: message.document.clone(),
        };
        let result = match self.channels.get(&message.channel) {
            Some(channel) => channel.send(&outgoing).await,
            None => Err(SendError::Permanent(format!(
                "no {} channel is configured; add an [{}] section to the messaging settings \
                 and resend",
                message.channel, message.channel
            ))),
        };
        let attempt = message.attempts;
        let tries = (message.attempts - message.attempt_base).max(1) as u32;
        let now = Utc::now();
        match result {
            Ok(reference) => {
                tracing::info!(message = %message.id, channel = %message.channel, attempt, "Message sent");
                self.finish(&message.id, attempt, now, Finish::Sent(reference))
                    .await
            }
            Err(SendError::Transient(detail, wait)) if tries < self.config.max_attempts => {
                let delay = retry_delay(&self.config, tries).max(wait.unwrap_or_default());
                tracing::warn!(
                    message = %message.id,
                    channel = %message.channel,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %redact(&detail),
                    "Message not delivered; retrying"
                );
                let due = now + chrono::Duration::from_std(delay).unwrap_or_default();
                self.finish(&message.id, attempt, now, Finish::Retry(detail, due))
                    .await
            }
            Err(error) => {
                tracing::error!(
                    message = %message.id,
                    channel = %message.channel,
                    attempt,
                    error = %redact(error.detail()),
                    "Message failed"
                );
                self.finish(
                    &message.id,
                    attempt,
                    now,
                    Finish::Failed(error.detail().to_owned()),
                )
                .await
            }
        }
    }

    async fn finish(
        &self,
        id: &str,
        attempt: i32,
        now: DateTime<Utc>,
        finish: Finish,
    ) -> Result<(), sqlx::Error> {
        let (status, outcome, detail, due, reference) = match &finish {
            Finish::Sent(reference) => {
                ("sent", "sent", reference.as_str(), now, reference.as_str())
            }
            Finish::Retry(detail, due) => ("queued", "retry", detail.as_str(), *due, ""),
            Finish::Failed(detail) => ("failed", "failed", detail.as_str(), now, ""),
        };
        let last_error = if status == "sent" { "" } else { detail };
        let sent_at = (status == "sent").then_some(now);
        with_db!(&self.db, |pool| {
            let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
            sqlx::query(
                "UPDATE messages SET status = $1, next_attempt_at = $2, claimed_until = NULL, \
                 last_error = $3, provider_reference = $4, sent_at = $5 \
                 WHERE id = $6 AND status = 'sending'",
            )
            .bind(status)
            .bind(due)
            .bind(last_error)
            .bind(reference)
            .bind(sent_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO message_attempts (message_id, attempt, at, outcome, detail) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(attempt)
            .bind(now)
            .bind(outcome)
            .bind(detail)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }

    /// Deals with claims whose lease ran out because their sender stopped mid-attempt.
    async fn recover_interrupted(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        let stale: Vec<(String, String, i32)> = with_db!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, channel, attempts FROM messages \
                 WHERE status = 'sending' AND claimed_until < $1",
            )
            .bind(now)
            .fetch_all(pool)
            .await
        })?;
        for (id, channel, attempt) in stale {
            let resend = self
                .channels
                .get(&channel)
                .is_some_and(|channel| channel.drops_repeats());
            let (status, detail) = if resend {
                (
                    "queued",
                    "the sender stopped mid-attempt; sending again, which the channel \
                     delivers once",
                )
            } else {
                (
                    "unconfirmed",
                    "the sender stopped mid-attempt, so delivery is unknown; check with the \
                     recipient, then resend if it did not arrive",
                )
            };
            tracing::warn!(message = %id, %channel, attempt, status, "Interrupted delivery recovered");
            with_db!(&self.db, |pool| {
                let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
                let changed = sqlx::query(
                    "UPDATE messages SET status = $1, claimed_until = NULL, last_error = $2, \
                     next_attempt_at = $3 WHERE id = $4 AND status = 'sending' \
                     AND claimed_until < $3",
                )
                .bind(status)
                .bind(detail)
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 1 {
                    sqlx::query(
                        "INSERT INTO message_attempts (message_id, attempt, at, outcome, detail) \
                         VALUES ($1, $2, $3, 'interrupted', $4)",
                    )
                    .bind(&id)
                    .bind(attempt)
                    .bind(now)
                    .bind(detail)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            })?;
        }
        Ok(())
    }
}

/// Returns the delay before retry number `attempt` (from 1): the exponential delay, capped
/// at the maximum, then scaled by a random factor from 0.5 to 1 so that messages that failed
/// together do not all retry at the same moment.
pub(crate) fn retry_delay(config: &DeliveryConfig, attempt: u32) -> Duration {
    let first = Duration::from_secs_f64(config.first_retry_seconds);
    let max = Duration::from_secs_f64(config.max_retry_seconds);
    let exponential = ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(first)
        .min(max);
    exponential.mul_f64(rand::random_range(0.5..=1.0))
}

/// Removes what looks like an email address or a phone number from a server's reply before
/// it is logged, because mail servers and SMS providers often quote the recipient. The reply
/// is stored whole with the message.
fn redact(detail: &str) -> String {
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

#[derive(Debug)]
enum Finish {
    Sent(String),
    Retry(String, DateTime<Utc>),
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_stays_capped_and_varies() {
        let config = DeliveryConfig {
            first_retry_seconds: 30.0,
            max_retry_seconds: 60.0,
            ..DeliveryConfig::default()
        };
        for attempt in 1..=10 {
            let delay = retry_delay(&config, attempt);
            assert!(
                delay <= Duration::from_secs(60),
                "attempt {attempt}: {delay:?}"
            );
            assert!(
                delay >= Duration::from_secs(15),
                "attempt {attempt}: {delay:?}"
            );
        }
        let second: Vec<Duration> = (0..20).map(|_| retry_delay(&config, 2)).collect();
        assert!(
            second.iter().all(|d| *d >= Duration::from_secs(30)),
            "{second:?}"
        );
        assert!(
            second.windows(2).any(|pair| pair[0] != pair[1]),
            "jitter differs between messages: {second:?}"
        );
    }

    #[test]
    fn redact_removes_addresses_and_numbers() {
        assert_eq!(
            redact("550 5.1.1 <amelie.parent@example.org>: Recipient address rejected"),
            "550 5.1.1 [address] Recipient address rejected"
        );
        assert_eq!(
            redact("SMS provider replied 422: {\"to\":\"+447700900002\"}"),
            "SMS provider replied 422: [number]"
        );
        assert_eq!(
            redact("mail server unavailable: connection refused"),
            "mail server unavailable: connection refused"
        );
    }
}
