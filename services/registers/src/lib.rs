//! The registers service: the legal attendance register.
//!
//! It stores schools, pupils on roll and session marks. Marks are append-only: every change is
//! a new version, and the effective mark for a session is the version taken latest, ties broken
//! by the order received (the change-feed sequence). Every version is appended to a change
//! feed that other services follow from a cursor.

mod amend;
mod calendar;
mod checks;
mod contacts;
mod convert;
mod import;
mod lessons;
mod reports;
mod roll;
mod service;
mod store;
mod upn_changes;

pub use service::Registers;

use rollcall_runtime::storage::Migrations;

/// The registers service's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    service: "registers",
    postgres: &sqlx::migrate!("../../migrations/registers/postgres"),
    sqlite: &sqlx::migrate!("../../migrations/registers/sqlite"),
};

/// The advisory lock that serialises writers to the marks feed on PostgreSQL.
const FEED_LOCK_KEY: i64 = 0x726f_6c6c_0001;
