//! The gRPC service: requests in, figures and thresholds from the domain library, responses out.

use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::client::Channel;
use rollcall_api::convert::timestamp;
use rollcall_api::policy::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use rollcall_api::policy::v1::{
    AssignPolicyRequest, AssignPolicyResponse, CheckAggregatesRequest, CheckAggregatesResponse,
    CountedSession, DecideAbsenceRequest, DecideAbsenceResponse, GetAttendanceStatisticsRequest,
    GetAttendanceStatisticsResponse, GetPenaltyNoticeTermsRequest, GetPenaltyNoticeTermsResponse,
    GetPolicyRequest, GetPolicyResponse, GetPupilAttendanceRequest, GetPupilAttendanceResponse,
    GetSchoolAttendanceRequest, GetSchoolAttendanceResponse, GetSyncStateRequest,
    GetSyncStateResponse, ListPoliciesRequest, ListPoliciesResponse, ListPolicyAssignmentsRequest,
    ListPolicyAssignmentsResponse, ListRewardsRequest, ListRewardsResponse, LoadPolicyRequest,
    LoadPolicyResponse, Period, Policy as PbPolicy, PolicyAssignment, PolicyRule, PupilAttendance,
    ThresholdStatus, Trigger, TriggerKind, TriggerState, WatchTriggersRequest,
    WatchTriggersResponse,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{GetPupilRequest, GetSchoolRequest};
use rollcall_api::types::v1::{Phase as PbPhase, Session as PbSession};
use rollcall_auth::{Credential, Role, caller};
use rollcall_domain::policy::ThresholdEvaluation;
use rollcall_domain::policy::notices::notice_terms;
use rollcall_domain::session::parse_date;
use rollcall_domain::{Figures, Phase, Policy as DomainPolicy};
use rollcall_runtime::grpc::{
    MAX_MESSAGE_BYTES, failed_precondition, invalid_argument, laestab, not_found, storage_error,
    upstream_error,
};
use rollcall_runtime::shutdown::Stopping;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::figures::{Alerts, figures_to_proto, load_school, school_and_as_of};
use crate::follower::{REGISTERS_FEED, TriggerCounts, evaluate_school};
use crate::policies::{self, Assignment, DEFAULT_POLICY_ID, PolicyVersion, version_on};
use crate::upn_changes::UPN_CHANGES_FEED;
use rollcall_runtime::storage::stored_cursor;

const TRIGGER_BATCH: i64 = 500;
const TRIGGER_POLL: Duration = Duration::from_secs(2);

/// The policy service.
#[derive(Debug, Clone)]
pub struct Policy {
    db: Db,
    registers: RegistersServiceClient<Channel>,
    cases: CasesServiceClient<Channel>,
    trigger_head: watch::Sender<i64>,
    stopping: Stopping,
}

impl Policy {
    /// Creates the service over its storage and a client of the registers service. Trigger
    /// streams end when `stopping` is set.
    pub async fn new(
        db: Db,
        registers: Channel,
        cases: Channel,
        stopping: Stopping,
    ) -> anyhow::Result<Self> {
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
            cases: CasesServiceClient::new(cases),
            trigger_head,
            stopping,
        })
    }

    /// Starts the follower of the registers' change feed for this service.
    pub fn start_follower(&self) -> tokio::task::JoinHandle<()> {
        crate::spawn_follower(
            self.db.clone(),
            self.registers.clone(),
            self.cases.clone(),
            self.trigger_head.clone(),
        )
    }

    /// Starts the follower of the registers' UPN changes for this service.
    pub fn start_upn_follower(&self) -> tokio::task::JoinHandle<()> {
        crate::spawn_upn_follower(
            self.db.clone(),
            self.registers.clone(),
            self.cases.clone(),
            self.trigger_head.clone(),
        )
    }

    /// Returns NOT_FOUND, naming it, for a school the registers do not hold.
    async fn school_exists(&self, school: &str) -> Result<(), Status> {
        self.registers
            .clone()
            .get_school(GetSchoolRequest {
                laestab: school.to_owned(),
            })
            .await
            .map_err(|status| upstream_error("registers", status))?;
        Ok(())
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> PolicyServiceServer<Self> {
        PolicyServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn rule(id: &str, clause: &rollcall_domain::policy::Clause) -> PolicyRule {
    PolicyRule {
        id: id.to_owned(),
        description: clause.summary.clone(),
        clause: clause.reference.clone(),
    }
}

fn policy_to_proto(version: &PolicyVersion) -> PbPolicy {
    let policy = &version.policy;

    let mut rules = Vec::new();
    if let Some(review) = &policy.review {
        rules.push(rule("review", &review.clause));
    }
    rules.push(rule("codes", &policy.code_set_clause));
    rules.push(rule(
        "persistent_absence",
        &policy.persistent_absence_clause,
    ));
    rules.push(rule("severe_absence", &policy.severe_absence_clause));
    rules.push(rule(
        "penalty_notice_warning",
        &policy.penalty_warning.clause,
    ));
    if let Some(notice) = &policy.penalty_notice {
        rules.push(rule("penalty_notice", &notice.clause));
    }
    if let Some(retention) = &policy.register_retention {
        rules.push(rule("register_retention", &retention.clause));
    }

    if let Some(unexplained) = &policy.unexplained_absence {
        rules.push(rule("unexplained_absence", &unexplained.clause));
    }
    if let Some(unauthorised) = &policy.unauthorised_absence_return {
        rules.push(rule("unauthorised_absence_return", &unauthorised.clause));
    }
    if let Some(sickness) = &policy.sickness_return {
        rules.push(rule("sickness_return", &sickness.clause));
    }

    let authorisation = &policy.authorisation;
    rules.push(rule("authorisation", &authorisation.clause));
    rules.push(rule("authorisation.doubt", &authorisation.doubt_clause));
    if let Some(clause) = &authorisation.medical_evidence_clause {
        rules.push(rule("authorisation.medical_evidence", clause));
    }

    for reason in &authorisation.reasons {
        rules.push(rule(&format!("reason.{}", reason.reason), &reason.clause));
    }

    PbPolicy {
        id: policy.id.clone(),
        title: policy.title.clone(),
        effective_from: policy.effective_from.to_string(),
        rules,
        version: policy.version.clone(),
        kind: policy.kind.as_str().to_owned(),
        effective_to: policy
            .effective_to
            .map(|date| date.to_string())
            .unwrap_or_default(),
        source: version.source.clone(),
    }
}

fn assignment_to_proto(assignment: Assignment) -> PolicyAssignment {
    PolicyAssignment {
        laestab: assignment.laestab,
        policy_id: assignment.policy_id,
        from_date: assignment.from_date.to_string(),
        assigned_by: assignment.assigned_by,
        reason: assignment.reason,
        assigned_at: Some(timestamp(assignment.assigned_at)),
    }
}

/// Parses a date request field, or returns today for an empty one.
fn date_or_today(field: &str, value: &str) -> Result<NaiveDate, Status> {
    if value.trim().is_empty() {
        return Ok(Utc::now().date_naive());
    }
    parse_date(value).map_err(|error| invalid_argument(field, value, error.problem()))
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
    ladder_stage: String,
    /// The W3C traceparent of the evaluation that recorded the trigger, when spans were
    /// exported.
    traceparent: Option<String>,
}

impl TriggerRow {
    fn into_proto(self, policy: &DomainPolicy) -> Trigger {
        let kind = match self.kind.as_str() {
            "persistent_absence" => TriggerKind::PersistentAbsence,
            "severe_absence" => TriggerKind::SevereAbsence,
            "penalty_notice_warning" => TriggerKind::PenaltyNoticeWarning,
            "unexplained_absence_overdue" => TriggerKind::UnexplainedAbsenceOverdue,
            "unauthorised_absence_return" => TriggerKind::UnauthorisedAbsenceReturn,
            "sickness_return" => TriggerKind::SicknessReturn,
            "ladder_stage" => TriggerKind::LadderStage,
            "missed_target" => TriggerKind::MissedTarget,
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
            ladder_stage: self.ladder_stage,
        }
    }
}

async fn triggers_after(db: &Db, cursor: i64, limit: i64) -> Result<Vec<TriggerRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT sequence, id, kind, state, laestab, upn, year_group, phase, policy_id, clause, \
             as_of, figures, created_at, ladder_stage, traceparent FROM triggers WHERE sequence > $1 \
             ORDER BY sequence LIMIT $2",
        )
        .bind(cursor)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
}

/// Returns true when `to_go` sessions before a threshold of `threshold` counts as close.
fn is_near(to_go: u32, threshold: u32) -> bool {
    to_go > 0 && to_go <= (threshold / 5).max(2)
}

/// Describes the pupil's position against each threshold of the policy.
fn threshold_statuses(
    policy: &DomainPolicy,
    figures: &Figures,
    penalty: &ThresholdEvaluation,
    alerts: &Alerts,
    from: NaiveDate,
    as_of: NaiveDate,
) -> Vec<ThresholdStatus> {
    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    let absence = |rule_id: &str, percent: u32, clause: &str, met: bool, name: &str| {
        let threshold_sessions = (u64::from(figures.possible()) * u64::from(percent)).div_ceil(100);
        let to_go = if met {
            0
        } else {
            figures.absences_before(percent)
        };
        // Not yet met, the threshold is the absent count at which it would be: every further
        // absence is also a further possible session.
        let threshold = if met {
            u32::try_from(threshold_sessions).unwrap_or(u32::MAX)
        } else {
            figures.absent().saturating_add(to_go)
        };
        ThresholdStatus {
            rule_id: rule_id.into(),
            clause: clause.to_owned(),
            threshold_sessions: count(threshold),
            counted_sessions: count(figures.absent()),
            met,
            window: Some(period(from, as_of)),
            counted: Vec::new(),
            explanation: format!(
                "{} absent sessions of {} possible; {} more before {name} ({percent}%)",
                figures.absent(),
                figures.possible(),
                to_go
            ),
            sessions_to_go: count(to_go),
            near: is_near(to_go, threshold.max(1)),
        }
    };
    let persistent = absence(
        "persistent_absence",
        policy.persistent_absence_percent,
        &policy.persistent_absence_clause.reference,
        policy.is_persistent_absence(figures),
        "persistent absence",
    );
    let severe = absence(
        "severe_absence",
        policy.severe_absence_percent,
        &policy.severe_absence_clause.reference,
        policy.is_severe_absence(figures),
        "severe absence",
    );
    let to_go = penalty.threshold.saturating_sub(penalty.counted);
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
            "{} unauthorised sessions between {} and {}; the threshold is {} in {}",
            penalty.counted,
            penalty.window_from,
            penalty.window_to,
            penalty.threshold,
            policy.penalty_warning.window.describe()
        ),
        sessions_to_go: count(to_go),
        near: is_near(to_go, penalty.threshold),
    };
    let mut statuses = vec![persistent, severe, warning];
    statuses.extend(alert_statuses(policy, alerts, from, as_of));
    statuses
}

/// Describes the pupil's position on the rules about patterns of absence.
fn alert_statuses(
    policy: &DomainPolicy,
    alerts: &Alerts,
    from: NaiveDate,
    as_of: NaiveDate,
) -> Vec<ThresholdStatus> {
    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    let mut statuses = Vec::new();
    if let (Some(rule), Some((limit, overdue))) = (&policy.unexplained_absence, &alerts.unexplained)
    {
        statuses.push(ThresholdStatus {
            rule_id: "unexplained_absence".into(),
            clause: rule.clause.reference.clone(),
            threshold_sessions: 1,
            counted_sessions: count(u32::try_from(overdue.len()).unwrap_or(u32::MAX)),
            met: !overdue.is_empty(),
            window: Some(period(from, as_of)),
            counted: overdue
                .iter()
                .map(|session| CountedSession {
                    date: session.date.to_string(),
                    session: PbSession::from(session.session) as i32,
                    code: "N".into(),
                })
                .collect(),
            explanation: format!(
                "{} unexplained absences (N) older than {limit} school {}",
                overdue.len(),
                if *limit == 1 { "day" } else { "days" }
            ),
            sessions_to_go: i32::from(overdue.is_empty()),
            near: false,
        });
    }
    let days_rule = |rule_id: &str, clause: &str, limit: u32, days: u32, what: &str| {
        let to_go = limit.saturating_sub(days);
        ThresholdStatus {
            rule_id: rule_id.into(),
            clause: clause.to_owned(),
            threshold_sessions: count(limit.saturating_mul(2)),
            counted_sessions: count(days.saturating_mul(2)),
            met: days >= limit,
            window: Some(period(from, as_of)),
            counted: Vec::new(),
            explanation: format!("{days} {what}; the local authority's return is at {limit}"),
            sessions_to_go: count(to_go.saturating_mul(2)),
            near: is_near(to_go, limit),
        }
    };
    if let (Some(rule), Some((limit, days))) =
        (&policy.unauthorised_absence_return, alerts.unauthorised)
    {
        let what = if rule.continuous {
            "school days in the longest run of unauthorised absence"
        } else {
            "days of unauthorised absence"
        };
        statuses.push(days_rule(
            "unauthorised_absence_return",
            &rule.clause.reference,
            limit,
            days,
            what,
        ));
    }
    if let (Some(rule), Some((limit, days))) = (&policy.sickness_return, alerts.sickness) {
        statuses.push(days_rule(
            "sickness_return",
            &rule.clause.reference,
            limit,
            days,
            "days of sickness",
        ));
    }
    statuses
}

type TriggerStream = Pin<Box<dyn Stream<Item = Result<WatchTriggersResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for Policy {
    async fn get_policy(
        &self,
        request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = if request.laestab.trim().is_empty() {
            String::new()
        } else {
            let school = laestab("laestab", &request.laestab)?;
            caller.school(&school)?;
            self.school_exists(&school).await?;
            school
        };
        let on = date_or_today("on_date", &request.on_date)?;
        let version = policies::policy_for(&self.db, &school, on).await?;
        Ok(Response::new(GetPolicyResponse {
            policy: Some(policy_to_proto(&version)),
        }))
    }

    async fn load_policy(
        &self,
        request: Request<LoadPolicyRequest>,
    ) -> Result<Response<LoadPolicyResponse>, Status> {
        let request = request.into_inner();
        let (version, already_loaded) =
            policies::load(&self.db, &request.source, &request.loaded_by).await?;
        Ok(Response::new(LoadPolicyResponse {
            policy: Some(policy_to_proto(&version)),
            already_loaded,
        }))
    }

    async fn list_policies(
        &self,
        _request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let mut versions = policies::versions(&self.db).await?;
        versions.sort_by(|a, b| {
            (&a.policy.id, a.policy.effective_from).cmp(&(&b.policy.id, b.policy.effective_from))
        });
        Ok(Response::new(ListPoliciesResponse {
            policies: versions.iter().map(policy_to_proto).collect(),
        }))
    }

    async fn assign_policy(
        &self,
        request: Request<AssignPolicyRequest>,
    ) -> Result<Response<AssignPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        caller.school(&school)?;
        let from = parse_date(&request.from_date)
            .map_err(|error| invalid_argument("from_date", &request.from_date, error.problem()))?;

        self.school_exists(&school).await?;
        let assignment = policies::assign(
            &self.db,
            &school,
            request.policy_id.trim(),
            from,
            &request.assigned_by,
            &request.reason,
        )
        .await?;

        // Thresholds may now be met or no longer met: evaluate the school's pupils again.
        let mut registers = self.registers.clone();
        let mut cases = self.cases.clone();
        let counts = match evaluate_school(
            &self.db,
            &mut registers,
            &mut cases,
            &school,
            &self.trigger_head,
        )
        .await
        {
            Ok(counts) => counts,
            Err(error) => {
                tracing::warn!(laestab = %school, %error, "Re-evaluation after a policy change failed; the next marks will retry it");
                TriggerCounts::default()
            }
        };

        Ok(Response::new(AssignPolicyResponse {
            assignment: Some(assignment_to_proto(assignment)),
            triggers_raised: i32::try_from(counts.raised).unwrap_or(i32::MAX),
            triggers_withdrawn: i32::try_from(counts.withdrawn).unwrap_or(i32::MAX),
        }))
    }

    async fn list_policy_assignments(
        &self,
        request: Request<ListPolicyAssignmentsRequest>,
    ) -> Result<Response<ListPolicyAssignmentsResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&school)?;
        let assignments = policies::assignments(&self.db, &school).await?;
        Ok(Response::new(ListPolicyAssignmentsResponse {
            assignments: assignments.into_iter().map(assignment_to_proto).collect(),
            default_policy_id: DEFAULT_POLICY_ID.to_owned(),
        }))
    }

    async fn decide_absence(
        &self,
        request: Request<DecideAbsenceRequest>,
    ) -> Result<Response<DecideAbsenceResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        let upn = request.get_ref().upn.trim().to_ascii_uppercase();
        let caller = caller(&request)?;
        caller.pupil(&upn, &school)?;
        let mut request = request.into_inner();
        // A person signed in decides in the role their token gives them, not one they name.
        if let Credential::Token { .. } = caller.principal().credential {
            let held = if caller.principal().roles.contains(&Role::Headteacher) {
                "headteacher"
            } else {
                "delegated_staff"
            };
            let named = request.decider_role.trim().to_ascii_lowercase();
            if !named.is_empty() && named != held {
                return Err(Status::permission_denied(format!(
                    "{} decides as {held}, not {named}: leave decider_role empty or give {held}",
                    caller.principal().subject
                )));
            }
            request.decider_role = held.to_owned();
        }
        crate::decide::decide(&self.db, &self.registers, request)
            .await
            .map(Response::new)
    }

    async fn get_school_attendance(
        &self,
        request: Request<GetSchoolAttendanceRequest>,
    ) -> Result<Response<GetSchoolAttendanceResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let laestab = laestab("laestab", &request.laestab)?;
        caller.school(&laestab)?;
        let mut registers = self.registers.clone();
        let (school, as_of) = school_and_as_of(&mut registers, &laestab, &request.as_of).await?;
        let Some(as_of) = as_of else {
            let today = Utc::now().date_naive();
            return Ok(Response::new(GetSchoolAttendanceResponse {
                pupils: Vec::new(),
                period: None,
                policy_id: policies::policy_for(&self.db, &laestab, today)
                    .await?
                    .policy
                    .id,
            }));
        };
        let version = policies::policy_for(&self.db, &laestab, as_of).await?;
        let (policy, since) = (version.policy, version.adopted_from);
        let marks = load_school(&mut registers, school, as_of, None).await?;
        let pupils = marks
            .pupils
            .iter()
            .map(|pupil| {
                let figures = pupil.figures(marks.from);
                let penalty = pupil.penalty(&policy, as_of, since);
                PupilAttendance {
                    upn: pupil.upn.clone(),
                    laestab: laestab.clone(),
                    year_group: pupil.year_group.clone(),
                    figures: Some(figures_to_proto(&figures, &policy)),
                    thresholds: threshold_statuses(
                        &policy,
                        &figures,
                        &penalty,
                        &pupil.alerts(&policy, as_of),
                        marks.from,
                        as_of,
                    ),
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
        let caller = caller(&request)?;
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
        caller.pupil(&upn, &laestab)?;
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
        let version = policies::policy_for(&self.db, &laestab, as_of).await?;
        let policy = &version.policy;
        let figures = pupil.figures(marks.from);
        let penalty = pupil.penalty(policy, as_of, version.adopted_from);
        let alerts = pupil.alerts(policy, as_of);
        let thresholds = threshold_statuses(policy, &figures, &penalty, &alerts, marks.from, as_of);
        Ok(Response::new(GetPupilAttendanceResponse {
            attendance: Some(PupilAttendance {
                upn: pupil.upn.clone(),
                laestab,
                year_group: pupil.year_group.clone(),
                figures: Some(figures_to_proto(&figures, policy)),
                thresholds: thresholds.clone(),
            }),
            period: Some(period(marks.from, as_of)),
            policy: Some(policy_to_proto(&version)),
            thresholds,
        }))
    }

    type WatchTriggersStream = TriggerStream;

    async fn watch_triggers(
        &self,
        request: Request<WatchTriggersRequest>,
    ) -> Result<Response<Self::WatchTriggersStream>, Status> {
        caller(&request)?.trust("Following every school's triggers")?;
        let mut cursor = request.into_inner().cursor;
        if cursor < 0 {
            return Err(invalid_argument(
                "cursor",
                &cursor.to_string(),
                "a cursor is 0 or a position returned by an earlier WatchTriggers message",
            ));
        }
        let db = self.db.clone();
        let versions = policies::versions(&self.db).await?;
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
                    let policy = version_on(&versions, &row.policy_id, row.as_of)
                        .map_or_else(DomainPolicy::trust_2021, |found| found.policy.clone());
                    let traceparent = row.traceparent.clone().unwrap_or_default();
                    let message = WatchTriggersResponse {
                        trigger: Some(row.into_proto(&policy)),
                        cursor,
                        traceparent,
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

    async fn get_attendance_statistics(
        &self,
        request: Request<GetAttendanceStatisticsRequest>,
    ) -> Result<Response<GetAttendanceStatisticsResponse>, Status> {
        let caller = caller(&request)?;
        let named = request.get_ref().laestab.trim();
        if named.is_empty() {
            caller.trust("Statistics")?;
        } else {
            caller.school(&laestab("laestab", named)?)?;
        }
        caller.read_pupils([request.get_ref().upn.trim()]);
        crate::statistics::statistics(&self.db, &self.registers, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_penalty_notice_terms(
        &self,
        request: Request<GetPenaltyNoticeTermsRequest>,
    ) -> Result<Response<GetPenaltyNoticeTermsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        caller.school(&school)?;
        self.school_exists(&school).await?;
        let on = parse_date(&request.on_date)
            .map_err(|error| invalid_argument("on_date", &request.on_date, error.problem()))?;
        let mut earlier = Vec::new();
        for (index, value) in request.earlier_notices.iter().enumerate() {
            let date = parse_date(value).map_err(|error| {
                invalid_argument(&format!("earlier_notices[{index}]"), value, error.problem())
            })?;
            if date > on {
                return Err(invalid_argument(
                    &format!("earlier_notices[{index}]"),
                    value,
                    format!("it is after the date of the new notice, {on}"),
                ));
            }
            earlier.push(date);
        }
        let version = policies::policy_for(&self.db, &school, on).await?;
        let terms = notice_terms(&version.policy, &earlier, on).ok_or_else(|| {
            failed_precondition(format!(
                "policy {} that school {school} follows on {on} sets no penalty-notice terms",
                version.policy.id
            ))
        })?;
        let amount = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        let periods = version.policy.penalty_notice.as_ref();
        Ok(Response::new(GetPenaltyNoticeTermsResponse {
            reduced_days: periods.map_or(0, |notice| amount(notice.reduced_days)),
            full_days: periods.map_or(0, |notice| amount(notice.full_days)),
            allowed: terms.allowed,
            number: amount(terms.number),
            reduced_amount: terms.reduced_amount.map(amount),
            full_amount: amount(terms.full_amount),
            explanation: terms.explanation,
            policy_id: version.policy.id,
            clause: terms.clause.reference,
        }))
    }

    async fn list_rewards(
        &self,
        request: Request<ListRewardsRequest>,
    ) -> Result<Response<ListRewardsResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        crate::rewards::list(&self.db, &self.registers, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn check_aggregates(
        &self,
        request: Request<CheckAggregatesRequest>,
    ) -> Result<Response<CheckAggregatesResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        crate::aggregates::check(&self.db, &self.registers, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_sync_state(
        &self,
        _request: Request<GetSyncStateRequest>,
    ) -> Result<Response<GetSyncStateResponse>, Status> {
        let registers_cursor = stored_cursor(&self.db, REGISTERS_FEED)
            .await
            .map_err(|e| storage_error("reading the sync state", e))?;
        let upn_change_cursor = stored_cursor(&self.db, UPN_CHANGES_FEED)
            .await
            .map_err(|e| storage_error("reading the sync state", e))?;
        Ok(Response::new(GetSyncStateResponse {
            registers_cursor,
            trigger_cursor: *self.trigger_head.borrow(),
            upn_change_cursor,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_means_close_but_not_met() {
        assert!(is_near(2, 10));
        assert!(!is_near(3, 10));
        assert!(is_near(3, 15));
        assert!(!is_near(0, 10), "met is not near");
    }
}
