//! The gRPC service: a Common Transfer File in, checks, one import into the registers, a
//! summary out; and referral packs out to the local authority.

use chrono::Utc;
use rollcall_api::client::Channel;
use rollcall_api::mis_adapter::v1::mis_adapter_service_server::{
    MisAdapterService, MisAdapterServiceServer,
};
use rollcall_api::mis_adapter::v1::{
    DeliverReferralPackRequest, DeliverReferralPackResponse, GetWritebackJobRequest,
    GetWritebackJobResponse, ImportCtfRequest, ImportCtfResponse, ImportWarning,
    ListConnectorDeletionsRequest, ListConnectorDeletionsResponse, ListConnectorRunsRequest,
    ListConnectorRunsResponse, ListConnectorsRequest, ListConnectorsResponse,
    ListDeliveriesRequest, ListDeliveriesResponse, ListWritebackJobsRequest,
    ListWritebackJobsResponse, RetryDeliveryRequest, RetryDeliveryResponse,
    RetryWritebackJobRequest, RetryWritebackJobResponse, RunConnectorRequest, RunConnectorResponse,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    ImportHeader, ImportMarks, ImportRegisterRequest, ImportRegisterResponse,
    import_register_request::Item,
};
use rollcall_api::types::v1::MarkSource;
use rollcall_auth::{Caller, caller};
use rollcall_runtime::grpc::{
    MAX_MESSAGE_BYTES, invalid_argument, laestab, storage_error, upstream_error,
};
use rollcall_runtime::{Db, with_db};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::connector::{Connectors, ConnectorsConfig, sync_client};
use crate::ctf_import::prepare_ctf;
use crate::delivery::{Deliveries, DeliveryConfig};

/// Marks per message of the stream to the registers.
const MARKS_PER_MESSAGE: usize = 5_000;

/// The MIS adapter service.
#[derive(Debug, Clone)]
pub struct MisAdapter {
    db: Db,
    channel: Channel,
    registers: RegistersServiceClient<Channel>,
    deliveries: Deliveries,
    connectors: Option<Connectors>,
}

impl MisAdapter {
    /// Creates the service over its storage, a channel to the registers, and a channel to the
    /// MIS sync service that connectors apply what they read through, with no delivery
    /// destination and no connector.
    pub fn new(db: Db, registers: Channel, sync: Channel) -> Self {
        Self {
            deliveries: Deliveries {
                db: db.clone(),
                destinations: Default::default(),
                config: DeliveryConfig::default(),
                wake: Default::default(),
            },
            db,
            registers: RegistersServiceClient::new(registers.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            channel: sync,
            connectors: None,
        }
    }

    /// Sets the destinations that referral packs are delivered to, reading their HMAC keys and
    /// CA certificates. Fails, naming the destination and file, when one cannot be read.
    pub fn with_delivery(mut self, config: DeliveryConfig) -> anyhow::Result<Self> {
        self.deliveries = Deliveries::new(self.db.clone(), config)?;
        Ok(self)
    }

    /// Starts the follower of the registers' UPN changes, which moves MIS pupil ids and
    /// write-back items to the new UPN.
    pub fn start_upn_follower(&self) -> tokio::task::JoinHandle<()> {
        crate::upn_changes::spawn(self.db.clone(), self.registers.clone())
    }

    /// Starts the worker that delivers queued referral packs.
    pub fn start_delivery(&self) -> tokio::task::JoinHandle<()> {
        self.deliveries.spawn_worker()
    }

    /// Sets the schools whose MIS data brokers are pulled, reading each broker token and CA
    /// file. Fails, naming the school and the file or variable, when one cannot be read.
    /// Settings without a school leave the connectors off.
    pub fn with_connectors(mut self, config: ConnectorsConfig) -> anyhow::Result<Self> {
        if config.schools.is_empty() {
            return Ok(self);
        }
        let sync = std::sync::Arc::new(sync_client(self.channel.clone()));
        self.connectors = Some(Connectors::new(self.db.clone(), config, sync)?);
        Ok(self)
    }

    /// Records the connectors' schools in storage, then starts a scheduler for each school
    /// with a poll interval, and the write-back follower and worker when any school has
    /// write-back on. Returns the tasks started.
    pub async fn start_connectors(&self) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let Some(connectors) = &self.connectors else {
            return Ok(Vec::new());
        };
        let mut tasks = connectors.start().await?;
        tasks.extend(crate::writeback::start(connectors, self.registers.clone()).await?);
        Ok(tasks)
    }

    fn connectors(&self, laestab: &str) -> Result<&Connectors, Status> {
        self.connectors.as_ref().ok_or_else(|| {
            Status::not_found(format!(
                "school {laestab} has no connector: no connector settings are loaded; start \
                 rollcall serve with --connectors FILE (or ROLLCALL_CONNECTORS), where FILE \
                 has a [[school]] table for the school; see docs/connectors.md"
            ))
        })
    }

    /// Records a file as imported, with what the import did.
    async fn record_file_import(
        &self,
        sha256: &str,
        file_name: &str,
        laestab: &str,
        pupils: i32,
        outcome: &ImportRegisterResponse,
        imported_by: &str,
    ) -> Result<(), Status> {
        with_db!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO file_imports (sha256, file_name, laestab, pupils, marks_recorded, imported_by, imported_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(sha256)
            .bind(file_name)
            .bind(laestab)
            .bind(pupils)
            .bind(outcome.marks_recorded)
            .bind(imported_by)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(|error| storage_error("recording a file import", error))
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> MisAdapterServiceServer<Self> {
        MisAdapterServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

impl MisAdapter {
    /// Allows the caller when they may see the school of the record `id` in `table`
    /// (`deliveries`, `referral deliveries` for a referral's, or `writeback_jobs`). An unknown id is allowed here, so the call fails
    /// with NOT_FOUND.
    async fn check_owner(&self, caller: &Caller, table: &str, id: &str) -> Result<(), Status> {
        let sql = match table {
            "deliveries" => "SELECT laestab FROM deliveries WHERE id = $1",
            "referral deliveries" => {
                "SELECT laestab FROM deliveries WHERE referral_id = $1 LIMIT 1"
            }
            _ => "SELECT laestab FROM writeback_jobs WHERE id = $1",
        };
        let school: Option<String> = with_db!(&self.db, |pool| {
            sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await
        })
        .map_err(|e| storage_error("reading whose record this is", e))?;
        match school {
            Some(school) => caller.school(&school),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl MisAdapterService for MisAdapter {
    async fn import_ctf(
        &self,
        request: Request<ImportCtfRequest>,
    ) -> Result<Response<ImportCtfResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let file_name = if request.file_name.trim().is_empty() {
            "unnamed file".to_owned()
        } else {
            request.file_name.clone()
        };
        let sha256 = hex::encode(Sha256::digest(&request.content));
        tracing::info!(%sha256, bytes = request.content.len(), "CTF import started");

        let prepared = prepare_ctf(&file_name, &request.content).map_err(|error| {
            tracing::warn!(%sha256, %error, "CTF file rejected; nothing stored");
            invalid_argument("content", &file_name, error.message)
        })?;
        let laestab = prepared.school.laestab.clone();
        caller.school(&laestab)?;
        let pupil_count = i32::try_from(prepared.pupils.len()).unwrap_or(i32::MAX);
        let imported_by = if request.imported_by.trim().is_empty() {
            "mis-adapter".to_owned()
        } else {
            request.imported_by.trim().to_owned()
        };

        let mut messages = Vec::with_capacity(
            1 + prepared.pupils.len() + prepared.marks.len() / MARKS_PER_MESSAGE + 1,
        );
        messages.push(ImportRegisterRequest {
            item: Some(Item::Header(ImportHeader {
                request_id: format!("ctf:{sha256}"),
                school: Some(prepared.school.clone()),
                source: MarkSource::Import as i32,
                source_name: file_name.clone(),
                recorded_by: imported_by.clone(),
                partial: false,
                dry_run: request.dry_run,
            })),
        });
        messages.extend(
            prepared
                .pupils
                .into_iter()
                .map(|pupil| ImportRegisterRequest {
                    item: Some(Item::Pupil(pupil)),
                }),
        );
        let mut marks = prepared.marks;
        while !marks.is_empty() {
            let rest = marks.split_off(marks.len().min(MARKS_PER_MESSAGE));
            messages.push(ImportRegisterRequest {
                item: Some(Item::Marks(ImportMarks { marks })),
            });
            marks = rest;
        }

        let outcome = self
            .registers
            .clone()
            .import_register(tokio_stream::iter(messages))
            .await
            .map_err(|status| {
                tracing::warn!(%sha256, code = ?status.code(), message = status.message(), "Registers rejected the import");
                match status.code() {
                    tonic::Code::InvalidArgument => Status::invalid_argument(format!(
                        "{file_name}: {}",
                        status.message()
                    )),
                    _ => upstream_error("registers", status),
                }
            })?
            .into_inner();

        if !request.dry_run {
            self.record_file_import(
                &sha256,
                &file_name,
                &laestab,
                pupil_count,
                &outcome,
                &imported_by,
            )
            .await?;
        }

        tracing::info!(
            %sha256,
            %laestab,
            pupils = pupil_count,
            marks_recorded = outcome.marks_recorded,
            already_imported = outcome.already_applied,
            warnings = prepared.warnings.len(),
            "CTF import finished"
        );
        Ok(Response::new(ImportCtfResponse {
            laestab,
            pupils: pupil_count,
            pupils_added: outcome.pupils_added,
            marks_recorded: outcome.marks_recorded,
            marks_unchanged: outcome.marks_unchanged,
            already_imported: outcome.already_applied,
            dry_run: request.dry_run,
            pupils_updated: outcome.pupils_updated,
            feed_cursor: outcome.feed_cursor,
            warnings: prepared
                .warnings
                .into_iter()
                .map(|warning| ImportWarning {
                    upn: warning.upn,
                    element: warning.element,
                    message: warning.message,
                })
                .collect(),
            sha256,
        }))
    }

    async fn deliver_referral_pack(
        &self,
        request: Request<DeliverReferralPackRequest>,
    ) -> Result<Response<DeliverReferralPackResponse>, Status> {
        let caller = caller(&request)?;
        if request.get_ref().laestab.trim().is_empty() {
            caller.trust("Delivering a pack without naming the school")?;
        } else {
            caller.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        }
        self.deliveries
            .deliver_referral_pack(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let caller = caller(&request)?;
        let referral = request.get_ref().referral_id.trim().to_owned();
        if !referral.is_empty() {
            self.check_owner(&caller, "referral deliveries", &referral)
                .await?;
        }
        let mut response = self
            .deliveries
            .list_deliveries(request.into_inner())
            .await?;
        if let Some(visible) = caller.visible_schools() {
            response
                .deliveries
                .retain(|delivery| visible.contains(&delivery.laestab));
        }
        Ok(Response::new(response))
    }

    async fn retry_delivery(
        &self,
        request: Request<RetryDeliveryRequest>,
    ) -> Result<Response<RetryDeliveryResponse>, Status> {
        let id = request.get_ref().delivery_id.trim().to_owned();
        self.check_owner(&caller(&request)?, "deliveries", &id)
            .await?;
        self.deliveries
            .retry_delivery(request.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_connectors(
        &self,
        request: Request<ListConnectorsRequest>,
    ) -> Result<Response<ListConnectorsResponse>, Status> {
        let caller = caller(&request)?;
        let mut response = match &self.connectors {
            Some(connectors) => connectors.list_connectors().await?,
            None => ListConnectorsResponse::default(),
        };
        if let Some(visible) = caller.visible_schools() {
            response
                .connectors
                .retain(|connector| visible.contains(&connector.laestab));
        }
        Ok(Response::new(response))
    }

    async fn run_connector(
        &self,
        request: Request<RunConnectorRequest>,
    ) -> Result<Response<RunConnectorResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        let request = request.into_inner();
        self.connectors(&request.laestab)?
            .run_connector(request)
            .await
            .map(Response::new)
    }

    async fn list_connector_runs(
        &self,
        request: Request<ListConnectorRunsRequest>,
    ) -> Result<Response<ListConnectorRunsResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        let request = request.into_inner();
        self.connectors(&request.laestab)?
            .list_connector_runs(request)
            .await
            .map(Response::new)
    }

    async fn list_connector_deletions(
        &self,
        request: Request<ListConnectorDeletionsRequest>,
    ) -> Result<Response<ListConnectorDeletionsResponse>, Status> {
        caller(&request)?.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        let request = request.into_inner();
        self.connectors(&request.laestab)?
            .list_connector_deletions(request)
            .await
            .map(Response::new)
    }

    async fn list_writeback_jobs(
        &self,
        request: Request<ListWritebackJobsRequest>,
    ) -> Result<Response<ListWritebackJobsResponse>, Status> {
        let caller = caller(&request)?;
        if request.get_ref().laestab.trim().is_empty() {
            caller.trust("Listing write-back jobs")?;
        } else {
            caller.school(&laestab("laestab", &request.get_ref().laestab)?)?;
        }
        crate::writeback::rpc::list_jobs(&self.db, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_writeback_job(
        &self,
        request: Request<GetWritebackJobRequest>,
    ) -> Result<Response<GetWritebackJobResponse>, Status> {
        let id = request.get_ref().job_id.trim().to_owned();
        self.check_owner(&caller(&request)?, "writeback_jobs", &id)
            .await?;
        crate::writeback::rpc::get_job(&self.db, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn retry_writeback_job(
        &self,
        request: Request<RetryWritebackJobRequest>,
    ) -> Result<Response<RetryWritebackJobResponse>, Status> {
        let id = request.get_ref().job_id.trim().to_owned();
        self.check_owner(&caller(&request)?, "writeback_jobs", &id)
            .await?;
        let response = crate::writeback::rpc::retry_job(&self.db, request.into_inner()).await?;
        if let Some(connectors) = &self.connectors {
            connectors.wake_writeback();
        }
        Ok(Response::new(response))
    }
}
