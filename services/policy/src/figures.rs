//! Figures for a school or pupil, computed from the registers' effective marks.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rollcall_api::client::Channel;
use rollcall_api::convert::{phase_from_proto, session_from_proto};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    Enrolment, GetPupilRequest, GetSchoolRequest, ListMarksRequest, ListPupilsRequest, Pupil,
    School,
};
use rollcall_api::types::v1::AttendanceFigures;
use rollcall_domain::policy::{ThresholdEvaluation, alerts, evaluate_penalty_threshold};
use rollcall_domain::session::{academic_year_start, parse_date};
use rollcall_domain::{Figures, Phase, Policy, SessionDate};
use rollcall_runtime::grpc::{invalid_argument, not_found, upstream_error};
use tonic::Status;

/// A pupil's effective marks and details, as needed for their figures.
#[derive(Debug, Clone)]
pub(crate) struct PupilMarks {
    pub(crate) upn: String,
    pub(crate) year_group: String,
    pub(crate) marks: Vec<(SessionDate, String)>,
}

impl PupilMarks {
    /// Counts the marks from `from` on; earlier marks are kept only for penalty windows.
    pub(crate) fn figures(&self, from: NaiveDate) -> Figures {
        Figures::from_codes(
            self.marks
                .iter()
                .filter(|(session, _)| session.date >= from)
                .map(|(_, code)| code.as_str()),
        )
    }

    pub(crate) fn phase(&self, school_phase: Phase) -> Phase {
        Phase::of_year_group(&self.year_group).unwrap_or(school_phase)
    }

    /// Evaluates the rules about patterns of absence over the academic year to `as_of`.
    pub(crate) fn alerts(&self, policy: &Policy, as_of: NaiveDate) -> Alerts {
        let marks: Vec<(SessionDate, &str)> = self
            .marks
            .iter()
            .filter(|(session, _)| session.date <= as_of)
            .map(|(session, code)| (*session, code.as_str()))
            .collect();
        let from = academic_year_start(as_of);
        let in_year: Vec<(SessionDate, &str)> = marks
            .iter()
            .copied()
            .filter(|(session, _)| session.date >= from)
            .collect();
        Alerts {
            unexplained: policy.unexplained_absence.as_ref().map(|rule| {
                (
                    rule.days,
                    alerts::overdue_unexplained(&marks, rule.days, as_of),
                )
            }),
            unauthorised: policy.unauthorised_absence_return.as_ref().map(|rule| {
                let days = if rule.continuous {
                    alerts::longest_unauthorised_run(&in_year, from, as_of)
                        .map_or(0, |run| run.days)
                } else {
                    alerts::unauthorised_days(&in_year, from, as_of)
                };
                (rule.days, days)
            }),
            sickness: policy
                .sickness_return
                .as_ref()
                .map(|rule| (rule.days, alerts::sickness_days(&in_year, from, as_of))),
        }
    }

    /// Evaluates the policy's penalty threshold to `as_of`. Sessions before `since`, the date
    /// the school moved to the policy, do not count towards it.
    pub(crate) fn penalty(
        &self,
        policy: &Policy,
        as_of: NaiveDate,
        since: Option<NaiveDate>,
    ) -> ThresholdEvaluation {
        let marks: Vec<(SessionDate, &str)> = self
            .marks
            .iter()
            .filter(|(session, _)| since.is_none_or(|since| session.date >= since))
            .map(|(session, code)| (*session, code.as_str()))
            .collect();
        evaluate_penalty_threshold(&policy.penalty_warning, &marks, as_of)
    }
}

/// A pupil's position on the rules about patterns of absence, under a policy on a date.
#[derive(Debug, Clone)]
pub(crate) struct Alerts {
    /// The policy's limit for unresolved N, and the N marks past it.
    pub(crate) unexplained: Option<(u32, Vec<SessionDate>)>,
    /// The policy's return rule, and the days counted towards it: the longest run for a
    /// continuous rule, all unauthorised days otherwise.
    pub(crate) unauthorised: Option<(u32, u32)>,
    /// The policy's sickness limit in days, and the days of sickness in the academic year.
    pub(crate) sickness: Option<(u32, u32)>,
}

impl Alerts {
    pub(crate) fn unexplained_met(&self) -> bool {
        self.unexplained
            .as_ref()
            .is_some_and(|(_, overdue)| !overdue.is_empty())
    }

    pub(crate) fn unauthorised_met(&self) -> bool {
        self.unauthorised.is_some_and(|(limit, days)| days >= limit)
    }

    pub(crate) fn sickness_met(&self) -> bool {
        self.sickness.is_some_and(|(limit, days)| days >= limit)
    }
}

/// A school's marks over a period.
#[derive(Debug, Clone)]
pub(crate) struct SchoolMarks {
    pub(crate) from: NaiveDate,
    pub(crate) as_of: NaiveDate,
    pub(crate) pupils: Vec<PupilMarks>,
}

/// Returns the school's phase; a school without one follows the secondary ladder, which is
/// also the juniors' ladder.
pub(crate) fn school_phase(school: &School) -> Phase {
    phase_from_proto(school.phase).unwrap_or(Phase::Secondary)
}

/// Reads the school and the as-of date: the date given, or the school's last date with marks.
pub(crate) async fn school_and_as_of(
    registers: &mut RegistersServiceClient<Channel>,
    laestab: &str,
    as_of: &str,
) -> Result<(School, Option<NaiveDate>), Status> {
    let school = registers
        .get_school(GetSchoolRequest {
            laestab: laestab.to_owned(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .school
        .unwrap_or_default();
    let as_of = if as_of.trim().is_empty() {
        parse_date(&school.last_mark_date).ok()
    } else {
        Some(parse_date(as_of).map_err(|error| invalid_argument("as_of", as_of, error.problem()))?)
    };
    Ok((school, as_of))
}

/// Returns how far before `as_of` marks are read for a penalty threshold: a rolling window of
/// school weeks may reach back over the summer into the previous academic year.
pub(crate) fn lookback(as_of: NaiveDate) -> NaiveDate {
    academic_year_start(as_of)
        .checked_sub_months(chrono::Months::new(12))
        .unwrap_or(NaiveDate::MIN)
}

/// Returns the pupils on roll at the school at some point in the academic year to `as_of`,
/// with their year groups.
pub(crate) async fn pupils_on_roll(
    registers: &mut RegistersServiceClient<Channel>,
    laestab: &str,
    as_of: NaiveDate,
) -> Result<BTreeMap<String, String>, Status> {
    let from = academic_year_start(as_of);
    Ok(all_pupils(registers, laestab)
        .await?
        .into_iter()
        .filter(|(_, enrolment)| on_roll_between(enrolment, from, as_of))
        .map(|(pupil, enrolment)| (pupil.upn, enrolment.year_group))
        .collect())
}

fn on_roll_between(enrolment: &Enrolment, from: NaiveDate, to: NaiveDate) -> bool {
    let admitted = parse_date(&enrolment.admission_date).unwrap_or(NaiveDate::MAX);
    let left = parse_date(&enrolment.leaving_date).ok();
    admitted <= to && left.is_none_or(|left| left >= from)
}

/// Reads every pupil on roll during the academic year to `as_of` and their effective marks,
/// optionally for one pupil only. Marks go back to [`lookback`] for penalty windows.
pub(crate) async fn load_school(
    registers: &mut RegistersServiceClient<Channel>,
    school: School,
    as_of: NaiveDate,
    only_upn: Option<&str>,
) -> Result<SchoolMarks, Status> {
    let from = academic_year_start(as_of);
    let mut pupils: BTreeMap<String, PupilMarks> = BTreeMap::new();

    let listed = match only_upn {
        Some(upn) => vec![pupil_at_school(registers, upn, &school.laestab).await?],
        None => all_pupils(registers, &school.laestab).await?,
    };
    for (pupil, enrolment) in listed {
        if !on_roll_between(&enrolment, from, as_of) {
            continue;
        }
        pupils.insert(
            pupil.upn.clone(),
            PupilMarks {
                upn: pupil.upn,
                year_group: enrolment.year_group,
                marks: Vec::new(),
            },
        );
    }

    let mut page_token = String::new();
    loop {
        let page = registers
            .list_marks(ListMarksRequest {
                laestab: school.laestab.clone(),
                upn: only_upn.unwrap_or_default().to_owned(),
                from_date: lookback(as_of).to_string(),
                to_date: as_of.to_string(),
                page_size: 20_000,
                page_token,
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        for mark in page.marks {
            let Some(pupil) = pupils.get_mut(&mark.upn) else {
                continue;
            };
            let Ok(date) = parse_date(&mark.date) else {
                continue;
            };
            let Some(session) = session_from_proto(mark.session) else {
                continue;
            };
            pupil.marks.push((SessionDate { date, session }, mark.code));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    Ok(SchoolMarks {
        from,
        as_of,
        pupils: pupils.into_values().collect(),
    })
}

/// Reads every pupil ever on roll at the school, each with their latest enrolment there.
pub(crate) async fn all_pupils(
    registers: &mut RegistersServiceClient<Channel>,
    laestab: &str,
) -> Result<Vec<(Pupil, Enrolment)>, Status> {
    let mut pupils = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = registers
            .list_pupils(ListPupilsRequest {
                laestab: laestab.to_owned(),
                on_roll_date: String::new(),
                page_size: 5_000,
                page_token,
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        for mut pupil in page.pupils {
            if let Some(enrolment) = pupil.enrolments.first().cloned() {
                pupil.enrolments.clear();
                pupils.push((pupil, enrolment));
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(pupils);
        }
        page_token = page.next_page_token;
    }
}

/// Reads one pupil and their latest enrolment at the school.
async fn pupil_at_school(
    registers: &mut RegistersServiceClient<Channel>,
    upn: &str,
    laestab: &str,
) -> Result<(Pupil, Enrolment), Status> {
    let mut pupil = registers
        .get_pupil(GetPupilRequest {
            upn: upn.to_owned(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .pupil
        .unwrap_or_default();
    let enrolment = pupil
        .enrolments
        .iter()
        .find(|enrolment| enrolment.laestab == laestab)
        .cloned()
        .ok_or_else(|| not_found(&format!("enrolment at school {laestab} of pupil"), upn))?;
    pupil.enrolments.clear();
    Ok((pupil, enrolment))
}

/// Converts domain figures to the protobuf message, with the persistent and severe absence
/// flags by the policy's thresholds.
pub(crate) fn figures_to_proto(figures: &Figures, policy: &Policy) -> AttendanceFigures {
    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    AttendanceFigures {
        possible_sessions: count(figures.possible()),
        attended_sessions: count(figures.attended()),
        present_sessions: count(figures.present),
        approved_activity_sessions: count(figures.approved_activity),
        authorised_absence_sessions: count(figures.authorised_absence),
        unauthorised_absence_sessions: count(figures.unauthorised_absence),
        not_possible_sessions: count(figures.not_possible),
        attendance_percent: figures.attendance_percent(),
        persistent_absence: policy.is_persistent_absence(figures),
        severe_absence: policy.is_severe_absence(figures),
    }
}
