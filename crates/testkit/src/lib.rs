//! Test support for rollcall: real PostgreSQL databases and SQLite directories for tests, and
//! local stand-ins for the third parties rollcall talks to (a mail server, an SMS provider, a
//! local authority's HTTPS server that receives referral packs, an MIS data broker, and an
//! OpenTelemetry collector).
//!
//! [`postgres`] returns a server, and [`PostgresServer::create_database`] gives each test its
//! own empty database on it:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let server = rollcall_testkit::postgres().await?;
//! let url = server.create_database().await?;
//! // Connect to `url` with sqlx and run the migrations.
//! # Ok(())
//! # }
//! ```
//!
//! The server is the one named by `ROLLCALL_TEST_DATABASE_URL` when that variable is set.
//! Otherwise it is a throwaway server that the first call starts from the local PostgreSQL
//! installation and that stops when the test process exits. This crate supports Unix only,
//! because it drives `initdb`, `pg_ctl` and `sh`.

mod binaries;
pub mod broker;
pub mod identity;
pub mod la;
pub mod otlp;
pub mod sms;
pub mod smtp;
mod throwaway;
pub mod tls;
mod url;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

/// Environment variable naming an existing PostgreSQL server for the tests, as a
/// `postgres://` URL whose user may run `CREATE DATABASE`. A blank value counts as unset.
pub const DATABASE_URL_ENV: &str = "ROLLCALL_TEST_DATABASE_URL";

/// Returns the PostgreSQL server for this test process.
///
/// With `ROLLCALL_TEST_DATABASE_URL` set, the server is the one it names, and nothing is
/// checked until [`PostgresServer::create_database`] connects. Otherwise the first call
/// starts a throwaway server on a free port of 127.0.0.1, and later calls from any thread or
/// runtime share it. The throwaway server needs `initdb`, `pg_ctl` and `postgres` in `PATH`
/// or in `/usr/lib/postgresql/<version>/bin`. Under root it runs as the `postgres` OS user.
///
/// # Errors
///
/// Fails when the variable contains an invalid URL, or when the throwaway server cannot be
/// started. The message explains how to install PostgreSQL or set the variable. Once startup
/// has failed, every later call in the process returns the same error without retrying.
///
/// # Panics
///
/// Panics when called outside a tokio runtime.
pub async fn postgres() -> anyhow::Result<PostgresServer> {
    let env_value = match std::env::var(DATABASE_URL_ENV) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{DATABASE_URL_ENV} is not valid UTF-8")
        }
    };
    if let Some(maintenance_url) = url::maintenance_url_from_env(env_value.as_deref())? {
        return Ok(PostgresServer { maintenance_url });
    }

    // Startup runs initdb and waits for the server, so keep it off the runtime's workers.
    let maintenance_url = tokio::task::spawn_blocking(throwaway::shared_maintenance_url)
        .await
        .context("the PostgreSQL startup task panicked")??;
    Ok(PostgresServer { maintenance_url })
}

/// Starts a PostgreSQL server of the test's own, which the test may stop, kill and start
/// again, on the same data directory and port, without disturbing other tests.
///
/// Unlike [`postgres`], this ignores `ROLLCALL_TEST_DATABASE_URL`, because a test cannot stop
/// a server it does not own, so it always needs the local PostgreSQL installation. Every
/// acknowledged commit survives a stop or a kill of the server.
///
/// # Errors
///
/// Fails when the server programs are missing or the server cannot be started.
pub async fn owned_postgres() -> anyhow::Result<OwnedPostgres> {
    let server = tokio::task::spawn_blocking(throwaway::ThrowawayServer::start_crash_safe)
        .await
        .context("the PostgreSQL startup task panicked")??;
    Ok(OwnedPostgres {
        server: std::sync::Arc::new(server),
    })
}

/// A PostgreSQL server that belongs to one test, stopped and removed when dropped.
#[derive(Debug, Clone)]
pub struct OwnedPostgres {
    server: std::sync::Arc<throwaway::ThrowawayServer>,
}

impl OwnedPostgres {
    /// Returns the server, for [`PostgresServer::create_database`].
    pub fn server(&self) -> PostgresServer {
        PostgresServer {
            maintenance_url: self.server.maintenance_url.clone(),
        }
    }

    /// Stops the server with PostgreSQL's fast shutdown, which ends every session and rolls
    /// back open transactions, and waits until it has stopped.
    ///
    /// # Errors
    ///
    /// Fails when `pg_ctl stop` fails.
    pub async fn stop_fast(&self) -> anyhow::Result<()> {
        let server = std::sync::Arc::clone(&self.server);
        tokio::task::spawn_blocking(move || server.stop("fast"))
            .await
            .context("the PostgreSQL stop task panicked")?
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and returns its process id. The
    /// server recovers from its write-ahead log at the next [`Self::start`].
    ///
    /// # Errors
    ///
    /// Fails when `postmaster.pid` cannot be read or `kill` fails.
    pub fn kill_postmaster(&self) -> anyhow::Result<u32> {
        self.server.kill_postmaster()
    }

    /// Starts the server again on the same data directory and port.
    ///
    /// # Errors
    ///
    /// Fails when the server has not started after 100 attempts, 0.1 seconds apart.
    pub async fn start(&self) -> anyhow::Result<()> {
        let server = std::sync::Arc::clone(&self.server);
        tokio::task::spawn_blocking(move || server.restart())
            .await
            .context("the PostgreSQL start task panicked")?
    }
}

/// A PostgreSQL server that tests may create databases on.
///
/// Cloning is cheap. The value contains only a URL, so dropping it never stops the server.
#[derive(Clone)]
pub struct PostgresServer {
    /// URL of a database to run `CREATE DATABASE` on, usually `postgres`.
    maintenance_url: String,
}

impl PostgresServer {
    /// Uses an existing server, reached through `url`, without connecting to it.
    ///
    /// When `url` names no database, `CREATE DATABASE` runs on the `postgres` maintenance
    /// database. This is what [`postgres`] does with `ROLLCALL_TEST_DATABASE_URL`.
    ///
    /// # Errors
    ///
    /// Fails when `url` does not start with `postgres://` or `postgresql://`, or its path
    /// is more than a database name.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            maintenance_url: url::maintenance_url(url)?,
        })
    }

    /// Returns the URL of the database that [`Self::create_database`] connects to.
    pub fn maintenance_url(&self) -> &str {
        &self.maintenance_url
    }

    /// Creates a new, empty database with a unique name and returns its URL.
    ///
    /// Names look like `rollcall_test_<pid>_<counter>_<random hex>`. The random part keeps
    /// names unique across test runs on a shared server, where PIDs repeat.
    ///
    /// NOTE: nothing drops these databases. On the throwaway server they vanish with it, but
    /// on a server named by `ROLLCALL_TEST_DATABASE_URL` they stay until dropped by hand.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached or the user may not create databases.
    pub async fn create_database(&self) -> anyhow::Result<String> {
        let name = unique_database_name();
        let redacted_url = url::redact_password(&self.maintenance_url);

        let mut connection = PgConnection::connect(&self.maintenance_url)
            .await
            .with_context(|| format!("failed to connect to PostgreSQL at {redacted_url}"))?;
        // The name contains only ASCII letters, digits and underscores, so quoting is enough.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut connection)
            .await
            .with_context(|| format!("failed to create database {name} at {redacted_url}"))?;
        if let Err(error) = connection.close().await {
            tracing::debug!(%error, "failed to close the PostgreSQL maintenance connection");
        }

        url::with_database(&self.maintenance_url, &name)
    }
}

impl fmt::Debug for PostgresServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PostgresServer")
            .field(
                "maintenance_url",
                &url::redact_password(&self.maintenance_url),
            )
            .finish()
    }
}

/// Returns a database name that no other call, test process or earlier run has used.
fn unique_database_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);

    // `RandomState` is seeded from the OS, and the clock varies the input between calls.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u64(count);
    let random = hasher.finish() & 0xffff_ffff;

    format!("rollcall_test_{}_{count}_{random:08x}", std::process::id())
}

/// Creates an empty temporary directory for SQLite database files, removed when dropped.
///
/// # Errors
///
/// Fails when the temporary directory cannot be created.
pub fn sqlite_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("rollcall-sqlite-")
        .tempdir()
        .context("failed to create a temporary directory for SQLite")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_unique() {
        let first = unique_database_name();
        let second = unique_database_name();
        assert_ne!(first, second);
    }

    #[test]
    fn database_name_is_plain_identifier() {
        let name = unique_database_name();
        assert!(
            name.len() <= 63,
            "{name} exceeds PostgreSQL's 63-byte limit"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name} needs quoting beyond double quotes"
        );
        assert!(name.starts_with("rollcall_test_"), "{name}");
    }

    #[test]
    fn from_url_defaults_to_maintenance_database() {
        let server = PostgresServer::from_url("postgres://ci:pw@127.0.0.1:5432").expect("valid");
        assert_eq!(
            server.maintenance_url(),
            "postgres://ci:pw@127.0.0.1:5432/postgres"
        );
    }

    #[test]
    fn debug_hides_password() {
        let server =
            PostgresServer::from_url("postgres://ci:hunter2@host/postgres").expect("valid");
        let debug = format!("{server:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn sqlite_dir_is_empty_and_removed() {
        let dir = sqlite_dir().expect("temporary directory is created");
        let path = dir.path().to_owned();
        let entries = std::fs::read_dir(&path)
            .expect("directory is readable")
            .count();
        assert_eq!(entries, 0);

        drop(dir);
        assert!(!path.exists());
    }
}
