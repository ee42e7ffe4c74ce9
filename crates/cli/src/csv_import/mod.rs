//! `rollcall import csv`: pupils and session marks from the CSV exports of a school's MIS,
//! read under a column profile and sent in batches over the MIS sync API.
//!
//! Every file is checked before anything is sent: a file in another encoding, of unknown
//! kind or without a column its profile needs is refused whole. The rows are then read as a
//! stream. A row that cannot be read is rejected with its line and reason, and the others go
//! to the server in batches. Each batch's idempotency key comes from the file's SHA-256, the
//! profile and the batch number, so importing the same file again stores nothing twice.

mod batches;
mod send;
mod summary;

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
use crate::retry;
use batches::BatchSettings;
use plan::{FilePlan, Kind, plan_file};
use profile::Profile;
use rollcall_csv::{plan, profile, rows};
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
    /// The school's name. Needed, with --phase, when the school is new to rollcall; for a
    /// school rollcall holds, it replaces the name.
    #[arg(long)]
    school_name: Option<String>,
    /// The school's phase, which selects its escalation ladder. Needed when the school is new
    /// to rollcall; for a school rollcall holds, it replaces the phase.
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
        let (rejected, total) = (self.rejected, self.total);
        if self.dry_run {
            write!(
                f,
                "{rejected} of {total} pupils and marks would be rejected; correct them in the \
                 MIS and export again before importing"
            )
        } else {
            write!(
                f,
                "{rejected} of {total} pupils and marks were rejected; correct them in the MIS, \
                 export again and import the file again (rows already applied stay unchanged)"
            )
        }
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

    let settings = BatchSettings::new(
        laestab.clone(),
        school_name,
        phase,
        args.by.clone(),
        args.dry_run,
        &profile.fingerprint,
    );
    let mut summary = send_with_retries(clients, &plans, &profile, &settings, &laestab).await?;
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

/// Sends every file, and sends them again from the start when the stream breaks for a reason
/// that may pass, such as a restart of the server or its database. Batches applied before
/// the break come back as replays of their idempotency keys, so nothing is stored twice.
async fn send_with_retries(
    clients: &Clients,
    plans: &[FilePlan],
    profile: &Profile,
    settings: &BatchSettings,
    laestab: &str,
) -> anyhow::Result<Summary> {
    let mut delays = retry::delays();
    let mut attempt = 1;
    loop {
        let mut summary = Summary::new(settings.dry_run, laestab, &profile.name, plans);
        let progress = progress_bar(plans.iter().map(|plan| plan.size).sum());
        let sent = send::send_all(
            clients,
            plans.to_vec(),
            profile.clone(),
            settings.clone(),
            &mut summary,
            &progress,
        )
        .await;
        progress.finish_and_clear();
        let error = match sent {
            Ok(()) => return Ok(summary),
            Err(error) if retry::is_transient_error(&error) => error,
            Err(error) => return Err(error),
        };
        let Some(delay) = delays.next() else {
            bail!(
                "{error:#}\nGave up after {attempt} attempts. Check that the rollcall server at \
                 {} is running and reaches its database, then run the same command again.",
                clients.mis_adapter_url
            );
        };
        attempt += 1;
        eprintln!(
            "warning: {error:#}\nRetrying in {:.1}s (attempt {attempt} of {}); batches already \
             stored come back as replays.",
            delay.as_secs_f64(),
            retry::MAX_ATTEMPTS
        );
        tokio::time::sleep(delay).await;
    }
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
/// create it. Returns the name and phase to send: those given on the command line, or empty
/// and unspecified.
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
    // The name and phase go with every pupils batch whenever they are given, not only for a
    // new school, so that running the same command again sends the same batches.
    let from_command_line = (
        args.school_name.clone().unwrap_or_default(),
        args.phase.as_deref().map_or(PbPhase::Unspecified, phase_of) as i32,
    );
    match found {
        Ok(_) => return Ok(from_command_line),
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
    if args.school_name.is_none() || args.phase.is_none() {
        bail!(
            "school {laestab} is not in rollcall yet: give --school-name and --phase (infant, \
             junior or secondary) to create it with its pupils"
        );
    }
    Ok(from_command_line)
}

fn phase_of(name: &str) -> PbPhase {
    match name {
        "infant" => PbPhase::Infant,
        "junior" => PbPhase::Junior,
        _ => PbPhase::Secondary,
    }
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
