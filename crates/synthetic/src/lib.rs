//! Synthetic attendance data for a multi-academy trust in England, as Common Transfer Files.
//!
//! [`generate`] turns a [`TrustSpec`] into one [`CtfFile`] per school, with every pupil's
//! session marks for one term and the totals counted from them. The same spec and seed always
//! give the same files. [`TrustSpec::demo`] describes the trust that `rollcall demo` and the
//! benchmarks use: an infant, a junior and a secondary school in Hertfordshire with about
//! 1,500 pupils in the autumn term of 2025.
//!
//! ```
//! use rollcall_synthetic::{TrustSpec, generate};
//!
//! let trust = generate(&TrustSpec::demo(2025)).expect("the demo spec is valid");
//! assert_eq!(trust.schools.len(), 3);
//! assert_eq!(trust.schools[0].file.header.source_school.lea, "919");
//! ```
//!
//! All of it is invented. Pupil names are drawn at random from lists of common forenames and
//! surnames, and the schools, the trust and the pupils do not exist. UPNs have correct check
//! letters and are built from the school's LA and establishment numbers, the year the pupil
//! started Reception and a serial.
//!
//! # Model of absence
//!
//! Each pupil draws three propensities: illness, unexplained absence (the two correlated) and
//! lateness. Each is a log-normal multiplier with mean 1. The first two are also scaled by the
//! pupil's group. A fifth of primary and just over a quarter of secondary pupils are
//! frequently absent, with four (primary) or three (secondary) times the average propensity,
//! and the rest have about a quarter of it. So most pupils are rarely away and a minority
//! often are, which makes the share of persistently absent pupils (10% or more of possible
//! sessions missed) realistic and not only the mean. A further 2% or so are severely absent,
//! away on a third to nine-tenths of school days for a long illness or for no accepted
//! reason.
//!
//! Each open day is then decided in turn:
//!
//! * a planned day away: religious observance (`R`), or a holiday of two to five school days, mostly
//!   next to half-term or at the end of term (`G`, occasionally granted as `C`);
//! * illness (`I`) in spells of one to four school days, sometimes starting with a morning in
//!   school before going home at lunch;
//! * a whole day of unexplained absence (`O`, or `N` left unresolved);
//! * leave for exceptional circumstances (`C`);
//! * otherwise each session on its own: usually present (`/` and `\`), sometimes a medical
//!   appointment (`M`), a missed session (`O` or `N`), late before the register closed (`L`,
//!   which counts as present) or after it closed (`U`).
//!
//! Absence is less likely in the first week of term, more likely in the week before half-term
//! and most likely in the last two weeks of term. Rates differ between primary and secondary.
//!
//! On top of that, school plans replace present marks: trips (`V`), sports fixtures (`P`), a
//! weekly college course in Years 10 and 11 (`B`) and mornings-only for Reception in the first
//! days of term (`X`). A few rare codes are placed on purpose so that every consumer meets
//! them: `C1`, and in the secondary `J1`, `C2` and `Y1`. Weekends, breaks and school closures
//! are `#`. Codes follow the list in force from 19 August 2024.
//!
//! The rates were tuned by hand, over seeds 2020 to 2029, towards figures typical of an autumn
//! term in England. The targets are overall absence of about 5% in primary and 7.5% in
//! secondary, with illness about half of all absence and unauthorised absence a quarter to a
//! third. Persistent absence should reach about 15% of primary and 20–25% of secondary pupils,
//! and severe absence (50% or more missed) 1–2%. The integration tests check these figures
//! for one seed with tolerant bounds. A school of a few hundred pupils varies from seed to seed,
//! severe absence most of all.
//!
//! Most pupils' marks start on the first day of term. About 2% join on a later school day,
//! and their marks start then.
//!
//! # Totals
//!
//! Each `YearData` carries totals counted from its own marks by the DfE rules. Possible
//! sessions are present, approved educational activity, authorised and unauthorised absence.
//! Attended sessions are present (including `L`) and approved educational activity. `D`, `Q`,
//! `X`, `Y1`–`Y7`, `Z` and `#` are not possible sessions.

mod absence;
mod calendar;
mod events;
mod mark;
mod names;
mod pupils;
mod random;
mod spec;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rollcall_ctf::{AttendSessions, CtfFile, Header, Pupil, SchoolIdentity, YearData};

use crate::absence::AbsenceProfile;
use crate::calendar::SchoolCalendar;
use crate::mark::Register;
use crate::pupils::RollEntry;

pub use crate::spec::{DateRange, Phase, SchoolSpec, SpecError, Term, TrustSpec, YearGroup};

/// `CTFversion` written in every header.
pub const CTF_VERSION: &str = "25.0";

/// A generated trust: one CTF file per school, in the order of [`TrustSpec::schools`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// Name of the trust.
    pub name: String,
    /// The schools.
    pub schools: Vec<GeneratedSchool>,
}

/// One generated school and its CTF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedSchool {
    /// Seven-digit LAESTAB.
    pub laestab: String,
    /// School name.
    pub name: String,
    /// Phase of the school.
    pub phase: Phase,
    /// The school's pupils and their registers, sorted by year group, surname and forename.
    pub file: CtfFile,
}

impl Trust {
    /// Returns the number of pupils across all schools.
    pub fn pupil_count(&self) -> usize {
        self.schools
            .iter()
            .map(|school| school.file.pupils.len())
            .sum()
    }
}

/// Generates every school of `spec`.
///
/// # Errors
///
/// Returns the first problem [`TrustSpec::validate`] finds.
pub fn generate(spec: &TrustSpec) -> Result<Trust, SpecError> {
    spec.validate()?;
    let schools = spec
        .schools
        .iter()
        .map(|school| generate_school(spec, school))
        .collect();
    Ok(Trust {
        name: spec.name.clone(),
        schools,
    })
}

fn generate_school(spec: &TrustSpec, school: &SchoolSpec) -> GeneratedSchool {
    let mut rng = school_rng(spec.seed, school);
    let calendar = SchoolCalendar::new(&spec.term, school);
    let profile = AbsenceProfile::for_phase(school.phase);
    let roll = pupils::draw_roll(&mut rng, spec.term.academic_year, school, &calendar);

    let mut registers: Vec<Register> = roll
        .iter()
        .map(|pupil| {
            let traits = absence::draw_traits(&mut rng, &profile, &calendar);
            let marks =
                absence::simulate_register(&mut rng, &profile, &traits, &calendar, pupil.start);
            Register {
                start: pupil.start,
                marks,
            }
        })
        .collect();

    let mut plans = events::School {
        phase: school.phase,
        calendar: &calendar,
        roll: &roll,
        registers: &mut registers,
    };
    plans.add_group_activities(&mut rng);
    plans.add_rare_codes(&mut rng);

    GeneratedSchool {
        laestab: school.laestab(),
        name: school.name.clone(),
        phase: school.phase,
        file: ctf_file(spec, school, &calendar, &roll, &registers),
    }
}

/// Seeds a generator for one school from the trust's seed, on a stream chosen by the school's
/// LAESTAB, so that each school's data depends only on the seed and its own spec.
fn school_rng(seed: u64, school: &SchoolSpec) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::from(school.la_code) * 10_000 + u64::from(school.estab));
    rng
}

fn ctf_file(
    spec: &TrustSpec,
    school: &SchoolSpec,
    calendar: &SchoolCalendar,
    roll: &[RollEntry],
    registers: &[Register],
) -> CtfFile {
    let identity = SchoolIdentity {
        lea: format!("{:03}", school.la_code),
        estab: format!("{:04}", school.estab),
        school_name: Some(school.name.clone()),
    };
    let academic_year = spec.term.academic_year.to_string();
    let header = Header {
        ctf_version: CTF_VERSION.to_owned(),
        date_time: Some(format!("{}T16:00:00", spec.term.last_day)),
        document_name: Some("Common Transfer File".to_owned()),
        source_school: identity.clone(),
        academic_year: Some(academic_year.clone()),
        dest_school: None,
    };

    let mut order: Vec<usize> = (0..roll.len()).collect();
    order.sort_by_key(|index| {
        let entry = &roll[*index];
        (entry.year_group, entry.surname, entry.forename, &entry.upn)
    });

    let pupils = order
        .into_iter()
        .map(|index| {
            let register = &registers[index];
            let year_data = YearData {
                year: Some(academic_year.clone()),
                school: identity.clone(),
                totals: mark::totals(&register.marks),
                sessions: Some(attend_sessions(calendar, register)),
            };
            ctf_pupil(&roll[index], year_data)
        })
        .collect();

    CtfFile { header, pupils }
}

fn attend_sessions(calendar: &SchoolCalendar, register: &Register) -> AttendSessions {
    let marks = register
        .marks
        .iter()
        .enumerate()
        .map(|(index, mark)| mark.code(mark::session_of(index)).to_owned())
        .collect();
    AttendSessions {
        start_date: calendar.date(register.start),
        marks,
    }
}

fn ctf_pupil(entry: &RollEntry, year_data: YearData) -> Pupil {
    Pupil {
        upn: entry.upn.as_str().to_owned(),
        surname: entry.surname.to_owned(),
        forename: entry.forename.to_owned(),
        date_of_birth: entry.date_of_birth,
        sex: entry.sex.ctf_code().to_owned(),
        year_group: Some(entry.year_group.ctf_code()),
        enrol_status: Some("C".to_owned()),
        attendance: vec![year_data],
    }
}
