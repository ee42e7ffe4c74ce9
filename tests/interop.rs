//! The MIS sync API called from Python (grpcio) and Node (@grpc/grpc-js), as vendors would,
//! from the proto files alone. The clients are in tests/interop; scripts/test installs their
//! libraries under target/tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use rollcall_cli::server::{self, ServerConfig};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Returns the folder a client library was installed into, or fails naming the command that
/// installs it.
fn tools(folder: &str, install: &str) -> PathBuf {
    let path = repository().join("target/tools").join(folder);
    assert!(
        path.is_dir(),
        "{} is missing: run scripts/test once, or install it with `{install}`",
        path.display()
    );
    path
}

fn run_client(program: &str, script: &Path, address: &str, environment: (&str, PathBuf)) {
    let output = Command::new(program)
        .arg(script)
        .arg(address)
        .arg(repository().join("proto"))
        .env(environment.0, environment.1)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_clients_use_the_sync_api() {
    let python = tools(
        "python",
        "python3 -m pip install --target target/tools/python grpcio==1.85.1 grpcio-tools==1.85.1",
    );
    let node = tools(
        "node/node_modules",
        "npm install --prefix target/tools/node @grpc/grpc-js@1.14.7 @grpc/proto-loader@0.8.1",
    );
    let work = tempfile::tempdir().expect("temporary folder");
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.path().join("data"),
        None,
    )
    .expect("config");
    let running = server::start(config).await.expect("server starts");
    let address = running.url().trim_start_matches("http://").to_owned();
    let clients = repository().join("tests/interop");

    let python_client = clients.join("sync_client.py");
    let python_address = address.clone();
    let node_client = clients.join("sync_client.js");
    tokio::task::spawn_blocking(move || {
        run_client(
            "python3",
            &python_client,
            &python_address,
            ("PYTHONPATH", python),
        );
        run_client("node", &node_client, &python_address, ("NODE_PATH", node));
    })
    .await
    .expect("clients ran");

    running.stop().await.expect("stops");
}
