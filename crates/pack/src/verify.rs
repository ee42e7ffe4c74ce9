//! Verifying a pack, check by check, and reading its manifest.

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::archive::{self, Archive, Limits, MANIFEST_NAME};
use crate::canonical::{parse_json, signed_bytes};
use crate::manifest::{FORMAT, FORMAT_VERSION, Manifest, SIGNATURE_ALGORITHM};
use crate::schema::schema_violations;
use crate::{PackError, VerifyingKey};

/// The checks that [`verify_pack`] makes, in the order it makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckName {
    /// The archive opens, its entry names are safe and it is within the size limits.
    Archive,
    /// `manifest.json` is present, first and JSON.
    Manifest,
    /// `format` and `pack_format_version` are those of format version 1.
    Format,
    /// The manifest is valid against the JSON Schema.
    Schema,
    /// Every listed file is present with the listed size and SHA-256, and nothing else is.
    Files,
    /// The signature verifies against the manifest's public key.
    Signature,
    /// The manifest's public key is the trusted key.
    Signer,
}

impl CheckName {
    /// Every check, in order.
    pub const ALL: [CheckName; 7] = [
        Self::Archive,
        Self::Manifest,
        Self::Format,
        Self::Schema,
        Self::Files,
        Self::Signature,
        Self::Signer,
    ];

    /// Returns the check's name as shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Archive => "archive",
            Self::Manifest => "manifest",
            Self::Format => "format",
            Self::Schema => "schema",
            Self::Files => "files",
            Self::Signature => "signature",
            Self::Signer => "signer",
        }
    }
}

impl fmt::Display for CheckName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Passed,
    /// Passed, with something the reader should act on. It does not make the pack invalid.
    Warning,
    Failed,
    /// Not made, because an earlier failure left nothing to check. It makes the pack invalid.
    Skipped,
}

impl Status {
    /// Returns the status's name as used in JSON: passed, warning, failed or skipped.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Warning => "warning",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Passed => "ok",
            Self::Warning => "warn",
            Self::Failed => "FAIL",
            Self::Skipped => "skip",
        }
    }
}

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: CheckName,
    pub status: Status,
    /// A plain-English description of the outcome.
    pub detail: String,
}

impl Check {
    /// Returns whether the check passed, with or without a warning.
    pub fn passed(&self) -> bool {
        matches!(self.status, Status::Passed | Status::Warning)
    }
}

/// The result of [`verify_pack`]: every check with its outcome, and the manifest when it
/// could be read.
#[derive(Debug, Clone)]
pub struct Verification {
    checks: Vec<Check>,
    manifest: Option<Manifest>,
}

impl Verification {
    /// Returns whether every check passed. Warnings do not make a pack invalid.
    pub fn is_valid(&self) -> bool {
        self.checks.len() == CheckName::ALL.len() && self.checks.iter().all(Check::passed)
    }

    /// Returns every check, in the order of [`CheckName::ALL`].
    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// Returns the named check.
    pub fn check(&self, name: CheckName) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }

    /// Returns the manifest, when it is JSON of format version 1 with every field this crate
    /// reads. It is returned even when other checks failed, so do not trust it unless
    /// [`is_valid`](Self::is_valid) is true.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }
}

impl fmt::Display for Verification {
    /// Writes one line per check, such as `ok   signature  ed25519 key 1a2b3c4d5e6f7a8b`,
    /// then a line with the verdict.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(
                formatter,
                "{:<4} {:<10} {}",
                check.status.label(),
                check.name.as_str(),
                check.detail
            )?;
        }
        let failed = self.checks.iter().filter(|check| !check.passed()).count();
        if self.is_valid() {
            write!(formatter, "valid: every check passed")
        } else {
            let noun = if failed == 1 { "check" } else { "checks" };
            write!(formatter, "NOT VALID: {failed} {noun} failed or not made")
        }
    }
}

/// Verifies a pack with the default [`Limits`]. See [`verify_pack_with_limits`].
pub fn verify_pack(zip: &[u8], trusted_key: Option<&VerifyingKey>) -> Verification {
    verify_pack_with_limits(zip, trusted_key, &Limits::default())
}

/// Verifies a pack and reports every check in [`CheckName::ALL`].
///
/// A failed check does not stop the later ones when they can still be made. A check that
/// cannot be made is reported as [`Status::Skipped`]. Without `trusted_key`, the signer check
/// is a warning, because anyone can sign a pack with a key of their own.
pub fn verify_pack_with_limits(
    zip: &[u8],
    trusted_key: Option<&VerifyingKey>,
    limits: &Limits,
) -> Verification {
    let mut report = Report::default();

    let archive = match archive::read(zip, limits) {
        Ok(archive) => archive,
        Err(reason) => {
            report.push(CheckName::Archive, Status::Failed, reason);
            return report.skip_rest("the archive could not be read safely");
        }
    };
    check_archive(&mut report, &archive);

    let Some(manifest) = check_manifest(&mut report, &archive) else {
        return report.skip_rest("there is no readable manifest");
    };
    if !check_format(&mut report, &manifest) {
        return report.skip_rest("the pack is not of format version 1");
    }
    report.manifest = serde_json::from_value::<Manifest>(manifest.clone()).ok();

    check_schema(&mut report, &manifest);
    check_files(&mut report, &manifest, &archive);
    let signer = check_signature(&mut report, &manifest);
    check_signer(&mut report, signer.as_ref(), trusted_key);
    report.finish()
}

/// Reads the manifest of a pack without verifying the files or the signature, which
/// [`verify_pack`] does.
///
/// Fails when the archive cannot be read, has no `manifest.json`, or the manifest is not JSON
/// of format version 1 with every field this crate reads.
pub fn read_manifest(zip: &[u8]) -> Result<Manifest, PackError> {
    let text = archive::read_manifest_entry(zip, &Limits::default())?;
    let value = parse_json(&text).map_err(|error| PackError::ManifestNotJson {
        reason: error.to_string(),
    })?;
    match value.get("format") {
        Some(Value::String(format)) if format == FORMAT => {}
        other => {
            return Err(PackError::WrongFormat {
                found: describe(other),
            });
        }
    }
    match value.get("pack_format_version").and_then(Value::as_u64) {
        Some(version) if version == u64::from(FORMAT_VERSION) => {}
        Some(version) if version > u64::from(FORMAT_VERSION) => {
            return Err(PackError::NewerFormatVersion { found: version });
        }
        _ => {
            return Err(PackError::UnknownFormatVersion {
                found: describe(value.get("pack_format_version")),
            });
        }
    }
    serde_json::from_value(value).map_err(|error| PackError::ManifestUnreadable {
        reason: error.to_string(),
    })
}

#[derive(Default)]
struct Report {
    checks: Vec<Check>,
    manifest: Option<Manifest>,
}

impl Report {
    fn push(&mut self, name: CheckName, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
        });
    }

    fn skip_rest(mut self, reason: &str) -> Verification {
        for name in CheckName::ALL {
            if self.checks.iter().all(|check| check.name != name) {
                self.push(name, Status::Skipped, format!("not checked: {reason}"));
            }
        }
        self.finish()
    }

    fn finish(self) -> Verification {
        Verification {
            checks: self.checks,
            manifest: self.manifest,
        }
    }
}

fn check_archive(report: &mut Report, archive: &Archive) {
    if archive.problems.is_empty() {
        report.push(
            CheckName::Archive,
            Status::Passed,
            format!(
                "{} entries, {} bytes uncompressed",
                archive.entries.len(),
                archive.total_bytes
            ),
        );
    } else {
        report.push(
            CheckName::Archive,
            Status::Failed,
            archive.problems.join("; "),
        );
    }
}

/// Checks `manifest.json` and returns it parsed, or `None` when it cannot be read.
fn check_manifest(report: &mut Report, archive: &Archive) -> Option<Value> {
    let Some(entry) = archive.entry(MANIFEST_NAME) else {
        report.push(
            CheckName::Manifest,
            Status::Failed,
            "manifest.json is missing, so this is not a rollcall referral pack",
        );
        return None;
    };
    let Some(content) = &entry.content else {
        report.push(
            CheckName::Manifest,
            Status::Failed,
            "manifest.json could not be read from the archive",
        );
        return None;
    };
    let value = match parse_json(content) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => {
            report.push(
                CheckName::Manifest,
                Status::Failed,
                "manifest.json is JSON but not an object",
            );
            return None;
        }
        Err(error) => {
            report.push(
                CheckName::Manifest,
                Status::Failed,
                format!("manifest.json is not valid JSON: {error}"),
            );
            return None;
        }
    };
    let first = archive
        .entries
        .first()
        .is_some_and(|entry| entry.name == MANIFEST_NAME);
    if first {
        report.push(
            CheckName::Manifest,
            Status::Passed,
            format!(
                "manifest.json is the first entry, {} bytes of JSON",
                content.len()
            ),
        );
    } else {
        report.push(
            CheckName::Manifest,
            Status::Failed,
            "manifest.json is JSON but not the first entry in the archive, as the format requires",
        );
    }
    Some(value)
}

/// Checks `format` and `pack_format_version`, and returns whether the pack is of format version 1.
fn check_format(report: &mut Report, manifest: &Value) -> bool {
    let format = manifest.get("format");
    if format.and_then(Value::as_str) != Some(FORMAT) {
        report.push(
            CheckName::Format,
            Status::Failed,
            format!(
                "format is {}, not \"{FORMAT}\", so this is not a rollcall referral pack",
                describe(format)
            ),
        );
        return false;
    }
    let version = manifest.get("pack_format_version");
    match version.and_then(Value::as_u64) {
        Some(found) if found == u64::from(FORMAT_VERSION) => {
            report.push(
                CheckName::Format,
                Status::Passed,
                format!("{FORMAT}, format version {FORMAT_VERSION}"),
            );
            true
        }
        Some(found) if found > u64::from(FORMAT_VERSION) => {
            report.push(
                CheckName::Format,
                Status::Failed,
                format!(
                    "pack_format_version {found}: made by a newer rollcall; upgrade to read it (this \
                     version reads pack_format_version {FORMAT_VERSION})"
                ),
            );
            false
        }
        _ => {
            report.push(
                CheckName::Format,
                Status::Failed,
                format!(
                    "pack_format_version is {}, which is not a version of this format; this version \
                     reads pack_format_version {FORMAT_VERSION}",
                    describe(version)
                ),
            );
            false
        }
    }
}

fn check_schema(report: &mut Report, manifest: &Value) {
    let violations = schema_violations(manifest);
    if violations.is_empty() {
        report.push(
            CheckName::Schema,
            Status::Passed,
            "valid against the format version 1 JSON Schema",
        );
        return;
    }
    let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
    report.push(
        CheckName::Schema,
        Status::Failed,
        format!(
            "{} schema error{}: {}",
            listed.len(),
            if listed.len() == 1 { "" } else { "s" },
            listed.join("; ")
        ),
    );
}

/// A file as the manifest lists it.
struct ListedFile<'a> {
    name: &'a str,
    sha256: &'a str,
    bytes: u64,
}

fn check_files(report: &mut Report, manifest: &Value, archive: &Archive) {
    let Some(items) = manifest.get("files").and_then(Value::as_array) else {
        report.push(
            CheckName::Files,
            Status::Failed,
            "the manifest has no files list, so no data file can be checked",
        );
        return;
    };

    let mut problems = Vec::new();
    let mut listed = Vec::new();
    let mut names = HashSet::new();
    for (index, item) in items.iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str);
        let sha256 = item.get("sha256").and_then(Value::as_str);
        let bytes = item.get("bytes").and_then(Value::as_u64);
        let (Some(name), Some(sha256), Some(bytes)) = (name, sha256, bytes) else {
            problems.push(format!(
                "/files/{index} lacks a usable name, sha256 or bytes"
            ));
            continue;
        };
        if !names.insert(name) {
            problems.push(format!("{name}: listed twice"));
            continue;
        }
        listed.push(ListedFile {
            name,
            sha256,
            bytes,
        });
    }

    for file in &listed {
        if let Some(problem) = compare_file(file, archive) {
            problems.push(problem);
        }
    }
    for entry in &archive.entries {
        if entry.name != MANIFEST_NAME && !names.contains(entry.name.as_str()) {
            problems.push(format!(
                "{}: in the archive but not listed in the manifest",
                entry.name
            ));
        }
    }

    if problems.is_empty() {
        report.push(
            CheckName::Files,
            Status::Passed,
            format!(
                "{} files present with the listed sizes and SHA-256 hashes",
                listed.len()
            ),
        );
    } else {
        report.push(CheckName::Files, Status::Failed, problems.join("; "));
    }
}

/// Returns how the archive's copy of `file` differs from the manifest, or `None` when it
/// matches.
fn compare_file(file: &ListedFile<'_>, archive: &Archive) -> Option<String> {
    let Some(entry) = archive.entry(file.name) else {
        return Some(format!(
            "{}: listed in the manifest but missing from the archive",
            file.name
        ));
    };
    let Some(content) = &entry.content else {
        return Some(format!(
            "{}: in the archive but could not be read",
            file.name
        ));
    };
    let found = content.len() as u64;
    if found != file.bytes {
        return Some(format!(
            "{}: {found} bytes, but the manifest lists {}",
            file.name, file.bytes
        ));
    }
    let digest = hex::encode(Sha256::digest(content));
    if digest != file.sha256 {
        return Some(format!(
            "{}: SHA-256 differs (manifest {}, file {digest}); the file was changed after the \
             pack was made",
            file.name, file.sha256
        ));
    }
    None
}

/// Checks the signature and returns the key that made it when it verifies.
fn check_signature(report: &mut Report, manifest: &Value) -> Option<VerifyingKey> {
    match verify_signature(manifest) {
        Ok(key) => {
            report.push(
                CheckName::Signature,
                Status::Passed,
                format!("{SIGNATURE_ALGORITHM} key {}", key.key_id()),
            );
            Some(key)
        }
        Err(reason) => {
            report.push(CheckName::Signature, Status::Failed, reason);
            None
        }
    }
}

fn verify_signature(manifest: &Value) -> Result<VerifyingKey, String> {
    let signature = manifest
        .get("signature")
        .ok_or("the manifest has no signature")?;
    let algorithm = signature.get("algorithm").and_then(Value::as_str);
    if algorithm != Some(SIGNATURE_ALGORITHM) {
        return Err(format!(
            "the signature algorithm is {}, but format version 1 uses only {SIGNATURE_ALGORITHM}",
            describe(signature.get("algorithm"))
        ));
    }

    let public_key = decode_base64::<32>(signature, "public_key")?;
    let key = VerifyingKey::from_bytes(&public_key)
        .ok_or("signature.public_key is not a valid Ed25519 public key")?;
    let key_id = signature.get("key_id").and_then(Value::as_str);
    if key_id != Some(key.key_id().as_str()) {
        return Err(format!(
            "signature.key_id is {}, but the public key's key id is {}",
            describe(signature.get("key_id")),
            key.key_id()
        ));
    }

    let value = decode_base64::<64>(signature, "value")?;
    let message = signed_bytes(manifest)
        .map_err(|error| format!("the manifest cannot be canonicalised: {error}"))?;
    if !key.verify(&message, &value) {
        return Err(format!(
            "the signature does not match the manifest for key {}: the manifest was changed \
             after it was signed",
            key.key_id()
        ));
    }
    Ok(key)
}

/// Decodes `signature.<member>` from standard base64 into exactly `N` bytes.
fn decode_base64<const N: usize>(signature: &Value, member: &str) -> Result<[u8; N], String> {
    let text = signature
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("signature.{member} is missing or not a string"))?;
    let bytes = BASE64
        .decode(text)
        .map_err(|error| format!("signature.{member} is not standard base64 ({error})"))?;
    let length = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("signature.{member} contains {length} bytes, but it must contain {N}"))
}

fn check_signer(
    report: &mut Report,
    signer: Option<&VerifyingKey>,
    trusted: Option<&VerifyingKey>,
) {
    let Some(signer) = signer else {
        report.push(
            CheckName::Signer,
            Status::Skipped,
            "not checked: the signature did not verify",
        );
        return;
    };
    match trusted {
        Some(trusted) if trusted == signer => report.push(
            CheckName::Signer,
            Status::Passed,
            format!("signed by the trusted key {}", trusted.key_id()),
        ),
        Some(trusted) => report.push(
            CheckName::Signer,
            Status::Failed,
            format!(
                "signed by key {}, not by the trusted key {}, so the pack did not come from the \
                 holder of the trusted key",
                signer.key_id(),
                trusted.key_id()
            ),
        ),
        None => report.push(
            CheckName::Signer,
            Status::Warning,
            format!(
                "signer not confirmed: key {} signed the pack, but no trusted key was given. To \
                 confirm it, get the trust's public key PEM from the trust by a separate channel \
                 and verify again with it (--public-key)",
                signer.key_id()
            ),
        ),
    }
}

/// Describes an optional JSON value for a message: the JSON text, or "missing".
fn describe(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}
