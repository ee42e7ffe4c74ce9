//! Audit events: who did what, when and from where. The layer makes one for every change and
//! every read of pupils' records by a person, and for every refused call, and hands it to an
//! [`AuditSink`] that stores it.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When the call ended.
    pub at: DateTime<Utc>,
    /// The caller's subject; empty when the caller could not be identified.
    pub subject: String,
    /// The caller's roles, comma-separated.
    pub roles: String,
    /// The call, as `package.Service/Method`.
    pub method: String,
    /// The kind of access: `write`, `pupil_read`, `reference` or `feed`.
    pub access: String,
    /// The caller's address as the server saw it.
    pub peer: String,
    /// The gRPC status code name the call ended with, such as `OK` or `PERMISSION_DENIED`.
    pub outcome: String,
    /// The schools the call touched, by LAESTAB.
    pub schools: Vec<String>,
    /// The pupils the call touched, by UPN.
    pub pupils: Vec<String>,
}

/// A store for audit events.
pub trait AuditSink: Send + Sync + Debug + 'static {
    /// Stores one event. The layer logs an error, and the call's own result is kept.
    fn record(
        &self,
        event: AuditEvent,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + '_>>;
}
