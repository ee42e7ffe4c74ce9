//! The MIS adapter: the edge between schools' management information systems and rollcall.
//!
//! It reads DfE Common Transfer Files, checks every pupil and mark against the code table, and
//! sends the school, its pupils and their marks to the registers service as one import that is
//! stored whole or not at all. The file's SHA-256 is the import's idempotency key, so importing
//! the same file again changes nothing.
//!
//! MIS vendors push pupils, calendars and marks through the sync API ([`MisSync`]), keyed by
//! their own pupil ids, with a result for every row and an idempotency key for every batch.
//!
//! It also delivers referral packs to the local authority: to a folder or to an HTTPS
//! endpoint, from a background worker with retries (see [`DeliveryConfig`]).
//!
//! Connectors pull each school's pupils, marks and deletions from its MIS data broker on a
//! schedule, and write decisions made in rollcall back to the MIS (see [`ConnectorsConfig`]).

mod connector;
mod ctf_import;
mod delivery;
mod service;
mod sync;
mod upn_changes;
mod writeback;

pub use connector::{BrokerRetryConfig, ConnectorsConfig, SchoolConnectorConfig, WritebackConfig};
pub use ctf_import::{CtfImport, prepare_ctf};
pub use delivery::{DeliveryConfig, DestinationConfig, DestinationKind, RetryConfig, WorkerConfig};
pub use service::MisAdapter;
pub use sync::MisSync;

use rollcall_runtime::storage::Migrations;

/// The key of the PostgreSQL advisory lock that serialises writes to the deliveries, the
/// connectors' state and write-back.
const MIS_ADAPTER_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::MIS_ADAPTER;

/// The MIS adapter's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    service: "mis-adapter",
    postgres: &sqlx::migrate!("../../migrations/mis-adapter/postgres"),
    sqlite: &sqlx::migrate!("../../migrations/mis-adapter/sqlite"),
};
