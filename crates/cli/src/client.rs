//! Clients of a running server, and the wait for figures and cases to catch up with an import.

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

impl Clients {
    /// Connects to the server at `url`, sending `credentials` with every call.
    pub(crate) async fn connect(url: &str, credentials: Credentials) -> anyhow::Result<Self> {
        if url.starts_with("https://") {
            bail!(
                "invalid server URL {url:?}: rollcall serve does not offer TLS yet, so an https:// \
                 address would not be encrypted; use http:// on a trusted network or a TLS proxy"
            );
        }
        if !url.starts_with("http://") {
            bail!(
                "invalid server URL {url:?}: start it with http://, for example \
                 http://127.0.0.1:50051"
            );
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| {
                format!("invalid server URL {url:?}: expected e.g. http://127.0.0.1:50051")
            })?
            .connect_timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.with_context(|| {
            format!(
                "cannot reach a rollcall server at {url}: start one with `rollcall serve`, or \
                 point --server (or ROLLCALL_SERVER) at a running one"
            )
        })?;
        let channel = credentials.attach(channel);
        Ok(Self {
            registers: RegistersServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            policy: PolicyServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            cases: CasesServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            referrals: ReferralsServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            mis_adapter: MisAdapterServiceClient::new(channel.clone())
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            mis_sync: MisSyncServiceClient::new(channel.clone())
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            audit: AuditServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
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
