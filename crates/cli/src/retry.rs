//! Retries of import calls that failed because the server or its database was briefly out of
//! reach. The imports send idempotency keys (or request ids derived from the file), so a call
//! sent again after a lost response is applied once.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tonic::Code;

/// Attempts of one call, the first included. With the delays below, the last attempt starts
/// one to two minutes after the first, which covers a restart of the server or its database.
pub(crate) const MAX_ATTEMPTS: usize = 10;

/// Delay before the first retry. Each later delay doubles, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);

/// Maximum delay between two attempts, before jitter.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Returns the delays between attempts, [`MAX_ATTEMPTS`] - 1 of them. Each grows by a random
/// fraction of itself, so that clients that failed together do not all retry at once.
pub(crate) fn delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_max_times(MAX_ATTEMPTS - 1)
        .with_jitter()
        .build()
}

/// Returns whether a call that failed with `code` may succeed when sent again unchanged.
///
/// UNAVAILABLE covers a server that is down or restarting and a database that is out of
/// reach. UNKNOWN is what tonic returns when the connection breaks in the middle of a call.
/// DEADLINE_EXCEEDED and ABORTED are timeouts and conflicts of that one attempt. INTERNAL
/// and RESOURCE_EXHAUSTED are not retried, because they also stand for bugs and messages that
/// are too large, which fail again however often they are sent.
pub(crate) fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Aborted
    )
}

/// A failed call, kept with its status code so that callers can decide to retry. It displays
/// as the server's message alone.
#[derive(Debug)]
pub(crate) struct CallFailed {
    pub(crate) code: Code,
    pub(crate) message: String,
}

impl From<tonic::Status> for CallFailed {
    fn from(status: tonic::Status) -> Self {
        Self {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallFailed {}

/// Returns whether any cause of `error` is a [`CallFailed`] with a transient code.
pub(crate) fn is_transient_error(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<CallFailed>()
            .is_some_and(|failed| is_transient(failed.code))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap() {
        let delays: Vec<Duration> = delays().collect();
        assert_eq!(delays.len(), MAX_ATTEMPTS - 1);
        assert!(delays[0] >= FIRST_DELAY, "{delays:?}");
        // Jitter adds up to one more delay, so the cap is at most doubled.
        assert!(
            delays.iter().all(|delay| *delay <= MAX_DELAY * 2),
            "{delays:?}"
        );
        let total: Duration = delays.iter().sum();
        assert!(total >= Duration::from_secs(45), "{total:?}");
    }

    #[test]
    fn transient_codes_are_retried() {
        assert!(is_transient(Code::Unavailable));
        assert!(is_transient(Code::Unknown));
        assert!(!is_transient(Code::InvalidArgument));
        assert!(!is_transient(Code::AlreadyExists));
        assert!(!is_transient(Code::PermissionDenied));
        assert!(!is_transient(Code::Internal));
    }

    #[test]
    fn transient_error_found_in_chain() {
        let failed = CallFailed::from(tonic::Status::unavailable("server restarting"));
        let error = anyhow::Error::new(failed).context("batch 3 failed");
        assert!(is_transient_error(&error));
        assert_eq!(format!("{error:#}"), "batch 3 failed: server restarting");

        let rejected = CallFailed::from(tonic::Status::invalid_argument("bad key"));
        assert!(!is_transient_error(&anyhow::Error::new(rejected)));
        assert!(!is_transient_error(&anyhow::anyhow!("no status at all")));
    }
}
