//! Storage of the connectors: each school's watermarks and run lease, the runs, where each
//! broker mark record is, and the deletions waiting for review.

use chrono::{DateTime, Utc};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};

use crate::MIS_ADAPTER_LOCK_KEY;
use crate::connector::mapping::Cursor;

pub(crate) const RUNNING: &str = "running";
pub(crate) const SUCCEEDED: &str = "succeeded";
pub(crate) const FAILED: &str = "failed";

pub(crate) const SCHEDULED: &str = "scheduled";
pub(crate) const ON_DEMAND: &str = "on_demand";

/// The lists a connector reads, each with its own watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Students,
    Marks,
    Deletions,
}

impl Resource {
    /// Returns the list's path under the school.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Students => "students",
            Self::Marks => "attendance/session",
            Self::Deletions => "deletions",
        }
    }

    /// Returns the prefix of the list's columns in `connector_state`.
    fn column(self) -> &'static str {
        match self {
            Self::Students => "students",
            Self::Marks => "marks",
            Self::Deletions => "deletions",
        }
    }
}

/// One school's row in `connector_state`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StateRow {
    pub(crate) students_after: Option<DateTime<Utc>>,
    pub(crate) students_page: i32,
    pub(crate) marks_after: Option<DateTime<Utc>>,
    pub(crate) marks_page: i32,
    pub(crate) deletions_after: Option<DateTime<Utc>>,
    pub(crate) deletions_page: i32,
    pub(crate) running_run_id: Option<String>,
    pub(crate) running_until: Option<DateTime<Utc>>,
    pub(crate) not_before: Option<DateTime<Utc>>,
    pub(crate) writeback_enabled_at: Option<DateTime<Utc>>,
}

impl StateRow {
    /// Returns the cursor a list resumes from.
    pub(crate) fn cursor(&self, resource: Resource) -> Cursor {
        let (after, page) = match resource {
            Resource::Students => (self.students_after, self.students_page),
            Resource::Marks => (self.marks_after, self.marks_page),
            Resource::Deletions => (self.deletions_after, self.deletions_page),
        };
        Cursor {
            after,
            page: u32::try_from(page).unwrap_or(1).max(1),
        }
    }

    /// Returns true while a run's lease has not run out.
    pub(crate) fn is_running(&self, now: DateTime<Utc>) -> bool {
        self.running_run_id.is_some() && self.running_until.is_some_and(|until| until > now)
    }
}

const STATE_COLUMNS: &str = "laestab, students_after, students_page, marks_after, marks_page, \
                             deletions_after, deletions_page, running_run_id, running_until, \
                             not_before, writeback_enabled_at";

/// Creates the state of each configured school that has none, and records when write-back
/// was turned on (or clears it when it is off), so that only decisions made from then on are
/// written back.
pub(crate) async fn prepare_schools(
    db: &Db,
    schools: &[(String, bool)],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        for (laestab, write_back) in schools {
            sqlx::query(
                "INSERT INTO connector_state (laestab, updated_at) VALUES ($1, $2) \
                 ON CONFLICT (laestab) DO NOTHING",
            )
            .bind(laestab)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let enabled = if *write_back {
                "UPDATE connector_state SET writeback_enabled_at = $2, updated_at = $2 \
                 WHERE laestab = $1 AND writeback_enabled_at IS NULL"
            } else {
                "UPDATE connector_state SET writeback_enabled_at = NULL, updated_at = $2 \
                 WHERE laestab = $1 AND writeback_enabled_at IS NOT NULL"
            };
            sqlx::query(enabled)
                .bind(laestab)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    })
}

/// Reads one school's state.
pub(crate) async fn state(db: &Db, laestab: &str) -> Result<Option<StateRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STATE_COLUMNS} FROM connector_state WHERE laestab = $1"
        )))
        .bind(laestab)
        .fetch_optional(pool)
        .await
    })
}

/// Takes the run lease of a school and records a new run, returning the run's id, or
/// returns the state of the school when another run holds the lease.
pub(crate) async fn start_run(
    db: &Db,
    laestab: &str,
    trigger: &str,
    full: bool,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Result<String, StateRow>, sqlx::Error> {
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        let current: StateRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STATE_COLUMNS} FROM connector_state WHERE laestab = $1"
        )))
        .bind(laestab)
        .fetch_one(&mut *tx)
        .await?;
        if current.is_running(now) {
            return Ok(Err(current));
        }
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM connector_runs")
            .fetch_one(&mut *tx)
            .await?;
        let id = format!("run-{:08}", count + 1);
        sqlx::query(
            "INSERT INTO connector_runs (id, laestab, run_trigger, status, full_read, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(laestab)
        .bind(trigger)
        .bind(RUNNING)
        .bind(full)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // A run that a stopped server left behind ends as failed.
        if let Some(abandoned) = &current.running_run_id {
            sqlx::query(
                "UPDATE connector_runs SET status = $1, finished_at = $2, \
                 error = 'interrupted: the server running it stopped before it ended' \
                 WHERE id = $3 AND status = $4",
            )
            .bind(FAILED)
            .bind(now)
            .bind(abandoned)
            .bind(RUNNING)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE connector_state SET running_run_id = $1, running_until = $2, updated_at = $3 \
             WHERE laestab = $4",
        )
        .bind(&id)
        .bind(lease_until)
        .bind(now)
        .bind(laestab)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(id))
    })
}

/// Extends the lease of a run that still holds it, and returns whether it does.
pub(crate) async fn renew_lease(
    db: &Db,
    laestab: &str,
    run_id: &str,
    until: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let changed = with_db!(db, |pool| {
        sqlx::query(
            "UPDATE connector_state SET running_until = $1 \
             WHERE laestab = $2 AND running_run_id = $3",
        )
        .bind(until)
        .bind(laestab)
        .bind(run_id)
        .execute(pool)
        .await
        .map(|result| result.rows_affected())
    })?;
    Ok(changed == 1)
}

/// Stores where a list resumes, while the run still holds the lease, and returns whether it
/// does.
pub(crate) async fn save_cursor(
    db: &Db,
    laestab: &str,
    run_id: &str,
    resource: Resource,
    cursor: Cursor,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let column = resource.column();
    let sql = format!(
        "UPDATE connector_state SET {column}_after = $1, {column}_page = $2, updated_at = $3 \
         WHERE laestab = $4 AND running_run_id = $5"
    );
    let page = i32::try_from(cursor.page).unwrap_or(i32::MAX);
    let changed = with_db!(db, |pool| {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cursor.after)
            .bind(page)
            .bind(now)
            .bind(laestab)
            .bind(run_id)
            .execute(pool)
            .await
            .map(|result| result.rows_affected())
    })?;
    Ok(changed == 1)
}

/// The counts and outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunTotals {
    pub(crate) requests: i32,
    pub(crate) retries: i32,
    pub(crate) pages: i32,
    pub(crate) pupils_applied: i32,
    pub(crate) pupils_unchanged: i32,
    pub(crate) pupils_rejected: i32,
    pub(crate) marks_applied: i32,
    pub(crate) marks_unchanged: i32,
    pub(crate) marks_rejected: i32,
    pub(crate) marks_echoed: i32,
    pub(crate) deletions: i32,
}

/// Records how a run ended and gives up its lease, setting when the next run may start.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish_run(
    db: &Db,
    laestab: &str,
    run_id: &str,
    status: &str,
    totals: &RunTotals,
    error: &str,
    rejections_json: &str,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        sqlx::query(
            "UPDATE connector_runs SET status = $1, finished_at = $2, requests = $3, \
             retries = $4, pages = $5, pupils_applied = $6, pupils_unchanged = $7, \
             pupils_rejected = $8, marks_applied = $9, marks_unchanged = $10, \
             marks_rejected = $11, marks_echoed = $12, deletions = $13, error = $14, \
             rejections = $15 WHERE id = $16",
        )
        .bind(status)
        .bind(now)
        .bind(totals.requests)
        .bind(totals.retries)
        .bind(totals.pages)
        .bind(totals.pupils_applied)
        .bind(totals.pupils_unchanged)
        .bind(totals.pupils_rejected)
        .bind(totals.marks_applied)
        .bind(totals.marks_unchanged)
        .bind(totals.marks_rejected)
        .bind(totals.marks_echoed)
        .bind(totals.deletions)
        .bind(error)
        .bind(rejections_json)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE connector_state SET running_run_id = NULL, running_until = NULL, \
             not_before = $1, updated_at = $2 WHERE laestab = $3 AND running_run_id = $4",
        )
        .bind(not_before)
        .bind(now)
        .bind(laestab)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    })
}

/// A run as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RunRow {
    pub(crate) id: String,
    pub(crate) laestab: String,
    pub(crate) run_trigger: String,
    pub(crate) status: String,
    pub(crate) full_read: bool,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) requests: i32,
    pub(crate) retries: i32,
    pub(crate) pages: i32,
    pub(crate) pupils_applied: i32,
    pub(crate) pupils_unchanged: i32,
    pub(crate) pupils_rejected: i32,
    pub(crate) marks_applied: i32,
    pub(crate) marks_unchanged: i32,
    pub(crate) marks_rejected: i32,
    pub(crate) marks_echoed: i32,
    pub(crate) deletions: i32,
    pub(crate) error: String,
    pub(crate) rejections: String,
}

const RUN_COLUMNS: &str = "id, laestab, run_trigger, status, full_read, started_at, finished_at, \
                           requests, retries, pages, pupils_applied, pupils_unchanged, \
                           pupils_rejected, marks_applied, marks_unchanged, marks_rejected, \
                           marks_echoed, deletions, error, rejections";

/// Reads one run.
pub(crate) async fn run(db: &Db, id: &str) -> Result<Option<RunRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM connector_runs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await
    })
}

/// Lists a school's runs, newest first, before the run `before_id` when it is not empty.
pub(crate) async fn runs(
    db: &Db,
    laestab: &str,
    before_id: &str,
    limit: i64,
) -> Result<Vec<RunRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM connector_runs WHERE laestab = $1 \
             AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
        )))
        .bind(laestab)
        .bind(before_id)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}

/// Remembers where the broker's mark records are, by record id.
pub(crate) async fn record_mark_ids(
    db: &Db,
    laestab: &str,
    marks: &[(String, String, String, String)],
) -> Result<(), sqlx::Error> {
    if marks.is_empty() {
        return Ok(());
    }
    with_db!(db, |pool| {
        let mut tx = pool.begin().await?;
        for (record_id, mis_id, date, session) in marks {
            sqlx::query(
                "INSERT INTO connector_mark_ids (laestab, record_id, mis_id, session_date, session) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (laestab, record_id) DO UPDATE SET \
                 mis_id = excluded.mis_id, session_date = excluded.session_date, \
                 session = excluded.session",
            )
            .bind(laestab)
            .bind(record_id)
            .bind(mis_id)
            .bind(date)
            .bind(session)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    })
}

/// Returns the student, date and session of a broker mark record seen before.
pub(crate) async fn mark_location(
    db: &Db,
    laestab: &str,
    record_id: &str,
) -> Result<Option<(String, String, String)>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT mis_id, session_date, session FROM connector_mark_ids \
             WHERE laestab = $1 AND record_id = $2",
        )
        .bind(laestab)
        .bind(record_id)
        .fetch_optional(pool)
        .await
    })
}

/// A deletion read from the broker.
#[derive(Debug, Clone)]
pub(crate) struct NewDeletion {
    pub(crate) record_type: String,
    pub(crate) record_id: String,
    pub(crate) deleted_at: DateTime<Utc>,
    pub(crate) restored_at: Option<DateTime<Utc>>,
}

/// The outcome of applying a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppliedDeletion {
    pub(crate) action: &'static str,
    pub(crate) mis_id: String,
    pub(crate) upn: String,
}

/// Applies one deletion and records it for review, in one transaction.
///
/// A deleted student's MIS id stops naming the pupil: the mapping is removed, so later marks
/// for that id are rejected and no decision is written back to it. The pupil stays on roll,
/// because only a recorded leaving with its ground removes a pupil from the admission
/// register. A deleted mark is recorded only, because the register keeps every version.
/// A restored record is marked `restored`; the student's next pull maps its id again.
pub(crate) async fn apply_deletion(
    db: &Db,
    laestab: &str,
    deletion: &NewDeletion,
    location: Option<(String, String, String)>,
    now: DateTime<Utc>,
) -> Result<AppliedDeletion, sqlx::Error> {
    let is_student = deletion.record_type == crate::connector::run::STUDENT_TYPE;
    with_db!(db, |pool| {
        let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
        let mis_id = if is_student {
            deletion.record_id.clone()
        } else {
            location
                .as_ref()
                .map(|(mis_id, _, _)| mis_id.clone())
                .unwrap_or_default()
        };
        let upn: Option<String> =
            sqlx::query_scalar("SELECT upn FROM pupil_ids WHERE laestab = $1 AND mis_id = $2")
                .bind(laestab)
                .bind(&mis_id)
                .fetch_optional(&mut *tx)
                .await?;
        let earlier: Option<(String,)> = sqlx::query_as(
            "SELECT upn FROM connector_deletions \
             WHERE laestab = $1 AND record_type = $2 AND record_id = $3",
        )
        .bind(laestab)
        .bind(&deletion.record_type)
        .bind(&deletion.record_id)
        .fetch_optional(&mut *tx)
        .await?;
        let upn = upn
            .or_else(|| earlier.map(|(upn,)| upn))
            .unwrap_or_default();
        let action = match (is_student, deletion.restored_at.is_some()) {
            (_, true) => "restored",
            (true, false) => {
                let removed =
                    sqlx::query("DELETE FROM pupil_ids WHERE laestab = $1 AND mis_id = $2")
                        .bind(laestab)
                        .bind(&mis_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if removed > 0 {
                    "unmapped"
                } else {
                    "not_mapped"
                }
            }
            (false, false) => "kept",
        };
        let (date, session) = location
            .map(|(_, date, session)| (date, session))
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO connector_deletions (laestab, record_type, record_id, mis_id, upn, \
             session_date, session, deleted_at, restored_at, action, seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (laestab, record_type, record_id) DO UPDATE SET \
             mis_id = CASE WHEN excluded.mis_id = '' THEN connector_deletions.mis_id \
             ELSE excluded.mis_id END, upn = excluded.upn, deleted_at = excluded.deleted_at, \
             restored_at = excluded.restored_at, action = excluded.action",
        )
        .bind(laestab)
        .bind(&deletion.record_type)
        .bind(&deletion.record_id)
        .bind(&mis_id)
        .bind(&upn)
        .bind(&date)
        .bind(&session)
        .bind(deletion.deleted_at)
        .bind(deletion.restored_at)
        .bind(action)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AppliedDeletion {
            action,
            mis_id,
            upn,
        })
    })
}

/// A deletion as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct DeletionRow {
    pub(crate) laestab: String,
    pub(crate) record_type: String,
    pub(crate) record_id: String,
    pub(crate) mis_id: String,
    pub(crate) upn: String,
    pub(crate) session_date: String,
    pub(crate) session: String,
    pub(crate) deleted_at: DateTime<Utc>,
    pub(crate) restored_at: Option<DateTime<Utc>>,
    pub(crate) action: String,
    pub(crate) seen_at: DateTime<Utc>,
}

/// Lists a school's deletions, newest first, from `offset`.
pub(crate) async fn deletions(
    db: &Db,
    laestab: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<DeletionRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT laestab, record_type, record_id, mis_id, upn, session_date, session, \
             deleted_at, restored_at, action, seen_at FROM connector_deletions \
             WHERE laestab = $1 ORDER BY deleted_at DESC, record_type, record_id \
             LIMIT $2 OFFSET $3",
        )
        .bind(laestab)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await
    })
}

/// Counts a school's deletions that are not restored.
pub(crate) async fn deletions_to_review(db: &Db, laestab: &str) -> Result<i64, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM connector_deletions WHERE laestab = $1 AND restored_at IS NULL",
        )
        .bind(laestab)
        .fetch_one(pool)
        .await
    })
}
