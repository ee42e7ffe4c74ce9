//! The mapping between `AttendSessions::marks` and the file's `AttendanceMarks` string plus its
//! `ExtendedMarks` entries for two-character codes.

use std::collections::HashSet;

use chrono::NaiveDate;

use crate::error::ExtendedMarkProblem;
use crate::model::AttendSessions;

/// One `ExtendedMarks/ExtendedMark` entry: the whole code for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtendedMark {
    pub(crate) date: NaiveDate,
    /// 0 for AM, 1 for PM.
    pub(crate) session: u8,
    pub(crate) code: String,
}

/// Builds the sessions from the marks string, one character per session, then replaces the
/// character at each extended mark's session with its whole code.
///
/// On failure returns the position of the offending entry in `extended` and the problem.
pub(crate) fn expand(
    start_date: NaiveDate,
    marks: &[char],
    extended: &[ExtendedMark],
) -> Result<AttendSessions, (usize, ExtendedMarkProblem)> {
    let mut sessions = AttendSessions {
        start_date,
        marks: marks.iter().map(char::to_string).collect(),
    };
    let mut seen = HashSet::new();
    for (position, entry) in extended.iter().enumerate() {
        let index = sessions
            .session_index(entry.date, entry.session)
            .ok_or_else(|| (position, outside(&sessions, entry)))?;
        if !seen.insert(index) {
            let problem = ExtendedMarkProblem::Duplicate {
                date: entry.date,
                session: entry.session,
            };
            return Err((position, problem));
        }
        let mark = marks[index];
        if !entry.code.starts_with(mark) {
            let problem = ExtendedMarkProblem::FirstCharacterMismatch {
                date: entry.date,
                session: entry.session,
                code: entry.code.clone(),
                mark,
            };
            return Err((position, problem));
        }
        sessions.marks[index] = entry.code.clone();
    }
    Ok(sessions)
}

fn outside(sessions: &AttendSessions, entry: &ExtendedMark) -> ExtendedMarkProblem {
    let covered = sessions
        .marks
        .len()
        .checked_sub(1)
        .map(|last| (sessions.start_date, sessions.session_at(last).0));
    ExtendedMarkProblem::OutsideMarks {
        date: entry.date,
        session: entry.session,
        covered,
    }
}

/// Returns the marks string (the first character of each code) and an extended mark for each
/// session whose code has more than one character.
pub(crate) fn compact(sessions: &AttendSessions) -> (String, Vec<ExtendedMark>) {
    let mut marks = String::with_capacity(sessions.marks.len());
    let mut extended = Vec::new();
    for (index, code) in sessions.marks.iter().enumerate() {
        marks.extend(code.chars().next());
        if code.chars().count() > 1 {
            let (date, session) = sessions.session_at(index);
            extended.push(ExtendedMark {
                date,
                session,
                code: code.clone(),
            });
        }
    }
    (marks, extended)
}
