//! Lesson marks and spot checks, and the possible post-registration truancy they reveal.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::convert::{from_timestamp, timestamp};
use rollcall_api::registers::v1::{
    CheckKind, RecordLessonCheckRequest, RecordLessonCheckResponse, TruancyFlag,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_domain::codes::is_possible_truancy;
use rollcall_domain::{Session, Upn};
use rollcall_runtime::grpc::{invalid_argument, laestab, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use sqlx::QueryBuilder;
use tonic::Status;

use crate::convert::{required_date, session};

/// The advisory lock that serialises lesson-check writers on PostgreSQL, so ids are unique.
const LESSONS_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::REGISTERS_LESSONS;

/// The roles a truancy flag is for.
pub(crate) const FLAG_ROLES: [&str; 2] = ["head_of_year", "senior_attendance_lead"];

/// A checked lesson check.
#[derive(Debug)]
pub(crate) struct LessonCheck {
    request_id: String,
    laestab: String,
    date: NaiveDate,
    session: Session,
    kind: &'static str,
    label: String,
    taken_at: DateTime<Utc>,
    recorded_by: String,
    position: String,
    marks: Vec<(String, bool)>,
}

/// A stored truancy flag.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct FlagRow {
    pub(crate) id: String,
    pub(crate) check_id: String,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) flag_date: NaiveDate,
    pub(crate) session: String,
    pub(crate) register_code: String,
    pub(crate) raised_at: DateTime<Utc>,
}

impl FlagRow {
    pub(crate) fn into_proto(self) -> TruancyFlag {
        TruancyFlag {
            id: self.id,
            check_id: self.check_id,
            laestab: self.laestab,
            upn: self.upn,
            date: self.flag_date.to_string(),
            session: self
                .session
                .parse::<Session>()
                .map_or(PbSession::Unspecified, PbSession::from) as i32,
            register_code: self.register_code,
            for_roles: FLAG_ROLES.iter().map(|role| (*role).to_owned()).collect(),
            raised_at: Some(timestamp(self.raised_at)),
        }
    }
}

/// Selects flags; callers add the conditions.
pub(crate) const FLAG_COLUMNS: &str =
    "id, check_id, laestab, upn, flag_date, session, register_code, raised_at";

impl LessonCheck {
    /// Checks a request.
    pub(crate) fn check(request: &RecordLessonCheckRequest) -> Result<Self, Status> {
        let required = |field: &str, value: &str, problem: &str| {
            let trimmed = value.trim();
            if trimmed.is_empty() {
                Err(invalid_argument(field, value, problem))
            } else {
                Ok(trimmed.to_owned())
            }
        };
        let kind = match CheckKind::try_from(request.kind) {
            Ok(CheckKind::Lesson) => "lesson",
            Ok(CheckKind::SpotCheck) => "spot_check",
            _ => {
                return Err(invalid_argument(
                    "kind",
                    &request.kind.to_string(),
                    "kind must be CHECK_KIND_LESSON or CHECK_KIND_SPOT_CHECK",
                ));
            }
        };
        let taken_at = request
            .taken_at
            .as_ref()
            .map(|at| {
                from_timestamp(at).ok_or_else(|| {
                    invalid_argument("taken_at", &at.seconds.to_string(), "not a valid time")
                })
            })
            .transpose()?
            .unwrap_or_else(Utc::now);
        let mut marks = Vec::with_capacity(request.marks.len());
        for (index, mark) in request.marks.iter().enumerate() {
            let upn = Upn::parse(&mark.upn).map_err(|error| {
                invalid_argument(&format!("marks[{index}].upn"), &mark.upn, error.to_string())
            })?;
            marks.push((upn.to_string(), mark.present));
        }
        if marks.is_empty() {
            return Err(invalid_argument(
                "marks",
                "",
                "a check needs at least one pupil",
            ));
        }
        Ok(Self {
            request_id: required(
                "request_id",
                &request.request_id,
                "an idempotency key is required",
            )?,
            laestab: laestab("laestab", &request.laestab)?,
            date: required_date("date", &request.date)?,
            session: session("session", request.session)?,
            kind,
            label: required(
                "label",
                &request.label,
                "say what was checked, such as the lesson",
            )?,
            taken_at,
            recorded_by: required(
                "recorded_by",
                &request.recorded_by,
                "the name of the person who took the check is required",
            )?,
            position: request.recorded_by_position.trim().to_owned(),
            marks,
        })
    }
}

/// Stores a check and its marks, and raises a flag for every pupil present at registration and
/// absent from the check, in one transaction.
pub(crate) async fn record(
    db: &Db,
    check: &LessonCheck,
) -> Result<RecordLessonCheckResponse, Status> {
    let store_error = |error| storage_error("recording a lesson check", error);
    let flags_of =
        format!("SELECT {FLAG_COLUMNS} FROM truancy_flags WHERE check_id = $1 ORDER BY id");
    let now = Utc::now();
    let session = check.session.as_str();
    with_db!(db, |pool| {
        let mut tx = pool
            .begin_write(LESSONS_LOCK_KEY)
            .await
            .map_err(store_error)?;
        let done: Option<String> =
            sqlx::query_scalar("SELECT id FROM lesson_checks WHERE request_id = $1")
                .bind(&check.request_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        if let Some(check_id) = done {
            let flags: Vec<FlagRow> = sqlx::query_as(sqlx::AssertSqlSafe(flags_of.clone()))
                .bind(&check_id)
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
            return Ok(RecordLessonCheckResponse {
                check_id,
                flags: flags.into_iter().map(FlagRow::into_proto).collect(),
                already_recorded: true,
            });
        }

        // Every pupil must be on roll that day, and their register mark decides the flag.
        let mut query = QueryBuilder::new(
            "SELECT en.upn, m.code FROM enrolments en \
             LEFT JOIN effective_marks e ON e.laestab = en.laestab AND e.upn = en.upn \
               AND e.session_date = ",
        );
        query
            .push_bind(check.date)
            .push(" AND e.session = ")
            .push_bind(session);
        query.push(" LEFT JOIN marks m ON m.sequence = e.sequence WHERE en.laestab = ");
        query.push_bind(check.laestab.clone());
        query
            .push(" AND en.admission_date <= ")
            .push_bind(check.date);
        query
            .push(" AND (en.leaving_date IS NULL OR en.leaving_date >= ")
            .push_bind(check.date);
        query.push(") AND en.upn IN (");
        let mut list = query.separated(", ");
        for (upn, _) in &check.marks {
            list.push_bind(upn.clone());
        }
        query.push(")");
        let rows: Vec<(String, Option<String>)> = query
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        let register: HashMap<String, Option<String>> = rows.into_iter().collect();
        if let Some((index, (upn, _))) = check
            .marks
            .iter()
            .enumerate()
            .find(|(_, (upn, _))| !register.contains_key(upn))
        {
            return Err(invalid_argument(
                &format!("marks[{index}].upn"),
                upn,
                format!(
                    "the pupil is not on roll at school {} on {}",
                    check.laestab, check.date
                ),
            ));
        }

        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lesson_checks")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        let check_id = format!("check-{:08}", count + 1);
        sqlx::query(
            "INSERT INTO lesson_checks (id, request_id, laestab, check_date, session, kind, label, \
             taken_at, recorded_by, recorded_by_position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&check_id)
        .bind(&check.request_id)
        .bind(&check.laestab)
        .bind(check.date)
        .bind(session)
        .bind(check.kind)
        .bind(&check.label)
        .bind(check.taken_at)
        .bind(&check.recorded_by)
        .bind(&check.position)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut insert = QueryBuilder::new("INSERT INTO lesson_marks (check_id, upn, present) ");
        insert.push_values(&check.marks, |mut row, (upn, present)| {
            row.push_bind(check_id.clone())
                .push_bind(upn.clone())
                .push_bind(*present);
        });
        insert
            .build()
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;

        let mut flags = Vec::new();
        for (upn, present) in &check.marks {
            let Some(Some(code)) = register.get(upn) else {
                continue;
            };
            if !is_possible_truancy(code, *present) {
                continue;
            }
            let id = format!("{check_id}-{}", flags.len() + 1);
            sqlx::query(
                "INSERT INTO truancy_flags (id, check_id, laestab, upn, flag_date, session, \
                 register_code, raised_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&id)
            .bind(&check_id)
            .bind(&check.laestab)
            .bind(upn)
            .bind(check.date)
            .bind(session)
            .bind(code)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            flags.push(FlagRow {
                id,
                check_id: check_id.clone(),
                laestab: check.laestab.clone(),
                upn: upn.clone(),
                flag_date: check.date,
                session: session.to_owned(),
                register_code: code.clone(),
                raised_at: now,
            });
        }
        tx.commit().await.map_err(store_error)?;
        Ok(RecordLessonCheckResponse {
            check_id,
            flags: flags.into_iter().map(FlagRow::into_proto).collect(),
            already_recorded: false,
        })
    })
}

/// Lists a school's flags between two dates, newest first.
pub(crate) async fn flags(
    db: &Db,
    laestab: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<FlagRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {FLAG_COLUMNS} FROM truancy_flags \
         WHERE laestab = $1 AND flag_date >= $2 AND flag_date <= $3 \
         ORDER BY flag_date DESC, id DESC"
    );
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(laestab)
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await
    })
}
