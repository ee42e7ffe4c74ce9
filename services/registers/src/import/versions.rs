//! Writing an import: its new mark versions, the effective marks moved to them and the record
//! of the import.
//!
//! On PostgreSQL this is one statement over arrays, which reads the feed's head and numbers the
//! versions after it. An import of one school's marks writes while holding the append lock
//! (see [`crate::APPEND_LOCK_KEY`]) that every such import waits for, so one round trip
//! there, rather than one a table, keeps that wait short. SQLite, which writes one
//! transaction at a time, takes multi-row `INSERT`s numbered when planning.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder, Sqlite, Transaction};

use super::appender::Appender;
use super::{CHUNK, ImportRequest, Version};
use crate::APPEND_LOCK_KEY;

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
pub(super) trait StoreImport: Sized {
    /// Stores the import's school, inserts every version into `marks`, points
    /// `effective_marks` at the effective ones and records the import in `imports`. Returns
    /// the feed's head that the versions were numbered after, which is later than the planned
    /// head when other schools' imports appended in between.
    async fn store_import(&mut self, new: &NewVersions<'_>) -> Result<i64, sqlx::Error>;

    /// Stores an import of marks alone, whose transaction holds its school's lock but not
    /// the append lock. On PostgreSQL with an appender, the versions are written in the
    /// appender's transaction beside other schools' imports, and this transaction, which then
    /// holds only locks, comes back to be committed. Returns the head as `store_import` does.
    async fn append_marks(
        self,
        appender: Option<&Appender>,
        new: &NewVersions<'_>,
    ) -> Result<(i64, Self), sqlx::Error>;
}

/// Columns of `marks` an import writes, for SQLite.
const MARK_COLUMNS: &str = "sequence, laestab, upn, session_date, session, code, minutes_late, \
     source, source_name, reason, recorded_by, recorded_by_position, recorded_at, received_at, \
     effective_when_stored, arrived_at, traceparent";

/// One import's rows, owned, in the columns of PostgreSQL's statement, so that an import can
/// be handed to the appender and written in the same transaction as other schools' imports.
pub(super) struct ImportRows {
    laestab: String,
    school_name: String,
    phase: &'static str,
    source: String,
    source_name: String,
    recorded_by: String,
    received_at: DateTime<Utc>,
    traceparent: Option<String>,
    request_id: String,
    marks_recorded: i32,
    /// The import's last feed position, counted from the head its versions follow.
    cursor_step: i64,
    results: Option<Vec<u8>>,
    /// Each version's feed position, counted from the head its versions follow.
    steps: Vec<i64>,
    upns: Vec<String>,
    dates: Vec<NaiveDate>,
    sessions: Vec<&'static str>,
    codes: Vec<String>,
    minutes_late: Vec<i32>,
    reasons: Vec<String>,
    recorded_at: Vec<DateTime<Utc>>,
    effective: Vec<bool>,
    arrived_at: Vec<Option<DateTime<Utc>>>,
}

impl ImportRows {
    /// Copies an import's versions and record out of its plan.
    pub(super) fn new(new: &NewVersions<'_>) -> Self {
        let request = new.request;
        let versions = new.versions;
        Self {
            laestab: request.laestab.clone(),
            school_name: request.school_name.clone(),
            phase: request.phase,
            source: request.source.as_str().to_owned(),
            source_name: request.source_name.clone(),
            recorded_by: request.recorded_by.clone(),
            received_at: new.received_at,
            traceparent: new.traceparent.clone(),
            request_id: request.request_id.clone(),
            marks_recorded: new.marks_recorded,
            cursor_step: new.planned_cursor - new.planned_head,
            results: new.results.clone(),
            steps: versions
                .iter()
                .map(|version| version.sequence - new.planned_head)
                .collect(),
            upns: versions.iter().map(|v| v.mark.upn.clone()).collect(),
            dates: versions.iter().map(|v| v.mark.date).collect(),
            sessions: versions.iter().map(|v| v.mark.session.as_str()).collect(),
            codes: versions.iter().map(|v| v.code.clone()).collect(),
            minutes_late: versions.iter().map(|v| v.minutes_late).collect(),
            reasons: versions.iter().map(|v| new.reason(v).to_owned()).collect(),
            recorded_at: versions.iter().map(|v| v.mark.recorded_at).collect(),
            effective: versions.iter().map(|v| v.effective).collect(),
            arrived_at: versions.iter().map(|v| v.mark.arrived_at).collect(),
        }
    }

    /// Returns how many feed positions the import takes.
    fn span(&self) -> i64 {
        self.steps
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.cursor_step)
    }

    /// Returns the import's request id, for logs.
    pub(super) fn request_id(&self) -> &str {
        &self.request_id
    }
}

/// Writes a group of imports in one statement: their schools, versions, effective marks and
/// records. The versions are numbered one import after another from the feed's head, read in
/// the statement and so after the append lock was taken. Returns, for each import, the head
/// its own versions follow.
///
/// Every part of a statement reads the same snapshot, and the reference checks on `marks`
/// and `effective_marks` run at its end, after all the inserts.
pub(super) async fn write_group(
    connection: &mut PgConnection,
    group: &[&ImportRows],
) -> Result<Vec<i64>, sqlx::Error> {
    let mut offsets = Vec::with_capacity(group.len());
    let mut offset = 0;
    for import in group {
        offsets.push(offset);
        offset += import.span();
    }
    let imports = 0..i32::try_from(group.len()).unwrap_or(i32::MAX);
    let rows: Vec<i32> = group
        .iter()
        .zip(imports.clone())
        .flat_map(|(import, index)| std::iter::repeat_n(index, import.steps.len()))
        .collect();
    let steps: Vec<i64> = group
        .iter()
        .zip(&offsets)
        .flat_map(|(import, offset)| import.steps.iter().map(move |step| offset + step))
        .collect();
    let cursor_steps: Vec<i64> = group
        .iter()
        .zip(&offsets)
        .map(|(import, offset)| offset + import.cursor_step)
        .collect();
    let received_at: Vec<_> = group.iter().map(|import| import.received_at).collect();
    let traceparent: Vec<_> = group
        .iter()
        .map(|import| import.traceparent.as_deref())
        .collect();
    let marks_recorded: Vec<_> = group.iter().map(|import| import.marks_recorded).collect();
    let results: Vec<_> = group
        .iter()
        .map(|import| import.results.as_deref())
        .collect();
    let per_import = |field: fn(&ImportRows) -> &str| -> Vec<&str> {
        group.iter().map(|import| field(import)).collect()
    };
    let per_version = |field: fn(&ImportRows) -> &[String]| -> Vec<&str> {
        group
            .iter()
            .flat_map(|import| field(import).iter().map(String::as_str))
            .collect()
    };

    let head: i64 = sqlx::query_scalar(
        "WITH head AS (SELECT COALESCE(MAX(sequence), 0) AS at FROM marks), \
         batch AS (SELECT * FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[], \
                     $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::text[], \
                     $10::text[], $11::int4[], $12::int8[], $13::bytea[]) \
                 AS batch (import, laestab, name, phase, source, source_name, recorded_by, \
                           received_at, traceparent, request_id, marks_recorded, cursor_step, \
                           results)), \
         new AS (SELECT * FROM UNNEST($14::int4[], $15::int8[], $16::text[], $17::date[], \
                     $18::text[], $19::text[], $20::int4[], $21::text[], $22::timestamptz[], \
                     $23::bool[], $24::timestamptz[]) \
                 AS row (import, step, upn, session_date, session, code, minutes_late, reason, \
                         recorded_at, effective, arrived_at)), \
         added_schools AS (INSERT INTO schools (laestab, name, phase, created_at) \
             SELECT laestab, name, phase, received_at FROM batch \
             ON CONFLICT (laestab) DO NOTHING), \
         renamed_schools AS (UPDATE schools SET name = batch.name, phase = batch.phase \
             FROM batch WHERE schools.laestab = batch.laestab \
                 AND (schools.name <> batch.name OR schools.phase <> batch.phase)), \
         stored AS (INSERT INTO marks (sequence, laestab, upn, session_date, session, code, \
                 minutes_late, source, source_name, reason, recorded_by, recorded_by_position, \
                 recorded_at, received_at, effective_when_stored, arrived_at, traceparent) \
             SELECT head.at + new.step, batch.laestab, new.upn, new.session_date, new.session, \
                    new.code, new.minutes_late, batch.source, batch.source_name, new.reason, \
                    batch.recorded_by, '', new.recorded_at, batch.received_at, new.effective, \
                    new.arrived_at, batch.traceparent \
             FROM head, new JOIN batch USING (import)), \
         moved AS (INSERT INTO effective_marks \
                 (laestab, upn, session_date, session, sequence, recorded_at) \
             SELECT batch.laestab, new.upn, new.session_date, new.session, head.at + new.step, \
                    new.recorded_at \
             FROM head, new JOIN batch USING (import) WHERE new.effective \
             ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
             SET sequence = excluded.sequence, recorded_at = excluded.recorded_at), \
         recorded AS (INSERT INTO imports \
                 (request_id, laestab, source_name, marks_recorded, feed_cursor, applied_at, \
                  results) \
             SELECT batch.request_id, batch.laestab, batch.source_name, batch.marks_recorded, \
                    head.at + batch.cursor_step, batch.received_at, batch.results \
             FROM head, batch) \
         SELECT at FROM head",
    )
    .bind(imports.collect::<Vec<i32>>())
    .bind(per_import(|import| &import.laestab))
    .bind(per_import(|import| &import.school_name))
    .bind(per_import(|import| import.phase))
    .bind(per_import(|import| &import.source))
    .bind(per_import(|import| &import.source_name))
    .bind(per_import(|import| &import.recorded_by))
    .bind(received_at)
    .bind(traceparent)
    .bind(per_import(|import| &import.request_id))
    .bind(marks_recorded)
    .bind(cursor_steps)
    .bind(results)
    .bind(rows)
    .bind(steps)
    .bind(per_version(|import| &import.upns))
    .bind(column(group, |import| &import.dates))
    .bind(column(group, |import| &import.sessions))
    .bind(per_version(|import| &import.codes))
    .bind(column(group, |import| &import.minutes_late))
    .bind(per_version(|import| &import.reasons))
    .bind(column(group, |import| &import.recorded_at))
    .bind(column(group, |import| &import.effective))
    .bind(column(group, |import| &import.arrived_at))
    .fetch_one(connection)
    .await?;
    Ok(offsets.into_iter().map(|offset| head + offset).collect())
}

/// Returns one column of every version of a group, import after import.
fn column<T: Copy>(group: &[&ImportRows], field: fn(&ImportRows) -> &Vec<T>) -> Vec<T> {
    group
        .iter()
        .flat_map(|import| field(import).iter().copied())
        .collect()
}

impl StoreImport for Transaction<'static, Postgres> {
    async fn store_import(&mut self, new: &NewVersions<'_>) -> Result<i64, sqlx::Error> {
        let rows = ImportRows::new(new);
        let heads = write_group(self, &[&rows]).await?;
        Ok(heads[0])
    }

    async fn append_marks(
        mut self,
        appender: Option<&Appender>,
        new: &NewVersions<'_>,
    ) -> Result<(i64, Self), sqlx::Error> {
        match appender {
            Some(appender) => appender.append(ImportRows::new(new), self).await,
            None => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(APPEND_LOCK_KEY)
                    .execute(&mut *self)
                    .await?;
                let head = self.store_import(new).await?;
                Ok((head, self))
            }
        }
    }
}

impl StoreImport for Transaction<'static, Sqlite> {
    async fn store_import(&mut self, new: &NewVersions<'_>) -> Result<i64, sqlx::Error> {
        let request = new.request;
        sqlx::query(UPSERT_SCHOOL)
            .bind(&request.laestab)
            .bind(&request.school_name)
            .bind(request.phase)
            .bind(new.received_at)
            .execute(&mut **self)
            .await?;
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

    async fn append_marks(
        mut self,
        _appender: Option<&Appender>,
        new: &NewVersions<'_>,
    ) -> Result<(i64, Self), sqlx::Error> {
        // The transaction began IMMEDIATE, so it already writes alone.
        let head = self.store_import(new).await?;
        Ok((head, self))
    }
}

/// Stores a school, rewriting its row only when its name or phase changed: nearly every
/// import repeats them.
pub(super) const UPSERT_SCHOOL: &str = "INSERT INTO schools (laestab, name, phase, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (laestab) DO UPDATE SET name = excluded.name, phase = excluded.phase \
     WHERE schools.name <> excluded.name OR schools.phase <> excluded.phase";
