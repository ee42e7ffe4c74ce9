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
use rollcall_api::convert::{phase_from_proto, timestamp};
use rollcall_domain::ladder::{
    ActionKind, Ladder, choose_ladder, missing_before_escalating, parse_ladder, school_days_after,
    shipped_ladders,
};
use rollcall_domain::session::parse_date;
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, laestab, not_found};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::CASES_LOCK_KEY;
use crate::service::{CASE_COLUMNS, CaseRow};

fn storage(context: &str) -> impl Fn(sqlx::Error) -> Status + '_ {
    move |error| rollcall_runtime::grpc::storage_error(context, error)
}

fn required(field: &str, value: &str, problem: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(invalid_argument(field, value, problem));
    }
    Ok(trimmed.to_owned())
}

fn date_or_today(field: &str, value: &str) -> Result<NaiveDate, Status> {
    if value.trim().is_empty() {
        return Ok(Utc::now().date_naive());
    }
    parse_date(value).map_err(|error| invalid_argument(field, value, error.problem()))
}

#[derive(Debug, sqlx::FromRow)]
struct LadderRow {
    source: String,
}

/// Returns the loaded ladders; a stored ladder this build cannot read is logged and left out.
pub(crate) async fn loaded_ladders(db: &Db) -> Result<Vec<(Ladder, String)>, Status> {
    let rows: Vec<LadderRow> = with_db!(db, |pool| {
        sqlx::query_as("SELECT source FROM ladders ORDER BY id")
            .fetch_all(pool)
            .await
    })
    .map_err(storage("reading ladders"))?;
    let mut ladders = Vec::new();
    for row in rows {
        match parse_ladder(&row.source) {
            Ok(ladder) => ladders.push((ladder, row.source)),
            Err(error) => tracing::error!(%error, "A stored ladder cannot be read and is skipped"),
        }
    }
    Ok(ladders)
}

/// Returns the ladder a case follows: the loaded one with its id, else the shipped one.
async fn ladder_of(db: &Db, id: &str) -> Result<Ladder, Status> {
    let loaded = loaded_ladders(db).await?;
    loaded
        .into_iter()
        .map(|(ladder, _)| ladder)
        .chain(shipped_ladders().into_iter().map(|(l, _)| l.clone()))
        .find(|ladder| ladder.id == id)
        .ok_or_else(|| not_found("ladder", id))
}

fn ladder_to_proto(ladder: &Ladder, source: &str, shipped: bool) -> PbLadder {
    PbLadder {
        id: ladder.id.clone(),
        title: ladder.title.clone(),
        phases: ladder
            .phases
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        shipped,
        source: source.to_owned(),
    }
}

/// Lists the ladders in use.
pub(crate) async fn list_ladders(db: &Db) -> Result<Vec<PbLadder>, Status> {
    let loaded = loaded_ladders(db).await?;
    let mut ladders: Vec<PbLadder> = loaded
        .iter()
        .map(|(ladder, source)| ladder_to_proto(ladder, source, false))
        .collect();
    for (ladder, source) in shipped_ladders() {
        if !loaded.iter().any(|(l, _)| l.id == ladder.id) {
            ladders.push(ladder_to_proto(ladder, source, true));
        }
    }
    ladders.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ladders)
}

/// Checks and stores a ladder file.
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
    let now = Utc::now();
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        sqlx::query(
            "INSERT INTO ladders (id, source, loaded_by, loaded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET source = excluded.source, \
             loaded_by = excluded.loaded_by, loaded_at = excluded.loaded_at",
        )
        .bind(&ladder.id)
        .bind(source)
        .bind(&loaded_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await)
    .map_err(storage("storing a ladder"))?;
    tracing::info!(ladder = %ladder.id, "Ladder loaded");
    Ok(ladder_to_proto(&ladder, source, false))
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

/// Opens a case by hand at the first stage of the pupil's ladder.
pub(crate) async fn open(db: &Db, request: OpenCaseRequest) -> Result<CaseRow, Status> {
    let upn = required("upn", &request.upn, "a UPN is required")?.to_ascii_uppercase();
    rollcall_domain::Upn::parse(&upn)
        .map_err(|error| invalid_argument("upn", &request.upn, error.to_string()))?;
    let school = laestab("laestab", &request.laestab)?;
    let concern = required(
        "concern",
        &request.concern,
        "say what the case is about, such as persistent_absence",
    )?;
    let phase = phase_from_proto(request.phase).ok_or_else(|| {
        invalid_argument(
            "phase",
            &request.phase.to_string(),
            "give the pupil's phase: infant, junior or secondary",
        )
    })?;
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
    let loaded: Vec<Ladder> = loaded_ladders(db)
        .await?
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    let ladder = choose_ladder(&loaded, phase);
    let Some(stage) = ladder.stages.first() else {
        return Err(failed_precondition(format!(
            "ladder {} has no stages",
            ladder.id
        )));
    };
    let now = Utc::now();
    let next_review = school_days_after(on, stage.review_interval_days);

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
             opened_by) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, 'open', $9, '', $10, $11, $12)",
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
        .execute(&mut *tx)
        .await
        .map_err(storage("opening a case"))?;
        let detail = format!(
            "Opened by hand at stage {} ({})",
            stage.id,
            stage.owner.as_str()
        );
        let by = by_with_role(&opened_by, &request.role);
        let record = NewEvent {
            case_id: &id,
            event: "opened",
            stage: &stage.id,
            detail: &detail,
            reason: &reason,
            by: &by,
            at: now,
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

/// A change to record in `case_events`.
struct NewEvent<'a> {
    case_id: &'a str,
    event: &'a str,
    stage: &'a str,
    detail: &'a str,
    reason: &'a str,
    by: &'a str,
    at: DateTime<Utc>,
}

async fn insert_event<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    event: NewEvent<'_>,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e mut <DB as sqlx::Database>::Connection: sqlx::Executor<'e, Database = DB>,
{
    sqlx::query(
        "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, stage, \
         reason) SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7 FROM case_events",
    )
    .bind(event.case_id)
    .bind(event.event)
    .bind(event.detail)
    .bind(event.by)
    .bind(event.at)
    .bind(event.stage)
    .bind(event.reason)
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

/// Escalates, de-escalates or closes a case.
pub(crate) async fn change(
    db: &Db,
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
    let case = fetch_case(db, &case_id).await?;
    if case.status == "closed" {
        return Err(failed_precondition(format!(
            "case {case_id} is closed; open a new case if the concern returns"
        )));
    }
    let ladder = ladder_of(db, &case.ladder).await?;
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
    };

    let now = Utc::now();
    let by = by_with_role(&changed_by, &request.role);
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
                .bind(school_days_after(on, stage.review_interval_days))
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
                };
                insert_event(&mut tx, record).await?;
            }
            None => {
                sqlx::query("UPDATE cases SET status = 'closed', next_review = NULL WHERE id = $1")
                    .bind(&case_id)
                    .execute(&mut *tx)
                    .await?;
                let record = NewEvent {
                    case_id: &case_id,
                    event: "closed",
                    stage: &current.id,
                    detail: "Closed",
                    reason: &reason,
                    by: &by,
                    at: now,
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
}

const ACTION_COLUMNS: &str = "id, case_id, stage, kind, taken_on, outcome, notes, with_aio, \
     next_review, recorded_by, recorded_by_role, recorded_at";

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
        }
    }
}

/// Records an action on a case.
pub(crate) async fn record_action(
    db: &Db,
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
    let case = fetch_case(db, &case_id).await?;
    if case.status == "closed" {
        return Err(failed_precondition(format!(
            "case {case_id} is closed; actions go on an open case"
        )));
    }
    let ladder = ladder_of(db, &case.ladder).await?;
    let interval = ladder
        .position(&case.stage)
        .map_or(10, |index| ladder.stages[index].review_interval_days);
    let next_review = if request.next_review.trim().is_empty() {
        school_days_after(taken_on, interval)
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
        recorded_by_role: request.role.trim().to_owned(),
        recorded_at: now,
    };
    let id: String = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM case_actions")
            .fetch_one(&mut *tx)
            .await?;
        let id = format!("act-{:07}", count + 1);
        sqlx::query(
            "INSERT INTO case_actions (id, request_id, case_id, stage, kind, taken_on, outcome, \
             notes, with_aio, next_review, recorded_by, recorded_by_role, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
}

/// Returns a case's timeline.
pub(crate) async fn timeline(db: &Db, case_id: &str) -> Result<GetCaseTimelineResponse, Status> {
    let case = fetch_case(db, case_id).await?;
    let (events, actions): (Vec<EventRow>, Vec<ActionRow>) = with_db!(db, |pool| async {
        let events = sqlx::query_as(
            "SELECT event, detail, recorded_by, recorded_at, stage, reason FROM case_events \
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
            communicated_to_parents: true,
        });
    }
    entries.sort_by_key(|entry| entry.at.map(|at| (at.seconds, at.nanos)));
    Ok(GetCaseTimelineResponse {
        r#case: Some(case.into_proto()),
        entries,
    })
}
