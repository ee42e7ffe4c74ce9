//! Follows the registers' change feed and records triggers as pupils cross thresholds.
//!
//! The follower stores its position in the feed in the same transaction as the triggers it
//! derived, so after a restart it resumes where it stopped, without missing or repeating one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use rollcall_api::registers::v1::WatchMarksRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_domain::{Phase, Policy};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::TRIGGER_LOCK_KEY;
use crate::figures::{PupilMarks, figures_to_proto, load_school, school_and_as_of};
use crate::policies;

/// The name under which the follower stores its cursor.
pub(crate) const REGISTERS_FEED: &str = "registers.marks";
/// Marks gathered before evaluating, at most. Each evaluation reads the affected schools'
/// marks for the year, so a large import is best evaluated once, at its end.
const BATCH: usize = 500_000;
/// How long the follower waits for more marks before evaluating what it has.
const SETTLE: Duration = Duration::from_millis(250);

/// The kind of threshold a trigger is about, as stored and streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    PersistentAbsence,
    SevereAbsence,
    PenaltyNoticeWarning,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PersistentAbsence => "persistent_absence",
            Self::SevereAbsence => "severe_absence",
            Self::PenaltyNoticeWarning => "penalty_notice_warning",
        }
    }
}

/// Starts the follower. It retries with backoff when the registers service is unreachable.
pub fn spawn_follower(
    db: Db,
    registers: RegistersServiceClient<Channel>,
    trigger_head: watch::Sender<i64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, registers.clone(), &trigger_head).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Registers feed follower failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

pub(crate) async fn stored_cursor(db: &Db, feed: &str) -> Result<i64, sqlx::Error> {
    let cursor: Option<i64> = with_db!(db, |pool| {
        sqlx::query_scalar("SELECT cursor FROM sync_state WHERE feed = $1")
            .bind(feed)
            .fetch_optional(pool)
            .await
    })?;
    Ok(cursor.unwrap_or(0))
}

async fn follow(
    db: &Db,
    mut registers: RegistersServiceClient<Channel>,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<()> {
    let cursor = stored_cursor(db, REGISTERS_FEED).await?;
    tracing::info!(cursor, "Following the registers change feed");
    let mut stream = registers
        .watch_marks(WatchMarksRequest {
            cursor,
            laestab: String::new(),
        })
        .await?
        .into_inner();

    loop {
        // Wait for the first message, then gather what follows until the feed goes quiet.
        let Some(first) = stream.message().await? else {
            return Ok(());
        };
        let mut affected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut last_cursor = 0;
        let mut count = 0usize;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            if let Some(mark) = message.mark {
                affected.entry(mark.laestab).or_default().insert(mark.upn);
            }
            last_cursor = message.cursor;
            count += 1;
            if count >= BATCH {
                break;
            }
            match tokio::time::timeout(SETTLE, stream.message()).await {
                Ok(Ok(Some(message))) => next = Some(message),
                Ok(Ok(None)) | Err(_) => {}
                Ok(Err(status)) => return Err(status.into()),
            }
        }
        evaluate(
            db,
            &mut registers,
            &affected,
            Some(last_cursor),
            trigger_head,
        )
        .await?;
        tracing::info!(
            cursor = last_cursor,
            marks = count,
            schools = affected.len(),
            "Evaluated pupils after new marks"
        );
    }
}

/// Re-evaluates every pupil of a school, for example after it moves to another policy, and
/// stores the triggers that follow. The feed cursor is left where it is.
pub(crate) async fn evaluate_school(
    db: &Db,
    registers: &mut RegistersServiceClient<Channel>,
    laestab: &str,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<()> {
    let affected = BTreeMap::from([(laestab.to_owned(), BTreeSet::new())]);
    evaluate(db, registers, &affected, None, trigger_head).await
}

/// Re-evaluates the affected pupils of each school (every pupil where the set is empty) under
/// the policy each school follows, and stores triggers and, when given, the new cursor.
async fn evaluate(
    db: &Db,
    registers: &mut RegistersServiceClient<Channel>,
    affected: &BTreeMap<String, BTreeSet<String>>,
    cursor: Option<i64>,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<()> {
    let mut loaded = Vec::new();
    for (laestab, upns) in affected {
        let (school, as_of) = school_and_as_of(registers, laestab, "").await?;
        let Some(as_of) = as_of else { continue };
        let policy = policies::policy_for(db, laestab, as_of)
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?
            .policy;
        loaded.push((
            laestab,
            upns,
            load_school(registers, school, as_of, None).await?,
            policy,
        ));
    }
    let mut evaluations = Vec::new();
    for (laestab, upns, marks, policy) in &loaded {
        for pupil in marks
            .pupils
            .iter()
            .filter(|p| upns.is_empty() || upns.contains(&p.upn))
        {
            evaluations.push(Evaluation::of(
                pupil,
                marks.phase,
                policy,
                laestab,
                marks.as_of,
            ));
        }
    }

    let now = Utc::now();
    let head = with_db!(db, |pool| {
        let mut tx = pool.begin_write(TRIGGER_LOCK_KEY).await?;
        let mut next: i64 =
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(sequence), 0) FROM triggers")
                .fetch_one(&mut *tx)
                .await?;
        for evaluation in &evaluations {
            let previous: Option<(bool, bool, bool)> = sqlx::query_as(
                "SELECT persistent_absence, severe_absence, penalty_warning FROM pupil_status \
                 WHERE laestab = $1 AND upn = $2",
            )
            .bind(&evaluation.laestab)
            .bind(&evaluation.pupil.upn)
            .fetch_optional(&mut *tx)
            .await?;
            let (was_pa, was_sa, was_warning) = previous.unwrap_or((false, false, false));
            let policy = evaluation.policy;
            let changes = [
                (
                    Kind::PersistentAbsence,
                    was_pa,
                    evaluation.persistent,
                    policy.persistent_absence_clause.reference.as_str(),
                ),
                (
                    Kind::SevereAbsence,
                    was_sa,
                    evaluation.severe,
                    policy.severe_absence_clause.reference.as_str(),
                ),
                (
                    Kind::PenaltyNoticeWarning,
                    was_warning,
                    evaluation.warning,
                    policy.penalty_warning.clause.reference.as_str(),
                ),
            ];
            for (kind, before, after, clause) in changes {
                if before == after {
                    continue;
                }
                next += 1;
                let state = if after { "raised" } else { "withdrawn" };
                let id = format!("trg-{next:010}");
                sqlx::query(
                    "INSERT INTO triggers (sequence, id, kind, state, laestab, upn, year_group, phase, \
                     policy_id, clause, as_of, figures, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(next)
                .bind(&id)
                .bind(kind.as_str())
                .bind(state)
                .bind(&evaluation.laestab)
                .bind(&evaluation.pupil.upn)
                .bind(&evaluation.pupil.year_group)
                .bind(evaluation.phase.as_str())
                .bind(&policy.id)
                .bind(clause)
                .bind(evaluation.as_of)
                .bind(&evaluation.figures_json)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tracing::info!(trigger = %id, kind = kind.as_str(), state, upn = %evaluation.pupil.upn, laestab = %evaluation.laestab, "Trigger recorded");
            }
            sqlx::query(
                "INSERT INTO pupil_status (laestab, upn, persistent_absence, severe_absence, penalty_warning, as_of) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (laestab, upn) DO UPDATE SET persistent_absence = excluded.persistent_absence, \
                 severe_absence = excluded.severe_absence, penalty_warning = excluded.penalty_warning, \
                 as_of = excluded.as_of",
            )
            .bind(&evaluation.laestab)
            .bind(&evaluation.pupil.upn)
            .bind(evaluation.persistent)
            .bind(evaluation.severe)
            .bind(evaluation.warning)
            .bind(evaluation.as_of)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(cursor) = cursor {
            sqlx::query(
                "INSERT INTO sync_state (feed, cursor) VALUES ($1, $2) \
                 ON CONFLICT (feed) DO UPDATE SET cursor = excluded.cursor",
            )
            .bind(REGISTERS_FEED)
            .bind(cursor)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok::<i64, sqlx::Error>(next)
    })?;
    trigger_head.send_if_modified(|current| {
        if head > *current {
            *current = head;
            true
        } else {
            false
        }
    });
    Ok(())
}

struct Evaluation<'a> {
    pupil: &'a PupilMarks,
    policy: &'a Policy,
    laestab: String,
    phase: Phase,
    as_of: chrono::NaiveDate,
    persistent: bool,
    severe: bool,
    warning: bool,
    figures_json: String,
}

impl<'a> Evaluation<'a> {
    fn of(
        pupil: &'a PupilMarks,
        school_phase: Phase,
        policy: &'a Policy,
        laestab: &str,
        as_of: chrono::NaiveDate,
    ) -> Self {
        let figures = pupil.figures();
        let penalty = pupil.penalty(policy, as_of);
        let proto = figures_to_proto(&figures, policy);
        Self {
            pupil,
            policy,
            laestab: laestab.to_owned(),
            phase: pupil.phase(school_phase),
            as_of,
            persistent: policy.is_persistent_absence(&figures),
            severe: policy.is_severe_absence(&figures),
            warning: penalty.met,
            figures_json: serde_json::json!({
                "possible_sessions": proto.possible_sessions,
                "attended_sessions": proto.attended_sessions,
                "present_sessions": proto.present_sessions,
                "approved_activity_sessions": proto.approved_activity_sessions,
                "authorised_absence_sessions": proto.authorised_absence_sessions,
                "unauthorised_absence_sessions": proto.unauthorised_absence_sessions,
                "not_possible_sessions": proto.not_possible_sessions,
            })
            .to_string(),
        }
    }
}
