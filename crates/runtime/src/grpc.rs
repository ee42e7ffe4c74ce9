//! Helpers shared by the gRPC services: request validation errors, storage errors and clients.

use std::time::Duration;

use rollcall_api::client::{Channel, Credentials};
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Returns INVALID_ARGUMENT naming the field and the offending value, with a
/// `google.rpc.BadRequest` detail for clients that read rich errors.
pub fn invalid_argument(field: &str, value: &str, problem: impl Into<String>) -> Status {
    let problem = problem.into();
    let message = format!("invalid {field} {value:?}: {problem}");
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, problem);
    tracing::warn!(field, value, %message, "Rejected request");
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Returns NOT_FOUND for a missing resource named by kind and id.
pub fn not_found(kind: &str, id: &str) -> Status {
    tracing::info!(kind, id, "Not found");
    Status::not_found(format!("{kind} {id} not found"))
}

/// Returns FAILED_PRECONDITION with the reason.
pub fn failed_precondition(message: impl Into<String>) -> Status {
    let message = message.into();
    tracing::info!(%message, "Failed precondition");
    Status::failed_precondition(message)
}

/// Logs a storage error with its context and returns a status without the database detail,
/// which may name hosts or tables.
///
/// A lost or refused database connection, or a database that is shutting down or starting,
/// returns UNAVAILABLE, and a transaction that lost a conflict returns ABORTED: sending the
/// call again after a pause may succeed. Every other error returns INTERNAL.
pub fn storage_error(context: &str, error: sqlx::Error) -> Status {
    let code = storage_error_code(&error);
    tracing::error!(%error, context, code = ?code, "Storage error");
    match code {
        Code::Unavailable => Status::unavailable(format!(
            "the database is not reachable while {context}; send the call again after a pause"
        )),
        Code::Aborted => Status::aborted(format!(
            "a concurrent change conflicted while {context}; send the call again"
        )),
        _ => Status::internal(format!("storage error while {context}; see the server log")),
    }
}

/// Returns the status code for a storage error: UNAVAILABLE for connection failures, ABORTED
/// for conflicts, INTERNAL otherwise.
fn storage_error_code(error: &sqlx::Error) -> Code {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Code::Unavailable,
        sqlx::Error::Database(database)
            if database
                .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                .is_some() =>
        {
            // SQLite reports extended result codes, whose low byte is the primary code:
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6) remain after the busy timeout ran out.
            let primary = database
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .map(|code| code & 0xff);
            match primary {
                Some(5 | 6) => Code::Unavailable,
                _ => Code::Internal,
            }
        }
        sqlx::Error::Database(database) => match database.code().as_deref() {
            // PostgreSQL's SQLSTATE class 08 is a connection exception. 57P01 to 57P03 are
            // an administrator's shutdown, a crash shutdown and a server still starting.
            Some(code) if code.starts_with("08") => Code::Unavailable,
            Some("57P01" | "57P02" | "57P03") => Code::Unavailable,
            // Serialisation failure and deadlock.
            Some("40001" | "40P01") => Code::Aborted,
            _ => Code::Internal,
        },
        _ => Code::Internal,
    }
}

/// Logs an error from another rollcall service and returns UNAVAILABLE or the same status.
pub fn upstream_error(service: &str, status: Status) -> Status {
    tracing::warn!(service, code = ?status.code(), message = status.message(), "Call to another service failed");
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => Status::unavailable(format!(
            "the {service} service is not available: {}",
            status.message()
        )),
        _ => status,
    }
}

/// Creates a lazily connecting channel to another rollcall service that sends `credentials`
/// with every call.
pub fn channel(url: &str, credentials: Credentials) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| anyhow::anyhow!("invalid service address {url:?}: {error}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    Ok(credentials.attach(endpoint.connect_lazy()))
}

/// The largest gRPC message, in bytes, that rollcall's clients send or accept, and that the
/// services accept or send unless `rollcall serve --max-message-bytes` sets another limit.
pub const MAX_MESSAGE_BYTES: usize = crate::limits::DEFAULT_MAX_MESSAGE_BYTES;

/// Parses a LAESTAB request field, or returns INVALID_ARGUMENT naming it.
pub fn laestab(field: &str, value: &str) -> Result<String, Status> {
    rollcall_domain::school::parse_laestab(value).map_err(|_| {
        invalid_argument(
            field,
            value,
            "expected the seven-digit LA number and establishment number, for example 9192001",
        )
    })
}

/// Creates a lazily connecting channel to another rollcall service, over TLS with `tls` when
/// the address starts with `https://`.
pub fn channel_with_tls(
    url: &str,
    credentials: Credentials,
    tls: &crate::tls::Tls,
) -> anyhow::Result<Channel> {
    if !url.starts_with("https://") {
        return channel(url, credentials);
    }
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|error| anyhow::anyhow!("invalid service address {url:?}: {error}"))?
        .tls_config(tls.client_config())
        .map_err(|error| anyhow::anyhow!("cannot set up TLS for {url}: {error}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    Ok(credentials.attach(endpoint.connect_lazy()))
}

/// Hands `first` and the messages that follow it on `stream` to `add`, until the stream has
/// been quiet for `settle` or `max` messages were handed over. Returns how many were. A
/// feed's follower thus takes what a burst of writes stored as one batch, of at most `max`.
pub async fn gather<T>(
    stream: &mut tonic::Streaming<T>,
    first: T,
    max: usize,
    settle: std::time::Duration,
    mut add: impl FnMut(T),
) -> Result<usize, Status> {
    let mut count = 0;
    let mut next = Some(first);
    while let Some(message) = next.take() {
        add(message);
        count += 1;
        if count >= max {
            break;
        }
        match tokio::time::timeout(settle, stream.message()).await {
            Ok(Ok(Some(message))) => next = Some(message),
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(status)) => return Err(status),
        }
    }
    Ok(count)
}
