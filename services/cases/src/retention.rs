//! Case retention: closed cases are removed once their last event is older than the trust's
//! retention period, with everything recorded on them.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, NaiveDate, Utc};
use rollcall_api::cases::v1::{ApplyCaseRetentionResponse, CaseRetentionRemoval};
use rollcall_runtime::grpc::storage_error;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::CASES_LOCK_KEY;

/// The retention period for closed cases when the settings give none, in years.
pub const DEFAULT_CASE_RETENTION_YEARS: u32 = 6;

/// Statements that remove one case and what hangs off it, children first.
const REMOVE_CASE: [&str; 11] = [
    "DELETE FROM plan_reviews WHERE plan_id IN (SELECT id FROM plans WHERE case_id = $1)",
    "DELETE FROM plans WHERE case_id = $1",
    "DELETE FROM reintegration_steps WHERE reintegration_id IN \
     (SELECT id FROM reintegrations WHERE case_id = $1)",
    "DELETE FROM reintegration_check_ins WHERE reintegration_id IN \
     (SELECT id FROM reintegrations WHERE case_id = $1)",
    "DELETE FROM reintegrations WHERE case_id = $1",
    "DELETE FROM letter_jobs WHERE case_id = $1",
    "DELETE FROM message_attempts WHERE message_id IN (SELECT id FROM messages WHERE case_id = $1)",
    "DELETE FROM messages WHERE case_id = $1",
    "DELETE FROM case_actions WHERE case_id = $1",
    "DELETE FROM case_events WHERE case_id = $1",
    "DELETE FROM cases WHERE id = $1",
];

/// A closed case, its school, when it was last changed and how many messages it has.
type ClosedCase = (String, String, Option<DateTime<Utc>>, DateTime<Utc>, i64);

/// Removes closed cases whose last event is before `as_of` less `years`, in one transaction,
/// and logs what it removed for each school. A dry run only counts.
pub(crate) async fn apply(
    db: &Db,
    as_of: NaiveDate,
    years: u32,
    dry_run: bool,
) -> Result<ApplyCaseRetentionResponse, Status> {
    let cutoff = as_of
        .checked_sub_months(Months::new(12 * years))
        .unwrap_or(NaiveDate::MIN);
    let store_error = |error| storage_error("applying case retention", error);
    let removed: BTreeMap<String, (i64, i64)> = with_db!(db, |pool| {
        let mut tx = pool
            .begin_write(CASES_LOCK_KEY)
            .await
            .map_err(store_error)?;
        let closed: Vec<ClosedCase> = sqlx::query_as(
            "SELECT c.id, c.laestab, MAX(e.recorded_at), c.opened_at, \
             (SELECT COUNT(*) FROM messages m WHERE m.case_id = c.id) \
             FROM cases c LEFT JOIN case_events e ON e.case_id = c.id \
             WHERE c.status = 'closed' GROUP BY c.id, c.laestab, c.opened_at ORDER BY c.id",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut removed: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (id, laestab, last_event, opened_at, messages) in closed {
            let last = last_event.unwrap_or(opened_at).date_naive();
            if last >= cutoff {
                continue;
            }
            if !dry_run {
                for statement in REMOVE_CASE {
                    sqlx::query(statement)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                }
            }
            let counts = removed.entry(laestab).or_default();
            counts.0 += 1;
            counts.1 += messages;
        }
        tx.commit().await.map_err(store_error)?;
        Ok::<_, Status>(removed)
    })?;
    for (school, (cases, messages)) in &removed {
        tracing::info!(laestab = %school, cases, messages, %cutoff, dry_run, "Case retention removed closed cases");
    }
    tracing::info!(%cutoff, years, schools = removed.len(), dry_run, "Case retention finished");
    Ok(ApplyCaseRetentionResponse {
        cutoff: cutoff.to_string(),
        retention_years: i32::try_from(years).unwrap_or(i32::MAX),
        removed: removed
            .into_iter()
            .map(|(laestab, (cases, messages))| CaseRetentionRemoval {
                laestab,
                cases,
                messages,
            })
            .collect(),
        dry_run,
    })
}
