//! The roomhost: owns rooms. Gateways open one gRPC stream per room they
//! serve; the room's actor orders, persists and fans out its events.
//!
//! The public surface is what a process needs to run one: [`Args`] and
//! [`Config`], [`run`] on listeners it bound, and [`Embedded`], the
//! zero-setup roomhost a gateway starts in-process. Everything else is
//! private to this crate.
//!
//! Layout:
//! * `config`: flags and validated configuration.
//! * `service`: the gRPC `RoomHost` service (room streams, unary calls).
//! * `registry`: the active rooms of this process, started on demand.
//! * `room`: one room's actor: seq, presence, names, group commit, output
//!   gate, lease and moves; `dedup`: resent messages are not stored twice.
//! * `leases`: every room's lease, renewed together in batches.
//! * `store`: Redis (and the in-memory dev store).
//! * `metrics` and `http`: Prometheus metrics and health on `--metrics-listen`.
//! * `embedded`: the roomhost a gateway runs in-process when given none.
#![forbid(unsafe_code)]

mod alarm_scan;
mod class_room;
mod config;
mod dedup;
mod embedded;
mod http;
mod leases;
mod metrics;
mod registry;
mod room;
mod service;
mod store;

use std::future::Future;
use std::sync::Arc;

use rooms_cluster::MembershipWatch;
use rooms_proto::host::room_host_server::RoomHostServer;
use rooms_server::{Stop, http2};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use class_room::{ClassMetrics, ClassSetup};
pub use config::{Args, Config, ConfigError};
pub use embedded::Embedded;
pub use metrics::Metrics;
use registry::Registry;
use room::RoomSettings;
use store::{MemoryStore, Owner, RedisStore, Store, StoreError};

/// Largest message a gateway may send on a room stream.
const MAX_GATEWAY_MESSAGE: usize = 1 << 20;

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
async fn open_store(config: &Config) -> Result<Store, StoreError> {
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

/// The room classes of `config`, sharing one pool of threads (one per
/// core) that runs their JavaScript.
fn class_setups(config: &Config, metrics: &Metrics) -> Result<Vec<Arc<ClassSetup>>, RoomhostError> {
    if config.classes.is_empty() {
        return Ok(Vec::new());
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let pool = rooms_classes::Pool::new(threads, config.class_limits.clone())?;
    Ok(config
        .classes
        .iter()
        .map(|bundle| {
            tracing::info!(class = %bundle.spec.class, pattern = %bundle.spec.pattern, bundle = %bundle.hash, "room class loaded");
            Arc::new(ClassSetup {
                bundle: Arc::clone(bundle),
                env: Arc::clone(&config.class_env),
                pool: Arc::clone(&pool),
                metrics: ClassMetrics::of(metrics, &bundle.spec.class),
            })
        })
        .collect())
}

/// The roomhost's listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// gRPC: room streams and calls from gateways.
    pub grpc: TcpListener,
    /// HTTP `/metrics`, `/healthz`, `/readyz`; none for an embedded roomhost.
    pub http: Option<TcpListener>,
}

/// Opens the store, then serves rooms until `shutdown` resolves; then
/// flushes every room and closes the gateways' streams (bounded by the
/// shutdown grace).
///
/// `metrics` are served on the HTTP listener if there is one; an embedding
/// process (the gateway's zero-setup roomhost) may serve them itself.
pub async fn run(
    listeners: Listeners,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RoomhostError> {
    let store = open_store(&config).await?;
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
    let classes = class_setups(&config, &metrics)?;
    let registry = Registry::new(
        store,
        settings,
        config.max_rooms,
        ring.clone(),
        Arc::clone(&metrics),
        classes,
    );
    let (stop_http, http_stopping) = Stop::new();
    let http_task = http.map(|listener| {
        tokio::spawn(http::serve(listener, Arc::clone(&registry), metrics, http_stopping))
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
    let alarm_scan = (!config.classes.is_empty())
        .then(|| tokio::spawn(alarm_scan::run(Arc::clone(&registry), config.lease_ttl)));
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
    http2::server()
        .add_service(RoomHostServer::new(service).max_decoding_message_size(MAX_GATEWAY_MESSAGE))
        .serve_with_incoming_shutdown(incoming, drain)
        .await?;
    for task in [rebalancer, alarm_scan].into_iter().flatten() {
        task.abort();
    }
    stop_http.stop();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    drop(membership);
    tracing::info!("roomhost stopped");
    Ok(())
}
