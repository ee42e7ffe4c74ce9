//! The audit log: an append-only record of every change, every read of pupils' records by a
//! person and every rejected call, with the service that lists and verifies it.
//!
//! The authentication layer builds an [`AuditEvent`](rollcall_auth::audit::AuditEvent) for
//! each audited call and hands it to an [`AuditStore`], which appends it to the
//! `audit_events` table. Triggers reject UPDATE, DELETE and, on PostgreSQL, TRUNCATE on the
//! audit tables. Each event also stores the SHA-256 of the previous event's hash and its own
//! fields, so an event changed or removed by someone who drops the triggers breaks the chain
//! that [`AuditStore::verify`] checks.

mod chain;
mod service;
mod store;

pub use service::Audit;
pub use store::{AuditStore, BrokenLink, Checkpoint, EventFilter, StoredEvent, Verification};

use rollcall_runtime::storage::Migrations;

/// The audit log's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    service: "audit",
    postgres: &sqlx::migrate!("../../migrations/audit/postgres"),
    sqlite: &sqlx::migrate!("../../migrations/audit/sqlite"),
};
