//! Logging. Logs carry ids (UPNs, LAESTABs, request ids), never names, dates of birth or
//! addresses.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global logger, writing to standard error. `RUST_LOG` overrides
/// `default_directive` (for example `info` or `rollcall=debug`).
pub fn init(format: LogFormat, default_directive: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log written to a file or a collector stays plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second call (as in tests that start several servers) keeps the first logger.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
