//! Line numbers of CSV records, counted the way a text editor counts them.
//!
//! The csv crate (1.4) gives each record the position just after the previous record's
//! terminator and counts only `\n` as a line break. With CRLF line ends, as Excel writes them,
//! every record after the header is put on the line before its own, blank lines shift every
//! record after them, and a file with CR line ends is all line 1. [`Lines`] counts the breaks
//! itself as the bytes pass through.

use std::collections::VecDeque;
use std::io::Read;

use csv::StringRecord;

/// A reader that notes the line of the first byte of each line that has text, so that a
/// record's line can be found from the byte offset the csv crate gives it. `\r\n`, `\r` and
/// `\n` each end a line.
#[derive(Debug)]
pub struct Lines<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    /// The line of the next byte, from 1.
    line: u64,
    at_line_start: bool,
    after_cr: bool,
    /// The offset and line of the first byte of each line with text not yet asked about.
    starts: VecDeque<(u64, u64)>,
}

impl<R: Read> Lines<R> {
    /// Counts the lines of `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            line: 1,
            at_line_start: true,
            after_cr: false,
            starts: VecDeque::new(),
        }
    }

    /// Returns the line of the first text at or after `byte`. The offsets asked about must
    /// not decrease, because the lines before each one are forgotten.
    fn line_at(&mut self, byte: u64) -> u64 {
        while self
            .starts
            .front()
            .is_some_and(|(offset, _)| *offset < byte)
        {
            self.starts.pop_front();
        }
        self.starts.front().map_or(self.line, |(_, line)| *line)
    }
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        for (index, byte) in buf[..read].iter().enumerate() {
            match byte {
                b'\n' => {
                    if !self.after_cr {
                        self.line += 1;
                    }
                    self.after_cr = false;
                    self.at_line_start = true;
                }
                b'\r' => {
                    self.line += 1;
                    self.after_cr = true;
                    self.at_line_start = true;
                }
                _ => {
                    self.after_cr = false;
                    if self.at_line_start {
                        self.starts
                            .push_back((self.offset + index as u64, self.line));
                        self.at_line_start = false;
                    }
                }
            }
        }
        self.offset += read as u64;
        Ok(read)
    }
}

/// Returns the line `record`, just read from `reader`, starts on; the header is line 1.
/// Records must be asked about in the order they are read.
pub fn record_line<R: Read>(reader: &mut csv::Reader<Lines<R>>, record: &StringRecord) -> u64 {
    position_line(reader, record.position())
}

/// Returns the line of a position the csv crate gives a record or an error.
pub fn position_line<R: Read>(
    reader: &mut csv::Reader<Lines<R>>,
    position: Option<&csv::Position>,
) -> u64 {
    reader
        .get_mut()
        .line_at(position.map_or(0, csv::Position::byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(text: &[u8]) -> Vec<(String, u64)> {
        let mut reader = crate::plan::csv_reader(text);
        let mut record = StringRecord::new();
        let mut found = Vec::new();
        while reader.read_record(&mut record).expect("record") {
            found.push((record[0].to_owned(), record_line(&mut reader, &record)));
        }
        found
    }

    fn expected(lines: &[(&str, u64)]) -> Vec<(String, u64)> {
        lines
            .iter()
            .map(|(cell, line)| ((*cell).to_owned(), *line))
            .collect()
    }

    #[test]
    fn lines_of_lf_file() {
        assert_eq!(
            lines_of(b"a,b\n1,2\n3,4\n"),
            expected(&[("1", 2), ("3", 3)])
        );
    }

    #[test]
    fn lines_of_crlf_file() {
        assert_eq!(
            lines_of(b"a,b\r\n1,2\r\n3,4\r\n"),
            expected(&[("1", 2), ("3", 3)])
        );
    }

    #[test]
    fn lines_of_cr_file() {
        assert_eq!(lines_of(b"a,b\r1,2\r3,4"), expected(&[("1", 2), ("3", 3)]));
    }

    #[test]
    fn lines_after_blank_lines() {
        assert_eq!(
            lines_of(b"a,b\r\n\r\n1,2\n\n\n3,4\n"),
            expected(&[("1", 3), ("3", 6)])
        );
    }

    #[test]
    fn lines_after_quoted_line_breaks() {
        assert_eq!(
            lines_of(b"a,b\r\n\"x\r\ny\",2\r\n3,4\r\n"),
            expected(&[("x\r\ny", 2), ("3", 4)])
        );
    }

    #[test]
    fn lines_across_buffer_refills() {
        // The csv crate reads 8 KiB at a time, so these records straddle several reads.
        let mut text = b"a,b\r\n".to_vec();
        for row in 0..2_000 {
            text.extend_from_slice(format!("{row},x\r\n").as_bytes());
        }
        let found = lines_of(&text);
        assert_eq!(found.len(), 2_000);
        assert_eq!(found[1_999], ("1999".to_owned(), 2_001));
    }
}
