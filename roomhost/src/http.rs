//! The roomhost's small HTTP surface on `--metrics-listen`: `/metrics`
//! (Prometheus text), `/healthz` (the process answers) and `/readyz` (it
//! takes rooms; 503 once it is shutting down, so Kubernetes stops listing it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header};
use rooms_server::Stopping;
use rooms_server::accept::{self, Http1};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// How connections to the metrics port are read: one short request each.
const HTTP1: Http1 =
    Http1 { header_timeout: Duration::from_secs(10), max_head: 16 * 1024, keep_alive: false };

/// Serves until `stopping`.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    stopping: Stopping,
) {
    accept::serve(listener, HTTP1, stopping, move |req| {
        let response = respond(&req, &registry, &metrics);
        async move { response }
    })
    .await;
}

fn respond<B>(req: &Request<B>, registry: &Registry, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, rooms_telemetry::prometheus::CONTENT_TYPE, metrics.render())
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if registry.is_closed() => {
            (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n".to_owned())
        }
        (&Method::GET, "/readyz") => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
