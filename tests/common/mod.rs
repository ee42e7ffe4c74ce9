//! Helpers shared by the integration tests that run the `rollcall` binary.

#![allow(dead_code)]

/// Runs the `rollcall` binary against `server` with `args`, off the async runtime.
pub(crate) async fn run_rollcall(server: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["--server".to_owned(), server.to_owned()];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    run_offline(full).await
}

/// Runs the `rollcall` binary with `args` and no server.
pub(crate) async fn run_offline(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(&args)
            .output()
            .expect("rollcall runs")
    })
    .await
    .expect("command thread")
}

/// Runs a command that must succeed, and returns its standard output.
pub(crate) async fn cli(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(
        output.status.success(),
        "rollcall {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Runs a command that must fail, and returns its standard error.
pub(crate) async fn cli_error(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(
        !output.status.success(),
        "rollcall {args:?} was expected to fail: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Imports `items` into the secondary school "Test Academy" with LAESTAB `laestab`, as an MIS
/// would, and returns the registers change-feed position after the import.
pub(crate) async fn import_register(
    registers: &mut rollcall_api::registers::v1::registers_service_client::RegistersServiceClient<
        tonic::transport::Channel,
    >,
    laestab: &str,
    request_id: &str,
    items: Vec<rollcall_api::registers::v1::import_register_request::Item>,
) -> i64 {
    use rollcall_api::registers::v1::import_register_request::Item;
    use rollcall_api::registers::v1::{ImportHeader, ImportRegisterRequest, School};
    use rollcall_api::types::v1::{MarkSource, Phase};

    let mut messages = vec![ImportRegisterRequest {
        item: Some(Item::Header(ImportHeader {
            request_id: request_id.into(),
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
        })),
    }];
    messages.extend(
        items
            .into_iter()
            .map(|item| ImportRegisterRequest { item: Some(item) }),
    );
    registers
        .import_register(tokio_stream::iter(messages))
        .await
        .expect("import")
        .into_inner()
        .feed_cursor
}
