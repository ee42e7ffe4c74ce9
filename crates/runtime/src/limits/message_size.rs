//! A request body that ends with RESOURCE_EXHAUSTED as soon as a gRPC message's length prefix
//! exceeds the limit, before the message is buffered.
//!
//! Each gRPC message on the wire is a 5-byte prefix (a compression flag and a big-endian
//! 32-bit length) followed by that many bytes. tonic's own `max_decoding_message_size`, set on
//! every generated server to the same limit, rejects such a message too, but with OUT_OF_RANGE
//! and a message that names no option. This body only reads the prefixes and passes every byte
//! on unchanged.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

type Data = <tonic::body::Body as Body>::Data;

/// The length of a gRPC message prefix.
const PREFIX_BYTES: usize = 5;

/// Wraps a request body and checks each message's length prefix against `limit`.
#[derive(Debug)]
pub(super) struct MessageSizeLimit {
    inner: tonic::body::Body,
    limit: usize,
    /// The prefix bytes read so far of the next message.
    prefix: [u8; PREFIX_BYTES],
    prefix_read: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    failed: bool,
}

impl MessageSizeLimit {
    pub(super) fn new(inner: tonic::body::Body, limit: usize) -> Self {
        Self {
            inner,
            limit,
            prefix: [0; PREFIX_BYTES],
            prefix_read: 0,
            remaining: 0,
            failed: false,
        }
    }

    /// Reads the prefixes in `bytes`, returning the length of the first message over the limit.
    fn scan(&mut self, mut bytes: &[u8]) -> Option<u64> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skipped = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                bytes = &bytes[skipped..];
                self.remaining -= skipped as u64;
                continue;
            }
            let missing = PREFIX_BYTES - self.prefix_read;
            let copied = missing.min(bytes.len());
            self.prefix[self.prefix_read..self.prefix_read + copied]
                .copy_from_slice(&bytes[..copied]);
            self.prefix_read += copied;
            bytes = &bytes[copied..];
            if self.prefix_read == PREFIX_BYTES {
                self.prefix_read = 0;
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                let length = u64::from(length);
                if length > self.limit as u64 {
                    return Some(length);
                }
                self.remaining = length;
            }
        }
        None
    }
}

/// Returns RESOURCE_EXHAUSTED for a request message of `length` bytes over `limit`.
pub(super) fn message_too_large(length: u64, limit: usize) -> Status {
    let message = format!(
        "the request message is {length} bytes, more than the {limit} bytes the server's \
         --max-message-bytes allows: send smaller messages (split the batch or the file), or ask \
         the operator to raise --max-message-bytes (ROLLCALL_MAX_MESSAGE_BYTES)"
    );
    tracing::warn!(
        length,
        limit,
        "Rejected a request message over --max-message-bytes"
    );
    let mut details = ErrorDetails::new();
    details.add_quota_failure_violation(
        "max-message-bytes",
        format!("a message is at most {limit} bytes"),
    );
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

impl Body for MessageSizeLimit {
    type Data = Data;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let too_large = frame.data_ref().and_then(|data| self.scan(data));
        if let Some(length) = too_large {
            self.failed = true;
            return Poll::Ready(Some(Err(message_too_large(length, self.limit))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes
    }

    #[test]
    fn scan_passes_messages_within_limit() {
        let mut limit = MessageSizeLimit::new(tonic::body::Body::empty(), 10);
        let mut bytes = prefix(10);
        bytes.extend_from_slice(&[7; 10]);
        bytes.extend(prefix(3));
        bytes.extend_from_slice(&[7; 3]);
        assert_eq!(limit.scan(&bytes), None);
    }

    #[test]
    fn scan_finds_prefix_split_across_frames() {
        let mut limit = MessageSizeLimit::new(tonic::body::Body::empty(), 10);
        let mut bytes = prefix(2);
        bytes.extend_from_slice(&[7; 2]);
        bytes.extend(prefix(11));
        let (first, second) = bytes.split_at(8);
        assert_eq!(limit.scan(first), None);
        assert_eq!(limit.scan(second), Some(11));
    }

    #[test]
    fn scan_skips_message_bodies_across_frames() {
        let mut limit = MessageSizeLimit::new(tonic::body::Body::empty(), 100);
        let mut bytes = prefix(100);
        bytes.extend_from_slice(&[0xff; 100]);
        let (first, second) = bytes.split_at(40);
        assert_eq!(limit.scan(first), None);
        assert_eq!(limit.scan(second), None);
        assert_eq!(limit.scan(&prefix(101)), Some(101));
    }

    #[test]
    fn message_too_large_names_option() {
        let status = message_too_large(5_000_000, 4_194_304);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("4194304"), "{}", status.message());
        assert!(
            status.message().contains("--max-message-bytes"),
            "{}",
            status.message()
        );
    }
}
