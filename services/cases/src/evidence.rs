//! The evidence a pupil's case file gives the referrals service: the stages of the ladder that
//! still lack their required actions, the letters sent to the parents, assessments of the family's
//! circumstances and the support offered.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::{GetReferralEvidenceResponse, SentLetter};
use rollcall_domain::ladder::{ActionKind, Role, missing_before_escalating};
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::casework::ladder_of;
use crate::fields::storage;
use crate::messaging::templates::channel_to_proto;
use crate::service::{CASE_COLUMNS, CaseRow};

/// Action kinds that count as support offered to the family before enforcement.
const SUPPORT_ACTIONS: [ActionKind; 4] = [
    ActionKind::Meeting,
    ActionKind::StructuredMeeting,
    ActionKind::HomeVisit,
    ActionKind::AttendanceContract,
];

#[derive(sqlx::FromRow)]
struct ActionOnCase {
    case_id: String,
    stage: String,
    kind: String,
    taken_on: NaiveDate,
}

#[derive(sqlx::FromRow)]
struct SentRow {
    id: String,
    template: String,
    channel: String,
    sent_at: Option<DateTime<Utc>>,
    has_document: bool,
}

#[derive(sqlx::FromRow)]
struct LetterEvent {
    reason: String,
    on_date: Option<NaiveDate>,
}

#[derive(sqlx::FromRow)]
struct DatedRow {
    on_date: NaiveDate,
}

/// Gathers the evidence for one pupil at one school from all of the pupil's cases there.
pub(crate) async fn gather(
    db: &Db,
    upn: &str,
    laestab: &str,
) -> Result<GetReferralEvidenceResponse, Status> {
    let (cases, actions, sent, letter_events, plans, reintegrations) = with_db!(db, |pool| async {
        let cases: Vec<CaseRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CASE_COLUMNS} FROM cases WHERE upn = $1 AND laestab = $2 ORDER BY opened_at, id"
        )))
        .bind(upn)
        .bind(laestab)
        .fetch_all(pool)
        .await?;
        let actions: Vec<ActionOnCase> = sqlx::query_as(
            "SELECT a.case_id, a.stage, a.kind, a.taken_on FROM case_actions a \
             JOIN cases c ON c.id = a.case_id WHERE c.upn = $1 AND c.laestab = $2 \
             ORDER BY a.taken_on, a.id",
        )
        .bind(upn)
        .bind(laestab)
        .fetch_all(pool)
        .await?;
        let sent: Vec<SentRow> = sqlx::query_as(
            "SELECT id, template, channel, sent_at, document IS NOT NULL AS has_document \
             FROM messages WHERE upn = $1 AND laestab = $2 AND status = 'sent' \
             AND purpose = 'letter' ORDER BY sent_at, id",
        )
        .bind(upn)
        .bind(laestab)
        .fetch_all(pool)
        .await?;
        let letter_events: Vec<LetterEvent> = sqlx::query_as(
            "SELECT e.reason, e.on_date FROM case_events e JOIN cases c ON c.id = e.case_id \
             WHERE c.upn = $1 AND c.laestab = $2 AND e.event = 'letter_written'",
        )
        .bind(upn)
        .bind(laestab)
        .fetch_all(pool)
        .await?;
        let plans: Vec<DatedRow> = sqlx::query_as(
            "SELECT start_date AS on_date FROM plans WHERE upn = $1 AND laestab = $2 \
             ORDER BY start_date",
        )
        .bind(upn)
        .bind(laestab)
        .fetch_all(pool)
        .await?;
        let reintegrations: Vec<DatedRow> = sqlx::query_as(
            "SELECT r.starts_on AS on_date FROM reintegrations r JOIN cases c ON c.id = r.case_id \
             WHERE c.upn = $1 AND c.laestab = $2 ORDER BY r.starts_on",
        )
        .bind(upn)
        .bind(laestab)
        .fetch_all(pool)
        .await?;
        Ok::<_, sqlx::Error>((cases, actions, sent, letter_events, plans, reintegrations))
    }
    .await)
    .map_err(storage("reading the case file for a referral"))?;

    // The date on each letter, from the event that filed it, which lists the message ids.
    let mut letter_dates: BTreeMap<String, NaiveDate> = BTreeMap::new();
    for event in &letter_events {
        if let Some(on_date) = event.on_date {
            for id in event.reason.split(',').map(str::trim) {
                letter_dates.insert(id.to_owned(), on_date);
            }
        }
    }
    let letters = sent
        .into_iter()
        .map(|row| SentLetter {
            // A letter counts from the later of the date it bears and the day it was sent, so
            // a backdated letter is not taken as served earlier than it was.
            sent_on: letter_dates
                .get(&row.id)
                .copied()
                .max(row.sent_at.map(|at| at.date_naive()))
                .map(|date| date.to_string())
                .unwrap_or_default(),
            message_id: row.id,
            template: row.template,
            channel: channel_to_proto(&row.channel).into(),
            has_document: row.has_document,
        })
        .collect();

    let assessed_on = actions
        .iter()
        .filter(|action| action.kind == ActionKind::Assessment.as_str())
        .map(|action| action.taken_on.to_string())
        .collect();
    let mut support: Vec<(NaiveDate, String)> = actions
        .iter()
        .filter(|action| {
            SUPPORT_ACTIONS
                .iter()
                .any(|kind| kind.as_str() == action.kind)
        })
        .map(|action| (action.taken_on, action.kind.replace('_', " ")))
        .collect();
    support.extend(
        plans
            .iter()
            .map(|plan| (plan.on_date, "Attendance Improvement Plan".to_owned())),
    );
    support.extend(
        reintegrations
            .iter()
            .map(|row| (row.on_date, "reintegration programme".to_owned())),
    );
    support.sort();
    let support_offered = support
        .into_iter()
        .map(|(on, what)| format!("{what} on {on}"))
        .collect();

    let live = cases
        .into_iter()
        .filter(|case| case.status != "closed")
        .max_by_key(|case| case.stage_number);
    let Some(case) = live else {
        return Ok(GetReferralEvidenceResponse {
            r#case: None,
            local_authority_stage_reached: false,
            stages_outstanding: Vec::new(),
            letters,
            assessed_on,
            support_offered,
        });
    };

    let ladder = ladder_of(db, &case.ladder, case.ladder_version).await?;
    let authority_position = ladder
        .stages
        .iter()
        .position(|stage| stage.owner == Role::LocalAuthorityAttendanceOfficer)
        .unwrap_or(ladder.stages.len());
    let current = ladder.position(&case.stage).unwrap_or(0);
    let mut stages_outstanding = Vec::new();
    for (position, stage) in ladder.stages.iter().enumerate().take(authority_position) {
        if position > current {
            stages_outstanding.push(format!("stage {} ({}) not reached", stage.id, stage.title));
            continue;
        }
        let recorded: Vec<ActionKind> = actions
            .iter()
            .filter(|action| action.case_id == case.id && action.stage == stage.id)
            .filter_map(|action| action.kind.parse().ok())
            .collect();
        let missing = missing_before_escalating(stage, &recorded);
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|kind| kind.as_str()).collect();
            stages_outstanding.push(format!(
                "stage {} lacks {} (clause {})",
                stage.id,
                names.join(", "),
                stage.clause
            ));
        }
    }
    Ok(GetReferralEvidenceResponse {
        local_authority_stage_reached: current >= authority_position,
        r#case: Some(case.into_proto()),
        stages_outstanding,
        letters,
        assessed_on,
        support_offered,
    })
}
