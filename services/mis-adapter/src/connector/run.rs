//! One run of a school's connector: the school, then students, session marks and deletions
//! changed after their watermarks, page by page.
//!
//! Each page is applied before its watermark moves: students through SyncPupils, marks
//! through SyncMarks, deletions to the review list. A run that stops part way, for an error
//! or a server that stopped, resumes after the last page applied. Every batch's idempotency
//! key is a hash of its content, so a page applied again after a crash changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rollcall_api::mis_adapter::v1::{
    RowCounts, RowOutcome, RowResult, SyncMarksRequest, SyncPupilsRequest,
};
use rollcall_api::types::v1::Session;
use rollcall_runtime::Db;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::connector::client::{BrokerError, RequestCounts};
use crate::connector::mapping::{self, Cursor};
use crate::connector::store::{self, FAILED, NewDeletion, Resource, RunRow, RunTotals, SUCCEEDED};
use crate::connector::{SchoolConnector, SyncTarget};
use crate::delivery::destination::redact_for_log;
use crate::writeback;

/// The broker's deletion type of a student.
pub(crate) const STUDENT_TYPE: &str = "student";

/// The broker's deletion type of a session mark.
pub(crate) const MARK_TYPE: &str = "session_attendance";

/// The maximum number of rejections kept with a run.
const MAX_REJECTIONS: usize = 100;

/// The maximum number of rejections logged one by one in a run. The run's record counts the
/// rest.
const MAX_LOGGED_REJECTIONS: usize = 10;

/// How long a run keeps its school without renewing the lease. A server that stops mid-run
/// keeps the school no longer than this.
pub(crate) const RUN_LEASE: Duration = Duration::from_secs(120);

/// How often a run renews its lease.
const LEASE_RENEWAL: Duration = Duration::from_secs(30);

/// A rejected row, as stored with its run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rejection {
    pub(crate) resource: String,
    pub(crate) record_id: String,
    pub(crate) mis_id: String,
    pub(crate) reason_code: String,
    pub(crate) field: String,
    pub(crate) value: String,
    pub(crate) reason: String,
}

/// The reason a run could not start.
#[derive(Debug)]
pub(crate) enum StartError {
    /// Another run holds the school's lease.
    Busy(store::StateRow),
    /// Storage failed.
    Storage(sqlx::Error),
}

impl From<sqlx::Error> for StartError {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error)
    }
}

/// The reason a run stopped part way.
#[derive(Debug)]
enum Stop {
    Broker(BrokerError),
    Problem(String),
    Storage(sqlx::Error),
    LeaseLost,
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error)
    }
}

impl From<BrokerError> for Stop {
    fn from(error: BrokerError) -> Self {
        Self::Broker(error)
    }
}

/// A run in progress.
struct Run<'a> {
    db: &'a Db,
    school: &'a SchoolConnector,
    sync: &'a dyn SyncTarget,
    laestab: &'a str,
    run_id: String,
    totals: RunTotals,
    counts: RequestCounts,
    rejections: Vec<Rejection>,
    rejected_total: usize,
    codes_by_id: Option<HashMap<String, String>>,
    school_name: String,
    phase: i32,
    source_name: String,
}

/// Runs a school's connector and returns the run once it ends. The caller holds the school's
/// in-process lock, so that one server starts one run of a school at a time.
pub(crate) async fn run_school(
    db: &Db,
    school: &SchoolConnector,
    sync: &dyn SyncTarget,
    trigger: &'static str,
    full: bool,
) -> Result<RunRow, StartError> {
    let laestab = school.config.laestab.as_str();
    let now = Utc::now();
    let run_id = match store::start_run(db, laestab, trigger, full, now, lease_end(now)).await? {
        Ok(id) => id,
        Err(state) => return Err(StartError::Busy(state)),
    };
    tracing::info!(%laestab, run = %run_id, trigger, full, school_id = %school.config.school_id, "Connector run started");

    let heartbeat = {
        let db = db.clone();
        let laestab = laestab.to_owned();
        let run_id = run_id.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_RENEWAL).await;
                match store::renew_lease(&db, &laestab, &run_id, lease_end(Utc::now())).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        tracing::warn!(%laestab, run = %run_id, %error, "Connector run lease not renewed");
                    }
                }
            }
        })
    };

    let mut run = Run {
        db,
        school,
        sync,
        laestab,
        run_id: run_id.clone(),
        totals: RunTotals::default(),
        counts: RequestCounts::default(),
        rejections: Vec::new(),
        rejected_total: 0,
        codes_by_id: None,
        school_name: String::new(),
        phase: 0,
        source_name: String::new(),
    };
    let outcome = run.steps(full).await;
    heartbeat.abort();

    run.totals.requests = i32::try_from(run.counts.requests).unwrap_or(i32::MAX);
    run.totals.retries = i32::try_from(run.counts.retries).unwrap_or(i32::MAX);
    let (status, error, not_before) = match &outcome {
        Ok(()) => (SUCCEEDED, String::new(), None),
        Err(Stop::Broker(BrokerError::Deferred { detail, until })) => {
            (FAILED, detail.clone(), Some(*until))
        }
        Err(Stop::Broker(BrokerError::Failed { detail, .. })) => (FAILED, detail.clone(), None),
        Err(Stop::Problem(detail)) => (FAILED, detail.clone(), None),
        Err(Stop::Storage(error)) => (
            FAILED,
            format!("storage error: {error}; see the server log"),
            None,
        ),
        Err(Stop::LeaseLost) => (
            FAILED,
            "the run's lease ran out and another run took the school over".to_owned(),
            None,
        ),
    };
    let rejections = serde_json::to_string(&run.rejections).unwrap_or_else(|_| "[]".to_owned());
    store::finish_run(
        db,
        laestab,
        &run_id,
        status,
        &run.totals,
        &error,
        &rejections,
        not_before,
        Utc::now(),
    )
    .await?;

    let totals = &run.totals;
    if status == SUCCEEDED {
        tracing::info!(
            %laestab,
            run = %run_id,
            requests = totals.requests,
            retries = totals.retries,
            pages = totals.pages,
            pupils_applied = totals.pupils_applied,
            pupils_unchanged = totals.pupils_unchanged,
            pupils_rejected = totals.pupils_rejected,
            marks_applied = totals.marks_applied,
            marks_unchanged = totals.marks_unchanged,
            marks_rejected = totals.marks_rejected,
            marks_echoed = totals.marks_echoed,
            deletions = totals.deletions,
            "Connector run finished"
        );
    } else {
        tracing::error!(
            %laestab,
            run = %run_id,
            requests = totals.requests,
            retries = totals.retries,
            pages = totals.pages,
            pupils_applied = totals.pupils_applied,
            marks_applied = totals.marks_applied,
            error = %redact_for_log(&error),
            "Connector run failed; the next run resumes after the last page applied"
        );
    }
    match store::run(db, &run_id).await? {
        Some(row) => Ok(row),
        None => Err(StartError::Storage(sqlx::Error::RowNotFound)),
    }
}

fn lease_end(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(RUN_LEASE).unwrap_or_default()
}

impl Run<'_> {
    async fn steps(&mut self, full: bool) -> Result<(), Stop> {
        self.read_school().await?;
        let state = store::state(self.db, self.laestab)
            .await?
            .ok_or_else(|| Stop::Problem("the connector's state is missing".to_owned()))?;
        for resource in [Resource::Students, Resource::Marks, Resource::Deletions] {
            let cursor = if full {
                Cursor::START
            } else {
                state.cursor(resource)
            };
            self.read_list(resource, cursor).await?;
        }
        Ok(())
    }

    /// Reads the school, checks that it is the school the settings name, and works out its
    /// name and phase for SyncPupils.
    async fn read_school(&mut self) -> Result<(), Stop> {
        let config = &self.school.config;
        let school = self.school.client.school(&mut self.counts).await?;

        let la_code = text(&school, "la_code");
        let establishment = text(&school, "establishment_number");
        let broker_laestab = format!("{la_code}{establishment}");
        if broker_laestab != self.laestab {
            return Err(Stop::Problem(format!(
                "the broker's school {} has LA code {la_code:?} and establishment number \
                 {establishment:?}, so it is not school {}: check school_id in the connector \
                 settings",
                config.school_id, self.laestab
            )));
        }

        self.school_name = text(&school, "name");
        let broker_phase = text(&school, "phase_of_education");
        let phase = match &config.phase {
            Some(setting) => mapping::phase_of_setting(setting),
            None => mapping::phase(&broker_phase).ok_or_else(|| {
                Stop::Problem(format!(
                    "the broker gives school {}'s phase as {broker_phase:?}, which rollcall \
                     cannot map to one escalation ladder: set phase to infant, junior or \
                     secondary in its [[school]] table",
                    self.laestab
                ))
            })?,
        };
        self.phase = phase as i32;

        let mis = text(&school, "mis");
        self.source_name = if mis.is_empty() {
            format!("MIS broker school {}", config.school_id)
        } else {
            format!("{mis} through the MIS broker")
        };
        Ok(())
    }

    /// Reads one list page by page from `cursor`, applying each page and then storing where
    /// the list resumes.
    ///
    /// Each request after the first starts from the second of the last change read, so it
    /// repeats the records changed in that second. Those are left out of the page before it
    /// is applied, by their id and `updated_at`.
    async fn read_list(&mut self, resource: Resource, mut cursor: Cursor) -> Result<(), Stop> {
        let include = match resource {
            Resource::Students => "education_details,registration,year",
            Resource::Marks => "attendance_code",
            Resource::Deletions => "",
        };
        let mut recent: HashMap<String, DateTime<Utc>> = HashMap::new();
        loop {
            let page = self
                .school
                .client
                .page(
                    resource.path(),
                    cursor.after,
                    cursor.page,
                    self.school.config.page_size,
                    include,
                    &mut self.counts,
                )
                .await?;
            self.totals.pages += 1;
            let mut changes = Vec::with_capacity(page.records.len());
            for record in &page.records {
                let changed = mapping::updated_at(record).map_err(|problem| {
                    Stop::Problem(format!(
                        "{} page {}: {problem}",
                        resource.path(),
                        cursor.page
                    ))
                })?;
                changes.push((mapping::record_id(record), changed));
            }
            let latest =
                mapping::latest_change(resource.path(), &changes).map_err(Stop::Problem)?;

            let (records, fresh): (Vec<Value>, Vec<(String, DateTime<Utc>)>) = page
                .records
                .iter()
                .zip(&changes)
                .filter(|(_, (id, changed))| recent.get(id) != Some(changed))
                .map(|(record, change)| (record.clone(), change.clone()))
                .unzip();
            match resource {
                Resource::Students => self.apply_students(&records, &fresh).await?,
                Resource::Marks => self.apply_marks(&records, &fresh).await?,
                Resource::Deletions => self.apply_deletions(&records).await?,
            }

            let (next, more) = mapping::next_cursor(cursor, latest, page.more);
            let now = Utc::now();
            if !store::save_cursor(self.db, self.laestab, &self.run_id, resource, next, now).await?
            {
                return Err(Stop::LeaseLost);
            }
            recent.extend(changes);
            if let Some(after) = next.after {
                recent.retain(|_, changed| *changed > after);
            }
            cursor = next;
            if !more {
                return Ok(());
            }
        }
    }

    async fn apply_students(
        &mut self,
        records: &[Value],
        changes: &[(String, DateTime<Utc>)],
    ) -> Result<(), Stop> {
        if records.is_empty() {
            return Ok(());
        }
        let mut request = SyncPupilsRequest {
            laestab: self.laestab.to_owned(),
            school_name: self.school_name.clone(),
            phase: self.phase,
            idempotency_key: String::new(),
            source_name: self.source_name.clone(),
            dry_run: false,
            pupils: records.iter().map(mapping::pupil).collect(),
        };
        request.idempotency_key = mapping::pupils_key(&request, changes);
        let response = self.sync.sync_pupils(request).await.map_err(|status| {
            Stop::Problem(format!(
                "SyncPupils refused a page of students: {} ({:?})",
                status.message(),
                status.code()
            ))
        })?;
        let counts = settled_counts(response.counts.unwrap_or_default(), response.replayed);
        add_counts(
            &counts,
            &mut self.totals.pupils_applied,
            &mut self.totals.pupils_unchanged,
            &mut self.totals.pupils_rejected,
        );
        let ids: Vec<String> = records.iter().map(mapping::record_id).collect();
        self.keep_rejections("students", &ids, &response.results);
        Ok(())
    }

    async fn apply_marks(
        &mut self,
        records: &[Value],
        changes: &[(String, DateTime<Utc>)],
    ) -> Result<(), Stop> {
        if records.is_empty() {
            return Ok(());
        }
        let needs_codes = records
            .iter()
            .any(|record| record.get("attendance_code").is_some_and(Value::is_string));
        if needs_codes && self.codes_by_id.is_none() {
            let codes = self
                .school
                .client
                .attendance_codes(&mut self.counts)
                .await?;
            self.codes_by_id = Some(codes.into_iter().map(|(code, id)| (id, code)).collect());
        }
        let codes = self.codes_by_id.clone().unwrap_or_default();

        let mut locations = Vec::with_capacity(records.len());
        let mut rows = Vec::with_capacity(records.len());
        let mut ids = Vec::with_capacity(records.len());
        for (record, (record_id, changed)) in records.iter().zip(changes) {
            let row = mapping::mark(record, &codes, *changed);
            let session = match Session::try_from(row.session) {
                Ok(Session::Am) => "AM",
                Ok(Session::Pm) => "PM",
                _ => "",
            };
            locations.push((
                record_id.clone(),
                row.mis_id.clone(),
                row.date.clone(),
                session.to_owned(),
            ));
            let echo = writeback::store::EchoCheck {
                laestab: self.laestab,
                mis_id: &row.mis_id,
                date: &row.date,
                session,
                code: &row.code,
                minutes_late: row.minutes_late,
                changed_at: *changed,
            };
            if writeback::store::is_echo(self.db, &echo).await? {
                self.totals.marks_echoed += 1;
                continue;
            }
            rows.push(row);
            ids.push(record_id.clone());
        }
        store::record_mark_ids(self.db, self.laestab, &locations).await?;
        if rows.is_empty() {
            return Ok(());
        }

        let mut request = SyncMarksRequest {
            laestab: self.laestab.to_owned(),
            idempotency_key: String::new(),
            source_name: self.source_name.clone(),
            dry_run: false,
            marks: rows,
        };
        request.idempotency_key = mapping::marks_key(&request);
        let response = self.sync.sync_marks(request).await.map_err(|status| {
            Stop::Problem(format!(
                "SyncMarks refused a page of marks: {} ({:?})",
                status.message(),
                status.code()
            ))
        })?;
        let counts = settled_counts(response.counts.unwrap_or_default(), response.replayed);
        add_counts(
            &counts,
            &mut self.totals.marks_applied,
            &mut self.totals.marks_unchanged,
            &mut self.totals.marks_rejected,
        );
        self.keep_rejections("marks", &ids, &response.results);
        Ok(())
    }

    async fn apply_deletions(&mut self, records: &[Value]) -> Result<(), Stop> {
        for record in records {
            self.totals.deletions += 1;
            let record_type = text(record, "type");
            let record_id = mapping::record_id(record);
            if record_type != STUDENT_TYPE && record_type != MARK_TYPE {
                tracing::debug!(laestab = %self.laestab, %record_type, %record_id, "Deletion of a record the connector does not read; ignored");
                continue;
            }
            let changed = mapping::updated_at(record).map_err(Stop::Problem)?;
            let deleted_at = record
                .get("deleted_at")
                .and_then(|value| mapping::parse_time(value).ok())
                .unwrap_or(changed);
            let restored_at = record
                .get("restored_at")
                .filter(|value| !value.is_null())
                .map(mapping::parse_time)
                .transpose()
                .map_err(|problem| {
                    Stop::Problem(format!("deletion of {record_id}: restored_at {problem}"))
                })?;
            let location = if record_type == MARK_TYPE {
                store::mark_location(self.db, self.laestab, &record_id).await?
            } else {
                None
            };
            let deletion = NewDeletion {
                record_type: record_type.clone(),
                record_id: record_id.clone(),
                deleted_at,
                restored_at,
            };
            let applied =
                store::apply_deletion(self.db, self.laestab, &deletion, location, Utc::now())
                    .await?;
            tracing::info!(
                laestab = %self.laestab,
                run = %self.run_id,
                %record_type,
                %record_id,
                mis_id = %applied.mis_id,
                action = applied.action,
                "MIS deletion recorded for review"
            );
        }
        Ok(())
    }

    /// Keeps the first rejections of a batch with the run, and logs each with its ids.
    fn keep_rejections(&mut self, resource: &str, record_ids: &[String], results: &[RowResult]) {
        for result in results {
            if result.outcome != RowOutcome::Rejected as i32 {
                continue;
            }
            self.rejected_total += 1;
            let record_id = usize::try_from(result.index)
                .ok()
                .and_then(|index| record_ids.get(index))
                .cloned()
                .unwrap_or_default();
            if self.rejected_total <= MAX_LOGGED_REJECTIONS {
                tracing::warn!(
                    laestab = %self.laestab,
                    run = %self.run_id,
                    resource,
                    %record_id,
                    mis_id = %result.mis_id,
                    reason_code = %result.reason_code,
                    field = %result.field,
                    "MIS record rejected"
                );
            } else if self.rejected_total == MAX_LOGGED_REJECTIONS + 1 {
                tracing::warn!(
                    laestab = %self.laestab,
                    run = %self.run_id,
                    "More MIS records rejected; the run's record counts them and keeps the first 100"
                );
            }
            if self.rejections.len() < MAX_REJECTIONS {
                self.rejections.push(Rejection {
                    resource: resource.to_owned(),
                    record_id,
                    mis_id: result.mis_id.clone(),
                    reason_code: result.reason_code.clone(),
                    field: result.field.clone(),
                    value: result.value.clone(),
                    reason: result.reason.clone(),
                });
            }
        }
    }
}

/// Returns a batch's counts as this run changed things: a replayed batch (the same page
/// applied before, under the same key) changed nothing now, so its applied rows count as
/// unchanged.
fn settled_counts(counts: RowCounts, replayed: bool) -> RowCounts {
    if !replayed {
        return counts;
    }
    RowCounts {
        applied: 0,
        unchanged: counts.applied.saturating_add(counts.unchanged),
        rejected: counts.rejected,
    }
}

fn add_counts(counts: &RowCounts, applied: &mut i32, unchanged: &mut i32, rejected: &mut i32) {
    *applied = applied.saturating_add(counts.applied);
    *unchanged = unchanged.saturating_add(counts.unchanged);
    *rejected = rejected.saturating_add(counts.rejected);
}

/// Returns a field of a broker object as text: a string as it is, a number in decimal, and
/// anything else as empty.
fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_batch_counts_as_unchanged() {
        let counts = RowCounts {
            applied: 3,
            unchanged: 1,
            rejected: 2,
        };
        assert_eq!(settled_counts(counts, false), counts);
        let replayed = settled_counts(counts, true);
        assert_eq!(replayed.applied, 0);
        assert_eq!(replayed.unchanged, 4);
        assert_eq!(replayed.rejected, 2);
    }
}
