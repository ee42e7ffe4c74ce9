//! Reads and writes the attendance parts of DfE Common Transfer Files (CTF).
//!
//! A CTF is the XML file that schools in England send each other, through their management
//! information systems (MIS), when a pupil moves school. [`read`] keeps the header, each
//! pupil's identifying details and year group, and the attendance records. It skips
//! everything else (addresses, contacts, SEN, assessments and so on), so none of that reaches
//! the model. [`write`](fn@crate::write) produces a file with the same parts.
//!
//! # What is read
//!
//! ```text
//! CTfile
//!   Header: DocumentName?, CTFversion, DateTime?,
//!           SourceSchool (LEA, Estab, SchoolName?, AcademicYear?),
//!           DestSchool? (LEA, Estab, SchoolName?)
//!   CTFpupilData
//!     Pupil*: UPN, Surname, Forename, DOB, Gender? or Sex?,
//!             NCyearActual? (directly or inside BasicDetails),
//!             Attendance?
//!               YearData*: Year?, LEA, Estab, SchoolName?, SessionsPossible?,
//!                          SessionsAuthorised?, SessionsAttended?, SessionsUnauthorised?,
//!                          AttendSessions? (AttendanceStartDate, AttendanceMarks?, ExtendedMarks?)
//! ```
//!
//! Element names match in any letter case (`UPN` or `upn`, `CTFversion` or `CTFVersion`), and
//! a namespace prefix is ignored. Elements not listed are skipped wherever they appear. Leading
//! and trailing whitespace is trimmed from every value, and an empty element counts as absent.
//! An element given twice with the same value is accepted, and with different values is an
//! error. `DestSchool` also accepts `LEA` and `Estab` made of one capital letter repeated, such
//! as `XXX` and `XXXX`, which schools write when the destination school is not known.
//!
//! # Attendance marks
//!
//! `AttendanceMarks` contains one character per session: an AM and a PM mark for every calendar
//! day from `AttendanceStartDate`, weekends and closures included (usually as `#`). Whitespace
//! inside the string, such as line breaks added by a pretty printer, is removed. An odd number
//! of marks is an error. The reader does not check that a code is a valid attendance code.
//!
//! Codes of two characters (`C1`, `C2`, `J1`, `Y1` to `Y7`) do not fit one character per
//! session, so rollcall writes the code's first character in the string and lists the whole
//! code in an `ExtendedMarks` element after `AttendanceMarks`:
//!
//! ```xml
//! <AttendSessions>
//!   <AttendanceStartDate>2025-09-03</AttendanceStartDate>
//!   <AttendanceMarks>/\/\C\##</AttendanceMarks>
//!   <ExtendedMarks>
//!     <ExtendedMark><Date>2025-09-05</Date><Session>AM</Session><Code>C1</Code></ExtendedMark>
//!   </ExtendedMarks>
//! </AttendSessions>
//! ```
//!
//! Each `ExtendedMark` replaces its session's character with the whole code, so
//! [`AttendSessions::marks`] contains `C1` for the morning of 5 September. An entry is an error
//! if its session lies outside the string or if its code's first character differs from the
//! character in the string. It is also an error if `Session` is not `AM` or `PM`, if `Code`
//! does not have two characters, or if another entry names the same session.
//! [`write`](fn@crate::write) adds `ExtendedMarks` only when some code has two characters.
//!
//! # Errors
//!
//! A [`CtfError`] names the problem, the line, the element path and the pupil's UPN where they
//! are known, and tells the reader what to do. It does not know the file name, so callers put that in
//! front.

mod cursor;
mod decode;
mod error;
mod marks;
mod model;
mod reader;
mod values;
mod writer;

pub use error::{CtfError, CtfErrorKind, ExtendedMarkProblem, WriteError, WriteProblem};
pub use model::*;
pub use reader::read;
pub use writer::write;
