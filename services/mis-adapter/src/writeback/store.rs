//! Storage of write-back: the change-feed cursor, the decisions queued, the jobs and their
//! attempts, and the values written back that a later pull must not apply again.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};

use crate::MIS_ADAPTER_LOCK_KEY;

/// Job statuses.
pub(crate) const QUEUED: &str = "queued";
pub(crate) const SENDING: &str = "sending";
pub(crate) const COMPLETED: &str = "completed";
pub(crate) const FAILED: &str = "failed";

/// Mark statuses, besides `queued` and `failed`.
pub(crate) const SENT: &str = "sent";
pub(crate) const ACCEPTED: &str = "accepted";
pub(crate) const REJECTED: &str = "rejected";
pub(crate) const RETRYING: &str = "retrying";
pub(crate) const SUPERSEDED: &str = "superseded";

/// How much earlier than the write-back a pulled change may be and still count as the MIS's
/// copy of it, to allow for a broker clock behind rollcall's.
const ECHO_CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

/// Reads the change-feed position the follower resumes from.
pub(crate) async fn cursor(db: &Db) -> Result<i64, sqlx::Error> {
    let stored: Option<i64> = with_db!(db, |pool| {
        sqlx::query_scalar("SELECT cursor FROM writeback_cursor WHERE id = 1")
            .fetch_optional(pool)
            .await
    })?;
    Ok(stored.unwrap_or(0))
}

/// A decision read from the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) sequence: i64,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) date: String,
    pub(crate) session: String,
    pub(crate) code: String,
    pub(crate) minutes_late: i32,
    pub(crate) comment: String,
    pub(crate) source: String,
    pub(crate) recorded_by: String,
    pub(crate) recorded_at: DateTime<Utc>,
    /// The W3C traceparent of the request that stored the mark version, when spans were
    /// exported.
    pub(crate) traceparent: Option<String>,
}

/// Queues decisions and moves the cursor past them, in one transaction. A decision already
/// queued is left as it is.
pub(crate) async fn queue_decisions(
    db: &Db,
    decisions: &[Decision],
    cursor: i64,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        // A decision read from the feed before a UPN change was applied here names the
        // replaced UPN, so it is queued under the UPN that replaced it.
        let replaced: Vec<(String, String)> =
            sqlx::query_as("SELECT from_upn, to_upn FROM upn_changes")
                .fetch_all(&mut *tx)
                .await?;
        let replaced: HashMap<String, String> = replaced.into_iter().collect();
        for decision in decisions {
            let upn = crate::upn_changes::resolve(&replaced, &decision.upn);
            sqlx::query(
                "INSERT INTO writeback_items (sequence, laestab, upn, session_date, session, \
                 code, minutes_late, comment, source, recorded_by, recorded_at, status, \
                 updated_at, traceparent) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (sequence) DO NOTHING",
            )
            .bind(decision.sequence)
            .bind(&decision.laestab)
            .bind(upn)
            .bind(&decision.date)
            .bind(&decision.session)
            .bind(&decision.code)
            .bind(decision.minutes_late)
            .bind(&decision.comment)
            .bind(&decision.source)
            .bind(&decision.recorded_by)
            .bind(decision.recorded_at)
            .bind(QUEUED)
            .bind(now)
            .bind(&decision.traceparent)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO writeback_cursor (id, cursor) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET cursor = excluded.cursor \
             WHERE writeback_cursor.cursor < excluded.cursor",
        )
        .bind(cursor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    })
}

/// Groups each school's queued decisions into a job of at most `batch_size`, for schools in
/// `schools` that have no job waiting or being sent, so that a school's decisions reach the
/// MIS in the order they were made. Of several decisions for one session in a job, only the
/// latest is sent; the others are marked superseded. Returns the new jobs' ids.
pub(crate) async fn form_jobs(
    db: &Db,
    schools: &[String],
    batch_size: i64,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut created = Vec::new();
    for laestab in schools {
        created.extend(form_job(db, laestab, batch_size, now).await?);
    }
    Ok(created)
}

/// Forms one job of a school's queued decisions, as [`form_jobs`] describes, and returns its
/// id, or `None` when the school has an unfinished job or nothing queued.
async fn form_job(
    db: &Db,
    laestab: &str,
    batch_size: i64,
    now: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error> {
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        let (unfinished,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM writeback_jobs WHERE laestab = $1 AND status IN ($2, $3)",
        )
        .bind(laestab)
        .bind(QUEUED)
        .bind(SENDING)
        .fetch_one(&mut *tx)
        .await?;
        if unfinished > 0 {
            return Ok(None);
        }
        let items: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT sequence, upn, session_date, session FROM writeback_items \
             WHERE laestab = $1 AND job_id IS NULL ORDER BY sequence LIMIT $2",
        )
        .bind(laestab)
        .bind(batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if items.is_empty() {
            return Ok(None);
        }
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM writeback_jobs")
            .fetch_one(&mut *tx)
            .await?;
        let id = format!("wb-{:08}", count + 1);
        sqlx::query(
            "INSERT INTO writeback_jobs (id, laestab, status, next_attempt_at, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $4, $4)",
        )
        .bind(&id)
        .bind(laestab)
        .bind(QUEUED)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let latest = latest_per_session(&items);
        for (sequence, ..) in &items {
            let superseded = !latest.contains(sequence);
            let (status, reason) = if superseded {
                (
                    SUPERSEDED,
                    "a later decision for the same session replaced it in this job",
                )
            } else {
                (QUEUED, "")
            };
            sqlx::query(
                "UPDATE writeback_items SET job_id = $1, status = $2, reason = $3, \
                 updated_at = $4 WHERE sequence = $5",
            )
            .bind(&id)
            .bind(status)
            .bind(reason)
            .bind(now)
            .bind(sequence)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(id))
    })
}

/// Returns the sequence of the latest decision of each session among `items`.
fn latest_per_session(items: &[(i64, String, String, String)]) -> Vec<i64> {
    let mut latest: HashMap<(&str, &str, &str), i64> = HashMap::new();
    for (sequence, upn, date, session) in items {
        let entry = latest
            .entry((upn.as_str(), date.as_str(), session.as_str()))
            .or_insert(*sequence);
        *entry = (*entry).max(*sequence);
    }
    latest.into_values().collect()
}

/// A job as stored, with counts of its marks.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) laestab: String,
    pub(crate) status: String,
    pub(crate) attempts: i32,
    pub(crate) next_attempt_at: DateTime<Utc>,
    pub(crate) last_error: String,
    pub(crate) writeback_id: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) marks: i64,
    pub(crate) accepted: i64,
    pub(crate) rejected: i64,
}

const JOB_SELECT: &str = "SELECT j.id, j.laestab, j.status, j.attempts, \
     j.next_attempt_at, j.last_error, j.writeback_id, j.created_at, j.updated_at, \
     (SELECT COUNT(*) FROM writeback_items i WHERE i.job_id = j.id) AS marks, \
     (SELECT COUNT(*) FROM writeback_items i WHERE i.job_id = j.id AND i.status = 'accepted') \
     AS accepted, \
     (SELECT COUNT(*) FROM writeback_items i WHERE i.job_id = j.id AND i.status = 'rejected') \
     AS rejected FROM writeback_jobs j";

/// Reads one job.
pub(crate) async fn job(db: &Db, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{JOB_SELECT} WHERE j.id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await
    })
}

/// The filters of ListWritebackJobs. Empty strings match everything.
#[derive(Debug)]
pub(crate) struct JobFilter {
    pub(crate) laestab: String,
    pub(crate) status: String,
    pub(crate) before_id: String,
    pub(crate) limit: i64,
}

/// Lists jobs, newest first.
pub(crate) async fn jobs(db: &Db, filter: &JobFilter) -> Result<Vec<JobRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{JOB_SELECT} WHERE ($1 = '' OR j.laestab = $1) AND ($2 = '' OR j.status = $2) \
             AND ($3 = '' OR j.id < $3) ORDER BY j.id DESC LIMIT $4"
        )))
        .bind(&filter.laestab)
        .bind(&filter.status)
        .bind(&filter.before_id)
        .bind(filter.limit)
        .fetch_all(pool)
        .await
    })
}

/// A decision in a job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ItemRow {
    pub(crate) sequence: i64,
    pub(crate) upn: String,
    pub(crate) session_date: String,
    pub(crate) session: String,
    pub(crate) code: String,
    pub(crate) minutes_late: i32,
    pub(crate) comment: String,
    pub(crate) source: String,
    pub(crate) recorded_by: String,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) mis_id: String,
    pub(crate) status: String,
    pub(crate) reason: String,
}

/// Reads a job's decisions in feed order.
pub(crate) async fn items(db: &Db, job_id: &str) -> Result<Vec<ItemRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT sequence, upn, session_date, session, code, minutes_late, comment, \
             source, recorded_by, recorded_at, mis_id, status, reason FROM writeback_items \
             WHERE job_id = $1 ORDER BY sequence",
        )
        .bind(job_id)
        .fetch_all(pool)
        .await
    })
}

/// One logged attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub(crate) attempt: i32,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
    pub(crate) outcome: String,
    pub(crate) http_status: i32,
    pub(crate) detail: String,
}

/// Reads a job's attempts, oldest first.
pub(crate) async fn attempts(db: &Db, job_id: &str) -> Result<Vec<AttemptRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT attempt, started_at, finished_at, outcome, http_status, detail \
             FROM writeback_attempts WHERE job_id = $1 ORDER BY attempt",
        )
        .bind(job_id)
        .fetch_all(pool)
        .await
    })
}

/// Returns the MIS id of a pupil at a school, from the sync service's mapping: the one
/// changed last when the pupil has several.
pub(crate) async fn mis_id_of(
    db: &Db,
    laestab: &str,
    upn: &str,
) -> Result<Option<String>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_scalar(
            "SELECT mis_id FROM pupil_ids WHERE laestab = $1 AND upn = $2 \
             ORDER BY updated_at DESC, mis_id LIMIT 1",
        )
        .bind(laestab)
        .bind(upn)
        .fetch_optional(pool)
        .await
    })
}

/// The reason a job cannot be queued again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RetryRejection {
    NotFound,
    Sending,
    AllAccepted,
}

/// Queues a job again with a fresh allowance of attempts. Its marks that were not accepted
/// are queued again, except those that a later decision for the same session replaced,
/// which become superseded. A queued job becomes due now.
pub(crate) async fn retry(
    db: &Db,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Result<(), RetryRejection>, sqlx::Error> {
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM writeback_jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(status) = status else {
            return Ok(Err(RetryRejection::NotFound));
        };
        if status == SENDING {
            return Ok(Err(RetryRejection::Sending));
        }
        let (open,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM writeback_items WHERE job_id = $1 AND status NOT IN ($2, $3)",
        )
        .bind(id)
        .bind(ACCEPTED)
        .bind(SUPERSEDED)
        .fetch_one(&mut *tx)
        .await?;
        if open == 0 {
            return Ok(Err(RetryRejection::AllAccepted));
        }
        sqlx::query(
            "UPDATE writeback_items SET status = $1, updated_at = $2, \
             reason = 'a later decision for the same session replaced it' \
             WHERE job_id = $3 AND status NOT IN ($4, $1) AND EXISTS (SELECT 1 FROM \
             writeback_items later WHERE later.laestab = writeback_items.laestab \
             AND later.upn = writeback_items.upn \
             AND later.session_date = writeback_items.session_date \
             AND later.session = writeback_items.session \
             AND later.sequence > writeback_items.sequence)",
        )
        .bind(SUPERSEDED)
        .bind(now)
        .bind(id)
        .bind(ACCEPTED)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE writeback_items SET status = $1, reason = '', updated_at = $2 \
             WHERE job_id = $3 AND status NOT IN ($4, $5)",
        )
        .bind(QUEUED)
        .bind(now)
        .bind(id)
        .bind(ACCEPTED)
        .bind(SUPERSEDED)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE writeback_jobs SET status = $1, attempt_base = attempts, \
             next_attempt_at = $2, last_error = '', updated_at = $2 WHERE id = $3",
        )
        .bind(QUEUED)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    })
}

/// A pulled mark to compare with what was written back for its session.
#[derive(Debug)]
pub(crate) struct EchoCheck<'a> {
    pub(crate) laestab: &'a str,
    pub(crate) mis_id: &'a str,
    pub(crate) date: &'a str,
    pub(crate) session: &'a str,
    pub(crate) code: &'a str,
    pub(crate) minutes_late: i32,
    /// The broker's `updated_at` of the pulled record.
    pub(crate) changed_at: DateTime<Utc>,
}

/// Returns true when a pulled mark is the MIS's copy of a decision rollcall wrote back, so
/// that the connector does not apply it as a new register version.
///
/// The first record after the write-back with the same code and minutes late is the echo,
/// and so is the same record read again (the same `updated_at`). The comment is not
/// compared, because an MIS may shorten it. A record with another value, or a later change,
/// is the MIS's own and ends the match. A record changed well before the write-back is older
/// than it, so it leaves the match in place.
pub(crate) async fn is_echo(db: &Db, check: &EchoCheck<'_>) -> Result<bool, sqlx::Error> {
    let stored: Option<EchoRow> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT code, minutes_late, sent_at, seen_changed_at FROM writeback_echoes \
             WHERE laestab = $1 AND mis_id = $2 AND session_date = $3 AND session = $4",
        )
        .bind(check.laestab)
        .bind(check.mis_id)
        .bind(check.date)
        .bind(check.session)
        .fetch_optional(pool)
        .await
    })?;
    let Some(EchoRow {
        code,
        minutes_late,
        sent_at,
        seen_changed_at: seen,
    }) = stored
    else {
        return Ok(false);
    };
    let decision = match seen {
        Some(seen) if seen == check.changed_at => EchoDecision::Echo,
        Some(_) => EchoDecision::Ended,
        None if check.changed_at < sent_at - ECHO_CLOCK_MARGIN => EchoDecision::Older,
        None if code == check.code && minutes_late == check.minutes_late => EchoDecision::FirstEcho,
        None => EchoDecision::Ended,
    };
    let key = (check.laestab, check.mis_id, check.date, check.session);
    match decision {
        EchoDecision::Echo => Ok(true),
        EchoDecision::Older => Ok(false),
        EchoDecision::FirstEcho => {
            with_db!(db, |pool| {
                sqlx::query(
                    "UPDATE writeback_echoes SET seen_changed_at = $1 WHERE laestab = $2 \
                     AND mis_id = $3 AND session_date = $4 AND session = $5",
                )
                .bind(check.changed_at)
                .bind(key.0)
                .bind(key.1)
                .bind(key.2)
                .bind(key.3)
                .execute(pool)
                .await
                .map(|_| true)
            })
        }
        EchoDecision::Ended => {
            with_db!(db, |pool| {
                sqlx::query(
                    "DELETE FROM writeback_echoes WHERE laestab = $1 AND mis_id = $2 \
                     AND session_date = $3 AND session = $4",
                )
                .bind(key.0)
                .bind(key.1)
                .bind(key.2)
                .bind(key.3)
                .execute(pool)
                .await
                .map(|_| false)
            })
        }
    }
}

/// A value written back, as stored.
#[derive(Debug, sqlx::FromRow)]
struct EchoRow {
    code: String,
    minutes_late: i32,
    sent_at: DateTime<Utc>,
    seen_changed_at: Option<DateTime<Utc>>,
}

enum EchoDecision {
    Echo,
    FirstEcho,
    Older,
    Ended,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_decision_of_each_session_wins() {
        let items = vec![
            (
                10,
                "A1".to_owned(),
                "2026-11-02".to_owned(),
                "AM".to_owned(),
            ),
            (
                11,
                "A1".to_owned(),
                "2026-11-02".to_owned(),
                "PM".to_owned(),
            ),
            (
                12,
                "A1".to_owned(),
                "2026-11-02".to_owned(),
                "AM".to_owned(),
            ),
            (
                13,
                "B2".to_owned(),
                "2026-11-02".to_owned(),
                "AM".to_owned(),
            ),
        ];
        let mut latest = latest_per_session(&items);
        latest.sort_unstable();
        assert_eq!(latest, [11, 12, 13]);
    }
}
