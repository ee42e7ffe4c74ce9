//! Follows the registers' UPN changes. Each change moves the MIS pupil ids mapped to the
//! replaced UPN, the write-back items queued for it and the MIS's deletions naming it to the
//! new UPN, in the transaction that stores the change's position.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use rollcall_api::client::Channel;
use rollcall_api::registers::v1::ListUpnChangesRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::task::JoinHandle;

use crate::MIS_ADAPTER_LOCK_KEY;

/// The name under which the position in the registers' UPN changes is stored.
const UPN_CHANGES_FEED: &str = "registers.upn_changes";
/// How often the follower polls the registers for new UPN changes.
const POLL: Duration = Duration::from_secs(2);
/// Changes read per request.
const PAGE: i32 = 100;
/// The maximum length of a chain of changes followed from one UPN, far beyond any real pupil's.
const MAX_CHAIN: usize = 100;

/// Returns the UPN that `upn` is held under now: itself, or the last UPN of the changes from
/// it.
pub(crate) fn resolve<'a>(replaced: &'a HashMap<String, String>, upn: &'a str) -> &'a str {
    let mut current = upn;
    for _ in 0..MAX_CHAIN {
        match replaced.get(current) {
            Some(next) => current = next,
            None => break,
        }
    }
    current
}

/// Starts the follower. It polls every few seconds and retries with backoff when the
/// registers service is unreachable.
pub(crate) fn spawn(db: Db, registers: RegistersServiceClient<Channel>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, &registers).await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "UPN change follower failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

/// Applies every change after the stored position, oldest first.
async fn follow(db: &Db, registers: &RegistersServiceClient<Channel>) -> anyhow::Result<()> {
    loop {
        let cursor = rollcall_runtime::storage::stored_cursor(db, UPN_CHANGES_FEED).await?;
        let changes = registers
            .clone()
            .list_upn_changes(ListUpnChangesRequest {
                after_id: cursor,
                limit: PAGE,
            })
            .await?
            .into_inner()
            .changes;
        if changes.is_empty() {
            return Ok(());
        }
        for change in changes {
            apply(db, change.id, &change.from_upn, &change.to_upn).await?;
        }
    }
}

/// Applies one change and stores its position in one transaction. Applying a change again
/// changes nothing.
async fn apply(db: &Db, id: i64, from: &str, to: &str) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let moved_ids = with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        let mut moved_ids = 0;
        for table in ["pupil_ids", "writeback_items", "connector_deletions"] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET upn = $2 WHERE upn = $1"
            )))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if table == "pupil_ids" {
                moved_ids = rows;
            }
        }
        sqlx::query(
            "INSERT INTO upn_changes (id, from_upn, to_upn, applied_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(rollcall_runtime::storage::ADVANCE_CURSOR)
            .bind(UPN_CHANGES_FEED)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<u64, sqlx::Error>(moved_ids)
    })?;
    tracing::info!(
        change = id,
        from_upn = from,
        to_upn = to,
        mis_ids = moved_ids,
        "UPN change applied"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_a_chain_of_changes() {
        let replaced = HashMap::from([
            ("T1".to_owned(), "T2".to_owned()),
            ("T2".to_owned(), "P".to_owned()),
        ]);
        assert_eq!(resolve(&replaced, "T1"), "P");
        assert_eq!(resolve(&replaced, "Q"), "Q");
    }
}
