//! Shared fixtures: a sample manifest and files, and helpers that take a pack apart and put it
//! back together the way a tamperer would.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{Cursor, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use rollcall_pack::{Manifest, PackFile, SigningKey, canonical_json, write_pack};
use serde_json::Value;
use zip::write::SimpleFileOptions;

/// Returns the sample manifest: a penalty notice referral with one parent.
pub fn manifest() -> Manifest {
    serde_json::from_str(include_str!("../data/manifest.json")).unwrap()
}

/// Returns the sample data files, one of them in a folder.
pub fn files() -> Vec<PackFile> {
    vec![
        PackFile {
            name: "attendance.csv".to_owned(),
            media_type: "text/csv".to_owned(),
            bytes: b"date,session,code,meaning,category,minutes_late,source,recorded_by\n\
2026-09-15,AM,O,Unauthorised absence not covered by any other code,unauthorised_absence,0,register,teacher\n"
                .to_vec(),
        },
        PackFile {
            name: "chronology.csv".to_owned(),
            media_type: "text/csv".to_owned(),
            bytes: b"occurred_on,recorded_at,entry,stage,by_role,summary\n\
2026-09-24,2026-09-24T15:10:00Z,letter,concern,attendance_lead,First attendance concern letter sent\n"
                .to_vec(),
        },
        PackFile {
            name: "letters/attendance-concern-2026-09-24.pdf".to_owned(),
            media_type: "application/pdf".to_owned(),
            bytes: b"%PDF-1.7\n% a stand-in for the letter\n%%EOF\n".to_vec(),
        },
    ]
}

/// Generates a signing key.
pub fn key() -> SigningKey {
    SigningKey::generate().unwrap()
}

/// Writes a pack of the sample manifest and files, signed with `key`.
pub fn pack(key: &SigningKey) -> Vec<u8> {
    write_pack(&manifest(), &files(), key).unwrap()
}

/// Returns every entry of a ZIP archive as (name, bytes), in archive order.
pub fn entries(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    (0..archive.len())
        .map(|index| {
            let mut file = archive.by_index(index).unwrap();
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).unwrap();
            (file.name().to_owned(), bytes)
        })
        .collect()
}

/// Builds a ZIP archive from (name, bytes) entries, deflated, in the order given.
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Returns the manifest of a pack as a JSON value.
pub fn manifest_value(zip: &[u8]) -> Value {
    let entries = entries(zip);
    let (_, bytes) = entries
        .iter()
        .find(|(name, _)| name == "manifest.json")
        .unwrap();
    serde_json::from_slice(bytes).unwrap()
}

/// Replaces the manifest of a pack with `manifest`, keeping every other entry as it is.
pub fn with_manifest(zip: &[u8], manifest: &Value) -> Vec<u8> {
    let mut entries = entries(zip);
    for (name, bytes) in &mut entries {
        if name == "manifest.json" {
            *bytes = serde_json::to_vec_pretty(manifest).unwrap();
        }
    }
    zip_of(&entries)
}

/// Signs `manifest` with `key` the way the format defines, replacing its signature, as a
/// tamperer with their own key would.
pub fn sign(manifest: &mut Value, key: &SigningKey) {
    let pem = key.to_pkcs8_pem().unwrap();
    let dalek = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let mut unsigned = manifest.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    let message = canonical_json(&unsigned).unwrap();
    let verifying = key.verifying_key();
    manifest["signature"] = serde_json::json!({
        "algorithm": "ed25519",
        "key_id": verifying.key_id(),
        "public_key": BASE64.encode(verifying.as_bytes()),
        "value": BASE64.encode(dalek.sign(&message).to_bytes()),
    });
}
