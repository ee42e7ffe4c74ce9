//! Attendance Improvement Plans: targets on a case, reviewed against the registers.
//!
//! A plan sets an attendance target (and optionally a limit on late marks) from a start date,
//! with a review date and an owner. Each review measures progress from the start date through
//! the policy service, which reads the registers. Pupils under 90% attendance have their
//! targets reviewed by the trust's Attendance Improvement Officer (clause 5.1.4).

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::{
    CreatePlanRequest, ListPlansRequest, Plan, PlanReview, ReviewPlanRequest,
};
use rollcall_api::client::Channel;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::policy::v1::{GetAttendanceStatisticsRequest, StatisticsGroup, StatisticsRange};
use rollcall_domain::ladder::Role;
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, not_found, upstream_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::CASES_LOCK_KEY;
use crate::fields::{date, storage};

/// Attendance below which a plan's targets are reviewed by the trust's AIO, in tenths of a
/// percent (clause 5.1.4).
const AIO_BELOW_TENTHS: u32 = 900;

#[derive(Debug, sqlx::FromRow)]
struct PlanRow {
    id: String,
    case_id: String,
    upn: String,
    laestab: String,
    attendance_target_percent: i32,
    max_lates: Option<i32>,
    start_date: NaiveDate,
    review_date: NaiveDate,
    owner_name: String,
    owner_role: String,
    status: String,
}

#[derive(Debug, sqlx::FromRow)]
struct ReviewRow {
    plan_id: String,
    reviewed_on: NaiveDate,
    attendance_tenths: Option<i32>,
    lates: i32,
    attendance_met: bool,
    punctuality_met: bool,
    reviewed_by: String,
    notes: String,
    next_review: Option<NaiveDate>,
}

const PLAN_COLUMNS: &str = "id, case_id, upn, laestab, attendance_target_percent, max_lates, \
     start_date, review_date, owner_name, owner_role, status";

fn to_proto(row: PlanRow, reviews: &[ReviewRow]) -> Plan {
    Plan {
        reviews: reviews
            .iter()
            .filter(|review| review.plan_id == row.id)
            .map(|review| PlanReview {
                reviewed_on: review.reviewed_on.to_string(),
                attendance_percent: review.attendance_tenths.map(|t| f64::from(t) / 10.0),
                lates: review.lates,
                attendance_met: review.attendance_met,
                punctuality_met: review.punctuality_met,
                reviewed_by: review.reviewed_by.clone(),
                notes: review.notes.clone(),
                next_review: review
                    .next_review
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
            })
            .collect(),
        id: row.id,
        case_id: row.case_id,
        upn: row.upn,
        laestab: row.laestab,
        attendance_target_percent: row.attendance_target_percent,
        max_lates: row.max_lates,
        start_date: row.start_date.to_string(),
        review_date: row.review_date.to_string(),
        owner_name: row.owner_name,
        owner_role: row.owner_role,
        status: row.status,
    }
}

/// Asks the policy service for one pupil's figures from `from` to `to`.
async fn pupil_figures(
    policy: &PolicyServiceClient<Channel>,
    upn: &str,
    laestab: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<StatisticsGroup, Status> {
    let response = policy
        .clone()
        .get_attendance_statistics(GetAttendanceStatisticsRequest {
            laestab: laestab.to_owned(),
            upn: upn.to_owned(),
            as_of: to.to_string(),
            range: StatisticsRange::Dates as i32,
            from_date: from.to_string(),
            ..GetAttendanceStatisticsRequest::default()
        })
        .await
        .map_err(|status| upstream_error("policy", status))?
        .into_inner();
    Ok(response.total.unwrap_or_default())
}

fn tenths(group: &StatisticsGroup) -> Option<u32> {
    let figures = group.figures?;
    let possible = u64::try_from(figures.possible_sessions)
        .ok()
        .filter(|p| *p > 0)?;
    let attended = u64::try_from(figures.attended_sessions).ok()?;
    u32::try_from((attended * 1000 + possible / 2) / possible).ok()
}

/// Sets a plan on a case.
pub(crate) async fn create(
    db: &Db,
    policy: &PolicyServiceClient<Channel>,
    request: CreatePlanRequest,
) -> Result<Plan, Status> {
    let case_id = request.case_id.trim().to_owned();
    let target = request.attendance_target_percent;
    if !(1..=100).contains(&target) {
        return Err(invalid_argument(
            "attendance_target_percent",
            &target.to_string(),
            "give a target of 1 to 100 percent",
        ));
    }
    if let Some(lates) = request.max_lates
        && lates < 0
    {
        return Err(invalid_argument(
            "max_lates",
            &lates.to_string(),
            "give 0 or more late marks, or leave it out for no punctuality target",
        ));
    }
    let start = date("start_date", &request.start_date)?;
    let review = date("review_date", &request.review_date)?;
    if review <= start {
        return Err(invalid_argument(
            "review_date",
            &request.review_date,
            format!("it must be after the start date {start}"),
        ));
    }
    let owner_role: Role = request
        .owner_role
        .trim()
        .parse()
        .map_err(|problem: String| invalid_argument("owner_role", &request.owner_role, problem))?;
    for (field, value) in [
        ("owner_name", &request.owner_name),
        ("created_by", &request.created_by),
    ] {
        if value.trim().is_empty() {
            return Err(invalid_argument(field, value, "give the person's name"));
        }
    }
    let case: Option<(String, String, String)> = with_db!(db, |pool| {
        sqlx::query_as("SELECT upn, laestab, status FROM cases WHERE id = $1")
            .bind(&case_id)
            .fetch_optional(pool)
            .await
    })
    .map_err(storage("reading a case"))?;
    let (upn, laestab, status) = case.ok_or_else(|| not_found("case", &case_id))?;
    if status == "closed" {
        return Err(failed_precondition(format!(
            "case {case_id} is closed; a plan goes on an open case"
        )));
    }

    // Attendance so far this academic year decides who reviews the targets.
    let year_start = rollcall_domain::session::academic_year_start(start);
    let so_far = pupil_figures(policy, &upn, &laestab, year_start, start).await?;
    if let Some(current) = tenths(&so_far)
        && current < AIO_BELOW_TENTHS
        && owner_role != Role::TrustAttendanceImprovementOfficer
    {
        return Err(failed_precondition(format!(
            "pupil {upn}'s attendance is {}.{}%, under 90%, so the trust's Attendance \
             Improvement Officer reviews the targets (clause 5.1.4); set owner_role to {}",
            current / 10,
            current % 10,
            Role::TrustAttendanceImprovementOfficer.as_str()
        )));
    }

    let now = Utc::now();
    let id: String = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM plans")
            .fetch_one(&mut *tx)
            .await?;
        let id = format!("plan-{:06}", count + 1);
        sqlx::query(
            "INSERT INTO plans (id, case_id, upn, laestab, attendance_target_percent, max_lates, \
             start_date, review_date, owner_name, owner_role, status, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'active', $11, $12)",
        )
        .bind(&id)
        .bind(&case_id)
        .bind(&upn)
        .bind(&laestab)
        .bind(target)
        .bind(request.max_lates)
        .bind(start)
        .bind(review)
        .bind(request.owner_name.trim())
        .bind(owner_role.as_str())
        .bind(request.created_by.trim())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, \
             stage, reason) SELECT COALESCE(MAX(id), 0) + 1, $1, 'plan', $2, $3, $4, \
             (SELECT stage FROM cases WHERE id = $1), '' FROM case_events",
        )
        .bind(&case_id)
        .bind(format!(
            "Attendance Improvement Plan {id}: attendance of {target}% from {start}, review on \
             {review}, owned by the {}",
            owner_role.as_str().replace('_', " ")
        ))
        .bind(request.created_by.trim())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(id)
    }
    .await)
    .map_err(storage("setting a plan"))?;
    tracing::info!(plan = %id, case = %case_id, upn = %upn, "Attendance Improvement Plan set");
    get(db, &id).await
}

async fn get(db: &Db, id: &str) -> Result<Plan, Status> {
    let (plans, reviews) = load(db, "", "", false, Some(id)).await?;
    plans
        .into_iter()
        .next()
        .map(|row| to_proto(row, &reviews))
        .ok_or_else(|| not_found("plan", id))
}

async fn load(
    db: &Db,
    laestab: &str,
    upn: &str,
    active_only: bool,
    id: Option<&str>,
) -> Result<(Vec<PlanRow>, Vec<ReviewRow>), Status> {
    let status = if active_only { "active" } else { "" };
    let id = id.unwrap_or_default();
    with_db!(db, |pool| async {
        let plans: Vec<PlanRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE ($1 = '' OR laestab = $1) \
             AND ($2 = '' OR upn = $2) AND ($3 = '' OR status = $3) AND ($4 = '' OR id = $4) \
             ORDER BY id"
        )))
        .bind(laestab)
        .bind(upn)
        .bind(status)
        .bind(id)
        .fetch_all(pool)
        .await?;
        let reviews: Vec<ReviewRow> = sqlx::query_as(
            "SELECT plan_id, reviewed_on, attendance_tenths, lates, attendance_met, \
             punctuality_met, reviewed_by, notes, next_review FROM plan_reviews \
             ORDER BY plan_id, reviewed_on",
        )
        .fetch_all(pool)
        .await?;
        Ok::<_, sqlx::Error>((plans, reviews))
    }
    .await)
    .map_err(storage("reading plans"))
}

/// Lists plans with their reviews.
pub(crate) async fn list(db: &Db, request: ListPlansRequest) -> Result<Vec<Plan>, Status> {
    let (plans, reviews) = load(
        db,
        request.laestab.trim(),
        &request.upn.trim().to_ascii_uppercase(),
        request.active_only,
        None,
    )
    .await?;
    Ok(plans
        .into_iter()
        .map(|row| to_proto(row, &reviews))
        .collect())
}

/// Reviews a plan against the registers.
pub(crate) async fn review(
    db: &Db,
    policy: &PolicyServiceClient<Channel>,
    request: ReviewPlanRequest,
) -> Result<Plan, Status> {
    let plan = get(db, request.plan_id.trim()).await?;
    if plan.status != "active" {
        return Err(failed_precondition(format!(
            "plan {} is closed; set a new plan on the case",
            plan.id
        )));
    }
    if request.reviewed_by.trim().is_empty() {
        return Err(invalid_argument(
            "reviewed_by",
            &request.reviewed_by,
            "give the name of the person reviewing",
        ));
    }
    let on = if request.reviewed_on.trim().is_empty() {
        Utc::now().date_naive()
    } else {
        date("reviewed_on", &request.reviewed_on)?
    };
    let start = date("start_date", &plan.start_date)?;
    if on < start {
        return Err(invalid_argument(
            "reviewed_on",
            &request.reviewed_on,
            format!("it is before the plan started on {start}"),
        ));
    }
    let next = if request.next_review.trim().is_empty() {
        None
    } else {
        let next = date("next_review", &request.next_review)?;
        if next <= on {
            return Err(invalid_argument(
                "next_review",
                &request.next_review,
                format!("it must be after the review on {on}"),
            ));
        }
        Some(next)
    };
    let progress = pupil_figures(policy, &plan.upn, &plan.laestab, start, on).await?;
    let attendance = tenths(&progress);
    let target_tenths = u32::try_from(plan.attendance_target_percent).unwrap_or(0) * 10;
    let attendance_met = attendance.is_some_and(|t| t >= target_tenths);
    let lates = progress.late_sessions;
    let punctuality_met = plan.max_lates.is_none_or(|max| lates <= max);

    let now: DateTime<Utc> = Utc::now();
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        sqlx::query(
            "INSERT INTO plan_reviews (plan_id, reviewed_on, attendance_tenths, lates, \
             attendance_met, punctuality_met, reviewed_by, notes, next_review, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (plan_id, reviewed_on) DO UPDATE SET \
             attendance_tenths = excluded.attendance_tenths, lates = excluded.lates, \
             attendance_met = excluded.attendance_met, punctuality_met = excluded.punctuality_met, \
             reviewed_by = excluded.reviewed_by, notes = excluded.notes, \
             next_review = excluded.next_review, recorded_at = excluded.recorded_at",
        )
        .bind(&plan.id)
        .bind(on)
        .bind(attendance.and_then(|t| i32::try_from(t).ok()))
        .bind(lates)
        .bind(attendance_met)
        .bind(punctuality_met)
        .bind(request.reviewed_by.trim())
        .bind(request.notes.trim())
        .bind(next)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        match next {
            Some(next) => {
                sqlx::query("UPDATE plans SET review_date = $2 WHERE id = $1")
                    .bind(&plan.id)
                    .bind(next)
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query("UPDATE plans SET status = 'closed' WHERE id = $1")
                    .bind(&plan.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await
    }
    .await)
    .map_err(storage("reviewing a plan"))?;
    tracing::info!(plan = %plan.id, attendance_met, punctuality_met, "Plan reviewed");
    get(db, &plan.id).await
}
