//! The roll of one school: who the pupils are, their UPNs and when they joined.

use chrono::NaiveDate;
use rand::Rng;
use rollcall_domain::Upn;

use crate::calendar::SchoolCalendar;
use crate::names::{self, Sex};
use crate::random::chance;
use crate::spec::{SchoolSpec, YearGroup};

/// Pupils per class or form group.
const CLASS_SIZE: usize = 30;
/// Share of pupils who join on a school day after the first day of term.
const LATE_JOINER_SHARE: f64 = 0.02;
/// Lowest share of a year group's places that is filled.
const MIN_FILL: f64 = 0.95;

/// One pupil on the roll.
#[derive(Debug, Clone)]
pub(crate) struct RollEntry {
    pub(crate) upn: Upn,
    pub(crate) forename: &'static str,
    pub(crate) surname: &'static str,
    pub(crate) date_of_birth: NaiveDate,
    pub(crate) sex: Sex,
    pub(crate) year_group: YearGroup,
    /// Class or form group within the year group, from 0.
    pub(crate) class: usize,
    /// Calendar index of the pupil's first day: 0 unless the pupil joined during the term.
    pub(crate) start: usize,
}

/// Draws the roll of `school`, year group by year group, youngest first.
pub(crate) fn draw_roll(
    rng: &mut impl Rng,
    academic_year: i32,
    school: &SchoolSpec,
    calendar: &SchoolCalendar,
) -> Vec<RollEntry> {
    let mut roll = Vec::new();
    for year_group in school.phase.year_groups() {
        let places = f64::from(school.places_per_year_group);
        let size = (places * rng.random_range(MIN_FILL..=1.0)).round() as usize;
        let allocation_year = year_group.reception_entry_year(academic_year);
        for position in 0..size {
            let upn = pupil_upn(school, allocation_year, position + 1);
            let pupil = draw_pupil(rng, academic_year, calendar, upn, year_group);
            roll.push(RollEntry {
                class: position % size.div_ceil(CLASS_SIZE),
                ..pupil
            });
        }
    }
    roll
}

fn draw_pupil(
    rng: &mut impl Rng,
    academic_year: i32,
    calendar: &SchoolCalendar,
    upn: Upn,
    year_group: YearGroup,
) -> RollEntry {
    let sex = Sex::random(rng);
    let (first_birthday, last_birthday) = year_group.birth_dates(academic_year);
    let days_in_range = (last_birthday - first_birthday).num_days();
    let date_of_birth = first_birthday
        .checked_add_days(chrono::Days::new(rng.random_range(0..=days_in_range) as u64))
        .expect("the birth date range is within chrono's range");

    RollEntry {
        upn,
        forename: names::forename(rng, sex),
        surname: names::surname(rng),
        date_of_birth,
        sex,
        year_group,
        class: 0,
        start: draw_start(rng, calendar),
    }
}

/// Returns the calendar index of a pupil's first day: the first day of term for most, a later
/// open day for a few who join during the term.
fn draw_start(rng: &mut impl Rng, calendar: &SchoolCalendar) -> usize {
    let open_days = calendar.open_days();
    if open_days.len() > 1 && chance(rng, LATE_JOINER_SHARE) {
        open_days[rng.random_range(1..open_days.len())]
    } else {
        0
    }
}

/// Builds a UPN from the school's LA and establishment numbers, the two-digit year of
/// allocation and a three-digit serial.
fn pupil_upn(school: &SchoolSpec, allocation_year: i32, serial: usize) -> Upn {
    let text = format!(
        "{:03}{:04}{:02}{:03}",
        school.la_code,
        school.estab,
        allocation_year.rem_euclid(100),
        serial
    );
    let digits: Vec<u8> = text.bytes().map(|byte| byte - b'0').collect();
    let digits: [u8; 12] = digits
        .try_into()
        .expect("validated LA and establishment numbers and serials below 1000 give 12 digits");
    Upn::from_digits(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TrustSpec;

    #[test]
    fn upn_digits_follow_school_and_year() {
        let spec = TrustSpec::demo(1);
        let upn = pupil_upn(&spec.schools[2], 2018, 42);
        assert_eq!(&upn.as_str()[1..], "919478118042");
        assert_eq!(Upn::parse(upn.as_str()), Ok(upn));
    }

    #[test]
    fn classes_hold_at_most_thirty() {
        use rand::SeedableRng;
        let spec = TrustSpec::demo(1);
        let school = &spec.schools[2];
        let calendar = SchoolCalendar::new(&spec.term, school);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let roll = draw_roll(&mut rng, 2025, school, &calendar);
        for year_group in school.phase.year_groups() {
            let mut class_sizes = [0; 7];
            for pupil in roll.iter().filter(|pupil| pupil.year_group == year_group) {
                class_sizes[pupil.class] += 1;
            }
            assert!(class_sizes.iter().all(|size| *size <= CLASS_SIZE));
        }
    }
}
