//! The Redis connection every room of a roomhost shares: one multiplexed
//! connection to one server, or a Redis Cluster connection, with every call
//! bounded in time and a connection replaced after a timeout.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use super::StoreError;

/// A Redis call that takes longer fails, so a stuck Redis turns into
/// `unavailable` errors instead of a stalled room.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL scheme naming Redis Cluster seed nodes.
pub const CLUSTER_SCHEME: &str = "redis-cluster://";

/// One multiplexed connection shared by every room: to one server, or to
/// each node of a Redis Cluster (commands routed by their keys' slot).
#[derive(Clone)]
pub(super) enum Conn {
    Single(Arc<Single>),
    Cluster(ClusterConnection),
}

/// The connection to one server. The connection manager reconnects when the
/// connection drops, but not when a call times out: a connection whose
/// packets vanish (a network partition) would stay stuck in TCP's
/// retransmission backoff long after the network healed. So a timed-out
/// call replaces the connection; the next call opens a fresh one.
pub(super) struct Single {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// (generation, connection): a timeout replaces only the connection it
    /// happened on, so a burst of timeouts reconnects once.
    current: std::sync::Mutex<(u64, ConnectionManager)>,
}

impl Single {
    fn current(&self) -> (u64, ConnectionManager) {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs a call on the current connection, bounded by [`RESPONSE_TIMEOUT`]
    /// whatever it waits for (a reply, or a connection being made).
    async fn call<T, F>(&self, call: impl FnOnce(ConnectionManager) -> F) -> redis::RedisResult<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.current();
        let result = match tokio::time::timeout(RESPONSE_TIMEOUT, call(conn)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "Redis did not answer in time",
            )
            .into()),
        };
        self.check(generation, &result);
        result
    }

    /// Replaces connection `generation` after `result` timed out on it.
    fn check<T>(&self, generation: u64, result: &redis::RedisResult<T>) {
        if !result.as_ref().is_err_and(redis::RedisError::is_timeout) {
            return;
        }
        let fresh =
            match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
            {
                Ok(fresh) => fresh,
                Err(error) => return tracing::warn!(%error, "cannot replace the Redis connection"),
            };
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 == generation {
            tracing::warn!("a Redis call timed out; reconnecting");
            *current = (generation + 1, fresh);
        }
    }
}

impl Conn {
    /// Connects to `url`: one server, or a Redis Cluster's seed nodes.
    pub(super) async fn open(url: &str) -> Result<Self, StoreError> {
        // Group commits from many rooms share one multiplexed connection:
        // without TCP_NODELAY, Nagle holds each small write behind the last
        // unacknowledged one.
        let tcp = TcpSettings::default().set_nodelay(true);
        Ok(match cluster_seeds(url) {
            Some(seeds) => {
                let client = ClusterClient::builder(seeds)
                    .tcp_settings(tcp)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()?;
                Self::Cluster(client.get_async_connection().await?)
            }
            None => {
                let info = url.into_connection_info()?.set_tcp_settings(tcp);
                let client = redis::Client::open(info)?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(2);
                let conn =
                    ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
                let current = std::sync::Mutex::new((0, conn));
                Self::Single(Arc::new(Single { client, config, current }))
            }
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(single) => Box::pin(
                single.call(move |mut conn| async move { conn.req_packed_command(cmd).await }),
            ),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(single) => Box::pin(single.call(move |mut conn| async move {
                conn.req_packed_commands(pipeline, offset, count).await
            })),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(single) => single.current().1.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The seed nodes of a `redis-cluster://` URL as `redis://` URLs (None for
/// any other URL). Credentials before `@` apply to every node.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("redis://{auth}{host}"))
        .collect();
    Some(seeds)
}
