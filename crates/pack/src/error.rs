//! The error type of this crate.

use crate::schema::SchemaViolation;

/// An error from writing or reading a pack, or from handling a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// A data file name breaks the naming rule.
    #[error(
        "invalid file name {name:?}: {reason}. Use lowercase letters, digits, '.', '_' and '-', \
         starting with a letter or digit, optionally under one folder (letters/first-warning.pdf)"
    )]
    InvalidFileName { name: String, reason: String },

    /// Two data files have the same name.
    #[error("the file name {name:?} is given twice. Give each file in the pack its own name")]
    DuplicateFileName { name: String },

    /// The school's LAESTAB disagrees with its two parts.
    #[error(
        "the school's laestab {laestab:?} is not la_number {la_number:?} followed by \
         establishment_number {establishment_number:?}; correct the school's record"
    )]
    LaestabMismatch {
        laestab: String,
        la_number: String,
        establishment_number: String,
    },

    /// The pack would be larger than a reader accepts.
    #[error(
        "the pack would hold {bytes} bytes uncompressed in {entries} entries, but readers accept \
         at most {max_bytes} bytes in {max_entries} entries; leave out or shrink the largest files"
    )]
    PackTooLarge {
        bytes: u64,
        entries: usize,
        max_bytes: u64,
        max_entries: usize,
    },

    /// The finished manifest is not valid against the schema, so the pack was not written.
    #[error(
        "the manifest is not valid against the format version 1 schema, so no pack was written: {}",
        join_violations(violations)
    )]
    InvalidManifest { violations: Vec<SchemaViolation> },

    /// The manifest could not be turned into JSON.
    #[error("could not serialise the manifest as JSON: {0}")]
    Serialisation(#[from] serde_json::Error),

    /// The manifest could not be brought into its canonical form for signing.
    #[error("could not canonicalise the manifest (RFC 8785): {reason}")]
    Canonicalization { reason: String },

    /// The ZIP archive could not be written.
    #[error("could not write the ZIP archive: {0}")]
    ZipWrite(#[source] zip::result::ZipError),

    /// The bytes are not a ZIP archive that can be read safely.
    #[error("the pack is not a readable ZIP archive: {reason}")]
    InvalidArchive { reason: String },

    /// The archive has no `manifest.json`.
    #[error("the archive has no manifest.json, so it is not a rollcall referral pack")]
    MissingManifest,

    /// `manifest.json` could not be read as JSON.
    #[error("manifest.json is not valid JSON: {reason}")]
    ManifestNotJson { reason: String },

    /// `manifest.json` names another format.
    #[error(
        "manifest.json has format {found}, not \"rollcall-referral-pack\", so it is not a \
         rollcall referral pack"
    )]
    WrongFormat { found: String },

    /// The pack is of a later format version than this crate reads.
    #[error(
        "the pack has pack_format_version {found}, so it was made by a newer rollcall; upgrade \
         rollcall to read it (this version reads pack_format_version 1)"
    )]
    NewerFormatVersion { found: u64 },

    /// `pack_format_version` is missing or is not a version that ever existed.
    #[error(
        "pack_format_version {found} is not a known version of the referral pack format. This rollcall reads pack_format_version 1"
    )]
    UnknownFormatVersion { found: String },

    /// `manifest.json` is JSON of the right format but lacks a field or has a wrong type.
    #[error("manifest.json does not match format version 1: {reason}")]
    ManifestUnreadable { reason: String },

    /// The text is not a PKCS#8 PEM Ed25519 private key.
    #[error("invalid private key PEM: {0}")]
    InvalidPrivateKeyPem(String),

    /// The text is not a SubjectPublicKeyInfo PEM Ed25519 public key.
    #[error("invalid public key PEM: {0}")]
    InvalidPublicKeyPem(String),

    /// A key could not be written as PEM.
    #[error("could not write the key as PEM: {0}")]
    KeyEncoding(String),

    /// The operating system's random number generator failed.
    #[error(
        "could not generate a key because the operating system's random number generator failed: {0}"
    )]
    KeyGeneration(String),
}

fn join_violations(violations: &[SchemaViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
