//! The write-back RPCs: ListWritebackJobs, GetWritebackJob and RetryWritebackJob.

use chrono::Utc;
use rollcall_api::convert::timestamp;
use rollcall_api::mis_adapter::v1::{
    GetWritebackJobRequest, GetWritebackJobResponse, ListWritebackJobsRequest,
    ListWritebackJobsResponse, RetryWritebackJobRequest, RetryWritebackJobResponse,
    WritebackAttempt, WritebackJob, WritebackJobStatus, WritebackMark, WritebackMarkStatus,
};
use rollcall_api::types::v1::{MarkSource, Session};
use rollcall_runtime::Db;
use rollcall_runtime::grpc::{
    failed_precondition, invalid_argument, laestab, not_found, storage_error,
};
use tonic::Status;

use crate::writeback::store::{self, JobFilter, JobRow, RetryRejection};

const DEFAULT_PAGE_SIZE: i64 = 100;
const MAX_PAGE_SIZE: i64 = 1_000;

pub(crate) async fn list_jobs(
    db: &Db,
    request: ListWritebackJobsRequest,
) -> Result<ListWritebackJobsResponse, Status> {
    let school = if request.laestab.trim().is_empty() {
        String::new()
    } else {
        laestab("laestab", &request.laestab)?
    };
    let status = match WritebackJobStatus::try_from(request.status) {
        Ok(WritebackJobStatus::Unspecified) => "",
        Ok(known) => job_status_name(known),
        Err(_) => {
            return Err(invalid_argument(
                "status",
                &request.status.to_string(),
                "unknown job status; leave it unspecified for every status",
            ));
        }
    };
    let limit = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        size if size < 0 => {
            return Err(invalid_argument(
                "page_size",
                &size.to_string(),
                "must not be negative; use 0 for the default of 100",
            ));
        }
        size => i64::from(size).min(MAX_PAGE_SIZE),
    };
    if !request.page_token.is_empty() && !is_job_id(&request.page_token) {
        return Err(invalid_argument(
            "page_token",
            &request.page_token,
            "not a token from an earlier ListWritebackJobs call",
        ));
    }
    let filter = JobFilter {
        laestab: school,
        status: status.to_owned(),
        before_id: request.page_token,
        limit: limit + 1,
    };
    let mut rows = store::jobs(db, &filter)
        .await
        .map_err(|error| storage_error("listing write-back jobs", error))?;
    let next_page_token = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|row| row.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(ListWritebackJobsResponse {
        jobs: rows.into_iter().map(job_proto).collect(),
        next_page_token,
    })
}

pub(crate) async fn get_job(
    db: &Db,
    request: GetWritebackJobRequest,
) -> Result<GetWritebackJobResponse, Status> {
    let job = read_job(db, &request.job_id).await?;
    Ok(GetWritebackJobResponse { job: Some(job) })
}

pub(crate) async fn retry_job(
    db: &Db,
    request: RetryWritebackJobRequest,
) -> Result<RetryWritebackJobResponse, Status> {
    let id = request.job_id.trim();
    if !is_job_id(id) {
        return Err(invalid_argument(
            "job_id",
            id,
            "expected a write-back job id such as wb-00000001",
        ));
    }
    let outcome = store::retry(db, id, Utc::now())
        .await
        .map_err(|error| storage_error("retrying a write-back job", error))?;
    match outcome {
        Ok(()) => {
            tracing::info!(job = %id, "Write-back job queued again");
            Ok(RetryWritebackJobResponse {
                job: Some(read_job(db, id).await?),
            })
        }
        Err(RetryRejection::NotFound) => Err(not_found("write-back job", id)),
        Err(RetryRejection::Sending) => Err(failed_precondition(format!(
            "write-back job {id} is being sent now; wait for the attempt to end"
        ))),
        Err(RetryRejection::AllAccepted) => Err(failed_precondition(format!(
            "every mark of write-back job {id} was accepted or replaced by a later decision, \
             so there is nothing to send again"
        ))),
    }
}

/// Reads a job with its marks and attempts, or returns NOT_FOUND.
async fn read_job(db: &Db, id: &str) -> Result<WritebackJob, Status> {
    let row = store::job(db, id)
        .await
        .map_err(|error| storage_error("reading a write-back job", error))?
        .ok_or_else(|| not_found("write-back job", id))?;
    let items = store::items(db, id)
        .await
        .map_err(|error| storage_error("reading a write-back job's marks", error))?;
    let attempts = store::attempts(db, id)
        .await
        .map_err(|error| storage_error("reading a write-back job's attempts", error))?;
    let mut job = job_proto(row);
    job.items = items
        .into_iter()
        .map(|item| WritebackMark {
            sequence: item.sequence,
            upn: item.upn,
            mis_id: item.mis_id,
            date: item.session_date,
            session: match item.session.as_str() {
                "AM" => Session::Am,
                "PM" => Session::Pm,
                _ => Session::Unspecified,
            } as i32,
            code: item.code,
            minutes_late: item.minutes_late,
            comment: item.comment,
            source: match item.source.as_str() {
                "staff" => MarkSource::Staff,
                "parent_report" => MarkSource::ParentReport,
                _ => MarkSource::Unspecified,
            } as i32,
            recorded_by: item.recorded_by,
            recorded_at: Some(timestamp(item.recorded_at)),
            status: mark_status(&item.status) as i32,
            reason: item.reason,
        })
        .collect();
    job.history = attempts
        .into_iter()
        .map(|attempt| WritebackAttempt {
            attempt: attempt.attempt,
            started_at: Some(timestamp(attempt.started_at)),
            finished_at: Some(timestamp(attempt.finished_at)),
            outcome: attempt.outcome,
            http_status: attempt.http_status,
            detail: attempt.detail,
        })
        .collect();
    Ok(job)
}

fn job_proto(row: JobRow) -> WritebackJob {
    WritebackJob {
        next_attempt_at: (row.status == store::QUEUED).then(|| timestamp(row.next_attempt_at)),
        status: match row.status.as_str() {
            store::QUEUED => WritebackJobStatus::Queued,
            store::SENDING => WritebackJobStatus::Sending,
            store::COMPLETED => WritebackJobStatus::Completed,
            store::FAILED => WritebackJobStatus::Failed,
            _ => WritebackJobStatus::Unspecified,
        } as i32,
        id: row.id,
        laestab: row.laestab,
        attempts: row.attempts,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        last_error: row.last_error,
        writeback_id: row.writeback_id,
        marks: i32::try_from(row.marks).unwrap_or(i32::MAX),
        accepted: i32::try_from(row.accepted).unwrap_or(i32::MAX),
        rejected: i32::try_from(row.rejected).unwrap_or(i32::MAX),
        items: Vec::new(),
        history: Vec::new(),
    }
}

fn job_status_name(status: WritebackJobStatus) -> &'static str {
    match status {
        WritebackJobStatus::Queued => store::QUEUED,
        WritebackJobStatus::Sending => store::SENDING,
        WritebackJobStatus::Completed => store::COMPLETED,
        WritebackJobStatus::Failed => store::FAILED,
        WritebackJobStatus::Unspecified => "",
    }
}

fn mark_status(name: &str) -> WritebackMarkStatus {
    match name {
        store::QUEUED => WritebackMarkStatus::Queued,
        store::SENT => WritebackMarkStatus::Sent,
        store::ACCEPTED => WritebackMarkStatus::Accepted,
        store::REJECTED => WritebackMarkStatus::Rejected,
        store::RETRYING => WritebackMarkStatus::Retrying,
        store::FAILED => WritebackMarkStatus::Failed,
        store::SUPERSEDED => WritebackMarkStatus::Superseded,
        _ => WritebackMarkStatus::Unspecified,
    }
}

fn is_job_id(token: &str) -> bool {
    token
        .strip_prefix("wb-")
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked() {
        assert!(is_job_id("wb-00000001"));
        assert!(!is_job_id("wb-"));
        assert!(!is_job_id("dlv-00000001"));
    }

    #[test]
    fn every_stored_status_has_a_message_value() {
        for name in [
            store::QUEUED,
            store::SENT,
            store::ACCEPTED,
            store::REJECTED,
            store::RETRYING,
            store::FAILED,
            store::SUPERSEDED,
        ] {
            assert_ne!(
                mark_status(name),
                WritebackMarkStatus::Unspecified,
                "{name}"
            );
        }
    }
}
