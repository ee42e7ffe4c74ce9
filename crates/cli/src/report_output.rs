//! The governors' and trust reports as a PDF and a CSV of the same figures, and writing both
//! files so that a failure leaves neither half-written.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{Datelike, NaiveDate, Utc};
use rollcall_api::policy::v1::StatisticsGroup;
use rollcall_documents::{Document, Series};

use crate::reports::{Breakdown, Headline, Report, ReportKind};

/// The two files a report writes.
#[derive(Debug)]
pub(crate) struct OutputPaths {
    pub(crate) pdf: PathBuf,
    pub(crate) csv: PathBuf,
}

impl OutputPaths {
    /// Checks `--out` and `--csv` before any figures are gathered: the PDF's name must end in
    /// `.pdf`, both folders must exist, and the two paths must differ.
    pub(crate) fn check(out: &Path, csv: Option<&Path>) -> anyhow::Result<Self> {
        let is_pdf = out
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("pdf"));
        if !is_pdf {
            bail!(
                "invalid --out {}: the report is a PDF, so the file name must end in .pdf, for \
                 example governors-2025.pdf",
                out.display()
            );
        }
        check_folder("--out", out)?;
        let csv = match csv {
            Some(csv) => {
                check_folder("--csv", csv)?;
                csv.to_path_buf()
            }
            None => out.with_extension("csv"),
        };
        if csv == out {
            bail!(
                "invalid --csv {}: it is the same file as --out; choose another path",
                csv.display()
            );
        }
        Ok(Self {
            pdf: out.to_path_buf(),
            csv,
        })
    }
}

fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_folder(flag: &str, path: &Path) -> anyhow::Result<()> {
    if path.file_name().is_none() {
        bail!("invalid {flag} {}: it does not name a file", path.display());
    }
    let folder = folder_of(path);
    if !folder.is_dir() {
        bail!(
            "invalid {flag} {}: folder {} does not exist; create it or choose another path",
            path.display(),
            folder.display()
        );
    }
    Ok(())
}

/// Renders the report, writes the PDF and the CSV, and prints their paths.
pub(crate) fn write_report(
    report: &Report,
    paths: &OutputPaths,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let pdf = document(report).to_pdf();
    let csv = csv_bytes(report)?;
    write_both(&[(&paths.pdf, &pdf), (&paths.csv, &csv)])?;
    writeln!(out, "Wrote {}", paths.pdf.display())?;
    writeln!(out, "Wrote {}", paths.csv.display())?;
    Ok(())
}

/// Writes every file to a temporary file in its folder, then renames them all into place, so
/// that a failure while writing leaves none of them. Only a failure between two renames can
/// leave the first file written without the second.
fn write_both(files: &[(&PathBuf, &Vec<u8>)]) -> anyhow::Result<()> {
    let temporaries: Vec<PathBuf> = files
        .iter()
        .map(|(path, _)| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            folder_of(path).join(format!(".{name}.partial"))
        })
        .collect();
    let remove_all = || {
        for temporary in &temporaries {
            let _ = std::fs::remove_file(temporary);
        }
    };
    for ((_, bytes), temporary) in files.iter().zip(&temporaries) {
        if let Err(error) = std::fs::write(temporary, bytes) {
            remove_all();
            return Err(error).with_context(|| format!("cannot write {}", temporary.display()));
        }
    }
    for ((path, _), temporary) in files.iter().zip(&temporaries) {
        if let Err(error) = std::fs::rename(temporary, path) {
            remove_all();
            return Err(error).with_context(|| format!("cannot write {}", path.display()));
        }
    }
    Ok(())
}

/// Returns `part` as a percentage of `whole`, rounded half up to one decimal place, as the
/// statistics are; `None` when `whole` is 0.
fn percent(part: i32, whole: i32) -> Option<f64> {
    let (part, whole) = (i64::from(part), i64::from(whole));
    if whole <= 0 {
        return None;
    }
    let tenths = (part * 2000 + whole) / (2 * whole);
    Some(tenths as f64 / 10.0)
}

/// Formats a date as people in England write it, for example "1 August 2025".
fn long_date(date: NaiveDate) -> String {
    date.format("%-d %B %Y").to_string()
}

fn one_decimal(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |value| format!("{value:.1}"))
}

/// Returns the headline measures in the order the report and the CSV list them, each as its
/// CSV name, its label in the PDF and its value.
fn headline_measures(total: &StatisticsGroup) -> Vec<(&'static str, &'static str, Option<String>)> {
    let figures = total.figures.unwrap_or_default();
    let possible = figures.possible_sessions;
    let count = |value: i32| Some(value.to_string());
    let rate = |value: Option<f64>| value.map(|value| format!("{value:.1}"));
    vec![
        (
            "pupils",
            "Pupils with possible sessions",
            count(total.pupils),
        ),
        (
            "possible_sessions",
            "Sessions counted (possible sessions)",
            count(possible),
        ),
        (
            "attended_sessions",
            "Sessions attended",
            count(figures.attended_sessions),
        ),
        (
            "attendance_percent",
            "Attendance %",
            rate(figures.attendance_percent),
        ),
        (
            "authorised_absence_percent",
            "Authorised absence %",
            rate(percent(figures.authorised_absence_sessions, possible)),
        ),
        (
            "unauthorised_absence_percent",
            "Unauthorised absence %",
            rate(percent(figures.unauthorised_absence_sessions, possible)),
        ),
        (
            "persistent_absentees",
            "Persistent absentees (absence of 10% or more)",
            count(total.persistent_absentees),
        ),
        (
            "persistent_absence_rate",
            "Persistent absence rate % (of pupils)",
            rate(Some(total.persistent_absence_rate)),
        ),
        (
            "severe_absentees",
            "Severe absentees (absence of 50% or more)",
            count(total.severe_absentees),
        ),
        (
            "severe_absence_rate",
            "Severe absence rate % (of pupils)",
            rate(Some(total.severe_absence_rate)),
        ),
    ]
}

/// Returns the measures of one pupil group in a breakdown, by their CSV names.
fn group_measures(group: &StatisticsGroup) -> Vec<(&'static str, Option<String>)> {
    let figures = group.figures.unwrap_or_default();
    vec![
        ("pupils", Some(group.pupils.to_string())),
        (
            "possible_sessions",
            Some(figures.possible_sessions.to_string()),
        ),
        (
            "attendance_percent",
            figures
                .attendance_percent
                .map(|value| format!("{value:.1}")),
        ),
        (
            "persistent_absentees",
            Some(group.persistent_absentees.to_string()),
        ),
        (
            "persistent_absence_rate",
            Some(format!("{:.1}", group.persistent_absence_rate)),
        ),
        ("severe_absentees", Some(group.severe_absentees.to_string())),
        (
            "severe_absence_rate",
            Some(format!("{:.1}", group.severe_absence_rate)),
        ),
    ]
}

/// Returns the CSV: a header, then one row per figure with the columns section, group, key,
/// measure and value. Figures with no value (attendance without possible sessions) have no
/// row.
fn csv_bytes(report: &Report) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(["section", "group", "key", "measure", "value"])?;
    let group = report.group.as_str();

    let mut headlines = vec![("headline", &report.headline)];
    if let Some(previous) = &report.previous {
        headlines.push(("previous_year", previous));
    }
    for (section, headline) in headlines {
        for (measure, _, value) in headline_measures(&headline.total) {
            if let Some(value) = value {
                writer.write_record([section, group, &headline.year, measure, &value])?;
            }
        }
    }
    for series in &report.months {
        for (month, figures) in &series.months {
            let key = month.format("%Y-%m").to_string();
            let attendance = figures.figures.unwrap_or_default();
            if let Some(value) = attendance.attendance_percent {
                let value = format!("{value:.1}");
                writer.write_record(["month", group, &key, "attendance_percent", &value])?;
            }
            let possible = attendance.possible_sessions.to_string();
            writer.write_record(["month", group, &key, "possible_sessions", &possible])?;
        }
    }
    for breakdown in &report.breakdowns {
        for row in &breakdown.groups {
            for (measure, value) in group_measures(row) {
                if let Some(value) = value {
                    writer.write_record([breakdown.section, group, &row.key, measure, &value])?;
                }
            }
        }
    }
    for stage in &report.stages {
        let key = format!("{}/{}", stage.ladder, stage.stage);
        let count = stage.open_cases.to_string();
        writer.write_record(["cases_by_stage", &stage.laestab, &key, "open_cases", &count])?;
    }
    for (laestab, count) in &report.local_authority {
        let count = count.to_string();
        writer.write_record(["local_authority_stage", laestab, "all", "cases", &count])?;
    }
    for count in &report.referrals {
        for (measure, value) in count.measures() {
            let value = value.to_string();
            writer.write_record(["referrals", &count.laestab, &count.kind, measure, &value])?;
        }
    }
    writer.flush()?;
    writer
        .into_inner()
        .map_err(|error| anyhow::anyhow!("cannot build the CSV: {}", error.error()))
}

/// Lays the report out as a PDF document.
fn document(report: &Report) -> Document {
    let title = match report.kind {
        ReportKind::Governors => format!(
            "Attendance report to governors: {} {}",
            report.subject, report.headline.year
        ),
        ReportKind::Trust => format!(
            "Trust attendance report {} to {}",
            report.headline.year, report.headline.to
        ),
    };
    let mut document = Document::new(title);
    document.created_at(Utc::now());
    introduction(&mut document, report);
    headline_table(&mut document, report);
    month_chart(&mut document, report);
    breakdowns(&mut document, report);
    cases(&mut document, report);
    referrals(&mut document, report);
    about(&mut document, report);
    document
}

fn introduction(document: &mut Document, report: &Report) {
    let headline = &report.headline;
    let range = format!(
        "Figures count from {} to {}",
        long_date(headline.from),
        long_date(headline.to)
    );
    match report.kind {
        ReportKind::Governors => {
            let year_start = headline.from.year();
            document
                .heading(format!("Attendance report to governors {}", headline.year))
                .paragraph(format!(
                    "{} (LAESTAB {}). Academic year {}, which starts in September {year_start}. \
                     {range}.",
                    report.subject, report.group, headline.year
                ));
        }
        ReportKind::Trust => {
            document
                .heading(format!("Trust attendance report {}", headline.year))
                .paragraph(format!(
                    "Every school of the trust, academic year {} to date as of {}. {range}.",
                    headline.year,
                    long_date(headline.to)
                ));
        }
    }
}

fn headline_table(document: &mut Document, report: &Report) {
    document.subheading("Headline figures");
    let mut columns: Vec<&Headline> = vec![&report.headline];
    columns.extend(report.previous.as_ref());
    let measures: Vec<_> = columns
        .iter()
        .map(|headline| headline_measures(&headline.total))
        .collect();
    let mut headers = vec!["Measure".to_owned()];
    headers.extend(columns.iter().map(|headline| headline.year.clone()));
    let rows: Vec<Vec<String>> = (0..measures[0].len())
        .map(|index| {
            let mut row = vec![measures[0][index].1.to_owned()];
            row.extend(
                measures
                    .iter()
                    .map(|column| column[index].2.clone().unwrap_or_else(|| "n/a".into())),
            );
            row
        })
        .collect();
    document.table(headers, rows);
    if let Some(previous) = &report.previous {
        document.paragraph(format!(
            "The {} column covers {} to {}.",
            previous.year,
            long_date(previous.from),
            long_date(previous.to)
        ));
    }
}

/// Draws attendance by month over an academic year, September first. August comes first only
/// when a series has marks in it.
fn month_chart(document: &mut Document, report: &Report) {
    let has_august = report
        .months
        .iter()
        .any(|series| series.months.iter().any(|(month, _)| month.month() == 8));
    let month_numbers: Vec<u32> = if has_august { vec![8] } else { Vec::new() }
        .into_iter()
        .chain((9..=12).chain(1..=7))
        .collect();
    let labels: Vec<String> = month_numbers
        .iter()
        .map(|month| {
            NaiveDate::from_ymd_opt(2000, *month, 1)
                .map(|date| date.format("%b").to_string())
                .unwrap_or_default()
        })
        .collect();
    let series: Vec<Series> = report
        .months
        .iter()
        .map(|series| Series {
            name: series.year.clone(),
            values: month_numbers
                .iter()
                .map(|number| {
                    series
                        .months
                        .iter()
                        .find(|(month, _)| month.month() == *number)
                        .and_then(|(_, figures)| {
                            figures.figures.unwrap_or_default().attendance_percent
                        })
                })
                .collect(),
        })
        .collect();
    let title = if series.len() > 1 {
        "Attendance by month, compared with the previous academic year"
    } else {
        "Attendance by month"
    };
    document.line_chart_series(title, labels, series, "%");
}

fn breakdowns(document: &mut Document, report: &Report) {
    document.subheading("Persistent and severe absence by group");
    document.paragraph(
        "A pupil is persistently absent with absence of 10% or more of their possible \
         sessions, and severely absent with 50% or more. Rates are percentages of the pupils in \
         the group.",
    );
    for breakdown in &report.breakdowns {
        breakdown_table(document, report, breakdown);
    }
    let charted = match report.kind {
        ReportKind::Governors => "year_group",
        ReportKind::Trust => "school",
    };
    if let Some(breakdown) = report
        .breakdowns
        .iter()
        .find(|breakdown| breakdown.section == charted)
    {
        let bars: Vec<(String, f64)> = breakdown
            .groups
            .iter()
            .map(|group| {
                (
                    group_name(report, breakdown, &group.key),
                    group.persistent_absence_rate,
                )
            })
            .collect();
        document.bar_chart(
            format!(
                "Persistent absence rate by {}",
                breakdown.label.to_lowercase()
            ),
            bars,
            "%",
        );
    }
}

/// Returns the name shown for a group: a school's name with its LAESTAB, or the key itself.
fn group_name(report: &Report, breakdown: &Breakdown, key: &str) -> String {
    match (breakdown.section, report.school_names.get(key)) {
        ("school", Some(name)) => format!("{name} ({key})"),
        ("year_group", _) if key.parse::<u32>().is_ok() => format!("Year {key}"),
        ("free_school_meals", _) => key.replace('_', " "),
        ("sen_provision", _) => match key {
            "sen_support" => "SEN support".to_owned(),
            "ehc_plan" => "EHC plan".to_owned(),
            other => other.to_owned(),
        },
        _ => key.to_owned(),
    }
}

fn breakdown_table(document: &mut Document, report: &Report, breakdown: &Breakdown) {
    let headers = [
        breakdown.label,
        "Pupils",
        "Sessions",
        "Attendance %",
        "Persistent",
        "PA rate %",
        "Severe",
        "SA rate %",
    ];
    let rows: Vec<Vec<String>> = breakdown
        .groups
        .iter()
        .map(|group| {
            let figures = group.figures.unwrap_or_default();
            vec![
                group_name(report, breakdown, &group.key),
                group.pupils.to_string(),
                figures.possible_sessions.to_string(),
                one_decimal(figures.attendance_percent),
                group.persistent_absentees.to_string(),
                format!("{:.1}", group.persistent_absence_rate),
                group.severe_absentees.to_string(),
                format!("{:.1}", group.severe_absence_rate),
            ]
        })
        .collect();
    document.table(headers, rows);
}

fn cases(document: &mut Document, report: &Report) {
    let per_school = report.kind == ReportKind::Trust;
    document.subheading("Open cases by ladder stage");
    document.paragraph(format!(
        "Cases open or up for review when this report was made, among those opened on or \
         before {}, counted at the stage of the escalation ladder they have reached.",
        long_date(report.cases_to)
    ));
    let mut headers = Vec::new();
    if per_school {
        headers.push("School");
    }
    headers.extend(["Ladder", "Stage", "Stage title", "Open cases"]);
    let rows: Vec<Vec<String>> = report
        .stages
        .iter()
        .map(|stage| {
            let mut row = Vec::new();
            if per_school {
                row.push(stage.laestab.clone());
            }
            row.extend([
                stage.ladder.clone(),
                stage.stage.clone(),
                stage.stage_title.clone(),
                stage.open_cases.to_string(),
            ]);
            row
        })
        .collect();
    document.table(headers, rows);

    document.subheading("Cases at the local authority stage");
    let total: usize = report.local_authority.values().sum();
    document.paragraph(format!(
        "{total} {} at a ladder stage owned by the local authority attendance officer.",
        if total == 1 { "case is" } else { "cases are" }
    ));
    if per_school {
        let rows: Vec<Vec<String>> = report
            .local_authority
            .iter()
            .map(|(laestab, count)| {
                let name = report
                    .school_names
                    .get(laestab)
                    .cloned()
                    .unwrap_or_default();
                vec![format!("{name} ({laestab})"), count.to_string()]
            })
            .collect();
        document.table(["School", "Cases at the local authority stage"], rows);
    }
}

fn referrals(document: &mut Document, report: &Report) {
    document.subheading("Referrals to the local authority");
    let submitted: usize = report.referrals.iter().map(|count| count.submitted).sum();
    document.paragraph(format!(
        "{submitted} {} submitted in the academic year from {} up to {}. Outcomes are counted \
         by the date the local authority gave them; overdue notices are those unpaid past their \
         last day when this report was made.",
        if submitted == 1 {
            "referral or return was"
        } else {
            "referrals and returns were"
        },
        long_date(report.headline.from),
        long_date(report.referrals_to)
    ));
    if report.referrals.is_empty() {
        return;
    }
    let per_school = report.kind == ReportKind::Trust;
    let mut headers = Vec::new();
    if per_school {
        headers.push("School");
    }
    headers.extend([
        "Kind",
        "Submitted",
        "Notices issued",
        "Paid",
        "Unpaid",
        "Prosecutions",
        "Withdrawn",
        "Overdue now",
    ]);
    let rows: Vec<Vec<String>> = report
        .referrals
        .iter()
        .map(|count| {
            let mut row = Vec::new();
            if per_school {
                row.push(count.laestab.clone());
            }
            row.push(count.kind.replace('_', " "));
            row.extend(count.measures().iter().map(|(_, value)| value.to_string()));
            row
        })
        .collect();
    document.table(headers, rows);
}

fn about(document: &mut Document, report: &Report) {
    document.subheading("About these figures");
    document.paragraph(
        "The figures follow the DfE rules. Possible sessions are those marked present (/, \\ \
         and L, late before the register closed), at an approved educational activity, or \
         absent with an authorised or unauthorised code. Codes that are not possible sessions \
         (D, Q, X, Y1 to Y7, Z and #) are not counted. Attendance is present and approved \
         educational activity sessions as a share of possible sessions; authorised and \
         unauthorised absence are those sessions as shares of possible sessions. Each pupil \
         counts over their own possible sessions in the range, and pupils with none are left \
         out. Percentages are rounded half up to one decimal place.",
    );
    let policies: Vec<String> = report
        .policies
        .iter()
        .map(|(laestab, policy)| match report.kind {
            ReportKind::Governors => policy.clone(),
            ReportKind::Trust => format!("{laestab}: {policy}"),
        })
        .collect();
    document.paragraph(format!(
        "Persistent and severe absence are judged under the policy each school followed on {}: \
         {}.",
        long_date(report.headline.to),
        policies.join("; ")
    ));
    let without_calendar: Vec<&String> = report
        .calendars
        .iter()
        .filter(|(_, has_term)| !**has_term)
        .map(|(laestab, _)| laestab)
        .collect();
    if !without_calendar.is_empty() {
        let schools: Vec<&str> = without_calendar.iter().map(|s| s.as_str()).collect();
        document.paragraph(format!(
            "No calendar terms are held for this academic year for {}, so months are calendar \
             months with marks rather than term months.",
            schools.join(", ")
        ));
    }
    document.paragraph(format!(
        "A CSV file beside this report holds the same figures, one per row. Report made on {}.",
        long_date(Utc::now().date_naive())
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_half_up() {
        assert_eq!(percent(1, 8), Some(12.5));
        assert_eq!(percent(1, 3), Some(33.3));
        assert_eq!(percent(2, 3), Some(66.7));
        assert_eq!(percent(1, 2000), Some(0.1));
        assert_eq!(percent(1, 0), None);
    }

    #[test]
    fn output_paths_need_pdf() {
        let error = OutputPaths::check(Path::new("report.txt"), None).expect_err("rejected");
        assert!(error.to_string().contains("report.txt"), "{error}");
        assert!(error.to_string().contains(".pdf"), "{error}");
    }

    #[test]
    fn csv_path_follows_the_pdf() {
        let folder = std::env::temp_dir();
        let paths = OutputPaths::check(&folder.join("governors.pdf"), None).expect("valid");
        assert_eq!(paths.csv, folder.join("governors.csv"));
    }

    #[test]
    fn missing_folder_is_named() {
        let path = Path::new("/no/such/folder/report.pdf");
        let error = OutputPaths::check(path, None).expect_err("rejected");
        assert!(error.to_string().contains("/no/such/folder"), "{error}");
    }
}
