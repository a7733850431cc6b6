//! The gateway: terminates client WebSockets and forwards each room over one
//! gRPC stream to the roomhost that owns it. Stateless; run as many as needed.
//!
//! The public surface is what the binary needs: [`Args`] and [`Config`],
//! and [`run`] on listeners it bound. Everything else is private to this
//! crate; the roomhost crate is used only for its embedded development
//! roomhost (`roomhost::Embedded`).
//!
//! Layout:
//! * `config`: flags and validated configuration.
//! * `http`: routes, validation and the WebSocket upgrade; `subprotocol`
//!   for `Sec-WebSocket-Protocol`; `auth`: origin checks and identity (JWT).
//! * `session`: one reader and one writer task per client socket; `socket`
//!   splits the upgraded connection for them, `writer` frames what goes
//!   out; `conn`: the socket's handle, close signal and rate limiter.
//! * `link`: one gRPC stream per (gateway, room), fanning frames out.
//! * `router`: ring lookup and the gRPC channel per roomhost.
//! * `admin`: the operator API and its token check.
//! * `metrics`: Prometheus counters on `/metrics`.
#![forbid(unsafe_code)]

mod admin;
mod auth;
mod class_handshake;
mod class_session;
mod config;
mod conn;
mod http;
mod link;
mod metrics;
mod router;
mod session;
mod socket;
mod subprotocol;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rooms_cluster::{MembershipError, MembershipWatch};
use rooms_proto::admin::admin_server::AdminServer;
use rooms_server::Stop;
use rooms_server::accept::{self, Http1};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::transport::server::TcpIncoming;

pub use config::{Args, Config, ConfigError};
use http::HttpState;
use link::Links;
use metrics::Metrics;
use router::Router;
use session::SessionEnv;

/// Largest request head the gateway reads.
const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("embedded roomhost: {0}")]
    Embedded(#[from] roomhost::RoomhostError),
}

/// The gateway's two listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub http: TcpListener,
    pub admin: TcpListener,
}

/// Serves clients and the Admin API until `shutdown` resolves; then stops
/// accepting, closes every socket with 1012 and waits for them (bounded by
/// the shutdown grace).
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let (membership, embedded) = match config.roomhosts.clone() {
        Some(source) => (MembershipWatch::start(source).await?, None),
        None => {
            let embedded = roomhost::Embedded::start().await?;
            (MembershipWatch::fixed(vec![embedded.address.clone()]), Some(embedded))
        }
    };
    let metrics = Arc::new(Metrics::new());
    let connections = metrics.connections_open.clone();
    rooms_server::memory::spawn_reclaimer(move || connections.get());
    let router = Router::new(membership, metrics.redirects.clone());
    let gateway_id = format!("gw-{:08x}", rand::random::<u32>());
    let (stop, stopping) = Stop::new();
    let links =
        Links::new(Arc::clone(&router), Arc::clone(&metrics), gateway_id.clone(), stopping.clone());
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let state = Arc::new(HttpState {
        env: SessionEnv {
            links,
            metrics,
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            send_queue: config.send_queue,
            ping_interval: config.ping_interval,
            stopping: stopping.clone(),
        },
        access: Arc::clone(&config.access),
        connections: Arc::clone(&connections),
        next_conn: AtomicU64::new(1),
        embedded_metrics: embedded.as_ref().map(|e| Arc::clone(&e.metrics)),
    });

    if config.access.origins.allows_any() {
        tracing::warn!(
            "no --allowed-origins: any web page may open sockets here (fine for development)"
        );
    }
    if config.access.jwt.is_none() {
        tracing::warn!(
            "--auth none: users are who they say they are (?user=); use --auth jwt in production"
        );
    }
    let http_addr = listeners.http.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    tracing::info!(listen = %http_addr, admin = %admin_addr, gateway.id = %gateway_id, "gateway serving");

    let admin = {
        let mut stopping = stopping.clone();
        let incoming = TcpIncoming::from(listeners.admin).with_nodelay(Some(true));
        let service = AdminServer::with_interceptor(
            admin::AdminService::new(Arc::clone(&router)),
            admin::Authorize::new(config.admin_token.clone()),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move { stopping.wait().await }),
        )
    };

    let http1 = Http1 {
        header_timeout: config.handshake_timeout,
        max_head: MAX_HEADER_BYTES,
        keep_alive: true,
    };
    let accept = tokio::spawn(accept::serve(listeners.http, http1, stopping, move |req| {
        http::respond(Arc::clone(&state), req)
    }));

    shutdown.await;
    tracing::info!("gateway stopping: closing sockets with 1012");
    stop.stop();
    let _ = accept.await;
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(config.shutdown_grace, connections.acquire_many(all)).await.is_err() {
        tracing::warn!("sockets still open after the shutdown grace");
    }
    match admin.await {
        Ok(Err(error)) => tracing::warn!(%error, "admin server error"),
        Err(error) => tracing::warn!(%error, "admin server task failed"),
        Ok(Ok(())) => {}
    }
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    tracing::info!("gateway stopped");
    Ok(())
}
