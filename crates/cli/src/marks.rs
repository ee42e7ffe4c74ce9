//! `rollcall marks`: one session's history and amendments.

use std::io::Write;

use anyhow::bail;
use chrono::SecondsFormat;
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::convert::{from_timestamp, source_from_proto};
use rollcall_api::registers::v1::{AmendMarkRequest, ListMarkVersionsRequest, Mark};
use rollcall_api::types::v1::{MarkSource as PbMarkSource, Session as PbSession};
use rollcall_domain::session::parse_date;
use rollcall_domain::{MarkSource, Session};
use serde_json::json;

use crate::client::Clients;
use crate::commands::SYNC_TIMEOUT;

#[derive(Debug, Subcommand)]
pub(crate) enum MarksCommand {
    /// List every version of one session's mark, oldest first.
    History {
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// The session date (YYYY-MM-DD).
        #[arg(long)]
        date: String,
        /// AM or PM.
        #[arg(long)]
        session: Session,
        /// The school (seven-digit LAESTAB); the default is every school.
        #[arg(long)]
        school: Option<String>,
        /// Print a JSON array, one object per version.
        #[arg(long)]
        json: bool,
    },
    /// Amend one session's mark. Every earlier version is kept.
    Amend {
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// The session date (YYYY-MM-DD).
        #[arg(long)]
        date: String,
        /// AM or PM.
        #[arg(long)]
        session: Session,
        /// The new attendance code.
        #[arg(long)]
        code: String,
        /// The reason for the change, kept with the new version.
        #[arg(long)]
        reason: String,
        /// The name of the person making the change.
        #[arg(long)]
        by: String,
        /// The position of the person making the change, for example "Attendance officer".
        #[arg(long)]
        position: String,
        /// Minutes late, for a late arrival.
        #[arg(long, default_value_t = 0)]
        minutes_late: i32,
        /// The school (seven-digit LAESTAB); the default is the pupil's school on that date.
        #[arg(long)]
        school: Option<String>,
        /// The id of the parent's absence report this amendment decides on.
        #[arg(long)]
        absence_report: Option<String>,
    },
}

pub(crate) async fn run(
    clients: &Clients,
    command: MarksCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        MarksCommand::History {
            upn,
            date,
            session,
            school,
            json,
        } => history(clients, &upn, &date, session, school, json, out).await,
        MarksCommand::Amend {
            upn,
            date,
            session,
            code,
            reason,
            by,
            position,
            minutes_late,
            school,
            absence_report,
        } => {
            for (flag, value) in [
                ("--reason", &reason),
                ("--by", &by),
                ("--position", &position),
            ] {
                if value.trim().is_empty() {
                    bail!(
                        "{flag} is empty: an amendment needs a reason and the name and position of the person making it"
                    );
                }
            }
            let request = AmendMarkRequest {
                request_id: String::new(),
                upn,
                laestab: school.unwrap_or_default(),
                date: checked_date(&date)?,
                session: PbSession::from(session) as i32,
                code,
                minutes_late,
                reason,
                recorded_by: by,
                recorded_by_position: position,
                source: PbMarkSource::Staff as i32,
                absence_report_id: absence_report.unwrap_or_default(),
            };
            amend(clients, request, out).await
        }
    }
}

fn checked_date(value: &str) -> anyhow::Result<String> {
    match parse_date(value) {
        Ok(date) => Ok(date.to_string()),
        Err(error) => bail!("invalid --date: {error}"),
    }
}

fn recorded_at(mark: &Mark) -> String {
    mark.recorded_at
        .as_ref()
        .and_then(from_timestamp)
        .map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn source(mark: &Mark) -> &'static str {
    source_from_proto(mark.source).map_or("", MarkSource::as_str)
}

async fn history(
    clients: &Clients,
    upn: &str,
    date: &str,
    session: Session,
    school: Option<String>,
    json_output: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let versions = clients
        .registers
        .clone()
        .list_mark_versions(ListMarkVersionsRequest {
            upn: upn.to_owned(),
            laestab: school.unwrap_or_default(),
            date: checked_date(date)?,
            session: PbSession::from(session) as i32,
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner()
        .versions;

    if json_output {
        let rows: Vec<serde_json::Value> = versions
            .iter()
            .map(|version| {
                let mark = version.mark.clone().unwrap_or_default();
                json!({
                    "sequence": mark.sequence,
                    "laestab": mark.laestab,
                    "upn": mark.upn,
                    "date": mark.date,
                    "session": session.as_str(),
                    "code": mark.code,
                    "minutes_late": mark.minutes_late,
                    "reason": mark.reason,
                    "recorded_at": recorded_at(&mark),
                    "recorded_by": mark.recorded_by,
                    "recorded_by_position": mark.recorded_by_position,
                    "source": source(&mark),
                    "effective": version.effective,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    if versions.is_empty() {
        writeln!(out, "No mark for pupil {upn} on {date} {session}.")?;
        return Ok(());
    }

    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header([
        "",
        "Code",
        "Recorded at",
        "By",
        "Position",
        "Source",
        "Reason",
    ]);
    for version in &versions {
        let mark = version.mark.clone().unwrap_or_default();
        table.add_row([
            if version.effective { "*" } else { "" }.to_owned(),
            mark.code.clone(),
            recorded_at(&mark),
            mark.recorded_by.clone(),
            mark.recorded_by_position.clone(),
            source(&mark).to_owned(),
            mark.reason.clone(),
        ]);
    }
    writeln!(out, "{}", crate::text::table(&table))?;
    writeln!(out, "* effective version")?;
    Ok(())
}

async fn amend(
    clients: &Clients,
    request: AmendMarkRequest,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let upn = request.upn.clone();
    let response = clients
        .registers
        .clone()
        .amend_mark(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    let mark = response.mark.unwrap_or_default();
    if response.unchanged {
        writeln!(
            out,
            "Pupil {upn} already has {} on {} {}; nothing changed",
            mark.code,
            mark.date,
            session_name(&mark)
        )?;
        return Ok(());
    }
    let previous = response
        .previous
        .map_or_else(|| "no mark".to_owned(), |previous| previous.code);
    writeln!(
        out,
        "Amended pupil {upn} on {} {} from {previous} to {} (version {})",
        mark.date,
        session_name(&mark),
        mark.code,
        mark.sequence
    )?;
    // Figures, triggers and cases follow the change, as after an import.
    clients.wait_for_sync(mark.sequence, SYNC_TIMEOUT).await
}

fn session_name(mark: &Mark) -> &'static str {
    rollcall_api::convert::session_from_proto(mark.session).map_or("", Session::as_str)
}
