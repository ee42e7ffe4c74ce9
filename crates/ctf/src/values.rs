//! Parsing of element text into model values. An empty element counts as absent, so each
//! parser returns `None` for empty text.

use std::fmt::Display;

use chrono::NaiveDate;

use crate::error::CtfErrorKind;

/// The values besides digits that an `LEA` or `Estab` element accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholders {
    /// Digits only.
    Rejected,
    /// Also one capital letter repeated, such as `XXX`/`XXXX`, which schools write in
    /// `DestSchool` when the destination school is not known.
    Accepted,
}

pub(crate) fn text(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// Parses a date written `YYYY-MM-DD`, with exactly four, two and two digits.
pub(crate) fn date(element: &'static str, value: &str) -> Result<Option<NaiveDate>, CtfErrorKind> {
    if value.is_empty() {
        return Ok(None);
    }
    let invalid = || CtfErrorKind::InvalidDate {
        element,
        value: value.to_owned(),
    };
    let shape_ok = value.len() == 10
        && value.bytes().enumerate().all(|(index, byte)| match index {
            4 | 7 => byte == b'-',
            _ => byte.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(invalid());
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| invalid())
}

/// Parses a session total: ASCII digits only, at most `u32::MAX`.
pub(crate) fn count(element: &'static str, value: &str) -> Result<Option<u32>, CtfErrorKind> {
    if value.is_empty() {
        return Ok(None);
    }
    let invalid = || CtfErrorKind::InvalidNumber {
        element,
        value: value.to_owned(),
    };
    if !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse().map(Some).map_err(|_| invalid())
}

/// Parses an `LEA` (3 digits) or `Estab` (4 digits) value.
pub(crate) fn school_number(
    element: &'static str,
    digits: usize,
    placeholders: Placeholders,
    value: &str,
) -> Result<Option<String>, CtfErrorKind> {
    if value.is_empty() {
        return Ok(None);
    }
    if is_school_number(value, digits, placeholders) {
        Ok(Some(value.to_owned()))
    } else {
        Err(CtfErrorKind::InvalidSchoolNumber {
            element,
            value: value.to_owned(),
            digits,
        })
    }
}

/// Returns whether `value` is `digits` ASCII digits, or, where accepted, `digits` copies of one
/// capital letter.
pub(crate) fn is_school_number(value: &str, digits: usize, placeholders: Placeholders) -> bool {
    if value.len() != digits {
        return false;
    }
    if value.bytes().all(|byte| byte.is_ascii_digit()) {
        return true;
    }
    let first = value.as_bytes().first().copied().unwrap_or(b'0');
    placeholders == Placeholders::Accepted
        && first.is_ascii_uppercase()
        && value.bytes().all(|byte| byte == first)
}

/// Stores `value` in `slot`. A second value equal to the first is accepted, and a different
/// one is an error, because the file then contradicts itself.
pub(crate) fn fill<T: PartialEq + Display>(
    slot: &mut Option<T>,
    value: Option<T>,
    element: &'static str,
) -> Result<(), CtfErrorKind> {
    let Some(value) = value else {
        return Ok(());
    };
    match slot {
        Some(first) if *first != value => Err(CtfErrorKind::ConflictingValues {
            element,
            first: first.to_string(),
            second: value.to_string(),
        }),
        Some(_) => Ok(()),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// Returns the value of a required element, or the error for its absence.
pub(crate) fn required<T>(slot: Option<T>, element: &'static str) -> Result<T, CtfErrorKind> {
    slot.ok_or(CtfErrorKind::MissingElement { element })
}

/// Returns the canonical spelling of `name` if it matches one of `known` in any letter case.
pub(crate) fn canonical(name: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .copied()
        .find(|candidate| candidate.eq_ignore_ascii_case(name))
}
