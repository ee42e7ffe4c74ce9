//! Follows the policy service's triggers and opens or flags cases.

use std::time::Duration;

use chrono::Utc;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::policy::v1::{Trigger, TriggerKind, TriggerState, WatchTriggersRequest};
use rollcall_api::types::v1::Phase as PbPhase;
use rollcall_domain::Phase;
use rollcall_domain::ladder::ladder_for;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::{CASES_LOCK_KEY, TRIGGER_FEED};

/// The concern a persistent-absence trigger opens a case for.
const PERSISTENT_ABSENCE: &str = "persistent_absence";

pub(crate) async fn stored_cursor(db: &Db) -> Result<i64, sqlx::Error> {
    let cursor: Option<i64> = with_db!(db, |pool| {
        sqlx::query_scalar("SELECT cursor FROM sync_state WHERE feed = $1")
            .bind(TRIGGER_FEED)
            .fetch_optional(pool)
            .await
    })?;
    Ok(cursor.unwrap_or(0))
}

/// Starts the follower. It retries with backoff when the policy service is unreachable.
pub(crate) fn spawn(
    db: Db,
    policy: PolicyServiceClient<Channel>,
    processed: watch::Sender<i64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, policy.clone(), &processed).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Trigger follower failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

async fn follow(
    db: &Db,
    mut policy: PolicyServiceClient<Channel>,
    processed: &watch::Sender<i64>,
) -> anyhow::Result<()> {
    let cursor = stored_cursor(db).await?;
    tracing::info!(cursor, "Following policy triggers");
    let mut stream = policy
        .watch_triggers(WatchTriggersRequest { cursor })
        .await?
        .into_inner();
    while let Some(message) = stream.message().await? {
        if let Some(trigger) = message.trigger {
            apply(db, &trigger, message.cursor).await?;
        }
        processed.send_replace(message.cursor);
    }
    Ok(())
}

fn phase_of(trigger: &Trigger) -> Phase {
    match PbPhase::try_from(trigger.phase) {
        Ok(PbPhase::Infant) => Phase::Infant,
        Ok(PbPhase::Junior) => Phase::Junior,
        _ => Phase::Secondary,
    }
}

/// Applies one trigger and stores the cursor in the same transaction.
async fn apply(db: &Db, trigger: &Trigger, cursor: i64) -> Result<(), sqlx::Error> {
    let kind = TriggerKind::try_from(trigger.kind).unwrap_or(TriggerKind::Unspecified);
    let state = TriggerState::try_from(trigger.state).unwrap_or(TriggerState::Unspecified);
    let now = Utc::now();
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let live: Option<(String, String)> = sqlx::query_as(
            "SELECT id, status FROM cases WHERE upn = $1 AND concern = $2 AND status <> 'closed'",
        )
        .bind(&trigger.upn)
        .bind(PERSISTENT_ABSENCE)
        .fetch_optional(&mut *tx)
        .await?;
        let mut next_event: i64 =
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(id), 0) FROM case_events")
                .fetch_one(&mut *tx)
                .await?
                + 1;

        match (kind, state, live) {
            (TriggerKind::PersistentAbsence, TriggerState::Raised, None) => {
                let phase = phase_of(trigger);
                let ladder = ladder_for(phase);
                let Some(stage) = ladder.stages.first() else {
                    return Ok(());
                };
                let case_id = format!("case-{}", trigger.id.trim_start_matches("trg-"));
                sqlx::query(
                    "INSERT INTO cases (id, laestab, upn, concern, phase, ladder, stage, stage_number, \
                     owner_role, status, opened_at, opened_by_trigger) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, 'open', $9, $10)",
                )
                .bind(&case_id)
                .bind(&trigger.laestab)
                .bind(&trigger.upn)
                .bind(PERSISTENT_ABSENCE)
                .bind(phase.as_str())
                .bind(ladder.id)
                .bind(stage.id)
                .bind(stage.owner.as_str())
                .bind(now)
                .bind(&trigger.id)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at) \
                     VALUES ($1, $2, 'opened', $3, 'rollcall', $4)",
                )
                .bind(next_event)
                .bind(&case_id)
                .bind(format!(
                    "Opened at stage {} ({}) by trigger {} under clause {}",
                    stage.id, stage.owner.as_str(), trigger.id, trigger.clause
                ))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                next_event += 1;
                tracing::info!(case = %case_id, upn = %trigger.upn, laestab = %trigger.laestab, stage = stage.id, "Case opened");
            }
            (TriggerKind::PersistentAbsence, TriggerState::Raised, Some((case_id, status)))
                if status == "review" =>
            {
                sqlx::query("UPDATE cases SET status = 'open' WHERE id = $1")
                    .bind(&case_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                        "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at) \
                         VALUES ($1, $2, 'reopened', $3, 'rollcall', $4)",
                    )
                    .bind(next_event)
                    .bind(&case_id)
                    .bind(format!("Trigger {} raised again", trigger.id))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                next_event += 1;
            }
            (TriggerKind::PersistentAbsence, TriggerState::Withdrawn, Some((case_id, status)))
                if status == "open" =>
            {
                sqlx::query("UPDATE cases SET status = 'review' WHERE id = $1")
                    .bind(&case_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                        "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at) \
                         VALUES ($1, $2, 'review', $3, 'rollcall', $4)",
                    )
                    .bind(next_event)
                    .bind(&case_id)
                    .bind(format!(
                        "Trigger {} withdrawn: the pupil no longer meets the threshold; review the case",
                        trigger.id
                    ))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                next_event += 1;
                tracing::info!(case = %case_id, upn = %trigger.upn, "Case put up for review");
            }
            _ => {}
        }
        let _ = next_event;
        sqlx::query(
            "INSERT INTO sync_state (feed, cursor) VALUES ($1, $2) \
             ON CONFLICT (feed) DO UPDATE SET cursor = excluded.cursor",
        )
        .bind(TRIGGER_FEED)
        .bind(cursor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    })
}
