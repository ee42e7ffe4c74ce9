//! Writing an import: its new mark versions, the effective marks moved to them and the record
//! of the import.
//!
//! On PostgreSQL this is one statement over arrays, which reads the feed's head and numbers the
//! versions after it. An import of one school's marks writes while holding the append lock
//! (see [`crate::APPEND_LOCK_KEY`]) that every such import waits for, so one round trip
//! there, rather than one a table, keeps that wait short. SQLite, which writes one
//! transaction at a time, takes multi-row `INSERT`s numbered when planning.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};

use super::{CHUNK, ImportRequest, Version};

/// The versions of one import, with what every row of it shares and the import's record.
pub(super) struct NewVersions<'a> {
    pub(super) request: &'a ImportRequest,
    pub(super) versions: &'a [Version<'a>],
    /// The feed's head when the versions were numbered in the plan.
    pub(super) planned_head: i64,
    /// The feed position of the import's last version, as planned.
    pub(super) planned_cursor: i64,
    pub(super) marks_recorded: i32,
    /// The reason stored for a mark sent without a comment.
    pub(super) imported: String,
    pub(super) received_at: DateTime<Utc>,
    pub(super) traceparent: Option<String>,
    /// The encoded response of a partial import, kept so that a replay returns its results.
    pub(super) results: Option<Vec<u8>>,
}

impl NewVersions<'_> {
    fn reason<'v>(&'v self, version: &'v Version<'_>) -> &'v str {
        if version.mark.comment.is_empty() {
            &self.imported
        } else {
            &version.mark.comment
        }
    }
}

/// Writes an import's versions inside its transaction.
pub(super) trait StoreImport {
    /// Inserts every version into `marks`, points `effective_marks` at the effective ones and
    /// records the import in `imports`. Returns the feed's head that the versions were
    /// numbered after, which is later than the planned head when other schools' imports
    /// appended in between.
    async fn store_import(&mut self, new: &NewVersions<'_>) -> Result<i64, sqlx::Error>;
}

/// Columns of `marks` an import writes, for SQLite.
const MARK_COLUMNS: &str = "sequence, laestab, upn, session_date, session, code, minutes_late, \
     source, source_name, reason, recorded_by, recorded_by_position, recorded_at, received_at, \
     effective_when_stored, arrived_at, traceparent";

impl StoreImport for Transaction<'static, Postgres> {
    async fn store_import(&mut self, new: &NewVersions<'_>) -> Result<i64, sqlx::Error> {
        let request = new.request;
        let versions = new.versions;
        let steps: Vec<i64> = versions
            .iter()
            .map(|version| version.sequence - new.planned_head)
            .collect();
        let upns: Vec<&str> = versions.iter().map(|v| v.mark.upn.as_str()).collect();
        let dates: Vec<NaiveDate> = versions.iter().map(|v| v.mark.date).collect();
        let sessions: Vec<&str> = versions.iter().map(|v| v.mark.session.as_str()).collect();
        let codes: Vec<&str> = versions.iter().map(|v| v.code.as_str()).collect();
        let minutes_late: Vec<i32> = versions.iter().map(|v| v.minutes_late).collect();
        let reasons: Vec<&str> = versions.iter().map(|v| new.reason(v)).collect();
        let recorded_at: Vec<DateTime<Utc>> = versions.iter().map(|v| v.mark.recorded_at).collect();
        let effective: Vec<bool> = versions.iter().map(|v| v.effective).collect();
        let arrived_at: Vec<Option<DateTime<Utc>>> =
            versions.iter().map(|v| v.mark.arrived_at).collect();

        // The head is read in this statement, so after the append lock was taken. Every part
        // of a statement reads the same snapshot, and the foreign key from effective_marks to
        // marks is checked at its end, after both inserts.
        sqlx::query_scalar(
            "WITH head AS (SELECT COALESCE(MAX(sequence), 0) AS at FROM marks), \
             new AS (SELECT * FROM UNNEST($7::int8[], $8::text[], $9::date[], $10::text[], \
                         $11::text[], $12::int4[], $13::text[], $14::timestamptz[], $15::bool[], \
                         $16::timestamptz[]) \
                     AS row (step, upn, session_date, session, code, minutes_late, reason, \
                             recorded_at, effective, arrived_at)), \
             stored AS (INSERT INTO marks (sequence, laestab, upn, session_date, session, code, \
                     minutes_late, source, source_name, reason, recorded_by, \
                     recorded_by_position, recorded_at, received_at, effective_when_stored, \
                     arrived_at, traceparent) \
                 SELECT head.at + new.step, $1, new.upn, new.session_date, new.session, new.code, \
                        new.minutes_late, $2, $3, new.reason, $4, '', new.recorded_at, $5, \
                        new.effective, new.arrived_at, $6 \
                 FROM head, new), \
             moved AS (INSERT INTO effective_marks \
                     (laestab, upn, session_date, session, sequence, recorded_at) \
                 SELECT $1, new.upn, new.session_date, new.session, head.at + new.step, \
                        new.recorded_at \
                 FROM head, new WHERE new.effective \
                 ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
                 SET sequence = excluded.sequence, recorded_at = excluded.recorded_at), \
             recorded AS (INSERT INTO imports \
                     (request_id, laestab, source_name, marks_recorded, feed_cursor, applied_at, \
                      results) \
                 SELECT $17, $1, $3, $18, head.at + $19, $5, $20 FROM head) \
             SELECT at FROM head",
        )
        .bind(&request.laestab)
        .bind(request.source.as_str())
        .bind(&request.source_name)
        .bind(&request.recorded_by)
        .bind(new.received_at)
        .bind(&new.traceparent)
        .bind(steps)
        .bind(upns)
        .bind(dates)
        .bind(sessions)
        .bind(codes)
        .bind(minutes_late)
        .bind(reasons)
        .bind(recorded_at)
        .bind(effective)
        .bind(arrived_at)
        .bind(&request.request_id)
        .bind(new.marks_recorded)
        .bind(new.planned_cursor - new.planned_head)
        .bind(&new.results)
        .fetch_one(&mut **self)
        .await
    }
}

impl StoreImport for Transaction<'static, Sqlite> {
    async fn store_import(&mut self, new: &NewVersions<'_>) -> Result<i64, sqlx::Error> {
        let request = new.request;
        for chunk in new.versions.chunks(CHUNK) {
            let mut insert = QueryBuilder::new(format!("INSERT INTO marks ({MARK_COLUMNS}) "));
            insert.push_values(chunk, |mut row, version| {
                let mark = version.mark;
                row.push_bind(version.sequence)
                    .push_bind(request.laestab.clone())
                    .push_bind(mark.upn.clone())
                    .push_bind(mark.date)
                    .push_bind(mark.session.as_str())
                    .push_bind(version.code.clone())
                    .push_bind(version.minutes_late)
                    .push_bind(request.source.as_str())
                    .push_bind(request.source_name.clone())
                    .push_bind(new.reason(version).to_owned())
                    .push_bind(request.recorded_by.clone())
                    .push_bind("")
                    .push_bind(mark.recorded_at)
                    .push_bind(new.received_at)
                    .push_bind(version.effective)
                    .push_bind(mark.arrived_at)
                    .push_bind(new.traceparent.clone());
            });
            insert.build().execute(&mut **self).await?;
        }

        let effective: Vec<&Version<'_>> = new.versions.iter().filter(|v| v.effective).collect();
        for chunk in effective.chunks(CHUNK) {
            let mut upsert = QueryBuilder::new(
                "INSERT INTO effective_marks (laestab, upn, session_date, session, sequence, recorded_at) ",
            );
            upsert.push_values(chunk, |mut row, version| {
                let mark = version.mark;
                row.push_bind(request.laestab.clone())
                    .push_bind(mark.upn.clone())
                    .push_bind(mark.date)
                    .push_bind(mark.session.as_str())
                    .push_bind(version.sequence)
                    .push_bind(mark.recorded_at);
            });
            upsert.push(
                " ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
                 SET sequence = excluded.sequence, recorded_at = excluded.recorded_at",
            );
            upsert.build().execute(&mut **self).await?;
        }

        sqlx::query(
            "INSERT INTO imports (request_id, laestab, source_name, marks_recorded, feed_cursor, \
             applied_at, results) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&request.request_id)
        .bind(&request.laestab)
        .bind(&request.source_name)
        .bind(new.marks_recorded)
        .bind(new.planned_cursor)
        .bind(new.received_at)
        .bind(&new.results)
        .execute(&mut **self)
        .await?;
        Ok(new.planned_head)
    }
}
