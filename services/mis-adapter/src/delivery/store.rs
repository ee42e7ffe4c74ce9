//! Storage of deliveries for the RPCs: queueing a pack, listing, and queueing again. The
//! worker's claims and outcomes are in `worker.rs`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};

use crate::MIS_ADAPTER_LOCK_KEY;

pub(crate) const QUEUED: &str = "queued";
pub(crate) const DELIVERING: &str = "delivering";
pub(crate) const DELIVERED: &str = "delivered";
pub(crate) const FAILED: &str = "failed";

/// The columns of [`DeliveryRow`], in its order.
const COLUMNS: &str = "id, referral_id, pack_id, laestab, file_name, sha256, destination, \
                       destination_kind, status, attempts, next_attempt_at, last_error, \
                       superseded_by, receipt_id, received_at, receipt_path, http_status, \
                       created_at, updated_at";

/// A delivery as stored, without the pack.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    pub(crate) id: String,
    pub(crate) referral_id: String,
    pub(crate) pack_id: String,
    pub(crate) laestab: String,
    pub(crate) file_name: String,
    pub(crate) sha256: String,
    pub(crate) destination: String,
    pub(crate) destination_kind: String,
    pub(crate) status: String,
    pub(crate) attempts: i32,
    pub(crate) next_attempt_at: DateTime<Utc>,
    pub(crate) last_error: String,
    pub(crate) superseded_by: Option<String>,
    pub(crate) receipt_id: String,
    pub(crate) received_at: Option<DateTime<Utc>>,
    pub(crate) receipt_path: String,
    pub(crate) http_status: i32,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// One logged attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub(crate) delivery_id: String,
    pub(crate) attempt: i32,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
    pub(crate) outcome: String,
    pub(crate) http_status: i32,
    pub(crate) detail: String,
}

/// A checked pack to queue.
#[derive(Debug)]
pub(crate) struct NewPack<'a> {
    pub(crate) referral_id: &'a str,
    pub(crate) pack_id: &'a str,
    pub(crate) laestab: &'a str,
    pub(crate) file_name: &'a str,
    pub(crate) sha256: &'a str,
    pub(crate) pack: &'a [u8],
}

/// The result of queueing a pack for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// A new delivery was queued.
    New,
    /// This pack was already queued or delivered for the destination; nothing changed.
    Existing,
    /// This pack had been superseded by another and is the one to deliver again.
    Reinstated,
}

/// Queues the pack for each destination, given as (name, kind), in one transaction, and
/// returns each delivery's id with what was done.
///
/// A destination that already has this referral with the same SHA-256 keeps its delivery. A
/// new pack for the referral supersedes the older ones still waiting or failed, so that a
/// retry never sends an old pack after the new one.
pub(crate) async fn queue(
    db: &Db,
    pack: &NewPack<'_>,
    destinations: &[(String, &'static str)],
    now: DateTime<Utc>,
) -> Result<Vec<(String, Queued)>, sqlx::Error> {
    let traceparent = rollcall_runtime::telemetry::current_traceparent();
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        let size = i64::try_from(pack.pack.len()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO delivery_packs (sha256, pack, size_bytes, stored_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(pack.sha256)
        .bind(pack.pack)
        .bind(size)
        .bind(now)
        .execute(&mut *tx)
        .await?;

        let mut results = Vec::with_capacity(destinations.len());
        for (destination, kind) in destinations {
            let existing: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT id, superseded_by FROM deliveries \
                 WHERE referral_id = $1 AND destination = $2 AND sha256 = $3",
            )
            .bind(pack.referral_id)
            .bind(destination)
            .bind(pack.sha256)
            .fetch_optional(&mut *tx)
            .await?;
            let (id, queued) = match existing {
                Some((id, None)) => {
                    results.push((id, Queued::Existing));
                    continue;
                }
                Some((id, Some(_))) => {
                    sqlx::query(
                        "UPDATE deliveries SET status = $1, superseded_by = NULL, \
                         attempt_base = attempts, next_attempt_at = $2, last_error = '', \
                         updated_at = $2 WHERE id = $3 AND status <> $4",
                    )
                    .bind(QUEUED)
                    .bind(now)
                    .bind(&id)
                    .bind(DELIVERING)
                    .execute(&mut *tx)
                    .await?;
                    (id, Queued::Reinstated)
                }
                None => {
                    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM deliveries")
                        .fetch_one(&mut *tx)
                        .await?;
                    let id = format!("dlv-{:08}", count + 1);
                    sqlx::query(
                        "INSERT INTO deliveries (id, referral_id, pack_id, laestab, file_name, \
                         sha256, destination, destination_kind, status, next_attempt_at, \
                         created_at, updated_at, traceparent) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $10, $11)",
                    )
                    .bind(&id)
                    .bind(pack.referral_id)
                    .bind(pack.pack_id)
                    .bind(pack.laestab)
                    .bind(pack.file_name)
                    .bind(pack.sha256)
                    .bind(destination)
                    .bind(*kind)
                    .bind(QUEUED)
                    .bind(now)
                    .bind(&traceparent)
                    .execute(&mut *tx)
                    .await?;
                    (id, Queued::New)
                }
            };
            let superseded = format!(
                "superseded by {id}, which carries a rebuilt pack for the same referral; \
                 retry {id} instead"
            );
            // Waiting and failed packs fail for good. A delivered pack keeps its status and
            // receipt, and one being delivered fails when its attempt ends unless it succeeds.
            sqlx::query(
                "UPDATE deliveries SET \
                 status = CASE WHEN status IN ($1, $2) THEN $2 ELSE status END, \
                 last_error = CASE WHEN status IN ($1, $2) THEN $3 ELSE last_error END, \
                 superseded_by = $4, updated_at = $5 \
                 WHERE referral_id = $6 AND destination = $7 AND id <> $4 \
                 AND superseded_by IS NULL",
            )
            .bind(QUEUED)
            .bind(FAILED)
            .bind(&superseded)
            .bind(&id)
            .bind(now)
            .bind(pack.referral_id)
            .bind(destination)
            .execute(&mut *tx)
            .await?;
            results.push((id, queued));
        }
        tx.commit().await?;
        Ok(results)
    })
}

/// Reads one delivery.
pub(crate) async fn get(db: &Db, id: &str) -> Result<Option<DeliveryRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await
    })
}

/// The filters of ListDeliveries, already checked. Empty strings match everything.
#[derive(Debug)]
pub(crate) struct ListFilter {
    pub(crate) referral_id: String,
    pub(crate) status: String,
    /// Only deliveries with an id below this one, from the page token.
    pub(crate) before_id: String,
    pub(crate) limit: i64,
}

/// Lists deliveries, newest first.
pub(crate) async fn list(db: &Db, filter: &ListFilter) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM deliveries \
             WHERE ($1 = '' OR referral_id = $1) AND ($2 = '' OR status = $2) \
             AND ($3 = '' OR id < $3) ORDER BY id DESC LIMIT $4"
        )))
        .bind(&filter.referral_id)
        .bind(&filter.status)
        .bind(&filter.before_id)
        .bind(filter.limit)
        .fetch_all(pool)
        .await
    })
}

/// Reads the attempts of the given deliveries, oldest first, by delivery id.
pub(crate) async fn attempts(
    db: &Db,
    rows: &[DeliveryRow],
) -> Result<HashMap<String, Vec<AttemptRow>>, sqlx::Error> {
    let mut by_delivery: HashMap<String, Vec<AttemptRow>> = HashMap::new();
    let (Some(lowest), Some(highest)) = (
        rows.iter().map(|row| row.id.as_str()).min(),
        rows.iter().map(|row| row.id.as_str()).max(),
    ) else {
        return Ok(by_delivery);
    };
    // One query for the id range of the page; attempts of deliveries outside it are dropped.
    let found: Vec<AttemptRow> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT delivery_id, attempt, started_at, finished_at, outcome, http_status, detail \
             FROM delivery_attempts WHERE delivery_id >= $1 AND delivery_id <= $2 \
             ORDER BY delivery_id, attempt",
        )
        .bind(lowest)
        .bind(highest)
        .fetch_all(pool)
        .await
    })?;
    for attempt in found {
        if rows.iter().any(|row| row.id == attempt.delivery_id) {
            by_delivery
                .entry(attempt.delivery_id.clone())
                .or_default()
                .push(attempt);
        }
    }
    Ok(by_delivery)
}

/// The reason a delivery cannot be queued again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RetryRejection {
    NotFound,
    Delivered { receipt_id: String },
    Delivering,
    Superseded { by: String },
}

/// Queues a failed delivery again with a fresh allowance of attempts, or makes a queued one
/// due now.
pub(crate) async fn retry(
    db: &Db,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Result<(), RetryRejection>, sqlx::Error> {
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        let found: Option<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT status, superseded_by, receipt_id FROM deliveries WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let rejection = match found {
            None => Some(RetryRejection::NotFound),
            Some((status, _, receipt_id)) if status == DELIVERED => {
                Some(RetryRejection::Delivered { receipt_id })
            }
            Some((status, _, _)) if status == DELIVERING => Some(RetryRejection::Delivering),
            Some((_, Some(by), _)) => Some(RetryRejection::Superseded { by }),
            Some((status, None, _)) if status == QUEUED => {
                sqlx::query(
                    "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 WHERE id = $2",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                None
            }
            Some(_) => {
                sqlx::query(
                    "UPDATE deliveries SET status = $1, attempt_base = attempts, \
                     next_attempt_at = $2, updated_at = $2 WHERE id = $3",
                )
                .bind(QUEUED)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                None
            }
        };
        tx.commit().await?;
        Ok(rejection.map_or(Ok(()), Err))
    })
}
