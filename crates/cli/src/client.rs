//! Clients of a running server, and the wait for figures and cases to catch up with an import.

use std::collections::BTreeMap;
use std::path::PathBuf;
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
    /// The address of the MIS adapter, which imports go to, for messages about failed imports.
    pub(crate) mis_adapter_url: String,
}

/// The addresses the client commands call: one server for all the services, or, against a
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
    /// Returns addresses that name one server for every service, trusting the public web
    /// authorities for `https://`.
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
            if channels.contains_key(url) {
                continue;
            }
            let served: Vec<ServiceName> = ServiceName::ALL
                .into_iter()
                .filter(|other| addresses.url(*other) == url)
                .collect();
            // With per-service addresses, --server is only a fallback: it is reached when a
            // command first calls a service it hosts, so a command that needs none of them
            // works without it.
            let lazy = !addresses.services.is_empty() && url == addresses.server;
            let channel = connect_one(url, &served, addresses, lazy).await?;
            channels.insert(url, credentials.clone().attach(channel));
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
            mis_adapter_url: addresses.url(ServiceName::MisAdapter).to_owned(),
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

/// Connects to the server at `url`, which hosts `served`, over TLS when its address starts
/// with `https://`. A lazy channel connects on its first call.
async fn connect_one(
    url: &str,
    served: &[ServiceName],
    addresses: &Addresses,
    lazy: bool,
) -> anyhow::Result<tonic::transport::Channel> {
    let option = if url == addresses.server {
        "--server (or ROLLCALL_SERVER)".to_owned()
    } else {
        let options: Vec<String> = served.iter().map(|service| service.url_option()).collect();
        options.join(", ")
    };
    let tls = url.starts_with("https://");
    if !tls && !url.starts_with("http://") {
        bail!(
            "invalid address {url:?} in {option}: start it with http:// or https://, for \
             example http://127.0.0.1:50051"
        );
    }
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| {
            format!("invalid address {url:?} in {option}: expected e.g. http://127.0.0.1:50051")
        })?
        .connect_timeout(Duration::from_secs(10));
    if tls {
        endpoint = endpoint
            .tls_config(rollcall_runtime::tls::client_config(
                addresses.tls_ca.as_deref(),
            )?)
            .with_context(|| format!("cannot set up TLS for {url}"))?;
    }
    if lazy {
        return Ok(endpoint.connect_lazy());
    }
    endpoint.connect().await.map_err(|error| {
        let cause = root_cause(&error);
        let hint = if cause.contains("InvalidContentType") {
            "; the server speaks plain HTTP/2, so use http:// in place of https://".to_owned()
        } else if cause.contains("UnknownIssuer") || cause.contains("certificate") {
            "; the server's certificate is not trusted: give the CA that signed it with \
             --tls-ca (or ROLLCALL_TLS_CA)"
                .to_owned()
        } else if !tls {
            "; if the server serves TLS, use https://".to_owned()
        } else {
            String::new()
        };
        let names: Vec<&str> = served.iter().map(|service| service.as_str()).collect();
        anyhow::anyhow!(
            "cannot reach the rollcall server for {} at {url}: {cause}. Start one with \
             `rollcall serve`, or correct {option}{hint}",
            names.join(", ")
        )
    })
}

/// Returns the innermost message of an error, which names the actual failure.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
