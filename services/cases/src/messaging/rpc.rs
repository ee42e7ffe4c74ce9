//! The messaging RPCs: requests checked, the messaging modules called, responses built.

use chrono::Utc;
use rollcall_api::cases::v1::{
    CompleteContactTaskRequest, CompleteContactTaskResponse, CreateLetterRequest,
    CreateLetterResponse, GetLetterDocumentRequest, GetLetterDocumentResponse,
    ListContactTasksRequest, ListContactTasksResponse, ListMessagesRequest, ListMessagesResponse,
    ListTemplatesResponse, LoadTemplateRequest, LoadTemplateResponse, MessageStatus,
    ResendMessageRequest, ResendMessageResponse, ReviewLetterRequest, ReviewLetterResponse,
    RunFirstDayContactRequest, RunFirstDayContactResponse,
};
use rollcall_api::convert::session_from_proto;
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, laestab, not_found};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::with_db;
use tonic::Status;

use crate::CASES_LOCK_KEY;
use crate::fields::{date, date_or_today, required, storage};
use crate::messaging::letters::{self, LetterRequest};
use crate::messaging::store::{self, MessageFilter};
use crate::messaging::{first_day, templates};
use crate::service::{CASE_COLUMNS, CaseRow, Cases};

impl Cases {
    pub(crate) async fn run_first_day_contact_rpc(
        &self,
        request: RunFirstDayContactRequest,
    ) -> Result<RunFirstDayContactResponse, Status> {
        let school = laestab("laestab", &request.laestab)?;
        let day = date("date", &request.date)?;
        let session = session_from_proto(request.session).ok_or_else(|| {
            invalid_argument(
                "session",
                &request.session.to_string(),
                "session must be SESSION_AM or SESSION_PM",
            )
        })?;
        self.first_day()
            .run(&school, day, session, request.catch_up)
            .await
    }

    pub(crate) async fn list_contact_tasks_rpc(
        &self,
        request: ListContactTasksRequest,
    ) -> Result<ListContactTasksResponse, Status> {
        let school = laestab("laestab", &request.laestab)?;
        let day = if request.date.trim().is_empty() {
            None
        } else {
            Some(date("date", &request.date)?)
        };
        let tasks = first_day::list_tasks(&self.db, &school, day, request.include_done).await?;
        Ok(ListContactTasksResponse { tasks })
    }

    pub(crate) async fn complete_contact_task_rpc(
        &self,
        request: CompleteContactTaskRequest,
    ) -> Result<CompleteContactTaskResponse, Status> {
        let task_id = required("task_id", &request.task_id, "the task id is required")?;
        let outcome = required(
            "outcome",
            &request.outcome,
            "say what the follow-up found, for example \"Mother called back: dentist\"",
        )?;
        let by = required(
            "completed_by",
            &request.completed_by,
            "the name of the person who followed it up is required",
        )?;
        let task = first_day::complete_task(&self.db, &task_id, &outcome, &by).await?;
        Ok(CompleteContactTaskResponse { task: Some(task) })
    }

    pub(crate) async fn list_messages_rpc(
        &self,
        request: ListMessagesRequest,
    ) -> Result<ListMessagesResponse, Status> {
        let school = if request.laestab.trim().is_empty() {
            String::new()
        } else {
            laestab("laestab", &request.laestab)?
        };
        let status = MessageStatus::try_from(request.status)
            .ok()
            .and_then(store::status_from_proto)
            .unwrap_or_default();
        let limit = if request.page_size <= 0 {
            100
        } else {
            i64::from(request.page_size.min(1_000))
        };
        let filter = MessageFilter {
            laestab: school,
            upn: request.upn.trim().to_ascii_uppercase(),
            case_id: request.case_id.trim().to_owned(),
            status: status.to_owned(),
            id: String::new(),
        };
        let messages = store::list(&self.db, &filter, limit).await?;
        Ok(ListMessagesResponse { messages })
    }

    pub(crate) async fn resend_message_rpc(
        &self,
        request: ResendMessageRequest,
    ) -> Result<ResendMessageResponse, Status> {
        let id = required(
            "message_id",
            &request.message_id,
            "the message id is required",
        )?;
        let by = required(
            "requested_by",
            &request.requested_by,
            "the name of the person who checked the message did not arrive is required",
        )?;
        let now = Utc::now();
        let changed = with_db!(&self.db, |pool| async {
            let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
            let changed = sqlx::query(
                "UPDATE messages SET status = 'queued', next_attempt_at = $1, \
                 attempt_base = attempts, last_error = $2 \
                 WHERE id = $3 AND status IN ('failed', 'unconfirmed')",
            )
            .bind(now)
            .bind(format!("resent at the request of {by}"))
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok::<_, sqlx::Error>(changed)
        }
        .await)
        .map_err(storage("resending a message"))?;
        let message = store::one(&self.db, &id)
            .await?
            .ok_or_else(|| not_found("message", &id))?;
        if changed == 0 {
            return Err(failed_precondition(format!(
                "message {id} is {}, and only a failed or unconfirmed message can be resent",
                store::status_name(message.status)
            )));
        }
        tracing::info!(message = %id, "Message queued again by staff");
        self.outbox.wake.notify_one();
        Ok(ResendMessageResponse {
            message: Some(message),
        })
    }

    pub(crate) async fn list_templates_rpc(&self) -> Result<ListTemplatesResponse, Status> {
        let templates = templates::in_use(&self.db).await?;
        Ok(ListTemplatesResponse {
            templates: templates
                .into_iter()
                .map(templates::StoredTemplate::into_proto)
                .collect(),
        })
    }

    pub(crate) async fn load_template_rpc(
        &self,
        request: LoadTemplateRequest,
    ) -> Result<LoadTemplateResponse, Status> {
        let by = required(
            "loaded_by",
            &request.loaded_by,
            "the name of the person loading the template is required",
        )?;
        let stored = templates::load(&self.db, &request.source, &by).await?;
        Ok(LoadTemplateResponse {
            template: Some(stored.into_proto()),
        })
    }

    pub(crate) async fn create_letter_rpc(
        &self,
        request: CreateLetterRequest,
    ) -> Result<CreateLetterResponse, Status> {
        let key = required(
            "request_id",
            &request.request_id,
            "an idempotency key is required, so that a retried request writes no second letter",
        )?;
        let case_id = required("case_id", &request.case_id, "the case id is required")?;
        let template = required(
            "template",
            &request.template,
            "the template name is required, for example attendance-concern-letter",
        )?;
        let by = required(
            "created_by",
            &request.created_by,
            "the name of the person writing the letter is required",
        )?;
        let letter_date = date_or_today("letter_date", &request.letter_date)?;
        if letter_date > Utc::now().date_naive() {
            return Err(invalid_argument(
                "letter_date",
                &request.letter_date,
                "a letter cannot bear a date in the future; give today or an earlier day",
            ));
        }
        let case: Option<CaseRow> = with_db!(&self.db, |pool| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {CASE_COLUMNS} FROM cases WHERE id = $1"
            )))
            .bind(&case_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(storage("reading a case"))?;
        let case = case.ok_or_else(|| not_found("case", &case_id))?;
        if case.status == "closed" {
            return Err(failed_precondition(format!(
                "case {case_id} is closed; letters are written on open cases"
            )));
        }
        let letter = LetterRequest {
            key: format!("manual:{key}"),
            case_id: case.id.clone(),
            laestab: case.laestab.clone(),
            upn: case.upn.clone(),
            stage: case.stage.clone(),
            template,
            letter_date,
            created_by: by,
            automatic: false,
        };
        let prepared = letters::prepare(&self.db, &self.registers, &self.policy, &letter).await?;
        if prepared.messages.is_empty() {
            return Err(failed_precondition(format!(
                "pupil {} has no contact with parental responsibility and a postal or email \
                 address, so no letter was written; import their contacts first",
                case.upn
            )));
        }
        letters::store(&self.db, &letter, &prepared, None).await?;
        self.outbox.wake.notify_one();
        letters::response(&self.db, &prepared).await
    }

    pub(crate) async fn review_letter_rpc(
        &self,
        request: ReviewLetterRequest,
    ) -> Result<ReviewLetterResponse, Status> {
        let id = required(
            "message_id",
            &request.message_id,
            "the letter id is required",
        )?;
        let by = required(
            "reviewed_by",
            &request.reviewed_by,
            "the name of the reviewer is required",
        )?;
        if !request.approve && request.reason.trim().is_empty() {
            return Err(invalid_argument(
                "reason",
                &request.reason,
                "a reason is required to withdraw a letter",
            ));
        }
        let letter =
            letters::review(&self.db, &id, request.approve, &by, request.reason.trim()).await?;
        if request.approve {
            self.outbox.wake.notify_one();
        }
        Ok(ReviewLetterResponse {
            letter: Some(letter),
        })
    }

    pub(crate) async fn get_letter_document_rpc(
        &self,
        request: GetLetterDocumentRequest,
    ) -> Result<GetLetterDocumentResponse, Status> {
        let id = required(
            "message_id",
            &request.message_id,
            "the letter id is required",
        )?;
        let (pdf, sha256) = letters::document(&self.db, &id).await?;
        Ok(GetLetterDocumentResponse { pdf, sha256 })
    }
}
