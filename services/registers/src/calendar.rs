//! School calendars: conversion from requests, storage rows, and the checks marks must pass.

use chrono::{NaiveDate, NaiveTime};
use rollcall_api::convert::session_from_proto;
use rollcall_api::registers::v1 as pb;
use rollcall_domain::calendar::{
    Closure, ClosureKind, RegisterTimes, SchoolCalendar, SessionStatus, Term,
};
use rollcall_domain::{Category, Session, SessionDate, codes};
use rollcall_runtime::grpc::invalid_argument;
use tonic::Status;

use crate::convert::required_date;

/// Selects a school's calendar header.
pub(crate) const HEADER_SQL: &str = "SELECT time_zone, am_opens, am_closes, pm_opens, pm_closes \
     FROM calendars WHERE laestab = $1";
/// Selects a school's terms.
pub(crate) const TERMS_SQL: &str =
    "SELECT name, first_day, last_day FROM calendar_terms WHERE laestab = $1 ORDER BY first_day";
/// Selects a school's closures.
pub(crate) const CLOSURES_SQL: &str = "SELECT closure_date, session, kind, reason \
     FROM calendar_closures WHERE laestab = $1 ORDER BY closure_date, session";

/// The stored name of a whole-day closure's session column.
pub(crate) const WHOLE_DAY: &str = "DAY";

/// A calendar as stored: header, terms and closures.
#[derive(Debug)]
pub(crate) struct CalendarRows {
    pub(crate) header: (String, String, String, String, String),
    pub(crate) terms: Vec<(String, NaiveDate, NaiveDate)>,
    pub(crate) closures: Vec<(NaiveDate, String, String, String)>,
}

/// Loads a school's calendar rows inside a transaction, mapping errors with `$error`.
macro_rules! load_calendar_rows {
    ($tx:ident, $laestab:expr, $error:expr) => {{
        let header: Option<(String, String, String, String, String)> =
            sqlx::query_as($crate::calendar::HEADER_SQL)
                .bind($laestab)
                .fetch_optional(&mut *$tx)
                .await
                .map_err($error)?;
        match header {
            None => None,
            Some(header) => {
                let terms = sqlx::query_as($crate::calendar::TERMS_SQL)
                    .bind($laestab)
                    .fetch_all(&mut *$tx)
                    .await
                    .map_err($error)?;
                let closures = sqlx::query_as($crate::calendar::CLOSURES_SQL)
                    .bind($laestab)
                    .fetch_all(&mut *$tx)
                    .await
                    .map_err($error)?;
                Some($crate::calendar::CalendarRows {
                    header,
                    terms,
                    closures,
                })
            }
        }
    }};
}
pub(crate) use load_calendar_rows;

fn parse_time(field: &str, value: &str) -> Result<NaiveTime, Status> {
    NaiveTime::parse_from_str(value.trim(), "%H:%M")
        .map_err(|_| invalid_argument(field, value, "expected a time as HH:MM, for example 08:40"))
}

fn register_times(field: &str, times: Option<&pb::RegisterTimes>) -> Result<RegisterTimes, Status> {
    let times = times.ok_or_else(|| invalid_argument(field, "", "register times are required"))?;
    Ok(RegisterTimes {
        opens: parse_time(&format!("{field}.opens"), &times.opens)?,
        closes: parse_time(&format!("{field}.closes"), &times.closes)?,
    })
}

fn closure_kind(value: i32) -> Option<ClosureKind> {
    match pb::ClosureKind::try_from(value) {
        Ok(pb::ClosureKind::Planned) => Some(ClosureKind::Planned),
        Ok(pb::ClosureKind::Unexpected) => Some(ClosureKind::Unexpected),
        _ => None,
    }
}

/// Checks a calendar from a request.
pub(crate) fn from_proto(calendar: &pb::Calendar) -> Result<SchoolCalendar, Status> {
    let am = register_times("calendar.am", calendar.am.as_ref())?;
    let pm = register_times("calendar.pm", calendar.pm.as_ref())?;
    let mut terms = Vec::with_capacity(calendar.terms.len());
    for (index, term) in calendar.terms.iter().enumerate() {
        let field = format!("calendar.terms[{index}]");
        terms.push(Term {
            name: term.name.trim().to_owned(),
            first_day: required_date(&format!("{field}.first_day"), &term.first_day)?,
            last_day: required_date(&format!("{field}.last_day"), &term.last_day)?,
        });
    }
    let mut closures = Vec::with_capacity(calendar.closures.len());
    for (index, closure) in calendar.closures.iter().enumerate() {
        let field = format!("calendar.closures[{index}]");
        let kind = closure_kind(closure.kind).ok_or_else(|| {
            invalid_argument(
                &format!("{field}.kind"),
                &closure.kind.to_string(),
                "kind must be CLOSURE_KIND_PLANNED or CLOSURE_KIND_UNEXPECTED",
            )
        })?;
        closures.push(Closure {
            date: required_date(&format!("{field}.date"), &closure.date)?,
            session: session_from_proto(closure.session),
            kind,
            reason: closure.reason.trim().to_owned(),
        });
    }
    SchoolCalendar::new(&calendar.time_zone, am, pm, terms, closures).map_err(|error| {
        invalid_argument("calendar of school", &calendar.laestab, error.to_string())
    })
}

/// Rebuilds a stored calendar. Stored calendars passed [`from_proto`], so a failure here means
/// the rows were edited by hand; it is reported as a storage problem.
pub(crate) fn from_rows(rows: CalendarRows) -> Result<SchoolCalendar, Status> {
    let (time_zone, am_opens, am_closes, pm_opens, pm_closes) = rows.header;
    let time = |value: &str| parse_time("stored register time", value);
    let am = RegisterTimes {
        opens: time(&am_opens)?,
        closes: time(&am_closes)?,
    };
    let pm = RegisterTimes {
        opens: time(&pm_opens)?,
        closes: time(&pm_closes)?,
    };
    let terms = rows
        .terms
        .into_iter()
        .map(|(name, first_day, last_day)| Term {
            name,
            first_day,
            last_day,
        })
        .collect();
    let closures = rows
        .closures
        .into_iter()
        .map(|(date, session, kind, reason)| Closure {
            date,
            session: session.parse::<Session>().ok(),
            kind: if kind == "unexpected" {
                ClosureKind::Unexpected
            } else {
                ClosureKind::Planned
            },
            reason,
        })
        .collect();
    SchoolCalendar::new(&time_zone, am, pm, terms, closures).map_err(|error| {
        tracing::error!(%error, "Stored calendar is invalid");
        Status::internal("the stored calendar is invalid; see the server log")
    })
}

/// Converts a calendar to its message.
pub(crate) fn to_proto(laestab: &str, calendar: &SchoolCalendar) -> pb::Calendar {
    let times = |times: RegisterTimes| pb::RegisterTimes {
        opens: times.opens.format("%H:%M").to_string(),
        closes: times.closes.format("%H:%M").to_string(),
    };
    pb::Calendar {
        laestab: laestab.to_owned(),
        time_zone: calendar.time_zone().name().to_owned(),
        am: Some(times(calendar.register_times(Session::Am))),
        pm: Some(times(calendar.register_times(Session::Pm))),
        terms: calendar
            .terms()
            .iter()
            .map(|term| pb::Term {
                name: term.name.clone(),
                first_day: term.first_day.to_string(),
                last_day: term.last_day.to_string(),
            })
            .collect(),
        closures: calendar
            .closures()
            .iter()
            .map(|closure| pb::Closure {
                date: closure.date.to_string(),
                session: closure.session.map_or(0, |session| {
                    rollcall_api::types::v1::Session::from(session) as i32
                }),
                kind: match closure.kind {
                    ClosureKind::Planned => pb::ClosureKind::Planned,
                    ClosureKind::Unexpected => pb::ClosureKind::Unexpected,
                } as i32,
                reason: closure.reason.clone(),
            })
            .collect(),
    }
}

/// Checks that a mark fits the school's calendar: any code when the school meets, `#` on a
/// planned closure, a code that is not a possible session on an unexpected closure, and
/// nothing at weekends or outside term. Returns the problem, if any.
pub(crate) fn check_mark(calendar: &SchoolCalendar, at: SessionDate, code: &str) -> Option<String> {
    match calendar.status(at) {
        SessionStatus::Open => None,
        SessionStatus::Closed(ClosureKind::Planned) if code == "#" => None,
        SessionStatus::Closed(ClosureKind::Planned) => Some(format!(
            "{} {} is a planned closure in the school's calendar, so its mark must be #",
            at.date, at.session
        )),
        SessionStatus::Closed(ClosureKind::Unexpected)
            if codes::category_of(code) == Category::NotPossible =>
        {
            None
        }
        SessionStatus::Closed(ClosureKind::Unexpected) => Some(format!(
            "{} {} is an unexpected closure in the school's calendar, so its mark must not be a \
             possible session (for example Y4 or #)",
            at.date, at.session
        )),
        SessionStatus::Weekend => Some(format!(
            "{} is a weekend, when the school does not meet",
            at.date
        )),
        SessionStatus::NotInTerm => Some(format!(
            "{} is not in any term of the school's calendar; add the term first",
            at.date
        )),
    }
}

/// The outcome of a calendar change.
#[derive(Debug)]
pub(crate) struct CalendarChange {
    pub(crate) marks_closed: i32,
    pub(crate) feed_cursor: i64,
}

/// Replaces a school's calendar, and gives every session that is now a planned closure a `#`
/// version in place of its effective mark, in one transaction.
pub(crate) async fn replace(
    db: &rollcall_runtime::Db,
    laestab: &str,
    calendar: &SchoolCalendar,
    changed_by: &str,
    position: &str,
    source: rollcall_domain::MarkSource,
) -> Result<CalendarChange, Status> {
    use rollcall_runtime::grpc::{not_found, storage_error};
    use rollcall_runtime::storage::WriteTransaction;
    use rollcall_runtime::with_db;

    let store_error = |error| storage_error("replacing a calendar", error);
    let now = chrono::Utc::now();
    let times = |session| {
        let times = calendar.register_times(session);
        (
            times.opens.format("%H:%M").to_string(),
            times.closes.format("%H:%M").to_string(),
        )
    };
    let (am_opens, am_closes) = times(Session::Am);
    let (pm_opens, pm_closes) = times(Session::Pm);

    with_db!(db, |pool| {
        let mut tx = pool
            .begin_write(crate::FEED_LOCK_KEY)
            .await
            .map_err(store_error)?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT laestab FROM schools WHERE laestab = $1")
                .bind(laestab)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        if known.is_none() {
            return Err(not_found("school", laestab));
        }

        // A calendar must not leave attendance outside it: marks that count as possible
        // sessions must still fall on days the school meets, or on planned closures, whose
        // marks become # below.
        let held: Vec<(NaiveDate, String, String)> = sqlx::query_as(
            "SELECT e.session_date, e.session, m.code FROM effective_marks e \
             JOIN marks m ON m.sequence = e.sequence WHERE e.laestab = $1 \
             ORDER BY e.session_date, e.session",
        )
        .bind(laestab)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let misfits: Vec<(NaiveDate, String)> = held
            .into_iter()
            .filter(|(date, session, code)| {
                let Ok(session) = session.parse::<Session>() else {
                    return false;
                };
                let status = calendar.status(SessionDate {
                    date: *date,
                    session,
                });
                codes::category_of(code).is_possible()
                    && !matches!(
                        status,
                        SessionStatus::Open | SessionStatus::Closed(ClosureKind::Planned)
                    )
            })
            .map(|(date, session, _)| (date, session))
            .collect();
        if let Some((date, session)) = misfits.first() {
            return Err(invalid_argument(
                "calendar of school",
                laestab,
                format!(
                    "{} attendance marks fall outside this calendar's school days, the first on \
                     {date} {session}; add the term or day, or amend those marks first",
                    misfits.len()
                ),
            ));
        }

        for statement in [
            "DELETE FROM calendar_closures WHERE laestab = $1",
            "DELETE FROM calendar_terms WHERE laestab = $1",
            "DELETE FROM calendars WHERE laestab = $1",
        ] {
            sqlx::query(statement)
                .bind(laestab)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        sqlx::query(
            "INSERT INTO calendars (laestab, time_zone, am_opens, am_closes, pm_opens, pm_closes, \
             updated_by, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(laestab)
        .bind(calendar.time_zone().name())
        .bind(&am_opens)
        .bind(&am_closes)
        .bind(&pm_opens)
        .bind(&pm_closes)
        .bind(changed_by)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        for term in calendar.terms() {
            sqlx::query(
                "INSERT INTO calendar_terms (laestab, name, first_day, last_day) VALUES ($1, $2, $3, $4)",
            )
            .bind(laestab)
            .bind(&term.name)
            .bind(term.first_day)
            .bind(term.last_day)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        for closure in calendar.closures() {
            sqlx::query(
                "INSERT INTO calendar_closures (laestab, closure_date, session, kind, reason) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(laestab)
            .bind(closure.date)
            .bind(closure.session.map_or(WHOLE_DAY, Session::as_str))
            .bind(closure.kind.to_string())
            .bind(&closure.reason)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }

        let mut sequence: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM marks")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        let mut marks_closed = 0;
        let traceparent = rollcall_runtime::telemetry::current_traceparent();
        for closure in calendar
            .closures()
            .iter()
            .filter(|c| c.kind == ClosureKind::Planned)
        {
            let open: Vec<(String, String)> = sqlx::query_as(
                "SELECT m.upn, m.session FROM effective_marks e JOIN marks m ON m.sequence = e.sequence \
                 WHERE e.laestab = $1 AND e.session_date = $2 AND ($3 = 'DAY' OR e.session = $3) \
                   AND m.code <> '#' ORDER BY m.upn, m.session",
            )
            .bind(laestab)
            .bind(closure.date)
            .bind(closure.session.map_or(WHOLE_DAY, Session::as_str))
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
            let reason = format!("Planned closure in the school calendar: {}", closure.reason);
            for (upn, session) in open {
                sequence += 1;
                marks_closed += 1;
                sqlx::query(
                    "INSERT INTO marks (sequence, laestab, upn, session_date, session, code, \
                     minutes_late, source, source_name, reason, recorded_by, recorded_by_position, \
                     recorded_at, received_at, effective_when_stored, traceparent) \
                     VALUES ($1, $2, $3, $4, $5, '#', 0, $10, 'calendar', $6, $7, $8, $9, $9, TRUE, \
                     $11)",
                )
                .bind(sequence)
                .bind(laestab)
                .bind(&upn)
                .bind(closure.date)
                .bind(&session)
                .bind(&reason)
                .bind(changed_by)
                .bind(position)
                .bind(now)
                .bind(source.as_str())
                .bind(&traceparent)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
                sqlx::query(
                    "UPDATE effective_marks SET sequence = $5, recorded_at = $6 \
                     WHERE laestab = $1 AND upn = $2 AND session_date = $3 AND session = $4",
                )
                .bind(laestab)
                .bind(&upn)
                .bind(closure.date)
                .bind(&session)
                .bind(sequence)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(CalendarChange {
            marks_closed,
            feed_cursor: sequence,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calendar() -> SchoolCalendar {
        let time = |hour, minute| NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time");
        let date = |month, day| NaiveDate::from_ymd_opt(2025, month, day).expect("valid date");
        SchoolCalendar::new(
            "Europe/London",
            RegisterTimes {
                opens: time(8, 40),
                closes: time(9, 0),
            },
            RegisterTimes {
                opens: time(13, 15),
                closes: time(13, 30),
            },
            vec![Term {
                name: "Autumn".into(),
                first_day: date(9, 1),
                last_day: date(12, 19),
            }],
            vec![
                Closure {
                    date: date(9, 5),
                    session: None,
                    kind: ClosureKind::Planned,
                    reason: "INSET".into(),
                },
                Closure {
                    date: date(9, 4),
                    session: Some(Session::Pm),
                    kind: ClosureKind::Unexpected,
                    reason: "snow".into(),
                },
            ],
        )
        .expect("valid calendar")
    }

    fn at(day: u32, session: Session) -> SessionDate {
        SessionDate {
            date: NaiveDate::from_ymd_opt(2025, 9, day).expect("valid date"),
            session,
        }
    }

    #[test]
    fn marks_must_fit_calendar() {
        let calendar = calendar();
        assert_eq!(check_mark(&calendar, at(3, Session::Am), "/"), None);
        assert_eq!(check_mark(&calendar, at(5, Session::Am), "#"), None);
        assert!(
            check_mark(&calendar, at(5, Session::Am), "/")
                .is_some_and(|p| p.contains("planned closure"))
        );
        assert_eq!(check_mark(&calendar, at(4, Session::Pm), "Y4"), None);
        assert!(check_mark(&calendar, at(4, Session::Pm), "O").is_some());
        assert!(
            check_mark(&calendar, at(6, Session::Am), "/").is_some_and(|p| p.contains("weekend"))
        );
        let summer = SessionDate {
            date: NaiveDate::from_ymd_opt(2025, 8, 20).expect("valid date"),
            session: Session::Am,
        };
        assert!(check_mark(&calendar, summer, "/").is_some_and(|p| p.contains("not in any term")));
    }

    #[test]
    fn proto_round_trip() {
        let calendar = calendar();
        let message = to_proto("9192001", &calendar);
        assert_eq!(
            message.am.as_ref().map(|am| am.opens.as_str()),
            Some("08:40")
        );
        assert_eq!(from_proto(&message).expect("valid message"), calendar);
    }

    #[test]
    fn bad_times_name_field() {
        let mut message = to_proto("9192001", &calendar());
        if let Some(am) = message.am.as_mut() {
            am.closes = "9am".into();
        }
        let error = from_proto(&message).expect_err("not HH:MM");
        assert!(
            error.message().contains("calendar.am.closes"),
            "{}",
            error.message()
        );
        assert!(error.message().contains("9am"), "{}", error.message());
    }
}
