//! ListRewards: the pupils who earned a reward for attendance or punctuality over a range.

use std::collections::BTreeMap;

use chrono::Days;
use rollcall_api::client::Channel;
use rollcall_api::policy::v1::{
    GetAttendanceStatisticsRequest, ListRewardsRequest, ListRewardsResponse, Period, PupilRewards,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_domain::policy::rewards::{self, Period as RewardPeriod};
use rollcall_domain::session::parse_date;
use rollcall_runtime::Db;
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, laestab};
use tonic::Status;

use crate::figures::school_and_as_of;
use crate::policies;
use crate::statistics::{CodeSource, Scope, range_start, school_pupils};

/// Answers ListRewards.
pub(crate) async fn list(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: ListRewardsRequest,
) -> Result<ListRewardsResponse, Status> {
    let school = laestab("laestab", &request.laestab)?;
    let mut registers = registers.clone();
    let (_, last) = school_and_as_of(&mut registers, &school, "").await?;
    let as_of = if request.as_of.trim().is_empty() {
        last.ok_or_else(|| {
            failed_precondition(format!("school {school} has no marks yet, so no rewards"))
        })?
    } else {
        parse_date(&request.as_of)
            .map_err(|error| invalid_argument("as_of", &request.as_of, error.problem()))?
    };
    let version = policies::policy_for(db, &school, as_of).await?;
    let Some(rules) = version.policy.rewards.clone() else {
        return Err(failed_precondition(format!(
            "policy {} that school {school} follows on {as_of} offers no rewards; rewards come \
             from a trust policy with a [rewards] table, so load one or move the school to one",
            version.policy.id
        )));
    };

    let range = GetAttendanceStatisticsRequest {
        range: request.range,
        weeks: request.weeks,
        from_date: request.from_date.clone(),
        ..GetAttendanceStatisticsRequest::default()
    };
    let from = range_start(&mut registers, &range, &school, as_of).await?;
    let days = (as_of - from).num_days().unsigned_abs() + 1;
    let previous_to = from.checked_sub_days(Days::new(1)).unwrap_or(from);
    let previous_from = from.checked_sub_days(Days::new(days)).unwrap_or(from);

    let scope = Scope {
        year_group: Some(request.year_group.trim().to_owned()).filter(|v| !v.is_empty()),
        class_name: Some(request.class_name.trim().to_owned()).filter(|v| !v.is_empty()),
        upn: None,
    };
    let current = school_pupils(
        &mut registers,
        &school,
        from,
        as_of,
        &scope,
        CodeSource::Registers,
    )
    .await?;
    let previous: BTreeMap<String, RewardPeriod> = school_pupils(
        &mut registers,
        &school,
        previous_from,
        previous_to,
        &scope,
        CodeSource::Registers,
    )
    .await?
    .into_iter()
    .map(|pupil| {
        let period = RewardPeriod::from_codes(pupil.each_code());
        (pupil.upn, period)
    })
    .collect();

    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    let mut pupils = Vec::new();
    for pupil in current {
        let now = RewardPeriod::from_codes(pupil.each_code());
        let before = previous.get(&pupil.upn);
        let earned = rewards::rewards(&rules, &now, before);
        if earned.is_empty() {
            continue;
        }
        pupils.push(PupilRewards {
            upn: pupil.upn,
            year_group: pupil.enrolment.year_group,
            class_name: pupil.enrolment.class_name,
            rewards: earned.iter().map(|r| r.as_str().to_owned()).collect(),
            attendance_percent: now.figures.attendance_percent(),
            previous_attendance_percent: before.and_then(|p| p.figures.attendance_percent()),
            lates: count(now.lates),
            previous_lates: before.map_or(0, |p| count(p.lates)),
        });
    }
    Ok(ListRewardsResponse {
        period: Some(Period {
            from_date: from.to_string(),
            to_date: as_of.to_string(),
        }),
        previous_period: Some(Period {
            from_date: previous_from.to_string(),
            to_date: previous_to.to_string(),
        }),
        pupils,
        policy_id: version.policy.id,
        clause: rules.clause.reference,
    })
}
