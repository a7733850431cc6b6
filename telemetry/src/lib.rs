//! What every rooms server process reports the same way.
//!
//! Layout:
//! * [`logging`]: `tracing` logs as text or JSON, plus OpenTelemetry traces
//!   over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! * [`propagation`]: W3C trace context carried between processes, in gRPC
//!   metadata for calls and in a frame field for messages on a stream.
//! * [`prometheus`]: histogram buckets and the text exposition shared by
//!   both binaries' `/metrics`.
#![forbid(unsafe_code)]

pub mod logging;
pub mod prometheus;
pub mod propagation;

pub use logging::{LogFormat, Telemetry, init};
