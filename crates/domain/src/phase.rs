//! Phases of education and the year groups in each.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A phase of education. Each has its own escalation ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nursery, Reception and Years 1 and 2.
    Infant,
    /// Years 3 to 6.
    Junior,
    /// Years 7 to 14.
    Secondary,
}

impl Phase {
    /// Returns the phase of a national curriculum year group as CTF writes it (`N1`, `N2`, `R`,
    /// `1` to `14`), or `None` for a value that is not a year group.
    pub fn of_year_group(year_group: &str) -> Option<Self> {
        match year_group.trim().to_ascii_uppercase().as_str() {
            "N1" | "N2" | "R" | "1" | "2" => Some(Self::Infant),
            "3" | "4" | "5" | "6" => Some(Self::Junior),
            other => match other.parse::<u8>() {
                Ok(7..=14) => Some(Self::Secondary),
                _ => None,
            },
        }
    }

    /// Returns the phase's name as used in files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Infant => "infant",
            Self::Junior => "junior",
            Self::Secondary => "secondary",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not a phase name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid phase {0:?}: expected infant, junior or secondary")]
pub struct PhaseParseError(pub String);

impl FromStr for Phase {
    type Err = PhaseParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "infant" => Ok(Self::Infant),
            "junior" => Ok(Self::Junior),
            "secondary" => Ok(Self::Secondary),
            _ => Err(PhaseParseError(value.to_owned())),
        }
    }
}

/// Returns a national curriculum year group in the form CTF writes it (`N1`, `N2`, `R`, `1` to
/// `14`, or `X` for a pupil not following the national curriculum), or `None` for any other
/// value. Lower case, spaces around the value and leading zeros (`08`) are accepted.
pub fn normalise_year_group(value: &str) -> Option<String> {
    let upper = value.trim().to_ascii_uppercase();
    match upper.as_str() {
        "N1" | "N2" | "R" | "X" => Some(upper),
        digits if !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit()) => {
            match digits.parse::<u8>() {
                Ok(year @ 1..=14) => Some(year.to_string()),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_groups_normalise() {
        for (sent, stored) in [
            ("r", "R"),
            (" n1 ", "N1"),
            ("08", "8"),
            ("14", "14"),
            ("x", "X"),
        ] {
            assert_eq!(
                normalise_year_group(sent).as_deref(),
                Some(stored),
                "{sent}"
            );
        }
        for invalid in ["Year 8", "15", "0", "N3", "", "-1", "1.5"] {
            assert_eq!(normalise_year_group(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn year_groups_map_to_phases() {
        assert_eq!(Phase::of_year_group("R"), Some(Phase::Infant));
        assert_eq!(Phase::of_year_group("2"), Some(Phase::Infant));
        assert_eq!(Phase::of_year_group("3"), Some(Phase::Junior));
        assert_eq!(Phase::of_year_group("6"), Some(Phase::Junior));
        assert_eq!(Phase::of_year_group("7"), Some(Phase::Secondary));
        assert_eq!(Phase::of_year_group("13"), Some(Phase::Secondary));
        assert_eq!(Phase::of_year_group("X"), None);
        assert_eq!(Phase::of_year_group("15"), None);
    }

    #[test]
    fn names_round_trip() {
        for phase in [Phase::Infant, Phase::Junior, Phase::Secondary] {
            assert_eq!(phase.as_str().parse::<Phase>(), Ok(phase));
        }
        assert!("primary".parse::<Phase>().is_err());
    }
}
