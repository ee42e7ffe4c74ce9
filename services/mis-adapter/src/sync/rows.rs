//! The rows of a sync batch mapped to a registers import, and the registers' results mapped
//! back to the rows. No I/O: the MIS ids already known at the school are passed in.

use std::collections::HashMap;

use rollcall_api::mis_adapter::v1::{RowCounts, RowOutcome, RowResult, SyncMark, SyncPupil};
use rollcall_api::registers::v1::{ImportItemOutcome, ImportItemResult, ImportPupil, Mark, Pupil};
use rollcall_domain::Upn;

/// The longest MIS id or idempotency key accepted, in characters.
pub(crate) const MAX_ID_CHARS: usize = 128;

/// A batch's rows split into those sent to the registers and those settled here.
#[derive(Debug, Default)]
pub(crate) struct Mapped<T> {
    /// The items for the registers, in row order.
    pub(crate) items: Vec<T>,
    /// For each item, the row it came from.
    pub(crate) rows: Vec<usize>,
    /// One slot per row: a result for a row settled here, `None` for a row sent on.
    pub(crate) results: Vec<Option<RowResult>>,
}

impl<T> Mapped<T> {
    fn with_rows(count: usize) -> Self {
        Self {
            items: Vec::new(),
            rows: Vec::new(),
            results: vec![None; count],
        }
    }

    fn send(&mut self, row: usize, item: T) {
        self.items.push(item);
        self.rows.push(row);
    }

    /// Fills the rows sent on with the registers' results, in the order of the items, and
    /// returns one result per row.
    pub(crate) fn finish(
        self,
        registers: &[ImportItemResult],
        mis_ids: impl Fn(usize) -> String,
    ) -> Vec<RowResult> {
        let mut results = self.results;
        for item in registers {
            let Some(&row) = usize::try_from(item.index)
                .ok()
                .and_then(|index| self.rows.get(index))
            else {
                continue;
            };
            let mut result = RowResult {
                index: row_index(row),
                mis_id: mis_ids(row),
                upn: item.upn.clone(),
                outcome: match item.outcome() {
                    ImportItemOutcome::Applied => RowOutcome::Applied,
                    ImportItemOutcome::Unchanged => RowOutcome::Unchanged,
                    _ => RowOutcome::Rejected,
                } as i32,
                reason_code: item.reason_code.clone(),
                field: item.field.clone(),
                value: item.value.clone(),
                reason: item.reason.clone(),
                note: item.note.clone(),
            };
            // The registers name the earlier item by its place in the import, but the vendor
            // identifies it by its row in the batch.
            if let Some(first) = item
                .duplicate_of
                .and_then(|index| usize::try_from(index).ok())
                .and_then(|index| self.rows.get(index))
            {
                describe_duplicate(&mut result, *first);
            }
            results[row] = Some(result);
        }
        results
            .into_iter()
            .enumerate()
            .map(|(row, result)| {
                // Every row sent on has a result from the registers; one missing is reported
                // rather than dropped.
                result.unwrap_or_else(|| {
                    rejected(
                        row,
                        &mis_ids(row),
                        "",
                        "internal",
                        "",
                        "",
                        "the registers returned no result for this row; send the batch again \
                         under a new idempotency key",
                    )
                })
            })
            .collect()
    }
}

/// Rewrites the note or reason of a row merged with, or conflicting with, an earlier row.
fn describe_duplicate(result: &mut RowResult, first: usize) {
    match result.reason_code.as_str() {
        "" => {
            result.note = format!("the same as row {first} of this batch, so merged with it");
        }
        "duplicate_mark" => {
            result.reason = format!(
                "pupil {} already has a different mark for this session at row {first} of this \
                 batch; send one mark per pupil and session",
                result.upn
            );
        }
        _ => {
            result.reason = format!(
                "pupil {} is also row {first} of this batch, with other details; send each \
                 pupil once",
                result.upn
            );
        }
    }
}

fn row_index(row: usize) -> i32 {
    i32::try_from(row).unwrap_or(i32::MAX)
}

/// Builds the result of a rejected row.
pub(crate) fn rejected(
    row: usize,
    mis_id: &str,
    upn: &str,
    code: &str,
    field: &str,
    value: &str,
    reason: impl Into<String>,
) -> RowResult {
    RowResult {
        index: row_index(row),
        mis_id: mis_id.to_owned(),
        upn: upn.to_owned(),
        outcome: RowOutcome::Rejected as i32,
        reason_code: code.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
        note: String::new(),
    }
}

/// Counts results by outcome.
pub(crate) fn counts(results: &[RowResult]) -> RowCounts {
    let mut counts = RowCounts::default();
    for result in results {
        match result.outcome() {
            RowOutcome::Applied => counts.applied += 1,
            RowOutcome::Unchanged => counts.unchanged += 1,
            _ => counts.rejected += 1,
        }
    }
    counts
}

/// Checks an MIS id: present, at most [`MAX_ID_CHARS`] characters, and printable.
pub(crate) fn check_mis_id(value: &str) -> Result<String, (&'static str, String)> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err((
            "missing_mis_id",
            "the MIS's own id for the pupil is required".to_owned(),
        ));
    }
    if trimmed.chars().count() > MAX_ID_CHARS {
        return Err((
            "invalid_mis_id",
            format!("an MIS id has at most {MAX_ID_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err((
            "invalid_mis_id",
            "an MIS id must not contain control characters".to_owned(),
        ));
    }
    Ok(trimmed.to_owned())
}

/// A temporary UPN held for an MIS id that a pupils batch replaces with a permanent UPN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replacement {
    /// The temporary UPN the MIS id is mapped to.
    pub(crate) held: String,
    /// The permanent UPN the batch sends for it.
    pub(crate) sent: String,
    /// The result of the change in the registers.
    pub(crate) outcome: ReplacementOutcome,
}

/// The result of a UPN replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplacementOutcome {
    /// Not yet sent to the registers.
    Pending,
    /// The registers moved the pupil's records to the permanent UPN.
    Replaced,
    /// A dry run: nothing was sent to the registers.
    DryRun,
    /// The registers rejected the change, for this reason.
    Rejected(String),
}

/// Finds the rows of a pupils batch whose MIS id is mapped to a temporary UPN and that send a
/// permanent one, which replaces it. Returns them by MIS id; only the first row of each MIS id
/// counts, as in [`map_pupils`].
pub(crate) fn upn_replacements(
    rows: &[SyncPupil],
    known: &HashMap<String, String>,
) -> HashMap<String, Replacement> {
    let mut found = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for pupil in rows {
        let Ok(mis_id) = check_mis_id(&pupil.mis_id) else {
            continue;
        };
        if !seen.insert(mis_id.clone()) {
            continue;
        }
        let (Some(held), Ok(sent)) = (known.get(&mis_id), Upn::parse(&pupil.upn)) else {
            continue;
        };
        let held_is_temporary = Upn::parse(held).is_ok_and(|held| held.is_temporary());
        if *held != sent.as_str() && held_is_temporary && !sent.is_temporary() {
            found.insert(
                mis_id,
                Replacement {
                    held: held.clone(),
                    sent: sent.to_string(),
                    outcome: ReplacementOutcome::Pending,
                },
            );
        }
    }
    found
}

/// Marks the results of rows whose temporary UPN was replaced as applied, because their UPN
/// changed, with a note naming both UPNs.
pub(crate) fn note_replacements(
    results: &mut [RowResult],
    replacements: &HashMap<String, Replacement>,
) {
    for result in results.iter_mut() {
        let Some(replacement) = replacements.get(&result.mis_id) else {
            continue;
        };
        if replacement.sent != result.upn {
            continue;
        }
        let note = match replacement.outcome {
            ReplacementOutcome::Replaced => format!(
                "UPN {} replaced by {}, with the pupil's history",
                replacement.held, replacement.sent
            ),
            ReplacementOutcome::DryRun => format!(
                "UPN {} would be replaced by {}, with the pupil's history",
                replacement.held, replacement.sent
            ),
            _ => continue,
        };
        if result.outcome() == RowOutcome::Unchanged {
            result.outcome = RowOutcome::Applied as i32;
        }
        result.note = if result.note.is_empty() || result.outcome() == RowOutcome::Rejected {
            note
        } else {
            format!("{note}; {}", result.note)
        };
    }
}

/// Maps a pupils batch. `known` maps each MIS id of the batch already mapped at the school to
/// its UPN, and `replacements` contains the temporary UPNs the batch replaces, by MIS id.
///
/// A row whose MIS id is mapped to another UPN is rejected, unless it replaces a temporary UPN
/// and the registers made that change. A second row for the same MIS id with another UPN is
/// rejected. Rows for the same UPN under different MIS ids are sent on together, and the
/// registers merge them when they agree.
pub(crate) fn map_pupils(
    rows: &[SyncPupil],
    known: &HashMap<String, String>,
    replacements: &HashMap<String, Replacement>,
) -> Mapped<ImportPupil> {
    let mut mapped = Mapped::with_rows(rows.len());
    let mut in_batch: HashMap<String, (usize, String)> = HashMap::new();
    for (row, pupil) in rows.iter().enumerate() {
        let mis_id = match check_mis_id(&pupil.mis_id) {
            Ok(id) => id,
            Err((code, reason)) => {
                mapped.results[row] = Some(rejected(
                    row,
                    &pupil.mis_id,
                    &pupil.upn,
                    code,
                    "mis_id",
                    &pupil.mis_id,
                    reason,
                ));
                continue;
            }
        };
        let upn = match Upn::parse(&pupil.upn) {
            Ok(upn) => upn.to_string(),
            Err(error) => {
                mapped.results[row] = Some(rejected(
                    row,
                    &mis_id,
                    &pupil.upn,
                    "invalid_upn",
                    "upn",
                    &pupil.upn,
                    error.to_string(),
                ));
                continue;
            }
        };
        if let Some(held) = known.get(&mis_id)
            && *held != upn
        {
            let replacement = replacements
                .get(&mis_id)
                .filter(|replacement| replacement.sent == upn);
            match replacement.map(|replacement| &replacement.outcome) {
                Some(ReplacementOutcome::Replaced | ReplacementOutcome::DryRun) => {}
                Some(ReplacementOutcome::Rejected(reason)) => {
                    mapped.results[row] = Some(rejected(
                        row,
                        &mis_id,
                        &upn,
                        "upn_change_rejected",
                        "upn",
                        &pupil.upn,
                        format!(
                            "MIS id {mis_id} has temporary UPN {held} at this school, and the \
                             registers rejected replacing it with {upn}: {reason}"
                        ),
                    ));
                    continue;
                }
                Some(ReplacementOutcome::Pending) | None => {
                    mapped.results[row] = Some(rejected(
                        row,
                        &mis_id,
                        &upn,
                        "upn_changed",
                        "upn",
                        &pupil.upn,
                        format!(
                            "MIS id {mis_id} is mapped to UPN {held} at this school, and only \
                             a temporary UPN is replaced through the sync API; send UPN {held} \
                             for this MIS id, or, once staff have confirmed the pupil's UPN \
                             changed, run `rollcall pupil change-upn --from {held} --to {upn} \
                             --reason TEXT` and send the batch again"
                        ),
                    ));
                    continue;
                }
            }
        }
        if let Some((first, first_upn)) = in_batch.get(&mis_id)
            && *first_upn != upn
        {
            mapped.results[row] = Some(rejected(
                row,
                &mis_id,
                &upn,
                "conflicting_duplicate",
                "mis_id",
                &mis_id,
                format!(
                    "MIS id {mis_id} is also row {first} of this batch, with UPN {first_upn}; \
                     send each pupil once"
                ),
            ));
            continue;
        }
        in_batch.entry(mis_id.clone()).or_insert((row, upn.clone()));
        mapped.send(
            row,
            ImportPupil {
                pupil: Some(Pupil {
                    upn,
                    forename: pupil.forename.clone(),
                    surname: pupil.surname.clone(),
                    date_of_birth: pupil.date_of_birth.clone(),
                    sex: pupil.sex.clone(),
                    enrolments: Vec::new(),
                }),
                admission_date: pupil.admission_date.clone(),
                year_group: pupil.year_group.clone(),
                registration: pupil.registration,
                class_name: pupil.class_name.clone(),
                sen_provision: pupil.sen_provision,
                free_school_meals: pupil.free_school_meals,
                leaving_date: pupil.leaving_date.clone(),
            },
        );
    }
    mapped
}

/// Maps a marks batch. `known` maps each MIS id of the batch mapped at the
/// school to its UPN.
pub(crate) fn map_marks(rows: &[SyncMark], known: &HashMap<String, String>) -> Mapped<Mark> {
    let mut mapped = Mapped::with_rows(rows.len());
    for (row, mark) in rows.iter().enumerate() {
        let mis_id = mark.mis_id.trim();
        let sent_upn = mark.upn.trim();
        let upn = if mis_id.is_empty() && sent_upn.is_empty() {
            Err(rejected(
                row,
                "",
                "",
                "missing_pupil",
                "mis_id",
                "",
                "the pupil's MIS id or UPN is required",
            ))
        } else if mis_id.is_empty() {
            Upn::parse(sent_upn)
                .map(|upn| upn.to_string())
                .map_err(|error| {
                    rejected(
                        row,
                        "",
                        sent_upn,
                        "invalid_upn",
                        "upn",
                        sent_upn,
                        error.to_string(),
                    )
                })
        } else {
            match known.get(mis_id) {
                None => Err(rejected(
                    row,
                    mis_id,
                    sent_upn,
                    "unknown_mis_id",
                    "mis_id",
                    mis_id,
                    format!(
                        "MIS id {mis_id} is not known at this school; send the pupil with \
                         SyncPupils first"
                    ),
                )),
                Some(held) if !sent_upn.is_empty() && !held.eq_ignore_ascii_case(sent_upn) => {
                    Err(rejected(
                        row,
                        mis_id,
                        sent_upn,
                        "mis_id_mismatch",
                        "upn",
                        sent_upn,
                        format!(
                            "MIS id {mis_id} is mapped to UPN {held} at this school, not \
                             {sent_upn}; send one of the two, or correct the MIS"
                        ),
                    ))
                }
                Some(held) => Ok(held.clone()),
            }
        };
        match upn {
            Err(result) => mapped.results[row] = Some(result),
            Ok(upn) => mapped.send(
                row,
                Mark {
                    upn,
                    date: mark.date.clone(),
                    session: mark.session,
                    code: mark.code.clone(),
                    minutes_late: mark.minutes_late,
                    reason: mark.comment.clone(),
                    recorded_at: mark.recorded_at,
                    arrived_at: mark.arrived_at,
                    ..Mark::default()
                },
            ),
        }
    }
    mapped
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rollcall_api::registers::v1::ImportItemKind;

    use super::*;

    fn valid_upn(serial: u8) -> String {
        Upn::from_digits([9, 1, 9, 2, 0, 0, 1, 2, 5, 0, serial / 10, serial % 10]).to_string()
    }

    /// Returns a UPN with the wrong check letter.
    fn bad_upn() -> String {
        let upn = valid_upn(1);
        let wrong = if upn.starts_with('A') { "B" } else { "A" };
        format!("{wrong}{}", &upn[1..])
    }

    fn pupil(mis_id: &str, upn: &str) -> SyncPupil {
        SyncPupil {
            mis_id: mis_id.into(),
            upn: upn.into(),
            forename: "Sam".into(),
            surname: "Able".into(),
            date_of_birth: "2013-05-01".into(),
            sex: "F".into(),
            admission_date: "2025-09-01".into(),
            year_group: "8".into(),
            ..SyncPupil::default()
        }
    }

    fn mark(mis_id: &str, upn: &str) -> SyncMark {
        SyncMark {
            mis_id: mis_id.into(),
            upn: upn.into(),
            date: "2025-09-02".into(),
            session: 1,
            code: "/".into(),
            comment: "Arrived with parent".into(),
            ..SyncMark::default()
        }
    }

    #[test]
    fn pupils_with_bad_ids_or_upns_are_settled_here() {
        let upn = valid_upn(1);
        let rows = vec![
            pupil("", &upn),
            pupil("m1", &bad_upn()),
            pupil("m2", &upn),
            pupil("m2", &valid_upn(2)),
        ];
        let mapped = map_pupils(&rows, &HashMap::new(), &HashMap::new());
        let codes: Vec<&str> = mapped
            .results
            .iter()
            .map(|result| result.as_ref().map_or("sent", |r| r.reason_code.as_str()))
            .collect();
        assert_eq!(
            codes,
            vec![
                "missing_mis_id",
                "invalid_upn",
                "sent",
                "conflicting_duplicate"
            ]
        );
    }

    /// Returns a temporary UPN: eleven digits, then `last`, after the check letter that fits.
    fn temporary_upn(last: char) -> String {
        ('A'..='Z')
            .map(|first| format!("{first}91920012500{last}"))
            .find(|candidate| Upn::parse(candidate).is_ok())
            .expect("one check letter fits")
    }

    #[test]
    fn a_known_id_with_another_upn_is_rejected() {
        let known = HashMap::from([("m1".to_owned(), valid_upn(1))]);
        let rows = [pupil("m1", &valid_upn(2))];
        assert!(upn_replacements(&rows, &known).is_empty(), "both permanent");
        let mapped = map_pupils(&rows, &known, &HashMap::new());
        assert_eq!(
            mapped.results[0].as_ref().map(|r| r.reason_code.as_str()),
            Some("upn_changed")
        );
        let reason = &mapped.results[0].as_ref().expect("result").reason;
        assert!(reason.contains("rollcall pupil change-upn"), "{reason}");
        assert!(mapped.items.is_empty());
    }

    #[test]
    fn map_pupils_replaces_a_temporary_upn() {
        let temporary = temporary_upn('D');
        assert!(Upn::parse(&temporary).expect("valid").is_temporary());
        let known = HashMap::from([
            ("m1".to_owned(), temporary.clone()),
            ("m2".to_owned(), valid_upn(2)),
        ]);
        let rows = [
            pupil("m1", &valid_upn(1)),
            pupil("m2", &temporary_upn('E')),
            pupil("m1", &valid_upn(5)),
        ];
        let mut replacements = upn_replacements(&rows, &known);
        assert_eq!(replacements.len(), 1, "a permanent UPN is never replaced");
        assert_eq!(replacements["m1"].held, temporary);
        assert_eq!(replacements["m1"].sent, valid_upn(1));

        let pending = map_pupils(&rows, &known, &replacements);
        assert_eq!(
            pending.results[0].as_ref().map(|r| r.reason_code.as_str()),
            Some("upn_changed"),
            "not sent on before the registers make the change"
        );

        if let Some(replacement) = replacements.get_mut("m1") {
            replacement.outcome = ReplacementOutcome::Replaced;
        }
        let mapped = map_pupils(&rows, &known, &replacements);
        assert_eq!(mapped.rows, vec![0]);
        assert_eq!(
            mapped.items[0].pupil.as_ref().map(|p| p.upn.as_str()),
            Some(valid_upn(1).as_str())
        );
        assert_eq!(
            mapped.results[2].as_ref().map(|r| r.reason_code.as_str()),
            Some("upn_changed"),
            "a second row for m1 with another UPN"
        );

        let mut results = vec![RowResult {
            index: 0,
            mis_id: "m1".into(),
            upn: valid_upn(1),
            outcome: RowOutcome::Unchanged as i32,
            ..RowResult::default()
        }];
        note_replacements(&mut results, &replacements);
        assert_eq!(results[0].outcome(), RowOutcome::Applied);
        assert_eq!(
            results[0].note,
            format!(
                "UPN {temporary} replaced by {}, with the pupil's history",
                valid_upn(1)
            )
        );
    }

    #[test]
    fn map_pupils_rejects_a_failed_replacement() {
        let known = HashMap::from([("m1".to_owned(), temporary_upn('D'))]);
        let rows = [pupil("m1", &valid_upn(1))];
        let mut replacements = upn_replacements(&rows, &known);
        if let Some(replacement) = replacements.get_mut("m1") {
            replacement.outcome = ReplacementOutcome::Rejected("marks clash".into());
        }
        let mapped = map_pupils(&rows, &known, &replacements);
        let result = mapped.results[0].as_ref().expect("settled here");
        assert_eq!(result.reason_code, "upn_change_rejected");
        assert!(result.reason.ends_with("marks clash"), "{}", result.reason);
    }

    #[test]
    fn marks_resolve_by_id_or_upn() {
        let upn = valid_upn(1);
        let known = HashMap::from([("m1".to_owned(), upn.clone())]);
        let rows = vec![
            mark("m1", ""),
            mark("", &upn.to_lowercase()),
            mark("m9", ""),
            mark("m1", &valid_upn(2)),
            mark("", ""),
            mark("", &bad_upn()),
        ];
        let mapped = map_marks(&rows, &known);
        assert_eq!(mapped.rows, vec![0, 1]);
        assert!(mapped.items.iter().all(|item| item.upn == upn));
        assert_eq!(mapped.items[0].reason, "Arrived with parent");
        let codes: Vec<&str> = mapped.results[2..]
            .iter()
            .map(|result| result.as_ref().map_or("", |r| r.reason_code.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                "unknown_mis_id",
                "mis_id_mismatch",
                "missing_pupil",
                "invalid_upn"
            ]
        );
    }

    #[test]
    fn registers_results_return_to_their_rows() {
        let known = HashMap::from([("m1".to_owned(), valid_upn(1))]);
        let rows = vec![mark("m9", ""), mark("m1", "")];
        let mapped = map_marks(&rows, &known);
        let registers = vec![ImportItemResult {
            kind: ImportItemKind::Mark as i32,
            index: 0,
            upn: valid_upn(1),
            outcome: ImportItemOutcome::Applied as i32,
            ..ImportItemResult::default()
        }];
        let results = mapped.finish(&registers, |row| rows[row].mis_id.clone());
        assert_eq!(results[0].outcome(), RowOutcome::Rejected);
        assert_eq!(results[1].outcome(), RowOutcome::Applied);
        assert_eq!(results[1].index, 1);
        assert_eq!(results[1].mis_id, "m1");
        let counts = counts(&results);
        assert_eq!(
            (counts.applied, counts.unchanged, counts.rejected),
            (1, 0, 1)
        );
    }

    proptest! {
        /// Every row gets exactly one result, at its own index, whichever rows are settled
        /// here and whichever the registers return.
        #[test]
        fn every_row_has_one_result(known_ids in proptest::collection::vec(any::<bool>(), 0..40)) {
            let upn = valid_upn(1);
            let known = HashMap::from([("known".to_owned(), upn.clone())]);
            let rows: Vec<SyncMark> = known_ids
                .iter()
                .map(|&is_known| mark(if is_known { "known" } else { "unknown" }, ""))
                .collect();
            let mapped = map_marks(&rows, &known);
            let registers: Vec<ImportItemResult> = (0..mapped.items.len())
                .map(|index| ImportItemResult {
                    kind: ImportItemKind::Mark as i32,
                    index: i32::try_from(index).expect("small"),
                    upn: upn.clone(),
                    outcome: ImportItemOutcome::Unchanged as i32,
                    ..ImportItemResult::default()
                })
                .collect();
            let results = mapped.finish(&registers, |row| rows[row].mis_id.clone());
            prop_assert_eq!(results.len(), rows.len());
            for (row, result) in results.iter().enumerate() {
                prop_assert_eq!(result.index, i32::try_from(row).expect("small"));
                let expected = if known_ids[row] { RowOutcome::Unchanged } else { RowOutcome::Rejected };
                prop_assert_eq!(result.outcome(), expected);
            }
        }
    }
}
