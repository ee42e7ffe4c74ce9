//! `rollcall demo`: the whole main job on a generated trust, on the embedded default storage.

use rollcall_api::client::Credentials;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use rollcall_api::policy::v1::GetSchoolAttendanceRequest;
use rollcall_api::referrals::v1::BuildReferralPackRequest;
use rollcall_synthetic::TrustSpec;

use crate::client::Clients;
use crate::commands::{import_ctf, list_cases, report_attendance, write_atomically};
use crate::server::{self, ServerConfig};

/// Options of `rollcall demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// A new or empty folder for the generated files, the databases, reports and packs.
    #[arg(long, default_value = "./rollcall-demo")]
    dir: PathBuf,
    /// Seed of the generator: the same seed gives the same trust.
    #[arg(long, default_value_t = 2025)]
    seed: u64,
}

fn prepare_folder(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read folder {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "folder {} is not empty: remove it, or choose a new folder with --dir",
                dir.display()
            );
        }
    }
    for sub in ["ctf", "reports", "packs", "data"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    Ok(())
}

/// Runs the demo and prints a summary.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir;
    prepare_folder(&dir)?;

    println!(
        "Generating a trust of three schools (seed {})...",
        args.seed
    );
    let trust = rollcall_synthetic::generate(&TrustSpec::demo(args.seed))
        .map_err(|error| anyhow::anyhow!("cannot generate the demo trust: {error}"))?;
    let mut files = Vec::new();
    for school in &trust.schools {
        let path = dir.join("ctf").join(format!("{}.xml", school.laestab));
        let bytes = rollcall_ctf::write(&school.file).map_err(|error| {
            anyhow::anyhow!("cannot write the CTF for {}: {error}", school.laestab)
        })?;
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        files.push(path);
    }

    let listen: SocketAddr = "127.0.0.1:0".parse()?;
    let config = ServerConfig::new(listen, dir.join("data"), None)?;
    let running = server::start(config).await?;
    let result = run_against(&running.url(), &dir, &trust, &files).await;
    running.stop().await?;
    result
}

async fn run_against(
    url: &str,
    dir: &Path,
    trust: &rollcall_synthetic::Trust,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let clients =
        Clients::connect(&crate::client::Addresses::single(url), Credentials::none()).await?;
    println!("Importing {} Common Transfer Files...", files.len());
    let mut stdout = std::io::stdout();
    import_ctf(&clients, files, "rollcall demo", false, &mut stdout).await?;

    let mut pupils = 0;
    let mut persistent = 0;
    let mut packs = Vec::new();
    let mut cases_total = 0;
    for school in &trust.schools {
        let laestab = &school.laestab;
        let mut json = Vec::new();
        report_attendance(&clients, laestab, None, true, &mut json).await?;
        write_atomically(
            &dir.join("reports")
                .join(format!("attendance-{laestab}.json")),
            &json,
        )?;
        let mut table = Vec::new();
        report_attendance(&clients, laestab, None, false, &mut table).await?;
        write_atomically(
            &dir.join("reports")
                .join(format!("attendance-{laestab}.txt")),
            &table,
        )?;
        let mut cases = Vec::new();
        list_cases(&clients, laestab, true, &mut cases).await?;
        let case_list: Vec<serde_json::Value> = serde_json::from_slice(&cases)?;
        cases_total += case_list.len();
        write_atomically(
            &dir.join("reports").join(format!("cases-{laestab}.json")),
            &cases,
        )?;

        let report = clients
            .policy
            .clone()
            .get_school_attendance(GetSchoolAttendanceRequest {
                laestab: laestab.clone(),
                as_of: String::new(),
            })
            .await?
            .into_inner();
        pupils += report.pupils.len();
        for pupil in &report.pupils {
            let figures = pupil.figures.unwrap_or_default();
            if figures.persistent_absence {
                persistent += 1;
            }
            let warning_met = pupil
                .thresholds
                .iter()
                .any(|threshold| threshold.rule_id == "penalty_notice_warning" && threshold.met);
            if !warning_met {
                continue;
            }
            let built = clients
                .referrals
                .clone()
                .build_referral_pack(BuildReferralPackRequest {
                    upn: pupil.upn.clone(),
                    laestab: laestab.clone(),
                    as_of: String::new(),
                })
                .await;
            match built {
                Ok(response) => {
                    let response = response.into_inner();
                    let path = dir.join("packs").join(&response.file_name);
                    write_atomically(&path, &response.pack)?;
                    packs.push(path);
                }
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
                Err(status) => bail!(
                    "building a pack for {} failed: {}",
                    pupil.upn,
                    status.message()
                ),
            }
        }
    }

    println!();
    println!("Summary");
    println!("  schools:                 {}", trust.schools.len());
    println!("  pupils:                  {pupils}");
    println!(
        "  persistently absent:     {persistent} ({:.1}%)",
        if pupils == 0 {
            0.0
        } else {
            persistent as f64 * 100.0 / pupils as f64
        }
    );
    println!("  open cases:              {cases_total}");
    println!("  referral packs written:  {}", packs.len());
    println!();
    println!("Where everything is");
    println!("  CTF files:       {}", dir.join("ctf").display());
    println!("  reports:         {}", dir.join("reports").display());
    println!("  referral packs:  {}", dir.join("packs").display());
    println!("  databases:       {}", dir.join("data").display());
    println!();
    println!(
        "The generated trust has no parents' contacts, so no letters were written; each case \
         records why. Import contacts with `rollcall contacts import` (docs/messaging.md)."
    );
    println!(
        "To explore further, serve these databases with `rollcall serve --dev --data-dir {}`",
        dir.join("data").display()
    );
    Ok(())
}
