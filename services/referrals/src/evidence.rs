//! Follows the registers' change feed and records marks that change after a referral is
//! submitted.
//!
//! A submitted pack carries the pupil's marks over the attendance period of its figures. When a
//! mark in that period gets a new effective version later (an absence authorised after the
//! event, a late correction from the MIS), the local authority has evidence that is no longer
//! the register. Each such version is recorded against the referral, and GetReferral returns
//! it, so that the school can tell the authority. A version is later than the pack when its
//! feed position is greater than that of the newest mark in the pack: feed positions only grow,
//! so this is true whatever the follower's lag and however often the feed is replayed.
//!
//! The follower stores its position in the same transaction as the changes it records, so after
//! a restart it resumes without missing or repeating one.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use rollcall_api::client::Channel;
use rollcall_api::convert::session_from_proto;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{WatchMarksRequest, WatchMarksResponse};
use rollcall_domain::Session;
use rollcall_domain::session::parse_date;
use rollcall_runtime::grpc::gather;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::records::{OPEN, REFERRALS_LOCK_KEY};

/// The name under which the follower stores its position in the registers' mark feed.
const MARKS_FEED: &str = "registers.marks";
/// Feed entries handled in one transaction, at most.
const BATCH: usize = 10_000;
/// How long the follower waits for more entries before handling what it has.
const SETTLE: Duration = Duration::from_millis(250);
/// Links from a batch's span to the requests whose marks it checks, at most.
const MAX_LINKS: usize = 32;

/// Starts the follower. It retries with backoff when the registers service is unreachable.
pub(crate) fn spawn(db: Db, registers: RegistersServiceClient<Channel>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, registers.clone()).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Referral evidence follower failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

async fn follow(db: &Db, mut registers: RegistersServiceClient<Channel>) -> anyhow::Result<()> {
    let cursor = rollcall_runtime::storage::stored_cursor(db, MARKS_FEED).await?;
    tracing::info!(
        cursor,
        "Following the registers change feed for referral evidence"
    );
    let mut stream = registers
        .watch_marks(WatchMarksRequest {
            cursor,
            laestab: String::new(),
        })
        .await?
        .into_inner();
    loop {
        let Some(first) = stream.message().await? else {
            return Ok(());
        };
        let mut batch = Batch::default();
        gather(&mut stream, first, BATCH, SETTLE, |message| {
            batch.add(message)
        })
        .await?;
        let span = batch.span();
        record(db, &batch).instrument(span).await?;
    }
}

/// A new effective version of a session's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChangedMark {
    upn: String,
    date: NaiveDate,
    session: Session,
    code: String,
    sequence: i64,
}

/// Feed entries handled together: the new effective versions by school, the position to
/// store, and the traceparents of the requests that stored them.
#[derive(Debug, Default)]
struct Batch {
    marks: BTreeMap<String, Vec<ChangedMark>>,
    cursor: i64,
    traceparents: Vec<String>,
}

impl Batch {
    fn add(&mut self, message: WatchMarksResponse) {
        self.cursor = self.cursor.max(message.cursor);
        if !message.traceparent.is_empty() && self.traceparents.last() != Some(&message.traceparent)
        {
            self.traceparents.push(message.traceparent);
        }
        let Some(mark) = message.mark.filter(|_| message.effective) else {
            return;
        };
        let (Ok(date), Some(session)) = (parse_date(&mark.date), session_from_proto(mark.session))
        else {
            tracing::warn!(
                sequence = mark.sequence,
                "Skipped a feed entry with no valid session"
            );
            return;
        };
        self.marks
            .entry(mark.laestab)
            .or_default()
            .push(ChangedMark {
                upn: mark.upn,
                date,
                session,
                code: mark.code,
                sequence: mark.sequence,
            });
    }

    /// Returns the span of the batch's check: a child of the first request that stored its
    /// versions, and linked to the others, at most [`MAX_LINKS`] of them.
    fn span(&self) -> tracing::Span {
        let span = rollcall_runtime::telemetry::background_span(
            "referrals.check_evidence",
            self.traceparents.first().map(String::as_str),
        );
        for traceparent in self.traceparents.iter().skip(1).take(MAX_LINKS) {
            rollcall_runtime::telemetry::link_traceparent(&span, traceparent);
        }
        span
    }
}

/// A submitted, open referral whose evidence is followed.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Followed {
    id: String,
    upn: String,
    evidence_sequence: i64,
    period_from: Option<NaiveDate>,
    period_to: Option<NaiveDate>,
    as_of: NaiveDate,
}

impl Followed {
    /// Returns true when `mark` is a later version of a mark the referral's pack carried.
    fn is_changed_by(&self, mark: &ChangedMark) -> bool {
        let to = self.period_to.unwrap_or(self.as_of);
        mark.upn == self.upn
            && mark.sequence > self.evidence_sequence
            && mark.date <= to
            && self.period_from.is_none_or(|from| mark.date >= from)
    }
}

/// Returns the evidence changes in `marks` of the referrals in `followed`, as pairs of
/// referral id and mark.
fn changes<'a>(
    followed: &'a [Followed],
    marks: &'a [ChangedMark],
) -> Vec<(&'a str, &'a ChangedMark)> {
    followed
        .iter()
        .flat_map(|referral| {
            marks
                .iter()
                .filter(|mark| referral.is_changed_by(mark))
                .map(|mark| (referral.id.as_str(), mark))
        })
        .collect()
}

/// Records the batch's evidence changes and the new feed position, in one transaction.
async fn record(db: &Db, batch: &Batch) -> Result<(), sqlx::Error> {
    let followed_sql = format!(
        "SELECT id, upn, evidence_sequence, period_from, period_to, as_of FROM referrals \
         WHERE laestab = $1 AND evidence_sequence IS NOT NULL AND {OPEN}"
    );
    let now = Utc::now();
    let mut recorded: BTreeMap<String, usize> = BTreeMap::new();
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(REFERRALS_LOCK_KEY).await?;
        for (laestab, marks) in &batch.marks {
            let followed: Vec<Followed> = sqlx::query_as(sqlx::AssertSqlSafe(followed_sql.clone()))
                .bind(laestab)
                .fetch_all(&mut *tx)
                .await?;
            for (referral, mark) in changes(&followed, marks) {
                let inserted = sqlx::query(
                    "INSERT INTO evidence_changes (referral_id, sequence, session_date, session, \
                     code, noticed_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (referral_id, sequence) DO NOTHING",
                )
                .bind(referral)
                .bind(mark.sequence)
                .bind(mark.date)
                .bind(mark.session.as_str())
                .bind(&mark.code)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted > 0 {
                    *recorded.entry(referral.to_owned()).or_default() += 1;
                }
            }
        }
        sqlx::query(rollcall_runtime::storage::ADVANCE_CURSOR)
            .bind(MARKS_FEED)
            .bind(batch.cursor)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
    .await)?;
    for (referral, count) in recorded {
        tracing::warn!(
            referral = %referral,
            marks = count,
            "Marks in a submitted referral's pack changed after submission; the school should tell the local authority"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(upn: &str, date: &str, sequence: i64) -> ChangedMark {
        ChangedMark {
            upn: upn.to_owned(),
            date: parse_date(date).expect("date"),
            session: Session::Am,
            code: "O".to_owned(),
            sequence,
        }
    }

    fn referral(period: Option<(&str, &str)>) -> Followed {
        Followed {
            id: "r1".to_owned(),
            upn: "A123".to_owned(),
            evidence_sequence: 100,
            period_from: period.map(|(from, _)| parse_date(from).expect("date")),
            period_to: period.map(|(_, to)| parse_date(to).expect("date")),
            as_of: parse_date("2025-12-12").expect("date"),
        }
    }

    #[test]
    fn evidence_change_needs_later_version() {
        let followed = referral(Some(("2025-09-03", "2025-12-12")));
        assert!(followed.is_changed_by(&mark("A123", "2025-11-03", 101)));
        assert!(!followed.is_changed_by(&mark("A123", "2025-11-03", 100)));
        assert!(!followed.is_changed_by(&mark("A123", "2025-11-03", 7)));
    }

    #[test]
    fn evidence_change_within_period_only() {
        let followed = referral(Some(("2025-09-03", "2025-12-12")));
        assert!(followed.is_changed_by(&mark("A123", "2025-09-03", 101)));
        assert!(followed.is_changed_by(&mark("A123", "2025-12-12", 101)));
        assert!(!followed.is_changed_by(&mark("A123", "2025-09-02", 101)));
        assert!(!followed.is_changed_by(&mark("A123", "2025-12-15", 101)));
    }

    #[test]
    fn evidence_change_without_period_uses_as_of() {
        let followed = referral(None);
        assert!(followed.is_changed_by(&mark("A123", "2024-10-01", 101)));
        assert!(followed.is_changed_by(&mark("A123", "2025-12-12", 101)));
        assert!(!followed.is_changed_by(&mark("A123", "2025-12-13", 101)));
    }

    #[test]
    fn evidence_change_of_other_pupil_ignored() {
        let followed = [referral(None)];
        let marks = [
            mark("B456", "2025-11-03", 101),
            mark("A123", "2025-11-04", 102),
        ];
        let found = changes(&followed, &marks);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "r1");
        assert_eq!(found[0].1.upn, "A123");
    }
}
