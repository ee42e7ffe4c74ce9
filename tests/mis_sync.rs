//! The MIS sync API on a real server, as a vendor uses it: pupils, calendars and marks in
//! batches and over one stream, MIS ids mapped to UPNs, a result per row, idempotency keys,
//! dry runs, leavers and moves between the trust's schools. Each scenario runs on SQLite and
//! on PostgreSQL.

use std::path::Path;

use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::mis_adapter::v1::{
    ListPupilIdsRequest, RowOutcome, RowResult, StreamSyncRequest, SyncCalendarRequest, SyncMark,
    SyncMarksRequest, SyncPupil, SyncPupilsRequest, stream_sync_request, stream_sync_response,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    Calendar, Closure, ClosureKind, GetPupilRequest, ListMarkVersionsRequest, ListMarksRequest,
    RegisterTimes, Term,
};
use rollcall_api::types::v1::{MarkSource, Phase, Session};
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use tonic::Code;
use tonic::transport::Channel;

const SCHOOL_A: &str = "9192001";
const SCHOOL_B: &str = "9192002";

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

fn upn(serial: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 0, serial]).to_string()
}

/// Returns a UPN whose check letter does not match its digits.
fn bad_upn() -> String {
    let good = upn(9);
    let wrong = if good.starts_with('A') { 'B' } else { 'A' };
    format!("{wrong}{}", &good[1..])
}

async fn start(work: &Path, database_url: Option<&str>) -> RunningServer {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    server::start(config).await.expect("server starts")
}

async fn channel(running: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect")
}

fn pupil(mis_id: &str, upn: &str, admission: &str) -> SyncPupil {
    SyncPupil {
        mis_id: mis_id.into(),
        upn: upn.into(),
        forename: "Test".into(),
        surname: format!("Pupil {}", &upn[10..]),
        date_of_birth: "2013-05-01".into(),
        sex: "F".into(),
        admission_date: admission.into(),
        year_group: "8".into(),
        class_name: "8B".into(),
        ..SyncPupil::default()
    }
}

fn mark(mis_id: &str, date: &str, code: &str) -> SyncMark {
    SyncMark {
        mis_id: mis_id.into(),
        date: date.into(),
        session: Session::Am as i32,
        code: code.into(),
        ..SyncMark::default()
    }
}

fn pupils_batch(school: &str, key: &str, pupils: Vec<SyncPupil>) -> SyncPupilsRequest {
    SyncPupilsRequest {
        laestab: school.into(),
        school_name: format!("Academy {school}"),
        phase: Phase::Secondary as i32,
        idempotency_key: key.into(),
        source_name: "Example MIS 4.2".into(),
        dry_run: false,
        pupils,
    }
}

fn marks_batch(key: &str, marks: Vec<SyncMark>) -> SyncMarksRequest {
    SyncMarksRequest {
        laestab: SCHOOL_A.into(),
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
        .enumerate()
        .map(|(row, result)| {
            assert_eq!(
                result.index,
                i32::try_from(row).expect("small"),
                "{result:?}"
            );
            (result.outcome(), result.reason_code.clone())
        })
        .collect()
}

fn applied() -> (RowOutcome, String) {
    (RowOutcome::Applied, String::new())
}

fn unchanged() -> (RowOutcome, String) {
    (RowOutcome::Unchanged, String::new())
}

fn rejected(code: &str) -> (RowOutcome, String) {
    (RowOutcome::Rejected, code.to_owned())
}

async fn mark_count(registers: &mut RegistersServiceClient<Channel>, school: &str) -> usize {
    registers
        .list_marks(ListMarksRequest {
            laestab: school.into(),
            page_size: 1_000,
            ..ListMarksRequest::default()
        })
        .await
        .expect("list marks")
        .into_inner()
        .marks
        .len()
}

async fn batches_apply_valid_rows_and_reject_the_rest(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let channel = channel(&running).await;
    let mut sync = MisSyncServiceClient::new(channel.clone());
    let mut registers = RegistersServiceClient::new(channel);

    // Pupils: two valid, a bad check letter, a missing MIS id, an exact repeat (merged) and
    // the same MIS id with another UPN.
    let first = pupils_batch(
        SCHOOL_A,
        "pupils-1",
        vec![
            pupil("m1", &upn(1), "2025-09-01"),
            pupil("m2", &upn(2), "2025-09-08"),
            pupil("m3", &bad_upn(), "2025-09-01"),
            pupil("", &upn(4), "2025-09-01"),
            pupil("m1", &upn(1), "2025-09-01"),
            pupil("m2", &upn(5), "2025-09-01"),
        ],
    );
    let response = sync
        .sync_pupils(first.clone())
        .await
        .expect("pupils batch")
        .into_inner();
    assert!(!response.replayed);
    assert_eq!(
        outcomes(&response.results),
        vec![
            applied(),
            applied(),
            rejected("invalid_upn"),
            rejected("missing_mis_id"),
            unchanged(),
            rejected("conflicting_duplicate"),
        ]
    );
    assert_eq!(response.results[0].note, "new pupil");
    assert_eq!(response.results[0].upn, upn(1));
    assert!(
        response.results[2].reason.contains("check letter"),
        "{}",
        response.results[2].reason
    );
    let counts = response.counts.expect("counts");
    assert_eq!(
        (counts.applied, counts.unchanged, counts.rejected),
        (2, 1, 3)
    );

    // Sex and year group are checked, a year group is stored in its usual form, and a repeat
    // of an earlier row names that row.
    let mut odd_sex = pupil("m7", &upn(7), "2025-09-01");
    odd_sex.sex = "Male".into();
    let mut odd_year = pupil("m8", &upn(8), "2025-09-01");
    odd_year.year_group = "Year 8".into();
    let mut padded = pupil("m9", &upn(9), "2025-09-01");
    padded.year_group = "08".into();
    padded.sex = "f".into();
    let mut unborn = pupil("m6", &upn(6), "2025-09-01");
    unborn.date_of_birth = "2030-01-01".into();
    let checked = sync
        .sync_pupils(pupils_batch(
            SCHOOL_A,
            "pupils-checked",
            vec![odd_sex, odd_year, padded.clone(), padded, unborn],
        ))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        outcomes(&checked.results),
        vec![
            rejected("invalid_sex"),
            rejected("invalid_year_group"),
            applied(),
            unchanged(),
            rejected("invalid_date"),
        ]
    );
    assert_eq!(
        checked.results[3].note,
        "the same as row 2 of this batch, so merged with it"
    );
    let stored = registers
        .get_pupil(GetPupilRequest { upn: upn(9) })
        .await
        .expect("pupil")
        .into_inner()
        .pupil
        .expect("pupil");
    assert_eq!(stored.sex, "F");
    assert_eq!(stored.enrolments[0].year_group, "8");

    // The same batch again is a replay; the same key with other rows is refused.
    let replay = sync
        .sync_pupils(first.clone())
        .await
        .expect("replay")
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.results, response.results);
    let mut changed = first.clone();
    changed.pupils.truncate(1);
    let error = sync.sync_pupils(changed).await.expect_err("reused key");
    assert_eq!(error.code(), Code::AlreadyExists);
    assert!(error.message().contains("pupils-1"), "{}", error.message());

    // Marks, named by MIS id or UPN.
    let mut with_comment = mark("m2", "2025-09-08", "M");
    with_comment.comment = "Dental appointment".into();
    let mut by_upn = mark("", "2025-09-03", "/");
    by_upn.upn = upn(1).to_lowercase();
    let marks = marks_batch(
        "marks-1",
        vec![
            mark("m1", "2025-09-02", "/"),
            with_comment,
            mark("m99", "2025-09-02", "/"),
            mark("m1", "02/09/2025", "/"),
            mark("m2", "2025-09-02", "/"),
            mark("m1", "2025-09-04", "9"),
            by_upn,
        ],
    );
    let response = sync
        .sync_marks(marks.clone())
        .await
        .expect("marks batch")
        .into_inner();
    assert_eq!(
        outcomes(&response.results),
        vec![
            applied(),
            applied(),
            rejected("unknown_mis_id"),
            rejected("invalid_date"),
            rejected("not_on_roll"),
            rejected("invalid_code"),
            applied(),
        ]
    );
    assert_eq!(response.results[3].field, "date");
    assert_eq!(response.results[3].value, "02/09/2025");
    assert!(
        response.results[4].reason.contains("not on roll"),
        "{}",
        response.results[4].reason
    );
    assert_eq!(mark_count(&mut registers, SCHOOL_A).await, 3);
    let stored = registers
        .list_marks(ListMarksRequest {
            laestab: SCHOOL_A.into(),
            upn: upn(2),
            ..ListMarksRequest::default()
        })
        .await
        .expect("marks")
        .into_inner()
        .marks;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].code, "M");
    assert_eq!(stored[0].reason, "Dental appointment");
    assert_eq!(stored[0].recorded_by, "Example MIS 4.2");

    // Sending the marks again changes nothing and stores no second version.
    let replay = sync.sync_marks(marks).await.expect("replay").into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.results, response.results);
    let again = sync
        .sync_marks(marks_batch("marks-2", vec![mark("m1", "2025-09-02", "/")]))
        .await
        .expect("same marks, new key")
        .into_inner();
    assert_eq!(outcomes(&again.results), vec![unchanged()]);
    let versions = registers
        .list_mark_versions(ListMarkVersionsRequest {
            upn: upn(1),
            laestab: SCHOOL_A.into(),
            date: "2025-09-02".into(),
            session: Session::Am as i32,
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(versions.len(), 1);

    // A dry run reports what would change and stores nothing, and needs no key.
    let mut dry = marks_batch(
        "",
        vec![mark("m1", "2025-09-02", "I"), mark("m1", "2025-09-05", "/")],
    );
    dry.dry_run = true;
    let response = sync.sync_marks(dry).await.expect("dry run").into_inner();
    assert!(response.dry_run);
    assert_eq!(outcomes(&response.results), vec![applied(), applied()]);
    assert_eq!(mark_count(&mut registers, SCHOOL_A).await, 3);
    let error = sync
        .sync_marks(marks_batch("", vec![mark("m1", "2025-09-05", "/")]))
        .await
        .expect_err("no key");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("idempotency_key"),
        "{}",
        error.message()
    );

    // A time taken in the future is rejected. A mark taken before the effective version is
    // stored behind it once, and sending it again stores nothing.
    let mut future = mark("m1", "2025-09-09", "/");
    future.recorded_at = Some(prost_types::Timestamp {
        seconds: 4_102_444_800,
        nanos: 0,
    });
    let mut older = mark("m1", "2025-09-02", "I");
    older.recorded_at = Some(prost_types::Timestamp {
        seconds: 1_756_800_000,
        nanos: 0,
    });
    let response = sync
        .sync_marks(marks_batch("marks-3", vec![future, older.clone()]))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        outcomes(&response.results),
        vec![rejected("invalid_time"), applied()]
    );
    assert_eq!(response.results[0].field, "recorded_at");
    assert_eq!(
        response.results[1].note,
        "stored; a version taken later is in force"
    );
    let again = sync
        .sync_marks(marks_batch("marks-4", vec![older]))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(outcomes(&again.results), vec![unchanged()]);

    // The MIS ids known at the school.
    let ids = sync
        .list_pupil_ids(ListPupilIdsRequest {
            laestab: SCHOOL_A.into(),
            ..ListPupilIdsRequest::default()
        })
        .await
        .expect("ids")
        .into_inner()
        .ids;
    let ids: Vec<(String, String)> = ids.into_iter().map(|id| (id.mis_id, id.upn)).collect();
    assert_eq!(
        ids,
        vec![
            ("m1".into(), upn(1)),
            ("m2".into(), upn(2)),
            ("m9".into(), upn(9))
        ]
    );

    // A known MIS id sent with another permanent UPN is not remapped, and staff are told how
    // to change the UPN once they have confirmed it. A temporary UPN replaced by a permanent
    // one is tested in tests/upn_change.rs.
    let response = sync
        .sync_pupils(pupils_batch(
            SCHOOL_A,
            "pupils-2",
            vec![pupil("m1", &upn(6), "2025-09-01")],
        ))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(outcomes(&response.results), vec![rejected("upn_changed")]);
    let reason = &response.results[0].reason;
    assert!(
        reason.contains(&format!(
            "rollcall pupil change-upn --from {} --to {}",
            upn(1),
            upn(6)
        )),
        "{reason}"
    );

    // Marks for a school rollcall does not hold are refused as a whole.
    let mut elsewhere = marks_batch("marks-x", vec![mark("m1", "2025-09-02", "/")]);
    elsewhere.laestab = "9199999".into();
    let error = sync
        .sync_marks(elsewhere)
        .await
        .expect_err("unknown school");
    assert_eq!(error.code(), Code::NotFound);
    assert!(error.message().contains("9199999"), "{}", error.message());
    let mut nameless = pupils_batch(
        "9199999",
        "new-school",
        vec![pupil("m1", &upn(1), "2025-09-01")],
    );
    nameless.phase = Phase::Unspecified as i32;
    let error = sync.sync_pupils(nameless).await.expect_err("no phase");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("invalid phase"),
        "{}",
        error.message()
    );

    running.stop().await.expect("stops");
}

on_both_databases!(
    batches_apply_valid_rows_and_reject_the_rest,
    batches_on_sqlite,
    batches_on_postgres
);

async fn leavers_and_moves_are_followed(work: &Path, database_url: Option<&str>) {
    let running = start(work, database_url).await;
    let channel = channel(&running).await;
    let mut sync = MisSyncServiceClient::new(channel.clone());
    let mut registers = RegistersServiceClient::new(channel);

    sync.sync_pupils(pupils_batch(
        SCHOOL_A,
        "a-1",
        vec![
            pupil("a1", &upn(1), "2025-09-01"),
            pupil("a2", &upn(2), "2025-09-01"),
        ],
    ))
    .await
    .expect("school A");
    sync.sync_marks(marks_batch(
        "a-marks",
        vec![mark("a1", "2025-09-02", "/"), mark("a2", "2025-09-09", "/")],
    ))
    .await
    .expect("marks at A");

    // Pupil 1 moves to school B, admitted on 8 September: A's enrolment ends on the 7th.
    let response = sync
        .sync_pupils(pupils_batch(
            SCHOOL_B,
            "b-1",
            vec![
                pupil("b-77", &upn(1), "2025-09-08"),
                pupil("b-78", &upn(2), "2025-09-08"),
            ],
        ))
        .await
        .expect("school B")
        .into_inner();
    assert_eq!(
        outcomes(&response.results),
        vec![applied(), rejected("on_roll_elsewhere")]
    );
    assert_eq!(
        response.results[0].note,
        "admitted; moved from school 9192001"
    );
    assert!(
        response.results[1].reason.contains("9192001"),
        "{}",
        response.results[1].reason
    );
    let moved = registers
        .get_pupil(GetPupilRequest { upn: upn(1) })
        .await
        .expect("pupil")
        .into_inner()
        .pupil
        .expect("pupil");
    let at_a = moved
        .enrolments
        .iter()
        .find(|enrolment| enrolment.laestab == SCHOOL_A)
        .expect("enrolment at A");
    assert_eq!(at_a.leaving_date, "2025-09-07");
    assert!(
        at_a.leaving_reason.contains(SCHOOL_B),
        "{}",
        at_a.leaving_reason
    );
    assert!(
        moved
            .enrolments
            .iter()
            .any(|e| e.laestab == SCHOOL_B && e.leaving_date.is_empty())
    );

    // School A's MIS, not yet informed of the move, cannot extend pupil 1's time at A past it.
    let mut late_leaver = pupil("a1", &upn(1), "2025-09-01");
    late_leaver.leaving_date = "2025-09-10".into();
    let response = sync
        .sync_pupils(pupils_batch(SCHOOL_A, "a-late", vec![late_leaver]))
        .await
        .expect("late leaving")
        .into_inner();
    assert_eq!(
        outcomes(&response.results),
        vec![rejected("on_roll_elsewhere")]
    );

    // The MIS records that pupil 2 left A on 12 September; marks after it are rejected.
    let mut leaver = pupil("a2", &upn(2), "2025-09-01");
    leaver.leaving_date = "2025-09-12".into();
    let response = sync
        .sync_pupils(pupils_batch(SCHOOL_A, "a-2", vec![leaver.clone()]))
        .await
        .expect("leaver")
        .into_inner();
    assert_eq!(outcomes(&response.results), vec![applied()]);
    assert_eq!(response.results[0].note, "left on 2025-09-12");
    let response = sync
        .sync_marks(marks_batch(
            "a-marks-2",
            vec![mark("a2", "2025-09-12", "/"), mark("a2", "2025-09-15", "/")],
        ))
        .await
        .expect("marks")
        .into_inner();
    assert_eq!(
        outcomes(&response.results),
        vec![applied(), rejected("not_on_roll")]
    );
    // A leaving date before marks already held is rejected.
    leaver.leaving_date = "2025-09-10".into();
    let response = sync
        .sync_pupils(pupils_batch(SCHOOL_A, "a-3", vec![leaver]))
        .await
        .expect("early leaving")
        .into_inner();
    assert_eq!(
        outcomes(&response.results),
        vec![rejected("marks_after_leaving")]
    );

    // The same UPN under a second MIS id at one school is the same pupil.
    let response = sync
        .sync_pupils(pupils_batch(
            SCHOOL_B,
            "b-2",
            vec![pupil("b-99", &upn(1), "2025-09-08")],
        ))
        .await
        .expect("second id")
        .into_inner();
    assert_eq!(outcomes(&response.results), vec![unchanged()]);
    let ids = sync
        .list_pupil_ids(ListPupilIdsRequest {
            laestab: SCHOOL_B.into(),
            page_size: 1,
            ..ListPupilIdsRequest::default()
        })
        .await
        .expect("ids")
        .into_inner();
    assert_eq!(ids.ids.len(), 1);
    assert_eq!(ids.next_page_token, "b-77");
    let rest = sync
        .list_pupil_ids(ListPupilIdsRequest {
            laestab: SCHOOL_B.into(),
            page_size: 10,
            page_token: ids.next_page_token,
        })
        .await
        .expect("ids")
        .into_inner();
    let rest: Vec<(String, String)> = rest.ids.into_iter().map(|id| (id.mis_id, id.upn)).collect();
    assert_eq!(rest, vec![("b-99".into(), upn(1))]);

    running.stop().await.expect("stops");
}

on_both_databases!(
    leavers_and_moves_are_followed,
    moves_on_sqlite,
    moves_on_postgres
);

fn calendar() -> Calendar {
    let times = |opens: &str, closes: &str| RegisterTimes {
        opens: opens.into(),
        closes: closes.into(),
    };
    Calendar {
        laestab: SCHOOL_A.into(),
        time_zone: "Europe/London".into(),
        am: Some(times("08:40", "09:00")),
        pm: Some(times("13:15", "13:30")),
        terms: vec![Term {
            name: "Autumn".into(),
            first_day: "2025-09-01".into(),
            last_day: "2025-12-19".into(),
        }],
        closures: Vec::new(),
    }
}

async fn a_stream_returns_each_batch_result_in_order(work: &Path, database_url: Option<&str>) {
    use stream_sync_request::Batch;
    use stream_sync_response::Result as BatchResult;

    let running = start(work, database_url).await;
    let mut sync = MisSyncServiceClient::new(channel(&running).await);
    let batches = [
        Batch::Pupils(pupils_batch(
            SCHOOL_A,
            "s-1",
            vec![pupil("m1", &upn(1), "2025-09-01")],
        )),
        Batch::Calendar(SyncCalendarRequest {
            calendar: Some(calendar()),
            idempotency_key: "s-2".into(),
            source_name: "Example MIS 4.2".into(),
        }),
        Batch::Marks(marks_batch(
            "s-3",
            vec![mark("m1", "2025-09-01", "/"), mark("m1", "2025-09-06", "/")],
        )),
    ];
    let requests: Vec<StreamSyncRequest> = batches
        .iter()
        .cloned()
        .map(|batch| StreamSyncRequest { batch: Some(batch) })
        .collect();
    let mut responses = sync
        .stream_sync(tokio_stream::iter(requests.clone()))
        .await
        .expect("stream")
        .into_inner();
    let mut results = Vec::new();
    while let Some(response) = responses.message().await.expect("result") {
        results.push(response);
    }
    assert_eq!(results.len(), 3);
    for (index, response) in results.iter().enumerate() {
        assert_eq!(response.batch_index, i32::try_from(index).expect("small"));
    }
    match &results[2].result {
        Some(BatchResult::Marks(marks)) => assert_eq!(
            outcomes(&marks.results),
            // 6 September 2025 is a Saturday in the calendar just sent.
            vec![applied(), rejected("calendar_conflict")]
        ),
        other => panic!("expected a marks result, got {other:?}"),
    }

    // The same stream again replays every batch; a batch refused as a whole ends the stream
    // after the results before it.
    let mut again = requests;
    again.push(StreamSyncRequest {
        batch: Some(Batch::Marks(marks_batch("has space", Vec::new()))),
    });
    again.push(StreamSyncRequest {
        batch: Some(Batch::Marks(marks_batch(
            "s-5",
            vec![mark("m1", "2025-09-02", "/")],
        ))),
    });
    let mut responses = sync
        .stream_sync(tokio_stream::iter(again))
        .await
        .expect("stream")
        .into_inner();
    let mut replayed = 0;
    let error = loop {
        match responses.message().await {
            Ok(Some(response)) => {
                let was_replayed = match response.result {
                    Some(BatchResult::Pupils(result)) => result.replayed,
                    Some(BatchResult::Calendar(result)) => result.replayed,
                    Some(BatchResult::Marks(result)) => result.replayed,
                    None => false,
                };
                assert!(
                    was_replayed,
                    "batch {} was applied again",
                    response.batch_index
                );
                replayed += 1;
            }
            Ok(None) => panic!("the stream ended without the refused batch's error"),
            Err(status) => break status,
        }
    };
    assert_eq!(replayed, 3);
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("batch 3: "),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("idempotency_key"),
        "{}",
        error.message()
    );

    // A planned closure from the MIS replaces the day's marks with #, recorded as MIS sync.
    let mut closed = calendar();
    closed.closures.push(Closure {
        date: "2025-09-01".into(),
        session: Session::Unspecified as i32,
        kind: ClosureKind::Planned as i32,
        reason: "INSET day".into(),
    });
    let response = sync
        .sync_calendar(SyncCalendarRequest {
            calendar: Some(closed),
            idempotency_key: "s-6".into(),
            source_name: "Example MIS 4.2".into(),
        })
        .await
        .expect("calendar")
        .into_inner();
    assert_eq!(response.marks_closed, 1);
    let versions = RegistersServiceClient::new(channel(&running).await)
        .list_mark_versions(ListMarkVersionsRequest {
            upn: upn(1),
            laestab: SCHOOL_A.into(),
            date: "2025-09-01".into(),
            session: Session::Am as i32,
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    let closure = versions
        .last()
        .and_then(|version| version.mark.clone())
        .expect("the # version");
    assert_eq!(closure.code, "#");
    assert_eq!(closure.source(), MarkSource::MisSync);

    running.stop().await.expect("stops");
}

on_both_databases!(
    a_stream_returns_each_batch_result_in_order,
    stream_on_sqlite,
    stream_on_postgres
);
