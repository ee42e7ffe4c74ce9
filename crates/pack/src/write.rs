//! Writing a signed pack.

use std::collections::HashSet;
use std::io::{Cursor, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Datelike, Timelike, Utc};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::archive::{Limits, MANIFEST_NAME};
use crate::canonical::{parse_json, signed_bytes};
use crate::manifest::{
    FORMAT, FORMAT_VERSION, FileEntry, Manifest, SIGNATURE_ALGORITHM, School, Signature,
};
use crate::schema::schema_violations;
use crate::{PackError, SigningKey};

/// A data file to put in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackFile {
    /// The entry name in the archive, such as `attendance.csv` or `letters/first-warning.pdf`.
    pub name: String,
    /// The media type, such as `text/csv` or `application/pdf`.
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Writes a signed pack: a ZIP archive with `manifest.json` first, then `files` in the order
/// given, all deflated.
///
/// This function sets the manifest's `format`, `pack_format_version`, `files` and `signature`,
/// ignoring the caller's values for them. Every entry's timestamp is the manifest's
/// `created_at`, so the same input always gives the same bytes.
///
/// Fails when a file name breaks the naming rule or repeats, when the pack would exceed the
/// reading [`Limits`], or when the finished manifest is not valid against the schema. A pack
/// that fails is never returned.
pub fn write_pack(
    manifest: &Manifest,
    files: &[PackFile],
    key: &SigningKey,
) -> Result<Vec<u8>, PackError> {
    check_file_names(files)?;
    check_laestab(&manifest.school)?;

    let mut signed = manifest.clone();
    signed.format = FORMAT.to_owned();
    signed.pack_format_version = FORMAT_VERSION;
    signed.files = files.iter().map(file_entry).collect();
    signed.signature = Signature::default();
    let message = signed_bytes(&serde_json::to_value(&signed)?)?;

    let verifying_key = key.verifying_key();
    signed.signature = Signature {
        algorithm: SIGNATURE_ALGORITHM.to_owned(),
        key_id: verifying_key.key_id(),
        public_key: BASE64.encode(verifying_key.as_bytes()),
        value: BASE64.encode(key.sign(&message)),
    };
    let mut manifest_json = serde_json::to_vec_pretty(&signed)?;
    manifest_json.push(b'\n');

    check_written_manifest(&manifest_json, &message)?;
    check_size(&manifest_json, files)?;
    write_zip(&manifest_json, files, signed.created_at)
}

fn file_entry(file: &PackFile) -> FileEntry {
    FileEntry {
        name: file.name.clone(),
        media_type: file.media_type.clone(),
        sha256: hex::encode(Sha256::digest(&file.bytes)),
        bytes: file.bytes.len() as u64,
    }
}

/// Guards against bugs in this crate: the manifest as written must be valid against the schema
/// and must canonicalise to exactly the bytes that were signed.
fn check_written_manifest(manifest_json: &[u8], message: &[u8]) -> Result<(), PackError> {
    let written = parse_json(manifest_json)?;
    let violations = schema_violations(&written);
    if !violations.is_empty() {
        return Err(PackError::InvalidManifest { violations });
    }
    if signed_bytes(&written)? != message {
        return Err(PackError::Canonicalization {
            reason: "the manifest as written does not canonicalise to the bytes that were signed"
                .to_owned(),
        });
    }
    Ok(())
}

fn check_file_names(files: &[PackFile]) -> Result<(), PackError> {
    let mut seen = HashSet::new();
    for file in files {
        if let Some(reason) = file_name_problem(&file.name) {
            return Err(PackError::InvalidFileName {
                name: file.name.clone(),
                reason: reason.to_owned(),
            });
        }
        if !seen.insert(file.name.as_str()) {
            return Err(PackError::DuplicateFileName {
                name: file.name.clone(),
            });
        }
    }
    Ok(())
}

/// Returns why `name` breaks the naming rule for data files, or `None` when it follows it.
/// The rule is the schema's pattern `^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?$`, at most
/// 200 characters, with `manifest.json` reserved.
fn file_name_problem(name: &str) -> Option<&'static str> {
    if name == MANIFEST_NAME {
        return Some("manifest.json is reserved for the manifest");
    }
    if name.is_empty() {
        return Some("the name is empty");
    }
    if name.len() > 200 {
        return Some("the name is longer than 200 characters");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 {
        return Some("a file may be under one folder at most");
    }
    for part in parts {
        let mut characters = part.chars();
        match characters.next() {
            None => return Some("a folder or file name part is empty"),
            Some(first) if !(first.is_ascii_lowercase() || first.is_ascii_digit()) => {
                return Some("each part must start with a lowercase letter or a digit");
            }
            Some(_) => {}
        }
        let allowed = |character: char| {
            character.is_ascii_lowercase()
                || character.is_ascii_digit()
                || matches!(character, '.' | '_' | '-')
        };
        if !characters.all(allowed) {
            return Some("it contains a character other than a-z, 0-9, '.', '_' and '-'");
        }
    }
    None
}

fn check_laestab(school: &School) -> Result<(), PackError> {
    let joined = format!("{}{}", school.la_number, school.establishment_number);
    if school.laestab != joined {
        return Err(PackError::LaestabMismatch {
            laestab: school.laestab.clone(),
            la_number: school.la_number.clone(),
            establishment_number: school.establishment_number.clone(),
        });
    }
    Ok(())
}

/// Rejects a pack that [`verify_pack`](crate::verify_pack) would reject as too large.
fn check_size(manifest_json: &[u8], files: &[PackFile]) -> Result<(), PackError> {
    let limits = Limits::default();
    let bytes = files
        .iter()
        .map(|file| file.bytes.len() as u64)
        .sum::<u64>()
        + manifest_json.len() as u64;
    let entries = files.len() + 1;
    if bytes > limits.max_total_bytes || entries > limits.max_entries {
        return Err(PackError::PackTooLarge {
            bytes,
            entries,
            max_bytes: limits.max_total_bytes,
            max_entries: limits.max_entries,
        });
    }
    Ok(())
}

fn write_zip(
    manifest_json: &[u8],
    files: &[PackFile],
    created_at: DateTime<Utc>,
) -> Result<Vec<u8>, PackError> {
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(zip_time(created_at))
        .unix_permissions(0o644);
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let entries = std::iter::once((MANIFEST_NAME, manifest_json)).chain(
        files
            .iter()
            .map(|file| (file.name.as_str(), file.bytes.as_slice())),
    );
    for (name, bytes) in entries {
        zip.start_file(name, options).map_err(PackError::ZipWrite)?;
        zip.write_all(bytes)
            .map_err(|error| PackError::ZipWrite(error.into()))?;
    }
    let cursor = zip.finish().map_err(PackError::ZipWrite)?;
    Ok(cursor.into_inner())
}

/// Converts a timestamp to a ZIP entry time. ZIP times run from 1980 to 2107 with two-second
/// steps, so a time outside that range becomes 1980-01-01 00:00:00.
fn zip_time(at: DateTime<Utc>) -> zip::DateTime {
    let year = u16::try_from(at.year()).unwrap_or(0);
    let as_u8 = |value: u32| u8::try_from(value).unwrap_or(0);
    zip::DateTime::from_date_and_time(
        year,
        as_u8(at.month()),
        as_u8(at.day()),
        as_u8(at.hour()),
        as_u8(at.minute()),
        as_u8(at.second()),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::file_name_problem;

    #[test]
    fn allowed_file_names_pass() {
        for name in [
            "attendance.csv",
            "attendance-ctf.xml",
            "summary.pdf",
            "letters/attendance-concern-2026-10-01.pdf",
            "2026_notes.txt",
        ] {
            assert_eq!(file_name_problem(name), None, "{name}");
        }
    }

    #[test]
    fn file_name_problems_are_named() {
        let long = format!("{}.csv", "a".repeat(200));
        let cases = [
            (
                "manifest.json",
                "manifest.json is reserved for the manifest",
            ),
            ("", "the name is empty"),
            (long.as_str(), "the name is longer than 200 characters"),
            ("a/b/c.pdf", "a file may be under one folder at most"),
            ("letters/", "a folder or file name part is empty"),
            (
                "-x.csv",
                "each part must start with a lowercase letter or a digit",
            ),
            (
                "Letters/x.pdf",
                "each part must start with a lowercase letter or a digit",
            ),
            (
                "letters/x y.pdf",
                "it contains a character other than a-z, 0-9, '.', '_' and '-'",
            ),
        ];
        for (name, problem) in cases {
            assert_eq!(file_name_problem(name), Some(problem), "{name:?}");
        }
    }
}
