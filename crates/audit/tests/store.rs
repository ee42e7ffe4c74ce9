//! The audit store on SQLite and PostgreSQL: concurrent writers keep one chain, filters and
//! pages, and verification.

use chrono::{DateTime, Duration, TimeZone, Utc};
use rollcall_audit::{AuditStore, Checkpoint, EventFilter, MIGRATIONS};
use rollcall_auth::audit::AuditEvent;
use rollcall_runtime::StorageConfig;
use rollcall_runtime::storage::connect;

macro_rules! on_both_databases {
    ($scenario:ident, $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            let work = tempfile::tempdir().expect("temporary folder");
            let storage = StorageConfig::Sqlite {
                data_dir: work.path().join("data"),
            };
            $scenario(&storage).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            let url = rollcall_testkit::postgres()
                .await
                .expect("PostgreSQL for the tests")
                .create_database()
                .await
                .expect("database");
            $scenario(&StorageConfig::Postgres { url }).await;
        }
    };
}

on_both_databases!(
    concurrent_writers_keep_one_chain,
    concurrent_writers_keep_one_chain_on_sqlite,
    concurrent_writers_keep_one_chain_on_postgres
);
on_both_databases!(
    filters_and_pages,
    filters_and_pages_on_sqlite,
    filters_and_pages_on_postgres
);

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0)
        .single()
        .expect("a valid time")
}

fn event(subject: &str, minutes: i64, schools: &[&str], pupils: &[&str]) -> AuditEvent {
    AuditEvent {
        at: base_time() + Duration::minutes(minutes),
        subject: subject.to_owned(),
        roles: "head_of_year".to_owned(),
        method: "rollcall.registers.v1.RegistersService/GetPupil".to_owned(),
        access: "pupil_read".to_owned(),
        peer: "127.0.0.1:40000".to_owned(),
        outcome: "OK".to_owned(),
        schools: schools.iter().map(|school| (*school).to_owned()).collect(),
        pupils: pupils.iter().map(|pupil| (*pupil).to_owned()).collect(),
    }
}

async fn store(storage: &StorageConfig) -> AuditStore {
    AuditStore::new(connect(storage, MIGRATIONS).await.expect("audit store"))
}

async fn concurrent_writers_keep_one_chain(storage: &StorageConfig) {
    // Two stores stand for two server processes on one database.
    let first = store(storage).await;
    let second = store(storage).await;
    let mut tasks = Vec::new();
    for index in 0..40 {
        let writer = if index % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            writer
                .append(event(&format!("u-{index}"), index, &["9192001"], &[]))
                .await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("task").expect("append"));
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=40).collect::<Vec<i64>>());

    let verification = first.verify(None).await.expect("verify");
    assert_eq!(verification.first_broken_link, None);
    assert_eq!(verification.events_checked, 40);
    assert_eq!(verification.last_event_id, 40);
    assert_eq!(verification.last_hash.len(), 64);

    // The checkpoint of this check passes the next, in either case of hexadecimal.
    let checkpoint = Checkpoint {
        event_id: verification.last_event_id,
        hash: verification.last_hash.to_uppercase(),
    };
    second
        .append(event("u-last", 60, &[], &[]))
        .await
        .expect("append");
    let verification = second.verify(Some(&checkpoint)).await.expect("verify");
    assert_eq!(verification.first_broken_link, None);
    assert_eq!(verification.events_checked, 41);

    let ahead = Checkpoint {
        event_id: 50,
        hash: "0".repeat(64),
    };
    let verification = second.verify(Some(&ahead)).await.expect("verify");
    let broken = verification.first_broken_link.expect("a broken link");
    assert_eq!(broken.event_id, 50);
    assert!(broken.problem.contains("removed"), "{}", broken.problem);
}

async fn filters_and_pages(storage: &StorageConfig) {
    let store = store(storage).await;
    let pupil = "A919200125001";
    let other = "B919200125002";
    store
        .append(event("u-1", 0, &["9192001"], &[other, pupil]))
        .await
        .expect("append");
    store
        .append(event("u-2", 10, &["9192002"], &[other]))
        .await
        .expect("append");
    store
        .append(event("u-1", 20, &[], &[]))
        .await
        .expect("append");
    // Nanoseconds are cut to microseconds, the precision both databases keep.
    let mut precise = event("u-3", 30, &[], &[pupil]);
    precise.at += Duration::nanoseconds(123_456_789);
    store.append(precise).await.expect("append");

    let ids = |filter: EventFilter, limit: i64| {
        let store = store.clone();
        async move {
            store
                .list(&filter, limit)
                .await
                .expect("list")
                .into_iter()
                .map(|stored| stored.id)
                .collect::<Vec<i64>>()
        }
    };
    assert_eq!(ids(EventFilter::default(), 10).await, vec![4, 3, 2, 1]);
    let by_pupil = EventFilter {
        upn: pupil.to_owned(),
        ..EventFilter::default()
    };
    assert_eq!(ids(by_pupil, 10).await, vec![4, 1]);
    let by_user = EventFilter {
        subject: "u-1".to_owned(),
        ..EventFilter::default()
    };
    assert_eq!(ids(by_user, 10).await, vec![3, 1]);
    let by_school = EventFilter {
        laestab: "9192002".to_owned(),
        ..EventFilter::default()
    };
    assert_eq!(ids(by_school, 10).await, vec![2]);
    let by_pupil_and_user = EventFilter {
        upn: other.to_owned(),
        subject: "u-1".to_owned(),
        ..EventFilter::default()
    };
    assert_eq!(ids(by_pupil_and_user, 10).await, vec![1]);
    let window = EventFilter {
        since: Some(base_time() + Duration::minutes(10)),
        until: Some(base_time() + Duration::minutes(20)),
        ..EventFilter::default()
    };
    assert_eq!(ids(window, 10).await, vec![2]);
    let second_page = EventFilter {
        before_id: Some(3),
        ..EventFilter::default()
    };
    assert_eq!(ids(second_page, 1).await, vec![2]);

    let events = store.list(&EventFilter::default(), 10).await.expect("list");
    let oldest = events.last().expect("event 1");
    assert_eq!(
        oldest.event.pupils,
        vec![pupil.to_owned(), other.to_owned()]
    );
    assert_eq!(oldest.event.schools, vec!["9192001".to_owned()]);
    assert_eq!(oldest.previous_hash, "0".repeat(64));
    let newest = events.first().expect("event 4");
    assert_eq!(newest.event.at.timestamp_subsec_nanos(), 123_456_000);
    assert_eq!(newest.previous_hash, events[1].hash);

    let verification = store.verify(None).await.expect("verify");
    assert_eq!(verification.first_broken_link, None);
    assert_eq!(verification.events_checked, 4);
}

/// Counts the sessions waiting for the audit log's lock.
const AUDIT_LOCK_WAITERS: &str = "SELECT COUNT(*) FROM pg_locks \
     WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 \
       AND ((classid::int8 << 32) | objid::int8) = $1";

/// Holds the log's lock from outside while several events wait to be appended, so that they
/// are written together, with one of them rejected by the database. The others are still
/// appended and the chain holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_event_fails_alone_on_postgres() {
    let lock_key = rollcall_runtime::storage::lock_keys::AUDIT;
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    let db = connect(&StorageConfig::Postgres { url }, MIGRATIONS)
        .await
        .expect("audit store");
    let rollcall_runtime::Db::Postgres(pool) = &db else {
        unreachable!("connected with a URL");
    };
    sqlx::raw_sql(
        "CREATE FUNCTION reject_for_test() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.subject = 'rejected' THEN RAISE EXCEPTION 'rejected for the test'; \
         END IF; RETURN NEW; END $$; \
         CREATE TRIGGER reject_for_test BEFORE INSERT ON audit_events \
         FOR EACH ROW EXECUTE FUNCTION reject_for_test();",
    )
    .execute(pool)
    .await
    .expect("trigger");
    let store = AuditStore::new(db.clone());

    let mut holder = pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *holder)
        .await
        .expect("audit lock");
    let mut tasks = Vec::new();
    for index in 0..8 {
        let subject = if index == 5 {
            "rejected".to_owned()
        } else {
            format!("u-{index}")
        };
        let writer = store.clone();
        tasks.push(tokio::spawn(async move {
            writer
                .append(event(&subject, index, &["9192001"], &[]))
                .await
        }));
    }
    // The first append waits in the database. The others queue behind it in the store, and
    // the next append to take the store's lock writes them together.
    for _ in 0..600 {
        let waiters: i64 = sqlx::query_scalar(AUDIT_LOCK_WAITERS)
            .bind(lock_key)
            .fetch_one(pool)
            .await
            .expect("lock waiters");
        if waiters == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *holder)
        .await
        .expect("unlock");

    let mut ids = Vec::new();
    for (index, task) in tasks.into_iter().enumerate() {
        let result = task.await.expect("task");
        if index == 5 {
            let error = result.expect_err("the rejected event fails");
            assert!(
                error.to_string().contains("rejected for the test"),
                "{error}"
            );
        } else {
            ids.push(result.expect("append"));
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=7).collect::<Vec<i64>>());
    let verification = store.verify(None).await.expect("verify");
    assert_eq!(verification.first_broken_link, None);
    assert_eq!(verification.events_checked, 7);
}
