//! Checks each file before anything is sent: its encoding, its kind (pupils or marks), and
//! the columns its profile needs. A file that fails any of these is refused whole.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::NaiveDate;
use rollcall_domain::Session;
use sha2::{Digest, Sha256};

use crate::lines::Lines;
use crate::profile::{HeadingMatch, Profile, SessionColumns, normalise_heading};

/// The kind of data a file contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Pupils on roll, one row each.
    Pupils,
    /// Session marks.
    Marks,
}

impl Kind {
    /// Returns `pupils` or `marks`, as the summary and its JSON name the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pupils => "pupils",
            Self::Marks => "marks",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The column positions of a pupils file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PupilColumns {
    pub mis_id: usize,
    pub upn: usize,
    pub forename: usize,
    pub surname: usize,
    pub date_of_birth: usize,
    pub admission_date: usize,
    pub sex: usize,
    pub year_group: usize,
    pub leaving_date: Option<usize>,
    pub class: Option<usize>,
}

/// The column positions of a marks file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkColumns {
    pub mis_id: Option<usize>,
    pub upn: Option<usize>,
    pub cells: MarkCells,
}

/// The columns of a marks file that carry its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkCells {
    /// One row per pupil and session.
    Long {
        date: usize,
        session: usize,
        code: usize,
        minutes_late: Option<usize>,
        comment: Option<usize>,
    },
    /// One column per session, in file order.
    Wide(Vec<SessionCell>),
}

/// A session column of a wide marks file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCell {
    pub index: usize,
    pub date: NaiveDate,
    pub session: Session,
}

/// The columns of a file, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    Pupils(PupilColumns),
    Marks(MarkColumns),
}

impl Layout {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Pupils(_) => Kind::Pupils,
            Self::Marks(_) => Kind::Marks,
        }
    }
}

/// A file that passed the checks, ready to read.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub path: PathBuf,
    /// The path as given on the command line, for messages.
    pub name: String,
    pub layout: Layout,
    /// The headings as written in the file.
    pub headings: Vec<String>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    pub size: u64,
}

/// Returns the CSV reader every file is read with: a header row, and rows of any length, so
/// that a short or long row is rejected with its line rather than stopping the file. Give
/// [`record_line`](crate::lines::record_line) each record it reads for the record's line.
pub fn csv_reader<R: Read>(source: R) -> csv::Reader<Lines<R>> {
    csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(Lines::new(source))
}

/// Checks one file against the profile and returns its plan, or the reason it is refused.
pub fn plan_file(path: &Path, profile: &Profile) -> anyhow::Result<FilePlan> {
    let name = path.display().to_string();
    let open = || std::fs::File::open(path).with_context(|| format!("cannot read {name}"));
    let (sha256, size) = hash_and_check_utf8(&name, open()?)?;
    let reader = csv_reader(open()?);
    plan_headings(
        name.clone(),
        path.to_path_buf(),
        reader,
        profile,
        sha256,
        size,
    )
}

/// Checks the bytes of a file held in memory as [`plan_file`] checks a file, naming it
/// `name` in messages and in the plan's path.
pub fn plan_bytes(name: &str, bytes: &[u8], profile: &Profile) -> anyhow::Result<FilePlan> {
    let (sha256, size) = hash_and_check_utf8(name, bytes)?;
    plan_headings(
        name.to_owned(),
        PathBuf::from(name),
        csv_reader(bytes),
        profile,
        sha256,
        size,
    )
}

/// Reads the header row and matches it against the profile.
fn plan_headings<R: Read>(
    name: String,
    path: PathBuf,
    mut reader: csv::Reader<Lines<R>>,
    profile: &Profile,
    sha256: String,
    size: u64,
) -> anyhow::Result<FilePlan> {
    let headings: Vec<String> = reader
        .headers()
        .with_context(|| format!("cannot read the header row of {name}"))?
        .iter()
        .map(|heading| heading.trim_start_matches('\u{feff}').trim().to_owned())
        .collect();
    if headings.iter().all(String::is_empty) {
        bail!("{name} is empty: it has no header row; export it again with the column headings");
    }

    let columns = Columns::new(&headings);
    let kind = detect_kind(&name, profile, &columns)?;
    let layout = match kind {
        Kind::Pupils => Layout::Pupils(pupil_columns(&name, profile, &columns)?),
        Kind::Marks => Layout::Marks(mark_columns(&name, profile, &columns)?),
    };
    Ok(FilePlan {
        path,
        name,
        layout,
        headings,
        sha256,
        size,
    })
}

/// Reads the whole file once to hash it and to check that it is UTF-8, so that a file saved
/// in another encoding is refused before any of it is sent.
fn hash_and_check_utf8(name: &str, mut file: impl Read) -> anyhow::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    // Bytes of a character split across two reads, carried to the next read.
    let mut carried: Vec<u8> = Vec::new();
    let mut size: u64 = 0;
    let mut line: u64 = 1;
    loop {
        let read = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {name}"))?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        hasher.update(chunk);
        size += read as u64;
        carried.extend_from_slice(chunk);
        let valid_up_to = match std::str::from_utf8(&carried) {
            Ok(_) => carried.len(),
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(error) => {
                let before = &carried[..error.valid_up_to()];
                line += before.iter().filter(|b| **b == b'\n').count() as u64;
                bail!(
                    "{name} is not UTF-8 text: line {line} has a byte that is not UTF-8, so the \
                     file was probably saved as Windows-1252 or another encoding; save it as \
                     \"CSV UTF-8\" and import it again"
                );
            }
        };
        line += carried[..valid_up_to]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        carried.drain(..valid_up_to);
    }
    if !carried.is_empty() {
        bail!(
            "{name} is not UTF-8 text: it ends in the middle of a character; save it as \
             \"CSV UTF-8\" and import it again"
        );
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// A file's headings, looked up as headings are compared.
struct Columns<'a> {
    headings: &'a [String],
    positions: HashMap<String, Vec<usize>>,
}

impl<'a> Columns<'a> {
    fn new(headings: &'a [String]) -> Self {
        let mut positions: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, heading) in headings.iter().enumerate() {
            positions
                .entry(normalise_heading(heading))
                .or_default()
                .push(index);
        }
        Self {
            headings,
            positions,
        }
    }

    fn has(&self, heading: &str) -> bool {
        self.positions.contains_key(&normalise_heading(heading))
    }

    /// Returns the position of a heading, or an error when the file has it twice.
    fn find(&self, file: &str, heading: &str) -> anyhow::Result<Option<usize>> {
        match self
            .positions
            .get(&normalise_heading(heading))
            .map(Vec::as_slice)
        {
            None => Ok(None),
            Some([index]) => Ok(Some(*index)),
            Some(_) => bail!(
                "{file}: the heading {heading:?} appears more than once, so rollcall cannot tell \
                 which column to read; remove or rename the extra column and import again"
            ),
        }
    }

    fn list(&self) -> String {
        quoted_list(self.headings.iter().map(String::as_str))
    }
}

fn quoted_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items
        .map(|item| format!("{item:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides whether a file contains pupils or marks. A profile with one section decides alone.
/// With both, the file's headings decide: the date-of-birth heading marks a pupils file, and
/// the code heading or a session column a marks file. A file with neither is taken for the
/// kind whose other headings it has, so that the refusal can name the missing column.
fn detect_kind(file: &str, profile: &Profile, columns: &Columns<'_>) -> anyhow::Result<Kind> {
    let (pupils, marks) = match (&profile.pupils, &profile.marks) {
        (Some(_), None) => return Ok(Kind::Pupils),
        (None, Some(_)) => return Ok(Kind::Marks),
        (Some(pupils), Some(marks)) => (pupils, marks),
        (None, None) => bail!("profile {} has neither [pupils] nor [marks]", profile.name),
    };
    let pupil_sign = pupils.date_of_birth.as_str();
    let looks_like_pupils = columns.has(pupil_sign);
    let (marks_sign, looks_like_marks) = match &marks.sessions {
        SessionColumns::Long { code, .. } => (format!("{code:?}"), columns.has(code)),
        SessionColumns::Wide(heading) => (
            format!("session columns such as {:?}", heading.pattern),
            columns.headings.iter().any(|text| {
                heading.classify(text, &profile.dates, &profile.sessions) != HeadingMatch::Other
            }),
        ),
    };
    let present = |headings: Vec<&str>, others: &[&str]| {
        headings
            .into_iter()
            .filter(|heading| {
                let key = normalise_heading(heading);
                columns.has(heading) && !others.iter().any(|other| normalise_heading(other) == key)
            })
            .count()
    };
    let pupil_headings: Vec<&str> = pupils.fields().iter().filter_map(|(_, h, _)| *h).collect();
    let mark_headings: Vec<&str> = marks.fields().iter().filter_map(|(_, h)| *h).collect();
    let only_pupils = present(pupil_headings.clone(), &mark_headings);
    let only_marks = present(mark_headings.clone(), &pupil_headings);
    match (looks_like_pupils, looks_like_marks) {
        (true, false) => Ok(Kind::Pupils),
        (false, true) => Ok(Kind::Marks),
        (false, false) if only_pupils > 0 && only_marks == 0 => Ok(Kind::Pupils),
        (false, false) if only_marks > 0 && only_pupils == 0 => Ok(Kind::Marks),
        (true, true) => bail!(
            "{file}: cannot tell whether this is a pupils or a marks export, because it has both \
             the pupils heading {pupil_sign:?} and the marks heading {marks_sign}; split it into \
             two files, or use a profile file with only [pupils] or only [marks]"
        ),
        (false, false) => bail!(
            "{file}: cannot tell whether this is a pupils or a marks export under profile {}: a \
             pupils export has the heading {pupil_sign:?} and a marks export has {marks_sign}, \
             but the file's headings are {}; choose the profile that matches the export, or \
             write a profile file (see docs/csv-import.md)",
            profile.name,
            columns.list()
        ),
    }
}

/// Builds the refusal for required headings the file lacks. Each missing entry is a field and
/// its heading, quoted.
fn missing_columns(
    file: &str,
    profile: &Profile,
    kind: Kind,
    missing: &[(&str, String)],
    profile_headings: &[String],
    columns: &Columns<'_>,
) -> anyhow::Error {
    let names = missing
        .iter()
        .map(|(field, heading)| format!("{heading} ({field})"))
        .collect::<Vec<_>>()
        .join(", ");
    let noun = if missing.len() == 1 {
        "column"
    } else {
        "columns"
    };
    anyhow::anyhow!(
        "{file}: missing {noun} {names}, which profile {} needs in a {kind} file; nothing from \
         the file was sent. The file's headings are {}. The profile's {kind} headings are {}. \
         Export the file with the missing {noun}, or write a profile file whose headings match \
         the export (see docs/csv-import.md)",
        profile.name,
        columns.list(),
        quoted_list(profile_headings.iter().map(String::as_str)),
    )
}

fn pupil_columns(
    file: &str,
    profile: &Profile,
    columns: &Columns<'_>,
) -> anyhow::Result<PupilColumns> {
    let Some(headings) = &profile.pupils else {
        bail!("profile {} has no [pupils] section", profile.name);
    };
    let fields = headings.fields();
    let profile_headings: Vec<String> = fields
        .iter()
        .filter_map(|(_, heading, _)| heading.map(str::to_owned))
        .collect();
    let mut found: HashMap<&str, usize> = HashMap::new();
    let mut missing = Vec::new();
    for (field, heading, required) in &fields {
        let Some(heading) = heading else { continue };
        match columns.find(file, heading)? {
            Some(index) => {
                found.insert(field, index);
            }
            None if *required => missing.push((*field, format!("{heading:?}"))),
            None => {}
        }
    }
    if !missing.is_empty() {
        return Err(missing_columns(
            file,
            profile,
            Kind::Pupils,
            &missing,
            &profile_headings,
            columns,
        ));
    }
    let required = |field: &str| found.get(field).copied().unwrap_or_default();
    Ok(PupilColumns {
        mis_id: required("mis_id"),
        upn: required("upn"),
        forename: required("forename"),
        surname: required("surname"),
        date_of_birth: required("date_of_birth"),
        admission_date: required("admission_date"),
        sex: required("sex"),
        year_group: required("year_group"),
        leaving_date: found.get("leaving_date").copied(),
        class: found.get("class").copied(),
    })
}

fn mark_columns(
    file: &str,
    profile: &Profile,
    columns: &Columns<'_>,
) -> anyhow::Result<MarkColumns> {
    let Some(headings) = &profile.marks else {
        bail!("profile {} has no [marks] section", profile.name);
    };
    let profile_headings: Vec<String> = headings
        .fields()
        .iter()
        .filter_map(|(_, heading)| heading.map(str::to_owned))
        .collect();
    let mis_id = match &headings.mis_id {
        Some(heading) => columns.find(file, heading)?,
        None => None,
    };
    let upn = match &headings.upn {
        Some(heading) => columns.find(file, heading)?,
        None => None,
    };
    let mut missing = Vec::new();
    if mis_id.is_none() && upn.is_none() {
        let pupil = [&headings.mis_id, &headings.upn]
            .into_iter()
            .flatten()
            .map(|heading| format!("{heading:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        missing.push(("the pupil", pupil));
    }

    let cells = match &headings.sessions {
        SessionColumns::Long {
            date,
            session,
            code,
            minutes_late,
            comment,
        } => {
            let mut required = |field: &'static str, heading: &str| -> anyhow::Result<usize> {
                let index = columns.find(file, heading)?;
                if index.is_none() {
                    missing.push((field, format!("{heading:?}")));
                }
                Ok(index.unwrap_or_default())
            };
            let date = required("date", date)?;
            let session = required("session", session)?;
            let code = required("code", code)?;
            let optional = |heading: &Option<String>| -> anyhow::Result<Option<usize>> {
                match heading {
                    Some(heading) => columns.find(file, heading),
                    None => Ok(None),
                }
            };
            MarkCells::Long {
                date,
                session,
                code,
                minutes_late: optional(minutes_late)?,
                comment: optional(comment)?,
            }
        }
        SessionColumns::Wide(heading) => {
            let mut cells: Vec<SessionCell> = Vec::new();
            for (index, text) in columns.headings.iter().enumerate() {
                match heading.classify(text, &profile.dates, &profile.sessions) {
                    HeadingMatch::Session(date, session) => {
                        if let Some(first) = cells
                            .iter()
                            .find(|cell| cell.date == date && cell.session == session)
                        {
                            bail!(
                                "{file}: {date} {session} has two columns, {:?} and {text:?}; \
                                 remove one and import again",
                                columns.headings[first.index]
                            );
                        }
                        cells.push(SessionCell {
                            index,
                            date,
                            session,
                        });
                    }
                    HeadingMatch::Malformed(problem) => bail!(
                        "{file}: {problem} (profile {}: {:?}); correct the heading or the \
                         profile's date_format and [sessions], and import again",
                        profile.name,
                        heading.pattern
                    ),
                    HeadingMatch::Other => {}
                }
            }
            if cells.is_empty() {
                bail!(
                    "{file}: no session columns: profile {} expects headings such as {:?}, \
                     with dates as {}; the file's headings are {}",
                    profile.name,
                    heading.pattern,
                    profile.dates,
                    columns.list()
                );
            }
            MarkCells::Wide(cells)
        }
    };
    if !missing.is_empty() {
        return Err(missing_columns(
            file,
            profile,
            Kind::Marks,
            &missing,
            &profile_headings,
            columns,
        ));
    }
    Ok(MarkColumns { mis_id, upn, cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(folder: &Path, name: &str, text: &[u8]) -> PathBuf {
        let path = folder.join(name);
        std::fs::write(&path, text).expect("file written");
        path
    }

    fn refusal(text: &str, profile: &str) -> String {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = write(folder.path(), "export.csv", text.as_bytes());
        let profile = Profile::load(profile).expect("profile");
        format!("{:#}", plan_file(&path, &profile).expect_err("refused"))
    }

    #[test]
    fn pupils_files_are_recognised_by_date_of_birth() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = write(
            folder.path(),
            "pupils.csv",
            b"\xEF\xBB\xBFAdno,UPN,Legal Surname,Legal Forename,DOB,Admission Date,Gender,Year,Reg Group\n",
        );
        let plan = plan_file(&path, &Profile::load("sims").expect("profile")).expect("plan");
        let Layout::Pupils(columns) = plan.layout else {
            panic!("a pupils file");
        };
        assert_eq!(columns.mis_id, 0);
        assert_eq!(columns.surname, 2);
        assert_eq!(columns.sex, 6);
        assert_eq!(columns.class, Some(8));
        assert_eq!(columns.leaving_date, None);
        assert_eq!(plan.headings[0], "Adno");
        assert_eq!(plan.sha256.len(), 64);
    }

    #[test]
    fn wide_marks_files_list_their_sessions() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = write(
            folder.path(),
            "marks.csv",
            b"Adno,Name,08/09/2025 AM,08/09/2025 PM,09/09/2025 AM\n",
        );
        let plan = plan_file(&path, &Profile::load("sims").expect("profile")).expect("plan");
        let Layout::Marks(columns) = plan.layout else {
            panic!("a marks file");
        };
        assert_eq!(columns.mis_id, Some(0));
        assert_eq!(columns.upn, None);
        let MarkCells::Wide(cells) = columns.cells else {
            panic!("wide cells");
        };
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[1].index, 3);
        assert_eq!(cells[1].session, Session::Pm);
    }

    #[test]
    fn missing_column_names_it_and_the_profile() {
        let error = refusal(
            "Student ID,UPN,Legal First Name,Date of Birth,Enrolment Start Date,Gender,Year\n",
            "arbor",
        );
        assert!(
            error.contains("missing column \"Legal Last Name\" (surname)"),
            "{error}"
        );
        assert!(error.contains("profile arbor"), "{error}");
        assert!(error.contains("\"Registration Form\""), "{error}");
        assert!(error.contains("nothing from the file was sent"), "{error}");
    }

    #[test]
    fn marks_file_without_pupil_column_is_refused() {
        let error = refusal("Date,Session,Mark\n2025-09-08,AM,/\n", "bromcom");
        assert!(error.contains("(the pupil)"), "{error}");
        assert!(error.contains("Admission Number"), "{error}");
    }

    #[test]
    fn marks_file_without_code_names_the_column() {
        let error = refusal("Student ID,UPN,Date,Session,Attendance Code\n", "arbor");
        assert!(error.contains("missing column \"Mark\" (code)"), "{error}");
    }

    #[test]
    fn pupils_file_without_birth_date_names_it() {
        let error = refusal(
            "Adno,UPN,Legal Surname,Legal Forename,Birth Date,Gender,Admission Date,Year\n",
            "sims",
        );
        assert!(
            error.contains("missing column \"DOB\" (date_of_birth)"),
            "{error}"
        );
    }

    #[test]
    fn unknown_shape_is_refused() {
        let error = refusal("Name,Form\nAda,7A\n", "rollcall");
        assert!(error.contains("cannot tell whether"), "{error}");
        assert!(error.contains("\"Name\", \"Form\""), "{error}");
    }

    #[test]
    fn repeated_heading_is_refused() {
        let error = refusal("mis_id,upn,date,session,code,code\n", "rollcall");
        assert!(error.contains("appears more than once"), "{error}");
    }

    #[test]
    fn malformed_session_heading_is_refused() {
        let error = refusal("Adno,08/09/2025 AM,31/09/2025 AM\n", "sims");
        assert!(error.contains("\"31/09/2025 AM\""), "{error}");
    }

    #[test]
    fn other_encodings_are_refused_with_the_line() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = write(
            folder.path(),
            "pupils.csv",
            b"mis_id,upn,forename,surname,date_of_birth,admission_date,sex,year_group\n1,A1,Zo\xEB,Smith,2014-01-02,2025-09-01,F,7\n",
        );
        let error = format!(
            "{:#}",
            plan_file(&path, &Profile::load("rollcall").expect("profile")).expect_err("refused")
        );
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("CSV UTF-8"), "{error}");
    }

    #[test]
    fn empty_file_is_refused() {
        let error = refusal("", "rollcall");
        assert!(error.contains("no header row"), "{error}");
    }

    #[test]
    fn split_characters_are_utf8() {
        let folder = tempfile::tempdir().expect("temporary folder");
        // A long first line puts the two bytes of "ë" on either side of a 64 KiB read.
        let mut text = vec![b'x'; 64 * 1024 - 1];
        text.extend_from_slice("ë\n".as_bytes());
        let path = write(folder.path(), "long.csv", &text);
        let file = std::fs::File::open(&path).expect("file opened");
        assert!(hash_and_check_utf8("long.csv", file).is_ok());
    }
}
