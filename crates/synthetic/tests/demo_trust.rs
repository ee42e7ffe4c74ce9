//! Checks the demo trust against the CTF rules and the shape of absence the generator targets.
//!
//! Every figure here is counted from the marks with the helpers below, independently of the
//! generator's own code.

use std::collections::HashSet;
use std::sync::OnceLock;

use chrono::{Datelike, NaiveDate, Weekday};
use rollcall_ctf::{Pupil, Totals};
use rollcall_domain::Upn;
use rollcall_synthetic::{GeneratedSchool, Phase, Trust, TrustSpec, generate};

const SEED: u64 = 2025;

fn generate_demo() -> Trust {
    generate(&TrustSpec::demo(SEED)).expect("the demo spec is valid")
}

/// Returns the demo trust, generated once and shared by the tests that only read it.
fn demo() -> &'static Trust {
    static TRUST: OnceLock<Trust> = OnceLock::new();
    TRUST.get_or_init(generate_demo)
}

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid test date")
}

fn term_end() -> NaiveDate {
    date(2025, 12, 19)
}

/// Returns whether `school` is open on `day`, from the demo calendar written out by hand.
fn is_school_day(school: &GeneratedSchool, day: NaiveDate) -> bool {
    let weekend = matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
    let half_term = date(2025, 10, 27) <= day && day <= date(2025, 10, 31);
    let inset = school.phase == Phase::Secondary && day == date(2025, 11, 21);
    !weekend && !half_term && !inset
}

/// DfE category of a session code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Present,
    Approved,
    Authorised,
    Unauthorised,
    NotPossible,
}

fn category(code: &str) -> Category {
    match code {
        "/" | "\\" | "L" => Category::Present,
        "B" | "K" | "P" | "V" | "W" => Category::Approved,
        "C" | "C1" | "C2" | "E" | "I" | "J1" | "M" | "R" | "S" | "T" => Category::Authorised,
        "G" | "N" | "O" | "U" => Category::Unauthorised,
        "D" | "Q" | "X" | "Y1" | "Y2" | "Y3" | "Y4" | "Y5" | "Y6" | "Y7" | "Z" | "#" => {
            Category::NotPossible
        }
        other => panic!("code {other:?} is not valid from 19 August 2024"),
    }
}

fn marks(pupil: &Pupil) -> &[String] {
    let sessions = pupil.attendance[0]
        .sessions
        .as_ref()
        .expect("every pupil has session marks");
    &sessions.marks
}

/// Session counts for one pupil or a group of pupils.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    possible: u32,
    attended: u32,
    authorised: u32,
    unauthorised: u32,
    illness: u32,
    late_before_close: u32,
}

impl Counts {
    fn of(marks: &[String]) -> Self {
        let mut counts = Counts::default();
        for code in marks {
            match category(code) {
                Category::Present | Category::Approved => counts.attended += 1,
                Category::Authorised => counts.authorised += 1,
                Category::Unauthorised => counts.unauthorised += 1,
                Category::NotPossible => continue,
            }
            counts.possible += 1;
            counts.illness += u32::from(code == "I");
            counts.late_before_close += u32::from(code == "L");
        }
        counts
    }

    fn absent(&self) -> u32 {
        self.authorised + self.unauthorised
    }

    fn add(&mut self, other: Counts) {
        self.possible += other.possible;
        self.attended += other.attended;
        self.authorised += other.authorised;
        self.unauthorised += other.unauthorised;
        self.illness += other.illness;
        self.late_before_close += other.late_before_close;
    }
}

/// Absence figures for a group of pupils, in percent.
#[derive(Debug)]
struct Figures {
    pupils: usize,
    overall_absence: f64,
    persistent_absence: f64,
    severe_absence: f64,
    illness_share: f64,
    unauthorised_share: f64,
    late_before_close: f64,
}

fn percent(part: u32, whole: u32) -> f64 {
    100.0 * f64::from(part) / f64::from(whole)
}

fn figures<'a>(pupils: impl Iterator<Item = &'a Pupil>) -> Figures {
    let mut total = Counts::default();
    let mut counted = 0;
    let mut persistent = 0;
    let mut severe = 0;
    for pupil in pupils {
        let counts = Counts::of(marks(pupil));
        total.add(counts);
        if counts.possible == 0 {
            continue;
        }
        counted += 1;
        let rate = f64::from(counts.absent()) / f64::from(counts.possible);
        persistent += u32::from(rate >= 0.1);
        severe += u32::from(rate >= 0.5);
    }
    Figures {
        pupils: counted as usize,
        overall_absence: percent(total.absent(), total.possible),
        persistent_absence: percent(persistent, counted),
        severe_absence: percent(severe, counted),
        illness_share: percent(total.illness, total.absent()),
        unauthorised_share: percent(total.unauthorised, total.absent()),
        late_before_close: percent(total.late_before_close, total.possible),
    }
}

fn phase_figures(trust: &Trust, primary: bool) -> Figures {
    figures(
        trust
            .schools
            .iter()
            .filter(|school| (school.phase != Phase::Secondary) == primary)
            .flat_map(|school| &school.file.pupils),
    )
}

fn all_pupils(trust: &Trust) -> impl Iterator<Item = (&GeneratedSchool, &Pupil)> {
    trust
        .schools
        .iter()
        .flat_map(|school| school.file.pupils.iter().map(move |pupil| (school, pupil)))
}

#[test]
fn same_seed_same_trust() {
    assert_eq!(&generate_demo(), demo());
}

#[test]
fn different_seed_different_trust() {
    let other = generate(&TrustSpec::demo(SEED + 1)).expect("the demo spec is valid");
    assert_ne!(demo(), &other);
}

#[test]
fn school_data_independent_of_others() {
    let mut spec = TrustSpec::demo(SEED);
    spec.schools.remove(0);
    let without_infant = generate(&spec).expect("the spec is valid");
    assert_eq!(without_infant.schools[..], demo().schools[1..]);
}

#[test]
fn pupil_count_about_1500() {
    let count = demo().pupil_count();
    assert!((1400..=1600).contains(&count), "{count} pupils");
}

#[test]
fn year_groups_match_phase() {
    let trust = demo();
    for school in &trust.schools {
        let expected: &[&str] = match school.phase {
            Phase::Infant => &["R", "1", "2"],
            Phase::Junior => &["3", "4", "5", "6"],
            Phase::Secondary => &["7", "8", "9", "10", "11"],
            Phase::Primary => panic!("the demo trust has no all-through primary"),
        };
        let places = if school.phase == Phase::Secondary {
            180
        } else {
            90
        };
        for year_group in expected {
            let size = school
                .file
                .pupils
                .iter()
                .filter(|pupil| pupil.year_group.as_deref() == Some(*year_group))
                .count();
            assert!(
                size * 100 >= places * 95,
                "{} year {year_group} has {size} pupils",
                school.name
            );
            assert!(
                size <= places,
                "{} year {year_group} has {size} pupils",
                school.name
            );
        }
        for pupil in &school.file.pupils {
            let year_group = pupil.year_group.as_deref().expect("year group is set");
            assert!(
                expected.contains(&year_group),
                "{year_group} in {}",
                school.name
            );
        }
    }
}

#[test]
fn pupils_sorted_by_year_and_name() {
    let trust = demo();
    for school in &trust.schools {
        let keys: Vec<(i32, &str, &str)> = school
            .file
            .pupils
            .iter()
            .map(|pupil| {
                let year = match pupil.year_group.as_deref() {
                    Some("R") => 0,
                    Some(number) => number.parse().expect("numeric year group"),
                    None => panic!("year group missing"),
                };
                (year, pupil.surname.as_str(), pupil.forename.as_str())
            })
            .collect();
        for pair in keys.windows(2) {
            assert!(pair[0] <= pair[1], "{:?} before {:?}", pair[0], pair[1]);
        }
    }
}

#[test]
fn generate_rejects_invalid_spec() {
    let mut spec = TrustSpec::demo(SEED);
    spec.schools[0].estab = spec.schools[1].estab;
    assert!(generate(&spec).is_err());
}

#[test]
fn upns_valid_and_unique() {
    let trust = demo();
    let mut seen = HashSet::new();
    for (school, pupil) in all_pupils(trust) {
        let upn = Upn::parse(&pupil.upn).expect("UPN is valid");
        assert_eq!(upn.as_str(), pupil.upn, "UPN is stored in canonical form");
        assert_eq!(
            &pupil.upn[1..8],
            school.laestab,
            "UPN starts with the LAESTAB"
        );
        assert!(seen.insert(pupil.upn.clone()), "UPN {} repeats", pupil.upn);
    }
}

#[test]
fn upn_year_of_allocation_is_reception_entry() {
    let trust = demo();
    for (_, pupil) in all_pupils(trust) {
        let year_group = match pupil.year_group.as_deref() {
            Some("R") => 0,
            Some(number) => number.parse::<i32>().expect("numeric year group"),
            None => panic!("year group missing"),
        };
        let allocation: i32 = pupil.upn[8..10].parse().expect("two-digit year");
        assert_eq!(2000 + allocation, 2025 - year_group, "UPN {}", pupil.upn);
    }
}

#[test]
fn dates_of_birth_match_year_group() {
    let trust = demo();
    for (_, pupil) in all_pupils(trust) {
        let offset = match pupil.year_group.as_deref() {
            Some("R") => 0,
            Some(number) => number.parse::<i32>().expect("numeric year group"),
            None => panic!("year group missing"),
        };
        let first = date(2020 - offset, 9, 1);
        let last = date(2021 - offset, 8, 31);
        let born = pupil.date_of_birth;
        assert!(
            first <= born && born <= last,
            "{} in year {offset} born {born}",
            pupil.upn
        );
    }
}

#[test]
fn names_and_sex_filled() {
    let trust = demo();
    for (_, pupil) in all_pupils(trust) {
        assert!(!pupil.forename.is_empty());
        assert!(!pupil.surname.is_empty());
        assert!(pupil.sex == "M" || pupil.sex == "F", "sex {:?}", pupil.sex);
    }
}

#[test]
fn headers_name_source_school() {
    let trust = demo();
    for school in &trust.schools {
        let header = &school.file.header;
        assert_eq!(header.ctf_version, "25.0");
        assert_eq!(header.academic_year.as_deref(), Some("2025"));
        assert_eq!(header.source_school.lea, "919");
        assert_eq!(header.source_school.estab.len(), 4);
        assert_eq!(header.source_school.laestab(), school.laestab);
        assert_eq!(
            header.source_school.school_name.as_deref(),
            Some(school.name.as_str())
        );
    }
}

#[test]
fn year_data_names_school() {
    let trust = demo();
    for (school, pupil) in all_pupils(trust) {
        assert_eq!(pupil.attendance.len(), 1);
        let year_data = &pupil.attendance[0];
        assert_eq!(year_data.year.as_deref(), Some("2025"));
        assert_eq!(year_data.school, school.file.header.source_school);
    }
}

#[test]
fn marks_run_from_start_to_term_end() {
    let trust = demo();
    for (_, pupil) in all_pupils(trust) {
        let sessions = pupil.attendance[0]
            .sessions
            .as_ref()
            .expect("marks present");
        let days = (term_end() - sessions.start_date).num_days() + 1;
        assert_eq!(sessions.marks.len() as i64, 2 * days, "UPN {}", pupil.upn);
    }
}

#[test]
fn closed_days_and_only_those_are_hash() {
    let trust = demo();
    for (school, pupil) in all_pupils(trust) {
        let sessions = pupil.attendance[0]
            .sessions
            .as_ref()
            .expect("marks present");
        for (index, code) in sessions.marks.iter().enumerate() {
            let (day, _) = sessions.session_at(index);
            let open = is_school_day(school, day);
            assert_eq!(
                code != "#",
                open,
                "{} on {day} in {} has {code:?}",
                pupil.upn,
                school.name
            );
        }
    }
}

#[test]
fn most_pupils_start_on_first_day() {
    let trust = demo();
    let first_day = date(2025, 9, 3);
    let mut joiners = 0;
    for (school, pupil) in all_pupils(trust) {
        let start = pupil.attendance[0]
            .sessions
            .as_ref()
            .expect("marks present")
            .start_date;
        assert!(start >= first_day, "{} starts on {start}", pupil.upn);
        assert!(start <= term_end(), "{} starts on {start}", pupil.upn);
        if start != first_day {
            joiners += 1;
            assert!(
                is_school_day(school, start),
                "{} joined on {start}",
                pupil.upn
            );
        }
    }
    let share = 100.0 * f64::from(joiners) / trust.pupil_count() as f64;
    assert!((0.5..=4.0).contains(&share), "{share:.1}% joined mid-term");
}

#[test]
fn totals_agree_with_marks() {
    let trust = demo();
    for (_, pupil) in all_pupils(trust) {
        let counts = Counts::of(marks(pupil));
        let expected = Totals {
            possible: Some(counts.possible),
            authorised: Some(counts.authorised),
            attended: Some(counts.attended),
            unauthorised: Some(counts.unauthorised),
        };
        assert_eq!(pupil.attendance[0].totals, expected, "UPN {}", pupil.upn);
    }
}

#[test]
fn rare_codes_appear_a_few_times() {
    let trust = demo();
    let count = |wanted: &str| {
        all_pupils(trust)
            .flat_map(|(_, pupil)| marks(pupil))
            .filter(|code| *code == wanted)
            .count()
    };
    for (code, low, high) in [("C1", 2, 12), ("J1", 2, 8), ("C2", 1, 4), ("Y1", 1, 4)] {
        let found = count(code);
        assert!(
            (low..=high).contains(&found),
            "{found} sessions of {code}, expected {low} to {high}"
        );
    }
    for code in ["V", "P", "B", "M", "R", "G", "N", "O", "U", "X", "C"] {
        assert!(count(code) > 0, "no {code} sessions");
    }
}

#[test]
fn medical_appointments_mostly_single_sessions() {
    let trust = demo();
    let mut single = 0;
    let mut whole_day = 0;
    for (_, pupil) in all_pupils(trust) {
        for day in marks(pupil).chunks(2) {
            match (day[0] == "M", day[1] == "M") {
                (true, true) => whole_day += 1,
                (true, false) | (false, true) => single += 1,
                (false, false) => {}
            }
        }
    }
    assert!(
        single > 3 * whole_day,
        "{single} single, {whole_day} whole days"
    );
}

#[test]
fn primary_absence_figures() {
    let figures = phase_figures(demo(), true);
    println!("primary: {figures:?}");
    assert!(figures.pupils > 500, "{figures:?}");
    assert!(
        (4.0..=6.2).contains(&figures.overall_absence),
        "{figures:?}"
    );
    assert!(
        (11.0..=20.0).contains(&figures.persistent_absence),
        "{figures:?}"
    );
    assert!((0.3..=2.5).contains(&figures.severe_absence), "{figures:?}");
}

#[test]
fn secondary_absence_figures() {
    let figures = phase_figures(demo(), false);
    println!("secondary: {figures:?}");
    assert!(figures.pupils > 800, "{figures:?}");
    assert!(
        (6.2..=8.8).contains(&figures.overall_absence),
        "{figures:?}"
    );
    assert!(
        (18.0..=28.0).contains(&figures.persistent_absence),
        "{figures:?}"
    );
    assert!((0.5..=3.2).contains(&figures.severe_absence), "{figures:?}");
}

#[test]
fn absence_reasons_share() {
    let figures = figures(all_pupils(demo()).map(|(_, pupil)| pupil));
    println!("trust: {figures:?}");
    assert!(
        (42.0..=60.0).contains(&figures.illness_share),
        "{figures:?}"
    );
    assert!(
        (22.0..=36.0).contains(&figures.unauthorised_share),
        "{figures:?}"
    );
    assert!(
        (1.5..=2.6).contains(&figures.late_before_close),
        "{figures:?}"
    );
}
