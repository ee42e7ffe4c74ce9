//! Column profiles: which headings a CSV export has, and how to read its dates and sessions.
//!
//! A profile is TOML. The built-in profiles are files in `crates/csv/profiles`, and a school
//! whose export differs writes its own in the same form (docs/csv-import.md).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::values::{DateFormat, SessionSpelling};

/// The built-in profiles: name and TOML text.
pub const BUILT_IN: [(&str, &str); 4] = [
    ("rollcall", include_str!("../profiles/rollcall.toml")),
    ("sims", include_str!("../profiles/sims.toml")),
    ("arbor", include_str!("../profiles/arbor.toml")),
    ("bromcom", include_str!("../profiles/bromcom.toml")),
];

/// A profile as written in TOML.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ProfileText {
    date_format: String,
    #[serde(default)]
    sessions: SessionsText,
    pupils: Option<PupilHeadings>,
    marks: Option<MarksText>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SessionsText {
    am: Vec<String>,
    pm: Vec<String>,
}

impl Default for SessionsText {
    fn default() -> Self {
        Self {
            am: vec!["AM".to_owned()],
            pm: vec!["PM".to_owned()],
        }
    }
}

/// The headings of a pupils export. The MIS sync API needs every field but the leaving date
/// and class, so those two alone are optional in a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PupilHeadings {
    pub mis_id: String,
    pub upn: String,
    pub forename: String,
    pub surname: String,
    pub date_of_birth: String,
    pub admission_date: String,
    pub sex: String,
    pub year_group: String,
    pub leaving_date: Option<String>,
    pub class: Option<String>,
}

impl PupilHeadings {
    /// Returns each field with its heading, required fields first.
    pub fn fields(&self) -> Vec<(&'static str, Option<&str>, bool)> {
        vec![
            ("mis_id", Some(self.mis_id.as_str()), true),
            ("upn", Some(self.upn.as_str()), true),
            ("forename", Some(self.forename.as_str()), true),
            ("surname", Some(self.surname.as_str()), true),
            ("date_of_birth", Some(self.date_of_birth.as_str()), true),
            ("admission_date", Some(self.admission_date.as_str()), true),
            ("sex", Some(self.sex.as_str()), true),
            ("year_group", Some(self.year_group.as_str()), true),
            ("leaving_date", self.leaving_date.as_deref(), false),
            ("class", self.class.as_deref(), false),
        ]
    }
}

/// The layout of the sessions in a marks export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// One row per pupil and session.
    #[default]
    Long,
    /// One row per pupil and one column per session.
    Wide,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MarksText {
    #[serde(default)]
    shape: Shape,
    mis_id: Option<String>,
    upn: Option<String>,
    date: Option<String>,
    session: Option<String>,
    code: Option<String>,
    minutes_late: Option<String>,
    comment: Option<String>,
    session_column: Option<String>,
}

/// The headings of a marks export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkHeadings {
    /// The pupil's MIS id; a file needs this or `upn`.
    pub mis_id: Option<String>,
    /// The pupil's UPN.
    pub upn: Option<String>,
    /// The columns that carry the sessions.
    pub sessions: SessionColumns,
}

/// The columns of a marks export that carry its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionColumns {
    /// One row per pupil and session, with these headings.
    Long {
        date: String,
        session: String,
        code: String,
        minutes_late: Option<String>,
        comment: Option<String>,
    },
    /// One column per session, each with a heading that matches the pattern.
    Wide(SessionHeading),
}

/// The heading pattern of a session column in the wide shape, such as `{date} {session}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeading {
    pub pattern: String,
    prefix: String,
    separator: String,
    suffix: String,
    date_first: bool,
}

/// The kind of a heading under a wide profile's session heading pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadingMatch {
    /// A session column.
    Session(chrono::NaiveDate, rollcall_domain::Session),
    /// Shaped like a session column, but its date or session cannot be read.
    Malformed(String),
    /// Some other column.
    Other,
}

impl SessionHeading {
    fn parse(pattern: &str) -> Result<Self, String> {
        let invalid = |problem: &str| {
            format!(
                "invalid session_column {pattern:?}: {problem}; write it with {{date}} and \
                 {{session}} once each and text between them, such as \"{{date}} {{session}}\""
            )
        };
        let (Some(date_at), Some(session_at)) = (pattern.find("{date}"), pattern.find("{session}"))
        else {
            return Err(invalid("it lacks {date} or {session}"));
        };
        if pattern.matches("{date}").count() != 1 || pattern.matches("{session}").count() != 1 {
            return Err(invalid("a placeholder appears twice"));
        }
        let date_first = date_at < session_at;
        let (first_at, first_len, second_at, second_len) = if date_first {
            (date_at, "{date}".len(), session_at, "{session}".len())
        } else {
            (session_at, "{session}".len(), date_at, "{date}".len())
        };
        let separator = &pattern[first_at + first_len..second_at];
        if separator.is_empty() {
            return Err(invalid("there is no text between the placeholders"));
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            prefix: pattern[..first_at].to_owned(),
            separator: separator.to_owned(),
            suffix: pattern[second_at + second_len..].to_owned(),
            date_first,
        })
    }

    /// Classifies a heading: a session column, a malformed one, or another column. Literal
    /// text matches without regard to ASCII letter case.
    pub fn classify(
        &self,
        heading: &str,
        dates: &DateFormat,
        sessions: &SessionSpelling,
    ) -> HeadingMatch {
        let heading = heading.trim();
        let lower = heading.to_ascii_lowercase();
        let (prefix, suffix) = (
            self.prefix.to_ascii_lowercase(),
            self.suffix.to_ascii_lowercase(),
        );
        if !lower.starts_with(&prefix)
            || !lower.ends_with(&suffix)
            || lower.len() < prefix.len() + suffix.len()
        {
            return HeadingMatch::Other;
        }
        let inner = &heading[prefix.len()..heading.len() - suffix.len()];
        let separator = self.separator.to_ascii_lowercase();
        let inner_lower = inner.to_ascii_lowercase();
        let mut shaped = false;
        for (at, _) in inner_lower.match_indices(&separator) {
            let (first, second) = (&inner[..at], &inner[at + separator.len()..]);
            let (date_text, session_text) = if self.date_first {
                (first, second)
            } else {
                (second, first)
            };
            let date = dates.parse_date(date_text);
            let session = sessions.read(session_text);
            match (date, session) {
                (Ok(date), Some(session)) => return HeadingMatch::Session(date, session),
                (Ok(_), None) | (Err(_), Some(_)) => shaped = true,
                (Err(_), None) => {}
            }
        }
        if shaped {
            HeadingMatch::Malformed(format!(
                "heading {heading:?} looks like a session column, but its date is not {dates} \
                 or its session is not {}",
                sessions.describe()
            ))
        } else {
            HeadingMatch::Other
        }
    }
}

/// A checked profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The built-in name, or the path of the profile file.
    pub name: String,
    pub dates: DateFormat,
    pub sessions: SessionSpelling,
    pub pupils: Option<PupilHeadings>,
    pub marks: Option<MarkHeadings>,
    /// The first 16 hex digits of the SHA-256 of the profile's settings, without comments or
    /// layout, so that editing a comment keeps the idempotency keys of earlier imports.
    pub fingerprint: String,
}

impl Profile {
    /// Loads a built-in profile by name, or a profile file by path. A value that names no
    /// built-in profile is taken as a path.
    pub fn load(value: &str) -> anyhow::Result<Self> {
        if let Some((name, text)) = BUILT_IN.iter().find(|(name, _)| *name == value) {
            return Self::parse(name, text).with_context(|| format!("built-in profile {name}"));
        }
        let path = Path::new(value);
        if !path.exists() {
            anyhow::bail!(
                "unknown profile {value:?}: choose {}, or give the path of a profile file (TOML)",
                built_in_names()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read profile file {}", path.display()))?;
        Self::parse(&path.display().to_string(), &text)
            .with_context(|| format!("invalid profile file {}", path.display()))
    }

    /// Parses and checks a profile's TOML text.
    pub fn parse(name: &str, text: &str) -> anyhow::Result<Self> {
        let parsed: ProfileText = toml::from_str(text)?;
        let dates = DateFormat::parse(&parsed.date_format).map_err(anyhow::Error::msg)?;
        let sessions = SessionSpelling::new(&parsed.sessions.am, &parsed.sessions.pm)
            .map_err(anyhow::Error::msg)?;
        if parsed.pupils.is_none() && parsed.marks.is_none() {
            anyhow::bail!("the profile has neither [pupils] nor [marks]; give one or both");
        }
        if let Some(pupils) = &parsed.pupils {
            check_headings(
                "[pupils]",
                pupils.fields().into_iter().map(|(f, h, _)| (f, h)),
            )?;
        }
        let marks = parsed.marks.as_ref().map(read_marks).transpose()?;

        let canonical = serde_json::to_vec(&parsed)?;
        let fingerprint = hex::encode(&Sha256::digest(&canonical)[..8]);
        Ok(Self {
            name: name.to_owned(),
            dates,
            sessions,
            pupils: parsed.pupils,
            marks,
            fingerprint,
        })
    }
}

/// Lists the built-in profile names for messages: `rollcall, sims, arbor or bromcom`.
pub fn built_in_names() -> String {
    let names: Vec<&str> = BUILT_IN.iter().map(|(name, _)| *name).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

fn read_marks(text: &MarksText) -> anyhow::Result<MarkHeadings> {
    if text.mis_id.is_none() && text.upn.is_none() {
        anyhow::bail!("[marks] names neither mis_id nor upn; give the heading of one or both");
    }
    let sessions = match text.shape {
        Shape::Long => {
            if text.session_column.is_some() {
                anyhow::bail!(
                    "[marks] has session_column, which only the wide shape uses; remove it or \
                     set shape = \"wide\""
                );
            }
            let required = |field: &str, value: &Option<String>| {
                value.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "[marks] has no {field}; the long shape needs date, session and code"
                    )
                })
            };
            SessionColumns::Long {
                date: required("date", &text.date)?,
                session: required("session", &text.session)?,
                code: required("code", &text.code)?,
                minutes_late: text.minutes_late.clone(),
                comment: text.comment.clone(),
            }
        }
        Shape::Wide => {
            let long_only = [
                ("date", &text.date),
                ("session", &text.session),
                ("code", &text.code),
                ("minutes_late", &text.minutes_late),
                ("comment", &text.comment),
            ];
            if let Some((field, _)) = long_only.iter().find(|(_, value)| value.is_some()) {
                anyhow::bail!(
                    "[marks] has {field}, which the wide shape does not use: its sessions are \
                     columns named by session_column"
                );
            }
            let pattern = text.session_column.as_deref().ok_or_else(|| {
                anyhow::anyhow!(
                    "[marks] has shape = \"wide\" but no session_column, such as \"{{date}} {{session}}\""
                )
            })?;
            SessionColumns::Wide(SessionHeading::parse(pattern).map_err(anyhow::Error::msg)?)
        }
    };
    let marks = MarkHeadings {
        mis_id: text.mis_id.clone(),
        upn: text.upn.clone(),
        sessions,
    };
    check_headings("[marks]", marks.fields().into_iter())?;
    Ok(marks)
}

impl MarkHeadings {
    /// Returns each field with its heading. The wide shape has only the pupil's fields.
    pub fn fields(&self) -> Vec<(&'static str, Option<&str>)> {
        let mut fields = vec![
            ("mis_id", self.mis_id.as_deref()),
            ("upn", self.upn.as_deref()),
        ];
        if let SessionColumns::Long {
            date,
            session,
            code,
            minutes_late,
            comment,
        } = &self.sessions
        {
            fields.extend([
                ("date", Some(date.as_str())),
                ("session", Some(session.as_str())),
                ("code", Some(code.as_str())),
                ("minutes_late", minutes_late.as_deref()),
                ("comment", comment.as_deref()),
            ]);
        }
        fields
    }
}

/// Checks that no heading is blank and that no two fields share a heading.
fn check_headings<'a>(
    section: &str,
    fields: impl Iterator<Item = (&'static str, Option<&'a str>)>,
) -> anyhow::Result<()> {
    let mut seen: Vec<(&str, String)> = Vec::new();
    for (field, heading) in fields {
        let Some(heading) = heading else { continue };
        let key = normalise_heading(heading);
        if key.is_empty() {
            anyhow::bail!(
                "{section} gives {field} a blank heading; name the column or leave the key out"
            );
        }
        if let Some((other, _)) = seen.iter().find(|(_, seen_key)| *seen_key == key) {
            anyhow::bail!(
                "{section} gives {other} and {field} the same heading {heading:?}; each field needs its own column"
            );
        }
        seen.push((field, key));
    }
    Ok(())
}

/// Returns a heading in the form headings are compared: without a byte order mark or
/// surrounding spaces, in lower case.
pub fn normalise_heading(heading: &str) -> String {
    heading.trim_start_matches('\u{feff}').trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use rollcall_domain::Session;

    use super::*;

    const MINIMAL: &str = r#"
date_format = "DD/MM/YYYY"

[marks]
upn = "UPN"
date = "Date"
session = "Session"
code = "Mark"
"#;

    #[test]
    fn built_in_profiles_parse() {
        for (name, _) in BUILT_IN {
            let profile = Profile::load(name).expect("built-in profile");
            assert_eq!(profile.name, name);
            assert!(profile.pupils.is_some(), "{name} has pupils");
            assert!(profile.marks.is_some(), "{name} has marks");
            assert_eq!(profile.fingerprint.len(), 16);
        }
    }

    #[test]
    fn built_in_fingerprints_differ() {
        let fingerprints: std::collections::BTreeSet<String> = BUILT_IN
            .iter()
            .map(|(name, _)| Profile::load(name).expect("profile").fingerprint)
            .collect();
        assert_eq!(fingerprints.len(), BUILT_IN.len());
    }

    #[test]
    fn sims_profile_is_wide_and_day_first() {
        let profile = Profile::load("sims").expect("profile");
        assert_eq!(profile.dates.to_string(), "DD/MM/YYYY");
        let marks = profile.marks.expect("marks");
        assert!(matches!(marks.sessions, SessionColumns::Wide(_)));
    }

    #[test]
    fn minimal_profile_defaults_sessions() {
        let profile = Profile::parse("school.toml", MINIMAL).expect("profile");
        assert_eq!(profile.sessions.read("pm"), Some(Session::Pm));
        assert!(profile.pupils.is_none());
        let marks = profile.marks.expect("marks");
        assert_eq!(marks.mis_id, None);
        assert_eq!(marks.upn.as_deref(), Some("UPN"));
    }

    #[test]
    fn comments_keep_the_fingerprint() {
        let plain = Profile::parse("a", MINIMAL).expect("profile");
        let commented =
            Profile::parse("b", &format!("# Our export\n{MINIMAL}\n# end\n")).expect("profile");
        assert_eq!(plain.fingerprint, commented.fingerprint);
        let changed =
            Profile::parse("c", &MINIMAL.replace("\"Mark\"", "\"Code\"")).expect("profile");
        assert_ne!(plain.fingerprint, changed.fingerprint);
    }

    fn error_of(text: &str) -> String {
        format!(
            "{:#}",
            Profile::parse("test", text).expect_err("invalid profile")
        )
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error = error_of(&MINIMAL.replace("code = ", "mark_code = "));
        assert!(error.contains("mark_code"), "{error}");
    }

    #[test]
    fn invalid_profiles_name_the_problem() {
        let cases = [
            (
                MINIMAL.replace("DD/MM/YYYY", "DD/MM/YY"),
                "invalid date format",
            ),
            (
                MINIMAL.replace("upn = \"UPN\"\n", ""),
                "neither mis_id nor upn",
            ),
            (MINIMAL.replace("code = \"Mark\"\n", ""), "has no code"),
            (MINIMAL.replace("\"Mark\"", "\"Date\""), "same heading"),
            (MINIMAL.replace("\"Mark\"", "\" \""), "blank heading"),
            (
                "date_format = \"DD/MM/YYYY\"\n".to_owned(),
                "neither [pupils] nor [marks]",
            ),
            (
                format!("{MINIMAL}session_column = \"{{date}} {{session}}\"\n"),
                "only the wide shape",
            ),
            (
                MINIMAL.replace(
                    "[marks]",
                    "[sessions]\nam = [\"AM\"]\npm = [\"am\"]\n\n[marks]",
                ),
                "both am and pm",
            ),
        ];
        for (text, expected) in cases {
            let error = error_of(&text);
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn wide_profiles_need_a_session_column() {
        let wide = "date_format = \"DD/MM/YYYY\"\n[marks]\nshape = \"wide\"\nupn = \"UPN\"\n";
        assert!(error_of(wide).contains("no session_column"));
        let with_code =
            format!("{wide}code = \"Mark\"\nsession_column = \"{{date}} {{session}}\"\n");
        assert!(error_of(&with_code).contains("does not use"));
        let no_gap = format!("{wide}session_column = \"{{date}}{{session}}\"\n");
        assert!(error_of(&no_gap).contains("no text between"));
    }

    #[test]
    fn unknown_profile_names_list_the_built_ins() {
        let error = format!(
            "{:#}",
            Profile::load("capita-export").expect_err("unknown profile")
        );
        assert!(
            error.contains("rollcall, sims, arbor or bromcom"),
            "{error}"
        );
    }

    #[test]
    fn profile_files_load_by_path() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let path = folder.path().join("ours.toml");
        std::fs::write(&path, MINIMAL).expect("profile written");
        let profile = Profile::load(&path.display().to_string()).expect("profile");
        assert_eq!(profile.name, path.display().to_string());

        std::fs::write(&path, "date_format = 3\n").expect("profile written");
        let error = format!(
            "{:#}",
            Profile::load(&path.display().to_string()).expect_err("invalid")
        );
        assert!(error.contains("invalid profile file"), "{error}");
    }

    #[test]
    fn session_headings_classify_columns() {
        let profile = Profile::load("sims").expect("profile");
        let SessionColumns::Wide(heading) = profile.marks.expect("marks").sessions else {
            panic!("sims marks are wide");
        };
        let classify = |text: &str| heading.classify(text, &profile.dates, &profile.sessions);
        let day = NaiveDate::from_ymd_opt(2025, 9, 8).expect("date");
        assert_eq!(
            classify("08/09/2025 AM"),
            HeadingMatch::Session(day, Session::Am)
        );
        assert_eq!(
            classify(" 08/09/2025 pm "),
            HeadingMatch::Session(day, Session::Pm)
        );
        assert_eq!(classify("Adno"), HeadingMatch::Other);
        assert_eq!(classify("Admission Date"), HeadingMatch::Other);
        assert!(matches!(
            classify("31/02/2025 AM"),
            HeadingMatch::Malformed(_)
        ));
        assert!(matches!(
            classify("08/09/2025 Lunch"),
            HeadingMatch::Malformed(_)
        ));
    }

    #[test]
    fn session_headings_may_put_the_session_first() {
        let heading = SessionHeading::parse("Mark ({session}, {date})").expect("pattern");
        let dates = DateFormat::parse("YYYY-MM-DD").expect("format");
        let sessions = SessionSpelling::new(&["AM".into()], &["PM".into()]).expect("spelling");
        let day = NaiveDate::from_ymd_opt(2025, 9, 8).expect("date");
        assert_eq!(
            heading.classify("mark (PM, 2025-09-08)", &dates, &sessions),
            HeadingMatch::Session(day, Session::Pm)
        );
        assert_eq!(
            heading.classify("Mark", &dates, &sessions),
            HeadingMatch::Other
        );
    }

    #[test]
    fn headings_compare_without_case_or_byte_order_mark() {
        assert_eq!(
            normalise_heading("\u{feff} Legal Surname "),
            "legal surname"
        );
    }
}
