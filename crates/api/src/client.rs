//! The channel every rollcall client uses: a gRPC channel that attaches the caller's
//! credential to each call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;

/// A gRPC channel that sends [`Credentials`] with every call.
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
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
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
