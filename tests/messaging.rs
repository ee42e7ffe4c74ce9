//! Messages to parents on a real server, with a local SMTP server and a local SMS provider:
//! first-day contact after an unexplained absence, threshold letters with their review rules,
//! retries with backoff, never sending twice, and the case timeline.

mod common;

use std::path::Path;
use std::time::Duration;

use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::cases::v1::{
    CreateLetterRequest, GetCaseTimelineRequest, GetSyncStateRequest as CasesSyncRequest,
    ListCasesRequest, ListContactTasksRequest, ListMessagesRequest, Message, MessageChannel,
    MessageStatus, ResendMessageRequest, ReviewLetterRequest, RunFirstDayContactRequest,
};
use rollcall_api::policy::v1::GetSyncStateRequest as PolicySyncRequest;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    AbsenceReport, ImportMarks, ImportPupil, ListPupilContactsRequest, Mark, Pupil,
    RecordAbsenceReportRequest, ReportChannel, SenProvision, import_register_request::Item,
};
use rollcall_api::types::v1::{Phase, Session};
use rollcall_cases::MessagingConfig;
use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_domain::Upn;
use rollcall_testkit::sms::SmsProvider;
use rollcall_testkit::smtp::SmtpServer;
use tonic::Code;
use tonic::transport::Channel;

use common::{cli, cli_error};

const LAESTAB: &str = "9192001";
const SMS_KEY: &str = "test-sms-key";

/// Returns a valid UPN for test pupil `n`.
fn upn(n: u8) -> String {
    Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, 1, n])
        .as_str()
        .to_owned()
}

struct Clients {
    registers: RegistersServiceClient<Channel>,
    policy: PolicyServiceClient<Channel>,
    cases: CasesServiceClient<Channel>,
}

async fn start(
    work: &Path,
    database_url: Option<&str>,
    smtp: &SmtpServer,
    sms: &SmsProvider,
) -> (RunningServer, Clients) {
    let key_file = work.join("sms-key");
    std::fs::write(&key_file, format!("{SMS_KEY}\n")).expect("key file");
    let settings = format!(
        r#"
[email]
smtp_host = "127.0.0.1"
smtp_port = {port}
security = "none"
from = "Test Academy <attendance@test-academy.example>"
timeout_seconds = 5

[sms]
url = "{url}"
api_key_file = "{key}"
sender = "TestAcademy"
timeout_seconds = 5

[letters]
print_dir = "{print}"

[delivery]
first_retry_seconds = 0.05
max_retry_seconds = 0.2
max_attempts = 3
poll_seconds = 0.05
lease_seconds = 6

[first_day]
automatic = false
"#,
        port = smtp.port(),
        url = sms.url(),
        key = key_file.display(),
        print = work.join("print").display(),
    );
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    config.messaging = MessagingConfig::parse(&settings).expect("messaging settings");
    let running = server::start(config).await.expect("server starts");
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");
    let clients = Clients {
        registers: RegistersServiceClient::new(channel.clone()),
        policy: PolicyServiceClient::new(channel.clone()),
        cases: CasesServiceClient::new(channel),
    };
    (running, clients)
}

/// The test pupils: (number, forename, date of birth, SEN provision).
const PUPILS: [(u8, &str, &str, SenProvision); 8] = [
    (1, "Amelie", "2012-03-01", SenProvision::None),
    (2, "Ben", "2012-04-01", SenProvision::None),
    (3, "Cara", "2012-05-01", SenProvision::Support),
    (4, "Dev", "2012-06-01", SenProvision::None),
    (5, "Eli", "2012-07-01", SenProvision::None),
    (6, "Fay", "2012-08-01", SenProvision::None),
    // Four years old in September 2025: below compulsory school age.
    (7, "Gus", "2021-06-01", SenProvision::None),
    (8, "Hana", "2012-09-01", SenProvision::None),
];

async fn import(
    registers: &mut RegistersServiceClient<Channel>,
    request_id: &str,
    items: Vec<Item>,
) -> i64 {
    common::import_register(registers, LAESTAB, request_id, items).await
}

fn pupils() -> Vec<Item> {
    PUPILS
        .iter()
        .map(|(n, forename, born, sen)| {
            Item::Pupil(ImportPupil {
                pupil: Some(Pupil {
                    upn: upn(*n),
                    forename: (*forename).into(),
                    surname: "Test".into(),
                    date_of_birth: (*born).into(),
                    sex: "F".into(),
                    enrolments: Vec::new(),
                }),
                admission_date: "2025-09-01".into(),
                year_group: "8".into(),
                sen_provision: *sen as i32,
                ..ImportPupil::default()
            })
        })
        .collect()
}

fn mark(n: u8, date: &str, session: Session, code: &str) -> Mark {
    Mark {
        upn: upn(n),
        date: date.into(),
        session: session as i32,
        code: code.into(),
        recorded_at: Some(prost_types::Timestamp {
            seconds: 1_757_318_400,
            nanos: 0,
        }),
        ..Mark::default()
    }
}

/// Monday 8 September: pupils 1 to 5 absent with no reason, 6 present, 7 absent
/// unauthorised, 8 ill in the morning and absent unauthorised in the afternoon. Monday 15
/// September: pupil 2 absent with no reason, everyone else present.
fn marks() -> Vec<Mark> {
    let mut marks = Vec::new();
    for session in [Session::Am, Session::Pm] {
        for n in 1..=5 {
            marks.push(mark(n, "2025-09-08", session, "N"));
        }
        marks.push(mark(6, "2025-09-08", session, "/"));
        marks.push(mark(7, "2025-09-08", session, "O"));
        for n in 1..=8 {
            let code = if n == 2 && session == Session::Am {
                "N"
            } else {
                "/"
            };
            marks.push(mark(n, "2025-09-15", session, code));
        }
    }
    marks.push(mark(8, "2025-09-08", Session::Am, "I"));
    marks.push(mark(8, "2025-09-08", Session::Pm, "O"));
    marks
}

fn contacts_csv() -> String {
    let mut csv = String::from(
        "upn,priority,name,relationship,parental_responsibility,email,mobile,address,postcode,preferred_channel\n",
    );
    let rows = [
        (
            1,
            1,
            "Mrs A Parent",
            "Mother",
            "yes",
            "amelie.parent@example.org",
            "",
            "",
            "",
            "email",
        ),
        (
            1,
            2,
            "Mr S Step",
            "Stepfather",
            "no",
            "",
            "07700 900101",
            "",
            "",
            "",
        ),
        (
            2,
            1,
            "Ms B Carer",
            "Carer",
            "yes",
            "",
            "07700 900002",
            "",
            "",
            "",
        ),
        (
            3,
            1,
            "Mr C Parent",
            "Father",
            "yes",
            "",
            "",
            "3 Mill Lane;Hitchin",
            "SG5 1AA",
            "letter",
        ),
        (
            4,
            1,
            "Mrs D Parent",
            "Mother",
            "yes",
            "",
            "07700 900004",
            "",
            "",
            "sms",
        ),
        (
            7,
            1,
            "Mrs G Parent",
            "Mother",
            "yes",
            "",
            "",
            "7 Mill Lane;Hitchin",
            "SG5 1AG",
            "",
        ),
        (
            8,
            1,
            "Mr H Parent",
            "Father",
            "yes",
            "",
            "",
            "8 Mill Lane;Hitchin",
            "SG5 1AH",
            "",
        ),
    ];
    for (n, priority, name, relationship, pr, email, mobile, address, postcode, channel) in rows {
        csv.push_str(&format!(
            "{},{priority},{name},{relationship},{pr},{email},{mobile},\"{address}\",{postcode},{channel}\n",
            upn(n)
        ));
    }
    csv
}

/// Waits until the policy service has followed the registers to `cursor`, the cases service
/// has followed every trigger the policy service raised, and every letter they asked for is
/// written.
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
        if policy.registers_cursor >= cursor
            && cases.trigger_cursor >= policy.trigger_cursor
            && cases.pending_letters == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the services did not catch up with feed position {cursor}");
}

async fn messages(cases: &mut CasesServiceClient<Channel>) -> Vec<Message> {
    cases
        .list_messages(ListMessagesRequest {
            laestab: LAESTAB.into(),
            page_size: 1_000,
            ..ListMessagesRequest::default()
        })
        .await
        .expect("list messages")
        .into_inner()
        .messages
}

/// Waits until no message is queued or being sent, and returns them all.
async fn settle(cases: &mut CasesServiceClient<Channel>) -> Vec<Message> {
    for _ in 0..1200 {
        let all = messages(cases).await;
        let busy = all.iter().any(|message| {
            message.status == MessageStatus::Queued as i32
                || message.status == MessageStatus::Sending as i32
        });
        if !busy {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("messages were still queued after a minute");
}

fn one<'a>(all: &'a [Message], upn_number: u8, purpose: &str) -> &'a Message {
    let found: Vec<&Message> = all
        .iter()
        .filter(|m| m.upn == upn(upn_number) && m.purpose == purpose)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {purpose} message for pupil {upn_number}: {found:#?}"
    );
    found[0]
}

fn pdf_text(pdf: &[u8]) -> String {
    let document = lopdf::Document::load_mem(pdf).expect("a valid PDF");
    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
    document.extract_text(&pages).expect("text")
}

async fn messaging(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let smtp = SmtpServer::start().await.expect("SMTP server");
    let sms = SmsProvider::start(SMS_KEY).await.expect("SMS provider");
    let (running, mut clients) = start(work.path(), database_url, &smtp, &sms).await;
    let url = running.url();

    import(&mut clients.registers, "pupils", pupils()).await;

    // Contacts come from a CSV file. A file with a bad row stores nothing.
    let bad = work.path().join("bad-contacts.csv");
    std::fs::write(&bad, contacts_csv().replace("07700 900002", "01234 567890")).expect("write");
    let error = cli_error(&url, &["contacts", "import", bad.to_str().expect("path")]).await;
    assert!(error.contains("01234 567890"), "{error}");
    assert!(error.contains("UK mobile numbers start 07"), "{error}");
    assert!(error.contains("line 4 of"), "the file's line: {error}");
    let held = clients
        .registers
        .list_pupil_contacts(ListPupilContactsRequest { upn: upn(1) })
        .await
        .expect("contacts")
        .into_inner()
        .contacts;
    assert!(held.is_empty(), "a rejected file stores no contact");
    let missing_column = work.path().join("no-postcode.csv");
    std::fs::write(&missing_column, "upn,priority,name\n").expect("write");
    let error = cli_error(
        &url,
        &["contacts", "import", missing_column.to_str().expect("path")],
    )
    .await;
    assert!(error.contains("\"relationship\""), "{error}");
    let good = work.path().join("contacts.csv");
    std::fs::write(&good, contacts_csv()).expect("write");
    let imported = cli(&url, &["contacts", "import", good.to_str().expect("path")]).await;
    assert!(imported.contains("6 pupils: 7 contacts held"), "{imported}");
    let held = clients
        .registers
        .list_pupil_contacts(ListPupilContactsRequest { upn: upn(2) })
        .await
        .expect("contacts")
        .into_inner()
        .contacts;
    assert_eq!(
        held[0].mobile, "+447700900002",
        "stored in international form"
    );

    // Pupil 4's mother rang the absence line before registration.
    clients
        .registers
        .record_absence_report(RecordAbsenceReportRequest {
            request_id: "call-1".into(),
            report: Some(AbsenceReport {
                laestab: LAESTAB.into(),
                upn: upn(4),
                channel: ReportChannel::AbsenceLine as i32,
                reported_by: "Mrs D Parent".into(),
                relationship: "Mother".into(),
                reason: "Dentist".into(),
                first_date: "2025-09-08".into(),
                first_session: Session::Am as i32,
                last_date: "2025-09-08".into(),
                last_session: Session::Pm as i32,
                ..AbsenceReport::default()
            }),
        })
        .await
        .expect("absence report");

    let cursor = import(
        &mut clients.registers,
        "marks",
        vec![Item::Marks(ImportMarks { marks: marks() })],
    )
    .await;
    wait_for_cases(&mut clients, cursor).await;

    // Persistent absence opened cases and wrote threshold letters by themselves.
    let all = settle(&mut clients.cases).await;
    let letter = one(&all, 1, "letter");
    assert_eq!(letter.status, MessageStatus::Sent as i32, "{letter:#?}");
    assert_eq!(
        letter.channel,
        MessageChannel::Email as i32,
        "no postal address, so email"
    );
    assert_eq!(letter.template, "attendance-concern-letter");
    assert!(letter.has_document);
    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "the letter to pupil 1's mother");
    assert_eq!(mails[0].to, ["amelie.parent@example.org"]);
    assert!(
        mails[0].data.contains("application/pdf"),
        "the letter is attached"
    );
    let held_for = |n: u8| one(&all, n, "letter").review_reasons.join("; ");
    assert_eq!(
        one(&all, 3, "letter").status,
        MessageStatus::AwaitingReview as i32
    );
    assert!(
        held_for(3).contains("special educational needs"),
        "{}",
        held_for(3)
    );
    assert!(
        held_for(7).contains("below compulsory school age"),
        "{}",
        held_for(7)
    );
    assert!(
        held_for(8).contains("1 session of authorised illness"),
        "{}",
        held_for(8)
    );
    assert!(
        !all.iter().any(|m| m.upn == upn(2) && m.purpose == "letter"),
        "pupil 2's carer has only a mobile number, so no letter"
    );

    // Review: a withdrawal needs a reason; an approved letter is printed.
    let withdraw = ReviewLetterRequest {
        message_id: one(&all, 3, "letter").id.clone(),
        approve: false,
        reviewed_by: "P Green".into(),
        reason: String::new(),
    };
    let error = clients
        .cases
        .review_letter(withdraw.clone())
        .await
        .expect_err("no reason");
    assert_eq!(error.code(), Code::InvalidArgument);
    let withdrawn = clients
        .cases
        .review_letter(ReviewLetterRequest {
            reason: "Support plan agreed with the SENCo instead".into(),
            ..withdraw
        })
        .await
        .expect("withdraw")
        .into_inner()
        .letter
        .expect("letter");
    assert_eq!(withdrawn.status, MessageStatus::Withdrawn as i32);
    let approve = ReviewLetterRequest {
        message_id: one(&all, 7, "letter").id.clone(),
        approve: true,
        reviewed_by: "P Green".into(),
        reason: "Parents asked for written confirmation".into(),
    };
    clients
        .cases
        .review_letter(approve.clone())
        .await
        .expect("approve");
    let again = clients
        .cases
        .review_letter(approve)
        .await
        .expect_err("already reviewed");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let all = settle(&mut clients.cases).await;
    let approved = one(&all, 7, "letter");
    assert_eq!(approved.status, MessageStatus::Sent as i32, "{approved:#?}");
    let printed = work
        .path()
        .join("print")
        .join(LAESTAB)
        .join(format!("{}.pdf", approved.id));
    let text = pdf_text(&std::fs::read(&printed).expect("printed letter"));
    assert!(text.contains("Mrs G Parent"), "{text}");
    assert!(text.contains("7 Mill Lane"), "{text}");

    // First-day contact for Monday morning. The first email and text attempts fail and are
    // retried.
    smtp.fail_temporarily(1);
    sms.fail_temporarily(1, Some(0));
    let run = RunFirstDayContactRequest {
        laestab: LAESTAB.into(),
        date: "2025-09-08".into(),
        session: Session::Am as i32,
        catch_up: true,
    };
    let not_catch_up = clients
        .cases
        .run_first_day_contact(RunFirstDayContactRequest {
            catch_up: false,
            ..run.clone()
        })
        .await
        .expect_err("an earlier day needs a catch-up run");
    assert_eq!(not_catch_up.code(), Code::FailedPrecondition);
    assert!(
        not_catch_up.message().contains("catch-up"),
        "{}",
        not_catch_up.message()
    );
    let response = clients
        .cases
        .run_first_day_contact(run.clone())
        .await
        .expect("first-day contact")
        .into_inner();
    assert_eq!(response.unexplained, 5);
    assert_eq!(response.already_reported, 1, "pupil 4's mother rang in");
    assert_eq!(response.tasks_created, 4);
    assert_eq!(response.messages_queued, 3, "email, text and letter");
    assert_eq!(response.without_contacts, [upn(5)]);

    let all = settle(&mut clients.cases).await;
    let email = one(&all, 1, "first_day");
    assert_eq!(email.status, MessageStatus::Sent as i32, "{email:#?}");
    let outcomes: Vec<&str> = email.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "sent"], "{email:#?}");
    let mails = smtp.received();
    assert_eq!(mails.len(), 2);
    assert_eq!(
        mails[1].to,
        ["amelie.parent@example.org"],
        "only the parent with responsibility"
    );
    assert_eq!(
        mails[1].header("Subject").as_deref(),
        Some("Amelie is not in school today")
    );
    let message_id = mails[1].header("Message-ID").expect("Message-ID");
    assert!(message_id.contains(&email.id), "{message_id}");

    let text = one(&all, 2, "first_day");
    assert_eq!(text.status, MessageStatus::Sent as i32, "{text:#?}");
    let texts = sms.received();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0].to, "+447700900002");
    assert_eq!(texts[0].reference, text.id);
    assert!(
        texts[0]
            .body
            .contains("Ben missed the morning register on Monday 8 September 2025"),
        "{}",
        texts[0].body
    );
    assert_eq!(sms.requests(), 2, "one failure, then the message");

    let letter = one(&all, 3, "first_day");
    assert_eq!(letter.status, MessageStatus::Sent as i32);
    let printed = work
        .path()
        .join("print")
        .join(LAESTAB)
        .join(format!("{}.pdf", letter.id));
    let text = pdf_text(&std::fs::read(&printed).expect("printed letter"));
    assert!(text.contains("Dear Mr C Parent"), "{text}");

    // Running again, or for the afternoon, sends nothing twice.
    for session in [Session::Am, Session::Pm] {
        let again = clients
            .cases
            .run_first_day_contact(RunFirstDayContactRequest {
                session: session as i32,
                ..run.clone()
            })
            .await
            .expect("again")
            .into_inner();
        assert_eq!(again.tasks_created, 0);
        assert_eq!(again.messages_queued, 0);
    }
    settle(&mut clients.cases).await;
    assert_eq!(smtp.received().len(), 2);
    assert_eq!(sms.received().len(), 1);

    // The office works the tasks.
    let listed = cli(&url, &["first-day", "tasks", "--school", LAESTAB, "--json"]).await;
    let tasks: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(tasks.as_array().map(Vec::len), Some(4));
    let eli = tasks
        .as_array()
        .and_then(|tasks| tasks.iter().find(|t| t["upn"] == upn(5)))
        .expect("task for pupil 5");
    assert_eq!(eli["messages"], 0);
    let task_id = eli["id"].as_str().expect("id").to_owned();
    cli(
        &url,
        &[
            "first-day",
            "done",
            &task_id,
            "--outcome",
            "Phoned grandmother: ill",
            "--by",
            "Office",
        ],
    )
    .await;
    let overwrite = cli_error(
        &url,
        &[
            "first-day",
            "done",
            &task_id,
            "--outcome",
            "Again",
            "--by",
            "Office",
        ],
    )
    .await;
    assert!(
        overwrite.contains("already completed by Office"),
        "{overwrite}"
    );
    let open = clients
        .cases
        .list_contact_tasks(ListContactTasksRequest {
            laestab: LAESTAB.into(),
            date: "2025-09-08".into(),
            include_done: false,
        })
        .await
        .expect("tasks")
        .into_inner()
        .tasks;
    assert_eq!(open.len(), 3);

    // A text rejected for good fails at once; staff resend it once checked.
    sms.reject_next();
    clients
        .cases
        .run_first_day_contact(RunFirstDayContactRequest {
            date: "2025-09-15".into(),
            ..run.clone()
        })
        .await
        .expect("second Monday");
    let all = settle(&mut clients.cases).await;
    let failed = all
        .iter()
        .find(|m| {
            m.upn == upn(2) && m.purpose == "first_day" && m.status == MessageStatus::Failed as i32
        })
        .expect("failed text");
    assert_eq!(failed.attempts, 1, "a permanent rejection is not retried");
    assert!(failed.last_error.contains("422"), "{}", failed.last_error);
    let resent = clients
        .cases
        .resend_message(ResendMessageRequest {
            message_id: failed.id.clone(),
            requested_by: "Office".into(),
        })
        .await
        .expect("resend")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(resent.status, MessageStatus::Queued as i32);
    let all = settle(&mut clients.cases).await;
    let delivered = all.iter().find(|m| m.id == failed.id).expect("message");
    assert_eq!(
        delivered.status,
        MessageStatus::Sent as i32,
        "{delivered:#?}"
    );
    assert_eq!(sms.received().len(), 2);
    let sent_again = clients
        .cases
        .resend_message(ResendMessageRequest {
            message_id: failed.id.clone(),
            requested_by: "Office".into(),
        })
        .await
        .expect_err("a sent message is not resent");
    assert_eq!(sent_again.code(), Code::FailedPrecondition);

    // A letter written by hand is filed on the case; the same request writes it once.
    let case = clients
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
        .expect("pupil 1's case");
    let write = CreateLetterRequest {
        request_id: "warning-1".into(),
        case_id: case.id.clone(),
        template: "penalty-warning-letter".into(),
        created_by: "P Green".into(),
        letter_date: "2025-09-16".into(),
    };
    let future = clients
        .cases
        .create_letter(CreateLetterRequest {
            request_id: "warning-future".into(),
            letter_date: "2999-01-01".into(),
            ..write.clone()
        })
        .await
        .expect_err("a future date");
    assert_eq!(future.code(), Code::InvalidArgument);
    let written = clients
        .cases
        .create_letter(write.clone())
        .await
        .expect("letter")
        .into_inner();
    assert_eq!(written.letters.len(), 1);
    assert_ne!(
        written.letters[0].status,
        MessageStatus::AwaitingReview as i32,
        "no review for a person's letter"
    );
    assert!(written.letters[0].review_reasons.is_empty());
    let repeat = clients
        .cases
        .create_letter(write)
        .await
        .expect("same request")
        .into_inner();
    assert_eq!(repeat.letters[0].id, written.letters[0].id);
    settle(&mut clients.cases).await;
    assert_eq!(smtp.received().len(), 3, "written once, sent once");
    let pdf_path = work.path().join("warning.pdf");
    cli(
        &url,
        &[
            "letter",
            "pdf",
            &written.letters[0].id,
            "--out",
            pdf_path.to_str().expect("path"),
        ],
    )
    .await;
    let text = pdf_text(&std::fs::read(&pdf_path).expect("PDF"));
    assert!(text.contains("fixed penalty notice"), "{text}");

    // A threshold letter without a contact to write to is recorded on the case, not lost.
    let ben = clients
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
        .find(|case| case.upn == upn(2))
        .expect("pupil 2's case");
    let ben_timeline = clients
        .cases
        .get_case_timeline(GetCaseTimelineRequest { case_id: ben.id })
        .await
        .expect("timeline")
        .into_inner()
        .entries;
    let not_written = ben_timeline
        .iter()
        .find(|entry| entry.kind == "letter_not_written")
        .expect("the missing letter is on the case");
    assert!(
        not_written
            .detail
            .contains("no contact with parental responsibility"),
        "{}",
        not_written.detail
    );

    // The timeline shows everything written to the parents.
    let timeline = clients
        .cases
        .get_case_timeline(GetCaseTimelineRequest {
            case_id: case.id.clone(),
        })
        .await
        .expect("timeline")
        .into_inner()
        .entries;
    let communicated: Vec<&str> = timeline
        .iter()
        .filter(|entry| entry.communicated_to_parents)
        .map(|entry| entry.kind.as_str())
        .collect();
    assert_eq!(
        communicated
            .iter()
            .filter(|kind| **kind == "letter")
            .count(),
        2,
        "{timeline:#?}"
    );
    assert!(
        communicated.contains(&"message"),
        "the first-day email: {timeline:#?}"
    );

    // A template naming a field rollcall does not supply is rejected, naming it.
    let template = work.path().join("sms.toml");
    std::fs::write(
        &template,
        "name = \"first-day-sms\"\nchannel = \"sms\"\npurpose = \"first_day\"\n\
         body = \"{{ pupil.nmae }} is absent\"\n",
    )
    .expect("write");
    let error = cli_error(
        &url,
        &[
            "template",
            "load",
            template.to_str().expect("path"),
            "--by",
            "IT",
        ],
    )
    .await;
    assert!(error.contains("pupil.nmae"), "{error}");
    assert!(error.contains("sms.toml"), "the file is named: {error}");
    assert!(
        error.contains("pupil.forename"),
        "the known fields are listed: {error}"
    );
    std::fs::write(
        &template,
        "name = \"first-day-sms\"\nchannel = \"sms\"\npurpose = \"first_day\"\n\
         body = \"{{ pupil.forename }} is absent today. {{ school.name }}\"\n",
    )
    .expect("write");
    let loaded = cli(
        &url,
        &[
            "template",
            "load",
            template.to_str().expect("path"),
            "--by",
            "IT",
        ],
    )
    .await;
    assert!(loaded.contains("version 1"), "{loaded}");

    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_on_sqlite() {
    messaging(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    messaging(Some(&url)).await;
}

/// Stops the server while an email is being sent and the mail server has not replied, then
/// starts it again: the email is marked unconfirmed rather than sent a second time.
async fn interrupted_email(database_url: Option<&str>) {
    use rollcall_api::cases::v1::OpenCaseRequest;
    use rollcall_api::registers::v1::{
        Contact, ContactChannel, PupilContacts, SetPupilContactsRequest,
    };

    let work = tempfile::tempdir().expect("temp dir");
    let smtp = SmtpServer::start().await.expect("SMTP server");
    let sms = SmsProvider::start(SMS_KEY).await.expect("SMS provider");
    let (running, mut clients) = start(work.path(), database_url, &smtp, &sms).await;
    import(&mut clients.registers, "pupils", pupils()).await;
    let present = vec![
        mark(1, "2025-09-15", Session::Am, "/"),
        mark(1, "2025-09-15", Session::Pm, "/"),
    ];
    import(
        &mut clients.registers,
        "marks",
        vec![Item::Marks(ImportMarks { marks: present })],
    )
    .await;
    clients
        .registers
        .set_pupil_contacts(SetPupilContactsRequest {
            pupils: vec![PupilContacts {
                upn: upn(1),
                contacts: vec![Contact {
                    priority: 1,
                    name: "Mrs A Parent".into(),
                    relationship: "Mother".into(),
                    parental_responsibility: true,
                    email: "amelie.parent@example.org".into(),
                    preferred_channel: ContactChannel::Email as i32,
                    ..Contact::default()
                }],
            }],
        })
        .await
        .expect("contacts");
    let case = clients
        .cases
        .open_case(OpenCaseRequest {
            upn: upn(1),
            laestab: LAESTAB.into(),
            concern: "punctuality".into(),
            phase: Phase::Secondary as i32,
            opened_by: "T Brown".into(),
            role: "class_teacher_or_tutor".into(),
            reason: "Late most mornings".into(),
            on_date: "2025-09-15".into(),
        })
        .await
        .expect("open")
        .into_inner()
        .r#case
        .expect("case");

    smtp.stall_next();
    let letter = clients
        .cases
        .create_letter(CreateLetterRequest {
            request_id: "concern-1".into(),
            case_id: case.id.clone(),
            template: "attendance-concern-letter".into(),
            created_by: "P Green".into(),
            letter_date: "2025-09-16".into(),
        })
        .await
        .expect("letter")
        .into_inner()
        .letters
        .remove(0);
    for _ in 0..1200 {
        if smtp.stalled() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        smtp.stalled(),
        1,
        "the mail server kept the message without replying"
    );
    running.stop().await.expect("server stops");

    // Started again, the outbox finds the claim whose lease ran out.
    let (running, mut clients) = start(work.path(), database_url, &smtp, &sms).await;
    let mut status = MessageStatus::Unspecified as i32;
    for _ in 0..600 {
        let found = messages(&mut clients.cases).await;
        status = found
            .iter()
            .find(|m| m.id == letter.id)
            .expect("letter")
            .status;
        if status == MessageStatus::Unconfirmed as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, MessageStatus::Unconfirmed as i32);
    assert_eq!(smtp.received().len(), 1, "not sent a second time by itself");
    let found = messages(&mut clients.cases).await;
    let unconfirmed = found.iter().find(|m| m.id == letter.id).expect("letter");
    assert!(
        unconfirmed.last_error.contains("delivery is unknown"),
        "{}",
        unconfirmed.last_error
    );
    assert_eq!(
        unconfirmed.history.last().map(|a| a.outcome.as_str()),
        Some("interrupted")
    );

    // A person checks with the parent, then resends.
    clients
        .cases
        .resend_message(ResendMessageRequest {
            message_id: letter.id.clone(),
            requested_by: "Office".into(),
        })
        .await
        .expect("resend");
    let all = settle(&mut clients.cases).await;
    let sent = all.iter().find(|m| m.id == letter.id).expect("letter");
    assert_eq!(sent.status, MessageStatus::Sent as i32, "{sent:#?}");
    assert_eq!(smtp.received().len(), 2);
    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_email_on_sqlite() {
    interrupted_email(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_email_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    interrupted_email(Some(&url)).await;
}
