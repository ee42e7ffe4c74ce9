//! Group commit of imports of marks alone, on PostgreSQL.
//!
//! Every version is numbered in the change feed, so every import takes the append lock to
//! write (see [`crate::APPEND_LOCK_KEY`]). When many schools send their registers in the
//! same minute, taking that lock once per import made the imports queue for it, each holding
//! it for three round trips. The appender instead takes the imports that are ready, writes
//! them all under one lock in one statement and commits once.
//!
//! An import plans in its own transaction, which holds its school's lock and a share of the
//! feed lock. It hands the appender its rows with that transaction, and gets the transaction
//! back once its versions are committed. So no other import of the same school plans before
//! they are stored, and no writer of the whole feed starts in between. If the caller has gone
//! by then, the transaction is dropped and rolled back, which only releases its locks: it
//! wrote nothing itself.
//!
//! The appender writes on a connection of its own, outside the pool: the pool's connections
//! may all be held by imports waiting for it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection as _, PgConnection, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::versions::{ImportRows, write_group};
use crate::APPEND_LOCK_KEY;

/// Imports waiting for the appender, at most.
const QUEUE: usize = 256;
/// Imports written in one transaction, at most.
const MAX_GROUP: usize = 64;
/// How long the appender waits for a new connection, as long as the pool waits for one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The handle that imports of marks alone hand their rows to.
#[derive(Debug, Clone)]
pub(crate) struct Appender {
    queue: mpsc::Sender<Pending>,
}

/// An import waiting to be written: its rows, its own transaction, and the channel that
/// returns the outcome with that transaction.
struct Pending {
    rows: ImportRows,
    transaction: Transaction<'static, Postgres>,
    reply: oneshot::Sender<Result<(i64, Transaction<'static, Postgres>), sqlx::Error>>,
}

impl Appender {
    /// Starts the appender's task, which connects with the pool's settings when the first
    /// import arrives and ends when every handle is dropped.
    pub(crate) fn start(pool: &PgPool) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let options = pool.connect_options();
        tokio::spawn(run(options, receiver));
        Self { queue }
    }

    /// Writes an import's rows beside other schools' imports and returns the head its
    /// versions follow, with the import's own transaction to commit.
    pub(super) async fn append(
        &self,
        rows: ImportRows,
        transaction: Transaction<'static, Postgres>,
    ) -> Result<(i64, Transaction<'static, Postgres>), sqlx::Error> {
        let (reply, result) = oneshot::channel();
        let pending = Pending {
            rows,
            transaction,
            reply,
        };
        if self.queue.send(pending).await.is_err() {
            return Err(sqlx::Error::WorkerCrashed);
        }
        result.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }
}

/// Writes groups of imports until every handle is dropped.
async fn run(options: Arc<PgConnectOptions>, mut receiver: mpsc::Receiver<Pending>) {
    tracing::info!("Import appender started");
    let mut connection = None;
    let mut group = Vec::with_capacity(MAX_GROUP);
    while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
        let rows: Vec<&ImportRows> = group.iter().map(|pending| &pending.rows).collect();
        let written = write(&options, &mut connection, &rows).await;
        match written {
            Ok(heads) => {
                tracing::debug!(imports = group.len(), "Wrote a group of imports");
                for (pending, head) in group.drain(..).zip(heads) {
                    // A caller that has gone drops its transaction here.
                    let _ = pending.reply.send(Ok((head, pending.transaction)));
                }
            }
            Err(error) if group.len() > 1 && matches!(error, sqlx::Error::Database(_)) => {
                // The database rejected the statement, perhaps for one import's rows, so each
                // is tried alone and the others are not failed with it.
                tracing::warn!(
                    imports = group.len(),
                    %error,
                    "Writing a group of imports failed; writing each alone"
                );
                for pending in group.drain(..) {
                    let result = write(&options, &mut connection, &[&pending.rows]).await;
                    if let Err(error) = &result {
                        tracing::warn!(
                            request_id = pending.rows.request_id(),
                            %error,
                            "Writing an import alone failed"
                        );
                    }
                    let reply = result.map(|heads| (heads[0], pending.transaction));
                    let _ = pending.reply.send(reply);
                }
            }
            Err(error) => {
                // A lone import gets its own error. When the connection failed, whether the
                // group was committed is not known: every import in it gets the error, and a
                // caller that sends again gets the stored result if it was.
                tracing::warn!(
                    imports = group.len(),
                    %error,
                    "Writing a group of imports failed"
                );
                let message = error.to_string();
                let mut first = Some(error);
                for pending in group.drain(..) {
                    let error = first
                        .take()
                        .unwrap_or_else(|| sqlx::Error::Io(std::io::Error::other(message.clone())));
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
    }
    tracing::info!("Import appender stopped");
}

/// Writes one group in one transaction under the append lock, connecting first when there is
/// no open connection. A connection that failed is dropped, so the next group connects afresh.
async fn write(
    options: &PgConnectOptions,
    connection: &mut Option<PgConnection>,
    group: &[&ImportRows],
) -> Result<Vec<i64>, sqlx::Error> {
    // A connection left idle may have been closed by the server, at a restart for one. The
    // check costs a round trip a group, and a closed connection is replaced before anything
    // is written, rather than failing the group.
    // NOTE: this round trip cost about a tenth of single-school ingest on a 2-core machine
    // (docs/benchmarks.md). Checking only a connection that has been idle would be cheaper.
    if let Some(open) = connection.as_mut()
        && let Err(error) = open.ping().await
    {
        tracing::info!(%error, "Import appender's connection was closed; connecting again");
        *connection = None;
    }
    let open = match connection {
        Some(open) => open,
        None => {
            let connecting = PgConnection::connect_with(options);
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .map_err(|_| {
                    sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the import appender could not connect to the database in 30 s",
                    ))
                })??;
            tracing::info!("Import appender connected to the database");
            connection.insert(opened)
        }
    };
    let result = async {
        let mut transaction = open.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK_KEY)
            .execute(&mut *transaction)
            .await?;
        let heads = write_group(&mut transaction, group).await?;
        transaction.commit().await?;
        Ok(heads)
    }
    .await;
    if let Err(error) = &result
        && !matches!(error, sqlx::Error::Database(_))
    {
        *connection = None;
    }
    result
}
