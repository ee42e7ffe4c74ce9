//! End to end: a real server on loopback, a hand-made Common Transfer File whose figures were
//! worked out by hand, and the `rollcall` command as a user runs it, on SQLite and PostgreSQL.
//!
//! The file covers two school weeks, Monday 1 to Friday 12 September 2025 (20 sessions):
//!
//! | pupil | marks | possible | attended | auth | unauth | % | persistent | severe |
//! |---|---|---|---|---|---|---|---|---|
//! | A | 18 present, 2 I | 20 | 18 | 2 | 0 | 90.0 | yes (exactly 10%) | no |
//! | B | joined 8 Sept: 8 present, 2 O | 10 | 8 | 0 | 2 | 80.0 | yes | no |
//! | C | L, U, 14 O, Q, D, 2 present | 18 | 3 | 0 | 15 | 16.7 | yes | yes |
//! | D | L, 18 present, M | 20 | 19 | 1 | 0 | 95.0 | no | no |
//!
//! L (late before the register closed) counts as present; U (after it closed) is unauthorised;
//! Q and D are not possible sessions. C has met the trust policy's 15-session warning threshold.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use rollcall_cli::server::{self, ServerConfig};
use rollcall_domain::Upn;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn upn(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, serial]).to_string()
}

fn pupil_xml(upn: &str, surname: &str, start: &str, marks: &str, totals: [u32; 4]) -> String {
    let [possible, authorised, attended, unauthorised] = totals;
    format!(
        "<Pupil><UPN>{upn}</UPN><Surname>{surname}</Surname><Forename>Sam</Forename>\
         <DOB>2013-05-01</DOB><Gender>F</Gender><BasicDetails><NCyearActual>8</NCyearActual></BasicDetails>\
         <Attendance><YearData><Year>2025</Year><LEA>919</LEA><Estab>2001</Estab><SchoolName>Test Academy</SchoolName>\
         <SessionsPossible>{possible}</SessionsPossible><SessionsAuthorised>{authorised}</SessionsAuthorised>\
         <SessionsAttended>{attended}</SessionsAttended><SessionsUnauthorised>{unauthorised}</SessionsUnauthorised>\
         <AttendSessions><AttendanceStartDate>{start}</AttendanceStartDate>\
         <AttendanceMarks>{marks}</AttendanceMarks></AttendSessions></YearData></Attendance></Pupil>"
    )
}

fn ctf() -> String {
    let weekend = "####";
    let pupils = [
        pupil_xml(
            &upn(1),
            "Able",
            "2025-09-01",
            &format!(r"/\/\/\/\/\{weekend}/\/\/\II/\"),
            [20, 2, 18, 0],
        ),
        pupil_xml(&upn(2), "Baker", "2025-09-08", r"/\/\OO/\/\", [10, 0, 8, 2]),
        pupil_xml(
            &upn(3),
            "Cole",
            "2025-09-01",
            &format!(r"LUOOOOOOOO{weekend}OOOOOOQD/\"),
            [18, 0, 3, 15],
        ),
        // D's file total for possible sessions is wrong on purpose (21, not 20).
        pupil_xml(
            &upn(4),
            "Dale",
            "2025-09-01",
            &format!(r"L\/\/\/\/\{weekend}/\/\M\/\/\"),
            [21, 1, 19, 0],
        ),
    ];
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CTfile><Header><DocumentName>Common Transfer File</DocumentName>\
         <CTFversion>25.0</CTFversion><DateTime>2025-09-12T16:00:00</DateTime>\
         <SourceSchool><LEA>919</LEA><Estab>2001</Estab><SchoolName>Test Academy</SchoolName>\
         <AcademicYear>2025</AcademicYear></SourceSchool></Header><CTFpupilData>{}</CTFpupilData></CTfile>",
        pupils.concat()
    )
}

/// Where the `rollcall` commands find the services, and the token they send.
#[derive(Debug, Clone)]
struct Target {
    /// Options that name the server or servers, such as `--server URL`.
    options: Vec<String>,
    /// The access token, sent through ROLLCALL_TOKEN.
    token: Option<String>,
}

impl Target {
    fn server(url: &str) -> Self {
        Target {
            options: vec!["--server".to_owned(), url.to_owned()],
            token: None,
        }
    }
}

fn rollcall(target: &Target, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rollcall"));
    command.args(&target.options).args(args);
    match &target.token {
        Some(token) => command.env("ROLLCALL_TOKEN", token),
        None => command.env_remove("ROLLCALL_TOKEN"),
    };
    command.output().expect("the rollcall binary runs")
}

fn build_pack(target: &Target, upn: &str, out: &Path) -> Output {
    let out = out.to_str().expect("UTF-8 path");
    rollcall(target, &["referral", "pack", "--upn", upn, "--out", out])
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// Amends pupil A's illness on Thursday morning to present, which takes A from exactly 10%
/// absence to 5%: the persistent-absence trigger is withdrawn and A's case goes up for review.
fn check_amendment(target: &Target, work: &Path) {
    let session = ["--upn", &upn(1), "--date", "2025-09-11", "--session", "AM"];
    // X is for pupils not of compulsory school age; pupil A is 12.
    let x_mark = rollcall(
        target,
        &[
            &["marks", "amend"][..],
            &session,
            &[
                "--code",
                "X",
                "--reason",
                "Test",
                "--by",
                "J Smith",
                "--position",
                "Attendance officer",
            ],
        ]
        .concat(),
    );
    assert!(!x_mark.status.success());
    assert!(String::from_utf8_lossy(&x_mark.stderr).contains("compulsory school age"));

    let no_reason = rollcall(
        target,
        &[
            &["marks", "amend"][..],
            &session,
            &[
                "--code",
                "/",
                "--reason",
                " ",
                "--by",
                "J Smith",
                "--position",
                "Attendance officer",
            ],
        ]
        .concat(),
    );
    assert!(!no_reason.status.success());
    assert!(String::from_utf8_lossy(&no_reason.stderr).contains("reason"));

    let amended = rollcall(
        target,
        &[
            &["marks", "amend"][..],
            &session,
            &[
                "--code",
                "/",
                "--reason",
                "Doctor's note was for the afternoon",
                "--by",
                "J Smith",
                "--position",
                "Attendance officer",
            ],
        ]
        .concat(),
    );
    assert!(
        amended.status.success(),
        "{}",
        String::from_utf8_lossy(&amended.stderr)
    );
    assert!(String::from_utf8_lossy(&amended.stdout).contains("from I to /"));

    let history = stdout_json(&rollcall(
        target,
        &[&["marks", "history"][..], &session, &["--json"]].concat(),
    ));
    let versions = history.as_array().expect("array");
    assert_eq!(versions.len(), 2, "{history}");
    assert_eq!(versions[0]["code"], "I");
    assert_eq!(versions[0]["source"], "import");
    assert_eq!(versions[0]["effective"], false);
    assert_eq!(versions[1]["code"], "/");
    assert_eq!(versions[1]["source"], "staff");
    assert_eq!(versions[1]["reason"], "Doctor's note was for the afternoon");
    assert_eq!(versions[1]["recorded_by"], "J Smith");
    assert_eq!(versions[1]["recorded_by_position"], "Attendance officer");
    assert_eq!(versions[1]["effective"], true);
    assert!(
        versions[1]["recorded_at"]
            .as_str()
            .is_some_and(|at| !at.is_empty())
    );

    // A later import of an export made before the amendment does not undo it: the export's
    // marks were taken when it was made, before the amendment.
    let export = work.join("test-academy-again.xml");
    std::fs::write(
        &export,
        ctf().replace("2025-09-12T16:00:00", "2025-09-12T17:00:00"),
    )
    .expect("write");
    let reimport = rollcall(target, &["import", "ctf", export.to_str().expect("utf-8")]);
    assert!(
        reimport.status.success(),
        "{}",
        String::from_utf8_lossy(&reimport.stderr)
    );
    let history = stdout_json(&rollcall(
        target,
        &[&["marks", "history"][..], &session, &["--json"]].concat(),
    ));
    let versions = history.as_array().expect("array");
    assert_eq!(versions.len(), 3, "{history}");
    assert_eq!(versions[2]["code"], "I");
    assert_eq!(
        versions[2]["effective"], false,
        "the export is older than the amendment"
    );
    assert_eq!(versions[1]["effective"], true);

    let report = stdout_json(&rollcall(
        target,
        &["report", "attendance", "--school", "9192001", "--json"],
    ));
    let pupil_a = report
        .as_array()
        .expect("array")
        .iter()
        .find(|row| row["upn"] == upn(1).as_str())
        .expect("pupil A");
    assert_eq!(pupil_a["attendance_percent"].as_f64(), Some(95.0));
    assert_eq!(pupil_a["persistent_absence"], false);

    let cases = stdout_json(&rollcall(
        target,
        &["cases", "list", "--school", "9192001", "--json"],
    ));
    let case_a = cases
        .as_array()
        .expect("array")
        .iter()
        .find(|case| case["upn"] == upn(1).as_str())
        .expect("A's case is kept, not closed");
    assert_eq!(case_a["status"], "review");
    assert_eq!(case_a["opened_on"], "2025-09-12", "the trigger's date");

    // After review, staff keep the case open.
    let case_id = case_a["id"].as_str().expect("id").to_owned();
    let kept = rollcall(
        target,
        &[
            "case",
            "keep-open",
            "--case",
            &case_id,
            "--reason",
            "Attendance only just recovered; keep monitoring",
            "--by",
            "P Green",
            "--role",
            "head_of_year",
            "--on",
            "2025-09-15",
        ],
    );
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    let cases = stdout_json(&rollcall(
        target,
        &["cases", "list", "--school", "9192001", "--json"],
    ));
    let status = cases
        .as_array()
        .expect("array")
        .iter()
        .find(|case| case["id"] == case_id.as_str())
        .map(|case| case["status"].clone());
    assert_eq!(status, Some(serde_json::json!("open")));
}

/// Sets the school's calendar with Friday 12 September as an INSET day: the eight marks on it
/// get # versions, and the figures leave that day out.
fn check_calendar(target: &Target, work: &Path) {
    let bad = work.join("bad-calendar.json");
    std::fs::write(&bad, r#"{"time_zone": "Europe/London", "holidays": []}"#).expect("write");
    let output = rollcall(
        target,
        &[
            "calendar",
            "set",
            "--school",
            "9192001",
            "--file",
            bad.to_str().expect("utf-8"),
            "--by",
            "J Smith",
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad-calendar.json") && stderr.contains("holidays"),
        "{stderr}"
    );

    let file = work.join("calendar.json");
    let calendar = serde_json::json!({
        "time_zone": "Europe/London",
        "am": {"opens": "08:40", "closes": "09:00"},
        "pm": {"opens": "13:15", "closes": "13:30"},
        "terms": [{"name": "Autumn 2025", "first_day": "2025-09-01", "last_day": "2025-12-19"}],
        "closures": [{"date": "2025-09-12", "kind": "planned", "reason": "INSET day"}],
    });
    std::fs::write(&file, calendar.to_string()).expect("write");
    let output = rollcall(
        target,
        &[
            "calendar",
            "set",
            "--school",
            "9192001",
            "--file",
            file.to_str().expect("utf-8"),
            "--by",
            "J Smith",
            "--position",
            "Data manager",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("8 marks on new planned closures"),
        "{stdout}"
    );

    let shown = stdout_json(&rollcall(
        target,
        &["calendar", "show", "--school", "9192001"],
    ));
    assert_eq!(shown["closures"][0]["date"], "2025-09-12");
    assert_eq!(shown["am"]["closes"], "09:00");

    // Pupil C was present on Friday: 16 possible sessions, 1 attended, 15 unauthorised.
    let report = stdout_json(&rollcall(
        target,
        &["report", "attendance", "--school", "9192001", "--json"],
    ));
    let pupil_c = report
        .as_array()
        .expect("array")
        .iter()
        .find(|row| row["upn"] == upn(3).as_str())
        .expect("pupil C");
    assert_eq!(pupil_c["possible_sessions"], 16);
    assert_eq!(pupil_c["attended_sessions"], 1);
    assert_eq!(pupil_c["unauthorised_absence_sessions"], 15);
    assert_eq!(pupil_c["attendance_percent"].as_f64(), Some(6.3));
}

async fn run_main_job(database_url: Option<String>, work: &Path) {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url.as_deref(),
    )
    .expect("config");
    let running = server::start(config).await.expect("server starts");
    let result = run_checks(Target::server(&running.url()), work).await;
    running.stop().await.expect("server stops");
    if let Err(error) = result {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Runs the main job's commands against `target`; the error is a failed check's panic.
async fn run_checks(target: Target, work: &Path) -> Result<(), tokio::task::JoinError> {
    let work = work.to_path_buf();
    let checks = tokio::task::spawn_blocking(move || {
        // A truncated file is rejected with its name, and nothing from it is stored.
        let full = ctf();
        let truncated = work.join("truncated.xml");
        std::fs::write(&truncated, &full[..full.len() / 2]).expect("write");
        let output = rollcall(
            &target,
            &["import", "ctf", truncated.to_str().expect("utf-8")],
        );
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("truncated.xml"), "{stderr}");

        let file = work.join("test-academy.xml");
        std::fs::write(&file, &full).expect("write");
        let output = rollcall(&target, &["import", "ctf", file.to_str().expect("utf-8")]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("4 pupils"), "{stdout}");
        assert!(
            stdout.contains(&upn(4)) && stdout.contains("SessionsPossible"),
            "{stdout}"
        );

        // Importing the same file again changes nothing.
        let again = rollcall(&target, &["import", "ctf", file.to_str().expect("utf-8")]);
        assert!(String::from_utf8_lossy(&again.stdout).contains("already imported"));

        let report = stdout_json(&rollcall(
            &target,
            &["report", "attendance", "--school", "9192001", "--json"],
        ));
        let rows = report.as_array().expect("array");
        assert_eq!(rows.len(), 4);
        let expected = [
            (upn(1), 20, 18, 2, 0, 90.0, true, false),
            (upn(2), 10, 8, 0, 2, 80.0, true, false),
            (upn(3), 18, 3, 0, 15, 16.7, true, true),
            (upn(4), 20, 19, 1, 0, 95.0, false, false),
        ];
        for (upn, possible, attended, authorised, unauthorised, percent, persistent, severe) in
            expected
        {
            let row = rows
                .iter()
                .find(|row| row["upn"] == upn.as_str())
                .unwrap_or_else(|| panic!("no row for {upn}"));
            assert_eq!(row["possible_sessions"], possible, "{upn}");
            assert_eq!(row["attended_sessions"], attended, "{upn}");
            assert_eq!(row["authorised_absence_sessions"], authorised, "{upn}");
            assert_eq!(row["unauthorised_absence_sessions"], unauthorised, "{upn}");
            assert_eq!(row["attendance_percent"].as_f64(), Some(percent), "{upn}");
            assert_eq!(row["persistent_absence"], persistent, "{upn}");
            assert_eq!(row["severe_absence"], severe, "{upn}");
        }

        let table = rollcall(&target, &["report", "attendance", "--school", "9192001"]);
        assert!(String::from_utf8_lossy(&table.stdout).contains("16.7"));

        let cases = stdout_json(&rollcall(
            &target,
            &["cases", "list", "--school", "9192001", "--json"],
        ));
        let mut case_upns: Vec<String> = cases
            .as_array()
            .expect("array")
            .iter()
            .map(|case| {
                assert_eq!(case["stage"], "tutor-monitoring");
                assert!(case["opened_at"].as_str().is_some_and(|at| !at.is_empty()));
                case["upn"].as_str().expect("upn").to_owned()
            })
            .collect();
        case_upns.sort();
        let mut expected_upns = vec![upn(1), upn(2), upn(3)];
        expected_upns.sort();
        assert_eq!(case_upns, expected_upns);

        // No pack for a pupil below the threshold, and no file written.
        let not_due = work.join("not-due.zip");
        let output = build_pack(&target, &upn(4), &not_due);
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("threshold"));
        assert!(!not_due.exists());

        let pack_path = work.join("pack.zip");
        let output = build_pack(&target, &upn(3), &pack_path);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut archive =
            zip::ZipArchive::new(std::fs::File::open(&pack_path).expect("pack")).expect("zip");
        let mut manifest = String::new();
        archive
            .by_name("manifest.json")
            .expect("manifest")
            .read_to_string(&mut manifest)
            .expect("read");
        let manifest: Value = serde_json::from_str(&manifest).expect("manifest JSON");
        assert_eq!(manifest["pack_format_version"], 1);
        assert_eq!(manifest["pupil"]["upn"], upn(3).as_str());
        assert_eq!(manifest["school"]["laestab"], "9192001");
        assert_eq!(manifest["policy"]["clause"], "4.10");
        assert_eq!(manifest["figures"]["unauthorised_absence_sessions"], 15);
        assert_eq!(
            manifest["threshold_sessions"].as_array().map(Vec::len),
            Some(15)
        );
        for file in manifest["files"].as_array().expect("files") {
            let name = file["name"].as_str().expect("name");
            let mut bytes = Vec::new();
            archive
                .by_name(name)
                .expect("listed file")
                .read_to_end(&mut bytes)
                .expect("read");
            assert_eq!(
                file["sha256"],
                hex::encode(Sha256::digest(&bytes)).as_str(),
                "{name}"
            );
        }
        let mut extract = Vec::new();
        archive
            .by_name("attendance-ctf.xml")
            .expect("extract")
            .read_to_end(&mut extract)
            .expect("read");
        let extract = rollcall_ctf::read(&extract).expect("the extract is a valid CTF");
        assert_eq!(extract.pupils[0].upn, upn(3));

        check_amendment(&target, &work);
        check_calendar(&target, &work);
    });
    checks.await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_job_on_sqlite() {
    let work = tempfile::tempdir().expect("temp dir");
    run_main_job(None, work.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_job_on_postgres() {
    let server = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests");
    let url = server.create_database().await.expect("database");
    let work = tempfile::tempdir().expect("temp dir");
    run_main_job(Some(url), work.path()).await;
}

/// A `rollcall serve` process of the distributed mode, stopped when dropped.
struct ServiceProcess {
    name: &'static str,
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ServiceProcess {
    /// Asks the process to stop as Kubernetes does, with SIGTERM, and returns its exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.name);
        let exit = self.child.wait().expect("the process ends");
        // Forget the child so that the drop below does not kill it again.
        self.child = Command::new("true").spawn().expect("true runs");
        exit
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Waits until the plain-text health port at `port` reports every service of the process
/// serving.
async fn wait_until_serving(process: &ServiceProcess, port: u16) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint");
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if let Ok(response) = status
                && response.into_inner().status == 1
            {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not start serving: {}",
            process.name,
            process.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The main job against the five services in five processes on PostgreSQL, each serving TLS,
/// calling the others over mutual TLS, and checking callers' bearer tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_job_on_five_processes_over_tls() {
    let postgres = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests");
    let database_url = postgres.create_database().await.expect("database");
    let work = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| work.path().join(name).to_str().expect("UTF-8").to_owned();

    let receiver = rollcall_testkit::otlp::OtlpReceiver::start()
        .await
        .expect("OTLP receiver");
    let ca = rollcall_testkit::tls::TestCa::new("rollcall test services CA").expect("CA");
    std::fs::write(path("ca.crt"), ca.pem()).expect("write CA");
    let idp = rollcall_testkit::identity::IdentityProvider::new(
        "https://login.example.org/trust",
        "rollcall",
    )
    .expect("identity provider");
    idp.write_jwks(&work.path().join("jwks.json"))
        .expect("write keys");
    std::fs::write(
        path("auth.toml"),
        idp.settings_with_file(&work.path().join("jwks.json")),
    )
    .expect("write settings");

    // The migrations run once before the services start, as the chart's migration job does.
    let migrate = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["migrate", "--json", "--database-url", &database_url])
        .output()
        .expect("rollcall migrate runs");
    let migrated = stdout_json(&migrate);
    assert_eq!(migrated["services"].as_array().map(Vec::len), Some(6));

    let services = [
        ("registers", "registers,audit"),
        ("policy", "policy"),
        ("cases", "cases"),
        ("referrals", "referrals"),
        ("mis-adapter", "mis-adapter"),
    ];
    let ports = free_ports(services.len() * 2);
    let url = |index: usize| format!("https://localhost:{}", ports[index]);
    let addresses = vec![
        "--registers-url".to_owned(),
        url(0),
        "--policy-url".to_owned(),
        url(1),
        "--cases-url".to_owned(),
        url(2),
        "--referrals-url".to_owned(),
        url(3),
        "--mis-adapter-url".to_owned(),
        url(4),
        "--audit-url".to_owned(),
        url(0),
        "--tls-ca".to_owned(),
        path("ca.crt"),
    ];
    let mut processes = Vec::new();
    for (index, (name, only)) in services.into_iter().enumerate() {
        let certificate = ca
            .issue(&format!("rollcall-{name}"), &[name])
            .expect("certificate");
        let (cert, key) = certificate.write(work.path(), name).expect("write");
        let log = work.path().join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(&addresses)
            .args(["serve", "--only", only, "--database-url", &database_url])
            .args(["--listen", &format!("127.0.0.1:{}", ports[index])])
            .args([
                "--health-listen",
                &format!("127.0.0.1:{}", ports[services.len() + index]),
            ])
            .args(["--data-dir", &path(name), "--auth", &path("auth.toml")])
            .args(["--tls-cert", cert.to_str().expect("UTF-8")])
            .args(["--tls-key", key.to_str().expect("UTF-8")])
            .args(["--tls-client-ca", &path("ca.crt")])
            .args(["--otlp-endpoint", &receiver.endpoint()])
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env_remove("OTEL_SERVICE_NAME")
            .env("RUST_LOG", "info,sqlx=warn")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("rollcall serve starts");
        processes.push(ServiceProcess { name, child, log });
    }
    for (index, process) in processes.iter().enumerate() {
        wait_until_serving(process, ports[services.len() + index]).await;
    }

    let token = idp
        .token(
            "staff-0001",
            &[
                "headteacher",
                "senior_attendance_lead",
                "office_staff",
                "trust_attendance_improvement_officer",
                "trust_it",
                "mis_vendor",
                "auditor",
            ],
            &["9192001"],
        )
        .expect("token");
    let target = Target {
        options: addresses,
        token: Some(token),
    };
    let result = run_checks(target.clone(), work.path()).await;
    if let Err(error) = result {
        for process in &processes {
            eprintln!("--- {} ---\n{}", process.name, process.log());
        }
        std::panic::resume_unwind(error.into_panic());
    }

    // With --auth and no key shared between the processes, the services reached each other
    // only by their client certificates. The person's import is in the audit log.
    let audit = stdout_json(&rollcall(
        &target,
        &["audit", "--user", "staff-0001", "--json"],
    ));
    let events = audit.as_array().expect("array");
    assert!(
        events.iter().any(|event| event["method"]
            .as_str()
            .is_some_and(|method| method.contains("ImportCtf"))),
        "{audit}"
    );

    // One import is one connected trace across all five processes: the MIS adapter, the
    // registers, and the policy, cases and referrals services following the change feed.
    let import_root = "rollcall.mis_adapter.v1.MisAdapterService/ImportCtf";
    let expected: std::collections::BTreeSet<String> = [
        "rollcall-mis-adapter",
        "rollcall-registers",
        "rollcall-policy",
        "rollcall-cases",
        "rollcall-referrals",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let import_trace = loop {
        let spans = receiver.spans();
        let found = spans
            .iter()
            .filter(|span| span.span.name == import_root && span.parent_span_id().is_empty())
            .map(|root| {
                let trace: Vec<_> = spans
                    .iter()
                    .filter(|span| span.trace_id() == root.trace_id())
                    .cloned()
                    .collect();
                trace
            })
            .find(|trace| {
                let names: std::collections::BTreeSet<String> =
                    trace.iter().map(|span| span.service_name.clone()).collect();
                names.is_superset(&expected)
            });
        if let Some(trace) = found {
            break trace;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no import trace reached {expected:?}; services seen: {:?}",
            spans
                .iter()
                .map(|span| span.service_name.clone())
                .collect::<std::collections::BTreeSet<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let ids: std::collections::HashSet<String> =
        import_trace.iter().map(|span| span.span_id()).collect();
    let roots = import_trace
        .iter()
        .filter(|span| span.parent_span_id().is_empty())
        .count();
    assert_eq!(roots, 1, "the import trace has one root");
    for span in &import_trace {
        let parent = span.parent_span_id();
        assert!(
            parent.is_empty() || ids.contains(&parent),
            "span {} of {} has a parent outside the trace",
            span.span.name,
            span.service_name
        );
    }

    // A plain-text call to a TLS listener fails, and so does a call without a token.
    let plain = Target::server(&format!("http://127.0.0.1:{}", ports[0]));
    assert!(
        !rollcall(&plain, &["calendar", "show", "--school", "9192001"])
            .status
            .success()
    );
    let no_token = Target {
        token: None,
        ..target.clone()
    };
    let refused = rollcall(&no_token, &["calendar", "show", "--school", "9192001"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no bearer token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // SIGTERM drains each process, which then exits cleanly.
    for process in processes {
        let name = process.name;
        let log_path = process.log.clone();
        let status = process.terminate();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(status.success(), "{name} exited with {status}: {log}");
        assert!(log.contains("NOT_SERVING"), "{name}: {log}");
        assert!(log.contains("rollcall stopped"), "{name}: {log}");
    }
}

/// Stopping the server ends a change-feed stream cleanly, and a client that resumes from the
/// last cursor it processed, on the restarted server, gets every remaining mark exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_stream_resumes_after_restart() {
    use rollcall_api::mis_adapter::v1::ImportCtfRequest;
    use rollcall_api::mis_adapter::v1::mis_adapter_service_client::MisAdapterServiceClient;
    use rollcall_api::registers::v1::WatchMarksRequest;
    use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;

    let work = tempfile::tempdir().expect("temp dir");
    let config = || {
        ServerConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            work.path().join("data"),
            None,
        )
        .expect("config")
    };
    let connect = |url: String| async move {
        tonic::transport::Endpoint::from_shared(url)
            .expect("URL")
            .connect()
            .await
            .expect("connect")
    };
    let running = server::start(config()).await.expect("server starts");
    let channel = connect(running.url()).await;
    let head = MisAdapterServiceClient::new(channel.clone())
        .import_ctf(ImportCtfRequest {
            file_name: "test-academy.xml".to_owned(),
            content: ctf().into_bytes(),
            imported_by: "test".to_owned(),
            dry_run: false,
        })
        .await
        .expect("import")
        .into_inner()
        .feed_cursor;
    assert!(head > 10, "feed head {head}");

    let mut stream = RegistersServiceClient::new(channel)
        .watch_marks(WatchMarksRequest {
            cursor: 0,
            laestab: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let message = stream.message().await.expect("message").expect("a mark");
        seen.push(message.cursor);
    }
    let stopping = tokio::spawn(running.stop());
    // The messages already sent may still arrive; then the stream ends without an error.
    while let Some(message) = stream.message().await.expect("a clean end") {
        seen.push(message.cursor);
    }
    stopping.await.expect("task").expect("server stops");
    let resume_from = *seen.last().expect("a cursor");

    let running = server::start(config()).await.expect("server restarts");
    let mut stream = RegistersServiceClient::new(connect(running.url()).await)
        .watch_marks(WatchMarksRequest {
            cursor: resume_from,
            laestab: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    while *seen.last().expect("a cursor") < head {
        let message = stream.message().await.expect("message").expect("a mark");
        seen.push(message.cursor);
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen, "a mark came twice");
    assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
    assert_eq!(seen.len() as i64, head, "a mark is missing: {seen:?}");
    running.stop().await.expect("server stops");
}
