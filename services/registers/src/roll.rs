//! The roll: session registers, leavers, and the retention of old marks.

use std::collections::HashMap;

use chrono::{Months, NaiveDate, Utc};
use rollcall_api::registers::v1::{
    ApplyRetentionResponse, Enrolment, RecordLeavingRequest, RegisterEntry, RetentionRemoval,
};
use rollcall_domain::{Session, Upn};
use rollcall_runtime::grpc::{invalid_argument, laestab, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::FEED_LOCK_KEY;
use crate::convert::required_date;
use crate::store;

/// How long register entries are kept: at least six years.
pub(crate) const RETENTION_YEARS: u32 = 6;

/// Which pupils a session register lists.
#[derive(Debug, Default)]
pub(crate) struct RegisterFilter {
    /// Only this year group.
    pub(crate) year_group: Option<String>,
    /// Only this class or registration group.
    pub(crate) class_name: Option<String>,
}

/// Builds the register of one session: every pupil on roll that day, with their mark if any.
pub(crate) async fn session_register(
    db: &Db,
    school: &str,
    date: NaiveDate,
    session: Session,
    filter: &RegisterFilter,
) -> Result<Vec<RegisterEntry>, Status> {
    let pupils = store::pupils_at(db, school, Some(date), "", i64::MAX)
        .await
        .map_err(|e| storage_error("listing pupils", e))?;
    let mut marks: HashMap<String, crate::convert::MarkRow> = store::marks_on(db, school, date)
        .await
        .map_err(|e| storage_error("reading marks", e))?
        .into_iter()
        .filter(|row| row.session == session.as_str())
        .map(|row| (row.upn.clone(), row))
        .collect();
    Ok(pupils
        .into_iter()
        .filter(|(_, enrolment)| {
            filter
                .year_group
                .as_ref()
                .is_none_or(|group| enrolment.year_group == *group)
                && filter
                    .class_name
                    .as_ref()
                    .is_none_or(|class| enrolment.class_name == *class)
        })
        .map(|(pupil, enrolment)| RegisterEntry {
            mark: marks.remove(&pupil.upn).map(|row| row.into_proto()),
            upn: pupil.upn,
            year_group: enrolment.year_group,
            class_name: enrolment.class_name,
        })
        .collect())
}

/// Ends a pupil's enrolment at a school on the leaving date.
/// The open enrolment a leaving closes.
#[derive(Debug, sqlx::FromRow)]
struct OpenEnrolment {
    admission_date: NaiveDate,
    year_group: String,
    registration: String,
    class_name: String,
    sen_provision: String,
    free_school_meals: String,
}

pub(crate) async fn record_leaving(
    db: &Db,
    request: &RecordLeavingRequest,
) -> Result<Enrolment, Status> {
    let upn = Upn::parse(&request.upn)
        .map_err(|error| invalid_argument("upn", &request.upn, error.to_string()))?
        .to_string();
    let school = laestab("laestab", &request.laestab)?;
    let leaving = required_date("leaving_date", &request.leaving_date)?;
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(invalid_argument(
            "reason",
            &request.reason,
            "the ground for removing the pupil from the admission register is required",
        ));
    }
    let recorded_by = request.recorded_by.trim();
    if recorded_by.is_empty() {
        return Err(invalid_argument(
            "recorded_by",
            &request.recorded_by,
            "the name of the person recording the leaving is required",
        ));
    }
    let store_error = |error| storage_error("recording a leaving", error);

    with_db!(db, |pool| {
        let mut tx = pool.begin_write(FEED_LOCK_KEY).await.map_err(store_error)?;
        let open: Option<OpenEnrolment> = sqlx::query_as(
            "SELECT admission_date, year_group, registration, class_name, sen_provision, \
             free_school_meals FROM enrolments \
             WHERE laestab = $1 AND upn = $2 AND admission_date <= $3 AND leaving_date IS NULL \
             ORDER BY admission_date DESC LIMIT 1",
        )
        .bind(&school)
        .bind(&upn)
        .bind(leaving)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(open) = open else {
            return Err(invalid_argument(
                "upn",
                &upn,
                format!(
                    "the pupil has no open enrolment at school {school} that began by {leaving}"
                ),
            ));
        };
        let later: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM effective_marks e JOIN marks m ON m.sequence = e.sequence \
             WHERE e.laestab = $1 AND e.upn = $2 AND e.session_date > $3",
        )
        .bind(&school)
        .bind(&upn)
        .bind(leaving)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        if later > 0 {
            return Err(invalid_argument(
                "leaving_date",
                &leaving.to_string(),
                format!(
                    "pupil {upn} has {later} marks after {leaving}; check the leaving date, or \
                     amend those marks first"
                ),
            ));
        }
        sqlx::query(
            "UPDATE enrolments SET leaving_date = $4, leaving_reason = $5, leaving_recorded_by = $6 \
             WHERE laestab = $1 AND upn = $2 AND admission_date = $3",
        )
        .bind(&school)
        .bind(&upn)
        .bind(open.admission_date)
        .bind(leaving)
        .bind(reason)
        .bind(recorded_by)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Enrolment {
            laestab: school.clone(),
            admission_date: open.admission_date.to_string(),
            leaving_date: leaving.to_string(),
            year_group: open.year_group,
            registration: crate::convert::registration_from_str(&open.registration),
            class_name: open.class_name,
            sen_provision: crate::convert::sen_from_str(&open.sen_provision),
            free_school_meals: crate::convert::fsm_from_str(&open.free_school_meals),
            leaving_reason: reason.to_owned(),
        })
    })
}

/// Removes every mark version for sessions before `as_of` less six years, or with `dry_run`
/// only counts them, and logs what it removed per school.
pub(crate) async fn apply_retention(
    db: &Db,
    as_of: NaiveDate,
    dry_run: bool,
) -> Result<ApplyRetentionResponse, Status> {
    let cutoff = as_of
        .checked_sub_months(Months::new(12 * RETENTION_YEARS))
        .unwrap_or(NaiveDate::MIN);
    let store_error = |error| storage_error("applying register retention", error);
    let removed: Vec<(String, i64, NaiveDate)> = with_db!(db, |pool| {
        let mut tx = pool.begin_write(FEED_LOCK_KEY).await.map_err(store_error)?;
        let removed: Vec<(String, i64, NaiveDate)> = sqlx::query_as(
            "SELECT laestab, COUNT(*), MAX(session_date) FROM marks WHERE session_date < $1 \
             GROUP BY laestab ORDER BY laestab",
        )
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        if !dry_run && !removed.is_empty() {
            for statement in [
                "DELETE FROM effective_marks WHERE session_date < $1",
                "DELETE FROM amendments WHERE sequence IN \
                 (SELECT sequence FROM marks WHERE session_date < $1)",
                "DELETE FROM marks WHERE session_date < $1",
            ] {
                sqlx::query(statement)
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok::<_, Status>(removed)
    })?;
    for (school, versions, latest) in &removed {
        tracing::info!(laestab = %school, mark_versions = versions, latest_date = %latest, %cutoff, dry_run, "Register retention removed mark versions");
    }
    tracing::info!(%cutoff, schools = removed.len(), dry_run, at = %Utc::now(), "Register retention finished");
    Ok(ApplyRetentionResponse {
        cutoff: cutoff.to_string(),
        removed: removed
            .into_iter()
            .map(|(school, versions, latest)| RetentionRemoval {
                laestab: school,
                mark_versions: versions,
                latest_date: latest.to_string(),
            })
            .collect(),
        dry_run,
    })
}
