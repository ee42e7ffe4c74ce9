//! ImportRegister: a register (school, pupils and marks) applied in one transaction.
//!
//! The stream is read and checked first. Then, holding the feed's write lock, the service loads
//! what it already has for those pupils, works out the changes with [`plan`], which does no
//! I/O, and writes them. In a whole import any error rolls everything back. In a partial
//! import each pupil and mark is checked on its own: the invalid ones are rejected with a
//! result that gives the reason, and the others are written.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use prost::Message;
use rollcall_api::convert::session_from_proto;
use rollcall_api::convert::{from_timestamp, source_from_proto};
use rollcall_api::registers::v1::{
    ImportHeader, ImportItemKind, ImportItemOutcome, ImportItemResult, ImportMarks, ImportPupil,
    ImportRegisterRequest, ImportRegisterResponse, Mark, import_register_request::Item,
};
use rollcall_domain::age::is_compulsory_school_age;
use rollcall_domain::calendar::SchoolCalendar;
use rollcall_domain::history::{VersionKey, supersedes};
use rollcall_domain::phase::normalise_year_group;
use rollcall_domain::session::parse_date;
use rollcall_domain::{MarkSource, Session, SessionDate, Upn, codes};
use rollcall_runtime::grpc::{invalid_argument, laestab, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use sqlx::QueryBuilder;
use tonic::{Status, Streaming};

use crate::calendar::{self, load_calendar_rows};
use crate::convert::{fsm_as_str, phase_as_str, registration_as_str, sen_as_str};
use crate::{FEED_LOCK_KEY, school_lock_key};

mod appender;
mod versions;

pub(crate) use appender::Appender;
use versions::{NewVersions, StoreImport, UPSERT_SCHOOL};

/// Rows per multi-row statement. Seventeen columns a row stays well inside SQLite's limit of
/// 32,766 bound parameters and PostgreSQL's 65,535.
const CHUNK: usize = 1_000;

/// An import read from its stream, with every field checked that can be checked without the
/// database.
#[derive(Debug)]
pub(crate) struct ImportRequest {
    request_id: String,
    laestab: String,
    school_name: String,
    phase: &'static str,
    source: MarkSource,
    source_name: String,
    recorded_by: String,
    partial: bool,
    dry_run: bool,
    pupils: Vec<CheckedPupil>,
    marks: Vec<CheckedMark>,
    /// Results of items settled while reading: rejected, or duplicates merged.
    settled: Vec<ImportItemResult>,
    /// Pupils and marks sent, valid or not.
    pupils_sent: usize,
    marks_sent: usize,
}

/// The reason one pupil or mark of an import cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ItemError {
    /// A stable code for the reason, such as "not_on_roll".
    code: &'static str,
    /// The field at fault, such as "date".
    field: &'static str,
    /// The value at fault, as sent.
    value: String,
    /// The problem and what to do about it.
    reason: String,
}

impl ItemError {
    fn new(
        code: &'static str,
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            code,
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Converts the error into the INVALID_ARGUMENT a whole import fails with, naming the item,
    /// such as `marks[3].date`.
    fn into_status(self, item: &str) -> Status {
        invalid_argument(&format!("{item}.{}", self.field), &self.value, self.reason)
    }

    fn into_result(self, kind: ImportItemKind, index: usize, upn: &str) -> ImportItemResult {
        ImportItemResult {
            kind: kind as i32,
            index: i32::try_from(index).unwrap_or(i32::MAX),
            upn: upn.to_owned(),
            outcome: ImportItemOutcome::Rejected as i32,
            reason_code: self.code.to_owned(),
            field: self.field.to_owned(),
            value: self.value,
            reason: self.reason,
            note: String::new(),
            duplicate_of: None,
        }
    }
}

fn row_index(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

fn item_result(
    kind: ImportItemKind,
    index: usize,
    upn: &str,
    outcome: ImportItemOutcome,
    note: impl Into<String>,
) -> ImportItemResult {
    ImportItemResult {
        kind: kind as i32,
        index: i32::try_from(index).unwrap_or(i32::MAX),
        upn: upn.to_owned(),
        outcome: outcome as i32,
        note: note.into(),
        ..ImportItemResult::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PupilDetails {
    forename: String,
    surname: String,
    date_of_birth: NaiveDate,
    sex: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckedPupil {
    /// Position among the import's pupils.
    index: usize,
    upn: String,
    details: PupilDetails,
    admission_date: NaiveDate,
    leaving_date: Option<NaiveDate>,
    year_group: String,
    registration: &'static str,
    class_name: String,
    sen_provision: &'static str,
    free_school_meals: &'static str,
}

impl CheckedPupil {
    /// Returns true when both rows carry the same details for the pupil, whatever their positions.
    fn same_as(&self, other: &Self) -> bool {
        Self {
            index: other.index,
            ..self.clone()
        } == *other
    }
}

#[derive(Debug, Clone)]
struct CheckedMark {
    /// Position among the import's marks.
    index: usize,
    upn: String,
    date: NaiveDate,
    session: Session,
    code: String,
    minutes_late: i32,
    comment: String,
    recorded_at: DateTime<Utc>,
    /// False when the sender gave no time taken, so the time of receipt is used instead.
    recorded_at_sent: bool,
    arrived_at: Option<DateTime<Utc>>,
}

/// Codes an arrival time decides between: a mark sent with one of these (or none) and an
/// arrival time takes its code from the school's register times.
const ARRIVAL_CODES: [&str; 5] = ["", "/", "\\", "L", "U"];

/// An enrolment at the importing school.
#[derive(Debug, Clone)]
struct Enrolment {
    admission: NaiveDate,
    leaving: Option<NaiveDate>,
    year_group: String,
    registration: String,
    class_name: String,
    sen_provision: String,
    free_school_meals: String,
}

impl Enrolment {
    fn contains(&self, date: NaiveDate) -> bool {
        date >= self.admission && self.leaving.is_none_or(|leaving| date <= leaving)
    }
}

/// An open enrolment at another of the trust's schools.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenElsewhere {
    laestab: String,
    admission: NaiveDate,
    registration: String,
    /// The latest date with an effective mark there, if any.
    last_mark: Option<NaiveDate>,
}

/// The effective version of a session before the import.
#[derive(Debug, Clone)]
struct Current {
    code: String,
    minutes_late: i32,
    reason: String,
    recorded_at: DateTime<Utc>,
    sequence: i64,
}

type SessionKey = (String, NaiveDate, Session);

/// An enrolment as loaded for an import.
#[derive(Debug, sqlx::FromRow)]
struct EnrolmentLoad {
    upn: String,
    admission_date: NaiveDate,
    leaving_date: Option<NaiveDate>,
    year_group: String,
    registration: String,
    class_name: String,
    sen_provision: String,
    free_school_meals: String,
}

/// An effective version as loaded for an import.
#[derive(Debug, sqlx::FromRow)]
struct EffectiveRow {
    upn: String,
    session_date: NaiveDate,
    session: String,
    code: String,
    minutes_late: i32,
    reason: String,
    recorded_at: DateTime<Utc>,
    sequence: i64,
}

/// The registers' existing rows for the pupils of an import.
#[derive(Debug, Default)]
struct Existing {
    pupils: HashMap<String, PupilDetails>,
    enrolments: HashMap<String, Vec<Enrolment>>,
    /// Open enrolments at other schools, for following moves.
    elsewhere: HashMap<String, Vec<OpenElsewhere>>,
    /// The latest date with an effective mark at the importing school, per pupil.
    last_marks: HashMap<String, NaiveDate>,
    effective: HashMap<SessionKey, Current>,
    /// Earlier versions of sessions where a mark would be stored behind the effective one:
    /// code, minutes late and time taken.
    earlier_versions: HashMap<SessionKey, Vec<(String, i32, DateTime<Utc>)>>,
    calendar: Option<SchoolCalendar>,
    next_sequence: i64,
    /// UPNs replaced by a UPN change, with the UPN that replaced each.
    replaced: HashMap<String, String>,
}

/// A new mark version with its feed position, and its code and minutes late once any arrival
/// time has been applied.
#[derive(Debug)]
struct Version<'a> {
    sequence: i64,
    mark: &'a CheckedMark,
    code: String,
    minutes_late: i32,
    effective: bool,
}

/// An open enrolment at another school that a move to the importing school ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Move {
    upn: String,
    from_laestab: String,
    admission: NaiveDate,
    leaving: NaiveDate,
}

/// The writes an import makes.
#[derive(Debug, Default)]
struct Plan<'a> {
    new_pupils: Vec<&'a CheckedPupil>,
    changed_pupils: Vec<&'a CheckedPupil>,
    new_enrolments: Vec<&'a CheckedPupil>,
    /// Enrolments whose year group or registration changed, with their admission date.
    enrolment_changes: Vec<(&'a CheckedPupil, NaiveDate)>,
    /// Enrolments at the importing school that end: pupil, admission date and leaving date.
    leavings: Vec<(&'a CheckedPupil, NaiveDate, NaiveDate)>,
    /// Enrolments at other schools ended by a move here.
    moves: Vec<Move>,
    versions: Vec<Version<'a>>,
    /// One result per item, for a partial import.
    results: Vec<ImportItemResult>,
    response: ImportRegisterResponse,
}

impl Plan<'_> {
    /// Returns whether the plan changes pupils or enrolments.
    fn changes_roll(&self) -> bool {
        !(self.new_pupils.is_empty()
            && self.changed_pupils.is_empty()
            && self.new_enrolments.is_empty()
            && self.enrolment_changes.is_empty()
            && self.leavings.is_empty()
            && self.moves.is_empty())
    }

    /// Moves the feed positions of the planned versions up by `by`.
    fn move_positions(&mut self, by: i64) {
        for version in &mut self.versions {
            version.sequence += by;
        }
        self.response.feed_cursor += by;
    }

    /// Records a rejected item in a partial import, or fails a whole one.
    fn reject(
        &mut self,
        partial: bool,
        kind: ImportItemKind,
        index: usize,
        upn: &str,
        error: ItemError,
    ) -> Result<(), Status> {
        if partial {
            self.results.push(error.into_result(kind, index, upn));
            Ok(())
        } else {
            let item = match kind {
                ImportItemKind::Pupil => format!("pupils[{index}]"),
                _ => format!("marks[{index}]"),
            };
            Err(error.into_status(&item))
        }
    }
}

/// Reads the whole stream after its header and checks every item. A stream of more than
/// `max_items` pupils and marks is rejected as soon as the item past the limit arrives.
pub(crate) async fn read_request(
    header: ImportHeader,
    stream: &mut Streaming<ImportRegisterRequest>,
    max_items: usize,
) -> Result<ImportRequest, Status> {
    if header.request_id.trim().is_empty() && !header.dry_run {
        return Err(invalid_argument(
            "header.request_id",
            &header.request_id,
            "an idempotency key is required, such as the SHA-256 of the imported file",
        ));
    }
    let school = header.school.clone().ok_or_else(|| {
        invalid_argument(
            "header.school",
            "",
            "the school the register belongs to is required",
        )
    })?;
    let laestab = laestab("header.school.laestab", &school.laestab)?;
    if school.name.trim().is_empty() {
        return Err(invalid_argument(
            "header.school.name",
            &school.name,
            "the school's name is required",
        ));
    }

    let mut request = ImportRequest {
        request_id: header.request_id,
        laestab,
        school_name: school.name.trim().to_owned(),
        phase: phase_as_str(school.phase),
        source: source_from_proto(header.source).unwrap_or(MarkSource::Import),
        source_name: header.source_name,
        recorded_by: header.recorded_by,
        partial: header.partial,
        dry_run: header.dry_run,
        pupils: Vec::new(),
        marks: Vec::new(),
        settled: Vec::new(),
        pupils_sent: 0,
        marks_sent: 0,
    };
    let now = Utc::now();
    let mut pupil_rows: HashMap<String, usize> = HashMap::new();
    let mut mark_rows: HashMap<SessionKey, usize> = HashMap::new();
    while let Some(message) = stream.message().await? {
        match message.item {
            None => {}
            Some(Item::Header(_)) => {
                return Err(invalid_argument(
                    "item",
                    "header",
                    "the header must be sent once, in the first message",
                ));
            }
            Some(Item::Pupil(pupil)) => {
                check_item_count(request.pupils_sent + request.marks_sent + 1, max_items)?;
                let index = request.pupils_sent;
                request.pupils_sent += 1;
                request.add_pupil(index, &pupil, &mut pupil_rows)?;
            }
            Some(Item::Marks(ImportMarks { marks: batch })) => {
                check_item_count(
                    request.pupils_sent + request.marks_sent + batch.len(),
                    max_items,
                )?;
                for mark in batch {
                    let index = request.marks_sent;
                    request.marks_sent += 1;
                    request.add_mark(index, &mark, now, &mut mark_rows)?;
                }
            }
        }
    }
    Ok(request)
}

/// Rejects an import once `count` pupils and marks exceed `max_items`. The count is of the
/// items received so far, so the whole stream may hold more.
fn check_item_count(count: usize, max_items: usize) -> Result<(), Status> {
    if count > max_items {
        return Err(invalid_argument(
            "item",
            &count.to_string(),
            format!(
                "an import carries at most {max_items} pupils and marks together (the server's \
                 --max-import-items), and this one has at least {count}: split it into imports \
                 of at most {max_items}, or ask the operator to raise --max-import-items"
            ),
        ));
    }
    Ok(())
}

impl ImportRequest {
    /// Checks one pupil and keeps it, merging an exact repeat of an earlier row.
    fn add_pupil(
        &mut self,
        index: usize,
        pupil: &ImportPupil,
        seen: &mut HashMap<String, usize>,
    ) -> Result<(), Status> {
        let sent_upn = pupil
            .pupil
            .as_ref()
            .map(|p| p.upn.clone())
            .unwrap_or_default();
        let checked = match check_pupil(index, pupil) {
            Ok(checked) => checked,
            Err(error) => {
                return self.settle_rejected(ImportItemKind::Pupil, index, &sent_upn, error);
            }
        };
        if let Some(&first) = seen.get(&checked.upn) {
            let earlier = self
                .pupils
                .iter()
                .find(|pupil| pupil.index == first)
                .expect("every pupil seen is kept");
            if earlier.same_as(&checked) {
                let mut merged = item_result(
                    ImportItemKind::Pupil,
                    index,
                    &checked.upn,
                    ImportItemOutcome::Unchanged,
                    format!("the same as pupil {first} of this import, so merged with it"),
                );
                merged.duplicate_of = Some(row_index(first));
                self.settled.push(merged);
                return Ok(());
            }
            let error = ItemError::new(
                "conflicting_duplicate",
                "upn",
                checked.upn.clone(),
                format!(
                    "pupil {} is also pupil {first} of this import, with other details; send \
                     each pupil once",
                    checked.upn
                ),
            );
            return self.settle_duplicate(ImportItemKind::Pupil, index, &checked.upn, error, first);
        }
        seen.insert(checked.upn.clone(), index);
        self.pupils.push(checked);
        Ok(())
    }

    /// Checks one mark and keeps it, merging an exact repeat of an earlier one.
    fn add_mark(
        &mut self,
        index: usize,
        mark: &Mark,
        now: DateTime<Utc>,
        seen: &mut HashMap<SessionKey, usize>,
    ) -> Result<(), Status> {
        let checked = match check_mark(index, mark, now) {
            Ok(checked) => checked,
            Err(error) => {
                let upn = mark.upn.trim().to_ascii_uppercase();
                return self.settle_rejected(ImportItemKind::Mark, index, &upn, error);
            }
        };
        let key = (checked.upn.clone(), checked.date, checked.session);
        if let Some(&first) = seen.get(&key) {
            let earlier = self
                .marks
                .iter()
                .find(|mark| mark.index == first)
                .expect("every mark seen is kept");
            if self.partial
                && earlier.code == checked.code
                && earlier.minutes_late == checked.minutes_late
                && earlier.comment == checked.comment
                && earlier.recorded_at == checked.recorded_at
                && earlier.arrived_at == checked.arrived_at
            {
                let mut merged = item_result(
                    ImportItemKind::Mark,
                    index,
                    &checked.upn,
                    ImportItemOutcome::Unchanged,
                    format!("the same as mark {first} of this import, so merged with it"),
                );
                merged.duplicate_of = Some(row_index(first));
                self.settled.push(merged);
                return Ok(());
            }
            let error = ItemError::new(
                "duplicate_mark",
                "date",
                mark.date.clone(),
                format!(
                    "pupil {} has a second mark for the {} session of this date in the same import",
                    checked.upn, checked.session
                ),
            );
            return self.settle_duplicate(ImportItemKind::Mark, index, &checked.upn, error, first);
        }
        seen.insert(key, index);
        self.marks.push(checked);
        Ok(())
    }

    /// Records an item rejected as conflicting with an earlier one, as [`Self::settle_rejected`]
    /// does, naming the earlier item.
    fn settle_duplicate(
        &mut self,
        kind: ImportItemKind,
        index: usize,
        upn: &str,
        error: ItemError,
        first: usize,
    ) -> Result<(), Status> {
        self.settle_rejected(kind, index, upn, error)?;
        if let Some(result) = self.settled.last_mut() {
            result.duplicate_of = Some(row_index(first));
        }
        Ok(())
    }

    /// Records an item rejected while reading in a partial import, or fails a whole one.
    fn settle_rejected(
        &mut self,
        kind: ImportItemKind,
        index: usize,
        upn: &str,
        error: ItemError,
    ) -> Result<(), Status> {
        if self.partial {
            self.settled.push(error.into_result(kind, index, upn));
            Ok(())
        } else {
            let item = match kind {
                ImportItemKind::Pupil => format!("pupils[{index}]"),
                _ => format!("marks[{index}]"),
            };
            Err(error.into_status(&item))
        }
    }
}

fn date_field(field: &'static str, value: &str) -> Result<NaiveDate, ItemError> {
    parse_date(value).map_err(|error| ItemError::new("invalid_date", field, value, error.problem()))
}

fn check_pupil(index: usize, import: &ImportPupil) -> Result<CheckedPupil, ItemError> {
    let pupil = import.pupil.clone().unwrap_or_default();
    let upn = Upn::parse(&pupil.upn).map_err(|error| {
        ItemError::new("invalid_upn", "upn", pupil.upn.clone(), error.to_string())
    })?;
    let required = |name: &'static str, value: &str| -> Result<String, ItemError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            Err(ItemError::new(
                "missing_field",
                name,
                value,
                format!("pupil {upn} has no {name}"),
            ))
        } else {
            Ok(trimmed.to_owned())
        }
    };
    let sex = required("sex", &pupil.sex)?.to_ascii_uppercase();
    if sex != "M" && sex != "F" {
        return Err(ItemError::new(
            "invalid_sex",
            "sex",
            pupil.sex.clone(),
            format!("pupil {upn}: sex is M or F, as the school census records it"),
        ));
    }
    let details = PupilDetails {
        forename: required("forename", &pupil.forename)?,
        surname: required("surname", &pupil.surname)?,
        date_of_birth: date_field("date_of_birth", &pupil.date_of_birth)?,
        sex,
    };
    let admission_date = date_field("admission_date", &import.admission_date)?;
    if details.date_of_birth >= admission_date {
        return Err(ItemError::new(
            "invalid_date",
            "date_of_birth",
            pupil.date_of_birth.clone(),
            format!("pupil {upn} would be born on or after their admission on {admission_date}"),
        ));
    }
    let year_group = required("year_group", &import.year_group)?;
    let Some(year_group) = normalise_year_group(&year_group) else {
        return Err(ItemError::new(
            "invalid_year_group",
            "year_group",
            import.year_group.clone(),
            format!(
                "pupil {upn}: a year group is N1, N2, R, 1 to 14, or X for a pupil not following \
                 the national curriculum"
            ),
        ));
    };
    let leaving_date = if import.leaving_date.trim().is_empty() {
        None
    } else {
        let leaving = date_field("leaving_date", &import.leaving_date)?;
        if leaving < admission_date {
            return Err(ItemError::new(
                "invalid_date",
                "leaving_date",
                import.leaving_date.clone(),
                format!("pupil {upn} would leave before their admission on {admission_date}"),
            ));
        }
        Some(leaving)
    };
    Ok(CheckedPupil {
        index,
        details,
        admission_date,
        leaving_date,
        year_group,
        registration: registration_as_str(import.registration),
        class_name: import.class_name.trim().to_owned(),
        sen_provision: sen_as_str(import.sen_provision),
        free_school_meals: fsm_as_str(import.free_school_meals),
        upn: upn.to_string(),
    })
}

/// The earliest time accepted for when a mark was taken or a pupil arrived.
const EARLIEST_TIME: DateTime<Utc> = DateTime::from_timestamp_nanos(946_684_800_000_000_000);

/// How far ahead of this server's clock a sender's clock may run.
const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Reads a time a mark was taken or a pupil arrived: from 2000 on, and no later than a few
/// minutes after `now`, so that no version can be dated ahead of every later change.
fn bounded_time(
    field: &'static str,
    at: &prost_types::Timestamp,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ItemError> {
    let time = time_field(field, at)?;
    if time < EARLIEST_TIME || time > now + CLOCK_SKEW {
        return Err(ItemError::new(
            "invalid_time",
            field,
            time.to_rfc3339(),
            format!(
                "{field} must be from 2000 on and not in the future (this server's clock reads \
                 {}); check the sender's clock",
                now.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        ));
    }
    Ok(time)
}

fn time_field(
    field: &'static str,
    at: &prost_types::Timestamp,
) -> Result<DateTime<Utc>, ItemError> {
    from_timestamp(at).ok_or_else(|| {
        ItemError::new(
            "invalid_time",
            field,
            at.seconds.to_string(),
            "not a valid time",
        )
    })
}

fn check_mark(index: usize, mark: &Mark, now: DateTime<Utc>) -> Result<CheckedMark, ItemError> {
    let upn = mark.upn.trim().to_ascii_uppercase();
    let date = date_field("date", &mark.date)?;
    let session = session_from_proto(mark.session).ok_or_else(|| {
        ItemError::new(
            "invalid_session",
            "session",
            mark.session.to_string(),
            "session must be SESSION_AM or SESSION_PM",
        )
    })?;
    let code = mark.code.trim();
    let arrived_at = mark
        .arrived_at
        .as_ref()
        .map(|at| bounded_time("arrived_at", at, now))
        .transpose()?;
    if !(code.is_empty() && arrived_at.is_some()) {
        codes::lookup_on(code, date).map_err(|error| {
            ItemError::new(
                "invalid_code",
                "code",
                mark.code.clone(),
                format!("{error} (pupil {upn}, {date} {session})"),
            )
        })?;
        codes::check_minutes_late(code, mark.minutes_late).map_err(|problem| {
            ItemError::new(
                "invalid_minutes_late",
                "minutes_late",
                mark.minutes_late.to_string(),
                format!("{problem} (pupil {upn}, {date} {session})"),
            )
        })?;
    }
    let recorded_at = match &mark.recorded_at {
        Some(at) => bounded_time("recorded_at", at, now)?,
        None => now,
    };
    Ok(CheckedMark {
        index,
        upn,
        date,
        session,
        code: code.to_owned(),
        minutes_late: mark.minutes_late,
        comment: mark.reason.trim().to_owned(),
        recorded_at,
        recorded_at_sent: mark.recorded_at.is_some(),
        arrived_at,
    })
}

/// True for a registration that makes a school the pupil's only or main one, so that joining
/// it ends the same kind of registration elsewhere.
fn is_sole_or_main(registration: &str) -> bool {
    registration == "sole" || registration == "main"
}

/// Works out the writes of an import from what the registers already hold.
///
/// A mark equal (code, minutes late, and comment when it has one) to the effective version of
/// its session, and taken no later than it or sent without the time it was taken, is unchanged
/// and not stored again. Any other mark becomes a new version, and
/// it is effective unless the effective version was taken later: the effective mark is the
/// version with the latest time taken, ties going to the later feed position.
///
/// A mark that repeats the effective code but was taken later is stored: leaving it out would
/// let a version taken in between, arriving afterwards, take effect, so the outcome would
/// depend on the order of arrival.
///
/// A pupil newly admitted here as a sole or main registration, while on roll as one at another
/// of the trust's schools since an earlier date, has moved: that enrolment ends the day before
/// the admission, unless it has marks from the admission on.
fn plan<'a>(request: &'a ImportRequest, existing: &Existing) -> Result<Plan<'a>, Status> {
    let mut plan = Plan::default();
    let mut enrolments = existing.enrolments.clone();
    let mut rejected_pupils: HashSet<&str> = HashSet::new();

    for pupil in &request.pupils {
        if let Err(error) = plan_pupil(request, pupil, existing, &mut enrolments, &mut plan) {
            plan.reject(
                request.partial,
                ImportItemKind::Pupil,
                pupil.index,
                &pupil.upn,
                error,
            )?;
            rejected_pupils.insert(&pupil.upn);
        }
    }

    let mut sequence = existing.next_sequence;
    for mark in &request.marks {
        match plan_mark(request, mark, existing, &enrolments, &rejected_pupils) {
            Err(error) => plan.reject(
                request.partial,
                ImportItemKind::Mark,
                mark.index,
                &mark.upn,
                error,
            )?,
            Ok(None) => {
                plan.response.marks_unchanged += 1;
                if request.partial {
                    plan.results.push(item_result(
                        ImportItemKind::Mark,
                        mark.index,
                        &mark.upn,
                        ImportItemOutcome::Unchanged,
                        "",
                    ));
                }
            }
            Ok(Some((code, minutes_late))) => {
                let key = (mark.upn.clone(), mark.date, mark.session);
                let effective = existing.effective.get(&key).is_none_or(|current| {
                    supersedes(
                        VersionKey {
                            recorded_at: mark.recorded_at,
                            sequence,
                        },
                        VersionKey {
                            recorded_at: current.recorded_at,
                            sequence: current.sequence,
                        },
                    )
                });
                plan.versions.push(Version {
                    sequence,
                    mark,
                    code,
                    minutes_late,
                    effective,
                });
                sequence += 1;
                if request.partial {
                    let note = if effective {
                        ""
                    } else {
                        "stored; a version taken later is in force"
                    };
                    plan.results.push(item_result(
                        ImportItemKind::Mark,
                        mark.index,
                        &mark.upn,
                        ImportItemOutcome::Applied,
                        note,
                    ));
                }
            }
        }
    }
    plan.response.marks_recorded = i32::try_from(plan.versions.len()).unwrap_or(i32::MAX);
    plan.response.feed_cursor = sequence - 1;
    if request.partial {
        for settled in &request.settled {
            if settled.outcome == ImportItemOutcome::Unchanged as i32
                && settled.kind == ImportItemKind::Mark as i32
            {
                plan.response.marks_unchanged += 1;
            }
        }
        plan.results.extend(request.settled.iter().cloned());
        plan.results
            .sort_by_key(|result| (result.kind, result.index));
    }
    Ok(plan)
}

/// Plans one pupil: their details, their enrolment here, a leaving, and a move from another
/// school. Nothing is added to the plan unless every check passes.
fn plan_pupil<'a>(
    request: &ImportRequest,
    pupil: &'a CheckedPupil,
    existing: &Existing,
    enrolments: &mut HashMap<String, Vec<Enrolment>>,
    plan: &mut Plan<'a>,
) -> Result<(), ItemError> {
    if let Some(replacement) = existing.replaced.get(&pupil.upn) {
        return Err(ItemError::new(
            "upn_replaced",
            "upn",
            pupil.upn.clone(),
            format!(
                "UPN {} was replaced by {replacement}, and a replaced UPN is never used again; \
                 send the pupil as {replacement}, or correct the UPN in the MIS",
                pupil.upn
            ),
        ));
    }
    let held = enrolments.get(&pupil.upn).cloned().unwrap_or_default();
    let matched = held
        .iter()
        .find(|enrolment| enrolment.contains(pupil.admission_date))
        .cloned();
    let mut notes: Vec<String> = Vec::new();

    let mut moves = Vec::new();
    if matched.is_none() && is_sole_or_main(pupil.registration) {
        for other in existing.elsewhere.get(&pupil.upn).into_iter().flatten() {
            if !is_sole_or_main(&other.registration) || other.admission >= pupil.admission_date {
                continue;
            }
            if let Some(last) = other.last_mark
                && last >= pupil.admission_date
            {
                return Err(ItemError::new(
                    "on_roll_elsewhere",
                    "admission_date",
                    pupil.admission_date.to_string(),
                    format!(
                        "pupil {} is on roll at school {} with marks up to {last}, on or after \
                         this admission; record the leaving at school {} first, or correct the \
                         admission date",
                        pupil.upn, other.laestab, other.laestab
                    ),
                ));
            }
            let leaving = pupil
                .admission_date
                .pred_opt()
                .unwrap_or(pupil.admission_date);
            moves.push(Move {
                upn: pupil.upn.clone(),
                from_laestab: other.laestab.clone(),
                admission: other.admission,
                leaving,
            });
        }
    }

    let mut leaving = None;
    if let Some(leaving_date) = pupil.leaving_date {
        let admission = matched
            .as_ref()
            .map_or(pupil.admission_date, |enrolment| enrolment.admission);
        let registration = matched.as_ref().map_or(pupil.registration, |enrolment| {
            enrolment.registration.as_str()
        });
        if is_sole_or_main(registration)
            && let Some(other) = existing
                .elsewhere
                .get(&pupil.upn)
                .into_iter()
                .flatten()
                .find(|other| {
                    is_sole_or_main(&other.registration)
                        && other.admission > admission
                        && other.admission <= leaving_date
                })
        {
            return Err(ItemError::new(
                "on_roll_elsewhere",
                "leaving_date",
                leaving_date.to_string(),
                format!(
                    "pupil {} has been on roll at school {} since {}, so leaving here on \
                     {leaving_date} would put them on roll at both schools; send a leaving date \
                     before {}",
                    pupil.upn, other.laestab, other.admission, other.admission
                ),
            ));
        }
        if let Some(last) = existing.last_marks.get(&pupil.upn)
            && *last > leaving_date
        {
            return Err(ItemError::new(
                "marks_after_leaving",
                "leaving_date",
                leaving_date.to_string(),
                format!(
                    "pupil {} has marks at school {} up to {last}, after this leaving date; \
                     check the leaving date, or amend those marks first",
                    pupil.upn, request.laestab
                ),
            ));
        }
        if matched
            .as_ref()
            .is_none_or(|enrolment| enrolment.leaving != Some(leaving_date))
        {
            leaving = Some((admission, leaving_date));
            notes.push(format!("left on {leaving_date}"));
        }
    }

    // Every check has passed: add the pupil's writes to the plan.
    let mut new_pupil = false;
    match existing.pupils.get(&pupil.upn) {
        None => {
            plan.new_pupils.push(pupil);
            new_pupil = true;
            notes.insert(0, "new pupil".to_owned());
        }
        Some(details) if *details != pupil.details => {
            plan.changed_pupils.push(pupil);
            notes.push("details changed".to_owned());
        }
        Some(_) => {}
    }
    let pupil_enrolments = enrolments.entry(pupil.upn.clone()).or_default();
    match &matched {
        Some(enrolment)
            if enrolment.year_group != pupil.year_group
                || enrolment.registration != pupil.registration
                || (!pupil.class_name.is_empty() && enrolment.class_name != pupil.class_name)
                || (!pupil.sen_provision.is_empty()
                    && enrolment.sen_provision != pupil.sen_provision)
                || (!pupil.free_school_meals.is_empty()
                    && enrolment.free_school_meals != pupil.free_school_meals) =>
        {
            plan.enrolment_changes.push((pupil, enrolment.admission));
            notes.push("enrolment changed".to_owned());
        }
        Some(_) => {}
        None => {
            if held.is_empty() {
                plan.response.pupils_added += 1;
                if !new_pupil {
                    notes.push("admitted".to_owned());
                }
            } else {
                notes.push("admitted again".to_owned());
            }
            plan.new_enrolments.push(pupil);
            pupil_enrolments.push(Enrolment {
                admission: pupil.admission_date,
                leaving: None,
                year_group: pupil.year_group.clone(),
                registration: pupil.registration.to_owned(),
                class_name: pupil.class_name.clone(),
                sen_provision: pupil.sen_provision.to_owned(),
                free_school_meals: pupil.free_school_meals.to_owned(),
            });
        }
    }
    if let Some((admission, leaving_date)) = leaving {
        plan.leavings.push((pupil, admission, leaving_date));
        if let Some(enrolment) = pupil_enrolments
            .iter_mut()
            .find(|enrolment| enrolment.admission == admission)
        {
            enrolment.leaving = Some(leaving_date);
        }
    }
    for change in &moves {
        notes.push(format!("moved from school {}", change.from_laestab));
    }
    plan.moves.extend(moves);

    let added = matched.is_none() && held.is_empty();
    if !notes.is_empty() && !added {
        plan.response.pupils_updated += 1;
    }
    if request.partial {
        let outcome = if notes.is_empty() {
            ImportItemOutcome::Unchanged
        } else {
            ImportItemOutcome::Applied
        };
        plan.results.push(item_result(
            ImportItemKind::Pupil,
            pupil.index,
            &pupil.upn,
            outcome,
            notes.join("; "),
        ));
    }
    Ok(())
}

/// Plans one mark: `None` when it equals the effective version, otherwise the code and
/// minutes late to store, once any arrival time has been applied.
fn plan_mark(
    request: &ImportRequest,
    mark: &CheckedMark,
    existing: &Existing,
    enrolments: &HashMap<String, Vec<Enrolment>>,
    rejected_pupils: &HashSet<&str>,
) -> Result<Option<(String, i32)>, ItemError> {
    let Some(pupil_enrolments) = enrolments.get(&mark.upn).filter(|list| !list.is_empty()) else {
        if let Some(replacement) = existing.replaced.get(&mark.upn) {
            return Err(ItemError::new(
                "upn_replaced",
                "upn",
                mark.upn.clone(),
                format!(
                    "UPN {} was replaced by {replacement}; send the mark for {replacement}",
                    mark.upn
                ),
            ));
        }
        let hint = if rejected_pupils.contains(mark.upn.as_str()) {
            "the pupil's row in this import was rejected; correct it and send both again"
        } else {
            "send the pupil first"
        };
        return Err(ItemError::new(
            "not_on_roll",
            "upn",
            mark.upn.clone(),
            format!(
                "no pupil with this UPN is on roll at school {}; {hint}",
                request.laestab
            ),
        ));
    };
    if !pupil_enrolments
        .iter()
        .any(|enrolment| enrolment.contains(mark.date))
    {
        return Err(ItemError::new(
            "not_on_roll",
            "date",
            mark.date.to_string(),
            format!(
                "pupil {} is not on roll at school {} on {}",
                mark.upn, request.laestab, mark.date
            ),
        ));
    }
    let at = SessionDate {
        date: mark.date,
        session: mark.session,
    };
    // X is only for pupils below compulsory school age, or past it.
    if mark.code == "X" {
        let born = request
            .pupils
            .iter()
            .find(|pupil| pupil.upn == mark.upn)
            .map(|pupil| pupil.details.date_of_birth)
            .or_else(|| {
                existing
                    .pupils
                    .get(&mark.upn)
                    .map(|details| details.date_of_birth)
            });
        if let Some(born) = born
            && is_compulsory_school_age(born, mark.date)
        {
            return Err(ItemError::new(
                "not_compulsory_age",
                "code",
                "X",
                format!(
                    "X is only for pupils not of compulsory school age, and pupil {} is of \
                     compulsory school age on {}",
                    mark.upn, mark.date
                ),
            ));
        }
    }
    let (code, minutes_late) = match (mark.arrived_at, &existing.calendar) {
        (Some(arrived_at), Some(calendar)) if ARRIVAL_CODES.contains(&mark.code.as_str()) => {
            let arrival = calendar.arrival(at, arrived_at);
            let minutes = i32::try_from(arrival.minutes_late()).unwrap_or(i32::MAX);
            (arrival.code(mark.session).to_owned(), minutes)
        }
        (Some(_), None) if ARRIVAL_CODES.contains(&mark.code.as_str()) => {
            return Err(ItemError::new(
                "no_calendar",
                "arrived_at",
                mark.date.to_string(),
                format!(
                    "school {} has no calendar, so its register times are unknown; set the \
                     calendar first or send the code",
                    request.laestab
                ),
            ));
        }
        _ => (mark.code.clone(), mark.minutes_late),
    };
    if let Some(calendar) = &existing.calendar
        && let Some(problem) = calendar::check_mark(calendar, at, &code)
    {
        return Err(ItemError::new(
            "calendar_conflict",
            "date",
            mark.date.to_string(),
            format!("pupil {}: {problem}", mark.upn),
        ));
    }
    // A mark sent without the time it was taken is unchanged when it equals the effective
    // version, so sending the same marks again stores nothing.
    let key = (mark.upn.clone(), mark.date, mark.session);
    match existing.effective.get(&key) {
        Some(current)
            if current.code == code
                && current.minutes_late == minutes_late
                && (mark.comment.is_empty() || mark.comment == current.reason)
                && (!mark.recorded_at_sent || mark.recorded_at <= current.recorded_at) =>
        {
            Ok(None)
        }
        // A version taken before the effective one, and already held, is not stored again.
        Some(current)
            if mark.recorded_at < current.recorded_at
                && existing.earlier_versions.get(&key).is_some_and(|versions| {
                    versions.contains(&(code.clone(), minutes_late, mark.recorded_at))
                }) =>
        {
            Ok(None)
        }
        _ => Ok(Some((code, minutes_late))),
    }
}

/// Applies a checked import in one transaction.
pub(crate) async fn apply(
    db: &Db,
    appender: Option<&Appender>,
    request: &ImportRequest,
) -> Result<ImportRegisterResponse, Status> {
    let store_error = |error| storage_error("importing a register", error);
    let now = Utc::now();
    let laestab = &request.laestab;

    let mut upns: Vec<String> = request
        .pupils
        .iter()
        .map(|pupil| pupil.upn.clone())
        .chain(request.marks.iter().map(|mark| mark.upn.clone()))
        .collect();
    upns.sort_unstable();
    upns.dedup();
    let first_date = request.marks.iter().map(|mark| mark.date).min();
    let last_date = request.marks.iter().map(|mark| mark.date).max();

    // An import of marks alone changes only its school's registers, so imports of different
    // schools read and plan side by side and wait for each other only to append to the feed.
    // An import with pupils may end enrolments at other schools, so it runs alone.
    let school_lock = school_lock_key(laestab).filter(|_| request.pupils.is_empty());

    with_db!(db, |pool| {
        let mut tx = match school_lock {
            Some(key) => pool.begin_shared_write(FEED_LOCK_KEY, key).await,
            None => pool.begin_write(FEED_LOCK_KEY).await,
        }
        .map_err(store_error)?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM marks")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;

        if !request.dry_run {
            let applied: Option<(i64, Option<Vec<u8>>)> =
                sqlx::query_as("SELECT feed_cursor, results FROM imports WHERE request_id = $1")
                    .bind(&request.request_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
            if let Some((_, results)) = applied {
                // A partial import keeps its results, so a replay returns them.
                let mut response = results
                    .and_then(|bytes| ImportRegisterResponse::decode(bytes.as_slice()).ok())
                    .unwrap_or_default();
                response.already_applied = true;
                response.feed_cursor = head;
                return Ok(response);
            }
        }

        // Load what the registers hold for these pupils, a chunk of UPNs at a time.
        let rows = load_calendar_rows!(tx, laestab, store_error);
        let mut existing = Existing {
            next_sequence: head + 1,
            calendar: rows.map(calendar::from_rows).transpose()?,
            ..Existing::default()
        };
        for chunk in upns.chunks(CHUNK) {
            let mut query = QueryBuilder::new(
                "SELECT upn, forename, surname, date_of_birth, sex FROM pupils WHERE upn IN (",
            );
            let mut list = query.separated(", ");
            for upn in chunk {
                list.push_bind(upn.clone());
            }
            query.push(")");
            let rows: Vec<(String, String, String, NaiveDate, String)> = query
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
            for (upn, forename, surname, date_of_birth, sex) in rows {
                let details = PupilDetails {
                    forename,
                    surname,
                    date_of_birth,
                    sex,
                };
                existing.pupils.insert(upn, details);
            }

            let mut query =
                QueryBuilder::new("SELECT from_upn, to_upn FROM upn_changes WHERE from_upn IN (");
            let mut list = query.separated(", ");
            for upn in chunk {
                list.push_bind(upn.clone());
            }
            query.push(")");
            let rows: Vec<(String, String)> = query
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
            existing.replaced.extend(rows);

            let mut query = QueryBuilder::new(
                "SELECT upn, admission_date, leaving_date, year_group, registration, class_name, \
                 sen_provision, free_school_meals FROM enrolments \
                 WHERE laestab = ",
            );
            query.push_bind(laestab.clone()).push(" AND upn IN (");
            let mut list = query.separated(", ");
            for upn in chunk {
                list.push_bind(upn.clone());
            }
            query.push(")");
            let rows: Vec<EnrolmentLoad> = query
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
            for row in rows {
                let enrolment = Enrolment {
                    admission: row.admission_date,
                    leaving: row.leaving_date,
                    year_group: row.year_group,
                    registration: row.registration,
                    class_name: row.class_name,
                    sen_provision: row.sen_provision,
                    free_school_meals: row.free_school_meals,
                };
                existing
                    .enrolments
                    .entry(row.upn)
                    .or_default()
                    .push(enrolment);
            }

            // Enrolments elsewhere and the latest marks here are read only to plan pupils'
            // moves and leavings, which an import of marks alone does not make.
            if !request.pupils.is_empty() {
                // Open enrolments elsewhere, with their latest mark, to follow moves.
                let mut query = QueryBuilder::new(
                    "SELECT e.upn, e.laestab, e.admission_date, e.registration, \
                 (SELECT MAX(m.session_date) FROM effective_marks m \
                  WHERE m.laestab = e.laestab AND m.upn = e.upn) \
                 FROM enrolments e WHERE e.leaving_date IS NULL AND e.laestab <> ",
                );
                query.push_bind(laestab.clone()).push(" AND e.upn IN (");
                let mut list = query.separated(", ");
                for upn in chunk {
                    list.push_bind(upn.clone());
                }
                query.push(")");
                let rows: Vec<(String, String, NaiveDate, String, Option<NaiveDate>)> = query
                    .build_query_as()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(store_error)?;
                for (upn, school, admission, registration, last_mark) in rows {
                    existing
                        .elsewhere
                        .entry(upn)
                        .or_default()
                        .push(OpenElsewhere {
                            laestab: school,
                            admission,
                            registration,
                            last_mark,
                        });
                }

                // The latest mark here, to check leaving dates.
                let mut query = QueryBuilder::new(
                    "SELECT upn, MAX(session_date) FROM effective_marks WHERE laestab = ",
                );
                query.push_bind(laestab.clone()).push(" AND upn IN (");
                let mut list = query.separated(", ");
                for upn in chunk {
                    list.push_bind(upn.clone());
                }
                query.push(") GROUP BY upn");
                let rows: Vec<(String, Option<NaiveDate>)> = query
                    .build_query_as()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(store_error)?;
                for (upn, last) in rows {
                    if let Some(last) = last {
                        existing.last_marks.insert(upn, last);
                    }
                }
            }

            let (Some(first_date), Some(last_date)) = (first_date, last_date) else {
                continue;
            };
            let mut query = QueryBuilder::new(
                "SELECT m.upn, m.session_date, m.session, m.code, m.minutes_late, m.reason, m.recorded_at, m.sequence \
                 FROM effective_marks e JOIN marks m ON m.sequence = e.sequence WHERE e.laestab = ",
            );
            query.push_bind(laestab.clone());
            query.push(" AND e.session_date >= ").push_bind(first_date);
            query.push(" AND e.session_date <= ").push_bind(last_date);
            query.push(" AND e.upn IN (");
            let mut list = query.separated(", ");
            for upn in chunk {
                list.push_bind(upn.clone());
            }
            query.push(")");
            let rows: Vec<EffectiveRow> = query
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
            for row in rows {
                let Ok(session) = row.session.parse::<Session>() else {
                    continue;
                };
                let current = Current {
                    code: row.code,
                    minutes_late: row.minutes_late,
                    reason: row.reason,
                    recorded_at: row.recorded_at,
                    sequence: row.sequence,
                };
                existing
                    .effective
                    .insert((row.upn, row.session_date, session), current);
            }
        }

        // Earlier versions, for marks that would be stored behind the effective version.
        let behind: Vec<&CheckedMark> = request
            .marks
            .iter()
            .filter(|mark| {
                mark.recorded_at_sent
                    && existing
                        .effective
                        .get(&(mark.upn.clone(), mark.date, mark.session))
                        .is_some_and(|current| mark.recorded_at < current.recorded_at)
            })
            .collect();
        for mark in behind {
            let rows: Vec<(String, i32, DateTime<Utc>)> = sqlx::query_as(
                "SELECT code, minutes_late, recorded_at FROM marks \
                 WHERE laestab = $1 AND upn = $2 AND session_date = $3 AND session = $4",
            )
            .bind(laestab)
            .bind(&mark.upn)
            .bind(mark.date)
            .bind(mark.session.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
            existing
                .earlier_versions
                .insert((mark.upn.clone(), mark.date, mark.session), rows);
        }

        let mut plan = plan(request, &existing)?;
        if request.partial {
            plan.response.items = std::mem::take(&mut plan.results);
        }
        if request.dry_run {
            // Dropping the transaction rolls it back; nothing was written yet anyway.
            drop(tx);
            plan.response.dry_run = true;
            plan.response.feed_cursor = head;
            return Ok(plan.response);
        }

        // An import with pupils stores its school before their enrolments. An import of
        // marks alone stores it with its versions, which may be written in the appender's
        // transaction, so this one then writes nothing.
        if school_lock.is_none() {
            sqlx::query(UPSERT_SCHOOL)
                .bind(laestab)
                .bind(&request.school_name)
                .bind(request.phase)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }

        for chunk in plan.new_pupils.chunks(CHUNK) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO pupils (upn, forename, surname, date_of_birth, sex, updated_at) ",
            );
            insert.push_values(chunk, |mut row, pupil| {
                row.push_bind(pupil.upn.clone())
                    .push_bind(pupil.details.forename.clone())
                    .push_bind(pupil.details.surname.clone())
                    .push_bind(pupil.details.date_of_birth)
                    .push_bind(pupil.details.sex.clone())
                    .push_bind(now);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        for pupil in &plan.changed_pupils {
            sqlx::query(
                "UPDATE pupils SET forename = $2, surname = $3, date_of_birth = $4, sex = $5, \
                 updated_at = $6 WHERE upn = $1",
            )
            .bind(&pupil.upn)
            .bind(&pupil.details.forename)
            .bind(&pupil.details.surname)
            .bind(pupil.details.date_of_birth)
            .bind(&pupil.details.sex)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        for chunk in plan.new_enrolments.chunks(CHUNK) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO enrolments (laestab, upn, admission_date, leaving_date, year_group, \
                 registration, class_name, sen_provision, free_school_meals) ",
            );
            insert.push_values(chunk, |mut row, pupil| {
                row.push_bind(laestab.clone())
                    .push_bind(pupil.upn.clone())
                    .push_bind(pupil.admission_date)
                    .push_bind(None::<NaiveDate>)
                    .push_bind(pupil.year_group.clone())
                    .push_bind(pupil.registration)
                    .push_bind(pupil.class_name.clone())
                    .push_bind(pupil.sen_provision)
                    .push_bind(pupil.free_school_meals);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        for (pupil, admission) in &plan.enrolment_changes {
            sqlx::query(
                "UPDATE enrolments SET year_group = $4, registration = $5, \
                 class_name = CASE WHEN $6 = '' THEN class_name ELSE $6 END, \
                 sen_provision = CASE WHEN $7 = '' THEN sen_provision ELSE $7 END, \
                 free_school_meals = CASE WHEN $8 = '' THEN free_school_meals ELSE $8 END \
                 WHERE laestab = $1 AND upn = $2 AND admission_date = $3",
            )
            .bind(laestab)
            .bind(&pupil.upn)
            .bind(*admission)
            .bind(&pupil.year_group)
            .bind(pupil.registration)
            .bind(&pupil.class_name)
            .bind(pupil.sen_provision)
            .bind(pupil.free_school_meals)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }

        for (pupil, admission, leaving) in &plan.leavings {
            sqlx::query(
                "UPDATE enrolments SET leaving_date = $4, leaving_recorded_by = $5 \
                 WHERE laestab = $1 AND upn = $2 AND admission_date = $3",
            )
            .bind(laestab)
            .bind(&pupil.upn)
            .bind(*admission)
            .bind(*leaving)
            .bind(&request.recorded_by)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }
        for change in &plan.moves {
            sqlx::query(
                "UPDATE enrolments SET leaving_date = $4, leaving_reason = $5, \
                 leaving_recorded_by = $6 \
                 WHERE laestab = $1 AND upn = $2 AND admission_date = $3 AND leaving_date IS NULL",
            )
            .bind(&change.from_laestab)
            .bind(&change.upn)
            .bind(change.admission)
            .bind(change.leaving)
            .bind(format!("Moved to school {laestab} in the trust"))
            .bind(&request.recorded_by)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            tracing::info!(
                upn = %change.upn,
                from_laestab = %change.from_laestab,
                to_laestab = %laestab,
                leaving_date = %change.leaving,
                "Pupil moved between the trust's schools; earlier enrolment ended"
            );
        }

        if school_lock.is_some() && plan.changes_roll() {
            return Err(Status::internal(
                "an import of marks alone planned changes to the roll; nothing was stored",
            ));
        }

        // A replay of a partial import returns the stored results with the head of its own
        // time, so they are encoded before the final numbering.
        let new_versions = NewVersions {
            request,
            versions: &plan.versions,
            planned_head: head,
            planned_cursor: plan.response.feed_cursor,
            marks_recorded: plan.response.marks_recorded,
            imported: format!("Imported from {}", request.source_name),
            received_at: now,
            traceparent: rollcall_runtime::telemetry::current_traceparent(),
            results: request.partial.then(|| plan.response.encode_to_vec()),
        };
        // Other schools' imports may append between planning and now, so the versions are
        // numbered after the head read under the append lock. An import with pupils holds
        // the feed lock alone, so it writes in its own transaction.
        let (numbered_after, tx) = if school_lock.is_some() {
            tx.append_marks(appender, &new_versions)
                .await
                .map_err(store_error)?
        } else {
            let numbered_after = tx.store_import(&new_versions).await.map_err(store_error)?;
            (numbered_after, tx)
        };
        plan.move_positions(numbered_after - head);
        tx.commit().await.map_err(store_error)?;
        Ok(plan.response)
    })
}

impl ImportRequest {
    /// Returns the idempotency key.
    pub(crate) fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Returns the school's LAESTAB.
    pub(crate) fn laestab(&self) -> &str {
        &self.laestab
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn date(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 9, day).expect("valid date")
    }

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 9, 1, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    fn pupil(upn: &str, admission: NaiveDate, year_group: &str) -> CheckedPupil {
        CheckedPupil {
            index: 0,
            leaving_date: None,
            upn: upn.to_owned(),
            details: PupilDetails {
                forename: "Sam".into(),
                surname: "Able".into(),
                date_of_birth: NaiveDate::from_ymd_opt(2013, 5, 1).expect("valid date"),
                sex: "F".into(),
            },
            admission_date: admission,
            year_group: year_group.to_owned(),
            registration: "sole",
            class_name: String::new(),
            sen_provision: "",
            free_school_meals: "",
        }
    }

    fn mark(
        index: usize,
        upn: &str,
        day: u32,
        code: &str,
        recorded_at: DateTime<Utc>,
    ) -> CheckedMark {
        CheckedMark {
            index,
            upn: upn.to_owned(),
            date: date(day),
            session: Session::Am,
            code: code.to_owned(),
            minutes_late: 0,
            comment: String::new(),
            recorded_at,
            recorded_at_sent: true,
            arrived_at: None,
        }
    }

    fn request(pupils: Vec<CheckedPupil>, marks: Vec<CheckedMark>) -> ImportRequest {
        ImportRequest {
            request_id: "test".into(),
            laestab: "9192001".into(),
            school_name: "Test Academy".into(),
            phase: "secondary",
            source: MarkSource::Import,
            source_name: "test.xml".into(),
            recorded_by: "test".into(),
            partial: false,
            dry_run: false,
            pupils_sent: pupils.len(),
            marks_sent: marks.len(),
            settled: Vec::new(),
            pupils,
            marks,
        }
    }

    fn existing_with(upn: &str, code: &str, recorded_at: DateTime<Utc>) -> Existing {
        let mut existing = Existing {
            next_sequence: 11,
            ..Existing::default()
        };
        existing
            .pupils
            .insert(upn.to_owned(), pupil(upn, date(1), "8").details);
        existing.enrolments.insert(
            upn.to_owned(),
            vec![Enrolment {
                admission: date(1),
                leaving: None,
                year_group: "8".into(),
                registration: "sole".into(),
                class_name: String::new(),
                sen_provision: String::new(),
                free_school_meals: String::new(),
            }],
        );
        existing.effective.insert(
            (upn.to_owned(), date(2), Session::Am),
            Current {
                code: code.to_owned(),
                minutes_late: 0,
                reason: String::new(),
                recorded_at,
                sequence: 10,
            },
        );
        existing
    }

    #[test]
    fn plan_adds_new_pupil_and_marks() {
        let request = request(
            vec![pupil("P1", date(1), "8")],
            vec![mark(0, "P1", 1, "/", at(9)), mark(1, "P1", 2, "I", at(9))],
        );
        let plan = plan(
            &request,
            &Existing {
                next_sequence: 1,
                ..Existing::default()
            },
        )
        .expect("valid import");
        assert_eq!(plan.new_pupils.len(), 1);
        assert_eq!(plan.new_enrolments.len(), 1);
        assert_eq!(plan.response.pupils_added, 1);
        assert_eq!(plan.response.marks_recorded, 2);
        assert_eq!(plan.response.feed_cursor, 2);
        assert!(plan.versions.iter().all(|version| version.effective));
    }

    #[test]
    fn plan_skips_unchanged_mark() {
        let existing = existing_with("P1", "I", at(9));
        let request = request(
            Vec::new(),
            vec![mark(0, "P1", 2, "I", at(9)), mark(1, "P1", 2, "I", at(8))],
        );
        let plan = plan(&request, &existing).expect("valid import");
        assert_eq!(plan.response.marks_unchanged, 2);
        assert!(plan.versions.is_empty());
        assert_eq!(plan.response.feed_cursor, 10);
    }

    #[test]
    fn plan_stores_later_repeat() {
        let existing = existing_with("P1", "I", at(9));
        let again = request(Vec::new(), vec![mark(0, "P1", 2, "I", at(11))]);
        let repeat = plan(&again, &existing).expect("valid import");
        assert_eq!(repeat.versions.len(), 1);
        assert!(repeat.versions[0].effective);

        // Had the repeat been left out, O (taken at 10) would now take effect over it.
        let mut after = existing_with("P1", "I", at(11));
        after.next_sequence = 12;
        let late = request(Vec::new(), vec![mark(0, "P1", 2, "O", at(10))]);
        let late = plan(&late, &after).expect("valid import");
        assert!(!late.versions[0].effective, "taken before the repeat");
    }

    #[test]
    fn plan_keeps_later_taken_mark_effective() {
        let existing = existing_with("P1", "I", at(12));
        let request = request(Vec::new(), vec![mark(0, "P1", 2, "O", at(9))]);
        let plan = plan(&request, &existing).expect("valid import");
        assert_eq!(plan.versions.len(), 1);
        assert!(
            !plan.versions[0].effective,
            "taken earlier than the effective version"
        );
        assert_eq!(plan.versions[0].sequence, 11);
    }

    #[test]
    fn plan_makes_newer_mark_effective() {
        let existing = existing_with("P1", "N", at(9));
        let request = request(Vec::new(), vec![mark(0, "P1", 2, "I", at(9))]);
        let plan = plan(&request, &existing).expect("valid import");
        assert!(
            plan.versions[0].effective,
            "same time taken, later sequence wins"
        );
    }

    #[test]
    fn plan_rejects_a_replaced_upn() {
        let mut existing = Existing {
            next_sequence: 1,
            ..Existing::default()
        };
        existing.replaced.insert("T1".into(), "P1".into());
        let mut request = request(
            vec![pupil("T1", date(1), "8")],
            vec![mark(0, "T1", 2, "/", at(9))],
        );
        request.partial = true;
        let plan = plan(&request, &existing).expect("partial import");
        let codes: Vec<&str> = plan
            .results
            .iter()
            .map(|result| result.reason_code.as_str())
            .collect();
        assert_eq!(codes, ["upn_replaced", "upn_replaced"]);
        assert!(
            plan.results[0].reason.contains("send the pupil as P1"),
            "{}",
            plan.results[0].reason
        );
        assert!(plan.new_pupils.is_empty());
        assert!(plan.versions.is_empty());
    }

    #[test]
    fn plan_rejects_unknown_pupil() {
        let request = request(Vec::new(), vec![mark(3, "P9", 2, "/", at(9))]);
        let error = plan(&request, &Existing::default()).expect_err("unknown pupil");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error.message().contains("marks[3].upn"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn plan_rejects_mark_before_admission() {
        let request = request(
            vec![pupil("P1", date(8), "8")],
            vec![mark(0, "P1", 5, "/", at(9))],
        );
        let error = plan(&request, &Existing::default()).expect_err("not on roll");
        assert!(
            error.message().contains("not on roll"),
            "{}",
            error.message()
        );
        assert!(
            error.message().contains("2025-09-05"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn plan_derives_late_codes_from_arrival() {
        use rollcall_domain::calendar::{RegisterTimes, Term};
        let time =
            |hour, minute| chrono::NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time");
        let mut existing = existing_with("P1", "/", at(8));
        existing.calendar = Some(
            SchoolCalendar::new(
                "Europe/London",
                RegisterTimes {
                    opens: time(8, 40),
                    closes: time(9, 0),
                },
                RegisterTimes {
                    opens: time(13, 15),
                    closes: time(13, 30),
                },
                vec![Term {
                    name: "Autumn".into(),
                    first_day: date(1),
                    last_day: NaiveDate::from_ymd_opt(2025, 12, 19).expect("valid date"),
                }],
                Vec::new(),
            )
            .expect("valid calendar"),
        );
        // 07:50 UTC on 3 September is 08:50 in London (summer time): L, 10 minutes late.
        let mut late = mark(0, "P1", 3, "", at(9));
        late.arrived_at = Some(
            Utc.with_ymd_and_hms(2025, 9, 3, 7, 50, 0)
                .single()
                .expect("valid"),
        );
        // 08:05 UTC on 4 September is 09:05 in London: U, 25 minutes late.
        let mut after = mark(1, "P1", 4, "L", at(9));
        after.arrived_at = Some(
            Utc.with_ymd_and_hms(2025, 9, 4, 8, 5, 0)
                .single()
                .expect("valid"),
        );
        // A medical appointment keeps its code whatever the arrival time.
        let mut medical = mark(2, "P1", 5, "M", at(9));
        medical.arrived_at = after.arrived_at;
        let request = request(Vec::new(), vec![late, after, medical]);
        let plan = plan(&request, &existing).expect("valid import");
        let codes: Vec<(&str, i32)> = plan
            .versions
            .iter()
            .map(|version| (version.code.as_str(), version.minutes_late))
            .collect();
        assert_eq!(codes, vec![("L", 10), ("U", 25), ("M", 0)]);
    }

    #[test]
    fn plan_needs_calendar_for_arrival() {
        let mut late = mark(0, "P1", 3, "", at(9));
        late.arrived_at = Some(at(9));
        let request = request(Vec::new(), vec![late]);
        let error = plan(&request, &existing_with("P1", "/", at(8))).expect_err("no calendar");
        assert!(
            error.message().contains("marks[0].arrived_at"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn plan_rejects_x_at_compulsory_school_age() {
        // Born 1 May 2013, so of compulsory school age in September 2025.
        let request = request(
            vec![pupil("P1", date(1), "8")],
            vec![mark(0, "P1", 2, "X", at(9))],
        );
        let error = plan(&request, &Existing::default()).expect_err("X at compulsory age");
        assert!(
            error.message().contains("marks[0].code"),
            "{}",
            error.message()
        );
        assert!(
            error.message().contains("compulsory school age"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn plan_updates_changed_registration() {
        let existing = existing_with("P1", "/", at(9));
        let mut subsidiary = pupil("P1", date(3), "8");
        subsidiary.registration = "subsidiary";
        let request = request(vec![subsidiary], Vec::new());
        let plan = plan(&request, &existing).expect("valid import");
        assert_eq!(plan.enrolment_changes.len(), 1);
        assert!(plan.new_enrolments.is_empty());
    }

    #[test]
    fn plan_updates_changed_year_group() {
        let existing = existing_with("P1", "/", at(9));
        let request = request(vec![pupil("P1", date(3), "9")], Vec::new());
        let plan = plan(&request, &existing).expect("valid import");
        assert_eq!(plan.enrolment_changes.len(), 1);
        assert_eq!(plan.enrolment_changes[0].1, date(1));
        assert!(plan.new_enrolments.is_empty());
        assert_eq!(plan.response.pupils_added, 0);
    }

    #[test]
    fn plan_keeps_class_when_missing() {
        let mut existing = existing_with("P1", "/", at(9));
        for enrolment in existing.enrolments.values_mut().flatten() {
            enrolment.class_name = "8B".into();
        }
        let unnamed = request(vec![pupil("P1", date(3), "8")], Vec::new());
        let kept = plan(&unnamed, &existing).expect("valid import");
        assert!(
            kept.enrolment_changes.is_empty(),
            "an empty class changes nothing"
        );

        let mut moved = pupil("P1", date(3), "8");
        moved.class_name = "8C".into();
        let named = request(vec![moved], Vec::new());
        let changed = plan(&named, &existing).expect("valid import");
        assert_eq!(changed.enrolment_changes.len(), 1);
    }

    fn partial(pupils: Vec<CheckedPupil>, marks: Vec<CheckedMark>) -> ImportRequest {
        ImportRequest {
            partial: true,
            ..request(pupils, marks)
        }
    }

    fn outcomes(plan: &Plan<'_>) -> Vec<(i32, i32, ImportItemOutcome, String)> {
        plan.results
            .iter()
            .map(|result| {
                (
                    result.kind,
                    result.index,
                    result.outcome(),
                    result.reason_code.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn partial_plan_applies_valid_marks_and_rejects_the_rest() {
        let existing = existing_with("P1", "I", at(9));
        let request = partial(
            Vec::new(),
            vec![
                mark(0, "P1", 3, "/", at(9)),
                mark(1, "P9", 3, "/", at(9)),
                mark(2, "P1", 2, "I", at(9)),
            ],
        );
        let plan = plan(&request, &existing).expect("a partial import rejects items, not itself");
        let mark = ImportItemKind::Mark as i32;
        assert_eq!(
            outcomes(&plan),
            vec![
                (mark, 0, ImportItemOutcome::Applied, String::new()),
                (mark, 1, ImportItemOutcome::Rejected, "not_on_roll".into()),
                (mark, 2, ImportItemOutcome::Unchanged, String::new()),
            ]
        );
        assert_eq!(plan.versions.len(), 1);
        assert_eq!(plan.response.marks_unchanged, 1);
    }

    #[test]
    fn partial_plan_rejects_marks_of_a_rejected_pupil() {
        let mut leaving = pupil("P1", date(1), "8");
        leaving.leaving_date = Some(date(1));
        let mut existing = existing_with("P1", "/", at(9));
        existing.last_marks.insert("P1".into(), date(2));
        let request = partial(vec![leaving], vec![mark(0, "P1", 3, "/", at(9))]);
        let plan = plan(&request, &existing).expect("partial");
        assert_eq!(plan.results[0].reason_code, "marks_after_leaving");
        assert!(plan.leavings.is_empty(), "a rejected pupil writes nothing");
        // The enrolment is still open, so the mark applies.
        assert_eq!(plan.results[1].outcome(), ImportItemOutcome::Applied);
    }

    #[test]
    fn plan_ends_enrolment_on_leaving_date() {
        let mut leaving = pupil("P1", date(3), "8");
        leaving.leaving_date = Some(date(10));
        let request = partial(
            vec![leaving],
            vec![mark(0, "P1", 10, "/", at(9)), mark(1, "P1", 11, "/", at(9))],
        );
        let plan = plan(&request, &existing_with("P1", "/", at(9))).expect("partial");
        assert_eq!(plan.leavings.len(), 1);
        assert_eq!(
            plan.leavings[0].1,
            date(1),
            "the enrolment held is the one that ends"
        );
        assert_eq!(plan.leavings[0].2, date(10));
        assert_eq!(plan.results[1].outcome(), ImportItemOutcome::Applied);
        assert_eq!(plan.results[2].reason_code, "not_on_roll");
        assert_eq!(plan.results[0].note, "left on 2025-09-10");
    }

    #[test]
    fn plan_follows_a_move_from_another_school() {
        let mut existing = Existing {
            next_sequence: 1,
            ..Existing::default()
        };
        existing.elsewhere.insert(
            "P1".into(),
            vec![OpenElsewhere {
                laestab: "9192002".into(),
                admission: date(1),
                registration: "sole".into(),
                last_mark: Some(date(9)),
            }],
        );
        let request = partial(vec![pupil("P1", date(15), "8")], Vec::new());
        let moved = plan(&request, &existing).expect("partial");
        assert_eq!(
            moved.moves,
            vec![Move {
                upn: "P1".into(),
                from_laestab: "9192002".into(),
                admission: date(1),
                leaving: date(14),
            }]
        );
        assert_eq!(
            moved.results[0].note,
            "new pupil; moved from school 9192002"
        );

        // A subsidiary registration here is dual registration, not a move.
        let mut subsidiary = pupil("P1", date(15), "8");
        subsidiary.registration = "subsidiary";
        let dual = partial(vec![subsidiary], Vec::new());
        assert!(plan_moves(&dual, &existing).is_empty());

        // Marks at the other school from the admission on block the move.
        existing.elsewhere.get_mut("P1").expect("held")[0].last_mark = Some(date(15));
        let blocked = plan(&request, &existing).expect("partial");
        assert_eq!(blocked.results[0].reason_code, "on_roll_elsewhere");
        assert!(blocked.new_enrolments.is_empty());
    }

    fn plan_moves(request: &ImportRequest, existing: &Existing) -> Vec<Move> {
        plan(request, existing).expect("partial").moves
    }

    #[test]
    fn whole_plan_fails_on_the_first_invalid_item() {
        let request = request(Vec::new(), vec![mark(4, "P9", 2, "/", at(9))]);
        let error = plan(&request, &Existing::default()).expect_err("unknown pupil");
        assert!(
            error.message().contains("marks[4].upn"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn identical_duplicate_pupils_merge() {
        let first = pupil("P1", date(1), "8");
        let second = CheckedPupil {
            index: 1,
            ..first.clone()
        };
        assert!(first.same_as(&second));
        let other = CheckedPupil {
            year_group: "9".into(),
            ..second
        };
        assert!(!first.same_as(&other));
    }
}
