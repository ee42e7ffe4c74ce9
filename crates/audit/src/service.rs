//! The gRPC service that lists audit events and verifies the hash chain.

use rollcall_api::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use rollcall_api::audit::v1::{
    AuditEvent as PbAuditEvent, BrokenLink as PbBrokenLink, ListAuditEventsRequest,
    ListAuditEventsResponse, VerifyAuditLogRequest, VerifyAuditLogResponse,
};
use rollcall_api::convert::{from_timestamp, timestamp};
use rollcall_domain::Upn;
use rollcall_runtime::grpc::{invalid_argument, laestab, storage_error};
use tonic::{Request, Response, Status};

use crate::store::{AuditStore, Checkpoint, EventFilter, StoredEvent};

/// The page size when a request gives none.
const DEFAULT_PAGE_SIZE: i64 = 100;
/// The maximum page size.
const MAX_PAGE_SIZE: i64 = 1_000;

/// The audit service, over the same store the authentication layer appends to.
#[derive(Debug, Clone)]
pub struct Audit {
    store: AuditStore,
}

impl Audit {
    /// Creates the service over `store`.
    pub fn new(store: AuditStore) -> Self {
        Audit { store }
    }

    /// Wraps the service in its tonic server.
    pub fn into_server(self) -> AuditServiceServer<Self> {
        AuditServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AuditService for Audit {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let caller = rollcall_auth::caller(&request)?;
        let request = request.into_inner();
        let filter = filter_of(&request)?;
        if !filter.laestab.is_empty() {
            caller.school(&filter.laestab)?;
        }
        let limit = match i64::from(request.page_size) {
            size if size <= 0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let mut events = self
            .store
            .list(&filter, limit + 1)
            .await
            .map_err(|error| storage_error("listing audit events", error))?;
        let next_page_token = if events.len() as i64 > limit {
            events.truncate(limit as usize);
            events
                .last()
                .map(|event| event.id.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };

        // The events name pupils, so the audit record of this read names the pupil asked
        // about and every pupil in the events returned.
        caller.read_pupils(
            std::iter::once(filter.upn.as_str()).chain(
                events
                    .iter()
                    .flat_map(|event| event.event.pupils.iter().map(String::as_str)),
            ),
        );
        Ok(Response::new(ListAuditEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn verify_audit_log(
        &self,
        request: Request<VerifyAuditLogRequest>,
    ) -> Result<Response<VerifyAuditLogResponse>, Status> {
        rollcall_auth::caller(&request)?;
        let request = request.into_inner();
        let checkpoint = checkpoint_of(&request)?;
        let verification = self
            .store
            .verify(checkpoint.as_ref())
            .await
            .map_err(|error| storage_error("verifying the audit log", error))?;
        Ok(Response::new(VerifyAuditLogResponse {
            events_checked: verification.events_checked,
            first_broken_link: verification.first_broken_link.map(|link| PbBrokenLink {
                event_id: link.event_id,
                problem: link.problem,
            }),
            last_event_id: verification.last_event_id,
            last_hash: verification.last_hash,
        }))
    }
}

/// Checks the request's filters and returns them as the store takes them.
fn filter_of(request: &ListAuditEventsRequest) -> Result<EventFilter, Status> {
    let upn = match request.upn.trim() {
        "" => String::new(),
        value => Upn::parse(value)
            .map_err(|error| invalid_argument("upn", &request.upn, error.to_string()))?
            .as_str()
            .to_owned(),
    };
    let school = match request.laestab.trim() {
        "" => String::new(),
        value => laestab("laestab", value)?,
    };
    let time = |field: &str, value: &Option<prost_types::Timestamp>| match value {
        None => Ok(None),
        Some(at) => from_timestamp(at)
            .map(Some)
            .ok_or_else(|| invalid_argument(field, &format!("{at:?}"), "not a representable time")),
    };
    let since = time("since", &request.since)?;
    let until = time("until", &request.until)?;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(invalid_argument(
            "until",
            &until.to_rfc3339(),
            format!("until is before since ({})", since.to_rfc3339()),
        ));
    }
    let before_id = match request.page_token.trim() {
        "" => None,
        token => Some(
            token
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    invalid_argument(
                        "page_token",
                        token,
                        "not a next_page_token from an earlier call",
                    )
                })?,
        ),
    };
    Ok(EventFilter {
        upn,
        subject: request.subject.trim().to_owned(),
        laestab: school,
        since,
        until,
        before_id,
    })
}

/// Checks the request's checkpoint, if it has one.
fn checkpoint_of(request: &VerifyAuditLogRequest) -> Result<Option<Checkpoint>, Status> {
    let hash = request.checkpoint_hash.trim();
    match (request.checkpoint_event_id, hash.is_empty()) {
        (0, true) => Ok(None),
        (id, _) if id <= 0 => Err(invalid_argument(
            "checkpoint_event_id",
            &id.to_string(),
            "an event id is 1 or more",
        )),
        (_, true) => Err(invalid_argument(
            "checkpoint_hash",
            hash,
            "give the hash noted with the checkpoint event",
        )),
        (id, false) => {
            if hash.len() != 64 || !hash.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(invalid_argument(
                    "checkpoint_hash",
                    hash,
                    "expected 64 hexadecimal digits, the SHA-256 an earlier check printed",
                ));
            }
            Ok(Some(Checkpoint {
                event_id: id,
                hash: hash.to_ascii_lowercase(),
            }))
        }
    }
}

fn event_to_proto(stored: StoredEvent) -> PbAuditEvent {
    let event = stored.event;
    PbAuditEvent {
        id: stored.id,
        at: Some(timestamp(event.at)),
        subject: event.subject,
        roles: event
            .roles
            .split(',')
            .map(str::trim)
            .filter(|role| !role.is_empty())
            .map(str::to_owned)
            .collect(),
        method: event.method,
        access: event.access,
        peer: event.peer,
        outcome: event.outcome,
        schools: event.schools,
        pupils: event.pupils,
    }
}
