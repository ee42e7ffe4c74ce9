//! TLS on `rollcall serve`, the plain-text health listener, graceful shutdown, the distributed
//! mode's settings checks, and `rollcall migrate`.

use std::path::Path;
use std::process::{Command, Output};

use rollcall_api::registers::v1::GetSchoolRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_cli::server::{self, ServerConfig};
use rollcall_runtime::tls::TlsFiles;
use rollcall_testkit::tls::TestCa;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn rollcall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(args)
        .env_remove("ROLLCALL_TOKEN")
        .output()
        .expect("the rollcall binary runs")
}

fn stderr_of(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `rollcall serve` on a loopback address of the system's choosing with `options`,
/// which must fail, and returns its standard error.
fn serve_error(data: &str, options: &[&str]) -> String {
    let mut args = vec!["serve", "--data-dir", data, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(options);
    stderr_of(&rollcall(&args))
}

/// Creates a CA and a server certificate it issued, and writes both into `dir`.
fn certificates(dir: &Path) -> (TestCa, TlsFiles) {
    let ca = TestCa::new("rollcall test CA").expect("CA");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("write");
    let (cert, key) = ca
        .issue("rollcall-server", &[])
        .expect("certificate")
        .write(dir, "server")
        .expect("write");
    let files = TlsFiles {
        cert: Some(cert),
        key: Some(key),
        client_ca: None,
        ca: None,
    };
    (ca, files)
}

async fn start_with_tls(work: &Path, tls: TlsFiles) -> server::RunningServer {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        None,
    )
    .expect("config");
    config.tls = tls;
    config.health_listen = Some("127.0.0.1:0".parse().expect("address"));
    server::start(config).await.expect("server starts")
}

fn tls_endpoint(running: &server::RunningServer, ca: &TestCa) -> Endpoint {
    Endpoint::from_shared(running.url())
        .expect("URL")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.pem()))
                .domain_name("localhost"),
        )
        .expect("TLS settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_and_plain_health() {
    let work = tempfile::tempdir().expect("temp dir");
    let (ca, files) = certificates(work.path());
    let running = start_with_tls(work.path(), files).await;
    assert!(running.url().starts_with("https://"), "{}", running.url());

    // A client that trusts the CA reaches the services, which reach each other inside.
    let channel = tls_endpoint(&running, &ca).connect().await.expect("TLS");
    let missing = RegistersServiceClient::new(channel)
        .get_school(GetSchoolRequest {
            laestab: "9192001".to_owned(),
        })
        .await
        .expect_err("no such school yet");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");

    // A client that trusts another CA is refused by its own TLS checks.
    let stranger = TestCa::new("another CA").expect("CA");
    let refused = tls_endpoint(&running, &stranger).connect().await;
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA was trusted"
    );

    // Plain HTTP/2 to the TLS port does not work.
    let plain = Endpoint::from_shared(format!("http://{}", running.addr))
        .expect("URL")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let result = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(result.is_err(), "plain text was served on the TLS port");
    }

    // The health port speaks plain text, for probes.
    let health_addr = running.health_addr.expect("health address");
    let probe = Endpoint::from_shared(format!("http://{health_addr}"))
        .expect("URL")
        .connect()
        .await
        .expect("health port");
    let mut health = HealthClient::new(probe);
    let serving = health
        .check(HealthCheckRequest {
            service: "rollcall.registers.v1.RegistersService".to_owned(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(serving.status(), ServingStatus::Serving);

    // The command line reaches it over TLS with --tls-ca, and not without.
    let url = running.url().replace("127.0.0.1", "localhost");
    let ca_file = work.path().join("ca.crt");
    let output = tokio::task::spawn_blocking({
        let url = url.clone();
        let ca_file = ca_file.clone();
        move || {
            rollcall(&[
                "--server",
                &url,
                "--tls-ca",
                ca_file.to_str().expect("UTF-8"),
                "calendar",
                "show",
                "--school",
                "9192001",
            ])
        }
    })
    .await
    .expect("thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("9192001") && !stderr.contains("cannot reach"),
        "{stderr}"
    );
    let untrusted = tokio::task::spawn_blocking(move || {
        rollcall(&["--server", &url, "calendar", "show", "--school", "9192001"])
    })
    .await
    .expect("thread");
    let stderr = stderr_of(&untrusted);
    assert!(stderr.contains("--tls-ca"), "{stderr}");

    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_certificate_is_accepted() {
    let work = tempfile::tempdir().expect("temp dir");
    let (ca, mut files) = certificates(work.path());
    files.client_ca = Some(work.path().join("ca.crt"));
    let running = start_with_tls(work.path(), files).await;
    let service = ca
        .issue("rollcall-policy", &["policy"])
        .expect("certificate");
    let channel = tls_endpoint(&running, &ca)
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.pem()))
                .domain_name("localhost")
                .identity(Identity::from_pem(&service.cert_pem, &service.key_pem)),
        )
        .expect("TLS settings")
        .connect()
        .await
        .expect("mutual TLS");
    // The server runs in development mode here, so the test shows only that a client
    // certificate is accepted and the call goes through. tests/main_job.rs runs the services
    // with tokens, where only the certificate lets them call each other.
    let missing = RegistersServiceClient::new(channel)
        .get_school(GetSchoolRequest {
            laestab: "9192001".to_owned(),
        })
        .await
        .expect_err("no such school yet");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");

    // A client certificate from another CA fails the handshake.
    assert_stranger_rejected(&running.url(), &ca).await;
    running.stop().await.expect("server stops");
}

/// Calls the server at `url` with a client certificate from a CA other than `ca`, and fails
/// unless the server rejects the call.
async fn assert_stranger_rejected(url: &str, ca: &TestCa) {
    let stranger = TestCa::new("another CA").expect("CA");
    let forged = stranger
        .issue("rollcall-policy", &["policy"])
        .expect("certificate");
    let connection = Endpoint::from_shared(url.to_owned())
        .expect("URL")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.pem()))
                .domain_name("localhost")
                .identity(Identity::from_pem(&forged.cert_pem, &forged.key_pem)),
        )
        .expect("TLS settings")
        .connect()
        .await;
    if let Ok(channel) = connection {
        let result = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(
            result.is_err(),
            "a certificate from another CA was accepted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_turns_health_not_serving_first() {
    let work = tempfile::tempdir().expect("temp dir");
    let (_, files) = certificates(work.path());
    let running = start_with_tls(work.path(), files).await;
    let health_addr = running.health_addr.expect("health address");
    let probe = Endpoint::from_shared(format!("http://{health_addr}"))
        .expect("URL")
        .connect()
        .await
        .expect("health port");
    // Watch the overall status: the stream reports SERVING, then NOT_SERVING as the server
    // starts to stop, before the connection closes.
    let mut watch = HealthClient::new(probe)
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);
    let stopping = tokio::spawn(running.stop());
    let next = watch.message().await.expect("status").expect("a status");
    assert_eq!(next.status(), ServingStatus::NotServing);
    stopping.await.expect("task").expect("server stops");
}

#[test]
fn unreadable_tls_files_are_named() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().to_str().expect("UTF-8");
    let missing = work.path().join("missing.crt");
    let missing = missing.to_str().expect("UTF-8");
    let stderr = serve_error(
        data,
        &["--dev", "--tls-cert", missing, "--tls-key", missing],
    );
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    assert!(stderr.contains("missing.crt"), "{stderr}");

    let not_pem = work.path().join("server.crt");
    std::fs::write(&not_pem, "hello").expect("write");
    let not_pem = not_pem.to_str().expect("UTF-8");
    let stderr = serve_error(
        data,
        &["--dev", "--tls-cert", not_pem, "--tls-key", not_pem],
    );
    assert!(stderr.contains("server.crt"), "{stderr}");
    assert!(stderr.contains("BEGIN CERTIFICATE"), "{stderr}");
}

#[test]
fn only_needs_called_service_addresses() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().to_str().expect("UTF-8");
    let stderr = serve_error(data, &["--dev", "--only", "policy"]);
    assert!(stderr.contains("--registers-url"), "{stderr}");
    assert!(stderr.contains("ROLLCALL_REGISTERS_URL"), "{stderr}");

    let stderr = serve_error(data, &["--dev", "--only", "registers,policie"]);
    assert!(stderr.contains("\"policie\""), "{stderr}");
    assert!(stderr.contains("mis-adapter"), "{stderr}");

    let stderr = serve_error(
        data,
        &[
            "--dev",
            "--only",
            "mis-adapter",
            "--registers-url",
            "registers:50051",
        ],
    );
    assert!(stderr.contains("--registers-url"), "{stderr}");
    assert!(stderr.contains("registers:50051"), "{stderr}");
}

#[test]
fn only_with_tokens_needs_mutual_tls() {
    let work = tempfile::tempdir().expect("temp dir");
    let auth = work.path().join("auth.toml");
    let jwks = work.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys": []}"#).expect("write");
    std::fs::write(
        &auth,
        format!(
            "issuer = \"https://login.example.org\"\naudience = \"rollcall\"\njwks_file = {:?}\n",
            jwks.display().to_string()
        ),
    )
    .expect("write");
    let data = work.path().to_str().expect("UTF-8");
    let auth = auth.to_str().expect("UTF-8");
    let adapter = ["--auth", auth, "--only", "mis-adapter", "--registers-url"];

    let stderr = serve_error(data, &[&adapter[..], &["http://registers:50051"]].concat());
    assert!(stderr.contains("https://"), "{stderr}");
    assert!(stderr.contains("http://registers:50051"), "{stderr}");

    let stderr = serve_error(data, &[&adapter[..], &["https://registers:50051"]].concat());
    assert!(stderr.contains("--tls-client-ca"), "{stderr}");
}

#[test]
fn migrate_applies_every_migration_once() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().to_str().expect("UTF-8");
    let first = rollcall(&["migrate", "--data-dir", data, "--json"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).expect("JSON");
    let services: Vec<&str> = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|entry| {
            assert!(entry["version"].as_i64().is_some_and(|version| version > 0));
            entry["service"].as_str().expect("name")
        })
        .collect();
    assert_eq!(
        services,
        [
            "registers",
            "policy",
            "cases",
            "referrals",
            "mis-adapter",
            "audit"
        ]
    );
    let again = rollcall(&["migrate", "--data-dir", data, "--json"]);
    assert_eq!(again.stdout, first.stdout);

    let only = rollcall(&["migrate", "--data-dir", data, "--only", "cases", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&only.stdout).expect("JSON");
    let names: Vec<&str> = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|entry| entry["service"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["cases", "audit"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_peer_ca_is_logged_at_start() {
    let work = tempfile::tempdir().expect("temp dir");
    let (_, files) = certificates(work.path());
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.path().join("registers"),
        None,
    )
    .expect("config");
    config.tls = files.clone();
    config.only = [
        rollcall_runtime::ServiceName::Registers,
        rollcall_runtime::ServiceName::Audit,
    ]
    .into_iter()
    .collect();
    let registers = server::start(config).await.expect("registers start");
    let registers_url = format!("https://localhost:{}", registers.addr.port());

    // The MIS adapter trusts another CA, so its calls to the registers fail the TLS check.
    let stranger = TestCa::new("another CA").expect("CA");
    std::fs::write(work.path().join("other-ca.crt"), stranger.pem()).expect("write");
    let log_path = work.path().join("adapter.log");
    let data = work.path().join("adapter");
    let mut adapter = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["--registers-url", &registers_url])
        .args([
            "--tls-ca",
            work.path().join("other-ca.crt").to_str().expect("UTF-8"),
        ])
        .args([
            "serve",
            "--dev",
            "--only",
            "mis-adapter",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--data-dir", data.to_str().expect("UTF-8")])
        .args([
            "--tls-cert",
            files.cert.as_ref().expect("cert").to_str().expect("UTF-8"),
        ])
        .args([
            "--tls-key",
            files.key.as_ref().expect("key").to_str().expect("UTF-8"),
        ])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("rollcall serve starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("Cannot reach the service") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let _ = adapter.kill();
    let _ = adapter.wait();
    registers.stop().await.expect("registers stop");
    assert!(log.contains("Cannot reach the service over TLS"), "{log}");
    assert!(log.contains("--tls-ca"), "{log}");
    assert!(log.contains(&registers_url), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_client_certificate_is_logged() {
    let work = tempfile::tempdir().expect("temp dir");
    let (ca, files) = certificates(work.path());
    let log_path = work.path().join("serve.log");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .args([
            "--data-dir",
            work.path().join("data").to_str().expect("UTF-8"),
        ])
        .args([
            "--tls-cert",
            files.cert.as_ref().expect("cert").to_str().expect("UTF-8"),
        ])
        .args([
            "--tls-key",
            files.key.as_ref().expect("key").to_str().expect("UTF-8"),
        ])
        .args([
            "--tls-client-ca",
            work.path().join("ca.crt").to_str().expect("UTF-8"),
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("rollcall serve starts");
    let read_log_until = |needle: &'static str| {
        let log_path = log_path.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains(needle) || std::time::Instant::now() > deadline {
                    break log;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    let log = read_log_until("rollcall is serving").await;
    let port = log
        .lines()
        .find(|line| line.contains("rollcall is serving"))
        .and_then(|line| line.split("addr=127.0.0.1:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listening address in the log: {log}"))
        .to_owned();

    // A client certificate from another CA is rejected, and the server logs the failed
    // handshake with the caller's address.
    assert_stranger_rejected(&format!("https://localhost:{port}"), &ca).await;
    let log = read_log_until("TLS handshake failed").await;
    let _ = serve.kill();
    let _ = serve.wait();
    let failure = log
        .lines()
        .find(|line| line.contains("TLS handshake failed"))
        .unwrap_or_else(|| panic!("no failed handshake in the log: {log}"));
    assert!(failure.contains("peer=127.0.0.1:"), "{failure}");
    assert!(failure.contains("certificate"), "{failure}");
}
