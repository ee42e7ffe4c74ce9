//! Schools' MIS connectors: `rollcall connector list`, `run`, `runs` and `deletions`.

use std::io::Write;

use anyhow::bail;
use chrono::SecondsFormat;
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::convert::from_timestamp;
use rollcall_api::mis_adapter::v1::{
    Connector, ConnectorDeletion, ConnectorRun, ConnectorRunStatus, ConnectorRunTrigger,
    ListConnectorDeletionsRequest, ListConnectorRunsRequest, ListConnectorsRequest,
    RunConnectorRequest,
};
use rollcall_api::types::v1::Session;
use serde_json::{Value, json};

use crate::client::Clients;
use crate::text::{count, table};

#[derive(Debug, Subcommand)]
pub(crate) enum ConnectorCommand {
    /// List the schools' MIS connectors with their last run, next run and watermarks.
    List {
        /// Print a JSON array, one object per connector.
        #[arg(long)]
        json: bool,
    },
    /// Run one school's connector now and print the run. Exits with an error when the run
    /// fails.
    Run {
        /// The school (seven-digit LAESTAB).
        laestab: String,
        /// Ignore the watermarks and read every record from the broker.
        #[arg(long)]
        full: bool,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List one school's connector runs, newest first.
    Runs {
        /// The school (seven-digit LAESTAB).
        laestab: String,
        /// The maximum number of runs to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print a JSON array, one object per run.
        #[arg(long)]
        json: bool,
    },
    /// List the records the school's MIS deleted, newest first, for review.
    Deletions {
        /// The school (seven-digit LAESTAB).
        laestab: String,
        /// Print a JSON array, one object per deletion.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(
    clients: &Clients,
    command: ConnectorCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut adapter = clients.mis_adapter.clone();
    match command {
        ConnectorCommand::List { json } => {
            let connectors = adapter
                .list_connectors(ListConnectorsRequest {})
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner()
                .connectors;
            if json {
                let rows: Vec<Value> = connectors.iter().map(connector_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            print_connectors(&connectors, out)
        }
        ConnectorCommand::Run {
            laestab,
            full,
            json,
        } => {
            let run = adapter
                .run_connector(RunConnectorRequest {
                    laestab: laestab.clone(),
                    full,
                })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner()
                .run
                .unwrap_or_default();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&run_json(&run))?)?;
            } else {
                print_run(&run, out)?;
            }
            if run.status != ConnectorRunStatus::Succeeded as i32 {
                bail!(
                    "connector run {} of school {laestab} failed: {}",
                    run.id,
                    run.error
                );
            }
            Ok(())
        }
        ConnectorCommand::Runs {
            laestab,
            limit,
            json,
        } => {
            let runs = adapter
                .list_connector_runs(ListConnectorRunsRequest {
                    laestab,
                    page_size: i32::try_from(limit).unwrap_or(i32::MAX),
                    page_token: String::new(),
                })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner()
                .runs;
            if json {
                let rows: Vec<Value> = runs.iter().map(run_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            print_runs(&runs, out)
        }
        ConnectorCommand::Deletions { laestab, json } => {
            let mut deletions = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = adapter
                    .list_connector_deletions(ListConnectorDeletionsRequest {
                        laestab: laestab.clone(),
                        page_size: 1_000,
                        page_token,
                    })
                    .await
                    .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                    .into_inner();
                deletions.extend(page.deletions);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if json {
                let rows: Vec<Value> = deletions.iter().map(deletion_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            print_deletions(&deletions, out)
        }
    }
}

/// Returns a timestamp as RFC 3339 in UTC, or null when it is absent.
fn time_json(at: Option<&prost_types::Timestamp>) -> Value {
    at.and_then(from_timestamp).map_or(Value::Null, |at| {
        json!(at.to_rfc3339_opts(SecondsFormat::Secs, true))
    })
}

/// Returns a timestamp as "2026-11-02 08:40" in UTC, or an empty string.
fn time_text(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(from_timestamp)
        .map(|at| at.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn status_name(value: i32) -> &'static str {
    match ConnectorRunStatus::try_from(value).unwrap_or(ConnectorRunStatus::Unspecified) {
        ConnectorRunStatus::Running => "running",
        ConnectorRunStatus::Succeeded => "succeeded",
        ConnectorRunStatus::Failed => "failed",
        ConnectorRunStatus::Unspecified => "",
    }
}

fn trigger_name(value: i32) -> &'static str {
    match ConnectorRunTrigger::try_from(value).unwrap_or(ConnectorRunTrigger::Unspecified) {
        ConnectorRunTrigger::Scheduled => "scheduled",
        ConnectorRunTrigger::OnDemand => "on_demand",
        ConnectorRunTrigger::Unspecified => "",
    }
}

fn session_name(value: i32) -> &'static str {
    match Session::try_from(value).unwrap_or(Session::Unspecified) {
        Session::Am => "AM",
        Session::Pm => "PM",
        Session::Unspecified => "",
    }
}

fn run_json(run: &ConnectorRun) -> Value {
    let counts = |counts: Option<&rollcall_api::mis_adapter::v1::RowCounts>| {
        let counts = counts.cloned().unwrap_or_default();
        json!({
            "applied": counts.applied,
            "unchanged": counts.unchanged,
            "rejected": counts.rejected,
        })
    };
    json!({
        "id": run.id,
        "laestab": run.laestab,
        "trigger": trigger_name(run.trigger),
        "status": status_name(run.status),
        "full": run.full,
        "started_at": time_json(run.started_at.as_ref()),
        "finished_at": time_json(run.finished_at.as_ref()),
        "requests": run.requests,
        "retries": run.retries,
        "pages": run.pages,
        "pupils": counts(run.pupils.as_ref()),
        "marks": counts(run.marks.as_ref()),
        "marks_echoed": run.marks_echoed,
        "deletions": run.deletions,
        "error": run.error,
        "rejections": run.rejections.iter().map(|rejection| json!({
            "resource": rejection.resource,
            "record_id": rejection.record_id,
            "mis_id": rejection.mis_id,
            "reason_code": rejection.reason_code,
            "field": rejection.field,
            "value": rejection.value,
            "reason": rejection.reason,
        })).collect::<Vec<_>>(),
    })
}

fn connector_json(connector: &Connector) -> Value {
    json!({
        "laestab": connector.laestab,
        "base_url": connector.base_url,
        "school_id": connector.school_id,
        "poll_interval_seconds": connector.poll_interval_seconds,
        "page_size": connector.page_size,
        "requests_per_minute": connector.requests_per_minute,
        "write_back": connector.write_back,
        "running": connector.running,
        "next_run_at": time_json(connector.next_run_at.as_ref()),
        "students_watermark": time_json(connector.students_watermark.as_ref()),
        "marks_watermark": time_json(connector.marks_watermark.as_ref()),
        "deletions_watermark": time_json(connector.deletions_watermark.as_ref()),
        "deletions_to_review": connector.deletions_to_review,
        "last_run": connector.last_run.as_ref().map_or(Value::Null, run_json),
    })
}

fn deletion_json(deletion: &ConnectorDeletion) -> Value {
    json!({
        "laestab": deletion.laestab,
        "record_type": deletion.record_type,
        "record_id": deletion.record_id,
        "mis_id": deletion.mis_id,
        "upn": deletion.upn,
        "date": deletion.date,
        "session": session_name(deletion.session),
        "deleted_at": time_json(deletion.deleted_at.as_ref()),
        "restored_at": time_json(deletion.restored_at.as_ref()),
        "action": deletion.action,
        "seen_at": time_json(deletion.seen_at.as_ref()),
    })
}

fn print_connectors(connectors: &[Connector], out: &mut impl Write) -> anyhow::Result<()> {
    if connectors.is_empty() {
        writeln!(
            out,
            "No connectors: start rollcall serve with --connectors FILE to add them"
        )?;
        return Ok(());
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "school",
        "broker school",
        "every",
        "write-back",
        "last run",
        "status",
        "next run (UTC)",
        "deletions to review",
    ]);
    for connector in connectors {
        let every = if connector.poll_interval_seconds == 0 {
            "on demand".to_owned()
        } else {
            format!("{} s", connector.poll_interval_seconds)
        };
        let last = connector.last_run.as_ref();
        let status = if connector.running {
            "running"
        } else {
            last.map_or("", |run| status_name(run.status))
        };
        rows.add_row(vec![
            connector.laestab.clone(),
            connector.school_id.clone(),
            every,
            if connector.write_back { "on" } else { "off" }.to_owned(),
            last.map(|run| time_text(run.started_at.as_ref()))
                .unwrap_or_else(|| "never".to_owned()),
            status.to_owned(),
            time_text(connector.next_run_at.as_ref()),
            connector.deletions_to_review.to_string(),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    Ok(())
}

fn print_run(run: &ConnectorRun, out: &mut impl Write) -> anyhow::Result<()> {
    let pupils = run.pupils.unwrap_or_default();
    let marks = run.marks.unwrap_or_default();
    writeln!(
        out,
        "Run {} of school {} {}{}",
        run.id,
        run.laestab,
        status_name(run.status),
        if run.full { " (full read)" } else { "" }
    )?;
    writeln!(
        out,
        "  {}, {}, {}",
        count(run.requests, "request", "requests"),
        count(run.retries, "retry", "retries"),
        count(run.pages, "page", "pages")
    )?;
    writeln!(
        out,
        "  pupils: {} applied, {} unchanged, {} rejected",
        pupils.applied, pupils.unchanged, pupils.rejected
    )?;
    writeln!(
        out,
        "  marks: {} applied, {} unchanged, {} rejected, {} written back by rollcall",
        marks.applied, marks.unchanged, marks.rejected, run.marks_echoed
    )?;
    writeln!(out, "  {}", count(run.deletions, "deletion", "deletions"))?;
    if !run.error.is_empty() {
        writeln!(out, "  error: {}", run.error)?;
    }
    if !run.rejections.is_empty() {
        writeln!(out, "Rejected:")?;
        for rejection in &run.rejections {
            writeln!(
                out,
                "  {} {} (MIS id {}): {} {} {:?}: {}",
                rejection.resource,
                rejection.record_id,
                rejection.mis_id,
                rejection.reason_code,
                rejection.field,
                rejection.value,
                rejection.reason
            )?;
        }
    }
    Ok(())
}

fn print_runs(runs: &[ConnectorRun], out: &mut impl Write) -> anyhow::Result<()> {
    if runs.is_empty() {
        writeln!(out, "No runs")?;
        return Ok(());
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "run",
        "trigger",
        "started (UTC)",
        "status",
        "pages",
        "pupils applied",
        "marks applied",
        "rejected",
        "deletions",
        "error",
    ]);
    for run in runs {
        let pupils = run.pupils.unwrap_or_default();
        let marks = run.marks.unwrap_or_default();
        rows.add_row(vec![
            run.id.clone(),
            trigger_name(run.trigger).to_owned(),
            time_text(run.started_at.as_ref()),
            status_name(run.status).to_owned(),
            run.pages.to_string(),
            pupils.applied.to_string(),
            marks.applied.to_string(),
            (pupils.rejected + marks.rejected).to_string(),
            run.deletions.to_string(),
            run.error.chars().take(60).collect(),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    writeln!(out, "{}", count(runs.len(), "run", "runs"))?;
    Ok(())
}

fn print_deletions(deletions: &[ConnectorDeletion], out: &mut impl Write) -> anyhow::Result<()> {
    if deletions.is_empty() {
        writeln!(out, "No deletions")?;
        return Ok(());
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "deleted (UTC)",
        "type",
        "record",
        "MIS id",
        "UPN",
        "session",
        "action",
        "restored (UTC)",
    ]);
    for deletion in deletions {
        let session = if deletion.date.is_empty() {
            String::new()
        } else {
            format!("{} {}", deletion.date, session_name(deletion.session))
        };
        rows.add_row(vec![
            time_text(deletion.deleted_at.as_ref()),
            deletion.record_type.clone(),
            deletion.record_id.clone(),
            deletion.mis_id.clone(),
            deletion.upn.clone(),
            session,
            deletion.action.clone(),
            time_text(deletion.restored_at.as_ref()),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    writeln!(out, "{}", count(deletions.len(), "deletion", "deletions"))?;
    Ok(())
}
