//! The HTTP/2 settings of the gRPC connections between gateways and
//! roomhosts, set once here for both ends.
//!
//! A gateway keeps one stream per active room on one connection per
//! roomhost, so stream limits and windows are sized for thousands of
//! streams. Both ends ping every [`KEEPALIVE_INTERVAL`]: a peer that does
//! not answer within [`KEEPALIVE_TIMEOUT`] (crashed, frozen, or behind a
//! partition that drops packets silently) has its connection closed, which
//! ends every room stream on it at once instead of after minutes of TCP
//! retries. One ping per connection, not per room.

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// Concurrent room streams on one gateway connection (the HTTP/2 default,
/// ~100-200, is far too low for one stream per room).
pub const MAX_CONCURRENT_STREAMS: u32 = 100_000;
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// A roomhost that does not accept a connection within this is skipped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The roomhost's gRPC server, configured for gateways.
pub fn server() -> Server {
    Server::builder()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// A gateway's lazily connected channel to the roomhost at `address`
/// (`host:port`).
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}
