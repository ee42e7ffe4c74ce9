//! Runs of the connector against the local test broker, with a recording stand-in for the
//! MIS sync service. The end-to-end tests through `rollcall serve` are in tests/connector.rs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{NaiveDate, TimeDelta};
use rollcall_api::mis_adapter::v1::{
    RowCounts, RowOutcome, RowResult, SyncMarksRequest, SyncMarksResponse, SyncPupilsRequest,
    SyncPupilsResponse,
};
use rollcall_runtime::{Db, StorageConfig, with_db};
use rollcall_testkit::broker::{BrokerMark, BrokerSchool, BrokerServer, BrokerStudent};
use tonic::Status;

use super::*;
use crate::connector::store::{FAILED, SUCCEEDED};

const LAESTAB: &str = "9192001";
const SCHOOL_ID: &str = "A1930499544";
const TOKEN: &str = "test-broker-token";

/// A stand-in for the MIS sync service that records each batch and maps each pupil's MIS id
/// as the real service does. It rejects marks whose MIS id it has not seen, and counts a row
/// equal to one it applied before as unchanged.
#[derive(Debug, Default)]
struct Recorder {
    db: Option<Db>,
    pupils: Mutex<Vec<SyncPupilsRequest>>,
    marks: Mutex<Vec<SyncMarksRequest>>,
    known: Mutex<HashSet<String>>,
    applied: Mutex<HashSet<String>>,
}

#[tonic::async_trait]
impl SyncTarget for Recorder {
    async fn sync_pupils(&self, request: SyncPupilsRequest) -> Result<SyncPupilsResponse, Status> {
        let now = Utc::now();
        let mut counts = RowCounts::default();
        for pupil in &request.pupils {
            if self
                .applied
                .lock()
                .expect("lock")
                .insert(format!("{pupil:?}"))
            {
                counts.applied += 1;
            } else {
                counts.unchanged += 1;
            }
            self.known
                .lock()
                .expect("lock")
                .insert(pupil.mis_id.clone());
            if let Some(db) = &self.db {
                with_db!(db, |pool| {
                    sqlx::query(
                        "INSERT INTO pupil_ids (laestab, mis_id, upn, first_seen_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (laestab, mis_id) DO UPDATE \
                         SET upn = excluded.upn, updated_at = excluded.updated_at",
                    )
                    .bind(&request.laestab)
                    .bind(&pupil.mis_id)
                    .bind(&pupil.upn)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(|_| ())
                })
                .map_err(|error| Status::internal(error.to_string()))?;
            }
        }
        self.pupils.lock().expect("lock").push(request);
        Ok(SyncPupilsResponse {
            counts: Some(counts),
            ..Default::default()
        })
    }

    async fn sync_marks(&self, request: SyncMarksRequest) -> Result<SyncMarksResponse, Status> {
        let known = self.known.lock().expect("lock").clone();
        let mut counts = RowCounts::default();
        let mut results = Vec::new();
        for (index, mark) in request.marks.iter().enumerate() {
            let outcome = if !known.contains(&mark.mis_id) {
                counts.rejected += 1;
                RowOutcome::Rejected
            } else if self
                .applied
                .lock()
                .expect("lock")
                .insert(format!("{mark:?}"))
            {
                counts.applied += 1;
                RowOutcome::Applied
            } else {
                counts.unchanged += 1;
                RowOutcome::Unchanged
            };
            let rejected = outcome == RowOutcome::Rejected;
            results.push(RowResult {
                index: i32::try_from(index).expect("small"),
                mis_id: mark.mis_id.clone(),
                outcome: outcome as i32,
                reason_code: if rejected {
                    "unknown_mis_id".into()
                } else {
                    String::new()
                },
                field: "mis_id".into(),
                value: mark.mis_id.clone(),
                ..Default::default()
            });
        }
        self.marks.lock().expect("lock").push(request);
        Ok(SyncMarksResponse {
            counts: Some(counts),
            results,
            ..Default::default()
        })
    }
}

impl Recorder {
    fn pupils_sent(&self) -> Vec<String> {
        self.pupils
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|request| request.pupils.iter().map(|pupil| pupil.mis_id.clone()))
            .collect()
    }

    fn marks_sent(&self) -> Vec<(String, String, i32, String)> {
        self.marks
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|request| {
                request.marks.iter().map(|mark| {
                    (
                        mark.mis_id.clone(),
                        mark.date.clone(),
                        mark.session,
                        mark.code.clone(),
                    )
                })
            })
            .collect()
    }
}

/// A broker with one school, a database, and the connectors over them.
struct Setup {
    _dir: tempfile::TempDir,
    broker: BrokerServer,
    recorder: Arc<Recorder>,
    connectors: Connectors,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let broker = BrokerServer::start(TOKEN).await.expect("broker");
        broker.add_school(BrokerSchool::secondary(SCHOOL_ID, LAESTAB, "Test Academy"));
        let db = rollcall_runtime::storage::connect(
            &StorageConfig::Sqlite {
                data_dir: dir.path().join("data"),
            },
            crate::MIGRATIONS,
        )
        .await
        .expect("database");
        // The sync service's mapping table, which its own migration creates in a full
        // server.
        with_db!(&db, |pool| {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS pupil_ids (laestab TEXT NOT NULL, mis_id TEXT NOT \
                 NULL, upn TEXT NOT NULL, first_seen_at TEXT NOT NULL, updated_at TEXT NOT \
                 NULL, PRIMARY KEY (laestab, mis_id))",
            )
            .execute(pool)
            .await
            .map(|_| ())
        })
        .expect("pupil_ids table");

        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, broker.ca_pem()).expect("CA file");
        let settings = format!(
            "[[school]]\nlaestab = \"{LAESTAB}\"\nbase_url = \"{}\"\nschool_id = \"{SCHOOL_ID}\"\n\
             token_file = {:?}\nca_file = {:?}\npoll_interval_seconds = 0\npage_size = 2\n\
             requests_per_minute = 6000\n\
             [retries]\nmax_attempts = 4\nfirst_retry_seconds = 0.01\nmax_retry_seconds = 2\n",
            broker.base_url(),
            token_file.display().to_string(),
            ca_file.display().to_string(),
        );
        let config = ConnectorsConfig::parse(&settings).expect("settings");
        let recorder = Arc::new(Recorder {
            db: Some(db.clone()),
            ..Recorder::default()
        });
        let connectors = Connectors::new(db, config, recorder.clone()).expect("connectors start");
        connectors.start().await.expect("schools recorded");
        Self {
            _dir: dir,
            broker,
            recorder,
            connectors,
        }
    }

    async fn run(&self) -> RunRow {
        let school = self.connectors.school(LAESTAB).expect("configured");
        self.connectors
            .run_now(school, false)
            .await
            .expect("run starts")
    }

    async fn state(&self) -> store::StateRow {
        store::state(&self.connectors.db, LAESTAB)
            .await
            .expect("state readable")
            .expect("state exists")
    }

    fn seed(&self, students: usize) {
        for n in 1..=students {
            self.student(n);
        }
    }

    fn student(&self, n: usize) {
        self.broker.put_student(
            SCHOOL_ID,
            BrokerStudent::new(
                &format!("A{n:07}"),
                &format!("A91920010000{n}"),
                "Pupil",
                &format!("Number{n}"),
            ),
        );
    }

    fn mark(&self, student: usize, day: u32, session: &str, code: &str) -> String {
        self.broker.put_mark(
            SCHOOL_ID,
            BrokerMark {
                student_id: format!("A{student:07}"),
                date: NaiveDate::from_ymd_opt(2026, 11, day).expect("date"),
                session: session.to_owned(),
                code: code.to_owned(),
                minutes_late: None,
                comment: None,
            },
        )
    }

    /// Returns the `updated_after` of each request to `path`, in order.
    fn after_params(&self, path: &str) -> Vec<Option<String>> {
        self.broker
            .requests()
            .into_iter()
            .filter(|request| request.path.ends_with(path))
            .map(|request| request.param("updated_after").map(str::to_owned))
            .collect()
    }
}

#[tokio::test]
async fn full_pull_follows_pages() {
    let setup = Setup::new().await;
    setup.broker.shift_clock(TimeDelta::hours(-3));
    setup.seed(5);
    for student in 1..=3 {
        setup.mark(student, 2, "AM", "/");
        setup.mark(student, 2, "PM", "/");
    }
    setup.mark(4, 2, "AM", "I");

    let run = setup.run().await;
    assert_eq!(run.status, SUCCEEDED, "{}", run.error);
    assert_eq!(run.pupils_applied, 5);
    assert_eq!(run.marks_applied, 7);
    assert_eq!(run.marks_rejected, 0);
    let pupils = setup.recorder.pupils_sent();
    assert_eq!(
        pupils,
        ["A0000001", "A0000002", "A0000003", "A0000004", "A0000005"],
        "every student once"
    );
    assert!(run.pages >= 3 + 4, "pages of two: {}", run.pages);
    for request in setup.broker.requests() {
        assert_eq!(request.status, 200, "{request:?}");
        if request.path.ends_with("/students") {
            assert_eq!(request.param("per_page"), Some("2"));
        }
    }

    let state = setup.state().await;
    assert!(state.students_after.is_some());
    assert!(state.marks_after.is_some());
    assert!(state.deletions_after.is_none(), "no deletions read yet");
    assert!(!state.is_running(Utc::now()));
}

#[tokio::test]
async fn second_run_reads_only_changes() {
    let setup = Setup::new().await;
    setup.broker.shift_clock(TimeDelta::hours(-3));
    setup.seed(3);
    setup.mark(1, 2, "AM", "/");
    setup.mark(2, 2, "AM", "/");
    let first = setup.run().await;
    assert_eq!(first.status, SUCCEEDED, "{}", first.error);
    let watermark = setup.state().await.marks_after.expect("watermark");

    setup.broker.shift_clock(TimeDelta::hours(-2));
    setup.mark(2, 2, "AM", "M");
    setup.mark(3, 3, "PM", "/");
    setup.broker.clear_requests();
    let before = setup.recorder.marks_sent().len();
    let second = setup.run().await;
    assert_eq!(second.status, SUCCEEDED, "{}", second.error);

    let sent: Vec<_> = setup.recorder.marks_sent()[before..].to_vec();
    assert_eq!(second.marks_applied, 2, "{sent:?}");
    assert!(
        second.marks_unchanged <= 1,
        "only a mark changed in the watermark's second is read again: {sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(id, _, _, code)| id == "A0000002" && code == "M")
    );
    assert!(
        sent.iter()
            .any(|(id, date, _, _)| id == "A0000003" && date == "2026-11-03")
    );
    let afters = setup.after_params("attendance/session");
    assert_eq!(
        afters.first().cloned().flatten(),
        Some(watermark.format("%Y-%m-%d %H:%M:%S").to_string()),
        "the second run starts at the stored watermark"
    );
    assert_eq!(second.pupils_applied, 0, "no student changed");
}

#[tokio::test]
async fn failed_run_resumes_after_last_page() {
    let setup = Setup::new().await;
    for n in 1..=6 {
        setup
            .broker
            .shift_clock(TimeDelta::hours(i64::try_from(n).expect("small") - 8));
        setup.student(n);
    }
    // The school and the first page of students are read; the second page fails on every
    // attempt.
    setup.broker.fail_after(2, 4, 500);
    let first = setup.run().await;
    assert_eq!(first.status, FAILED);
    assert!(first.error.contains("500"), "{}", first.error);
    assert!(
        first.error.contains("gave up after 4 attempts"),
        "{}",
        first.error
    );
    assert_eq!(setup.recorder.pupils_sent(), ["A0000001", "A0000002"]);
    let stored = setup.state().await.cursor(store::Resource::Students);
    assert!(stored.after.is_some(), "the first page moved the watermark");

    setup.broker.clear_requests();
    let second = setup.run().await;
    assert_eq!(second.status, SUCCEEDED, "{}", second.error);
    let afters = setup.after_params("students");
    assert_eq!(
        afters.first().cloned().flatten(),
        stored
            .after
            .map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string()),
        "the run resumes from the stored watermark"
    );
    let sent = setup.recorder.pupils_sent();
    assert_eq!(
        &sent[2..],
        ["A0000002", "A0000003", "A0000004", "A0000005", "A0000006"],
        "the second run reads from the last change applied, which it reads again"
    );
}

#[tokio::test]
async fn rate_limit_and_server_errors_are_retried() {
    let setup = Setup::new().await;
    setup.seed(1);
    setup.broker.rate_limit_next(1, 1);
    setup.broker.fail_next(2, 503);
    let run = setup.run().await;
    assert_eq!(run.status, SUCCEEDED, "{}", run.error);
    assert_eq!(run.retries, 3);
    let statuses: Vec<u16> = setup
        .broker
        .requests()
        .iter()
        .map(|request| request.status)
        .collect();
    assert_eq!(&statuses[..4], [429, 503, 503, 200]);
    assert_eq!(run.pupils_applied, 1);
}

#[tokio::test]
async fn long_retry_after_defers_the_next_run() {
    let setup = Setup::new().await;
    setup.seed(1);
    setup.broker.rate_limit_next(1, 3_600);
    let run = setup.run().await;
    assert_eq!(run.status, FAILED);
    assert!(run.error.contains("asked to wait 3600 s"), "{}", run.error);
    let not_before = setup.state().await.not_before.expect("next run deferred");
    assert!(
        not_before > Utc::now() + TimeDelta::minutes(59),
        "{not_before}"
    );
    assert_eq!(setup.broker.requests().len(), 1, "no retry within the run");
}

#[tokio::test]
async fn unknown_student_is_rejected_per_row() {
    let setup = Setup::new().await;
    setup.seed(1);
    setup.mark(1, 2, "AM", "/");
    setup.mark(9, 2, "AM", "/");
    let run = setup.run().await;
    assert_eq!(run.status, SUCCEEDED, "{}", run.error);
    assert_eq!(run.marks_applied, 1);
    assert_eq!(run.marks_rejected, 1);
    let rejections: Vec<run::Rejection> =
        serde_json::from_str(&run.rejections).expect("rejections JSON");
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].resource, "marks");
    assert_eq!(rejections[0].mis_id, "A0000009");
    assert_eq!(rejections[0].reason_code, "unknown_mis_id");
    assert!(
        rejections[0].record_id.starts_with('M'),
        "{:?}",
        rejections[0]
    );
}

#[tokio::test]
async fn deletions_are_recorded_for_review() {
    let setup = Setup::new().await;
    setup.broker.shift_clock(TimeDelta::hours(-3));
    setup.seed(2);
    let mark_id = setup.mark(2, 2, "AM", "/");
    setup.run().await;

    setup.broker.shift_clock(TimeDelta::hours(-2));
    setup.broker.delete_student(SCHOOL_ID, "A0000001");
    setup.broker.delete_mark(SCHOOL_ID, &mark_id);
    let run = setup.run().await;
    assert_eq!(run.status, SUCCEEDED, "{}", run.error);
    assert_eq!(run.deletions, 2);

    let db = &setup.connectors.db;
    let rows = store::deletions(db, LAESTAB, 0, 10)
        .await
        .expect("deletions");
    let student = rows
        .iter()
        .find(|row| row.record_type == "student")
        .expect("student deletion");
    assert_eq!(student.action, "unmapped");
    assert_eq!(student.mis_id, "A0000001");
    assert_eq!(student.upn, "A919200100001");
    let mark = rows
        .iter()
        .find(|row| row.record_type == "session_attendance")
        .expect("mark deletion");
    assert_eq!(mark.action, "kept");
    assert_eq!(mark.mis_id, "A0000002");
    assert_eq!(mark.session_date, "2026-11-02");
    assert_eq!(mark.session, "AM");
    assert_eq!(
        store::deletions_to_review(db, LAESTAB)
            .await
            .expect("count"),
        2
    );
    assert_eq!(
        crate::writeback::store::mis_id_of(db, LAESTAB, "A919200100001")
            .await
            .expect("lookup"),
        None,
        "the deleted student's MIS id no longer names the pupil"
    );

    setup.broker.shift_clock(TimeDelta::hours(-1));
    setup.broker.restore_student(SCHOOL_ID, "A0000001");
    let run = setup.run().await;
    assert_eq!(run.status, SUCCEEDED, "{}", run.error);
    assert!(
        setup
            .recorder
            .pupils_sent()
            .ends_with(&["A0000001".to_owned()]),
        "the restored student is pulled again"
    );
    let rows = store::deletions(db, LAESTAB, 0, 10)
        .await
        .expect("deletions");
    let student = rows
        .iter()
        .find(|row| row.record_type == "student")
        .expect("student deletion");
    assert_eq!(student.action, "restored");
    assert!(student.restored_at.is_some());
    assert_eq!(
        crate::writeback::store::mis_id_of(db, LAESTAB, "A919200100001")
            .await
            .expect("lookup")
            .as_deref(),
        Some("A0000001")
    );
    assert_eq!(
        store::deletions_to_review(db, LAESTAB)
            .await
            .expect("count"),
        1
    );
}

#[tokio::test]
async fn wrong_school_is_refused() {
    let setup = Setup::new().await;
    setup
        .broker
        .add_school(BrokerSchool::secondary("B2", "9192002", "Other School"));
    let mut config = setup.connectors.config.clone();
    config.schools[0].school_id = "B2".into();
    let connectors = Connectors::new(setup.connectors.db.clone(), config, setup.recorder.clone())
        .expect("connectors");
    let school = connectors.school(LAESTAB).expect("configured");
    let run = connectors.run_now(school, false).await.expect("run starts");
    assert_eq!(run.status, FAILED);
    assert!(run.error.contains("\"919\""), "{}", run.error);
    assert!(run.error.contains("\"2002\""), "{}", run.error);
    assert!(run.error.contains("school_id"), "{}", run.error);
}

#[tokio::test]
async fn primary_school_needs_a_phase() {
    let setup = Setup::new().await;
    setup.broker.add_school(BrokerSchool {
        phase_of_education: "PRIMARY".into(),
        ..BrokerSchool::secondary("P1", LAESTAB, "Primary School")
    });
    let mut config = setup.connectors.config.clone();
    config.schools[0].school_id = "P1".into();
    let connectors = Connectors::new(
        setup.connectors.db.clone(),
        config.clone(),
        setup.recorder.clone(),
    )
    .expect("connectors");
    let run = connectors
        .run_now(connectors.school(LAESTAB).expect("configured"), false)
        .await
        .expect("run starts");
    assert_eq!(run.status, FAILED);
    assert!(run.error.contains("\"PRIMARY\""), "{}", run.error);
    assert!(run.error.contains("set phase"), "{}", run.error);

    config.schools[0].phase = Some("junior".into());
    let connectors = Connectors::new(setup.connectors.db.clone(), config, setup.recorder.clone())
        .expect("connectors");
    setup
        .broker
        .put_student("P1", BrokerStudent::new("A1", "A919200100001", "A", "B"));
    let run = connectors
        .run_now(connectors.school(LAESTAB).expect("configured"), false)
        .await
        .expect("run starts");
    assert_eq!(run.status, SUCCEEDED, "{}", run.error);
    let phase = setup.recorder.pupils.lock().expect("lock")[0].phase;
    assert_eq!(phase, rollcall_api::types::v1::Phase::Junior as i32);
}

#[tokio::test]
async fn echo_of_a_write_back_is_not_applied() {
    let setup = Setup::new().await;
    setup.seed(1);
    let db = &setup.connectors.db;
    let sent_at = Utc::now() - TimeDelta::seconds(1);
    with_db!(db, |pool| {
        sqlx::query(
            "INSERT INTO writeback_echoes (laestab, mis_id, session_date, session, code, \
             minutes_late, job_id, sent_at) VALUES ($1, 'A0000001', '2026-11-02', 'AM', 'L', \
             5, 'wb-00000001', $2)",
        )
        .bind(LAESTAB)
        .bind(sent_at)
        .execute(pool)
        .await
        .map(|_| ())
    })
    .expect("echo row");
    setup.broker.put_mark(
        SCHOOL_ID,
        BrokerMark {
            student_id: "A0000001".into(),
            date: NaiveDate::from_ymd_opt(2026, 11, 2).expect("date"),
            session: "AM".into(),
            code: "L".into(),
            minutes_late: Some(5),
            comment: Some("Shortened by the MIS".into()),
        },
    );
    let run = setup.run().await;
    assert_eq!(run.marks_echoed, 1);
    assert_eq!(run.marks_applied, 0);
    assert!(setup.recorder.marks_sent().is_empty());

    let again = setup
        .connectors
        .run_now(setup.connectors.school(LAESTAB).expect("configured"), true)
        .await
        .expect("run starts");
    assert_eq!(
        again.marks_echoed, 1,
        "the same record read again is still the echo"
    );

    setup.mark(1, 2, "AM", "/");
    let changed = setup.run().await;
    assert_eq!(changed.marks_echoed, 0);
    assert_eq!(changed.marks_applied, 1, "the MIS's own change is applied");
}
