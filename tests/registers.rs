//! The registers service over gRPC on a real server: whole-or-nothing imports, idempotency,
//! the effective-mark rule, calendars, a change feed that resumes from a cursor across
//! restarts, and imports of many schools at once that keep the feed in order.

use std::path::Path;

use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    AbsenceReport, AmendMarkRequest, ApplyRetentionRequest, Calendar, CheckKind, Closure,
    ClosureKind, GetCalendarRequest, GetPupilRequest, GetSchoolRequest, GetSessionRegisterRequest,
    ImportHeader, ImportMarks, ImportPupil, ImportRegisterRequest, ImportRegisterResponse,
    LessonMark, ListAbsenceReportsRequest, ListMarkVersionsRequest, ListMarksRequest,
    ListMissingMarksRequest, ListTruancyFlagsRequest, ListUnresolvedMarksRequest, Mark, Pupil,
    RecordAbsenceReportRequest, RecordLeavingRequest, RecordLessonCheckRequest, RegisterTimes,
    Registration, ReportChannel, School, SetCalendarRequest, Term, WatchMarksRequest,
    import_register_request::Item,
};
use rollcall_api::types::v1::{MarkSource, Phase, Session};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use tonic::transport::Channel;

fn upn(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, serial]).to_string()
}

async fn start(work: &Path, database_url: Option<&str>) -> RunningServer {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    server::start(config).await.expect("server starts")
}

async fn client(running: &RunningServer) -> RegistersServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    RegistersServiceClient::new(channel)
}

fn mark(upn: &str, date: &str, code: &str, recorded_at: Option<i64>) -> Mark {
    Mark {
        upn: upn.to_owned(),
        date: date.to_owned(),
        session: Session::Am as i32,
        code: code.to_owned(),
        recorded_at: recorded_at.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        ..Mark::default()
    }
}

/// An import stream: the header, one pupil admitted on 1 September 2025, then the marks.
fn import(request_id: &str, pupils: &[String], marks: Vec<Mark>) -> Vec<ImportRegisterRequest> {
    import_at("9192001", request_id, pupils, marks)
}

/// Builds an import stream for the school `laestab`.
fn import_at(
    laestab: &str,
    request_id: &str,
    pupils: &[String],
    marks: Vec<Mark>,
) -> Vec<ImportRegisterRequest> {
    let header = ImportHeader {
        request_id: request_id.to_owned(),
        school: Some(School {
            laestab: laestab.into(),
            name: "Test Academy".into(),
            phase: Phase::Secondary as i32,
            last_mark_date: String::new(),
        }),
        source: MarkSource::MisSync as i32,
        source_name: "test".into(),
        recorded_by: "test".into(),
        ..Default::default()
    };
    let mut messages = vec![ImportRegisterRequest {
        item: Some(Item::Header(header)),
    }];
    for upn in pupils {
        messages.push(ImportRegisterRequest {
            item: Some(Item::Pupil(ImportPupil {
                pupil: Some(Pupil {
                    upn: upn.clone(),
                    forename: "Sam".into(),
                    surname: "Able".into(),
                    date_of_birth: "2013-05-01".into(),
                    sex: "F".into(),
                    enrolments: Vec::new(),
                }),
                admission_date: "2025-09-01".into(),
                year_group: "8".into(),
                registration: Registration::Unspecified as i32,
                class_name: "8B".into(),
                ..ImportPupil::default()
            })),
        });
    }
    messages.push(ImportRegisterRequest {
        item: Some(Item::Marks(ImportMarks { marks })),
    });
    messages
}

/// Lists the effective marks of the first pupil at the test school.
async fn first_pupil_marks(registers: &mut RegistersServiceClient<Channel>) -> Vec<Mark> {
    registers
        .list_marks(ListMarksRequest {
            laestab: "9192001".into(),
            upn: upn(1),
            ..ListMarksRequest::default()
        })
        .await
        .expect("list")
        .into_inner()
        .marks
}

async fn send(
    client: &mut RegistersServiceClient<Channel>,
    messages: Vec<ImportRegisterRequest>,
) -> Result<ImportRegisterResponse, tonic::Status> {
    client
        .import_register(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

async fn rejected_import_stores_nothing(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;

    // The second mark is for a pupil the import never sent.
    let marks = vec![
        mark(&upn(1), "2025-09-01", "/", None),
        mark(&upn(2), "2025-09-01", "/", None),
    ];
    let error = send(&mut registers, import("bad", &[upn(1)], marks))
        .await
        .expect_err("unknown pupil");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("marks[1].upn"),
        "{}",
        error.message()
    );
    assert!(error.message().contains(&upn(2)), "{}", error.message());

    let school = registers
        .get_school(GetSchoolRequest {
            laestab: "9192001".into(),
        })
        .await
        .expect_err("nothing from the import was stored");
    assert_eq!(school.code(), tonic::Code::NotFound);

    // A withdrawn code on a 2025 date is rejected with the code to use instead.
    let marks = vec![mark(&upn(1), "2025-09-01", "H", None)];
    let error = send(&mut registers, import("withdrawn", &[upn(1)], marks))
        .await
        .expect_err("H was withdrawn");
    assert!(
        error.message().contains("marks[0].code"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("otherwise G"),
        "{}",
        error.message()
    );

    running.stop().await.expect("server stops");
}

async fn effective_mark_and_idempotency(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let nine = 1_756_717_200; // 2025-09-01 09:00 UTC
    let noon = nine + 3 * 3600;

    let first = send(
        &mut registers,
        import(
            "one",
            &[upn(1)],
            vec![mark(&upn(1), "2025-09-01", "N", Some(noon))],
        ),
    )
    .await
    .expect("import");
    assert_eq!(first.marks_recorded, 1);
    let again = send(
        &mut registers,
        import(
            "one",
            &[upn(1)],
            vec![mark(&upn(1), "2025-09-01", "I", Some(noon))],
        ),
    )
    .await
    .expect("same request id");
    assert!(again.already_applied);
    assert_eq!(again.marks_recorded, 0);

    // A version taken earlier than the effective one is kept but does not take effect.
    let older = send(
        &mut registers,
        import(
            "two",
            &[upn(1)],
            vec![mark(&upn(1), "2025-09-01", "O", Some(nine))],
        ),
    )
    .await
    .expect("import");
    assert_eq!(older.marks_recorded, 1);
    let unchanged = send(
        &mut registers,
        import(
            "three",
            &[upn(1)],
            vec![mark(&upn(1), "2025-09-01", "N", Some(noon))],
        ),
    )
    .await
    .expect("import");
    assert_eq!(unchanged.marks_unchanged, 1);

    let marks = first_pupil_marks(&mut registers).await;
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].code, "N", "the version taken latest is effective");

    let mut feed = registers
        .watch_marks(WatchMarksRequest {
            cursor: 0,
            laestab: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first_version = feed.message().await.expect("message").expect("first");
    let second_version = feed.message().await.expect("message").expect("second");
    assert!(first_version.effective);
    assert!(
        !second_version.effective,
        "the older version did not take effect"
    );

    running.stop().await.expect("server stops");
}

/// Comments with quotes, commas, line breaks, backslashes and accents, an absent arrival time
/// and a time taken to the nanosecond come back from storage as they were sent, the time to
/// the microsecond on PostgreSQL, which keeps no finer.
async fn stored_fields_round_trip(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let nine = 1_756_717_200; // 2025-09-01 09:00 UTC
    let awkward = "Bus late, \"again\"\nsecond line\r\tof Père's note; \\N and \\.";

    let late = Mark {
        code: "L".into(),
        minutes_late: 12,
        reason: awkward.into(),
        recorded_at: Some(prost_types::Timestamp {
            seconds: nine,
            nanos: 123_456_789,
        }),
        ..mark(&upn(1), "2025-09-01", "L", None)
    };
    let arrived = Mark {
        session: Session::Pm as i32,
        arrived_at: Some(prost_types::Timestamp {
            seconds: nine + 4 * 3600,
            nanos: 0,
        }),
        ..mark(&upn(1), "2025-09-01", "B", Some(nine + 4 * 3600))
    };
    let null_text = Mark {
        reason: "\\N".into(),
        ..mark(&upn(1), "2025-09-02", "C", Some(nine + 86_400))
    };
    let response = send(
        &mut registers,
        import("awkward", &[upn(1)], vec![late, arrived, null_text]),
    )
    .await
    .expect("import");
    assert_eq!(response.marks_recorded, 3);
    let taken_nanos = if database_url.is_some() {
        123_456_000
    } else {
        123_456_789
    };

    let marks = first_pupil_marks(&mut registers).await;
    // Date, session, code, minutes late, reason, nanoseconds of the time taken, arrival.
    type Stored<'a> = (
        &'a str,
        i32,
        &'a str,
        i32,
        &'a str,
        Option<i32>,
        Option<i64>,
    );
    let found: Vec<Stored<'_>> = marks
        .iter()
        .map(|mark| {
            (
                mark.date.as_str(),
                mark.session,
                mark.code.as_str(),
                mark.minutes_late,
                mark.reason.as_str(),
                mark.recorded_at.as_ref().map(|at| at.nanos),
                mark.arrived_at.as_ref().map(|at| at.seconds),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "2025-09-01",
                Session::Am as i32,
                "L",
                12,
                awkward,
                Some(taken_nanos),
                None
            ),
            (
                "2025-09-01",
                Session::Pm as i32,
                "B",
                0,
                "Imported from test",
                Some(0),
                Some(nine + 4 * 3600)
            ),
            (
                "2025-09-02",
                Session::Am as i32,
                "C",
                0,
                "\\N",
                Some(0),
                None
            ),
        ],
        "each field as sent"
    );
    assert!(
        marks
            .iter()
            .all(|mark| mark.recorded_by_position.is_empty()),
        "an import records no position"
    );

    // In one import, a later version replaces an effective mark and a new session gets its
    // first.
    let replaced = send(
        &mut registers,
        import(
            "later",
            &[upn(1)],
            vec![
                mark(&upn(1), "2025-09-02", "M", Some(nine + 2 * 86_400)),
                mark(&upn(1), "2025-09-03", "M", Some(nine + 3 * 86_400)),
            ],
        ),
    )
    .await
    .expect("import");
    assert_eq!(replaced.marks_recorded, 2);
    let codes: Vec<(String, String)> = first_pupil_marks(&mut registers)
        .await
        .into_iter()
        .filter(|mark| mark.session == Session::Am as i32)
        .map(|mark| (mark.date, mark.code))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("2025-09-01".to_owned(), "L".to_owned()),
            ("2025-09-02".to_owned(), "M".to_owned()),
            ("2025-09-03".to_owned(), "M".to_owned()),
        ]
    );

    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn stored_fields_round_trip_on_sqlite() {
    stored_fields_round_trip(None).await;
}

#[tokio::test]
async fn stored_fields_round_trip_on_postgres() {
    stored_fields_round_trip(Some(&postgres_url().await)).await;
}

/// The registers' database, opened beside a running server.
enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Database {
    async fn open(work: &Path, database_url: Option<&str>) -> Self {
        match database_url {
            None => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(work.join("data").join("registers.db"))
                    .foreign_keys(true);
                Self::Sqlite(
                    sqlx::SqlitePool::connect_with(options)
                        .await
                        .expect("SQLite"),
                )
            }
            Some(url) => {
                let options: sqlx::postgres::PgConnectOptions = url.parse().expect("URL");
                let options = options.options([("search_path", "registers")]);
                Self::Postgres(
                    sqlx::PgPool::connect_with(options)
                        .await
                        .expect("PostgreSQL"),
                )
            }
        }
    }

    async fn execute(&self, sql: &'static str) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(pool) => sqlx::query(sql).execute(pool).await?.rows_affected(),
            Self::Postgres(pool) => sqlx::query(sql).execute(pool).await?.rows_affected(),
        })
    }

    async fn count(&self, sql: &'static str) -> i64 {
        match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .expect(sql)
    }
}

/// Writes that would leave a stored mark naming a school, pupil, absence report or version
/// that is not stored, each with the value PostgreSQL's error must name.
const DANGLING_WRITES: [(&str, &str); 5] = [
    (
        "INSERT INTO marks (sequence, laestab, upn, session_date, session, code, minutes_late, \
         source, source_name, reason, recorded_by, recorded_by_position, recorded_at, \
         received_at, effective_when_stored) VALUES (900001, '9192001', 'Z999999999999', \
         '2025-09-02', 'AM', '/', 0, 'mis_sync', 'test', '', 'test', '', \
         '2025-09-02T09:00:00Z', '2025-09-02T09:00:00Z', TRUE)",
        "Z999999999999",
    ),
    (
        "INSERT INTO marks (sequence, laestab, upn, session_date, session, code, minutes_late, \
         source, source_name, reason, recorded_by, recorded_by_position, recorded_at, \
         received_at, effective_when_stored) VALUES (900001, '9999999', \
         (SELECT upn FROM pupils LIMIT 1), '2025-09-02', 'AM', '/', 0, 'mis_sync', 'test', '', \
         'test', '', '2025-09-02T09:00:00Z', '2025-09-02T09:00:00Z', TRUE)",
        "9999999",
    ),
    (
        "INSERT INTO marks (sequence, laestab, upn, session_date, session, code, minutes_late, \
         source, source_name, reason, recorded_by, recorded_by_position, recorded_at, \
         received_at, effective_when_stored, absence_report_id) VALUES (900001, '9192001', \
         (SELECT upn FROM pupils LIMIT 1), '2025-09-02', 'AM', 'I', 0, 'mis_sync', 'test', '', \
         'test', '', '2025-09-02T09:00:00Z', '2025-09-02T09:00:00Z', TRUE, 'no-such-report')",
        "no-such-report",
    ),
    (
        "INSERT INTO effective_marks (laestab, upn, session_date, session, sequence, \
         recorded_at) VALUES ('9192001', (SELECT upn FROM pupils LIMIT 1), '2025-09-02', 'AM', \
         900002, '2025-09-02T09:00:00Z')",
        "900002",
    ),
    ("UPDATE marks SET upn = 'Z999999999998'", "Z999999999998"),
];

/// Checks that the database itself rejects marks whose school, pupil, absence report or
/// version is not stored, and rejects deleting those while marks still name them.
async fn dangling_references_rejected(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let marks = vec![mark(&upn(1), "2025-09-01", "/", None)];
    send(&mut registers, import("references", &[upn(1)], marks))
        .await
        .expect("import");
    let database = Database::open(work.path(), database_url).await;

    let rejected = |sql: &str, named: &str, result: Result<u64, sqlx::Error>| {
        let error = result.expect_err(sql);
        let database_error = error.as_database_error().expect("a database error");
        assert!(
            database_error.is_foreign_key_violation(),
            "{sql}: {database_error}"
        );
        // SQLite's message names no value.
        if database_url.is_some() {
            assert!(
                database_error.message().contains(named),
                "{sql}: {database_error} should name {named}"
            );
        }
    };
    for (sql, named) in DANGLING_WRITES {
        rejected(sql, named, database.execute(sql).await);
    }

    // The school and pupil are also named by other tables, which are cleared first so that
    // only the marks hold them.
    for sql in ["DELETE FROM enrolments", "DELETE FROM imports"] {
        database.execute(sql).await.expect(sql);
    }
    let parents = [
        ("DELETE FROM pupils", upn(1)),
        ("DELETE FROM schools", "9192001".to_owned()),
    ];
    for (sql, named) in parents {
        rejected(sql, &named, database.execute(sql).await);
    }
    let version = database.count("SELECT MAX(sequence) FROM marks").await;
    rejected(
        "DELETE FROM marks",
        &version.to_string(),
        database.execute("DELETE FROM marks").await,
    );

    assert_eq!(database.count("SELECT COUNT(*) FROM marks").await, 1);
    assert_eq!(
        database.count("SELECT COUNT(*) FROM effective_marks").await,
        1
    );
    assert_eq!(database.count("SELECT COUNT(*) FROM pupils").await, 1);
    assert_eq!(database.count("SELECT COUNT(*) FROM schools").await, 1);
}

#[tokio::test]
async fn dangling_references_rejected_on_sqlite() {
    dangling_references_rejected(None).await;
}

#[tokio::test]
async fn dangling_references_rejected_on_postgres() {
    dangling_references_rejected(Some(&postgres_url().await)).await;
}

async fn feed_resumes_across_restart(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let dates = [
        "2025-09-01",
        "2025-09-02",
        "2025-09-03",
        "2025-09-04",
        "2025-09-05",
    ];
    let pupils = [upn(1), upn(2)];
    let marks = pupils
        .iter()
        .flat_map(|upn| dates.iter().map(move |date| mark(upn, date, "/", None)))
        .collect();
    send(&mut registers, import("week", &pupils, marks))
        .await
        .expect("import");

    let mut feed = registers
        .watch_marks(WatchMarksRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let message = feed.message().await.expect("message").expect("a version");
        seen.push(message.cursor);
    }
    drop(feed);
    running.stop().await.expect("server stops");

    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let mut feed = registers
        .watch_marks(WatchMarksRequest {
            cursor: *seen.last().expect("four seen"),
            laestab: "9192001".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    for _ in 0..6 {
        let message = feed.message().await.expect("message").expect("a version");
        seen.push(message.cursor);
    }
    let expected: Vec<i64> = (1..=10).collect();
    assert_eq!(seen, expected, "no gap and no repeat across the restart");
    running.stop().await.expect("server stops");
}

async fn postgres_url() -> String {
    let server = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests");
    server.create_database().await.expect("database")
}

#[tokio::test]
async fn rejected_import_on_sqlite() {
    rejected_import_stores_nothing(None).await;
}

#[tokio::test]
async fn rejected_import_on_postgres() {
    rejected_import_stores_nothing(Some(&postgres_url().await)).await;
}

#[tokio::test]
async fn effective_mark_on_sqlite() {
    effective_mark_and_idempotency(None).await;
}

#[tokio::test]
async fn effective_mark_on_postgres() {
    effective_mark_and_idempotency(Some(&postgres_url().await)).await;
}

#[tokio::test]
async fn feed_resumes_on_sqlite() {
    feed_resumes_across_restart(None).await;
}

#[tokio::test]
async fn feed_resumes_on_postgres() {
    feed_resumes_across_restart(Some(&postgres_url().await)).await;
}

fn autumn_calendar(closures: Vec<Closure>, am_closes: &str) -> Calendar {
    Calendar {
        laestab: "9192001".into(),
        time_zone: "Europe/London".into(),
        am: Some(RegisterTimes {
            opens: "08:40".into(),
            closes: am_closes.into(),
        }),
        pm: Some(RegisterTimes {
            opens: "13:15".into(),
            closes: "13:30".into(),
        }),
        terms: vec![Term {
            name: "Autumn 2025".into(),
            first_day: "2025-09-01".into(),
            last_day: "2025-12-19".into(),
        }],
        closures,
    }
}

fn set_calendar(calendar: Calendar) -> SetCalendarRequest {
    SetCalendarRequest {
        calendar: Some(calendar),
        changed_by: "J Smith".into(),
        changed_by_position: "Data manager".into(),
        ..Default::default()
    }
}

async fn calendar_checks_marks_and_closes_days(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let week = [
        "2025-09-01",
        "2025-09-02",
        "2025-09-03",
        "2025-09-04",
        "2025-09-05",
    ];
    let marks = week
        .iter()
        .map(|date| mark(&upn(1), date, "/", None))
        .collect();
    send(&mut registers, import("week", &[upn(1)], marks))
        .await
        .expect("import");

    // A register open for 45 minutes is rejected and nothing is stored.
    let error = registers
        .set_calendar(set_calendar(autumn_calendar(Vec::new(), "09:25")))
        .await
        .expect_err("45 minutes");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("at most 30 minutes"),
        "{}",
        error.message()
    );
    let missing = registers
        .get_calendar(GetCalendarRequest {
            laestab: "9192001".into(),
        })
        .await
        .expect_err("no calendar stored");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // A term starting on Wednesday would leave Monday's and Tuesday's marks outside it.
    let mut late_start = autumn_calendar(Vec::new(), "09:00");
    late_start.terms[0].first_day = "2025-09-03".into();
    let error = registers
        .set_calendar(set_calendar(late_start))
        .await
        .expect_err("marks outside the term");
    assert!(
        error.message().contains("2 attendance marks fall outside"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("2025-09-01 AM"),
        "{}",
        error.message()
    );

    registers
        .set_calendar(set_calendar(autumn_calendar(Vec::new(), "09:00")))
        .await
        .expect("valid calendar");

    // Marks at a weekend, or a present mark on a planned closure, no longer fit.
    let weekend = vec![mark(&upn(1), "2025-09-06", "/", None)];
    let error = send(&mut registers, import("weekend", &[upn(1)], weekend))
        .await
        .expect_err("Saturday");
    assert!(
        error.message().contains("marks[0].date"),
        "{}",
        error.message()
    );
    assert!(error.message().contains("weekend"), "{}", error.message());

    // Friday becomes an INSET day: its mark gets a # version and the old one is kept.
    let inset = Closure {
        date: "2025-09-05".into(),
        session: Session::Unspecified as i32,
        kind: ClosureKind::Planned as i32,
        reason: "INSET day".into(),
    };
    let changed = registers
        .set_calendar(set_calendar(autumn_calendar(vec![inset], "09:00")))
        .await
        .expect("valid calendar")
        .into_inner();
    assert_eq!(changed.marks_closed, 1, "only the AM mark existed");
    let stored = registers
        .get_calendar(GetCalendarRequest {
            laestab: "9192001".into(),
        })
        .await
        .expect("calendar")
        .into_inner()
        .calendar
        .expect("calendar");
    assert_eq!(stored.closures.len(), 1);
    assert_eq!(stored.am.map(|am| am.closes), Some("09:00".to_owned()));

    let history = registers
        .list_mark_versions(ListMarkVersionsRequest {
            upn: upn(1),
            laestab: String::new(),
            date: "2025-09-05".into(),
            session: Session::Am as i32,
        })
        .await
        .expect("history")
        .into_inner()
        .versions;
    let codes: Vec<(String, bool)> = history
        .iter()
        .map(|version| {
            (
                version.mark.clone().unwrap_or_default().code,
                version.effective,
            )
        })
        .collect();
    assert_eq!(codes, vec![("/".to_owned(), false), ("#".to_owned(), true)]);

    // Only morning marks were sent, so after the afternoon register closes on Wednesday 3
    // September (13:30 in London, 12:30 UTC) the afternoon is missing.
    let missing = registers
        .list_missing_marks(ListMissingMarksRequest {
            laestab: "9192001".into(),
            date: "2025-09-03".into(),
            as_of: Some(prost_types::Timestamp {
                seconds: 1_756_902_600,
                nanos: 0,
            }), // 12:30 UTC
            ..ListMissingMarksRequest::default()
        })
        .await
        .expect("missing marks")
        .into_inner()
        .missing;
    assert!(
        missing.is_empty(),
        "the register closes at 13:30 London time: {missing:?}"
    );
    let missing = registers
        .list_missing_marks(ListMissingMarksRequest {
            laestab: "9192001".into(),
            date: "2025-09-03".into(),
            as_of: Some(prost_types::Timestamp {
                seconds: 1_756_902_600 + 1_800,
                nanos: 0,
            }),
            ..ListMissingMarksRequest::default()
        })
        .await
        .expect("missing marks")
        .into_inner()
        .missing;
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].upn, upn(1));
    assert_eq!(missing[0].session, Session::Pm as i32);

    // An N on Monday 8 September is unresolved after more than five school days.
    let n_mark = vec![mark(&upn(1), "2025-09-08", "N", None)];
    send(&mut registers, import("n", &[upn(1)], n_mark))
        .await
        .expect("import");
    let unresolved = |as_of: &str| ListUnresolvedMarksRequest {
        laestab: "9192001".into(),
        as_of: as_of.into(),
        ..ListUnresolvedMarksRequest::default()
    };
    let five_days = registers
        .list_unresolved_marks(unresolved("2025-09-15"))
        .await
        .expect("unresolved")
        .into_inner()
        .marks;
    assert!(five_days.is_empty(), "{five_days:?}");
    let six_days = registers
        .list_unresolved_marks(unresolved("2025-09-16"))
        .await
        .expect("unresolved")
        .into_inner()
        .marks;
    assert_eq!(six_days.len(), 1);
    assert_eq!(six_days[0].school_days_old, 6);

    let present = vec![mark(&upn(1), "2025-09-05", "L", None)];
    let error = send(&mut registers, import("closed", &[upn(1)], present))
        .await
        .expect_err("planned closure");
    assert!(
        error.message().contains("planned closure"),
        "{}",
        error.message()
    );

    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn calendar_on_sqlite() {
    calendar_checks_marks_and_closes_days(None).await;
}

#[tokio::test]
async fn calendar_on_postgres() {
    calendar_checks_marks_and_closes_days(Some(&postgres_url().await)).await;
}

fn report(first: &str, last: &str) -> AbsenceReport {
    AbsenceReport {
        upn: upn(1),
        channel: ReportChannel::App as i32,
        reported_by: "Parent One".into(),
        relationship: "Mother".into(),
        reason: "Sickness".into(),
        first_date: first.into(),
        first_session: Session::Am as i32,
        last_date: last.into(),
        last_session: Session::Pm as i32,
        ..AbsenceReport::default()
    }
}

fn amend_with_report(date: &str, report_id: &str) -> AmendMarkRequest {
    AmendMarkRequest {
        upn: upn(1),
        date: date.into(),
        session: Session::Am as i32,
        code: "I".into(),
        reason: "Illness reported by parent".into(),
        recorded_by: "J Smith".into(),
        recorded_by_position: "Attendance officer".into(),
        absence_report_id: report_id.into(),
        ..AmendMarkRequest::default()
    }
}

async fn absence_reports_link_decisions(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let week = [
        "2025-09-01",
        "2025-09-02",
        "2025-09-03",
        "2025-09-04",
        "2025-09-05",
    ];
    let marks = week
        .iter()
        .map(|date| mark(&upn(1), date, "N", None))
        .collect();
    send(&mut registers, import("week", &[upn(1)], marks))
        .await
        .expect("import");

    let backwards = registers
        .record_absence_report(RecordAbsenceReportRequest {
            request_id: "call-0".into(),
            report: Some(report("2025-09-03", "2025-09-02")),
        })
        .await
        .expect_err("last before first");
    assert!(
        backwards.message().contains("report.last_date"),
        "{}",
        backwards.message()
    );

    let record = RecordAbsenceReportRequest {
        request_id: "call-1".into(),
        report: Some(report("2025-09-02", "2025-09-03")),
    };
    let first = registers
        .record_absence_report(record.clone())
        .await
        .expect("report")
        .into_inner()
        .report
        .expect("report");
    let again = registers
        .record_absence_report(record)
        .await
        .expect("same request id")
        .into_inner()
        .report
        .expect("report");
    assert_eq!(first.id, again.id);
    assert_eq!(first.laestab, "9192001");

    let listed = registers
        .list_absence_reports(ListAbsenceReportsRequest {
            laestab: "9192001".into(),
            upn: upn(1),
            ..ListAbsenceReportsRequest::default()
        })
        .await
        .expect("list")
        .into_inner()
        .reports;
    assert_eq!(listed.len(), 1);

    // The report never changed a mark on its own.
    let versions = |date: &str| ListMarkVersionsRequest {
        upn: upn(1),
        laestab: String::new(),
        date: date.into(),
        session: Session::Am as i32,
    };
    let before = registers
        .list_mark_versions(versions("2025-09-02"))
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(before.len(), 1);

    let decided = registers
        .amend_mark(amend_with_report("2025-09-02", &first.id))
        .await
        .expect("decision")
        .into_inner()
        .mark
        .expect("mark");
    assert_eq!(decided.code, "I");
    assert_eq!(decided.absence_report_id, first.id);

    let outside = registers
        .amend_mark(amend_with_report("2025-09-05", &first.id))
        .await
        .expect_err("the report does not cover Friday");
    assert!(
        outside.message().contains("absence_report_id"),
        "{}",
        outside.message()
    );
    let friday = registers
        .list_mark_versions(versions("2025-09-05"))
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(friday.len(), 1, "the rejected amendment stored nothing");

    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn absence_reports_on_sqlite() {
    absence_reports_link_decisions(None).await;
}

#[tokio::test]
async fn absence_reports_on_postgres() {
    absence_reports_link_decisions(Some(&postgres_url().await)).await;
}

async fn lesson_checks_flag_truancy(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    // Pupil 1 is present at registration; pupil 2 is out at a medical appointment.
    let marks = vec![
        mark(&upn(1), "2025-09-02", "/", None),
        mark(&upn(2), "2025-09-02", "M", None),
    ];
    send(&mut registers, import("tuesday", &[upn(1), upn(2)], marks))
        .await
        .expect("import");

    let check = |request_id: &str, pupils: &[String]| RecordLessonCheckRequest {
        request_id: request_id.into(),
        laestab: "9192001".into(),
        date: "2025-09-02".into(),
        session: Session::Am as i32,
        kind: CheckKind::Lesson as i32,
        label: "Year 8 maths, period 2".into(),
        taken_at: None,
        recorded_by: "A Teacher".into(),
        recorded_by_position: "Maths teacher".into(),
        marks: pupils
            .iter()
            .map(|upn| LessonMark {
                upn: upn.clone(),
                present: false,
            })
            .collect(),
    };

    let not_on_roll = registers
        .record_lesson_check(check("period-2", &[upn(1), upn(3)]))
        .await
        .expect_err("pupil 3 is not on roll");
    assert!(
        not_on_roll.message().contains("marks[1].upn"),
        "{}",
        not_on_roll.message()
    );

    let recorded = registers
        .record_lesson_check(check("period-2", &[upn(1), upn(2)]))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(
        recorded.flags.len(),
        1,
        "only the pupil present at registration"
    );
    let flag = &recorded.flags[0];
    assert_eq!(flag.upn, upn(1));
    assert_eq!(flag.register_code, "/");
    assert_eq!(
        flag.for_roles,
        vec!["head_of_year", "senior_attendance_lead"]
    );

    let again = registers
        .record_lesson_check(check("period-2", &[upn(1), upn(2)]))
        .await
        .expect("same request id")
        .into_inner();
    assert!(again.already_recorded);
    assert_eq!(again.flags.len(), 1);

    let listed = registers
        .list_truancy_flags(ListTruancyFlagsRequest {
            laestab: "9192001".into(),
            ..ListTruancyFlagsRequest::default()
        })
        .await
        .expect("flags")
        .into_inner()
        .flags;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, flag.id);

    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn lesson_checks_on_sqlite() {
    lesson_checks_flag_truancy(None).await;
}

#[tokio::test]
async fn lesson_checks_on_postgres() {
    lesson_checks_flag_truancy(Some(&postgres_url().await)).await;
}

async fn roll_and_retention(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let mut marks: Vec<Mark> = ["2025-09-01", "2025-09-02", "2025-09-03", "2025-09-04"]
        .iter()
        .map(|date| mark(&upn(1), date, "/", None))
        .collect();
    marks.extend(
        ["2025-09-01", "2025-09-02", "2025-09-03"]
            .iter()
            .map(|date| mark(&upn(2), date, "/", None)),
    );
    send(&mut registers, import("week", &[upn(1), upn(2)], marks))
        .await
        .expect("import");

    // Pupil 1 becomes the main registration of a dual registration.
    let mut dual = import("dual", &[upn(1)], Vec::new());
    if let Some(ImportRegisterRequest {
        item: Some(Item::Pupil(pupil)),
    }) = dual.get_mut(1)
    {
        pupil.registration = Registration::Main as i32;
    }
    let updated = send(&mut registers, dual).await.expect("import");
    assert_eq!(updated.pupils_updated, 1);
    let enrolments = registers
        .get_pupil(GetPupilRequest { upn: upn(1) })
        .await
        .expect("pupil")
        .into_inner()
        .pupil
        .expect("pupil")
        .enrolments;
    assert_eq!(enrolments[0].registration, Registration::Main as i32);

    let leaving = |date: &str| RecordLeavingRequest {
        upn: upn(2),
        laestab: "9192001".into(),
        leaving_date: date.into(),
        reason: "Registered at another school".into(),
        recorded_by: "J Smith".into(),
    };
    let too_early = registers
        .record_leaving(leaving("2025-09-02"))
        .await
        .expect_err("a mark on 3 September comes after");
    assert!(
        too_early.message().contains("1 marks after 2025-09-02"),
        "{}",
        too_early.message()
    );
    let left = registers
        .record_leaving(leaving("2025-09-03"))
        .await
        .expect("leaving")
        .into_inner()
        .enrolment
        .expect("enrolment");
    assert_eq!(left.leaving_date, "2025-09-03");

    let register = |date: &str| GetSessionRegisterRequest {
        laestab: "9192001".into(),
        date: date.into(),
        session: Session::Am as i32,
        year_group: String::new(),
        class_name: String::new(),
    };
    let other_class = GetSessionRegisterRequest {
        class_name: "8C".into(),
        ..register("2025-09-03")
    };
    let empty = registers
        .get_session_register(other_class)
        .await
        .expect("register")
        .into_inner()
        .entries;
    assert!(empty.is_empty(), "every pupil is in 8B: {empty:?}");
    let wednesday = registers
        .get_session_register(register("2025-09-03"))
        .await
        .expect("register")
        .into_inner()
        .entries;
    assert_eq!(wednesday.len(), 2);
    let thursday = registers
        .get_session_register(register("2025-09-04"))
        .await
        .expect("register")
        .into_inner()
        .entries;
    assert_eq!(
        thursday.len(),
        1,
        "the leaver is not on Thursday's register"
    );
    assert_eq!(thursday[0].upn, upn(1));
    assert_eq!(thursday[0].class_name, "8B");
    assert_eq!(
        thursday[0].mark.as_ref().map(|mark| mark.code.as_str()),
        Some("/")
    );

    let after = send(
        &mut registers,
        import("late", &[], vec![mark(&upn(2), "2025-09-04", "/", None)]),
    )
    .await
    .expect_err("not on roll after leaving");
    assert!(
        after.message().contains("not on roll"),
        "{}",
        after.message()
    );

    // Six years after 2 September 2025, Monday 1 September's marks may go.
    let dry = registers
        .apply_retention(ApplyRetentionRequest {
            as_of: "2031-09-02".into(),
            dry_run: true,
        })
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(dry.cutoff, "2025-09-02");
    assert_eq!(dry.removed.len(), 1);
    assert_eq!(dry.removed[0].mark_versions, 2);
    let versions = |date: &str| ListMarkVersionsRequest {
        upn: upn(1),
        laestab: String::new(),
        date: date.into(),
        session: Session::Am as i32,
    };
    let kept = registers
        .list_mark_versions(versions("2025-09-01"))
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(kept.len(), 1, "a dry run removes nothing");

    registers
        .apply_retention(ApplyRetentionRequest {
            as_of: "2031-09-02".into(),
            dry_run: false,
        })
        .await
        .expect("retention");
    let gone = registers
        .list_mark_versions(versions("2025-09-01"))
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert!(gone.is_empty());
    let tuesday = registers
        .list_mark_versions(versions("2025-09-02"))
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(tuesday.len(), 1, "younger than six years: kept");

    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn roll_and_retention_on_sqlite() {
    roll_and_retention(None).await;
}

#[tokio::test]
async fn roll_and_retention_on_postgres() {
    roll_and_retention(Some(&postgres_url().await)).await;
}

/// Schools importing at once in the concurrency test, each with [`PUPILS_EACH`] pupils. With
/// [`DAYS`], the requests in flight stay under the default `--max-concurrent-requests` of 64.
const SCHOOLS: u8 = 10;
const PUPILS_EACH: u8 = 5;
/// School days of marks each school sends, one request a day.
const DAYS: u32 = 5;

/// Imports of marks alone at many schools run at once, beside an import with pupils, which
/// runs alone. A consumer that follows the feed from the start receives every version exactly
/// once, at positions 1, 2, 3 and so on: no position commits after a later one.
async fn schools_import_at_once(database_url: Option<&str>) {
    use std::collections::BTreeSet;

    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let mut registers = client(&running).await;
    let school = |index: u8| format!("91930{:02}", index + 1);
    let pupil = |index: u8, serial: u8| {
        Upn::from_digits([9, 1, 9, 3, 0, 0, 1, 2, 5, index / 10, index % 10, serial]).to_string()
    };
    for index in 0..=SCHOOLS {
        let pupils: Vec<String> = (0..PUPILS_EACH)
            .map(|serial| pupil(index, serial))
            .collect();
        send(
            &mut registers,
            import_at(
                &school(index),
                &format!("roll-{index}"),
                &pupils,
                Vec::new(),
            ),
        )
        .await
        .expect("pupils imported");
    }
    let head = registers
        .get_school(GetSchoolRequest { laestab: school(0) })
        .await
        .expect("school")
        .into_inner()
        .feed_cursor;
    assert_eq!(head, 0, "no marks yet");

    let total = usize::from(SCHOOLS) * usize::from(PUPILS_EACH) * DAYS as usize;
    let mut feed = registers
        .watch_marks(WatchMarksRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let follower = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < total {
            let message = feed.message().await.expect("message").expect("a version");
            let mark = message.mark.expect("mark");
            seen.push((message.cursor, mark.laestab, mark.upn, mark.date));
        }
        seen
    });

    // Monday 8 September 2025 to Friday 12 September.
    let date = |day: u32| {
        [
            "2025-09-08",
            "2025-09-09",
            "2025-09-10",
            "2025-09-11",
            "2025-09-12",
            "2025-09-15",
            "2025-09-16",
            "2025-09-17",
        ][day as usize]
            .to_owned()
    };
    let mut sends = Vec::new();
    for index in 0..SCHOOLS {
        for day in 0..DAYS {
            let marks = (0..PUPILS_EACH)
                .map(|serial| mark(&pupil(index, serial), &date(day), "/", None))
                .collect();
            let messages = import_at(&school(index), &format!("{index}-{day}"), &[], marks);
            let mut client = registers.clone();
            sends.push(tokio::spawn(
                async move { send(&mut client, messages).await },
            ));
        }
    }
    // An import with pupils changes the roll, and runs alone among the others.
    let roll_school = school(SCHOOLS);
    let extra: Vec<String> = vec![pupil(SCHOOLS, PUPILS_EACH)];
    let mut client = registers.clone();
    sends.push(tokio::spawn(async move {
        send(
            &mut client,
            import_at(&roll_school, "roll-again", &extra, Vec::new()),
        )
        .await
    }));
    let mut cursors = BTreeSet::new();
    for send in sends {
        let response = send.await.expect("task").expect("import");
        if response.marks_recorded > 0 {
            assert!(
                cursors.insert(response.feed_cursor),
                "two imports reported feed position {}",
                response.feed_cursor
            );
        }
    }
    assert_eq!(cursors.len(), usize::from(SCHOOLS) * DAYS as usize);

    let seen = tokio::time::timeout(std::time::Duration::from_secs(300), follower)
        .await
        .expect("the consumer saw every version; a position committed out of order is missed")
        .expect("consumer task");
    let positions: Vec<i64> = seen.iter().map(|(cursor, ..)| *cursor).collect();
    let expected: Vec<i64> = (1..=i64::try_from(total).expect("count")).collect();
    assert_eq!(positions, expected, "positions in order with no gap");
    let distinct: BTreeSet<_> = seen
        .iter()
        .map(|(_, school, upn, date)| (school, upn, date))
        .collect();
    assert_eq!(distinct.len(), total, "each version once");
    assert_eq!(
        cursors.last().copied(),
        positions.last().copied(),
        "the last import reported the feed's head"
    );
    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn schools_import_at_once_on_sqlite() {
    schools_import_at_once(None).await;
}

#[tokio::test]
async fn schools_import_at_once_on_postgres() {
    schools_import_at_once(Some(&postgres_url().await)).await;
}

/// Schools in the group-commit test, the last of which the database rejects.
const GROUPED_SCHOOLS: u8 = 6;

/// Counts the sessions of the test's database that are idle inside a transaction, which is
/// where an import of marks alone waits once it has handed its versions to the appender.
const IDLE_IN_TRANSACTION: &str = "SELECT COUNT(*) FROM pg_stat_activity \
     WHERE datname = current_database() AND state = 'idle in transaction'";

/// Counts the sessions waiting for the append lock.
const APPEND_LOCK_WAITERS: &str = "SELECT COUNT(*) FROM pg_locks \
     WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 \
       AND ((classid::int8 << 32) | objid::int8) = $1";

/// Waits until `sql` counts at least `expected`, or fails after a minute.
async fn wait_for_count(pool: &sqlx::PgPool, sql: &'static str, expected: i64) {
    for _ in 0..600 {
        let count: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql);
        if count >= expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{sql} did not reach {expected} within a minute");
}

/// Holds the append lock from outside while several schools import marks at once. The
/// imports plan side by side and queue for one writer, so one session waits for the lock
/// however many imports wait. Then, with one school's versions rejected by the database, the
/// others are still written, the feed has no gap, and the rejected import left nothing behind
/// and goes through once the fault is gone.
#[tokio::test]
async fn imports_share_one_append_on_postgres() {
    let append_key = rollcall_runtime::storage::lock_keys::REGISTERS_APPEND;
    let url = postgres_url().await;
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), Some(&url)).await;
    let mut registers = client(&running).await;
    let school = |index: u8| format!("91940{:02}", index + 1);
    let pupil =
        |index: u8, serial: u8| Upn::from_digits([9, 1, 9, 4, 0, 0, 1, 2, 5, 0, index, serial]);
    for index in 0..GROUPED_SCHOOLS {
        let pupils: Vec<String> = (0..3)
            .map(|serial| pupil(index, serial).to_string())
            .collect();
        let messages = import_at(
            &school(index),
            &format!("roll-{index}"),
            &pupils,
            Vec::new(),
        );
        send(&mut registers, messages).await.expect("roll imported");
    }
    let Database::Postgres(pool) = Database::open(work.path(), Some(&url)).await else {
        unreachable!("opened with a URL");
    };

    // The database rejects the last school's versions, as it would reject a bad row.
    let rejected = school(GROUPED_SCHOOLS - 1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION reject_for_test() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF EXISTS (SELECT 1 FROM written WHERE laestab = '{rejected}') THEN \
         RAISE EXCEPTION 'rejected for the test'; END IF; RETURN NULL; END $$; \
         CREATE TRIGGER reject_for_test AFTER INSERT ON marks REFERENCING NEW TABLE AS written \
         FOR EACH STATEMENT EXECUTE FUNCTION reject_for_test();"
    )))
    .execute(&pool)
    .await
    .expect("trigger");

    let mut holder = pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(append_key)
        .execute(&mut *holder)
        .await
        .expect("append lock");
    let marks_of = |index: u8| {
        (0..3)
            .map(|serial| mark(&pupil(index, serial).to_string(), "2025-09-08", "/", None))
            .collect::<Vec<_>>()
    };
    let mut sends = Vec::new();
    for index in 0..GROUPED_SCHOOLS {
        let messages = import_at(
            &school(index),
            &format!("marks-{index}"),
            &[],
            marks_of(index),
        );
        let mut client = registers.clone();
        sends.push(tokio::spawn(
            async move { send(&mut client, messages).await },
        ));
        // The rejected school comes last, so that it is written in a group with others.
        let waiting = i64::from(index) + 1;
        wait_for_count(&pool, IDLE_IN_TRANSACTION, waiting).await;
    }
    let waiters: i64 = sqlx::query_scalar(APPEND_LOCK_WAITERS)
        .bind(append_key)
        .fetch_one(&pool)
        .await
        .expect("lock waiters");
    assert_eq!(waiters, 1, "only the appender waits for the append lock");
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(append_key)
        .execute(&mut *holder)
        .await
        .expect("unlock");
    drop(holder);

    let mut cursors = Vec::new();
    for (index, send) in (0..GROUPED_SCHOOLS).zip(sends) {
        let result = send.await.expect("task");
        if school(index) == rejected {
            let status = result.expect_err("rejected school fails");
            assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        } else {
            cursors.push(result.expect("import").feed_cursor);
        }
    }
    cursors.sort_unstable();
    let written = i64::from(GROUPED_SCHOOLS - 1) * 3;
    assert_eq!(cursors.last().copied(), Some(written), "{cursors:?}");
    let positions: (i64, i64, i64) =
        sqlx::query_as("SELECT COUNT(*), MIN(sequence), MAX(sequence) FROM marks")
            .fetch_one(&pool)
            .await
            .expect("positions");
    assert_eq!(positions, (written, 1, written), "no gap in the feed");
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM marks WHERE laestab = $1) \
         + (SELECT COUNT(*) FROM imports WHERE laestab = $1 AND request_id LIKE 'marks-%')",
    )
    .bind(&rejected)
    .fetch_one(&pool)
    .await
    .expect("rejected school's rows");
    assert_eq!(left, 0, "the rejected import left nothing");

    sqlx::raw_sql("DROP TRIGGER reject_for_test ON marks")
        .execute(&pool)
        .await
        .expect("drop trigger");
    let messages = import_at(
        &rejected,
        &format!("marks-{}", GROUPED_SCHOOLS - 1),
        &[],
        marks_of(GROUPED_SCHOOLS - 1),
    );
    let response = send(&mut registers, messages).await.expect("sent again");
    assert_eq!(response.feed_cursor, written + 3);
    running.stop().await.expect("server stops");
}

/// Restarts PostgreSQL between two imports of marks. The appender's connection, idle since
/// the first import, was closed by the restart, and the second import still succeeds at its
/// first attempt.
#[tokio::test]
async fn import_after_database_restart_on_postgres() {
    let postgres = rollcall_testkit::owned_postgres()
        .await
        .expect("PostgreSQL of the test's own");
    let url = postgres.server().create_database().await.expect("database");
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), Some(&url)).await;
    let mut registers = client(&running).await;
    let marks = vec![mark(&upn(1), "2025-09-01", "/", None)];
    send(&mut registers, import("roll", &[upn(1)], marks))
        .await
        .expect("roll and first mark");
    let marks = vec![mark(&upn(1), "2025-09-02", "/", None)];
    send(&mut registers, import("before", &[], marks))
        .await
        .expect("marks before the restart");

    postgres.stop_fast().await.expect("PostgreSQL stops");
    postgres.start().await.expect("PostgreSQL starts again");

    let marks = vec![mark(&upn(1), "2025-09-03", "/", None)];
    let response = send(&mut registers, import("after", &[], marks))
        .await
        .expect("marks after the restart, at the first attempt");
    assert_eq!(response.marks_recorded, 1);
    running.stop().await.expect("server stops");
}
