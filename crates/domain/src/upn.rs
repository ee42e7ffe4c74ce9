//! Unique pupil numbers (UPN).
//!
//! A UPN has 13 characters: a check letter, the three-digit local authority number, the
//! four-digit establishment number, the two-digit year of allocation and a three-digit serial.
//! The check letter is the sum of the other twelve digits weighted 2 to 13 by position, modulo
//! 23, read in the alphabet `ABCDEFGHJKLMNPQRTUVWXYZ` (no I, O or S).
//!
//! A temporary UPN, given until the permanent one is known, ends in a letter of that alphabet
//! instead of a digit. For the check letter, that last letter counts as its position in the
//! alphabet (A is 0, Z is 22), as in the school census validation of UPNs.

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
    /// Characters 2 to 12 are not all digits, or character 13 is neither a digit nor a letter
    /// of the check alphabet.
    #[error(
        "UPN {value:?} must be a letter followed by 12 digits, or for a temporary UPN by 11 \
         digits and a letter other than I, O or S"
    )]
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
        let last = bytes[12];
        let last_value = if last.is_ascii_digit() {
            Some(last - b'0')
        } else {
            CHECK_ALPHABET
                .iter()
                .position(|letter| *letter == last)
                .and_then(|position| u8::try_from(position).ok())
        };
        let (true, Some(last_value)) = (
            bytes[0].is_ascii_uppercase() && bytes[1..12].iter().all(u8::is_ascii_digit),
            last_value,
        ) else {
            return Err(UpnError::Format {
                value: value.to_owned(),
            });
        };
        let values: [u8; 12] = std::array::from_fn(|i| {
            if i == 11 {
                last_value
            } else {
                bytes[i + 1] - b'0'
            }
        });
        let expected = check_value_letter(&values);
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

    /// Returns true for a temporary UPN, which ends in a letter.
    pub fn is_temporary(&self) -> bool {
        self.0.as_bytes()[12].is_ascii_uppercase()
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
    check_value_letter(&digits.map(|digit| digit % 10))
}

/// Computes the check letter from the values of the twelve characters after it: a digit's
/// value, or for the last letter of a temporary UPN its position in the check alphabet.
fn check_value_letter(values: &[u8; 12]) -> char {
    let sum: u32 = values
        .iter()
        .enumerate()
        .map(|(index, value)| u32::from(*value) * (index as u32 + 2))
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
            Upn::parse("A12345678901O"),
            Err(UpnError::Format { .. })
        ));
        assert!(matches!(
            Upn::parse("A1234567890XX"),
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

    #[test]
    fn parse_accepts_temporary_upn() {
        // 207000016049 weighs 266, and 266 mod 23 is 13, so the check letter is P.
        assert!(Upn::parse("P207000016049").is_ok());
        assert!(matches!(
            Upn::parse("B207000016049"),
            Err(UpnError::CheckLetter { expected: 'P', .. })
        ));
        // The digits 20700001604 weigh 149 and a final A counts 0, so the check letter is
        // the 12th of the alphabet (149 mod 23 is 11), M.
        let temporary = Upn::parse("m20700001604a").expect("temporary UPN");
        assert_eq!(temporary.as_str(), "M20700001604A");
        assert!(temporary.is_temporary());
        assert!(
            !Upn::parse("P207000016049")
                .expect("permanent")
                .is_temporary()
        );
        // A final Z counts 22, weighted 13: 149 + 286 is 435, and 435 mod 23 is 21, so Y.
        assert!(Upn::parse("Y20700001604Z").is_ok());
        assert!(matches!(
            Upn::parse("A20700001604Z"),
            Err(UpnError::CheckLetter { expected: 'Y', .. })
        ));
    }

    proptest! {
        #[test]
        fn from_digits_round_trips(digits in proptest::array::uniform12(0u8..10)) {
            let upn = Upn::from_digits(digits);
            prop_assert_eq!(Upn::parse(upn.as_str()), Ok(upn));
        }

        #[test]
        fn temporary_upns_with_their_check_letter_parse(
            digits in proptest::array::uniform11(0u8..10),
            last in 0usize..23,
        ) {
            let mut values = [0u8; 12];
            values[..11].copy_from_slice(&digits);
            values[11] = u8::try_from(last).expect("small");
            let mut text = String::new();
            text.push(check_value_letter(&values));
            text.extend(digits.iter().map(|digit| char::from(b'0' + digit)));
            text.push(char::from(CHECK_ALPHABET[last]));
            let upn = Upn::parse(&text).expect("a temporary UPN with its check letter");
            prop_assert!(upn.is_temporary());
            prop_assert_eq!(upn.as_str(), text.as_str());
        }
    }
}
