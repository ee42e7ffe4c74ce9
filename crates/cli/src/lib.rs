//! The `rollcall` command: the embedded server (`rollcall serve`) and a command-line client of
//! a running server for imports, reports, cases and referral packs.

mod audit;
mod calendar;
mod casework;
mod client;
mod commands;
mod connector;
mod contacts;
mod csv_import;
mod delivery;
mod demo;
mod marks;
mod messaging;
mod policy;
mod pupil;
mod referrals;
mod report_output;
mod reports;
mod retention;
mod retry;
pub mod server;
mod statistics;
mod text;
mod writeback;

use std::process::ExitCode;

use clap::Parser;

pub use commands::Cli;

/// Runs the command line and returns the process exit code. Errors go to standard error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stops early, such as `head`, closes the pipe: that is not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        // An import that applied its valid rows and rejected others has its own status, so
        // scripts can tell it from a failure that stored nothing.
        Err(error) if error.is::<csv_import::RowsRejected>() => {
            eprintln!("error: {error:#}");
            ExitCode::from(csv_import::EXIT_ROWS_REJECTED)
        }
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// Formats an error with its causes. A gRPC status without a message, such as the one a
/// server returns for a service it does not host, is described by its code.
fn describe(error: &anyhow::Error) -> String {
    let status = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<tonic::Status>());
    match status {
        Some(status) if status.message().is_empty() => {
            let hint = match status.code() {
                tonic::Code::Unimplemented => {
                    ": the server at this address does not host the service the command calls; \
                     check --server, or the --<service>-url option for that service"
                }
                _ => "",
            };
            format!(
                "the server answered {:?} with no message{hint}",
                status.code()
            )
        }
        _ => format!("{error:#}"),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io = cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind);
        let json = cause
            .downcast_ref::<serde_json::Error>()
            .and_then(serde_json::Error::io_error_kind);
        io.or(json) == Some(std::io::ErrorKind::BrokenPipe)
    })
}
