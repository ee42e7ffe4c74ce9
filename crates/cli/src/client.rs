//! Clients of a running server, and the wait for figures and cases to catch up with an import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rollcall_api::audit::v1::audit_service_client::AuditServiceClient;
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::client::{Channel, Credentials};
use rollcall_api::mis_adapter::v1::mis_adapter_service_client::MisAdapterServiceClient;
use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::referrals::v1::referrals_service_client::ReferralsServiceClient;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_runtime::ServiceName;
use rollcall_runtime::grpc::MAX_MESSAGE_BYTES;
use tonic::transport::Endpoint;

/// Clients of every service of one server.
#[derive(Debug, Clone)]
pub(crate) struct Clients {
    pub(crate) registers: RegistersServiceClient<Channel>,
    pub(crate) policy: PolicyServiceClient<Channel>,
    pub(crate) cases: CasesServiceClient<Channel>,
    pub(crate) referrals: ReferralsServiceClient<Channel>,
    pub(crate) mis_adapter: MisAdapterServiceClient<Channel>,
    pub(crate) mis_sync: MisSyncServiceClient<Channel>,
    pub(crate) audit: AuditServiceClient<Channel>,
}

/// Where the client commands find the services: one server for all of them, or, against a
/// distributed installation, an address per service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Addresses {
    /// The server that hosts every service without an address of its own.
    pub(crate) server: String,
    /// Addresses of single services, overriding `server`.
    pub(crate) services: BTreeMap<ServiceName, String>,
    /// The CA that signed the servers' certificates, for `https://` addresses.
    pub(crate) tls_ca: Option<PathBuf>,
}

impl Addresses {
    /// One server for every service, over plain HTTP/2 or with the public web authorities.
    pub(crate) fn single(server: &str) -> Self {
        Addresses {
            server: server.to_owned(),
            ..Addresses::default()
        }
    }

    fn url(&self, service: ServiceName) -> &str {
        self.services
            .get(&service)
            .map_or(self.server.as_str(), String::as_str)
    }
}

impl Clients {
    /// Connects to the servers `addresses` names, sending `credentials` with every call.
    pub(crate) async fn connect(
        addresses: &Addresses,
        credentials: Credentials,
    ) -> anyhow::Result<Self> {
        let mut channels: BTreeMap<&str, Channel> = BTreeMap::new();
        for service in ServiceName::ALL {
            let url = addresses.url(service);
            if !channels.contains_key(url) {
                let channel = connect_one(url, addresses.tls_ca.as_deref()).await?;
                channels.insert(url, credentials.clone().attach(channel));
            }
        }
        let channel = |service: ServiceName| channels[addresses.url(service)].clone();
        Ok(Self {
            registers: RegistersServiceClient::new(channel(ServiceName::Registers))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            policy: PolicyServiceClient::new(channel(ServiceName::Policy))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            cases: CasesServiceClient::new(channel(ServiceName::Cases))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            referrals: ReferralsServiceClient::new(channel(ServiceName::Referrals))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            mis_adapter: MisAdapterServiceClient::new(channel(ServiceName::MisAdapter))
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            mis_sync: MisSyncServiceClient::new(channel(ServiceName::MisAdapter))
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            audit: AuditServiceClient::new(channel(ServiceName::Audit))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// Waits until the policy service has evaluated every mark up to `feed_cursor` and the
    /// cases service has acted on every trigger that produced.
    pub(crate) async fn wait_for_sync(
        &self,
        feed_cursor: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        use rollcall_api::cases::v1::GetSyncStateRequest as CasesSync;
        use rollcall_api::policy::v1::GetSyncStateRequest as PolicySync;

        let started = Instant::now();
        let trigger_cursor = loop {
            let state = self
                .policy
                .clone()
                .get_sync_state(PolicySync {})
                .await?
                .into_inner();
            if state.registers_cursor >= feed_cursor {
                break state.trigger_cursor;
            }
            if started.elapsed() > timeout {
                bail!(
                    "figures are still being brought up to date after {}s (at feed position {} of {}); \
                     they will catch up in the background",
                    timeout.as_secs(),
                    state.registers_cursor,
                    feed_cursor
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        loop {
            let state = self
                .cases
                .clone()
                .get_sync_state(CasesSync {})
                .await?
                .into_inner();
            if state.trigger_cursor >= trigger_cursor {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "cases are still being opened after {}s; they will catch up in the background",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Connects to one server, over TLS when its address starts with `https://`.
async fn connect_one(
    url: &str,
    tls_ca: Option<&Path>,
) -> anyhow::Result<tonic::transport::Channel> {
    let tls = url.starts_with("https://");
    if !tls && !url.starts_with("http://") {
        bail!(
            "invalid server URL {url:?}: start it with http:// or https://, for example \
             http://127.0.0.1:50051"
        );
    }
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| {
            format!("invalid server URL {url:?}: expected e.g. http://127.0.0.1:50051")
        })?
        .connect_timeout(Duration::from_secs(10));
    if tls {
        endpoint = endpoint
            .tls_config(rollcall_runtime::tls::client_config(tls_ca)?)
            .with_context(|| format!("cannot set up TLS for {url}"))?;
    }
    endpoint.connect().await.with_context(|| {
        let hint = if tls {
            "; if its certificate is signed by the trust's own CA, give that CA with --tls-ca \
             (or ROLLCALL_TLS_CA)"
        } else {
            ""
        };
        format!(
            "cannot reach a rollcall server at {url}: start one with `rollcall serve`, or \
             point --server (or ROLLCALL_SERVER) at a running one{hint}"
        )
    })
}
