//! School identifiers.

/// A value that is not a seven-digit LAESTAB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LAESTAB {0:?}: expected the seven-digit LA number and establishment number, for example 9192001"
)]
pub struct LaestabError(pub String);

/// Parses a LAESTAB: the three-digit local authority number followed by the four-digit
/// establishment number. Surrounding whitespace is ignored.
pub fn parse_laestab(value: &str) -> Result<String, LaestabError> {
    let trimmed = value.trim();
    if trimmed.len() == 7 && trimmed.bytes().all(|byte| byte.is_ascii_digit()) {
        Ok(trimmed.to_owned())
    } else {
        Err(LaestabError(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_laestab_accepts_seven_digits() {
        assert_eq!(parse_laestab(" 9192001 "), Ok("9192001".to_owned()));
    }

    #[test]
    fn parse_laestab_rejects_other_shapes() {
        for bad in ["", "919200", "91920011", "919-2001", "A192001"] {
            assert!(parse_laestab(bad).is_err(), "{bad:?}");
        }
    }
}
