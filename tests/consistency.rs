//! One effective mark everywhere: a property test on a live server.
//!
//! Each case gives a few pupils random mark histories: versions taken at clashing times, sent in
//! several imports in an arbitrary order, then staff amendments. The expected effective mark of
//! each session is worked out here, apart from the server, as the version taken latest (ties to
//! the one sent later). Every view of the marks must agree with it. The views are the
//! registers' effective marks, each session's history under the domain rule, the session
//! registers, the policy figures for the pupil and the school, and the referral pack's CSV and
//! CTF extract. Every session on roll has a mark, so the figures must also add up to the sessions
//! on roll taken from the calendar. The totals the policy service keeps incrementally from the
//! change feed must equal a recomputation from the registers.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{DateTime, NaiveDate, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::policy::v1::{
    CheckAggregatesRequest, GetPupilAttendanceRequest, GetSchoolAttendanceRequest,
    GetSyncStateRequest,
};
use rollcall_api::referrals::v1::BuildReferralPackRequest;
use rollcall_api::referrals::v1::referrals_service_client::ReferralsServiceClient;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    AmendMarkRequest, Calendar, GetSessionRegisterRequest, ImportHeader, ImportMarks, ImportPupil,
    ImportRegisterRequest, ListMarkVersionsRequest, ListMarksRequest, Mark, Pupil, RegisterTimes,
    Registration, School, SetCalendarRequest, Term, import_register_request::Item,
};
use rollcall_api::types::v1::{AttendanceFigures, MarkSource, Phase, Session as ProtoSession};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::history::{VersionKey, effective_index};
use rollcall_domain::policy::evaluate_penalty_threshold;
use rollcall_domain::{Figures, Policy, Session, SessionDate, Upn};
use tonic::transport::Channel;

const LAESTAB: &str = "9192001";
const AS_OF: &str = "2025-09-19";
/// School days: three weeks from Monday 1 September 2025, two sessions each.
const SCHOOL_DAYS: usize = 15;
const SESSIONS: usize = SCHOOL_DAYS * 2;
/// Codes valid from 19 August 2024 for a pupil of compulsory school age, weighted towards
/// unauthorised absence so that some pupils reach the penalty-notice warning threshold.
const CODES: &[&str] = &[
    "/", "\\", "L", "N", "O", "G", "U", "I", "M", "C1", "B", "K", "D", "J1", "E", "R", "O", "N",
    "U", "G", "O",
];
/// Versions from the imports are taken on Saturday 20 September 2025 at 09:00 UTC plus a few
/// seconds, so times often clash. Amendments are taken when they are made, later still.
const TAKEN_BASE: i64 = 1_758_358_800;

static NEXT_PUPIL: AtomicU32 = AtomicU32::new(1);

#[derive(Debug, Clone)]
struct VersionCase {
    session: usize,
    code: usize,
    taken: i64,
    batch: usize,
}

#[derive(Debug, Clone)]
struct PupilCase {
    /// Index of the school day the pupil joins on.
    admitted: usize,
    versions: Vec<VersionCase>,
    /// Staff amendments: session index and code index.
    amendments: Vec<(usize, usize)>,
}

fn pupil_case() -> impl Strategy<Value = PupilCase> {
    (
        0..6usize,
        prop::collection::vec((0..SESSIONS, 0..CODES.len(), 0..4i64, 0..3usize), 0..60),
        prop::collection::vec((0..SESSIONS, 0..CODES.len()), 0..4),
    )
        .prop_map(|(admitted, versions, amendments)| {
            let first = admitted * 2;
            let on_roll = |session: usize| first + session % (SESSIONS - first);
            let mut seen = std::collections::HashSet::new();
            PupilCase {
                admitted,
                versions: versions
                    .into_iter()
                    .map(|(session, code, taken, batch)| VersionCase {
                        session: on_roll(session),
                        code,
                        taken,
                        batch,
                    })
                    // An import carries at most one mark per session.
                    .filter(|version| seen.insert((version.session, version.batch)))
                    .collect(),
                amendments: amendments
                    .into_iter()
                    .map(|(session, code)| (on_roll(session), code))
                    .collect(),
            }
        })
}

fn school_day(index: usize) -> NaiveDate {
    let monday = NaiveDate::from_ymd_opt(2025, 9, 1).expect("valid date");
    let week = u64::try_from(index / 5).expect("small");
    let day = u64::try_from(index % 5).expect("small");
    monday + chrono::Days::new(week * 7 + day)
}

fn session_at(index: usize) -> SessionDate {
    SessionDate {
        date: school_day(index / 2),
        session: if index.is_multiple_of(2) {
            Session::Am
        } else {
            Session::Pm
        },
    }
}

fn proto_session(session: Session) -> i32 {
    match session {
        Session::Am => ProtoSession::Am as i32,
        Session::Pm => ProtoSession::Pm as i32,
    }
}

fn next_upn() -> String {
    let serial = NEXT_PUPIL.fetch_add(1, Ordering::Relaxed);
    let mut digits = [9, 1, 9, 2, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut rest = serial;
    for digit in digits.iter_mut().rev().take(6) {
        *digit = u8::try_from(rest % 10).expect("one digit");
        rest /= 10;
    }
    Upn::from_digits(digits).to_string()
}

#[derive(Clone)]
struct Clients {
    registers: RegistersServiceClient<Channel>,
    policy: PolicyServiceClient<Channel>,
    referrals: ReferralsServiceClient<Channel>,
}

async fn connect(running: &RunningServer) -> Clients {
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    Clients {
        registers: RegistersServiceClient::new(channel.clone()),
        policy: PolicyServiceClient::new(channel.clone()),
        referrals: ReferralsServiceClient::new(channel),
    }
}

async fn set_calendar(clients: &mut Clients) {
    let calendar = Calendar {
        laestab: LAESTAB.into(),
        time_zone: "Europe/London".into(),
        am: Some(RegisterTimes {
            opens: "08:40".into(),
            closes: "09:00".into(),
        }),
        pm: Some(RegisterTimes {
            opens: "13:15".into(),
            closes: "13:30".into(),
        }),
        terms: vec![Term {
            name: "Autumn 2025".into(),
            first_day: "2025-09-01".into(),
            last_day: "2025-12-19".into(),
        }],
        closures: Vec::new(),
    };
    clients
        .registers
        .set_calendar(SetCalendarRequest {
            calendar: Some(calendar),
            changed_by: "J Smith".into(),
            changed_by_position: "Data manager".into(),
            ..Default::default()
        })
        .await
        .expect("calendar");
}

/// Batch of the present marks, one for every session on roll, taken before all the others and
/// sent first.
const BASE: usize = 3;

/// Builds the import streams of a case: every batch carries the pupils, then its marks.
fn imports(
    case: usize,
    pupils: &[(String, PupilCase)],
) -> Vec<(String, Vec<ImportRegisterRequest>)> {
    (0..=BASE)
        .map(|batch| {
            let request_id = format!("case-{case}-batch-{batch}");
            let mut messages = vec![ImportRegisterRequest {
                item: Some(Item::Header(ImportHeader {
                    request_id: request_id.clone(),
                    school: Some(School {
                        laestab: LAESTAB.into(),
                        name: "Test Academy".into(),
                        phase: Phase::Secondary as i32,
                        last_mark_date: String::new(),
                    }),
                    source: MarkSource::MisSync as i32,
                    source_name: "property test".into(),
                    recorded_by: "test".into(),
                    ..Default::default()
                })),
            }];
            let mut marks = Vec::new();
            for (upn, pupil) in pupils {
                messages.push(ImportRegisterRequest {
                    item: Some(Item::Pupil(ImportPupil {
                        pupil: Some(Pupil {
                            upn: upn.clone(),
                            forename: "Sam".into(),
                            surname: "Able".into(),
                            date_of_birth: "2013-05-01".into(),
                            sex: "F".into(),
                            enrolments: Vec::new(),
                        }),
                        admission_date: school_day(pupil.admitted).to_string(),
                        year_group: "8".into(),
                        registration: Registration::Unspecified as i32,
                        class_name: "8B".into(),
                        ..ImportPupil::default()
                    })),
                });
                if batch == BASE {
                    for session in pupil.admitted * 2..SESSIONS {
                        marks.push(mark(upn, session, "/", TAKEN_BASE - 3600));
                    }
                }
                for version in pupil.versions.iter().filter(|v| v.batch == batch) {
                    marks.push(mark(
                        upn,
                        version.session,
                        CODES[version.code],
                        TAKEN_BASE + version.taken,
                    ));
                }
            }
            messages.push(ImportRegisterRequest {
                item: Some(Item::Marks(ImportMarks { marks })),
            });
            (request_id, messages)
        })
        .collect()
}

fn mark(upn: &str, session: usize, code: &str, taken: i64) -> Mark {
    let at = session_at(session);
    Mark {
        upn: upn.to_owned(),
        date: at.date.to_string(),
        session: proto_session(at.session),
        code: code.to_owned(),
        recorded_at: Some(prost_types::Timestamp {
            seconds: taken,
            nanos: 0,
        }),
        ..Mark::default()
    }
}

/// A version as sent: when it was taken, its place in the order sent, and its code.
type Statement<'a> = ((i64, usize), &'a str);

/// Works out the expected effective code of each session on roll from what was sent. It is the
/// version taken latest, and of two taken at once the one sent later. Amendments come last.
fn expected_codes(pupil: &PupilCase, batch_order: &[usize]) -> BTreeMap<usize, String> {
    let mut statements: BTreeMap<usize, Vec<Statement<'_>>> = BTreeMap::new();
    let mut sent = 0usize;
    for session in pupil.admitted * 2..SESSIONS {
        statements
            .entry(session)
            .or_default()
            .push(((TAKEN_BASE - 3600, sent), "/"));
        sent += 1;
    }
    for &batch in batch_order {
        for version in pupil.versions.iter().filter(|v| v.batch == batch) {
            statements
                .entry(version.session)
                .or_default()
                .push(((TAKEN_BASE + version.taken, sent), CODES[version.code]));
            sent += 1;
        }
    }
    for &(session, code) in &pupil.amendments {
        statements
            .entry(session)
            .or_default()
            .push(((i64::MAX, sent), CODES[code]));
        sent += 1;
    }
    statements
        .into_iter()
        .map(|(session, list)| {
            let (_, code) = list
                .into_iter()
                .max_by_key(|(key, _)| *key)
                .expect("at least one");
            (session, code.to_owned())
        })
        .collect()
}

fn figures_of(codes: &BTreeMap<usize, String>) -> Figures {
    Figures::from_codes(codes.values().map(String::as_str))
}

fn same_figures(actual: &AttendanceFigures, expected: &Figures) -> bool {
    let count = |value: u32| i32::try_from(value).expect("small");
    actual.possible_sessions == count(expected.possible())
        && actual.attended_sessions == count(expected.attended())
        && actual.present_sessions == count(expected.present)
        && actual.approved_activity_sessions == count(expected.approved_activity)
        && actual.authorised_absence_sessions == count(expected.authorised_absence)
        && actual.unauthorised_absence_sessions == count(expected.unauthorised_absence)
        && actual.not_possible_sessions == count(expected.not_possible)
        && actual.persistent_absence == expected.is_persistent_absence()
        && actual.severe_absence == expected.is_severe_absence()
}

async fn effective_marks(
    clients: &mut Clients,
    upn: &str,
) -> Result<BTreeMap<String, String>, TestCaseError> {
    let mut found = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .registers
            .list_marks(ListMarksRequest {
                laestab: LAESTAB.into(),
                upn: upn.into(),
                from_date: String::new(),
                to_date: String::new(),
                page_size: 7,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|status| TestCaseError::fail(format!("ListMarks: {status}")))?
            .into_inner();
        for mark in page.marks {
            let key = format!("{} {}", mark.date, mark.session);
            prop_assert!(
                found.insert(key.clone(), mark.code).is_none(),
                "{key} listed twice"
            );
        }
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        page_token = page.next_page_token;
    }
}

fn session_key(index: usize) -> String {
    let at = session_at(index);
    format!("{} {}", at.date, proto_session(at.session))
}

/// Reads `name` from the pack archive.
fn pack_file(pack: &[u8], name: &str) -> Result<Vec<u8>, TestCaseError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(pack))
        .map_err(|error| TestCaseError::fail(format!("pack is not a ZIP: {error}")))?;
    let mut file = archive
        .by_name(name)
        .map_err(|error| TestCaseError::fail(format!("{name} missing from the pack: {error}")))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|error| TestCaseError::fail(error.to_string()))?;
    Ok(bytes)
}

async fn check_pack(
    clients: &mut Clients,
    upn: &str,
    expected: &BTreeMap<usize, String>,
) -> Result<(), TestCaseError> {
    let as_of = NaiveDate::from_ymd_opt(2025, 9, 19).expect("valid date");
    let dated: Vec<(SessionDate, &str)> = expected
        .iter()
        .map(|(&index, code)| (session_at(index), code.as_str()))
        .collect();
    let threshold =
        evaluate_penalty_threshold(&Policy::trust_2021().penalty_warning, &dated, as_of);
    let built = clients
        .referrals
        .build_referral_pack(BuildReferralPackRequest {
            upn: upn.into(),
            laestab: LAESTAB.into(),
            as_of: AS_OF.into(),
        })
        .await;
    let pack = match built {
        Ok(response) => response.into_inner().pack,
        Err(status) => {
            prop_assert!(
                !threshold.met,
                "pack refused although {} unauthorised sessions meet the threshold: {status}",
                threshold.counted
            );
            prop_assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            return Ok(());
        }
    };
    prop_assert!(
        threshold.met,
        "pack built with only {} unauthorised sessions",
        threshold.counted
    );

    let csv_bytes = pack_file(&pack, "attendance.csv")?;
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let mut from_csv = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|error| TestCaseError::fail(error.to_string()))?;
        from_csv.insert(
            format!("{} {}", &record[0], &record[1]),
            record[2].to_owned(),
        );
    }
    let expected_marks: BTreeMap<String, String> = expected
        .iter()
        .map(|(&index, code)| {
            let at = session_at(index);
            (format!("{} {}", at.date, at.session.as_str()), code.clone())
        })
        .collect();
    prop_assert_eq!(&from_csv, &expected_marks, "attendance.csv");

    let ctf = rollcall_ctf::read(&pack_file(&pack, "attendance-ctf.xml")?)
        .map_err(|error| TestCaseError::fail(format!("CTF extract: {error}")))?;
    let sessions = ctf
        .pupils
        .first()
        .and_then(|pupil| pupil.attendance.first())
        .and_then(|year| year.sessions.clone())
        .ok_or_else(|| TestCaseError::fail("CTF extract has no sessions"))?;
    for (&index, code) in expected {
        let at = session_at(index);
        let half = u8::from(at.session == Session::Pm);
        let position = sessions
            .session_index(at.date, half)
            .ok_or_else(|| TestCaseError::fail(format!("CTF extract lacks {}", at.date)))?;
        prop_assert_eq!(&sessions.marks[position], code, "CTF extract, {}", at.date);
    }
    Ok(())
}

async fn check_case(
    clients: &mut Clients,
    case: usize,
    pupils: Vec<PupilCase>,
    batch_order: [usize; 3],
) -> Result<(), TestCaseError> {
    let pupils: Vec<(String, PupilCase)> = pupils
        .into_iter()
        .map(|pupil| (next_upn(), pupil))
        .collect();
    let mut streams = imports(case, &pupils);
    let mut feed_cursor = 0;
    for &batch in [BASE].iter().chain(&batch_order) {
        let (request_id, messages) = std::mem::take(&mut streams[batch]);
        let imported = clients
            .registers
            .import_register(tokio_stream::iter(messages))
            .await
            .map_err(|status| TestCaseError::fail(format!("import {request_id}: {status}")))?
            .into_inner();
        feed_cursor = feed_cursor.max(imported.feed_cursor);
    }
    for (upn, pupil) in &pupils {
        for (number, &(session, code)) in pupil.amendments.iter().enumerate() {
            let at = session_at(session);
            let amended = clients
                .registers
                .amend_mark(AmendMarkRequest {
                    request_id: format!("{upn}-amendment-{number}"),
                    upn: upn.clone(),
                    laestab: LAESTAB.into(),
                    date: at.date.to_string(),
                    session: proto_session(at.session),
                    code: CODES[code].into(),
                    minutes_late: 0,
                    reason: "Corrected after a phone call".into(),
                    recorded_by: "A Jones".into(),
                    recorded_by_position: "Attendance officer".into(),
                    source: MarkSource::Staff as i32,
                    absence_report_id: String::new(),
                })
                .await
                .map_err(|status| TestCaseError::fail(format!("amend: {status}")))?
                .into_inner();
            if let Some(mark) = amended.mark {
                feed_cursor = feed_cursor.max(mark.sequence);
            }
        }
    }
    check_kept_totals(clients, feed_cursor).await?;

    let school = clients
        .policy
        .get_school_attendance(GetSchoolAttendanceRequest {
            laestab: LAESTAB.into(),
            as_of: AS_OF.into(),
        })
        .await
        .map_err(|status| TestCaseError::fail(format!("school figures: {status}")))?
        .into_inner();

    let mut registers_by_session: Vec<BTreeMap<String, String>> = Vec::new();
    for index in 0..SESSIONS {
        let at = session_at(index);
        let entries = clients
            .registers
            .get_session_register(GetSessionRegisterRequest {
                laestab: LAESTAB.into(),
                date: at.date.to_string(),
                session: proto_session(at.session),
                year_group: String::new(),
                class_name: String::new(),
            })
            .await
            .map_err(|status| TestCaseError::fail(format!("register: {status}")))?
            .into_inner()
            .entries;
        registers_by_session.push(
            entries
                .into_iter()
                .map(|entry| {
                    (
                        entry.upn,
                        entry.mark.map(|mark| mark.code).unwrap_or_default(),
                    )
                })
                .collect(),
        );
    }

    for (upn, pupil) in &pupils {
        let expected = expected_codes(pupil, &batch_order);
        let on_roll = SESSIONS - pupil.admitted * 2;
        prop_assert_eq!(expected.len(), on_roll, "every session on roll has a mark");

        // The registers' effective marks.
        let listed = effective_marks(clients, upn).await?;
        let expected_marks: BTreeMap<String, String> = expected
            .iter()
            .map(|(&index, code)| (session_key(index), code.clone()))
            .collect();
        prop_assert_eq!(&listed, &expected_marks, "ListMarks for {}", upn);

        for (&index, code) in &expected {
            // The version history, under the domain's rule.
            let at = session_at(index);
            let versions = clients
                .registers
                .list_mark_versions(ListMarkVersionsRequest {
                    upn: upn.clone(),
                    laestab: LAESTAB.into(),
                    date: at.date.to_string(),
                    session: proto_session(at.session),
                })
                .await
                .map_err(|status| TestCaseError::fail(format!("versions: {status}")))?
                .into_inner()
                .versions;
            let keys: Vec<VersionKey> = versions
                .iter()
                .map(|version| {
                    let mark = version.mark.clone().unwrap_or_default();
                    let taken = mark.recorded_at.unwrap_or_default();
                    VersionKey {
                        recorded_at: DateTime::<Utc>::from_timestamp(taken.seconds, 0)
                            .unwrap_or_default(),
                        sequence: mark.sequence,
                    }
                })
                .collect();
            let chosen = effective_index(&keys)
                .ok_or_else(|| TestCaseError::fail(format!("no versions for {}", at.date)))?;
            let flagged: Vec<usize> = versions
                .iter()
                .enumerate()
                .filter(|(_, version)| version.effective)
                .map(|(position, _)| position)
                .collect();
            prop_assert_eq!(&flagged, &vec![chosen], "{} {:?}", at.date, at.session);
            let chosen_code = versions[chosen]
                .mark
                .as_ref()
                .map(|mark| mark.code.clone())
                .unwrap_or_default();
            prop_assert_eq!(
                &chosen_code,
                code,
                "history of {} {:?}",
                at.date,
                at.session
            );

            // The session register.
            prop_assert_eq!(
                registers_by_session[index].get(upn),
                Some(code),
                "register of {} {:?}",
                at.date,
                at.session
            );
        }
        for (index, register) in registers_by_session.iter().enumerate() {
            if index < pupil.admitted * 2 {
                prop_assert!(
                    !register.contains_key(upn),
                    "{} is listed before joining",
                    upn
                );
            }
        }

        // The policy service's figures, for the pupil and in the school's list.
        let figures = figures_of(&expected);
        let pupil_figures = clients
            .policy
            .get_pupil_attendance(GetPupilAttendanceRequest {
                upn: upn.clone(),
                laestab: LAESTAB.into(),
                as_of: AS_OF.into(),
            })
            .await
            .map_err(|status| TestCaseError::fail(format!("pupil figures: {status}")))?
            .into_inner()
            .attendance
            .and_then(|attendance| attendance.figures)
            .unwrap_or_default();
        prop_assert!(
            same_figures(&pupil_figures, &figures),
            "pupil figures {:?}, expected {:?}",
            pupil_figures,
            figures
        );
        let in_school = school
            .pupils
            .iter()
            .find(|entry| &entry.upn == upn)
            .and_then(|entry| entry.figures)
            .unwrap_or_default();
        prop_assert!(
            same_figures(&in_school, &figures),
            "school figures {:?}, expected {:?}",
            in_school,
            figures
        );

        // The categories partition the sessions on roll, and absence is authorised plus
        // unauthorised.
        let partition = pupil_figures.present_sessions
            + pupil_figures.approved_activity_sessions
            + pupil_figures.authorised_absence_sessions
            + pupil_figures.unauthorised_absence_sessions
            + pupil_figures.not_possible_sessions;
        prop_assert_eq!(
            usize::try_from(partition).unwrap_or_default(),
            on_roll,
            "sessions on roll"
        );
        prop_assert_eq!(
            pupil_figures.possible_sessions - pupil_figures.attended_sessions,
            pupil_figures.authorised_absence_sessions + pupil_figures.unauthorised_absence_sessions
        );

        // The referral pack: built exactly when the threshold is met, with the same marks.
        check_pack(clients, upn, &expected).await?;
    }
    Ok(())
}

/// Waits for the policy service to follow the feed to `feed_cursor`, then checks that the
/// totals it kept incrementally equal a recomputation from the registers.
async fn check_kept_totals(clients: &mut Clients, feed_cursor: i64) -> Result<(), TestCaseError> {
    for _ in 0..1200 {
        let state = clients
            .policy
            .get_sync_state(GetSyncStateRequest {})
            .await
            .map_err(|status| TestCaseError::fail(format!("sync state: {status}")))?
            .into_inner();
        if state.registers_cursor >= feed_cursor {
            let checked = clients
                .policy
                .check_aggregates(CheckAggregatesRequest {
                    laestab: LAESTAB.into(),
                    as_of: AS_OF.into(),
                })
                .await
                .map_err(|status| TestCaseError::fail(format!("check: {status}")))?
                .into_inner();
            prop_assert!(checked.pupils_checked > 0);
            prop_assert!(
                checked.mismatches.is_empty(),
                "kept totals differ: {:?}",
                checked.mismatches
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    Err(TestCaseError::fail(format!(
        "the policy service did not reach feed position {feed_cursor}"
    )))
}

fn run(database_url: Option<String>, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let work = tempfile::tempdir().expect("temp dir");
    let (running, clients) = runtime.block_on(async {
        let config = ServerConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            work.path().join("data"),
            database_url.as_deref(),
        )
        .expect("config");
        let running = server::start(config).await.expect("server starts");
        let mut clients = connect(&running).await;
        // The school comes with its first import; its calendar follows.
        let (_, setup) = imports(usize::MAX, &[]).swap_remove(0);
        clients
            .registers
            .import_register(tokio_stream::iter(setup))
            .await
            .expect("school");
        set_calendar(&mut clients).await;
        (running, clients)
    });

    let strategy = (
        prop::collection::vec(pupil_case(), 1..4),
        Just(vec![0usize, 1, 2]).prop_shuffle(),
    );
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let case = AtomicU32::new(0);
    let outcome = runner.run(&strategy, |(pupils, order)| {
        let number = case.fetch_add(1, Ordering::Relaxed);
        let mut clients = clients.clone();
        let order = [order[0], order[1], order[2]];
        runtime.block_on(check_case(
            &mut clients,
            usize::try_from(number).expect("small"),
            pupils,
            order,
        ))
    });
    runtime.block_on(running.stop()).expect("server stops");
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

#[test]
fn one_effective_mark_everywhere_on_sqlite() {
    run(None, 12);
}

#[test]
fn one_effective_mark_everywhere_on_postgres() {
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            rollcall_testkit::postgres()
                .await
                .expect("PostgreSQL")
                .create_database()
                .await
                .expect("database")
        });
    run(Some(url), 6);
}
