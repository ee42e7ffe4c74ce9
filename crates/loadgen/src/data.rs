//! Benchmark data: pupils and session marks from the synthetic trust generator, held compactly
//! and turned into MIS sync requests batch by batch.

use chrono::NaiveDate;
use rollcall_api::mis_adapter::v1::{SyncMark, SyncMarksRequest, SyncPupil, SyncPupilsRequest};
use rollcall_api::types::v1::{Phase as ProtoPhase, Session as ProtoSession};
use rollcall_synthetic::{DateRange, Phase, SchoolSpec, Term, TrustSpec};

/// Local authority number of the invented schools (Hertfordshire, as in the demo).
const LA_CODE: u16 = 919;

/// First establishment number; the schools of a data set are numbered on from it.
const FIRST_ESTAB: u16 = 5000;

/// Seed of the synthetic generator, fixed so that every run sends the same rows.
const SEED: u64 = 2025;

/// One pupil as the MIS sends them.
#[derive(Debug, Clone)]
pub(crate) struct Pupil {
    pub(crate) mis_id: String,
    pub(crate) upn: String,
    pub(crate) forename: String,
    pub(crate) surname: String,
    pub(crate) date_of_birth: NaiveDate,
    pub(crate) sex: String,
    pub(crate) admission_date: NaiveDate,
    pub(crate) year_group: String,
}

/// One session mark, with its pupil as an index into the school's pupils.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    pub(crate) pupil: u32,
    pub(crate) date: NaiveDate,
    pub(crate) afternoon: bool,
    pub(crate) code: &'static str,
}

/// One school's pupils and marks, the marks ordered by session and then pupil, as registers are
/// taken.
#[derive(Debug, Clone)]
pub(crate) struct School {
    pub(crate) laestab: String,
    pub(crate) name: String,
    pub(crate) phase: Phase,
    pub(crate) pupils: Vec<Pupil>,
    pub(crate) marks: Vec<Mark>,
}

/// The school year the data covers: 3 September 2025 to 14 July 2026 with the usual holidays,
/// 190 school days or 380 sessions.
fn school_year() -> Term {
    let date = |year, month, day| NaiveDate::from_ymd_opt(year, month, day).expect("valid date");
    let range = |first, last| DateRange { first, last };
    Term {
        academic_year: 2025,
        first_day: date(2025, 9, 3),
        last_day: date(2026, 7, 14),
        breaks: vec![
            range(date(2025, 10, 27), date(2025, 10, 31)),
            range(date(2025, 12, 22), date(2026, 1, 2)),
            range(date(2026, 2, 16), date(2026, 2, 20)),
            range(date(2026, 3, 30), date(2026, 4, 10)),
            range(date(2026, 5, 25), date(2026, 5, 29)),
        ],
    }
}

/// Generates `pupils` pupils over the school year, in secondary schools of about 880 pupils
/// each (180 places in each of Years 7 to 11), the last school cut to make the count exact.
/// `days` keeps only the first that many school days of marks; `None` keeps the whole year.
pub(crate) fn generate(pupils: usize, days: Option<usize>) -> anyhow::Result<Vec<School>> {
    generate_with(pupils, Phase::Secondary, 180, days)
}

/// Generates `count` junior schools of at least `pupils_each` pupils, cut to exactly that many,
/// with marks for the first `days` school days.
pub(crate) fn generate_small_schools(
    count: usize,
    pupils_each: usize,
    days: usize,
) -> anyhow::Result<Vec<School>> {
    // Four year groups, each filled to at least 95% of its places.
    let places = u32::try_from(pupils_each.div_ceil(4) * 100 / 95 + 1)?;
    let mut schools = Vec::with_capacity(count);
    for index in 0..count {
        let mut school = generate_school(index, Phase::Junior, places, Some(days))?;
        cut_to(&mut school, pupils_each);
        schools.push(school);
    }
    Ok(schools)
}

fn generate_with(
    pupils: usize,
    phase: Phase,
    places: u32,
    days: Option<usize>,
) -> anyhow::Result<Vec<School>> {
    let mut schools = Vec::new();
    let mut remaining = pupils;
    while remaining > 0 {
        let mut school = generate_school(schools.len(), phase, places, days)?;
        if school.pupils.len() > remaining {
            cut_to(&mut school, remaining);
        }
        remaining -= school.pupils.len();
        schools.push(school);
    }
    Ok(schools)
}

/// Keeps the first `pupils` pupils of a school and their marks.
fn cut_to(school: &mut School, pupils: usize) {
    school.pupils.truncate(pupils);
    let kept = u32::try_from(pupils).unwrap_or(u32::MAX);
    school.marks.retain(|mark| mark.pupil < kept);
}

fn generate_school(
    index: usize,
    phase: Phase,
    places: u32,
    days: Option<usize>,
) -> anyhow::Result<School> {
    let estab = u16::try_from(index)
        .ok()
        .and_then(|index| FIRST_ESTAB.checked_add(index))
        .filter(|estab| *estab <= 9999)
        .ok_or_else(|| anyhow::anyhow!("too many schools: at most 4,999 fit the numbering"))?;
    let spec = TrustSpec {
        seed: SEED,
        name: "Benchmark Trust".to_owned(),
        term: school_year(),
        schools: vec![SchoolSpec {
            la_code: LA_CODE,
            estab,
            name: format!("Benchmark School {estab}"),
            phase,
            places_per_year_group: places,
            closures: Vec::new(),
        }],
    };
    let trust = rollcall_synthetic::generate(&spec)?;
    let generated = trust
        .schools
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("the generator returned no school"))?;

    let mut pupils = Vec::with_capacity(generated.file.pupils.len());
    let mut marks = Vec::new();
    for (number, pupil) in generated.file.pupils.into_iter().enumerate() {
        let Some(sessions) = pupil.attendance.into_iter().find_map(|year| year.sessions) else {
            continue;
        };
        let index = u32::try_from(pupils.len())?;
        for (position, code) in sessions.marks.iter().enumerate() {
            if code == "#" {
                continue;
            }
            let (date, session) = sessions.session_at(position);
            let code = rollcall_domain::codes::lookup(code)
                .ok_or_else(|| anyhow::anyhow!("the generator wrote an unknown code {code}"))?
                .code;
            marks.push(Mark {
                pupil: index,
                date,
                afternoon: session == 1,
                code,
            });
        }
        pupils.push(Pupil {
            mis_id: format!("MIS{number:05}"),
            upn: pupil.upn,
            forename: pupil.forename,
            surname: pupil.surname,
            date_of_birth: pupil.date_of_birth,
            sex: pupil.sex,
            admission_date: sessions.start_date,
            year_group: pupil.year_group.unwrap_or_else(|| "X".to_owned()),
        });
    }
    marks.sort_by_key(|mark| (mark.date, mark.afternoon, mark.pupil));
    if let Some(days) = days {
        let mut dates: Vec<NaiveDate> = marks.iter().map(|mark| mark.date).collect();
        dates.dedup();
        if let Some(last) = dates.get(days) {
            let last = *last;
            marks.retain(|mark| mark.date < last);
        }
    }
    Ok(School {
        laestab: generated.laestab,
        name: generated.name,
        phase,
        pupils,
        marks,
    })
}

fn proto_phase(phase: Phase) -> ProtoPhase {
    match phase {
        Phase::Infant => ProtoPhase::Infant,
        Phase::Junior => ProtoPhase::Junior,
        Phase::Primary | Phase::Secondary => ProtoPhase::Secondary,
    }
}

/// Builds the pupils batches of a school, at most `batch` pupils each.
pub(crate) fn pupils_requests(school: &School, batch: usize, key: &str) -> Vec<SyncPupilsRequest> {
    school
        .pupils
        .chunks(batch.max(1))
        .enumerate()
        .map(|(number, chunk)| SyncPupilsRequest {
            laestab: school.laestab.clone(),
            school_name: school.name.clone(),
            phase: proto_phase(school.phase).into(),
            idempotency_key: format!("{key}-pupils-{number}"),
            source_name: "rollcall-loadgen".to_owned(),
            dry_run: false,
            pupils: chunk
                .iter()
                .map(|pupil| SyncPupil {
                    mis_id: pupil.mis_id.clone(),
                    upn: pupil.upn.clone(),
                    forename: pupil.forename.clone(),
                    surname: pupil.surname.clone(),
                    date_of_birth: pupil.date_of_birth.to_string(),
                    sex: pupil.sex.clone(),
                    admission_date: pupil.admission_date.to_string(),
                    year_group: pupil.year_group.clone(),
                    ..SyncPupil::default()
                })
                .collect(),
        })
        .collect()
}

/// Builds one marks batch from `marks` of `school`, naming each pupil by MIS id.
pub(crate) fn marks_request(school: &School, marks: &[Mark], key: String) -> SyncMarksRequest {
    SyncMarksRequest {
        laestab: school.laestab.clone(),
        idempotency_key: key,
        source_name: "rollcall-loadgen".to_owned(),
        dry_run: false,
        marks: marks
            .iter()
            .map(|mark| SyncMark {
                mis_id: school.pupils[mark.pupil as usize].mis_id.clone(),
                date: mark.date.to_string(),
                session: if mark.afternoon {
                    ProtoSession::Pm
                } else {
                    ProtoSession::Am
                }
                .into(),
                code: mark.code.to_owned(),
                ..SyncMark::default()
            })
            .collect(),
    }
}

/// Returns the number of marks across schools.
pub(crate) fn mark_count(schools: &[School]) -> usize {
    schools.iter().map(|school| school.marks.len()).sum()
}
