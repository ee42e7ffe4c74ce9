//! The key referral packs are signed with: read from its PEM file, or created on first start.

use std::path::Path;

use anyhow::Context;
use rollcall_pack::SigningKey;

/// Reads the signing key the settings name. A missing file is an error, never a new key.
pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    if !path.exists() {
        anyhow::bail!(
            "signing_key_file {} does not exist; fix the path in the referral settings, or \
             leave signing_key_file out to use the key under the data folder",
            path.display()
        );
    }
    load_or_create_signing_key(path)
}

/// Reads the signing key from `path`, creating a new key there when the file does not exist.
/// A new key's file is readable by its owner only.
pub fn load_or_create_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => SigningKey::from_pkcs8_pem(&pem).with_context(|| {
            format!(
                "{} is not a PKCS#8 PEM Ed25519 key; point signing_key_file at the trust's pack \
                 signing key, or remove the file to have a new key created",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate().context("creating a pack signing key")?;
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)
                    .with_context(|| format!("cannot create folder {}", folder.display()))?;
            }
            let pem = key
                .to_pkcs8_pem()
                .context("encoding the pack signing key")?;
            write_private(path, pem.as_bytes())
                .with_context(|| format!("cannot write the pack signing key {}", path.display()))?;
            tracing::info!(
                key_id = %key.verifying_key().key_id(),
                path = %path.display(),
                "Pack signing key created"
            );
            Ok(key)
        }
        Err(error) => Err(error)
            .with_context(|| format!("cannot read the pack signing key {}", path.display())),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_reads_back() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("keys").join("pack-signing.pem");
        let created = load_or_create_signing_key(&path).expect("created");
        let read = load_or_create_signing_key(&path).expect("read");
        assert_eq!(
            created.verifying_key().key_id(),
            read.verifying_key().key_id()
        );
        std::fs::write(&path, "not a key").expect("overwrite");
        let error = load_or_create_signing_key(&path).expect_err("bad PEM");
        assert!(
            format!("{error:#}").contains("signing_key_file"),
            "{error:#}"
        );
    }

    #[test]
    fn configured_key_is_never_created() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("typo.pem");
        let error = read_signing_key(&path).expect_err("missing key");
        assert!(format!("{error:#}").contains("typo.pem"), "{error:#}");
        assert!(!path.exists(), "no key was created");
    }
}
