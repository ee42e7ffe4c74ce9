//! Renders documents and reads them back with lopdf, an independent PDF parser.

use chrono::{TimeZone, Utc};
use lopdf::Object;
use proptest::prelude::*;
use rollcall_documents::{Document, Font, Series, TEXT_WIDTH, sanitise, text_width, wrap_text};

fn parse(pdf: &[u8]) -> lopdf::Document {
    match lopdf::Document::load_mem(pdf) {
        Ok(document) => document,
        Err(error) => panic!("lopdf cannot parse the output: {error}"),
    }
}

fn page_text(document: &lopdf::Document, page: u32) -> String {
    match document.extract_text(&[page]) {
        Ok(text) => text,
        Err(error) => panic!("cannot extract the text of page {page}: {error}"),
    }
}

fn all_text(document: &lopdf::Document) -> String {
    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
    pages
        .iter()
        .map(|page| page_text(document, *page))
        .collect::<Vec<_>>()
        .join("\n")
}

fn info_string(document: &lopdf::Document, key: &[u8]) -> String {
    let info = document
        .trailer
        .get(b"Info")
        .and_then(Object::as_reference)
        .and_then(|id| document.get_dictionary(id))
        .expect("the trailer has an Info dictionary");
    let value = info.get(key).expect("the Info dictionary has the key");
    match value {
        Object::String(bytes, _) => String::from_utf8_lossy(bytes).into_owned(),
        other => panic!("unexpected {other:?}"),
    }
}

fn long_document() -> Document {
    let mut document = Document::new("Attendance report for governors");
    document.created_at(
        Utc.with_ymd_and_hms(2026, 7, 20, 9, 30, 0)
            .single()
            .expect("valid date"),
    );
    document.heading("Attendance report");
    for number in 1..=40 {
        document.paragraph(format!(
            "Paragraph {number}. Attendance in the autumn term was steady, and the school \
             followed up every unexplained absence on the first day. Families were reminded \
             that holidays in term time are not authorised."
        ));
    }
    let rows: Vec<Vec<String>> = (1..=200)
        .map(|number| {
            vec![
                format!("Row {number}"),
                format!("Year {}", number % 7 + 7),
                format!("{:.1}", 80.0 + f64::from(number % 20)),
            ]
        })
        .collect();
    document.table(["Pupil", "Year group", "Attendance %"], rows);
    document
}

#[test]
fn long_document_parses() {
    let pdf = long_document().to_pdf();
    let parsed = parse(&pdf);
    let pages = parsed.get_pages().len();
    assert!(pages >= 7, "only {pages} pages");

    for page in 1..=pages {
        let text = page_text(&parsed, page as u32);
        assert!(
            text.contains(&format!("Page {page} of {pages}")),
            "page {page}: {text}"
        );
    }
}

#[test]
fn table_rows_appear_once() {
    let parsed = parse(&long_document().to_pdf());
    let text = all_text(&parsed);
    for number in 1..=200 {
        let label = format!("Row {number}\n");
        assert_eq!(text.matches(&label).count(), 1, "row {number}");
    }
}

#[test]
fn table_header_repeats_on_each_page() {
    let parsed = parse(&long_document().to_pdf());
    let pages = parsed.get_pages().len() as u32;
    let mut table_pages = 0;
    for page in 1..=pages {
        let text = page_text(&parsed, page);
        if text.contains("Row ") {
            table_pages += 1;
            assert!(text.contains("Year group"), "page {page} has no header");
        }
    }
    assert!(table_pages >= 5, "the table spans {table_pages} pages");
}

#[test]
fn paragraph_text_is_extractable() {
    let mut document = Document::new("Letter");
    document
        .address_block(["Ms Zoë Núñez", "1 High Street", "Leeds"])
        .paragraph("The fine is £80 per parent, per child. José’s café 👍 is closed.");
    let parsed = parse(&document.to_pdf());
    let text = all_text(&parsed);
    assert!(text.contains("Ms Zoë Núñez"), "{text}");
    assert!(
        text.contains("The fine is £80 per parent, per child."),
        "{text}"
    );
    assert!(text.contains("café ? is closed."), "{text}");
}

#[test]
fn page_breaks_give_exact_pages() {
    let mut document = Document::new("Three pages");
    document
        .paragraph("One")
        .page_break()
        .page_break()
        .paragraph("Two")
        .page_break()
        .bar_chart("Three", [("a", 1.0)], "%")
        .page_break();
    let parsed = parse(&document.to_pdf());
    assert_eq!(parsed.get_pages().len(), 3);
    assert!(page_text(&parsed, 2).contains("Two"));
}

#[test]
fn empty_document_has_one_page() {
    let parsed = parse(&Document::new("Empty").to_pdf());
    assert_eq!(parsed.get_pages().len(), 1);
}

#[test]
fn metadata_comes_from_the_caller() {
    let pdf = long_document().to_pdf();
    let parsed = parse(&pdf);
    assert_eq!(
        info_string(&parsed, b"Title"),
        "Attendance report for governors"
    );
    assert_eq!(info_string(&parsed, b"CreationDate"), "D:20260720093000Z");
}

#[test]
fn output_is_reproducible() {
    assert_eq!(long_document().to_pdf(), long_document().to_pdf());
}

#[test]
fn charts_render() {
    let mut document = Document::new("Charts");
    let months = ["Sep", "Oct", "Nov", "Dec", "Jan"];
    document
        .line_chart(
            "Attendance by month",
            months
                .iter()
                .zip([95.1, 94.2, 93.8, 92.0, 93.3])
                .map(|(m, v)| (*m, v)),
            "%",
        )
        .line_chart_series(
            "Compared with last year",
            months,
            vec![
                Series {
                    name: "2025/26".into(),
                    values: vec![Some(95.1), Some(94.2), None, Some(92.0)],
                },
                Series {
                    name: "2024/25".into(),
                    values: vec![Some(94.0), Some(93.5), Some(93.0), Some(91.8), Some(92.2)],
                },
            ],
            "%",
        )
        .bar_chart(
            "Persistent absence by school",
            (1..=80).map(|n| (format!("School {n}"), f64::from(n % 30))),
            "%",
        );
    let parsed = parse(&document.to_pdf());
    let text = all_text(&parsed);
    assert!(text.contains("Attendance by month"), "{text}");
    assert!(text.contains("2024/25"), "{text}");
    assert!(text.contains("School 80"), "{text}");
    assert!(parsed.get_pages().len() >= 2);
}

#[test]
fn bar_labels_are_whole() {
    let mut document = Document::new("Bars");
    let labels = ["Year 7", "Year 8", "Year 9", "Year 10", "Year 11"];
    document.bar_chart(
        "Persistent absence rate by year group",
        labels.iter().map(|label| (*label, 20.0)),
        "%",
    );
    let text = all_text(&parse(&document.to_pdf()));
    for label in labels {
        assert!(text.contains(&format!("{label}\n")), "{label} in {text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_text_gives_a_parsable_pdf(
        texts in proptest::collection::vec(any::<String>(), 1..6),
        values in proptest::collection::vec(any::<f64>(), 0..6),
    ) {
        let mut document = Document::new(texts[0].clone());
        for text in &texts {
            document.heading(text.clone()).paragraph(text.clone());
        }
        document.address_block(texts.clone());
        document.table(texts.clone(), [texts.clone(), texts.iter().rev().cloned().collect()]);
        document.bar_chart(texts[0].clone(), texts.iter().cloned().zip(values.clone()), texts[0].clone());
        document.line_chart(texts[0].clone(), texts.iter().cloned().zip(values.clone()), "%");
        let pdf = document.to_pdf();
        let parsed = lopdf::Document::load_mem(&pdf);
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        let parsed = parsed.expect("parsed");
        prop_assert!(!parsed.get_pages().is_empty());
        prop_assert!(parsed.extract_text(&[1]).is_ok());
    }

    #[test]
    fn wrapped_lines_fit(text in any::<String>(), width in 20.0f32..600.0, bold in any::<bool>()) {
        let font = if bold { Font::Bold } else { Font::Regular };
        let lines = wrap_text(&text, font, 10.5, width);
        for line in &lines {
            prop_assert!(text_width(line, font, 10.5) <= width, "{line:?} is wider than {width}");
        }
        let wrapped: String = lines.concat().chars().filter(|c| !c.is_whitespace()).collect();
        let original: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        prop_assert_eq!(wrapped, original);
    }

    #[test]
    fn prose_fits_the_text_width(words in proptest::collection::vec("[a-zA-Z£é]{1,12}", 1..80)) {
        let text = words.join(" ");
        for line in wrap_text(&text, Font::Regular, 10.5, TEXT_WIDTH) {
            prop_assert!(text_width(&line, Font::Regular, 10.5) <= TEXT_WIDTH);
        }
    }

    #[test]
    fn sanitised_text_is_win_ansi(text in any::<String>()) {
        let clean = sanitise(&text);
        prop_assert_eq!(clean.chars().count(), text.chars().count());
        prop_assert!(clean.chars().all(|c| c == '\n' || rollcall_documents::win_ansi_code(c).is_some()));
    }
}
