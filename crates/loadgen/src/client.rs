//! Drives the MIS sync API: pupils first, then marks in batches from several concurrent
//! requests, timing each request.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::policy::v1::GetSyncStateRequest;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use tonic::transport::Channel;

use crate::data::{self, School};

/// Largest request the clients send or accept: the server's limit of 64 MiB.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Builds an MIS sync client on `channel` that accepts the server's largest messages.
pub(crate) fn mis_client(channel: Channel) -> MisSyncServiceClient<Channel> {
    MisSyncServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Builds a policy client on `channel` that accepts the server's largest messages.
pub(crate) fn policy_client(channel: Channel) -> PolicyServiceClient<Channel> {
    PolicyServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Sends every school's pupils and checks that none was rejected.
pub(crate) async fn sync_pupils(
    channel: &Channel,
    schools: &[School],
    key: &str,
) -> anyhow::Result<()> {
    let mut client = mis_client(channel.clone());
    for school in schools {
        for request in data::pupils_requests(school, 10_000, &format!("{key}-{}", school.laestab)) {
            let response = client
                .sync_pupils(request)
                .await
                .with_context(|| format!("SyncPupils failed for school {}", school.laestab))?
                .into_inner();
            if let Some(rejected) = response
                .results
                .iter()
                .find(|row| !row.reason_code.is_empty())
            {
                bail!(
                    "SyncPupils rejected pupil {} of school {}: {} ({})",
                    rejected.upn,
                    school.laestab,
                    rejected.reason,
                    rejected.reason_code
                );
            }
        }
    }
    Ok(())
}

/// The time and outcome of sending a set of marks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent {
    /// Marks sent.
    pub(crate) marks: usize,
    /// From the first request sent to the last response received.
    pub(crate) elapsed: Duration,
    /// Each request's time from send to response.
    pub(crate) latencies: Vec<Duration>,
    /// Rows applied, unchanged and rejected.
    pub(crate) applied: usize,
    pub(crate) unchanged: usize,
    pub(crate) rejected: usize,
    /// The first rejection, to show what went wrong.
    pub(crate) first_rejection: Option<String>,
    /// The highest registers change-feed position the responses returned.
    pub(crate) feed_cursor: i64,
}

impl Sent {
    pub(crate) fn marks_per_second(&self) -> f64 {
        self.marks as f64 / self.elapsed.as_secs_f64()
    }

    /// Fails when any row was rejected or unchanged, so that a result never counts marks the
    /// server did not store.
    pub(crate) fn check_all_applied(&self) -> anyhow::Result<()> {
        if self.applied != self.marks {
            bail!(
                "{} of {} marks were applied ({} unchanged, {} rejected); first rejection: {}",
                self.applied,
                self.marks,
                self.unchanged,
                self.rejected,
                self.first_rejection.as_deref().unwrap_or("none")
            );
        }
        Ok(())
    }
}

/// One SyncMarks request to send: a school and a range of its marks.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub(crate) school: usize,
    pub(crate) marks: Range<usize>,
}

/// Splits each school's `ranges` into batches of at most `size` marks, taking the schools in
/// turn so that concurrent requests go to different schools.
pub(crate) fn batches(ranges: &[(usize, Range<usize>)], size: usize) -> Vec<Batch> {
    let mut queues: Vec<VecDeque<Batch>> = ranges
        .iter()
        .map(|(school, range)| {
            let mut queue = VecDeque::new();
            let mut start = range.start;
            while start < range.end {
                let end = (start + size.max(1)).min(range.end);
                queue.push_back(Batch {
                    school: *school,
                    marks: start..end,
                });
                start = end;
            }
            queue
        })
        .collect();
    let mut ordered = Vec::new();
    loop {
        let before = ordered.len();
        for queue in &mut queues {
            if let Some(batch) = queue.pop_front() {
                ordered.push(batch);
            }
        }
        if ordered.len() == before {
            return ordered;
        }
    }
}

/// Sends `batches` as SyncMarks requests, `concurrency` at a time, with idempotency keys made
/// from `key` and the batch's position.
pub(crate) async fn send_marks(
    channel: &Channel,
    schools: Arc<Vec<School>>,
    batches: Vec<Batch>,
    concurrency: usize,
    key: &str,
) -> anyhow::Result<Sent> {
    let queue = Arc::new(Mutex::new(
        batches.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let queue = Arc::clone(&queue);
        let schools = Arc::clone(&schools);
        let mut client = mis_client(channel.clone());
        let key = key.to_owned();
        workers.push(tokio::spawn(async move {
            let mut sent = Sent::default();
            loop {
                let next = queue
                    .lock()
                    .map_err(|_| anyhow::anyhow!("queue poisoned"))?
                    .pop_front();
                let Some((number, batch)) = next else {
                    return anyhow::Ok(sent);
                };
                let school = &schools[batch.school];
                let request = data::marks_request(
                    school,
                    &school.marks[batch.marks.clone()],
                    format!("{key}-{number}"),
                );
                let rows = request.marks.len();
                let sent_at = Instant::now();
                let response = client
                    .sync_marks(request)
                    .await
                    .with_context(|| format!("SyncMarks failed for school {}", school.laestab))?
                    .into_inner();
                sent.latencies.push(sent_at.elapsed());
                sent.marks += rows;
                let counts = response.counts.unwrap_or_default();
                sent.applied += usize::try_from(counts.applied)?;
                sent.unchanged += usize::try_from(counts.unchanged)?;
                sent.rejected += usize::try_from(counts.rejected)?;
                if sent.first_rejection.is_none()
                    && let Some(row) = response.results.iter().find(|row| !row.reason.is_empty())
                {
                    sent.first_rejection = Some(format!(
                        "school {} row {}: {} {} ({})",
                        school.laestab, row.index, row.field, row.value, row.reason
                    ));
                }
                sent.feed_cursor = sent.feed_cursor.max(response.feed_cursor);
            }
        }));
    }
    let mut total = Sent::default();
    for worker in workers {
        let sent = worker.await.context("a sending task panicked")??;
        total.marks += sent.marks;
        total.latencies.extend(sent.latencies);
        total.applied += sent.applied;
        total.unchanged += sent.unchanged;
        total.rejected += sent.rejected;
        total.first_rejection = total.first_rejection.or(sent.first_rejection);
        total.feed_cursor = total.feed_cursor.max(sent.feed_cursor);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Waits until the policy service has applied the registers change feed up to `cursor`, and
/// returns when that was seen. Polls every 10 ms, for at most `timeout`.
pub(crate) async fn wait_for_policy(
    channel: &Channel,
    cursor: i64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let mut policy = policy_client(channel.clone());
    let started = Instant::now();
    loop {
        let state = policy
            .get_sync_state(GetSyncStateRequest {})
            .await
            .context("GetSyncState failed")?
            .into_inner();
        if state.registers_cursor >= cursor {
            return Ok(Instant::now());
        }
        if started.elapsed() > timeout {
            bail!(
                "the policy service reached feed position {} of {cursor} within {} s",
                state.registers_cursor,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
