//! Reads the files row by row on a blocking thread and cuts the pupils and marks into
//! batches for StreamSync, each with an idempotency key derived from the file and profile.

use anyhow::Context;
use csv::StringRecord;
use rollcall_api::mis_adapter::v1::stream_sync_request::Batch;
use rollcall_api::mis_adapter::v1::{
    StreamSyncRequest, SyncMark, SyncMarksRequest, SyncPupil, SyncPupilsRequest,
};
use rollcall_api::types::v1::Session as PbSession;
use rollcall_csv::lines::record_line;
use rollcall_csv::plan::csv_reader;
use rollcall_csv::rows::{Mark, Pupil};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::plan::{FilePlan, Kind};
use super::profile::Profile;
use super::rows::{Item, Origin, Rejection, RowReader};

/// Pupils or marks per batch. The API takes up to 10,000; smaller batches keep each
/// transaction short and the progress bar moving. Part of every idempotency key, so a
/// change here gives new keys rather than keys whose rows differ from the first run's.
pub(crate) const BATCH_SIZE: usize = 500;

/// Collects items into batches of a fixed size, in order.
#[derive(Debug)]
pub(crate) struct Batcher<T> {
    size: usize,
    pending: Vec<T>,
}

impl<T> Batcher<T> {
    /// Starts a batcher whose batches hold `size` items, the last one possibly fewer.
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            size,
            pending: Vec::with_capacity(size),
        }
    }

    /// Adds an item and returns the batch it completes, if any.
    pub(crate) fn push(&mut self, item: T) -> Option<Vec<T>> {
        self.pending.push(item);
        if self.pending.len() < self.size {
            return None;
        }
        Some(std::mem::replace(
            &mut self.pending,
            Vec::with_capacity(self.size),
        ))
    }

    /// Returns the last, partly filled batch, or `None` when nothing is pending.
    pub(crate) fn finish(self) -> Option<Vec<T>> {
        (!self.pending.is_empty()).then_some(self.pending)
    }
}

/// Returns the idempotency key of one batch of a file. The same file, settings and batch
/// size give the same keys, so a second run of an import replays the first run's results.
pub(crate) fn idempotency_key(
    file_sha256: &str,
    settings_fingerprint: &str,
    batch_size: usize,
    batch_number: u32,
) -> String {
    format!("csv-{file_sha256}-{settings_fingerprint}-{batch_size}-{batch_number}")
}

/// Settings that every batch of an import carries besides its rows.
#[derive(Debug, Clone)]
pub(crate) struct BatchSettings {
    pub(crate) laestab: String,
    /// The school's name and phase, sent when given on the command line. They create a
    /// school rollcall does not hold, and replace the name and phase of one it holds.
    pub(crate) school_name: String,
    pub(crate) phase: i32,
    pub(crate) source_name: String,
    pub(crate) dry_run: bool,
    /// The first 16 hex digits of a SHA-256 over the profile's fingerprint and the fields
    /// above that a pupils batch carries. The server rejects a key whose batch differs in
    /// any field, so a run with another `--by` must use other keys. Its rows are then
    /// checked afresh, and rows equal to what is held come back unchanged.
    pub(crate) pupils_fingerprint: String,
    /// The same for a marks batch, which carries no school name or phase.
    pub(crate) marks_fingerprint: String,
}

impl BatchSettings {
    /// Builds the settings and their fingerprint.
    pub(crate) fn new(
        laestab: String,
        school_name: String,
        phase: i32,
        source_name: String,
        dry_run: bool,
        profile_fingerprint: &str,
    ) -> Self {
        let fingerprint = |parts: &[&str]| {
            let mut hasher = Sha256::new();
            for part in parts {
                hasher.update(part.as_bytes());
                hasher.update([0]);
            }
            hex::encode(&hasher.finalize()[..8])
        };
        let pupils_fingerprint = fingerprint(&[
            profile_fingerprint,
            &source_name,
            &school_name,
            &phase.to_string(),
        ]);
        let marks_fingerprint = fingerprint(&[profile_fingerprint, &source_name]);
        Self {
            laestab,
            school_name,
            phase,
            source_name,
            dry_run,
            pupils_fingerprint,
            marks_fingerprint,
        }
    }
}

/// A report from the reading thread. Reports arrive in file order.
#[derive(Debug)]
pub(crate) enum Event {
    /// A row rejected before sending.
    Rejected(Rejection),
    /// A batch was put on the request stream; its result comes back in the same order.
    Batch(BatchSent),
    /// A file was read to its end.
    FileRead {
        file: usize,
        rows: u64,
        /// Bytes read of every file so far, for the progress bar.
        position: u64,
    },
}

/// A batch on its way, with where each of its rows came from.
#[derive(Debug)]
pub(crate) struct BatchSent {
    pub(crate) file: usize,
    pub(crate) number: u32,
    pub(crate) origins: Vec<Origin>,
    /// Bytes read of every file up to the end of this batch.
    pub(crate) position: u64,
}

/// The receiving side stopped, because the import failed; it reports why.
#[derive(Debug)]
struct ReceiverGone;

impl std::fmt::Display for ReceiverGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the import stopped")
    }
}

impl std::error::Error for ReceiverGone {}

/// Reads every file in order, sending each full batch on `requests` and reporting batches and
/// rejections on `events`. Runs on a blocking thread. Returns early without an error when the
/// receiver has gone, since the receiver reports its own failure.
pub(crate) fn read_files(
    plans: &[FilePlan],
    profile: &Profile,
    settings: &BatchSettings,
    requests: &mpsc::Sender<StreamSyncRequest>,
    events: &mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    let mut offset = 0;
    for (index, plan) in plans.iter().enumerate() {
        let sender = BatchSender {
            file: index,
            plan,
            profile,
            settings,
            requests,
            events,
            next_number: 1,
        };
        match read_file(sender, offset) {
            Err(error) if error.is::<ReceiverGone>() => return Ok(()),
            other => other?,
        }
        offset += plan.size;
    }
    Ok(())
}

/// Sends the batches of one file.
struct BatchSender<'a> {
    file: usize,
    plan: &'a FilePlan,
    profile: &'a Profile,
    settings: &'a BatchSettings,
    requests: &'a mpsc::Sender<StreamSyncRequest>,
    events: &'a mpsc::Sender<Event>,
    next_number: u32,
}

impl BatchSender<'_> {
    fn send_event(&self, event: Event) -> anyhow::Result<()> {
        self.events
            .blocking_send(event)
            .map_err(|_| anyhow::Error::new(ReceiverGone))
    }

    fn send_batch(&mut self, batch: Vec<(Item, Origin)>, position: u64) -> anyhow::Result<()> {
        let number = self.next_number;
        self.next_number += 1;
        let key = if self.settings.dry_run {
            // A dry run stores nothing, so it needs no key. With a key, a dry run after an
            // import would replay the import's results instead of checking the rows again.
            String::new()
        } else {
            let fingerprint = match self.plan.layout.kind() {
                Kind::Pupils => &self.settings.pupils_fingerprint,
                Kind::Marks => &self.settings.marks_fingerprint,
            };
            idempotency_key(&self.plan.sha256, fingerprint, BATCH_SIZE, number)
        };
        let (items, origins): (Vec<Item>, Vec<Origin>) = batch.into_iter().unzip();
        let request = build_request(self.plan.layout.kind(), self.settings, key, items);
        // The request goes first. The receiver waits for a batch's result once it receives
        // the batch's event, and the server can only return results for batches it received.
        self.requests
            .blocking_send(request)
            .map_err(|_| anyhow::Error::new(ReceiverGone))?;
        self.send_event(Event::Batch(BatchSent {
            file: self.file,
            number,
            origins,
            position,
        }))
    }
}

fn read_file(mut sender: BatchSender<'_>, offset: u64) -> anyhow::Result<()> {
    let plan = sender.plan;
    let file =
        std::fs::File::open(&plan.path).with_context(|| format!("cannot read {}", plan.name))?;
    let mut reader = csv_reader(file);
    let mut rows = RowReader::new(plan, sender.profile);
    let mut batcher = Batcher::new(BATCH_SIZE);
    let mut record = StringRecord::new();
    let mut count = 0;
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => {
                // The file was checked as UTF-8 before reading, so the file changed since then.
                // The row is rejected like any other row that cannot be read.
                let line = error.position().map_or(0, csv::Position::line);
                if let csv::ErrorKind::Utf8 { .. } = error.kind() {
                    count += 1;
                    sender.send_event(Event::Rejected(Rejection {
                        file: plan.name.clone(),
                        line,
                        column: None,
                        field: "row".to_owned(),
                        value: String::new(),
                        reason_code: "invalid_encoding".to_owned(),
                        reason: "the row is not UTF-8 text; save the file as \"CSV UTF-8\" and \
                                 import it again"
                            .to_owned(),
                    }))?;
                    continue;
                }
                return Err(error)
                    .with_context(|| format!("cannot read {} at line {line}", plan.name));
            }
        }
        let line = record_line(&mut reader, &record);
        if record.iter().any(|cell| !cell.trim().is_empty()) {
            count += 1;
        }
        for result in rows.read(&record, line) {
            match result {
                Ok(item) => {
                    if let Some(batch) = batcher.push(item) {
                        sender.send_batch(batch, offset + reader.position().byte())?;
                    }
                }
                Err(rejection) => sender.send_event(Event::Rejected(*rejection))?,
            }
        }
    }
    if let Some(batch) = batcher.finish() {
        sender.send_batch(batch, offset + plan.size)?;
    }
    sender.send_event(Event::FileRead {
        file: sender.file,
        rows: count,
        position: offset + plan.size,
    })
}

/// Builds the StreamSync request of one batch.
pub(crate) fn build_request(
    kind: Kind,
    settings: &BatchSettings,
    idempotency_key: String,
    items: Vec<Item>,
) -> StreamSyncRequest {
    let batch = match kind {
        Kind::Pupils => Batch::Pupils(SyncPupilsRequest {
            laestab: settings.laestab.clone(),
            school_name: settings.school_name.clone(),
            phase: settings.phase,
            idempotency_key,
            source_name: settings.source_name.clone(),
            dry_run: settings.dry_run,
            pupils: items
                .into_iter()
                .filter_map(|item| match item {
                    Item::Pupil(pupil) => Some(sync_pupil(pupil)),
                    Item::Mark(_) => None,
                })
                .collect(),
        }),
        Kind::Marks => Batch::Marks(SyncMarksRequest {
            laestab: settings.laestab.clone(),
            idempotency_key,
            source_name: settings.source_name.clone(),
            dry_run: settings.dry_run,
            marks: items
                .into_iter()
                .filter_map(|item| match item {
                    Item::Mark(mark) => Some(sync_mark(mark)),
                    Item::Pupil(_) => None,
                })
                .collect(),
        }),
    };
    StreamSyncRequest { batch: Some(batch) }
}

fn sync_pupil(pupil: Pupil) -> SyncPupil {
    SyncPupil {
        mis_id: pupil.mis_id,
        upn: pupil.upn,
        forename: pupil.forename,
        surname: pupil.surname,
        date_of_birth: pupil.date_of_birth,
        sex: pupil.sex,
        admission_date: pupil.admission_date,
        leaving_date: pupil.leaving_date,
        year_group: pupil.year_group,
        class_name: pupil.class_name,
        ..Default::default()
    }
}

fn sync_mark(mark: Mark) -> SyncMark {
    SyncMark {
        mis_id: mark.mis_id,
        upn: mark.upn,
        date: mark.date,
        session: PbSession::from(mark.session) as i32,
        code: mark.code,
        minutes_late: mark.minutes_late,
        comment: mark.comment,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn batches_of(items: &[u32], size: usize) -> Vec<Vec<u32>> {
        let mut batcher = Batcher::new(size);
        let mut batches: Vec<Vec<u32>> = items
            .iter()
            .filter_map(|item| batcher.push(*item))
            .collect();
        batches.extend(batcher.finish());
        batches
    }

    #[test]
    fn batcher_cuts_full_batches() {
        assert_eq!(
            batches_of(&[1, 2, 3, 4, 5], 2),
            vec![vec![1, 2], vec![3, 4], vec![5]]
        );
        assert_eq!(batches_of(&[1, 2], 2), vec![vec![1, 2]]);
        assert!(batches_of(&[], 2).is_empty());
    }

    #[test]
    fn settings_fingerprint_follows_every_field() {
        let settings = |by: &str, name: &str, profile: &str| {
            BatchSettings::new("9192001".into(), name.into(), 3, by.into(), false, profile)
        };
        let first = settings("office", "Academy", "0123456789abcdef");
        assert_eq!(first.pupils_fingerprint.len(), 16);
        assert_ne!(first.pupils_fingerprint, first.marks_fingerprint);

        let same = settings("office", "Academy", "0123456789abcdef");
        assert_eq!(first.pupils_fingerprint, same.pupils_fingerprint);
        assert_eq!(first.marks_fingerprint, same.marks_fingerprint);

        let other_person = settings("head", "Academy", "0123456789abcdef");
        assert_ne!(first.pupils_fingerprint, other_person.pupils_fingerprint);
        assert_ne!(first.marks_fingerprint, other_person.marks_fingerprint);

        let no_name = settings("office", "", "0123456789abcdef");
        assert_ne!(first.pupils_fingerprint, no_name.pupils_fingerprint);
        assert_eq!(first.marks_fingerprint, no_name.marks_fingerprint);

        let other_profile = settings("office", "Academy", "fedcba9876543210");
        assert_ne!(first.pupils_fingerprint, other_profile.pupils_fingerprint);
        assert_ne!(first.marks_fingerprint, other_profile.marks_fingerprint);
    }

    #[test]
    fn keys_name_file_profile_size_and_batch() {
        let sha = "ab".repeat(32);
        let key = idempotency_key(&sha, "0123456789abcdef", 500, 12);
        assert_eq!(key, format!("csv-{sha}-0123456789abcdef-500-12"));
    }

    proptest! {
        #[test]
        fn batching_keeps_every_item_once_in_order(
            items in prop::collection::vec(any::<u32>(), 0..2_000),
            size in 1_usize..600,
        ) {
            let batches = batches_of(&items, size);
            let joined: Vec<u32> = batches.iter().flatten().copied().collect();
            prop_assert_eq!(&joined, &items);
            for (index, batch) in batches.iter().enumerate() {
                prop_assert!(!batch.is_empty());
                if index + 1 < batches.len() {
                    prop_assert_eq!(batch.len(), size);
                } else {
                    prop_assert!(batch.len() <= size);
                }
            }
        }

        #[test]
        fn keys_fit_the_api_and_differ_by_batch(
            bytes in prop::collection::vec(any::<u8>(), 32),
            number in 1_u32..u32::MAX,
        ) {
            let sha = hex::encode(&bytes);
            let key = idempotency_key(&sha, "0123456789abcdef", BATCH_SIZE, number);
            prop_assert!(key.len() <= 128, "{} characters", key.len());
            prop_assert!(key.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert_eq!(&key, &idempotency_key(&sha, "0123456789abcdef", BATCH_SIZE, number));
            prop_assert_ne!(key, idempotency_key(&sha, "0123456789abcdef", BATCH_SIZE, number - 1));
        }
    }
}
