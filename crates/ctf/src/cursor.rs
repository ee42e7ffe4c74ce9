//! A walk over quick-xml events that keeps the stack of open elements, so that every error can
//! name its element path, line and pupil.

use std::borrow::Cow;
use std::collections::HashMap;

use quick_xml::Reader;
use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::{BytesRef, BytesStart, Event};

use crate::decode::check_declared_encoding;
use crate::error::{CtfError, CtfErrorKind};

/// Elements that repeat under one parent. Paths number them from 1, as XPath does.
const NUMBERED: &[&str] = &["Pupil", "YearData", "ExtendedMark"];

/// The path and line of an element, kept for errors found after the element has closed.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    path: String,
    line: u64,
}

#[derive(Debug)]
struct OpenElement {
    /// The local name as the file spells it.
    name: String,
    /// The position among the parent's children of the same name, from 1.
    ordinal: usize,
    /// The byte offset of the start tag.
    offset: u64,
    /// Whether the element was written `<Name/>`, so no end tag follows.
    self_closing: bool,
    /// How many children of each lowercased name have started so far.
    child_counts: HashMap<String, usize>,
}

/// Reads one document element by element.
///
/// The visiting methods ([`Cursor::for_each_child`], [`Cursor::read_value`],
/// [`Cursor::skip_element`]) each consume the element on top of the stack, up to and including
/// its end tag.
pub(crate) struct Cursor<'a> {
    reader: Reader<&'a [u8]>,
    /// The byte offset of every newline in the text, so that a line number is a binary search
    /// rather than a scan from the start for each element.
    newlines: Vec<usize>,
    open: Vec<OpenElement>,
    upn: Option<String>,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            reader: Reader::from_str(text),
            newlines: text
                .bytes()
                .enumerate()
                .filter(|(_, byte)| *byte == b'\n')
                .map(|(offset, _)| offset)
                .collect(),
            open: Vec::new(),
            upn: None,
        }
    }

    /// Skips the prolog and opens the root element, returning its name.
    pub(crate) fn open_root(&mut self) -> Result<String, CtfError> {
        loop {
            let offset = self.reader.buffer_position();
            match self.next_event()? {
                Event::Decl(declaration) => {
                    check_declared_encoding(&declaration).map_err(|kind| self.error(kind))?;
                }
                Event::Start(start) => return Ok(self.push(&start, offset, false)),
                Event::Empty(start) => return Ok(self.push(&start, offset, true)),
                Event::Text(text) if text.iter().all(u8::is_ascii_whitespace) => {}
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                    let detail = "text before the first element".to_owned();
                    let line = self.line_at(offset);
                    return Err(CtfError::new(CtfErrorKind::NotXml { detail }).at_line(line));
                }
                Event::Eof => return Err(CtfError::new(CtfErrorKind::MissingRoot)),
                Event::End(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }

    /// Calls `visit` with the name of each child element of the open element, then consumes the
    /// open element's end tag. Text between children is ignored, and a child that `visit`
    /// leaves unread is skipped.
    pub(crate) fn for_each_child(
        &mut self,
        mut visit: impl FnMut(&mut Self, &str) -> Result<(), CtfError>,
    ) -> Result<(), CtfError> {
        if self.close_if_self_closing() {
            return Ok(());
        }
        let depth = self.open.len();
        loop {
            let offset = self.reader.buffer_position();
            let name = match self.next_event()? {
                Event::Start(start) => self.push(&start, offset, false),
                Event::Empty(start) => self.push(&start, offset, true),
                Event::End(_) => {
                    self.open.pop();
                    return Ok(());
                }
                Event::Eof => return Err(self.truncated()),
                _ => continue,
            };
            visit(self, &name)?;
            if self.open.len() > depth {
                self.skip_element()?;
            }
        }
    }

    /// Reads the text of the open element, passes it to `parse` with surrounding whitespace
    /// trimmed, and consumes the end tag. Child elements inside it are skipped.
    ///
    /// An error from `parse` is given the open element's path and line.
    pub(crate) fn read_value<T>(
        &mut self,
        parse: impl FnOnce(&str) -> Result<T, CtfErrorKind>,
    ) -> Result<T, CtfError> {
        let text = self.collect_text()?;
        let value = parse(text.trim()).map_err(|kind| self.error(kind));
        self.open.pop();
        value
    }

    /// Consumes the open element and everything inside it.
    pub(crate) fn skip_element(&mut self) -> Result<(), CtfError> {
        if self.close_if_self_closing() {
            return Ok(());
        }
        let mut depth = 0_usize;
        loop {
            match self.next_event()? {
                Event::Start(_) => depth += 1,
                Event::End(_) if depth == 0 => {
                    self.open.pop();
                    return Ok(());
                }
                Event::End(_) => depth -= 1,
                Event::Eof => return Err(self.truncated()),
                _ => {}
            }
        }
    }

    /// Records the UPN of the pupil being read, for the errors that follow.
    pub(crate) fn set_upn(&mut self, upn: Option<String>) {
        self.upn = upn;
    }

    /// Returns the path and line of the open element.
    pub(crate) fn place(&self) -> Place {
        Place {
            path: self.path(),
            line: self.open.last().map_or(1, |open| self.line_at(open.offset)),
        }
    }

    /// Returns an error located at the open element.
    pub(crate) fn error(&self, kind: CtfErrorKind) -> CtfError {
        self.error_at(&self.place(), kind)
    }

    /// Returns an error located at `place`.
    pub(crate) fn error_at(&self, place: &Place, kind: CtfErrorKind) -> CtfError {
        let error = CtfError::new(kind).at_line(place.line);
        if place.path.is_empty() {
            error
        } else {
            error.in_element(place.path.clone(), self.upn.clone())
        }
    }

    fn next_event(&mut self) -> Result<Event<'a>, CtfError> {
        match self.reader.read_event() {
            Ok(event) => Ok(event),
            Err(error) => Err(self.xml_error(&error)),
        }
    }

    /// Pushes a started element and returns its local name.
    fn push(&mut self, start: &BytesStart<'_>, offset: u64, self_closing: bool) -> String {
        let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
        let ordinal = match self.open.last_mut() {
            Some(parent) => {
                let count = parent
                    .child_counts
                    .entry(name.to_ascii_lowercase())
                    .or_insert(0);
                *count += 1;
                *count
            }
            None => 1,
        };
        self.open.push(OpenElement {
            name: name.clone(),
            ordinal,
            offset,
            self_closing,
            child_counts: HashMap::new(),
        });
        name
    }

    fn close_if_self_closing(&mut self) -> bool {
        let self_closing = self.open.last().is_some_and(|open| open.self_closing);
        if self_closing {
            self.open.pop();
        }
        self_closing
    }

    /// Reads text up to the open element's end tag, which it consumes without popping.
    fn collect_text(&mut self) -> Result<String, CtfError> {
        let mut text = String::new();
        if self.open.last().is_some_and(|open| open.self_closing) {
            return Ok(text);
        }
        loop {
            let offset = self.reader.buffer_position();
            match self.next_event()? {
                Event::Text(part) => text.push_str(&self.decoded(part.xml10_content())?),
                Event::CData(part) => text.push_str(&self.decoded(part.xml10_content())?),
                Event::GeneralRef(reference) => {
                    let resolved = self.resolve_reference(&reference, offset)?;
                    text.push_str(&resolved);
                }
                Event::Start(start) => {
                    self.push(&start, offset, false);
                    self.skip_element()?;
                }
                Event::End(_) => return Ok(text),
                Event::Eof => return Err(self.truncated()),
                _ => {}
            }
        }
    }

    fn decoded(
        &self,
        content: Result<Cow<'a, str>, quick_xml::encoding::EncodingError>,
    ) -> Result<Cow<'a, str>, CtfError> {
        content.map_err(|error| {
            let detail = error.to_string();
            self.error(CtfErrorKind::MalformedXml { detail })
        })
    }

    /// Resolves a character reference or one of the five entities that XML predefines.
    fn resolve_reference(&self, reference: &BytesRef<'_>, offset: u64) -> Result<String, CtfError> {
        let invalid = |detail: String| {
            self.error(CtfErrorKind::MalformedXml { detail })
                .at_line(self.line_at(offset))
        };
        let name = String::from_utf8_lossy(reference).into_owned();
        match reference.resolve_char_ref() {
            Ok(Some(character)) => Ok(character.to_string()),
            Ok(None) => match resolve_xml_entity(&name) {
                Some(text) => Ok(text.to_owned()),
                None => Err(invalid(format!(
                    "unknown entity &{name}; (only &amp; &lt; &gt; &apos; &quot; and character references are allowed)"
                ))),
            },
            Err(error) => Err(invalid(format!(
                "invalid character reference &{name};: {error}"
            ))),
        }
    }

    /// Converts a quick-xml error, treating markup cut off by the end of input as truncation.
    fn xml_error(&self, error: &XmlError) -> CtfError {
        let line = self.line_at(self.reader.error_position());
        let kind = match error {
            XmlError::Syntax(SyntaxError::InvalidBangMarkup) => CtfErrorKind::MalformedXml {
                detail: error.to_string(),
            },
            XmlError::Syntax(_) => CtfErrorKind::Truncated {
                element: self.open.last().map(|open| open.name.clone()),
            },
            XmlError::IllFormed(IllFormedError::UnclosedReference) => CtfErrorKind::MalformedXml {
                detail: "an & that does not start a reference such as &amp; (write a literal & as &amp;)"
                    .to_owned(),
            },
            XmlError::IllFormed(ill_formed) => CtfErrorKind::MalformedXml {
                detail: ill_formed.to_string(),
            },
            _ => CtfErrorKind::MalformedXml {
                detail: error.to_string(),
            },
        };
        let error = CtfError::new(kind).at_line(line);
        if self.open.is_empty() {
            error
        } else {
            error.in_element(self.path(), self.upn.clone())
        }
    }

    fn truncated(&self) -> CtfError {
        let element = self.open.last().map(|open| open.name.clone());
        self.error(CtfErrorKind::Truncated { element })
            .at_line(self.line_at(self.reader.buffer_position()))
    }

    fn path(&self) -> String {
        let segments: Vec<String> = self
            .open
            .iter()
            .map(|open| {
                let numbered = NUMBERED
                    .iter()
                    .any(|name| name.eq_ignore_ascii_case(&open.name));
                if numbered {
                    format!("{}[{}]", open.name, open.ordinal)
                } else {
                    open.name.clone()
                }
            })
            .collect();
        segments.join("/")
    }

    /// Returns the 1-based line number of the byte at `offset`, as `decode::line_at` does.
    fn line_at(&self, offset: u64) -> u64 {
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        self.newlines.partition_point(|newline| *newline < offset) as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_agree_with_a_scan() {
        let text = "<a>\n<b>x</b>\r\n\n<c/>\n</a>";
        let cursor = Cursor::new(text);
        for offset in 0..=text.len() as u64 + 2 {
            assert_eq!(
                cursor.line_at(offset),
                crate::decode::line_at(text.as_bytes(), offset),
                "offset {offset}"
            );
        }
    }
}
