//! School days from a school's calendar, read from the registers service.
//!
//! A school day is a weekday in a term that is not closed for the whole day. A school without a
//! calendar counts every weekday.

use std::collections::HashSet;

use crate::client::Channel;
use crate::registers::v1::GetCalendarRequest;
use crate::registers::v1::registers_service_client::RegistersServiceClient;
use crate::types::v1::Session as PbSession;
use chrono::{Datelike, NaiveDate};
use rollcall_domain::ladder::school_days_after_with;
use rollcall_domain::session::parse_date;
use tonic::{Code, Status};

/// The days a school meets, as its calendar records them.
#[derive(Debug, Clone, Default)]
pub struct SchoolDays {
    terms: Vec<(NaiveDate, NaiveDate)>,
    closed: HashSet<NaiveDate>,
}

impl SchoolDays {
    /// Returns true when the school meets on `date`.
    pub fn is_school_day(&self, date: NaiveDate) -> bool {
        let weekday = date.weekday().number_from_monday() <= 5;
        let in_term = self.terms.is_empty()
            || self
                .terms
                .iter()
                .any(|(first, last)| *first <= date && date <= *last);
        weekday && in_term && !self.closed.contains(&date)
    }

    /// Returns the date `days` school days after `from`.
    pub fn after(&self, from: NaiveDate, days: u32) -> NaiveDate {
        school_days_after_with(from, days, |date| self.is_school_day(date))
    }

    /// Counts the school days after `from` up to and including `to`; 0 when `to` is not later.
    pub fn between(&self, from: NaiveDate, to: NaiveDate) -> u32 {
        from.iter_days()
            .skip(1)
            .take_while(|date| *date <= to)
            .filter(|date| self.is_school_day(*date))
            .map(|_| 1)
            .sum()
    }
}

/// Reads a school's calendar from the registers; a school without one counts weekdays. Other
/// errors from the registers are returned as they came.
pub async fn of_school(
    registers: &RegistersServiceClient<Channel>,
    laestab: &str,
) -> Result<SchoolDays, Status> {
    let response = registers
        .clone()
        .get_calendar(GetCalendarRequest {
            laestab: laestab.to_owned(),
        })
        .await;
    let calendar = match response {
        Ok(response) => response.into_inner().calendar.unwrap_or_default(),
        Err(status) if status.code() == Code::NotFound => return Ok(SchoolDays::default()),
        Err(status) => return Err(status),
    };
    Ok(SchoolDays {
        terms: calendar
            .terms
            .iter()
            .filter_map(|term| {
                Some((
                    parse_date(&term.first_day).ok()?,
                    parse_date(&term.last_day).ok()?,
                ))
            })
            .collect(),
        closed: calendar
            .closures
            .iter()
            .filter(|closure| closure.session == PbSession::Unspecified as i32)
            .filter_map(|closure| parse_date(&closure.date).ok())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(month: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, month, day).expect("valid date")
    }

    #[test]
    fn holidays_and_closures_are_passed_over() {
        let days = SchoolDays {
            terms: vec![(date(9, 1), date(10, 24)), (date(11, 3), date(12, 19))],
            closed: HashSet::from([date(11, 3)]),
        };
        // Friday 24 October is the last day before half term; Monday 3 November is an INSET
        // day, so the first school day after it is Tuesday 4 November.
        assert_eq!(days.after(date(10, 24), 1), date(11, 4));
        assert_eq!(days.after(date(10, 20), 5), date(11, 4));
    }

    #[test]
    fn days_between_count_only_school_days() {
        let days = SchoolDays {
            terms: vec![(date(9, 1), date(10, 24)), (date(11, 3), date(12, 19))],
            closed: HashSet::from([date(11, 3)]),
        };
        // From Wednesday 22 October: Thursday 23 and Friday 24, then half term, the INSET day
        // and Tuesday 4 November.
        assert_eq!(days.between(date(10, 22), date(11, 4)), 3);
        assert_eq!(days.between(date(11, 4), date(10, 22)), 0);
        assert_eq!(days.between(date(11, 4), date(11, 4)), 0);
    }

    #[test]
    fn without_a_calendar_weekdays_count() {
        let days = SchoolDays::default();
        assert_eq!(days.after(date(10, 24), 1), date(10, 27));
    }
}
