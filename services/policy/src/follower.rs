//! Follows the registers' change feed and records triggers as pupils cross thresholds.
//!
//! The follower stores its position in the feed in the same transaction as the triggers it
//! derived, so after a restart it resumes where it stopped, without missing or repeating one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use rollcall_api::cases::v1::cases_service_client::CasesServiceClient;
use rollcall_api::cases::v1::{ListLaddersRequest, ListPlansRequest};
use rollcall_api::client::Channel;
use rollcall_api::convert::session_from_proto;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{Mark, WatchMarksRequest};
use rollcall_domain::ladder::{Ladder, choose_ladder, parse_ladder};
use rollcall_domain::session::{academic_year_of, parse_date};
use rollcall_domain::{Figures, Phase, Policy, Session, SessionDate};
use rollcall_runtime::grpc::gather;
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::storage::stored_cursor;
use rollcall_runtime::{Db, with_db};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::TRIGGER_LOCK_KEY;
use crate::figures::{
    PupilMarks, figures_to_proto, lookback, pupils_on_roll, school_and_as_of, school_phase,
};
use crate::policies;
use crate::upn_changes::{AppliedChange, apply_change, replaced_upns, resolve};

/// The name under which the follower stores its cursor.
pub(crate) const REGISTERS_FEED: &str = "registers.marks";
/// Feed entries gathered before evaluating, at most. Each evaluation reads the affected
/// schools' stored marks, so a large import is best evaluated in few passes.
const BATCH: usize = 50_000;
/// How long the follower waits for more marks before evaluating what it has.
const SETTLE: Duration = Duration::from_millis(250);
/// Links from an evaluation's span to the requests whose marks it evaluates, at most. A
/// batch from many small imports links to the first ones only.
const MAX_LINKS: usize = 32;

/// The kind of threshold a trigger is about, as stored and streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    PersistentAbsence,
    SevereAbsence,
    PenaltyNoticeWarning,
    UnexplainedAbsenceOverdue,
    UnauthorisedAbsenceReturn,
    SicknessReturn,
    MissedTarget,
}

impl Kind {
    const ALL: [Self; 7] = [
        Self::PersistentAbsence,
        Self::SevereAbsence,
        Self::PenaltyNoticeWarning,
        Self::UnexplainedAbsenceOverdue,
        Self::UnauthorisedAbsenceReturn,
        Self::SicknessReturn,
        Self::MissedTarget,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PersistentAbsence => "persistent_absence",
            Self::SevereAbsence => "severe_absence",
            Self::PenaltyNoticeWarning => "penalty_notice_warning",
            Self::UnexplainedAbsenceOverdue => "unexplained_absence_overdue",
            Self::UnauthorisedAbsenceReturn => "unauthorised_absence_return",
            Self::SicknessReturn => "sickness_return",
            Self::MissedTarget => "missed_target",
        }
    }

    /// Returns the clause of the policy behind this kind, or an empty string when the policy
    /// has no such rule.
    fn clause(self, policy: &Policy) -> &str {
        match self {
            Self::PersistentAbsence => &policy.persistent_absence_clause.reference,
            Self::SevereAbsence => &policy.severe_absence_clause.reference,
            Self::PenaltyNoticeWarning => &policy.penalty_warning.clause.reference,
            Self::UnexplainedAbsenceOverdue => policy
                .unexplained_absence
                .as_ref()
                .map_or("", |rule| rule.clause.reference.as_str()),
            Self::UnauthorisedAbsenceReturn => policy
                .unauthorised_absence_return
                .as_ref()
                .map_or("", |rule| rule.clause.reference.as_str()),
            Self::SicknessReturn => policy
                .sickness_return
                .as_ref()
                .map_or("", |rule| rule.clause.reference.as_str()),
            Self::MissedTarget => "Attendance Improvement Plan",
        }
    }
}

/// The kind of a ladder-stage trigger, as stored and streamed.
pub(crate) const LADDER_STAGE: &str = "ladder_stage";

/// A pupil's position on each kind of trigger, as stored between evaluations.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
struct PupilStatus {
    persistent_absence: bool,
    severe_absence: bool,
    penalty_warning: bool,
    unexplained_overdue: bool,
    unauthorised_return: bool,
    sickness_return: bool,
    missed_target: bool,
    /// The ladder stage whose entry criteria the pupil meets; empty for none.
    ladder_stage: String,
}

/// A pupil's stored status with their UPN.
#[derive(Debug, sqlx::FromRow)]
struct StoredStatus {
    upn: String,
    #[sqlx(flatten)]
    status: PupilStatus,
}

impl PupilStatus {
    fn get(&self, kind: Kind) -> bool {
        match kind {
            Kind::PersistentAbsence => self.persistent_absence,
            Kind::SevereAbsence => self.severe_absence,
            Kind::PenaltyNoticeWarning => self.penalty_warning,
            Kind::UnexplainedAbsenceOverdue => self.unexplained_overdue,
            Kind::UnauthorisedAbsenceReturn => self.unauthorised_return,
            Kind::SicknessReturn => self.sickness_return,
            Kind::MissedTarget => self.missed_target,
        }
    }
}

/// Starts the follower. It retries with backoff when the registers service is unreachable.
pub fn spawn_follower(
    db: Db,
    registers: RegistersServiceClient<Channel>,
    cases: CasesServiceClient<Channel>,
    trigger_head: watch::Sender<i64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(&db, registers.clone(), cases.clone(), &trigger_head).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Registers feed follower failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    })
}

async fn follow(
    db: &Db,
    mut registers: RegistersServiceClient<Channel>,
    mut cases: CasesServiceClient<Channel>,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<()> {
    let cursor = stored_cursor(db, REGISTERS_FEED).await?;
    tracing::info!(cursor, "Following the registers change feed");
    let mut stream = registers
        .watch_marks(WatchMarksRequest {
            cursor,
            laestab: String::new(),
        })
        .await?
        .into_inner();

    loop {
        // Wait for the first message, then gather what follows until the feed goes quiet.
        let Some(first) = stream.message().await? else {
            return Ok(());
        };
        let mut batch = Batch::default();
        let mut last_cursor = 0;
        let count = gather(&mut stream, first, BATCH, SETTLE, |message| {
            batch.add_traceparent(message.traceparent);
            if let Some(mark) = message.mark {
                batch.add(mark, message.effective);
            }
            last_cursor = message.cursor;
        })
        .await?;
        let schools = batch.affected.len();
        let span = batch.span();
        evaluate(
            db,
            &mut registers,
            &mut cases,
            &batch,
            Some(last_cursor),
            None,
            trigger_head,
        )
        .instrument(span)
        .await?;
        tracing::info!(
            cursor = last_cursor,
            marks = count,
            schools,
            "Evaluated pupils after new marks"
        );
    }
}

/// A session's new effective code, as the feed reports it.
#[derive(Debug, Clone)]
struct EffectiveMark {
    laestab: String,
    upn: String,
    date: NaiveDate,
    session: Session,
    code: String,
    sequence: i64,
}

/// One pass of the follower: the new effective codes, and the pupils to evaluate by school. An empty set of pupils means every pupil of the school.
#[derive(Debug, Default)]
struct Batch {
    marks: Vec<EffectiveMark>,
    affected: BTreeMap<String, BTreeSet<String>>,
    /// The W3C traceparents of the requests that stored the batch's versions, in feed order.
    /// One request's versions are contiguous in the feed, so each appears once.
    traceparents: Vec<String>,
}

impl Batch {
    fn add_traceparent(&mut self, traceparent: String) {
        if !traceparent.is_empty() && self.traceparents.last() != Some(&traceparent) {
            self.traceparents.push(traceparent);
        }
    }

    /// Returns the span of the batch's evaluation: a child of the first request that stored its
    /// versions, and linked to the others, at most [`MAX_LINKS`] of them.
    fn span(&self) -> tracing::Span {
        let span = rollcall_runtime::telemetry::background_span(
            "policy.evaluate_marks",
            self.traceparents.first().map(String::as_str),
        );
        for traceparent in self.traceparents.iter().skip(1).take(MAX_LINKS) {
            rollcall_runtime::telemetry::link_traceparent(&span, traceparent);
        }
        span
    }

    fn add(&mut self, mark: Mark, effective: bool) {
        let (Ok(date), Some(session)) = (parse_date(&mark.date), session_from_proto(mark.session))
        else {
            tracing::warn!(
                sequence = mark.sequence,
                "Skipped a feed entry with no valid session"
            );
            return;
        };
        self.affected
            .entry(mark.laestab.clone())
            .or_default()
            .insert(mark.upn.clone());
        if effective {
            self.marks.push(EffectiveMark {
                laestab: mark.laestab,
                upn: mark.upn,
                date,
                session,
                code: mark.code,
                sequence: mark.sequence,
            });
        }
    }
}

/// Re-evaluates every pupil of a school, for example after it moves to another policy, and
/// stores the triggers that follow. The feed cursor is left where it is.
pub(crate) async fn evaluate_school(
    db: &Db,
    registers: &mut RegistersServiceClient<Channel>,
    cases: &mut CasesServiceClient<Channel>,
    laestab: &str,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<TriggerCounts> {
    let batch = Batch {
        affected: BTreeMap::from([(laestab.to_owned(), BTreeSet::new())]),
        ..Batch::default()
    };
    evaluate(db, registers, cases, &batch, None, None, trigger_head).await
}

/// Applies a UPN change from the registers and re-evaluates the pupil under the new UPN at
/// `schools`, in one transaction that also stores the change's position.
pub(crate) async fn evaluate_after_upn_change(
    db: &Db,
    registers: &mut RegistersServiceClient<Channel>,
    cases: &mut CasesServiceClient<Channel>,
    change: &AppliedChange,
    schools: &BTreeSet<String>,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<TriggerCounts> {
    let batch = Batch {
        affected: schools
            .iter()
            .map(|laestab| (laestab.clone(), BTreeSet::from([change.to.clone()])))
            .collect(),
        ..Batch::default()
    };
    evaluate(
        db,
        registers,
        cases,
        &batch,
        None,
        Some(change),
        trigger_head,
    )
    .await
}

/// A school as the follower evaluates it: its phase, the as-of date, the policy in force then,
/// and the pupils on roll in the academic year with their year groups.
struct SchoolContext {
    laestab: String,
    phase: Phase,
    as_of: NaiveDate,
    policy: Policy,
    adopted_from: Option<NaiveDate>,
    pupils: BTreeMap<String, String>,
    only: BTreeSet<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct StoredMark {
    upn: String,
    session_date: NaiveDate,
    session: String,
    code: String,
    sequence: i64,
}

/// A pupil's kept totals for an academic year.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StoredTotals {
    pub(crate) upn: String,
    pub(crate) academic_year: i32,
    present: i32,
    approved_activity: i32,
    authorised: i32,
    unauthorised: i32,
    not_possible: i32,
}

impl StoredTotals {
    pub(crate) fn figures(&self) -> Figures {
        let count = |value: i32| u32::try_from(value).unwrap_or(0);
        Figures {
            present: count(self.present),
            approved_activity: count(self.approved_activity),
            authorised_absence: count(self.authorised),
            unauthorised_absence: count(self.unauthorised),
            not_possible: count(self.not_possible),
        }
    }
}

/// The writes that bring a school's stored copy and totals up to date with new codes.
#[derive(Debug, Default)]
struct ProjectionPlan {
    laestab: String,
    marks: Vec<EffectiveMark>,
    totals: BTreeMap<(String, i32), Figures>,
}

type MarkKey = (String, NaiveDate, String);

/// Works out, in memory, which new codes replace stored ones and the totals that follow. A code
/// older (by feed position) than the stored one is passed over, so replaying the feed changes
/// nothing.
fn plan_projection(
    laestab: &str,
    marks: &[&EffectiveMark],
    stored: Vec<StoredMark>,
    totals: Vec<StoredTotals>,
) -> ProjectionPlan {
    let mut current: BTreeMap<MarkKey, (String, i64)> = stored
        .into_iter()
        .map(|row| {
            (
                (row.upn, row.session_date, row.session),
                (row.code, row.sequence),
            )
        })
        .collect();
    let mut figures: BTreeMap<(String, i32), Figures> = totals
        .iter()
        .map(|row| ((row.upn.clone(), row.academic_year), row.figures()))
        .collect();
    let mut plan = ProjectionPlan {
        laestab: laestab.to_owned(),
        ..ProjectionPlan::default()
    };
    let mut changed: BTreeMap<MarkKey, EffectiveMark> = BTreeMap::new();
    let mut touched = BTreeSet::new();
    for mark in marks {
        let key = (
            mark.upn.clone(),
            mark.date,
            mark.session.as_str().to_owned(),
        );
        if current
            .get(&key)
            .is_some_and(|(_, sequence)| *sequence >= mark.sequence)
        {
            continue;
        }
        let year = academic_year_of(mark.date);
        let old = current.insert(key.clone(), (mark.code.clone(), mark.sequence));
        figures
            .entry((mark.upn.clone(), year))
            .or_default()
            .replace(old.as_ref().map(|(code, _)| code.as_str()), &mark.code);
        touched.insert((mark.upn.clone(), year));
        changed.insert(key, (*mark).clone());
    }
    plan.marks = changed.into_values().collect();
    plan.totals = figures
        .into_iter()
        .filter(|(key, _)| touched.contains(key))
        .collect();
    plan
}

/// Rows per multi-row insert: well under SQLite's limit on bound values.
const WRITE_CHUNK: usize = 1_000;

/// Writes a projection plan in multi-row upserts.
async fn write_projection<'c, DB>(
    tx: &mut sqlx::Transaction<'c, DB>,
    plan: &ProjectionPlan,
) -> Result<(), sqlx::Error>
where
    DB: sqlx::Database,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> NaiveDate: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e mut <DB as sqlx::Database>::Connection: sqlx::Executor<'e, Database = DB>,
{
    for chunk in plan.marks.chunks(WRITE_CHUNK) {
        let mut insert = sqlx::QueryBuilder::<DB>::new(
            "INSERT INTO pupil_marks (laestab, upn, session_date, session, code, sequence) ",
        );
        insert.push_values(chunk, |mut row, mark| {
            row.push_bind(plan.laestab.clone())
                .push_bind(mark.upn.clone())
                .push_bind(mark.date)
                .push_bind(mark.session.as_str().to_owned())
                .push_bind(mark.code.clone())
                .push_bind(mark.sequence);
        });
        insert.push(
            " ON CONFLICT (laestab, upn, session_date, session) DO UPDATE \
             SET code = excluded.code, sequence = excluded.sequence",
        );
        insert.build().execute(&mut **tx).await?;
    }
    let totals: Vec<(&(String, i32), &Figures)> = plan.totals.iter().collect();
    for chunk in totals.chunks(WRITE_CHUNK) {
        let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        let mut insert = sqlx::QueryBuilder::<DB>::new(
            "INSERT INTO pupil_totals (laestab, upn, academic_year, present, approved_activity, \
             authorised, unauthorised, not_possible) ",
        );
        insert.push_values(chunk, |mut row, ((upn, year), figures)| {
            row.push_bind(plan.laestab.clone())
                .push_bind(upn.clone())
                .push_bind(*year)
                .push_bind(count(figures.present))
                .push_bind(count(figures.approved_activity))
                .push_bind(count(figures.authorised_absence))
                .push_bind(count(figures.unauthorised_absence))
                .push_bind(count(figures.not_possible));
        });
        insert.push(
            " ON CONFLICT (laestab, upn, academic_year) DO UPDATE SET present = excluded.present, \
             approved_activity = excluded.approved_activity, authorised = excluded.authorised, \
             unauthorised = excluded.unauthorised, not_possible = excluded.not_possible",
        );
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Re-evaluates the affected pupils of each school under the policy each school follows. In
/// one transaction it applies a UPN change when given, applies the batch's effective codes to
/// the stored copy and totals, reads the affected pupils back, and stores triggers, statuses
/// and, when given, the new cursor.
async fn evaluate(
    db: &Db,
    registers: &mut RegistersServiceClient<Channel>,
    cases: &mut CasesServiceClient<Channel>,
    batch: &Batch,
    cursor: Option<i64>,
    change: Option<&AppliedChange>,
    trigger_head: &watch::Sender<i64>,
) -> anyhow::Result<TriggerCounts> {
    let ladders = ladders_in_use(cases).await?;
    let plans = active_plans(cases).await?;
    let mut schools = Vec::new();
    for (laestab, upns) in &batch.affected {
        let (school, as_of) = school_and_as_of(registers, laestab, "").await?;
        let Some(as_of) = as_of else { continue };
        let version = policies::policy_for(db, laestab, as_of)
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
        let pupils = pupils_on_roll(registers, laestab, as_of)
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
        schools.push(SchoolContext {
            laestab: laestab.clone(),
            phase: school_phase(&school),
            as_of,
            policy: version.policy,
            adopted_from: version.adopted_from,
            pupils,
            only: upns.clone(),
        });
    }

    let now = Utc::now();
    let traceparent = rollcall_runtime::telemetry::current_traceparent();
    let head = with_db!(db, |pool| {
        let mut tx = pool.begin_write(TRIGGER_LOCK_KEY).await?;
        if let Some(change) = change {
            apply_change(&mut tx, change, now).await?;
        }

        // A mark read from the feed before a UPN change was applied here names the replaced
        // UPN, so it is kept under the UPN that replaced it.
        let replaced = replaced_upns(&mut tx).await?;
        let renamed: Vec<EffectiveMark>;
        let marks: &[EffectiveMark] = if batch
            .marks
            .iter()
            .any(|mark| replaced.contains_key(&mark.upn))
        {
            renamed = batch
                .marks
                .iter()
                .map(|mark| EffectiveMark {
                    upn: resolve(&replaced, &mark.upn).to_owned(),
                    ..mark.clone()
                })
                .collect();
            &renamed
        } else {
            &batch.marks
        };

        // The new effective codes, each changing its pupil's totals for the academic year.
        let planned = {
            let mut by_school: BTreeMap<&str, Vec<&EffectiveMark>> = BTreeMap::new();
            for mark in marks {
                by_school
                    .entry(mark.laestab.as_str())
                    .or_default()
                    .push(mark);
            }
            let mut planned = Vec::new();
            for (laestab, marks) in by_school {
                let first = marks.iter().map(|m| m.date).min().unwrap_or(NaiveDate::MIN);
                let last = marks.iter().map(|m| m.date).max().unwrap_or(NaiveDate::MAX);
                let stored: Vec<StoredMark> = sqlx::query_as(
                    "SELECT upn, session_date, session, code, sequence FROM pupil_marks \
                     WHERE laestab = $1 AND session_date >= $2 AND session_date <= $3",
                )
                .bind(laestab)
                .bind(first)
                .bind(last)
                .fetch_all(&mut *tx)
                .await?;
                let totals: Vec<StoredTotals> = sqlx::query_as(
                    "SELECT upn, academic_year, present, approved_activity, authorised, \
                     unauthorised, not_possible FROM pupil_totals \
                     WHERE laestab = $1 AND academic_year >= $2 AND academic_year <= $3",
                )
                .bind(laestab)
                .bind(academic_year_of(first))
                .bind(academic_year_of(last))
                .fetch_all(&mut *tx)
                .await?;
                planned.push(plan_projection(laestab, &marks, stored, totals));
            }
            planned
        };
        for plan in &planned {
            write_projection(&mut tx, plan).await?;
        }

        // The affected pupils, read back from the stored copy.
        let mut loaded: Vec<(&SchoolContext, Vec<PupilMarks>, BTreeMap<String, Figures>)> =
            Vec::new();
        for school in &schools {
            let only: BTreeSet<&str> = school
                .only
                .iter()
                .map(|upn| resolve(&replaced, upn))
                .collect();
            // Only the affected pupils' rows are read, so a small batch costs little however
            // large the school.
            let upns: Vec<String> = only
                .iter()
                .filter(|upn| school.pupils.contains_key(**upn))
                .map(|upn| (*upn).to_owned())
                .collect();
            let (rows, totals) = if only.is_empty() {
                let rows: Vec<StoredMark> = sqlx::query_as(
                    "SELECT upn, session_date, session, code, sequence FROM pupil_marks \
                     WHERE laestab = $1 AND session_date >= $2 AND session_date <= $3 \
                     ORDER BY upn, session_date, session",
                )
                .bind(&school.laestab)
                .bind(lookback(school.as_of))
                .bind(school.as_of)
                .fetch_all(&mut *tx)
                .await?;
                let totals: Vec<StoredTotals> = sqlx::query_as(
                    "SELECT upn, academic_year, present, approved_activity, authorised, \
                     unauthorised, not_possible FROM pupil_totals \
                     WHERE laestab = $1 AND academic_year = $2",
                )
                .bind(&school.laestab)
                .bind(academic_year_of(school.as_of))
                .fetch_all(&mut *tx)
                .await?;
                (rows, totals)
            } else {
                let mut rows: Vec<StoredMark> = Vec::new();
                let mut totals: Vec<StoredTotals> = Vec::new();
                for chunk in upns.chunks(WRITE_CHUNK) {
                    let mut query = sqlx::QueryBuilder::new(
                        "SELECT upn, session_date, session, code, sequence FROM pupil_marks \
                         WHERE laestab = ",
                    );
                    query.push_bind(school.laestab.clone());
                    query.push(" AND session_date >= ");
                    query.push_bind(lookback(school.as_of));
                    query.push(" AND session_date <= ");
                    query.push_bind(school.as_of);
                    query.push(" AND upn IN (");
                    let mut list = query.separated(", ");
                    for upn in chunk {
                        list.push_bind(upn.clone());
                    }
                    query.push(") ORDER BY upn, session_date, session");
                    rows.extend(
                        query
                            .build_query_as::<StoredMark>()
                            .fetch_all(&mut *tx)
                            .await?,
                    );
                    let mut query = sqlx::QueryBuilder::new(
                        "SELECT upn, academic_year, present, approved_activity, authorised, \
                         unauthorised, not_possible FROM pupil_totals WHERE laestab = ",
                    );
                    query.push_bind(school.laestab.clone());
                    query.push(" AND academic_year = ");
                    query.push_bind(academic_year_of(school.as_of));
                    query.push(" AND upn IN (");
                    let mut list = query.separated(", ");
                    for upn in chunk {
                        list.push_bind(upn.clone());
                    }
                    query.push(")");
                    totals.extend(
                        query
                            .build_query_as::<StoredTotals>()
                            .fetch_all(&mut *tx)
                            .await?,
                    );
                }
                (rows, totals)
            };
            let in_scope = |upn: &str| {
                school.pupils.contains_key(upn) && (only.is_empty() || only.contains(upn))
            };
            let mut pupils: BTreeMap<String, PupilMarks> = school
                .pupils
                .iter()
                .filter(|(upn, _)| in_scope(upn))
                .map(|(upn, year_group)| {
                    (
                        upn.clone(),
                        PupilMarks {
                            upn: upn.clone(),
                            year_group: year_group.clone(),
                            marks: Vec::new(),
                        },
                    )
                })
                .collect();
            for row in rows {
                let Some(pupil) = pupils.get_mut(&row.upn) else {
                    continue;
                };
                let Ok(session) = row.session.parse::<Session>() else {
                    continue;
                };
                pupil.marks.push((
                    SessionDate {
                        date: row.session_date,
                        session,
                    },
                    row.code,
                ));
            }
            let totals = totals
                .into_iter()
                .filter(|row| in_scope(&row.upn))
                .map(|row| (row.upn.clone(), row.figures()))
                .collect();
            loaded.push((school, pupils.into_values().collect(), totals));
        }
        let mut evaluations = Vec::new();
        for (school, pupils, totals) in &loaded {
            for pupil in pupils {
                let figures = totals.get(&pupil.upn).copied().unwrap_or_default();
                evaluations.push(Evaluation::of(pupil, figures, school, &ladders, &plans));
            }
        }

        let mut next: i64 =
            sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(sequence), 0) FROM triggers")
                .fetch_one(&mut *tx)
                .await?;
        let mut counts = TriggerCounts::default();
        // (school, kind, state) of each trigger recorded, counted once the transaction commits.
        let mut recorded: Vec<(String, &'static str, &'static str)> = Vec::new();
        // Each evaluated pupil's status before this pass, read a chunk of pupils at a time.
        let mut previous: BTreeMap<(String, String), PupilStatus> = BTreeMap::new();
        let mut by_school: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for evaluation in &evaluations {
            by_school
                .entry(evaluation.laestab.as_str())
                .or_default()
                .push(evaluation.pupil.upn.as_str());
        }
        for (laestab, upns) in &by_school {
            for chunk in upns.chunks(WRITE_CHUNK) {
                let mut query = sqlx::QueryBuilder::new(
                    "SELECT upn, persistent_absence, severe_absence, penalty_warning, \
                     unexplained_overdue, unauthorised_return, sickness_return, missed_target, \
                     ladder_stage FROM pupil_status WHERE laestab = ",
                );
                query.push_bind((*laestab).to_owned());
                query.push(" AND upn IN (");
                let mut list = query.separated(", ");
                for upn in chunk {
                    list.push_bind((*upn).to_owned());
                }
                query.push(")");
                let rows: Vec<StoredStatus> = query.build_query_as().fetch_all(&mut *tx).await?;
                for row in rows {
                    previous.insert(((*laestab).to_owned(), row.upn), row.status);
                }
            }
        }
        let mut statuses: Vec<&Evaluation<'_>> = Vec::new();
        for evaluation in &evaluations {
            let before = previous
                .remove(&(evaluation.laestab.clone(), evaluation.pupil.upn.clone()))
                .unwrap_or_default();
            let after = &evaluation.status;
            let policy = evaluation.policy;
            // (kind, raised, clause, ladder stage) for every change.
            let mut changes: Vec<(&'static str, bool, String, String)> = Kind::ALL
                .into_iter()
                .filter(|kind| before.get(*kind) != after.get(*kind))
                .map(|kind| {
                    (
                        kind.as_str(),
                        after.get(kind),
                        kind.clause(policy).to_owned(),
                        String::new(),
                    )
                })
                .collect();
            if before.ladder_stage != after.ladder_stage {
                if after.ladder_stage.is_empty() {
                    changes.push((
                        LADDER_STAGE,
                        false,
                        String::new(),
                        before.ladder_stage.clone(),
                    ));
                } else {
                    changes.push((
                        LADDER_STAGE,
                        true,
                        evaluation.stage_clause.clone(),
                        after.ladder_stage.clone(),
                    ));
                }
            }
            for (kind, is, clause, stage) in changes {
                next += 1;
                if is {
                    counts.raised += 1;
                } else {
                    counts.withdrawn += 1;
                }
                let state = if is { "raised" } else { "withdrawn" };
                let id = format!("trg-{next:010}");
                sqlx::query(
                    "INSERT INTO triggers (sequence, id, kind, state, laestab, upn, year_group, phase, \
                     policy_id, clause, as_of, figures, created_at, ladder_stage, traceparent) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(next)
                .bind(&id)
                .bind(kind)
                .bind(state)
                .bind(&evaluation.laestab)
                .bind(&evaluation.pupil.upn)
                .bind(&evaluation.pupil.year_group)
                .bind(evaluation.phase.as_str())
                .bind(&policy.id)
                .bind(&clause)
                .bind(evaluation.as_of)
                .bind(&evaluation.figures_json)
                .bind(now)
                .bind(&stage)
                .bind(&traceparent)
                .execute(&mut *tx)
                .await?;
                recorded.push((evaluation.laestab.clone(), kind, state));
                tracing::info!(trigger = %id, kind, state, upn = %evaluation.pupil.upn, laestab = %evaluation.laestab, "Trigger recorded");
            }
            statuses.push(evaluation);
        }
        for chunk in statuses.chunks(WRITE_CHUNK) {
            let mut upsert = sqlx::QueryBuilder::new(
                "INSERT INTO pupil_status (laestab, upn, persistent_absence, severe_absence, \
                 penalty_warning, unexplained_overdue, unauthorised_return, sickness_return, as_of, \
                 ladder_stage, missed_target) ",
            );
            upsert.push_values(chunk, |mut row, evaluation| {
                let after = &evaluation.status;
                row.push_bind(evaluation.laestab.clone())
                    .push_bind(evaluation.pupil.upn.clone())
                    .push_bind(after.persistent_absence)
                    .push_bind(after.severe_absence)
                    .push_bind(after.penalty_warning)
                    .push_bind(after.unexplained_overdue)
                    .push_bind(after.unauthorised_return)
                    .push_bind(after.sickness_return)
                    .push_bind(evaluation.as_of)
                    .push_bind(after.ladder_stage.clone())
                    .push_bind(after.missed_target);
            });
            upsert.push(
                " ON CONFLICT (laestab, upn) DO UPDATE SET \
                 persistent_absence = excluded.persistent_absence, \
                 severe_absence = excluded.severe_absence, penalty_warning = excluded.penalty_warning, \
                 unexplained_overdue = excluded.unexplained_overdue, \
                 unauthorised_return = excluded.unauthorised_return, \
                 sickness_return = excluded.sickness_return, as_of = excluded.as_of, \
                 ladder_stage = excluded.ladder_stage, missed_target = excluded.missed_target",
            );
            upsert.build().execute(&mut *tx).await?;
        }
        if let Some(cursor) = cursor {
            sqlx::query(rollcall_runtime::storage::ADVANCE_CURSOR)
                .bind(REGISTERS_FEED)
                .bind(cursor)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>((next, counts, recorded))
    })?;
    let (head, counts, recorded) = head;
    for (laestab, kind, state) in &recorded {
        rollcall_runtime::telemetry::metrics::policy_trigger(laestab, kind, state);
    }
    trigger_head.send_if_modified(|current| {
        if head > *current {
            *current = head;
            true
        } else {
            false
        }
    });
    Ok(counts)
}

/// How many triggers one evaluation raised and withdrew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TriggerCounts {
    pub(crate) raised: u32,
    pub(crate) withdrawn: u32,
}

struct Evaluation<'a> {
    pupil: &'a PupilMarks,
    policy: &'a Policy,
    laestab: String,
    phase: Phase,
    as_of: NaiveDate,
    status: PupilStatus,
    /// The clause of the ladder stage whose criteria the pupil meets.
    stage_clause: String,
    figures_json: String,
}

impl<'a> Evaluation<'a> {
    /// Evaluates a pupil from their stored totals for the academic year and their marks.
    fn of(
        pupil: &'a PupilMarks,
        figures: Figures,
        school: &'a SchoolContext,
        ladders: &[Ladder],
        plans: &[PlanTarget],
    ) -> Self {
        let policy = &school.policy;
        let penalty = pupil.penalty(policy, school.as_of, school.adopted_from);
        let alerts = pupil.alerts(policy, school.as_of);
        let proto = figures_to_proto(&figures, policy);
        let phase = pupil.phase(school.phase);
        let ladder = choose_ladder(ladders, phase);
        let stage = figures
            .attendance_tenths()
            .and_then(|tenths| ladder.stage_for_attendance(tenths))
            .map(|(_, stage)| stage.clone());
        Self {
            pupil,
            policy,
            laestab: school.laestab.clone(),
            phase,
            as_of: school.as_of,
            status: PupilStatus {
                persistent_absence: policy.is_persistent_absence(&figures),
                severe_absence: policy.is_severe_absence(&figures),
                penalty_warning: penalty.met,
                unexplained_overdue: alerts.unexplained_met(),
                unauthorised_return: alerts.unauthorised_met(),
                sickness_return: alerts.sickness_met(),
                ladder_stage: stage.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
                missed_target: missed_target(pupil, &school.laestab, school.as_of, plans),
            },
            stage_clause: stage.map(|s| s.clause).unwrap_or_default(),
            figures_json: serde_json::json!({
                "possible_sessions": proto.possible_sessions,
                "attended_sessions": proto.attended_sessions,
                "present_sessions": proto.present_sessions,
                "approved_activity_sessions": proto.approved_activity_sessions,
                "authorised_absence_sessions": proto.authorised_absence_sessions,
                "unauthorised_absence_sessions": proto.unauthorised_absence_sessions,
                "not_possible_sessions": proto.not_possible_sessions,
            })
            .to_string(),
        }
    }
}

/// An active plan's attendance target, as the follower checks it.
#[derive(Debug, Clone)]
struct PlanTarget {
    upn: String,
    laestab: String,
    target_percent: u32,
    start: NaiveDate,
    review: NaiveDate,
    /// Whether the attendance target was met at the latest review, if there has been one.
    last_review_met: Option<bool>,
}

/// Reads the active Attendance Improvement Plans from the cases service.
async fn active_plans(cases: &mut CasesServiceClient<Channel>) -> anyhow::Result<Vec<PlanTarget>> {
    let listed = cases
        .list_plans(ListPlansRequest {
            laestab: String::new(),
            upn: String::new(),
            active_only: true,
        })
        .await?
        .into_inner();
    Ok(listed
        .plans
        .into_iter()
        .filter_map(|plan| {
            Some(PlanTarget {
                last_review_met: plan.reviews.last().map(|review| review.attendance_met),
                start: parse_date(&plan.start_date).ok()?,
                review: parse_date(&plan.review_date).ok()?,
                target_percent: u32::try_from(plan.attendance_target_percent).ok()?,
                upn: plan.upn,
                laestab: plan.laestab,
            })
        })
        .collect())
}

/// Returns true when a plan of the pupil's at this school missed its attendance target: at
/// its latest review, or over the plan's period once a review date has passed unreviewed.
fn missed_target(
    pupil: &PupilMarks,
    laestab: &str,
    as_of: NaiveDate,
    plans: &[PlanTarget],
) -> bool {
    plans
        .iter()
        .filter(|plan| plan.upn == pupil.upn && plan.laestab == laestab)
        .any(|plan| {
            if plan.last_review_met == Some(false) {
                return true;
            }
            if plan.review > as_of {
                return false;
            }
            let figures = Figures::from_codes(
                pupil
                    .marks
                    .iter()
                    .filter(|(session, _)| {
                        session.date >= plan.start && session.date <= plan.review
                    })
                    .map(|(_, code)| code.as_str()),
            );
            figures
                .attendance_tenths()
                .is_some_and(|tenths| tenths < plan.target_percent * 10)
        })
}

/// Reads the ladders in use from the cases service: the loaded ones and the defaults they do
/// not replace.
async fn ladders_in_use(cases: &mut CasesServiceClient<Channel>) -> anyhow::Result<Vec<Ladder>> {
    let listed = cases
        .list_ladders(ListLaddersRequest {})
        .await?
        .into_inner();
    let mut ladders = Vec::new();
    for ladder in listed.ladders {
        match parse_ladder(&ladder.source) {
            Ok(parsed) => ladders.push(parsed),
            Err(error) => {
                tracing::warn!(ladder = %ladder.id, %error, "A ladder from the cases service cannot be read; the default is used");
            }
        }
    }
    Ok(ladders)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(day: u32, code: &str, sequence: i64) -> EffectiveMark {
        EffectiveMark {
            laestab: "9192001".into(),
            upn: "A123".into(),
            date: NaiveDate::from_ymd_opt(2025, 9, day).expect("valid date"),
            session: Session::Am,
            code: code.into(),
            sequence,
        }
    }

    #[test]
    fn plan_replaces_codes_and_moves_totals() {
        let stored = vec![StoredMark {
            upn: "A123".into(),
            session_date: NaiveDate::from_ymd_opt(2025, 9, 1).expect("valid date"),
            session: "AM".into(),
            code: "N".into(),
            sequence: 5,
        }];
        let totals = vec![StoredTotals {
            upn: "A123".into(),
            academic_year: 2025,
            present: 0,
            approved_activity: 0,
            authorised: 0,
            unauthorised: 1,
            not_possible: 0,
        }];
        let marks = [mark(1, "I", 7), mark(1, "O", 6), mark(2, "/", 8)];
        let refs: Vec<&EffectiveMark> = marks.iter().collect();
        let plan = plan_projection("9192001", &refs, stored, totals);

        let codes: Vec<&str> = plan.marks.iter().map(|m| m.code.as_str()).collect();
        assert_eq!(
            codes,
            ["I", "/"],
            "O came before I in the feed, so it is passed over"
        );
        let figures = plan.totals[&("A123".to_owned(), 2025)];
        assert_eq!(figures.unauthorised_absence, 0);
        assert_eq!(figures.authorised_absence, 1);
        assert_eq!(figures.present, 1);
    }

    #[test]
    fn replayed_codes_change_nothing() {
        let stored = vec![StoredMark {
            upn: "A123".into(),
            session_date: NaiveDate::from_ymd_opt(2025, 9, 1).expect("valid date"),
            session: "AM".into(),
            code: "I".into(),
            sequence: 7,
        }];
        let marks = [mark(1, "I", 7)];
        let refs: Vec<&EffectiveMark> = marks.iter().collect();
        let plan = plan_projection("9192001", &refs, stored, Vec::new());
        assert!(plan.marks.is_empty());
        assert!(plan.totals.is_empty());
    }
}
