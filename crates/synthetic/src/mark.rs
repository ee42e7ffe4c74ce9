//! The attendance codes the generator writes, and the DfE rules that turn them into totals.

use rollcall_ctf::Totals;

/// Half of a school day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Session {
    Morning,
    Afternoon,
}

/// One register mark, named by meaning. [`Mark::code`] gives the code valid from
/// 19 August 2024.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// `/` in the morning, `\` in the afternoon.
    Present,
    /// `L`: late, but before the register closed. Counts as present.
    LateBeforeClose,
    /// `B`: any other approved educational activity, such as a college course.
    OtherApprovedActivity,
    /// `P`: supervised sporting activity.
    Sporting,
    /// `V`: educational visit or trip.
    Visit,
    /// `I`: illness.
    Illness,
    /// `M`: medical or dental appointment.
    Medical,
    /// `R`: religious observance.
    Religious,
    /// `C`: leave of absence for exceptional circumstances.
    Exceptional,
    /// `C1`: leave for a regulated performance or regulated employment abroad.
    Performance,
    /// `C2`: leave for a pupil on a part-time timetable.
    PartTimeTimetable,
    /// `J1`: leave to attend an interview.
    Interview,
    /// `G`: holiday not granted by the school.
    Holiday,
    /// `N`: reason for absence not yet established.
    NoReason,
    /// `O`: absent in other or unknown circumstances.
    Unexplained,
    /// `U`: arrived after the register closed.
    LateAfterClose,
    /// `X`: a pupil below compulsory school age who is not required to attend.
    NotRequired,
    /// `Y1`: the transport normally provided was not available.
    TransportUnavailable,
    /// `#`: planned whole-school closure, including weekends and holidays.
    Closed,
}

/// DfE category of a mark, which decides where it counts in the session totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    Present,
    ApprovedActivity,
    Authorised,
    Unauthorised,
    NotPossible,
}

impl Mark {
    /// Returns the register code for this mark in `session`.
    pub(crate) fn code(self, session: Session) -> &'static str {
        match self {
            Mark::Present => match session {
                Session::Morning => "/",
                Session::Afternoon => "\\",
            },
            Mark::LateBeforeClose => "L",
            Mark::OtherApprovedActivity => "B",
            Mark::Sporting => "P",
            Mark::Visit => "V",
            Mark::Illness => "I",
            Mark::Medical => "M",
            Mark::Religious => "R",
            Mark::Exceptional => "C",
            Mark::Performance => "C1",
            Mark::PartTimeTimetable => "C2",
            Mark::Interview => "J1",
            Mark::Holiday => "G",
            Mark::NoReason => "N",
            Mark::Unexplained => "O",
            Mark::LateAfterClose => "U",
            Mark::NotRequired => "X",
            Mark::TransportUnavailable => "Y1",
            Mark::Closed => "#",
        }
    }

    pub(crate) fn category(self) -> Category {
        match self {
            Mark::Present | Mark::LateBeforeClose => Category::Present,
            Mark::OtherApprovedActivity | Mark::Sporting | Mark::Visit => {
                Category::ApprovedActivity
            }
            Mark::Illness
            | Mark::Medical
            | Mark::Religious
            | Mark::Exceptional
            | Mark::Performance
            | Mark::PartTimeTimetable
            | Mark::Interview => Category::Authorised,
            Mark::Holiday | Mark::NoReason | Mark::Unexplained | Mark::LateAfterClose => {
                Category::Unauthorised
            }
            Mark::NotRequired | Mark::TransportUnavailable | Mark::Closed => Category::NotPossible,
        }
    }

    /// Returns whether the pupil was in school, on time or late before the register closed.
    pub(crate) fn is_present(self) -> bool {
        self.category() == Category::Present
    }
}

/// One pupil's marks, AM then PM for each calendar day from the pupil's first day to the end
/// of term.
#[derive(Debug, Clone)]
pub(crate) struct Register {
    /// Calendar index of the pupil's first day.
    pub(crate) start: usize,
    pub(crate) marks: Vec<Mark>,
}

impl Register {
    fn position(&self, day: usize, session: Session) -> Option<usize> {
        let offset = day.checked_sub(self.start)?;
        let position = 2 * offset + usize::from(session == Session::Afternoon);
        (position < self.marks.len()).then_some(position)
    }

    /// Returns whether the pupil was present for `session` of calendar day `day`. Days before
    /// the pupil's first day count as not present.
    pub(crate) fn is_present(&self, day: usize, session: Session) -> bool {
        self.position(day, session)
            .is_some_and(|position| self.marks[position].is_present())
    }

    /// Sets the mark for `session` of calendar day `day`. Days before the pupil's first day
    /// are left alone.
    pub(crate) fn set(&mut self, day: usize, session: Session, mark: Mark) {
        if let Some(position) = self.position(day, session) {
            self.marks[position] = mark;
        }
    }

    /// Sets the mark for `session` of calendar day `day` if the pupil was present then, so
    /// that an activity never hides an absence.
    pub(crate) fn replace_present(&mut self, day: usize, session: Session, mark: Mark) {
        if self.is_present(day, session) {
            self.set(day, session, mark);
        }
    }
}

/// Returns the session of the mark at `index` in a list that alternates morning and afternoon.
pub(crate) fn session_of(index: usize) -> Session {
    if index.is_multiple_of(2) {
        Session::Morning
    } else {
        Session::Afternoon
    }
}

/// Counts the session totals by the DfE rules. Possible sessions are those marked present,
/// approved educational activity, authorised or unauthorised absence. Attended sessions are
/// present (including `L`) plus approved educational activity.
pub(crate) fn totals(marks: &[Mark]) -> Totals {
    let mut attended = 0;
    let mut authorised = 0;
    let mut unauthorised = 0;
    for mark in marks {
        match mark.category() {
            Category::Present | Category::ApprovedActivity => attended += 1,
            Category::Authorised => authorised += 1,
            Category::Unauthorised => unauthorised += 1,
            Category::NotPossible => {}
        }
    }
    Totals {
        possible: Some(attended + authorised + unauthorised),
        authorised: Some(authorised),
        attended: Some(attended),
        unauthorised: Some(unauthorised),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_codes_by_session() {
        assert_eq!(Mark::Present.code(Session::Morning), "/");
        assert_eq!(Mark::Present.code(Session::Afternoon), "\\");
        assert_eq!(Mark::Illness.code(Session::Afternoon), "I");
    }

    #[test]
    fn totals_follow_dfe_rules() {
        let marks = [
            Mark::Present,
            Mark::LateBeforeClose,
            Mark::Visit,
            Mark::Illness,
            Mark::Interview,
            Mark::LateAfterClose,
            Mark::Holiday,
            Mark::NotRequired,
            Mark::TransportUnavailable,
            Mark::Closed,
        ];
        let totals = totals(&marks);
        assert_eq!(totals.attended, Some(3));
        assert_eq!(totals.authorised, Some(2));
        assert_eq!(totals.unauthorised, Some(2));
        assert_eq!(totals.possible, Some(7));
    }
}
