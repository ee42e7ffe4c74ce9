//! Turns a Common Transfer File into a register import, checking everything first.

use chrono::{Datelike, NaiveDate, TimeZone, Weekday};
use rollcall_api::registers::v1::{ImportPupil, Mark, Pupil, Registration, School};
use rollcall_api::types::v1::{Phase as PbPhase, Session as PbSession};
use rollcall_ctf::{CtfFile, YearData};
use rollcall_domain::session::parse_date;
use rollcall_domain::{Figures, Phase, Upn, codes};

/// A problem that stops a file being imported: which file, which pupil, which element, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct FileError {
    /// The file's name.
    pub file: String,
    /// The problem, naming the element and the pupil's UPN where known.
    pub message: String,
}

/// A problem that does not stop the import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The pupil's UPN.
    pub upn: String,
    /// The element concerned.
    pub element: String,
    /// The problem.
    pub message: String,
}

/// A checked file, ready to send to the registers.
#[derive(Debug, Clone)]
pub struct CtfImport {
    /// The school the file comes from.
    pub school: School,
    /// The pupils with attendance at that school.
    pub pupils: Vec<ImportPupil>,
    /// Their marks, weekends left out.
    pub marks: Vec<Mark>,
    /// Problems that did not stop the import.
    pub warnings: Vec<Warning>,
}

/// Reads and checks a Common Transfer File. Any error names the file, the pupil's UPN and the
/// element, and means nothing from the file may be stored.
pub fn prepare_ctf(file_name: &str, content: &[u8]) -> Result<CtfImport, FileError> {
    let fail = |message: String| FileError {
        file: file_name.to_owned(),
        message,
    };
    let file: CtfFile = rollcall_ctf::read(content).map_err(|error| fail(error.to_string()))?;
    let source = &file.header.source_school;
    let laestab = source.laestab();
    let made_on = file
        .header
        .date_time
        .as_deref()
        .and_then(|text| parse_date(text.get(..10).unwrap_or(text)).ok());
    // The marks in a file were taken no later than the file was made, so that time, not the
    // time of import, is their time taken. An amendment made in rollcall after the export
    // then stays effective when a later import of the same export arrives.
    let taken_at = file.header.date_time.as_deref().and_then(file_made_at);

    let mut pupils = Vec::new();
    let mut marks = Vec::new();
    let mut warnings = Vec::new();
    let mut phases = Vec::new();

    for (index, pupil) in file.pupils.iter().enumerate() {
        let element = format!("CTfile/CTFpupilData/Pupil[{}]", index + 1);
        let upn = Upn::parse(&pupil.upn)
            .map_err(|error| fail(format!("{element}/UPN: {error}")))?
            .to_string();
        let year_group = pupil.year_group.clone().ok_or_else(|| {
            fail(format!(
                "{element}/BasicDetails/NCyearActual (pupil {upn}): the year group is missing; \
                 add it in the MIS and export the file again"
            ))
        })?;
        if let Some(phase) = Phase::of_year_group(&year_group) {
            phases.push(phase);
        }
        let at_source: Vec<(usize, &YearData)> = pupil
            .attendance
            .iter()
            .enumerate()
            .filter(|(_, year)| year.school.laestab() == laestab)
            .collect();
        let Some((year_index, year)) = at_source
            .iter()
            .copied()
            .filter(|(_, year)| year.sessions.is_some())
            .max_by_key(|(_, year)| year.sessions.as_ref().map(|s| s.start_date))
        else {
            warnings.push(Warning {
                upn: upn.clone(),
                element: format!("{element}/Attendance"),
                message: format!(
                    "pupil {upn} has no session marks for school {laestab}, so was not imported"
                ),
            });
            continue;
        };
        let year_element = format!("{element}/Attendance/YearData[{}]", year_index + 1);
        let sessions = year
            .sessions
            .as_ref()
            .ok_or_else(|| fail(format!("{year_element}: no AttendSessions")))?;
        let marks_element = format!("{year_element}/AttendSessions/AttendanceMarks");

        check_span(year, sessions.start_date, sessions.marks.len(), made_on)
            .map_err(|problem| fail(format!("{marks_element} (pupil {upn}): {problem}")))?;

        let mut figures = Figures::default();
        for (position, code) in sessions.marks.iter().enumerate() {
            let (date, half) = sessions.session_at(position);
            let session = if half == 0 {
                PbSession::Am
            } else {
                PbSession::Pm
            };
            let weekend = matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
            if weekend && code == "#" {
                continue;
            }
            let info = codes::lookup_on(code, date).map_err(|error| {
                fail(format!(
                    "{marks_element} (pupil {upn}), character {} ({date} {}): {error}",
                    position + 1,
                    if half == 0 { "AM" } else { "PM" }
                ))
            })?;
            figures.add(info.category);
            marks.push(Mark {
                upn: upn.clone(),
                date: date.to_string(),
                session: session as i32,
                code: code.clone(),
                recorded_at: taken_at,
                ..Default::default()
            });
        }
        check_totals(&upn, &year_element, year, &figures, &mut warnings);

        pupils.push(ImportPupil {
            pupil: Some(Pupil {
                upn: upn.clone(),
                forename: pupil.forename.clone(),
                surname: pupil.surname.clone(),
                date_of_birth: pupil.date_of_birth.to_string(),
                sex: pupil.sex.clone(),
                enrolments: Vec::new(),
            }),
            admission_date: sessions.start_date.to_string(),
            year_group,
            registration: registration_of(pupil.enrol_status.as_deref()) as i32,
            class_name: String::new(),
            ..ImportPupil::default()
        });
    }

    // A school's phase is that of its oldest year group: a primary school follows the juniors'
    // ladder at school level, while each pupil still follows the ladder of their own phase.
    let phase = phases
        .iter()
        .max()
        .map_or(PbPhase::Unspecified, |phase| PbPhase::from(*phase));
    let school = School {
        laestab,
        name: source
            .school_name
            .clone()
            .unwrap_or_else(|| format!("School {}", source.laestab())),
        phase: phase as i32,
        last_mark_date: String::new(),
    };
    Ok(CtfImport {
        school,
        pupils,
        marks,
        warnings,
    })
}

/// Maps CTF's `EnrolStatus` to a registration: `M` and `S` are the main and subsidiary school
/// of a dual registration; anything else, `C` included, is a single registration.
fn registration_of(enrol_status: Option<&str>) -> Registration {
    match enrol_status.map(str::trim) {
        Some("M" | "m") => Registration::Main,
        Some("S" | "s") => Registration::Subsidiary,
        _ => Registration::Sole,
    }
}

/// Reads the header's `DateTime`, a school-local time in England, as a protobuf timestamp.
fn file_made_at(text: &str) -> Option<prost_types::Timestamp> {
    let local = chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    let instant = chrono_tz::Europe::London
        .from_local_datetime(&local)
        .earliest()?
        .with_timezone(&chrono::Utc);
    Some(rollcall_api::convert::timestamp(instant))
}

/// Checks that the marks fit the academic year they belong to and end no later than the day
/// the file was made.
fn check_span(
    year: &YearData,
    start: NaiveDate,
    sessions: usize,
    made_on: Option<NaiveDate>,
) -> Result<(), String> {
    let days = sessions.div_ceil(2);
    let Some(last) = start.checked_add_days(chrono::Days::new(days.saturating_sub(1) as u64))
    else {
        return Err(format!("{sessions} marks run past the end of the calendar"));
    };
    if let Some(year_text) = &year.year
        && let Ok(first_year) = year_text.trim().parse::<i32>()
    {
        let year_start = NaiveDate::from_ymd_opt(first_year, 8, 1);
        let year_end = NaiveDate::from_ymd_opt(first_year + 1, 7, 31);
        if let (Some(year_start), Some(year_end)) = (year_start, year_end) {
            if start < year_start || start > year_end {
                return Err(format!(
                    "AttendanceStartDate {start} is outside academic year {first_year}/{}",
                    (first_year + 1) % 100
                ));
            }
            if last > year_end {
                return Err(format!(
                    "{sessions} marks from {start} run to {last}, past the end of academic year \
                     {first_year}/{} on {year_end}: the string is longer than its dates allow",
                    (first_year + 1) % 100
                ));
            }
        }
    }
    if let Some(made_on) = made_on
        && last > made_on
    {
        return Err(format!(
            "{sessions} marks from {start} run to {last}, after the file was made on {made_on}: \
             the string is longer than its dates allow"
        ));
    }
    Ok(())
}

fn check_totals(
    upn: &str,
    year_element: &str,
    year: &YearData,
    figures: &Figures,
    warnings: &mut Vec<Warning>,
) {
    let checks = [
        ("SessionsPossible", year.totals.possible, figures.possible()),
        ("SessionsAttended", year.totals.attended, figures.attended()),
        (
            "SessionsAuthorised",
            year.totals.authorised,
            figures.authorised_absence,
        ),
        (
            "SessionsUnauthorised",
            year.totals.unauthorised,
            figures.unauthorised_absence,
        ),
    ];
    for (name, stated, counted) in checks {
        if let Some(stated) = stated
            && stated != counted
        {
            warnings.push(Warning {
                upn: upn.to_owned(),
                element: format!("{year_element}/{name}"),
                message: format!(
                    "pupil {upn}: {name} in the file is {stated}, but the marks give {counted}"
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upn() -> String {
        Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, 1]).to_string()
    }

    /// A one-pupil file from Monday 1 September 2025 with the given marks and header date.
    fn file(marks: &str, made: &str, totals: &str, year_group: &str) -> String {
        format!(
            "<CTfile><Header><CTFversion>25.0</CTFversion><DateTime>{made}T16:00:00</DateTime>\
             <SourceSchool><LEA>919</LEA><Estab>2001</Estab><SchoolName>Test Academy</SchoolName>\
             </SourceSchool></Header><CTFpupilData><Pupil><UPN>{upn}</UPN><Surname>Able</Surname>\
             <Forename>Sam</Forename><DOB>2013-05-01</DOB><Gender>F</Gender>{year_group}\
             <Attendance><YearData><Year>2025</Year><LEA>919</LEA><Estab>2001</Estab>{totals}\
             <AttendSessions><AttendanceStartDate>2025-09-01</AttendanceStartDate>\
             <AttendanceMarks>{marks}</AttendanceMarks></AttendSessions></YearData></Attendance>\
             </Pupil></CTFpupilData></CTfile>",
            upn = upn()
        )
    }

    fn prepare(marks: &str) -> Result<CtfImport, FileError> {
        let text = file(marks, "2025-09-12", "", "<NCyearActual>8</NCyearActual>");
        prepare_ctf("test.xml", text.as_bytes())
    }

    #[test]
    fn weekend_closures_are_skipped() {
        // Monday to Sunday: five school days, then the weekend as ####.
        let import = prepare(r"/\/\/\/\/\####").expect("valid file");
        assert_eq!(import.marks.len(), 10);
        assert_eq!(import.pupils.len(), 1);
        assert_eq!(import.school.laestab, "9192001");
    }

    #[test]
    fn unknown_code_names_file_pupil_and_session() {
        let error = prepare(r"/\/A").expect_err("A is not a code");
        assert_eq!(error.file, "test.xml");
        assert!(error.message.contains(&upn()), "{}", error.message);
        assert!(
            error.message.contains("AttendanceMarks"),
            "{}",
            error.message
        );
        assert!(error.message.contains("2025-09-02 PM"), "{}", error.message);
        assert!(
            error.message.contains("unknown attendance code"),
            "{}",
            error.message
        );
    }

    #[test]
    fn withdrawn_code_names_replacement() {
        let error = prepare(r"/\H\").expect_err("H was withdrawn in 2024");
        assert!(error.message.contains("withdrawn"), "{}", error.message);
        assert!(error.message.contains("otherwise G"), "{}", error.message);
    }

    #[test]
    fn marks_after_file_date_are_rejected() {
        // Twelve days of marks from 1 September run to the 12th; the file was made on the 5th.
        let text = file(
            &r"/\".repeat(12),
            "2025-09-05",
            "",
            "<NCyearActual>8</NCyearActual>",
        );
        let error = prepare_ctf("test.xml", text.as_bytes()).expect_err("too long");
        assert!(
            error.message.contains("longer than its dates allow"),
            "{}",
            error.message
        );
        assert!(error.message.contains(&upn()), "{}", error.message);
    }

    #[test]
    fn marks_past_academic_year_are_rejected() {
        // 340 days from 1 September 2025 run past 31 July 2026.
        let text = file(
            &"##".repeat(340),
            "2026-09-01",
            "",
            "<NCyearActual>8</NCyearActual>",
        );
        let error = prepare_ctf("test.xml", text.as_bytes()).expect_err("too long");
        assert!(
            error.message.contains("past the end of academic year"),
            "{}",
            error.message
        );
    }

    #[test]
    fn missing_year_group_is_rejected() {
        let text = file(r"/\", "2025-09-12", "", "");
        let error = prepare_ctf("test.xml", text.as_bytes()).expect_err("no year group");
        assert!(error.message.contains("NCyearActual"), "{}", error.message);
        assert!(error.message.contains(&upn()), "{}", error.message);
    }

    #[test]
    fn enrol_status_sets_registration() {
        let text = file(
            r"/\",
            "2025-09-12",
            "",
            "<BasicDetails><NCyearActual>8</NCyearActual><EnrolStatus>S</EnrolStatus></BasicDetails>",
        );
        let import = prepare_ctf("test.xml", text.as_bytes()).expect("valid file");
        assert_eq!(
            import.pupils[0].registration,
            Registration::Subsidiary as i32
        );
        assert_eq!(registration_of(Some("M")), Registration::Main);
        assert_eq!(registration_of(Some("C")), Registration::Sole);
        assert_eq!(registration_of(None), Registration::Sole);
    }

    #[test]
    fn not_ctf_is_rejected() {
        let error =
            prepare_ctf("notes.xml", b"<html><body>hello</body></html>").expect_err("not a CTF");
        assert_eq!(error.file, "notes.xml");
        assert!(
            error.message.contains("not a Common Transfer File"),
            "{}",
            error.message
        );
    }

    #[test]
    fn totals_that_disagree_are_warnings() {
        // The marks give 4 possible and 3 attended sessions; the file says 5 and 3.
        let totals = "<SessionsPossible>5</SessionsPossible><SessionsAttended>3</SessionsAttended>";
        let text = file(
            r"/\I\",
            "2025-09-12",
            totals,
            "<NCyearActual>8</NCyearActual>",
        );
        let import = prepare_ctf("test.xml", text.as_bytes()).expect("valid file");
        assert_eq!(import.warnings.len(), 1, "{:?}", import.warnings);
        let warning = &import.warnings[0];
        assert_eq!(warning.upn, upn());
        assert!(
            warning.element.ends_with("SessionsPossible"),
            "{}",
            warning.element
        );
        assert!(
            warning.message.contains("is 5, but the marks give 4"),
            "{}",
            warning.message
        );
    }
}
