//! The connector settings `rollcall serve --connectors FILE` reads: which schools are pulled
//! from which MIS data broker, how often and how fast, and whether decisions are written back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Connector settings: one `[[school]]` table per school, the retries of requests to the
/// brokers, and the write-back worker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorsConfig {
    /// One connector per school, each written as a `[[school]]` table.
    #[serde(default, rename = "school")]
    pub schools: Vec<SchoolConnectorConfig>,
    /// Retries of a request to a broker during a run.
    #[serde(default)]
    pub retries: BrokerRetryConfig,
    /// The worker that writes decisions back to the MIS.
    #[serde(default)]
    pub writeback: WritebackConfig,
}

/// One school's connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchoolConnectorConfig {
    /// The school, as LAESTAB: seven digits.
    pub laestab: String,
    /// The broker's API base URL, such as `https://api.broker.example/v1.0`.
    pub base_url: String,
    /// The broker's id of the school.
    pub school_id: String,
    /// A file containing the broker's API token.
    pub token_file: Option<PathBuf>,
    /// The name of an environment variable containing the token.
    pub token_env: Option<String>,
    /// Present only so that a token written into the file gets its own error.
    #[serde(default)]
    token: Option<serde::de::IgnoredAny>,
    /// A PEM file of extra CA certificates to trust, besides the public ones.
    pub ca_file: Option<PathBuf>,
    /// `infant`, `junior` or `secondary`, for a school the broker calls primary.
    pub phase: Option<String>,
    /// Seconds between scheduled runs: 900 by default; 0 runs only on demand.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_seconds: u64,
    /// Records asked for per page: 100 by default.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// The maximum number of requests per minute to the broker for this school: 60 by default.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
    /// Whether decisions made in rollcall are written back to the MIS: false by default.
    #[serde(default)]
    pub write_back: bool,
    /// Seconds one request may take: 30 by default.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

impl SchoolConnectorConfig {
    /// Returns the interval between scheduled runs, or `None` when runs are on demand only.
    pub fn poll_interval(&self) -> Option<Duration> {
        (self.poll_interval_seconds > 0).then(|| Duration::from_secs(self.poll_interval_seconds))
    }

    /// Returns the time one request may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }
}

/// Retries of one request to a broker during a run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerRetryConfig {
    /// Attempts at one request before the run fails: 5 by default.
    #[serde(default = "default_request_attempts")]
    pub max_attempts: u32,
    /// Seconds before the first retry after a 5xx reply or a network failure; later retries
    /// double it, with jitter. 1 by default.
    #[serde(default = "default_request_first_retry")]
    pub first_retry_seconds: f64,
    /// The maximum wait between retries, in seconds: 60 by default. A 429 whose Retry-After
    /// asks for longer ends the run, and the next run waits for it.
    #[serde(default = "default_request_max_retry")]
    pub max_retry_seconds: f64,
}

impl Default for BrokerRetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_request_attempts(),
            first_retry_seconds: default_request_first_retry(),
            max_retry_seconds: default_request_max_retry(),
        }
    }
}

/// The write-back worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritebackConfig {
    /// Marks per job, each job one request: 100 by default.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Attempts before a job fails and waits for RetryWritebackJob: 10 by default.
    #[serde(default = "default_writeback_attempts")]
    pub max_attempts: u32,
    /// Seconds before the first retry; later retries double it, with jitter. 30 by default.
    #[serde(default = "default_writeback_first_retry")]
    pub first_retry_seconds: f64,
    /// The maximum wait between retries, in seconds: 3600 by default.
    #[serde(default = "default_writeback_max_retry")]
    pub max_retry_seconds: f64,
    /// How often the worker looks for due jobs besides being woken by new decisions, in
    /// seconds: 5 by default.
    #[serde(default = "default_writeback_poll")]
    pub poll_seconds: f64,
    /// How long a server may hold a job it is sending before another may take it over, in
    /// seconds: 300 by default. Must exceed every school's timeout_seconds.
    #[serde(default = "default_writeback_lease")]
    pub lease_seconds: u64,
}

impl Default for WritebackConfig {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            max_attempts: default_writeback_attempts(),
            first_retry_seconds: default_writeback_first_retry(),
            max_retry_seconds: default_writeback_max_retry(),
            poll_seconds: default_writeback_poll(),
            lease_seconds: default_writeback_lease(),
        }
    }
}

impl WritebackConfig {
    pub(crate) fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_seconds)
    }
}

fn default_poll_interval() -> u64 {
    900
}
fn default_page_size() -> u32 {
    100
}
fn default_requests_per_minute() -> u32 {
    60
}
fn default_timeout() -> u64 {
    30
}
fn default_request_attempts() -> u32 {
    5
}
fn default_request_first_retry() -> f64 {
    1.0
}
fn default_request_max_retry() -> f64 {
    60.0
}
fn default_batch_size() -> u32 {
    100
}
fn default_writeback_attempts() -> u32 {
    10
}
fn default_writeback_first_retry() -> f64 {
    30.0
}
fn default_writeback_max_retry() -> f64 {
    3600.0
}
fn default_writeback_poll() -> f64 {
    5.0
}
fn default_writeback_lease() -> u64 {
    300
}

/// The largest page size accepted. A broker may return fewer per page than asked for.
const MAX_PAGE_SIZE: u32 = 1_000;

/// The largest write-back batch accepted.
const MAX_BATCH_SIZE: u32 = 1_000;

/// The maximum poll interval: one week, in seconds.
const MAX_POLL_INTERVAL: u64 = 7 * 24 * 60 * 60;

/// The phases a school may be given in the settings.
pub(crate) const PHASES: &[&str] = &["infant", "junior", "secondary"];

impl ConnectorsConfig {
    /// Reads and checks a settings file. Every error names the file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read connector settings {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("invalid connector settings in {}", path.display()))
    }

    /// Parses and checks settings from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Returns the connector of a school, if configured.
    pub fn school(&self, laestab: &str) -> Option<&SchoolConnectorConfig> {
        self.schools.iter().find(|school| school.laestab == laestab)
    }

    /// Checks values that parse but cannot work. Token and CA files are read when the server
    /// starts, not here.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.schools.is_empty() {
            bail!(
                "no school is configured: add a [[school]] table with laestab, base_url, \
                 school_id and token_file"
            );
        }
        for (index, school) in self.schools.iter().enumerate() {
            check_school(school)
                .with_context(|| format!("school {} (laestab {:?})", index + 1, school.laestab))?;
            if self.schools[..index]
                .iter()
                .any(|earlier| earlier.laestab == school.laestab)
            {
                bail!(
                    "laestab {:?} has two [[school]] tables: keep one connector per school",
                    school.laestab
                );
            }
        }
        check_waits(
            "retries",
            self.retries.max_attempts,
            self.retries.first_retry_seconds,
            self.retries.max_retry_seconds,
        )?;
        self.check_writeback()
    }

    fn check_writeback(&self) -> anyhow::Result<()> {
        let writeback = &self.writeback;
        if !(1..=MAX_BATCH_SIZE).contains(&writeback.batch_size) {
            bail!(
                "writeback.batch_size is {}: give a number of marks from 1 to {MAX_BATCH_SIZE}",
                writeback.batch_size
            );
        }
        check_waits(
            "writeback",
            writeback.max_attempts,
            writeback.first_retry_seconds,
            writeback.max_retry_seconds,
        )?;
        if !(writeback.poll_seconds.is_finite() && writeback.poll_seconds > 0.0) {
            bail!(
                "writeback.poll_seconds is {}: give a number of seconds above 0",
                writeback.poll_seconds
            );
        }
        let longest = self
            .schools
            .iter()
            .map(|school| school.timeout_seconds)
            .max()
            .unwrap_or(0);
        if writeback.lease_seconds <= longest {
            bail!(
                "writeback.lease_seconds is {} but a school's timeout_seconds is {longest}: the \
                 lease must be longer than every timeout, or a second server could send a job \
                 still in progress",
                writeback.lease_seconds
            );
        }
        Ok(())
    }
}

fn check_waits(section: &str, attempts: u32, first: f64, max: f64) -> anyhow::Result<()> {
    if attempts == 0 {
        bail!("{section}.max_attempts is 0: give at least 1");
    }
    if !(first.is_finite() && first > 0.0) {
        bail!("{section}.first_retry_seconds is {first}: give a number of seconds above 0");
    }
    if !(max.is_finite() && max >= first) {
        bail!(
            "{section}.max_retry_seconds is {max} but {section}.first_retry_seconds is {first}: \
             the maximum must be at least the first wait"
        );
    }
    Ok(())
}

fn check_school(school: &SchoolConnectorConfig) -> anyhow::Result<()> {
    if rollcall_domain::school::parse_laestab(&school.laestab).is_err() {
        bail!(
            "laestab {:?} is invalid: give the seven-digit LA number and establishment \
             number, such as \"9192001\"",
            school.laestab
        );
    }
    check_base_url(&school.base_url)?;

    let id_valid = !school.school_id.is_empty()
        && school.school_id.len() <= 64
        && school
            .school_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_valid {
        bail!(
            "school_id {:?} is invalid: give the broker's id of the school, 1 to 64 letters, \
             digits, hyphens and underscores",
            school.school_id
        );
    }
    check_token_source(school)?;

    if let Some(phase) = &school.phase
        && !PHASES.contains(&phase.as_str())
    {
        bail!("phase {phase:?} is invalid: give infant, junior or secondary");
    }

    if school.poll_interval_seconds > MAX_POLL_INTERVAL {
        bail!(
            "poll_interval_seconds is {}: give at most {MAX_POLL_INTERVAL} (a week), or 0 to \
             run only on demand",
            school.poll_interval_seconds
        );
    }
    if !(1..=MAX_PAGE_SIZE).contains(&school.page_size) {
        bail!(
            "page_size is {}: give a number of records from 1 to {MAX_PAGE_SIZE}",
            school.page_size
        );
    }
    if !(1..=6_000).contains(&school.requests_per_minute) {
        bail!(
            "requests_per_minute is {}: give a number from 1 to 6000",
            school.requests_per_minute
        );
    }
    if !(1..=600).contains(&school.timeout_seconds) {
        bail!(
            "timeout_seconds is {}: give a number of seconds from 1 to 600",
            school.timeout_seconds
        );
    }
    Ok(())
}

fn check_base_url(base_url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(base_url)
        .map_err(|error| anyhow::anyhow!("base_url {base_url:?} is not a valid URL: {error}"))?;
    if parsed.scheme() != "https" {
        bail!(
            "base_url {base_url:?} does not use https: the broker sends pupils' personal data, \
             so rollcall talks to it only over TLS"
        );
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("base_url {base_url:?} has no host name");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!(
            "base_url {base_url:?} contains a user name or password: remove them, because the \
             URL is shown in logs; the token goes in token_file or token_env"
        );
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("base_url {base_url:?} has a query or fragment: give the API's base path only");
    }
    Ok(())
}

fn check_token_source(school: &SchoolConnectorConfig) -> anyhow::Result<()> {
    if school.token.is_some() {
        bail!(
            "token must not be written in the settings file: put it in a file named by \
             token_file, or in an environment variable named by token_env"
        );
    }
    match (&school.token_file, &school.token_env) {
        (None, None) => bail!(
            "the broker token is missing: give token_file (a file containing the token) or \
             token_env (the name of an environment variable containing it)"
        ),
        (Some(_), Some(_)) => bail!(
            "token_file and token_env are both set: keep only the one that contains the token"
        ),
        (None, Some(variable)) => {
            let valid = !variable.is_empty()
                && variable
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !variable.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                bail!(
                    "token_env {variable:?} is not an environment variable name: use letters, \
                     digits and underscores, such as \"ROLLCALL_BROKER_TOKEN\""
                );
            }
            Ok(())
        }
        (Some(_), None) => Ok(()),
    }
}

/// Reads the broker token from the file or environment variable the school names. Line
/// breaks at the end of a file are ignored. The error names the file or variable, never the
/// token.
pub(crate) fn read_token(school: &SchoolConnectorConfig) -> anyhow::Result<String> {
    let (token, source) = match (&school.token_file, &school.token_env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!(
                    "cannot read token_file {}: {error}; create it with the API token the \
                     broker issued, readable by the user running rollcall",
                    path.display()
                )
            })?;
            (
                text.trim_end_matches(['\r', '\n']).to_owned(),
                format!("token_file {}", path.display()),
            )
        }
        (None, Some(variable)) => {
            let value = std::env::var(variable).map_err(|_| {
                anyhow::anyhow!(
                    "token_env names {variable}, which is not set: set it to the broker's API \
                     token before starting rollcall"
                )
            })?;
            (value, format!("environment variable {variable}"))
        }
        (None, None) => bail!("no broker token is configured"),
    };
    if token.trim().is_empty() {
        bail!("{source} is empty: it must contain the broker's API token");
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        bail!(
            "{source} contains spaces or control characters, so it cannot be sent in an HTTP \
             header: it must contain the token alone"
        );
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHOOL: &str = "[[school]]\nlaestab = \"9192001\"\n\
                          base_url = \"https://broker.example/v1.0\"\n\
                          school_id = \"A1930499544\"\ntoken_env = \"BROKER_TOKEN\"\n";

    fn error_of(text: &str) -> String {
        format!(
            "{:#}",
            ConnectorsConfig::parse(text).expect_err("settings are invalid")
        )
    }

    #[test]
    fn defaults_apply() {
        let config = ConnectorsConfig::parse(SCHOOL).expect("valid");
        let school = &config.schools[0];
        assert_eq!(school.poll_interval(), Some(Duration::from_secs(900)));
        assert_eq!(school.page_size, 100);
        assert_eq!(school.requests_per_minute, 60);
        assert!(!school.write_back);
        assert_eq!(config.retries.max_attempts, 5);
        assert_eq!(config.writeback.batch_size, 100);
        assert_eq!(config.writeback.lease_seconds, 300);
        assert!(config.school("9192001").is_some());
        assert!(config.school("9192002").is_none());
    }

    #[test]
    fn zero_interval_means_on_demand() {
        let config =
            ConnectorsConfig::parse(&format!("{SCHOOL}poll_interval_seconds = 0\n")).expect("ok");
        assert_eq!(config.schools[0].poll_interval(), None);
    }

    #[test]
    fn no_school_is_rejected() {
        assert!(error_of("").contains("[[school]]"));
    }

    #[test]
    fn unknown_key_is_named() {
        let error = error_of(&format!("{SCHOOL}pagesize = 10\n"));
        assert!(error.contains("pagesize"), "{error}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (
                "laestab = \"9192001\"",
                "laestab = \"919-2001\"",
                "\"919-2001\"",
            ),
            (
                "https://broker.example/v1.0",
                "http://broker.example/v1.0",
                "does not use https",
            ),
            (
                "https://broker.example/v1.0",
                "https://user:pw@broker.example/v1.0",
                "user name or password",
            ),
            (
                "https://broker.example/v1.0",
                "https://broker.example/v1.0?x=1",
                "query or fragment",
            ),
            ("\"A1930499544\"", "\"A1/../x\"", "school_id \"A1/../x\""),
            ("\"BROKER_TOKEN\"", "\"1TOKEN\"", "token_env \"1TOKEN\""),
        ];
        for (from, to, expected) in cases {
            let error = error_of(&SCHOOL.replace(from, to));
            assert!(error.contains(expected), "{to}: {error}");
            assert!(error.contains("school 1"), "{to}: {error}");
        }
    }

    #[test]
    fn ranges_are_checked() {
        let cases = [
            ("page_size = 0", "page_size is 0"),
            ("page_size = 5000", "page_size is 5000"),
            ("requests_per_minute = 0", "requests_per_minute is 0"),
            ("timeout_seconds = 0", "timeout_seconds is 0"),
            (
                "poll_interval_seconds = 99999999",
                "poll_interval_seconds is 99999999",
            ),
            ("phase = \"primary\"", "phase \"primary\""),
        ];
        for (line, expected) in cases {
            let error = error_of(&format!("{SCHOOL}{line}\n"));
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn inline_token_is_rejected_without_showing_it() {
        let error = error_of(&format!("{SCHOOL}token = \"secret-in-the-file\"\n"));
        assert!(error.contains("must not be written"), "{error}");
        assert!(!error.contains("secret-in-the-file"), "{error}");
    }

    #[test]
    fn token_source_is_required_once() {
        let missing = error_of(&SCHOOL.replace("token_env = \"BROKER_TOKEN\"\n", ""));
        assert!(missing.contains("token is missing"), "{missing}");
        let both = error_of(&format!("{SCHOOL}token_file = \"/run/token\"\n"));
        assert!(both.contains("both set"), "{both}");
    }

    #[test]
    fn laestab_is_unique() {
        let error = error_of(&format!("{SCHOOL}{SCHOOL}"));
        assert!(error.contains("two [[school]] tables"), "{error}");
    }

    #[test]
    fn sections_are_checked() {
        let error = error_of(&format!("{SCHOOL}[retries]\nmax_attempts = 0\n"));
        assert!(error.contains("retries.max_attempts is 0"), "{error}");
        let error = error_of(&format!("{SCHOOL}[writeback]\nbatch_size = 0\n"));
        assert!(error.contains("writeback.batch_size is 0"), "{error}");
        let error = error_of(&format!("{SCHOOL}[writeback]\nlease_seconds = 30\n"));
        assert!(error.contains("writeback.lease_seconds is 30"), "{error}");
    }

    #[test]
    fn token_file_is_read_without_showing_it() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").expect("token file");
        let text = SCHOOL.replace(
            "token_env = \"BROKER_TOKEN\"",
            &format!("token_file = {:?}", path.display().to_string()),
        );
        let config = ConnectorsConfig::parse(&text).expect("valid settings");
        assert_eq!(read_token(&config.schools[0]).expect("token"), "abc123");

        std::fs::write(&path, "two words\n").expect("token file");
        let error = format!("{:#}", read_token(&config.schools[0]).expect_err("invalid"));
        assert!(error.contains("spaces or control characters"), "{error}");
        assert!(!error.contains("two words"), "{error}");

        let missing = text.replace(&path.display().to_string(), "/nonexistent/broker-token");
        let config = ConnectorsConfig::parse(&missing).expect("valid settings");
        let error = format!("{:#}", read_token(&config.schools[0]).expect_err("missing"));
        assert!(error.contains("/nonexistent/broker-token"), "{error}");
    }
}
