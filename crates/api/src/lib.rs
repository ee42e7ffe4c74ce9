//! Generated protobuf types, gRPC clients and gRPC servers for rollcall's contracts.
//!
//! The contracts live in `proto/rollcall/<service>/v1`. Each module here mirrors one protobuf
//! package, so `rollcall.registers.v1` is [`registers::v1`].

#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::unwrap_used,
    reason = "generated code"
)]

/// Shared types: sessions, sources, phases and attendance figures.
///
/// The protobuf package is `rollcall.type.v1`; `type` is a Rust keyword, hence the raw name.
/// [`types`] is an alias.
pub mod r#type {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("rollcall.r#type.v1");
    }
}

pub use r#type as types;

/// The registers service.
pub mod registers {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("rollcall.registers.v1");
    }
}

/// The policy service.
pub mod policy {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("rollcall.policy.v1");
    }
}

/// The cases service.
pub mod cases {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("rollcall.cases.v1");
    }
}

/// The referrals service.
pub mod referrals {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("rollcall.referrals.v1");
    }
}

/// The MIS adapter service.
pub mod mis_adapter {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("rollcall.mis_adapter.v1");
    }
}

/// The audit log.
pub mod audit {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("rollcall.audit.v1");
    }
}

pub mod client;
pub mod convert;
pub mod school_days;

/// The encoded descriptor set of every rollcall contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rollcall_descriptor");
