//! `rollcall policy` and `rollcall absence`: attendance policies as files, the policy each
//! school follows, the differences from the law, and decisions on absence.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::policy::v1::{
    AssignPolicyRequest, DecideAbsenceRequest, GetPenaltyNoticeTermsRequest, GetPolicyRequest,
    ListPoliciesRequest, ListPolicyAssignmentsRequest, LoadPolicyRequest, SessionRef,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_domain::policy::check::{compare, statutory_in_force};
use rollcall_domain::policy::file::parse_policy;
use rollcall_domain::session::parse_date;
use rollcall_domain::{Policy, Session};
use serde_json::json;

use crate::client::Clients;
use crate::commands::SYNC_TIMEOUT;
use crate::text::{count, table};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Show a policy's rules and clauses: from a file, or the one a school follows on a date.
    Show {
        /// A policy file (TOML) to read instead of asking the server.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The school (seven-digit LAESTAB); the default is the trust's default policy.
        #[arg(long)]
        school: Option<String>,
        /// The date (YYYY-MM-DD); the default is today.
        #[arg(long)]
        on: Option<String>,
        /// Print the policy as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every difference between a policy file and the statutory framework in force on a
    /// date, with the clauses of both.
    Check {
        /// The policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// The date to compare on (YYYY-MM-DD).
        #[arg(long)]
        on: String,
        /// Print the differences as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a policy file and load it into the server as a new version.
    Load {
        /// The policy file (TOML).
        file: PathBuf,
        /// The name of the person loading it.
        #[arg(long)]
        by: String,
    },
    /// List every policy version the server holds.
    List {
        /// Print a JSON array, one object per version.
        #[arg(long)]
        json: bool,
    },
    /// Whether a penalty notice may be issued to a parent for a child, and at what amount,
    /// given the dates of the earlier notices to that parent for that child.
    NoticeTerms {
        /// The school (seven-digit LAESTAB) whose policy applies.
        #[arg(long)]
        school: String,
        /// The date the notice would be issued (YYYY-MM-DD).
        #[arg(long)]
        on: String,
        /// The date of an earlier notice to the same parent for the same child; repeat for each.
        #[arg(long)]
        earlier: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the policies a school has been moved to, with who moved it, when and why.
    Assignments {
        /// The school (seven-digit LAESTAB).
        #[arg(long)]
        school: String,
        /// Print a JSON array, one object per move.
        #[arg(long)]
        json: bool,
    },
    /// Move a school to a policy from a date. Earlier dates keep the policy they had.
    Assign {
        /// The school (seven-digit LAESTAB).
        #[arg(long)]
        school: String,
        /// The policy's id, for example statutory-2024.
        #[arg(long)]
        policy: String,
        /// The first date the school follows it (YYYY-MM-DD).
        #[arg(long)]
        from: String,
        /// The name of the person making the change.
        #[arg(long)]
        by: String,
        /// The reason the school changes policy.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AbsenceCommand {
    /// Decide whether an absence is authorised under the policy in force, and optionally
    /// record the decision in the register.
    Decide {
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// The school (seven-digit LAESTAB).
        #[arg(long)]
        school: String,
        /// The first date of the absence (YYYY-MM-DD).
        #[arg(long)]
        date: String,
        /// The last date of the absence; the default is --date.
        #[arg(long)]
        to: Option<String>,
        /// Only this session (AM or PM) of each day; the default is both.
        #[arg(long)]
        session: Option<Session>,
        /// The reason as the policy names it, for example illness or holiday.
        #[arg(long)]
        reason: String,
        /// The name of the person deciding.
        #[arg(long)]
        by: String,
        /// Their role: headteacher or delegated_staff.
        #[arg(long)]
        role: String,
        /// Staff doubt that the explanation is genuine.
        #[arg(long)]
        doubt: bool,
        /// Medical evidence has been seen.
        #[arg(long)]
        medical_evidence: bool,
        /// A description of the evidence, kept with the decision.
        #[arg(long)]
        evidence: Option<String>,
        /// The id of the parent's absence report the decision is about.
        #[arg(long)]
        absence_report: Option<String>,
        /// Record the decision in the register as an amendment of each session.
        #[arg(long)]
        record: bool,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn read_policy(path: &Path) -> anyhow::Result<(Policy, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    match parse_policy(&text) {
        Ok(document) => Ok((document.policy, text)),
        Err(error) => bail!("invalid policy file {}: {error}", path.display()),
    }
}

fn checked_date(flag: &str, value: &str) -> anyhow::Result<chrono::NaiveDate> {
    parse_date(value).map_err(|error| anyhow::anyhow!("invalid {flag}: {error}"))
}

/// Runs the policy commands that need no server.
pub(crate) fn run_local(
    command: &PolicyCommand,
    out: &mut impl Write,
) -> Option<anyhow::Result<()>> {
    match command {
        PolicyCommand::Check { policy, on, json } => Some(check(policy, on, *json, out)),
        PolicyCommand::Show {
            policy: Some(path),
            json,
            ..
        } => Some(read_policy(path).and_then(|(policy, _)| show(&policy, None, *json, out))),
        _ => None,
    }
}

fn check(path: &Path, on: &str, json_output: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let on = checked_date("--on", on)?;
    let (policy, _) = read_policy(path)?;
    let Some(statutory) = statutory_in_force(on) else {
        bail!(
            "no statutory framework known to rollcall is in force on {on}: the shipped framework \
             applies from 19 August 2024; choose a later --on date"
        );
    };
    let differences = compare(&policy, &statutory, on);
    if json_output {
        let document = json!({
            "policy": {"id": policy.id, "version": policy.version},
            "statutory": {"id": statutory.id, "version": statutory.version},
            "on": on.to_string(),
            "differences": differences,
        });
        serde_json::to_writer_pretty(&mut *out, &document)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "Policy {} ({}) against {} ({}) on {on}: {}",
        policy.id,
        policy.version,
        statutory.id,
        statutory.version,
        count(differences.len(), "difference", "differences")
    )?;
    for difference in &differences {
        let clause = |clause: &Option<String>| {
            clause
                .as_deref()
                .map_or_else(|| "no clause".to_owned(), |c| format!("clause {c}"))
        };
        writeln!(out)?;
        writeln!(out, "{}", difference.rule)?;
        writeln!(
            out,
            "  policy:    {} ({})",
            difference.policy.value,
            clause(&difference.policy.clause)
        )?;
        writeln!(
            out,
            "  statutory: {} ({})",
            difference.statutory.value,
            clause(&difference.statutory.clause)
        )?;
        writeln!(out, "  {}", difference.note)?;
    }
    Ok(())
}

/// Prints a policy's rules. `context` is the school (if any) and the date it was asked for.
fn show(
    policy: &Policy,
    context: Option<(&str, chrono::NaiveDate)>,
    json_output: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json_output {
        serde_json::to_writer_pretty(&mut *out, policy)?;
        writeln!(out)?;
        return Ok(());
    }
    let on = context.map_or_else(|| chrono::Utc::now().date_naive(), |(_, on)| on);
    if let Some((school, on)) = context {
        let subject = if school.is_empty() {
            "The trust's default policy".to_owned()
        } else {
            format!("School {school} follows this policy")
        };
        writeln!(out, "{subject} on {on}.")?;
    }
    let until = policy
        .effective_to
        .map_or_else(|| "with no end date".to_owned(), |to| format!("to {to}"));
    writeln!(
        out,
        "{}: {}, version {} ({} policy)",
        policy.id,
        policy.title,
        policy.version,
        policy.kind.as_str()
    )?;
    writeln!(out, "In force from {} {until}", policy.effective_from)?;
    if !policy.in_force_on(on) {
        writeln!(
            out,
            "Note: this version is not in force on {on}; rollcall applies the nearest version \
             of the policy"
        )?;
    }
    if let Some(review) = &policy.review {
        let passed = if review.due < on { " (passed)" } else { "" };
        writeln!(out, "Next review due {}{passed}", review.due)?;
    }

    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header(["rule", "setting", "clause"]);
    rows.add_row([
        "codes".to_owned(),
        format!("register codes of {}", policy.code_set.as_str()),
        policy.code_set_clause.reference.clone(),
    ]);
    rows.add_row([
        "persistent_absence".to_owned(),
        format!("absence of {}% or more", policy.persistent_absence_percent),
        policy.persistent_absence_clause.reference.clone(),
    ]);
    rows.add_row([
        "severe_absence".to_owned(),
        format!("absence of {}% or more", policy.severe_absence_percent),
        policy.severe_absence_clause.reference.clone(),
    ]);

    let warning = &policy.penalty_warning;
    rows.add_row([
        "penalty_warning".to_owned(),
        format!(
            "{} unauthorised sessions{} in {}",
            warning.sessions,
            if warning.codes.is_empty() {
                String::new()
            } else {
                format!(" ({})", warning.codes.join(", "))
            },
            warning.window.describe()
        ),
        warning.clause.reference.clone(),
    ]);
    if let Some(notice) = &policy.penalty_notice {
        let mut setting = format!(
            "£{} within {} days, £{} within {} days",
            notice.reduced_amount, notice.reduced_days, notice.full_amount, notice.full_days
        );
        if let Some(repeat) = notice.repeat_amount {
            setting.push_str(&format!("; a second notice £{repeat}"));
        }
        if let (Some(max), Some(years)) = (notice.max_notices, notice.limit_years) {
            setting.push_str(&format!(
                "; at most {max} per parent per child in {years} years"
            ));
        }
        rows.add_row([
            "penalty_notice".to_owned(),
            setting,
            notice.clause.reference.clone(),
        ]);
    }
    if let Some(retention) = &policy.register_retention {
        rows.add_row([
            "register_retention".to_owned(),
            format!("at least {} years", retention.years),
            retention.clause.reference.clone(),
        ]);
    }

    if let Some(rule) = &policy.unexplained_absence {
        rows.add_row([
            "unexplained_absence".to_owned(),
            format!("N resolved within {} school days", rule.days),
            rule.clause.reference.clone(),
        ]);
    }
    if let Some(rule) = &policy.unauthorised_absence_return {
        rows.add_row([
            "unauthorised_absence_return".to_owned(),
            format!(
                "{} {}school days of unauthorised absence",
                rule.days,
                if rule.continuous { "continuous " } else { "" }
            ),
            rule.clause.reference.clone(),
        ]);
    }
    if let Some(rule) = &policy.sickness_return {
        rows.add_row([
            "sickness_return".to_owned(),
            format!("{} days of sickness in the year", rule.days),
            rule.clause.reference.clone(),
        ]);
    }

    if let Some(rewards) = &policy.rewards {
        rows.add_row([
            "rewards".to_owned(),
            format!(
                "attendance {}% or up {} points; at most {} lates or {} fewer",
                rewards.excellent_attendance_percent,
                rewards.much_improved_points,
                rewards.excellent_punctuality_lates,
                rewards.much_improved_punctuality_lates
            ),
            rewards.clause.reference.clone(),
        ]);
    }

    let authorisation = &policy.authorisation;
    rows.add_row([
        "deciders".to_owned(),
        authorisation.deciders.join(", "),
        authorisation.clause.reference.clone(),
    ]);
    rows.add_row([
        "doubted_explanation".to_owned(),
        "unauthorised".to_owned(),
        authorisation.doubt_clause.reference.clone(),
    ]);
    if let (Some(days), Some(clause)) = (
        authorisation.medical_evidence_after_days,
        &authorisation.medical_evidence_clause,
    ) {
        rows.add_row([
            "medical_evidence".to_owned(),
            format!("needed after {days} school days of illness"),
            clause.reference.clone(),
        ]);
    }

    for reason in &authorisation.reasons {
        rows.add_row([
            format!("reason.{}", reason.reason),
            format!(
                "{}, recorded as {}",
                if reason.authorised {
                    "may be authorised"
                } else {
                    "never authorised"
                },
                reason.code
            ),
            reason.clause.reference.clone(),
        ]);
    }

    writeln!(out, "{}", table(&rows))?;
    Ok(())
}

fn session_name(value: i32) -> &'static str {
    rollcall_api::convert::session_from_proto(value).map_or("", Session::as_str)
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// Runs the policy commands that talk to the server.
pub(crate) async fn run(
    clients: &Clients,
    command: PolicyCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Show {
            school, on, json, ..
        } => {
            let on_day = match on {
                Some(value) => checked_date("--on", &value)?,
                None => chrono::Utc::now().date_naive(),
            };
            let on_date = on_day.to_string();
            let school_name = school.clone().unwrap_or_default();
            let response = clients
                .policy
                .clone()
                .get_policy(GetPolicyRequest {
                    laestab: school.unwrap_or_default(),
                    on_date,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let source = response
                .policy
                .map(|policy| policy.source)
                .unwrap_or_default();
            let policy = parse_policy(&source)
                .map_err(|error| {
                    anyhow::anyhow!("the server sent a policy this client cannot read: {error}")
                })?
                .policy;
            show(&policy, Some((&school_name, on_day)), json, out)
        }
        PolicyCommand::Load { file, by } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read policy file {}", file.display()))?;
            let response = clients
                .policy
                .clone()
                .load_policy(LoadPolicyRequest {
                    source: text,
                    loaded_by: by,
                })
                .await
                .map_err(|status| anyhow::anyhow!("{}: {}", file.display(), status.message()))?
                .into_inner();
            let policy = response.policy.unwrap_or_default();
            if response.already_loaded {
                writeln!(
                    out,
                    "Policy {} version {} is already loaded; nothing changed",
                    policy.id, policy.version
                )?;
            } else {
                writeln!(
                    out,
                    "Loaded policy {} version {}, in force from {}",
                    policy.id, policy.version, policy.effective_from
                )?;
            }
            Ok(())
        }
        PolicyCommand::List { json } => {
            let policies = clients
                .policy
                .clone()
                .list_policies(ListPoliciesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .policies;
            if json {
                let rows: Vec<serde_json::Value> = policies
                    .iter()
                    .map(|policy| {
                        json!({
                            "id": policy.id,
                            "version": policy.version,
                            "kind": policy.kind,
                            "title": policy.title,
                            "effective_from": policy.effective_from,
                            "effective_to": (!policy.effective_to.is_empty()).then_some(&policy.effective_to),
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
                return Ok(());
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header(["id", "version", "kind", "from", "to", "title"]);
            for policy in &policies {
                rows.add_row([
                    policy.id.as_str(),
                    policy.version.as_str(),
                    policy.kind.as_str(),
                    policy.effective_from.as_str(),
                    policy.effective_to.as_str(),
                    policy.title.as_str(),
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
            Ok(())
        }
        PolicyCommand::Assign {
            school,
            policy,
            from,
            by,
            reason,
        } => {
            let from = checked_date("--from", &from)?;
            let response = clients
                .policy
                .clone()
                .assign_policy(AssignPolicyRequest {
                    laestab: school,
                    policy_id: policy,
                    from_date: from.to_string(),
                    assigned_by: by,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let assignment = response.assignment.unwrap_or_default();
            writeln!(
                out,
                "School {} follows policy {} from {}",
                assignment.laestab, assignment.policy_id, assignment.from_date
            )?;
            writeln!(
                out,
                "Its pupils were evaluated again: {} raised, {} withdrawn. Sessions before {} do \
                 not count towards the new policy's penalty threshold.",
                count(response.triggers_raised, "trigger", "triggers"),
                count(response.triggers_withdrawn, "trigger", "triggers"),
                assignment.from_date
            )?;
            Ok(())
        }
        PolicyCommand::Assignments { school, json } => {
            let response = clients
                .policy
                .clone()
                .list_policy_assignments(ListPolicyAssignmentsRequest {
                    laestab: school.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let rows: Vec<serde_json::Value> = response
                    .assignments
                    .iter()
                    .map(|a| {
                        json!({
                            "policy_id": a.policy_id,
                            "from": a.from_date,
                            "assigned_by": a.assigned_by,
                            "reason": a.reason,
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(
                out,
                "School {school} follows {} until its first move",
                response.default_policy_id
            )?;
            if response.assignments.is_empty() {
                writeln!(out, "It has not been moved to another policy.")?;
                return Ok(());
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header(["from", "policy", "by", "reason"]);
            for a in &response.assignments {
                rows.add_row([
                    a.from_date.as_str(),
                    a.policy_id.as_str(),
                    a.assigned_by.as_str(),
                    a.reason.as_str(),
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
            Ok(())
        }
        PolicyCommand::NoticeTerms {
            school,
            on,
            earlier,
            json,
        } => {
            let on = checked_date("--on", &on)?;
            for value in &earlier {
                checked_date("--earlier", value)?;
            }
            let terms = clients
                .policy
                .clone()
                .get_penalty_notice_terms(GetPenaltyNoticeTermsRequest {
                    laestab: school,
                    on_date: on.to_string(),
                    earlier_notices: earlier,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                let document = json!({
                    "allowed": terms.allowed,
                    "number": terms.number,
                    "reduced_amount": terms.reduced_amount,
                    "full_amount": terms.full_amount,
                    "explanation": terms.explanation,
                    "policy_id": terms.policy_id,
                    "clause": terms.clause,
                });
                serde_json::to_writer_pretty(&mut *out, &document)?;
                writeln!(out)?;
                return Ok(());
            }
            if terms.allowed {
                writeln!(
                    out,
                    "Notice {} may be issued: {} (policy {})",
                    terms.number, terms.explanation, terms.policy_id
                )?;
            } else {
                writeln!(
                    out,
                    "No notice may be issued: {} (policy {})",
                    terms.explanation, terms.policy_id
                )?;
            }
            Ok(())
        }
        PolicyCommand::Check { .. } => unreachable_local(),
    }
}

fn unreachable_local() -> anyhow::Result<()> {
    bail!("policy check runs without a server; this is a fault in rollcall, please report it")
}

/// Runs `rollcall absence`.
pub(crate) async fn run_absence(
    clients: &Clients,
    command: AbsenceCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let AbsenceCommand::Decide {
        upn,
        school,
        date,
        to,
        session,
        reason,
        by,
        role,
        doubt,
        medical_evidence,
        evidence,
        absence_report,
        record,
        json,
    } = command;

    let first = checked_date("--date", &date)?;
    let last = match to {
        Some(value) => checked_date("--to", &value)?,
        None => first,
    };
    if last < first {
        bail!("invalid --to {last}: it is before --date {first}");
    }

    let halves: Vec<Session> = match session {
        Some(half) => vec![half],
        None => vec![Session::Am, Session::Pm],
    };

    let mut sessions = Vec::new();
    for day in first.iter_days().take_while(|day| *day <= last) {
        if chrono::Datelike::weekday(&day).number_from_monday() > 5 {
            continue;
        }
        for half in &halves {
            sessions.push(SessionRef {
                date: day.to_string(),
                session: PbSession::from(*half) as i32,
            });
        }
    }
    if sessions.is_empty() {
        bail!("--date {first} to --to {last} has no weekdays, so there is no session to decide on");
    }

    let request_id = format!(
        "cli:{upn}:{first}:{last}:{}:{reason}:{}",
        session.map_or("both", Session::as_str),
        chrono::Utc::now().timestamp()
    );

    let response = clients
        .policy
        .clone()
        .decide_absence(DecideAbsenceRequest {
            request_id,
            upn: upn.clone(),
            laestab: school,
            sessions,
            reason,
            medical_evidence,
            evidence_note: evidence.unwrap_or_default(),
            staff_doubt: doubt,
            decided_by: by,
            decider_role: role,
            absence_report_id: absence_report.unwrap_or_default(),
            record,
        })
        .await
        .map_err(status_error)?
        .into_inner();

    if response.feed_cursor > 0 {
        clients
            .wait_for_sync(response.feed_cursor, SYNC_TIMEOUT)
            .await?;
    }

    if json {
        let clauses: Vec<serde_json::Value> = response
            .clauses
            .iter()
            .map(|clause| json!({"clause": clause.clause, "text": clause.description}))
            .collect();
        let sessions: Vec<serde_json::Value> = response
            .decisions
            .iter()
            .map(|d| {
                json!({
                    "date": d.date,
                    "session": session_name(d.session),
                    "code": d.code,
                    "authorised": d.authorised,
                    "explanation": d.explanation,
                })
            })
            .collect();
        let document = json!({
            "upn": upn,
            "sessions": sessions,
            "code": response.code,
            "authorised": response.authorised,
            "explanation": response.explanation,
            "clauses": clauses,
            "policy_id": response.policy_id,
            "policy_version": response.policy_version,
            "illness_days": response.illness_days,
            "recorded": response.feed_cursor > 0,
        });
        serde_json::to_writer_pretty(&mut *out, &document)?;
        writeln!(out)?;
        return Ok(());
    }

    writeln!(
        out,
        "{}: {} ({})",
        response.code,
        if response.authorised {
            "authorised"
        } else {
            "unauthorised"
        },
        response.explanation
    )?;
    let mixed = response
        .decisions
        .iter()
        .any(|decision| decision.code != response.code);
    if mixed {
        for decision in &response.decisions {
            writeln!(
                out,
                "  {} {}: {} ({})",
                decision.date,
                session_name(decision.session),
                decision.code,
                if decision.authorised {
                    "authorised"
                } else {
                    "unauthorised"
                }
            )?;
        }
    }
    let references: Vec<&str> = response.clauses.iter().map(|c| c.clause.as_str()).collect();
    writeln!(
        out,
        "Policy {} version {}, clauses {}",
        response.policy_id,
        response.policy_version,
        references.join(", ")
    )?;
    if response.feed_cursor > 0 {
        let first = response.decisions.first().map_or("", |d| d.date.as_str());
        let last = response.decisions.last().map_or("", |d| d.date.as_str());
        writeln!(
            out,
            "Recorded in the register for pupil {upn}: {} from {first} to {last}",
            count(response.decisions.len(), "session", "sessions")
        )?;
    }
    Ok(())
}
