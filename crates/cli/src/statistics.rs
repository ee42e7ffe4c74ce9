//! `rollcall report statistics`: attendance statistics over a range, by pupil group.

use std::io::Write;

use anyhow::bail;
use clap::Args;
use comfy_table::{CellAlignment, Table, presets};
use rollcall_api::policy::v1::{
    GetAttendanceStatisticsRequest, GetSchoolAttendanceRequest, ListRewardsRequest,
    StatisticsGroup, StatisticsGroupBy, StatisticsRange,
};
use rollcall_domain::session::parse_date;
use serde_json::{Value, json};

use crate::client::Clients;
use crate::text::{figures_json, table};

/// Options of `rollcall report statistics`.
#[derive(Debug, Args)]
pub(crate) struct StatisticsArgs {
    /// The school (seven-digit LAESTAB); the default is every school of the trust.
    #[arg(long)]
    school: Option<String>,
    /// Only this year group.
    #[arg(long)]
    year_group: Option<String>,
    /// Only this class or registration group.
    #[arg(long)]
    class: Option<String>,
    /// Only this pupil.
    #[arg(long)]
    upn: Option<String>,
    /// The last date counted (YYYY-MM-DD); the default is the last date with marks.
    #[arg(long)]
    as_of: Option<String>,
    /// The range ending on the as-of date.
    #[arg(long, default_value = "year-to-date", value_parser = ["year-to-date", "term", "weeks", "dates"])]
    range: String,
    /// Calendar weeks, with --range weeks (4 by default).
    #[arg(long)]
    weeks: Option<i32>,
    /// The first date (YYYY-MM-DD), with --range dates.
    #[arg(long)]
    from: Option<String>,
    /// How to group pupils.
    #[arg(long, default_value = "none", value_parser = ["none", "school", "year-group", "phase", "class", "sen", "fsm", "pupil"])]
    by: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn group_json(group: &StatisticsGroup) -> Value {
    let mut row = figures_json(&group.figures.unwrap_or_default());
    row.remove("persistent_absence");
    row.remove("severe_absence");
    row.insert("key".into(), json!(group.key));
    row.insert("pupils".into(), json!(group.pupils));
    row.insert(
        "persistent_absentees".into(),
        json!(group.persistent_absentees),
    );
    row.insert("severe_absentees".into(), json!(group.severe_absentees));
    row.insert(
        "persistent_absence_rate".into(),
        json!(group.persistent_absence_rate),
    );
    row.insert(
        "severe_absence_rate".into(),
        json!(group.severe_absence_rate),
    );
    Value::Object(row)
}

pub(crate) async fn run(
    clients: &Clients,
    args: StatisticsArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let range = range_of(&args.range);
    let weeks = range_options(range, args.weeks, args.from.as_ref())?;
    for (flag, value) in [("--as-of", &args.as_of), ("--from", &args.from)] {
        if let Some(value) = value
            && let Err(error) = parse_date(value)
        {
            bail!("invalid {flag}: {error}");
        }
    }
    let filters: Vec<String> = [
        ("year group", &args.year_group),
        ("class", &args.class),
        ("pupil", &args.upn),
    ]
    .iter()
    .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name} {value}")))
    .collect();
    let group_by = match args.by.as_str() {
        "school" => StatisticsGroupBy::School,
        "year-group" => StatisticsGroupBy::YearGroup,
        "phase" => StatisticsGroupBy::Phase,
        "class" => StatisticsGroupBy::Class,
        "sen" => StatisticsGroupBy::SenProvision,
        "fsm" => StatisticsGroupBy::FreeSchoolMeals,
        "pupil" => StatisticsGroupBy::Pupil,
        _ => StatisticsGroupBy::Unspecified,
    };
    let response = clients
        .policy
        .clone()
        .get_attendance_statistics(GetAttendanceStatisticsRequest {
            laestab: args.school.unwrap_or_default(),
            year_group: args.year_group.unwrap_or_default(),
            class_name: args.class.unwrap_or_default(),
            upn: args.upn.unwrap_or_default(),
            as_of: args.as_of.unwrap_or_default(),
            range: range as i32,
            weeks,
            from_date: args.from.unwrap_or_default(),
            group_by: group_by as i32,
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    let period = response.period.unwrap_or_default();
    let total = response.total.unwrap_or_default();

    if args.json {
        let document = json!({
            "period": {"from": period.from_date, "to": period.to_date},
            "groups": response.groups.iter().map(group_json).collect::<Vec<_>>(),
            "total": group_json(&total),
        });
        serde_json::to_writer_pretty(&mut *out, &document)?;
        writeln!(out)?;
        return Ok(());
    }
    if total.pupils == 0 {
        if filters.is_empty() {
            writeln!(out, "No pupil has a possible session in the range.")?;
        } else {
            writeln!(
                out,
                "No pupil matching {} has a possible session in the range; check the filter.",
                filters.join(" and ")
            )?;
        }
        return Ok(());
    }

    writeln!(
        out,
        "Attendance from {} to {}",
        period.from_date, period.to_date
    )?;
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "group",
        "pupils",
        "possible",
        "attendance %",
        "authorised",
        "unauthorised",
        "persistent",
        "PA rate %",
        "severe",
    ]);
    // With no grouping the one group is the total, so it is printed once.
    let single = response.groups.len() == 1 && response.groups[0].key == "all";
    let total_row = (!single).then_some(&total);
    for group in response.groups.iter().chain(total_row) {
        let figures = group.figures.unwrap_or_default();
        rows.add_row([
            group.key.clone(),
            group.pupils.to_string(),
            figures.possible_sessions.to_string(),
            figures
                .attendance_percent
                .map_or_else(String::new, |p| format!("{p:.1}")),
            figures.authorised_absence_sessions.to_string(),
            figures.unauthorised_absence_sessions.to_string(),
            group.persistent_absentees.to_string(),
            format!("{:.1}", group.persistent_absence_rate),
            group.severe_absentees.to_string(),
        ]);
    }
    for index in 1..9 {
        if let Some(column) = rows.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    writeln!(out, "{}", table(&rows))?;
    Ok(())
}

/// Options of `rollcall report rewards`.
#[derive(Debug, Args)]
pub(crate) struct RewardsArgs {
    /// The school (seven-digit LAESTAB).
    #[arg(long)]
    school: String,
    /// Only this year group.
    #[arg(long)]
    year_group: Option<String>,
    /// Only this class or registration group.
    #[arg(long)]
    class: Option<String>,
    /// The last date counted (YYYY-MM-DD); the default is the last date with marks.
    #[arg(long)]
    as_of: Option<String>,
    /// The range ending on the as-of date, compared with the range of the same length before.
    #[arg(long, default_value = "term", value_parser = ["year-to-date", "term", "weeks", "dates"])]
    range: String,
    /// Calendar weeks, with --range weeks (4 by default).
    #[arg(long)]
    weeks: Option<i32>,
    /// The first date (YYYY-MM-DD), with --range dates.
    #[arg(long)]
    from: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Checks that --weeks and --from go with the range they belong to, and returns the weeks.
fn range_options(
    range: StatisticsRange,
    weeks: Option<i32>,
    from: Option<&String>,
) -> anyhow::Result<i32> {
    if weeks.is_some() && range != StatisticsRange::RollingWeeks {
        bail!("--weeks applies only with --range weeks");
    }
    if from.is_some() && range != StatisticsRange::Dates {
        bail!("--from applies only with --range dates");
    }
    if range == StatisticsRange::Dates && from.is_none() {
        bail!("--range dates needs --from, the first date (YYYY-MM-DD)");
    }
    Ok(weeks.unwrap_or(4))
}

fn range_of(name: &str) -> StatisticsRange {
    match name {
        "term" => StatisticsRange::Term,
        "weeks" => StatisticsRange::RollingWeeks,
        "dates" => StatisticsRange::Dates,
        _ => StatisticsRange::YearToDate,
    }
}

pub(crate) async fn run_rewards(
    clients: &Clients,
    args: RewardsArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let range = range_of(&args.range);
    let weeks = range_options(range, args.weeks, args.from.as_ref())?;
    for (flag, value) in [("--as-of", &args.as_of), ("--from", &args.from)] {
        if let Some(value) = value
            && let Err(error) = parse_date(value)
        {
            bail!("invalid {flag}: {error}");
        }
    }
    let response = clients
        .policy
        .clone()
        .list_rewards(ListRewardsRequest {
            laestab: args.school,
            as_of: args.as_of.unwrap_or_default(),
            range: range as i32,
            weeks,
            from_date: args.from.unwrap_or_default(),
            year_group: args.year_group.unwrap_or_default(),
            class_name: args.class.unwrap_or_default(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    let period = response.period.unwrap_or_default();
    let previous = response.previous_period.unwrap_or_default();

    if args.json {
        let pupils: Vec<Value> = response
            .pupils
            .iter()
            .map(|pupil| {
                json!({
                    "upn": pupil.upn,
                    "year_group": pupil.year_group,
                    "class": pupil.class_name,
                    "rewards": pupil.rewards,
                    "attendance_percent": pupil.attendance_percent,
                    "previous_attendance_percent": pupil.previous_attendance_percent,
                    "lates": pupil.lates,
                    "previous_lates": pupil.previous_lates,
                })
            })
            .collect();
        let document = json!({
            "period": {"from": period.from_date, "to": period.to_date},
            "previous_period": {"from": previous.from_date, "to": previous.to_date},
            "policy_id": response.policy_id,
            "clause": response.clause,
            "pupils": pupils,
        });
        serde_json::to_writer_pretty(&mut *out, &document)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "Rewards from {} to {}, compared with {} to {} (policy {}, clause {})",
        period.from_date,
        period.to_date,
        previous.from_date,
        previous.to_date,
        response.policy_id,
        response.clause
    )?;
    if response.pupils.is_empty() {
        writeln!(out, "No pupil earned a reward.")?;
        return Ok(());
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "upn",
        "year",
        "class",
        "attendance %",
        "before %",
        "lates",
        "rewards",
    ]);
    for pupil in &response.pupils {
        let percent = |value: Option<f64>| value.map_or_else(String::new, |p| format!("{p:.1}"));
        rows.add_row([
            pupil.upn.clone(),
            pupil.year_group.clone(),
            pupil.class_name.clone(),
            percent(pupil.attendance_percent),
            percent(pupil.previous_attendance_percent),
            pupil.lates.to_string(),
            pupil.rewards.join(", "),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    Ok(())
}

/// Options of `rollcall report early-warning`.
#[derive(Debug, Args)]
pub(crate) struct EarlyWarningArgs {
    /// The school (seven-digit LAESTAB).
    #[arg(long)]
    school: String,
    /// Figures as of this date (YYYY-MM-DD); the default is the last date with marks.
    #[arg(long)]
    as_of: Option<String>,
    /// List every pupil with the sessions still to go, not only those near a threshold.
    #[arg(long)]
    all: bool,
    /// Print a JSON array, one object per pupil.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run_early_warning(
    clients: &Clients,
    args: EarlyWarningArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if let Some(value) = &args.as_of
        && let Err(error) = parse_date(value)
    {
        bail!("invalid --as-of: {error}");
    }
    let response = clients
        .policy
        .clone()
        .get_school_attendance(GetSchoolAttendanceRequest {
            laestab: args.school.clone(),
            as_of: args.as_of.unwrap_or_default(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    let pupils: Vec<_> = response
        .pupils
        .iter()
        .filter(|pupil| args.all || pupil.thresholds.iter().any(|t| t.near))
        .collect();

    if args.json {
        let rows: Vec<Value> = pupils
            .iter()
            .map(|pupil| {
                let thresholds: Vec<Value> = pupil
                    .thresholds
                    .iter()
                    .map(|t| {
                        json!({
                            "rule": t.rule_id,
                            "clause": t.clause,
                            "met": t.met,
                            "near": t.near,
                            "sessions_to_go": t.sessions_to_go,
                            "counted_sessions": t.counted_sessions,
                            "threshold_sessions": t.threshold_sessions,
                        })
                    })
                    .collect();
                json!({
                    "upn": pupil.upn,
                    "year_group": pupil.year_group,
                    "thresholds": thresholds,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    if pupils.is_empty() {
        writeln!(
            out,
            "No pupil at school {} is near a threshold.",
            args.school
        )?;
        return Ok(());
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "upn",
        "year",
        "rule",
        "clause",
        "counted",
        "threshold",
        "to go",
        "state",
    ]);
    for pupil in &pupils {
        for status in &pupil.thresholds {
            if !args.all && !status.near {
                continue;
            }
            let state = match (status.met, status.near) {
                (true, _) => "met",
                (false, true) => "near",
                (false, false) => "not met",
            };
            rows.add_row([
                pupil.upn.clone(),
                pupil.year_group.clone(),
                status.rule_id.clone(),
                status.clause.clone(),
                status.counted_sessions.to_string(),
                status.threshold_sessions.to_string(),
                status.sessions_to_go.to_string(),
                state.to_owned(),
            ]);
        }
    }
    writeln!(out, "{}", table(&rows))?;
    Ok(())
}
