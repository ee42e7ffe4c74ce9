//! Messages to parents: `rollcall first-day`, `rollcall messages`, `rollcall template` and
//! `rollcall letter`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::cases::v1::{
    CompleteContactTaskRequest, ContactTask, CreateLetterRequest, GetLetterDocumentRequest,
    ListContactTasksRequest, ListMessagesRequest, ListTemplatesRequest, LoadTemplateRequest,
    Message, MessageChannel, MessageStatus, ResendMessageRequest, ReviewLetterRequest,
    RunFirstDayContactRequest,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_domain::session::parse_date;
use serde_json::{Value, json};

use crate::client::Clients;
use crate::text::{count, table};

#[derive(Debug, Subcommand)]
pub(crate) enum FirstDayCommand {
    /// Contact the parents of every pupil marked N (no reason yet) in a session whose register
    /// has closed, and open a contact task for the office for each. Safe to run again.
    Run {
        /// The school: seven-digit LAESTAB.
        #[arg(long)]
        school: String,
        /// The day (YYYY-MM-DD).
        #[arg(long)]
        date: String,
        /// The session: am or pm.
        #[arg(long, value_parser = ["am", "pm"], ignore_case = true)]
        session: String,
        /// Run for a day before today, for example after an outage.
        #[arg(long)]
        catch_up: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a school's contact tasks, open ones first.
    Tasks {
        /// The school: seven-digit LAESTAB.
        #[arg(long)]
        school: String,
        /// Only this day (YYYY-MM-DD).
        #[arg(long)]
        date: Option<String>,
        /// Include completed tasks.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record what the follow-up found and close a contact task.
    Done {
        /// The task id, for example task-00000001.
        task: String,
        /// The outcome of the follow-up.
        #[arg(long)]
        outcome: String,
        /// The name of the person who followed it up.
        #[arg(long)]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum MessagesCommand {
    /// List messages to parents with their delivery status, newest first.
    List {
        /// Only this school (LAESTAB).
        #[arg(long)]
        school: Option<String>,
        /// Only this pupil.
        #[arg(long)]
        upn: Option<String>,
        /// Only this case.
        #[arg(long)]
        case: Option<String>,
        /// Only this status.
        #[arg(long, value_parser = ["awaiting-review", "queued", "sending", "sent", "failed", "unconfirmed", "withdrawn"])]
        status: Option<String>,
        /// The maximum number of messages to list.
        #[arg(long, default_value_t = 100)]
        limit: i32,
        /// Print JSON, with every delivery attempt.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed or unconfirmed message again, once you have checked it did not arrive.
    Resend {
        /// The message id, for example msg-00000001.
        message: String,
        /// The name of the person who checked.
        #[arg(long)]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TemplateCommand {
    /// List the templates in use.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a template as a file that `template load` accepts.
    Show {
        /// The template name.
        name: String,
    },
    /// Check a template file and load it as a new version.
    Load {
        /// The TOML file: name, channel, purpose, subject and body.
        file: PathBuf,
        /// The name of the person loading it.
        #[arg(long)]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LetterCommand {
    /// Write a letter on a case from a template, one per contact with parental
    /// responsibility, filed on the case and queued for posting.
    Write {
        /// The case id.
        #[arg(long)]
        case: String,
        /// The letter template, for example attendance-concern-letter.
        #[arg(long)]
        template: String,
        /// The name of the person writing it.
        #[arg(long)]
        by: String,
        /// The date the letter bears (YYYY-MM-DD); today by default.
        #[arg(long)]
        date: Option<String>,
        /// An idempotency key; by default the case, template and date, so running the same
        /// command again writes no second letter.
        #[arg(long)]
        request_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve or withdraw a letter waiting for review.
    Review {
        /// The letter's message id.
        letter: String,
        /// Approve it for sending.
        #[arg(
            long,
            conflicts_with = "withdraw",
            required_unless_present = "withdraw"
        )]
        approve: bool,
        /// Withdraw it; --reason is required.
        #[arg(long)]
        withdraw: bool,
        /// The name of the reviewer.
        #[arg(long)]
        by: String,
        /// The reason, required with --withdraw.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Save a letter's PDF.
    Pdf {
        /// The letter's message id.
        letter: String,
        /// The path of the PDF to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn channel_name(value: i32) -> &'static str {
    match MessageChannel::try_from(value).unwrap_or(MessageChannel::Unspecified) {
        MessageChannel::Email => "email",
        MessageChannel::Sms => "sms",
        MessageChannel::Letter => "letter",
        MessageChannel::Unspecified => "",
    }
}

fn status_name(value: i32) -> &'static str {
    match MessageStatus::try_from(value).unwrap_or(MessageStatus::Unspecified) {
        MessageStatus::AwaitingReview => "awaiting-review",
        MessageStatus::Queued => "queued",
        MessageStatus::Sending => "sending",
        MessageStatus::Sent => "sent",
        MessageStatus::Failed => "failed",
        MessageStatus::Unconfirmed => "unconfirmed",
        MessageStatus::Withdrawn => "withdrawn",
        MessageStatus::Unspecified => "",
    }
}

fn status_of(name: &str) -> MessageStatus {
    match name {
        "awaiting-review" => MessageStatus::AwaitingReview,
        "queued" => MessageStatus::Queued,
        "sending" => MessageStatus::Sending,
        "sent" => MessageStatus::Sent,
        "failed" => MessageStatus::Failed,
        "unconfirmed" => MessageStatus::Unconfirmed,
        "withdrawn" => MessageStatus::Withdrawn,
        _ => MessageStatus::Unspecified,
    }
}

fn message_json(message: &Message) -> Value {
    json!({
        "id": message.id,
        "laestab": message.laestab,
        "upn": message.upn,
        "case_id": message.case_id,
        "task_id": message.task_id,
        "purpose": message.purpose,
        "channel": channel_name(message.channel),
        "recipient_priority": message.recipient_priority,
        "recipient_name": message.recipient_name,
        "recipient_address": message.recipient_address,
        "template": message.template,
        "template_version": message.template_version,
        "subject": message.subject,
        "body": message.body,
        "status": status_name(message.status),
        "review_reasons": message.review_reasons,
        "attempts": message.attempts,
        "last_error": message.last_error,
        "provider_reference": message.provider_reference,
        "created_by": message.created_by,
        "reviewed_by": message.reviewed_by,
        "has_document": message.has_document,
        "created_at": time_json(message.created_at.as_ref()),
        "sent_at": time_json(message.sent_at.as_ref()),
        "next_attempt_at": time_json(message.next_attempt_at.as_ref()),
        "history": message.history.iter().map(|attempt| json!({
            "attempt": attempt.attempt,
            "at": time_json(attempt.at.as_ref()),
            "outcome": attempt.outcome,
            "detail": attempt.detail,
        })).collect::<Vec<_>>(),
    })
}

/// Returns a timestamp as RFC 3339 in UTC, or null when it is absent.
fn time_json(at: Option<&prost_types::Timestamp>) -> Value {
    at.and_then(rollcall_api::convert::from_timestamp)
        .map_or(Value::Null, |at| json!(at.to_rfc3339()))
}

fn task_json(task: &ContactTask) -> Value {
    json!({
        "id": task.id,
        "laestab": task.laestab,
        "upn": task.upn,
        "absence_date": task.absence_date,
        "session": if task.session == PbSession::Pm as i32 { "pm" } else { "am" },
        "status": task.status,
        "outcome": task.outcome,
        "completed_by": task.completed_by,
        "messages": task.messages,
    })
}

fn print_json(out: &mut impl Write, value: &Value) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

fn checked_date(flag: &str, value: &str) -> anyhow::Result<String> {
    parse_date(value)
        .map(|date| date.to_string())
        .map_err(|error| anyhow::anyhow!("invalid {flag}: {error}"))
}

pub(crate) async fn run_first_day(
    clients: &Clients,
    command: FirstDayCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut cases = clients.cases.clone();
    match command {
        FirstDayCommand::Run {
            school,
            date,
            session,
            catch_up,
            json,
        } => {
            let session = if session.eq_ignore_ascii_case("pm") {
                PbSession::Pm
            } else {
                PbSession::Am
            };
            let response = cases
                .run_first_day_contact(RunFirstDayContactRequest {
                    laestab: school,
                    date: checked_date("--date", &date)?,
                    session: session as i32,
                    catch_up,
                })
                .await?
                .into_inner();
            if json {
                return print_json(
                    out,
                    &json!({
                        "unexplained": response.unexplained,
                        "already_reported": response.already_reported,
                        "tasks_created": response.tasks_created,
                        "messages_queued": response.messages_queued,
                        "without_contacts": response.without_contacts,
                    }),
                );
            }
            writeln!(
                out,
                "{} unexplained ({} already reported by parents): {} and {} created",
                count(response.unexplained, "absence", "absences"),
                response.already_reported,
                count(response.tasks_created, "contact task", "contact tasks"),
                count(response.messages_queued, "message", "messages"),
            )?;
            if !response.without_contacts.is_empty() {
                writeln!(
                    out,
                    "No contact to message for: {} (phone them)",
                    response.without_contacts.join(", ")
                )?;
            }
        }
        FirstDayCommand::Tasks {
            school,
            date,
            all,
            json,
        } => {
            let date = date
                .map(|d| checked_date("--date", &d))
                .transpose()?
                .unwrap_or_default();
            let tasks = cases
                .list_contact_tasks(ListContactTasksRequest {
                    laestab: school,
                    date,
                    include_done: all,
                })
                .await?
                .into_inner()
                .tasks;
            if json {
                return print_json(out, &Value::Array(tasks.iter().map(task_json).collect()));
            }
            if tasks.is_empty() {
                writeln!(out, "No contact tasks")?;
                return Ok(());
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header(["task", "upn", "date", "status", "messages", "outcome"]);
            for task in &tasks {
                rows.add_row(vec![
                    task.id.clone(),
                    task.upn.clone(),
                    task.absence_date.clone(),
                    task.status.clone(),
                    task.messages.to_string(),
                    task.outcome.clone(),
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
        }
        FirstDayCommand::Done { task, outcome, by } => {
            let task = cases
                .complete_contact_task(CompleteContactTaskRequest {
                    task_id: task,
                    outcome,
                    completed_by: by,
                })
                .await?
                .into_inner()
                .task
                .unwrap_or_default();
            writeln!(out, "Contact task {} done: {}", task.id, task.outcome)?;
        }
    }
    Ok(())
}

pub(crate) async fn run_messages(
    clients: &Clients,
    command: MessagesCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut cases = clients.cases.clone();
    match command {
        MessagesCommand::List {
            school,
            upn,
            case,
            status,
            limit,
            json,
        } => {
            let messages = cases
                .list_messages(ListMessagesRequest {
                    laestab: school.unwrap_or_default(),
                    upn: upn.unwrap_or_default(),
                    case_id: case.unwrap_or_default(),
                    status: status
                        .as_deref()
                        .map_or(MessageStatus::Unspecified, status_of)
                        as i32,
                    page_size: limit,
                })
                .await?
                .into_inner()
                .messages;
            if json {
                return print_json(
                    out,
                    &Value::Array(messages.iter().map(message_json).collect()),
                );
            }
            if messages.is_empty() {
                writeln!(out, "No messages")?;
                return Ok(());
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header([
                "message", "upn", "channel", "to", "template", "status", "attempts",
            ]);
            for message in &messages {
                rows.add_row(vec![
                    message.id.clone(),
                    message.upn.clone(),
                    channel_name(message.channel).to_owned(),
                    message.recipient_name.clone(),
                    message.template.clone(),
                    status_name(message.status).to_owned(),
                    message.attempts.to_string(),
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
        }
        MessagesCommand::Resend { message, by } => {
            let message = cases
                .resend_message(ResendMessageRequest {
                    message_id: message,
                    requested_by: by,
                })
                .await?
                .into_inner()
                .message
                .unwrap_or_default();
            writeln!(out, "Message {} queued again", message.id)?;
        }
    }
    Ok(())
}

pub(crate) async fn run_template(
    clients: &Clients,
    command: TemplateCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut cases = clients.cases.clone();
    match command {
        TemplateCommand::List { json } => {
            let templates = cases
                .list_templates(ListTemplatesRequest {})
                .await?
                .into_inner()
                .templates;
            if json {
                let rows = templates
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "channel": channel_name(t.channel),
                            "purpose": t.purpose,
                            "version": t.version,
                            "loaded_by": t.loaded_by,
                            "fields": t.fields,
                        })
                    })
                    .collect();
                return print_json(out, &Value::Array(rows));
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header(["template", "channel", "purpose", "version"]);
            for template in &templates {
                rows.add_row(vec![
                    template.name.clone(),
                    channel_name(template.channel).to_owned(),
                    template.purpose.clone(),
                    if template.version == 0 {
                        "shipped".to_owned()
                    } else {
                        template.version.to_string()
                    },
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
        }
        TemplateCommand::Show { name } => {
            let templates = cases
                .list_templates(ListTemplatesRequest {})
                .await?
                .into_inner()
                .templates;
            let Some(template) = templates.into_iter().find(|t| t.name == name) else {
                bail!("no template is named {name:?}; `rollcall template list` shows them");
            };
            let file = toml::to_string_pretty(&json!({
                "name": template.name,
                "channel": channel_name(template.channel),
                "purpose": template.purpose,
                "subject": template.subject,
                "body": template.body,
            }))?;
            writeln!(out, "# Fields: {}", template.fields.join(", "))?;
            write!(out, "{file}")?;
        }
        TemplateCommand::Load { file, by } => {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read template file {}", file.display()))?;
            let template = cases
                .load_template(LoadTemplateRequest {
                    source,
                    loaded_by: by,
                })
                .await
                .map_err(|status| {
                    anyhow::anyhow!(
                        "template file {} was not loaded: {}",
                        file.display(),
                        status.message()
                    )
                })?
                .into_inner()
                .template
                .unwrap_or_default();
            writeln!(
                out,
                "Loaded template {} version {}",
                template.name, template.version
            )?;
        }
    }
    Ok(())
}

pub(crate) async fn run_letter(
    clients: &Clients,
    command: LetterCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut cases = clients.cases.clone();
    match command {
        LetterCommand::Write {
            case,
            template,
            by,
            date,
            request_id,
            json,
        } => {
            let date = date
                .map(|d| checked_date("--date", &d))
                .transpose()?
                .unwrap_or_else(|| chrono::Utc::now().date_naive().to_string());
            let request_id = request_id.unwrap_or_else(|| format!("{case}:{template}:{date}"));
            let response = cases
                .create_letter(CreateLetterRequest {
                    request_id,
                    case_id: case,
                    template,
                    created_by: by,
                    letter_date: date,
                })
                .await?
                .into_inner();
            if json {
                return print_json(
                    out,
                    &json!({
                        "letters": response.letters.iter().map(message_json).collect::<Vec<_>>(),
                        "not_addressed": response.not_addressed,
                    }),
                );
            }
            for letter in &response.letters {
                writeln!(
                    out,
                    "Letter {} to {} by {}: {}",
                    letter.id,
                    letter.recipient_name,
                    channel_name(letter.channel),
                    status_name(letter.status)
                )?;
                for reason in &letter.review_reasons {
                    writeln!(out, "  waits for review: {reason}")?;
                }
            }
            for name in &response.not_addressed {
                writeln!(out, "No postal or email address for {name}")?;
            }
        }
        LetterCommand::Review {
            letter,
            approve,
            withdraw,
            by,
            reason,
        } => {
            let letter = cases
                .review_letter(ReviewLetterRequest {
                    message_id: letter,
                    approve: approve && !withdraw,
                    reviewed_by: by,
                    reason,
                })
                .await?
                .into_inner()
                .letter
                .unwrap_or_default();
            writeln!(
                out,
                "Letter {} is {}",
                letter.id,
                status_name(letter.status)
            )?;
        }
        LetterCommand::Pdf { letter, out: path } => {
            if path.extension().and_then(|e| e.to_str()) != Some("pdf") {
                bail!(
                    "invalid --out {}: give a file name ending in .pdf",
                    path.display()
                );
            }
            let document = cases
                .get_letter_document(GetLetterDocumentRequest { message_id: letter })
                .await?
                .into_inner();
            std::fs::write(&path, &document.pdf)
                .with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(
                out,
                "Wrote {} ({}, SHA-256 {})",
                path.display(),
                count(document.pdf.len(), "byte", "bytes"),
                document.sha256
            )?;
        }
    }
    Ok(())
}
