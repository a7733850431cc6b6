//! The integration-test harness: starts real `redis-server`, `roomhost` and
//! `gateway` processes on loopback with free ports, waits for them by
//! polling, talks to them as clients do, and stops everything on drop.
//!
//! Layout:
//! * [`process`]: a child process with captured logs, killed on drop.
//! * [`redis`]: a private `redis-server`.
//! * [`cluster`]: [`TestCluster`]: Redis + roomhosts + gateways.
//! * [`fake_gateway`]: one room stream of the gateway↔roomhost protocol, by hand.
//! * [`client`]: a WebSocket client speaking the client protocol.
//! * [`load`]: steady chat load for fault tests, and its verification.
//! * [`netns`]: network namespaces and silent partitions between them;
//!   [`netcluster`]: a whole cluster in them, and the faults a nemesis injects.
//! * [`seed`]: seeded randomness for fault schedules.
//! * [`checker`]: the history checker: safety and liveness of a recorded run.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod fake_gateway;
pub mod load;
pub mod netcluster;
pub mod netns;
pub mod process;
pub mod redis;
pub mod seed;

pub use client::Client;
pub use cluster::{Cluster, TestCluster};

use std::time::Duration;

/// How long a test waits for anything it expects before failing.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` until it returns Some, or panics after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
