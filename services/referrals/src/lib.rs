//! The referrals service: referrals to the local authority and statutory returns, their
//! prerequisites, the signed packs that carry them, and the outcomes the local authority
//! reports.
//!
//! A referral starts as a draft. Its prerequisites are checked from the case file (cases
//! service), the figures and thresholds (policy service) and the registers. Submission checks
//! them again, and a missing one blocks it unless a senior leader overrides it with a reason.
//! The pack submitted is kept whole, with its SHA-256, so what the local authority received can
//! always be produced again. Pack format version 1 is described in `docs/referral-pack.md`.

mod config;
mod evidence;
mod facts;
mod keys;
mod pack;
mod records;
mod service;
mod upn_changes;

pub use config::ReferralsConfig;
pub use keys::{load_or_create_signing_key, read_signing_key};
pub use rollcall_pack::FORMAT_VERSION as PACK_FORMAT_VERSION;
pub use service::Referrals;

use rollcall_runtime::storage::Migrations;

/// The referrals service's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    service: "referrals",
    postgres: &sqlx::migrate!("../../migrations/referrals/postgres"),
    sqlite: &sqlx::migrate!("../../migrations/referrals/sqlite"),
};
