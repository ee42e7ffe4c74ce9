//! A local MIS data broker for tests, in the shape of the REST brokers that schools in England
//! use to give third parties access to their MIS data.
//!
//! The server listens on 127.0.0.1 over HTTPS with a certificate from a throwaway certificate
//! authority, whose PEM [`BrokerServer::ca_pem`] returns. Every request needs
//! `Authorization: Bearer <token>`. The API is under `/v1.0`:
//!
//! - `GET /schools/{id}`: the school, with its LA code and establishment number.
//! - `GET /schools/{id}/students` and `GET /schools/{id}/attendance/session`: records changed
//!   after `updated_after` (`YYYY-MM-DD HH:MM:SS`, UTC, exclusive), oldest change first, in
//!   pages chosen by `page` (from 1) and `per_page` (50 by default, at most 200), with
//!   `meta.pagination` giving `next`, `previous`, `more`, `per_page` and `current_page`.
//!   `include` adds related objects: `education_details`, `registration` and `year` for
//!   students, `attendance_code` for marks.
//! - `GET /schools/{id}/attendance-codes`: the MIS's attendance codes and their ids.
//! - `GET /schools/{id}/deletions`: deleted and restored records (`type`, `id`, `deleted_at`,
//!   `restored_at`), filtered and paged like the lists above.
//! - `POST /schools/{id}/attendance/session`: writes session marks, `{"attendance": [{
//!   "student_id", "date", "session", "attendance_code_id", "minutes_late", "comment"}]}`,
//!   and returns a `writeback_id` and an outcome per record.
//!
//! Lists are `{"data": [...], "meta": {...}}` and single objects `{"data": {...}}`. Dates are
//! objects: `{"date": "2026-11-02 00:00:00.000000", "timezone_type": 3, "timezone":
//! "Europe/London"}`, and change times are the same in UTC.
//!
//! A test seeds schools, students and marks, changes and deletes them later (each change
//! moves the record's `updated_at`), makes the next requests fail with 429 or 5xx, counts
//! requests and reads back what was written. Change times come from the real clock, shifted
//! by [`BrokerServer::shift_clock`], and never repeat.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The path prefix of every endpoint.
pub const API_PREFIX: &str = "/v1.0";

/// Records per page when a request gives no `per_page`.
pub const DEFAULT_PER_PAGE: usize = 50;

/// The largest `per_page` honoured. A larger value is cut to this.
pub const MAX_PER_PAGE: usize = 200;

/// The deletion type of a student.
pub const STUDENT: &str = "student";

/// The deletion type of a session mark.
pub const SESSION_ATTENDANCE: &str = "session_attendance";

/// The attendance codes every seeded school has, with ids `AC01`, `AC02` and so on in this
/// order.
pub const CODES: &[&str] = &[
    "/", "\\", "B", "C", "C1", "C2", "D", "E", "G", "I", "J1", "K", "L", "M", "N", "O", "P", "Q",
    "R", "S", "T", "U", "V", "W", "X", "Y1", "Y2", "Y3", "Y4", "Y5", "Y6", "Y7", "Z", "#",
];

/// A school the broker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSchool {
    /// The broker's id for the school, used in every path.
    pub id: String,
    /// The school's name.
    pub name: String,
    /// The three-digit local authority code.
    pub la_code: String,
    /// The four-digit establishment number.
    pub establishment_number: String,
    /// The phase as the broker names it, such as `SECONDARY` or `PRIMARY`.
    pub phase_of_education: String,
}

impl BrokerSchool {
    /// Returns a secondary school whose LAESTAB is `laestab` (seven digits).
    pub fn secondary(id: &str, laestab: &str, name: &str) -> Self {
        Self {
            id: id.to_owned(),
            name: name.to_owned(),
            la_code: laestab.get(..3).unwrap_or_default().to_owned(),
            establishment_number: laestab.get(3..).unwrap_or_default().to_owned(),
            phase_of_education: "SECONDARY".to_owned(),
        }
    }
}

/// A student as the MIS records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStudent {
    /// The broker's id for the student, which marks and write-backs name.
    pub id: String,
    /// The MIS's own id for the student.
    pub mis_id: String,
    /// Unique pupil number.
    pub upn: String,
    /// Legal forename.
    pub legal_forename: String,
    /// Legal surname.
    pub legal_surname: String,
    /// `MALE` or `FEMALE`.
    pub gender: String,
    /// Date of birth.
    pub date_of_birth: NaiveDate,
    /// First day on roll.
    pub admission_date: NaiveDate,
    /// Last day on roll, once the student has left.
    pub leaving_date: Option<NaiveDate>,
    /// National curriculum year, such as `7` or `R`.
    pub nc_year: String,
    /// Registration group, such as `7B`.
    pub registration_group: String,
}

impl BrokerStudent {
    /// Returns a Year 7 student in group 7B, admitted on 2 September 2026.
    pub fn new(id: &str, upn: &str, forename: &str, surname: &str) -> Self {
        Self {
            id: id.to_owned(),
            mis_id: id
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .to_owned(),
            upn: upn.to_owned(),
            legal_forename: forename.to_owned(),
            legal_surname: surname.to_owned(),
            gender: "FEMALE".to_owned(),
            date_of_birth: NaiveDate::from_ymd_opt(2015, 3, 14).unwrap_or_default(),
            admission_date: NaiveDate::from_ymd_opt(2026, 9, 2).unwrap_or_default(),
            leaving_date: None,
            nc_year: "7".to_owned(),
            registration_group: "7B".to_owned(),
        }
    }
}

/// A session mark to store: the MIS's mark for one student and session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerMark {
    /// The broker's id of the student.
    pub student_id: String,
    /// The session date.
    pub date: NaiveDate,
    /// `AM` or `PM`.
    pub session: String,
    /// The attendance code, such as `/` or `L`.
    pub code: String,
    /// Minutes late, where recorded.
    pub minutes_late: Option<i32>,
    /// The comment the MIS keeps with the mark.
    pub comment: Option<String>,
}

/// A session mark as stored, with its id and change time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMark {
    /// The broker's id of the mark.
    pub id: String,
    /// The mark.
    pub mark: BrokerMark,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// The outcome of one record of a write-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored as the student's mark for the session; the value is the mark's id.
    Accepted(String),
    /// Not stored, with the broker's reason.
    Rejected(String),
}

/// One record of a write-back request, as received, with its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenRecord {
    /// The write-back request's id.
    pub writeback_id: String,
    /// `student_id` as sent.
    pub student_id: String,
    /// `date` as sent.
    pub date: String,
    /// `session` as sent.
    pub session: String,
    /// `attendance_code_id` as sent.
    pub attendance_code_id: String,
    /// `minutes_late` as sent, when present.
    pub minutes_late: Option<i64>,
    /// `comment` as sent, when present.
    pub comment: Option<String>,
    /// The broker's outcome.
    pub outcome: WriteOutcome,
}

/// One request the broker received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path, such as `/v1.0/schools/A1/students`.
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The status of the reply.
    pub status: u16,
}

impl LoggedRequest {
    /// Returns the value of query parameter `name`, if sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A reply a test requested in place of the normal one.
#[derive(Debug, Clone, Copy)]
enum Injected {
    /// The normal reply, so that a failure can be queued behind a few successes.
    Normal,
    /// 429 Too Many Requests with a Retry-After in seconds.
    RateLimited(u64),
    /// This status, such as 500 or 503, without Retry-After.
    Failure(u16),
}

#[derive(Debug, Clone)]
struct Stored<T> {
    id: String,
    value: T,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted: bool,
}

#[derive(Debug, Clone)]
struct Deletion {
    id: String,
    kind: &'static str,
    deleted_at: DateTime<Utc>,
    restored_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug)]
struct SchoolData {
    school: BrokerSchool,
    students: Vec<Stored<BrokerStudent>>,
    marks: Vec<Stored<BrokerMark>>,
    deletions: Vec<Deletion>,
    locked_dates: Vec<(NaiveDate, String)>,
}

#[derive(Debug, Default)]
struct State {
    base_url: String,
    token: String,
    schools: Vec<SchoolData>,
    written: Vec<WrittenRecord>,
    writebacks: usize,
    requests: Vec<LoggedRequest>,
    injected: VecDeque<Injected>,
    clock_offset: TimeDelta,
    last_change: Option<DateTime<Utc>>,
    next_mark_id: usize,
}

impl State {
    /// Returns the next change time: the shifted real time in whole microseconds, always
    /// after the last one.
    fn tick(&mut self) -> DateTime<Utc> {
        let shifted = Utc::now() + self.clock_offset;
        let now = DateTime::from_timestamp_micros(shifted.timestamp_micros()).unwrap_or(shifted);
        let now = match self.last_change {
            Some(last) => now.max(last + TimeDelta::microseconds(1)),
            None => now,
        };
        self.last_change = Some(now);
        now
    }

    fn school_mut(&mut self, id: &str) -> &mut SchoolData {
        self.schools
            .iter_mut()
            .find(|data| data.school.id == id)
            .unwrap_or_else(|| panic!("the broker has no school {id}; add it first"))
    }
}

/// A running broker. It stops, with every open connection, when dropped.
#[derive(Debug)]
pub struct BrokerServer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for BrokerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl BrokerServer {
    /// Starts a broker on a free port of 127.0.0.1 that accepts the bearer token `token`.
    pub async fn start(token: &str) -> anyhow::Result<Self> {
        let (acceptor, ca_pem) =
            crate::tls::tls_acceptor("rollcall test broker CA", "rollcall test MIS broker")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            base_url: format!("https://{addr}{API_PREFIX}"),
            token: token.to_owned(),
            ..State::default()
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so that aborting the server closes them too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let acceptor = acceptor.clone();
                let state = shared.clone();
                connections.spawn(async move {
                    let stream = match acceptor.accept(stream).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%error, "Test broker TLS handshake failed");
                            return;
                        }
                    };
                    let service = service_fn(move |request| handle(state.clone(), request));
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%error, "Test broker connection ended with an error");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem,
            state,
            task,
        })
    }

    /// Returns the base URL of the API, ending in `/v1.0`.
    pub fn base_url(&self) -> String {
        format!("https://{}{API_PREFIX}", self.addr)
    }

    /// Returns the PEM certificate of the authority that issued the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Adds a school with the standard attendance codes and nothing else.
    pub fn add_school(&self, school: BrokerSchool) {
        lock(&self.state).schools.push(SchoolData {
            school,
            students: Vec::new(),
            marks: Vec::new(),
            deletions: Vec::new(),
            locked_dates: Vec::new(),
        });
    }

    /// Shifts the clock that stamps later changes by `offset` from real time. A negative
    /// offset makes later changes look older, but change times never go backwards.
    pub fn shift_clock(&self, offset: TimeDelta) {
        lock(&self.state).clock_offset = offset;
    }

    /// Adds a student, or replaces the one with the same id (restoring it if deleted). Either
    /// way the student's `updated_at` moves.
    pub fn put_student(&self, school_id: &str, student: BrokerStudent) {
        let mut state = lock(&self.state);
        let now = state.tick();
        let data = state.school_mut(school_id);
        match data
            .students
            .iter_mut()
            .find(|stored| stored.id == student.id)
        {
            Some(stored) => {
                stored.value = student;
                stored.updated_at = now;
                stored.deleted = false;
            }
            None => data.students.push(Stored {
                id: student.id.clone(),
                value: student,
                created_at: now,
                updated_at: now,
                deleted: false,
            }),
        }
    }

    /// Stores the MIS's mark for a student and session, replacing any mark already there,
    /// and returns the mark's id. The mark's `updated_at` moves.
    pub fn put_mark(&self, school_id: &str, mark: BrokerMark) -> String {
        let mut state = lock(&self.state);
        let now = state.tick();
        upsert_mark(&mut state, school_id, mark, now)
    }

    /// Deletes a student, as when a school removes a record entered in error. The student
    /// disappears from the list and appears in the deletions.
    pub fn delete_student(&self, school_id: &str, student_id: &str) {
        let mut state = lock(&self.state);
        let now = state.tick();
        let data = state.school_mut(school_id);
        let stored = data
            .students
            .iter_mut()
            .find(|stored| stored.id == student_id && !stored.deleted)
            .unwrap_or_else(|| panic!("no student {student_id} to delete"));
        stored.deleted = true;
        record_deletion(data, student_id, STUDENT, now);
    }

    /// Restores a deleted student. The student is listed again with a new `updated_at`, and
    /// the deletion gets `restored_at`.
    pub fn restore_student(&self, school_id: &str, student_id: &str) {
        let mut state = lock(&self.state);
        let now = state.tick();
        let data = state.school_mut(school_id);
        let stored = data
            .students
            .iter_mut()
            .find(|stored| stored.id == student_id && stored.deleted)
            .unwrap_or_else(|| panic!("no deleted student {student_id} to restore"));
        stored.deleted = false;
        stored.updated_at = now;
        if let Some(deletion) = data
            .deletions
            .iter_mut()
            .find(|deletion| deletion.id == student_id && deletion.kind == STUDENT)
        {
            deletion.restored_at = Some(now);
            deletion.updated_at = now;
        }
    }

    /// Deletes a session mark by its id.
    pub fn delete_mark(&self, school_id: &str, mark_id: &str) {
        let mut state = lock(&self.state);
        let now = state.tick();
        let data = state.school_mut(school_id);
        let stored = data
            .marks
            .iter_mut()
            .find(|stored| stored.id == mark_id && !stored.deleted)
            .unwrap_or_else(|| panic!("no mark {mark_id} to delete"));
        stored.deleted = true;
        record_deletion(data, mark_id, SESSION_ATTENDANCE, now);
    }

    /// Rejects write-backs of marks on `date` from now on, with `reason`, as an MIS does
    /// once a register is locked.
    pub fn lock_date(&self, school_id: &str, date: NaiveDate, reason: &str) {
        let mut state = lock(&self.state);
        state
            .school_mut(school_id)
            .locked_dates
            .push((date, reason.to_owned()));
    }

    /// Accepts write-backs of marks on `date` again.
    pub fn unlock_date(&self, school_id: &str, date: NaiveDate) {
        let mut state = lock(&self.state);
        state
            .school_mut(school_id)
            .locked_dates
            .retain(|(locked, _)| *locked != date);
    }

    /// Returns the marks stored for a school, deleted ones left out, in the order first stored.
    pub fn marks(&self, school_id: &str) -> Vec<StoredMark> {
        let mut state = lock(&self.state);
        state
            .school_mut(school_id)
            .marks
            .iter()
            .filter(|stored| !stored.deleted)
            .map(|stored| StoredMark {
                id: stored.id.clone(),
                mark: stored.value.clone(),
                updated_at: stored.updated_at,
            })
            .collect()
    }

    /// Returns the mark stored for one student and session, if any.
    pub fn mark(
        &self,
        school_id: &str,
        student_id: &str,
        date: NaiveDate,
        session: &str,
    ) -> Option<StoredMark> {
        self.marks(school_id).into_iter().find(|stored| {
            stored.mark.student_id == student_id
                && stored.mark.date == date
                && stored.mark.session == session
        })
    }

    /// Returns every record of every write-back request received, in order.
    pub fn written(&self) -> Vec<WrittenRecord> {
        lock(&self.state).written.clone()
    }

    /// Returns the number of write-back requests that reached the school's data.
    pub fn writeback_requests(&self) -> usize {
        lock(&self.state).writebacks
    }

    /// Returns every request received, failures included, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state).requests.clone()
    }

    /// Forgets the requests logged so far.
    pub fn clear_requests(&self) {
        lock(&self.state).requests.clear();
    }

    /// Replies to the next `count` requests with 429 Too Many Requests and `Retry-After:
    /// retry_after` seconds.
    pub fn rate_limit_next(&self, count: usize, retry_after: u64) {
        let mut state = lock(&self.state);
        for _ in 0..count {
            state.injected.push_back(Injected::RateLimited(retry_after));
        }
    }

    /// Fails the next `count` requests with `status`, such as 500 or 503, without
    /// Retry-After.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.fail_after(0, count, status);
    }

    /// Replies normally to the next `successes` requests, then fails `count` requests with
    /// `status`.
    pub fn fail_after(&self, successes: usize, count: usize, status: u16) {
        let mut state = lock(&self.state);
        for _ in 0..successes {
            state.injected.push_back(Injected::Normal);
        }
        for _ in 0..count {
            state.injected.push_back(Injected::Failure(status));
        }
    }
}

fn record_deletion(data: &mut SchoolData, id: &str, kind: &'static str, now: DateTime<Utc>) {
    match data
        .deletions
        .iter_mut()
        .find(|deletion| deletion.id == id && deletion.kind == kind)
    {
        Some(deletion) => {
            deletion.deleted_at = now;
            deletion.restored_at = None;
            deletion.updated_at = now;
        }
        None => data.deletions.push(Deletion {
            id: id.to_owned(),
            kind,
            deleted_at: now,
            restored_at: None,
            updated_at: now,
        }),
    }
}

fn upsert_mark(state: &mut State, school_id: &str, mark: BrokerMark, now: DateTime<Utc>) -> String {
    state.next_mark_id += 1;
    let new_id = format!("M{:07}", state.next_mark_id);
    let data = state.school_mut(school_id);
    let existing = data.marks.iter_mut().find(|stored| {
        !stored.deleted
            && stored.value.student_id == mark.student_id
            && stored.value.date == mark.date
            && stored.value.session == mark.session
    });
    match existing {
        Some(stored) => {
            stored.value = mark;
            stored.updated_at = now;
            stored.id.clone()
        }
        None => {
            data.marks.push(Stored {
                id: new_id.clone(),
                value: mark,
                created_at: now,
                updated_at: now,
                deleted: false,
            });
            new_id
        }
    }
}

fn code_id(code: &str) -> Option<String> {
    CODES
        .iter()
        .position(|known| *known == code)
        .map(|index| format!("AC{:02}", index + 1))
}

fn code_of(id: &str) -> Option<&'static str> {
    let index: usize = id.strip_prefix("AC")?.parse().ok()?;
    CODES.get(index.checked_sub(1)?).copied()
}

/// Returns a date as the broker writes it, in the school's time zone.
fn date_json(date: NaiveDate) -> Value {
    json!({
        "date": format!("{} 00:00:00.000000", date.format("%Y-%m-%d")),
        "timezone_type": 3,
        "timezone": "Europe/London",
    })
}

/// Returns a change time as the broker writes it, in UTC.
fn time_json(at: DateTime<Utc>) -> Value {
    json!({
        "date": at.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        "timezone_type": 3,
        "timezone": "UTC",
    })
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_reply(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, &json!({ "error": message }))
}

/// Decodes a query string: `+` is a space and `%XX` a byte.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", percent_encode(key), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query().unwrap_or_default());
    let authorisation = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await?.to_bytes();

    let mut state = lock(&state);
    let response = respond(&mut state, &method, &path, &query, authorisation, &body);
    state.requests.push(LoggedRequest {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
    });
    Ok(response)
}

fn respond(
    state: &mut State,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    authorisation: Option<String>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    match state.injected.pop_front() {
        Some(Injected::RateLimited(seconds)) => {
            let mut response = error_reply(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests. Slow down and retry after the time in Retry-After.",
            );
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(seconds),
            );
            return response;
        }
        Some(Injected::Failure(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return error_reply(status, "The broker failed; try again later.");
        }
        Some(Injected::Normal) | None => {}
    }
    if authorisation.as_deref() != Some(format!("Bearer {}", state.token).as_str()) {
        return error_reply(StatusCode::UNAUTHORIZED, "Unauthenticated.");
    }
    let Some(rest) = path
        .strip_prefix(API_PREFIX)
        .and_then(|rest| rest.strip_prefix("/schools/"))
    else {
        return error_reply(StatusCode::NOT_FOUND, "Not found.");
    };
    let (school_id, resource) = rest.split_once('/').unwrap_or((rest, ""));
    let resource = resource.trim_end_matches('/');
    let Some(index) = state
        .schools
        .iter()
        .position(|data| data.school.id == school_id)
    else {
        return error_reply(StatusCode::NOT_FOUND, "School not found or not approved.");
    };

    let page = match ListQuery::parse(query) {
        Ok(page) => page,
        Err(message) => return error_reply(StatusCode::UNPROCESSABLE_ENTITY, &message),
    };
    let list_url = format!("{}/schools/{school_id}/{resource}", state.base_url);
    match (method, resource) {
        (&Method::GET, "") => reply(
            StatusCode::OK,
            &json!({ "data": school_json(&state.schools[index].school) }),
        ),
        (&Method::GET, "students") => {
            let data = &state.schools[index];
            let rows: Vec<(DateTime<Utc>, String, Value)> = data
                .students
                .iter()
                .filter(|stored| !stored.deleted)
                .map(|stored| {
                    (
                        stored.updated_at,
                        stored.id.clone(),
                        student_json(stored, &page.include),
                    )
                })
                .collect();
            reply(StatusCode::OK, &page.list(rows, &list_url, query))
        }
        (&Method::GET, "attendance/session") => {
            let data = &state.schools[index];
            let rows = data
                .marks
                .iter()
                .filter(|stored| !stored.deleted)
                .map(|stored| {
                    (
                        stored.updated_at,
                        stored.id.clone(),
                        mark_json(stored, &page.include),
                    )
                })
                .collect();
            reply(StatusCode::OK, &page.list(rows, &list_url, query))
        }
        (&Method::GET, "deletions") => {
            let data = &state.schools[index];
            let rows = data
                .deletions
                .iter()
                .map(|deletion| {
                    (
                        deletion.updated_at,
                        format!("{}:{}", deletion.kind, deletion.id),
                        deletion_json(deletion),
                    )
                })
                .collect();
            reply(StatusCode::OK, &page.list(rows, &list_url, query))
        }
        (&Method::GET, "attendance-codes") => {
            let codes: Vec<Value> = CODES
                .iter()
                .map(|code| {
                    json!({
                        "id": code_id(code),
                        "code": code,
                        "description": format!("Attendance code {code}"),
                    })
                })
                .collect();
            reply(
                StatusCode::OK,
                &json!({ "data": codes, "meta": { "pagination": {
                    "next": null, "previous": null, "more": false,
                    "per_page": CODES.len(), "current_page": 1 } } }),
            )
        }
        (&Method::POST, "attendance/session") => write_back(state, school_id, body),
        _ => error_reply(StatusCode::NOT_FOUND, "Not found."),
    }
}

/// The filter, paging and includes of a list request.
#[derive(Debug)]
struct ListQuery {
    updated_after: Option<DateTime<Utc>>,
    page: usize,
    per_page: usize,
    include: Vec<String>,
}

impl ListQuery {
    fn parse(query: &[(String, String)]) -> Result<Self, String> {
        let mut parsed = Self {
            updated_after: None,
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            include: Vec::new(),
        };
        for (key, value) in query {
            match key.as_str() {
                "updated_after" => {
                    let at = NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").map_err(
                        |_| {
                            format!(
                                "The updated_after {value:?} is not a date in the form \
                                 YYYY-MM-DD HH:MM:SS."
                            )
                        },
                    )?;
                    parsed.updated_after = Some(at.and_utc());
                }
                "page" => {
                    parsed.page = value
                        .parse()
                        .ok()
                        .filter(|page| *page >= 1)
                        .ok_or_else(|| format!("The page {value:?} is not a number from 1."))?;
                }
                "per_page" => {
                    let per_page: usize =
                        value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            format!("The per_page {value:?} is not a number from 1.")
                        })?;
                    parsed.per_page = per_page.min(MAX_PER_PAGE);
                }
                "include" => {
                    parsed.include = value.split(',').map(str::to_owned).collect();
                }
                _ => {}
            }
        }
        Ok(parsed)
    }

    /// Filters, sorts oldest change first, and returns one page with its meta.
    fn list(
        &self,
        mut rows: Vec<(DateTime<Utc>, String, Value)>,
        url: &str,
        query: &[(String, String)],
    ) -> Value {
        if let Some(after) = self.updated_after {
            rows.retain(|(updated_at, _, _)| *updated_at > after);
        }
        rows.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let start = (self.page - 1).saturating_mul(self.per_page);
        let more = rows.len() > start.saturating_add(self.per_page);
        let data: Vec<Value> = rows
            .into_iter()
            .skip(start)
            .take(self.per_page)
            .map(|(_, _, value)| value)
            .collect();
        let page_url = |page: usize| {
            let mut pairs: Vec<(String, String)> = query
                .iter()
                .filter(|(key, _)| key != "page")
                .cloned()
                .collect();
            pairs.push(("page".to_owned(), page.to_string()));
            format!("{url}?{}", encode_query(&pairs))
        };
        json!({
            "data": data,
            "meta": {
                "pagination": {
                    "next": if more { Value::from(page_url(self.page + 1)) } else { Value::Null },
                    "previous": if self.page > 1 { Value::from(page_url(self.page - 1)) } else { Value::Null },
                    "more": more,
                    "per_page": self.per_page,
                    "current_page": self.page,
                }
            }
        })
    }
}

fn school_json(school: &BrokerSchool) -> Value {
    json!({
        "id": school.id,
        "name": school.name,
        "la_code": school.la_code,
        "establishment_number": school.establishment_number,
        "urn": 100_000,
        "phase_of_education": school.phase_of_education,
        "timezone": "Europe/London",
        "mis": "Example MIS",
    })
}

fn student_json(stored: &Stored<BrokerStudent>, include: &[String]) -> Value {
    let student = &stored.value;
    let initials: String = [&student.legal_forename, &student.legal_surname]
        .iter()
        .filter_map(|name| name.chars().next())
        .collect();
    let mut value = json!({
        "id": student.id,
        "upi": format!("upi-{}", student.id),
        "mis_id": student.mis_id,
        "initials": initials,
        "surname": student.legal_surname,
        "forename": student.legal_forename,
        "middle_names": null,
        "legal_surname": student.legal_surname,
        "legal_forename": student.legal_forename,
        "gender": student.gender,
        "date_of_birth": date_json(student.date_of_birth),
        "restored_at": null,
        "created_at": time_json(stored.created_at),
        "updated_at": time_json(stored.updated_at),
    });
    let included = |name: &str| include.iter().any(|item| item == name);
    if included("education_details") {
        value["education_details"] = json!({ "data": {
            "upn": student.upn,
            "former_upn": null,
            "admission_date": date_json(student.admission_date),
            "leaving_date": student.leaving_date.map_or(Value::Null, date_json),
            "current_nc_year": student.nc_year,
        }});
    }
    if included("registration") {
        value["registration"] = json!({ "data": {
            "id": format!("G-{}", student.registration_group),
            "code": student.registration_group,
            "name": student.registration_group,
        }});
    }
    if included("year") {
        value["year"] = json!({ "data": {
            "id": format!("Y-{}", student.nc_year),
            "code": student.nc_year,
            "name": format!("Year {}", student.nc_year),
        }});
    }
    value
}

fn mark_json(stored: &Stored<BrokerMark>, include: &[String]) -> Value {
    let mark = &stored.value;
    let code_id = code_id(&mark.code).unwrap_or_default();
    let attendance_code = if include.iter().any(|item| item == "attendance_code") {
        json!({ "data": {
            "id": code_id,
            "code": mark.code,
            "description": format!("Attendance code {}", mark.code),
        }})
    } else {
        Value::from(code_id)
    };
    json!({
        "id": stored.id,
        "student": mark.student_id,
        "session": mark.session,
        "date": date_json(mark.date),
        "attendance_code": attendance_code,
        "minutes_late": mark.minutes_late,
        "comment": mark.comment,
        "created_at": time_json(stored.created_at),
        "updated_at": time_json(stored.updated_at),
    })
}

fn deletion_json(deletion: &Deletion) -> Value {
    json!({
        "id": deletion.id,
        "type": deletion.kind,
        "deleted_at": time_json(deletion.deleted_at),
        "restored_at": deletion.restored_at.map_or(Value::Null, time_json),
        "updated_at": time_json(deletion.updated_at),
    })
}

/// The body of a write-back request.
#[derive(Debug, Deserialize)]
struct WritebackBody {
    attendance: Vec<WritebackRecord>,
}

#[derive(Debug, Deserialize)]
struct WritebackRecord {
    #[serde(default)]
    student_id: String,
    #[serde(default)]
    date: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    attendance_code_id: String,
    #[serde(default)]
    minutes_late: Option<i64>,
    #[serde(default)]
    comment: Option<String>,
}

/// Stores each valid record as the student's mark for its session, and returns the outcome
/// of each.
fn write_back(state: &mut State, school_id: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let parsed: WritebackBody = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            return error_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("The body must be {{\"attendance\": [...]}}: {error}"),
            );
        }
    };
    state.writebacks += 1;
    let writeback_id = format!("WB{:06}", state.writebacks);
    let mut outcomes = Vec::with_capacity(parsed.attendance.len());
    for (index, record) in parsed.attendance.into_iter().enumerate() {
        let outcome = match check_record(state, school_id, &record) {
            Ok(mark) => {
                let now = state.tick();
                WriteOutcome::Accepted(upsert_mark(state, school_id, mark, now))
            }
            Err(reason) => WriteOutcome::Rejected(reason),
        };
        outcomes.push(match &outcome {
            WriteOutcome::Accepted(id) => json!({ "index": index, "status": "accepted", "id": id }),
            WriteOutcome::Rejected(reason) => {
                json!({ "index": index, "status": "rejected", "error": reason })
            }
        });
        state.written.push(WrittenRecord {
            writeback_id: writeback_id.clone(),
            student_id: record.student_id,
            date: record.date,
            session: record.session,
            attendance_code_id: record.attendance_code_id,
            minutes_late: record.minutes_late,
            comment: record.comment,
            outcome,
        });
    }
    reply(
        StatusCode::OK,
        &json!({ "writeback_id": writeback_id, "data": outcomes }),
    )
}

/// Checks one write-back record as an MIS would, and returns the mark to store or the reason
/// it is rejected.
fn check_record(
    state: &mut State,
    school_id: &str,
    record: &WritebackRecord,
) -> Result<BrokerMark, String> {
    let data = state.school_mut(school_id);
    if !data
        .students
        .iter()
        .any(|stored| stored.id == record.student_id && !stored.deleted)
    {
        return Err(format!("Student {} was not found.", record.student_id));
    }
    let date = NaiveDate::parse_from_str(&record.date, "%Y-%m-%d")
        .map_err(|_| format!("The date {:?} is not in the form YYYY-MM-DD.", record.date))?;
    if record.session != "AM" && record.session != "PM" {
        return Err(format!(
            "The session {:?} must be AM or PM.",
            record.session
        ));
    }
    let code = code_of(&record.attendance_code_id).ok_or_else(|| {
        format!(
            "The attendance code id {:?} was not found.",
            record.attendance_code_id
        )
    })?;
    if let Some((_, reason)) = data.locked_dates.iter().find(|(locked, _)| *locked == date) {
        return Err(reason.clone());
    }
    let minutes_late = record
        .minutes_late
        .map(|minutes| {
            i32::try_from(minutes)
                .ok()
                .filter(|minutes| *minutes >= 0)
                .ok_or_else(|| format!("The minutes_late {minutes} must be 0 or more."))
        })
        .transpose()?;
    Ok(BrokerMark {
        student_id: record.student_id.clone(),
        date,
        session: record.session.clone(),
        code: code.to_owned(),
        minutes_late,
        comment: record.comment.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let pairs = parse_query("updated_after=2026-11-02+08%3A00%3A00&page=2&empty=");
        assert_eq!(
            pairs,
            [
                ("updated_after".to_owned(), "2026-11-02 08:00:00".to_owned()),
                ("page".to_owned(), "2".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            parse_query(&encode_query(&pairs)),
            pairs,
            "encoding then decoding returns the pairs"
        );
    }

    #[test]
    fn codes_have_stable_ids() {
        assert_eq!(code_id("/").as_deref(), Some("AC01"));
        assert_eq!(code_of("AC01"), Some("/"));
        assert_eq!(code_of(&code_id("#").expect("id")), Some("#"));
        assert_eq!(code_of("AC00"), None);
        assert_eq!(code_of("XX"), None);
    }

    #[test]
    fn pages_filter_sort_and_link() {
        let base = DateTime::from_timestamp(1_793_000_000, 0).expect("time");
        let rows: Vec<(DateTime<Utc>, String, Value)> = (0..5)
            .rev()
            .map(|n| (base + TimeDelta::seconds(n), format!("r{n}"), json!(n)))
            .collect();
        let query = vec![
            ("per_page".to_owned(), "2".to_owned()),
            ("page".to_owned(), "2".to_owned()),
        ];
        let list = ListQuery::parse(&query).expect("valid query");
        let page = list.list(
            rows.clone(),
            "https://broker/v1.0/schools/S/students",
            &query,
        );
        assert_eq!(page["data"], json!([2, 3]));
        assert_eq!(page["meta"]["pagination"]["more"], true);
        assert_eq!(
            page["meta"]["pagination"]["next"],
            "https://broker/v1.0/schools/S/students?per_page=2&page=3"
        );

        let after = (base + TimeDelta::seconds(2))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let query = vec![("updated_after".to_owned(), after)];
        let list = ListQuery::parse(&query).expect("valid query");
        let page = list.list(rows, "https://broker", &query);
        assert_eq!(page["data"], json!([3, 4]), "updated_after is exclusive");
        assert_eq!(page["meta"]["pagination"]["more"], false);
        assert_eq!(page["meta"]["pagination"]["next"], Value::Null);
    }

    #[test]
    fn bad_updated_after_is_named() {
        let error = ListQuery::parse(&[("updated_after".to_owned(), "yesterday".to_owned())])
            .expect_err("invalid");
        assert!(error.contains("yesterday"), "{error}");
    }
}
