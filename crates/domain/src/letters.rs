//! When a letter that rollcall writes by itself must wait for a person's review.
//!
//! The trust policy sends threshold letters (attendance concern, penalty-notice warning)
//! automatically, except where a blanket letter would be unfair: absence for illness the
//! school has accepted, a pupil with special educational needs, or a child below compulsory
//! school age. Those letters are held until a member of staff reads and approves them. Letters
//! a person writes are never held, because that person is the review.

use chrono::NaiveDate;

use crate::age::compulsory_school_age_from;

/// The facts about a pupil that the review rules of a threshold letter use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterSubject {
    /// The pupil's date of birth, where the registers hold it.
    pub date_of_birth: Option<NaiveDate>,
    /// True when the MIS flags SEN support or an education, health and care plan.
    pub special_educational_needs: bool,
    /// Sessions of authorised illness (code I) in the period the letter covers. The school
    /// authorises illness once it accepts the explanation, with medical evidence where the
    /// policy requires it.
    pub illness_sessions: u32,
}

/// A reason a letter waits for review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewReason {
    /// The absence includes illness the school has accepted.
    Illness {
        /// Sessions of authorised illness.
        sessions: u32,
    },
    /// The pupil has special educational needs flagged by the MIS.
    SpecialEducationalNeeds,
    /// The child is below compulsory school age on the letter's date.
    BelowCompulsorySchoolAge {
        /// The day they reach compulsory school age, where it is known.
        from: Option<NaiveDate>,
    },
    /// The date of birth is missing, so the age rule cannot be checked.
    UnknownAge,
}

impl ReviewReason {
    /// Returns a short code for storage and JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Illness { .. } => "illness",
            Self::SpecialEducationalNeeds => "send",
            Self::BelowCompulsorySchoolAge { .. } => "below_compulsory_school_age",
            Self::UnknownAge => "unknown_age",
        }
    }

    /// Describes the reason in plain English, for the reviewer.
    pub fn describe(&self) -> String {
        match self {
            Self::Illness { sessions } => format!(
                "the absence includes {sessions} session{} of authorised illness",
                if *sessions == 1 { "" } else { "s" }
            ),
            Self::SpecialEducationalNeeds => {
                "the pupil has special educational needs flagged by the MIS".to_owned()
            }
            Self::BelowCompulsorySchoolAge { from: Some(from) } => {
                format!("the child is below compulsory school age until {from}")
            }
            Self::BelowCompulsorySchoolAge { from: None } => {
                "the child is below compulsory school age".to_owned()
            }
            Self::UnknownAge => {
                "the date of birth is not held, so compulsory school age cannot be checked"
                    .to_owned()
            }
        }
    }
}

/// Returns the reasons an automatic threshold letter dated `on` must wait for review; an
/// empty list means it may be sent as it is.
pub fn review_reasons(subject: &LetterSubject, on: NaiveDate) -> Vec<ReviewReason> {
    let mut reasons = Vec::new();
    if subject.illness_sessions > 0 {
        reasons.push(ReviewReason::Illness {
            sessions: subject.illness_sessions,
        });
    }
    if subject.special_educational_needs {
        reasons.push(ReviewReason::SpecialEducationalNeeds);
    }
    match subject.date_of_birth {
        None => reasons.push(ReviewReason::UnknownAge),
        Some(date_of_birth) => {
            let started = compulsory_school_age_from(date_of_birth);
            if started.is_none_or(|from| on < from) {
                reasons.push(ReviewReason::BelowCompulsorySchoolAge { from: started });
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("valid date")
    }

    fn subject() -> LetterSubject {
        LetterSubject {
            date_of_birth: Some(date("2015-03-10")),
            special_educational_needs: false,
            illness_sessions: 0,
        }
    }

    #[test]
    fn ordinary_letter_needs_no_review() {
        assert!(review_reasons(&subject(), date("2025-11-03")).is_empty());
    }

    #[test]
    fn accepted_illness_holds_the_letter() {
        let ill = LetterSubject {
            illness_sessions: 4,
            ..subject()
        };
        assert_eq!(
            review_reasons(&ill, date("2025-11-03")),
            vec![ReviewReason::Illness { sessions: 4 }]
        );
    }

    #[test]
    fn special_educational_needs_hold_the_letter() {
        let send = LetterSubject {
            special_educational_needs: true,
            ..subject()
        };
        assert_eq!(
            review_reasons(&send, date("2025-11-03")),
            vec![ReviewReason::SpecialEducationalNeeds]
        );
    }

    #[test]
    fn child_below_compulsory_school_age_is_held() {
        // Born 10 March 2021: five on 10 March 2026, compulsory school age from 31 March 2026.
        let reception = LetterSubject {
            date_of_birth: Some(date("2021-03-10")),
            ..subject()
        };
        assert_eq!(
            review_reasons(&reception, date("2026-03-30")),
            vec![ReviewReason::BelowCompulsorySchoolAge {
                from: Some(date("2026-03-31"))
            }]
        );
        assert!(review_reasons(&reception, date("2026-03-31")).is_empty());
    }

    #[test]
    fn missing_date_of_birth_is_held() {
        let unknown = LetterSubject {
            date_of_birth: None,
            ..subject()
        };
        assert_eq!(
            review_reasons(&unknown, date("2025-11-03")),
            vec![ReviewReason::UnknownAge]
        );
    }

    #[test]
    fn every_reason_is_listed_together() {
        let all = LetterSubject {
            date_of_birth: Some(date("2021-03-10")),
            special_educational_needs: true,
            illness_sessions: 1,
        };
        let codes: Vec<&str> = review_reasons(&all, date("2025-11-03"))
            .iter()
            .map(ReviewReason::code)
            .collect();
        assert_eq!(codes, ["illness", "send", "below_compulsory_school_age"]);
    }

    proptest! {
        /// Adding a reason to hold never releases a letter, and a letter with no reason to hold
        /// is released.
        #[test]
        fn reasons_only_accumulate(
            illness in 0u32..20,
            send in any::<bool>(),
            age_days in 0i64..(20 * 366),
        ) {
            let on = date("2026-01-15");
            let born = on - chrono::Duration::days(age_days);
            let base = LetterSubject {
                date_of_birth: Some(born),
                special_educational_needs: false,
                illness_sessions: 0,
            };
            let fuller = LetterSubject {
                special_educational_needs: send,
                illness_sessions: illness,
                ..base.clone()
            };
            let base_reasons = review_reasons(&base, on);
            let fuller_reasons = review_reasons(&fuller, on);
            prop_assert!(fuller_reasons.len() >= base_reasons.len());
            prop_assert_eq!(fuller_reasons.is_empty(), base_reasons.is_empty() && illness == 0 && !send);
        }
    }
}
