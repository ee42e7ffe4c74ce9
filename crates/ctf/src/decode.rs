//! Turns the bytes of a file into UTF-8 text, or explains why they are not.

use quick_xml::events::BytesDecl;

use crate::error::{CtfError, CtfErrorKind};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Returns the text of `bytes` without its UTF-8 byte order mark.
///
/// Rejects empty input, UTF-16 (with or without a byte order mark), input whose first visible
/// byte is not `<` (zip archives, PDFs, CSV exports) and bytes that are not valid UTF-8. Input
/// cut short inside a multi-byte character counts as truncated.
pub(crate) fn utf8_text(bytes: &[u8]) -> Result<&str, CtfError> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    if looks_like_utf16(bytes) {
        return Err(CtfError::new(CtfErrorKind::Utf16));
    }

    let Some(first) = bytes.iter().position(|byte| !byte.is_ascii_whitespace()) else {
        return Err(CtfError::new(CtfErrorKind::EmptyFile));
    };
    if bytes[first] != b'<' {
        let detail = "the file does not start with '<'".to_owned();
        let line = line_at(bytes, first as u64);
        return Err(CtfError::new(CtfErrorKind::NotXml { detail }).at_line(line));
    }

    std::str::from_utf8(bytes).map_err(|error| {
        let line = line_at(bytes, error.valid_up_to() as u64);
        let kind = if error.error_len().is_none() {
            CtfErrorKind::Truncated { element: None }
        } else {
            CtfErrorKind::InvalidUtf8
        };
        CtfError::new(kind).at_line(line)
    })
}

fn looks_like_utf16(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\xFF\xFE")
        || bytes.starts_with(b"\xFE\xFF")
        || bytes.starts_with(b"<\0")
        || bytes.starts_with(b"\0<")
}

/// Rejects an XML declaration whose `encoding` is not UTF-8 or its subset US-ASCII.
pub(crate) fn check_declared_encoding(declaration: &BytesDecl<'_>) -> Result<(), CtfErrorKind> {
    let Some(encoding) = declaration.encoding() else {
        return Ok(());
    };
    let encoding = match encoding {
        Ok(encoding) => String::from_utf8_lossy(&encoding).into_owned(),
        Err(error) => {
            let detail = format!("invalid XML declaration: {error}");
            return Err(CtfErrorKind::MalformedXml { detail });
        }
    };
    let accepted = ["UTF-8", "UTF8", "US-ASCII", "ASCII"];
    if accepted
        .iter()
        .any(|name| name.eq_ignore_ascii_case(&encoding))
    {
        Ok(())
    } else {
        Err(CtfErrorKind::DeclaredEncoding { encoding })
    }
}

/// Returns the 1-based line number of the byte at `offset`.
pub(crate) fn line_at(bytes: &[u8], offset: u64) -> u64 {
    let end = usize::try_from(offset).map_or(bytes.len(), |offset| offset.min(bytes.len()));
    let newlines = bytes[..end].iter().filter(|byte| **byte == b'\n').count();
    newlines as u64 + 1
}
