//! Delivery of referral packs to the local authority.
//!
//! DeliverReferralPack stores the pack once and queues one delivery per destination in the
//! settings: a folder, or an HTTPS endpoint that receives signed requests. A background
//! worker delivers each, claiming it under a lease, logging every attempt and retrying with
//! capped exponential backoff and jitter. A delivery that runs out of attempts, or that the
//! receiver rejects, stays failed until RetryDelivery. The referral id is the idempotency key,
//! so a resend after a crash, or a rebuilt pack, never opens a second referral.

pub(crate) mod config;
pub(crate) mod destination;
pub(crate) mod directory;
pub(crate) mod https;
pub(crate) mod rpc;
pub(crate) mod store;
pub(crate) mod worker;

use std::sync::Arc;

use rollcall_runtime::Db;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use config::{DeliveryConfig, DestinationConfig, DestinationKind, RetryConfig, WorkerConfig};

use crate::delivery::destination::Destinations;
use crate::delivery::worker::Worker;

/// The delivery part of the MIS adapter: its storage, destinations and worker.
#[derive(Debug, Clone)]
pub(crate) struct Deliveries {
    pub(crate) db: Db,
    pub(crate) destinations: Destinations,
    pub(crate) config: DeliveryConfig,
    pub(crate) wake: Arc<Notify>,
}

impl Deliveries {
    /// Sets up the destinations of `config`, reading their keys and certificates.
    pub(crate) fn new(db: Db, config: DeliveryConfig) -> anyhow::Result<Self> {
        Ok(Self {
            db,
            destinations: Destinations::from_config(&config)?,
            config,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Starts the worker. It runs without destinations too, so that deliveries queued under
    /// earlier settings fail with a clear error instead of waiting for ever.
    pub(crate) fn spawn_worker(&self) -> JoinHandle<()> {
        Worker {
            db: self.db.clone(),
            destinations: self.destinations.clone(),
            config: self.config.clone(),
            wake: self.wake.clone(),
        }
        .spawn()
    }
}
