//! Decisions on absence: whether an absence is authorised, and the code to record.
//!
//! Only the roles a policy names may decide, and parents never may. Where staff doubt the
//! explanation, the absence is unauthorised. Otherwise the policy's rule for the reason decides,
//! and illness beyond the policy's limit needs medical evidence.

use super::{Clause, Policy};

/// The question put: the reason, the decider and the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsenceQuestion<'a> {
    /// The reason given, as a policy names it (for example `illness` or `holiday`).
    pub reason: &'a str,
    /// The role of the person deciding, for example `headteacher`.
    pub decider_role: &'a str,
    /// True when staff doubt that the explanation is genuine.
    pub staff_doubt: bool,
    /// True when medical evidence has been seen.
    pub medical_evidence: bool,
    /// School days of illness in a row, counting the days decided on.
    pub illness_days: u32,
}

/// The decision, with the clauses that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsenceDecision {
    /// The register code to record.
    pub code: String,
    /// True when the absence is authorised.
    pub authorised: bool,
    /// Why, in plain English.
    pub explanation: String,
    /// Every clause applied, in order.
    pub clauses: Vec<Clause>,
}

/// The reason no decision could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// The person asking may not decide on absence.
    #[error(
        "{role} may not decide whether an absence is authorised: under clause {} of {policy} only {} decide",
        clause.reference,
        deciders.join(" or ")
    )]
    NotPermitted {
        /// The role that asked.
        role: String,
        /// The policy applied.
        policy: String,
        /// The roles that may decide.
        deciders: Vec<String>,
        /// The clause naming who decides.
        clause: Clause,
    },
    /// The policy does not name the reason.
    #[error("policy {policy} has no rule for the reason \"{reason}\"; use one of: {}", known.join(", "))]
    UnknownReason {
        /// The reason given.
        reason: String,
        /// The policy applied.
        policy: String,
        /// The reasons the policy names.
        known: Vec<String>,
    },
}

/// Decides on an absence under `policy`.
pub fn decide_absence(
    policy: &Policy,
    question: &AbsenceQuestion<'_>,
) -> Result<AbsenceDecision, DecisionError> {
    let rules = &policy.authorisation;
    let role = question.decider_role.trim();
    if !rules.deciders.iter().any(|decider| decider == role) {
        return Err(DecisionError::NotPermitted {
            role: if role.is_empty() {
                "someone with no role".to_owned()
            } else {
                role.to_owned()
            },
            policy: policy.id.clone(),
            deciders: rules.deciders.clone(),
            clause: rules.clause.clone(),
        });
    }
    let mut clauses = vec![rules.clause.clone()];

    if question.staff_doubt {
        clauses.push(rules.doubt_clause.clone());
        return Ok(AbsenceDecision {
            code: "O".to_owned(),
            authorised: false,
            explanation: format!(
                "Staff doubt that the explanation is genuine, so the absence is unauthorised \
                 (clause {}).",
                rules.doubt_clause.reference
            ),
            clauses,
        });
    }

    let Some(rule) = rules
        .reasons
        .iter()
        .find(|rule| rule.reason == question.reason.trim())
    else {
        return Err(DecisionError::UnknownReason {
            reason: question.reason.trim().to_owned(),
            policy: policy.id.clone(),
            known: rules
                .reasons
                .iter()
                .map(|rule| rule.reason.clone())
                .collect(),
        });
    };
    clauses.push(rule.clause.clone());

    if !rule.authorised {
        return Ok(AbsenceDecision {
            code: rule.code.clone(),
            authorised: false,
            explanation: format!(
                "{} is never authorised under clause {}; recorded as {}.",
                sentence_case(&rule.reason),
                rule.clause.reference,
                rule.code
            ),
            clauses,
        });
    }

    if rule.reason == "illness"
        && let (Some(limit), Some(clause)) = (
            rules.medical_evidence_after_days,
            &rules.medical_evidence_clause,
        )
        && question.illness_days > limit
        && !question.medical_evidence
    {
        clauses.push(clause.clone());
        return Ok(AbsenceDecision {
            code: "O".to_owned(),
            authorised: false,
            explanation: format!(
                "After {limit} school days of illness the policy asks for medical evidence \
                 (clause {}), and none has been seen for these {} days; the absence is \
                 unauthorised until it is. Amend the mark when the evidence arrives.",
                clause.reference, question.illness_days
            ),
            clauses,
        });
    }

    Ok(AbsenceDecision {
        code: rule.code.clone(),
        authorised: true,
        explanation: format!(
            "{} is authorised under clause {}; recorded as {}.",
            sentence_case(&rule.reason),
            rule.clause.reference,
            rule.code
        ),
        clauses,
    })
}

/// Turns a reason id such as `medical_appointment` into "Medical appointment".
fn sentence_case(reason: &str) -> String {
    let words = reason.replace('_', " ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ask<'a>(reason: &'a str, role: &'a str) -> AbsenceQuestion<'a> {
        AbsenceQuestion {
            reason,
            decider_role: role,
            staff_doubt: false,
            medical_evidence: false,
            illness_days: 1,
        }
    }

    #[test]
    fn headteacher_authorises_illness() {
        let decision =
            decide_absence(&Policy::trust_2021(), &ask("illness", "headteacher")).expect("ok");
        assert_eq!(decision.code, "I");
        assert!(decision.authorised);
        let references: Vec<&str> = decision
            .clauses
            .iter()
            .map(|clause| clause.reference.as_str())
            .collect();
        assert_eq!(references, ["3.1", "3.2.1"]);
    }

    #[test]
    fn parents_cannot_authorise() {
        let error = decide_absence(&Policy::trust_2021(), &ask("illness", "parent"))
            .expect_err("parents may not decide");
        assert!(matches!(error, DecisionError::NotPermitted { .. }));
        assert!(error.to_string().contains("clause 3.1"), "{error}");
    }

    #[test]
    fn class_teacher_cannot_decide() {
        let error = decide_absence(&Policy::trust_2021(), &ask("illness", "class_teacher"))
            .expect_err("not delegated");
        assert!(error.to_string().contains("headteacher"), "{error}");
    }

    #[test]
    fn doubted_explanation_is_unauthorised() {
        let mut question = ask("illness", "delegated_staff");
        question.staff_doubt = true;
        let decision = decide_absence(&Policy::trust_2021(), &question).expect("ok");
        assert_eq!(decision.code, "O");
        assert!(!decision.authorised);
    }

    #[test]
    fn trust_policy_never_authorises_listed_reasons() {
        for (reason, code, clause) in [
            ("holiday", "G", "3.4.1"),
            ("unsatisfactory_explanation", "O", "3.4.2"),
            ("caring_for_family", "O", "3.4.3"),
            ("birthday", "O", "3.4.4"),
        ] {
            let decision =
                decide_absence(&Policy::trust_2021(), &ask(reason, "headteacher")).expect("ok");
            assert_eq!(decision.code, code, "{reason}");
            assert!(!decision.authorised, "{reason}");
            assert_eq!(decision.clauses[1].reference, clause, "{reason}");
        }
    }

    #[test]
    fn long_illness_needs_evidence() {
        let mut question = ask("illness", "headteacher");
        question.illness_days = 6;
        let without = decide_absence(&Policy::trust_2021(), &question).expect("ok");
        assert_eq!(without.code, "O");
        assert!(without.explanation.contains("medical evidence"));

        question.medical_evidence = true;
        let with = decide_absence(&Policy::trust_2021(), &question).expect("ok");
        assert_eq!(with.code, "I");
        assert!(with.authorised);

        question.medical_evidence = false;
        question.illness_days = 5;
        let at_limit = decide_absence(&Policy::trust_2021(), &question).expect("ok");
        assert!(at_limit.authorised, "evidence is needed only after 5 days");
    }

    #[test]
    fn unknown_reason_lists_known_ones() {
        let error = decide_absence(&Policy::trust_2021(), &ask("shopping", "headteacher"))
            .expect_err("not a reason");
        assert!(error.to_string().contains("birthday"), "{error}");
    }

    proptest! {
        /// Whatever the question, a decision's code agrees with whether it is authorised, and
        /// a role outside the policy's deciders never gets a decision.
        #[test]
        fn decisions_are_consistent(
            reason in prop::sample::select(vec!["illness", "holiday", "birthday", "medical_appointment", "study_leave"]),
            role in prop::sample::select(vec!["headteacher", "delegated_staff", "parent", "class_teacher", ""]),
            staff_doubt: bool,
            medical_evidence: bool,
            illness_days in 0u32..30,
            statutory: bool,
        ) {
            let policy = if statutory { Policy::statutory_2024() } else { Policy::trust_2021() };
            let question = AbsenceQuestion { reason, decider_role: role, staff_doubt, medical_evidence, illness_days };
            match decide_absence(&policy, &question) {
                Ok(decision) => {
                    prop_assert!(policy.authorisation.deciders.iter().any(|d| d == role));
                    let category = crate::codes::category_of(&decision.code);
                    prop_assert_eq!(
                        decision.authorised,
                        category == crate::codes::Category::AuthorisedAbsence
                    );
                    if staff_doubt {
                        prop_assert!(!decision.authorised);
                    }
                }
                Err(DecisionError::NotPermitted { .. }) => {
                    prop_assert!(!policy.authorisation.deciders.iter().any(|d| d == role));
                }
                Err(DecisionError::UnknownReason { .. }) => {
                    prop_assert!(!policy.authorisation.reasons.iter().any(|r| r.reason == reason));
                }
            }
        }
    }
}
