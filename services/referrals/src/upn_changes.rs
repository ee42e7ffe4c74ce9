//! Follows the registers' UPN changes. Each change moves the pupil's referrals and packs to
//! the new UPN, in the transaction that stores the change's position. A pack already built
//! keeps the UPN it was signed with inside it.
//!
//! A pupil has at most one open referral of each kind at a school. When the same child was
//! entered under both UPNs and each has one open, the new UPN's stays open and the other is
//! withdrawn, with an outcome that names the referral kept.

use std::time::Duration;

use chrono::Utc;
use rollcall_api::client::Channel;
use rollcall_api::registers::v1::ListUpnChangesRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::task::JoinHandle;

use crate::records::REFERRALS_LOCK_KEY;

/// The name under which the position in the registers' UPN changes is stored.
const UPN_CHANGES_FEED: &str = "registers.upn_changes";
/// How often the follower polls the registers for new UPN changes.
const POLL: Duration = Duration::from_secs(2);
/// Changes read per request.
const PAGE: i32 = 100;

/// Returns the condition of an open referral under a table alias, as `records::OPEN` states it.
fn open(alias: &str) -> String {
    format!(
        "{alias}.status NOT IN ('paid', 'prosecution', 'withdrawn') AND NOT \
         ({alias}.status = 'accepted' AND {alias}.kind IN ('unauthorised_absence_return', \
         'sickness_return', 'new_pupil_return', 'deletion_return'))"
    )
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
    let clashes_sql = format!(
        "SELECT f.id, t.id FROM referrals f JOIN referrals t \
         ON t.laestab = f.laestab AND t.kind = f.kind \
         WHERE f.upn = $1 AND t.upn = $2 AND {} AND {}",
        open("f"),
        open("t")
    );
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(REFERRALS_LOCK_KEY).await?;
        let clashes: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(clashes_sql))
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?;
        for (withdrawn, kept) in clashes {
            sqlx::query("UPDATE referrals SET status = 'withdrawn', updated_at = $2 WHERE id = $1")
                .bind(&withdrawn)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let (position,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM referral_outcomes WHERE referral_id = $1")
                    .bind(&withdrawn)
                    .fetch_one(&mut *tx)
                    .await?;
            let note = format!(
                "Withdrawn by rollcall when UPN {from} was replaced by {to}, because the pupil's \
                 referral {kept} of the same kind stays open; review both"
            );
            sqlx::query(
                "INSERT INTO referral_outcomes (referral_id, position, request_id, outcome, \
                 on_date, note, recorded_by, recorded_at) \
                 VALUES ($1, $2, NULL, 'withdrawn', $3, $4, 'rollcall', $5)",
            )
            .bind(&withdrawn)
            .bind(position + 1)
            .bind(now.date_naive())
            .bind(&note)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tracing::warn!(referral = %withdrawn, kept = %kept, from_upn = from, to_upn = to, "Referral withdrawn by a UPN merge; staff should review both");
        }
        for table in ["referrals", "packs"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET upn = $2 WHERE upn = $1"
            )))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(rollcall_runtime::storage::ADVANCE_CURSOR)
            .bind(UPN_CHANGES_FEED)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    })?;
    tracing::info!(
        change = id,
        from_upn = from,
        to_upn = to,
        "UPN change applied"
    );
    Ok(())
}
