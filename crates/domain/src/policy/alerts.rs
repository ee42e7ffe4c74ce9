//! Patterns of absence that call for action whatever the percentages: an unexplained
//! absence (N) left unresolved, a run of unauthorised absence, and long sickness.
//!
//! Each works on one pupil's effective marks. A school day is a day on which the pupil has a
//! mark for a possible session. Days with only `#` or other codes that are not possible
//! sessions neither count nor break a run.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use crate::codes::{Category, category_of};
use crate::session::SessionDate;

/// Groups the pupil's possible sessions by day, in date order.
fn school_days<'a>(
    marks: &[(SessionDate, &'a str)],
    from: NaiveDate,
    to: NaiveDate,
) -> BTreeMap<NaiveDate, Vec<&'a str>> {
    let mut days: BTreeMap<NaiveDate, Vec<&str>> = BTreeMap::new();
    for (session, code) in marks {
        if session.date < from || session.date > to || !category_of(code).is_possible() {
            continue;
        }
        days.entry(session.date).or_default().push(code);
    }
    days
}

/// Returns the unexplained absences (N) dated more than `school_days` of the pupil's school
/// days before `as_of`, in date order. They should have been resolved by now.
pub fn overdue_unexplained(
    marks: &[(SessionDate, &str)],
    school_days: u32,
    as_of: NaiveDate,
) -> Vec<SessionDate> {
    let days = school_days_list(marks, as_of);
    let limit = usize::try_from(school_days).unwrap_or(usize::MAX);
    // Days strictly after the N's day, up to the as-of date, must number more than the limit.
    let mut overdue: Vec<SessionDate> = marks
        .iter()
        .filter(|(session, code)| *code == "N" && session.date <= as_of)
        .filter(|(session, _)| days.iter().filter(|day| **day > session.date).count() > limit)
        .map(|(session, _)| *session)
        .collect();
    overdue.sort();
    overdue
}

fn school_days_list(marks: &[(SessionDate, &str)], as_of: NaiveDate) -> Vec<NaiveDate> {
    school_days(marks, NaiveDate::MIN, as_of)
        .into_keys()
        .collect()
}

/// A run of school days on which every possible session was unauthorised absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// School days in the run.
    pub days: u32,
    /// The first day of the run.
    pub first: NaiveDate,
    /// The last day of the run.
    pub last: NaiveDate,
}

/// Returns the longest run of school days wholly of unauthorised absence from `from` to `to`,
/// or `None` when there is no such day.
pub fn longest_unauthorised_run(
    marks: &[(SessionDate, &str)],
    from: NaiveDate,
    to: NaiveDate,
) -> Option<Run> {
    let mut best: Option<Run> = None;
    let mut current: Option<Run> = None;
    for (day, codes) in school_days(marks, from, to) {
        let unauthorised = codes
            .iter()
            .all(|code| category_of(code) == Category::UnauthorisedAbsence);
        if unauthorised {
            let run = match current {
                Some(run) => Run {
                    days: run.days + 1,
                    last: day,
                    ..run
                },
                None => Run {
                    days: 1,
                    first: day,
                    last: day,
                },
            };
            current = Some(run);
            if best.is_none_or(|best| run.days > best.days) {
                best = Some(run);
            }
        } else {
            current = None;
        }
    }
    best
}

/// Returns the days of unauthorised absence from `from` to `to`, counting two sessions as a day
/// and rounding down.
pub fn unauthorised_days(marks: &[(SessionDate, &str)], from: NaiveDate, to: NaiveDate) -> u32 {
    sessions_in(marks, from, to, |code| {
        category_of(code) == Category::UnauthorisedAbsence
    }) / 2
}

/// Returns the days of sickness (code I) from `from` to `to`, counting two sessions as a day and
/// rounding down.
pub fn sickness_days(marks: &[(SessionDate, &str)], from: NaiveDate, to: NaiveDate) -> u32 {
    sessions_in(marks, from, to, |code| code == "I") / 2
}

fn sessions_in(
    marks: &[(SessionDate, &str)],
    from: NaiveDate,
    to: NaiveDate,
    counted: impl Fn(&str) -> bool,
) -> u32 {
    let count = marks
        .iter()
        .filter(|(session, code)| session.date >= from && session.date <= to && counted(code))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, Days};
    use proptest::prelude::*;

    use super::*;
    use crate::session::Session;

    fn date(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 9, day).expect("valid date")
    }

    /// Both sessions of each weekday from 1 September, one code per day.
    fn days(codes: &[&'static str]) -> Vec<(SessionDate, &'static str)> {
        let mut marks = Vec::new();
        let mut day = date(1);
        for code in codes {
            while day.weekday().number_from_monday() > 5 {
                day = day + Days::new(1);
            }
            for session in [Session::Am, Session::Pm] {
                marks.push((SessionDate { date: day, session }, *code));
            }
            day = day + Days::new(1);
        }
        marks
    }

    #[test]
    fn n_is_overdue_after_five_school_days() {
        // N on Monday 1; the school days after it are 2, 3, 4, 5 and 8.
        let marks = days(&["N", "/", "/", "/", "/", "/"]);
        assert!(
            overdue_unexplained(&marks, 5, date(5)).is_empty(),
            "four days later"
        );
        assert!(
            overdue_unexplained(&marks, 5, date(8)).is_empty(),
            "five days later"
        );
        let marks = days(&["N", "/", "/", "/", "/", "/", "/"]);
        assert_eq!(
            overdue_unexplained(&marks, 5, date(9)).len(),
            2,
            "six days later"
        );
    }

    #[test]
    fn closures_neither_count_nor_break_a_run() {
        let marks = days(&["O", "N", "#", "G", "U", "/"]);
        let run = longest_unauthorised_run(&marks, date(1), date(30)).expect("a run");
        assert_eq!(run.days, 4);
        assert_eq!(run.first, date(1));
        assert_eq!(run.last, date(5));
    }

    #[test]
    fn half_a_day_present_breaks_a_run() {
        let mut marks = days(&["O", "O", "O"]);
        marks[3].1 = "/";
        let run = longest_unauthorised_run(&marks, date(1), date(30)).expect("a run");
        assert_eq!(run.days, 1);
    }

    #[test]
    fn sickness_counts_sessions_as_half_days() {
        let mut marks = days(&["I", "I", "/"]);
        marks[0].1 = "/";
        assert_eq!(
            sickness_days(&marks, date(1), date(30)),
            1,
            "three sessions"
        );
    }

    proptest! {
        /// A run of unauthorised days never exceeds the unauthorised days counted in all.
        #[test]
        fn run_is_within_the_total(codes in prop::collection::vec(prop::sample::select(vec!["/", "O", "N", "G", "I", "#", "U", "L"]), 0..60)) {
            let marks = days(&codes);
            let total = unauthorised_days(&marks, date(1), NaiveDate::MAX);
            let run = longest_unauthorised_run(&marks, date(1), NaiveDate::MAX).map_or(0, |run| run.days);
            prop_assert!(run <= total);
        }
    }
}
