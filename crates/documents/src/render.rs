//! Writes laid-out pages as a PDF file, with footers and metadata.

use chrono::{DateTime, Datelike, Timelike, Utc};
use pdf_writer::{Content, Date, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use crate::metrics::{Font, encode, text_width};
use crate::{MARGIN, PAGE_HEIGHT, PAGE_WIDTH};

const FOOTER_SIZE: f32 = 8.0;

/// Returns the PDF file of `pages`, numbering each in its footer.
pub(crate) fn write_pdf(
    title: &str,
    created: Option<DateTime<Utc>>,
    pages: Vec<Content>,
) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog_id = Ref::new(1);
    let page_tree_id = Ref::new(2);
    let info_id = Ref::new(3);
    let regular_id = Ref::new(4);
    let bold_id = Ref::new(5);
    let first_page = 6;

    let count = pages.len();
    let page_ids: Vec<Ref> = (0..count)
        .map(|index| Ref::new(first_page + 2 * index as i32))
        .collect();

    pdf.catalog(catalog_id).pages(page_tree_id);
    pdf.pages(page_tree_id)
        .kids(page_ids.iter().copied())
        .count(count as i32);
    for (font, id) in [(Font::Regular, regular_id), (Font::Bold, bold_id)] {
        pdf.type1_font(id)
            .base_font(Name(font.base_name()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }

    for (index, mut content) in pages.into_iter().enumerate() {
        footer(&mut content, index + 1, count);
        let page_id = page_ids[index];
        let content_id = Ref::new(page_id.get() + 1);
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT));
        page.parent(page_tree_id);
        page.contents(content_id);
        let mut resources = page.resources();
        let mut fonts = resources.fonts();
        fonts.pair(Name(Font::Regular.resource_name()), regular_id);
        fonts.pair(Name(Font::Bold.resource_name()), bold_id);
        fonts.finish();
        resources.finish();
        page.finish();
        pdf.stream(content_id, &content.finish());
    }

    let mut info = pdf.document_info(info_id);
    info.title(TextStr(title));
    info.producer(TextStr("rollcall-documents"));
    if let Some(created) = created {
        info.creation_date(pdf_date(created));
    }
    info.finish();
    pdf.finish()
}

fn footer(content: &mut Content, number: usize, count: usize) {
    let text = format!("Page {number} of {count}");
    let x = (PAGE_WIDTH - text_width(&text, Font::Regular, FOOTER_SIZE)) / 2.0;
    content.set_fill_gray(0.3);
    content.begin_text();
    content.set_font(Name(Font::Regular.resource_name()), FOOTER_SIZE);
    content.next_line(x, MARGIN / 2.0);
    content.show(Str(&encode(&text)));
    content.end_text();
    content.set_fill_gray(0.0);
}

fn pdf_date(at: DateTime<Utc>) -> Date {
    // Years before 0 or after 9999 cannot be written; pdf-writer clamps them.
    let year = u16::try_from(at.year().clamp(0, 9999)).unwrap_or(0);
    let two_digits = |value: u32| u8::try_from(value).unwrap_or(0);
    Date::new(year)
        .month(two_digits(at.month()))
        .day(two_digits(at.day()))
        .hour(two_digits(at.hour()))
        .minute(two_digits(at.minute()))
        .second(two_digits(at.second()))
        .utc_offset_hour(0)
}
