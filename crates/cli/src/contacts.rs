//! `rollcall contacts import|list`: the parents and carers the school writes to about a pupil.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::registers::v1::{
    Contact, ContactChannel, ListPupilContactsRequest, PupilContacts, SetPupilContactsRequest,
};
use serde::Deserialize;
use serde_json::json;

use crate::client::Clients;
use crate::text::{count, table};

#[derive(Debug, Subcommand)]
pub(crate) enum ContactsCommand {
    /// Replace the contacts of every pupil in a CSV file, all in one transaction. Columns:
    /// upn, priority, name, relationship, parental_responsibility, email, mobile, address,
    /// postcode, preferred_channel (see docs/messaging.md).
    Import {
        /// The CSV file, with a header row.
        file: PathBuf,
    },
    /// List a pupil's contacts in priority order.
    List {
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// Print a JSON array, one object per contact.
        #[arg(long)]
        json: bool,
    },
}

/// The columns of a contacts file, in the order `contacts import` documents.
const COLUMNS: [&str; 10] = [
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

fn channel_of(value: &str) -> Option<ContactChannel> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Some(ContactChannel::Unspecified),
        "email" => Some(ContactChannel::Email),
        "sms" | "text" => Some(ContactChannel::Sms),
        "letter" | "post" => Some(ContactChannel::Letter),
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

/// The contacts of a file, and the line each contact came from (UPN, priority, line).
type ContactsFile = (Vec<PupilContacts>, Vec<(String, i32, usize)>);

/// Reads a contacts file into one list per pupil, checking every row before anything is sent.
fn read_contacts(path: &Path) -> anyhow::Result<ContactsFile> {
    let mut reader = csv::Reader::from_path(path)
        .with_context(|| format!("cannot read contacts file {}", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("cannot read the header row of {}", path.display()))?
        .clone();
    for column in COLUMNS {
        if !headers.iter().any(|header| header.trim() == column) {
            bail!(
                "contacts file {} has no {column:?} column; the header row must name {}",
                path.display(),
                COLUMNS.join(", ")
            );
        }
    }
    let mut pupils: BTreeMap<String, Vec<Contact>> = BTreeMap::new();
    let mut lines = Vec::new();
    for (index, record) in reader.deserialize::<ContactRecord>().enumerate() {
        // Line 1 is the header.
        let line = index + 2;
        let record =
            record.with_context(|| format!("invalid row at line {line} of {}", path.display()))?;
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
        let channel = channel_of(&record.preferred_channel).ok_or_else(|| {
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
        let upn = record.upn.trim().to_ascii_uppercase();
        lines.push((upn.clone(), priority, line));
        pupils.entry(upn).or_default().push(Contact {
            priority,
            name: record.name,
            relationship: record.relationship,
            parental_responsibility,
            email: record.email,
            mobile: record.mobile,
            address_lines,
            postcode: record.postcode,
            preferred_channel: channel as i32,
        });
    }
    if pupils.is_empty() {
        bail!("contacts file {} has no rows", path.display());
    }
    let pupils = pupils
        .into_iter()
        .map(|(upn, contacts)| PupilContacts { upn, contacts })
        .collect();
    Ok((pupils, lines))
}

fn channel_name(value: i32) -> &'static str {
    match ContactChannel::try_from(value).unwrap_or(ContactChannel::Unspecified) {
        ContactChannel::Email => "email",
        ContactChannel::Sms => "sms",
        ContactChannel::Letter => "letter",
        ContactChannel::Unspecified => "",
    }
}

pub(crate) async fn run(
    clients: &Clients,
    command: ContactsCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        ContactsCommand::Import { file } => {
            let (pupils, lines) = read_contacts(&file)?;
            let response = clients
                .registers
                .clone()
                .set_pupil_contacts(SetPupilContactsRequest { pupils })
                .await
                .map_err(|status| {
                    // The server names the pupil and the contact's priority; the file's line
                    // is what the person fixing it needs.
                    let message = status.message();
                    let line = lines.iter().find(|(upn, priority, _)| {
                        message.contains(&format!("for pupil {upn}"))
                            && message.contains(&format!("contacts[{priority}]"))
                    });
                    match line {
                        Some((_, _, line)) => anyhow::anyhow!(
                            "line {line} of {}: {message}; nothing was stored",
                            file.display()
                        ),
                        None => {
                            anyhow::anyhow!("{}: {message}; nothing was stored", file.display())
                        }
                    }
                })?
                .into_inner();
            writeln!(
                out,
                "Replaced the contacts of {}: {} held",
                count(response.pupils as usize, "pupil", "pupils"),
                count(response.contacts as usize, "contact", "contacts")
            )?;
        }
        ContactsCommand::List { upn, json } => {
            let contacts = clients
                .registers
                .clone()
                .list_pupil_contacts(ListPupilContactsRequest { upn })
                .await?
                .into_inner()
                .contacts;
            if json {
                let rows: Vec<_> = contacts
                    .iter()
                    .map(|contact| {
                        json!({
                            "priority": contact.priority,
                            "name": contact.name,
                            "relationship": contact.relationship,
                            "parental_responsibility": contact.parental_responsibility,
                            "email": contact.email,
                            "mobile": contact.mobile,
                            "address_lines": contact.address_lines,
                            "postcode": contact.postcode,
                            "preferred_channel": channel_name(contact.preferred_channel),
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            if contacts.is_empty() {
                writeln!(out, "No contacts held")?;
                return Ok(());
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header([
                "priority",
                "name",
                "relationship",
                "parental responsibility",
                "channel",
            ]);
            for contact in &contacts {
                rows.add_row(vec![
                    contact.priority.to_string(),
                    contact.name.clone(),
                    contact.relationship.clone(),
                    if contact.parental_responsibility {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_owned(),
                    channel_name(contact.preferred_channel).to_owned(),
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
        }
    }
    Ok(())
}
