//! Follows the registers' UPN changes. Each change moves the pupil's cases, plans,
//! reintegrations, truancy incidents, rewards, contact tasks and messages to the new UPN, in
//! the transaction that stores the change's position.
//!
//! When the same child was entered under both UPNs, records that may exist once per pupil are
//! merged. The new UPN's live case for a concern stays live, and the other is closed with an
//! event naming the case kept. Contact tasks for the same day become one, and a reward given
//! under both for the same period is kept once.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rollcall_api::client::Channel;
use rollcall_api::registers::v1::ListUpnChangesRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::CASES_LOCK_KEY;

/// The name under which the position in the registers' UPN changes is stored.
pub(crate) const UPN_CHANGES_FEED: &str = "registers.upn_changes";
/// How often the follower polls the registers for new UPN changes.
const POLL: Duration = Duration::from_secs(2);
/// Changes read per request.
const PAGE: i32 = 100;
/// The maximum length of a chain of changes followed from one UPN, far beyond any real pupil's.
const MAX_CHAIN: usize = 100;

/// Reads the position this follower stored, or 0.
pub(crate) async fn stored_cursor(db: &Db) -> Result<i64, sqlx::Error> {
    rollcall_runtime::storage::stored_cursor(db, UPN_CHANGES_FEED).await
}

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
/// registers service is unreachable. `applied` carries the id of the last change applied.
pub(crate) fn spawn(
    db: Db,
    registers: RegistersServiceClient<Channel>,
    applied: watch::Sender<i64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, &registers, &applied).await {
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
async fn follow(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    applied: &watch::Sender<i64>,
) -> anyhow::Result<()> {
    loop {
        let cursor = stored_cursor(db).await?;
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
            applied.send_replace(change.id);
        }
    }
}

/// A contact task of the replaced UPN on a day the new UPN has a task too.
#[derive(Debug, sqlx::FromRow)]
struct TaskClash {
    from_id: String,
    to_id: String,
    from_status: String,
    to_status: String,
    outcome: String,
    completed_by: String,
    completed_at: Option<DateTime<Utc>>,
}

/// Applies one change and stores its position in one transaction. Applying a change again
/// changes nothing.
async fn apply(db: &Db, id: i64, from: &str, to: &str) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let reason = format!("UPN {from} replaced by {to} (registers change {id})");
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;

        // One live case per pupil and concern: the new UPN's stays live.
        let live_clashes: Vec<(String, String)> = sqlx::query_as(
            "SELECT f.id, t.id FROM cases f JOIN cases t ON t.concern = f.concern \
             WHERE f.upn = $1 AND t.upn = $2 AND f.status <> 'closed' AND t.status <> 'closed'",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        for (closed, kept) in live_clashes {
            sqlx::query("UPDATE cases SET status = 'closed', next_review = NULL WHERE id = $1")
                .bind(&closed)
                .execute(&mut *tx)
                .await?;
            let detail = format!(
                "Closed when UPN {from} was replaced by {to}, because the pupil's case {kept} \
                 for the same concern stays open; this case's history is kept"
            );
            sqlx::query(
                "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, \
                 stage, reason, on_date) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, 'closed', $2, 'rollcall', $3, \
                 (SELECT stage FROM cases WHERE id = $1), $4, $5 FROM case_events",
            )
            .bind(&closed)
            .bind(&detail)
            .bind(now)
            .bind(&reason)
            .bind(now.date_naive())
            .execute(&mut *tx)
            .await?;
            tracing::info!(case = %closed, kept = %kept, from_upn = from, to_upn = to, "Case closed by a UPN merge");
        }

        // One contact task per pupil and day: the replaced UPN's task merges into the other.
        let task_clashes: Vec<TaskClash> = sqlx::query_as(
            "SELECT f.id AS from_id, t.id AS to_id, f.status AS from_status, \
             t.status AS to_status, f.outcome, f.completed_by, f.completed_at \
             FROM contact_tasks f JOIN contact_tasks t ON t.absence_date = f.absence_date \
             WHERE f.upn = $1 AND t.upn = $2",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        for clash in task_clashes {
            if clash.from_status == "done" && clash.to_status != "done" {
                sqlx::query(
                    "UPDATE contact_tasks SET status = 'done', outcome = $2, completed_by = $3, \
                     completed_at = $4 WHERE id = $1",
                )
                .bind(&clash.to_id)
                .bind(&clash.outcome)
                .bind(&clash.completed_by)
                .bind(clash.completed_at)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("UPDATE messages SET task_id = $2 WHERE task_id = $1")
                .bind(&clash.from_id)
                .bind(&clash.to_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM contact_tasks WHERE id = $1")
                .bind(&clash.from_id)
                .execute(&mut *tx)
                .await?;
            tracing::info!(task = %clash.from_id, kept = %clash.to_id, from_upn = from, to_upn = to, "Contact task merged by a UPN merge");
        }

        // A reward given under both UPNs for the same period is kept once, as given under the
        // new UPN.
        let duplicate_rewards = sqlx::query(
            "DELETE FROM given_rewards WHERE upn = $1 AND EXISTS (SELECT 1 FROM given_rewards g \
             WHERE g.upn = $2 AND g.laestab = given_rewards.laestab \
             AND g.reward = given_rewards.reward AND g.period_from = given_rewards.period_from \
             AND g.period_to = given_rewards.period_to)",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if duplicate_rewards > 0 {
            tracing::info!(
                rewards = duplicate_rewards,
                from_upn = from,
                to_upn = to,
                "Rewards given under both UPNs kept once"
            );
        }

        for table in [
            "cases",
            "plans",
            "reintegrations",
            "truancy_incidents",
            "given_rewards",
            "contact_tasks",
            "messages",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET upn = $2 WHERE upn = $1"
            )))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
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
