//! The summary of an import: counts per file and in total, and the rejected rows, printed as
//! text or as one JSON object.

use std::io::Write;

use anyhow::bail;
use rollcall_api::mis_adapter::v1::{RowOutcome, RowResult};
use serde::Serialize;

use super::batches::BatchSent;
use super::plan::{FilePlan, Layout, MarkCells};
use super::rows::Rejection;

/// Rejections listed in the text summary; `--json` lists them all.
const REJECTIONS_SHOWN: usize = 10;

/// The counts of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct FileSummary {
    pub(crate) file: String,
    /// `pupils` or `marks`.
    pub(crate) kind: &'static str,
    pub(crate) sha256: String,
    /// Rows read, not counting the header and rows of empty cells.
    pub(crate) rows: u64,
    pub(crate) applied: u64,
    pub(crate) unchanged: u64,
    pub(crate) rejected: u64,
    pub(crate) pupils_added: u64,
    pub(crate) pupils_changed: u64,
    pub(crate) batches: u64,
    /// Batches the server had applied before under the same idempotency key, whose first
    /// results it returned.
    pub(crate) replayed_batches: u64,
}

/// The summary of an import.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) dry_run: bool,
    pub(crate) school: String,
    pub(crate) profile: String,
    pub(crate) applied: u64,
    pub(crate) unchanged: u64,
    pub(crate) rejected: u64,
    pub(crate) pupils_added: u64,
    pub(crate) pupils_changed: u64,
    pub(crate) files: Vec<FileSummary>,
    /// Every rejection, by file and line.
    pub(crate) rejections: Vec<Rejection>,
    /// The registers change-feed position after the last batch.
    #[serde(skip)]
    pub(crate) feed_cursor: i64,
}

/// The parts of a batch's response that the summary reads.
#[derive(Debug)]
pub(crate) struct BatchResult<'a> {
    pub(crate) replayed: bool,
    pub(crate) feed_cursor: i64,
    pub(crate) results: &'a [RowResult],
}

impl Summary {
    pub(crate) fn new(dry_run: bool, school: &str, profile: &str, plans: &[FilePlan]) -> Self {
        Self {
            dry_run,
            school: school.to_owned(),
            profile: profile.to_owned(),
            applied: 0,
            unchanged: 0,
            rejected: 0,
            pupils_added: 0,
            pupils_changed: 0,
            files: plans
                .iter()
                .map(|plan| FileSummary {
                    file: plan.name.clone(),
                    kind: plan.layout.kind().as_str(),
                    sha256: plan.sha256.clone(),
                    ..FileSummary::default()
                })
                .collect(),
            rejections: Vec::new(),
            feed_cursor: 0,
        }
    }

    /// Counts a row rejected before sending.
    pub(crate) fn reject_locally(&mut self, file: usize, rejection: Rejection) {
        if let Some(summary) = self.files.get_mut(file) {
            summary.rejected += 1;
        }
        self.rejections.push(rejection);
    }

    /// Counts the results of one batch, naming each rejected row by its line in the file.
    pub(crate) fn record_batch(
        &mut self,
        plan: &FilePlan,
        sent: &BatchSent,
        result: &BatchResult<'_>,
    ) -> anyhow::Result<()> {
        if result.results.len() != sent.origins.len() {
            bail!(
                "{}: the server returned {} results for batch {} of {} rows; nothing more was \
                 sent, so import the file again",
                plan.name,
                result.results.len(),
                sent.number,
                sent.origins.len()
            );
        }
        self.feed_cursor = self.feed_cursor.max(result.feed_cursor);
        let mut rejections = Vec::new();
        let file = &mut self.files[sent.file];
        file.batches += 1;
        if result.replayed {
            file.replayed_batches += 1;
        }
        for (position, row) in result.results.iter().enumerate() {
            let origin = usize::try_from(row.index)
                .ok()
                .and_then(|index| sent.origins.get(index))
                .unwrap_or(&sent.origins[position]);
            match RowOutcome::try_from(row.outcome).unwrap_or(RowOutcome::Unspecified) {
                RowOutcome::Applied => {
                    file.applied += 1;
                    if matches!(plan.layout, Layout::Pupils(_)) {
                        if row.note.starts_with("new") {
                            file.pupils_added += 1;
                        } else {
                            file.pupils_changed += 1;
                        }
                    }
                }
                RowOutcome::Unchanged => file.unchanged += 1,
                RowOutcome::Rejected | RowOutcome::Unspecified => {
                    file.rejected += 1;
                    let column = column_of(plan, &row.field).or_else(|| origin.column.clone());
                    let reason = if row.reason.is_empty() {
                        "the server gave no outcome for this row".to_owned()
                    } else {
                        row.reason.clone()
                    };
                    rejections.push(Rejection {
                        file: plan.name.clone(),
                        line: origin.line,
                        column,
                        field: row.field.clone(),
                        value: row.value.clone(),
                        reason_code: row.reason_code.clone(),
                        reason,
                    });
                }
            }
        }
        self.rejections.extend(rejections);
        Ok(())
    }

    /// Adds up the files and orders the rejections by file and line.
    pub(crate) fn finish(&mut self) {
        let files = &self.files;
        self.applied = files.iter().map(|file| file.applied).sum();
        self.unchanged = files.iter().map(|file| file.unchanged).sum();
        self.rejected = files.iter().map(|file| file.rejected).sum();
        self.pupils_added = files.iter().map(|file| file.pupils_added).sum();
        self.pupils_changed = files.iter().map(|file| file.pupils_changed).sum();
        let order: Vec<&str> = files.iter().map(|file| file.file.as_str()).collect();
        self.rejections.sort_by_key(|rejection| {
            let file = order
                .iter()
                .position(|name| *name == rejection.file)
                .unwrap_or(usize::MAX);
            (file, rejection.line)
        });
    }

    /// Prints the summary as text.
    pub(crate) fn write_text(&self, out: &mut impl Write) -> anyhow::Result<()> {
        if self.dry_run {
            writeln!(
                out,
                "Dry run: nothing was stored. \"Applied\" counts what importing would store."
            )?;
        }
        for file in &self.files {
            let mut line = format!(
                "{} ({}, {} rows): {} applied",
                file.file, file.kind, file.rows, file.applied
            );
            if file.kind == "pupils" {
                line.push_str(&format!(
                    " ({} added, {} changed)",
                    file.pupils_added, file.pupils_changed
                ));
            }
            line.push_str(&format!(
                ", {} unchanged, {} rejected",
                file.unchanged, file.rejected
            ));
            if file.batches > 0 && file.replayed_batches == file.batches {
                line.push_str("; imported before, so these are the first import's results");
            }
            writeln!(out, "{line}")?;
        }
        if self.files.len() > 1 {
            writeln!(
                out,
                "Total: {} applied, {} unchanged, {} rejected",
                self.applied, self.unchanged, self.rejected
            )?;
        }
        if self.rejections.is_empty() {
            return Ok(());
        }
        let listed = self.rejections.len().min(REJECTIONS_SHOWN);
        if listed < self.rejections.len() {
            writeln!(
                out,
                "Rejected (the first {listed} of {}):",
                self.rejections.len()
            )?;
        } else {
            writeln!(out, "Rejected:")?;
        }
        for rejection in &self.rejections[..listed] {
            writeln!(out, "  {}", describe(rejection))?;
        }
        if listed < self.rejections.len() {
            writeln!(
                out,
                "{} more not shown; run the command again with --json to list every rejection",
                self.rejections.len() - listed
            )?;
        }
        Ok(())
    }

    /// Prints the summary as one JSON object.
    pub(crate) fn write_json(&self, out: &mut impl Write) -> anyhow::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)?;
        Ok(())
    }
}

/// Returns one line for a rejection: where, the field and value, and the reason.
fn describe(rejection: &Rejection) -> String {
    let mut text = format!("{} line {}", rejection.file, rejection.line);
    if let Some(column) = &rejection.column {
        text.push_str(&format!(", column {column:?}"));
    }
    if !rejection.field.is_empty() {
        text.push_str(&format!(", {} {:?}", rejection.field, rejection.value));
    }
    text.push_str(": ");
    if !rejection.reason_code.is_empty() {
        text.push_str(&format!("{}: ", rejection.reason_code));
    }
    text.push_str(&rejection.reason);
    text
}

/// Returns the heading of the column that carries a field of the sync API in this file.
fn column_of(plan: &FilePlan, field: &str) -> Option<String> {
    let index = match &plan.layout {
        Layout::Pupils(columns) => match field {
            "mis_id" => Some(columns.mis_id),
            "upn" => Some(columns.upn),
            "forename" => Some(columns.forename),
            "surname" => Some(columns.surname),
            "date_of_birth" => Some(columns.date_of_birth),
            "admission_date" => Some(columns.admission_date),
            "sex" => Some(columns.sex),
            "year_group" => Some(columns.year_group),
            "leaving_date" => columns.leaving_date,
            "class_name" | "class" => columns.class,
            _ => None,
        },
        Layout::Marks(columns) => match (field, &columns.cells) {
            ("mis_id", _) => columns.mis_id,
            ("upn", _) => columns.upn,
            ("date", MarkCells::Long { date, .. }) => Some(*date),
            ("session", MarkCells::Long { session, .. }) => Some(*session),
            ("code", MarkCells::Long { code, .. }) => Some(*code),
            ("minutes_late", MarkCells::Long { minutes_late, .. }) => *minutes_late,
            ("comment", MarkCells::Long { comment, .. }) => *comment,
            _ => None,
        },
    };
    index.and_then(|index| plan.headings.get(index).cloned())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use rollcall_csv::plan::MarkColumns;
    use rollcall_csv::rows::Origin;

    fn marks_plan() -> FilePlan {
        FilePlan {
            path: PathBuf::from("marks.csv"),
            name: "marks.csv".to_owned(),
            layout: Layout::Marks(MarkColumns {
                mis_id: Some(0),
                upn: None,
                cells: MarkCells::Long {
                    date: 1,
                    session: 2,
                    code: 3,
                    minutes_late: None,
                    comment: None,
                },
            }),
            headings: ["Student ID", "Date", "Session", "Mark"]
                .map(str::to_owned)
                .to_vec(),
            sha256: "0".repeat(64),
            size: 100,
        }
    }

    fn row(index: i32, outcome: RowOutcome, field: &str) -> RowResult {
        RowResult {
            index,
            outcome: outcome as i32,
            field: field.to_owned(),
            value: "x".to_owned(),
            reason_code: if field.is_empty() {
                ""
            } else {
                "unknown_mis_id"
            }
            .to_owned(),
            reason: if field.is_empty() {
                ""
            } else {
                "no such pupil"
            }
            .to_owned(),
            ..Default::default()
        }
    }

    fn sent(lines: &[u64]) -> BatchSent {
        BatchSent {
            file: 0,
            number: 1,
            origins: lines
                .iter()
                .map(|line| Origin {
                    line: *line,
                    column: None,
                })
                .collect(),
            position: 100,
        }
    }

    #[test]
    fn server_rejections_carry_the_file_line_and_heading() {
        let plan = marks_plan();
        let mut summary = Summary::new(false, "9192001", "arbor", std::slice::from_ref(&plan));
        let results = [
            row(0, RowOutcome::Applied, ""),
            row(1, RowOutcome::Rejected, "mis_id"),
            row(2, RowOutcome::Unchanged, ""),
        ];
        summary
            .record_batch(
                &plan,
                &sent(&[2, 5, 9]),
                &BatchResult {
                    replayed: false,
                    feed_cursor: 7,
                    results: &results,
                },
            )
            .expect("recorded");
        summary.finish();
        assert_eq!(
            (summary.applied, summary.unchanged, summary.rejected),
            (1, 1, 1)
        );
        assert_eq!(summary.feed_cursor, 7);
        let rejection = &summary.rejections[0];
        assert_eq!(rejection.line, 5);
        assert_eq!(rejection.column.as_deref(), Some("Student ID"));
        assert_eq!(rejection.reason_code, "unknown_mis_id");
    }

    #[test]
    fn result_count_must_match_the_batch() {
        let plan = marks_plan();
        let mut summary = Summary::new(false, "9192001", "arbor", std::slice::from_ref(&plan));
        let results = [row(0, RowOutcome::Applied, "")];
        let error = summary
            .record_batch(
                &plan,
                &sent(&[2, 3]),
                &BatchResult {
                    replayed: false,
                    feed_cursor: 0,
                    results: &results,
                },
            )
            .expect_err("mismatch");
        assert!(
            error
                .to_string()
                .contains("1 results for batch 1 of 2 rows")
        );
    }

    #[test]
    fn text_lists_first_ten_rejections() {
        let plan = marks_plan();
        let mut summary = Summary::new(true, "9192001", "arbor", std::slice::from_ref(&plan));
        for line in (2..=14).rev() {
            summary.reject_locally(
                0,
                Rejection {
                    file: "marks.csv".to_owned(),
                    line,
                    column: Some("Date".to_owned()),
                    field: "date".to_owned(),
                    value: "2025-09-08".to_owned(),
                    reason_code: "invalid_date".to_owned(),
                    reason: "expected a date as DD/MM/YYYY".to_owned(),
                },
            );
        }
        summary.finish();

        let mut text = Vec::new();
        summary.write_text(&mut text).expect("written");
        let text = String::from_utf8(text).expect("UTF-8");
        assert!(text.starts_with("Dry run: nothing was stored."), "{text}");
        assert!(text.contains("Rejected (the first 10 of 13):"), "{text}");
        assert!(
            text.contains(
                "  marks.csv line 2, column \"Date\", date \"2025-09-08\": invalid_date: expected a date as DD/MM/YYYY"
            ),
            "{text}"
        );
        assert!(
            text.contains("3 more not shown; run the command again with --json"),
            "{text}"
        );
        assert!(!text.contains("line 12,"), "{text}");
    }

    #[test]
    fn json_has_the_documented_keys() {
        let plan = marks_plan();
        let mut summary = Summary::new(false, "9192001", "arbor", std::slice::from_ref(&plan));
        summary.finish();
        let mut text = Vec::new();
        summary.write_json(&mut text).expect("written");
        let value: serde_json::Value = serde_json::from_slice(&text).expect("JSON");

        let mut keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut expected = [
            "dry_run",
            "school",
            "profile",
            "applied",
            "unchanged",
            "rejected",
            "pupils_added",
            "pupils_changed",
            "files",
            "rejections",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);

        let mut file_keys: Vec<&str> = value["files"][0]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        file_keys.sort_unstable();
        let mut expected = [
            "file",
            "kind",
            "sha256",
            "rows",
            "applied",
            "unchanged",
            "rejected",
            "pupils_added",
            "pupils_changed",
            "batches",
            "replayed_batches",
        ];
        expected.sort_unstable();
        assert_eq!(file_keys, expected);
    }
}
