//! A plain builder for A4 PDF documents: letters and reports with headings, wrapped
//! paragraphs, address blocks, tables and simple charts.
//!
//! The crate does no I/O and reads no clock: [`Document::to_pdf`] returns the bytes, and the
//! caller supplies the creation date, so the same document always renders to the same bytes.
//! Text is set in the standard Helvetica and Helvetica-Bold fonts, which every PDF reader
//! supplies, in WinAnsi (Windows-1252) encoding. That covers English, the pound sign and the
//! accented letters of western European names (é, ñ, ü). Any other character, such as an emoji
//! or a letter of another script, is drawn as `?` (see [`sanitise`]).
//!
//! ```
//! use rollcall_documents::Document;
//!
//! let mut document = Document::new("Attendance report");
//! document
//!     .heading("Attendance report")
//!     .paragraph("Attendance this term was 94.1%.")
//!     .table(["Year group", "Attendance %"], [["Year 7", "95.2"], ["Year 8", "93.0"]])
//!     .bar_chart("Persistent absence", [("Year 7", 12.5), ("Year 8", 18.0)], "%");
//! let pdf = document.to_pdf();
//! assert!(pdf.starts_with(b"%PDF-"));
//! ```

mod chart;
mod layout;
mod metrics;
mod render;

use chrono::{DateTime, Utc};

pub use metrics::{Font, REPLACEMENT, sanitise, text_width, win_ansi_code, wrap_text};

/// Width of an A4 page, in points (1/72 inch).
pub const PAGE_WIDTH: f32 = 595.276;
/// Height of an A4 page, in points.
pub const PAGE_HEIGHT: f32 = 841.89;
/// Left and right margins, in points (20 mm).
pub const MARGIN: f32 = 56.693;
/// Width available to text between the margins, in points.
pub const TEXT_WIDTH: f32 = PAGE_WIDTH - 2.0 * MARGIN;
/// Font size of paragraphs and address blocks, in points.
pub const BODY_SIZE: f32 = 10.5;

/// A document under construction. Each method adds a block after the ones before it, and
/// [`Document::to_pdf`] lays them out on A4 pages.
#[derive(Debug, Clone)]
pub struct Document {
    title: String,
    created: Option<DateTime<Utc>>,
    blocks: Vec<Block>,
}

/// One series of a line chart: a name for the legend and one value per label, `None` where
/// there is no value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The name shown in the legend when a chart has more than one series.
    pub name: String,
    /// The values, in the order of the chart's labels.
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone)]
pub(crate) enum Block {
    Heading(String),
    Subheading(String),
    Paragraph(String),
    Address(Vec<String>),
    Table {
        headers: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    BarChart {
        title: String,
        bars: Vec<(String, f64)>,
        unit: String,
    },
    LineChart {
        title: String,
        labels: Vec<String>,
        series: Vec<Series>,
        unit: String,
    },
    PageBreak,
}

impl Document {
    /// Starts an empty document. The title goes into the PDF metadata; add a
    /// [`heading`](Self::heading) to show it on the page.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            created: None,
            blocks: Vec::new(),
        }
    }

    /// Sets the creation date written to the PDF metadata. Without one the file has none.
    pub fn created_at(&mut self, created: DateTime<Utc>) -> &mut Self {
        self.created = Some(created);
        self
    }

    /// Returns the title given to [`Document::new`].
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Adds a heading in 16-point Helvetica-Bold. A heading near the bottom of a page moves
    /// to the next page with the text that follows it.
    pub fn heading(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Heading(text.into()));
        self
    }

    /// Adds a subheading in 12-point Helvetica-Bold, kept with the text that follows it like a
    /// heading.
    pub fn subheading(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Subheading(text.into()));
        self
    }

    /// Adds a paragraph, wrapped to the text width and followed by a blank line. A line feed in
    /// the text starts a new line; other runs of whitespace count as one space.
    pub fn paragraph(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Paragraph(text.into()));
        self
    }

    /// Adds an address block for a letter: one line each, wrapped only if longer than the
    /// text width, and followed by a blank line.
    pub fn address_block<I, S>(&mut self, lines: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let lines = lines.into_iter().map(Into::into).collect();
        self.blocks.push(Block::Address(lines));
        self
    }

    /// Adds a table. Columns are sized to their contents and fitted to the text width, with
    /// cell text wrapped where a column is narrowed. A column whose cells all read as numbers
    /// (optionally ending in `%`) is aligned right, header included. Pages break between rows, or inside a row too tall for
    /// a page, and the header row is repeated at the top of each page. A row with fewer cells
    /// than the widest row is padded with empty cells.
    pub fn table<H, S, R, C, T>(&mut self, headers: H, rows: R) -> &mut Self
    where
        H: IntoIterator<Item = S>,
        S: Into<String>,
        R: IntoIterator<Item = C>,
        C: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let headers = headers.into_iter().map(Into::into).collect();
        let rows = rows
            .into_iter()
            .map(|row| row.into_iter().map(Into::into).collect())
            .collect();
        self.blocks.push(Block::Table { headers, rows });
        self
    }

    /// Adds a horizontal bar chart: one bar per label, drawn to scale from zero with a value
    /// axis, and each value printed at the end of its bar followed by `unit` (for example `%`
    /// or `pupils`). A chart with more bars than fit on a page continues on the next page on
    /// the same scale. Values that are not finite are shown as "n/a" without a bar.
    pub fn bar_chart<I, S>(
        &mut self,
        title: impl Into<String>,
        bars: I,
        unit: impl Into<String>,
    ) -> &mut Self
    where
        I: IntoIterator<Item = (S, f64)>,
        S: Into<String>,
    {
        let bars = bars
            .into_iter()
            .map(|(label, value)| (label.into(), value))
            .collect();
        self.blocks.push(Block::BarChart {
            title: title.into(),
            bars,
            unit: unit.into(),
        });
        self
    }

    /// Adds a line chart of one series: the points joined in order, with the labels along the
    /// horizontal axis and a value axis in `unit`.
    pub fn line_chart<I, S>(
        &mut self,
        title: impl Into<String>,
        points: I,
        unit: impl Into<String>,
    ) -> &mut Self
    where
        I: IntoIterator<Item = (S, f64)>,
        S: Into<String>,
    {
        let (labels, values): (Vec<String>, Vec<Option<f64>>) = points
            .into_iter()
            .map(|(label, value)| (label.into(), Some(value)))
            .unzip();
        let series = vec![Series {
            name: String::new(),
            values,
        }];
        self.blocks.push(Block::LineChart {
            title: title.into(),
            labels,
            series,
            unit: unit.into(),
        });
        self
    }

    /// Adds a line chart of several series over the same labels, each drawn in its own dash
    /// pattern, with a legend. A series with a `None` value, or one that is not finite, has a
    /// gap there; a series shorter than the labels ends early.
    pub fn line_chart_series<L, S>(
        &mut self,
        title: impl Into<String>,
        labels: L,
        series: Vec<Series>,
        unit: impl Into<String>,
    ) -> &mut Self
    where
        L: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.blocks.push(Block::LineChart {
            title: title.into(),
            labels: labels.into_iter().map(Into::into).collect(),
            series,
            unit: unit.into(),
        });
        self
    }

    /// Starts a new page, unless the current page is still empty. A page break at the end of
    /// the document adds no page.
    pub fn page_break(&mut self) -> &mut Self {
        self.blocks.push(Block::PageBreak);
        self
    }

    /// Lays the document out on A4 pages, numbers them in the footer ("Page 1 of 3"), and
    /// returns the PDF file. A document with no blocks has one empty page.
    pub fn to_pdf(&self) -> Vec<u8> {
        let pages = layout::lay_out(&self.blocks);
        render::write_pdf(&self.title, self.created, pages)
    }
}
