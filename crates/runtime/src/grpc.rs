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

/// Logs a storage error with its context and returns INTERNAL without the database detail,
/// which may name hosts or tables.
pub fn storage_error(context: &str, error: sqlx::Error) -> Status {
    tracing::error!(%error, context, "Storage error");
    Status::internal(format!("storage error while {context}; see the server log"))
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
