//! Data minimisation: a full run of the main job against `rollcall serve` with detailed JSON
//! logs and spans exported to a local OTLP receiver. Neither the log nor the spans may hold a
//! single pupil's name or date of birth.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollcall_api::registers::v1::GetPupilRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_synthetic::{Phase, SchoolSpec, Term, TrustSpec};

/// A `rollcall serve` process, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops `rollcall serve` with SIGTERM, as a service manager does, so that it exports its last
/// spans, and waits for it to exit.
fn terminate(mut serve: Serve) {
    let pid = serve.0.id().to_string();
    let signalled = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(signalled.success(), "cannot signal rollcall serve");
    let started = Instant::now();
    while serve.0.try_wait().expect("process status").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "rollcall serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn logs_of_a_full_run_carry_no_names_or_dates_of_birth() {
    let work = tempfile::tempdir().expect("temp dir");
    let school = |estab: u16, phase: Phase| SchoolSpec {
        la_code: 919,
        estab,
        name: format!("School {estab}"),
        phase,
        places_per_year_group: 8,
        closures: Vec::new(),
    };
    let spec = TrustSpec {
        seed: 23,
        name: "Minimal Trust".to_owned(),
        term: Term::autumn_2025(),
        schools: vec![school(2201, Phase::Primary), school(4201, Phase::Secondary)],
    };
    let trust = rollcall_synthetic::generate(&spec).expect("trust");
    let mut files = Vec::new();
    let mut personal = Vec::new();
    for school in &trust.schools {
        let path = work.path().join(format!("{}.xml", school.laestab));
        std::fs::write(&path, rollcall_ctf::write(&school.file).expect("CTF")).expect("write");
        files.push(path.display().to_string());
        for pupil in &school.file.pupils {
            personal.push(format!("{} {}", pupil.forename, pupil.surname));
            personal.push(format!("{}, {}", pupil.surname, pupil.forename));
            personal.push(format!("\"{}\"", pupil.surname));
            personal.push(pupil.date_of_birth.to_string());
        }
    }
    assert!(personal.len() > 200, "{} personal details", personal.len());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let log = work.path().join("serve.log");
    let receiver = rollcall_testkit::otlp::OtlpReceiver::start()
        .await
        .expect("OTLP receiver");
    let child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--dev", "--log-format", "json", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .arg("--otlp-endpoint")
        .arg(receiver.endpoint())
        .env("RUST_LOG", "debug,sqlx=warn,h2=info,hyper=info,tower=info")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("rollcall runs");
    let serve = Serve(child);
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("rollcall is serving")
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "rollcall serve did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Details as the server holds them, to show the search looks for them as rollcall writes
    // them.
    let mut printed = String::new();
    let mut import = vec!["import", "ctf"];
    import.extend(files.iter().map(String::as_str));
    common::cli(&url, &import).await;
    let reports = work.path().join("reports");
    std::fs::create_dir_all(&reports).expect("reports folder");
    for school in &trust.schools {
        let laestab = school.laestab.as_str();
        let attendance = common::cli(
            &url,
            &["report", "attendance", "--school", laestab, "--json"],
        )
        .await;
        common::cli(
            &url,
            &[
                "report",
                "statistics",
                "--school",
                laestab,
                "--by",
                "year-group",
            ],
        )
        .await;
        common::cli(&url, &["cases", "list", "--school", laestab]).await;
        let pdf = reports.join(format!("governors-{laestab}.pdf"));
        common::cli(
            &url,
            &[
                "report",
                "governors",
                "--school",
                laestab,
                "--year",
                "2025",
                "--out",
                pdf.to_str().expect("path"),
            ],
        )
        .await;
        // One pupil's explanation and a referral pack for the first persistent absentee.
        let figures: serde_json::Value = serde_json::from_str(&attendance).expect("JSON");
        let pupils = figures.as_array().cloned().unwrap_or_default();
        if let Some(pupil) = pupils.first() {
            let upn = pupil["upn"].as_str().expect("upn");
            common::cli(&url, &["pupil", "explain", "--upn", upn]).await;
            let held = RegistersServiceClient::connect(url.clone())
                .await
                .expect("connect")
                .get_pupil(GetPupilRequest {
                    upn: upn.to_owned(),
                })
                .await
                .expect("pupil")
                .into_inner()
                .pupil
                .expect("pupil");
            printed.push_str(&format!(
                "{} {} {}\n",
                held.forename, held.surname, held.date_of_birth
            ));
        }
        let absentee = pupils
            .iter()
            .find(|pupil| pupil["persistent_absence"] == true);
        if let Some(pupil) = absentee {
            let upn = pupil["upn"].as_str().expect("upn");
            let pack = reports.join(format!("pack-{upn}.zip"));
            let _ = common::run_rollcall(
                &url,
                &[
                    "referral",
                    "pack",
                    "--upn",
                    upn,
                    "--out",
                    pack.to_str().expect("path"),
                ],
            )
            .await;
        }
    }
    common::cli(
        &url,
        &[
            "report",
            "trust",
            "--on",
            "2025-12-19",
            "--out",
            reports.join("trust.pdf").to_str().expect("path"),
        ],
    )
    .await;
    terminate(serve);

    let text = std::fs::read_to_string(&log).expect("log");
    let lines = text.lines().count();
    assert!(lines > 50, "the log has only {lines} lines:\n{text}");
    assert!(text.contains("Import finished"), "{text}");
    assert!(
        personal
            .iter()
            .any(|detail| printed.contains(detail.as_str())),
        "the details the server holds do not match the search, so it proves nothing"
    );
    let leaks: Vec<&String> = personal
        .iter()
        .filter(|detail| text.contains(detail.as_str()))
        .collect();
    assert!(
        leaks.is_empty(),
        "the log holds personal details: {leaks:?}"
    );

    // The spans, as the collector received them: names, attributes, events and links.
    let spans = receiver.spans();
    assert!(
        spans.len() > 50,
        "only {} spans were exported, so the search proves little",
        spans.len()
    );
    let exported: String = spans
        .iter()
        .map(|span| format!("{:?}\n", span.span))
        .collect();
    assert!(exported.contains("ImportCtf"), "{exported}");
    let leaks: Vec<&String> = personal
        .iter()
        .filter(|detail| exported.contains(detail.as_str()))
        .collect();
    assert!(
        leaks.is_empty(),
        "the exported spans hold personal details: {leaks:?}"
    );
}
