//! Letters on a case: written from a template, rendered to PDF, filed on the case and queued
//! for posting. A threshold letter rollcall writes by itself waits for a person's review where
//! the policy requires one (see [`rollcall_domain::letters`]).

use chrono::{NaiveDate, Utc};
use rollcall_api::cases::v1::{CreateLetterResponse, Message};
use rollcall_api::policy::v1::GetPupilAttendanceRequest;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    Contact, GetPupilRequest, GetSchoolRequest, ListMarksRequest, ListPupilContactsRequest,
    SenProvision,
};
use rollcall_documents::Document;
use rollcall_domain::letters::{LetterSubject, review_reasons};
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, not_found, upstream_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use rollcall_api::client::Channel;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use tracing::Instrument as _;

use crate::messaging::config::DeliveryConfig;
use crate::messaging::outbox::retry_delay;

use crate::CASES_LOCK_KEY;
use crate::fields::storage;
use crate::messaging::first_day::{address_for, long_date};
use crate::messaging::store::{self, NewMessage};
use crate::messaging::templates::{self, Rendered, StoredTemplate};

/// Returns a school's name from the registers.
pub(crate) async fn school_name(
    registers: &RegistersServiceClient<Channel>,
    laestab: &str,
) -> Result<String, Status> {
    let school = registers
        .clone()
        .get_school(GetSchoolRequest {
            laestab: laestab.to_owned(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .school
        .unwrap_or_default();
    Ok(school.name)
}

/// The pupil details letters print, and those the review rules need.
#[derive(Debug, Clone)]
pub(crate) struct PupilDetails {
    pub(crate) forename: String,
    pub(crate) surname: String,
    pub(crate) year_group: String,
    pub(crate) date_of_birth: Option<NaiveDate>,
    pub(crate) special_educational_needs: bool,
}

impl PupilDetails {
    /// Reads the pupil and their enrolment at the school from the registers.
    pub(crate) async fn fetch(
        registers: &RegistersServiceClient<Channel>,
        upn: &str,
        laestab: &str,
    ) -> Result<Self, Status> {
        let pupil = registers
            .clone()
            .get_pupil(GetPupilRequest {
                upn: upn.to_owned(),
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner()
            .pupil
            .unwrap_or_default();
        let enrolment = pupil
            .enrolments
            .iter()
            .find(|enrolment| enrolment.laestab == laestab)
            .cloned()
            .unwrap_or_default();
        let sen =
            SenProvision::try_from(enrolment.sen_provision).unwrap_or(SenProvision::Unspecified);
        Ok(Self {
            forename: pupil.forename,
            surname: pupil.surname,
            year_group: enrolment.year_group,
            date_of_birth: pupil.date_of_birth.parse().ok(),
            special_educational_needs: matches!(sen, SenProvision::Support | SenProvision::EhcPlan),
        })
    }

    pub(crate) fn fields(&self) -> Value {
        json!({
            "forename": self.forename,
            "surname": self.surname,
            "year_group": self.year_group,
        })
    }
}

/// Renders a letter as an A4 PDF: the school, the date, the recipient's address, the subject
/// and the body, one paragraph per blank-line-separated block.
pub(crate) fn render_pdf(
    school: &str,
    address: &str,
    recipient: &str,
    date: &str,
    rendered: &Rendered,
) -> Vec<u8> {
    let mut document = Document::new(rendered.subject.clone());
    document.created_at(Utc::now());
    // The school's name is a heading with the date under it, apart from the recipient's
    // address, so that a window envelope shows only the address.
    document.heading(school);
    document.paragraph(date);
    let mut lines = vec![recipient.to_owned()];
    lines.extend(address.lines().map(str::to_owned));
    document.address_block(lines);
    document.subheading(rendered.subject.clone());
    for block in rendered.body.split("\n\n") {
        let block = block.trim();
        if !block.is_empty() {
            document.paragraph(block);
        }
    }
    document.to_pdf()
}

/// Returns the channel a letter goes out on: post when the contact has a postal address, otherwise
/// email with the PDF attached, otherwise none.
fn letter_channel(contact: &Contact) -> Option<&'static str> {
    if !contact.address_lines.is_empty() && !contact.postcode.is_empty() {
        Some("letter")
    } else if !contact.email.is_empty() {
        Some("email")
    } else {
        None
    }
}

/// A request for a letter: its case, template and author.
#[derive(Debug, Clone)]
pub(crate) struct LetterRequest {
    /// Makes the letter's messages unique: a second request with the same key writes nothing.
    pub(crate) key: String,
    pub(crate) case_id: String,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) stage: String,
    pub(crate) template: String,
    pub(crate) letter_date: NaiveDate,
    pub(crate) created_by: String,
    /// True for a threshold letter rollcall writes by itself, which the review rules apply to.
    pub(crate) automatic: bool,
}

/// Letters written, ready to store.
#[derive(Debug, Clone, Default)]
pub(crate) struct PreparedLetters {
    pub(crate) messages: Vec<NewMessage>,
    pub(crate) not_addressed: Vec<String>,
    pub(crate) review_reasons: Vec<String>,
}

/// Writes the letters for a request: one per contact with parental responsibility.
pub(crate) async fn prepare(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    policy: &PolicyServiceClient<Channel>,
    request: &LetterRequest,
) -> Result<PreparedLetters, Status> {
    let template: StoredTemplate = templates::named(db, "template", &request.template).await?;
    if template.file.purpose != "letter" {
        return Err(invalid_argument(
            "template",
            &request.template,
            format!(
                "template {} is for {}, not for letters on a case",
                template.file.name, template.file.purpose
            ),
        ));
    }
    // The contacts come first, because without a contact to write to nothing else is needed.
    let contacts = registers
        .clone()
        .list_pupil_contacts(ListPupilContactsRequest {
            upn: request.upn.clone(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .contacts;
    let addressable = contacts
        .iter()
        .any(|c| c.parental_responsibility && letter_channel(c).is_some());
    if !addressable {
        return Err(failed_precondition(format!(
            "pupil {} has no contact with parental responsibility and a postal or email \
             address, so no letter was written; import their contacts, then write the letter",
            request.upn
        )));
    }
    let school = registers
        .clone()
        .get_school(GetSchoolRequest {
            laestab: request.laestab.clone(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .school
        .unwrap_or_default();
    // Figures run to the letter's date, or to the last date with marks when that is earlier,
    // so that a letter written after the last register never counts an empty period.
    let as_of = match school.last_mark_date.parse::<NaiveDate>() {
        Ok(last) if last < request.letter_date => last,
        _ => request.letter_date,
    };
    let pupil = PupilDetails::fetch(registers, &request.upn, &request.laestab).await?;
    let attendance = policy
        .clone()
        .get_pupil_attendance(GetPupilAttendanceRequest {
            upn: request.upn.clone(),
            laestab: request.laestab.clone(),
            as_of: as_of.to_string(),
        })
        .await
        .map_err(|status| upstream_error("policy", status))?
        .into_inner();
    let period = attendance.period.unwrap_or_default();
    let figures = attendance
        .attendance
        .and_then(|a| a.figures)
        .unwrap_or_default();
    if figures.possible_sessions == 0 {
        return Err(failed_precondition(format!(
            "pupil {} has no possible sessions in the school year up to {as_of}, so the \
             letter would state no attendance; write it once registers have been taken",
            request.upn
        )));
    }
    let school = school.name;
    let illness_sessions = if request.automatic {
        illness_sessions(registers, request, &period.from_date, &period.to_date).await?
    } else {
        0
    };
    let reasons: Vec<String> = if request.automatic {
        review_reasons(
            &LetterSubject {
                date_of_birth: pupil.date_of_birth,
                special_educational_needs: pupil.special_educational_needs,
                illness_sessions,
            },
            request.letter_date,
        )
        .iter()
        .map(|reason| reason.describe())
        .collect()
    } else {
        Vec::new()
    };
    let missed = figures.authorised_absence_sessions + figures.unauthorised_absence_sessions;
    let as_of = period
        .to_date
        .parse::<NaiveDate>()
        .map_or(period.to_date.clone(), long_date);
    let mut prepared = PreparedLetters {
        review_reasons: reasons.clone(),
        ..PreparedLetters::default()
    };
    for contact in contacts.iter().filter(|c| c.parental_responsibility) {
        let Some(channel) = letter_channel(contact) else {
            prepared.not_addressed.push(contact.name.clone());
            continue;
        };
        let fields = json!({
            "school": {"name": school, "laestab": request.laestab},
            "pupil": pupil.fields(),
            "recipient": {"name": contact.name},
            "today": long_date(Utc::now().date_naive()),
            "attendance": {
                "percent": figures.attendance_percent.map_or("0.0".to_owned(), |p| format!("{p:.1}")),
                "sessions_possible": figures.possible_sessions,
                "sessions_missed": missed,
                "unauthorised_sessions": figures.unauthorised_absence_sessions,
                "as_of": as_of,
            },
            "case": {"id": request.case_id, "stage": request.stage},
            "letter": {"date": long_date(request.letter_date)},
        });
        let rendered = templates::render(&template.file, &fields).map_err(|error| {
            failed_precondition(format!(
                "template {} cannot be rendered: {error}",
                template.file.name
            ))
        })?;
        let postal = address_for(contact, "letter");
        let pdf = render_pdf(
            &school,
            if channel == "letter" { &postal } else { "" },
            &contact.name,
            &long_date(request.letter_date),
            &rendered,
        );
        prepared.messages.push(NewMessage {
            dedupe_key: format!("letter:{}:{}", request.key, contact.priority),
            laestab: request.laestab.clone(),
            upn: request.upn.clone(),
            case_id: Some(request.case_id.clone()),
            task_id: None,
            purpose: "letter",
            channel: channel.to_owned(),
            recipient_priority: contact.priority,
            recipient_name: contact.name.clone(),
            recipient_address: address_for(contact, channel),
            template: template.file.name.clone(),
            template_version: template.version,
            subject: rendered.subject,
            body: rendered.body,
            document: Some(pdf),
            status: if reasons.is_empty() {
                "queued"
            } else {
                "awaiting_review"
            },
            review_reasons: reasons.clone(),
            created_by: request.created_by.clone(),
        });
    }
    Ok(prepared)
}

/// Counts the sessions of authorised illness (code I) in the period.
async fn illness_sessions(
    registers: &RegistersServiceClient<Channel>,
    request: &LetterRequest,
    from: &str,
    to: &str,
) -> Result<u32, Status> {
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let page = registers
            .clone()
            .list_marks(ListMarksRequest {
                laestab: request.laestab.clone(),
                upn: request.upn.clone(),
                from_date: from.to_owned(),
                to_date: to.to_owned(),
                page_size: 0,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        count += page.marks.iter().filter(|mark| mark.code == "I").count() as u32;
        if page.next_page_token.is_empty() {
            return Ok(count);
        }
        page_token = page.next_page_token;
    }
}

/// Stores prepared letters and a case event in one transaction. Returns the ids of the new
/// messages; letters already written under the same key are left as they are.
pub(crate) async fn store(
    db: &Db,
    request: &LetterRequest,
    prepared: &PreparedLetters,
    job: Option<&str>,
) -> Result<Vec<String>, Status> {
    let now = Utc::now();
    let held = !prepared.review_reasons.is_empty();
    let detail = format!(
        "Letter {} written to {} contact{}{}",
        request.template,
        prepared.messages.len(),
        if prepared.messages.len() == 1 {
            ""
        } else {
            "s"
        },
        if held {
            format!(
                "; held for review because {}",
                prepared.review_reasons.join("; ")
            )
        } else {
            String::new()
        }
    );
    let ids = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let mut ids = Vec::new();
        for message in &prepared.messages {
            if let Some(id) = store::insert(&mut tx, message, now).await? {
                ids.push(id);
            }
        }
        if !ids.is_empty() {
            sqlx::query(
                "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, \
                 stage, reason, on_date) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, 'letter_written', $2, $3, $4, $5, $6, $7 \
                 FROM case_events",
            )
            .bind(&request.case_id)
            .bind(&detail)
            .bind(&request.created_by)
            .bind(now)
            .bind(&request.stage)
            .bind(ids.join(", "))
            .bind(request.letter_date)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(job) = job {
            sqlx::query("UPDATE letter_jobs SET status = 'done', last_error = '' WHERE id = $1")
                .bind(job)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(ids)
    }
    .await)
    .map_err(storage("storing letters"))?;
    tracing::info!(
        case = %request.case_id,
        template = %request.template,
        letters = ids.len(),
        held,
        "Letters written"
    );
    Ok(ids)
}

/// Returns the letters a request wrote, for the response.
pub(crate) async fn response(
    db: &Db,
    prepared: &PreparedLetters,
) -> Result<CreateLetterResponse, Status> {
    let mut letters: Vec<Message> = Vec::new();
    for message in &prepared.messages {
        let id: Option<(String,)> = with_db!(db, |pool| {
            sqlx::query_as("SELECT id FROM messages WHERE dedupe_key = $1")
                .bind(&message.dedupe_key)
                .fetch_optional(pool)
                .await
        })
        .map_err(storage("reading letters"))?;
        if let Some((id,)) = id
            && let Some(letter) = store::one(db, &id).await?
        {
            letters.push(letter);
        }
    }
    Ok(CreateLetterResponse {
        letters,
        not_addressed: prepared.not_addressed.clone(),
    })
}

/// Approves or withdraws a letter waiting for review.
pub(crate) async fn review(
    db: &Db,
    message_id: &str,
    approve: bool,
    reviewed_by: &str,
    reason: &str,
) -> Result<Message, Status> {
    let now = Utc::now();
    let current = store::one(db, message_id)
        .await?
        .ok_or_else(|| not_found("letter", message_id))?;
    if current.purpose != "letter" {
        return Err(invalid_argument(
            "message_id",
            message_id,
            "this message is not a letter; only letters wait for review",
        ));
    }
    if current.status != rollcall_api::cases::v1::MessageStatus::AwaitingReview as i32 {
        return Err(failed_precondition(format!(
            "letter {message_id} is not waiting for review (it is {}); nothing was changed",
            store::status_name(current.status)
        )));
    }
    let new_status = if approve { "queued" } else { "withdrawn" };
    let event = if approve {
        "letter_approved"
    } else {
        "letter_withdrawn"
    };
    let detail = if approve {
        format!("Letter {message_id} approved for sending")
    } else {
        format!("Letter {message_id} withdrawn")
    };
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let changed = sqlx::query(
            "UPDATE messages SET status = $1, reviewed_by = $2, reviewed_at = $3, \
             next_attempt_at = $3 WHERE id = $4 AND status = 'awaiting_review'",
        )
        .bind(new_status)
        .bind(reviewed_by)
        .bind(now)
        .bind(message_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 1 {
            sqlx::query(
                "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, \
                 stage, reason, on_date) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, \
                 (SELECT stage FROM cases WHERE id = $1), $6, $7 FROM case_events",
            )
            .bind(&current.case_id)
            .bind(event)
            .bind(&detail)
            .bind(reviewed_by)
            .bind(now)
            .bind(reason)
            .bind(now.date_naive())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
    .await)
    .map_err(storage("reviewing a letter"))?;
    tracing::info!(message = %message_id, approved = approve, "Letter reviewed");
    store::one(db, message_id)
        .await?
        .ok_or_else(|| not_found("letter", message_id))
}

/// Returns a letter's PDF and its SHA-256.
pub(crate) async fn document(db: &Db, message_id: &str) -> Result<(Vec<u8>, String), Status> {
    let row: Option<(Option<Vec<u8>>,)> = with_db!(db, |pool| {
        sqlx::query_as("SELECT document FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_optional(pool)
            .await
    })
    .map_err(storage("reading a letter"))?;
    let Some((document,)) = row else {
        return Err(not_found("letter", message_id));
    };
    let pdf = document.ok_or_else(|| {
        failed_precondition(format!(
            "message {message_id} is not a letter and has no PDF"
        ))
    })?;
    let sha256 = hex::encode(Sha256::digest(&pdf));
    Ok((pdf, sha256))
}

/// A threshold letter a trigger asked for, with its case.
#[derive(Debug, sqlx::FromRow)]
struct LetterJob {
    id: String,
    case_id: String,
    template: String,
    letter_date: NaiveDate,
    attempts: i32,
    laestab: String,
    upn: String,
    stage: String,
    case_status: String,
    /// The W3C traceparent of the work that asked for the letter, when spans were exported.
    traceparent: Option<String>,
}

/// Writes the threshold letters that triggers asked for. It runs apart from the trigger
/// follower because writing a letter reads the pupil, contacts and figures from the other
/// services, and a slow or failing letter must not hold up the cases.
#[derive(Debug, Clone)]
pub(crate) struct LetterWorker {
    pub(crate) db: Db,
    pub(crate) registers: RegistersServiceClient<Channel>,
    pub(crate) policy: PolicyServiceClient<Channel>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) outbox_wake: Arc<Notify>,
    pub(crate) delivery: DeliveryConfig,
}

impl LetterWorker {
    /// Starts writing letters as jobs arrive, and retries failed ones as they come due.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::info!("Letter worker started");
            loop {
                if let Err(error) = self.run_once().await {
                    tracing::warn!(%error, "Letter worker failed; retrying at the next poll");
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.delivery.poll()) => {}
                }
            }
        })
    }

    async fn next_job(&self) -> Result<Option<LetterJob>, sqlx::Error> {
        let now = Utc::now();
        with_db!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT j.id, j.case_id, j.template, j.letter_date, j.attempts, c.laestab, c.upn, \
                 c.stage, c.status AS case_status, j.traceparent FROM letter_jobs j \
                 JOIN cases c ON c.id = j.case_id \
                 WHERE j.status = 'pending' AND j.next_attempt_at <= $1 \
                 ORDER BY j.next_attempt_at, j.id LIMIT 1",
            )
            .bind(now)
            .fetch_optional(pool)
            .await
        })
    }

    /// Writes every letter that is due.
    pub(crate) async fn run_once(&self) -> anyhow::Result<()> {
        while let Some(job) = self.next_job().await? {
            let span = rollcall_runtime::telemetry::background_span(
                "cases.write_letter",
                job.traceparent.as_deref(),
            );
            rollcall_runtime::telemetry::set_attribute(&span, "rollcall.case_id", &job.case_id);
            self.write(job).instrument(span).await?;
        }
        Ok(())
    }

    /// Writes one letter, or schedules its retry, or gives it up.
    async fn write(&self, job: LetterJob) -> anyhow::Result<()> {
        if job.case_status == "closed" {
            self.give_up(&job, "the case was closed before the letter was written")
                .await?;
            return Ok(());
        }
        let request = LetterRequest {
            key: job.id.clone(),
            case_id: job.case_id.clone(),
            laestab: job.laestab.clone(),
            upn: job.upn.clone(),
            stage: job.stage.clone(),
            template: job.template.clone(),
            letter_date: job.letter_date,
            created_by: "rollcall".to_owned(),
            automatic: true,
        };
        match prepare(&self.db, &self.registers, &self.policy, &request).await {
            Ok(prepared) => {
                store(&self.db, &request, &prepared, Some(&job.id)).await?;
                self.outbox_wake.notify_one();
            }
            Err(status) if is_transient(status.code()) => {
                let attempt = job.attempts + 1;
                if attempt as u32 >= self.delivery.max_attempts {
                    self.give_up(&job, status.message()).await?;
                    return Ok(());
                }
                let delay = retry_delay(&self.delivery, attempt as u32);
                tracing::warn!(job = %job.id, case = %job.case_id, attempt, error = %status.message(), "Letter not written; retrying");
                let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                with_db!(&self.db, |pool| {
                    sqlx::query(
                        "UPDATE letter_jobs SET attempts = $1, next_attempt_at = $2, \
                         last_error = $3 WHERE id = $4",
                    )
                    .bind(attempt)
                    .bind(due)
                    .bind(status.message())
                    .bind(&job.id)
                    .execute(pool)
                    .await
                    .map(|_| ())
                })?;
            }
            Err(status) => self.give_up(&job, status.message()).await?,
        }
        Ok(())
    }

    /// Marks a job failed and records on the case why no letter was written, so that staff
    /// can write it by hand.
    async fn give_up(&self, job: &LetterJob, reason: &str) -> Result<(), sqlx::Error> {
        tracing::warn!(job = %job.id, case = %job.case_id, error = %reason, "Automatic letter not written");
        let now = Utc::now();
        let detail = format!(
            "Letter {} was not written by rollcall: {reason}; write it by hand if it is still needed",
            job.template
        );
        with_db!(&self.db, |pool| async {
            let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
            sqlx::query("UPDATE letter_jobs SET status = 'failed', last_error = $1 WHERE id = $2")
                .bind(reason)
                .bind(&job.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO case_events (id, case_id, event, detail, recorded_by, recorded_at, \
                 stage, reason, on_date) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, 'letter_not_written', $2, 'rollcall', $3, \
                 $4, $5, $6 FROM case_events",
            )
            .bind(&job.case_id)
            .bind(&detail)
            .bind(now)
            .bind(&job.stage)
            .bind(&job.id)
            .bind(job.letter_date)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        .await)
    }
}

/// True for gRPC errors worth retrying: the other service was unreachable or busy.
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted
    )
}
