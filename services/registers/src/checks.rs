//! Registers that need attention: sessions left without a mark after registers closed, and
//! N marks that have waited too long for a reason.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_domain::calendar::SchoolCalendar;
use rollcall_domain::{Session, SessionDate};
use rollcall_runtime::grpc::invalid_argument;
use tonic::Status;

/// Returns, in UPN and session order, every open session of `date` whose register had closed
/// by `as_of` and that has no mark for a pupil on roll.
pub(crate) fn missing_marks(
    calendar: &SchoolCalendar,
    date: NaiveDate,
    as_of: DateTime<Utc>,
    on_roll: &[String],
    marked: &HashSet<(String, Session)>,
) -> Vec<(String, Session)> {
    let local_now = as_of.with_timezone(&calendar.time_zone()).naive_local();
    let closed: Vec<Session> = [Session::Am, Session::Pm]
        .into_iter()
        .filter(|session| {
            calendar.is_open(SessionDate {
                date,
                session: *session,
            })
        })
        .filter(|session| date.and_time(calendar.register_times(*session).closes) < local_now)
        .collect();
    let mut missing = Vec::new();
    for upn in on_roll {
        for session in &closed {
            if !marked.contains(&(upn.clone(), *session)) {
                missing.push((upn.clone(), *session));
            }
        }
    }
    missing
}

/// Returns how many school days old a session on `date` is by `as_of`, if that is more than
/// `limit`.
pub(crate) fn overdue(
    calendar: &SchoolCalendar,
    date: NaiveDate,
    as_of: NaiveDate,
    limit: u32,
) -> Option<u32> {
    let age = calendar.school_days_between(date, as_of);
    (age > limit).then_some(age)
}

/// Returns one page of `items` and the token of the next page. Tokens are offsets into the
/// list, which is rebuilt on each call.
pub(crate) fn page<T>(
    items: Vec<T>,
    page_size: i32,
    token: &str,
) -> Result<(Vec<T>, String), Status> {
    let size = if page_size <= 0 {
        1_000
    } else {
        page_size.min(10_000)
    } as usize;
    let start: usize = if token.is_empty() {
        0
    } else {
        token.parse().map_err(|_| {
            invalid_argument(
                "page_token",
                token,
                "not a token returned by an earlier call; start again without one",
            )
        })?
    };
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    let page = items
        .into_iter()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect();
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveTime, TimeZone};
    use rollcall_domain::calendar::{RegisterTimes, Term};

    use super::*;

    fn calendar() -> SchoolCalendar {
        let time = |hour, minute| NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time");
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
                first_day: day(1),
                last_day: NaiveDate::from_ymd_opt(2025, 12, 19).expect("valid date"),
            }],
            Vec::new(),
        )
        .expect("valid calendar")
    }

    fn day(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 9, day).expect("valid date")
    }

    #[test]
    fn missing_only_after_register_closes() {
        let calendar = calendar();
        let pupils = vec!["A".to_owned(), "B".to_owned()];
        let marked: HashSet<(String, Session)> = [("A".to_owned(), Session::Am)].into();
        // 09:30 in London (08:30 UTC in summer time): the morning register has closed.
        let morning = Utc
            .with_ymd_and_hms(2025, 9, 3, 8, 30, 0)
            .single()
            .expect("valid");
        assert_eq!(
            missing_marks(&calendar, day(3), morning, &pupils, &marked),
            vec![("B".to_owned(), Session::Am)]
        );
        // 08:55 in London: the register is still open, so nothing is missing yet.
        let early = Utc
            .with_ymd_and_hms(2025, 9, 3, 7, 55, 0)
            .single()
            .expect("valid");
        assert!(missing_marks(&calendar, day(3), early, &pupils, &marked).is_empty());
        // Saturday has no sessions.
        let weekend = Utc
            .with_ymd_and_hms(2025, 9, 6, 15, 0, 0)
            .single()
            .expect("valid");
        assert!(missing_marks(&calendar, day(6), weekend, &pupils, &marked).is_empty());
    }

    #[test]
    fn overdue_counts_school_days() {
        let calendar = calendar();
        // Monday 1 to Monday 8 September is five school days: not yet overdue.
        assert_eq!(overdue(&calendar, day(1), day(8), 5), None);
        assert_eq!(overdue(&calendar, day(1), day(9), 5), Some(6));
    }

    #[test]
    fn page_walks_the_list() {
        let (first, next) = page((0..5).collect::<Vec<_>>(), 2, "").expect("first page");
        assert_eq!((first, next.as_str()), (vec![0, 1], "2"));
        let (last, next) = page((0..5).collect::<Vec<_>>(), 3, "3").expect("last page");
        assert_eq!((last, next.as_str()), (vec![3, 4], ""));
        assert!(page(vec![1], 1, "abc").is_err());
    }
}
