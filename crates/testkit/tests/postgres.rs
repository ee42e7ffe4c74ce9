//! Tests against a real PostgreSQL server: the throwaway one, or the server named by
//! `ROLLCALL_TEST_DATABASE_URL` when that is set.

use rollcall_testkit::{PostgresServer, postgres};
use sqlx::{Connection as _, PgConnection};

async fn table_exists(connection: &mut PgConnection, table: &str) -> bool {
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(connection)
        .await
        .expect("to_regclass query runs");
    found.is_some()
}

#[tokio::test]
async fn databases_are_isolated() {
    let server = postgres().await.expect("PostgreSQL server is available");
    let first_url = server.create_database().await.expect("first database");
    let second_url = server.create_database().await.expect("second database");
    assert_ne!(first_url, second_url);

    let mut first = PgConnection::connect(&first_url)
        .await
        .expect("connect to first");
    let mut second = PgConnection::connect(&second_url)
        .await
        .expect("connect to second");

    sqlx::raw_sql("CREATE TABLE isolation_marker (id integer PRIMARY KEY)")
        .execute(&mut first)
        .await
        .expect("table is created");

    assert!(table_exists(&mut first, "public.isolation_marker").await);
    assert!(!table_exists(&mut second, "public.isolation_marker").await);
}

#[tokio::test]
async fn new_database_is_empty() {
    let server = postgres().await.expect("PostgreSQL server is available");
    let url = server.create_database().await.expect("database");
    let mut connection = PgConnection::connect(&url).await.expect("connect");

    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut connection)
    .await
    .expect("count query runs");
    assert_eq!(tables, 0);

    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut connection)
        .await
        .expect("current_database query runs");
    assert!(url.ends_with(&database), "{url} should name {database}");
}

#[tokio::test]
async fn server_is_shared_within_process() {
    let first = postgres().await.expect("PostgreSQL server is available");
    let second = postgres().await.expect("PostgreSQL server is available");
    assert_eq!(first.maintenance_url(), second.maintenance_url());
}

/// Uses the throwaway server as if `ROLLCALL_TEST_DATABASE_URL` named it, through the same
/// URL handling but without changing the environment.
#[tokio::test]
async fn external_server_url_is_honoured() {
    let server = postgres().await.expect("PostgreSQL server is available");
    let url_without_database = server
        .maintenance_url()
        .strip_suffix("/postgres")
        .expect("maintenance URL names the postgres database");

    let external = PostgresServer::from_url(url_without_database).expect("URL is valid");
    assert_eq!(external.maintenance_url(), server.maintenance_url());

    let url = external.create_database().await.expect("database");
    let mut connection = PgConnection::connect(&url).await.expect("connect");
    let value: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut connection)
        .await
        .expect("query runs");
    assert_eq!(value, 1);
}

#[tokio::test]
async fn unreachable_server_error_names_url() {
    // Nothing normally listens on port 1 (tcpmux), so the connection is refused.
    let server =
        PostgresServer::from_url("postgres://u:secret@127.0.0.1:1/postgres").expect("URL is valid");
    let error = server
        .create_database()
        .await
        .expect_err("nothing listens on port 1");
    let message = format!("{error:#}");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

/// The server must outlive the runtime that started it, because each `#[tokio::test]` has
/// its own runtime and tests run in parallel.
#[test]
fn server_outlives_starting_runtime() {
    let new_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime is built")
    };

    let server = new_runtime()
        .block_on(postgres())
        .expect("PostgreSQL server is available");

    let url = new_runtime()
        .block_on(server.create_database())
        .expect("database is created from a second runtime");
    assert!(url.starts_with("postgres://"), "{url}");
}

#[test]
fn parallel_runtimes_share_server() {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime is built");
                runtime.block_on(async {
                    let server = postgres().await.expect("PostgreSQL server is available");
                    server.create_database().await.expect("database");
                    server.maintenance_url().to_owned()
                })
            })
        })
        .collect();

    let urls: Vec<String> = threads
        .into_iter()
        .map(|thread| thread.join().expect("thread finished"))
        .collect();
    assert!(urls.windows(2).all(|pair| pair[0] == pair[1]), "{urls:?}");
}
