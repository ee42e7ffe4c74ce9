//! Results: each measure over several runs with its anchor from the same runs, the ratio per
//! run, and the goal. They are printed as JSON or as a Markdown table.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The median, minimum and maximum of one measure over the runs, with every run's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    /// The median of the runs; with an even count, the mean of the middle two.
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
    /// Every run's value, in run order.
    pub runs: Vec<f64>,
}

impl Spread {
    pub(crate) fn of(runs: Vec<f64>) -> Self {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match sorted.len() {
            0 => f64::NAN,
            len if len % 2 == 1 => sorted[len / 2],
            len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2.0,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            runs,
        }
    }
}

/// Whether a larger or a smaller ratio is better, for checking a goal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The ratio must be at least the bound.
    AtLeast(f64),
    /// The ratio (or, without an anchor, the value) must be at most the bound.
    AtMost(f64),
}

/// One line of the results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The scenario, such as "ingest (postgres)".
    pub scenario: String,
    /// The quantity measured, with its unit, such as "marks/s".
    pub measure: String,
    /// rollcall's value over the runs.
    pub value: Spread,
    /// The anchor and its value over the same runs, when the measure has one.
    pub anchor: Option<(String, Spread)>,
    /// value ÷ anchor, run by run.
    pub ratio: Option<Spread>,
    /// The goal, on the ratio when there is an anchor, else on the value.
    pub goal: Option<Goal>,
    /// Whether the median meets the goal.
    pub met: Option<bool>,
    /// A description of what the runs sent, and anything a reader needs to weigh the numbers.
    pub note: String,
}

impl Row {
    /// Builds a row, pairing each run's value with the anchor of the same run.
    pub(crate) fn new(
        scenario: impl Into<String>,
        measure: impl Into<String>,
        values: Vec<f64>,
        anchor: Option<(&str, Vec<f64>)>,
        goal: Option<Goal>,
        note: impl Into<String>,
    ) -> Self {
        let ratio = anchor.as_ref().map(|(_, anchors)| {
            Spread::of(
                values
                    .iter()
                    .zip(anchors)
                    .map(|(value, anchor)| value / anchor)
                    .collect(),
            )
        });
        let value = Spread::of(values);
        let checked = ratio.as_ref().map_or(value.median, |ratio| ratio.median);
        let met = goal.map(|goal| match goal {
            Goal::AtLeast(bound) => checked >= bound,
            Goal::AtMost(bound) => checked <= bound,
        });
        Self {
            scenario: scenario.into(),
            measure: measure.into(),
            value,
            anchor: anchor.map(|(name, runs)| (name.to_owned(), Spread::of(runs))),
            ratio,
            goal,
            met,
            note: note.into(),
        }
    }
}

/// The whole output of one invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The command line that produced the report.
    pub command: String,
    /// When the run started, in UTC.
    pub started_at: String,
    /// The machine: CPU count and load average at the start.
    pub machine: String,
    /// The rows.
    pub rows: Vec<Row>,
}

/// Returns the value at `quantile` (0 to 1) of the latencies, in milliseconds, by the
/// nearest-rank method.
pub(crate) fn percentile_ms(latencies: &[Duration], quantile: f64) -> f64 {
    if latencies.is_empty() {
        return f64::NAN;
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn number(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".to_owned();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

fn spread(spread: &Spread) -> String {
    format!(
        "{} ({} to {})",
        number(spread.median),
        number(spread.min),
        number(spread.max)
    )
}

/// Renders the report as a Markdown table, median first and the range of the runs after it.
pub fn markdown(report: &Report) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "scenario",
        "measure",
        "rollcall",
        "anchor",
        "anchor value",
        "ratio",
        "goal",
        "met",
    ]);
    for row in &report.rows {
        let (anchor_name, anchor_value) = match &row.anchor {
            Some((name, value)) => (name.clone(), spread(value)),
            None => (String::new(), String::new()),
        };
        let goal = match row.goal {
            Some(Goal::AtLeast(bound)) => format!(">= {}", number(bound)),
            Some(Goal::AtMost(bound)) => format!("<= {}", number(bound)),
            None => String::new(),
        };
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        table.add_row([
            row.scenario.clone(),
            row.measure.clone(),
            spread(&row.value),
            anchor_name,
            anchor_value,
            row.ratio.as_ref().map(spread).unwrap_or_default(),
            goal,
            met.to_owned(),
        ]);
    }
    let mut text = format!(
        "command: {}\nstarted: {}\nmachine: {}\n\n{table}\n",
        report.command, report.started_at, report.machine
    );
    for row in &report.rows {
        if !row.note.is_empty() {
            text.push_str(&format!(
                "\n- {}, {}: {}",
                row.scenario, row.measure, row.note
            ));
        }
    }
    text.push('\n');
    text
}
