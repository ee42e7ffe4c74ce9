//! The source of each version of a mark.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The channel that sent a version of a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkSource {
    /// Synchronised from the school's management information system.
    MisSync,
    /// Entered or amended by a member of staff.
    Staff,
    /// Follows a report from a parent or carer.
    ParentReport,
    /// Imported from a file, such as a Common Transfer File.
    Import,
}

impl MarkSource {
    /// Returns the source's name as stored and written in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MisSync => "mis_sync",
            Self::Staff => "staff",
            Self::ParentReport => "parent_report",
            Self::Import => "import",
        }
    }
}

impl fmt::Display for MarkSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not a mark source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mark source {0:?}: expected mis_sync, staff, parent_report or import")]
pub struct MarkSourceParseError(pub String);

impl FromStr for MarkSource {
    type Err = MarkSourceParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [Self::MisSync, Self::Staff, Self::ParentReport, Self::Import]
            .into_iter()
            .find(|source| source.as_str() == value)
            .ok_or_else(|| MarkSourceParseError(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for source in [
            MarkSource::MisSync,
            MarkSource::Staff,
            MarkSource::ParentReport,
            MarkSource::Import,
        ] {
            assert_eq!(source.as_str().parse::<MarkSource>(), Ok(source));
        }
        assert!("email".parse::<MarkSource>().is_err());
    }
}
