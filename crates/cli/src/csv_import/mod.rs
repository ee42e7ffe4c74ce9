//! `rollcall import csv`: pupils and session marks from the CSV exports of a school's MIS,
//! read under a column profile and sent in batches over the MIS sync API.
//!
//! Every file is checked before anything is sent: a file in another encoding, of unknown
//! kind or without a column its profile needs is refused whole. The rows are then read as a
//! stream. A row that cannot be read is rejected with its line and reason, and the others go
//! to the server in batches. Each batch's idempotency key comes from the file's SHA-256, the
//! profile and the batch number, so importing the same file again stores nothing twice.

mod batches;
mod plan;
mod profile;
mod rows;
mod send;
mod summary;
mod values;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rollcall_api::registers::v1::GetSchoolRequest;
use rollcall_api::types::v1::Phase as PbPhase;
use tonic::Code;

use crate::client::Clients;
use crate::commands::SYNC_TIMEOUT;
use batches::BatchSettings;
use plan::{FilePlan, Kind, plan_file};
use profile::Profile;
use summary::Summary;

/// The exit status of an import that finished with rejected rows.
pub(crate) const EXIT_ROWS_REJECTED: u8 = 3;

#[derive(Debug, Args)]
pub(crate) struct CsvArgs {
    /// The CSV files. Pupils files are imported before marks files, whatever their order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The column profile: rollcall, sims, arbor or bromcom, or the path of a profile file
    /// (TOML) for an export of another shape.
    #[arg(long)]
    profile: String,
    /// The school: seven-digit LAESTAB, e.g. 9192001.
    #[arg(long)]
    school: String,
    /// Check every row and print what importing would change, storing nothing.
    #[arg(long)]
    dry_run: bool,
    /// The name of the person or system importing, kept as the source of every change.
    #[arg(long, default_value = "rollcall import csv")]
    by: String,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// The school's name. Needed only when the school is new to rollcall, with --phase.
    #[arg(long)]
    school_name: Option<String>,
    /// The school's phase, which selects its escalation ladder. Needed only when the school is
    /// new to rollcall.
    #[arg(long, value_parser = ["infant", "junior", "secondary"])]
    phase: Option<String>,
}

/// An import that finished with rows rejected. `main` exits with [`EXIT_ROWS_REJECTED`].
#[derive(Debug)]
pub(crate) struct RowsRejected {
    rejected: u64,
    total: u64,
    dry_run: bool,
}

impl std::fmt::Display for RowsRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would be rejected"
        } else {
            "were rejected"
        };
        write!(
            f,
            "{} of {} pupils and marks {verb}; correct them in the MIS, export again and \
             import the file again (rows already applied stay unchanged)",
            self.rejected, self.total
        )
    }
}

impl std::error::Error for RowsRejected {}

/// Runs `rollcall import csv`.
pub(crate) async fn run(
    clients: &Clients,
    args: CsvArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let laestab = rollcall_domain::school::parse_laestab(&args.school)
        .map_err(|error| anyhow::anyhow!("invalid --school: {error}"))?;
    let profile = Profile::load(&args.profile)?;
    let plans = plan_files(&args.files, &profile)?;
    let (school_name, phase) = check_school(clients, &laestab, &plans, &args).await?;

    let settings = BatchSettings {
        laestab: laestab.clone(),
        school_name,
        phase,
        source_name: args.by.clone(),
        dry_run: args.dry_run,
    };
    let mut summary = Summary::new(args.dry_run, &laestab, &profile.name, &plans);
    let progress = progress_bar(plans.iter().map(|plan| plan.size).sum());
    let sent = send::send_all(clients, plans, profile, settings, &mut summary, &progress).await;
    progress.finish_and_clear();
    sent?;
    summary.finish();

    if args.json {
        summary.write_json(out)?;
    } else {
        summary.write_text(out)?;
    }
    out.flush()?;
    if !args.dry_run && summary.feed_cursor > 0 {
        clients
            .wait_for_sync(summary.feed_cursor, SYNC_TIMEOUT)
            .await?;
    }
    if summary.rejected > 0 {
        return Err(RowsRejected {
            rejected: summary.rejected,
            total: summary.applied + summary.unchanged + summary.rejected,
            dry_run: args.dry_run,
        }
        .into());
    }
    Ok(())
}

/// Checks every file, refusing the import when any file fails, and orders pupils files
/// before marks files so that marks find their pupils.
fn plan_files(files: &[PathBuf], profile: &Profile) -> anyhow::Result<Vec<FilePlan>> {
    let mut plans = Vec::new();
    let mut refusals = Vec::new();
    for path in files {
        match plan_file(path, profile) {
            Ok(plan) => plans.push(plan),
            Err(error) => refusals.push(format!("{error:#}")),
        }
    }
    match refusals.len() {
        0 => {}
        1 if files.len() == 1 => bail!("{}", refusals[0]),
        count => bail!(
            "{count} of {} files were refused, so nothing was sent:\n{}",
            files.len(),
            refusals.join("\n")
        ),
    }
    plans.sort_by_key(|plan| plan.layout.kind());
    Ok(plans)
}

/// Checks that the school exists, or that a pupils file and --school-name and --phase can
/// create it. Returns the name and phase to send: empty unless the school is new.
async fn check_school(
    clients: &Clients,
    laestab: &str,
    plans: &[FilePlan],
    args: &CsvArgs,
) -> anyhow::Result<(String, i32)> {
    let found = clients
        .registers
        .clone()
        .get_school(GetSchoolRequest {
            laestab: laestab.to_owned(),
        })
        .await;
    match found {
        Ok(_) => return Ok((String::new(), PbPhase::Unspecified as i32)),
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => bail!("failed to look up school {laestab}: {}", status.message()),
    }
    let has_pupils = plans.iter().any(|plan| plan.layout.kind() == Kind::Pupils);
    if !has_pupils {
        bail!(
            "school {laestab} is not in rollcall yet, so its marks have no pupils to go to; \
             import its pupils first (a pupils export with --school-name and --phase)"
        );
    }
    let (Some(name), Some(phase)) = (&args.school_name, &args.phase) else {
        bail!(
            "school {laestab} is not in rollcall yet: give --school-name and --phase (infant, \
             junior or secondary) to create it with its pupils"
        );
    };
    let phase = match phase.as_str() {
        "infant" => PbPhase::Infant,
        "junior" => PbPhase::Junior,
        _ => PbPhase::Secondary,
    };
    Ok((name.clone(), phase as i32))
}

/// Returns a progress bar over the bytes of every file, drawn on standard error only when it
/// is a terminal, so that scripts and tests get clean output.
fn progress_bar(total_bytes: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg:30!} [{bar:30}] {binary_bytes}/{binary_total_bytes} {elapsed}",
    )
    .map(|style| style.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
