//! Escalation ladders: who acts at each stage of a case, and what they do.
//!
//! These are editable defaults built from the trust policy: one ladder for infants and one for
//! juniors and secondary. Each escalates from the classroom upward, then to the trust's
//! Attendance Improvement Officer with an Attendance Improvement Plan, and last to the local
//! authority attendance officer.

use serde::{Deserialize, Serialize};

use crate::phase::Phase;

/// A role that can own a stage of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The class teacher (primary) or form tutor (secondary).
    ClassTeacherOrTutor,
    /// The head of year.
    HeadOfYear,
    /// The member of the senior leadership team responsible for attendance.
    SeniorAttendanceLead,
    /// The trust's Attendance Improvement Officer.
    TrustAttendanceImprovementOfficer,
    /// The local authority attendance officer.
    LocalAuthorityAttendanceOfficer,
}

impl Role {
    /// Returns the role's name as used in files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClassTeacherOrTutor => "class_teacher_or_tutor",
            Self::HeadOfYear => "head_of_year",
            Self::SeniorAttendanceLead => "senior_attendance_lead",
            Self::TrustAttendanceImprovementOfficer => "trust_attendance_improvement_officer",
            Self::LocalAuthorityAttendanceOfficer => "local_authority_attendance_officer",
        }
    }
}

/// One stage of a ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Stable identifier, unique within the ladder.
    pub id: &'static str,
    /// Short title.
    pub title: &'static str,
    /// The role that owns the case at this stage.
    pub owner: Role,
    /// The actions expected of the owner.
    pub actions: &'static [&'static str],
    /// School days between reviews at this stage.
    pub review_interval_days: u32,
    /// The clause of the policy the stage carries out.
    pub clause: &'static str,
}

/// An escalation ladder for one or more phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ladder {
    /// Stable identifier.
    pub id: &'static str,
    /// The stages, from the first.
    pub stages: &'static [Stage],
}

const INFANT_STAGES: &[Stage] = &[
    Stage {
        id: "class-teacher-concern",
        title: "Class teacher raises the concern with parents",
        owner: Role::ClassTeacherOrTutor,
        actions: &[
            "Speak to the parents at drop-off or collection",
            "Record the reasons given for each absence",
        ],
        review_interval_days: 10,
        clause: "6.2",
    },
    Stage {
        id: "attendance-lead-meeting",
        title: "Senior attendance lead meets the parents",
        owner: Role::SeniorAttendanceLead,
        actions: &[
            "Send a letter of concern",
            "Hold a meeting with the parents and agree support",
        ],
        review_interval_days: 20,
        clause: "6.2",
    },
    Stage {
        id: "attendance-improvement-plan",
        title: "Trust Attendance Improvement Officer sets an Attendance Improvement Plan",
        owner: Role::TrustAttendanceImprovementOfficer,
        actions: &[
            "Hold a structured meeting with the family",
            "Set attendance targets with review dates",
        ],
        review_interval_days: 30,
        clause: "6.3",
    },
    Stage {
        id: "local-authority-referral",
        title: "Referral to the local authority attendance officer",
        owner: Role::LocalAuthorityAttendanceOfficer,
        actions: &["Refer once every other avenue has been exhausted"],
        review_interval_days: 30,
        clause: "4.8",
    },
];

const JUNIOR_SECONDARY_STAGES: &[Stage] = &[
    Stage {
        id: "tutor-monitoring",
        title: "Class teacher or tutor monitors and contacts home",
        owner: Role::ClassTeacherOrTutor,
        actions: &[
            "Talk to the pupil about their attendance",
            "Contact the parents and record the reasons given",
        ],
        review_interval_days: 10,
        clause: "6.2",
    },
    Stage {
        id: "head-of-year-meeting",
        title: "Head of year meets the pupil and parents",
        owner: Role::HeadOfYear,
        actions: &[
            "Send a letter of concern",
            "Hold a meeting and agree support and targets",
        ],
        review_interval_days: 15,
        clause: "6.2",
    },
    Stage {
        id: "attendance-lead-contract",
        title: "Senior attendance lead agrees an attendance contract",
        owner: Role::SeniorAttendanceLead,
        actions: &[
            "Hold a formal meeting with the parents",
            "Agree an attendance contract setting out support and expectations",
        ],
        review_interval_days: 20,
        clause: "6.2",
    },
    Stage {
        id: "attendance-improvement-plan",
        title: "Trust Attendance Improvement Officer sets an Attendance Improvement Plan",
        owner: Role::TrustAttendanceImprovementOfficer,
        actions: &[
            "Hold a structured meeting with the family",
            "Set attendance targets with review dates",
        ],
        review_interval_days: 30,
        clause: "6.3",
    },
    Stage {
        id: "local-authority-referral",
        title: "Referral to the local authority attendance officer",
        owner: Role::LocalAuthorityAttendanceOfficer,
        actions: &["Refer once every other avenue has been exhausted"],
        review_interval_days: 30,
        clause: "4.8",
    },
];

/// The default ladder for infants.
pub const INFANT_LADDER: Ladder = Ladder {
    id: "infants",
    stages: INFANT_STAGES,
};

/// The default ladder for juniors and secondary.
pub const JUNIOR_SECONDARY_LADDER: Ladder = Ladder {
    id: "juniors-and-secondary",
    stages: JUNIOR_SECONDARY_STAGES,
};

/// Returns the default ladder for a phase.
pub fn ladder_for(phase: Phase) -> &'static Ladder {
    match phase {
        Phase::Infant => &INFANT_LADDER,
        Phase::Junior | Phase::Secondary => &JUNIOR_SECONDARY_LADDER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders_run_classroom_to_local_authority() {
        for ladder in [&INFANT_LADDER, &JUNIOR_SECONDARY_LADDER] {
            let first = ladder.stages.first().expect("stages");
            let last = ladder.stages.last().expect("stages");
            assert_eq!(first.owner, Role::ClassTeacherOrTutor, "{}", ladder.id);
            assert_eq!(
                last.owner,
                Role::LocalAuthorityAttendanceOfficer,
                "{}",
                ladder.id
            );
        }
    }

    #[test]
    fn phases_choose_their_ladder() {
        assert_eq!(ladder_for(Phase::Infant).id, "infants");
        assert_eq!(ladder_for(Phase::Junior).id, "juniors-and-secondary");
        assert_eq!(ladder_for(Phase::Secondary).id, "juniors-and-secondary");
    }
}
