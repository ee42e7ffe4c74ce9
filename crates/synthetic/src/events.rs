//! Marks that follow the school's plans rather than one pupil's health or habits: trips,
//! fixtures, a college course and Reception's phased start, plus a few rare codes placed on
//! purpose so that every consumer meets them.
//!
//! Activities and rare codes only replace present marks, so they never hide an absence. The
//! phased start is the exception: those afternoons are `X` whatever the pupil would have had.

use chrono::{Datelike, Weekday};
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::calendar::SchoolCalendar;
use crate::mark::{Mark, Register, Session};
use crate::pupils::RollEntry;
use crate::spec::{Phase, YearGroup};

/// Open days at the start of term without trips or fixtures.
const SETTLING_IN_DAYS: usize = 10;
/// Open days at the start of term on which Reception pupils attend mornings only.
const PHASED_START_DAYS: usize = 3;
/// Players in a year group's sports team.
const TEAM_SIZE: usize = 11;
/// Fixture afternoons per team in the term.
const FIXTURES: usize = 3;
/// Pupils in each of Years 10 and 11 on a weekly college course.
const COLLEGE_PUPILS: usize = 3;
/// Open days at the end of term when licensed performances, such as pantomimes, take pupils
/// out of school.
const PERFORMANCE_SEASON_DAYS: usize = 15;
/// Random days tried for each pupil before moving on to the next candidate.
const ATTEMPTS_PER_PUPIL: usize = 20;

/// The pupils, their registers and the calendar of one school.
pub(crate) struct School<'a> {
    pub(crate) phase: Phase,
    pub(crate) calendar: &'a SchoolCalendar,
    pub(crate) roll: &'a [RollEntry],
    pub(crate) registers: &'a mut [Register],
}

impl School<'_> {
    /// Returns the indexes of pupils whose year group satisfies `include`.
    fn pupils_in(&self, include: impl Fn(YearGroup) -> bool) -> Vec<usize> {
        (0..self.roll.len())
            .filter(|pupil| include(self.roll[*pupil].year_group))
            .collect()
    }

    /// Open days after the settling-in period, or every open day in a term too short for one.
    fn activity_days(&self) -> &[usize] {
        let open_days = self.calendar.open_days();
        open_days.get(SETTLING_IN_DAYS..).unwrap_or(open_days)
    }

    /// Adds Reception's phased start, trips, fixtures and the college course.
    pub(crate) fn add_group_activities(&mut self, rng: &mut impl Rng) {
        self.add_phased_start();
        self.add_trips(rng);
        self.add_fixtures(rng);
        self.add_college_course(rng);
    }

    /// Marks `X` on the first few afternoons for Reception pupils, who are below compulsory
    /// school age and start with mornings only.
    fn add_phased_start(&mut self) {
        let afternoons: Vec<usize> = self
            .calendar
            .open_days()
            .iter()
            .take(PHASED_START_DAYS)
            .copied()
            .collect();
        for pupil in self.pupils_in(|year| year == YearGroup::RECEPTION) {
            for day in &afternoons {
                self.registers[pupil].set(*day, Session::Afternoon, Mark::NotRequired);
            }
        }
    }

    /// Gives each primary class, and one form group in each secondary year group, a day's
    /// educational visit (`V`).
    fn add_trips(&mut self, rng: &mut impl Rng) {
        for year_group in self.phase.year_groups() {
            let members = self.pupils_in(|year| year == year_group);
            let classes = members
                .iter()
                .map(|pupil| self.roll[*pupil].class + 1)
                .max()
                .unwrap_or(0);
            let travelling = if self.phase.is_primary() || classes == 0 {
                0..classes
            } else {
                let class = rng.random_range(0..classes);
                class..class + 1
            };
            for class in travelling {
                let day = *self
                    .activity_days()
                    .choose(rng)
                    .expect("a school has open days");
                for pupil in members
                    .iter()
                    .filter(|pupil| self.roll[**pupil].class == class)
                {
                    let register = &mut self.registers[*pupil];
                    register.replace_present(day, Session::Morning, Mark::Visit);
                    register.replace_present(day, Session::Afternoon, Mark::Visit);
                }
            }
        }
    }

    /// Gives a team in each year group from Year 5 up a few afternoons of fixtures (`P`).
    fn add_fixtures(&mut self, rng: &mut impl Rng) {
        for year_group in self.phase.year_groups() {
            if year_group.number() < 5 {
                continue;
            }
            let members = self.pupils_in(|year| year == year_group);
            let team: Vec<usize> = members.choose_multiple(rng, TEAM_SIZE).copied().collect();
            let days: Vec<usize> = self
                .activity_days()
                .choose_multiple(rng, FIXTURES)
                .copied()
                .collect();
            for day in days {
                for pupil in &team {
                    self.registers[*pupil].replace_present(day, Session::Afternoon, Mark::Sporting);
                }
            }
        }
    }

    /// Sends a few pupils in Years 10 and 11 to a college course every Wednesday afternoon
    /// (`B`).
    fn add_college_course(&mut self, rng: &mut impl Rng) {
        let wednesdays: Vec<usize> = self
            .calendar
            .open_days()
            .iter()
            .copied()
            .filter(|day| self.calendar.date(*day).weekday() == Weekday::Wed)
            .collect();
        for year_number in [10, 11] {
            let members = self.pupils_in(|year| year.number() == year_number);
            let students: Vec<usize> = members
                .choose_multiple(rng, COLLEGE_PUPILS)
                .copied()
                .collect();
            for pupil in students {
                for day in &wednesdays {
                    self.registers[pupil].replace_present(
                        *day,
                        Session::Afternoon,
                        Mark::OtherApprovedActivity,
                    );
                }
            }
        }
    }

    /// Places the rare codes: `C1` for a performance licence, and in secondary `J1` for
    /// college interviews in Year 11, `C2` for a part-time timetable and `Y1` for a school bus
    /// that did not run.
    pub(crate) fn add_rare_codes(&mut self, rng: &mut impl Rng) {
        let whole_day = [(0, Session::Morning), (0, Session::Afternoon)];
        let open_days = self.calendar.open_days().to_vec();
        let last_weeks = &open_days[open_days.len().saturating_sub(PERFORMANCE_SEASON_DAYS)..];
        let second_half = &open_days[open_days.len() / 2..];

        if matches!(self.phase, Phase::Junior | Phase::Primary) {
            let performers = self.pupils_in(|year| year.number() >= 3);
            self.place(
                rng,
                &performers,
                2,
                last_weeks,
                &whole_day,
                Mark::Performance,
            );
        }
        if self.phase != Phase::Secondary {
            return;
        }
        let everyone = self.pupils_in(|_| true);
        self.place(rng, &everyone, 1, last_weeks, &whole_day, Mark::Performance);

        let year_11 = self.pupils_in(|year| year.number() == 11);
        let morning = [(0, Session::Morning)];
        let afternoon = [(0, Session::Afternoon)];
        self.place(rng, &year_11, 2, second_half, &morning, Mark::Interview);
        self.place(rng, &year_11, 2, second_half, &afternoon, Mark::Interview);

        let two_afternoons = [(0, Session::Afternoon), (1, Session::Afternoon)];
        self.place(
            rng,
            &everyone,
            1,
            &open_days,
            &two_afternoons,
            Mark::PartTimeTimetable,
        );
        self.place(
            rng,
            &everyone,
            1,
            &open_days,
            &morning,
            Mark::TransportUnavailable,
        );
    }

    /// Marks `mark` on `count` different pupils from `candidates`. Each gets the sessions in
    /// `slots` (offsets in open days from a day drawn from `days`, with the session) on a day
    /// when the pupil was present for all of them. Fewer pupils are marked only if too few
    /// candidates were present on the days tried.
    fn place(
        &mut self,
        rng: &mut impl Rng,
        candidates: &[usize],
        count: usize,
        days: &[usize],
        slots: &[(usize, Session)],
        mark: Mark,
    ) {
        let span = slots
            .iter()
            .map(|(offset, _)| offset + 1)
            .max()
            .unwrap_or(1);
        if days.len() < span {
            return;
        }
        let mut shuffled = candidates.to_vec();
        shuffled.shuffle(rng);

        let mut placed = 0;
        for pupil in shuffled {
            if placed == count {
                break;
            }
            let register = &mut self.registers[pupil];
            for _ in 0..ATTEMPTS_PER_PUPIL {
                let first = rng.random_range(0..=days.len() - span);
                let all_present = slots
                    .iter()
                    .all(|(offset, session)| register.is_present(days[first + offset], *session));
                if all_present {
                    for (offset, session) in slots {
                        register.set(days[first + offset], *session, mark);
                    }
                    placed += 1;
                    break;
                }
            }
        }
    }
}
