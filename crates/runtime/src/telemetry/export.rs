//! Exporters that log their failures. The OpenTelemetry SDK drops a batch whose export failed
//! and reports it only through its own internal log, which rollcall does not enable, so these
//! wrappers log failures in rollcall's log instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Counts consecutive failed exports of one signal and logs them at a falling rate: the 1st,
/// 2nd, 4th, 8th and so on, so that an unreachable collector does not flood the log.
#[derive(Debug)]
struct FailureLog {
    signal: &'static str,
    endpoint: String,
    consecutive: AtomicU64,
}

impl FailureLog {
    fn new(signal: &'static str, endpoint: &str) -> Self {
        FailureLog {
            signal,
            endpoint: endpoint.to_owned(),
            consecutive: AtomicU64::new(0),
        }
    }

    fn record(&self, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                let failures = self.consecutive.swap(0, Ordering::Relaxed);
                if failures > 0 {
                    tracing::info!(
                        signal = self.signal,
                        endpoint = %self.endpoint,
                        failures,
                        "OTLP export works again"
                    );
                }
            }
            Err(error) => {
                let failures = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if failures.is_power_of_two() {
                    tracing::warn!(
                        signal = self.signal,
                        endpoint = %self.endpoint,
                        failures,
                        %error,
                        "OTLP export failed, so this batch is dropped; rollcall goes on \
                         serving. Check that the collector runs at --otlp-endpoint"
                    );
                }
            }
        }
    }
}

/// A span exporter that logs failed exports.
#[derive(Debug)]
pub(super) struct LoggedSpanExporter<E> {
    inner: E,
    failures: FailureLog,
}

impl<E> LoggedSpanExporter<E> {
    pub(super) fn new(inner: E, endpoint: &str) -> Self {
        LoggedSpanExporter {
            inner,
            failures: FailureLog::new("spans", endpoint),
        }
    }
}

impl<E: SpanExporter> SpanExporter for LoggedSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.failures.record(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A metric exporter that logs failed exports.
#[derive(Debug)]
pub(super) struct LoggedMetricExporter<E> {
    inner: E,
    failures: FailureLog,
}

impl<E> LoggedMetricExporter<E> {
    pub(super) fn new(inner: E, endpoint: &str) -> Self {
        LoggedMetricExporter {
            inner,
            failures: FailureLog::new("metrics", endpoint),
        }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for LoggedMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.failures.record(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;

    #[test]
    fn failures_are_counted_until_an_export_succeeds() {
        let log = FailureLog::new("spans", "http://127.0.0.1:1");
        let failed = Err(OTelSdkError::InternalFailure("refused".to_owned()));
        log.record(&failed);
        log.record(&failed);
        log.record(&failed);
        assert_eq!(log.consecutive.load(Ordering::Relaxed), 3);
        log.record(&Ok(()));
        assert_eq!(log.consecutive.load(Ordering::Relaxed), 0);
    }
}
