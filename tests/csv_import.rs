//! `rollcall import csv` and `rollcall import ctf --dry-run` against a real server, run as a
//! user runs them: CSV files in a temporary folder, the `rollcall` binary, and `rollcall marks
//! history` to see what was stored. Covers every built-in profile, a file refused for a
//! missing column, rows rejected with their line and reason, a second run of the same file,
//! and dry runs. Each scenario runs on SQLite and on PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{Datelike, Duration, NaiveDate, Weekday};
use rollcall_api::registers::v1::GetSchoolRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use serde_json::Value;
use tonic::Code;

use common::run_rollcall;

macro_rules! on_both_databases {
    ($scenario:ident, $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            let work = tempfile::tempdir().expect("temporary folder");
            $scenario(work.path(), None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            let url = rollcall_testkit::postgres()
                .await
                .expect("PostgreSQL for the tests")
                .create_database()
                .await
                .expect("database");
            let work = tempfile::tempdir().expect("temporary folder");
            $scenario(work.path(), Some(&url)).await;
        }
    };
}

/// The exit status of an import that rejected some rows, as docs/csv-import.md gives it.
const EXIT_ROWS_REJECTED: i32 = 3;

async fn start(work: &Path, database_url: Option<&str>) -> RunningServer {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    server::start(config).await.expect("server starts")
}

/// Returns a valid UPN unique to a school (its last LAESTAB digit) and a serial number.
fn upn(school_digit: u8, serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, school_digit, 2, 5, 0, 0, serial]).to_string()
}

/// Returns a UPN whose check letter does not match its digits.
fn bad_upn(school_digit: u8, serial: u8) -> String {
    let good = upn(school_digit, serial);
    let wrong = if good.starts_with('A') { 'B' } else { 'A' };
    format!("{wrong}{}", &good[1..])
}

fn date(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("date")
}

/// Writes a CSV file into `work` and returns its path as a string for the command line.
fn write(work: &Path, name: &str, text: &str) -> String {
    let path: PathBuf = work.join(name);
    std::fs::write(&path, text).expect("file written");
    path.to_str().expect("UTF-8 path").to_owned()
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Returns the versions of one session's mark as `rollcall marks history --json` prints them.
async fn history(url: &str, upn: &str, date: &str, session: &str) -> Vec<Value> {
    let output = run_rollcall(
        url,
        &[
            "marks",
            "history",
            "--upn",
            upn,
            "--date",
            date,
            "--session",
            session,
            "--json",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    stdout_json(&output)
        .as_array()
        .expect("an array of versions")
        .clone()
}

/// Returns the effective code of one session, or `None` when it has no mark.
async fn effective_code(url: &str, upn: &str, date: &str, session: &str) -> Option<String> {
    history(url, upn, date, session)
        .await
        .iter()
        .find(|version| version["effective"] == true)
        .map(|version| version["code"].as_str().expect("code").to_owned())
}

/// Returns the rejections of a JSON summary as (line, field, reason code).
fn rejections(summary: &Value) -> Vec<(u64, String, String)> {
    summary["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .map(|rejection| {
            (
                rejection["line"].as_u64().expect("line"),
                rejection["field"].as_str().expect("field").to_owned(),
                rejection["reason_code"]
                    .as_str()
                    .expect("reason code")
                    .to_owned(),
            )
        })
        .collect()
}

fn counts(summary: &Value) -> (u64, u64, u64) {
    (
        summary["applied"].as_u64().expect("applied"),
        summary["unchanged"].as_u64().expect("unchanged"),
        summary["rejected"].as_u64().expect("rejected"),
    )
}

/// A pupils export and a marks export in the shape of one built-in profile: three pupils, and
/// their marks for the mornings and afternoons of Monday 8 and Tuesday 9 September 2025.
struct Sample {
    profile: &'static str,
    laestab: &'static str,
    school_digit: u8,
    pupils: String,
    marks: String,
}

/// The marks every sample carries, by pupil serial: date, session, code and minutes late.
const SAMPLE_MARKS: [(u8, &str, &str, &str, u32); 12] = [
    (1, "2025-09-08", "AM", "/", 0),
    (1, "2025-09-08", "PM", "\\", 0),
    (1, "2025-09-09", "AM", "L", 12),
    (1, "2025-09-09", "PM", "\\", 0),
    (2, "2025-09-08", "AM", "/", 0),
    (2, "2025-09-08", "PM", "\\", 0),
    (2, "2025-09-09", "AM", "I", 0),
    (2, "2025-09-09", "PM", "I", 0),
    (3, "2025-09-08", "AM", "M", 0),
    (3, "2025-09-08", "PM", "\\", 0),
    (3, "2025-09-09", "AM", "/", 0),
    (3, "2025-09-09", "PM", "N", 0),
];

fn uk_date(iso: &str) -> String {
    date(iso).format("%d/%m/%Y").to_string()
}

fn rollcall_sample() -> Sample {
    let u = |serial| upn(1, serial);
    let pupils = format!(
        "mis_id,upn,forename,surname,date_of_birth,sex,admission_date,year_group,class\n\
         R-1,{},Ada,Lovelace,2013-05-01,F,2025-09-01,8,8B\n\
         R-2,{},Alan,Turing,2013-06-23,M,2025-09-01,8,8B\n\
         R-3,{},Grace,Hopper,2011-12-09,F,2024-09-02,9,9A\n",
        u(1),
        u(2),
        u(3)
    );
    let mut marks = "mis_id,upn,date,session,code,minutes_late,comment\n".to_owned();
    for (serial, day, session, code, minutes) in SAMPLE_MARKS {
        let late = if minutes > 0 {
            minutes.to_string()
        } else {
            String::new()
        };
        marks.push_str(&format!("R-{serial},,{day},{session},{code},{late},\n"));
    }
    Sample {
        profile: "rollcall",
        laestab: "9192001",
        school_digit: 1,
        pupils,
        marks,
    }
}

/// SIMS style: a byte order mark and CRLF line ends as Excel writes them, extra columns,
/// and the marks as a grid with one column per session.
fn sims_sample() -> Sample {
    let u = |serial| upn(2, serial);
    let pupils = format!(
        "\u{feff}Adno,UPN,Legal Surname,Legal Forename,Preferred Forename,DOB,Gender,Admission Date,Year,Reg Group\r\n\
         001201,{},Lovelace,Ada,Ada,01/05/2013,F,01/09/2025,Year 8,8B\r\n\
         001202,{},Turing,Alan,Al,23/06/2013,M,01/09/2025,Year 8,8B\r\n\
         001203,{},Hopper,Grace,,09/12/2011,F,02/09/2024,Year 9,9A\r\n",
        u(1),
        u(2),
        u(3)
    );
    let days = ["2025-09-08", "2025-09-09"];
    let mut marks = "\u{feff}Adno,Name".to_owned();
    for day in days {
        for session in ["AM", "PM"] {
            marks.push_str(&format!(",{} {session}", uk_date(day)));
        }
    }
    marks.push_str("\r\n");
    for (serial, name) in [
        (1, "Lovelace, Ada"),
        (2, "Turing, Alan"),
        (3, "Hopper, Grace"),
    ] {
        marks.push_str(&format!("00120{serial},\"{name}\""));
        for (_, _, _, code, _) in SAMPLE_MARKS.iter().filter(|mark| mark.0 == serial) {
            marks.push_str(&format!(",{code}"));
        }
        marks.push_str("\r\n");
    }
    Sample {
        profile: "sims",
        laestab: "9192002",
        school_digit: 2,
        pupils,
        marks,
    }
}

fn arbor_sample() -> Sample {
    let u = |serial| upn(3, serial);
    let pupils = format!(
        "Student ID,UPN,Legal First Name,Legal Last Name,Date of Birth,Gender,Enrolment Start Date,Year,Registration Form\n\
         3001,{},Ada,Lovelace,01/05/2013,Female,01/09/2025,Year 8,8LO\n\
         3002,{},Alan,Turing,23/06/2013,Male,01/09/2025,Year 8,8LO\n\
         3003,{},Grace,Hopper,09/12/2011,Female,02/09/2024,Year 9,9HO\n",
        u(1),
        u(2),
        u(3)
    );
    let mut marks = "Student ID,UPN,Student,Date,Session,Mark,Minutes Late,Note\n".to_owned();
    for (serial, day, session, code, minutes) in SAMPLE_MARKS {
        let spelled = if session == "AM" {
            "Morning"
        } else {
            "Afternoon"
        };
        let note = if code == "M" { "Dentist" } else { "" };
        marks.push_str(&format!(
            "300{serial},{},Pupil {serial},{},{spelled},{code},{minutes},{note}\n",
            u(serial),
            uk_date(day)
        ));
    }
    Sample {
        profile: "arbor",
        laestab: "9192003",
        school_digit: 3,
        pupils,
        marks,
    }
}

fn bromcom_sample() -> Sample {
    let u = |serial| upn(4, serial);
    let pupils = format!(
        "Admission Number,UPN,Last Name,First Name,Date Of Birth,Gender,Admission Date,Year Group,Tutor Group,House\n\
         004001,{},Lovelace,Ada,01/05/2013,Female,01/09/2025,08,8N,North\n\
         004002,{},Turing,Alan,23/06/2013,Male,01/09/2025,08,8N,South\n\
         004003,{},Hopper,Grace,09/12/2011,Female,02/09/2024,09,9S,North\n",
        u(1),
        u(2),
        u(3)
    );
    let mut marks = "Admission Number,Date,Session,Mark,Minutes Late,Comments\n".to_owned();
    for (serial, day, session, code, minutes) in SAMPLE_MARKS {
        let spelled = format!("{session} Reg");
        marks.push_str(&format!(
            "00400{serial},{},{spelled},{code},{minutes},\n",
            uk_date(day)
        ));
    }
    Sample {
        profile: "bromcom",
        laestab: "9192004",
        school_digit: 4,
        pupils,
        marks,
    }
}

async fn every_profile_imports_its_sample(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let url = running.url();

    for sample in [
        rollcall_sample(),
        sims_sample(),
        arbor_sample(),
        bromcom_sample(),
    ] {
        let profile = sample.profile;
        let pupils = write(work, &format!("{profile}-pupils.csv"), &sample.pupils);
        let marks = write(work, &format!("{profile}-marks.csv"), &sample.marks);

        // The marks file comes first on the command line; pupils are imported first anyway.
        let output = run_rollcall(
            &url,
            &[
                "import",
                "csv",
                &marks,
                &pupils,
                "--profile",
                profile,
                "--school",
                sample.laestab,
                "--school-name",
                "Example Academy",
                "--phase",
                "secondary",
                "--json",
            ],
        )
        .await;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{profile}: {}",
            stderr(&output)
        );
        assert_eq!(
            stderr(&output),
            "",
            "{profile}: no progress bar without a terminal"
        );
        let summary = stdout_json(&output);
        assert_eq!(counts(&summary), (15, 0, 0), "{profile}: {summary}");
        assert_eq!(summary["pupils_added"], 3, "{profile}");
        assert_eq!(summary["profile"], profile);
        let files = summary["files"].as_array().expect("files");
        assert_eq!(files[0]["kind"], "pupils", "{profile}");
        assert_eq!(files[0]["rows"], 3, "{profile}");
        assert_eq!(files[1]["kind"], "marks", "{profile}");
        assert_eq!(files[1]["applied"], 12, "{profile}");

        // Every mark is stored as written, with its minutes late where the shape has them.
        let digit = sample.school_digit;
        for (serial, day, session, code, _) in SAMPLE_MARKS {
            let stored = effective_code(&url, &upn(digit, serial), day, session).await;
            assert_eq!(
                stored.as_deref(),
                Some(code),
                "{profile}: {serial} {day} {session}"
            );
        }
        let late = history(&url, &upn(digit, 1), "2025-09-09", "AM").await;
        let expected_minutes = if profile == "sims" { 0 } else { 12 };
        assert_eq!(late[0]["minutes_late"], expected_minutes, "{profile}");
        assert_eq!(late[0]["source"], "mis_sync", "{profile}");
    }
    running.stop().await.expect("server stops");
}

on_both_databases!(
    every_profile_imports_its_sample,
    profiles_import_on_sqlite,
    profiles_import_on_postgres
);

async fn missing_column_refuses_the_file(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let url = running.url();
    let sample = arbor_sample();

    // A new school's pupils without the surname column: refused, and the school not created.
    let without_surname = sample
        .pupils
        .replace("Legal Last Name", "Last Name Known As");
    let pupils = write(work, "no-surname.csv", &without_surname);
    let school_args = [
        "--profile",
        "arbor",
        "--school",
        sample.laestab,
        "--school-name",
        "Example Academy",
        "--phase",
        "secondary",
    ];
    let mut args = vec!["import", "csv", pupils.as_str()];
    args.extend(school_args);
    let output = run_rollcall(&url, &args).await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("no-surname.csv"), "{message}");
    assert!(
        message.contains("missing column \"Legal Last Name\" (surname)"),
        "{message}"
    );
    assert!(message.contains("profile arbor"), "{message}");
    assert!(message.contains("\"Last Name Known As\""), "{message}");
    let mut registers = RegistersServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let school = registers
        .get_school(GetSchoolRequest {
            laestab: sample.laestab.to_owned(),
        })
        .await
        .expect_err("the school was not created");
    assert_eq!(school.code(), Code::NotFound);

    // With the pupils in, a good marks file and one without its Mark column: neither is sent.
    let pupils = write(work, "pupils.csv", &sample.pupils);
    let mut args = vec!["import", "csv", pupils.as_str()];
    args.extend(school_args);
    let output = run_rollcall(&url, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let good = write(work, "marks.csv", &sample.marks);
    let without_mark = write(
        work,
        "no-mark.csv",
        &sample.marks.replace(",Mark,", ",Attendance Code,"),
    );
    let output = run_rollcall(
        &url,
        &[
            "import",
            "csv",
            &good,
            &without_mark,
            "--profile",
            "arbor",
            "--school",
            sample.laestab,
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("no-mark.csv"), "{message}");
    assert!(
        message.contains("missing column \"Mark\" (code)"),
        "{message}"
    );
    assert!(message.contains("nothing was sent"), "{message}");
    let stored = effective_code(&url, &upn(3, 1), "2025-09-08", "AM").await;
    assert_eq!(stored, None, "no mark from the good file was stored");
    running.stop().await.expect("server stops");
}

on_both_databases!(
    missing_column_refuses_the_file,
    missing_column_on_sqlite,
    missing_column_on_postgres
);

async fn bad_rows_are_rejected_and_the_rest_apply(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let url = running.url();
    let (laestab, digit) = ("9192005", 5);

    // Line 4 has a UPN with the wrong check letter; pupil 3 joins on 10 September.
    let pupils = write(
        work,
        "pupils.csv",
        &format!(
            "Admission Number,UPN,Last Name,First Name,Date Of Birth,Gender,Admission Date,Year Group,Tutor Group\n\
             5001,{},Lovelace,Ada,01/05/2013,Female,01/09/2025,8,8N\n\
             5002,{},Turing,Alan,23/06/2013,Male,01/09/2025,8,8N\n\
             5009,{},Noether,Emmy,23/03/2013,Female,01/09/2025,8,8N\n\
             5003,{},Hopper,Grace,09/12/2011,Female,10/09/2025,9,9S\n",
            upn(digit, 1),
            upn(digit, 2),
            bad_upn(digit, 9),
            upn(digit, 3)
        ),
    );
    let marks = write(
        work,
        "marks.csv",
        "Admission Number,Date,Session,Mark,Minutes Late,Comments\n\
         5001,08/09/2025,AM,/,,\n\
         5001,2025-09-08,PM,/,,\n\
         5002,08/09/2025,AM,/,,\n\
         7777,08/09/2025,AM,/,,\n\
         5003,08/09/2025,AM,/,,\n\
         5002,08/09/2025,Lunch,/,,\n\
         5002,08/09/2025,PM,9,,\n\
         5001,09/09/2025\n\
         5003,10/09/2025,AM,/,,\n",
    );
    let output = run_rollcall(
        &url,
        &[
            "import",
            "csv",
            &pupils,
            &marks,
            "--profile",
            "bromcom",
            "--school",
            laestab,
            "--school-name",
            "Example Academy",
            "--phase",
            "secondary",
            "--json",
        ],
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(EXIT_ROWS_REJECTED),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("7 of 13 pupils and marks were rejected"),
        "{}",
        stderr(&output)
    );
    let summary = stdout_json(&output);
    assert_eq!(counts(&summary), (6, 0, 7), "{summary}");
    assert_eq!(
        rejections(&summary),
        vec![
            (4, "upn".to_owned(), "invalid_upn".to_owned()),
            (3, "date".to_owned(), "invalid_date".to_owned()),
            (5, "mis_id".to_owned(), "unknown_mis_id".to_owned()),
            (6, "date".to_owned(), "not_on_roll".to_owned()),
            (7, "session".to_owned(), "unknown_session".to_owned()),
            (8, "code".to_owned(), "invalid_code".to_owned()),
            (9, "row".to_owned(), "short_row".to_owned()),
        ]
    );
    let by_line = |file: &str, line: u64| {
        summary["rejections"]
            .as_array()
            .expect("rejections")
            .iter()
            .find(|rejection| {
                rejection["line"] == line
                    && rejection["file"].as_str().expect("file").ends_with(file)
            })
            .cloned()
            .expect("rejection")
    };
    let wrong_date = by_line("marks.csv", 3);
    assert_eq!(wrong_date["value"], "2025-09-08");
    assert_eq!(wrong_date["column"], "Date");
    assert!(
        wrong_date["reason"]
            .as_str()
            .expect("reason")
            .contains("DD/MM/YYYY"),
        "{wrong_date}"
    );
    let unknown = by_line("marks.csv", 5);
    assert_eq!(unknown["value"], "7777");
    assert_eq!(unknown["column"], "Admission Number");
    let bad_check_letter = by_line("pupils.csv", 4);
    assert_eq!(bad_check_letter["value"], bad_upn(digit, 9));

    // The valid rows applied, around the rejected ones.
    let first = effective_code(&url, &upn(digit, 1), "2025-09-08", "AM").await;
    assert_eq!(first.as_deref(), Some("/"));
    let late_joiner = effective_code(&url, &upn(digit, 3), "2025-09-10", "AM").await;
    assert_eq!(late_joiner.as_deref(), Some("/"));
    assert_eq!(
        effective_code(&url, &upn(digit, 3), "2025-09-08", "AM").await,
        None
    );
    assert_eq!(
        effective_code(&url, &upn(digit, 1), "2025-09-08", "PM").await,
        None
    );

    // Without --json, the text summary lists the rejections with their lines. The marks
    // batches are those of the first run, so its results come back.
    let output = run_rollcall(
        &url,
        &[
            "import",
            "csv",
            &marks,
            "--profile",
            "bromcom",
            "--school",
            laestab,
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(EXIT_ROWS_REJECTED));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("marks.csv (marks, 9 rows): 3 applied, 0 unchanged, 6 rejected"),
        "{text}"
    );
    assert!(
        text.contains(
            "marks.csv line 5, column \"Admission Number\", mis_id \"7777\": unknown_mis_id:"
        ),
        "{text}"
    );
    running.stop().await.expect("server stops");
}

on_both_databases!(
    bad_rows_are_rejected_and_the_rest_apply,
    bad_rows_on_sqlite,
    bad_rows_on_postgres
);

/// Returns the weekdays from 8 September 2025 on, `count` of them.
fn weekdays(count: usize) -> Vec<NaiveDate> {
    let mut days = Vec::new();
    let mut day = date("2025-09-08");
    while days.len() < count {
        if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            days.push(day);
        }
        day += Duration::days(1);
    }
    days
}

async fn same_file_twice_stores_nothing_twice(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let url = running.url();
    let (laestab, digit) = ("9192006", 6);

    let mut pupils =
        "mis_id,upn,forename,surname,date_of_birth,sex,admission_date,year_group\n".to_owned();
    for serial in 1..=3 {
        pupils.push_str(&format!(
            "P{serial},{},Test,Pupil {serial},2013-05-01,F,2025-09-01,8\n",
            upn(digit, serial)
        ));
    }
    // 3 pupils, 2 sessions and 110 days: 660 marks and a row with an unknown MIS id, so two
    // batches of at most 500.
    let mut marks = "mis_id,date,session,code\n".to_owned();
    for day in weekdays(110) {
        for serial in 1..=3 {
            for session in ["AM", "PM"] {
                marks.push_str(&format!("P{serial},{day},{session},/\n"));
            }
        }
    }
    marks.push_str("P9,2025-09-08,AM,/\n");
    let pupils = write(work, "pupils.csv", &pupils);
    let marks = write(work, "marks.csv", &marks);
    let args = [
        "import",
        "csv",
        pupils.as_str(),
        marks.as_str(),
        "--profile",
        "rollcall",
        "--school",
        laestab,
        "--school-name",
        "Example Academy",
        "--phase",
        "secondary",
        "--json",
    ];

    let first_run = run_rollcall(&url, &args).await;
    assert_eq!(
        first_run.status.code(),
        Some(EXIT_ROWS_REJECTED),
        "{}",
        stderr(&first_run)
    );
    let first = stdout_json(&first_run);
    assert_eq!(counts(&first), (3 + 660, 0, 1), "{first}");
    assert_eq!(first["files"][1]["batches"], 2);
    assert_eq!(first["files"][1]["replayed_batches"], 0);

    let second_run = run_rollcall(&url, &args).await;
    assert_eq!(
        second_run.status.code(),
        Some(EXIT_ROWS_REJECTED),
        "{}",
        stderr(&second_run)
    );
    let second = stdout_json(&second_run);
    assert_eq!(counts(&second), counts(&first));
    assert_eq!(second["rejections"], first["rejections"]);
    assert_eq!(second["pupils_added"], first["pupils_added"]);
    assert_eq!(second["files"][0]["replayed_batches"], 1);
    assert_eq!(second["files"][1]["replayed_batches"], 2);

    // Another --by gives other keys, so the rows are checked afresh and come back unchanged.
    let mut other_person = args.to_vec();
    other_person.extend(["--by", "Attendance office"]);
    let third_run = run_rollcall(&url, &other_person).await;
    assert_eq!(third_run.status.code(), Some(EXIT_ROWS_REJECTED));
    let third = stdout_json(&third_run);
    assert_eq!(counts(&third), (0, 3 + 660, 1), "{third}");
    assert_eq!(third["files"][1]["replayed_batches"], 0);

    // One version per session: nothing was stored twice.
    for day in ["2025-09-08", "2025-10-01"] {
        let versions = history(&url, &upn(digit, 2), day, "PM").await;
        assert_eq!(versions.len(), 1, "{day}: {versions:?}");
    }
    running.stop().await.expect("server stops");
}

on_both_databases!(
    same_file_twice_stores_nothing_twice,
    same_file_twice_on_sqlite,
    same_file_twice_on_postgres
);

async fn dry_run_stores_nothing(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let url = running.url();
    let sample = sims_sample();
    let pupils = write(work, "pupils.csv", &sample.pupils);
    let marks = write(work, "marks.csv", &sample.marks);
    let school = [
        "--profile",
        "sims",
        "--school",
        sample.laestab,
        "--school-name",
        "Example Academy",
        "--phase",
        "secondary",
    ];

    // A dry run of a new school's pupils reports them as added, and creates nothing.
    let mut args = vec!["import", "csv", pupils.as_str(), "--dry-run", "--json"];
    args.extend(school);
    let output = run_rollcall(&url, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = stdout_json(&output);
    assert_eq!(summary["dry_run"], true);
    assert_eq!(counts(&summary), (3, 0, 0));
    assert_eq!(summary["pupils_added"], 3);
    let mut registers = RegistersServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let school_found = registers
        .get_school(GetSchoolRequest {
            laestab: sample.laestab.to_owned(),
        })
        .await;
    assert_eq!(school_found.expect_err("no school").code(), Code::NotFound);

    // With the pupils imported, a dry run of the marks reports them and stores none.
    let mut args = vec!["import", "csv", pupils.as_str()];
    args.extend(school);
    let output = run_rollcall(&url, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let before = history(&url, &upn(2, 1), "2025-09-08", "AM").await;
    assert!(before.is_empty());

    let mut args = vec!["import", "csv", marks.as_str(), "--dry-run"];
    args.extend(school);
    let output = run_rollcall(&url, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("Dry run: nothing was stored."), "{text}");
    assert!(
        text.contains("marks.csv (marks, 3 rows): 12 applied, 0 unchanged, 0 rejected"),
        "{text}"
    );
    let after = history(&url, &upn(2, 1), "2025-09-08", "AM").await;
    assert_eq!(after, before);

    // The real import then applies what the dry run reported.
    let mut args = vec!["import", "csv", marks.as_str(), "--json"];
    args.extend(school);
    let output = run_rollcall(&url, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(counts(&stdout_json(&output)), (12, 0, 0));
    assert_eq!(history(&url, &upn(2, 1), "2025-09-08", "AM").await.len(), 1);

    // A dry run after the import checks afresh: every mark is unchanged.
    let mut args = vec!["import", "csv", marks.as_str(), "--dry-run", "--json"];
    args.extend(school);
    let output = run_rollcall(&url, &args).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = stdout_json(&output);
    assert_eq!(counts(&summary), (0, 12, 0), "{summary}");
    assert_eq!(summary["files"][0]["replayed_batches"], 0);
    running.stop().await.expect("server stops");
}

on_both_databases!(
    dry_run_stores_nothing,
    dry_run_on_sqlite,
    dry_run_on_postgres
);

/// Returns a Common Transfer File from school 9192007 with two pupils and their marks for the
/// week from Monday 8 September 2025.
fn ctf_file() -> String {
    let pupil = |serial: u8, surname: &str, marks: &str| {
        format!(
            "<Pupil><UPN>{}</UPN><Surname>{surname}</Surname><Forename>Sam</Forename>\
             <DOB>2013-05-01</DOB><Gender>F</Gender>\
             <BasicDetails><NCyearActual>8</NCyearActual></BasicDetails>\
             <Attendance><YearData><Year>2025</Year><LEA>919</LEA><Estab>2007</Estab>\
             <AttendSessions><AttendanceStartDate>2025-09-08</AttendanceStartDate>\
             <AttendanceMarks>{marks}</AttendanceMarks></AttendSessions></YearData></Attendance>\
             </Pupil>",
            upn(7, serial)
        )
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CTfile><Header>\
         <DocumentName>Common Transfer File</DocumentName><CTFversion>25.0</CTFversion>\
         <DateTime>2025-09-12T16:00:00</DateTime><SourceSchool><LEA>919</LEA><Estab>2007</Estab>\
         <SchoolName>Example Academy</SchoolName><AcademicYear>2025</AcademicYear></SourceSchool>\
         </Header><CTFpupilData>{}{}</CTFpupilData></CTfile>",
        pupil(1, "Able", r"/\/\/\/\/\"),
        pupil(2, "Baker", r"/\NN/\/\L\")
    )
}

async fn ctf_dry_run_stores_nothing(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let url = running.url();
    let file = write(work, "example.xml", &ctf_file());
    let pupil = upn(7, 1);

    let history_args = [
        "marks",
        "history",
        "--upn",
        &pupil,
        "--date",
        "2025-09-08",
        "--session",
        "AM",
    ];
    let before = run_rollcall(&url, &history_args).await;

    let output = run_rollcall(&url, &["import", "ctf", &file, "--dry-run"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let dry = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(dry.contains("dry run, nothing stored"), "{dry}");
    assert!(
        dry.contains(
            "school 9192007, 2 pupils: 2 would be added and 0 updated; 20 marks would be recorded"
        ),
        "{dry}"
    );

    // `marks history` prints the same before and after the dry run.
    let after = run_rollcall(&url, &history_args).await;
    assert_eq!(after.status.code(), before.status.code());
    assert_eq!(after.stdout, before.stdout);
    assert_eq!(stderr(&after), stderr(&before));
    assert!(
        !before.status.success() || String::from_utf8_lossy(&before.stdout).contains("No mark"),
        "the pupil has a mark before any import: {}",
        String::from_utf8_lossy(&before.stdout)
    );

    // The real import records as many marks as the dry run reported.
    let output = run_rollcall(&url, &["import", "ctf", &file]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let real = String::from_utf8_lossy(&output.stdout).into_owned();
    let recorded = |text: &str, marker: &str| -> String {
        let start = text.find(marker).expect("counts in the output") + marker.len();
        text[start..]
            .split_whitespace()
            .next()
            .expect("a number")
            .to_owned()
    };
    assert_eq!(
        recorded(&dry, "updated; "),
        recorded(&real, "updated), "),
        "dry run: {dry}\nimport: {real}"
    );
    assert_eq!(history(&url, &pupil, "2025-09-08", "AM").await.len(), 1);

    // A dry run of a file already imported finds every mark unchanged, and changes nothing.
    let output = run_rollcall(&url, &["import", "ctf", &file, "--dry-run"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let again = String::from_utf8_lossy(&output.stdout);
    assert!(again.contains("dry run, nothing stored"), "{again}");
    assert!(
        again.contains("0 would be added and 0 updated; 0 marks would be recorded, 20 unchanged"),
        "{again}"
    );
    assert_eq!(history(&url, &pupil, "2025-09-08", "AM").await.len(), 1);
    running.stop().await.expect("server stops");
}

on_both_databases!(
    ctf_dry_run_stores_nothing,
    ctf_dry_run_on_sqlite,
    ctf_dry_run_on_postgres
);
