//! Attendance statistics by the DfE rules.
//!
//! Possible sessions are present + approved educational activity + authorised absence +
//! unauthorised absence; codes in [`Category::NotPossible`] are left out. A pupil's figures run
//! over their own possible sessions. Percentages are computed from whole session counts and
//! rounded only for display.

use serde::{Deserialize, Serialize};

use crate::codes::{Category, category_of};

/// Session counts for one pupil (or a group) over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Present at registration, including late before registers closed.
    pub present: u32,
    /// Approved educational activity.
    pub approved_activity: u32,
    /// Authorised absence.
    pub authorised_absence: u32,
    /// Unauthorised absence.
    pub unauthorised_absence: u32,
    /// Marks that are not possible sessions.
    pub not_possible: u32,
}

impl Figures {
    /// Counts one mark of the given category.
    pub fn add(&mut self, category: Category) {
        match category {
            Category::Present => self.present += 1,
            Category::ApprovedActivity => self.approved_activity += 1,
            Category::AuthorisedAbsence => self.authorised_absence += 1,
            Category::UnauthorisedAbsence => self.unauthorised_absence += 1,
            Category::NotPossible => self.not_possible += 1,
        }
    }

    /// Counts a sequence of codes through the code table.
    pub fn from_codes<'a>(codes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut figures = Self::default();
        for code in codes {
            figures.add(category_of(code));
        }
        figures
    }

    /// Takes one mark of the given category away, as when a session's code changes. A count
    /// that is already zero stays zero.
    pub fn remove(&mut self, category: Category) {
        let count = match category {
            Category::Present => &mut self.present,
            Category::ApprovedActivity => &mut self.approved_activity,
            Category::AuthorisedAbsence => &mut self.authorised_absence,
            Category::UnauthorisedAbsence => &mut self.unauthorised_absence,
            Category::NotPossible => &mut self.not_possible,
        };
        *count = count.saturating_sub(1);
    }

    /// Applies a change of one session's effective code: the old code, if the session had
    /// one, is taken away and the new one counted.
    pub fn replace(&mut self, old: Option<&str>, new: &str) {
        if let Some(old) = old {
            self.remove(category_of(old));
        }
        self.add(category_of(new));
    }

    /// Adds another set of figures to this one, as for a group of pupils.
    pub fn merge(&mut self, other: &Self) {
        self.present += other.present;
        self.approved_activity += other.approved_activity;
        self.authorised_absence += other.authorised_absence;
        self.unauthorised_absence += other.unauthorised_absence;
        self.not_possible += other.not_possible;
    }

    /// Returns the sessions in the denominator.
    pub fn possible(&self) -> u32 {
        self.attended() + self.absent()
    }

    /// Returns present plus approved educational activity.
    pub fn attended(&self) -> u32 {
        self.present + self.approved_activity
    }

    /// Returns authorised plus unauthorised absence.
    pub fn absent(&self) -> u32 {
        self.authorised_absence + self.unauthorised_absence
    }

    /// Returns the number of marks counted, possible sessions or not.
    pub fn marks(&self) -> u32 {
        self.possible() + self.not_possible
    }

    /// Returns attendance in tenths of a percent, rounded half up; `None` without possible sessions.
    pub fn attendance_tenths(&self) -> Option<u32> {
        rounded_tenths(self.attended(), self.possible())
    }

    /// Returns attendance as a percentage rounded to one decimal place; `None` without possible
    /// sessions.
    pub fn attendance_percent(&self) -> Option<f64> {
        self.attendance_tenths()
            .map(|tenths| f64::from(tenths) / 10.0)
    }

    /// Returns absence as a percentage rounded to one decimal place; `None` without possible sessions.
    pub fn absence_percent(&self) -> Option<f64> {
        rounded_tenths(self.absent(), self.possible()).map(|tenths| f64::from(tenths) / 10.0)
    }

    /// Returns true when absence is `percent`% or more of possible sessions, compared in whole
    /// numbers so that exactly `percent`% counts.
    pub fn absence_at_least(&self, percent: u32) -> bool {
        self.possible() > 0
            && u64::from(self.absent()) * 100 >= u64::from(self.possible()) * u64::from(percent)
    }

    /// Returns true for persistent absence by the DfE definition: absence of 10% or more of possible sessions.
    /// A pupil at exactly 10% is persistently absent.
    pub fn is_persistent_absence(&self) -> bool {
        self.absence_at_least(10)
    }

    /// Returns true for severe absence by the DfE definition: absence of 50% or more of possible sessions.
    pub fn is_severe_absence(&self) -> bool {
        self.absence_at_least(50)
    }

    /// Returns how many more absent sessions, with every other session attended, would make the
    /// pupil persistently absent, or 0 when they already are.
    pub fn absences_before_persistent(&self) -> u32 {
        self.absences_before(10)
    }

    /// Returns how many more absent sessions would bring absence to `percent`% of possible
    /// sessions, or 0 when it is there already. Each further absence adds one absent and one
    /// possible session. At 100% no number is enough unless every session is already missed.
    pub fn absences_before(&self, percent: u32) -> u32 {
        let percent = u64::from(percent.clamp(1, 100));
        let absent = u64::from(self.absent());
        let possible = u64::from(self.possible());
        if possible > 0 && absent * 100 >= possible * percent {
            return 0;
        }
        if percent == 100 {
            return u32::MAX;
        }
        // The smallest k with (absent + k) * 100 >= (possible + k) * percent.
        let needed = (possible * percent).saturating_sub(absent * 100);
        let k = needed.div_ceil(100 - percent).max(1);
        u32::try_from(k).unwrap_or(u32::MAX)
    }
}

fn rounded_tenths(part: u32, whole: u32) -> Option<u32> {
    if whole == 0 {
        return None;
    }
    let (part, whole) = (u64::from(part), u64::from(whole));
    let tenths = (part * 1000 * 2 + whole) / (whole * 2);
    u32::try_from(tenths).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn figures(codes: &str) -> Figures {
        let split: Vec<String> = codes.split(' ').map(str::to_owned).collect();
        Figures::from_codes(split.iter().map(String::as_str))
    }

    #[test]
    fn counts_follow_code_table() {
        let f = figures("/ \\ L U B J1 I N # Y1 D X");
        assert_eq!(f.present, 3);
        assert_eq!(f.approved_activity, 1);
        assert_eq!(f.authorised_absence, 2);
        assert_eq!(f.unauthorised_absence, 2);
        assert_eq!(f.not_possible, 4);
        assert_eq!(f.possible(), 8);
        assert_eq!(f.attended(), 4);
    }

    #[test]
    fn exactly_ten_percent_is_persistent() {
        let f = Figures {
            present: 18,
            authorised_absence: 2,
            ..Figures::default()
        };
        assert!(f.is_persistent_absence());
        assert_eq!(f.attendance_percent(), Some(90.0));
        let just_under = Figures {
            present: 19,
            authorised_absence: 2,
            ..Figures::default()
        };
        assert!(!just_under.is_persistent_absence());
    }

    #[test]
    fn exactly_half_is_severe() {
        let f = Figures {
            present: 5,
            unauthorised_absence: 5,
            ..Figures::default()
        };
        assert!(f.is_severe_absence());
        assert!(!Figures { present: 6, ..f }.is_severe_absence());
    }

    #[test]
    fn percent_rounds_half_up_to_one_place() {
        // 2/3 = 66.666... -> 66.7; 1/8 = 12.5 exactly; 1/16 = 6.25 -> 6.3.
        let p = |attended, possible| rounded_tenths(attended, possible);
        assert_eq!(p(2, 3), Some(667));
        assert_eq!(p(1, 8), Some(125));
        assert_eq!(p(1, 16), Some(63));
        assert_eq!(p(0, 0), None);
    }

    #[test]
    fn no_possible_sessions_is_neither_absence() {
        let f = figures("# # X");
        assert_eq!(f.attendance_percent(), None);
        assert!(!f.is_persistent_absence());
        assert!(!f.is_severe_absence());
    }

    proptest! {
        #[test]
        fn categories_partition_marks(codes in proptest::collection::vec(
            proptest::sample::select(crate::codes::CODES.iter().map(|c| c.code).collect::<Vec<_>>()),
            0..400,
        )) {
            let f = Figures::from_codes(codes.iter().copied());
            prop_assert_eq!(f.marks() as usize, codes.len());
            prop_assert_eq!(f.possible(), f.attended() + f.authorised_absence + f.unauthorised_absence);
            prop_assert_eq!(f.absent(), f.authorised_absence + f.unauthorised_absence);
            if let Some(percent) = f.attendance_percent() {
                prop_assert!((0.0..=100.0).contains(&percent));
                let exact = f64::from(f.attended()) * 100.0 / f64::from(f.possible());
                prop_assert!((percent - exact).abs() <= 0.05 + 1e-9);
            }
        }

        #[test]
        fn persistent_threshold_matches_ratio(absent in 0u32..500, attended in 0u32..500) {
            let f = Figures { present: attended, unauthorised_absence: absent, ..Figures::default() };
            let possible = absent + attended;
            let expected = possible > 0 && f64::from(absent) / f64::from(possible) >= 0.1 - 1e-12;
            prop_assert_eq!(f.is_persistent_absence(), expected);
            if f.is_severe_absence() {
                prop_assert!(f.is_persistent_absence());
            }
        }

        /// Keeping figures up to date one change at a time gives the same figures as counting
        /// the final codes afresh, whatever the order of the changes.
        #[test]
        fn replace_matches_recount(
            changes in proptest::collection::vec((0usize..20, proptest::sample::select(vec!["/", "L", "I", "O", "N", "B", "D", "#", "C1", "U"])), 0..200)
        ) {
            let mut current: std::collections::BTreeMap<usize, &str> = std::collections::BTreeMap::new();
            let mut incremental = Figures::default();
            for (session, code) in &changes {
                let old = current.insert(*session, code);
                incremental.replace(old, code);
            }
            prop_assert_eq!(incremental, Figures::from_codes(current.values().copied()));
        }

        #[test]
        fn absences_before_is_exact(absent in 0u32..200, attended in 0u32..2000, percent in 1u32..100) {
            let f = Figures { present: attended, unauthorised_absence: absent, ..Figures::default() };
            let k = f.absences_before(percent);
            let after = Figures { unauthorised_absence: absent + k, ..f };
            prop_assert!(after.absence_at_least(percent));
            if k > 1 {
                let before = Figures { unauthorised_absence: absent + k - 1, ..f };
                prop_assert!(!before.absence_at_least(percent));
            }
        }

        #[test]
        fn absences_before_persistent_is_exact(absent in 0u32..200, attended in 0u32..2000) {
            let f = Figures { present: attended, unauthorised_absence: absent, ..Figures::default() };
            let k = f.absences_before_persistent();
            let after = Figures { unauthorised_absence: absent + k, ..f };
            prop_assert!(after.is_persistent_absence());
            if k > 1 {
                let before = Figures { unauthorised_absence: absent + k - 1, ..f };
                prop_assert!(!before.is_persistent_absence());
            }
        }
    }
}
