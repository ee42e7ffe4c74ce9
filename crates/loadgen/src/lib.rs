//! Load generator for rollcall's gRPC services. Each scenario starts its own `rollcall serve`
//! on fresh storage on 127.0.0.1, drives the real APIs, and measures an anchor in the same run:
//! PostgreSQL's `COPY`, a raw SQLite bulk insert, a hand-written SQL aggregate, or a gRPC
//! server whose handlers do nothing. [`run`] returns the results as JSON or as a table.

mod anchors;
mod client;
mod data;
mod null;
mod report;
mod scenarios;
mod serve;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

pub use report::{Goal, Report, Row, Spread, markdown};
use scenarios::{BurstArgs, Context, IngestArgs, MemoryArgs, StatisticsArgs};

/// Drives rollcall's gRPC APIs over loopback and measures each result against an anchor in
/// the same run. Prints the results as JSON on standard output and progress on standard
/// error.
#[derive(Debug, Parser)]
#[command(name = "rollcall-loadgen", version)]
pub struct Cli {
    /// The rollcall binary to run as the server; a release build for real measurements.
    #[arg(long, env = "ROLLCALL_BIN", default_value = "target/release/rollcall")]
    rollcall: PathBuf,
    /// Times to repeat each measurement, each on fresh storage.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Marks through SyncMarks against the database's own bulk load of the same rows.
    Ingest(IngestArgs),
    /// Many schools submitting a register at once, against a do-nothing gRPC server.
    Burst(BurstArgs),
    /// Trust-wide statistics against a SQL aggregate, and one day's update against a full
    /// recomputation.
    Statistics(StatisticsArgs),
    /// Resident memory of the server by pupil count.
    Memory(MemoryArgs),
    /// Every scenario in turn: ingest on PostgreSQL and SQLite, burst, statistics, memory.
    All(AllArgs),
    /// Prints a JSON report written by an earlier run as a Markdown table.
    Table {
        /// The JSON file.
        file: PathBuf,
    },
}

/// Sizes for `all`.
#[derive(Debug, Clone, clap::Args)]
struct AllArgs {
    /// Marks for each ingest run.
    #[arg(long, default_value_t = 200_000)]
    marks: usize,
    /// Pupils for the statistics scenario.
    #[arg(long, default_value_t = 10_000)]
    statistics_pupils: usize,
    /// Pupil counts for the memory scenario, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    memory_pupils: Vec<usize>,
    /// School days of marks per pupil in the memory scenario.
    #[arg(long, default_value_t = 5)]
    memory_days: usize,
    /// Schools in the morning burst.
    #[arg(long, default_value_t = 200)]
    burst_schools: usize,
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cpus} CPUs, load average {} at the start", load.join(" "))
}

/// Runs the command line `args` (the first is the program name) and returns what it prints:
/// the JSON report, or for `table` the Markdown table.
///
/// # Errors
///
/// Fails on invalid arguments, when a server cannot be started, when a request fails or when
/// the server rejects any row the load generator sends.
pub async fn run(args: Vec<String>) -> anyhow::Result<String> {
    let command_line = args.join(" ");
    let cli = Cli::try_parse_from(args)?;
    if let Command::Table { file } = &cli.command {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("failed to read {}", file.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a rollcall-loadgen report", file.display()))?;
        return Ok(markdown(&report));
    }
    if !cli.rollcall.is_file() {
        anyhow::bail!(
            "rollcall binary {} not found; build it with `cargo build --release -p rollcall` \
             or name it with --rollcall",
            cli.rollcall.display()
        );
    }
    let started_at = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let machine = machine();
    let mut context = Context::new(cli.rollcall.clone(), cli.runs)?;
    let rows = match cli.command {
        Command::Ingest(args) => scenarios::ingest(&mut context, args).await?,
        Command::Burst(args) => scenarios::burst(&mut context, args).await?,
        Command::Statistics(args) => scenarios::statistics(&mut context, args).await?,
        Command::Memory(args) => scenarios::memory(&mut context, args).await?,
        Command::All(args) => all(&mut context, args).await?,
        Command::Table { .. } => Vec::new(),
    };
    let report = Report {
        command: command_line,
        started_at,
        machine,
        rows,
    };
    Ok(serde_json::to_string_pretty(&report)?)
}

async fn all(context: &mut Context, args: AllArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for storage in [
        scenarios::StorageKind::Postgres,
        scenarios::StorageKind::Sqlite,
    ] {
        let ingest = IngestArgs {
            storage,
            marks: args.marks,
            batch: 1000,
            concurrency: 4,
        };
        rows.extend(scenarios::ingest(context, ingest).await?);
    }
    let burst = BurstArgs {
        schools: args.burst_schools,
        register_size: 30,
        rounds: 5,
    };
    rows.extend(scenarios::burst(context, burst).await?);
    let statistics = StatisticsArgs {
        pupils: args.statistics_pupils,
        batch: 5000,
        concurrency: 4,
        update_runs: 1,
    };
    rows.extend(scenarios::statistics(context, statistics).await?);
    let memory = MemoryArgs {
        pupils: args.memory_pupils,
        days: args.memory_days,
    };
    rows.extend(scenarios::memory(context, memory).await?);
    Ok(rows)
}
