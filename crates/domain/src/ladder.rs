//! Escalation ladders: who acts at each stage of a case, what they do, and when a case may
//! move on.
//!
//! Ladders are data: a TOML file per ladder (see `docs/cases.md`). Two ship with rollcall as
//! editable defaults built from the trust policy, one for infants and one for juniors and
//! secondary. Each escalates from the classroom upward, then to the trust's Attendance
//! Improvement Officer with an Attendance Improvement Plan, and last to the local authority
//! attendance officer.

use std::ops::Range;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::phase::Phase;
use crate::policy::file::PolicyFileError;

/// The infants' ladder as shipped.
pub const INFANTS_TOML: &str = include_str!("../ladders/infants.toml");
/// The juniors' and secondary ladder as shipped.
pub const JUNIORS_AND_SECONDARY_TOML: &str = include_str!("../ladders/juniors-and-secondary.toml");

static INFANT_LADDER: LazyLock<Ladder> = LazyLock::new(|| shipped(INFANTS_TOML));
static JUNIOR_SECONDARY_LADDER: LazyLock<Ladder> =
    LazyLock::new(|| shipped(JUNIORS_AND_SECONDARY_TOML));

fn shipped(text: &str) -> Ladder {
    match parse_ladder(text) {
        Ok(ladder) => ladder,
        // The tests below parse both shipped files, so a broken one fails the tests.
        Err(error) => panic!("a ladder shipped with rollcall is invalid: {error}"),
    }
}

/// A role that can own a stage of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The class teacher (primary) or form tutor (secondary).
    ClassTeacherOrTutor,
    /// The head of year.
    HeadOfYear,
    /// The member of the senior leadership team responsible for attendance.
    SeniorAttendanceLead,
    /// The trust's Attendance Improvement Officer.
    TrustAttendanceImprovementOfficer,
    /// The local authority attendance officer.
    LocalAuthorityAttendanceOfficer,
}

impl Role {
    /// Every role, from the classroom up.
    pub const ALL: [Self; 5] = [
        Self::ClassTeacherOrTutor,
        Self::HeadOfYear,
        Self::SeniorAttendanceLead,
        Self::TrustAttendanceImprovementOfficer,
        Self::LocalAuthorityAttendanceOfficer,
    ];

    /// Returns the role's name as used in files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClassTeacherOrTutor => "class_teacher_or_tutor",
            Self::HeadOfYear => "head_of_year",
            Self::SeniorAttendanceLead => "senior_attendance_lead",
            Self::TrustAttendanceImprovementOfficer => "trust_attendance_improvement_officer",
            Self::LocalAuthorityAttendanceOfficer => "local_authority_attendance_officer",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == value)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|role| role.as_str()).collect();
                format!("\"{value}\" is not a role; use one of {}", names.join(", "))
            })
    }
}

/// A kind of action staff record on a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// A phone call to the parents.
    Call,
    /// A letter to the parents.
    Letter,
    /// A meeting with the parents (and pupil).
    Meeting,
    /// A structured meeting with the family and the trust's Attendance Improvement Officer.
    StructuredMeeting,
    /// A visit to the pupil's home.
    HomeVisit,
    /// An attendance contract agreed with the parents.
    AttendanceContract,
    /// An assessment of the family's circumstances, which the policy requires before a
    /// penalty notice is requested (4.10).
    Assessment,
}

impl ActionKind {
    /// Every kind of action.
    pub const ALL: [Self; 7] = [
        Self::Call,
        Self::Letter,
        Self::Meeting,
        Self::StructuredMeeting,
        Self::HomeVisit,
        Self::AttendanceContract,
        Self::Assessment,
    ];

    /// Returns the kind's name as used in files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Letter => "letter",
            Self::Meeting => "meeting",
            Self::StructuredMeeting => "structured_meeting",
            Self::HomeVisit => "home_visit",
            Self::AttendanceContract => "attendance_contract",
            Self::Assessment => "assessment",
        }
    }
}

impl FromStr for ActionKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == value)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|kind| kind.as_str()).collect();
                format!(
                    "\"{value}\" is not a kind of action; use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// One stage of a ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Stable identifier, unique within the ladder.
    pub id: String,
    /// Short title.
    pub title: String,
    /// The role that owns the case at this stage.
    pub owner: Role,
    /// The actions expected of the owner.
    pub actions: Vec<String>,
    /// School days between reviews at this stage.
    pub review_interval_days: u32,
    /// The clause of the policy the stage carries out.
    pub clause: String,
    /// The stage suits a pupil whose attendance is below this percentage, if set.
    pub entry_attendance_below_percent: Option<u32>,
    /// The kinds of action that must be recorded at this stage before the case moves up.
    pub complete_before_escalating: Vec<ActionKind>,
}

/// An escalation ladder for one or more phases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ladder {
    /// Stable identifier.
    pub id: String,
    /// Title.
    pub title: String,
    /// The phases that follow it.
    pub phases: Vec<Phase>,
    /// The clause of the policy it carries out.
    pub clause: String,
    /// The stages, from the first.
    pub stages: Vec<Stage>,
}

impl Ladder {
    /// Returns the position (from 0) of the stage with this id.
    pub fn position(&self, stage_id: &str) -> Option<usize> {
        self.stages.iter().position(|stage| stage.id == stage_id)
    }

    /// Returns the furthest stage whose entry criterion the attendance meets, or `None` when
    /// it meets none. Attendance is in tenths of a percent.
    pub fn stage_for_attendance(&self, attendance_tenths: u32) -> Option<(usize, &Stage)> {
        self.stages.iter().enumerate().rev().find(|(_, stage)| {
            stage
                .entry_attendance_below_percent
                .is_some_and(|percent| attendance_tenths < percent * 10)
        })
    }
}

/// Returns the missing actions that stop a case leaving `stage` upward, given the kinds of
/// action recorded at that stage.
pub fn missing_before_escalating(stage: &Stage, recorded: &[ActionKind]) -> Vec<ActionKind> {
    stage
        .complete_before_escalating
        .iter()
        .copied()
        .filter(|kind| !recorded.contains(kind))
        .collect()
}

/// Returns the date `school_days` weekdays after `from`, for review dates. Weekends are passed
/// over; holidays are not known here and count as school days.
pub fn school_days_after(from: chrono::NaiveDate, school_days: u32) -> chrono::NaiveDate {
    use chrono::Datelike;
    school_days_after_with(from, school_days, |date| {
        date.weekday().number_from_monday() <= 5
    })
}

/// Returns the date `school_days` school days after `from`, counting the days for which
/// `is_school_day` returns true. The search stops after three years, so a calendar with no school days ahead
/// gives a date three years on rather than running for ever.
pub fn school_days_after_with(
    from: chrono::NaiveDate,
    school_days: u32,
    is_school_day: impl Fn(chrono::NaiveDate) -> bool,
) -> chrono::NaiveDate {
    let limit = from
        .checked_add_days(chrono::Days::new(3 * 366))
        .unwrap_or(chrono::NaiveDate::MAX);
    let mut date = from;
    let mut left = school_days;
    while left > 0 && date < limit {
        date = date.succ_opt().unwrap_or(limit);
        if is_school_day(date) {
            left -= 1;
        }
    }
    date
}

/// Chooses the ladder for a phase: a loaded one that names the phase, else the default.
pub fn choose_ladder(loaded: &[Ladder], phase: Phase) -> Ladder {
    loaded
        .iter()
        .find(|ladder| ladder.phases.contains(&phase))
        .cloned()
        .unwrap_or_else(|| ladder_for(phase).clone())
}

/// Returns the default ladder for a phase.
pub fn ladder_for(phase: Phase) -> &'static Ladder {
    match phase {
        Phase::Infant => &INFANT_LADDER,
        Phase::Junior | Phase::Secondary => &JUNIOR_SECONDARY_LADDER,
    }
}

/// Returns both shipped ladders with their text.
pub fn shipped_ladders() -> [(&'static Ladder, &'static str); 2] {
    [
        (&INFANT_LADDER, INFANTS_TOML),
        (&JUNIOR_SECONDARY_LADDER, JUNIORS_AND_SECONDARY_TOML),
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLadder {
    format: Spanned<u32>,
    id: Spanned<String>,
    title: Spanned<String>,
    phases: Spanned<Vec<String>>,
    clause: Spanned<String>,
    stages: Spanned<Vec<RawStage>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    id: Spanned<String>,
    title: Spanned<String>,
    owner: Spanned<String>,
    #[serde(default)]
    actions: Vec<String>,
    review_interval_days: Spanned<u32>,
    clause: Spanned<String>,
    entry_attendance_below_percent: Option<Spanned<u32>>,
    complete_before_escalating: Option<Spanned<Vec<String>>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Reads a ladder file, checking every stage. Errors name the key and the line.
pub fn parse_ladder(text: &str) -> Result<Ladder, PolicyFileError> {
    let error = |span: Range<usize>, key: &str, message: String| PolicyFileError {
        line: line_of(text, span.start),
        key: key.to_owned(),
        message,
    };
    let raw: RawLadder = toml::from_str(text)
        .map_err(|problem| crate::policy::file::syntax_error(text, &problem))?;
    if *raw.format.get_ref() != 1 {
        return Err(error(
            raw.format.span(),
            "format",
            format!(
                "format {} is not supported; this version of rollcall reads format 1",
                raw.format.get_ref()
            ),
        ));
    }
    let not_empty = |value: &Spanned<String>, key: &str| {
        let trimmed = value.get_ref().trim();
        if trimmed.is_empty() {
            Err(error(value.span(), key, "must not be empty".to_owned()))
        } else {
            Ok(trimmed.to_owned())
        }
    };
    let mut phases = Vec::new();
    for phase in raw.phases.get_ref() {
        let parsed = phase.parse::<Phase>().map_err(|_| {
            error(
                raw.phases.span(),
                "phases",
                format!("\"{phase}\" is not a phase; use infant, junior or secondary"),
            )
        })?;
        phases.push(parsed);
    }
    if phases.is_empty() {
        return Err(error(
            raw.phases.span(),
            "phases",
            "name at least one phase: infant, junior or secondary".to_owned(),
        ));
    }
    if raw.stages.get_ref().is_empty() {
        return Err(error(
            raw.stages.span(),
            "stages",
            "a ladder needs at least one stage".to_owned(),
        ));
    }

    let mut stages: Vec<Stage> = Vec::new();
    for (index, stage) in raw.stages.get_ref().iter().enumerate() {
        let key = |name: &str| format!("stages[{index}].{name}");
        let id = not_empty(&stage.id, &key("id"))?;
        if stages.iter().any(|earlier| earlier.id == id) {
            return Err(error(
                stage.id.span(),
                &key("id"),
                format!("\"{id}\" is used by an earlier stage; give each stage its own id"),
            ));
        }
        let owner = stage
            .owner
            .get_ref()
            .parse::<Role>()
            .map_err(|problem| error(stage.owner.span(), &key("owner"), problem))?;
        let interval = *stage.review_interval_days.get_ref();
        if !(1..=365).contains(&interval) {
            return Err(error(
                stage.review_interval_days.span(),
                &key("review_interval_days"),
                format!("{interval} is not a possible value; use 1 to 365 school days"),
            ));
        }
        let entry = match &stage.entry_attendance_below_percent {
            Some(value) => {
                let percent = *value.get_ref();
                if !(1..=100).contains(&percent) {
                    return Err(error(
                        value.span(),
                        &key("entry_attendance_below_percent"),
                        format!("{percent} is not a possible value; use 1 to 100 percent"),
                    ));
                }
                let earlier = stages
                    .iter()
                    .filter_map(|earlier| earlier.entry_attendance_below_percent)
                    .min();
                if let Some(earlier) = earlier
                    && percent > earlier
                {
                    return Err(error(
                        value.span(),
                        &key("entry_attendance_below_percent"),
                        format!(
                            "{percent}% is above an earlier stage's {earlier}%; later stages are \
                             for lower attendance"
                        ),
                    ));
                }
                Some(percent)
            }
            None => None,
        };
        let mut required = Vec::new();
        if let Some(kinds) = &stage.complete_before_escalating {
            for kind in kinds.get_ref() {
                let parsed = kind.parse::<ActionKind>().map_err(|problem| {
                    error(kinds.span(), &key("complete_before_escalating"), problem)
                })?;
                required.push(parsed);
            }
        }
        stages.push(Stage {
            id,
            title: not_empty(&stage.title, &key("title"))?,
            owner,
            actions: stage.actions.clone(),
            review_interval_days: interval,
            clause: not_empty(&stage.clause, &key("clause")).map_err(|problem| {
                PolicyFileError {
                    message: "every stage needs the clause of the policy it carries out".to_owned(),
                    ..problem
                }
            })?,
            entry_attendance_below_percent: entry,
            complete_before_escalating: required,
        });
    }
    let id = not_empty(&raw.id, "id")?;
    if !id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(error(
            raw.id.span(),
            "id",
            format!("\"{id}\" may use only lower-case letters, digits and hyphens"),
        ));
    }
    Ok(Ladder {
        id,
        title: not_empty(&raw.title, "title")?,
        phases,
        clause: not_empty(&raw.clause, "clause")?,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_ladders_parse() {
        for (ladder, text) in shipped_ladders() {
            assert_eq!(&parse_ladder(text).expect("valid"), ladder);
        }
    }

    #[test]
    fn ladders_run_classroom_to_local_authority() {
        for (ladder, _) in shipped_ladders() {
            let first = ladder.stages.first().expect("stages");
            let last = ladder.stages.last().expect("stages");
            assert_eq!(first.owner, Role::ClassTeacherOrTutor, "{}", ladder.id);
            assert_eq!(
                last.owner,
                Role::LocalAuthorityAttendanceOfficer,
                "{}",
                ladder.id
            );
        }
    }

    #[test]
    fn phases_choose_their_ladder() {
        assert_eq!(ladder_for(Phase::Infant).id, "infants");
        assert_eq!(ladder_for(Phase::Junior).id, "juniors-and-secondary");
        assert_eq!(ladder_for(Phase::Secondary).id, "juniors-and-secondary");
    }

    #[test]
    fn attendance_chooses_the_furthest_stage() {
        let ladder = ladder_for(Phase::Secondary);
        assert!(ladder.stage_for_attendance(960).is_none());
        let stage = |tenths| ladder.stage_for_attendance(tenths).map(|(i, _)| i);
        assert_eq!(stage(949), Some(0));
        assert_eq!(stage(915), Some(1));
        assert_eq!(
            stage(899),
            Some(3),
            "two stages start below 90%: the later one"
        );
    }

    #[test]
    fn escalation_needs_the_stage_actions() {
        let stage = &ladder_for(Phase::Secondary).stages[1];
        assert_eq!(
            missing_before_escalating(stage, &[ActionKind::Letter]),
            [ActionKind::Meeting]
        );
        assert!(
            missing_before_escalating(stage, &[ActionKind::Meeting, ActionKind::Letter]).is_empty()
        );
    }

    #[test]
    fn review_dates_pass_over_weekends() {
        let friday = chrono::NaiveDate::from_ymd_opt(2025, 9, 5).expect("date");
        let after = |days| school_days_after(friday, days).to_string();
        assert_eq!(after(1), "2025-09-08");
        assert_eq!(after(10), "2025-09-19");
        assert_eq!(after(0), "2025-09-05");
    }

    #[test]
    fn bad_ladders_name_the_key_and_line() {
        let unknown = INFANTS_TOML.replacen("review_interval_days = 10", "review_days = 10", 1);
        let error = parse_ladder(&unknown).expect_err("unknown key");
        assert_eq!(error.key, "stages.review_days");
        let line = unknown
            .lines()
            .position(|l| l.contains("review_days"))
            .expect("line")
            + 1;
        assert_eq!(error.line, line);

        let owner = INFANTS_TOML.replacen("owner = \"head_of_year\"", "owner = \"caretaker\"", 1);
        let owner = owner.replacen(
            "owner = \"senior_attendance_lead\"",
            "owner = \"caretaker\"",
            1,
        );
        let error = parse_ladder(&owner).expect_err("unknown role");
        assert_eq!(error.key, "stages[1].owner");

        let kinds = INFANTS_TOML.replacen("[\"call\"]", "[\"telegram\"]", 1);
        let error = parse_ladder(&kinds).expect_err("unknown action");
        assert_eq!(error.key, "stages[0].complete_before_escalating");
        assert!(error.message.contains("home_visit"), "{error}");

        let rising = INFANTS_TOML.replacen(
            "entry_attendance_below_percent = 92",
            "entry_attendance_below_percent = 97",
            1,
        );
        let error = parse_ladder(&rising).expect_err("later stage for higher attendance");
        assert_eq!(error.key, "stages[1].entry_attendance_below_percent");

        let no_clause = INFANTS_TOML.replacen("clause = \"6.3\"", "clause = \"\"", 1);
        let error = parse_ladder(&no_clause).expect_err("no clause");
        assert_eq!(error.key, "stages[2].clause");
    }

    #[test]
    fn assessment_is_a_kind_of_action() {
        assert_eq!(
            "assessment".parse::<ActionKind>(),
            Ok(ActionKind::Assessment)
        );
        assert_eq!(ActionKind::Assessment.as_str(), "assessment");
    }
}
