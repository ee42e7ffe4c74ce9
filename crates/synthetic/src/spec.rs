//! What to generate: a trust's schools and the term whose registers they keep.

use std::collections::HashSet;

use chrono::{Datelike, NaiveDate, Weekday};

/// A trust to generate: a seed, one term and the schools that keep registers in it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustSpec {
    /// Seed for the random number generator. Each school draws from its own stream, chosen by the
    /// seed and its LAESTAB, so adding or removing a school leaves the others' data unchanged.
    pub seed: u64,
    /// Name of the trust, for display only.
    pub name: String,
    /// The term whose attendance is generated.
    pub term: Term,
    /// The schools, in the order they are returned.
    pub schools: Vec<SchoolSpec>,
}

/// One term of an academic year, shared by every school in the trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// Calendar year the academic year starts in, for example 2025 for 2025/26.
    pub academic_year: i32,
    /// First day of the term.
    pub first_day: NaiveDate,
    /// Last day of the term. Every pupil's marks run to this day.
    pub last_day: NaiveDate,
    /// Holidays inside the term, such as half-term. Their sessions are recorded as `#`.
    pub breaks: Vec<DateRange>,
}

/// An inclusive range of calendar days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    /// First day of the range.
    pub first: NaiveDate,
    /// Last day of the range, included.
    pub last: NaiveDate,
}

/// One school of the trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchoolSpec {
    /// Three-digit local authority number, for example 919 for Hertfordshire.
    pub la_code: u16,
    /// Four-digit establishment number.
    pub estab: u16,
    /// School name as written in the CTF.
    pub name: String,
    /// Phase, which fixes the year groups and the absence profile.
    pub phase: Phase,
    /// Places in each year group. Each year group is filled to between 95% and 100% of this.
    pub places_per_year_group: u32,
    /// Days on which this school alone is closed, such as INSET days. Their sessions are
    /// recorded as `#`.
    pub closures: Vec<NaiveDate>,
}

/// Phase of a school, which fixes its year groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Reception to Year 2.
    Infant,
    /// Years 3 to 6.
    Junior,
    /// Reception to Year 6.
    Primary,
    /// Years 7 to 11.
    Secondary,
}

/// A national curriculum year group: Reception (0) or Years 1 to 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearGroup(u8);

/// Reasons a [`TrustSpec`] cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The term ends before it starts.
    #[error("term ends on {last_day}, before its first day {first_day}")]
    TermEndsBeforeStart {
        /// First day of the term.
        first_day: NaiveDate,
        /// Last day of the term.
        last_day: NaiveDate,
    },
    /// The term does not lie inside its academic year (1 September to 31 August).
    #[error(
        "term from {first_day} to {last_day} is outside academic year {academic_year}/{next}; \
         set academic_year to the calendar year the academic year starts in",
        next = academic_year + 1
    )]
    TermOutsideAcademicYear {
        /// The academic year given.
        academic_year: i32,
        /// First day of the term.
        first_day: NaiveDate,
        /// Last day of the term.
        last_day: NaiveDate,
    },
    /// A school has no weekday in the term that is not a break or closure.
    #[error("school {laestab} has no school day in the term")]
    NoSchoolDays {
        /// LAESTAB of the school.
        laestab: String,
    },
    /// A local authority number does not have three digits.
    #[error("school {name:?} has local authority number {la_code}, expected three digits")]
    InvalidLaCode {
        /// Name of the school.
        name: String,
        /// The number given.
        la_code: u16,
    },
    /// An establishment number does not fit in four digits.
    #[error("school {name:?} has establishment number {estab}, expected at most four digits")]
    InvalidEstab {
        /// Name of the school.
        name: String,
        /// The number given.
        estab: u16,
    },
    /// A year group is larger than the three-digit UPN serial allows.
    #[error(
        "school {laestab} has {places} places per year group, but UPN serials allow at most 999"
    )]
    TooManyPlaces {
        /// LAESTAB of the school.
        laestab: String,
        /// The number of places given.
        places: u32,
    },
    /// Two schools share a LAESTAB, so their UPNs could clash.
    #[error("LAESTAB {laestab} is used by more than one school")]
    DuplicateLaestab {
        /// The shared LAESTAB.
        laestab: String,
    },
    /// A school closure falls outside the term.
    #[error("school {laestab} has a closure on {date}, outside the term")]
    ClosureOutsideTerm {
        /// LAESTAB of the school.
        laestab: String,
        /// The closure date.
        date: NaiveDate,
    },
}

/// LA number of Hertfordshire, used by the demo trust.
const HERTFORDSHIRE: u16 = 919;

impl TrustSpec {
    /// Builds the demonstration trust: three Hertfordshire schools with about 1,500 pupils in
    /// the autumn term of 2025.
    ///
    /// The infant and junior schools have 90 places per year group and the secondary 180. The
    /// secondary alone has an INSET day on Friday 21 November 2025. The trust and school names
    /// are invented.
    ///
    /// NOTE: the establishment numbers are invented too, but LA 919 is real, so a real school
    /// may hold the same LAESTAB.
    pub fn demo(seed: u64) -> Self {
        let inset_day = date(2025, 11, 21);
        let school = |estab: u16, name: &str, phase: Phase, places: u32| SchoolSpec {
            la_code: HERTFORDSHIRE,
            estab,
            name: name.to_owned(),
            phase,
            places_per_year_group: places,
            closures: Vec::new(),
        };
        let mut secondary = school(4781, "Wrenmoor Park Academy", Phase::Secondary, 180);
        secondary.closures.push(inset_day);

        Self {
            seed,
            name: "Wrenmoor Learning Trust".to_owned(),
            term: Term::autumn_2025(),
            schools: vec![
                school(2781, "Wrenmoor Infant School", Phase::Infant, 90),
                school(2782, "Wrenmoor Junior School", Phase::Junior, 90),
                secondary,
            ],
        }
    }

    /// Checks that every school can be generated: the term lies in its academic year, LA and
    /// establishment numbers fit the UPN, and LAESTABs are distinct.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.term.validate()?;
        let mut seen = HashSet::new();
        for school in &self.schools {
            school.validate(&self.term)?;
            let laestab = school.laestab();
            if !seen.insert(laestab.clone()) {
                return Err(SpecError::DuplicateLaestab { laestab });
            }
        }
        Ok(())
    }
}

impl Term {
    /// Builds the autumn term of 2025/26 used by the demo: Wednesday 3 September to Friday
    /// 19 December 2025, with half-term from Monday 27 to Friday 31 October.
    pub fn autumn_2025() -> Self {
        Self {
            academic_year: 2025,
            first_day: date(2025, 9, 3),
            last_day: date(2025, 12, 19),
            breaks: vec![DateRange {
                first: date(2025, 10, 27),
                last: date(2025, 10, 31),
            }],
        }
    }

    /// Returns whether `day` falls in one of the term's breaks.
    pub fn is_break(&self, day: NaiveDate) -> bool {
        self.breaks.iter().any(|range| range.contains(day))
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.last_day < self.first_day {
            return Err(SpecError::TermEndsBeforeStart {
                first_day: self.first_day,
                last_day: self.last_day,
            });
        }
        let year_start = NaiveDate::from_ymd_opt(self.academic_year, 9, 1);
        let year_end = NaiveDate::from_ymd_opt(self.academic_year + 1, 8, 31);
        let inside = match (year_start, year_end) {
            (Some(start), Some(end)) => start <= self.first_day && self.last_day <= end,
            _ => false,
        };
        if !inside {
            return Err(SpecError::TermOutsideAcademicYear {
                academic_year: self.academic_year,
                first_day: self.first_day,
                last_day: self.last_day,
            });
        }
        Ok(())
    }
}

impl DateRange {
    /// Returns whether `day` lies in the range, ends included.
    pub fn contains(&self, day: NaiveDate) -> bool {
        self.first <= day && day <= self.last
    }
}

impl SchoolSpec {
    /// Returns the seven-digit LAESTAB: the LA number followed by the establishment number.
    pub fn laestab(&self) -> String {
        format!("{:03}{:04}", self.la_code, self.estab)
    }

    /// Returns whether the school is open on `day`: a weekday of the term that is neither a
    /// break nor one of the school's closures.
    pub fn is_open(&self, term: &Term, day: NaiveDate) -> bool {
        let weekend = matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
        term.first_day <= day
            && day <= term.last_day
            && !weekend
            && !term.is_break(day)
            && !self.closures.contains(&day)
    }

    fn validate(&self, term: &Term) -> Result<(), SpecError> {
        if !(100..=999).contains(&self.la_code) {
            return Err(SpecError::InvalidLaCode {
                name: self.name.clone(),
                la_code: self.la_code,
            });
        }
        if self.estab > 9999 {
            return Err(SpecError::InvalidEstab {
                name: self.name.clone(),
                estab: self.estab,
            });
        }
        let laestab = self.laestab();
        if self.places_per_year_group > 999 {
            return Err(SpecError::TooManyPlaces {
                laestab,
                places: self.places_per_year_group,
            });
        }
        if let Some(&date) = self
            .closures
            .iter()
            .find(|day| **day < term.first_day || **day > term.last_day)
        {
            return Err(SpecError::ClosureOutsideTerm { laestab, date });
        }
        let has_school_day = term
            .first_day
            .iter_days()
            .take_while(|day| *day <= term.last_day)
            .any(|day| self.is_open(term, day));
        if !has_school_day {
            return Err(SpecError::NoSchoolDays { laestab });
        }
        Ok(())
    }
}

impl Phase {
    /// Returns the year groups a school of this phase teaches, youngest first.
    pub fn year_groups(self) -> Vec<YearGroup> {
        let range = match self {
            Phase::Infant => 0..=2,
            Phase::Junior => 3..=6,
            Phase::Primary => 0..=6,
            Phase::Secondary => 7..=11,
        };
        range.map(YearGroup).collect()
    }

    /// Returns whether the phase teaches primary-age pupils, which sets its absence profile.
    pub fn is_primary(self) -> bool {
        !matches!(self, Phase::Secondary)
    }
}

impl YearGroup {
    /// Reception, the year before Year 1.
    pub const RECEPTION: YearGroup = YearGroup(0);

    /// Returns year group `number`: 0 for Reception, 1 to 13 for Years 1 to 13, and `None`
    /// otherwise.
    pub fn new(number: u8) -> Option<Self> {
        (number <= 13).then_some(Self(number))
    }

    /// Returns 0 for Reception and 1 to 13 for Years 1 to 13.
    pub fn number(self) -> u8 {
        self.0
    }

    /// Returns the CTF `NCyearActual` value: `R` for Reception, otherwise the year number.
    pub fn ctf_code(self) -> String {
        if self == Self::RECEPTION {
            "R".to_owned()
        } else {
            self.0.to_string()
        }
    }

    /// Returns the first and last dates of birth of pupils in this year group in the academic
    /// year starting in `academic_year`. Reception in 2025/26 were born from 1 September 2020
    /// to 31 August 2021, and each later year group a year earlier.
    pub fn birth_dates(self, academic_year: i32) -> (NaiveDate, NaiveDate) {
        let offset = i32::from(self.0);
        let first = date(academic_year - 5 - offset, 9, 1);
        let last = date(academic_year - 4 - offset, 8, 31);
        (first, last)
    }

    /// Returns the calendar year the pupil started Reception, used as the UPN's year of
    /// allocation.
    pub fn reception_entry_year(self, academic_year: i32) -> i32 {
        academic_year - i32::from(self.0)
    }
}

/// Builds a date from parts that are known to be valid.
fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("built-in dates are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_spec_is_valid() {
        assert_eq!(TrustSpec::demo(1).validate(), Ok(()));
    }

    #[test]
    fn phase_year_groups() {
        let numbers = |phase: Phase| -> Vec<u8> {
            phase
                .year_groups()
                .into_iter()
                .map(YearGroup::number)
                .collect()
        };
        assert_eq!(numbers(Phase::Infant), vec![0, 1, 2]);
        assert_eq!(numbers(Phase::Junior), vec![3, 4, 5, 6]);
        assert_eq!(numbers(Phase::Primary), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(numbers(Phase::Secondary), vec![7, 8, 9, 10, 11]);
    }

    #[test]
    fn year_group_ctf_codes() {
        assert_eq!(YearGroup::RECEPTION.ctf_code(), "R");
        assert_eq!(
            YearGroup::new(11).map(YearGroup::ctf_code).as_deref(),
            Some("11")
        );
        assert_eq!(YearGroup::new(14), None);
    }

    #[test]
    fn birth_dates_by_year_group() {
        let reception = YearGroup::RECEPTION.birth_dates(2025);
        assert_eq!(reception, (date(2020, 9, 1), date(2021, 8, 31)));
        let year_7 = YearGroup(7).birth_dates(2025);
        assert_eq!(year_7, (date(2013, 9, 1), date(2014, 8, 31)));
    }

    #[test]
    fn school_open_days() {
        let spec = TrustSpec::demo(1);
        let term = &spec.term;
        let secondary = &spec.schools[2];
        let infant = &spec.schools[0];
        assert!(secondary.is_open(term, date(2025, 9, 3)));
        assert!(!secondary.is_open(term, date(2025, 9, 6)), "Saturday");
        assert!(!secondary.is_open(term, date(2025, 10, 29)), "half-term");
        assert!(!secondary.is_open(term, date(2025, 11, 21)), "INSET day");
        assert!(infant.is_open(term, date(2025, 11, 21)));
        assert!(!infant.is_open(term, date(2025, 9, 2)), "before the term");
    }

    #[test]
    fn validate_rejects_bad_specs() {
        let mut spec = TrustSpec::demo(1);
        spec.schools[1].estab = spec.schools[0].estab;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::DuplicateLaestab { .. })
        ));

        let mut spec = TrustSpec::demo(1);
        spec.term.academic_year = 2024;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::TermOutsideAcademicYear { .. })
        ));

        let mut spec = TrustSpec::demo(1);
        spec.schools[0].places_per_year_group = 1000;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::TooManyPlaces { .. })
        ));

        let mut spec = TrustSpec::demo(1);
        spec.term.last_day = date(2025, 9, 1);
        assert!(matches!(
            spec.validate(),
            Err(SpecError::TermEndsBeforeStart { .. })
        ));

        let mut spec = TrustSpec::demo(1);
        spec.schools[0].estab = 10_000;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::InvalidEstab { .. })
        ));

        let mut spec = TrustSpec::demo(1);
        spec.schools[0].la_code = 91;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::InvalidLaCode { .. })
        ));

        let mut spec = TrustSpec::demo(1);
        spec.schools[0].closures.push(date(2026, 1, 5));
        assert!(matches!(
            spec.validate(),
            Err(SpecError::ClosureOutsideTerm { .. })
        ));

        let mut spec = TrustSpec::demo(1);
        spec.term.breaks.push(DateRange {
            first: spec.term.first_day,
            last: spec.term.last_day,
        });
        assert!(matches!(
            spec.validate(),
            Err(SpecError::NoSchoolDays { .. })
        ));
    }
}
