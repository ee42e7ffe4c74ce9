//! Unique pupil numbers (UPN).
//!
//! A UPN has 13 characters: a check letter, the three-digit local authority number, the
//! four-digit establishment number, the two-digit year of allocation and a three-digit serial.
//! The check letter is the sum of the other twelve digits weighted 2 to 13 by position, modulo
//! 23, read in the alphabet `ABCDEFGHJKLMNPQRTUVWXYZ` (no I, O or S).

use std::fmt;

use serde::{Deserialize, Serialize};

const CHECK_ALPHABET: &[u8; 23] = b"ABCDEFGHJKLMNPQRTUVWXYZ";

/// A validated unique pupil number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Upn(String);

/// The reason a string is not a valid UPN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpnError {
    /// Not 13 characters long.
    #[error("UPN {value:?} has {length} characters, expected 13")]
    Length {
        /// The value as given.
        value: String,
        /// Its length in characters.
        length: usize,
    },
    /// Characters 2 to 13 are not all digits.
    #[error("UPN {value:?} must be a letter followed by 12 digits")]
    Format {
        /// The value as given.
        value: String,
    },
    /// The first character does not match the check letter of the digits.
    #[error("UPN {value:?} has check letter {found}, but its digits give {expected}")]
    CheckLetter {
        /// The value as given.
        value: String,
        /// The first character of the value.
        found: char,
        /// The check letter the digits produce.
        expected: char,
    },
}

impl Upn {
    /// Parses and validates a UPN, including its check letter. Lower-case letters are accepted
    /// and stored in upper case.
    pub fn parse(value: &str) -> Result<Self, UpnError> {
        let upper = value.trim().to_ascii_uppercase();
        let length = upper.chars().count();
        if length != 13 {
            return Err(UpnError::Length {
                value: value.to_owned(),
                length,
            });
        }
        let bytes = upper.as_bytes();
        if !bytes[0].is_ascii_uppercase() || !bytes[1..].iter().all(u8::is_ascii_digit) {
            return Err(UpnError::Format {
                value: value.to_owned(),
            });
        }
        let digits: [u8; 12] = std::array::from_fn(|i| bytes[i + 1] - b'0');
        let expected = check_letter(&digits);
        let found = bytes[0] as char;
        if found != expected {
            return Err(UpnError::CheckLetter {
                value: value.to_owned(),
                found,
                expected,
            });
        }
        Ok(Self(upper))
    }

    /// Builds a UPN from its twelve digits, computing the check letter.
    pub fn from_digits(digits: [u8; 12]) -> Self {
        let mut text = String::with_capacity(13);
        text.push(check_letter(&digits));
        for digit in digits {
            text.push(char::from(b'0' + digit % 10));
        }
        Self(text)
    }

    /// Returns the UPN as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Computes the check letter for the twelve digits that follow it.
pub fn check_letter(digits: &[u8; 12]) -> char {
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(index, digit)| u32::from(*digit % 10) * (index as u32 + 2))
        .sum();
    CHECK_ALPHABET[(sum % 23) as usize] as char
}

impl fmt::Display for Upn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Upn {
    type Error = UpnError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Upn> for String {
    fn from(value: Upn) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parse_accepts_valid_check_letter() {
        let upn = Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, 1]);
        assert_eq!(Upn::parse(upn.as_str()), Ok(upn.clone()));
        assert_eq!(Upn::parse(&upn.as_str().to_lowercase()), Ok(upn));
    }

    #[test]
    fn parse_rejects_wrong_check_letter() {
        let upn = Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, 1]);
        let mut text = upn.as_str().to_owned();
        let wrong = if text.starts_with('A') { "B" } else { "A" };
        text.replace_range(0..1, wrong);
        assert!(matches!(
            Upn::parse(&text),
            Err(UpnError::CheckLetter { .. })
        ));
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        assert!(matches!(Upn::parse("A12"), Err(UpnError::Length { .. })));
        assert!(matches!(
            Upn::parse("A12345678901X"),
            Err(UpnError::Format { .. })
        ));
        assert!(matches!(
            Upn::parse("1123456789012"),
            Err(UpnError::Format { .. })
        ));
    }

    #[test]
    fn check_letter_known_value() {
        // Digits 000000000000 weigh nothing, so the check letter is the first of the alphabet.
        assert_eq!(check_letter(&[0; 12]), 'A');
        // 1 in the last position weighs 13, and 13 mod 23 is the 14th letter, P.
        assert_eq!(check_letter(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), 'P');
    }

    proptest! {
        #[test]
        fn from_digits_round_trips(digits in proptest::array::uniform12(0u8..10)) {
            let upn = Upn::from_digits(digits);
            prop_assert_eq!(Upn::parse(upn.as_str()), Ok(upn));
        }
    }
}
