//! ChangeUpn and ListUpnChanges: a pupil's records moved from one UPN to another in one
//! transaction, and each change kept in `upn_changes` for the other services to follow.
//!
//! A change either renames (the new UPN has no records) or merges (the same child was entered
//! under both UPNs). A merge is rejected when a session, or a lesson check, has a mark under
//! both UPNs, because one of the two would have to be chosen. Mark versions keep their
//! change-feed positions, so the feed does not repeat them.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::convert::{source_from_proto, timestamp};
use rollcall_api::registers::v1::{
    ChangeUpnRequest, ChangeUpnResponse, UpnChange, UpnChangeCounts,
};
use rollcall_api::types::v1::MarkSource as PbMarkSource;
use rollcall_domain::{MarkSource, Upn};
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

use crate::FEED_LOCK_KEY;

/// The columns of `upn_changes` read into a [`ChangeRow`].
const CHANGE_COLUMNS: &str = "id, request_id, from_upn, to_upn, merged, source, reason, \
     recorded_by, changed_at, mark_versions, sessions, enrolments, absence_reports, \
     lesson_marks, truancy_flags, contacts";

/// A checked ChangeUpn request.
#[derive(Debug)]
pub(crate) struct NewChange {
    request_id: String,
    from: String,
    to: String,
    reason: String,
    recorded_by: String,
    source: MarkSource,
}

fn required(field: &str, value: &str, problem: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        Err(invalid_argument(field, value, problem))
    } else {
        Ok(trimmed.to_owned())
    }
}

fn checked_upn(field: &str, value: &str) -> Result<String, Status> {
    Upn::parse(value)
        .map(|upn| upn.to_string())
        .map_err(|error| invalid_argument(field, value, error.to_string()))
}

impl NewChange {
    /// Checks every field that can be checked without the database.
    pub(crate) fn check(request: &ChangeUpnRequest) -> Result<Self, Status> {
        let request_id = required(
            "request_id",
            &request.request_id,
            "a UPN change needs a request id, so that sending it again changes nothing",
        )?;
        let from = checked_upn("from_upn", &request.from_upn)?;
        let to = checked_upn("to_upn", &request.to_upn)?;
        if from == to {
            return Err(invalid_argument(
                "to_upn",
                &request.to_upn,
                "it is the same as from_upn",
            ));
        }
        Ok(Self {
            request_id,
            from,
            to,
            reason: required("reason", &request.reason, "a UPN change needs a reason")?,
            recorded_by: required(
                "recorded_by",
                &request.recorded_by,
                "a UPN change needs the name of the person making it, or of the system \
                 sending it",
            )?,
            source: source_from_proto(request.source).unwrap_or(MarkSource::Staff),
        })
    }

    /// Returns the UPN replaced.
    pub(crate) fn from(&self) -> &str {
        &self.from
    }

    /// Returns the UPN that replaces it.
    pub(crate) fn to(&self) -> &str {
        &self.to
    }
}

/// A change as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ChangeRow {
    pub(crate) id: i64,
    request_id: String,
    pub(crate) from_upn: String,
    pub(crate) to_upn: String,
    pub(crate) merged: bool,
    source: String,
    reason: String,
    recorded_by: String,
    changed_at: DateTime<Utc>,
    mark_versions: i32,
    sessions: i32,
    enrolments: i32,
    absence_reports: i32,
    lesson_marks: i32,
    truancy_flags: i32,
    contacts: i32,
}

impl ChangeRow {
    fn counts(&self) -> UpnChangeCounts {
        UpnChangeCounts {
            mark_versions: self.mark_versions,
            sessions: self.sessions,
            enrolments: self.enrolments,
            absence_reports: self.absence_reports,
            lesson_marks: self.lesson_marks,
            truancy_flags: self.truancy_flags,
            contacts: self.contacts,
        }
    }

    pub(crate) fn into_proto(self) -> UpnChange {
        let source = self
            .source
            .parse::<MarkSource>()
            .map_or(PbMarkSource::Unspecified, PbMarkSource::from);
        UpnChange {
            id: self.id,
            moved: Some(self.counts()),
            from_upn: self.from_upn,
            to_upn: self.to_upn,
            changed_at: Some(timestamp(self.changed_at)),
            source: source as i32,
            reason: self.reason,
            recorded_by: self.recorded_by,
            merged: self.merged,
        }
    }

    fn into_response(self, already_applied: bool) -> ChangeUpnResponse {
        ChangeUpnResponse {
            change_id: self.id,
            merged: self.merged,
            already_applied,
            moved: Some(self.counts()),
        }
    }
}

/// An enrolment with every column, as a merge reads and writes it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct EnrolmentRecord {
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) admission_date: NaiveDate,
    pub(crate) leaving_date: Option<NaiveDate>,
    pub(crate) year_group: String,
    pub(crate) leaving_reason: Option<String>,
    pub(crate) leaving_recorded_by: Option<String>,
    pub(crate) registration: String,
    pub(crate) class_name: String,
    pub(crate) sen_provision: String,
    pub(crate) free_school_meals: String,
}

const ENROLMENT_COLUMNS: &str = "laestab, upn, admission_date, leaving_date, year_group, \
     leaving_reason, leaving_recorded_by, registration, class_name, sen_provision, \
     free_school_meals";

/// Merges two pupils' enrolments into the enrolments of `to`. Enrolments at the same school
/// whose spans overlap become one, from the earliest admission to the latest leaving (open when
/// either is open). Its other details are those of the latest admitted of its enrolments held
/// under `to`, or under the other UPN when `to` has none there.
pub(crate) fn merge_enrolments(to: &str, rows: Vec<EnrolmentRecord>) -> Vec<EnrolmentRecord> {
    let mut by_school: BTreeMap<String, Vec<EnrolmentRecord>> = BTreeMap::new();
    for row in rows {
        by_school.entry(row.laestab.clone()).or_default().push(row);
    }
    let mut merged = Vec::new();
    for (_, mut rows) in by_school {
        rows.sort_by_key(|row| row.admission_date);
        let mut groups: Vec<Vec<EnrolmentRecord>> = Vec::new();
        for row in rows {
            let overlaps = groups.last().is_some_and(|group| {
                // The group's last day on roll, or None while any of its enrolments is open.
                let end = group.iter().try_fold(NaiveDate::MIN, |latest, member| {
                    member.leaving_date.map(|leaving| latest.max(leaving))
                });
                end.is_none_or(|end| row.admission_date <= end)
            });
            match groups.last_mut() {
                Some(group) if overlaps => group.push(row),
                _ => groups.push(vec![row]),
            }
        }
        for group in groups {
            merged.push(merge_group(to, group));
        }
    }
    merged
}

/// Merges overlapping enrolments at one school, sorted by admission, into one.
fn merge_group(to: &str, group: Vec<EnrolmentRecord>) -> EnrolmentRecord {
    let admission = group[0].admission_date;
    let open = group.iter().any(|row| row.leaving_date.is_none());
    let last_leaving = group
        .iter()
        .filter(|row| row.leaving_date.is_some())
        .max_by_key(|row| row.leaving_date)
        .cloned();
    let details = group
        .iter()
        .rev()
        .find(|row| row.upn == to)
        .or(group.last())
        .cloned()
        .expect("a group has at least one enrolment");
    let (leaving_date, leaving_reason, leaving_recorded_by) = match (open, last_leaving) {
        (false, Some(row)) => (
            row.leaving_date,
            row.leaving_reason,
            row.leaving_recorded_by,
        ),
        _ => (None, None, None),
    };
    EnrolmentRecord {
        upn: to.to_owned(),
        admission_date: admission,
        leaving_date,
        leaving_reason,
        leaving_recorded_by,
        ..details
    }
}

/// A clash that stops two pupils' records being merged.
#[derive(Debug, sqlx::FromRow)]
struct SessionClash {
    laestab: String,
    session_date: NaiveDate,
    session: String,
}

/// Applies a UPN change in one transaction, or returns the change recorded before under the
/// same request id.
pub(crate) async fn apply(db: &Db, change: &NewChange) -> Result<ChangeUpnResponse, Status> {
    let store_error = |error| storage_error("changing a UPN", error);
    let now = Utc::now();
    let from = change.from.as_str();
    let to = change.to.as_str();

    with_db!(db, |pool| {
        let mut tx = pool.begin_write(FEED_LOCK_KEY).await.map_err(store_error)?;

        let earlier: Option<ChangeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLUMNS} FROM upn_changes WHERE request_id = $1"
        )))
        .bind(&change.request_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(row) = earlier {
            if row.from_upn == from && row.to_upn == to {
                return Ok(row.into_response(true));
            }
            return Err(Status::already_exists(format!(
                "request id {:?} was used for change {} from UPN {} to {} on {}; send this \
                 change under a new request id",
                row.request_id,
                row.id,
                row.from_upn,
                row.to_upn,
                row.changed_at.format("%Y-%m-%d %H:%M:%S UTC")
            )));
        }

        let known: Option<String> = sqlx::query_scalar("SELECT upn FROM pupils WHERE upn = $1")
            .bind(from)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        if known.is_none() {
            let replaced: Option<ChangeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {CHANGE_COLUMNS} FROM upn_changes WHERE from_upn = $1"
            )))
            .bind(from)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            // The same change sent again under another request id, such as by a second
            // school's MIS, is already made.
            if let Some(row) = replaced.as_ref().filter(|row| row.to_upn == to) {
                return Ok(row.clone().into_response(true));
            }
            let message = match replaced {
                Some(row) => format!(
                    "pupil {from} not found: UPN {from} was replaced by {} on {} (change {})",
                    row.to_upn,
                    row.changed_at.format("%Y-%m-%d"),
                    row.id
                ),
                None => format!("pupil {from} not found"),
            };
            tracing::info!(upn = from, "UPN change for a pupil not held");
            return Err(Status::not_found(message));
        }

        let retired: Option<ChangeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLUMNS} FROM upn_changes WHERE from_upn = $1"
        )))
        .bind(to)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if let Some(row) = retired {
            return Err(failed_precondition(format!(
                "UPN {to} was replaced by {} on {} (change {}), and a replaced UPN is never used \
                 again; check the new UPN, or change {from} to {} instead",
                row.to_upn,
                row.changed_at.format("%Y-%m-%d"),
                row.id,
                row.to_upn
            )));
        }

        let merged = sqlx::query_scalar::<_, String>("SELECT upn FROM pupils WHERE upn = $1")
            .bind(to)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?
            .is_some();
        if merged {
            let clash: Option<SessionClash> = sqlx::query_as(
                "SELECT f.laestab, f.session_date, f.session FROM effective_marks f \
                 JOIN effective_marks t ON t.laestab = f.laestab \
                 AND t.session_date = f.session_date AND t.session = f.session \
                 WHERE f.upn = $1 AND t.upn = $2 \
                 ORDER BY f.session_date, f.session, f.laestab LIMIT 1",
            )
            .bind(from)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            if let Some(clash) = clash {
                return Err(failed_precondition(format!(
                    "pupils {from} and {to} both have a mark at school {} for {} {}, so their \
                     records cannot be merged without choosing between the two marks: check \
                     that they are the same child, and if they are not, correct the UPN in the \
                     MIS instead; merging records with marks for the same session is not \
                     supported",
                    clash.laestab, clash.session_date, clash.session
                )));
            }
            let lesson_clash: Option<SessionClash> = sqlx::query_as(
                "SELECT c.laestab, c.check_date AS session_date, c.session FROM lesson_marks f \
                 JOIN lesson_marks t ON t.check_id = f.check_id \
                 JOIN lesson_checks c ON c.id = f.check_id \
                 WHERE f.upn = $1 AND t.upn = $2 \
                 ORDER BY c.check_date, c.session, c.laestab LIMIT 1",
            )
            .bind(from)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
            if let Some(clash) = lesson_clash {
                return Err(failed_precondition(format!(
                    "pupils {from} and {to} were both checked at one lesson check at school {} \
                     on {} {}, so their records cannot be merged without choosing between the \
                     two: check that they are the same child, and if they are not, correct the \
                     UPN in the MIS instead",
                    clash.laestab, clash.session_date, clash.session
                )));
            }
        } else {
            sqlx::query(
                "INSERT INTO pupils (upn, forename, surname, date_of_birth, sex, updated_at) \
                 SELECT $2, forename, surname, date_of_birth, sex, updated_at FROM pupils \
                 WHERE upn = $1",
            )
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }

        // Enrolments: renamed, or merged with those of the pupil already held under `to`.
        let enrolments: Vec<EnrolmentRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ENROLMENT_COLUMNS} FROM enrolments WHERE upn = $1 OR upn = $2"
        )))
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let moved_enrolments = enrolments.iter().filter(|row| row.upn == from).count();
        sqlx::query("DELETE FROM enrolments WHERE upn = $1 OR upn = $2")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        for row in merge_enrolments(to, enrolments) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO enrolments ({ENROLMENT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            )))
            .bind(&row.laestab)
            .bind(&row.upn)
            .bind(row.admission_date)
            .bind(row.leaving_date)
            .bind(&row.year_group)
            .bind(&row.leaving_reason)
            .bind(&row.leaving_recorded_by)
            .bind(&row.registration)
            .bind(&row.class_name)
            .bind(&row.sen_provision)
            .bind(&row.free_school_meals)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        }

        // Every other table keyed by UPN is renamed: the checks above leave no key clash.
        let mut renamed = BTreeMap::new();
        for table in [
            "marks",
            "effective_marks",
            "absence_reports",
            "lesson_marks",
            "truancy_flags",
        ] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE {table} SET upn = $2 WHERE upn = $1"
            )))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected();
            renamed.insert(table, rows);
        }

        // Contacts are replaced whole by the MIS, so a pupil keeps one list: the new UPN's
        // when it has one.
        let held_contacts: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pupil_contacts WHERE upn = $1")
                .bind(to)
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
        let contacts = if held_contacts == 0 {
            sqlx::query("UPDATE pupil_contacts SET upn = $2 WHERE upn = $1")
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?
                .rows_affected()
        } else {
            sqlx::query("DELETE FROM pupil_contacts WHERE upn = $1")
                .bind(from)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            0
        };

        sqlx::query("DELETE FROM pupils WHERE upn = $1")
            .bind(from)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;

        let id: i64 = sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(id), 0) FROM upn_changes")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?
            + 1;
        let count = |rows: u64| i32::try_from(rows).unwrap_or(i32::MAX);
        let row = ChangeRow {
            id,
            request_id: change.request_id.clone(),
            from_upn: from.to_owned(),
            to_upn: to.to_owned(),
            merged,
            source: change.source.as_str().to_owned(),
            reason: change.reason.clone(),
            recorded_by: change.recorded_by.clone(),
            changed_at: now,
            mark_versions: count(renamed["marks"]),
            sessions: count(renamed["effective_marks"]),
            enrolments: i32::try_from(moved_enrolments).unwrap_or(i32::MAX),
            absence_reports: count(renamed["absence_reports"]),
            lesson_marks: count(renamed["lesson_marks"]),
            truancy_flags: count(renamed["truancy_flags"]),
            contacts: count(contacts),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO upn_changes ({CHANGE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        )))
        .bind(row.id)
        .bind(&row.request_id)
        .bind(&row.from_upn)
        .bind(&row.to_upn)
        .bind(row.merged)
        .bind(&row.source)
        .bind(&row.reason)
        .bind(&row.recorded_by)
        .bind(row.changed_at)
        .bind(row.mark_versions)
        .bind(row.sessions)
        .bind(row.enrolments)
        .bind(row.absence_reports)
        .bind(row.lesson_marks)
        .bind(row.truancy_flags)
        .bind(row.contacts)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(row.into_response(false))
    })
}

/// Lists the changes after `after_id`, in id order, at most `limit`.
pub(crate) async fn list(db: &Db, after_id: i64, limit: i64) -> Result<Vec<ChangeRow>, Status> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLUMNS} FROM upn_changes WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await
    })
    .map_err(|error| storage_error("listing UPN changes", error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, month, day).expect("valid date")
    }

    fn enrolment(
        laestab: &str,
        upn: &str,
        admission: NaiveDate,
        leaving: Option<NaiveDate>,
        class_name: &str,
    ) -> EnrolmentRecord {
        EnrolmentRecord {
            laestab: laestab.into(),
            upn: upn.into(),
            admission_date: admission,
            leaving_date: leaving,
            year_group: "8".into(),
            leaving_reason: leaving.map(|_| "Moved away".to_owned()),
            leaving_recorded_by: leaving.map(|_| "Office".to_owned()),
            registration: "sole".into(),
            class_name: class_name.into(),
            sen_provision: String::new(),
            free_school_meals: String::new(),
        }
    }

    #[test]
    fn renamed_enrolments_keep_their_details() {
        let merged = merge_enrolments(
            "P",
            vec![
                enrolment("9192001", "T", day(9, 1), Some(day(10, 1)), "8A"),
                enrolment("9192002", "T", day(10, 2), None, "8B"),
            ],
        );
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().all(|row| row.upn == "P"));
        assert_eq!(merged[0].leaving_date, Some(day(10, 1)));
        assert_eq!(merged[0].leaving_reason.as_deref(), Some("Moved away"));
        assert_eq!(merged[1].class_name, "8B");
    }

    #[test]
    fn overlapping_enrolments_at_one_school_become_one() {
        let merged = merge_enrolments(
            "P",
            vec![
                enrolment("9192001", "T", day(9, 1), Some(day(10, 20)), "8A"),
                enrolment("9192001", "P", day(10, 1), None, "8C"),
            ],
        );
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].admission_date, day(9, 1));
        assert_eq!(merged[0].leaving_date, None, "still on roll under P");
        assert_eq!(merged[0].leaving_reason, None);
        assert_eq!(merged[0].class_name, "8C", "the details held under P");
    }

    #[test]
    fn separate_spans_at_one_school_stay_apart() {
        let merged = merge_enrolments(
            "P",
            vec![
                enrolment("9192001", "P", day(11, 1), None, "8C"),
                enrolment("9192001", "T", day(9, 1), Some(day(9, 30)), "8A"),
            ],
        );
        let spans: Vec<(NaiveDate, Option<NaiveDate>)> = merged
            .iter()
            .map(|row| (row.admission_date, row.leaving_date))
            .collect();
        assert_eq!(spans, [(day(9, 1), Some(day(9, 30))), (day(11, 1), None)]);
    }

    #[test]
    fn closed_overlapping_enrolments_end_on_the_later_leaving() {
        let merged = merge_enrolments(
            "P",
            vec![
                enrolment("9192001", "T", day(9, 1), Some(day(12, 19)), "8A"),
                enrolment("9192001", "P", day(9, 8), Some(day(10, 31)), "8C"),
            ],
        );
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].leaving_date, Some(day(12, 19)));
        assert_eq!(merged[0].leaving_reason.as_deref(), Some("Moved away"));
    }
}
