//! Conversions between the protobuf enums and timestamps and the domain library's types.

use chrono::{DateTime, Utc};
use rollcall_domain::{MarkSource, Phase, Session};

use crate::types::v1 as pb;

impl From<Phase> for pb::Phase {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Infant => Self::Infant,
            Phase::Junior => Self::Junior,
            Phase::Secondary => Self::Secondary,
        }
    }
}

/// Returns the domain phase of a protobuf `Phase` value, or `None` when it is unspecified or
/// unknown.
pub fn phase_from_proto(value: i32) -> Option<Phase> {
    match pb::Phase::try_from(value) {
        Ok(pb::Phase::Infant) => Some(Phase::Infant),
        Ok(pb::Phase::Junior) => Some(Phase::Junior),
        Ok(pb::Phase::Secondary) => Some(Phase::Secondary),
        _ => None,
    }
}

impl From<Session> for pb::Session {
    fn from(session: Session) -> Self {
        match session {
            Session::Am => Self::Am,
            Session::Pm => Self::Pm,
        }
    }
}

/// Returns the domain session of a protobuf `Session` value, or `None` when it is unspecified
/// or unknown.
pub fn session_from_proto(value: i32) -> Option<Session> {
    match pb::Session::try_from(value) {
        Ok(pb::Session::Am) => Some(Session::Am),
        Ok(pb::Session::Pm) => Some(Session::Pm),
        _ => None,
    }
}

impl From<MarkSource> for pb::MarkSource {
    fn from(source: MarkSource) -> Self {
        match source {
            MarkSource::MisSync => Self::MisSync,
            MarkSource::Staff => Self::Staff,
            MarkSource::ParentReport => Self::ParentReport,
            MarkSource::Import => Self::Import,
        }
    }
}

/// Returns the domain source of a protobuf `MarkSource` value, or `None` when it is
/// unspecified or unknown.
pub fn source_from_proto(value: i32) -> Option<MarkSource> {
    match pb::MarkSource::try_from(value) {
        Ok(pb::MarkSource::MisSync) => Some(MarkSource::MisSync),
        Ok(pb::MarkSource::Staff) => Some(MarkSource::Staff),
        Ok(pb::MarkSource::ParentReport) => Some(MarkSource::ParentReport),
        Ok(pb::MarkSource::Import) => Some(MarkSource::Import),
        _ => None,
    }
}

/// Converts a UTC time to a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf timestamp to a UTC time, or `None` when it is out of range.
pub fn from_timestamp(at: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip() {
        for phase in [Phase::Infant, Phase::Junior, Phase::Secondary] {
            assert_eq!(phase_from_proto(pb::Phase::from(phase) as i32), Some(phase));
        }
        for session in [Session::Am, Session::Pm] {
            assert_eq!(
                session_from_proto(pb::Session::from(session) as i32),
                Some(session)
            );
        }
        for source in [
            MarkSource::MisSync,
            MarkSource::Staff,
            MarkSource::ParentReport,
            MarkSource::Import,
        ] {
            assert_eq!(
                source_from_proto(pb::MarkSource::from(source) as i32),
                Some(source)
            );
        }
        assert_eq!(phase_from_proto(0), None);
        assert_eq!(session_from_proto(0), None);
        assert_eq!(source_from_proto(0), None);
    }

    #[test]
    fn timestamp_round_trips() {
        let at = DateTime::from_timestamp(1_757_059_200, 123_456_000).expect("valid time");
        assert_eq!(from_timestamp(&timestamp(at)), Some(at));
    }
}
