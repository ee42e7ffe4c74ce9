//! Penalty notices per parent per child: whether another may be issued, and at what amount.

use chrono::{Months, NaiveDate};

use super::{Clause, Policy};

/// The terms of a penalty notice to a parent for a child, if one may be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeTerms {
    /// True when the notice may be issued.
    pub allowed: bool,
    /// The notice's place among those within the policy's period, counting from 1.
    pub number: u32,
    /// The amount if paid within the reduced period, or `None` for a flat amount.
    pub reduced_amount: Option<u32>,
    /// The amount otherwise.
    pub full_amount: u32,
    /// The reasons, citing the clause.
    pub explanation: String,
    /// The clause applied.
    pub clause: Clause,
}

/// Works out the terms of a new notice on `on`, given the dates of the earlier notices issued
/// to the same parent for the same child (withdrawn notices left out). Returns `None` when the
/// policy sets no penalty-notice terms.
///
/// With a limit, only notices on or after the policy's effective date and within the rolling
/// number of years before `on` count. A notice after the first in that period is at the
/// repeat amount, where the policy sets one, with no reduced rate.
pub fn notice_terms(policy: &Policy, earlier: &[NaiveDate], on: NaiveDate) -> Option<NoticeTerms> {
    let notice = policy.penalty_notice.as_ref()?;
    let counted = match (notice.max_notices, notice.limit_years) {
        (Some(_), Some(years)) => {
            let since = on
                .checked_sub_months(Months::new(years.saturating_mul(12)))
                .unwrap_or(NaiveDate::MIN);
            earlier
                .iter()
                .filter(|date| **date > since && **date <= on && **date >= policy.effective_from)
                .count()
        }
        _ => 0,
    };
    let counted = u32::try_from(counted).unwrap_or(u32::MAX);
    let number = counted + 1;
    let clause = notice.clause.clone();
    if let (Some(max), Some(years)) = (notice.max_notices, notice.limit_years)
        && counted >= max
    {
        return Some(NoticeTerms {
            allowed: false,
            number,
            reduced_amount: None,
            full_amount: 0,
            explanation: format!(
                "{counted} notices were issued to this parent for this child in the {years} years \
                 before {on}; under {} at most {max} may be, so consider another intervention, \
                 such as prosecution",
                clause.reference
            ),
            clause,
        });
    }
    let (reduced_amount, full_amount, explanation) = match notice.repeat_amount {
        Some(repeat) if counted > 0 => (
            None,
            repeat,
            format!(
                "notice {number} within {} years: a flat £{repeat} within {} days ({})",
                notice.limit_years.unwrap_or_default(),
                notice.full_days,
                clause.reference
            ),
        ),
        _ => (
            Some(notice.reduced_amount),
            notice.full_amount,
            format!(
                "£{} within {} days, £{} within {} days ({})",
                notice.reduced_amount,
                notice.reduced_days,
                notice.full_amount,
                notice.full_days,
                clause.reference
            ),
        ),
    };
    Some(NoticeTerms {
        allowed: true,
        number,
        reduced_amount,
        full_amount,
        explanation,
        clause,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn date(year: i32, month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
    }

    #[test]
    fn statutory_second_is_flat_and_third_refused() {
        let policy = Policy::statutory_2024();
        let first = notice_terms(&policy, &[], date(2025, 1, 10)).expect("terms");
        assert!(first.allowed);
        assert_eq!((first.reduced_amount, first.full_amount), (Some(80), 160));

        let second = notice_terms(&policy, &[date(2025, 1, 10)], date(2025, 6, 1)).expect("terms");
        assert!(second.allowed);
        assert_eq!((second.reduced_amount, second.full_amount), (None, 160));

        let earlier = [date(2025, 1, 10), date(2025, 6, 1)];
        let third = notice_terms(&policy, &earlier, date(2026, 3, 1)).expect("terms");
        assert!(!third.allowed);
        assert!(
            third.explanation.contains("at most 2"),
            "{}",
            third.explanation
        );

        let later = notice_terms(&policy, &earlier, date(2028, 1, 11)).expect("terms");
        assert!(
            later.allowed,
            "the January 2025 notice is over three years old"
        );
    }

    #[test]
    fn notices_before_the_framework_do_not_count() {
        let policy = Policy::statutory_2024();
        let earlier = [date(2023, 5, 1), date(2024, 2, 1)];
        let terms = notice_terms(&policy, &earlier, date(2024, 10, 1)).expect("terms");
        assert_eq!(terms.number, 1);
        assert_eq!(terms.reduced_amount, Some(80));
    }

    #[test]
    fn trust_policy_sets_no_limit() {
        let policy = Policy::trust_2021();
        let earlier = [date(2022, 1, 1), date(2022, 6, 1), date(2023, 1, 1)];
        let terms = notice_terms(&policy, &earlier, date(2023, 6, 1)).expect("terms");
        assert!(terms.allowed);
        assert_eq!((terms.reduced_amount, terms.full_amount), (Some(60), 120));
    }

    proptest! {
        /// Issuing every notice the rule allows never puts more than two in any three years.
        #[test]
        fn never_more_than_the_limit(gaps in prop::collection::vec(1u64..400, 1..30)) {
            let policy = Policy::statutory_2024();
            let mut day = date(2024, 8, 19);
            let mut issued: Vec<NaiveDate> = Vec::new();
            for gap in gaps {
                day = day + chrono::Days::new(gap);
                let terms = notice_terms(&policy, &issued, day).expect("terms");
                if terms.allowed {
                    issued.push(day);
                }
            }
            for (index, first) in issued.iter().enumerate() {
                let window_end = first.checked_add_months(Months::new(36)).expect("in range");
                let within = issued[index..].iter().filter(|d| **d < window_end).count();
                prop_assert!(within <= 2, "{issued:?}");
            }
        }
    }
}
