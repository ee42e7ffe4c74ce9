//! The audit log against a real server that verifies bearer tokens from a local identity
//! provider: what is recorded for writes and rejected calls, `rollcall audit` by user and by
//! pupil, who may read the log, the append-only triggers and `rollcall audit verify`. Each
//! scenario runs on SQLite and on PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, SubsecRound, Utc};
use rollcall_api::audit::v1::ListAuditEventsRequest;
use rollcall_api::audit::v1::audit_service_client::AuditServiceClient;
use rollcall_api::client::{Channel, Credentials};
use rollcall_api::registers::v1::import_register_request::Item;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    Calendar, GetPupilRequest, ImportHeader, ImportRegisterRequest, RegisterTimes, School,
    SetCalendarRequest, Term,
};
use rollcall_api::types::v1::{MarkSource, Phase};
use rollcall_audit::AuditStore;
use rollcall_auth::TokenSettings;
use rollcall_auth::audit::AuditEvent;
use rollcall_cli::server::{self, Authentication, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use rollcall_runtime::storage::connect;
use rollcall_runtime::{Db, StorageConfig, with_db};
use rollcall_testkit::identity::IdentityProvider;
use serde_json::{Value, json};
use tonic::Code;

const ISSUER: &str = "https://login.example.org/trust/v2.0";
const AUDIENCE: &str = "api://rollcall";
const SCHOOL: &str = "9192001";
const SET_CALENDAR: &str = "rollcall.registers.v1.RegistersService/SetCalendar";

macro_rules! on_both_databases {
    ($scenario:ident, $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            let work = tempfile::tempdir().expect("temporary folder");
            $scenario(work.path(), None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            let url = rollcall_testkit::postgres()
                .await
                .expect("PostgreSQL for the tests")
                .create_database()
                .await
                .expect("database");
            let work = tempfile::tempdir().expect("temporary folder");
            $scenario(work.path(), Some(&url)).await;
        }
    };
}

on_both_databases!(
    calls_are_recorded_and_listed,
    calls_are_recorded_and_listed_on_sqlite,
    calls_are_recorded_and_listed_on_postgres
);
on_both_databases!(
    log_is_append_only_and_verified,
    log_is_append_only_and_verified_on_sqlite,
    log_is_append_only_and_verified_on_postgres
);

fn upn(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, serial]).to_string()
}

/// Starts a server on `database_url`, or on SQLite under `work`, that verifies tokens from
/// `idp`, and returns it with the storage it uses.
async fn start(
    work: &Path,
    database_url: Option<&str>,
    idp: &IdentityProvider,
) -> (RunningServer, StorageConfig) {
    let jwks = work.join("jwks.json");
    idp.write_jwks(&jwks).expect("key set");
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    config.authentication = Authentication::Tokens(
        TokenSettings::parse(&idp.settings_with_file(&jwks)).expect("token settings"),
    );
    let storage = config.storage.clone();
    (server::start(config).await.expect("server starts"), storage)
}

async fn channel(running: &RunningServer, token: Option<&str>) -> Channel {
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    let credentials = match token {
        Some(token) => Credentials::bearer(token).expect("token"),
        None => Credentials::none(),
    };
    credentials.attach(channel)
}

async fn registers(
    running: &RunningServer,
    token: Option<&str>,
) -> RegistersServiceClient<Channel> {
    RegistersServiceClient::new(channel(running, token).await)
}

fn calendar_request() -> SetCalendarRequest {
    SetCalendarRequest {
        calendar: Some(Calendar {
            laestab: SCHOOL.into(),
            time_zone: "Europe/London".into(),
            am: Some(RegisterTimes {
                opens: "08:40".into(),
                closes: "09:00".into(),
            }),
            pm: Some(RegisterTimes {
                opens: "13:15".into(),
                closes: "13:30".into(),
            }),
            terms: vec![Term {
                name: "Autumn 1".into(),
                first_day: "2025-09-01".into(),
                last_day: "2025-10-24".into(),
            }],
            closures: vec![],
        }),
        changed_by: "Office".into(),
        changed_by_position: "Data manager".into(),
        ..Default::default()
    }
}

/// Creates the school, as its MIS would, so a calendar can be set for it.
async fn create_school(running: &RunningServer, token: &str) {
    let header = ImportRegisterRequest {
        item: Some(Item::Header(ImportHeader {
            request_id: "school".into(),
            school: Some(School {
                laestab: SCHOOL.into(),
                name: "Test Academy".into(),
                phase: Phase::Secondary as i32,
                last_mark_date: String::new(),
            }),
            source: MarkSource::MisSync as i32,
            source_name: "test".into(),
            recorded_by: "test".into(),
            ..Default::default()
        })),
    };
    registers(running, Some(token))
        .await
        .import_register(tokio_stream::iter([header]))
        .await
        .expect("the school is imported");
}

fn token_file(work: &Path, name: &str, token: &str) -> PathBuf {
    let path = work.join(format!("{name}.token"));
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    path
}

/// Runs `rollcall audit` with `args` and the token in `token_file`.
async fn audit(url: &str, token_file: &Path, args: &[&str]) -> Output {
    let mut full = vec!["--token-file", token_file.to_str().expect("path"), "audit"];
    full.extend(args);
    common::run_rollcall(url, &full).await
}

/// Runs `rollcall audit --json` with `args`, which must succeed, and returns the events.
async fn audit_json(url: &str, token_file: &Path, args: &[&str]) -> Vec<Value> {
    let mut full = args.to_vec();
    full.push("--json");
    let output = audit(url, token_file, &full).await;
    assert!(
        output.status.success(),
        "rollcall audit {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout).expect("JSON") {
        Value::Array(events) => events,
        other => panic!("expected an array, got {other}"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the fields every event has: a time in the test's window and a loopback peer.
fn assert_when_and_where(event: &Value, before: DateTime<Utc>, after: DateTime<Utc>) {
    let at = event["at"].as_str().expect("at");
    let at = DateTime::parse_from_rfc3339(at)
        .expect("an RFC 3339 time")
        .with_timezone(&Utc);
    assert!(
        at >= before && at <= after,
        "{at} is outside {before}..{after}"
    );
    let peer = event["peer"].as_str().expect("peer");
    assert!(peer.starts_with("127.0.0.1:"), "peer {peer}");
}

async fn calls_are_recorded_and_listed(work: &Path, database_url: Option<&str>) {
    let idp = IdentityProvider::new(ISSUER, AUDIENCE).expect("identity provider");
    let (running, storage) = start(work, database_url, &idp).await;
    let url = running.url();
    // Events keep microseconds, so the window starts on one.
    let before = Utc::now().trunc_subsecs(6);

    // A write by office staff.
    let vendor = idp
        .token("mis-1", &["mis_vendor"], &[SCHOOL])
        .expect("token");
    create_school(&running, &vendor).await;
    let office = idp
        .token("o-1", &["office_staff"], &[SCHOOL])
        .expect("token");
    registers(&running, Some(&office))
        .await
        .set_calendar(calendar_request())
        .await
        .expect("office staff set the calendar");

    // A call the role table rejects, one with an expired token, and one with no token.
    let teacher = idp
        .token("t-9", &["class_teacher_or_tutor"], &[SCHOOL])
        .expect("token");
    let status = registers(&running, Some(&teacher))
        .await
        .set_calendar(calendar_request())
        .await
        .expect_err("a class teacher may not set the calendar");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let now = Utc::now().timestamp();
    let expired = idp
        .sign(json!({
            "sub": "lead-7", "roles": ["senior_attendance_lead"], "schools": [SCHOOL],
            "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
        }))
        .expect("token");
    let status = registers(&running, Some(&expired))
        .await
        .set_calendar(calendar_request())
        .await
        .expect_err("an expired token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = registers(&running, None)
        .await
        .set_calendar(calendar_request())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A read of a pupil who was never on roll at the head of year's school, which the
    // registers service rejects after noting the pupil.
    let head_of_year = idp
        .token("hoy-9", &["head_of_year"], &[SCHOOL])
        .expect("token");
    let status = registers(&running, Some(&head_of_year))
        .await
        .get_pupil(GetPupilRequest { upn: upn(3) })
        .await
        .expect_err("a pupil of no granted school");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let after = Utc::now();

    let auditor = token_file(
        work,
        "auditor",
        &idp.token("aud-1", &["auditor"], &[]).expect("token"),
    );

    // The write, by user.
    let events = audit_json(&url, &auditor, &["--user", "o-1"]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let write = &events[0];
    assert_eq!(write["subject"], "o-1");
    assert_eq!(write["roles"], json!(["office_staff"]));
    assert_eq!(write["method"], SET_CALENDAR);
    assert_eq!(write["access"], "write");
    assert_eq!(write["outcome"], "OK");
    assert_eq!(write["schools"], json!([SCHOOL]));
    assert_eq!(write["pupils"], json!([]));
    assert_when_and_where(write, before, after);
    let events = audit_json(&url, &auditor, &["--school", SCHOOL, "--user", "o-1"]).await;
    assert_eq!(events.len(), 1, "{events:?}");

    // The rejected calls.
    let events = audit_json(&url, &auditor, &["--user", "t-9"]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["roles"], json!(["class_teacher_or_tutor"]));
    assert_eq!(events[0]["method"], SET_CALENDAR);
    assert_eq!(events[0]["outcome"], "PERMISSION_DENIED");
    assert_eq!(events[0]["schools"], json!([]));
    assert_when_and_where(&events[0], before, after);

    let events = audit_json(&url, &auditor, &["--user", "lead-7"]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["roles"], json!([]));
    assert_eq!(events[0]["method"], SET_CALENDAR);
    assert_eq!(events[0]["outcome"], "UNAUTHENTICATED");
    assert_when_and_where(&events[0], before, after);

    let everything = audit_json(&url, &auditor, &[]).await;
    let anonymous: Vec<&Value> = everything
        .iter()
        .filter(|event| event["subject"] == "")
        .collect();
    assert_eq!(anonymous.len(), 1, "{everything:?}");
    assert_eq!(anonymous[0]["outcome"], "UNAUTHENTICATED");
    assert_when_and_where(anonymous[0], before, after);
    let ids: Vec<i64> = everything
        .iter()
        .map(|event| event["id"].as_i64().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] > pair[1]),
        "not newest first: {ids:?}"
    );

    // The rejected read, by pupil. The auditor's list of every event above returned it, so
    // that read of the log names the pupil too.
    let events = audit_json(&url, &auditor, &["--upn", &upn(3)]).await;
    assert_eq!(events.len(), 2, "{events:?}");
    let read = &events[1];
    assert_eq!(read["subject"], "hoy-9");
    assert_eq!(
        read["method"],
        "rollcall.registers.v1.RegistersService/GetPupil"
    );
    assert_eq!(read["access"], "pupil_read");
    assert_eq!(read["outcome"], "PERMISSION_DENIED");
    assert_eq!(read["pupils"], json!([upn(3)]));
    assert_when_and_where(read, before, after);
    assert_eq!(events[0]["subject"], "aud-1");
    assert_eq!(
        events[0]["method"],
        "rollcall.audit.v1.AuditService/ListAuditEvents"
    );

    // The same write as a table.
    let output = audit(&url, &auditor, &["--user", "o-1"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("RegistersService/SetCalendar"), "{text}");
    assert!(text.contains("office_staff"), "{text}");
    assert!(text.contains("1 event"), "{text}");

    // By pupil. The first read finds nothing, and is itself recorded as a read of that
    // pupil's records, so the second read finds the first.
    let pupil = upn(1);
    let output = audit(&url, &auditor, &["--upn", &pupil]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains(&format!("No audit events for pupil {pupil}")),
        "{text}"
    );
    let events = audit_json(&url, &auditor, &["--upn", &pupil]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["subject"], "aud-1");
    assert_eq!(
        events[0]["method"],
        "rollcall.audit.v1.AuditService/ListAuditEvents"
    );
    assert_eq!(events[0]["access"], "pupil_read");
    assert_eq!(events[0]["pupils"], json!([pupil]));

    // Another writer on the same store, as a second server process would be, continues the
    // same chain.
    let other = AuditStore::new(
        connect(&storage, rollcall_audit::MIGRATIONS)
            .await
            .expect("audit store"),
    );
    other
        .append(AuditEvent {
            at: Utc::now(),
            subject: "hoy-3".into(),
            roles: "head_of_year".into(),
            method: "rollcall.registers.v1.RegistersService/GetPupil".into(),
            access: "pupil_read".into(),
            peer: "127.0.0.1:40000".into(),
            outcome: "OK".into(),
            schools: vec![SCHOOL.into()],
            pupils: vec![pupil.clone(), upn(2)],
        })
        .await
        .expect("append");
    let events = audit_json(&url, &auditor, &["--upn", &pupil.to_lowercase()]).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["subject"], "hoy-3");
    assert_eq!(events[0]["schools"], json!([SCHOOL]));
    let events = audit_json(&url, &auditor, &["--school", SCHOOL, "--user", "hoy-3"]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let events = audit_json(&url, &auditor, &["--upn", &upn(2), "--user", "o-1"]).await;
    assert!(events.is_empty(), "{events:?}");

    // Dates and the limit.
    let tomorrow = (Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let yesterday = (before - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let output = audit(&url, &auditor, &["--user", "o-1", "--since", &tomorrow]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("No audit events by user o-1 since"),
        "{}",
        stdout(&output)
    );
    let events = audit_json(&url, &auditor, &["--user", "o-1", "--until", &yesterday]).await;
    assert!(events.is_empty(), "{events:?}");
    let events = audit_json(&url, &auditor, &["--user", "o-1", "--since", &yesterday]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let output = audit(&url, &auditor, &["--limit", "2"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("raise --limit"),
        "{}",
        stdout(&output)
    );

    // Bad options are named.
    for (args, needle) in [
        (vec!["--upn", "A12345"], "invalid --upn"),
        (vec!["--upn", &bad_check_letter(&pupil)], "check letter"),
        (vec!["--since", "2026-13-01"], "invalid --since"),
        (vec!["--until", "yesterday"], "invalid --until"),
        (vec!["--school", "Hertford"], "invalid --school"),
        (vec!["--limit", "0"], "--limit"),
    ] {
        let output = audit(&url, &auditor, &args).await;
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }

    // Trust IT may read the log. A head of year may not, and is recorded trying.
    let trust_it = token_file(
        work,
        "trust-it",
        &idp.token("it-1", &["trust_it"], &[]).expect("token"),
    );
    let events = audit_json(&url, &trust_it, &["--user", "o-1"]).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let head_of_year = token_file(
        work,
        "head-of-year",
        &idp.token("hoy-3", &["head_of_year"], &[SCHOOL])
            .expect("token"),
    );
    for args in [vec!["--user", "o-1"], vec!["verify"]] {
        let output = audit(&url, &head_of_year, &args).await;
        assert!(!output.status.success(), "{args:?}: {}", stdout(&output));
        assert!(
            stderr(&output).contains("may not call rollcall.audit.v1.AuditService/"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let events = audit_json(&url, &auditor, &["--user", "hoy-3"]).await;
    let rejected: Vec<&Value> = events
        .iter()
        .filter(|event| event["outcome"] == "PERMISSION_DENIED")
        .collect();
    assert_eq!(rejected.len(), 2, "{events:?}");

    let output = audit(&url, &trust_it, &["verify"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("intact"), "{}", stdout(&output));

    running.stop().await.expect("server stops");
}

/// Returns `upn` with a check letter that does not match its digits.
fn bad_check_letter(upn: &str) -> String {
    let wrong = if upn.starts_with('A') { 'B' } else { 'A' };
    format!("{wrong}{}", &upn[1..])
}

/// Runs `sql` on the audit store and returns the error message, if any.
async fn execute(db: &Db, sql: &str) -> Option<String> {
    let sql = sql.to_owned();
    let result = with_db!(db, |pool| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .map(|_| ())
    });
    result.err().map(|error| error.to_string())
}

async fn log_is_append_only_and_verified(work: &Path, database_url: Option<&str>) {
    let idp = IdentityProvider::new(ISSUER, AUDIENCE).expect("identity provider");
    let (running, storage) = start(work, database_url, &idp).await;
    let url = running.url();
    let office = idp
        .token("o-1", &["office_staff"], &[SCHOOL])
        .expect("token");
    let write = || async {
        // The school does not exist, so the call fails, but it is still a recorded write.
        let _ = registers(&running, Some(&office))
            .await
            .set_calendar(calendar_request())
            .await;
    };
    for _ in 0..3 {
        write().await;
    }
    let trust_it = token_file(
        work,
        "trust-it",
        &idp.token("it-1", &["trust_it"], &[]).expect("token"),
    );
    let output = audit(&url, &trust_it, &["verify"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("intact: 3 events checked"), "{text}");
    assert!(text.contains("Newest event: 3, hash "), "{text}");
    let third = checkpoint_in(&text);
    assert!(third.starts_with("3:"), "{third}");

    // The triggers reject changes and removals.
    let db = connect(&storage, rollcall_audit::MIGRATIONS)
        .await
        .expect("audit store");
    let mut statements = vec![
        "UPDATE audit_events SET subject = 'someone-else' WHERE id = 2",
        "DELETE FROM audit_events WHERE id = 2",
        "DELETE FROM audit_events",
    ];
    if database_url.is_some() {
        statements.push("TRUNCATE audit_event_pupils");
        statements.push("TRUNCATE audit_events CASCADE");
    }
    for sql in statements {
        let error = execute(&db, sql).await;
        let message = error.unwrap_or_else(|| panic!("{sql} succeeded"));
        assert!(message.contains("is append-only"), "{sql}: {message}");
    }

    // A checkpoint stays valid while the log grows, and a wrong one is caught.
    write().await;
    let output = audit(&url, &trust_it, &["verify", "--checkpoint", &third]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let fourth = checkpoint_in(&stdout(&output));
    assert!(fourth.starts_with("4:"), "{fourth}");
    let wrong = format!("3:{}", "0".repeat(64));
    let output = audit(&url, &trust_it, &["verify", "--checkpoint", &wrong]).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(stderr(&output).contains("rewritten"), "{}", stderr(&output));
    let output = audit(&url, &trust_it, &["verify", "--checkpoint", "three"]).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("invalid --checkpoint"),
        "{}",
        stderr(&output)
    );

    // With the triggers dropped, the newest event can be removed: only the checkpoint
    // shows it.
    let drop_triggers: &[&str] = if database_url.is_some() {
        &[
            "DROP TRIGGER audit_events_append_only ON audit_events",
            "DROP TRIGGER audit_event_schools_append_only ON audit_event_schools",
            "DROP TRIGGER audit_event_pupils_append_only ON audit_event_pupils",
        ]
    } else {
        &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
            "DROP TRIGGER audit_event_schools_no_delete",
            "DROP TRIGGER audit_event_pupils_no_delete",
        ]
    };
    for sql in drop_triggers {
        assert_eq!(execute(&db, sql).await, None, "{sql}");
    }
    remove_event(&db, 4).await;
    let output = audit(&url, &trust_it, &["verify"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let output = audit(&url, &trust_it, &["verify", "--checkpoint", &fourth]).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("broken at event 4"), "{message}");
    assert!(message.contains("newest events were removed"), "{message}");

    // A changed event breaks the chain at that event.
    let original: String = with_db!(&db, |pool| {
        sqlx::query_scalar("SELECT subject FROM audit_events WHERE id = 2")
            .fetch_one(pool)
            .await
    })
    .expect("event 2");
    let changed = execute(
        &db,
        "UPDATE audit_events SET subject = 'someone-else' WHERE id = 2",
    )
    .await;
    assert_eq!(changed, None);
    let output = audit(&url, &trust_it, &["verify"]).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("broken at event 2"), "{message}");
    assert!(message.contains("changed"), "{message}");

    // Put back, the event fits the chain again. With event 2 removed, event 3 is named.
    let restored = execute(
        &db,
        &format!("UPDATE audit_events SET subject = '{original}' WHERE id = 2"),
    )
    .await;
    assert_eq!(restored, None);
    let output = audit(&url, &trust_it, &["verify"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    remove_event(&db, 2).await;
    let output = audit(&url, &trust_it, &["verify"]).await;
    assert!(!output.status.success(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("broken at event 3"), "{message}");
    assert!(message.contains("removed"), "{message}");

    db.close().await;
    running.stop().await.expect("server stops");
}

/// Returns the ID:HASH that `rollcall audit verify` printed for the next check.
fn checkpoint_in(text: &str) -> String {
    text.split_whitespace()
        .skip_while(|word| *word != "--checkpoint")
        .nth(1)
        .unwrap_or_else(|| panic!("no checkpoint in {text}"))
        .to_owned()
}

/// Removes event `id` and its schools and pupils, with the triggers dropped.
async fn remove_event(db: &Db, id: i64) {
    for sql in [
        format!("DELETE FROM audit_event_schools WHERE event_id = {id}"),
        format!("DELETE FROM audit_event_pupils WHERE event_id = {id}"),
        format!("DELETE FROM audit_events WHERE id = {id}"),
    ] {
        assert_eq!(execute(db, &sql).await, None, "{sql}");
    }
}

#[tokio::test]
async fn dev_mode_records_events_as_dev() {
    let work = tempfile::tempdir().expect("temporary folder");
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.path().join("data"),
        None,
    )
    .expect("config");
    let running = server::start(config).await.expect("server starts");
    let _ = registers(&running, None)
        .await
        .set_calendar(calendar_request())
        .await;
    let events = AuditServiceClient::new(channel(&running, None).await)
        .list_audit_events(ListAuditEventsRequest::default())
        .await
        .expect("the log is readable with --dev")
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].subject, "dev");
    assert_eq!(events[0].method, SET_CALENDAR);
    assert!(
        events[0].roles.contains(&"auditor".to_owned()),
        "{:?}",
        events[0].roles
    );
    running.stop().await.expect("server stops");
}
