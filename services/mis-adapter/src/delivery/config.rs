//! The delivery settings `rollcall serve --delivery FILE` reads: where referral packs go, and
//! how often and how long the worker tries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Delivery settings. Without any destination, DeliverReferralPack fails with
/// FAILED_PRECONDITION.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// The destinations, each written as a `[[destination]]` table. Every pack goes to each.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
    /// Attempts and the waits between them.
    #[serde(default)]
    pub retries: RetryConfig,
    /// The background worker.
    #[serde(default)]
    pub worker: WorkerConfig,
}

/// The kind of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// A folder, such as a mounted secure file transfer share.
    Directory,
    /// An HTTPS endpoint that receives signed POST requests.
    Https,
}

impl DestinationKind {
    /// Returns the name used in the settings and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::Https => "https",
        }
    }
}

/// One destination. The keys allowed depend on `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// A short name, unique in the file, shown with every delivery: lower-case letters,
    /// digits and hyphens.
    pub name: String,
    /// `directory` or `https`.
    pub kind: DestinationKind,
    /// For a directory: the folder the packs are written to.
    pub path: Option<PathBuf>,
    /// For HTTPS: the endpoint packs are posted to. Must use https.
    pub url: Option<String>,
    /// For HTTPS: a file holding the HMAC key that signs each request.
    pub hmac_key_file: Option<PathBuf>,
    /// For HTTPS: the name of an environment variable holding the HMAC key.
    pub hmac_key_env: Option<String>,
    /// Present only so that a key written into the file gets its own error.
    #[serde(default)]
    hmac_key: Option<serde::de::IgnoredAny>,
    /// For HTTPS: a PEM file of extra CA certificates to trust, besides the public ones.
    pub ca_file: Option<PathBuf>,
    /// Seconds an attempt may take before it counts as failed: 60 by default.
    pub timeout_seconds: Option<u64>,
}

impl DestinationConfig {
    /// Returns the attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
    }
}

/// Attempts and the waits between them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts before a delivery fails and waits for RetryDelivery: 10 by default.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Seconds before the first retry; later retries double it, with jitter. 30 by default.
    #[serde(default = "default_first_retry")]
    pub first_retry_seconds: f64,
    /// The maximum wait between retries, in seconds: 3600 by default.
    #[serde(default = "default_max_retry")]
    pub max_retry_seconds: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            first_retry_seconds: default_first_retry(),
            max_retry_seconds: default_max_retry(),
        }
    }
}

/// The background worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// How often the worker looks for retries that have come due, in seconds: 5 by default.
    /// New deliveries are picked up at once.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// How long a server may hold a delivery before another may take it over, in seconds:
    /// 300 by default. Must exceed every destination's timeout.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            poll_seconds: default_poll(),
            lease_seconds: default_lease(),
        }
    }
}

impl WorkerConfig {
    pub(crate) fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_seconds)
    }
}

const DEFAULT_TIMEOUT_SECONDS: u64 = 60;

/// The minimum HMAC key length. RFC 2104, section 3, strongly discourages keys shorter than
/// the hash output, which is 32 bytes for SHA-256.
pub(crate) const MIN_KEY_BYTES: usize = 32;

fn default_max_attempts() -> u32 {
    10
}
fn default_first_retry() -> f64 {
    30.0
}
fn default_max_retry() -> f64 {
    3600.0
}
fn default_poll() -> f64 {
    5.0
}
fn default_lease() -> u64 {
    300
}

impl DeliveryConfig {
    /// Reads and checks a settings file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read delivery settings {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("invalid delivery settings in {}", path.display()))
    }

    /// Parses and checks settings from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work. Files, keys and certificates are read when
    /// the server starts, not here.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.destinations.is_empty() {
            bail!(
                "no destination is configured: add a [[destination]] table with name, kind \
                 and path (for a folder) or url (for HTTPS)"
            );
        }
        for (index, destination) in self.destinations.iter().enumerate() {
            check_destination(destination)
                .with_context(|| format!("destination {} ({:?})", index + 1, destination.name))?;
            if self.destinations[..index]
                .iter()
                .any(|earlier| earlier.name == destination.name)
            {
                bail!(
                    "destination name {:?} is used twice: give each destination its own name",
                    destination.name
                );
            }
        }
        self.check_retries()?;
        self.check_worker()
    }

    fn check_retries(&self) -> anyhow::Result<()> {
        let retries = &self.retries;
        if retries.max_attempts == 0 {
            bail!("retries.max_attempts is 0: give at least 1");
        }
        if !(retries.first_retry_seconds.is_finite() && retries.first_retry_seconds > 0.0) {
            bail!(
                "retries.first_retry_seconds is {}: give a number of seconds above 0",
                retries.first_retry_seconds
            );
        }
        if !(retries.max_retry_seconds.is_finite()
            && retries.max_retry_seconds >= retries.first_retry_seconds)
        {
            bail!(
                "retries.max_retry_seconds is {} but retries.first_retry_seconds is {}: the \
                 maximum must be at least the first wait",
                retries.max_retry_seconds,
                retries.first_retry_seconds
            );
        }
        Ok(())
    }

    fn check_worker(&self) -> anyhow::Result<()> {
        let worker = &self.worker;
        if !(worker.poll_seconds.is_finite() && worker.poll_seconds > 0.0) {
            bail!(
                "worker.poll_seconds is {}: give a number of seconds above 0",
                worker.poll_seconds
            );
        }
        let longest = self
            .destinations
            .iter()
            .map(|destination| destination.timeout().as_secs())
            .max()
            .unwrap_or(0);
        if worker.lease_seconds <= longest {
            bail!(
                "worker.lease_seconds is {} but a destination's timeout_seconds is {longest}: \
                 the lease must be longer than every timeout, or a second server could take \
                 over a delivery still in progress",
                worker.lease_seconds
            );
        }
        Ok(())
    }
}

fn check_destination(destination: &DestinationConfig) -> anyhow::Result<()> {
    check_name(&destination.name)?;
    if destination.hmac_key.is_some() {
        bail!(
            "hmac_key must not be written in the settings file: put the key in a file named \
             by hmac_key_file, or in an environment variable named by hmac_key_env"
        );
    }
    if let Some(timeout) = destination.timeout_seconds
        && !(1..=3600).contains(&timeout)
    {
        bail!("timeout_seconds is {timeout}: give a number of seconds from 1 to 3600");
    }
    match destination.kind {
        DestinationKind::Directory => check_directory(destination),
        DestinationKind::Https => check_https(destination),
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "name {name:?} is invalid: use 1 to 64 lower-case letters, digits and hyphens, for \
             example \"la-sftp\""
        );
    }
    Ok(())
}

/// Rejects a key that belongs to the other kind, so that a mistyped kind is not silently
/// ignored.
fn reject_key(present: bool, key: &str, kind: DestinationKind) -> anyhow::Result<()> {
    if present {
        bail!(
            "{key} is not a setting of a {} destination: remove it, or correct kind",
            kind.as_str()
        );
    }
    Ok(())
}

fn check_directory(destination: &DestinationConfig) -> anyhow::Result<()> {
    let kind = DestinationKind::Directory;
    reject_key(destination.url.is_some(), "url", kind)?;
    reject_key(destination.hmac_key_file.is_some(), "hmac_key_file", kind)?;
    reject_key(destination.hmac_key_env.is_some(), "hmac_key_env", kind)?;
    reject_key(destination.ca_file.is_some(), "ca_file", kind)?;
    let Some(path) = &destination.path else {
        bail!("path is missing: give the folder the packs are written to");
    };
    if !path.is_absolute() {
        bail!(
            "path {:?} is relative: give the folder's absolute path, such as \
             \"/mnt/la-transfer/referrals\"",
            path.display().to_string()
        );
    }
    Ok(())
}

fn check_https(destination: &DestinationConfig) -> anyhow::Result<()> {
    let kind = DestinationKind::Https;
    reject_key(destination.path.is_some(), "path", kind)?;
    let Some(url) = &destination.url else {
        bail!("url is missing: give the https:// address the local authority gave you");
    };
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| anyhow::anyhow!("url {url:?} is not a valid URL: {error}"))?;
    if parsed.scheme() != "https" {
        bail!(
            "url {url:?} does not use https: referral packs contain pupils' personal data, \
             so they are sent only over TLS; ask the local authority for its https:// address"
        );
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("url {url:?} has no host name");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!(
            "url {url:?} contains a user name or password: remove them, because the URL is \
             shown in logs and errors; requests are authenticated by their HMAC signature"
        );
    }
    match (&destination.hmac_key_file, &destination.hmac_key_env) {
        (None, None) => bail!(
            "the HMAC key is missing: give hmac_key_file (a file holding the key) or \
             hmac_key_env (the name of an environment variable holding it)"
        ),
        (Some(_), Some(_)) => bail!(
            "hmac_key_file and hmac_key_env are both set: keep only the one that contains the key"
        ),
        (None, Some(variable)) => {
            let valid = !variable.is_empty()
                && variable
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !variable.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                bail!(
                    "hmac_key_env {variable:?} is not an environment variable name: use \
                     letters, digits and underscores, such as \"ROLLCALL_LA_HMAC_KEY\""
                );
            }
        }
        (Some(_), None) => {}
    }
    Ok(())
}

/// Reads an HMAC key from the file or environment variable the destination names. The error
/// names the file or variable, never the key.
pub(crate) fn read_hmac_key(destination: &DestinationConfig) -> anyhow::Result<Vec<u8>> {
    let (key, source) = match (&destination.hmac_key_file, &destination.hmac_key_env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!(
                    "cannot read hmac_key_file {}: {error}; create it with the key the local \
                     authority gave you, readable by the user running rollcall",
                    path.display()
                )
            })?;
            (
                text.trim_end_matches(['\r', '\n']).to_owned(),
                format!("hmac_key_file {}", path.display()),
            )
        }
        (None, Some(variable)) => {
            let value = std::env::var(variable).map_err(|_| {
                anyhow::anyhow!(
                    "hmac_key_env names {variable}, which is not set: set it to the key the \
                     local authority gave you before starting rollcall"
                )
            })?;
            (value, format!("environment variable {variable}"))
        }
        (None, None) => bail!("no HMAC key is configured"),
    };
    if key.len() < MIN_KEY_BYTES {
        bail!(
            "the HMAC key in {source} is {} bytes long: it must be at least {MIN_KEY_BYTES} \
             bytes; ask the local authority for a longer key",
            key.len()
        );
    }
    Ok(key.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIRECTORY: &str = "[[destination]]\nname = \"la-sftp\"\nkind = \"directory\"\n\
                             path = \"/mnt/la\"\n";
    const HTTPS: &str = "[[destination]]\nname = \"la-portal\"\nkind = \"https\"\n\
                         url = \"https://la.example/referrals\"\n\
                         hmac_key_env = \"LA_KEY\"\n";

    fn error_of(text: &str) -> String {
        format!(
            "{:#}",
            DeliveryConfig::parse(text).expect_err("settings are invalid")
        )
    }

    #[test]
    fn defaults_apply() {
        let config = DeliveryConfig::parse(DIRECTORY).expect("valid");
        assert_eq!(config.destinations.len(), 1);
        assert_eq!(config.retries.max_attempts, 10);
        assert_eq!(config.worker.lease_seconds, 300);
        assert_eq!(config.destinations[0].timeout(), Duration::from_secs(60));
    }

    #[test]
    fn both_kinds_parse() {
        let config = DeliveryConfig::parse(&format!("{DIRECTORY}{HTTPS}")).expect("valid");
        assert_eq!(config.destinations[0].kind, DestinationKind::Directory);
        assert_eq!(config.destinations[1].kind, DestinationKind::Https);
    }

    #[test]
    fn no_destination_is_rejected() {
        assert!(error_of("").contains("[[destination]]"));
    }

    #[test]
    fn unknown_key_is_named() {
        let error = error_of(&format!("{DIRECTORY}pth = \"/x\"\n"));
        assert!(error.contains("pth"), "{error}");
    }

    #[test]
    fn unknown_kind_is_named() {
        let error = error_of(&DIRECTORY.replace("\"directory\"", "\"ftp\""));
        assert!(error.contains("ftp"), "{error}");
    }

    #[test]
    fn http_url_is_rejected() {
        let error = error_of(&HTTPS.replace("https://", "http://"));
        assert!(error.contains("http://la.example/referrals"), "{error}");
        assert!(error.contains("does not use https"), "{error}");
    }

    #[test]
    fn url_with_password_is_rejected() {
        let error = error_of(&HTTPS.replace("https://", "https://user:pw@"));
        assert!(error.contains("user name or password"), "{error}");
    }

    #[test]
    fn inline_key_is_rejected() {
        let error = error_of(&format!("{HTTPS}hmac_key = \"secret-in-the-file\"\n"));
        assert!(error.contains("must not be written"), "{error}");
        assert!(!error.contains("secret-in-the-file"), "{error}");
    }

    #[test]
    fn key_source_is_required_once() {
        let missing = error_of(&HTTPS.replace("hmac_key_env = \"LA_KEY\"\n", ""));
        assert!(missing.contains("HMAC key is missing"), "{missing}");
        let both = error_of(&format!("{HTTPS}hmac_key_file = \"/run/key\"\n"));
        assert!(both.contains("both set"), "{both}");
    }

    #[test]
    fn keys_of_other_kind_are_rejected() {
        let error = error_of(&format!("{DIRECTORY}url = \"https://la.example\"\n"));
        assert!(
            error.contains("url is not a setting of a directory"),
            "{error}"
        );
        let error = error_of(&format!("{HTTPS}path = \"/mnt/la\"\n"));
        assert!(
            error.contains("path is not a setting of a https"),
            "{error}"
        );
    }

    #[test]
    fn relative_path_is_rejected() {
        let error = error_of(&DIRECTORY.replace("/mnt/la", "la"));
        assert!(error.contains("relative"), "{error}");
    }

    #[test]
    fn names_are_checked_and_unique() {
        let error = error_of(&DIRECTORY.replace("la-sftp", "LA SFTP"));
        assert!(error.contains("\"LA SFTP\""), "{error}");
        let error = error_of(&format!("{DIRECTORY}{DIRECTORY}"));
        assert!(error.contains("used twice"), "{error}");
    }

    #[test]
    fn lease_must_exceed_timeouts() {
        let text = format!("{DIRECTORY}timeout_seconds = 300\n[worker]\nlease_seconds = 300\n");
        let error = error_of(&text);
        assert!(error.contains("worker.lease_seconds is 300"), "{error}");
    }

    #[test]
    fn retry_waits_are_checked() {
        let error = error_of(&format!(
            "{DIRECTORY}[retries]\nfirst_retry_seconds = 60\nmax_retry_seconds = 10\n"
        ));
        assert!(error.contains("retries.max_retry_seconds is 10"), "{error}");
        let error = error_of(&format!("{DIRECTORY}[retries]\nmax_attempts = 0\n"));
        assert!(error.contains("retries.max_attempts is 0"), "{error}");
    }

    #[test]
    fn short_key_is_rejected_without_showing_it() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("key");
        std::fs::write(&path, "too-short\n").expect("key file");
        let text = HTTPS.replace(
            "hmac_key_env = \"LA_KEY\"",
            &format!("hmac_key_file = {:?}", path.display().to_string()),
        );
        let config = DeliveryConfig::parse(&text).expect("valid settings");
        let error = format!(
            "{:#}",
            read_hmac_key(&config.destinations[0]).expect_err("too short")
        );
        assert!(error.contains("9 bytes long"), "{error}");
        assert!(!error.contains("too-short"), "{error}");
    }

    #[test]
    fn missing_key_file_is_named() {
        let text = HTTPS.replace(
            "hmac_key_env = \"LA_KEY\"",
            "hmac_key_file = \"/nonexistent/la-key\"",
        );
        let config = DeliveryConfig::parse(&text).expect("valid settings");
        let error = format!(
            "{:#}",
            read_hmac_key(&config.destinations[0]).expect_err("missing")
        );
        assert!(error.contains("/nonexistent/la-key"), "{error}");
    }
}
