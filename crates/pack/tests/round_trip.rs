//! Writing packs and reading them back.

#![allow(clippy::unwrap_used)]

mod common;

use proptest::prelude::*;
use rollcall_pack::{
    CheckName, FORMAT, FORMAT_VERSION, PackError, PackFile, ReferralKind, Status, read_manifest,
    verify_pack, write_pack,
};
use sha2::{Digest, Sha256};

#[test]
fn written_pack_verifies() {
    let key = common::key();
    let zip = common::pack(&key);

    let verification = verify_pack(&zip, Some(&key.verifying_key()));

    assert!(verification.is_valid(), "{verification}");
    assert_eq!(verification.checks().len(), CheckName::ALL.len());
    for check in verification.checks() {
        assert_eq!(check.status, Status::Passed, "{verification}");
    }
    assert!(verification.manifest().is_some());
}

#[test]
fn read_manifest_returns_written_values() {
    let key = common::key();
    let zip = common::pack(&key);

    let read = read_manifest(&zip).unwrap();

    let mut expected = common::manifest();
    expected.files = read.files.clone();
    expected.signature = read.signature.clone();
    assert_eq!(read, expected);
    assert_eq!(read.signature.key_id, key.verifying_key().key_id());
    assert_eq!(read.signature.algorithm, "ed25519");
}

#[test]
fn files_list_has_hashes_and_sizes() {
    let zip = common::pack(&common::key());

    let read = read_manifest(&zip).unwrap();

    let files = common::files();
    assert_eq!(read.files.len(), files.len());
    for (listed, file) in read.files.iter().zip(&files) {
        assert_eq!(listed.name, file.name);
        assert_eq!(listed.media_type, file.media_type);
        assert_eq!(listed.bytes, file.bytes.len() as u64);
        assert_eq!(listed.sha256, hex::encode(Sha256::digest(&file.bytes)));
    }
}

#[test]
fn same_input_gives_identical_bytes() {
    let key = common::key();

    let first = common::pack(&key);
    let second = common::pack(&key);

    assert_eq!(first, second);
}

#[test]
fn manifest_first_then_files_in_order() {
    let zip = common::pack(&common::key());

    let names: Vec<String> = common::entries(&zip)
        .into_iter()
        .map(|(name, _)| name)
        .collect();

    assert_eq!(
        names,
        [
            "manifest.json",
            "attendance.csv",
            "chronology.csv",
            "letters/attendance-concern-2026-09-24.pdf"
        ]
    );
}

#[test]
fn entries_are_deflated_with_created_at_time() {
    let zip = common::pack(&common::key());

    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&zip)).unwrap();
    for index in 0..archive.len() {
        let file = archive.by_index(index).unwrap();
        assert_eq!(
            file.compression(),
            zip::CompressionMethod::Deflated,
            "{}",
            file.name()
        );
        let time = file.last_modified().unwrap();
        assert_eq!(
            (
                time.year(),
                time.month(),
                time.day(),
                time.hour(),
                time.minute()
            ),
            (2026, 10, 14, 9, 30),
            "{}",
            file.name()
        );
    }
}

#[test]
fn caller_format_files_and_signature_are_replaced() {
    let mut manifest = common::manifest();
    manifest.format = "something-else".to_owned();
    manifest.pack_format_version = 7;
    manifest.files = vec![rollcall_pack::FileEntry {
        name: "stale.csv".to_owned(),
        media_type: "text/csv".to_owned(),
        sha256: "0".repeat(64),
        bytes: 1,
    }];
    manifest.signature.key_id = "stale".to_owned();
    let key = common::key();

    let zip = write_pack(&manifest, &common::files(), &key).unwrap();

    let read = read_manifest(&zip).unwrap();
    assert_eq!(read.format, FORMAT);
    assert_eq!(read.pack_format_version, FORMAT_VERSION);
    assert_eq!(read.files.len(), 3);
    assert_eq!(read.signature.key_id, key.verifying_key().key_id());
    assert!(verify_pack(&zip, Some(&key.verifying_key())).is_valid());
}

#[test]
fn pack_without_files_or_parents_verifies() {
    let mut manifest = common::manifest();
    manifest.referral.kind = ReferralKind::AttendanceOfficer;
    manifest.parents.clear();
    let key = common::key();

    let zip = write_pack(&manifest, &[], &key).unwrap();

    let verification = verify_pack(&zip, Some(&key.verifying_key()));
    assert!(verification.is_valid(), "{verification}");
}

#[test]
fn temporary_upn_is_accepted() {
    let mut manifest = common::manifest();
    manifest.pupil.upn = "X99940012501A".to_owned();
    let key = common::key();

    let zip = write_pack(&manifest, &common::files(), &key).unwrap();

    assert!(verify_pack(&zip, Some(&key.verifying_key())).is_valid());
}

#[test]
fn override_is_carried() {
    let mut manifest = common::manifest();
    manifest.referral.override_ = Some(rollcall_pack::Override {
        by: "Jo Head".to_owned(),
        role: "headteacher".to_owned(),
        reason: "The family did not attend two offered meetings.".to_owned(),
        at: "2026-10-13T16:00:00Z".parse().unwrap(),
    });
    manifest.prerequisites[1].met = false;
    manifest.prerequisites[1].overridden = true;
    let key = common::key();

    let zip = write_pack(&manifest, &common::files(), &key).unwrap();

    let read = read_manifest(&zip).unwrap();
    assert_eq!(read.referral.override_, manifest.referral.override_);
    assert!(verify_pack(&zip, Some(&key.verifying_key())).is_valid());
}

#[test]
fn timestamps_are_written_in_utc_with_z() {
    let zip = common::pack(&common::key());

    let manifest = common::manifest_value(&zip);

    assert_eq!(manifest["created_at"], "2026-10-14T09:30:00Z");
    assert_eq!(manifest["referral"]["submitted_at"], "2026-10-14T09:29:12Z");
    assert_eq!(manifest["pupil"]["date_of_birth"], "2014-03-02");
}

#[test]
fn invalid_file_names_are_rejected() {
    let key = common::key();
    let cases = [
        "",
        "Attendance.csv",
        "../evil.csv",
        "/etc/passwd",
        "letters/2026/letter.pdf",
        "letters\\letter.pdf",
        ".hidden",
        "letters/",
        "with space.csv",
        "manifest.json",
    ];
    for name in cases {
        let files = [PackFile {
            name: name.to_owned(),
            media_type: "text/plain".to_owned(),
            bytes: b"x".to_vec(),
        }];

        let result = write_pack(&common::manifest(), &files, &key);

        assert!(
            matches!(result, Err(PackError::InvalidFileName { .. })),
            "{name:?}: {result:?}"
        );
    }
}

#[test]
fn duplicate_file_names_are_rejected() {
    let mut files = common::files();
    files.push(files[0].clone());

    let result = write_pack(&common::manifest(), &files, &common::key());

    assert!(
        matches!(&result, Err(PackError::DuplicateFileName { name }) if name == "attendance.csv"),
        "{result:?}"
    );
}

#[test]
fn invalid_manifest_is_not_written() {
    let mut manifest = common::manifest();
    manifest.pupil.upn = "I99940012500".to_owned();

    let result = write_pack(&manifest, &common::files(), &common::key());

    let Err(PackError::InvalidManifest { violations }) = result else {
        panic!("expected InvalidManifest, got {result:?}");
    };
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].pointer, "/pupil/upn");
}

#[test]
fn bad_media_type_is_not_written() {
    let mut files = common::files();
    files[0].media_type = "CSV".to_owned();

    let result = write_pack(&common::manifest(), &files, &common::key());

    let Err(PackError::InvalidManifest { violations }) = result else {
        panic!("expected InvalidManifest, got {result:?}");
    };
    assert_eq!(violations[0].pointer, "/files/0/media_type");
}

#[test]
fn invalid_sex_is_not_written() {
    let mut manifest = common::manifest();
    manifest.pupil.sex = "male".to_owned();

    let result = write_pack(&manifest, &common::files(), &common::key());

    let Err(PackError::InvalidManifest { violations }) = result else {
        panic!("expected InvalidManifest, got {result:?}");
    };
    assert_eq!(violations[0].pointer, "/pupil/sex");
}

#[test]
fn laestab_must_join_its_parts() {
    let mut manifest = common::manifest();
    manifest.school.establishment_number = "4002".to_owned();

    let result = write_pack(&manifest, &common::files(), &common::key());

    assert!(
        matches!(result, Err(PackError::LaestabMismatch { .. })),
        "{result:?}"
    );
}

#[test]
fn report_has_one_line_per_check() {
    let key = common::key();
    let zip = common::pack(&key);

    let report = verify_pack(&zip, Some(&key.verifying_key())).to_string();

    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), CheckName::ALL.len() + 1, "{report}");
    assert!(lines[0].starts_with("ok   archive    "), "{report}");
    let signature_line = format!(
        "ok   signature  ed25519 key {}",
        key.verifying_key().key_id()
    );
    assert_eq!(lines[5], signature_line, "{report}");
    assert_eq!(lines[7], "valid: every check passed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any attendance percentage survives writing, parsing and canonicalising unchanged, so the
    /// signature over it verifies.
    #[test]
    fn any_attendance_percent_verifies(percent in 0.0f64..=100.0) {
        let mut manifest = common::manifest();
        manifest.figures.attendance_percent = percent;
        let key = common::key();

        let zip = write_pack(&manifest, &common::files(), &key).unwrap();

        let verification = verify_pack(&zip, Some(&key.verifying_key()));
        prop_assert!(verification.is_valid(), "{}", verification);
        let read = read_manifest(&zip).unwrap();
        prop_assert_eq!(read.figures.attendance_percent.to_bits(), percent.to_bits());
    }
}
