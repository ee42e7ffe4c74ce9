//! The messages table: what was written to whom, and every attempt to deliver it.

use chrono::{DateTime, Utc};
use rollcall_api::cases::v1::{DeliveryAttempt, Message, MessageStatus, TimelineEntry};
use rollcall_api::convert::timestamp;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::fields::storage;
use crate::messaging::templates::channel_to_proto;

/// The columns read into a [`MessageRow`].
pub(crate) const MESSAGE_COLUMNS: &str = "id, laestab, upn, case_id, task_id, purpose, channel, \
     recipient_priority, recipient_name, recipient_address, template, template_version, subject, \
     body, status, review_reasons, attempts, next_attempt_at, provider_reference, last_error, \
     created_by, created_at, reviewed_by, sent_at, document IS NOT NULL AS has_document";

/// A stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct MessageRow {
    pub(crate) id: String,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) case_id: Option<String>,
    pub(crate) task_id: Option<String>,
    pub(crate) purpose: String,
    pub(crate) channel: String,
    pub(crate) recipient_priority: i32,
    pub(crate) recipient_name: String,
    pub(crate) recipient_address: String,
    pub(crate) template: String,
    pub(crate) template_version: i32,
    pub(crate) subject: String,
    pub(crate) body: String,
    pub(crate) status: String,
    pub(crate) review_reasons: String,
    pub(crate) attempts: i32,
    pub(crate) next_attempt_at: DateTime<Utc>,
    pub(crate) provider_reference: String,
    pub(crate) last_error: String,
    pub(crate) created_by: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) reviewed_by: String,
    pub(crate) sent_at: Option<DateTime<Utc>>,
    pub(crate) has_document: bool,
}

/// A logged attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub(crate) message_id: String,
    pub(crate) attempt: i32,
    pub(crate) at: DateTime<Utc>,
    pub(crate) outcome: String,
    pub(crate) detail: String,
}

pub(crate) fn status_to_proto(status: &str) -> MessageStatus {
    match status {
        "awaiting_review" => MessageStatus::AwaitingReview,
        "queued" => MessageStatus::Queued,
        "sending" => MessageStatus::Sending,
        "sent" => MessageStatus::Sent,
        "failed" => MessageStatus::Failed,
        "unconfirmed" => MessageStatus::Unconfirmed,
        "withdrawn" => MessageStatus::Withdrawn,
        _ => MessageStatus::Unspecified,
    }
}

pub(crate) fn status_from_proto(status: MessageStatus) -> Option<&'static str> {
    Some(match status {
        MessageStatus::AwaitingReview => "awaiting_review",
        MessageStatus::Queued => "queued",
        MessageStatus::Sending => "sending",
        MessageStatus::Sent => "sent",
        MessageStatus::Failed => "failed",
        MessageStatus::Unconfirmed => "unconfirmed",
        MessageStatus::Withdrawn => "withdrawn",
        MessageStatus::Unspecified => return None,
    })
}

/// Returns the stored name of a status from its proto value, for messages.
pub(crate) fn status_name(status: i32) -> &'static str {
    MessageStatus::try_from(status)
        .ok()
        .and_then(status_from_proto)
        .unwrap_or("unknown")
}

impl MessageRow {
    pub(crate) fn into_proto(self, attempts: Vec<AttemptRow>) -> Message {
        let queued = self.status == "queued";
        Message {
            channel: channel_to_proto(&self.channel) as i32,
            status: status_to_proto(&self.status) as i32,
            review_reasons: self
                .review_reasons
                .lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect(),
            next_attempt_at: queued.then(|| timestamp(self.next_attempt_at)),
            created_at: Some(timestamp(self.created_at)),
            sent_at: self.sent_at.map(timestamp),
            history: attempts
                .into_iter()
                .filter(|attempt| attempt.message_id == self.id)
                .map(|attempt| DeliveryAttempt {
                    attempt: attempt.attempt,
                    at: Some(timestamp(attempt.at)),
                    outcome: attempt.outcome,
                    detail: attempt.detail,
                })
                .collect(),
            id: self.id,
            laestab: self.laestab,
            upn: self.upn,
            case_id: self.case_id.unwrap_or_default(),
            task_id: self.task_id.unwrap_or_default(),
            purpose: self.purpose,
            recipient_priority: self.recipient_priority,
            recipient_name: self.recipient_name,
            recipient_address: self.recipient_address,
            template: self.template,
            template_version: self.template_version,
            subject: self.subject,
            body: self.body,
            attempts: self.attempts,
            last_error: self.last_error,
            provider_reference: self.provider_reference,
            created_by: self.created_by,
            reviewed_by: self.reviewed_by,
            has_document: self.has_document,
        }
    }
}

/// A message ready to store.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub(crate) dedupe_key: String,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) case_id: Option<String>,
    pub(crate) task_id: Option<String>,
    pub(crate) purpose: &'static str,
    pub(crate) channel: String,
    pub(crate) recipient_priority: i32,
    pub(crate) recipient_name: String,
    pub(crate) recipient_address: String,
    pub(crate) template: String,
    pub(crate) template_version: i32,
    pub(crate) subject: String,
    pub(crate) body: String,
    pub(crate) document: Option<Vec<u8>>,
    pub(crate) status: &'static str,
    pub(crate) review_reasons: Vec<String>,
    pub(crate) created_by: String,
}

/// Inserts a message in a transaction unless one with its dedupe key exists. Returns the new
/// message's id, or None when it already existed.
pub(crate) async fn insert<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    message: &NewMessage,
    now: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e mut <DB as sqlx::Database>::Connection: sqlx::Executor<'e, Database = DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let existing: Option<(String,)> =
        sqlx::query_as("SELECT id FROM messages WHERE dedupe_key = $1")
            .bind(message.dedupe_key.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    if existing.is_some() {
        return Ok(None);
    }
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
        .fetch_one(&mut **tx)
        .await?;
    let id = format!("msg-{:08}", count + 1);
    let reasons = message.review_reasons.join("\n");
    let traceparent = rollcall_runtime::telemetry::current_traceparent();
    sqlx::query(
        "INSERT INTO messages (id, dedupe_key, laestab, upn, case_id, task_id, purpose, channel, \
         recipient_priority, recipient_name, recipient_address, template, template_version, \
         subject, body, document, status, review_reasons, next_attempt_at, created_by, \
         created_at, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $19, $21)",
    )
    .bind(id.as_str())
    .bind(message.dedupe_key.as_str())
    .bind(message.laestab.as_str())
    .bind(message.upn.as_str())
    .bind(message.case_id.as_deref())
    .bind(message.task_id.as_deref())
    .bind(message.purpose)
    .bind(message.channel.as_str())
    .bind(message.recipient_priority)
    .bind(message.recipient_name.as_str())
    .bind(message.recipient_address.as_str())
    .bind(message.template.as_str())
    .bind(message.template_version)
    .bind(message.subject.as_str())
    .bind(message.body.as_str())
    .bind(message.document.as_deref())
    .bind(message.status)
    .bind(reasons.as_str())
    .bind(now)
    .bind(message.created_by.as_str())
    .bind(traceparent.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(Some(id))
}

/// Filters for [`list`].
#[derive(Debug, Default)]
pub(crate) struct MessageFilter {
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) case_id: String,
    pub(crate) status: String,
    pub(crate) id: String,
}

/// Lists messages, newest first, with their attempts.
pub(crate) async fn list(
    db: &Db,
    filter: &MessageFilter,
    limit: i64,
) -> Result<Vec<Message>, Status> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages \
         WHERE ($1 = '' OR laestab = $1) AND ($2 = '' OR upn = $2) \
           AND ($3 = '' OR case_id = $3) AND ($4 = '' OR status = $4) AND ($5 = '' OR id = $5) \
         ORDER BY created_at DESC, id DESC LIMIT $6"
    );
    let rows: Vec<MessageRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(&filter.laestab)
            .bind(&filter.upn)
            .bind(&filter.case_id)
            .bind(&filter.status)
            .bind(&filter.id)
            .bind(limit)
            .fetch_all(pool)
            .await
    })
    .map_err(storage("listing messages"))?;
    let attempts = attempts_of(db, &rows).await?;
    Ok(rows
        .into_iter()
        .map(|row| row.into_proto(attempts.clone()))
        .collect())
}

async fn attempts_of(db: &Db, rows: &[MessageRow]) -> Result<Vec<AttemptRow>, Status> {
    let mut attempts = Vec::new();
    for row in rows.iter().filter(|row| row.attempts > 0) {
        let found: Vec<AttemptRow> = with_db!(db, |pool| {
            sqlx::query_as(
                "SELECT message_id, attempt, at, outcome, detail FROM message_attempts \
                 WHERE message_id = $1 ORDER BY attempt",
            )
            .bind(&row.id)
            .fetch_all(pool)
            .await
        })
        .map_err(storage("reading delivery attempts"))?;
        attempts.extend(found);
    }
    Ok(attempts)
}

/// Returns one message.
pub(crate) async fn one(db: &Db, id: &str) -> Result<Option<Message>, Status> {
    let filter = MessageFilter {
        id: id.to_owned(),
        ..MessageFilter::default()
    };
    Ok(list(db, &filter, 1).await?.into_iter().next())
}

/// Returns timeline entries for the messages filed on a case, and for first-day messages about
/// its pupil at its school since it opened: everything written to the parents.
pub(crate) async fn for_timeline(
    db: &Db,
    case_id: &str,
    upn: &str,
    laestab: &str,
    opened_at: DateTime<Utc>,
) -> Result<Vec<TimelineEntry>, Status> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE case_id = $1 \
         OR (case_id IS NULL AND upn = $2 AND laestab = $3 AND created_at >= $4) \
         ORDER BY created_at, id"
    );
    let rows: Vec<MessageRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(case_id)
            .bind(upn)
            .bind(laestab)
            .bind(opened_at)
            .fetch_all(pool)
            .await
    })
    .map_err(storage("reading messages for a timeline"))?;
    Ok(rows.into_iter().map(timeline_entry).collect())
}

fn timeline_entry(row: MessageRow) -> TimelineEntry {
    let what = match (row.purpose.as_str(), row.channel.as_str()) {
        ("letter", "letter") => "letter by post".to_owned(),
        ("letter", channel) => format!("letter by {channel}"),
        (_, "sms") => "text message".to_owned(),
        (_, channel) => channel.to_owned(),
    };
    let summary = if row.subject.is_empty() {
        row.body.chars().take(120).collect::<String>()
    } else {
        row.subject.clone()
    };
    let state = match row.status.as_str() {
        "awaiting_review" => format!(
            "awaiting review: {}",
            row.review_reasons.lines().collect::<Vec<_>>().join("; ")
        ),
        "failed" | "unconfirmed" => format!("{}: {}", row.status, row.last_error),
        "sent" => match row.sent_at {
            Some(at) => format!("sent {}", at.format("%Y-%m-%d %H:%M UTC")),
            None => "sent".to_owned(),
        },
        other => other.replace('_', " "),
    };
    let at = row.sent_at.unwrap_or(row.created_at);
    TimelineEntry {
        at: Some(timestamp(at)),
        kind: if row.purpose == "letter" {
            "letter"
        } else {
            "message"
        }
        .to_owned(),
        stage: String::new(),
        detail: format!(
            "{what} {} to {} ({}, template {} v{}): {summary}",
            row.id,
            row.recipient_name,
            row.recipient_address.replace('\n', ", "),
            row.template,
            row.template_version
        ),
        reason: state,
        by: row.created_by.clone(),
        communicated_to_parents: row.status == "sent",
        on_date: at.date_naive().to_string(),
    }
}
