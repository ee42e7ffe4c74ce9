//! Inputs the fuzz targets in fuzz/ found, read through the public entry points the import
//! uses (docs/fuzzing.md).

use csv::StringRecord;
use rollcall_csv::lines::record_line;
use rollcall_csv::plan::{csv_reader, plan_bytes};
use rollcall_csv::profile::Profile;
use rollcall_csv::rows::RowReader;

/// Reads every row of `file` as the import does and returns the line of each pupil or mark.
fn lines_read(file: &[u8], profile: &str) -> Vec<u64> {
    let profile = Profile::load(profile).expect("built-in profile");
    let plan = plan_bytes("export.csv", file, &profile).expect("plan");
    let mut reader = csv_reader(file);
    let mut rows = RowReader::new(&plan, &profile);
    let mut record = StringRecord::new();
    let mut lines = Vec::new();
    while reader.read_record(&mut record).expect("record") {
        let line = record_line(&mut reader, &record);
        for row in rows.read(&record, line) {
            let (_, origin) = row.expect("a mark");
            lines.push(origin.line);
        }
    }
    lines
}

/// The csv crate put each record of a CRLF file, as Excel saves a SIMS export, on the line
/// before its own, so the first row after the header came out as line 1.
#[test]
fn crlf_wide_marks_keep_lines() {
    let file = b"\xEF\xBB\xBFAdno,Name,08/09/2025 AM,08/09/2025 PM\r\n\
                 001201,\"Lovelace, Ada\",/,\\\r\n\
                 001202,\"Turing, Alan\",/,\r\n";
    assert_eq!(lines_read(file, "sims"), vec![2, 2, 3]);
}

#[test]
fn blank_lines_keep_later_lines() {
    let file =
        b"mis_id,upn,date,session,code\n\n7,,2025-09-08,AM,/\r\n\r\n\r\n8,,2025-09-08,AM,/\n";
    assert_eq!(lines_read(file, "rollcall"), vec![3, 6]);
}

/// A quoted address over two lines put every later row of a contacts file on the wrong line.
#[test]
fn contacts_after_multiline_address_keep_lines() {
    let file = b"upn,priority,name,relationship,parental_responsibility,email,mobile,address,postcode,preferred_channel\r\n\
                 A919200125001,1,Mrs A Parent,Mother,yes,,,\"1 High Street\r\nHertford\",SG14 1AA,letter\r\n\
                 A919200125001,2,Mr B Parent,Father,maybe,,,,,\r\n";
    let error = rollcall_csv::contacts::read_contacts("contacts.csv", &file[..])
        .expect_err("invalid parental_responsibility");
    let message = format!("{error:#}");
    assert!(message.contains("at line 4"), "{message}");
}

#[test]
fn contacts_rows_keep_lines() {
    let file = b"upn,priority,name,relationship,parental_responsibility,email,mobile,address,postcode,preferred_channel\n\
                 a919200125001,1,Mrs A Parent,Mother,yes,,,\"1 High Street\nHertford\",SG14 1AA,letter\n\
                 A919200125002,1,Ms C Carer,Carer,no,,,,,sms\n";
    let rows = rollcall_csv::contacts::read_contacts("contacts.csv", &file[..]).expect("rows");
    let lines: Vec<usize> = rows.iter().map(|row| row.line).collect();
    assert_eq!(lines, vec![2, 4]);
    assert_eq!(rows[0].upn, "A919200125001");
    assert_eq!(rows[0].address_lines, vec!["1 High Street", "Hertford"]);
}

#[test]
fn contacts_short_row_names_line() {
    let file = b"upn,priority,name,relationship,parental_responsibility,email,mobile,address,postcode,preferred_channel\r\n\
                 A919200125001,1,Mrs A Parent,Mother,yes,,,\"1 High Street\r\nHertford\",SG14 1AA,letter\r\n\
                 A919200125002,1,Ms C Carer\r\n";
    let error =
        rollcall_csv::contacts::read_contacts("contacts.csv", &file[..]).expect_err("short row");
    let message = format!("{error:#}");
    assert!(message.contains("invalid row at line 4"), "{message}");
}
