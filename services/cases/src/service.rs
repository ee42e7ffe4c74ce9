//! The gRPC service: requests in, storage, responses out.

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::cases_service_server::{CasesService, CasesServiceServer};
use rollcall_api::cases::v1::{
    ApplyCaseRetentionRequest, ApplyCaseRetentionResponse, Case, CaseStatus, CloseCaseRequest,
    CloseCaseResponse, CreatePlanRequest, CreatePlanResponse, CreateReintegrationRequest,
    CreateReintegrationResponse, DeescalateCaseRequest, DeescalateCaseResponse,
    EscalateCaseRequest, EscalateCaseResponse, GetCaseTimelineRequest, GetCaseTimelineResponse,
    GetSyncStateRequest, GetSyncStateResponse, KeepCaseOpenRequest, KeepCaseOpenResponse,
    ListCasesRequest, ListCasesResponse, ListGivenRewardsRequest, ListGivenRewardsResponse,
    ListLaddersRequest, ListLaddersResponse, ListOverdueReviewsRequest, ListOverdueReviewsResponse,
    ListPlansRequest, ListPlansResponse, ListReintegrationsRequest, ListReintegrationsResponse,
    ListTruancyIncidentsRequest, ListTruancyIncidentsResponse, LoadLadderRequest,
    LoadLadderResponse, OpenCaseRequest, OpenCaseResponse, RecordActionRequest,
    RecordActionResponse, RecordCheckInRequest, RecordCheckInResponse, RecordRewardRequest,
    RecordRewardResponse, RecordTruancyIncidentRequest, RecordTruancyIncidentResponse,
    ReviewPlanRequest, ReviewPlanResponse,
};
use rollcall_api::cases::v1::{
    CompleteContactTaskRequest, CompleteContactTaskResponse, CreateLetterRequest,
    CreateLetterResponse, GetLetterDocumentRequest, GetLetterDocumentResponse,
    GetReferralEvidenceRequest, GetReferralEvidenceResponse, ListContactTasksRequest,
    ListContactTasksResponse, ListMessagesRequest, ListMessagesResponse, ListTemplatesRequest,
    ListTemplatesResponse, LoadTemplateRequest, LoadTemplateResponse, ResendMessageRequest,
    ResendMessageResponse, ReviewLetterRequest, ReviewLetterResponse, RunFirstDayContactRequest,
    RunFirstDayContactResponse,
};
use rollcall_api::client::Channel;
use rollcall_api::convert::timestamp;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::types::v1::Phase as PbPhase;
use rollcall_auth::{Caller, caller};
use rollcall_domain::Phase;
use rollcall_domain::session::parse_date;
use rollcall_runtime::grpc::{MAX_MESSAGE_BYTES, invalid_argument, laestab, storage_error};
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::fields::required;
use crate::messaging::MessagingConfig;
use crate::messaging::channels::Channels;
use crate::messaging::first_day::FirstDay;
use crate::messaging::outbox::Outbox;
use crate::{casework, follower, incidents, plans, reintegration};

/// The cases service.
#[derive(Debug, Clone)]
pub struct Cases {
    pub(crate) db: Db,
    pub(crate) policy: PolicyServiceClient<Channel>,
    pub(crate) registers: RegistersServiceClient<Channel>,
    processed: watch::Sender<i64>,
    pub(crate) outbox: Outbox,
    pub(crate) messaging: MessagingConfig,
    /// Wakes the letter worker when the follower records a letter job.
    letter_wake: std::sync::Arc<tokio::sync::Notify>,
    /// Years a closed case is kept after its last event.
    retention_years: u32,
}

impl Cases {
    /// Creates the service over its storage and clients of the policy and registers services.
    /// Messages go out on the channels the messaging settings configure; letters are written
    /// to `default_print_dir` unless the settings name another folder.
    pub async fn new(
        db: Db,
        policy: Channel,
        registers: Channel,
        messaging: MessagingConfig,
        default_print_dir: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        messaging.check()?;
        let cursor = follower::stored_cursor(&db).await?;
        let (processed, _) = watch::channel(cursor);
        let outbox = Outbox {
            db: db.clone(),
            channels: Channels::from_config(&messaging, default_print_dir)?,
            config: messaging.delivery.clone(),
            wake: std::sync::Arc::default(),
        };
        Ok(Self {
            db,
            policy: PolicyServiceClient::new(policy),
            registers: RegistersServiceClient::new(registers),
            processed,
            outbox,
            messaging,
            letter_wake: std::sync::Arc::default(),
            retention_years: crate::retention::DEFAULT_CASE_RETENTION_YEARS,
        })
    }

    /// Keeps closed cases for `years` after their last event; at least one year.
    pub fn with_retention_years(mut self, years: u32) -> anyhow::Result<Self> {
        if years == 0 {
            anyhow::bail!(
                "the case retention period is 0 years, which would remove cases as soon as \
                 they close: give at least 1"
            );
        }
        self.retention_years = years;
        Ok(self)
    }

    /// First-day contact over this service's storage and registers client.
    pub(crate) fn first_day(&self) -> FirstDay {
        FirstDay {
            db: self.db.clone(),
            registers: self.registers.clone(),
            wake: self.outbox.wake.clone(),
        }
    }

    /// Starts the message outbox and, where the settings ask for it, automatic first-day
    /// contact after each register closes.
    pub fn start_messaging(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let letters = crate::messaging::letters::LetterWorker {
            db: self.db.clone(),
            registers: self.registers.clone(),
            policy: self.policy.clone(),
            wake: self.letter_wake.clone(),
            outbox_wake: self.outbox.wake.clone(),
            delivery: self.messaging.delivery.clone(),
        };
        let mut tasks = vec![self.outbox.clone().spawn(), letters.spawn()];
        if self.messaging.first_day.automatic {
            tasks.push(
                self.first_day()
                    .spawn_automatic(self.messaging.first_day.minutes_after_close),
            );
        }
        tasks
    }

    /// Starts the follower of the policy service's triggers.
    pub fn start_follower(&self) -> tokio::task::JoinHandle<()> {
        follower::spawn(
            self.db.clone(),
            self.policy.clone(),
            self.registers.clone(),
            self.processed.clone(),
            self.letter_wake.clone(),
        )
    }

    /// Allows the caller when they may see the pupil and school of the record `id` that
    /// `owner` finds. An unknown id is allowed here, so the call fails with NOT_FOUND.
    async fn check_owner(&self, caller: &Caller, owner: Owner, id: &str) -> Result<(), Status> {
        let sql = match owner {
            Owner::Case => "SELECT laestab, upn FROM cases WHERE id = $1",
            Owner::Plan => "SELECT laestab, upn FROM plans WHERE id = $1",
            Owner::Reintegration => {
                "SELECT c.laestab, c.upn FROM reintegrations r JOIN cases c ON c.id = r.case_id \
                 WHERE r.id = $1"
            }
            Owner::ContactTask => "SELECT laestab, upn FROM contact_tasks WHERE id = $1",
            Owner::Message => "SELECT laestab, upn FROM messages WHERE id = $1",
        };
        let row: Option<(String, String)> = with_db!(&self.db, |pool| {
            sqlx::query_as(sql)
                .bind(id.trim())
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| storage_error("reading whose record this is", e))?;
        match row {
            Some((laestab, upn)) => caller.pupil(&upn, &laestab),
            None => Ok(()),
        }
    }

    /// Applies one of the staff changes to a case and returns the updated case.
    async fn apply<R: Into<casework::ChangeInput>>(
        &self,
        request: Request<R>,
        change: casework::Change,
        case_id: &str,
    ) -> Result<Case, Status> {
        self.check_owner(&caller(&request)?, Owner::Case, case_id)
            .await?;
        let row = casework::change(
            &self.db,
            &self.registers,
            request.into_inner().into(),
            change,
        )
        .await?;
        Ok(row.into_proto())
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> CasesServiceServer<Self> {
        CasesServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The kinds of record whose pupil and school a call's id leads to.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Case,
    Plan,
    Reintegration,
    ContactTask,
    Message,
}

/// The columns of `cases` read into a [`CaseRow`].
pub(crate) const CASE_COLUMNS: &str = "id, laestab, upn, concern, phase, ladder, stage, \
     stage_number, owner_role, status, opened_at, opened_by_trigger, stage_started_on, \
     next_review, opened_by, opened_on, ladder_version";

/// A case as stored.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CaseRow {
    pub(crate) id: String,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) concern: String,
    pub(crate) phase: String,
    pub(crate) ladder: String,
    pub(crate) stage: String,
    pub(crate) stage_number: i32,
    pub(crate) owner_role: String,
    pub(crate) status: String,
    pub(crate) opened_at: DateTime<Utc>,
    pub(crate) opened_by_trigger: String,
    pub(crate) stage_started_on: Option<NaiveDate>,
    pub(crate) next_review: Option<NaiveDate>,
    pub(crate) opened_by: String,
    pub(crate) opened_on: Option<NaiveDate>,
    pub(crate) ladder_version: i32,
}

impl CaseRow {
    pub(crate) fn into_proto(self) -> Case {
        let phase = self
            .phase
            .parse::<Phase>()
            .map_or(PbPhase::Unspecified, PbPhase::from);
        let status = match self.status.as_str() {
            "open" => CaseStatus::Open,
            "review" => CaseStatus::Review,
            "closed" => CaseStatus::Closed,
            _ => CaseStatus::Unspecified,
        };
        Case {
            id: self.id,
            upn: self.upn,
            laestab: self.laestab,
            concern: self.concern,
            phase: phase as i32,
            stage: self.stage,
            stage_number: self.stage_number,
            owner_role: self.owner_role,
            status: status as i32,
            opened_at: Some(timestamp(self.opened_at)),
            opened_by_trigger: self.opened_by_trigger,
            ladder: self.ladder,
            next_review: self.next_review.map(|d| d.to_string()).unwrap_or_default(),
            stage_started_on: self
                .stage_started_on
                .map(|d| d.to_string())
                .unwrap_or_default(),
            opened_by: self.opened_by,
            opened_on: self.opened_on.map(|d| d.to_string()).unwrap_or_default(),
            ladder_version: self.ladder_version,
        }
    }
}

#[tonic::async_trait]
impl CasesService for Cases {
    async fn list_cases(
        &self,
        request: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let laestab = if request.laestab.trim().is_empty() {
            caller.trust("Listing cases")?;
            String::new()
        } else {
            let school = laestab("laestab", &request.laestab)?;
            caller.school(&school)?;
            school
        };
        let (first_status, second_status) = match CaseStatus::try_from(request.status) {
            Ok(CaseStatus::Open) => ("open", "open"),
            Ok(CaseStatus::Review) => ("review", "review"),
            Ok(CaseStatus::Closed) => ("closed", "closed"),
            _ => ("open", "review"),
        };
        let limit = if request.page_size <= 0 {
            500
        } else {
            i64::from(request.page_size.min(5_000))
        };
        let after = request.page_token.clone();
        let mut rows: Vec<CaseRow> = with_db!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {CASE_COLUMNS} FROM cases \
                 WHERE ($1 = '' OR laestab = $1) AND status IN ($2, $3) AND ($4 = '' OR id > $4) \
                 ORDER BY id LIMIT $5"
            )))
            .bind(&laestab)
            .bind(first_status)
            .bind(second_status)
            .bind(&after)
            .bind(limit + 1)
            .fetch_all(pool)
            .await
        })
        .map_err(|e| storage_error("listing cases", e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|row| row.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        caller.read_pupils(rows.iter().map(|row| row.upn.as_str()));
        Ok(Response::new(ListCasesResponse {
            cases: rows.into_iter().map(CaseRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn open_case(
        &self,
        request: Request<OpenCaseRequest>,
    ) -> Result<Response<OpenCaseResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.pupil(request.get_ref().upn.trim(), &school)?;
        let row = casework::open(&self.db, &self.registers, request.into_inner()).await?;
        Ok(Response::new(OpenCaseResponse {
            r#case: Some(row.into_proto()),
        }))
    }

    async fn escalate_case(
        &self,
        request: Request<EscalateCaseRequest>,
    ) -> Result<Response<EscalateCaseResponse>, Status> {
        let case_id = request.get_ref().case_id.clone();
        let row = self
            .apply(request, casework::Change::Escalate, &case_id)
            .await?;
        Ok(Response::new(EscalateCaseResponse { r#case: Some(row) }))
    }

    async fn deescalate_case(
        &self,
        request: Request<DeescalateCaseRequest>,
    ) -> Result<Response<DeescalateCaseResponse>, Status> {
        let case_id = request.get_ref().case_id.clone();
        let row = self
            .apply(request, casework::Change::Deescalate, &case_id)
            .await?;
        Ok(Response::new(DeescalateCaseResponse { r#case: Some(row) }))
    }

    async fn keep_case_open(
        &self,
        request: Request<KeepCaseOpenRequest>,
    ) -> Result<Response<KeepCaseOpenResponse>, Status> {
        let case_id = request.get_ref().case_id.clone();
        let row = self
            .apply(request, casework::Change::KeepOpen, &case_id)
            .await?;
        Ok(Response::new(KeepCaseOpenResponse { r#case: Some(row) }))
    }

    async fn close_case(
        &self,
        request: Request<CloseCaseRequest>,
    ) -> Result<Response<CloseCaseResponse>, Status> {
        let case_id = request.get_ref().case_id.clone();
        let row = self
            .apply(request, casework::Change::Close, &case_id)
            .await?;
        Ok(Response::new(CloseCaseResponse { r#case: Some(row) }))
    }

    async fn record_action(
        &self,
        request: Request<RecordActionRequest>,
    ) -> Result<Response<RecordActionResponse>, Status> {
        self.check_owner(&caller(&request)?, Owner::Case, &request.get_ref().case_id)
            .await?;
        casework::record_action(&self.db, &self.registers, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_overdue_reviews(
        &self,
        request: Request<ListOverdueReviewsRequest>,
    ) -> Result<Response<ListOverdueReviewsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = if request.laestab.trim().is_empty() {
            caller.trust("Listing overdue reviews")?;
            String::new()
        } else {
            let school = laestab("laestab", &request.laestab)?;
            caller.school(&school)?;
            self.registers
                .clone()
                .get_school(rollcall_api::registers::v1::GetSchoolRequest {
                    laestab: school.clone(),
                })
                .await
                .map_err(|status| rollcall_runtime::grpc::upstream_error("registers", status))?;
            school
        };
        let as_of = if request.as_of.trim().is_empty() {
            Utc::now().date_naive()
        } else {
            parse_date(&request.as_of)
                .map_err(|error| invalid_argument("as_of", &request.as_of, error.problem()))?
        };
        let owners = casework::overdue(&self.db, &school, as_of).await?;
        Ok(Response::new(ListOverdueReviewsResponse { owners }))
    }

    async fn get_case_timeline(
        &self,
        request: Request<GetCaseTimelineRequest>,
    ) -> Result<Response<GetCaseTimelineResponse>, Status> {
        self.check_owner(&caller(&request)?, Owner::Case, &request.get_ref().case_id)
            .await?;
        casework::timeline(&self.db, request.into_inner().case_id.trim())
            .await
            .map(Response::new)
    }

    async fn list_ladders(
        &self,
        _request: Request<ListLaddersRequest>,
    ) -> Result<Response<ListLaddersResponse>, Status> {
        let ladders = casework::list_ladders(&self.db).await?;
        Ok(Response::new(ListLaddersResponse { ladders }))
    }

    async fn load_ladder(
        &self,
        request: Request<LoadLadderRequest>,
    ) -> Result<Response<LoadLadderResponse>, Status> {
        let request = request.into_inner();
        let ladder = casework::load_ladder(&self.db, &request.source, &request.loaded_by).await?;
        Ok(Response::new(LoadLadderResponse {
            ladder: Some(ladder),
        }))
    }

    async fn create_plan(
        &self,
        request: Request<CreatePlanRequest>,
    ) -> Result<Response<CreatePlanResponse>, Status> {
        self.check_owner(&caller(&request)?, Owner::Case, &request.get_ref().case_id)
            .await?;
        let plan = plans::create(&self.db, &self.policy, request.into_inner()).await?;
        Ok(Response::new(CreatePlanResponse { plan: Some(plan) }))
    }

    async fn review_plan(
        &self,
        request: Request<ReviewPlanRequest>,
    ) -> Result<Response<ReviewPlanResponse>, Status> {
        self.check_owner(&caller(&request)?, Owner::Plan, &request.get_ref().plan_id)
            .await?;
        let plan = plans::review(&self.db, &self.policy, request.into_inner()).await?;
        Ok(Response::new(ReviewPlanResponse { plan: Some(plan) }))
    }

    async fn list_plans(
        &self,
        request: Request<ListPlansRequest>,
    ) -> Result<Response<ListPlansResponse>, Status> {
        let caller = caller(&request)?;
        let named = request.get_ref().laestab.trim();
        if named.is_empty() {
            caller.trust("Listing plans")?;
        } else {
            caller.pupil(request.get_ref().upn.trim(), &laestab("laestab", named)?)?;
        }
        let plans = plans::list(&self.db, request.into_inner()).await?;
        Ok(Response::new(ListPlansResponse { plans }))
    }

    async fn record_truancy_incident(
        &self,
        request: Request<RecordTruancyIncidentRequest>,
    ) -> Result<Response<RecordTruancyIncidentResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        incidents::record_incident(&self.db, &self.registers, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_truancy_incidents(
        &self,
        request: Request<ListTruancyIncidentsRequest>,
    ) -> Result<Response<ListTruancyIncidentsResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&school)?;
        let incidents = incidents::incidents(&self.db, &school).await?;
        let flags = incidents::flags(&self.registers, &school).await?;
        let flags_not_dealt_with = flags
            .into_iter()
            .map(|flag| flag.id)
            .filter(|id| !incidents.iter().any(|incident| incident.flag_id == *id))
            .collect();
        Ok(Response::new(ListTruancyIncidentsResponse {
            incidents,
            flags_not_dealt_with,
        }))
    }

    async fn record_reward(
        &self,
        request: Request<RecordRewardRequest>,
    ) -> Result<Response<RecordRewardResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.pupil(request.get_ref().upn.trim(), &school)?;
        incidents::record_reward(&self.db, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_given_rewards(
        &self,
        request: Request<ListGivenRewardsRequest>,
    ) -> Result<Response<ListGivenRewardsResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&school)?;
        let rewards = incidents::given_rewards(&self.db, &school).await?;
        Ok(Response::new(ListGivenRewardsResponse { rewards }))
    }

    async fn create_reintegration(
        &self,
        request: Request<CreateReintegrationRequest>,
    ) -> Result<Response<CreateReintegrationResponse>, Status> {
        self.check_owner(&caller(&request)?, Owner::Case, &request.get_ref().case_id)
            .await?;
        let reintegration = reintegration::create(&self.db, request.into_inner()).await?;
        Ok(Response::new(CreateReintegrationResponse {
            reintegration: Some(reintegration),
        }))
    }

    async fn record_check_in(
        &self,
        request: Request<RecordCheckInRequest>,
    ) -> Result<Response<RecordCheckInResponse>, Status> {
        let id = request.get_ref().reintegration_id.clone();
        self.check_owner(&caller(&request)?, Owner::Reintegration, &id)
            .await?;
        let reintegration = reintegration::check_in(&self.db, request.into_inner()).await?;
        Ok(Response::new(RecordCheckInResponse {
            reintegration: Some(reintegration),
        }))
    }

    async fn list_reintegrations(
        &self,
        request: Request<ListReintegrationsRequest>,
    ) -> Result<Response<ListReintegrationsResponse>, Status> {
        self.check_owner(&caller(&request)?, Owner::Case, &request.get_ref().case_id)
            .await?;
        let reintegrations =
            reintegration::list(&self.db, request.into_inner().case_id.trim()).await?;
        Ok(Response::new(ListReintegrationsResponse { reintegrations }))
    }

    async fn get_sync_state(
        &self,
        _request: Request<GetSyncStateRequest>,
    ) -> Result<Response<GetSyncStateResponse>, Status> {
        let pending: i64 = with_db!(&self.db, |pool| {
            sqlx::query_scalar("SELECT COUNT(*) FROM letter_jobs WHERE status = 'pending'")
                .fetch_one(pool)
                .await
        })
        .map_err(|e| storage_error("counting letter jobs", e))?;
        Ok(Response::new(GetSyncStateResponse {
            trigger_cursor: *self.processed.borrow(),
            pending_letters: pending as i32,
        }))
    }

    async fn run_first_day_contact(
        &self,
        request: Request<RunFirstDayContactRequest>,
    ) -> Result<Response<RunFirstDayContactResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        self.run_first_day_contact_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_contact_tasks(
        &self,
        request: Request<ListContactTasksRequest>,
    ) -> Result<Response<ListContactTasksResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        self.list_contact_tasks_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn complete_contact_task(
        &self,
        request: Request<CompleteContactTaskRequest>,
    ) -> Result<Response<CompleteContactTaskResponse>, Status> {
        let id = request.get_ref().task_id.clone();
        self.check_owner(&caller(&request)?, Owner::ContactTask, &id)
            .await?;
        self.complete_contact_task_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let caller = caller(&request)?;
        let asked = request.get_ref();
        if !asked.laestab.trim().is_empty() {
            caller.pupil(asked.upn.trim(), &laestab("laestab", &asked.laestab)?)?;
        } else if !asked.case_id.trim().is_empty() {
            self.check_owner(&caller, Owner::Case, &asked.case_id)
                .await?;
        } else {
            caller.trust("Listing messages")?;
        }
        self.list_messages_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn resend_message(
        &self,
        request: Request<ResendMessageRequest>,
    ) -> Result<Response<ResendMessageResponse>, Status> {
        let id = request.get_ref().message_id.clone();
        self.check_owner(&caller(&request)?, Owner::Message, &id)
            .await?;
        self.resend_message_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_templates(
        &self,
        _request: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        self.list_templates_rpc().await.map(Response::new)
    }

    async fn load_template(
        &self,
        request: Request<LoadTemplateRequest>,
    ) -> Result<Response<LoadTemplateResponse>, Status> {
        self.load_template_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_letter(
        &self,
        request: Request<CreateLetterRequest>,
    ) -> Result<Response<CreateLetterResponse>, Status> {
        self.check_owner(&caller(&request)?, Owner::Case, &request.get_ref().case_id)
            .await?;
        self.create_letter_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn review_letter(
        &self,
        request: Request<ReviewLetterRequest>,
    ) -> Result<Response<ReviewLetterResponse>, Status> {
        let id = request.get_ref().message_id.clone();
        self.check_owner(&caller(&request)?, Owner::Message, &id)
            .await?;
        self.review_letter_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_letter_document(
        &self,
        request: Request<GetLetterDocumentRequest>,
    ) -> Result<Response<GetLetterDocumentResponse>, Status> {
        let id = request.get_ref().message_id.clone();
        self.check_owner(&caller(&request)?, Owner::Message, &id)
            .await?;
        self.get_letter_document_rpc(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_referral_evidence(
        &self,
        request: Request<GetReferralEvidenceRequest>,
    ) -> Result<Response<GetReferralEvidenceResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let upn =
            required("upn", &request.upn, "the pupil's UPN is required")?.to_ascii_uppercase();
        let laestab = laestab("laestab", &request.laestab)?;
        caller.pupil(&upn, &laestab)?;
        crate::evidence::gather(&self.db, &upn, &laestab)
            .await
            .map(Response::new)
    }

    async fn apply_case_retention(
        &self,
        request: Request<ApplyCaseRetentionRequest>,
    ) -> Result<Response<ApplyCaseRetentionResponse>, Status> {
        caller(&request)?.trust("Applying case retention")?;
        let request = request.into_inner();
        let as_of = if request.as_of.trim().is_empty() {
            Utc::now().date_naive()
        } else {
            parse_date(&request.as_of)
                .map_err(|error| invalid_argument("as_of", &request.as_of, error.problem()))?
        };
        crate::retention::apply(&self.db, as_of, self.retention_years, request.dry_run)
            .await
            .map(Response::new)
    }
}
