//! Locating the PostgreSQL server programs and the OS user to run them as.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Directory that Debian and Ubuntu packages install each major version under, as
/// `/usr/lib/postgresql/<version>/bin`.
const DEBIAN_VERSIONS_DIR: &str = "/usr/lib/postgresql";

/// Paths of the PostgreSQL programs that the throwaway server needs.
#[derive(Debug, Clone)]
pub(crate) struct PgBinaries {
    pub(crate) initdb: PathBuf,
    pub(crate) pg_ctl: PathBuf,
}

/// Finds a directory that contains `initdb`, `pg_ctl` and `postgres`, searching `PATH` first
/// and then the Debian layout, highest major version first.
pub(crate) fn find_pg_binaries() -> anyhow::Result<PgBinaries> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    candidates.extend(debian_bin_dirs());

    for dir in candidates {
        let has_all = ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|program| is_executable(&dir.join(program)));
        if has_all {
            return Ok(PgBinaries {
                initdb: dir.join("initdb"),
                pg_ctl: dir.join("pg_ctl"),
            });
        }
    }

    bail!(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) were not found in PATH or in \
         {DEBIAN_VERSIONS_DIR}/*/bin. Install PostgreSQL (Debian: `apt-get install -y \
         postgresql`) or set {} to a postgres:// URL of a server where the user may CREATE \
         DATABASE.",
        crate::DATABASE_URL_ENV
    )
}

/// Returns `/usr/lib/postgresql/<version>/bin` for every installed version, highest first.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(DEBIAN_VERSIONS_DIR) else {
        return Vec::new();
    };

    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = parse_version(&entry.file_name())?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// Parses a directory name such as `16` or `9.6` into its numeric components.
fn parse_version(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?
        .split('.')
        .map(|part| part.parse().ok())
        .collect()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Returns whether the process runs with effective user id 0.
///
/// PostgreSQL refuses to run as root, so in that case the server runs as the `postgres` OS
/// user. The id comes from `/proc/self/status`, or from `id -u` where `/proc` is missing,
/// because the workspace forbids the `unsafe` that `geteuid` would need.
pub(crate) fn running_as_root() -> anyhow::Result<bool> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(uid) = effective_uid_from_status(&status)
    {
        return Ok(uid == 0);
    }

    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("failed to run `id -u` to find the current user id")?;
    if !output.status.success() {
        bail!("`id -u` failed with {}", output.status);
    }
    let uid: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("`id -u` printed an invalid user id")?;
    Ok(uid == 0)
}

/// Reads the effective user id from the `Uid:` line of `/proc/<pid>/status`, whose fields are
/// the real, effective, saved and file-system ids.
fn effective_uid_from_status(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_second_field() {
        let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid_from_status(status), Some(0));
    }

    #[test]
    fn effective_uid_missing_line() {
        assert_eq!(effective_uid_from_status("Name:\tcargo\n"), None);
    }

    #[test]
    fn parse_version_accepts_numbers() {
        assert_eq!(parse_version(OsStr::new("16")), Some(vec![16]));
        assert_eq!(parse_version(OsStr::new("9.6")), Some(vec![9, 6]));
        assert_eq!(parse_version(OsStr::new("common")), None);
    }

    #[test]
    fn running_as_root_matches_id() {
        let output = Command::new("id").arg("-u").output().expect("`id -u` runs");
        let uid = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let is_root = running_as_root().expect("user id is readable");
        assert_eq!(is_root, uid == "0");
    }
}
