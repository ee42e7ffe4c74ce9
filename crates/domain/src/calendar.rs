//! A school's calendar: terms, register times, closures and its time zone.
//!
//! Dates are school-local calendar dates. Arrival times come as instants and are converted to
//! school-local times with the school's time zone before they are compared with register times.
//! The change from British Summer Time to GMT in October therefore turns no L into a U.

use std::fmt;

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::session::{Session, SessionDate};

/// The maximum time a register may stay open, in minutes.
pub const MAX_REGISTER_MINUTES: i64 = 30;

/// When a session's register opens and closes, in school-local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterTimes {
    /// The time the register opens.
    pub opens: NaiveTime,
    /// The time it closes: a pupil arriving after this is marked U.
    pub closes: NaiveTime,
}

/// A term: the school days between two dates, inclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    /// The term's name, for example "Autumn 2025".
    pub name: String,
    /// The first day of term.
    pub first_day: NaiveDate,
    /// The last day of term.
    pub last_day: NaiveDate,
}

/// The kind of closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosureKind {
    /// Planned in advance, such as a training day; marked `#`.
    Planned,
    /// Unexpected, such as snow or a heating failure.
    Unexpected,
}

/// A day or session on which the school is closed during term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closure {
    /// The date.
    pub date: NaiveDate,
    /// The session closed, or `None` for the whole day.
    pub session: Option<Session>,
    /// Planned or unexpected.
    pub kind: ClosureKind,
    /// The reason, for example "INSET day".
    pub reason: String,
}

/// The state of one session in a school's calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// The school meets and registers are taken.
    Open,
    /// A Saturday or Sunday.
    Weekend,
    /// Outside every term.
    NotInTerm,
    /// A closure during term.
    Closed(ClosureKind),
}

/// The mark a late arrival earns, by the school's register close time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Arrived before the register opened.
    OnTime,
    /// Arrived while the register was open: `L`, present.
    BeforeRegisterClosed {
        /// Minutes after the register opened.
        minutes_late: u32,
    },
    /// Arrived after the register closed: `U`, unauthorised absence.
    AfterRegisterClosed {
        /// Minutes after the register opened.
        minutes_late: u32,
    },
}

impl Arrival {
    /// Returns the attendance code the arrival earns: `/` or `\` on time, `L` or `U` when late.
    pub fn code(self, session: Session) -> &'static str {
        match (self, session) {
            (Self::OnTime, Session::Am) => "/",
            (Self::OnTime, Session::Pm) => "\\",
            (Self::BeforeRegisterClosed { .. }, _) => "L",
            (Self::AfterRegisterClosed { .. }, _) => "U",
        }
    }

    /// Returns the minutes after the register opened, 0 when on time.
    pub fn minutes_late(self) -> u32 {
        match self {
            Self::OnTime => 0,
            Self::BeforeRegisterClosed { minutes_late }
            | Self::AfterRegisterClosed { minutes_late } => minutes_late,
        }
    }
}

/// The reason a calendar is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// A register stays open too long, or closes before it opens.
    #[error(
        "the {session} register opens at {} and closes at {}: it must close after it opens and at most {MAX_REGISTER_MINUTES} minutes later",
        .opens.format("%H:%M"),
        .closes.format("%H:%M")
    )]
    RegisterWindow {
        /// The session.
        session: Session,
        /// The time it opens.
        opens: NaiveTime,
        /// The time it closes.
        closes: NaiveTime,
    },
    /// A term ends before it starts.
    #[error("term {name:?} ends on {last_day}, before it starts on {first_day}")]
    TermOrder {
        /// The term's name.
        name: String,
        /// Its first day.
        first_day: NaiveDate,
        /// Its last day.
        last_day: NaiveDate,
    },
    /// Two terms share days.
    #[error("terms {first:?} and {second:?} overlap")]
    TermsOverlap {
        /// The earlier term.
        first: String,
        /// The later term.
        second: String,
    },
    /// A closure falls outside every term.
    #[error("the closure on {date} is not in any term")]
    ClosureOutsideTerm {
        /// The closure's date.
        date: NaiveDate,
    },
    /// Not an IANA time zone name.
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/London")]
    TimeZone(String),
}

/// A school's calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchoolCalendar {
    time_zone: Tz,
    am: RegisterTimes,
    pm: RegisterTimes,
    terms: Vec<Term>,
    closures: Vec<Closure>,
}

impl SchoolCalendar {
    /// Checks and builds a calendar. Terms may be given in any order.
    pub fn new(
        time_zone: &str,
        am: RegisterTimes,
        pm: RegisterTimes,
        mut terms: Vec<Term>,
        closures: Vec<Closure>,
    ) -> Result<Self, CalendarError> {
        let time_zone: Tz = time_zone
            .parse()
            .map_err(|_| CalendarError::TimeZone(time_zone.to_owned()))?;
        for (session, times) in [(Session::Am, am), (Session::Pm, pm)] {
            let minutes = (times.closes - times.opens).num_minutes();
            if minutes <= 0 || minutes > MAX_REGISTER_MINUTES {
                return Err(CalendarError::RegisterWindow {
                    session,
                    opens: times.opens,
                    closes: times.closes,
                });
            }
        }
        terms.sort_by_key(|term| term.first_day);
        for term in &terms {
            if term.last_day < term.first_day {
                return Err(CalendarError::TermOrder {
                    name: term.name.clone(),
                    first_day: term.first_day,
                    last_day: term.last_day,
                });
            }
        }
        for pair in terms.windows(2) {
            if pair[1].first_day <= pair[0].last_day {
                return Err(CalendarError::TermsOverlap {
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }
        let calendar = Self {
            time_zone,
            am,
            pm,
            terms,
            closures,
        };
        if let Some(closure) = calendar
            .closures
            .iter()
            .find(|closure| calendar.term_of(closure.date).is_none())
        {
            return Err(CalendarError::ClosureOutsideTerm { date: closure.date });
        }
        Ok(calendar)
    }

    /// Returns the school's time zone.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// Returns the terms in date order.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// Returns the closures.
    pub fn closures(&self) -> &[Closure] {
        &self.closures
    }

    /// Returns the register times of a session.
    pub fn register_times(&self, session: Session) -> RegisterTimes {
        match session {
            Session::Am => self.am,
            Session::Pm => self.pm,
        }
    }

    /// Returns the term containing `date`, if any.
    pub fn term_of(&self, date: NaiveDate) -> Option<&Term> {
        self.terms
            .iter()
            .find(|term| term.first_day <= date && date <= term.last_day)
    }

    /// Returns the state of one session.
    pub fn status(&self, at: SessionDate) -> SessionStatus {
        if self.term_of(at.date).is_none() {
            return SessionStatus::NotInTerm;
        }
        if matches!(at.date.weekday(), Weekday::Sat | Weekday::Sun) {
            return SessionStatus::Weekend;
        }
        let closure = self.closures.iter().find(|closure| {
            closure.date == at.date && closure.session.is_none_or(|session| session == at.session)
        });
        match closure {
            Some(closure) => SessionStatus::Closed(closure.kind),
            None => SessionStatus::Open,
        }
    }

    /// Returns true when the school meets for the session.
    pub fn is_open(&self, at: SessionDate) -> bool {
        self.status(at) == SessionStatus::Open
    }

    /// Returns every open session from `from` to `to`, inclusive, in order.
    pub fn open_sessions(&self, from: NaiveDate, to: NaiveDate) -> Vec<SessionDate> {
        let mut sessions = Vec::new();
        let mut date = from;
        while date <= to {
            for session in [Session::Am, Session::Pm] {
                let at = SessionDate { date, session };
                if self.is_open(at) {
                    sessions.push(at);
                }
            }
            match date.checked_add_days(Days::new(1)) {
                Some(next) => date = next,
                None => break,
            }
        }
        sessions
    }

    /// Returns the number of school days (days with at least one open session) after `from`,
    /// up to and including `to`.
    pub fn school_days_between(&self, from: NaiveDate, to: NaiveDate) -> u32 {
        let Some(start) = from.checked_add_days(Days::new(1)) else {
            return 0;
        };
        let mut days = 0;
        let mut date = start;
        while date <= to {
            let open = [Session::Am, Session::Pm]
                .into_iter()
                .any(|session| self.is_open(SessionDate { date, session }));
            if open {
                days += 1;
            }
            match date.checked_add_days(Days::new(1)) {
                Some(next) => date = next,
                None => break,
            }
        }
        days
    }

    /// Returns the mark a pupil arriving at `arrived_at` earns for the session, by the school's
    /// local time on that date.
    pub fn arrival(&self, at: SessionDate, arrived_at: DateTime<Utc>) -> Arrival {
        let local = arrived_at.with_timezone(&self.time_zone).naive_local();
        let times = self.register_times(at.session);
        let opens = at.date.and_time(times.opens);
        let closes = at.date.and_time(times.closes);
        if local <= opens {
            return Arrival::OnTime;
        }
        let minutes_late = u32::try_from((local - opens).num_minutes()).unwrap_or(u32::MAX);
        if local <= closes {
            Arrival::BeforeRegisterClosed { minutes_late }
        } else {
            Arrival::AfterRegisterClosed { minutes_late }
        }
    }
}

impl fmt::Display for ClosureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Planned => "planned",
            Self::Unexpected => "unexpected",
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn date(month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, month, day).expect("valid date")
    }

    fn time(hour: u32, minute: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time")
    }

    fn times(opens: NaiveTime, closes: NaiveTime) -> RegisterTimes {
        RegisterTimes { opens, closes }
    }

    fn autumn() -> SchoolCalendar {
        SchoolCalendar::new(
            "Europe/London",
            times(time(8, 40), time(9, 0)),
            times(time(13, 15), time(13, 30)),
            vec![
                Term {
                    name: "Autumn 1".into(),
                    first_day: date(9, 3),
                    last_day: date(10, 24),
                },
                Term {
                    name: "Autumn 2".into(),
                    first_day: date(11, 3),
                    last_day: date(12, 19),
                },
            ],
            vec![Closure {
                date: date(11, 21),
                session: None,
                kind: ClosureKind::Planned,
                reason: "INSET day".into(),
            }],
        )
        .expect("valid calendar")
    }

    fn am(date: NaiveDate) -> SessionDate {
        SessionDate {
            date,
            session: Session::Am,
        }
    }

    fn utc(month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, month, day, hour, minute, 0)
            .single()
            .expect("valid instant")
    }

    #[test]
    fn status_follows_terms_weekends_and_closures() {
        let calendar = autumn();
        assert_eq!(calendar.status(am(date(9, 3))), SessionStatus::Open);
        assert_eq!(calendar.status(am(date(9, 6))), SessionStatus::Weekend);
        assert_eq!(calendar.status(am(date(10, 28))), SessionStatus::NotInTerm);
        assert_eq!(
            calendar.status(am(date(11, 21))),
            SessionStatus::Closed(ClosureKind::Planned)
        );
    }

    #[test]
    fn open_sessions_count_school_days() {
        let calendar = autumn();
        // Wednesday 3 to Friday 5 September: three days, six sessions.
        assert_eq!(calendar.open_sessions(date(9, 1), date(9, 7)).len(), 6);
        // Autumn 1 has 38 school days; Autumn 2 has 35, less the INSET day.
        let all = calendar.open_sessions(date(9, 1), date(12, 31));
        assert_eq!(all.len(), 2 * (38 + 34));
    }

    #[test]
    fn school_days_skip_weekends_and_holidays() {
        let calendar = autumn();
        // Friday 24 October to Monday 3 November: half-term in between, one school day.
        assert_eq!(calendar.school_days_between(date(10, 24), date(11, 3)), 1);
        assert_eq!(calendar.school_days_between(date(9, 5), date(9, 12)), 5);
    }

    #[test]
    fn arrival_uses_local_time_across_clock_change() {
        let calendar = autumn();
        // Friday 24 October is in British Summer Time: 07:50 UTC is 08:50 in London.
        let summer = calendar.arrival(am(date(10, 24)), utc(10, 24, 7, 50));
        assert_eq!(summer, Arrival::BeforeRegisterClosed { minutes_late: 10 });
        assert_eq!(summer.code(Session::Am), "L");
        // 08:05 UTC is 09:05 BST, after the register closed.
        let after = calendar.arrival(am(date(10, 24)), utc(10, 24, 8, 5));
        assert_eq!(after, Arrival::AfterRegisterClosed { minutes_late: 25 });
        assert_eq!(after.code(Session::Am), "U");
        // Monday 3 November is in GMT: 08:50 UTC is 08:50 in London, still L.
        let winter = calendar.arrival(am(date(11, 3)), utc(11, 3, 8, 50));
        assert_eq!(winter, Arrival::BeforeRegisterClosed { minutes_late: 10 });
        assert_eq!(
            calendar.arrival(am(date(11, 3)), utc(11, 3, 8, 30)),
            Arrival::OnTime
        );
    }

    #[test]
    fn register_window_at_most_thirty_minutes() {
        let error = SchoolCalendar::new(
            "Europe/London",
            times(time(8, 30), time(9, 1)),
            times(time(13, 15), time(13, 30)),
            Vec::new(),
            Vec::new(),
        )
        .expect_err("31 minutes");
        assert!(matches!(
            error,
            CalendarError::RegisterWindow {
                session: Session::Am,
                ..
            }
        ));
        assert!(error.to_string().contains("at most 30 minutes"), "{error}");
    }

    #[test]
    fn invalid_calendars_rejected() {
        let term = |name: &str, first, last| Term {
            name: name.into(),
            first_day: first,
            last_day: last,
        };
        let build = |terms, closures| {
            SchoolCalendar::new(
                "Europe/London",
                times(time(8, 40), time(9, 0)),
                times(time(13, 15), time(13, 30)),
                terms,
                closures,
            )
        };
        assert!(matches!(
            build(vec![term("A", date(9, 10), date(9, 1))], Vec::new()),
            Err(CalendarError::TermOrder { .. })
        ));
        assert!(matches!(
            build(
                vec![
                    term("A", date(9, 1), date(10, 1)),
                    term("B", date(10, 1), date(11, 1))
                ],
                Vec::new()
            ),
            Err(CalendarError::TermsOverlap { .. })
        ));
        let closure = Closure {
            date: date(12, 25),
            session: None,
            kind: ClosureKind::Unexpected,
            reason: "snow".into(),
        };
        assert!(matches!(
            build(vec![term("A", date(9, 1), date(10, 1))], vec![closure]),
            Err(CalendarError::ClosureOutsideTerm { .. })
        ));
        let error = SchoolCalendar::new(
            "London",
            times(time(8, 40), time(9, 0)),
            times(time(13, 15), time(13, 30)),
            Vec::new(),
            Vec::new(),
        )
        .expect_err("not an IANA name");
        assert!(error.to_string().contains("Europe/London"), "{error}");
    }

    proptest! {
        #[test]
        fn arrival_code_follows_local_minutes(minutes in 0i64..24 * 60, day in 1u32..28) {
            let calendar = autumn();
            let session = am(date(10, day));
            let local = session.date.and_time(time(0, 0)) + chrono::Duration::minutes(minutes);
            let instant = chrono_tz::Europe::London
                .from_local_datetime(&local)
                .earliest()
                .expect("no gap in the morning")
                .with_timezone(&Utc);
            let arrival = calendar.arrival(session, instant);
            let opens = 8 * 60 + 40;
            let closes = 9 * 60;
            let expected = if minutes <= opens {
                "/"
            } else if minutes <= closes {
                "L"
            } else {
                "U"
            };
            prop_assert_eq!(arrival.code(Session::Am), expected);
        }
    }
}

#[cfg(test)]
mod register_properties {
    use proptest::prelude::*;

    use super::*;
    use crate::codes::{CODES, Category};
    use crate::stats::Figures;

    fn date(month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, month, day).expect("valid date")
    }

    fn calendar() -> SchoolCalendar {
        let time = |hour, minute| NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time");
        SchoolCalendar::new(
            "Europe/London",
            RegisterTimes {
                opens: time(8, 40),
                closes: time(9, 0),
            },
            RegisterTimes {
                opens: time(13, 15),
                closes: time(13, 30),
            },
            vec![Term {
                name: "Autumn".into(),
                first_day: date(9, 1),
                last_day: date(12, 19),
            }],
            vec![Closure {
                date: date(11, 21),
                session: None,
                kind: ClosureKind::Planned,
                reason: "INSET day".into(),
            }],
        )
        .expect("valid calendar")
    }

    proptest! {
        /// For a pupil with a mark for every session on roll, any date range partitions those
        /// sessions: present + approved activity + authorised + unauthorised + not possible
        /// equals the sessions on roll in the range, and authorised + unauthorised is the
        /// absence.
        #[test]
        fn categories_partition_sessions_on_roll(
            admitted in 0u64..60,
            stays in 1u64..120,
            range_start in 0u64..110,
            range_days in 0u64..110,
            picks in proptest::collection::vec(0usize..1000, 400),
        ) {
            let calendar = calendar();
            let first = date(9, 1);
            let admission = first + Days::new(admitted);
            let leaving = admission + Days::new(stays);
            let possible_codes: Vec<&str> = CODES
                .iter()
                .filter(|info| info.valid_until.is_none() && info.code != "#")
                .map(|info| info.code)
                .collect();
            // One mark for every session on roll: # on the planned closure, any current code
            // otherwise.
            let mut marks = Vec::new();
            let mut sessions = Vec::new();
            let mut day = admission;
            while day <= leaving {
                for session in [Session::Am, Session::Pm] {
                    let at = SessionDate { date: day, session };
                    let code = match calendar.status(at) {
                        SessionStatus::Open => possible_codes[picks[marks.len() % picks.len()] % possible_codes.len()],
                        SessionStatus::Closed(ClosureKind::Planned) => "#",
                        _ => continue,
                    };
                    marks.push((at, code));
                    sessions.push(at);
                }
                day = day + Days::new(1);
            }
            let from = first + Days::new(range_start);
            let to = from + Days::new(range_days);
            let in_range = |at: &SessionDate| at.date >= from && at.date <= to;
            let figures = Figures::from_codes(
                marks.iter().filter(|(at, _)| in_range(at)).map(|(_, code)| *code),
            );
            let on_roll = sessions.iter().filter(|at| in_range(at)).count() as u32;
            prop_assert_eq!(
                figures.present + figures.approved_activity + figures.authorised_absence
                    + figures.unauthorised_absence + figures.not_possible,
                on_roll
            );
            prop_assert_eq!(figures.authorised_absence + figures.unauthorised_absence, figures.absent());
            let absent = marks
                .iter()
                .filter(|(at, code)| in_range(at) && crate::codes::category_of(code).is_absence())
                .count() as u32;
            prop_assert_eq!(figures.absent(), absent);
            let closures = marks
                .iter()
                .filter(|(at, code)| in_range(at) && crate::codes::category_of(code) == Category::NotPossible)
                .count() as u32;
            prop_assert_eq!(figures.not_possible, closures);
        }
    }
}
