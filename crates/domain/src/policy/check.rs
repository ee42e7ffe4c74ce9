//! Policy checks: how a trust policy differs from the statutory framework in force on a date.

use chrono::NaiveDate;
use serde::Serialize;

use super::{Clause, CodeSet, PenaltyNotice, PenaltyThreshold, Policy};
use crate::codes::{self, CODES_2006_UNTIL, CODES_2024_FROM};

/// One side of a difference: a policy's rule and its clause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    /// The rule as the policy sets it, or what it leaves out.
    pub value: String,
    /// The clause, if the policy has one for this rule.
    pub clause: Option<String>,
}

/// A rule on which a policy and the statutory framework differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The rule, for example `penalty_warning`.
    pub rule: String,
    /// The checked policy's rule.
    pub policy: Position,
    /// The statutory framework's rule.
    pub statutory: Position,
    /// The meaning of the difference.
    pub note: String,
}

/// Returns the statutory framework shipped with rollcall that is in force on `on`, if any.
pub fn statutory_in_force(on: NaiveDate) -> Option<Policy> {
    let framework = Policy::statutory_2024();
    framework.in_force_on(on).then_some(framework)
}

fn position(value: String, clause: &Clause) -> Position {
    Position {
        value,
        clause: Some(clause.reference.clone()),
    }
}

fn absent(value: &str) -> Position {
    Position {
        value: value.to_owned(),
        clause: None,
    }
}

fn threshold_text(threshold: &PenaltyThreshold) -> String {
    let codes = if threshold.codes.is_empty() {
        String::new()
    } else {
        format!(" ({})", threshold.codes.join(", "))
    };
    format!(
        "{} unauthorised sessions{codes} in {}",
        threshold.sessions,
        threshold.window.describe()
    )
}

fn amounts_text(notice: &PenaltyNotice) -> String {
    let mut text = format!(
        "£{} within {} days, £{} within {} days",
        notice.reduced_amount, notice.reduced_days, notice.full_amount, notice.full_days
    );
    if let Some(repeat) = notice.repeat_amount {
        text.push_str(&format!("; a second notice £{repeat}"));
    }
    text
}

fn limit_text(notice: &PenaltyNotice) -> Option<String> {
    match (notice.max_notices, notice.limit_years) {
        (Some(max), Some(years)) => Some(format!(
            "at most {max} notices per parent per child in {years} years"
        )),
        _ => None,
    }
}

fn return_text(days: u32, continuous: bool) -> String {
    if continuous {
        format!("{days} continuous school days of unauthorised absence")
    } else {
        format!("{days} school days of unauthorised absence in all")
    }
}

/// Returns the codes of the 2006 set that were withdrawn on 19 August 2024.
pub fn withdrawn_codes() -> Vec<&'static str> {
    codes::CODES
        .iter()
        .filter(|info| info.is_valid_on(CODES_2006_UNTIL) && !info.is_valid_on(CODES_2024_FROM))
        .map(|info| info.code)
        .collect()
}

/// Lists every rule on which `policy` differs from `statutory` on the date `on`.
pub fn compare(policy: &Policy, statutory: &Policy, on: NaiveDate) -> Vec<Difference> {
    let mut differences = Vec::new();

    if let Some(review) = &policy.review
        && review.due < on
    {
        differences.push(Difference {
            rule: "review".to_owned(),
            policy: position(format!("next review due {}", review.due), &review.clause),
            statutory: Position {
                value: "a current attendance policy".to_owned(),
                clause: Some(statutory.title.clone()),
            },
            note: format!(
                "The review date {} has passed; the policy may no longer reflect the law in force on {on}.",
                review.due
            ),
        });
    }

    if policy.code_set != statutory.code_set {
        let withdrawn = withdrawn_codes().join(", ");
        let note = if policy.code_set == CodeSet::Regulations2006 {
            format!(
                "The policy was written for codes withdrawn on 19 August 2024 ({withdrawn}); J1 is now authorised absence and K, C1, C2, Q and Y1 to Y7 are new."
            )
        } else {
            "The policy uses codes that the framework in force does not.".to_owned()
        };
        differences.push(Difference {
            rule: "codes".to_owned(),
            policy: position(
                format!("register codes of {}", policy.code_set.as_str()),
                &policy.code_set_clause,
            ),
            statutory: position(
                format!("register codes of {}", statutory.code_set.as_str()),
                &statutory.code_set_clause,
            ),
            note,
        });
    }
    for rule in &policy.authorisation.reasons {
        if let Err(error) = codes::lookup_on(&rule.code, on) {
            differences.push(Difference {
                rule: format!("reason.{}", rule.reason),
                policy: position(format!("recorded as {}", rule.code), &rule.clause),
                statutory: position(format!("codes valid on {on}"), &statutory.code_set_clause),
                note: error.to_string(),
            });
        }
    }

    if policy.persistent_absence_percent != statutory.persistent_absence_percent {
        differences.push(Difference {
            rule: "persistent_absence".to_owned(),
            policy: position(
                format!("absence of {}% or more", policy.persistent_absence_percent),
                &policy.persistent_absence_clause,
            ),
            statutory: position(
                format!(
                    "absence of {}% or more",
                    statutory.persistent_absence_percent
                ),
                &statutory.persistent_absence_clause,
            ),
            note: "Persistent absence is defined differently.".to_owned(),
        });
    }
    if policy.severe_absence_percent != statutory.severe_absence_percent {
        differences.push(Difference {
            rule: "severe_absence".to_owned(),
            policy: position(
                format!("absence of {}% or more", policy.severe_absence_percent),
                &policy.severe_absence_clause,
            ),
            statutory: position(
                format!("absence of {}% or more", statutory.severe_absence_percent),
                &statutory.severe_absence_clause,
            ),
            note: "Severe absence is defined differently.".to_owned(),
        });
    }

    let ours = &policy.penalty_warning;
    let theirs = &statutory.penalty_warning;
    if ours.sessions != theirs.sessions
        || ours.window != theirs.window
        || ours.codes != theirs.codes
    {
        differences.push(Difference {
            rule: "penalty_warning".to_owned(),
            policy: position(threshold_text(ours), &ours.clause),
            statutory: position(threshold_text(theirs), &theirs.clause),
            note: "The threshold for a penalty notice differs.".to_owned(),
        });
    }

    match (&policy.penalty_notice, &statutory.penalty_notice) {
        (Some(ours), Some(theirs)) => {
            if amounts_text(ours) != amounts_text(theirs) {
                differences.push(Difference {
                    rule: "penalty_notice.amounts".to_owned(),
                    policy: position(amounts_text(ours), &ours.clause),
                    statutory: position(amounts_text(theirs), &theirs.clause),
                    note: "The penalty-notice amounts differ.".to_owned(),
                });
            }
            if limit_text(ours) != limit_text(theirs) {
                differences.push(Difference {
                    rule: "penalty_notice.limit".to_owned(),
                    policy: match limit_text(ours) {
                        Some(text) => position(text, &ours.clause),
                        None => absent("no limit on notices"),
                    },
                    statutory: match limit_text(theirs) {
                        Some(text) => position(text, &theirs.clause),
                        None => absent("no limit on notices"),
                    },
                    note: "The limit on notices per parent per child differs.".to_owned(),
                });
            }
        }
        (None, Some(theirs)) => differences.push(Difference {
            rule: "penalty_notice".to_owned(),
            policy: absent("no penalty-notice amounts"),
            statutory: position(amounts_text(theirs), &theirs.clause),
            note: "The policy does not set out the penalty-notice amounts.".to_owned(),
        }),
        _ => {}
    }

    match (&policy.register_retention, &statutory.register_retention) {
        (Some(ours), Some(theirs)) if ours.years != theirs.years => {
            differences.push(Difference {
                rule: "register_retention".to_owned(),
                policy: position(format!("{} years", ours.years), &ours.clause),
                statutory: position(format!("{} years", theirs.years), &theirs.clause),
                note: "Registers are kept for a different period.".to_owned(),
            });
        }
        (None, Some(theirs)) => differences.push(Difference {
            rule: "register_retention".to_owned(),
            policy: absent("no retention period"),
            statutory: position(format!("at least {} years", theirs.years), &theirs.clause),
            note: format!(
                "Register entries must be kept for at least {} years; the policy does not say.",
                theirs.years
            ),
        }),
        _ => {}
    }

    let day_rules = [
        (
            "unexplained_absence",
            policy.unexplained_absence.as_ref().map(|rule| {
                (
                    format!("N resolved within {} school days", rule.days),
                    &rule.clause,
                )
            }),
            statutory.unexplained_absence.as_ref().map(|rule| {
                (
                    format!("N resolved within {} school days", rule.days),
                    &rule.clause,
                )
            }),
        ),
        (
            "unauthorised_absence_return",
            policy
                .unauthorised_absence_return
                .as_ref()
                .map(|rule| (return_text(rule.days, rule.continuous), &rule.clause)),
            statutory
                .unauthorised_absence_return
                .as_ref()
                .map(|rule| (return_text(rule.days, rule.continuous), &rule.clause)),
        ),
        (
            "sickness_return",
            policy.sickness_return.as_ref().map(|rule| {
                (
                    format!("{} days of sickness in the year", rule.days),
                    &rule.clause,
                )
            }),
            statutory.sickness_return.as_ref().map(|rule| {
                (
                    format!("{} days of sickness in the year", rule.days),
                    &rule.clause,
                )
            }),
        ),
    ];
    for (rule, ours, theirs) in day_rules {
        let differs = match (&ours, &theirs) {
            (Some((a, _)), Some((b, _))) => a != b,
            (None, Some(_)) => true,
            _ => false,
        };
        if differs {
            differences.push(Difference {
                rule: rule.to_owned(),
                policy: ours.map_or_else(
                    || absent("not set"),
                    |(value, clause)| position(value, clause),
                ),
                statutory: theirs.map_or_else(
                    || absent("not set"),
                    |(value, clause)| position(value, clause),
                ),
                note: format!("The rule on {} differs.", rule.replace('_', " ")),
            });
        }
    }

    for ours in &policy.authorisation.reasons {
        let Some(theirs) = statutory
            .authorisation
            .reasons
            .iter()
            .find(|theirs| theirs.reason == ours.reason)
        else {
            continue;
        };
        if ours.authorised != theirs.authorised || ours.code != theirs.code {
            let describe = |authorised: bool, code: &str| {
                format!(
                    "{}, recorded as {code}",
                    if authorised {
                        "may be authorised"
                    } else {
                        "never authorised"
                    }
                )
            };
            differences.push(Difference {
                rule: format!("reason.{}", ours.reason),
                policy: position(describe(ours.authorised, &ours.code), &ours.clause),
                statutory: position(describe(theirs.authorised, &theirs.code), &theirs.clause),
                note: format!("The decision on {} differs.", ours.reason.replace('_', " ")),
            });
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
    }

    fn rules(differences: &[Difference]) -> Vec<&str> {
        differences.iter().map(|d| d.rule.as_str()).collect()
    }

    #[test]
    fn trust_policy_differs_from_the_2024_framework() {
        let on = date(2025, 9, 1);
        let statutory = statutory_in_force(on).expect("in force");
        let differences = compare(&Policy::trust_2021(), &statutory, on);
        let found = rules(&differences);
        for rule in [
            "review",
            "codes",
            "penalty_warning",
            "penalty_notice.amounts",
            "penalty_notice.limit",
            "register_retention",
        ] {
            assert!(found.contains(&rule), "{rule} missing from {found:?}");
        }

        let warning = &differences[found
            .iter()
            .position(|r| *r == "penalty_warning")
            .expect("found")];
        assert!(warning.policy.value.starts_with("15 "), "{warning:?}");
        assert_eq!(warning.policy.clause.as_deref(), Some("4.10"));
        assert!(warning.statutory.value.starts_with("10 "), "{warning:?}");

        let amounts = &differences[found
            .iter()
            .position(|r| *r == "penalty_notice.amounts")
            .expect("found")];
        assert!(amounts.policy.value.contains("£60"), "{amounts:?}");
        assert!(amounts.policy.value.contains("£120"), "{amounts:?}");
        assert!(amounts.statutory.value.contains("£80"), "{amounts:?}");

        let codes = &differences[found.iter().position(|r| *r == "codes").expect("found")];
        for code in ["H", "J", "Y"] {
            assert!(codes.note.contains(code), "{codes:?}");
        }
        let retention = &differences[found
            .iter()
            .position(|r| *r == "register_retention")
            .expect("found")];
        assert!(retention.statutory.value.contains('6'), "{retention:?}");
        let review = &differences[found.iter().position(|r| *r == "review").expect("found")];
        assert!(review.note.contains("2023-11-30"), "{review:?}");
    }

    #[test]
    fn review_not_flagged_before_it_is_due() {
        let on = date(2024, 9, 2);
        let statutory = statutory_in_force(on).expect("in force");
        let mut policy = Policy::trust_2021();
        if let Some(review) = policy.review.as_mut() {
            review.due = date(2025, 1, 1);
        }
        assert!(!rules(&compare(&policy, &statutory, on)).contains(&"review"));
    }

    #[test]
    fn framework_matches_itself() {
        let on = date(2025, 1, 6);
        let statutory = statutory_in_force(on).expect("in force");
        assert!(compare(&statutory, &statutory, on).is_empty());
    }

    #[test]
    fn no_framework_before_august_2024() {
        assert!(statutory_in_force(date(2024, 8, 18)).is_none());
        assert!(statutory_in_force(date(2024, 8, 19)).is_some());
    }

    #[test]
    fn withdrawn_codes_are_h_j_and_y() {
        assert_eq!(withdrawn_codes(), ["H", "J", "Y"]);
    }
}
