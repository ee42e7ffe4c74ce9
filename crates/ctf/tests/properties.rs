//! Property tests: `read(write(x)) == x` over generated files, and `read` never panics, whether
//! on arbitrary bytes, on XML-like fragments, on damaged files or on every prefix of a file.

use chrono::NaiveDate;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use rollcall_ctf::{
    AttendSessions, CtfFile, Header, Pupil, SchoolIdentity, Totals, YearData, read, write,
};

/// Codes of one and two characters, and characters that XML must escape.
const CODES: &[&str] = &[
    "/", "\\", "L", "U", "#", "I", "M", "C1", "C2", "J1", "Y3", "Y7", "N", "O", "G", "&", "<",
];

const FIXTURE: &str = include_str!("data/two_pupils.xml");

/// Text with XML special characters and non-ASCII letters, without surrounding whitespace.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z'&<>\"éñ李-]{1,4}( [A-Za-z'&<>\"é;#-]{1,5}){0,2}"
}

fn date() -> impl Strategy<Value = NaiveDate> {
    (1950_i32..2040, 1_u32..=12, 1_u32..=28).prop_map(|(year, month, day)| {
        NaiveDate::from_ymd_opt(year, month, day).expect("days up to 28 exist in every month")
    })
}

fn school() -> impl Strategy<Value = SchoolIdentity> {
    ("[0-9]{3}", "[0-9]{4}", option::of(name())).prop_map(|(lea, estab, school_name)| {
        SchoolIdentity {
            lea,
            estab,
            school_name,
        }
    })
}

fn dest_school() -> impl Strategy<Value = SchoolIdentity> {
    prop_oneof![
        school(),
        Just(SchoolIdentity {
            lea: "XXX".to_owned(),
            estab: "XXXX".to_owned(),
            school_name: None,
        }),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (
        select(&["23.0", "24.0", "25.0", "25.1"][..]),
        option::of(Just("2025-12-19T16:00:00".to_owned())),
        option::of(name()),
        school(),
        option::of("20[0-9]{2}"),
        option::of(dest_school()),
    )
        .prop_map(
            |(ctf_version, date_time, document_name, source_school, academic_year, dest_school)| {
                Header {
                    ctf_version: ctf_version.to_owned(),
                    date_time,
                    document_name,
                    source_school,
                    academic_year,
                    dest_school,
                }
            },
        )
}

/// Sizes of generated files: the maximum numbers of pupils, years per pupil and days of marks
/// per year.
#[derive(Debug, Clone, Copy)]
struct Size {
    pupils: usize,
    years: usize,
    days: usize,
}

/// Larger files, for reading once.
const FULL: Size = Size {
    pupils: 3,
    years: 2,
    days: 40,
};

/// Smaller files, for reading every prefix.
const SMALL: Size = Size {
    pupils: 2,
    years: 1,
    days: 6,
};

fn sessions(size: Size) -> impl Strategy<Value = AttendSessions> {
    (date(), vec((select(CODES), select(CODES)), 0..=size.days)).prop_map(|(start_date, days)| {
        let marks = days
            .into_iter()
            .flat_map(|(am, pm)| [am.to_owned(), pm.to_owned()])
            .collect();
        AttendSessions { start_date, marks }
    })
}

fn totals() -> impl Strategy<Value = Totals> {
    (
        option::of(any::<u32>()),
        option::of(any::<u32>()),
        option::of(any::<u32>()),
        option::of(any::<u32>()),
    )
        .prop_map(|(possible, authorised, attended, unauthorised)| Totals {
            possible,
            authorised,
            attended,
            unauthorised,
        })
}

fn year_data(size: Size) -> impl Strategy<Value = YearData> {
    (
        option::of("20[0-9]{2}"),
        school(),
        totals(),
        option::of(sessions(size)),
    )
        .prop_map(|(year, school, totals, sessions)| YearData {
            year,
            school,
            totals,
            sessions,
        })
}

fn pupil(size: Size) -> impl Strategy<Value = Pupil> {
    (
        "[A-Z][0-9]{11}[0-9A-Z]",
        name(),
        name(),
        date(),
        select(&["", "F", "M", "U"][..]),
        option::of(select(&["N1", "R", "1", "6", "11", "14"][..])),
        option::of(select(&["C", "M", "S"][..])),
        vec(year_data(size), 0..=size.years),
    )
        .prop_map(
            |(upn, surname, forename, date_of_birth, sex, year_group, enrol_status, attendance)| {
                Pupil {
                    upn,
                    surname,
                    forename,
                    date_of_birth,
                    sex: sex.to_owned(),
                    year_group: year_group.map(str::to_owned),
                    enrol_status: enrol_status.map(str::to_owned),
                    attendance,
                }
            },
        )
}

fn ctf_file(size: Size) -> impl Strategy<Value = CtfFile> {
    (header(), vec(pupil(size), 0..=size.pupils))
        .prop_map(|(header, pupils)| CtfFile { header, pupils })
}

/// Fragments of CTF markup, including broken and hostile ones, for building XML-like input.
const FRAGMENTS: &[&str] = &[
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    "<CTfile>",
    "</CTfile>",
    "<Header>",
    "</Header>",
    "<CTFversion>25.0</CTFversion>",
    "<SourceSchool>",
    "</SourceSchool>",
    "<LEA>919</LEA>",
    "<Estab>2001</Estab>",
    "<CTFpupilData>",
    "</CTFpupilData>",
    "<Pupil>",
    "</Pupil>",
    "<UPN>A919200125001</UPN>",
    "<Surname>O&apos;Brien</Surname>",
    "<Forename>Amy</Forename>",
    "<DOB>2019-03-04</DOB>",
    "<Attendance>",
    "</Attendance>",
    "<YearData>",
    "</YearData>",
    "<AttendSessions>",
    "</AttendSessions>",
    "<AttendanceStartDate>2025-09-03</AttendanceStartDate>",
    "<AttendanceStartDate>9999-12-31</AttendanceStartDate>",
    "<AttendanceMarks>/\\C#</AttendanceMarks>",
    "<ExtendedMarks>",
    "</ExtendedMarks>",
    "<ExtendedMark><Date>2025-09-04</Date><Session>AM</Session><Code>C1</Code></ExtendedMark>",
    "<ExtendedMark><Date>+262143-12-31</Date><Session>PM</Session><Code>C1</Code></ExtendedMark>",
    "<ExtendedMark><Date>0000-01-01</Date><Session>PM</Session><Code>C1</Code></ExtendedMark>",
    "<SessionsPossible>99999999999999999999</SessionsPossible>",
    "<x/>",
    "<![CDATA[<]]>",
    "&amp;",
    "&#0;",
    "&#xFFFFFFFF;",
    "&",
    "<!-- -->",
    "<!DOCTYPE CTfile>",
    "</",
    "<",
    ">",
    " ",
    "\n",
    "é",
];

proptest! {
    #[test]
    fn write_then_read_gives_same_file(file in ctf_file(FULL)) {
        let bytes = write(&file).expect("generated files are writable");
        let text = String::from_utf8(bytes.clone()).expect("the writer produces UTF-8");
        prop_assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
        let back = read(&bytes).map_err(|error| TestCaseError::fail(format!("{error}\n{text}")))?;
        prop_assert_eq!(back, file);
    }

    #[test]
    fn read_never_panics_on_bytes(bytes in vec(any::<u8>(), 0..512)) {
        let _ = read(&bytes);
    }

    #[test]
    fn read_never_panics_on_fragments(parts in vec(select(FRAGMENTS), 0..40)) {
        let _ = read(parts.concat().as_bytes());
    }

    #[test]
    fn read_never_panics_on_damaged_file(
        changes in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = FIXTURE.as_bytes().to_vec();
        for (index, byte) in changes {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        let _ = read(&bytes);
    }
}

proptest! {
    // Each case reads every prefix of its document, so fewer cases suffice.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_proper_prefix_rejected(file in ctf_file(SMALL)) {
        let bytes = write(&file).expect("generated files are writable");
        for end in 0..bytes.len() {
            prop_assert!(
                read(&bytes[..end]).is_err(),
                "the prefix of {} bytes was accepted:\n{}",
                end,
                String::from_utf8_lossy(&bytes[..end])
            );
        }
        prop_assert!(read(&bytes).is_ok());
    }
}

#[test]
fn every_prefix_of_fixture_rejected() {
    let bytes = FIXTURE.as_bytes();
    let root_end = FIXTURE
        .find("</CTfile>")
        .expect("the fixture has a root end tag")
        + "</CTfile>".len();

    for end in 0..root_end {
        assert!(
            read(&bytes[..end]).is_err(),
            "the prefix of {end} bytes was accepted"
        );
    }
    for end in root_end..=bytes.len() {
        assert!(
            read(&bytes[..end]).is_ok(),
            "the prefix of {end} bytes, which contains the whole root element, was rejected"
        );
    }
}
