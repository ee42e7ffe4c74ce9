//! The gRPC service: referral records, their prerequisites, submission with the pack, and the
//! local authority's outcomes.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::GetLetterDocumentRequest;
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::mis_adapter::v1::DeliverReferralPackRequest;
use rollcall_api::mis_adapter::v1::mis_adapter_service_client::MisAdapterServiceClient;
use rollcall_api::policy::v1::GetPenaltyNoticeTermsRequest;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::referrals::v1::referrals_service_server::{
    ReferralsService, ReferralsServiceServer,
};
use rollcall_api::referrals::v1::{
    BuildReferralPackRequest, BuildReferralPackResponse, CreateReferralRequest,
    CreateReferralResponse, GetReferralPackRequest, GetReferralPackResponse, GetReferralRequest,
    GetReferralResponse, ListReferralsRequest, ListReferralsResponse, RecordReferralOutcomeRequest,
    RecordReferralOutcomeResponse, Referral, SubmitReferralRequest, SubmitReferralResponse,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_auth::{Caller, caller};
use rollcall_domain::outcomes::{IssuedNotice, Outcome, ReferralStatus, apply_outcome};
use rollcall_domain::referrals::{
    OVERRIDE_ROLES, ReferralKind, Submission, check_prerequisites, decide_submission,
};
use rollcall_domain::session::{academic_year_of, parse_date};
use rollcall_pack::SigningKey;
use rollcall_runtime::grpc::{
    MAX_MESSAGE_BYTES, failed_precondition, invalid_argument, laestab, upstream_error,
};
use rollcall_runtime::{Db, Peers};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::config::ReferralsConfig;
use crate::facts::{self, Gathered, Subject, Upstream};
use crate::pack::{self, PackInput};
use crate::records::{self, ListFilter, NewDraft, NewOutcome, ReferralRow, StoredCheck};

/// The name recorded for drafts the service creates itself, when a pack is asked for by UPN.
const SYSTEM_USER: &str = "rollcall";

/// The referrals service.
#[derive(Clone)]
pub struct Referrals {
    db: Db,
    upstream: Upstream,
    config: Arc<ReferralsConfig>,
    key: Arc<SigningKey>,
}

impl std::fmt::Debug for Referrals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Referrals")
            .field("config", &self.config)
            .field("key_id", &self.key.verifying_key().key_id())
            .finish_non_exhaustive()
    }
}

impl Referrals {
    /// Creates the service over its storage, its settings, the key packs are signed with, and
    /// channels to the registers, policy, cases and mis-adapter services.
    pub fn new(db: Db, peers: &Peers, config: ReferralsConfig, key: SigningKey) -> Self {
        Self {
            db,
            upstream: Upstream {
                registers: RegistersServiceClient::new(peers.registers.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                policy: PolicyServiceClient::new(peers.policy.clone()),
                cases: CasesServiceClient::new(peers.cases.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
                adapter: MisAdapterServiceClient::new(peers.mis_adapter.clone())
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            },
            config: Arc::new(config),
            key: Arc::new(key),
        }
    }

    /// Starts the follower of the registers' UPN changes.
    pub fn start_upn_follower(&self) -> tokio::task::JoinHandle<()> {
        crate::upn_changes::spawn(self.db.clone(), self.upstream.registers.clone())
    }

    /// Starts the follower that records marks changed after a referral's submission.
    pub fn start_evidence_follower(&self) -> tokio::task::JoinHandle<()> {
        crate::evidence::spawn(self.db.clone(), self.upstream.registers.clone())
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> ReferralsServiceServer<Self> {
        ReferralsServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn to_proto(&self, row: ReferralRow) -> Result<Referral, Status> {
        let outcomes = records::outcomes_of(&self.db, &row.id).await?;
        let evidence = records::evidence_changes_of(&self.db, &row.id).await?;
        Ok(row.into_proto(outcomes, evidence, today()))
    }

    /// Gathers the facts for a stored referral and checks its prerequisites as of today.
    async fn check(&self, row: &ReferralRow) -> Result<(Gathered, Vec<StoredCheck>), Status> {
        let kind = parse_kind(&row.kind)?;
        let earlier = records::notices_for(&self.db, &row.upn).await?;
        let gathered = facts::gather(
            &self.upstream,
            &self.config,
            Subject {
                kind,
                upn: &row.upn,
                laestab: &row.laestab,
                as_of: &row.as_of.to_string(),
                on: today(),
                earlier_notices: &earlier,
            },
        )
        .await?;
        let checks = check_prerequisites(kind, &gathered.facts)
            .iter()
            .map(|check| StoredCheck::from_check(check, false))
            .collect();
        Ok((gathered, checks))
    }

    async fn create(&self, request: CreateReferralRequest) -> Result<ReferralRow, Status> {
        if let Some(row) = records::by_request(&self.db, request.request_id.trim()).await? {
            return Ok(row);
        }

        let upn = required("upn", &request.upn, "give the pupil's UPN")?.to_ascii_uppercase();
        let kind = parse_kind(&request.kind)?;
        let created_by = required(
            "created_by",
            &request.created_by,
            "give the name of the person creating the referral",
        )?;
        let school = if request.laestab.trim().is_empty() {
            String::new()
        } else {
            laestab("laestab", &request.laestab)?
        };
        if !request.as_of.trim().is_empty() {
            let as_of = parse_date(request.as_of.trim())
                .map_err(|error| invalid_argument("as_of", &request.as_of, error.problem()))?;
            if as_of > today() {
                return Err(invalid_argument(
                    "as_of",
                    &request.as_of,
                    "it is in the future; give a date up to today, or none for the last date \
                     with marks",
                ));
            }
        }

        let on = today();
        let earlier = records::notices_for(&self.db, &upn).await?;
        let gathered = facts::gather(
            &self.upstream,
            &self.config,
            Subject {
                kind,
                upn: &upn,
                laestab: &school,
                as_of: request.as_of.trim(),
                on,
                earlier_notices: &earlier,
            },
        )
        .await?;
        let checks: Vec<StoredCheck> = check_prerequisites(kind, &gathered.facts)
            .iter()
            .map(|check| StoredCheck::from_check(check, false))
            .collect();

        let period = gathered.attendance.period.clone().unwrap_or_default();
        let as_of = parse_date(&period.to_date).unwrap_or(on);
        let school = gathered.school.laestab.clone();
        let id = records::insert_draft(
            &self.db,
            NewDraft {
                request_id: request.request_id.trim(),
                kind: kind.as_str(),
                laestab: &school,
                upn: &upn,
                case_id: gathered
                    .evidence
                    .r#case
                    .as_ref()
                    .map_or("", |case| case.id.as_str()),
                policy_id: gathered
                    .attendance
                    .policy
                    .as_ref()
                    .map_or("", |policy| policy.id.as_str()),
                as_of,
                checks: &checks,
                created_by: &created_by,
                year: academic_year_of(on),
            },
        )
        .await?;

        let met = checks.iter().filter(|check| check.met).count();
        tracing::info!(
            referral = %id,
            kind = %kind,
            %upn,
            laestab = %school,
            prerequisites_met = met,
            prerequisites = checks.len(),
            "Referral created"
        );
        rollcall_runtime::telemetry::metrics::referral_created(&school);
        records::get(&self.db, &id).await
    }

    /// Fetches the sent letters' PDFs, named for the pack.
    async fn letters(&self, gathered: &Gathered) -> Result<Vec<(String, Vec<u8>)>, Status> {
        let mut cases = self.upstream.cases.clone();
        let mut letters = Vec::new();
        for letter in gathered.letters_with_documents() {
            let pdf = cases
                .get_letter_document(GetLetterDocumentRequest {
                    message_id: letter.message_id.clone(),
                })
                .await
                .map_err(|status| upstream_error("cases", status))?
                .into_inner()
                .pdf;
            let name = format!(
                "{}-{}-{}.pdf",
                letter.sent_on,
                letter.template,
                letter.message_id.to_ascii_lowercase()
            );
            letters.push((name, pdf));
        }
        Ok(letters)
    }

    async fn build_pack(
        &self,
        row: &ReferralRow,
        gathered: &Gathered,
        checks: &[StoredCheck],
        submitted_at: Option<DateTime<Utc>>,
        override_by: Option<(&str, &str, &str)>,
        created_at: DateTime<Utc>,
    ) -> Result<(String, pack::BuiltPack), Status> {
        let letters = self.letters(gathered).await?;
        let pack_id = format!("pack-{}-{}", row.id, created_at.format("%Y%m%dT%H%M%S"));
        let built = pack::build(
            &PackInput {
                pack_id: &pack_id,
                referral: row,
                checks,
                submitted_at,
                override_by,
                gathered,
                letters,
                created_at,
            },
            &self.key,
        )
        .map_err(|error| {
            tracing::error!(referral = %row.id, %error, "Building a referral pack failed");
            Status::internal(format!("building the pack failed: {error}"))
        })?;
        Ok((pack_id, built))
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn required(field: &str, value: &str, problem: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(invalid_argument(field, value, problem))
    } else {
        Ok(trimmed.to_owned())
    }
}

fn parse_kind(value: &str) -> Result<ReferralKind, Status> {
    value
        .parse::<ReferralKind>()
        .map_err(|error| invalid_argument("kind", value, error.to_string()))
}

#[tonic::async_trait]
impl ReferralsService for Referrals {
    async fn build_referral_pack(
        &self,
        request: Request<BuildReferralPackRequest>,
    ) -> Result<Response<BuildReferralPackResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let upn = required("upn", &request.upn, "a UPN is required")?.to_ascii_uppercase();
        let school = if request.laestab.trim().is_empty() {
            caller.trust("Building a pack without naming the school")?;
            String::new()
        } else {
            laestab("laestab", &request.laestab)?
        };
        caller.pupil(&upn, &school)?;
        let row = match records::open_penalty_notice(&self.db, &upn, &school).await? {
            Some(row) => row,
            None => {
                let row = self
                    .create(CreateReferralRequest {
                        upn: upn.clone(),
                        laestab: school.clone(),
                        kind: ReferralKind::PenaltyNotice.as_str().to_owned(),
                        created_by: SYSTEM_USER.to_owned(),
                        as_of: request.as_of.clone(),
                        request_id: String::new(),
                    })
                    .await;
                row?
            }
        };
        if row.status() != ReferralStatus::Draft {
            // A submitted referral's pack is the one the local authority received.
            let (file_name, zip) = self.submitted_pack(&row).await?;
            let manifest_json = pack::manifest_text(&zip).map_err(Status::internal)?;
            return Ok(Response::new(BuildReferralPackResponse {
                file_name,
                pack: zip,
                manifest_json,
            }));
        }
        let (gathered, checks) = self.check(&row).await?;
        if !gathered.threshold.met {
            let threshold = &gathered.threshold;
            let window = threshold.window.clone().unwrap_or_default();
            return Err(failed_precondition(format!(
                "no referral pack is due for pupil {upn}: {} unauthorised sessions between {} and \
                 {}, below the threshold of {} set by clause {} of the policy",
                threshold.counted_sessions,
                window.from_date,
                window.to_date,
                threshold.threshold_sessions,
                threshold.clause
            )));
        }
        let (pack_id, built) = self
            .build_pack(&row, &gathered, &checks, None, None, Utc::now())
            .await?;
        tracing::info!(referral = %row.id, pack = %pack_id, %upn, "Referral pack built");
        Ok(Response::new(BuildReferralPackResponse {
            file_name: format!("{pack_id}.zip"),
            pack: built.zip,
            manifest_json: built.manifest,
        }))
    }

    async fn create_referral(
        &self,
        request: Request<CreateReferralRequest>,
    ) -> Result<Response<CreateReferralResponse>, Status> {
        let caller = caller(&request)?;
        let asked = request.get_ref();
        if asked.laestab.trim().is_empty() {
            caller.trust("Creating a referral without naming the school")?;
        } else {
            caller.pupil(asked.upn.trim(), &laestab("laestab", &asked.laestab)?)?;
        }
        let row = self.create(request.into_inner()).await?;
        check_referral(&caller, &row)?;
        Ok(Response::new(CreateReferralResponse {
            referral: Some(self.to_proto(row).await?),
        }))
    }

    async fn get_referral(
        &self,
        request: Request<GetReferralRequest>,
    ) -> Result<Response<GetReferralResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let mut row = self.requested_referral(&request.id).await?;
        check_referral(&caller, &row)?;
        if row.status() == ReferralStatus::Draft {
            let (gathered, checks) = self.check(&row).await?;
            let case_id = gathered
                .evidence
                .r#case
                .as_ref()
                .map_or(String::new(), |case| case.id.clone());
            records::update_checks(&self.db, &row.id, &case_id, &checks).await?;
            row = records::get(&self.db, &row.id).await?;
        }
        Ok(Response::new(GetReferralResponse {
            referral: Some(self.to_proto(row).await?),
        }))
    }

    async fn list_referrals(
        &self,
        request: Request<ListReferralsRequest>,
    ) -> Result<Response<ListReferralsResponse>, Status> {
        let caller = caller(&request)?;
        let authority_only = caller.is_local_authority_only();
        let request = request.into_inner();
        let school = if request.laestab.trim().is_empty() {
            if !authority_only {
                caller.trust("Listing referrals")?;
            }
            String::new()
        } else {
            let school = laestab("laestab", &request.laestab)?;
            if !authority_only {
                caller.school(&school)?;
            }
            school
        };
        let kind = if request.kind.trim().is_empty() {
            String::new()
        } else {
            parse_kind(&request.kind)?.as_str().to_owned()
        };
        let status = match crate::records::status_from_proto(request.status) {
            Some(status) => status.as_str().to_owned(),
            None if request.status == 0 => String::new(),
            None => {
                return Err(invalid_argument(
                    "status",
                    &request.status.to_string(),
                    "not a referral status",
                ));
            }
        };
        let limit = if request.page_size <= 0 {
            100
        } else {
            i64::from(request.page_size.min(1_000))
        };
        let today = today();
        let mut filter = ListFilter {
            laestab: school,
            upn: request.upn.trim().to_ascii_uppercase(),
            kind,
            status,
            before_id: request.page_token.trim().to_owned(),
            limit: limit + 1,
        };
        if request.overdue_only {
            // Overdue notices are issued or unpaid ones; the status filter is applied below.
            filter.status = String::new();
            filter.limit = i64::MAX;
        }
        let mut rows = records::list(&self.db, &filter).await?;
        if request.overdue_only {
            rows.retain(|row| row.is_overdue(today));
        }
        let next_page_token = if !request.overdue_only && rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|row| row.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        if authority_only {
            // An officer sees the referrals sent to their authority, and no drafts. The page
            // token above still moves on by the last referral read.
            rows.retain(|row| check_referral(&caller, row).is_ok());
        }
        caller.read_pupils(rows.iter().map(|row| row.upn.as_str()));
        let mut referrals = Vec::with_capacity(rows.len());
        for row in rows {
            referrals.push(self.to_proto(row).await?);
        }
        Ok(Response::new(ListReferralsResponse {
            referrals,
            next_page_token,
        }))
    }

    async fn submit_referral(
        &self,
        request: Request<SubmitReferralRequest>,
    ) -> Result<Response<SubmitReferralResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let submitted_by = required(
            "submitted_by",
            &request.submitted_by,
            "give the name of the person submitting",
        )?;
        let row = self.requested_referral(&request.id).await?;
        check_referral(&caller, &row)?;
        if row.status() != ReferralStatus::Draft {
            return Err(already_submitted(&row));
        }
        let reason = request.override_reason.trim();
        let role = request.role.trim();
        if !reason.is_empty() && !OVERRIDE_ROLES.contains(&role) {
            return Err(Status::permission_denied(format!(
                "role {role:?} cannot override missing prerequisites; only {} can, with a reason",
                OVERRIDE_ROLES.join(" or ")
            )));
        }

        let (gathered, _) = self.check(&row).await?;
        let kind = parse_kind(&row.kind)?;
        let domain_checks = check_prerequisites(kind, &gathered.facts);
        let decision = decide_submission(&domain_checks, Some(role), reason);
        let overridden = match &decision {
            Submission::Allowed => false,
            Submission::Overridden { .. } => true,
            Submission::Blocked { .. } => {
                let missing: Vec<String> = domain_checks
                    .iter()
                    .filter(|check| !check.met)
                    .map(|check| format!("{} ({})", check.prerequisite.as_str(), check.evidence))
                    .collect();
                return Err(failed_precondition(format!(
                    "referral {} cannot be submitted: missing {}. Record what is missing, or a \
                     headteacher or senior_attendance_lead may override with a reason",
                    row.reference,
                    missing.join("; ")
                )));
            }
        };
        let checks: Vec<StoredCheck> = domain_checks
            .iter()
            .map(|check| StoredCheck::from_check(check, overridden))
            .collect();

        let now = Utc::now();
        let override_by = overridden.then_some((submitted_by.as_str(), role, reason));
        let (pack_id, built) = self
            .build_pack(&row, &gathered, &checks, Some(now), override_by, now)
            .await?;
        let sha256 = hex::encode(Sha256::digest(&built.zip));
        let clause = gathered.threshold.clause.clone();
        let case_id = gathered
            .evidence
            .r#case
            .as_ref()
            .map_or(String::new(), |case| case.id.clone());
        let stored = records::submit(
            &self.db,
            &row,
            records::Submission {
                id: &row.id,
                submitted_by: &submitted_by,
                submitted_at: now,
                override_role: role,
                override_reason: reason,
                checks: &checks,
                case_id: &case_id,
                pack_id: &pack_id,
                pack_sha256: &sha256,
                pack: &built.zip,
                clause: &clause,
                evidence_sequence: gathered.marks.iter().map(|mark| mark.sequence).max(),
                period: gathered.period(),
            },
        )
        .await?;
        if !stored {
            let current = records::get(&self.db, &row.id).await?;
            return Err(already_submitted(&current));
        }

        if overridden {
            tracing::warn!(
                referral = %row.id,
                role,
                "Referral submitted with missing prerequisites overridden"
            );
        }
        tracing::info!(referral = %row.id, pack = %pack_id, %sha256, "Referral submitted");
        rollcall_runtime::telemetry::metrics::referral_submitted(&row.laestab);

        let delivery = self
            .upstream
            .adapter
            .clone()
            .deliver_referral_pack(DeliverReferralPackRequest {
                referral_id: row.id.clone(),
                pack_id: pack_id.clone(),
                laestab: row.laestab.clone(),
                file_name: format!("{pack_id}.zip"),
                pack: built.zip,
                sha256,
            })
            .await;
        let (delivery_ids, delivery_problem) = match delivery {
            Ok(response) => (
                response
                    .into_inner()
                    .deliveries
                    .into_iter()
                    .map(|delivery| delivery.id)
                    .collect(),
                String::new(),
            ),
            Err(status) => {
                tracing::warn!(
                    referral = %row.id,
                    code = ?status.code(),
                    error = status.message(),
                    "Submitted referral's pack not handed over for delivery"
                );
                (Vec::new(), status.message().to_owned())
            }
        };
        let row = records::get(&self.db, &row.id).await?;
        Ok(Response::new(SubmitReferralResponse {
            referral: Some(self.to_proto(row).await?),
            delivery_ids,
            delivery_problem,
        }))
    }

    async fn record_referral_outcome(
        &self,
        request: Request<RecordReferralOutcomeRequest>,
    ) -> Result<Response<RecordReferralOutcomeResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let row = self.requested_referral(&request.id).await?;
        check_referral(&caller, &row)?;
        if records::outcome_request_seen(&self.db, request.request_id.trim()).await? {
            return Ok(Response::new(RecordReferralOutcomeResponse {
                referral: Some(self.to_proto(row).await?),
            }));
        }
        let outcome = crate::records::outcome_from_proto(request.outcome).ok_or_else(|| {
            invalid_argument(
                "outcome",
                &request.outcome.to_string(),
                "give one of accepted, more_information_requested, notice_issued, paid, unpaid, \
                 prosecution or withdrawn",
            )
        })?;
        let recorded_by = required(
            "recorded_by",
            &request.recorded_by,
            "give the name of the person recording the outcome",
        )?;
        let on = if request.on_date.trim().is_empty() {
            today()
        } else {
            parse_date(request.on_date.trim())
                .map_err(|error| invalid_argument("on_date", &request.on_date, error.problem()))?
        };
        if on > today() {
            return Err(invalid_argument(
                "on_date",
                &request.on_date,
                "it is in the future; record an outcome once it has happened",
            ));
        }
        let kind = parse_kind(&row.kind)?;
        let from = row.status();
        apply_outcome(kind, from, outcome).map_err(|problem| {
            failed_precondition(format!("referral {}: {problem}", row.reference))
        })?;
        let outcomes = records::outcomes_of(&self.db, &row.id).await?;
        if let Some(last) = outcomes.last()
            && on < last.on_date
        {
            return Err(invalid_argument(
                "on_date",
                &on.to_string(),
                format!(
                    "it is before the last outcome, {} on {}; outcomes are recorded in the \
                     order they happened",
                    last.outcome, last.on_date
                ),
            ));
        }
        if outcome == Outcome::Unpaid
            && let Some(notice) = row.notice()
            && !notice.position_on(on).overdue
        {
            return Err(failed_precondition(format!(
                "referral {}: the notice issued on {} can be paid until {}, so it cannot be \
                 unpaid on {on}",
                row.reference,
                notice.issued_on,
                notice.position_on(on).due_by
            )));
        }
        if outcome == Outcome::Paid
            && let Some(notice) = row.notice()
            && on < notice.issued_on
        {
            return Err(invalid_argument(
                "on_date",
                &request.on_date,
                format!("it is before the notice was issued on {}", notice.issued_on),
            ));
        }
        let notice = if outcome == Outcome::NoticeIssued {
            Some(self.notice_terms(&row, on).await?)
        } else {
            None
        };
        let stored = records::record_outcome(
            &self.db,
            &row.id,
            NewOutcome {
                outcome,
                from,
                on,
                note: request.note.trim(),
                recorded_by: &recorded_by,
                request_id: request.request_id.trim(),
                notice,
            },
        )
        .await?;
        if !stored {
            return Err(Status::aborted(format!(
                "referral {} changed while the outcome was being recorded; read it again and \
                 retry",
                row.reference
            )));
        }
        tracing::info!(referral = %row.id, outcome = %outcome, %on, "Referral outcome recorded");
        let row = records::get(&self.db, &row.id).await?;
        Ok(Response::new(RecordReferralOutcomeResponse {
            referral: Some(self.to_proto(row).await?),
        }))
    }

    async fn get_referral_pack(
        &self,
        request: Request<GetReferralPackRequest>,
    ) -> Result<Response<GetReferralPackResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let row = self.requested_referral(&request.id).await?;
        check_referral(&caller, &row)?;
        let (file_name, zip) = if row.status() == ReferralStatus::Draft {
            let (gathered, checks) = self.check(&row).await?;
            let (pack_id, built) = self
                .build_pack(&row, &gathered, &checks, None, None, Utc::now())
                .await?;
            (format!("{pack_id}.zip"), built.zip)
        } else {
            self.submitted_pack(&row).await?
        };
        let manifest_json = pack::manifest_text(&zip).map_err(Status::internal)?;
        Ok(Response::new(GetReferralPackResponse {
            sha256: hex::encode(Sha256::digest(&zip)),
            file_name,
            pack: zip,
            manifest_json,
        }))
    }
}

/// Allows school staff the referrals of their schools' pupils, and a local authority officer
/// the referrals sent to their authority: those of schools whose LAESTAB starts with the
/// authority's number, once submitted.
fn check_referral(caller: &Caller, row: &ReferralRow) -> Result<(), Status> {
    if caller.is_local_authority_only() {
        if row.status() == ReferralStatus::Draft {
            return Err(Status::permission_denied(format!(
                "referral {} is a draft the school has not sent to the local authority",
                row.reference
            )));
        }
        caller.read_pupils([row.upn.as_str()]);
        return caller.local_authority(row.laestab.get(..3).unwrap_or_default());
    }
    caller.pupil(&row.upn, &row.laestab)
}

impl Referrals {
    /// Reads the referral a request names by identifier or reference, or returns
    /// INVALID_ARGUMENT when it names none and NOT_FOUND when it is unknown.
    async fn requested_referral(&self, id: &str) -> Result<ReferralRow, Status> {
        let id = required("id", id, "give the referral's identifier or reference")?;
        records::get(&self.db, &id).await
    }

    /// Returns the file name and bytes of the pack a referral was submitted with.
    async fn submitted_pack(&self, row: &ReferralRow) -> Result<(String, Vec<u8>), Status> {
        if row.pack_id.is_empty() {
            return Err(failed_precondition(format!(
                "referral {} is {} and was never submitted, so it has no pack",
                row.reference, row.status
            )));
        }
        let zip = records::submitted_pack(&self.db, &row.id)
            .await?
            .ok_or_else(|| {
                tracing::error!(referral = %row.id, "Submitted referral has no pack kept");
                Status::internal(format!(
                    "referral {} was submitted but its pack is not kept",
                    row.reference
                ))
            })?;
        Ok((format!("{}.zip", row.pack_id), zip))
    }

    /// Works out the terms of a notice issued on `on` from the policy in force then.
    async fn notice_terms(
        &self,
        row: &ReferralRow,
        on: NaiveDate,
    ) -> Result<(IssuedNotice, i32, String, String), Status> {
        let earlier: Vec<String> = records::notices_for(&self.db, &row.upn)
            .await?
            .into_iter()
            .filter(|date| *date <= on)
            .map(|date| date.to_string())
            .collect();
        let terms = self
            .upstream
            .policy
            .clone()
            .get_penalty_notice_terms(GetPenaltyNoticeTermsRequest {
                laestab: row.laestab.clone(),
                on_date: on.to_string(),
                earlier_notices: earlier,
            })
            .await
            .map_err(|status| upstream_error("policy", status))?
            .into_inner();
        if !terms.allowed {
            return Err(failed_precondition(format!(
                "referral {}: the policy allows no further notice on {on}: {}",
                row.reference, terms.explanation
            )));
        }
        let unsigned = |value: i32| u32::try_from(value).unwrap_or(0);
        Ok((
            IssuedNotice {
                issued_on: on,
                reduced_amount: terms.reduced_amount.map(unsigned),
                reduced_days: unsigned(terms.reduced_days),
                full_amount: unsigned(terms.full_amount),
                full_days: unsigned(terms.full_days),
            },
            terms.number,
            terms.policy_id,
            terms.clause,
        ))
    }
}

fn already_submitted(row: &ReferralRow) -> Status {
    match row.submitted_at {
        Some(at) => failed_precondition(format!(
            "referral {} was already submitted on {} by {}, and is now {}; a referral is \
             submitted once",
            row.reference,
            at.format("%Y-%m-%d %H:%M UTC"),
            row.submitted_by,
            row.status
        )),
        None => failed_precondition(format!(
            "referral {} is {}, so it cannot be submitted",
            row.reference, row.status
        )),
    }
}
