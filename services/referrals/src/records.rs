//! Referral records in the referrals database: drafts, submissions with their packs, and the
//! outcomes the local authority reports.

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_api::convert::timestamp;
use rollcall_api::referrals::v1::{
    EvidenceChange, PenaltyNotice, PrerequisiteCheck as PbCheck, Referral, ReferralOutcome,
    ReferralOutcomeKind, ReferralOverride, ReferralStatus as PbStatus,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_domain::Session;
use rollcall_domain::outcomes::{IssuedNotice, Outcome, ReferralStatus};
use rollcall_domain::referrals::PrerequisiteCheck;
use rollcall_runtime::grpc::storage_error;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use serde::{Deserialize, Serialize};
use tonic::Status;

/// The advisory lock that serialises writers of referral records on PostgreSQL.
pub(crate) const REFERRALS_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::REFERRALS;

/// The columns of `referrals` read into a [`ReferralRow`].
const REFERRAL_COLUMNS: &str = "id, reference, kind, laestab, upn, case_id, status, policy_id, \
     as_of, prerequisites, created_by, created_at, submitted_by, submitted_at, override_by, \
     override_role, override_reason, pack_id, pack_sha256, notice_issued_on, notice_number, \
     reduced_amount, reduced_days, full_amount, full_days, notice_policy_id, notice_clause, \
     paid_on";

/// The condition of an open referral: not final, and not a statutory return already accepted.
/// The unique index `referrals_one_open` and `upn_changes::open` have the same condition.
pub(crate) const OPEN: &str = "status NOT IN ('paid', 'prosecution', 'withdrawn') AND NOT (status = \
     'accepted' AND kind IN ('unauthorised_absence_return', 'sickness_return', \
     'new_pupil_return', 'deletion_return'))";

/// A prerequisite as stored with its referral, in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredCheck {
    pub(crate) name: String,
    pub(crate) met: bool,
    pub(crate) evidence: String,
    #[serde(default)]
    pub(crate) overridden: bool,
}

impl StoredCheck {
    pub(crate) fn from_check(check: &PrerequisiteCheck, overridden: bool) -> Self {
        Self {
            name: check.prerequisite.as_str().to_owned(),
            met: check.met,
            evidence: check.evidence.clone(),
            overridden: overridden && !check.met,
        }
    }
}

/// A referral as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ReferralRow {
    pub(crate) id: String,
    pub(crate) reference: String,
    pub(crate) kind: String,
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) case_id: String,
    pub(crate) status: String,
    pub(crate) policy_id: String,
    pub(crate) as_of: NaiveDate,
    pub(crate) prerequisites: String,
    pub(crate) created_by: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) submitted_by: String,
    pub(crate) submitted_at: Option<DateTime<Utc>>,
    pub(crate) override_by: String,
    pub(crate) override_role: String,
    pub(crate) override_reason: String,
    pub(crate) pack_id: String,
    pub(crate) pack_sha256: String,
    pub(crate) notice_issued_on: Option<NaiveDate>,
    pub(crate) notice_number: Option<i32>,
    pub(crate) reduced_amount: Option<i32>,
    pub(crate) reduced_days: Option<i32>,
    pub(crate) full_amount: Option<i32>,
    pub(crate) full_days: Option<i32>,
    pub(crate) notice_policy_id: String,
    pub(crate) notice_clause: String,
    pub(crate) paid_on: Option<NaiveDate>,
}

/// Marks that changed after a referral's submission, the first [`EVIDENCE_CHANGES_SHOWN`] of
/// them, with how many there are in all.
#[derive(Debug, Clone, Default)]
pub(crate) struct EvidenceChanges {
    pub(crate) first: Vec<EvidenceChangeRow>,
    pub(crate) count: i64,
}

/// Evidence changes returned with a referral, at most.
pub(crate) const EVIDENCE_CHANGES_SHOWN: i64 = 100;

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct EvidenceChangeRow {
    pub(crate) sequence: i64,
    pub(crate) session_date: NaiveDate,
    pub(crate) session: String,
    pub(crate) code: String,
    pub(crate) noticed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OutcomeRow {
    pub(crate) outcome: String,
    pub(crate) on_date: NaiveDate,
    pub(crate) note: String,
    pub(crate) recorded_by: String,
    pub(crate) recorded_at: DateTime<Utc>,
}

fn unsigned(value: Option<i32>) -> u32 {
    value
        .and_then(|value| u32::try_from(value).ok())
        .unwrap_or(0)
}

impl ReferralRow {
    /// Returns the stored status; an unreadable one reads as a draft, which blocks nothing
    /// the local authority has done.
    pub(crate) fn status(&self) -> ReferralStatus {
        self.status.parse().unwrap_or(ReferralStatus::Draft)
    }

    /// Returns the prerequisites as last checked.
    pub(crate) fn checks(&self) -> Vec<StoredCheck> {
        serde_json::from_str(&self.prerequisites).unwrap_or_default()
    }

    /// Returns the issued notice's terms, once a notice is issued.
    pub(crate) fn notice(&self) -> Option<IssuedNotice> {
        Some(IssuedNotice {
            issued_on: self.notice_issued_on?,
            reduced_amount: self
                .reduced_amount
                .and_then(|value| u32::try_from(value).ok()),
            reduced_days: unsigned(self.reduced_days),
            full_amount: unsigned(self.full_amount),
            full_days: unsigned(self.full_days),
        })
    }

    /// Returns true when the notice's full period has passed unpaid on `today`: a notice
    /// issued and not yet settled, or one the local authority has recorded as unpaid.
    pub(crate) fn is_overdue(&self, today: NaiveDate) -> bool {
        matches!(
            self.status(),
            ReferralStatus::NoticeIssued | ReferralStatus::Unpaid
        ) && self
            .notice()
            .is_some_and(|notice| notice.position_on(today).overdue)
    }

    pub(crate) fn into_proto(
        self,
        outcomes: Vec<OutcomeRow>,
        evidence: EvidenceChanges,
        today: NaiveDate,
    ) -> Referral {
        let notice = self.notice().map(|notice| {
            let position = notice.position_on(self.paid_on.unwrap_or(today));
            let due_by = |days: u32| {
                notice
                    .issued_on
                    .checked_add_days(chrono::Days::new(u64::from(days)))
                    .map(|date| date.to_string())
                    .unwrap_or_default()
            };
            PenaltyNotice {
                issued_on: notice.issued_on.to_string(),
                number: self.notice_number.unwrap_or(1),
                reduced_amount: self.reduced_amount,
                reduced_due_by: if notice.reduced_amount.is_some() {
                    due_by(notice.reduced_days)
                } else {
                    String::new()
                },
                full_amount: self.full_amount.unwrap_or(0),
                full_due_by: due_by(notice.full_days),
                amount_due: i32::try_from(position.amount_due).unwrap_or(i32::MAX),
                overdue: self.paid_on.is_none() && self.is_overdue(today),
                paid_on: self
                    .paid_on
                    .map(|date| date.to_string())
                    .unwrap_or_default(),
                policy_id: self.notice_policy_id.clone(),
                clause: self.notice_clause.clone(),
            }
        });
        let status = status_to_proto(self.status());
        let prerequisites = self
            .checks()
            .into_iter()
            .map(|check| PbCheck {
                name: check.name,
                met: check.met,
                evidence: check.evidence,
                overridden: check.overridden,
            })
            .collect();
        Referral {
            r#override: (!self.override_reason.is_empty()).then(|| ReferralOverride {
                by: self.override_by.clone(),
                role: self.override_role.clone(),
                reason: self.override_reason.clone(),
                at: self.submitted_at.map(timestamp),
            }),
            id: self.id,
            reference: self.reference,
            kind: self.kind,
            laestab: self.laestab,
            upn: self.upn,
            case_id: self.case_id,
            status: status.into(),
            prerequisites,
            created_by: self.created_by,
            created_at: Some(timestamp(self.created_at)),
            submitted_by: self.submitted_by,
            submitted_at: self.submitted_at.map(timestamp),
            pack_id: self.pack_id,
            pack_sha256: self.pack_sha256,
            outcomes: outcomes
                .into_iter()
                .map(|row| ReferralOutcome {
                    outcome: row
                        .outcome
                        .parse::<Outcome>()
                        .map_or(ReferralOutcomeKind::Unspecified, outcome_to_proto)
                        .into(),
                    on_date: row.on_date.to_string(),
                    recorded_by: row.recorded_by,
                    recorded_at: Some(timestamp(row.recorded_at)),
                    note: row.note,
                })
                .collect(),
            notice,
            policy_id: self.policy_id,
            as_of: self.as_of.to_string(),
            evidence_changes: evidence
                .first
                .into_iter()
                .map(|row| EvidenceChange {
                    date: row.session_date.to_string(),
                    session: row
                        .session
                        .parse::<Session>()
                        .map_or(PbSession::Unspecified, PbSession::from)
                        .into(),
                    code: row.code,
                    sequence: row.sequence,
                    noticed_at: Some(timestamp(row.noticed_at)),
                })
                .collect(),
            evidence_change_count: i32::try_from(evidence.count).unwrap_or(i32::MAX),
        }
    }
}

/// Converts a domain status to its protobuf value.
pub(crate) fn status_to_proto(status: ReferralStatus) -> PbStatus {
    match status {
        ReferralStatus::Draft => PbStatus::Draft,
        ReferralStatus::Submitted => PbStatus::Submitted,
        ReferralStatus::Accepted => PbStatus::Accepted,
        ReferralStatus::MoreInformationRequested => PbStatus::MoreInformationRequested,
        ReferralStatus::NoticeIssued => PbStatus::NoticeIssued,
        ReferralStatus::Paid => PbStatus::Paid,
        ReferralStatus::Unpaid => PbStatus::Unpaid,
        ReferralStatus::Prosecution => PbStatus::Prosecution,
        ReferralStatus::Withdrawn => PbStatus::Withdrawn,
    }
}

/// Converts a protobuf status to the domain's, or `None` for unspecified.
pub(crate) fn status_from_proto(value: i32) -> Option<ReferralStatus> {
    ReferralStatus::ALL
        .into_iter()
        .find(|status| status_to_proto(*status) as i32 == value)
}

/// Converts a domain outcome to its protobuf value.
pub(crate) fn outcome_to_proto(outcome: Outcome) -> ReferralOutcomeKind {
    match outcome {
        Outcome::Accepted => ReferralOutcomeKind::Accepted,
        Outcome::MoreInformationRequested => ReferralOutcomeKind::MoreInformationRequested,
        Outcome::NoticeIssued => ReferralOutcomeKind::NoticeIssued,
        Outcome::Paid => ReferralOutcomeKind::Paid,
        Outcome::Unpaid => ReferralOutcomeKind::Unpaid,
        Outcome::Prosecution => ReferralOutcomeKind::Prosecution,
        Outcome::Withdrawn => ReferralOutcomeKind::Withdrawn,
    }
}

/// Converts a protobuf outcome to the domain's, or `None` for unspecified.
pub(crate) fn outcome_from_proto(value: i32) -> Option<Outcome> {
    Outcome::ALL
        .into_iter()
        .find(|outcome| outcome_to_proto(*outcome) as i32 == value)
}

fn storage(context: &'static str) -> impl Fn(sqlx::Error) -> Status {
    move |error| storage_error(context, error)
}

/// Finds a referral by identifier or reference.
pub(crate) async fn find(db: &Db, id: &str) -> Result<Option<ReferralRow>, Status> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE id = $1 OR reference = $1"
        )))
        .bind(id)
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading a referral"))
}

/// Finds a referral by identifier or reference, or returns NOT_FOUND naming it.
pub(crate) async fn get(db: &Db, id: &str) -> Result<ReferralRow, Status> {
    find(db, id).await?.ok_or_else(|| {
        Status::not_found(format!(
            "no referral has the identifier or reference {id:?}; list them with `rollcall \
             referral list`"
        ))
    })
}

/// Returns a referral's outcomes, oldest first.
pub(crate) async fn outcomes_of(db: &Db, id: &str) -> Result<Vec<OutcomeRow>, Status> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT outcome, on_date, note, recorded_by, recorded_at FROM referral_outcomes \
             WHERE referral_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(pool)
        .await
    })
    .map_err(storage("reading a referral's outcomes"))
}

/// Returns the marks that changed after a referral's submission, oldest first.
pub(crate) async fn evidence_changes_of(db: &Db, id: &str) -> Result<EvidenceChanges, Status> {
    with_db!(db, |pool| async {
        let first = sqlx::query_as(
            "SELECT sequence, session_date, session, code, noticed_at FROM evidence_changes \
             WHERE referral_id = $1 ORDER BY sequence LIMIT $2",
        )
        .bind(id)
        .bind(EVIDENCE_CHANGES_SHOWN)
        .fetch_all(pool)
        .await?;
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM evidence_changes WHERE referral_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
        Ok(EvidenceChanges { first, count })
    }
    .await)
    .map_err(storage("reading a referral's evidence changes"))
}

/// Finds the referral a client request created, when the request was sent before.
pub(crate) async fn by_request(db: &Db, request_id: &str) -> Result<Option<ReferralRow>, Status> {
    if request_id.is_empty() {
        return Ok(None);
    }
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE request_id = $1"
        )))
        .bind(request_id)
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading a referral"))
}

/// Returns true when an outcome was already recorded under `request_id`.
pub(crate) async fn outcome_request_seen(db: &Db, request_id: &str) -> Result<bool, Status> {
    if request_id.is_empty() {
        return Ok(false);
    }
    let found: Option<(String,)> = with_db!(db, |pool| {
        sqlx::query_as("SELECT referral_id FROM referral_outcomes WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(pool)
            .await
    })
    .map_err(storage("reading a referral's outcomes"))?;
    Ok(found.is_some())
}

/// Returns the dates of penalty notices issued for a pupil, withdrawn ones left out.
pub(crate) async fn notices_for(db: &Db, upn: &str) -> Result<Vec<NaiveDate>, Status> {
    let rows: Vec<(Option<NaiveDate>,)> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT notice_issued_on FROM referrals WHERE upn = $1 \
             AND notice_issued_on IS NOT NULL AND status <> 'withdrawn'",
        )
        .bind(upn)
        .fetch_all(pool)
        .await
    })
    .map_err(storage("reading earlier notices"))?;
    Ok(rows.into_iter().filter_map(|(date,)| date).collect())
}

/// A new draft.
pub(crate) struct NewDraft<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) laestab: &'a str,
    pub(crate) upn: &'a str,
    pub(crate) case_id: &'a str,
    pub(crate) policy_id: &'a str,
    pub(crate) as_of: NaiveDate,
    pub(crate) checks: &'a [StoredCheck],
    pub(crate) created_by: &'a str,
    /// The school year the reference is numbered in, for example 2025 for 2025 to 2026.
    pub(crate) year: i32,
}

/// Stores a draft, numbering it. Fails with ALREADY_EXISTS when the pupil has an open referral
/// of the same kind at the school.
pub(crate) async fn insert_draft(db: &Db, draft: NewDraft<'_>) -> Result<String, Status> {
    let now = Utc::now();
    let checks = serde_json::to_string(draft.checks)
        .map_err(|error| Status::internal(format!("encoding prerequisites: {error}")))?;
    with_db!(db, |pool| async {
        let mut tx = pool
            .begin_write(REFERRALS_LOCK_KEY)
            .await
            .map_err(storage("creating a referral"))?;
        let open: Option<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, status FROM referrals WHERE upn = $1 AND laestab = $2 AND kind = $3 \
             AND {OPEN}"
        )))
        .bind(draft.upn)
        .bind(draft.laestab)
        .bind(draft.kind)
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage("creating a referral"))?;
        if let Some((existing, status)) = open {
            return Err(Status::already_exists(format!(
                "pupil {} already has {} referral {existing} ({status}) at school {}; work on \
                 that one, or record withdrawn on it first",
                draft.upn, draft.kind, draft.laestab
            )));
        }
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM referrals")
            .fetch_one(&mut *tx)
            .await
            .map_err(storage("creating a referral"))?;
        let prefix = format!("{}-{}-", draft.laestab, draft.year);
        let (in_year,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM referrals WHERE reference LIKE $1")
                .bind(format!("{prefix}%"))
                .fetch_one(&mut *tx)
                .await
                .map_err(storage("creating a referral"))?;
        let id = format!("ref-{:06}", count + 1);
        let reference = format!("{prefix}{:04}", in_year + 1);
        sqlx::query(
            "INSERT INTO referrals (id, reference, request_id, kind, laestab, upn, case_id, \
             status, policy_id, as_of, prerequisites, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'draft', $8, $9, $10, $11, $12, $12)",
        )
        .bind(&id)
        .bind(&reference)
        .bind((!draft.request_id.is_empty()).then_some(draft.request_id))
        .bind(draft.kind)
        .bind(draft.laestab)
        .bind(draft.upn)
        .bind(draft.case_id)
        .bind(draft.policy_id)
        .bind(draft.as_of)
        .bind(&checks)
        .bind(draft.created_by)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(storage("creating a referral"))?;
        tx.commit().await.map_err(storage("creating a referral"))?;
        Ok(id)
    }
    .await)
}

/// Stores a draft's prerequisites as checked again, with its case.
pub(crate) async fn update_checks(
    db: &Db,
    id: &str,
    case_id: &str,
    checks: &[StoredCheck],
) -> Result<(), Status> {
    let checks = serde_json::to_string(checks)
        .map_err(|error| Status::internal(format!("encoding prerequisites: {error}")))?;
    with_db!(db, |pool| {
        sqlx::query(
            "UPDATE referrals SET prerequisites = $2, case_id = $3, updated_at = $4 \
             WHERE id = $1 AND status = 'draft'",
        )
        .bind(id)
        .bind(&checks)
        .bind(case_id)
        .bind(Utc::now())
        .execute(pool)
        .await
        .map(|_| ())
    })
    .map_err(storage("updating a referral"))
}

/// A submission and the pack it sent.
pub(crate) struct Submission<'a> {
    pub(crate) id: &'a str,
    pub(crate) submitted_by: &'a str,
    pub(crate) submitted_at: DateTime<Utc>,
    pub(crate) override_role: &'a str,
    pub(crate) override_reason: &'a str,
    pub(crate) checks: &'a [StoredCheck],
    pub(crate) case_id: &'a str,
    pub(crate) pack_id: &'a str,
    pub(crate) pack_sha256: &'a str,
    pub(crate) pack: &'a [u8],
    pub(crate) clause: &'a str,
    /// The feed position of the newest mark in the pack, from which later changes to the
    /// pack's marks are followed; `None` when the pack has no marks.
    pub(crate) evidence_sequence: Option<i64>,
    /// The attendance period of the pack's figures and marks, when the policy service gave one.
    pub(crate) period: Option<(NaiveDate, NaiveDate)>,
}

/// Marks a draft submitted and keeps its pack, in one transaction. Returns false, storing
/// nothing, when the referral is no longer a draft.
pub(crate) async fn submit(
    db: &Db,
    row: &ReferralRow,
    submission: Submission<'_>,
) -> Result<bool, Status> {
    let checks = serde_json::to_string(submission.checks)
        .map_err(|error| Status::internal(format!("encoding prerequisites: {error}")))?;
    let overridden = !submission.override_reason.is_empty();
    with_db!(db, |pool| async {
        let mut tx = pool
            .begin_write(REFERRALS_LOCK_KEY)
            .await
            .map_err(storage("submitting a referral"))?;
        let updated = sqlx::query(
            "UPDATE referrals SET status = 'submitted', submitted_by = $2, submitted_at = $3, \
             override_by = $4, override_role = $5, override_reason = $6, prerequisites = $7, \
             case_id = $8, pack_id = $9, pack_sha256 = $10, updated_at = $3, \
             evidence_sequence = $11, period_from = $12, period_to = $13 \
             WHERE id = $1 AND status = 'draft'",
        )
        .bind(submission.id)
        .bind(submission.submitted_by)
        .bind(submission.submitted_at)
        .bind(if overridden {
            submission.submitted_by
        } else {
            ""
        })
        .bind(if overridden {
            submission.override_role
        } else {
            ""
        })
        .bind(submission.override_reason)
        .bind(&checks)
        .bind(submission.case_id)
        .bind(submission.pack_id)
        .bind(submission.pack_sha256)
        .bind(submission.evidence_sequence)
        .bind(submission.period.map(|(from, _)| from))
        .bind(submission.period.map(|(_, to)| to))
        .execute(&mut *tx)
        .await
        .map_err(storage("submitting a referral"))?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO packs (id, laestab, upn, policy_id, clause, as_of, sha256, built_at, \
             referral_id, content) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(submission.pack_id)
        .bind(&row.laestab)
        .bind(&row.upn)
        .bind(&row.policy_id)
        .bind(submission.clause)
        .bind(row.as_of)
        .bind(submission.pack_sha256)
        .bind(submission.submitted_at)
        .bind(submission.id)
        .bind(submission.pack)
        .execute(&mut *tx)
        .await
        .map_err(storage("keeping a referral's pack"))?;
        tx.commit()
            .await
            .map_err(storage("submitting a referral"))?;
        Ok(true)
    }
    .await)
}

/// Returns the pack a referral was submitted with.
pub(crate) async fn submitted_pack(db: &Db, id: &str) -> Result<Option<Vec<u8>>, Status> {
    let row: Option<(Option<Vec<u8>>,)> = with_db!(db, |pool| {
        sqlx::query_as("SELECT content FROM packs WHERE referral_id = $1 ORDER BY built_at DESC")
            .bind(id)
            .fetch_optional(pool)
            .await
    })
    .map_err(storage("reading a referral's pack"))?;
    Ok(row.and_then(|(content,)| content))
}

/// An outcome to record, with the notice terms when it issues a notice.
pub(crate) struct NewOutcome<'a> {
    pub(crate) outcome: Outcome,
    pub(crate) from: ReferralStatus,
    pub(crate) on: NaiveDate,
    pub(crate) note: &'a str,
    pub(crate) recorded_by: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) notice: Option<(IssuedNotice, i32, String, String)>,
}

/// Records an outcome and moves the referral to its status, if the referral is still in the
/// status the outcome was checked against. Returns false, storing nothing, when it is not.
pub(crate) async fn record_outcome(
    db: &Db,
    id: &str,
    outcome: NewOutcome<'_>,
) -> Result<bool, Status> {
    let now = Utc::now();
    let amount = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
    with_db!(db, |pool| async {
        let mut tx = pool
            .begin_write(REFERRALS_LOCK_KEY)
            .await
            .map_err(storage("recording an outcome"))?;
        let updated = sqlx::query(
            "UPDATE referrals SET status = $3, updated_at = $4 WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(outcome.from.as_str())
        .bind(outcome.outcome.status().as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(storage("recording an outcome"))?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        if let Some((notice, number, policy_id, clause)) = &outcome.notice {
            sqlx::query(
                "UPDATE referrals SET notice_issued_on = $2, notice_number = $3, \
                 reduced_amount = $4, reduced_days = $5, full_amount = $6, full_days = $7, \
                 notice_policy_id = $8, notice_clause = $9 WHERE id = $1",
            )
            .bind(id)
            .bind(notice.issued_on)
            .bind(number)
            .bind(notice.reduced_amount.map(amount))
            .bind(amount(notice.reduced_days))
            .bind(amount(notice.full_amount))
            .bind(amount(notice.full_days))
            .bind(policy_id)
            .bind(clause)
            .execute(&mut *tx)
            .await
            .map_err(storage("recording an outcome"))?;
        }
        if outcome.outcome == Outcome::Paid {
            sqlx::query("UPDATE referrals SET paid_on = $2 WHERE id = $1")
                .bind(id)
                .bind(outcome.on)
                .execute(&mut *tx)
                .await
                .map_err(storage("recording an outcome"))?;
        }
        let (position,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM referral_outcomes WHERE referral_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(storage("recording an outcome"))?;
        sqlx::query(
            "INSERT INTO referral_outcomes (referral_id, position, request_id, outcome, on_date, \
             note, recorded_by, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(position + 1)
        .bind((!outcome.request_id.is_empty()).then_some(outcome.request_id))
        .bind(outcome.outcome.as_str())
        .bind(outcome.on)
        .bind(outcome.note)
        .bind(outcome.recorded_by)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(storage("recording an outcome"))?;
        tx.commit().await.map_err(storage("recording an outcome"))?;
        Ok(true)
    }
    .await)
}

/// Filters for listing.
pub(crate) struct ListFilter {
    pub(crate) laestab: String,
    pub(crate) upn: String,
    pub(crate) kind: String,
    pub(crate) status: String,
    pub(crate) before_id: String,
    pub(crate) limit: i64,
}

/// Lists referrals, newest first, after the page token.
pub(crate) async fn list(db: &Db, filter: &ListFilter) -> Result<Vec<ReferralRow>, Status> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals \
             WHERE ($1 = '' OR laestab = $1) AND ($2 = '' OR upn = $2) \
             AND ($3 = '' OR kind = $3) AND ($4 = '' OR status = $4) \
             AND ($5 = '' OR id < $5) ORDER BY id DESC LIMIT $6"
        )))
        .bind(&filter.laestab)
        .bind(&filter.upn)
        .bind(&filter.kind)
        .bind(&filter.status)
        .bind(&filter.before_id)
        .bind(filter.limit)
        .fetch_all(pool)
        .await
    })
    .map_err(storage("listing referrals"))
}

/// Finds the pupil's open penalty-notice referral, at the school when one is given.
pub(crate) async fn open_penalty_notice(
    db: &Db,
    upn: &str,
    laestab: &str,
) -> Result<Option<ReferralRow>, Status> {
    with_db!(db, |pool| {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE upn = $1 \
             AND ($2 = '' OR laestab = $2) AND kind = 'penalty_notice' \
             AND status NOT IN ('paid', 'prosecution', 'withdrawn') ORDER BY id DESC"
        )))
        .bind(upn)
        .bind(laestab)
        .fetch_optional(pool)
        .await
    })
    .map_err(storage("reading a referral"))
}
