//! Queries on the registers' tables. Every query is written once in SQL that PostgreSQL and
//! SQLite both accept.

use chrono::NaiveDate;
use rollcall_runtime::{Db, with_db};

use crate::convert::MarkRow;

/// The earliest and latest dates a filter can take, standing in for "no bound".
pub(crate) const NO_EARLIER: NaiveDate = NaiveDate::from_ymd_opt(1, 1, 1).expect("valid date");
pub(crate) const NO_LATER: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("valid date");

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct SchoolRow {
    pub(crate) laestab: String,
    pub(crate) name: String,
    pub(crate) phase: String,
    pub(crate) last_mark_date: Option<NaiveDate>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PupilRow {
    pub(crate) upn: String,
    pub(crate) forename: String,
    pub(crate) surname: String,
    pub(crate) date_of_birth: NaiveDate,
    pub(crate) sex: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EnrolmentRow {
    pub(crate) laestab: String,
    pub(crate) admission_date: NaiveDate,
    pub(crate) leaving_date: Option<NaiveDate>,
    pub(crate) year_group: String,
    pub(crate) registration: String,
    pub(crate) class_name: String,
    pub(crate) sen_provision: String,
    pub(crate) free_school_meals: String,
    pub(crate) leaving_reason: Option<String>,
}

pub(crate) const MARK_COLUMNS: &str = "m.sequence, m.laestab, m.upn, m.session_date, m.session, m.code, \
     m.minutes_late, m.source, m.reason, m.recorded_by, m.recorded_by_position, m.recorded_at, \
     m.effective_when_stored, m.arrived_at, m.absence_report_id";

pub(crate) async fn school(db: &Db, laestab: &str) -> Result<Option<SchoolRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT laestab, name, phase, \
                    (SELECT MAX(session_date) FROM effective_marks e WHERE e.laestab = s.laestab) \
                    AS last_mark_date \
             FROM schools s WHERE laestab = $1",
        )
        .bind(laestab)
        .fetch_optional(pool)
        .await
    })
}

pub(crate) async fn schools_after(
    db: &Db,
    after: &str,
    limit: i64,
) -> Result<Vec<SchoolRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT laestab, name, phase, \
                    (SELECT MAX(session_date) FROM effective_marks e WHERE e.laestab = s.laestab) \
                    AS last_mark_date \
             FROM schools s WHERE laestab > $1 ORDER BY laestab LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}

pub(crate) async fn pupil(db: &Db, upn: &str) -> Result<Option<PupilRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT upn, forename, surname, date_of_birth, sex FROM pupils WHERE upn = $1",
        )
        .bind(upn)
        .fetch_optional(pool)
        .await
    })
}

pub(crate) async fn enrolments_of(db: &Db, upn: &str) -> Result<Vec<EnrolmentRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT laestab, upn, admission_date, leaving_date, year_group, registration, class_name, \
             sen_provision, free_school_meals, leaving_reason FROM enrolments \
             WHERE upn = $1 ORDER BY admission_date DESC, laestab",
        )
        .bind(upn)
        .fetch_all(pool)
        .await
    })
}

/// The school the pupil was on roll at on `date`: `laestab` itself if given and the pupil was
/// on roll there, else the school of their latest admission on or before the date.
pub(crate) async fn school_on_roll(
    db: &Db,
    upn: &str,
    laestab: &str,
    date: chrono::NaiveDate,
) -> Result<Option<String>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_scalar(
            "SELECT laestab FROM enrolments \
             WHERE upn = $1 AND ($2 = '' OR laestab = $2) \
               AND admission_date <= $3 AND (leaving_date IS NULL OR leaving_date >= $3) \
             ORDER BY admission_date DESC LIMIT 1",
        )
        .bind(upn)
        .bind(laestab)
        .bind(date)
        .fetch_optional(pool)
        .await
    })
}

/// Pupils with an enrolment at the school (on roll on `on_roll`, if given), after `after_upn`
/// in UPN order, each with that enrolment.
pub(crate) async fn pupils_at(
    db: &Db,
    laestab: &str,
    on_roll: Option<NaiveDate>,
    after_upn: &str,
    limit: i64,
) -> Result<Vec<(PupilRow, EnrolmentRow)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Joined {
        #[sqlx(flatten)]
        pupil: PupilRow,
        laestab: String,
        admission_date: NaiveDate,
        leaving_date: Option<NaiveDate>,
        year_group: String,
        registration: String,
        class_name: String,
        sen_provision: String,
        free_school_meals: String,
        leaving_reason: Option<String>,
    }
    let (day_from, day_to) = match on_roll {
        Some(day) => (day, day),
        None => (NO_LATER, NO_EARLIER),
    };
    let rows: Vec<Joined> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT p.upn, p.forename, p.surname, p.date_of_birth, p.sex, \
                    e.laestab, e.admission_date, e.leaving_date, e.year_group, e.registration, \
                    e.class_name, e.sen_provision, e.free_school_meals, e.leaving_reason \
             FROM enrolments e JOIN pupils p ON p.upn = e.upn \
             WHERE e.laestab = $1 AND e.upn > $2 \
               AND e.admission_date <= $3 \
               AND (e.leaving_date IS NULL OR e.leaving_date >= $4) \
             ORDER BY e.upn, e.admission_date DESC \
             LIMIT $5",
        )
        .bind(laestab)
        .bind(after_upn)
        .bind(day_from)
        .bind(day_to)
        .bind(limit)
        .fetch_all(pool)
        .await
    })?;
    let mut out: Vec<(PupilRow, EnrolmentRow)> = Vec::with_capacity(rows.len());
    for row in rows {
        // A pupil with several enrolments at the school appears once, with the latest.
        if out
            .last()
            .is_some_and(|(last, _)| last.upn == row.pupil.upn)
        {
            continue;
        }
        let enrolment = EnrolmentRow {
            laestab: row.laestab,
            admission_date: row.admission_date,
            leaving_date: row.leaving_date,
            year_group: row.year_group,
            registration: row.registration,
            class_name: row.class_name,
            sen_provision: row.sen_provision,
            free_school_meals: row.free_school_meals,
            leaving_reason: row.leaving_reason,
        };
        out.push((row.pupil, enrolment));
    }
    Ok(out)
}

/// Filters for [`effective_marks`].
#[derive(Debug, Clone)]
pub(crate) struct MarkFilter {
    pub(crate) laestab: String,
    pub(crate) upn: Option<String>,
    pub(crate) from: NaiveDate,
    pub(crate) to: NaiveDate,
    /// Resume after this (UPN, date, session).
    pub(crate) after: (String, NaiveDate, String),
}

/// Effective marks matching the filter, ordered by UPN, date and session.
pub(crate) async fn effective_marks(
    db: &Db,
    filter: &MarkFilter,
    limit: i64,
) -> Result<Vec<MarkRow>, sqlx::Error> {
    let (after_upn, after_date, after_session) = &filter.after;
    // One pupil's marks come straight from the primary key (laestab, upn, date, session).
    let (pupil_condition, upn) = match &filter.upn {
        Some(upn) => ("e.upn = $2", upn.as_str()),
        None => ("$2 = ''", ""),
    };
    let sql = format!(
        "SELECT {MARK_COLUMNS} FROM effective_marks e \
         JOIN marks m ON m.sequence = e.sequence \
         WHERE e.laestab = $1 AND {pupil_condition} \
           AND e.session_date >= $3 AND e.session_date <= $4 \
           AND (e.upn, e.session_date, e.session) > ($5, $6, $7) \
         ORDER BY e.upn, e.session_date, e.session \
         LIMIT $8"
    );
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(&filter.laestab)
            .bind(upn)
            .bind(filter.from)
            .bind(filter.to)
            .bind(after_upn)
            .bind(after_date)
            .bind(after_session)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
}

/// A mark version as the change feed sends it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FeedRow {
    #[sqlx(flatten)]
    pub(crate) mark: MarkRow,
    /// The W3C traceparent of the request that stored the version, when spans were exported.
    pub(crate) traceparent: Option<String>,
}

/// Mark versions after `cursor` in feed order, for one school or all.
pub(crate) async fn feed_after(
    db: &Db,
    cursor: i64,
    laestab: &str,
    limit: i64,
) -> Result<Vec<FeedRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MARK_COLUMNS}, m.traceparent FROM marks m \
             WHERE m.sequence > $1 AND ($2 = '' OR m.laestab = $2) \
             ORDER BY m.sequence LIMIT $3"
        )))
        .bind(cursor)
        .bind(laestab)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}

/// Returns the newest position in the change feed, or 0 when it is empty.
pub(crate) async fn feed_head(db: &Db) -> Result<i64, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM marks")
            .fetch_one(pool)
            .await
    })
}

/// Every version of one session's mark, oldest first, each with whether it is effective.
pub(crate) async fn versions(
    db: &Db,
    upn: &str,
    laestab: Option<&str>,
    date: NaiveDate,
    session: &str,
) -> Result<Vec<(MarkRow, bool)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        mark: MarkRow,
        effective: bool,
    }
    let laestab = laestab.unwrap_or_default();
    let rows: Vec<Row> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MARK_COLUMNS}, \
                    EXISTS (SELECT 1 FROM effective_marks e \
                            WHERE e.laestab = m.laestab AND e.upn = m.upn \
                              AND e.session_date = m.session_date AND e.session = m.session \
                              AND e.sequence = m.sequence) AS effective \
             FROM marks m \
             WHERE m.upn = $1 AND ($2 = '' OR m.laestab = $2) \
               AND m.session_date = $3 AND m.session = $4 \
             ORDER BY m.sequence"
        )))
        .bind(upn)
        .bind(laestab)
        .bind(date)
        .bind(session)
        .fetch_all(pool)
        .await
    })?;
    Ok(rows
        .into_iter()
        .map(|row| (row.mark, row.effective))
        .collect())
}

/// Returns the effective marks of a school on one date.
pub(crate) async fn marks_on(
    db: &Db,
    laestab: &str,
    date: NaiveDate,
) -> Result<Vec<MarkRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MARK_COLUMNS} FROM effective_marks e JOIN marks m ON m.sequence = e.sequence \
             WHERE e.laestab = $1 AND e.session_date = $2"
        )))
        .bind(laestab)
        .bind(date)
        .fetch_all(pool)
        .await
    })
}

/// Returns the effective marks of a school with one code up to a date, in date order.
pub(crate) async fn marks_with_code(
    db: &Db,
    laestab: &str,
    code: &str,
    to: NaiveDate,
) -> Result<Vec<MarkRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {MARK_COLUMNS} FROM effective_marks e JOIN marks m ON m.sequence = e.sequence \
             WHERE e.laestab = $1 AND m.code = $2 AND e.session_date <= $3 \
             ORDER BY e.session_date, e.session, e.upn"
        )))
        .bind(laestab)
        .bind(code)
        .bind(to)
        .fetch_all(pool)
        .await
    })
}
