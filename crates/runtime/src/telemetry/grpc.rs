//! The tower layer that gives each incoming gRPC request, other than a health check, a server
//! span, and counts every request in the RPC metrics.
//!
//! The span is named `<package.Service>/<Method>` and is the child of the W3C `traceparent`
//! and `tracestate` in the request's metadata, so calls between rollcall's services form one
//! trace. The status and duration are taken when the response ends: from the headers when
//! the call fails before its first message, otherwise from the trailers after the last
//! message. So a stream that fails part-way is counted with its error, and its duration runs
//! to its end. A response dropped before its end, as when the client cancels a stream, is
//! counted as CANCELLED. The span ends then too, unless a task that the handler started keeps
//! it, as StreamSync's does.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};

use opentelemetry::KeyValue;
use opentelemetry::propagation::Extractor;
use prost::Message as _;
use tonic::Code;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics::instruments;
use super::{SPAN_TARGET, exporting};

/// The `rpc.service` and `rpc.method` metric attributes of a request to a method rollcall
/// does not serve, so that made-up paths cannot add metric series.
const OTHER: &str = "_OTHER";

/// The gRPC health service, whose calls get no span.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Services other than rollcall's own that `rollcall serve` serves.
const STANDARD_SERVICES: [&str; 3] = [
    HEALTH_SERVICE,
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Adds [`GrpcTelemetry`] in front of the services.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTelemetryLayer;

impl GrpcTelemetryLayer {
    /// Creates the layer.
    pub fn new() -> Self {
        GrpcTelemetryLayer
    }
}

impl<S> tower::Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry { inner }
    }
}

/// Starts a server span for each request except health checks, records its gRPC status, and
/// counts every request in `rollcall.rpc.requests`, `rollcall.rpc.duration` and
/// `rollcall.rpc.errors`. Without an OTLP export it passes requests straight through.
#[derive(Debug, Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<CountedBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !exporting() {
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await?;
                Ok(response.map(|body| CountedBody { body, end: None }))
            });
        }
        let method = Method::from_path(request.uri().path());
        if method.service == HEALTH_SERVICE {
            // Load balancers and orchestrators check health every few seconds, and a trace
            // of each check would bury the others. The checks are still counted.
            let started = Instant::now();
            let response = self.inner.call(request);
            return Box::pin(async move {
                let end = CallEnd {
                    method,
                    started,
                    span: None,
                };
                counted(response.await, end)
            });
        }
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "grpc.server",
            otel.name = %method.name,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %method.service,
            rpc.method = %method.method,
            rpc.grpc.status_code = Empty,
        );
        let _ = span.set_parent(parent);
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        let end = CallEnd {
            method,
            started,
            span: Some(span.clone()),
        };
        Box::pin(async move { counted(response.await, end) }.instrument(span))
    }
}

/// Wraps a response's body so that the call is counted when the body ends, or counts it now
/// when there is no response or its headers already carry an error.
fn counted<R, E>(
    result: Result<http::Response<R>, E>,
    end: CallEnd,
) -> Result<http::Response<CountedBody<R>>, E> {
    match result {
        Ok(response) => match header_status(&response) {
            Some(code) => {
                end.finish(code);
                Ok(response.map(|body| CountedBody { body, end: None }))
            }
            None => Ok(response.map(|body| CountedBody {
                body,
                end: Some(end),
            })),
        },
        Err(error) => {
            end.finish(Code::Unknown);
            Err(error)
        }
    }
}

/// The method, start time and span of a call, kept to count it once its response ends.
#[derive(Debug)]
struct CallEnd {
    method: Method,
    started: Instant,
    /// The call's span, which records the status. Health checks have none.
    span: Option<tracing::Span>,
}

impl CallEnd {
    /// Records the call's status on its span and counts it in the metrics.
    fn finish(self, code: Code) {
        if let Some(span) = &self.span {
            span.record("rpc.grpc.status_code", code as i32);
            if is_server_error(code) {
                span.record("otel.status_code", "ERROR");
            }
        }
        self.method
            .count(code, self.started.elapsed().as_secs_f64());
    }
}

/// A response body that counts its call when it ends: with the status in its trailers, with
/// OK when it ends without trailers, and with CANCELLED when it is dropped before its end.
#[derive(Debug)]
pub struct CountedBody<B> {
    body: B,
    /// The call to count, until it is counted.
    end: Option<CallEnd>,
}

impl<B> CountedBody<B> {
    fn finish(&mut self, code: Code) {
        if let Some(end) = self.end.take() {
            end.finish(code);
        }
    }
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_in(trailers).unwrap_or(Code::Ok);
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(Code::Unknown),
            Poll::Ready(None) => self.finish(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The gRPC method a request names, split as the `rpc.service` and `rpc.method` attributes
/// expect.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Method {
    /// `<package.Service>/<Method>`, the span's name.
    name: String,
    service: String,
    method: String,
    /// Whether rollcall serves the method. An unknown one is counted under [`OTHER`].
    known: bool,
}

impl Method {
    fn from_path(path: &str) -> Self {
        let name = path.trim_start_matches('/');
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        Method {
            name: name.to_owned(),
            service: service.to_owned(),
            method: method.to_owned(),
            known: is_known(service, method),
        }
    }

    fn count(&self, code: Code, seconds: f64) {
        let (service, method) = if self.known {
            (self.service.clone(), self.method.clone())
        } else {
            (OTHER.to_owned(), OTHER.to_owned())
        };
        let attributes = [
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
            KeyValue::new("rpc.grpc.status_code", code as i64),
        ];
        let instruments = instruments();
        instruments.rpc_requests.add(1, &attributes);
        instruments.rpc_duration.record(seconds, &attributes);
        if code != Code::Ok {
            instruments.rpc_errors.add(1, &attributes);
        }
    }
}

/// Returns the gRPC status in a response's headers, which a call that fails before its first
/// message carries there. A call that sends messages carries it in the trailers instead.
fn header_status<R>(response: &http::Response<R>) -> Option<Code> {
    status_in(response.headers())
}

/// Returns the `grpc-status` in headers or trailers.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// Returns true for the codes the OpenTelemetry semantic conventions count as a server's
/// error. The others, such as NOT_FOUND, are the caller's mistake.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Returns true when `service` is one rollcall serves and `method` is one of its methods, or a
/// method name of the health and reflection services.
fn is_known(service: &str, method: &str) -> bool {
    if STANDARD_SERVICES.contains(&service) {
        return matches!(method, "Check" | "Watch" | "List" | "ServerReflectionInfo");
    }
    rollcall_methods().contains(&(service.to_owned(), method.to_owned()))
}

/// Returns every `(package.Service, Method)` in rollcall's protobuf contracts.
fn rollcall_methods() -> &'static HashSet<(String, String)> {
    static METHODS: OnceLock<HashSet<(String, String)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let Ok(set) = prost_types::FileDescriptorSet::decode(rollcall_api::FILE_DESCRIPTOR_SET)
        else {
            tracing::error!(
                "Cannot read rollcall's file descriptor set; RPC metrics name no method"
            );
            return HashSet::new();
        };
        let mut methods = HashSet::new();
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    methods.insert((name.clone(), method.name.unwrap_or_default()));
                }
            }
        }
        methods
    })
}

/// Reads the trace context from a request's headers, where gRPC metadata travels.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_splits_into_service_and_method() {
        let method = Method::from_path("/rollcall.registers.v1.RegistersService/ImportRegister");
        assert_eq!(
            method.name,
            "rollcall.registers.v1.RegistersService/ImportRegister"
        );
        assert_eq!(method.service, "rollcall.registers.v1.RegistersService");
        assert_eq!(method.method, "ImportRegister");
        assert!(method.known);
    }

    #[test]
    fn health_checks_are_known() {
        assert!(Method::from_path("/grpc.health.v1.Health/Check").known);
    }

    #[test]
    fn made_up_paths_are_not_known() {
        for path in [
            "/rollcall.registers.v1.RegistersService/NoSuchMethod",
            "/rollcall.nothing.v1.Nothing/Get",
            "/grpc.health.v1.Health/Delete",
            "/",
            "",
        ] {
            assert!(!Method::from_path(path).known, "{path:?}");
        }
    }

    #[test]
    fn caller_mistakes_are_not_server_errors() {
        assert!(is_server_error(Code::Internal));
        assert!(is_server_error(Code::Unavailable));
        assert!(!is_server_error(Code::NotFound));
        assert!(!is_server_error(Code::InvalidArgument));
        assert!(!is_server_error(Code::Ok));
    }
}
