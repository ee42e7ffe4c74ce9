//! A do-nothing MIS sync server: the same gRPC service as rollcall's, whose handlers decode the
//! request and return an empty response. It measures what the transport, the encoding and the
//! load generator cost on their own.

use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context as _;
use rollcall_api::mis_adapter::v1::mis_sync_service_server::{
    MisSyncService, MisSyncServiceServer,
};
use rollcall_api::mis_adapter::v1::{
    ListPupilIdsRequest, ListPupilIdsResponse, StreamSyncRequest, StreamSyncResponse,
    SyncCalendarRequest, SyncCalendarResponse, SyncMarksRequest, SyncMarksResponse,
    SyncPupilsRequest, SyncPupilsResponse,
};
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Largest message accepted, as rollcall's MIS sync service accepts.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
struct DoNothing;

#[tonic::async_trait]
impl MisSyncService for DoNothing {
    async fn sync_pupils(
        &self,
        _request: Request<SyncPupilsRequest>,
    ) -> Result<Response<SyncPupilsResponse>, Status> {
        Ok(Response::new(SyncPupilsResponse::default()))
    }

    async fn sync_calendar(
        &self,
        _request: Request<SyncCalendarRequest>,
    ) -> Result<Response<SyncCalendarResponse>, Status> {
        Ok(Response::new(SyncCalendarResponse::default()))
    }

    async fn sync_marks(
        &self,
        _request: Request<SyncMarksRequest>,
    ) -> Result<Response<SyncMarksResponse>, Status> {
        Ok(Response::new(SyncMarksResponse::default()))
    }

    type StreamSyncStream =
        Pin<Box<dyn Stream<Item = Result<StreamSyncResponse, Status>> + Send + 'static>>;

    async fn stream_sync(
        &self,
        _request: Request<Streaming<StreamSyncRequest>>,
    ) -> Result<Response<Self::StreamSyncStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }

    async fn list_pupil_ids(
        &self,
        _request: Request<ListPupilIdsRequest>,
    ) -> Result<Response<ListPupilIdsResponse>, Status> {
        Ok(Response::new(ListPupilIdsResponse::default()))
    }
}

/// A running do-nothing server, stopped when dropped.
#[derive(Debug)]
pub(crate) struct NullServer {
    pub(crate) url: String,
    _stop: oneshot::Sender<()>,
}

/// Starts the do-nothing server on a free port of 127.0.0.1.
pub(crate) async fn start() -> anyhow::Result<NullServer> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("failed to bind a port on 127.0.0.1 for the do-nothing server")?;
    let address = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let service = MisSyncServiceServer::new(DoNothing)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            eprintln!("the do-nothing server failed: {error}");
        }
    });
    Ok(NullServer {
        url: format!("http://{address}"),
        _stop: stop,
    })
}
