//! The tower layer that authenticates every call and checks the role-by-call table before the
//! call reaches a service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;

use crate::rules::{is_open, rule_for};
use crate::verify::{Authenticator, Refusal};

/// Adds [`AuthService`] in front of the services.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer that authenticates with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        AuthLayer { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: Arc::clone(&self.authenticator),
        }
    }
}

/// Refuses calls without a valid credential or whose caller's roles may not make them, and
/// puts the caller's [`crate::Principal`] in the request's extensions for the handlers.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = Arc::clone(&self.authenticator);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if is_open(&path) {
                return inner.call(request).await;
            }
            let peer = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
                .map(|addr| addr.to_string())
                .unwrap_or_default();
            let Some(rule) = rule_for(&path) else {
                tracing::warn!(method = %path, peer, "Refused a call with no access rule");
                return Ok(Refusal::PermissionDenied(format!(
                    "{} has no access rule, so nobody may call it",
                    path.trim_start_matches('/')
                ))
                .into_status()
                .into_http());
            };
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|value| value.to_str().unwrap_or_default().to_owned());
            let principal = match authenticator.authenticate(header.as_deref()).await {
                Ok(principal) => principal,
                Err(refusal) => {
                    tracing::warn!(
                        method = rule.method,
                        peer,
                        reason = refusal.message(),
                        "Refused an unauthenticated call"
                    );
                    return Ok(refusal.into_status().into_http());
                }
            };
            if !principal.roles.iter().any(|role| rule.allows(*role)) {
                let allowed: Vec<&str> = rule.roles.iter().map(|role| role.as_str()).collect();
                let refusal = Refusal::PermissionDenied(format!(
                    "{} may not call {}: it needs one of the roles {}",
                    principal.role_names(),
                    rule.method,
                    if allowed.is_empty() {
                        "held only by rollcall's own services".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ));
                tracing::warn!(method = rule.method, subject = %principal.subject, roles = %principal.role_names(), peer, "Refused a call the caller's roles do not allow");
                return Ok(refusal.into_status().into_http());
            }
            request.extensions_mut().insert(principal);
            inner.call(request).await
        })
    }
}
