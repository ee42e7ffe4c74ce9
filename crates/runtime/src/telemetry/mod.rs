//! Logging, and OpenTelemetry traces and metrics sent to an OTLP collector. Logs and spans
//! carry ids (UPNs, LAESTABs, case ids, request ids), never names, dates of birth or
//! addresses.
//!
//! Without an OTLP endpoint nothing is exported: the spans this module's helpers start are
//! disabled, and the metric instruments record into OpenTelemetry's no-op meter.

mod export;
pub mod grpc;
pub mod metrics;
mod propagation;

use std::io::IsTerminal;
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::transport::ClientTlsConfig;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use grpc::GrpcTelemetryLayer;
pub use propagation::{background_span, current_traceparent, link_traceparent, set_attribute};

/// The target of the spans rollcall exports. These spans are left out of the log, so log
/// lines read the same with and without an OTLP endpoint.
pub const SPAN_TARGET: &str = "rollcall::trace";

/// The service name used when `OTEL_SERVICE_NAME` is unset and the caller gives none.
pub const DEFAULT_SERVICE_NAME: &str = "rollcall";

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The collector that spans and metrics are sent to, and the service name they carry.
#[derive(Debug, Clone)]
pub struct OtlpExport {
    /// The collector's OTLP/gRPC address, for example `http://127.0.0.1:4317`, or
    /// `https://collector.monitoring.svc:4317` with [`OtlpExport::tls`] set.
    pub endpoint: String,
    /// The `service.name` resource attribute, for example `rollcall` or `rollcall-registers`.
    pub service_name: String,
    /// The TLS settings for an `https://` endpoint: the CA that signed the collector's
    /// certificate, and the certificate to present when the collector requests one.
    pub tls: Option<ClientTlsConfig>,
}

impl OtlpExport {
    /// Exports to `endpoint` under the service name in `OTEL_SERVICE_NAME`, or under
    /// `default_service_name` when that variable is unset or blank.
    pub fn new(endpoint: &str, default_service_name: &str) -> Self {
        let service_name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| default_service_name.to_owned());
        OtlpExport {
            endpoint: endpoint.trim().to_owned(),
            service_name,
            tls: None,
        }
    }
}

/// The providers of an installed OTLP export, kept so that [`flush`] can reach them.
#[derive(Debug)]
struct Providers {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

static PROVIDERS: OnceLock<Providers> = OnceLock::new();

/// Returns true when spans and metrics are exported, that is after [`init_with_export`]
/// installed an OTLP export.
pub fn exporting() -> bool {
    PROVIDERS.get().is_some()
}

/// Installs the global logger, writing to standard error. `RUST_LOG` overrides
/// `default_directive` (for example `info` or `rollcall=debug`).
pub fn init(format: LogFormat, default_directive: &str) {
    // Only installing an export can fail, and there is none here.
    let _ = init_with_export(format, default_directive, None);
}

/// Installs the global logger as [`init`] does and, with `export`, sends spans and metrics to
/// an OTLP/gRPC collector. Must run inside a tokio runtime, because the exporters' gRPC
/// channels start tasks on it.
///
/// The collector is reached lazily: an unreachable one is logged at each failed export, with
/// repeats counted, and never stops the caller. Call [`flush`] before the process exits.
///
/// # Errors
///
/// Fails when the endpoint is not an `http://` URL, or the exporters cannot be built.
pub fn init_with_export(
    format: LogFormat,
    default_directive: &str,
    export: Option<&OtlpExport>,
) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    // The exported spans stay out of the log, whatever RUST_LOG enables.
    let filter = filter.and(filter_fn(|metadata| {
        !(metadata.is_span() && metadata.target() == SPAN_TARGET)
    }));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log written to a file or a collector stays plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };

    let otel = match export {
        Some(export) => {
            let providers = build_providers(export)?;
            let tracer = providers.tracer.tracer("rollcall");
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_meter_provider(providers.meter.clone());
            opentelemetry::global::set_tracer_provider(providers.tracer.clone());
            // Only rollcall's own spans are exported, with the warnings and errors logged
            // inside them as span events. Spans of libraries such as sqlx and h2 are not.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_filter(filter_fn(|metadata| {
                    if metadata.is_span() {
                        metadata.target() == SPAN_TARGET
                    } else {
                        *metadata.level() <= Level::WARN
                    }
                }));
            if PROVIDERS.set(providers).is_err() {
                bail!("the OTLP export is already installed in this process");
            }
            Some(layer)
        }
        None => None,
    };

    // A second call (as in tests that start several servers) keeps the first logger.
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(export) = export {
        if !installed {
            bail!("a logger is already installed, so spans cannot be exported");
        }
        tracing::info!(
            endpoint = %export.endpoint,
            service = %export.service_name,
            "Exporting spans and metrics over OTLP"
        );
    }
    Ok(())
}

/// Builds the tracer and meter providers that export to `export.endpoint`.
fn build_providers(export: &OtlpExport) -> anyhow::Result<Providers> {
    let endpoint = export.endpoint.as_str();
    let tls = match (endpoint.starts_with("https://"), &export.tls) {
        (true, Some(tls)) => Some(tls.clone()),
        (true, None) => bail!(
            "invalid OTLP endpoint {endpoint:?}: no TLS settings were given for an https:// \
             collector; give --tls-ca with the CA that signed the collector's certificate"
        ),
        (false, _) if endpoint.starts_with("http://") => None,
        (false, _) => bail!(
            "invalid OTLP endpoint {endpoint:?}: expected the http:// or https:// URL of a \
             collector's OTLP/gRPC port, for example http://127.0.0.1:4317"
        ),
    };
    let resource = Resource::builder()
        .with_service_name(export.service_name.clone())
        .build();

    let mut spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if let Some(tls) = &tls {
        spans = spans.with_tls_config(tls.clone());
    }
    let spans = spans
        .build()
        .with_context(|| format!("cannot build the OTLP span exporter for {endpoint}"))?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(export::LoggedSpanExporter::new(spans, endpoint))
        .with_resource(resource.clone())
        .build();

    let mut metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint);
    if let Some(tls) = tls {
        metrics = metrics.with_tls_config(tls);
    }
    let metrics = metrics
        .build()
        .with_context(|| format!("cannot build the OTLP metric exporter for {endpoint}"))?;
    // The interval is OTEL_METRIC_EXPORT_INTERVAL in milliseconds, 60 seconds by default.
    let reader =
        PeriodicReader::builder(export::LoggedMetricExporter::new(metrics, endpoint)).build();
    let meter = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    Ok(Providers { tracer, meter })
}

/// Exports the spans that have ended and the current metrics now, when an OTLP export is
/// installed. Failures are logged. Call it on shutdown, after the server has stopped, so that
/// the last spans are not lost.
pub async fn flush() {
    let Some(providers) = PROVIDERS.get() else {
        return;
    };
    // Flushing blocks until the exporters finish, and their gRPC channels need this runtime's
    // other threads, so it runs on a blocking thread.
    let flushed = tokio::task::spawn_blocking(|| {
        let spans = providers.tracer.force_flush();
        let metrics = providers.meter.force_flush();
        (spans, metrics)
    })
    .await;
    match flushed {
        Ok((spans, metrics)) => {
            if let Err(error) = spans {
                tracing::warn!(%error, "Cannot export the last spans");
            }
            if let Err(error) = metrics {
                tracing::warn!(%error, "Cannot export the last metrics");
            }
        }
        Err(error) => tracing::warn!(%error, "The telemetry flush task failed"),
    }
}
