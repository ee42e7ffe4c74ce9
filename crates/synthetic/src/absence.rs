//! The model of absence: each pupil's propensities, then a day-by-day walk through the term.

use std::ops::RangeInclusive;

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::calendar::SchoolCalendar;
use crate::mark::{Mark, Session};
use crate::random::{chance, lognormal_multiplier, standard_normal};
use crate::spec::Phase;

/// Rates of each kind of absence in one phase. Daily and per-session rates are for a pupil whose
/// propensities are all 1 on a day of weight 1. They were tuned by hand against the target
/// figures in the crate documentation.
#[derive(Debug, Clone)]
pub(crate) struct AbsenceProfile {
    /// Chance per school day that an illness spell starts.
    illness_onset: f64,
    /// Share of illness spells whose first morning the pupil attends, going home ill at lunch.
    sent_home_share: f64,
    /// Chance per school day of a whole day's absence with no reason given.
    unexplained_day: f64,
    /// Chance per session of a single unexplained session.
    unexplained_session: f64,
    /// Share of unexplained absence left as `N`, never resolved, instead of `O`.
    unresolved_share: f64,
    /// Chance per school day of leave for exceptional circumstances (`C`).
    exceptional_day: f64,
    /// Chance per session of a medical or dental appointment.
    medical_session: f64,
    /// Chance per school day of an appointment that takes the whole day.
    medical_day: f64,
    /// Chance per morning of arriving late.
    late_morning: f64,
    /// Chance per afternoon of arriving late.
    late_afternoon: f64,
    /// Share of late arrivals that come after the register closed (`U`).
    after_close_share: f64,
    /// Share of pupils who take a holiday in term time.
    holiday_share: f64,
    /// Share of pupils who miss a day for religious observance.
    observance_share: f64,
    /// Share of pupils who are often away.
    frequent_share: f64,
    /// Factor on the frequently absent pupils' propensities. The other pupils' factor is set
    /// below 1 so that the mean stays 1.
    frequent_factor: f64,
    /// Share of pupils who miss from a third to nine-tenths of school days.
    severe_share: f64,
    /// Spread of the illness propensity across pupils.
    illness_sigma: f64,
    /// Spread of the propensity for unexplained absence across pupils.
    disengagement_sigma: f64,
    /// Spread of the propensity for lateness across pupils.
    lateness_sigma: f64,
}

/// How much the illness and unexplained-absence propensities of a pupil move together.
const PROPENSITY_CORRELATION: f64 = 0.6;

impl AbsenceProfile {
    pub(crate) fn for_phase(phase: Phase) -> Self {
        if phase.is_primary() {
            Self::primary()
        } else {
            Self::secondary()
        }
    }

    fn primary() -> Self {
        Self {
            illness_onset: 0.01,
            sent_home_share: 0.15,
            unexplained_day: 0.004,
            unexplained_session: 0.0008,
            unresolved_share: 0.12,
            exceptional_day: 0.004,
            medical_session: 0.006,
            medical_day: 0.0003,
            late_morning: 0.043,
            late_afternoon: 0.004,
            after_close_share: 0.08,
            holiday_share: 0.06,
            observance_share: 0.03,
            frequent_share: 0.2,
            frequent_factor: 4.0,
            severe_share: 0.017,
            illness_sigma: 0.5,
            disengagement_sigma: 0.8,
            lateness_sigma: 1.0,
        }
    }

    fn secondary() -> Self {
        Self {
            illness_onset: 0.0145,
            sent_home_share: 0.15,
            unexplained_day: 0.0095,
            unexplained_session: 0.003,
            unresolved_share: 0.12,
            exceptional_day: 0.005,
            medical_session: 0.007,
            medical_day: 0.0003,
            late_morning: 0.041,
            late_afternoon: 0.006,
            after_close_share: 0.12,
            holiday_share: 0.035,
            observance_share: 0.03,
            frequent_share: 0.27,
            frequent_factor: 3.0,
            severe_share: 0.025,
            illness_sigma: 0.5,
            disengagement_sigma: 0.9,
            lateness_sigma: 1.0,
        }
    }
}

/// Propensities of one pupil for each kind of absence, drawn once per pupil.
#[derive(Debug, Clone)]
pub(crate) struct PupilTraits {
    /// Factor of the pupil's group, with mean 1 over all pupils: the profile's `frequent_factor`
    /// for the frequently absent, below 1 for the rest. It scales the illness and
    /// unexplained-absence propensities and the rate of leave for exceptional circumstances.
    group: f64,
    /// Multiplier on the illness onset and medical appointment rates, with mean 1.
    illness: f64,
    /// Multiplier on the unexplained absence rates, with mean 1.
    disengagement: f64,
    /// Multiplier on the lateness rates, with mean 1.
    lateness: f64,
    severe: Option<SevereAbsence>,
    holiday: Option<Leave>,
    /// Calendar index of a day of religious observance.
    observance_day: Option<usize>,
}

/// A pupil who misses from a third to nine-tenths of school days, for a long illness or for
/// reasons the school does not accept.
#[derive(Debug, Clone, Copy)]
struct SevereAbsence {
    /// Chance of missing each school day.
    daily_rate: f64,
    /// Whether the absence is a long illness (mostly `I`) rather than unexplained (mostly `O`).
    medical: bool,
}

/// A block of consecutive school days away, recorded with one mark.
#[derive(Debug, Clone)]
struct Leave {
    /// Calendar indexes from the first to the last day away, weekends included.
    days: RangeInclusive<usize>,
    mark: Mark,
}

/// Illness spell lengths in school days, with their weights.
const SPELL_LENGTHS: [(u32, u32); 4] = [(1, 25), (2, 30), (3, 25), (4, 20)];

/// Draws one pupil's propensities. Each is a log-normal multiplier with mean 1, times the
/// factor of the pupil's group, so most pupils are rarely away and a minority are away often.
pub(crate) fn draw_traits(
    rng: &mut impl Rng,
    profile: &AbsenceProfile,
    calendar: &SchoolCalendar,
) -> PupilTraits {
    let shared = standard_normal(rng);
    let own_share = (1.0 - PROPENSITY_CORRELATION * PROPENSITY_CORRELATION).sqrt();
    let illness_normal = PROPENSITY_CORRELATION * shared + own_share * standard_normal(rng);
    let disengagement_normal = PROPENSITY_CORRELATION * shared + own_share * standard_normal(rng);
    let group = group_factor(rng, profile);

    let severe = chance(rng, profile.severe_share).then(|| SevereAbsence {
        daily_rate: rng.random_range(0.3..0.9),
        medical: chance(rng, 0.35),
    });
    let holiday = chance(rng, profile.holiday_share).then(|| draw_holiday(rng, calendar));
    let observance_day = if chance(rng, profile.observance_share) {
        calendar.open_days().choose(rng).copied()
    } else {
        None
    };

    PupilTraits {
        group,
        illness: group * lognormal_multiplier(illness_normal, profile.illness_sigma),
        disengagement: group
            * lognormal_multiplier(disengagement_normal, profile.disengagement_sigma),
        lateness: lognormal_multiplier(standard_normal(rng), profile.lateness_sigma),
        severe,
        holiday,
        observance_day,
    }
}

/// Draws whether a pupil is frequently absent and returns the group's factor. The rest get the
/// factor below 1 that keeps the mean at 1.
fn group_factor(rng: &mut impl Rng, profile: &AbsenceProfile) -> f64 {
    let share = profile.frequent_share;
    if chance(rng, share) {
        profile.frequent_factor
    } else {
        (1.0 - share * profile.frequent_factor) / (1.0 - share)
    }
}

/// Places a holiday of two to five school days. Families favour the days next to half-term
/// and the end of term, so most holidays go there. One in ten is granted as exceptional
/// circumstances (`C`), the rest are unauthorised (`G`).
fn draw_holiday(rng: &mut impl Rng, calendar: &SchoolCalendar) -> Leave {
    let open_days = calendar.open_days();
    let length = rng.random_range(2..=5).min(open_days.len());
    let latest_start = open_days.len() - length;
    let break_ends = calendar.break_ends();

    let start = match rng.random_range(0..10) {
        0..=3 if !break_ends.is_empty() => {
            let break_end = *break_ends.choose(rng).expect("checked not empty");
            if rng.random_bool(0.5) {
                break_end.saturating_sub(length)
            } else {
                break_end.min(latest_start)
            }
        }
        0..=6 => latest_start,
        _ => rng.random_range(0..=latest_start),
    };

    let mark = if chance(rng, 0.1) {
        Mark::Exceptional
    } else {
        Mark::Holiday
    };
    Leave {
        days: open_days[start]..=open_days[start + length - 1],
        mark,
    }
}

/// Simulates one pupil's register from calendar day `start` to the end of term, two marks per
/// day. Closed days get `#`.
pub(crate) fn simulate_register(
    rng: &mut impl Rng,
    profile: &AbsenceProfile,
    traits: &PupilTraits,
    calendar: &SchoolCalendar,
    start: usize,
) -> Vec<Mark> {
    let mut marks = Vec::with_capacity(2 * (calendar.len() - start));
    let mut illness_days_left = 0;
    for index in start..calendar.len() {
        let day = if !calendar.is_open(index) {
            [Mark::Closed; 2]
        } else if let Some(severe) = traits.severe {
            severe_day(rng, severe)
        } else {
            let weight = calendar.absence_weight(index);
            let mut day = DayContext {
                profile,
                traits,
                index,
                weight,
                illness_days_left: &mut illness_days_left,
            };
            day.simulate(rng)
        };
        marks.extend(day);
    }
    marks
}

/// One open day of an ordinary pupil's register, with the state carried between days.
struct DayContext<'a> {
    profile: &'a AbsenceProfile,
    traits: &'a PupilTraits,
    index: usize,
    /// Seasonal weight of absence on this day.
    weight: f64,
    /// Days of the current illness spell still to come.
    illness_days_left: &'a mut u32,
}

impl DayContext<'_> {
    /// Decides the day's two marks. Planned absence comes first, then an illness spell already
    /// under way, then a new spell, then whole days away, then each session on its own.
    fn simulate(&mut self, rng: &mut impl Rng) -> [Mark; 2] {
        let profile = self.profile;
        let traits = self.traits;

        if traits.observance_day == Some(self.index) {
            return [Mark::Religious; 2];
        }
        if let Some(leave) = &traits.holiday
            && leave.days.contains(&self.index)
        {
            return [leave.mark; 2];
        }
        if *self.illness_days_left > 0 {
            *self.illness_days_left -= 1;
            return [Mark::Illness; 2];
        }
        let mut draws = SplitDraw::new(rng);
        let outcome = draw_outcome(
            draws.next(),
            &[
                (
                    DayOutcome::IllnessOnset,
                    profile.illness_onset * traits.illness * self.weight,
                ),
                (
                    DayOutcome::Unexplained,
                    profile.unexplained_day * traits.disengagement * self.weight,
                ),
                (
                    DayOutcome::Exceptional,
                    profile.exceptional_day * traits.group * self.weight,
                ),
                (DayOutcome::Medical, profile.medical_day),
            ],
            DayOutcome::Sessions,
        );
        match outcome {
            DayOutcome::IllnessOnset => {
                *self.illness_days_left = spell_length(rng) - 1;
                if chance(rng, profile.sent_home_share) {
                    [
                        self.session(rng, draws.next(), Session::Morning),
                        Mark::Illness,
                    ]
                } else {
                    [Mark::Illness; 2]
                }
            }
            DayOutcome::Unexplained => [self.unexplained_mark(rng); 2],
            DayOutcome::Exceptional => [Mark::Exceptional; 2],
            DayOutcome::Medical => [Mark::Medical; 2],
            DayOutcome::Sessions => [
                self.session(rng, draws.next(), Session::Morning),
                self.session(rng, draws.next(), Session::Afternoon),
            ],
        }
    }

    /// Decides one session of a day the pupil is expected in: usually present, sometimes late,
    /// at an appointment or missing. `draw` is uniform in [0, 1).
    fn session(&self, rng: &mut impl Rng, draw: f64, session: Session) -> Mark {
        let profile = self.profile;
        let traits = self.traits;
        let late_rate = match session {
            Session::Morning => profile.late_morning,
            Session::Afternoon => profile.late_afternoon,
        };
        let outcome = draw_outcome(
            draw,
            &[
                (
                    SessionOutcome::Medical,
                    profile.medical_session * traits.illness,
                ),
                (
                    SessionOutcome::Unexplained,
                    profile.unexplained_session * traits.disengagement,
                ),
                (SessionOutcome::Late, late_rate * traits.lateness),
            ],
            SessionOutcome::Present,
        );
        match outcome {
            SessionOutcome::Medical => Mark::Medical,
            SessionOutcome::Unexplained => self.unexplained_mark(rng),
            SessionOutcome::Late if chance(rng, profile.after_close_share) => Mark::LateAfterClose,
            SessionOutcome::Late => Mark::LateBeforeClose,
            SessionOutcome::Present => Mark::Present,
        }
    }

    fn unexplained_mark(&self, rng: &mut impl Rng) -> Mark {
        if chance(rng, self.profile.unresolved_share) {
            Mark::NoReason
        } else {
            Mark::Unexplained
        }
    }
}

/// Outcome of an open day that no plan or illness spell already decided.
#[derive(Debug, Clone, Copy)]
enum DayOutcome {
    IllnessOnset,
    Unexplained,
    Exceptional,
    Medical,
    /// Each session is decided on its own.
    Sessions,
}

/// Outcome of one session of a day the pupil is expected in.
#[derive(Debug, Clone, Copy)]
enum SessionOutcome {
    Medical,
    Unexplained,
    Late,
    Present,
}

/// Picks one of `outcomes` by its chance, or `otherwise`, from `draw`, uniform in [0, 1). The
/// chances are stacked, so if they add up to more than 1 the last ones lose out.
fn draw_outcome<T: Copy>(draw: f64, outcomes: &[(T, f64)], otherwise: T) -> T {
    let mut threshold = 0.0;
    for (outcome, chance) in outcomes {
        threshold += chance;
        if draw < threshold {
            return *outcome;
        }
    }
    otherwise
}

/// Three uniform draws in [0, 1) cut from one 64-bit random number, 21 bits each.
///
/// Deciding a day takes up to three draws. ChaCha8 is slow without optimisation and these
/// draws dominate the cost of a debug build, so sharing one number cuts that cost by about
/// two-thirds. Steps of 2^-21 (about one in two million) are far finer than any chance in the
/// profiles.
struct SplitDraw {
    bits: u64,
}

impl SplitDraw {
    const BITS: u32 = 21;

    fn new(rng: &mut impl Rng) -> Self {
        Self {
            bits: rng.random::<u64>(),
        }
    }

    fn next(&mut self) -> f64 {
        let mask = (1_u64 << Self::BITS) - 1;
        let part = self.bits & mask;
        self.bits >>= Self::BITS;
        part as f64 / (1_u64 << Self::BITS) as f64
    }
}

/// Decides a day for a severely absent pupil: away all day at the pupil's rate, otherwise in
/// school, occasionally for the morning only.
fn severe_day(rng: &mut impl Rng, severe: SevereAbsence) -> [Mark; 2] {
    let reason = |rng: &mut _| severe_reason(rng, severe.medical);
    if chance(rng, severe.daily_rate) {
        let mark = reason(rng);
        return [mark, mark];
    }
    if chance(rng, 0.15) {
        return [Mark::Present, reason(rng)];
    }
    [Mark::Present; 2]
}

fn severe_reason(rng: &mut impl Rng, medical: bool) -> Mark {
    let draw = rng.random::<f64>();
    match (medical, draw) {
        (true, draw) if draw < 0.9 => Mark::Illness,
        (true, _) => Mark::Medical,
        (false, draw) if draw < 0.7 => Mark::Unexplained,
        (false, draw) if draw < 0.75 => Mark::NoReason,
        (false, _) => Mark::Illness,
    }
}

fn spell_length(rng: &mut impl Rng) -> u32 {
    let total: u32 = SPELL_LENGTHS.iter().map(|(_, weight)| weight).sum();
    let mut draw = rng.random_range(0..total);
    for (length, weight) in SPELL_LENGTHS {
        if draw < weight {
            return length;
        }
        draw -= weight;
    }
    unreachable!("the draw is below the total weight")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::spec::TrustSpec;

    #[test]
    fn register_covers_every_day_from_start() {
        let spec = TrustSpec::demo(3);
        let calendar = SchoolCalendar::new(&spec.term, &spec.schools[0]);
        let profile = AbsenceProfile::for_phase(Phase::Infant);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for start in [0, 10, calendar.len() - 1] {
            let traits = draw_traits(&mut rng, &profile, &calendar);
            let marks = simulate_register(&mut rng, &profile, &traits, &calendar, start);
            assert_eq!(marks.len(), 2 * (calendar.len() - start));
        }
    }

    #[test]
    fn holidays_fall_on_school_days() {
        let spec = TrustSpec::demo(4);
        let calendar = SchoolCalendar::new(&spec.term, &spec.schools[2]);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..500 {
            let leave = draw_holiday(&mut rng, &calendar);
            let (first, last) = (*leave.days.start(), *leave.days.end());
            assert!(calendar.is_open(first), "holiday starts on day {first}");
            assert!(calendar.is_open(last), "holiday ends on day {last}");
            let school_days = leave.days.filter(|day| calendar.is_open(*day)).count();
            assert!((2..=5).contains(&school_days), "{school_days} school days");
        }
    }

    #[test]
    fn spell_lengths_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..1000 {
            assert!((1..=4).contains(&spell_length(&mut rng)));
        }
    }
}
