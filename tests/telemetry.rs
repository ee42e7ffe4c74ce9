//! OpenTelemetry export: `rollcall serve --otlp-endpoint` against a local OTLP receiver.
//!
//! One CTF import is one trace. The MIS adapter's ImportCtf span is its root and the
//! registers' ImportRegister span its child. The work the change feed carries on in the
//! background (the policy follower's evaluation, the cases follower opening a case, the letter
//! worker, the referrals service checking submitted packs' marks) joins it. A referral's
//! submission is another trace, through all five services, which the delivery worker joins. A
//! connector run and a staff amendment written back to the MIS are checked the same way.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollcall_api::registers::v1::WatchMarksRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_domain::Upn;
use rollcall_testkit::broker::{BrokerMark, BrokerSchool, BrokerServer, BrokerStudent};
use rollcall_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long the tests wait for a server to start, or for spans and metrics to arrive. Generous,
/// because CI machines are shared.
const DEADLINE: Duration = Duration::from_secs(120);

const LAESTAB: &str = "9192001";

/// A `rollcall serve` process, killed when dropped.
struct Serve {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Serve {
    /// Starts `rollcall serve --dev` on a free loopback port with `extra` arguments, and waits
    /// until it serves.
    fn start(work: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let log = work.join("serve.log");
        let child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(["serve", "--dev", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(work.join("data"))
            .args(extra)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("rollcall runs");
        let serve = Serve {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let started = Instant::now();
        while !serve.log_text().contains("rollcall is serving") {
            assert!(
                started.elapsed() < DEADLINE,
                "rollcall serve did not start:\n{}",
                serve.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Short export intervals, so that spans and metrics arrive within the test's polling.
const FAST_EXPORT: [(&str, &str); 2] = [
    ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
];

fn upn(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, serial]).to_string()
}

fn pupil_xml(upn: &str, surname: &str, marks: &str) -> String {
    format!(
        "<Pupil><UPN>{upn}</UPN><Surname>{surname}</Surname><Forename>Sam</Forename>\
         <DOB>2013-05-01</DOB><Gender>F</Gender><BasicDetails><NCyearActual>8</NCyearActual></BasicDetails>\
         <Attendance><YearData><Year>2025</Year><LEA>919</LEA><Estab>2001</Estab><SchoolName>Test Academy</SchoolName>\
         <AttendSessions><AttendanceStartDate>2025-09-01</AttendanceStartDate>\
         <AttendanceMarks>{marks}</AttendanceMarks></AttendSessions></YearData></Attendance></Pupil>"
    )
}

/// Returns a CTF for two weeks of one school: one pupil always present, and one mostly absent
/// without authorisation, who crosses the persistent-absence threshold.
fn ctf() -> String {
    let pupils = [
        pupil_xml(&upn(1), "Able", r"/\/\/\/\/\####/\/\/\/\/\"),
        pupil_xml(&upn(2), "Baker", r"OOOOOOOOOO####OOOOOO/\/\"),
    ];
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CTfile><Header><DocumentName>Common Transfer File</DocumentName>\
         <CTFversion>25.0</CTFversion><DateTime>2025-09-12T16:00:00</DateTime>\
         <SourceSchool><LEA>919</LEA><Estab>2001</Estab><SchoolName>Test Academy</SchoolName>\
         <AcademicYear>2025</AcademicYear></SourceSchool></Header><CTFpupilData>{}</CTFpupilData></CTfile>",
        pupils.concat()
    )
}

/// Returns the number of marks an `import ctf` run reports as recorded.
fn marks_recorded(output: &str) -> f64 {
    let words: Vec<&str> = output.split_whitespace().collect();
    let position = words
        .windows(2)
        .position(|pair| pair[0] == "marks" && pair[1].starts_with("recorded"))
        .unwrap_or_else(|| panic!("no marks recorded in {output:?}"));
    words[position - 1]
        .parse()
        .unwrap_or_else(|_| panic!("no count before \"marks recorded\" in {output:?}"))
}

/// Polls `check` every 200 ms until it returns a value, or fails with `what` after the
/// deadline.
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Returns the service a span belongs to: its `rpc.service` for a server span, or the prefix
/// of its name for background work, such as `policy` for `policy.evaluate_marks`.
fn service_of(span: &ReceivedSpan) -> String {
    if let Some(service) = span.attribute("rpc.service") {
        return match service.as_str() {
            "rollcall.registers.v1.RegistersService" => "registers",
            "rollcall.policy.v1.PolicyService" => "policy",
            "rollcall.cases.v1.CasesService" => "cases",
            "rollcall.referrals.v1.ReferralsService" => "referrals",
            "rollcall.mis_adapter.v1.MisAdapterService"
            | "rollcall.mis_adapter.v1.MisSyncService" => "mis_adapter",
            other => other,
        }
        .to_owned();
    }
    span.span
        .name
        .split_once('.')
        .map_or_else(|| span.span.name.clone(), |(service, _)| service.to_owned())
}

/// Returns the spans of one trace that the receiver holds.
fn trace(receiver: &OtlpReceiver, trace_id: &str) -> Vec<ReceivedSpan> {
    receiver
        .spans()
        .into_iter()
        .filter(|span| span.trace_id() == trace_id)
        .collect()
}

/// Returns the trace id of the one root span named `name`.
fn root_trace_id(receiver: &OtlpReceiver, name: &str) -> Option<String> {
    let roots: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|span| span.span.name == name)
        .collect();
    assert!(roots.len() <= 1, "{} spans named {name}", roots.len());
    roots.first().map(ReceivedSpan::trace_id)
}

/// Returns whether every span's parent, where it has one, has been received.
fn parents_present(spans: &[ReceivedSpan]) -> bool {
    let ids: HashSet<String> = spans.iter().map(ReceivedSpan::span_id).collect();
    spans.iter().all(|span| {
        let parent = span.parent_span_id();
        parent.is_empty() || ids.contains(&parent)
    })
}

/// Checks that a trace is connected: one root, and every other span's parent is in the trace.
fn assert_connected(spans: &[ReceivedSpan], root_name: &str) {
    let ids: HashSet<String> = spans.iter().map(ReceivedSpan::span_id).collect();
    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|span| span.parent_span_id().is_empty())
        .collect();
    assert_eq!(
        roots
            .iter()
            .map(|span| span.span.name.as_str())
            .collect::<Vec<_>>(),
        [root_name],
        "the trace has one root"
    );
    for span in spans {
        let parent = span.parent_span_id();
        assert!(
            parent.is_empty() || ids.contains(&parent),
            "span {} has parent {parent}, which is not in the trace",
            span.span.name
        );
    }
}

fn services(spans: &[ReceivedSpan]) -> BTreeSet<String> {
    spans.iter().map(service_of).collect()
}

fn names(spans: &[ReceivedSpan]) -> BTreeSet<String> {
    spans.iter().map(|span| span.span.name.clone()).collect()
}

#[tokio::test]
async fn import_and_referral_are_traced_across_services() {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");
    let packs = work.path().join("packs");
    std::fs::create_dir_all(&packs).expect("packs folder");
    let delivery = work.path().join("delivery.toml");
    std::fs::write(
        &delivery,
        format!(
            "[[destination]]\nname = \"la-folder\"\nkind = \"directory\"\npath = {:?}\n",
            packs.display().to_string()
        ),
    )
    .expect("delivery settings");
    let endpoint = receiver.endpoint();
    let serve = Serve::start(
        work.path(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--delivery",
            delivery.to_str().expect("UTF-8 path"),
        ],
        &FAST_EXPORT,
    );
    let url = serve.url.clone();

    // The import: one trace from the MIS adapter to the letter worker.
    let file = work.path().join("test-academy.xml");
    std::fs::write(&file, ctf()).expect("write");
    let imported = common::cli(&url, &["import", "ctf", file.to_str().expect("UTF-8")]).await;
    let marks = marks_recorded(&imported);
    assert!(marks > 0.0, "{imported}");
    let cases: serde_json::Value = serde_json::from_str(
        &common::cli(&url, &["cases", "list", "--school", LAESTAB, "--json"]).await,
    )
    .expect("JSON");
    let cases = cases.as_array().cloned().unwrap_or_default();
    assert_eq!(cases.len(), 1, "{cases:?}");
    assert_eq!(cases[0]["upn"], upn(2).as_str());

    let import_root = "rollcall.mis_adapter.v1.MisAdapterService/ImportCtf";
    let import_trace = wait_for("the import's trace", || {
        let trace_id = root_trace_id(&receiver, import_root)?;
        let spans = trace(&receiver, &trace_id);
        let names = names(&spans);
        [
            "policy.evaluate_marks",
            "cases.apply_trigger",
            "cases.write_letter",
            "referrals.check_evidence",
        ]
        .iter()
        .all(|name| names.contains(*name))
        // A span is exported when it ends, after its children, so wait for the parents too.
        .then_some(spans)
        .filter(|spans| parents_present(spans))
    })
    .await;
    assert_connected(&import_trace, import_root);
    let trace_id = import_trace[0].trace_id();
    // Every span of the import's work, wherever it ran, is in the import's trace.
    for span in receiver.spans() {
        let name = span.span.name.as_str();
        if name.ends_with("/ImportRegister")
            || name.starts_with("policy.evaluate_marks")
            || name.starts_with("cases.")
            || name.starts_with("referrals.check_evidence")
        {
            assert_eq!(
                span.trace_id(),
                trace_id,
                "{name} is outside the import's trace"
            );
        }
    }
    let touched = services(&import_trace);
    for service in ["mis_adapter", "registers", "policy", "cases", "referrals"] {
        assert!(
            touched.contains(service),
            "{service} missing from {touched:?}"
        );
    }
    let import_register = import_trace
        .iter()
        .find(|span| span.span.name == "rollcall.registers.v1.RegistersService/ImportRegister")
        .expect("the registers' span");
    assert_eq!(
        import_register.attribute("rpc.system").as_deref(),
        Some("grpc")
    );
    assert_eq!(
        import_register.attribute("rpc.method").as_deref(),
        Some("ImportRegister")
    );
    assert_eq!(
        import_register.attribute("rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert!(
        import_trace
            .iter()
            .all(|span| span.service_name == "rollcall")
    );

    // The referral: created, then submitted with an override, which queues its pack for
    // delivery.
    let created: serde_json::Value = serde_json::from_str(
        &common::cli(
            &url,
            &[
                "referral",
                "create",
                "--upn",
                &upn(2),
                "--kind",
                "attendance_officer",
                "--by",
                "A Lead",
                "--json",
            ],
        )
        .await,
    )
    .expect("JSON");
    let reference = created["reference"].as_str().expect("reference").to_owned();
    common::cli(
        &url,
        &[
            "referral",
            "submit",
            &reference,
            "--by",
            "H Teacher",
            "--role",
            "headteacher",
            "--override-reason",
            "Test of tracing",
        ],
    )
    .await;

    let submit_root = "rollcall.referrals.v1.ReferralsService/SubmitReferral";
    let submit_trace = wait_for("the submission's trace", || {
        let trace_id = root_trace_id(&receiver, submit_root)?;
        let spans = trace(&receiver, &trace_id);
        names(&spans)
            .contains("mis_adapter.deliver_pack")
            .then_some(spans)
    })
    .await;
    assert_connected(&submit_trace, submit_root);
    // The submission reads its evidence from every other service, so this trace covers all
    // five.
    let touched = services(&submit_trace);
    for service in ["referrals", "registers", "policy", "cases", "mis_adapter"] {
        assert!(
            touched.contains(service),
            "{service} missing from {touched:?}"
        );
    }

    // A call that fails, to count an error.
    common::cli_error(&url, &["cases", "list", "--school", "9999999"]).await;
    // A health check, which is counted but gets no span.
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check");
    // A stream that the client drops after its first message.
    let mut feed = RegistersServiceClient::new(channel)
        .watch_marks(WatchMarksRequest::default())
        .await
        .expect("watch")
        .into_inner();
    feed.message().await.expect("message").expect("a version");
    drop(feed);

    let metric = |name: &'static str| receiver.counter_total(name);
    let ingested = wait_for("rollcall.marks.ingested", || {
        metric("rollcall.marks.ingested")
    })
    .await;
    assert_eq!(ingested, marks, "marks ingested equals the marks imported");
    let opened = wait_for("rollcall.cases.opened", || metric("rollcall.cases.opened")).await;
    assert_eq!(opened, 1.0);
    let triggers = wait_for("rollcall.policy.triggers", || {
        metric("rollcall.policy.triggers")
    })
    .await;
    assert!(triggers >= 1.0, "{triggers} triggers");
    let created = wait_for("rollcall.referrals.created", || {
        metric("rollcall.referrals.created")
    })
    .await;
    assert_eq!(created, 1.0);
    let submitted = wait_for("rollcall.referrals.submitted", || {
        metric("rollcall.referrals.submitted")
    })
    .await;
    assert_eq!(submitted, 1.0);
    let requests = wait_for("rollcall.rpc.requests", || metric("rollcall.rpc.requests")).await;
    assert!(requests >= 10.0, "{requests} requests");
    let timed = wait_for("rollcall.rpc.duration", || {
        receiver.histogram_count("rollcall.rpc.duration")
    })
    .await;
    assert!(timed >= 10, "{timed} requests timed");
    let not_found = wait_for("a NOT_FOUND in rollcall.rpc.errors", || {
        receiver
            .counter_points("rollcall.rpc.errors")
            .into_iter()
            .find(|(attributes, _)| {
                let attributes: HashMap<_, _> = attributes.iter().cloned().collect();
                attributes.get("rpc.grpc.status_code").map(String::as_str) == Some("5")
                    && attributes.get("rpc.method").map(String::as_str) == Some("GetSchool")
            })
    })
    .await;
    assert!(not_found.1 >= 1.0);
    // The stream is counted when it ends, with its own status, not when it starts.
    let cancelled = wait_for("a CANCELLED WatchMarks in rollcall.rpc.errors", || {
        receiver
            .counter_points("rollcall.rpc.errors")
            .into_iter()
            .find(|(attributes, _)| {
                let attributes: HashMap<_, _> = attributes.iter().cloned().collect();
                attributes.get("rpc.grpc.status_code").map(String::as_str) == Some("1")
                    && attributes.get("rpc.method").map(String::as_str) == Some("WatchMarks")
            })
    })
    .await;
    assert!(cancelled.1 >= 1.0);
    wait_for("a health check in rollcall.rpc.requests", || {
        receiver
            .counter_points("rollcall.rpc.requests")
            .into_iter()
            .find(|(attributes, _)| {
                attributes
                    .iter()
                    .any(|(key, value)| key == "rpc.service" && value == "grpc.health.v1.Health")
            })
    })
    .await;
    let health_spans: Vec<String> = names(&receiver.spans())
        .into_iter()
        .filter(|name| name.starts_with("grpc.health.v1.Health/"))
        .collect();
    assert!(health_spans.is_empty(), "{health_spans:?}");

    // Metric attributes name schools, never pupils.
    for name in receiver.metric_names() {
        for (attributes, _) in receiver.counter_points(&name) {
            for (key, value) in attributes {
                assert!(
                    !value.contains(&upn(2)) && !value.contains("Baker"),
                    "{name} has {key}={value}"
                );
            }
        }
    }
    drop(serve);
}

#[tokio::test]
async fn connector_run_and_write_back_are_traced() {
    const SCHOOL_ID: &str = "A1930499544";
    const TOKEN: &str = "broker-token-for-the-tests";
    let day = |day| chrono::NaiveDate::from_ymd_opt(2026, 11, day).expect("a November date");
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = OtlpReceiver::start().await.expect("OTLP receiver");
    let broker = BrokerServer::start(TOKEN).await.expect("broker");
    broker.add_school(BrokerSchool::secondary(SCHOOL_ID, LAESTAB, "Test Academy"));
    // The MIS's marks are taken before write-back is turned on, as in a real first pull.
    broker.shift_clock(chrono::TimeDelta::hours(-3));
    for serial in [1, 2] {
        let student = format!("A10000{serial:02}");
        broker.put_student(
            SCHOOL_ID,
            BrokerStudent::new(&student, &upn(serial), "Pupil", &format!("Number {serial}")),
        );
        for session in ["AM", "PM"] {
            broker.put_mark(
                SCHOOL_ID,
                BrokerMark {
                    student_id: student.clone(),
                    date: day(2),
                    session: session.to_owned(),
                    code: "/".to_owned(),
                    minutes_late: None,
                    comment: None,
                },
            );
        }
    }
    broker.shift_clock(chrono::TimeDelta::zero());
    let token_file = work.path().join("broker-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let ca_file = work.path().join("broker-ca.pem");
    std::fs::write(&ca_file, broker.ca_pem()).expect("CA file");
    let connectors = work.path().join("connectors.toml");
    std::fs::write(
        &connectors,
        format!(
            "[[school]]\nlaestab = \"{LAESTAB}\"\nbase_url = \"{}\"\nschool_id = \"{SCHOOL_ID}\"\n\
             token_file = {:?}\nca_file = {:?}\npoll_interval_seconds = 0\nwrite_back = true\n\n\
             [writeback]\npoll_seconds = 0.05\n",
            broker.base_url(),
            token_file.display().to_string(),
            ca_file.display().to_string(),
        ),
    )
    .expect("connector settings");
    let endpoint = receiver.endpoint();
    let serve = Serve::start(
        work.path(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--connectors",
            connectors.to_str().expect("UTF-8 path"),
        ],
        &FAST_EXPORT,
    );

    // A run started by a person joins the trace of their call, down to the registers.
    common::cli(&serve.url, &["connector", "run", LAESTAB]).await;
    let run_root = "rollcall.mis_adapter.v1.MisAdapterService/RunConnector";
    let run_trace = wait_for("the connector run's trace", || {
        let trace_id = root_trace_id(&receiver, run_root)?;
        let spans = trace(&receiver, &trace_id);
        names(&spans)
            .contains("policy.evaluate_marks")
            .then_some(spans)
    })
    .await;
    assert_connected(&run_trace, run_root);
    let names_in_run = names(&run_trace);
    assert!(
        names_in_run.contains("rollcall.registers.v1.RegistersService/ImportRegister"),
        "{names_in_run:?}"
    );

    // A staff amendment is written back to the MIS by a worker that joins its trace.
    common::cli(
        &serve.url,
        &[
            "marks",
            "amend",
            "--upn",
            &upn(1),
            "--date",
            &day(2).to_string(),
            "--session",
            "AM",
            "--code",
            "L",
            "--minutes-late",
            "12",
            "--reason",
            "Arrived on the late bus",
            "--by",
            "J Smith",
            "--position",
            "Attendance officer",
            "--school",
            LAESTAB,
        ],
    )
    .await;
    let amend_root = "rollcall.registers.v1.RegistersService/AmendMark";
    let amend_trace = wait_for("the amendment's write-back in its trace", || {
        let trace_id = root_trace_id(&receiver, amend_root)?;
        let spans = trace(&receiver, &trace_id);
        names(&spans)
            .contains("mis_adapter.write_back")
            .then_some(spans)
    })
    .await;
    assert_connected(&amend_trace, amend_root);
    let touched = services(&amend_trace);
    for service in ["registers", "policy", "mis_adapter"] {
        assert!(
            touched.contains(service),
            "{service} missing from {touched:?}"
        );
    }
}

#[tokio::test]
async fn unreachable_collector_does_not_stop_serving() {
    let work = tempfile::tempdir().expect("temp dir");
    // A port that was free a moment ago, so nothing listens on it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let serve = Serve::start(work.path(), &["--otlp-endpoint", &endpoint], &FAST_EXPORT);
    let file = work.path().join("test-academy.xml");
    std::fs::write(&file, ctf()).expect("write");
    common::cli(
        &serve.url,
        &["import", "ctf", file.to_str().expect("UTF-8")],
    )
    .await;
    let report = common::cli(&serve.url, &["report", "attendance", "--school", LAESTAB]).await;
    assert!(report.contains(&upn(2)), "{report}");

    wait_for("the failed export in the log", || {
        serve
            .log_text()
            .contains("OTLP export failed")
            .then_some(())
    })
    .await;
    let again = common::cli(&serve.url, &["cases", "list", "--school", LAESTAB]).await;
    assert!(again.contains(&upn(2)), "{again}");
}

#[tokio::test]
async fn collector_over_mutual_tls_receives_spans() {
    let work = tempfile::tempdir().expect("temp dir");
    let ca = rollcall_testkit::tls::TestCa::new("rollcall test CA").expect("CA");
    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let collector = ca
        .issue("otel-collector", &[])
        .expect("collector certificate");
    let (cert, key) = ca
        .issue("rollcall", &[])
        .expect("server certificate")
        .write(work.path(), "server")
        .expect("write certificate");
    let receiver = OtlpReceiver::start_tls(&collector.cert_pem, &collector.key_pem, ca.pem())
        .await
        .expect("OTLP receiver");
    let endpoint = receiver.endpoint();
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let serve = Serve::start(
        work.path(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--tls-ca",
            ca_file.to_str().expect("UTF-8 path"),
            "--tls-cert",
            cert.to_str().expect("UTF-8 path"),
            "--tls-key",
            key.to_str().expect("UTF-8 path"),
        ],
        &FAST_EXPORT,
    );
    let url = serve.url.replace("http://", "https://");

    let file = work.path().join("test-academy.xml");
    std::fs::write(&file, ctf()).expect("write");
    let ca_arg = ca_file.to_str().expect("UTF-8 path");
    common::cli(
        &url,
        &[
            "--tls-ca",
            ca_arg,
            "import",
            "ctf",
            file.to_str().expect("UTF-8"),
        ],
    )
    .await;

    // The collector accepts only callers with a certificate from the CA, so spans arriving
    // show that rollcall trusted the collector through --tls-ca and presented --tls-cert.
    let trace_id = wait_for("the import's spans over TLS", || {
        root_trace_id(
            &receiver,
            "rollcall.mis_adapter.v1.MisAdapterService/ImportCtf",
        )
    })
    .await;
    assert!(!trace(&receiver, &trace_id).is_empty());
    assert!(
        !serve.log_text().contains("OTLP export failed"),
        "{}",
        serve.log_text()
    );
}

#[test]
fn serve_rejects_invalid_otlp_endpoint() {
    for endpoint in ["collector:4317", "grpc://127.0.0.1:4317"] {
        let output = Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args([
                "serve",
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--otlp-endpoint",
                endpoint,
            ])
            .output()
            .expect("the rollcall binary runs");
        assert!(!output.status.success(), "{endpoint}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("invalid OTLP endpoint"), "{stderr}");
    }
}
