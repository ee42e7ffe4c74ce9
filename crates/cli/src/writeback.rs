//! Decisions written back to schools' MIS: `rollcall writeback list`, `show` and `retry`.

use std::io::Write;

use chrono::SecondsFormat;
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::convert::from_timestamp;
use rollcall_api::mis_adapter::v1::{
    GetWritebackJobRequest, ListWritebackJobsRequest, RetryWritebackJobRequest, WritebackJob,
    WritebackJobStatus, WritebackMarkStatus,
};
use rollcall_api::types::v1::{MarkSource, Session};
use serde_json::{Value, json};

use crate::client::Clients;
use crate::text::{count, table};

/// The maximum number of characters of an error or reason shown in a table. `--json` shows
/// it whole.
const MAX_NOTE_CHARS: usize = 60;

#[derive(Debug, Subcommand)]
pub(crate) enum WritebackCommand {
    /// List write-back jobs, newest first, with their status and counts of marks.
    List {
        /// Only this school (seven-digit LAESTAB).
        #[arg(long)]
        school: Option<String>,
        /// Only this status.
        #[arg(long, value_parser = ["queued", "sending", "completed", "failed"])]
        status: Option<String>,
        /// Print a JSON array, one object per job.
        #[arg(long)]
        json: bool,
    },
    /// Show one job with the outcome of each mark and every attempt.
    Show {
        /// The job id, for example wb-00000001.
        id: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue a job again with a fresh allowance of attempts. Its failed and rejected marks
    /// are sent again, except those a later decision replaced.
    Retry {
        /// The job id, for example wb-00000001.
        id: String,
    },
}

pub(crate) async fn run(
    clients: &Clients,
    command: WritebackCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut adapter = clients.mis_adapter.clone();
    match command {
        WritebackCommand::List {
            school,
            status,
            json,
        } => {
            let status = status
                .as_deref()
                .map_or(WritebackJobStatus::Unspecified, status_of);
            let mut jobs = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = adapter
                    .list_writeback_jobs(ListWritebackJobsRequest {
                        laestab: school.clone().unwrap_or_default(),
                        status: status as i32,
                        page_size: 1_000,
                        page_token,
                    })
                    .await
                    .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                    .into_inner();
                jobs.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if json {
                let rows: Vec<Value> = jobs.iter().map(job_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            print_jobs(&jobs, out)
        }
        WritebackCommand::Show { id, json } => {
            let job = adapter
                .get_writeback_job(GetWritebackJobRequest { job_id: id })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner()
                .job
                .unwrap_or_default();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&job_json(&job))?)?;
                return Ok(());
            }
            print_job(&job, out)
        }
        WritebackCommand::Retry { id } => {
            let job = adapter
                .retry_writeback_job(RetryWritebackJobRequest { job_id: id })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner()
                .job
                .unwrap_or_default();
            let queued = job
                .items
                .iter()
                .filter(|item| item.status == WritebackMarkStatus::Queued as i32)
                .count();
            writeln!(
                out,
                "Write-back job {} of school {} queued again with {}",
                job.id,
                job.laestab,
                count(queued, "mark", "marks")
            )?;
            Ok(())
        }
    }
}

fn status_of(name: &str) -> WritebackJobStatus {
    match name {
        "queued" => WritebackJobStatus::Queued,
        "sending" => WritebackJobStatus::Sending,
        "completed" => WritebackJobStatus::Completed,
        "failed" => WritebackJobStatus::Failed,
        _ => WritebackJobStatus::Unspecified,
    }
}

fn job_status_name(value: i32) -> &'static str {
    match WritebackJobStatus::try_from(value).unwrap_or(WritebackJobStatus::Unspecified) {
        WritebackJobStatus::Queued => "queued",
        WritebackJobStatus::Sending => "sending",
        WritebackJobStatus::Completed => "completed",
        WritebackJobStatus::Failed => "failed",
        WritebackJobStatus::Unspecified => "",
    }
}

fn mark_status_name(value: i32) -> &'static str {
    match WritebackMarkStatus::try_from(value).unwrap_or(WritebackMarkStatus::Unspecified) {
        WritebackMarkStatus::Queued => "queued",
        WritebackMarkStatus::Sent => "sent",
        WritebackMarkStatus::Accepted => "accepted",
        WritebackMarkStatus::Rejected => "rejected",
        WritebackMarkStatus::Retrying => "retrying",
        WritebackMarkStatus::Failed => "failed",
        WritebackMarkStatus::Superseded => "superseded",
        WritebackMarkStatus::Unspecified => "",
    }
}

fn session_name(value: i32) -> &'static str {
    match Session::try_from(value).unwrap_or(Session::Unspecified) {
        Session::Am => "AM",
        Session::Pm => "PM",
        Session::Unspecified => "",
    }
}

fn source_name(value: i32) -> &'static str {
    match MarkSource::try_from(value).unwrap_or(MarkSource::Unspecified) {
        MarkSource::Staff => "staff",
        MarkSource::ParentReport => "parent_report",
        MarkSource::MisSync => "mis_sync",
        MarkSource::Import => "import",
        MarkSource::Unspecified => "",
    }
}

/// Returns a timestamp as RFC 3339 in UTC, or null when it is absent.
fn time_json(at: Option<&prost_types::Timestamp>) -> Value {
    at.and_then(from_timestamp).map_or(Value::Null, |at| {
        json!(at.to_rfc3339_opts(SecondsFormat::Secs, true))
    })
}

fn time_text(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(from_timestamp)
        .map(|at| at.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_NOTE_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_NOTE_CHARS).collect();
    cut.push_str("...");
    cut
}

fn job_json(job: &WritebackJob) -> Value {
    json!({
        "id": job.id,
        "laestab": job.laestab,
        "status": job_status_name(job.status),
        "attempts": job.attempts,
        "created_at": time_json(job.created_at.as_ref()),
        "updated_at": time_json(job.updated_at.as_ref()),
        "next_attempt_at": time_json(job.next_attempt_at.as_ref()),
        "last_error": job.last_error,
        "writeback_id": job.writeback_id,
        "marks": job.marks,
        "accepted": job.accepted,
        "rejected": job.rejected,
        "items": job.items.iter().map(|item| json!({
            "sequence": item.sequence,
            "upn": item.upn,
            "mis_id": item.mis_id,
            "date": item.date,
            "session": session_name(item.session),
            "code": item.code,
            "minutes_late": item.minutes_late,
            "comment": item.comment,
            "source": source_name(item.source),
            "recorded_by": item.recorded_by,
            "recorded_at": time_json(item.recorded_at.as_ref()),
            "status": mark_status_name(item.status),
            "reason": item.reason,
        })).collect::<Vec<_>>(),
        "history": job.history.iter().map(|attempt| json!({
            "attempt": attempt.attempt,
            "started_at": time_json(attempt.started_at.as_ref()),
            "finished_at": time_json(attempt.finished_at.as_ref()),
            "outcome": attempt.outcome,
            "http_status": attempt.http_status,
            "detail": attempt.detail,
        })).collect::<Vec<_>>(),
    })
}

fn print_jobs(jobs: &[WritebackJob], out: &mut impl Write) -> anyhow::Result<()> {
    if jobs.is_empty() {
        writeln!(out, "No write-back jobs")?;
        return Ok(());
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "job",
        "school",
        "status",
        "marks",
        "accepted",
        "rejected",
        "attempts",
        "updated (UTC)",
        "last error",
    ]);
    for job in jobs {
        rows.add_row(vec![
            job.id.clone(),
            job.laestab.clone(),
            job_status_name(job.status).to_owned(),
            job.marks.to_string(),
            job.accepted.to_string(),
            job.rejected.to_string(),
            job.attempts.to_string(),
            time_text(job.updated_at.as_ref()),
            shorten(&job.last_error),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    writeln!(out, "{}", count(jobs.len(), "job", "jobs"))?;
    Ok(())
}

fn print_job(job: &WritebackJob, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "Write-back job {} of school {}: {}, {}",
        job.id,
        job.laestab,
        job_status_name(job.status),
        count(job.attempts, "attempt", "attempts")
    )?;
    if !job.writeback_id.is_empty() {
        writeln!(out, "  MIS write-back id: {}", job.writeback_id)?;
    }
    if !job.last_error.is_empty() {
        writeln!(out, "  last error: {}", job.last_error)?;
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "UPN",
        "MIS id",
        "date",
        "session",
        "code",
        "minutes late",
        "status",
        "reason",
    ]);
    for item in &job.items {
        rows.add_row(vec![
            item.upn.clone(),
            item.mis_id.clone(),
            item.date.clone(),
            session_name(item.session).to_owned(),
            item.code.clone(),
            item.minutes_late.to_string(),
            mark_status_name(item.status).to_owned(),
            shorten(&item.reason),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    writeln!(out, "{}", count(job.items.len(), "mark", "marks"))?;
    Ok(())
}
