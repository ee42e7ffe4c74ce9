//! `rollcall pupil explain`: a pupil's figures, where they stand against each threshold, and
//! every clause of the policy applied. `rollcall pupil change-upn`: a pupil's records moved to
//! another UPN.

use std::io::Write;

use clap::Subcommand;
use rollcall_api::convert::session_from_proto;
use rollcall_api::policy::v1::GetPupilAttendanceRequest;
use rollcall_api::registers::v1::{ChangeUpnRequest, ChangeUpnResponse};
use rollcall_api::types::v1::MarkSource;
use rollcall_domain::Session;
use rollcall_domain::session::parse_date;
use serde_json::json;

use crate::client::Clients;
use crate::text::{count, figures_json};

#[derive(Debug, Subcommand)]
pub(crate) enum PupilCommand {
    /// Explain a pupil's figures: each threshold met or near, and the clauses applied.
    Explain {
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// Figures as of this date (YYYY-MM-DD); the default is the school's last date with marks.
        #[arg(long)]
        as_of: Option<String>,
        /// The school (seven-digit LAESTAB); the default is the pupil's latest school.
        #[arg(long)]
        school: Option<String>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move a pupil's records to another UPN, as when the permanent UPN replaces a temporary
    /// one. When the new UPN already has records, the two are merged.
    #[command(name = "change-upn")]
    ChangeUpn {
        /// The UPN the records are held under now.
        #[arg(long)]
        from: String,
        /// The UPN they move to.
        #[arg(long)]
        to: String,
        /// The reason for the change, kept with it.
        #[arg(long)]
        reason: String,
        /// The name of the person making the change.
        #[arg(long, default_value = "rollcall pupil change-upn")]
        by: String,
    },
}

fn state(met: bool, near: bool) -> &'static str {
    match (met, near) {
        (true, _) => "met",
        (false, true) => "near",
        (false, false) => "not met",
    }
}

pub(crate) async fn run(
    clients: &Clients,
    command: PupilCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        PupilCommand::Explain {
            upn,
            as_of,
            school,
            json,
        } => explain(clients, upn, as_of, school, json, out).await,
        PupilCommand::ChangeUpn {
            from,
            to,
            reason,
            by,
        } => change_upn(clients, &from, &to, &reason, &by, out).await,
    }
}

async fn change_upn(
    clients: &Clients,
    from: &str,
    to: &str,
    reason: &str,
    by: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let from = from.trim().to_ascii_uppercase();
    let to = to.trim().to_ascii_uppercase();
    // The same command run twice records one change.
    let request_id = format!("cli:change-upn:{from}:{to}");
    let response: ChangeUpnResponse = clients
        .registers
        .clone()
        .change_upn(ChangeUpnRequest {
            request_id,
            from_upn: from.clone(),
            to_upn: to.clone(),
            reason: reason.to_owned(),
            recorded_by: by.to_owned(),
            source: MarkSource::Staff as i32,
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    let moved = response.moved.unwrap_or_default();
    if response.already_applied {
        writeln!(
            out,
            "UPN {from} was already changed to {to} (change {}); nothing changed now.",
            response.change_id
        )?;
    } else if response.merged {
        writeln!(
            out,
            "Merged pupil {from} into pupil {to} (change {}).",
            response.change_id
        )?;
    } else {
        writeln!(
            out,
            "Changed UPN {from} to {to} (change {}).",
            response.change_id
        )?;
    }
    writeln!(
        out,
        "Moved: {}, {}, {}, {}, {}, {} and {}.",
        count(moved.mark_versions, "mark version", "mark versions"),
        count(
            moved.sessions,
            "session with a mark",
            "sessions with a mark"
        ),
        count(moved.enrolments, "enrolment", "enrolments"),
        count(moved.absence_reports, "absence report", "absence reports"),
        count(moved.lesson_marks, "lesson mark", "lesson marks"),
        count(moved.truancy_flags, "truancy flag", "truancy flags"),
        count(moved.contacts, "contact", "contacts")
    )?;
    writeln!(
        out,
        "The other services apply the change when they next poll the registers, every few \
         seconds."
    )?;
    Ok(())
}

async fn explain(
    clients: &Clients,
    upn: String,
    as_of: Option<String>,
    school: Option<String>,
    json_output: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let as_of = match as_of {
        Some(value) => parse_date(&value)
            .map_err(|error| anyhow::anyhow!("invalid --as-of: {error}"))?
            .to_string(),
        None => String::new(),
    };
    let response = clients
        .policy
        .clone()
        .get_pupil_attendance(GetPupilAttendanceRequest {
            upn: upn.clone(),
            laestab: school.unwrap_or_default(),
            as_of,
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    let attendance = response.attendance.unwrap_or_default();
    let figures = attendance.figures.unwrap_or_default();
    let policy = response.policy.unwrap_or_default();
    let period = response.period.unwrap_or_default();

    // Every clause applied: the definitions behind the figures and each threshold's clause.
    let mut clauses: Vec<(String, String)> = Vec::new();
    for status in &response.thresholds {
        let text = policy
            .rules
            .iter()
            .find(|rule| rule.clause == status.clause)
            .map(|rule| rule.description.clone())
            .unwrap_or_default();
        if !clauses.iter().any(|(clause, _)| *clause == status.clause) {
            clauses.push((status.clause.clone(), text));
        }
    }

    if json_output {
        let thresholds: Vec<serde_json::Value> = response
            .thresholds
            .iter()
            .map(|status| {
                let window = status.window.clone().unwrap_or_default();
                let counted: Vec<serde_json::Value> = status
                    .counted
                    .iter()
                    .map(|session| {
                        json!({
                            "date": session.date,
                            "session": session_from_proto(session.session).map_or("", Session::as_str),
                            "code": session.code,
                        })
                    })
                    .collect();
                json!({
                    "rule": status.rule_id,
                    "clause": status.clause,
                    "state": state(status.met, status.near),
                    "met": status.met,
                    "near": status.near,
                    "threshold_sessions": status.threshold_sessions,
                    "counted_sessions": status.counted_sessions,
                    "sessions_to_go": status.sessions_to_go,
                    "window": {"from": window.from_date, "to": window.to_date},
                    "explanation": status.explanation,
                    "counted": counted,
                })
            })
            .collect();
        let document = json!({
            "upn": attendance.upn,
            "laestab": attendance.laestab,
            "year_group": attendance.year_group,
            "policy": {"id": policy.id, "version": policy.version, "title": policy.title},
            "period": {"from": period.from_date, "to": period.to_date},
            "figures": figures_json(&figures),
            "thresholds": thresholds,
            "clauses": clauses
                .iter()
                .map(|(clause, text)| json!({"clause": clause, "text": text}))
                .collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut *out, &document)?;
        writeln!(out)?;
        return Ok(());
    }

    writeln!(
        out,
        "Pupil {} at school {} (year {}), {} to {}, policy {} version {}",
        attendance.upn,
        attendance.laestab,
        attendance.year_group,
        period.from_date,
        period.to_date,
        policy.id,
        policy.version
    )?;
    let percent = figures
        .attendance_percent
        .map_or_else(|| "no possible sessions".to_owned(), |p| format!("{p:.1}%"));
    writeln!(
        out,
        "Attendance {percent}: {} possible, {} attended, {} authorised and {} unauthorised absence, {} not possible",
        figures.possible_sessions,
        figures.attended_sessions,
        figures.authorised_absence_sessions,
        figures.unauthorised_absence_sessions,
        figures.not_possible_sessions
    )?;
    for status in &response.thresholds {
        writeln!(
            out,
            "{}: {} (clause {}). {}",
            status.rule_id,
            state(status.met, status.near),
            status.clause,
            status.explanation
        )?;
    }
    writeln!(out, "Clauses applied:")?;
    for (clause, text) in &clauses {
        writeln!(out, "  {clause}: {text}")?;
    }
    Ok(())
}
