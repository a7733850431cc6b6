//! Installs the process's `tracing` subscriber: formatted logs on stderr
//! and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans exported over OTLP
//! (gRPC) by a batch processor on the Tokio runtime.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable that turns trace export on.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. Hot paths create per-message spans only
/// then, so a process without a collector pays nothing for them.
pub fn traces_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format must be text or json, got `{other}`")),
        }
    }
}

/// Keeps trace export running; [`Telemetry::shutdown`] flushes what is
/// buffered before the process exits.
#[must_use = "dropping it stops nothing, but call shutdown() to flush spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered. Bounded: the exporter's own timeout.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The processor answers from the runtime; wait off its threads.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` filters logs (default `info`).
/// `service` names this process in exported traces. Must run inside the
/// Tokio runtime (the exporter's batch task lives there).
pub fn init(format: LogFormat, service: &'static str) -> Telemetry {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let (provider, otel_error) = match std::env::var(OTLP_ENDPOINT) {
        Ok(endpoint) if !endpoint.is_empty() => match tracer_provider(service) {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
        _ => (None, None),
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("rooms"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter())).with(otel).try_init();
    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
        TRACING.store(true, Ordering::Relaxed);
        tracing::info!(service, "exporting traces over OTLP");
    }
    if let Some(error) = otel_error {
        tracing::error!(%error, "cannot export traces; continuing without");
    }
    Telemetry { provider }
}

fn tracer_provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    // Endpoint, headers and timeout come from the standard OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
