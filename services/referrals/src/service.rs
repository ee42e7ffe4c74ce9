//! The gRPC service: checks the threshold through the policy service, reads the register
//! through the registers service, builds the pack and records it.

use chrono::Utc;
use rollcall_api::policy::v1::GetPupilAttendanceRequest;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::referrals::v1::referrals_service_server::{
    ReferralsService, ReferralsServiceServer,
};
use rollcall_api::referrals::v1::{BuildReferralPackRequest, BuildReferralPackResponse};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{GetPupilRequest, GetSchoolRequest, ListMarksRequest};
use rollcall_domain::session::parse_date;
use rollcall_runtime::grpc::{
    MAX_MESSAGE_BYTES, failed_precondition, invalid_argument, storage_error, upstream_error,
};
use rollcall_runtime::{Db, with_db};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::pack::{self, PackInput};

/// The rule whose threshold makes a pack due.
const PACK_RULE: &str = "penalty_notice_warning";

/// The referrals service.
#[derive(Debug, Clone)]
pub struct Referrals {
    db: Db,
    registers: RegistersServiceClient<Channel>,
    policy: PolicyServiceClient<Channel>,
}

impl Referrals {
    /// Creates the service over its storage and clients of the registers and policy services.
    pub fn new(db: Db, registers: Channel, policy: Channel) -> Self {
        Self {
            db,
            registers: RegistersServiceClient::new(registers)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            policy: PolicyServiceClient::new(policy),
        }
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> ReferralsServiceServer<Self> {
        ReferralsServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl ReferralsService for Referrals {
    async fn build_referral_pack(
        &self,
        request: Request<BuildReferralPackRequest>,
    ) -> Result<Response<BuildReferralPackResponse>, Status> {
        let request = request.into_inner();
        let upn = request.upn.trim().to_ascii_uppercase();
        if upn.is_empty() {
            return Err(invalid_argument("upn", &request.upn, "a UPN is required"));
        }
        let attendance = self
            .policy
            .clone()
            .get_pupil_attendance(GetPupilAttendanceRequest {
                upn: upn.clone(),
                laestab: request.laestab.clone(),
                as_of: request.as_of.clone(),
            })
            .await
            .map_err(|status| upstream_error("policy", status))?
            .into_inner();
        let threshold = attendance
            .thresholds
            .iter()
            .find(|threshold| threshold.rule_id == PACK_RULE)
            .cloned()
            .ok_or_else(|| {
                Status::internal("the policy has no penalty-notice warning threshold")
            })?;
        let window = threshold.window.clone().unwrap_or_default();
        if !threshold.met {
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
        let record = attendance.attendance.clone().unwrap_or_default();
        let period = attendance.period.clone().unwrap_or_default();

        let mut registers = self.registers.clone();
        let school = registers
            .get_school(GetSchoolRequest {
                laestab: record.laestab.clone(),
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner()
            .school
            .unwrap_or_default();
        let pupil = registers
            .get_pupil(GetPupilRequest { upn: upn.clone() })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner()
            .pupil
            .unwrap_or_default();
        let mut marks = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = registers
                .list_marks(ListMarksRequest {
                    laestab: record.laestab.clone(),
                    upn: upn.clone(),
                    from_date: period.from_date.clone(),
                    to_date: period.to_date.clone(),
                    page_size: 5_000,
                    page_token,
                })
                .await
                .map_err(|status| upstream_error("registers", status))?
                .into_inner();
            marks.extend(page.marks);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }

        let pack_id = format!(
            "pack-{}-{}-{}",
            record.laestab,
            upn,
            Utc::now().format("%Y%m%dT%H%M%S")
        );
        let built = pack::build(&PackInput {
            pack_id: &pack_id,
            school: &school,
            pupil: &pupil,
            year_group: &record.year_group,
            attendance: &attendance,
            threshold: &threshold,
            marks: &marks,
        })
        .map_err(|error| {
            tracing::error!(%upn, %error, "Building a referral pack failed");
            Status::internal(format!("building the pack failed: {error}"))
        })?;
        let sha256 = hex::encode(Sha256::digest(&built.zip));
        let as_of = parse_date(&period.to_date).unwrap_or_default();
        with_db!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO packs (id, laestab, upn, policy_id, clause, as_of, sha256, built_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&pack_id)
            .bind(&record.laestab)
            .bind(&upn)
            .bind(
                attendance
                    .policy
                    .as_ref()
                    .map(|p| p.id.clone())
                    .unwrap_or_default(),
            )
            .bind(&threshold.clause)
            .bind(as_of)
            .bind(&sha256)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|error| storage_error("recording a pack", error))?;
        tracing::info!(pack = %pack_id, %upn, laestab = %record.laestab, %sha256, "Referral pack built");

        Ok(Response::new(BuildReferralPackResponse {
            file_name: format!("{pack_id}.zip"),
            pack: built.zip,
            manifest_json: built.manifest,
        }))
    }
}
