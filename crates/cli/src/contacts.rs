//! `rollcall contacts import|list`: the parents and carers the school writes to about a pupil.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::registers::v1::{
    Contact, ContactChannel, ListPupilContactsRequest, PupilContacts, SetPupilContactsRequest,
};
use rollcall_csv::contacts::Channel;
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

/// Reads a contacts file into one list per pupil, checking every row before anything is sent.
/// Returns the lists and the line each contact came from (UPN, priority, line).
fn read_contacts(path: &Path) -> anyhow::Result<ContactsFile> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read contacts file {}", path.display()))?;
    let rows = rollcall_csv::contacts::read_contacts(&path.display().to_string(), file)?;
    let mut pupils: BTreeMap<String, Vec<Contact>> = BTreeMap::new();
    let mut lines = Vec::new();
    for row in rows {
        lines.push((row.upn.clone(), row.priority, row.line));
        let channel = match row.preferred_channel {
            Channel::Unspecified => ContactChannel::Unspecified,
            Channel::Email => ContactChannel::Email,
            Channel::Sms => ContactChannel::Sms,
            Channel::Letter => ContactChannel::Letter,
        };
        pupils.entry(row.upn).or_default().push(Contact {
            priority: row.priority,
            name: row.name,
            relationship: row.relationship,
            parental_responsibility: row.parental_responsibility,
            email: row.email,
            mobile: row.mobile,
            address_lines: row.address_lines,
            postcode: row.postcode,
            preferred_channel: channel as i32,
        });
    }
    let pupils = pupils
        .into_iter()
        .map(|(upn, contacts)| PupilContacts { upn, contacts })
        .collect();
    Ok((pupils, lines))
}

/// The contacts of a file, and the line each contact came from (UPN, priority, line).
type ContactsFile = (Vec<PupilContacts>, Vec<(String, i32, usize)>);

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
