//! Referral packs on their way to the local authority: `rollcall delivery list` and
//! `rollcall delivery retry`.

use std::io::Write;

use chrono::SecondsFormat;
use clap::Subcommand;
use comfy_table::{Table, presets};
use rollcall_api::convert::from_timestamp;
use rollcall_api::mis_adapter::v1::{
    Delivery, DeliveryStatus, DestinationKind, ListDeliveriesRequest, RetryDeliveryRequest,
};
use serde_json::{Value, json};

use crate::client::Clients;
use crate::text::{count, table};

/// The maximum number of characters of an error shown in the table. `--json` shows it whole.
const MAX_NOTE_CHARS: usize = 60;

#[derive(Debug, Subcommand)]
pub(crate) enum DeliveryCommand {
    /// List deliveries of referral packs, newest first, with their status and receipt.
    List {
        /// Only this referral: its identifier (ref-000001) or reference (9192001-2026-0001).
        #[arg(long)]
        referral: Option<String>,
        /// Only this status.
        #[arg(long, value_parser = ["queued", "delivering", "delivered", "failed"])]
        status: Option<String>,
        /// Print JSON, with the receipt and every attempt.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed delivery again, with a fresh allowance of attempts. A queued delivery
    /// becomes due at once.
    Retry {
        /// The delivery id, for example dlv-00000001.
        id: String,
    },
}

pub(crate) async fn run(
    clients: &Clients,
    command: DeliveryCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        DeliveryCommand::List {
            referral,
            status,
            json,
        } => {
            let status = status
                .as_deref()
                .map_or(DeliveryStatus::Unspecified, status_of);
            // Deliveries carry the referral's identifier; a reference is looked up first.
            let referral = match referral {
                Some(value) if !value.starts_with("ref-") => {
                    clients
                        .referrals
                        .clone()
                        .get_referral(rollcall_api::referrals::v1::GetReferralRequest { id: value })
                        .await
                        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                        .into_inner()
                        .referral
                        .unwrap_or_default()
                        .id
                }
                other => other.unwrap_or_default(),
            };
            let deliveries = fetch(clients, referral, status).await?;
            if json {
                let rows = deliveries.iter().map(delivery_json).collect();
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&Value::Array(rows))?
                )?;
                return Ok(());
            }
            print_table(&deliveries, out)
        }
        DeliveryCommand::Retry { id } => {
            let delivery = clients
                .mis_adapter
                .clone()
                .retry_delivery(RetryDeliveryRequest { delivery_id: id })
                .await
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?
                .into_inner()
                .delivery
                .unwrap_or_default();
            writeln!(
                out,
                "Delivery {} of referral {} to {} queued again",
                delivery.id, delivery.referral_id, delivery.destination
            )?;
            Ok(())
        }
    }
}

/// Reads every delivery that matches, page by page.
async fn fetch(
    clients: &Clients,
    referral_id: String,
    status: DeliveryStatus,
) -> anyhow::Result<Vec<Delivery>> {
    let mut deliveries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = clients
            .mis_adapter
            .clone()
            .list_deliveries(ListDeliveriesRequest {
                referral_id: referral_id.clone(),
                status: status as i32,
                page_size: 1_000,
                page_token,
            })
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?
            .into_inner();
        deliveries.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            return Ok(deliveries);
        }
        page_token = page.next_page_token;
    }
}

fn print_table(deliveries: &[Delivery], out: &mut impl Write) -> anyhow::Result<()> {
    if deliveries.is_empty() {
        writeln!(out, "No deliveries")?;
        return Ok(());
    }
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "delivery",
        "referral",
        "destination",
        "status",
        "attempts",
        "updated (UTC)",
        "receipt or last error",
    ]);
    for delivery in deliveries {
        let updated = delivery
            .updated_at
            .as_ref()
            .and_then(from_timestamp)
            .map(|at| at.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        rows.add_row(vec![
            delivery.id.clone(),
            delivery.referral_id.clone(),
            delivery.destination.clone(),
            status_name(delivery.status).to_owned(),
            delivery.attempts.to_string(),
            updated,
            note(delivery),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    writeln!(out, "{}", count(deliveries.len(), "delivery", "deliveries"))?;
    Ok(())
}

/// Returns the receipt id of a delivered pack, or the start of the last error.
fn note(delivery: &Delivery) -> String {
    if let Some(receipt) = &delivery.receipt {
        return receipt.receipt_id.clone();
    }
    let error = delivery.last_error.as_str();
    if error.chars().count() <= MAX_NOTE_CHARS {
        return error.to_owned();
    }
    let mut cut: String = error.chars().take(MAX_NOTE_CHARS).collect();
    cut.push_str("...");
    cut
}

fn status_name(value: i32) -> &'static str {
    match DeliveryStatus::try_from(value).unwrap_or(DeliveryStatus::Unspecified) {
        DeliveryStatus::Queued => "queued",
        DeliveryStatus::Delivering => "delivering",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Unspecified => "",
    }
}

fn status_of(name: &str) -> DeliveryStatus {
    match name {
        "queued" => DeliveryStatus::Queued,
        "delivering" => DeliveryStatus::Delivering,
        "delivered" => DeliveryStatus::Delivered,
        "failed" => DeliveryStatus::Failed,
        _ => DeliveryStatus::Unspecified,
    }
}

fn kind_name(value: i32) -> &'static str {
    match DestinationKind::try_from(value).unwrap_or(DestinationKind::Unspecified) {
        DestinationKind::Directory => "directory",
        DestinationKind::Https => "https",
        DestinationKind::Unspecified => "",
    }
}

/// Returns a timestamp as RFC 3339 in UTC, or null when it is absent.
fn time_json(at: Option<&prost_types::Timestamp>) -> Value {
    at.and_then(from_timestamp).map_or(Value::Null, |at| {
        json!(at.to_rfc3339_opts(SecondsFormat::Secs, true))
    })
}

fn delivery_json(delivery: &Delivery) -> Value {
    let receipt = delivery.receipt.as_ref().map_or(Value::Null, |receipt| {
        json!({
            "receipt_id": receipt.receipt_id,
            "received_at": time_json(receipt.received_at.as_ref()),
            "path": receipt.path,
            "http_status": receipt.http_status,
        })
    });
    json!({
        "id": delivery.id,
        "referral_id": delivery.referral_id,
        "pack_id": delivery.pack_id,
        "laestab": delivery.laestab,
        "file_name": delivery.file_name,
        "sha256": delivery.sha256,
        "destination": delivery.destination,
        "destination_kind": kind_name(delivery.destination_kind),
        "status": status_name(delivery.status),
        "attempts": delivery.attempts,
        "created_at": time_json(delivery.created_at.as_ref()),
        "updated_at": time_json(delivery.updated_at.as_ref()),
        "next_attempt_at": time_json(delivery.next_attempt_at.as_ref()),
        "last_error": delivery.last_error,
        "superseded_by": delivery.superseded_by,
        "receipt": receipt,
        "history": delivery.history.iter().map(|attempt| json!({
            "attempt": attempt.attempt,
            "started_at": time_json(attempt.started_at.as_ref()),
            "finished_at": time_json(attempt.finished_at.as_ref()),
            "outcome": attempt.outcome,
            "http_status": attempt.http_status,
            "detail": attempt.detail,
        })).collect::<Vec<_>>(),
    })
}
