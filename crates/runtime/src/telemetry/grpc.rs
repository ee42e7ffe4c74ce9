//! The tower layer that gives each incoming gRPC request, other than a health check, a server
//! span, and counts every request in the RPC metrics.
//!
//! The span is named `<package.Service>/<Method>` and is the child of the W3C `traceparent`
//! and `tracestate` in the request's metadata, so calls between rollcall's services form one
//! trace. The status and duration are taken when the response's headers are ready: for a unary
//! or client-streaming call that is when the handler returns, and for a server-streaming call
//! when the stream starts. The span ends then too, unless a task that the handler started keeps
//! it, as StreamSync's does.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

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
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !exporting() {
            return Box::pin(self.inner.call(request));
        }
        let method = Method::from_path(request.uri().path());
        if method.service == HEALTH_SERVICE {
            // Load balancers and orchestrators check health every few seconds, and a trace
            // of each check would bury the others. The checks are still counted.
            let started = Instant::now();
            let response = self.inner.call(request);
            return Box::pin(async move {
                let result = response.await;
                method.count(status_code(&result), started.elapsed().as_secs_f64());
                result
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
        let recorded = span.clone();
        Box::pin(
            async move {
                let result = response.await;
                let code = status_code(&result);
                recorded.record("rpc.grpc.status_code", code as i32);
                if is_server_error(code) {
                    recorded.record("otel.status_code", "ERROR");
                }
                method.count(code, started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
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

/// Returns the gRPC status of a response. A call that fails carries its status in the
/// response headers. A call that succeeds carries it in the trailers, after the body, which
/// this layer does not wait for.
fn status_code<R, E>(result: &Result<http::Response<R>, E>) -> Code {
    match result {
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from_i32),
        Err(_) => Code::Unknown,
    }
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
