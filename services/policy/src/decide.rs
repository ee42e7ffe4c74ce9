//! DecideAbsence: checks the request, counts the days of illness from the registers, and takes
//! the decision from the domain library. With `record` set, it writes the decision to the
//! registers.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Days, NaiveDate};
use rollcall_api::client::Channel;
use rollcall_api::convert::session_from_proto;
use rollcall_api::policy::v1::{
    DecideAbsenceRequest, DecideAbsenceResponse, PolicyRule, SessionDecision,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{AmendMarkRequest, GetPupilRequest, ListMarksRequest};
use rollcall_api::types::v1::{MarkSource, Session as PbSession};
use rollcall_domain::codes::category_of;
use rollcall_domain::policy::decide::{
    AbsenceDecision, AbsenceQuestion, DecisionError, decide_absence,
};
use rollcall_domain::session::parse_date;
use rollcall_domain::{Session, SessionDate};
use rollcall_runtime::Db;
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, laestab, upstream_error};
use tonic::{Code, Status};

use crate::policies;

/// How far back the registers are read to count days of illness in a row.
const ILLNESS_LOOKBACK_DAYS: u64 = 120;

struct Checked {
    upn: String,
    laestab: String,
    sessions: Vec<SessionDate>,
}

fn check(request: &DecideAbsenceRequest) -> Result<Checked, Status> {
    let upn = request.upn.trim().to_ascii_uppercase();
    if upn.is_empty() {
        return Err(invalid_argument("upn", "", "a UPN is required"));
    }
    let laestab = laestab("laestab", &request.laestab)?;
    if request.sessions.is_empty() {
        return Err(invalid_argument(
            "sessions",
            "",
            "name at least one session (date and AM or PM) to decide on",
        ));
    }
    let mut sessions = BTreeSet::new();
    for (index, session) in request.sessions.iter().enumerate() {
        let date = parse_date(&session.date).map_err(|error| {
            invalid_argument(
                &format!("sessions[{index}].date"),
                &session.date,
                error.problem(),
            )
        })?;
        let half = session_from_proto(session.session).ok_or_else(|| {
            invalid_argument(
                &format!("sessions[{index}].session"),
                &session.session.to_string(),
                "choose AM or PM",
            )
        })?;
        sessions.insert(SessionDate {
            date,
            session: half,
        });
    }
    if request.reason.trim().is_empty() {
        return Err(invalid_argument(
            "reason",
            "",
            "give the reason for the absence as the policy names it, such as illness",
        ));
    }
    if request.decided_by.trim().is_empty() {
        return Err(invalid_argument(
            "decided_by",
            "",
            "give the name of the person deciding",
        ));
    }
    if request.record && request.request_id.trim().is_empty() {
        return Err(invalid_argument(
            "request_id",
            "",
            "an idempotency key is required to record a decision",
        ));
    }
    Ok(Checked {
        upn,
        laestab,
        sessions: sessions.into_iter().collect(),
    })
}

/// Reads the pupil's effective marks between two dates, by session.
async fn marks_between(
    registers: &mut RegistersServiceClient<Channel>,
    checked: &Checked,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<BTreeMap<SessionDate, String>, Status> {
    let mut marks = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = registers
            .list_marks(ListMarksRequest {
                laestab: checked.laestab.clone(),
                upn: checked.upn.clone(),
                from_date: from.to_string(),
                to_date: to.to_string(),
                page_size: 0,
                page_token,
            })
            .await
            .map_err(|status| upstream_error("registers", status))?
            .into_inner();
        for mark in page.marks {
            if let (Ok(date), Some(session)) =
                (parse_date(&mark.date), session_from_proto(mark.session))
            {
                marks.insert(SessionDate { date, session }, mark.code);
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(marks);
        }
        page_token = page.next_page_token;
    }
}

/// Counts school days of illness in a row: the days decided on, plus the days with marks just
/// before them on which every mark is I. Days without marks (weekends, holidays) are passed
/// over.
fn illness_days(
    sessions: &[SessionDate],
    before: &BTreeMap<SessionDate, String>,
    first: NaiveDate,
) -> u32 {
    let decided: BTreeSet<NaiveDate> = sessions.iter().map(|session| session.date).collect();
    let mut by_day: BTreeMap<NaiveDate, Vec<&str>> = BTreeMap::new();
    for (session, code) in before.range(
        ..SessionDate {
            date: first,
            session: Session::Am,
        },
    ) {
        by_day.entry(session.date).or_default().push(code.as_str());
    }
    let earlier = by_day
        .values()
        .rev()
        .take_while(|codes| codes.iter().all(|code| *code == "I"))
        .count();
    u32::try_from(decided.len() + earlier).unwrap_or(u32::MAX)
}

/// Decides on an absence and, when asked, records it in the registers.
pub(crate) async fn decide(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: DecideAbsenceRequest,
) -> Result<DecideAbsenceResponse, Status> {
    let checked = check(&request)?;
    let first = checked.sessions.first().map_or(NaiveDate::MIN, |s| s.date);
    let last = checked.sessions.last().map_or(NaiveDate::MIN, |s| s.date);
    let policy = policies::policy_for(db, &checked.laestab, first).await?;
    let at_end = policies::policy_for(db, &checked.laestab, last).await?;
    if at_end.policy.id != policy.policy.id || at_end.policy.version != policy.policy.version {
        return Err(invalid_argument(
            "sessions",
            &format!("{first} to {last}"),
            format!(
                "the sessions fall under two policies ({} on {first}, {} on {last}); decide them \
                 separately",
                policy.policy.id, at_end.policy.id
            ),
        ));
    }

    let mut registers = registers.clone();
    check_on_roll(&mut registers, &checked, first, last).await?;
    let lookback = first
        .checked_sub_days(Days::new(ILLNESS_LOOKBACK_DAYS))
        .unwrap_or(first);
    let marks = marks_between(&mut registers, &checked, lookback, last).await?;
    let earlier_illness = illness_days(&[], &marks, first);

    // Each day is decided on its own: an illness may pass the medical evidence limit part way.
    let days: Vec<NaiveDate> = checked
        .sessions
        .iter()
        .map(|session| session.date)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut by_day: BTreeMap<NaiveDate, (AbsenceDecision, u32)> = BTreeMap::new();
    for (index, day) in days.iter().enumerate() {
        let illness = earlier_illness + u32::try_from(index + 1).unwrap_or(u32::MAX);
        let question = AbsenceQuestion {
            reason: request.reason.trim(),
            decider_role: &request.decider_role.trim().to_ascii_lowercase(),
            staff_doubt: request.staff_doubt,
            medical_evidence: request.medical_evidence,
            illness_days: illness,
        };
        let decision = match decide_absence(&policy.policy, &question) {
            Ok(decision) => decision,
            Err(error @ DecisionError::NotPermitted { .. }) => {
                tracing::warn!(
                    upn = %checked.upn,
                    laestab = %checked.laestab,
                    role = %request.decider_role,
                    policy = %policy.policy.id,
                    "Refused an absence decision from a role that may not decide"
                );
                return Err(Status::new(Code::PermissionDenied, error.to_string()));
            }
            Err(error @ DecisionError::UnknownReason { .. }) => {
                return Err(invalid_argument(
                    "reason",
                    &request.reason,
                    error.to_string(),
                ));
            }
        };
        by_day.insert(*day, (decision, illness));
    }
    let is_illness = request.reason.trim() == "illness";

    let mut feed_cursor = 0;
    if request.record {
        if let Some(missing) = checked
            .sessions
            .iter()
            .find(|session| !marks.contains_key(session))
        {
            return Err(failed_precondition(format!(
                "pupil {} has no mark for {} {} at school {}, so there is no absence to decide \
                 on; take the register first",
                checked.upn,
                missing.date,
                missing.session.as_str(),
                checked.laestab
            )));
        }
        // A decision on absence replaces absence marks only, never attendance or a closure.
        let kept: Vec<String> = checked
            .sessions
            .iter()
            .filter_map(|session| {
                let code = marks.get(session)?;
                (!category_of(code).is_absence())
                    .then(|| format!("{} {} ({code})", session.date, session.session.as_str()))
            })
            .collect();
        if !kept.is_empty() {
            return Err(failed_precondition(format!(
                "pupil {} was not absent at {}: a decision on absence does not replace \
                 attendance or a session that was not possible; check the dates, or amend \
                 those marks first",
                checked.upn,
                kept.join(", ")
            )));
        }
        for session in &checked.sessions {
            let Some((decision, _)) = by_day.get(&session.date) else {
                continue;
            };
            let mut reason = format!(
                "Decided by the {}: {}",
                request.decider_role.trim().replace('_', " "),
                decision.explanation
            );
            if !request.evidence_note.trim().is_empty() {
                reason.push_str(&format!(" Evidence: {}", request.evidence_note.trim()));
            }
            let response = registers
                .amend_mark(AmendMarkRequest {
                    request_id: format!(
                        "{}:{}:{}",
                        request.request_id.trim(),
                        session.date,
                        session.session.as_str()
                    ),
                    upn: checked.upn.clone(),
                    laestab: checked.laestab.clone(),
                    date: session.date.to_string(),
                    session: PbSession::from(session.session) as i32,
                    code: decision.code.clone(),
                    minutes_late: 0,
                    reason,
                    recorded_by: request.decided_by.trim().to_owned(),
                    recorded_by_position: request.decider_role.trim().to_owned(),
                    source: MarkSource::Staff as i32,
                    absence_report_id: request.absence_report_id.trim().to_owned(),
                })
                .await
                .map_err(|status| upstream_error("registers", status))?
                .into_inner();
            if let Some(mark) = response.mark {
                feed_cursor = feed_cursor.max(mark.sequence);
            }
        }
        tracing::info!(
            upn = %checked.upn,
            laestab = %checked.laestab,
            sessions = checked.sessions.len(),
            "Absence decision recorded"
        );
    }

    let decisions: Vec<SessionDecision> = checked
        .sessions
        .iter()
        .filter_map(|session| {
            let (decision, illness) = by_day.get(&session.date)?;
            Some(SessionDecision {
                date: session.date.to_string(),
                session: PbSession::from(session.session) as i32,
                code: decision.code.clone(),
                authorised: decision.authorised,
                explanation: decision.explanation.clone(),
                illness_days: if is_illness {
                    i32::try_from(*illness).unwrap_or(i32::MAX)
                } else {
                    0
                },
            })
        })
        .collect();
    let Some((decision, illness)) = by_day.values().last().cloned() else {
        return Err(invalid_argument("sessions", "", "no session to decide on"));
    };
    let mut clauses: Vec<PolicyRule> = Vec::new();
    for (day_decision, _) in by_day.values() {
        for clause in &day_decision.clauses {
            if !clauses.iter().any(|c| c.clause == clause.reference) {
                clauses.push(PolicyRule {
                    id: String::new(),
                    description: clause.summary.clone(),
                    clause: clause.reference.clone(),
                });
            }
        }
    }
    let authorised = by_day.values().all(|(d, _)| d.authorised);
    Ok(DecideAbsenceResponse {
        code: decision.code,
        authorised,
        explanation: decision.explanation,
        clauses,
        policy_id: policy.policy.id,
        policy_version: policy.policy.version,
        illness_days: if is_illness {
            i32::try_from(illness).unwrap_or(i32::MAX)
        } else {
            0
        },
        feed_cursor,
        decisions,
    })
}

/// Checks that the pupil is on roll at the school from `first` to `last`.
async fn check_on_roll(
    registers: &mut RegistersServiceClient<Channel>,
    checked: &Checked,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<(), Status> {
    let pupil = registers
        .get_pupil(GetPupilRequest {
            upn: checked.upn.clone(),
        })
        .await
        .map_err(|status| upstream_error("registers", status))?
        .into_inner()
        .pupil
        .unwrap_or_default();
    let on_roll = pupil.enrolments.iter().any(|enrolment| {
        let admitted = parse_date(&enrolment.admission_date).unwrap_or(NaiveDate::MAX);
        let left = parse_date(&enrolment.leaving_date).ok();
        enrolment.laestab == checked.laestab
            && admitted <= first
            && left.is_none_or(|left| left >= last)
    });
    if on_roll {
        Ok(())
    } else {
        Err(failed_precondition(format!(
            "pupil {} is not on roll at school {} from {first} to {last}; check the school and \
             the dates",
            checked.upn, checked.laestab
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32, session: Session) -> SessionDate {
        SessionDate {
            date: NaiveDate::from_ymd_opt(2025, 9, day).expect("valid date"),
            session,
        }
    }

    #[test]
    fn illness_days_count_back_over_weekends() {
        // Thursday 4 and Friday 5 September ill, the weekend without marks, Monday 8 decided.
        let mut before = BTreeMap::new();
        before.insert(at(3, Session::Am), "/".to_owned());
        before.insert(at(3, Session::Pm), "I".to_owned());
        for day in [4, 5] {
            before.insert(at(day, Session::Am), "I".to_owned());
            before.insert(at(day, Session::Pm), "I".to_owned());
        }
        before.insert(at(8, Session::Am), "N".to_owned());
        let decided = [at(8, Session::Am), at(8, Session::Pm)];
        assert_eq!(illness_days(&decided, &before, at(8, Session::Am).date), 3);
    }

    #[test]
    fn illness_days_without_earlier_illness() {
        let mut before = BTreeMap::new();
        before.insert(at(5, Session::Am), "/".to_owned());
        let decided = [at(8, Session::Am), at(9, Session::Am)];
        assert_eq!(illness_days(&decided, &before, at(8, Session::Am).date), 2);
    }
}
