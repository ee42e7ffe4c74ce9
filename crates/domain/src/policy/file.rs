//! Policy files: an attendance policy written as TOML, one version per file.
//!
//! The format is described in `docs/policies.md`. Parsing checks every rule: an unknown key, a
//! rule without a clause or an impossible threshold is an error that names the key and the
//! line. Parsing does no I/O; callers read the file.

use std::ops::Range;

use chrono::NaiveDate;
use serde::Deserialize;
use toml::Spanned;

use super::rewards::RewardRules;
use super::{
    AbsenceReturnRule, Authorisation, Clause, CodeSet, DayRule, PenaltyNotice, PenaltyThreshold,
    Policy, PolicyKind, ReasonRule, Retention, Review, ThresholdWindow,
};
use crate::codes::{self, Category};

/// The only format version this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// Roles that may be named as deciders in a policy file.
pub const DECIDER_ROLES: [&str; 2] = ["headteacher", "delegated_staff"];

/// A problem in a policy file, with the line and key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {key}: {message}")]
pub struct PolicyFileError {
    /// The line, counting from 1.
    pub line: usize,
    /// The key, as a dotted path such as `penalty_warning.sessions`.
    pub key: String,
    /// The problem and the fix.
    pub message: String,
}

/// A policy read from a file, with the line of its effective dates for later checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    /// The policy.
    pub policy: Policy,
    /// The line of `effective_from`.
    pub effective_from_line: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    format: Spanned<u32>,
    id: Spanned<String>,
    title: Spanned<String>,
    version: Spanned<String>,
    kind: Spanned<String>,
    effective_from: Spanned<String>,
    effective_to: Option<Spanned<String>>,
    review: Option<RawReview>,
    codes: RawCodes,
    persistent_absence: RawPercent,
    severe_absence: RawPercent,
    penalty_warning: RawPenaltyWarning,
    penalty_notice: Option<RawPenaltyNotice>,
    register_retention: Option<RawRetention>,
    authorisation: RawAuthorisation,
    unexplained_absence: Option<RawSchoolDays>,
    unauthorised_absence_return: Option<RawAbsenceReturn>,
    sickness_return: Option<RawDays>,
    rewards: Option<RawRewards>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewards {
    excellent_attendance_percent: Spanned<u32>,
    much_improved_points: Spanned<u32>,
    excellent_punctuality_lates: Spanned<u32>,
    much_improved_punctuality_lates: Spanned<u32>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchoolDays {
    school_days: Spanned<u32>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbsenceReturn {
    days: Spanned<u32>,
    continuous: bool,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDays {
    days: Spanned<u32>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReview {
    due: Spanned<String>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCodes {
    set: Spanned<String>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPercent {
    percent: Spanned<u32>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPenaltyWarning {
    sessions: Spanned<u32>,
    window: Spanned<String>,
    weeks: Option<Spanned<u32>>,
    #[serde(default)]
    codes: Vec<Spanned<String>>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPenaltyNotice {
    reduced_amount: Spanned<u32>,
    reduced_days: Spanned<u32>,
    full_amount: Spanned<u32>,
    full_days: Spanned<u32>,
    repeat_amount: Option<Spanned<u32>>,
    max_notices: Option<Spanned<u32>>,
    limit_years: Option<Spanned<u32>>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    years: Spanned<u32>,
    clause: Spanned<String>,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorisation {
    deciders: Spanned<Vec<String>>,
    clause: Spanned<String>,
    text: String,
    doubt_clause: Spanned<String>,
    doubt_text: String,
    medical_evidence_after_days: Option<Spanned<u32>>,
    medical_evidence_clause: Option<Spanned<String>>,
    medical_evidence_text: Option<String>,
    #[serde(default)]
    reasons: Vec<RawReason>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReason {
    reason: Spanned<String>,
    authorised: Spanned<bool>,
    code: Spanned<String>,
    clause: Spanned<String>,
    text: String,
}

/// Reads a policy file, checking every rule.
pub fn parse_policy(text: &str) -> Result<PolicyDocument, PolicyFileError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|error| syntax_error(text, &error))?;
    Reader { text }.policy(raw)
}

/// Turns an error from the TOML reader into one that names the full key and the line.
pub(crate) fn syntax_error(text: &str, error: &toml::de::Error) -> PolicyFileError {
    let line = error.span().map_or(1, |span| line_of(text, span.start));
    let message = error.message().trim().to_owned();
    let table = table_at(text, line);
    let about_a_field =
        message.starts_with("missing field") || message.starts_with("unknown field");
    let key = match key_in_message(&message).filter(|_| about_a_field) {
        // The message names the field; its table completes the key.
        Some(field) => join_key(table.as_deref(), &field),
        // Otherwise the key is the one written on the line.
        None => match key_on_line(text, line) {
            Some(key) => join_key(table.as_deref(), &key),
            None => table.clone().unwrap_or_else(|| "(file)".to_owned()),
        },
    };
    let message = if message.starts_with("missing field") {
        format!("{message}; every rule needs it")
    } else {
        message
    };
    PolicyFileError { line, key, message }
}

fn join_key(table: Option<&str>, key: &str) -> String {
    match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_owned(),
    }
}

/// Returns the name of the table (`[name]` or `[[name]]`) that `line` belongs to.
fn table_at(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter_map(|row| {
            let row = row.trim();
            row.starts_with('[')
                .then(|| row.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
        })
        .last()
}

/// Returns the key written at the start of `line`, as in `sessions = 15`.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let row = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = row.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
}

/// Returns the line (from 1) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Picks the key out of a message such as "unknown field `foo`, expected ...".
fn key_in_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let length = message[start..].find('`')?;
    Some(message[start..start + length].to_owned())
}

struct Reader<'a> {
    text: &'a str,
}

impl Reader<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> PolicyFileError {
        PolicyFileError {
            line: line_of(self.text, span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn date(&self, value: &Spanned<String>, key: &str) -> Result<NaiveDate, PolicyFileError> {
        NaiveDate::parse_from_str(value.get_ref(), "%Y-%m-%d").map_err(|_| {
            self.error(
                value.span(),
                key,
                format!(
                    "\"{}\" is not a date; write it as YYYY-MM-DD, for example \"2024-08-19\"",
                    value.get_ref()
                ),
            )
        })
    }

    fn clause(
        &self,
        reference: &Spanned<String>,
        text: &str,
        key: &str,
    ) -> Result<Clause, PolicyFileError> {
        if reference.get_ref().trim().is_empty() {
            return Err(self.error(
                reference.span(),
                key,
                "every rule needs the clause that sets it, such as \"3.5\" or \"SI 2024/208 reg 7\"",
            ));
        }
        Ok(Clause {
            reference: reference.get_ref().trim().to_owned(),
            summary: text.trim().to_owned(),
        })
    }

    fn not_empty(&self, value: &Spanned<String>, key: &str) -> Result<String, PolicyFileError> {
        let trimmed = value.get_ref().trim();
        if trimmed.is_empty() {
            return Err(self.error(value.span(), key, "must not be empty"));
        }
        Ok(trimmed.to_owned())
    }

    fn within(
        &self,
        value: &Spanned<u32>,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
        unit: &str,
    ) -> Result<u32, PolicyFileError> {
        let number = *value.get_ref();
        if !range.contains(&number) {
            return Err(self.error(
                value.span(),
                key,
                format!(
                    "{number} is not a possible value; use {} to {} {unit}",
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(number)
    }

    fn policy(&self, raw: RawPolicy) -> Result<PolicyDocument, PolicyFileError> {
        if *raw.format.get_ref() != FORMAT_VERSION {
            return Err(self.error(
                raw.format.span(),
                "format",
                format!(
                    "format {} is not supported; this version of rollcall reads format {FORMAT_VERSION}",
                    raw.format.get_ref()
                ),
            ));
        }
        let id = self.not_empty(&raw.id, "id")?;
        if !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(self.error(
                raw.id.span(),
                "id",
                format!(
                    "\"{id}\" may use only lower-case letters, digits and hyphens, such as \"aat-2021\""
                ),
            ));
        }
        let kind = match raw.kind.get_ref().as_str() {
            "trust" => PolicyKind::Trust,
            "statutory" => PolicyKind::Statutory,
            other => {
                return Err(self.error(
                    raw.kind.span(),
                    "kind",
                    format!("\"{other}\" is not a kind of policy; use \"trust\" or \"statutory\""),
                ));
            }
        };
        let effective_from = self.date(&raw.effective_from, "effective_from")?;
        let effective_to = match &raw.effective_to {
            Some(value) => {
                let to = self.date(value, "effective_to")?;
                if to < effective_from {
                    return Err(self.error(
                        value.span(),
                        "effective_to",
                        format!("{to} is before effective_from {effective_from}"),
                    ));
                }
                Some(to)
            }
            None => None,
        };
        let review = match &raw.review {
            Some(review) => Some(Review {
                due: self.date(&review.due, "review.due")?,
                clause: self.clause(&review.clause, &review.text, "review.clause")?,
            }),
            None => None,
        };
        let code_set = match raw.codes.set.get_ref().as_str() {
            "2006" => CodeSet::Regulations2006,
            "2024" => CodeSet::Regulations2024,
            other => {
                return Err(self.error(
                    raw.codes.set.span(),
                    "codes.set",
                    format!(
                        "\"{other}\" is not a set of register codes; use \"2006\" (before 19 August 2024) or \"2024\""
                    ),
                ));
            }
        };
        let code_set_clause = self.clause(&raw.codes.clause, &raw.codes.text, "codes.clause")?;

        let persistent = self.within(
            &raw.persistent_absence.percent,
            "persistent_absence.percent",
            1..=100,
            "percent",
        )?;
        let severe = self.within(
            &raw.severe_absence.percent,
            "severe_absence.percent",
            1..=100,
            "percent",
        )?;
        if severe <= persistent {
            return Err(self.error(
                raw.severe_absence.percent.span(),
                "severe_absence.percent",
                format!("{severe}% must be more than persistent_absence.percent ({persistent}%)"),
            ));
        }

        let penalty_warning = self.penalty_warning(&raw.penalty_warning)?;
        let penalty_notice = match &raw.penalty_notice {
            Some(notice) => Some(self.penalty_notice(notice)?),
            None => None,
        };
        let register_retention = match &raw.register_retention {
            Some(retention) => Some(Retention {
                years: self.within(
                    &retention.years,
                    "register_retention.years",
                    1..=100,
                    "years",
                )?,
                clause: self.clause(
                    &retention.clause,
                    &retention.text,
                    "register_retention.clause",
                )?,
            }),
            None => None,
        };
        let authorisation = self.authorisation(&raw.authorisation, code_set)?;
        let unexplained_absence = match &raw.unexplained_absence {
            Some(rule) => Some(DayRule {
                days: self.within(
                    &rule.school_days,
                    "unexplained_absence.school_days",
                    1..=60,
                    "school days",
                )?,
                clause: self.clause(&rule.clause, &rule.text, "unexplained_absence.clause")?,
            }),
            None => None,
        };
        let unauthorised_absence_return = match &raw.unauthorised_absence_return {
            Some(rule) => Some(AbsenceReturnRule {
                days: self.within(
                    &rule.days,
                    "unauthorised_absence_return.days",
                    1..=200,
                    "school days",
                )?,
                continuous: rule.continuous,
                clause: self.clause(
                    &rule.clause,
                    &rule.text,
                    "unauthorised_absence_return.clause",
                )?,
            }),
            None => None,
        };
        let rewards = match &raw.rewards {
            Some(rule) => Some(RewardRules {
                excellent_attendance_percent: self.within(
                    &rule.excellent_attendance_percent,
                    "rewards.excellent_attendance_percent",
                    1..=100,
                    "percent",
                )?,
                much_improved_points: self.within(
                    &rule.much_improved_points,
                    "rewards.much_improved_points",
                    1..=100,
                    "percentage points",
                )?,
                excellent_punctuality_lates: self.within(
                    &rule.excellent_punctuality_lates,
                    "rewards.excellent_punctuality_lates",
                    0..=100,
                    "late marks",
                )?,
                much_improved_punctuality_lates: self.within(
                    &rule.much_improved_punctuality_lates,
                    "rewards.much_improved_punctuality_lates",
                    1..=100,
                    "late marks",
                )?,
                clause: self.clause(&rule.clause, &rule.text, "rewards.clause")?,
            }),
            None => None,
        };
        let sickness_return = match &raw.sickness_return {
            Some(rule) => Some(DayRule {
                days: self.within(&rule.days, "sickness_return.days", 1..=200, "days")?,
                clause: self.clause(&rule.clause, &rule.text, "sickness_return.clause")?,
            }),
            None => None,
        };

        let policy = Policy {
            id,
            title: self.not_empty(&raw.title, "title")?,
            version: self.not_empty(&raw.version, "version")?,
            kind,
            effective_from,
            effective_to,
            review,
            code_set,
            code_set_clause,
            persistent_absence_percent: persistent,
            persistent_absence_clause: self.clause(
                &raw.persistent_absence.clause,
                &raw.persistent_absence.text,
                "persistent_absence.clause",
            )?,
            severe_absence_percent: severe,
            severe_absence_clause: self.clause(
                &raw.severe_absence.clause,
                &raw.severe_absence.text,
                "severe_absence.clause",
            )?,
            penalty_warning,
            penalty_notice,
            register_retention,
            authorisation,
            unexplained_absence,
            unauthorised_absence_return,
            sickness_return,
            rewards,
        };
        Ok(PolicyDocument {
            policy,
            effective_from_line: line_of(self.text, raw.effective_from.span().start),
        })
    }

    fn penalty_warning(
        &self,
        raw: &RawPenaltyWarning,
    ) -> Result<PenaltyThreshold, PolicyFileError> {
        let sessions = self.within(
            &raw.sessions,
            "penalty_warning.sessions",
            1..=400,
            "sessions",
        )?;
        let window = match (raw.window.get_ref().as_str(), &raw.weeks) {
            ("academic_year", None) => ThresholdWindow::AcademicYear,
            ("term", None) => ThresholdWindow::Term,
            ("twelve_months", None) => ThresholdWindow::TwelveMonths,
            ("rolling_school_weeks", Some(weeks)) => ThresholdWindow::RollingSchoolWeeks {
                weeks: self.within(weeks, "penalty_warning.weeks", 1..=52, "school weeks")?,
            },
            ("rolling_school_weeks", None) => {
                return Err(self.error(
                    raw.window.span(),
                    "penalty_warning.weeks",
                    "a rolling window needs weeks, the number of school weeks it spans",
                ));
            }
            ("academic_year" | "term" | "twelve_months", Some(weeks)) => {
                return Err(self.error(
                    weeks.span(),
                    "penalty_warning.weeks",
                    format!(
                        "weeks applies only to window = \"rolling_school_weeks\", not \"{}\"",
                        raw.window.get_ref()
                    ),
                ));
            }
            (other, _) => {
                return Err(self.error(
                    raw.window.span(),
                    "penalty_warning.window",
                    format!(
                        "\"{other}\" is not a window; use \"academic_year\", \"term\", \"twelve_months\" or \"rolling_school_weeks\""
                    ),
                ));
            }
        };
        if let ThresholdWindow::RollingSchoolWeeks { weeks } = window
            && sessions > weeks * 10
        {
            return Err(self.error(
                raw.sessions.span(),
                "penalty_warning.sessions",
                format!(
                    "{sessions} sessions cannot happen within {weeks} school weeks of at most 10 sessions each"
                ),
            ));
        }
        let mut codes = Vec::new();
        for code in &raw.codes {
            let known = codes::lookup(code.get_ref());
            if known.is_none_or(|info| info.category != Category::UnauthorisedAbsence) {
                return Err(self.error(
                    code.span(),
                    "penalty_warning.codes",
                    format!(
                        "\"{}\" is not a code of unauthorised absence; use G, N, O or U",
                        code.get_ref()
                    ),
                ));
            }
            codes.push(code.get_ref().clone());
        }
        Ok(PenaltyThreshold {
            sessions,
            window,
            codes,
            clause: self.clause(&raw.clause, &raw.text, "penalty_warning.clause")?,
        })
    }

    fn penalty_notice(&self, raw: &RawPenaltyNotice) -> Result<PenaltyNotice, PolicyFileError> {
        let reduced_amount = self.within(
            &raw.reduced_amount,
            "penalty_notice.reduced_amount",
            1..=10_000,
            "pounds",
        )?;
        let full_amount = self.within(
            &raw.full_amount,
            "penalty_notice.full_amount",
            1..=10_000,
            "pounds",
        )?;
        if full_amount < reduced_amount {
            return Err(self.error(
                raw.full_amount.span(),
                "penalty_notice.full_amount",
                format!("£{full_amount} is less than reduced_amount (£{reduced_amount})"),
            ));
        }
        let reduced_days = self.within(
            &raw.reduced_days,
            "penalty_notice.reduced_days",
            1..=365,
            "days",
        )?;
        let full_days = self.within(&raw.full_days, "penalty_notice.full_days", 1..=365, "days")?;
        if full_days <= reduced_days {
            return Err(self.error(
                raw.full_days.span(),
                "penalty_notice.full_days",
                format!("{full_days} days must be more than reduced_days ({reduced_days})"),
            ));
        }
        let repeat_amount = match &raw.repeat_amount {
            Some(value) => {
                Some(self.within(value, "penalty_notice.repeat_amount", 1..=10_000, "pounds")?)
            }
            None => None,
        };
        let limit = match (&raw.max_notices, &raw.limit_years) {
            (Some(max), Some(years)) => Some((
                self.within(max, "penalty_notice.max_notices", 1..=100, "notices")?,
                self.within(years, "penalty_notice.limit_years", 1..=100, "years")?,
            )),
            (None, None) => None,
            (Some(max), None) => {
                return Err(self.error(
                    max.span(),
                    "penalty_notice.limit_years",
                    "max_notices needs limit_years, the period the limit counts over",
                ));
            }
            (None, Some(years)) => {
                return Err(self.error(
                    years.span(),
                    "penalty_notice.max_notices",
                    "limit_years needs max_notices, the most notices in that period",
                ));
            }
        };
        Ok(PenaltyNotice {
            reduced_amount,
            reduced_days,
            full_amount,
            full_days,
            repeat_amount,
            max_notices: limit.map(|(max, _)| max),
            limit_years: limit.map(|(_, years)| years),
            clause: self.clause(&raw.clause, &raw.text, "penalty_notice.clause")?,
        })
    }

    fn authorisation(
        &self,
        raw: &RawAuthorisation,
        code_set: CodeSet,
    ) -> Result<Authorisation, PolicyFileError> {
        if raw.deciders.get_ref().is_empty() {
            return Err(self.error(
                raw.deciders.span(),
                "authorisation.deciders",
                "name at least one role that decides, such as \"headteacher\"",
            ));
        }
        for role in raw.deciders.get_ref() {
            if !DECIDER_ROLES.contains(&role.as_str()) {
                return Err(self.error(
                    raw.deciders.span(),
                    "authorisation.deciders",
                    format!(
                        "\"{role}\" cannot decide on absence; use {}",
                        DECIDER_ROLES.join(" or ")
                    ),
                ));
            }
        }
        let medical_evidence = match (
            &raw.medical_evidence_after_days,
            &raw.medical_evidence_clause,
        ) {
            (Some(days), Some(clause)) => Some((
                self.within(
                    days,
                    "authorisation.medical_evidence_after_days",
                    1..=365,
                    "school days",
                )?,
                self.clause(
                    clause,
                    raw.medical_evidence_text.as_deref().unwrap_or_default(),
                    "authorisation.medical_evidence_clause",
                )?,
            )),
            (None, None) => None,
            (Some(days), None) => {
                return Err(self.error(
                    days.span(),
                    "authorisation.medical_evidence_clause",
                    "every rule needs the clause that sets it",
                ));
            }
            (None, Some(clause)) => {
                return Err(self.error(
                    clause.span(),
                    "authorisation.medical_evidence_after_days",
                    "a medical evidence clause needs medical_evidence_after_days",
                ));
            }
        };
        let on = code_set.first_valid_date();
        let mut reasons: Vec<ReasonRule> = Vec::new();
        for (index, reason) in raw.reasons.iter().enumerate() {
            let key = format!("authorisation.reasons[{index}]");
            let name = self.not_empty(&reason.reason, &format!("{key}.reason"))?;
            if reasons.iter().any(|earlier| earlier.reason == name) {
                return Err(self.error(
                    reason.reason.span(),
                    &format!("{key}.reason"),
                    format!("\"{name}\" is listed twice; give each reason once"),
                ));
            }
            let code = reason.code.get_ref().trim();
            let info = codes::lookup_on(code, on).map_err(|error| {
                self.error(
                    reason.code.span(),
                    &format!("{key}.code"),
                    error.to_string(),
                )
            })?;
            let authorised = *reason.authorised.get_ref();
            let fits = if authorised {
                info.category == Category::AuthorisedAbsence
            } else {
                info.category == Category::UnauthorisedAbsence
            };
            if !fits {
                return Err(self.error(
                    reason.code.span(),
                    &format!("{key}.code"),
                    format!(
                        "{code} is {}, but authorised = {authorised}; choose a code of {} absence",
                        info.category.as_str().replace('_', " "),
                        if authorised {
                            "authorised"
                        } else {
                            "unauthorised"
                        }
                    ),
                ));
            }
            reasons.push(ReasonRule {
                reason: name,
                authorised,
                code: code.to_owned(),
                clause: self.clause(&reason.clause, &reason.text, &format!("{key}.clause"))?,
            });
        }
        Ok(Authorisation {
            deciders: raw.deciders.get_ref().clone(),
            clause: self.clause(&raw.clause, &raw.text, "authorisation.clause")?,
            doubt_clause: self.clause(
                &raw.doubt_clause,
                &raw.doubt_text,
                "authorisation.doubt_clause",
            )?,
            medical_evidence_after_days: medical_evidence.as_ref().map(|(days, _)| *days),
            medical_evidence_clause: medical_evidence.map(|(_, clause)| clause),
            reasons,
        })
    }
}

/// Checks that a new version of a policy does not overlap the versions already loaded.
///
/// Versions of the same policy id must cover separate date ranges. The error names the line of
/// `effective_from` in the new file.
pub fn check_no_overlap(
    document: &PolicyDocument,
    loaded: &[Policy],
) -> Result<(), PolicyFileError> {
    let new = &document.policy;
    for other in loaded.iter().filter(|other| other.id == new.id) {
        if other.version == new.version {
            continue;
        }
        let new_end = new.effective_to.unwrap_or(NaiveDate::MAX);
        let other_end = other.effective_to.unwrap_or(NaiveDate::MAX);
        if new.effective_from <= other_end && other.effective_from <= new_end {
            let until = other
                .effective_to
                .map_or_else(|| "with no end date".to_owned(), |to| format!("to {to}"));
            return Err(PolicyFileError {
                line: document.effective_from_line,
                key: "effective_from".to_owned(),
                message: format!(
                    "version \"{}\" of policy {} overlaps version \"{}\", in force from {} {until}; \
                     set effective_to on one of them or choose dates that do not overlap",
                    new.version, new.id, other.version, other.effective_from
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{STATUTORY_2024_TOML, TRUST_2021_TOML};

    /// Replaces the first occurrence of `from` in the shipped trust policy.
    fn trust_with(from: &str, to: &str) -> String {
        assert!(TRUST_2021_TOML.contains(from), "{from} not in the policy");
        TRUST_2021_TOML.replacen(from, to, 1)
    }

    fn line_containing(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|line| line.contains(needle))
            .expect("present")
            + 1
    }

    #[test]
    fn shipped_policies_parse() {
        let trust = parse_policy(TRUST_2021_TOML).expect("trust policy");
        assert_eq!(trust.policy.id, "aat-2021");
        assert_eq!(trust.policy.penalty_warning.sessions, 15);
        assert_eq!(
            trust.policy.penalty_warning.window,
            ThresholdWindow::AcademicYear
        );
        let statutory = parse_policy(STATUTORY_2024_TOML).expect("statutory framework");
        assert_eq!(statutory.policy.kind, PolicyKind::Statutory);
        assert_eq!(
            statutory.policy.penalty_warning.window,
            ThresholdWindow::RollingSchoolWeeks { weeks: 10 }
        );
        assert_eq!(
            statutory.policy.register_retention.map(|r| r.years),
            Some(6)
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = trust_with("sessions = 15\n", "sessions = 15\nsesions = 16\n");
        let error = parse_policy(&text).expect_err("unknown key");
        assert_eq!(error.key, "penalty_warning.sesions");
        assert_eq!(error.line, line_containing(&text, "sesions = 16"));
    }

    #[test]
    fn rule_without_clause_is_rejected() {
        let text = trust_with("percent = 10\nclause = \"3.5\"\n", "percent = 10\n");
        let error = parse_policy(&text).expect_err("missing clause");
        assert_eq!(error.key, "persistent_absence.clause");
        assert_eq!(error.line, line_containing(&text, "[persistent_absence]"));

        let text = trust_with("clause = \"4.10\"", "clause = \" \"");
        let error = parse_policy(&text).expect_err("empty clause");
        assert_eq!(error.key, "penalty_warning.clause");
        assert_eq!(error.line, line_containing(&text, "clause = \" \""));
    }

    #[test]
    fn impossible_thresholds_are_rejected() {
        // (text to replace, replacement, key named, text on the line named)
        let cases = [
            (
                "percent = 10\n",
                "percent = 0\n",
                "persistent_absence.percent",
                "percent = 0",
            ),
            (
                "percent = 50\n",
                "percent = 150\n",
                "severe_absence.percent",
                "percent = 150",
            ),
            (
                "percent = 50\n",
                "percent = 5\n",
                "severe_absence.percent",
                "percent = 5",
            ),
            (
                "sessions = 15\n",
                "sessions = 0\n",
                "penalty_warning.sessions",
                "sessions = 0",
            ),
            (
                "window = \"academic_year\"\n",
                "window = \"rolling_school_weeks\"\nweeks = 1\n",
                "penalty_warning.sessions",
                "sessions = 15",
            ),
            (
                "window = \"academic_year\"",
                "window = \"fortnight\"",
                "penalty_warning.window",
                "fortnight",
            ),
            (
                "full_days = 28",
                "full_days = 14",
                "penalty_notice.full_days",
                "full_days = 14",
            ),
            (
                "full_amount = 120",
                "full_amount = 50",
                "penalty_notice.full_amount",
                "full_amount = 50",
            ),
            (
                "medical_evidence_after_days = 5",
                "medical_evidence_after_days = 0",
                "authorisation.medical_evidence_after_days",
                "medical_evidence_after_days = 0",
            ),
        ];
        for (from, to, key, on_line) in cases {
            let text = trust_with(from, to);
            let error = parse_policy(&text).expect_err(to);
            assert_eq!(error.key, key, "{to}: {error}");
            assert_eq!(error.line, line_containing(&text, on_line), "{to}: {error}");
        }
    }

    #[test]
    fn codes_must_fit_the_decision() {
        let text = trust_with(
            "authorised = false\ncode = \"G\"",
            "authorised = false\ncode = \"I\"",
        );
        let error = parse_policy(&text).expect_err("I is authorised");
        assert_eq!(error.key, "authorisation.reasons[4].code");
        assert!(error.message.contains("authorised absence"), "{error}");

        let text = trust_with("code = \"M\"", "code = \"ZZ\"");
        let error = parse_policy(&text).expect_err("no such code");
        assert_eq!(error.key, "authorisation.reasons[1].code");
    }

    #[test]
    fn deciders_exclude_parents() {
        let text = trust_with(
            "deciders = [\"headteacher\", \"delegated_staff\"]",
            "deciders = [\"headteacher\", \"parent\"]",
        );
        let error = parse_policy(&text).expect_err("parents may not decide");
        assert_eq!(error.key, "authorisation.deciders");
        assert!(error.message.contains("parent"), "{error}");
    }

    #[test]
    fn bad_dates_are_named() {
        let text = trust_with(
            "effective_from = \"2021-11-01\"",
            "effective_from = \"1 Nov 2021\"",
        );
        let error = parse_policy(&text).expect_err("not a date");
        assert_eq!(error.key, "effective_from");
        assert!(error.message.contains("YYYY-MM-DD"), "{error}");

        let text = trust_with(
            "effective_from = \"2021-11-01\"",
            "effective_from = \"2021-11-01\"\neffective_to = \"2021-01-01\"",
        );
        let error = parse_policy(&text).expect_err("ends before it starts");
        assert_eq!(error.key, "effective_to");
    }

    #[test]
    fn overlapping_versions_are_rejected() {
        let earlier = parse_policy(&trust_with(
            "effective_from = \"2021-11-01\"",
            "effective_from = \"2021-11-01\"\neffective_to = \"2023-08-31\"",
        ))
        .expect("valid")
        .policy;

        let overlapping = parse_policy(&trust_with(
            "version = \"November 2021\"\nkind = \"trust\"\neffective_from = \"2021-11-01\"",
            "version = \"2023\"\nkind = \"trust\"\neffective_from = \"2023-08-01\"",
        ))
        .expect("valid on its own");
        let error = check_no_overlap(&overlapping, std::slice::from_ref(&earlier))
            .expect_err("August 2023 is in both");
        assert_eq!(error.key, "effective_from");
        assert_eq!(error.line, overlapping.effective_from_line);
        assert!(error.message.contains("November 2021"), "{error}");

        let following = parse_policy(&trust_with(
            "version = \"November 2021\"\nkind = \"trust\"\neffective_from = \"2021-11-01\"",
            "version = \"2023\"\nkind = \"trust\"\neffective_from = \"2023-09-01\"",
        ))
        .expect("valid");
        check_no_overlap(&following, &[earlier]).expect("starts the day after");
    }

    #[test]
    fn reader_errors_name_the_full_key() {
        let missing = trust_with("percent = 10\nclause = \"3.5\"\n", "percent = 10\n");
        let error = parse_policy(&missing).expect_err("missing clause");
        assert_eq!(error.key, "persistent_absence.clause");

        let text = trust_with("sessions = 15", "sessions = \"15\"");
        let error = parse_policy(&text).expect_err("a string");
        assert_eq!(error.key, "penalty_warning.sessions");
        assert_eq!(error.line, line_containing(&text, "sessions = \"15\""));

        let text = trust_with("sessions = 15", "sessions = -3");
        let error = parse_policy(&text).expect_err("negative");
        assert_eq!(error.key, "penalty_warning.sessions");
    }

    #[test]
    fn unsupported_format_is_named() {
        let text = trust_with("format = 1", "format = 2");
        let error = parse_policy(&text).expect_err("format 2");
        assert_eq!(error.key, "format");
        assert_eq!(error.line, line_containing(&text, "format = 2"));
    }
}
