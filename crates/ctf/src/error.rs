//! Errors from reading and writing Common Transfer Files.

use std::fmt;

use chrono::NaiveDate;

/// An error from [`read`](crate::read): the problem with the file, its place, and the fix.
///
/// The message names the line, the element path and the pupil's UPN where they are known, for
/// example `line 37, CTfile/CTFpupilData/Pupil[2]/DOB (pupil A919200125001): invalid date
/// "2019-13-04" in <DOB>, expected YYYY-MM-DD; correct the record in the sending school's MIS
/// and export the file again`. Callers that know the file name put it in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CtfError {
    /// Boxed so that `Result<_, CtfError>` stays small on the success path.
    details: Box<ErrorDetails>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorDetails {
    kind: CtfErrorKind,
    path: Option<String>,
    upn: Option<String>,
    line: Option<u64>,
}

impl CtfError {
    pub(crate) fn new(kind: CtfErrorKind) -> Self {
        let details = ErrorDetails {
            kind,
            path: None,
            upn: None,
            line: None,
        };
        Self {
            details: Box::new(details),
        }
    }

    pub(crate) fn at_line(mut self, line: u64) -> Self {
        self.details.line = Some(line);
        self
    }

    pub(crate) fn in_element(mut self, path: String, upn: Option<String>) -> Self {
        self.details.path = Some(path);
        self.details.upn = upn;
        self
    }

    pub(crate) fn without_path(mut self) -> Self {
        self.details.path = None;
        self
    }

    /// Returns the problem.
    pub fn kind(&self) -> &CtfErrorKind {
        &self.details.kind
    }

    /// Returns the element path, such as `CTfile/CTFpupilData/Pupil[12]/DOB`, with element
    /// names as the file spells them. Repeated elements (`Pupil`, `YearData`, `ExtendedMark`)
    /// are numbered from 1. Returns `None` when the problem lies outside the root element.
    pub fn path(&self) -> Option<&str> {
        self.details.path.as_deref()
    }

    /// Returns the UPN of the pupil whose record contains the problem, once the reader has
    /// reached the pupil's `UPN` element.
    pub fn upn(&self) -> Option<&str> {
        self.details.upn.as_deref()
    }

    /// Returns the 1-based line number of the problem, or of the start tag of the element it
    /// concerns.
    pub fn line(&self) -> Option<u64> {
        self.details.line
    }
}

impl fmt::Display for CtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = Vec::new();
        if let Some(line) = self.line() {
            place.push(format!("line {line}"));
        }
        if let Some(path) = self.path() {
            place.push(path.to_owned());
        }
        let mut place = place.join(", ");
        if let Some(upn) = self.upn() {
            if !place.is_empty() {
                place.push(' ');
            }
            place.push_str(&format!("(pupil {upn})"));
        }
        if !place.is_empty() {
            write!(f, "{place}: ")?;
        }
        let kind = self.kind();
        write!(f, "{kind}; {}", kind.advice())
    }
}

/// The problem with a file that [`read`](crate::read) rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CtfErrorKind {
    /// The file has no bytes, or only whitespace.
    #[error("the file is empty")]
    EmptyFile,
    /// The file starts with a UTF-16 byte order mark or UTF-16 text.
    #[error("the file is encoded as UTF-16, but rollcall reads only UTF-8")]
    Utf16,
    /// The XML declaration names an encoding other than UTF-8.
    #[error("the XML declaration gives the encoding {encoding}, but rollcall reads only UTF-8")]
    DeclaredEncoding {
        /// The encoding as the declaration spells it.
        encoding: String,
    },
    /// The bytes are not valid UTF-8.
    #[error("the file contains bytes that are not valid UTF-8")]
    InvalidUtf8,
    /// The file is not XML at all, for example a zip archive or a CSV export.
    #[error("not an XML file: {detail}")]
    NotXml {
        /// The content found in place of XML.
        detail: String,
    },
    /// The file is XML but breaks the XML syntax, for example with mismatched tags.
    #[error("malformed XML: {detail}")]
    MalformedXml {
        /// The problem, as the XML parser describes it.
        detail: String,
    },
    /// The file contains a declaration or comments but no element.
    #[error("the file has no root element")]
    MissingRoot,
    /// The root element is not `CTfile`.
    #[error("not a Common Transfer File: root element is <{root}>")]
    NotCtf {
        /// The root element's name.
        root: String,
    },
    /// The file ends inside an element or a tag.
    #[error("{}", truncated_message(element.as_deref()))]
    Truncated {
        /// The innermost element still open at the end of the file, if any.
        element: Option<String>,
    },
    /// A required element is absent or has no text.
    #[error("missing or empty required element <{element}>")]
    MissingElement {
        /// The element's name.
        element: &'static str,
    },
    /// An element that may appear only once appears again.
    #[error("<{element}> appears more than once")]
    Repeated {
        /// The element's name.
        element: &'static str,
    },
    /// A value is given twice, in two elements or twice in one, and the two differ.
    #[error("<{element}> is given twice with different values, \"{first}\" and \"{second}\"")]
    ConflictingValues {
        /// The element's name.
        element: &'static str,
        /// The value read first.
        first: String,
        /// The value read second.
        second: String,
    },
    /// A date is not a real date in the form `YYYY-MM-DD`.
    #[error("invalid date \"{value}\" in <{element}>, expected YYYY-MM-DD")]
    InvalidDate {
        /// The element's name.
        element: &'static str,
        /// The text of the element.
        value: String,
    },
    /// A session total is not a whole number that fits in 32 bits.
    #[error("invalid number \"{value}\" in <{element}>, expected a whole number of sessions")]
    InvalidNumber {
        /// The element's name.
        element: &'static str,
        /// The text of the element.
        value: String,
    },
    /// An `LEA` is not three digits or an `Estab` is not four digits.
    #[error("invalid <{element}> \"{value}\", expected {digits} digits")]
    InvalidSchoolNumber {
        /// The element's name, `LEA` or `Estab`.
        element: &'static str,
        /// The text of the element.
        value: String,
        /// The number of digits expected.
        digits: usize,
    },
    /// `AttendanceMarks` contains an odd number of marks.
    #[error(
        "<AttendanceMarks> has {count} marks, an odd number, but each day has an AM and a PM session"
    )]
    OddMarkCount {
        /// The number of marks after whitespace is removed.
        count: usize,
    },
    /// An `ExtendedMarks/ExtendedMark` entry does not fit the marks string.
    #[error(transparent)]
    ExtendedMark(#[from] ExtendedMarkProblem),
}

fn truncated_message(element: Option<&str>) -> String {
    match element {
        Some(element) => format!("the file ends before <{element}> is closed"),
        None => "the file ends unexpectedly".to_owned(),
    }
}

impl CtfErrorKind {
    /// Returns what a school data manager can do about the problem.
    pub fn advice(&self) -> &'static str {
        match self {
            Self::EmptyFile | Self::MissingRoot => "export the CTF again from the MIS",
            Self::Truncated { .. } => "the file is incomplete, so copy or export it again",
            Self::Utf16 | Self::DeclaredEncoding { .. } | Self::InvalidUtf8 => {
                "export the file again as UTF-8"
            }
            Self::NotXml { .. } => {
                "check that this is the CTF itself and not a zip archive, spreadsheet or report"
            }
            Self::MalformedXml { .. } => {
                "export the file again from the MIS rather than editing it by hand"
            }
            Self::NotCtf { .. } => "choose a Common Transfer File, whose root element is <CTfile>",
            Self::MissingElement { .. }
            | Self::Repeated { .. }
            | Self::ConflictingValues { .. }
            | Self::InvalidDate { .. }
            | Self::InvalidNumber { .. }
            | Self::InvalidSchoolNumber { .. }
            | Self::OddMarkCount { .. }
            | Self::ExtendedMark(_) => {
                "correct the record in the sending school's MIS and export the file again"
            }
        }
    }
}

/// A problem with one `ExtendedMark` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtendedMarkProblem {
    /// `Session` is neither `AM` nor `PM`.
    #[error("invalid <Session> \"{value}\" in <ExtendedMark>, expected AM or PM")]
    InvalidSession {
        /// The text of the element.
        value: String,
    },
    /// `Code` does not have exactly two characters.
    #[error(
        "invalid <Code> \"{code}\" in <ExtendedMark>, expected a code of two characters such as C1"
    )]
    InvalidCode {
        /// The text of the element.
        code: String,
    },
    /// The session lies before the start date or after the last mark.
    #[error(
        "{} {} lies outside <AttendanceMarks>, {}",
        date,
        session_name(*session),
        covered_message(*covered)
    )]
    OutsideMarks {
        /// The date of the entry.
        date: NaiveDate,
        /// 0 for AM, 1 for PM.
        session: u8,
        /// The first and last dates that the marks string covers, or `None` when it is empty.
        covered: Option<(NaiveDate, NaiveDate)>,
    },
    /// The marks string has a different character at the entry's session.
    #[error(
        "<AttendanceMarks> has '{mark}' for {date} {}, but the code {code} given for that session starts with '{}'",
        session_name(*session),
        code.chars().next().unwrap_or(' ')
    )]
    FirstCharacterMismatch {
        /// The date of the entry.
        date: NaiveDate,
        /// 0 for AM, 1 for PM.
        session: u8,
        /// The two-character code.
        code: String,
        /// The character in the marks string.
        mark: char,
    },
    /// Two entries name the same session.
    #[error("{date} {} is listed twice in <ExtendedMarks>", session_name(*session))]
    Duplicate {
        /// The date of the entries.
        date: NaiveDate,
        /// 0 for AM, 1 for PM.
        session: u8,
    },
}

/// Returns the name of a session: `AM` for 0 and `PM` for any other number.
pub(crate) fn session_name(session: u8) -> &'static str {
    if session == 0 { "AM" } else { "PM" }
}

fn covered_message(covered: Option<(NaiveDate, NaiveDate)>) -> String {
    match covered {
        Some((first, last)) => format!("which covers {first} AM to {last} PM"),
        None => "which is empty".to_owned(),
    }
}

/// An error from [`write`](fn@crate::write): a value that a Common Transfer File cannot carry, or
/// that [`read`](crate::read) would not give back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct WriteError {
    /// The element path of the value, such as `CTfile/CTFpupilData/Pupil[3]/Surname`.
    pub path: String,
    /// The UPN of the pupil whose record contains the value, if any.
    pub upn: Option<String>,
    /// The problem with the value.
    pub problem: WriteProblem,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}", self.path)?;
        if let Some(upn) = &self.upn {
            write!(f, " (pupil {upn})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// The problem with a value that [`write`](fn@crate::write) rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteProblem {
    /// A required value, or a value given as `Some`, is empty.
    #[error("the value is empty; leave the field out (None) or fill it in")]
    Empty,
    /// The value starts or ends with whitespace, which the reader would remove.
    #[error("the value {value:?} starts or ends with whitespace; trim it first")]
    SurroundingWhitespace {
        /// The value.
        value: String,
    },
    /// The value contains a control character, such as a tab or a line break.
    #[error("the value {value:?} contains a control character; remove it first")]
    ControlCharacter {
        /// The value.
        value: String,
    },
    /// An `LEA` or `Estab` value does not have the right number of digits.
    #[error("the value {value:?} is not {digits} digits")]
    NotDigits {
        /// The value.
        value: String,
        /// The number of digits expected.
        digits: usize,
    },
    /// The date's year does not have four digits.
    #[error("the date {date} does not have a four-digit year")]
    DateOutOfRange {
        /// The date.
        date: NaiveDate,
    },
    /// The marks do not cover whole days.
    #[error("there are {count} marks, an odd number, but each day needs an AM and a PM mark")]
    OddMarkCount {
        /// The number of marks.
        count: usize,
    },
    /// A mark is empty, longer than two characters, or contains whitespace or a control
    /// character.
    #[error("the mark {code:?} at position {index} is not one or two visible characters")]
    InvalidMark {
        /// The position of the mark in `AttendSessions::marks`, from 0.
        index: usize,
        /// The mark.
        code: String,
    },
}
