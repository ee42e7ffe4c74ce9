//! Truancy incidents made from the registers' post-registration truancy flags, and rewards
//! given to pupils.

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::{
    GivenReward, RecordRewardRequest, RecordRewardResponse, RecordTruancyIncidentRequest,
    RecordTruancyIncidentResponse, TruancyIncident,
};
use rollcall_api::client::Channel;
use rollcall_api::convert::timestamp;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{ListTruancyFlagsRequest, TruancyFlag};
use rollcall_domain::policy::rewards::Reward;
use rollcall_runtime::grpc::{invalid_argument, laestab, not_found, upstream_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::CASES_LOCK_KEY;
use crate::fields::{date, required, storage};

/// Reads every truancy flag the registers hold for a school.
pub(crate) async fn flags(
    registers: &RegistersServiceClient<Channel>,
    school: &str,
) -> Result<Vec<TruancyFlag>, Status> {
    let mut registers = registers.clone();
    let mut flags = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = registers
            .list_truancy_flags(ListTruancyFlagsRequest {
                laestab: school.to_owned(),
                from_date: String::new(),
                to_date: String::new(),
                page_size: 1_000,
                page_token,
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        flags.extend(page.flags);
        if page.next_page_token.is_empty() {
            return Ok(flags);
        }
        page_token = page.next_page_token;
    }
}

#[derive(Debug, sqlx::FromRow)]
struct IncidentRow {
    id: String,
    flag_id: String,
    laestab: String,
    upn: String,
    incident_date: NaiveDate,
    sanction: String,
    parents_informed_on: NaiveDate,
    parents_informed_how: String,
    support_offered: String,
    recorded_by: String,
    role: String,
    recorded_at: DateTime<Utc>,
}

const INCIDENT_COLUMNS: &str = "id, flag_id, laestab, upn, incident_date, sanction, \
     parents_informed_on, parents_informed_how, support_offered, recorded_by, role, recorded_at";

impl IncidentRow {
    fn into_proto(self) -> TruancyIncident {
        TruancyIncident {
            id: self.id,
            flag_id: self.flag_id,
            laestab: self.laestab,
            upn: self.upn,
            date: self.incident_date.to_string(),
            sanction: self.sanction,
            parents_informed_on: self.parents_informed_on.to_string(),
            parents_informed_how: self.parents_informed_how,
            support_offered: self.support_offered,
            recorded_by: self.recorded_by,
            role: self.role,
            recorded_at: Some(timestamp(self.recorded_at)),
        }
    }
}

/// Lists a school's incidents.
pub(crate) async fn incidents(db: &Db, school: &str) -> Result<Vec<TruancyIncident>, Status> {
    let rows: Vec<IncidentRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INCIDENT_COLUMNS} FROM truancy_incidents WHERE laestab = $1 \
             ORDER BY incident_date, id"
        )))
        .bind(school)
        .fetch_all(pool)
        .await
    })
    .map_err(storage("reading truancy incidents"))?;
    Ok(rows.into_iter().map(IncidentRow::into_proto).collect())
}

/// Records an incident for a registers flag, once.
pub(crate) async fn record_incident(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: RecordTruancyIncidentRequest,
) -> Result<RecordTruancyIncidentResponse, Status> {
    let school = laestab("laestab", &request.laestab)?;
    let flag_id = required(
        "flag_id",
        &request.flag_id,
        "give the id of the registers' flag",
    )?;
    let existing: Option<IncidentRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {INCIDENT_COLUMNS} FROM truancy_incidents WHERE flag_id = $1"
        )))
        .bind(&flag_id)
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading truancy incidents"))?;
    if let Some(row) = existing {
        return Ok(RecordTruancyIncidentResponse {
            incident: Some(row.into_proto()),
            already_recorded: true,
        });
    }
    let sanction = required("sanction", &request.sanction, "record the sanction applied")?;
    let informed_on = date("parents_informed_on", &request.parents_informed_on)?;
    let informed_how = required(
        "parents_informed_how",
        &request.parents_informed_how,
        "record how the parents were told, for example phone call",
    )?;
    let support = required(
        "support_offered",
        &request.support_offered,
        "record the support offered to the pupil",
    )?;
    let recorded_by = required(
        "recorded_by",
        &request.recorded_by,
        "give the person's name",
    )?;
    let flag = flags(registers, &school)
        .await?
        .into_iter()
        .find(|flag| flag.id == flag_id)
        .ok_or_else(|| not_found(&format!("truancy flag at school {school}:"), &flag_id))?;
    let incident_date = date("flag date", &flag.date)?;
    if informed_on < incident_date {
        return Err(invalid_argument(
            "parents_informed_on",
            &request.parents_informed_on,
            format!("it is before the truancy on {incident_date}"),
        ));
    }

    let now = Utc::now();
    let id: String = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM truancy_incidents")
            .fetch_one(&mut *tx)
            .await?;
        let id = format!("trn-{:06}", count + 1);
        sqlx::query(
            "INSERT INTO truancy_incidents (id, flag_id, laestab, upn, incident_date, sanction, \
             parents_informed_on, parents_informed_how, support_offered, recorded_by, role, \
             recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(&flag_id)
        .bind(&school)
        .bind(&flag.upn)
        .bind(incident_date)
        .bind(&sanction)
        .bind(informed_on)
        .bind(&informed_how)
        .bind(&support)
        .bind(&recorded_by)
        .bind(request.role.trim())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // The pupil's live cases carry it on their timeline.
        sqlx::query(
            "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, \
             stage, reason) \
             SELECT (SELECT COALESCE(MAX(id), 0) FROM case_events) + ROW_NUMBER() OVER (ORDER BY c.id), \
             c.id, 'truancy', $2, $3, $4, c.stage, $5 \
             FROM cases c WHERE c.upn = $1 AND c.status <> 'closed'",
        )
        .bind(&flag.upn)
        .bind(format!(
            "Truancy on {incident_date}: parents told on {informed_on} by {informed_how}; \
             support offered: {support}"
        ))
        .bind(&recorded_by)
        .bind(now)
        .bind(&sanction)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(id)
    }
    .await)
    .map_err(storage("recording a truancy incident"))?;
    tracing::info!(incident = %id, flag = %flag_id, upn = %flag.upn, laestab = %school, "Truancy incident recorded");
    let incident = incidents(db, &school)
        .await?
        .into_iter()
        .find(|incident| incident.id == id)
        .ok_or_else(|| not_found("truancy incident", &id))?;
    Ok(RecordTruancyIncidentResponse {
        incident: Some(incident),
        already_recorded: false,
    })
}

#[derive(Debug, sqlx::FromRow)]
struct RewardRow {
    id: String,
    laestab: String,
    upn: String,
    reward: String,
    period_from: NaiveDate,
    period_to: NaiveDate,
    given_on: NaiveDate,
    given_by: String,
    notes: String,
}

impl RewardRow {
    fn into_proto(self) -> GivenReward {
        GivenReward {
            id: self.id,
            laestab: self.laestab,
            upn: self.upn,
            reward: self.reward,
            period_from: self.period_from.to_string(),
            period_to: self.period_to.to_string(),
            given_on: self.given_on.to_string(),
            given_by: self.given_by,
            notes: self.notes,
        }
    }
}

const REWARD_COLUMNS: &str =
    "id, laestab, upn, reward, period_from, period_to, given_on, given_by, notes";

/// Lists the rewards given at a school.
pub(crate) async fn given_rewards(db: &Db, school: &str) -> Result<Vec<GivenReward>, Status> {
    let rows: Vec<RewardRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REWARD_COLUMNS} FROM given_rewards WHERE laestab = $1 ORDER BY given_on, id"
        )))
        .bind(school)
        .fetch_all(pool)
        .await
    })
    .map_err(storage("reading rewards"))?;
    Ok(rows.into_iter().map(RewardRow::into_proto).collect())
}

/// Records a reward, once per pupil, reward and period.
pub(crate) async fn record_reward(
    db: &Db,
    request: RecordRewardRequest,
) -> Result<RecordRewardResponse, Status> {
    let school = laestab("laestab", &request.laestab)?;
    let upn = required("upn", &request.upn, "a UPN is required")?.to_ascii_uppercase();
    rollcall_domain::Upn::parse(&upn)
        .map_err(|error| invalid_argument("upn", &request.upn, error.to_string()))?;
    let names = [
        Reward::ExcellentAttendance,
        Reward::MuchImprovedAttendance,
        Reward::ExcellentPunctuality,
        Reward::MuchImprovedPunctuality,
    ];
    let reward = names
        .iter()
        .find(|reward| reward.as_str() == request.reward.trim())
        .ok_or_else(|| {
            let known: Vec<&str> = names.iter().map(|reward| reward.as_str()).collect();
            invalid_argument(
                "reward",
                &request.reward,
                format!("use one of {}", known.join(", ")),
            )
        })?;
    let from = date("period_from", &request.period_from)?;
    let to = date("period_to", &request.period_to)?;
    if to < from {
        return Err(invalid_argument(
            "period_to",
            &request.period_to,
            format!("it is before period_from {from}"),
        ));
    }
    let given_on = date("given_on", &request.given_on)?;
    let given_by = required("given_by", &request.given_by, "give the person's name")?;

    let inserted: (String, u64) = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        // The highest number in use, not the row count: a UPN change that merges two pupils
        // can remove a reward given to both.
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(CAST(SUBSTR(id, 5) AS BIGINT)), 0) FROM given_rewards",
        )
        .fetch_one(&mut *tx)
        .await?;
        let id = format!("rwd-{:06}", last + 1);
        let done = sqlx::query(
            "INSERT INTO given_rewards (id, laestab, upn, reward, period_from, period_to, \
             given_on, given_by, notes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (laestab, upn, reward, period_from, period_to) DO NOTHING",
        )
        .bind(&id)
        .bind(&school)
        .bind(&upn)
        .bind(reward.as_str())
        .bind(from)
        .bind(to)
        .bind(given_on)
        .bind(&given_by)
        .bind(request.notes.trim())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok::<_, sqlx::Error>((id, done))
    }
    .await)
    .map_err(storage("recording a reward"))?;
    let (id, done) = inserted;
    let row = given_rewards(db, &school)
        .await?
        .into_iter()
        .find(|given| {
            given.upn == upn
                && given.reward == reward.as_str()
                && given.period_from == from.to_string()
                && given.period_to == to.to_string()
        })
        .ok_or_else(|| not_found("reward", &id))?;
    if done > 0 {
        tracing::info!(reward = %row.id, upn = %upn, laestab = %school, "Reward recorded");
    }
    Ok(RecordRewardResponse {
        reward: Some(row),
        already_recorded: done == 0,
    })
}
