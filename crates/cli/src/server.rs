//! The server: the five services and the audit log in one process on one port (the embedded
//! mode), or the services `--only` names with the others' addresses configured (the
//! distributed mode), with gRPC health and reflection. The services reach each other through
//! their gRPC clients, never through each other's tables.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
use rollcall_runtime::limits::{LimitsLayer, ServerLimits};
use rollcall_runtime::shutdown::StopSignal;
use rollcall_runtime::storage::connect;
use rollcall_runtime::tls::{Tls, TlsFiles};
use rollcall_runtime::{Peers, ServiceName, StorageConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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
    /// The services this process hosts; empty for all of them (the embedded mode).
    pub only: BTreeSet<ServiceName>,
    /// The addresses of the services other processes host.
    pub peer_urls: BTreeMap<ServiceName, String>,
    /// The certificate, key and CAs for TLS; none for plain HTTP/2.
    pub tls: TlsFiles,
    /// A second, plain-text address that serves only gRPC health checks, for probes that
    /// cannot speak TLS (such as Kubernetes' own).
    pub health_listen: Option<SocketAddr>,
    /// Message size, batch size, request timeout and requests in flight; see docs/limits.md.
    pub limits: ServerLimits,
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
            only: BTreeSet::new(),
            peer_urls: BTreeMap::new(),
            tls: TlsFiles::default(),
            health_listen: None,
            limits: ServerLimits::default(),
        })
    }

    /// Returns the services this process hosts.
    pub fn hosted(&self) -> BTreeSet<ServiceName> {
        if self.only.is_empty() {
            ServiceName::ALL.into_iter().collect()
        } else {
            self.only.clone()
        }
    }
}

/// A server running in this process.
#[derive(Debug)]
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The plain-text health address, when one was asked for.
    pub health_addr: Option<SocketAddr>,
    tls: bool,
    health: HealthReporter,
    health_names: Vec<&'static str>,
    close: watch::Sender<bool>,
    health_close: watch::Sender<bool>,
    health_task: Option<JoinHandle<anyhow::Result<()>>>,
    stop_signal: StopSignal,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    followers: Vec<JoinHandle<()>>,
    limits: LimitsLayer,
}

impl RunningServer {
    /// Returns the URL a client uses to reach the server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Returns the number of requests in flight that count against
    /// `--max-concurrent-requests`.
    pub fn requests_in_flight(&self) -> usize {
        self.limits.in_flight()
    }

    /// Stops the server and waits for it to finish.
    ///
    /// Health turns NOT_SERVING first, so load balancers and probes stop sending new calls.
    /// Change-feed streams then end, so their clients can resume from their last cursor. Other
    /// requests in flight have [`DRAIN_TIMEOUT`] to finish, after which the server stops
    /// anyway.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for name in &self.health_names {
            self.health
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        tracing::info!(
            drain_timeout_secs = DRAIN_TIMEOUT.as_secs(),
            "Health is NOT_SERVING; ending streams and draining requests in flight"
        );
        for follower in &self.followers {
            follower.abort();
        }
        self.stop_signal.stop();
        self.close.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let stopped = match tokio::time::timeout(DRAIN_TIMEOUT, join_all(tasks)).await {
            Ok(results) => results.into_iter().try_for_each(|result| {
                result
                    .context("the server task failed")
                    .and_then(|served| served)
            }),
            Err(_) => {
                tracing::warn!(
                    timeout_secs = DRAIN_TIMEOUT.as_secs(),
                    "Connections still open after the drain timeout; closing them"
                );
                for abort in aborts {
                    abort.abort();
                }
                Ok(())
            }
        };
        // The probes' port closes last. A probe watching health keeps its stream open, so
        // the port gets a moment to close before it is closed anyway.
        self.health_close.send_replace(true);
        if let Some(mut task) = self.health_task.take()
            && tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
        rollcall_runtime::telemetry::flush().await;
        stopped
    }

    /// Waits until the server stops by itself, which happens only on an error.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let (result, index) = first_finished(&mut self.tasks).await;
        self.tasks.remove(index);
        result.context("the server task failed")?
    }
}

/// Waits for every task, in order.
async fn join_all(
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
) -> Vec<Result<anyhow::Result<()>, tokio::task::JoinError>> {
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await);
    }
    results
}

/// Waits for the first of `tasks` to finish, returning its result and position.
async fn first_finished(
    tasks: &mut [JoinHandle<anyhow::Result<()>>],
) -> (Result<anyhow::Result<()>, tokio::task::JoinError>, usize) {
    std::future::poll_fn(|cx| {
        for (index, task) in tasks.iter_mut().enumerate() {
            if let std::task::Poll::Ready(result) = std::pin::Pin::new(task).poll(cx) {
                return std::task::Poll::Ready((result, index));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Checks the settings that depend on each other before anything is bound or connected.
fn check(config: &ServerConfig, hosted: &BTreeSet<ServiceName>, tls: &Tls) -> anyhow::Result<()> {
    config.limits.check()?;
    let development = matches!(config.authentication, Authentication::Development);
    if development && !config.listen.ip().is_loopback() {
        bail!(
            "--dev serves without authentication, so it listens only on a loopback address such \
             as 127.0.0.1, not {}: give token settings with --auth to serve other machines",
            config.listen
        );
    }
    if let Some(health) = config.health_listen
        && health.ip() != config.listen.ip()
        && development
        && !health.ip().is_loopback()
    {
        bail!(
            "--dev listens only on loopback addresses, not --health-listen {health}: use \
             127.0.0.1"
        );
    }
    for service in hosted {
        for peer in service.calls() {
            if hosted.contains(peer) {
                continue;
            }
            let Some(url) = config.peer_urls.get(peer) else {
                bail!(
                    "the {service} service calls the {peer} service, which this process does not \
                     host: give its address with {} (or {}), or add {peer} to --only",
                    peer.url_option(),
                    peer_env(*peer)
                );
            };
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!(
                    "invalid {} {url:?}: give an address such as https://{peer}:50051",
                    peer.url_option()
                );
            }
            if !development && !url.starts_with("https://") {
                bail!(
                    "invalid {} {url:?}: with --auth, services in other processes are called \
                     over TLS, so the address must start with https://",
                    peer.url_option()
                );
            }
        }
    }
    let distributed = hosted.len() < ServiceName::ALL.len();
    if distributed && !development && !tls.accepts_service_certificates() {
        bail!(
            "--only runs some services in this process and the others elsewhere; with --auth \
             they prove to each other who they are with client certificates, so give \
             --tls-cert, --tls-key and --tls-client-ca (see docs/security.md)"
        );
    }
    Ok(())
}

/// Returns the environment variable that gives `peer`'s address.
fn peer_env(peer: ServiceName) -> String {
    format!(
        "ROLLCALL_{}_URL",
        peer.as_str().to_uppercase().replace('-', "_")
    )
}

async fn bind(addr: SocketAddr, option: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: is another server using it? Choose another with {option}")
    })
}

/// Binds the addresses, connects and migrates storage for the services this process hosts,
/// and starts serving.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let hosted = config.hosted();
    let tls = config.tls.load()?;
    check(&config, &hosted, &tls)?;
    let hosts = |name: ServiceName| hosted.contains(&name);

    let listener = bind(config.listen, "--listen").await?;
    let addr = listener.local_addr()?;
    let health_listener = match config.health_listen {
        Some(health) => Some(bind(health, "--health-listen").await?),
        None => None,
    };
    let health_addr = match &health_listener {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    // The services hosted here call each other over plain HTTP/2 on loopback when the main
    // listener serves TLS, whose certificate names the host other machines know, not
    // 127.0.0.1. That listener checks callers exactly as the main one does.
    let internal_listener = if tls.serves_tls() {
        Some(bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "--listen").await?)
    } else {
        None
    };
    let self_url = match &internal_listener {
        Some(listener) => format!("http://{}", listener.local_addr()?),
        None if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    // The certificate and key are checked against each other here, before storage is
    // touched, so a mismatch stops the start at once.
    let main_server = Server::builder();
    let acceptor = tls.acceptor().with_context(|| {
        format!(
            "cannot set up TLS with --tls-cert {} and --tls-key {}: check that the key \
             belongs to the certificate",
            display_path(config.tls.cert.as_deref()),
            display_path(config.tls.key.as_deref())
        )
    })?;
    let names: Vec<&str> = hosted.iter().map(|name| name.as_str()).collect();
    tracing::info!(
        %addr,
        services = %names.join(","),
        tls = tls.serves_tls(),
        mutual_tls = tls.accepts_service_certificates(),
        storage = %config.storage.describe(),
        "Starting rollcall"
    );
    config.limits.log();
    let max_message_bytes = config.limits.max_message_bytes;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // The probes' port reports NOT_SERVING while storage is connected and migrated, and
    // stays open while the server drains, so that probes see the state rather than a
    // refused connection.
    let (health_close, health_closed) = watch::channel(false);
    let health_task = health_listener.map(|listener| {
        let mut closed = health_closed;
        let probes = Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                // An error means the sender is gone, which also means stopping.
                let _ = closed.wait_for(|close| *close).await;
            });
        tokio::spawn(async move { probes.await.context("the health listener failed") })
    });

    // Every process writes the audit events of the calls it serves to the one audit log.
    let audit_db = connect(&config.storage, rollcall_audit::MIGRATIONS).await?;
    let registers_db = if hosts(ServiceName::Registers) {
        Some(connect(&config.storage, rollcall_registers::MIGRATIONS).await?)
    } else {
        None
    };
    let policy_db = if hosts(ServiceName::Policy) {
        Some(connect(&config.storage, rollcall_policy::MIGRATIONS).await?)
    } else {
        None
    };
    let cases_db = if hosts(ServiceName::Cases) {
        Some(connect(&config.storage, rollcall_cases::MIGRATIONS).await?)
    } else {
        None
    };
    let referrals_db = if hosts(ServiceName::Referrals) {
        Some(connect(&config.storage, rollcall_referrals::MIGRATIONS).await?)
    } else {
        None
    };
    let adapter_db = if hosts(ServiceName::MisAdapter) {
        Some(connect(&config.storage, rollcall_mis_adapter::MIGRATIONS).await?)
    } else {
        None
    };
    tracing::info!("Storage ready and migrated");

    // Services in this process call each other with a key made for this process, whatever
    // the mode. Services in other processes are called over TLS with this server's
    // certificate as the client certificate, which identifies it.
    let internal = InternalKey::generate()?;
    let local =
        rollcall_runtime::grpc::channel(&self_url, Credentials::header(&internal.header_value())?)?;
    let peer = |name: ServiceName| -> anyhow::Result<rollcall_api::client::Channel> {
        match config.peer_urls.get(&name) {
            Some(url) if !hosts(name) => {
                rollcall_runtime::grpc::channel_with_tls(url, Credentials::none(), &tls)
            }
            // A service this process neither hosts nor calls is never reached, so the local
            // channel is used in its place.
            _ => Ok(local.clone()),
        }
    };
    let peers = Peers {
        registers: peer(ServiceName::Registers)?,
        policy: peer(ServiceName::Policy)?,
        cases: peer(ServiceName::Cases)?,
        referrals: peer(ServiceName::Referrals)?,
        mis_adapter: peer(ServiceName::MisAdapter)?,
    };
    for (name, url) in &config.peer_urls {
        if hosts(*name) {
            tracing::info!(service = %name, %url, "The service runs in this process, so its address option is not used");
        }
    }
    let called: BTreeSet<ServiceName> = hosted
        .iter()
        .flat_map(|service| service.calls().iter().copied())
        .filter(|peer| !hosts(*peer))
        .collect();
    let mut followers = Vec::new();
    for name in called {
        if let Some(url) = config.peer_urls.get(&name) {
            tracing::info!(service = %name, %url, "Calling a service in another process");
            let channel = rollcall_runtime::grpc::channel_with_tls(url, Credentials::none(), &tls)?;
            followers.push(tokio::spawn(check_peer(name, url.clone(), channel)));
        }
    }

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
    let audit_store = AuditStore::new(audit_db.clone());
    let (stop_signal, stopping) = rollcall_runtime::shutdown::stop_signal();

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rollcall_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = RoutesBuilder::default();
    routes.add_service(health_service.clone());
    // Both versions of the reflection protocol, because older grpcurl releases ask for
    // v1alpha only.
    routes.add_service(
        reflection()
            .build_v1alpha()
            .context("cannot build the reflection service")?,
    );
    routes.add_service(
        reflection()
            .build_v1()
            .context("cannot build the reflection service")?,
    );
    let mut health_names = vec!["", LIVENESS];
    // Each hosted service's storage, checked while serving so that health reports it.
    let mut storage_checks = vec![StorageCheck::new("audit", &[], &audit_db)];

    if let Some(db) = registers_db {
        storage_checks.push(StorageCheck::new(
            "registers",
            &[<RegistersServiceServer<Registers> as NamedService>::NAME],
            &db,
        ));
        let registers = Registers::new(db, stopping.clone())
            .await?
            .with_max_import_items(config.limits.max_import_items);
        routes.add_service(
            registers
                .into_server()
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
        health_names.push(<RegistersServiceServer<Registers> as NamedService>::NAME);
    }
    if let Some(db) = policy_db {
        storage_checks.push(StorageCheck::new(
            "policy",
            &[<PolicyServiceServer<Policy> as NamedService>::NAME],
            &db,
        ));
        let policy = Policy::new(
            db,
            peers.registers.clone(),
            peers.cases.clone(),
            stopping.clone(),
        )
        .await?;
        followers.extend([policy.start_follower(), policy.start_upn_follower()]);
        routes.add_service(
            policy
                .into_server()
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
        health_names.push(<PolicyServiceServer<Policy> as NamedService>::NAME);
    }
    if let Some(db) = cases_db {
        storage_checks.push(StorageCheck::new(
            "cases",
            &[<CasesServiceServer<Cases> as NamedService>::NAME],
            &db,
        ));
        let cases = Cases::new(
            db,
            peers.policy.clone(),
            peers.registers.clone(),
            config.messaging.clone(),
            config.print_dir.clone(),
        )
        .await?
        .with_retention_years(config.case_retention_years)?;
        followers.extend([cases.start_follower(), cases.start_upn_follower()]);
        followers.extend(cases.start_messaging());
        routes.add_service(
            cases
                .into_server()
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
        health_names.push(<CasesServiceServer<Cases> as NamedService>::NAME);
    }
    if let Some(db) = referrals_db {
        storage_checks.push(StorageCheck::new(
            "referrals",
            &[<ReferralsServiceServer<Referrals> as NamedService>::NAME],
            &db,
        ));
        // Only the default key is created on first start: a configured key that is missing
        // is a mistake, and a new key would sign packs the local authority cannot confirm.
        let signing_key = match &config.referrals.signing_key_file {
            Some(path) => read_signing_key(path)?,
            None => load_or_create_signing_key(&config.default_signing_key)?,
        };
        let referrals = Referrals::new(db, &peers, config.referrals.clone(), signing_key);
        followers.extend([
            referrals.start_upn_follower(),
            referrals.start_evidence_follower(),
        ]);
        routes.add_service(
            referrals
                .into_server()
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
        health_names.push(<ReferralsServiceServer<Referrals> as NamedService>::NAME);
    }
    if let Some(db) = adapter_db {
        storage_checks.push(StorageCheck::new(
            "mis-adapter",
            &[
                <MisAdapterServiceServer<MisAdapter> as NamedService>::NAME,
                <MisSyncServiceServer<MisSync> as NamedService>::NAME,
            ],
            &db,
        ));
        let sync = MisSync::new(db.clone(), peers.registers.clone())
            .with_max_batch_rows(config.limits.max_batch_rows);
        // Connectors apply what they read through the MIS sync service of this process.
        let adapter = MisAdapter::new(db, peers.registers.clone(), local.clone())
            .with_delivery(config.delivery.clone())?
            .with_connectors(config.connectors.clone())?;
        followers.push(adapter.start_upn_follower());
        followers.push(adapter.start_delivery());
        // The listeners are bound already, so a connector run that starts now reaches the
        // sync service once the servers below start accepting.
        followers.extend(adapter.start_connectors().await?);
        routes.add_service(
            adapter
                .into_server()
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
        routes.add_service(
            sync.into_server()
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
        health_names.push(<MisAdapterServiceServer<MisAdapter> as NamedService>::NAME);
        health_names.push(<MisSyncServiceServer<MisSync> as NamedService>::NAME);
    }
    if hosts(ServiceName::Audit) {
        routes.add_service(
            Audit::new(audit_store.clone())
                .into_server()
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
        );
        health_names.push(<AuditServiceServer<Audit> as NamedService>::NAME);
        storage_checks[0]
            .names
            .push(<AuditServiceServer<Audit> as NamedService>::NAME);
    }
    let routes = routes.routes();
    // Calls between rollcall's own services are not counted against the limit on requests in
    // flight: each serves a request already counted where it entered.
    let limits_layer = {
        let authenticator = Arc::clone(&authenticator);
        LimitsLayer::new(&config.limits, move |request| {
            authenticator.is_service_call(request)
        })
    };
    let auth_layer = AuthLayer::new(authenticator).with_audit(Arc::new(audit_store));

    let (close, closed) = watch::channel(false);
    let wait_for_close = |mut closed: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which also means stopping.
        let _ = closed.wait_for(|close| *close).await;
    };
    let mut tasks = Vec::new();
    let main_router = main_server
        .layer(rollcall_runtime::telemetry::GrpcTelemetryLayer::new())
        .layer(limits_layer.clone())
        .layer(auth_layer.clone())
        .add_routes(routes.clone());
    let main: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match acceptor {
            Some(acceptor) => Box::pin(main_router.serve_with_incoming_shutdown(
                tls_incoming(listener, acceptor),
                wait_for_close(closed.clone()),
            )),
            None => Box::pin(main_router.serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                wait_for_close(closed.clone()),
            )),
        };
    tasks.push(tokio::spawn(async move {
        main.await.context("the gRPC server failed")
    }));
    if let Some(listener) = internal_listener {
        let internal = Server::builder()
            .layer(rollcall_runtime::telemetry::GrpcTelemetryLayer::new())
            .layer(limits_layer.clone())
            .layer(auth_layer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                wait_for_close(closed.clone()),
            );
        tasks.push(tokio::spawn(async move {
            internal.await.context("the internal gRPC listener failed")
        }));
    }

    for name in &health_names {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    followers.push(tokio::spawn(watch_storage(health.clone(), storage_checks)));
    match health_addr {
        Some(health_addr) => tracing::info!(%addr, %health_addr, "rollcall is serving"),
        None => tracing::info!(%addr, "rollcall is serving"),
    }
    Ok(RunningServer {
        addr,
        health_addr,
        tls: tls.serves_tls(),
        health,
        health_names,
        close,
        health_close,
        health_task,
        stop_signal,
        tasks,
        followers,
        limits: limits_layer,
    })
}

/// Checks that another service responds to its health check, and logs what is wrong when it
/// does not, so that a wrong address or CA shows at start rather than only as retries later. A
/// service that is still starting gets a minute.
/// The health name that reports only whether the process runs: `SERVING` from start until
/// it stops, whatever its storage does. Liveness probes check it, so that a database outage
/// takes pods out of service through the readiness probe without restarting them.
pub const LIVENESS: &str = "liveness";

/// How often each hosted service's storage is checked while serving.
const STORAGE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long a storage check may take before the storage counts as unreachable.
const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One hosted service's storage, with the health names that report it.
struct StorageCheck {
    service: &'static str,
    names: Vec<&'static str>,
    db: rollcall_runtime::Db,
    reachable: bool,
}

impl StorageCheck {
    fn new(service: &'static str, names: &[&'static str], db: &rollcall_runtime::Db) -> Self {
        Self {
            service,
            names: names.to_vec(),
            db: db.clone(),
            reachable: true,
        }
    }

    /// Checks the storage once; returns the error when it cannot be reached.
    async fn probe(&self) -> Result<(), String> {
        match tokio::time::timeout(
            STORAGE_CHECK_TIMEOUT,
            rollcall_runtime::storage::ping(&self.db),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no answer within {} s",
                STORAGE_CHECK_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Checks each hosted service's storage every [`STORAGE_CHECK_INTERVAL`] while serving. A
/// service whose storage cannot be reached reports NOT_SERVING, and so does the server as a
/// whole, until a check succeeds again. Probes and load balancers then stop sending calls that
/// would fail.
async fn watch_storage(health: HealthReporter, mut checks: Vec<StorageCheck>) {
    let mut interval = tokio::time::interval(STORAGE_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the storage has just been reached.
    interval.tick().await;
    let mut all_reachable = true;
    loop {
        interval.tick().await;
        for check in &mut checks {
            let status = match (check.reachable, check.probe().await) {
                (true, Err(error)) => {
                    tracing::warn!(
                        service = check.service,
                        %error,
                        "Storage cannot be reached; health is NOT_SERVING until it answers"
                    );
                    check.reachable = false;
                    ServingStatus::NotServing
                }
                (false, Ok(())) => {
                    tracing::info!(
                        service = check.service,
                        "Storage answers again; health is SERVING"
                    );
                    check.reachable = true;
                    ServingStatus::Serving
                }
                _ => continue,
            };
            for name in &check.names {
                health.set_service_status(*name, status).await;
            }
        }
        let reachable = checks.iter().all(|check| check.reachable);
        if reachable != all_reachable {
            all_reachable = reachable;
            let status = if reachable {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
        }
    }
}

async fn check_peer(service: ServiceName, url: String, channel: rollcall_api::client::Channel) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    const ATTEMPTS: u32 = 12;
    let mut client = HealthClient::new(channel);
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        match tokio::time::timeout(Duration::from_secs(5), client.check(request)).await {
            Ok(Ok(_)) => {
                tracing::info!(service = %service, %url, "Reached the service");
                return;
            }
            Ok(Err(status)) => {
                let mut cause: &(dyn std::error::Error + 'static) = &status;
                while let Some(source) = cause.source() {
                    cause = source;
                }
                last_error = cause.to_string();
                // A certificate the CA does not sign stays wrong, so there is no point waiting.
                if last_error.contains("certificate") || last_error.contains("UnknownIssuer") {
                    tracing::warn!(
                        service = %service,
                        %url,
                        error = %last_error,
                        "Cannot reach the service over TLS: check that --tls-ca names the CA \
                         that signed its certificate"
                    );
                    return;
                }
            }
            Err(_) => last_error = "no answer within 5 s".to_owned(),
        }
        tracing::debug!(service = %service, %url, attempt, error = %last_error, "Service not reached yet; retrying");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    tracing::warn!(
        service = %service,
        %url,
        option = %service.url_option(),
        error = %last_error,
        "Cannot reach the service after a minute: check its address and that it is running"
    );
}

fn display_path(path: Option<&std::path::Path>) -> String {
    path.map_or_else(String::new, |path| path.display().to_string())
}

/// How long a client may take over the TLS handshake before the connection is closed.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` and completes their TLS handshakes, each in its own task,
/// passing on those that succeed. Each failed handshake, such as a client certificate that
/// the services' CA did not sign, is logged with the peer's address. The loop ends, closing
/// the listener, when the server drops the stream.
fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "Accepting a connection failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %error, "Cannot turn off Nagle's algorithm");
            }
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(connection)) => {
                        // An error means the server stopped, and the connection closes.
                        let _ = sender.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%peer, %error, "TLS handshake failed; connection closed");
                    }
                    Err(_) => {
                        tracing::warn!(
                            %peer,
                            timeout_s = TLS_HANDSHAKE_TIMEOUT.as_secs(),
                            "TLS handshake timed out; connection closed"
                        );
                    }
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
