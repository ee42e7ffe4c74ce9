//! A folder destination, such as a mounted secure file transfer share.
//!
//! The pack is written under a temporary name in the same folder, flushed to disk, then
//! renamed, so that a reader never sees half a pack. A receipt file,
//! `<file_name>.receipt.json`, is written the same way beside it once the pack is in place.
//! A pack file that is already there with the same SHA-256 counts as delivered.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::delivery::config::DestinationConfig;
use crate::delivery::destination::{DeliverError, Outgoing, Receipt};

/// A folder destination.
#[derive(Debug)]
pub(crate) struct DirectoryDestination {
    pub(crate) name: String,
    pub(crate) folder: PathBuf,
    pub(crate) timeout: Duration,
}

/// The receipt file written beside each pack.
#[derive(Debug, Serialize, Deserialize)]
struct ReceiptFile {
    referral_id: String,
    pack_id: String,
    laestab: String,
    file_name: String,
    sha256: String,
    /// RFC 3339, UTC.
    written_at: String,
    delivery_id: String,
}

impl DirectoryDestination {
    pub(crate) fn new(config: &DestinationConfig) -> anyhow::Result<Self> {
        let folder = config
            .path
            .clone()
            .with_context(|| format!("destination {:?} has no path", config.name))?;
        if folder.exists() && !folder.is_dir() {
            anyhow::bail!(
                "destination {:?}: {} is a file, not a folder; give the path of the folder \
                 packs are written to",
                config.name,
                folder.display()
            );
        }
        if !folder.is_dir() {
            tracing::warn!(
                destination = %config.name,
                folder = %folder.display(),
                "Delivery folder does not exist yet; deliveries to it are retried until it does"
            );
        }
        Ok(Self {
            name: config.name.clone(),
            folder,
            timeout: config.timeout(),
        })
    }

    /// Writes the pack and its receipt. File system calls block, so they run on tokio's
    /// blocking threads.
    pub(crate) async fn deliver(&self, outgoing: Arc<Outgoing>) -> Result<Receipt, DeliverError> {
        let folder = self.folder.clone();
        tokio::task::spawn_blocking(move || write_pack(&folder, &outgoing))
            .await
            .unwrap_or_else(|error| {
                Err(DeliverError::transient(format!(
                    "the file writer stopped: {error}"
                )))
            })
    }
}

fn write_pack(folder: &Path, outgoing: &Outgoing) -> Result<Receipt, DeliverError> {
    // Errors name the folder, which comes from the settings, but not the file: pack file
    // names contain the pupil's UPN.
    match std::fs::metadata(folder) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            return Err(DeliverError::transient(format!(
                "{} is not a folder: point the destination's path at a folder",
                folder.display()
            )));
        }
        Err(error) => {
            return Err(DeliverError::transient(format!(
                "delivery folder {} is not available: {error}; check that the share is \
                 mounted and the folder exists",
                folder.display()
            )));
        }
    }

    let target = folder.join(&outgoing.file_name);
    let receipt_path = folder.join(format!("{}.receipt.json", outgoing.file_name));
    let already_there = sha256_of_file(&target).map_err(|error| {
        DeliverError::transient(format!(
            "cannot read the existing pack file in {}: {error}",
            folder.display()
        ))
    })? == Some(outgoing.sha256.clone());

    if already_there && let Some(receipt) = existing_receipt(&receipt_path, outgoing) {
        return Ok(Receipt {
            receipt_id: receipt.delivery_id,
            received_at: parse_time(&receipt.written_at).unwrap_or_else(Utc::now),
            path: target.display().to_string(),
            http_status: 0,
        });
    }
    if !already_there {
        write_atomically(
            folder,
            &outgoing.file_name,
            &outgoing.delivery_id,
            &outgoing.pack,
        )
        .map_err(|error| {
            DeliverError::transient(format!(
                "cannot write the pack file into {}: {error}",
                folder.display()
            ))
        })?;
    }

    let written_at = Utc::now();
    let receipt = ReceiptFile {
        referral_id: outgoing.referral_id.clone(),
        pack_id: outgoing.pack_id.clone(),
        laestab: outgoing.laestab.clone(),
        file_name: outgoing.file_name.clone(),
        sha256: outgoing.sha256.clone(),
        written_at: written_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        delivery_id: outgoing.delivery_id.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&receipt).unwrap_or_default();
    json.push(b'\n');
    let receipt_name = format!("{}.receipt.json", outgoing.file_name);
    write_atomically(folder, &receipt_name, &outgoing.delivery_id, &json).map_err(|error| {
        DeliverError::transient(format!(
            "the pack file is in {} but its receipt file could not be written: {error}",
            folder.display()
        ))
    })?;
    Ok(Receipt {
        receipt_id: outgoing.delivery_id.clone(),
        received_at: written_at,
        path: target.display().to_string(),
        http_status: 0,
    })
}

/// Returns the receipt file beside a pack when it describes this same pack.
fn existing_receipt(path: &Path, outgoing: &Outgoing) -> Option<ReceiptFile> {
    let text = std::fs::read(path).ok()?;
    let receipt: ReceiptFile = serde_json::from_slice(&text).ok()?;
    (receipt.sha256 == outgoing.sha256 && receipt.referral_id == outgoing.referral_id)
        .then_some(receipt)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// Returns the SHA-256 of a file in lower-case hex, or `None` when there is no such file.
fn sha256_of_file(path: &Path) -> std::io::Result<Option<String>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(Some(hex::encode(hasher.finalize())))
}

/// Writes `bytes` to `folder/name` through a hidden temporary file in the same folder: write,
/// fsync, rename. A temporary file left by a failed attempt is removed.
fn write_atomically(
    folder: &Path,
    name: &str,
    delivery_id: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let temporary = folder.join(format!(".{name}.{delivery_id}.partial"));
    let result = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, folder.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
        return result;
    }
    // Flushing the folder makes the rename itself durable. Some network file systems do not
    // support it, and the file is complete either way, so a failure here is only logged.
    if let Err(error) = File::open(folder).and_then(|handle| handle.sync_all()) {
        tracing::debug!(folder = %folder.display(), %error, "Cannot flush the delivery folder");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(pack: &[u8]) -> Outgoing {
        Outgoing {
            delivery_id: "dlv-00000001".into(),
            referral_id: "ref-1".into(),
            pack_id: "pack-1".into(),
            laestab: "9192001".into(),
            file_name: "pack-1.zip".into(),
            sha256: hex::encode(Sha256::digest(pack)),
            pack: pack.to_vec(),
        }
    }

    #[test]
    fn pack_and_receipt_are_written() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let pack = outgoing(b"PK\x05\x06 first");
        let receipt = write_pack(folder.path(), &pack).expect("written");
        assert_eq!(
            std::fs::read(folder.path().join("pack-1.zip")).expect("pack"),
            pack.pack
        );
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(folder.path().join("pack-1.zip.receipt.json")).expect("receipt"),
        )
        .expect("JSON");
        assert_eq!(json["sha256"], pack.sha256.as_str());
        assert_eq!(json["referral_id"], "ref-1");
        assert_eq!(receipt.receipt_id, "dlv-00000001");
        let names: Vec<String> = std::fs::read_dir(folder.path())
            .expect("listing")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
    }

    #[test]
    fn same_pack_again_keeps_first_receipt() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let first = write_pack(folder.path(), &outgoing(b"PK\x05\x06 same")).expect("first");
        let mut again = outgoing(b"PK\x05\x06 same");
        again.delivery_id = "dlv-00000002".into();
        let second = write_pack(folder.path(), &again).expect("second");
        assert_eq!(second.receipt_id, first.receipt_id);
        assert_eq!(
            second.received_at.timestamp(),
            first.received_at.timestamp()
        );
    }

    #[test]
    fn rebuilt_pack_replaces_file() {
        let folder = tempfile::tempdir().expect("temporary folder");
        write_pack(folder.path(), &outgoing(b"PK\x05\x06 old")).expect("old");
        let mut rebuilt = outgoing(b"PK\x05\x06 new");
        rebuilt.delivery_id = "dlv-00000002".into();
        let receipt = write_pack(folder.path(), &rebuilt).expect("new");
        assert_eq!(receipt.receipt_id, "dlv-00000002");
        assert_eq!(
            std::fs::read(folder.path().join("pack-1.zip")).expect("pack"),
            b"PK\x05\x06 new"
        );
    }

    #[test]
    fn missing_folder_is_retryable() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let missing = folder.path().join("not-mounted");
        let error = write_pack(&missing, &outgoing(b"PK\x05\x06")).expect_err("no folder");
        let DeliverError::Transient { detail, .. } = error else {
            panic!("a missing folder is retried");
        };
        assert!(detail.contains("not-mounted"), "{detail}");
        assert!(detail.contains("mounted"), "{detail}");
        assert!(!detail.contains("pack-1.zip"), "{detail}");
    }

    #[test]
    fn file_in_place_of_folder_is_rejected() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let file = folder.path().join("outbox");
        std::fs::write(&file, b"not a folder").expect("file");
        let settings = format!(
            "[[destination]]\nname = \"la-share\"\nkind = \"directory\"\npath = {:?}\n",
            file.display().to_string()
        );
        let config = crate::DeliveryConfig::parse(&settings).expect("settings");
        let Err(error) = DirectoryDestination::new(&config.destinations[0]) else {
            panic!("a file is not a folder");
        };
        let message = error.to_string();
        assert!(message.contains("is a file, not a folder"), "{message}");
        assert!(message.contains("outbox"), "{message}");
    }
}
