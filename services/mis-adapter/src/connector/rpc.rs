//! The connector RPCs: ListConnectors, RunConnector, ListConnectorRuns and
//! ListConnectorDeletions.

use rollcall_api::convert::timestamp;
use rollcall_api::mis_adapter::v1::{
    Connector, ConnectorDeletion, ConnectorRejection, ConnectorRun, ConnectorRunStatus,
    ConnectorRunTrigger, ListConnectorDeletionsRequest, ListConnectorDeletionsResponse,
    ListConnectorRunsRequest, ListConnectorRunsResponse, ListConnectorsResponse, RowCounts,
    RunConnectorRequest, RunConnectorResponse,
};
use rollcall_api::types::v1::Session;
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, laestab, storage_error};
use tonic::Status;

use crate::connector::run::{Rejection, StartError};
use crate::connector::store::{self, DeletionRow, RunRow};
use crate::connector::{Connectors, SchoolConnector};

const DEFAULT_RUNS_PAGE: i64 = 20;
const DEFAULT_DELETIONS_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

/// Returns NOT_FOUND for a school without a connector, saying how to add one.
fn no_connector(laestab: &str) -> Status {
    tracing::info!(%laestab, "No connector for the school");
    Status::not_found(format!(
        "school {laestab} has no connector: add a [[school]] table with laestab = \
         \"{laestab}\" to the connector settings (rollcall serve --connectors FILE) and \
         restart rollcall; see docs/connectors.md"
    ))
}

impl Connectors {
    fn find(&self, request_laestab: &str) -> Result<&SchoolConnector, Status> {
        let laestab = laestab("laestab", request_laestab)?;
        self.school(&laestab)
            .map(AsRef::as_ref)
            .ok_or_else(|| no_connector(&laestab))
    }

    pub(crate) async fn list_connectors(&self) -> Result<ListConnectorsResponse, Status> {
        let mut connectors = Vec::with_capacity(self.schools.len());
        let now = chrono::Utc::now();
        for school in self.schools.iter() {
            let config = &school.config;
            let laestab = config.laestab.as_str();
            let state = store::state(&self.db, laestab)
                .await
                .map_err(|error| storage_error("reading a connector's state", error))?;
            let last_run = store::runs(&self.db, laestab, "", 1)
                .await
                .map_err(|error| storage_error("reading a connector's runs", error))?
                .into_iter()
                .next();
            let next_run_at = match config.poll_interval() {
                Some(interval) => Some(
                    self.next_run_at(laestab, interval)
                        .await
                        .map_err(|error| storage_error("reading a connector's runs", error))?
                        .unwrap_or(now),
                ),
                None => None,
            };
            let to_review = store::deletions_to_review(&self.db, laestab)
                .await
                .map_err(|error| storage_error("counting deletions", error))?;
            connectors.push(Connector {
                laestab: laestab.to_owned(),
                base_url: config.base_url.clone(),
                school_id: config.school_id.clone(),
                poll_interval_seconds: i32::try_from(config.poll_interval_seconds)
                    .unwrap_or(i32::MAX),
                page_size: i32::try_from(config.page_size).unwrap_or(i32::MAX),
                requests_per_minute: i32::try_from(config.requests_per_minute).unwrap_or(i32::MAX),
                write_back: config.write_back,
                last_run: last_run.map(run_proto),
                next_run_at: next_run_at.map(timestamp),
                running: state.as_ref().is_some_and(|state| state.is_running(now)),
                students_watermark: state
                    .as_ref()
                    .and_then(|state| state.students_after)
                    .map(timestamp),
                marks_watermark: state
                    .as_ref()
                    .and_then(|state| state.marks_after)
                    .map(timestamp),
                deletions_watermark: state
                    .as_ref()
                    .and_then(|state| state.deletions_after)
                    .map(timestamp),
                deletions_to_review: i32::try_from(to_review).unwrap_or(i32::MAX),
            });
        }
        Ok(ListConnectorsResponse { connectors })
    }

    pub(crate) async fn run_connector(
        &self,
        request: RunConnectorRequest,
    ) -> Result<RunConnectorResponse, Status> {
        let school = self.find(&request.laestab)?;
        match self.run_now(school, request.full).await {
            Ok(run) => Ok(RunConnectorResponse {
                run: Some(run_proto(run)),
            }),
            Err(StartError::Busy(state)) => Err(failed_precondition(format!(
                "school {}'s connector is running on another server (run {}, lease until {}); \
                 try again once it has ended",
                school.config.laestab,
                state.running_run_id.unwrap_or_default(),
                state
                    .running_until
                    .map(|until| until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default()
            ))),
            Err(StartError::Storage(error)) => Err(storage_error("running a connector", error)),
        }
    }

    pub(crate) async fn list_connector_runs(
        &self,
        request: ListConnectorRunsRequest,
    ) -> Result<ListConnectorRunsResponse, Status> {
        let school = self.find(&request.laestab)?;
        let limit = page_size(request.page_size, DEFAULT_RUNS_PAGE)?;
        if !request.page_token.is_empty() && !is_run_id(&request.page_token) {
            return Err(invalid_argument(
                "page_token",
                &request.page_token,
                "not a token from an earlier ListConnectorRuns call",
            ));
        }
        let mut rows = store::runs(
            &self.db,
            &school.config.laestab,
            &request.page_token,
            limit + 1,
        )
        .await
        .map_err(|error| storage_error("listing connector runs", error))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|row| row.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListConnectorRunsResponse {
            runs: rows.into_iter().map(run_proto).collect(),
            next_page_token,
        })
    }

    pub(crate) async fn list_connector_deletions(
        &self,
        request: ListConnectorDeletionsRequest,
    ) -> Result<ListConnectorDeletionsResponse, Status> {
        let school = self.find(&request.laestab)?;
        let limit = page_size(request.page_size, DEFAULT_DELETIONS_PAGE)?;
        let offset = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse::<i64>()
                .ok()
                .filter(|offset| *offset > 0)
                .ok_or_else(|| {
                    invalid_argument(
                        "page_token",
                        &request.page_token,
                        "not a token from an earlier ListConnectorDeletions call",
                    )
                })?
        };
        let mut rows = store::deletions(&self.db, &school.config.laestab, offset, limit + 1)
            .await
            .map_err(|error| storage_error("listing connector deletions", error))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            (offset + limit).to_string()
        } else {
            String::new()
        };
        Ok(ListConnectorDeletionsResponse {
            deletions: rows.into_iter().map(deletion_proto).collect(),
            next_page_token,
        })
    }
}

fn page_size(requested: i32, default: i64) -> Result<i64, Status> {
    match requested {
        0 => Ok(default),
        size if size < 0 => Err(invalid_argument(
            "page_size",
            &size.to_string(),
            format!("must not be negative; use 0 for the default of {default}"),
        )),
        size => Ok(i64::from(size).min(MAX_PAGE)),
    }
}

fn is_run_id(token: &str) -> bool {
    token
        .strip_prefix("run-")
        .is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
}

/// Converts a stored run to its message.
pub(crate) fn run_proto(row: RunRow) -> ConnectorRun {
    let rejections: Vec<Rejection> = serde_json::from_str(&row.rejections).unwrap_or_default();
    ConnectorRun {
        id: row.id,
        laestab: row.laestab,
        trigger: match row.run_trigger.as_str() {
            store::SCHEDULED => ConnectorRunTrigger::Scheduled,
            store::ON_DEMAND => ConnectorRunTrigger::OnDemand,
            _ => ConnectorRunTrigger::Unspecified,
        } as i32,
        status: match row.status.as_str() {
            store::RUNNING => ConnectorRunStatus::Running,
            store::SUCCEEDED => ConnectorRunStatus::Succeeded,
            store::FAILED => ConnectorRunStatus::Failed,
            _ => ConnectorRunStatus::Unspecified,
        } as i32,
        started_at: Some(timestamp(row.started_at)),
        finished_at: row.finished_at.map(timestamp),
        requests: row.requests,
        retries: row.retries,
        pages: row.pages,
        pupils: Some(RowCounts {
            applied: row.pupils_applied,
            unchanged: row.pupils_unchanged,
            rejected: row.pupils_rejected,
        }),
        marks: Some(RowCounts {
            applied: row.marks_applied,
            unchanged: row.marks_unchanged,
            rejected: row.marks_rejected,
        }),
        marks_echoed: row.marks_echoed,
        deletions: row.deletions,
        error: row.error,
        rejections: rejections
            .into_iter()
            .map(|rejection| ConnectorRejection {
                resource: rejection.resource,
                record_id: rejection.record_id,
                mis_id: rejection.mis_id,
                reason_code: rejection.reason_code,
                field: rejection.field,
                value: rejection.value,
                reason: rejection.reason,
            })
            .collect(),
        full: row.full_read,
    }
}

fn deletion_proto(row: DeletionRow) -> ConnectorDeletion {
    ConnectorDeletion {
        laestab: row.laestab,
        record_type: row.record_type,
        record_id: row.record_id,
        mis_id: row.mis_id,
        upn: row.upn,
        date: row.session_date,
        session: match row.session.as_str() {
            "AM" => Session::Am,
            "PM" => Session::Pm,
            _ => Session::Unspecified,
        } as i32,
        deleted_at: Some(timestamp(row.deleted_at)),
        restored_at: row.restored_at.map(timestamp),
        action: row.action,
        seen_at: Some(timestamp(row.seen_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_tokens_are_run_ids() {
        assert!(is_run_id("run-00000042"));
        assert!(!is_run_id("run-"));
        assert!(!is_run_id("42"));
    }

    #[test]
    fn page_sizes_are_checked() {
        assert_eq!(page_size(0, 20).expect("default"), 20);
        assert_eq!(page_size(5_000, 20).expect("capped"), MAX_PAGE);
        let error = page_size(-1, 20).expect_err("negative");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }
}
