//! Follows the registers' UPN changes. Each change moves the pupil's kept marks, totals, status
//! and triggers to the new UPN, and the pupil is evaluated again under it, all in the
//! transaction that stores the change's position.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::client::Channel;
use rollcall_api::registers::v1::ListUpnChangesRequest;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_domain::Figures;
use rollcall_domain::session::academic_year_of;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::follower::evaluate_after_upn_change;
use rollcall_runtime::storage::stored_cursor;

/// The name under which the position in the registers' UPN changes is stored.
pub(crate) const UPN_CHANGES_FEED: &str = "registers.upn_changes";
/// How often the follower polls the registers for new UPN changes.
const POLL: Duration = Duration::from_secs(2);
/// Changes read per request.
const PAGE: i32 = 100;
/// The maximum length of a chain of changes followed from one UPN, far beyond any real pupil's.
const MAX_CHAIN: usize = 100;

/// A UPN change as this service applies it.
#[derive(Debug, Clone)]
pub(crate) struct AppliedChange {
    pub(crate) id: i64,
    pub(crate) from: String,
    pub(crate) to: String,
}

/// Starts the follower of the registers' UPN changes. It polls every few seconds and retries
/// with backoff when the registers or cases service is unreachable.
pub fn spawn_upn_follower(
    db: Db,
    registers: RegistersServiceClient<Channel>,
    cases: CasesServiceClient<Channel>,
    trigger_head: watch::Sender<i64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, &registers, &cases, &trigger_head).await {
                Ok(()) => {
                    backoff = Duration::from_millis(200);
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "UPN change follower failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

/// Applies every change after the stored position, oldest first.
async fn follow(
    db: &Db,
    registers: &RegistersServiceClient<Channel>,
    cases: &CasesServiceClient<Channel>,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<()> {
    loop {
        let cursor = stored_cursor(db, UPN_CHANGES_FEED).await?;
        let changes = registers
            .clone()
            .list_upn_changes(ListUpnChangesRequest {
                after_id: cursor,
                limit: PAGE,
            })
            .await?
            .into_inner()
            .changes;
        if changes.is_empty() {
            return Ok(());
        }
        for change in changes {
            let change = AppliedChange {
                id: change.id,
                from: change.from_upn,
                to: change.to_upn,
            };
            let schools = schools_of(db, &change).await?;
            let counts = evaluate_after_upn_change(
                db,
                &mut registers.clone(),
                &mut cases.clone(),
                &change,
                &schools,
                trigger_head,
            )
            .await?;
            tracing::info!(
                change = change.id,
                from_upn = %change.from,
                to_upn = %change.to,
                schools = schools.len(),
                raised = counts.raised,
                withdrawn = counts.withdrawn,
                "UPN change applied"
            );
        }
    }
}

/// Returns the schools where either UPN has kept marks, a status or triggers.
async fn schools_of(db: &Db, change: &AppliedChange) -> Result<BTreeSet<String>, sqlx::Error> {
    let rows: Vec<(String,)> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT DISTINCT laestab FROM pupil_marks WHERE upn = $1 OR upn = $2 \
             UNION SELECT laestab FROM pupil_status WHERE upn = $1 OR upn = $2 \
             UNION SELECT laestab FROM triggers WHERE upn = $1 OR upn = $2",
        )
        .bind(&change.from)
        .bind(&change.to)
        .fetch_all(pool)
        .await
    })?;
    Ok(rows.into_iter().map(|(laestab,)| laestab).collect())
}

/// Returns the UPN that `upn` is kept under: itself, or the last UPN of the changes from it.
pub(crate) fn resolve<'a>(replaced: &'a HashMap<String, String>, upn: &'a str) -> &'a str {
    let mut current = upn;
    for _ in 0..MAX_CHAIN {
        match replaced.get(current) {
            Some(next) => current = next,
            None => break,
        }
    }
    current
}

/// Reads every UPN change applied here, as replaced UPN to new UPN.
pub(crate) async fn replaced_upns<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
) -> Result<HashMap<String, String>, sqlx::Error>
where
    DB: sqlx::Database,
    for<'r> (String, String): sqlx::FromRow<'r, DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e mut <DB as sqlx::Database>::Connection: sqlx::Executor<'e, Database = DB>,
{
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT from_upn, to_upn FROM upn_changes")
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.into_iter().collect())
}

/// A pupil's stored status at one school.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StatusRow {
    laestab: String,
    upn: String,
    persistent_absence: bool,
    severe_absence: bool,
    penalty_warning: bool,
    unexplained_overdue: bool,
    unauthorised_return: bool,
    sickness_return: bool,
    missed_target: bool,
    ladder_stage: String,
    as_of: NaiveDate,
}

/// Merges the statuses of one school kept under both UPNs. A trigger raised under either UPN
/// is now the new UPN's, so a kind counts as raised when it was raised under either. The
/// evaluation that follows withdraws what the merged figures no longer meet.
fn merge_statuses(to: &str, from: StatusRow, held: Option<StatusRow>) -> StatusRow {
    let Some(held) = held else {
        return StatusRow {
            upn: to.to_owned(),
            ..from
        };
    };
    StatusRow {
        laestab: held.laestab,
        upn: to.to_owned(),
        persistent_absence: held.persistent_absence || from.persistent_absence,
        severe_absence: held.severe_absence || from.severe_absence,
        penalty_warning: held.penalty_warning || from.penalty_warning,
        unexplained_overdue: held.unexplained_overdue || from.unexplained_overdue,
        unauthorised_return: held.unauthorised_return || from.unauthorised_return,
        sickness_return: held.sickness_return || from.sickness_return,
        missed_target: held.missed_target || from.missed_target,
        ladder_stage: if held.ladder_stage.is_empty() {
            from.ladder_stage
        } else {
            held.ladder_stage
        },
        as_of: held.as_of.max(from.as_of),
    }
}

/// Moves a pupil's kept marks, totals, status and triggers from one UPN to the other, and
/// stores the change and its position, in the caller's transaction. Where both UPNs have a
/// code for one session, the one later in the registers' change feed is kept. Applying a change
/// again changes nothing.
pub(crate) async fn apply_change<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    change: &AppliedChange,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> NaiveDate: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> StatusRow: sqlx::FromRow<'r, DB::Row>,
    for<'r> (String, NaiveDate, String): sqlx::FromRow<'r, DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e mut <DB as sqlx::Database>::Connection: sqlx::Executor<'e, Database = DB>,
{
    let from = change.from.clone();
    let to = change.to.clone();

    // Codes for the same session: the one with the lower feed position goes.
    sqlx::query(
        "DELETE FROM pupil_marks WHERE upn = $1 AND EXISTS (SELECT 1 FROM pupil_marks p \
         WHERE p.upn = $2 AND p.laestab = pupil_marks.laestab \
         AND p.session_date = pupil_marks.session_date AND p.session = pupil_marks.session \
         AND p.sequence >= pupil_marks.sequence)",
    )
    .bind(from.clone())
    .bind(to.clone())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM pupil_marks WHERE upn = $2 AND EXISTS (SELECT 1 FROM pupil_marks p \
         WHERE p.upn = $1 AND p.laestab = pupil_marks.laestab \
         AND p.session_date = pupil_marks.session_date AND p.session = pupil_marks.session \
         AND p.sequence > pupil_marks.sequence)",
    )
    .bind(from.clone())
    .bind(to.clone())
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE pupil_marks SET upn = $2 WHERE upn = $1")
        .bind(from.clone())
        .bind(to.clone())
        .execute(&mut **tx)
        .await?;

    // The totals follow from the codes now kept under the new UPN.
    let codes: Vec<(String, NaiveDate, String)> =
        sqlx::query_as("SELECT laestab, session_date, code FROM pupil_marks WHERE upn = $1")
            .bind(to.clone())
            .fetch_all(&mut **tx)
            .await?;
    let mut by_year: BTreeMap<(String, i32), Vec<String>> = BTreeMap::new();
    for (laestab, date, code) in codes {
        by_year
            .entry((laestab, academic_year_of(date)))
            .or_default()
            .push(code);
    }
    sqlx::query("DELETE FROM pupil_totals WHERE upn = $1 OR upn = $2")
        .bind(from.clone())
        .bind(to.clone())
        .execute(&mut **tx)
        .await?;
    let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    for ((laestab, year), codes) in by_year {
        let figures = Figures::from_codes(codes.iter().map(String::as_str));
        sqlx::query(
            "INSERT INTO pupil_totals (laestab, upn, academic_year, present, approved_activity, \
             authorised, unauthorised, not_possible) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(laestab)
        .bind(to.clone())
        .bind(year)
        .bind(count(figures.present))
        .bind(count(figures.approved_activity))
        .bind(count(figures.authorised_absence))
        .bind(count(figures.unauthorised_absence))
        .bind(count(figures.not_possible))
        .execute(&mut **tx)
        .await?;
    }

    let statuses: Vec<StatusRow> = sqlx::query_as(
        "SELECT laestab, upn, persistent_absence, severe_absence, penalty_warning, \
         unexplained_overdue, unauthorised_return, sickness_return, missed_target, ladder_stage, \
         as_of FROM pupil_status WHERE upn = $1 OR upn = $2",
    )
    .bind(from.clone())
    .bind(to.clone())
    .fetch_all(&mut **tx)
    .await?;
    let mut held: HashMap<String, StatusRow> = statuses
        .iter()
        .filter(|row| row.upn == to)
        .map(|row| (row.laestab.clone(), row.clone()))
        .collect();
    for status in statuses.into_iter().filter(|row| row.upn == from) {
        let merged = merge_statuses(&to, status.clone(), held.remove(&status.laestab));
        sqlx::query("DELETE FROM pupil_status WHERE laestab = $1 AND (upn = $2 OR upn = $3)")
            .bind(merged.laestab.clone())
            .bind(from.clone())
            .bind(to.clone())
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO pupil_status (laestab, upn, persistent_absence, severe_absence, \
             penalty_warning, unexplained_overdue, unauthorised_return, sickness_return, \
             missed_target, ladder_stage, as_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(merged.laestab)
        .bind(merged.upn)
        .bind(merged.persistent_absence)
        .bind(merged.severe_absence)
        .bind(merged.penalty_warning)
        .bind(merged.unexplained_overdue)
        .bind(merged.unauthorised_return)
        .bind(merged.sickness_return)
        .bind(merged.missed_target)
        .bind(merged.ladder_stage)
        .bind(merged.as_of)
        .execute(&mut **tx)
        .await?;
    }

    // Triggers are history, but the cases service reads them by UPN: they move too.
    sqlx::query("UPDATE triggers SET upn = $2 WHERE upn = $1")
        .bind(from.clone())
        .bind(to.clone())
        .execute(&mut **tx)
        .await?;

    sqlx::query(
        "INSERT INTO upn_changes (id, from_upn, to_upn, applied_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(change.id)
    .bind(from)
    .bind(to)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(rollcall_runtime::storage::ADVANCE_CURSOR)
        .bind(UPN_CHANGES_FEED.to_owned())
        .bind(change.id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(upn: &str, persistent: bool, stage: &str, day: u32) -> StatusRow {
        StatusRow {
            laestab: "9192001".into(),
            upn: upn.into(),
            persistent_absence: persistent,
            severe_absence: false,
            penalty_warning: false,
            unexplained_overdue: false,
            unauthorised_return: false,
            sickness_return: false,
            missed_target: false,
            ladder_stage: stage.into(),
            as_of: NaiveDate::from_ymd_opt(2025, 10, day).expect("valid date"),
        }
    }

    #[test]
    fn resolve_follows_a_chain_of_changes() {
        let replaced = HashMap::from([
            ("T1".to_owned(), "T2".to_owned()),
            ("T2".to_owned(), "P".to_owned()),
        ]);
        assert_eq!(resolve(&replaced, "T1"), "P");
        assert_eq!(resolve(&replaced, "P"), "P");
        assert_eq!(resolve(&replaced, "Q"), "Q");
    }

    #[test]
    fn merge_statuses_moves_a_lone_status() {
        let moved = merge_statuses("P", status("T", true, "stage-2", 3), None);
        assert_eq!(moved.upn, "P");
        assert!(moved.persistent_absence);
        assert_eq!(moved.ladder_stage, "stage-2");
    }

    #[test]
    fn merge_statuses_keeps_raised_kinds() {
        let merged = merge_statuses(
            "P",
            status("T", true, "stage-2", 9),
            Some(status("P", false, "", 3)),
        );
        assert!(merged.persistent_absence, "raised under T");
        assert_eq!(merged.ladder_stage, "stage-2", "P had no stage");
        assert_eq!(
            merged.as_of,
            NaiveDate::from_ymd_opt(2025, 10, 9).expect("valid date")
        );
    }
}
