//! Conversions between protobuf messages and stored rows.

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::registers::v1 as pb;
use rollcall_api::types::v1::{MarkSource, Phase as PbPhase, Session as PbSession};
use rollcall_domain::Session;
use rollcall_domain::session::parse_date;
use rollcall_runtime::grpc::invalid_argument;
use tonic::Status;

/// A stored mark version, as read back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct MarkRow {
    pub(crate) sequence: i64,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) session_date: NaiveDate,
    pub(crate) session: String,
    pub(crate) code: String,
    pub(crate) minutes_late: i32,
    pub(crate) source: String,
    pub(crate) reason: String,
    pub(crate) recorded_by: String,
    pub(crate) recorded_by_position: String,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) effective_when_stored: bool,
}

impl MarkRow {
    pub(crate) fn into_proto(self) -> pb::Mark {
        let session = match self.session.as_str() {
            "AM" => PbSession::Am,
            _ => PbSession::Pm,
        };
        pb::Mark {
            upn: self.upn,
            laestab: self.laestab,
            date: self.session_date.to_string(),
            session: session as i32,
            code: self.code,
            minutes_late: self.minutes_late,
            source: source_from_str(&self.source) as i32,
            reason: self.reason,
            recorded_by: self.recorded_by,
            recorded_by_position: self.recorded_by_position,
            recorded_at: Some(timestamp(self.recorded_at)),
            sequence: self.sequence,
        }
    }
}

pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn source_as_str(source: MarkSource) -> &'static str {
    match source {
        MarkSource::MisSync => "mis_sync",
        MarkSource::Staff => "staff",
        MarkSource::ParentReport => "parent_report",
        MarkSource::Import | MarkSource::Unspecified => "import",
    }
}

fn source_from_str(source: &str) -> MarkSource {
    match source {
        "mis_sync" => MarkSource::MisSync,
        "staff" => MarkSource::Staff,
        "parent_report" => MarkSource::ParentReport,
        _ => MarkSource::Import,
    }
}

pub(crate) fn phase_as_str(phase: i32) -> &'static str {
    match PbPhase::try_from(phase) {
        Ok(PbPhase::Infant) => "infant",
        Ok(PbPhase::Junior) => "junior",
        Ok(PbPhase::Secondary) => "secondary",
        _ => "unspecified",
    }
}

pub(crate) fn phase_from_str(phase: &str) -> i32 {
    let value = match phase {
        "infant" => PbPhase::Infant,
        "junior" => PbPhase::Junior,
        "secondary" => PbPhase::Secondary,
        _ => PbPhase::Unspecified,
    };
    value as i32
}

pub(crate) fn session_from_proto(field: &str, value: i32) -> Result<Session, Status> {
    match PbSession::try_from(value) {
        Ok(PbSession::Am) => Ok(Session::Am),
        Ok(PbSession::Pm) => Ok(Session::Pm),
        _ => Err(invalid_argument(
            field,
            &value.to_string(),
            "session must be SESSION_AM or SESSION_PM",
        )),
    }
}

/// Parses a required `YYYY-MM-DD` field.
pub(crate) fn required_date(field: &str, value: &str) -> Result<NaiveDate, Status> {
    parse_date(value).map_err(|error| invalid_argument(field, value, error.to_string()))
}

/// Parses an optional `YYYY-MM-DD` field; empty means none.
pub(crate) fn optional_date(field: &str, value: &str) -> Result<Option<NaiveDate>, Status> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        required_date(field, value).map(Some)
    }
}

/// Checks a seven-digit LAESTAB.
pub(crate) fn laestab(field: &str, value: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.len() == 7 && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        Ok(trimmed.to_owned())
    } else {
        Err(invalid_argument(
            field,
            value,
            "LAESTAB must be the seven-digit LA number and establishment number, for example 9192001",
        ))
    }
}
