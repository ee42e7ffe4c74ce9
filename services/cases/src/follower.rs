//! Follows the policy service's triggers and opens or flags cases.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use rollcall_api::convert::phase_from_proto;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::policy::v1::{Trigger, TriggerKind, TriggerState, WatchTriggersRequest};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_domain::Phase;
use rollcall_domain::ladder::{Ladder, choose_ladder, parse_ladder};
use rollcall_domain::session::parse_date;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use std::sync::Arc;

use rollcall_api::client::Channel;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::upn_changes::resolve;
use crate::{CASES_LOCK_KEY, TRIGGER_FEED};

/// The concern a persistent-absence trigger opens a case for.
const PERSISTENT_ABSENCE: &str = "persistent_absence";

/// Reads the position this follower stored, or 0.
pub(crate) async fn stored_cursor(db: &Db) -> Result<i64, sqlx::Error> {
    rollcall_runtime::storage::stored_cursor(db, TRIGGER_FEED).await
}

/// Starts the follower. It retries with backoff when the policy service is unreachable.
pub(crate) fn spawn(
    db: Db,
    policy: PolicyServiceClient<Channel>,
    registers: RegistersServiceClient<Channel>,
    processed: watch::Sender<i64>,
    wake: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, policy.clone(), &registers, &processed, &wake).await {
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
    registers: &RegistersServiceClient<Channel>,
    processed: &watch::Sender<i64>,
    wake: &Notify,
) -> anyhow::Result<()> {
    let cursor = stored_cursor(db).await?;
    tracing::info!(cursor, "Following policy triggers");
    let mut stream = policy
        .watch_triggers(WatchTriggersRequest { cursor })
        .await?
        .into_inner();
    while let Some(message) = stream.message().await? {
        if let Some(trigger) = message.trigger {
            let span = rollcall_runtime::telemetry::background_span(
                "cases.apply_trigger",
                Some(message.traceparent.as_str()).filter(|parent| !parent.is_empty()),
            );
            rollcall_runtime::telemetry::set_attribute(&span, "rollcall.trigger_id", &trigger.id);
            let applied = follow_trigger(db, registers, &trigger, message.cursor)
                .instrument(span)
                .await?;
            if applied.opened {
                rollcall_runtime::telemetry::metrics::case_opened(&trigger.laestab);
            }
            if applied.letter_job {
                wake.notify_one();
            }
        }
        processed.send_replace(message.cursor);
    }
    Ok(())
}

/// Applies one trigger from the feed.
async fn follow_trigger(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    trigger: &Trigger,
    cursor: i64,
) -> anyhow::Result<Applied> {
    // Review dates count the school's days; only a new case needs them.
    let days = if trigger.state == TriggerState::Raised as i32 {
        crate::school_days::of_school(registers, &trigger.laestab).await?
    } else {
        crate::school_days::SchoolDays::default()
    };
    Ok(apply(db, trigger, &days, cursor).await?)
}

/// The outcome of applying a trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Applied {
    /// A case was opened.
    opened: bool,
    /// A job to write an automatic letter was recorded.
    letter_job: bool,
}

/// The change a trigger makes to the pupil's live case for the concern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// Open a case at the first stage of the pupil's ladder.
    Open,
    /// Return a case under review to open, because the trigger was raised again.
    Reopen(String),
    /// Put an open case up for review, because its trigger was withdrawn.
    Review(String),
    /// Note on a live case that attendance meets the entry criteria of a stage.
    Note(String),
}

/// Decides the change a trigger makes, given the live case (id and status) for its pupil and
/// concern. Only persistent-absence triggers act on cases for now.
fn decide(trigger: &Trigger, live: Option<(String, String)>) -> Option<Change> {
    let kind = TriggerKind::try_from(trigger.kind).unwrap_or(TriggerKind::Unspecified);
    let state = TriggerState::try_from(trigger.state).unwrap_or(TriggerState::Unspecified);
    if kind == TriggerKind::LadderStage {
        return match (state, live) {
            (TriggerState::Raised, Some((id, _))) => Some(Change::Note(id)),
            _ => None,
        };
    }
    if kind != TriggerKind::PersistentAbsence {
        return None;
    }
    match (state, live) {
        (TriggerState::Raised, None) => Some(Change::Open),
        (TriggerState::Raised, Some((id, status))) if status == "review" => {
            Some(Change::Reopen(id))
        }
        (TriggerState::Withdrawn, Some((id, status))) if status == "open" => {
            Some(Change::Review(id))
        }
        _ => None,
    }
}

/// Applies one trigger and stores the cursor in the same transaction.
/// Returns the ladder a trigger's pupil follows, and its loaded version (0 for the shipped
/// default).
async fn ladder_for(db: &Db, trigger: &Trigger) -> Result<(Ladder, i32), sqlx::Error> {
    // A trigger without a phase follows the juniors' and secondary ladder.
    let phase = phase_from_proto(trigger.phase).unwrap_or(Phase::Secondary);
    let sources: Vec<(String, i32)> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT v.source, v.version FROM ladder_versions v WHERE v.version = \
             (SELECT MAX(w.version) FROM ladder_versions w WHERE w.id = v.id) ORDER BY v.id",
        )
        .fetch_all(pool)
        .await
    })?;
    let loaded: Vec<(Ladder, i32)> = sources
        .iter()
        .filter_map(|(source, version)| parse_ladder(source).ok().map(|l| (l, *version)))
        .collect();
    let ladders: Vec<Ladder> = loaded.iter().map(|(l, _)| l.clone()).collect();
    let ladder = choose_ladder(&ladders, phase);
    let ladder_version = loaded
        .iter()
        .find(|(l, _)| l.id == ladder.id)
        .map_or(0, |(_, version)| *version);
    Ok((ladder, ladder_version))
}

/// Returns the id of the case a persistent-absence trigger opens.
fn case_id_for(trigger: &Trigger) -> String {
    format!("case-{}", trigger.id.trim_start_matches("trg-"))
}

/// Returns the threshold letter a raised trigger requests, if any: an attendance concern letter on
/// the case a persistent-absence trigger opens, and a penalty-notice warning letter on the
/// pupil's live case.
fn automatic_letter(trigger: &Trigger, opened: bool) -> Option<&'static str> {
    let kind = TriggerKind::try_from(trigger.kind).unwrap_or(TriggerKind::Unspecified);
    if trigger.state != TriggerState::Raised as i32 {
        return None;
    }
    match kind {
        TriggerKind::PersistentAbsence if opened => Some("attendance-concern-letter"),
        TriggerKind::PenaltyNoticeWarning => Some("penalty-warning-letter"),
        _ => None,
    }
}

async fn apply(
    db: &Db,
    trigger: &Trigger,
    days: &crate::school_days::SchoolDays,
    cursor: i64,
) -> Result<Applied, sqlx::Error> {
    let now = Utc::now();
    let traceparent = rollcall_runtime::telemetry::current_traceparent();
    let phase = phase_from_proto(trigger.phase).unwrap_or(Phase::Secondary);
    let (ladder, ladder_version) = ladder_for(db, trigger).await?;
    let started_on = parse_date(&trigger.as_of).unwrap_or_else(|_| now.date_naive());
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        // Another replica of this service may have applied the trigger already: the cursor
        // read under the write lock shows it, so each trigger is applied once.
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT cursor FROM sync_state WHERE feed = $1")
                .bind(TRIGGER_FEED)
                .fetch_optional(&mut *tx)
                .await?;
        if applied.is_some_and(|applied| applied >= cursor) {
            tracing::debug!(trigger = %trigger.id, cursor, "Trigger already applied by another replica");
            return Ok(Applied::default());
        }
        // A trigger raised before the policy service applied a UPN change names the replaced
        // UPN, so it acts on the UPN that replaced it.
        let replaced: Vec<(String, String)> =
            sqlx::query_as("SELECT from_upn, to_upn FROM upn_changes")
                .fetch_all(&mut *tx)
                .await?;
        let replaced: HashMap<String, String> = replaced.into_iter().collect();
        let renamed;
        let trigger = match replaced.get(&trigger.upn) {
            Some(_) => {
                renamed = Trigger {
                    upn: resolve(&replaced, &trigger.upn).to_owned(),
                    ..trigger.clone()
                };
                &renamed
            }
            None => trigger,
        };
        let live: Option<(String, String)> = sqlx::query_as(
            "SELECT id, status FROM cases WHERE upn = $1 AND concern = $2 AND status <> 'closed'",
        )
        .bind(&trigger.upn)
        .bind(PERSISTENT_ABSENCE)
        .fetch_optional(&mut *tx)
        .await?;

        let event = match (decide(trigger, live), ladder.stages.first()) {
            (Some(Change::Open), Some(stage)) => {
                let case_id = case_id_for(trigger);
                sqlx::query(
                    "INSERT INTO cases (id, laestab, upn, concern, phase, ladder, stage, stage_number, \
                     owner_role, status, opened_at, opened_by_trigger, stage_started_on, \
                     next_review, opened_on, ladder_version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, 'open', $9, $10, $11, $12, $11, \
                     $13)",
                )
                .bind(&case_id)
                .bind(&trigger.laestab)
                .bind(&trigger.upn)
                .bind(PERSISTENT_ABSENCE)
                .bind(phase.as_str())
                .bind(&ladder.id)
                .bind(&stage.id)
                .bind(stage.owner.as_str())
                .bind(now)
                .bind(&trigger.id)
                .bind(started_on)
                .bind(days.after(started_on, stage.review_interval_days))
                .bind(ladder_version)
                .execute(&mut *tx)
                .await?;
                tracing::info!(case = %case_id, upn = %trigger.upn, laestab = %trigger.laestab, stage = stage.id, "Case opened");
                let detail = format!(
                    "Opened at stage {} ({}) by trigger {} under clause {}",
                    stage.id,
                    stage.owner.as_str(),
                    trigger.id,
                    trigger.clause
                );
                Some((case_id, "opened", detail))
            }
            (Some(Change::Note(case_id)), _) => {
                let stage: Option<(String,)> =
                    sqlx::query_as("SELECT stage FROM cases WHERE id = $1")
                        .bind(&case_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let current = stage.map(|(stage,)| stage).unwrap_or_default();
                let further = match (
                    ladder.position(&current),
                    ladder.position(&trigger.ladder_stage),
                ) {
                    (Some(now), Some(suited)) => suited > now,
                    _ => false,
                };
                if further {
                    tracing::info!(case = %case_id, stage = %trigger.ladder_stage, "Case meets the criteria of a later stage");
                    let detail = format!(
                        "Attendance meets the entry criteria of stage {} (clause {}); consider \
                         escalating",
                        trigger.ladder_stage, trigger.clause
                    );
                    Some((case_id, "criteria", detail))
                } else {
                    None
                }
            }
            (Some(Change::Reopen(case_id)), _) => {
                sqlx::query("UPDATE cases SET status = 'open' WHERE id = $1")
                    .bind(&case_id)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(case = %case_id, upn = %trigger.upn, "Case reopened");
                let detail = format!("Trigger {} raised again", trigger.id);
                Some((case_id, "reopened", detail))
            }
            (Some(Change::Review(case_id)), _) => {
                sqlx::query("UPDATE cases SET status = 'review' WHERE id = $1")
                    .bind(&case_id)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(case = %case_id, upn = %trigger.upn, "Case put up for review");
                let detail = format!(
                    "Trigger {} withdrawn because the pupil no longer meets the threshold; review the case",
                    trigger.id
                );
                Some((case_id, "review", detail))
            }
            _ => None,
        };

        let opened = matches!(&event, Some((_, "opened", _)));
        if let Some((case_id, event, detail)) = event {
            sqlx::query(
                "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, \
                 stage, reason, on_date) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, 'rollcall', $4, \
                 (SELECT stage FROM cases WHERE id = $1), $6, $5 FROM case_events",
            )
            .bind(&case_id)
            .bind(event)
            .bind(&detail)
            .bind(now)
            .bind(started_on)
            .bind(format!(
                "Trigger {} under clause {}",
                trigger.id, trigger.clause
            ))
            .execute(&mut *tx)
            .await?;
        }
        // The letter worker writes the letter later, because it reads the other services. The
        // job is recorded here, in the trigger's transaction, so it is never lost or repeated.
        let mut letter_job = false;
        if let Some(template) = automatic_letter(trigger, opened) {
            let target: Option<(String,)> = sqlx::query_as(
                "SELECT id FROM cases WHERE upn = $1 AND laestab = $2 AND status <> 'closed' \
                 ORDER BY opened_at DESC LIMIT 1",
            )
            .bind(&trigger.upn)
            .bind(&trigger.laestab)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((case_id,)) = target {
                sqlx::query(
                    "INSERT INTO letter_jobs (id, case_id, template, letter_date, status, \
                     next_attempt_at, created_at, traceparent) \
                     VALUES ($1, $2, $3, $4, 'pending', $5, $5, $6) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(format!("auto:{}", trigger.id))
                .bind(&case_id)
                .bind(template)
                .bind(started_on)
                .bind(now)
                .bind(&traceparent)
                .execute(&mut *tx)
                .await?;
                letter_job = true;
            } else {
                tracing::info!(trigger = %trigger.id, upn = %trigger.upn, "No live case for the automatic letter; none written");
            }
        }
        sqlx::query(rollcall_runtime::storage::ADVANCE_CURSOR)
            .bind(TRIGGER_FEED)
            .bind(cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Applied { opened, letter_job })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(kind: TriggerKind, state: TriggerState) -> Trigger {
        Trigger {
            id: "trg-0000000001".into(),
            kind: kind as i32,
            state: state as i32,
            ..Trigger::default()
        }
    }

    fn live(status: &str) -> Option<(String, String)> {
        Some(("case-1".into(), status.into()))
    }

    #[test]
    fn raised_opens_once() {
        let raised = trigger(TriggerKind::PersistentAbsence, TriggerState::Raised);
        assert_eq!(decide(&raised, None), Some(Change::Open));
        assert_eq!(decide(&raised, live("open")), None);
        assert_eq!(
            decide(&raised, live("review")),
            Some(Change::Reopen("case-1".into()))
        );
    }

    #[test]
    fn withdrawn_puts_case_up_for_review() {
        let withdrawn = trigger(TriggerKind::PersistentAbsence, TriggerState::Withdrawn);
        assert_eq!(
            decide(&withdrawn, live("open")),
            Some(Change::Review("case-1".into()))
        );
        assert_eq!(decide(&withdrawn, live("review")), None);
        assert_eq!(decide(&withdrawn, None), None);
    }

    #[test]
    fn ladder_stage_notes_a_live_case() {
        let raised = trigger(TriggerKind::LadderStage, TriggerState::Raised);
        assert_eq!(
            decide(&raised, live("open")),
            Some(Change::Note("case-1".into()))
        );
        assert_eq!(decide(&raised, None), None, "no case is opened for it");
        let withdrawn = trigger(TriggerKind::LadderStage, TriggerState::Withdrawn);
        assert_eq!(decide(&withdrawn, live("open")), None);
    }

    #[tokio::test]
    async fn follower_applies_trigger_once() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let storage = rollcall_runtime::StorageConfig::Sqlite {
            data_dir: dir.path().to_path_buf(),
        };
        let db = rollcall_runtime::storage::connect(&storage, crate::MIGRATIONS)
            .await
            .expect("storage");
        let raised = Trigger {
            upn: "A123456789012".into(),
            laestab: "9192001".into(),
            as_of: "2025-09-12".into(),
            ..trigger(TriggerKind::PersistentAbsence, TriggerState::Raised)
        };
        let days = crate::school_days::SchoolDays::default();
        apply(&db, &raised, &days, 1).await.expect("case opened");
        // A later ladder stage notes the live case each time it is applied, so applying it
        // twice would show as a second note.
        let stage = Trigger {
            id: "trg-0000000002".into(),
            ladder_stage: "head-of-year-meeting".into(),
            ..Trigger {
                kind: TriggerKind::LadderStage as i32,
                ..raised.clone()
            }
        };
        let count = || async {
            with_db!(&db, |pool| {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM case_events")
                    .fetch_one(pool)
                    .await
            })
            .expect("count")
        };
        apply(&db, &stage, &days, 2).await.expect("first replica");
        let once = count().await;
        // A second replica that reads the same trigger later finds it applied.
        apply(&db, &stage, &days, 2).await.expect("second replica");
        assert_eq!(count().await, once, "the trigger was applied twice");
        // An older trigger read late by a lagging replica changes nothing either.
        apply(&db, &raised, &days, 1)
            .await
            .expect("lagging replica");
        assert_eq!(count().await, once, "an older trigger was applied again");
    }

    #[test]
    fn other_triggers_open_nothing() {
        for kind in [
            TriggerKind::SevereAbsence,
            TriggerKind::PenaltyNoticeWarning,
            TriggerKind::UnexplainedAbsenceOverdue,
            TriggerKind::UnauthorisedAbsenceReturn,
            TriggerKind::SicknessReturn,
        ] {
            assert_eq!(decide(&trigger(kind, TriggerState::Raised), None), None);
        }
    }
}
