//! The zero-setup development roomhost: a gateway started without
//! `--roomhosts` runs one in its own process, with the in-memory store.

use std::sync::Arc;

use rooms_server::{Stop, Stopping};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Config, Listeners, Metrics, RoomhostError, run};

/// A roomhost in the calling process, on 127.0.0.1 with the in-memory
/// store: the zero-setup development default a gateway runs when it is
/// given no roomhosts.
pub struct Embedded {
    /// Where gateways reach it.
    pub address: String,
    /// Its metrics, for the embedding process to serve.
    pub metrics: Arc<Metrics>,
    stop: Stop,
    task: JoinHandle<()>,
}

impl Embedded {
    pub async fn start() -> Result<Self, RoomhostError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let metrics = Arc::new(Metrics::new());
        let (stop, mut stopping): (Stop, Stopping) = Stop::new();
        let listeners = Listeners { grpc: listener, http: None };
        let running = run(listeners, Config::embedded(), Arc::clone(&metrics), async move {
            stopping.wait().await;
        });
        let task = tokio::spawn(async move {
            if let Err(error) = running.await {
                tracing::error!(%error, "embedded roomhost failed");
            }
        });
        tracing::warn!(roomhost.addr = %address, "no --roomhosts: running an embedded roomhost with an in-memory store (development only)");
        Ok(Self { address, metrics, stop, task })
    }

    /// Flushes its rooms and stops it.
    pub async fn stop(self) {
        self.stop.stop();
        let _ = self.task.await;
    }
}
