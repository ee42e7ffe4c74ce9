//! The referral pack: a signed ZIP archive that carries a school's referral of a pupil to the
//! local authority's attendance team.
//!
//! A pack contains `manifest.json` first, then the data files (attendance, chronology, letters
//! and a summary). The manifest lists each file with its size and SHA-256, and carries an
//! Ed25519 signature over its RFC 8785 canonical form without the `signature` member. This
//! crate writes, reads and verifies packs of format version 1. It does no network or database
//! work. `docs/referral-pack.md` describes the format for the local authority.
//!
//! ```
//! # fn main() -> Result<(), rollcall_pack::PackError> {
//! # let manifest: rollcall_pack::Manifest = serde_json::from_str(include_str!("../tests/data/manifest.json"))?;
//! use rollcall_pack::{PackFile, SigningKey, verify_pack, write_pack};
//!
//! let key = SigningKey::generate()?;
//! let files = [PackFile {
//!     name: "attendance.csv".to_owned(),
//!     media_type: "text/csv".to_owned(),
//!     bytes: b"date,session,code\n".to_vec(),
//! }];
//! let zip = write_pack(&manifest, &files, &key)?;
//!
//! let verification = verify_pack(&zip, Some(&key.verifying_key()));
//! assert!(verification.is_valid(), "{verification}");
//! # Ok(())
//! # }
//! ```

mod archive;
mod canonical;
mod error;
mod keys;
mod manifest;
mod schema;
mod verify;
mod write;

pub use archive::Limits;
pub use canonical::canonical_json;
pub use error::PackError;
pub use keys::{SigningKey, VerifyingKey};
pub use manifest::{
    DateRange, FORMAT, FORMAT_VERSION, Figures, FileEntry, Manifest, Override, Parent, Policy,
    Prerequisite, Pupil, Referral, ReferralKind, SIGNATURE_ALGORITHM, School, Session, Signature,
    ThresholdSession,
};
pub use schema::{MANIFEST_SCHEMA, SchemaViolation};
pub use verify::{
    Check, CheckName, Status, Verification, read_manifest, verify_pack, verify_pack_with_limits,
};
pub use write::{PackFile, write_pack};
