//! Checks on request fields shared by the casework modules, and the storage error mapping.

use chrono::{NaiveDate, Utc};
use rollcall_domain::session::parse_date;
use rollcall_runtime::grpc::invalid_argument;
use tonic::Status;

/// Returns a function that logs a storage error with its context and maps it to INTERNAL.
pub(crate) fn storage(context: &str) -> impl Fn(sqlx::Error) -> Status + '_ {
    move |error| rollcall_runtime::grpc::storage_error(context, error)
}

/// Returns the trimmed value, or INVALID_ARGUMENT naming the field when it is empty.
pub(crate) fn required(field: &str, value: &str, problem: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(invalid_argument(field, value, problem));
    }
    Ok(trimmed.to_owned())
}

/// Parses a `YYYY-MM-DD` field, or returns INVALID_ARGUMENT naming it.
pub(crate) fn date(field: &str, value: &str) -> Result<NaiveDate, Status> {
    parse_date(value).map_err(|error| invalid_argument(field, value, error.problem()))
}

/// Parses a `YYYY-MM-DD` field, with today for an empty one.
pub(crate) fn date_or_today(field: &str, value: &str) -> Result<NaiveDate, Status> {
    if value.trim().is_empty() {
        return Ok(Utc::now().date_naive());
    }
    date(field, value)
}
