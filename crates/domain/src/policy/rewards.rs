//! Rewards for excellent or much-improved attendance and punctuality.
//!
//! A pupil's period is compared with the period of the same length just before it. The
//! criteria come from the policy file; the defaults shipped are only a starting point.

use serde::{Deserialize, Serialize};

use super::Clause;
use crate::stats::Figures;

/// The criteria for each reward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardRules {
    /// Attendance of at least this percentage of possible sessions is excellent.
    pub excellent_attendance_percent: u32,
    /// Attendance up by at least this many percentage points on the previous period is much
    /// improved.
    pub much_improved_points: u32,
    /// At most this many late marks (L or U) in the period is excellent punctuality.
    pub excellent_punctuality_lates: u32,
    /// Late marks down by at least this many on the previous period is much-improved
    /// punctuality.
    pub much_improved_punctuality_lates: u32,
    /// The clause that offers rewards.
    pub clause: Clause,
}

/// A reward a pupil has earned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reward {
    /// Attendance at or above the excellent percentage.
    ExcellentAttendance,
    /// Attendance up by the improvement in percentage points.
    MuchImprovedAttendance,
    /// Late marks at or below the excellent number.
    ExcellentPunctuality,
    /// Late marks down by the improvement.
    MuchImprovedPunctuality,
}

impl Reward {
    /// Returns the reward's name as used in files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExcellentAttendance => "excellent_attendance",
            Self::MuchImprovedAttendance => "much_improved_attendance",
            Self::ExcellentPunctuality => "excellent_punctuality",
            Self::MuchImprovedPunctuality => "much_improved_punctuality",
        }
    }
}

/// A pupil's attendance and punctuality over one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Period {
    /// The session counts.
    pub figures: Figures,
    /// Late marks (L or U).
    pub lates: u32,
}

impl Period {
    /// Counts a period from its codes.
    pub fn from_codes<'a>(codes: impl IntoIterator<Item = &'a str> + Clone) -> Self {
        Self {
            figures: Figures::from_codes(codes.clone()),
            lates: u32::try_from(
                codes
                    .into_iter()
                    .filter(|code| matches!(*code, "L" | "U"))
                    .count(),
            )
            .unwrap_or(u32::MAX),
        }
    }
}

/// Returns true when `attended / possible` is at least `percent`%, in whole numbers.
fn at_least(attended: u32, possible: u32, percent: u32) -> bool {
    possible > 0 && u64::from(attended) * 100 >= u64::from(possible) * u64::from(percent)
}

/// Returns the rewards earned in `current`, given the period before it where there was one.
/// A pupil with no possible sessions in the current period earns nothing.
pub fn rewards(rules: &RewardRules, current: &Period, previous: Option<&Period>) -> Vec<Reward> {
    let mut earned = Vec::new();
    let possible = current.figures.possible();
    if possible == 0 {
        return earned;
    }
    let attended = current.figures.attended();
    if at_least(attended, possible, rules.excellent_attendance_percent) {
        earned.push(Reward::ExcellentAttendance);
    }
    if current.lates <= rules.excellent_punctuality_lates {
        earned.push(Reward::ExcellentPunctuality);
    }
    if let Some(previous) = previous.filter(|p| p.figures.possible() > 0) {
        // Compare attended/possible against previous + points, in whole numbers:
        // a/p >= b/q + k/100  <=>  100 a q >= 100 b p + k p q.
        let (a, p) = (u64::from(attended), u64::from(possible));
        let (b, q) = (
            u64::from(previous.figures.attended()),
            u64::from(previous.figures.possible()),
        );
        let k = u64::from(rules.much_improved_points);
        if rules.much_improved_points > 0 && 100 * a * q >= 100 * b * p + k * p * q {
            earned.push(Reward::MuchImprovedAttendance);
        }
        if rules.much_improved_punctuality_lates > 0
            && previous.lates >= current.lates + rules.much_improved_punctuality_lates
        {
            earned.push(Reward::MuchImprovedPunctuality);
        }
    }
    earned
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rules() -> RewardRules {
        RewardRules {
            excellent_attendance_percent: 97,
            much_improved_points: 5,
            excellent_punctuality_lates: 0,
            much_improved_punctuality_lates: 3,
            clause: Clause {
                reference: "5.1.3".into(),
                summary: String::new(),
            },
        }
    }

    fn period(present: u32, absent: u32, lates: u32) -> Period {
        Period {
            figures: Figures {
                present,
                unauthorised_absence: absent,
                ..Figures::default()
            },
            lates,
        }
    }

    #[test]
    fn excellent_at_the_boundary() {
        assert_eq!(
            rewards(&rules(), &period(97, 3, 1), None),
            [Reward::ExcellentAttendance]
        );
        assert!(rewards(&rules(), &period(96, 4, 1), None).is_empty());
        assert_eq!(
            rewards(&rules(), &period(90, 10, 0), None),
            [Reward::ExcellentPunctuality]
        );
    }

    #[test]
    fn improvement_needs_the_previous_period() {
        let now = period(90, 10, 2);
        let before = period(85, 15, 5);
        assert_eq!(
            rewards(&rules(), &now, Some(&before)),
            [
                Reward::MuchImprovedAttendance,
                Reward::MuchImprovedPunctuality
            ]
        );
        assert!(rewards(&rules(), &now, None).is_empty());
        let slightly = period(86, 14, 4);
        assert!(rewards(&rules(), &now, Some(&slightly)).is_empty());
    }

    #[test]
    fn nothing_without_possible_sessions() {
        assert!(rewards(&rules(), &Period::default(), None).is_empty());
    }

    proptest! {
        /// The whole-number test for improvement agrees with percentages worked out in
        /// fractions, away from rounding at the boundary.
        #[test]
        fn improvement_matches_percentages(a in 0u32..200, x in 0u32..50, b in 0u32..200, y in 0u32..50) {
            let now = period(a, x, 5);
            let before = period(b, y, 5);
            prop_assume!(a + x > 0 && b + y > 0);
            let gain = f64::from(a) / f64::from(a + x) * 100.0 - f64::from(b) / f64::from(b + y) * 100.0;
            prop_assume!((gain - 5.0).abs() > 1e-6);
            let earned = rewards(&rules(), &now, Some(&before));
            prop_assert_eq!(earned.contains(&Reward::MuchImprovedAttendance), gain > 5.0);
        }
    }
}
