//! First-day response to absence: after a register closes, every pupil marked N (no reason
//! yet) gets a contact task for the office, and each contact with parental responsibility gets
//! a message on their preferred channel. Parents who already reported the absence are left
//! alone.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use rollcall_api::cases::v1::{ContactTask, RunFirstDayContactResponse};
use rollcall_api::client::Channel;
use rollcall_api::convert::{session_from_proto, timestamp};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    AbsenceReport, Calendar, Contact, ContactChannel, GetCalendarRequest,
    GetSessionRegisterRequest, ListAbsenceReportsRequest, ListPupilContactsRequest,
    ListSchoolsRequest,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_domain::{Session, SessionDate};
use rollcall_runtime::grpc::{failed_precondition, upstream_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::{Code, Status};
use tracing::Instrument as _;

use crate::CASES_LOCK_KEY;
use crate::fields::storage;
use crate::messaging::letters::{self, PupilDetails};
use crate::messaging::store::{self, NewMessage};
use crate::messaging::templates::{self, StoredTemplate};

/// "morning" or "afternoon", as parents read it.
fn session_words(session: Session) -> &'static str {
    match session {
        Session::Am => "morning",
        Session::Pm => "afternoon",
    }
}

/// Formats a date as letters write it, for example "Monday 3 November 2025".
pub(crate) fn long_date(date: NaiveDate) -> String {
    date.format("%A %-d %B %Y").to_string()
}

fn reported(reports: &[AbsenceReport], at: SessionDate) -> bool {
    reports.iter().any(|report| {
        let session = |value: i32| session_from_proto(value).unwrap_or(Session::Am);
        let (Ok(first), Ok(last)) = (
            report.first_date.parse::<NaiveDate>(),
            report.last_date.parse::<NaiveDate>(),
        ) else {
            return false;
        };
        let first = SessionDate {
            date: first,
            session: session(report.first_session),
        };
        let last = SessionDate {
            date: last,
            session: session(report.last_session),
        };
        first <= at && at <= last
    })
}

/// Returns the channel a message to this contact uses.
fn channel_of(contact: &Contact) -> &'static str {
    match ContactChannel::try_from(contact.preferred_channel).unwrap_or(ContactChannel::Unspecified)
    {
        ContactChannel::Email => "email",
        ContactChannel::Letter => "letter",
        ContactChannel::Sms | ContactChannel::Unspecified => "sms",
    }
}

/// Returns the contact's address on a channel.
pub(crate) fn address_for(contact: &Contact, channel: &str) -> String {
    match channel {
        "email" => contact.email.clone(),
        "sms" => contact.mobile.clone(),
        _ => {
            let mut lines = contact.address_lines.clone();
            lines.push(contact.postcode.clone());
            lines.join("\n")
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct TaskRow {
    id: String,
    laestab: String,
    upn: String,
    absence_date: NaiveDate,
    session: String,
    status: String,
    outcome: String,
    completed_by: String,
    created_at: DateTime<Utc>,
    messages: i64,
}

impl TaskRow {
    fn into_proto(self) -> ContactTask {
        let session = self
            .session
            .parse::<Session>()
            .map_or(PbSession::Unspecified, PbSession::from);
        ContactTask {
            id: self.id,
            laestab: self.laestab,
            upn: self.upn,
            absence_date: self.absence_date.to_string(),
            session: session as i32,
            status: self.status,
            outcome: self.outcome,
            completed_by: self.completed_by,
            created_at: Some(timestamp(self.created_at)),
            messages: self.messages as i32,
        }
    }
}

const TASK_COLUMNS: &str = "t.id, t.laestab, t.upn, t.absence_date, t.session, t.status, \
     t.outcome, t.completed_by, t.created_at, \
     (SELECT COUNT(*) FROM messages m WHERE m.task_id = t.id) AS messages";

/// Lists a school's contact tasks, open ones first.
pub(crate) async fn list_tasks(
    db: &Db,
    laestab: &str,
    date: Option<NaiveDate>,
    include_done: bool,
) -> Result<Vec<ContactTask>, Status> {
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM contact_tasks t WHERE t.laestab = $1 \
         AND ($2 OR t.absence_date = $3) AND ($4 OR t.status = 'open') \
         ORDER BY t.status DESC, t.absence_date, t.upn"
    );
    let rows: Vec<TaskRow> = with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(laestab)
            .bind(date.is_none())
            .bind(date.unwrap_or_default())
            .bind(include_done)
            .fetch_all(pool)
            .await
    })
    .map_err(storage("listing contact tasks"))?;
    Ok(rows.into_iter().map(TaskRow::into_proto).collect())
}

/// Closes a task with its outcome.
pub(crate) async fn complete_task(
    db: &Db,
    task_id: &str,
    outcome: &str,
    completed_by: &str,
) -> Result<ContactTask, Status> {
    let now = Utc::now();
    let sql = format!("SELECT {TASK_COLUMNS} FROM contact_tasks t WHERE t.id = $1");
    let row: Option<TaskRow> = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let current: Option<TaskRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
        if current.as_ref().is_some_and(|task| task.status == "open") {
            sqlx::query(
                "UPDATE contact_tasks SET status = 'done', outcome = $1, completed_by = $2, \
                 completed_at = $3 WHERE id = $4",
            )
            .bind(outcome)
            .bind(completed_by)
            .bind(now)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        }
        let after: Option<TaskRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(after)
    }
    .await)
    .map_err(storage("completing a contact task"))?;
    let row = row.ok_or_else(|| rollcall_runtime::grpc::not_found("contact task", task_id))?;
    // A repeat of the same request returns the task. Any other request would overwrite what
    // the first person recorded, so it is rejected.
    if row.completed_by != completed_by || row.outcome != outcome {
        return Err(failed_precondition(format!(
            "contact task {task_id} was already completed by {}: {}; nothing was changed",
            row.completed_by, row.outcome
        )));
    }
    tracing::info!(task = %task_id, "Contact task completed");
    Ok(row.into_proto())
}

/// Everything first-day contact needs from other services and settings.
#[derive(Debug, Clone)]
pub(crate) struct FirstDay {
    pub(crate) db: Db,
    pub(crate) registers: RegistersServiceClient<Channel>,
    pub(crate) wake: Arc<Notify>,
}

/// Returns the time a register closes on a date, in UTC.
fn closes_at(calendar: &Calendar, date: NaiveDate, session: Session) -> Option<DateTime<Utc>> {
    let times = match session {
        Session::Am => calendar.am.as_ref()?,
        Session::Pm => calendar.pm.as_ref()?,
    };
    let time = NaiveTime::parse_from_str(&times.closes, "%H:%M").ok()?;
    let zone: Tz = calendar.time_zone.parse().ok()?;
    date.and_time(time)
        .and_local_timezone(zone)
        .earliest()
        .map(|local| local.with_timezone(&Utc))
}

impl FirstDay {
    async fn calendar(&self, laestab: &str) -> Result<Option<Calendar>, Status> {
        match self
            .registers
            .clone()
            .get_calendar(GetCalendarRequest {
                laestab: laestab.to_owned(),
            })
            .await
        {
            Ok(response) => Ok(response.into_inner().calendar),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(upstream_error("registers", status)),
        }
    }

    /// Runs first-day contact for one session.
    pub(crate) async fn run(
        &self,
        laestab: &str,
        date: NaiveDate,
        session: Session,
        catch_up: bool,
    ) -> Result<RunFirstDayContactResponse, Status> {
        let calendar = self.calendar(laestab).await?;
        let zone: Tz = calendar
            .as_ref()
            .and_then(|calendar| calendar.time_zone.parse().ok())
            .unwrap_or(chrono_tz::Europe::London);
        let today = Utc::now().with_timezone(&zone).date_naive();
        if date > today {
            return Err(failed_precondition(format!(
                "{date} is after today ({today}) at school {laestab}; first-day contact runs \
                 once the register has closed"
            )));
        }
        if date < today && !catch_up {
            return Err(failed_precondition(format!(
                "{date} is before today ({today}) at school {laestab}; to contact parents \
                 about an earlier day, for example after an outage, run it as a catch-up"
            )));
        }
        if let Some(calendar) = &calendar {
            if !is_school_day(calendar, date) || is_session_closed(calendar, date, session) {
                return Err(failed_precondition(format!(
                    "{date} {} is not a school session at school {laestab} (a weekend, a \
                     holiday or a closure in its calendar), so there is no register to follow up",
                    session.as_str()
                )));
            }
            if let Some(closes) = closes_at(calendar, date, session)
                && Utc::now() < closes
            {
                return Err(failed_precondition(format!(
                    "the {} register at school {laestab} on {date} closes at {} ({}); run \
                     first-day contact once it has closed",
                    session.as_str(),
                    closes.with_timezone(&zone).format("%H:%M"),
                    zone.name()
                )));
            }
        }
        let entries = self
            .registers
            .clone()
            .get_session_register(GetSessionRegisterRequest {
                laestab: laestab.to_owned(),
                date: date.to_string(),
                session: PbSession::from(session) as i32,
                ..GetSessionRegisterRequest::default()
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner()
            .entries;
        let unexplained: Vec<_> = entries
            .into_iter()
            .filter(|entry| entry.mark.as_ref().is_some_and(|mark| mark.code == "N"))
            .collect();
        let school = letters::school_name(&self.registers, laestab).await?;
        let templates = templates::in_use(&self.db).await?;
        let at = SessionDate { date, session };

        let mut response = RunFirstDayContactResponse {
            unexplained: unexplained.len() as i32,
            ..RunFirstDayContactResponse::default()
        };
        for entry in unexplained {
            let reports = self
                .registers
                .clone()
                .list_absence_reports(ListAbsenceReportsRequest {
                    laestab: laestab.to_owned(),
                    upn: entry.upn.clone(),
                    page_size: 50,
                    page_token: String::new(),
                })
                .await
                .map_err(|status| upstream_error("registers", status))?
                .into_inner()
                .reports;
            if reported(&reports, at) {
                response.already_reported += 1;
                continue;
            }
            let pupil = PupilDetails::fetch(&self.registers, &entry.upn, laestab).await?;
            let contacts = self
                .registers
                .clone()
                .list_pupil_contacts(ListPupilContactsRequest {
                    upn: entry.upn.clone(),
                })
                .await
                .map_err(|status| upstream_error("registers", status))?
                .into_inner()
                .contacts;
            let mut messages = Vec::new();
            for contact in contacts.iter().filter(|c| c.parental_responsibility) {
                let channel = channel_of(contact);
                let template = find(&templates, &format!("first-day-{channel}"))?;
                let fields = json!({
                    "school": {"name": school, "laestab": laestab},
                    "pupil": pupil.fields(),
                    "recipient": {"name": contact.name},
                    "today": long_date(Utc::now().date_naive()),
                    "absence": {"date": long_date(date), "session": session_words(session)},
                });
                let rendered = templates::render(&template.file, &fields).map_err(|error| {
                    failed_precondition(format!(
                        "template {} cannot be rendered: {error}",
                        template.file.name
                    ))
                })?;
                let document = (channel == "letter").then(|| {
                    letters::render_pdf(
                        &school,
                        &address_for(contact, "letter"),
                        &contact.name,
                        &long_date(Utc::now().date_naive()),
                        &rendered,
                    )
                });
                messages.push(NewMessage {
                    dedupe_key: format!(
                        "first-day:{}:{date}:{}:{channel}",
                        entry.upn, contact.priority
                    ),
                    laestab: laestab.to_owned(),
                    upn: entry.upn.clone(),
                    case_id: None,
                    task_id: None,
                    purpose: "first_day",
                    channel: channel.to_owned(),
                    recipient_priority: contact.priority,
                    recipient_name: contact.name.clone(),
                    recipient_address: address_for(contact, channel),
                    template: template.file.name.clone(),
                    template_version: template.version,
                    subject: rendered.subject,
                    body: rendered.body,
                    document,
                    status: "queued",
                    review_reasons: Vec::new(),
                    created_by: "rollcall".to_owned(),
                });
            }
            if messages.is_empty() {
                response.without_contacts.push(entry.upn.clone());
            }
            let (task_created, queued) =
                store_task(&self.db, laestab, &entry.upn, at, &mut messages).await?;
            response.tasks_created += i32::from(task_created);
            response.messages_queued += queued;
        }
        mark_swept(&self.db, laestab, at).await?;
        if response.messages_queued > 0 {
            self.wake.notify_one();
        }
        tracing::info!(
            laestab,
            %date,
            session = session.as_str(),
            unexplained = response.unexplained,
            tasks = response.tasks_created,
            messages = response.messages_queued,
            "First-day contact run"
        );
        Ok(response)
    }

    /// Starts the automatic runs: a minute after each check, every school whose register has
    /// closed today (in its own time zone), plus the configured delay, and has not been swept.
    pub(crate) fn spawn_automatic(self, minutes_after_close: u32) -> JoinHandle<()> {
        tokio::spawn(async move {
            tracing::info!(minutes_after_close, "Automatic first-day contact started");
            loop {
                if let Err(error) = self.sweep_due(minutes_after_close).await {
                    tracing::warn!(%error, "Automatic first-day contact failed; retrying in a minute");
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
    }

    async fn sweep_due(&self, minutes_after_close: u32) -> Result<(), Status> {
        let now = Utc::now();
        let mut page_token = String::new();
        loop {
            let page = self
                .registers
                .clone()
                .list_schools(ListSchoolsRequest {
                    page_size: 100,
                    page_token: page_token.clone(),
                })
                .await
                .map_err(|status| upstream_error("registers", status))?
                .into_inner();
            for school in page.schools {
                let Some(calendar) = self.calendar(&school.laestab).await? else {
                    continue;
                };
                for at in due_sessions(&calendar, now, minutes_after_close) {
                    if !swept(&self.db, &school.laestab, at).await? {
                        // Each school's session is a trace of its own, which the messages it
                        // queues join.
                        let span = rollcall_runtime::telemetry::background_span(
                            "cases.first_day_contact",
                            None,
                        );
                        rollcall_runtime::telemetry::set_attribute(
                            &span,
                            rollcall_runtime::telemetry::metrics::SCHOOL_ATTRIBUTE,
                            &school.laestab,
                        );
                        self.run(&school.laestab, at.date, at.session, false)
                            .instrument(span)
                            .await?;
                    }
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(());
            }
            page_token = page.next_page_token;
        }
    }
}

/// Returns the sessions of the school's day, as of `now`, whose register closed at least
/// `minutes_after_close` minutes ago. Days that are not school days have none.
fn due_sessions(
    calendar: &Calendar,
    now: DateTime<Utc>,
    minutes_after_close: u32,
) -> Vec<SessionDate> {
    let Ok(zone) = calendar.time_zone.parse::<Tz>() else {
        return Vec::new();
    };
    let today = now.with_timezone(&zone).date_naive();
    if !is_school_day(calendar, today) {
        return Vec::new();
    }
    [Session::Am, Session::Pm]
        .into_iter()
        .filter(|session| !is_session_closed(calendar, today, *session))
        .filter(|session| {
            closes_at(calendar, today, *session).is_some_and(|closes| {
                now >= closes + chrono::Duration::minutes(i64::from(minutes_after_close))
            })
        })
        .map(|session| SessionDate {
            date: today,
            session,
        })
        .collect()
}

/// True when the calendar closes the school for this one session.
fn is_session_closed(calendar: &Calendar, date: NaiveDate, session: Session) -> bool {
    calendar.closures.iter().any(|closure| {
        closure.date == date.to_string() && closure.session == PbSession::from(session) as i32
    })
}

fn find(templates: &[StoredTemplate], name: &str) -> Result<StoredTemplate, Status> {
    templates
        .iter()
        .find(|t| t.file.name == name)
        .cloned()
        .ok_or_else(|| failed_precondition(format!("template {name} is missing")))
}

/// True when the calendar has `date` in a term, on a weekday, and not closed all day.
fn is_school_day(calendar: &Calendar, date: NaiveDate) -> bool {
    use chrono::Datelike;
    let weekday = date.weekday().number_from_monday() <= 5;
    let in_term = calendar.terms.iter().any(|term| {
        matches!(
            (term.first_day.parse::<NaiveDate>(), term.last_day.parse::<NaiveDate>()),
            (Ok(first), Ok(last)) if first <= date && date <= last
        )
    });
    let closed = calendar
        .closures
        .iter()
        .any(|closure| closure.date == date.to_string() && closure.session == 0);
    weekday && in_term && !closed
}

async fn swept(db: &Db, laestab: &str, at: SessionDate) -> Result<bool, Status> {
    let found: Option<(String,)> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT laestab FROM first_day_sweeps WHERE laestab = $1 AND absence_date = $2 \
             AND session = $3",
        )
        .bind(laestab)
        .bind(at.date)
        .bind(at.session.as_str())
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading first-day runs"))?;
    Ok(found.is_some())
}

async fn mark_swept(db: &Db, laestab: &str, at: SessionDate) -> Result<(), Status> {
    let now = Utc::now();
    with_db!(db, |pool| {
        sqlx::query(
            "INSERT INTO first_day_sweeps (laestab, absence_date, session, swept_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (laestab, absence_date, session) DO NOTHING",
        )
        .bind(laestab)
        .bind(at.date)
        .bind(at.session.as_str())
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ())
    })
    .map_err(storage("recording a first-day run"))?;
    Ok(())
}

/// Stores the pupil's task for the day (unless one exists) and its messages, in one
/// transaction. Returns whether a task was created and how many messages were new.
async fn store_task(
    db: &Db,
    laestab: &str,
    upn: &str,
    at: SessionDate,
    messages: &mut [NewMessage],
) -> Result<(bool, i32), Status> {
    let now = Utc::now();
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(CASES_LOCK_KEY).await?;
        let existing: Option<(String,)> =
            sqlx::query_as("SELECT id FROM contact_tasks WHERE upn = $1 AND absence_date = $2")
                .bind(upn)
                .bind(at.date)
                .fetch_optional(&mut *tx)
                .await?;
        let (task_id, created) = match existing {
            Some((id,)) => (id, false),
            None => {
                // The highest number in use, not the row count: a UPN change that merges two
                // pupils can merge their tasks for the same day.
                let (last,): (i64,) = sqlx::query_as(
                    "SELECT COALESCE(MAX(CAST(SUBSTR(id, 6) AS BIGINT)), 0) FROM contact_tasks",
                )
                .fetch_one(&mut *tx)
                .await?;
                let id = format!("task-{:08}", last + 1);
                sqlx::query(
                    "INSERT INTO contact_tasks (id, laestab, upn, absence_date, session, status, \
                     created_at) VALUES ($1, $2, $3, $4, $5, 'open', $6)",
                )
                .bind(&id)
                .bind(laestab)
                .bind(upn)
                .bind(at.date)
                .bind(at.session.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (id, true)
            }
        };
        let mut queued = 0;
        for message in messages.iter_mut() {
            message.task_id = Some(task_id.clone());
            if store::insert(&mut tx, message, now).await?.is_some() {
                queued += 1;
            }
        }
        tx.commit().await?;
        if created {
            tracing::info!(task = %task_id, upn, laestab, "Contact task created");
        }
        Ok::<_, sqlx::Error>((created, queued))
    }
    .await)
    .map_err(storage("storing first-day contact"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        first: &str,
        first_session: PbSession,
        last: &str,
        last_session: PbSession,
    ) -> AbsenceReport {
        AbsenceReport {
            first_date: first.into(),
            first_session: first_session as i32,
            last_date: last.into(),
            last_session: last_session as i32,
            ..AbsenceReport::default()
        }
    }

    fn at(date: &str, session: Session) -> SessionDate {
        SessionDate {
            date: date.parse().expect("date"),
            session,
        }
    }

    #[test]
    fn report_covers_its_sessions_only() {
        let reports = [report(
            "2025-11-03",
            PbSession::Pm,
            "2025-11-04",
            PbSession::Am,
        )];
        assert!(!reported(&reports, at("2025-11-03", Session::Am)));
        assert!(reported(&reports, at("2025-11-03", Session::Pm)));
        assert!(reported(&reports, at("2025-11-04", Session::Am)));
        assert!(!reported(&reports, at("2025-11-04", Session::Pm)));
    }

    #[test]
    fn register_close_follows_the_school_time_zone() {
        let calendar = Calendar {
            time_zone: "Europe/London".into(),
            am: Some(rollcall_api::registers::v1::RegisterTimes {
                opens: "08:40".into(),
                closes: "09:10".into(),
            }),
            ..Calendar::default()
        };
        let summer = closes_at(&calendar, "2025-06-02".parse().expect("date"), Session::Am);
        assert_eq!(
            summer.map(|t| t.to_rfc3339()),
            Some("2025-06-02T08:10:00+00:00".into())
        );
        let winter = closes_at(&calendar, "2025-12-01".parse().expect("date"), Session::Am);
        assert_eq!(
            winter.map(|t| t.to_rfc3339()),
            Some("2025-12-01T09:10:00+00:00".into())
        );
        assert_eq!(
            closes_at(&calendar, "2025-12-01".parse().expect("date"), Session::Pm),
            None
        );
    }

    fn school_calendar() -> Calendar {
        use rollcall_api::registers::v1::{Closure, RegisterTimes, Term};
        Calendar {
            time_zone: "Europe/London".into(),
            am: Some(RegisterTimes {
                opens: "08:40".into(),
                closes: "09:10".into(),
            }),
            pm: Some(RegisterTimes {
                opens: "13:10".into(),
                closes: "13:20".into(),
            }),
            terms: vec![Term {
                name: "Autumn 2025".into(),
                first_day: "2025-09-01".into(),
                last_day: "2025-12-19".into(),
            }],
            closures: vec![
                Closure {
                    date: "2025-11-03".into(),
                    ..Closure::default()
                },
                Closure {
                    date: "2025-11-04".into(),
                    session: PbSession::Pm as i32,
                    ..Closure::default()
                },
            ],
            ..Calendar::default()
        }
    }

    fn due(now: &str, minutes: u32) -> Vec<String> {
        let now: DateTime<Utc> = now.parse().expect("time");
        due_sessions(&school_calendar(), now, minutes)
            .iter()
            .map(|at| format!("{} {}", at.date, at.session.as_str()))
            .collect()
    }

    #[test]
    fn sessions_fall_due_after_their_register_closes() {
        // 10 November 2025 is a Monday; London is on GMT.
        assert!(due("2025-11-10T09:09:00Z", 0).is_empty());
        assert_eq!(due("2025-11-10T09:10:00Z", 0), ["2025-11-10 AM"]);
        assert!(
            due("2025-11-10T09:20:00Z", 15).is_empty(),
            "waits the delay"
        );
        assert_eq!(due("2025-11-10T09:25:00Z", 15), ["2025-11-10 AM"]);
        assert_eq!(
            due("2025-11-10T16:00:00Z", 15),
            ["2025-11-10 AM", "2025-11-10 PM"]
        );
    }

    #[test]
    fn register_close_is_in_school_time() {
        // 8 September 2025: London is on BST, so 09:10 there is 08:10 UTC.
        assert_eq!(due("2025-09-08T08:10:00Z", 0), ["2025-09-08 AM"]);
    }

    #[test]
    fn closed_days_have_no_sessions_due() {
        assert!(due("2025-11-08T16:00:00Z", 0).is_empty(), "a Saturday");
        assert!(due("2025-12-22T16:00:00Z", 0).is_empty(), "the holidays");
        assert!(due("2025-11-03T16:00:00Z", 0).is_empty(), "closed all day");
        assert_eq!(
            due("2025-11-04T16:00:00Z", 0),
            ["2025-11-04 AM"],
            "closed in the afternoon"
        );
    }

    #[test]
    fn long_dates_read_as_letters_write_them() {
        assert_eq!(
            long_date("2025-11-03".parse().expect("date")),
            "Monday 3 November 2025"
        );
    }
}
