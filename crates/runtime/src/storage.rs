//! Storage: SQLite as the embedded default, PostgreSQL in production.
//!
//! Each service owns its tables. On SQLite each service has its own database file under the
//! data directory; on PostgreSQL each has its own schema in one database. Services write their
//! SQL once, in the dialect both databases share, with `$1` placeholders, and run it through
//! [`with_db!`](crate::with_db) against whichever pool is configured.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

/// The storage a service keeps its data in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// One SQLite file per service in this directory.
    Sqlite {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// One schema per service in this PostgreSQL database.
    Postgres {
        /// A `postgres://` URL.
        url: String,
    },
}

impl StorageConfig {
    /// Chooses PostgreSQL when a database URL is given and SQLite under `data_dir` otherwise.
    pub fn from_options(database_url: Option<&str>, data_dir: PathBuf) -> anyhow::Result<Self> {
        match database_url {
            None => Ok(Self::Sqlite { data_dir }),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres {
                    url: url.to_owned(),
                })
            }
            Some(url) => anyhow::bail!(
                "unsupported database URL {:?}: use a postgres:// URL, or leave --database-url \
                 unset to use SQLite under --data-dir",
                redact_url(url)
            ),
        }
    }

    /// Describes the storage for logs, without any password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { data_dir } => format!("SQLite in {}", data_dir.display()),
            Self::Postgres { url } => format!("PostgreSQL at {}", redact_url(url)),
        }
    }
}

/// Replaces the password in a URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A connection pool to the service's own storage.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL, with the service's schema first on the search path.
    Postgres(PgPool),
    /// The service's own SQLite file.
    Sqlite(SqlitePool),
}

/// Runs the same code against whichever pool `db` holds. The pool is bound to `$pool`, whose
/// type differs per branch, so the body must compile for both `PgPool` and `SqlitePool`.
#[macro_export]
macro_rules! with_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::Db::Postgres($pool) => $body,
            $crate::Db::Sqlite($pool) => $body,
        }
    };
}

/// PostgreSQL advisory lock keys of every service.
///
/// The services may share one database, and advisory locks belong to the database, not to a
/// schema. So each key must differ from every other service's, or unrelated writers wait for
/// each other: a unit test checks that they do.
pub mod lock_keys {
    /// Writers of the registers' change feed.
    pub const REGISTERS_FEED: i64 = 0x726f_6c6c_0001;
    /// Writers of the policy service's trigger feed.
    pub const POLICY_TRIGGERS: i64 = 0x726f_6c6c_0002;
    /// Writers of cases.
    pub const CASES: i64 = 0x726f_6c6c_0003;
    /// Writers of referral records.
    pub const REFERRALS: i64 = 0x726f_6c6c_0004;
    /// Writers of the MIS adapter's deliveries, connector state and write-back.
    pub const MIS_ADAPTER: i64 = 0x726f_6c6c_0005;
    /// Appends to the audit log.
    pub const AUDIT: i64 = 0x726f_6c6c_0006;
    /// Writers of absence reports in the registers.
    pub const REGISTERS_REPORTS: i64 = 0x726f_6c6c_0011;
    /// Writers of lesson checks in the registers.
    pub const REGISTERS_LESSONS: i64 = 0x726f_6c6c_0012;
    /// Imports that number new positions of the registers' change feed.
    pub const REGISTERS_APPEND: i64 = 0x726f_6c6c_0013;
    /// Writers of pupils' contacts in the registers.
    pub const REGISTERS_CONTACTS: i64 = 0x726f_6c6c_0014;
    /// Loads and assignments of policies.
    pub const POLICY_POLICIES: i64 = 0x726f_6c6c_0021;

    /// Every fixed key above.
    pub const ALL: [i64; 11] = [
        REGISTERS_FEED,
        POLICY_TRIGGERS,
        CASES,
        REFERRALS,
        MIS_ADAPTER,
        AUDIT,
        REGISTERS_REPORTS,
        REGISTERS_LESSONS,
        REGISTERS_APPEND,
        REGISTERS_CONTACTS,
        POLICY_POLICIES,
    ];

    /// Returns the key of one school's registers, from its LAESTAB as a number. These keys
    /// have high bits that no fixed key has.
    pub const fn registers_school(laestab: u32) -> i64 {
        (0x726f_6c6c_i64 << 32) | laestab as i64
    }

    /// Returns the key of one school's sync batches in the MIS adapter, from its LAESTAB as
    /// a number. These keys have high bits that no other key has.
    pub const fn mis_adapter_school(laestab: u32) -> i64 {
        (0x6d69_7361_i64 << 32) | laestab as i64
    }
}

/// The statement that stores a follower's position in a feed (`$1` the feed's name, `$2` the
/// position) in the service's `sync_state` table, unless a later position is stored already.
///
/// Followers that run on several replicas each store the position of the batch they applied,
/// and one that lags must not move the position back, because readers wait for it to pass
/// the feed position they need. The statement reads the same on both databases.
pub const ADVANCE_CURSOR: &str = "INSERT INTO sync_state (feed, cursor) VALUES ($1, $2) \
     ON CONFLICT (feed) DO UPDATE SET cursor = CASE WHEN excluded.cursor > sync_state.cursor \
     THEN excluded.cursor ELSE sync_state.cursor END";

/// Reads the position stored for `feed` in the service's `sync_state` table, or 0 when the
/// follower has stored none yet.
pub async fn stored_cursor(db: &Db, feed: &str) -> Result<i64, sqlx::Error> {
    let cursor: Option<i64> = with_db!(db, |pool| {
        sqlx::query_scalar("SELECT cursor FROM sync_state WHERE feed = $1")
            .bind(feed)
            .fetch_optional(pool)
            .await
    })?;
    Ok(cursor.unwrap_or(0))
}

/// Runs a trivial query, to check that the database can be reached.
pub async fn ping(db: &Db) -> Result<(), sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
    })
}

/// Starts a transaction that writes, one writer at a time.
///
/// Change feeds hand out positions in commit order only if writers to the same feed do not
/// overlap: a later position must never commit before an earlier one, or a consumer that has
/// read past it would miss it. SQLite transactions start with `BEGIN IMMEDIATE`, which takes
/// the database's single write lock. PostgreSQL transactions take a transaction-scoped
/// advisory lock named by `lock_key`, one key per feed.
pub trait WriteTransaction {
    /// The database of the pool.
    type Database: sqlx::Database;

    /// Begins a transaction holding the write lock for `lock_key`.
    fn begin_write(
        &self,
        lock_key: i64,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Database>, sqlx::Error>> + Send;

    /// Begins a transaction that shares the write lock for `shared_key` with other such
    /// transactions and takes the lock for `own_key` alone.
    ///
    /// It waits while a transaction begun with [`begin_write`](Self::begin_write) on
    /// `shared_key` runs, and that one waits for it. So writers of one part of a store (one
    /// school, say) can overlap with writers of other parts, while a writer of the whole store
    /// still runs alone. On SQLite, where there is one writer at a time anyway, this is the
    /// same as `begin_write`.
    fn begin_shared_write(
        &self,
        shared_key: i64,
        own_key: i64,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Database>, sqlx::Error>> + Send;
}

impl WriteTransaction for PgPool {
    type Database = Postgres;

    async fn begin_write(
        &self,
        lock_key: i64,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut transaction = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key)
            .execute(&mut *transaction)
            .await?;
        Ok(transaction)
    }

    async fn begin_shared_write(
        &self,
        shared_key: i64,
        own_key: i64,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut transaction = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1), pg_advisory_xact_lock($2)")
            .bind(shared_key)
            .bind(own_key)
            .execute(&mut *transaction)
            .await?;
        Ok(transaction)
    }
}

impl WriteTransaction for SqlitePool {
    type Database = Sqlite;

    async fn begin_write(
        &self,
        _lock_key: i64,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }

    async fn begin_shared_write(
        &self,
        _shared_key: i64,
        _own_key: i64,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

/// The migrations of one service, for each database.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// The service's name, which names its SQLite file and PostgreSQL schema.
    pub service: &'static str,
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
    /// Migrations for SQLite.
    pub sqlite: &'static Migrator,
}

/// Connects to a service's storage and runs its migrations.
pub async fn connect(config: &StorageConfig, migrations: Migrations) -> anyhow::Result<Db> {
    let service = migrations.service;
    match config {
        StorageConfig::Sqlite { data_dir } => {
            std::fs::create_dir_all(data_dir).map_err(|error| {
                anyhow::anyhow!(
                    "cannot create data directory {}: {error}; choose another with --data-dir",
                    data_dir.display()
                )
            })?;
            let path = data_dir.join(format!("{service}.db"));
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .map_err(|error| {
                    anyhow::anyhow!("cannot open SQLite database {}: {error}", path.display())
                })?;
            migrations.sqlite.run(&pool).await.map_err(|error| {
                anyhow::anyhow!(
                    "migrations of {service} failed on {}: {error}",
                    path.display()
                )
            })?;
            Ok(Db::Sqlite(pool))
        }
        StorageConfig::Postgres { url } => {
            let schema = service.replace('-', "_");
            let base = PgConnectOptions::from_str(url).map_err(|error| {
                anyhow::anyhow!("invalid database URL {}: {error}", redact_url(url))
            })?;
            create_schema(&base, &schema, url).await?;
            let options = base.options([("search_path", schema.as_str())]);
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(|error| {
                    anyhow::anyhow!("cannot connect to {}: {error}", redact_url(url))
                })?;
            migrations.postgres.run(&pool).await.map_err(|error| {
                anyhow::anyhow!("migrations of {service} failed on schema {schema}: {error}")
            })?;
            Ok(Db::Postgres(pool))
        }
    }
}

async fn create_schema(base: &PgConnectOptions, schema: &str, url: &str) -> anyhow::Result<()> {
    let mut connection = base
        .connect()
        .await
        .map_err(|error| anyhow::anyhow!("cannot connect to {}: {error}", redact_url(url)))?;
    // The schema name is one of the fixed service names, never user input.
    let statement = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut connection)
        .await
    {
        // Two processes starting at once may both try to create it; the loser's error is
        // harmless once the schema is there.
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
        )
        .bind(schema)
        .fetch_one(&mut connection)
        .await
        .unwrap_or(false);
        if !exists {
            anyhow::bail!("cannot create schema {schema}: {error}");
        }
    }
    connection.close().await.ok();
    Ok(())
}

/// The version of the latest migration applied to `db`, or 0 when none is.
pub async fn latest_version(db: &Db) -> anyhow::Result<i64> {
    let version: Option<i64> = with_db!(db, |pool| {
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
    })
    .map_err(|error| anyhow::anyhow!("cannot read the applied migrations: {error}"))?;
    Ok(version.unwrap_or(0))
}

impl Db {
    /// Closes every connection of the pool.
    pub async fn close(&self) {
        with_db!(self, |pool| pool.close().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_distinct() {
        let mut keys = lock_keys::ALL.to_vec();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(
            keys.len(),
            lock_keys::ALL.len(),
            "two services share a lock key"
        );
    }

    #[test]
    fn school_keys_miss_fixed_keys() {
        for laestab in [0, 1, 0x13, 0x21, 9_192_001, 9_999_999, u32::MAX] {
            let key = lock_keys::registers_school(laestab);
            assert!(
                !lock_keys::ALL.contains(&key),
                "school {laestab} key {key:#x}"
            );
            let sync_key = lock_keys::mis_adapter_school(laestab);
            assert!(
                !lock_keys::ALL.contains(&sync_key),
                "school {laestab} sync key {sync_key:#x}"
            );
            for other in [0, 1, 9_192_001, u32::MAX] {
                assert_ne!(
                    sync_key,
                    lock_keys::registers_school(other),
                    "school {laestab} sync key meets school {other}'s registers key"
                );
            }
        }
    }

    #[tokio::test]
    async fn cursor_never_moves_back() {
        let pool = SqlitePool::connect("sqlite::memory:")
            .await
            .expect("SQLite");
        sqlx::query("CREATE TABLE sync_state (feed TEXT PRIMARY KEY, cursor BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .expect("table");
        let mut stored = Vec::new();
        for cursor in [10_i64, 5, 12] {
            sqlx::query(ADVANCE_CURSOR)
                .bind("feed")
                .bind(cursor)
                .execute(&pool)
                .await
                .expect("advance");
            let position: i64 =
                sqlx::query_scalar("SELECT cursor FROM sync_state WHERE feed = 'feed'")
                    .fetch_one(&pool)
                    .await
                    .expect("read");
            stored.push(position);
        }
        assert_eq!(stored, [10, 10, 12], "an earlier position is ignored");
    }

    #[test]
    fn redact_url_hides_password() {
        assert_eq!(
            redact_url("postgres://rollcall:secret@db:5432/rollcall"),
            "postgres://rollcall:***@db:5432/rollcall"
        );
        assert_eq!(
            redact_url("postgres://db/rollcall"),
            "postgres://db/rollcall"
        );
    }

    #[test]
    fn from_options_rejects_other_schemes() {
        let error = StorageConfig::from_options(Some("mysql://x:pw@h/db"), PathBuf::from("d"))
            .expect_err("mysql is not supported");
        let message = error.to_string();
        assert!(message.contains("mysql://x:***@h/db"), "{message}");
        assert!(!message.contains("pw"), "{message}");
    }
}
