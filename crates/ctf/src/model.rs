//! The parts of a Common Transfer File that rollcall reads and writes.

use chrono::NaiveDate;

/// One Common Transfer File: the sending school and its pupils.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtfFile {
    /// The `Header` element.
    pub header: Header,
    /// One entry per `CTFpupilData/Pupil` element, in file order.
    pub pupils: Vec<Pupil>,
}

/// The `Header` element: who sent the file and for which academic year.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `CTFversion`, for example `25.0`.
    pub ctf_version: String,
    /// `DateTime` the file was made, kept as written.
    pub date_time: Option<String>,
    /// `DocumentName`, if present.
    pub document_name: Option<String>,
    /// `SourceSchool`.
    pub source_school: SchoolIdentity,
    /// `SourceSchool/AcademicYear`, the year the academic year starts in (for example `2025`).
    pub academic_year: Option<String>,
    /// `DestSchool`, if present.
    pub dest_school: Option<SchoolIdentity>,
}

/// A school as CTF names it: local authority number and establishment number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchoolIdentity {
    /// `LEA`: the three-digit local authority number, for example `919` for Hertfordshire.
    pub lea: String,
    /// `Estab`: the four-digit establishment number.
    pub estab: String,
    /// `SchoolName`.
    pub school_name: Option<String>,
}

impl SchoolIdentity {
    /// Returns the seven-digit LAESTAB (LA number then establishment number), e.g. `9192001`.
    pub fn laestab(&self) -> String {
        format!("{}{}", self.lea, self.estab)
    }
}

/// One `Pupil` element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pupil {
    /// `UPN`: the 13-character unique pupil number.
    pub upn: String,
    /// `Surname`.
    pub surname: String,
    /// `Forename`.
    pub forename: String,
    /// `DOB`.
    pub date_of_birth: NaiveDate,
    /// `Gender` (or `Sex` in CTF 25): `M`, `F` or as written, and empty when the file has
    /// neither element.
    pub sex: String,
    /// `NCyearActual`, read from `BasicDetails` or directly under `Pupil`: `R`, `1` to `14`, ...
    pub year_group: Option<String>,
    /// `EnrolStatus` in `BasicDetails`: `C` for a single registration, `M` and `S` for the
    /// main and subsidiary school of a dual registration, or as written.
    pub enrol_status: Option<String>,
    /// One entry per `Attendance/YearData` element.
    pub attendance: Vec<YearData>,
}

/// One `Attendance/YearData` element: a year of attendance at one school.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YearData {
    /// `Year`: the year the academic year starts in.
    pub year: Option<String>,
    /// `LEA`, `Estab` and `SchoolName` of the school that kept this register.
    pub school: SchoolIdentity,
    /// The totals the sending system wrote, if present.
    pub totals: Totals,
    /// `AttendSessions`, if present.
    pub sessions: Option<AttendSessions>,
}

/// The four session totals of a `YearData` element, each optional in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// `SessionsPossible`.
    pub possible: Option<u32>,
    /// `SessionsAuthorised`.
    pub authorised: Option<u32>,
    /// `SessionsAttended`.
    pub attended: Option<u32>,
    /// `SessionsUnauthorised`.
    pub unauthorised: Option<u32>,
}

/// `AttendSessions`: the session marks from a start date, two sessions per calendar day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttendSessions {
    /// `AttendanceStartDate`: the date of the first session in `marks`.
    pub start_date: NaiveDate,
    /// One code per session, AM then PM for each calendar day from `start_date`, weekends and
    /// closures included (as `#`). Codes of two characters (`C1`, `J1`, `Y3`, ...) appear whole
    /// here; see the crate documentation for how they are written in the file.
    pub marks: Vec<String>,
}

impl AttendSessions {
    /// Returns the date and session (0 for AM, 1 for PM) of the mark at `index`.
    pub fn session_at(&self, index: usize) -> (NaiveDate, u8) {
        let day = (index / 2) as u64;
        let date = self
            .start_date
            .checked_add_days(chrono::Days::new(day))
            .unwrap_or(NaiveDate::MAX);
        (date, (index % 2) as u8)
    }

    /// Returns the index in `marks` of the session on `date` (0 for AM, 1 for PM), or `None`
    /// when that session lies before `start_date` or after the last mark.
    pub fn session_index(&self, date: NaiveDate, session: u8) -> Option<usize> {
        if session > 1 {
            return None;
        }
        let days = usize::try_from(date.signed_duration_since(self.start_date).num_days()).ok()?;
        let index = days.checked_mul(2)?.checked_add(usize::from(session))?;
        (index < self.marks.len()).then_some(index)
    }
}
