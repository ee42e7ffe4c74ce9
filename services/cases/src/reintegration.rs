//! Reintegration programmes: tailored steps and check-ins for a pupil returning after an
//! extended absence (clause 5.1.10).

use chrono::{NaiveDate, Utc};
use rollcall_api::cases::v1::{
    CheckIn, CreateReintegrationRequest, RecordCheckInRequest, Reintegration, ReintegrationStep,
};
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, not_found};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::CASES_LOCK_KEY;
use crate::fields::{date, storage};

#[derive(Debug, sqlx::FromRow)]
struct ProgrammeRow {
    id: String,
    case_id: String,
    upn: String,
    absence: String,
    starts_on: NaiveDate,
    status: String,
}

#[derive(Debug, sqlx::FromRow)]
struct StepRow {
    reintegration_id: String,
    description: String,
    due_on: NaiveDate,
    done_on: Option<NaiveDate>,
}

#[derive(Debug, sqlx::FromRow)]
struct CheckInRow {
    reintegration_id: String,
    on_date: NaiveDate,
    held_by: String,
    notes: String,
}

/// Reads a case's programmes, or one programme.
async fn load(db: &Db, case_id: &str, id: &str) -> Result<Vec<Reintegration>, Status> {
    let (programmes, steps, check_ins): (Vec<ProgrammeRow>, Vec<StepRow>, Vec<CheckInRow>) =
        with_db!(db, |pool| async {
            let programmes = sqlx::query_as(
                "SELECT id, case_id, upn, absence, starts_on, status FROM reintegrations \
                 WHERE ($1 = '' OR case_id = $1) AND ($2 = '' OR id = $2) ORDER BY id",
            )
            .bind(case_id)
            .bind(id)
            .fetch_all(pool)
            .await?;
            let steps = sqlx::query_as(
                "SELECT reintegration_id, description, due_on, done_on FROM reintegration_steps \
                 ORDER BY reintegration_id, position",
            )
            .fetch_all(pool)
            .await?;
            let check_ins = sqlx::query_as(
                "SELECT reintegration_id, on_date, held_by, notes FROM reintegration_check_ins \
                 ORDER BY reintegration_id, on_date, recorded_at",
            )
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((programmes, steps, check_ins))
        }
        .await)
        .map_err(storage("reading reintegration programmes"))?;
    Ok(programmes
        .into_iter()
        .map(|row| Reintegration {
            steps: steps
                .iter()
                .filter(|step| step.reintegration_id == row.id)
                .map(|step| ReintegrationStep {
                    description: step.description.clone(),
                    due_on: step.due_on.to_string(),
                    done_on: step.done_on.map(|d| d.to_string()).unwrap_or_default(),
                })
                .collect(),
            check_ins: check_ins
                .iter()
                .filter(|check_in| check_in.reintegration_id == row.id)
                .map(|check_in| CheckIn {
                    on_date: check_in.on_date.to_string(),
                    by: check_in.held_by.clone(),
                    notes: check_in.notes.clone(),
                })
                .collect(),
            id: row.id,
            case_id: row.case_id,
            upn: row.upn,
            absence: row.absence,
            starts_on: row.starts_on.to_string(),
            status: row.status,
        })
        .collect())
}

/// Lists a case's programmes.
pub(crate) async fn list(db: &Db, case_id: &str) -> Result<Vec<Reintegration>, Status> {
    load(db, case_id, "").await
}

/// Sets a programme on a case.
pub(crate) async fn create(
    db: &Db,
    request: CreateReintegrationRequest,
) -> Result<Reintegration, Status> {
    let case_id = request.case_id.trim().to_owned();
    let absence = request.absence.trim();
    if absence.is_empty() {
        return Err(invalid_argument(
            "absence",
            &request.absence,
            "describe the extended absence, for example illness from 1 October to 14 November",
        ));
    }
    if request.created_by.trim().is_empty() {
        return Err(invalid_argument(
            "created_by",
            &request.created_by,
            "give the person's name",
        ));
    }

    let starts_on = date("starts_on", &request.starts_on)?;
    if request.steps.is_empty() {
        return Err(invalid_argument(
            "steps",
            "",
            "a programme needs at least one step tailored to the pupil",
        ));
    }

    let mut steps = Vec::new();
    for (index, step) in request.steps.iter().enumerate() {
        let field = format!("steps[{index}]");
        if step.description.trim().is_empty() {
            return Err(invalid_argument(
                &format!("{field}.description"),
                "",
                "describe the step",
            ));
        }
        let due = date(&format!("{field}.due_on"), &step.due_on)?;
        if due < starts_on {
            return Err(invalid_argument(
                &format!("{field}.due_on"),
                &step.due_on,
                format!("it is before the first day back, {starts_on}"),
            ));
        }
        steps.push((step.description.trim().to_owned(), due));
    }

    let case: Option<(String, String)> = with_db!(db, |pool| {
        sqlx::query_as("SELECT upn, status FROM cases WHERE id = $1")
            .bind(&case_id)
            .fetch_optional(pool)
            .await
    })
    .map_err(storage("reading a case"))?;
    let (upn, status) = case.ok_or_else(|| not_found("case", &case_id))?;
    if status == "closed" {
        return Err(failed_precondition(format!(
            "case {case_id} is closed; a programme goes on an open case"
        )));
    }

    let now = Utc::now();
    let id: String = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reintegrations")
            .fetch_one(&mut *tx)
            .await?;
        let id = format!("rin-{:06}", count + 1);
        sqlx::query(
            "INSERT INTO reintegrations (id, case_id, upn, absence, starts_on, status, \
             created_by, created_at) VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
        )
        .bind(&id)
        .bind(&case_id)
        .bind(&upn)
        .bind(absence)
        .bind(starts_on)
        .bind(request.created_by.trim())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (position, (description, due)) in steps.iter().enumerate() {
            sqlx::query(
                "INSERT INTO reintegration_steps (reintegration_id, position, description, \
                 due_on) VALUES ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(i32::try_from(position + 1).unwrap_or(i32::MAX))
            .bind(description)
            .bind(*due)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(id)
    }
    .await)
    .map_err(storage("setting a reintegration programme"))?;

    tracing::info!(programme = %id, case = %case_id, upn = %upn, "Reintegration programme set");
    load(db, "", &id)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| not_found("reintegration programme", &id))
}

/// Records a check-in and the steps completed.
pub(crate) async fn check_in(
    db: &Db,
    request: RecordCheckInRequest,
) -> Result<Reintegration, Status> {
    let id = request.reintegration_id.trim().to_owned();
    let programme = load(db, "", &id)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| not_found("reintegration programme", &id))?;

    let on = date("on_date", &request.on_date)?;
    let starts_on = date("starts_on", &programme.starts_on)?;
    if on < starts_on {
        return Err(invalid_argument(
            "on_date",
            &request.on_date,
            format!("it is before the first day back, {starts_on}"),
        ));
    }

    for (field, value) in [("by", &request.by), ("notes", &request.notes)] {
        if value.trim().is_empty() {
            return Err(invalid_argument(
                field,
                value,
                "this is required for a check-in",
            ));
        }
    }

    let count = programme.steps.len();
    for position in &request.completed_steps {
        let valid = usize::try_from(*position).is_ok_and(|p| (1..=count).contains(&p));
        if !valid {
            return Err(invalid_argument(
                "completed_steps",
                &position.to_string(),
                format!("the programme has steps 1 to {count}"),
            ));
        }
    }

    let now = Utc::now();
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        sqlx::query(
            "INSERT INTO reintegration_check_ins (reintegration_id, on_date, held_by, notes, \
             recorded_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(on)
        .bind(request.by.trim())
        .bind(request.notes.trim())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for position in &request.completed_steps {
            sqlx::query(
                "UPDATE reintegration_steps SET done_on = $3 \
                 WHERE reintegration_id = $1 AND position = $2 AND done_on IS NULL",
            )
            .bind(&id)
            .bind(*position)
            .bind(on)
            .execute(&mut *tx)
            .await?;
        }
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM reintegration_steps WHERE reintegration_id = $1 \
             AND done_on IS NULL",
        )
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
        if open == 0 {
            sqlx::query("UPDATE reintegrations SET status = 'complete' WHERE id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }
    .await)
    .map_err(storage("recording a check-in"))?;

    tracing::info!(programme = %id, "Reintegration check-in recorded");
    load(db, "", &id)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| not_found("reintegration programme", &id))
}
