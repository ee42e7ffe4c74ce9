//! The runtime every rollcall service shares: storage, telemetry, shutdown, health and the
//! mapping of errors to gRPC statuses.

pub mod grpc;
pub mod limits;
pub mod services;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod tls;

pub use services::{Peers, ServiceName};
pub use storage::{Db, StorageConfig, WriteTransaction};
