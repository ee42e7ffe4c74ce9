//! Write-back of decisions made in rollcall to each school's MIS.
//!
//! A decision is a mark version from staff or from a parent's report, at a school whose
//! connector has `write_back = true`. The follower reads decisions from the registers change
//! feed, from a cursor stored here, and queues them. The worker sends each school's queued
//! decisions to its MIS as a job, one request to the broker's session attendance endpoint,
//! and records the outcome of each mark: accepted, or rejected with the MIS's reason. A job
//! that fails is retried with capped exponential backoff, and after its last attempt waits
//! for RetryWritebackJob.
//!
//! The value written back for each session is remembered, so that when the connector pulls
//! the MIS's copy of it, the copy is not applied as a new register version (see
//! [`store::is_echo`]). A pulled mark is never a decision, so nothing loops back to the MIS.

pub(crate) mod follower;
pub(crate) mod rpc;
pub(crate) mod store;
pub(crate) mod worker;

use std::collections::HashMap;

use rollcall_api::client::Channel;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use tokio::task::JoinHandle;

use crate::connector::Connectors;
use crate::connector::store as connector_store;

/// Starts the follower and the worker when any school has write-back on, and returns their
/// tasks.
pub(crate) async fn start(
    connectors: &Connectors,
    registers: RegistersServiceClient<Channel>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut enabled_since = HashMap::new();
    for school in connectors.schools.iter() {
        if !school.config.write_back {
            continue;
        }
        let state = connector_store::state(&connectors.db, &school.config.laestab)
            .await
            .map_err(|error| anyhow::anyhow!("cannot read the connectors' state: {error}"))?;
        if let Some(since) = state.and_then(|state| state.writeback_enabled_at) {
            enabled_since.insert(school.config.laestab.clone(), since);
        }
    }
    if enabled_since.is_empty() {
        return Ok(Vec::new());
    }
    let wake = connectors.writeback_wake.clone();
    let follower = follower::Follower {
        db: connectors.db.clone(),
        registers,
        enabled_since,
        wake: wake.clone(),
    };
    let worker = worker::Worker {
        db: connectors.db.clone(),
        connectors: connectors.clone(),
        config: connectors.config.writeback.clone(),
        wake,
    };
    Ok(vec![follower.spawn(), worker.spawn()])
}
