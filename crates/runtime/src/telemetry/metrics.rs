//! rollcall's metrics: per-RPC counts and latency, and domain counters. Attributes carry a
//! school's LAESTAB at most, never a pupil's UPN (one series per pupil would be too many) or
//! any name.
//!
//! The instruments are made from the global meter provider on first use, so they record
//! nothing unless [`super::init_with_export`] installed an export before that.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

/// The attribute that names a school by its LAESTAB.
pub const SCHOOL_ATTRIBUTE: &str = "rollcall.laestab";

/// Bucket boundaries of `rollcall.rpc.duration`, in seconds: from a cached read (a few
/// milliseconds) to a large CTF import (tens of seconds).
const DURATION_BOUNDARIES: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub(super) struct Instruments {
    pub(super) rpc_requests: Counter<u64>,
    pub(super) rpc_duration: Histogram<f64>,
    pub(super) rpc_errors: Counter<u64>,
    marks_ingested: Counter<u64>,
    policy_triggers: Counter<u64>,
    cases_opened: Counter<u64>,
    referrals_created: Counter<u64>,
    referrals_submitted: Counter<u64>,
}

pub(super) fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("rollcall");
        Instruments {
            rpc_requests: meter
                .u64_counter("rollcall.rpc.requests")
                .with_unit("{request}")
                .with_description("gRPC requests served, by service, method and status code")
                .build(),
            rpc_duration: meter
                .f64_histogram("rollcall.rpc.duration")
                .with_unit("s")
                .with_description("Time from a gRPC request's arrival to its response's headers")
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build(),
            rpc_errors: meter
                .u64_counter("rollcall.rpc.errors")
                .with_unit("{request}")
                .with_description("gRPC requests that ended with a status other than OK")
                .build(),
            marks_ingested: meter
                .u64_counter("rollcall.marks.ingested")
                .with_unit("{mark}")
                .with_description("Mark versions stored by imports, by school")
                .build(),
            policy_triggers: meter
                .u64_counter("rollcall.policy.triggers")
                .with_unit("{trigger}")
                .with_description(
                    "Triggers recorded by the policy service, by school, kind and state",
                )
                .build(),
            cases_opened: meter
                .u64_counter("rollcall.cases.opened")
                .with_unit("{case}")
                .with_description("Cases opened by triggers, by school")
                .build(),
            referrals_created: meter
                .u64_counter("rollcall.referrals.created")
                .with_unit("{referral}")
                .with_description("Referrals created, by school")
                .build(),
            referrals_submitted: meter
                .u64_counter("rollcall.referrals.submitted")
                .with_unit("{referral}")
                .with_description("Referrals submitted to the local authority, by school")
                .build(),
        }
    })
}

fn school(laestab: &str) -> [KeyValue; 1] {
    [KeyValue::new(SCHOOL_ATTRIBUTE, laestab.to_owned())]
}

/// Counts mark versions an import stored at a school.
pub fn marks_ingested(laestab: &str, marks: u64) {
    if marks > 0 {
        instruments().marks_ingested.add(marks, &school(laestab));
    }
}

/// Counts one trigger recorded at a school: `kind` such as `persistent_absence`, and `state`
/// `raised` or `withdrawn`.
pub fn policy_trigger(laestab: &str, kind: &'static str, state: &'static str) {
    instruments().policy_triggers.add(
        1,
        &[
            KeyValue::new(SCHOOL_ATTRIBUTE, laestab.to_owned()),
            KeyValue::new("rollcall.trigger.kind", kind),
            KeyValue::new("rollcall.trigger.state", state),
        ],
    );
}

/// Counts one case opened at a school.
pub fn case_opened(laestab: &str) {
    instruments().cases_opened.add(1, &school(laestab));
}

/// Counts one referral created at a school.
pub fn referral_created(laestab: &str) {
    instruments().referrals_created.add(1, &school(laestab));
}

/// Counts one referral submitted at a school.
pub fn referral_submitted(laestab: &str) {
    instruments().referrals_submitted.add(1, &school(laestab));
}
