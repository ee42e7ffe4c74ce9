//! ImportRegister: a whole register (school, pupils and marks) applied in one transaction.
//!
//! The stream is read and checked first. Then, holding the feed's write lock, the service loads
//! what it already has for those pupils, works out the changes with [`plan`], which does no
//! I/O, and writes them. Any error rolls the whole import back.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::convert::{from_timestamp, source_from_proto};
use rollcall_api::registers::v1::{
    ImportHeader, ImportMarks, ImportPupil, ImportRegisterRequest, ImportRegisterResponse, Mark,
    import_register_request::Item,
};
use rollcall_domain::age::is_compulsory_school_age;
use rollcall_domain::calendar::SchoolCalendar;
use rollcall_domain::history::{VersionKey, supersedes};
use rollcall_domain::{MarkSource, Session, SessionDate, Upn, codes};
use rollcall_runtime::grpc::{invalid_argument, laestab, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use sqlx::QueryBuilder;
use tonic::{Status, Streaming};

use crate::FEED_LOCK_KEY;
use crate::calendar::{self, load_calendar_rows};
use crate::convert::{
    fsm_as_str, phase_as_str, registration_as_str, required_date, sen_as_str, session,
};

/// Rows per multi-row statement. Fifteen columns a row stays well inside SQLite's limit of
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
    pupils: Vec<CheckedPupil>,
    marks: Vec<CheckedMark>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PupilDetails {
    forename: String,
    surname: String,
    date_of_birth: NaiveDate,
    sex: String,
}

#[derive(Debug)]
struct CheckedPupil {
    upn: String,
    details: PupilDetails,
    admission_date: NaiveDate,
    year_group: String,
    registration: &'static str,
    class_name: String,
    sen_provision: &'static str,
    free_school_meals: &'static str,
}

#[derive(Debug, Clone)]
struct CheckedMark {
    /// Position in the stream, for error messages.
    index: usize,
    upn: String,
    date: NaiveDate,
    session: Session,
    code: String,
    minutes_late: i32,
    recorded_at: DateTime<Utc>,
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

/// The effective version of a session before the import.
#[derive(Debug, Clone)]
struct Current {
    code: String,
    minutes_late: i32,
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
    recorded_at: DateTime<Utc>,
    sequence: i64,
}

/// The registers' existing rows for the pupils of an import.
#[derive(Debug, Default)]
struct Existing {
    pupils: HashMap<String, PupilDetails>,
    enrolments: HashMap<String, Vec<Enrolment>>,
    effective: HashMap<SessionKey, Current>,
    calendar: Option<SchoolCalendar>,
    next_sequence: i64,
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

/// The writes an import makes.
#[derive(Debug, Default)]
struct Plan<'a> {
    new_pupils: Vec<&'a CheckedPupil>,
    changed_pupils: Vec<&'a CheckedPupil>,
    new_enrolments: Vec<&'a CheckedPupil>,
    /// Enrolments whose year group or registration changed, with their admission date.
    enrolment_changes: Vec<(&'a CheckedPupil, NaiveDate)>,
    versions: Vec<Version<'a>>,
    response: ImportRegisterResponse,
}

/// Reads the whole stream after its header and checks every item.
pub(crate) async fn read_request(
    header: ImportHeader,
    stream: &mut Streaming<ImportRegisterRequest>,
) -> Result<ImportRequest, Status> {
    if header.request_id.trim().is_empty() {
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

    let now = Utc::now();
    let mut pupils = Vec::new();
    let mut marks = Vec::new();
    let mut seen: HashSet<SessionKey> = HashSet::new();
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
                pupils.push(check_pupil(&format!("pupils[{}]", pupils.len()), &pupil)?);
            }
            Some(Item::Marks(ImportMarks { marks: batch })) => {
                for mark in batch {
                    let checked = check_mark(marks.len(), &mark, now)?;
                    let key = (checked.upn.clone(), checked.date, checked.session);
                    if !seen.insert(key) {
                        return Err(invalid_argument(
                            &format!("marks[{}].date", checked.index),
                            &mark.date,
                            format!(
                                "pupil {} has a second mark for the {} session of this date in the same import",
                                checked.upn, checked.session
                            ),
                        ));
                    }
                    marks.push(checked);
                }
            }
        }
    }

    Ok(ImportRequest {
        request_id: header.request_id,
        laestab,
        school_name: school.name.trim().to_owned(),
        phase: phase_as_str(school.phase),
        source: source_from_proto(header.source).unwrap_or(MarkSource::Import),
        source_name: header.source_name,
        recorded_by: header.recorded_by,
        pupils,
        marks,
    })
}

fn check_pupil(field: &str, import: &ImportPupil) -> Result<CheckedPupil, Status> {
    let pupil = import.pupil.clone().unwrap_or_default();
    let upn = Upn::parse(&pupil.upn).map_err(|error| {
        invalid_argument(&format!("{field}.upn"), &pupil.upn, error.to_string())
    })?;
    let required = |name: &str, value: &str| -> Result<String, Status> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            Err(invalid_argument(
                &format!("{field}.{name}"),
                value,
                format!("pupil {upn} has no {name}"),
            ))
        } else {
            Ok(trimmed.to_owned())
        }
    };
    Ok(CheckedPupil {
        details: PupilDetails {
            forename: required("forename", &pupil.forename)?,
            surname: required("surname", &pupil.surname)?,
            date_of_birth: required_date(&format!("{field}.date_of_birth"), &pupil.date_of_birth)?,
            sex: required("sex", &pupil.sex)?,
        },
        admission_date: required_date(&format!("{field}.admission_date"), &import.admission_date)?,
        year_group: required("year_group", &import.year_group)?,
        registration: registration_as_str(import.registration),
        class_name: import.class_name.trim().to_owned(),
        sen_provision: sen_as_str(import.sen_provision),
        free_school_meals: fsm_as_str(import.free_school_meals),
        upn: upn.to_string(),
    })
}

fn check_mark(index: usize, mark: &Mark, now: DateTime<Utc>) -> Result<CheckedMark, Status> {
    let field = format!("marks[{index}]");
    let upn = mark.upn.trim().to_ascii_uppercase();
    let date = required_date(&format!("{field}.date"), &mark.date)?;
    let session = session(&format!("{field}.session"), mark.session)?;
    let code = mark.code.trim();
    let arrived_at = match &mark.arrived_at {
        Some(at) => Some(from_timestamp(at).ok_or_else(|| {
            invalid_argument(
                &format!("{field}.arrived_at"),
                &at.seconds.to_string(),
                "not a valid time",
            )
        })?),
        None => None,
    };
    if !(code.is_empty() && arrived_at.is_some()) {
        codes::lookup_on(code, date).map_err(|error| {
            invalid_argument(
                &format!("{field}.code"),
                &mark.code,
                format!("{error} (pupil {upn}, {date} {session})"),
            )
        })?;
    }
    if !(code.is_empty() && arrived_at.is_some()) {
        codes::check_minutes_late(code, mark.minutes_late).map_err(|problem| {
            invalid_argument(
                &format!("{field}.minutes_late"),
                &mark.minutes_late.to_string(),
                format!("{problem} (pupil {upn}, {date} {session})"),
            )
        })?;
    }
    let recorded_at = match &mark.recorded_at {
        Some(at) => from_timestamp(at).ok_or_else(|| {
            invalid_argument(
                &format!("{field}.recorded_at"),
                &at.seconds.to_string(),
                "not a valid time",
            )
        })?,
        None => now,
    };
    Ok(CheckedMark {
        index,
        upn,
        date,
        session,
        code: code.to_owned(),
        minutes_late: mark.minutes_late,
        recorded_at,
        arrived_at,
    })
}

/// Works out the writes of an import from what the registers already hold.
///
/// A mark equal (code and minutes late) to the effective version of its session, and taken no
/// later than it, is unchanged and not stored again. Any other mark becomes a new version, and
/// it is effective unless the effective version was taken later: the effective mark is the
/// version with the latest time taken, ties going to the later feed position.
///
/// A mark that repeats the effective code but was taken later is stored: leaving it out would
/// let a version taken in between, arriving afterwards, take effect, so the outcome would
/// depend on the order of arrival.
fn plan<'a>(request: &'a ImportRequest, existing: &Existing) -> Result<Plan<'a>, Status> {
    let mut plan = Plan::default();
    let mut enrolments = existing.enrolments.clone();

    for pupil in &request.pupils {
        match existing.pupils.get(&pupil.upn) {
            None => plan.new_pupils.push(pupil),
            Some(details) if *details != pupil.details => {
                plan.changed_pupils.push(pupil);
                plan.response.pupils_updated += 1;
            }
            Some(_) => {}
        }
        let pupil_enrolments = enrolments.entry(pupil.upn.clone()).or_default();
        match pupil_enrolments
            .iter()
            .find(|e| e.contains(pupil.admission_date))
        {
            Some(enrolment)
                if enrolment.year_group != pupil.year_group
                    || enrolment.registration != pupil.registration
                    || (!pupil.class_name.is_empty()
                        && enrolment.class_name != pupil.class_name)
                    || (!pupil.sen_provision.is_empty()
                        && enrolment.sen_provision != pupil.sen_provision)
                    || (!pupil.free_school_meals.is_empty()
                        && enrolment.free_school_meals != pupil.free_school_meals) =>
            {
                plan.enrolment_changes.push((pupil, enrolment.admission));
                plan.response.pupils_updated += 1;
            }
            Some(_) => {}
            None => {
                if pupil_enrolments.is_empty() {
                    plan.response.pupils_added += 1;
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
    }

    let mut sequence = existing.next_sequence;
    for mark in &request.marks {
        let field = format!("marks[{}]", mark.index);
        let Some(pupil_enrolments) = enrolments.get(&mark.upn).filter(|list| !list.is_empty())
        else {
            return Err(invalid_argument(
                &format!("{field}.upn"),
                &mark.upn,
                format!(
                    "no pupil with this UPN is on roll at school {}; send the pupil first",
                    request.laestab
                ),
            ));
        };
        if !pupil_enrolments
            .iter()
            .any(|enrolment| enrolment.contains(mark.date))
        {
            return Err(invalid_argument(
                &format!("{field}.date"),
                &mark.date.to_string(),
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
                return Err(invalid_argument(
                    &format!("{field}.code"),
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
                return Err(invalid_argument(
                    &format!("{field}.arrived_at"),
                    &mark.date.to_string(),
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
            return Err(invalid_argument(
                &format!("{field}.date"),
                &mark.date.to_string(),
                format!("pupil {}: {problem}", mark.upn),
            ));
        }
        let key = (mark.upn.clone(), mark.date, mark.session);
        let effective = match existing.effective.get(&key) {
            Some(current)
                if current.code == code
                    && current.minutes_late == minutes_late
                    && mark.recorded_at <= current.recorded_at =>
            {
                plan.response.marks_unchanged += 1;
                continue;
            }
            Some(current) => supersedes(
                VersionKey {
                    recorded_at: mark.recorded_at,
                    sequence,
                },
                VersionKey {
                    recorded_at: current.recorded_at,
                    sequence: current.sequence,
                },
            ),
            None => true,
        };
        plan.versions.push(Version {
            sequence,
            mark,
            code,
            minutes_late,
            effective,
        });
        sequence += 1;
    }
    plan.response.marks_recorded = i32::try_from(plan.versions.len()).unwrap_or(i32::MAX);
    plan.response.feed_cursor = sequence - 1;
    Ok(plan)
}

/// Applies a checked import in one transaction.
pub(crate) async fn apply(
    db: &Db,
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

    with_db!(db, |pool| {
        let mut tx = pool.begin_write(FEED_LOCK_KEY).await.map_err(store_error)?;
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM marks")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;

        let applied: Option<i64> =
            sqlx::query_scalar("SELECT feed_cursor FROM imports WHERE request_id = $1")
                .bind(&request.request_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        if applied.is_some() {
            return Ok(ImportRegisterResponse {
                already_applied: true,
                feed_cursor: head,
                ..Default::default()
            });
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

            let (Some(first_date), Some(last_date)) = (first_date, last_date) else {
                continue;
            };
            let mut query = QueryBuilder::new(
                "SELECT m.upn, m.session_date, m.session, m.code, m.minutes_late, m.recorded_at, m.sequence \
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
                    recorded_at: row.recorded_at,
                    sequence: row.sequence,
                };
                existing
                    .effective
                    .insert((row.upn, row.session_date, session), current);
            }
        }

        let plan = plan(request, &existing)?;

        sqlx::query(
            "INSERT INTO schools (laestab, name, phase, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (laestab) DO UPDATE SET name = excluded.name, phase = excluded.phase",
        )
        .bind(laestab)
        .bind(&request.school_name)
        .bind(request.phase)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;

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

        let reason = format!("Imported from {}", request.source_name);
        for chunk in plan.versions.chunks(CHUNK) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO marks (sequence, laestab, upn, session_date, session, code, \
                 minutes_late, source, source_name, reason, recorded_by, recorded_by_position, \
                 recorded_at, received_at, effective_when_stored, arrived_at) ",
            );
            insert.push_values(chunk, |mut row, version| {
                let mark = version.mark;
                row.push_bind(version.sequence)
                    .push_bind(laestab.clone())
                    .push_bind(mark.upn.clone())
                    .push_bind(mark.date)
                    .push_bind(mark.session.as_str())
                    .push_bind(version.code.clone())
                    .push_bind(version.minutes_late)
                    .push_bind(request.source.as_str())
                    .push_bind(request.source_name.clone())
                    .push_bind(reason.clone())
                    .push_bind(request.recorded_by.clone())
                    .push_bind("")
                    .push_bind(mark.recorded_at)
                    .push_bind(now)
                    .push_bind(version.effective)
                    .push_bind(mark.arrived_at);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;

            let effective: Vec<&Version<'_>> = chunk.iter().filter(|v| v.effective).collect();
            if effective.is_empty() {
                continue;
            }
            let mut upsert = QueryBuilder::new(
                "INSERT INTO effective_marks (laestab, upn, session_date, session, sequence, recorded_at) ",
            );
            upsert.push_values(effective, |mut row, version| {
                let mark = version.mark;
                row.push_bind(laestab.clone())
                    .push_bind(mark.upn.clone())
                    .push_bind(mark.date)
                    .push_bind(mark.session.as_str())
                    .push_bind(version.sequence)
                    .push_bind(mark.recorded_at);
            });
            upsert.push(
                " ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
                 SET sequence = excluded.sequence, recorded_at = excluded.recorded_at",
            );
            upsert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }

        sqlx::query(
            "INSERT INTO imports (request_id, laestab, source_name, marks_recorded, feed_cursor, applied_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&request.request_id)
        .bind(laestab)
        .bind(&request.source_name)
        .bind(plan.response.marks_recorded)
        .bind(plan.response.feed_cursor)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
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
            recorded_at,
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
}
