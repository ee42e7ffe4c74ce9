//! A referral after the school submits it: the local authority's outcomes, the status each
//! leaves the referral in, and the amount a parent owes on a penalty notice.
//!
//! A penalty notice is paid at the reduced amount within the reduced period (21 days under both
//! shipped policies) or at the full amount within the full period (28 days). After that it is
//! overdue: the local authority decides whether to prosecute or withdraw it.

use std::fmt;
use std::str::FromStr;

use chrono::{Days, NaiveDate};

use crate::referrals::ReferralKind;

/// The state of a referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReferralStatus {
    /// Created by the school and not yet submitted.
    Draft,
    /// Submitted to the local authority, with no outcome yet.
    Submitted,
    /// Accepted by the local authority.
    Accepted,
    /// The local authority asked the school for more information.
    MoreInformationRequested,
    /// A penalty notice was issued.
    NoticeIssued,
    /// The penalty notice was paid.
    Paid,
    /// The penalty notice was not paid within its period.
    Unpaid,
    /// The local authority is prosecuting.
    Prosecution,
    /// Withdrawn by the school or the local authority.
    Withdrawn,
}

impl ReferralStatus {
    /// Every status, in the order a referral usually passes through them.
    pub const ALL: [Self; 9] = [
        Self::Draft,
        Self::Submitted,
        Self::Accepted,
        Self::MoreInformationRequested,
        Self::NoticeIssued,
        Self::Paid,
        Self::Unpaid,
        Self::Prosecution,
        Self::Withdrawn,
    ];

    /// Returns the status's name as used in the API, files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Submitted => "submitted",
            Self::Accepted => "accepted",
            Self::MoreInformationRequested => "more_information_requested",
            Self::NoticeIssued => "notice_issued",
            Self::Paid => "paid",
            Self::Unpaid => "unpaid",
            Self::Prosecution => "prosecution",
            Self::Withdrawn => "withdrawn",
        }
    }

    /// Returns true for a status no outcome can follow.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Paid | Self::Prosecution | Self::Withdrawn)
    }
}

impl fmt::Display for ReferralStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReferralStatus {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|status| status.as_str()).collect();
                format!(
                    "\"{value}\" is not a referral status; use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// An outcome the local authority reports on a referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The referral is accepted.
    Accepted,
    /// The local authority needs more information from the school.
    MoreInformationRequested,
    /// A penalty notice was issued on a date.
    NoticeIssued,
    /// The notice was paid on a date.
    Paid,
    /// The notice was not paid within its period.
    Unpaid,
    /// The local authority is prosecuting the parents.
    Prosecution,
    /// The referral or notice is withdrawn.
    Withdrawn,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Self; 7] = [
        Self::Accepted,
        Self::MoreInformationRequested,
        Self::NoticeIssued,
        Self::Paid,
        Self::Unpaid,
        Self::Prosecution,
        Self::Withdrawn,
    ];

    /// Returns the outcome's name as used in the API, files and JSON.
    pub fn as_str(self) -> &'static str {
        self.status().as_str()
    }

    /// Returns the status the outcome leaves a referral in.
    pub fn status(self) -> ReferralStatus {
        match self {
            Self::Accepted => ReferralStatus::Accepted,
            Self::MoreInformationRequested => ReferralStatus::MoreInformationRequested,
            Self::NoticeIssued => ReferralStatus::NoticeIssued,
            Self::Paid => ReferralStatus::Paid,
            Self::Unpaid => ReferralStatus::Unpaid,
            Self::Prosecution => ReferralStatus::Prosecution,
            Self::Withdrawn => ReferralStatus::Withdrawn,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == value.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|outcome| outcome.as_str()).collect();
                format!(
                    "\"{value}\" is not an outcome; use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Returns the status after `outcome`, or why the outcome cannot follow `status` for a
/// referral of `kind`.
pub fn apply_outcome(
    kind: ReferralKind,
    status: ReferralStatus,
    outcome: Outcome,
) -> Result<ReferralStatus, String> {
    use ReferralStatus as S;
    if status.is_final() {
        return Err(format!(
            "the referral is {status}, so no further outcome can be recorded"
        ));
    }
    if kind.is_statutory_return() && status == S::Accepted {
        return Err(format!(
            "the {kind} was accepted, which completes it, so no further outcome can be recorded"
        ));
    }
    if status == S::Draft && outcome != Outcome::Withdrawn {
        return Err(format!(
            "the referral has not been submitted, so the local authority cannot have reported \
             {outcome}; submit it first, or record withdrawn to drop it"
        ));
    }
    let notice = matches!(
        outcome,
        Outcome::NoticeIssued | Outcome::Paid | Outcome::Unpaid
    );
    if notice && kind != ReferralKind::PenaltyNotice {
        return Err(format!(
            "{outcome} applies only to a penalty_notice referral, and this one is {kind}"
        ));
    }
    if outcome == Outcome::Prosecution && kind.is_statutory_return() {
        return Err(format!(
            "prosecution does not follow a statutory return ({kind}); refer the pupil to the \
             attendance officer or request legal action instead"
        ));
    }
    let allowed = match outcome {
        Outcome::Withdrawn => true,
        Outcome::Accepted | Outcome::MoreInformationRequested => {
            matches!(
                status,
                S::Submitted | S::Accepted | S::MoreInformationRequested
            )
        }
        Outcome::NoticeIssued => {
            matches!(
                status,
                S::Submitted | S::Accepted | S::MoreInformationRequested
            )
        }
        Outcome::Paid | Outcome::Unpaid => matches!(status, S::NoticeIssued | S::Unpaid),
        Outcome::Prosecution => !matches!(status, S::NoticeIssued),
    };
    if allowed && !(outcome == Outcome::Unpaid && status == S::Unpaid) {
        Ok(outcome.status())
    } else {
        Err(match (outcome, status) {
            (Outcome::Paid | Outcome::Unpaid, _) => format!(
                "{outcome} needs a penalty notice issued first, and the referral is {status}; \
                 record notice_issued with its date"
            ),
            (Outcome::Prosecution, S::NoticeIssued) => {
                "a notice is running; record unpaid once its period ends, then prosecution"
                    .to_owned()
            }
            _ => format!("{outcome} cannot follow {status}"),
        })
    }
}

/// The terms of an issued penalty notice, as the policy in force set them on the issue date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedNotice {
    /// The date the notice was issued.
    pub issued_on: NaiveDate,
    /// The amount, in pounds, if paid within `reduced_days`; `None` for a flat amount.
    pub reduced_amount: Option<u32>,
    /// Days to pay the reduced amount.
    pub reduced_days: u32,
    /// The amount, in pounds, if paid within `full_days`.
    pub full_amount: u32,
    /// Days to pay the full amount.
    pub full_days: u32,
}

/// The amount a parent owes on a notice on a given date, and its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentPosition {
    /// The amount, in pounds, payable on the date; the full amount once overdue.
    pub amount_due: u32,
    /// The last day to pay that amount.
    pub due_by: NaiveDate,
    /// True once the full period has passed.
    pub overdue: bool,
}

impl IssuedNotice {
    fn deadline(&self, days: u32) -> NaiveDate {
        self.issued_on
            .checked_add_days(Days::new(u64::from(days)))
            .unwrap_or(NaiveDate::MAX)
    }

    /// Returns the amount payable on `on`, its deadline, and whether the notice is overdue.
    pub fn position_on(&self, on: NaiveDate) -> PaymentPosition {
        let reduced_by = self.deadline(self.reduced_days);
        let full_by = self.deadline(self.full_days);
        match self.reduced_amount {
            Some(reduced) if on <= reduced_by => PaymentPosition {
                amount_due: reduced,
                due_by: reduced_by,
                overdue: false,
            },
            _ => PaymentPosition {
                amount_due: self.full_amount,
                due_by: full_by,
                overdue: on > full_by,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("valid date")
    }

    fn notice(reduced: Option<u32>, full: u32) -> IssuedNotice {
        IssuedNotice {
            issued_on: date("2025-11-03"),
            reduced_amount: reduced,
            reduced_days: 21,
            full_amount: full,
            full_days: 28,
        }
    }

    #[test]
    fn trust_policy_amounts() {
        let notice = notice(Some(60), 120);
        let day = |n: u64| date("2025-11-03") + Days::new(n);
        assert_eq!(notice.position_on(day(0)).amount_due, 60);
        assert_eq!(notice.position_on(day(21)).amount_due, 60);
        assert_eq!(notice.position_on(day(21)).due_by, day(21));
        assert_eq!(notice.position_on(day(22)).amount_due, 120);
        assert!(!notice.position_on(day(28)).overdue);
        assert_eq!(notice.position_on(day(28)).due_by, day(28));
        assert!(notice.position_on(day(29)).overdue);
    }

    #[test]
    fn statutory_amounts_and_the_flat_second_notice() {
        let first = notice(Some(80), 160);
        assert_eq!(first.position_on(date("2025-11-10")).amount_due, 80);
        assert_eq!(first.position_on(date("2025-11-30")).amount_due, 160);
        let second = notice(None, 160);
        let position = second.position_on(date("2025-11-04"));
        assert_eq!(position.amount_due, 160);
        assert_eq!(position.due_by, date("2025-12-01"));
    }

    #[test]
    fn notice_outcomes_run_in_order() {
        let kind = ReferralKind::PenaltyNotice;
        let mut status = ReferralStatus::Submitted;
        for outcome in [Outcome::Accepted, Outcome::NoticeIssued, Outcome::Unpaid] {
            status = apply_outcome(kind, status, outcome).expect("allowed");
        }
        assert_eq!(status, ReferralStatus::Unpaid);
        let status = apply_outcome(kind, status, Outcome::Prosecution).expect("allowed");
        let error = apply_outcome(kind, status, Outcome::Paid).expect_err("final");
        assert!(error.contains("no further outcome"), "{error}");
    }

    #[test]
    fn notices_belong_to_penalty_notice_referrals() {
        let error = apply_outcome(
            ReferralKind::AttendanceOfficer,
            ReferralStatus::Submitted,
            Outcome::NoticeIssued,
        )
        .expect_err("wrong kind");
        assert!(error.contains("attendance_officer"), "{error}");
        let error = apply_outcome(
            ReferralKind::PenaltyNotice,
            ReferralStatus::Accepted,
            Outcome::Paid,
        )
        .expect_err("no notice yet");
        assert!(error.contains("notice_issued"), "{error}");
    }

    #[test]
    fn accepted_return_is_complete() {
        let kind = ReferralKind::SicknessReturn;
        let status =
            apply_outcome(kind, ReferralStatus::Submitted, Outcome::Accepted).expect("accepted");
        let error = apply_outcome(kind, status, Outcome::Withdrawn).expect_err("complete");
        assert!(error.contains("completes it"), "{error}");
    }

    #[test]
    fn drafts_take_only_withdrawal() {
        for outcome in Outcome::ALL {
            let result = apply_outcome(ReferralKind::PenaltyNotice, ReferralStatus::Draft, outcome);
            assert_eq!(result.is_ok(), outcome == Outcome::Withdrawn, "{outcome}");
        }
    }

    #[test]
    fn names_round_trip() {
        for status in ReferralStatus::ALL {
            assert_eq!(status.as_str().parse::<ReferralStatus>(), Ok(status));
        }
        for outcome in Outcome::ALL {
            assert_eq!(outcome.as_str().parse::<Outcome>(), Ok(outcome));
        }
        assert!("fined".parse::<Outcome>().is_err());
    }

    fn any_kind() -> impl Strategy<Value = ReferralKind> {
        proptest::sample::select(ReferralKind::ALL.to_vec())
    }

    fn any_status() -> impl Strategy<Value = ReferralStatus> {
        proptest::sample::select(ReferralStatus::ALL.to_vec())
    }

    fn any_outcome() -> impl Strategy<Value = Outcome> {
        proptest::sample::select(Outcome::ALL.to_vec())
    }

    proptest! {
        /// An accepted outcome always leaves the referral in that outcome's status, and a final
        /// status never changes.
        #[test]
        fn outcomes_move_only_forward(
            kind in any_kind(),
            status in any_status(),
            outcome in any_outcome(),
        ) {
            match apply_outcome(kind, status, outcome) {
                Ok(next) => {
                    prop_assert!(!status.is_final());
                    prop_assert_eq!(next, outcome.status());
                }
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }

        /// The amount due never falls as days pass, and the notice is overdue exactly after
        /// the full period.
        #[test]
        fn amounts_never_fall(
            reduced in proptest::option::of(1u32..200),
            extra in 0u32..200,
            first in 0u64..60,
            gap in 0u64..60,
        ) {
            let full = reduced.unwrap_or(0) + extra + 1;
            let notice = notice(reduced, full);
            let earlier = notice.position_on(notice.issued_on + Days::new(first));
            let later = notice.position_on(notice.issued_on + Days::new(first + gap));
            prop_assert!(earlier.amount_due <= later.amount_due);
            prop_assert_eq!(later.overdue, first + gap > 28);
        }
    }
}
