//! Packs that were changed, damaged or forged, and what verification reports for each.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Cursor, Write};

use rollcall_pack::{
    CheckName, Limits, PackError, Status, Verification, read_manifest, verify_pack,
    verify_pack_with_limits,
};
use zip::write::SimpleFileOptions;

fn status(verification: &Verification, name: CheckName) -> Status {
    verification.check(name).unwrap().status
}

fn detail(verification: &Verification, name: CheckName) -> &str {
    &verification.check(name).unwrap().detail
}

#[test]
fn changed_data_byte_fails_files_check() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    let (name, bytes) = &mut entries[1];
    assert_eq!(name, "attendance.csv");
    bytes[20] ^= 0x01;
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert!(!verification.is_valid());
    assert_eq!(status(&verification, CheckName::Files), Status::Failed);
    let files = detail(&verification, CheckName::Files);
    assert!(files.contains("attendance.csv: SHA-256 differs"), "{files}");
    assert!(!files.contains("chronology.csv"), "{files}");
    assert_eq!(status(&verification, CheckName::Signature), Status::Passed);
}

#[test]
fn edited_manifest_fails_signature_check() {
    let key = common::key();
    let zip = common::pack(&key);
    let mut manifest = common::manifest_value(&zip);
    manifest["figures"]["unauthorised_absence_sessions"] = 20.into();
    let zip = common::with_manifest(&zip, &manifest);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert!(!verification.is_valid());
    assert_eq!(status(&verification, CheckName::Schema), Status::Passed);
    assert_eq!(status(&verification, CheckName::Files), Status::Passed);
    assert_eq!(status(&verification, CheckName::Signature), Status::Failed);
    assert!(
        detail(&verification, CheckName::Signature).contains("does not match the manifest"),
        "{verification}"
    );
    assert_eq!(status(&verification, CheckName::Signer), Status::Skipped);
}

#[test]
fn reordered_manifest_members_still_verify() {
    let key = common::key();
    let zip = common::pack(&key);
    let manifest = common::manifest_value(&zip);
    // Written without indentation and with the members in another order, the manifest has the
    // same canonical form, so the signature still holds.
    let members = manifest.as_object().unwrap();
    let reversed: Vec<String> = members
        .iter()
        .rev()
        .map(|(name, value)| format!("{}:{}", serde_json::to_string(name).unwrap(), value))
        .collect();
    let text = format!("{{{}}}", reversed.join(","));
    let mut entries = common::entries(&zip);
    entries[0].1 = text.into_bytes();
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert!(verification.is_valid(), "{verification}");
}

#[test]
fn other_signer_caught_by_trusted_key() {
    let trust_key = common::key();
    let other_key = common::key();
    let zip = common::pack(&trust_key);
    let mut manifest = common::manifest_value(&zip);
    manifest["pupil"]["surname"] = "Changed".into();
    common::sign(&mut manifest, &other_key);
    let zip = common::with_manifest(&zip, &manifest);

    let without_trust = verify_pack(&zip, None);
    let with_trust = verify_pack(&zip, Some(&trust_key.verifying_key()));

    assert!(without_trust.is_valid(), "{without_trust}");
    assert_eq!(status(&without_trust, CheckName::Signer), Status::Warning);
    let warning = detail(&without_trust, CheckName::Signer);
    assert!(warning.contains("signer not confirmed"), "{warning}");
    assert!(
        warning.contains(&other_key.verifying_key().key_id()),
        "{warning}"
    );
    assert!(warning.contains("public key"), "{warning}");

    assert!(!with_trust.is_valid());
    assert_eq!(status(&with_trust, CheckName::Signature), Status::Passed);
    assert_eq!(status(&with_trust, CheckName::Signer), Status::Failed);
    let failure = detail(&with_trust, CheckName::Signer);
    assert!(
        failure.contains(&trust_key.verifying_key().key_id()),
        "{failure}"
    );
}

#[test]
fn warning_is_shown_in_report() {
    let zip = common::pack(&common::key());

    let report = verify_pack(&zip, None).to_string();

    let signer_line = report.lines().nth(6).unwrap();
    assert!(
        signer_line.starts_with("warn signer     signer not confirmed"),
        "{report}"
    );
    assert!(report.ends_with("valid: every check passed"), "{report}");
}

#[test]
fn unlisted_entry_fails_files_check() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    entries.push(("extra.txt".to_owned(), b"not in the manifest".to_vec()));
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Files), Status::Failed);
    let files = detail(&verification, CheckName::Files);
    assert!(
        files.contains("extra.txt: in the archive but not listed"),
        "{files}"
    );
    assert_eq!(status(&verification, CheckName::Archive), Status::Passed);
    assert_eq!(status(&verification, CheckName::Signature), Status::Passed);
}

#[test]
fn removed_entry_fails_files_check() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    entries.retain(|(name, _)| name != "chronology.csv");
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Files), Status::Failed);
    let files = detail(&verification, CheckName::Files);
    assert!(
        files.contains("chronology.csv: listed in the manifest but missing from the archive"),
        "{files}"
    );
}

#[test]
fn unsafe_entry_names_fail_archive_check() {
    let key = common::key();
    for name in [
        "../evil",
        "/etc/evil",
        "letters\\evil.pdf",
        "letters/../../evil",
        "C:/evil",
    ] {
        let mut entries = common::entries(&common::pack(&key));
        entries.push((name.to_owned(), b"payload".to_vec()));
        let zip = common::zip_of(&entries);

        let verification = verify_pack(&zip, Some(&key.verifying_key()));

        assert_eq!(
            status(&verification, CheckName::Archive),
            Status::Failed,
            "{name}"
        );
        let archive = detail(&verification, CheckName::Archive);
        assert!(archive.contains("unsafe entry name"), "{name}: {archive}");
        // The later checks still run: the signature holds, and the extra entry is unlisted.
        assert_eq!(
            status(&verification, CheckName::Signature),
            Status::Passed,
            "{name}"
        );
        assert_eq!(
            status(&verification, CheckName::Files),
            Status::Failed,
            "{name}"
        );
    }
}

#[test]
fn duplicate_entry_names_fail_archive_check() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    entries.push((
        "attendance.csx".to_owned(),
        b"a second attendance file".to_vec(),
    ));
    let zip = common::zip_of(&entries);
    // Renaming in place gives two entries called attendance.csv, which the zip crate's
    // writer would refuse to write.
    let zip = replace_all(&zip, b"attendance.csx", b"attendance.csv");

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Archive), Status::Failed);
    let archive = detail(&verification, CheckName::Archive);
    assert!(archive.contains("share a name"), "{archive}");
}

#[test]
fn manifest_not_first_fails_manifest_check() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    entries.rotate_left(1);
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Manifest), Status::Failed);
    assert!(detail(&verification, CheckName::Manifest).contains("not the first entry"));
    assert_eq!(status(&verification, CheckName::Signature), Status::Passed);
}

#[test]
fn missing_manifest_skips_later_checks() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    entries.remove(0);
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Manifest), Status::Failed);
    for name in [
        CheckName::Format,
        CheckName::Schema,
        CheckName::Files,
        CheckName::Signature,
    ] {
        assert_eq!(status(&verification, name), Status::Skipped, "{name}");
    }
    assert!(matches!(
        read_manifest(&zip),
        Err(PackError::MissingManifest)
    ));
}

#[test]
fn manifest_that_is_not_json_fails() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    entries[0].1 = b"{\"format\": ".to_vec();
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Manifest), Status::Failed);
    assert!(detail(&verification, CheckName::Manifest).contains("not valid JSON"));
    assert_eq!(status(&verification, CheckName::Signature), Status::Skipped);
    assert!(matches!(
        read_manifest(&zip),
        Err(PackError::ManifestNotJson { .. })
    ));
}

#[test]
fn duplicate_manifest_member_fails() {
    let key = common::key();
    let mut entries = common::entries(&common::pack(&key));
    let text = String::from_utf8(entries[0].1.clone()).unwrap();
    let text = text.replacen("{\n", "{\n  \"pack_id\": \"another\",\n", 1);
    entries[0].1 = text.into_bytes();
    let zip = common::zip_of(&entries);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Manifest), Status::Failed);
    let manifest = detail(&verification, CheckName::Manifest);
    assert!(manifest.contains("\"pack_id\" appears twice"), "{manifest}");
}

#[test]
fn schema_errors_name_json_pointer() {
    let key = common::key();
    let zip = common::pack(&key);
    let mut manifest = common::manifest_value(&zip);
    manifest["pupil"]["upn"] = "G99940012500".into();
    manifest["school"]["motto"] = "extra".into();
    manifest["figures"]["from"] = "2026-02-30".into();
    common::sign(&mut manifest, &key);
    let zip = common::with_manifest(&zip, &manifest);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert!(!verification.is_valid());
    assert_eq!(status(&verification, CheckName::Schema), Status::Failed);
    let schema = detail(&verification, CheckName::Schema);
    assert!(schema.starts_with("3 schema errors"), "{schema}");
    assert!(schema.contains("/pupil/upn: "), "{schema}");
    assert!(schema.contains("/school: "), "{schema}");
    assert!(schema.contains("motto"), "{schema}");
    assert!(schema.contains("/figures/from: "), "{schema}");
    // The signature covers what was signed, valid or not.
    assert_eq!(status(&verification, CheckName::Signature), Status::Passed);
}

#[test]
fn extra_member_fails_schema_but_reads() {
    let key = common::key();
    let zip = common::pack(&key);
    let mut manifest = common::manifest_value(&zip);
    manifest["added_later"] = true.into();
    common::sign(&mut manifest, &key);
    let zip = common::with_manifest(&zip, &manifest);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    let schema = detail(&verification, CheckName::Schema);
    assert!(schema.contains("(the manifest): "), "{schema}");
    assert!(schema.contains("added_later"), "{schema}");
    // The types ignore members they do not know, so the manifest still reads.
    assert!(verification.manifest().is_some());
    assert!(read_manifest(&zip).is_ok());
}

#[test]
fn newer_format_version_says_upgrade() {
    let key = common::key();
    let zip = common::pack(&key);
    let mut manifest = common::manifest_value(&zip);
    manifest["pack_format_version"] = 2.into();
    common::sign(&mut manifest, &key);
    let zip = common::with_manifest(&zip, &manifest);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert_eq!(status(&verification, CheckName::Format), Status::Failed);
    let format = detail(&verification, CheckName::Format);
    assert!(
        format.contains("made by a newer rollcall; upgrade to read it"),
        "{format}"
    );
    assert_eq!(status(&verification, CheckName::Signature), Status::Skipped);
    assert!(matches!(
        read_manifest(&zip),
        Err(PackError::NewerFormatVersion { found: 2 })
    ));
}

#[test]
fn other_format_is_rejected() {
    let key = common::key();
    let zip = common::pack(&key);
    let mut manifest = common::manifest_value(&zip);
    manifest["format"] = "something-else".into();
    let zip = common::with_manifest(&zip, &manifest);

    let verification = verify_pack(&zip, None);

    assert_eq!(status(&verification, CheckName::Format), Status::Failed);
    assert!(detail(&verification, CheckName::Format).contains("\"something-else\""));
    assert!(matches!(
        read_manifest(&zip),
        Err(PackError::WrongFormat { .. })
    ));
}

#[test]
fn key_id_that_does_not_match_key_fails() {
    let key = common::key();
    let zip = common::pack(&key);
    let mut manifest = common::manifest_value(&zip);
    manifest["signature"]["key_id"] = "0123456789abcdef".into();
    let zip = common::with_manifest(&zip, &manifest);

    let verification = verify_pack(&zip, None);

    assert_eq!(status(&verification, CheckName::Signature), Status::Failed);
    let signature = detail(&verification, CheckName::Signature);
    assert!(
        signature.contains("signature.key_id is \"0123456789abcdef\""),
        "{signature}"
    );
}

#[test]
fn not_a_zip_fails_cleanly() {
    let verification = verify_pack(b"date,session,code\n2026-09-15,AM,O\n", None);

    assert!(!verification.is_valid());
    assert_eq!(status(&verification, CheckName::Archive), Status::Failed);
    assert!(detail(&verification, CheckName::Archive).contains("not a ZIP archive"));
    for name in &CheckName::ALL[1..] {
        assert_eq!(status(&verification, *name), Status::Skipped, "{name}");
    }
    assert!(verification.manifest().is_none());
    assert!(matches!(
        read_manifest(b"not a zip"),
        Err(PackError::InvalidArchive { .. })
    ));
}

/// Builds a ZIP archive with one entry of 32 MiB of zeros, which deflate to about 32 KiB.
fn zeros_zip(name: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file(name, options).unwrap();
    let chunk = vec![0u8; 1024 * 1024];
    for _ in 0..32 {
        zip.write_all(&chunk).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[test]
fn zip_bomb_over_limit_fails_before_reading() {
    let zip = zeros_zip("bomb.bin");
    assert!(zip.len() < 1024 * 1024);
    let limits = Limits {
        max_total_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };

    let verification = verify_pack_with_limits(&zip, None, &limits);

    assert_eq!(status(&verification, CheckName::Archive), Status::Failed);
    let archive = detail(&verification, CheckName::Archive);
    assert!(archive.contains("more than the limit"), "{archive}");
    assert_eq!(status(&verification, CheckName::Manifest), Status::Skipped);
}

#[test]
fn zip_bomb_with_false_size_stops() {
    // The headers claim 1 KiB, but the data inflates to 32 MiB. Reading must stop near 1 KiB.
    let zip = set_declared_size(&zeros_zip("bomb.bin"), "bomb.bin", 1024);

    let verification = verify_pack(&zip, None);

    assert_eq!(status(&verification, CheckName::Archive), Status::Failed);
    let archive = detail(&verification, CheckName::Archive);
    assert!(archive.starts_with("bomb.bin: "), "{archive}");
    assert_eq!(status(&verification, CheckName::Manifest), Status::Failed);
}

#[test]
fn default_limit_rejects_large_declared_size() {
    // Headers that claim 300 MiB are rejected without decompressing anything.
    let zip = set_declared_size(&zeros_zip("bomb.bin"), "bomb.bin", 300 * 1024 * 1024);

    let verification = verify_pack(&zip, None);

    let archive = detail(&verification, CheckName::Archive);
    assert!(
        archive.contains("more than the limit of 268435456 bytes"),
        "{archive}"
    );
}

/// Replaces every occurrence of `from` in `bytes` with `to`, which has the same length.
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut result = bytes.to_vec();
    let mut index = 0;
    while index + from.len() <= result.len() {
        if &result[index..index + from.len()] == from {
            result[index..index + from.len()].copy_from_slice(to);
            index += from.len();
        } else {
            index += 1;
        }
    }
    result
}

/// Overwrites the uncompressed size of the entry `name` in its local header and its central
/// directory header.
fn set_declared_size(zip: &[u8], name: &str, size: u32) -> Vec<u8> {
    const LOCAL: &[u8] = b"PK\x03\x04";
    const CENTRAL: &[u8] = b"PK\x01\x02";
    let mut result = zip.to_vec();
    let mut patched = 0;
    for start in 0..result.len().saturating_sub(46) {
        let (size_at, name_length_at, name_at) = if result[start..].starts_with(LOCAL) {
            (start + 22, start + 26, start + 30)
        } else if result[start..].starts_with(CENTRAL) {
            (start + 24, start + 28, start + 46)
        } else {
            continue;
        };
        let name_length = usize::from(u16::from_le_bytes([
            result[name_length_at],
            result[name_length_at + 1],
        ]));
        if result.get(name_at..name_at + name_length) == Some(name.as_bytes()) {
            result[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(
        patched, 2,
        "expected one local and one central header for {name}"
    );
    result
}
