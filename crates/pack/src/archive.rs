//! Reading a pack's ZIP archive into memory within size limits.
//!
//! Nothing is ever extracted to disk, so an unsafe entry name cannot overwrite a file here. It
//! is still reported, because a person who unzips the pack with another tool could be harmed.

use std::io::{Cursor, Read};

use zip::ZipArchive;

use crate::PackError;

/// The name of the manifest entry.
pub(crate) const MANIFEST_NAME: &str = "manifest.json";

/// Size limits applied while reading a pack, so that a ZIP bomb fails cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest total uncompressed size of all entries, in bytes.
    pub max_total_bytes: u64,
    /// The largest number of entries in the archive.
    pub max_entries: usize,
}

impl Default for Limits {
    /// 256 MiB in at most 10,000 entries. A pack contains a manifest, two attendance files, a
    /// chronology, a summary and some letters, so real packs stay far below both.
    fn default() -> Self {
        Self {
            max_total_bytes: 256 * 1024 * 1024,
            max_entries: 10_000,
        }
    }
}

/// One entry of the archive, in archive order.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    /// The uncompressed bytes, or `None` when the entry could not be read.
    pub(crate) content: Option<Vec<u8>>,
}

/// The archive as read, with every problem found on the way.
#[derive(Debug)]
pub(crate) struct Archive {
    pub(crate) entries: Vec<Entry>,
    pub(crate) problems: Vec<String>,
    pub(crate) total_bytes: u64,
}

impl Archive {
    pub(crate) fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.name == name)
    }
}

/// Reads every entry of `zip` into memory.
///
/// Returns an error only when nothing can be read safely: the bytes are not a ZIP archive, or
/// the entries declare more than the limits allow. Other problems (unsafe names, unreadable or
/// oversized entries, two entries with one name) are listed in [`Archive::problems`] and the
/// other entries are still read.
pub(crate) fn read(zip: &[u8], limits: &Limits) -> Result<Archive, String> {
    let mut archive = ZipArchive::new(Cursor::new(zip))
        .map_err(|error| format!("not a ZIP archive ({error})"))?;
    let mut problems = Vec::new();

    if archive.len() > limits.max_entries {
        return Err(format!(
            "the archive has {} entries, more than the limit of {}",
            archive.len(),
            limits.max_entries
        ));
    }
    if let Some(declared) = declared_entry_count(zip)
        && declared != archive.len() as u64
    {
        problems.push(format!(
            "the archive's directory lists {declared} entries but only {} different names, so \
             some entries share a name and different tools could read different files",
            archive.len()
        ));
    }

    let mut declared_total: u64 = 0;
    for index in 0..archive.len() {
        let size = archive
            .by_index_raw(index)
            .map_err(|error| format!("entry {index} cannot be read ({error})"))?
            .size();
        declared_total = declared_total.saturating_add(size);
    }
    if declared_total > limits.max_total_bytes {
        return Err(format!(
            "the entries declare {declared_total} bytes uncompressed, more than the limit of {} \
             bytes",
            limits.max_total_bytes
        ));
    }

    let mut entries = Vec::with_capacity(archive.len());
    let mut total_bytes: u64 = 0;
    for index in 0..archive.len() {
        let listed_name = archive.name_for_index(index).unwrap_or_default().to_owned();
        let mut file = match archive.by_index(index) {
            Ok(file) => file,
            Err(error) => {
                let name = listed_name;
                problems.push(format!("{name}: cannot be read ({error})"));
                entries.push(Entry {
                    name,
                    content: None,
                });
                continue;
            }
        };
        let name = file.name().to_owned();
        if let Some(reason) = unsafe_name_reason(&name) {
            problems.push(format!("{name:?}: unsafe entry name, {reason}"));
        }

        // Reading one byte past the declared size shows an entry that contains more than its
        // header declares, without ever decompressing more than the declared total allows.
        let declared = file.size();
        let mut content = Vec::new();
        let read = (&mut file).take(declared + 1).read_to_end(&mut content);
        let content = match read {
            Err(error) => {
                problems.push(format!("{name}: cannot be decompressed ({error})"));
                None
            }
            Ok(_) if content.len() as u64 > declared => {
                problems.push(format!(
                    "{name}: contains more than the {declared} bytes its header declares, so \
                     reading stopped there (the archive may be a ZIP bomb)"
                ));
                None
            }
            Ok(_) if (content.len() as u64) < declared => {
                problems.push(format!(
                    "{name}: contains {} bytes, fewer than the {declared} its header declares",
                    content.len()
                ));
                None
            }
            Ok(_) => {
                total_bytes += declared;
                Some(content)
            }
        };
        entries.push(Entry { name, content });
    }

    Ok(Archive {
        entries,
        problems,
        total_bytes,
    })
}

/// Reads only `manifest.json`, within the limits.
pub(crate) fn read_manifest_entry(zip: &[u8], limits: &Limits) -> Result<Vec<u8>, PackError> {
    let mut archive =
        ZipArchive::new(Cursor::new(zip)).map_err(|error| PackError::InvalidArchive {
            reason: format!("not a ZIP archive ({error})"),
        })?;
    let mut file = match archive.by_name(MANIFEST_NAME) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Err(PackError::MissingManifest),
        Err(error) => {
            return Err(PackError::InvalidArchive {
                reason: format!("manifest.json cannot be read ({error})"),
            });
        }
    };
    let declared = file.size();
    if declared > limits.max_total_bytes {
        return Err(PackError::InvalidArchive {
            reason: format!(
                "manifest.json declares {declared} bytes, more than the limit of {} bytes",
                limits.max_total_bytes
            ),
        });
    }
    let mut content = Vec::new();
    (&mut file)
        .take(declared + 1)
        .read_to_end(&mut content)
        .map_err(|error| PackError::InvalidArchive {
            reason: format!("manifest.json cannot be decompressed ({error})"),
        })?;
    if content.len() as u64 != declared {
        return Err(PackError::InvalidArchive {
            reason: format!("manifest.json does not hold the {declared} bytes its header declares"),
        });
    }
    Ok(content)
}

/// Returns why an entry name is unsafe to extract, or `None` when it is safe.
pub(crate) fn unsafe_name_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("the name is empty");
    }
    if name.contains('\\') {
        return Some("it contains a backslash");
    }
    if name.chars().any(char::is_control) {
        return Some("it contains a control character");
    }
    if name.starts_with('/') {
        return Some("it is an absolute path");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Some("it starts with a Windows drive letter");
    }
    // A folder entry ends in one '/'. Any other empty part comes from a doubled '/'.
    let path = name.strip_suffix('/').unwrap_or(name);
    for part in path.split('/') {
        match part {
            ".." => return Some("it climbs out of the folder with '..'"),
            "" | "." => return Some("it has an empty or '.' path part"),
            _ => {}
        }
    }
    None
}

/// Returns the number of entries that the end of central directory record declares, reading
/// the ZIP64 record when the plain one records 0xFFFF. Returns `None` when no record is found.
///
/// The zip crate keeps one entry per name, so comparing this count with its entry count shows
/// whether two entries share a name.
fn declared_entry_count(zip: &[u8]) -> Option<u64> {
    const END_SIGNATURE: &[u8; 4] = b"PK\x05\x06";
    const END_LENGTH: usize = 22;
    const MAX_COMMENT: usize = 0xFFFF;
    const ZIP64_LOCATOR_SIGNATURE: &[u8; 4] = b"PK\x06\x07";
    const ZIP64_LOCATOR_LENGTH: usize = 20;
    const ZIP64_END_SIGNATURE: &[u8; 4] = b"PK\x06\x06";

    let last_start = zip.len().checked_sub(END_LENGTH)?;
    let first_start = last_start.saturating_sub(MAX_COMMENT);
    let end = (first_start..=last_start)
        .rev()
        .find(|&start| zip[start..].starts_with(END_SIGNATURE))?;
    let count = u16::from_le_bytes([zip[end + 10], zip[end + 11]]);
    if count != 0xFFFF {
        return Some(u64::from(count));
    }

    // NOTE: no test covers this ZIP64 branch, because the pack writer never makes ZIP64
    // archives and the tests build none by hand.
    let locator = end.checked_sub(ZIP64_LOCATOR_LENGTH)?;
    if !zip[locator..].starts_with(ZIP64_LOCATOR_SIGNATURE) {
        return Some(u64::from(count));
    }
    let offset = usize::try_from(read_u64(zip, locator + 8)?).ok()?;
    if !zip.get(offset..)?.starts_with(ZIP64_END_SIGNATURE) {
        return None;
    }
    read_u64(zip, offset + 32)
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let slice: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(slice))
}

#[cfg(test)]
mod tests {
    use super::unsafe_name_reason;

    #[test]
    fn safe_names_pass() {
        for name in [
            "manifest.json",
            "letters/letter.pdf",
            "letters/",
            "a..b.csv",
        ] {
            assert_eq!(unsafe_name_reason(name), None, "{name}");
        }
    }

    #[test]
    fn unsafe_names_are_named() {
        let cases = [
            ("", "the name is empty"),
            ("../evil", "it climbs out of the folder with '..'"),
            (
                "letters/../../evil",
                "it climbs out of the folder with '..'",
            ),
            ("/etc/passwd", "it is an absolute path"),
            ("C:/evil", "it starts with a Windows drive letter"),
            ("letters\\evil.pdf", "it contains a backslash"),
            ("letters//evil.pdf", "it has an empty or '.' path part"),
            ("./evil", "it has an empty or '.' path part"),
            ("evil\n.pdf", "it contains a control character"),
        ];
        for (name, reason) in cases {
            assert_eq!(unsafe_name_reason(name), Some(reason), "{name:?}");
        }
    }
}
