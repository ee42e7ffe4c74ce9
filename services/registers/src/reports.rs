//! Absences reported by parents and carers. A report never sets a code on its own: the
//! decision that follows is an amendment that links to the report.

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::convert::{from_timestamp, session_from_proto, timestamp};
use rollcall_api::registers::v1::{AbsenceReport, ReportChannel};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_domain::{Session, SessionDate, Upn};
use rollcall_runtime::grpc::{invalid_argument, laestab, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::convert::required_date;

/// The advisory lock that serialises report writers on PostgreSQL, so report ids are unique.
const REPORTS_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::REGISTERS_REPORTS;

/// A stored report.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ReportRow {
    pub(crate) id: String,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) channel: String,
    pub(crate) reported_by: String,
    pub(crate) relationship: String,
    pub(crate) reason: String,
    pub(crate) reported_at: DateTime<Utc>,
    pub(crate) first_date: NaiveDate,
    pub(crate) first_session: String,
    pub(crate) last_date: NaiveDate,
    pub(crate) last_session: String,
}

/// Selects reports; callers add the conditions.
pub(crate) const REPORT_COLUMNS: &str = "id, laestab, upn, channel, reported_by, relationship, \
     reason, reported_at, first_date, first_session, last_date, last_session";

impl ReportRow {
    /// Returns the first and last sessions the report covers.
    pub(crate) fn span(&self) -> (SessionDate, SessionDate) {
        let session = |name: &str| name.parse::<Session>().unwrap_or(Session::Am);
        (
            SessionDate {
                date: self.first_date,
                session: session(&self.first_session),
            },
            SessionDate {
                date: self.last_date,
                session: session(&self.last_session),
            },
        )
    }

    pub(crate) fn into_proto(self) -> AbsenceReport {
        let channel = CHANNELS
            .iter()
            .find(|(_, name)| *name == self.channel)
            .map_or(ReportChannel::Unspecified, |(channel, _)| *channel);
        let session = |name: &str| {
            name.parse::<Session>()
                .map_or(PbSession::Unspecified, PbSession::from) as i32
        };
        AbsenceReport {
            id: self.id,
            laestab: self.laestab,
            upn: self.upn,
            channel: channel as i32,
            reported_by: self.reported_by,
            relationship: self.relationship,
            reason: self.reason,
            reported_at: Some(timestamp(self.reported_at)),
            first_date: self.first_date.to_string(),
            first_session: session(&self.first_session),
            last_date: self.last_date.to_string(),
            last_session: session(&self.last_session),
        }
    }
}

const CHANNELS: [(ReportChannel, &str); 5] = [
    (ReportChannel::AbsenceLine, "absence_line"),
    (ReportChannel::App, "app"),
    (ReportChannel::Email, "email"),
    (ReportChannel::Letter, "letter"),
    (ReportChannel::InPerson, "in_person"),
];

/// A checked report, before it is stored.
#[derive(Debug)]
pub(crate) struct NewReport {
    request_id: String,
    laestab: Option<String>,
    pub(crate) upn: String,
    channel: &'static str,
    reported_by: String,
    relationship: String,
    reason: String,
    reported_at: DateTime<Utc>,
    pub(crate) first: SessionDate,
    last: SessionDate,
}

fn required(field: &str, value: &str, problem: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(invalid_argument(field, value, problem))
    } else {
        Ok(trimmed.to_owned())
    }
}

impl NewReport {
    /// Checks a report from a request.
    pub(crate) fn check(request_id: &str, report: &AbsenceReport) -> Result<Self, Status> {
        let request_id = required(
            "request_id",
            request_id,
            "an idempotency key is required, such as the id the absence line gave the call",
        )?;
        let upn = Upn::parse(&report.upn)
            .map_err(|error| invalid_argument("report.upn", &report.upn, error.to_string()))?;
        let school = if report.laestab.trim().is_empty() {
            None
        } else {
            Some(laestab("report.laestab", &report.laestab)?)
        };
        let channel = ReportChannel::try_from(report.channel)
            .ok()
            .and_then(|channel| CHANNELS.iter().find(|(known, _)| *known == channel))
            .map(|(_, name)| *name)
            .ok_or_else(|| {
                invalid_argument(
                    "report.channel",
                    &report.channel.to_string(),
                    "the channel must be one of REPORT_CHANNEL_ABSENCE_LINE, APP, EMAIL, LETTER or IN_PERSON",
                )
            })?;
        let session = |field: &str, value: i32| {
            session_from_proto(value).ok_or_else(|| {
                invalid_argument(
                    field,
                    &value.to_string(),
                    "session must be SESSION_AM or SESSION_PM",
                )
            })
        };
        let first = SessionDate {
            date: required_date("report.first_date", &report.first_date)?,
            session: session("report.first_session", report.first_session)?,
        };
        let last = SessionDate {
            date: required_date("report.last_date", &report.last_date)?,
            session: session("report.last_session", report.last_session)?,
        };
        if last < first {
            return Err(invalid_argument(
                "report.last_date",
                &report.last_date,
                format!(
                    "the last session reported is before the first, {} {}",
                    first.date, first.session
                ),
            ));
        }
        let reported_at = match &report.reported_at {
            Some(at) => from_timestamp(at).ok_or_else(|| {
                invalid_argument(
                    "report.reported_at",
                    &at.seconds.to_string(),
                    "not a valid time",
                )
            })?,
            None => Utc::now(),
        };
        Ok(Self {
            request_id,
            laestab: school,
            upn: upn.to_string(),
            channel,
            reported_by: required(
                "report.reported_by",
                &report.reported_by,
                "the name of the person reporting is required",
            )?,
            relationship: report.relationship.trim().to_owned(),
            reason: required(
                "report.reason",
                &report.reason,
                "the reason given is required",
            )?,
            reported_at,
            first,
            last,
        })
    }
}

/// Stores a report, or returns the one already stored under its request id.
pub(crate) async fn record(db: &Db, report: &NewReport) -> Result<(ReportRow, bool), Status> {
    let store_error = |error| storage_error("recording an absence report", error);
    let by_request = format!("SELECT {REPORT_COLUMNS} FROM absence_reports WHERE request_id = $1");
    let now = Utc::now();
    with_db!(db, |pool| {
        let mut tx = pool
            .begin_write(REPORTS_LOCK_KEY)
            .await
            .map_err(store_error)?;
        let existing: Option<ReportRow> = sqlx::query_as(sqlx::AssertSqlSafe(by_request.clone()))
            .bind(&report.request_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some(existing) = existing {
            return Ok((existing, false));
        }
        let school: Option<String> = sqlx::query_scalar(
            "SELECT laestab FROM enrolments \
             WHERE upn = $1 AND ($2 = '' OR laestab = $2) \
               AND admission_date <= $3 AND (leaving_date IS NULL OR leaving_date >= $3) \
             ORDER BY admission_date DESC LIMIT 1",
        )
        .bind(&report.upn)
        .bind(report.laestab.as_deref().unwrap_or_default())
        .bind(report.first.date)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(school) = school else {
            return Err(invalid_argument(
                "report.upn",
                &report.upn,
                format!("no pupil with this UPN is on roll on {}", report.first.date),
            ));
        };
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM absence_reports")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        let id = format!("report-{:08}", count + 1);
        sqlx::query(
            "INSERT INTO absence_reports (id, request_id, laestab, upn, channel, reported_by, \
             relationship, reason, reported_at, received_at, first_date, first_session, \
             last_date, last_session) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&id)
        .bind(&report.request_id)
        .bind(&school)
        .bind(&report.upn)
        .bind(report.channel)
        .bind(&report.reported_by)
        .bind(&report.relationship)
        .bind(&report.reason)
        .bind(report.reported_at)
        .bind(now)
        .bind(report.first.date)
        .bind(report.first.session.as_str())
        .bind(report.last.date)
        .bind(report.last.session.as_str())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let stored: ReportRow = sqlx::query_as(sqlx::AssertSqlSafe(by_request.clone()))
            .bind(&report.request_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok((stored, true))
    })
}

/// Lists a school's reports, or one pupil's, newest first.
pub(crate) async fn list(db: &Db, laestab: &str, upn: &str) -> Result<Vec<ReportRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {REPORT_COLUMNS} FROM absence_reports WHERE laestab = $1 AND ($2 = '' OR upn = $2) \
         ORDER BY first_date DESC, id DESC"
    );
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(laestab)
            .bind(upn)
            .fetch_all(pool)
            .await
    })
}
