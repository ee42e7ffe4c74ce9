//! Referrals to the local authority: `rollcall referral` and `rollcall pack`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{ArgGroup, Subcommand};
use comfy_table::{Table, presets};
use rollcall_api::convert::from_timestamp;
use rollcall_api::mis_adapter::v1::DeliverReferralPackRequest;
use rollcall_api::referrals::v1::{
    BuildReferralPackRequest, CreateReferralRequest, GetReferralPackRequest, GetReferralRequest,
    ListReferralsRequest, RecordReferralOutcomeRequest, Referral, ReferralOutcomeKind,
    ReferralStatus, SubmitReferralRequest,
};
use rollcall_domain::outcomes::{Outcome, ReferralStatus as Status};
use rollcall_domain::referrals::ReferralKind;
use rollcall_domain::session::parse_date;
use rollcall_pack::{SigningKey, VerifyingKey, verify_pack};
use serde_json::{Value, json};

use crate::client::Clients;
use crate::commands::write_atomically;
use crate::text::table;

#[derive(Debug, Subcommand)]
pub(crate) enum ReferralCommand {
    /// List referrals, newest first.
    List {
        /// Only this school's (seven-digit LAESTAB).
        #[arg(long)]
        school: Option<String>,
        /// Only this pupil's.
        #[arg(long)]
        upn: Option<String>,
        /// Only this kind, for example penalty_notice.
        #[arg(long)]
        kind: Option<String>,
        /// Only this status, for example submitted or notice_issued.
        #[arg(long)]
        status: Option<String>,
        /// Only referrals whose penalty notice is overdue.
        #[arg(long)]
        overdue: bool,
        /// The maximum number to list.
        #[arg(long, default_value_t = 100)]
        limit: i32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a referral: its prerequisites with their evidence, outcomes and any notice. A
    /// draft's prerequisites are checked again.
    Show {
        /// The referral's identifier or reference.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a draft referral and check its prerequisites.
    Create {
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// attendance_officer, penalty_notice, legal_action, unauthorised_absence_return,
        /// sickness_return, new_pupil_return or deletion_return.
        #[arg(long)]
        kind: String,
        /// The school (seven-digit LAESTAB); the default is the pupil's latest school.
        #[arg(long)]
        school: Option<String>,
        /// Figures as of this date (YYYY-MM-DD); the default is the last date with marks.
        #[arg(long)]
        as_of: Option<String>,
        /// Your name, kept with the referral.
        #[arg(long)]
        by: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Submit a draft: checks its prerequisites again, then builds, signs and keeps its pack.
    Submit {
        /// The referral's identifier or reference.
        id: String,
        /// Your name, kept with the submission.
        #[arg(long)]
        by: String,
        /// Your role; headteacher or senior_attendance_lead may override missing
        /// prerequisites with --override-reason.
        #[arg(long)]
        role: Option<String>,
        /// The reason for overriding missing prerequisites, kept with the referral and in its
        /// pack.
        #[arg(long)]
        override_reason: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hand a submitted referral's pack to the mis-adapter for delivery again, for example
    /// after a destination was configured. The receiver never records a second referral.
    Deliver {
        /// The referral's identifier or reference.
        id: String,
    },
    /// Record an outcome the local authority reported.
    Outcome {
        /// The referral's identifier or reference.
        id: String,
        /// accepted, more_information_requested, notice_issued, paid, unpaid, prosecution or
        /// withdrawn.
        #[arg(long)]
        outcome: String,
        /// The date it happened (YYYY-MM-DD); the default is today.
        #[arg(long)]
        date: Option<String>,
        /// Your name, kept with the outcome.
        #[arg(long)]
        by: String,
        /// The local authority's note or reference.
        #[arg(long, default_value = "")]
        note: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a referral's pack: the one submitted, or for a draft one built now. With --upn,
    /// the pack of the pupil's open penalty-notice referral, created as a draft when the pupil
    /// has met the warning threshold and has none.
    #[command(group(ArgGroup::new("which").required(true).args(["referral", "upn"])))]
    Pack {
        /// The referral's identifier or reference.
        #[arg(long)]
        referral: Option<String>,
        /// The pupil's UPN.
        #[arg(long)]
        upn: Option<String>,
        /// The path of the ZIP archive to write.
        #[arg(long)]
        out: PathBuf,
        /// Figures as of this date (YYYY-MM-DD), with --upn; the default is the last date
        /// with marks.
        #[arg(long, requires = "upn")]
        as_of: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PackCommand {
    /// Check a referral pack: its manifest against the schema, every file's SHA-256 and the
    /// signature. Exits with status 1 when the pack is not valid.
    Verify {
        /// The pack, a ZIP archive.
        file: PathBuf,
        /// The trust's public key (PEM), to confirm who signed the pack.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the public key (PEM) of a pack signing key, to send to the local authority.
    PublicKey {
        /// The signing key file (PKCS#8 PEM).
        #[arg(long, default_value = "rollcall-data/keys/pack-signing.pem")]
        key: PathBuf,
    },
}

fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow!("{}", status.message())
}

fn status_name(value: i32) -> &'static str {
    match ReferralStatus::try_from(value) {
        Ok(ReferralStatus::Draft) => Status::Draft.as_str(),
        Ok(ReferralStatus::Submitted) => Status::Submitted.as_str(),
        Ok(ReferralStatus::Accepted) => Status::Accepted.as_str(),
        Ok(ReferralStatus::MoreInformationRequested) => Status::MoreInformationRequested.as_str(),
        Ok(ReferralStatus::NoticeIssued) => Status::NoticeIssued.as_str(),
        Ok(ReferralStatus::Paid) => Status::Paid.as_str(),
        Ok(ReferralStatus::Unpaid) => Status::Unpaid.as_str(),
        Ok(ReferralStatus::Prosecution) => Status::Prosecution.as_str(),
        Ok(ReferralStatus::Withdrawn) => Status::Withdrawn.as_str(),
        _ => "",
    }
}

fn status_value(name: &str) -> anyhow::Result<i32> {
    let status: Status = name
        .parse()
        .map_err(|error: String| anyhow!("--status: {error}"))?;
    Ok(match status {
        Status::Draft => ReferralStatus::Draft,
        Status::Submitted => ReferralStatus::Submitted,
        Status::Accepted => ReferralStatus::Accepted,
        Status::MoreInformationRequested => ReferralStatus::MoreInformationRequested,
        Status::NoticeIssued => ReferralStatus::NoticeIssued,
        Status::Paid => ReferralStatus::Paid,
        Status::Unpaid => ReferralStatus::Unpaid,
        Status::Prosecution => ReferralStatus::Prosecution,
        Status::Withdrawn => ReferralStatus::Withdrawn,
    } as i32)
}

fn outcome_value(name: &str) -> anyhow::Result<i32> {
    let outcome: Outcome = name
        .parse()
        .map_err(|error: String| anyhow!("--outcome: {error}"))?;
    Ok(match outcome {
        Outcome::Accepted => ReferralOutcomeKind::Accepted,
        Outcome::MoreInformationRequested => ReferralOutcomeKind::MoreInformationRequested,
        Outcome::NoticeIssued => ReferralOutcomeKind::NoticeIssued,
        Outcome::Paid => ReferralOutcomeKind::Paid,
        Outcome::Unpaid => ReferralOutcomeKind::Unpaid,
        Outcome::Prosecution => ReferralOutcomeKind::Prosecution,
        Outcome::Withdrawn => ReferralOutcomeKind::Withdrawn,
    } as i32)
}

fn outcome_name(value: i32) -> &'static str {
    Outcome::ALL
        .into_iter()
        .find(|outcome| outcome_value(outcome.as_str()).ok() == Some(value))
        .map_or("", Outcome::as_str)
}

fn time_text(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(from_timestamp)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn session_text(value: i32) -> &'static str {
    rollcall_api::convert::session_from_proto(value).map_or("", rollcall_domain::Session::as_str)
}

fn referral_json(referral: &Referral) -> Value {
    json!({
        "id": referral.id,
        "reference": referral.reference,
        "kind": referral.kind,
        "school": referral.laestab,
        "upn": referral.upn,
        "case_id": referral.case_id,
        "status": status_name(referral.status),
        "policy_id": referral.policy_id,
        "as_of": referral.as_of,
        "created_by": referral.created_by,
        "created_at": time_text(referral.created_at.as_ref()),
        "submitted_by": referral.submitted_by,
        "submitted_at": time_text(referral.submitted_at.as_ref()),
        "override": referral.r#override.as_ref().map(|o| json!({
            "by": o.by, "role": o.role, "reason": o.reason,
        })),
        "pack_id": referral.pack_id,
        "pack_sha256": referral.pack_sha256,
        "prerequisites": referral.prerequisites.iter().map(|check| json!({
            "name": check.name,
            "met": check.met,
            "overridden": check.overridden,
            "evidence": check.evidence,
        })).collect::<Vec<_>>(),
        "outcomes": referral.outcomes.iter().map(|outcome| json!({
            "outcome": outcome_name(outcome.outcome),
            "date": outcome.on_date,
            "recorded_by": outcome.recorded_by,
            "note": outcome.note,
        })).collect::<Vec<_>>(),
        "evidence_change_count": referral.evidence_change_count,
        "evidence_changes": referral.evidence_changes.iter().map(|change| json!({
            "date": change.date,
            "session": session_text(change.session),
            "code": change.code,
            "sequence": change.sequence,
            "noticed_at": time_text(change.noticed_at.as_ref()),
        })).collect::<Vec<_>>(),
        "notice": referral.notice.as_ref().map(|notice| json!({
            "issued_on": notice.issued_on,
            "number": notice.number,
            "reduced_amount": notice.reduced_amount,
            "reduced_due_by": notice.reduced_due_by,
            "full_amount": notice.full_amount,
            "full_due_by": notice.full_due_by,
            "amount_due": notice.amount_due,
            "overdue": notice.overdue,
            "paid_on": notice.paid_on,
            "policy_id": notice.policy_id,
            "clause": notice.clause,
        })),
    })
}

fn print_json(out: &mut impl Write, value: &Value) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

fn print_referral(out: &mut impl Write, referral: &Referral) -> anyhow::Result<()> {
    writeln!(
        out,
        "Referral {} ({}): {} for pupil {} at school {}, {}",
        referral.reference,
        referral.id,
        referral.kind,
        referral.upn,
        referral.laestab,
        status_name(referral.status)
    )?;
    if !referral.submitted_by.is_empty() {
        writeln!(
            out,
            "Submitted {} by {}; pack {} (SHA-256 {})",
            time_text(referral.submitted_at.as_ref()),
            referral.submitted_by,
            referral.pack_id,
            referral.pack_sha256
        )?;
    }
    if let Some(overridden) = &referral.r#override {
        writeln!(
            out,
            "Overridden by {} ({}): {}",
            overridden.by, overridden.role, overridden.reason
        )?;
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header(["prerequisite", "met", "evidence"]);
    for check in &referral.prerequisites {
        let met = match (check.met, check.overridden) {
            (true, _) => "yes",
            (false, true) => "overridden",
            (false, false) => "NO",
        };
        rows.add_row(vec![
            check.name.clone(),
            met.to_owned(),
            check.evidence.clone(),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    for outcome in &referral.outcomes {
        writeln!(
            out,
            "{} {}{}",
            outcome.on_date,
            outcome_name(outcome.outcome),
            if outcome.note.is_empty() {
                String::new()
            } else {
                format!(": {}", outcome.note)
            }
        )?;
    }
    if referral.evidence_change_count > 0 {
        let shown: Vec<String> = referral
            .evidence_changes
            .iter()
            .map(|change| {
                format!(
                    "{} {} now {}",
                    change.date,
                    session_text(change.session),
                    change.code
                )
            })
            .collect();
        let more = usize::try_from(referral.evidence_change_count)
            .unwrap_or(0)
            .saturating_sub(shown.len());
        writeln!(
            out,
            "WARNING: {} mark(s) in the pack's period changed after submission: {}{}. Tell the \
             local authority, and see each session's history with `rollcall marks history`.",
            referral.evidence_change_count,
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )?;
    }
    if let Some(notice) = &referral.notice {
        let reduced = notice
            .reduced_amount
            .map(|amount| format!("£{amount} by {}, then ", notice.reduced_due_by))
            .unwrap_or_default();
        writeln!(
            out,
            "Penalty notice {} issued {}: {reduced}£{} by {} ({} {})",
            notice.number,
            notice.issued_on,
            notice.full_amount,
            notice.full_due_by,
            notice.policy_id,
            notice.clause
        )?;
        if status_name(referral.status) == Status::Prosecution.as_str()
            || status_name(referral.status) == Status::Withdrawn.as_str()
        {
            writeln!(out, "The notice is {}", status_name(referral.status))?;
        } else if notice.paid_on.is_empty() {
            writeln!(
                out,
                "Amount due today: £{}{}",
                notice.amount_due,
                if notice.overdue { " (OVERDUE)" } else { "" }
            )?;
        } else {
            writeln!(out, "Paid £{} on {}", notice.amount_due, notice.paid_on)?;
        }
    }
    Ok(())
}

/// Runs `rollcall referral`.
pub(crate) async fn run_referral(
    clients: &Clients,
    command: ReferralCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut referrals = clients.referrals.clone();
    match command {
        ReferralCommand::List {
            school,
            upn,
            kind,
            status,
            overdue,
            limit,
            json,
        } => {
            if let Some(kind) = &kind {
                kind.parse::<ReferralKind>()
                    .map_err(|error| anyhow!("--kind: {error}"))?;
            }
            let status = status.as_deref().map(status_value).transpose()?;
            let listed = referrals
                .list_referrals(ListReferralsRequest {
                    laestab: school.unwrap_or_default(),
                    upn: upn.unwrap_or_default(),
                    kind: kind.unwrap_or_default(),
                    status: status.unwrap_or_default(),
                    overdue_only: overdue,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if !listed.next_page_token.is_empty() {
                // Standard error, so that --json output stays one JSON document.
                eprintln!(
                    "note: more referrals match than the {limit} listed; raise --limit to see them"
                );
            }
            let listed = listed.referrals;
            if json {
                return print_json(
                    out,
                    &Value::Array(listed.iter().map(referral_json).collect()),
                );
            }
            if listed.is_empty() {
                writeln!(out, "No referrals")?;
                return Ok(());
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header(["reference", "id", "kind", "upn", "status", "due"]);
            for referral in &listed {
                let due = referral.notice.as_ref().map_or(String::new(), |notice| {
                    if !notice.paid_on.is_empty() {
                        format!("paid {}", notice.paid_on)
                    } else if notice.overdue {
                        format!("£{} overdue", notice.amount_due)
                    } else {
                        format!("£{}", notice.amount_due)
                    }
                });
                rows.add_row(vec![
                    referral.reference.clone(),
                    referral.id.clone(),
                    referral.kind.clone(),
                    referral.upn.clone(),
                    status_name(referral.status).to_owned(),
                    due,
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
        }
        ReferralCommand::Show { id, json } => {
            let referral = referrals
                .get_referral(GetReferralRequest { id })
                .await
                .map_err(rpc)?
                .into_inner()
                .referral
                .unwrap_or_default();
            if json {
                return print_json(out, &referral_json(&referral));
            }
            print_referral(out, &referral)?;
        }
        ReferralCommand::Create {
            upn,
            kind,
            school,
            as_of,
            by,
            json,
        } => {
            kind.parse::<ReferralKind>()
                .map_err(|error| anyhow!("--kind: {error}"))?;
            if let Some(as_of) = &as_of {
                parse_date(as_of).map_err(|error| anyhow!("invalid --as-of: {error}"))?;
            }
            let referral = referrals
                .create_referral(CreateReferralRequest {
                    upn,
                    laestab: school.unwrap_or_default(),
                    kind,
                    created_by: by,
                    as_of: as_of.unwrap_or_default(),
                    request_id: String::new(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .referral
                .unwrap_or_default();
            if json {
                return print_json(out, &referral_json(&referral));
            }
            writeln!(out, "Created draft referral {}", referral.reference)?;
            print_referral(out, &referral)?;
        }
        ReferralCommand::Submit {
            id,
            by,
            role,
            override_reason,
            json,
        } => {
            let response = referrals
                .submit_referral(SubmitReferralRequest {
                    id,
                    submitted_by: by,
                    role: role.unwrap_or_default(),
                    override_reason: override_reason.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let referral = response.referral.unwrap_or_default();
            if json {
                let mut value = referral_json(&referral);
                value["delivery_ids"] = json!(response.delivery_ids);
                value["delivery_problem"] = json!(response.delivery_problem);
                return print_json(out, &value);
            }
            writeln!(out, "Submitted referral {}", referral.reference)?;
            print_referral(out, &referral)?;
            for delivery in &response.delivery_ids {
                writeln!(out, "Delivery {delivery} queued")?;
            }
            if !response.delivery_problem.is_empty() {
                writeln!(
                    out,
                    "The pack was not handed over for delivery: {}",
                    response.delivery_problem
                )?;
            }
        }
        ReferralCommand::Deliver { id } => {
            let referral = referrals
                .get_referral(GetReferralRequest { id: id.clone() })
                .await
                .map_err(rpc)?
                .into_inner()
                .referral
                .unwrap_or_default();
            if status_name(referral.status) == Status::Withdrawn.as_str() {
                bail!(
                    "referral {} is withdrawn, so its pack is not delivered again",
                    referral.reference
                );
            }
            if referral.pack_id.is_empty() {
                bail!(
                    "referral {} is {} and has no pack to deliver; submit it first",
                    referral.reference,
                    status_name(referral.status)
                );
            }
            let pack = referrals
                .get_referral_pack(GetReferralPackRequest { id })
                .await
                .map_err(rpc)?
                .into_inner();
            let deliveries = clients
                .mis_adapter
                .clone()
                .deliver_referral_pack(DeliverReferralPackRequest {
                    referral_id: referral.id.clone(),
                    pack_id: referral.pack_id.clone(),
                    laestab: referral.laestab.clone(),
                    file_name: pack.file_name,
                    pack: pack.pack,
                    sha256: pack.sha256,
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .deliveries;
            for delivery in &deliveries {
                writeln!(
                    out,
                    "Delivery {} of referral {} to {}",
                    delivery.id, referral.reference, delivery.destination
                )?;
            }
        }
        ReferralCommand::Outcome {
            id,
            outcome,
            date,
            by,
            note,
            json,
        } => {
            let outcome = outcome_value(&outcome)?;
            if let Some(date) = &date {
                parse_date(date).map_err(|error| anyhow!("invalid --date: {error}"))?;
            }
            let referral = referrals
                .record_referral_outcome(RecordReferralOutcomeRequest {
                    id,
                    outcome,
                    on_date: date.unwrap_or_default(),
                    recorded_by: by,
                    note,
                    request_id: String::new(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .referral
                .unwrap_or_default();
            if json {
                return print_json(out, &referral_json(&referral));
            }
            print_referral(out, &referral)?;
        }
        ReferralCommand::Pack {
            referral,
            upn,
            out: path,
            as_of,
        } => {
            let (pack, who) = if let Some(id) = referral {
                let response = referrals
                    .get_referral_pack(GetReferralPackRequest { id: id.clone() })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                (response.pack, format!("referral {id}"))
            } else {
                let upn = upn.unwrap_or_default();
                if let Some(as_of) = &as_of {
                    parse_date(as_of).map_err(|error| anyhow!("invalid --as-of: {error}"))?;
                }
                let response = referrals
                    .build_referral_pack(BuildReferralPackRequest {
                        upn: upn.clone(),
                        laestab: String::new(),
                        as_of: as_of.unwrap_or_default(),
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                (response.pack, format!("pupil {upn}"))
            };
            write_atomically(&path, &pack)?;
            writeln!(out, "Wrote referral pack {} for {who}", path.display())?;
        }
    }
    Ok(())
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Runs `rollcall pack`, which needs no server. Returns false when a pack is not valid.
pub(crate) fn run_pack(command: PackCommand, out: &mut impl Write) -> anyhow::Result<bool> {
    match command {
        PackCommand::Verify {
            file,
            public_key,
            json,
        } => {
            let zip = read_file(&file, "pack")?;
            let trusted = match &public_key {
                Some(path) => {
                    let pem = String::from_utf8(read_file(path, "public key")?).map_err(|_| {
                        anyhow!(
                            "{} is not text; give the trust's public key as PEM",
                            path.display()
                        )
                    })?;
                    Some(
                        VerifyingKey::from_public_key_pem(&pem)
                            .with_context(|| format!("--public-key {}", path.display()))?,
                    )
                }
                None => None,
            };
            let verification = verify_pack(&zip, trusted.as_ref());
            if json {
                let checks: Vec<Value> = verification
                    .checks()
                    .iter()
                    .map(|check| {
                        json!({
                            "name": check.name.as_str(),
                            "status": check.status.as_str(),
                            "detail": check.detail,
                        })
                    })
                    .collect();
                print_json(
                    out,
                    &json!({
                        "file": file.display().to_string(),
                        "valid": verification.is_valid(),
                        "checks": checks,
                    }),
                )?;
            } else {
                writeln!(out, "{verification}")?;
                writeln!(
                    out,
                    "{}: {}",
                    file.display(),
                    if verification.is_valid() {
                        "valid"
                    } else {
                        "NOT valid"
                    }
                )?;
            }
            Ok(verification.is_valid())
        }
        PackCommand::PublicKey { key } => {
            let pem = String::from_utf8(read_file(&key, "signing key")?)
                .map_err(|_| anyhow!("{} is not a PEM file", key.display()))?;
            let key = SigningKey::from_pkcs8_pem(&pem)
                .with_context(|| format!("--key {}", key.display()))?;
            let verifying = key.verifying_key();
            // The key id goes to standard error, so that standard output stays a PEM file.
            eprintln!("key id {}", verifying.key_id());
            write!(out, "{}", verifying.to_public_key_pem()?)?;
            Ok(true)
        }
    }
}
