//! Finds the roomhost that owns a room (the ring over the current members)
//! and keeps one gRPC channel per roomhost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rooms_cluster::{MembershipWatch, Ring};
use rooms_proto::RoomId;
use rooms_proto::host::room_host_client::RoomHostClient;
use tonic::transport::{Channel, Endpoint};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Flow-control windows sized for thousands of room streams on one connection.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;

pub type HostClient = RoomHostClient<Channel>;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no roomhost is configured")]
    NoMembers,
    #[error("roomhost address `{0}` is invalid")]
    BadAddress(String),
}

pub struct Router {
    membership: MembershipWatch,
    /// One lazily connected channel per member address; pruned to the
    /// current members when a new one is added.
    channels: Mutex<HashMap<String, HostClient>>,
}

impl Router {
    pub fn new(membership: MembershipWatch) -> Arc<Self> {
        Arc::new(Self { membership, channels: Mutex::default() })
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.membership.ring()
    }

    /// The owner of `room` and a client for it.
    pub fn route(&self, room: &RoomId) -> Result<(String, HostClient), RouteError> {
        let ring = self.ring();
        let owner = ring.owner(room).ok_or(RouteError::NoMembers)?.to_owned();
        let client = self.client(&owner, &ring)?;
        Ok((owner, client))
    }

    /// A client for a member address.
    pub fn client(&self, address: &str, ring: &Ring) -> Result<HostClient, RouteError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = channels.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|_| RouteError::BadAddress(address.to_owned()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client =
            RoomHostClient::new(endpoint.connect_lazy()).max_decoding_message_size(8 << 20);
        channels.retain(|a, _| ring.contains(a));
        channels.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}
