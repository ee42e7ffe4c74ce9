//! Smoke test of `rollcall-loadgen` at tiny sizes against a real `rollcall serve`, so that the
//! load generator keeps working. It checks what the runs report, never how long they took.

use rollcall_loadgen::{Report, Row};

async fn loadgen(args: &[&str]) -> Report {
    let mut command_line = vec![
        "rollcall-loadgen".to_owned(),
        "--rollcall".to_owned(),
        env!("CARGO_BIN_EXE_rollcall").to_owned(),
        "--runs".to_owned(),
        "1".to_owned(),
    ];
    command_line.extend(args.iter().map(|arg| (*arg).to_owned()));
    let output = rollcall_loadgen::run(command_line)
        .await
        .unwrap_or_else(|error| panic!("rollcall-loadgen {args:?} failed: {error:#}"));
    serde_json::from_str(&output).expect("the output is a JSON report")
}

fn row<'a>(report: &'a Report, scenario: &str, measure: &str) -> &'a Row {
    report
        .rows
        .iter()
        .find(|row| row.scenario.starts_with(scenario) && row.measure == measure)
        .unwrap_or_else(|| panic!("no row {scenario} / {measure} in {report:#?}"))
}

fn assert_positive(row: &Row) {
    assert!(
        row.value.median.is_finite() && row.value.median > 0.0,
        "{row:#?}"
    );
}

#[tokio::test]
async fn loadgen_ingest_on_both_storages() {
    for storage in ["sqlite", "postgres"] {
        let report = loadgen(&["ingest", "--storage", storage, "--marks", "500"]).await;
        let rate = row(&report, &format!("ingest ({storage})"), "marks/s");
        assert_positive(rate);
        let (_, anchor) = rate.anchor.as_ref().expect("an anchor");
        assert!(anchor.median > 0.0, "{rate:#?}");
        assert!(rate.ratio.is_some(), "{rate:#?}");
    }
}

#[tokio::test]
async fn loadgen_burst_and_do_nothing_server() {
    let report = loadgen(&[
        "burst",
        "--schools",
        "3",
        "--register-size",
        "5",
        "--rounds",
        "1",
    ])
    .await;
    assert_positive(row(&report, "morning burst (postgres)", "marks/s"));
    let p99 = row(&report, "morning burst (postgres)", "request p99 (ms)");
    assert_positive(p99);
    assert!(p99.anchor.is_some(), "{p99:#?}");
    assert_positive(row(&report, "morning burst (do-nothing server)", "marks/s"));
}

#[tokio::test]
async fn loadgen_statistics_agree_with_sql() {
    let report = loadgen(&["statistics", "--pupils", "12"]).await;
    let statistics = row(&report, "statistics", "statistics (s)");
    assert!(
        statistics.note.contains("the two agree"),
        "{}",
        statistics.note
    );
    let update = row(&report, "statistics", "one day's update (s)");
    assert!(update.note.contains(" 0 mismatches"), "{}", update.note);
}

#[tokio::test]
async fn loadgen_memory_reads_proc_status() {
    let report = loadgen(&["memory", "--pupils", "10", "--days", "1"]).await;
    assert_positive(row(
        &report,
        "resident memory (postgres)",
        "peak MiB, no pupils",
    ));
    assert_positive(row(&report, "resident memory (10 pupils", "peak MiB"));
}
