//! Policy versions and the policy each school follows over time.
//!
//! The shipped policies are always available. Other versions are loaded from files and stored
//! with their text. A school follows the default policy until it is moved to another from a
//! date. On any date, the version applied is the one of that policy in force then.

use chrono::{DateTime, NaiveDate, Utc};
use rollcall_domain::Policy;
use rollcall_domain::policy::file::{check_no_overlap, parse_policy};
use rollcall_domain::policy::{STATUTORY_2024_TOML, TRUST_2021_TOML};
use rollcall_runtime::grpc::{invalid_argument, not_found, storage_error};
use rollcall_runtime::storage::WriteTransaction;
use rollcall_runtime::{Db, with_db};
use tonic::Status;

/// The policy a school follows until it is moved to another: the trust's 2021 policy.
pub(crate) const DEFAULT_POLICY_ID: &str = "aat-2021";

/// Serialises loads and assignments on PostgreSQL.
const POLICY_LOCK_KEY: i64 = rollcall_runtime::storage::lock_keys::POLICY_POLICIES;

/// A policy version with the text it was read from.
#[derive(Debug, Clone)]
pub(crate) struct PolicyVersion {
    pub(crate) policy: Policy,
    pub(crate) source: String,
    /// The date the school moved to this policy, when it was chosen for a school that did.
    /// Penalty windows do not reach back before it.
    pub(crate) adopted_from: Option<NaiveDate>,
}

#[derive(Debug, sqlx::FromRow)]
struct SourceRow {
    policy_id: String,
    version: String,
    source: String,
}

/// A school's move to a policy from a date.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Assignment {
    pub(crate) laestab: String,
    pub(crate) from_date: NaiveDate,
    pub(crate) policy_id: String,
    pub(crate) assigned_by: String,
    pub(crate) reason: String,
    pub(crate) assigned_at: DateTime<Utc>,
}

fn shipped() -> Vec<PolicyVersion> {
    vec![
        PolicyVersion {
            policy: Policy::trust_2021(),
            source: TRUST_2021_TOML.to_owned(),
            adopted_from: None,
        },
        PolicyVersion {
            policy: Policy::statutory_2024(),
            source: STATUTORY_2024_TOML.to_owned(),
            adopted_from: None,
        },
    ]
}

/// Returns every version held, the shipped ones first, then by id and effective date.
pub(crate) async fn versions(db: &Db) -> Result<Vec<PolicyVersion>, Status> {
    let rows: Vec<SourceRow> = with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT policy_id, version, source FROM policy_versions \
             ORDER BY policy_id, effective_from",
        )
        .fetch_all(pool)
        .await
    })
    .map_err(|error| storage_error("reading policy versions", error))?;
    let mut all = shipped();
    for row in rows {
        match parse_policy(&row.source) {
            Ok(document) => all.push(PolicyVersion {
                policy: document.policy,
                source: row.source,
                adopted_from: None,
            }),
            // A stored file was checked when it was loaded. One this build cannot read is left
            // out with an error in the log, so the other figures still work.
            Err(error) => tracing::error!(
                policy = %row.policy_id,
                version = %row.version,
                %error,
                "A stored policy version cannot be read and is skipped"
            ),
        }
    }
    Ok(all)
}

/// Picks the version of `policy_id` to apply on `date`: the one in force, else the latest that
/// started before it, else the earliest.
pub(crate) fn version_on<'a>(
    versions: &'a [PolicyVersion],
    policy_id: &str,
    date: NaiveDate,
) -> Option<&'a PolicyVersion> {
    let mut of_policy: Vec<&PolicyVersion> = versions
        .iter()
        .filter(|version| version.policy.id == policy_id)
        .collect();
    of_policy.sort_by_key(|version| version.policy.effective_from);
    of_policy
        .iter()
        .find(|version| version.policy.in_force_on(date))
        .or_else(|| {
            of_policy
                .iter()
                .rev()
                .find(|version| version.policy.effective_from <= date)
        })
        .or_else(|| of_policy.first())
        .copied()
}

/// Returns a school's assignments in date order.
pub(crate) async fn assignments(db: &Db, laestab: &str) -> Result<Vec<Assignment>, Status> {
    with_db!(db, |pool| {
        sqlx::query_as(
            "SELECT laestab, from_date, policy_id, assigned_by, reason, assigned_at \
             FROM school_policies WHERE laestab = $1 ORDER BY from_date",
        )
        .bind(laestab)
        .fetch_all(pool)
        .await
    })
    .map_err(|error| storage_error("reading policy assignments", error))
}

/// Returns the policy version a school follows on `date`.
pub(crate) async fn policy_for(
    db: &Db,
    laestab: &str,
    date: NaiveDate,
) -> Result<PolicyVersion, Status> {
    let all = versions(db).await?;
    let assigned = if laestab.is_empty() {
        Vec::new()
    } else {
        assignments(db, laestab).await?
    };
    let assignment = assigned
        .iter()
        .rev()
        .find(|assignment| assignment.from_date <= date);
    let policy_id = assignment.map_or(DEFAULT_POLICY_ID, |a| a.policy_id.as_str());
    let mut version = version_on(&all, policy_id, date)
        .cloned()
        .ok_or_else(|| not_found("policy", policy_id))?;
    version.adopted_from = assignment.map(|a| a.from_date);
    Ok(version)
}

/// Checks and stores a policy file. Returns the policy and whether it was already held.
pub(crate) async fn load(
    db: &Db,
    source: &str,
    loaded_by: &str,
) -> Result<(PolicyVersion, bool), Status> {
    if loaded_by.trim().is_empty() {
        return Err(invalid_argument(
            "loaded_by",
            loaded_by,
            "give the name of the person loading the policy",
        ));
    }
    let document = parse_policy(source).map_err(|error| {
        invalid_argument(
            &format!("source (line {})", error.line),
            &error.key,
            error.message.clone(),
        )
    })?;
    let new = PolicyVersion {
        policy: document.policy.clone(),
        source: source.to_owned(),
        adopted_from: None,
    };
    let all = versions(db).await?;
    if let Some(held) = all
        .iter()
        .find(|held| held.policy.id == new.policy.id && held.policy.version == new.policy.version)
    {
        if held.source == source {
            return Ok((new, true));
        }
        // A loaded version may gain or move its end date, so that a reviewed policy can follow
        // it. Any other change needs a version of its own.
        let mut unchanged = held.policy.clone();
        unchanged.effective_to = new.policy.effective_to;
        let shipped = shipped()
            .iter()
            .any(|version| version.policy.id == held.policy.id);
        if shipped || unchanged != new.policy {
            return Err(Status::already_exists(format!(
                "version \"{}\" of policy {} is already loaded with different rules; give the \
                 new text its own version. To end this version, load it again with only \
                 effective_to added",
                new.policy.version, new.policy.id
            )));
        }
    }
    let policies: Vec<Policy> = all.into_iter().map(|held| held.policy).collect();
    check_no_overlap(&document, &policies).map_err(|error| {
        invalid_argument(
            &format!("source (line {})", error.line),
            &error.key,
            error.message.clone(),
        )
    })?;

    let policy = &new.policy;
    let now = Utc::now();
    with_db!(db, |pool| async {
        let mut tx = pool.begin_write(POLICY_LOCK_KEY).await?;
        sqlx::query(
            "INSERT INTO policy_versions (policy_id, version, kind, effective_from, effective_to, \
             source, loaded_by, loaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (policy_id, version) DO UPDATE SET effective_to = excluded.effective_to, \
             source = excluded.source, loaded_by = excluded.loaded_by, \
             loaded_at = excluded.loaded_at",
        )
        .bind(&policy.id)
        .bind(&policy.version)
        .bind(policy.kind.as_str())
        .bind(policy.effective_from)
        .bind(policy.effective_to)
        .bind(source)
        .bind(loaded_by.trim())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await)
    .map_err(|error| storage_error("storing a policy version", error))?;
    tracing::info!(policy = %policy.id, version = %policy.version, "Policy version loaded");
    Ok((new, false))
}

/// Records a school's move to a policy from a date.
pub(crate) async fn assign(
    db: &Db,
    laestab: &str,
    policy_id: &str,
    from_date: NaiveDate,
    assigned_by: &str,
    reason: &str,
) -> Result<Assignment, Status> {
    if assigned_by.trim().is_empty() {
        return Err(invalid_argument(
            "assigned_by",
            assigned_by,
            "give the name of the person making the change",
        ));
    }
    if reason.trim().is_empty() {
        return Err(invalid_argument(
            "reason",
            reason,
            "give the reason the school changes policy",
        ));
    }

    let all = versions(db).await?;
    if !all.iter().any(|held| held.policy.id == policy_id) {
        let mut known: Vec<&str> = all.iter().map(|held| held.policy.id.as_str()).collect();
        known.dedup();
        return Err(invalid_argument(
            "policy_id",
            policy_id,
            format!(
                "no policy has this id; load it first or use one of: {}",
                known.join(", ")
            ),
        ));
    }

    let in_force = all
        .iter()
        .filter(|held| held.policy.id == policy_id)
        .any(|held| held.policy.in_force_on(from_date));
    if !in_force {
        let dates: Vec<String> = all
            .iter()
            .filter(|held| held.policy.id == policy_id)
            .map(|held| {
                held.policy.effective_to.map_or_else(
                    || format!("from {}", held.policy.effective_from),
                    |to| format!("{} to {to}", held.policy.effective_from),
                )
            })
            .collect();
        return Err(invalid_argument(
            "from_date",
            &from_date.to_string(),
            format!(
                "no version of policy {policy_id} is in force on that date (it is in force {}); \
                 choose a date within it",
                dates.join(", ")
            ),
        ));
    }

    let assignment = Assignment {
        laestab: laestab.to_owned(),
        from_date,
        policy_id: policy_id.to_owned(),
        assigned_by: assigned_by.trim().to_owned(),
        reason: reason.trim().to_owned(),
        assigned_at: Utc::now(),
    };

    let inserted = with_db!(db, |pool| async {
        let mut tx = pool.begin_write(POLICY_LOCK_KEY).await?;
        let result = sqlx::query(
            "INSERT INTO school_policies (laestab, from_date, policy_id, assigned_by, reason, \
             assigned_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (laestab, from_date) DO NOTHING",
        )
        .bind(&assignment.laestab)
        .bind(assignment.from_date)
        .bind(&assignment.policy_id)
        .bind(&assignment.assigned_by)
        .bind(&assignment.reason)
        .bind(assignment.assigned_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(result.rows_affected())
    }
    .await)
    .map_err(|error| storage_error("storing a policy assignment", error))?;

    if inserted == 0 {
        return Err(Status::already_exists(format!(
            "school {laestab} already changes policy on {from_date}; choose another date"
        )));
    }

    tracing::info!(
        laestab,
        policy = policy_id,
        from = %from_date,
        "School moved to a policy"
    );
    Ok(assignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
    }

    #[test]
    fn version_on_prefers_the_one_in_force() {
        let mut later = shipped()[0].clone();
        later.policy.version = "2026".into();
        later.policy.effective_from = date(2026, 9, 1);
        let mut earlier = shipped()[0].clone();
        earlier.policy.effective_to = Some(date(2026, 8, 31));
        let all = vec![later, earlier];

        let on = |day| {
            version_on(&all, DEFAULT_POLICY_ID, day)
                .map(|version| version.policy.version.clone())
                .expect("a version")
        };
        assert_eq!(on(date(2025, 9, 1)), "November 2021");
        assert_eq!(on(date(2026, 9, 1)), "2026");
        assert_eq!(
            on(date(2020, 1, 1)),
            "November 2021",
            "before any: the earliest"
        );
        assert!(version_on(&all, "no-such-policy", date(2025, 1, 1)).is_none());
    }
}
