//! Reads a contacts file: the parents and carers the school writes to about each pupil, one
//! row per contact (docs/messaging.md).

use std::io::Read;

use anyhow::{Context, bail};
use csv::StringRecord;
use serde::Deserialize;

use crate::lines::{Lines, position_line};

/// The columns of a contacts file, in the order `rollcall contacts import` documents.
pub const COLUMNS: [&str; 10] = [
    "upn",
    "priority",
    "name",
    "relationship",
    "parental_responsibility",
    "email",
    "mobile",
    "address",
    "postcode",
    "preferred_channel",
];

#[derive(Debug, Deserialize)]
struct ContactRecord {
    upn: String,
    priority: String,
    name: String,
    relationship: String,
    parental_responsibility: String,
    email: String,
    mobile: String,
    address: String,
    postcode: String,
    preferred_channel: String,
}

/// The way a contact prefers to be written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// No preference given.
    Unspecified,
    Email,
    Sms,
    Letter,
}

/// One row of a contacts file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRow {
    /// The line of the file the row starts on; the header is line 1.
    pub line: usize,
    /// The pupil's UPN in upper case.
    pub upn: String,
    /// 1 for the first contact.
    pub priority: i32,
    pub name: String,
    pub relationship: String,
    pub parental_responsibility: bool,
    pub email: String,
    pub mobile: String,
    /// The address, split at new lines and semicolons, without empty lines.
    pub address_lines: Vec<String>,
    pub postcode: String,
    pub preferred_channel: Channel,
}

fn channel_of(value: &str) -> Option<Channel> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Some(Channel::Unspecified),
        "email" => Some(Channel::Email),
        "sms" | "text" => Some(Channel::Sms),
        "letter" | "post" => Some(Channel::Letter),
        _ => None,
    }
}

fn yes_no(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" | "true" | "1" => Some(true),
        "n" | "no" | "false" | "0" | "" => Some(false),
        _ => None,
    }
}

/// Reads every row of a contacts file, named `name` in messages, and checks each one, so that
/// a file with any invalid row is rejected before anything is sent.
pub fn read_contacts(name: &str, source: impl Read) -> anyhow::Result<Vec<ContactRow>> {
    let mut reader = csv::Reader::from_reader(Lines::new(source));
    let headers = reader
        .headers()
        .with_context(|| format!("cannot read the header row of {name}"))?
        .clone();
    for column in COLUMNS {
        if !headers.iter().any(|header| header.trim() == column) {
            bail!(
                "contacts file {name} has no {column:?} column; the header row must name {}",
                COLUMNS.join(", ")
            );
        }
    }
    let mut rows = Vec::new();
    let mut fields = StringRecord::new();
    loop {
        let read = reader.read_record(&mut fields);
        let position = match &read {
            Ok(_) => fields.position().cloned(),
            Err(error) => error.position().cloned(),
        };
        let line = position_line(&mut reader, position.as_ref());
        let line = usize::try_from(line).unwrap_or(usize::MAX);
        if !read.with_context(|| format!("invalid row at line {line} of {name}"))? {
            break;
        }
        let record: ContactRecord = fields
            .deserialize(Some(&headers))
            .with_context(|| format!("invalid row at line {line} of {name}"))?;
        let priority: i32 = record.priority.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid priority {:?} at line {line}: give a whole number, 1 for the first contact",
                record.priority
            )
        })?;
        let parental_responsibility = yes_no(&record.parental_responsibility).ok_or_else(|| {
            anyhow::anyhow!(
                "invalid parental_responsibility {:?} at line {line}: give yes or no",
                record.parental_responsibility
            )
        })?;
        let preferred_channel = channel_of(&record.preferred_channel).ok_or_else(|| {
            anyhow::anyhow!(
                "invalid preferred_channel {:?} at line {line}: give email, sms, letter or leave it empty",
                record.preferred_channel
            )
        })?;
        let address_lines = record
            .address
            .split(['\n', ';'])
            .map(|line| line.trim().to_owned())
            .filter(|line| !line.is_empty())
            .collect();
        rows.push(ContactRow {
            line,
            upn: record.upn.trim().to_ascii_uppercase(),
            priority,
            name: record.name,
            relationship: record.relationship,
            parental_responsibility,
            email: record.email,
            mobile: record.mobile,
            address_lines,
            postcode: record.postcode,
            preferred_channel,
        });
    }
    if rows.is_empty() {
        bail!("contacts file {name} has no rows");
    }
    Ok(rows)
}
