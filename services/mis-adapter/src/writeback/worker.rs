//! The write-back worker. It groups queued decisions into jobs and claims one due job at a
//! time under a lease. It sends the job's marks to the school's MIS in one request and
//! records the outcome of each mark, retrying the job with backoff.
//!
//! Before a job is sent, each of its marks is marked `sent` and its value is recorded in
//! `writeback_echoes`, in one transaction, so that a pull racing the request does not apply
//! the MIS's copy as a new register version. Outcomes are stored only while the claim is
//! still the worker's own. A server that stops mid-attempt leaves its claim behind, and once
//! the lease runs out any server queues the job again. Sending again is safe because the MIS
//! stores one mark per pupil and session, so a repeat replaces the mark with itself.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::MIS_ADAPTER_LOCK_KEY;
use crate::connector::client::{AttemptError, BrokerError, RequestCounts};
use crate::connector::{Connectors, WritebackConfig};
use crate::delivery::RetryConfig;
use crate::delivery::destination::redact_for_log;
use crate::delivery::worker::retry_delay;
use crate::writeback::store::{
    self, ACCEPTED, COMPLETED, FAILED, ItemRow, QUEUED, REJECTED, RETRYING, SENDING, SENT,
};

/// Links from a job's span to the requests whose decisions it sends, at most.
const MAX_LINKS: usize = 32;

/// A claimed job.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Claimed {
    id: String,
    laestab: String,
    attempts: i32,
    attempt_base: i32,
}

/// The outcome of one attempt.
#[derive(Debug)]
enum Outcome {
    /// The MIS returned an outcome for every mark sent.
    Answered {
        writeback_id: String,
        accepted: Vec<i64>,
        rejected: Vec<(i64, String)>,
    },
    /// Worth trying again at `due`.
    Retry {
        detail: String,
        http_status: u16,
        due: DateTime<Utc>,
    },
    /// Failed for good, or out of attempts.
    Failed { detail: String, http_status: u16 },
}

/// The worker's settings and handles.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    pub(crate) db: Db,
    pub(crate) connectors: Connectors,
    pub(crate) config: WritebackConfig,
    pub(crate) wake: Arc<Notify>,
}

impl Worker {
    /// Starts sending. New decisions wake the worker at once. Otherwise it wakes when the
    /// next retry is due, and at least every poll interval for leases that ran out.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::info!(
                poll_ms = self.config.poll().as_millis() as u64,
                batch_size = self.config.batch_size,
                "Write-back worker started"
            );
            loop {
                if let Err(error) = self.run_once().await {
                    tracing::warn!(%error, "Write-back worker failed; trying again at the next poll");
                }
                let poll = self.config.poll();
                let wait = match self.next_due().await {
                    Ok(Some(due)) => (due - Utc::now())
                        .to_std()
                        .ok()
                        .filter(|wait| !wait.is_zero())
                        .map_or(poll, |wait| wait.min(poll)),
                    Ok(None) => poll,
                    Err(error) => {
                        tracing::warn!(%error, "Write-back worker cannot read the next retry time");
                        poll
                    }
                };
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        })
    }

    /// Queues again the jobs whose lease ran out, forms jobs from queued decisions, and sends
    /// every job that is due.
    pub(crate) async fn run_once(&self) -> Result<(), sqlx::Error> {
        self.recover_interrupted().await?;
        let schools: Vec<String> = self
            .connectors
            .schools
            .iter()
            .filter(|school| school.config.write_back)
            .map(|school| school.config.laestab.clone())
            .collect();
        let now = Utc::now();
        for job in
            store::form_jobs(&self.db, &schools, i64::from(self.config.batch_size), now).await?
        {
            tracing::info!(job = %job, "Write-back job created");
        }
        while let Some(claimed) = self.claim_next().await? {
            let span = self.job_span(&claimed.0).await;
            self.send(claimed).instrument(span).await?;
        }
        Ok(())
    }

    /// Returns the span of a job's attempt: a child of the request that stored the job's first
    /// decision, and linked to those of the others, at most [`MAX_LINKS`] of them.
    async fn job_span(&self, job: &Claimed) -> tracing::Span {
        if !rollcall_runtime::telemetry::exporting() {
            return tracing::Span::none();
        }
        let parents: Vec<(String,)> = with_db!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT traceparent FROM writeback_items \
                 WHERE job_id = $1 AND traceparent IS NOT NULL ORDER BY sequence LIMIT $2",
            )
            .bind(&job.id)
            .bind(MAX_LINKS as i64 + 1)
            .fetch_all(pool)
            .await
        })
        .unwrap_or_else(|error| {
            tracing::warn!(job = %job.id, %error, "Failed to read a write-back job's trace context, so its span starts a new trace");
            Vec::new()
        });
        let mut parents: Vec<String> = parents.into_iter().map(|(parent,)| parent).collect();
        parents.dedup();
        let span = rollcall_runtime::telemetry::background_span(
            "mis_adapter.write_back",
            parents.first().map(String::as_str),
        );
        for parent in parents.iter().skip(1) {
            rollcall_runtime::telemetry::link_traceparent(&span, parent);
        }
        rollcall_runtime::telemetry::set_attribute(&span, "rollcall.writeback_job_id", &job.id);
        span
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        with_db!(&self.db, |pool| {
            sqlx::query_scalar(
                "SELECT next_attempt_at FROM writeback_jobs WHERE status = $1 \
                 ORDER BY next_attempt_at LIMIT 1",
            )
            .bind(QUEUED)
            .fetch_optional(pool)
            .await
        })
    }

    /// Claims the job due first. A job waits while an earlier job of its school is unfinished,
    /// so that the MIS receives a school's decisions in the order they were made.
    async fn claim_next(&self) -> Result<Option<(Claimed, DateTime<Utc>)>, sqlx::Error> {
        let now = Utc::now();
        let lease = now + chrono::Duration::seconds(self.config.lease_seconds as i64);
        with_db!(&self.db, |pool| {
            let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
            let due: Option<String> = sqlx::query_scalar(
                "SELECT j.id FROM writeback_jobs j WHERE j.status = $1 AND j.next_attempt_at <= $2 \
                 AND NOT EXISTS (SELECT 1 FROM writeback_jobs o WHERE o.laestab = j.laestab \
                 AND o.id < j.id AND o.status IN ($1, $3)) \
                 AND NOT EXISTS (SELECT 1 FROM writeback_jobs o WHERE o.laestab = j.laestab \
                 AND o.status = $3) ORDER BY j.next_attempt_at, j.id LIMIT 1",
            )
            .bind(QUEUED)
            .bind(now)
            .bind(SENDING)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = due else {
                return Ok(None);
            };
            sqlx::query(
                "UPDATE writeback_jobs SET status = $1, claimed_at = $2, claimed_until = $3, \
                 attempts = attempts + 1, updated_at = $2 WHERE id = $4 AND status = $5",
            )
            .bind(SENDING)
            .bind(now)
            .bind(lease)
            .bind(&id)
            .bind(QUEUED)
            .execute(&mut *tx)
            .await?;
            let claimed: Claimed = sqlx::query_as(
                "SELECT id, laestab, attempts, attempt_base FROM writeback_jobs WHERE id = $1",
            )
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some((claimed, now)))
        })
    }

    /// Makes one attempt at a job and stores its outcome.
    async fn send(&self, (job, started_at): (Claimed, DateTime<Utc>)) -> Result<(), sqlx::Error> {
        let tries = u32::try_from(job.attempts - job.attempt_base)
            .unwrap_or(1)
            .max(1);
        let outcome = match self.attempt(&job, tries).await? {
            Some(outcome) => outcome,
            None => return Ok(()),
        };
        let finished_at = Utc::now();
        let stored = self.finish(&job, started_at, finished_at, &outcome).await?;
        if !stored {
            tracing::warn!(job = %job.id, laestab = %job.laestab, attempt = job.attempts, "Write-back outcome not stored: the lease ran out and the job was taken over");
            return Ok(());
        }
        match &outcome {
            Outcome::Answered {
                writeback_id,
                accepted,
                rejected,
            } => tracing::info!(
                job = %job.id,
                laestab = %job.laestab,
                attempt = job.attempts,
                writeback_id = %writeback_id,
                accepted = accepted.len(),
                rejected = rejected.len(),
                "Write-back job answered by the MIS"
            ),
            Outcome::Retry {
                detail,
                http_status,
                due,
            } => tracing::warn!(
                job = %job.id,
                laestab = %job.laestab,
                attempt = job.attempts,
                http_status,
                retry_in_ms = (*due - finished_at).num_milliseconds(),
                error = %redact_for_log(detail),
                "Write-back job not sent; retrying"
            ),
            Outcome::Failed {
                detail,
                http_status,
            } => tracing::error!(
                job = %job.id,
                laestab = %job.laestab,
                attempt = job.attempts,
                http_status,
                error = %redact_for_log(detail),
                "Write-back job failed; it waits for RetryWritebackJob"
            ),
        }
        Ok(())
    }

    /// Prepares and sends a job's marks. Returns `None` when the job had nothing left to send
    /// and was completed here.
    async fn attempt(&self, job: &Claimed, tries: u32) -> Result<Option<Outcome>, sqlx::Error> {
        let Some(school) = self
            .connectors
            .school(&job.laestab)
            .filter(|school| school.config.write_back)
        else {
            return Ok(Some(Outcome::Failed {
                detail: format!(
                    "school {} has no connector with write_back = true in the connector \
                     settings: turn write-back on, restart rollcall, then retry the job",
                    job.laestab
                ),
                http_status: 0,
            }));
        };
        let items: Vec<ItemRow> = store::items(&self.db, &job.id)
            .await?
            .into_iter()
            .filter(|item| [QUEUED, RETRYING, SENT, FAILED].contains(&item.status.as_str()))
            .collect();

        let mut counts = RequestCounts::default();
        let codes: HashMap<String, String> = match school.client.attendance_codes(&mut counts).await
        {
            Ok(codes) => codes.into_iter().collect(),
            Err(error) => return Ok(Some(self.broker_failure(&error, tries))),
        };

        let mut records = Vec::new();
        let mut sent = Vec::new();
        let mut refused = Vec::new();
        for item in &items {
            let Some(mis_id) = store::mis_id_of(&self.db, &job.laestab, &item.upn).await? else {
                refused.push((
                    item.sequence,
                    format!(
                        "not sent: pupil {} has no MIS id at school {}; the connector maps MIS \
                         ids when it pulls the school's students",
                        item.upn, job.laestab
                    ),
                ));
                continue;
            };
            let Some(code_id) = codes.get(&item.code) else {
                refused.push((
                    item.sequence,
                    format!("not sent: the MIS has no attendance code {:?}", item.code),
                ));
                continue;
            };
            records.push(json!({
                "student_id": mis_id,
                "date": item.session_date,
                "session": item.session,
                "attendance_code_id": code_id,
                "minutes_late": item.minutes_late,
                "comment": item.comment,
            }));
            sent.push((item.sequence, mis_id, item.clone()));
        }
        let prepared = self.prepare(job, &sent, &refused).await?;
        if !prepared {
            return Ok(None);
        }
        if sent.is_empty() {
            return Ok(Some(Outcome::Answered {
                writeback_id: String::new(),
                accepted: Vec::new(),
                rejected: refused,
            }));
        }

        let reply = school
            .client
            .write_session_marks(&json!({ "attendance": records }))
            .await;
        let outcome = match reply {
            Ok(reply) => match parse_reply(&reply, &sent) {
                Ok((writeback_id, accepted, mut rejected)) => {
                    rejected.extend(refused);
                    Outcome::Answered {
                        writeback_id,
                        accepted,
                        rejected,
                    }
                }
                Err(problem) => self.retry_or_fail(
                    format!("the MIS's reply cannot be read: {problem}"),
                    200,
                    None,
                    tries,
                ),
            },
            Err(AttemptError::Transient {
                detail,
                http_status,
                retry_after,
            }) => self.retry_or_fail(detail, http_status, retry_after, tries),
            Err(AttemptError::Permanent {
                detail,
                http_status,
            }) => Outcome::Failed {
                detail,
                http_status,
            },
        };
        Ok(Some(outcome))
    }

    /// Marks the marks about to be sent as `sent`, with their MIS ids and echoes, and the
    /// ones that cannot be sent as rejected. Returns false when the claim is no longer the
    /// worker's own.
    async fn prepare(
        &self,
        job: &Claimed,
        sent: &[(i64, String, ItemRow)],
        refused: &[(i64, String)],
    ) -> Result<bool, sqlx::Error> {
        let now = Utc::now();
        with_db!(&self.db, |pool| {
            let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
            let status: Option<(String, i32)> =
                sqlx::query_as("SELECT status, attempts FROM writeback_jobs WHERE id = $1")
                    .bind(&job.id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if status != Some((SENDING.to_owned(), job.attempts)) {
                tx.rollback().await?;
                return Ok(false);
            }
            for (sequence, mis_id, item) in sent {
                sqlx::query(
                    "UPDATE writeback_items SET status = $1, mis_id = $2, reason = '', \
                     updated_at = $3 WHERE sequence = $4",
                )
                .bind(SENT)
                .bind(mis_id)
                .bind(now)
                .bind(sequence)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO writeback_echoes (laestab, mis_id, session_date, session, code, \
                     minutes_late, job_id, sent_at, seen_changed_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL) \
                     ON CONFLICT (laestab, mis_id, session_date, session) DO UPDATE SET \
                     code = excluded.code, minutes_late = excluded.minutes_late, \
                     job_id = excluded.job_id, sent_at = excluded.sent_at, seen_changed_at = NULL",
                )
                .bind(&job.laestab)
                .bind(mis_id)
                .bind(&item.session_date)
                .bind(&item.session)
                .bind(&item.code)
                .bind(item.minutes_late)
                .bind(&job.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            for (sequence, reason) in refused {
                sqlx::query(
                    "UPDATE writeback_items SET status = $1, reason = $2, updated_at = $3 \
                     WHERE sequence = $4",
                )
                .bind(REJECTED)
                .bind(reason)
                .bind(now)
                .bind(sequence)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn broker_failure(&self, error: &BrokerError, tries: u32) -> Outcome {
        match error {
            BrokerError::Deferred { detail, until } => {
                if tries < self.config.max_attempts {
                    Outcome::Retry {
                        detail: detail.clone(),
                        http_status: 429,
                        due: *until,
                    }
                } else {
                    Outcome::Failed {
                        detail: format!("{detail} (gave up after {tries} attempts)"),
                        http_status: 429,
                    }
                }
            }
            BrokerError::Failed {
                detail,
                http_status,
            } => self.retry_or_fail(detail.clone(), *http_status, None, tries),
        }
    }

    fn retry_or_fail(
        &self,
        detail: String,
        http_status: u16,
        retry_after: Option<std::time::Duration>,
        tries: u32,
    ) -> Outcome {
        if tries >= self.config.max_attempts {
            return Outcome::Failed {
                detail: format!(
                    "{detail} (gave up after {tries} attempts; retry the job once the MIS \
                     broker is working)"
                ),
                http_status,
            };
        }
        let retries = RetryConfig {
            max_attempts: self.config.max_attempts,
            first_retry_seconds: self.config.first_retry_seconds,
            max_retry_seconds: self.config.max_retry_seconds,
        };
        let delay = retry_delay(&retries, tries).max(retry_after.unwrap_or_default());
        Outcome::Retry {
            detail,
            http_status,
            due: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
        }
    }

    /// Stores the outcome of an attempt with its row in `writeback_attempts`. Returns false,
    /// storing nothing, when the lease ran out and another server took the job over.
    async fn finish(
        &self,
        job: &Claimed,
        started_at: DateTime<Utc>,
        now: DateTime<Utc>,
        outcome: &Outcome,
    ) -> Result<bool, sqlx::Error> {
        let (status, next_attempt_at, attempt_outcome, http_status, detail, writeback_id) =
            match outcome {
                Outcome::Answered { writeback_id, .. } => (
                    COMPLETED,
                    now,
                    "completed",
                    200,
                    format!("write-back {writeback_id}"),
                    writeback_id.as_str(),
                ),
                Outcome::Retry {
                    detail,
                    http_status,
                    due,
                } => (QUEUED, *due, "retry", *http_status, detail.clone(), ""),
                Outcome::Failed {
                    detail,
                    http_status,
                } => (FAILED, now, "failed", *http_status, detail.clone(), ""),
            };
        let last_error = if status == COMPLETED {
            ""
        } else {
            detail.as_str()
        };
        with_db!(&self.db, |pool| {
            let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
            let changed = sqlx::query(
                "UPDATE writeback_jobs SET status = $1, next_attempt_at = $2, claimed_until = NULL, \
                 last_error = $3, writeback_id = CASE WHEN $4 = '' THEN writeback_id ELSE $4 END, \
                 http_status = $5, updated_at = $6 WHERE id = $7 AND status = $8 AND attempts = $9",
            )
            .bind(status)
            .bind(next_attempt_at)
            .bind(last_error)
            .bind(writeback_id)
            .bind(i32::from(http_status))
            .bind(now)
            .bind(&job.id)
            .bind(SENDING)
            .bind(job.attempts)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            match outcome {
                Outcome::Answered {
                    accepted, rejected, ..
                } => {
                    let answered = accepted
                        .iter()
                        .map(|sequence| (*sequence, ACCEPTED, ""))
                        .chain(
                            rejected
                                .iter()
                                .map(|(sequence, reason)| (*sequence, REJECTED, reason.as_str())),
                        );
                    for (sequence, status, reason) in answered {
                        sqlx::query(
                            "UPDATE writeback_items SET status = $1, reason = $2, updated_at = $3 \
                             WHERE sequence = $4",
                        )
                        .bind(status)
                        .bind(reason)
                        .bind(now)
                        .bind(sequence)
                        .execute(&mut *tx)
                        .await?;
                    }
                    for (sequence, _) in rejected {
                        sqlx::query(
                            "DELETE FROM writeback_echoes WHERE job_id = $1 AND (laestab, mis_id, \
                             session_date, session) IN (SELECT laestab, mis_id, session_date, \
                             session FROM writeback_items WHERE sequence = $2)",
                        )
                        .bind(&job.id)
                        .bind(sequence)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                Outcome::Retry { .. } => {
                    sqlx::query(
                        "UPDATE writeback_items SET status = $1, reason = $2, updated_at = $3 \
                         WHERE job_id = $4 AND status IN ($5, $6, $7)",
                    )
                    .bind(RETRYING)
                    .bind(&detail)
                    .bind(now)
                    .bind(&job.id)
                    .bind(SENT)
                    .bind(QUEUED)
                    .bind(FAILED)
                    .execute(&mut *tx)
                    .await?;
                }
                Outcome::Failed { .. } => {
                    sqlx::query(
                        "UPDATE writeback_items SET status = $1, reason = $2, updated_at = $3 \
                         WHERE job_id = $4 AND status IN ($5, $6, $7)",
                    )
                    .bind(FAILED)
                    .bind(&detail)
                    .bind(now)
                    .bind(&job.id)
                    .bind(SENT)
                    .bind(QUEUED)
                    .bind(RETRYING)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query(
                "INSERT INTO writeback_attempts (job_id, attempt, started_at, finished_at, \
                 outcome, http_status, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&job.id)
            .bind(job.attempts)
            .bind(started_at)
            .bind(now)
            .bind(attempt_outcome)
            .bind(i32::from(http_status))
            .bind(&detail)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Queues again the jobs whose server stopped mid-attempt, once their lease has run out,
    /// or fails them when they have no attempts left.
    async fn recover_interrupted(&self) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        let stale: Vec<(String, i32, i32, Option<DateTime<Utc>>)> = with_db!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT id, attempts, attempt_base, claimed_at FROM writeback_jobs \
                 WHERE status = $1 AND claimed_until < $2",
            )
            .bind(SENDING)
            .bind(now)
            .fetch_all(pool)
            .await
        })?;
        for (id, attempt, attempt_base, claimed_at) in stale {
            let tries = u32::try_from(attempt - attempt_base).unwrap_or(0);
            let (status, item_status, detail) = if tries < self.config.max_attempts {
                (
                    QUEUED,
                    RETRYING,
                    "the server sending it stopped mid-attempt; sending again, which replaces \
                     each mark in the MIS with itself if it had arrived"
                        .to_owned(),
                )
            } else {
                (
                    FAILED,
                    FAILED,
                    format!(
                        "the server sending it stopped mid-attempt, and no attempts are left \
                         (gave up after {tries} attempts); retry the job"
                    ),
                )
            };
            let changed = with_db!(&self.db, |pool| {
                let mut tx = pool.begin_write(MIS_ADAPTER_LOCK_KEY).await?;
                let changed = sqlx::query(
                    "UPDATE writeback_jobs SET status = $1, claimed_until = NULL, last_error = $2, \
                     next_attempt_at = $3, updated_at = $3 \
                     WHERE id = $4 AND status = $5 AND claimed_until < $3 AND attempts = $6",
                )
                .bind(status)
                .bind(&detail)
                .bind(now)
                .bind(&id)
                .bind(SENDING)
                .bind(attempt)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 1 {
                    sqlx::query(
                        "UPDATE writeback_items SET status = $1, reason = $2, updated_at = $3 \
                         WHERE job_id = $4 AND status IN ($5, $6)",
                    )
                    .bind(item_status)
                    .bind(&detail)
                    .bind(now)
                    .bind(&id)
                    .bind(SENT)
                    .bind(QUEUED)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO writeback_attempts (job_id, attempt, started_at, \
                         finished_at, outcome, http_status, detail) \
                         VALUES ($1, $2, $3, $4, 'interrupted', 0, $5)",
                    )
                    .bind(&id)
                    .bind(attempt)
                    .bind(claimed_at.unwrap_or(now))
                    .bind(now)
                    .bind(&detail)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(changed)
            })?;
            if changed == 1 {
                tracing::warn!(job = %id, attempt, status, "Interrupted write-back job recovered");
            }
        }
        Ok(())
    }
}

/// Reads the MIS's reply: its write-back id and the outcome of each mark sent, matched by
/// `index`. Fails when a mark sent has no outcome.
#[allow(clippy::type_complexity)]
fn parse_reply(
    reply: &Value,
    sent: &[(i64, String, ItemRow)],
) -> Result<(String, Vec<i64>, Vec<(i64, String)>), String> {
    let writeback_id = reply
        .get("writeback_id")
        .and_then(|id| {
            id.as_str()
                .map(str::to_owned)
                .or_else(|| id.as_i64().map(|n| n.to_string()))
        })
        .unwrap_or_default();
    let outcomes = reply
        .get("data")
        .and_then(Value::as_array)
        .ok_or("it has no \"data\" array of outcomes")?;
    let mut by_index: HashMap<usize, (bool, String)> = HashMap::new();
    for outcome in outcomes {
        let index = outcome
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|index| usize::try_from(index).ok())
            .ok_or_else(|| format!("outcome {outcome} has no index"))?;
        let status = outcome.get("status").and_then(Value::as_str).unwrap_or("");
        let accepted = match status {
            "accepted" => true,
            "rejected" => false,
            other => return Err(format!("outcome {index} has the unknown status {other:?}")),
        };
        let error = outcome
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the MIS gave no reason")
            .to_owned();
        by_index.insert(index, (accepted, error));
    }
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (index, (sequence, _, _)) in sent.iter().enumerate() {
        match by_index.remove(&index) {
            Some((true, _)) => accepted.push(*sequence),
            Some((false, reason)) => rejected.push((*sequence, reason)),
            None => return Err(format!("mark {index} of {} has no outcome", sent.len())),
        }
    }
    Ok((writeback_id, accepted, rejected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sequence: i64) -> (i64, String, ItemRow) {
        (
            sequence,
            format!("A{sequence}"),
            ItemRow {
                sequence,
                upn: "A919200100001".into(),
                session_date: "2026-11-02".into(),
                session: "AM".into(),
                code: "/".into(),
                minutes_late: 0,
                comment: String::new(),
                source: "staff".into(),
                recorded_by: "Test".into(),
                recorded_at: Utc::now(),
                mis_id: String::new(),
                status: QUEUED.into(),
                reason: String::new(),
            },
        )
    }

    #[test]
    fn reply_outcomes_match_by_index() {
        let reply = json!({
            "writeback_id": "WB000001",
            "data": [
                {"index": 1, "status": "rejected", "error": "The register is locked."},
                {"index": 0, "status": "accepted"},
            ],
        });
        let (id, accepted, rejected) =
            parse_reply(&reply, &[item(10), item(11)]).expect("readable reply");
        assert_eq!(id, "WB000001");
        assert_eq!(accepted, [10]);
        assert_eq!(rejected, [(11, "The register is locked.".to_owned())]);
    }

    #[test]
    fn reply_missing_an_outcome_is_unreadable() {
        let reply = json!({"writeback_id": "WB1", "data": [{"index": 0, "status": "accepted"}]});
        let error = parse_reply(&reply, &[item(10), item(11)]).expect_err("missing");
        assert!(error.contains("mark 1 of 2"), "{error}");
        let error = parse_reply(&json!({"ok": true}), &[item(10)]).expect_err("no data");
        assert!(error.contains("\"data\""), "{error}");
        let odd = json!({"data": [{"index": 0, "status": "maybe"}]});
        assert!(parse_reply(&odd, &[item(10)]).is_err());
    }
}
