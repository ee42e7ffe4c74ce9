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

/// The advisory lock that serialises writers to the marks feed on PostgreSQL. A writer that
/// may touch any school's records takes it alone. An import of one school's marks shares it
/// with imports of other schools, takes its school's lock alone while it reads and plans, and
/// takes [`APPEND_LOCK_KEY`] only to number and store its versions.
const FEED_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::REGISTERS_FEED;

/// The advisory lock held from numbering new feed positions until commit by a writer that
/// shares [`FEED_LOCK_KEY`], so that positions still commit in order.
const APPEND_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::REGISTERS_APPEND;

/// Returns the advisory lock of one school's registers, or `None` when the LAESTAB is not a
/// number (a validated LAESTAB always is).
fn school_lock_key(laestab: &str) -> Option<i64> {
    laestab
        .parse::<u32>()
        .ok()
        .map(rollcall_runtime::storage::lock_keys::registers_school)
}
