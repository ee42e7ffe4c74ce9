//! The referral settings `rollcall serve --referrals FILE` reads: how long a warning letter must
//! precede a penalty-notice request, which schools are independent, and the key packs are
//! signed with.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Referral settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralsConfig {
    /// School days the warning letter must be served before a penalty notice is requested:
    /// 10 by default.
    #[serde(default = "default_warning_school_days")]
    pub warning_school_days: u32,
    /// Schools, as LAESTAB, that are independent schools and so cannot request penalty
    /// notices. Academies and maintained schools are not independent.
    #[serde(default)]
    pub independent_schools: Vec<String>,
    /// The PKCS#8 PEM file of the Ed25519 key packs are signed with. Left out, the server uses
    /// `keys/pack-signing.pem` under its data folder and creates it on first start.
    pub signing_key_file: Option<PathBuf>,
}

fn default_warning_school_days() -> u32 {
    10
}

impl Default for ReferralsConfig {
    fn default() -> Self {
        Self {
            warning_school_days: default_warning_school_days(),
            independent_schools: Vec::new(),
            signing_key_file: None,
        }
    }
}

impl ReferralsConfig {
    /// Reads and checks settings from a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read referral settings {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("invalid referral settings in {}", path.display()))
    }

    /// Parses and checks settings from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.warning_school_days > 190 {
            bail!(
                "warning_school_days is {}, more than a school year of 190 days: give the \
                 number of school days, for example 10",
                self.warning_school_days
            );
        }
        for school in &self.independent_schools {
            if rollcall_domain::school::parse_laestab(school).is_err() {
                bail!(
                    "independent_schools has {school:?}, which is not a LAESTAB: give the \
                     3-digit local authority number and 4-digit establishment number, for \
                     example \"9192001\""
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let config = ReferralsConfig::parse("").expect("empty settings are valid");
        assert_eq!(config.warning_school_days, 10);
        assert!(config.independent_schools.is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let error =
            ReferralsConfig::parse("independent_schools = [\"91920\"]").expect_err("short LAESTAB");
        assert!(format!("{error:#}").contains("\"91920\""), "{error:#}");
        let error = ReferralsConfig::parse("warning_days = 5").expect_err("unknown key");
        assert!(format!("{error:#}").contains("warning_days"), "{error:#}");
    }
}
