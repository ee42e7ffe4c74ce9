//! The cases service: a case per pupil and concern, on the escalation ladder of their phase.
//!
//! A follower reads the policy service's triggers. A persistent-absence trigger opens a case at
//! the first stage of the pupil's ladder, unless one is already open for that pupil and
//! concern. A withdrawn trigger puts the case up for review; it is never closed silently.

mod casework;
mod evidence;
mod fields;
mod follower;
mod incidents;
mod messaging;
mod plans;
mod reintegration;
mod retention;
mod school_days;
mod service;
mod upn_changes;

pub use messaging::{
    DeliveryConfig, EmailConfig, FirstDayConfig, LettersConfig, MessagingConfig, SmsConfig,
    SmtpSecurity,
};
pub use retention::DEFAULT_CASE_RETENTION_YEARS;
pub use service::Cases;

use rollcall_runtime::storage::Migrations;

/// The cases service's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    service: "cases",
    postgres: &sqlx::migrate!("../../migrations/cases/postgres"),
    sqlite: &sqlx::migrate!("../../migrations/cases/sqlite"),
};

/// The advisory lock that serialises writers to cases on PostgreSQL.
const CASES_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::CASES;
/// The name under which the follower stores its cursor.
const TRIGGER_FEED: &str = "policy.triggers";
