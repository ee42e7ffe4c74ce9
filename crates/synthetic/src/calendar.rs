//! One school's term as a list of calendar days, with how likely absence is on each open day.

use chrono::{Datelike, NaiveDate, Weekday};

use crate::spec::{SchoolSpec, Term};

/// The kind of a calendar day for one school.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DayKind {
    Open,
    Weekend,
    /// A holiday inside the term, such as half-term.
    Break,
    /// A closure of this school alone, such as an INSET day.
    Closure,
}

/// One school's days from the first to the last day of the term, indexed from 0.
#[derive(Debug, Clone)]
pub(crate) struct SchoolCalendar {
    first_day: NaiveDate,
    kinds: Vec<DayKind>,
    /// Calendar indexes of the open days, in order.
    open_days: Vec<usize>,
    /// Relative likelihood of absence on each calendar day (0 on days the school is closed),
    /// averaging about 1 over the open days.
    absence_weights: Vec<f64>,
}

/// School days at the start of term when absence is lower than usual.
const FIRST_WEEK: usize = 5;
/// Weight of absence in the first week of term.
const FIRST_WEEK_WEIGHT: f64 = 0.8;
/// Weight of absence in the last week before a break.
const BEFORE_BREAK_WEIGHT: f64 = 1.25;
/// Weight of absence in the last week of term.
const LAST_WEEK_WEIGHT: f64 = 1.4;
/// Weight of absence in the second-last week of term.
const SECOND_LAST_WEEK_WEIGHT: f64 = 1.2;

impl SchoolCalendar {
    pub(crate) fn new(term: &Term, school: &SchoolSpec) -> Self {
        let kinds: Vec<DayKind> = term
            .first_day
            .iter_days()
            .take_while(|day| *day <= term.last_day)
            .map(|day| day_kind(term, school, day))
            .collect();
        let open_days = kinds
            .iter()
            .enumerate()
            .filter(|(_, kind)| **kind == DayKind::Open)
            .map(|(index, _)| index)
            .collect();
        let absence_weights = absence_weights(&kinds);
        Self {
            first_day: term.first_day,
            kinds,
            open_days,
            absence_weights,
        }
    }

    /// Returns the number of calendar days in the term.
    pub(crate) fn len(&self) -> usize {
        self.kinds.len()
    }

    pub(crate) fn date(&self, index: usize) -> NaiveDate {
        self.first_day
            .checked_add_days(chrono::Days::new(index as u64))
            .expect("term dates are within chrono's range")
    }

    pub(crate) fn is_open(&self, index: usize) -> bool {
        self.kinds[index] == DayKind::Open
    }

    /// Returns the calendar indexes of the open days, in order.
    pub(crate) fn open_days(&self) -> &[usize] {
        &self.open_days
    }

    pub(crate) fn absence_weight(&self, index: usize) -> f64 {
        self.absence_weights[index]
    }

    /// Returns the positions in [`Self::open_days`] of the first open day after each break.
    pub(crate) fn break_ends(&self) -> Vec<usize> {
        self.open_days
            .windows(2)
            .enumerate()
            .filter(|(_, pair)| (pair[0]..pair[1]).any(|index| self.kinds[index] == DayKind::Break))
            .map(|(position, _)| position + 1)
            .collect()
    }
}

fn day_kind(term: &Term, school: &SchoolSpec, day: NaiveDate) -> DayKind {
    if matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
        DayKind::Weekend
    } else if term.is_break(day) {
        DayKind::Break
    } else if school.closures.contains(&day) {
        DayKind::Closure
    } else {
        DayKind::Open
    }
}

/// Weights absence by the open day's place in the term. Absence is lower in the first week,
/// higher in the week before a break and highest in the last two weeks of term.
fn absence_weights(kinds: &[DayKind]) -> Vec<f64> {
    let mut weights = vec![0.0; kinds.len()];

    // Walk backwards, counting open days up to the next break or the end of term.
    let mut days_to_boundary = 0;
    let mut boundary_is_term_end = true;
    let mut crossed_break = false;
    for index in (0..kinds.len()).rev() {
        match kinds[index] {
            DayKind::Break => crossed_break = true,
            DayKind::Open => {
                if crossed_break {
                    days_to_boundary = 0;
                    boundary_is_term_end = false;
                    crossed_break = false;
                }
                days_to_boundary += 1;
                weights[index] = boundary_weight(days_to_boundary, boundary_is_term_end);
            }
            DayKind::Weekend | DayKind::Closure => {}
        }
    }

    let first_week = kinds
        .iter()
        .enumerate()
        .filter(|(_, kind)| **kind == DayKind::Open)
        .take(FIRST_WEEK);
    for (index, _) in first_week {
        weights[index] = FIRST_WEEK_WEIGHT;
    }
    weights
}

/// Weight of an open day that is `days_to_boundary` open days (1 for the last) before a break
/// or the end of term.
fn boundary_weight(days_to_boundary: usize, boundary_is_term_end: bool) -> f64 {
    match (boundary_is_term_end, days_to_boundary) {
        (true, 1..=5) => LAST_WEEK_WEIGHT,
        (true, 6..=10) => SECOND_LAST_WEEK_WEIGHT,
        (false, 1..=5) => BEFORE_BREAK_WEIGHT,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TrustSpec;

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).expect("valid test date")
    }

    fn index_of(calendar: &SchoolCalendar, day: NaiveDate) -> usize {
        (day - calendar.first_day).num_days() as usize
    }

    #[test]
    fn autumn_2025_open_days() {
        let spec = TrustSpec::demo(1);
        let infant = SchoolCalendar::new(&spec.term, &spec.schools[0]);
        let secondary = SchoolCalendar::new(&spec.term, &spec.schools[2]);
        assert_eq!(infant.len(), 108);
        assert_eq!(infant.open_days().len(), 73);
        assert_eq!(secondary.open_days().len(), 72, "one INSET day");
    }

    #[test]
    fn break_ends_after_half_term() {
        let spec = TrustSpec::demo(1);
        let calendar = SchoolCalendar::new(&spec.term, &spec.schools[0]);
        let ends = calendar.break_ends();
        assert_eq!(ends.len(), 1);
        let first_day_back = calendar.date(calendar.open_days()[ends[0]]);
        assert_eq!(first_day_back, date(2025, 11, 3));
    }

    #[test]
    fn absence_weights_by_place_in_term() {
        let spec = TrustSpec::demo(1);
        let calendar = SchoolCalendar::new(&spec.term, &spec.schools[0]);
        let weight = |day| calendar.absence_weight(index_of(&calendar, day));
        assert_eq!(weight(date(2025, 9, 3)), FIRST_WEEK_WEIGHT);
        assert_eq!(weight(date(2025, 9, 16)), 1.0);
        assert_eq!(weight(date(2025, 10, 24)), BEFORE_BREAK_WEIGHT);
        assert_eq!(weight(date(2025, 10, 25)), 0.0, "Saturday");
        assert_eq!(weight(date(2025, 12, 10)), SECOND_LAST_WEEK_WEIGHT);
        assert_eq!(weight(date(2025, 12, 19)), LAST_WEEK_WEIGHT);
    }
}
