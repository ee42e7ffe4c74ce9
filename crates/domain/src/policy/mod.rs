//! Attendance policies: the rules a trust applies, each with the clause that sets it.
//!
//! Policies are data: each version is a TOML file (see [`file`]) with its effective dates. Two
//! ship with rollcall, the trust's 2021 attendance policy, which is the default, and the
//! statutory framework that applies from 19 August 2024.

use std::sync::LazyLock;

use chrono::{Datelike, Days, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::codes::{Category, category_of};
use crate::session::{SessionDate, academic_year_start};
use crate::stats::Figures;

pub mod alerts;
pub mod check;
pub mod decide;
pub mod file;
pub mod notices;
pub mod rewards;

/// The trust's 2021 policy as shipped.
pub const TRUST_2021_TOML: &str = include_str!("../../policies/aat-2021.toml");
/// The statutory framework of August 2024 as shipped.
pub const STATUTORY_2024_TOML: &str = include_str!("../../policies/statutory-2024.toml");

static TRUST_2021: LazyLock<Policy> = LazyLock::new(|| shipped(TRUST_2021_TOML));
static STATUTORY_2024: LazyLock<Policy> = LazyLock::new(|| shipped(STATUTORY_2024_TOML));

fn shipped(text: &str) -> Policy {
    match file::parse_policy(text) {
        Ok(document) => document.policy,
        // The tests in `file` parse both shipped files, so a broken one fails the tests.
        Err(error) => panic!("a policy shipped with rollcall is invalid: {error}"),
    }
}

/// The window over which unauthorised sessions count towards a penalty-notice threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ThresholdWindow {
    /// From 1 August of the academic year containing the as-of date.
    AcademicYear,
    /// The school term containing the as-of date (or the last term before it).
    Term,
    /// The twelve months ending on the as-of date.
    TwelveMonths,
    /// Any run of this many school weeks up to the as-of date, where a school week is any
    /// week with at least one session. The run may span terms and academic years.
    RollingSchoolWeeks {
        /// The number of school weeks in each window.
        weeks: u32,
    },
}

impl ThresholdWindow {
    /// Describes the window in plain English.
    pub fn describe(self) -> String {
        match self {
            Self::AcademicYear => "the academic year".to_owned(),
            Self::Term => "the term".to_owned(),
            Self::TwelveMonths => "the last 12 months".to_owned(),
            Self::RollingSchoolWeeks { weeks } => format!("a rolling {weeks} school weeks"),
        }
    }
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
    /// The codes that count; empty for every code of unauthorised absence.
    pub codes: Vec<String>,
    /// The clause that sets it.
    pub clause: Clause,
}

impl PenaltyThreshold {
    /// Returns true when a session with this code counts towards the threshold.
    pub fn counts(&self, code: &str) -> bool {
        if self.codes.is_empty() {
            category_of(code) == Category::UnauthorisedAbsence
        } else {
            self.codes.iter().any(|counted| counted == code)
        }
    }
}

/// Whether a policy is a trust's own or the statutory framework.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// A trust's or school's own attendance policy.
    Trust,
    /// The law and national guidance.
    Statutory,
}

impl PolicyKind {
    /// Returns the name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trust => "trust",
            Self::Statutory => "statutory",
        }
    }
}

/// The set of register codes a policy was written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodeSet {
    /// The codes of the 2006 regulations, in force until 18 August 2024.
    #[serde(rename = "2006")]
    Regulations2006,
    /// The codes of the 2024 regulations, in force from 19 August 2024.
    #[serde(rename = "2024")]
    Regulations2024,
}

impl CodeSet {
    /// Returns the name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regulations2006 => "2006",
            Self::Regulations2024 => "2024",
        }
    }

    /// Returns a date on which every code of the set is valid.
    pub fn first_valid_date(self) -> NaiveDate {
        match self {
            Self::Regulations2006 => date(2024, 8, 18),
            Self::Regulations2024 => date(2024, 8, 19),
        }
    }
}

/// When a policy is due for review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The date the next review is due.
    pub due: NaiveDate,
    /// The clause that sets the date.
    pub clause: Clause,
}

/// Penalty-notice amounts and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PenaltyNotice {
    /// The amount, in pounds, if paid within `reduced_days`.
    pub reduced_amount: u32,
    /// Days to pay the reduced amount.
    pub reduced_days: u32,
    /// The amount, in pounds, if paid within `full_days`.
    pub full_amount: u32,
    /// Days to pay the full amount.
    pub full_days: u32,
    /// The flat amount of a second notice to the same parent for the same child, if different.
    pub repeat_amount: Option<u32>,
    /// The maximum number of notices per parent per child within `limit_years`, if limited.
    pub max_notices: Option<u32>,
    /// The period, in years, that `max_notices` counts over.
    pub limit_years: Option<u32>,
    /// The clause that sets them.
    pub clause: Clause,
}

/// How long register entries are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The minimum number of years.
    pub years: u32,
    /// The clause that sets it.
    pub clause: Clause,
}

/// A reason for absence and the policy's decision on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonRule {
    /// The reason, for example `illness` or `holiday`.
    pub reason: String,
    /// True when the policy allows the absence to be authorised.
    pub authorised: bool,
    /// The register code recorded.
    pub code: String,
    /// The clause that sets it.
    pub clause: Clause,
}

/// Who decides on absence and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorisation {
    /// The roles that may decide: `headteacher` and `delegated_staff`.
    pub deciders: Vec<String>,
    /// The clause naming who decides.
    pub clause: Clause,
    /// The clause that makes a doubted explanation unauthorised.
    pub doubt_clause: Clause,
    /// Days of illness in a row after which medical evidence is needed, if ever.
    pub medical_evidence_after_days: Option<u32>,
    /// The clause about medical evidence.
    pub medical_evidence_clause: Option<Clause>,
    /// The reasons the policy names, authorised or not.
    pub reasons: Vec<ReasonRule>,
}

/// A rule counted in school days, such as how long an unexplained absence may stay unresolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayRule {
    /// The number of days.
    pub days: u32,
    /// The clause that sets it.
    pub clause: Clause,
}

/// When unauthorised absence must be reported to the local authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsenceReturnRule {
    /// The number of school days of unauthorised absence.
    pub days: u32,
    /// True when the days must run without a break; false when they may be spread out.
    pub continuous: bool,
    /// The clause that sets it.
    pub clause: Clause,
}

/// An attendance policy as rollcall applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Stable identifier, shared by every version of the policy.
    pub id: String,
    /// Title, as the policy names itself.
    pub title: String,
    /// The version, for example `November 2021`.
    pub version: String,
    /// A trust policy or the statutory framework.
    pub kind: PolicyKind,
    /// First date this version applies.
    pub effective_from: NaiveDate,
    /// Last date this version applies, if it has one.
    pub effective_to: Option<NaiveDate>,
    /// The policy's next review, if it sets one.
    pub review: Option<Review>,
    /// The register codes the policy was written for.
    pub code_set: CodeSet,
    /// The clause that relies on those codes.
    pub code_set_clause: Clause,
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
    /// Penalty-notice amounts and limits, if the policy sets them.
    pub penalty_notice: Option<PenaltyNotice>,
    /// The retention period for register entries, if the policy sets one.
    pub register_retention: Option<Retention>,
    /// Who decides on absence, and the reasons that are and are not authorised.
    pub authorisation: Authorisation,
    /// School days within which an unexplained absence (N) must be resolved, if set.
    pub unexplained_absence: Option<DayRule>,
    /// The return to the local authority for unauthorised absence, if set.
    pub unauthorised_absence_return: Option<AbsenceReturnRule>,
    /// The return to the local authority for long sickness, in days in the academic year, if
    /// set.
    pub sickness_return: Option<DayRule>,
    /// The criteria for rewards, if the policy offers them.
    pub rewards: Option<rewards::RewardRules>,
}

impl Policy {
    /// Returns the trust's attendance policy, last reviewed in November 2021, which is the default.
    pub fn trust_2021() -> Self {
        TRUST_2021.clone()
    }

    /// Returns the statutory framework in force from 19 August 2024.
    pub fn statutory_2024() -> Self {
        STATUTORY_2024.clone()
    }

    /// Returns true when this version is in force on `date`.
    pub fn in_force_on(&self, date: NaiveDate) -> bool {
        date >= self.effective_from && self.effective_to.is_none_or(|to| date <= to)
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
    evaluate_penalty_threshold_in_terms(threshold, marks, as_of, &[])
}

/// Evaluates a penalty-notice threshold as [`evaluate_penalty_threshold`] does, with the
/// school's terms (first and last day) for a window of one term. Without terms, or before the
/// first term, a term window counts from the start of the academic year.
pub fn evaluate_penalty_threshold_in_terms(
    threshold: &PenaltyThreshold,
    marks: &[(SessionDate, &str)],
    as_of: NaiveDate,
    terms: &[(NaiveDate, NaiveDate)],
) -> ThresholdEvaluation {
    let mut marks: Vec<(SessionDate, &str)> = marks
        .iter()
        .copied()
        .filter(|(session, _)| session.date <= as_of)
        .collect();
    marks.sort_by_key(|(session, _)| *session);

    match threshold.window {
        ThresholdWindow::AcademicYear => {
            count_in_dates(threshold, &marks, academic_year_start(as_of), as_of)
        }
        ThresholdWindow::Term => {
            let from = terms
                .iter()
                .filter(|(first, _)| *first <= as_of)
                .map(|(first, _)| *first)
                .max()
                .unwrap_or_else(|| academic_year_start(as_of));
            count_in_dates(threshold, &marks, from, as_of)
        }
        ThresholdWindow::TwelveMonths => {
            let from = as_of
                .checked_sub_months(chrono::Months::new(12))
                .and_then(|d| d.checked_add_days(Days::new(1)))
                .unwrap_or(NaiveDate::MIN);
            count_in_dates(threshold, &marks, from, as_of)
        }
        ThresholdWindow::RollingSchoolWeeks { weeks } => {
            rolling_school_weeks(threshold, weeks, &marks, as_of)
        }
    }
}

fn count_in_dates(
    rule: &PenaltyThreshold,
    marks: &[(SessionDate, &str)],
    from: NaiveDate,
    to: NaiveDate,
) -> ThresholdEvaluation {
    let threshold = rule.sessions;
    let sessions: Vec<(SessionDate, String)> = marks
        .iter()
        .filter(|(session, code)| session.date >= from && session.date <= to && rule.counts(code))
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
    threshold: &PenaltyThreshold,
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
