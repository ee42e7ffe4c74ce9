//! The audit log's storage: appends under a write lock, filtered lists and chain verification.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use chrono::{DateTime, Utc};
use rollcall_auth::audit::{AuditEvent, AuditSink};
use rollcall_runtime::{Db, WriteTransaction, with_db};
use sqlx::{AssertSqlSafe, QueryBuilder};
use tokio::sync::{Mutex, oneshot};

use crate::chain::{GENESIS_HASH, event_hash, normalise};

/// The advisory lock that serialises appends to the log on PostgreSQL, across processes.
const AUDIT_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::AUDIT;

/// The number of events [`AuditStore::verify`] reads at a time.
const VERIFY_BATCH: i64 = 1_000;

/// The maximum number of schools or pupils inserted by one statement. Each takes two bind
/// parameters, well below the limits of SQLite (32,766 since 3.32) and PostgreSQL (65,535).
const LINKS_PER_INSERT: usize = 500;

/// The maximum number of events inserted by one statement, at ten bind parameters each.
const EVENTS_PER_INSERT: usize = 100;

const EVENT_COLUMNS: &str =
    "id, at, subject, roles, method, access, peer, outcome, previous_hash, hash";

/// One row of `audit_events`, in [`EVENT_COLUMNS`] order.
type EventRow = (
    i64,
    DateTime<Utc>,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event's position in the log, from 1 with no gaps.
    pub id: i64,
    /// The event, with its schools and pupils sorted.
    pub event: AuditEvent,
    /// The hash of the event before it, or 64 zeros for the first.
    pub previous_hash: String,
    /// The SHA-256 of `previous_hash` and the event's fields, in hexadecimal.
    pub hash: String,
}

/// Filters of [`AuditStore::list`]. Empty strings and `None` match every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events that touched this pupil, by UPN as stored (upper case).
    pub upn: String,
    /// Only events of this token subject.
    pub subject: String,
    /// Only events that touched this school, by LAESTAB.
    pub laestab: String,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only events with a smaller id: the page token of the previous page.
    pub before_id: Option<i64>,
}

/// The result of checking the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The number of events checked, up to and including the first broken one.
    pub events_checked: i64,
    /// The first event whose link is broken; `None` when the whole chain holds.
    pub first_broken_link: Option<BrokenLink>,
    /// The id of the last event checked; 0 for an empty log.
    pub last_event_id: i64,
    /// The stored hash of the last event checked; empty for an empty log.
    pub last_hash: String,
}

/// An event id and hash noted at an earlier check, which the log must still hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The event's id.
    pub event_id: i64,
    /// The event's hash, in hexadecimal.
    pub hash: String,
}

/// A place where the hash chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The event whose link is broken.
    pub event_id: i64,
    /// A description of what does not match.
    pub problem: String,
}

/// The audit log in its own storage: the SQLite file `audit.db` or the PostgreSQL schema
/// `audit`. Cloning is cheap, and clones share the queue and the write lock.
#[derive(Debug, Clone)]
pub struct AuditStore {
    db: Db,
    /// Events waiting to be appended, each with where to send its id.
    queue: Arc<StdMutex<Vec<Waiting>>>,
    /// Serialises appends within this process. Appends from other processes wait on the
    /// database's lock inside the transaction.
    writer: Arc<Mutex<()>>,
}

/// An event waiting in the queue and the sender of its result.
type Waiting = (AuditEvent, oneshot::Sender<Result<i64, sqlx::Error>>);

impl AuditStore {
    /// Uses `db`, which must have the audit migrations ([`crate::MIGRATIONS`]) applied.
    pub fn new(db: Db) -> Self {
        AuditStore {
            db,
            queue: Arc::new(StdMutex::new(Vec::new())),
            writer: Arc::new(Mutex::new(())),
        }
    }

    /// Appends `event` to the log and returns its id.
    ///
    /// The event is linked to the newest event inside one transaction that takes the write
    /// lock: `BEGIN IMMEDIATE` on SQLite, a transaction-level advisory lock on PostgreSQL. So
    /// two writers, in one process or in two, never link to the same event.
    ///
    /// Events that arrive while another append writes wait in a queue, and the next append
    /// to take the lock writes all of them in one transaction. A busy server thus takes the
    /// lock once for many calls instead of once a call.
    pub async fn append(&self, event: AuditEvent) -> Result<i64, sqlx::Error> {
        let (sender, mut receiver) = oneshot::channel();
        self.waiting().push((normalise(event), sender));
        let writer = self.writer.lock().await;

        // An earlier append may have written this event with its own.
        if let Ok(result) = receiver.try_recv() {
            return result;
        }
        let waiting = std::mem::take(&mut *self.waiting());
        self.write_waiting(waiting).await;
        drop(writer);
        receiver.await.unwrap_or(Err(sqlx::Error::WorkerCrashed))
    }

    /// Locks the queue. A panic while it was locked left it whole, so a poisoned lock is used
    /// as it is.
    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the waiting events in one transaction and sends each its id. When the database
    /// rejects several events together, each is appended alone, so one bad event fails alone.
    async fn write_waiting(&self, waiting: Vec<Waiting>) {
        let (events, senders): (Vec<AuditEvent>, Vec<_>) = waiting.into_iter().unzip();
        match self.append_all(&events).await {
            Ok(ids) => {
                for (sender, id) in senders.into_iter().zip(ids) {
                    let _ = sender.send(Ok(id));
                }
            }
            Err(error) if events.len() > 1 && matches!(error, sqlx::Error::Database(_)) => {
                tracing::warn!(
                    events = events.len(),
                    %error,
                    "Appending audit events together failed; appending each alone"
                );
                for (event, sender) in events.iter().zip(senders) {
                    let result = self
                        .append_all(std::slice::from_ref(event))
                        .await
                        .map(|ids| ids[0]);
                    let _ = sender.send(result);
                }
            }
            Err(error) => {
                // The database could not be reached, or the event was alone: each gets the
                // error, which the caller logs.
                let message = error.to_string();
                let mut first = Some(error);
                for sender in senders {
                    let error = first
                        .take()
                        .unwrap_or_else(|| sqlx::Error::Io(std::io::Error::other(message.clone())));
                    let _ = sender.send(Err(error));
                }
            }
        }
    }

    /// Appends `events`, already normalised, in one transaction under the write lock and
    /// returns their ids.
    async fn append_all(&self, events: &[AuditEvent]) -> Result<Vec<i64>, sqlx::Error> {
        with_db!(&self.db, |pool| {
            let mut transaction = pool.begin_write(AUDIT_LOCK_KEY).await?;
            let newest: Option<(i64, String)> =
                sqlx::query_as("SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1")
                    .fetch_optional(&mut *transaction)
                    .await?;
            let (mut id, mut previous_hash) = newest.unwrap_or((0, GENESIS_HASH.to_owned()));
            let mut rows = Vec::with_capacity(events.len());
            for event in events {
                id += 1;
                let hash = event_hash(&previous_hash, id, event);
                let previous = std::mem::replace(&mut previous_hash, hash.clone());
                rows.push((id, event, previous, hash));
            }

            for chunk in rows.chunks(EVENTS_PER_INSERT) {
                let mut insert =
                    QueryBuilder::new(format!("INSERT INTO audit_events ({EVENT_COLUMNS}) "));
                insert.push_values(chunk, |mut row, (id, event, previous_hash, hash)| {
                    row.push_bind(*id)
                        .push_bind(event.at)
                        .push_bind(&event.subject)
                        .push_bind(&event.roles)
                        .push_bind(&event.method)
                        .push_bind(&event.access)
                        .push_bind(&event.peer)
                        .push_bind(&event.outcome)
                        .push_bind(previous_hash)
                        .push_bind(hash);
                });
                insert.build().execute(&mut *transaction).await?;
            }

            for (table, column, values) in [
                (
                    "audit_event_schools",
                    "laestab",
                    links(&rows, |event| &event.schools),
                ),
                (
                    "audit_event_pupils",
                    "upn",
                    links(&rows, |event| &event.pupils),
                ),
            ] {
                for chunk in values.chunks(LINKS_PER_INSERT) {
                    let sql = format!(
                        "INSERT INTO {table} (event_id, {column}) VALUES {}",
                        placeholder_pairs(chunk.len())
                    );
                    let mut insert = sqlx::query(AssertSqlSafe(sql));
                    for (id, value) in chunk {
                        insert = insert.bind(*id).bind(*value);
                    }
                    insert.execute(&mut *transaction).await?;
                }
            }
            transaction.commit().await?;
            Ok(rows.iter().map(|(id, ..)| *id).collect())
        })
    }

    /// Returns at most `limit` events that match `filter`, newest first.
    pub async fn list(
        &self,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let mut conditions = Vec::new();
        let mut parameters = Vec::new();
        if !filter.subject.is_empty() {
            parameters.push(Parameter::Text(filter.subject.clone()));
            conditions.push(format!("subject = ${}", parameters.len()));
        }
        if !filter.upn.is_empty() {
            parameters.push(Parameter::Text(filter.upn.clone()));
            conditions.push(format!(
                "id IN (SELECT event_id FROM audit_event_pupils WHERE upn = ${})",
                parameters.len()
            ));
        }
        if !filter.laestab.is_empty() {
            parameters.push(Parameter::Text(filter.laestab.clone()));
            conditions.push(format!(
                "id IN (SELECT event_id FROM audit_event_schools WHERE laestab = ${})",
                parameters.len()
            ));
        }
        if let Some(since) = filter.since {
            parameters.push(Parameter::Time(since));
            conditions.push(format!("at >= ${}", parameters.len()));
        }
        if let Some(until) = filter.until {
            parameters.push(Parameter::Time(until));
            conditions.push(format!("at < ${}", parameters.len()));
        }
        if let Some(before_id) = filter.before_id {
            parameters.push(Parameter::Id(before_id));
            conditions.push(format!("id < ${}", parameters.len()));
        }
        parameters.push(Parameter::Id(limit));
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", parameters.len()));

        let rows: Vec<EventRow> = with_db!(&self.db, |pool| {
            let mut query = sqlx::query_as(AssertSqlSafe(sql));
            for parameter in parameters {
                query = match parameter {
                    Parameter::Text(text) => query.bind(text),
                    Parameter::Time(at) => query.bind(at),
                    Parameter::Id(id) => query.bind(id),
                };
            }
            query.fetch_all(pool).await
        })?;
        let ids: Vec<i64> = rows.iter().map(|row| row.0).collect();
        let mut links = self.links_of(&ids).await?;
        Ok(rows
            .into_iter()
            .map(|row| stored_event(row, &mut links))
            .collect())
    }

    /// Checks the hash chain from the first event to the newest, and stops at the first
    /// broken link. With a `checkpoint`, the log must also still hold that event with that
    /// hash, which catches a removal of the newest events and a chain rewritten from a changed
    /// event onwards.
    pub async fn verify(
        &self,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Verification, sqlx::Error> {
        let mut verification = Verification {
            events_checked: 0,
            first_broken_link: None,
            last_event_id: 0,
            last_hash: String::new(),
        };
        let mut previous_id = 0;
        let mut previous_hash = GENESIS_HASH.to_owned();
        loop {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2"
            );
            let rows: Vec<EventRow> = with_db!(&self.db, |pool| {
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(previous_id)
                    .bind(VERIFY_BATCH)
                    .fetch_all(pool)
                    .await
            })?;
            let Some(last) = rows.last() else {
                if let Some(checkpoint) = checkpoint
                    && checkpoint.event_id > verification.last_event_id
                {
                    let problem = if verification.last_event_id == 0 {
                        "the log is empty, but the checkpoint names this event: every event \
                         was removed"
                            .to_owned()
                    } else {
                        format!(
                            "the log ends at event {}, before the checkpoint event: the newest \
                             events were removed",
                            verification.last_event_id
                        )
                    };
                    verification.first_broken_link = Some(broken(checkpoint.event_id, problem));
                }
                return Ok(verification);
            };
            let mut links = self.links_between(previous_id, last.0).await?;
            for row in rows {
                let stored = stored_event(row, &mut links);
                verification.events_checked += 1;
                verification.last_event_id = stored.id;
                verification.last_hash = stored.hash.clone();
                let problem = check_link(&stored, previous_id, &previous_hash).or_else(|| {
                    checkpoint
                        .filter(|checkpoint| checkpoint.event_id == stored.id)
                        .and_then(|checkpoint| check_checkpoint(&stored, checkpoint))
                });
                if let Some(problem) = problem {
                    verification.first_broken_link = Some(broken(stored.id, problem));
                    return Ok(verification);
                }
                previous_id = stored.id;
                previous_hash = stored.hash;
            }
        }
    }

    /// Returns the schools and pupils of the events `ids`.
    async fn links_of(&self, ids: &[i64]) -> Result<Links, sqlx::Error> {
        let mut links = Links::default();
        if ids.is_empty() {
            return Ok(links);
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let placeholders = placeholders.join(", ");
        for (table, column, into) in [
            ("audit_event_schools", "laestab", &mut links.schools),
            ("audit_event_pupils", "upn", &mut links.pupils),
        ] {
            let sql = format!(
                "SELECT event_id, {column} FROM {table} WHERE event_id IN ({placeholders})"
            );
            let rows: Vec<(i64, String)> = with_db!(&self.db, |pool| {
                let mut query = sqlx::query_as(AssertSqlSafe(sql));
                for id in ids {
                    query = query.bind(*id);
                }
                query.fetch_all(pool).await
            })?;
            group(rows, into);
        }
        Ok(links)
    }

    /// Returns the schools and pupils of the events after `after_id` up to `last_id`.
    async fn links_between(&self, after_id: i64, last_id: i64) -> Result<Links, sqlx::Error> {
        let mut links = Links::default();
        for (table, column, into) in [
            ("audit_event_schools", "laestab", &mut links.schools),
            ("audit_event_pupils", "upn", &mut links.pupils),
        ] {
            let sql = format!(
                "SELECT event_id, {column} FROM {table} WHERE event_id > $1 AND event_id <= $2"
            );
            let rows: Vec<(i64, String)> = with_db!(&self.db, |pool| {
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(after_id)
                    .bind(last_id)
                    .fetch_all(pool)
                    .await
            })?;
            group(rows, into);
        }
        Ok(links)
    }
}

impl AuditSink for AuditStore {
    fn record(
        &self,
        event: AuditEvent,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + '_>> {
        let store = self.clone();
        Box::pin(async move {
            // The append runs as its own task, so a client that drops the call while the event
            // is written does not cancel the write.
            let method = event.method.clone();
            tokio::spawn(async move { store.append(event).await })
                .await
                .map_err(|error| anyhow::anyhow!("the audit write task failed: {error}"))?
                .map_err(|error| {
                    anyhow::anyhow!("cannot append the audit event for {method}: {error}")
                })?;
            Ok(())
        })
    }
}

/// A bind parameter of a list query.
enum Parameter {
    Text(String),
    Time(DateTime<Utc>),
    Id(i64),
}

/// The schools and pupils of some events, by event id.
#[derive(Default)]
struct Links {
    schools: HashMap<i64, Vec<String>>,
    pupils: HashMap<i64, Vec<String>>,
}

fn group(rows: Vec<(i64, String)>, into: &mut HashMap<i64, Vec<String>>) {
    for (event_id, value) in rows {
        into.entry(event_id).or_default().push(value);
    }
}

/// Builds an event from its row and takes its schools and pupils out of `links`, sorted
/// byte-wise: the database's collation may order text otherwise.
fn stored_event(row: EventRow, links: &mut Links) -> StoredEvent {
    let (id, at, subject, roles, method, access, peer, outcome, previous_hash, hash) = row;
    let mut schools = links.schools.remove(&id).unwrap_or_default();
    schools.sort_unstable();
    let mut pupils = links.pupils.remove(&id).unwrap_or_default();
    pupils.sort_unstable();
    StoredEvent {
        id,
        event: AuditEvent {
            at,
            subject,
            roles,
            method,
            access,
            peer,
            outcome,
            schools,
            pupils,
        },
        previous_hash,
        hash,
    }
}

/// Logs and returns a broken link.
fn broken(event_id: i64, problem: String) -> BrokenLink {
    tracing::error!(event_id, problem, "The audit log's hash chain is broken");
    BrokenLink { event_id, problem }
}

/// Returns what is wrong when the checkpoint event no longer has its noted hash.
fn check_checkpoint(stored: &StoredEvent, checkpoint: &Checkpoint) -> Option<String> {
    if stored.hash.eq_ignore_ascii_case(checkpoint.hash.trim()) {
        return None;
    }
    Some(format!(
        "its hash is {}, not the {} of the checkpoint: the chain was rewritten from this event \
         or an earlier one",
        stored.hash,
        checkpoint.hash.trim()
    ))
}

/// Returns what is wrong with `stored`'s link to the event before it, or `None` when the
/// link holds.
fn check_link(stored: &StoredEvent, previous_id: i64, previous_hash: &str) -> Option<String> {
    if stored.id != previous_id + 1 {
        return Some(if previous_id == 0 {
            format!(
                "the log starts at event {} instead of event 1: the events before it were removed",
                stored.id
            )
        } else {
            format!(
                "event {} follows event {previous_id}: the events between them were removed",
                stored.id
            )
        });
    }
    if stored.previous_hash != previous_hash {
        return Some(if previous_id == 0 {
            "its previous hash is not the 64 zeros of the first event: the event was changed"
                .to_owned()
        } else {
            format!(
                "its previous hash does not match the hash of event {previous_id}: event \
                 {previous_id} or this event was changed"
            )
        });
    }
    if event_hash(previous_hash, stored.id, &stored.event) != stored.hash {
        return Some(
            "its fields do not match its hash: the event was changed after it was written"
                .to_owned(),
        );
    }
    None
}

/// Returns `($1, $2), ($3, $4), …` for `pairs` rows.
/// Returns the (event id, value) pairs of one list of links, such as the schools, of every
/// event to append.
fn links<'a>(
    rows: &[(i64, &'a AuditEvent, String, String)],
    list: fn(&AuditEvent) -> &Vec<String>,
) -> Vec<(i64, &'a str)> {
    rows.iter()
        .flat_map(|(id, event, ..)| list(event).iter().map(|value| (*id, value.as_str())))
        .collect()
}

fn placeholder_pairs(pairs: usize) -> String {
    let rows: Vec<String> = (0..pairs)
        .map(|row| format!("(${}, ${})", 2 * row + 1, 2 * row + 2))
        .collect();
    rows.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_pairs() {
        assert_eq!(placeholder_pairs(1), "($1, $2)");
        assert_eq!(placeholder_pairs(3), "($1, $2), ($3, $4), ($5, $6)");
    }
}
