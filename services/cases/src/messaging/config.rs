//! The messaging settings `rollcall serve --messaging FILE` reads: the mail server, the SMS
//! provider, the print folder, retries and first-day contact.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Messaging settings. Channels left out are not configured: messages for them fail with an
/// error that names the missing section, and the contact task stays open for the office.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingConfig {
    /// Email over SMTP.
    pub email: Option<EmailConfig>,
    /// Text messages through an HTTP SMS provider.
    pub sms: Option<SmsConfig>,
    /// Printed letters.
    #[serde(default)]
    pub letters: LettersConfig,
    /// Retries and the outbox.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// First-day contact.
    #[serde(default)]
    pub first_day: FirstDayConfig,
}

/// The security of the SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the start (port 465).
    Tls,
    /// No encryption. Allowed only to a loopback address, such as a local relay.
    None,
}

/// Email over SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The mail server's host name or address.
    pub smtp_host: String,
    /// Its port: 587 by default.
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// starttls (the default), tls, or none for a loopback relay.
    #[serde(default = "default_security")]
    pub security: SmtpSecurity,
    /// The user name, where the server needs one.
    pub username: Option<String>,
    /// A file holding the password. The password never appears in the settings file itself.
    pub password_file: Option<PathBuf>,
    /// The sender, for example "Attendance <attendance@school.example>".
    pub from: String,
    /// Seconds to wait for the server before an attempt counts as failed: 30 by default.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

/// Text messages through an HTTP provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// The provider's endpoint for sending one message, for example
    /// "https://sms.example/v1/messages".
    pub url: String,
    /// A file holding the API key, sent as a bearer token.
    pub api_key_file: Option<PathBuf>,
    /// The sender name or number shown to the parent.
    pub sender: String,
    /// Seconds to wait for the provider: 30 by default.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

/// Printed letters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LettersConfig {
    /// The folder letters are written to for printing and posting, one subfolder per school.
    /// Without it, the `letters` folder under the data directory.
    pub print_dir: Option<PathBuf>,
}

/// Retries and the outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Seconds before the first retry; later retries double it, with jitter. 30 by default.
    #[serde(default = "default_first_retry")]
    pub first_retry_seconds: f64,
    /// The maximum wait between retries, in seconds: 3600 by default.
    #[serde(default = "default_max_retry")]
    pub max_retry_seconds: f64,
    /// Attempts before a message fails for good: 6 by default.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How often the outbox looks for messages due, in seconds: 5 by default. New messages are
    /// picked up at once.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// How long a sender may hold a message before it counts as stopped mid-attempt, in
    /// seconds: 300 by default. Must exceed every channel's timeout.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            first_retry_seconds: default_first_retry(),
            max_retry_seconds: default_max_retry(),
            max_attempts: default_max_attempts(),
            poll_seconds: default_poll(),
            lease_seconds: default_lease(),
        }
    }
}

impl DeliveryConfig {
    pub(crate) fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_seconds)
    }
}

/// First-day contact.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstDayConfig {
    /// Run first-day contact by itself once each register closes: true by default.
    #[serde(default = "default_true")]
    pub automatic: bool,
    /// Minutes after the register closes before it runs, for late marks: 15 by default.
    #[serde(default = "default_after_close")]
    pub minutes_after_close: u32,
}

impl Default for FirstDayConfig {
    fn default() -> Self {
        Self {
            automatic: true,
            minutes_after_close: default_after_close(),
        }
    }
}

fn default_smtp_port() -> u16 {
    587
}
fn default_security() -> SmtpSecurity {
    SmtpSecurity::Starttls
}
fn default_timeout() -> u64 {
    30
}
fn default_first_retry() -> f64 {
    30.0
}
fn default_max_retry() -> f64 {
    3600.0
}
fn default_max_attempts() -> u32 {
    6
}
fn default_poll() -> f64 {
    5.0
}
fn default_lease() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_after_close() -> u32 {
    15
}

impl MessagingConfig {
    /// Reads and checks a settings file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read messaging settings {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("invalid messaging settings in {}", path.display()))
    }

    /// Parses and checks settings from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(email) = &self.email {
            if email.smtp_host.trim().is_empty() {
                bail!("email.smtp_host is empty: give the mail server's host name");
            }
            if email.security == SmtpSecurity::None && !is_loopback(&email.smtp_host) {
                bail!(
                    "email.security is \"none\" but email.smtp_host {:?} is not a loopback \
                     address: use starttls or tls, so that parents' details are not sent \
                     unencrypted",
                    email.smtp_host
                );
            }
            if email.from.parse::<lettre::message::Mailbox>().is_err() {
                bail!(
                    "email.from {:?} is not a valid sender: write it as \
                     \"Name <address@example.org>\"",
                    email.from
                );
            }
            if email.username.is_some() != email.password_file.is_some() {
                bail!("email.username and email.password_file go together: give both or neither");
            }
        }
        if let Some(sms) = &self.sms {
            let url = reqwest::Url::parse(&sms.url).map_err(|error| {
                anyhow::anyhow!("sms.url {:?} is not a valid URL: {error}", sms.url)
            })?;
            let host = url.host_str().unwrap_or_default();
            if url.scheme() != "https" && !(url.scheme() == "http" && is_loopback(host)) {
                bail!(
                    "sms.url {:?} must use https (plain http is allowed only to a loopback \
                     address)",
                    sms.url
                );
            }
            if sms.sender.trim().is_empty() {
                bail!("sms.sender is empty: give the name or number parents see");
            }
        }
        let delivery = &self.delivery;
        if !(delivery.first_retry_seconds > 0.0
            && delivery.max_retry_seconds >= delivery.first_retry_seconds)
        {
            bail!(
                "delivery.first_retry_seconds must be above 0 and at most \
                 delivery.max_retry_seconds"
            );
        }
        if delivery.max_attempts == 0 {
            bail!("delivery.max_attempts must be at least 1");
        }
        if delivery.poll_seconds <= 0.0 || !delivery.poll_seconds.is_finite() {
            bail!("delivery.poll_seconds must be above 0");
        }
        let longest_timeout = [
            self.email.as_ref().map(|e| e.timeout_seconds),
            self.sms.as_ref().map(|s| s.timeout_seconds),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        if delivery.lease_seconds <= longest_timeout {
            bail!(
                "delivery.lease_seconds ({}) must exceed the longest channel timeout ({longest_timeout} s)",
                delivery.lease_seconds
            );
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a secret from a file, trimming the final newline.
pub(crate) fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_settings_use_defaults() {
        let config = MessagingConfig::parse("").expect("valid");
        assert!(config.email.is_none());
        assert!(config.first_day.automatic);
        assert_eq!(config.delivery.max_attempts, 6);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error = MessagingConfig::parse("[email]\nsmtp_hots = \"x\"\n").expect_err("typo");
        assert!(format!("{error:#}").contains("smtp_hots"), "{error:#}");
    }

    #[test]
    fn plain_smtp_only_to_loopback() {
        let remote = "[email]\nsmtp_host = \"mail.example.org\"\nsecurity = \"none\"\n\
                      from = \"Attendance <a@example.org>\"\n";
        let error = MessagingConfig::parse(remote).expect_err("unencrypted");
        assert!(format!("{error:#}").contains("not a loopback"), "{error:#}");
        let local = remote.replace("mail.example.org", "127.0.0.1");
        assert!(MessagingConfig::parse(&local).is_ok());
    }

    #[test]
    fn sms_needs_https_off_loopback() {
        let remote = "[sms]\nurl = \"http://sms.example/v1\"\nsender = \"School\"\n";
        assert!(MessagingConfig::parse(remote).is_err());
        let secure = remote.replace("http://", "https://");
        assert!(MessagingConfig::parse(&secure).is_ok());
        let local = remote.replace("sms.example", "127.0.0.1:9000");
        assert!(MessagingConfig::parse(&local).is_ok());
    }

    #[test]
    fn bad_sender_is_named() {
        let text = "[email]\nsmtp_host = \"127.0.0.1\"\nfrom = \"not an address\"\n";
        let error = MessagingConfig::parse(text).expect_err("bad sender");
        assert!(format!("{error:#}").contains("not an address"), "{error:#}");
    }

    #[test]
    fn lease_must_exceed_timeouts() {
        let text = "[sms]\nurl = \"https://sms.example\"\nsender = \"S\"\ntimeout_seconds = 60\n\
                    [delivery]\nlease_seconds = 60\n";
        assert!(MessagingConfig::parse(text).is_err());
    }
}
