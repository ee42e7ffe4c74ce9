//! Flows the blocks of a document onto pages, top to bottom, breaking pages at the bottom
//! margin.

use pdf_writer::{Content, Name, Str};

use crate::metrics::{Font, encode, text_width, wrap_text};
use crate::{BODY_SIZE, Block, MARGIN, PAGE_HEIGHT, TEXT_WIDTH};

/// The lowest point content may reach; the footer sits below it.
pub(crate) const BOTTOM: f32 = MARGIN;
/// The highest point content starts at.
const TOP: f32 = PAGE_HEIGHT - MARGIN;
/// Distance between the baselines of body text, as a multiple of the font size.
pub(crate) const LINE_SPACING: f32 = 1.35;

const HEADING_SIZE: f32 = 16.0;
const SUBHEADING_SIZE: f32 = 12.0;
const TABLE_SIZE: f32 = 9.0;
const CELL_PADDING_X: f32 = 4.0;
const CELL_PADDING_Y: f32 = 3.0;

/// The pages drawn so far, and the position where the next block starts.
pub(crate) struct Canvas {
    pub(crate) pages: Vec<Content>,
    /// The top of the free space on the current page.
    pub(crate) y: f32,
    /// False until something is drawn on the current page.
    empty: bool,
}

impl Canvas {
    fn new() -> Self {
        Self {
            pages: vec![Content::new()],
            y: TOP,
            empty: true,
        }
    }

    pub(crate) fn content(&mut self) -> &mut Content {
        self.empty = false;
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    pub(crate) fn new_page(&mut self) {
        self.pages.push(Content::new());
        self.y = TOP;
        self.empty = true;
    }

    /// Starts a new page unless `height` points fit above the bottom margin, or the page is
    /// empty (so that content taller than a page still goes somewhere).
    pub(crate) fn ensure(&mut self, height: f32) {
        if self.y - height < BOTTOM && !self.empty {
            self.new_page();
        }
    }

    /// Returns the height between the top and bottom margins of a page.
    pub(crate) fn page_height() -> f32 {
        TOP - BOTTOM
    }

    /// Draws one line of text with its baseline at `y`.
    pub(crate) fn text(&mut self, font: Font, size: f32, x: f32, y: f32, text: &str) {
        let bytes = encode(text);
        let content = self.content();
        content.begin_text();
        content.set_font(Name(font.resource_name()), size);
        content.next_line(x, y);
        content.show(Str(&bytes));
        content.end_text();
    }

    /// Draws lines of text one under another from the current position, moving to a new page
    /// whenever the next line would cross the bottom margin.
    fn lines(&mut self, font: Font, size: f32, x: f32, lines: &[String]) {
        let leading = size * LINE_SPACING;
        for line in lines {
            self.ensure(leading);
            let baseline = self.y - size;
            self.text(font, size, x, baseline, line);
            self.y -= leading;
        }
    }
}

/// Lays out every block and returns one content stream per page, without the footers.
pub(crate) fn lay_out(blocks: &[Block]) -> Vec<Content> {
    let mut canvas = Canvas::new();
    for block in blocks {
        match block {
            Block::Heading(text) => heading(&mut canvas, text, HEADING_SIZE),
            Block::Subheading(text) => heading(&mut canvas, text, SUBHEADING_SIZE),
            Block::Paragraph(text) => {
                let lines = wrap_text(text, Font::Regular, BODY_SIZE, TEXT_WIDTH);
                canvas.lines(Font::Regular, BODY_SIZE, MARGIN, &lines);
                canvas.y -= BODY_SIZE * LINE_SPACING;
            }
            Block::Address(address) => {
                for line in address {
                    let lines = wrap_text(line, Font::Regular, BODY_SIZE, TEXT_WIDTH);
                    canvas.lines(Font::Regular, BODY_SIZE, MARGIN, &lines);
                }
                canvas.y -= BODY_SIZE * LINE_SPACING;
            }
            Block::Table { headers, rows } => table(&mut canvas, headers, rows),
            Block::BarChart { title, bars, unit } => {
                crate::chart::bar_chart(&mut canvas, title, bars, unit);
            }
            Block::LineChart {
                title,
                labels,
                series,
                unit,
            } => crate::chart::line_chart(&mut canvas, title, labels, series, unit),
            Block::PageBreak => {
                if !canvas.empty {
                    canvas.new_page();
                }
            }
        }
    }
    // A page break at the end leaves an empty page, which is dropped.
    if canvas.empty && canvas.pages.len() > 1 {
        canvas.pages.pop();
    }
    canvas.pages
}

/// Draws a heading, first moving to a new page unless the heading and three lines of body
/// text fit, so that a heading is not left alone at the foot of a page.
fn heading(canvas: &mut Canvas, text: &str, size: f32) {
    let lines = wrap_text(text, Font::Bold, size, TEXT_WIDTH);
    let height = lines.len() as f32 * size * LINE_SPACING + 3.0 * BODY_SIZE * LINE_SPACING;
    canvas.ensure(height.min(Canvas::page_height()));
    canvas.lines(Font::Bold, size, MARGIN, &lines);
    canvas.y -= size * 0.4;
}

/// Returns true when a cell reads as a number, so that it is aligned right.
fn is_numeric(cell: &str) -> bool {
    let trimmed = cell.trim();
    let number = trimmed.strip_suffix('%').unwrap_or(trimmed);
    !number.is_empty() && number.parse::<f64>().is_ok()
}

/// Chooses column widths that add up to the text width: each column's natural width (its
/// widest cell on one line) when they all fit, stretched in proportion to fill the line.
/// Otherwise narrow columns keep their natural width and the rest share what is left equally.
fn column_widths(natural: &[f32]) -> Vec<f32> {
    let total: f32 = natural.iter().sum();
    if total <= TEXT_WIDTH {
        let scale = if total > 0.0 { TEXT_WIDTH / total } else { 1.0 };
        return natural.iter().map(|width| width * scale).collect();
    }
    let mut widths = vec![0.0; natural.len()];
    let mut open: Vec<usize> = (0..natural.len()).collect();
    let mut remaining = TEXT_WIDTH;
    loop {
        let share = remaining / open.len() as f32;
        let (narrow, wide): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&index| natural[index] <= share);
        if narrow.is_empty() {
            for &index in &wide {
                widths[index] = share;
            }
            return widths;
        }
        for &index in &narrow {
            widths[index] = natural[index];
            remaining -= natural[index];
        }
        if wide.is_empty() {
            return widths;
        }
        open = wide;
    }
}

fn table(canvas: &mut Canvas, headers: &[String], rows: &[Vec<String>]) {
    let columns = rows
        .iter()
        .map(Vec::len)
        .chain([headers.len()])
        .max()
        .unwrap_or(0);
    if columns == 0 {
        return;
    }
    let cell = |row: &[String], index: usize| row.get(index).cloned().unwrap_or_default();
    let natural: Vec<f32> = (0..columns)
        .map(|index| {
            let header = text_width(&cell(headers, index), Font::Bold, TABLE_SIZE);
            rows.iter()
                .map(|row| text_width(&cell(row, index), Font::Regular, TABLE_SIZE))
                .fold(header, f32::max)
                + 2.0 * CELL_PADDING_X
        })
        .collect();
    let widths = column_widths(&natural);
    // A column whose cells all read as numbers is aligned right, header included.
    let numeric: Vec<bool> = (0..columns)
        .map(|index| {
            let mut cells = rows
                .iter()
                .map(|row| cell(row, index))
                .filter(|text| !text.trim().is_empty())
                .peekable();
            cells.peek().is_some() && cells.all(|text| is_numeric(&text))
        })
        .collect();
    let header_row = TableRow::new(
        (0..columns).map(|index| cell(headers, index)).collect(),
        &widths,
        &numeric,
        Font::Bold,
    );

    let mut header_drawn = false;
    for row in rows {
        let row = TableRow::new(
            (0..columns).map(|index| cell(row, index)).collect(),
            &widths,
            &numeric,
            Font::Regular,
        );
        let mut first_line = 0;
        while first_line < row.line_count {
            let remaining = row.line_count - first_line;
            let header = if header_drawn {
                0.0
            } else {
                header_row.height()
            };
            let mut fits = row.lines_fitting(canvas.y - header);
            if fits < remaining && !canvas.empty {
                // The row moves whole to a new page; only a row taller than a page is split.
                canvas.new_page();
                header_drawn = false;
                fits = row.lines_fitting(canvas.y - header_row.height());
            }
            if !header_drawn {
                header_row.draw(canvas, &widths, 0, header_row.line_count, 0.9);
                header_drawn = true;
            }
            let last_line = first_line + fits.clamp(1, remaining);
            row.draw(canvas, &widths, first_line, last_line, 1.0);
            first_line = last_line;
            if first_line < row.line_count {
                canvas.new_page();
                header_drawn = false;
            }
        }
    }
    if !header_drawn {
        canvas.ensure(header_row.height());
        header_row.draw(canvas, &widths, 0, header_row.line_count, 0.9);
    }
    canvas.y -= BODY_SIZE * LINE_SPACING;
}

/// One table row with each cell wrapped to its column.
struct TableRow {
    cells: Vec<Vec<String>>,
    numeric: Vec<bool>,
    font: Font,
    line_count: usize,
}

impl TableRow {
    fn new(cells: Vec<String>, widths: &[f32], numeric: &[bool], font: Font) -> Self {
        let numeric = numeric.to_vec();
        let cells: Vec<Vec<String>> = cells
            .iter()
            .zip(widths)
            .map(|(text, width)| {
                let inner = (width - 2.0 * CELL_PADDING_X).max(1.0);
                wrap_text(text, font, TABLE_SIZE, inner)
            })
            .collect();
        let line_count = cells.iter().map(Vec::len).max().unwrap_or(1).max(1);
        Self {
            cells,
            numeric,
            font,
            line_count,
        }
    }

    fn line_height() -> f32 {
        TABLE_SIZE * LINE_SPACING
    }

    fn height(&self) -> f32 {
        self.line_count as f32 * Self::line_height() + 2.0 * CELL_PADDING_Y
    }

    /// Returns how many lines of table text fit between `top` and the bottom margin.
    fn lines_fitting(&self, top: f32) -> usize {
        let room = top - BOTTOM - 2.0 * CELL_PADDING_Y;
        if room <= 0.0 {
            return 0;
        }
        (room / Self::line_height()).floor() as usize
    }

    /// Draws lines `first..last` of the row at the current position, on a background of grey
    /// level `fill` (1.0 for none), with a rule underneath.
    fn draw(&self, canvas: &mut Canvas, widths: &[f32], first: usize, last: usize, fill: f32) {
        let height = (last - first) as f32 * Self::line_height() + 2.0 * CELL_PADDING_Y;
        let top = canvas.y;

        if fill < 1.0 {
            let content = canvas.content();
            content.set_fill_gray(fill);
            content.rect(MARGIN, top - height, TEXT_WIDTH, height);
            content.fill_nonzero();
            content.set_fill_gray(0.0);
        }
        let mut x = MARGIN;
        for ((lines, width), numeric) in self.cells.iter().zip(widths).zip(&self.numeric) {
            for (offset, line) in lines.iter().enumerate().take(last).skip(first) {
                let baseline = top
                    - CELL_PADDING_Y
                    - (offset - first) as f32 * Self::line_height()
                    - TABLE_SIZE;
                let left = if *numeric {
                    x + width - CELL_PADDING_X - text_width(line, self.font, TABLE_SIZE)
                } else {
                    x + CELL_PADDING_X
                };
                canvas.text(self.font, TABLE_SIZE, left, baseline, line);
            }
            x += width;
        }

        let content = canvas.content();
        content.set_stroke_gray(0.7);
        content.set_line_width(0.5);
        content.move_to(MARGIN, top - height);
        content.line_to(MARGIN + TEXT_WIDTH, top - height);
        content.stroke();
        content.set_stroke_gray(0.0);
        canvas.y = top - height;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_tables_fill_the_line() {
        let widths = column_widths(&[50.0, 100.0]);
        let total: f32 = widths.iter().sum();
        assert!((total - TEXT_WIDTH).abs() < 0.01, "{widths:?}");
        assert!((widths[1] - 2.0 * widths[0]).abs() < 0.01, "{widths:?}");
    }

    #[test]
    fn wide_tables_keep_narrow_columns() {
        let widths = column_widths(&[40.0, 2000.0, 3000.0]);
        assert_eq!(widths[0], 40.0);
        let total: f32 = widths.iter().sum();
        assert!((total - TEXT_WIDTH).abs() < 0.01, "{widths:?}");
        assert!((widths[1] - widths[2]).abs() < 0.01, "{widths:?}");
    }

    #[test]
    fn numbers_are_recognised() {
        assert!(is_numeric("94.2"));
        assert!(is_numeric("12%"));
        assert!(!is_numeric("Year 7"));
        assert!(!is_numeric("%"));
    }
}
