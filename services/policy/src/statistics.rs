//! GetAttendanceStatistics: figures by the DfE rules over a range, for any scope from one pupil
//! to the whole trust, grouped by school, year group, phase, class, SEN provision or free
//! school meals.
//!
//! Figures come from the registers' effective marks. Each pupil counts over their own possible
//! sessions in the range; a group's figures are the sums of its pupils' sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Days, NaiveDate};
use rollcall_api::client::Channel;
use rollcall_api::convert::{phase_from_proto, session_from_proto};
use rollcall_api::policy::v1::{
    GetAttendanceStatisticsRequest, GetAttendanceStatisticsResponse, StatisticsGroup,
    StatisticsGroupBy, StatisticsRange,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    Enrolment, FreeSchoolMeals, GetCalendarRequest, GetSchoolRequest, ListMarksRequest,
    ListSchoolsRequest, School, SenProvision,
};
use rollcall_domain::session::{academic_year_start, parse_date};
use rollcall_domain::{Figures, Phase, Policy};
use rollcall_runtime::grpc::{
    failed_precondition, invalid_argument, laestab, storage_error, upstream_error,
};
use rollcall_runtime::{Db, with_db};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::figures::{all_pupils, figures_to_proto};
use crate::follower::REGISTERS_FEED;
use crate::policies;
use rollcall_runtime::storage::stored_cursor;

/// How long GetAttendanceStatistics waits for the kept copy of the marks to catch up with the
/// registers before it reads the registers instead.
const COPY_WAIT: Duration = Duration::from_secs(5);

/// How often the wait checks the kept copy's position.
const COPY_POLL: Duration = Duration::from_millis(50);

/// One pupil's figures over the range, with the groups they belong to.
#[derive(Debug)]
struct PupilFigures {
    upn: String,
    laestab: String,
    year_group: String,
    phase: Phase,
    class_name: String,
    sen: String,
    fsm: String,
    figures: Figures,
    lates: u32,
    persistent: bool,
    severe: bool,
}

fn sen_key(value: i32) -> &'static str {
    match SenProvision::try_from(value) {
        Ok(SenProvision::None) => "none",
        Ok(SenProvision::Support) => "sen_support",
        Ok(SenProvision::EhcPlan) => "ehc_plan",
        _ => "not supplied",
    }
}

fn fsm_key(value: i32) -> &'static str {
    match FreeSchoolMeals::try_from(value) {
        Ok(FreeSchoolMeals::Eligible) => "eligible",
        Ok(FreeSchoolMeals::NotEligible) => "not_eligible",
        _ => "not supplied",
    }
}

fn optional(value: &str) -> Option<String> {
    Some(value.trim().to_owned()).filter(|value| !value.is_empty())
}

/// Returns every school of the trust, with the registers' change-feed position when the first
/// page was read.
async fn all_schools(
    registers: &mut RegistersServiceClient<Channel>,
) -> Result<(Vec<School>, i64), Status> {
    let mut schools = Vec::new();
    let mut feed_head = None;
    let mut page_token = String::new();
    loop {
        let page = registers
            .list_schools(ListSchoolsRequest {
                page_size: 100,
                page_token,
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        schools.extend(page.schools);
        let feed_head = *feed_head.get_or_insert(page.feed_cursor);
        if page.next_page_token.is_empty() {
            return Ok((schools, feed_head));
        }
        page_token = page.next_page_token;
    }
}

/// Works out the first date of the range for one school.
pub(crate) async fn range_start(
    registers: &mut RegistersServiceClient<Channel>,
    request: &GetAttendanceStatisticsRequest,
    school: &str,
    as_of: NaiveDate,
) -> Result<NaiveDate, Status> {
    match StatisticsRange::try_from(request.range).unwrap_or(StatisticsRange::Unspecified) {
        StatisticsRange::Unspecified | StatisticsRange::YearToDate => {
            Ok(academic_year_start(as_of))
        }
        StatisticsRange::RollingWeeks => {
            let weeks = u64::try_from(request.weeks).unwrap_or(0);
            if !(1..=104).contains(&weeks) {
                return Err(invalid_argument(
                    "weeks",
                    &request.weeks.to_string(),
                    "give 1 to 104 weeks for a rolling range",
                ));
            }
            Ok(as_of
                .checked_sub_days(Days::new(weeks * 7 - 1))
                .unwrap_or(NaiveDate::MIN))
        }
        StatisticsRange::Dates => {
            let from = parse_date(&request.from_date).map_err(|error| {
                invalid_argument("from_date", &request.from_date, error.problem())
            })?;
            if from > as_of {
                return Err(invalid_argument(
                    "from_date",
                    &request.from_date,
                    format!("it is after the as-of date {as_of}"),
                ));
            }
            Ok(from)
        }
        StatisticsRange::Term => {
            let calendar = registers
                .get_calendar(GetCalendarRequest {
                    laestab: school.to_owned(),
                })
                .await
                .map_err(|status| {
                    if status.code() == Code::NotFound {
                        failed_precondition(format!(
                            "school {school} has no calendar, so its terms are unknown; set the \
                             calendar or choose another range"
                        ))
                    } else {
                        upstream_error("registers", status)
                    }
                })?
                .into_inner()
                .calendar
                .unwrap_or_default();
            calendar
                .terms
                .iter()
                .filter_map(|term| parse_date(&term.first_day).ok())
                .filter(|first| *first <= as_of)
                .max()
                .ok_or_else(|| {
                    failed_precondition(format!(
                        "school {school} has no term starting by {as_of}; choose another range"
                    ))
                })
        }
    }
}

/// A pupil in scope with their enrolment and how many sessions of the range carry each
/// effective code.
pub(crate) struct PupilCodes {
    pub(crate) upn: String,
    pub(crate) enrolment: Enrolment,
    pub(crate) codes: BTreeMap<String, u32>,
}

impl PupilCodes {
    /// Returns the code of every session, each code as many times as it was recorded.
    pub(crate) fn each_code(&self) -> impl Iterator<Item = &str> + Clone {
        self.codes.iter().flat_map(|(code, sessions)| {
            std::iter::repeat_n(code.as_str(), usize::try_from(*sessions).unwrap_or(0))
        })
    }

    /// Returns how many sessions carry any of `codes`.
    fn sessions_with(&self, codes: &[&str]) -> u32 {
        codes
            .iter()
            .filter_map(|code| self.codes.get(*code))
            .fold(0u32, |sum, sessions| sum.saturating_add(*sessions))
    }
}

/// The store that a pupil's codes are read from.
#[derive(Clone, Copy)]
pub(crate) enum CodeSource<'a> {
    /// The registers' effective marks, page by page.
    Registers,
    /// The policy service's own copy of the effective codes, kept from the change feed, counted
    /// by the database.
    Copy(&'a Db),
}

/// Filters on the pupils in scope.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    pub(crate) year_group: Option<String>,
    pub(crate) class_name: Option<String>,
    pub(crate) upn: Option<String>,
}

impl Scope {
    fn of(request: &GetAttendanceStatisticsRequest) -> Self {
        Self {
            year_group: optional(&request.year_group),
            class_name: optional(&request.class_name),
            upn: optional(&request.upn).map(|upn| upn.to_ascii_uppercase()),
        }
    }
}

/// Reads the school's pupils in scope who were on roll in the range, with their codes.
pub(crate) async fn school_pupils(
    registers: &mut RegistersServiceClient<Channel>,
    laestab: &str,
    from: NaiveDate,
    to: NaiveDate,
    scope: &Scope,
    source: CodeSource<'_>,
) -> Result<Vec<PupilCodes>, Status> {
    let mut pupils: BTreeMap<String, PupilCodes> = BTreeMap::new();
    for (pupil, enrolment) in all_pupils(registers, laestab).await? {
        let admitted = parse_date(&enrolment.admission_date).unwrap_or(NaiveDate::MAX);
        let left = parse_date(&enrolment.leaving_date).ok();
        let on_roll = admitted <= to && left.is_none_or(|left| left >= from);
        let in_scope = scope
            .year_group
            .as_ref()
            .is_none_or(|g| enrolment.year_group == *g)
            && scope
                .class_name
                .as_ref()
                .is_none_or(|c| enrolment.class_name == *c)
            && scope.upn.as_ref().is_none_or(|u| pupil.upn == *u);
        if on_roll && in_scope {
            pupils.insert(
                pupil.upn.clone(),
                PupilCodes {
                    upn: pupil.upn,
                    enrolment,
                    codes: BTreeMap::new(),
                },
            );
        }
    }
    if pupils.is_empty() {
        return Ok(Vec::new());
    }

    if let CodeSource::Copy(db) = source {
        for (upn, code, sessions) in kept_code_counts(db, laestab, from, to, scope).await? {
            if let Some(pupil) = pupils.get_mut(&upn) {
                let sessions = u32::try_from(sessions).unwrap_or(u32::MAX);
                let count = pupil.codes.entry(code).or_default();
                *count = count.saturating_add(sessions);
            }
        }
        return Ok(pupils.into_values().collect());
    }

    let mut page_token = String::new();
    loop {
        let page = registers
            .list_marks(ListMarksRequest {
                laestab: laestab.to_owned(),
                upn: scope.upn.clone().unwrap_or_default(),
                from_date: from.to_string(),
                to_date: to.to_string(),
                page_size: 20_000,
                page_token,
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        for mark in page.marks {
            if session_from_proto(mark.session).is_none() {
                continue;
            }
            if let Some(pupil) = pupils.get_mut(&mark.upn) {
                let count = pupil.codes.entry(mark.code).or_default();
                *count = count.saturating_add(1);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(pupils.into_values().collect())
}

/// Counts the sessions of each effective code per pupil of the school over the range, from the
/// policy service's copy of the registers.
async fn kept_code_counts(
    db: &Db,
    laestab: &str,
    from: NaiveDate,
    to: NaiveDate,
    scope: &Scope,
) -> Result<Vec<(String, String, i64)>, Status> {
    let upn = scope.upn.clone().unwrap_or_default();
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT upn, code, COUNT(*) FROM pupil_marks \
             WHERE laestab = $1 AND session_date >= $2 AND session_date <= $3 \
             AND ($4 = '' OR upn = $4) GROUP BY upn, code",
        )
        .bind(laestab)
        .bind(from)
        .bind(to)
        .bind(&upn)
        .fetch_all(pool)
        .await
    })
    .map_err(|error| storage_error("counting the kept codes", error))
}

/// Waits until the policy service's copy of the marks has applied the registers' change feed
/// up to `head`, for at most [`COPY_WAIT`]. Returns whether it has.
async fn copy_reaches(db: &Db, head: i64) -> Result<bool, Status> {
    let deadline = Instant::now() + COPY_WAIT;
    loop {
        let cursor = stored_cursor(db, REGISTERS_FEED)
            .await
            .map_err(|error| storage_error("reading the sync state", error))?;
        if cursor >= head {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                cursor,
                head,
                "The kept copy of the marks is behind the registers; reading the registers instead"
            );
            return Ok(false);
        }
        tokio::time::sleep(COPY_POLL).await;
    }
}

/// Returns one school's pupils in scope and their figures over the range.
async fn school_figures(
    db: &Db,
    registers: &mut RegistersServiceClient<Channel>,
    school: &School,
    from: NaiveDate,
    to: NaiveDate,
    scope: &Scope,
    source: CodeSource<'_>,
) -> Result<Vec<PupilFigures>, Status> {
    let mut out = Vec::new();
    let policy: Policy = policies::policy_for(db, &school.laestab, to).await?.policy;
    let school_phase = phase_from_proto(school.phase).unwrap_or(Phase::Secondary);
    for pupil in school_pupils(registers, &school.laestab, from, to, scope, source).await? {
        let figures = Figures::from_codes(pupil.each_code());
        if figures.possible() == 0 {
            continue;
        }
        let lates = pupil.sessions_with(&["L", "U"]);
        let enrolment = pupil.enrolment;
        out.push(PupilFigures {
            upn: pupil.upn,
            laestab: school.laestab.clone(),
            phase: Phase::of_year_group(&enrolment.year_group).unwrap_or(school_phase),
            year_group: enrolment.year_group,
            class_name: enrolment.class_name,
            sen: sen_key(enrolment.sen_provision).to_owned(),
            fsm: fsm_key(enrolment.free_school_meals).to_owned(),
            persistent: policy.is_persistent_absence(&figures),
            severe: policy.is_severe_absence(&figures),
            figures,
            lates,
        });
    }
    Ok(out)
}

/// Orders year groups as schools do: nursery, reception, then 1 to 14, then anything else.
fn year_group_order(year_group: &str) -> (i32, String) {
    let rank = match year_group {
        "N1" => -3,
        "N2" => -2,
        "R" => -1,
        other => other.parse::<i32>().unwrap_or(100),
    };
    (rank, year_group.to_owned())
}

fn rate(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (f64::from(part) * 1000.0 / f64::from(whole)).round() / 10.0
}

/// Sums pupils' figures into a group.
fn group(key: &str, pupils: &[&PupilFigures], policy: &Policy) -> StatisticsGroup {
    let mut figures = Figures::default();
    let mut persistent = 0u32;
    let mut severe = 0u32;
    let mut lates = 0u32;
    for pupil in pupils {
        figures.merge(&pupil.figures);
        lates = lates.saturating_add(pupil.lates);
        persistent += u32::from(pupil.persistent);
        severe += u32::from(pupil.severe);
    }
    let count = u32::try_from(pupils.len()).unwrap_or(u32::MAX);
    let mut summed = figures_to_proto(&figures, policy);
    // The flags describe one pupil. For a group, the counts of absentees carry that meaning.
    summed.persistent_absence = false;
    summed.severe_absence = false;
    StatisticsGroup {
        key: key.to_owned(),
        pupils: i32::try_from(count).unwrap_or(i32::MAX),
        figures: Some(summed),
        persistent_absentees: i32::try_from(persistent).unwrap_or(i32::MAX),
        severe_absentees: i32::try_from(severe).unwrap_or(i32::MAX),
        persistent_absence_rate: rate(persistent, count),
        severe_absence_rate: rate(severe, count),
        late_sessions: i32::try_from(lates).unwrap_or(i32::MAX),
    }
}

/// Answers GetAttendanceStatistics.
pub(crate) async fn statistics(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: GetAttendanceStatisticsRequest,
) -> Result<GetAttendanceStatisticsResponse, Status> {
    let mut registers = registers.clone();
    let (schools, feed_head) = if request.laestab.trim().is_empty() {
        all_schools(&mut registers).await?
    } else {
        let school = laestab("laestab", &request.laestab)?;
        let response = registers
            .get_school(GetSchoolRequest { laestab: school })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        (response.school.into_iter().collect(), response.feed_cursor)
    };
    let group_by =
        StatisticsGroupBy::try_from(request.group_by).unwrap_or(StatisticsGroupBy::Unspecified);

    // The as-of date: the one given, or the latest date with marks in scope.
    let as_of = if request.as_of.trim().is_empty() {
        schools
            .iter()
            .filter_map(|school| parse_date(&school.last_mark_date).ok())
            .max()
    } else {
        Some(
            parse_date(&request.as_of)
                .map_err(|error| invalid_argument("as_of", &request.as_of, error.problem()))?,
        )
    };
    let Some(as_of) = as_of else {
        return Ok(GetAttendanceStatisticsResponse::default());
    };

    // The kept copy is read when it has every mark stored before the request. While the
    // policy service catches up after a large import, the registers are read instead.
    let source = if copy_reaches(db, feed_head).await? {
        CodeSource::Copy(db)
    } else {
        CodeSource::Registers
    };
    let scope = Scope::of(&request);
    let mut pupils = Vec::new();
    let mut earliest = as_of;
    for school in &schools {
        let from = range_start(&mut registers, &request, &school.laestab, as_of).await?;
        earliest = earliest.min(from);
        pupils
            .extend(school_figures(db, &mut registers, school, from, as_of, &scope, source).await?);
    }

    // Group flags are cleared, so the default policy serves for the percentages.
    let policy = Policy::trust_2021();
    let mut groups: BTreeMap<String, Vec<&PupilFigures>> = BTreeMap::new();
    for pupil in &pupils {
        let key = match group_by {
            StatisticsGroupBy::Unspecified => "all".to_owned(),
            StatisticsGroupBy::School => pupil.laestab.clone(),
            StatisticsGroupBy::YearGroup => pupil.year_group.clone(),
            StatisticsGroupBy::Phase => pupil.phase.as_str().to_owned(),
            StatisticsGroupBy::Class => {
                if pupil.class_name.is_empty() {
                    "not supplied".to_owned()
                } else {
                    pupil.class_name.clone()
                }
            }
            StatisticsGroupBy::SenProvision => pupil.sen.clone(),
            StatisticsGroupBy::FreeSchoolMeals => pupil.fsm.clone(),
            StatisticsGroupBy::Pupil => pupil.upn.clone(),
        };
        groups.entry(key).or_default().push(pupil);
    }
    let all: Vec<&PupilFigures> = pupils.iter().collect();
    let mut groups: Vec<(String, Vec<&PupilFigures>)> = groups.into_iter().collect();
    if group_by == StatisticsGroupBy::YearGroup {
        groups.sort_by_key(|(key, _)| year_group_order(key));
    }
    Ok(GetAttendanceStatisticsResponse {
        period: Some(rollcall_api::policy::v1::Period {
            from_date: earliest.to_string(),
            to_date: as_of.to_string(),
        }),
        groups: groups
            .iter()
            .map(|(key, members)| group(key, members, &policy))
            .collect(),
        total: Some(group("all", &all, &policy)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_groups_sort_as_schools_do() {
        let mut groups = vec!["10", "2", "R", "1", "N2", "11", "X"];
        groups.sort_by_key(|g| year_group_order(g));
        assert_eq!(groups, ["N2", "R", "1", "2", "10", "11", "X"]);
    }

    #[test]
    fn rates_round_to_one_decimal_place() {
        assert!((rate(1, 3) - 33.3).abs() < 1e-9);
        assert!((rate(2, 3) - 66.7).abs() < 1e-9);
        assert!(rate(0, 0).abs() < 1e-9);
    }
}
