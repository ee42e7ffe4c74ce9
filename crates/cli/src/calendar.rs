//! `rollcall calendar`: a school's terms, closures, register times and time zone.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use rollcall_api::registers::v1::{
    Calendar, Closure, ClosureKind, GetCalendarRequest, RegisterTimes, SetCalendarRequest, Term,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_domain::Session;
use serde::{Deserialize, Serialize};

use crate::client::Clients;
use crate::text::count;

#[derive(Debug, Subcommand)]
pub(crate) enum CalendarCommand {
    /// Replace a school's calendar with the one in a JSON file (see docs/usage.md).
    Set {
        /// The school: seven-digit LAESTAB, e.g. 9192001.
        #[arg(long)]
        school: String,
        /// The calendar file.
        #[arg(long)]
        file: PathBuf,
        /// The name of the person making the change.
        #[arg(long)]
        by: String,
        /// The position of the person making the change.
        #[arg(long, default_value = "")]
        position: String,
    },
    /// Print a school's calendar as JSON, in the form `calendar set` reads.
    Show {
        /// The school: seven-digit LAESTAB, e.g. 9192001.
        #[arg(long)]
        school: String,
    },
}

/// A calendar file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    time_zone: String,
    am: TimesFile,
    pm: TimesFile,
    terms: Vec<TermFile>,
    #[serde(default)]
    closures: Vec<ClosureFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimesFile {
    opens: String,
    closes: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TermFile {
    name: String,
    first_day: String,
    last_day: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosureFile {
    date: String,
    /// AM or PM; absent for the whole day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session: Option<Session>,
    kind: KindFile,
    reason: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindFile {
    Planned,
    Unexpected,
}

impl CalendarFile {
    fn into_proto(self, laestab: &str) -> Calendar {
        let times = |times: TimesFile| RegisterTimes {
            opens: times.opens,
            closes: times.closes,
        };
        Calendar {
            laestab: laestab.to_owned(),
            time_zone: self.time_zone,
            am: Some(times(self.am)),
            pm: Some(times(self.pm)),
            terms: self
                .terms
                .into_iter()
                .map(|term| Term {
                    name: term.name,
                    first_day: term.first_day,
                    last_day: term.last_day,
                })
                .collect(),
            closures: self
                .closures
                .into_iter()
                .map(|closure| Closure {
                    date: closure.date,
                    session: closure
                        .session
                        .map_or(PbSession::Unspecified, PbSession::from)
                        as i32,
                    kind: match closure.kind {
                        KindFile::Planned => ClosureKind::Planned,
                        KindFile::Unexpected => ClosureKind::Unexpected,
                    } as i32,
                    reason: closure.reason,
                })
                .collect(),
        }
    }

    fn from_proto(calendar: Calendar) -> Self {
        let times = |times: Option<RegisterTimes>| {
            let times = times.unwrap_or_default();
            TimesFile {
                opens: times.opens,
                closes: times.closes,
            }
        };
        Self {
            time_zone: calendar.time_zone,
            am: times(calendar.am),
            pm: times(calendar.pm),
            terms: calendar
                .terms
                .into_iter()
                .map(|term| TermFile {
                    name: term.name,
                    first_day: term.first_day,
                    last_day: term.last_day,
                })
                .collect(),
            closures: calendar
                .closures
                .into_iter()
                .map(|closure| ClosureFile {
                    date: closure.date,
                    session: rollcall_api::convert::session_from_proto(closure.session),
                    kind: if closure.kind == ClosureKind::Unexpected as i32 {
                        KindFile::Unexpected
                    } else {
                        KindFile::Planned
                    },
                    reason: closure.reason,
                })
                .collect(),
        }
    }
}

pub(crate) async fn run(
    clients: &Clients,
    command: CalendarCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        CalendarCommand::Set {
            school,
            file,
            by,
            position,
        } => {
            let laestab = rollcall_domain::school::parse_laestab(&school)
                .map_err(|error| anyhow::anyhow!("invalid --school: {error}"))?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed: CalendarFile = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid calendar file", file.display()))?;
            let response = clients
                .registers
                .clone()
                .set_calendar(SetCalendarRequest {
                    calendar: Some(parsed.into_proto(&laestab)),
                    changed_by: by,
                    changed_by_position: position,
                    ..Default::default()
                })
                .await
                .map_err(|status| anyhow::anyhow!("{}: {}", file.display(), status.message()))?
                .into_inner();
            let calendar = response.calendar.unwrap_or_default();
            writeln!(
                out,
                "Calendar of school {laestab} replaced: {}, {}; {} on new planned closures \
                 replaced by #",
                count(calendar.terms.len(), "term", "terms"),
                count(calendar.closures.len(), "closure", "closures"),
                count(response.marks_closed, "mark", "marks")
            )?;
            if response.marks_closed > 0 {
                clients
                    .wait_for_sync(response.feed_cursor, crate::commands::SYNC_TIMEOUT)
                    .await?;
            }
            Ok(())
        }
        CalendarCommand::Show { school } => {
            let laestab = rollcall_domain::school::parse_laestab(&school)
                .map_err(|error| anyhow::anyhow!("invalid --school: {error}"))?;
            let calendar = clients
                .registers
                .clone()
                .get_calendar(GetCalendarRequest { laestab })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner()
                .calendar
                .unwrap_or_default();
            serde_json::to_writer_pretty(&mut *out, &CalendarFile::from_proto(calendar))?;
            writeln!(out)?;
            Ok(())
        }
    }
}
