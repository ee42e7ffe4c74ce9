//! Conversions between protobuf messages and stored rows, and request field parsing.

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::convert::{session_from_proto, timestamp};
use rollcall_api::registers::v1 as pb;
use rollcall_api::types::v1::{MarkSource as PbMarkSource, Phase as PbPhase, Session as PbSession};
use rollcall_domain::session::parse_date;
use rollcall_domain::{MarkSource, Phase, Session};
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
    pub(crate) arrived_at: Option<DateTime<Utc>>,
    pub(crate) absence_report_id: Option<String>,
}

impl MarkRow {
    pub(crate) fn into_proto(self) -> pb::Mark {
        let session = self
            .session
            .parse::<Session>()
            .map_or(PbSession::Unspecified, PbSession::from);
        let source = self
            .source
            .parse::<MarkSource>()
            .map_or(PbMarkSource::Unspecified, PbMarkSource::from);
        pb::Mark {
            upn: self.upn,
            laestab: self.laestab,
            date: self.session_date.to_string(),
            session: session as i32,
            code: self.code,
            minutes_late: self.minutes_late,
            source: source as i32,
            reason: self.reason,
            recorded_by: self.recorded_by,
            recorded_by_position: self.recorded_by_position,
            recorded_at: Some(timestamp(self.recorded_at)),
            sequence: self.sequence,
            arrived_at: self.arrived_at.map(timestamp),
            absence_report_id: self.absence_report_id.unwrap_or_default(),
        }
    }
}

/// Returns the stored name of a school's phase; `unspecified` when the request has none.
pub(crate) fn phase_as_str(phase: i32) -> &'static str {
    rollcall_api::convert::phase_from_proto(phase).map_or("unspecified", Phase::as_str)
}

/// Returns the protobuf value of a stored phase name.
pub(crate) fn phase_from_str(phase: &str) -> i32 {
    phase
        .parse::<Phase>()
        .map_or(PbPhase::Unspecified, PbPhase::from) as i32
}

/// Parses a required session field.
pub(crate) fn session(field: &str, value: i32) -> Result<Session, Status> {
    session_from_proto(value).ok_or_else(|| {
        invalid_argument(
            field,
            &value.to_string(),
            "session must be SESSION_AM or SESSION_PM",
        )
    })
}

/// Parses a required `YYYY-MM-DD` field.
pub(crate) fn required_date(field: &str, value: &str) -> Result<NaiveDate, Status> {
    parse_date(value).map_err(|error| invalid_argument(field, value, error.problem()))
}

/// Parses an optional `YYYY-MM-DD` field; empty means none.
pub(crate) fn optional_date(field: &str, value: &str) -> Result<Option<NaiveDate>, Status> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        required_date(field, value).map(Some)
    }
}

/// Returns the stored name of a registration; unspecified means sole.
pub(crate) fn registration_as_str(value: i32) -> &'static str {
    match pb::Registration::try_from(value) {
        Ok(pb::Registration::Main) => "main",
        Ok(pb::Registration::Subsidiary) => "subsidiary",
        _ => "sole",
    }
}

/// Returns the stored name of a SEN provision: `none`, `sen_support`, `ehc_plan`, or empty
/// when not supplied.
pub(crate) fn sen_as_str(value: i32) -> &'static str {
    match pb::SenProvision::try_from(value) {
        Ok(pb::SenProvision::None) => "none",
        Ok(pb::SenProvision::Support) => "sen_support",
        Ok(pb::SenProvision::EhcPlan) => "ehc_plan",
        _ => "",
    }
}

/// Returns the protobuf value of a stored SEN provision name.
pub(crate) fn sen_from_str(value: &str) -> i32 {
    let provision = match value {
        "none" => pb::SenProvision::None,
        "sen_support" => pb::SenProvision::Support,
        "ehc_plan" => pb::SenProvision::EhcPlan,
        _ => pb::SenProvision::Unspecified,
    };
    provision as i32
}

/// Returns the stored name of free school meals eligibility: `eligible`, `not_eligible`, or
/// empty when not supplied.
pub(crate) fn fsm_as_str(value: i32) -> &'static str {
    match pb::FreeSchoolMeals::try_from(value) {
        Ok(pb::FreeSchoolMeals::Eligible) => "eligible",
        Ok(pb::FreeSchoolMeals::NotEligible) => "not_eligible",
        _ => "",
    }
}

/// Returns the protobuf value of a stored free school meals name.
pub(crate) fn fsm_from_str(value: &str) -> i32 {
    let meals = match value {
        "eligible" => pb::FreeSchoolMeals::Eligible,
        "not_eligible" => pb::FreeSchoolMeals::NotEligible,
        _ => pb::FreeSchoolMeals::Unspecified,
    };
    meals as i32
}

/// Returns the protobuf value of a stored registration name.
pub(crate) fn registration_from_str(value: &str) -> i32 {
    let registration = match value {
        "main" => pb::Registration::Main,
        "subsidiary" => pb::Registration::Subsidiary,
        _ => pb::Registration::Sole,
    };
    registration as i32
}
