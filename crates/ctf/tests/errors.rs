//! Each way `read` rejects a file, checking that the error names the element, the pupil and
//! the line, and gives the fix.

use rollcall_ctf::{CtfError, CtfErrorKind, ExtendedMarkProblem, read};

const PUPILS_PATH: &str = "CTfile/CTFpupilData";
const UPN: &str = "A919200125001";

/// The required pupil elements, on lines 9 to 12 of [`document`].
const REQUIRED: &str = "<UPN>A919200125001</UPN>\n\
                        <Surname>Smith</Surname>\n\
                        <Forename>Amy</Forename>\n\
                        <DOB>2019-03-04</DOB>";

/// Returns a document whose only pupil contains `pupil_body`, which starts on line 9. The
/// `Pupil` start tag is on line 8.
fn document(pupil_body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <CTfile>\n\
         <Header>\n\
         <CTFversion>25.0</CTFversion>\n\
         <SourceSchool><LEA>919</LEA><Estab>2001</Estab></SourceSchool>\n\
         </Header>\n\
         <CTFpupilData>\n\
         <Pupil>\n\
         {pupil_body}\n\
         </Pupil>\n\
         </CTFpupilData>\n\
         </CTfile>"
    )
}

/// Returns a document with one pupil whose one `YearData` contains `AttendSessions` with
/// `sessions_body`. The `AttendSessions` start tag is on line 15 and its body starts on line 16.
fn with_sessions(sessions_body: &str) -> String {
    document(&format!(
        "{REQUIRED}\n<Attendance>\n<YearData><LEA>919</LEA><Estab>2001</Estab>\n\
         <AttendSessions>\n{sessions_body}\n</AttendSessions>\n</YearData>\n</Attendance>"
    ))
}

/// Returns `with_sessions` for four sessions from 3 September 2025 and the given
/// `ExtendedMarks` entries, each as one line from line 19.
fn with_extended_marks(marks: &str, entries: &[(&str, &str, &str)]) -> String {
    let entries: Vec<String> = entries
        .iter()
        .map(|(date, session, code)| {
            format!(
                "<ExtendedMark><Date>{date}</Date><Session>{session}</Session>\
                 <Code>{code}</Code></ExtendedMark>"
            )
        })
        .collect();
    with_sessions(&format!(
        "<AttendanceStartDate>2025-09-03</AttendanceStartDate>\n\
         <AttendanceMarks>{marks}</AttendanceMarks>\n\
         <ExtendedMarks>\n{}\n</ExtendedMarks>",
        entries.join("\n")
    ))
}

fn read_error(xml: &str) -> CtfError {
    read_bytes_error(xml.as_bytes())
}

fn read_bytes_error(bytes: &[u8]) -> CtfError {
    match read(bytes) {
        Ok(file) => panic!("the document should be rejected, but read gave {file:?}"),
        Err(error) => error,
    }
}

/// Checks that the message names the line, the path and the UPN that the error's fields give.
fn assert_message_names_place(error: &CtfError) {
    let message = error.to_string();
    if let Some(path) = error.path() {
        assert!(message.contains(path), "{message:?} should name {path}");
    }
    if let Some(upn) = error.upn() {
        assert!(
            message.contains(upn),
            "{message:?} should name the UPN {upn}"
        );
    }
    if let Some(line) = error.line() {
        let line = format!("line {line}");
        assert!(message.contains(&line), "{message:?} should name {line}");
    }
    assert!(
        !message.ends_with('.'),
        "{message:?} should have no trailing period"
    );
}

#[test]
fn message_format() {
    let error = read_error(&document(&REQUIRED.replace("2019-03-04", "2019-13-04")));

    assert_eq!(
        error.to_string(),
        "line 12, CTfile/CTFpupilData/Pupil[1]/DOB (pupil A919200125001): \
         invalid date \"2019-13-04\" in <DOB>, expected YYYY-MM-DD; \
         correct the record in the sending school's MIS and export the file again"
    );
}

#[test]
fn empty_file() {
    for bytes in [&b""[..], b"  \n\t"] {
        let error = read_bytes_error(bytes);
        assert_eq!(error.kind(), &CtfErrorKind::EmptyFile);
        assert_eq!(
            error.to_string(),
            "the file is empty; export the CTF again from the MIS"
        );
    }
}

#[test]
fn not_xml_text() {
    let error = read_error("UPN,Surname,Forename\nA919200125001,Smith,Amy\n");

    assert!(matches!(error.kind(), CtfErrorKind::NotXml { .. }));
    assert_eq!(error.line(), Some(1));
    let message = error.to_string();
    assert!(message.contains("not an XML file"), "{message}");
    assert!(message.contains("not a zip archive"), "{message}");
}

#[test]
fn not_xml_zip_archive() {
    let error = read_bytes_error(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xff\xfe");

    assert!(matches!(error.kind(), CtfErrorKind::NotXml { .. }));
}

#[test]
fn not_xml_text_after_declaration() {
    let error = read_error("<?xml version=\"1.0\"?>\nhello");

    assert!(matches!(error.kind(), CtfErrorKind::NotXml { .. }));
    assert_eq!(error.line(), Some(1));
}

#[test]
fn utf16_with_byte_order_mark() {
    let mut bytes = vec![0xFF, 0xFE];
    for unit in "<CTfile/>".encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }

    let error = read_bytes_error(&bytes);
    assert_eq!(error.kind(), &CtfErrorKind::Utf16);
    assert!(error.to_string().contains("export the file again as UTF-8"));
}

#[test]
fn utf16_without_byte_order_mark() {
    let bytes: Vec<u8> = "<CTfile/>"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();

    assert_eq!(read_bytes_error(&bytes).kind(), &CtfErrorKind::Utf16);
}

#[test]
fn declared_other_encoding() {
    let xml = document(REQUIRED).replace("UTF-8", "ISO-8859-1");

    let error = read_error(&xml);
    let expected = CtfErrorKind::DeclaredEncoding {
        encoding: "ISO-8859-1".to_owned(),
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.path(), None);
    assert_eq!(
        error.to_string(),
        "line 1: the XML declaration gives the encoding ISO-8859-1, but rollcall reads only UTF-8; \
         export the file again as UTF-8"
    );
}

#[test]
fn invalid_utf8() {
    let mut bytes = document(REQUIRED).into_bytes();
    let at = bytes
        .windows(5)
        .position(|window| window == b"Smith")
        .expect("the document has Smith");
    bytes[at + 1] = 0xE9;

    let error = read_bytes_error(&bytes);
    assert_eq!(error.kind(), &CtfErrorKind::InvalidUtf8);
    assert_eq!(error.line(), Some(10));
    assert_message_names_place(&error);
}

#[test]
fn root_not_ctfile() {
    let error = read_error("<?xml version=\"1.0\"?>\n<foo><bar/></foo>");

    let expected = CtfErrorKind::NotCtf {
        root: "foo".to_owned(),
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.line(), Some(2));
    let message = error.to_string();
    assert!(
        message.contains("not a Common Transfer File: root element is <foo>"),
        "{message}"
    );
}

#[test]
fn no_root_element() {
    let error = read_error("<?xml version=\"1.0\"?>\n<!-- nothing here -->\n");

    assert_eq!(error.kind(), &CtfErrorKind::MissingRoot);
}

#[test]
fn truncated_inside_pupil() {
    let xml = document(REQUIRED);
    let cut = xml
        .find("</Pupil>")
        .expect("the document has a Pupil end tag");

    let error = read_error(&xml[..cut]);
    let expected = CtfErrorKind::Truncated {
        element: Some("Pupil".to_owned()),
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.path(), Some("CTfile/CTFpupilData/Pupil[1]"));
    assert_eq!(error.upn(), Some(UPN));
    let message = error.to_string();
    assert!(
        message.contains("the file ends before <Pupil> is closed"),
        "{message}"
    );
    assert!(message.contains("copy or export it again"), "{message}");
    assert_message_names_place(&error);
}

#[test]
fn truncated_inside_value() {
    let xml = document(REQUIRED);
    let cut = xml.find("mith").expect("the document has Smith");

    let error = read_error(&xml[..cut]);
    let expected = CtfErrorKind::Truncated {
        element: Some("Surname".to_owned()),
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.path(), Some("CTfile/CTFpupilData/Pupil[1]/Surname"));
    assert_eq!(error.line(), Some(10));
}

#[test]
fn truncated_inside_tag() {
    let xml = document(REQUIRED);
    let cut = xml.find("urname>").expect("the document has Surname");

    let error = read_error(&xml[..cut]);
    assert!(matches!(error.kind(), CtfErrorKind::Truncated { .. }));
    assert_eq!(error.line(), Some(10));
    assert_eq!(error.upn(), Some(UPN));
}

#[test]
fn truncated_inside_character() {
    let xml = document(&REQUIRED.replace("Amy", "Zoë"));
    let cut = xml.find('ë').expect("the document has ë") + 1;

    let error = read_bytes_error(&xml.as_bytes()[..cut]);
    assert_eq!(error.kind(), &CtfErrorKind::Truncated { element: None });
}

#[test]
fn mismatched_end_tag() {
    let error = read_error(&document(&REQUIRED.replace("</Surname>", "</Surnam>")));

    assert!(matches!(error.kind(), CtfErrorKind::MalformedXml { .. }));
    assert_eq!(error.line(), Some(10));
    assert!(error.to_string().contains("Surnam"));
    assert_message_names_place(&error);
}

#[test]
fn bare_ampersand() {
    let error = read_error(&document(&REQUIRED.replace("Smith", "Smith & Sons")));

    assert!(matches!(error.kind(), CtfErrorKind::MalformedXml { .. }));
    assert_eq!(error.line(), Some(10));
    assert_eq!(error.upn(), Some(UPN));
    assert!(error.to_string().contains("&amp;"));
}

#[test]
fn unknown_entity() {
    let error = read_error(&document(&REQUIRED.replace("Smith", "Sm&eacute;th")));

    assert!(matches!(error.kind(), CtfErrorKind::MalformedXml { .. }));
    assert_eq!(error.path(), Some("CTfile/CTFpupilData/Pupil[1]/Surname"));
    assert!(error.to_string().contains("&eacute;"));
}

#[test]
fn missing_header() {
    let error = read_error("<CTfile>\n<CTFpupilData/>\n</CTfile>");

    let expected = CtfErrorKind::MissingElement { element: "Header" };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.path(), Some("CTfile"));
    assert_eq!(error.line(), Some(1));
}

#[test]
fn missing_ctf_version() {
    let error = read_error(&document(REQUIRED).replace("<CTFversion>25.0</CTFversion>", ""));

    let expected = CtfErrorKind::MissingElement {
        element: "CTFversion",
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.path(), Some("CTfile/Header"));
    assert_eq!(error.line(), Some(3));
}

#[test]
fn missing_source_school() {
    let xml = document(REQUIRED).replace(
        "<SourceSchool><LEA>919</LEA><Estab>2001</Estab></SourceSchool>",
        "",
    );

    let expected = CtfErrorKind::MissingElement {
        element: "SourceSchool",
    };
    assert_eq!(read_error(&xml).kind(), &expected);
}

#[test]
fn missing_source_school_lea_and_estab() {
    for (element, removed) in [("LEA", "<LEA>919</LEA>"), ("Estab", "<Estab>2001</Estab>")] {
        let error = read_error(&document(REQUIRED).replace(removed, ""));

        assert_eq!(error.kind(), &CtfErrorKind::MissingElement { element });
        assert_eq!(error.path(), Some("CTfile/Header/SourceSchool"));
        assert_eq!(error.line(), Some(5));
        let message = error.to_string();
        assert!(
            message.contains(&format!("missing or empty required element <{element}>")),
            "{message}"
        );
    }
}

#[test]
fn missing_upn_has_no_upn() {
    let error = read_error(&document(&REQUIRED.replace("<UPN>A919200125001</UPN>", "")));

    assert_eq!(
        error.kind(),
        &CtfErrorKind::MissingElement { element: "UPN" }
    );
    assert_eq!(error.path(), Some("CTfile/CTFpupilData/Pupil[1]"));
    assert_eq!(error.upn(), None);
    assert_eq!(error.line(), Some(8));
}

#[test]
fn empty_upn_counts_as_missing() {
    let error = read_error(&document(
        &REQUIRED.replace("<UPN>A919200125001</UPN>", "<UPN/>"),
    ));

    assert_eq!(
        error.kind(),
        &CtfErrorKind::MissingElement { element: "UPN" }
    );
}

#[test]
fn missing_pupil_elements_name_the_upn() {
    let cases = [
        ("Surname", "<Surname>Smith</Surname>"),
        ("Forename", "<Forename>Amy</Forename>"),
        ("DOB", "<DOB>2019-03-04</DOB>"),
    ];
    for (element, removed) in cases {
        let error = read_error(&document(&REQUIRED.replace(removed, "")));

        assert_eq!(error.kind(), &CtfErrorKind::MissingElement { element });
        assert_eq!(error.path(), Some("CTfile/CTFpupilData/Pupil[1]"));
        assert_eq!(error.upn(), Some(UPN));
        assert_message_names_place(&error);
    }
}

#[test]
fn second_pupil_numbered() {
    let second = REQUIRED
        .replace("A919200125001", "B919200125002")
        .replace("2019-03-04", "2019-02-30");
    let xml = document(&format!("{REQUIRED}\n</Pupil>\n<Pupil>\n{second}"));

    let error = read_error(&xml);
    assert_eq!(error.path(), Some("CTfile/CTFpupilData/Pupil[2]/DOB"));
    assert_eq!(error.upn(), Some("B919200125002"));
    assert_eq!(error.line(), Some(18));
}

#[test]
fn missing_attendance_start_date() {
    let error = read_error(&with_sessions("<AttendanceMarks>/\\</AttendanceMarks>"));

    let expected = CtfErrorKind::MissingElement {
        element: "AttendanceStartDate",
    };
    assert_eq!(error.kind(), &expected);
    let path = format!("{PUPILS_PATH}/Pupil[1]/Attendance/YearData[1]/AttendSessions");
    assert_eq!(error.path(), Some(path.as_str()));
    assert_eq!(error.line(), Some(15));
    assert_eq!(error.upn(), Some(UPN));
}

#[test]
fn missing_year_data_estab() {
    let xml = document(&format!(
        "{REQUIRED}\n<Attendance><YearData><LEA>919</LEA></YearData></Attendance>"
    ));

    let error = read_error(&xml);
    assert_eq!(
        error.kind(),
        &CtfErrorKind::MissingElement { element: "Estab" }
    );
    assert_eq!(
        error.path(),
        Some("CTfile/CTFpupilData/Pupil[1]/Attendance/YearData[1]")
    );
}

#[test]
fn invalid_dates() {
    for value in [
        "2019-13-04",
        "04/03/2019",
        "2019-3-4",
        "2019-02-29",
        "20190304",
        "tomorrow",
    ] {
        let error = read_error(&document(&REQUIRED.replace("2019-03-04", value)));

        let expected = CtfErrorKind::InvalidDate {
            element: "DOB",
            value: value.to_owned(),
        };
        assert_eq!(error.kind(), &expected);
        assert_eq!(error.path(), Some("CTfile/CTFpupilData/Pupil[1]/DOB"));
        assert_eq!(error.line(), Some(12));
        let message = error.to_string();
        assert!(message.contains(value), "{message}");
        assert!(message.contains("<DOB>"), "{message}");
        assert!(message.contains("YYYY-MM-DD"), "{message}");
    }
}

#[test]
fn invalid_attendance_start_date() {
    let error = read_error(&with_sessions(
        "<AttendanceStartDate>2025-09-31</AttendanceStartDate>",
    ));

    let expected = CtfErrorKind::InvalidDate {
        element: "AttendanceStartDate",
        value: "2025-09-31".to_owned(),
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.line(), Some(16));
}

#[test]
fn invalid_totals() {
    for value in ["12a", "-1", "1.5", "+3", "4294967296"] {
        let xml = document(&format!(
            "{REQUIRED}\n<Attendance>\n<YearData><LEA>919</LEA><Estab>2001</Estab>\n\
             <SessionsAuthorised>{value}</SessionsAuthorised>\n</YearData>\n</Attendance>"
        ));

        let error = read_error(&xml);
        let expected = CtfErrorKind::InvalidNumber {
            element: "SessionsAuthorised",
            value: value.to_owned(),
        };
        assert_eq!(error.kind(), &expected);
        assert_eq!(
            error.path(),
            Some("CTfile/CTFpupilData/Pupil[1]/Attendance/YearData[1]/SessionsAuthorised")
        );
        assert_eq!(error.line(), Some(15));
        assert_eq!(error.upn(), Some(UPN));
        assert_message_names_place(&error);
    }
}

#[test]
fn invalid_lea() {
    for value in ["91", "9190", "ABC", "XXX"] {
        let xml = document(REQUIRED).replace("<LEA>919</LEA>", &format!("<LEA>{value}</LEA>"));

        let error = read_error(&xml);
        let expected = CtfErrorKind::InvalidSchoolNumber {
            element: "LEA",
            value: value.to_owned(),
            digits: 3,
        };
        assert_eq!(error.kind(), &expected);
        assert_eq!(error.path(), Some("CTfile/Header/SourceSchool/LEA"));
        assert_eq!(error.line(), Some(5));
        assert!(error.to_string().contains("expected 3 digits"));
    }
}

#[test]
fn invalid_estab_in_year_data() {
    let xml = document(&format!(
        "{REQUIRED}\n<Attendance><YearData><LEA>919</LEA><Estab>200</Estab></YearData></Attendance>"
    ));

    let error = read_error(&xml);
    let expected = CtfErrorKind::InvalidSchoolNumber {
        element: "Estab",
        value: "200".to_owned(),
        digits: 4,
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.upn(), Some(UPN));
    assert!(error.to_string().contains("expected 4 digits"));
}

#[test]
fn invalid_dest_school_placeholder() {
    let xml = document(REQUIRED).replace(
        "</SourceSchool>",
        "</SourceSchool><DestSchool><LEA>XYZ</LEA><Estab>XXXX</Estab></DestSchool>",
    );

    let error = read_error(&xml);
    assert_eq!(error.path(), Some("CTfile/Header/DestSchool/LEA"));
}

#[test]
fn odd_mark_count() {
    let error = read_error(&with_sessions(
        "<AttendanceStartDate>2025-09-03</AttendanceStartDate>\n\
         <AttendanceMarks>/\\/\\\n/</AttendanceMarks>",
    ));

    assert_eq!(error.kind(), &CtfErrorKind::OddMarkCount { count: 5 });
    let path =
        format!("{PUPILS_PATH}/Pupil[1]/Attendance/YearData[1]/AttendSessions/AttendanceMarks");
    assert_eq!(error.path(), Some(path.as_str()));
    assert_eq!(error.line(), Some(17));
    assert_eq!(error.upn(), Some(UPN));
    assert_message_names_place(&error);
}

#[test]
fn conflicting_sex_values() {
    let error = read_error(&document(&format!(
        "{REQUIRED}\n<Gender>F</Gender>\n<Sex>M</Sex>"
    )));

    let expected = CtfErrorKind::ConflictingValues {
        element: "Sex",
        first: "F".to_owned(),
        second: "M".to_owned(),
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.line(), Some(14));
}

#[test]
fn conflicting_year_groups() {
    let xml = document(&format!(
        "{REQUIRED}\n<NCyearActual>1</NCyearActual>\n\
         <BasicDetails><NCyearActual>2</NCyearActual></BasicDetails>"
    ));

    let error = read_error(&xml);
    assert_eq!(
        error.path(),
        Some("CTfile/CTFpupilData/Pupil[1]/BasicDetails/NCyearActual")
    );
    assert!(error.to_string().contains("\"1\" and \"2\""));
}

#[test]
fn repeated_header() {
    let xml = document(REQUIRED).replace(
        "</Header>",
        "</Header>\n<Header><CTFversion>25.0</CTFversion></Header>",
    );

    let error = read_error(&xml);
    assert_eq!(error.kind(), &CtfErrorKind::Repeated { element: "Header" });
    assert_eq!(error.line(), Some(7));
}

#[test]
fn repeated_attendance_marks() {
    let error = read_error(&with_sessions(
        "<AttendanceStartDate>2025-09-03</AttendanceStartDate>\n\
         <AttendanceMarks>/\\</AttendanceMarks>\n<AttendanceMarks>/\\</AttendanceMarks>",
    ));

    let expected = CtfErrorKind::Repeated {
        element: "AttendanceMarks",
    };
    assert_eq!(error.kind(), &expected);
    assert_eq!(error.line(), Some(18));
}

/// Returns the `ExtendedMark` problem of `error`, failing the test for any other kind.
fn extended_problem(error: &CtfError) -> &ExtendedMarkProblem {
    match error.kind() {
        CtfErrorKind::ExtendedMark(problem) => problem,
        other => panic!("expected an ExtendedMark problem, got {other:?}"),
    }
}

fn extended_mark_path(ordinal: usize) -> String {
    format!(
        "{PUPILS_PATH}/Pupil[1]/Attendance/YearData[1]/AttendSessions/ExtendedMarks/ExtendedMark[{ordinal}]"
    )
}

#[test]
fn extended_mark_accepted() {
    let xml = with_extended_marks("/\\C#", &[("2025-09-04", "AM", "C2")]);

    let file = read(xml.as_bytes()).expect("the extended mark fits the marks string");
    let sessions = file.pupils[0].attendance[0]
        .sessions
        .as_ref()
        .expect("AttendSessions is present");
    assert_eq!(sessions.marks, vec!["/", "\\", "C2", "#"]);
}

#[test]
fn extended_mark_after_last_session() {
    let error = read_error(&with_extended_marks("/\\C#", &[("2025-09-05", "AM", "C1")]));

    let problem = extended_problem(&error);
    assert!(matches!(problem, ExtendedMarkProblem::OutsideMarks { .. }));
    assert_eq!(error.path(), Some(extended_mark_path(1).as_str()));
    assert_eq!(error.line(), Some(19));
    assert_eq!(error.upn(), Some(UPN));
    let message = error.to_string();
    assert!(
        message.contains("2025-09-05 AM lies outside <AttendanceMarks>, which covers 2025-09-03 AM to 2025-09-04 PM"),
        "{message}"
    );
    assert_message_names_place(&error);
}

#[test]
fn extended_mark_before_start() {
    let error = read_error(&with_extended_marks("/\\C#", &[("2025-09-02", "PM", "C1")]));

    let problem = extended_problem(&error);
    assert!(matches!(problem, ExtendedMarkProblem::OutsideMarks { .. }));
}

#[test]
fn extended_mark_with_empty_marks() {
    let error = read_error(&with_extended_marks("", &[("2025-09-03", "AM", "C1")]));

    assert!(error.to_string().contains("which is empty"));
}

#[test]
fn extended_mark_first_character_differs() {
    let error = read_error(&with_extended_marks(
        "/\\C#",
        &[("2025-09-04", "AM", "C1"), ("2025-09-04", "PM", "J1")],
    ));

    let expected = ExtendedMarkProblem::FirstCharacterMismatch {
        date: chrono::NaiveDate::from_ymd_opt(2025, 9, 4).expect("valid date"),
        session: 1,
        code: "J1".to_owned(),
        mark: '#',
    };
    assert_eq!(extended_problem(&error), &expected);
    assert_eq!(error.path(), Some(extended_mark_path(2).as_str()));
    assert_eq!(error.line(), Some(20));
    let message = error.to_string();
    assert!(
        message.contains(
            "<AttendanceMarks> has '#' for 2025-09-04 PM, but the code J1 given for that session starts with 'J'"
        ),
        "{message}"
    );
}

#[test]
fn extended_mark_invalid_session() {
    let error = read_error(&with_extended_marks("/\\C#", &[("2025-09-04", "XM", "C1")]));

    let expected = ExtendedMarkProblem::InvalidSession {
        value: "XM".to_owned(),
    };
    assert_eq!(extended_problem(&error), &expected);
    let path = format!("{}/Session", extended_mark_path(1));
    assert_eq!(error.path(), Some(path.as_str()));
    assert!(error.to_string().contains("expected AM or PM"));
}

#[test]
fn extended_mark_listed_twice() {
    let error = read_error(&with_extended_marks(
        "/\\C#",
        &[("2025-09-04", "AM", "C1"), ("2025-09-04", "am", "C2")],
    ));

    let problem = extended_problem(&error);
    assert!(matches!(
        problem,
        ExtendedMarkProblem::Duplicate { session: 0, .. }
    ));
    assert_eq!(error.path(), Some(extended_mark_path(2).as_str()));
    assert!(error.to_string().contains("2025-09-04 AM is listed twice"));
}

#[test]
fn extended_mark_code_not_two_characters() {
    for code in ["C", "C12"] {
        let error = read_error(&with_extended_marks("/\\C#", &[("2025-09-04", "AM", code)]));

        let expected = ExtendedMarkProblem::InvalidCode {
            code: code.to_owned(),
        };
        assert_eq!(extended_problem(&error), &expected);
    }
}

#[test]
fn extended_mark_missing_code() {
    let xml = with_sessions(
        "<AttendanceStartDate>2025-09-03</AttendanceStartDate>\n\
         <AttendanceMarks>/\\C#</AttendanceMarks>\n\
         <ExtendedMarks>\n<ExtendedMark><Date>2025-09-04</Date><Session>AM</Session></ExtendedMark>\n</ExtendedMarks>",
    );

    let error = read_error(&xml);
    assert_eq!(
        error.kind(),
        &CtfErrorKind::MissingElement { element: "Code" }
    );
    assert_eq!(error.path(), Some(extended_mark_path(1).as_str()));
}

#[test]
fn extended_mark_invalid_date() {
    let error = read_error(&with_extended_marks("/\\C#", &[("4 Sept", "AM", "C1")]));

    let expected = CtfErrorKind::InvalidDate {
        element: "Date",
        value: "4 Sept".to_owned(),
    };
    assert_eq!(error.kind(), &expected);
}
