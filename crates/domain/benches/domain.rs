//! Criterion benchmarks of the domain library's hot paths: figures from codes, code lookups,
//! calendar queries and the policy evaluations the policy service runs for every pupil.
//!
//! Run with `cargo bench -p rollcall-domain --bench domain`. Each benchmark works on one
//! pupil's academic year of 380 sessions, so the time per iteration times 10,000 is the cost
//! for a trust of 10,000 pupils.

use std::hint::black_box;

use chrono::{Datelike as _, Days, NaiveDate, NaiveTime, Weekday};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rollcall_domain::calendar::{Closure, ClosureKind, RegisterTimes, SchoolCalendar, Term};
use rollcall_domain::policy::alerts::{longest_unauthorised_run, overdue_unexplained};
use rollcall_domain::policy::evaluate_penalty_threshold;
use rollcall_domain::{Figures, Policy, Session, SessionDate, codes};

/// Codes cycled through to fill a year: mostly present, with the usual absences.
const YEAR_PATTERN: &[&str] = &[
    "/", "\\", "/", "\\", "/", "\\", "L", "\\", "/", "\\", "I", "I", "/", "\\", "M", "\\", "/",
    "\\", "O", "N", "/", "\\", "G", "G", "/", "\\", "B", "\\", "/", "\\", "U", "\\", "/", "\\",
    "C", "C", "/", "\\", "/", "\\",
];

fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, day).expect("valid date")
}

/// Builds the sessions of 190 weekdays from 1 September 2025 with codes from the pattern.
fn year_of_marks() -> Vec<(SessionDate, &'static str)> {
    let mut marks = Vec::with_capacity(380);
    let mut day = date(2025, 9, 1);
    while marks.len() < 380 {
        if !matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            for session in [Session::Am, Session::Pm] {
                let code = YEAR_PATTERN[marks.len() % YEAR_PATTERN.len()];
                marks.push((SessionDate { date: day, session }, code));
            }
        }
        day = day.checked_add_days(Days::new(1)).expect("date in range");
    }
    marks
}

fn calendar() -> SchoolCalendar {
    let time = |hour, minute| NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time");
    let term = |name: &str, first, last| Term {
        name: name.to_owned(),
        first_day: first,
        last_day: last,
    };
    SchoolCalendar::new(
        "Europe/London",
        RegisterTimes {
            opens: time(8, 40),
            closes: time(9, 0),
        },
        RegisterTimes {
            opens: time(13, 15),
            closes: time(13, 30),
        },
        vec![
            term("Autumn 2025", date(2025, 9, 3), date(2025, 12, 19)),
            term("Spring 2026", date(2026, 1, 5), date(2026, 3, 27)),
            term("Summer 2026", date(2026, 4, 13), date(2026, 7, 22)),
        ],
        vec![Closure {
            date: date(2025, 11, 21),
            session: None,
            kind: ClosureKind::Planned,
            reason: "INSET day".to_owned(),
        }],
    )
    .expect("valid calendar")
}

fn stats(c: &mut Criterion) {
    let marks = year_of_marks();
    let codes: Vec<&str> = marks.iter().map(|(_, code)| *code).collect();
    let policy = Policy::trust_2021();
    let mut group = c.benchmark_group("stats");
    group.throughput(Throughput::Elements(codes.len() as u64));
    group.bench_function("figures_from_a_year_of_codes", |b| {
        b.iter(|| Figures::from_codes(black_box(&codes).iter().copied()));
    });
    group.finish();

    // The flags look at one pupil's totals, so this benchmark has no per-mark throughput.
    let figures = Figures::from_codes(codes.iter().copied());
    c.bench_function("stats/persistent_and_severe_flags", |b| {
        b.iter(|| {
            let figures = black_box(&figures);
            (
                policy.is_persistent_absence(figures),
                policy.is_severe_absence(figures),
                figures.attendance_percent(),
            )
        });
    });
}

fn code_lookups(c: &mut Criterion) {
    let all: Vec<&str> = codes::CODES.iter().map(|info| info.code).collect();
    let on = date(2025, 10, 1);
    let mut group = c.benchmark_group("codes");
    group.throughput(Throughput::Elements(all.len() as u64));
    group.bench_function("lookup_on_every_code", |b| {
        b.iter(|| {
            black_box(&all)
                .iter()
                .filter(|code| codes::lookup_on(code, on).is_ok())
                .count()
        });
    });
    group.bench_function("category_of_every_code", |b| {
        b.iter(|| {
            black_box(&all)
                .iter()
                .map(|code| codes::category_of(code))
                .filter(|category| category.is_possible())
                .count()
        });
    });
    group.finish();
}

fn calendars(c: &mut Criterion) {
    let calendar = calendar();
    let from = date(2025, 9, 1);
    let to = date(2026, 7, 31);
    let mut group = c.benchmark_group("calendar");
    group.bench_function("open_sessions_over_a_year", |b| {
        b.iter(|| calendar.open_sessions(black_box(from), black_box(to)).len());
    });
    group.bench_function("school_days_between_over_a_year", |b| {
        b.iter(|| calendar.school_days_between(black_box(from), black_box(to)));
    });
    group.finish();
}

fn policy_evaluation(c: &mut Criterion) {
    let marks = year_of_marks();
    let policy = Policy::trust_2021();
    let as_of = date(2026, 7, 22);
    let from = date(2025, 9, 1);
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(marks.len() as u64));
    group.bench_function("penalty_warning_threshold_over_a_year", |b| {
        b.iter(|| evaluate_penalty_threshold(&policy.penalty_warning, black_box(&marks), as_of));
    });
    group.bench_function("longest_unauthorised_run_over_a_year", |b| {
        b.iter(|| longest_unauthorised_run(black_box(&marks), from, as_of));
    });
    group.bench_function("overdue_unexplained_over_a_year", |b| {
        b.iter(|| overdue_unexplained(black_box(&marks), 5, as_of).len());
    });
    group.finish();
}

criterion_group!(benches, stats, code_lookups, calendars, policy_evaluation);
criterion_main!(benches);
