//! The gateway: terminates client WebSockets and forwards each room over one
//! gRPC stream to the roomhost that owns it. Stateless; run as many as needed.
//!
//! Layout:
//! * [`config`]: flags and validated configuration.
//! * [`http`]: routes, validation and the WebSocket upgrade; [`subprotocol`]
//!   for `Sec-WebSocket-Protocol`; [`auth`]: origin checks and identity (JWT).
//! * [`session`]: one reader and one writer task per client socket;
//!   [`socket`] splits the upgraded connection for them, [`writer`] frames
//!   what goes out; [`conn`]: the socket's handle, close signal and rate
//!   limiter.
//! * [`link`]: one gRPC stream per (gateway, room), fanning frames out.
//! * [`router`]: ring lookup and the gRPC channel per roomhost.
//! * [`admin`]: the operator API.
//! * [`metrics`]: Prometheus counters on `/metrics`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod conn;
pub mod http;
pub mod link;
pub mod metrics;
pub mod router;
pub mod session;
pub mod socket;
pub mod subprotocol;
pub mod writer;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rooms_cluster::{MembershipError, MembershipWatch};
use rooms_proto::admin::admin_server::AdminServer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

pub use config::{Args, Config};
use http::HttpState;
use link::Links;
use metrics::Metrics;
use router::Router;
use session::SessionEnv;

/// Largest request head the gateway reads.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The gateway's two listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub http: TcpListener,
    pub admin: TcpListener,
}

/// An in-process roomhost with the in-memory store: the zero-setup default.
struct Embedded {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Its metrics, served on the gateway's `/metrics`.
    metrics: Arc<roomhost::metrics::Metrics>,
}

async fn start_embedded() -> Result<(MembershipWatch, Embedded), GatewayError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let config = roomhost::Config::embedded();
    let store =
        roomhost::store::Store::Memory(roomhost::store::MemoryStore::new(config.history_limit));
    let (stop, mut stopped) = watch::channel(false);
    let metrics = Arc::new(roomhost::metrics::Metrics::new());
    let roomhost_metrics = Arc::clone(&metrics);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(error) = roomhost::run(
            roomhost::Listeners { grpc: listener, http: None },
            config,
            store,
            roomhost_metrics,
            shutdown,
        )
        .await
        {
            tracing::error!(%error, "embedded roomhost failed");
        }
    });
    tracing::warn!(roomhost.addr = %address, "no --roomhosts: running an embedded roomhost with an in-memory store (development only)");
    Ok((MembershipWatch::fixed(vec![address]), Embedded { stop, task, metrics }))
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
            let (membership, embedded) = start_embedded().await?;
            (membership, Some(embedded))
        }
    };
    let metrics = Arc::new(Metrics::new());
    let router = Router::new(membership, metrics.redirects.clone());
    let gateway_id = format!("gw-{:08x}", rand::random::<u32>());
    let (stop_tx, stop_rx) = watch::channel(false);
    let links =
        Links::new(Arc::clone(&router), Arc::clone(&metrics), gateway_id.clone(), stop_rx.clone());
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let state = Arc::new(HttpState {
        env: SessionEnv {
            links,
            metrics,
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            send_queue: config.send_queue,
            ping_interval: config.ping_interval,
            shutdown: stop_rx.clone(),
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
        let mut stop = stop_rx.clone();
        let service = admin::AdminService::new(Arc::clone(&router), config.admin_token.clone());
        let incoming = TcpIncoming::from(listeners.admin).with_nodelay(Some(true));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(service))
                .serve_with_incoming_shutdown(incoming, async move { stopped(&mut stop).await }),
        )
    };

    let accept =
        tokio::spawn(accept_loop(listeners.http, state, config.handshake_timeout, stop_rx.clone()));

    shutdown.await;
    tracing::info!("gateway stopping: closing sockets with 1012");
    let _ = stop_tx.send(true);
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
        let _ = embedded.stop.send(true);
        let _ = embedded.task.await;
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Resolves once the gateway is stopping.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<HttpState>,
    handshake_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(http::handle(state, req).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}
