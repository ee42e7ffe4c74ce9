//! `rollcall serve` in a child process on a free loopback port, and its memory from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tonic::transport::{Channel, Endpoint};

/// Maximum time `rollcall serve` may take to start, including its migrations.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The storage a server keeps its data in.
#[derive(Debug, Clone)]
pub(crate) enum Storage {
    /// A PostgreSQL database, by URL.
    Postgres(String),
    /// A folder of SQLite databases.
    Sqlite(PathBuf),
}

impl Storage {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }
}

/// A running `rollcall serve`, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    log: PathBuf,
}

impl Server {
    /// Starts `rollcall serve --dev` with `options` on a free port of 127.0.0.1 and waits until
    /// it serves.
    pub(crate) fn start(
        rollcall: &Path,
        storage: &Storage,
        work: &Path,
        options: &[String],
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let log = work.join(format!("serve-{port}.log"));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let mut command = Command::new(rollcall);
        command.args(["serve", "--dev", "--listen", &listen]);
        command.args(options);
        match storage {
            Storage::Postgres(url) => command.args(["--database-url", url]),
            Storage::Sqlite(dir) => command.arg("--data-dir").arg(dir),
        };
        let child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| {
                format!(
                    "failed to run {}; build it with `cargo build --release` or pass --rollcall",
                    rollcall.display()
                )
            })?;
        let mut server = Self {
            child,
            url: format!("http://{listen}"),
            log,
        };
        let started = Instant::now();
        loop {
            if server.log_text().contains("rollcall is serving") {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "rollcall serve exited with {status} before serving:\n{}",
                    server.log_text()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "rollcall serve did not start within {} s:\n{}",
                    START_TIMEOUT.as_secs(),
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Connects a gRPC channel to the server.
    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await?)
    }

    /// Reads the server's resident memory now and at its peak.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid())
    }

    /// Stops the server with SIGTERM, and kills it when it has not exited within 20 seconds.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("failed to run kill")?;
        if status.success() {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if self.child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(error) = self.terminate() {
            eprintln!("failed to stop rollcall serve {}: {error:#}", self.pid());
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("failed to bind a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Resident memory of a process, from `/proc/<pid>/status`, in kibibytes.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Memory {
    /// VmRSS: resident now.
    pub(crate) rss_kib: u64,
    /// VmHWM: the peak resident size since the process started.
    pub(crate) peak_kib: u64,
}

impl Memory {
    pub(crate) fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .with_context(|| format!("{path} has no {name} line"))?;
            let value = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim();
            value
                .parse()
                .with_context(|| format!("invalid {name} value {value:?} in {path}"))
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }
}
