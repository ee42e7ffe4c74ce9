//! The embedded server: the five services and the audit log in one process on one port, with
//! gRPC health and reflection. The services reach each other through their gRPC clients on
//! that same port, never through each other's tables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, bail};
use rollcall_api::audit::v1::audit_service_server::AuditServiceServer;
use rollcall_api::cases::v1::cases_service_server::CasesServiceServer;
use rollcall_api::client::Credentials;
use rollcall_api::mis_adapter::v1::mis_adapter_service_server::MisAdapterServiceServer;
use rollcall_api::mis_adapter::v1::mis_sync_service_server::MisSyncServiceServer;
use rollcall_api::policy::v1::policy_service_server::PolicyServiceServer;
use rollcall_api::referrals::v1::referrals_service_server::ReferralsServiceServer;
use rollcall_api::registers::v1::registers_service_server::RegistersServiceServer;
use rollcall_audit::{Audit, AuditStore};
use rollcall_auth::{AuthLayer, Authenticator, InternalKey, Mode, TokenSettings, TokenVerifier};
use rollcall_cases::{Cases, MessagingConfig};
use rollcall_mis_adapter::{ConnectorsConfig, DeliveryConfig, MisAdapter, MisSync};
use rollcall_policy::Policy;
use rollcall_referrals::{
    Referrals, ReferralsConfig, load_or_create_signing_key, read_signing_key,
};
use rollcall_registers::Registers;
use rollcall_runtime::StorageConfig;
use rollcall_runtime::shutdown::StopSignal;
use rollcall_runtime::storage::connect;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// How long [`RunningServer::stop`] waits for open connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings `rollcall serve` starts with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// SQLite under a data directory, or PostgreSQL.
    pub storage: StorageConfig,
    /// Email, SMS and letter channels, retries and first-day contact.
    pub messaging: MessagingConfig,
    /// The folder letters are written to for printing when the messaging settings name none.
    pub print_dir: PathBuf,
    /// Warning-letter notice, independent schools and the pack signing key.
    pub referrals: ReferralsConfig,
    /// The pack signing key used when the referral settings name none.
    pub default_signing_key: PathBuf,
    /// The destinations referral packs are delivered to, and the retries.
    pub delivery: DeliveryConfig,
    /// The schools whose MIS data brokers are pulled, and the write-back of decisions.
    pub connectors: ConnectorsConfig,
    /// How callers are authenticated.
    pub authentication: Authentication,
    /// Years a closed case is kept after its last event.
    pub case_retention_years: u32,
}

/// How `rollcall serve` authenticates callers.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No caller is checked, so every caller may do everything. Loopback addresses only.
    Development,
    /// Bearer tokens from the trust's identity provider.
    Tokens(TokenSettings),
}

impl ServerConfig {
    /// Builds the configuration from the command-line options.
    pub fn new(
        listen: SocketAddr,
        data_dir: PathBuf,
        database_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            listen,
            print_dir: data_dir.join("letters"),
            default_signing_key: data_dir.join("keys").join("pack-signing.pem"),
            referrals: ReferralsConfig::default(),
            storage: StorageConfig::from_options(database_url, data_dir)?,
            messaging: MessagingConfig::default(),
            delivery: DeliveryConfig::default(),
            connectors: ConnectorsConfig::default(),
            authentication: Authentication::Development,
            case_retention_years: rollcall_cases::DEFAULT_CASE_RETENTION_YEARS,
        })
    }
}

/// A server running in this process.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    stop_signal: StopSignal,
    task: JoinHandle<anyhow::Result<()>>,
    followers: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Returns the URL a client uses to reach the server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to finish.
    ///
    /// Change-feed streams end first, so their clients can resume from their last cursor. Other
    /// requests in flight then have [`DRAIN_TIMEOUT`] to finish, after which the server stops
    /// anyway.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for follower in &self.followers {
            follower.abort();
        }
        self.stop_signal.stop();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let stopped = match tokio::time::timeout(DRAIN_TIMEOUT, &mut self.task).await {
            Ok(result) => result
                .context("the server task failed")
                .and_then(|served| served),
            Err(_) => {
                tracing::warn!(
                    timeout_secs = DRAIN_TIMEOUT.as_secs(),
                    "Connections still open after the drain timeout; closing them"
                );
                self.task.abort();
                Ok(())
            }
        };
        rollcall_runtime::telemetry::flush().await;
        stopped
    }

    /// Waits until the server stops by itself, which happens only on an error.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await.context("the server task failed")?
    }
}

/// Binds the address, connects and migrates storage for every service, and starts serving.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    if matches!(config.authentication, Authentication::Development)
        && !config.listen.ip().is_loopback()
    {
        bail!(
            "--dev serves without authentication, so it listens only on a loopback address such \
             as 127.0.0.1, not {}: give token settings with --auth to serve other machines",
            config.listen
        );
    }
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another server using it? Choose another with --listen",
            config.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let self_url = if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    };
    tracing::info!(%addr, storage = %config.storage.describe(), "Starting rollcall");

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    let registers_db = connect(&config.storage, rollcall_registers::MIGRATIONS).await?;
    let policy_db = connect(&config.storage, rollcall_policy::MIGRATIONS).await?;
    let cases_db = connect(&config.storage, rollcall_cases::MIGRATIONS).await?;
    let referrals_db = connect(&config.storage, rollcall_referrals::MIGRATIONS).await?;
    let adapter_db = connect(&config.storage, rollcall_mis_adapter::MIGRATIONS).await?;
    let audit_db = connect(&config.storage, rollcall_audit::MIGRATIONS).await?;
    tracing::info!("Storage ready and migrated");

    // The services call each other with a key made for this process, whatever the mode.
    let internal = InternalKey::generate()?;
    let channel =
        rollcall_runtime::grpc::channel(&self_url, Credentials::header(&internal.header_value())?)?;
    let mut followers = Vec::new();
    let mode = match &config.authentication {
        Authentication::Development => {
            tracing::warn!(
                %addr,
                "Serving WITHOUT AUTHENTICATION (--dev): every caller may read and change \
                 everything. Use this only to try rollcall, never with real pupils' records"
            );
            Mode::Development
        }
        Authentication::Tokens(settings) => {
            let verifier = TokenVerifier::new(settings.clone()).await?;
            followers.push(verifier.spawn_refresh());
            Mode::Tokens(verifier)
        }
    };
    let authenticator = Arc::new(Authenticator::new(mode, internal));
    // Every mode records audit events; with --dev their subject is "dev".
    let audit_store = AuditStore::new(audit_db);
    let audit = Audit::new(audit_store.clone());
    let (stop_signal, stopping) = rollcall_runtime::shutdown::stop_signal();
    let registers = Registers::new(registers_db, stopping.clone()).await?;
    let policy = Policy::new(policy_db, channel.clone(), channel.clone(), stopping).await?;
    let cases = Cases::new(
        cases_db,
        channel.clone(),
        channel.clone(),
        config.messaging.clone(),
        config.print_dir.clone(),
    )
    .await?
    .with_retention_years(config.case_retention_years)?;
    // Only the default key is created on first start: a configured key that is missing is a
    // mistake, and a new key would sign packs the local authority cannot confirm.
    let signing_key = match &config.referrals.signing_key_file {
        Some(path) => read_signing_key(path)?,
        None => load_or_create_signing_key(&config.default_signing_key)?,
    };
    let referrals = Referrals::new(
        referrals_db,
        channel.clone(),
        config.referrals.clone(),
        signing_key,
    );
    let sync = MisSync::new(adapter_db.clone(), channel.clone());
    let adapter = MisAdapter::new(adapter_db, channel.clone())
        .with_delivery(config.delivery.clone())?
        .with_connectors(config.connectors.clone())?;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rollcall_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions of the reflection protocol, because older grpcurl releases ask for
    // v1alpha only.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("cannot build the reflection service")?;
    let reflection = reflection()
        .build_v1()
        .context("cannot build the reflection service")?;

    followers.extend([
        policy.start_follower(),
        cases.start_follower(),
        policy.start_upn_follower(),
        cases.start_upn_follower(),
        referrals.start_upn_follower(),
        adapter.start_upn_follower(),
    ]);
    followers.extend(cases.start_messaging());
    followers.push(adapter.start_delivery());
    // The listener is bound already, so a connector run that starts now reaches the sync
    // service once the server below starts accepting.
    followers.extend(adapter.start_connectors().await?);
    let router = Server::builder()
        .layer(rollcall_runtime::telemetry::GrpcTelemetryLayer::new())
        .layer(AuthLayer::new(authenticator).with_audit(Arc::new(audit_store)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(registers.into_server())
        .add_service(policy.into_server())
        .add_service(cases.into_server())
        .add_service(referrals.into_server())
        .add_service(adapter.into_server())
        .add_service(sync.into_server())
        .add_service(audit.into_server());

    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_signal.await;
            })
            .await
            .context("the gRPC server failed")
    });

    for name in [
        "",
        <RegistersServiceServer<Registers> as NamedService>::NAME,
        <PolicyServiceServer<Policy> as NamedService>::NAME,
        <CasesServiceServer<Cases> as NamedService>::NAME,
        <ReferralsServiceServer<Referrals> as NamedService>::NAME,
        <MisAdapterServiceServer<MisAdapter> as NamedService>::NAME,
        <MisSyncServiceServer<MisSync> as NamedService>::NAME,
        <AuditServiceServer<Audit> as NamedService>::NAME,
    ] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    tracing::info!(%addr, "rollcall is serving");
    Ok(RunningServer {
        addr,
        shutdown: Some(shutdown),
        stop_signal,
        task,
        followers,
    })
}
