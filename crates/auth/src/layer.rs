//! The tower layer that authenticates every call and checks the role-by-call table before the
//! call reaches a service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;

use chrono::Utc;
use tonic::Code;

use crate::audit::{AuditEvent, AuditSink};
use crate::caller::Caller;
use crate::principal::Principal;
use crate::rules::{Access, Rule, is_open, rule_for};
use crate::verify::{Authenticator, Refusal};

/// Adds [`AuthService`] in front of the services.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    audit: Option<Arc<dyn AuditSink>>,
}

impl AuthLayer {
    /// A layer that authenticates with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        AuthLayer {
            authenticator,
            audit: None,
        }
    }

    /// Also records audited calls in `sink`.
    pub fn with_audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            audit: self.audit.clone(),
        }
    }
}

/// Refuses calls without a valid credential or whose caller's roles may not make them, and
/// puts the [`Caller`] in the request's extensions for the handlers. Writes, reads of pupils'
/// records by a person, and refusals are recorded in the audit sink when there is one.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    audit: Option<Arc<dyn AuditSink>>,
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
        let audit = self.audit.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if is_open(&path) {
                return inner.call(request).await;
            }
            let peer = crate::certificate::peer_address(&request);
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
            // A client certificate the TLS layer verified against the services' CA identifies
            // another rollcall process; everyone else proves who they are with a token.
            let service = crate::certificate::service_principal(&request);
            let authenticated = match service {
                Some(principal) => Ok(principal),
                None => authenticator.authenticate(header.as_deref()).await,
            };
            let principal = match authenticated {
                Ok(principal) => principal,
                Err(refusal) => {
                    tracing::warn!(
                        method = rule.method,
                        peer,
                        reason = refusal.message(),
                        "Refused an unauthenticated call"
                    );
                    let status = refusal.into_status();
                    if audit.is_some() {
                        // NOTE: every rejected call is written to the audit log, including calls
                        // with no valid token. A flood of them grows the log, so limit request
                        // rates in front of the server.
                        let subject = authenticator.rejected_subject(header.as_deref());
                        let record = Record {
                            rule,
                            peer: &peer,
                            subject: &subject,
                            roles: String::new(),
                            caller: None,
                        };
                        record.write(audit.as_deref(), status.code()).await;
                    }
                    return Ok(status.into_http());
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
                let status = refusal.into_status();
                let record = Record {
                    rule,
                    peer: &peer,
                    subject: &principal.subject,
                    roles: principal.role_names(),
                    caller: None,
                };
                record.write(audit.as_deref(), status.code()).await;
                return Ok(status.into_http());
            }
            let caller = Caller::new(principal.clone());
            request.extensions_mut().insert(caller.clone());
            let response = inner.call(request).await?;
            // A call that fails in its handler carries its status in the headers; a call that
            // succeeds carries it in the trailers, after the body.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<i32>().ok())
                .map_or(Code::Ok, Code::from_i32);
            if audited(rule, &principal, code) {
                let record = Record {
                    rule,
                    peer: &peer,
                    subject: &principal.subject,
                    roles: principal.role_names(),
                    caller: Some(&caller),
                };
                record.write(audit.as_deref(), code).await;
            }
            Ok(response)
        })
    }
}

/// True for calls the audit log keeps: every change, every read of pupils' records by a
/// person, and every call a handler rejected for its caller's identity or grants. Calls
/// between rollcall's own services are audited where they entered rollcall.
fn audited(rule: &Rule, principal: &Principal, code: Code) -> bool {
    if principal.is_service() {
        return false;
    }
    if matches!(code, Code::PermissionDenied | Code::Unauthenticated) {
        return true;
    }
    match rule.access {
        Access::Write => true,
        Access::PupilRead => principal.is_person(),
        Access::Reference | Access::Feed => false,
    }
}

/// What an audit event is made from.
struct Record<'a> {
    rule: &'static Rule,
    peer: &'a str,
    /// The caller's subject; empty when the caller could not be identified.
    subject: &'a str,
    /// The caller's roles, comma-separated; empty when the caller could not be identified.
    roles: String,
    /// The caller as handlers saw it, with what the call touched; `None` for a call rejected
    /// before its handler ran.
    caller: Option<&'a Caller>,
}

impl Record<'_> {
    async fn write(self, sink: Option<&dyn AuditSink>, code: Code) {
        let Some(sink) = sink else { return };
        let touched = self.caller.map(Caller::touched).unwrap_or_default();
        let event = AuditEvent {
            at: Utc::now(),
            subject: self.subject.to_owned(),
            roles: self.roles,
            method: self.rule.method.to_owned(),
            access: self.rule.access.as_str().to_owned(),
            peer: self.peer.to_owned(),
            outcome: code_name(code).to_owned(),
            schools: touched.schools.into_iter().collect(),
            pupils: touched.pupils.into_iter().collect(),
        };
        if let Err(error) = sink.record(event).await {
            tracing::error!(
                method = self.rule.method,
                error = format!("{error:#}"),
                "Cannot write an audit record"
            );
        }
    }
}

/// The canonical name of a gRPC status code.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::rule_for;

    fn rule(method: &str) -> &'static Rule {
        rule_for(&format!("/{method}")).expect("a rule")
    }

    #[test]
    fn writes_and_pupil_reads_by_people_are_audited() {
        let person = Principal::development();
        let write = rule("rollcall.registers.v1.RegistersService/SetCalendar");
        let read = rule("rollcall.registers.v1.RegistersService/GetPupil");
        let reference = rule("rollcall.registers.v1.RegistersService/GetCalendar");
        assert!(audited(write, &person, Code::Ok));
        assert!(audited(write, &person, Code::InvalidArgument));
        assert!(audited(read, &person, Code::Ok));
        assert!(!audited(reference, &person, Code::Ok));
        assert!(!audited(reference, &person, Code::NotFound));
    }

    #[test]
    fn rejections_by_handlers_are_audited_for_every_access() {
        let person = Principal::development();
        let reference = rule("rollcall.registers.v1.RegistersService/GetCalendar");
        assert!(audited(reference, &person, Code::PermissionDenied));
        assert!(audited(reference, &person, Code::Unauthenticated));
    }

    #[test]
    fn calls_between_services_are_not_audited() {
        let service = Principal::internal();
        let write = rule("rollcall.registers.v1.RegistersService/SetCalendar");
        assert!(!audited(write, &service, Code::Ok));
        assert!(!audited(write, &service, Code::PermissionDenied));
    }
}
