//! The gRPC service: requests in, storage, responses out.

use chrono::{DateTime, Utc};
use rollcall_api::cases::v1::cases_service_server::{CasesService, CasesServiceServer};
use rollcall_api::cases::v1::{
    Case, CaseStatus, GetSyncStateRequest, GetSyncStateResponse, ListCasesRequest,
    ListCasesResponse,
};
use rollcall_api::convert::timestamp;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::types::v1::Phase as PbPhase;
use rollcall_domain::Phase;
use rollcall_runtime::grpc::{MAX_MESSAGE_BYTES, laestab, storage_error};
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::follower;

/// The cases service.
#[derive(Debug, Clone)]
pub struct Cases {
    db: Db,
    policy: PolicyServiceClient<Channel>,
    processed: watch::Sender<i64>,
}

impl Cases {
    /// Creates the service over its storage and a client of the policy service.
    pub async fn new(db: Db, policy: Channel) -> anyhow::Result<Self> {
        let cursor = follower::stored_cursor(&db).await?;
        let (processed, _) = watch::channel(cursor);
        Ok(Self {
            db,
            policy: PolicyServiceClient::new(policy),
            processed,
        })
    }

    /// Starts the follower of the policy service's triggers.
    pub fn start_follower(&self) -> tokio::task::JoinHandle<()> {
        follower::spawn(self.db.clone(), self.policy.clone(), self.processed.clone())
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> CasesServiceServer<Self> {
        CasesServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[derive(sqlx::FromRow)]
struct CaseRow {
    id: String,
    laestab: String,
    upn: String,
    concern: String,
    phase: String,
    stage: String,
    stage_number: i32,
    owner_role: String,
    status: String,
    opened_at: DateTime<Utc>,
    opened_by_trigger: String,
}

impl CaseRow {
    fn into_proto(self) -> Case {
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
        }
    }
}

#[tonic::async_trait]
impl CasesService for Cases {
    async fn list_cases(
        &self,
        request: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let request = request.into_inner();
        let laestab = if request.laestab.trim().is_empty() {
            String::new()
        } else {
            laestab("laestab", &request.laestab)?
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
            sqlx::query_as(
                "SELECT id, laestab, upn, concern, phase, stage, stage_number, owner_role, status, \
                 opened_at, opened_by_trigger FROM cases \
                 WHERE ($1 = '' OR laestab = $1) AND status IN ($2, $3) AND ($4 = '' OR id > $4) \
                 ORDER BY id LIMIT $5",
            )
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
        Ok(Response::new(ListCasesResponse {
            cases: rows.into_iter().map(CaseRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_sync_state(
        &self,
        _request: Request<GetSyncStateRequest>,
    ) -> Result<Response<GetSyncStateResponse>, Status> {
        Ok(Response::new(GetSyncStateResponse {
            trigger_cursor: *self.processed.borrow(),
        }))
    }
}
