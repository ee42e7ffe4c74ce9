//! `rollcall report governors` and `rollcall report trust`: the annual report to a school's
//! local governing body and the trust's report at a data point, gathered from the running
//! services and written as a PDF with a CSV of the same figures.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use chrono::{Datelike, Months, NaiveDate};
use clap::Args;
use rollcall_api::cases::v1::{Case, ListLaddersRequest};
use rollcall_api::policy::v1::{
    GetAttendanceStatisticsRequest, GetPolicyRequest, StatisticsGroup, StatisticsGroupBy,
    StatisticsRange,
};
use rollcall_api::referrals::v1::{ListReferralsRequest, Referral, ReferralOutcomeKind};
use rollcall_api::registers::v1::{
    Calendar, GetCalendarRequest, GetSchoolRequest, ListSchoolsRequest, School,
};
use rollcall_domain::ladder::{Role, parse_ladder};
use rollcall_domain::session::{academic_year_start, parse_date};
use tonic::Code;

use crate::client::Clients;
use crate::report_output::{OutputPaths, write_report};

/// Options of `rollcall report governors`.
#[derive(Debug, Args)]
pub(crate) struct GovernorsArgs {
    /// The school: seven-digit LA number and establishment number, e.g. 9192001.
    #[arg(long)]
    school: String,
    /// The academic year, by the calendar year it starts in: 2025 is the year from September
    /// 2025 to July 2026. Figures count from 1 August 2025 to 31 July 2026, as the DfE's do, or
    /// to the school's last date with marks.
    #[arg(long, value_parser = clap::value_parser!(i32).range(2000..=2100))]
    year: i32,
    /// The PDF to write; its folder must exist and its name must end in .pdf.
    #[arg(long)]
    out: PathBuf,
    /// The CSV of the same figures; by default the --out path with .csv in place of .pdf.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// Options of `rollcall report trust`.
#[derive(Debug, Args)]
pub(crate) struct TrustArgs {
    /// The data point (YYYY-MM-DD): figures cover the academic year from 1 August up to and
    /// including this date, for every school.
    #[arg(long)]
    on: String,
    /// The PDF to write; its folder must exist and its name must end in .pdf.
    #[arg(long)]
    out: PathBuf,
    /// The CSV of the same figures; by default the --out path with .csv in place of .pdf.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// The kind of report being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportKind {
    Governors,
    Trust,
}

/// A total over a period: the headline figures.
#[derive(Debug)]
pub(crate) struct Headline {
    /// The academic year, for example "2025/26".
    pub(crate) year: String,
    pub(crate) from: NaiveDate,
    pub(crate) to: NaiveDate,
    pub(crate) total: StatisticsGroup,
}

/// Attendance month by month over one academic year.
#[derive(Debug)]
pub(crate) struct MonthSeries {
    /// The academic year, for example "2025/26".
    pub(crate) year: String,
    /// The first day of each month with possible sessions, with the month's figures.
    pub(crate) months: Vec<(NaiveDate, StatisticsGroup)>,
}

/// Figures split by one kind of pupil group.
#[derive(Debug)]
pub(crate) struct Breakdown {
    /// The CSV section, for example "year_group".
    pub(crate) section: &'static str,
    /// The heading of the group column, for example "Year group".
    pub(crate) label: &'static str,
    pub(crate) groups: Vec<StatisticsGroup>,
}

/// Open cases at one stage of one ladder at one school.
#[derive(Debug)]
pub(crate) struct StageCount {
    pub(crate) laestab: String,
    pub(crate) ladder: String,
    pub(crate) stage: String,
    pub(crate) stage_title: String,
    pub(crate) open_cases: usize,
}

/// Everything a report shows, gathered from the services.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) kind: ReportKind,
    /// The CSV group of the report's own totals: the school's LAESTAB, or "trust".
    pub(crate) group: String,
    /// The school's name, or the trust's description.
    pub(crate) subject: String,
    pub(crate) headline: Headline,
    pub(crate) previous: Option<Headline>,
    pub(crate) months: Vec<MonthSeries>,
    pub(crate) breakdowns: Vec<Breakdown>,
    /// Every stage of the ladders in use, per school, with zero counts included.
    pub(crate) stages: Vec<StageCount>,
    /// Cases at a stage the local authority attendance officer owns, per school.
    pub(crate) local_authority: BTreeMap<String, usize>,
    /// Referrals and their outcomes in the report's range, per school and kind.
    pub(crate) referrals: Vec<ReferralCount>,
    /// The last date counted for referrals: the end of the academic year for governors, the
    /// report date for the trust.
    pub(crate) referrals_to: NaiveDate,
    /// The last date counted for cases: cases opened after it are left out.
    pub(crate) cases_to: NaiveDate,
    /// School names by LAESTAB.
    pub(crate) school_names: BTreeMap<String, String>,
    /// The policy each school followed on the last date of the range, by LAESTAB.
    pub(crate) policies: BTreeMap<String, String>,
    /// Schools with a calendar term in the academic year, by LAESTAB.
    pub(crate) calendars: BTreeMap<String, bool>,
}

/// Referrals of one kind from one school: those submitted in the report's range, the outcomes
/// dated in it, and the notices overdue when the report is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReferralCount {
    pub(crate) laestab: String,
    pub(crate) kind: String,
    pub(crate) submitted: usize,
    pub(crate) notices_issued: usize,
    pub(crate) paid: usize,
    pub(crate) unpaid: usize,
    pub(crate) prosecutions: usize,
    pub(crate) withdrawn: usize,
    pub(crate) overdue_notices: usize,
}

impl ReferralCount {
    /// Returns the measures as the CSV names them, with their counts.
    pub(crate) fn measures(&self) -> [(&'static str, usize); 7] {
        [
            ("submitted", self.submitted),
            ("notices_issued", self.notices_issued),
            ("paid", self.paid),
            ("unpaid", self.unpaid),
            ("prosecutions", self.prosecutions),
            ("withdrawn", self.withdrawn),
            ("overdue_notices", self.overdue_notices),
        ]
    }
}

/// Counts the referrals of each school in `schools` submitted between `from` and `to`, and
/// their outcomes dated in that range. Overdue notices are counted as they stand today.
async fn count_referrals(
    clients: &Clients,
    schools: &[String],
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<Vec<ReferralCount>> {
    let mut referrals = Vec::new();
    for laestab in schools {
        let mut page_token = String::new();
        loop {
            let page = clients
                .referrals
                .clone()
                .list_referrals(ListReferralsRequest {
                    laestab: laestab.clone(),
                    page_size: 1_000,
                    page_token,
                    ..ListReferralsRequest::default()
                })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner();
            referrals.extend(page.referrals);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    Ok(tally_referrals(&referrals, from, to))
}

/// Counts referrals per school and kind: those submitted between `from` and `to`, their
/// outcomes dated in that range, and their notices overdue now.
fn tally_referrals(referrals: &[Referral], from: NaiveDate, to: NaiveDate) -> Vec<ReferralCount> {
    let in_range = |date: &str| parse_date(date).is_ok_and(|date| from <= date && date <= to);
    let mut counts: BTreeMap<(String, String), ReferralCount> = BTreeMap::new();
    for referral in referrals {
        let count = counts
            .entry((referral.laestab.clone(), referral.kind.clone()))
            .or_insert_with(|| ReferralCount {
                laestab: referral.laestab.clone(),
                kind: referral.kind.clone(),
                ..ReferralCount::default()
            });
        let submitted = referral
            .submitted_at
            .as_ref()
            .and_then(rollcall_api::convert::from_timestamp)
            .map(|at| at.date_naive().to_string());
        if submitted.as_deref().is_some_and(in_range) {
            count.submitted += 1;
        }
        for outcome in referral.outcomes.iter().filter(|o| in_range(&o.on_date)) {
            match ReferralOutcomeKind::try_from(outcome.outcome) {
                Ok(ReferralOutcomeKind::NoticeIssued) => count.notices_issued += 1,
                Ok(ReferralOutcomeKind::Paid) => count.paid += 1,
                Ok(ReferralOutcomeKind::Unpaid) => count.unpaid += 1,
                Ok(ReferralOutcomeKind::Prosecution) => count.prosecutions += 1,
                Ok(ReferralOutcomeKind::Withdrawn) => count.withdrawn += 1,
                _ => {}
            }
        }
        if referral
            .notice
            .as_ref()
            .is_some_and(|notice| notice.overdue)
        {
            count.overdue_notices += 1;
        }
    }
    counts.into_values().collect()
}

/// Returns the academic year starting in `year` as people write it, for example "2025/26".
pub(crate) fn year_label(year: i32) -> String {
    format!("{year}/{:02}", (year + 1).rem_euclid(100))
}

fn date(year: i32, month: u32, day: u32) -> anyhow::Result<NaiveDate> {
    NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| anyhow::anyhow!("invalid date {year}-{month:02}-{day:02}"))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// Builds and writes the governors' report for one school and academic year.
pub(crate) async fn run_governors(
    clients: &Clients,
    args: GovernorsArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let paths = OutputPaths::check(&args.out, args.csv.as_deref())?;
    let laestab = rollcall_domain::school::parse_laestab(&args.school)
        .map_err(|error| anyhow::anyhow!("invalid --school: {error}"))?;
    let school = get_school(clients, &laestab).await?;

    let year = args.year;
    let from = date(year, 8, 1)?;
    let year_end = date(year + 1, 7, 31)?;
    let last_mark = parse_date(&school.last_mark_date).ok();
    let to = last_mark.map_or(year_end, |last| last.clamp(from, year_end));
    let calendar = get_calendar(clients, &laestab).await?;
    let has_term = calendar
        .as_ref()
        .is_some_and(|calendar| has_term_between(calendar, from, year_end));

    let total = statistics(clients, &laestab, from, to, StatisticsGroupBy::Unspecified).await?;
    if total.total.pupils == 0 {
        let calendar_note = if has_term {
            String::new()
        } else {
            format!(
                " It has no calendar terms in {} either; set them with `rollcall calendar set`.",
                year_label(year)
            )
        };
        bail!(
            "school {laestab} has no marks in the academic year {} (from {from} to {year_end}): \
             import its registers for that year with `rollcall import ctf`, or choose another \
             --year.{calendar_note}",
            year_label(year)
        );
    }
    let headline = Headline {
        year: year_label(year),
        from,
        to,
        total: total.total,
    };
    let mut months = vec![month_series(clients, &laestab, year, from, to).await?];

    let previous_from = date(year - 1, 8, 1)?;
    let previous_to = date(year, 7, 31)?;
    let previous_total = statistics(
        clients,
        &laestab,
        previous_from,
        previous_to,
        StatisticsGroupBy::Unspecified,
    )
    .await?
    .total;
    // NOTE: the tests load a single term, so this comparison with the previous academic year
    // has not been run against a server.
    let previous = if previous_total.pupils > 0 {
        months.push(month_series(clients, &laestab, year - 1, previous_from, previous_to).await?);
        Some(Headline {
            year: year_label(year - 1),
            from: previous_from,
            to: previous_to,
            total: previous_total,
        })
    } else {
        None
    };

    let mut breakdowns = Vec::new();
    for (section, label, group_by) in [
        ("year_group", "Year group", StatisticsGroupBy::YearGroup),
        (
            "sen_provision",
            "SEN provision",
            StatisticsGroupBy::SenProvision,
        ),
        (
            "free_school_meals",
            "Free school meals",
            StatisticsGroupBy::FreeSchoolMeals,
        ),
    ] {
        let groups = statistics(clients, &laestab, from, to, group_by)
            .await?
            .groups;
        breakdowns.push(Breakdown {
            section,
            label,
            groups,
        });
    }

    let cases = crate::commands::fetch_cases(clients, &laestab).await?;
    let school_phase = vec![(laestab.clone(), phase_name(school.phase))];
    let (stages, local_authority) = count_stages(clients, &cases, &school_phase, to).await?;
    // Referrals count over the whole academic year: one made after the last day with marks
    // still belongs to the year.
    let referrals =
        count_referrals(clients, std::slice::from_ref(&laestab), from, year_end).await?;
    let policy = policy_name(clients, &laestab, to).await?;

    let report = Report {
        kind: ReportKind::Governors,
        group: laestab.clone(),
        subject: school.name.clone(),
        headline,
        previous,
        months,
        breakdowns,
        stages,
        local_authority,
        referrals,
        referrals_to: year_end,
        cases_to: to,
        school_names: BTreeMap::from([(laestab.clone(), school.name.clone())]),
        policies: BTreeMap::from([(laestab.clone(), policy)]),
        calendars: BTreeMap::from([(laestab, has_term)]),
    };
    write_report(&report, &paths, out)
}

/// Builds and writes the trust's report for the academic year to a date.
pub(crate) async fn run_trust(
    clients: &Clients,
    args: TrustArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let paths = OutputPaths::check(&args.out, args.csv.as_deref())?;
    let on = parse_date(&args.on).map_err(|error| anyhow::anyhow!("invalid --on: {error}"))?;
    let from = academic_year_start(on);
    let year = from.year();

    let schools = list_schools(clients).await?;
    if schools.is_empty() {
        bail!("the trust has no schools yet: import their registers with `rollcall import ctf`");
    }
    let total = statistics(clients, "", from, on, StatisticsGroupBy::Unspecified).await?;
    if total.total.pupils == 0 {
        bail!(
            "no school has marks in the academic year {} up to {on} (from {from}): import the \
             registers with `rollcall import ctf`, or choose a later --on date",
            year_label(year)
        );
    }
    let headline = Headline {
        year: year_label(year),
        from,
        to: on,
        total: total.total,
    };
    let months = vec![month_series(clients, "", year, from, on).await?];

    let mut breakdowns = Vec::new();
    for (section, label, group_by) in [
        ("school", "School", StatisticsGroupBy::School),
        ("phase", "Phase", StatisticsGroupBy::Phase),
        ("year_group", "Year group", StatisticsGroupBy::YearGroup),
        (
            "sen_provision",
            "SEN provision",
            StatisticsGroupBy::SenProvision,
        ),
        (
            "free_school_meals",
            "Free school meals",
            StatisticsGroupBy::FreeSchoolMeals,
        ),
    ] {
        let groups = statistics(clients, "", from, on, group_by).await?.groups;
        breakdowns.push(Breakdown {
            section,
            label,
            groups,
        });
    }

    let school_phases: Vec<(String, String)> = schools
        .iter()
        .map(|school| (school.laestab.clone(), phase_name(school.phase)))
        .collect();
    let cases = crate::commands::fetch_cases(clients, "").await?;
    let (stages, local_authority) = count_stages(clients, &cases, &school_phases, on).await?;
    let school_ids: Vec<String> = schools
        .iter()
        .map(|school| school.laestab.clone())
        .collect();
    let referrals = count_referrals(clients, &school_ids, from, on).await?;

    let mut policies = BTreeMap::new();
    let mut calendars = BTreeMap::new();
    for school in &schools {
        let policy = policy_name(clients, &school.laestab, on).await?;
        policies.insert(school.laestab.clone(), policy);
        let calendar = get_calendar(clients, &school.laestab).await?;
        let has_term = calendar
            .as_ref()
            .is_some_and(|calendar| has_term_between(calendar, from, on));
        calendars.insert(school.laestab.clone(), has_term);
    }

    let report = Report {
        kind: ReportKind::Trust,
        group: "trust".to_owned(),
        subject: "Every school of the trust".to_owned(),
        headline,
        previous: None,
        months,
        breakdowns,
        stages,
        local_authority,
        referrals,
        referrals_to: on,
        cases_to: on,
        school_names: schools
            .into_iter()
            .map(|school| (school.laestab, school.name))
            .collect(),
        policies,
        calendars,
    };
    write_report(&report, &paths, out)
}

async fn get_school(clients: &Clients, laestab: &str) -> anyhow::Result<School> {
    let response = clients
        .registers
        .clone()
        .get_school(GetSchoolRequest {
            laestab: laestab.to_owned(),
        })
        .await;
    match response {
        Ok(response) => Ok(response.into_inner().school.unwrap_or_default()),
        Err(status) if status.code() == Code::NotFound => bail!(
            "school {laestab} not found: check the LAESTAB (seven digits, LA number then \
             establishment number), or import the school's registers with `rollcall import ctf`"
        ),
        Err(status) => Err(status_error(status)),
    }
}

async fn list_schools(clients: &Clients) -> anyhow::Result<Vec<School>> {
    let mut schools = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .registers
            .clone()
            .list_schools(ListSchoolsRequest {
                page_size: 100,
                page_token,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        schools.extend(page.schools);
        if page.next_page_token.is_empty() {
            return Ok(schools);
        }
        page_token = page.next_page_token;
    }
}

/// Returns the school's calendar, or `None` when it has none.
async fn get_calendar(clients: &Clients, laestab: &str) -> anyhow::Result<Option<Calendar>> {
    let response = clients
        .registers
        .clone()
        .get_calendar(GetCalendarRequest {
            laestab: laestab.to_owned(),
        })
        .await;
    match response {
        Ok(response) => Ok(response.into_inner().calendar),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status_error(status)),
    }
}

fn has_term_between(calendar: &Calendar, from: NaiveDate, to: NaiveDate) -> bool {
    calendar.terms.iter().any(|term| {
        let first = parse_date(&term.first_day).ok();
        let last = parse_date(&term.last_day).ok();
        matches!((first, last), (Some(first), Some(last)) if first <= to && last >= from)
    })
}

/// Returns the statistics from `from` to `to` for one school, or the trust when `laestab` is
/// empty.
async fn statistics(
    clients: &Clients,
    laestab: &str,
    from: NaiveDate,
    to: NaiveDate,
    group_by: StatisticsGroupBy,
) -> anyhow::Result<Statistics> {
    let response = clients
        .policy
        .clone()
        .get_attendance_statistics(GetAttendanceStatisticsRequest {
            laestab: laestab.to_owned(),
            as_of: to.to_string(),
            range: StatisticsRange::Dates as i32,
            from_date: from.to_string(),
            group_by: group_by as i32,
            ..GetAttendanceStatisticsRequest::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(Statistics {
        groups: response.groups,
        total: response.total.unwrap_or_default(),
    })
}

struct Statistics {
    groups: Vec<StatisticsGroup>,
    total: StatisticsGroup,
}

/// Returns the figures of each calendar month of the academic year from `from` to `to` that
/// has possible sessions.
async fn month_series(
    clients: &Clients,
    laestab: &str,
    year: i32,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<MonthSeries> {
    let mut months = Vec::new();
    let mut first = from.with_day(1).unwrap_or(from);
    while first <= to {
        let next = first + Months::new(1);
        let last = next.pred_opt().unwrap_or(first).min(to);
        let month_from = first.max(from);
        let total = statistics(
            clients,
            laestab,
            month_from,
            last,
            StatisticsGroupBy::Unspecified,
        )
        .await?
        .total;
        if total.pupils > 0 {
            months.push((first, total));
        }
        first = next;
    }
    Ok(MonthSeries {
        year: year_label(year),
        months,
    })
}

/// Returns the title and version of the policy a school follows on a date.
async fn policy_name(clients: &Clients, laestab: &str, on: NaiveDate) -> anyhow::Result<String> {
    let policy = clients
        .policy
        .clone()
        .get_policy(GetPolicyRequest {
            laestab: laestab.to_owned(),
            on_date: on.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .policy
        .unwrap_or_default();
    Ok(format!(
        "{} ({}, version {})",
        policy.title, policy.id, policy.version
    ))
}

fn phase_name(phase: i32) -> String {
    rollcall_api::convert::phase_from_proto(phase)
        .map(|phase| phase.as_str().to_owned())
        .unwrap_or_default()
}

/// Counts open cases, and cases up for review, at each stage of the ladders that apply to
/// each school's phase, leaving out cases opened after `to`. `schools` pairs each LAESTAB with
/// its phase. Also returns, per school, the cases at a stage the local authority attendance
/// officer owns.
async fn count_stages(
    clients: &Clients,
    cases: &[Case],
    schools: &[(String, String)],
    to: NaiveDate,
) -> anyhow::Result<(Vec<StageCount>, BTreeMap<String, usize>)> {
    // NOTE: ListCases returns the cases as they are now, so a report on a past date counts
    // the cases opened by then that are still open, not those open on that date.
    let counted: Vec<&Case> = cases
        .iter()
        .filter(|case| parse_date(&case.opened_on).is_ok_and(|opened| opened <= to))
        .collect();

    let ladders = clients
        .cases
        .clone()
        .list_ladders(ListLaddersRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .ladders;
    let mut stages = Vec::new();
    for (laestab, phase) in schools {
        for ladder in &ladders {
            if !ladder.phases.contains(phase) {
                continue;
            }
            let parsed = parse_ladder(&ladder.source).map_err(|error| {
                anyhow::anyhow!(
                    "ladder {} held by the cases service is invalid: {error}",
                    ladder.id
                )
            })?;
            for stage in &parsed.stages {
                let open_cases = counted
                    .iter()
                    .filter(|case| {
                        case.laestab == *laestab
                            && case.ladder == ladder.id
                            && case.stage == stage.id
                    })
                    .count();
                stages.push(StageCount {
                    laestab: laestab.clone(),
                    ladder: ladder.id.clone(),
                    stage: stage.id.clone(),
                    stage_title: stage.title.clone(),
                    open_cases,
                });
            }
        }
        // A case may follow a stage that a later version of its ladder no longer has.
        for case in counted.iter().filter(|case| case.laestab == *laestab) {
            let listed = stages.iter().any(|count| {
                count.laestab == *laestab
                    && count.ladder == case.ladder
                    && count.stage == case.stage
            });
            if !listed {
                stages.push(StageCount {
                    laestab: laestab.clone(),
                    ladder: case.ladder.clone(),
                    stage: case.stage.clone(),
                    stage_title: format!(
                        "stage {} of an earlier ladder version",
                        case.stage_number
                    ),
                    open_cases: counted
                        .iter()
                        .filter(|other| {
                            other.laestab == *laestab
                                && other.ladder == case.ladder
                                && other.stage == case.stage
                        })
                        .count(),
                });
            }
        }
    }

    let local_authority_role = Role::LocalAuthorityAttendanceOfficer.as_str();
    let local_authority = schools
        .iter()
        .map(|(laestab, _)| {
            let count = counted
                .iter()
                .filter(|case| case.laestab == *laestab && case.owner_role == local_authority_role)
                .count();
            (laestab.clone(), count)
        })
        .collect();
    Ok((stages, local_authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrals_count_by_the_dates_in_range() {
        use rollcall_api::referrals::v1::{PenaltyNotice, ReferralOutcome};

        let at = |date: &str| {
            let date: NaiveDate = date.parse().expect("date");
            Some(rollcall_api::convert::timestamp(
                date.and_hms_opt(10, 0, 0).expect("time").and_utc(),
            ))
        };
        let outcome = |kind: ReferralOutcomeKind, on: &str| ReferralOutcome {
            outcome: kind as i32,
            on_date: on.into(),
            ..ReferralOutcome::default()
        };
        let referral = |kind: &str, submitted: &str, outcomes: Vec<ReferralOutcome>| Referral {
            laestab: "9192001".into(),
            kind: kind.into(),
            submitted_at: at(submitted),
            outcomes,
            ..Referral::default()
        };
        let mut overdue = referral(
            "penalty_notice",
            "2025-10-01",
            vec![outcome(ReferralOutcomeKind::NoticeIssued, "2025-10-10")],
        );
        overdue.notice = Some(PenaltyNotice {
            overdue: true,
            ..PenaltyNotice::default()
        });
        let referrals = [
            overdue,
            referral(
                "penalty_notice",
                "2025-07-01",
                vec![
                    outcome(ReferralOutcomeKind::NoticeIssued, "2025-07-10"),
                    outcome(ReferralOutcomeKind::Paid, "2025-08-20"),
                ],
            ),
            referral("attendance_officer", "2025-09-15", Vec::new()),
            Referral {
                laestab: "9192001".into(),
                kind: "attendance_officer".into(),
                ..Referral::default()
            },
        ];
        let from = "2025-08-01".parse().expect("date");
        let to = "2026-07-31".parse().expect("date");
        let counts = tally_referrals(&referrals, from, to);
        assert_eq!(counts.len(), 2);
        let officer = &counts[0];
        assert_eq!(
            (officer.kind.as_str(), officer.submitted),
            ("attendance_officer", 1)
        );
        let notices = &counts[1];
        assert_eq!(notices.submitted, 1, "the July referral is last year's");
        assert_eq!(notices.notices_issued, 1);
        assert_eq!(notices.paid, 1, "paid in August, within the range");
        assert_eq!(notices.overdue_notices, 1);
    }

    #[test]
    fn year_labels_wrap_the_century() {
        assert_eq!(year_label(2025), "2025/26");
        assert_eq!(year_label(2099), "2099/00");
    }
}
