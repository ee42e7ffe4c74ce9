//! Small helpers for the text the commands print.

use comfy_table::Table;
use rollcall_api::types::v1::AttendanceFigures;
use serde_json::{Map, Value, json};

/// Returns "1 mark" or "3 marks": the count with the singular or plural noun.
pub(crate) fn count(number: impl TryInto<i64>, singular: &str, plural: &str) -> String {
    let number = number.try_into().unwrap_or(i64::MAX);
    if number == 1 {
        format!("1 {singular}")
    } else {
        format!("{number} {plural}")
    }
}

/// Renders a table without the padding comfy-table leaves at the end of each line.
pub(crate) fn table(table: &Table) -> String {
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Returns the figures as the JSON keys the commands print.
pub(crate) fn figures_json(figures: &AttendanceFigures) -> Map<String, Value> {
    let value = json!({
        "possible_sessions": figures.possible_sessions,
        "attended_sessions": figures.attended_sessions,
        "present_sessions": figures.present_sessions,
        "approved_activity_sessions": figures.approved_activity_sessions,
        "authorised_absence_sessions": figures.authorised_absence_sessions,
        "unauthorised_absence_sessions": figures.unauthorised_absence_sessions,
        "not_possible_sessions": figures.not_possible_sessions,
        "attendance_percent": figures.attendance_percent,
        "persistent_absence": figures.persistent_absence,
        "severe_absence": figures.severe_absence,
    });
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use comfy_table::presets;

    use super::*;

    #[test]
    fn counts_take_the_right_noun() {
        assert_eq!(count(1, "mark", "marks"), "1 mark");
        assert_eq!(count(0, "mark", "marks"), "0 marks");
        assert_eq!(count(2_usize, "pupil", "pupils"), "2 pupils");
    }

    #[test]
    fn tables_lose_trailing_spaces() {
        let mut rows = Table::new();
        rows.load_preset(presets::NOTHING);
        rows.set_header(["upn", "code"]);
        rows.add_row(["A123", "/"]);
        rows.add_row(["B4", "N"]);
        let text = table(&rows);
        assert!(text.lines().all(|line| line == line.trim_end()), "{text:?}");
        assert_eq!(text.lines().count(), 3);
    }
}
