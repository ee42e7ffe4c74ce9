//! Request limits on a real server: an over-size message, an over-size batch, a request that
//! runs past its deadline, more requests in flight than the server allows, and bad limit
//! flags.

mod common;

use std::path::Path;
use std::time::Duration;

use rollcall_api::mis_adapter::v1::mis_adapter_service_client::MisAdapterServiceClient;
use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::mis_adapter::v1::{
    ImportCtfRequest, StreamSyncRequest, SyncMark, SyncMarksRequest, SyncPupil, SyncPupilsRequest,
    stream_sync_request,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    GetSchoolRequest, ImportHeader, ImportPupil, ImportRegisterRequest, ListMarksRequest,
    ListPupilsRequest, ListSchoolsRequest, Pupil, School, import_register_request::Item,
};
use rollcall_api::types::v1::{MarkSource, Phase, Session};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use rollcall_runtime::limits::{MIN_MESSAGE_BYTES, RETRY_AFTER, ServerLimits};
use sqlx::Connection as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

const SCHOOL: &str = "9192001";

fn upn(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, serial]).to_string()
}

async fn start(work: &Path, database_url: Option<&str>, limits: ServerLimits) -> RunningServer {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    config.limits = limits;
    server::start(config).await.expect("server starts")
}

async fn channel(running: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect")
}

async fn health(channel: &Channel) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status()
}

fn sync_pupil(serial: u8) -> SyncPupil {
    SyncPupil {
        mis_id: format!("MIS{serial}"),
        upn: upn(serial),
        forename: "Test".into(),
        surname: format!("Pupil {serial}"),
        date_of_birth: "2013-05-01".into(),
        sex: "F".into(),
        admission_date: "2025-09-01".into(),
        year_group: "8".into(),
        class_name: "8B".into(),
        ..SyncPupil::default()
    }
}

fn pupils_batch(key: &str, serials: &[u8]) -> SyncPupilsRequest {
    SyncPupilsRequest {
        laestab: SCHOOL.into(),
        school_name: "Test Academy".into(),
        phase: Phase::Secondary as i32,
        idempotency_key: key.into(),
        source_name: "Example MIS".into(),
        dry_run: false,
        pupils: serials.iter().map(|serial| sync_pupil(*serial)).collect(),
    }
}

fn marks_batch(key: &str, serials: &[u8]) -> SyncMarksRequest {
    SyncMarksRequest {
        laestab: SCHOOL.into(),
        idempotency_key: key.into(),
        source_name: "Example MIS".into(),
        dry_run: false,
        marks: serials
            .iter()
            .map(|serial| SyncMark {
                mis_id: format!("MIS{serial}"),
                date: "2025-09-08".into(),
                session: Session::Am as i32,
                code: "/".into(),
                ..SyncMark::default()
            })
            .collect(),
    }
}

fn import_header(request_id: &str) -> ImportRegisterRequest {
    ImportRegisterRequest {
        item: Some(Item::Header(ImportHeader {
            request_id: request_id.into(),
            school: Some(School {
                laestab: SCHOOL.into(),
                name: "Test Academy".into(),
                phase: Phase::Secondary as i32,
                last_mark_date: String::new(),
            }),
            source: MarkSource::MisSync as i32,
            source_name: "test".into(),
            recorded_by: "test".into(),
            ..ImportHeader::default()
        })),
    }
}

fn import_pupil(serial: u8) -> ImportRegisterRequest {
    ImportRegisterRequest {
        item: Some(Item::Pupil(ImportPupil {
            pupil: Some(Pupil {
                upn: upn(serial),
                forename: "Sam".into(),
                surname: format!("Able {serial}"),
                date_of_birth: "2013-05-01".into(),
                sex: "F".into(),
                enrolments: Vec::new(),
            }),
            admission_date: "2025-09-01".into(),
            year_group: "8".into(),
            class_name: "8B".into(),
            ..ImportPupil::default()
        })),
    }
}

fn import(request_id: &str, serials: &[u8]) -> Vec<ImportRegisterRequest> {
    std::iter::once(import_header(request_id))
        .chain(serials.iter().map(|serial| import_pupil(*serial)))
        .collect()
}

async fn pupils_on_roll(registers: &mut RegistersServiceClient<Channel>) -> Vec<String> {
    let mut upns: Vec<String> = registers
        .list_pupils(ListPupilsRequest {
            laestab: SCHOOL.into(),
            ..ListPupilsRequest::default()
        })
        .await
        .expect("list pupils")
        .into_inner()
        .pupils
        .into_iter()
        .map(|pupil| pupil.upn)
        .collect();
    upns.sort();
    upns
}

fn sorted_upns(serials: &[u8]) -> Vec<String> {
    let mut upns: Vec<String> = serials.iter().map(|serial| upn(*serial)).collect();
    upns.sort();
    upns
}

/// Waits, for at most a minute, until the server counts `expected` requests in flight.
async fn wait_for_in_flight(running: &RunningServer, expected: usize) {
    for _ in 0..3_000 {
        if running.requests_in_flight() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "expected {expected} requests in flight, found {}",
        running.requests_in_flight()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_gets_resource_exhausted() {
    let work = tempfile::tempdir().expect("temporary folder");
    let limits = ServerLimits {
        max_message_bytes: MIN_MESSAGE_BYTES,
        ..ServerLimits::default()
    };
    let running = start(work.path(), None, limits).await;
    let channel = channel(&running).await;

    let mut adapter = MisAdapterServiceClient::new(channel.clone());
    let status = adapter
        .import_ctf(ImportCtfRequest {
            file_name: "large.xml".into(),
            content: vec![b' '; MIN_MESSAGE_BYTES + 1],
            imported_by: "test".into(),
            dry_run: true,
        })
        .await
        .expect_err("a message over the limit is rejected");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&MIN_MESSAGE_BYTES.to_string()),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("--max-message-bytes"),
        "{}",
        status.message()
    );

    // Within a stream, the batch over the limit ends the stream with the same status.
    let mut sync = MisSyncServiceClient::new(channel.clone());
    let mut large = marks_batch("large", &[1]);
    large.source_name = "x".repeat(MIN_MESSAGE_BYTES + 1);
    let batches = [StreamSyncRequest {
        batch: Some(stream_sync_request::Batch::Marks(large)),
    }];
    let mut results = sync
        .stream_sync(tokio_stream::iter(batches))
        .await
        .expect("the stream opens")
        .into_inner();
    let status = results
        .message()
        .await
        .expect_err("the batch over the limit ends the stream");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-message-bytes"),
        "{}",
        status.message()
    );

    // Messages within the limit are still served.
    let mut registers = RegistersServiceClient::new(channel.clone());
    registers
        .list_schools(ListSchoolsRequest::default())
        .await
        .expect("a small request is served");
    assert_eq!(health(&channel).await, ServingStatus::Serving);
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_batch_stores_nothing() {
    let work = tempfile::tempdir().expect("temporary folder");
    let limits = ServerLimits {
        max_batch_rows: 3,
        max_import_items: 3,
        ..ServerLimits::default()
    };
    let running = start(work.path(), None, limits).await;
    let channel = channel(&running).await;
    let mut sync = MisSyncServiceClient::new(channel.clone());
    let mut registers = RegistersServiceClient::new(channel.clone());

    // A pupils batch over the limit creates neither the school nor its pupils.
    let status = sync
        .sync_pupils(pupils_batch("pupils-4", &[1, 2, 3, 4]))
        .await
        .expect_err("four pupils are over the limit of three");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for expected in ["pupils", "4", "3", "--max-batch-rows"] {
        assert!(status.message().contains(expected), "{}", status.message());
    }
    let violations = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations;
    assert_eq!(violations[0].field, "pupils");
    let missing = registers
        .get_school(GetSchoolRequest {
            laestab: SCHOOL.into(),
        })
        .await
        .expect_err("the school was not created");
    assert_eq!(missing.code(), Code::NotFound);

    // A batch within the limit is applied.
    sync.sync_pupils(pupils_batch("pupils-2", &[1, 2]))
        .await
        .expect("two pupils are within the limit");

    // A marks batch over the limit stores no mark, alone or within a stream.
    let status = sync
        .sync_marks(marks_batch("marks-4", &[1, 2, 1, 2]))
        .await
        .expect_err("four marks are over the limit of three");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("marks"), "{}", status.message());
    let batches = [StreamSyncRequest {
        batch: Some(stream_sync_request::Batch::Marks(marks_batch(
            "marks-4-stream",
            &[1, 2, 1, 2],
        ))),
    }];
    let status = sync
        .stream_sync(tokio_stream::iter(batches))
        .await
        .expect("the stream opens")
        .into_inner()
        .message()
        .await
        .expect_err("the batch over the limit ends the stream");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("batch 0:"),
        "{}",
        status.message()
    );
    let marks = registers
        .list_marks(ListMarksRequest {
            laestab: SCHOOL.into(),
            ..ListMarksRequest::default()
        })
        .await
        .expect("list marks")
        .into_inner()
        .marks;
    assert!(marks.is_empty(), "{marks:?}");

    // An import over the limit stores none of its pupils.
    let status = registers
        .import_register(tokio_stream::iter(import("import-4", &[5, 6, 7, 8])))
        .await
        .expect_err("four pupils are over the import limit of three");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("--max-import-items"),
        "{}",
        status.message()
    );
    assert_eq!(pupils_on_roll(&mut registers).await, sorted_upns(&[1, 2]));
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_rolls_back_import() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    let work = tempfile::tempdir().expect("temporary folder");
    let limits = ServerLimits {
        request_timeout: Duration::from_secs(3),
        ..ServerLimits::default()
    };
    let running = start(work.path(), Some(&url), limits).await;
    let mut registers = RegistersServiceClient::new(channel(&running).await);

    // The import's last write records its request id. A lock on that table makes the import
    // wait there, after its school and pupils are written in its transaction.
    let mut blocker = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    let mut lock = blocker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE registers.imports IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock the imports table");

    let status = registers
        .import_register(tokio_stream::iter(import("deadline", &[1, 2])))
        .await
        .expect_err("the import cannot commit while the table is locked");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--request-timeout"),
        "{}",
        status.message()
    );

    // A client's shorter deadline stops the request too. tonic's client runs its own timer for
    // the deadline it sends, and may end the call first with CANCELLED.
    let mut request = tonic::Request::new(tokio_stream::iter(import("client-deadline", &[4])));
    request.set_timeout(Duration::from_millis(500));
    let status = registers
        .import_register(request)
        .await
        .expect_err("the import cannot commit while the table is locked");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    wait_for_in_flight(&running, 0).await;
    lock.rollback().await.expect("release the lock");

    // Neither request id was recorded: the same id applies a new import. It waits for the
    // write lock the stopped imports held, so it runs only once they have rolled back.
    let response = registers
        .import_register(tokio_stream::iter(import("deadline", &[3])))
        .await
        .expect("the import succeeds once the lock is released")
        .into_inner();
    assert!(!response.already_applied);
    assert_eq!(pupils_on_roll(&mut registers).await, sorted_upns(&[3]));
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_with_retry_advice() {
    let work = tempfile::tempdir().expect("temporary folder");
    let limits = ServerLimits {
        max_concurrent_requests: 2,
        ..ServerLimits::default()
    };
    let running = start(work.path(), None, limits).await;
    let channel = channel(&running).await;

    // Each import sends its header and then waits for the rest of its stream, which keeps it
    // in flight until the test sends the rest.
    let mut senders = Vec::new();
    let mut held = Vec::new();
    for serial in [1, 2] {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        sender
            .send(import_header(&format!("held-{serial}")))
            .await
            .expect("queue the header");
        let mut registers = RegistersServiceClient::new(channel.clone());
        held.push(tokio::spawn(async move {
            registers
                .import_register(ReceiverStream::new(receiver))
                .await
        }));
        senders.push((serial, sender));
    }
    wait_for_in_flight(&running, 2).await;

    // Every further request is shed at once, with retry advice.
    let mut shed = Vec::new();
    for _ in 0..8 {
        let mut registers = RegistersServiceClient::new(channel.clone());
        shed.push(tokio::spawn(async move {
            registers.list_schools(ListSchoolsRequest::default()).await
        }));
    }
    for call in shed {
        let status = call
            .await
            .expect("call task")
            .expect_err("a request over the limit is shed");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("retry after 1 s"),
            "{}",
            status.message()
        );
        let retry = status.get_details_retry_info().expect("a RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(RETRY_AFTER));
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()),
            Some("1")
        );
    }
    assert_eq!(health(&channel).await, ServingStatus::Serving);

    // The held imports finish once the rest of their streams arrives.
    for (serial, sender) in senders {
        sender
            .send(import_pupil(serial))
            .await
            .expect("queue a pupil");
    }
    for call in held {
        call.await
            .expect("import task")
            .expect("a held import succeeds");
    }
    wait_for_in_flight(&running, 0).await;

    // With one import held, a sync batch takes the second place. Its own calls to the
    // registers are not counted, so it succeeds although the limit is then reached.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(import_header("held-again"))
        .await
        .expect("queue the header");
    let mut registers = RegistersServiceClient::new(channel.clone());
    let held = tokio::spawn(async move {
        registers
            .import_register(ReceiverStream::new(receiver))
            .await
    });
    wait_for_in_flight(&running, 1).await;
    let mut sync = MisSyncServiceClient::new(channel.clone());
    sync.sync_pupils(pupils_batch("sync-under-load", &[3]))
        .await
        .expect("a sync batch within the limit succeeds");
    sender.send(import_pupil(4)).await.expect("queue a pupil");
    drop(sender);
    held.await
        .expect("import task")
        .expect("the held import succeeds");

    let mut registers = RegistersServiceClient::new(channel.clone());
    assert_eq!(
        pupils_on_roll(&mut registers).await,
        sorted_upns(&[1, 2, 3, 4])
    );
    assert_eq!(health(&channel).await, ServingStatus::Serving);
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_spares_streams() {
    let work = tempfile::tempdir().expect("temporary folder");
    let limits = ServerLimits {
        request_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    };
    let running = start(work.path(), None, limits).await;
    let channel = channel(&running).await;
    let mut sync = MisSyncServiceClient::new(channel.clone());

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut results = sync
        .stream_sync(ReceiverStream::new(receiver))
        .await
        .expect("the stream opens")
        .into_inner();
    // The stream stays open past the server's one-second timeout for requests.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sender
        .send(StreamSyncRequest {
            batch: Some(stream_sync_request::Batch::Pupils(pupils_batch(
                "late",
                &[1],
            ))),
        })
        .await
        .expect("send a batch");
    let result = results
        .message()
        .await
        .expect("the stream is still open")
        .expect("a result for the batch");
    assert_eq!(result.batch_index, 0);
    drop(sender);
    running.stop().await.expect("server stops");
}

#[tokio::test]
async fn serve_rejects_bad_limit_flags() {
    let work = tempfile::tempdir().expect("temporary folder");
    let data_dir = work.path().join("data").display().to_string();
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--max-concurrent-requests", "0"],
            &["--max-concurrent-requests", "'0'"],
        ),
        (
            &["--max-message-bytes", "1000"],
            &["--max-message-bytes", "'1000'"],
        ),
        (
            &["--request-timeout", "86400"],
            &["--request-timeout", "'86400'"],
        ),
        (
            &["--max-batch-rows", "500", "--max-import-items", "100"],
            &["--max-import-items 100", "--max-batch-rows 500"],
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec![
            "serve".to_owned(),
            "--dev".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            data_dir.clone(),
        ];
        args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let output = common::run_offline(args).await;
        assert!(!output.status.success(), "{flags:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for text in expected {
            assert!(stderr.contains(text), "{flags:?}: {stderr}");
        }
    }
}
