//! Parents and carers the school contacts about a pupil. The MIS is their source, so a pupil's
//! list is always replaced whole, never merged.

use std::collections::BTreeSet;

use rollcall_api::registers::v1::{Contact, ContactChannel, PupilContacts};
use rollcall_domain::Upn;
use rollcall_runtime::grpc::{not_found, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The advisory lock that serialises contact writers on PostgreSQL.
const CONTACTS_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::REGISTERS_CONTACTS;

/// A stored contact.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct ContactRow {
    pub(crate) upn: String,
    pub(crate) priority: i32,
    pub(crate) name: String,
    pub(crate) relationship: String,
    pub(crate) parental_responsibility: bool,
    pub(crate) email: String,
    pub(crate) mobile: String,
    pub(crate) address: String,
    pub(crate) postcode: String,
    pub(crate) preferred_channel: String,
}

impl ContactRow {
    pub(crate) fn into_proto(self) -> Contact {
        let channel = match self.preferred_channel.as_str() {
            "email" => ContactChannel::Email,
            "sms" => ContactChannel::Sms,
            "letter" => ContactChannel::Letter,
            _ => ContactChannel::Unspecified,
        };
        Contact {
            priority: self.priority,
            name: self.name,
            relationship: self.relationship,
            parental_responsibility: self.parental_responsibility,
            email: self.email,
            mobile: self.mobile,
            address_lines: self
                .address
                .lines()
                .map(str::to_owned)
                .filter(|line| !line.is_empty())
                .collect(),
            postcode: self.postcode,
            preferred_channel: channel as i32,
        }
    }
}

/// Rejects a contact field. The value goes back to the caller but never into the log, because
/// contact details are personal data.
fn rejected(field: &str, upn: &str, value: &str, problem: impl Into<String>) -> Status {
    let problem = problem.into();
    let message = format!("invalid {field} {value:?} for pupil {upn}: {problem}");
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(field, problem);
    tracing::warn!(field, upn, "Rejected contact details");
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Normalises a UK or international mobile number to international form (+447700900123).
pub(crate) fn normalise_mobile(raw: &str) -> Result<String, &'static str> {
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let international = if let Some(rest) = compact.strip_prefix("+") {
        rest.to_owned()
    } else if let Some(rest) = compact.strip_prefix("00") {
        rest.to_owned()
    } else if let Some(rest) = compact.strip_prefix('0') {
        format!("44{rest}")
    } else {
        return Err("give a UK number starting 07 or an international number starting +");
    };
    if !international.chars().all(|c| c.is_ascii_digit()) {
        return Err("a mobile number has only digits, spaces and an optional leading +");
    }
    if international.starts_with("44") && !international.starts_with("447") {
        return Err("UK mobile numbers start 07 (or +447)");
    }
    if international.starts_with("447") && international.len() != 12 {
        return Err("a UK mobile number has 11 digits, such as 07700 900123");
    }
    if !(10..=15).contains(&international.len()) {
        return Err("an international number has 10 to 15 digits");
    }
    Ok(format!("+{international}"))
}

/// Checks a UK postcode's shape (such as SG5 1AA or EC1A 1BB) and returns it in the usual
/// form: capitals, with one space before the last three characters.
fn normalise_postcode(raw: &str) -> Result<String, &'static str> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    let problem = "a UK postcode has an outward code and an inward code, such as SG5 1AA";
    if !(5..=7).contains(&compact.len()) || !compact.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(problem);
    }
    let (outward, inward) = compact.split_at(compact.len() - 3);
    let inward_ok = inward.starts_with(|c: char| c.is_ascii_digit())
        && inward[1..].chars().all(|c| c.is_ascii_alphabetic());
    let outward_ok = outward.starts_with(|c: char| c.is_ascii_alphabetic())
        && outward.chars().any(|c| c.is_ascii_digit());
    if !(inward_ok && outward_ok) {
        return Err(problem);
    }
    Ok(format!("{outward} {inward}"))
}

/// Checks an email address's shape: one @ with a name before it and a dotted domain after.
fn check_email(raw: &str) -> Result<(), &'static str> {
    let Some((local, domain)) = raw.split_once('@') else {
        return Err("an email address needs an @");
    };
    if local.is_empty() || domain.contains('@') {
        return Err("an email address has one @ with a name before it");
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err("the part after @ must be a domain such as example.org");
    }
    if raw.chars().any(char::is_whitespace) {
        return Err("an email address has no spaces");
    }
    Ok(())
}

/// Checks one pupil's list and returns the rows to store.
pub(crate) fn check(pupil: &PupilContacts) -> Result<(String, Vec<ContactRow>), Status> {
    let upn = Upn::parse(&pupil.upn)
        .map_err(|error| rejected("pupils.upn", &pupil.upn, &pupil.upn, error.to_string()))?
        .to_string();
    let mut priorities = BTreeSet::new();
    let mut rows = Vec::with_capacity(pupil.contacts.len());
    for contact in &pupil.contacts {
        let field = |name: &str| format!("contacts[{}].{name}", contact.priority);
        if contact.priority < 1 {
            return Err(rejected(
                "contacts.priority",
                &upn,
                &contact.priority.to_string(),
                "priority starts at 1 for the first contact",
            ));
        }
        if !priorities.insert(contact.priority) {
            return Err(rejected(
                "contacts.priority",
                &upn,
                &contact.priority.to_string(),
                "two contacts have this priority; each contact needs its own",
            ));
        }
        let name = contact.name.trim();
        if name.is_empty() {
            return Err(rejected(
                &field("name"),
                &upn,
                "",
                "the name to address the contact by is required",
            ));
        }
        let email = contact.email.trim();
        if !email.is_empty() {
            check_email(email)
                .map_err(|problem| rejected(&field("email"), &upn, email, problem))?;
        }
        let mobile = if contact.mobile.trim().is_empty() {
            String::new()
        } else {
            normalise_mobile(contact.mobile.trim())
                .map_err(|problem| rejected(&field("mobile"), &upn, &contact.mobile, problem))?
        };
        let address: Vec<&str> = contact
            .address_lines
            .iter()
            .map(|line| line.trim())
            .filter(|line| !line.is_empty())
            .collect();
        let postcode = if contact.postcode.trim().is_empty() {
            String::new()
        } else {
            normalise_postcode(&contact.postcode)
                .map_err(|problem| rejected(&field("postcode"), &upn, &contact.postcode, problem))?
        };
        let has_address = !address.is_empty() && !postcode.is_empty();
        let preferred = ContactChannel::try_from(contact.preferred_channel)
            .unwrap_or(ContactChannel::Unspecified);
        let channel = match preferred {
            ContactChannel::Email if email.is_empty() => {
                return Err(rejected(
                    &field("preferred_channel"),
                    &upn,
                    "email",
                    "email is preferred but no email address is given",
                ));
            }
            ContactChannel::Sms if mobile.is_empty() => {
                return Err(rejected(
                    &field("preferred_channel"),
                    &upn,
                    "sms",
                    "text messages are preferred but no mobile number is given",
                ));
            }
            ContactChannel::Letter if !has_address => {
                return Err(rejected(
                    &field("preferred_channel"),
                    &upn,
                    "letter",
                    "letters are preferred but the address lines or postcode are missing",
                ));
            }
            ContactChannel::Email => "email",
            ContactChannel::Sms => "sms",
            ContactChannel::Letter => "letter",
            ContactChannel::Unspecified if !mobile.is_empty() => "sms",
            ContactChannel::Unspecified if !email.is_empty() => "email",
            ContactChannel::Unspecified if has_address => "letter",
            ContactChannel::Unspecified => {
                return Err(rejected(
                    &field("preferred_channel"),
                    &upn,
                    "",
                    "the contact has no mobile number, email address or full postal address; \
                     give at least one",
                ));
            }
        };
        rows.push(ContactRow {
            upn: upn.clone(),
            priority: contact.priority,
            name: name.to_owned(),
            relationship: contact.relationship.trim().to_owned(),
            parental_responsibility: contact.parental_responsibility,
            email: email.to_owned(),
            mobile,
            address: address.join("\n"),
            postcode,
            preferred_channel: channel.to_owned(),
        });
    }
    rows.sort_by_key(|row| row.priority);
    Ok((upn, rows))
}

/// Replaces the contacts of every pupil given, in one transaction. Returns the pupils and
/// contacts stored.
pub(crate) async fn replace(db: &Db, pupils: &[PupilContacts]) -> Result<(i32, i32), Status> {
    let mut checked = Vec::with_capacity(pupils.len());
    let mut seen = BTreeSet::new();
    for pupil in pupils {
        let (upn, rows) = check(pupil)?;
        if !seen.insert(upn.clone()) {
            return Err(rejected(
                "pupils.upn",
                &upn,
                &upn,
                "the pupil appears twice in the request; send all their contacts together",
            ));
        }
        checked.push((upn, rows));
    }
    let store_error = |error| storage_error("replacing pupil contacts", error);
    let contacts = checked.iter().map(|(_, rows)| rows.len()).sum::<usize>();
    with_db!(db, |pool| {
        let mut tx = pool
            .begin_write(CONTACTS_LOCK_KEY)
            .await
            .map_err(store_error)?;
        for (upn, rows) in &checked {
            let known: Option<String> = sqlx::query_scalar("SELECT upn FROM pupils WHERE upn = $1")
                .bind(upn)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
            if known.is_none() {
                return Err(not_found("pupil", upn));
            }
            sqlx::query("DELETE FROM pupil_contacts WHERE upn = $1")
                .bind(upn)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            for row in rows {
                sqlx::query(
                    "INSERT INTO pupil_contacts (upn, priority, name, relationship, \
                     parental_responsibility, email, mobile, address, postcode, preferred_channel) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&row.upn)
                .bind(row.priority)
                .bind(&row.name)
                .bind(&row.relationship)
                .bind(row.parental_responsibility)
                .bind(&row.email)
                .bind(&row.mobile)
                .bind(&row.address)
                .bind(&row.postcode)
                .bind(&row.preferred_channel)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok::<_, Status>(())
    })?;
    Ok((checked.len() as i32, contacts as i32))
}

/// Returns a pupil's contacts in priority order.
pub(crate) async fn of_pupil(db: &Db, upn: &str) -> Result<Vec<ContactRow>, sqlx::Error> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT upn, priority, name, relationship, parental_responsibility, email, mobile, \
             address, postcode, preferred_channel FROM pupil_contacts WHERE upn = $1 \
             ORDER BY priority",
        )
        .bind(upn)
        .fetch_all(pool)
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(priority: i32) -> Contact {
        Contact {
            priority,
            name: "Mrs A Parent".into(),
            relationship: "Mother".into(),
            parental_responsibility: true,
            mobile: "07700 900123".into(),
            ..Contact::default()
        }
    }

    fn pupil(contacts: Vec<Contact>) -> PupilContacts {
        PupilContacts {
            upn: "P000000000001".into(),
            contacts,
        }
    }

    #[test]
    fn mobile_numbers_normalise_to_international_form() {
        assert_eq!(normalise_mobile("07700 900123"), Ok("+447700900123".into()));
        assert_eq!(
            normalise_mobile("+44 7700 900123"),
            Ok("+447700900123".into())
        );
        assert_eq!(
            normalise_mobile("0044 7700900123"),
            Ok("+447700900123".into())
        );
        assert_eq!(
            normalise_mobile("+33 6 12 34 56 78"),
            Ok("+33612345678".into())
        );
        assert!(normalise_mobile("01234 567890").is_err(), "a landline");
        assert!(normalise_mobile("7700900123").is_err(), "no prefix");
        assert!(normalise_mobile("07700 9OO123").is_err(), "letters");
        assert!(normalise_mobile("077").is_err(), "too short");
        assert!(normalise_mobile("07700 90012").is_err(), "a digit short");
        assert!(normalise_mobile("07700 9001234").is_err(), "a digit long");
    }

    #[test]
    fn postcodes_are_checked_and_spaced() {
        assert_eq!(normalise_postcode("sg51aa"), Ok("SG5 1AA".into()));
        assert_eq!(normalise_postcode("EC1A 1BB"), Ok("EC1A 1BB".into()));
        assert_eq!(normalise_postcode("m1 1ae"), Ok("M1 1AE".into()));
        assert!(normalise_postcode("NOTAPOSTCODE").is_err());
        assert!(normalise_postcode("SG5 AAA").is_err());
        assert!(normalise_postcode("12 3AB").is_err());
    }

    #[test]
    fn email_shape_is_checked() {
        assert!(check_email("parent@example.org").is_ok());
        assert!(check_email("parent.example.org").is_err());
        assert!(check_email("@example.org").is_err());
        assert!(check_email("parent@example").is_err());
        assert!(check_email("a b@example.org").is_err());
        assert!(check_email("a@b@example.org").is_err());
    }

    #[test]
    fn channel_defaults_to_what_the_contact_has() {
        let (_, rows) = check(&pupil(vec![contact(1)])).expect("valid");
        assert_eq!(rows[0].preferred_channel, "sms");
        let by_email = Contact {
            mobile: String::new(),
            email: "parent@example.org".into(),
            ..contact(1)
        };
        let (_, rows) = check(&pupil(vec![by_email])).expect("valid");
        assert_eq!(rows[0].preferred_channel, "email");
        let by_post = Contact {
            mobile: String::new(),
            address_lines: vec!["1 High Street".into(), "Hitchin".into()],
            postcode: "sg5 1aa".into(),
            ..contact(1)
        };
        let (_, rows) = check(&pupil(vec![by_post])).expect("valid");
        assert_eq!(rows[0].preferred_channel, "letter");
        assert_eq!(rows[0].postcode, "SG5 1AA");
    }

    #[test]
    fn preferred_channel_needs_its_details() {
        let email_without_address = Contact {
            preferred_channel: ContactChannel::Email as i32,
            ..contact(1)
        };
        let error = check(&pupil(vec![email_without_address])).expect_err("no email");
        assert!(error.message().contains("no email address"), "{error:?}");
        let letter_without_postcode = Contact {
            preferred_channel: ContactChannel::Letter as i32,
            address_lines: vec!["1 High Street".into()],
            ..contact(1)
        };
        assert!(check(&pupil(vec![letter_without_postcode])).is_err());
    }

    #[test]
    fn priorities_must_be_unique_and_positive() {
        let error = check(&pupil(vec![contact(1), contact(1)])).expect_err("duplicate");
        assert!(error.message().contains("two contacts"), "{error:?}");
        assert!(check(&pupil(vec![contact(0)])).is_err());
    }

    #[test]
    fn contact_without_any_channel_is_rejected() {
        let nothing = Contact {
            mobile: String::new(),
            ..contact(1)
        };
        let error = check(&pupil(vec![nothing])).expect_err("no channel");
        assert!(error.message().contains("give at least one"), "{error:?}");
    }
}
