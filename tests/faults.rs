//! Fault tests: `rollcall serve` processes killed with SIGKILL in the middle of an import, a
//! PostgreSQL server stopped and killed while clients send batches, and change-feed consumers
//! cut off in the middle of a stream. Each test starts the real binary and a real database,
//! and checks afterwards that every mark is stored exactly once and that the figures and
//! cases match those of a clean run.
//!
//! The data: 100 pupils of one secondary school, 100 school days from Monday 8 September
//! 2025, two sessions a day, so 20,000 marks in 40 batches of 500. Pupils whose serial is 0
//! modulo 5 miss three sessions in five (severe and persistent absence), those at 1 modulo 5
//! miss one in five (persistent absence), and the rest attend every session. At any prefix
//! of a pupil's marks the absence rate stays on the same side of each threshold, so the
//! final triggers and cases do not depend on how the policy service batched its passes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

use chrono::{Datelike, NaiveDate, Weekday};
use rollcall_api::mis_adapter::v1::SyncMarksRequest;
use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::registers::v1::WatchMarksRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_domain::Upn;
use serde_json::Value;
use tokio::sync::OnceCell;

/// The school of the main import.
const LAESTAB: &str = "9192001";
/// The school that the test's own SyncMarks client writes to.
const SECOND_LAESTAB: &str = "9192002";
const PUPILS: u32 = 100;
const DAYS: usize = 100;
/// Pause between two looks at a log, a process or a database while waiting for an event.
const POLL: Duration = Duration::from_millis(50);

/// Returns a valid UPN for a school digit and a serial number below 1,000.
fn upn(school_digit: u8, serial: u32) -> String {
    let digits = [
        9,
        1,
        9,
        2,
        0,
        0,
        school_digit,
        2,
        5,
        u8::try_from(serial / 100).expect("digit"),
        u8::try_from(serial / 10 % 10).expect("digit"),
        u8::try_from(serial % 10).expect("digit"),
    ];
    Upn::from_digits(digits).to_string()
}

/// Returns the weekdays from 8 September 2025 on, `count` of them.
fn weekdays(count: usize) -> Vec<NaiveDate> {
    let mut days = Vec::new();
    let mut day = NaiveDate::from_ymd_opt(2025, 9, 8).expect("date");
    while days.len() < count {
        if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            days.push(day);
        }
        day += chrono::Duration::days(1);
    }
    days
}

/// Returns the code of a pupil's session number `index`, counted from the first morning.
fn code_for(serial: u32, index: usize) -> &'static str {
    let absent = match serial % 5 {
        0 => index % 5 < 3,
        1 => index.is_multiple_of(5),
        _ => false,
    };
    match (absent, index % 2) {
        (true, _) => "O",
        (false, 0) => "/",
        (false, _) => "\\",
    }
}

/// One session's mark as stored: UPN, date, session.
type SessionKey = (String, String, String);

/// The CSV files of the main import and the marks they carry.
struct Dataset {
    pupils: String,
    marks: String,
    expected: BTreeMap<SessionKey, String>,
}

fn write_dataset(dir: &Path) -> Dataset {
    let mut pupils =
        "mis_id,upn,forename,surname,date_of_birth,sex,admission_date,year_group\n".to_owned();
    for serial in 1..=PUPILS {
        pupils.push_str(&format!(
            "P{serial},{},Test,Pupil {serial},2013-05-01,F,2025-09-01,8\n",
            upn(1, serial)
        ));
    }
    let mut marks = "mis_id,date,session,code\n".to_owned();
    let mut expected = BTreeMap::new();
    for (day_index, day) in weekdays(DAYS).into_iter().enumerate() {
        for serial in 1..=PUPILS {
            for (half, session) in ["AM", "PM"].into_iter().enumerate() {
                let code = code_for(serial, day_index * 2 + half);
                marks.push_str(&format!("P{serial},{day},{session},{code}\n"));
                expected.insert(
                    (upn(1, serial), day.to_string(), session.to_owned()),
                    code.to_owned(),
                );
            }
        }
    }
    let pupils_path = dir.join("pupils.csv");
    let marks_path = dir.join("marks.csv");
    std::fs::write(&pupils_path, pupils).expect("pupils file written");
    std::fs::write(&marks_path, marks).expect("marks file written");
    Dataset {
        pupils: pupils_path.to_str().expect("UTF-8").to_owned(),
        marks: marks_path.to_str().expect("UTF-8").to_owned(),
        expected,
    }
}

/// Returns the arguments of `rollcall import csv` for the dataset.
fn import_args(dataset: &Dataset) -> Vec<String> {
    [
        "import",
        "csv",
        &dataset.pupils,
        &dataset.marks,
        "--profile",
        "rollcall",
        "--school",
        LAESTAB,
        "--school-name",
        "Fault Academy",
        "--phase",
        "secondary",
        "--json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Free loopback ports, found by binding and releasing them.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("address").port())
        .collect()
}

/// A `rollcall serve` process that the test kills and starts again with the same arguments,
/// appending to the same log. Killed when dropped.
struct ServeProcess {
    name: &'static str,
    args: Vec<String>,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl ServeProcess {
    fn start(name: &'static str, args: Vec<String>, port: u16, work: &Path) -> Self {
        let mut process = Self {
            name,
            args,
            port,
            log: work.join(format!("{name}.log")),
            child: None,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(&self.args)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("ROLLCALL_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("rollcall serve starts");
        self.child = Some(child);
    }

    /// Kills the process with SIGKILL, as the kernel's OOM killer or a node failure would.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("a running process");
        child.kill().expect("SIGKILL is sent");
        let status = child.wait().expect("the process ends");
        assert!(!status.success(), "{} was killed: {status}", self.name);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process reports every service it hosts as serving.
    async fn wait_until_serving(&mut self) {
        self.wait_for_health(ServingStatus::Serving).await;
    }

    /// Waits until the process's overall health is `expected`.
    async fn wait_for_health(&mut self, expected: ServingStatus) {
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{} exited with {status}: {}", self.name, self.log());
            }
            if self.health("").await == Some(expected) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Returns the health the process reports for `service`, or `None` when it cannot be
    /// reached.
    async fn health(&self, service: &str) -> Option<ServingStatus> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;

        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).expect("URL");
        let channel = endpoint.connect().await.ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .ok()?;
        Some(response.into_inner().status())
    }

    /// Counts the sync batches the process has logged as finished.
    fn finished_batches(&self) -> usize {
        self.log().matches("Sync batch finished").count()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Arguments of `rollcall serve` for one process hosting every service.
fn serve_args(port: u16, work: &Path, database_url: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "serve".to_owned(),
        "--dev".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".to_owned(),
        work.join("data").to_str().expect("UTF-8").to_owned(),
    ];
    if let Some(url) = database_url {
        args.extend(["--database-url".to_owned(), url.to_owned()]);
    }
    args
}

/// A `rollcall` client command running in the background, with its output in files.
struct ClientProcess {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ClientProcess {
    fn start(target: &[String], args: &[String], work: &Path, name: &str) -> Self {
        let stdout = work.join(format!("{name}.out"));
        let stderr = work.join(format!("{name}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(target)
            .args(args)
            .env_remove("ROLLCALL_TOKEN")
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("rollcall runs");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the command to exit and returns whether it succeeded and its output.
    async fn finish(mut self) -> (bool, String, String) {
        let status = tokio::task::spawn_blocking(move || {
            let status = self.child.wait().expect("the command ends");
            (status, self)
        })
        .await
        .expect("wait thread");
        let (status, process) = status;
        let stdout = std::fs::read_to_string(&process.stdout).unwrap_or_default();
        (status.success(), stdout, process.stderr())
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `condition` is true, checking every [`POLL`].
async fn wait_for(mut condition: impl FnMut() -> bool) {
    while !condition() {
        tokio::time::sleep(POLL).await;
    }
}

/// Where the registers, policy and cases databases are.
#[derive(Debug, Clone)]
enum Storage {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Runs a query on one service's database and returns its rows as text columns.
async fn query(storage: &Storage, service: &str, sql: &str) -> Vec<Vec<String>> {
    use sqlx::Row as _;

    match storage {
        Storage::Sqlite(data_dir) => {
            let path = data_dir.join(format!("{service}.db"));
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
            let pool = sqlx::SqlitePool::connect_with(options)
                .await
                .expect("SQLite opens");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"));
            pool.close().await;
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|index| row.get::<String, _>(index))
                        .collect()
                })
                .collect()
        }
        Storage::Postgres(url) => {
            let schema = service.replace('-', "_");
            let options: sqlx::postgres::PgConnectOptions = url.parse().expect("URL");
            let options = options.options([("search_path", schema.as_str())]);
            let pool = sqlx::PgPool::connect_with(options)
                .await
                .expect("PostgreSQL connects");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"));
            pool.close().await;
            rows.iter()
                .map(|row| {
                    (0..row.len())
                        .map(|index| row.get::<String, _>(index))
                        .collect()
                })
                .collect()
        }
    }
}

/// Checks that the registers hold every expected mark of `laestab` exactly once, with its
/// code, and no other.
async fn assert_marks_exactly_once(
    storage: &Storage,
    laestab: &str,
    expected: &BTreeMap<SessionKey, String>,
) {
    let rows = query(
        storage,
        "registers",
        &format!(
            "SELECT upn, CAST(session_date AS TEXT), session, code FROM marks \
             WHERE laestab = '{laestab}'"
        ),
    )
    .await;
    let mut stored = BTreeMap::new();
    let mut duplicates = Vec::new();
    for row in rows {
        let key = (row[0].clone(), row[1].clone(), row[2].clone());
        if stored.insert(key.clone(), row[3].clone()).is_some() {
            duplicates.push(key);
        }
    }
    assert!(
        duplicates.is_empty(),
        "{} sessions stored twice, first {:?}",
        duplicates.len(),
        duplicates.first()
    );
    assert_eq!(stored.len(), expected.len(), "marks stored at {laestab}");
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, code)| stored.get(*key) != Some(*code))
        .take(3)
        .collect();
    assert!(wrong.is_empty(), "marks missing or wrong: {wrong:?}");
}

/// Checks that no trigger was raised twice in a row for one pupil and kind, and that no
/// pupil has two cases for one concern.
async fn assert_no_duplicate_triggers_or_cases(storage: &Storage) {
    let triggers = query(
        storage,
        "policy",
        "SELECT upn, kind, state FROM triggers ORDER BY sequence",
    )
    .await;
    assert!(!triggers.is_empty(), "the policy service raised no trigger");
    let mut last_state: BTreeMap<(String, String), String> = BTreeMap::new();
    for row in &triggers {
        let key = (row[0].clone(), row[1].clone());
        let previous = last_state.insert(key.clone(), row[2].clone());
        assert_ne!(
            previous.as_deref(),
            Some(row[2].as_str()),
            "trigger {key:?} went to {} twice in a row",
            row[2]
        );
    }

    let cases = query(storage, "cases", "SELECT upn, concern FROM cases").await;
    assert!(!cases.is_empty(), "the cases service opened no case");
    let unique: BTreeSet<&Vec<String>> = cases.iter().collect();
    assert_eq!(
        unique.len(),
        cases.len(),
        "a pupil has two cases for a concern"
    );
}

/// The figures and cases of a school as `rollcall` prints them, without what depends on
/// when the services ran: case ids, times and review dates.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    attendance: Value,
    cases: BTreeSet<String>,
}

async fn outcome(target: &[String]) -> Outcome {
    let run = |args: &[&str]| {
        let mut full = target.to_vec();
        full.extend(args.iter().map(|arg| (*arg).to_owned()));
        common::run_offline(full)
    };
    let report = run(&["report", "attendance", "--school", LAESTAB, "--json"]).await;
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let cases = run(&["cases", "list", "--school", LAESTAB, "--json"]).await;
    assert!(
        cases.status.success(),
        "{}",
        String::from_utf8_lossy(&cases.stderr)
    );
    let cases: Value = serde_json::from_slice(&cases.stdout).expect("JSON");
    Outcome {
        attendance: serde_json::from_slice(&report.stdout).expect("JSON"),
        cases: cases
            .as_array()
            .expect("array")
            .iter()
            .map(|case| {
                format!(
                    "{} {} stage {} {}",
                    case["upn"], case["concern"], case["stage_number"], case["status"]
                )
            })
            .collect(),
    }
}

/// Returns the outcome of the import on a server that nothing disturbs, computed once per
/// test process.
async fn clean_outcome() -> &'static Outcome {
    static CLEAN: OnceCell<Outcome> = OnceCell::const_new();
    CLEAN
        .get_or_init(|| async {
            let work = tempfile::tempdir().expect("temporary folder");
            let dataset = write_dataset(work.path());
            let port = free_ports(1)[0];
            let mut server = ServeProcess::start(
                "clean",
                serve_args(port, work.path(), None),
                port,
                work.path(),
            );
            server.wait_until_serving().await;
            let target = vec!["--server".to_owned(), server.url()];
            let import =
                ClientProcess::start(&target, &import_args(&dataset), work.path(), "clean");
            let (succeeded, _, stderr) = import.finish().await;
            assert!(succeeded, "the clean import failed: {stderr}");
            outcome(&target).await
        })
        .await
}

/// Checks the import's JSON summary: every row applied, none rejected.
fn assert_summary_complete(stdout: &str) {
    let summary: Value = serde_json::from_str(stdout)
        .unwrap_or_else(|error| panic!("{error}: the summary is not JSON: {stdout}"));
    assert_eq!(
        summary["rejected"], 0,
        "no row is rejected: {}",
        summary["rejections"]
    );
    let applied = summary["applied"].as_u64().expect("applied")
        + summary["unchanged"].as_u64().expect("unchanged");
    assert_eq!(
        applied,
        u64::from(PUPILS) + (u64::from(PUPILS) * DAYS as u64 * 2),
        "{summary}"
    );
}

/// Kills the single `rollcall serve` process part-way through a CSV import and starts it
/// again on the same storage. The running `rollcall import csv` retries by itself.
async fn server_killed_during_import(database_url: Option<String>) {
    let work = tempfile::tempdir().expect("temporary folder");
    let dataset = write_dataset(work.path());
    let storage = match &database_url {
        Some(url) => Storage::Postgres(url.clone()),
        None => Storage::Sqlite(work.path().join("data")),
    };
    let port = free_ports(1)[0];
    let mut server = ServeProcess::start(
        "serve",
        serve_args(port, work.path(), database_url.as_deref()),
        port,
        work.path(),
    );
    server.wait_until_serving().await;
    let target = vec!["--server".to_owned(), server.url()];

    let import = ClientProcess::start(&target, &import_args(&dataset), work.path(), "import");
    wait_for(|| server.finished_batches() >= 6).await;
    server.kill();
    let before_restart = query(
        &storage,
        "registers",
        &format!("SELECT CAST(COUNT(*) AS TEXT) FROM marks WHERE laestab = '{LAESTAB}'"),
    )
    .await;
    let stored: usize = before_restart[0][0].parse().expect("count");
    assert!(stored > 0, "some marks were stored before the kill");
    assert!(stored < dataset.expected.len(), "the kill came part-way");

    server.spawn();
    server.wait_until_serving().await;
    let (succeeded, stdout, stderr) = import.finish().await;
    assert!(
        succeeded,
        "the import did not survive the restart: {stderr}"
    );
    assert!(stderr.contains("Retrying in"), "{stderr}");
    assert_summary_complete(&stdout);

    assert_marks_exactly_once(&storage, LAESTAB, &dataset.expected).await;
    assert_no_duplicate_triggers_or_cases(&storage).await;
    assert_eq!(&outcome(&target).await, clean_outcome().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_survives_kill_on_sqlite() {
    server_killed_during_import(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_survives_kill_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    server_killed_during_import(Some(url)).await;
}

/// Schools in the CTF fault test, one file each.
const CTF_SCHOOLS: u8 = 6;
/// Pupils in each CTF file.
const CTF_PUPILS: u32 = 150;
/// School weeks of marks in each CTF file, from Monday 1 September 2025.
const CTF_WEEKS: usize = 12;

/// Writes one school's Common Transfer File: every pupil present at every session of
/// [`CTF_WEEKS`] weeks. Returns its path.
fn write_ctf_file(dir: &Path, school: u8) -> PathBuf {
    let estab = format!("300{school}");
    let week = format!("{}####", r"/\".repeat(5));
    let marks = week.repeat(CTF_WEEKS);
    let sessions = 10 * CTF_WEEKS;
    let pupils: String = (0..CTF_PUPILS)
        .map(|serial| {
            format!(
                "<Pupil><UPN>{}</UPN><Surname>Pupil</Surname><Forename>Sam</Forename>\
                 <DOB>2013-05-01</DOB><Gender>F</Gender>\
                 <BasicDetails><NCyearActual>8</NCyearActual></BasicDetails>\
                 <Attendance><YearData><Year>2025</Year><LEA>919</LEA><Estab>{estab}</Estab>\
                 <SchoolName>CTF Academy {school}</SchoolName>\
                 <SessionsPossible>{sessions}</SessionsPossible>\
                 <SessionsAuthorised>0</SessionsAuthorised>\
                 <SessionsAttended>{sessions}</SessionsAttended>\
                 <SessionsUnauthorised>0</SessionsUnauthorised>\
                 <AttendSessions><AttendanceStartDate>2025-09-01</AttendanceStartDate>\
                 <AttendanceMarks>{marks}</AttendanceMarks></AttendSessions>\
                 </YearData></Attendance></Pupil>",
                upn(school, serial)
            )
        })
        .collect();
    let file = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CTfile><Header>\
         <DocumentName>Common Transfer File</DocumentName><CTFversion>25.0</CTFversion>\
         <DateTime>2025-11-28T16:00:00</DateTime><SourceSchool><LEA>919</LEA>\
         <Estab>{estab}</Estab><SchoolName>CTF Academy {school}</SchoolName>\
         <AcademicYear>2025</AcademicYear></SourceSchool></Header>\
         <CTFpupilData>{pupils}</CTFpupilData></CTfile>"
    );
    let path = dir.join(format!("ctf-{school}.xml"));
    std::fs::write(&path, file).expect("CTF file");
    path
}

/// Kills the server after the first of several CTF files is imported and starts it again
/// once the running `rollcall import ctf` reports that it is retrying. The command imports
/// every file, and every mark is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctf_import_survives_kill() {
    let work = tempfile::tempdir().expect("temporary folder");
    let files: Vec<String> = (1..=CTF_SCHOOLS)
        .map(|school| {
            let path = write_ctf_file(work.path(), school);
            path.to_str().expect("UTF-8").to_owned()
        })
        .collect();
    let storage = Storage::Sqlite(work.path().join("data"));
    let port = free_ports(1)[0];
    let mut server = ServeProcess::start(
        "serve",
        serve_args(port, work.path(), None),
        port,
        work.path(),
    );
    server.wait_until_serving().await;
    let target = vec!["--server".to_owned(), server.url()];

    let mut args = vec!["import".to_owned(), "ctf".to_owned()];
    args.extend(files.iter().cloned());
    let import = ClientProcess::start(&target, &args, work.path(), "import-ctf");
    wait_for(|| server.log().contains("CTF import finished")).await;
    server.kill();
    wait_for(|| import.stderr().contains("retrying in")).await;
    server.spawn();
    server.wait_until_serving().await;

    let (succeeded, stdout, stderr) = import.finish().await;
    assert!(
        succeeded,
        "the import did not survive the restart: {stderr}"
    );
    for school in 1..=CTF_SCHOOLS {
        let file = format!("ctf-{school}.xml");
        assert!(
            stdout.lines().any(|line| line.contains(&file)),
            "{file} missing from the summary: {stdout}"
        );
    }
    let per_school = i64::from(CTF_PUPILS) * i64::try_from(10 * CTF_WEEKS).expect("count");
    let counts = query(
        &storage,
        "registers",
        "SELECT laestab, CAST(COUNT(*) AS TEXT), \
         CAST(COUNT(DISTINCT upn || session_date || session) AS TEXT) \
         FROM marks GROUP BY laestab ORDER BY laestab",
    )
    .await;
    assert_eq!(counts.len(), usize::from(CTF_SCHOOLS), "{counts:?}");
    for row in counts {
        assert_eq!(row[1], per_school.to_string(), "marks of {}", row[0]);
        assert_eq!(row[2], per_school.to_string(), "sessions of {}", row[0]);
    }
}

/// Pupils of the second school, which the test's own SyncMarks client writes to.
const SECOND_PUPILS: u32 = 30;

/// Imports the second school's pupils with `rollcall import csv`.
async fn import_second_school_pupils(target: &[String], work: &Path) {
    let mut pupils =
        "mis_id,upn,forename,surname,date_of_birth,sex,admission_date,year_group\n".to_owned();
    for serial in 1..=SECOND_PUPILS {
        pupils.push_str(&format!(
            "Q{serial},{},Test,Pupil {serial},2013-05-01,F,2025-09-01,8\n",
            upn(2, serial)
        ));
    }
    let path = work.join("second-pupils.csv");
    std::fs::write(&path, pupils).expect("file written");
    let mut args = target.to_vec();
    args.extend(
        [
            "import",
            "csv",
            path.to_str().expect("UTF-8"),
            "--profile",
            "rollcall",
            "--school",
            SECOND_LAESTAB,
            "--school-name",
            "Second Academy",
            "--phase",
            "secondary",
        ]
        .map(str::to_owned),
    );
    let output = common::run_offline(args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The record of the test's own SyncMarks client: the marks of every batch that got an OK
/// response, and the status codes of the attempts that failed.
#[derive(Debug, Default)]
struct AckedBatches {
    marks: BTreeMap<SessionKey, String>,
    batches: usize,
    failures: Vec<tonic::Code>,
}

/// Sends one SyncMarks batch per session of the second school, each under its own key, until
/// `stop` is set. A failed batch is sent again with the same key until it succeeds, as
/// docs/mis-vendors.md asks of MIS vendors. A batch that succeeded is never sent again.
async fn send_acked_batches(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<AckedBatches>>,
) {
    use rollcall_api::mis_adapter::v1::SyncMark;
    use rollcall_api::types::v1::Session;

    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("URL")
        .connect_lazy();
    let mut client = MisSyncServiceClient::new(channel);
    for day in weekdays(300) {
        for (session_name, session) in [("AM", Session::Am), ("PM", Session::Pm)] {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let marks: Vec<SyncMark> = (1..=SECOND_PUPILS)
                .map(|serial| SyncMark {
                    mis_id: format!("Q{serial}"),
                    date: day.to_string(),
                    session: session as i32,
                    code: "/".to_owned(),
                    ..SyncMark::default()
                })
                .collect();
            let request = SyncMarksRequest {
                laestab: SECOND_LAESTAB.to_owned(),
                idempotency_key: format!("second-{day}-{session_name}"),
                source_name: "fault test".to_owned(),
                dry_run: false,
                marks,
            };
            let mut attempts = 0;
            loop {
                attempts += 1;
                assert!(
                    attempts < 2_000,
                    "batch {day} {session_name} never answered"
                );
                match client.sync_marks(request.clone()).await {
                    Ok(response) => {
                        let counts = response.into_inner().counts.expect("counts");
                        assert_eq!(counts.rejected, 0, "{day} {session_name}");
                        let mut acked = acked.lock().expect("lock");
                        acked.batches += 1;
                        for serial in 1..=SECOND_PUPILS {
                            acked.marks.insert(
                                (upn(2, serial), day.to_string(), session_name.to_owned()),
                                "/".to_owned(),
                            );
                        }
                        break;
                    }
                    Err(status) => {
                        acked.lock().expect("lock").failures.push(status.code());
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
}

/// How the test takes the database away.
#[derive(Debug, Clone, Copy)]
enum DatabaseFault {
    /// `pg_ctl stop -m fast`: sessions end and open transactions roll back.
    FastStop,
    /// SIGKILL to the postmaster, as a crash would; the server recovers from its WAL.
    KillPostmaster,
}

/// Takes PostgreSQL away while `rollcall import csv` and a SyncMarks client send batches,
/// waits until both have seen the failure, and starts it again on the same data directory
/// and port.
async fn database_lost_during_ingest(fault: DatabaseFault) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let postgres = rollcall_testkit::owned_postgres()
        .await
        .expect("PostgreSQL of the test's own");
    let url = postgres.server().create_database().await.expect("database");
    let storage = Storage::Postgres(url.clone());
    let work = tempfile::tempdir().expect("temporary folder");
    let dataset = write_dataset(work.path());
    let port = free_ports(1)[0];
    let mut server = ServeProcess::start(
        "serve",
        serve_args(port, work.path(), Some(&url)),
        port,
        work.path(),
    );
    server.wait_until_serving().await;
    let target = vec!["--server".to_owned(), server.url()];
    import_second_school_pupils(&target, work.path()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(AckedBatches::default()));
    let sender = tokio::spawn(send_acked_batches(
        server.url(),
        Arc::clone(&stop),
        Arc::clone(&acked),
    ));
    let import = ClientProcess::start(&target, &import_args(&dataset), work.path(), "import");
    wait_for(|| server.finished_batches() >= 6).await;

    match fault {
        DatabaseFault::FastStop => postgres.stop_fast().await.expect("PostgreSQL stops"),
        DatabaseFault::KillPostmaster => {
            postgres.kill_postmaster().expect("postmaster killed");
        }
    }
    // Both clients must have seen the database gone before it comes back.
    wait_for(|| {
        import.stderr().contains("Retrying in") && !acked.lock().expect("lock").failures.is_empty()
    })
    .await;
    // Health reports the lost database, so that probes stop sending calls.
    server.wait_for_health(ServingStatus::NotServing).await;
    assert_eq!(
        server.health("liveness").await,
        Some(ServingStatus::Serving),
        "liveness must not fail while only the database is away"
    );
    let acked_before_restart = acked.lock().expect("lock").batches;
    postgres.start().await.expect("PostgreSQL starts again");

    // The server reconnects by itself: health turns SERVING again, and batches succeed
    // again.
    server.wait_until_serving().await;
    wait_for(|| acked.lock().expect("lock").batches >= acked_before_restart + 3).await;
    let (succeeded, stdout, stderr) = import.finish().await;
    assert!(
        succeeded,
        "the import did not survive the database restart: {stderr}"
    );
    assert_summary_complete(&stdout);
    assert!(
        stderr.contains("Retrying in") && stderr.contains("attempt 2 of"),
        "{stderr}"
    );
    stop.store(true, Ordering::SeqCst);
    sender.await.expect("the SyncMarks client finishes");

    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    for code in &acked.failures {
        assert!(
            matches!(code, tonic::Code::Unavailable | tonic::Code::Aborted),
            "a lost database must give a status worth retrying, not {code:?}"
        );
    }
    assert_marks_exactly_once(&storage, LAESTAB, &dataset.expected).await;
    assert_marks_exactly_once(&storage, SECOND_LAESTAB, &acked.marks).await;
    assert_no_duplicate_triggers_or_cases(&storage).await;
    assert_eq!(&outcome(&target).await, clean_outcome().await);

    // The log names the failure and the batches sent again by their keys.
    let log = server.log();
    assert!(log.contains("Storage error"), "{log}");
    let retried_key = failed_key_finished_later(&log);
    assert!(
        retried_key.is_some(),
        "no batch key was logged as failed and then as finished: {log}"
    );
    // Logs carry ids such as UPNs and keys, never names (docs/security.md).
    assert!(!log.contains("Pupil 1"), "a pupil's name is in the log");
}

/// Returns the key of a batch that the log shows as failed and later as finished.
fn failed_key_finished_later(log: &str) -> Option<String> {
    let key_of = |line: &str| {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix("key="))
            .map(str::to_owned)
    };
    let mut failed = BTreeSet::new();
    for line in log.lines() {
        if line.contains("Sync batch failed") {
            failed.extend(key_of(line));
        } else if line.contains("Sync batch finished")
            && let Some(key) = key_of(line)
            && failed.contains(&key)
        {
            return Some(key);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_survives_postgres_fast_stop() {
    database_lost_during_ingest(DatabaseFault::FastStop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_survives_postmaster_kill() {
    database_lost_during_ingest(DatabaseFault::KillPostmaster).await;
}

/// Five `rollcall serve --only` processes on PostgreSQL. During one import the cases,
/// policy, MIS adapter and registers processes are each killed with SIGKILL and started
/// again, in that order, each once the MIS adapter has logged more finished batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_import_survives_kills() {
    let database_url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    let storage = Storage::Postgres(database_url.clone());
    let work = tempfile::tempdir().expect("temporary folder");
    let dataset = write_dataset(work.path());

    let migrate = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["migrate", "--database-url", &database_url])
        .output()
        .expect("rollcall migrate runs");
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let services: [(&'static str, &str); 5] = [
        ("registers", "registers,audit"),
        ("policy", "policy"),
        ("cases", "cases"),
        ("referrals", "referrals"),
        ("mis-adapter", "mis-adapter"),
    ];
    let ports = free_ports(services.len());
    let url = |index: usize| format!("http://127.0.0.1:{}", ports[index]);
    let addresses: Vec<String> = [
        ("--registers-url", url(0)),
        ("--policy-url", url(1)),
        ("--cases-url", url(2)),
        ("--referrals-url", url(3)),
        ("--mis-adapter-url", url(4)),
        ("--audit-url", url(0)),
    ]
    .into_iter()
    .flat_map(|(option, value)| [option.to_owned(), value])
    .collect();
    let mut processes: Vec<ServeProcess> = services
        .iter()
        .enumerate()
        .map(|(index, &(name, only))| {
            let mut args = addresses.clone();
            args.extend(
                [
                    "serve",
                    "--dev",
                    "--only",
                    only,
                    "--database-url",
                    &database_url,
                    "--listen",
                    &format!("127.0.0.1:{}", ports[index]),
                    "--data-dir",
                    work.path().join(name).to_str().expect("UTF-8"),
                ]
                .map(str::to_owned),
            );
            ServeProcess::start(name, args, ports[index], work.path())
        })
        .collect();
    for process in &mut processes {
        process.wait_until_serving().await;
    }

    let import = ClientProcess::start(&addresses, &import_args(&dataset), work.path(), "import");
    let (registers, policy, cases, mis_adapter) = (0, 1, 2, 4);
    for (victim, after_batches) in [(cases, 4), (policy, 10), (mis_adapter, 16), (registers, 24)] {
        wait_for(|| processes[mis_adapter].finished_batches() >= after_batches).await;
        processes[victim].kill();
        processes[victim].spawn();
        processes[victim].wait_until_serving().await;
    }
    let (succeeded, stdout, stderr) = import.finish().await;
    if !succeeded {
        for process in &processes {
            eprintln!("--- {} ---\n{}", process.name, process.log());
        }
    }
    assert!(succeeded, "the import did not survive the kills: {stderr}");
    assert!(stderr.contains("Retrying in"), "{stderr}");
    assert_summary_complete(&stdout);

    assert_marks_exactly_once(&storage, LAESTAB, &dataset.expected).await;
    assert_no_duplicate_triggers_or_cases(&storage).await;
    assert_eq!(&outcome(&addresses).await, clean_outcome().await);
    for process in &processes {
        assert!(!process.log().contains("panicked"), "{}", process.log());
    }
}

/// A WatchMarks and a WatchTriggers consumer drop their connection in the middle of a stream
/// while an import runs, then resume from the last cursor they processed. Together the two
/// streams of each give every entry once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_consumers_resume_without_gaps() {
    use rollcall_api::policy::v1::WatchTriggersRequest;
    use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;

    let work = tempfile::tempdir().expect("temporary folder");
    let dataset = write_dataset(work.path());
    let storage = Storage::Sqlite(work.path().join("data"));
    let port = free_ports(1)[0];
    let mut server = ServeProcess::start(
        "serve",
        serve_args(port, work.path(), None),
        port,
        work.path(),
    );
    server.wait_until_serving().await;
    let target = vec!["--server".to_owned(), server.url()];
    let import = ClientProcess::start(&target, &import_args(&dataset), work.path(), "import");

    // Each consumer gets its own connection, which it drops with the stream half read.
    let url = server.url();
    let connect = || {
        let url = url.clone();
        async move {
            tonic::transport::Endpoint::from_shared(url)
                .expect("URL")
                .connect()
                .await
                .expect("connect")
        }
    };
    let mut marks_seen = Vec::new();
    {
        let mut stream = RegistersServiceClient::new(connect().await)
            .watch_marks(WatchMarksRequest {
                cursor: 0,
                laestab: String::new(),
            })
            .await
            .expect("watch")
            .into_inner();
        while marks_seen.len() < 3_000 {
            let message = stream.message().await.expect("message").expect("a mark");
            marks_seen.push(message.cursor);
        }
    }
    let (succeeded, _, stderr) = import.finish().await;
    assert!(succeeded, "{stderr}");
    let head = i64::try_from(dataset.expected.len()).expect("count");
    let mut stream = RegistersServiceClient::new(connect().await)
        .watch_marks(WatchMarksRequest {
            cursor: *marks_seen.last().expect("a cursor"),
            laestab: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    while *marks_seen.last().expect("a cursor") < head {
        let message = stream.message().await.expect("message").expect("a mark");
        marks_seen.push(message.cursor);
    }
    let expected: Vec<i64> = (1..=head).collect();
    assert_eq!(
        marks_seen.len(),
        expected.len(),
        "a mark is missing or came twice"
    );
    assert_eq!(marks_seen, expected);

    // Triggers: read a few, drop the connection, resume, and compare with one full read.
    let trigger_count = query(
        &storage,
        "policy",
        "SELECT CAST(COUNT(*) AS TEXT) FROM triggers",
    )
    .await[0][0]
        .parse::<usize>()
        .expect("count");
    assert!(trigger_count > 10, "{trigger_count} triggers");
    let read = |cursor: i64, count: usize| {
        let connect = connect();
        async move {
            let mut stream = PolicyServiceClient::new(connect.await)
                .watch_triggers(WatchTriggersRequest { cursor })
                .await
                .expect("watch")
                .into_inner();
            let mut triggers = Vec::new();
            while triggers.len() < count {
                let message = stream.message().await.expect("message").expect("a trigger");
                let trigger = message.trigger.expect("trigger");
                triggers.push((message.cursor, trigger.id));
            }
            triggers
        }
    };
    let mut resumed = read(0, trigger_count / 2).await;
    let cursor = resumed.last().expect("a trigger").0;
    resumed.extend(read(cursor, trigger_count - resumed.len()).await);
    let whole = read(0, trigger_count).await;
    assert_eq!(resumed, whole);
    drop(server);
}
