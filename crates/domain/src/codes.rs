//! The attendance code table: the one place that defines what every code means and how it counts.
//!
//! The set in force from 19 August 2024 (School Attendance (Pupil Registration) (England)
//! Regulations 2024) and the earlier set are both here, each code with the dates it is valid.
//! Every statistic in rollcall comes from [`Category`] through this table.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The first date on which the 2024 code set applies.
pub const CODES_2024_FROM: NaiveDate = match NaiveDate::from_ymd_opt(2024, 8, 19) {
    Some(date) => date,
    None => panic!("19 August 2024 is a valid date"),
};

/// The last date on which the codes withdrawn in 2024 (H, J and Y) were valid.
pub const CODES_2006_UNTIL: NaiveDate = match NaiveDate::from_ymd_opt(2024, 8, 18) {
    Some(date) => date,
    None => panic!("18 August 2024 is a valid date"),
};

/// The statistical category of a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Present at registration, including late before registers closed.
    Present,
    /// Attending an approved educational activity away from the school site.
    ApprovedActivity,
    /// Authorised absence.
    AuthorisedAbsence,
    /// Unauthorised absence.
    UnauthorisedAbsence,
    /// Not a possible session: the pupil was not expected to attend, or could not.
    NotPossible,
}

impl Category {
    /// Returns true for codes that count in the denominator of attendance statistics.
    pub fn is_possible(self) -> bool {
        self != Self::NotPossible
    }

    /// Returns true for codes that count as attendance.
    pub fn is_attendance(self) -> bool {
        matches!(self, Self::Present | Self::ApprovedActivity)
    }

    /// Returns true for authorised or unauthorised absence.
    pub fn is_absence(self) -> bool {
        matches!(self, Self::AuthorisedAbsence | Self::UnauthorisedAbsence)
    }

    /// Returns the category's name as used in files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::ApprovedActivity => "approved_educational_activity",
            Self::AuthorisedAbsence => "authorised_absence",
            Self::UnauthorisedAbsence => "unauthorised_absence",
            Self::NotPossible => "not_possible",
        }
    }
}

/// One row of the code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    /// The code as written in registers: one or two characters.
    pub code: &'static str,
    /// The code's meaning.
    pub meaning: &'static str,
    /// Its statistical category.
    pub category: Category,
    /// First date a mark may carry the code, if limited.
    pub valid_from: Option<NaiveDate>,
    /// Last date a mark may carry the code, if limited.
    pub valid_until: Option<NaiveDate>,
    /// The code or codes to use instead once this one is withdrawn.
    pub replaced_by: Option<&'static str>,
}

impl CodeInfo {
    /// Returns true when a mark dated `date` may carry this code.
    pub fn is_valid_on(&self, date: NaiveDate) -> bool {
        self.valid_from.is_none_or(|from| date >= from)
            && self.valid_until.is_none_or(|until| date <= until)
    }
}

/// The reason a code cannot be used for a mark.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not a code in either set.
    #[error("unknown attendance code {code:?}")]
    Unknown {
        /// The code as given.
        code: String,
    },
    /// Withdrawn before the mark's date.
    #[error(
        "attendance code {code} was withdrawn on 19 August 2024 and cannot be used for {date}; use {replacement} instead"
    )]
    Withdrawn {
        /// The code as given.
        code: String,
        /// The mark's date.
        date: NaiveDate,
        /// The code or codes to use instead.
        replacement: &'static str,
    },
    /// Introduced after the mark's date.
    #[error("attendance code {code} is only valid from {valid_from}, not for {date}")]
    NotYetValid {
        /// The code as given.
        code: String,
        /// The mark's date.
        date: NaiveDate,
        /// The first date it is valid.
        valid_from: NaiveDate,
    },
}

const NEW_2024: Option<NaiveDate> = Some(CODES_2024_FROM);
const OLD_2006: Option<NaiveDate> = Some(CODES_2006_UNTIL);

const fn code(code: &'static str, meaning: &'static str, category: Category) -> CodeInfo {
    CodeInfo {
        code,
        meaning,
        category,
        valid_from: None,
        valid_until: None,
        replaced_by: None,
    }
}

const fn new_in_2024(code: &'static str, meaning: &'static str, category: Category) -> CodeInfo {
    CodeInfo {
        valid_from: NEW_2024,
        ..self::code(code, meaning, category)
    }
}

const fn withdrawn_in_2024(
    code: &'static str,
    meaning: &'static str,
    category: Category,
    replaced_by: &'static str,
) -> CodeInfo {
    CodeInfo {
        valid_until: OLD_2006,
        replaced_by: Some(replaced_by),
        ..self::code(code, meaning, category)
    }
}

use Category::{
    ApprovedActivity as Aea, AuthorisedAbsence as Auth, NotPossible as NotPoss, Present,
    UnauthorisedAbsence as Unauth,
};

/// Every attendance code rollcall accepts, with the dates each is valid.
pub const CODES: &[CodeInfo] = &[
    code("/", "Present at the morning register", Present),
    code("\\", "Present at the afternoon register", Present),
    code("L", "Late: arrived before the register closed", Present),
    new_in_2024(
        "K",
        "Attending education provision arranged by the local authority",
        Aea,
    ),
    code("V", "Attending an educational visit or trip", Aea),
    code("P", "Participating in an approved sporting activity", Aea),
    code("W", "Attending work experience", Aea),
    code(
        "B",
        "Attending any other approved educational activity",
        Aea,
    ),
    code("C", "Leave of absence for exceptional circumstances", Auth),
    new_in_2024(
        "C1",
        "Leave of absence for a regulated performance or regulated employment abroad",
        Auth,
    ),
    new_in_2024("C2", "Leave of absence for a part-time timetable", Auth),
    code(
        "E",
        "Suspended or permanently excluded, with no alternative provision",
        Auth,
    ),
    code("I", "Illness (not medical or dental appointments)", Auth),
    new_in_2024("J1", "Leave of absence for an interview", Auth),
    code(
        "M",
        "Leave of absence for a medical or dental appointment",
        Auth,
    ),
    code("R", "Religious observance", Auth),
    code("S", "Leave of absence for study leave", Auth),
    code("T", "Parent travelling for occupational purposes", Auth),
    code("G", "Holiday not granted by the school", Unauth),
    code("N", "Reason for absence not yet provided", Unauth),
    code("O", "Absent in other or unknown circumstances", Unauth),
    code("U", "Arrived after the register closed", Unauth),
    code("D", "Dual registered: attending another school", NotPoss),
    new_in_2024(
        "Q",
        "Unable to attend because of a lack of access arrangements",
        NotPoss,
    ),
    code(
        "X",
        "Not of compulsory school age and not required to attend",
        NotPoss,
    ),
    new_in_2024(
        "Y1",
        "Unable to attend: transport normally provided not available",
        NotPoss,
    ),
    new_in_2024(
        "Y2",
        "Unable to attend: widespread disruption to travel",
        NotPoss,
    ),
    new_in_2024(
        "Y3",
        "Unable to attend: part of the school premises closed",
        NotPoss,
    ),
    new_in_2024(
        "Y4",
        "Unable to attend: whole school site unexpectedly closed",
        NotPoss,
    ),
    new_in_2024(
        "Y5",
        "Unable to attend: in criminal justice detention",
        NotPoss,
    ),
    new_in_2024(
        "Y6",
        "Unable to attend: public health guidance or law",
        NotPoss,
    ),
    new_in_2024(
        "Y7",
        "Unable to attend: any other unavoidable cause",
        NotPoss,
    ),
    code(
        "Z",
        "Prospective pupil not yet on the admission register",
        NotPoss,
    ),
    code("#", "Planned whole-school closure", NotPoss),
    withdrawn_in_2024(
        "H",
        "Holiday authorised by the school",
        Auth,
        "C if the leave is exceptional, otherwise G",
    ),
    withdrawn_in_2024("J", "Attending an interview", Aea, "J1"),
    withdrawn_in_2024(
        "Y",
        "Unable to attend because of exceptional circumstances",
        NotPoss,
        "one of Y1 to Y7",
    ),
];

/// Returns the table row for a code, whatever its dates.
pub fn lookup(code: &str) -> Option<&'static CodeInfo> {
    CODES.iter().find(|info| info.code == code)
}

/// Returns the table row for a code that a mark dated `date` may carry, or why it may not.
pub fn lookup_on(code: &str, date: NaiveDate) -> Result<&'static CodeInfo, CodeError> {
    let info = lookup(code).ok_or_else(|| CodeError::Unknown {
        code: code.to_owned(),
    })?;
    if let Some(until) = info.valid_until
        && date > until
    {
        return Err(CodeError::Withdrawn {
            code: code.to_owned(),
            date,
            replacement: info.replaced_by.unwrap_or("a current code"),
        });
    }
    if let Some(from) = info.valid_from
        && date < from
    {
        return Err(CodeError::NotYetValid {
            code: code.to_owned(),
            date,
            valid_from: from,
        });
    }
    Ok(info)
}

/// Returns the category of a code, or [`Category::NotPossible`] for an unknown one. Stored
/// marks passed [`lookup_on`], so their codes are always known.
pub fn category_of(code: &str) -> Category {
    lookup(code).map_or(Category::NotPossible, |info| info.category)
}

/// Checks minutes late against a code: only `L` (late before the register closed, so within
/// the register's 30 minutes) and `U` (late after it closed) carry minutes late.
pub fn check_minutes_late(code: &str, minutes_late: i32) -> Result<(), String> {
    let limit = i32::try_from(crate::calendar::MAX_REGISTER_MINUTES).unwrap_or(i32::MAX);
    match code {
        _ if minutes_late < 0 => Err("minutes late cannot be negative".to_owned()),
        "L" if minutes_late > limit => Err(format!(
            "L means the pupil arrived before the register closed, at most {limit} minutes after \
             it opened; {minutes_late} minutes late is U"
        )),
        "L" | "U" => Ok(()),
        _ if minutes_late == 0 => Ok(()),
        _ => Err(format!(
            "only L and U carry minutes late, not {code}; send 0 minutes late with {code}"
        )),
    }
}

/// Returns true when a pupil whose register mark is `register_code` but who was missing from a
/// later lesson or spot check in the same session may have truanted after registration: the
/// register says present (`/`, `\` or `L`) and the check says absent.
pub fn is_possible_truancy(register_code: &str, present_at_check: bool) -> bool {
    !present_at_check && category_of(register_code) == Category::Present
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    #[test]
    fn codes_are_unique() {
        for (index, info) in CODES.iter().enumerate() {
            assert!(
                CODES[index + 1..]
                    .iter()
                    .all(|other| other.code != info.code),
                "code {} appears twice",
                info.code
            );
        }
    }

    #[test]
    fn statistical_categories_match_dfe() {
        let expect = |codes: &[&str], category: Category| {
            for code in codes {
                assert_eq!(category_of(code), category, "code {code}");
            }
        };
        expect(&["/", "\\", "L"], Category::Present);
        expect(&["B", "K", "P", "V", "W", "J"], Category::ApprovedActivity);
        expect(
            &["C", "C1", "C2", "E", "I", "J1", "M", "R", "S", "T", "H"],
            Category::AuthorisedAbsence,
        );
        expect(&["G", "N", "O", "U"], Category::UnauthorisedAbsence);
        expect(
            &["D", "Q", "X", "Y", "Y1", "Y4", "Y7", "Z", "#"],
            Category::NotPossible,
        );
    }

    #[test]
    fn withdrawn_codes_rejected_from_2024() {
        for (code, replacement) in [("H", "C if"), ("J", "J1"), ("Y", "Y1 to Y7")] {
            assert!(lookup_on(code, date(2024, 8, 18)).is_ok(), "{code} before");
            let error = lookup_on(code, date(2024, 8, 19)).expect_err("withdrawn");
            assert!(error.to_string().contains(replacement), "{code}: {error}");
        }
    }

    #[test]
    fn new_codes_rejected_before_2024() {
        for code in ["K", "C1", "C2", "J1", "Q", "Y1", "Y7"] {
            assert!(matches!(
                lookup_on(code, date(2024, 8, 18)),
                Err(CodeError::NotYetValid { .. })
            ));
            assert!(lookup_on(code, date(2024, 8, 19)).is_ok(), "{code}");
        }
    }

    #[test]
    fn truancy_needs_present_register_and_absent_check() {
        assert!(is_possible_truancy("/", false));
        assert!(is_possible_truancy("L", false));
        assert!(!is_possible_truancy("/", true));
        assert!(
            !is_possible_truancy("M", false),
            "a pupil out for an appointment"
        );
        assert!(!is_possible_truancy("V", false), "a pupil on a trip");
        assert!(
            !is_possible_truancy("U", false),
            "already absent at registration"
        );
    }

    #[test]
    fn minutes_late_only_for_late_codes() {
        assert_eq!(check_minutes_late("L", 10), Ok(()));
        assert_eq!(check_minutes_late("U", 90), Ok(()));
        assert_eq!(check_minutes_late("/", 0), Ok(()));
        assert!(check_minutes_late("L", 45).is_err_and(|problem| problem.contains("is U")));
        assert!(check_minutes_late("O", 20).is_err_and(|problem| problem.contains("only L and U")));
        assert!(check_minutes_late("L", -1).is_err());
    }

    #[test]
    fn unknown_code_rejected() {
        assert_eq!(
            lookup_on("A", date(2025, 1, 6)),
            Err(CodeError::Unknown { code: "A".into() })
        );
        assert_eq!(lookup("l"), None, "codes are case-sensitive");
    }
}
