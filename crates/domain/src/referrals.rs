//! Referrals to the local authority: their kinds, and the prerequisites each must meet before
//! it is submitted.
//!
//! A school refers a pupil to the local authority attendance officer once it has exhausted
//! its own avenues (trust policy 4.8). It requests a fixed penalty notice after a warning
//! letter and an assessment of the family's circumstances (4.10). It may also request that the
//! local authority take legal action (4.9). Separately, it makes the returns the registration
//! regulations of 2024 require: 10 school days of continuous unauthorised absence, 15 days of
//! sickness, new pupils within 5 days of admission, and deletions from the admission register.
//!
//! The checks here take facts gathered from the case file and the registers, and say for each
//! prerequisite whether it is met and on what evidence. A missing prerequisite blocks
//! submission; only a senior leader may override it, with a recorded reason.

use std::fmt;
use std::str::FromStr;

use chrono::NaiveDate;

/// A kind of referral or statutory return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReferralKind {
    /// A referral to the local authority attendance officer (policy 4.8).
    AttendanceOfficer,
    /// A request for a fixed penalty notice (policy 4.10).
    PenaltyNotice,
    /// A request that the local authority consider legal action against the parents (4.9).
    LegalAction,
    /// The return for 10 school days of continuous unauthorised absence.
    UnauthorisedAbsenceReturn,
    /// The return for a pupil expected to miss 15 days through sickness.
    SicknessReturn,
    /// The return for a new pupil, within 5 school days of admission.
    NewPupilReturn,
    /// The return for a deletion from the admission register.
    DeletionReturn,
}

impl ReferralKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [Self; 7] = [
        Self::AttendanceOfficer,
        Self::PenaltyNotice,
        Self::LegalAction,
        Self::UnauthorisedAbsenceReturn,
        Self::SicknessReturn,
        Self::NewPupilReturn,
        Self::DeletionReturn,
    ];

    /// Returns the kind's name as used in the API, files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttendanceOfficer => "attendance_officer",
            Self::PenaltyNotice => "penalty_notice",
            Self::LegalAction => "legal_action",
            Self::UnauthorisedAbsenceReturn => "unauthorised_absence_return",
            Self::SicknessReturn => "sickness_return",
            Self::NewPupilReturn => "new_pupil_return",
            Self::DeletionReturn => "deletion_return",
        }
    }

    /// Returns true for the statutory returns, which need no casework before them.
    pub fn is_statutory_return(self) -> bool {
        matches!(
            self,
            Self::UnauthorisedAbsenceReturn
                | Self::SicknessReturn
                | Self::NewPupilReturn
                | Self::DeletionReturn
        )
    }

    /// Returns the prerequisites checked for this kind, in the order a pack lists them.
    pub fn prerequisites(self) -> &'static [Prerequisite] {
        use Prerequisite::*;
        match self {
            Self::AttendanceOfficer => &[LadderExhausted, SupportOffered, ThresholdMet],
            Self::PenaltyNotice => &[
                NotIndependentSchool,
                ThresholdMet,
                WarningLetterServed,
                CircumstancesAssessed,
                SupportOffered,
                NoticeLimitRespected,
            ],
            Self::LegalAction => &[
                NotIndependentSchool,
                LadderExhausted,
                SupportOffered,
                CircumstancesAssessed,
                ThresholdMet,
            ],
            Self::UnauthorisedAbsenceReturn => &[ContinuousUnauthorisedAbsence],
            Self::SicknessReturn => &[ExtendedSickness],
            Self::NewPupilReturn => &[AdmittedRecently],
            Self::DeletionReturn => &[DeletedOnListedGround],
        }
    }
}

impl fmt::Display for ReferralKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown referral kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown referral kind {0:?}; the kinds are attendance_officer, penalty_notice, legal_action, unauthorised_absence_return, sickness_return, new_pupil_return and deletion_return"
)]
pub struct UnknownReferralKind(pub String);

impl FromStr for ReferralKind {
    type Err = UnknownReferralKind;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == value.trim())
            .ok_or_else(|| UnknownReferralKind(value.to_owned()))
    }
}

/// A condition a referral must meet before it is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prerequisite {
    /// Every stage of the pupil's ladder before the local authority's has its required actions
    /// recorded: the school has exhausted its own avenues.
    LadderExhausted,
    /// The warning letter was served at least the configured number of school days before.
    WarningLetterServed,
    /// The policy's threshold is met, with the sessions that make it up.
    ThresholdMet,
    /// An assessment of the family's circumstances is recorded.
    CircumstancesAssessed,
    /// Support was offered before enforcement: a meeting, home visit, attendance contract,
    /// Attendance Improvement Plan or reintegration programme.
    SupportOffered,
    /// The school is not an independent school, which cannot apply for penalty notices.
    NotIndependentSchool,
    /// A further notice to this parent for this child is within the policy's limit.
    NoticeLimitRespected,
    /// 10 school days of continuous unauthorised absence.
    ContinuousUnauthorisedAbsence,
    /// 15 days of sickness absence, consecutive or cumulative, in the school year.
    ExtendedSickness,
    /// The pupil was admitted within the last 5 school days.
    AdmittedRecently,
    /// The pupil was deleted from the admission register on a listed ground.
    DeletedOnListedGround,
}

impl Prerequisite {
    /// Returns the prerequisite's name as used in the API, packs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LadderExhausted => "ladder_exhausted",
            Self::WarningLetterServed => "warning_letter_served",
            Self::ThresholdMet => "threshold_met",
            Self::CircumstancesAssessed => "circumstances_assessed",
            Self::SupportOffered => "support_offered",
            Self::NotIndependentSchool => "not_independent_school",
            Self::NoticeLimitRespected => "notice_limit_respected",
            Self::ContinuousUnauthorisedAbsence => "continuous_unauthorised_absence",
            Self::ExtendedSickness => "extended_sickness",
            Self::AdmittedRecently => "admitted_recently",
            Self::DeletedOnListedGround => "deleted_on_listed_ground",
        }
    }
}

/// The facts from the case file and the registers that the prerequisites are checked on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferralFacts {
    /// Stages of the ladder before the local authority's whose required actions are missing,
    /// each with what is missing. Empty when the ladder is exhausted.
    pub stages_outstanding: Vec<String>,
    /// True when the pupil has a case on a ladder at all.
    pub has_case: bool,
    /// The date the latest warning letter was sent, where one was.
    pub warning_letter_sent_on: Option<NaiveDate>,
    /// School days from that letter to the referral date.
    pub school_days_since_warning: Option<u32>,
    /// The school days the warning letter must precede the request by.
    pub warning_school_days_required: u32,
    /// True when the policy's penalty-notice threshold is met.
    pub threshold_met: bool,
    /// The sessions that make up the threshold, as "YYYY-MM-DD AM (O)".
    pub threshold_sessions: Vec<String>,
    /// The date an assessment of circumstances was recorded, where one was.
    pub circumstances_assessed_on: Option<NaiveDate>,
    /// The support offered, each as "kind on YYYY-MM-DD".
    pub support_offered: Vec<String>,
    /// True for an independent school.
    pub independent_school: bool,
    /// True when the policy allows a further notice for this parent and child.
    pub notice_allowed: bool,
    /// The policy's explanation of the notice terms.
    pub notice_explanation: String,
    /// The maximum run of school days of continuous unauthorised absence.
    pub continuous_unauthorised_days: u32,
    /// Days of sickness absence in the school year.
    pub sickness_days: u32,
    /// School days since admission, for a pupil admitted this year.
    pub school_days_since_admission: Option<u32>,
    /// The ground for deletion from the admission register, where the pupil was deleted.
    pub deletion_ground: Option<String>,
}

/// The outcome of one prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrerequisiteCheck {
    /// The prerequisite.
    pub prerequisite: Prerequisite,
    /// True when it is met.
    pub met: bool,
    /// The evidence for it, or what is missing, in plain English.
    pub evidence: String,
}

/// School days of continuous unauthorised absence that make the statutory return due.
pub const CONTINUOUS_UNAUTHORISED_DAYS: u32 = 10;
/// Days of sickness that make the statutory return due.
pub const SICKNESS_DAYS: u32 = 15;
/// School days after admission within which the new-pupil return is made.
pub const NEW_PUPIL_SCHOOL_DAYS: u32 = 5;

fn check_one(prerequisite: Prerequisite, facts: &ReferralFacts) -> PrerequisiteCheck {
    let (met, evidence) = match prerequisite {
        Prerequisite::LadderExhausted => {
            if !facts.has_case {
                (
                    false,
                    "the pupil has no case on an escalation ladder".to_owned(),
                )
            } else if facts.stages_outstanding.is_empty() {
                (
                    true,
                    "every stage before the local authority's has its required actions recorded"
                        .to_owned(),
                )
            } else {
                (
                    false,
                    format!(
                        "actions still missing: {}",
                        facts.stages_outstanding.join("; ")
                    ),
                )
            }
        }
        Prerequisite::WarningLetterServed => {
            match (
                facts.warning_letter_sent_on,
                facts.school_days_since_warning,
            ) {
                (Some(sent), Some(days)) if days >= facts.warning_school_days_required => (
                    true,
                    format!("warning letter sent on {sent}, {days} school days before"),
                ),
                (Some(sent), days) => (
                    false,
                    format!(
                        "warning letter sent on {sent}, only {} school days before; {} are required",
                        days.unwrap_or(0),
                        facts.warning_school_days_required
                    ),
                ),
                (None, _) => (false, "no warning letter has been sent".to_owned()),
            }
        }
        Prerequisite::ThresholdMet => {
            if facts.threshold_met {
                (
                    true,
                    format!(
                        "threshold met by {} sessions: {}",
                        facts.threshold_sessions.len(),
                        facts.threshold_sessions.join(", ")
                    ),
                )
            } else {
                (false, "the policy's threshold is not met".to_owned())
            }
        }
        Prerequisite::CircumstancesAssessed => match facts.circumstances_assessed_on {
            Some(on) => (
                true,
                format!("assessment of circumstances recorded on {on}"),
            ),
            None => (
                false,
                "no assessment of the family's circumstances is recorded".to_owned(),
            ),
        },
        Prerequisite::SupportOffered => {
            if facts.support_offered.is_empty() {
                (false, "no support is recorded as offered".to_owned())
            } else {
                (
                    true,
                    format!("support offered: {}", facts.support_offered.join(", ")),
                )
            }
        }
        Prerequisite::NotIndependentSchool => {
            if facts.independent_school {
                (
                    false,
                    "independent schools cannot request penalty notices or legal action".to_owned(),
                )
            } else {
                (true, "the school is state-funded".to_owned())
            }
        }
        Prerequisite::NoticeLimitRespected => (
            facts.notice_allowed,
            if facts.notice_explanation.is_empty() {
                if facts.notice_allowed {
                    "within the policy's limit".to_owned()
                } else {
                    "the policy's limit of notices is reached".to_owned()
                }
            } else {
                facts.notice_explanation.clone()
            },
        ),
        Prerequisite::ContinuousUnauthorisedAbsence => (
            facts.continuous_unauthorised_days >= CONTINUOUS_UNAUTHORISED_DAYS,
            format!(
                "{} school days of continuous unauthorised absence; the return is due at {}",
                facts.continuous_unauthorised_days, CONTINUOUS_UNAUTHORISED_DAYS
            ),
        ),
        Prerequisite::ExtendedSickness => (
            facts.sickness_days >= SICKNESS_DAYS,
            format!(
                "{} days of sickness absence this school year; the return is due at {}",
                facts.sickness_days, SICKNESS_DAYS
            ),
        ),
        Prerequisite::AdmittedRecently => match facts.school_days_since_admission {
            Some(days) if days <= NEW_PUPIL_SCHOOL_DAYS => (
                true,
                format!("admitted {days} school days before the return"),
            ),
            Some(days) => (
                false,
                format!(
                    "admitted {days} school days before; the return is made within {NEW_PUPIL_SCHOOL_DAYS}"
                ),
            ),
            None => (
                false,
                "the pupil has no admission this school year".to_owned(),
            ),
        },
        Prerequisite::DeletedOnListedGround => match &facts.deletion_ground {
            Some(ground) if !ground.trim().is_empty() => (
                true,
                format!("deleted from the admission register: {ground}"),
            ),
            _ => (
                false,
                "the pupil has not been deleted from the admission register".to_owned(),
            ),
        },
    };
    PrerequisiteCheck {
        prerequisite,
        met,
        evidence,
    }
}

/// Checks every prerequisite of a kind against the facts, in the kind's order.
pub fn check_prerequisites(kind: ReferralKind, facts: &ReferralFacts) -> Vec<PrerequisiteCheck> {
    kind.prerequisites()
        .iter()
        .map(|prerequisite| check_one(*prerequisite, facts))
        .collect()
}

/// The decision on submitting a referral, given its prerequisites and any override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// Every prerequisite is met.
    Allowed,
    /// Some are missing, and a senior leader overrides them with a reason.
    Overridden {
        /// The prerequisites overridden.
        missing: Vec<Prerequisite>,
    },
    /// Some are missing, and no senior leader has overridden them with a reason.
    Blocked {
        /// The prerequisites missing.
        missing: Vec<Prerequisite>,
    },
}

/// The roles that may override a missing prerequisite, with a recorded reason.
pub const OVERRIDE_ROLES: [&str; 2] = ["headteacher", "senior_attendance_lead"];

/// Decides whether a referral may be submitted, given its checks and any override.
pub fn decide_submission(
    checks: &[PrerequisiteCheck],
    override_role: Option<&str>,
    override_reason: &str,
) -> Submission {
    let missing: Vec<Prerequisite> = checks
        .iter()
        .filter(|check| !check.met)
        .map(|check| check.prerequisite)
        .collect();
    if missing.is_empty() {
        return Submission::Allowed;
    }
    let senior = override_role.is_some_and(|role| OVERRIDE_ROLES.contains(&role.trim()));
    if senior && !override_reason.trim().is_empty() {
        Submission::Overridden { missing }
    } else {
        Submission::Blocked { missing }
    }
}

/// Counts the longest run of consecutive school days on which every session marked was an
/// unauthorised absence, from the pupil's session marks as `(date, code)` in any order. Days
/// with no marks (weekends, holidays, days before admission) neither break nor extend a run;
/// a day with a not-possible session and an unauthorised one counts in the run.
pub fn longest_unauthorised_run<'a>(marks: impl IntoIterator<Item = (NaiveDate, &'a str)>) -> u32 {
    use std::collections::BTreeMap;

    use crate::codes::{Category, lookup};

    // Per day: whether any session was an unauthorised absence, and whether any was something
    // that breaks a run (present, approved activity or authorised absence).
    let mut days: BTreeMap<NaiveDate, (bool, bool)> = BTreeMap::new();
    for (date, code) in marks {
        let entry = days.entry(date).or_default();
        match lookup(code).map(|info| info.category) {
            Some(Category::UnauthorisedAbsence) => entry.0 = true,
            Some(Category::NotPossible) => {}
            _ => entry.1 = true,
        }
    }
    let mut longest = 0;
    let mut run = 0;
    for (unauthorised, broken) in days.into_values() {
        if broken {
            run = 0;
        } else if unauthorised {
            run += 1;
            longest = longest.max(run);
        }
    }
    longest
}

/// Counts days of sickness absence from session codes: sessions coded I, two to a day, a
/// lone session counting as a day.
pub fn sickness_days<'a>(codes: impl IntoIterator<Item = &'a str>) -> u32 {
    let sessions = codes.into_iter().filter(|code| code.trim() == "I").count();
    u32::try_from(sessions.div_ceil(2)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("valid date")
    }

    fn ready_for_notice() -> ReferralFacts {
        ReferralFacts {
            has_case: true,
            warning_letter_sent_on: Some(date("2025-11-03")),
            school_days_since_warning: Some(13),
            warning_school_days_required: 10,
            threshold_met: true,
            threshold_sessions: vec!["2025-10-06 AM (O)".into()],
            circumstances_assessed_on: Some(date("2025-11-10")),
            support_offered: vec!["meeting on 2025-10-20".into()],
            notice_allowed: true,
            ..ReferralFacts::default()
        }
    }

    #[test]
    fn continuous_unauthorised_absence_skips_days_without_marks() {
        let marks = [
            ("2025-10-20", "O"),
            ("2025-10-20", "O"),
            ("2025-10-21", "G"),
            ("2025-10-21", "O"),
            // Half term: no marks. The run carries on after it.
            ("2025-11-03", "O"),
            ("2025-11-03", "#"),
            ("2025-11-04", "/"),
            ("2025-11-05", "O"),
        ];
        let run = longest_unauthorised_run(marks.iter().map(|(day, code)| (date(day), *code)));
        assert_eq!(run, 3);
    }

    #[test]
    fn sickness_counts_sessions_coded_i() {
        assert_eq!(sickness_days(["I", "I", "/", "I"]), 2);
        assert_eq!(sickness_days(["/", "O"]), 0);
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in ReferralKind::ALL {
            assert_eq!(kind.as_str().parse::<ReferralKind>(), Ok(kind));
        }
        let error = "fine".parse::<ReferralKind>().expect_err("unknown");
        assert!(error.to_string().contains("penalty_notice"), "{error}");
    }

    #[test]
    fn penalty_notice_met_when_every_fact_holds() {
        let checks = check_prerequisites(ReferralKind::PenaltyNotice, &ready_for_notice());
        assert_eq!(checks.len(), 6);
        assert!(checks.iter().all(|check| check.met), "{checks:#?}");
        assert_eq!(decide_submission(&checks, None, ""), Submission::Allowed);
    }

    #[test]
    fn warning_letter_too_recent_blocks() {
        let facts = ReferralFacts {
            school_days_since_warning: Some(4),
            ..ready_for_notice()
        };
        let checks = check_prerequisites(ReferralKind::PenaltyNotice, &facts);
        let warning = checks
            .iter()
            .find(|c| c.prerequisite == Prerequisite::WarningLetterServed)
            .expect("checked");
        assert!(!warning.met);
        assert!(
            warning.evidence.contains("only 4 school days"),
            "{}",
            warning.evidence
        );
        assert_eq!(
            decide_submission(&checks, Some("head_of_year"), "urgent"),
            Submission::Blocked {
                missing: vec![Prerequisite::WarningLetterServed]
            },
            "a head of year cannot override"
        );
        assert_eq!(
            decide_submission(&checks, Some("headteacher"), " "),
            Submission::Blocked {
                missing: vec![Prerequisite::WarningLetterServed]
            },
            "an override needs a reason"
        );
        assert_eq!(
            decide_submission(&checks, Some("headteacher"), "Parents left the country"),
            Submission::Overridden {
                missing: vec![Prerequisite::WarningLetterServed]
            }
        );
    }

    #[test]
    fn independent_school_cannot_request_a_notice() {
        let facts = ReferralFacts {
            independent_school: true,
            ..ready_for_notice()
        };
        let checks = check_prerequisites(ReferralKind::PenaltyNotice, &facts);
        assert!(!checks[0].met);
        assert_eq!(checks[0].prerequisite, Prerequisite::NotIndependentSchool);
    }

    #[test]
    fn attendance_officer_needs_the_ladder_done() {
        let facts = ReferralFacts {
            stages_outstanding: vec!["head-of-year-meeting: meeting".into()],
            ..ready_for_notice()
        };
        let checks = check_prerequisites(ReferralKind::AttendanceOfficer, &facts);
        assert!(!checks[0].met);
        assert!(
            checks[0].evidence.contains("head-of-year-meeting"),
            "{}",
            checks[0].evidence
        );
        let no_case = ReferralFacts {
            has_case: false,
            ..ReferralFacts::default()
        };
        let checks = check_prerequisites(ReferralKind::AttendanceOfficer, &no_case);
        assert!(
            checks[0].evidence.contains("no case"),
            "{}",
            checks[0].evidence
        );
    }

    #[test]
    fn statutory_returns_check_their_thresholds() {
        let facts = ReferralFacts {
            continuous_unauthorised_days: 10,
            sickness_days: 14,
            school_days_since_admission: Some(6),
            deletion_ground: Some("moved to a school elsewhere".into()),
            ..ReferralFacts::default()
        };
        let met = |kind| check_prerequisites(kind, &facts)[0].met;
        assert!(met(ReferralKind::UnauthorisedAbsenceReturn));
        assert!(!met(ReferralKind::SicknessReturn));
        assert!(!met(ReferralKind::NewPupilReturn));
        assert!(met(ReferralKind::DeletionReturn));
        for kind in ReferralKind::ALL {
            assert_eq!(
                kind.is_statutory_return(),
                kind.prerequisites().len() == 1,
                "{kind}"
            );
        }
    }

    proptest! {
        /// Submission is allowed exactly when every check is met, and an override never lets
        /// through a referral whose checks are all met, nor one without a senior role and reason.
        #[test]
        fn submission_follows_the_checks(
            met in proptest::collection::vec(any::<bool>(), 1..8),
            role in prop_oneof![Just("headteacher"), Just("senior_attendance_lead"), Just("head_of_year"), Just("")],
            reason in prop_oneof![Just(""), Just("Safeguarding concern")],
        ) {
            let checks: Vec<PrerequisiteCheck> = met
                .iter()
                .map(|met| PrerequisiteCheck {
                    prerequisite: Prerequisite::ThresholdMet,
                    met: *met,
                    evidence: String::new(),
                })
                .collect();
            let all_met = met.iter().all(|m| *m);
            let decision = decide_submission(&checks, Some(role), reason);
            let senior = OVERRIDE_ROLES.contains(&role) && !reason.is_empty();
            match decision {
                Submission::Allowed => prop_assert!(all_met),
                Submission::Overridden { missing } => {
                    prop_assert!(!all_met && senior);
                    prop_assert_eq!(missing.len(), met.iter().filter(|m| !**m).count());
                }
                Submission::Blocked { .. } => prop_assert!(!all_met && !senior),
            }
        }
    }
}
