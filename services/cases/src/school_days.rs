//! Review dates in school days: the school's calendar from the registers, where it has one.

use rollcall_api::client::Channel;
use rollcall_api::registers::v1::registers_service_client::RegistersServiceClient;
use rollcall_runtime::grpc::upstream_error;
use tonic::Status;

pub(crate) use rollcall_api::school_days::SchoolDays;

/// Reads a school's calendar from the registers; a school without one counts weekdays.
pub(crate) async fn of_school(
    registers: &RegistersServiceClient<Channel>,
    laestab: &str,
) -> Result<SchoolDays, Status> {
    rollcall_api::school_days::of_school(registers, laestab)
        .await
        .map_err(|status| upstream_error("registers", status))
}
