//! Request limits of `rollcall serve`: message size, batch size, request timeout and the number
//! of requests in flight, with the statuses a client gets when it reaches one. docs/limits.md
//! describes each limit for operators and client authors.

mod layer;
mod message_size;

use std::time::Duration;

use anyhow::bail;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use layer::{LimitsLayer, LimitsService};

/// The default of `--max-message-bytes`: 64 MiB. A Common Transfer File for a large secondary
/// school over a full year is a few megabytes, so whole files fit with room to spare.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The default of `--max-batch-rows`, the rows one MIS sync batch carries.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 10_000;
/// The default of `--max-import-items`: pupils and marks in one ImportRegister stream. A year
/// of marks for a secondary school of 2,500 pupils is about 2,500 x 190 days x 2 sessions,
/// or 950,000 marks, so 2,000,000 takes a whole-year file of the largest schools.
pub const DEFAULT_MAX_IMPORT_ITEMS: usize = 2_000_000;
/// The default of `--request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The default of `--max-concurrent-requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;

/// The delay a shed request is given in its retry advice.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The smallest `--max-message-bytes`: 4 MiB, gRPC's own default. Smaller messages would cut
/// the pages rollcall's services send each other.
pub const MIN_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The largest `--max-message-bytes`: 1 GiB. A message is held whole in memory while it is
/// decoded.
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 1024 * 1024 * 1024;
/// The largest `--max-batch-rows`.
pub const MAX_BATCH_ROWS_LIMIT: usize = 100_000;
/// The largest `--max-import-items`.
pub const MAX_IMPORT_ITEMS_LIMIT: usize = 20_000_000;
/// The largest `--request-timeout`: one hour.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The largest `--max-concurrent-requests`.
pub const MAX_CONCURRENT_REQUESTS_LIMIT: usize = 100_000;

/// The limits every gRPC listener of `rollcall serve` enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// The largest message, in bytes, a service accepts or sends.
    pub max_message_bytes: usize,
    /// The maximum number of rows in one SyncPupils or SyncMarks batch, also within StreamSync.
    pub max_batch_rows: usize,
    /// The maximum number of pupils and marks, counted together, in one ImportRegister stream.
    pub max_import_items: usize,
    /// The maximum time a request may run before it ends with DEADLINE_EXCEEDED. A shorter
    /// `grpc-timeout` from the client applies instead. Streamed responses are not cut.
    pub request_timeout: Duration,
    /// The maximum number of requests in flight. Further requests get UNAVAILABLE at once, except
    /// health checks and calls between rollcall's own services.
    pub max_concurrent_requests: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            max_import_items: DEFAULT_MAX_IMPORT_ITEMS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
        }
    }
}

impl ServerLimits {
    /// Checks every limit is within its range, naming the flag and value of the first that is
    /// not.
    pub fn check(&self) -> anyhow::Result<()> {
        check_range(
            "--max-message-bytes",
            self.max_message_bytes,
            MIN_MESSAGE_BYTES,
            MAX_MESSAGE_BYTES_LIMIT,
            "bytes",
        )?;
        check_range(
            "--max-batch-rows",
            self.max_batch_rows,
            1,
            MAX_BATCH_ROWS_LIMIT,
            "rows",
        )?;
        check_range(
            "--max-import-items",
            self.max_import_items,
            1,
            MAX_IMPORT_ITEMS_LIMIT,
            "items",
        )?;
        if self.max_import_items < self.max_batch_rows {
            bail!(
                "invalid --max-import-items {}: the MIS sync service applies each batch of up to \
                 --max-batch-rows {} rows as one import, so give at least {}",
                self.max_import_items,
                self.max_batch_rows,
                self.max_batch_rows
            );
        }
        let seconds = self.request_timeout.as_secs();
        if self.request_timeout < Duration::from_secs(1)
            || self.request_timeout > MAX_REQUEST_TIMEOUT
        {
            bail!(
                "invalid --request-timeout {seconds}: give a number of seconds from 1 to {}",
                MAX_REQUEST_TIMEOUT.as_secs()
            );
        }
        check_range(
            "--max-concurrent-requests",
            self.max_concurrent_requests,
            1,
            MAX_CONCURRENT_REQUESTS_LIMIT,
            "requests",
        )
    }

    /// Logs the limits once, at start.
    pub fn log(&self) {
        tracing::info!(
            max_message_bytes = self.max_message_bytes,
            max_batch_rows = self.max_batch_rows,
            max_import_items = self.max_import_items,
            request_timeout_secs = self.request_timeout.as_secs(),
            max_concurrent_requests = self.max_concurrent_requests,
            "Request limits (see docs/limits.md)"
        );
    }
}

fn check_range(flag: &str, value: usize, min: usize, max: usize, unit: &str) -> anyhow::Result<()> {
    if !(min..=max).contains(&value) {
        bail!("invalid {flag} {value}: give a number of {unit} from {min} to {max}");
    }
    Ok(())
}

/// Returns INVALID_ARGUMENT for a batch of `count` items in `field`, more than `limit`, with a
/// `google.rpc.BadRequest` detail. A batch over the limit will never be accepted as it is, so
/// this is not RESOURCE_EXHAUSTED, which clients may retry unchanged.
pub fn batch_too_large(field: &str, count: usize, limit: usize, flag: &str) -> Status {
    crate::grpc::invalid_argument(
        field,
        &count.to_string(),
        format!(
            "a batch carries at most {limit} {field} (the server's {flag}), but this one has \
             {count}: split it into batches of at most {limit}"
        ),
    )
}

/// Returns UNAVAILABLE for a request shed because `limit` requests are in flight, with the
/// wait in the message, a `retry-after` metadata entry and a `google.rpc.RetryInfo` detail.
pub fn overloaded(limit: usize) -> Status {
    let seconds = RETRY_AFTER.as_secs();
    let message = format!(
        "the server is busy: {limit} requests are in flight, the most --max-concurrent-requests \
         allows, and this one was not started; retry after {seconds} s, waiting longer after \
         each refusal"
    );
    let mut status = Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    );
    if let Ok(value) = seconds.to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// Returns DEADLINE_EXCEEDED for a request that ran for `limit`, saying whether the client's
/// deadline or the server's `--request-timeout` ended it.
pub fn deadline_exceeded(limit: Duration, from_client: bool) -> Status {
    let millis = limit.as_millis();
    let message = if from_client {
        format!(
            "the request did not finish within the client's deadline of {millis} ms, so it \
             was stopped and its changes rolled back; retry with a longer deadline"
        )
    } else {
        format!(
            "the request did not finish within {} s, the server's --request-timeout, so it was \
             stopped and its changes rolled back; retry later, or send a smaller request",
            limit.as_secs()
        )
    };
    Status::deadline_exceeded(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_check() {
        ServerLimits::default().check().expect("defaults are valid");
    }

    #[test]
    fn check_names_flag_and_value() {
        let cases = [
            (
                ServerLimits {
                    max_message_bytes: 0,
                    ..ServerLimits::default()
                },
                "--max-message-bytes 0",
            ),
            (
                ServerLimits {
                    max_batch_rows: 0,
                    ..ServerLimits::default()
                },
                "--max-batch-rows 0",
            ),
            (
                ServerLimits {
                    max_import_items: 50,
                    max_batch_rows: 100,
                    ..ServerLimits::default()
                },
                "--max-import-items 50",
            ),
            (
                ServerLimits {
                    request_timeout: Duration::ZERO,
                    ..ServerLimits::default()
                },
                "--request-timeout 0",
            ),
            (
                ServerLimits {
                    max_concurrent_requests: 0,
                    ..ServerLimits::default()
                },
                "--max-concurrent-requests 0",
            ),
        ];
        for (limits, expected) in cases {
            let error = limits.check().expect_err(expected).to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn overloaded_carries_retry_info() {
        let status = overloaded(8);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
            Some(RETRY_AFTER)
        );
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()),
            Some("1")
        );
    }
}
