//! The audit log: `rollcall audit` lists who changed or read which records, and
//! `rollcall audit verify` checks that the log is intact.

use std::io::Write;

use anyhow::bail;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets};
use rollcall_api::audit::v1::{
    AuditEvent, ListAuditEventsRequest, VerifyAuditLogRequest, VerifyAuditLogResponse,
};
use rollcall_api::convert::{from_timestamp, timestamp};
use rollcall_domain::Upn;
use serde_json::{Value, json};

use crate::client::Clients;
use crate::text::{count, table};

/// The largest page the audit service returns.
const MAX_PAGE_SIZE: u32 = 1_000;
/// The number of pupils shown in a table cell; `--json` shows every one.
const PUPILS_SHOWN: usize = 3;

/// The options of `rollcall audit`, which lists events, and its subcommand `verify`, which
/// checks the chain.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the whole log and print the newest event's id and hash. Exits
    /// with an error naming the first event whose link is broken.
    Verify {
        /// The ID:HASH an earlier check printed. The log must still hold that event with that
        /// hash, which catches a removal of the newest events or a rewritten chain.
        #[arg(long, value_name = "ID:HASH")]
        checkpoint: Option<String>,
    },
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only events that touched this pupil, by UPN.
    #[arg(long)]
    upn: Option<String>,
    /// Only calls by this user, by the subject of their token.
    #[arg(long)]
    user: Option<String>,
    /// Only events that touched this school: seven-digit LAESTAB, e.g. 9192001.
    #[arg(long)]
    school: Option<String>,
    /// Only events from this date (YYYY-MM-DD, from 00:00 UTC) or time (RFC 3339, e.g.
    /// 2026-03-02T09:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only events up to this date (YYYY-MM-DD, to the end of the day in UTC) or before
    /// this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// The maximum number of events to print, newest first.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Print a JSON array, one object per event.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(
    clients: &Clients,
    args: AuditArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match args.command {
        Some(AuditCommand::Verify { checkpoint }) => {
            verify(clients, checkpoint.as_deref(), out).await
        }
        None => list(clients, args.list, out).await,
    }
}

async fn list(clients: &Clients, args: ListArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let request = request_of(&args)?;
    let (events, more) = fetch(clients, request.clone(), args.limit).await?;
    if args.json {
        let rows: Vec<Value> = events.iter().map(event_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if events.is_empty() {
        writeln!(out, "No audit events {}.", describe(&request))?;
        return Ok(());
    }
    print_table(&events, out)?;
    if more {
        writeln!(
            out,
            "{}, the newest of more that match; raise --limit to see more",
            count(events.len(), "event", "events")
        )?;
    } else {
        writeln!(out, "{}", count(events.len(), "event", "events"))?;
    }
    Ok(())
}

/// Checks the options and builds the request they describe.
fn request_of(args: &ListArgs) -> anyhow::Result<ListAuditEventsRequest> {
    let upn = match &args.upn {
        None => String::new(),
        Some(value) => Upn::parse(value)
            .map_err(|error| anyhow::anyhow!("invalid --upn: {error}"))?
            .as_str()
            .to_owned(),
    };
    let laestab = match &args.school {
        None => String::new(),
        Some(value) => rollcall_domain::school::parse_laestab(value)
            .map_err(|error| anyhow::anyhow!("invalid --school: {error}"))?,
    };
    let subject = match &args.user {
        Some(user) if user.trim().is_empty() => {
            bail!("invalid --user: it is empty; give the subject of the user's token")
        }
        Some(user) => user.trim().to_owned(),
        None => String::new(),
    };
    let since = args
        .since
        .as_deref()
        .map(|value| parse_time("--since", value, Bound::Start))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|value| parse_time("--until", value, Bound::End))
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        bail!(
            "invalid --until: {} is not after --since {}",
            args.until.as_deref().unwrap_or_default(),
            args.since.as_deref().unwrap_or_default()
        );
    }
    Ok(ListAuditEventsRequest {
        upn,
        subject,
        laestab,
        since: since.map(timestamp),
        until: until.map(timestamp),
        page_size: 0,
        page_token: String::new(),
    })
}

/// The end of the day that a date stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// 00:00 UTC on the date.
    Start,
    /// 00:00 UTC on the next day, so the whole date is included.
    End,
}

/// Parses a date (YYYY-MM-DD) or an RFC 3339 time.
fn parse_time(option: &str, value: &str, bound: Bound) -> anyhow::Result<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        anyhow::anyhow!(
            "invalid {option} {value:?}: expected a date such as 2026-03-02 or a time such as \
             2026-03-02T09:00:00Z"
        )
    })?;
    let day = match bound {
        Bound::Start => Some(date),
        Bound::End => date.succ_opt(),
    };
    day.and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc())
        .ok_or_else(|| anyhow::anyhow!("invalid {option} {value:?}: the date is out of range"))
}

/// Reads up to `limit` events, page by page, and returns them with whether more match.
async fn fetch(
    clients: &Clients,
    mut request: ListAuditEventsRequest,
    limit: u32,
) -> anyhow::Result<(Vec<AuditEvent>, bool)> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut events: Vec<AuditEvent> = Vec::new();
    loop {
        let remaining = limit.saturating_sub(events.len());
        request.page_size =
            i32::try_from(remaining.min(MAX_PAGE_SIZE as usize)).unwrap_or(i32::MAX);
        let page = clients
            .audit
            .clone()
            .list_audit_events(request.clone())
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok((events, false));
        }
        if events.len() >= limit {
            return Ok((events, true));
        }
        request.page_token = page.next_page_token;
    }
}

/// Describes the filters of an empty result, for example "for pupil A919… since …".
fn describe(request: &ListAuditEventsRequest) -> String {
    let mut parts = Vec::new();
    if !request.upn.is_empty() {
        parts.push(format!("for pupil {}", request.upn));
    }
    if !request.subject.is_empty() {
        parts.push(format!("by user {}", request.subject));
    }
    if !request.laestab.is_empty() {
        parts.push(format!("at school {}", request.laestab));
    }
    if let Some(since) = request.since.as_ref().and_then(from_timestamp) {
        parts.push(format!("since {}", since.format("%Y-%m-%d %H:%M UTC")));
    }
    if let Some(until) = request.until.as_ref().and_then(from_timestamp) {
        parts.push(format!("before {}", until.format("%Y-%m-%d %H:%M UTC")));
    }
    if parts.is_empty() {
        "yet: the log is empty".to_owned()
    } else {
        parts.join(" ")
    }
}

fn print_table(events: &[AuditEvent], out: &mut impl Write) -> anyhow::Result<()> {
    let mut rows = Table::new();
    rows.load_preset(presets::NOTHING);
    rows.set_header([
        "at (UTC)", "user", "roles", "call", "access", "outcome", "peer", "schools", "pupils",
    ]);
    for event in events {
        let at = event
            .at
            .as_ref()
            .and_then(from_timestamp)
            .map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let subject = if event.subject.is_empty() {
            "(unknown)".to_owned()
        } else {
            event.subject.clone()
        };
        // The package is the same for every call of a service, so the table leaves it out.
        let call = event
            .method
            .rsplit_once('.')
            .map_or(event.method.as_str(), |(_, call)| call);
        rows.add_row(vec![
            at,
            subject,
            event.roles.join(", "),
            call.to_owned(),
            event.access.clone(),
            event.outcome.clone(),
            event.peer.clone(),
            event.schools.join(", "),
            pupils_cell(&event.pupils),
        ]);
    }
    writeln!(out, "{}", table(&rows))?;
    Ok(())
}

/// Returns the first few pupils, and how many more there are.
fn pupils_cell(pupils: &[String]) -> String {
    if pupils.len() <= PUPILS_SHOWN {
        return pupils.join(", ");
    }
    format!(
        "{} and {} more",
        pupils[..PUPILS_SHOWN].join(", "),
        pupils.len() - PUPILS_SHOWN
    )
}

fn event_json(event: &AuditEvent) -> Value {
    json!({
        "id": event.id,
        "at": event
            .at
            .as_ref()
            .and_then(from_timestamp)
            .map(|at| at.to_rfc3339_opts(SecondsFormat::Micros, true))
            .unwrap_or_default(),
        "subject": event.subject,
        "roles": event.roles,
        "method": event.method,
        "access": event.access,
        "peer": event.peer,
        "outcome": event.outcome,
        "schools": event.schools,
        "pupils": event.pupils,
    })
}

async fn verify(
    clients: &Clients,
    checkpoint: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let request = match checkpoint {
        None => VerifyAuditLogRequest::default(),
        Some(value) => checkpoint_request(value)?,
    };
    let response = clients
        .audit
        .clone()
        .verify_audit_log(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    write_verification(&response, out)
}

/// Parses `--checkpoint ID:HASH`.
fn checkpoint_request(value: &str) -> anyhow::Result<VerifyAuditLogRequest> {
    let parsed = value.trim().split_once(':').and_then(|(id, hash)| {
        let id = id.parse::<i64>().ok().filter(|id| *id > 0)?;
        let hexadecimal = hash.len() == 64 && hash.bytes().all(|byte| byte.is_ascii_hexdigit());
        hexadecimal.then_some((id, hash))
    });
    let Some((id, hash)) = parsed else {
        bail!(
            "invalid --checkpoint {value:?}: expected the ID:HASH an earlier `rollcall audit \
             verify` printed, an event id and 64 hexadecimal digits"
        );
    };
    Ok(VerifyAuditLogRequest {
        checkpoint_event_id: id,
        checkpoint_hash: hash.to_owned(),
    })
}

/// Prints an intact chain, or fails naming the first broken link.
fn write_verification(
    response: &VerifyAuditLogResponse,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if let Some(link) = &response.first_broken_link {
        bail!(
            "the audit log is broken at event {}: {} ({} checked)",
            link.event_id,
            link.problem,
            count(response.events_checked, "event", "events")
        );
    }
    if response.events_checked == 0 {
        writeln!(out, "The audit log is empty: there is nothing to check.")?;
        return Ok(());
    }
    writeln!(
        out,
        "The audit log is intact: {} checked, each linked to the one before.",
        count(response.events_checked, "event", "events")
    )?;
    writeln!(
        out,
        "Newest event: {}, hash {}",
        response.last_event_id, response.last_hash
    )?;
    writeln!(
        out,
        "Keep --checkpoint {}:{} where the database's administrators cannot change it, and \
         give it to the next check: it catches removed newest events and a rewritten chain.",
        response.last_event_id, response.last_hash
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_cover_whole_days() {
        let start = parse_time("--since", "2026-03-02", Bound::Start).expect("a date");
        assert_eq!(start.to_rfc3339(), "2026-03-02T00:00:00+00:00");
        let end = parse_time("--until", "2026-03-02", Bound::End).expect("a date");
        assert_eq!(end.to_rfc3339(), "2026-03-03T00:00:00+00:00");
        let time =
            parse_time("--since", "2026-03-02T10:00:00+01:00", Bound::Start).expect("a time");
        assert_eq!(time.to_rfc3339(), "2026-03-02T09:00:00+00:00");
    }

    #[test]
    fn bad_dates_name_the_option() {
        for value in ["02/03/2026", "2026-02-30", "yesterday"] {
            let error = parse_time("--since", value, Bound::Start).expect_err(value);
            let message = error.to_string();
            assert!(message.contains("--since"), "{message}");
            assert!(message.contains(value), "{message}");
        }
    }

    #[test]
    fn long_pupil_lists_are_cut() {
        let pupils: Vec<String> = (1..=5).map(|n| format!("P{n}")).collect();
        assert_eq!(pupils_cell(&pupils[..2]), "P1, P2");
        assert_eq!(pupils_cell(&pupils), "P1, P2, P3 and 2 more");
    }

    #[test]
    fn checkpoints_need_an_id_and_a_full_hash() {
        let hash = "3f".repeat(32);
        let request = checkpoint_request(&format!("42:{hash}")).expect("a checkpoint");
        assert_eq!(request.checkpoint_event_id, 42);
        assert_eq!(request.checkpoint_hash, hash);
        let short = format!("42:{}", "3f".repeat(31));
        for value in ["42", "0:aa", "x:aa", short.as_str()] {
            let error = checkpoint_request(value).expect_err(value);
            assert!(error.to_string().contains("--checkpoint"), "{error}");
        }
    }

    #[test]
    fn broken_chain_is_an_error() {
        let response = VerifyAuditLogResponse {
            events_checked: 7,
            first_broken_link: Some(rollcall_api::audit::v1::BrokenLink {
                event_id: 7,
                problem: "its fields do not match its hash".to_owned(),
            }),
            last_event_id: 7,
            last_hash: "ab".to_owned(),
        };
        let error = write_verification(&response, &mut Vec::new()).expect_err("broken");
        assert!(error.to_string().contains("event 7"), "{error}");
    }
}
