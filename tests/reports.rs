//! The governors' and trust reports on a real server, with a small generated trust imported
//! from Common Transfer Files. Each report's PDF is read back with lopdf and its CSV with the
//! csv crate, and the figures are compared with `rollcall report statistics --json` and
//! `rollcall cases list --json` for the same range.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rollcall_cli::server::{self, RunningServer, ServerConfig};
use rollcall_synthetic::{Phase, SchoolSpec, Term, TrustSpec};
use serde_json::Value;

const INFANT: &str = "9192101";
const SECONDARY: &str = "9194101";
const INFANT_NAME: &str = "St Chloé's Infant School";
const SECONDARY_NAME: &str = "Wrenmoor Park Academy";
/// The last day of the generated autumn term, and so the last date with marks.
const LAST_DAY: &str = "2025-12-19";

async fn start(work: &Path, database_url: Option<&str>) -> RunningServer {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().expect("address"),
        work.join("data"),
        database_url,
    )
    .expect("config");
    server::start(config).await.expect("server starts")
}

/// Runs the rollcall binary against `server` off the async threads.
async fn run_rollcall(server: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["--server".to_owned(), server.to_owned()];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(&full)
            .output()
            .expect("rollcall runs")
    })
    .await
    .expect("command thread")
}

/// Runs the rollcall binary and returns what it printed.
async fn cli(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(
        output.status.success(),
        "rollcall {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Runs the rollcall binary, expecting it to fail, and returns its error.
async fn cli_error(server: &str, args: &[&str]) -> String {
    let output = run_rollcall(server, args).await;
    assert!(!output.status.success(), "rollcall {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn cli_json(server: &str, args: &[&str]) -> Value {
    serde_json::from_str(&cli(server, args).await).expect("JSON output")
}

/// Generates two small schools over the autumn term of 2025 and writes them as CTF files.
fn write_trust(folder: &Path) -> Vec<PathBuf> {
    let school = |estab: u16, name: &str, phase: Phase| SchoolSpec {
        la_code: 919,
        estab,
        name: name.to_owned(),
        phase,
        places_per_year_group: 12,
        closures: Vec::new(),
    };
    let spec = TrustSpec {
        seed: 7,
        name: "Test Learning Trust".to_owned(),
        term: Term::autumn_2025(),
        schools: vec![
            school(2101, INFANT_NAME, Phase::Infant),
            school(4101, SECONDARY_NAME, Phase::Secondary),
        ],
    };
    let trust = rollcall_synthetic::generate(&spec).expect("trust");
    trust
        .schools
        .iter()
        .map(|school| {
            let path = folder.join(format!("{}.xml", school.laestab));
            std::fs::write(&path, rollcall_ctf::write(&school.file).expect("CTF")).expect("write");
            path
        })
        .collect()
}

fn pdf_text(path: &Path) -> String {
    let document = lopdf::Document::load(path).expect("the PDF parses");
    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
    assert!(!pages.is_empty(), "{} has no pages", path.display());
    document.extract_text(&pages).expect("text")
}

/// Reads the CSV into a map from (section, group, key, measure) to value.
fn read_csv(path: &Path) -> BTreeMap<(String, String, String, String), f64> {
    let mut reader = csv::Reader::from_path(path).expect("CSV opens");
    let headers = reader.headers().expect("headers").clone();
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        ["section", "group", "key", "measure", "value"]
    );
    let mut figures = BTreeMap::new();
    for record in reader.records() {
        let record = record.expect("record");
        let value: f64 = record[4]
            .parse()
            .unwrap_or_else(|_| panic!("value {:?} is not a plain number", &record[4]));
        let key = (
            record[0].to_owned(),
            record[1].to_owned(),
            record[2].to_owned(),
            record[3].to_owned(),
        );
        assert!(figures.insert(key, value).is_none(), "{record:?} repeats");
    }
    figures
}

fn figure(csv: &BTreeMap<(String, String, String, String), f64>, path: [&str; 4]) -> f64 {
    let key = path.map(str::to_owned);
    *csv.get(&(
        key[0].clone(),
        key[1].clone(),
        key[2].clone(),
        key[3].clone(),
    ))
    .unwrap_or_else(|| panic!("the CSV has no row {path:?}"))
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number"))
}

/// Returns `part` as a percentage of `whole` rounded half up to one decimal place.
fn percent(part: f64, whole: f64) -> f64 {
    ((part * 1000.0 / whole) + 0.5).floor() / 10.0
}

/// Checks the headline rows of a report's CSV against a `report statistics` total.
fn check_headline(
    csv: &BTreeMap<(String, String, String, String), f64>,
    group: &str,
    total: &Value,
) {
    let row = |measure: &str| figure(csv, ["headline", group, "2025/26", measure]);
    let possible = number(&total["possible_sessions"]);
    assert_eq!(row("possible_sessions"), possible);
    assert_eq!(row("pupils"), number(&total["pupils"]));
    assert_eq!(
        row("attended_sessions"),
        number(&total["attended_sessions"])
    );
    assert_eq!(
        row("attendance_percent"),
        number(&total["attendance_percent"])
    );
    assert_eq!(
        row("authorised_absence_percent"),
        percent(number(&total["authorised_absence_sessions"]), possible)
    );
    assert_eq!(
        row("unauthorised_absence_percent"),
        percent(number(&total["unauthorised_absence_sessions"]), possible)
    );
    for measure in [
        "persistent_absentees",
        "persistent_absence_rate",
        "severe_absentees",
        "severe_absence_rate",
    ] {
        assert_eq!(row(measure), number(&total[measure]), "{measure}");
    }
}

/// Checks a breakdown section of a report's CSV against `report statistics --by`.
fn check_groups(
    csv: &BTreeMap<(String, String, String, String), f64>,
    section: &str,
    group: &str,
    statistics: &Value,
) {
    let groups = statistics["groups"].as_array().expect("groups");
    assert!(!groups.is_empty(), "no groups for {section}");
    for expected in groups {
        let key = expected["key"].as_str().expect("key");
        for measure in [
            "pupils",
            "possible_sessions",
            "attendance_percent",
            "persistent_absentees",
            "persistent_absence_rate",
            "severe_absentees",
            "severe_absence_rate",
        ] {
            assert_eq!(
                figure(csv, [section, group, key, measure]),
                number(&expected[measure]),
                "{section} {key} {measure}"
            );
        }
    }
    let rows = csv
        .keys()
        .filter(|(row_section, row_group, _, measure)| {
            row_section == section && row_group == group && measure == "pupils"
        })
        .count();
    assert_eq!(rows, groups.len(), "{section} has other groups");
}

/// Counts the open cases of a school by "ladder/stage", from `rollcall cases list --json`.
async fn case_counts(url: &str, laestab: &str) -> BTreeMap<String, f64> {
    let cases = cli_json(url, &["cases", "list", "--school", laestab, "--json"]).await;
    let mut counts = BTreeMap::new();
    for case in cases.as_array().expect("cases") {
        let key = format!(
            "{}/{}",
            case["ladder"].as_str().expect("ladder"),
            case["stage"].as_str().expect("stage")
        );
        *counts.entry(key).or_insert(0.0) += 1.0;
    }
    counts
}

fn check_stages(
    csv: &BTreeMap<(String, String, String, String), f64>,
    laestab: &str,
    expected: &BTreeMap<String, f64>,
) {
    let reported: BTreeMap<String, f64> = csv
        .iter()
        .filter(|((section, group, _, _), _)| section == "cases_by_stage" && group == laestab)
        .map(|((_, _, key, _), value)| (key.clone(), *value))
        .collect();
    assert!(!reported.is_empty(), "no stages for {laestab}");
    for (stage, count) in expected {
        assert_eq!(reported.get(stage), Some(count), "{laestab} {stage}");
    }
    let total: f64 = reported.values().sum();
    assert_eq!(total, expected.values().sum::<f64>(), "{laestab}");
}

fn files_in(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .expect("read folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

async fn governors_report(url: &str, work: &Path) {
    let out = work.join("governors");
    std::fs::create_dir(&out).expect("folder");
    let pdf = out.join("secondary-2025.pdf");
    let printed = cli(
        url,
        &[
            "report",
            "governors",
            "--school",
            SECONDARY,
            "--year",
            "2025",
            "--out",
            pdf.to_str().expect("UTF-8"),
        ],
    )
    .await;
    let csv_path = out.join("secondary-2025.csv");
    assert!(printed.contains(&pdf.display().to_string()), "{printed}");
    assert!(
        printed.contains(&csv_path.display().to_string()),
        "{printed}"
    );
    assert_eq!(files_in(&out), ["secondary-2025.csv", "secondary-2025.pdf"]);

    let statistics = cli_json(
        url,
        &["report", "statistics", "--school", SECONDARY, "--json"],
    )
    .await;
    assert_eq!(statistics["period"]["from"], "2025-08-01");
    assert_eq!(statistics["period"]["to"], LAST_DAY);
    let total = &statistics["total"];

    let csv = read_csv(&csv_path);
    check_headline(&csv, SECONDARY, total);
    assert!(
        !csv.keys().any(|(section, ..)| section == "previous_year"),
        "2024/25 has no marks, so it has no figures"
    );
    for (section, by) in [
        ("year_group", "year-group"),
        ("sen_provision", "sen"),
        ("free_school_meals", "fsm"),
    ] {
        let grouped = cli_json(
            url,
            &[
                "report",
                "statistics",
                "--school",
                SECONDARY,
                "--by",
                by,
                "--json",
            ],
        )
        .await;
        check_groups(&csv, section, SECONDARY, &grouped);
    }
    let december = cli_json(
        url,
        &[
            "report",
            "statistics",
            "--school",
            SECONDARY,
            "--range",
            "dates",
            "--from",
            "2025-12-01",
            "--as-of",
            LAST_DAY,
            "--json",
        ],
    )
    .await;
    assert_eq!(
        figure(&csv, ["month", SECONDARY, "2025-12", "attendance_percent"]),
        number(&december["total"]["attendance_percent"])
    );
    let months: Vec<&String> = csv
        .keys()
        .filter(|(section, _, _, measure)| section == "month" && measure == "possible_sessions")
        .map(|(_, _, key, _)| key)
        .collect();
    assert_eq!(months, ["2025-09", "2025-10", "2025-11", "2025-12"]);

    let cases = case_counts(url, SECONDARY).await;
    assert!(
        !cases.is_empty(),
        "the generated trust should have open cases"
    );
    check_stages(&csv, SECONDARY, &cases);
    assert_eq!(
        figure(&csv, ["local_authority_stage", SECONDARY, "all", "cases"]),
        0.0
    );

    let text = pdf_text(&pdf);
    assert!(text.contains(SECONDARY_NAME), "{text}");
    assert!(text.contains(&format!("LAESTAB {SECONDARY}")), "{text}");
    let attendance = format!("{:.1}", number(&total["attendance_percent"]));
    assert!(text.contains(&attendance), "no {attendance} in {text}");
    let persistent = format!("{}\n", total["persistent_absentees"]);
    assert!(text.contains(&persistent), "no {persistent} in {text}");
    for stage in [
        "tutor-monitoring",
        "head-of-year-meeting",
        "local-authority-referral",
    ] {
        assert!(text.contains(stage), "no {stage} in {text}");
    }
    assert!(
        text.contains("Cases at the local authority stage"),
        "{text}"
    );
    assert!(text.contains("Referrals to the local authority"), "{text}");
    assert!(text.contains("About these figures"), "{text}");
}

async fn trust_report(url: &str, work: &Path) {
    let out = work.join("trust");
    let figures = out.join("figures");
    std::fs::create_dir_all(&figures).expect("folders");
    let pdf = out.join("trust.pdf");
    let csv_path = figures.join("trust-figures.csv");
    cli(
        url,
        &[
            "report",
            "trust",
            "--on",
            LAST_DAY,
            "--out",
            pdf.to_str().expect("UTF-8"),
            "--csv",
            csv_path.to_str().expect("UTF-8"),
        ],
    )
    .await;
    assert_eq!(files_in(&out), ["figures", "trust.pdf"]);
    assert_eq!(files_in(&figures), ["trust-figures.csv"]);

    let statistics = cli_json(
        url,
        &["report", "statistics", "--as-of", LAST_DAY, "--json"],
    )
    .await;
    let csv = read_csv(&csv_path);
    check_headline(&csv, "trust", &statistics["total"]);
    for (section, by) in [
        ("school", "school"),
        ("phase", "phase"),
        ("year_group", "year-group"),
        ("sen_provision", "sen"),
        ("free_school_meals", "fsm"),
    ] {
        let grouped = cli_json(
            url,
            &[
                "report",
                "statistics",
                "--as-of",
                LAST_DAY,
                "--by",
                by,
                "--json",
            ],
        )
        .await;
        check_groups(&csv, section, "trust", &grouped);
    }
    for laestab in [INFANT, SECONDARY] {
        let cases = case_counts(url, laestab).await;
        check_stages(&csv, laestab, &cases);
    }
    assert!(
        csv.contains_key(&(
            "cases_by_stage".to_owned(),
            INFANT.to_owned(),
            "infants/class-teacher-concern".to_owned(),
            "open_cases".to_owned()
        )),
        "the infant school's stages follow the infants ladder"
    );

    let text = pdf_text(&pdf);
    for name in [INFANT_NAME, SECONDARY_NAME] {
        assert!(text.contains(name), "no {name} in {text}");
    }
    let attendance = format!("{:.1}", number(&statistics["total"]["attendance_percent"]));
    assert!(text.contains(&attendance), "no {attendance} in {text}");
    for stage in ["class-teacher-concern", "tutor-monitoring"] {
        assert!(text.contains(stage), "no {stage} in {text}");
    }
}

async fn bad_input(url: &str, work: &Path) {
    let out = work.join("bad");
    std::fs::create_dir(&out).expect("folder");
    let pdf = out.join("report.pdf");
    let pdf = pdf.to_str().expect("UTF-8");

    let error = cli_error(
        url,
        &[
            "report",
            "governors",
            "--school",
            "9199999",
            "--year",
            "2025",
            "--out",
            pdf,
        ],
    )
    .await;
    assert!(error.contains("9199999"), "{error}");
    assert!(error.contains("not found"), "{error}");

    let error = cli_error(
        url,
        &[
            "report",
            "governors",
            "--school",
            SECONDARY,
            "--year",
            "2023",
            "--out",
            pdf,
        ],
    )
    .await;
    assert!(error.contains("no marks"), "{error}");
    assert!(error.contains("2023/24"), "{error}");
    assert!(error.contains("no calendar"), "{error}");
    assert!(error.contains("rollcall import ctf"), "{error}");

    let error = cli_error(
        url,
        &["report", "trust", "--on", "19/12/2025", "--out", pdf],
    )
    .await;
    assert!(error.contains("invalid --on"), "{error}");
    assert!(error.contains("19/12/2025"), "{error}");

    let error = cli_error(
        url,
        &["report", "trust", "--on", "2024-12-19", "--out", pdf],
    )
    .await;
    assert!(error.contains("no school has marks"), "{error}");

    let text_out = out.join("report.txt");
    let error = cli_error(
        url,
        &[
            "report",
            "trust",
            "--on",
            LAST_DAY,
            "--out",
            text_out.to_str().expect("UTF-8"),
        ],
    )
    .await;
    assert!(error.contains("report.txt"), "{error}");
    assert!(error.contains(".pdf"), "{error}");

    let missing = out.join("missing").join("report.pdf");
    let error = cli_error(
        url,
        &[
            "report",
            "trust",
            "--on",
            LAST_DAY,
            "--out",
            missing.to_str().expect("UTF-8"),
        ],
    )
    .await;
    assert!(error.contains("does not exist"), "{error}");

    assert_eq!(
        files_in(&out),
        Vec::<String>::new(),
        "a failed report wrote a file"
    );
}

async fn reports(database_url: Option<&str>) {
    let work = tempfile::tempdir().expect("temp dir");
    let running = start(work.path(), database_url).await;
    let url = running.url();

    let files = write_trust(work.path());
    let mut import = vec!["import", "ctf"];
    import.extend(files.iter().map(|path| path.to_str().expect("UTF-8")));
    let mut dry_run = import.clone();
    dry_run.push("--dry-run");
    let checked = cli(&url, &dry_run).await;
    let expected = format!(
        "summary (dry run, nothing stored): {0} of {0} files checked (0 imported before), 0 failed",
        files.len()
    );
    assert!(checked.contains(&expected), "{checked}");
    let imported = cli(&url, &import).await;
    let expected = format!(
        "summary: {0} of {0} files imported (0 imported before), 0 failed",
        files.len()
    );
    assert!(imported.contains(&expected), "{imported}");
    assert!(!imported.contains(" 0 marks recorded"), "{imported}");

    governors_report(&url, work.path()).await;
    trust_report(&url, work.path()).await;
    bad_input(&url, work.path()).await;

    running.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_sqlite() {
    reports(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_postgres() {
    let url = rollcall_testkit::postgres()
        .await
        .expect("PostgreSQL for the tests")
        .create_database()
        .await
        .expect("database");
    reports(Some(&url)).await;
}
