//! Turns the rows of a checked file into pupils and marks for the MIS sync API, rejecting the
//! rows that cannot be read with their line number and reason.

use std::collections::HashMap;

use chrono::NaiveDate;
use csv::StringRecord;
use rollcall_domain::Session;
use serde::Serialize;

use crate::plan::{FilePlan, Layout, MarkCells, MarkColumns, PupilColumns};
use crate::profile::Profile;
use crate::values::{DateError, read_minutes_late, read_sex, read_year_group};

/// A row, or one session of a row, that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The file, as named on the command line.
    pub file: String,
    /// The line of the file the row starts on; the header is line 1.
    pub line: u64,
    /// The heading of the column at fault, where one is.
    pub column: Option<String>,
    /// The field at fault, such as `date` or `mis_id`.
    pub field: String,
    /// The value at fault, as written in the file or sent.
    pub value: String,
    /// A stable code for the reason, such as `invalid_date` or `not_on_roll`.
    pub reason_code: String,
    /// The problem, and how to correct it.
    pub reason: String,
}

/// The place in the file that a pupil or mark came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub line: u64,
    /// For a mark of a wide file, the heading of its session column.
    pub column: Option<String>,
}

/// A pupil of a pupils file, with its dates as YYYY-MM-DD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pupil {
    pub mis_id: String,
    /// In upper case.
    pub upn: String,
    pub forename: String,
    pub surname: String,
    pub date_of_birth: String,
    /// `M` or `F`.
    pub sex: String,
    pub admission_date: String,
    /// Empty while the pupil is on roll.
    pub leaving_date: String,
    /// The national curriculum year group, such as `R` or `7`.
    pub year_group: String,
    pub class_name: String,
}

/// A session mark of a marks file, with its date as YYYY-MM-DD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// The pupil's MIS id, or empty when the row gives only the UPN.
    pub mis_id: String,
    /// The pupil's UPN in upper case, or empty when the row gives only the MIS id.
    pub upn: String,
    pub date: String,
    pub session: Session,
    /// The attendance code in upper case.
    pub code: String,
    pub minutes_late: i32,
    pub comment: String,
}

/// A pupil or a mark, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Pupil(Pupil),
    Mark(Mark),
}

/// Reads the rows of one file, remembering what it has read so that a second row for the
/// same MIS id, or a second mark for the same pupil and session, is rejected in favour of the
/// first.
#[derive(Debug)]
pub struct RowReader<'a> {
    plan: &'a FilePlan,
    profile: &'a Profile,
    pupils_by_id: HashMap<String, u64>,
    sessions: HashMap<(String, NaiveDate, Session), u64>,
}

impl<'a> RowReader<'a> {
    pub fn new(plan: &'a FilePlan, profile: &'a Profile) -> Self {
        Self {
            plan,
            profile,
            pupils_by_id: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// Reads one record that starts on `line`: a pupil, or the marks of a row. A row of
    /// empty cells yields nothing.
    pub fn read(
        &mut self,
        record: &StringRecord,
        line: u64,
    ) -> Vec<Result<(Item, Origin), Box<Rejection>>> {
        if record.iter().all(|cell| cell.trim().is_empty()) {
            return Vec::new();
        }
        let expected = self.plan.headings.len();
        if record.len() != expected {
            let (code, problem) = if record.len() < expected {
                ("short_row", "fewer")
            } else {
                ("long_row", "more")
            };
            return vec![Err(self.reject(
                line,
                None,
                "row",
                &record.iter().collect::<Vec<_>>().join(","),
                code,
                format!(
                    "the row has {} fields, {problem} than the {expected} headings; check for a \
                     missing or extra comma, or a value with a comma that is not in quotes",
                    record.len()
                ),
            ))];
        }
        // The plan outlives this reader, so its columns can be borrowed while `self` changes.
        let plan: &'a FilePlan = self.plan;
        match &plan.layout {
            Layout::Pupils(columns) => vec![self.read_pupil(record, line, columns)],
            Layout::Marks(columns) => self.read_marks(record, line, columns),
        }
    }

    fn reject(
        &self,
        line: u64,
        column: Option<usize>,
        field: &str,
        value: &str,
        reason_code: &str,
        reason: String,
    ) -> Box<Rejection> {
        Box::new(Rejection {
            file: self.plan.name.clone(),
            line,
            column: column.map(|index| self.plan.headings[index].clone()),
            field: field.to_owned(),
            value: value.to_owned(),
            reason_code: reason_code.to_owned(),
            reason,
        })
    }

    /// Reads a required cell, rejecting the row when it is empty.
    fn required(
        &self,
        record: &StringRecord,
        line: u64,
        index: usize,
        field: &str,
    ) -> Result<String, Box<Rejection>> {
        let value = record.get(index).unwrap_or_default().trim();
        if value.is_empty() {
            return Err(self.reject(
                line,
                Some(index),
                field,
                "",
                "missing_value",
                format!(
                    "the column {:?} is empty, but every row needs it; fill it in the MIS and \
                     export the file again",
                    self.plan.headings[index]
                ),
            ));
        }
        Ok(value.to_owned())
    }

    /// Reads a cell as a date in the profile's format, giving it as YYYY-MM-DD. An empty
    /// optional cell gives an empty string.
    fn date(
        &self,
        record: &StringRecord,
        line: u64,
        index: usize,
        field: &str,
        required: bool,
    ) -> Result<String, Box<Rejection>> {
        let value = record.get(index).unwrap_or_default().trim();
        if value.is_empty() && !required {
            return Ok(String::new());
        }
        if value.is_empty() {
            return self.required(record, line, index, field);
        }
        self.profile
            .dates
            .parse_date(value)
            .map(|date| date.format("%Y-%m-%d").to_string())
            .map_err(|error| self.date_rejection(line, Some(index), field, value, error))
    }

    fn date_rejection(
        &self,
        line: u64,
        column: Option<usize>,
        field: &str,
        value: &str,
        error: DateError,
    ) -> Box<Rejection> {
        let dates = &self.profile.dates;
        let example = dates.format(NaiveDate::from_ymd_opt(2025, 9, 8).unwrap_or_default());
        let reason = match error {
            DateError::Format => format!(
                "expected a date as {dates}, for example {example} (the date format of profile \
                 {}); correct the value, or use a profile whose date_format matches the export",
                self.profile.name
            ),
            DateError::NoSuchDay => "there is no such day in the calendar".to_owned(),
        };
        self.reject(line, column, field, value, "invalid_date", reason)
    }

    fn read_pupil(
        &mut self,
        record: &StringRecord,
        line: u64,
        columns: &PupilColumns,
    ) -> Result<(Item, Origin), Box<Rejection>> {
        let mis_id = self.required(record, line, columns.mis_id, "mis_id")?;
        let upn = self
            .required(record, line, columns.upn, "upn")?
            .to_uppercase();
        let forename = self.required(record, line, columns.forename, "forename")?;
        let surname = self.required(record, line, columns.surname, "surname")?;
        let date_of_birth =
            self.date(record, line, columns.date_of_birth, "date_of_birth", true)?;
        let admission_date =
            self.date(record, line, columns.admission_date, "admission_date", true)?;
        let leaving_date = match columns.leaving_date {
            Some(index) => self.date(record, line, index, "leaving_date", false)?,
            None => String::new(),
        };
        let cell = |index: Option<usize>| {
            index
                .and_then(|index| record.get(index))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let sex_text = self.required(record, line, columns.sex, "sex")?;
        let sex = read_sex(&sex_text).ok_or_else(|| {
            self.reject(
                line,
                Some(columns.sex),
                "sex",
                &sex_text,
                "invalid_sex",
                "expected M, F, Male or Female".to_owned(),
            )
        })?;
        let year_text = self.required(record, line, columns.year_group, "year_group")?;
        let year_group = read_year_group(&year_text).ok_or_else(|| {
            self.reject(
                line,
                Some(columns.year_group),
                "year_group",
                &year_text,
                "invalid_year_group",
                "expected a national curriculum year group: N1, N2, R, 1 to 14 or X, also \
                 written as Nursery 1, Reception, Year 7 or Y7"
                    .to_owned(),
            )
        })?;

        if let Some(first) = self.pupils_by_id.get(&mis_id) {
            return Err(self.reject(
                line,
                Some(columns.mis_id),
                "mis_id",
                &mis_id,
                "duplicate_pupil",
                format!(
                    "a second row for this MIS id; the row on line {first} is the one imported, \
                     so remove one of them in the export"
                ),
            ));
        }
        self.pupils_by_id.insert(mis_id.clone(), line);

        let pupil = Pupil {
            mis_id,
            upn,
            forename,
            surname,
            date_of_birth,
            sex: sex.to_owned(),
            admission_date,
            leaving_date,
            year_group,
            class_name: cell(columns.class),
        };
        Ok((Item::Pupil(pupil), Origin { line, column: None }))
    }

    /// Reads the pupil a marks row is for: its MIS id and UPN, at least one of them given.
    fn mark_pupil(
        &self,
        record: &StringRecord,
        line: u64,
        columns: &MarkColumns,
    ) -> Result<(String, String), Box<Rejection>> {
        let cell = |index: Option<usize>| {
            index
                .and_then(|index| record.get(index))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let mis_id = cell(columns.mis_id);
        let upn = cell(columns.upn).to_uppercase();
        if mis_id.is_empty() && upn.is_empty() {
            let (field, index) = match columns.mis_id {
                Some(index) => ("mis_id", index),
                None => ("upn", columns.upn.unwrap_or_default()),
            };
            return Err(self.reject(
                line,
                Some(index),
                field,
                "",
                "missing_value",
                "the row names no pupil: its MIS id and UPN are empty; fill one in the MIS and \
                 export the file again"
                    .to_owned(),
            ));
        }
        Ok((mis_id, upn))
    }

    fn read_marks(
        &mut self,
        record: &StringRecord,
        line: u64,
        columns: &MarkColumns,
    ) -> Vec<Result<(Item, Origin), Box<Rejection>>> {
        let (mis_id, upn) = match self.mark_pupil(record, line, columns) {
            Ok(pupil) => pupil,
            Err(rejection) => return vec![Err(rejection)],
        };
        match &columns.cells {
            MarkCells::Long {
                date,
                session,
                code,
                minutes_late,
                comment,
            } => {
                let mark = self.read_long_mark(
                    record,
                    line,
                    (*date, *session, *code, *minutes_late, *comment),
                    &mis_id,
                    &upn,
                );
                vec![mark]
            }
            MarkCells::Wide(cells) => {
                let mut marks = Vec::new();
                for cell in cells {
                    let code = record.get(cell.index).unwrap_or_default().trim();
                    if code.is_empty() {
                        continue;
                    }
                    let heading = self.plan.headings[cell.index].clone();
                    let mark = self
                        .check_session(
                            line,
                            Some(cell.index),
                            &mis_id,
                            &upn,
                            cell.date,
                            cell.session,
                        )
                        .map(|()| {
                            let mark = Mark {
                                mis_id: mis_id.clone(),
                                upn: upn.clone(),
                                date: cell.date.format("%Y-%m-%d").to_string(),
                                session: cell.session,
                                code: code.to_uppercase(),
                                minutes_late: 0,
                                comment: String::new(),
                            };
                            (
                                Item::Mark(mark),
                                Origin {
                                    line,
                                    column: Some(heading),
                                },
                            )
                        });
                    marks.push(mark);
                }
                marks
            }
        }
    }

    fn read_long_mark(
        &mut self,
        record: &StringRecord,
        line: u64,
        (date, session, code, minutes_late, comment): (
            usize,
            usize,
            usize,
            Option<usize>,
            Option<usize>,
        ),
        mis_id: &str,
        upn: &str,
    ) -> Result<(Item, Origin), Box<Rejection>> {
        let date_text = self.required(record, line, date, "date")?;
        let day =
            self.profile.dates.parse_date(&date_text).map_err(|error| {
                self.date_rejection(line, Some(date), "date", &date_text, error)
            })?;
        let session_text = self.required(record, line, session, "session")?;
        let Some(register) = self.profile.sessions.read(&session_text) else {
            return Err(self.reject(
                line,
                Some(session),
                "session",
                &session_text,
                "unknown_session",
                format!(
                    "expected {} (the session spellings of profile {}); correct the value, or \
                     add the spelling to [sessions] in a profile file",
                    self.profile.sessions.describe(),
                    self.profile.name
                ),
            ));
        };
        let code_text = self.required(record, line, code, "code")?;
        let minutes_text = minutes_late
            .and_then(|index| record.get(index))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let Some(minutes) = read_minutes_late(&minutes_text) else {
            return Err(self.reject(
                line,
                minutes_late,
                "minutes_late",
                &minutes_text,
                "invalid_minutes_late",
                "expected a whole number of minutes from 0 to 999, or nothing".to_owned(),
            ));
        };
        self.check_session(line, Some(date), mis_id, upn, day, register)?;
        let mark = Mark {
            mis_id: mis_id.to_owned(),
            upn: upn.to_owned(),
            date: day.format("%Y-%m-%d").to_string(),
            session: register,
            code: code_text.to_uppercase(),
            minutes_late: minutes,
            comment: comment
                .and_then(|index| record.get(index))
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        Ok((Item::Mark(mark), Origin { line, column: None }))
    }

    /// Rejects a second mark for a pupil's session, keeping the first.
    fn check_session(
        &mut self,
        line: u64,
        column: Option<usize>,
        mis_id: &str,
        upn: &str,
        date: NaiveDate,
        session: Session,
    ) -> Result<(), Box<Rejection>> {
        let pupil = if mis_id.is_empty() {
            format!("upn:{upn}")
        } else {
            format!("id:{mis_id}")
        };
        let key = (pupil, date, session);
        if let Some(first) = self.sessions.get(&key) {
            let value = format!("{date} {session}");
            return Err(self.reject(
                line,
                column,
                "session",
                &value,
                "duplicate_session",
                format!(
                    "a second mark for this pupil's {date} {session} session; the mark on line \
                     {first} is the one imported, so remove one of them in the export"
                ),
            ));
        }
        self.sessions.insert(key, line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plan::plan_file;

    fn plan(folder: &Path, text: &str, profile: &Profile) -> FilePlan {
        let path = folder.join("export.csv");
        std::fs::write(&path, text).expect("file written");
        plan_file(&path, profile).expect("plan")
    }

    /// Reads every row of `text` under `profile`.
    fn read_all(text: &str, profile: &str) -> Vec<Result<(Item, Origin), Box<Rejection>>> {
        let folder = tempfile::tempdir().expect("temporary folder");
        let profile = Profile::load(profile).expect("profile");
        let plan = plan(folder.path(), text, &profile);
        let mut reader = crate::plan::csv_reader(std::fs::File::open(&plan.path).expect("file"));
        let mut rows = RowReader::new(&plan, &profile);
        let mut out = Vec::new();
        let mut record = StringRecord::new();
        while reader.read_record(&mut record).expect("record") {
            let line = crate::lines::record_line(&mut reader, &record);
            out.extend(rows.read(&record, line));
        }
        out
    }

    fn rejection(result: &Result<(Item, Origin), Box<Rejection>>) -> &Rejection {
        result.as_ref().expect_err("a rejection")
    }

    #[test]
    fn bromcom_pupils_read_words_and_uk_dates() {
        let rows = read_all(
            "Admission Number,UPN,First Name,Last Name,Date Of Birth,Gender,Admission Date,Year Group,Tutor Group\n\
             001234,a919200125001,Ada,Lovelace,02/01/2014,Female,01/09/2021,Year 7,7L\n",
            "bromcom",
        );
        let Ok((Item::Pupil(pupil), origin)) = &rows[0] else {
            panic!("a pupil: {rows:?}");
        };
        assert_eq!(pupil.mis_id, "001234");
        assert_eq!(pupil.upn, "A919200125001");
        assert_eq!(pupil.date_of_birth, "2014-01-02");
        assert_eq!(pupil.admission_date, "2021-09-01");
        assert_eq!(pupil.sex, "F");
        assert_eq!(pupil.year_group, "7");
        assert_eq!(pupil.class_name, "7L");
        assert_eq!(pupil.leaving_date, "");
        assert_eq!(origin.line, 2);
    }

    #[test]
    fn pupil_rows_with_bad_values_are_rejected() {
        let header = "mis_id,upn,forename,surname,date_of_birth,admission_date,sex,year_group\n";
        let cases = [
            (
                "1,A1,Ada,L,2014-01-02,2025-09-01,,7",
                "missing_value",
                "sex",
            ),
            (
                "1,A1,Ada,,2014-01-02,2025-09-01,F,7",
                "missing_value",
                "surname",
            ),
            (
                "1,A1,Ada,L,02/01/2014,2025-09-01,F,7",
                "invalid_date",
                "date_of_birth",
            ),
            (
                "1,A1,Ada,L,2014-02-30,2025-09-01,F,7",
                "invalid_date",
                "date_of_birth",
            ),
            ("1,A1,Ada,L,2014-01-02,2025-09-01,X,7", "invalid_sex", "sex"),
            (
                "1,A1,Ada,L,2014-01-02,2025-09-01,F,Year 15",
                "invalid_year_group",
                "year_group",
            ),
            ("1,A1,Ada,L,2014-01-02", "short_row", "row"),
        ];
        for (row, code, field) in cases {
            let rows = read_all(&format!("{header}{row}\n"), "rollcall");
            let rejected = rejection(&rows[0]);
            assert_eq!(rejected.reason_code, code, "{row}");
            assert_eq!(rejected.field, field, "{row}");
            assert_eq!(rejected.line, 2, "{row}");
        }
    }

    #[test]
    fn wrong_format_dates_name_the_expected_format() {
        let rows = read_all(
            "Student ID,UPN,Date,Session,Mark\n17,,2025-09-08,AM,/\n",
            "arbor",
        );
        let rejected = rejection(&rows[0]);
        assert_eq!(rejected.reason_code, "invalid_date");
        assert_eq!(rejected.value, "2025-09-08");
        assert_eq!(rejected.column.as_deref(), Some("Date"));
        assert!(
            rejected
                .reason
                .contains("DD/MM/YYYY, for example 08/09/2025"),
            "{}",
            rejected.reason
        );
    }

    #[test]
    fn long_marks_read_sessions_codes_and_lateness() {
        let rows = read_all(
            "Student ID,UPN,Date,Session,Mark,Minutes Late,Note\n\
             17,,08/09/2025,Morning,l,12,Bus late\n\
             17,,08/09/2025,pm,/,,\n",
            "arbor",
        );
        let Ok((Item::Mark(morning), _)) = &rows[0] else {
            panic!("a mark: {rows:?}");
        };
        assert_eq!(morning.mis_id, "17");
        assert_eq!(morning.date, "2025-09-08");
        assert_eq!(morning.session, Session::Am);
        assert_eq!(morning.code, "L");
        assert_eq!(morning.minutes_late, 12);
        assert_eq!(morning.comment, "Bus late");
        let Ok((Item::Mark(afternoon), origin)) = &rows[1] else {
            panic!("a mark: {rows:?}");
        };
        assert_eq!(afternoon.session, Session::Pm);
        assert_eq!(afternoon.minutes_late, 0);
        assert_eq!(origin.line, 3);
    }

    #[test]
    fn unknown_session_spelling_is_rejected() {
        let rows = read_all(
            "Admission Number,UPN,Date,Session,Mark\n5,,08/09/2025,Lunch,/\n",
            "bromcom",
        );
        let rejected = rejection(&rows[0]);
        assert_eq!(rejected.reason_code, "unknown_session");
        assert!(
            rejected.reason.contains("AM, AM REG, PM or PM REG"),
            "{}",
            rejected.reason
        );
    }

    #[test]
    fn second_mark_for_a_session_is_rejected() {
        let rows = read_all(
            "mis_id,upn,date,session,code\n7,,2025-09-08,AM,/\n7,,2025-09-08,am,N\n",
            "rollcall",
        );
        assert!(rows[0].is_ok());
        let rejected = rejection(&rows[1]);
        assert_eq!(rejected.reason_code, "duplicate_session");
        assert!(rejected.reason.contains("line 2"), "{}", rejected.reason);
    }

    #[test]
    fn wide_rows_give_one_mark_per_filled_cell() {
        let rows = read_all(
            "Adno,Name,08/09/2025 AM,08/09/2025 PM,09/09/2025 AM\n\
             001,\"Lovelace, Ada\",/,\\,\n\
             002,\"Hopper, Grace\",N,,c1\n",
            "sims",
        );
        assert_eq!(rows.len(), 4);
        let marks: Vec<(String, String, u64, Option<String>)> = rows
            .iter()
            .map(|row| match row {
                Ok((Item::Mark(mark), origin)) => (
                    mark.mis_id.clone(),
                    format!("{} {} {}", mark.date, mark.session, mark.code),
                    origin.line,
                    origin.column.clone(),
                ),
                other => panic!("a mark: {other:?}"),
            })
            .collect();
        assert_eq!(marks[0].1, "2025-09-08 AM /");
        assert_eq!(marks[1].1, "2025-09-08 PM \\");
        assert_eq!(marks[2].0, "002");
        assert_eq!(marks[3].1, "2025-09-09 AM C1");
        assert_eq!(marks[3].2, 3);
        assert_eq!(marks[3].3.as_deref(), Some("09/09/2025 AM"));
    }

    #[test]
    fn rows_of_empty_cells_are_skipped() {
        let rows = read_all("mis_id,upn,date,session,code\n,,,,\n", "rollcall");
        assert!(rows.is_empty());
    }

    #[test]
    fn marks_without_a_pupil_are_rejected() {
        let rows = read_all(
            "mis_id,upn,date,session,code\n,,2025-09-08,AM,/\n",
            "rollcall",
        );
        assert_eq!(rejection(&rows[0]).reason_code, "missing_value");
        assert_eq!(rejection(&rows[0]).field, "mis_id");
    }

    #[test]
    fn second_row_for_a_pupil_is_rejected() {
        let rows = read_all(
            "mis_id,upn,forename,surname,date_of_birth,admission_date,sex,year_group\n\
             1,A1,Ada,L,2014-01-02,2025-09-01,F,7\n\
             1,A2,Grace,H,2014-01-03,2025-09-01,F,7\n",
            "rollcall",
        );
        assert!(rows[0].is_ok());
        assert_eq!(rejection(&rows[1]).reason_code, "duplicate_pupil");
    }
}
