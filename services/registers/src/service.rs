//! The gRPC service: requests in, storage, responses out.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use rollcall_api::convert::{from_timestamp, source_from_proto};
use rollcall_api::registers::v1::registers_service_server::{
    RegistersService, RegistersServiceServer,
};
use rollcall_api::registers::v1::{
    AmendMarkRequest, AmendMarkResponse, ApplyRetentionRequest, ApplyRetentionResponse,
    ChangeUpnRequest, ChangeUpnResponse, Enrolment, GetCalendarRequest, GetCalendarResponse,
    GetPupilRequest, GetPupilResponse, GetSchoolRequest, GetSchoolResponse,
    GetSessionRegisterRequest, GetSessionRegisterResponse, ImportItemOutcome,
    ImportRegisterRequest, ImportRegisterResponse, ListAbsenceReportsRequest,
    ListAbsenceReportsResponse, ListMarkVersionsRequest, ListMarkVersionsResponse,
    ListMarksRequest, ListMarksResponse, ListMissingMarksRequest, ListMissingMarksResponse,
    ListPupilContactsRequest, ListPupilContactsResponse, ListPupilsRequest, ListPupilsResponse,
    ListSchoolsRequest, ListSchoolsResponse, ListTruancyFlagsRequest, ListTruancyFlagsResponse,
    ListUnresolvedMarksRequest, ListUnresolvedMarksResponse, ListUpnChangesRequest,
    ListUpnChangesResponse, MarkVersion, MissingMark, Pupil, RecordAbsenceReportRequest,
    RecordAbsenceReportResponse, RecordLeavingRequest, RecordLeavingResponse,
    RecordLessonCheckRequest, RecordLessonCheckResponse, School, SetCalendarRequest,
    SetCalendarResponse, SetPupilContactsRequest, SetPupilContactsResponse, UnresolvedMark,
    WatchMarksRequest, WatchMarksResponse, import_register_request::Item,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_auth::{Caller, caller};
use rollcall_domain::calendar::SchoolCalendar;
use rollcall_domain::{MarkSource, Session};
use rollcall_runtime::grpc::{
    MAX_MESSAGE_BYTES, failed_precondition, invalid_argument, laestab, not_found, storage_error,
};
use rollcall_runtime::shutdown::Stopping;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::amend::{self, Amendment};
use crate::calendar::{self, load_calendar_rows};
use crate::checks;
use crate::contacts;
use crate::convert::{
    MarkRow, optional_date, phase_from_str, registration_from_str, required_date, session,
};
use crate::import;
use crate::lessons::{self, LessonCheck};
use crate::reports::{self, NewReport, ReportRow};
use crate::roll;
use crate::store::{self, EnrolmentRow, MarkFilter, NO_EARLIER, NO_LATER, PupilRow};
use crate::upn_changes::{self, NewChange};

/// School days an N mark may wait for a reason before it is listed as unresolved.
const DEFAULT_N_SCHOOL_DAYS: u32 = 5;
/// Marks sent per WatchMarks read from storage.
const FEED_BATCH: i64 = 1_000;
/// How often a caught-up WatchMarks stream looks for versions written by another replica.
const FEED_POLL: Duration = Duration::from_secs(2);

/// The registers service.
#[derive(Debug, Clone)]
pub struct Registers {
    db: Db,
    /// Writes imports of marks alone in groups, on PostgreSQL.
    appender: Option<import::Appender>,
    feed_head: watch::Sender<i64>,
    stopping: Stopping,
    /// The maximum number of pupils and marks, together, that one import may carry.
    max_import_items: usize,
}

impl Registers {
    /// Creates the service over its storage. Change-feed streams end when `stopping` is set.
    pub async fn new(db: Db, stopping: Stopping) -> anyhow::Result<Self> {
        let head = store::feed_head(&db).await?;
        let (feed_head, _) = watch::channel(head);
        let appender = match &db {
            Db::Postgres(pool) => Some(import::Appender::start(pool)),
            Db::Sqlite(_) => None,
        };
        Ok(Self {
            db,
            appender,
            feed_head,
            stopping,
            max_import_items: rollcall_runtime::limits::DEFAULT_MAX_IMPORT_ITEMS,
        })
    }

    /// Sets the most pupils and marks, together, that one import may carry
    /// (`--max-import-items`).
    pub fn with_max_import_items(mut self, max_import_items: usize) -> Self {
        self.max_import_items = max_import_items;
        self
    }

    /// Reads a school's calendar, or fails with FAILED_PRECONDITION when it has none.
    /// Allows a caller who sees the whole trust, or one of the schools the pupil has been on
    /// roll at. Anyone else is refused in the same words whether or not the UPN is known.
    async fn check_pupil(&self, caller: &Caller, upn: &str) -> Result<(), Status> {
        caller.read_pupils([upn]);
        let Some(visible) = caller.visible_schools() else {
            return Ok(());
        };
        let enrolments = store::enrolments_of(&self.db, upn)
            .await
            .map_err(|e| storage_error("reading enrolments", e))?;
        match enrolments.iter().find(|e| visible.contains(&e.laestab)) {
            Some(enrolment) => caller.school(&enrolment.laestab),
            None => {
                tracing::warn!(subject = %caller.principal().subject, upn, "Refused a pupil of schools the caller is not granted");
                Err(Status::permission_denied(format!(
                    "UPN {upn} has not been on roll at a school granted to {}",
                    caller.principal().subject
                )))
            }
        }
    }

    /// Allows the caller when they may see the school the pupil was on roll at on `date`
    /// (`laestab`, when the request names it).
    async fn check_pupil_on(
        &self,
        caller: &Caller,
        upn: &str,
        laestab: &str,
        date: chrono::NaiveDate,
    ) -> Result<(), Status> {
        let school = store::school_on_roll(&self.db, upn, laestab, date)
            .await
            .map_err(|e| storage_error("reading enrolments", e))?;
        match school {
            Some(school) => caller.pupil(upn, &school),
            // The change itself fails with the reason; the school named, if any, is checked.
            None if !laestab.is_empty() => caller.pupil(upn, laestab),
            None => self.check_pupil(caller, upn).await,
        }
    }

    async fn calendar_of(&self, school: &str) -> Result<SchoolCalendar, Status> {
        let store_error = |error| storage_error("reading a calendar", error);
        let rows = with_db!(&self.db, |pool| {
            let mut connection = pool.acquire().await.map_err(store_error)?;
            Ok::<_, Status>(load_calendar_rows!(connection, school, store_error))
        })?;
        let rows = rows.ok_or_else(|| {
            failed_precondition(format!(
                "school {school} has no calendar; set one with rollcall calendar set"
            ))
        })?;
        calendar::from_rows(rows)
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> RegistersServiceServer<Self> {
        RegistersServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn page_size(requested: i32, default: i64, max: i64) -> i64 {
    if requested <= 0 {
        default
    } else {
        i64::from(requested).min(max)
    }
}

fn school_to_proto(row: store::SchoolRow) -> School {
    School {
        laestab: row.laestab,
        name: row.name,
        phase: phase_from_str(&row.phase),
        last_mark_date: row
            .last_mark_date
            .map(|date| date.to_string())
            .unwrap_or_default(),
    }
}

fn enrolment_to_proto(row: EnrolmentRow) -> Enrolment {
    Enrolment {
        laestab: row.laestab,
        admission_date: row.admission_date.to_string(),
        leaving_date: row.leaving_date.map(|d| d.to_string()).unwrap_or_default(),
        year_group: row.year_group,
        registration: registration_from_str(&row.registration),
        class_name: row.class_name,
        sen_provision: crate::convert::sen_from_str(&row.sen_provision),
        free_school_meals: crate::convert::fsm_from_str(&row.free_school_meals),
        leaving_reason: row.leaving_reason.unwrap_or_default(),
    }
}

fn pupil_to_proto(row: PupilRow, enrolments: Vec<EnrolmentRow>) -> Pupil {
    Pupil {
        upn: row.upn,
        forename: row.forename,
        surname: row.surname,
        date_of_birth: row.date_of_birth.to_string(),
        sex: row.sex,
        enrolments: enrolments.into_iter().map(enrolment_to_proto).collect(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchMarksResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RegistersService for Registers {
    async fn import_register(
        &self,
        request: Request<Streaming<ImportRegisterRequest>>,
    ) -> Result<Response<ImportRegisterResponse>, Status> {
        let caller = caller(&request)?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(ImportRegisterRequest {
                item: Some(Item::Header(header)),
            }) => header,
            _ => {
                return Err(invalid_argument(
                    "item",
                    "",
                    "the first message of an import must be its header",
                ));
            }
        };
        // The school is checked before the rest of the stream is read.
        let named = header
            .school
            .as_ref()
            .map(|school| school.laestab.clone())
            .unwrap_or_default();
        caller.school(&laestab("header.school.laestab", &named)?)?;
        let import = import::read_request(header, &mut stream, self.max_import_items).await.inspect_err(|status| {
            tracing::warn!(code = ?status.code(), message = status.message(), "Import rejected; nothing stored");
        })?;
        let request_id = import.request_id().to_owned();
        let school = import.laestab().to_owned();
        caller.school(&school)?;
        tracing::info!(%request_id, laestab = %school, "Import started");
        let response = match import::apply(&self.db, self.appender.as_ref(), &import).await {
            Ok(response) => response,
            Err(status) => {
                tracing::warn!(%request_id, laestab = %school, code = ?status.code(), message = status.message(), "Import rejected; nothing stored");
                return Err(status);
            }
        };
        if response.marks_recorded > 0 && !response.dry_run && !response.already_applied {
            self.feed_head.send_replace(response.feed_cursor);
            rollcall_runtime::telemetry::metrics::marks_ingested(
                &school,
                u64::try_from(response.marks_recorded).unwrap_or_default(),
            );
        }
        let rejected = response
            .items
            .iter()
            .filter(|item| item.outcome() == ImportItemOutcome::Rejected)
            .count();
        tracing::info!(
            %request_id,
            laestab = %school,
            already_applied = response.already_applied,
            pupils_added = response.pupils_added,
            marks_recorded = response.marks_recorded,
            marks_unchanged = response.marks_unchanged,
            feed_cursor = response.feed_cursor,
            rejected,
            dry_run = response.dry_run,
            "Import finished"
        );
        Ok(Response::new(response))
    }

    async fn set_calendar(
        &self,
        request: Request<SetCalendarRequest>,
    ) -> Result<Response<SetCalendarResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let message = request.calendar.unwrap_or_default();
        let school = laestab("calendar.laestab", &message.laestab)?;
        caller.school(&school)?;
        let calendar = calendar::from_proto(&message)?;
        if request.changed_by.trim().is_empty() {
            return Err(invalid_argument(
                "changed_by",
                &request.changed_by,
                "a calendar change needs the name of the person making it",
            ));
        }
        let change = calendar::replace(
            &self.db,
            &school,
            &calendar,
            request.changed_by.trim(),
            request.changed_by_position.trim(),
            source_from_proto(request.source).unwrap_or(MarkSource::Staff),
        )
        .await?;
        if change.marks_closed > 0 {
            self.feed_head.send_replace(change.feed_cursor);
        }
        tracing::info!(laestab = %school, terms = calendar.terms().len(), closures = calendar.closures().len(), marks_closed = change.marks_closed, "Calendar replaced");
        Ok(Response::new(SetCalendarResponse {
            calendar: Some(calendar::to_proto(&school, &calendar)),
            marks_closed: change.marks_closed,
            feed_cursor: change.feed_cursor,
        }))
    }

    async fn get_calendar(
        &self,
        request: Request<GetCalendarRequest>,
    ) -> Result<Response<GetCalendarResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&school)?;
        let calendar = self.calendar_of(&school).await.map_err(|status| {
            if status.code() == tonic::Code::FailedPrecondition {
                not_found("calendar of school", &school)
            } else {
                status
            }
        })?;
        Ok(Response::new(GetCalendarResponse {
            calendar: Some(calendar::to_proto(&school, &calendar)),
        }))
    }

    async fn get_school(
        &self,
        request: Request<GetSchoolRequest>,
    ) -> Result<Response<GetSchoolResponse>, Status> {
        let laestab = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&laestab)?;
        let feed_cursor = store::feed_head(&self.db)
            .await
            .map_err(|e| storage_error("reading the change feed", e))?;
        let row = store::school(&self.db, &laestab)
            .await
            .map_err(|e| storage_error("reading a school", e))?
            .ok_or_else(|| not_found("school", &laestab))?;
        Ok(Response::new(GetSchoolResponse {
            school: Some(school_to_proto(row)),
            feed_cursor,
        }))
    }

    async fn list_schools(
        &self,
        request: Request<ListSchoolsRequest>,
    ) -> Result<Response<ListSchoolsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let limit = page_size(request.page_size, 100, 1_000);
        let feed_cursor = store::feed_head(&self.db)
            .await
            .map_err(|e| storage_error("reading the change feed", e))?;
        let mut rows = store::schools_after(&self.db, &request.page_token, limit + 1)
            .await
            .map_err(|e| storage_error("listing schools", e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.laestab.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        // A caller granted some schools sees only those; the page token still moves on by
        // the last school read, so paging works the same.
        let visible = caller.visible_schools();
        Ok(Response::new(ListSchoolsResponse {
            schools: rows
                .into_iter()
                .filter(|row| visible.is_none_or(|schools| schools.contains(&row.laestab)))
                .map(school_to_proto)
                .collect(),
            next_page_token,
            feed_cursor,
        }))
    }

    async fn list_pupils(
        &self,
        request: Request<ListPupilsRequest>,
    ) -> Result<Response<ListPupilsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let laestab = laestab("laestab", &request.laestab)?;
        caller.school(&laestab)?;
        let on_roll = optional_date("on_roll_date", &request.on_roll_date)?;
        let limit = page_size(request.page_size, 500, 5_000);
        let mut rows =
            store::pupils_at(&self.db, &laestab, on_roll, &request.page_token, limit + 1)
                .await
                .map_err(|e| storage_error("listing pupils", e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|(p, _)| p.upn.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListPupilsResponse {
            pupils: rows
                .into_iter()
                .map(|(pupil, enrolment)| pupil_to_proto(pupil, vec![enrolment]))
                .collect(),
            next_page_token,
        }))
    }

    async fn get_pupil(
        &self,
        request: Request<GetPupilRequest>,
    ) -> Result<Response<GetPupilResponse>, Status> {
        let upn = request.get_ref().upn.trim().to_ascii_uppercase();
        if upn.is_empty() {
            return Err(invalid_argument("upn", "", "a UPN is required"));
        }
        self.check_pupil(&caller(&request)?, &upn).await?;
        let pupil = store::pupil(&self.db, &upn)
            .await
            .map_err(|e| storage_error("reading a pupil", e))?
            .ok_or_else(|| not_found("pupil", &upn))?;
        let enrolments = store::enrolments_of(&self.db, &upn)
            .await
            .map_err(|e| storage_error("reading enrolments", e))?;
        Ok(Response::new(GetPupilResponse {
            pupil: Some(pupil_to_proto(pupil, enrolments)),
        }))
    }

    async fn get_session_register(
        &self,
        request: Request<GetSessionRegisterRequest>,
    ) -> Result<Response<GetSessionRegisterResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        caller.school(&school)?;
        let date = required_date("date", &request.date)?;
        let session = session("session", request.session)?;
        let group = |value: &str| Some(value.trim().to_owned()).filter(|group| !group.is_empty());
        let filter = roll::RegisterFilter {
            year_group: group(&request.year_group),
            class_name: group(&request.class_name),
        };
        let entries = roll::session_register(&self.db, &school, date, session, &filter).await?;
        Ok(Response::new(GetSessionRegisterResponse { entries }))
    }

    async fn record_leaving(
        &self,
        request: Request<RecordLeavingRequest>,
    ) -> Result<Response<RecordLeavingResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        let upn = request.get_ref().upn.trim().to_ascii_uppercase();
        caller(&request)?.pupil(&upn, &school)?;
        let enrolment = roll::record_leaving(&self.db, request.get_ref()).await?;
        tracing::info!(upn = %request.get_ref().upn.trim(), laestab = %enrolment.laestab, leaving_date = %enrolment.leaving_date, "Leaving recorded");
        Ok(Response::new(RecordLeavingResponse {
            enrolment: Some(enrolment),
        }))
    }

    async fn apply_retention(
        &self,
        request: Request<ApplyRetentionRequest>,
    ) -> Result<Response<ApplyRetentionResponse>, Status> {
        caller(&request)?.trust("Applying retention")?;
        let request = request.into_inner();
        let as_of = optional_date("as_of", &request.as_of)?
            .unwrap_or_else(|| chrono::Utc::now().date_naive());
        let response = roll::apply_retention(&self.db, as_of, request.dry_run).await?;
        Ok(Response::new(response))
    }

    async fn list_marks(
        &self,
        request: Request<ListMarksRequest>,
    ) -> Result<Response<ListMarksResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let laestab = laestab("laestab", &request.laestab)?;
        caller.school(&laestab)?;
        let from = optional_date("from_date", &request.from_date)?.unwrap_or(NO_EARLIER);
        let to = optional_date("to_date", &request.to_date)?.unwrap_or(NO_LATER);
        let after = parse_mark_token(&request.page_token)?;
        let upn = request.upn.trim().to_ascii_uppercase();
        caller.read_pupils([upn.as_str()]);
        let filter = MarkFilter {
            laestab,
            upn: (!upn.is_empty()).then_some(upn),
            from,
            to,
            after,
        };
        let limit = page_size(request.page_size, 5_000, 20_000);
        let mut rows = store::effective_marks(&self.db, &filter, limit + 1)
            .await
            .map_err(|e| storage_error("listing marks", e))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|r| format!("{}|{}|{}", r.upn, r.session_date, r.session))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListMarksResponse {
            marks: rows.into_iter().map(|row| row.into_proto()).collect(),
            next_page_token,
        }))
    }

    async fn amend_mark(
        &self,
        request: Request<AmendMarkRequest>,
    ) -> Result<Response<AmendMarkResponse>, Status> {
        let amendment = Amendment::check(request.get_ref())?;
        self.check_pupil_on(
            &caller(&request)?,
            amendment.upn(),
            request.get_ref().laestab.trim(),
            amendment.date(),
        )
        .await?;
        let outcome = amend::apply(&self.db, &amendment).await?;
        if outcome.unchanged {
            tracing::info!(
                upn = amendment.upn(),
                sequence = outcome.mark.sequence,
                "Amendment matched the effective mark; nothing recorded"
            );
        } else {
            self.feed_head.send_replace(outcome.mark.sequence);
            tracing::info!(upn = amendment.upn(), laestab = %outcome.mark.laestab, sequence = outcome.mark.sequence, "Mark amended");
        }
        Ok(Response::new(AmendMarkResponse {
            mark: Some(outcome.mark.into_proto()),
            previous: outcome.previous.map(MarkRow::into_proto),
            unchanged: outcome.unchanged,
        }))
    }

    async fn record_absence_report(
        &self,
        request: Request<RecordAbsenceReportRequest>,
    ) -> Result<Response<RecordAbsenceReportResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let message = request.report.unwrap_or_default();
        let report = NewReport::check(&request.request_id, &message)?;
        self.check_pupil_on(
            &caller,
            &report.upn,
            message.laestab.trim(),
            report.first.date,
        )
        .await?;
        let (stored, created) = reports::record(&self.db, &report).await?;
        // The reporter's name and the reason stay out of the log: they are personal details.
        tracing::info!(report = %stored.id, upn = %stored.upn, laestab = %stored.laestab, created, "Absence report recorded");
        Ok(Response::new(RecordAbsenceReportResponse {
            report: Some(stored.into_proto()),
        }))
    }

    async fn list_absence_reports(
        &self,
        request: Request<ListAbsenceReportsRequest>,
    ) -> Result<Response<ListAbsenceReportsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        let upn = request.upn.trim().to_ascii_uppercase();
        caller.pupil(&upn, &school)?;
        let rows = reports::list(&self.db, &school, &upn)
            .await
            .map_err(|e| storage_error("listing absence reports", e))?;
        let (page, next_page_token) = checks::page(rows, request.page_size, &request.page_token)?;
        Ok(Response::new(ListAbsenceReportsResponse {
            reports: page.into_iter().map(ReportRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn record_lesson_check(
        &self,
        request: Request<RecordLessonCheckRequest>,
    ) -> Result<Response<RecordLessonCheckResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&school)?;
        let check = LessonCheck::check(request.get_ref())?;
        let response = lessons::record(&self.db, &check).await?;
        for flag in &response.flags {
            tracing::info!(flag = %flag.id, upn = %flag.upn, laestab = %flag.laestab, date = %flag.date, "Possible post-registration truancy flagged");
        }
        tracing::info!(check = %response.check_id, flags = response.flags.len(), already_recorded = response.already_recorded, "Lesson check recorded");
        Ok(Response::new(response))
    }

    async fn list_truancy_flags(
        &self,
        request: Request<ListTruancyFlagsRequest>,
    ) -> Result<Response<ListTruancyFlagsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        caller.school(&school)?;
        let from = optional_date("from_date", &request.from_date)?.unwrap_or(NO_EARLIER);
        let to = optional_date("to_date", &request.to_date)?.unwrap_or(NO_LATER);
        let rows = lessons::flags(&self.db, &school, from, to)
            .await
            .map_err(|e| storage_error("listing truancy flags", e))?;
        let (page, next_page_token) = checks::page(rows, request.page_size, &request.page_token)?;
        Ok(Response::new(ListTruancyFlagsResponse {
            flags: page.into_iter().map(lessons::FlagRow::into_proto).collect(),
            next_page_token,
        }))
    }

    async fn list_mark_versions(
        &self,
        request: Request<ListMarkVersionsRequest>,
    ) -> Result<Response<ListMarkVersionsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let upn = request.upn.trim().to_ascii_uppercase();
        if upn.is_empty() {
            return Err(invalid_argument("upn", &request.upn, "a UPN is required"));
        }
        let school = if request.laestab.trim().is_empty() {
            None
        } else {
            Some(laestab("laestab", &request.laestab)?)
        };
        let date = required_date("date", &request.date)?;
        let session = session("session", request.session)?;
        self.check_pupil_on(&caller, &upn, school.as_deref().unwrap_or_default(), date)
            .await?;
        let versions = store::versions(&self.db, &upn, school.as_deref(), date, session.as_str())
            .await
            .map_err(|e| storage_error("listing mark versions", e))?;
        if versions.is_empty() {
            let known = store::pupil(&self.db, &upn)
                .await
                .map_err(|e| storage_error("reading a pupil", e))?;
            if known.is_none() {
                return Err(not_found("pupil", &upn));
            }
            if let Some(school) = &school {
                let exists = store::school(&self.db, school)
                    .await
                    .map_err(|e| storage_error("reading a school", e))?;
                if exists.is_none() {
                    return Err(not_found("school", school));
                }
            }
        }
        Ok(Response::new(ListMarkVersionsResponse {
            versions: versions
                .into_iter()
                .map(|(mark, effective)| MarkVersion {
                    mark: Some(mark.into_proto()),
                    effective,
                })
                .collect(),
        }))
    }

    async fn list_missing_marks(
        &self,
        request: Request<ListMissingMarksRequest>,
    ) -> Result<Response<ListMissingMarksResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        caller.school(&school)?;
        let date = required_date("date", &request.date)?;
        let as_of = match &request.as_of {
            Some(at) => from_timestamp(at).ok_or_else(|| {
                invalid_argument("as_of", &at.seconds.to_string(), "not a valid time")
            })?,
            None => chrono::Utc::now(),
        };
        let calendar = self.calendar_of(&school).await?;
        let on_roll: Vec<String> = store::pupils_at(&self.db, &school, Some(date), "", i64::MAX)
            .await
            .map_err(|e| storage_error("listing pupils", e))?
            .into_iter()
            .map(|(pupil, _)| pupil.upn)
            .collect();
        let marked: HashSet<(String, Session)> = store::marks_on(&self.db, &school, date)
            .await
            .map_err(|e| storage_error("reading marks", e))?
            .into_iter()
            .filter_map(|row| Some((row.upn, row.session.parse::<Session>().ok()?)))
            .collect();
        let missing = checks::missing_marks(&calendar, date, as_of, &on_roll, &marked);
        let (page, next_page_token) =
            checks::page(missing, request.page_size, &request.page_token)?;
        Ok(Response::new(ListMissingMarksResponse {
            missing: page
                .into_iter()
                .map(|(upn, session)| MissingMark {
                    upn,
                    date: date.to_string(),
                    session: PbSession::from(session) as i32,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn list_unresolved_marks(
        &self,
        request: Request<ListUnresolvedMarksRequest>,
    ) -> Result<Response<ListUnresolvedMarksResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        caller.school(&school)?;
        let calendar = self.calendar_of(&school).await?;
        let as_of = match optional_date("as_of", &request.as_of)? {
            Some(date) => date,
            None => chrono::Utc::now()
                .with_timezone(&calendar.time_zone())
                .date_naive(),
        };
        if request.school_days < 0 {
            return Err(invalid_argument(
                "school_days",
                &request.school_days.to_string(),
                "the number of school days cannot be negative",
            ));
        }
        let limit = if request.school_days == 0 {
            DEFAULT_N_SCHOOL_DAYS
        } else {
            request.school_days.unsigned_abs()
        };
        let unresolved: Vec<UnresolvedMark> = store::marks_with_code(&self.db, &school, "N", as_of)
            .await
            .map_err(|e| storage_error("reading marks", e))?
            .into_iter()
            .filter_map(|row| {
                let age = checks::overdue(&calendar, row.session_date, as_of, limit)?;
                Some(UnresolvedMark {
                    mark: Some(row.into_proto()),
                    school_days_old: i32::try_from(age).unwrap_or(i32::MAX),
                })
            })
            .collect();
        let (marks, next_page_token) =
            checks::page(unresolved, request.page_size, &request.page_token)?;
        Ok(Response::new(ListUnresolvedMarksResponse {
            marks,
            next_page_token,
        }))
    }

    type WatchMarksStream = WatchStream;

    async fn set_pupil_contacts(
        &self,
        request: Request<SetPupilContactsRequest>,
    ) -> Result<Response<SetPupilContactsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        for pupil in &request.pupils {
            self.check_pupil(&caller, &pupil.upn.trim().to_ascii_uppercase())
                .await?;
        }
        let (pupils, contacts) = contacts::replace(&self.db, &request.pupils).await?;
        tracing::info!(pupils, contacts, "Pupil contacts replaced");
        Ok(Response::new(SetPupilContactsResponse { pupils, contacts }))
    }

    async fn list_pupil_contacts(
        &self,
        request: Request<ListPupilContactsRequest>,
    ) -> Result<Response<ListPupilContactsResponse>, Status> {
        let upn = request.get_ref().upn.trim().to_ascii_uppercase();
        if upn.is_empty() {
            return Err(invalid_argument("upn", "", "a UPN is required"));
        }
        self.check_pupil(&caller(&request)?, &upn).await?;
        store::pupil(&self.db, &upn)
            .await
            .map_err(|e| storage_error("reading a pupil", e))?
            .ok_or_else(|| not_found("pupil", &upn))?;
        let contacts = contacts::of_pupil(&self.db, &upn)
            .await
            .map_err(|e| storage_error("reading pupil contacts", e))?;
        Ok(Response::new(ListPupilContactsResponse {
            contacts: contacts
                .into_iter()
                .map(contacts::ContactRow::into_proto)
                .collect(),
        }))
    }

    async fn change_upn(
        &self,
        request: Request<ChangeUpnRequest>,
    ) -> Result<Response<ChangeUpnResponse>, Status> {
        let caller = caller(&request)?;
        let from = request.get_ref().from_upn.trim().to_ascii_uppercase();
        let to = request.get_ref().to_upn.trim().to_ascii_uppercase();
        self.check_pupil(&caller, &from).await?;
        // A new UPN with a history of its own is merged, so that history must be the
        // caller's to change too.
        let to_known = !store::enrolments_of(&self.db, &to)
            .await
            .map_err(|e| storage_error("reading enrolments", e))?
            .is_empty();
        if to_known {
            self.check_pupil(&caller, &to).await?;
        }
        let change = NewChange::check(request.get_ref())?;
        let response = upn_changes::apply(&self.db, &change).await?;
        let moved = response.moved.unwrap_or_default();
        tracing::info!(
            change = response.change_id,
            from_upn = change.from(),
            to_upn = change.to(),
            merged = response.merged,
            already_applied = response.already_applied,
            mark_versions = moved.mark_versions,
            enrolments = moved.enrolments,
            "UPN changed"
        );
        Ok(Response::new(response))
    }

    async fn list_upn_changes(
        &self,
        request: Request<ListUpnChangesRequest>,
    ) -> Result<Response<ListUpnChangesResponse>, Status> {
        caller(&request)?.trust("Following UPN changes")?;
        let request = request.into_inner();
        if request.after_id < 0 {
            return Err(invalid_argument(
                "after_id",
                &request.after_id.to_string(),
                "an id is 0 or the id of a change already listed",
            ));
        }
        let limit = page_size(request.limit, 100, 1_000);
        let changes = upn_changes::list(&self.db, request.after_id, limit).await?;
        Ok(Response::new(ListUpnChangesResponse {
            changes: changes
                .into_iter()
                .map(upn_changes::ChangeRow::into_proto)
                .collect(),
        }))
    }

    async fn watch_marks(
        &self,
        request: Request<WatchMarksRequest>,
    ) -> Result<Response<Self::WatchMarksStream>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = if request.laestab.trim().is_empty() {
            caller.trust("Following every school's marks")?;
            String::new()
        } else {
            let school = laestab("laestab", &request.laestab)?;
            caller.school(&school)?;
            school
        };
        if request.cursor < 0 {
            return Err(invalid_argument(
                "cursor",
                &request.cursor.to_string(),
                "a cursor is 0 or a position returned by an earlier WatchMarks message",
            ));
        }
        let db = self.db.clone();
        let mut head = self.feed_head.subscribe();
        let mut stopping = self.stopping.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(FEED_BATCH as usize);
        let mut cursor = request.cursor;
        tracing::info!(cursor, laestab = %school, "WatchMarks stream opened");
        tokio::spawn(async move {
            while !stopping.is_stopping() {
                let rows = match store::feed_after(&db, cursor, &school, FEED_BATCH).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        let status = storage_error("reading the change feed", error);
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                let caught_up = (rows.len() as i64) < FEED_BATCH;
                for row in rows {
                    cursor = row.mark.sequence;
                    let effective = row.mark.effective_when_stored;
                    let message = WatchMarksResponse {
                        mark: Some(row.mark.into_proto()),
                        effective,
                        cursor,
                        traceparent: row.traceparent.unwrap_or_default(),
                    };
                    if sender.send(Ok(message)).await.is_err() {
                        tracing::info!(cursor, "WatchMarks stream closed by the client");
                        return;
                    }
                }
                if caught_up {
                    tokio::select! {
                        changed = head.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                        () = tokio::time::sleep(FEED_POLL) => {}
                        () = sender.closed() => {
                            tracing::info!(cursor, "WatchMarks stream closed by the client");
                            return;
                        }
                        () = stopping.wait() => {}
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

fn parse_mark_token(token: &str) -> Result<(String, chrono::NaiveDate, String), Status> {
    if token.is_empty() {
        return Ok((String::new(), NO_EARLIER, String::new()));
    }
    let mut parts = token.split('|');
    let (Some(upn), Some(date), Some(session), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_argument(
            "page_token",
            token,
            "not a token returned by ListMarks; start again without one",
        ));
    };
    let date = required_date("page_token", date)?;
    Ok((upn.to_owned(), date, session.to_owned()))
}
