//! Sends the batches over one StreamSync stream while the files are still being read, and
//! counts each batch's results as they come back.

use std::sync::Arc;

use anyhow::bail;
use indicatif::ProgressBar;
use rollcall_api::client::Channel;
use rollcall_api::mis_adapter::v1::mis_sync_service_client::MisSyncServiceClient;
use rollcall_api::mis_adapter::v1::stream_sync_response::Result as BatchOutcome;
use rollcall_api::mis_adapter::v1::{StreamSyncRequest, StreamSyncResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::batches::{BatchSent, BatchSettings, Event, read_files};
use super::plan::FilePlan;
use super::profile::Profile;
use super::summary::{BatchResult, Summary};
use crate::client::Clients;
use crate::retry::CallFailed;

/// Batches sent ahead of their results. Enough to keep the server busy while the client
/// reads; few enough to bound memory to a few batches.
const BATCHES_IN_FLIGHT: usize = 4;

/// Reader events held before the receiver takes them, mostly rejected rows.
const EVENTS_BUFFERED: usize = 256;

/// Reads every file and sends its batches, recording each result in `summary`.
pub(crate) async fn send_all(
    clients: &Clients,
    plans: Vec<FilePlan>,
    profile: Profile,
    settings: BatchSettings,
    summary: &mut Summary,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    let plans = Arc::new(plans);
    let (request_sender, request_receiver) = mpsc::channel(BATCHES_IN_FLIGHT);
    let (event_sender, mut events) = mpsc::channel(EVENTS_BUFFERED);
    let dry_run = settings.dry_run;
    let reader = {
        let plans = Arc::clone(&plans);
        tokio::task::spawn_blocking(move || {
            read_files(&plans, &profile, &settings, &request_sender, &event_sender)
        })
    };

    let mut stream = SyncStream {
        client: clients.mis_sync.clone(),
        requests: Some(request_receiver),
        responses: None,
        next_index: 0,
    };
    let mut applied_batches = 0;
    while let Some(event) = events.recv().await {
        match event {
            Event::Rejected(rejection) => {
                let file = plans
                    .iter()
                    .position(|plan| plan.name == rejection.file)
                    .unwrap_or_default();
                summary.reject_locally(file, rejection);
            }
            Event::FileRead {
                file,
                rows,
                position,
            } => {
                summary.files[file].rows = rows;
                progress.set_position(position);
            }
            Event::Batch(sent) => {
                let plan = &plans[sent.file];
                progress.set_message(plan.name.clone());
                let response = stream
                    .result(&sent)
                    .await
                    .map_err(|error| batch_failed(plan, &sent, applied_batches, dry_run, error))?;
                let (replayed, feed_cursor, results) = match &response.result {
                    Some(BatchOutcome::Pupils(result)) => {
                        (result.replayed, result.feed_cursor, &result.results)
                    }
                    Some(BatchOutcome::Marks(result)) => {
                        (result.replayed, result.feed_cursor, &result.results)
                    }
                    _ => bail!(
                        "{}: the server returned no pupils or marks result for batch {}; \
                         import the file again",
                        plan.name,
                        sent.number
                    ),
                };
                summary.record_batch(
                    plan,
                    &sent,
                    &BatchResult {
                        replayed,
                        feed_cursor,
                        results,
                    },
                )?;
                applied_batches += 1;
                progress.set_position(sent.position);
            }
        }
    }
    reader.await??;
    Ok(())
}

/// One StreamSync call, opened when the first batch is ready.
struct SyncStream {
    client: MisSyncServiceClient<Channel>,
    requests: Option<mpsc::Receiver<StreamSyncRequest>>,
    responses: Option<Streaming<StreamSyncResponse>>,
    next_index: i32,
}

impl SyncStream {
    /// Waits for the result of the next batch, whose request is already on the stream.
    async fn result(&mut self, sent: &BatchSent) -> anyhow::Result<StreamSyncResponse> {
        if self.responses.is_none() {
            let Some(requests) = self.requests.take() else {
                bail!("the stream to the server is closed");
            };
            let responses = self
                .client
                .stream_sync(ReceiverStream::new(requests))
                .await
                .map_err(CallFailed::from)?
                .into_inner();
            self.responses = Some(responses);
        }
        let Some(responses) = self.responses.as_mut() else {
            bail!("the stream to the server is closed");
        };
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            // A server that stops while the stream is open ends it early, so the batch may
            // succeed when sent again.
            Ok(None) => {
                return Err(CallFailed {
                    code: tonic::Code::Unavailable,
                    message: format!(
                        "the server ended the stream before returning the result of batch {}",
                        sent.number
                    ),
                }
                .into());
            }
            Err(status) => return Err(CallFailed::from(status).into()),
        };
        if response.batch_index != self.next_index {
            bail!(
                "the server returned the result of batch {} of the stream when batch {} was expected",
                response.batch_index,
                self.next_index
            );
        }
        self.next_index += 1;
        Ok(response)
    }
}

/// Explains a failed batch: where in the file it was, and what of the import was stored. The
/// status code of a failed call is kept, so that the caller can tell whether to retry.
fn batch_failed(
    plan: &FilePlan,
    sent: &BatchSent,
    applied_batches: usize,
    dry_run: bool,
    error: anyhow::Error,
) -> anyhow::Error {
    let first = sent.origins.first().map_or(0, |origin| origin.line);
    let last = sent.origins.last().map_or(0, |origin| origin.line);
    let stored = if dry_run {
        "This was a dry run, so nothing was stored.".to_owned()
    } else if applied_batches == 0 {
        "Nothing was stored.".to_owned()
    } else {
        format!(
            "The {applied_batches} batches before it were stored; run the same command again to \
             finish, and those batches will be recognised and not stored twice."
        )
    };
    let message = format!(
        "{}: batch {} (lines {first} to {last}) failed: {error:#}. {stored}",
        plan.name, sent.number
    );
    let code = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<CallFailed>().map(|failed| failed.code));
    match code {
        Some(code) => CallFailed { code, message }.into(),
        None => anyhow::anyhow!(message),
    }
}
