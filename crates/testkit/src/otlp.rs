//! A local OpenTelemetry collector: an OTLP/gRPC receiver on 127.0.0.1 that keeps every span
//! and metric it is sent, for tests that run `rollcall serve --otlp-endpoint`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// One span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// Returns the trace id in hex.
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }

    /// Returns the span id in hex.
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }

    /// Returns the parent's span id in hex, or an empty string for a root span.
    pub fn parent_span_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }

    /// Returns an attribute's value as text, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

/// Everything the receiver was sent.
#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Debug, Clone, Default)]
struct Store(Arc<Mutex<Received>>);

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        // A test that panicked while holding the lock leaves data that is still readable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.lock();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| attribute(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.spans.push(ReceivedSpan {
                        service_name: service_name.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.lock().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC receiver on a free port of 127.0.0.1. It stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    store: Store,
    tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
}

impl OtlpReceiver {
    /// Starts the receiver on the current tokio runtime, in plain text.
    ///
    /// # Errors
    ///
    /// Fails when no port of 127.0.0.1 can be bound.
    pub async fn start() -> anyhow::Result<Self> {
        Self::serve(None).await
    }

    /// Starts the receiver serving TLS with `cert_pem` and `key_pem`. It accepts only callers
    /// whose client certificate chains to `client_ca_pem`, as a collector in a cluster with
    /// mutual TLS does.
    ///
    /// # Errors
    ///
    /// Fails when no port of 127.0.0.1 can be bound.
    pub async fn start_tls(
        cert_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> anyhow::Result<Self> {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .client_ca_root(Certificate::from_pem(client_ca_pem));
        Self::serve(Some(config)).await
    }

    async fn serve(tls: Option<ServerTlsConfig>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the OTLP receiver to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let store = Store::default();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        let serves_tls = tls.is_some();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .context("invalid TLS settings for the OTLP receiver")?;
        }
        let router = builder
            .add_service(TraceServiceServer::new(store.clone()))
            .add_service(MetricsServiceServer::new(store.clone()));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(async move {
            let served = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "The OTLP receiver stopped");
            }
        });
        Ok(OtlpReceiver {
            addr,
            store,
            tls: serves_tls,
            shutdown: Some(shutdown),
        })
    }

    /// Returns the URL to give `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        if self.tls {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Returns every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.lock().spans.clone()
    }

    /// Returns the latest export's value of a counter named `name`, summed over its attribute
    /// sets, or `None` before it is first exported. Counters are cumulative, so the latest
    /// export contains the total.
    pub fn counter_total(&self, name: &str) -> Option<f64> {
        self.latest(name).and_then(|metric| match metric.data? {
            metric::Data::Sum(sum) => Some(sum.data_points.iter().map(number).sum()),
            _ => None,
        })
    }

    /// Returns the latest export's count of measurements in a histogram named `name`, summed
    /// over its attribute sets.
    pub fn histogram_count(&self, name: &str) -> Option<u64> {
        self.latest(name).and_then(|metric| match metric.data? {
            metric::Data::Histogram(histogram) => {
                Some(histogram.data_points.iter().map(|point| point.count).sum())
            }
            _ => None,
        })
    }

    /// Returns the latest export's data points of a counter named `name`, each as its
    /// attributes (key and value as text) and value.
    pub fn counter_points(&self, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        let Some(metric::Data::Sum(sum)) = self.latest(name).and_then(|metric| metric.data) else {
            return Vec::new();
        };
        sum.data_points
            .iter()
            .map(|point| {
                let attributes = point
                    .attributes
                    .iter()
                    .map(|pair| (pair.key.clone(), text(pair.value.as_ref())))
                    .collect();
                (attributes, number(point))
            })
            .collect()
    }

    /// Returns every metric name received so far.
    pub fn metric_names(&self) -> Vec<String> {
        let received = self.store.lock();
        let mut names: Vec<String> = all_metrics(&received.metrics)
            .map(|metric| metric.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Returns the metric named `name` from the latest export that contains it.
    fn latest(&self, name: &str) -> Option<Metric> {
        let received = self.store.lock();
        received
            .metrics
            .iter()
            .rev()
            .find_map(|request| {
                all_metrics(std::slice::from_ref(request)).find(|metric| metric.name == name)
            })
            .cloned()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn all_metrics(requests: &[ExportMetricsServiceRequest]) -> impl Iterator<Item = &Metric> {
    requests
        .iter()
        .flat_map(|request| &request.resource_metrics)
        .flat_map(|resource| &resource.scope_metrics)
        .flat_map(|scope| &scope.metrics)
}

fn number(point: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsDouble(value)) => value,
        // Counts in tests stay far below 2^53, so the conversion is exact.
        Some(number_data_point::Value::AsInt(value)) => value as f64,
        None => 0.0,
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|pair| pair.key == key)
        .map(|pair| text(pair.value.as_ref()))
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
