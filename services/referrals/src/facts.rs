//! Gathering what a referral's prerequisites are checked on and what its pack carries: the
//! figures and thresholds from the policy service, the pupil, calendar, marks and contacts from
//! the registers, and the case file from the cases service.

use chrono::NaiveDate;
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::cases::v1::{GetCaseTimelineRequest, GetReferralEvidenceRequest, TimelineEntry};
use rollcall_api::cases::v1::{GetReferralEvidenceResponse, SentLetter};
use rollcall_api::client::Channel;
use rollcall_api::convert::session_from_proto;
use rollcall_api::mis_adapter::v1::mis_adapter_service_client::MisAdapterServiceClient;
use rollcall_api::policy::v1::policy_service_client::PolicyServiceClient;
use rollcall_api::policy::v1::{
    GetPenaltyNoticeTermsRequest, GetPupilAttendanceRequest, GetPupilAttendanceResponse,
    ThresholdStatus,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    Contact, GetPupilRequest, GetSchoolRequest, ListMarksRequest, ListPupilContactsRequest, Mark,
    Pupil, School,
};
use rollcall_domain::Session;
use rollcall_domain::referrals::{
    ReferralFacts, ReferralKind, longest_unauthorised_run, sickness_days,
};
use rollcall_domain::session::{academic_year_of, parse_date};
use rollcall_runtime::grpc::upstream_error;
use tonic::{Code, Status};

use crate::config::ReferralsConfig;

/// The template of the letter that warns parents a penalty notice may follow.
const WARNING_LETTER_TEMPLATE: &str = "penalty-warning-letter";

/// Returns the threshold rules that can show a referral is warranted, in the order tried.
fn threshold_rules(kind: ReferralKind) -> &'static [&'static str] {
    match kind {
        ReferralKind::PenaltyNotice => &["penalty_notice_warning"],
        _ => &[
            "penalty_notice_warning",
            "persistent_absence",
            "severe_absence",
        ],
    }
}

/// The clients the referrals service reads through.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) registers: RegistersServiceClient<Channel>,
    pub(crate) policy: PolicyServiceClient<Channel>,
    pub(crate) cases: CasesServiceClient<Channel>,
    /// Hands submitted packs over for delivery to the local authority.
    pub(crate) adapter: MisAdapterServiceClient<Channel>,
}

/// Everything gathered for one referral.
#[derive(Debug, Clone)]
pub(crate) struct Gathered {
    pub(crate) school: School,
    pub(crate) pupil: Pupil,
    pub(crate) year_group: String,
    pub(crate) attendance: GetPupilAttendanceResponse,
    /// The threshold the referral rests on.
    pub(crate) threshold: ThresholdStatus,
    pub(crate) marks: Vec<Mark>,
    pub(crate) evidence: GetReferralEvidenceResponse,
    pub(crate) chronology: Vec<TimelineEntry>,
    pub(crate) contacts: Vec<Contact>,
    pub(crate) facts: ReferralFacts,
}

impl Gathered {
    /// Returns the attendance period the figures and marks cover, when the policy service
    /// gave one that reads as dates.
    pub(crate) fn period(&self) -> Option<(NaiveDate, NaiveDate)> {
        let period = self.attendance.period.as_ref()?;
        let from = NaiveDate::parse_from_str(&period.from_date, "%Y-%m-%d").ok()?;
        let to = NaiveDate::parse_from_str(&period.to_date, "%Y-%m-%d").ok()?;
        Some((from, to))
    }

    /// Returns the letters sent to the parents that have a PDF filed.
    pub(crate) fn letters_with_documents(&self) -> impl Iterator<Item = &SentLetter> {
        self.evidence
            .letters
            .iter()
            .filter(|letter| letter.has_document)
    }
}

fn registers_error(status: Status) -> Status {
    upstream_error("registers", status)
}

/// The referral the facts are gathered for.
pub(crate) struct Subject<'a> {
    pub(crate) kind: ReferralKind,
    pub(crate) upn: &'a str,
    /// The school; empty for the school of the pupil's latest enrolment.
    pub(crate) laestab: &'a str,
    /// Figures as of this date; empty for the school's last date with marks.
    pub(crate) as_of: &'a str,
    /// The date the referral is made, which the prerequisites are checked on.
    pub(crate) on: NaiveDate,
    /// The dates of penalty notices already issued for this pupil, withdrawn ones left out.
    pub(crate) earlier_notices: &'a [NaiveDate],
}

/// Gathers the facts for a referral.
pub(crate) async fn gather(
    upstream: &Upstream,
    config: &ReferralsConfig,
    subject: Subject<'_>,
) -> Result<Gathered, Status> {
    let Subject {
        kind,
        upn,
        laestab,
        as_of,
        on,
        earlier_notices,
    } = subject;
    let attendance = upstream
        .policy
        .clone()
        .get_pupil_attendance(GetPupilAttendanceRequest {
            upn: upn.to_owned(),
            laestab: laestab.to_owned(),
            as_of: as_of.to_owned(),
        })
        .await
        .map_err(|status| upstream_error("policy", status))?
        .into_inner();
    let record = attendance.attendance.clone().unwrap_or_default();
    let period = attendance.period.clone().unwrap_or_default();
    let school_id = record.laestab.clone();
    let rules = threshold_rules(kind);
    let threshold = rules
        .iter()
        .filter_map(|rule| {
            attendance
                .thresholds
                .iter()
                .find(|threshold| threshold.rule_id == *rule)
        })
        .find(|threshold| threshold.met)
        .or_else(|| {
            attendance
                .thresholds
                .iter()
                .find(|threshold| threshold.rule_id == rules[0])
        })
        .cloned()
        .ok_or_else(|| {
            Status::internal(format!(
                "the policy for school {school_id} reports no {} threshold",
                rules[0]
            ))
        })?;

    let mut registers = upstream.registers.clone();
    let school = registers
        .get_school(GetSchoolRequest {
            laestab: school_id.clone(),
        })
        .await
        .map_err(registers_error)?
        .into_inner()
        .school
        .unwrap_or_default();
    let pupil = registers
        .get_pupil(GetPupilRequest {
            upn: upn.to_owned(),
        })
        .await
        .map_err(registers_error)?
        .into_inner()
        .pupil
        .unwrap_or_default();
    let marks = list_marks(
        &mut registers,
        &school_id,
        upn,
        &period.from_date,
        &period.to_date,
    )
    .await?;
    let contacts = registers
        .list_pupil_contacts(ListPupilContactsRequest {
            upn: upn.to_owned(),
        })
        .await
        .map_err(registers_error)?
        .into_inner()
        .contacts;
    let days = rollcall_api::school_days::of_school(&registers, &school_id)
        .await
        .map_err(registers_error)?;

    let mut cases = upstream.cases.clone();
    let evidence = cases
        .get_referral_evidence(GetReferralEvidenceRequest {
            upn: upn.to_owned(),
            laestab: school_id.clone(),
        })
        .await
        .map_err(|status| upstream_error("cases", status))?
        .into_inner();
    let chronology = match &evidence.r#case {
        Some(case) => {
            cases
                .get_case_timeline(GetCaseTimelineRequest {
                    case_id: case.id.clone(),
                })
                .await
                .map_err(|status| upstream_error("cases", status))?
                .into_inner()
                .entries
        }
        None => Vec::new(),
    };

    // NOTE: the limit is the policy's per parent per child, but notices are recorded per child
    // (one referral each), so every notice issued for the child counts.
    let (notice_allowed, notice_explanation) = if kind == ReferralKind::PenaltyNotice {
        let terms = upstream
            .policy
            .clone()
            .get_penalty_notice_terms(GetPenaltyNoticeTermsRequest {
                laestab: school_id.clone(),
                on_date: on.to_string(),
                earlier_notices: earlier_notices
                    .iter()
                    .filter(|date| **date <= on)
                    .map(ToString::to_string)
                    .collect(),
            })
            .await;
        match terms {
            Ok(terms) => {
                let terms = terms.into_inner();
                (terms.allowed, terms.explanation)
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                (false, status.message().to_owned())
            }
            Err(status) => return Err(upstream_error("policy", status)),
        }
    } else {
        (true, String::new())
    };

    let warning = evidence
        .letters
        .iter()
        .filter(|letter| letter.template == WARNING_LETTER_TEMPLATE)
        .filter_map(|letter| parse_date(&letter.sent_on).ok())
        .max();
    let enrolment = pupil
        .enrolments
        .iter()
        .find(|enrolment| enrolment.laestab == school_id)
        .cloned()
        .unwrap_or_default();
    let admission = parse_date(&enrolment.admission_date).ok();
    let this_year = academic_year_of(on);
    let facts = ReferralFacts {
        stages_outstanding: evidence.stages_outstanding.clone(),
        has_case: evidence.r#case.is_some(),
        warning_letter_sent_on: warning,
        school_days_since_warning: warning.map(|sent| days.between(sent, on)),
        warning_school_days_required: config.warning_school_days,
        threshold_met: threshold.met,
        threshold_sessions: threshold
            .counted
            .iter()
            .map(|counted| {
                format!(
                    "{} {} ({})",
                    counted.date,
                    session_from_proto(counted.session).map_or("", Session::as_str),
                    counted.code
                )
            })
            .collect(),
        circumstances_assessed_on: evidence
            .assessed_on
            .iter()
            .filter_map(|date| parse_date(date).ok())
            .max(),
        support_offered: evidence.support_offered.clone(),
        independent_school: config.independent_schools.contains(&school_id),
        notice_allowed,
        notice_explanation,
        continuous_unauthorised_days: longest_unauthorised_run(
            marks
                .iter()
                .filter_map(|mark| Some((parse_date(&mark.date).ok()?, mark.code.as_str()))),
        ),
        sickness_days: sickness_days(marks.iter().map(|mark| mark.code.as_str())),
        school_days_since_admission: admission
            .filter(|admitted| academic_year_of(*admitted) == this_year && *admitted <= on)
            .map(|admitted| days.between(admitted, on)),
        deletion_ground: Some(enrolment.leaving_reason.clone())
            .filter(|ground| !ground.trim().is_empty() && !enrolment.leaving_date.is_empty()),
    };
    Ok(Gathered {
        school,
        year_group: record.year_group.clone(),
        pupil,
        attendance,
        threshold,
        marks,
        evidence,
        chronology,
        contacts,
        facts,
    })
}

async fn list_marks(
    registers: &mut RegistersServiceClient<Channel>,
    laestab: &str,
    upn: &str,
    from: &str,
    to: &str,
) -> Result<Vec<Mark>, Status> {
    let mut marks = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = registers
            .list_marks(ListMarksRequest {
                laestab: laestab.to_owned(),
                upn: upn.to_owned(),
                from_date: from.to_owned(),
                to_date: to.to_owned(),
                page_size: 5_000,
                page_token,
            })
            .await
            .map_err(registers_error)?
            .into_inner();
        marks.extend(page.marks);
        if page.next_page_token.is_empty() {
            return Ok(marks);
        }
        page_token = page.next_page_token;
    }
}
