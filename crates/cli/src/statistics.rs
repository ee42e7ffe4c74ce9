//! `rollcall report statistics`: attendance statistics over a range, by pupil group.

use std::io::Write;

use anyhow::bail;
use clap::Args;
use comfy_table::{CellAlignment, Table, presets};
use rollcall_api::policy::v1::{
    GetAttendanceStatisticsRequest, StatisticsGroup, StatisticsGroupBy, StatisticsRange,
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
    /// Calendar weeks, with --range weeks.
    #[arg(long, default_value_t = 4)]
    weeks: i32,
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
    let range = match args.range.as_str() {
        "term" => StatisticsRange::Term,
        "weeks" => StatisticsRange::RollingWeeks,
        "dates" => StatisticsRange::Dates,
        _ => StatisticsRange::YearToDate,
    };
    if range == StatisticsRange::Dates && args.from.is_none() {
        bail!("--range dates needs --from, the first date (YYYY-MM-DD)");
    }
    for (flag, value) in [("--as-of", &args.as_of), ("--from", &args.from)] {
        if let Some(value) = value
            && let Err(error) = parse_date(value)
        {
            bail!("invalid {flag}: {error}");
        }
    }
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
            weeks: args.weeks,
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
        writeln!(out, "No pupil has a possible session in the range.")?;
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
    for group in response.groups.iter().chain(std::iter::once(&total)) {
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
