//! The anchors: what the database alone does with the same rows. PostgreSQL's `COPY` and a
//! raw SQLite bulk insert of the marks rollcall stored, into a table of the same shape, and one
//! hand-written SQL aggregate over the same marks.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::NaiveDate;
use rollcall_domain::Category;
use rollcall_domain::codes::{CODES, category_of};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Connection as _, Row as _, TypeInfo as _, ValueRef as _};

/// Copies every row of `registers.marks` into a new table of the same shape (columns,
/// defaults, primary key and indexes, but not the foreign keys) with `COPY ... FROM STDIN`,
/// and returns the rows copied and the time of the `COPY` alone. The rows are read out with
/// `COPY ... TO STDOUT` first, untimed.
pub(crate) async fn postgres_copy(database_url: &str) -> anyhow::Result<(u64, Duration)> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .context("failed to connect to PostgreSQL for the COPY anchor")?;
    let mut connection = pool.acquire().await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS registers.copy_anchor; \
         CREATE TABLE registers.copy_anchor (LIKE registers.marks INCLUDING ALL)",
    )
    .execute(&mut *connection)
    .await
    .context("failed to create the COPY anchor's table")?;

    let mut rows = Vec::new();
    let mut out = connection
        .copy_out_raw("COPY (SELECT * FROM registers.marks ORDER BY sequence) TO STDOUT")
        .await?;
    use tokio_stream::StreamExt as _;
    while let Some(chunk) = out.next().await {
        rows.extend_from_slice(&chunk?);
    }
    drop(out);

    let started = Instant::now();
    let mut copy = connection
        .copy_in_raw("COPY registers.copy_anchor FROM STDIN")
        .await?;
    for chunk in rows.chunks(1024 * 1024) {
        copy.send(chunk).await?;
    }
    let copied = copy.finish().await?;
    let elapsed = started.elapsed();

    sqlx::raw_sql("DROP TABLE registers.copy_anchor")
        .execute(&mut *connection)
        .await?;
    Ok((copied, elapsed))
}

/// A value of any SQLite storage class.
enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Inserts every row of the `marks` table of rollcall's `registers.db` in `data_dir` into a
/// table of the same shape and indexes in a new database file, in one transaction with one
/// prepared statement, with the same journal and synchronous settings as rollcall. Returns
/// the rows inserted and the time from `BEGIN` to the end of `COMMIT`. The new database has
/// no other tables, so foreign keys are off.
pub(crate) async fn sqlite_insert(data_dir: &Path, work: &Path) -> anyhow::Result<(u64, Duration)> {
    let source_path = data_dir.join("registers.db");
    let mut source = sqlx::SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&source_path)
            .read_only(true),
    )
    .await
    .with_context(|| format!("failed to open {}", source_path.display()))?;
    let schema: Vec<(String,)> = sqlx::query_as(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'marks' AND sql IS NOT NULL \
         ORDER BY type DESC",
    )
    .fetch_all(&mut source)
    .await?;
    let rows = sqlx::query("SELECT * FROM marks ORDER BY sequence")
        .fetch_all(&mut source)
        .await?;
    let columns = rows.first().map_or(0, |row| row.columns().len());
    let mut values: Vec<Vec<Value>> = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut row_values = Vec::with_capacity(columns);
        for index in 0..columns {
            let raw = row.try_get_raw(index)?;
            let value = if raw.is_null() {
                Value::Null
            } else {
                match raw.type_info().name() {
                    "INTEGER" | "BOOLEAN" => Value::Integer(row.try_get(index)?),
                    "REAL" => Value::Real(row.try_get(index)?),
                    "BLOB" => Value::Blob(row.try_get(index)?),
                    _ => Value::Text(row.try_get(index)?),
                }
            };
            row_values.push(value);
        }
        values.push(row_values);
    }
    drop(rows);
    source.close().await?;

    let target_path = work.join("insert-anchor.db");
    let _ = std::fs::remove_file(&target_path);
    let mut target = sqlx::SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(&target_path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(false),
    )
    .await?;
    for (statement,) in schema {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut target)
            .await?;
    }
    let placeholders = vec!["?"; columns].join(", ");
    let insert = format!("INSERT INTO marks VALUES ({placeholders})");

    let started = Instant::now();
    let mut transaction = target.begin().await?;
    for row in &values {
        let mut query = sqlx::query(AssertSqlSafe(insert.as_str()));
        for value in row {
            query = match value {
                Value::Null => query.bind(None::<i64>),
                Value::Integer(value) => query.bind(*value),
                Value::Real(value) => query.bind(*value),
                Value::Text(value) => query.bind(value.as_str()),
                Value::Blob(value) => query.bind(value.as_slice()),
            };
        }
        query.execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    let elapsed = started.elapsed();

    target.close().await?;
    let _ = std::fs::remove_file(&target_path);
    Ok((values.len() as u64, elapsed))
}

/// One school's totals from the hand-written aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SchoolTotals {
    pub(crate) laestab: String,
    pub(crate) pupils: i64,
    pub(crate) present: i64,
    pub(crate) approved_activity: i64,
    pub(crate) authorised: i64,
    pub(crate) unauthorised: i64,
    pub(crate) persistent: i64,
}

fn quoted_codes(category: Category) -> String {
    CODES
        .iter()
        .filter(|info| category_of(info.code) == category)
        .map(|info| format!("'{}'", info.code.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the aggregate: each pupil's effective marks from `$1` to `$2` counted by category,
/// then summed by school, with the pupils whose absence is at least `persistent_percent` of
/// their possible sessions.
pub(crate) fn aggregate_sql(persistent_percent: u32) -> String {
    format!(
        "WITH pupils AS (
             SELECT e.laestab, e.upn,
                 count(*) FILTER (WHERE m.code IN ({present})) AS present,
                 count(*) FILTER (WHERE m.code IN ({activity})) AS activity,
                 count(*) FILTER (WHERE m.code IN ({authorised})) AS authorised,
                 count(*) FILTER (WHERE m.code IN ({unauthorised})) AS unauthorised
             FROM registers.effective_marks e
             JOIN registers.marks m ON m.sequence = e.sequence
             WHERE e.session_date BETWEEN $1 AND $2
             GROUP BY e.laestab, e.upn
         )
         SELECT laestab, count(*)::BIGINT, sum(present)::BIGINT, sum(activity)::BIGINT,
             sum(authorised)::BIGINT, sum(unauthorised)::BIGINT,
             (count(*) FILTER (WHERE (authorised + unauthorised) * 100
                 >= {persistent_percent} * (present + activity + authorised + unauthorised)))::BIGINT
         FROM pupils
         WHERE present + activity + authorised + unauthorised > 0
         GROUP BY laestab
         ORDER BY laestab",
        present = quoted_codes(Category::Present),
        activity = quoted_codes(Category::ApprovedActivity),
        authorised = quoted_codes(Category::AuthorisedAbsence),
        unauthorised = quoted_codes(Category::UnauthorisedAbsence),
    )
}

/// Runs the aggregate once on a new connection and returns its rows and its time.
pub(crate) async fn postgres_aggregate(
    database_url: &str,
    from: NaiveDate,
    to: NaiveDate,
    persistent_percent: u32,
) -> anyhow::Result<(Vec<SchoolTotals>, Duration)> {
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .context("failed to connect to PostgreSQL for the aggregate")?;
    let sql = aggregate_sql(persistent_percent);
    let started = Instant::now();
    let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> =
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(from)
            .bind(to)
            .fetch_all(&mut connection)
            .await
            .context("the hand-written aggregate failed")?;
    let elapsed = started.elapsed();
    connection.close().await?;
    let totals = rows
        .into_iter()
        .map(
            |(
                laestab,
                pupils,
                present,
                approved_activity,
                authorised,
                unauthorised,
                persistent,
            )| {
                SchoolTotals {
                    laestab,
                    pupils,
                    present,
                    approved_activity,
                    authorised,
                    unauthorised,
                    persistent,
                }
            },
        )
        .collect();
    Ok((totals, elapsed))
}
