//! Reading real XML text: the fixture with two pupils and the accepted variants.

use chrono::NaiveDate;
use rollcall_ctf::{CtfFile, Pupil, Totals, read};

const TWO_PUPILS: &str = include_str!("data/two_pupils.xml");

fn date(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("test dates are valid")
}

fn read_ok(xml: &str) -> CtfFile {
    match read(xml.as_bytes()) {
        Ok(file) => file,
        Err(error) => panic!("the document should be read, but: {error}"),
    }
}

fn two_pupils() -> CtfFile {
    read_ok(TWO_PUPILS)
}

/// Returns a minimal document whose only pupil has `extra` after the required elements.
fn one_pupil(extra: &str) -> String {
    format!(
        "<CTfile><Header><CTFversion>25.0</CTFversion>\
         <SourceSchool><LEA>919</LEA><Estab>2001</Estab></SourceSchool></Header>\
         <CTFpupilData><Pupil><UPN>A919200125001</UPN><Surname>Smith</Surname>\
         <Forename>Amy</Forename><DOB>2019-03-04</DOB>{extra}</Pupil></CTFpupilData></CTfile>"
    )
}

fn only_pupil(file: &CtfFile) -> &Pupil {
    assert_eq!(file.pupils.len(), 1, "expected one pupil");
    &file.pupils[0]
}

#[test]
fn fixture_header() {
    let header = two_pupils().header;

    assert_eq!(
        header.document_name.as_deref(),
        Some("Common Transfer File")
    );
    assert_eq!(header.ctf_version, "25.0");
    assert_eq!(header.date_time.as_deref(), Some("2025-12-19T16:00:00"));
    assert_eq!(header.academic_year.as_deref(), Some("2025"));
    assert_eq!(header.source_school.laestab(), "9192001");
    assert_eq!(
        header.source_school.school_name.as_deref(),
        Some("St Mary & St John's Infant School")
    );
    let dest = header.dest_school.expect("the fixture has a DestSchool");
    assert_eq!(dest.laestab(), "9199999");
    assert_eq!(dest.school_name, None);
}

#[test]
fn fixture_pupil_with_gender_and_basic_details() {
    let file = two_pupils();
    assert_eq!(file.pupils.len(), 2);
    let amy = &file.pupils[0];

    assert_eq!(amy.upn, "A919200125001");
    assert_eq!(
        amy.surname, "Smith",
        "contact and address surnames are not the pupil's"
    );
    assert_eq!(
        amy.forename, "Amy",
        "the contact's forename is not the pupil's"
    );
    assert_eq!(amy.date_of_birth, date("2019-03-04"));
    assert_eq!(amy.sex, "F");
    assert_eq!(amy.year_group.as_deref(), Some("1"));
    assert_eq!(amy.attendance.len(), 2);
}

#[test]
fn fixture_year_data_totals_and_schools() {
    let file = two_pupils();
    let current = &file.pupils[0].attendance[0];
    let previous = &file.pupils[0].attendance[1];

    assert_eq!(current.year.as_deref(), Some("2025"));
    assert_eq!(current.school.laestab(), "9192001");
    let expected = Totals {
        possible: Some(14),
        authorised: Some(2),
        attended: Some(11),
        unauthorised: Some(1),
    };
    assert_eq!(current.totals, expected);

    assert_eq!(previous.year.as_deref(), Some("2024"));
    assert_eq!(previous.school.laestab(), "8203456");
    assert_eq!(previous.school.school_name, None);
    assert_eq!(previous.totals.possible, Some(380));
    assert_eq!(previous.totals.authorised, None);
    assert_eq!(previous.totals.attended, Some(361));
    assert!(previous.sessions.is_none());
}

#[test]
fn fixture_marks_wrapped_in_whitespace() {
    let file = two_pupils();
    let sessions = file.pupils[0].attendance[0]
        .sessions
        .as_ref()
        .expect("the fixture has AttendSessions");

    let expected: Vec<&str> = vec![
        "/", "\\", "/", "\\", "C1", "\\", "#", "#", "#", "#", "/", "\\", "L", "N", "/", "\\", "I",
        "\\", "/", "\\", "#", "#", "#", "#",
    ];
    assert_eq!(sessions.start_date, date("2025-09-03"));
    assert_eq!(sessions.marks, expected);
    assert_eq!(sessions.session_at(4), (date("2025-09-05"), 0));
    assert_eq!(sessions.session_at(23), (date("2025-09-14"), 1));
}

#[test]
fn fixture_pupil_with_sex_and_mixed_case_names() {
    let file = two_pupils();
    let zoe = &file.pupils[1];

    assert_eq!(zoe.upn, "B919200125002");
    assert_eq!(zoe.surname, "O'Brien-Núñez");
    assert_eq!(zoe.forename, "Zoë");
    assert_eq!(zoe.date_of_birth, date("2018-11-30"));
    assert_eq!(zoe.sex, "M");
    assert_eq!(zoe.year_group.as_deref(), Some("2"));
    assert!(zoe.attendance.is_empty());
}

#[test]
fn byte_order_mark_accepted() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(TWO_PUPILS.as_bytes());

    let file = read(&bytes).expect("a UTF-8 byte order mark is allowed");
    assert_eq!(file, two_pupils());
}

#[test]
fn declaration_optional() {
    let without = TWO_PUPILS
        .split_once("?>")
        .map(|(_, rest)| rest)
        .expect("the fixture has a declaration");

    assert_eq!(read_ok(without), two_pupils());
}

#[test]
fn declared_encoding_case_ignored() {
    let lower = TWO_PUPILS.replacen("UTF-8", "utf-8", 1);

    assert_eq!(read_ok(&lower), two_pupils());
}

#[test]
fn header_names_in_any_case() {
    let xml = "<ctfile><HEADER><CTFVersion>24.0</CTFVersion>\
               <sourceSchool><lea>919</lea><ESTAB>2001</ESTAB><schoolname>Example</schoolname>\
               <academicyear>2024</academicyear></sourceSchool></HEADER></ctfile>";

    let header = read_ok(xml).header;
    assert_eq!(header.ctf_version, "24.0");
    assert_eq!(header.source_school.laestab(), "9192001");
    assert_eq!(header.source_school.school_name.as_deref(), Some("Example"));
    assert_eq!(header.academic_year.as_deref(), Some("2024"));
}

#[test]
fn namespace_prefix_ignored() {
    let xml = "<ctf:CTfile xmlns:ctf=\"urn:example\"><ctf:Header><ctf:CTFversion>25.0</ctf:CTFversion>\
               <ctf:SourceSchool><ctf:LEA>919</ctf:LEA><ctf:Estab>2001</ctf:Estab></ctf:SourceSchool>\
               </ctf:Header></ctf:CTfile>";

    assert_eq!(read_ok(xml).header.source_school.laestab(), "9192001");
}

#[test]
fn missing_pupil_data_means_no_pupils() {
    let xml = "<CTfile><Header><CTFversion>25.0</CTFversion>\
               <SourceSchool><LEA>919</LEA><Estab>2001</Estab></SourceSchool></Header></CTfile>";

    let file = read_ok(xml);
    assert!(file.pupils.is_empty());
    assert_eq!(file.header.document_name, None);
    assert_eq!(file.header.date_time, None);
    assert_eq!(file.header.dest_school, None);
}

#[test]
fn empty_elements_count_as_absent() {
    let xml = one_pupil(
        "<Gender/><BasicDetails/><Attendance><YearData><Year></Year><LEA>919</LEA>\
         <Estab>2001</Estab><SchoolName/><SessionsPossible> </SessionsPossible>\
         </YearData></Attendance>",
    );

    let file = read_ok(&xml);
    let pupil = only_pupil(&file);
    assert_eq!(pupil.sex, "");
    assert_eq!(pupil.year_group, None);
    let year_data = &pupil.attendance[0];
    assert_eq!(year_data.year, None);
    assert_eq!(year_data.school.school_name, None);
    assert_eq!(year_data.totals, Totals::default());
}

#[test]
fn self_closing_attendance_has_no_years() {
    let file = read_ok(&one_pupil("<Attendance/>"));

    assert!(only_pupil(&file).attendance.is_empty());
}

#[test]
fn values_trimmed_and_references_resolved() {
    let xml = one_pupil("")
        .replace(
            "<Surname>Smith</Surname>",
            "<Surname>\n  O&#x27;Brien &amp; Sons\n</Surname>",
        )
        .replace(
            "<Forename>Amy</Forename>",
            "<Forename><![CDATA[Amy <Jo>]]></Forename>",
        );

    let file = read_ok(&xml);
    let pupil = only_pupil(&file);
    assert_eq!(pupil.surname, "O'Brien & Sons");
    assert_eq!(pupil.forename, "Amy <Jo>");
}

#[test]
fn same_value_twice_accepted() {
    let xml = one_pupil(
        "<NCyearActual>R</NCyearActual><BasicDetails><NCyearActual>R</NCyearActual>\
         </BasicDetails><Gender>F</Gender><Sex>F</Sex>",
    );

    let file = read_ok(&xml);
    let pupil = only_pupil(&file);
    assert_eq!(pupil.year_group.as_deref(), Some("R"));
    assert_eq!(pupil.sex, "F");
}

#[test]
fn dest_school_placeholders_accepted() {
    let xml = "<CTfile><Header><CTFversion>25.0</CTFversion>\
               <SourceSchool><LEA>919</LEA><Estab>2001</Estab></SourceSchool>\
               <DestSchool><LEA>XXX</LEA><Estab>XXXX</Estab></DestSchool></Header></CTfile>";

    let dest = read_ok(xml)
        .header
        .dest_school
        .expect("DestSchool is present");
    assert_eq!(dest.lea, "XXX");
    assert_eq!(dest.estab, "XXXX");
}

#[test]
fn attend_sessions_without_marks_is_empty() {
    let xml = one_pupil(
        "<Attendance><YearData><LEA>919</LEA><Estab>2001</Estab><AttendSessions>\
         <AttendanceStartDate>2025-09-03</AttendanceStartDate></AttendSessions>\
         </YearData></Attendance>",
    );

    let file = read_ok(&xml);
    let sessions = only_pupil(&file).attendance[0]
        .sessions
        .as_ref()
        .expect("AttendSessions is present");
    assert_eq!(sessions.start_date, date("2025-09-03"));
    assert!(sessions.marks.is_empty());
}

#[test]
fn extended_marks_in_any_order_and_case() {
    let xml = one_pupil(
        "<Attendance><YearData><LEA>919</LEA><Estab>2001</Estab><AttendSessions>\
         <extendedmarks>\
           <ExtendedMark><Session>pm</Session><Code>Y3</Code><Date>2025-09-04</Date></ExtendedMark>\
           <ExtendedMark><Date>2025-09-03</Date><Session>AM</Session><Code>J1</Code></ExtendedMark>\
         </extendedmarks>\
         <AttendanceMarks>J/\\Y</AttendanceMarks>\
         <AttendanceStartDate>2025-09-03</AttendanceStartDate>\
         </AttendSessions></YearData></Attendance>",
    );

    let file = read_ok(&xml);
    let sessions = only_pupil(&file).attendance[0]
        .sessions
        .as_ref()
        .expect("AttendSessions is present");
    assert_eq!(sessions.marks, vec!["J1", "/", "\\", "Y3"]);
}

#[test]
fn marks_not_judged_as_codes() {
    let xml = one_pupil(
        "<Attendance><YearData><LEA>919</LEA><Estab>2001</Estab><AttendSessions>\
         <AttendanceStartDate>2025-09-03</AttendanceStartDate>\
         <AttendanceMarks>?&amp;\u{e9}\t*</AttendanceMarks>\
         </AttendSessions></YearData></Attendance>",
    );

    let file = read_ok(&xml);
    let sessions = only_pupil(&file).attendance[0]
        .sessions
        .as_ref()
        .expect("AttendSessions is present");
    assert_eq!(sessions.marks, vec!["?", "&", "é", "*"]);
}

#[test]
fn session_index_inverts_session_at() {
    let file = two_pupils();
    let sessions = file.pupils[0].attendance[0]
        .sessions
        .as_ref()
        .expect("the fixture has AttendSessions");

    for index in 0..sessions.marks.len() {
        let (day, session) = sessions.session_at(index);
        assert_eq!(sessions.session_index(day, session), Some(index));
    }
    assert_eq!(sessions.session_index(date("2025-09-02"), 1), None);
    assert_eq!(sessions.session_index(date("2025-09-15"), 0), None);
    assert_eq!(sessions.session_index(date("2025-09-03"), 2), None);
}
