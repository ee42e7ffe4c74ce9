//! Storing an import's new mark versions and moving the effective marks to them.
//!
//! PostgreSQL takes the versions, and the effective marks of sessions that had none, as `COPY`s
//! in CSV, with no bound parameter per field. It moves the effective marks of the other
//! sessions in one statement over arrays. SQLite takes multi-row `INSERT`s, because each
//! statement there runs in-process anyway.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};

use super::{CHUNK, Existing, ImportRequest, Version};

/// The versions of one import, with what every row of it shares.
pub(super) struct NewVersions<'a> {
    pub(super) request: &'a ImportRequest,
    pub(super) versions: &'a [Version<'a>],
    /// The registers' rows read to plan the import, among them every effective mark of its
    /// pupils and dates.
    pub(super) existing: &'a Existing,
    /// The reason stored for a mark sent without a comment.
    pub(super) imported: String,
    pub(super) received_at: DateTime<Utc>,
    pub(super) traceparent: Option<String>,
}

impl NewVersions<'_> {
    fn reason<'v>(&'v self, version: &'v Version<'_>) -> &'v str {
        if version.mark.comment.is_empty() {
            &self.imported
        } else {
            &version.mark.comment
        }
    }

    /// Returns the versions that become effective, in feed order. An import holds at most one
    /// mark a session (reading rejects a second), so no statement below sets a session twice.
    fn effective(&self) -> Vec<&Version<'_>> {
        self.versions
            .iter()
            .filter(|version| version.effective)
            .collect()
    }

    /// True when the version's session already had an effective mark.
    fn replaces_effective(&self, version: &Version<'_>) -> bool {
        let mark = version.mark;
        self.existing
            .effective
            .contains_key(&(mark.upn.clone(), mark.date, mark.session))
    }
}

/// Writes new mark versions inside an import's transaction.
pub(super) trait StoreVersions {
    /// Inserts every version into `marks` and points `effective_marks` at the effective ones.
    async fn store_versions(&mut self, new: &NewVersions<'_>) -> Result<(), sqlx::Error>;
}

/// Columns of `marks` an import writes, in the order of each CSV record.
const MARK_COLUMNS: &str = "sequence, laestab, upn, session_date, session, code, minutes_late, \
     source, source_name, reason, recorded_by, recorded_by_position, recorded_at, received_at, \
     effective_when_stored, arrived_at, traceparent";

/// Formats a time as PostgreSQL reads it, to the microsecond it stores.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Encodes the versions as CSV records for `COPY`. Every field is quoted, so an empty string
/// stays empty, and an absent arrival time or trace context is an empty field, which the
/// `COPY` reads as NULL through `FORCE_NULL`.
fn mark_records(new: &NewVersions<'_>) -> Result<Vec<u8>, sqlx::Error> {
    let request = new.request;
    let received_at = timestamp(new.received_at);
    let traceparent = new.traceparent.as_deref().unwrap_or("");
    let mut writer = csv_writer(new.versions.len() * 200);
    for version in new.versions {
        let mark = version.mark;
        let arrived_at = mark.arrived_at.map(timestamp).unwrap_or_default();
        writer
            .write_record([
                version.sequence.to_string().as_str(),
                &request.laestab,
                &mark.upn,
                &mark.date.to_string(),
                mark.session.as_str(),
                &version.code,
                &version.minutes_late.to_string(),
                request.source.as_str(),
                &request.source_name,
                new.reason(version),
                &request.recorded_by,
                "",
                &timestamp(mark.recorded_at),
                &received_at,
                if version.effective { "true" } else { "false" },
                &arrived_at,
                traceparent,
            ])
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    }
    finish(writer)
}

/// Encodes effective marks as CSV records for `COPY` into `effective_marks`.
fn effective_records(laestab: &str, versions: &[&Version<'_>]) -> Result<Vec<u8>, sqlx::Error> {
    let mut writer = csv_writer(versions.len() * 80);
    for version in versions {
        let mark = version.mark;
        writer
            .write_record([
                laestab,
                &mark.upn,
                &mark.date.to_string(),
                mark.session.as_str(),
                &version.sequence.to_string(),
                &timestamp(mark.recorded_at),
            ])
            .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    }
    finish(writer)
}

fn csv_writer(capacity: usize) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(false)
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(Vec::with_capacity(capacity))
}

fn finish(writer: csv::Writer<Vec<u8>>) -> Result<Vec<u8>, sqlx::Error> {
    writer
        .into_inner()
        .map_err(|error| sqlx::Error::Encode(Box::new(error.into_error())))
}

/// Sends `records` to a `COPY ... FROM STDIN` statement.
async fn copy_in(
    transaction: &mut Transaction<'static, Postgres>,
    statement: &str,
    records: Vec<u8>,
) -> Result<(), sqlx::Error> {
    let mut copy = transaction.copy_in_raw(statement).await?;
    copy.send(records).await?;
    copy.finish().await?;
    Ok(())
}

impl StoreVersions for Transaction<'static, Postgres> {
    async fn store_versions(&mut self, new: &NewVersions<'_>) -> Result<(), sqlx::Error> {
        if new.versions.is_empty() {
            return Ok(());
        }
        copy_in(
            self,
            &format!(
                "COPY marks ({MARK_COLUMNS}) FROM STDIN \
                 WITH (FORMAT csv, FORCE_NULL (arrived_at, traceparent))"
            ),
            mark_records(new)?,
        )
        .await?;

        // A session with no effective mark yet gets a new row. Should one exist after all,
        // the COPY fails on the primary key and the import rolls back.
        let (replacing, first): (Vec<&Version<'_>>, Vec<&Version<'_>>) = new
            .effective()
            .into_iter()
            .partition(|version| new.replaces_effective(version));
        if !first.is_empty() {
            copy_in(
                self,
                "COPY effective_marks (laestab, upn, session_date, session, sequence, recorded_at) \
                 FROM STDIN WITH (FORMAT csv)",
                effective_records(&new.request.laestab, &first)?,
            )
            .await?;
        }
        if replacing.is_empty() {
            return Ok(());
        }
        // The upsert also covers a row that the plan did not expect, so nothing is lost.
        let upns: Vec<&str> = replacing.iter().map(|v| v.mark.upn.as_str()).collect();
        let dates: Vec<NaiveDate> = replacing.iter().map(|v| v.mark.date).collect();
        let sessions: Vec<&str> = replacing.iter().map(|v| v.mark.session.as_str()).collect();
        let sequences: Vec<i64> = replacing.iter().map(|v| v.sequence).collect();
        let recorded_at: Vec<DateTime<Utc>> =
            replacing.iter().map(|v| v.mark.recorded_at).collect();
        sqlx::query(
            "INSERT INTO effective_marks (laestab, upn, session_date, session, sequence, recorded_at) \
             SELECT $1, row.* FROM UNNEST($2::text[], $3::date[], $4::text[], $5::int8[], \
                                          $6::timestamptz[]) AS row \
             ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
             SET sequence = excluded.sequence, recorded_at = excluded.recorded_at",
        )
        .bind(&new.request.laestab)
        .bind(upns)
        .bind(dates)
        .bind(sessions)
        .bind(sequences)
        .bind(recorded_at)
        .execute(&mut **self)
        .await?;
        Ok(())
    }
}

impl StoreVersions for Transaction<'static, Sqlite> {
    async fn store_versions(&mut self, new: &NewVersions<'_>) -> Result<(), sqlx::Error> {
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
        for chunk in new.effective().chunks(CHUNK) {
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
        Ok(())
    }
}
