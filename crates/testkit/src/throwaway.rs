//! A throwaway PostgreSQL server in a temporary directory, shared by all tests of a process.
//!
//! # Lifetime
//!
//! Tests in one binary run on many tokio runtimes, so the server is started with
//! `std::process` and kept in a process-wide static that outlives every runtime. Rust never
//! drops statics, so a `Drop` impl alone would leave the server running after the test
//! binary exits. Each server therefore gets a watchdog: a `sh` child that blocks reading a
//! pipe whose only write end this process holds. The kernel closes that end when the process
//! exits for any reason, including a panic or SIGKILL. The watchdog then reads end-of-file,
//! stops the server with `pg_ctl stop -m immediate` and removes the temporary directory.
//! A pipe is used rather than polling the parent's PID, because PIDs get reused.
//!
//! The watchdog runs in its own process group and ignores SIGHUP, SIGINT and SIGTERM, so
//! Ctrl-C in a terminal ends the tests but not the clean-up. Dropping a
//! [`ThrowawayServer`] closes the pipe early and waits for the same clean-up, which is what
//! happens when startup fails.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::binaries::{PgBinaries, find_pg_binaries, running_as_root};

/// Maximum startup attempts, each on a newly picked port. Another process can take a port
/// picked by binding port 0 before PostgreSQL binds it, but that race is rare.
const START_ATTEMPTS: u32 = 5;

/// Lines of the server log quoted in startup errors.
const LOG_TAIL_LINES: usize = 30;

/// Server settings for tests. Durability is switched off because the data is discarded, and
/// `max_connections` is raised because every test opens its own pool.
const SERVER_SETTINGS: &str = "-c listen_addresses=127.0.0.1 -c fsync=off \
     -c synchronous_commit=off -c full_page_writes=off -c max_connections=300";

/// Settings for a server that tests stop and kill. A commit is written to the operating
/// system before it is acknowledged, so it survives a kill of the server, though not a crash
/// of the machine, since nothing is flushed to disk.
const CRASH_SAFE_SETTINGS: &str = "-c listen_addresses=127.0.0.1 -c fsync=off \
     -c synchronous_commit=on -c full_page_writes=off -c max_connections=100";

/// Start attempts after a kill, while the killed server's processes still hold its shared
/// memory, and the pause between them.
const RESTART_ATTEMPTS: u32 = 100;
const RESTART_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// The shared server, or the message of the error that stopped it from starting. A failure
/// is kept so that every later test reports it at once instead of retrying the slow startup.
static SHARED: OnceLock<Result<ThrowawayServer, String>> = OnceLock::new();

/// Returns the maintenance URL of the process-wide throwaway server, starting it on first use.
///
/// This blocks for the whole startup, so async callers run it on a blocking thread.
pub(crate) fn shared_maintenance_url() -> anyhow::Result<String> {
    let server =
        SHARED.get_or_init(|| ThrowawayServer::start().map_err(|error| format!("{error:#}")));
    match server {
        Ok(server) => Ok(server.maintenance_url.clone()),
        Err(message) => Err(anyhow::anyhow!("{message}")),
    }
}

/// OS user that runs the PostgreSQL programs.
#[derive(Debug, Clone, Copy)]
enum ServerUser {
    /// The user running the tests.
    Current,
    /// The `postgres` OS user, reached through `runuser` because the tests run as root.
    Postgres,
}

impl ServerUser {
    /// Builds a command that runs `program` as this user, in `dir`, with no standard input.
    fn command(self, program: &Path, dir: &Path) -> Command {
        let mut command = match self {
            Self::Current => Command::new(program),
            Self::Postgres => {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(program);
                command
            }
        };
        // initdb and pg_ctl print errors when the working directory is unreadable, as the
        // test's directory can be for the `postgres` user.
        command.current_dir(dir).stdin(Stdio::null());
        command
    }
}

/// A running PostgreSQL server that owns its temporary directory.
#[derive(Debug)]
pub(crate) struct ThrowawayServer {
    pub(crate) maintenance_url: String,
    binaries: PgBinaries,
    user: ServerUser,
    root: PathBuf,
    data_dir: PathBuf,
    port: u16,
    settings: &'static str,
    /// Stops the server and removes its directory when dropped or when this process exits.
    _watchdog: Watchdog,
}

impl ThrowawayServer {
    fn start() -> anyhow::Result<Self> {
        Self::start_with(SERVER_SETTINGS)
    }

    /// Starts a server whose acknowledged commits survive [`Self::stop`] and
    /// [`Self::kill_postmaster`].
    pub(crate) fn start_crash_safe() -> anyhow::Result<Self> {
        Self::start_with(CRASH_SAFE_SETTINGS)
    }

    fn start_with(settings: &'static str) -> anyhow::Result<Self> {
        let started = Instant::now();
        let binaries = find_pg_binaries()?;
        let user = if running_as_root()? {
            ServerUser::Postgres
        } else {
            ServerUser::Current
        };

        let root = create_root_dir(user)?;
        let data_dir = root.join("data");
        let watchdog = Watchdog::spawn(&root, &data_dir, &binaries, user)?;

        run_initdb(&binaries, user, &root, &data_dir)?;
        let port = start_server(&binaries, user, &root, &data_dir, settings)?;

        tracing::info!(
            port,
            dir = %root.display(),
            elapsed_ms = started.elapsed().as_millis(),
            "started throwaway PostgreSQL server"
        );
        Ok(Self {
            maintenance_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            binaries,
            user,
            root,
            data_dir,
            port,
            settings,
            _watchdog: watchdog,
        })
    }

    /// Stops the server with `pg_ctl stop` in `mode` (`smart`, `fast` or `immediate`) and
    /// waits until it has stopped.
    pub(crate) fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let output = self
            .user
            .command(&self.binaries.pg_ctl, &self.root)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-m", mode, "stop"])
            .output()
            .with_context(|| format!("failed to run {}", self.binaries.pg_ctl.display()))?;
        if !output.status.success() {
            bail!(
                "{} stop -m {mode} failed with {}:\n{}",
                self.binaries.pg_ctl.display(),
                output.status,
                output_tail(&output)
            );
        }
        Ok(())
    }

    /// Sends SIGKILL to the postmaster, whose process id is the first line of
    /// `postmaster.pid`, and returns that id. The other server processes notice and exit.
    pub(crate) fn kill_postmaster(&self) -> anyhow::Result<u32> {
        let lock_file = self.data_dir.join("postmaster.pid");
        let contents = std::fs::read_to_string(&lock_file)
            .with_context(|| format!("failed to read {}", lock_file.display()))?;
        let pid: u32 = contents
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("{} has no process id", lock_file.display()))?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("failed to run kill")?;
        if !status.success() {
            bail!("kill -KILL {pid} failed with {status}");
        }
        Ok(pid)
    }

    /// Starts the stopped or killed server again on the same data directory and port. After
    /// a kill, start attempts fail until the old server processes have exited, so they are
    /// repeated up to [`RESTART_ATTEMPTS`] times, [`RESTART_PAUSE`] apart.
    pub(crate) fn restart(&self) -> anyhow::Result<()> {
        let log_path = self.root.join("postgres.log");
        let options = format!(
            "-p {} -k '{}' {}",
            self.port,
            self.root.display(),
            self.settings
        );
        let mut last_failure = String::new();
        for _ in 0..RESTART_ATTEMPTS {
            let log_offset = std::fs::metadata(&log_path).map_or(0, |metadata| metadata.len());
            let output = self
                .user
                .command(&self.binaries.pg_ctl, &self.root)
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&log_path)
                .args(["-w", "-o", &options, "start"])
                .output()
                .with_context(|| format!("failed to run {}", self.binaries.pg_ctl.display()))?;
            if output.status.success() {
                return Ok(());
            }
            last_failure = format!(
                "{}\nserver log:\n{}",
                output_tail(&output),
                last_lines(&read_log_from(&log_path, log_offset), LOG_TAIL_LINES)
            );
            std::thread::sleep(RESTART_PAUSE);
        }
        bail!(
            "PostgreSQL did not start again on port {} after {RESTART_ATTEMPTS} attempts:\n\
             {last_failure}",
            self.port
        )
    }
}

/// Creates the temporary directory that contains the data directory, the log and the Unix
/// socket. The watchdog removes it, possibly after this process has exited.
fn create_root_dir(user: ServerUser) -> anyhow::Result<PathBuf> {
    let root = tempfile::Builder::new()
        .prefix("rollcall-postgres-")
        .tempdir()
        .context("failed to create a temporary directory for PostgreSQL")?
        .keep();

    if root.to_string_lossy().contains('\'') {
        // pg_ctl passes the server options through `sh`, and they quote the socket directory
        // in single quotes.
        let _ = std::fs::remove_dir(&root);
        bail!(
            "temporary directory {} contains a single quote, which the pg_ctl options cannot \
             quote; set TMPDIR to a plain path such as /tmp",
            root.display()
        );
    }

    if let ServerUser::Postgres = user {
        let chown = Command::new("chown").arg("postgres:").arg(&root).output();
        let failure = match chown {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
            Err(error) => Some(format!("failed to run chown: {error}")),
        };
        if let Some(failure) = failure {
            let _ = std::fs::remove_dir(&root);
            bail!(
                "chown of {} to the `postgres` OS user failed: {failure}. The server runs as \
                 that user because the tests run as root, so create it (Debian: `apt-get \
                 install -y postgresql` does) or run the tests as a non-root user",
                root.display()
            );
        }
    }
    Ok(root)
}

fn run_initdb(
    binaries: &PgBinaries,
    user: ServerUser,
    root: &Path,
    data_dir: &Path,
) -> anyhow::Result<()> {
    let output = user
        .command(&binaries.initdb, root)
        .arg("-D")
        .arg(data_dir)
        .args([
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-locale",
            // Skips the fsync of the new files, which is safe because they are discarded.
            "--no-sync",
        ])
        .output()
        .with_context(|| format!("failed to run {}", binaries.initdb.display()))?;
    if !output.status.success() {
        let hint = match user {
            ServerUser::Postgres => {
                "\nThe tests run as root, so initdb ran as the `postgres` OS user, which must \
                 be able to reach that directory. Set TMPDIR to a directory it can reach, \
                 such as /tmp."
            }
            ServerUser::Current => "",
        };
        bail!(
            "{} failed with {} for {}:\n{}{hint}",
            binaries.initdb.display(),
            output.status,
            data_dir.display(),
            output_tail(&output)
        );
    }
    Ok(())
}

/// Starts the server on a free loopback port and returns that port.
fn start_server(
    binaries: &PgBinaries,
    user: ServerUser,
    root: &Path,
    data_dir: &Path,
    settings: &str,
) -> anyhow::Result<u16> {
    let log_path = root.join("postgres.log");

    for attempt in 1..=START_ATTEMPTS {
        let port = pick_free_port()?;
        let options = format!("-p {port} -k '{}' {settings}", root.display());
        let log_offset = std::fs::metadata(&log_path).map_or(0, |metadata| metadata.len());

        let output = user
            .command(&binaries.pg_ctl, root)
            .arg("-D")
            .arg(data_dir)
            .arg("-l")
            .arg(&log_path)
            .args(["-w", "-o", &options, "start"])
            .output()
            .with_context(|| format!("failed to run {}", binaries.pg_ctl.display()))?;
        if output.status.success() {
            return Ok(port);
        }

        let log = read_log_from(&log_path, log_offset);
        if log.contains("Address already in use") && attempt < START_ATTEMPTS {
            tracing::warn!(
                port,
                attempt,
                "PostgreSQL port was taken, retrying on another"
            );
            continue;
        }
        bail!(
            "{} start failed with {} on port {port}:\n{}\nserver log:\n{}",
            binaries.pg_ctl.display(),
            output.status,
            output_tail(&output),
            last_lines(&log, LOG_TAIL_LINES)
        );
    }
    bail!("PostgreSQL did not start after {START_ATTEMPTS} attempts")
}

/// Returns a loopback port that was free a moment ago, by binding port 0 and releasing it.
fn pick_free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("failed to bind a loopback port to find a free one")?;
    Ok(listener.local_addr()?.port())
}

/// Reads the log written since `offset`, or an explanation if it cannot be read.
fn read_log_from(path: &Path, offset: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|error| format!("(could not read {}: {error})", path.display()))
}

fn output_tail(output: &Output) -> String {
    let combined = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    last_lines(&combined, LOG_TAIL_LINES)
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(count);
    lines[start..].join("\n")
}

/// The `sh` process that stops the server and removes its directory once the pipe to this
/// process closes. See the module documentation for why it exists.
#[derive(Debug)]
struct Watchdog {
    stdin: Option<ChildStdin>,
    child: Child,
}

/// Ignores terminal signals, waits for end-of-file on standard input, runs the stop command
/// given as the remaining arguments, then removes the directory given as the first argument.
const WATCHDOG_SCRIPT: &str = r#"trap '' HUP INT TERM
cat >/dev/null
root=$1
shift
"$@" >/dev/null 2>&1
rm -rf "$root"
"#;

impl Watchdog {
    /// Spawns the watchdog as the current user. When the server runs as `postgres`, the
    /// stop command goes through `runuser`, and the removal runs as root.
    fn spawn(
        root: &Path,
        data_dir: &Path,
        binaries: &PgBinaries,
        user: ServerUser,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new("sh");
        command.arg("-c").arg(WATCHDOG_SCRIPT).arg("sh").arg(root);
        if let ServerUser::Postgres = user {
            command.args(["runuser", "-u", "postgres", "--"]);
        }
        command
            .arg(&binaries.pg_ctl)
            .arg("-D")
            .arg(data_dir)
            .args(["stop", "-m", "immediate"]);

        let spawned = command
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                let _ = std::fs::remove_dir_all(root);
                return Err(error).context("failed to start the `sh` watchdog for PostgreSQL");
            }
        };

        Ok(Self {
            stdin: child.stdin.take(),
            child,
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // On end-of-file the watchdog stops the server and removes its directory.
        drop(self.stdin.take());
        if let Err(error) = self.child.wait() {
            tracing::warn!(%error, "failed to wait for the PostgreSQL watchdog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
