//! Message and letter templates, in MiniJinja (a Jinja2 dialect). Templates are checked when
//! they are loaded: every field they name must be one rollcall supplies for their purpose, so
//! a typo is caught before any parent would see a gap in a letter.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use minijinja::{Environment, UndefinedBehavior};
use rollcall_api::cases::v1::{MessageChannel, Template as PbTemplate};
use rollcall_runtime::grpc::invalid_argument;
use rollcall_runtime::{Db, with_db};
use serde::Deserialize;
use tonic::Status;

use crate::fields::storage;

/// The fields every template may name.
const COMMON_FIELDS: [&str; 7] = [
    "school.name",
    "school.laestab",
    "pupil.forename",
    "pupil.surname",
    "pupil.year_group",
    "recipient.name",
    "today",
];

/// The further fields of first-day contact.
const FIRST_DAY_FIELDS: [&str; 2] = ["absence.date", "absence.session"];

/// The further fields of letters on a case.
const LETTER_FIELDS: [&str; 8] = [
    "attendance.percent",
    "attendance.sessions_possible",
    "attendance.sessions_missed",
    "attendance.unauthorised_sessions",
    "attendance.as_of",
    "case.id",
    "case.stage",
    "letter.date",
];

/// The purposes a template can serve.
pub(crate) const PURPOSES: [&str; 2] = ["first_day", "letter"];

/// Returns the fields a template for `purpose` may name.
pub(crate) fn fields_for(purpose: &str) -> Vec<&'static str> {
    let mut fields: Vec<&'static str> = COMMON_FIELDS.to_vec();
    match purpose {
        "first_day" => fields.extend(FIRST_DAY_FIELDS),
        "letter" => fields.extend(LETTER_FIELDS),
        _ => {}
    }
    fields.sort_unstable();
    fields
}

/// A template as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TemplateFile {
    pub(crate) name: String,
    pub(crate) channel: String,
    pub(crate) purpose: String,
    #[serde(default)]
    pub(crate) subject: String,
    pub(crate) body: String,
}

/// A template in use, shipped or loaded.
#[derive(Debug, Clone)]
pub(crate) struct StoredTemplate {
    pub(crate) file: TemplateFile,
    pub(crate) version: i32,
    pub(crate) loaded_by: String,
}

impl StoredTemplate {
    pub(crate) fn into_proto(self) -> PbTemplate {
        PbTemplate {
            channel: channel_to_proto(&self.file.channel) as i32,
            fields: fields_for(&self.file.purpose)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            name: self.file.name,
            purpose: self.file.purpose,
            subject: self.file.subject,
            body: self.file.body,
            version: self.version,
            loaded_by: self.loaded_by,
        }
    }
}

pub(crate) fn channel_to_proto(channel: &str) -> MessageChannel {
    match channel {
        "email" => MessageChannel::Email,
        "sms" => MessageChannel::Sms,
        "letter" => MessageChannel::Letter,
        _ => MessageChannel::Unspecified,
    }
}

const SHIPPED_SOURCES: [&str; 5] = [
    include_str!("../../templates/first-day-sms.toml"),
    include_str!("../../templates/first-day-email.toml"),
    include_str!("../../templates/first-day-letter.toml"),
    include_str!("../../templates/attendance-concern-letter.toml"),
    include_str!("../../templates/penalty-warning-letter.toml"),
];

/// The templates shipped with rollcall, checked once.
static SHIPPED: LazyLock<Vec<TemplateFile>> = LazyLock::new(|| {
    SHIPPED_SOURCES
        .iter()
        .map(|source| parse_template(source).expect("shipped templates are valid"))
        .collect()
});

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A field missing at render time is an error, never an empty gap in a letter.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// Problems a template file can have, each naming what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("the template file is not valid TOML: {0}")]
    Toml(String),
    #[error(
        "template name {0:?} may only use lowercase letters, digits and hyphens, such as \"first-day-sms\""
    )]
    Name(String),
    #[error("channel {0:?} is not one of email, sms or letter")]
    Channel(String),
    #[error("purpose {0:?} is not one of first_day or letter")]
    Purpose(String),
    #[error("a {0} template needs a subject")]
    Subject(String),
    #[error("the {part} of template {name:?} has a syntax error: {detail}")]
    Syntax {
        name: String,
        part: &'static str,
        detail: String,
    },
    #[error(
        "template {name:?} names unknown field {field:?}; a {purpose} template may name: {known}"
    )]
    UnknownField {
        name: String,
        field: String,
        purpose: String,
        known: String,
    },
}

/// Parses and checks a template file.
pub(crate) fn parse_template(source: &str) -> Result<TemplateFile, TemplateError> {
    let file: TemplateFile =
        toml::from_str(source).map_err(|error| TemplateError::Toml(error.to_string()))?;
    let name_ok = !file.name.is_empty()
        && file
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(TemplateError::Name(file.name));
    }
    if !["email", "sms", "letter"].contains(&file.channel.as_str()) {
        return Err(TemplateError::Channel(file.channel));
    }
    if !PURPOSES.contains(&file.purpose.as_str()) {
        return Err(TemplateError::Purpose(file.purpose));
    }
    if file.channel != "sms" && file.subject.trim().is_empty() {
        return Err(TemplateError::Subject(file.channel));
    }
    let known = fields_for(&file.purpose);
    let env = environment();
    for (part, text) in [("subject", &file.subject), ("body", &file.body)] {
        let template = env
            .template_from_str(text)
            .map_err(|error| TemplateError::Syntax {
                name: file.name.clone(),
                part,
                detail: error.to_string(),
            })?;
        let used: BTreeSet<String> = template.undeclared_variables(true).into_iter().collect();
        if let Some(field) = used.iter().find(|field| !known.contains(&field.as_str())) {
            return Err(TemplateError::UnknownField {
                name: file.name.clone(),
                field: field.clone(),
                purpose: file.purpose.clone(),
                known: known.join(", "),
            });
        }
    }
    Ok(file)
}

/// Text rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub(crate) subject: String,
    pub(crate) body: String,
}

/// Renders a template with its fields. Fails when a field is missing, which the load check
/// makes a bug in rollcall rather than in the template.
pub(crate) fn render(
    template: &TemplateFile,
    fields: &serde_json::Value,
) -> Result<Rendered, minijinja::Error> {
    let env = environment();
    let subject = env.render_str(&template.subject, fields)?;
    let body = env.render_str(&template.body, fields)?;
    Ok(Rendered {
        subject: subject.trim().to_owned(),
        body: body.trim().to_owned(),
    })
}

#[derive(Debug, sqlx::FromRow)]
struct TemplateRow {
    name: String,
    version: i32,
    channel: String,
    purpose: String,
    subject: String,
    body: String,
    loaded_by: String,
}

/// Returns the templates in use: the latest loaded version of each name, and the shipped
/// defaults with no loaded version.
pub(crate) async fn in_use(db: &Db) -> Result<Vec<StoredTemplate>, Status> {
    let rows: Vec<TemplateRow> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT t.name, t.version, t.channel, t.purpose, t.subject, t.body, t.loaded_by \
             FROM message_templates t WHERE t.version = \
             (SELECT MAX(u.version) FROM message_templates u WHERE u.name = t.name) \
             ORDER BY t.name",
        )
        .fetch_all(pool)
        .await
    })
    .map_err(storage("reading templates"))?;
    let mut templates: Vec<StoredTemplate> = rows
        .into_iter()
        .map(|row| StoredTemplate {
            file: TemplateFile {
                name: row.name,
                channel: row.channel,
                purpose: row.purpose,
                subject: row.subject,
                body: row.body,
            },
            version: row.version,
            loaded_by: row.loaded_by,
        })
        .collect();
    for shipped in SHIPPED.iter() {
        if !templates.iter().any(|t| t.file.name == shipped.name) {
            templates.push(StoredTemplate {
                file: shipped.clone(),
                version: 0,
                loaded_by: String::new(),
            });
        }
    }
    templates.sort_by(|a, b| a.file.name.cmp(&b.file.name));
    Ok(templates)
}

/// Returns the template in use under `name`.
pub(crate) async fn named(db: &Db, field: &str, name: &str) -> Result<StoredTemplate, Status> {
    let templates = in_use(db).await?;
    let names: Vec<String> = templates.iter().map(|t| t.file.name.clone()).collect();
    templates
        .into_iter()
        .find(|t| t.file.name == name)
        .ok_or_else(|| {
            invalid_argument(
                field,
                name,
                format!("no template has this name; templates: {}", names.join(", ")),
            )
        })
}

/// Checks and stores a template as a new version.
pub(crate) async fn load(db: &Db, source: &str, loaded_by: &str) -> Result<StoredTemplate, Status> {
    let file = parse_template(source)
        .map_err(|error| invalid_argument("source", "(template file)", error.to_string()))?;
    if let Some(shipped) = SHIPPED.iter().find(|s| s.name == file.name)
        && (shipped.channel != file.channel || shipped.purpose != file.purpose)
    {
        return Err(invalid_argument(
            "source",
            &file.name,
            format!(
                "template {} replaces a shipped template, so it keeps channel {} and purpose {}",
                file.name, shipped.channel, shipped.purpose
            ),
        ));
    }
    let now: DateTime<Utc> = Utc::now();
    let version: i32 = with_db!(db, |pool| async {
        use rollcall_runtime::storage::WriteTransaction;
        let mut tx = pool.begin_write(crate::CASES_LOCK_KEY).await?;
        let latest: Option<i32> =
            sqlx::query_scalar("SELECT MAX(version) FROM message_templates WHERE name = $1")
                .bind(&file.name)
                .fetch_one(&mut *tx)
                .await?;
        let version = latest.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO message_templates (name, version, channel, purpose, subject, body, \
             loaded_by, loaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&file.name)
        .bind(version)
        .bind(&file.channel)
        .bind(&file.purpose)
        .bind(&file.subject)
        .bind(&file.body)
        .bind(loaded_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(version)
    }
    .await)
    .map_err(storage("storing a template"))?;
    tracing::info!(template = %file.name, version, "Template loaded");
    Ok(StoredTemplate {
        file,
        version,
        loaded_by: loaded_by.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(body: &str) -> String {
        format!(
            "name = \"test-letter\"\nchannel = \"letter\"\npurpose = \"letter\"\n\
             subject = \"About {{{{ pupil.forename }}}}\"\nbody = '''{body}'''\n"
        )
    }

    #[test]
    fn shipped_templates_are_valid() {
        assert_eq!(SHIPPED.len(), SHIPPED_SOURCES.len());
        for name in [
            "first-day-sms",
            "first-day-email",
            "first-day-letter",
            "attendance-concern-letter",
            "penalty-warning-letter",
        ] {
            assert!(SHIPPED.iter().any(|t| t.name == name), "{name} is shipped");
        }
    }

    #[test]
    fn concern_letter_agrees_with_its_count() {
        let template = SHIPPED
            .iter()
            .find(|t| t.name == "attendance-concern-letter")
            .expect("shipped");
        let fields = |unauthorised: u32| {
            json!({
                "school": {"name": "Test Academy"},
                "pupil": {"forename": "Sam", "surname": "Able"},
                "recipient": {"name": "Mrs A Able"},
                "attendance": {
                    "percent": "85.0",
                    "sessions_possible": 40,
                    "sessions_missed": 6,
                    "unauthorised_sessions": unauthorised,
                    "as_of": "Friday 19 September 2025",
                },
            })
        };
        let one = render(template, &fields(1)).expect("renders").body;
        assert!(one.contains("1 was unauthorised"), "{one}");
        let two = render(template, &fields(2)).expect("renders").body;
        assert!(two.contains("2 were unauthorised"), "{two}");
    }

    #[test]
    fn unknown_field_is_named() {
        let error = parse_template(&source("Dear {{ recipient.nmae }}")).expect_err("typo");
        match &error {
            TemplateError::UnknownField { field, .. } => assert_eq!(field, "recipient.nmae"),
            other => panic!("expected an unknown field, got {other:?}"),
        }
        assert!(error.to_string().contains("recipient.name"), "{error}");
    }

    #[test]
    fn first_day_fields_are_not_letter_fields() {
        let error = parse_template(&source("{{ absence.date }}")).expect_err("wrong purpose");
        assert!(
            matches!(error, TemplateError::UnknownField { .. }),
            "{error}"
        );
    }

    #[test]
    fn fields_in_loops_and_conditions_are_checked() {
        let body = "{% if attendance.percent %}{{ attendence.as_of }}{% endif %}";
        let error = parse_template(&source(body)).expect_err("typo inside if");
        assert!(error.to_string().contains("attendence.as_of"), "{error}");
        let fine = "{% for word in ['a', 'b'] %}{{ word }}{% endfor %}{{ case.id }}";
        assert!(parse_template(&source(fine)).is_ok());
    }

    #[test]
    fn syntax_error_names_the_part() {
        let error = parse_template(&source("{{ pupil.forename ")).expect_err("unclosed");
        assert!(
            matches!(&error, TemplateError::Syntax { part: "body", .. }),
            "{error}"
        );
    }

    #[test]
    fn bad_name_channel_and_subject_are_rejected() {
        let bad_name = source("x").replace("test-letter", "Test Letter");
        assert!(matches!(
            parse_template(&bad_name),
            Err(TemplateError::Name(_))
        ));
        let bad_channel = source("x").replace("channel = \"letter\"", "channel = \"fax\"");
        assert!(matches!(
            parse_template(&bad_channel),
            Err(TemplateError::Channel(_))
        ));
        let no_subject = source("x").replace("About {{ pupil.forename }}", " ");
        assert!(matches!(
            parse_template(&no_subject),
            Err(TemplateError::Subject(_))
        ));
    }

    #[test]
    fn render_fills_fields_and_refuses_gaps() {
        let template =
            parse_template(&source("Dear {{ recipient.name }}, {{ case.id }}")).expect("valid");
        let fields = json!({
            "recipient": {"name": "Mr B Carer"},
            "case": {"id": "case-1"},
            "pupil": {"forename": "Amélie"},
        });
        let rendered = render(&template, &fields).expect("renders");
        assert_eq!(rendered.subject, "About Amélie");
        assert_eq!(rendered.body, "Dear Mr B Carer, case-1");
        let missing = json!({"recipient": {"name": "Mr B Carer"}, "pupil": {"forename": "A"}});
        assert!(render(&template, &missing).is_err(), "case.id is missing");
    }
}
