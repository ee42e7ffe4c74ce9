//! The policy service: attendance statistics by the DfE rules, the thresholds of the policy
//! in force, and triggers when a pupil crosses one.
//!
//! Statistics come from the registers service's effective marks, read through its gRPC API.
//! A follower reads the registers' change feed, re-evaluates the pupils whose marks changed
//! and appends a trigger whenever a pupil starts or stops meeting a threshold.

mod aggregates;
mod decide;
mod figures;
mod follower;
mod policies;
mod rewards;
mod service;
mod statistics;
mod upn_changes;

pub use follower::spawn_follower;
pub use service::Policy;
pub use upn_changes::spawn_upn_follower;

use rollcall_runtime::storage::Migrations;

/// The policy service's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    service: "policy",
    postgres: &sqlx::migrate!("../../migrations/policy/postgres"),
    sqlite: &sqlx::migrate!("../../migrations/policy/sqlite"),
};

/// The advisory lock that serialises writers to the trigger feed on PostgreSQL.
const TRIGGER_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::POLICY_TRIGGERS;
