//! Casework on a real server: opening a case by hand, actions, escalation that waits for the
//! stage's actions, de-escalation, closing with a reason, overdue reviews, the timeline, and
//! ladders loaded from files.

use std::path::Path;

use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::cases::v1::{
    CaseStatus, CloseCaseRequest, CreateReintegrationRequest, DeescalateCaseRequest,
    EscalateCaseRequest, GetCaseTimelineRequest, ListLaddersRequest, ListOverdueReviewsRequest,
    LoadLadderRequest, OpenCaseRequest, RecordActionRequest, RecordCheckInRequest,
    ReintegrationStep,
};
use rollcall_api::types::v1::Phase;
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::ladder::JUNIORS_AND_SECONDARY_TOML;
use tonic::Code;
use tonic::transport::Channel;

const LAESTAB: &str = "9192001";
const UPN: &str = "H919200125009";

async fn start(
    work: &Path,
    database_url: Option<&str>,
) -> (RunningServer, CasesServiceClient<Channel>) {
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
    (running, CasesServiceClient::new(channel))
}

fn escalate(case_id: &str, reason: &str, on: &str) -> EscalateCaseRequest {
    EscalateCaseRequest {
        case_id: case_id.into(),
        changed_by: "P Green".into(),
        role: "head_of_year".into(),
        reason: reason.into(),
        on_date: on.into(),
    }
}

fn deescalate(case_id: &str, reason: &str, on: &str) -> DeescalateCaseRequest {
    let r = escalate(case_id, reason, on);
    DeescalateCaseRequest {
        case_id: r.case_id,
        changed_by: r.changed_by,
        role: r.role,
        reason: r.reason,
        on_date: r.on_date,
    }
}

fn close(case_id: &str, reason: &str, on: &str) -> CloseCaseRequest {
    let r = escalate(case_id, reason, on);
    CloseCaseRequest {
        case_id: r.case_id,
        changed_by: r.changed_by,
        role: r.role,
        reason: r.reason,
        on_date: r.on_date,
    }
}

fn action(request_id: &str, case_id: &str, kind: &str, on: &str) -> RecordActionRequest {
    RecordActionRequest {
        request_id: request_id.into(),
        case_id: case_id.into(),
        kind: kind.into(),
        taken_on: on.into(),
        outcome: "Parent agreed to bring the pupil on time".into(),
        notes: String::new(),
        with_aio: false,
        next_review: String::new(),
        recorded_by: "T Brown".into(),
        role: "class_teacher_or_tutor".into(),
        parents_not_reached: false,
    }
}

async fn casework(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let (running, mut cases) = start(work.path(), database_url).await;
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    let mut registers =
        rollcall_api::registers::v1::registers_service_client::RegistersServiceClient::new(channel);
    import_september(&mut registers).await;

    let open = OpenCaseRequest {
        upn: UPN.into(),
        laestab: LAESTAB.into(),
        concern: "punctuality".into(),
        phase: Phase::Secondary as i32,
        opened_by: "T Brown".into(),
        role: "class_teacher_or_tutor".into(),
        reason: "Late on six mornings in two weeks".into(),
        on_date: "2025-09-15".into(),
    };
    let case = cases
        .open_case(open.clone())
        .await
        .expect("open")
        .into_inner()
        .r#case
        .expect("case");
    assert_eq!(case.stage, "tutor-monitoring");
    assert_eq!(case.ladder, "juniors-and-secondary");
    assert_eq!(case.next_review, "2025-09-29", "ten school days");
    let again = cases.open_case(open).await.expect_err("one live case");
    assert_eq!(again.code(), Code::AlreadyExists);
    assert!(again.message().contains(&case.id), "{}", again.message());

    // The first stage needs a call home before the case moves up.
    let blocked = cases
        .escalate_case(escalate(&case.id, "No improvement", "2025-09-22"))
        .await
        .expect_err("no call yet");
    assert_eq!(blocked.code(), Code::FailedPrecondition);
    assert!(blocked.message().contains("call"), "{}", blocked.message());

    let recorded = cases
        .record_action(action("call-1", &case.id, "call", "2025-09-16"))
        .await
        .expect("call")
        .into_inner();
    assert!(!recorded.already_recorded);
    let repeat = cases
        .record_action(action("call-1", &case.id, "call", "2025-09-16"))
        .await
        .expect("same request")
        .into_inner();
    assert!(repeat.already_recorded);
    assert_eq!(
        repeat.action.expect("action").id,
        recorded.action.expect("action").id
    );

    let no_reason = cases
        .escalate_case(escalate(&case.id, " ", "2025-09-22"))
        .await
        .expect_err("a reason is required");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    assert!(
        no_reason.message().contains("reason"),
        "{}",
        no_reason.message()
    );

    let escalated = cases
        .escalate_case(escalate(
            &case.id,
            "Still late after the call",
            "2025-09-22",
        ))
        .await
        .expect("escalate")
        .into_inner()
        .r#case
        .expect("case");
    assert_eq!(escalated.stage, "head-of-year-meeting");
    assert_eq!(escalated.owner_role, "head_of_year");
    assert_eq!(escalated.stage_started_on, "2025-09-22");

    // A reintegration programme: steps done at check-ins until it is complete.
    let programme = cases
        .create_reintegration(CreateReintegrationRequest {
            case_id: case.id.clone(),
            absence: "Illness from 1 to 12 September".into(),
            starts_on: "2025-09-22".into(),
            steps: vec![
                ReintegrationStep {
                    description: "Mornings only for the first week".into(),
                    due_on: "2025-09-26".into(),
                    done_on: String::new(),
                },
                ReintegrationStep {
                    description: "Full days with a daily check-in".into(),
                    due_on: "2025-10-03".into(),
                    done_on: String::new(),
                },
            ],
            created_by: "P Green".into(),
        })
        .await
        .expect("programme")
        .into_inner()
        .reintegration
        .expect("programme");
    let check_in = |on: &str, steps: Vec<i32>| RecordCheckInRequest {
        reintegration_id: programme.id.clone(),
        on_date: on.into(),
        by: "P Green".into(),
        notes: "Settling back in".into(),
        completed_steps: steps,
    };
    let error = cases
        .record_check_in(check_in("2025-09-26", vec![3]))
        .await
        .expect_err("no step 3");
    assert!(
        error.message().contains("steps 1 to 2"),
        "{}",
        error.message()
    );
    let first = cases
        .record_check_in(check_in("2025-09-26", vec![1]))
        .await
        .expect("check-in")
        .into_inner()
        .reintegration
        .expect("programme");
    assert_eq!(first.status, "active");
    assert_eq!(first.steps[0].done_on, "2025-09-26");
    let done = cases
        .record_check_in(check_in("2025-10-03", vec![2]))
        .await
        .expect("check-in")
        .into_inner()
        .reintegration
        .expect("programme");
    assert_eq!(done.status, "complete");
    assert_eq!(done.check_ins.len(), 2);

    let mut structured = action("meeting-1", &case.id, "structured_meeting", "2025-09-23");
    let without_aio = cases
        .record_action(structured.clone())
        .await
        .expect_err("needs the AIO");
    assert!(
        without_aio
            .message()
            .contains("Attendance Improvement Officer")
    );
    structured.with_aio = true;
    cases.record_action(structured).await.expect("with the AIO");

    let back = cases
        .deescalate_case(deescalate(
            &case.id,
            "Improved after the meeting",
            "2025-09-30",
        ))
        .await
        .expect("de-escalate")
        .into_inner()
        .r#case
        .expect("case");
    assert_eq!(back.stage, "tutor-monitoring");

    // Reviews fall due; the tutor owns this one now.
    let overdue = cases
        .list_overdue_reviews(ListOverdueReviewsRequest {
            laestab: LAESTAB.into(),
            as_of: "2025-12-01".into(),
        })
        .await
        .expect("overdue")
        .into_inner()
        .owners;
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].owner_role, "class_teacher_or_tutor");
    // The persistent-absence case the trigger opens may be listed too, depending on how far
    // the follower has got, so the hand-opened case is looked for rather than taken first.
    assert!(
        overdue[0].cases.iter().any(|listed| listed.id == case.id),
        "{overdue:#?}"
    );

    let no_reason = cases
        .close_case(close(&case.id, "", "2025-10-10"))
        .await
        .expect_err("a reason is required");
    assert_eq!(no_reason.code(), Code::InvalidArgument);
    let closed = cases
        .close_case(close(&case.id, "On time for four weeks", "2025-10-10"))
        .await
        .expect("close")
        .into_inner()
        .r#case
        .expect("case");
    assert_eq!(closed.status, CaseStatus::Closed as i32);
    let late = cases
        .record_action(action("call-2", &case.id, "call", "2025-10-11"))
        .await
        .expect_err("closed");
    assert_eq!(late.code(), Code::FailedPrecondition);

    let timeline = cases
        .get_case_timeline(GetCaseTimelineRequest {
            case_id: case.id.clone(),
        })
        .await
        .expect("timeline")
        .into_inner()
        .entries;
    let kinds: Vec<(&str, bool)> = timeline
        .iter()
        .map(|entry| (entry.kind.as_str(), entry.communicated_to_parents))
        .collect();
    assert_eq!(
        kinds,
        [
            ("opened", false),
            ("call", true),
            ("escalated", false),
            ("structured_meeting", true),
            ("de-escalated", false),
            ("closed", false),
        ]
    );
    assert!(timeline[2].by.contains("P Green"));
    assert_eq!(timeline[2].reason, "Still late after the call");

    // With the school's calendar, review dates pass over half term and an INSET day.
    use rollcall_api::registers::v1::{
        Calendar, Closure, ClosureKind, RegisterTimes, SetCalendarRequest, Term,
    };
    let term = |name: &str, first: &str, last: &str| Term {
        name: name.into(),
        first_day: first.into(),
        last_day: last.into(),
    };
    registers
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
                terms: vec![
                    term("Autumn 1", "2025-09-01", "2025-10-24"),
                    term("Autumn 2", "2025-11-03", "2025-12-19"),
                ],
                closures: vec![Closure {
                    date: "2025-11-03".into(),
                    session: 0,
                    kind: ClosureKind::Planned as i32,
                    reason: "INSET day".into(),
                }],
            }),
            changed_by: "J Smith".into(),
            changed_by_position: "Data manager".into(),
            ..Default::default()
        })
        .await
        .expect("calendar");
    let sickness = cases
        .open_case(OpenCaseRequest {
            upn: UPN.into(),
            laestab: LAESTAB.into(),
            concern: "sickness".into(),
            phase: Phase::Unspecified as i32,
            opened_by: "T Brown".into(),
            role: String::new(),
            reason: "Long illness".into(),
            on_date: "2025-10-20".into(),
        })
        .await
        .expect("open")
        .into_inner()
        .r#case
        .expect("case");
    assert_eq!(sickness.next_review, "2025-11-11", "ten school days");

    // Opening needs a pupil on roll at the school, a known concern, the pupil's own phase and a
    // date that has come.
    let bad = |change: &dyn Fn(&mut OpenCaseRequest)| {
        let mut request = OpenCaseRequest {
            upn: UPN.into(),
            laestab: LAESTAB.into(),
            concern: "truancy".into(),
            phase: Phase::Unspecified as i32,
            opened_by: "T Brown".into(),
            role: String::new(),
            reason: "Seen leaving at lunchtime".into(),
            on_date: "2025-11-03".into(),
        };
        change(&mut request);
        request
    };
    for (request, field) in [
        (bad(&|r| r.upn = "M919478199999".into()), "not found"),
        (bad(&|r| r.laestab = "9192999".into()), "not on roll"),
        (bad(&|r| r.concern = "Lateness".into()), "punctuality"),
        (bad(&|r| r.phase = Phase::Infant as i32), "secondary phase"),
        (bad(&|r| r.on_date = "2099-01-01".into()), "future"),
        (bad(&|r| r.role = "wizard".into()), "head_of_year"),
    ] {
        let error = cases.open_case(request).await.expect_err(field);
        assert!(
            error.message().contains(field),
            "{field}: {}",
            error.message()
        );
    }
    let truancy = cases
        .open_case(bad(&|_| {}))
        .await
        .expect("the phase comes from the year group")
        .into_inner()
        .r#case
        .expect("case");
    assert_eq!(truancy.phase, Phase::Secondary as i32);
    let early = cases
        .escalate_case(escalate(&truancy.id, "Too soon", "2025-10-01"))
        .await
        .expect_err("before the case began");
    assert!(
        early.message().contains("2025-11-03"),
        "{}",
        early.message()
    );

    // A ladder file with a typo is refused with its line; a good one replaces the default.
    let typo =
        JUNIORS_AND_SECONDARY_TOML.replacen("review_interval_days = 10", "review_interval = 10", 1);
    let error = cases
        .load_ladder(LoadLadderRequest {
            source: typo,
            loaded_by: "J Smith".into(),
        })
        .await
        .expect_err("unknown key");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("review_interval"),
        "{}",
        error.message()
    );
    assert!(error.message().contains("line 17"), "{}", error.message());
    let relaxed = JUNIORS_AND_SECONDARY_TOML.replacen(
        "complete_before_escalating = [\"call\"]",
        "complete_before_escalating = []",
        1,
    );
    cases
        .load_ladder(LoadLadderRequest {
            source: relaxed,
            loaded_by: "J Smith".into(),
        })
        .await
        .expect("load");
    let ladders = cases
        .list_ladders(ListLaddersRequest {})
        .await
        .expect("ladders")
        .into_inner()
        .ladders;
    let shipped: Vec<(&str, bool)> = ladders
        .iter()
        .map(|ladder| (ladder.id.as_str(), ladder.shipped))
        .collect();
    assert_eq!(
        shipped,
        [("infants", true), ("juniors-and-secondary", false)]
    );
    let second = cases
        .open_case(OpenCaseRequest {
            upn: UPN.into(),
            laestab: LAESTAB.into(),
            concern: "punctuality".into(),
            phase: Phase::Secondary as i32,
            opened_by: "T Brown".into(),
            role: String::new(),
            reason: "Late again".into(),
            on_date: "2025-11-03".into(),
        })
        .await
        .expect("a new case after the last closed")
        .into_inner()
        .r#case
        .expect("case");
    cases
        .escalate_case(escalate(
            &second.id,
            "The loaded ladder needs no call",
            "2025-11-04",
        ))
        .await
        .expect("escalate without a call");

    // The truancy case opened under the shipped ladder keeps it: it still needs a call.
    let kept = cases
        .escalate_case(escalate(&truancy.id, "No change", "2025-11-10"))
        .await
        .expect_err("the case keeps its ladder version");
    assert!(kept.message().contains("call"), "{}", kept.message());
    // Another ladder may not claim a phase a loaded ladder covers.
    let overlapping = JUNIORS_AND_SECONDARY_TOML
        .replacen(
            "id = \"juniors-and-secondary\"",
            "id = \"secondary-only\"",
            1,
        )
        .replacen(
            "phases = [\"junior\", \"secondary\"]",
            "phases = [\"secondary\"]",
            1,
        );
    let error = cases
        .load_ladder(LoadLadderRequest {
            source: overlapping,
            loaded_by: "J Smith".into(),
        })
        .await
        .expect_err("phase already covered");
    assert!(
        error.message().contains("juniors-and-secondary"),
        "{}",
        error.message()
    );

    // The same from the command line.
    let server = running.url();
    let timeline = cli(&server, &["case", "timeline", "--case", &case.id, "--json"]).await;
    let entries: serde_json::Value = serde_json::from_str(&timeline).expect("JSON");
    assert_eq!(entries.as_array().map(Vec::len), Some(6));
    assert_eq!(entries[1]["communicated_to_parents"], true);
    let ladders = cli(&server, &["ladder", "list"]).await;
    assert!(ladders.contains("juniors-and-secondary"), "{ladders}");
    assert!(ladders.contains("loaded"), "{ladders}");
    let recorded = cli(
        &server,
        &[
            "case",
            "action",
            "--case",
            &second.id,
            "--kind",
            "letter",
            "--on",
            "2025-11-05",
            "--outcome",
            "Letter of concern sent",
            "--by",
            "P Green",
        ],
    )
    .await;
    assert!(recorded.contains("Recorded letter"), "{recorded}");
    let rejected = cli_error(
        &server,
        &[
            "case",
            "action",
            "--case",
            &second.id,
            "--kind",
            "structured_meeting",
            "--on",
            "2025-11-05",
            "--outcome",
            "Met",
            "--by",
            "P Green",
        ],
    )
    .await;
    assert!(rejected.contains("--with-aio"), "{rejected}");
    let programme = cli(
        &server,
        &[
            "case",
            "reintegrate",
            "--case",
            &second.id,
            "--absence",
            "Illness in October",
            "--from",
            "2025-11-10",
            "--step",
            "2025-11-14=Mornings only",
            "--step",
            "2025-11-21=Full days",
            "--by",
            "P Green",
        ],
    )
    .await;
    assert!(programme.contains("2 steps"), "{programme}");
    let programme_id = programme
        .split_whitespace()
        .nth(1)
        .expect("programme id")
        .to_owned();
    let checked_in = cli(
        &server,
        &[
            "case",
            "check-in",
            "--programme",
            &programme_id,
            "--on",
            "2025-11-14",
            "--done",
            "1",
            "--notes",
            "Coping well",
            "--by",
            "P Green",
        ],
    )
    .await;
    assert!(checked_in.contains("1 of 2 steps done"), "{checked_in}");
    let reward = cli(
        &server,
        &[
            "case",
            "reward",
            "--school",
            LAESTAB,
            "--upn",
            UPN,
            "--reward",
            "excellent_attendance",
            "--from",
            "2025-11-01",
            "--to",
            "2025-11-30",
            "--on",
            "2025-12-01",
            "--by",
            "P Green",
        ],
    )
    .await;
    assert!(reward.contains("excellent attendance"), "{reward}");
    let overdue = cli(
        &server,
        &[
            "case",
            "overdue",
            "--school",
            LAESTAB,
            "--as-of",
            "2026-01-05",
        ],
    )
    .await;
    assert!(overdue.contains(&second.id), "{overdue}");

    // Seven years on, the closed case is past the six-year retention period; the open one is
    // kept whatever its age. A dry run removes nothing.
    let later = (chrono::Utc::now().date_naive() + chrono::Days::new(7 * 366)).to_string();
    let dry = cli(
        &server,
        &[
            "retention",
            "apply",
            "--as-of",
            &later,
            "--dry-run",
            "--json",
        ],
    )
    .await;
    let dry: serde_json::Value = serde_json::from_str(&dry).expect("JSON");
    assert_eq!(dry["cases"]["retention_years"], 6);
    assert_eq!(dry["cases"]["removed"][0]["laestab"], LAESTAB, "{dry}");
    assert!(
        dry["cases"]["removed"][0]["cases"].as_i64() >= Some(1),
        "{dry}"
    );
    cli(&server, &["case", "timeline", "--case", &case.id]).await;
    let applied = cli(&server, &["retention", "apply", "--as-of", &later]).await;
    assert!(applied.contains(&format!("{LAESTAB}: ")), "{applied}");
    let gone = cli_error(&server, &["case", "timeline", "--case", &case.id]).await;
    assert!(gone.contains("not found"), "{gone}");
    cli(&server, &["case", "timeline", "--case", &second.id]).await;

    running.stop().await.expect("server stops");
}

/// Runs the rollcall binary against `server` off the async threads.
async fn run_rollcall(server: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["--server".to_owned(), server.to_owned()];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(&full)
            .output()
            .expect("rollcall runs")
    })
    .await
    .expect("command thread")
}

/// Runs the rollcall binary, expecting it to fail, and returns its error.
async fn cli_error(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(!output.status.success(), "expected a failure");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs the rollcall binary and returns what it printed.
async fn cli(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casework_on_sqlite() {
    casework(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casework_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    casework(Some(&url)).await;
}

/// Imports the test pupil, in year 8 from 1 September 2025, with the September marks.
async fn import_september(
    registers: &mut rollcall_api::registers::v1::registers_service_client::RegistersServiceClient<
        Channel,
    >,
) {
    use rollcall_api::registers::v1::{
        ImportHeader, ImportMarks, ImportPupil, ImportRegisterRequest, Pupil, School,
        import_register_request::Item,
    };
    use rollcall_api::types::v1::MarkSource;

    let messages = vec![
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
                    upn: UPN.into(),
                    forename: "Sam".into(),
                    surname: "Able".into(),
                    date_of_birth: "2012-05-01".into(),
                    sex: "F".into(),
                    enrolments: Vec::new(),
                }),
                admission_date: "2025-09-01".into(),
                year_group: "8".into(),
                ..ImportPupil::default()
            })),
        },
        ImportRegisterRequest {
            item: Some(Item::Marks(ImportMarks {
                marks: september_marks(UPN),
            })),
        },
    ];
    registers
        .import_register(tokio_stream::iter(messages))
        .await
        .expect("import");
}

/// Weekday marks from 1 to 19 September 2025: absent (N) on the Mondays, present otherwise.
fn september_marks(upn: &str) -> Vec<rollcall_api::registers::v1::Mark> {
    use chrono::Datelike;
    let start = chrono::NaiveDate::from_ymd_opt(2025, 9, 1).expect("date");
    start
        .iter_days()
        .take(19)
        .filter(|day| day.weekday().number_from_monday() <= 5)
        .flat_map(|day| {
            let code = if day.weekday().number_from_monday() == 1 {
                "N"
            } else {
                "/"
            };
            [
                rollcall_api::types::v1::Session::Am,
                rollcall_api::types::v1::Session::Pm,
            ]
            .map(|session| rollcall_api::registers::v1::Mark {
                upn: upn.to_owned(),
                date: day.to_string(),
                session: session as i32,
                code: code.to_owned(),
                recorded_at: Some(prost_types::Timestamp {
                    seconds: 1_758_358_800,
                    nanos: 0,
                }),
                ..rollcall_api::registers::v1::Mark::default()
            })
        })
        .collect()
}

/// Checks an Attendance Improvement Plan: the AIO reviews targets for a pupil under 90%,
/// reviews measure progress from the registers, and a missed target raises a trigger.
async fn plans(database_url: Option<&str>) {
    use rollcall_api::cases::v1::{
        CreatePlanRequest, ListGivenRewardsRequest, ListTruancyIncidentsRequest,
        RecordRewardRequest, RecordTruancyIncidentRequest, ReviewPlanRequest,
    };
    use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
    use rollcall_api::policy::v1::{
        GetSyncStateRequest, TriggerKind, TriggerState, WatchTriggersRequest,
    };
    use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
    use rollcall_api::registers::v1::{
        AmendMarkRequest, CheckKind, LessonMark, RecordLessonCheckRequest,
    };
    use rollcall_api::types::v1::{MarkSource, Session};

    let work = tempfile::tempdir().expect("temp dir");
    let (running, mut cases) = start(work.path(), database_url).await;
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    let mut registers = RegistersServiceClient::new(channel.clone());
    let mut policy = PolicyServiceClient::new(channel);

    import_september(&mut registers).await;

    let case = cases
        .open_case(OpenCaseRequest {
            upn: UPN.into(),
            laestab: LAESTAB.into(),
            concern: "persistent_absence".into(),
            phase: Phase::Secondary as i32,
            opened_by: "T Brown".into(),
            role: String::new(),
            reason: "Absent every Monday".into(),
            on_date: "2025-09-15".into(),
        })
        .await
        .expect("open")
        .into_inner()
        .r#case
        .expect("case");

    // Attendance is 80% by 15 September: the AIO must own the targets.
    let mut plan = CreatePlanRequest {
        case_id: case.id.clone(),
        attendance_target_percent: 95,
        max_lates: Some(2),
        start_date: "2025-09-15".into(),
        review_date: "2025-09-19".into(),
        owner_name: "P Green".into(),
        owner_role: "head_of_year".into(),
        created_by: "P Green".into(),
    };
    let refused = cases
        .create_plan(plan.clone())
        .await
        .expect_err("under 90%");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("5.1.4"), "{}", refused.message());
    plan.owner_role = "trust_attendance_improvement_officer".into();
    plan.owner_name = "D Khan".into();
    let created = cases
        .create_plan(plan)
        .await
        .expect("plan")
        .into_inner()
        .plan
        .expect("plan");

    // Monday 15 was missed, so the week is 80%: the target is missed.
    let reviewed = cases
        .review_plan(ReviewPlanRequest {
            plan_id: created.id.clone(),
            reviewed_on: "2025-09-19".into(),
            reviewed_by: "D Khan".into(),
            notes: "Mondays are still a problem".into(),
            next_review: "2025-10-03".into(),
        })
        .await
        .expect("review")
        .into_inner()
        .plan
        .expect("plan");
    let review = &reviewed.reviews[0];
    assert_eq!(review.attendance_percent, Some(80.0));
    assert!(!review.attendance_met);
    assert!(review.punctuality_met, "no late marks");
    assert_eq!(reviewed.review_date, "2025-10-03");

    // The policy service finds the missed target once the school's marks change again.
    let amended = registers
        .amend_mark(AmendMarkRequest {
            request_id: "late".into(),
            upn: UPN.into(),
            laestab: LAESTAB.into(),
            date: "2025-09-16".into(),
            session: Session::Am as i32,
            code: "L".into(),
            minutes_late: 5,
            reason: "Arrived after the register was taken".into(),
            recorded_by: "A Jones".into(),
            recorded_by_position: "Attendance officer".into(),
            source: MarkSource::Staff as i32,
            absence_report_id: String::new(),
        })
        .await
        .expect("amend")
        .into_inner();
    let cursor = amended.mark.expect("mark").sequence;
    let mut synced = false;
    for _ in 0..400 {
        let state = policy
            .get_sync_state(GetSyncStateRequest {})
            .await
            .expect("sync")
            .into_inner();
        if state.registers_cursor >= cursor {
            synced = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(synced, "the policy service followed the feed");
    let mut stream = policy
        .watch_triggers(WatchTriggersRequest { cursor: 0 })
        .await
        .expect("watch")
        .into_inner();
    let mut missed = None;
    while let Ok(Some(message)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
            .await
            .expect("in time")
    {
        let trigger = message.trigger.expect("trigger");
        if trigger.kind == TriggerKind::MissedTarget as i32 {
            missed = Some(trigger.state);
            break;
        }
    }
    assert_eq!(missed, Some(TriggerState::Raised as i32));

    // A lesson check finds the pupil missing after registration on Wednesday 17 September. The
    // flag becomes one incident, with the parents informed and support offered.
    let recorded = registers
        .record_lesson_check(RecordLessonCheckRequest {
            request_id: "period-3".into(),
            laestab: LAESTAB.into(),
            date: "2025-09-17".into(),
            session: Session::Am as i32,
            kind: CheckKind::Lesson as i32,
            label: "Year 8 science, period 3".into(),
            taken_at: None,
            recorded_by: "A Teacher".into(),
            recorded_by_position: "Science teacher".into(),
            marks: vec![LessonMark {
                upn: UPN.into(),
                present: false,
            }],
        })
        .await
        .expect("lesson check")
        .into_inner();
    let flag = recorded.flags.first().expect("a flag").id.clone();
    let listed = cases
        .list_truancy_incidents(ListTruancyIncidentsRequest {
            laestab: LAESTAB.into(),
        })
        .await
        .expect("incidents")
        .into_inner();
    assert_eq!(listed.flags_not_dealt_with, std::slice::from_ref(&flag));
    let incident = RecordTruancyIncidentRequest {
        laestab: LAESTAB.into(),
        flag_id: flag.clone(),
        sanction: "Lunchtime detention".into(),
        parents_informed_on: "2025-09-17".into(),
        parents_informed_how: "phone call".into(),
        support_offered: "Weekly mentoring with the head of year".into(),
        recorded_by: "P Green".into(),
        role: "head_of_year".into(),
    };
    let mut untold = incident.clone();
    untold.parents_informed_how = String::new();
    let error = cases
        .record_truancy_incident(untold)
        .await
        .expect_err("parents are always told");
    assert!(
        error.message().contains("parents_informed_how"),
        "{}",
        error.message()
    );
    let first = cases
        .record_truancy_incident(incident.clone())
        .await
        .expect("incident")
        .into_inner();
    assert!(!first.already_recorded);
    let again = cases
        .record_truancy_incident(incident)
        .await
        .expect("same flag")
        .into_inner();
    assert!(again.already_recorded);
    let listed = cases
        .list_truancy_incidents(ListTruancyIncidentsRequest {
            laestab: LAESTAB.into(),
        })
        .await
        .expect("incidents")
        .into_inner();
    assert_eq!(listed.incidents.len(), 1);
    assert!(listed.flags_not_dealt_with.is_empty());
    let timeline = cases
        .get_case_timeline(GetCaseTimelineRequest {
            case_id: case.id.clone(),
        })
        .await
        .expect("timeline")
        .into_inner()
        .entries;
    assert!(timeline.iter().any(|entry| entry.kind == "truancy"));

    // Rewards given are recorded once per pupil, reward and period.
    let reward = RecordRewardRequest {
        laestab: LAESTAB.into(),
        upn: UPN.into(),
        reward: "excellent_punctuality".into(),
        period_from: "2025-09-01".into(),
        period_to: "2025-09-19".into(),
        given_on: "2025-09-22".into(),
        given_by: "P Green".into(),
        notes: "Certificate in assembly".into(),
    };
    for expected in [false, true] {
        let given = cases
            .record_reward(reward.clone())
            .await
            .expect("reward")
            .into_inner();
        assert_eq!(given.already_recorded, expected);
    }
    let mut unknown = reward;
    unknown.reward = "gold_star".into();
    let error = cases
        .record_reward(unknown)
        .await
        .expect_err("unknown reward");
    assert!(
        error.message().contains("excellent_attendance"),
        "{}",
        error.message()
    );
    let given = cases
        .list_given_rewards(ListGivenRewardsRequest {
            laestab: LAESTAB.into(),
        })
        .await
        .expect("rewards")
        .into_inner()
        .rewards;
    assert_eq!(given.len(), 1);

    // The same from the command line: the flag is already dealt with, and the plan closes.
    let server = running.url();
    let again = cli(
        &server,
        &[
            "case",
            "truancy",
            "--school",
            LAESTAB,
            "--flag",
            &flag,
            "--sanction",
            "Detention",
            "--parents-informed-on",
            "2025-09-17",
            "--parents-informed-how",
            "letter",
            "--support",
            "Mentoring",
            "--by",
            "P Green",
        ],
    )
    .await;
    assert!(again.contains("already has incident"), "{again}");
    let closed = cli(
        &server,
        &[
            "case",
            "review-plan",
            "--plan",
            &created.id,
            "--on",
            "2025-10-03",
            "--by",
            "D Khan",
        ],
    )
    .await;
    assert!(closed.contains("The plan is closed"), "{closed}");
    assert!(closed.contains("missed"), "{closed}");

    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_on_sqlite() {
    plans(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    plans(Some(&url)).await;
}
