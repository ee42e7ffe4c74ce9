//! The write-back follower: reads the registers change feed from its stored cursor and
//! queues each decision at a school with write-back on.
//!
//! A decision is a mark version from staff or from a parent's report that became the
//! effective mark when stored, taken after write-back was turned on for its school. Versions
//! from an MIS or a file are never written back, so a pulled mark cannot loop back. Decisions
//! and the cursor are stored in one transaction, so a restart neither skips nor repeats one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rollcall_api::client::Channel;
use rollcall_api::convert::from_timestamp;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{WatchMarksRequest, WatchMarksResponse};
use rollcall_api::types::v1::{MarkSource, Session};
use rollcall_runtime::Db;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::writeback::store::{self, Decision};

/// How long the follower waits for more feed messages before storing what it has read.
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// The maximum number of decisions stored in one transaction.
const MAX_BATCH: usize = 500;

/// The maximum wait before the follower reconnects to the change feed.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// The follower's handles and the schools it queues decisions for.
#[derive(Debug, Clone)]
pub(crate) struct Follower {
    pub(crate) db: Db,
    pub(crate) registers: RegistersServiceClient<Channel>,
    /// When write-back was turned on, by school.
    pub(crate) enabled_since: HashMap<String, DateTime<Utc>>,
    pub(crate) wake: Arc<Notify>,
}

impl Follower {
    /// Follows the change feed until the server stops, reconnecting after a failure.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::info!(
                schools = self.enabled_since.len(),
                "Write-back follower started"
            );
            let mut wait = Duration::from_millis(250);
            loop {
                match self.follow().await {
                    Ok(()) => wait = Duration::from_millis(250),
                    Err(error) => {
                        tracing::warn!(%error, wait_ms = wait.as_millis() as u64, "Write-back follower lost the change feed; reconnecting");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_RECONNECT_WAIT);
                    }
                }
            }
        })
    }

    /// Reads the feed from the stored cursor until it ends or fails.
    ///
    /// NOTE: with no cursor stored yet, as when write-back is first turned on, the follower
    /// reads the whole feed from its start and keeps only decisions taken since then. On a
    /// register with years of marks, that first read takes a while before any job is sent.
    async fn follow(&self) -> anyhow::Result<()> {
        let start = store::cursor(&self.db).await?;
        let mut stream = self
            .registers
            .clone()
            .watch_marks(WatchMarksRequest {
                cursor: start,
                laestab: String::new(),
            })
            .await?
            .into_inner();
        let mut pending = Vec::new();
        let mut stored_cursor = start;
        let mut cursor = start;
        loop {
            let next = if cursor > stored_cursor {
                match tokio::time::timeout(FLUSH_AFTER, stream.message()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.flush(&mut pending, cursor).await?;
                        stored_cursor = cursor;
                        continue;
                    }
                }
            } else {
                stream.message().await
            };
            match next {
                Ok(Some(message)) => {
                    cursor = message.cursor;
                    if let Some(decision) = self.decision(&message) {
                        pending.push(decision);
                    }
                    if pending.len() >= MAX_BATCH {
                        self.flush(&mut pending, cursor).await?;
                        stored_cursor = cursor;
                    }
                }
                Ok(None) => {
                    self.flush(&mut pending, cursor).await?;
                    return Ok(());
                }
                Err(status) => {
                    self.flush(&mut pending, cursor).await?;
                    anyhow::bail!("{} ({:?})", status.message(), status.code());
                }
            }
        }
    }

    /// Stores the decisions read and the cursor, and wakes the worker when there were any.
    async fn flush(&self, pending: &mut Vec<Decision>, cursor: i64) -> anyhow::Result<()> {
        store::queue_decisions(&self.db, pending, cursor, Utc::now()).await?;
        if !pending.is_empty() {
            tracing::info!(
                decisions = pending.len(),
                cursor,
                "Decisions queued for write-back"
            );
            pending.clear();
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Returns the decision a feed message carries, if it is one to write back.
    fn decision(&self, message: &WatchMarksResponse) -> Option<Decision> {
        let mark = message.mark.as_ref()?;
        let source = MarkSource::try_from(mark.source).ok()?;
        let source = match source {
            MarkSource::Staff => "staff",
            MarkSource::ParentReport => "parent_report",
            _ => return None,
        };
        if !message.effective {
            return None;
        }
        let enabled_since = self.enabled_since.get(&mark.laestab)?;
        let recorded_at = mark.recorded_at.as_ref().and_then(from_timestamp)?;
        if recorded_at < *enabled_since {
            return None;
        }
        let session = match Session::try_from(mark.session).ok()? {
            Session::Am => "AM",
            Session::Pm => "PM",
            Session::Unspecified => return None,
        };
        Some(Decision {
            sequence: mark.sequence,
            laestab: mark.laestab.clone(),
            upn: mark.upn.clone(),
            date: mark.date.clone(),
            session: session.to_owned(),
            code: mark.code.clone(),
            minutes_late: mark.minutes_late,
            comment: mark.reason.clone(),
            source: source.to_owned(),
            recorded_by: mark.recorded_by.clone(),
            recorded_at,
            traceparent: Some(message.traceparent.clone()).filter(|parent| !parent.is_empty()),
        })
    }
}
