//! Reading the values of a CSV export: dates in a profile's format, session spellings, sex,
//! year groups and minutes late.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use rollcall_domain::Session;
use rollcall_domain::phase::normalise_year_group;

const MONTH_NAMES: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// One part of a date format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatePart {
    /// `YYYY`: four digits.
    Year,
    /// `MM`: two digits.
    Month,
    /// `M`: one or two digits.
    MonthShort,
    /// `MMM`: a three-letter English month name, such as Sep.
    MonthName,
    /// `DD`: two digits.
    Day,
    /// `D`: one or two digits.
    DayShort,
    /// Any other character, which must appear as written.
    Literal(char),
}

impl DatePart {
    fn is_numeric(self) -> bool {
        !matches!(self, Self::Literal(_) | Self::MonthName)
    }
}

/// A date format written with the tokens `YYYY`, `MM`, `M`, `MMM`, `DD` and `D`, such as
/// `DD/MM/YYYY`. Every other character is a literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFormat {
    pattern: String,
    parts: Vec<DatePart>,
}

impl DateFormat {
    /// Parses a format, checking that it names the year, month and day once each and that a
    /// one-or-two-digit field is followed by a literal, so that every date reads one way.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut parts = Vec::new();
        let mut index = 0;
        while index < chars.len() {
            let run = chars[index..]
                .iter()
                .take_while(|&&c| c == chars[index])
                .count();
            let part = match (chars[index], run) {
                ('Y', 4) => DatePart::Year,
                ('M', 1) => DatePart::MonthShort,
                ('M', 2) => DatePart::Month,
                ('M', 3) => DatePart::MonthName,
                ('D', 1) => DatePart::DayShort,
                ('D', 2) => DatePart::Day,
                ('Y' | 'M' | 'D', _) => {
                    return Err(format!(
                        "invalid date format {pattern:?}: {:?} is not a token; use YYYY, MM, M, MMM, DD or D",
                        chars[index..index + run].iter().collect::<String>()
                    ));
                }
                (literal, _) => {
                    parts.extend(std::iter::repeat_n(DatePart::Literal(literal), run));
                    index += run;
                    continue;
                }
            };
            parts.push(part);
            index += run;
        }

        let years = parts.iter().filter(|p| **p == DatePart::Year).count();
        let months = parts
            .iter()
            .filter(|p| {
                matches!(
                    p,
                    DatePart::Month | DatePart::MonthShort | DatePart::MonthName
                )
            })
            .count();
        let days = parts
            .iter()
            .filter(|p| matches!(p, DatePart::Day | DatePart::DayShort))
            .count();
        if years != 1 || months != 1 || days != 1 {
            return Err(format!(
                "invalid date format {pattern:?}: it must contain the year (YYYY), the month (MM, M \
                 or MMM) and the day (DD or D) once each, for example DD/MM/YYYY"
            ));
        }
        for pair in parts.windows(2) {
            if matches!(pair[0], DatePart::MonthShort | DatePart::DayShort) && pair[1].is_numeric()
            {
                return Err(format!(
                    "invalid date format {pattern:?}: M and D take one or two digits, so they must \
                     be followed by a separator such as / or -"
                ));
            }
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            parts,
        })
    }

    /// Writes a date in this format.
    pub fn format(&self, date: NaiveDate) -> String {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                DatePart::Year => text.push_str(&format!("{:04}", date.year())),
                DatePart::Month => text.push_str(&format!("{:02}", date.month())),
                DatePart::MonthShort => text.push_str(&date.month().to_string()),
                DatePart::MonthName => text.push_str(MONTH_NAMES[date.month0() as usize]),
                DatePart::Day => text.push_str(&format!("{:02}", date.day())),
                DatePart::DayShort => text.push_str(&date.day().to_string()),
                DatePart::Literal(c) => text.push(*c),
            }
        }
        text
    }

    /// Reads a date in this format. Surrounding spaces are ignored, and so is a time of day
    /// after the date (such as `00:00`), which spreadsheets add to date cells.
    pub fn parse_date(&self, value: &str) -> Result<NaiveDate, DateError> {
        let trimmed = strip_time(value.trim());
        let bytes = trimmed.as_bytes();
        let mut position = 0;
        let (mut year, mut month, mut day) = (0, 0, 0);
        for part in &self.parts {
            let rest = &bytes[position..];
            let consumed = match part {
                DatePart::Year => take_digits(rest, 4, 4).map(|(n, len)| {
                    year = n;
                    len
                }),
                DatePart::Month => take_digits(rest, 2, 2).map(|(n, len)| {
                    month = n;
                    len
                }),
                DatePart::MonthShort => take_digits(rest, 1, 2).map(|(n, len)| {
                    month = n;
                    len
                }),
                DatePart::Day => take_digits(rest, 2, 2).map(|(n, len)| {
                    day = n;
                    len
                }),
                DatePart::DayShort => take_digits(rest, 1, 2).map(|(n, len)| {
                    day = n;
                    len
                }),
                DatePart::MonthName => take_month_name(rest).map(|(n, len)| {
                    month = n;
                    len
                }),
                DatePart::Literal(c) => {
                    let mut buffer = [0; 4];
                    let encoded = c.encode_utf8(&mut buffer).as_bytes();
                    rest.starts_with(encoded).then_some(encoded.len())
                }
            };
            match consumed {
                Some(length) => position += length,
                None => return Err(DateError::Format),
            }
        }
        if position != bytes.len() {
            return Err(DateError::Format);
        }
        let year = i32::try_from(year).map_err(|_| DateError::Format)?;
        NaiveDate::from_ymd_opt(year, month, day).ok_or(DateError::NoSuchDay)
    }
}

impl fmt::Display for DateFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// The reason a value is not a date in the profile's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateError {
    /// Not written in the format.
    Format,
    /// Written in the format, but no such day exists, such as 31/02/2025.
    NoSuchDay,
}

/// Removes a time of day after a date: a space, then hours and minutes with optional seconds.
fn strip_time(value: &str) -> &str {
    let Some((date, time)) = value.rsplit_once(' ') else {
        return value;
    };
    let is_time = {
        let pieces: Vec<&str> = time.split(':').collect();
        (pieces.len() == 2 || pieces.len() == 3)
            && pieces
                .iter()
                .all(|piece| piece.len() == 2 && piece.bytes().all(|b| b.is_ascii_digit()))
    };
    if is_time { date.trim_end() } else { value }
}

/// Takes between `min` and `max` ASCII digits, as many as there are, and returns their value
/// and how many were taken.
fn take_digits(bytes: &[u8], min: usize, max: usize) -> Option<(u32, usize)> {
    let length = bytes
        .iter()
        .take(max)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if length < min {
        return None;
    }
    let value = bytes[..length]
        .iter()
        .fold(0, |total, digit| total * 10 + u32::from(digit - b'0'));
    Some((value, length))
}

fn take_month_name(bytes: &[u8]) -> Option<(u32, usize)> {
    let word = bytes.get(..3)?;
    let index = MONTH_NAMES
        .iter()
        .position(|name| name.as_bytes().eq_ignore_ascii_case(word))?;
    Some((u32::try_from(index).ok()? + 1, 3))
}

/// The spellings a profile accepts for the morning and afternoon sessions, compared without
/// regard to letter case or surrounding spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpelling {
    am: Vec<String>,
    pm: Vec<String>,
}

impl SessionSpelling {
    /// Builds the spellings, checking that each session has one and that none is shared.
    pub fn new(am: &[String], pm: &[String]) -> Result<Self, String> {
        let clean = |values: &[String]| -> Vec<String> {
            values
                .iter()
                .map(|value| value.trim().to_lowercase())
                .filter(|value| !value.is_empty())
                .collect()
        };
        let (am, pm) = (clean(am), clean(pm));
        if am.is_empty() || pm.is_empty() {
            return Err(
                "invalid [sessions]: give at least one spelling for am and one for pm, such as \
                 am = [\"AM\"] and pm = [\"PM\"]"
                    .to_owned(),
            );
        }
        if let Some(shared) = am.iter().find(|value| pm.contains(value)) {
            return Err(format!(
                "invalid [sessions]: {shared:?} is given for both am and pm; each spelling must \
                 name one session"
            ));
        }
        Ok(Self { am, pm })
    }

    /// Returns the session a value spells, or `None` for an unknown spelling.
    pub fn read(&self, value: &str) -> Option<Session> {
        let value = value.trim().to_lowercase();
        if self.am.contains(&value) {
            Some(Session::Am)
        } else if self.pm.contains(&value) {
            Some(Session::Pm)
        } else {
            None
        }
    }

    /// Lists the accepted spellings for messages, such as `AM or PM`.
    pub fn describe(&self) -> String {
        let mut spellings: Vec<String> = self
            .am
            .iter()
            .chain(&self.pm)
            .map(|s| s.to_uppercase())
            .collect();
        let last = spellings.pop().unwrap_or_default();
        if spellings.is_empty() {
            last
        } else {
            format!("{} or {last}", spellings.join(", "))
        }
    }
}

/// Reads a pupil's sex as `M` or `F`, from M, F, Male or Female in any letter case. An empty
/// value stays empty; `None` means the value is not one of these.
pub fn read_sex(value: &str) -> Option<&'static str> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Some(""),
        "m" | "male" => Some("M"),
        "f" | "female" => Some("F"),
        _ => None,
    }
}

/// Reads a national curriculum year group as rollcall stores it (`N1`, `N2`, `R`, `1` to
/// `14`, or `X` for a pupil outside the national curriculum). Accepts the forms exports use,
/// such as `Year 7`, `Yr 7`, `Y7`, `07`, `Reception` and `Nursery 1`. An empty value stays
/// empty; `None` means the value is not a year group.
pub fn read_year_group(value: &str) -> Option<String> {
    let lower = value.trim().to_ascii_lowercase();
    if lower.is_empty() {
        return Some(String::new());
    }
    let compact: String = lower.chars().filter(|c| !c.is_whitespace()).collect();
    match compact.as_str() {
        "rec" | "reception" | "yearr" => return Some("R".to_owned()),
        "nursery1" => return Some("N1".to_owned()),
        "nursery2" => return Some("N2".to_owned()),
        _ => {}
    }
    let number = ["year", "yr", "y"]
        .iter()
        .find_map(|prefix| {
            compact
                .strip_prefix(prefix)
                .filter(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or(&compact);
    normalise_year_group(number)
}

/// Reads minutes late: empty means 0, otherwise a whole number from 0 to 999.
pub fn read_minutes_late(value: &str) -> Option<i32> {
    let value = value.trim();
    if value.is_empty() {
        return Some(0);
    }
    match value.parse::<i32>() {
        Ok(minutes @ 0..=999) => Some(minutes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
    }

    #[test]
    fn uk_dates_read_day_first() {
        let format = DateFormat::parse("DD/MM/YYYY").expect("format");
        assert_eq!(format.parse_date("08/09/2025"), Ok(date(2025, 9, 8)));
        assert_eq!(format.parse_date(" 08/09/2025 "), Ok(date(2025, 9, 8)));
        assert_eq!(format.parse_date("08/09/2025 00:00"), Ok(date(2025, 9, 8)));
        assert_eq!(
            format.parse_date("08/09/2025 00:00:00"),
            Ok(date(2025, 9, 8))
        );
    }

    #[test]
    fn wrong_date_shapes_are_format_errors() {
        let format = DateFormat::parse("DD/MM/YYYY").expect("format");
        for value in [
            "2025-09-08",
            "8/9/2025",
            "08/09/25",
            "08-09-2025",
            "",
            "08/09/2025x",
            "08/09/2025 9am",
        ] {
            assert_eq!(
                format.parse_date(value),
                Err(DateError::Format),
                "{value:?}"
            );
        }
    }

    #[test]
    fn impossible_days_are_not_dates() {
        let format = DateFormat::parse("DD/MM/YYYY").expect("format");
        assert_eq!(format.parse_date("31/02/2025"), Err(DateError::NoSuchDay));
        assert_eq!(format.parse_date("00/01/2025"), Err(DateError::NoSuchDay));
        assert_eq!(format.parse_date("29/02/2024"), Ok(date(2024, 2, 29)));
    }

    #[test]
    fn short_tokens_take_one_or_two_digits() {
        let format = DateFormat::parse("D/M/YYYY").expect("format");
        assert_eq!(format.parse_date("8/9/2025"), Ok(date(2025, 9, 8)));
        assert_eq!(format.parse_date("08/09/2025"), Ok(date(2025, 9, 8)));
        assert_eq!(format.parse_date("18/12/2025"), Ok(date(2025, 12, 18)));
        assert_eq!(format.parse_date("180/12/2025"), Err(DateError::Format));
    }

    #[test]
    fn month_names_read_in_any_case() {
        let format = DateFormat::parse("DD-MMM-YYYY").expect("format");
        assert_eq!(format.parse_date("08-Sep-2025"), Ok(date(2025, 9, 8)));
        assert_eq!(format.parse_date("08-SEP-2025"), Ok(date(2025, 9, 8)));
        assert_eq!(format.parse_date("08-Sept-2025"), Err(DateError::Format));
        assert_eq!(format.format(date(2025, 1, 2)), "02-Jan-2025");
    }

    #[test]
    fn iso_format_reads_iso_dates() {
        let format = DateFormat::parse("YYYY-MM-DD").expect("format");
        assert_eq!(format.parse_date("2025-09-08"), Ok(date(2025, 9, 8)));
        assert_eq!(format.parse_date("08/09/2025"), Err(DateError::Format));
    }

    #[test]
    fn invalid_date_formats_are_rejected() {
        for pattern in [
            "DD/MM/YY",
            "DD/MM",
            "DD/MM/YYYY/DD",
            "DDD/MM/YYYY",
            "DMYYYY",
            "YYYYMD",
            "",
        ] {
            assert!(DateFormat::parse(pattern).is_err(), "{pattern:?}");
        }
        assert!(DateFormat::parse("YYYYMMDD").is_ok());
        assert!(DateFormat::parse("D.M.YYYY").is_ok());
    }

    #[test]
    fn session_spellings_ignore_case() {
        let spelling =
            SessionSpelling::new(&["AM".into(), "Morning".into()], &["PM".into()]).expect("valid");
        assert_eq!(spelling.read("am"), Some(Session::Am));
        assert_eq!(spelling.read(" MORNING "), Some(Session::Am));
        assert_eq!(spelling.read("pm"), Some(Session::Pm));
        assert_eq!(spelling.read("afternoon"), None);
        assert_eq!(spelling.read(""), None);
        assert_eq!(spelling.describe(), "AM, MORNING or PM");
    }

    #[test]
    fn session_spellings_must_not_overlap() {
        assert!(SessionSpelling::new(&["AM".into()], &["am".into()]).is_err());
        assert!(SessionSpelling::new(&[], &["PM".into()]).is_err());
        assert!(SessionSpelling::new(&[" ".into()], &["PM".into()]).is_err());
    }

    #[test]
    fn sex_reads_letters_and_words() {
        assert_eq!(read_sex("Male"), Some("M"));
        assert_eq!(read_sex("f"), Some("F"));
        assert_eq!(read_sex(""), Some(""));
        assert_eq!(read_sex("X"), None);
    }

    #[test]
    fn year_groups_read_export_forms() {
        for (value, expected) in [
            ("7", "7"),
            ("07", "7"),
            ("Year 7", "7"),
            ("Yr 11", "11"),
            ("Y10", "10"),
            ("year 14", "14"),
            ("Reception", "R"),
            ("R", "R"),
            ("Nursery 1", "N1"),
            ("N2", "N2"),
            ("x", "X"),
            ("", ""),
        ] {
            assert_eq!(
                read_year_group(value).as_deref(),
                Some(expected),
                "{value:?}"
            );
        }
        for value in ["0", "15", "Year", "7B", "-1", "Year 7.5", "Yr", "N3"] {
            assert_eq!(read_year_group(value), None, "{value:?}");
        }
    }

    #[test]
    fn minutes_late_are_whole_minutes() {
        assert_eq!(read_minutes_late(""), Some(0));
        assert_eq!(read_minutes_late(" 12 "), Some(12));
        assert_eq!(read_minutes_late("-3"), None);
        assert_eq!(read_minutes_late("ten"), None);
        assert_eq!(read_minutes_late("1000"), None);
    }

    proptest! {
        #[test]
        fn formatted_dates_read_back(
            days in 0_i64..73_000,
            pattern in prop::sample::select(vec![
                "DD/MM/YYYY", "D/M/YYYY", "YYYY-MM-DD", "DD-MMM-YYYY", "DD.MM.YYYY", "YYYYMMDD",
            ]),
        ) {
            let format = DateFormat::parse(pattern).expect("format");
            let day = date(1900, 1, 1) + chrono::Duration::days(days);
            prop_assert_eq!(format.parse_date(&format.format(day)), Ok(day));
        }

        #[test]
        fn session_spellings_read_in_any_case(upper in prop::collection::vec(any::<bool>(), 7)) {
            let spelling = SessionSpelling::new(&["Morning".into()], &["Afternoon".into()])
                .expect("valid");
            let mixed: String = "morning"
                .chars()
                .zip(&upper)
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            prop_assert_eq!(spelling.read(&mixed), Some(Session::Am));
        }
    }
}
