//! AmendMark: a new version of one session's mark, made by a named person for a reason.

use chrono::{NaiveDate, Utc};
use rollcall_api::convert::source_from_proto;
use rollcall_api::registers::v1::AmendMarkRequest;
use rollcall_domain::age::is_compulsory_school_age;
use rollcall_domain::{MarkSource, Session, SessionDate, Upn, codes};
use rollcall_runtime::grpc::{invalid_argument, laestab, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::FEED_LOCK_KEY;
use crate::calendar::{self, load_calendar_rows};
use crate::convert::{MarkRow, required_date, session};
use crate::reports::{REPORT_COLUMNS, ReportRow};
use crate::store::MARK_COLUMNS;

/// A checked amendment.
#[derive(Debug)]
pub(crate) struct Amendment {
    request_id: String,
    upn: String,
    laestab: Option<String>,
    date: NaiveDate,
    session: Session,
    code: String,
    minutes_late: i32,
    reason: String,
    recorded_by: String,
    position: String,
    source: MarkSource,
    absence_report_id: Option<String>,
}

/// The result of an amendment.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) mark: MarkRow,
    pub(crate) previous: Option<MarkRow>,
    pub(crate) unchanged: bool,
}

fn required(field: &str, value: &str, problem: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(invalid_argument(field, value, problem))
    } else {
        Ok(trimmed.to_owned())
    }
}

impl Amendment {
    /// Checks every field that can be checked without the database.
    pub(crate) fn check(request: &AmendMarkRequest) -> Result<Self, Status> {
        let upn = Upn::parse(&request.upn)
            .map_err(|error| invalid_argument("upn", &request.upn, error.to_string()))?;
        let date = required_date("date", &request.date)?;
        let session = session("session", request.session)?;
        let code = request.code.trim();
        codes::lookup_on(code, date)
            .map_err(|error| invalid_argument("code", &request.code, error.to_string()))?;
        codes::check_minutes_late(code, request.minutes_late).map_err(|problem| {
            invalid_argument("minutes_late", &request.minutes_late.to_string(), problem)
        })?;
        let school = if request.laestab.trim().is_empty() {
            None
        } else {
            Some(laestab("laestab", &request.laestab)?)
        };
        Ok(Self {
            request_id: request.request_id.trim().to_owned(),
            upn: upn.to_string(),
            laestab: school,
            date,
            session,
            code: code.to_owned(),
            minutes_late: request.minutes_late,
            reason: required("reason", &request.reason, "an amendment needs a reason")?,
            recorded_by: required(
                "recorded_by",
                &request.recorded_by,
                "an amendment needs the name of the person making it",
            )?,
            position: required(
                "recorded_by_position",
                &request.recorded_by_position,
                "an amendment needs the position of the person making it",
            )?,
            source: source_from_proto(request.source).unwrap_or(MarkSource::Staff),
            absence_report_id: Some(request.absence_report_id.trim().to_owned())
                .filter(|id| !id.is_empty()),
        })
    }

    /// Returns the pupil's UPN.
    pub(crate) fn upn(&self) -> &str {
        &self.upn
    }

    /// Returns the session date.
    pub(crate) fn date(&self) -> NaiveDate {
        self.date
    }
}

/// Records the amendment as a new version in one transaction.
pub(crate) async fn apply(db: &Db, amendment: &Amendment) -> Result<Outcome, Status> {
    let store_error = |error| storage_error("amending a mark", error);
    let by_sequence = format!("SELECT {MARK_COLUMNS} FROM marks m WHERE m.sequence = $1");
    let effective = format!(
        "SELECT {MARK_COLUMNS} FROM effective_marks e JOIN marks m ON m.sequence = e.sequence \
         WHERE e.laestab = $1 AND e.upn = $2 AND e.session_date = $3 AND e.session = $4"
    );
    let now = Utc::now();
    let date = amendment.date;
    let session = amendment.session.as_str();

    with_db!(db, |pool| {
        let mut tx = pool.begin_write(FEED_LOCK_KEY).await.map_err(store_error)?;

        if !amendment.request_id.is_empty() {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT sequence FROM amendments WHERE request_id = $1")
                    .bind(&amendment.request_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
            if let Some(sequence) = done {
                let mark: MarkRow = sqlx::query_as(sqlx::AssertSqlSafe(by_sequence.clone()))
                    .bind(sequence)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(store_error)?;
                return Ok(Outcome {
                    mark,
                    previous: None,
                    unchanged: true,
                });
            }
        }

        let school: Option<String> = sqlx::query_scalar(
            "SELECT laestab FROM enrolments \
             WHERE upn = $1 AND ($2 = '' OR laestab = $2) \
               AND admission_date <= $3 AND (leaving_date IS NULL OR leaving_date >= $3) \
             ORDER BY admission_date DESC LIMIT 1",
        )
        .bind(&amendment.upn)
        .bind(amendment.laestab.as_deref().unwrap_or_default())
        .bind(date)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(school) = school else {
            let where_ = amendment.laestab.as_deref().map_or_else(
                || "any school".to_owned(),
                |laestab| format!("school {laestab}"),
            );
            return Err(invalid_argument(
                "upn",
                &amendment.upn,
                format!("no pupil with this UPN is on roll at {where_} on {date}"),
            ));
        };

        if let Some(id) = &amendment.absence_report_id {
            let report: Option<ReportRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {REPORT_COLUMNS} FROM absence_reports WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            let at = SessionDate {
                date,
                session: amendment.session,
            };
            let covers = report.as_ref().is_some_and(|report| {
                let (first, last) = report.span();
                report.upn == amendment.upn && report.laestab == school && first <= at && at <= last
            });
            if !covers {
                return Err(invalid_argument(
                    "absence_report_id",
                    id,
                    format!(
                        "no absence report with this id covers pupil {} at school {school} on {date} {}",
                        amendment.upn, amendment.session
                    ),
                ));
            }
        }

        if amendment.code == "X" {
            let born: Option<NaiveDate> =
                sqlx::query_scalar("SELECT date_of_birth FROM pupils WHERE upn = $1")
                    .bind(&amendment.upn)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
            if born.is_some_and(|born| is_compulsory_school_age(born, date)) {
                return Err(invalid_argument(
                    "code",
                    "X",
                    format!(
                        "X is only for pupils not of compulsory school age, and pupil {} is of \
                         compulsory school age on {date}",
                        amendment.upn
                    ),
                ));
            }
        }

        let rows = load_calendar_rows!(tx, &school, store_error);
        if let Some(calendar) = rows.map(calendar::from_rows).transpose()? {
            let at = SessionDate {
                date,
                session: amendment.session,
            };
            if let Some(problem) = calendar::check_mark(&calendar, at, &amendment.code) {
                return Err(invalid_argument("date", &date.to_string(), problem));
            }
        }

        let previous: Option<MarkRow> = sqlx::query_as(sqlx::AssertSqlSafe(effective.clone()))
            .bind(&school)
            .bind(&amendment.upn)
            .bind(date)
            .bind(session)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some(current) = &previous
            && current.code == amendment.code
            && current.minutes_late == amendment.minutes_late
        {
            return Ok(Outcome {
                mark: current.clone(),
                previous: None,
                unchanged: true,
            });
        }

        let sequence: i64 =
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(sequence), 0) FROM marks")
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?
                + 1;
        // The amendment is taken now, so it is later than any version before it and becomes
        // the effective mark.
        sqlx::query(
            "INSERT INTO marks (sequence, laestab, upn, session_date, session, code, minutes_late, \
             source, source_name, reason, recorded_by, recorded_by_position, recorded_at, \
             received_at, effective_when_stored, absence_report_id, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, TRUE, $14, $15)",
        )
        .bind(sequence)
        .bind(&school)
        .bind(&amendment.upn)
        .bind(date)
        .bind(session)
        .bind(&amendment.code)
        .bind(amendment.minutes_late)
        .bind(amendment.source.as_str())
        .bind("amendment")
        .bind(&amendment.reason)
        .bind(&amendment.recorded_by)
        .bind(&amendment.position)
        .bind(now)
        .bind(&amendment.absence_report_id)
        .bind(rollcall_runtime::telemetry::current_traceparent())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        sqlx::query(
            "INSERT INTO effective_marks (laestab, upn, session_date, session, sequence, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
             SET sequence = excluded.sequence, recorded_at = excluded.recorded_at",
        )
        .bind(&school)
        .bind(&amendment.upn)
        .bind(date)
        .bind(session)
        .bind(sequence)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if !amendment.request_id.is_empty() {
            sqlx::query("INSERT INTO amendments (request_id, sequence) VALUES ($1, $2)")
                .bind(&amendment.request_id)
                .bind(sequence)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        let mark: MarkRow = sqlx::query_as(sqlx::AssertSqlSafe(by_sequence.clone()))
            .bind(sequence)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Outcome {
            mark,
            previous,
            unchanged: false,
        })
    })
}
