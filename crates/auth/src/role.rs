//! The roles the trust's attendance policy gives people, and the internal role the services use
//! to call each other.

use std::fmt;
use std::str::FromStr;

/// A role a person or system holds. Tokens carry roles by their [`Role::as_str`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Responsible for the policy in a school, and decides whether absence is authorised.
    Headteacher,
    /// A member of staff the headteacher has delegated absence decisions to.
    DelegatedStaff,
    /// The senior leader who runs attendance tracking and intervention in a school.
    SeniorAttendanceLead,
    /// Follows up spot checks and casework for a year group.
    HeadOfYear,
    /// Takes registers and records lesson checks and rewards.
    ClassTeacherOrTutor,
    /// Records parents' reports, contacts families on the first day, imports files.
    OfficeStaff,
    /// The trust's Attendance Improvement Officer, who works across every school.
    TrustAttendanceImprovementOfficer,
    /// Trust IT: configuration, connectors, retention and operations.
    TrustIt,
    /// A management information system supplier, for the schools it serves.
    MisVendor,
    /// A local authority attendance officer, who sees only referrals sent to their authority.
    LocalAuthorityAttendanceOfficer,
    /// Reads everything it is granted and changes nothing.
    Auditor,
    /// One rollcall service calling another. Never granted by an identity provider's token.
    Service,
}

impl Role {
    /// Every role, in the order the access table lists them.
    pub const ALL: [Role; 12] = [
        Role::Headteacher,
        Role::DelegatedStaff,
        Role::SeniorAttendanceLead,
        Role::HeadOfYear,
        Role::ClassTeacherOrTutor,
        Role::OfficeStaff,
        Role::TrustAttendanceImprovementOfficer,
        Role::TrustIt,
        Role::MisVendor,
        Role::LocalAuthorityAttendanceOfficer,
        Role::Auditor,
        Role::Service,
    ];

    /// The name tokens use for the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Headteacher => "headteacher",
            Role::DelegatedStaff => "delegated_staff",
            Role::SeniorAttendanceLead => "senior_attendance_lead",
            Role::HeadOfYear => "head_of_year",
            Role::ClassTeacherOrTutor => "class_teacher_or_tutor",
            Role::OfficeStaff => "office_staff",
            Role::TrustAttendanceImprovementOfficer => "trust_attendance_improvement_officer",
            Role::TrustIt => "trust_it",
            Role::MisVendor => "mis_vendor",
            Role::LocalAuthorityAttendanceOfficer => "local_authority_attendance_officer",
            Role::Auditor => "auditor",
            Role::Service => "service",
        }
    }

    /// True for roles that work across the whole trust rather than for granted schools.
    pub fn is_trust_wide(self) -> bool {
        matches!(
            self,
            Role::TrustAttendanceImprovementOfficer | Role::TrustIt | Role::Auditor | Role::Service
        )
    }

    /// True for roles held by a person, whose reads of a pupil's record are audited.
    pub fn is_person(self) -> bool {
        !matches!(self, Role::Service | Role::MisVendor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of rollcall's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == name)
            .ok_or_else(|| UnknownRole(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "teacher".parse::<Role>(),
            Err(UnknownRole("teacher".to_owned()))
        );
    }
}
