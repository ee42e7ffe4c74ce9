//! Delivery of referral packs to the local authority on a real server: to a folder, and to a
//! local HTTPS receiver that checks every signature. Covers retries, permanent rejections,
//! RetryDelivery, repeated and rebuilt packs, a server stopped mid-delivery, two servers
//! sharing one database, bad settings files and the `rollcall delivery` commands. Each
//! storage scenario runs on SQLite and on PostgreSQL.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rollcall_api::mis_adapter::v1::mis_adapter_service_client::MisAdapterServiceClient;
use rollcall_api::mis_adapter::v1::{
    DeliverReferralPackRequest, Delivery, DeliveryStatus, DestinationKind, ListDeliveriesRequest,
    RetryDeliveryRequest,
};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_mis_adapter::DeliveryConfig;
use rollcall_testkit::la::ReceivingServer;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

const LAESTAB: &str = "9192001";
const HMAC_KEY: &str = "test-key-shared-with-the-local-authority";

/// How long a test waits for the worker before it fails. Deliveries normally settle in well
/// under a second; the margin is for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(120);

type Client = MisAdapterServiceClient<Channel>;

macro_rules! on_both_databases {
    ($scenario:ident, $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            $scenario(None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            let url = rollcall_testkit::postgres()
                .await
                .expect("PostgreSQL for the tests")
                .create_database()
                .await
                .expect("database");
            $scenario(Some(&url)).await;
        }
    };
}

/// Returns the settings file text: the destinations, fast retries and a short lease.
fn settings(destinations: &[String], max_attempts: u32) -> String {
    format!(
        "{}\n[retries]\nmax_attempts = {max_attempts}\nfirst_retry_seconds = 0.05\n\
         max_retry_seconds = 0.2\n\n[worker]\npoll_seconds = 0.05\nlease_seconds = 6\n",
        destinations.join("\n")
    )
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Writes the key and CA files for `receiver` into `work` and returns its destination table.
fn https_destination(work: &Path, receiver: &ReceivingServer) -> String {
    let key_file = work.join("la-hmac-key");
    std::fs::write(&key_file, format!("{HMAC_KEY}\n")).expect("key file");
    let ca_file = work.join("la-ca.pem");
    std::fs::write(&ca_file, receiver.ca_pem()).expect("CA file");
    format!(
        "[[destination]]\nname = \"la-portal\"\nkind = \"https\"\nurl = \"{}\"\n\
         hmac_key_file = {}\nca_file = {}\ntimeout_seconds = 5\n",
        receiver.url(),
        quoted(&key_file),
        quoted(&ca_file)
    )
}

fn directory_destination(name: &str, folder: &Path) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\nkind = \"directory\"\npath = {}\n\
         timeout_seconds = 5\n",
        quoted(folder)
    )
}

async fn start(work: &Path, database_url: Option<&str>, settings: Option<&str>) -> RunningServer {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    if let Some(text) = settings {
        config.delivery = DeliveryConfig::parse(text).expect("delivery settings");
    }
    server::start(config).await.expect("server starts")
}

async fn connect(running: &RunningServer) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    MisAdapterServiceClient::new(channel)
}

/// Returns a small ZIP archive whose manifest names the referral and the pack's version, so
/// that a rebuilt pack differs from the first.
fn zip_pack(referral_id: &str, version: u32) -> Vec<u8> {
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    archive
        .start_file("manifest.json", zip::write::SimpleFileOptions::default())
        .expect("ZIP entry");
    archive
        .write_all(
            serde_json::json!({ "referral_id": referral_id, "version": version })
                .to_string()
                .as_bytes(),
        )
        .expect("ZIP entry written");
    archive.finish().expect("ZIP archive").into_inner()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn pack_request(referral_id: &str, version: u32) -> DeliverReferralPackRequest {
    let pack = zip_pack(referral_id, version);
    let pack_id = format!("pack-{LAESTAB}-{referral_id}-v{version}");
    DeliverReferralPackRequest {
        referral_id: referral_id.to_owned(),
        file_name: format!("{pack_id}.zip"),
        pack_id,
        laestab: LAESTAB.to_owned(),
        sha256: sha256_hex(&pack),
        pack,
    }
}

async fn deliver(client: &mut Client, request: DeliverReferralPackRequest) -> Vec<Delivery> {
    client
        .deliver_referral_pack(request)
        .await
        .expect("pack queued")
        .into_inner()
        .deliveries
}

async fn list(client: &mut Client) -> Vec<Delivery> {
    client
        .list_deliveries(ListDeliveriesRequest::default())
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
}

async fn get(client: &mut Client, id: &str) -> Delivery {
    list(client)
        .await
        .into_iter()
        .find(|delivery| delivery.id == id)
        .unwrap_or_else(|| panic!("delivery {id} is listed"))
}

/// Waits until delivery `id` has `status`, and returns it.
async fn wait_for(client: &mut Client, id: &str, status: DeliveryStatus) -> Delivery {
    let started = Instant::now();
    loop {
        let delivery = get(client, id).await;
        if delivery.status == status as i32 {
            return delivery;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "delivery {id} did not become {status:?}: {delivery:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn outcomes(delivery: &Delivery) -> Vec<&str> {
    delivery
        .history
        .iter()
        .map(|attempt| attempt.outcome.as_str())
        .collect()
}

fn seconds(at: Option<&prost_types::Timestamp>) -> f64 {
    let at = at.expect("timestamp");
    at.seconds as f64 + f64::from(at.nanos) / 1e9
}

async fn run_rollcall(server: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["--server".to_owned(), server.to_owned()];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(&full)
            .output()
            .expect("rollcall runs")
    })
    .await
    .expect("command thread")
}

async fn cli(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

async fn cli_error(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(!output.status.success(), "expected a failure");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A pack goes to a folder with a receipt file beside it. A folder that is missing is retried
/// until attempts run out, then delivered by RetryDelivery once it exists.
async fn directory_delivery(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let transfer = work.path().join("transfer");
    std::fs::create_dir(&transfer).expect("transfer folder");
    let unmounted = work.path().join("unmounted");
    let text = settings(
        &[
            directory_destination("la-sftp", &transfer),
            directory_destination("la-archive", &unmounted),
        ],
        3,
    );
    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;

    let request = pack_request("ref-0001", 1);
    let queued = deliver(&mut client, request.clone()).await;
    assert_eq!(queued.len(), 2, "one delivery per destination");
    assert_eq!(queued[0].destination, "la-sftp");
    assert_eq!(
        queued[0].destination_kind,
        DestinationKind::Directory as i32
    );
    assert_eq!(queued[1].destination, "la-archive");

    let delivered = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;
    let pack_path = transfer.join(&request.file_name);
    assert_eq!(std::fs::read(&pack_path).expect("pack file"), request.pack);
    let receipt = delivered.receipt.clone().expect("receipt");
    assert_eq!(receipt.path, pack_path.display().to_string());
    assert_eq!(receipt.receipt_id, delivered.id);
    assert_eq!(receipt.http_status, 0);
    assert!(delivered.last_error.is_empty(), "{}", delivered.last_error);

    let receipt_file = transfer.join(format!("{}.receipt.json", request.file_name));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&receipt_file).expect("receipt file"))
            .expect("receipt JSON");
    assert_eq!(written["referral_id"], "ref-0001");
    assert_eq!(written["pack_id"], request.pack_id.as_str());
    assert_eq!(written["sha256"], request.sha256.as_str());
    assert_eq!(written["laestab"], LAESTAB);
    let written_at = written["written_at"].as_str().expect("written_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(written_at).is_ok(),
        "{written_at}"
    );
    let names: Vec<String> = std::fs::read_dir(&transfer)
        .expect("transfer folder listing")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(names.len(), 2, "pack and receipt only: {names:?}");

    // The missing folder is a retryable failure, until the attempts run out.
    let failed = wait_for(&mut client, &queued[1].id, DeliveryStatus::Failed).await;
    assert_eq!(failed.attempts, 3);
    assert_eq!(outcomes(&failed), ["retry", "retry", "failed"]);
    assert!(
        failed.last_error.contains(&unmounted.display().to_string()),
        "{}",
        failed.last_error
    );
    assert!(
        failed
            .last_error
            .contains("check that the share is mounted"),
        "{}",
        failed.last_error
    );
    assert!(
        failed.last_error.contains("gave up after 3 attempts"),
        "{}",
        failed.last_error
    );

    // The same pack again queues nothing.
    let again = deliver(&mut client, request.clone()).await;
    let ids: Vec<&str> = again.iter().map(|delivery| delivery.id.as_str()).collect();
    assert_eq!(ids, [queued[0].id.as_str(), queued[1].id.as_str()]);
    assert_eq!(list(&mut client).await.len(), 2);

    std::fs::create_dir(&unmounted).expect("folder mounted");
    client
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: failed.id.clone(),
        })
        .await
        .expect("retry");
    let retried = wait_for(&mut client, &failed.id, DeliveryStatus::Delivered).await;
    assert_eq!(retried.attempts, 4);
    assert_eq!(
        std::fs::read(unmounted.join(&request.file_name)).expect("pack file"),
        request.pack
    );

    running.stop().await.expect("server stops");
}

on_both_databases!(
    directory_delivery,
    directory_delivery_on_sqlite,
    directory_delivery_on_postgres
);

/// A pack goes to the HTTPS receiver with every header, signed with the shared key.
async fn https_delivery(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let text = settings(&[https_destination(work.path(), &receiver)], 3);
    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;

    let request = pack_request("ref-0002", 1);
    let queued = deliver(&mut client, request.clone()).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].destination_kind, DestinationKind::Https as i32);
    let delivered = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let pack = &received[0];
    assert_eq!(pack.body, request.pack);
    assert_eq!(pack.idempotency_key, "ref-0002");
    assert_eq!(pack.header("content-type"), Some("application/zip"));
    assert_eq!(pack.header("idempotency-key"), Some("ref-0002"));
    assert_eq!(
        pack.header("x-rollcall-pack-id"),
        Some(request.pack_id.as_str())
    );
    assert_eq!(
        pack.header("x-rollcall-pack-sha256"),
        Some(request.sha256.as_str())
    );

    // The test signs independently of rollcall, as the receiver's developers would.
    let timestamp = pack.header("x-rollcall-timestamp").expect("timestamp");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(HMAC_KEY.as_bytes()).expect("key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&request.pack);
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(pack.header("x-rollcall-signature"), Some(expected.as_str()));
    let sent_at: i64 = timestamp.parse().expect("unix seconds");
    assert!(
        (chrono::Utc::now().timestamp() - sent_at).abs() < 300,
        "{sent_at}"
    );

    let receipt = delivered.receipt.clone().expect("receipt");
    assert_eq!(receipt.receipt_id, pack.receipt_id);
    assert_eq!(receipt.http_status, 201);
    assert!(receipt.path.is_empty());
    let received_at = chrono::DateTime::parse_from_rfc3339(&pack.received_at)
        .expect("receiver's time")
        .timestamp();
    assert_eq!(
        receipt.received_at.as_ref().map(|at| at.seconds),
        Some(received_at)
    );
    assert_eq!(outcomes(&delivered), ["delivered"]);
    assert_eq!(receiver.statuses(), [201]);

    running.stop().await.expect("server stops");
}

on_both_databases!(
    https_delivery,
    https_delivery_on_sqlite,
    https_delivery_on_postgres
);

/// 503 replies are retried after the Retry-After wait until the pack is delivered. A pack
/// that runs out of attempts fails, and RetryDelivery gives it a fresh allowance.
async fn retries_after_503(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let text = settings(&[https_destination(work.path(), &receiver)], 3);
    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;

    receiver.fail_next(2, Some(1));
    let queued = deliver(&mut client, pack_request("ref-0003", 1)).await;
    let delivered = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;
    assert_eq!(delivered.attempts, 3);
    assert_eq!(outcomes(&delivered), ["retry", "retry", "delivered"]);
    let statuses: Vec<i32> = delivered
        .history
        .iter()
        .map(|attempt| attempt.http_status)
        .collect();
    assert_eq!(statuses, [503, 503, 201]);
    assert!(
        delivered.history[0].detail.contains("503"),
        "{}",
        delivered.history[0].detail
    );
    // The retry waited at least the second the receiver asked for, though the backoff
    // settings alone would have waited at most 0.2 s.
    let first_finished = seconds(delivered.history[0].finished_at.as_ref());
    let second_started = seconds(delivered.history[1].started_at.as_ref());
    assert!(
        second_started - first_finished >= 1.0,
        "retried after {} s",
        second_started - first_finished
    );
    assert_eq!(receiver.statuses(), [503, 503, 201]);

    receiver.fail_next(5, None);
    let queued = deliver(&mut client, pack_request("ref-0004", 1)).await;
    let failed = wait_for(&mut client, &queued[0].id, DeliveryStatus::Failed).await;
    assert_eq!(failed.attempts, 3);
    assert!(failed.last_error.contains("503"), "{}", failed.last_error);
    assert!(
        failed.last_error.contains("gave up after 3 attempts"),
        "{}",
        failed.last_error
    );
    assert!(
        !failed.last_error.contains(HMAC_KEY),
        "{}",
        failed.last_error
    );
    client
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: failed.id.clone(),
        })
        .await
        .expect("retry");
    let delivered = wait_for(&mut client, &failed.id, DeliveryStatus::Delivered).await;
    assert_eq!(delivered.attempts, 6);
    assert_eq!(
        outcomes(&delivered),
        ["retry", "retry", "failed", "retry", "retry", "delivered"]
    );
    assert_eq!(receiver.referrals(), 2);

    running.stop().await.expect("server stops");
}

on_both_databases!(
    retries_after_503,
    retries_after_503_on_sqlite,
    retries_after_503_on_postgres
);

/// A 400 fails the delivery at once with the receiver's message. `rollcall delivery` lists
/// it and retries it, and RetryDelivery rejects an unknown or delivered id.
async fn rejected_then_retried(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let text = settings(&[https_destination(work.path(), &receiver)], 3);
    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;
    let url = running.url();

    receiver.reject_next();
    let queued = deliver(&mut client, pack_request("ref-0005", 1)).await;
    let failed = wait_for(&mut client, &queued[0].id, DeliveryStatus::Failed).await;
    assert_eq!(failed.attempts, 1, "a 400 is not retried");
    assert_eq!(outcomes(&failed), ["failed"]);
    assert_eq!(failed.history[0].http_status, 400);
    assert!(
        failed.last_error.contains("400 Bad Request"),
        "{}",
        failed.last_error
    );
    assert!(
        failed
            .last_error
            .contains("missing the school's contact name"),
        "{}",
        failed.last_error
    );

    let table = cli(&url, &["delivery", "list", "--status", "failed"]).await;
    assert!(table.contains(&failed.id), "{table}");
    assert!(table.contains("ref-0005"), "{table}");
    assert!(table.contains("la-portal"), "{table}");
    assert!(table.contains("failed"), "{table}");
    assert!(table.contains("1 delivery"), "{table}");
    let none = cli(&url, &["delivery", "list", "--status", "delivered"]).await;
    assert!(none.contains("No deliveries"), "{none}");

    let retried = cli(&url, &["delivery", "retry", &failed.id]).await;
    assert!(retried.contains("queued again"), "{retried}");
    let delivered = wait_for(&mut client, &failed.id, DeliveryStatus::Delivered).await;
    assert_eq!(outcomes(&delivered), ["failed", "delivered"]);
    assert_eq!(receiver.referrals(), 1);

    let json = cli(
        &url,
        &["delivery", "list", "--referral", "ref-0005", "--json"],
    )
    .await;
    let rows: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], failed.id.as_str());
    assert_eq!(rows[0]["status"], "delivered");
    assert_eq!(rows[0]["destination_kind"], "https");
    assert_eq!(rows[0]["receipt"]["http_status"], 201);
    assert_eq!(rows[0]["receipt"]["receipt_id"], "LA-000001");
    assert_eq!(rows[0]["history"].as_array().map(Vec::len), Some(2));

    let again = client
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: failed.id.clone(),
        })
        .await
        .expect_err("a delivered pack is not retried");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("already delivered"),
        "{}",
        again.message()
    );
    let unknown = client
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: "dlv-99999999".into(),
        })
        .await
        .expect_err("unknown delivery");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("dlv-99999999"),
        "{}",
        unknown.message()
    );
    let error = cli_error(&url, &["delivery", "retry", "dlv-99999999"]).await;
    assert!(error.contains("dlv-99999999 not found"), "{error}");

    running.stop().await.expect("server stops");
}

on_both_databases!(
    rejected_then_retried,
    rejected_then_retried_on_sqlite,
    rejected_then_retried_on_postgres
);

/// The same pack twice queues nothing new, and a rebuilt pack is sent under the same
/// idempotency key, so the receiver keeps one referral and its first receipt.
async fn same_referral_twice(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let text = settings(&[https_destination(work.path(), &receiver)], 3);
    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;

    let first = pack_request("ref-0006", 1);
    let queued = deliver(&mut client, first.clone()).await;
    let delivered = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;

    let repeated = deliver(&mut client, first.clone()).await;
    assert_eq!(repeated.len(), 1);
    assert_eq!(repeated[0].id, delivered.id, "the existing delivery");
    assert_eq!(repeated[0].status, DeliveryStatus::Delivered as i32);
    assert_eq!(list(&mut client).await.len(), 1, "nothing new queued");

    let rebuilt = pack_request("ref-0006", 2);
    assert_ne!(rebuilt.sha256, first.sha256);
    let queued = deliver(&mut client, rebuilt.clone()).await;
    assert_ne!(queued[0].id, delivered.id, "a new delivery");
    let redelivered = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;

    assert_eq!(receiver.referrals(), 1);
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, first.pack, "the receiver kept the first");
    assert_eq!(receiver.statuses(), [201, 200]);
    assert_eq!(
        redelivered.receipt.as_ref().map(|r| r.receipt_id.as_str()),
        delivered.receipt.as_ref().map(|r| r.receipt_id.as_str())
    );
    assert_eq!(
        redelivered.receipt.as_ref().map(|r| r.http_status),
        Some(200)
    );
    let old = get(&mut client, &delivered.id).await;
    assert_eq!(old.status, DeliveryStatus::Delivered as i32);
    assert_eq!(old.superseded_by, redelivered.id);

    // A failed pack that is rebuilt cannot be retried any more, so that it never lands after
    // the rebuilt one.
    receiver.reject_next();
    let queued = deliver(&mut client, pack_request("ref-0010", 1)).await;
    let rejected = wait_for(&mut client, &queued[0].id, DeliveryStatus::Failed).await;
    let queued = deliver(&mut client, pack_request("ref-0010", 2)).await;
    let replacement = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;
    let superseded = get(&mut client, &rejected.id).await;
    assert_eq!(superseded.status, DeliveryStatus::Failed as i32);
    assert_eq!(superseded.superseded_by, replacement.id);
    assert!(
        superseded.last_error.contains(&replacement.id),
        "{}",
        superseded.last_error
    );
    let error = client
        .retry_delivery(RetryDeliveryRequest {
            delivery_id: rejected.id.clone(),
        })
        .await
        .expect_err("a superseded pack is not retried");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error
            .message()
            .contains(&format!("retry {} instead", replacement.id)),
        "{}",
        error.message()
    );
    assert_eq!(receiver.referrals(), 2);

    // A pack rebuilt while the first is being delivered waits for that attempt. The first
    // attempt times out and is not retried, and the rebuilt pack gets the first receipt.
    receiver.stall_next();
    let queued = deliver(&mut client, pack_request("ref-0011", 1)).await;
    let interrupted_id = queued[0].id.clone();
    let started = Instant::now();
    while receiver.stalled() == 0 {
        assert!(started.elapsed() < DEADLINE, "the pack did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = deliver(&mut client, pack_request("ref-0011", 2)).await;
    let replacement = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;
    let timed_out = wait_for(&mut client, &interrupted_id, DeliveryStatus::Failed).await;
    assert_eq!(timed_out.superseded_by, replacement.id);
    assert_eq!(outcomes(&timed_out), ["failed"]);
    assert!(
        timed_out.last_error.contains("timed out"),
        "{}",
        timed_out.last_error
    );
    assert!(
        timed_out
            .last_error
            .contains(&format!("not retried: superseded by {}", replacement.id)),
        "{}",
        timed_out.last_error
    );
    let stored = receiver
        .received()
        .into_iter()
        .find(|pack| pack.idempotency_key == "ref-0011")
        .expect("the first pack was stored");
    assert_eq!(
        replacement.receipt.as_ref().map(|r| r.receipt_id.as_str()),
        Some(stored.receipt_id.as_str())
    );
    assert_eq!(receiver.referrals(), 3);

    running.stop().await.expect("server stops");
}

on_both_databases!(
    same_referral_twice,
    same_referral_twice_on_sqlite,
    same_referral_twice_on_postgres
);

/// A pack whose SHA-256 does not match is rejected, naming both values, and nothing is
/// stored or sent.
async fn sha256_mismatch(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let text = settings(&[https_destination(work.path(), &receiver)], 3);
    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;

    let mut request = pack_request("ref-0007", 1);
    let actual = request.sha256.clone();
    let wrong = sha256_hex(b"another pack");
    request.sha256 = wrong.clone();
    let error = client
        .deliver_referral_pack(request)
        .await
        .expect_err("mismatch");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains(&wrong), "{}", error.message());
    assert!(error.message().contains(&actual), "{}", error.message());
    assert!(error.message().contains("sha256"), "{}", error.message());
    assert!(list(&mut client).await.is_empty(), "nothing stored");
    assert!(receiver.statuses().is_empty(), "nothing sent");

    running.stop().await.expect("server stops");
}

on_both_databases!(
    sha256_mismatch,
    sha256_mismatch_on_sqlite,
    sha256_mismatch_on_postgres
);

/// The server stops while the receiver has stored the pack but not replied. Started again, it
/// takes the delivery back once the lease runs out and sends it again, and the receiver
/// returns its first receipt: one referral at the receiver.
async fn interrupted_delivery(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let text = settings(&[https_destination(work.path(), &receiver)], 3);
    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;

    receiver.stall_next();
    let queued = deliver(&mut client, pack_request("ref-0008", 1)).await;
    let started = Instant::now();
    while receiver.stalled() == 0 {
        assert!(started.elapsed() < DEADLINE, "the pack did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.stop().await.expect("server stops");

    let running = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&running).await;
    let delivered = wait_for(&mut client, &queued[0].id, DeliveryStatus::Delivered).await;
    let history = outcomes(&delivered);
    assert_eq!(history.last(), Some(&"delivered"), "{history:?}");
    assert!(
        history.contains(&"interrupted") || history.contains(&"retry"),
        "the first attempt did not finish: {history:?}"
    );
    assert_eq!(receiver.referrals(), 1);
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(receiver.statuses().last(), Some(&200));
    assert_eq!(
        delivered.receipt.as_ref().map(|r| r.receipt_id.as_str()),
        Some(receiver.received()[0].receipt_id.as_str())
    );

    running.stop().await.expect("server stops");
}

on_both_databases!(
    interrupted_delivery,
    interrupted_delivery_on_sqlite,
    interrupted_delivery_on_postgres
);

/// Two servers on the same storage share the work, and each pack is sent once.
async fn two_servers(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let text = settings(&[https_destination(work.path(), &receiver)], 3);
    let first = start(work.path(), database_url, Some(&text)).await;
    let second = start(work.path(), database_url, Some(&text)).await;
    let mut client = connect(&first).await;

    let mut ids = Vec::new();
    for n in 0..8 {
        let queued = deliver(&mut client, pack_request(&format!("ref-1{n:03}"), 1)).await;
        ids.push(queued[0].id.clone());
    }
    for id in &ids {
        wait_for(&mut client, id, DeliveryStatus::Delivered).await;
    }
    assert_eq!(receiver.referrals(), 8);
    assert_eq!(receiver.statuses(), [201; 8], "no pack was sent twice");

    second.stop().await.expect("second server stops");
    first.stop().await.expect("first server stops");
}

on_both_databases!(two_servers, two_servers_on_sqlite, two_servers_on_postgres);

#[tokio::test]
async fn no_destination_is_failed_precondition() {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), None, None).await;
    let mut client = connect(&running).await;

    let error = client
        .deliver_referral_pack(pack_request("ref-0009", 1))
        .await
        .expect_err("no destination");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("--delivery"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("[[destination]]"),
        "{}",
        error.message()
    );

    running.stop().await.expect("server stops");
}

/// Runs `rollcall serve` with a delivery settings file and returns its standard error. The
/// server must fail at start, and it is killed if it is still running at the deadline.
fn serve_with_settings(work: &Path, settings: &str) -> String {
    let file = work.join("delivery.toml");
    std::fs::write(&file, settings).expect("settings file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(work.join("data"))
        .arg("--delivery")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rollcall binary runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().expect("kill");
            panic!("rollcall serve accepted the settings:\n{settings}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn bad_settings_name_the_value() {
    let work = tempfile::tempdir().expect("temp dir");
    let file = work.path().join("delivery.toml").display().to_string();

    let http = serve_with_settings(
        work.path(),
        "[[destination]]\nname = \"la-portal\"\nkind = \"https\"\n\
         url = \"http://referrals.la.example/packs\"\nhmac_key_env = \"LA_KEY\"\n",
    );
    assert!(http.contains("http://referrals.la.example/packs"), "{http}");
    assert!(http.contains("does not use https"), "{http}");
    assert!(http.contains(&file), "{http}");

    let unknown = serve_with_settings(
        work.path(),
        "[[destination]]\nname = \"la-sftp\"\nkind = \"directory\"\npath = \"/srv/la\"\n\
         folder = \"/srv/la\"\n",
    );
    assert!(unknown.contains("unknown field `folder`"), "{unknown}");
    assert!(unknown.contains(&file), "{unknown}");

    let missing = work.path().join("no-such-key");
    let missing_key = serve_with_settings(
        work.path(),
        &format!(
            "[[destination]]\nname = \"la-portal\"\nkind = \"https\"\n\
             url = \"https://referrals.la.example/packs\"\nhmac_key_file = {}\n",
            quoted(&missing)
        ),
    );
    assert!(
        missing_key.contains(&missing.display().to_string()),
        "{missing_key}"
    );
    assert!(missing_key.contains("hmac_key_file"), "{missing_key}");
    assert!(missing_key.contains("la-portal"), "{missing_key}");

    let inline = serve_with_settings(
        work.path(),
        "[[destination]]\nname = \"la-portal\"\nkind = \"https\"\n\
         url = \"https://referrals.la.example/packs\"\n\
         hmac_key = \"written-into-the-settings-file-by-mistake\"\n",
    );
    assert!(inline.contains("hmac_key must not be written"), "{inline}");
    assert!(
        !inline.contains("written-into-the-settings-file-by-mistake"),
        "the key is not printed: {inline}"
    );
}
