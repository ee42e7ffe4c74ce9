//! School scoping, call by call: a member of staff granted one school tries every RPC on the
//! records of another school of the trust and is refused, while staff of that school and
//! trust-wide roles reach the same records.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::cases::v1::{
    CreatePlanRequest, CreateReintegrationRequest, ListCasesRequest, OpenCaseRequest,
    ReintegrationStep,
};
use rollcall_api::referrals::v1::CreateReferralRequest;
use rollcall_api::referrals::v1::referrals_service_client::ReferralsServiceClient;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{ListPupilsRequest, ListSchoolsRequest};
use rollcall_auth::Role;
use rollcall_auth::rules::rule_for;
use rollcall_cli::server::{self, Authentication, RunningServer, ServerConfig};
use rollcall_synthetic::{Phase, SchoolSpec, Term, TrustSpec};
use rollcall_testkit::identity::IdentityProvider;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const ISSUER: &str = "https://login.example.org/trust/v2.0";
const AUDIENCE: &str = "api://rollcall";
/// The school the refused member of staff works at.
const HOME: &str = "9192101";
/// The other school, whose records they try to reach.
const OTHER: &str = "9194101";
/// A school day of the generated term.
const DAY: &str = "2025-10-06";

/// The identifiers of one school's records that the calls name.
#[derive(Debug, Clone, Default)]
struct Records {
    laestab: String,
    upn: String,
    case_id: String,
    plan_id: String,
    reintegration_id: String,
    task_id: String,
    message_id: String,
    referral_id: String,
    delivery_id: String,
    job_id: String,
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = MetadataValue::from_str(&format!("Bearer {token}")).expect("header value");
    request.metadata_mut().insert("authorization", value);
    request
}

fn write_trust(folder: &Path) -> Vec<PathBuf> {
    let school = |estab: u16, phase: Phase| SchoolSpec {
        la_code: 919,
        estab,
        name: format!("School {estab}"),
        phase,
        places_per_year_group: 6,
        closures: Vec::new(),
    };
    let spec = TrustSpec {
        seed: 11,
        name: "Scoping Trust".to_owned(),
        term: Term::autumn_2025(),
        schools: vec![school(2101, Phase::Infant), school(4101, Phase::Secondary)],
    };
    let trust = rollcall_synthetic::generate(&spec).expect("trust");
    trust
        .schools
        .iter()
        .map(|school| {
            let path = folder.join(format!("{}.xml", school.laestab));
            std::fs::write(&path, rollcall_ctf::write(&school.file).expect("CTF")).expect("write");
            path
        })
        .collect()
}

/// Creates a case, plan, reintegration and draft referral for a pupil of `laestab` through
/// the API, and a contact task, message, delivery and write-back job in storage, which
/// otherwise need a parent's phone, an MIS and a local authority.
async fn seed(channel: &Channel, data: &Path, token: &str, laestab: &str) -> Records {
    let mut registers = RegistersServiceClient::new(channel.clone());
    let pupils = registers
        .list_pupils(with_token(
            ListPupilsRequest {
                laestab: laestab.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("pupils")
        .into_inner()
        .pupils;
    let upn = pupils.first().expect("a pupil").upn.clone();
    let mut cases = CasesServiceClient::new(channel.clone());
    let listed = cases
        .list_cases(with_token(
            ListCasesRequest {
                laestab: laestab.to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("cases")
        .into_inner()
        .cases;
    let case = match listed.into_iter().find(|case| case.upn == upn) {
        Some(case) => case,
        None => cases
            .open_case(with_token(
                OpenCaseRequest {
                    upn: upn.clone(),
                    laestab: laestab.to_owned(),
                    concern: "persistent_absence".to_owned(),
                    opened_by: "Trust Officer".to_owned(),
                    role: "trust_attendance_improvement_officer".to_owned(),
                    reason: "Seeded for the scoping test".to_owned(),
                    on_date: DAY.to_owned(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .expect("open case")
            .into_inner()
            .r#case
            .expect("case"),
    };
    let plan = cases
        .create_plan(with_token(
            CreatePlanRequest {
                case_id: case.id.clone(),
                attendance_target_percent: 95,
                start_date: DAY.to_owned(),
                review_date: "2025-11-03".to_owned(),
                owner_name: "Head of Year".to_owned(),
                owner_role: "head_of_year".to_owned(),
                created_by: "Trust Officer".to_owned(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("plan")
        .into_inner()
        .plan
        .expect("plan");
    let reintegration = cases
        .create_reintegration(with_token(
            CreateReintegrationRequest {
                case_id: case.id.clone(),
                absence: "illness".to_owned(),
                starts_on: DAY.to_owned(),
                steps: vec![ReintegrationStep {
                    description: "Meet the tutor".to_owned(),
                    due_on: DAY.to_owned(),
                    done_on: String::new(),
                }],
                created_by: "Trust Officer".to_owned(),
            },
            token,
        ))
        .await
        .expect("reintegration")
        .into_inner()
        .reintegration
        .expect("reintegration");
    let referral = ReferralsServiceClient::new(channel.clone())
        .create_referral(with_token(
            CreateReferralRequest {
                upn: upn.clone(),
                laestab: laestab.to_owned(),
                kind: "attendance_officer".to_owned(),
                created_by: "Trust Officer".to_owned(),
                as_of: String::new(),
                request_id: format!("seed-{laestab}"),
            },
            token,
        ))
        .await
        .expect("referral")
        .into_inner()
        .referral
        .expect("referral");

    let records = Records {
        laestab: laestab.to_owned(),
        upn: upn.clone(),
        case_id: case.id,
        plan_id: plan.id,
        reintegration_id: reintegration.id,
        task_id: format!("task-{laestab}"),
        message_id: format!("message-{laestab}"),
        referral_id: referral.id,
        delivery_id: format!("delivery-{laestab}"),
        job_id: format!("job-{laestab}"),
    };
    let now = "2025-10-06T09:00:00Z";
    let cases_db = sqlite(&data.join("cases.db")).await;
    sqlx::query(
        "INSERT INTO contact_tasks (id, laestab, upn, absence_date, session, status, created_at) \
         VALUES ($1, $2, $3, $4, 'am', 'open', $5)",
    )
    .bind(&records.task_id)
    .bind(laestab)
    .bind(&upn)
    .bind(DAY)
    .bind(now)
    .execute(&cases_db)
    .await
    .expect("contact task");
    sqlx::query(
        "INSERT INTO messages (id, dedupe_key, laestab, upn, case_id, purpose, channel, \
         recipient_priority, recipient_name, recipient_address, template, template_version, \
         subject, body, status, next_attempt_at, created_by, created_at) \
         VALUES ($1, $1, $2, $3, $4, 'letter', 'letter', 1, 'Parent', 'Address', 'letter', 1, \
         'Subject', 'Body', 'sent', $5, 'Trust Officer', $5)",
    )
    .bind(&records.message_id)
    .bind(laestab)
    .bind(&upn)
    .bind(&records.case_id)
    .bind(now)
    .execute(&cases_db)
    .await
    .expect("message");
    let adapter_db = sqlite(&data.join("mis-adapter.db")).await;
    let sha = format!("{:064}", laestab.parse::<u64>().expect("digits"));
    sqlx::query(
        "INSERT INTO delivery_packs (sha256, pack, size_bytes, stored_at) VALUES ($1, $2, 4, $3)",
    )
    .bind(&sha)
    .bind(b"pack".to_vec())
    .bind(now)
    .execute(&adapter_db)
    .await
    .expect("pack");
    sqlx::query(
        "INSERT INTO deliveries (id, referral_id, pack_id, laestab, file_name, sha256, \
         destination, destination_kind, status, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, 'pack', $3, 'pack.zip', $4, 'folder', 'folder', 'delivered', $5, $5, $5)",
    )
    .bind(&records.delivery_id)
    .bind(&records.referral_id)
    .bind(laestab)
    .bind(&sha)
    .bind(now)
    .execute(&adapter_db)
    .await
    .expect("delivery");
    sqlx::query(
        "INSERT INTO writeback_jobs (id, laestab, status, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, 'done', $3, $3, $3)",
    )
    .bind(&records.job_id)
    .bind(laestab)
    .bind(now)
    .execute(&adapter_db)
    .await
    .expect("write-back job");
    records
}

async fn sqlite(path: &Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("the service's SQLite file")
}

/// Fills a request for `method` that names `records` wherever the request has a field for
/// them, with plausible values in the other fields the call checks first.
fn request_for(message: &MessageDescriptor, records: &Records, method: &str) -> DynamicMessage {
    let mut request = DynamicMessage::new(message.clone());
    for field in message.fields() {
        let name = field.name();
        let value = match (name, field.kind()) {
            // Enumerations such as the session or a report's channel take their first value;
            // a status is a filter, left open.
            (_, Kind::Enum(_)) if !field.is_list() && name != "status" => {
                Some(Value::EnumNumber(1))
            }
            (_, Kind::String) if !field.is_list() => {
                string_for(name, records, method).map(Value::String)
            }
            ("calendar" | "report", Kind::Message(inner)) => {
                Some(Value::Message(request_for(&inner, records, method)))
            }
            ("pupils", Kind::Message(inner)) if field.is_list() => {
                Some(Value::List(vec![Value::Message(request_for(
                    &inner, records, method,
                ))]))
            }
            _ => None,
        };
        if let Some(value) = value {
            request.set_field(&field, value);
        }
    }
    request
}

fn string_for(name: &str, records: &Records, method: &str) -> Option<String> {
    let value = match name {
        "laestab" => records.laestab.clone(),
        "upn" => records.upn.clone(),
        "case_id" => records.case_id.clone(),
        "plan_id" => records.plan_id.clone(),
        "reintegration_id" => records.reintegration_id.clone(),
        "task_id" => records.task_id.clone(),
        "message_id" => records.message_id.clone(),
        "referral_id" => records.referral_id.clone(),
        "id" if method.contains("ReferralsService") => records.referral_id.clone(),
        "delivery_id" => records.delivery_id.clone(),
        "job_id" => records.job_id.clone(),
        "request_id" | "idempotency_key" => format!("{method}-{}", records.laestab),
        "date" | "from_date" | "on_date" | "absence_date" | "first_date" | "start_date" => {
            DAY.to_owned()
        }
        "to_date" | "last_date" | "review_date" => "2025-10-10".to_owned(),
        "code" => "I".to_owned(),
        "kind" => "attendance_officer".to_owned(),
        "role" => "senior_attendance_lead".to_owned(),
        name if name.ends_with("_position") => "Attendance officer".to_owned(),
        "concern" => "persistent_absence".to_owned(),
        name if name.ends_with("_by") || name == "reported_by" => "Member of Staff".to_owned(),
        "reason" | "note" | "sanction" | "description" | "relationship" => "Checked".to_owned(),
        _ => return None,
    };
    Some(value)
}

/// A role the call's rule allows that works for granted schools, if any.
fn school_role(method: &str) -> Option<Role> {
    let rule = rule_for(&format!("/{method}")).expect("a rule");
    [
        Role::Headteacher,
        Role::SeniorAttendanceLead,
        Role::HeadOfYear,
        Role::OfficeStaff,
        Role::ClassTeacherOrTutor,
        Role::DelegatedStaff,
        Role::MisVendor,
    ]
    .into_iter()
    .find(|role| rule.allows(*role))
}

/// Calls `method` with `request` and returns the status it ends with.
async fn call(
    channel: &Channel,
    method: &str,
    request: DynamicMessage,
    streaming: (bool, bool),
    token: &str,
) -> tonic::Status {
    #[derive(Clone, PartialEq, Message)]
    struct Blank {}
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_str(&format!("/{method}")).expect("path");
    let codec = tonic_prost::ProstCodec::<DynamicMessage, Blank>::default();
    let result = match streaming {
        (false, false) => grpc
            .unary(with_token(request, token), path, codec)
            .await
            .map(|_| ()),
        (false, true) => grpc
            .server_streaming(with_token(request, token), path, codec)
            .await
            .map(|_| ()),
        (true, false) => grpc
            .client_streaming(
                with_token(tokio_stream::iter([request]), token),
                path,
                codec,
            )
            .await
            .map(|_| ()),
        (true, true) => match grpc
            .streaming(
                with_token(tokio_stream::iter([request]), token),
                path,
                codec,
            )
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                match stream.message().await {
                    Ok(_) => Ok(()),
                    Err(status) => Err(status),
                }
            }
            Err(status) => Err(status),
        },
    };
    result.err().unwrap_or_else(|| tonic::Status::ok(""))
}

/// The first message of a streaming call, naming the school.
fn streaming_request(pool: &DescriptorPool, method: &str, records: &Records) -> DynamicMessage {
    let name = match method {
        "rollcall.registers.v1.RegistersService/ImportRegister" => {
            "rollcall.registers.v1.ImportRegisterRequest"
        }
        _ => "rollcall.mis_adapter.v1.StreamSyncRequest",
    };
    let descriptor = pool.get_message_by_name(name).expect("message");
    let (field, inner_name) = if name.ends_with("ImportRegisterRequest") {
        ("header", "rollcall.registers.v1.ImportHeader")
    } else {
        ("marks", "rollcall.mis_adapter.v1.SyncMarksRequest")
    };
    let inner = pool.get_message_by_name(inner_name).expect("inner message");
    let mut body = request_for(&inner, records, method);
    if let Some(school) = inner.get_field_by_name("school") {
        let school_message = match school.kind() {
            Kind::Message(message) => message,
            _ => panic!("school is a message"),
        };
        body.set_field(
            &school,
            Value::Message(request_for(&school_message, records, method)),
        );
    }
    let mut request = DynamicMessage::new(descriptor.clone());
    request.set_field_by_name(field, Value::Message(body));
    request
}

/// Calls that name no school: settings and figures shared by every school, feeds only the
/// services follow, and lists narrowed to the caller's schools (checked below).
const NOT_SCHOOL_SCOPED: &[&str] = &[
    "rollcall.registers.v1.RegistersService/ListSchools",
    "rollcall.policy.v1.PolicyService/LoadPolicy",
    "rollcall.policy.v1.PolicyService/ListPolicies",
    "rollcall.policy.v1.PolicyService/GetSyncState",
    "rollcall.policy.v1.PolicyService/WatchTriggers",
    "rollcall.cases.v1.CasesService/GetSyncState",
    "rollcall.cases.v1.CasesService/ListLadders",
    "rollcall.cases.v1.CasesService/LoadLadder",
    "rollcall.cases.v1.CasesService/ListTemplates",
    "rollcall.cases.v1.CasesService/LoadTemplate",
    "rollcall.mis_adapter.v1.MisAdapterService/ListConnectors",
    "rollcall.mis_adapter.v1.MisAdapterService/ImportCtf",
];

#[tokio::test]
async fn every_rpc_keeps_staff_to_their_school() {
    let work = tempfile::tempdir().expect("temp dir");
    let idp = IdentityProvider::new(ISSUER, AUDIENCE).expect("identity provider");
    let jwks = work.path().join("jwks.json");
    idp.write_jwks(&jwks).expect("key set");
    let data = work.path().join("data");
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("address"), data.clone(), None)
        .expect("config");
    config.authentication = Authentication::Tokens(
        rollcall_auth::TokenSettings::parse(&idp.settings_with_file(&jwks)).expect("settings"),
    );
    let running: RunningServer = server::start(config).await.expect("server starts");
    let channel = tonic::transport::Endpoint::from_shared(running.url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");

    // Trust IT imports both schools; the trust's officer sets up records at each.
    let files = write_trust(work.path());
    let token_file = work.path().join("trust-it.token");
    std::fs::write(
        &token_file,
        idp.token("it-1", &["trust_it"], &[]).expect("token"),
    )
    .expect("token file");
    let mut args = vec![
        "--token-file",
        token_file.to_str().expect("path"),
        "import",
        "ctf",
    ];
    args.extend(files.iter().map(|file| file.to_str().expect("path")));
    common::cli(&running.url(), &args).await;
    let officer = idp
        .token("aio-1", &["trust_attendance_improvement_officer"], &[])
        .expect("token");
    let home = seed(&channel, &data, &officer, HOME).await;
    let other = seed(&channel, &data, &officer, OTHER).await;

    let pool = DescriptorPool::decode(rollcall_api::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut refused = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut report = BTreeMap::new();
    for service in pool.services() {
        for method in service.methods() {
            let name = format!("{}/{}", service.full_name(), method.name());
            let streaming = (method.is_client_streaming(), method.is_server_streaming());
            let build = |records: &Records| {
                if streaming.0 {
                    streaming_request(&pool, &name, records)
                } else {
                    request_for(&method.input(), records, &name)
                }
            };
            let Some(role) = school_role(&name) else {
                report.insert(name, "trust-wide roles only".to_owned());
                continue;
            };
            if NOT_SCHOOL_SCOPED.contains(&name.as_str()) {
                report.insert(name, "names no school".to_owned());
                continue;
            }
            let at = |school: &str| {
                idp.token(&format!("{role}-{school}"), &[role.as_str()], &[school])
                    .expect("token")
            };
            let reached = |status: &tonic::Status| {
                !matches!(
                    status.code(),
                    Code::PermissionDenied | Code::Unauthenticated
                )
            };
            // Staff of the home school are refused the other school's records...
            let status = call(&channel, &name, build(&other), streaming, &at(HOME)).await;
            let names_why = ["granted", "trust-wide", OTHER]
                .iter()
                .any(|word| status.message().contains(word));
            if status.code() != Code::PermissionDenied || !names_why {
                failures.push(format!("{role} at {HOME}, {name} on {OTHER}: {status:?}"));
            }
            refused += 1;
            // ...staff of that school reach them...
            let status = call(&channel, &name, build(&other), streaming, &at(OTHER)).await;
            if !reached(&status) {
                failures.push(format!("{role} at {OTHER}, {name} on {OTHER}: {status:?}"));
            }
            // ...and so does the trust's officer, where the call is theirs to make.
            let officer_may = rule_for(&format!("/{name}"))
                .expect("rule")
                .allows(Role::TrustAttendanceImprovementOfficer);
            if officer_may {
                let status = call(&channel, &name, build(&home), streaming, &officer).await;
                if !reached(&status) {
                    failures.push(format!("the trust's officer, {name}: {status:?}"));
                }
            }
            report.insert(name, format!("refused to {role} at {HOME}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        refused >= 70,
        "only {refused} calls were checked: {report:#?}"
    );

    // Lists that name no school show only the caller's schools.
    let head = idp
        .token("head-1", &["headteacher"], &[HOME])
        .expect("token");
    let schools = RegistersServiceClient::new(channel.clone())
        .list_schools(with_token(ListSchoolsRequest::default(), &head))
        .await
        .expect("schools")
        .into_inner()
        .schools;
    let listed: Vec<&str> = schools
        .iter()
        .map(|school| school.laestab.as_str())
        .collect();
    assert_eq!(listed, vec![HOME]);

    // A local authority officer sees no referral a school has not sent.
    let officer_la = idp
        .token("la-1", &["local_authority_attendance_officer"], &[])
        .expect("token");
    let mut referrals = ReferralsServiceClient::new(channel.clone());
    let status = referrals
        .get_referral(with_token(
            rollcall_api::referrals::v1::GetReferralRequest {
                id: other.referral_id.clone(),
            },
            &officer_la,
        ))
        .await
        .expect_err("a draft");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("draft"), "{}", status.message());
    let listed = referrals
        .list_referrals(with_token(
            rollcall_api::referrals::v1::ListReferralsRequest::default(),
            &officer_la,
        ))
        .await
        .expect("list")
        .into_inner()
        .referrals;
    assert!(listed.is_empty(), "{listed:?}");
    running.stop().await.expect("server stops");
}
