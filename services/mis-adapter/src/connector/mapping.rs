//! The mapping of broker records to MIS sync rows, and the watermark of a list read page
//! by page.
//!
//! A student becomes a `SyncPupil` keyed by the broker's id of the student, which the broker's
//! marks and write-backs also use. A session mark becomes a `SyncMark` whose `recorded_at` is
//! the record's `updated_at`, so pulling the same record again is unchanged in the register.
//! Values are passed on as the broker sends them, and the sync service checks each row and
//! rejects it with the field and value, so a malformed record is reported rather than
//! dropped here.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Timelike, Utc};
use prost::Message;
use rollcall_api::convert::timestamp;
use rollcall_api::mis_adapter::v1::{SyncMark, SyncMarksRequest, SyncPupil, SyncPupilsRequest};
use rollcall_api::types::v1::{Phase, Session};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Returns the string at a JSON pointer, such as `/education_details/data/upn`, trimmed, or
/// an empty string when it is missing or not a string or number.
fn text(record: &Value, pointer: &str) -> String {
    match record.pointer(pointer) {
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    }
}

/// Returns the date of a broker date (`{"date": "2026-11-02 00:00:00.000000", ...}` or a plain
/// string) as YYYY-MM-DD. A value that is not a date is returned as sent, for the sync
/// service to reject with its field; a missing one is empty.
fn date(record: &Value, pointer: &str) -> String {
    let raw = match record.pointer(pointer) {
        Some(Value::Object(_)) => text(record, &format!("{pointer}/date")),
        _ => text(record, pointer),
    };
    match raw.get(..10) {
        Some(day) if chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok() => day.to_owned(),
        _ => raw,
    }
}

/// Parses a broker change time: `{"date": "2026-11-02 08:40:12.000000", "timezone": "UTC"}`
/// in any IANA time zone, or an RFC 3339 string.
pub(crate) fn parse_time(value: &Value) -> Result<DateTime<Utc>, String> {
    if let Some(text) = value.as_str() {
        return DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|_| format!("{text:?} is not an RFC 3339 time"));
    }
    let local = value
        .get("date")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{value} is not a broker date object"))?;
    let zone = value
        .get("timezone")
        .and_then(Value::as_str)
        .unwrap_or("UTC");
    let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S%.f")
        .map_err(|_| format!("{local:?} is not a time in the form YYYY-MM-DD HH:MM:SS"))?;
    let zone = chrono_tz::Tz::from_str(zone)
        .map_err(|_| format!("time zone {zone:?} of {local:?} is not an IANA time zone"))?;
    naive
        .and_local_timezone(zone)
        .earliest()
        .map(|at| at.with_timezone(&Utc))
        .ok_or_else(|| format!("{local:?} does not exist in time zone {zone}"))
}

/// Returns a record's `updated_at`, which every record must have.
pub(crate) fn updated_at(record: &Value) -> Result<DateTime<Utc>, String> {
    let value = record
        .get("updated_at")
        .ok_or_else(|| format!("record {} has no updated_at", record_id(record)))?;
    parse_time(value).map_err(|problem| {
        format!(
            "record {} has an invalid updated_at: {problem}",
            record_id(record)
        )
    })
}

/// Returns a record's `id`.
pub(crate) fn record_id(record: &Value) -> String {
    text(record, "/id")
}

/// Returns `M` or `F` for the broker's gender, or the value as sent.
fn sex(gender: &str) -> String {
    match gender.to_ascii_uppercase().as_str() {
        "MALE" | "M" => "M".to_owned(),
        "FEMALE" | "F" => "F".to_owned(),
        _ => gender.to_owned(),
    }
}

/// Returns the national curriculum year group in rollcall's form (N1, N2, R, 1 to 14) for the
/// broker's forms, such as "Year 7", "YR" or "Reception". Other values are returned as sent.
pub(crate) fn year_group(value: &str) -> String {
    let trimmed = value.trim();
    let upper = trimmed.to_ascii_uppercase();
    match upper.as_str() {
        "RECEPTION" | "YR" | "YEAR R" => return "R".to_owned(),
        "NURSERY 1" => return "N1".to_owned(),
        "NURSERY 2" => return "N2".to_owned(),
        _ => {}
    }
    let number = upper
        .strip_prefix("YEAR")
        .or_else(|| upper.strip_prefix('Y'))
        .map(str::trim)
        .filter(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()));
    match number {
        Some(digits) => digits.trim_start_matches('0').to_owned(),
        None => trimmed.to_owned(),
    }
}

/// Maps a broker student to a sync row.
pub(crate) fn pupil(record: &Value) -> SyncPupil {
    let forename = Some(text(record, "/legal_forename"))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| text(record, "/forename"));
    let surname = Some(text(record, "/legal_surname"))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| text(record, "/surname"));
    let year = Some(text(record, "/education_details/data/current_nc_year"))
        .filter(|year| !year.is_empty())
        .unwrap_or_else(|| text(record, "/year/data/code"));
    let class_name = Some(text(record, "/registration/data/code"))
        .filter(|class| !class.is_empty())
        .unwrap_or_else(|| text(record, "/registration/data/name"));
    SyncPupil {
        mis_id: record_id(record),
        upn: text(record, "/education_details/data/upn").to_ascii_uppercase(),
        forename,
        surname,
        date_of_birth: date(record, "/date_of_birth"),
        sex: sex(&text(record, "/gender")),
        admission_date: date(record, "/education_details/data/admission_date"),
        leaving_date: date(record, "/education_details/data/leaving_date"),
        year_group: year_group(&year),
        class_name,
        ..Default::default()
    }
}

/// Returns a mark record's student id: a string, or `{"data": {"id": ...}}` when included.
pub(crate) fn mark_student(record: &Value) -> String {
    match record.get("student") {
        Some(Value::Object(_)) => text(record, "/student/data/id"),
        _ => text(record, "/student"),
    }
}

/// Returns a mark record's session date, as YYYY-MM-DD or as sent.
pub(crate) fn mark_date(record: &Value) -> String {
    date(record, "/date")
}

/// Returns a mark record's session, unspecified when it is neither AM nor PM.
pub(crate) fn mark_session(record: &Value) -> Session {
    match text(record, "/session").to_ascii_uppercase().as_str() {
        "AM" => Session::Am,
        "PM" => Session::Pm,
        _ => Session::Unspecified,
    }
}

/// Maps a broker session mark to a sync row. `codes_by_id` names the code of each code id,
/// for a record that carries the id alone.
pub(crate) fn mark(
    record: &Value,
    codes_by_id: &HashMap<String, String>,
    recorded_at: DateTime<Utc>,
) -> SyncMark {
    let code = match record.get("attendance_code") {
        Some(Value::Object(_)) => text(record, "/attendance_code/data/code"),
        Some(Value::String(id)) => codes_by_id.get(id).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let minutes_late = record
        .get("minutes_late")
        .and_then(Value::as_i64)
        .map_or(0, |minutes| i32::try_from(minutes).unwrap_or(i32::MAX));
    SyncMark {
        mis_id: mark_student(record),
        upn: String::new(),
        date: mark_date(record),
        session: mark_session(record) as i32,
        code,
        minutes_late,
        comment: text(record, "/comment"),
        recorded_at: Some(timestamp(recorded_at)),
        arrived_at: None,
    }
}

/// Returns rollcall's phase for the broker's `phase_of_education`, or `None` for a phase
/// that spans two of rollcall's, such as PRIMARY.
pub(crate) fn phase(broker_phase: &str) -> Option<Phase> {
    match broker_phase
        .to_ascii_uppercase()
        .replace([' ', '-'], "_")
        .as_str()
    {
        "INFANT" | "NURSERY" => Some(Phase::Infant),
        "JUNIOR" => Some(Phase::Junior),
        "SECONDARY" | "MIDDLE_DEEMED_SECONDARY" | "16_PLUS" | "ALL_THROUGH" => {
            Some(Phase::Secondary)
        }
        _ => None,
    }
}

/// Returns rollcall's phase for a phase in the settings.
pub(crate) fn phase_of_setting(setting: &str) -> Phase {
    match setting {
        "infant" => Phase::Infant,
        "junior" => Phase::Junior,
        _ => Phase::Secondary,
    }
}

/// Returns the idempotency key of a pupils batch: a hash of everything in it and of each
/// record's id and `updated_at`. The same page read again changes nothing, while a record
/// changed in the broker, even back to earlier values (as a restored student is), makes a
/// new key, so its MIS id is mapped again.
pub(crate) fn pupils_key(
    request: &SyncPupilsRequest,
    changes: &[(String, DateTime<Utc>)],
) -> String {
    let mut keyless = request.clone();
    keyless.idempotency_key.clear();
    let mut hash = Sha256::new();
    hash.update(keyless.encode_to_vec());
    for (id, changed) in changes {
        hash.update(format!("\n{id}\t{}", changed.timestamp_micros()));
    }
    format!("connector-pupils-{}", hex::encode(hash.finalize()))
}

/// Returns the idempotency key of a marks batch, as for [`pupils_key`].
pub(crate) fn marks_key(request: &SyncMarksRequest) -> String {
    let mut keyless = request.clone();
    keyless.idempotency_key.clear();
    format!(
        "connector-marks-{}",
        hex::encode(Sha256::digest(keyless.encode_to_vec()))
    )
}

/// The start of the next request of one list: records changed after `after`, from page
/// `page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The `updated_after` to send; `None` reads every record.
    pub(crate) after: Option<DateTime<Utc>>,
    /// The page to ask for, from 1.
    pub(crate) page: u32,
}

impl Cursor {
    /// The cursor before the first run: every record, from page 1.
    pub(crate) const START: Self = Self {
        after: None,
        page: 1,
    };
}

/// Returns the `updated_after` that includes every record changed at `latest` or later.
///
/// The broker compares `updated_after` exclusively and to the second, so the value is the
/// whole second before `latest` whenever `latest` falls exactly on a second, and otherwise
/// `latest` cut to the second. Records changed in that second are read again, which changes
/// nothing, but none changed at the same moment as `latest` is missed.
pub(crate) fn after_including(latest: DateTime<Utc>) -> DateTime<Utc> {
    let earlier = latest - TimeDelta::microseconds(1);
    earlier.with_nanosecond(0).unwrap_or(earlier)
}

/// Returns the cursor after a page has been applied, or `None` when the list is finished.
///
/// The broker lists the oldest change first, so every record changed before the page's
/// latest change has been read. The next request therefore reads again from that change,
/// from page 1, which no change made meanwhile can shift. When the whole page falls in the
/// second the cursor already starts from (more records than a page changed at once), the
/// next request moves to the following page instead.
///
/// NOTE: only in that case can a change made during the run shift a record across a page
/// boundary. Such a record is missed by this run and the next, until a run with `full`.
pub(crate) fn next_cursor(
    cursor: Cursor,
    latest: Option<DateTime<Utc>>,
    more: bool,
) -> (Cursor, bool) {
    let Some(latest) = latest else {
        return (
            Cursor {
                after: cursor.after,
                page: 1,
            },
            false,
        );
    };
    let after = after_including(latest);
    if !more {
        let after = cursor.after.map_or(after, |current| current.max(after));
        return (
            Cursor {
                after: Some(after),
                page: 1,
            },
            false,
        );
    }
    if cursor.after.is_none_or(|current| after > current) {
        (
            Cursor {
                after: Some(after),
                page: 1,
            },
            true,
        )
    } else {
        (
            Cursor {
                after: cursor.after,
                page: cursor.page.saturating_add(1),
            },
            true,
        )
    }
}

/// Checks that a page lists the oldest change first, as [`next_cursor`] needs, and returns
/// its latest change.
pub(crate) fn latest_change(
    resource: &str,
    changes: &[(String, DateTime<Utc>)],
) -> Result<Option<DateTime<Utc>>, String> {
    for pair in changes.windows(2) {
        let ((earlier_id, earlier), (later_id, later)) = (&pair[0], &pair[1]);
        if later < earlier {
            return Err(format!(
                "the broker listed {resource} out of order: record {later_id} (changed {later}) \
                 follows record {earlier_id} (changed {earlier}); the connector needs the \
                 oldest change first, so that no record is skipped"
            ));
        }
    }
    Ok(changes.iter().map(|(_, at)| *at).max())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("RFC 3339")
            .with_timezone(&Utc)
    }

    fn broker_date(date: &str, zone: &str) -> Value {
        json!({ "date": date, "timezone_type": 3, "timezone": zone })
    }

    #[test]
    fn times_follow_their_zone() {
        let summer =
            parse_time(&broker_date("2026-06-01 09:00:00.000000", "Europe/London")).expect("valid");
        assert_eq!(summer, at("2026-06-01T08:00:00Z"));
        let utc = parse_time(&broker_date("2026-11-02 08:40:12.250000", "UTC")).expect("valid");
        assert_eq!(utc, at("2026-11-02T08:40:12.25Z"));
        assert_eq!(
            parse_time(&json!("2026-11-02T08:40:12Z")).expect("valid"),
            at("2026-11-02T08:40:12Z")
        );
        let error = parse_time(&broker_date("yesterday", "UTC")).expect_err("invalid");
        assert!(error.contains("yesterday"), "{error}");
        let error =
            parse_time(&broker_date("2026-11-02 08:00:00", "Mars/Olympus")).expect_err("zone");
        assert!(error.contains("Mars/Olympus"), "{error}");
    }

    #[test]
    fn student_maps_to_pupil() {
        let record = json!({
            "id": "A1000001",
            "mis_id": "1001",
            "forename": "Ellie",
            "surname": "Smith",
            "legal_forename": "Eleanor",
            "legal_surname": "Smith",
            "gender": "FEMALE",
            "date_of_birth": broker_date("2015-03-14 00:00:00.000000", "Europe/London"),
            "updated_at": broker_date("2026-11-02 08:00:00.000000", "UTC"),
            "education_details": {"data": {
                "upn": "a919200100001",
                "admission_date": broker_date("2026-09-02 00:00:00.000000", "Europe/London"),
                "leaving_date": null,
                "current_nc_year": "Year 7",
            }},
            "registration": {"data": {"code": "7B", "name": "7 Blue"}},
        });
        let pupil = pupil(&record);
        assert_eq!(pupil.mis_id, "A1000001");
        assert_eq!(pupil.upn, "A919200100001");
        assert_eq!(pupil.forename, "Eleanor", "the legal forename wins");
        assert_eq!(pupil.surname, "Smith");
        assert_eq!(pupil.date_of_birth, "2015-03-14");
        assert_eq!(pupil.sex, "F");
        assert_eq!(pupil.admission_date, "2026-09-02");
        assert_eq!(pupil.leaving_date, "");
        assert_eq!(pupil.year_group, "7");
        assert_eq!(pupil.class_name, "7B");
    }

    #[test]
    fn malformed_student_passed_on() {
        let record = json!({
            "id": "A1000002",
            "gender": "UNKNOWN",
            "date_of_birth": broker_date("14/03/2015", "Europe/London"),
        });
        let pupil = pupil(&record);
        assert_eq!(pupil.upn, "");
        assert_eq!(pupil.sex, "UNKNOWN");
        assert_eq!(pupil.date_of_birth, "14/03/2015");
    }

    #[test]
    fn year_groups_are_normalised() {
        for (broker, rollcall) in [
            ("7", "7"),
            ("Year 7", "7"),
            ("Y11", "11"),
            ("Year 07", "7"),
            ("Reception", "R"),
            ("YR", "R"),
            ("R", "R"),
            ("N1", "N1"),
            ("Nursery 2", "N2"),
            ("Sixth Form", "Sixth Form"),
        ] {
            assert_eq!(year_group(broker), rollcall, "{broker}");
        }
    }

    #[test]
    fn session_mark_maps_every_field() {
        let record = json!({
            "id": "M0000001",
            "student": "A1000001",
            "session": "pm",
            "date": broker_date("2026-11-02 00:00:00.000000", "Europe/London"),
            "attendance_code": {"data": {"id": "AC13", "code": "L"}},
            "minutes_late": 12,
            "comment": " Bus was late ",
        });
        let changed = at("2026-11-02T13:20:00Z");
        let row = mark(&record, &HashMap::new(), changed);
        assert_eq!(row.mis_id, "A1000001");
        assert_eq!(row.date, "2026-11-02");
        assert_eq!(row.session, Session::Pm as i32);
        assert_eq!(row.code, "L");
        assert_eq!(row.minutes_late, 12);
        assert_eq!(row.comment, "Bus was late");
        assert_eq!(row.recorded_at, Some(timestamp(changed)));
    }

    #[test]
    fn code_ids_are_looked_up() {
        let record = json!({
            "student": {"data": {"id": "A1000001"}},
            "session": "AM",
            "date": "2026-11-02",
            "attendance_code": "AC01",
            "minutes_late": null,
            "comment": null,
        });
        let codes = HashMap::from([("AC01".to_owned(), "/".to_owned())]);
        let row = mark(&record, &codes, at("2026-11-02T09:00:00Z"));
        assert_eq!(row.mis_id, "A1000001");
        assert_eq!(row.code, "/");
        assert_eq!(row.minutes_late, 0);
        assert_eq!(row.comment, "");
        let unknown = mark(&record, &HashMap::new(), at("2026-11-02T09:00:00Z"));
        assert_eq!(unknown.code, "", "the sync service rejects the empty code");
    }

    #[test]
    fn phases_map_or_need_a_setting() {
        assert_eq!(phase("SECONDARY"), Some(Phase::Secondary));
        assert_eq!(phase("all-through"), Some(Phase::Secondary));
        assert_eq!(phase("INFANT"), Some(Phase::Infant));
        assert_eq!(phase("JUNIOR"), Some(Phase::Junior));
        assert_eq!(phase("PRIMARY"), None);
        assert_eq!(phase_of_setting("junior"), Phase::Junior);
    }

    #[test]
    fn keys_follow_content() {
        let mut request = SyncMarksRequest {
            laestab: "9192001".into(),
            source_name: "MIS connector".into(),
            marks: vec![SyncMark {
                mis_id: "A1".into(),
                code: "/".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let first = marks_key(&request);
        assert!(first.starts_with("connector-marks-"), "{first}");
        assert!(first.len() <= 128, "{first}");
        request.idempotency_key = first.clone();
        assert_eq!(marks_key(&request), first, "the key itself is left out");
        request.marks[0].code = "N".into();
        assert_ne!(marks_key(&request), first);
        let pupils = SyncPupilsRequest {
            laestab: "9192001".into(),
            ..Default::default()
        };
        let changed = at("2026-11-02T08:00:00Z");
        let first = pupils_key(&pupils, &[("A1".into(), changed)]);
        assert!(first.starts_with("connector-pupils-"), "{first}");
        assert_eq!(first, pupils_key(&pupils, &[("A1".into(), changed)]));
        let restored = pupils_key(&pupils, &[("A1".into(), changed + TimeDelta::seconds(1))]);
        assert_ne!(
            first, restored,
            "a record changed in the broker makes a new key"
        );
    }

    #[test]
    fn after_including_keeps_the_latest_second() {
        assert_eq!(
            after_including(at("2026-11-02T08:00:05.250Z")),
            at("2026-11-02T08:00:05Z")
        );
        assert_eq!(
            after_including(at("2026-11-02T08:00:05Z")),
            at("2026-11-02T08:00:04Z"),
            "a change on the second itself is included"
        );
    }

    #[test]
    fn cursor_restarts_from_the_latest_change() {
        let (cursor, more) = next_cursor(Cursor::START, Some(at("2026-11-02T08:00:05.5Z")), true);
        assert!(more);
        assert_eq!(
            cursor,
            Cursor {
                after: Some(at("2026-11-02T08:00:05Z")),
                page: 1
            }
        );
    }

    #[test]
    fn cursor_follows_pages_within_one_second() {
        let start = Cursor {
            after: Some(at("2026-11-02T08:00:05Z")),
            page: 1,
        };
        let (cursor, more) = next_cursor(start, Some(at("2026-11-02T08:00:05.9Z")), true);
        assert!(more);
        assert_eq!(cursor.after, start.after);
        assert_eq!(cursor.page, 2);
        let (cursor, _) = next_cursor(cursor, Some(at("2026-11-02T08:00:05.95Z")), true);
        assert_eq!(cursor.page, 3);
    }

    #[test]
    fn cursor_ends_on_the_last_page() {
        let start = Cursor {
            after: Some(at("2026-11-02T08:00:05Z")),
            page: 3,
        };
        let (cursor, more) = next_cursor(start, Some(at("2026-11-02T09:30:00.1Z")), false);
        assert!(!more);
        assert_eq!(
            cursor,
            Cursor {
                after: Some(at("2026-11-02T09:30:00Z")),
                page: 1
            }
        );
        let (empty, more) = next_cursor(start, None, false);
        assert!(!more);
        assert_eq!(
            empty.after, start.after,
            "an empty page keeps the watermark"
        );
        assert_eq!(empty.page, 1);
    }

    #[test]
    fn cursor_never_moves_back_at_the_end() {
        let start = Cursor {
            after: Some(at("2026-11-02T10:00:00Z")),
            page: 2,
        };
        let (cursor, _) = next_cursor(start, Some(at("2026-11-02T10:00:00.5Z")), false);
        assert_eq!(cursor.after, start.after);
    }

    #[test]
    fn pages_out_of_order_are_refused() {
        let changes = vec![
            ("A1".to_owned(), at("2026-11-02T08:00:05Z")),
            ("A2".to_owned(), at("2026-11-02T08:00:04Z")),
        ];
        let error = latest_change("students", &changes).expect_err("out of order");
        assert!(error.contains("A2"), "{error}");
        assert!(error.contains("oldest change first"), "{error}");
        let sorted: Vec<_> = changes.into_iter().rev().collect();
        assert_eq!(
            latest_change("students", &sorted).expect("sorted"),
            Some(at("2026-11-02T08:00:05Z"))
        );
        assert_eq!(latest_change("students", &[]).expect("empty"), None);
    }
}
