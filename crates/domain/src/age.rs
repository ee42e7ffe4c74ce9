//! Compulsory school age.
//!
//! A child reaches compulsory school age on the first prescribed day (31 August, 31 December or
//! 31 March) on or after their fifth birthday (Education Act 1996, section 8, and the Education
//! (Start of Compulsory School Age) Order 1998). They stay of compulsory school age until the
//! last Friday in June of the school year, September to August, in which they turn sixteen.

use chrono::{Datelike, Days, NaiveDate, Weekday};

fn date(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, day)
}

/// Returns the first day of compulsory school age for a child born on `date_of_birth`.
pub fn compulsory_school_age_from(date_of_birth: NaiveDate) -> Option<NaiveDate> {
    let fifth = date_of_birth
        .with_year(date_of_birth.year() + 5)
        .or_else(|| {
            // Born on 29 February: the birthday falls on 1 March in a year that is not leap.
            date(date_of_birth.year() + 5, 3, 1)
        })?;
    let year = fifth.year();
    [date(year, 3, 31), date(year, 8, 31), date(year, 12, 31)]
        .into_iter()
        .flatten()
        .find(|prescribed| *prescribed >= fifth)
}

/// Returns the last day of compulsory school age for a child born on `date_of_birth`.
pub fn compulsory_school_age_until(date_of_birth: NaiveDate) -> Option<NaiveDate> {
    let sixteen_in = date_of_birth.year() + 16;
    // The school year containing the sixteenth birthday ends in the June of this year.
    let june_year = if date_of_birth.month() >= 9 {
        sixteen_in + 1
    } else {
        sixteen_in
    };
    let end_of_june = date(june_year, 6, 30)?;
    let back = u64::from(
        (end_of_june.weekday().num_days_from_monday() + 7 - Weekday::Fri.num_days_from_monday())
            % 7,
    );
    end_of_june.checked_sub_days(Days::new(back))
}

/// Returns true when a child born on `date_of_birth` is of compulsory school age on `on`.
pub fn is_compulsory_school_age(date_of_birth: NaiveDate, on: NaiveDate) -> bool {
    match (
        compulsory_school_age_from(date_of_birth),
        compulsory_school_age_until(date_of_birth),
    ) {
        (Some(from), Some(until)) => from <= on && on <= until,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn day(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
    }

    #[test]
    fn starts_on_prescribed_day_after_fifth_birthday() {
        assert_eq!(
            compulsory_school_age_from(day(2020, 10, 15)),
            Some(day(2025, 12, 31))
        );
        assert_eq!(
            compulsory_school_age_from(day(2021, 2, 1)),
            Some(day(2026, 3, 31))
        );
        assert_eq!(
            compulsory_school_age_from(day(2021, 5, 20)),
            Some(day(2026, 8, 31))
        );
        assert_eq!(
            compulsory_school_age_from(day(2020, 8, 31)),
            Some(day(2025, 8, 31))
        );
        assert_eq!(
            compulsory_school_age_from(day(2020, 2, 29)),
            Some(day(2025, 3, 31))
        );
    }

    #[test]
    fn ends_last_friday_of_june() {
        // Turns 16 on 1 May 2026: the last Friday in June 2026 is the 26th.
        assert_eq!(
            compulsory_school_age_until(day(2010, 5, 1)),
            Some(day(2026, 6, 26))
        );
        // Turns 16 on 1 October 2025, in the school year ending in 2026.
        assert_eq!(
            compulsory_school_age_until(day(2009, 10, 1)),
            Some(day(2026, 6, 26))
        );
        // Turns 16 on 31 August 2026, the last day of that school year.
        assert_eq!(
            compulsory_school_age_until(day(2010, 8, 31)),
            Some(day(2026, 6, 26))
        );
    }

    #[test]
    fn reception_child_may_be_below_compulsory_age() {
        let born = day(2021, 6, 1);
        assert!(
            !is_compulsory_school_age(born, day(2025, 9, 3)),
            "in Reception at four"
        );
        assert!(is_compulsory_school_age(born, day(2026, 9, 1)));
    }

    proptest! {
        #[test]
        fn window_is_about_eleven_years(days in 0i64..20_000) {
            let born = day(1990, 1, 1) + chrono::Duration::days(days);
            let from = compulsory_school_age_from(born).expect("start");
            let until = compulsory_school_age_until(born).expect("end");
            prop_assert!(from < until);
            prop_assert_eq!(until.weekday(), Weekday::Fri);
            prop_assert_eq!(until.month(), 6);
            let years = (until - from).num_days() as f64 / 365.25;
            prop_assert!((10.0..=11.6).contains(&years), "{} years", years);
        }
    }
}
