//! CheckAggregates: the totals kept from the change feed against a recomputation from the
//! registers, pupil by pupil.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rollcall_api::client::Channel;
use rollcall_api::policy::v1::{
    AggregateMismatch, CheckAggregatesRequest, CheckAggregatesResponse,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_domain::session::{academic_year_of, academic_year_start};
use rollcall_domain::{Figures, SessionDate};
use rollcall_runtime::grpc::{failed_precondition, laestab, storage_error};
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::figures::{figures_to_proto, load_school, school_and_as_of};
use crate::follower::{REGISTERS_FEED, StoredTotals};
use crate::policies;
use rollcall_runtime::storage::stored_cursor;

#[derive(Debug, sqlx::FromRow)]
struct KeptMark {
    upn: String,
    session_date: NaiveDate,
    session: String,
    code: String,
}

/// Compares the kept totals and marks of a school's pupils with the registers.
pub(crate) async fn check(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    request: CheckAggregatesRequest,
) -> Result<CheckAggregatesResponse, Status> {
    let school_id = laestab("laestab", &request.laestab)?;
    let mut registers = registers.clone();
    let (school, as_of) = school_and_as_of(&mut registers, &school_id, &request.as_of).await?;
    let as_of = as_of.ok_or_else(|| {
        failed_precondition(format!(
            "school {school_id} has no marks yet, so there is nothing to check"
        ))
    })?;
    let year = academic_year_of(as_of);
    let from = academic_year_start(as_of);
    let registers_cursor = stored_cursor(db, REGISTERS_FEED)
        .await
        .map_err(|error| storage_error("reading the sync state", error))?;
    let recomputed = load_school(&mut registers, school, as_of, None).await?;

    let (kept_marks, kept_totals): (Vec<KeptMark>, Vec<StoredTotals>) =
        with_db!(db, |pool| async {
            let marks = sqlx::query_as(
                "SELECT upn, session_date, session, code FROM pupil_marks \
             WHERE laestab = $1 AND session_date >= $2 AND session_date <= $3",
            )
            .bind(&school_id)
            .bind(from)
            .bind(as_of)
            .fetch_all(pool)
            .await?;
            let totals = sqlx::query_as(
                "SELECT upn, academic_year, present, approved_activity, authorised, unauthorised, \
             not_possible FROM pupil_totals WHERE laestab = $1 AND academic_year = $2",
            )
            .bind(&school_id)
            .bind(year)
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((marks, totals))
        }
        .await)
        .map_err(|error| storage_error("reading the kept totals", error))?;

    let mut kept_codes: BTreeMap<(String, NaiveDate, String), String> = BTreeMap::new();
    for mark in kept_marks {
        kept_codes.insert((mark.upn, mark.session_date, mark.session), mark.code);
    }
    let totals: BTreeMap<String, Figures> = kept_totals
        .iter()
        .map(|row| (row.upn.clone(), row.figures()))
        .collect();
    let policy = policies::policy_for(db, &school_id, as_of).await?.policy;

    let mut mismatches = Vec::new();
    for pupil in &recomputed.pupils {
        let fresh = pupil.figures(from);
        let kept = totals.get(&pupil.upn).copied().unwrap_or_default();
        let in_year: Vec<&(SessionDate, String)> = pupil
            .marks
            .iter()
            .filter(|(session, _)| session.date >= from)
            .collect();
        let mut differing = in_year
            .iter()
            .filter(|(session, code)| {
                kept_codes.get(&(
                    pupil.upn.clone(),
                    session.date,
                    session.session.as_str().to_owned(),
                )) != Some(code)
            })
            .count();
        let kept_count = kept_codes
            .keys()
            .filter(|(upn, _, _)| *upn == pupil.upn)
            .count();
        differing += kept_count.saturating_sub(in_year.len());
        if fresh != kept || differing > 0 {
            tracing::warn!(upn = %pupil.upn, laestab = %school_id, differing, "Kept totals differ from the registers");
            mismatches.push(AggregateMismatch {
                upn: pupil.upn.clone(),
                kept: Some(figures_to_proto(&kept, &policy)),
                recomputed: Some(figures_to_proto(&fresh, &policy)),
                sessions_differing: i32::try_from(differing).unwrap_or(i32::MAX),
            });
        }
    }
    Ok(CheckAggregatesResponse {
        pupils_checked: i32::try_from(recomputed.pupils.len()).unwrap_or(i32::MAX),
        mismatches,
        registers_cursor,
        academic_year: year,
    })
}
