//! Building a referral's pack: the data files, the summary PDF and the signed manifest, in
//! format version 1 of `rollcall-pack`.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rollcall_api::convert::{from_timestamp, session_from_proto, source_from_proto};
use rollcall_api::registers::v1::Mark;
use rollcall_ctf::{AttendSessions, CtfFile, Header, SchoolIdentity, Totals, YearData};
use rollcall_documents::Document;
use rollcall_domain::session::{academic_year_of, parse_date};
use rollcall_domain::{Figures, MarkSource, Session, codes};
use rollcall_pack::{
    DateRange, Manifest, Override, PackFile, Parent, Policy, Prerequisite, Pupil, Referral,
    ReferralKind as PackKind, School, Signature, SigningKey, ThresholdSession, write_pack,
};

use crate::facts::Gathered;
use crate::records::{ReferralRow, StoredCheck};

/// The regulations the statutory returns are made under.
const REGISTRATION_REGULATIONS: &str =
    "The School Attendance (Pupil Registration) (England) Regulations 2024 (SI 2024/208)";

/// Returns the condition a statutory return rests on, or `None` for a referral that rests on
/// a threshold of the policy.
fn statutory_condition(kind: &str) -> Option<&'static str> {
    let kind = kind
        .parse::<rollcall_domain::referrals::ReferralKind>()
        .ok()?;
    if kind.is_statutory_return() {
        kind.prerequisites()
            .first()
            .map(|condition| condition.as_str())
    } else {
        None
    }
}

/// The inputs of a pack beyond what was gathered.
pub(crate) struct PackInput<'a> {
    pub(crate) pack_id: &'a str,
    pub(crate) referral: &'a ReferralRow,
    pub(crate) checks: &'a [StoredCheck],
    pub(crate) submitted_at: Option<DateTime<Utc>>,
    /// The senior leader's override: who, their role and the reason.
    pub(crate) override_by: Option<(&'a str, &'a str, &'a str)>,
    pub(crate) gathered: &'a Gathered,
    /// The letters sent, as file names under `letters/` and their PDFs.
    pub(crate) letters: Vec<(String, Vec<u8>)>,
    pub(crate) created_at: DateTime<Utc>,
}

/// A built pack.
pub(crate) struct BuiltPack {
    pub(crate) zip: Vec<u8>,
    pub(crate) manifest: String,
}

fn session_name(value: i32) -> &'static str {
    session_from_proto(value).map_or("", Session::as_str)
}

fn marks_csv(marks: &[Mark]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "date",
        "session",
        "code",
        "meaning",
        "category",
        "minutes_late",
        "source",
        "recorded_by",
    ])?;
    for mark in marks {
        let info = codes::lookup(&mark.code);
        writer.write_record([
            mark.date.as_str(),
            session_name(mark.session),
            mark.code.as_str(),
            info.map_or("", |info| info.meaning),
            info.map_or("", |info| info.category.as_str()),
            &mark.minutes_late.to_string(),
            source_from_proto(mark.source).map_or("", MarkSource::as_str),
            mark.recorded_by.as_str(),
        ])?;
    }
    writer
        .into_inner()
        .map_err(|error| error.into_error().into())
}

/// Returns the chronology's name for the kind of a timeline entry.
fn chronology_entry(kind: &str) -> &'static str {
    match kind {
        "opened" | "escalated" | "de-escalated" | "closed" | "reopened" | "review" => {
            "stage_change"
        }
        "meeting" | "structured_meeting" => "meeting",
        "letter" | "letter_written" | "letter_not_written" => "letter",
        "email" | "sms" | "text message" => "message",
        "plan_created" => "plan",
        "plan_reviewed" => "plan_review",
        "reintegration" | "check_in" => "reintegration",
        "call" | "home_visit" | "attendance_contract" | "assessment" => "action",
        kind if kind.starts_with("letter") => "letter",
        _ => "note",
    }
}

fn chronology_csv(gathered: &Gathered) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "occurred_on",
        "recorded_at",
        "entry",
        "stage",
        "by_role",
        "summary",
    ])?;
    // The cases service lists the timeline by the date things happened, then by when they
    // were recorded; the chronology keeps that order.
    for entry in &gathered.chronology {
        let at = entry
            .at
            .as_ref()
            .and_then(from_timestamp)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        // The person's name stays out of the pack; the role in brackets, where recorded, is
        // what the local authority needs. Entries rollcall made itself are marked as such.
        let role = match entry.by.rsplit_once('(') {
            Some((_, role)) => role.trim_end_matches(')').trim().to_owned(),
            None if entry.by == "rollcall" || entry.by.is_empty() => "rollcall".to_owned(),
            None => String::new(),
        };
        let summary = if entry.reason.is_empty() {
            entry.detail.clone()
        } else {
            format!("{} ({})", entry.detail, entry.reason)
        };
        writer.write_record([
            entry.on_date.as_str(),
            at.as_str(),
            chronology_entry(&entry.kind),
            entry.stage.as_str(),
            role.as_str(),
            summary.as_str(),
        ])?;
    }
    writer
        .into_inner()
        .map_err(|error| error.into_error().into())
}

/// Writes the pupil's marks as a Common Transfer File with one pupil. Days with no mark,
/// weekends included, are written as `#`.
fn ctf_extract(gathered: &Gathered) -> Result<Vec<u8>, String> {
    let laestab = &gathered.school.laestab;
    let identity = SchoolIdentity {
        lea: laestab.get(..3).unwrap_or_default().to_owned(),
        estab: laestab.get(3..).unwrap_or_default().to_owned(),
        school_name: Some(gathered.school.name.clone()),
    };
    let dated: Vec<(NaiveDate, usize, &str)> = gathered
        .marks
        .iter()
        .filter_map(|mark| {
            let date = parse_date(&mark.date).ok()?;
            let half = usize::from(session_from_proto(mark.session)? == Session::Pm);
            Some((date, half, mark.code.as_str()))
        })
        .collect();
    let first = dated.iter().map(|(date, _, _)| *date).min();
    let last = dated.iter().map(|(date, _, _)| *date).max();
    let sessions = match (first, last) {
        (Some(first), Some(last)) => {
            let days = (last - first).num_days() as usize + 1;
            let mut marks = vec!["#".to_owned(); days * 2];
            for (date, half, code) in &dated {
                let index = (*date - first).num_days() as usize * 2 + half;
                marks[index] = (*code).to_owned();
            }
            Some(AttendSessions {
                start_date: first,
                marks,
            })
        }
        _ => None,
    };
    let figures = Figures::from_codes(gathered.marks.iter().map(|mark| mark.code.as_str()));
    let year = first.map(|date| academic_year_of(date).to_string());
    let pupil = &gathered.pupil;
    let file = CtfFile {
        header: Header {
            ctf_version: "25.0".to_owned(),
            date_time: Some(Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string()),
            document_name: Some("Common Transfer File".to_owned()),
            source_school: identity.clone(),
            academic_year: year.clone(),
            dest_school: None,
        },
        pupils: vec![rollcall_ctf::Pupil {
            upn: pupil.upn.clone(),
            surname: pupil.surname.clone(),
            forename: pupil.forename.clone(),
            date_of_birth: parse_date(&pupil.date_of_birth).unwrap_or(NaiveDate::MIN),
            sex: pupil.sex.clone(),
            year_group: Some(gathered.year_group.clone()),
            enrol_status: None,
            attendance: vec![YearData {
                year,
                school: identity,
                totals: Totals {
                    possible: Some(figures.possible()),
                    authorised: Some(figures.authorised_absence),
                    attended: Some(figures.attended()),
                    unauthorised: Some(figures.unauthorised_absence),
                },
                sessions,
            }],
        }],
    };
    rollcall_ctf::write(&file).map_err(|error| error.to_string())
}

/// Returns attendance week by week: the week's Monday and the percentage of possible sessions
/// attended so far in the period, in date order.
fn weekly_attendance(marks: &[Mark]) -> Vec<(NaiveDate, f64)> {
    let mut weeks: BTreeMap<NaiveDate, Vec<&str>> = BTreeMap::new();
    for mark in marks {
        if let Ok(date) = parse_date(&mark.date) {
            let monday = date - chrono::Days::new(u64::from(date.weekday().num_days_from_monday()));
            weeks.entry(monday).or_default().push(mark.code.as_str());
        }
    }
    let mut so_far: Vec<&str> = Vec::new();
    weeks
        .into_iter()
        .filter_map(|(monday, codes)| {
            so_far.extend(codes);
            Figures::from_codes(so_far.iter().copied())
                .attendance_percent()
                .map(|percent| (monday, percent))
        })
        .collect()
}

fn summary_pdf(input: &PackInput<'_>) -> Vec<u8> {
    let gathered = input.gathered;
    let referral = input.referral;
    let figures = gathered
        .attendance
        .attendance
        .as_ref()
        .and_then(|record| record.figures)
        .unwrap_or_default();
    let period = gathered.attendance.period.clone().unwrap_or_default();
    let mut document = Document::new(format!(
        "Referral {} for pupil {}",
        referral.reference, gathered.pupil.upn
    ));
    document.created_at(input.created_at);
    let heading = if input.submitted_at.is_some() {
        format!("Referral {}", referral.reference)
    } else {
        format!("DRAFT referral {}, not submitted", referral.reference)
    };
    document
        .heading(heading)
        .paragraph(format!(
            "{} from {} ({}) for pupil {} {} (UPN {}), year {}.",
            referral.kind.replace('_', " "),
            gathered.school.name,
            gathered.school.laestab,
            gathered.pupil.forename,
            gathered.pupil.surname,
            gathered.pupil.upn,
            gathered.year_group
        ))
        .subheading(format!(
            "Attendance from {} to {}",
            period.from_date, period.to_date
        ))
        .table(
            ["Figure", "Sessions"],
            [
                vec![
                    "Possible sessions".to_owned(),
                    figures.possible_sessions.to_string(),
                ],
                vec!["Attended".to_owned(), figures.attended_sessions.to_string()],
                vec![
                    "Authorised absence".to_owned(),
                    figures.authorised_absence_sessions.to_string(),
                ],
                vec![
                    "Unauthorised absence".to_owned(),
                    figures.unauthorised_absence_sessions.to_string(),
                ],
                vec![
                    "Attendance".to_owned(),
                    figures
                        .attendance_percent
                        .map_or("n/a".to_owned(), |percent| format!("{percent:.1}%")),
                ],
            ],
        );
    let weekly = weekly_attendance(&gathered.marks);
    if !weekly.is_empty() {
        document.line_chart(
            "Attendance so far, week by week",
            weekly
                .iter()
                .map(|(monday, percent)| (monday.format("%d %b").to_string(), *percent)),
            "%",
        );
    }
    document.subheading("Prerequisites").table(
        ["Prerequisite", "Met", "Evidence"],
        input.checks.iter().map(|check| {
            vec![
                check.name.replace('_', " "),
                match (check.met, check.overridden) {
                    (true, _) => "yes".to_owned(),
                    (false, true) => "overridden".to_owned(),
                    (false, false) => "no".to_owned(),
                },
                check.evidence.clone(),
            ]
        }),
    );
    if let Some((_, role, reason)) = input.override_by {
        document.paragraph(format!(
            "Missing prerequisites were overridden by the {} for this reason: {reason}",
            role.replace('_', " ")
        ));
    }
    document.to_pdf()
}

fn pack_kind(kind: &str) -> Result<PackKind, String> {
    serde_json::from_value(serde_json::Value::String(kind.to_owned()))
        .map_err(|_| format!("unknown referral kind {kind:?}"))
}

fn parents(gathered: &Gathered) -> Vec<Parent> {
    gathered
        .contacts
        .iter()
        .filter(|contact| contact.parental_responsibility)
        .map(|contact| Parent {
            name: contact.name.clone(),
            relationship: contact.relationship.clone(),
            parental_responsibility: true,
            address: contact.address_lines.clone(),
            postcode: contact.postcode.clone(),
            email: Some(contact.email.clone()).filter(|email| !email.is_empty()),
            phone: Some(contact.mobile.clone()).filter(|phone| !phone.is_empty()),
        })
        .collect()
}

fn date_or_none(text: &str) -> Option<NaiveDate> {
    parse_date(text).ok()
}

/// Builds and signs the pack.
pub(crate) fn build(input: &PackInput<'_>, key: &SigningKey) -> Result<BuiltPack, String> {
    let gathered = input.gathered;
    let referral = input.referral;
    let kind = pack_kind(&referral.kind)?;
    let mut files = vec![
        PackFile {
            name: "attendance.csv".to_owned(),
            media_type: "text/csv".to_owned(),
            bytes: marks_csv(&gathered.marks).map_err(|error| error.to_string())?,
        },
        PackFile {
            name: "attendance-ctf.xml".to_owned(),
            media_type: "application/xml".to_owned(),
            bytes: ctf_extract(gathered)?,
        },
        PackFile {
            name: "chronology.csv".to_owned(),
            media_type: "text/csv".to_owned(),
            bytes: chronology_csv(gathered).map_err(|error| error.to_string())?,
        },
    ];
    for (name, pdf) in &input.letters {
        files.push(PackFile {
            name: format!("letters/{name}"),
            media_type: "application/pdf".to_owned(),
            bytes: pdf.clone(),
        });
    }
    files.push(PackFile {
        name: "summary.pdf".to_owned(),
        media_type: "application/pdf".to_owned(),
        bytes: summary_pdf(input),
    });

    let figures = gathered
        .attendance
        .attendance
        .as_ref()
        .and_then(|record| record.figures)
        .unwrap_or_default();
    let policy = gathered.attendance.policy.clone().unwrap_or_default();
    let period = gathered.attendance.period.clone().unwrap_or_default();
    let threshold = &gathered.threshold;
    let window = threshold.window.clone().unwrap_or_default();
    // A statutory return rests on the registration regulations, not on a threshold of the
    // trust's policy, so its pack names the return's own condition and lists no sessions.
    let statutory = statutory_condition(&referral.kind);
    let laestab = &gathered.school.laestab;
    let unsigned = |value: i32| u32::try_from(value).unwrap_or(0);
    let as_of = date_or_none(&period.to_date).unwrap_or(referral.as_of);
    let manifest = Manifest {
        format: String::new(),
        pack_format_version: 0,
        pack_id: input.pack_id.to_owned(),
        created_at: input.created_at,
        generator: format!("rollcall {}", env!("CARGO_PKG_VERSION")),
        referral: Referral {
            id: referral.id.clone(),
            kind,
            reference: referral.reference.clone(),
            created_at: referral.created_at,
            submitted_at: input.submitted_at,
            override_: input.override_by.map(|(by, role, reason)| Override {
                by: by.to_owned(),
                role: role.to_owned(),
                reason: reason.to_owned(),
                at: input.submitted_at.unwrap_or(input.created_at),
            }),
        },
        school: School {
            laestab: laestab.clone(),
            la_number: laestab.get(..3).unwrap_or_default().to_owned(),
            establishment_number: laestab.get(3..).unwrap_or_default().to_owned(),
            name: gathered.school.name.clone(),
        },
        pupil: Pupil {
            upn: gathered.pupil.upn.clone(),
            forename: gathered.pupil.forename.clone(),
            surname: gathered.pupil.surname.clone(),
            date_of_birth: date_or_none(&gathered.pupil.date_of_birth),
            sex: gathered.pupil.sex.clone(),
            year_group: gathered.year_group.clone(),
        },
        parents: if kind.names_parents() {
            parents(gathered)
        } else {
            Vec::new()
        },
        policy: match statutory {
            Some(rule) => Policy {
                id: policy.id.clone(),
                title: policy.title.clone(),
                clause: REGISTRATION_REGULATIONS.to_owned(),
                clauses: vec![REGISTRATION_REGULATIONS.to_owned()],
                rule: rule.to_owned(),
                threshold_sessions: 0,
                window: None,
            },
            None => Policy {
                id: policy.id.clone(),
                title: policy.title.clone(),
                clause: threshold.clause.clone(),
                clauses: vec![threshold.clause.clone()],
                rule: threshold.rule_id.clone(),
                threshold_sessions: unsigned(threshold.threshold_sessions),
                window: match (
                    date_or_none(&window.from_date),
                    date_or_none(&window.to_date),
                ) {
                    (Some(from), Some(to)) => Some(DateRange { from, to }),
                    _ => None,
                },
            },
        },
        figures: rollcall_pack::Figures {
            from: date_or_none(&period.from_date).unwrap_or(as_of),
            as_of,
            possible_sessions: unsigned(figures.possible_sessions),
            attended_sessions: unsigned(figures.attended_sessions),
            authorised_absence_sessions: unsigned(figures.authorised_absence_sessions),
            unauthorised_absence_sessions: unsigned(figures.unauthorised_absence_sessions),
            unauthorised_sessions_in_window: if statutory.is_some() {
                0
            } else {
                unsigned(threshold.counted_sessions)
            },
            attendance_percent: figures.attendance_percent.unwrap_or(0.0),
            persistent_absence: figures.persistent_absence,
            severe_absence: figures.severe_absence,
        },
        threshold_sessions: threshold
            .counted
            .iter()
            .filter(|_| statutory.is_none())
            .filter_map(|counted| {
                Some(ThresholdSession {
                    date: date_or_none(&counted.date)?,
                    session: match session_from_proto(counted.session)? {
                        Session::Am => rollcall_pack::Session::Am,
                        Session::Pm => rollcall_pack::Session::Pm,
                    },
                    code: counted.code.clone(),
                })
            })
            .collect(),
        prerequisites: input
            .checks
            .iter()
            .map(|check| Prerequisite {
                name: check.name.clone(),
                met: check.met,
                evidence: check.evidence.clone(),
                overridden: check.overridden,
            })
            .collect(),
        files: Vec::new(),
        signature: Signature::default(),
    };
    let zip = write_pack(&manifest, &files, key).map_err(|error| error.to_string())?;
    let manifest = manifest_text(&zip)?;
    Ok(BuiltPack { zip, manifest })
}

/// Returns the text of a pack's `manifest.json`, as stored.
pub(crate) fn manifest_text(zip: &[u8]) -> Result<String, String> {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(|error| error.to_string())?;
    let mut entry = archive
        .by_name("manifest.json")
        .map_err(|error| error.to_string())?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text).map_err(|error| error.to_string())?;
    Ok(text)
}
