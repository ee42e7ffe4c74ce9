//! `rollcall serve`: health, reflection, and bad configuration.

use std::process::Command;

use rollcall_cli::server::{self, ServerConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SERVICES: [&str; 6] = [
    "rollcall.registers.v1.RegistersService",
    "rollcall.policy.v1.PolicyService",
    "rollcall.cases.v1.CasesService",
    "rollcall.referrals.v1.ReferralsService",
    "rollcall.mis_adapter.v1.MisAdapterService",
    "rollcall.mis_adapter.v1.MisSyncService",
];

async fn start_on_sqlite(work: &std::path::Path) -> server::RunningServer {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        None,
    )
    .expect("config");
    server::start(config).await.expect("server starts")
}

async fn channel(running: &server::RunningServer) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn health_reports_every_service_serving() {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start_on_sqlite(work.path()).await;
    let mut health = HealthClient::new(channel(&running).await);

    for service in std::iter::once("").chain(SERVICES) {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("health of {service:?}: {status}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "rollcall.unknown.v1.Nothing".to_owned(),
        })
        .await
        .expect_err("an unknown service has no health");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_sync_service() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let work = tempfile::tempdir().expect("temp dir");
    let running = start_on_sqlite(work.path()).await;
    let mut reflection = ServerReflectionClient::new(channel(&running).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let response = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner()
        .message()
        .await
        .expect("response")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!(
            "expected a list of services, got {:?}",
            response.message_response
        );
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "rollcall.mis_adapter.v1.MisSyncService"),
        "{:?}",
        list.service
    );
    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn reflection_lists_every_service() {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start_on_sqlite(work.path()).await;
    let mut reflection = ServerReflectionClient::new(channel(&running).await);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("response")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!(
            "expected a list of services, got {:?}",
            response.message_response
        );
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for service in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            names.iter().any(|name| name == service),
            "{service} missing from {names:?}"
        );
    }

    running.stop().await.expect("server stops");
}

#[test]
fn serve_rejects_unsupported_database_url() {
    let output = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://user:secret@localhost/db",
        ])
        .output()
        .expect("the rollcall binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unsupported database URL"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "the password must not be printed: {stderr}"
    );
}

#[test]
fn serve_reports_unreachable_postgres() {
    // Port 1 on loopback has no server, so the connection is refused at once.
    let output = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://rollcall:secret@127.0.0.1:1/rollcall",
        ])
        .output()
        .expect("the rollcall binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to postgres://rollcall:***@127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret"),
        "the password must not be printed: {stderr}"
    );
}

#[test]
fn serve_rejects_invalid_listen_address() {
    let output = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--listen", "school-server"])
        .output()
        .expect("the rollcall binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("school-server"), "{stderr}");
}
