//! Reads the attendance parts of a Common Transfer File into the model.
//!
//! Each `read_*` function consumes one element, from just after its start tag up to and
//! including its end tag, and matches child names in any letter case. Children it does not
//! know are skipped unread.

use chrono::NaiveDate;

use crate::cursor::{Cursor, Place};
use crate::decode;
use crate::error::{CtfError, CtfErrorKind, ExtendedMarkProblem};
use crate::marks::{self, ExtendedMark};
use crate::model::{AttendSessions, CtfFile, Header, Pupil, SchoolIdentity, Totals, YearData};
use crate::values::{self, Placeholders, canonical, fill, required};

/// Reads a Common Transfer File from its bytes.
///
/// The bytes must be UTF-8, with or without a byte order mark. Only the header, the pupils'
/// identifying details, year group and attendance are kept, and everything else in the file is
/// skipped. See the crate documentation for the elements read and the variants accepted.
///
/// # Errors
///
/// Returns a [`CtfError`] naming the problem, its line, its element path and the pupil's UPN
/// where known. The problems are input that is not UTF-8 XML, a root element other than
/// `CTfile`, a file cut short, and a missing required element. So are an invalid date, total,
/// `LEA` or `Estab`, an odd number of marks, and an `ExtendedMark` that does not fit the marks
/// string.
pub fn read(bytes: &[u8]) -> Result<CtfFile, CtfError> {
    let text = decode::utf8_text(bytes)?;
    let mut cursor = Cursor::new(text);
    let root = cursor.open_root()?;
    if !root.eq_ignore_ascii_case("CTfile") {
        return Err(cursor.error(CtfErrorKind::NotCtf { root }).without_path());
    }
    read_ctfile(&mut cursor)
}

fn read_ctfile(cursor: &mut Cursor<'_>) -> Result<CtfFile, CtfError> {
    let place = cursor.place();
    let mut header = None;
    let mut pupils = Vec::new();
    cursor.for_each_child(
        |cursor, name| match canonical(name, &["Header", "CTFpupilData"]) {
            Some(element @ "Header") => {
                reject_repeat(cursor, &header, element)?;
                header = Some(read_header(cursor)?);
                Ok(())
            }
            Some("CTFpupilData") => cursor.for_each_child(|cursor, name| {
                if canonical(name, &["Pupil"]).is_some() {
                    pupils.push(read_pupil(cursor)?);
                }
                Ok(())
            }),
            _ => Ok(()),
        },
    )?;

    let header = required(header, "Header").map_err(|kind| cursor.error_at(&place, kind))?;
    Ok(CtfFile { header, pupils })
}

/// Returns an error located at the open element if `slot` already contains a value.
fn reject_repeat<T>(
    cursor: &Cursor<'_>,
    slot: &Option<T>,
    element: &'static str,
) -> Result<(), CtfError> {
    match slot {
        Some(_) => Err(cursor.error(CtfErrorKind::Repeated { element })),
        None => Ok(()),
    }
}

const HEADER_CHILDREN: &[&str] = &[
    "DocumentName",
    "CTFversion",
    "DateTime",
    "SourceSchool",
    "DestSchool",
];

#[derive(Default)]
struct HeaderFields {
    document_name: Option<String>,
    ctf_version: Option<String>,
    date_time: Option<String>,
    source_school: Option<(SchoolIdentity, Option<String>)>,
    dest_school: Option<SchoolIdentity>,
}

fn read_header(cursor: &mut Cursor<'_>) -> Result<Header, CtfError> {
    let place = cursor.place();
    let mut fields = HeaderFields::default();
    cursor.for_each_child(|cursor, name| match canonical(name, HEADER_CHILDREN) {
        Some(element @ "DocumentName") => {
            cursor.read_value(|value| fill(&mut fields.document_name, values::text(value), element))
        }
        Some(element @ "CTFversion") => {
            cursor.read_value(|value| fill(&mut fields.ctf_version, values::text(value), element))
        }
        Some(element @ "DateTime") => {
            cursor.read_value(|value| fill(&mut fields.date_time, values::text(value), element))
        }
        Some(element @ "SourceSchool") => {
            reject_repeat(cursor, &fields.source_school, element)?;
            fields.source_school = Some(read_school(cursor, Placeholders::Rejected)?);
            Ok(())
        }
        Some(element @ "DestSchool") => {
            reject_repeat(cursor, &fields.dest_school, element)?;
            let (school, _academic_year) = read_school(cursor, Placeholders::Accepted)?;
            fields.dest_school = Some(school);
            Ok(())
        }
        _ => Ok(()),
    })?;

    let at_header = |kind| cursor.error_at(&place, kind);
    let ctf_version = required(fields.ctf_version, "CTFversion").map_err(at_header)?;
    let (source_school, academic_year) =
        required(fields.source_school, "SourceSchool").map_err(at_header)?;
    Ok(Header {
        ctf_version,
        date_time: fields.date_time,
        document_name: fields.document_name,
        source_school,
        academic_year,
        dest_school: fields.dest_school,
    })
}

/// The `LEA`, `Estab` and `SchoolName` children shared by `SourceSchool`, `DestSchool` and
/// `YearData`.
#[derive(Default)]
struct SchoolFields {
    lea: Option<String>,
    estab: Option<String>,
    school_name: Option<String>,
}

impl SchoolFields {
    /// Reads the open child element, which must be `LEA`, `Estab` or `SchoolName`.
    fn read_child(
        &mut self,
        cursor: &mut Cursor<'_>,
        element: &'static str,
        placeholders: Placeholders,
    ) -> Result<(), CtfError> {
        cursor.read_value(|value| match element {
            "LEA" => {
                let lea = values::school_number(element, 3, placeholders, value)?;
                fill(&mut self.lea, lea, element)
            }
            "Estab" => {
                let estab = values::school_number(element, 4, placeholders, value)?;
                fill(&mut self.estab, estab, element)
            }
            _ => fill(&mut self.school_name, values::text(value), element),
        })
    }

    /// Returns the school, or an error at `place` if `LEA` or `Estab` is missing.
    fn finish(self, cursor: &Cursor<'_>, place: &Place) -> Result<SchoolIdentity, CtfError> {
        let at_parent = |kind| cursor.error_at(place, kind);
        Ok(SchoolIdentity {
            lea: required(self.lea, "LEA").map_err(at_parent)?,
            estab: required(self.estab, "Estab").map_err(at_parent)?,
            school_name: self.school_name,
        })
    }
}

/// Reads `SourceSchool` or `DestSchool`, returning the school and its `AcademicYear`.
fn read_school(
    cursor: &mut Cursor<'_>,
    placeholders: Placeholders,
) -> Result<(SchoolIdentity, Option<String>), CtfError> {
    let place = cursor.place();
    let mut school = SchoolFields::default();
    let mut academic_year = None;
    let known = &["LEA", "Estab", "SchoolName", "AcademicYear"];
    cursor.for_each_child(|cursor, name| match canonical(name, known) {
        Some(element @ "AcademicYear") => {
            cursor.read_value(|value| fill(&mut academic_year, values::text(value), element))
        }
        Some(element) => school.read_child(cursor, element, placeholders),
        None => Ok(()),
    })?;

    Ok((school.finish(cursor, &place)?, academic_year))
}

const PUPIL_CHILDREN: &[&str] = &[
    "UPN",
    "Surname",
    "Forename",
    "DOB",
    "Gender",
    "Sex",
    "NCyearActual",
    "BasicDetails",
    "Attendance",
];

#[derive(Default)]
struct PupilFields {
    upn: Option<String>,
    surname: Option<String>,
    forename: Option<String>,
    date_of_birth: Option<NaiveDate>,
    sex: Option<String>,
    year_group: Option<String>,
    enrol_status: Option<String>,
    attendance: Vec<YearData>,
}

fn read_pupil(cursor: &mut Cursor<'_>) -> Result<Pupil, CtfError> {
    cursor.set_upn(None);
    let place = cursor.place();
    let mut fields = PupilFields::default();
    cursor.for_each_child(|cursor, name| match canonical(name, PUPIL_CHILDREN) {
        Some(element @ "UPN") => {
            cursor.read_value(|value| fill(&mut fields.upn, values::text(value), element))?;
            cursor.set_upn(fields.upn.clone());
            Ok(())
        }
        Some(element @ "Surname") => {
            cursor.read_value(|value| fill(&mut fields.surname, values::text(value), element))
        }
        Some(element @ "Forename") => {
            cursor.read_value(|value| fill(&mut fields.forename, values::text(value), element))
        }
        Some(element @ "DOB") => cursor.read_value(|value| {
            fill(
                &mut fields.date_of_birth,
                values::date(element, value)?,
                element,
            )
        }),
        Some(element @ ("Gender" | "Sex")) => {
            cursor.read_value(|value| fill(&mut fields.sex, values::text(value), element))
        }
        Some(element @ "NCyearActual") => {
            cursor.read_value(|value| fill(&mut fields.year_group, values::text(value), element))
        }
        Some("BasicDetails") => {
            read_basic_details(cursor, &mut fields.year_group, &mut fields.enrol_status)
        }
        Some("Attendance") => read_attendance(cursor, &mut fields.attendance),
        _ => Ok(()),
    })?;

    let pupil = finish_pupil(cursor, &place, fields);
    cursor.set_upn(None);
    pupil
}

fn finish_pupil(
    cursor: &Cursor<'_>,
    place: &Place,
    fields: PupilFields,
) -> Result<Pupil, CtfError> {
    let at_pupil = |kind| cursor.error_at(place, kind);
    Ok(Pupil {
        upn: required(fields.upn, "UPN").map_err(at_pupil)?,
        surname: required(fields.surname, "Surname").map_err(at_pupil)?,
        forename: required(fields.forename, "Forename").map_err(at_pupil)?,
        date_of_birth: required(fields.date_of_birth, "DOB").map_err(at_pupil)?,
        sex: fields.sex.unwrap_or_default(),
        year_group: fields.year_group,
        enrol_status: fields.enrol_status,
        attendance: fields.attendance,
    })
}

/// Reads `BasicDetails`, of which rollcall keeps only `NCyearActual` and `EnrolStatus`.
fn read_basic_details(
    cursor: &mut Cursor<'_>,
    year_group: &mut Option<String>,
    enrol_status: &mut Option<String>,
) -> Result<(), CtfError> {
    cursor.for_each_child(
        |cursor, name| match canonical(name, &["NCyearActual", "EnrolStatus"]) {
            Some(element @ "NCyearActual") => {
                cursor.read_value(|value| fill(year_group, values::text(value), element))
            }
            Some(element @ "EnrolStatus") => {
                cursor.read_value(|value| fill(enrol_status, values::text(value), element))
            }
            _ => Ok(()),
        },
    )
}

fn read_attendance(
    cursor: &mut Cursor<'_>,
    attendance: &mut Vec<YearData>,
) -> Result<(), CtfError> {
    cursor.for_each_child(|cursor, name| {
        if canonical(name, &["YearData"]).is_some() {
            attendance.push(read_year_data(cursor)?);
        }
        Ok(())
    })
}

const YEAR_DATA_CHILDREN: &[&str] = &[
    "Year",
    "LEA",
    "Estab",
    "SchoolName",
    "SessionsPossible",
    "SessionsAuthorised",
    "SessionsAttended",
    "SessionsUnauthorised",
    "AttendSessions",
];

fn read_year_data(cursor: &mut Cursor<'_>) -> Result<YearData, CtfError> {
    let place = cursor.place();
    let mut year = None;
    let mut school = SchoolFields::default();
    let mut totals = Totals::default();
    let mut sessions = None;
    cursor.for_each_child(|cursor, name| match canonical(name, YEAR_DATA_CHILDREN) {
        Some(element @ "Year") => {
            cursor.read_value(|value| fill(&mut year, values::text(value), element))
        }
        Some(element @ ("LEA" | "Estab" | "SchoolName")) => {
            school.read_child(cursor, element, Placeholders::Rejected)
        }
        Some(element @ "AttendSessions") => {
            reject_repeat(cursor, &sessions, element)?;
            sessions = Some(read_attend_sessions(cursor)?);
            Ok(())
        }
        Some(element) => cursor.read_value(|value| {
            let slot = match element {
                "SessionsPossible" => &mut totals.possible,
                "SessionsAuthorised" => &mut totals.authorised,
                "SessionsAttended" => &mut totals.attended,
                _ => &mut totals.unauthorised,
            };
            fill(slot, values::count(element, value)?, element)
        }),
        None => Ok(()),
    })?;

    Ok(YearData {
        year,
        school: school.finish(cursor, &place)?,
        totals,
        sessions,
    })
}

fn read_attend_sessions(cursor: &mut Cursor<'_>) -> Result<AttendSessions, CtfError> {
    let place = cursor.place();
    let mut start_date = None;
    let mut marks = None;
    let mut extended = Vec::new();
    let known = &["AttendanceStartDate", "AttendanceMarks", "ExtendedMarks"];
    cursor.for_each_child(|cursor, name| match canonical(name, known) {
        Some(element @ "AttendanceStartDate") => {
            cursor.read_value(|value| fill(&mut start_date, values::date(element, value)?, element))
        }
        Some(element @ "AttendanceMarks") => {
            reject_repeat(cursor, &marks, element)?;
            marks = Some(cursor.read_value(parse_marks)?);
            Ok(())
        }
        Some("ExtendedMarks") => cursor.for_each_child(|cursor, name| {
            if canonical(name, &["ExtendedMark"]).is_some() {
                extended.push(read_extended_mark(cursor)?);
            }
            Ok(())
        }),
        _ => Ok(()),
    })?;

    let start_date = required(start_date, "AttendanceStartDate")
        .map_err(|kind| cursor.error_at(&place, kind))?;
    let marks = marks.unwrap_or_default();
    let entries: Vec<ExtendedMark> = extended.iter().map(|(_, mark)| mark.clone()).collect();
    marks::expand(start_date, &marks, &entries).map_err(|(position, problem)| {
        let (entry_place, _) = &extended[position];
        cursor.error_at(entry_place, CtfErrorKind::ExtendedMark(problem))
    })
}

/// Returns one character per session, with all whitespace removed.
fn parse_marks(value: &str) -> Result<Vec<char>, CtfErrorKind> {
    let marks: Vec<char> = value.chars().filter(|mark| !mark.is_whitespace()).collect();
    if marks.len() % 2 == 1 {
        return Err(CtfErrorKind::OddMarkCount { count: marks.len() });
    }
    Ok(marks)
}

fn read_extended_mark(cursor: &mut Cursor<'_>) -> Result<(Place, ExtendedMark), CtfError> {
    let place = cursor.place();
    let mut date = None;
    let mut session = None;
    let mut code = None;
    cursor.for_each_child(
        |cursor, name| match canonical(name, &["Date", "Session", "Code"]) {
            Some(element @ "Date") => {
                cursor.read_value(|value| fill(&mut date, values::date(element, value)?, element))
            }
            Some(element @ "Session") => {
                cursor.read_value(|value| fill(&mut session, parse_session(value)?, element))
            }
            Some(element @ "Code") => {
                cursor.read_value(|value| fill(&mut code, parse_code(value)?, element))
            }
            _ => Ok(()),
        },
    )?;

    let at_entry = |kind| cursor.error_at(&place, kind);
    let mark = ExtendedMark {
        date: required(date, "Date").map_err(at_entry)?,
        session: required(session, "Session").map_err(at_entry)?,
        code: required(code, "Code").map_err(at_entry)?,
    };
    Ok((place, mark))
}

/// Parses `AM` as 0 and `PM` as 1, in any letter case.
fn parse_session(value: &str) -> Result<Option<u8>, CtfErrorKind> {
    if value.is_empty() {
        Ok(None)
    } else if value.eq_ignore_ascii_case("AM") {
        Ok(Some(0))
    } else if value.eq_ignore_ascii_case("PM") {
        Ok(Some(1))
    } else {
        let value = value.to_owned();
        Err(ExtendedMarkProblem::InvalidSession { value }.into())
    }
}

/// Accepts a code of exactly two characters. Whether the code is a valid attendance code is
/// for the caller to judge.
fn parse_code(value: &str) -> Result<Option<String>, CtfErrorKind> {
    match value.chars().count() {
        0 => Ok(None),
        2 => Ok(Some(value.to_owned())),
        _ => {
            let code = value.to_owned();
            Err(ExtendedMarkProblem::InvalidCode { code }.into())
        }
    }
}
