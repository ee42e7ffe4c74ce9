//! Building the pack's files and the ZIP archive.

use std::io::{Cursor, Write};

use chrono::{Datelike, NaiveDate, Utc};
use rollcall_api::convert::{session_from_proto, source_from_proto};
use rollcall_api::policy::v1::{GetPupilAttendanceResponse, ThresholdStatus};
use rollcall_api::registers::v1::{Mark, Pupil, School};
use rollcall_ctf::{AttendSessions, CtfFile, Header, SchoolIdentity, Totals, YearData};
use rollcall_domain::codes;
use rollcall_domain::session::{academic_year_of, parse_date};
use rollcall_domain::{Figures, MarkSource, Session};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The version of the pack format; a local authority's tools check it before reading a pack.
pub const PACK_FORMAT_VERSION: u32 = 1;

/// The inputs of a pack.
pub(crate) struct PackInput<'a> {
    pub(crate) pack_id: &'a str,
    pub(crate) school: &'a School,
    pub(crate) pupil: &'a Pupil,
    pub(crate) year_group: &'a str,
    pub(crate) attendance: &'a GetPupilAttendanceResponse,
    pub(crate) threshold: &'a ThresholdStatus,
    pub(crate) marks: &'a [Mark],
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

/// Writes the pupil's marks as a Common Transfer File with one pupil. Days with no mark,
/// weekends included, are written as `#`.
fn ctf_extract(input: &PackInput<'_>) -> Result<Vec<u8>, String> {
    let laestab = &input.school.laestab;
    let identity = SchoolIdentity {
        lea: laestab.get(..3).unwrap_or_default().to_owned(),
        estab: laestab.get(3..).unwrap_or_default().to_owned(),
        school_name: Some(input.school.name.clone()),
    };
    let dated: Vec<(NaiveDate, usize, &str)> = input
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
    let figures = Figures::from_codes(input.marks.iter().map(|mark| mark.code.as_str()));
    let year = first.map(|date| academic_year_of(date).to_string());
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
            upn: input.pupil.upn.clone(),
            surname: input.pupil.surname.clone(),
            forename: input.pupil.forename.clone(),
            date_of_birth: parse_date(&input.pupil.date_of_birth).unwrap_or(NaiveDate::MIN),
            sex: input.pupil.sex.clone(),
            year_group: Some(input.year_group.to_owned()),
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

/// Builds the archive: the data files first, then the manifest with their hashes.
pub(crate) fn build(input: &PackInput<'_>) -> Result<BuiltPack, String> {
    let csv = marks_csv(input.marks).map_err(|error| error.to_string())?;
    let ctf = ctf_extract(input)?;
    let files: Vec<(&str, Vec<u8>)> = vec![("attendance.csv", csv), ("attendance-ctf.xml", ctf)];

    let figures = input
        .attendance
        .attendance
        .as_ref()
        .and_then(|a| a.figures)
        .unwrap_or_default();
    let policy = input.attendance.policy.clone().unwrap_or_default();
    let period = input.attendance.period.clone().unwrap_or_default();
    let window = input.threshold.window.clone().unwrap_or_default();
    let laestab = &input.school.laestab;
    let manifest = json!({
        "pack_format_version": PACK_FORMAT_VERSION,
        "pack_id": input.pack_id,
        "created_at": Utc::now().to_rfc3339(),
        "kind": "penalty_notice_warning",
        "school": {
            "laestab": laestab,
            "la_number": laestab.get(..3).unwrap_or_default(),
            "establishment_number": laestab.get(3..).unwrap_or_default(),
            "name": input.school.name,
        },
        "pupil": {
            "upn": input.pupil.upn,
            "forename": input.pupil.forename,
            "surname": input.pupil.surname,
            "date_of_birth": input.pupil.date_of_birth,
            "sex": input.pupil.sex,
            "year_group": input.year_group,
        },
        "policy": {
            "id": policy.id,
            "title": policy.title,
            "rule": input.threshold.rule_id,
            "clause": input.threshold.clause,
            "threshold_sessions": input.threshold.threshold_sessions,
            "window": {"from": window.from_date, "to": window.to_date},
        },
        "figures": {
            "from": period.from_date,
            "as_of": period.to_date,
            "possible_sessions": figures.possible_sessions,
            "attended_sessions": figures.attended_sessions,
            "authorised_absence_sessions": figures.authorised_absence_sessions,
            "unauthorised_absence_sessions": figures.unauthorised_absence_sessions,
            "attendance_percent": figures.attendance_percent,
            "persistent_absence": figures.persistent_absence,
            "severe_absence": figures.severe_absence,
            "unauthorised_sessions_in_window": input.threshold.counted_sessions,
        },
        "threshold_sessions": input.threshold.counted.iter().map(|counted| json!({
            "date": counted.date,
            "session": session_name(counted.session),
            "code": counted.code,
        })).collect::<Vec<_>>(),
        "files": files.iter().map(|(name, bytes)| json!({
            "name": name,
            "sha256": hex::encode(Sha256::digest(bytes)),
            "bytes": bytes.len(),
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_string_pretty(&manifest).map_err(|error| error.to_string())?;

    let mut archive = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip_time());
    let mut add = |name: &str, bytes: &[u8]| -> Result<(), String> {
        archive
            .start_file(name, options)
            .map_err(|error| error.to_string())?;
        archive.write_all(bytes).map_err(|error| error.to_string())
    };
    add("manifest.json", manifest.as_bytes())?;
    for (name, bytes) in &files {
        add(name, bytes)?;
    }
    let zip = archive
        .finish()
        .map_err(|error| error.to_string())?
        .into_inner();
    Ok(BuiltPack { zip, manifest })
}

fn zip_time() -> zip::DateTime {
    let now = Utc::now().naive_utc();
    zip::DateTime::from_date_and_time(
        u16::try_from(now.year()).unwrap_or(1980),
        now.month() as u8,
        now.day() as u8,
        0,
        0,
        0,
    )
    .unwrap_or_default()
}
