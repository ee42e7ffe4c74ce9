//! The channel every rollcall client uses: a gRPC channel that attaches the caller's
//! credential and the current trace context to each call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;

/// A gRPC channel that sends [`Credentials`], and the current trace context, with every call.
pub type Channel = InterceptedService<tonic::transport::Channel, Credentials>;

/// The `authorization` header a client sends, if any. Its `Debug` output never shows the
/// token.
#[derive(Clone, Default)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    /// Sends no credential: for servers started with `--dev`, and health checks.
    pub fn none() -> Self {
        Credentials(None)
    }

    /// Sends `authorization: Bearer <token>`. Fails when the token contains characters a header
    /// cannot carry.
    pub fn bearer(token: &str) -> Result<Self, InvalidToken> {
        let token = token.trim();
        if token.is_empty() {
            return Err(InvalidToken);
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| InvalidToken)?;
        Ok(Credentials(Some(value)))
    }

    /// Sends a complete `authorization` header value.
    pub fn header(value: &str) -> Result<Self, InvalidToken> {
        Ok(Credentials(Some(value.parse().map_err(|_| InvalidToken)?)))
    }

    /// Wraps `channel` so that every call carries these credentials.
    pub fn attach(self, channel: tonic::transport::Channel) -> Channel {
        InterceptedService::new(channel, self)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Credentials(bearer)"),
            None => f.write_str("Credentials(none)"),
        }
    }
}

impl Interceptor for Credentials {
    /// Adds the `authorization` header, and the W3C `traceparent` and `tracestate` of the
    /// current span, so that the called service's span joins the caller's trace. The trace
    /// context is added only where a process installed a propagator, as `rollcall serve` does
    /// when it exports spans.
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject(&mut MetadataInjector(request.metadata_mut()));
        });
        Ok(request)
    }
}

/// Writes trace context into gRPC metadata. A value that metadata cannot carry is left out.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        if let Ok(value) = value.parse() {
            self.0.insert(key, value);
        }
    }
}

/// A token that is empty or contains characters an HTTP header cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken;

impl std::fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the token is empty or holds characters other than printable ASCII: save the \
             access token exactly as the identity provider issued it",
        )
    }
}

impl std::error::Error for InvalidToken {}
