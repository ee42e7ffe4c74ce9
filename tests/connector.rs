//! The MIS connector and write-back on a real server, against the local test broker. The
//! tests cover a full pull in pages, changes read after the stored watermark, deletions, a
//! restart that resumes, 429 and 5xx replies retried and rows rejected one by one. Decisions
//! written back to the MIS are compared field by field with what the MIS stores. Each
//! scenario runs on SQLite and on PostgreSQL.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeDelta};
use common::{cli, cli_error};
use rollcall_api::mis_adapter::v1::mis_adapter_service_client::MisAdapterServiceClient;
use rollcall_api::mis_adapter::v1::{
    Connector, ConnectorRunStatus, ConnectorRunTrigger, GetWritebackJobRequest,
    ListConnectorsRequest, ListWritebackJobsRequest, RunConnectorRequest, WritebackJob,
    WritebackJobStatus,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{AmendMarkRequest, ListMarkVersionsRequest, Mark};
use rollcall_api::types::v1::{MarkSource, Session};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use rollcall_mis_adapter::ConnectorsConfig;
use rollcall_testkit::broker::{BrokerMark, BrokerSchool, BrokerServer, BrokerStudent};
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

const LAESTAB: &str = "9192001";
const SCHOOL_ID: &str = "A1930499544";
const TOKEN: &str = "broker-token-for-the-tests";

/// How long a test waits for the write-back worker before it fails. Jobs normally finish in
/// well under a second; the margin is for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(120);

macro_rules! on_both_databases {
    ($scenario:ident, $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            $scenario(None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            let url = rollcall_testkit::postgres()
                .await
                .expect("PostgreSQL for the tests")
                .create_database()
                .await
                .expect("database");
            $scenario(Some(&url)).await;
        }
    };
}

/// Returns a valid UPN whose last digit is `serial`.
fn upn(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 6, 0, 0, serial]).to_string()
}

/// Returns the broker's id of student `serial`.
fn student_id(serial: u8) -> String {
    format!("A10000{serial:02}")
}

fn day(day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, day).expect("a November 2026 date")
}

/// A broker, the files the connector settings name, and the settings.
struct Setup {
    work: tempfile::TempDir,
    broker: BrokerServer,
    settings: String,
}

impl Setup {
    async fn new(poll_interval_seconds: u64) -> Self {
        let work = tempfile::tempdir().expect("temporary folder");
        let broker = BrokerServer::start(TOKEN).await.expect("broker");
        broker.add_school(BrokerSchool::secondary(SCHOOL_ID, LAESTAB, "Test Academy"));
        let token_file = work.path().join("broker-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let ca_file = work.path().join("broker-ca.pem");
        std::fs::write(&ca_file, broker.ca_pem()).expect("CA file");
        let settings = format!(
            "[[school]]\nlaestab = \"{LAESTAB}\"\nbase_url = \"{}\"\nschool_id = \"{SCHOOL_ID}\"\n\
             token_file = {}\nca_file = {}\npoll_interval_seconds = {poll_interval_seconds}\n\
             page_size = 2\nrequests_per_minute = 6000\nwrite_back = true\ntimeout_seconds = 10\n\n\
             [retries]\nmax_attempts = 4\nfirst_retry_seconds = 0.05\nmax_retry_seconds = 2\n\n\
             [writeback]\nmax_attempts = 3\nfirst_retry_seconds = 0.05\nmax_retry_seconds = 0.2\n\
             poll_seconds = 0.05\nlease_seconds = 60\n",
            broker.base_url(),
            quoted(&token_file),
            quoted(&ca_file),
        );
        Self {
            work,
            broker,
            settings,
        }
    }

    async fn start(&self, database_url: Option<&str>) -> RunningServer {
        let mut config = ServerConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            self.work.path().join("data"),
            database_url,
        )
        .expect("config");
        config.connectors = ConnectorsConfig::parse(&self.settings).expect("connector settings");
        server::start(config).await.expect("server starts")
    }

    /// Seeds students `serials`, on roll since 2 September 2026.
    fn students(&self, serials: &[u8]) {
        for serial in serials {
            self.broker.put_student(
                SCHOOL_ID,
                BrokerStudent::new(
                    &student_id(*serial),
                    &upn(*serial),
                    "Pupil",
                    &format!("Number {serial}"),
                ),
            );
        }
    }

    /// Stores the MIS's mark for a student and session, and returns the mark's id.
    fn mark(&self, serial: u8, date: NaiveDate, session: &str, code: &str) -> String {
        self.broker.put_mark(
            SCHOOL_ID,
            BrokerMark {
                student_id: student_id(serial),
                date,
                session: session.to_owned(),
                code: code.to_owned(),
                minutes_late: None,
                comment: None,
            },
        )
    }
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

async fn channel(running: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect")
}

async fn connector(adapter: &mut MisAdapterServiceClient<Channel>) -> Connector {
    adapter
        .list_connectors(ListConnectorsRequest {})
        .await
        .expect("list connectors")
        .into_inner()
        .connectors
        .into_iter()
        .next()
        .expect("one connector")
}

/// Runs the connector through the CLI and returns the run as JSON.
async fn run_cli(url: &str) -> Value {
    let output = cli(url, &["connector", "run", LAESTAB, "--json"]).await;
    serde_json::from_str(&output).expect("run JSON")
}

/// Returns every version of one session's mark, oldest first.
async fn versions(
    registers: &mut RegistersServiceClient<Channel>,
    serial: u8,
    date: NaiveDate,
    session: Session,
) -> Vec<Mark> {
    registers
        .list_mark_versions(ListMarkVersionsRequest {
            upn: upn(serial),
            laestab: LAESTAB.into(),
            date: date.to_string(),
            session: session as i32,
        })
        .await
        .expect("mark versions")
        .into_inner()
        .versions
        .into_iter()
        .filter_map(|version| version.mark)
        .collect()
}

/// Returns the `updated_after` of each request to a list, in order.
fn afters(broker: &BrokerServer, list: &str) -> Vec<Option<String>> {
    broker
        .requests()
        .into_iter()
        .filter(|request| request.path.ends_with(list))
        .map(|request| request.param("updated_after").map(str::to_owned))
        .collect()
}

/// Pulls a school in pages, with an unknown student's mark rejected. Then changes and deletes
/// records in the MIS, restarts the server, and runs again: the run resumes at the stored
/// watermarks and retries a 429 and two 503 replies.
async fn pull_resume_and_retry(database_url: Option<&str>) {
    let setup = Setup::new(0).await;
    setup.broker.shift_clock(TimeDelta::hours(-3));
    setup.students(&[1, 2, 3, 4, 5]);
    for serial in 1..=3 {
        setup.mark(serial, day(2), "AM", "/");
        setup.mark(serial, day(2), "PM", "/");
    }
    setup.mark(4, day(2), "AM", "I");
    setup.mark(9, day(2), "AM", "/");
    let deleted_mark = setup.mark(2, day(3), "PM", "/");

    let running = setup.start(database_url).await;
    let url = running.url();
    let channel = channel(&running).await;
    let mut adapter = MisAdapterServiceClient::new(channel.clone());
    let mut registers = RegistersServiceClient::new(channel);

    let before = connector(&mut adapter).await;
    assert_eq!(before.laestab, LAESTAB);
    assert_eq!(before.school_id, SCHOOL_ID);
    assert!(before.write_back);
    assert!(before.last_run.is_none());
    assert!(before.next_run_at.is_none(), "runs only on demand");

    let run = run_cli(&url).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["trigger"], "on_demand");
    assert_eq!(run["pupils"]["applied"], 5, "{run:#}");
    assert_eq!(run["pupils"]["rejected"], 0, "{run:#}");
    assert_eq!(run["marks"]["applied"], 8, "{run:#}");
    assert_eq!(run["marks"]["rejected"], 1, "{run:#}");
    let rejection = &run["rejections"][0];
    assert_eq!(rejection["resource"], "marks");
    assert_eq!(rejection["mis_id"], student_id(9).as_str());
    assert_eq!(rejection["reason_code"], "unknown_mis_id");
    assert_eq!(rejection["field"], "mis_id");
    assert!(run["pages"].as_i64().expect("pages") >= 3 + 5, "{run:#}");
    for request in setup.broker.requests() {
        assert_eq!(request.status, 200, "{request:?}");
    }
    let student_pages: Vec<String> = setup
        .broker
        .requests()
        .into_iter()
        .filter(|request| request.path.ends_with("/students"))
        .map(|request| request.param("per_page").unwrap_or_default().to_owned())
        .collect();
    assert!(
        student_pages.iter().all(|per_page| per_page == "2"),
        "{student_pages:?}"
    );

    let pulled = versions(&mut registers, 4, day(2), Session::Am).await;
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].code, "I");
    assert_eq!(pulled[0].source, MarkSource::MisSync as i32);

    let after_first = connector(&mut adapter).await;
    let marks_watermark = after_first.marks_watermark.expect("marks watermark");
    let students_watermark = after_first.students_watermark.expect("students watermark");
    assert_eq!(
        after_first.last_run.as_ref().map(|run| run.status),
        Some(ConnectorRunStatus::Succeeded as i32)
    );

    // Changes in the MIS an hour later: a mark changed, a new student with a mark, a student
    // and a mark deleted.
    setup.broker.shift_clock(TimeDelta::hours(-2));
    setup.mark(1, day(2), "AM", "M");
    setup.students(&[6]);
    setup.mark(6, day(3), "AM", "/");
    setup.broker.delete_student(SCHOOL_ID, &student_id(5));
    setup.broker.delete_mark(SCHOOL_ID, &deleted_mark);

    running.stop().await.expect("server stops");
    let running = setup.start(database_url).await;
    let url = running.url();
    let channel = self::channel(&running).await;
    let mut adapter = MisAdapterServiceClient::new(channel.clone());
    let mut registers = RegistersServiceClient::new(channel);
    let restarted = connector(&mut adapter).await;
    assert_eq!(restarted.marks_watermark, Some(marks_watermark));
    assert_eq!(restarted.students_watermark, Some(students_watermark));

    setup.broker.clear_requests();
    setup.broker.rate_limit_next(1, 1);
    setup.broker.fail_next(2, 503);
    let run = run_cli(&url).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["retries"], 3, "{run:#}");
    let statuses: Vec<u16> = setup
        .broker
        .requests()
        .iter()
        .map(|request| request.status)
        .collect();
    assert_eq!(&statuses[..4], [429, 503, 503, 200], "{statuses:?}");
    assert_eq!(run["pupils"]["applied"], 1, "only the new student: {run:#}");
    assert_eq!(
        run["marks"]["applied"], 2,
        "the changed and the new mark: {run:#}"
    );
    assert_eq!(run["deletions"], 2, "{run:#}");

    let watermark_text = |at: &prost_types::Timestamp| {
        chrono::DateTime::from_timestamp(at.seconds, 0)
            .expect("time")
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    assert_eq!(
        afters(&setup.broker, "/students")
            .first()
            .cloned()
            .flatten(),
        Some(watermark_text(&students_watermark)),
        "students resume at the stored watermark"
    );
    assert_eq!(
        afters(&setup.broker, "/attendance/session")
            .first()
            .cloned()
            .flatten(),
        Some(watermark_text(&marks_watermark)),
        "marks resume at the stored watermark"
    );

    let changed = versions(&mut registers, 1, day(2), Session::Am).await;
    let codes: Vec<&str> = changed.iter().map(|mark| mark.code.as_str()).collect();
    assert_eq!(codes, ["/", "M"], "the earlier version is kept");

    let deletions: Value =
        serde_json::from_str(&cli(&url, &["connector", "deletions", LAESTAB, "--json"]).await)
            .expect("deletions JSON");
    let deletions = deletions.as_array().expect("array");
    assert_eq!(deletions.len(), 2, "{deletions:#?}");
    let student = deletions
        .iter()
        .find(|row| row["record_type"] == "student")
        .expect("student deletion");
    assert_eq!(student["action"], "unmapped");
    assert_eq!(student["mis_id"], student_id(5).as_str());
    assert_eq!(student["upn"], upn(5).as_str());
    let mark = deletions
        .iter()
        .find(|row| row["record_type"] == "session_attendance")
        .expect("mark deletion");
    assert_eq!(mark["action"], "kept");
    assert_eq!(mark["mis_id"], student_id(2).as_str());
    assert_eq!(mark["date"], "2026-11-03");
    assert_eq!(mark["session"], "PM");
    let kept = versions(&mut registers, 2, day(3), Session::Pm).await;
    assert_eq!(
        kept.len(),
        1,
        "a mark deleted in the MIS stays in the register"
    );

    let table = cli(&url, &["connector", "list"]).await;
    assert!(table.contains(LAESTAB), "{table}");
    assert!(table.contains("on demand"), "{table}");
    assert!(table.contains("succeeded"), "{table}");
    let runs = cli(&url, &["connector", "runs", LAESTAB]).await;
    assert!(runs.contains("2 runs"), "{runs}");
    let listed: Value =
        serde_json::from_str(&cli(&url, &["connector", "list", "--json"]).await).expect("JSON");
    assert_eq!(listed[0]["deletions_to_review"], 2, "{listed:#}");
    assert_eq!(listed[0]["last_run"]["status"], "succeeded");

    running.stop().await.expect("server stops");
}

on_both_databases!(
    pull_resume_and_retry,
    pull_resume_and_retry_on_sqlite,
    pull_resume_and_retry_on_postgres
);

/// Waits until write-back jobs hold `marks` marks in all and none is queued or being sent,
/// and returns the jobs, oldest first, with their marks.
async fn settled_jobs(
    adapter: &mut MisAdapterServiceClient<Channel>,
    marks: i32,
) -> Vec<WritebackJob> {
    let started = Instant::now();
    loop {
        let jobs = adapter
            .list_writeback_jobs(ListWritebackJobsRequest::default())
            .await
            .expect("list jobs")
            .into_inner()
            .jobs;
        let total: i32 = jobs.iter().map(|job| job.marks).sum();
        let settled = jobs.iter().all(|job| {
            job.status == WritebackJobStatus::Completed as i32
                || job.status == WritebackJobStatus::Failed as i32
        });
        if total >= marks && settled {
            let mut full = Vec::new();
            for job in jobs.iter().rev() {
                full.push(
                    adapter
                        .get_writeback_job(GetWritebackJobRequest {
                            job_id: job.id.clone(),
                        })
                        .await
                        .expect("job")
                        .into_inner()
                        .job
                        .expect("job"),
                );
            }
            return full;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "write-back jobs did not settle: {jobs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A decision made in rollcall, as the round trip compares it.
struct Decision {
    serial: u8,
    date: NaiveDate,
    session: Session,
    code: &'static str,
    minutes_late: i32,
    reason: &'static str,
}

impl Decision {
    fn session_name(&self) -> &'static str {
        if self.session == Session::Am {
            "AM"
        } else {
            "PM"
        }
    }
}

/// Decisions made in rollcall (staff amendments through the CLI and one from a parent's
/// report) are written back to the MIS. Every field sent is compared with what the MIS
/// stores. A locked register is rejected with the MIS's reason and retried once unlocked, a
/// job retries after 503 replies, and pulling the MIS's copies back adds no register
/// version.
async fn write_back_round_trip(database_url: Option<&str>) {
    let setup = Setup::new(0).await;
    setup.broker.shift_clock(TimeDelta::hours(-3));
    setup.students(&[1, 2]);
    for serial in [1, 2] {
        for date in [day(2), day(3)] {
            setup.mark(serial, date, "AM", "/");
            setup.mark(serial, date, "PM", "/");
        }
    }
    setup.broker.shift_clock(TimeDelta::zero());
    let running = setup.start(database_url).await;
    let url = running.url();
    let channel = channel(&running).await;
    let mut adapter = MisAdapterServiceClient::new(channel.clone());
    let mut registers = RegistersServiceClient::new(channel);
    let pulled = run_cli(&url).await;
    assert_eq!(pulled["marks"]["applied"], 8, "{pulled:#}");

    let decisions = [
        Decision {
            serial: 1,
            date: day(2),
            session: Session::Am,
            code: "L",
            minutes_late: 12,
            reason: "Arrived on the late bus",
        },
        Decision {
            serial: 2,
            date: day(2),
            session: Session::Pm,
            code: "M",
            minutes_late: 0,
            reason: "Dental appointment, letter seen",
        },
    ];
    for decision in &decisions {
        let minutes = decision.minutes_late.to_string();
        let upn = upn(decision.serial);
        let date = decision.date.to_string();
        let mut args = vec![
            "marks",
            "amend",
            "--upn",
            upn.as_str(),
            "--date",
            date.as_str(),
            "--session",
            decision.session_name(),
            "--code",
            decision.code,
            "--reason",
            decision.reason,
            "--by",
            "J Smith",
            "--position",
            "Attendance officer",
            "--school",
            LAESTAB,
        ];
        if decision.minutes_late > 0 {
            args.extend(["--minutes-late", minutes.as_str()]);
        }
        cli(&url, &args).await;
    }
    let parent = Decision {
        serial: 2,
        date: day(3),
        session: Session::Am,
        code: "I",
        minutes_late: 0,
        reason: "Illness reported by parent",
    };
    registers
        .amend_mark(AmendMarkRequest {
            request_id: "parent-report-1".into(),
            upn: upn(parent.serial),
            laestab: LAESTAB.into(),
            date: parent.date.to_string(),
            session: parent.session as i32,
            code: parent.code.into(),
            reason: parent.reason.into(),
            recorded_by: "Office".into(),
            recorded_by_position: "Attendance officer".into(),
            source: MarkSource::ParentReport as i32,
            ..AmendMarkRequest::default()
        })
        .await
        .expect("parent report decision");

    let jobs = settled_jobs(&mut adapter, 3).await;
    let items: Vec<_> = jobs.iter().flat_map(|job| job.items.clone()).collect();
    assert_eq!(items.len(), 3, "{jobs:#?}");
    for job in &jobs {
        assert_eq!(job.status, WritebackJobStatus::Completed as i32, "{job:#?}");
        assert!(!job.writeback_id.is_empty(), "{job:#?}");
    }

    // Every field sent is what the MIS now holds, and what rollcall holds.
    for decision in decisions.iter().chain([&parent]) {
        let effective = versions(
            &mut registers,
            decision.serial,
            decision.date,
            decision.session,
        )
        .await
        .pop()
        .expect("a version");
        assert_eq!(effective.code, decision.code);
        assert_eq!(effective.minutes_late, decision.minutes_late);
        assert_eq!(effective.reason, decision.reason);

        let stored = setup
            .broker
            .mark(
                SCHOOL_ID,
                &student_id(decision.serial),
                decision.date,
                decision.session_name(),
            )
            .expect("the MIS holds the mark");
        assert_eq!(stored.mark.student_id, student_id(decision.serial));
        assert_eq!(stored.mark.date, decision.date);
        assert_eq!(stored.mark.session, decision.session_name());
        assert_eq!(stored.mark.code, effective.code, "code");
        assert_eq!(
            stored.mark.minutes_late.unwrap_or(0),
            effective.minutes_late,
            "minutes late"
        );
        assert_eq!(
            stored.mark.comment.as_deref(),
            Some(effective.reason.as_str()),
            "comment"
        );

        let item = items
            .iter()
            .find(|item| {
                item.upn == upn(decision.serial)
                    && item.date == decision.date.to_string()
                    && item.session == decision.session as i32
            })
            .expect("the decision is in a job");
        assert_eq!(item.mis_id, student_id(decision.serial));
        assert_eq!(
            item.status,
            rollcall_api::mis_adapter::v1::WritebackMarkStatus::Accepted as i32
        );
        assert_eq!(item.code, decision.code);
        assert_eq!(item.minutes_late, decision.minutes_late);
        assert_eq!(item.comment, decision.reason);
    }
    let sources: Vec<i32> = items.iter().map(|item| item.source).collect();
    assert!(sources.contains(&(MarkSource::Staff as i32)), "{sources:?}");
    assert!(
        sources.contains(&(MarkSource::ParentReport as i32)),
        "{sources:?}"
    );
    let written = setup.broker.written();
    assert_eq!(written.len(), 3, "{written:#?}");

    // Pulling the MIS's copies adds no register version, so nothing loops back.
    let history_before = versions(&mut registers, 1, day(2), Session::Am).await.len();
    let echoed = run_cli(&url).await;
    assert_eq!(echoed["status"], "succeeded", "{echoed:#}");
    assert_eq!(echoed["marks_echoed"], 3, "{echoed:#}");
    assert_eq!(echoed["marks"]["applied"], 0, "{echoed:#}");
    assert_eq!(
        versions(&mut registers, 1, day(2), Session::Am).await.len(),
        history_before
    );

    // A locked register is rejected with the MIS's reason, and retried once unlocked.
    setup
        .broker
        .lock_date(SCHOOL_ID, day(3), "The register for 3 November is locked.");
    cli(
        &url,
        &[
            "marks",
            "amend",
            "--upn",
            &upn(1),
            "--date",
            "2026-11-03",
            "--session",
            "PM",
            "--code",
            "C",
            "--reason",
            "Exceptional circumstances agreed by the head",
            "--by",
            "J Smith",
            "--position",
            "Headteacher",
            "--school",
            LAESTAB,
        ],
    )
    .await;
    let jobs = settled_jobs(&mut adapter, 4).await;
    let locked = jobs.last().expect("a job").clone();
    assert_eq!(locked.status, WritebackJobStatus::Completed as i32);
    assert_eq!(locked.rejected, 1);
    assert_eq!(
        locked.items[0].reason,
        "The register for 3 November is locked."
    );
    let shown = cli(&url, &["writeback", "show", &locked.id]).await;
    assert!(shown.contains("rejected"), "{shown}");
    assert!(shown.contains("locked"), "{shown}");

    setup.broker.unlock_date(SCHOOL_ID, day(3));
    setup.broker.fail_next(8, 503);
    let retried = cli(&url, &["writeback", "retry", &locked.id]).await;
    assert!(retried.contains("queued again with 1 mark"), "{retried}");
    let started = Instant::now();
    let job = loop {
        let job = adapter
            .get_writeback_job(GetWritebackJobRequest {
                job_id: locked.id.clone(),
            })
            .await
            .expect("job")
            .into_inner()
            .job
            .expect("job");
        if job.status == WritebackJobStatus::Completed as i32 && job.accepted == 1 {
            break job;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the retried job did not complete: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let outcomes: Vec<&str> = job
        .history
        .iter()
        .map(|attempt| attempt.outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["completed", "retry", "retry", "completed"],
        "{job:#?}"
    );
    assert!(job.history[1].detail.contains("503"), "{job:#?}");
    assert_eq!(
        setup
            .broker
            .mark(SCHOOL_ID, &student_id(1), day(3), "PM")
            .expect("mark")
            .mark
            .code,
        "C"
    );

    let listed: Value =
        serde_json::from_str(&cli(&url, &["writeback", "list", "--json"]).await).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(jobs.len()));
    let error = cli_error(&url, &["writeback", "retry", &locked.id]).await;
    assert!(error.contains("accepted"), "{error}");
    let error = cli_error(&url, &["writeback", "show", "wb-99999999"]).await;
    assert!(error.contains("wb-99999999 not found"), "{error}");

    running.stop().await.expect("server stops");
}

on_both_databases!(
    write_back_round_trip,
    write_back_round_trip_on_sqlite,
    write_back_round_trip_on_postgres
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_run_starts_by_itself() {
    let setup = Setup::new(3_600).await;
    setup.students(&[1]);
    let running = setup.start(None).await;
    let mut adapter = MisAdapterServiceClient::new(channel(&running).await);
    let started = Instant::now();
    let run = loop {
        if let Some(run) = connector(&mut adapter).await.last_run
            && run.status != ConnectorRunStatus::Running as i32
        {
            break run;
        }
        assert!(started.elapsed() < DEADLINE, "no scheduled run started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run.trigger, ConnectorRunTrigger::Scheduled as i32);
    assert_eq!(run.status, ConnectorRunStatus::Succeeded as i32, "{run:#?}");
    let next = connector(&mut adapter).await.next_run_at.expect("next run");
    let last = run.started_at.expect("start");
    assert_eq!(
        next.seconds - last.seconds,
        3_600,
        "the next run is an interval later"
    );
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_school_is_not_found() {
    let setup = Setup::new(0).await;
    let running = setup.start(None).await;
    let mut adapter = MisAdapterServiceClient::new(channel(&running).await);
    let error = adapter
        .run_connector(RunConnectorRequest {
            laestab: "9192999".into(),
            full: false,
        })
        .await
        .expect_err("no connector");
    assert_eq!(error.code(), Code::NotFound);
    assert!(error.message().contains("9192999"), "{}", error.message());
    assert!(
        error.message().contains("[[school]]"),
        "{}",
        error.message()
    );
    let invalid = adapter
        .run_connector(RunConnectorRequest {
            laestab: "91".into(),
            full: false,
        })
        .await
        .expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid.message().contains("\"91\""),
        "{}",
        invalid.message()
    );
    running.stop().await.expect("server stops");
}

/// Runs `rollcall serve` with a connector settings file and returns its standard error. The
/// server must fail at start, and it is killed if it is still running at the deadline.
fn serve_with_settings(work: &Path, settings: &str) -> String {
    let file = work.join("connectors.toml");
    std::fs::write(&file, settings).expect("settings file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(work.join("data"))
        .arg("--connectors")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rollcall binary runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().expect("kill");
            panic!("rollcall serve accepted the settings:\n{settings}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn bad_settings_name_file_and_value() {
    let work = tempfile::tempdir().expect("temporary folder");
    let file = work.path().join("connectors.toml").display().to_string();
    let school = "[[school]]\nlaestab = \"9192001\"\nschool_id = \"A1\"\n";

    let http = serve_with_settings(
        work.path(),
        &format!("{school}base_url = \"http://broker.example/v1.0\"\ntoken_env = \"T\"\n"),
    );
    assert!(http.contains(&file), "{http}");
    assert!(http.contains("http://broker.example/v1.0"), "{http}");
    assert!(http.contains("does not use https"), "{http}");

    let unknown = serve_with_settings(
        work.path(),
        &format!(
            "{school}base_url = \"https://broker.example/v1.0\"\ntoken_env = \"T\"\n\
             poll_minutes = 5\n"
        ),
    );
    assert!(unknown.contains("poll_minutes"), "{unknown}");
    assert!(unknown.contains(&file), "{unknown}");

    let missing = work.path().join("no-such-token");
    let token = serve_with_settings(
        work.path(),
        &format!(
            "{school}base_url = \"https://broker.example/v1.0\"\ntoken_file = {}\n",
            quoted(&missing)
        ),
    );
    assert!(token.contains(&missing.display().to_string()), "{token}");
    assert!(token.contains("token_file"), "{token}");
    assert!(token.contains("9192001"), "{token}");

    let inline = serve_with_settings(
        work.path(),
        &format!(
            "{school}base_url = \"https://broker.example/v1.0\"\n\
             token = \"written-into-the-file-by-mistake\"\n"
        ),
    );
    assert!(inline.contains("token must not be written"), "{inline}");
    assert!(
        !inline.contains("written-into-the-file-by-mistake"),
        "the token is not printed: {inline}"
    );
}
