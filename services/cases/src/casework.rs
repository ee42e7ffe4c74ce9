//! Casework by staff: opening, escalating, de-escalating and closing cases, recording actions,
//! overdue reviews, timelines and the ladders in use.
//!
//! Every change is a row in `case_events` with who made it, when, why and at which stage.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::{
    CaseAction, GetCaseTimelineResponse, Ladder as PbLadder, OpenCaseRequest, OwnerReviews,
    RecordActionRequest, RecordActionResponse, TimelineEntry,
};
use rollcall_api::client::Channel;
use rollcall_api::convert::{phase_from_proto, timestamp};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{GetPupilRequest, GetSchoolRequest};
use rollcall_domain::Phase;
use rollcall_domain::ladder::Role;
use rollcall_domain::ladder::{
    ActionKind, Ladder, choose_ladder, missing_before_escalating, parse_ladder, shipped_ladders,
};
use rollcall_domain::session::parse_date;
use rollcall_runtime::grpc::{
    failed_precondition, invalid_argument, laestab, not_found, upstream_error,
};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::CASES_LOCK_KEY;
use crate::fields::{date_or_today, required, storage};
use crate::service::{CASE_COLUMNS, CaseRow};

#[derive(Debug, sqlx::FromRow)]
struct LadderRow {
    version: i32,
    source: String,
    loaded_by: String,
    loaded_at: DateTime<Utc>,
}

/// A loaded ladder version.
#[derive(Debug, Clone)]
pub(crate) struct LoadedLadder {
    pub(crate) ladder: Ladder,
    pub(crate) source: String,
    pub(crate) version: i32,
    pub(crate) loaded_by: String,
    pub(crate) loaded_at: DateTime<Utc>,
}

/// Returns the latest loaded version of each ladder; a stored ladder this build cannot read is
/// logged and left out.
pub(crate) async fn loaded_ladders(db: &Db) -> Result<Vec<LoadedLadder>, Status> {
    let rows: Vec<LadderRow> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT v.version, v.source, v.loaded_by, v.loaded_at FROM ladder_versions v \
             WHERE v.version = (SELECT MAX(w.version) FROM ladder_versions w WHERE w.id = v.id) \
             ORDER BY v.id",
        )
        .fetch_all(pool)
        .await
    })
    .map_err(storage("reading ladders"))?;
    Ok(rows.into_iter().filter_map(read_ladder).collect())
}

fn read_ladder(row: LadderRow) -> Option<LoadedLadder> {
    match parse_ladder(&row.source) {
        Ok(ladder) => Some(LoadedLadder {
            ladder,
            source: row.source,
            version: row.version,
            loaded_by: row.loaded_by,
            loaded_at: row.loaded_at,
        }),
        Err(error) => {
            tracing::error!(%error, "A stored ladder cannot be read and is skipped");
            None
        }
    }
}

/// Returns the ladder a case follows: the version it opened under, or the shipped default for
/// version 0.
pub(crate) async fn ladder_of(db: &Db, id: &str, version: i32) -> Result<Ladder, Status> {
    if version == 0 {
        return shipped_ladders()
            .into_iter()
            .map(|(ladder, _)| ladder.clone())
            .find(|ladder| ladder.id == id)
            .ok_or_else(|| not_found("ladder", id));
    }
    let row: Option<LadderRow> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT version, source, loaded_by, loaded_at FROM ladder_versions \
             WHERE id = $1 AND version = $2",
        )
        .bind(id)
        .bind(version)
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading a ladder"))?;
    row.and_then(read_ladder)
        .map(|loaded| loaded.ladder)
        .ok_or_else(|| not_found("ladder version", &format!("{id} {version}")))
}

/// Chooses the ladder for a new case: a loaded one naming the phase, else the default.
pub(crate) fn ladder_for_new_case(loaded: &[LoadedLadder], phase: Phase) -> (Ladder, i32) {
    let ladders: Vec<Ladder> = loaded.iter().map(|l| l.ladder.clone()).collect();
    let ladder = choose_ladder(&ladders, phase);
    let version = loaded
        .iter()
        .find(|l| l.ladder.id == ladder.id)
        .map_or(0, |l| l.version);
    (ladder, version)
}

fn ladder_to_proto(loaded: Option<&LoadedLadder>, ladder: &Ladder, source: &str) -> PbLadder {
    PbLadder {
        id: ladder.id.clone(),
        title: ladder.title.clone(),
        phases: ladder
            .phases
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        shipped: loaded.is_none(),
        source: source.to_owned(),
        version: loaded.map_or(0, |l| l.version),
        loaded_by: loaded.map(|l| l.loaded_by.clone()).unwrap_or_default(),
        loaded_at: loaded.map(|l| timestamp(l.loaded_at)),
    }
}

/// Lists the ladders in use.
pub(crate) async fn list_ladders(db: &Db) -> Result<Vec<PbLadder>, Status> {
    let loaded = loaded_ladders(db).await?;
    let mut ladders: Vec<PbLadder> = loaded
        .iter()
        .map(|l| ladder_to_proto(Some(l), &l.ladder, &l.source))
        .collect();
    for (ladder, source) in shipped_ladders() {
        if !loaded.iter().any(|l| l.ladder.id == ladder.id) {
            ladders.push(ladder_to_proto(None, ladder, source));
        }
    }
    ladders.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ladders)
}

/// Checks and stores a ladder file as a new version. Open cases keep the version they opened
/// under.
pub(crate) async fn load_ladder(
    db: &Db,
    source: &str,
    loaded_by: &str,
) -> Result<PbLadder, Status> {
    let loaded_by = required(
        "loaded_by",
        loaded_by,
        "give the name of the person loading it",
    )?;
    let ladder = parse_ladder(source).map_err(|error| {
        invalid_argument(
            &format!("source (line {})", error.line),
            &error.key,
            error.message.clone(),
        )
    })?;
    let loaded = loaded_ladders(db).await?;
    if let Some(other) = loaded.iter().find(|other| {
        other.ladder.id != ladder.id
            && other
                .ladder
                .phases
                .iter()
                .any(|phase| ladder.phases.contains(phase))
    }) {
        return Err(failed_precondition(format!(
            "ladder {} already covers phase {}; give this ladder the id {} to replace it, or \
             name other phases",
            other.ladder.id,
            other
                .ladder
                .phases
                .iter()
                .find(|phase| ladder.phases.contains(phase))
                .map_or("", |phase| phase.as_str()),
            other.ladder.id
        )));
    }
    let now = Utc::now();
    let version: i32 = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let latest: Option<i32> =
            sqlx::query_scalar("SELECT MAX(version) FROM ladder_versions WHERE id = $1")
                .bind(&ladder.id)
                .fetch_one(&mut *tx)
                .await?;
        let version = latest.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO ladder_versions (id, version, source, loaded_by, loaded_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&ladder.id)
        .bind(version)
        .bind(source)
        .bind(&loaded_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(version)
    }
    .await)
    .map_err(storage("storing a ladder"))?;
    tracing::info!(ladder = %ladder.id, version, "Ladder loaded");
    let stored = LoadedLadder {
        ladder: ladder.clone(),
        source: source.to_owned(),
        version,
        loaded_by,
        loaded_at: now,
    };
    Ok(ladder_to_proto(Some(&stored), &ladder, source))
}

async fn fetch_case(db: &Db, id: &str) -> Result<CaseRow, Status> {
    let row: Option<CaseRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading a case"))?;
    row.ok_or_else(|| not_found("case", id))
}

/// The concerns a case can be about.
pub(crate) const CONCERNS: [&str; 7] = [
    "persistent_absence",
    "severe_absence",
    "unauthorised_absence",
    "punctuality",
    "truancy",
    "sickness",
    "other",
];

/// Roles a person can give when working a case, besides the ladder's owner roles.
const OTHER_ROLES: [&str; 3] = ["headteacher", "attendance_officer", "data_manager"];

/// Checks a role given with a change: empty, a ladder role or one of the other roles.
pub(crate) fn checked_role(value: &str) -> Result<String, Status> {
    let role = value.trim().to_ascii_lowercase();
    if role.is_empty() || role.parse::<Role>().is_ok() || OTHER_ROLES.contains(&role.as_str()) {
        return Ok(role);
    }
    let mut known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    known.extend(OTHER_ROLES);
    Err(invalid_argument(
        "role",
        value,
        format!("use one of {}", known.join(", ")),
    ))
}

/// Checks that a date given for a step of a case is not in the future and not before `after`.
fn checked_step_date(
    field: &str,
    value: NaiveDate,
    after: Option<NaiveDate>,
    what: &str,
) -> Result<(), Status> {
    let today = Utc::now().date_naive();
    if value > today {
        return Err(invalid_argument(
            field,
            &value.to_string(),
            format!("it is in the future; record {what} on or after the day it happens"),
        ));
    }
    if let Some(after) = after
        && value < after
    {
        return Err(invalid_argument(
            field,
            &value.to_string(),
            format!("it is before {after}, when the case reached its current stage"),
        ));
    }
    Ok(())
}

/// Opens a case by hand at the first stage of the pupil's ladder, after checking with the
/// registers that the pupil is on roll at the school on the date.
pub(crate) async fn open(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: OpenCaseRequest,
) -> Result<CaseRow, Status> {
    let upn = required("upn", &request.upn, "a UPN is required")?.to_ascii_uppercase();
    rollcall_domain::Upn::parse(&upn)
        .map_err(|error| invalid_argument("upn", &request.upn, error.to_string()))?;
    let school = laestab("laestab", &request.laestab)?;
    let concern = request
        .concern
        .trim()
        .to_ascii_lowercase()
        .replace([' ', '-'], "_");
    if !CONCERNS.contains(&concern.as_str()) {
        return Err(invalid_argument(
            "concern",
            &request.concern,
            format!("use one of {}", CONCERNS.join(", ")),
        ));
    }
    let role = checked_role(&request.role)?;
    let on = date_or_today("on_date", &request.on_date)?;
    checked_step_date("on_date", on, None, "the case")?;
    let phase = pupil_phase(registers, &upn, &school, on).await?;
    if let Some(given) = phase_from_proto(request.phase)
        && given != phase
    {
        return Err(invalid_argument(
            "phase",
            given.as_str(),
            format!(
                "pupil {upn} is in the {} phase by their year group; leave the phase out or give \
                 that one",
                phase.as_str()
            ),
        ));
    }
    let opened_by = required(
        "opened_by",
        &request.opened_by,
        "give the name of the person",
    )?;
    let reason = required(
        "reason",
        &request.reason,
        "give the reason for opening the case",
    )?;
    let on = date_or_today("on_date", &request.on_date)?;
    let loaded = loaded_ladders(db).await?;
    let (ladder, ladder_version) = ladder_for_new_case(&loaded, phase);
    let Some(stage) = ladder.stages.first() else {
        return Err(failed_precondition(format!(
            "ladder {} has no stages",
            ladder.id
        )));
    };
    let now = Utc::now();
    let next_review = crate::school_days::of_school(registers, &school)
        .await?
        .after(on, stage.review_interval_days);

    let opened: Result<String, Status> = with_db!(db, |pool| async {
        let mut tx = pool
            .begin_write(CASES_LOCK_KEY)
            .await
            .map_err(storage("opening a case"))?;
        let live: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM cases WHERE upn = $1 AND concern = $2 AND status <> 'closed'",
        )
        .bind(&upn)
        .bind(&concern)
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage("opening a case"))?;
        if let Some((existing,)) = live {
            return Err(Status::already_exists(format!(
                "pupil {upn} already has case {existing} for {concern}; work that case instead"
            )));
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cases WHERE opened_by <> ''")
            .fetch_one(&mut *tx)
            .await
            .map_err(storage("opening a case"))?;
        let id = format!("case-m{:06}", count + 1);
        sqlx::query(
            "INSERT INTO cases (id, laestab, upn, concern, phase, ladder, stage, stage_number, \
             owner_role, status, opened_at, opened_by_trigger, stage_started_on, next_review, \
             opened_by, opened_on, ladder_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, 'open', $9, '', $10, $11, $12, $10, $13)",
        )
        .bind(&id)
        .bind(&school)
        .bind(&upn)
        .bind(&concern)
        .bind(phase.as_str())
        .bind(&ladder.id)
        .bind(&stage.id)
        .bind(stage.owner.as_str())
        .bind(now)
        .bind(on)
        .bind(next_review)
        .bind(&opened_by)
        .bind(ladder_version)
        .execute(&mut *tx)
        .await
        .map_err(storage("opening a case"))?;
        let detail = format!(
            "Opened by hand at stage {} ({})",
            stage.id,
            stage.owner.as_str()
        );
        let by = by_with_role(&opened_by, &role);
        let record = NewEvent {
            case_id: &id,
            event: "opened",
            stage: &stage.id,
            detail: &detail,
            reason: &reason,
            by: &by,
            at: now,
            on,
        };
        insert_event(&mut tx, record)
            .await
            .map_err(storage("opening a case"))?;
        tx.commit().await.map_err(storage("opening a case"))?;
        Ok(id)
    }
    .await);
    let id = opened?;
    tracing::info!(case = %id, upn = %upn, laestab = %school, "Case opened by hand");
    fetch_case(db, &id).await
}

fn by_with_role(name: &str, role: &str) -> String {
    if role.trim().is_empty() {
        name.trim().to_owned()
    } else {
        format!("{} ({})", name.trim(), role.trim())
    }
}

/// Returns the pupil's phase at the school on `on`, from the registers, or an error naming the
/// pupil and school when the pupil is not on roll there.
async fn pupil_phase(
    registers: &RegistersServiceClient<Channel>,
    upn: &str,
    school: &str,
    on: NaiveDate,
) -> Result<Phase, Status> {
    let mut registers = registers.clone();
    let pupil = registers
        .get_pupil(GetPupilRequest {
            upn: upn.to_owned(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .pupil
        .unwrap_or_default();
    let enrolment = pupil
        .enrolments
        .iter()
        .find(|enrolment| {
            let admitted = parse_date(&enrolment.admission_date).unwrap_or(NaiveDate::MAX);
            let left = parse_date(&enrolment.leaving_date).ok();
            enrolment.laestab == school && admitted <= on && left.is_none_or(|left| left >= on)
        })
        .ok_or_else(|| {
            failed_precondition(format!(
                "pupil {upn} is not on roll at school {school} on {on}; check the school and \
                 the date"
            ))
        })?;
    if let Some(phase) = Phase::of_year_group(&enrolment.year_group) {
        return Ok(phase);
    }
    let school_record = registers
        .get_school(GetSchoolRequest {
            laestab: school.to_owned(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .school
        .unwrap_or_default();
    Ok(phase_from_proto(school_record.phase).unwrap_or(Phase::Secondary))
}

/// A change to record in `case_events`.
struct NewEvent<'a> {
    case_id: &'a str,
    event: &'a str,
    stage: &'a str,
    detail: &'a str,
    reason: &'a str,
    by: &'a str,
    at: DateTime<Utc>,
    on: NaiveDate,
}

async fn insert_event<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    event: NewEvent<'_>,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> NaiveDate: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e mut <DB as sqlx::Database>::Connection: sqlx::Executor<'e, Database = DB>,
{
    sqlx::query(
        "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, stage, \
         reason, on_date) \
         SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8 FROM case_events",
    )
    .bind(event.case_id)
    .bind(event.event)
    .bind(event.detail)
    .bind(event.by)
    .bind(event.at)
    .bind(event.stage)
    .bind(event.reason)
    .bind(event.on)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The kind of change staff make to a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Escalate,
    Deescalate,
    Close,
    /// Keep a case under review open: staff go on working it.
    KeepOpen,
}

#[derive(Debug, sqlx::FromRow)]
struct KindRow {
    kind: String,
}

/// A change to a case as staff ask for it.
#[derive(Debug)]
pub(crate) struct ChangeInput {
    pub(crate) case_id: String,
    pub(crate) changed_by: String,
    pub(crate) role: String,
    pub(crate) reason: String,
    pub(crate) on_date: String,
}

/// The four change requests carry the same fields; each converts into a [`ChangeInput`].
macro_rules! change_input_from {
    ($($request:ty),+) => {
        $(impl From<$request> for ChangeInput {
            fn from(request: $request) -> Self {
                Self {
                    case_id: request.case_id,
                    changed_by: request.changed_by,
                    role: request.role,
                    reason: request.reason,
                    on_date: request.on_date,
                }
            }
        })+
    };
}

change_input_from!(
    rollcall_api::cases::v1::EscalateCaseRequest,
    rollcall_api::cases::v1::DeescalateCaseRequest,
    rollcall_api::cases::v1::CloseCaseRequest,
    rollcall_api::cases::v1::KeepCaseOpenRequest
);

/// Escalates, de-escalates or closes a case.
pub(crate) async fn change(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: ChangeInput,
    change: Change,
) -> Result<CaseRow, Status> {
    let case_id = required("case_id", &request.case_id, "give the case id")?;
    let changed_by = required(
        "changed_by",
        &request.changed_by,
        "give the name of the person",
    )?;
    let reason = required(
        "reason",
        &request.reason,
        "give the reason for the change; it is kept on the case",
    )?;
    let on = date_or_today("on_date", &request.on_date)?;
    let role = checked_role(&request.role)?;
    let case = fetch_case(db, &case_id).await?;
    checked_step_date("on_date", on, case.stage_started_on, "the change")?;
    if case.status == "closed" {
        return Err(failed_precondition(format!(
            "case {case_id} is closed; open a new case if the concern returns"
        )));
    }
    let ladder = ladder_of(db, &case.ladder, case.ladder_version).await?;
    let position = ladder.position(&case.stage).ok_or_else(|| {
        failed_precondition(format!(
            "case {case_id} is at stage {}, which ladder {} no longer has; load a ladder with it \
             or close the case",
            case.stage, ladder.id
        ))
    })?;
    let current = &ladder.stages[position];

    let target = match change {
        Change::Escalate => {
            let Some(next) = ladder.stages.get(position + 1) else {
                return Err(failed_precondition(format!(
                    "case {case_id} is at the last stage of ladder {}",
                    ladder.id
                )));
            };
            let recorded: Vec<KindRow> = with_db!(db, |pool| {
                sqlx::query_as("SELECT kind FROM case_actions WHERE case_id = $1 AND stage = $2")
                    .bind(&case_id)
                    .bind(&case.stage)
                    .fetch_all(pool)
                    .await
            })
            .map_err(storage("reading actions"))?;
            let kinds: Vec<ActionKind> = recorded
                .iter()
                .filter_map(|row| row.kind.parse().ok())
                .collect();
            let missing = missing_before_escalating(current, &kinds);
            if !missing.is_empty() {
                let names: Vec<&str> = missing.iter().map(|kind| kind.as_str()).collect();
                return Err(failed_precondition(format!(
                    "case {case_id} cannot move past stage {} until these actions are recorded \
                     at it: {} (clause {})",
                    current.id,
                    names.join(", "),
                    current.clause
                )));
            }
            Some((position + 1, next))
        }
        Change::Deescalate => {
            let Some(previous) = position.checked_sub(1) else {
                return Err(failed_precondition(format!(
                    "case {case_id} is at the first stage of ladder {}",
                    ladder.id
                )));
            };
            Some((previous, &ladder.stages[previous]))
        }
        Change::Close => None,
        Change::KeepOpen => {
            if case.status != "review" {
                return Err(failed_precondition(format!(
                    "case {case_id} is {}, not under review, so there is nothing to keep open",
                    case.status
                )));
            }
            None
        }
    };

    let days = crate::school_days::of_school(registers, &case.laestab).await?;
    let now = Utc::now();
    let by = by_with_role(&changed_by, &role);
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        match target {
            Some((index, stage)) => {
                let event = if change == Change::Escalate {
                    "escalated"
                } else {
                    "de-escalated"
                };
                sqlx::query(
                    "UPDATE cases SET stage = $2, stage_number = $3, owner_role = $4, \
                     stage_started_on = $5, next_review = $6, status = 'open' WHERE id = $1",
                )
                .bind(&case_id)
                .bind(&stage.id)
                .bind(i32::try_from(index + 1).unwrap_or(i32::MAX))
                .bind(stage.owner.as_str())
                .bind(on)
                .bind(days.after(on, stage.review_interval_days))
                .execute(&mut *tx)
                .await?;
                let detail = format!(
                    "Moved from stage {} to stage {} ({})",
                    current.id,
                    stage.id,
                    stage.owner.as_str()
                );
                let record = NewEvent {
                    case_id: &case_id,
                    event,
                    stage: &stage.id,
                    detail: &detail,
                    reason: &reason,
                    by: &by,
                    at: now,
                    on,
                };
                insert_event(&mut tx, record).await?;
            }
            None => {
                let (status, event, detail) = if change == Change::KeepOpen {
                    ("open", "kept-open", "Kept open after review")
                } else {
                    ("closed", "closed", "Closed")
                };
                sqlx::query(
                    "UPDATE cases SET status = $2, \
                     next_review = CASE WHEN $2 = 'closed' THEN NULL ELSE next_review END \
                     WHERE id = $1",
                )
                .bind(&case_id)
                .bind(status)
                .execute(&mut *tx)
                .await?;
                let record = NewEvent {
                    case_id: &case_id,
                    event,
                    stage: &current.id,
                    detail,
                    reason: &reason,
                    by: &by,
                    at: now,
                    on,
                };
                insert_event(&mut tx, record).await?;
            }
        }
        tx.commit().await
    }
    .await)
    .map_err(storage("changing a case"))?;
    tracing::info!(case = %case_id, ?change, "Case changed");
    fetch_case(db, &case_id).await
}

#[derive(Debug, sqlx::FromRow)]
struct ActionRow {
    id: String,
    case_id: String,
    stage: String,
    kind: String,
    taken_on: NaiveDate,
    outcome: String,
    notes: String,
    with_aio: bool,
    next_review: Option<NaiveDate>,
    recorded_by: String,
    recorded_by_role: String,
    recorded_at: DateTime<Utc>,
    parents_reached: bool,
}

const ACTION_COLUMNS: &str = "id, case_id, stage, kind, taken_on, outcome, notes, with_aio, \
     next_review, recorded_by, recorded_by_role, recorded_at, parents_reached";

impl ActionRow {
    fn into_proto(self) -> CaseAction {
        CaseAction {
            id: self.id,
            case_id: self.case_id,
            stage: self.stage,
            kind: self.kind,
            taken_on: self.taken_on.to_string(),
            outcome: self.outcome,
            notes: self.notes,
            with_aio: self.with_aio,
            next_review: self.next_review.map(|d| d.to_string()).unwrap_or_default(),
            recorded_by: self.recorded_by,
            recorded_by_role: self.recorded_by_role,
            recorded_at: Some(timestamp(self.recorded_at)),
            parents_reached: self.parents_reached,
        }
    }
}

/// Records an action on a case.
pub(crate) async fn record_action(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: RecordActionRequest,
) -> Result<RecordActionResponse, Status> {
    let request_id = required(
        "request_id",
        &request.request_id,
        "an idempotency key is required, so that a retry records nothing twice",
    )?;
    let existing: Option<ActionRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ACTION_COLUMNS} FROM case_actions WHERE request_id = $1"
        )))
        .bind(&request_id)
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading actions"))?;
    if let Some(row) = existing {
        return Ok(RecordActionResponse {
            action: Some(row.into_proto()),
            already_recorded: true,
        });
    }
    let case_id = required("case_id", &request.case_id, "give the case id")?;
    let kind: ActionKind = request
        .kind
        .trim()
        .parse()
        .map_err(|problem: String| invalid_argument("kind", &request.kind, problem))?;
    let taken_on = parse_date(&request.taken_on)
        .map_err(|error| invalid_argument("taken_on", &request.taken_on, error.problem()))?;
    let outcome = required(
        "outcome",
        &request.outcome,
        "record what came of the action",
    )?;
    let recorded_by = required(
        "recorded_by",
        &request.recorded_by,
        "give the name of the person",
    )?;
    if kind == ActionKind::StructuredMeeting && !request.with_aio {
        return Err(invalid_argument(
            "with_aio",
            "false",
            "a structured meeting includes the trust's Attendance Improvement Officer; record \
             a meeting otherwise",
        ));
    }
    let role = checked_role(&request.role)?;
    let case = fetch_case(db, &case_id).await?;
    if case.status == "closed" {
        return Err(failed_precondition(format!(
            "case {case_id} is closed; actions go on an open case"
        )));
    }
    checked_step_date(
        "taken_on",
        taken_on,
        case.opened_on.or(case.stage_started_on),
        "the action",
    )?;
    let ladder = ladder_of(db, &case.ladder, case.ladder_version).await?;
    let interval = ladder
        .position(&case.stage)
        .map_or(10, |index| ladder.stages[index].review_interval_days);
    let next_review = if request.next_review.trim().is_empty() {
        crate::school_days::of_school(registers, &case.laestab)
            .await?
            .after(taken_on, interval)
    } else {
        let date = parse_date(&request.next_review).map_err(|error| {
            invalid_argument("next_review", &request.next_review, error.problem())
        })?;
        if date < taken_on {
            return Err(invalid_argument(
                "next_review",
                &request.next_review,
                format!("it is before the action was taken on {taken_on}"),
            ));
        }
        date
    };

    let now = Utc::now();
    let row = ActionRow {
        id: String::new(),
        case_id: case_id.clone(),
        stage: case.stage.clone(),
        kind: kind.as_str().to_owned(),
        taken_on,
        outcome,
        notes: request.notes.trim().to_owned(),
        with_aio: request.with_aio,
        next_review: Some(next_review),
        recorded_by,
        recorded_by_role: role,
        recorded_at: now,
        parents_reached: !request.parents_not_reached,
    };
    let id: String = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM case_actions")
            .fetch_one(&mut *tx)
            .await?;
        let id = format!("act-{:07}", count + 1);
        sqlx::query(
            "INSERT INTO case_actions (id, request_id, case_id, stage, kind, taken_on, outcome, \
             notes, with_aio, next_review, recorded_by, recorded_by_role, recorded_at, \
             parents_reached) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&id)
        .bind(&request_id)
        .bind(&row.case_id)
        .bind(&row.stage)
        .bind(&row.kind)
        .bind(row.taken_on)
        .bind(&row.outcome)
        .bind(&row.notes)
        .bind(row.with_aio)
        .bind(row.next_review)
        .bind(&row.recorded_by)
        .bind(&row.recorded_by_role)
        .bind(row.recorded_at)
        .bind(row.parents_reached)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE cases SET next_review = $2 WHERE id = $1")
            .bind(&row.case_id)
            .bind(next_review)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(id)
    }
    .await)
    .map_err(storage("recording an action"))?;
    tracing::info!(case = %case_id, action = %id, kind = kind.as_str(), "Action recorded");
    Ok(RecordActionResponse {
        action: Some(ActionRow { id, ..row }.into_proto()),
        already_recorded: false,
    })
}

/// Lists open cases whose review is overdue, by owner role.
pub(crate) async fn overdue(
    db: &Db,
    school: &str,
    as_of: NaiveDate,
) -> Result<Vec<OwnerReviews>, Status> {
    let rows: Vec<CaseRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE status <> 'closed' AND next_review < $1 \
             AND ($2 = '' OR laestab = $2) ORDER BY next_review, id"
        )))
        .bind(as_of)
        .bind(school)
        .fetch_all(pool)
        .await
    })
    .map_err(storage("listing overdue reviews"))?;
    let mut owners: BTreeMap<String, Vec<CaseRow>> = BTreeMap::new();
    for row in rows {
        owners.entry(row.owner_role.clone()).or_default().push(row);
    }
    Ok(owners
        .into_iter()
        .map(|(owner_role, cases)| OwnerReviews {
            owner_role,
            cases: cases.into_iter().map(CaseRow::into_proto).collect(),
        })
        .collect())
}

#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    event: String,
    detail: String,
    recorded_by: String,
    recorded_at: DateTime<Utc>,
    stage: String,
    reason: String,
    on_date: Option<NaiveDate>,
}

/// Returns a case's timeline.
pub(crate) async fn timeline(db: &Db, case_id: &str) -> Result<GetCaseTimelineResponse, Status> {
    let case = fetch_case(db, case_id).await?;
    let (events, actions): (Vec<EventRow>, Vec<ActionRow>) = with_db!(db, |pool| async {
        let events = sqlx::query_as(
            "SELECT event, detail, recorded_by, recorded_at, stage, reason, on_date FROM case_events \
             WHERE case_id = $1 ORDER BY id",
        )
        .bind(case_id)
        .fetch_all(pool)
        .await?;
        let actions = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ACTION_COLUMNS} FROM case_actions WHERE case_id = $1 ORDER BY recorded_at, id"
        )))
        .bind(case_id)
        .fetch_all(pool)
        .await?;
        Ok::<_, sqlx::Error>((events, actions))
    }
    .await)
    .map_err(storage("reading a timeline"))?;

    let mut entries: Vec<TimelineEntry> = events
        .into_iter()
        .map(|event| TimelineEntry {
            at: Some(timestamp(event.recorded_at)),
            kind: event.event,
            stage: event.stage,
            detail: event.detail,
            reason: event.reason,
            by: event.recorded_by,
            communicated_to_parents: false,
            on_date: event
                .on_date
                .unwrap_or_else(|| event.recorded_at.date_naive())
                .to_string(),
        })
        .collect();
    for action in actions {
        let with = if action.with_aio {
            " with the trust's Attendance Improvement Officer"
        } else {
            ""
        };
        entries.push(TimelineEntry {
            at: Some(timestamp(action.recorded_at)),
            detail: format!(
                "{} on {}{with}{}",
                action.kind.replace('_', " "),
                action.taken_on,
                if action.notes.is_empty() {
                    String::new()
                } else {
                    format!(": {}", action.notes)
                }
            ),
            kind: action.kind,
            stage: action.stage,
            reason: action.outcome,
            by: by_with_role(&action.recorded_by, &action.recorded_by_role),
            communicated_to_parents: action.parents_reached,
            on_date: action.taken_on.to_string(),
        });
    }
    entries.extend(
        crate::messaging::store::for_timeline(
            db,
            &case.id,
            &case.upn,
            &case.laestab,
            case.opened_at,
        )
        .await?,
    );
    // In the order things happened, then the order they were recorded.
    entries.sort_by_key(|entry| {
        (
            entry.on_date.clone(),
            entry.at.map(|at| (at.seconds, at.nanos)),
        )
    });
    Ok(GetCaseTimelineResponse {
        r#case: Some(case.into_proto()),
        entries,
    })
}
