//! The delivery worker: claims one due delivery at a time, makes one attempt, and records the
//! outcome, with retries and backoff.
//!
//! A claim (status `delivering`, with a lease until `claimed_until`) is taken in a write
//! transaction, so two servers never deliver the same pack at once. A server that stops
//! mid-attempt leaves its claim behind. Once the lease runs out, any server queues the
//! delivery again, which is safe because both kinds of destination drop a repeat. An outcome
//! is stored only while the claim is still the worker's own.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::MIS_ADAPTER_LOCK_KEY;
use crate::delivery::config::{DeliveryConfig, RetryConfig};
use crate::delivery::destination::{DeliverError, Destinations, Outgoing, Receipt, redact_for_log};
use crate::delivery::store::{DELIVERED, DELIVERING, FAILED, QUEUED};

/// A claimed delivery with its pack.
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: String,
    referral_id: String,
    pack_id: String,
    laestab: String,
    file_name: String,
    sha256: String,
    destination: String,
    attempts: i32,
    attempt_base: i32,
    pack: Vec<u8>,
    /// The W3C traceparent of the request that queued the delivery, when spans were exported.
    traceparent: Option<String>,
}

/// The worker's settings and handles.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub(crate) db: Db,
    pub(crate) destinations: Destinations,
    pub(crate) config: DeliveryConfig,
    pub(crate) wake: Arc<Notify>,
}

/// One attempt, as logged in `delivery_attempts`.
#[derive(Debug)]
struct AttemptRecord<'a> {
    delivery_id: &'a str,
    /// The attempt number across every retry.
    attempt: i32,
    /// The attempt number since the delivery was last queued by hand.
    tries: u32,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

/// The outcome of one attempt.
#[derive(Debug)]
enum Outcome {
    Delivered(Receipt),
    Retry {
        error: DeliverError,
        due: DateTime<Utc>,
    },
    Failed(DeliverError),
}

impl Worker {
    /// Starts delivering. A new or retried delivery wakes the worker at once. Otherwise it
    /// wakes when the next retry is due, and at least every poll interval for leases that ran
    /// out.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::info!(
                destinations = self.destinations.iter().count(),
                poll_ms = self.config.worker.poll().as_millis() as u64,
                "Delivery worker started"
            );
            loop {
                if let Err(error) = self.run_once().await {
                    tracing::warn!(%error, "Delivery worker failed; trying again at the next poll");
                }
                // A delivery already due here waits behind an earlier one for the same
                // referral and destination, so it is looked at again at the next poll.
                let poll = self.config.worker.poll();
                let wait = match self.next_due().await {
                    Ok(Some(due)) => (due - Utc::now())
                        .to_std()
                        .ok()
                        .filter(|wait| !wait.is_zero())
                        .map_or(poll, |wait| wait.min(poll)),
                    Ok(None) => poll,
                    Err(error) => {
                        tracing::warn!(%error, "Delivery worker cannot read the next retry time");
                        poll
                    }
                };
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    /// Queues again the deliveries whose lease ran out, then delivers every one that is due.
    pub(crate) async fn run_once(&self) -> Result<(), sqlx::Error> {
        self.recover_interrupted().await?;
        while let Some(claimed) = self.claim_next().await? {
            let span = rollcall_runtime::telemetry::background_span(
                "mis_adapter.deliver_pack",
                claimed.0.traceparent.as_deref(),
            );
            rollcall_runtime::telemetry::set_attribute(
                &span,
                "rollcall.delivery_id",
                &claimed.0.id,
            );
            self.deliver(claimed).instrument(span).await?;
        }
        Ok(())
    }

    /// Returns when the earliest queued delivery is due, so that a retry sooner than the poll
    /// interval is not late.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let due: Option<(DateTime<Utc>,)> = with_db!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT next_attempt_at FROM deliveries WHERE status = $1 \
                 ORDER BY next_attempt_at LIMIT 1",
            )
            .bind(QUEUED)
            .fetch_optional(pool)
            .await
        })?;
        Ok(due.map(|(at,)| at))
    }

    /// Claims the delivery due first. A delivery waits while an earlier one for the same
    /// referral and destination is being delivered, so an old pack never lands after a new one.
    async fn claim_next(&self) -> Result<Option<(Claimed, DateTime<Utc>)>, sqlx::Error> {
        let now = Utc::now();
        let lease = now + chrono::Duration::seconds(self.config.worker.lease_seconds as i64);
        with_db!(&self.db, |pool| {
            let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
            let due: Option<(String,)> = sqlx::query_as(
                "SELECT d.id FROM deliveries d WHERE d.status = $1 AND d.next_attempt_at <= $2 \
                 AND d.superseded_by IS NULL AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.referral_id = d.referral_id \
                 AND o.destination = d.destination AND o.status = $3) \
                 ORDER BY d.next_attempt_at, d.id LIMIT 1",
            )
            .bind(QUEUED)
            .bind(now)
            .bind(DELIVERING)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((id,)) = due else {
                return Ok(None);
            };
            sqlx::query(
                "UPDATE deliveries SET status = $1, claimed_at = $2, claimed_until = $3, \
                 attempts = attempts + 1, updated_at = $2 WHERE id = $4 AND status = $5",
            )
            .bind(DELIVERING)
            .bind(now)
            .bind(lease)
            .bind(&id)
            .bind(QUEUED)
            .execute(&mut *tx)
            .await?;
            let claimed: Claimed = sqlx::query_as(
                "SELECT d.id, d.referral_id, d.pack_id, d.laestab, d.file_name, d.sha256, \
                 d.destination, d.attempts, d.attempt_base, p.pack, d.traceparent \
                 FROM deliveries d JOIN delivery_packs p ON p.sha256 = d.sha256 WHERE d.id = $1",
            )
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some((claimed, now)))
        })
    }

    async fn deliver(
        &self,
        (claimed, started_at): (Claimed, DateTime<Utc>),
    ) -> Result<(), sqlx::Error> {
        let attempt = claimed.attempts;
        let tries = u32::try_from(claimed.attempts - claimed.attempt_base)
            .unwrap_or(1)
            .max(1);
        let delivery_id = claimed.id.clone();
        let referral_id = claimed.referral_id.clone();
        let destination_name = claimed.destination.clone();
        let result = match self.destinations.get(&destination_name) {
            Some(destination) => {
                let outgoing = Arc::new(Outgoing {
                    delivery_id: claimed.id,
                    referral_id: claimed.referral_id,
                    pack_id: claimed.pack_id,
                    laestab: claimed.laestab,
                    file_name: claimed.file_name,
                    sha256: claimed.sha256,
                    pack: claimed.pack,
                });
                destination.deliver(outgoing).await
            }
            None => Err(DeliverError::Permanent {
                detail: format!(
                    "destination {destination_name:?} is not in the delivery settings: add it \
                     back, restart rollcall, then retry the delivery"
                ),
                http_status: 0,
            }),
        };

        let finished_at = Utc::now();
        let outcome = match result {
            Ok(receipt) => Outcome::Delivered(receipt),
            Err(error) if error.is_transient() && tries < self.config.retries.max_attempts => {
                let delay = retry_delay(&self.config.retries, tries)
                    .max(error.retry_after().unwrap_or_default());
                let due = finished_at + chrono::Duration::from_std(delay).unwrap_or_default();
                Outcome::Retry { error, due }
            }
            Err(error) => Outcome::Failed(error),
        };
        let record = AttemptRecord {
            delivery_id: &delivery_id,
            attempt,
            tries,
            started_at,
            finished_at,
        };
        let stored = self.finish(&record, &outcome).await?;

        let http_status = match &outcome {
            Outcome::Delivered(receipt) => receipt.http_status,
            Outcome::Retry { error, .. } | Outcome::Failed(error) => error.http_status(),
        };
        match (&outcome, stored.as_deref()) {
            (_, None) => tracing::warn!(
                delivery = %delivery_id,
                referral = %referral_id,
                destination = %destination_name,
                attempt,
                "Attempt outcome not stored: the lease ran out and the delivery was taken over"
            ),
            (Outcome::Delivered(receipt), Some(_)) => tracing::info!(
                delivery = %delivery_id,
                referral = %referral_id,
                destination = %destination_name,
                attempt,
                http_status,
                receipt = %receipt.receipt_id,
                "Referral pack delivered"
            ),
            (Outcome::Retry { error, due }, Some(QUEUED)) => tracing::warn!(
                delivery = %delivery_id,
                referral = %referral_id,
                destination = %destination_name,
                attempt,
                http_status,
                retry_in_ms = (*due - finished_at).num_milliseconds(),
                error = %redact_for_log(error.detail()),
                "Referral pack not delivered; retrying"
            ),
            (Outcome::Retry { error, .. }, Some(_)) => tracing::warn!(
                delivery = %delivery_id,
                referral = %referral_id,
                destination = %destination_name,
                attempt,
                http_status,
                error = %redact_for_log(error.detail()),
                "Referral pack not delivered, and not retried because a rebuilt pack superseded it"
            ),
            (Outcome::Failed(error), Some(_)) => tracing::error!(
                delivery = %delivery_id,
                referral = %referral_id,
                destination = %destination_name,
                attempt,
                http_status,
                error = %redact_for_log(error.detail()),
                "Referral pack delivery failed; it waits for RetryDelivery"
            ),
        }
        Ok(())
    }

    /// Stores the outcome of an attempt, with its row in `delivery_attempts`, and returns the
    /// delivery's new status. Returns `None`, storing nothing, when the lease ran out and
    /// another server took the delivery over, because that server's attempt counts instead. A
    /// pack superseded during the attempt fails instead of waiting for a retry.
    async fn finish(
        &self,
        record: &AttemptRecord<'_>,
        outcome: &Outcome,
    ) -> Result<Option<String>, sqlx::Error> {
        let now = record.finished_at;
        let (attempt_outcome, http_status, detail) = match outcome {
            Outcome::Delivered(receipt) => (
                "delivered",
                receipt.http_status,
                format!("receipt {}", receipt.receipt_id),
            ),
            Outcome::Retry { error, .. } => {
                ("retry", error.http_status(), error.detail().to_owned())
            }
            Outcome::Failed(DeliverError::Transient {
                detail,
                http_status,
                ..
            }) => (
                "failed",
                *http_status,
                format!(
                    "{detail} (gave up after {} attempts; retry the delivery once the \
                     destination is working)",
                    record.tries
                ),
            ),
            Outcome::Failed(DeliverError::Permanent {
                detail,
                http_status,
            }) => ("failed", *http_status, detail.clone()),
        };

        with_db!(&self.db, |pool| {
            let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
            let changed = match outcome {
                Outcome::Delivered(receipt) => sqlx::query(
                    "UPDATE deliveries SET status = $1, next_attempt_at = $2, \
                     claimed_until = NULL, last_error = '', receipt_id = $3, received_at = $4, \
                     receipt_path = $5, http_status = $6, updated_at = $2 \
                     WHERE id = $7 AND status = $8 AND attempts = $9",
                )
                .bind(DELIVERED)
                .bind(now)
                .bind(&receipt.receipt_id)
                .bind(receipt.received_at)
                .bind(&receipt.path)
                .bind(receipt.http_status)
                .bind(record.delivery_id)
                .bind(DELIVERING)
                .bind(record.attempt)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                Outcome::Retry { .. } | Outcome::Failed(_) => {
                    let (status, due) = match outcome {
                        Outcome::Retry { due, .. } => (QUEUED, *due),
                        _ => (FAILED, now),
                    };
                    sqlx::query(
                        "UPDATE deliveries SET \
                         status = CASE WHEN superseded_by IS NULL THEN $1 ELSE $2 END, \
                         last_error = CASE WHEN superseded_by IS NULL THEN $4 \
                         ELSE $4 || ' (not retried: superseded by ' || superseded_by || \
                         ', which carries a rebuilt pack)' END, \
                         next_attempt_at = $3, claimed_until = NULL, \
                         updated_at = $5 WHERE id = $6 AND status = $7 AND attempts = $8",
                    )
                    .bind(status)
                    .bind(FAILED)
                    .bind(due)
                    .bind(&detail)
                    .bind(now)
                    .bind(record.delivery_id)
                    .bind(DELIVERING)
                    .bind(record.attempt)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                }
            };
            if changed != 1 {
                tx.rollback().await?;
                return Ok(None);
            }
            let (status, last_error): (String, String) =
                sqlx::query_as("SELECT status, last_error FROM deliveries WHERE id = $1")
                    .bind(record.delivery_id)
                    .fetch_one(&mut *tx)
                    .await?;
            let (attempt_outcome, detail) = match outcome {
                Outcome::Delivered(_) => (attempt_outcome, detail),
                Outcome::Retry { .. } if status == FAILED => ("failed", last_error),
                Outcome::Retry { .. } | Outcome::Failed(_) => (attempt_outcome, last_error),
            };
            sqlx::query(
                "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, \
                 finished_at, outcome, http_status, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(record.delivery_id)
            .bind(record.attempt)
            .bind(record.started_at)
            .bind(now)
            .bind(attempt_outcome)
            .bind(http_status)
            .bind(&detail)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(status))
        })
    }

    /// Queues again the deliveries whose server stopped mid-attempt, once their lease has run
    /// out, or fails them when they have no attempts left.
    async fn recover_interrupted(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        let stale: Vec<(String, i32, i32, Option<DateTime<Utc>>)> = with_db!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, attempts, attempt_base, claimed_at FROM deliveries \
                 WHERE status = $1 AND claimed_until < $2",
            )
            .bind(DELIVERING)
            .bind(now)
            .fetch_all(pool)
            .await
        })?;
        for (id, attempt, attempt_base, claimed_at) in stale {
            let tries = u32::try_from(attempt - attempt_base).unwrap_or(0);
            let (status, detail) = if tries < self.config.retries.max_attempts {
                (
                    QUEUED,
                    "the server delivering it stopped mid-attempt; delivering again, which the \
                     destination drops if the pack had already arrived"
                        .to_owned(),
                )
            } else {
                (
                    FAILED,
                    format!(
                        "the server delivering it stopped mid-attempt, and no attempts are left \
                         (gave up after {tries} attempts); retry the delivery"
                    ),
                )
            };
            let changed = with_db!(&self.db, |pool| {
                let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
                let changed = sqlx::query(
                    "UPDATE deliveries SET \
                     status = CASE WHEN superseded_by IS NULL THEN $1 ELSE $7 END, \
                     claimed_until = NULL, last_error = $2, next_attempt_at = $3, \
                     updated_at = $3 \
                     WHERE id = $4 AND status = $5 AND claimed_until < $3 AND attempts = $6",
                )
                .bind(status)
                .bind(&detail)
                .bind(now)
                .bind(&id)
                .bind(DELIVERING)
                .bind(attempt)
                .bind(FAILED)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 1 {
                    sqlx::query(
                        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, \
                         finished_at, outcome, http_status, detail) \
                         VALUES ($1, $2, $3, $4, 'interrupted', 0, $5)",
                    )
                    .bind(&id)
                    .bind(attempt)
                    .bind(claimed_at.unwrap_or(now))
                    .bind(now)
                    .bind(&detail)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(changed)
            })?;
            if changed == 1 {
                tracing::warn!(delivery = %id, attempt, status, "Interrupted delivery recovered");
            }
        }
        Ok(())
    }
}

/// Returns the delay before retry number `tries`, counted from 1.
///
/// The delay grows exponentially from `first_retry_seconds` up to `max_retry_seconds`. It is
/// then scaled by a random factor from 0.5 to 1, so that deliveries that failed together do
/// not all retry at the same moment.
pub(crate) fn retry_delay(config: &RetryConfig, tries: u32) -> Duration {
    let first = Duration::from_secs_f64(config.first_retry_seconds);
    let max = Duration::from_secs_f64(config.max_retry_seconds);
    let exponential = ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max)
        .without_max_times()
        .build()
        .nth(tries.saturating_sub(1) as usize)
        .unwrap_or(first)
        .min(max);
    exponential.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_stays_capped_and_varies() {
        let config = RetryConfig {
            first_retry_seconds: 10.0,
            max_retry_seconds: 40.0,
            ..RetryConfig::default()
        };
        for tries in 1..=12 {
            let delay = retry_delay(&config, tries);
            assert!(delay <= Duration::from_secs(40), "try {tries}: {delay:?}");
            assert!(delay >= Duration::from_secs(5), "try {tries}: {delay:?}");
        }
        let third: Vec<Duration> = (0..20).map(|_| retry_delay(&config, 3)).collect();
        assert!(
            third.iter().all(|delay| *delay >= Duration::from_secs(20)),
            "{third:?}"
        );
        assert!(
            third.windows(2).any(|pair| pair[0] != pair[1]),
            "jitter differs between deliveries: {third:?}"
        );
    }
}
