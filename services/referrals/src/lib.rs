//! The referrals service: the packs that carry a referral to the local authority.
//!
//! A pack is built only for a pupil who has met the policy's penalty-notice warning threshold.
//! It is a ZIP archive with three files. `manifest.json` has the format version, school, pupil,
//! policy and clause, figures, the sessions that make up the threshold, and the SHA-256 of every
//! other file. `attendance.csv` has the pupil's session marks, and `attendance-ctf.xml` is a
//! Common Transfer File extract of the pupil's attendance.

mod pack;
mod service;

pub use pack::PACK_FORMAT_VERSION;
pub use service::Referrals;

use rollcall_runtime::storage::Migrations;

/// The referrals service's migrations.
pub const MIGRATIONS: Migrations = Migrations {
    service: "referrals",
    postgres: &sqlx::migrate!("../../migrations/referrals/postgres"),
    sqlite: &sqlx::migrate!("../../migrations/referrals/sqlite"),
};
