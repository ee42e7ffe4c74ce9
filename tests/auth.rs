//! Authentication and the role-by-call table, against a real server that verifies bearer
//! tokens from a local identity provider.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use prost::Message;
use rollcall_api::registers::v1::GetCalendarRequest;
use rollcall_api::registers::v1::SetCalendarRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_auth::rules::{RULES, rule_for};
use rollcall_auth::{Role, TokenSettings};
use rollcall_cli::server::{self, Authentication, RunningServer, ServerConfig};
use rollcall_testkit::identity::{IdentityProvider, KeySetServer};
use serde_json::json;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const ISSUER: &str = "https://login.example.org/trust/v2.0";
const AUDIENCE: &str = "api://rollcall";
const SCHOOL: &str = "9192001";

fn provider() -> IdentityProvider {
    IdentityProvider::new(ISSUER, AUDIENCE).expect("identity provider")
}

/// Starts a server on SQLite that verifies tokens with `settings`.
async fn start(work: &Path, settings: &str) -> RunningServer {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        None,
    )
    .expect("config");
    config.authentication =
        Authentication::Tokens(TokenSettings::parse(settings).expect("token settings"));
    server::start(config).await.expect("server starts")
}

async fn start_with_file(work: &Path, idp: &IdentityProvider) -> RunningServer {
    let jwks = work.join("jwks.json");
    idp.write_jwks(&jwks).expect("key set");
    start(work, &idp.settings_with_file(&jwks)).await
}

async fn channel(running: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect")
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = MetadataValue::from_str(&format!("Bearer {token}")).expect("header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A message with no fields: every request type reads it as all defaults, and every response
/// decodes into it.
#[derive(Clone, PartialEq, Message)]
struct Blank {}

/// Every RPC in the contracts, with whether the client and the server stream.
fn contract_methods() -> Vec<(String, bool, bool)> {
    let set = prost_types::FileDescriptorSet::decode(rollcall_api::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut methods = Vec::new();
    for file in set.file {
        for service in &file.service {
            for method in &service.method {
                methods.push((
                    format!("{}.{}/{}", file.package(), service.name(), method.name()),
                    method.client_streaming(),
                    method.server_streaming(),
                ));
            }
        }
    }
    methods
}

/// Calls `method` with an empty request and returns the status it ends with: OK when the call
/// was answered.
async fn call(
    channel: &Channel,
    method: &str,
    client_streaming: bool,
    server_streaming: bool,
    token: &str,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::from_str(&format!("/{method}")).expect("path");
    let codec = tonic_prost::ProstCodec::<Blank, Blank>::default();
    let result = match (client_streaming, server_streaming) {
        (false, false) => grpc
            .unary(with_token(Blank {}, Some(token)), path, codec)
            .await
            .map(|_| ()),
        (false, true) => grpc
            .server_streaming(with_token(Blank {}, Some(token)), path, codec)
            .await
            .map(|_| ()),
        (true, false) => grpc
            .client_streaming(
                with_token(tokio_stream::empty::<Blank>(), Some(token)),
                path,
                codec,
            )
            .await
            .map(|_| ()),
        (true, true) => grpc
            .streaming(
                with_token(tokio_stream::empty::<Blank>(), Some(token)),
                path,
                codec,
            )
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[tokio::test]
async fn every_role_against_every_rpc() {
    let work = tempfile::tempdir().expect("temp dir");
    let idp = provider();
    let running = start_with_file(work.path(), &idp).await;
    let channel = channel(&running).await;
    let methods = contract_methods();
    assert_eq!(methods.len(), RULES.len(), "every RPC has one rule");

    let mut refused = 0;
    for role in Role::ALL.into_iter().filter(|role| *role != Role::Service) {
        let token = idp
            .token(&format!("user-{role}"), &[role.as_str()], &[SCHOOL])
            .expect("token");
        for (method, client_streaming, server_streaming) in &methods {
            let rule = rule_for(&format!("/{method}")).expect("a rule");
            let status = call(
                &channel,
                method,
                *client_streaming,
                *server_streaming,
                &token,
            )
            .await;
            let denied_by_table = status.code() == Code::PermissionDenied
                && status.message().contains("may not call");
            if rule.allows(role) {
                assert!(
                    !denied_by_table && status.code() != Code::Unauthenticated,
                    "{role} should reach {method}, got {status:?}"
                );
            } else {
                assert!(
                    denied_by_table,
                    "{role} should be refused {method}, got {status:?}"
                );
                assert!(
                    status.message().contains(role.as_str()),
                    "the refusal names the role: {}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 100, "only {refused} calls were refused");
    running.stop().await.expect("server stops");
}

/// Tries `token` on SetCalendar and returns the status; the calendar must be unchanged after.
async fn try_set_calendar(channel: &Channel, token: Option<&str>) -> tonic::Status {
    let mut registers = RegistersServiceClient::new(channel.clone());
    registers
        .set_calendar(with_token(
            SetCalendarRequest {
                calendar: Some(rollcall_api::registers::v1::Calendar {
                    laestab: SCHOOL.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason() {
    let work = tempfile::tempdir().expect("temp dir");
    let idp = provider();
    let running = start_with_file(work.path(), &idp).await;
    let channel = channel(&running).await;
    let now = chrono::Utc::now().timestamp();
    let lead = |extra: serde_json::Value| {
        let mut claims =
            json!({"sub": "u-17", "roles": ["senior_attendance_lead"], "schools": [SCHOOL]});
        if let (Some(claims), serde_json::Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        idp.sign(claims).expect("token")
    };
    let stranger = IdentityProvider::new(ISSUER, AUDIENCE).expect("another provider");

    let cases: Vec<(&str, Option<String>, Code, &str)> = vec![
        ("no token", None, Code::Unauthenticated, "no bearer token"),
        (
            "not a JWT",
            Some("abc.def".to_owned()),
            Code::Unauthenticated,
            "not a JSON Web Token",
        ),
        (
            "expired",
            Some(lead(
                json!({"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}),
            )),
            Code::Unauthenticated,
            "expired at",
        ),
        (
            "not yet valid",
            Some(lead(json!({"nbf": now + 3600}))),
            Code::Unauthenticated,
            "not valid until",
        ),
        (
            "wrong audience",
            Some(lead(json!({"aud": "api://another-app"}))),
            Code::Unauthenticated,
            "api://another-app",
        ),
        (
            "wrong issuer",
            Some(lead(json!({"iss": "https://evil.example.org/"}))),
            Code::Unauthenticated,
            "https://evil.example.org/",
        ),
        (
            "another provider's key",
            Some(
                stranger
                    .sign(json!({"sub": "u-17", "roles": ["headteacher"]}))
                    .expect("token"),
            ),
            Code::Unauthenticated,
            "signature does not match",
        ),
        (
            "no subject",
            Some(idp.sign(json!({"roles": ["headteacher"]})).expect("token")),
            Code::Unauthenticated,
            "\"sub\"",
        ),
        (
            "a parent",
            Some(idp.token("p-3", &["parent"], &[SCHOOL]).expect("token")),
            Code::PermissionDenied,
            "grants no rollcall role",
        ),
        (
            "a claimed service role",
            Some(idp.token("s-1", &["service"], &[]).expect("token")),
            Code::PermissionDenied,
            "grants no rollcall role",
        ),
        (
            "a class teacher",
            Some(
                idp.token("t-9", &["class_teacher_or_tutor"], &[SCHOOL])
                    .expect("token"),
            ),
            Code::PermissionDenied,
            "may not call rollcall.registers.v1.RegistersService/SetCalendar",
        ),
        (
            "a bad school claim",
            Some(
                idp.token("t-9", &["office_staff"], &["Hertford"])
                    .expect("token"),
            ),
            Code::Unauthenticated,
            "\"Hertford\"",
        ),
    ];
    for (case, token, code, needle) in cases {
        let status = try_set_calendar(&channel, token.as_deref()).await;
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{case}: {}",
            status.message()
        );
    }

    // Nothing was stored by any of them.
    let office = idp
        .token("o-1", &["office_staff"], &[SCHOOL])
        .expect("token");
    let calendar = RegistersServiceClient::new(channel.clone())
        .get_calendar(with_token(
            GetCalendarRequest {
                laestab: SCHOOL.to_owned(),
            },
            Some(&office),
        ))
        .await;
    match calendar {
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        Ok(response) => panic!(
            "a refused call stored a calendar: {:?}",
            response.into_inner()
        ),
    }
    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn only_the_headteacher_and_delegates_decide_absence() {
    use rollcall_api::policy::v1::DecideAbsenceRequest;
    use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;

    let work = tempfile::tempdir().expect("temp dir");
    let idp = provider();
    let running = start_with_file(work.path(), &idp).await;
    let mut policy = PolicyServiceClient::new(channel(&running).await);
    for role in [
        "class_teacher_or_tutor",
        "office_staff",
        "head_of_year",
        "auditor",
        "mis_vendor",
    ] {
        let token = idp.token("u-1", &[role], &[SCHOOL]).expect("token");
        let status = policy
            .decide_absence(with_token(DecideAbsenceRequest::default(), Some(&token)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{role}: {status:?}");
        assert!(
            status.message().contains("headteacher, delegated_staff"),
            "{}",
            status.message()
        );
    }
    for role in ["headteacher", "delegated_staff"] {
        let token = idp.token("u-2", &[role], &[SCHOOL]).expect("token");
        let status = policy
            .decide_absence(with_token(DecideAbsenceRequest::default(), Some(&token)))
            .await
            .expect_err("an empty request is invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{role}: {status:?}");
    }
    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn rsa_tokens_and_keys_fetched_over_http_are_accepted_and_rotation_is_followed() {
    let work = tempfile::tempdir().expect("temp dir");
    let mut idp = provider();
    let keys = KeySetServer::start(&idp.jwks())
        .await
        .expect("key set server");
    let settings = format!(
        "issuer = {ISSUER:?}\naudience = {AUDIENCE:?}\njwks_url = {:?}\n",
        keys.url()
    );
    let running = start(work.path(), &settings).await;
    let channel = channel(&running).await;
    let office = |kid: &str, idp: &IdentityProvider| {
        idp.sign_with(
            kid,
            json!({"sub": "o-2", "roles": ["office_staff"], "schools": [SCHOOL]}),
        )
        .expect("token")
    };
    let reached = |status: &tonic::Status| {
        !matches!(
            status.code(),
            Code::Unauthenticated | Code::PermissionDenied
        )
    };

    let status = try_get_calendar(&channel, &office("rsa-1", &idp)).await;
    assert!(reached(&status), "an RS256 token: {status:?}");

    // The provider rotates to a new key; the first token signed with it makes the server read
    // the key set again.
    idp.add_ed25519_key("ed-2").expect("new key");
    keys.replace(&idp.jwks()).expect("publish");
    let before = keys.requests();
    let status = try_get_calendar(&channel, &office("ed-2", &idp)).await;
    assert!(reached(&status), "a token with the rotated key: {status:?}");
    assert_eq!(keys.requests(), before + 1);

    // Unknown key ids do not turn into a request to the provider each.
    for _ in 0..3 {
        let mut stranger = IdentityProvider::new(ISSUER, AUDIENCE).expect("provider");
        stranger.add_ed25519_key("ed-9").expect("key");
        let token = stranger
            .sign_with("ed-9", json!({"sub": "x", "roles": ["headteacher"]}))
            .expect("token");
        let status = try_get_calendar(&channel, &token).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(keys.requests(), before + 1);
    running.stop().await.expect("server stops");
}

async fn try_get_calendar(channel: &Channel, token: &str) -> tonic::Status {
    match RegistersServiceClient::new(channel.clone())
        .get_calendar(with_token(
            GetCalendarRequest {
                laestab: SCHOOL.to_owned(),
            },
            Some(token),
        ))
        .await
    {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// A `rollcall serve` process, killed when dropped.
struct Serve {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `rollcall serve` with `args` on a free port and waits until it serves.
fn serve(work: &Path, args: &[&str]) -> Serve {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let log = work.join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--listen", &listen, "--data-dir"])
        .arg(work.join("data"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("rollcall runs");
    let serve = Serve {
        child,
        url: format!("http://{listen}"),
        log,
    };
    let started = Instant::now();
    while !serve.log().contains("rollcall is serving") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "rollcall serve did not start:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    serve
}

#[tokio::test]
async fn the_commands_send_the_token_file_and_refusals_are_logged() {
    let work = tempfile::tempdir().expect("temp dir");
    let idp = provider();
    let jwks = work.path().join("jwks.json");
    idp.write_jwks(&jwks).expect("key set");
    let settings = work.path().join("auth.toml");
    std::fs::write(&settings, idp.settings_with_file(&jwks)).expect("settings");
    let serve = serve(work.path(), &["--auth", settings.to_str().expect("path")]);

    // Without a token the command is refused, and says how to send one.
    let output = common::run_rollcall(&serve.url, &["calendar", "show", "--school", SCHOOL]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token-file"), "{stderr}");

    // With a token file, the same command reaches the registers.
    let token_file = work.path().join("token");
    let token = idp
        .token("lead-4", &["senior_attendance_lead"], &[SCHOOL])
        .expect("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let output = common::run_rollcall(
        &serve.url,
        &[
            "--token-file",
            token_file.to_str().expect("path"),
            "calendar",
            "show",
            "--school",
            SCHOOL,
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("bearer token"), "{stderr}");
    assert!(!stderr.contains("may not call"), "{stderr}");

    // A missing token file is named.
    let output = common::run_rollcall(
        &serve.url,
        &[
            "--token-file",
            "/nonexistent/token",
            "calendar",
            "show",
            "--school",
            SCHOOL,
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/token"), "{stderr}");

    // The refusal is in the server's log with the method, and the token is not.
    let log = serve.log();
    assert!(log.contains("Refused an unauthenticated call"), "{log}");
    assert!(log.contains("RegistersService/GetCalendar"), "{log}");
    assert!(!log.contains(&token), "the token was logged");
    drop(serve);
}

#[tokio::test]
async fn serve_needs_token_settings_or_dev_on_loopback() {
    let work = tempfile::tempdir().expect("temp dir");
    let output = common::run_offline(vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        work.path().join("data").display().to_string(),
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--auth") && stderr.contains("--dev"),
        "{stderr}"
    );

    let output = common::run_offline(vec![
        "serve".into(),
        "--dev".into(),
        "--listen".into(),
        "0.0.0.0:0".into(),
        "--data-dir".into(),
        work.path().join("data").display().to_string(),
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loopback") && stderr.contains("0.0.0.0:0"),
        "{stderr}"
    );

    let settings = work.path().join("auth.toml");
    std::fs::write(&settings, "issuer = \"https://idp.example.org/\"\naudience = \"rollcall\"\njwks_file = \"missing.json\"\n").expect("settings");
    let output = common::run_offline(vec![
        "serve".into(),
        "--auth".into(),
        settings.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        work.path().join("data").display().to_string(),
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.json"), "{stderr}");
}

#[tokio::test]
async fn dev_mode_is_logged_as_insecure() {
    let work = tempfile::tempdir().expect("temp dir");
    let serve = serve(work.path(), &["--dev"]);
    let log = serve.log();
    assert!(log.contains("WITHOUT AUTHENTICATION"), "{log}");
}
