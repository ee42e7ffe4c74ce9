//! Writes the model as a pretty-printed UTF-8 Common Transfer File.

use chrono::{Datelike, NaiveDate};
use quick_xml::escape::partial_escape;

use crate::error::{WriteError, WriteProblem, session_name};
use crate::marks;
use crate::model::{AttendSessions, CtfFile, Header, Pupil, SchoolIdentity, YearData};
use crate::values::{Placeholders, is_school_number};

/// The first `CTFversion` whose files name the pupil's sex `Sex` rather than `Gender`.
const FIRST_VERSION_WITH_SEX: u32 = 25;

/// Writes `file` as a Common Transfer File: UTF-8 with an XML declaration, indented by two
/// spaces, with no byte order mark and no newline after the root element's end tag.
///
/// Two-character codes are written as described in the crate documentation. The header gets
/// `DocumentQualifier` `partial`, because the file carries only part of each pupil's record.
/// The pupil's sex is written as `Sex` when `CTFversion` is 25 or later and as `Gender`
/// otherwise, and is left out when empty.
///
/// # Errors
///
/// Returns a [`WriteError`] naming the element for a value that [`read`](crate::read) would
/// reject or not give back unchanged. Such values are an empty required value or `Some("")`,
/// a value with surrounding whitespace or a control character, and an `LEA` or `Estab` of the
/// wrong length. So are a date whose year is not four digits, an odd number of marks, and a
/// mark that is not one or two visible characters. When `write` succeeds, `read` returns a
/// file equal to `file`.
pub fn write(file: &CtfFile) -> Result<Vec<u8>, WriteError> {
    let mut out = XmlOut::default();
    out.text
        .push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.open("CTfile", None);
    write_header(&mut out, &file.header)?;
    out.open("CTFpupilData", None);
    for (index, pupil) in file.pupils.iter().enumerate() {
        write_pupil(&mut out, pupil, index + 1, &file.header.ctf_version)?;
    }
    out.close();
    out.close();
    Ok(out.into_bytes())
}

fn write_header(out: &mut XmlOut, header: &Header) -> Result<(), WriteError> {
    out.open("Header", None);
    out.optional_leaf("DocumentName", header.document_name.as_deref())?;
    out.leaf("CTFversion", &header.ctf_version)?;
    out.optional_leaf("DateTime", header.date_time.as_deref())?;
    out.leaf("DocumentQualifier", "partial")?;

    out.open("SourceSchool", None);
    write_school(out, &header.source_school, Placeholders::Rejected)?;
    out.optional_leaf("AcademicYear", header.academic_year.as_deref())?;
    out.close();

    if let Some(dest_school) = &header.dest_school {
        out.open("DestSchool", None);
        write_school(out, dest_school, Placeholders::Accepted)?;
        out.close();
    }
    out.close();
    Ok(())
}

fn write_school(
    out: &mut XmlOut,
    school: &SchoolIdentity,
    placeholders: Placeholders,
) -> Result<(), WriteError> {
    out.school_number("LEA", &school.lea, 3, placeholders)?;
    out.school_number("Estab", &school.estab, 4, placeholders)?;
    out.optional_leaf("SchoolName", school.school_name.as_deref())
}

fn write_pupil(
    out: &mut XmlOut,
    pupil: &Pupil,
    ordinal: usize,
    ctf_version: &str,
) -> Result<(), WriteError> {
    out.open("Pupil", Some(ordinal));
    out.upn = Some(pupil.upn.clone());
    out.leaf("UPN", &pupil.upn)?;
    out.leaf("Surname", &pupil.surname)?;
    out.leaf("Forename", &pupil.forename)?;
    out.date("DOB", pupil.date_of_birth)?;
    if !pupil.sex.is_empty() {
        out.leaf(sex_element(ctf_version), &pupil.sex)?;
    }
    if pupil.year_group.is_some() || pupil.enrol_status.is_some() {
        out.open("BasicDetails", None);
        if let Some(year_group) = &pupil.year_group {
            out.leaf("NCyearActual", year_group)?;
        }
        if let Some(enrol_status) = &pupil.enrol_status {
            out.leaf("EnrolStatus", enrol_status)?;
        }
        out.close();
    }
    if !pupil.attendance.is_empty() {
        out.open("Attendance", None);
        for (index, year_data) in pupil.attendance.iter().enumerate() {
            write_year_data(out, year_data, index + 1)?;
        }
        out.close();
    }
    out.upn = None;
    out.close();
    Ok(())
}

fn sex_element(ctf_version: &str) -> &'static str {
    let major = ctf_version
        .split('.')
        .next()
        .and_then(|major| major.trim().parse::<u32>().ok());
    match major {
        Some(major) if major >= FIRST_VERSION_WITH_SEX => "Sex",
        _ => "Gender",
    }
}

fn write_year_data(
    out: &mut XmlOut,
    year_data: &YearData,
    ordinal: usize,
) -> Result<(), WriteError> {
    out.open("YearData", Some(ordinal));
    out.optional_leaf("Year", year_data.year.as_deref())?;
    write_school(out, &year_data.school, Placeholders::Rejected)?;
    let totals = &year_data.totals;
    out.count("SessionsPossible", totals.possible);
    out.count("SessionsAuthorised", totals.authorised);
    out.count("SessionsAttended", totals.attended);
    out.count("SessionsUnauthorised", totals.unauthorised);
    if let Some(sessions) = &year_data.sessions {
        write_attend_sessions(out, sessions)?;
    }
    out.close();
    Ok(())
}

fn write_attend_sessions(out: &mut XmlOut, sessions: &AttendSessions) -> Result<(), WriteError> {
    out.open("AttendSessions", None);
    out.date("AttendanceStartDate", sessions.start_date)?;
    check_marks(&sessions.marks).map_err(|problem| out.error("AttendanceMarks", problem))?;

    let (marks, extended) = marks::compact(sessions);
    out.leaf_unchecked("AttendanceMarks", &marks);
    if !extended.is_empty() {
        out.open("ExtendedMarks", None);
        for (index, mark) in extended.iter().enumerate() {
            out.open("ExtendedMark", Some(index + 1));
            out.date("Date", mark.date)?;
            out.leaf_unchecked("Session", session_name(mark.session));
            out.leaf_unchecked("Code", &mark.code);
            out.close();
        }
        out.close();
    }
    out.close();
    Ok(())
}

/// Checks that the marks cover whole days and that each is one or two visible characters.
fn check_marks(marks: &[String]) -> Result<(), WriteProblem> {
    for (index, code) in marks.iter().enumerate() {
        let length = code.chars().count();
        let visible = code
            .chars()
            .all(|character| !character.is_whitespace() && !is_forbidden(character));
        if !(1..=2).contains(&length) || !visible {
            let code = code.clone();
            return Err(WriteProblem::InvalidMark { index, code });
        }
    }
    if marks.len() % 2 == 1 {
        return Err(WriteProblem::OddMarkCount { count: marks.len() });
    }
    Ok(())
}

/// Returns whether `character` is forbidden in a value. Forbidden are control characters,
/// tabs and line breaks among them, and U+FFFE and U+FFFF, which XML 1.0 does not allow.
fn is_forbidden(character: char) -> bool {
    character.is_control() || matches!(character, '\u{FFFE}' | '\u{FFFF}')
}

/// Checks that the reader would return `value` unchanged.
fn check_text(value: &str) -> Result<(), WriteProblem> {
    if value.is_empty() {
        return Err(WriteProblem::Empty);
    }
    if value.trim() != value {
        let value = value.to_owned();
        return Err(WriteProblem::SurroundingWhitespace { value });
    }
    if value.chars().any(is_forbidden) {
        let value = value.to_owned();
        return Err(WriteProblem::ControlCharacter { value });
    }
    Ok(())
}

/// An XML document under construction, indented by two spaces per level.
#[derive(Default)]
struct XmlOut {
    text: String,
    /// Tag names of the open elements, with the path segment for each.
    open: Vec<(&'static str, String)>,
    /// The UPN of the pupil being written, for errors.
    upn: Option<String>,
}

impl XmlOut {
    fn open(&mut self, tag: &'static str, ordinal: Option<usize>) {
        self.indent();
        self.text.push_str(&format!("<{tag}>\n"));
        let segment = match ordinal {
            Some(ordinal) => format!("{tag}[{ordinal}]"),
            None => tag.to_owned(),
        };
        self.open.push((tag, segment));
    }

    fn close(&mut self) {
        if let Some((tag, _)) = self.open.pop() {
            self.indent();
            self.text.push_str(&format!("</{tag}>\n"));
        }
    }

    fn leaf(&mut self, tag: &'static str, value: &str) -> Result<(), WriteError> {
        check_text(value).map_err(|problem| self.error(tag, problem))?;
        self.leaf_unchecked(tag, value);
        Ok(())
    }

    fn optional_leaf(&mut self, tag: &'static str, value: Option<&str>) -> Result<(), WriteError> {
        match value {
            Some(value) => self.leaf(tag, value),
            None => Ok(()),
        }
    }

    fn school_number(
        &mut self,
        tag: &'static str,
        value: &str,
        digits: usize,
        placeholders: Placeholders,
    ) -> Result<(), WriteError> {
        if !is_school_number(value, digits, placeholders) {
            let value = value.to_owned();
            return Err(self.error(tag, WriteProblem::NotDigits { value, digits }));
        }
        self.leaf_unchecked(tag, value);
        Ok(())
    }

    fn date(&mut self, tag: &'static str, date: NaiveDate) -> Result<(), WriteError> {
        if !(0..=9999).contains(&date.year()) {
            return Err(self.error(tag, WriteProblem::DateOutOfRange { date }));
        }
        self.leaf_unchecked(tag, &date.format("%Y-%m-%d").to_string());
        Ok(())
    }

    fn count(&mut self, tag: &'static str, count: Option<u32>) {
        if let Some(count) = count {
            self.leaf_unchecked(tag, &count.to_string());
        }
    }

    /// Writes `<tag>value</tag>` on one line, escaping `<`, `>` and `&`.
    fn leaf_unchecked(&mut self, tag: &'static str, value: &str) {
        self.indent();
        let value = partial_escape(value);
        self.text.push_str(&format!("<{tag}>{value}</{tag}>\n"));
    }

    fn indent(&mut self) {
        for _ in 0..self.open.len() {
            self.text.push_str("  ");
        }
    }

    fn error(&self, tag: &str, problem: WriteProblem) -> WriteError {
        let mut segments: Vec<&str> = self
            .open
            .iter()
            .map(|(_, segment)| segment.as_str())
            .collect();
        segments.push(tag);
        WriteError {
            path: segments.join("/"),
            upn: self.upn.clone(),
            problem,
        }
    }

    /// Returns the document without the newline after the root element's end tag, so that
    /// every proper prefix of the output is an incomplete document.
    fn into_bytes(mut self) -> Vec<u8> {
        if self.text.ends_with('\n') {
            self.text.pop();
        }
        self.text.into_bytes()
    }
}
