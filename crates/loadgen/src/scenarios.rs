//! The scenarios: ingest, morning burst, statistics with incremental updates, and resident
//! memory. Each starts its own `rollcall serve` on fresh storage and measures its anchor in the
//! same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::NaiveDate;
use rollcall_api::policy::v1::{
    CheckAggregatesRequest, GetAttendanceStatisticsRequest, StatisticsGroupBy, StatisticsRange,
};
use rollcall_domain::Policy;
use rollcall_testkit::PostgresServer;
use tokio::sync::Barrier;

use crate::anchors::{self, SchoolTotals};
use crate::client::{self, Sent};
use crate::data::{self, School};
use crate::null;
use crate::report::{Goal, Row, percentile_ms};
use crate::serve::{Memory, Server, Storage};

/// Maximum wait for the policy service to catch up with the change feed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3600);

/// Settings and state every scenario shares: the server binary, the number of runs and a work folder.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) rollcall: PathBuf,
    pub(crate) runs: usize,
    pub(crate) work: tempfile::TempDir,
    postgres: Option<PostgresServer>,
    storages: usize,
}

impl Context {
    pub(crate) fn new(rollcall: PathBuf, runs: usize) -> anyhow::Result<Self> {
        Ok(Self {
            rollcall,
            runs: runs.max(1),
            work: tempfile::Builder::new()
                .prefix("rollcall-loadgen-")
                .tempdir()
                .context("failed to create a work folder")?,
            postgres: None,
            storages: 0,
        })
    }

    /// Returns fresh, empty storage of the kind named: a new database on the throwaway
    /// PostgreSQL server (started on first use) or a new SQLite folder.
    async fn fresh_storage(&mut self, kind: StorageKind) -> anyhow::Result<Storage> {
        self.storages += 1;
        match kind {
            StorageKind::Sqlite => Ok(Storage::Sqlite(
                self.work.path().join(format!("sqlite-{}", self.storages)),
            )),
            StorageKind::Postgres => {
                if self.postgres.is_none() {
                    progress("starting a throwaway PostgreSQL server");
                    self.postgres = Some(rollcall_testkit::postgres().await?);
                }
                let server = self
                    .postgres
                    .as_ref()
                    .context("PostgreSQL server missing")?;
                Ok(Storage::Postgres(server.create_database().await?))
            }
        }
    }

    fn start(&self, storage: &Storage) -> anyhow::Result<Server> {
        self.start_with(storage, &[])
    }

    /// Starts a server with extra `rollcall serve` options.
    fn start_with(&self, storage: &Storage, options: &[String]) -> anyhow::Result<Server> {
        Server::start(&self.rollcall, storage, self.work.path(), options)
    }

    /// Removes a SQLite folder once its run is measured, to keep the disk free.
    fn discard(storage: &Storage) {
        if let Storage::Sqlite(dir) = storage {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The storage a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StorageKind {
    Postgres,
    Sqlite,
}

pub(crate) fn progress(message: &str) {
    eprintln!("[{}] {message}", chrono::Utc::now().format("%H:%M:%S"));
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Returns every mark of every school, as ranges for [`client::batches`].
fn all_marks(schools: &[School]) -> Vec<(usize, std::ops::Range<usize>)> {
    schools
        .iter()
        .enumerate()
        .map(|(index, school)| (index, 0..school.marks.len()))
        .collect()
}

/// Settings of the ingest scenario.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct IngestArgs {
    /// Storage of the server.
    #[arg(long, value_enum, default_value = "postgres")]
    pub(crate) storage: StorageKind,
    /// Marks to send, about; a whole number of pupils' years of 380 sessions is sent.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) marks: usize,
    /// Marks in each SyncMarks request, from 1 to 10,000.
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch: usize,
    /// SyncMarks requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
}

/// Sends marks through SyncMarks into a fresh server, then copies the same rows with the
/// database's own bulk load, in each run.
pub(crate) async fn ingest(context: &mut Context, args: IngestArgs) -> anyhow::Result<Vec<Row>> {
    check_batch(args.batch)?;
    let pupils = args.marks.div_ceil(380).max(1);
    progress(&format!("generating {pupils} pupils' marks"));
    let schools = Arc::new(data::generate(pupils, None)?);
    let marks = data::mark_count(&schools);
    let (mut rates, mut anchors, mut p50, mut p99) = (Vec::new(), Vec::new(), vec![], vec![]);
    for run in 0..context.runs {
        let storage = context.fresh_storage(args.storage).await?;
        let server = context.start(&storage)?;
        let channel = server.channel().await?;
        client::sync_pupils(&channel, &schools, &format!("ingest-{run}")).await?;
        progress(&format!(
            "run {}: sending {marks} marks to rollcall on {}",
            run + 1,
            storage.name()
        ));
        let batches = client::batches(&all_marks(&schools), args.batch);
        let sent = client::send_marks(
            &channel,
            Arc::clone(&schools),
            batches,
            args.concurrency,
            &format!("ingest-{run}-marks"),
        )
        .await?;
        sent.check_all_applied()?;
        drop(channel);
        server.stop()?;

        let (rows, elapsed) = match &storage {
            Storage::Postgres(url) => anchors::postgres_copy(url).await?,
            Storage::Sqlite(dir) => anchors::sqlite_insert(dir, context.work.path()).await?,
        };
        if usize::try_from(rows)? != marks {
            bail!("the anchor loaded {rows} rows, but rollcall stored {marks} marks");
        }
        let anchor_rate = rows as f64 / elapsed.as_secs_f64();
        progress(&format!(
            "run {}: rollcall {:.0} marks/s, anchor {anchor_rate:.0} marks/s",
            run + 1,
            sent.marks_per_second()
        ));
        rates.push(sent.marks_per_second());
        anchors.push(anchor_rate);
        p50.push(percentile_ms(&sent.latencies, 0.5));
        p99.push(percentile_ms(&sent.latencies, 0.99));
        Context::discard(&storage);
    }
    let scenario = format!("ingest ({})", args.storage_name());
    let (anchor, anchor_note) = match args.storage {
        StorageKind::Postgres => (
            "COPY",
            "COPY FROM STDIN of the rows rollcall stored in its marks table, into a table LIKE it \
             INCLUDING ALL (primary key, two indexes, no foreign keys)",
        ),
        StorageKind::Sqlite => (
            "SQLite insert",
            "one transaction, one prepared INSERT per row of rollcall's marks table, into a new \
             database with the same table and indexes, WAL and synchronous=NORMAL",
        ),
    };
    let note = format!(
        "{marks} marks of {pupils} pupils in {} schools, SyncMarks batches of {}, {} in flight; \
         anchor: {anchor_note}",
        schools.len(),
        args.batch,
        args.concurrency
    );
    Ok(vec![
        Row::new(
            &scenario,
            "marks/s",
            rates,
            Some((anchor, anchors)),
            Some(Goal::AtLeast(0.5)),
            note,
        ),
        Row::new(&scenario, "request p50 (ms)", p50, None, None, ""),
        Row::new(&scenario, "request p99 (ms)", p99, None, None, ""),
    ])
}

impl IngestArgs {
    fn storage_name(&self) -> &'static str {
        match self.storage {
            StorageKind::Postgres => "postgres",
            StorageKind::Sqlite => "sqlite",
        }
    }
}

fn check_batch(batch: usize) -> anyhow::Result<()> {
    if !(1..=10_000).contains(&batch) {
        bail!("invalid --batch {batch}: give 1 to 10,000 marks, the MIS sync API's limit");
    }
    Ok(())
}

/// Settings of the morning burst.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct BurstArgs {
    /// Schools submitting a register at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) schools: usize,
    /// Marks in each school's register.
    #[arg(long, default_value_t = 30)]
    pub(crate) register_size: usize,
    /// Bursts per run, each for the next session, after one untimed burst that opens the
    /// connections.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
}

/// Sends one register per school for each session, all schools at once, a burst per session
/// after the first (untimed) one. Returns the marks/s of each burst (all marks over the time
/// to the last response) and every request's latency.
async fn bursts(
    url: &str,
    schools: &Arc<Vec<School>>,
    registers: &[Vec<std::ops::Range<usize>>],
    key: &str,
) -> anyhow::Result<(Vec<f64>, Vec<Duration>)> {
    let mut clients = Vec::with_capacity(schools.len());
    for _ in 0..schools.len() {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect()
            .await?;
        clients.push(client::mis_client(channel));
    }
    let mut rates = Vec::new();
    let mut latencies = Vec::new();
    for (round, sessions) in registers.iter().enumerate() {
        let barrier = Arc::new(Barrier::new(schools.len()));
        let mut tasks = Vec::with_capacity(schools.len());
        for (index, mut client) in clients.iter().cloned().enumerate() {
            let school = &schools[index];
            let request = data::marks_request(
                school,
                &school.marks[sessions[index].clone()],
                format!("{key}-{round}"),
            );
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let sent_at = Instant::now();
                let rows = request.marks.len();
                let response = client.sync_marks(request).await?.into_inner();
                let counts = response.counts.unwrap_or_default();
                anyhow::Ok((sent_at, Instant::now(), rows, counts.rejected))
            }));
        }
        let mut first = None::<Instant>;
        let mut last = None::<Instant>;
        let mut marks = 0;
        for task in tasks {
            let (sent_at, done_at, rows, rejected) = task.await??;
            if rejected > 0 {
                bail!("the server rejected {rejected} marks of a burst");
            }
            first = Some(first.map_or(sent_at, |first| first.min(sent_at)));
            last = Some(last.map_or(done_at, |last| last.max(done_at)));
            marks += rows;
            if round > 0 {
                latencies.push(done_at - sent_at);
            }
        }
        if round > 0
            && let (Some(first), Some(last)) = (first, last)
        {
            rates.push(marks as f64 / (last - first).as_secs_f64());
        }
    }
    Ok((rates, latencies))
}

/// Runs the morning burst against rollcall on PostgreSQL and against the do-nothing server, with
/// a COPY of the stored marks as the throughput anchor, in each run.
pub(crate) async fn burst(context: &mut Context, args: BurstArgs) -> anyhow::Result<Vec<Row>> {
    let sessions = args.rounds + 1;
    progress(&format!(
        "generating {} schools of {} pupils",
        args.schools, args.register_size
    ));
    let schools = Arc::new(data::generate_small_schools(
        args.schools,
        args.register_size,
        sessions.div_ceil(2) + 1,
    )?);
    // Each school's marks are ordered by session, so each session's register is one range.
    let mut registers: Vec<Vec<std::ops::Range<usize>>> = vec![Vec::new(); sessions];
    for school in schools.iter() {
        let mut start = 0;
        for register in registers.iter_mut() {
            let Some(first) = school.marks.get(start) else {
                bail!("school {} has marks for too few sessions", school.laestab);
            };
            let end = school.marks[start..]
                .iter()
                .position(|mark| (mark.date, mark.afternoon) != (first.date, first.afternoon))
                .map_or(school.marks.len(), |offset| start + offset);
            register.push(start..end);
            start = end;
        }
    }

    let (mut rates, mut copy_rates, mut p50, mut p99) = (vec![], vec![], vec![], vec![]);
    let (mut null_rates, mut null_p50, mut null_p99) = (vec![], vec![], vec![]);
    for run in 0..context.runs {
        let storage = context.fresh_storage(StorageKind::Postgres).await?;
        // Every school sends its register at once. A trust of that size would let the server
        // admit one request per school, because the default of 64 sheds the rest.
        let limit = vec![
            "--max-concurrent-requests".to_owned(),
            args.schools.max(64).to_string(),
        ];
        let server = context.start_with(&storage, &limit)?;
        let channel = server.channel().await?;
        client::sync_pupils(&channel, &schools, &format!("burst-{run}")).await?;
        drop(channel);
        progress(&format!("run {}: bursts against rollcall", run + 1));
        let (burst_rates, latencies) =
            bursts(&server.url, &schools, &registers, &format!("burst-{run}")).await?;
        server.stop()?;
        let (rows, elapsed) = match &storage {
            Storage::Postgres(url) => anchors::postgres_copy(url).await?,
            Storage::Sqlite(_) => bail!("the burst runs on PostgreSQL"),
        };
        copy_rates.push(rows as f64 / elapsed.as_secs_f64());
        rates.push(crate::report::Spread::of(burst_rates).median);
        p50.push(percentile_ms(&latencies, 0.5));
        p99.push(percentile_ms(&latencies, 0.99));

        progress(&format!(
            "run {}: bursts against the do-nothing server",
            run + 1
        ));
        let null_server = null::start().await?;
        let (burst_rates, latencies) = bursts(
            &null_server.url,
            &schools,
            &registers,
            &format!("null-{run}"),
        )
        .await?;
        drop(null_server);
        null_rates.push(crate::report::Spread::of(burst_rates).median);
        null_p50.push(percentile_ms(&latencies, 0.5));
        null_p99.push(percentile_ms(&latencies, 0.99));
        progress(&format!(
            "run {}: rollcall {:.0} marks/s p99 {:.1} ms; do-nothing p99 {:.1} ms",
            run + 1,
            rates[run],
            p99[run],
            null_p99[run]
        ));
    }
    let scenario = "morning burst (postgres)";
    let note = format!(
        "{} schools each send one SyncMarks of {} marks at the same moment, over one connection \
         per school; {} bursts per run after one untimed burst; marks/s is the median burst's \
         marks over the time from the first request to the last response; anchor for marks/s: \
         COPY of the same run's stored marks; the do-nothing server runs in the load \
         generator's process; rollcall serve runs with --max-concurrent-requests {}",
        args.schools,
        args.register_size,
        args.rounds,
        args.schools.max(64)
    );
    Ok(vec![
        Row::new(
            scenario,
            "marks/s",
            rates,
            Some(("COPY", copy_rates)),
            Some(Goal::AtLeast(0.5)),
            note,
        ),
        Row::new(
            scenario,
            "request p50 (ms)",
            p50,
            Some(("do-nothing server", null_p50)),
            None,
            "",
        ),
        Row::new(
            scenario,
            "request p99 (ms)",
            p99,
            Some(("do-nothing server", null_p99)),
            Some(Goal::AtMost(3.0)),
            "",
        ),
        Row::new(
            "morning burst (do-nothing server)",
            "marks/s",
            null_rates,
            None,
            None,
            "",
        ),
    ])
}

/// Settings of the statistics scenario.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct StatisticsArgs {
    /// Pupils in the trust, each with a year of 380 sessions.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) pupils: usize,
    /// Marks in each SyncMarks request while loading, from 1 to 10,000.
    #[arg(long, default_value_t = 5000)]
    pub(crate) batch: usize,
    /// SyncMarks requests in flight at once while loading.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// Days held back and sent one per run of the update measurement. Each run also times
    /// CheckAggregates for every school, which took about 7 minutes for 10,000 pupils on 2
    /// shared cores, so this defaults to one run.
    #[arg(long, default_value_t = 1)]
    pub(crate) update_runs: usize,
}

fn sum_totals(totals: &[SchoolTotals]) -> SchoolTotals {
    let mut sum = SchoolTotals {
        laestab: "all".to_owned(),
        ..SchoolTotals::default()
    };
    for school in totals {
        sum.pupils += school.pupils;
        sum.present += school.present;
        sum.approved_activity += school.approved_activity;
        sum.authorised += school.authorised;
        sum.unauthorised += school.unauthorised;
        sum.persistent += school.persistent;
    }
    sum
}

/// Loads a trust's year into rollcall on PostgreSQL, holding back the last `update_runs` days.
/// Then in each run, GetAttendanceStatistics over the trust is timed against the hand-written
/// aggregate. In each update run, one held-back day's marks are timed until the policy service
/// has applied them, against CheckAggregates (a recomputation from the registers) for every
/// school.
pub(crate) async fn statistics(
    context: &mut Context,
    args: StatisticsArgs,
) -> anyhow::Result<Vec<Row>> {
    check_batch(args.batch)?;
    progress(&format!("generating {} pupils' years", args.pupils));
    let schools = Arc::new(data::generate(args.pupils, None)?);
    let marks = data::mark_count(&schools);

    // The last school days are held back, one for each update run.
    let mut dates: Vec<NaiveDate> = schools
        .iter()
        .flat_map(|school| school.marks.iter().map(|mark| mark.date))
        .collect();
    dates.sort_unstable();
    dates.dedup();
    let held_back = args.update_runs.max(1);
    if dates.len() <= held_back {
        bail!("the data has too few days to hold back {held_back}");
    }
    let first_held = dates[dates.len() - held_back];
    let as_of = dates[dates.len() - held_back - 1];
    let ranges_before = |cut: NaiveDate, from: NaiveDate| -> Vec<(usize, std::ops::Range<usize>)> {
        schools
            .iter()
            .enumerate()
            .map(|(index, school)| {
                let start = school.marks.partition_point(|mark| mark.date < from);
                let end = school.marks.partition_point(|mark| mark.date < cut);
                (index, start..end)
            })
            .collect()
    };

    let storage = context.fresh_storage(StorageKind::Postgres).await?;
    let Storage::Postgres(database_url) = storage.clone() else {
        bail!("the statistics scenario runs on PostgreSQL");
    };
    let server = context.start(&storage)?;
    let channel = server.channel().await?;
    client::sync_pupils(&channel, &schools, "statistics").await?;
    let initial = ranges_before(first_held, NaiveDate::MIN);
    let initial_marks: usize = initial.iter().map(|(_, range)| range.len()).sum();
    progress(&format!(
        "loading {initial_marks} of {marks} marks for {} pupils in {} schools",
        args.pupils,
        schools.len()
    ));
    let load = client::send_marks(
        &channel,
        Arc::clone(&schools),
        client::batches(&initial, args.batch),
        args.concurrency,
        "statistics-load",
    )
    .await?;
    load.check_all_applied()?;
    let loaded_at = Instant::now();
    client::wait_for_policy(&channel, load.feed_cursor, CATCH_UP_TIMEOUT).await?;
    let catch_up = loaded_at.elapsed();
    progress(&format!(
        "loaded at {:.0} marks/s; the policy service caught up {:.1} s after the last response",
        load.marks_per_second(),
        catch_up.as_secs_f64()
    ));

    let mut policy = client::policy_client(channel.clone());
    let persistent_percent = Policy::trust_2021().persistent_absence_percent;
    let from = rollcall_domain::session::academic_year_start(as_of);
    let (mut statistics, mut aggregate) = (Vec::new(), Vec::new());
    let mut agree = true;
    let mut last_totals = SchoolTotals::default();
    for run in 0..context.runs {
        let started = Instant::now();
        let response = policy
            .get_attendance_statistics(GetAttendanceStatisticsRequest {
                as_of: as_of.to_string(),
                range: StatisticsRange::YearToDate.into(),
                group_by: StatisticsGroupBy::School.into(),
                ..GetAttendanceStatisticsRequest::default()
            })
            .await
            .context("GetAttendanceStatistics failed")?
            .into_inner();
        let elapsed = started.elapsed();
        let (totals, anchor_elapsed) =
            anchors::postgres_aggregate(&database_url, from, as_of, persistent_percent).await?;
        let anchor = sum_totals(&totals);
        let total = response.total.unwrap_or_default();
        let figures = total.figures.unwrap_or_default();
        let ours = SchoolTotals {
            laestab: "all".to_owned(),
            pupils: i64::from(total.pupils),
            present: i64::from(figures.present_sessions),
            approved_activity: i64::from(figures.approved_activity_sessions),
            authorised: i64::from(figures.authorised_absence_sessions),
            unauthorised: i64::from(figures.unauthorised_absence_sessions),
            persistent: i64::from(total.persistent_absentees),
        };
        last_totals = anchor.clone();
        if ours != anchor {
            agree = false;
            progress(&format!(
                "the statistics and the aggregate differ: {ours:?} against {anchor:?}"
            ));
        }
        progress(&format!(
            "run {}: statistics {:.2} s, aggregate {:.2} s",
            run + 1,
            elapsed.as_secs_f64(),
            anchor_elapsed.as_secs_f64()
        ));
        statistics.push(elapsed.as_secs_f64());
        aggregate.push(anchor_elapsed.as_secs_f64());
    }

    let (mut incremental, mut lags, mut full) = (Vec::new(), Vec::new(), Vec::new());
    let mut mismatches = 0;
    for run in 0..held_back {
        let day = dates[dates.len() - held_back + run];
        let next = day.succ_opt().context("date out of range")?;
        let ranges = ranges_before(next, day);
        let started = Instant::now();
        let sent: Sent = client::send_marks(
            &channel,
            Arc::clone(&schools),
            client::batches(&ranges, 10_000),
            args.concurrency,
            &format!("statistics-day-{run}"),
        )
        .await?;
        sent.check_all_applied()?;
        let responded = Instant::now();
        let caught_up =
            client::wait_for_policy(&channel, sent.feed_cursor, CATCH_UP_TIMEOUT).await?;
        incremental.push((caught_up - started).as_secs_f64());
        lags.push((caught_up - responded).as_secs_f64());

        let started = Instant::now();
        for school in schools.iter() {
            let response = policy
                .check_aggregates(CheckAggregatesRequest {
                    laestab: school.laestab.clone(),
                    as_of: day.to_string(),
                })
                .await
                .context("CheckAggregates failed")?
                .into_inner();
            mismatches += response.mismatches.len();
        }
        full.push(started.elapsed().as_secs_f64());
        progress(&format!(
            "run {}: {} marks of {day} applied in {:.2} s ({:.2} s after the last response); \
             CheckAggregates for every school {:.2} s, {mismatches} mismatches so far",
            run + 1,
            sent.marks,
            incremental[run],
            lags[run],
            full[run]
        ));
    }
    let memory: Memory = server.memory()?;
    drop(channel);
    server.stop()?;

    let scenario = format!("statistics ({} pupils, postgres)", args.pupils);
    let statistics_note = format!(
        "GetAttendanceStatistics for the whole trust, year to {as_of}, grouped by school, over \
         {initial_marks} marks; anchor: one SQL aggregate over the registers' effective marks \
         by school and pupil; the two {} on the totals ({} pupils, present {}, authorised {}, \
         unauthorised {}, persistently absent {}); loading took {:.0} s ({:.0} marks/s) and \
         the policy service caught up {:.0} s after the last response",
        if agree { "agree" } else { "disagree" },
        last_totals.pupils,
        last_totals.present,
        last_totals.authorised,
        last_totals.unauthorised,
        last_totals.persistent,
        load.elapsed.as_secs_f64(),
        load.marks_per_second(),
        catch_up.as_secs_f64()
    );
    let incremental_note = format!(
        "one school day's marks (about {} per day) sent with SyncMarks until GetSyncState shows \
         the policy service has applied them; anchor: CheckAggregates for each of the {} \
         schools, which recomputes every pupil's totals from the registers; {mismatches} \
         mismatches between kept and recomputed totals",
        args.pupils * 2,
        schools.len()
    );
    Ok(vec![
        Row::new(
            &scenario,
            "statistics (s)",
            statistics,
            Some(("SQL aggregate", aggregate)),
            Some(Goal::AtMost(1.2)),
            statistics_note,
        ),
        Row::new(
            &scenario,
            "one day's update (s)",
            incremental,
            Some(("CheckAggregates", full.clone())),
            Some(Goal::AtMost(0.01)),
            incremental_note,
        ),
        Row::new(
            &scenario,
            "policy lag after last response (s)",
            lags,
            Some(("CheckAggregates", full)),
            Some(Goal::AtMost(0.01)),
            "",
        ),
        Row::new(
            &scenario,
            "resident memory at the end (MiB)",
            vec![mib(memory.rss_kib)],
            None,
            None,
            format!("peak (VmHWM) {:.0} MiB", mib(memory.peak_kib)),
        ),
    ])
}

/// Settings of the memory scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MemoryArgs {
    /// Pupil counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub(crate) pupils: Vec<usize>,
    /// School days of marks for each pupil.
    #[arg(long, default_value_t = 5)]
    pub(crate) days: usize,
}

/// Resident memory of `rollcall serve` on PostgreSQL after loading each pupil count, a few
/// days of marks and one trust-wide statistics request, against the same server with no data.
pub(crate) async fn memory(context: &mut Context, args: MemoryArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..context.runs {
        let storage = context.fresh_storage(StorageKind::Postgres).await?;
        let server = context.start(&storage)?;
        let channel = server.channel().await?;
        // One request, so the idle figure includes a served call.
        client::policy_client(channel.clone())
            .get_sync_state(rollcall_api::policy::v1::GetSyncStateRequest {})
            .await?;
        idle.push(mib(server.memory()?.peak_kib));
        drop(channel);
        server.stop()?;
    }
    let idle_median = crate::report::Spread::of(idle.clone()).median;
    rows.push(Row::new(
        "resident memory (postgres)",
        "peak MiB, no pupils",
        idle,
        None,
        None,
        "VmHWM of rollcall serve after start and one request",
    ));
    for &pupils in &args.pupils {
        progress(&format!(
            "generating {pupils} pupils for the memory scenario"
        ));
        let schools = Arc::new(data::generate(pupils, Some(args.days))?);
        let marks = data::mark_count(&schools);
        let (mut peaks, mut rss, mut per_pupil) = (vec![], vec![], vec![]);
        for run in 0..context.runs {
            let storage = context.fresh_storage(StorageKind::Postgres).await?;
            let server = context.start(&storage)?;
            let channel = server.channel().await?;
            client::sync_pupils(&channel, &schools, &format!("memory-{run}")).await?;
            let sent = client::send_marks(
                &channel,
                Arc::clone(&schools),
                client::batches(&all_marks(&schools), 5000),
                4,
                &format!("memory-{run}"),
            )
            .await?;
            sent.check_all_applied()?;
            client::wait_for_policy(&channel, sent.feed_cursor, CATCH_UP_TIMEOUT).await?;
            client::policy_client(channel.clone())
                .get_attendance_statistics(GetAttendanceStatisticsRequest {
                    group_by: StatisticsGroupBy::School.into(),
                    ..GetAttendanceStatisticsRequest::default()
                })
                .await
                .context("GetAttendanceStatistics failed")?;
            let memory = server.memory()?;
            progress(&format!(
                "{pupils} pupils: peak {:.0} MiB, resident {:.0} MiB",
                mib(memory.peak_kib),
                mib(memory.rss_kib)
            ));
            peaks.push(mib(memory.peak_kib));
            rss.push(mib(memory.rss_kib));
            per_pupil.push((mib(memory.peak_kib) - idle_median) * 1024.0 / pupils as f64);
            drop(channel);
            server.stop()?;
        }
        let scenario = format!("resident memory ({pupils} pupils, postgres)");
        let goal = (pupils == 10_000).then_some(Goal::AtMost(150.0));
        rows.push(Row::new(
            &scenario,
            "peak MiB",
            peaks,
            None,
            goal,
            format!(
                "{pupils} pupils in {} schools with {} days of marks ({marks} marks), loaded \
                 with SyncMarks, then one GetAttendanceStatistics for the trust; VmHWM",
                schools.len(),
                args.days
            ),
        ));
        rows.push(Row::new(
            &scenario,
            "resident MiB at the end",
            rss,
            None,
            None,
            "VmRSS",
        ));
        rows.push(Row::new(
            &scenario,
            "peak KiB per pupil above no pupils",
            per_pupil,
            None,
            None,
            "",
        ));
    }
    Ok(rows)
}
