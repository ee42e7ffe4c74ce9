//! Storage for the sync API: MIS pupil ids mapped to UPNs, and the batches applied under
//! their idempotency keys.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use sqlx::QueryBuilder;

use crate::MIS_ADAPTER_LOCK_KEY;

/// MIS ids per statement.
const CHUNK: usize = 1_000;

/// A batch applied before under an idempotency key.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredBatch {
    pub(crate) kind: String,
    pub(crate) request_sha256: String,
    pub(crate) response: Vec<u8>,
    pub(crate) applied_at: DateTime<Utc>,
}

/// Returns the batch applied at a school under a key, if any.
pub(crate) async fn find_batch(
    db: &Db,
    laestab: &str,
    key: &str,
) -> Result<Option<StoredBatch>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT kind, request_sha256, response, applied_at FROM sync_batches \
             WHERE laestab = $1 AND idempotency_key = $2",
        )
        .bind(laestab)
        .bind(key)
        .fetch_optional(pool)
        .await
    })
}

/// A batch to record, with the MIS ids it mapped.
#[derive(Debug)]
pub(crate) struct BatchRecord<'a> {
    pub(crate) laestab: &'a str,
    pub(crate) key: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) request_sha256: &'a str,
    pub(crate) response: Vec<u8>,
    pub(crate) source_name: &'a str,
    /// MIS id and UPN of every pupil row the registers applied or found unchanged.
    pub(crate) ids: Vec<(String, String)>,
}

/// Records a batch and its MIS ids in one transaction. A batch already recorded under the key
/// (by a concurrent call with the same rows) is kept as it is.
///
/// Batches of different schools write different rows, so they take only their own school's
/// lock beside a share of the adapter's write lock. A writer that takes the whole lock, such
/// as a UPN change, still runs alone.
pub(crate) async fn record_batch(db: &Db, batch: &BatchRecord<'_>) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let school_key = batch
        .laestab
        .parse::<u32>()
        .ok()
        .map(rollcall_runtime::storage::lock_keys::mis_adapter_school);
    with_db!(db, |pool| {
        let mut tx = match school_key {
            Some(key) => pool.begin_shared_write(MIS_ADAPTER_LOCK_KEY, key).await?,
            None => pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?,
        };
        for chunk in batch.ids.chunks(CHUNK) {
            let mut upsert = QueryBuilder::new(
                "INSERT INTO pupil_ids (laestab, mis_id, upn, first_seen_at, updated_at) ",
            );
            upsert.push_values(chunk, |mut row, (mis_id, upn)| {
                row.push_bind(batch.laestab)
                    .push_bind(mis_id.clone())
                    .push_bind(upn.clone())
                    .push_bind(now)
                    .push_bind(now);
            });
            upsert.push(
                " ON CONFLICT (laestab, mis_id) DO UPDATE SET upn = excluded.upn, \
                 updated_at = CASE WHEN pupil_ids.upn = excluded.upn THEN pupil_ids.updated_at \
                 ELSE excluded.updated_at END",
            );
            upsert.build().execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO sync_batches (laestab, idempotency_key, kind, request_sha256, response, \
             source_name, applied_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (laestab, idempotency_key) DO NOTHING",
        )
        .bind(batch.laestab)
        .bind(batch.key)
        .bind(batch.kind)
        .bind(batch.request_sha256)
        .bind(&batch.response)
        .bind(batch.source_name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    })
}

/// Returns the UPN mapped to each of the given MIS ids at a school; ids not mapped are left
/// out.
pub(crate) async fn known_ids(
    db: &Db,
    laestab: &str,
    mis_ids: &[String],
) -> Result<HashMap<String, String>, sqlx::Error> {
    let mut known = HashMap::new();
    for chunk in mis_ids.chunks(CHUNK) {
        let rows: Vec<(String, String)> = with_db!(db, |pool| {
            let mut query = QueryBuilder::new("SELECT mis_id, upn FROM pupil_ids WHERE laestab = ");
            query.push_bind(laestab).push(" AND mis_id IN (");
            let mut list = query.separated(", ");
            for id in chunk {
                list.push_bind(id.clone());
            }
            query.push(")");
            query.build_query_as().fetch_all(pool).await
        })?;
        known.extend(rows);
    }
    Ok(known)
}

/// An MIS id as listed.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct IdRow {
    pub(crate) mis_id: String,
    pub(crate) upn: String,
    pub(crate) first_seen_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// Lists a school's MIS ids after `after`, ordered by id, at most `limit`.
pub(crate) async fn list_ids(
    db: &Db,
    laestab: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<IdRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT mis_id, upn, first_seen_at, updated_at FROM pupil_ids \
             WHERE laestab = $1 AND mis_id > $2 ORDER BY mis_id LIMIT $3",
        )
        .bind(laestab)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}
