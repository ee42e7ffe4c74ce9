//! Attendance policies: the thresholds a trust applies, each with the clause that sets it.
//!
//! Two policies ship with rollcall: the trust's 2021 attendance policy, which is the default,
//! and the statutory framework that applies from 19 August 2024.

use chrono::{Datelike, Days, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::codes::{Category, category_of};
use crate::session::{SessionDate, academic_year_start};
use crate::stats::Figures;

/// The window over which unauthorised sessions count towards a penalty-notice threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ThresholdWindow {
    /// From 1 August of the academic year containing the as-of date.
    AcademicYear,
    /// The twelve months ending on the as-of date.
    TwelveMonths,
    /// Any run of this many school weeks up to the as-of date, where a school week is any
    /// week with at least one session. The run may span terms and academic years.
    RollingSchoolWeeks {
        /// The number of school weeks in each window.
        weeks: u32,
    },
}

/// A rule's value with the clause of the policy that sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clause {
    /// The clause reference, for example `3.5`.
    pub reference: String,
    /// A short summary of the clause.
    pub summary: String,
}

/// The penalty-notice warning threshold of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PenaltyThreshold {
    /// Unauthorised sessions that meet the threshold.
    pub sessions: u32,
    /// The window they are counted over.
    pub window: ThresholdWindow,
    /// The clause that sets it.
    pub clause: Clause,
}

/// An attendance policy as rollcall applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Stable identifier.
    pub id: String,
    /// Title, as the policy names itself.
    pub title: String,
    /// First date it applies.
    pub effective_from: NaiveDate,
    /// Absence, in percent of possible sessions, at or above which a pupil is persistently
    /// absent.
    pub persistent_absence_percent: u32,
    /// The clause that defines persistent absence.
    pub persistent_absence_clause: Clause,
    /// Absence, in percent of possible sessions, at or above which a pupil is severely absent.
    pub severe_absence_percent: u32,
    /// The source of the definition of severe absence.
    pub severe_absence_clause: Clause,
    /// The penalty-notice warning threshold.
    pub penalty_warning: PenaltyThreshold,
}

impl Policy {
    /// Returns the trust's attendance policy, last reviewed in November 2021, which is the default.
    pub fn trust_2021() -> Self {
        Self {
            id: "aat-2021".into(),
            title: "AAT Attendance Policy (November 2021)".into(),
            effective_from: date(2021, 11, 1),
            persistent_absence_percent: 10,
            persistent_absence_clause: Clause {
                reference: "3.5".into(),
                summary: "Persistent absence is absence of 10% or more".into(),
            },
            severe_absence_percent: 50,
            severe_absence_clause: Clause {
                reference: "DfE severe absence".into(),
                summary: "Severe absence is absence of 50% or more of possible sessions".into(),
            },
            penalty_warning: PenaltyThreshold {
                sessions: 15,
                window: ThresholdWindow::AcademicYear,
                clause: Clause {
                    reference: "4.10".into(),
                    summary: "A warning letter when unauthorised absences total 15 or more \
                              half-day sessions, before applying for a Fixed Penalty Notice"
                        .into(),
                },
            },
        }
    }

    /// Returns the statutory framework in force from 19 August 2024.
    pub fn statutory_2024() -> Self {
        Self {
            id: "statutory-2024".into(),
            title: "Working together to improve school attendance and the national framework \
                    for penalty notices (August 2024)"
                .into(),
            effective_from: date(2024, 8, 19),
            persistent_absence_percent: 10,
            persistent_absence_clause: Clause {
                reference: "DfE persistent absence".into(),
                summary: "Persistent absence is absence of 10% or more of possible sessions".into(),
            },
            severe_absence_percent: 50,
            severe_absence_clause: Clause {
                reference: "DfE severe absence".into(),
                summary: "Severe absence is absence of 50% or more of possible sessions".into(),
            },
            penalty_warning: PenaltyThreshold {
                sessions: 10,
                window: ThresholdWindow::RollingSchoolWeeks { weeks: 10 },
                clause: Clause {
                    reference: "National framework for penalty notices".into(),
                    summary: "A penalty notice is considered at 10 sessions of unauthorised \
                              absence (G, N, O, U) within a rolling 10 school weeks"
                        .into(),
                },
            },
        }
    }
}

impl Policy {
    /// Returns true when the figures meet the policy's persistent-absence threshold.
    pub fn is_persistent_absence(&self, figures: &Figures) -> bool {
        figures.absence_at_least(self.persistent_absence_percent)
    }

    /// Returns true when the figures meet the policy's severe-absence threshold.
    pub fn is_severe_absence(&self, figures: &Figures) -> bool {
        figures.absence_at_least(self.severe_absence_percent)
    }
}

/// A pupil's position against a penalty-notice threshold on a date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdEvaluation {
    /// The threshold in sessions.
    pub threshold: u32,
    /// Unauthorised sessions counted in `window_from..=window_to`.
    pub counted: u32,
    /// True when `counted` reached `threshold`.
    pub met: bool,
    /// First date of the window counted.
    pub window_from: NaiveDate,
    /// Last date of the window counted.
    pub window_to: NaiveDate,
    /// The unauthorised sessions counted, in date order, with their codes.
    pub sessions: Vec<(SessionDate, String)>,
}

/// Evaluates a penalty-notice threshold from a pupil's effective marks up to `as_of`.
///
/// `marks` may be in any order. For a rolling window, the evaluation reports the first window
/// that met the threshold, or the latest window when none did.
pub fn evaluate_penalty_threshold(
    threshold: &PenaltyThreshold,
    marks: &[(SessionDate, &str)],
    as_of: NaiveDate,
) -> ThresholdEvaluation {
    let mut marks: Vec<(SessionDate, &str)> = marks
        .iter()
        .copied()
        .filter(|(session, _)| session.date <= as_of)
        .collect();
    marks.sort_by_key(|(session, _)| *session);

    match threshold.window {
        ThresholdWindow::AcademicYear => count_in_dates(
            threshold.sessions,
            &marks,
            academic_year_start(as_of),
            as_of,
        ),
        ThresholdWindow::TwelveMonths => {
            let from = as_of
                .checked_sub_months(chrono::Months::new(12))
                .and_then(|d| d.checked_add_days(Days::new(1)))
                .unwrap_or(NaiveDate::MIN);
            count_in_dates(threshold.sessions, &marks, from, as_of)
        }
        ThresholdWindow::RollingSchoolWeeks { weeks } => {
            rolling_school_weeks(threshold.sessions, weeks, &marks, as_of)
        }
    }
}

fn count_in_dates(
    threshold: u32,
    marks: &[(SessionDate, &str)],
    from: NaiveDate,
    to: NaiveDate,
) -> ThresholdEvaluation {
    let sessions: Vec<(SessionDate, String)> = marks
        .iter()
        .filter(|(session, code)| {
            session.date >= from
                && session.date <= to
                && category_of(code) == Category::UnauthorisedAbsence
        })
        .map(|(session, code)| (*session, (*code).to_owned()))
        .collect();
    let counted = u32::try_from(sessions.len()).unwrap_or(u32::MAX);
    ThresholdEvaluation {
        threshold,
        counted,
        met: counted >= threshold,
        window_from: from,
        window_to: to,
        sessions,
    }
}

/// Returns the Monday of the week containing `date`.
fn week_start(date: NaiveDate) -> NaiveDate {
    let offset = u64::from(date.weekday().num_days_from_monday());
    date.checked_sub_days(Days::new(offset)).unwrap_or(date)
}

fn rolling_school_weeks(
    threshold: u32,
    weeks: u32,
    marks: &[(SessionDate, &str)],
    as_of: NaiveDate,
) -> ThresholdEvaluation {
    // A school week is a week with at least one session the school was open for; a planned
    // closure (#) is not a session.
    let mut school_weeks: Vec<NaiveDate> = marks
        .iter()
        .filter(|(_, code)| *code != "#")
        .map(|(session, _)| week_start(session.date))
        .collect();
    school_weeks.dedup();

    if school_weeks.is_empty() {
        return count_in_dates(threshold, marks, week_start(as_of), as_of);
    }
    let span = usize::try_from(weeks.max(1)).unwrap_or(usize::MAX);
    let mut latest = None;
    for end in 0..school_weeks.len() {
        let first = school_weeks[end.saturating_sub(span - 1)];
        let last_day = school_weeks[end]
            .checked_add_days(Days::new(6))
            .unwrap_or(as_of)
            .min(as_of);
        let evaluation = count_in_dates(threshold, marks, first, last_day);
        if evaluation.met {
            return evaluation;
        }
        latest = Some(evaluation);
    }
    latest.unwrap_or_else(|| count_in_dates(threshold, marks, week_start(as_of), as_of))
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).unwrap_or(NaiveDate::MIN)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::session::Session;

    fn at(date: NaiveDate, session: Session) -> SessionDate {
        SessionDate { date, session }
    }

    /// Marks for every weekday session from `start` for `days` calendar days, all `code`.
    fn weekdays(
        start: NaiveDate,
        days: u64,
        code: &'static str,
    ) -> Vec<(SessionDate, &'static str)> {
        (0..days)
            .filter_map(|offset| start.checked_add_days(Days::new(offset)))
            .filter(|day| day.weekday().num_days_from_monday() < 5)
            .flat_map(|day| [(at(day, Session::Am), code), (at(day, Session::Pm), code)])
            .collect()
    }

    #[test]
    fn trust_policy_meets_at_fifteen_in_academic_year() {
        let policy = Policy::trust_2021();
        let mut marks = weekdays(date(2025, 9, 1), 28, "/");
        for (_, code) in marks.iter_mut().take(15) {
            *code = "O";
        }
        let evaluation =
            evaluate_penalty_threshold(&policy.penalty_warning, &marks, date(2025, 10, 1));
        assert_eq!(evaluation.counted, 15);
        assert!(evaluation.met);
        assert_eq!(evaluation.window_from, date(2025, 8, 1));
        assert_eq!(evaluation.sessions.len(), 15);

        marks[0].1 = "I";
        let evaluation =
            evaluate_penalty_threshold(&policy.penalty_warning, &marks, date(2025, 10, 1));
        assert_eq!(evaluation.counted, 14);
        assert!(!evaluation.met);
    }

    #[test]
    fn academic_year_window_ignores_last_year() {
        let policy = Policy::trust_2021();
        let marks = weekdays(date(2025, 7, 7), 10, "G");
        let evaluation =
            evaluate_penalty_threshold(&policy.penalty_warning, &marks, date(2025, 9, 30));
        assert_eq!(evaluation.counted, 0);
    }

    #[test]
    fn rolling_weeks_span_holidays_and_years() {
        let policy = Policy::statutory_2024();
        // Five unauthorised sessions in the last school week of July and five in the first
        // week of September: the summer holiday has no sessions, so these are adjacent school
        // weeks.
        let mut marks = weekdays(date(2025, 7, 14), 5, "/");
        marks.extend(weekdays(date(2025, 9, 1), 5, "/"));
        for (_, code) in marks.iter_mut().take(5) {
            *code = "U";
        }
        let len = marks.len();
        for (_, code) in marks[len - 5..].iter_mut() {
            *code = "N";
        }
        let evaluation =
            evaluate_penalty_threshold(&policy.penalty_warning, &marks, date(2025, 9, 5));
        assert_eq!(evaluation.counted, 10);
        assert!(evaluation.met);
    }

    #[test]
    fn rolling_weeks_drop_old_sessions() {
        let policy = Policy::statutory_2024();
        let mut marks = weekdays(date(2025, 9, 1), 7 * 12, "/");
        // Five unauthorised sessions in week 1 and five in week 11: never ten within ten weeks.
        for (_, code) in marks.iter_mut().take(5) {
            *code = "O";
        }
        let week_eleven = 10 * 10;
        for (_, code) in marks[week_eleven..week_eleven + 5].iter_mut() {
            *code = "O";
        }
        let evaluation =
            evaluate_penalty_threshold(&policy.penalty_warning, &marks, date(2025, 11, 30));
        assert!(!evaluation.met);
        assert_eq!(evaluation.counted, 5);
    }

    proptest! {
        #[test]
        fn academic_year_count_equals_unauthorised_marks(
            codes in proptest::collection::vec(proptest::sample::select(vec!["/", "O", "G", "I", "U", "#", "L"]), 0..300)
        ) {
            let start = date(2025, 9, 1);
            let marks: Vec<(SessionDate, &str)> = codes
                .iter()
                .enumerate()
                .map(|(index, code)| {
                    let day = start.checked_add_days(Days::new((index / 2) as u64)).expect("in range");
                    let session = if index % 2 == 0 { Session::Am } else { Session::Pm };
                    (at(day, session), *code)
                })
                .collect();
            let as_of = date(2026, 7, 31);
            let evaluation = evaluate_penalty_threshold(&Policy::trust_2021().penalty_warning, &marks, as_of);
            let expected = codes.iter().filter(|code| matches!(**code, "O" | "G" | "U")).count() as u32;
            prop_assert_eq!(evaluation.counted, expected);
            prop_assert_eq!(evaluation.met, expected >= 15);
        }
    }
}
