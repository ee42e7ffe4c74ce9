//! The hash chain over the audit log.
//!
//! Each event's hash is the SHA-256 of a version tag, the previous event's hash, the event's
//! id and every field of the event. Each value is written as its length (8 bytes, big-endian)
//! and its UTF-8 bytes, so no two different events encode alike. Schools and pupils are
//! sorted byte-wise and preceded by their count. The time is written in RFC 3339 with
//! microseconds, the precision both databases keep.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rollcall_auth::audit::AuditEvent;
use sha2::{Digest, Sha256};

/// The previous hash of the first event: 64 zeros.
pub(crate) const GENESIS_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Names the encoding below. A new encoding needs a new tag, and verification must accept
/// both.
const VERSION_TAG: &[u8] = b"rollcall-audit-v1";

/// Returns the event as it is stored and hashed: the time cut to microseconds, schools and
/// pupils sorted byte-wise without repeats, and NUL characters, which PostgreSQL cannot store
/// in text, replaced with U+FFFD.
pub(crate) fn normalise(event: AuditEvent) -> AuditEvent {
    let text = |value: String| {
        if value.contains('\0') {
            value.replace('\0', "\u{FFFD}")
        } else {
            value
        }
    };
    let list = |values: Vec<String>| {
        let mut values: Vec<String> = values.into_iter().map(text).collect();
        values.sort_unstable();
        values.dedup();
        values
    };
    AuditEvent {
        at: event.at.trunc_subsecs(6),
        subject: text(event.subject),
        roles: text(event.roles),
        method: text(event.method),
        access: text(event.access),
        peer: text(event.peer),
        outcome: text(event.outcome),
        schools: list(event.schools),
        pupils: list(event.pupils),
    }
}

/// Returns the hash, in lower-case hexadecimal, of the event with position `id` that follows
/// the event whose hash is `previous_hash`. The event must be normalised.
pub(crate) fn event_hash(previous_hash: &str, id: i64, event: &AuditEvent) -> String {
    let mut hasher = Sha256::new();
    write_field(&mut hasher, VERSION_TAG);
    write_field(&mut hasher, previous_hash.as_bytes());
    write_field(&mut hasher, id.to_string().as_bytes());
    write_field(&mut hasher, canonical_time(event.at).as_bytes());
    for field in [
        &event.subject,
        &event.roles,
        &event.method,
        &event.access,
        &event.peer,
        &event.outcome,
    ] {
        write_field(&mut hasher, field.as_bytes());
    }
    write_list(&mut hasher, &event.schools);
    write_list(&mut hasher, &event.pupils);
    hex::encode(hasher.finalize())
}

fn canonical_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn write_field(hasher: &mut Sha256, bytes: &[u8]) {
    let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    hasher.update(length.to_be_bytes());
    hasher.update(bytes);
}

/// Writes the count and then each value, sorted byte-wise whatever order they came in.
fn write_list(hasher: &mut Sha256, values: &[String]) {
    let mut sorted: Vec<&String> = values.iter().collect();
    sorted.sort_unstable();
    let count = u64::try_from(sorted.len()).unwrap_or(u64::MAX);
    hasher.update(count.to_be_bytes());
    for value in sorted {
        write_field(hasher, value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            at: Utc
                .with_ymd_and_hms(2026, 3, 2, 9, 15, 0)
                .single()
                .expect("a valid time"),
            subject: "o-1".to_owned(),
            roles: "office_staff".to_owned(),
            method: "rollcall.registers.v1.RegistersService/SetCalendar".to_owned(),
            access: "write".to_owned(),
            peer: "127.0.0.1:50000".to_owned(),
            outcome: "OK".to_owned(),
            schools: vec!["9192001".to_owned()],
            pupils: vec!["A919200125001".to_owned(), "B919200125002".to_owned()],
        }
    }

    #[test]
    fn hash_is_stable() {
        let hash = event_hash(GENESIS_HASH, 1, &event());
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, event_hash(GENESIS_HASH, 1, &event()));
    }

    #[test]
    fn every_field_changes_the_hash() {
        let original = event_hash(GENESIS_HASH, 1, &event());
        let mut changed: Vec<(&str, AuditEvent)> = Vec::new();
        let mut at = event();
        at.at += chrono::Duration::microseconds(1);
        changed.push(("at", at));
        for (name, edit) in [
            (
                "subject",
                (|e: &mut AuditEvent| e.subject.push('x')) as fn(&mut AuditEvent),
            ),
            ("roles", |e| e.roles.push('x')),
            ("method", |e| e.method.push('x')),
            ("access", |e| e.access.push('x')),
            ("peer", |e| e.peer.push('x')),
            ("outcome", |e| e.outcome.push('x')),
            ("schools", |e| e.schools.push("9192002".to_owned())),
            ("pupils", |e| {
                e.pupils.pop();
            }),
        ] {
            let mut copy = event();
            edit(&mut copy);
            changed.push((name, copy));
        }
        for (name, copy) in changed {
            assert_ne!(event_hash(GENESIS_HASH, 1, &copy), original, "{name}");
        }
        assert_ne!(event_hash(GENESIS_HASH, 2, &event()), original, "id");
        assert_ne!(
            event_hash(&original, 1, &event()),
            original,
            "previous hash"
        );
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut first = event();
        first.subject = "ab".to_owned();
        first.roles = "c".to_owned();
        let mut second = event();
        second.subject = "a".to_owned();
        second.roles = "bc".to_owned();
        assert_ne!(
            event_hash(GENESIS_HASH, 1, &first),
            event_hash(GENESIS_HASH, 1, &second)
        );

        let mut one_school = event();
        one_school.schools = vec!["9192001".to_owned()];
        one_school.pupils = vec![];
        let mut one_pupil = event();
        one_pupil.schools = vec![];
        one_pupil.pupils = vec!["9192001".to_owned()];
        assert_ne!(
            event_hash(GENESIS_HASH, 1, &one_school),
            event_hash(GENESIS_HASH, 1, &one_pupil)
        );
    }

    #[test]
    fn list_order_does_not_matter() {
        let mut reversed = event();
        reversed.pupils.reverse();
        assert_eq!(
            event_hash(GENESIS_HASH, 1, &reversed),
            event_hash(GENESIS_HASH, 1, &event())
        );
    }

    #[test]
    fn normalise_cuts_nanoseconds_and_sorts() {
        let mut raw = event();
        raw.at += chrono::Duration::nanoseconds(1_234_567);
        raw.pupils = vec!["B2".to_owned(), "A1".to_owned(), "B2".to_owned()];
        raw.subject = "a\0b".to_owned();
        let normal = normalise(raw);
        assert_eq!(normal.at.timestamp_subsec_nanos(), 1_234_000);
        assert_eq!(normal.pupils, vec!["A1".to_owned(), "B2".to_owned()]);
        assert_eq!(normal.subject, "a\u{FFFD}b");
    }
}
