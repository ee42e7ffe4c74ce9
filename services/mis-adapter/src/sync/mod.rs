//! The MIS sync API: what MIS vendors call to push a school's pupils, calendar and marks.
//!
//! A batch goes through five steps. The idempotency key is checked, and a key seen before
//! returns its stored result. The MIS's pupil ids are mapped to UPNs ([`rows`]). The rows that
//! map go to the registers as one partial import. The registers' per-item results are folded
//! back into one result per row. Then the result and the new id mappings are stored together.

mod rows;
mod store;

use std::collections::HashMap;
use std::pin::Pin;

use prost::Message;
use rollcall_api::client::Channel;
use rollcall_api::convert::timestamp;
use rollcall_api::mis_adapter::v1::mis_sync_service_server::{
    MisSyncService, MisSyncServiceServer,
};
use rollcall_api::mis_adapter::v1::{
    ListPupilIdsRequest, ListPupilIdsResponse, PupilId, RowOutcome, StreamSyncRequest,
    StreamSyncResponse, SyncCalendarRequest, SyncCalendarResponse, SyncMarksRequest,
    SyncMarksResponse, SyncPupilsRequest, SyncPupilsResponse, stream_sync_request,
    stream_sync_response,
};
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_api::registers::v1::{
    ChangeUpnRequest, GetSchoolRequest, ImportHeader, ImportMarks, ImportRegisterRequest,
    ImportRegisterResponse, School, SetCalendarRequest, import_register_request::Item,
};
use rollcall_api::types::v1::{MarkSource, Phase};
use rollcall_auth::{Caller, caller};
use rollcall_runtime::Db;
use rollcall_runtime::grpc::{
    MAX_MESSAGE_BYTES, invalid_argument, laestab, storage_error, upstream_error,
};
use rollcall_runtime::limits::{DEFAULT_MAX_BATCH_ROWS, batch_too_large};
use sha2::{Digest, Sha256};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument as _;

use self::rows::{MAX_ID_CHARS, Replacement, ReplacementOutcome, counts};
use self::store::{BatchRecord, StoredBatch};

/// Marks per message of the stream to the registers.
const MARKS_PER_MESSAGE: usize = 5_000;

/// The source name kept with changes when a batch names none.
const DEFAULT_SOURCE: &str = "MIS sync";

/// The MIS sync service.
#[derive(Debug, Clone)]
pub struct MisSync {
    db: Db,
    registers: RegistersServiceClient<Channel>,
    /// The maximum number of rows a pupils or marks batch may carry.
    max_batch_rows: usize,
}

/// The kind of a batch, kept with its stored result and named in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchKind {
    Pupils,
    Calendar,
    Marks,
}

impl BatchKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pupils => "pupils",
            Self::Calendar => "calendar",
            Self::Marks => "marks",
        }
    }
}

/// The checked idempotency key of a batch, and the SHA-256 of its request.
struct Idempotency {
    key: String,
    request_sha256: String,
}

impl MisSync {
    /// Creates the service over the MIS adapter's storage and a client of the registers.
    pub fn new(db: Db, registers: Channel) -> Self {
        Self {
            db,
            registers: RegistersServiceClient::new(registers)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
        }
    }

    /// Sets the most rows a pupils or marks batch may carry (`--max-batch-rows`).
    pub fn with_max_batch_rows(mut self, max_batch_rows: usize) -> Self {
        self.max_batch_rows = max_batch_rows;
        self
    }

    /// Rejects a batch of more rows than `--max-batch-rows` allows, before anything is read or
    /// stored.
    fn check_row_count(&self, field: &str, count: usize) -> Result<(), Status> {
        if count > self.max_batch_rows {
            return Err(batch_too_large(
                field,
                count,
                self.max_batch_rows,
                "--max-batch-rows",
            ));
        }
        Ok(())
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> MisSyncServiceServer<Self> {
        MisSyncServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Checks a batch's key, unless it is a dry run, and returns the stored result of a batch
    /// applied before under it. The same key with other content is ALREADY_EXISTS.
    async fn check_key<R: Message + Default>(
        &self,
        school: &str,
        key: &str,
        dry_run: bool,
        kind: BatchKind,
        request: &impl Message,
    ) -> Result<(Option<Idempotency>, Option<R>), Status> {
        if dry_run {
            return Ok((None, None));
        }
        let key = check_key(key)?;
        let request_sha256 = hex::encode(Sha256::digest(request.encode_to_vec()));
        let stored = store::find_batch(&self.db, school, &key)
            .await
            .map_err(|error| storage_error("reading a sync batch", error))?;
        let idempotency = Idempotency {
            key,
            request_sha256,
        };
        let Some(stored) = stored else {
            return Ok((Some(idempotency), None));
        };
        if stored.kind != kind.as_str() || stored.request_sha256 != idempotency.request_sha256 {
            return Err(reused_key(school, &idempotency.key, &stored));
        }
        let response = R::decode(stored.response.as_slice()).map_err(|error| {
            Status::internal(format!("a stored sync result cannot be read: {error}"))
        })?;
        tracing::info!(laestab = %school, key = %idempotency.key, kind = kind.as_str(), "Sync batch replayed");
        Ok((Some(idempotency), Some(response)))
    }

    /// Returns the school's name and phase for an import header: those sent, or those held.
    /// A school not held is created by a batch that `creates` (a pupils batch) with both, and
    /// is NOT_FOUND otherwise.
    async fn school_header(
        &self,
        school: &str,
        name: &str,
        phase: i32,
        creates: bool,
    ) -> Result<School, Status> {
        if !name.trim().is_empty() && phase != Phase::Unspecified as i32 {
            return Ok(School {
                laestab: school.to_owned(),
                name: name.trim().to_owned(),
                phase,
                last_mark_date: String::new(),
            });
        }
        match self
            .registers
            .clone()
            .get_school(GetSchoolRequest {
                laestab: school.to_owned(),
            })
            .await
        {
            Ok(response) => {
                let held = response.into_inner().school.unwrap_or_default();
                Ok(School {
                    laestab: school.to_owned(),
                    name: if name.trim().is_empty() {
                        held.name
                    } else {
                        name.trim().to_owned()
                    },
                    phase: if phase == Phase::Unspecified as i32 {
                        held.phase
                    } else {
                        phase
                    },
                    last_mark_date: String::new(),
                })
            }
            Err(status) if status.code() == Code::NotFound => {
                if !creates {
                    tracing::info!(laestab = %school, "Sync batch for a school not held");
                    return Err(Status::not_found(format!(
                        "school {school} not found; create it with its first SyncPupils batch, \
                         which carries its name and phase"
                    )));
                }
                let (field, value) = if name.trim().is_empty() {
                    ("school_name", name.to_owned())
                } else {
                    ("phase", phase.to_string())
                };
                Err(invalid_argument(
                    field,
                    &value,
                    format!(
                        "school {school} is not held yet; send its name and phase with its first \
                         pupils batch"
                    ),
                ))
            }
            Err(status) => Err(upstream_error("registers", status)),
        }
    }

    /// Asks the registers to replace each temporary UPN that a pupils batch sends a permanent
    /// UPN for, moving the pupil's history to it, and records what became of each. A dry run
    /// changes nothing. A change the registers reject is settled on its rows; any other failure
    /// fails the batch.
    async fn replace_upns(
        &self,
        school: &str,
        replacements: &mut HashMap<String, Replacement>,
        source_name: &str,
        dry_run: bool,
    ) -> Result<(), Status> {
        let mut ids: Vec<&String> = replacements.keys().collect();
        ids.sort_unstable();
        let mut done: HashMap<(String, String), ReplacementOutcome> = HashMap::new();
        let mut outcomes = Vec::new();
        for mis_id in ids {
            let replacement = &replacements[mis_id];
            let pair = (replacement.held.clone(), replacement.sent.clone());
            if let Some(outcome) = done.get(&pair) {
                outcomes.push((mis_id.clone(), outcome.clone()));
                continue;
            }
            let outcome = if dry_run {
                ReplacementOutcome::DryRun
            } else {
                let request = ChangeUpnRequest {
                    // Keyed by the two UPNs alone, so that a retry, or another school's MIS
                    // sending the same change, finds the change already made.
                    request_id: format!("mis_sync:{}:{}", pair.0, pair.1),
                    from_upn: pair.0.clone(),
                    to_upn: pair.1.clone(),
                    reason: format!(
                        "The MIS sent permanent UPN {} for MIS id {mis_id} at school {school}, \
                         which had temporary UPN {}",
                        pair.1, pair.0
                    ),
                    recorded_by: source_name.to_owned(),
                    source: MarkSource::MisSync as i32,
                };
                match self.registers.clone().change_upn(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        tracing::info!(laestab = %school, %mis_id, from_upn = %pair.0, to_upn = %pair.1, change = response.change_id, merged = response.merged, "Temporary UPN replaced through the sync API");
                        ReplacementOutcome::Replaced
                    }
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::InvalidArgument
                                | Code::NotFound
                                | Code::FailedPrecondition
                                | Code::AlreadyExists
                        ) =>
                    {
                        tracing::warn!(laestab = %school, %mis_id, from_upn = %pair.0, to_upn = %pair.1, code = ?status.code(), message = status.message(), "Registers rejected a UPN replacement");
                        ReplacementOutcome::Rejected(status.message().to_owned())
                    }
                    Err(status) => return Err(upstream_error("registers", status)),
                }
            };
            done.insert(pair, outcome.clone());
            outcomes.push((mis_id.clone(), outcome));
        }
        for (mis_id, outcome) in outcomes {
            if let Some(replacement) = replacements.get_mut(&mis_id) {
                replacement.outcome = outcome;
            }
        }
        Ok(())
    }

    /// Sends a partial import to the registers.
    async fn import(
        &self,
        header: ImportHeader,
        items: Vec<Item>,
    ) -> Result<ImportRegisterResponse, Status> {
        let messages = std::iter::once(Item::Header(header))
            .chain(items)
            .map(|item| ImportRegisterRequest { item: Some(item) })
            .collect::<Vec<_>>();
        self.registers
            .clone()
            .import_register(tokio_stream::iter(messages))
            .await
            .map(Response::into_inner)
            .map_err(|status| match status.code() {
                Code::InvalidArgument => status,
                _ => upstream_error("registers", status),
            })
    }

    /// Stores a batch's result under its key.
    async fn record(
        &self,
        school: &str,
        idempotency: &Idempotency,
        kind: BatchKind,
        response: &impl Message,
        source_name: &str,
        ids: Vec<(String, String)>,
    ) -> Result<(), Status> {
        store::record_batch(
            &self.db,
            &BatchRecord {
                laestab: school,
                key: &idempotency.key,
                kind: kind.as_str(),
                request_sha256: &idempotency.request_sha256,
                response: response.encode_to_vec(),
                source_name,
                ids,
            },
        )
        .await
        .map_err(|error| storage_error("recording a sync batch", error))
    }

    async fn sync_pupils_batch(
        &self,
        request: SyncPupilsRequest,
    ) -> Result<SyncPupilsResponse, Status> {
        let school = laestab("laestab", &request.laestab)?;
        self.check_row_count("pupils", request.pupils.len())?;
        let (idempotency, replay) = self
            .check_key::<SyncPupilsResponse>(
                &school,
                &request.idempotency_key,
                request.dry_run,
                BatchKind::Pupils,
                &request,
            )
            .await?;
        if let Some(mut response) = replay {
            response.replayed = true;
            return Ok(response);
        }
        let header_school = self
            .school_header(&school, &request.school_name, request.phase, true)
            .await?;
        let source_name = source_name(&request.source_name);
        tracing::info!(laestab = %school, key = %request.idempotency_key, rows = request.pupils.len(), dry_run = request.dry_run, "Sync pupils batch started");

        let mis_ids: Vec<String> = request
            .pupils
            .iter()
            .map(|pupil| pupil.mis_id.trim().to_owned())
            .collect();
        let known = store::known_ids(&self.db, &school, &mis_ids)
            .await
            .map_err(|error| storage_error("reading MIS ids", error))?;
        let mut replacements = rows::upn_replacements(&request.pupils, &known);
        self.replace_upns(&school, &mut replacements, source_name, request.dry_run)
            .await?;
        let mut mapped = rows::map_pupils(&request.pupils, &known, &replacements);
        let items: Vec<Item> = std::mem::take(&mut mapped.items)
            .into_iter()
            .map(Item::Pupil)
            .collect();
        let imported = self
            .import(
                import_header(
                    &idempotency,
                    &school,
                    header_school,
                    source_name,
                    request.dry_run,
                ),
                items,
            )
            .await?;
        let mut results = mapped.finish(&imported.items, |row| mis_ids[row].clone());
        rows::note_replacements(&mut results, &replacements);
        let response = SyncPupilsResponse {
            replayed: imported.already_applied,
            dry_run: request.dry_run,
            counts: Some(counts(&results)),
            feed_cursor: imported.feed_cursor,
            results,
        };
        if let Some(idempotency) = &idempotency {
            let mut ids: Vec<(String, String)> = response
                .results
                .iter()
                .filter(|result| result.outcome() != RowOutcome::Rejected)
                .map(|result| (result.mis_id.clone(), result.upn.clone()))
                .collect();
            // A replaced UPN's MIS id maps to the new UPN even when the registers rejected the
            // row for another reason, because the pupil's records moved.
            ids.extend(
                replacements
                    .iter()
                    .filter(|(_, replacement)| replacement.outcome == ReplacementOutcome::Replaced)
                    .map(|(mis_id, replacement)| (mis_id.clone(), replacement.sent.clone())),
            );
            // A repeated row maps its id once: one statement may not update a row twice.
            ids.sort_unstable();
            ids.dedup();
            self.record(
                &school,
                idempotency,
                BatchKind::Pupils,
                &response,
                source_name,
                ids,
            )
            .await?;
        }
        log_finished(
            &school,
            &request.idempotency_key,
            BatchKind::Pupils,
            response.counts.as_ref(),
            request.dry_run,
        );
        Ok(response)
    }

    async fn sync_marks_batch(
        &self,
        request: SyncMarksRequest,
    ) -> Result<SyncMarksResponse, Status> {
        let school = laestab("laestab", &request.laestab)?;
        self.check_row_count("marks", request.marks.len())?;
        let (idempotency, replay) = self
            .check_key::<SyncMarksResponse>(
                &school,
                &request.idempotency_key,
                request.dry_run,
                BatchKind::Marks,
                &request,
            )
            .await?;
        if let Some(mut response) = replay {
            response.replayed = true;
            return Ok(response);
        }
        let header_school = self.school_header(&school, "", 0, false).await?;
        let source_name = source_name(&request.source_name);
        tracing::info!(laestab = %school, key = %request.idempotency_key, rows = request.marks.len(), dry_run = request.dry_run, "Sync marks batch started");

        let mut mis_ids: Vec<String> = request
            .marks
            .iter()
            .map(|mark| mark.mis_id.trim().to_owned())
            .filter(|id| !id.is_empty())
            .collect();
        mis_ids.sort_unstable();
        mis_ids.dedup();
        let known = store::known_ids(&self.db, &school, &mis_ids)
            .await
            .map_err(|error| storage_error("reading MIS ids", error))?;
        let mut mapped = rows::map_marks(&request.marks, &known);
        let mut marks = std::mem::take(&mut mapped.items);
        let mut items = Vec::with_capacity(marks.len() / MARKS_PER_MESSAGE + 1);
        while !marks.is_empty() {
            let rest = marks.split_off(marks.len().min(MARKS_PER_MESSAGE));
            items.push(Item::Marks(ImportMarks { marks }));
            marks = rest;
        }
        let imported = self
            .import(
                import_header(
                    &idempotency,
                    &school,
                    header_school,
                    source_name,
                    request.dry_run,
                ),
                items,
            )
            .await?;
        let results = mapped.finish(&imported.items, |row| {
            request.marks[row].mis_id.trim().to_owned()
        });
        let response = SyncMarksResponse {
            replayed: imported.already_applied,
            dry_run: request.dry_run,
            counts: Some(counts(&results)),
            feed_cursor: imported.feed_cursor,
            results,
        };
        if let Some(idempotency) = &idempotency {
            self.record(
                &school,
                idempotency,
                BatchKind::Marks,
                &response,
                source_name,
                Vec::new(),
            )
            .await?;
        }
        log_finished(
            &school,
            &request.idempotency_key,
            BatchKind::Marks,
            response.counts.as_ref(),
            request.dry_run,
        );
        Ok(response)
    }

    async fn sync_calendar_batch(
        &self,
        request: SyncCalendarRequest,
    ) -> Result<SyncCalendarResponse, Status> {
        let calendar = request
            .calendar
            .clone()
            .ok_or_else(|| invalid_argument("calendar", "", "the calendar is required"))?;
        let school = laestab("calendar.laestab", &calendar.laestab)?;
        let (idempotency, replay) = self
            .check_key::<SyncCalendarResponse>(
                &school,
                &request.idempotency_key,
                false,
                BatchKind::Calendar,
                &request,
            )
            .await?;
        if let Some(mut response) = replay {
            response.replayed = true;
            return Ok(response);
        }
        let source_name = source_name(&request.source_name);
        let set = self
            .registers
            .clone()
            .set_calendar(SetCalendarRequest {
                calendar: Some(calendar),
                changed_by: source_name.to_owned(),
                changed_by_position: "MIS".to_owned(),
                source: MarkSource::MisSync as i32,
            })
            .await
            .map(Response::into_inner)
            .map_err(|status| match status.code() {
                Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => status,
                _ => upstream_error("registers", status),
            })?;
        let response = SyncCalendarResponse {
            replayed: false,
            calendar: set.calendar,
            marks_closed: set.marks_closed,
            feed_cursor: set.feed_cursor,
        };
        if let Some(idempotency) = &idempotency {
            self.record(
                &school,
                idempotency,
                BatchKind::Calendar,
                &response,
                source_name,
                Vec::new(),
            )
            .await?;
        }
        tracing::info!(laestab = %school, key = %request.idempotency_key, marks_closed = set.marks_closed, "Sync calendar applied");
        Ok(response)
    }

    /// Applies one batch of a stream.
    async fn stream_batch(
        &self,
        caller: &Caller,
        index: i32,
        request: StreamSyncRequest,
    ) -> Result<StreamSyncResponse, Status> {
        use stream_sync_request::Batch;
        use stream_sync_response::Result as BatchResult;
        let school = match &request.batch {
            Some(Batch::Pupils(batch)) => laestab("laestab", &batch.laestab)?,
            Some(Batch::Marks(batch)) => laestab("laestab", &batch.laestab)?,
            Some(Batch::Calendar(batch)) => laestab(
                "calendar.laestab",
                &batch
                    .calendar
                    .as_ref()
                    .map(|calendar| calendar.laestab.clone())
                    .unwrap_or_default(),
            )?,
            None => String::new(),
        };
        if !school.is_empty() {
            caller.school(&school)?;
        }
        let result = match request.batch {
            Some(Batch::Pupils(batch)) => BatchResult::Pupils(self.sync_pupils_batch(batch).await?),
            Some(Batch::Calendar(batch)) => {
                BatchResult::Calendar(self.sync_calendar_batch(batch).await?)
            }
            Some(Batch::Marks(batch)) => BatchResult::Marks(self.sync_marks_batch(batch).await?),
            None => {
                return Err(invalid_argument(
                    "batch",
                    &index.to_string(),
                    "each message must carry a pupils, calendar or marks batch",
                ));
            }
        };
        Ok(StreamSyncResponse {
            batch_index: index,
            result: Some(result),
        })
    }
}

fn import_header(
    idempotency: &Option<Idempotency>,
    school: &str,
    header_school: School,
    source_name: &str,
    dry_run: bool,
) -> ImportHeader {
    ImportHeader {
        // The registers keep their own record of the key, so a batch whose result was lost
        // here is not applied twice.
        request_id: idempotency
            .as_ref()
            .map(|idempotency| format!("sync:{school}:{}", idempotency.key))
            .unwrap_or_default(),
        school: Some(header_school),
        source: MarkSource::MisSync as i32,
        source_name: source_name.to_owned(),
        recorded_by: source_name.to_owned(),
        partial: true,
        dry_run,
    }
}

fn source_name(sent: &str) -> &str {
    let trimmed = sent.trim();
    if trimmed.is_empty() {
        DEFAULT_SOURCE
    } else {
        trimmed
    }
}

/// Checks an idempotency key: present, at most 128 characters, printable ASCII.
fn check_key(key: &str) -> Result<String, Status> {
    if key.is_empty() {
        return Err(invalid_argument(
            "idempotency_key",
            key,
            "an idempotency key is required for every batch that is not a dry run, such as a \
             UUID or the SHA-256 of the rows",
        ));
    }
    if key.len() > MAX_ID_CHARS || !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid_argument(
            "idempotency_key",
            key,
            format!(
                "an idempotency key is at most {MAX_ID_CHARS} printable ASCII characters, \
                 without spaces"
            ),
        ));
    }
    Ok(key.to_owned())
}

fn reused_key(school: &str, key: &str, stored: &StoredBatch) -> Status {
    let message = format!(
        "idempotency key {key:?} was used at school {school} on {} for a {} batch with other \
         content; send new rows under a new key",
        stored.applied_at.format("%Y-%m-%d %H:%M:%S UTC"),
        stored.kind
    );
    tracing::warn!(laestab = %school, key, "Sync batch rejected: idempotency key reused with other content");
    Status::already_exists(message)
}

fn log_finished(
    school: &str,
    key: &str,
    kind: BatchKind,
    counts: Option<&rollcall_api::mis_adapter::v1::RowCounts>,
    dry_run: bool,
) {
    let counts = counts.cloned().unwrap_or_default();
    tracing::info!(
        laestab = %school,
        key,
        kind = kind.as_str(),
        applied = counts.applied,
        unchanged = counts.unchanged,
        rejected = counts.rejected,
        dry_run,
        "Sync batch finished"
    );
}

/// Logs a batch that failed, with its school and key, so that the batch sent again with the
/// same key can be matched to the failure.
fn log_failed(school: &str, key: &str, kind: BatchKind, status: &Status) {
    tracing::warn!(
        laestab = %school,
        key,
        kind = kind.as_str(),
        code = ?status.code(),
        message = status.message(),
        "Sync batch failed"
    );
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<StreamSyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MisSyncService for MisSync {
    async fn sync_pupils(
        &self,
        request: Request<SyncPupilsRequest>,
    ) -> Result<Response<SyncPupilsResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&school)?;
        let key = request.get_ref().idempotency_key.clone();
        self.sync_pupils_batch(request.into_inner())
            .await
            .inspect_err(|status| log_failed(&school, &key, BatchKind::Pupils, status))
            .map(Response::new)
    }

    async fn sync_calendar(
        &self,
        request: Request<SyncCalendarRequest>,
    ) -> Result<Response<SyncCalendarResponse>, Status> {
        let school = request
            .get_ref()
            .calendar
            .as_ref()
            .map(|calendar| calendar.laestab.clone())
            .unwrap_or_default();
        let school = laestab("calendar.laestab", &school)?;
        caller(&request)?.school(&school)?;
        let key = request.get_ref().idempotency_key.clone();
        self.sync_calendar_batch(request.into_inner())
            .await
            .inspect_err(|status| log_failed(&school, &key, BatchKind::Calendar, status))
            .map(Response::new)
    }

    async fn sync_marks(
        &self,
        request: Request<SyncMarksRequest>,
    ) -> Result<Response<SyncMarksResponse>, Status> {
        let school = laestab("laestab", &request.get_ref().laestab)?;
        caller(&request)?.school(&school)?;
        let key = request.get_ref().idempotency_key.clone();
        self.sync_marks_batch(request.into_inner())
            .await
            .inspect_err(|status| log_failed(&school, &key, BatchKind::Marks, status))
            .map(Response::new)
    }

    type StreamSyncStream = SyncStream;

    async fn stream_sync(
        &self,
        request: Request<Streaming<StreamSyncRequest>>,
    ) -> Result<Response<Self::StreamSyncStream>, Status> {
        let caller = caller(&request)?;
        let mut incoming = request.into_inner();
        let service = self.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        // The batches are applied in a task of their own, which keeps the call's span so that
        // their calls to the registers join the call's trace.
        let span = tracing::Span::current();
        tokio::spawn(async move {
            let mut index = 0_i32;
            loop {
                let message = match incoming.next().await {
                    None => break,
                    Some(Err(status)) => {
                        // A message over --max-message-bytes ends up here, and the client
                        // learns of it only if the status is sent back.
                        tracing::warn!(batches = index, code = ?status.code(), message = status.message(), "Sync stream broke off");
                        let _ = sender.send(Err(status)).await;
                        break;
                    }
                    Some(Ok(message)) => message,
                };
                let result =
                    service
                        .stream_batch(&caller, index, message)
                        .await
                        .map_err(|status| {
                            Status::with_details(
                                status.code(),
                                format!("batch {index}: {}", status.message()),
                                status.details().to_vec().into(),
                            )
                        });
                let failed = result.is_err();
                if let Err(status) = &result {
                    tracing::warn!(batch = index, code = ?status.code(), message = status.message(), "Sync stream ended by a rejected batch");
                }
                if sender.send(result).await.is_err() || failed {
                    break;
                }
                index += 1;
            }
        }.instrument(span));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn list_pupil_ids(
        &self,
        request: Request<ListPupilIdsRequest>,
    ) -> Result<Response<ListPupilIdsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let school = laestab("laestab", &request.laestab)?;
        caller.school(&school)?;
        let page_size = match request.page_size {
            0 => 1_000,
            size if (1..=10_000).contains(&size) => i64::from(size),
            size => {
                return Err(invalid_argument(
                    "page_size",
                    &size.to_string(),
                    "page_size is between 1 and 10,000, or 0 for the default of 1,000",
                ));
            }
        };
        let rows = store::list_ids(&self.db, &school, &request.page_token, page_size + 1)
            .await
            .map_err(|error| storage_error("listing MIS ids", error))?;
        let more = rows.len() as i64 > page_size;
        let ids: Vec<PupilId> = rows
            .into_iter()
            .take(usize::try_from(page_size).unwrap_or(usize::MAX))
            .map(|row| PupilId {
                mis_id: row.mis_id,
                upn: row.upn,
                first_seen_at: Some(timestamp(row.first_seen_at)),
                updated_at: Some(timestamp(row.updated_at)),
            })
            .collect();
        let next_page_token = if more {
            ids.last().map(|id| id.mis_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListPupilIdsResponse {
            ids,
            next_page_token,
        }))
    }
}
