//! A pupil's UPN changing on a real server: the MIS sync replacing a temporary UPN with the
//! permanent one, and staff merging two records of one child with `rollcall pupil change-upn`.
//! The pupil's history must follow to the new UPN in every service, with nothing left under the
//! old UPN and nothing duplicated. Each scenario runs on SQLite and on PostgreSQL.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{cli, cli_error};
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::cases::v1::{
    Case, CaseStatus, GetCaseTimelineRequest, GetSyncStateRequest as CasesSyncRequest,
    ListCasesRequest,
};
use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::mis_adapter::v1::{
    ListPupilIdsRequest, RowOutcome, RowResult, SyncMark, SyncMarksRequest, SyncPupil,
    SyncPupilsRequest,
};
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::policy::v1::{
    CheckAggregatesRequest, GetPupilAttendanceRequest, GetSchoolAttendanceRequest,
    GetSyncStateRequest as PolicySyncRequest, Trigger, TriggerKind, TriggerState,
    WatchTriggersRequest,
};
use rollcall_api::referrals::v1::referrals_service_client::ReferralsServiceClient;
use rollcall_api::referrals::v1::{CreateReferralRequest, ListReferralsRequest};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    AbsenceReport, ChangeUpnRequest, CheckKind, Contact, ContactChannel, GetPupilRequest,
    LessonMark, ListAbsenceReportsRequest, ListMarkVersionsRequest, ListMarksRequest,
    ListPupilContactsRequest, ListTruancyFlagsRequest, ListUpnChangesRequest, Mark, PupilContacts,
    RecordAbsenceReportRequest, RecordLessonCheckRequest, ReportChannel, SetPupilContactsRequest,
    UpnChange,
};
use rollcall_api::types::v1::{MarkSource, Phase, Session};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use tonic::Code;
use tonic::transport::Channel;

const SCHOOL: &str = "9192001";

/// The school days of the test: Monday 1 to Friday 12 September 2025.
const DAYS: [&str; 10] = [
    "2025-09-01",
    "2025-09-02",
    "2025-09-03",
    "2025-09-04",
    "2025-09-05",
    "2025-09-08",
    "2025-09-09",
    "2025-09-10",
    "2025-09-11",
    "2025-09-12",
];

macro_rules! on_both_databases {
    ($scenario:ident, $on_sqlite:ident, $on_postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            let work = tempfile::tempdir().expect("temporary folder");
            $scenario(work.path(), None).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            let url = rollcall_testkit::postgres()
                .await
                .expect("PostgreSQL for the tests")
                .create_database()
                .await
                .expect("database");
            let work = tempfile::tempdir().expect("temporary folder");
            $scenario(work.path(), Some(&url)).await;
        }
    };
}

/// Returns a permanent UPN: a check letter and twelve digits.
fn permanent(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 4, serial]).to_string()
}

/// Returns a temporary UPN ending in `last`: the check letter that fits, eleven digits, then
/// `last`.
fn temporary(last: char) -> String {
    ('A'..='Z')
        .map(|first| format!("{first}91920012500{last}"))
        .find(|candidate| Upn::parse(candidate).is_ok())
        .expect("one check letter fits")
}

struct Clients {
    sync: MisSyncServiceClient<Channel>,
    registers: RegistersServiceClient<Channel>,
    policy: PolicyServiceClient<Channel>,
    cases: CasesServiceClient<Channel>,
    referrals: ReferralsServiceClient<Channel>,
}

async fn start(work: &Path, database_url: Option<&str>) -> (RunningServer, Clients) {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    let running = server::start(config).await.expect("server starts");
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    let clients = Clients {
        sync: MisSyncServiceClient::new(channel.clone()),
        registers: RegistersServiceClient::new(channel.clone()),
        policy: PolicyServiceClient::new(channel.clone()),
        cases: CasesServiceClient::new(channel.clone()),
        referrals: ReferralsServiceClient::new(channel),
    };
    (running, clients)
}

fn pupil(mis_id: &str, upn: &str) -> SyncPupil {
    SyncPupil {
        mis_id: mis_id.into(),
        upn: upn.into(),
        forename: "Robin".into(),
        surname: format!("Pupil {mis_id}"),
        date_of_birth: "2012-03-01".into(),
        sex: "F".into(),
        admission_date: "2025-09-01".into(),
        year_group: "8".into(),
        class_name: "8B".into(),
        ..SyncPupil::default()
    }
}

fn pupils_batch(key: &str, pupils: Vec<SyncPupil>) -> SyncPupilsRequest {
    SyncPupilsRequest {
        laestab: SCHOOL.into(),
        school_name: "Test Academy".into(),
        phase: Phase::Secondary as i32,
        idempotency_key: key.into(),
        source_name: "Example MIS 4.2".into(),
        dry_run: false,
        pupils,
    }
}

/// Marks for `mis_id` on `days`, both sessions, with `code`.
fn marks(mis_id: &str, days: &[&str], code: &str) -> Vec<SyncMark> {
    days.iter()
        .flat_map(|day| {
            [Session::Am, Session::Pm].map(|session| SyncMark {
                mis_id: mis_id.into(),
                date: (*day).into(),
                session: session as i32,
                code: code.into(),
                ..SyncMark::default()
            })
        })
        .collect()
}

fn marks_batch(key: &str, marks: Vec<SyncMark>) -> SyncMarksRequest {
    SyncMarksRequest {
        laestab: SCHOOL.into(),
        idempotency_key: key.into(),
        source_name: "Example MIS 4.2".into(),
        dry_run: false,
        marks,
    }
}

/// Returns each row's outcome and reason code, in row order.
fn outcomes(results: &[RowResult]) -> Vec<(RowOutcome, String)> {
    results
        .iter()
        .map(|result| (result.outcome(), result.reason_code.clone()))
        .collect()
}

async fn sync_marks(clients: &mut Clients, key: &str, marks: Vec<SyncMark>) -> i64 {
    let response = clients
        .sync
        .sync_marks(marks_batch(key, marks))
        .await
        .expect("marks batch")
        .into_inner();
    let counts = response.counts.expect("counts");
    assert_eq!(counts.rejected, 0, "{:?}", response.results);
    response.feed_cursor
}

/// Waits until the policy service has evaluated the registers' change feed up to `cursor` and
/// applied UPN changes up to `upn_change`, and the cases service has acted on every trigger
/// and applied the same UPN changes.
async fn wait_for_services(clients: &mut Clients, cursor: i64, upn_change: i64) {
    for _ in 0..1_200 {
        let policy = clients
            .policy
            .get_sync_state(PolicySyncRequest {})
            .await
            .expect("policy sync state")
            .into_inner();
        let cases = clients
            .cases
            .get_sync_state(CasesSyncRequest {})
            .await
            .expect("cases sync state")
            .into_inner();
        if policy.registers_cursor >= cursor
            && policy.upn_change_cursor >= upn_change
            && cases.upn_change_cursor >= upn_change
            && cases.trigger_cursor >= policy.trigger_cursor
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the services did not reach feed position {cursor} and UPN change {upn_change}");
}

async fn upn_changes(registers: &mut RegistersServiceClient<Channel>) -> Vec<UpnChange> {
    registers
        .list_upn_changes(ListUpnChangesRequest {
            after_id: 0,
            limit: 0,
        })
        .await
        .expect("UPN changes")
        .into_inner()
        .changes
}

async fn marks_of(registers: &mut RegistersServiceClient<Channel>, upn: &str) -> Vec<Mark> {
    registers
        .list_marks(ListMarksRequest {
            laestab: SCHOOL.into(),
            upn: upn.into(),
            page_size: 1_000,
            ..ListMarksRequest::default()
        })
        .await
        .expect("marks")
        .into_inner()
        .marks
}

/// Lists the school's cases with `status`, or those open or under review for unspecified.
async fn cases_of(cases: &mut CasesServiceClient<Channel>, status: CaseStatus) -> Vec<Case> {
    cases
        .list_cases(ListCasesRequest {
            laestab: SCHOOL.into(),
            status: status as i32,
            ..ListCasesRequest::default()
        })
        .await
        .expect("cases")
        .into_inner()
        .cases
}

/// Returns every trigger policy has recorded, in feed order.
async fn triggers(policy: &mut PolicyServiceClient<Channel>) -> Vec<Trigger> {
    let head = policy
        .get_sync_state(PolicySyncRequest {})
        .await
        .expect("sync state")
        .into_inner()
        .trigger_cursor;
    let mut found = Vec::new();
    if head == 0 {
        return found;
    }
    let mut stream = policy
        .watch_triggers(WatchTriggersRequest { cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    while let Some(message) = stream.message().await.expect("trigger") {
        found.extend(message.trigger);
        if message.cursor >= head {
            break;
        }
    }
    found
}

async fn mis_ids(sync: &mut MisSyncServiceClient<Channel>) -> Vec<(String, String)> {
    sync.list_pupil_ids(ListPupilIdsRequest {
        laestab: SCHOOL.into(),
        ..ListPupilIdsRequest::default()
    })
    .await
    .expect("MIS ids")
    .into_inner()
    .ids
    .into_iter()
    .map(|id| (id.mis_id, id.upn))
    .collect()
}

async fn temporary_upn_replaced_everywhere(work: &Path, database_url: Option<&str>) {
    let (running, mut clients) = start(work, database_url).await;
    let old = temporary('D');
    let new = permanent(1);

    // The MIS sends the pupil with a temporary UPN, under two MIS ids, with a classmate.
    let first = clients
        .sync
        .sync_pupils(pupils_batch(
            "pupils-1",
            vec![
                pupil("m1", &old),
                SyncPupil {
                    mis_id: "m1-old-id".into(),
                    ..pupil("m1", &old)
                },
                pupil("m2", &permanent(2)),
            ],
        ))
        .await
        .expect("pupils batch")
        .into_inner();
    assert_eq!(first.counts.expect("counts").rejected, 0);
    let mut week = marks("m1", &DAYS[..8], "O");
    week.extend(marks("m1", &DAYS[8..], "/"));
    week.extend(marks("m2", &DAYS, "/"));
    let cursor = sync_marks(&mut clients, "marks-1", week).await;
    clients
        .registers
        .record_absence_report(RecordAbsenceReportRequest {
            request_id: "report-1".into(),
            report: Some(AbsenceReport {
                laestab: SCHOOL.into(),
                upn: old.clone(),
                channel: ReportChannel::AbsenceLine as i32,
                reported_by: "Parent".into(),
                relationship: "Mother".into(),
                reason: "Unwell".into(),
                reported_at: Some(prost_types::Timestamp {
                    seconds: 1_757_318_400,
                    nanos: 0,
                }),
                first_date: "2025-09-08".into(),
                first_session: Session::Am as i32,
                last_date: "2025-09-08".into(),
                last_session: Session::Pm as i32,
                ..AbsenceReport::default()
            }),
        })
        .await
        .expect("absence report");
    clients
        .registers
        .set_pupil_contacts(SetPupilContactsRequest {
            pupils: vec![PupilContacts {
                upn: old.clone(),
                contacts: vec![Contact {
                    priority: 1,
                    name: "Mrs Pupil".into(),
                    relationship: "Mother".into(),
                    parental_responsibility: true,
                    address_lines: vec!["1 Mill Lane".into(), "Hitchin".into()],
                    postcode: "SG5 1AA".into(),
                    preferred_channel: ContactChannel::Letter as i32,
                    ..Contact::default()
                }],
            }],
        })
        .await
        .expect("contacts");
    let check = clients
        .registers
        .record_lesson_check(RecordLessonCheckRequest {
            request_id: "check-1".into(),
            laestab: SCHOOL.into(),
            date: DAYS[8].into(),
            session: Session::Am as i32,
            kind: CheckKind::Lesson as i32,
            label: "Year 8 maths, period 2".into(),
            taken_at: Some(prost_types::Timestamp {
                seconds: 1_757_584_800,
                nanos: 0,
            }),
            recorded_by: "T Brown".into(),
            recorded_by_position: "Teacher".into(),
            marks: vec![LessonMark {
                upn: old.clone(),
                present: false,
            }],
        })
        .await
        .expect("lesson check")
        .into_inner();
    assert_eq!(
        check.flags.len(),
        1,
        "present at registration, absent at the lesson"
    );
    wait_for_services(&mut clients, cursor, 0).await;

    // Absent for 16 of 20 sessions: a case opens, and the school drafts a referral.
    let case = cases_of(&mut clients.cases, CaseStatus::Unspecified)
        .await
        .into_iter()
        .find(|case| case.upn == old)
        .expect("a case under the temporary UPN");
    let referral = clients
        .referrals
        .create_referral(CreateReferralRequest {
            upn: old.clone(),
            laestab: SCHOOL.into(),
            kind: "attendance_officer".into(),
            created_by: "A Lead".into(),
            request_id: "referral-1".into(),
            ..CreateReferralRequest::default()
        })
        .await
        .expect("draft referral")
        .into_inner()
        .referral
        .expect("referral");
    assert_eq!(referral.upn, old);
    let versions_before = clients
        .registers
        .list_mark_versions(ListMarkVersionsRequest {
            upn: old.clone(),
            laestab: SCHOOL.into(),
            date: DAYS[0].into(),
            session: Session::Am as i32,
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;

    // The MIS now sends the permanent UPN for m1.
    let replacing = pupils_batch("pupils-2", vec![pupil("m1", &new)]);
    let response = clients
        .sync
        .sync_pupils(replacing.clone())
        .await
        .expect("replacing batch")
        .into_inner();
    assert_eq!(
        outcomes(&response.results),
        vec![(RowOutcome::Applied, String::new())]
    );
    assert_eq!(
        response.results[0].note,
        format!("UPN {old} replaced by {new}, with the pupil's history")
    );
    let changes = upn_changes(&mut clients.registers).await;
    assert_eq!(changes.len(), 1);
    let change = changes[0].clone();
    assert_eq!(
        (change.from_upn.as_str(), change.to_upn.as_str()),
        (old.as_str(), new.as_str())
    );
    assert_eq!(change.source(), MarkSource::MisSync);
    assert!(!change.merged);
    let moved = change.moved.expect("counts");
    assert_eq!(moved.mark_versions, 20);
    assert_eq!(moved.sessions, 20);
    assert_eq!(moved.enrolments, 1);
    assert_eq!(moved.absence_reports, 1);
    assert_eq!(moved.contacts, 1);
    assert_eq!(moved.lesson_marks, 1);
    assert_eq!(moved.truancy_flags, 1);

    // The registers hold everything under the new UPN, with every version as it was.
    let missing = clients
        .registers
        .get_pupil(GetPupilRequest { upn: old.clone() })
        .await
        .expect_err("old UPN gone");
    assert_eq!(missing.code(), Code::NotFound);
    let pupil_now = clients
        .registers
        .get_pupil(GetPupilRequest { upn: new.clone() })
        .await
        .expect("new UPN")
        .into_inner()
        .pupil
        .expect("pupil");
    assert_eq!(pupil_now.surname, "Pupil m1");
    assert_eq!(pupil_now.enrolments.len(), 1);
    assert_eq!(marks_of(&mut clients.registers, &new).await.len(), 20);
    assert!(marks_of(&mut clients.registers, &old).await.is_empty());
    let versions_after = clients
        .registers
        .list_mark_versions(ListMarkVersionsRequest {
            upn: new.clone(),
            laestab: SCHOOL.into(),
            date: DAYS[0].into(),
            session: Session::Am as i32,
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(versions_after.len(), versions_before.len());
    let sequences = |versions: &[rollcall_api::registers::v1::MarkVersion]| -> Vec<i64> {
        versions
            .iter()
            .filter_map(|version| version.mark.as_ref().map(|mark| mark.sequence))
            .collect()
    };
    assert_eq!(
        sequences(&versions_after),
        sequences(&versions_before),
        "no new versions"
    );
    let reports = |upn: &str| ListAbsenceReportsRequest {
        laestab: SCHOOL.into(),
        upn: upn.into(),
        ..ListAbsenceReportsRequest::default()
    };
    let moved_reports = clients
        .registers
        .list_absence_reports(reports(&new))
        .await
        .expect("reports")
        .into_inner()
        .reports;
    assert_eq!(moved_reports.len(), 1);
    let left_reports = clients
        .registers
        .list_absence_reports(reports(&old))
        .await
        .expect("reports")
        .into_inner()
        .reports;
    assert!(left_reports.is_empty());
    let flags = clients
        .registers
        .list_truancy_flags(ListTruancyFlagsRequest {
            laestab: SCHOOL.into(),
            ..ListTruancyFlagsRequest::default()
        })
        .await
        .expect("truancy flags")
        .into_inner()
        .flags;
    let flagged: Vec<&str> = flags.iter().map(|flag| flag.upn.as_str()).collect();
    assert_eq!(flagged, [new.as_str()]);
    let contacts = clients
        .registers
        .list_pupil_contacts(ListPupilContactsRequest { upn: new.clone() })
        .await
        .expect("contacts")
        .into_inner()
        .contacts;
    assert_eq!(contacts.len(), 1);

    // Policy: the kept marks and totals agree with the registers under the new UPN, and every
    // trigger names it.
    wait_for_services(&mut clients, cursor, change.id).await;
    let check = clients
        .policy
        .check_aggregates(CheckAggregatesRequest {
            laestab: SCHOOL.into(),
            as_of: String::new(),
        })
        .await
        .expect("check aggregates")
        .into_inner();
    assert_eq!(check.pupils_checked, 2);
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
    let attendance = clients
        .policy
        .get_pupil_attendance(GetPupilAttendanceRequest {
            upn: new.clone(),
            ..GetPupilAttendanceRequest::default()
        })
        .await
        .expect("attendance")
        .into_inner()
        .attendance
        .expect("attendance");
    let figures = attendance.figures.expect("figures");
    assert_eq!(figures.possible_sessions, 20);
    assert_eq!(figures.unauthorised_absence_sessions, 16);
    let school = clients
        .policy
        .get_school_attendance(GetSchoolAttendanceRequest {
            laestab: SCHOOL.into(),
            as_of: String::new(),
        })
        .await
        .expect("school attendance")
        .into_inner();
    let listed: Vec<&str> = school.pupils.iter().map(|p| p.upn.as_str()).collect();
    assert!(listed.contains(&new.as_str()), "{listed:?}");
    assert!(!listed.contains(&old.as_str()), "{listed:?}");
    let recorded = triggers(&mut clients.policy).await;
    assert!(recorded.iter().all(|trigger| trigger.upn != old));
    let raised: Vec<&Trigger> = recorded
        .iter()
        .filter(|trigger| {
            trigger.upn == new
                && trigger.kind() == TriggerKind::PersistentAbsence
                && trigger.state() == TriggerState::Raised
        })
        .collect();
    assert_eq!(raised.len(), 1, "raised once, under the old UPN, and moved");

    // Cases: the same case, under the new UPN, with nothing left under the old one.
    let cases = cases_of(&mut clients.cases, CaseStatus::Unspecified).await;
    assert!(cases.iter().all(|case| case.upn != old));
    let moved_case = cases
        .iter()
        .find(|moved| moved.id == case.id)
        .expect("the case");
    assert_eq!(moved_case.upn, new);
    assert_eq!(moved_case.status(), CaseStatus::Open);
    assert_eq!(
        cases.iter().filter(|case| case.upn == new).count(),
        1,
        "no second case"
    );

    // Referrals and the MIS adapter follow on their own; wait for them.
    let mut followed = false;
    for _ in 0..600 {
        let referrals = clients
            .referrals
            .list_referrals(ListReferralsRequest {
                upn: new.clone(),
                ..ListReferralsRequest::default()
            })
            .await
            .expect("referrals")
            .into_inner()
            .referrals;
        let ids = mis_ids(&mut clients.sync).await;
        if referrals.len() == 1 && ids.iter().all(|(_, upn)| *upn != old) {
            assert_eq!(referrals[0].id, referral.id);
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(followed, "referrals and MIS ids did not move to {new}");
    let left = clients
        .referrals
        .list_referrals(ListReferralsRequest {
            upn: old.clone(),
            ..ListReferralsRequest::default()
        })
        .await
        .expect("referrals")
        .into_inner()
        .referrals;
    assert!(left.is_empty());
    assert_eq!(
        mis_ids(&mut clients.sync).await,
        vec![
            ("m1".to_owned(), new.clone()),
            ("m1-old-id".to_owned(), new.clone()),
            ("m2".to_owned(), permanent(2)),
        ]
    );

    // The same batch again is a replay, and the same rows under a new key change nothing.
    let replay = clients
        .sync
        .sync_pupils(replacing)
        .await
        .expect("replay")
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.results, response.results);
    let again = clients
        .sync
        .sync_pupils(pupils_batch("pupils-3", vec![pupil("m1", &new)]))
        .await
        .expect("same rows")
        .into_inner();
    assert_eq!(
        outcomes(&again.results),
        vec![(RowOutcome::Unchanged, String::new())]
    );
    assert_eq!(upn_changes(&mut clients.registers).await.len(), 1);
    assert_eq!(marks_of(&mut clients.registers, &new).await.len(), 20);

    // The registers reject the old UPN when it is sent again.
    let back = clients
        .sync
        .sync_pupils(pupils_batch("pupils-4", vec![pupil("m9", &old)]))
        .await
        .expect("old UPN again")
        .into_inner();
    assert_eq!(
        outcomes(&back.results),
        vec![(RowOutcome::Rejected, "upn_replaced".to_owned())]
    );
    assert!(
        back.results[0].reason.contains(&new),
        "{}",
        back.results[0].reason
    );

    // A permanent UPN is not replaced through the sync API, and the reason names the command
    // staff run instead.
    let permanent_change = clients
        .sync
        .sync_pupils(pupils_batch("pupils-5", vec![pupil("m1", &permanent(3))]))
        .await
        .expect("another permanent UPN")
        .into_inner();
    assert_eq!(
        outcomes(&permanent_change.results),
        vec![(RowOutcome::Rejected, "upn_changed".to_owned())]
    );
    assert!(
        permanent_change.results[0]
            .reason
            .contains("rollcall pupil change-upn"),
        "{}",
        permanent_change.results[0].reason
    );
    assert_eq!(upn_changes(&mut clients.registers).await.len(), 1);

    running.stop().await.expect("stops");
}

on_both_databases!(
    temporary_upn_replaced_everywhere,
    replaced_on_sqlite,
    replaced_on_postgres
);

async fn records_merge_unless_sessions_clash(work: &Path, database_url: Option<&str>) {
    let (running, mut clients) = start(work, database_url).await;
    let url = running.url();

    // Pupil A was entered twice, under a temporary and a permanent UPN, and marked under each
    // on different days. Pupil B was entered twice too, with marks under both for one session.
    let (a_old, a_new) = (temporary('E'), permanent(5));
    let (b_old, b_new) = (temporary('F'), permanent(6));
    clients
        .sync
        .sync_pupils(pupils_batch(
            "pupils-1",
            vec![
                pupil("a1", &a_old),
                pupil("a2", &a_new),
                pupil("b1", &b_old),
                pupil("b2", &b_new),
            ],
        ))
        .await
        .expect("pupils");
    let mut sent = marks("a1", &DAYS[..5], "O");
    sent.extend(marks("a2", &DAYS[5..], "O"));
    sent.extend(marks("b1", &DAYS[..2], "/"));
    sent.extend(marks("b2", &DAYS[1..3], "/"));
    let cursor = sync_marks(&mut clients, "marks-1", sent).await;
    wait_for_services(&mut clients, cursor, 0).await;
    let a_cases: Vec<Case> = cases_of(&mut clients.cases, CaseStatus::Unspecified)
        .await
        .into_iter()
        .filter(|case| case.upn == a_old || case.upn == a_new)
        .collect();
    assert_eq!(a_cases.len(), 2, "one case per record of pupil A");

    // Pupil B's records both have a mark for 2 September: the merge is rejected, through the
    // sync API and directly, and nothing changes.
    let rejected = clients
        .sync
        .sync_pupils(pupils_batch("pupils-2", vec![pupil("b1", &b_new)]))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        outcomes(&rejected.results),
        vec![(RowOutcome::Rejected, "upn_change_rejected".to_owned())]
    );
    assert!(
        rejected.results[0].reason.contains("2025-09-02 AM"),
        "{}",
        rejected.results[0].reason
    );
    let error = clients
        .registers
        .change_upn(ChangeUpnRequest {
            request_id: "merge-b".into(),
            from_upn: b_old.clone(),
            to_upn: b_new.clone(),
            reason: "Entered twice".into(),
            recorded_by: "A Lead".into(),
            source: MarkSource::Staff as i32,
        })
        .await
        .expect_err("sessions clash");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("2025-09-02 AM"),
        "{}",
        error.message()
    );
    assert!(upn_changes(&mut clients.registers).await.is_empty());
    assert_eq!(marks_of(&mut clients.registers, &b_old).await.len(), 4);
    assert_eq!(marks_of(&mut clients.registers, &b_new).await.len(), 4);
    assert!(
        mis_ids(&mut clients.sync)
            .await
            .contains(&("b1".to_owned(), b_old.clone()))
    );

    // Invalid and unknown UPNs are named.
    let invalid = cli_error(
        &url,
        &[
            "pupil",
            "change-upn",
            "--from",
            "A123",
            "--to",
            &a_new,
            "--reason",
            "Entered twice",
        ],
    )
    .await;
    assert!(invalid.contains("invalid from_upn \"A123\""), "{invalid}");
    let unknown = cli_error(
        &url,
        &[
            "pupil",
            "change-upn",
            "--from",
            &permanent(9),
            "--to",
            &a_new,
            "--reason",
            "Entered twice",
        ],
    )
    .await;
    assert!(
        unknown.contains(&format!("pupil {} not found", permanent(9))),
        "{unknown}"
    );

    // Staff merge pupil A's records: the marks join, the two enrolments become one, and each
    // service keeps one live record of the pupil.
    let merge = [
        "pupil",
        "change-upn",
        "--from",
        a_old.as_str(),
        "--to",
        a_new.as_str(),
        "--reason",
        "Entered twice",
        "--by",
        "A Lead",
    ];
    let printed = cli(&url, &merge).await;
    assert!(
        printed.contains(&format!(
            "Merged pupil {a_old} into pupil {a_new} (change 1)."
        )),
        "{printed}"
    );
    assert!(
        printed.contains("Moved: 10 mark versions, 10 sessions with a mark, 1 enrolment,"),
        "{printed}"
    );
    let again = cli(&url, &merge).await;
    assert!(
        again.contains(&format!(
            "UPN {a_old} was already changed to {a_new} (change 1)"
        )),
        "{again}"
    );
    let changes = upn_changes(&mut clients.registers).await;
    assert_eq!(changes.len(), 1);
    assert!(changes[0].merged);
    assert_eq!(changes[0].source(), MarkSource::Staff);
    assert_eq!(changes[0].recorded_by, "A Lead");
    assert_eq!(marks_of(&mut clients.registers, &a_new).await.len(), 20);
    assert!(marks_of(&mut clients.registers, &a_old).await.is_empty());
    let merged = clients
        .registers
        .get_pupil(GetPupilRequest { upn: a_new.clone() })
        .await
        .expect("pupil")
        .into_inner()
        .pupil
        .expect("pupil");
    assert_eq!(merged.enrolments.len(), 1, "{:?}", merged.enrolments);

    wait_for_services(&mut clients, cursor, changes[0].id).await;
    let check = clients
        .policy
        .check_aggregates(CheckAggregatesRequest {
            laestab: SCHOOL.into(),
            as_of: String::new(),
        })
        .await
        .expect("check aggregates")
        .into_inner();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
    let figures = clients
        .policy
        .get_pupil_attendance(GetPupilAttendanceRequest {
            upn: a_new.clone(),
            ..GetPupilAttendanceRequest::default()
        })
        .await
        .expect("attendance")
        .into_inner()
        .attendance
        .and_then(|attendance| attendance.figures)
        .expect("figures");
    assert_eq!(figures.possible_sessions, 20);
    assert_eq!(figures.unauthorised_absence_sessions, 20);
    assert!(
        triggers(&mut clients.policy)
            .await
            .iter()
            .all(|trigger| trigger.upn != a_old)
    );

    let pupil_a = |case: &Case| case.upn == a_old || case.upn == a_new;
    let live: Vec<Case> = cases_of(&mut clients.cases, CaseStatus::Unspecified)
        .await
        .into_iter()
        .filter(pupil_a)
        .collect();
    assert_eq!(live.len(), 1, "one live case per concern: {live:?}");
    assert_eq!(live[0].upn, a_new);
    let closed: Vec<Case> = cases_of(&mut clients.cases, CaseStatus::Closed)
        .await
        .into_iter()
        .filter(pupil_a)
        .collect();
    assert_eq!(
        closed.len(),
        1,
        "the other case is kept, closed: {closed:?}"
    );
    let closed = &closed[0];
    assert_eq!(closed.upn, a_new);
    let entries = clients
        .cases
        .get_case_timeline(GetCaseTimelineRequest {
            case_id: closed.id.clone(),
        })
        .await
        .expect("timeline")
        .into_inner()
        .entries;
    let closing = entries.last().expect("the closing entry");
    assert_eq!(closing.kind, "closed");
    assert_eq!(closing.by, "rollcall");
    assert!(closing.detail.contains(&live[0].id), "{}", closing.detail);

    running.stop().await.expect("stops");
}

on_both_databases!(
    records_merge_unless_sessions_clash,
    merges_on_sqlite,
    merges_on_postgres
);
