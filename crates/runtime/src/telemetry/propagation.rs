//! Carries a trace across asynchronous hops. A request stores the W3C `traceparent` of its span
//! with the work it leaves behind: a change-feed entry, a trigger or a job. The worker that
//! picks the work up later starts its span as a child of that `traceparent`, so the work joins
//! the request's trace.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{SPAN_TARGET, exporting};

const TRACEPARENT: &str = "traceparent";

/// Returns the W3C `traceparent` of the current span, or `None` when spans are not exported or
/// no span is current.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Parses a stored `traceparent` into an OpenTelemetry context, or `None` when it is not one.
fn parse(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Starts a span named `name` for work done in the background, such as a change-feed follower
/// evaluating new marks or a worker sending a letter. With a valid `traceparent` the span is
/// its child, so it joins the trace of the request that left the work. Without one it starts a
/// trace of its own. The span is disabled when spans are not exported.
pub fn background_span(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(target: SPAN_TARGET, "background", otel.name = name, otel.kind = "consumer");
    if span.is_disabled() {
        return span;
    }
    if let Some(parent) = traceparent.and_then(parse) {
        // tracing-opentelemetry 0.34 rejects a parent only for a span already started, and this
        // one has not been entered yet.
        let _ = span.set_parent(parent);
    }
    span
}

/// Links `span` to the span named by `traceparent`, for work that several requests caused,
/// such as a follower's batch of feed entries from several imports.
pub fn link_traceparent(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    if let Some(context) = parse(traceparent) {
        span.add_link(context.span().span_context().clone());
    }
}

/// Sets an attribute on `span`, such as `rollcall.case_id`. Attributes carry ids only.
pub fn set_attribute(span: &tracing::Span, key: &'static str, value: impl Into<String>) {
    if span.is_disabled() {
        return;
    }
    span.set_attribute(key, value.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_a_w3c_traceparent() {
        let context = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("a valid traceparent");
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.span().span_context().is_remote());
    }

    #[test]
    fn parse_rejects_invalid_values() {
        for value in [
            "",
            "not a traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert!(parse(value).is_none(), "{value:?}");
        }
    }

    #[test]
    fn nothing_is_propagated_without_an_export() {
        assert_eq!(current_traceparent(), None);
        let span = background_span(
            "test",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(span.is_disabled());
    }
}
