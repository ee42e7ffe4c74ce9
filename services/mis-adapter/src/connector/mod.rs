//! Scheduled pull connectors: each school's pupils, session marks and deletions read from its
//! MIS data broker and applied through the MIS sync service.
//!
//! The settings (`rollcall serve --connectors FILE`) name a broker and a school id per school.
//! A task per school runs the connector every poll interval, and RunConnector runs it on
//! demand. A run reads each list from its stored watermark, applies each page, and only then
//! moves the watermark, so a restarted server resumes where the last page ended (see
//! [`run`]). docs/connectors.md describes the settings and runs for trust IT staff.

pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod mapping;
pub(crate) mod rpc;
pub(crate) mod run;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rollcall_api::client::Channel;
use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::mis_adapter::v1::{
    SyncMarksRequest, SyncMarksResponse, SyncPupilsRequest, SyncPupilsResponse,
};
use rollcall_runtime::Db;
use rollcall_runtime::grpc::MAX_MESSAGE_BYTES;
use tokio::task::JoinHandle;
use tonic::Status;
use tracing::Instrument as _;

pub use config::{BrokerRetryConfig, ConnectorsConfig, SchoolConnectorConfig, WritebackConfig};

use crate::connector::client::BrokerClient;
use crate::connector::store::{RunRow, SCHEDULED};

/// The destination of what a connector reads: the MIS sync service.
#[tonic::async_trait]
pub(crate) trait SyncTarget: Send + Sync + std::fmt::Debug {
    /// Applies a batch of pupils.
    async fn sync_pupils(&self, request: SyncPupilsRequest) -> Result<SyncPupilsResponse, Status>;
    /// Applies a batch of session marks.
    async fn sync_marks(&self, request: SyncMarksRequest) -> Result<SyncMarksResponse, Status>;
}

#[tonic::async_trait]
impl SyncTarget for MisSyncServiceClient<Channel> {
    async fn sync_pupils(&self, request: SyncPupilsRequest) -> Result<SyncPupilsResponse, Status> {
        let mut client = self.clone();
        MisSyncServiceClient::sync_pupils(&mut client, request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn sync_marks(&self, request: SyncMarksRequest) -> Result<SyncMarksResponse, Status> {
        let mut client = self.clone();
        MisSyncServiceClient::sync_marks(&mut client, request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Returns a client of the MIS sync service on `channel`.
pub(crate) fn sync_client(channel: Channel) -> MisSyncServiceClient<Channel> {
    MisSyncServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// One school's connector: its settings, its broker client, and the lock that lets one run
/// at a time start on this server.
#[derive(Debug)]
pub(crate) struct SchoolConnector {
    pub(crate) config: SchoolConnectorConfig,
    pub(crate) client: BrokerClient,
    pub(crate) running: tokio::sync::Mutex<()>,
}

/// The connectors of every school in the settings.
#[derive(Debug, Clone)]
pub(crate) struct Connectors {
    pub(crate) db: Db,
    pub(crate) config: ConnectorsConfig,
    pub(crate) schools: Arc<Vec<Arc<SchoolConnector>>>,
    pub(crate) sync: Arc<dyn SyncTarget>,
    /// Wakes the write-back worker.
    pub(crate) writeback_wake: Arc<tokio::sync::Notify>,
}

impl Connectors {
    /// Sets up a connector per school, reading each token and CA file. Fails, naming the
    /// school and the file or variable, when one cannot be read.
    pub(crate) fn new(
        db: Db,
        config: ConnectorsConfig,
        sync: Arc<dyn SyncTarget>,
    ) -> anyhow::Result<Self> {
        let mut schools = Vec::with_capacity(config.schools.len());
        for school in &config.schools {
            let client = BrokerClient::new(school, &config.retries).map_err(|error| {
                anyhow::anyhow!("connector of school {}: {error:#}", school.laestab)
            })?;
            schools.push(Arc::new(SchoolConnector {
                config: school.clone(),
                client,
                running: tokio::sync::Mutex::new(()),
            }));
        }
        Ok(Self {
            db,
            config,
            schools: Arc::new(schools),
            sync,
            writeback_wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Wakes the write-back worker, as after a job is queued again.
    pub(crate) fn wake_writeback(&self) {
        self.writeback_wake.notify_one();
    }

    /// Returns a school's connector.
    pub(crate) fn school(&self, laestab: &str) -> Option<&Arc<SchoolConnector>> {
        self.schools
            .iter()
            .find(|school| school.config.laestab == laestab)
    }

    /// Records each school in storage and starts a scheduler for each school with a poll
    /// interval.
    pub(crate) async fn start(&self) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let schools: Vec<(String, bool)> = self
            .schools
            .iter()
            .map(|school| (school.config.laestab.clone(), school.config.write_back))
            .collect();
        store::prepare_schools(&self.db, &schools, Utc::now())
            .await
            .map_err(|error| anyhow::anyhow!("cannot record the connectors' schools: {error}"))?;
        let mut tasks = Vec::new();
        for school in self.schools.iter() {
            tracing::info!(
                laestab = %school.config.laestab,
                school_id = %school.config.school_id,
                base_url = %school.config.base_url,
                poll_interval_seconds = school.config.poll_interval_seconds,
                write_back = school.config.write_back,
                "Connector ready"
            );
            if let Some(interval) = school.config.poll_interval() {
                tasks.push(self.spawn_scheduler(school.clone(), interval));
            }
        }
        Ok(tasks)
    }

    /// Runs a school's connector every `interval`, counted from the start of its last run,
    /// and no sooner than a broker asked.
    fn spawn_scheduler(&self, school: Arc<SchoolConnector>, interval: Duration) -> JoinHandle<()> {
        let connectors = self.clone();
        tokio::spawn(async move {
            let laestab = school.config.laestab.clone();
            loop {
                let wait = match connectors.next_run_in(&laestab, interval).await {
                    Ok(wait) => wait,
                    Err(error) => {
                        tracing::warn!(%laestab, %error, "Connector scheduler cannot read the last run; trying again after the interval");
                        interval
                    }
                };
                tokio::time::sleep(wait).await;
                let _running = school.running.lock().await;
                // A scheduled run is a trace of its own, which the sync calls it makes join.
                let span =
                    rollcall_runtime::telemetry::background_span("mis_adapter.connector_run", None);
                rollcall_runtime::telemetry::set_attribute(
                    &span,
                    rollcall_runtime::telemetry::metrics::SCHOOL_ATTRIBUTE,
                    &laestab,
                );
                match run::run_school(
                    &connectors.db,
                    &school,
                    connectors.sync.as_ref(),
                    SCHEDULED,
                    false,
                )
                .instrument(span)
                .await
                {
                    Ok(_) => {}
                    Err(run::StartError::Busy(state)) => tracing::info!(
                        %laestab,
                        run = state.running_run_id.as_deref().unwrap_or_default(),
                        "Scheduled connector run skipped: another server is running this school"
                    ),
                    Err(run::StartError::Storage(error)) => {
                        tracing::warn!(%laestab, %error, "Scheduled connector run failed to start");
                        tokio::time::sleep(interval).await;
                    }
                }
            }
        })
    }

    /// Returns how long until a school's next scheduled run is due.
    async fn next_run_in(
        &self,
        laestab: &str,
        interval: Duration,
    ) -> Result<Duration, sqlx::Error> {
        let now = Utc::now();
        let due = self.next_run_at(laestab, interval).await?.unwrap_or(now);
        Ok((due - now).to_std().unwrap_or_default())
    }

    /// Returns when a school's next scheduled run is due: an interval after its last run
    /// started, and no sooner than `not_before`. `None` means at once.
    pub(crate) async fn next_run_at(
        &self,
        laestab: &str,
        interval: Duration,
    ) -> Result<Option<chrono::DateTime<Utc>>, sqlx::Error> {
        let last = store::runs(&self.db, laestab, "", 1).await?;
        let state = store::state(&self.db, laestab).await?;
        let after_last = last
            .first()
            .map(|run| run.started_at + chrono::Duration::from_std(interval).unwrap_or_default());
        let not_before = state.and_then(|state| state.not_before);
        Ok(match (after_last, not_before) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        })
    }

    /// Runs a school's connector now, after any run in progress on this server.
    pub(crate) async fn run_now(
        &self,
        school: &SchoolConnector,
        full: bool,
    ) -> Result<RunRow, run::StartError> {
        let _running = school.running.lock().await;
        run::run_school(&self.db, school, self.sync.as_ref(), store::ON_DEMAND, full).await
    }
}

#[cfg(test)]
mod tests;
