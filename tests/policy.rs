//! The policy service on a real server: policy files loaded and refused, a school moving to the
//! statutory framework from a date, decisions on absence recorded in the register, and the
//! triggers that follow. The `rollcall policy` commands are run as a user would.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::policy::v1::{
    AssignPolicyRequest, DecideAbsenceRequest, GetAttendanceStatisticsRequest,
    GetAttendanceStatisticsResponse, GetPenaltyNoticeTermsRequest, GetPolicyRequest,
    GetPupilAttendanceRequest, GetSyncStateRequest, ListPoliciesRequest, ListRewardsRequest,
    LoadPolicyRequest, SessionRef, StatisticsGroupBy, StatisticsRange, TriggerKind, TriggerState,
    WatchTriggersRequest,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    AmendMarkRequest, Calendar, FreeSchoolMeals, ImportHeader, ImportMarks, ImportPupil,
    ImportRegisterRequest, ListMarkVersionsRequest, Mark, Pupil, RegisterTimes, Registration,
    School, SenProvision, SetCalendarRequest, Term, import_register_request::Item,
};
use rollcall_api::types::v1::{MarkSource, Phase, Session};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use rollcall_domain::policy::TRUST_2021_TOML;
use tonic::transport::Channel;

const LAESTAB: &str = "9192001";

fn upn() -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, 7]).to_string()
}

struct Clients {
    registers: RegistersServiceClient<Channel>,
    policy: PolicyServiceClient<Channel>,
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
        registers: RegistersServiceClient::new(channel.clone()),
        policy: PolicyServiceClient::new(channel),
    };
    (running, clients)
}

fn mark(date: &str, session: Session, code: &str) -> Mark {
    Mark {
        upn: upn(),
        date: date.to_owned(),
        session: session as i32,
        code: code.to_owned(),
        recorded_at: Some(prost_types::Timestamp {
            seconds: 1_758_358_800,
            nanos: 0,
        }),
        ..Mark::default()
    }
}

/// Three weeks of September 2025: ill all of the first week, unexplained absence on Monday 8,
/// present for the rest of the second week, truancy (O) all of the third.
fn september() -> Vec<ImportRegisterRequest> {
    let mut marks = Vec::new();
    let days = |first: u32, last: u32| (first..=last).map(|day| format!("2025-09-{day:02}"));
    for (dates, code) in [
        (days(1, 5).collect::<Vec<_>>(), "I"),
        (days(8, 8).collect(), "N"),
        (days(9, 12).collect(), "/"),
        (days(15, 19).collect(), "O"),
    ] {
        for date in dates {
            marks.push(mark(&date, Session::Am, code));
            marks.push(mark(&date, Session::Pm, code));
        }
    }
    vec![
        ImportRegisterRequest {
            item: Some(Item::Header(ImportHeader {
                request_id: "september".into(),
                school: Some(School {
                    laestab: LAESTAB.into(),
                    name: "Test Academy".into(),
                    phase: Phase::Secondary as i32,
                    last_mark_date: String::new(),
                }),
                source: MarkSource::MisSync as i32,
                source_name: "test".into(),
                recorded_by: "test".into(),
                ..Default::default()
            })),
        },
        ImportRegisterRequest {
            item: Some(Item::Pupil(ImportPupil {
                pupil: Some(Pupil {
                    upn: upn(),
                    forename: "Sam".into(),
                    surname: "Able".into(),
                    date_of_birth: "2013-05-01".into(),
                    sex: "F".into(),
                    enrolments: Vec::new(),
                }),
                admission_date: "2025-09-01".into(),
                year_group: "8".into(),
                registration: Registration::Unspecified as i32,
                class_name: "8B".into(),
                ..ImportPupil::default()
            })),
        },
        ImportRegisterRequest {
            item: Some(Item::Marks(ImportMarks { marks })),
        },
    ]
}

async fn wait_for_policy(clients: &mut Clients, cursor: i64) {
    for _ in 0..600 {
        let state = clients
            .policy
            .get_sync_state(GetSyncStateRequest {})
            .await
            .expect("sync state")
            .into_inner();
        if state.registers_cursor >= cursor {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the policy service did not reach feed position {cursor}");
}

/// Returns the pupil's penalty-warning triggers as (state, policy id), in feed order.
async fn warning_triggers(clients: &mut Clients) -> Vec<(TriggerState, String)> {
    let head = clients
        .policy
        .get_sync_state(GetSyncStateRequest {})
        .await
        .expect("sync state")
        .into_inner()
        .trigger_cursor;
    let mut stream = clients
        .policy
        .watch_triggers(WatchTriggersRequest { cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut found = Vec::new();
    while let Some(message) = stream.message().await.expect("message") {
        let trigger = message.trigger.expect("trigger");
        if trigger.kind == TriggerKind::PenaltyNoticeWarning as i32 {
            found.push((
                TriggerState::try_from(trigger.state).expect("state"),
                trigger.policy_id,
            ));
        }
        if message.cursor >= head {
            break;
        }
    }
    found
}

fn decide(reason: &str, role: &str, medical_evidence: bool, record: bool) -> DecideAbsenceRequest {
    DecideAbsenceRequest {
        request_id: format!("decision-{reason}-{role}-{medical_evidence}"),
        upn: upn(),
        laestab: LAESTAB.into(),
        sessions: [Session::Am, Session::Pm]
            .into_iter()
            .map(|session| SessionRef {
                date: "2025-09-08".into(),
                session: session as i32,
            })
            .collect(),
        reason: reason.into(),
        medical_evidence,
        evidence_note: if medical_evidence {
            "GP letter dated 9 September".into()
        } else {
            String::new()
        },
        staff_doubt: false,
        decided_by: "R Patel".into(),
        decider_role: role.into(),
        absence_report_id: String::new(),
        record,
    }
}

async fn policies_over_time(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let (running, mut clients) = start(work.path(), database_url).await;

    let default = clients
        .policy
        .get_policy(GetPolicyRequest {
            laestab: String::new(),
            on_date: "2025-09-01".into(),
        })
        .await
        .expect("default policy")
        .into_inner()
        .policy
        .expect("policy");
    assert_eq!(default.id, "aat-2021");
    assert!(default.rules.iter().any(|rule| rule.clause == "3.4.1"));

    // A file with an unknown key is refused, naming the key and the line, and nothing is stored.
    let before = clients
        .policy
        .list_policies(ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner()
        .policies
        .len();
    let bad = TRUST_2021_TOML
        .replacen("id = \"aat-2021\"", "id = \"aat-2025\"", 1)
        .replacen("sessions = 15\n", "sessions = 15\nsesions = 16\n", 1);
    let error = clients
        .policy
        .load_policy(LoadPolicyRequest {
            source: bad,
            loaded_by: "J Smith".into(),
        })
        .await
        .expect_err("unknown key");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("sesions"), "{}", error.message());
    assert!(error.message().contains("line 33"), "{}", error.message());
    let after = clients
        .policy
        .list_policies(ListPoliciesRequest {})
        .await
        .expect("list")
        .into_inner()
        .policies
        .len();
    assert_eq!(after, before, "nothing stored");

    // A new version of the trust policy that overlaps the shipped one is refused.
    let overlapping =
        TRUST_2021_TOML.replacen("version = \"November 2021\"", "version = \"2025\"", 1);
    let error = clients
        .policy
        .load_policy(LoadPolicyRequest {
            source: overlapping,
            loaded_by: "J Smith".into(),
        })
        .await
        .expect_err("overlaps November 2021");
    assert!(
        error.message().contains("effective_from"),
        "{}",
        error.message()
    );
    assert!(error.message().contains("overlaps"), "{}", error.message());

    // A trust policy under its own id loads once; loading it again changes nothing.
    let renamed = TRUST_2021_TOML.replacen("id = \"aat-2021\"", "id = \"aat-2025\"", 1);
    for expected in [false, true] {
        let loaded = clients
            .policy
            .load_policy(LoadPolicyRequest {
                source: renamed.clone(),
                loaded_by: "J Smith".into(),
            })
            .await
            .expect("load")
            .into_inner();
        assert_eq!(loaded.already_loaded, expected);
    }

    // A review of it from September 2026 overlaps until the first version is given an end.
    let reviewed = renamed
        .replacen("version = \"November 2021\"", "version = \"2026\"", 1)
        .replacen(
            "effective_from = \"2021-11-01\"",
            "effective_from = \"2026-09-01\"",
            1,
        );
    let load = |source: String| LoadPolicyRequest {
        source,
        loaded_by: "J Smith".into(),
    };
    let error = clients
        .policy
        .load_policy(load(reviewed.clone()))
        .await
        .expect_err("overlaps");
    assert!(
        error.message().contains("effective_to"),
        "{}",
        error.message()
    );
    let ended = renamed.replacen(
        "effective_from = \"2021-11-01\"",
        "effective_from = \"2021-11-01\"\neffective_to = \"2026-08-31\"",
        1,
    );
    clients
        .policy
        .load_policy(load(ended))
        .await
        .expect("an end date may be added");
    clients
        .policy
        .load_policy(load(reviewed))
        .await
        .expect("the review follows it");
    let changed = renamed.replacen("sessions = 15", "sessions = 12", 1);
    let error = clients
        .policy
        .load_policy(load(changed))
        .await
        .expect_err("other changes need a version");
    assert_eq!(error.code(), tonic::Code::AlreadyExists);

    let imported = clients
        .registers
        .import_register(tokio_stream::iter(september()))
        .await
        .expect("import")
        .into_inner();
    wait_for_policy(&mut clients, imported.feed_cursor).await;

    // Ten unauthorised sessions: short of the trust's 15.
    let pupil = |as_of: &str| GetPupilAttendanceRequest {
        upn: upn(),
        laestab: LAESTAB.into(),
        as_of: as_of.into(),
    };
    let trust = clients
        .policy
        .get_pupil_attendance(pupil("2025-09-19"))
        .await
        .expect("figures")
        .into_inner();
    assert_eq!(trust.policy.expect("policy").id, "aat-2021");
    let warning = trust
        .thresholds
        .iter()
        .find(|t| t.rule_id == "penalty_notice_warning")
        .expect("warning");
    assert_eq!(warning.counted_sessions, 12, "N twice and O ten times");
    assert!(!warning.met);

    // A school must exist, and the policy must be in force from the date.
    let assign = |laestab: &str, from: &str| AssignPolicyRequest {
        laestab: laestab.into(),
        policy_id: "statutory-2024".into(),
        from_date: from.into(),
        assigned_by: "J Smith".into(),
        reason: "Governors adopted the national framework".into(),
    };
    let error = clients
        .policy
        .assign_policy(assign("9192999", "2025-09-15"))
        .await
        .expect_err("no such school");
    assert_eq!(error.code(), tonic::Code::NotFound);
    let error = clients
        .policy
        .assign_policy(assign(LAESTAB, "2024-01-01"))
        .await
        .expect_err("before the framework");
    assert!(
        error.message().contains("2024-08-19"),
        "{}",
        error.message()
    );

    // From Monday 15 September the school follows the statutory framework. The unauthorised
    // sessions before the move do not count towards its threshold.
    let moved = clients
        .policy
        .assign_policy(AssignPolicyRequest {
            laestab: LAESTAB.into(),
            policy_id: "statutory-2024".into(),
            from_date: "2025-09-15".into(),
            assigned_by: "J Smith".into(),
            reason: "Governors adopted the national framework".into(),
        })
        .await
        .expect("assign")
        .into_inner();
    assert_eq!(moved.triggers_raised, 1, "the penalty warning");
    let statutory = clients
        .policy
        .get_pupil_attendance(pupil("2025-09-19"))
        .await
        .expect("figures")
        .into_inner();
    assert_eq!(statutory.policy.expect("policy").id, "statutory-2024");
    let warning = statutory
        .thresholds
        .iter()
        .find(|t| t.rule_id == "penalty_notice_warning")
        .expect("warning");
    assert!(warning.met, "{warning:?}");
    assert_eq!(warning.counted.len(), 10);
    let earlier = clients
        .policy
        .get_pupil_attendance(pupil("2025-09-12"))
        .await
        .expect("figures")
        .into_inner();
    assert_eq!(
        earlier.policy.expect("policy").id,
        "aat-2021",
        "dates before the move keep the old policy"
    );
    assert_eq!(
        warning_triggers(&mut clients).await,
        [(TriggerState::Raised, "statutory-2024".to_owned())]
    );

    // Penalty notices per parent per child under the framework: a second within three years is
    // a flat £160, a third is refused.
    let terms = |earlier: &[&str]| GetPenaltyNoticeTermsRequest {
        laestab: LAESTAB.into(),
        on_date: "2025-09-22".into(),
        earlier_notices: earlier.iter().map(|d| (*d).to_owned()).collect(),
    };
    let second = clients
        .policy
        .get_penalty_notice_terms(terms(&["2025-01-10"]))
        .await
        .expect("terms")
        .into_inner();
    assert!(second.allowed);
    assert_eq!((second.reduced_amount, second.full_amount), (None, 160));
    let third = clients
        .policy
        .get_penalty_notice_terms(terms(&["2025-01-10", "2025-06-02"]))
        .await
        .expect("terms")
        .into_inner();
    assert!(!third.allowed);
    assert_eq!(third.policy_id, "statutory-2024");

    // The same, as a user sees it from the command line.
    let server = running.url();
    let explained = run_cli(&server, &["pupil", "explain", "--upn", &upn(), "--json"]).await;
    assert_eq!(explained["policy"]["id"], "statutory-2024");
    assert_eq!(explained["figures"]["unauthorised_absence_sessions"], 12);
    let thresholds = explained["thresholds"].as_array().expect("thresholds");
    let warning = thresholds
        .iter()
        .find(|t| t["rule"] == "penalty_notice_warning")
        .expect("warning");
    assert_eq!(warning["state"], "met");
    assert_eq!(warning["sessions_to_go"], 0);
    assert_eq!(warning["counted"].as_array().map(Vec::len), Some(10));
    let persistent = thresholds
        .iter()
        .find(|t| t["rule"] == "persistent_absence")
        .expect("persistent absence");
    assert_eq!(persistent["state"], "met", "22 absent of 30 sessions");
    let clauses: Vec<&str> = explained["clauses"]
        .as_array()
        .expect("clauses")
        .iter()
        .filter_map(|c| c["clause"].as_str())
        .collect();
    assert!(
        clauses.contains(&"National framework for penalty notices"),
        "{clauses:?}"
    );
    let trust_policy = run_cli(
        &server,
        &[
            "policy",
            "show",
            "--school",
            LAESTAB,
            "--on",
            "2025-09-12",
            "--json",
        ],
    )
    .await;
    assert_eq!(trust_policy["id"], "aat-2021");

    // Decisions on Monday 8 September fall under the trust policy.
    let parent = clients
        .policy
        .decide_absence(decide("illness", "parent", false, true))
        .await
        .expect_err("parents cannot authorise");
    assert_eq!(parent.code(), tonic::Code::PermissionDenied);
    assert!(parent.message().contains("3.1"), "{}", parent.message());

    let holiday = clients
        .policy
        .decide_absence(decide("holiday", "headteacher", false, false))
        .await
        .expect("decision")
        .into_inner();
    assert_eq!(holiday.code, "G");
    assert!(!holiday.authorised);
    assert!(holiday.clauses.iter().any(|c| c.clause == "3.4.1"));

    // Friday 5 September is the fifth day of illness and Monday the sixth: each day is decided
    // on its own.
    let mut span = decide("illness", "Headteacher", false, false);
    span.sessions = ["2025-09-05", "2025-09-08"]
        .into_iter()
        .flat_map(|date| {
            [Session::Am, Session::Pm].map(|session| SessionRef {
                date: date.into(),
                session: session as i32,
            })
        })
        .collect();
    let split = clients
        .policy
        .decide_absence(span)
        .await
        .expect("decision")
        .into_inner();
    let codes: Vec<(&str, &str)> = split
        .decisions
        .iter()
        .map(|d| (d.date.as_str(), d.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            ("2025-09-05", "I"),
            ("2025-09-05", "I"),
            ("2025-09-08", "O"),
            ("2025-09-08", "O")
        ]
    );
    assert!(!split.authorised);
    let references: Vec<&str> = split.clauses.iter().map(|c| c.clause.as_str()).collect();
    assert_eq!(references, ["3.1", "3.2.1"], "each clause once");

    // A decision never replaces attendance, and needs the pupil on roll at the school.
    let mut present = decide("illness", "headteacher", true, true);
    present.sessions[0].date = "2025-09-09".into();
    present.sessions[1].date = "2025-09-09".into();
    let rejected = clients
        .policy
        .decide_absence(present)
        .await
        .expect_err("present that day");
    assert_eq!(rejected.code(), tonic::Code::FailedPrecondition);
    assert!(
        rejected.message().contains("2025-09-09 AM (/)"),
        "{}",
        rejected.message()
    );
    let mut elsewhere = decide("illness", "headteacher", true, false);
    elsewhere.laestab = "9192002".into();
    let rejected = clients
        .policy
        .decide_absence(elsewhere)
        .await
        .expect_err("not on roll there");
    assert!(
        rejected.message().contains("not on roll"),
        "{}",
        rejected.message()
    );

    // Monday is the sixth school day of illness in a row: evidence is needed after five.
    let without = clients
        .policy
        .decide_absence(decide("illness", "headteacher", false, false))
        .await
        .expect("decision")
        .into_inner();
    assert_eq!(without.illness_days, 6);
    assert_eq!(without.code, "O");
    assert!(without.clauses.iter().any(|c| c.clause == "3.2.1"));

    let with = clients
        .policy
        .decide_absence(decide("illness", "delegated_staff", true, true))
        .await
        .expect("decision")
        .into_inner();
    assert_eq!(with.code, "I");
    assert!(with.authorised);
    assert!(with.feed_cursor > 0);
    let versions = clients
        .registers
        .list_mark_versions(ListMarkVersionsRequest {
            upn: upn(),
            laestab: LAESTAB.into(),
            date: "2025-09-08".into(),
            session: Session::Am as i32,
        })
        .await
        .expect("history")
        .into_inner()
        .versions;
    let recorded = versions
        .last()
        .and_then(|v| v.mark.clone())
        .expect("version");
    assert_eq!(recorded.code, "I");
    assert_eq!(recorded.recorded_by, "R Patel");
    assert_eq!(recorded.recorded_by_position, "delegated_staff");
    assert!(recorded.reason.contains("GP letter"), "{}", recorded.reason);

    // Monday 15 September, under the statutory framework, was illness after all: eight
    // unauthorised sessions are left since the move, and the warning is withdrawn.
    let mut monday = decide("illness", "headteacher", false, true);
    for session in &mut monday.sessions {
        session.date = "2025-09-15".into();
    }
    let statutory_decision = clients
        .policy
        .decide_absence(monday)
        .await
        .expect("decision")
        .into_inner();
    assert_eq!(statutory_decision.policy_id, "statutory-2024");
    assert_eq!(statutory_decision.code, "I");
    wait_for_policy(&mut clients, statutory_decision.feed_cursor).await;
    assert_eq!(
        warning_triggers(&mut clients).await,
        [
            (TriggerState::Raised, "statutory-2024".to_owned()),
            (TriggerState::Withdrawn, "statutory-2024".to_owned())
        ]
    );

    running.stop().await.expect("server stops");
}

/// Weekdays from `first` to `last` in 2025 (month, day pairs), each with both sessions `code`.
fn weekdays(upn: &str, first: (u32, u32), last: (u32, u32), code: &str) -> Vec<Mark> {
    let start = chrono::NaiveDate::from_ymd_opt(2025, first.0, first.1).expect("date");
    let end = chrono::NaiveDate::from_ymd_opt(2025, last.0, last.1).expect("date");
    start
        .iter_days()
        .take_while(|day| *day <= end)
        .filter(|day| chrono::Datelike::weekday(day).number_from_monday() <= 5)
        .flat_map(|day| {
            [Session::Am, Session::Pm].map(|session| Mark {
                upn: upn.to_owned(),
                date: day.to_string(),
                session: session as i32,
                code: code.to_owned(),
                recorded_at: Some(prost_types::Timestamp {
                    seconds: 1_759_500_000,
                    nanos: 0,
                }),
                ..Mark::default()
            })
        })
        .collect()
}

/// Returns this pupil's triggers of the given kinds as (kind, state), in feed order.
async fn pupil_triggers(
    clients: &mut Clients,
    upn: &str,
    kinds: &[TriggerKind],
) -> Vec<(TriggerKind, TriggerState)> {
    let head = clients
        .policy
        .get_sync_state(GetSyncStateRequest {})
        .await
        .expect("sync state")
        .into_inner()
        .trigger_cursor;
    let mut stream = clients
        .policy
        .watch_triggers(WatchTriggersRequest { cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut found = Vec::new();
    while let Some(message) = stream.message().await.expect("message") {
        let trigger = message.trigger.expect("trigger");
        let kind = TriggerKind::try_from(trigger.kind).expect("kind");
        if trigger.upn == upn && kinds.contains(&kind) {
            found.push((kind, TriggerState::try_from(trigger.state).expect("state")));
        }
        if message.cursor >= head {
            break;
        }
    }
    found
}

/// Checks that an N left too long, ten school days of unauthorised absence in a row and fifteen
/// days of sickness each raise a trigger. Correcting the N withdraws the first two.
async fn patterns_of_absence(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let (running, mut clients) = start(work.path(), database_url).await;
    let pupil = upn();
    let mut marks = weekdays(&pupil, (9, 1), (9, 1), "N");
    marks.extend(weekdays(&pupil, (9, 2), (9, 12), "O"));
    marks.extend(weekdays(&pupil, (9, 15), (10, 3), "I"));
    let mut messages = september();
    messages[2] = ImportRegisterRequest {
        item: Some(Item::Marks(ImportMarks { marks })),
    };
    let imported = clients
        .registers
        .import_register(tokio_stream::iter(messages))
        .await
        .expect("import")
        .into_inner();
    wait_for_policy(&mut clients, imported.feed_cursor).await;

    let kinds = [
        TriggerKind::UnexplainedAbsenceOverdue,
        TriggerKind::UnauthorisedAbsenceReturn,
        TriggerKind::SicknessReturn,
    ];
    let mut raised = pupil_triggers(&mut clients, &pupil, &kinds).await;
    raised.sort_by_key(|(kind, _)| *kind as i32);
    assert_eq!(
        raised,
        [
            (TriggerKind::UnexplainedAbsenceOverdue, TriggerState::Raised),
            (TriggerKind::UnauthorisedAbsenceReturn, TriggerState::Raised),
            (TriggerKind::SicknessReturn, TriggerState::Raised),
        ]
    );

    // Absent throughout, the pupil meets the entry criteria of the ladder's stage for an
    // Attendance Improvement Plan.
    let mut stream = clients
        .policy
        .watch_triggers(WatchTriggersRequest { cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut stage = None;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("in time")
    {
        let trigger = message.trigger.expect("trigger");
        if trigger.kind == TriggerKind::LadderStage as i32 && trigger.upn == pupil {
            stage = Some((trigger.ladder_stage, trigger.clause));
            break;
        }
    }
    assert_eq!(
        stage,
        Some(("attendance-improvement-plan".to_owned(), "6.3".to_owned()))
    );

    // The same rules in the pupil's thresholds.
    let thresholds = clients
        .policy
        .get_pupil_attendance(GetPupilAttendanceRequest {
            upn: pupil.clone(),
            laestab: LAESTAB.into(),
            as_of: "2025-10-03".into(),
        })
        .await
        .expect("figures")
        .into_inner()
        .thresholds;
    for rule in [
        "unexplained_absence",
        "unauthorised_absence_return",
        "sickness_return",
    ] {
        let status = thresholds
            .iter()
            .find(|status| status.rule_id == rule)
            .unwrap_or_else(|| panic!("{rule} missing"));
        assert!(status.met, "{status:?}");
    }

    // Monday 1 September was illness after all: the run is nine days and no N is left.
    let mut cursor = 0;
    for session in [Session::Am, Session::Pm] {
        let amended = clients
            .registers
            .amend_mark(AmendMarkRequest {
                request_id: format!("illness-{}", session as i32),
                upn: pupil.clone(),
                laestab: LAESTAB.into(),
                date: "2025-09-01".into(),
                session: session as i32,
                code: "I".into(),
                minutes_late: 0,
                reason: "Parent phoned: ill".into(),
                recorded_by: "A Jones".into(),
                recorded_by_position: "Attendance officer".into(),
                source: MarkSource::Staff as i32,
                absence_report_id: String::new(),
            })
            .await
            .expect("amend")
            .into_inner();
        cursor = amended.mark.map_or(cursor, |mark| mark.sequence);
    }
    wait_for_policy(&mut clients, cursor).await;
    let after = pupil_triggers(&mut clients, &pupil, &kinds[..2]).await;
    assert_eq!(
        after[after.len() - 2..],
        [
            (
                TriggerKind::UnexplainedAbsenceOverdue,
                TriggerState::Withdrawn
            ),
            (
                TriggerKind::UnauthorisedAbsenceReturn,
                TriggerState::Withdrawn
            ),
        ]
    );
    running.stop().await.expect("server stops");
}

fn pupil_import(upn: &str, admission: &str, year_group: &str, class: &str) -> ImportPupil {
    ImportPupil {
        pupil: Some(Pupil {
            upn: upn.to_owned(),
            forename: "Sam".into(),
            surname: "Able".into(),
            date_of_birth: "2012-05-01".into(),
            sex: "F".into(),
            enrolments: Vec::new(),
        }),
        admission_date: admission.into(),
        year_group: year_group.into(),
        registration: Registration::Unspecified as i32,
        class_name: class.into(),
        ..ImportPupil::default()
    }
}

/// Figures summed by group, over ranges, for filters and for the whole school.
async fn statistics_by_group(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let (running, mut clients) = start(work.path(), database_url).await;
    let upn = |serial: u8| Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 6, 0, 0, serial]).to_string();
    let (one, two, three) = (upn(1), upn(2), upn(3));

    let mut first = pupil_import(&one, "2025-09-01", "8", "8A");
    first.sen_provision = SenProvision::Support as i32;
    first.free_school_meals = FreeSchoolMeals::Eligible as i32;
    let mut second = pupil_import(&two, "2025-09-01", "9", "9B");
    second.sen_provision = SenProvision::None as i32;
    second.free_school_meals = FreeSchoolMeals::NotEligible as i32;
    let third = pupil_import(&three, "2025-09-08", "8", "8A");

    // One: two unauthorised sessions in the second week. Two: ill on Tuesday 2 September
    // morning. Three: joined on Monday 8 September, present throughout.
    let mut marks = weekdays(&one, (9, 1), (9, 12), "/");
    marks[10].code = "O".into();
    marks[11].code = "O".into();
    let mut second_marks = weekdays(&two, (9, 1), (9, 12), "/");
    second_marks[2].code = "I".into();
    marks.extend(second_marks);
    marks.extend(weekdays(&three, (9, 8), (9, 12), "/"));
    let mut messages = september();
    messages.splice(
        1..,
        [first, second, third]
            .into_iter()
            .map(|pupil| ImportRegisterRequest {
                item: Some(Item::Pupil(pupil)),
            })
            .chain(std::iter::once(ImportRegisterRequest {
                item: Some(Item::Marks(ImportMarks { marks })),
            })),
    );
    clients
        .registers
        .import_register(tokio_stream::iter(messages))
        .await
        .expect("import");

    let request = |group_by: StatisticsGroupBy| GetAttendanceStatisticsRequest {
        laestab: LAESTAB.into(),
        group_by: group_by as i32,
        as_of: "2025-09-12".into(),
        ..GetAttendanceStatisticsRequest::default()
    };
    let by_meals = clients
        .policy
        .get_attendance_statistics(request(StatisticsGroupBy::FreeSchoolMeals))
        .await
        .expect("statistics")
        .into_inner();
    let summary: Vec<(String, i32, i32, i32, i32)> = by_meals
        .groups
        .iter()
        .map(|group| {
            let figures = group.figures.expect("figures");
            (
                group.key.clone(),
                group.pupils,
                figures.possible_sessions,
                figures.unauthorised_absence_sessions + figures.authorised_absence_sessions,
                group.persistent_absentees,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("eligible".to_owned(), 1, 20, 2, 1),
            ("not supplied".to_owned(), 1, 10, 0, 0),
            ("not_eligible".to_owned(), 1, 20, 1, 0),
        ]
    );
    let total = by_meals.total.expect("total");
    assert_eq!(total.pupils, 3);
    assert!((total.persistent_absence_rate - 33.3).abs() < 1e-9);
    assert_eq!(by_meals.period.expect("period").from_date, "2025-08-01");

    let by_sen = clients
        .policy
        .get_attendance_statistics(request(StatisticsGroupBy::SenProvision))
        .await
        .expect("statistics")
        .into_inner();
    let keys: Vec<&str> = by_sen.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(keys, ["none", "not supplied", "sen_support"]);

    let by_year = clients
        .policy
        .get_attendance_statistics(request(StatisticsGroupBy::YearGroup))
        .await
        .expect("statistics")
        .into_inner();
    let eight = &by_year.groups[0];
    assert_eq!((eight.key.as_str(), eight.pupils), ("8", 2));
    assert_eq!(eight.figures.expect("figures").possible_sessions, 30);
    assert!((eight.persistent_absence_rate - 50.0).abs() < 1e-9);

    // One class; then the last week only, where one is 20% absent and two is not absent.
    let class = clients
        .policy
        .get_attendance_statistics(GetAttendanceStatisticsRequest {
            class_name: "8A".into(),
            ..request(StatisticsGroupBy::Pupil)
        })
        .await
        .expect("statistics")
        .into_inner();
    let upns: Vec<&str> = class.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(upns, [one.as_str(), three.as_str()]);
    let week = clients
        .policy
        .get_attendance_statistics(GetAttendanceStatisticsRequest {
            range: StatisticsRange::RollingWeeks as i32,
            weeks: 1,
            ..request(StatisticsGroupBy::Pupil)
        })
        .await
        .expect("statistics")
        .into_inner();
    assert_eq!(week.period.expect("period").from_date, "2025-09-06");
    let possible: Vec<i32> = week
        .groups
        .iter()
        .map(|g| g.figures.expect("figures").possible_sessions)
        .collect();
    assert_eq!(possible, [10, 10, 10]);
    assert_eq!(week.total.expect("total").persistent_absentees, 1);

    // Rewards for the last week against the week before.
    let rewards = clients
        .policy
        .list_rewards(ListRewardsRequest {
            laestab: LAESTAB.into(),
            as_of: "2025-09-12".into(),
            range: StatisticsRange::RollingWeeks as i32,
            weeks: 1,
            ..ListRewardsRequest::default()
        })
        .await
        .expect("rewards")
        .into_inner();
    assert_eq!(rewards.clause, "5.1.3");
    assert_eq!(
        rewards.previous_period.expect("previous").from_date,
        "2025-08-30"
    );
    let earned: Vec<(String, Vec<String>)> = rewards
        .pupils
        .iter()
        .map(|pupil| (pupil.upn.clone(), pupil.rewards.clone()))
        .collect();
    let names = |list: &[&str]| list.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>();
    let mut expected = vec![
        (one.clone(), names(&["excellent_punctuality"])),
        (
            two.clone(),
            names(&[
                "excellent_attendance",
                "excellent_punctuality",
                "much_improved_attendance",
            ]),
        ),
        (
            three.clone(),
            names(&["excellent_attendance", "excellent_punctuality"]),
        ),
    ];
    expected.sort();
    assert_eq!(earned, expected, "ordered by UPN");

    // The same from the command line, with the early warning list.
    let server = running.url();
    let from_cli = run_cli(
        &server,
        &[
            "report",
            "rewards",
            "--school",
            LAESTAB,
            "--range",
            "weeks",
            "--weeks",
            "1",
            "--as-of",
            "2025-09-12",
            "--json",
        ],
    )
    .await;
    assert_eq!(from_cli["pupils"].as_array().map(Vec::len), Some(3));
    assert_eq!(from_cli["clause"], "5.1.3");
    let warning = run_cli(
        &server,
        &[
            "report",
            "early-warning",
            "--school",
            LAESTAB,
            "--as-of",
            "2025-09-12",
            "--all",
            "--json",
        ],
    )
    .await;
    let listed = warning.as_array().expect("array");
    assert_eq!(listed.len(), 3);
    let first = listed
        .iter()
        .find(|pupil| pupil["upn"] == one.as_str())
        .expect("pupil one");
    let penalty = first["thresholds"]
        .as_array()
        .expect("thresholds")
        .iter()
        .find(|t| t["rule"] == "penalty_notice_warning")
        .expect("penalty warning");
    assert_eq!(penalty["counted_sessions"], 2);
    assert_eq!(penalty["sessions_to_go"], 13, "15 under the trust policy");

    // A term needs the calendar.
    let term = GetAttendanceStatisticsRequest {
        range: StatisticsRange::Term as i32,
        ..request(StatisticsGroupBy::Unspecified)
    };
    let error = clients
        .policy
        .get_attendance_statistics(term.clone())
        .await
        .expect_err("no calendar yet");
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    clients
        .registers
        .set_calendar(SetCalendarRequest {
            calendar: Some(Calendar {
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
            }),
            changed_by: "J Smith".into(),
            changed_by_position: "Data manager".into(),
            ..Default::default()
        })
        .await
        .expect("calendar");
    let term = clients
        .policy
        .get_attendance_statistics(term)
        .await
        .expect("statistics")
        .into_inner();
    assert_eq!(term.period.expect("period").from_date, "2025-09-01");
    assert_eq!(term.total.expect("total").pupils, 3);

    running.stop().await.expect("server stops");
}

/// Runs one statement against the policy service's own storage, behind the server's back.
async fn execute_on_policy_storage(work: &Path, database_url: Option<&str>, sql: &str) {
    match database_url {
        None => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(work.join("data").join("policy.db"));
            let pool = sqlx::SqlitePool::connect_with(options)
                .await
                .expect("SQLite opens");
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&pool)
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"));
            pool.close().await;
        }
        Some(url) => {
            let options: sqlx::postgres::PgConnectOptions = url.parse().expect("URL");
            let pool = sqlx::PgPool::connect_with(options.options([("search_path", "policy")]))
                .await
                .expect("PostgreSQL connects");
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&pool)
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"));
            pool.close().await;
        }
    }
}

/// Statistics count the policy service's copy of the marks while it is up to date with the
/// registers' feed, and read the registers when it is behind. The copy is emptied behind the
/// server's back to tell the two apart.
async fn statistics_when_copy_lags(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let (running, mut clients) = start(work.path(), database_url).await;
    let pupil = Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 7, 0, 0, 1]).to_string();
    let mut marks = weekdays(&pupil, (9, 1), (9, 12), "/");
    marks[3].code = "O".into();
    let mut messages = september();
    messages.splice(
        1..,
        [
            ImportRegisterRequest {
                item: Some(Item::Pupil(pupil_import(&pupil, "2025-09-01", "8", "8A"))),
            },
            ImportRegisterRequest {
                item: Some(Item::Marks(ImportMarks { marks })),
            },
        ],
    );
    clients
        .registers
        .import_register(tokio_stream::iter(messages))
        .await
        .expect("import");
    let request = GetAttendanceStatisticsRequest {
        laestab: LAESTAB.into(),
        as_of: "2025-09-12".into(),
        ..GetAttendanceStatisticsRequest::default()
    };
    let totals = async |policy: &mut PolicyServiceClient<Channel>| {
        let response: GetAttendanceStatisticsResponse = policy
            .get_attendance_statistics(request.clone())
            .await
            .expect("statistics")
            .into_inner();
        let total = response.total.expect("total");
        let figures = total.figures.unwrap_or_default();
        (
            total.pupils,
            figures.possible_sessions,
            figures.unauthorised_absence_sessions,
        )
    };
    assert_eq!(
        totals(&mut clients.policy).await,
        (1, 20, 1),
        "from the up-to-date copy"
    );

    // Behind: the copy is emptied and its position moved back, so the registers are read.
    for sql in [
        "DELETE FROM pupil_marks",
        "UPDATE sync_state SET cursor = 0 WHERE feed = 'registers.marks'",
    ] {
        execute_on_policy_storage(work.path(), database_url, sql).await;
    }
    assert_eq!(
        totals(&mut clients.policy).await,
        (1, 20, 1),
        "from the registers"
    );

    // Up to date again: the emptied copy is what is read, so no pupil has a session.
    execute_on_policy_storage(
        work.path(),
        database_url,
        "UPDATE sync_state SET cursor = 1000000 WHERE feed = 'registers.marks'",
    )
    .await;
    assert_eq!(
        totals(&mut clients.policy).await,
        (0, 0, 0),
        "from the emptied copy"
    );
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_when_copy_lags_on_sqlite() {
    statistics_when_copy_lags(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_when_copy_lags_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    statistics_when_copy_lags(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_by_group_on_sqlite() {
    statistics_by_group(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_by_group_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    statistics_by_group(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_of_absence_on_sqlite() {
    patterns_of_absence(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_of_absence_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    patterns_of_absence(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_over_time_on_sqlite() {
    policies_over_time(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_over_time_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    policies_over_time(Some(&url)).await;
}

/// Runs the rollcall binary against `server` and returns its JSON output.
async fn run_cli(server: &str, args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--server".to_owned(), server.to_owned()];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(&full)
            .output()
            .expect("rollcall runs")
    })
    .await
    .expect("command thread");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

fn rollcall(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(args)
        .output()
        .expect("rollcall runs")
}

#[test]
fn policy_check_lists_differences_as_json() {
    let work = tempfile::tempdir().expect("temp dir");
    let file = work.path().join("aat-2021.toml");
    std::fs::write(&file, TRUST_2021_TOML).expect("write");
    let path = file.to_str().expect("UTF-8 path");

    let output = rollcall(&[
        "policy",
        "check",
        "--policy",
        path,
        "--on",
        "2025-09-01",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["statutory"]["id"], "statutory-2024");
    let differences = report["differences"].as_array().expect("array");
    let rules: Vec<&str> = differences
        .iter()
        .filter_map(|d| d["rule"].as_str())
        .collect();
    for rule in [
        "review",
        "codes",
        "penalty_warning",
        "penalty_notice.amounts",
        "penalty_notice.limit",
        "register_retention",
    ] {
        assert!(rules.contains(&rule), "{rule} missing from {rules:?}");
    }
    for difference in differences {
        assert!(difference["policy"]["value"].is_string());
        assert!(
            difference["statutory"]["clause"].is_string(),
            "{difference}"
        );
    }

    // Before the framework of August 2024 there is nothing to compare with.
    let early = rollcall(&["policy", "check", "--policy", path, "--on", "2024-08-18"]);
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("19 August 2024"));
}

#[test]
fn policy_show_refuses_a_broken_file() {
    let work = tempfile::tempdir().expect("temp dir");
    let file = work.path().join("broken.toml");
    std::fs::write(
        &file,
        TRUST_2021_TOML.replacen("clause = \"4.10\"", "clause = \"\"", 1),
    )
    .expect("write");
    let output = rollcall(&["policy", "show", "--policy", file.to_str().expect("UTF-8")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("penalty_warning.clause"), "{stderr}");
    assert!(stderr.contains("line 34"), "{stderr}");
}
