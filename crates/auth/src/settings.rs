//! Token settings (`rollcall serve --auth FILE`): the identity provider's issuer, rollcall's
//! audience, where the signing keys come from and which claims carry roles and schools.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The maximum clock skew the settings accept, in seconds.
pub(crate) const MAX_CLOCK_SKEW_SECONDS: u64 = 300;

/// Token settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The `iss` every token must carry, exactly as the identity provider writes it.
    pub issuer: String,
    /// The `aud` every token must include: the id the identity provider gives rollcall.
    pub audience: String,
    /// A JSON Web Key Set file with the identity provider's public keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JSON Web Key Set address (HTTPS).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How far the server's clock and the identity provider's may differ, in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    /// How often the key set is read again, in seconds, so rotated keys are picked up.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_seconds: u64,
    /// The claims roles, schools and the local authority are read from.
    #[serde(default)]
    pub claims: ClaimNames,
}

/// Which token claims carry rollcall's grants.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// A list of role names, such as `["head_of_year"]`.
    pub roles: String,
    /// A list of the LAESTABs of the schools the holder works for.
    pub schools: String,
    /// A local authority officer's three-digit authority code.
    pub local_authority: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            roles: "roles".to_owned(),
            schools: "schools".to_owned(),
            local_authority: "local_authority".to_owned(),
        }
    }
}

fn default_clock_skew() -> u64 {
    60
}

fn default_refresh() -> u64 {
    3600
}

/// Where the signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JSON Web Key Set file.
    File(PathBuf),
    /// A JSON Web Key Set fetched over HTTPS.
    Url(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "{}", path.display()),
            KeySource::Url(url) => f.write_str(url),
        }
    }
}

impl TokenSettings {
    /// Reads and checks settings from a TOML file. A relative `jwks_file` is taken from the
    /// settings file's folder.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token settings {}", path.display()))?;
        let mut settings = Self::parse(&text)
            .with_context(|| format!("invalid token settings in {}", path.display()))?;
        if let Some(file) = &settings.jwks_file
            && file.is_relative()
            && let Some(folder) = path.parent()
        {
            settings.jwks_file = Some(folder.join(file));
        }
        Ok(settings)
    }

    /// Parses and checks settings from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let settings: Self = toml::from_str(text)?;
        settings.check()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.issuer.trim().is_empty() {
            bail!(
                "issuer is empty: give the identity provider's issuer, for example \
                 \"https://login.microsoftonline.com/<tenant id>/v2.0\""
            );
        }
        if self.audience.trim().is_empty() {
            bail!(
                "audience is empty: give the id your identity provider issues rollcall's tokens for"
            );
        }
        self.key_source()?;
        if self.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
            bail!(
                "clock_skew_seconds is {}, more than {MAX_CLOCK_SKEW_SECONDS}: keep the \
                 servers' clocks in sync (NTP) and allow at most a few minutes",
                self.clock_skew_seconds
            );
        }
        if !(60..=86_400).contains(&self.jwks_refresh_seconds) {
            bail!(
                "jwks_refresh_seconds is {}: give a number of seconds from 60 to 86400",
                self.jwks_refresh_seconds
            );
        }
        for (key, claim) in [
            ("claims.roles", &self.claims.roles),
            ("claims.schools", &self.claims.schools),
            ("claims.local_authority", &self.claims.local_authority),
        ] {
            if claim.trim().is_empty() {
                bail!("{key} is empty: give the name of the token claim, or leave the key out");
            }
        }
        Ok(())
    }

    /// Where the keys come from: exactly one of `jwks_file` and `jwks_url`.
    pub fn key_source(&self) -> anyhow::Result<KeySource> {
        match (&self.jwks_file, &self.jwks_url) {
            (Some(file), None) => Ok(KeySource::File(file.clone())),
            (None, Some(url)) => {
                check_jwks_url(url)?;
                Ok(KeySource::Url(url.clone()))
            }
            (None, None) => bail!(
                "no signing keys: set jwks_url to the identity provider's key set address, or \
                 jwks_file to a saved copy"
            ),
            (Some(_), Some(_)) => bail!("both jwks_file and jwks_url are set: keep one of them"),
        }
    }

    /// The clock skew allowed.
    pub fn clock_skew(&self) -> Duration {
        Duration::from_secs(self.clock_skew_seconds)
    }
}

/// Accepts HTTPS addresses, and plain HTTP only to this machine's loopback address.
fn check_jwks_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|error| anyhow::anyhow!("jwks_url {url:?} is not an address: {error}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(parsed.host_str().unwrap_or_default()) => Ok(()),
        _ => bail!(
            "jwks_url {url:?} is not HTTPS: keys fetched without TLS could be replaced on the \
             way, so use the identity provider's https:// address"
        ),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        issuer = "https://idp.example.org/"
        audience = "rollcall"
        jwks_url = "https://idp.example.org/keys"
    "#;

    #[test]
    fn minimal_settings_take_defaults() {
        let settings = TokenSettings::parse(MINIMAL).expect("valid");
        assert_eq!(settings.clock_skew_seconds, 60);
        assert_eq!(settings.claims, ClaimNames::default());
        assert_eq!(
            settings.key_source().expect("a source"),
            KeySource::Url("https://idp.example.org/keys".to_owned())
        );
    }

    fn error(text: &str) -> String {
        format!("{:#}", TokenSettings::parse(text).expect_err("invalid"))
    }

    #[test]
    fn bad_settings_name_the_key() {
        assert!(error("issuer = \"x\"\naudience = \"a\"").contains("no signing keys"));
        assert!(
            error(&format!("{MINIMAL}\njwks_file = \"k.json\""))
                .contains("both jwks_file and jwks_url")
        );
        assert!(
            error("issuer = \"x\"\naudience = \"a\"\njwks_url = \"http://idp.example.org/k\"")
                .contains("not HTTPS")
        );
        assert!(
            error(&format!("{MINIMAL}\nclock_skew_seconds = 3600")).contains("clock_skew_seconds")
        );
        assert!(error(&format!("{MINIMAL}\naudiance = \"x\"")).contains("audiance"));
        assert!(
            error("issuer = \"\"\naudience = \"a\"\njwks_file = \"k\"").contains("issuer is empty")
        );
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_jwks_url("http://127.0.0.1:8080/keys").is_ok());
        assert!(check_jwks_url("http://[::1]:8080/keys").is_ok());
        assert!(check_jwks_url("http://localhost/keys").is_ok());
        assert!(check_jwks_url("http://10.0.0.1/keys").is_err());
    }
}
