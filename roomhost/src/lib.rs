//! The roomhost: owns rooms. Gateways open one gRPC stream per room they
//! serve; the room's actor orders, persists and fans out its events.
//!
//! Layout:
//! * [`config`]: flags and validated configuration.
//! * [`service`]: the gRPC `RoomHost` service (room streams, admin calls).
//! * [`registry`]: the active rooms of this process, started on demand.
//! * [`room`]: one room's actor: seq, presence, names, group commit, output gate;
//!   [`dedup`]: resent messages are not stored twice.
//! * [`store`]: Redis (and the in-memory dev store).
//! * [`metrics`] and [`http`]: Prometheus metrics and health on `--metrics-listen`.
#![forbid(unsafe_code)]

pub mod config;
pub mod dedup;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod room;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rooms_proto::host::room_host_server::RoomHostServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

pub use config::{Args, Config};
use metrics::Metrics;
use registry::Registry;
use room::RoomSettings;
use rooms_cluster::MembershipWatch;
use store::{MemoryStore, Owner, RedisStore, Store, StoreError};

/// Concurrent room streams one gateway connection may hold: a gateway keeps
/// one stream per active room, so the HTTP/2 default (~100-200) is far too low.
pub const MAX_CONCURRENT_STREAMS: u32 = 100_000;
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// HTTP/2 pings between gateways and roomhosts, both ways: a peer that
/// does not answer one within [`KEEPALIVE_TIMEOUT`] (crashed, frozen, or
/// behind a network partition that drops packets silently) has its
/// connection closed, which ends every room stream on it at once, instead
/// of waiting minutes for TCP to give up. One ping per connection, not per
/// room, so it costs nothing per room.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RoomhostError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("membership: {0}")]
    Membership(#[from] rooms_cluster::MembershipError),
}

/// Opens the configured store: Redis, or memory when no URL is given.
pub async fn open_store(config: &Config) -> Result<Store, StoreError> {
    Ok(match &config.redis {
        Some(url) => Store::Redis(RedisStore::connect(url, config.history_limit).await?),
        None => {
            tracing::warn!(
                "no --redis: using the in-memory store (development only, nothing survives a restart)"
            );
            Store::Memory(MemoryStore::new(config.history_limit))
        }
    })
}

/// The roomhost's listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// gRPC: room streams and calls from gateways.
    pub grpc: TcpListener,
    /// HTTP `/metrics`, `/healthz`, `/readyz`; none for an embedded roomhost.
    pub http: Option<TcpListener>,
}

/// Serves rooms until `shutdown` resolves, then flushes every room and
/// closes the gateways' streams (bounded by the shutdown grace).
///
/// `metrics` are served on the HTTP listener if there is one; an embedding
/// process (the gateway's zero-setup roomhost) may serve them itself.
pub async fn run(
    listeners: Listeners,
    config: Config,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RoomhostError> {
    let Listeners { grpc: listener, http } = listeners;
    let local = listener.local_addr()?;
    let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| local.to_string());
    let settings = RoomSettings {
        idle_timeout: config.room_idle_timeout,
        history_limit: config.history_limit,
        lease_ttl: config.lease_ttl,
        owner: Owner::new(&advertise),
    };
    // The ring tells this roomhost which rooms are its own; without
    // `--roomhosts` it serves whatever it is asked.
    let membership = match config.roomhosts.clone() {
        Some(source) => Some(MembershipWatch::start(source).await?),
        None => None,
    };
    let ring = membership.as_ref().map(MembershipWatch::subscribe);
    let registry =
        Registry::new(store, settings, config.max_rooms, ring.clone(), Arc::clone(&metrics));
    let (stop_http, http_stopped) = watch::channel(false);
    let http_task = http.map(|listener| {
        tokio::spawn(http::serve(listener, Arc::clone(&registry), metrics, http_stopped))
    });
    let rebalancer = ring.map(|mut ring| {
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            while ring.changed().await.is_ok() {
                let current = ring.borrow_and_update().clone();
                registry.rebalance(&current).await;
            }
        })
    });
    let service = service::RoomHostService::new(Arc::clone(&registry), advertise.clone());
    let metrics_addr = http_addr.map_or_else(|| "none".to_owned(), |a| a.to_string());
    tracing::info!(listen = %local, advertise = %advertise, metrics = %metrics_addr, "roomhost serving");
    let grace = config.shutdown_grace;
    let drain = async move {
        shutdown.await;
        tracing::info!("roomhost stopping: flushing rooms");
        registry.shutdown(grace).await;
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(RoomHostServer::new(service).max_decoding_message_size(1 << 20))
        .serve_with_incoming_shutdown(incoming, drain)
        .await?;
    if let Some(task) = rebalancer {
        task.abort();
    }
    let _ = stop_http.send(true);
    if let Some(task) = http_task {
        let _ = task.await;
    }
    drop(membership);
    tracing::info!("roomhost stopped");
    Ok(())
}
