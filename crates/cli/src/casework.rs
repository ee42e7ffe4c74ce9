//! `rollcall case` and `rollcall ladder`: working a case and the escalation ladders.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::cases::v1::{
    Case, CloseCaseRequest, CreatePlanRequest, CreateReintegrationRequest, DeescalateCaseRequest,
    EscalateCaseRequest, GetCaseTimelineRequest, KeepCaseOpenRequest, ListLaddersRequest,
    ListOverdueReviewsRequest, LoadLadderRequest, OpenCaseRequest, RecordActionRequest,
    RecordCheckInRequest, RecordRewardRequest, RecordTruancyIncidentRequest, ReintegrationStep,
    ReviewPlanRequest,
};
use rollcall_api::convert::from_timestamp;
use rollcall_api::types::v1::Phase as PbPhase;
use rollcall_domain::Phase;
use rollcall_domain::session::parse_date;
use serde_json::json;

use crate::client::Clients;
use crate::text::table;

#[derive(Debug, Subcommand)]
pub(crate) enum CaseCommand {
    /// Open a case by hand at the first stage of the pupil's ladder.
    Open {
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// The school (seven-digit LAESTAB).
        #[arg(long)]
        school: String,
        /// The concern, for example persistent_absence or punctuality.
        #[arg(long)]
        concern: String,
        /// The pupil's phase (infant, junior or secondary); the default is the one their year
        /// group gives.
        #[arg(long)]
        phase: Option<Phase>,
        /// The reason for opening it.
        #[arg(long)]
        reason: String,
        /// The name of the person opening it.
        #[arg(long)]
        by: String,
        /// Their role.
        #[arg(long, default_value = "")]
        role: String,
        /// The date it starts (YYYY-MM-DD); the default is today.
        #[arg(long)]
        on: Option<String>,
    },
    /// Move a case up one stage; refused until the stage's actions are recorded.
    Escalate(ChangeArgs),
    /// Move a case down one stage.
    Deescalate(ChangeArgs),
    /// Close a case.
    Close(ChangeArgs),
    /// Keep a case that is up for review open.
    KeepOpen(ChangeArgs),
    /// Record an action on a case.
    Action {
        /// The case.
        #[arg(long)]
        case: String,
        /// call, letter, meeting, structured_meeting, home_visit, attendance_contract or
        /// assessment (of the family's circumstances).
        #[arg(long)]
        kind: String,
        /// The date it was taken (YYYY-MM-DD).
        #[arg(long)]
        on: String,
        /// The outcome.
        #[arg(long)]
        outcome: String,
        /// Notes.
        #[arg(long, default_value = "")]
        notes: String,
        /// The trust's Attendance Improvement Officer took part.
        #[arg(long)]
        with_aio: bool,
        /// The action did not reach the parents, for example no answer at the door.
        #[arg(long)]
        not_reached: bool,
        /// The next review date (YYYY-MM-DD); the default is the stage's review interval.
        #[arg(long)]
        next_review: Option<String>,
        /// The name of the person recording it.
        #[arg(long)]
        by: String,
        /// Their role.
        #[arg(long, default_value = "")]
        role: String,
    },
    /// Everything that happened on a case, oldest first.
    Timeline {
        /// The case.
        #[arg(long)]
        case: String,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Set an Attendance Improvement Plan on a case.
    Plan {
        /// The case.
        #[arg(long)]
        case: String,
        /// The attendance target, in percent.
        #[arg(long)]
        target: i32,
        /// The maximum number of late marks allowed; leave out for no punctuality target.
        #[arg(long)]
        max_lates: Option<i32>,
        /// The first date counted (YYYY-MM-DD).
        #[arg(long)]
        from: String,
        /// The first review date (YYYY-MM-DD).
        #[arg(long)]
        review: String,
        /// The person who owns the targets.
        #[arg(long)]
        owner: String,
        /// Their role, for example trust_attendance_improvement_officer.
        #[arg(long)]
        owner_role: String,
        /// The name of the person setting the plan.
        #[arg(long)]
        by: String,
    },
    /// Review a plan against the registers.
    ReviewPlan {
        /// The plan.
        #[arg(long)]
        plan: String,
        /// The date of the review (YYYY-MM-DD); the default is today.
        #[arg(long)]
        on: Option<String>,
        /// The next review date; leave out to close the plan.
        #[arg(long)]
        next_review: Option<String>,
        /// The name of the person reviewing it.
        #[arg(long)]
        by: String,
        /// Notes.
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Turn a truancy flag from the registers into an incident.
    Truancy {
        /// The school (seven-digit LAESTAB).
        #[arg(long)]
        school: String,
        /// The registers' flag id.
        #[arg(long)]
        flag: String,
        /// The sanction applied.
        #[arg(long)]
        sanction: String,
        /// The date the parents were informed (YYYY-MM-DD).
        #[arg(long)]
        parents_informed_on: String,
        /// The way the parents were informed, for example phone call.
        #[arg(long)]
        parents_informed_how: String,
        /// The support offered.
        #[arg(long)]
        support: String,
        /// The name of the person recording it.
        #[arg(long)]
        by: String,
        /// Their role.
        #[arg(long, default_value = "")]
        role: String,
    },
    /// Set a reintegration programme on a case after an extended absence.
    Reintegrate {
        /// The case.
        #[arg(long)]
        case: String,
        /// The extended absence, in words.
        #[arg(long)]
        absence: String,
        /// The first day back (YYYY-MM-DD).
        #[arg(long)]
        from: String,
        /// A step as DATE=DESCRIPTION, for example "2025-10-03=Mornings only"; repeat in order.
        #[arg(long = "step", required = true)]
        steps: Vec<String>,
        /// The name of the person setting it.
        #[arg(long)]
        by: String,
    },
    /// Record a check-in on a reintegration programme.
    CheckIn {
        /// The programme.
        #[arg(long)]
        programme: String,
        /// The date (YYYY-MM-DD).
        #[arg(long)]
        on: String,
        /// The steps completed by then, by position from 1; repeat for each.
        #[arg(long = "done")]
        done: Vec<i32>,
        /// Notes.
        #[arg(long)]
        notes: String,
        /// The name of the person holding it.
        #[arg(long)]
        by: String,
    },
    /// Record a reward given to a pupil.
    Reward {
        /// The school (seven-digit LAESTAB).
        #[arg(long)]
        school: String,
        /// The pupil's UPN.
        #[arg(long)]
        upn: String,
        /// excellent_attendance, much_improved_attendance, excellent_punctuality or
        /// much_improved_punctuality.
        #[arg(long)]
        reward: String,
        /// The first date of the period it rewards (YYYY-MM-DD).
        #[arg(long)]
        from: String,
        /// The last date of that period (YYYY-MM-DD).
        #[arg(long)]
        to: String,
        /// The date it was given (YYYY-MM-DD).
        #[arg(long)]
        on: String,
        /// The name of the person giving it.
        #[arg(long)]
        by: String,
        /// A description of the reward, for example a certificate in assembly.
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Open cases whose review date has passed, by owner role.
    Overdue {
        /// The school (seven-digit LAESTAB); the default is every school.
        #[arg(long)]
        school: Option<String>,
        /// Reviews due before this date are overdue (YYYY-MM-DD); the default is today.
        #[arg(long)]
        as_of: Option<String>,
        /// Print a JSON array, one object per case.
        #[arg(long)]
        json: bool,
    },
}

/// Options shared by escalate, de-escalate and close.
#[derive(Debug, clap::Args)]
pub(crate) struct ChangeArgs {
    /// The case.
    #[arg(long)]
    case: String,
    /// The reason, kept on the case.
    #[arg(long)]
    reason: String,
    /// The name of the person making the change.
    #[arg(long)]
    by: String,
    /// Their role.
    #[arg(long, default_value = "")]
    role: String,
    /// The date of the change (YYYY-MM-DD); the default is today.
    #[arg(long)]
    on: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum LadderCommand {
    /// List the ladders in use.
    List {
        /// Print a JSON array, one object per ladder.
        #[arg(long)]
        json: bool,
    },
    /// Check a ladder file and load it, replacing the ladder with the same id.
    Load {
        /// The ladder file (TOML).
        file: PathBuf,
        /// The name of the person loading it.
        #[arg(long)]
        by: String,
    },
}

fn checked(flag: &str, value: Option<&String>) -> anyhow::Result<String> {
    match value {
        Some(value) => parse_date(value)
            .map(|date| date.to_string())
            .map_err(|error| anyhow::anyhow!("invalid {flag}: {error}")),
        None => Ok(String::new()),
    }
}

/// API field names in server messages, and the flags a user of these commands gives instead.
const FLAGS: [(&str, &str); 13] = [
    ("invalid next_review", "invalid --next-review"),
    ("invalid recorded_by", "invalid --by"),
    ("invalid changed_by", "invalid --by"),
    ("invalid opened_by", "invalid --by"),
    ("invalid reviewed_by", "invalid --by"),
    ("invalid with_aio", "invalid --with-aio"),
    ("invalid taken_on", "invalid --on"),
    ("invalid on_date", "invalid --on"),
    ("invalid reviewed_on", "invalid --on"),
    ("invalid case_id", "invalid --case"),
    ("invalid laestab", "invalid --school"),
    ("invalid attendance_target_percent", "invalid --target"),
    ("invalid start_date", "invalid --from"),
];

/// Returns the server's message, naming the command's flags where it names API fields.
fn status_error(status: tonic::Status) -> anyhow::Error {
    let mut message = status.message().to_owned();
    for (field, flag) in FLAGS {
        if message.starts_with(field) {
            message = message.replacen(field, flag, 1);
            break;
        }
    }
    anyhow::anyhow!("{message}")
}

fn describe(case: &Case) -> String {
    format!(
        "Case {} for pupil {}: stage {} ({}), next review {}",
        case.id,
        case.upn,
        case.stage,
        case.owner_role.replace('_', " "),
        if case.next_review.is_empty() {
            "none"
        } else {
            case.next_review.as_str()
        }
    )
}

/// The fields every change request carries, checked.
struct ChangeFields {
    case_id: String,
    changed_by: String,
    role: String,
    reason: String,
    on_date: String,
}

fn change_fields(args: ChangeArgs) -> anyhow::Result<ChangeFields> {
    Ok(ChangeFields {
        on_date: checked("--on", args.on.as_ref())?,
        case_id: args.case,
        changed_by: args.by,
        role: args.role,
        reason: args.reason,
    })
}

/// Sends one of the four change requests, which carry the same fields, and returns the case.
macro_rules! change_case {
    ($cases:ident, $args:expr, $request:ident, $method:ident) => {{
        let fields = change_fields($args)?;
        let request = $request {
            case_id: fields.case_id,
            changed_by: fields.changed_by,
            role: fields.role,
            reason: fields.reason,
            on_date: fields.on_date,
        };
        $cases
            .$method(request)
            .await
            .map_err(status_error)?
            .into_inner()
            .r#case
            .unwrap_or_default()
    }};
}

pub(crate) async fn run(
    clients: &Clients,
    command: CaseCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut cases = clients.cases.clone();
    match command {
        CaseCommand::Open {
            upn,
            school,
            concern,
            phase,
            reason,
            by,
            role,
            on,
        } => {
            let case = cases
                .open_case(OpenCaseRequest {
                    upn,
                    laestab: school,
                    concern,
                    phase: phase.map_or(PbPhase::Unspecified, PbPhase::from) as i32,
                    opened_by: by,
                    role,
                    reason,
                    on_date: checked("--on", on.as_ref())?,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .r#case
                .unwrap_or_default();
            writeln!(out, "Opened. {}", describe(&case))?;
        }
        CaseCommand::Escalate(args) => {
            let case = change_case!(cases, args, EscalateCaseRequest, escalate_case);
            writeln!(out, "Escalated. {}", describe(&case))?;
        }
        CaseCommand::Deescalate(args) => {
            let case = change_case!(cases, args, DeescalateCaseRequest, deescalate_case);
            writeln!(out, "De-escalated. {}", describe(&case))?;
        }
        CaseCommand::Plan {
            case,
            target,
            max_lates,
            from,
            review,
            owner,
            owner_role,
            by,
        } => {
            let plan = cases
                .create_plan(CreatePlanRequest {
                    case_id: case,
                    attendance_target_percent: target,
                    max_lates,
                    start_date: checked("--from", Some(&from))?,
                    review_date: checked("--review", Some(&review))?,
                    owner_name: owner,
                    owner_role,
                    created_by: by,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .unwrap_or_default();
            writeln!(
                out,
                "Plan {} for pupil {}: attendance of {}% from {}, review on {}",
                plan.id,
                plan.upn,
                plan.attendance_target_percent,
                plan.start_date,
                plan.review_date
            )?;
        }
        CaseCommand::ReviewPlan {
            plan,
            on,
            next_review,
            by,
            notes,
        } => {
            let plan = cases
                .review_plan(ReviewPlanRequest {
                    plan_id: plan,
                    reviewed_on: checked("--on", on.as_ref())?,
                    reviewed_by: by,
                    notes,
                    next_review: checked("--next-review", next_review.as_ref())?,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .plan
                .unwrap_or_default();
            if let Some(review) = plan.reviews.last() {
                let percent = review
                    .attendance_percent
                    .map_or_else(|| "no possible sessions".to_owned(), |p| format!("{p:.1}%"));
                writeln!(
                    out,
                    "Plan {}: attendance {percent} against {}% ({}), {} late marks ({})",
                    plan.id,
                    plan.attendance_target_percent,
                    if review.attendance_met {
                        "met"
                    } else {
                        "missed"
                    },
                    review.lates,
                    if review.punctuality_met {
                        "met"
                    } else {
                        "missed"
                    }
                )?;
            }
            writeln!(
                out,
                "{}",
                if plan.status == "active" {
                    format!("Next review on {}", plan.review_date)
                } else {
                    "The plan is closed".to_owned()
                }
            )?;
        }
        CaseCommand::Truancy {
            school,
            flag,
            sanction,
            parents_informed_on,
            parents_informed_how,
            support,
            by,
            role,
        } => {
            let recorded = cases
                .record_truancy_incident(RecordTruancyIncidentRequest {
                    laestab: school,
                    flag_id: flag,
                    sanction,
                    parents_informed_on: checked(
                        "--parents-informed-on",
                        Some(&parents_informed_on),
                    )?,
                    parents_informed_how,
                    support_offered: support,
                    recorded_by: by,
                    role,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let incident = recorded.incident.unwrap_or_default();
            if recorded.already_recorded {
                writeln!(
                    out,
                    "Flag {} already has incident {}; nothing changed",
                    incident.flag_id, incident.id
                )?;
            } else {
                writeln!(
                    out,
                    "Incident {} for pupil {} on {}",
                    incident.id, incident.upn, incident.date
                )?;
            }
        }
        CaseCommand::Reintegrate {
            case,
            absence,
            from,
            steps,
            by,
        } => {
            let mut parsed = Vec::new();
            for step in &steps {
                let Some((due, description)) = step.split_once('=') else {
                    anyhow::bail!(
                        "invalid --step {step:?}: write it as DATE=DESCRIPTION, for example \
                         \"2025-10-03=Mornings only\""
                    );
                };
                parsed.push(ReintegrationStep {
                    description: description.trim().to_owned(),
                    due_on: checked("--step", Some(&due.trim().to_owned()))?,
                    done_on: String::new(),
                });
            }
            let programme = cases
                .create_reintegration(CreateReintegrationRequest {
                    case_id: case,
                    absence,
                    starts_on: checked("--from", Some(&from))?,
                    steps: parsed,
                    created_by: by,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .reintegration
                .unwrap_or_default();
            writeln!(
                out,
                "Programme {} for pupil {} from {}, {}",
                programme.id,
                programme.upn,
                programme.starts_on,
                crate::text::count(programme.steps.len(), "step", "steps")
            )?;
        }
        CaseCommand::CheckIn {
            programme,
            on,
            done,
            notes,
            by,
        } => {
            let programme = cases
                .record_check_in(RecordCheckInRequest {
                    reintegration_id: programme,
                    on_date: checked("--on", Some(&on))?,
                    by,
                    notes,
                    completed_steps: done,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .reintegration
                .unwrap_or_default();
            let finished = programme
                .steps
                .iter()
                .filter(|step| !step.done_on.is_empty())
                .count();
            writeln!(
                out,
                "Programme {}: {finished} of {} steps done ({})",
                programme.id,
                programme.steps.len(),
                programme.status
            )?;
        }
        CaseCommand::Reward {
            school,
            upn,
            reward,
            from,
            to,
            on,
            by,
            notes,
        } => {
            let given = cases
                .record_reward(RecordRewardRequest {
                    laestab: school,
                    upn,
                    reward,
                    period_from: checked("--from", Some(&from))?,
                    period_to: checked("--to", Some(&to))?,
                    given_on: checked("--on", Some(&on))?,
                    given_by: by,
                    notes,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let reward = given.reward.unwrap_or_default();
            if given.already_recorded {
                writeln!(
                    out,
                    "This reward is already recorded ({}); nothing changed",
                    reward.id
                )?;
            } else {
                writeln!(
                    out,
                    "Recorded reward {} for pupil {}: {}",
                    reward.id,
                    reward.upn,
                    reward.reward.replace('_', " ")
                )?;
            }
        }
        CaseCommand::KeepOpen(args) => {
            let case = change_case!(cases, args, KeepCaseOpenRequest, keep_case_open);
            writeln!(out, "Kept open. {}", describe(&case))?;
        }
        CaseCommand::Close(args) => {
            let case = change_case!(cases, args, CloseCaseRequest, close_case);
            writeln!(out, "Closed case {} for pupil {}", case.id, case.upn)?;
        }
        CaseCommand::Action {
            case,
            kind,
            on,
            outcome,
            notes,
            with_aio,
            not_reached,
            next_review,
            by,
            role,
        } => {
            let taken_on = checked("--on", Some(&on))?;
            // The same command run twice records once; any difference makes a new action.
            let request_id =
                format!("cli:{case}:{kind}:{taken_on}:{by}:{outcome}:{notes}:{not_reached}");
            let recorded = cases
                .record_action(RecordActionRequest {
                    request_id,
                    case_id: case.clone(),
                    kind,
                    taken_on,
                    outcome,
                    notes,
                    with_aio,
                    next_review: checked("--next-review", next_review.as_ref())?,
                    recorded_by: by,
                    role,
                    parents_not_reached: not_reached,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let action = recorded.action.unwrap_or_default();
            if recorded.already_recorded {
                writeln!(
                    out,
                    "This {} on {} is already recorded on case {case} ({}); nothing changed",
                    action.kind.replace('_', " "),
                    action.taken_on,
                    action.id
                )?;
            } else {
                writeln!(
                    out,
                    "Recorded {} {} on case {case}; next review {}",
                    action.kind.replace('_', " "),
                    action.id,
                    action.next_review
                )?;
            }
        }
        CaseCommand::Timeline { case, json } => {
            let entries = cases
                .get_case_timeline(GetCaseTimelineRequest { case_id: case })
                .await
                .map_err(status_error)?
                .into_inner()
                .entries;
            let at = |entry: &rollcall_api::cases::v1::TimelineEntry| {
                entry
                    .at
                    .as_ref()
                    .and_then(from_timestamp)
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            };
            if json {
                let rows: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|entry| {
                        json!({
                            "on": entry.on_date,
                            "recorded_at": at(entry),
                            "kind": entry.kind,
                            "stage": entry.stage,
                            "detail": entry.detail,
                            "reason": entry.reason,
                            "by": entry.by,
                            "communicated_to_parents": entry.communicated_to_parents,
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
                return Ok(());
            }
            let mut rows = Table::new();
            rows.load_preset(presets::NOTHING);
            rows.set_header([
                "on",
                "what",
                "stage",
                "detail",
                "reason or outcome",
                "by",
                "to parents",
            ]);
            for entry in &entries {
                rows.add_row([
                    entry.on_date.clone(),
                    entry.kind.clone(),
                    entry.stage.clone(),
                    entry.detail.clone(),
                    entry.reason.clone(),
                    entry.by.clone(),
                    if entry.communicated_to_parents {
                        "yes".to_owned()
                    } else {
                        String::new()
                    },
                ]);
            }
            writeln!(out, "{}", table(&rows))?;
        }
        CaseCommand::Overdue {
            school,
            as_of,
            json,
        } => {
            let owners = cases
                .list_overdue_reviews(ListOverdueReviewsRequest {
                    laestab: school.unwrap_or_default(),
                    as_of: checked("--as-of", as_of.as_ref())?,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .owners;
            if json {
                let rows: Vec<serde_json::Value> = owners
                    .iter()
                    .flat_map(|owner| {
                        owner.cases.iter().map(|case| {
                            json!({
                                "owner_role": owner.owner_role,
                                "case": case.id,
                                "upn": case.upn,
                                "laestab": case.laestab,
                                "concern": case.concern,
                                "stage": case.stage,
                                "review_due": case.next_review,
                            })
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
                return Ok(());
            }
            if owners.is_empty() {
                writeln!(out, "No review is overdue.")?;
            }
            for owner in owners {
                writeln!(out, "{}:", owner.owner_role.replace('_', " "))?;
                for case in owner.cases {
                    writeln!(
                        out,
                        "  {} pupil {} at school {}, {}, stage {}, review due {}",
                        case.id,
                        case.upn,
                        case.laestab,
                        case.concern.replace('_', " "),
                        case.stage,
                        case.next_review
                    )?;
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn run_ladder(
    clients: &Clients,
    command: LadderCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut cases = clients.cases.clone();
    match command {
        LadderCommand::List { json } => {
            let ladders = cases
                .list_ladders(ListLaddersRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .ladders;
            let loaded_at = |ladder: &rollcall_api::cases::v1::Ladder| {
                ladder
                    .loaded_at
                    .as_ref()
                    .and_then(from_timestamp)
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            };
            if json {
                let rows: Vec<serde_json::Value> = ladders
                    .iter()
                    .map(|ladder| {
                        json!({
                            "id": ladder.id,
                            "title": ladder.title,
                            "phases": ladder.phases,
                            "shipped": ladder.shipped,
                            "version": ladder.version,
                            "loaded_by": ladder.loaded_by,
                            "loaded_at": loaded_at(ladder),
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
                return Ok(());
            }
            for ladder in &ladders {
                let origin = if ladder.shipped {
                    "shipped default".to_owned()
                } else {
                    format!(
                        "version {}, loaded by {} at {}",
                        ladder.version,
                        ladder.loaded_by,
                        loaded_at(ladder)
                    )
                };
                writeln!(
                    out,
                    "{}: {} (phases {}; {origin})",
                    ladder.id,
                    ladder.title,
                    ladder.phases.join(", ")
                )?;
            }
        }
        LadderCommand::Load { file, by } => {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read ladder file {}", file.display()))?;
            let ladder = cases
                .load_ladder(LoadLadderRequest {
                    source,
                    loaded_by: by,
                })
                .await
                .map_err(|status| anyhow::anyhow!("{}: {}", file.display(), status.message()))?
                .into_inner()
                .ladder
                .unwrap_or_default();
            writeln!(
                out,
                "Loaded ladder {} version {} for phases {}; cases opened from now on follow it, \
                 and open cases keep the version they opened under",
                ladder.id,
                ladder.version,
                ladder.phases.join(", ")
            )?;
        }
    }
    Ok(())
}
