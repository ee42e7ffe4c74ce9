//! Register sessions and the dates they fall on.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

/// A register session: every school day has two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Session {
    /// The morning session.
    #[serde(rename = "AM", alias = "am")]
    Am,
    /// The afternoon session.
    #[serde(rename = "PM", alias = "pm")]
    Pm,
}

impl Session {
    /// Returns `AM` or `PM`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Am => "AM",
            Self::Pm => "PM",
        }
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value that is not `AM` or `PM`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session {0:?}: expected AM or PM")]
pub struct SessionParseError(pub String);

impl FromStr for Session {
    type Err = SessionParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_uppercase().as_str() {
            "AM" => Ok(Self::Am),
            "PM" => Ok(Self::Pm),
            _ => Err(SessionParseError(value.to_owned())),
        }
    }
}

/// One session on one school-local date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionDate {
    /// The school-local date.
    pub date: NaiveDate,
    /// Morning or afternoon.
    pub session: Session,
}

/// A value that is not a calendar date written as `YYYY-MM-DD`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateParseError {
    /// Not in the `YYYY-MM-DD` form.
    #[error("invalid date {0:?}: expected YYYY-MM-DD, for example 2025-09-03")]
    Format(String),
    /// In the right form, but no such day exists.
    #[error("invalid date {0:?}: there is no such day in the calendar")]
    NoSuchDay(String),
}

impl DateParseError {
    /// Returns what is wrong without repeating the value, for messages that name it already.
    pub fn problem(&self) -> &'static str {
        match self {
            Self::Format(_) => "expected a date as YYYY-MM-DD, for example 2025-09-03",
            Self::NoSuchDay(_) => "there is no such day in the calendar",
        }
    }
}

/// Parses a calendar date written as `YYYY-MM-DD`.
pub fn parse_date(value: &str) -> Result<NaiveDate, DateParseError> {
    let trimmed = value.trim();
    let bytes = trimmed.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(index, byte)| index == 4 || index == 7 || byte.is_ascii_digit());
    if !shaped {
        return Err(DateParseError::Format(value.to_owned()));
    }
    NaiveDate::parse_from_str(trimmed, "%Y-%m-%d")
        .map_err(|_| DateParseError::NoSuchDay(value.to_owned()))
}

/// Returns the academic year containing a date, named by the calendar year it starts in. Academic
/// years run from 1 August to 31 July, as in DfE statistics.
pub fn academic_year_of(date: NaiveDate) -> i32 {
    if date.month() >= 8 {
        date.year()
    } else {
        date.year() - 1
    }
}

/// Returns the first day (1 August) of the academic year containing `date`.
pub fn academic_year_start(date: NaiveDate) -> NaiveDate {
    NaiveDate::from_ymd_opt(academic_year_of(date), 8, 1).unwrap_or(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_parses_either_case() {
        assert_eq!("am".parse::<Session>(), Ok(Session::Am));
        assert_eq!(" PM ".parse::<Session>(), Ok(Session::Pm));
        assert!("morning".parse::<Session>().is_err());
    }

    #[test]
    fn parse_date_requires_iso_form() {
        assert_eq!(
            parse_date("2025-09-03"),
            Ok(NaiveDate::from_ymd_opt(2025, 9, 3).expect("valid"))
        );
        for bad in ["03/09/2025", "2025-9-3", "", "2025/09/03"] {
            assert_eq!(parse_date(bad), Err(DateParseError::Format(bad.to_owned())));
        }
        assert_eq!(
            parse_date("2025-09-31"),
            Err(DateParseError::NoSuchDay("2025-09-31".to_owned()))
        );
    }

    #[test]
    fn academic_year_turns_on_first_of_august() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).expect("valid");
        assert_eq!(academic_year_of(d(2025, 7, 31)), 2024);
        assert_eq!(academic_year_of(d(2025, 8, 1)), 2025);
        assert_eq!(academic_year_start(d(2026, 3, 2)), d(2025, 8, 1));
    }
}
