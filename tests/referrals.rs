//! Referrals on a real server, through the `rollcall` command line: drafts and their
//! prerequisites, submission blocked until the case file is complete or a senior leader
//! overrides it, the signed pack and `rollcall pack verify`, a statutory return, and the local
//! authority's outcomes with the amount due on a penalty notice.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use chrono::{Days, Utc};
use common::{cli, cli_error, run_offline};
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::cases::v1::{
    GetSyncStateRequest as CasesSyncRequest, ListCasesRequest, ListMessagesRequest, MessageStatus,
    RecordActionRequest,
};
use rollcall_api::policy::v1::GetSyncStateRequest as PolicySyncRequest;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    Contact, ContactChannel, ImportMarks, ImportPupil, Mark, Pupil, PupilContacts,
    SetPupilContactsRequest, import_register_request::Item,
};
use rollcall_api::types::v1::Session;
use rollcall_cli::server::{self, ServerConfig};
use rollcall_domain::Upn;
use rollcall_mis_adapter::DeliveryConfig;
use rollcall_referrals::ReferralsConfig;
use rollcall_testkit::la::ReceivingServer;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

const LAESTAB: &str = "9192001";

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

fn upn(n: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 2, n])
        .as_str()
        .to_owned()
}

struct Clients {
    registers: RegistersServiceClient<Channel>,
    policy: PolicyServiceClient<Channel>,
    cases: CasesServiceClient<Channel>,
}

async fn import(
    registers: &mut RegistersServiceClient<Channel>,
    request_id: &str,
    items: Vec<Item>,
) -> i64 {
    common::import_register(registers, LAESTAB, request_id, items).await
}

/// Marks for pupil `n` on the days in `days`, both sessions, with `code`.
fn marks(n: u8, days: &[&str], code: &str) -> Vec<Mark> {
    days.iter()
        .flat_map(|day| {
            [Session::Am, Session::Pm].map(|session| Mark {
                upn: upn(n),
                date: (*day).into(),
                session: session as i32,
                code: code.into(),
                recorded_at: Some(prost_types::Timestamp {
                    seconds: 1_757_318_400,
                    nanos: 0,
                }),
                ..Mark::default()
            })
        })
        .collect()
}

async fn wait_for_cases(clients: &mut Clients, cursor: i64) {
    for _ in 0..1200 {
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
        let messages = clients
            .cases
            .list_messages(ListMessagesRequest {
                laestab: LAESTAB.into(),
                page_size: 1_000,
                ..ListMessagesRequest::default()
            })
            .await
            .expect("messages")
            .into_inner()
            .messages;
        let sending = messages.iter().any(|message| {
            message.status == MessageStatus::Queued as i32
                || message.status == MessageStatus::Sending as i32
        });
        if policy.registers_cursor >= cursor
            && cases.trigger_cursor >= policy.trigger_cursor
            && cases.pending_letters == 0
            && !sending
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the services did not catch up with feed position {cursor}");
}

/// Waits until every delivery of the referral is delivered.
async fn wait_for_delivery(url: &str, referral_id: &str) {
    for _ in 0..600 {
        let listed = json(
            &cli(
                url,
                &["delivery", "list", "--referral", referral_id, "--json"],
            )
            .await,
        );
        let deliveries = listed.as_array().expect("deliveries");
        if !deliveries.is_empty()
            && deliveries
                .iter()
                .all(|delivery| delivery["status"] == "delivered")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("referral {referral_id} was not delivered within a minute");
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

fn check<'a>(referral: &'a Value, name: &str) -> &'a Value {
    referral["prerequisites"]
        .as_array()
        .expect("prerequisites")
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("prerequisite {name} in {referral:#}"))
}

fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a ZIP archive");
    (0..archive.len())
        .map(|index| {
            let mut entry = archive.by_index(index).expect("entry");
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read entry");
            (entry.name().to_owned(), content)
        })
        .collect()
}

/// Writes the archive again with one byte of `name` changed.
fn tamper(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (entry, mut content) in zip_entries(bytes) {
        if entry == name {
            content[0] ^= 0x20;
        }
        writer
            .start_file(entry, zip::write::SimpleFileOptions::default())
            .expect("start entry");
        writer.write_all(&content).expect("write entry");
    }
    writer.finish().expect("finish").into_inner()
}

async fn record_action(cases: &mut CasesServiceClient<Channel>, case_id: &str, kind: &str) {
    cases
        .record_action(RecordActionRequest {
            request_id: format!("{case_id}-{kind}"),
            case_id: case_id.into(),
            kind: kind.into(),
            taken_on: "2025-09-15".into(),
            outcome: "Recorded for the test".into(),
            recorded_by: "A Lead".into(),
            role: "senior_attendance_lead".into(),
            ..RecordActionRequest::default()
        })
        .await
        .expect("record action");
}

async fn offline(args: &[&str]) -> std::process::Output {
    run_offline(args.iter().map(|arg| (*arg).to_owned()).collect()).await
}

/// The key the local authority's receiving server shares with the trust.
const HMAC_KEY: &str = "a-test-key-the-trust-shares-with-the-authority";

async fn referrals(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    let receiver = ReceivingServer::start(HMAC_KEY.as_bytes())
        .await
        .expect("receiving server");
    let key_file = work.path().join("la-key");
    std::fs::write(&key_file, HMAC_KEY).expect("key file");
    let ca_file = work.path().join("la-ca.pem");
    std::fs::write(&ca_file, receiver.ca_pem()).expect("CA file");
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        data.clone(),
        database_url,
    )
    .expect("config");
    // The letters are written today for absences of 2025, and a letter counts as served from
    // the day it was sent, so the test requires no school days between letter and request.
    config.referrals =
        ReferralsConfig::parse("warning_school_days = 0").expect("referral settings");
    config.delivery = DeliveryConfig::parse(&format!(
        "[[destination]]\nname = \"hertfordshire\"\nkind = \"https\"\nurl = \"{}\"\n\
         hmac_key_file = {:?}\nca_file = {:?}\ntimeout_seconds = 5\n\n\
         [retries]\nfirst_retry_seconds = 0.1\nmax_retry_seconds = 0.5\n\n\
         [worker]\npoll_seconds = 0.05\n",
        receiver.url(),
        key_file.display().to_string(),
        ca_file.display().to_string(),
    ))
    .expect("delivery settings");
    let running = server::start(config).await.expect("server starts");
    let url = running.url();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    let mut clients = Clients {
        registers: RegistersServiceClient::new(channel.clone()),
        policy: PolicyServiceClient::new(channel.clone()),
        cases: CasesServiceClient::new(channel),
    };

    // Three pupils with a parent each, absent without authorisation in the first week.
    let pupils = (1..=3)
        .map(|n| {
            Item::Pupil(ImportPupil {
                pupil: Some(Pupil {
                    upn: upn(n),
                    forename: format!("Pupil{n}"),
                    surname: "Test".into(),
                    date_of_birth: "2012-03-01".into(),
                    sex: "F".into(),
                    enrolments: Vec::new(),
                }),
                admission_date: "2025-09-01".into(),
                year_group: "8".into(),
                ..ImportPupil::default()
            })
        })
        .collect();
    import(&mut clients.registers, "pupils", pupils).await;
    clients
        .registers
        .set_pupil_contacts(SetPupilContactsRequest {
            pupils: (1..=3)
                .map(|n| PupilContacts {
                    upn: upn(n),
                    contacts: vec![Contact {
                        priority: 1,
                        name: format!("Parent Of{n}"),
                        relationship: "Mother".into(),
                        parental_responsibility: true,
                        address_lines: vec![format!("{n} Mill Lane"), "Hitchin".into()],
                        postcode: "SG5 1AA".into(),
                        preferred_channel: ContactChannel::Letter as i32,
                        ..Contact::default()
                    }],
                })
                .collect(),
        })
        .await
        .expect("contacts");
    let mut first_week = Vec::new();
    for n in 1..=3 {
        first_week.extend(marks(n, &DAYS[..4], "O"));
    }
    let cursor = import(
        &mut clients.registers,
        "week-1",
        vec![Item::Marks(ImportMarks { marks: first_week })],
    )
    .await;
    wait_for_cases(&mut clients, cursor).await;
    // Pupil 1 reaches 16 unauthorised sessions, pupil 2 attends, pupil 3 stays away.
    let mut rest = marks(1, &DAYS[4..8], "O");
    rest.extend(marks(1, &DAYS[8..], "/"));
    rest.extend(marks(2, &DAYS[4..], "/"));
    rest.extend(marks(3, &DAYS[4..], "O"));
    let cursor = import(
        &mut clients.registers,
        "week-2",
        vec![Item::Marks(ImportMarks { marks: rest })],
    )
    .await;
    wait_for_cases(&mut clients, cursor).await;

    // A penalty-notice request: the warning letter went, but nothing is recorded yet of an
    // assessment or support.
    let draft = json(
        &cli(
            &url,
            &[
                "referral",
                "create",
                "--upn",
                &upn(1),
                "--kind",
                "penalty_notice",
                "--by",
                "A Lead",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(draft["status"], "draft");
    let reference = draft["reference"].as_str().expect("reference").to_owned();
    assert!(reference.starts_with("9192001-2026-"), "{reference}");
    assert_eq!(check(&draft, "threshold_met")["met"], true, "{draft:#}");
    assert_eq!(
        check(&draft, "warning_letter_served")["met"],
        true,
        "{draft:#}"
    );
    assert_eq!(check(&draft, "not_independent_school")["met"], true);
    assert_eq!(check(&draft, "circumstances_assessed")["met"], false);
    assert_eq!(check(&draft, "support_offered")["met"], false);

    let blocked = cli_error(
        &url,
        &[
            "referral",
            "submit",
            &reference,
            "--by",
            "A Lead",
            "--role",
            "senior_attendance_lead",
        ],
    )
    .await;
    assert!(blocked.contains("circumstances_assessed"), "{blocked}");
    assert!(blocked.contains("support_offered"), "{blocked}");
    let refused = cli_error(
        &url,
        &[
            "referral",
            "submit",
            &reference,
            "--by",
            "H Year",
            "--role",
            "head_of_year",
            "--override-reason",
            "Urgent",
        ],
    )
    .await;
    assert!(refused.contains("cannot override"), "{refused}");
    let still = json(&cli(&url, &["referral", "show", &reference, "--json"]).await);
    assert_eq!(still["status"], "draft");
    assert_eq!(still["pack_sha256"], "");

    // The school records the assessment and a meeting; now every prerequisite holds.
    let case_id = clients
        .cases
        .list_cases(ListCasesRequest {
            laestab: LAESTAB.into(),
            ..ListCasesRequest::default()
        })
        .await
        .expect("cases")
        .into_inner()
        .cases
        .into_iter()
        .find(|case| case.upn == upn(1))
        .expect("pupil 1 has a case")
        .id;
    record_action(&mut clients.cases, &case_id, "assessment").await;
    record_action(&mut clients.cases, &case_id, "meeting").await;
    let submitted = json(
        &cli(
            &url,
            &[
                "referral",
                "submit",
                &reference,
                "--by",
                "A Lead",
                "--role",
                "senior_attendance_lead",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(submitted["status"], "submitted", "{submitted:#}");
    assert!(submitted["override"].is_null());
    assert_eq!(
        submitted["delivery_ids"].as_array().map(Vec::len),
        Some(1),
        "{submitted:#}"
    );
    assert_eq!(submitted["delivery_problem"], "");
    let sha256 = submitted["pack_sha256"]
        .as_str()
        .expect("sha256")
        .to_owned();
    assert_eq!(sha256.len(), 64);
    let again = cli_error(
        &url,
        &[
            "referral",
            "submit",
            &reference,
            "--by",
            "A Lead",
            "--role",
            "senior_attendance_lead",
        ],
    )
    .await;
    assert!(again.contains("already submitted"), "{again}");

    // The pack kept is the pack sent, and it verifies.
    let pack_path = work.path().join("pack.zip");
    cli(
        &url,
        &[
            "referral",
            "pack",
            "--referral",
            &reference,
            "--out",
            pack_path.to_str().expect("path"),
        ],
    )
    .await;
    let pack = std::fs::read(&pack_path).expect("pack written");
    assert_eq!(hex::encode(Sha256::digest(&pack)), sha256);

    let by_upn = work.path().join("by-upn.zip");
    cli(
        &url,
        &[
            "referral",
            "pack",
            "--upn",
            &upn(1),
            "--out",
            by_upn.to_str().expect("path"),
        ],
    )
    .await;
    assert_eq!(
        std::fs::read(&by_upn).expect("pack written"),
        pack,
        "the pupil's pack is the one submitted"
    );

    // A mark in the pack's period changes after submission: the referral records it, so
    // the school can tell the local authority. A change for a pupil without a submitted
    // referral records nothing.
    assert_eq!(submitted["evidence_change_count"], 0, "{submitted:#}");
    for pupil in [upn(2), upn(1)] {
        cli(
            &url,
            &[
                "marks",
                "amend",
                "--upn",
                &pupil,
                "--date",
                DAYS[9],
                "--session",
                "AM",
                "--code",
                "L",
                "--reason",
                "Arrived late; register corrected",
                "--by",
                "A Clerk",
                "--position",
                "Attendance officer",
            ],
        )
        .await;
    }
    let mut changed = Value::Null;
    for _ in 0..600 {
        changed = json(&cli(&url, &["referral", "show", &reference, "--json"]).await);
        if changed["evidence_change_count"] != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(changed["evidence_change_count"], 1, "{changed:#}");
    let change = &changed["evidence_changes"][0];
    assert_eq!(change["date"], DAYS[9]);
    assert_eq!(change["session"], "AM");
    assert_eq!(change["code"], "L");
    let shown = cli(&url, &["referral", "show", &reference]).await;
    assert!(
        shown.contains("1 mark(s) in the pack's period changed after submission"),
        "{shown}"
    );

    // The local authority receives that pack once, however often it is handed over.
    let referral_id = submitted["id"].as_str().expect("id").to_owned();
    wait_for_delivery(&url, &referral_id).await;
    cli(&url, &["referral", "deliver", &reference]).await;
    wait_for_delivery(&url, &referral_id).await;
    assert_eq!(receiver.referrals(), 1);
    let received = receiver.received();
    assert_eq!(received[0].body, pack, "the receiver has the pack kept");
    assert_eq!(
        received[0].header("idempotency-key"),
        Some(referral_id.as_str())
    );
    let verification = rollcall_pack::verify_pack(&pack, None);
    assert!(verification.is_valid(), "{verification}");
    let entries = zip_entries(&pack);
    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names[0], "manifest.json");
    for expected in [
        "attendance.csv",
        "attendance-ctf.xml",
        "chronology.csv",
        "summary.pdf",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert!(
        names
            .iter()
            .any(|name| name.starts_with("letters/") && name.contains("penalty-warning-letter")),
        "the warning letter is in the pack: {names:?}"
    );
    let manifest = json(std::str::from_utf8(&entries[0].1).expect("UTF-8"));
    assert_eq!(manifest["referral"]["kind"], "penalty_notice");
    assert_eq!(manifest["referral"]["reference"], reference.as_str());
    assert_eq!(manifest["pupil"]["upn"], upn(1).as_str());
    assert_eq!(manifest["parents"][0]["name"], "Parent Of1");
    // The local authority gets who the pupil is and nothing more about them: no special
    // needs, free school meals, class, address or contacts of their own.
    let pupil_keys: Vec<&str> = manifest["pupil"]
        .as_object()
        .expect("pupil object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        pupil_keys,
        [
            "date_of_birth",
            "forename",
            "sex",
            "surname",
            "upn",
            "year_group"
        ]
    );
    for parent in manifest["parents"].as_array().expect("parents") {
        assert_eq!(parent["parental_responsibility"], true, "{parent}");
    }
    assert_eq!(manifest["figures"]["unauthorised_absence_sessions"], 16);
    assert_eq!(
        manifest["threshold_sessions"].as_array().map(Vec::len),
        Some(16)
    );
    let chronology = String::from_utf8(
        entries
            .iter()
            .find(|(name, _)| name == "chronology.csv")
            .expect("chronology")
            .1
            .clone(),
    )
    .expect("UTF-8");
    assert!(
        chronology.starts_with("occurred_on,recorded_at,entry,stage,by_role,summary"),
        "{chronology}"
    );
    assert!(chronology.contains("assessment"), "{chronology}");
    let days: Vec<&str> = chronology
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').next())
        .collect();
    assert!(
        days.windows(2).all(|pair| pair[0] <= pair[1]),
        "the chronology is in date order: {chronology}"
    );
    assert!(
        !chronology.contains("A Lead"),
        "names stay out of the chronology: {chronology}"
    );

    let pack_arg = pack_path.to_str().expect("path");
    let output = offline(&["pack", "verify", pack_arg]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let key_path = data.join("keys").join("pack-signing.pem");
    let output = offline(&[
        "pack",
        "public-key",
        "--key",
        key_path.to_str().expect("path"),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let public_key = work.path().join("trust-public.pem");
    std::fs::write(&public_key, &output.stdout).expect("public key");
    let output = offline(&[
        "pack",
        "verify",
        pack_arg,
        "--public-key",
        public_key.to_str().expect("path"),
    ])
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let tampered = work.path().join("tampered.zip");
    std::fs::write(&tampered, tamper(&pack, "attendance.csv")).expect("tampered pack");
    let output = offline(&["pack", "verify", tampered.to_str().expect("path")]).await;
    assert!(!output.status.success(), "a tampered pack fails");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("attendance.csv"), "{report}");

    // Outcomes from the local authority.
    let unknown = cli_error(
        &url,
        &[
            "referral",
            "outcome",
            "ref-999999",
            "--outcome",
            "accepted",
            "--by",
            "LA",
        ],
    )
    .await;
    assert!(unknown.contains("ref-999999"), "{unknown}");
    let early = cli_error(
        &url,
        &[
            "referral",
            "outcome",
            &reference,
            "--outcome",
            "paid",
            "--by",
            "LA",
        ],
    )
    .await;
    assert!(early.contains("notice_issued"), "{early}");
    let issued_on = Utc::now().date_naive() - Days::new(40);
    let issued = json(
        &cli(
            &url,
            &[
                "referral",
                "outcome",
                &reference,
                "--outcome",
                "notice_issued",
                "--date",
                &issued_on.to_string(),
                "--by",
                "LA",
                "--note",
                "FPN 1234",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(issued["status"], "notice_issued");
    let out_of_order = cli_error(
        &url,
        &[
            "referral",
            "outcome",
            &reference,
            "--outcome",
            "withdrawn",
            "--date",
            &(issued_on - Days::new(10)).to_string(),
            "--by",
            "LA",
        ],
    )
    .await;
    assert!(
        out_of_order.contains("before the last outcome"),
        "{out_of_order}"
    );
    assert_eq!(issued["notice"]["reduced_amount"], 60, "{issued:#}");
    assert_eq!(issued["notice"]["full_amount"], 120);
    assert_eq!(issued["notice"]["amount_due"], 120);
    assert_eq!(issued["notice"]["overdue"], true);
    let overdue = json(&cli(&url, &["referral", "list", "--overdue", "--json"]).await);
    assert_eq!(overdue.as_array().map(Vec::len), Some(1), "{overdue:#}");
    assert_eq!(overdue[0]["reference"], reference.as_str());
    // The local authority records the notice unpaid after day 28; it is still overdue, and a
    // late payment is at the full amount.
    let unpaid = json(
        &cli(
            &url,
            &[
                "referral",
                "outcome",
                &reference,
                "--outcome",
                "unpaid",
                "--date",
                &(issued_on + Days::new(30)).to_string(),
                "--by",
                "LA",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(unpaid["status"], "unpaid");
    assert_eq!(unpaid["notice"]["overdue"], true, "{unpaid:#}");
    let overdue = json(&cli(&url, &["referral", "list", "--overdue", "--json"]).await);
    assert_eq!(overdue.as_array().map(Vec::len), Some(1), "{overdue:#}");
    let paid = json(
        &cli(
            &url,
            &[
                "referral",
                "outcome",
                &reference,
                "--outcome",
                "paid",
                "--date",
                &(issued_on + Days::new(32)).to_string(),
                "--by",
                "LA",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["notice"]["amount_due"], 120);
    assert_eq!(paid["notice"]["overdue"], false);
    let closed = cli_error(
        &url,
        &[
            "referral",
            "outcome",
            &reference,
            "--outcome",
            "withdrawn",
            "--by",
            "LA",
        ],
    )
    .await;
    assert!(closed.contains("no further outcome"), "{closed}");

    // The school moves to the statutory framework of 2024 after that first notice: a second
    // notice within three years is a flat £160, and a third is not allowed.
    let today = Utc::now().date_naive();
    cli(
        &url,
        &[
            "policy",
            "assign",
            "--school",
            LAESTAB,
            "--policy",
            "statutory-2024",
            "--from",
            &(today - Days::new(20)).to_string(),
            "--by",
            "A Lead",
            "--reason",
            "The trust adopts the national framework",
        ],
    )
    .await;
    let second = json(
        &cli(
            &url,
            &[
                "referral",
                "create",
                "--upn",
                &upn(1),
                "--kind",
                "penalty_notice",
                "--by",
                "A Lead",
                "--json",
            ],
        )
        .await,
    );
    let limit = check(&second, "notice_limit_respected");
    assert_eq!(limit["met"], true, "{second:#}");
    let second_reference = second["reference"].as_str().expect("reference").to_owned();
    cli(
        &url,
        &[
            "referral",
            "submit",
            &second_reference,
            "--by",
            "A Lead",
            "--role",
            "senior_attendance_lead",
        ],
    )
    .await;
    let issued = json(
        &cli(
            &url,
            &[
                "referral",
                "outcome",
                &second_reference,
                "--outcome",
                "notice_issued",
                "--date",
                &(today - Days::new(5)).to_string(),
                "--by",
                "LA",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(issued["notice"]["number"], 2, "{issued:#}");
    assert!(issued["notice"]["reduced_amount"].is_null(), "{issued:#}");
    assert_eq!(issued["notice"]["full_amount"], 160);
    assert_eq!(issued["notice"]["amount_due"], 160);
    assert_eq!(issued["notice"]["overdue"], false);
    assert_eq!(issued["notice"]["policy_id"], "statutory-2024");
    let still_running = cli_error(
        &url,
        &[
            "referral",
            "outcome",
            &second_reference,
            "--outcome",
            "unpaid",
            "--by",
            "LA",
        ],
    )
    .await;
    assert!(
        still_running.contains("can be paid until"),
        "{still_running}"
    );
    cli(
        &url,
        &[
            "referral",
            "outcome",
            &second_reference,
            "--outcome",
            "paid",
            "--by",
            "LA",
        ],
    )
    .await;
    let third = json(
        &cli(
            &url,
            &[
                "referral",
                "create",
                "--upn",
                &upn(1),
                "--kind",
                "penalty_notice",
                "--by",
                "A Lead",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(
        check(&third, "notice_limit_respected")["met"],
        false,
        "{third:#}"
    );
    let third_reference = third["reference"].as_str().expect("reference");
    let blocked = cli_error(
        &url,
        &[
            "referral",
            "submit",
            third_reference,
            "--by",
            "A Lead",
            "--role",
            "senior_attendance_lead",
        ],
    )
    .await;
    assert!(blocked.contains("notice_limit_respected"), "{blocked}");
    cli(
        &url,
        &[
            "referral",
            "outcome",
            third_reference,
            "--outcome",
            "withdrawn",
            "--by",
            "A Lead",
        ],
    )
    .await;
    let no_pack = cli_error(
        &url,
        &[
            "referral",
            "pack",
            "--referral",
            third_reference,
            "--out",
            pack_arg,
        ],
    )
    .await;
    assert!(no_pack.contains("never submitted"), "{no_pack}");
    let tomorrow = (today + Days::new(1)).to_string();
    let future = cli_error(
        &url,
        &[
            "referral",
            "create",
            "--upn",
            &upn(1),
            "--kind",
            "legal_action",
            "--by",
            "A Lead",
            "--as-of",
            &tomorrow,
        ],
    )
    .await;
    assert!(future.contains("in the future"), "{future}");

    // An attendance officer referral while the ladder is not done: only a senior leader's
    // override with a reason submits it, and the pack records the override.
    let officer = json(
        &cli(
            &url,
            &[
                "referral",
                "create",
                "--upn",
                &upn(2),
                "--kind",
                "attendance_officer",
                "--by",
                "A Lead",
                "--json",
            ],
        )
        .await,
    );
    let officer_reference = officer["reference"].as_str().expect("reference").to_owned();
    assert_eq!(
        check(&officer, "ladder_exhausted")["met"],
        false,
        "{officer:#}"
    );
    let duplicate = cli_error(
        &url,
        &[
            "referral",
            "create",
            "--upn",
            &upn(2),
            "--kind",
            "attendance_officer",
            "--by",
            "A Lead",
        ],
    )
    .await;
    assert!(
        duplicate.contains(officer["id"].as_str().expect("id")),
        "{duplicate}"
    );
    let overridden = json(
        &cli(
            &url,
            &[
                "referral",
                "submit",
                &officer_reference,
                "--by",
                "H Teacher",
                "--role",
                "headteacher",
                "--override-reason",
                "Safeguarding concern raised by the family",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(overridden["status"], "submitted");
    assert_eq!(overridden["override"]["role"], "headteacher");
    assert_eq!(check(&overridden, "ladder_exhausted")["overridden"], true);
    let officer_pack = work.path().join("officer.zip");
    cli(
        &url,
        &[
            "referral",
            "pack",
            "--referral",
            &officer_reference,
            "--out",
            officer_pack.to_str().expect("path"),
        ],
    )
    .await;
    let officer_bytes = std::fs::read(&officer_pack).expect("pack");
    let manifest = json(std::str::from_utf8(&zip_entries(&officer_bytes)[0].1).expect("UTF-8"));
    assert_eq!(
        manifest["referral"]["override"]["reason"],
        "Safeguarding concern raised by the family"
    );
    assert_eq!(manifest["parents"].as_array().map(Vec::len), Some(0));

    // The statutory return for ten school days of continuous unauthorised absence.
    let return_draft = json(
        &cli(
            &url,
            &[
                "referral",
                "create",
                "--upn",
                &upn(3),
                "--kind",
                "unauthorised_absence_return",
                "--by",
                "Office",
                "--json",
            ],
        )
        .await,
    );
    let evidence = check(&return_draft, "continuous_unauthorised_absence");
    assert_eq!(evidence["met"], true, "{return_draft:#}");
    assert!(
        evidence["evidence"]
            .as_str()
            .expect("evidence")
            .starts_with("10 school days"),
        "{evidence}"
    );
    let return_reference = return_draft["reference"].as_str().expect("reference");
    let filed = json(
        &cli(
            &url,
            &[
                "referral",
                "submit",
                return_reference,
                "--by",
                "Office",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(filed["status"], "submitted");
    let return_pack = work.path().join("return.zip");
    cli(
        &url,
        &[
            "referral",
            "pack",
            "--referral",
            return_reference,
            "--out",
            return_pack.to_str().expect("path"),
        ],
    )
    .await;
    let return_bytes = std::fs::read(&return_pack).expect("pack");
    let manifest = json(std::str::from_utf8(&zip_entries(&return_bytes)[0].1).expect("UTF-8"));
    assert_eq!(
        manifest["policy"]["rule"],
        "continuous_unauthorised_absence"
    );
    assert_eq!(
        manifest["threshold_sessions"].as_array().map(Vec::len),
        Some(0)
    );
    assert!(rollcall_pack::verify_pack(&return_bytes, None).is_valid());
    // Once the local authority accepts the return it is complete, and the next one can start.
    cli(
        &url,
        &[
            "referral",
            "outcome",
            return_reference,
            "--outcome",
            "accepted",
            "--by",
            "LA",
        ],
    )
    .await;
    let next_return = json(
        &cli(
            &url,
            &[
                "referral",
                "create",
                "--upn",
                &upn(3),
                "--kind",
                "unauthorised_absence_return",
                "--by",
                "Office",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(next_return["status"], "draft");

    let listed = cli(&url, &["referral", "list", "--school", LAESTAB]).await;
    for expected in [&reference, &officer_reference] {
        assert!(listed.contains(expected.as_str()), "{listed}");
    }
    let first = common::run_rollcall(&url, &["referral", "list", "--limit", "1", "--json"]).await;
    assert!(first.status.success());
    assert_eq!(
        json(&String::from_utf8_lossy(&first.stdout))
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let note = String::from_utf8_lossy(&first.stderr);
    assert!(note.contains("raise --limit"), "{note}");
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrals_on_sqlite() {
    referrals(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrals_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    referrals(Some(&url)).await;
}
