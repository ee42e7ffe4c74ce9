//! Retention: `rollcall retention apply` removes register sessions older than six years and
//! closed cases past the case retention period, or reports what it would remove.

use std::io::Write;

use clap::Subcommand;
use rollcall_api::cases::v1::ApplyCaseRetentionRequest;
use rollcall_api::registers::v1::ApplyRetentionRequest;
use serde_json::json;

use crate::client::Clients;

#[derive(Debug, Subcommand)]
pub(crate) enum RetentionCommand {
    /// Remove what is past its retention period, and print what was removed per school.
    Apply {
        /// Count the periods back from this day (YYYY-MM-DD) rather than today.
        #[arg(long)]
        as_of: Option<String>,
        /// Print what would be removed and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object with the keys registers and cases.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(
    clients: &Clients,
    command: RetentionCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let RetentionCommand::Apply {
        as_of,
        dry_run,
        json,
    } = command;
    let as_of = as_of.unwrap_or_default();
    let registers = clients
        .registers
        .clone()
        .apply_retention(ApplyRetentionRequest {
            as_of: as_of.clone(),
            dry_run,
        })
        .await
        .map_err(|status| anyhow::anyhow!("register retention failed: {}", status.message()))?
        .into_inner();
    let cases = clients
        .cases
        .clone()
        .apply_case_retention(ApplyCaseRetentionRequest { as_of, dry_run })
        .await
        .map_err(|status| anyhow::anyhow!("case retention failed: {}", status.message()))?
        .into_inner();

    if json {
        let value = json!({
            "dry_run": dry_run,
            "registers": {
                "cutoff": registers.cutoff,
                "removed": registers.removed.iter().map(|school| json!({
                    "laestab": school.laestab,
                    "mark_versions": school.mark_versions,
                    "latest_date": school.latest_date,
                })).collect::<Vec<_>>(),
            },
            "cases": {
                "cutoff": cases.cutoff,
                "retention_years": cases.retention_years,
                "removed": cases.removed.iter().map(|school| json!({
                    "laestab": school.laestab,
                    "cases": school.cases,
                    "messages": school.messages,
                })).collect::<Vec<_>>(),
            },
        });
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
        return Ok(());
    }

    let verb = if dry_run { "would remove" } else { "removed" };
    writeln!(
        out,
        "Registers: sessions before {} ({verb} per school):",
        registers.cutoff
    )?;
    if registers.removed.is_empty() {
        writeln!(out, "  nothing")?;
    }
    for school in &registers.removed {
        writeln!(
            out,
            "  {}: {} mark versions, the latest of {}",
            school.laestab, school.mark_versions, school.latest_date
        )?;
    }
    writeln!(
        out,
        "Cases: closed cases last changed before {} ({} years; {verb} per school):",
        cases.cutoff, cases.retention_years
    )?;
    if cases.removed.is_empty() {
        writeln!(out, "  nothing")?;
    }
    for school in &cases.removed {
        writeln!(
            out,
            "  {}: {} cases, {} messages and letters",
            school.laestab, school.cases, school.messages
        )?;
    }
    Ok(())
}
