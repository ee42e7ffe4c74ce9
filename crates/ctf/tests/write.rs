//! Writing: the exact output for a small file, escaping, two-character codes, and the values
//! that `write` rejects.

use chrono::NaiveDate;
use rollcall_ctf::{
    AttendSessions, CtfFile, Header, Pupil, SchoolIdentity, Totals, WriteError, WriteProblem,
    YearData, read, write,
};

fn date(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("test dates are valid")
}

fn school(lea: &str, estab: &str, name: Option<&str>) -> SchoolIdentity {
    SchoolIdentity {
        lea: lea.to_owned(),
        estab: estab.to_owned(),
        school_name: name.map(str::to_owned),
    }
}

fn marks(codes: &[&str]) -> Vec<String> {
    codes.iter().map(|code| (*code).to_owned()).collect()
}

/// Returns a file with one pupil and one year of attendance, whose marks are `codes` from
/// 3 September 2025.
fn small_file(codes: &[&str]) -> CtfFile {
    let sessions = AttendSessions {
        start_date: date("2025-09-03"),
        marks: marks(codes),
    };
    let year_data = YearData {
        year: Some("2025".to_owned()),
        school: school("919", "2001", Some("Example Infant School")),
        totals: Totals {
            possible: Some(4),
            authorised: None,
            attended: Some(3),
            unauthorised: Some(0),
        },
        sessions: Some(sessions),
    };
    let pupil = Pupil {
        upn: "A919200125001".to_owned(),
        surname: "O'Brien & Sons".to_owned(),
        forename: "Amy <Jo>".to_owned(),
        date_of_birth: date("2019-03-04"),
        sex: "F".to_owned(),
        year_group: Some("1".to_owned()),
        enrol_status: None,
        attendance: vec![year_data],
    };
    let header = Header {
        ctf_version: "25.0".to_owned(),
        date_time: Some("2025-12-19T16:00:00".to_owned()),
        document_name: Some("Common Transfer File".to_owned()),
        source_school: school("919", "2001", Some("Example Infant School")),
        academic_year: Some("2025".to_owned()),
        dest_school: Some(school("919", "9999", None)),
    };
    CtfFile {
        header,
        pupils: vec![pupil],
    }
}

fn write_text(file: &CtfFile) -> String {
    let bytes = write(file).expect("the file is writable");
    String::from_utf8(bytes).expect("the writer produces UTF-8")
}

fn write_error(file: &CtfFile) -> WriteError {
    match write(file) {
        Ok(bytes) => panic!(
            "write should reject the file, but gave {}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(error) => error,
    }
}

#[test]
fn exact_output() {
    let expected = r#"<?xml version="1.0" encoding="UTF-8"?>
<CTfile>
  <Header>
    <DocumentName>Common Transfer File</DocumentName>
    <CTFversion>25.0</CTFversion>
    <DateTime>2025-12-19T16:00:00</DateTime>
    <DocumentQualifier>partial</DocumentQualifier>
    <SourceSchool>
      <LEA>919</LEA>
      <Estab>2001</Estab>
      <SchoolName>Example Infant School</SchoolName>
      <AcademicYear>2025</AcademicYear>
    </SourceSchool>
    <DestSchool>
      <LEA>919</LEA>
      <Estab>9999</Estab>
    </DestSchool>
  </Header>
  <CTFpupilData>
    <Pupil>
      <UPN>A919200125001</UPN>
      <Surname>O'Brien &amp; Sons</Surname>
      <Forename>Amy &lt;Jo&gt;</Forename>
      <DOB>2019-03-04</DOB>
      <Sex>F</Sex>
      <BasicDetails>
        <NCyearActual>1</NCyearActual>
      </BasicDetails>
      <Attendance>
        <YearData>
          <Year>2025</Year>
          <LEA>919</LEA>
          <Estab>2001</Estab>
          <SchoolName>Example Infant School</SchoolName>
          <SessionsPossible>4</SessionsPossible>
          <SessionsAttended>3</SessionsAttended>
          <SessionsUnauthorised>0</SessionsUnauthorised>
          <AttendSessions>
            <AttendanceStartDate>2025-09-03</AttendanceStartDate>
            <AttendanceMarks>/\C\</AttendanceMarks>
            <ExtendedMarks>
              <ExtendedMark>
                <Date>2025-09-04</Date>
                <Session>AM</Session>
                <Code>C1</Code>
              </ExtendedMark>
            </ExtendedMarks>
          </AttendSessions>
        </YearData>
      </Attendance>
    </Pupil>
  </CTFpupilData>
</CTfile>"#;

    assert_eq!(write_text(&small_file(&["/", "\\", "C1", "\\"])), expected);
}

#[test]
fn small_file_round_trip() {
    let file = small_file(&["/", "\\", "C1", "\\"]);

    let bytes = write(&file).expect("the file is writable");
    assert_eq!(read(&bytes).expect("the output is readable"), file);
}

#[test]
fn fixture_round_trip() {
    let original = read(include_bytes!("data/two_pupils.xml")).expect("the fixture is valid");

    let bytes = write(&original).expect("a file that was read can be written");
    assert_eq!(read(&bytes).expect("the output is readable"), original);
}

#[test]
fn single_character_codes_have_no_extended_marks() {
    let text = write_text(&small_file(&["/", "\\", "N", "#"]));

    assert!(
        text.contains("<AttendanceMarks>/\\N#</AttendanceMarks>"),
        "{text}"
    );
    assert!(!text.contains("ExtendedMarks"), "{text}");
}

#[test]
fn two_character_codes_listed_in_extended_marks() {
    let file = small_file(&["J1", "Y3", "/", "C2"]);
    let text = write_text(&file);

    assert!(
        text.contains("<AttendanceMarks>JY/C</AttendanceMarks>"),
        "{text}"
    );
    let entries = [
        ("2025-09-03", "AM", "J1"),
        ("2025-09-03", "PM", "Y3"),
        ("2025-09-04", "PM", "C2"),
    ];
    for (day, session, code) in entries {
        let entry = format!(
            "<Date>{day}</Date>\n                <Session>{session}</Session>\n                <Code>{code}</Code>"
        );
        assert!(text.contains(&entry), "{text} should contain {entry}");
    }
    assert_eq!(text.matches("<ExtendedMark>").count(), 3);
    assert_eq!(read(text.as_bytes()).expect("the output is readable"), file);
}

#[test]
fn gender_before_ctf_25() {
    let mut file = small_file(&[]);
    file.header.ctf_version = "24.0".to_owned();

    let text = write_text(&file);
    assert!(text.contains("<Gender>F</Gender>"), "{text}");
    assert!(!text.contains("<Sex>"), "{text}");
}

#[test]
fn optional_parts_left_out() {
    let mut file = small_file(&[]);
    file.header.document_name = None;
    file.header.date_time = None;
    file.header.dest_school = None;
    file.pupils[0].sex = String::new();
    file.pupils[0].year_group = None;
    file.pupils[0].attendance.clear();

    let text = write_text(&file);
    for absent in [
        "DocumentName",
        "DateTime",
        "DestSchool",
        "Sex",
        "Gender",
        "BasicDetails",
        "Attendance",
    ] {
        assert!(!text.contains(absent), "{text} should not contain {absent}");
    }
    assert_eq!(read(text.as_bytes()).expect("the output is readable"), file);
}

#[test]
fn empty_marks_round_trip() {
    let file = small_file(&[]);

    let text = write_text(&file);
    assert!(
        text.contains("<AttendanceMarks></AttendanceMarks>"),
        "{text}"
    );
    assert_eq!(read(text.as_bytes()).expect("the output is readable"), file);
}

#[test]
fn rejects_short_lea() {
    let mut file = small_file(&[]);
    file.pupils[0].attendance[0].school.lea = "91".to_owned();

    let error = write_error(&file);
    assert_eq!(
        error.path,
        "CTfile/CTFpupilData/Pupil[1]/Attendance/YearData[1]/LEA"
    );
    assert_eq!(error.upn.as_deref(), Some("A919200125001"));
    let expected = WriteProblem::NotDigits {
        value: "91".to_owned(),
        digits: 3,
    };
    assert_eq!(error.problem, expected);
    assert_eq!(
        error.to_string(),
        "cannot write CTfile/CTFpupilData/Pupil[1]/Attendance/YearData[1]/LEA (pupil A919200125001): \
         the value \"91\" is not 3 digits"
    );
}

#[test]
fn rejects_surrounding_whitespace() {
    let mut file = small_file(&[]);
    file.pupils[0].surname = "Smith ".to_owned();

    let error = write_error(&file);
    assert_eq!(error.path, "CTfile/CTFpupilData/Pupil[1]/Surname");
    assert!(matches!(
        error.problem,
        WriteProblem::SurroundingWhitespace { .. }
    ));
}

#[test]
fn rejects_control_characters() {
    for name in ["Amy\nJo", "Amy\tJo", "Amy\u{0}", "Amy\u{FFFE}"] {
        let mut file = small_file(&[]);
        file.pupils[0].forename = name.to_owned();

        let error = write_error(&file);
        assert_eq!(error.path, "CTfile/CTFpupilData/Pupil[1]/Forename");
        assert!(matches!(
            error.problem,
            WriteProblem::ControlCharacter { .. }
        ));
    }
}

#[test]
fn rejects_empty_values() {
    let mut file = small_file(&[]);
    file.header.source_school.school_name = Some(String::new());
    let error = write_error(&file);
    assert_eq!(error.path, "CTfile/Header/SourceSchool/SchoolName");
    assert_eq!(error.upn, None);
    assert_eq!(error.problem, WriteProblem::Empty);

    let mut file = small_file(&[]);
    file.pupils[0].upn = String::new();
    let error = write_error(&file);
    assert_eq!(error.path, "CTfile/CTFpupilData/Pupil[1]/UPN");
    assert_eq!(error.problem, WriteProblem::Empty);
}

#[test]
fn rejects_odd_mark_count() {
    let error = write_error(&small_file(&["/", "\\", "/"]));

    assert_eq!(
        error.path,
        "CTfile/CTFpupilData/Pupil[1]/Attendance/YearData[1]/AttendSessions/AttendanceMarks"
    );
    assert_eq!(error.problem, WriteProblem::OddMarkCount { count: 3 });
}

#[test]
fn rejects_invalid_marks() {
    for (index, code) in [(1, ""), (1, "C12"), (1, " "), (1, "C "), (1, "\n")] {
        let error = write_error(&small_file(&["/", code, "/", "\\"]));

        let expected = WriteProblem::InvalidMark {
            index,
            code: code.to_owned(),
        };
        assert_eq!(error.problem, expected);
    }
}

#[test]
fn rejects_five_digit_year() {
    let mut file = small_file(&[]);
    file.pupils[0].date_of_birth =
        NaiveDate::from_ymd_opt(10_000, 1, 1).expect("chrono allows year 10000");

    let error = write_error(&file);
    assert_eq!(error.path, "CTfile/CTFpupilData/Pupil[1]/DOB");
    assert!(matches!(error.problem, WriteProblem::DateOutOfRange { .. }));
}

#[test]
fn early_years_padded() {
    let mut file = small_file(&[]);
    file.pupils[0].date_of_birth = date("0099-01-02");

    let text = write_text(&file);
    assert!(text.contains("<DOB>0099-01-02</DOB>"), "{text}");
    assert_eq!(read(text.as_bytes()).expect("the output is readable"), file);
}

#[test]
fn dest_school_placeholders_written() {
    let mut file = small_file(&[]);
    file.header.dest_school = Some(school("XXX", "XXXX", None));

    let text = write_text(&file);
    assert_eq!(read(text.as_bytes()).expect("the output is readable"), file);
}
