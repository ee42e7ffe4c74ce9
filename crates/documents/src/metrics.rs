//! Character widths of the standard Helvetica fonts, WinAnsi encoding, and word wrapping.

/// One of the two standard (base-14) fonts a document uses. PDF readers supply both, so no
/// font file is embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Font {
    /// Helvetica.
    Regular,
    /// Helvetica-Bold.
    Bold,
}

impl Font {
    /// Returns the PostScript name a PDF reader uses to find the font.
    pub(crate) fn base_name(self) -> &'static [u8] {
        match self {
            Font::Regular => b"Helvetica",
            Font::Bold => b"Helvetica-Bold",
        }
    }

    /// Returns the name of the font in each page's resources.
    pub(crate) fn resource_name(self) -> &'static [u8] {
        match self {
            Font::Regular => b"F1",
            Font::Bold => b"F2",
        }
    }

    fn widths(self) -> &'static [u16; 224] {
        match self {
            Font::Regular => &HELVETICA,
            Font::Bold => &HELVETICA_BOLD,
        }
    }
}

/// The character drawn in place of one that WinAnsi encoding cannot represent.
pub const REPLACEMENT: char = '?';

/// Returns the WinAnsi (Windows-1252) code of `ch`, or `None` when the encoding has no such
/// character or it is a control character.
pub fn win_ansi_code(ch: char) -> Option<u8> {
    let code = u32::from(ch);
    let byte = match code {
        0x20..=0x7e | 0xa0..=0xff => code as u8,
        _ => match ch {
            '€' => 0x80,
            '‚' => 0x82,
            'ƒ' => 0x83,
            '„' => 0x84,
            '…' => 0x85,
            '†' => 0x86,
            '‡' => 0x87,
            'ˆ' => 0x88,
            '‰' => 0x89,
            'Š' => 0x8a,
            '‹' => 0x8b,
            'Œ' => 0x8c,
            'Ž' => 0x8e,
            '\u{2018}' => 0x91,
            '\u{2019}' => 0x92,
            '\u{201c}' => 0x93,
            '\u{201d}' => 0x94,
            '•' => 0x95,
            '–' => 0x96,
            '—' => 0x97,
            '˜' => 0x98,
            '™' => 0x99,
            'š' => 0x9a,
            '›' => 0x9b,
            'œ' => 0x9c,
            'ž' => 0x9e,
            'Ÿ' => 0x9f,
            _ => return None,
        },
    };
    Some(byte)
}

/// Returns `text` with whitespace control characters (tab, carriage return) as spaces and every
/// character that WinAnsi cannot represent, such as emoji, replaced by [`REPLACEMENT`]. Line
/// feeds are kept, since paragraphs treat them as line breaks.
pub fn sanitise(text: &str) -> String {
    text.chars()
        .map(|ch| match ch {
            '\n' => '\n',
            '\t' | '\r' => ' ',
            _ if win_ansi_code(ch).is_some() => ch,
            _ => REPLACEMENT,
        })
        .collect()
}

/// Encodes `text` as WinAnsi bytes, with [`REPLACEMENT`] for characters the encoding lacks and
/// a space for line feeds.
pub(crate) fn encode(text: &str) -> Vec<u8> {
    text.chars()
        .map(|ch| match ch {
            '\n' | '\t' | '\r' => b' ',
            _ => win_ansi_code(ch).unwrap_or(REPLACEMENT as u8),
        })
        .collect()
}

fn char_width_units(ch: char, font: Font) -> u16 {
    let code = match ch {
        '\n' | '\t' | '\r' => b' ',
        _ => win_ansi_code(ch).unwrap_or(REPLACEMENT as u8),
    };
    font.widths()[usize::from(code - 0x20)]
}

/// Returns the width of `text` set in `font` at `size` points, in points, as a PDF reader
/// draws it after [`sanitise`].
pub fn text_width(text: &str, font: Font, size: f32) -> f32 {
    let units: u32 = text
        .chars()
        .map(|ch| u32::from(char_width_units(ch, font)))
        .sum();
    units as f32 * size / 1000.0
}

/// Splits `text` into lines no wider than `max_width` points in `font` at `size`, breaking at
/// whitespace and, for a word wider than a line, between characters. Line feeds start a new
/// line. Runs of whitespace collapse to one space, and lines carry no leading or trailing
/// spaces.
///
/// Every line fits unless `max_width` is narrower than a single character, in which case each
/// such character gets a line of its own.
pub fn wrap_text(text: &str, font: Font, size: f32, max_width: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for source_line in text.split('\n') {
        let mut line = String::new();
        let mut line_width = 0.0;
        for word in source_line.split_whitespace() {
            let word_width = text_width(word, font, size);
            let space = text_width(" ", font, size);
            if !line.is_empty() && line_width + space + word_width <= max_width {
                line.push(' ');
                line.push_str(word);
                line_width += space + word_width;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            if word_width <= max_width {
                line.push_str(word);
                line_width = word_width;
                continue;
            }
            // A word wider than a line is broken between characters.
            line_width = 0.0;
            for ch in word.chars() {
                let width = f32::from(char_width_units(ch, font)) * size / 1000.0;
                if !line.is_empty() && line_width + width > max_width {
                    lines.push(std::mem::take(&mut line));
                    line_width = 0.0;
                }
                line.push(ch);
                line_width += width;
            }
        }
        lines.push(line);
    }
    lines
}

/// Shortens `text` with a trailing "..." so that it fits in `max_width` points.
pub(crate) fn truncate_to_width(text: &str, font: Font, size: f32, max_width: f32) -> String {
    if text_width(text, font, size) <= max_width {
        return text.to_owned();
    }
    let mut shortened: String = text.to_owned();
    while !shortened.is_empty() {
        shortened.pop();
        let candidate = format!("{}...", shortened.trim_end());
        if text_width(&candidate, font, size) <= max_width {
            return candidate;
        }
    }
    String::new()
}

// Advance widths, in thousandths of the font size, of the WinAnsi codes 32 to 255 in order.
// They are the WX values of Adobe's Core 14 font metrics files Helvetica.afm and
// Helvetica-Bold.afm (1997), looked up by the glyph name WinAnsiEncoding gives each code. The
// Euro's width, 556, comes from an entry that later copies of those files add. Codes with no
// character in WinAnsi (127, 129, 141, 143, 144, 157) have width 0 and are never drawn.
const HELVETICA: [u16; 224] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
    0, 556, 0, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0, 0, 222, 222,
    333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 0, 500, 667, 278, 333, 556, 556, 556, 556,
    260, 556, 333, 737, 370, 556, 584, 333, 737, 333, 400, 584, 333, 333, 333, 556, 537, 278, 333,
    333, 365, 556, 834, 834, 834, 611, 667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667,
    278, 278, 278, 278, 722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667,
    611, 556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278, 556, 556,
    556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500,
];

const HELVETICA_BOLD: [u16; 224] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667,
    611, 778, 722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 333, 278, 333, 584, 556, 333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556,
    278, 889, 611, 611, 611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
    0, 556, 0, 278, 556, 500, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0, 0, 278, 278,
    500, 500, 350, 556, 1000, 333, 1000, 556, 333, 944, 0, 500, 667, 278, 333, 556, 556, 556, 556,
    280, 556, 333, 737, 370, 556, 584, 333, 737, 333, 400, 584, 333, 333, 333, 611, 556, 278, 333,
    333, 365, 556, 834, 834, 834, 611, 722, 722, 722, 722, 722, 722, 1000, 722, 667, 667, 667, 667,
    278, 278, 278, 278, 722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667,
    611, 556, 556, 556, 556, 556, 556, 889, 556, 556, 556, 556, 556, 278, 278, 278, 278, 611, 611,
    611, 611, 611, 611, 611, 584, 611, 611, 611, 611, 611, 556, 611, 556,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_match_the_metrics() {
        assert_eq!(text_width("A", Font::Regular, 1000.0), 667.0);
        assert_eq!(text_width("£", Font::Regular, 1000.0), 556.0);
        assert_eq!(text_width("é", Font::Bold, 1000.0), 556.0);
        assert_eq!(text_width("Hi", Font::Regular, 10.0), 9.44);
    }

    #[test]
    fn emoji_become_question_marks() {
        assert_eq!(sanitise("Good 👍 work"), "Good ? work");
        assert_eq!(encode("£5 é"), vec![0xa3, b'5', b' ', 0xe9]);
        assert_eq!(encode("👍"), vec![b'?']);
    }

    #[test]
    fn long_words_break_between_characters() {
        let lines = wrap_text(&"W".repeat(40), Font::Regular, 10.0, 50.0);
        assert!(lines.len() > 1);
        for line in &lines {
            assert!(text_width(line, Font::Regular, 10.0) <= 50.0, "{line}");
        }
    }

    #[test]
    fn line_feeds_start_new_lines() {
        let lines = wrap_text("one\ntwo", Font::Regular, 10.0, 500.0);
        assert_eq!(lines, ["one", "two"]);
    }

    #[test]
    fn truncation_fits() {
        let text = truncate_to_width("Persistent absence by school", Font::Regular, 9.0, 60.0);
        assert!(text.ends_with("..."));
        assert!(text_width(&text, Font::Regular, 9.0) <= 60.0);
    }
}
