//! The delivery RPCs: DeliverReferralPack, ListDeliveries and RetryDelivery.

use chrono::Utc;
use rollcall_api::convert::timestamp;
use rollcall_api::mis_adapter::v1::{
    DeliverReferralPackRequest, DeliverReferralPackResponse, Delivery, DeliveryAttempt,
    DeliveryReceipt, DeliveryStatus, DestinationKind as PbDestinationKind, ListDeliveriesRequest,
    ListDeliveriesResponse, RetryDeliveryRequest, RetryDeliveryResponse,
};
use rollcall_runtime::grpc::{failed_precondition, invalid_argument, not_found, storage_error};
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::delivery::Deliveries;
use crate::delivery::store::{
    self, AttemptRow, DELIVERED, DELIVERING, DeliveryRow, FAILED, ListFilter, NewPack, QUEUED,
    Queued, RetryRejection,
};

/// The maximum length of a referral id or pack id. Both travel in HTTP headers.
const MAX_ID_CHARS: usize = 128;

/// The maximum length of a file name, in bytes. Most file systems allow 255.
const MAX_FILE_NAME_BYTES: usize = 200;

const DEFAULT_PAGE_SIZE: i64 = 100;
const MAX_PAGE_SIZE: i64 = 1_000;

impl Deliveries {
    pub(crate) async fn deliver_referral_pack(
        &self,
        request: DeliverReferralPackRequest,
    ) -> Result<DeliverReferralPackResponse, Status> {
        check_id("referral_id", &request.referral_id)?;
        check_id("pack_id", &request.pack_id)?;
        let laestab = rollcall_runtime::grpc::laestab("laestab", &request.laestab)?;
        check_file_name(&request.file_name)?;
        check_zip(&request.pack)?;
        let sha256 = check_sha256(&request.sha256, &request.pack)?;
        if self.destinations.is_empty() {
            return Err(failed_precondition(
                "no delivery destination is configured: start rollcall serve with --delivery \
                 FILE (or ROLLCALL_DELIVERY), where FILE is a TOML settings file with a \
                 [[destination]] table for a folder or an HTTPS endpoint; see docs/delivery.md",
            ));
        }

        let destinations: Vec<(String, &'static str)> = self
            .destinations
            .iter()
            .map(|destination| (destination.name().to_owned(), destination.kind().as_str()))
            .collect();
        let pack = NewPack {
            referral_id: &request.referral_id,
            pack_id: &request.pack_id,
            laestab: &laestab,
            file_name: &request.file_name,
            sha256: &sha256,
            pack: &request.pack,
        };
        let queued = store::queue(&self.db, &pack, &destinations, Utc::now())
            .await
            .map_err(|error| storage_error("queueing a referral pack", error))?;

        let mut rows = Vec::with_capacity(queued.len());
        for ((id, outcome), (destination, _)) in queued.iter().zip(&destinations) {
            match outcome {
                Queued::New => tracing::info!(
                    delivery = %id,
                    referral = %request.referral_id,
                    %destination,
                    %sha256,
                    "Referral pack queued for delivery"
                ),
                Queued::Existing => tracing::info!(
                    delivery = %id,
                    referral = %request.referral_id,
                    %destination,
                    %sha256,
                    "Referral pack already queued for this destination; nothing queued"
                ),
                Queued::Reinstated => tracing::info!(
                    delivery = %id,
                    referral = %request.referral_id,
                    %destination,
                    %sha256,
                    "Superseded referral pack sent again, as the latest pack for its referral"
                ),
            }
            if let Some(row) = store::get(&self.db, id)
                .await
                .map_err(|error| storage_error("reading a delivery", error))?
            {
                rows.push(row);
            }
        }
        if queued
            .iter()
            .any(|(_, outcome)| *outcome != Queued::Existing)
        {
            self.wake.notify_one();
        }
        Ok(DeliverReferralPackResponse {
            deliveries: self.with_history(rows).await?,
        })
    }

    pub(crate) async fn list_deliveries(
        &self,
        request: ListDeliveriesRequest,
    ) -> Result<ListDeliveriesResponse, Status> {
        let status = match DeliveryStatus::try_from(request.status) {
            Ok(DeliveryStatus::Unspecified) => "",
            Ok(known) => status_name(known),
            Err(_) => {
                return Err(invalid_argument(
                    "status",
                    &request.status.to_string(),
                    "unknown delivery status; leave it unspecified for every status",
                ));
            }
        };
        let limit = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size < 0 => {
                return Err(invalid_argument(
                    "page_size",
                    &size.to_string(),
                    "must not be negative; use 0 for the default of 100",
                ));
            }
            size => i64::from(size).min(MAX_PAGE_SIZE),
        };
        if !request.page_token.is_empty() && !is_delivery_id(&request.page_token) {
            return Err(invalid_argument(
                "page_token",
                &request.page_token,
                "not a token from an earlier ListDeliveries call",
            ));
        }
        let filter = ListFilter {
            referral_id: request.referral_id.trim().to_owned(),
            status: status.to_owned(),
            before_id: request.page_token,
            limit: limit + 1,
        };
        let mut rows = store::list(&self.db, &filter)
            .await
            .map_err(|error| storage_error("listing deliveries", error))?;
        let next_page_token = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|row| row.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListDeliveriesResponse {
            deliveries: self.with_history(rows).await?,
            next_page_token,
        })
    }

    pub(crate) async fn retry_delivery(
        &self,
        request: RetryDeliveryRequest,
    ) -> Result<RetryDeliveryResponse, Status> {
        let id = request.delivery_id.trim();
        if id.is_empty() {
            return Err(invalid_argument(
                "delivery_id",
                id,
                "missing; give a delivery id such as dlv-00000001",
            ));
        }

        let Some(row) = store::get(&self.db, id)
            .await
            .map_err(|error| storage_error("reading a delivery", error))?
        else {
            return Err(not_found("delivery", id));
        };
        if row.status == FAILED
            && row.superseded_by.is_none()
            && self.destinations.get(&row.destination).is_none()
        {
            return Err(failed_precondition(format!(
                "delivery {id} goes to destination {:?}, which is not in the delivery settings: \
                 add it back and restart rollcall, then retry",
                row.destination
            )));
        }

        let outcome = store::retry(&self.db, id, Utc::now())
            .await
            .map_err(|error| storage_error("queueing a delivery again", error))?;
        match outcome {
            Ok(()) => {}
            Err(RetryRejection::NotFound) => return Err(not_found("delivery", id)),
            Err(RetryRejection::Delivered { receipt_id }) => {
                return Err(failed_precondition(format!(
                    "delivery {id} is already delivered (receipt {receipt_id}); there is nothing \
                     to retry"
                )));
            }
            Err(RetryRejection::Delivering) => {
                return Err(failed_precondition(format!(
                    "delivery {id} is being delivered now; wait for the attempt to finish"
                )));
            }
            Err(RetryRejection::Superseded { by }) => {
                return Err(failed_precondition(format!(
                    "delivery {id} was superseded by {by}, which carries a rebuilt pack for the \
                     same referral; retry {by} instead"
                )));
            }
        }

        tracing::info!(
            delivery = %id,
            referral = %row.referral_id,
            destination = %row.destination,
            previous_status = %row.status,
            "Delivery queued again on request"
        );
        self.wake.notify_one();

        let row = store::get(&self.db, id)
            .await
            .map_err(|error| storage_error("reading a delivery", error))?
            .ok_or_else(|| not_found("delivery", id))?;
        let delivery = self.with_history(vec![row]).await?.pop();
        Ok(RetryDeliveryResponse { delivery })
    }

    /// Converts rows to their protobuf form with every attempt.
    async fn with_history(&self, rows: Vec<DeliveryRow>) -> Result<Vec<Delivery>, Status> {
        let mut attempts = store::attempts(&self.db, &rows)
            .await
            .map_err(|error| storage_error("reading delivery attempts", error))?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let history = attempts.remove(&row.id).unwrap_or_default();
                to_proto(row, history)
            })
            .collect())
    }
}

fn status_name(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Queued => QUEUED,
        DeliveryStatus::Delivering => DELIVERING,
        DeliveryStatus::Delivered => DELIVERED,
        DeliveryStatus::Failed => FAILED,
        DeliveryStatus::Unspecified => "",
    }
}

fn status_of(name: &str) -> DeliveryStatus {
    match name {
        QUEUED => DeliveryStatus::Queued,
        DELIVERING => DeliveryStatus::Delivering,
        DELIVERED => DeliveryStatus::Delivered,
        FAILED => DeliveryStatus::Failed,
        _ => DeliveryStatus::Unspecified,
    }
}

fn kind_of(name: &str) -> PbDestinationKind {
    match name {
        "directory" => PbDestinationKind::Directory,
        "https" => PbDestinationKind::Https,
        _ => PbDestinationKind::Unspecified,
    }
}

fn to_proto(row: DeliveryRow, history: Vec<AttemptRow>) -> Delivery {
    let status = status_of(&row.status);
    let receipt = (status == DeliveryStatus::Delivered).then(|| DeliveryReceipt {
        receipt_id: row.receipt_id.clone(),
        received_at: row.received_at.map(timestamp),
        path: row.receipt_path.clone(),
        http_status: row.http_status,
    });
    Delivery {
        id: row.id,
        referral_id: row.referral_id,
        pack_id: row.pack_id,
        laestab: row.laestab,
        file_name: row.file_name,
        sha256: row.sha256,
        destination: row.destination,
        destination_kind: kind_of(&row.destination_kind) as i32,
        status: status as i32,
        attempts: row.attempts,
        created_at: Some(timestamp(row.created_at)),
        updated_at: Some(timestamp(row.updated_at)),
        next_attempt_at: (status == DeliveryStatus::Queued).then(|| timestamp(row.next_attempt_at)),
        last_error: row.last_error,
        receipt,
        superseded_by: row.superseded_by.unwrap_or_default(),
        history: history
            .into_iter()
            .map(|attempt| DeliveryAttempt {
                attempt: attempt.attempt,
                started_at: Some(timestamp(attempt.started_at)),
                finished_at: Some(timestamp(attempt.finished_at)),
                outcome: attempt.outcome,
                http_status: attempt.http_status,
                detail: attempt.detail,
            })
            .collect(),
    }
}

/// Checks a referral or pack id: printable ASCII without spaces, because it is sent as an HTTP
/// header and written into file names and receipts.
fn check_id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(invalid_argument(field, value, "missing"));
    }
    if value.len() > MAX_ID_CHARS {
        return Err(invalid_argument(
            field,
            value,
            format!("longer than {MAX_ID_CHARS} characters"),
        ));
    }
    if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid_argument(
            field,
            value,
            "use printable ASCII without spaces, such as letters, digits and hyphens",
        ));
    }
    Ok(())
}

/// Checks the file name: a plain name ending in `.zip`, with no folder in it.
fn check_file_name(value: &str) -> Result<(), Status> {
    let problem = if value.is_empty() {
        Some("missing; give a name such as pack-9192001-20260105.zip")
    } else if value.len() > MAX_FILE_NAME_BYTES {
        Some("longer than 200 bytes")
    } else if value.contains(['/', '\\']) || value == "." || value == ".." {
        Some("must be a file name without folders")
    } else if value.starts_with('.') {
        Some("must not start with a full stop, which hides the file on most systems")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if !value.to_ascii_lowercase().ends_with(".zip") {
        Some("must end in .zip, because the pack is a ZIP archive")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(invalid_argument("file_name", value, problem)),
        None => Ok(()),
    }
}

/// Checks that the pack starts like a ZIP archive: a local file header, or the end record of
/// an empty archive.
fn check_zip(pack: &[u8]) -> Result<(), Status> {
    if pack.starts_with(b"PK\x03\x04") || pack.starts_with(b"PK\x05\x06") {
        return Ok(());
    }
    let value = format!("{} bytes", pack.len());
    Err(invalid_argument(
        "pack",
        &value,
        "not a ZIP archive (it does not start with PK); send the referral pack's bytes",
    ))
}

/// Checks the SHA-256 against the pack and returns it in lower case.
fn check_sha256(value: &str, pack: &[u8]) -> Result<String, Status> {
    let given = value.trim().to_ascii_lowercase();
    if given.len() != 64 || !given.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(invalid_argument(
            "sha256",
            value,
            "expected the pack's SHA-256 as 64 hexadecimal digits",
        ));
    }
    let actual = hex::encode(Sha256::digest(pack));
    if given != actual {
        return Err(invalid_argument(
            "sha256",
            value,
            format!(
                "does not match the pack, whose SHA-256 is {actual}: the pack was changed or \
                 cut short on its way; send it again with the SHA-256 of the bytes sent"
            ),
        ));
    }
    Ok(actual)
}

fn is_delivery_id(value: &str) -> bool {
    value
        .strip_prefix("dlv-")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_checked() {
        for bad in [
            "",
            "../pack.zip",
            "sub/pack.zip",
            ".hidden.zip",
            "pack.pdf",
            "a\nb.zip",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_file_name("pack-9192001-A919200125011-20260105T090000.zip").is_ok());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("referral_id", "ref-2026-0001").is_ok());
        for bad in ["", "with space", "tab\there", &"x".repeat(129)] {
            assert!(check_id("referral_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_must_match_pack() {
        let pack = b"PK\x05\x06".to_vec();
        let actual = hex::encode(Sha256::digest(&pack));
        assert_eq!(
            check_sha256(&actual.to_uppercase(), &pack).expect("match"),
            actual
        );
        let wrong = "0".repeat(64);
        let error = check_sha256(&wrong, &pack).expect_err("mismatch");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains(&wrong), "{}", error.message());
        assert!(error.message().contains(&actual), "{}", error.message());
        assert!(check_sha256("abc", &pack).is_err());
    }

    #[test]
    fn zip_signature_is_checked() {
        assert!(check_zip(b"PK\x03\x04rest").is_ok());
        assert!(check_zip(b"%PDF-1.7").is_err());
        assert!(check_zip(b"").is_err());
    }

    #[test]
    fn page_tokens_are_delivery_ids() {
        assert!(is_delivery_id("dlv-00000042"));
        assert!(!is_delivery_id("dlv-"));
        assert!(!is_delivery_id("42"));
    }
}
