//! The gRPC service: requests in, figures and thresholds from the domain library, responses out.

use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::convert::timestamp;
use rollcall_api::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use rollcall_api::policy::v1::{
    CountedSession, GetPolicyRequest, GetPolicyResponse, GetPupilAttendanceRequest,
    GetPupilAttendanceResponse, GetSchoolAttendanceRequest, GetSchoolAttendanceResponse,
    GetSyncStateRequest, GetSyncStateResponse, Period, Policy as PbPolicy, PolicyRule,
    PupilAttendance, ThresholdStatus, Trigger, TriggerKind, TriggerState, WatchTriggersRequest,
    WatchTriggersResponse,
};
use rollcall_api::registers::v1::GetPupilRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::types::v1::{Phase as PbPhase, Session as PbSession};
use rollcall_domain::policy::ThresholdEvaluation;
use rollcall_domain::{Figures, Phase, Policy as DomainPolicy};
use rollcall_runtime::grpc::{
    MAX_MESSAGE_BYTES, failed_precondition, invalid_argument, laestab, not_found, storage_error,
    upstream_error,
};
use rollcall_runtime::shutdown::Stopping;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::figures::{figures_to_proto, load_school, school_and_as_of};
use crate::follower::{REGISTERS_FEED, stored_cursor};

const TRIGGER_BATCH: i64 = 500;
const TRIGGER_POLL: Duration = Duration::from_secs(2);

/// The policy service.
#[derive(Debug, Clone)]
pub struct Policy {
    db: Db,
    registers: RegistersServiceClient<Channel>,
    trigger_head: watch::Sender<i64>,
    stopping: Stopping,
}

impl Policy {
    /// Creates the service over its storage and a client of the registers service. Trigger
    /// streams end when `stopping` is set.
    pub async fn new(db: Db, registers: Channel, stopping: Stopping) -> anyhow::Result<Self> {
        let head: i64 = with_db!(&db, |pool| {
            sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM triggers")
                .fetch_one(pool)
                .await
        })?;
        let (trigger_head, _) = watch::channel(head);
        let registers = RegistersServiceClient::new(registers)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            db,
            registers,
            trigger_head,
            stopping,
        })
    }

    /// Starts the follower of the registers' change feed for this service.
    pub fn start_follower(&self) -> tokio::task::JoinHandle<()> {
        crate::spawn_follower(
            self.db.clone(),
            self.registers.clone(),
            self.trigger_head.clone(),
        )
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> PolicyServiceServer<Self> {
        PolicyServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn policy_to_proto(policy: &DomainPolicy) -> PbPolicy {
    PbPolicy {
        id: policy.id.clone(),
        title: policy.title.clone(),
        effective_from: policy.effective_from.to_string(),
        rules: vec![
            PolicyRule {
                id: "persistent_absence".into(),
                description: policy.persistent_absence_clause.summary.clone(),
                clause: policy.persistent_absence_clause.reference.clone(),
            },
            PolicyRule {
                id: "severe_absence".into(),
                description: policy.severe_absence_clause.summary.clone(),
                clause: policy.severe_absence_clause.reference.clone(),
            },
            PolicyRule {
                id: "penalty_notice_warning".into(),
                description: policy.penalty_warning.clause.summary.clone(),
                clause: policy.penalty_warning.clause.reference.clone(),
            },
        ],
    }
}

fn period(from: NaiveDate, to: NaiveDate) -> Period {
    Period {
        from_date: from.to_string(),
        to_date: to.to_string(),
    }
}

#[derive(sqlx::FromRow)]
struct TriggerRow {
    sequence: i64,
    id: String,
    kind: String,
    state: String,
    laestab: String,
    upn: String,
    year_group: String,
    phase: String,
    policy_id: String,
    clause: String,
    as_of: NaiveDate,
    figures: String,
    created_at: DateTime<Utc>,
}

impl TriggerRow {
    fn into_proto(self, policy: &DomainPolicy) -> Trigger {
        let kind = match self.kind.as_str() {
            "persistent_absence" => TriggerKind::PersistentAbsence,
            "severe_absence" => TriggerKind::SevereAbsence,
            "penalty_notice_warning" => TriggerKind::PenaltyNoticeWarning,
            _ => TriggerKind::Unspecified,
        };
        let state = match self.state.as_str() {
            "raised" => TriggerState::Raised,
            "withdrawn" => TriggerState::Withdrawn,
            _ => TriggerState::Unspecified,
        };
        let phase = self
            .phase
            .parse::<Phase>()
            .map_or(PbPhase::Unspecified, PbPhase::from);
        let stored: serde_json::Value = serde_json::from_str(&self.figures).unwrap_or_default();
        let count = |key: &str| {
            stored
                .get(key)
                .and_then(serde_json::Value::as_i64)
                .and_then(|value| i32::try_from(value).ok())
                .unwrap_or(0)
        };
        let figures = Figures {
            present: count("present_sessions").unsigned_abs(),
            approved_activity: count("approved_activity_sessions").unsigned_abs(),
            authorised_absence: count("authorised_absence_sessions").unsigned_abs(),
            unauthorised_absence: count("unauthorised_absence_sessions").unsigned_abs(),
            not_possible: count("not_possible_sessions").unsigned_abs(),
        };
        Trigger {
            id: self.id,
            kind: kind as i32,
            state: state as i32,
            upn: self.upn,
            laestab: self.laestab,
            year_group: self.year_group,
            phase: phase as i32,
            policy_id: self.policy_id,
            clause: self.clause,
            as_of: self.as_of.to_string(),
            figures: Some(figures_to_proto(&figures, policy)),
            created_at: Some(timestamp(self.created_at)),
        }
    }
}

async fn triggers_after(db: &Db, cursor: i64, limit: i64) -> Result<Vec<TriggerRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT sequence, id, kind, state, laestab, upn, year_group, phase, policy_id, clause, \
             as_of, figures, created_at FROM triggers WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(cursor)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}

/// Describes the pupil's position against each threshold of the policy.
fn threshold_statuses(
    policy: &DomainPolicy,
    figures: &Figures,
    penalty: &ThresholdEvaluation,
    from: NaiveDate,
    as_of: NaiveDate,
) -> Vec<ThresholdStatus> {
    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    let persistent_sessions = (u64::from(figures.possible())
        * u64::from(policy.persistent_absence_percent))
    .div_ceil(100);
    let persistent = ThresholdStatus {
        rule_id: "persistent_absence".into(),
        clause: policy.persistent_absence_clause.reference.clone(),
        threshold_sessions: i32::try_from(persistent_sessions).unwrap_or(i32::MAX),
        counted_sessions: count(figures.absent()),
        met: policy.is_persistent_absence(figures),
        window: Some(period(from, as_of)),
        counted: Vec::new(),
        explanation: format!(
            "{} absent sessions of {} possible; {} more before persistent absence",
            figures.absent(),
            figures.possible(),
            figures.absences_before_persistent()
        ),
    };
    let warning = ThresholdStatus {
        rule_id: "penalty_notice_warning".into(),
        clause: policy.penalty_warning.clause.reference.clone(),
        threshold_sessions: count(penalty.threshold),
        counted_sessions: count(penalty.counted),
        met: penalty.met,
        window: Some(period(penalty.window_from, penalty.window_to)),
        counted: penalty
            .sessions
            .iter()
            .map(|(session, code)| CountedSession {
                date: session.date.to_string(),
                session: PbSession::from(session.session) as i32,
                code: code.clone(),
            })
            .collect(),
        explanation: format!(
            "{} unauthorised sessions between {} and {}; the threshold is {}",
            penalty.counted, penalty.window_from, penalty.window_to, penalty.threshold
        ),
    };
    vec![persistent, warning]
}

type TriggerStream = Pin<Box<dyn Stream<Item = Result<WatchTriggersResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for Policy {
    async fn get_policy(
        &self,
        _request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        Ok(Response::new(GetPolicyResponse {
            policy: Some(policy_to_proto(&DomainPolicy::trust_2021())),
        }))
    }

    async fn get_school_attendance(
        &self,
        request: Request<GetSchoolAttendanceRequest>,
    ) -> Result<Response<GetSchoolAttendanceResponse>, Status> {
        let request = request.into_inner();
        let laestab = laestab("laestab", &request.laestab)?;
        let mut registers = self.registers.clone();
        let (school, as_of) = school_and_as_of(&mut registers, &laestab, &request.as_of).await?;
        let policy = DomainPolicy::trust_2021();
        let Some(as_of) = as_of else {
            return Ok(Response::new(GetSchoolAttendanceResponse {
                pupils: Vec::new(),
                period: None,
                policy_id: policy.id,
            }));
        };
        let marks = load_school(&mut registers, school, as_of, None).await?;
        let pupils = marks
            .pupils
            .iter()
            .map(|pupil| {
                let figures = pupil.figures();
                let penalty = pupil.penalty(&policy, as_of);
                PupilAttendance {
                    upn: pupil.upn.clone(),
                    laestab: laestab.clone(),
                    year_group: pupil.year_group.clone(),
                    figures: Some(figures_to_proto(&figures, &policy)),
                    thresholds: threshold_statuses(&policy, &figures, &penalty, marks.from, as_of),
                }
            })
            .collect();
        Ok(Response::new(GetSchoolAttendanceResponse {
            pupils,
            period: Some(period(marks.from, marks.as_of)),
            policy_id: policy.id,
        }))
    }

    async fn get_pupil_attendance(
        &self,
        request: Request<GetPupilAttendanceRequest>,
    ) -> Result<Response<GetPupilAttendanceResponse>, Status> {
        let request = request.into_inner();
        let upn = request.upn.trim().to_ascii_uppercase();
        if upn.is_empty() {
            return Err(invalid_argument("upn", "", "a UPN is required"));
        }
        let mut registers = self.registers.clone();
        let laestab = if request.laestab.trim().is_empty() {
            let pupil = registers
                .get_pupil(GetPupilRequest { upn: upn.clone() })
                .await
                .map_err(|status| upstream_error("registers", status))?
                .into_inner()
                .pupil
                .unwrap_or_default();
            pupil
                .enrolments
                .first()
                .map(|enrolment| enrolment.laestab.clone())
                .ok_or_else(|| not_found("enrolment of pupil", &upn))?
        } else {
            laestab("laestab", &request.laestab)?
        };
        let (school, as_of) = school_and_as_of(&mut registers, &laestab, &request.as_of).await?;
        let as_of = as_of.ok_or_else(|| {
            failed_precondition(format!(
                "school {laestab} has no marks yet, so there are no figures"
            ))
        })?;
        let marks = load_school(&mut registers, school, as_of, Some(&upn)).await?;
        let pupil = marks.pupils.first().ok_or_else(|| {
            not_found(
                &format!("pupil on roll at school {laestab} by {as_of}:"),
                &upn,
            )
        })?;
        let policy = DomainPolicy::trust_2021();
        let figures = pupil.figures();
        let penalty = pupil.penalty(&policy, as_of);
        let thresholds = threshold_statuses(&policy, &figures, &penalty, marks.from, as_of);
        Ok(Response::new(GetPupilAttendanceResponse {
            attendance: Some(PupilAttendance {
                upn: pupil.upn.clone(),
                laestab,
                year_group: pupil.year_group.clone(),
                figures: Some(figures_to_proto(&figures, &policy)),
                thresholds: thresholds.clone(),
            }),
            period: Some(period(marks.from, as_of)),
            policy: Some(policy_to_proto(&policy)),
            thresholds,
        }))
    }

    type WatchTriggersStream = TriggerStream;

    async fn watch_triggers(
        &self,
        request: Request<WatchTriggersRequest>,
    ) -> Result<Response<Self::WatchTriggersStream>, Status> {
        let mut cursor = request.into_inner().cursor;
        if cursor < 0 {
            return Err(invalid_argument(
                "cursor",
                &cursor.to_string(),
                "a cursor is 0 or a position returned by an earlier WatchTriggers message",
            ));
        }
        let db = self.db.clone();
        let policy = DomainPolicy::trust_2021();
        let mut head = self.trigger_head.subscribe();
        let mut stopping = self.stopping.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(TRIGGER_BATCH as usize);
        tracing::info!(cursor, "WatchTriggers stream opened");
        tokio::spawn(async move {
            while !stopping.is_stopping() {
                let rows = match triggers_after(&db, cursor, TRIGGER_BATCH).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        let _ = sender
                            .send(Err(storage_error("reading triggers", error)))
                            .await;
                        return;
                    }
                };
                let caught_up = (rows.len() as i64) < TRIGGER_BATCH;
                for row in rows {
                    cursor = row.sequence;
                    let message = WatchTriggersResponse {
                        trigger: Some(row.into_proto(&policy)),
                        cursor,
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if caught_up {
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep(TRIGGER_POLL) => {}
                        () = sender.closed() => return,
                        () = stopping.wait() => {}
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_sync_state(
        &self,
        _request: Request<GetSyncStateRequest>,
    ) -> Result<Response<GetSyncStateResponse>, Status> {
        let registers_cursor = stored_cursor(&self.db, REGISTERS_FEED)
            .await
            .map_err(|e| storage_error("reading the sync state", e))?;
        Ok(Response::new(GetSyncStateResponse {
            registers_cursor,
            trigger_cursor: *self.trigger_head.borrow(),
        }))
    }
}
