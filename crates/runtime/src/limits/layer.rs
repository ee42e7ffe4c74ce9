//! The tower layer in front of every gRPC listener that enforces the request timeout, the
//! limit on requests in flight and the message size, and turns each limit's error into a gRPC
//! status.
//!
//! Requests in flight are counted with tower's `ConcurrencyLimit` on one semaphore per
//! process, and `LoadShed` rejects a request at once when no permit is free rather than
//! queueing it. Health checks pass every limit. Calls between rollcall's own services, which
//! the exemption predicate recognises, are not counted: they serve a request that was counted
//! where it entered, and shedding them would fail work already admitted.
//!
//! The permit and the timeout cover a request until its response headers are ready. For a
//! unary or client-streaming call that is when the handler returns, so a stream that uploads
//! (ImportRegister) counts until it is applied. A server-streaming or bidirectional call
//! (WatchMarks, WatchTriggers, StreamSync) is counted and timed only until its stream starts,
//! so the unary timeout never cuts a long-running stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tower::ServiceExt as _;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::load_shed::error::Overloaded;
use tower::timeout::Timeout;
use tower::timeout::error::Elapsed;

use super::message_size::MessageSizeLimit;
use super::{ServerLimits, deadline_exceeded, overloaded};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

/// The path prefix of the gRPC health service, which no limit applies to.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The time before a client's deadline at which this layer ends a request, so that it does so
/// before tonic's own timer, whose tick is a millisecond.
const CLIENT_DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// The shortest interval between two log lines about shed requests.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Returns true for a request that is not counted against `--max-concurrent-requests`.
type Exemption = dyn Fn(&http::Request<Body>) -> bool + Send + Sync;

/// Adds [`LimitsService`] in front of the services. Clones share one count of requests in
/// flight, so a process's listeners together stay within the limit.
#[derive(Clone)]
pub struct LimitsLayer {
    shared: Arc<Shared>,
}

struct Shared {
    max_message_bytes: usize,
    request_timeout: Duration,
    max_concurrent_requests: usize,
    semaphore: Arc<Semaphore>,
    exemption: Box<Exemption>,
    shed: ShedLog,
}

impl std::fmt::Debug for LimitsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsLayer")
            .field("max_message_bytes", &self.shared.max_message_bytes)
            .field("request_timeout", &self.shared.request_timeout)
            .field(
                "max_concurrent_requests",
                &self.shared.max_concurrent_requests,
            )
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl LimitsLayer {
    /// Creates the layer for `limits`. `exemption` picks out the calls between rollcall's own
    /// services, which are not counted against `--max-concurrent-requests`.
    pub fn new(
        limits: &ServerLimits,
        exemption: impl Fn(&http::Request<Body>) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                max_message_bytes: limits.max_message_bytes,
                request_timeout: limits.request_timeout,
                max_concurrent_requests: limits.max_concurrent_requests,
                semaphore: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
                exemption: Box::new(exemption),
                shed: ShedLog::default(),
            }),
        }
    }

    /// Returns the number of counted requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.max_concurrent_requests - self.shared.semaphore.available_permits()
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = LimitsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitsService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Enforces the request limits on each request; see the module documentation.
#[derive(Clone)]
pub struct LimitsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for LimitsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsService").finish_non_exhaustive()
    }
}

impl<S> tower::Service<http::Request<Body>> for LimitsService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call makes its own clone of the inner service ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(async move {
                Ok(inner
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|error| Status::from_error(error.into()).into_http()))
            });
        }
        let shared = Arc::clone(&self.shared);
        let exempt = (shared.exemption)(&request);
        let deadline = Deadline::of(request.headers(), shared.request_timeout);
        let request =
            request.map(|body| Body::new(MessageSizeLimit::new(body, shared.max_message_bytes)));
        Box::pin(async move {
            let result = if exempt {
                Timeout::new(inner, deadline.timeout).oneshot(request).await
            } else {
                let counted = LoadShed::new(ConcurrencyLimit::with_semaphore(
                    inner,
                    Arc::clone(&shared.semaphore),
                ));
                Timeout::new(counted, deadline.timeout)
                    .oneshot(request)
                    .await
            };
            Ok(result.unwrap_or_else(|error| {
                let status = status_for_error(error, &shared, deadline);
                status.into_http()
            }))
        })
    }
}

/// The time a request may run: the server's `--request-timeout`, or the client's shorter
/// `grpc-timeout`.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    /// The deadline the client sent, or the server's timeout, as messages give it.
    limit: Duration,
    timeout: Duration,
    from_client: bool,
}

impl Deadline {
    fn of(headers: &http::HeaderMap, server: Duration) -> Self {
        match headers
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            // tonic's server also stops a request at the client's grpc-timeout, but returns
            // CANCELLED. Ending it here a moment earlier gives the client DEADLINE_EXCEEDED.
            Some(client) if client < server => Deadline {
                limit: client,
                timeout: client - CLIENT_DEADLINE_MARGIN.min(client / 2),
                from_client: true,
            },
            _ => Deadline {
                limit: server,
                timeout: server,
                from_client: false,
            },
        }
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit, H, M, S, m, u or n.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    match value.as_bytes().last()? {
        b'H' => Some(Duration::from_secs(amount * 60 * 60)),
        b'M' => Some(Duration::from_secs(amount * 60)),
        b'S' => Some(Duration::from_secs(amount)),
        b'm' => Some(Duration::from_millis(amount)),
        b'u' => Some(Duration::from_micros(amount)),
        b'n' => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

/// Returns the gRPC status for an error from the limits' tower services: UNAVAILABLE with
/// retry advice for tower's `Overloaded`, DEADLINE_EXCEEDED for its `Elapsed`, and otherwise
/// the status tonic finds in the error.
fn status_for_error(error: impl Into<BoxError>, shared: &Shared, deadline: Deadline) -> Status {
    let error = error.into();
    if error.is::<Overloaded>() {
        shared.shed.record(shared.max_concurrent_requests);
        return overloaded(shared.max_concurrent_requests);
    }
    if error.is::<Elapsed>() {
        tracing::warn!(
            timeout_ms = deadline.limit.as_millis(),
            from_client = deadline.from_client,
            "Request stopped at its deadline"
        );
        return deadline_exceeded(deadline.limit, deadline.from_client);
    }
    Status::from_error(error)
}

/// Counts shed requests and logs them at most every [`SHED_LOG_INTERVAL`].
#[derive(Default)]
struct ShedLog {
    since_logged: AtomicU64,
    logged_at: Mutex<Option<Instant>>,
}

impl ShedLog {
    fn record(&self, limit: usize) {
        let count = self.since_logged.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut logged_at) = self.logged_at.lock() else {
            return;
        };
        if logged_at.is_some_and(|at| at.elapsed() < SHED_LOG_INTERVAL) {
            return;
        }
        *logged_at = Some(Instant::now());
        self.since_logged.fetch_sub(count, Ordering::Relaxed);
        tracing::warn!(
            shed = count,
            max_concurrent_requests = limit,
            "Shed requests with UNAVAILABLE: the server is at --max-concurrent-requests"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
    }

    #[test]
    fn grpc_timeout_rejects_malformed() {
        for value in ["", "S", "2", "2s", "123456789S", "-1S", "1.5S", "2 S"] {
            assert_eq!(parse_grpc_timeout(value), None, "{value:?}");
        }
    }

    #[test]
    fn deadline_takes_shorter_client_timeout() {
        let server = Duration::from_secs(120);
        let mut headers = http::HeaderMap::new();
        let deadline = Deadline::of(&headers, server);
        assert_eq!(deadline.timeout, server);
        assert!(!deadline.from_client);

        headers.insert("grpc-timeout", http::HeaderValue::from_static("5S"));
        let deadline = Deadline::of(&headers, server);
        assert_eq!(deadline.timeout, Duration::from_millis(4_995));
        assert!(deadline.from_client);

        headers.insert("grpc-timeout", http::HeaderValue::from_static("10M"));
        let deadline = Deadline::of(&headers, server);
        assert_eq!(deadline.timeout, server);
        assert!(!deadline.from_client);
    }
}
