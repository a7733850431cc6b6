//! Finds the roomhost that owns a room (the ring over the current members)
//! and keeps one gRPC channel per roomhost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rooms_cluster::{MembershipWatch, Ring};
use rooms_proto::RoomId;
use rooms_proto::host::Moved;
use rooms_proto::host::room_host_client::RoomHostClient;
use rooms_server::http2;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Largest message a roomhost may send (a page of replayed history).
const MAX_ROOMHOST_MESSAGE: usize = 8 << 20;

/// Every call carries the caller's trace context in its metadata.
pub(crate) type HostClient = RoomHostClient<InterceptedService<Channel, Propagate>>;
type Propagate = fn(Request<()>) -> Result<Request<()>, Status>;

fn propagate(mut request: Request<()>) -> Result<Request<()>, Status> {
    rooms_telemetry::propagation::inject(request.metadata_mut());
    Ok(request)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("no roomhost is configured")]
    NoMembers,
    #[error("roomhost address `{0}` is invalid")]
    BadAddress(String),
}

pub(crate) struct Router {
    membership: MembershipWatch,
    /// One lazily connected channel per member address; pruned to the
    /// current members when a new one is added.
    channels: Mutex<HashMap<String, HostClient>>,
    /// Redirects to a room's real owner followed.
    redirects: Counter,
}

impl Router {
    pub fn new(membership: MembershipWatch, redirects: Counter) -> Arc<Self> {
        Arc::new(Self { membership, channels: Mutex::default(), redirects })
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
        let endpoint =
            http2::endpoint(address).map_err(|_| RouteError::BadAddress(address.to_owned()))?;
        let client =
            RoomHostClient::with_interceptor(endpoint.connect_lazy(), propagate as Propagate)
                .max_decoding_message_size(MAX_ROOMHOST_MESSAGE);
        channels.retain(|a, _| ring.contains(a));
        channels.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

impl Router {
    /// Calls the roomhost that serves `room`: the ring owner, or the one it
    /// redirects to (a room handed over or taken over elsewhere).
    pub async fn call_owner<T, F, Fut>(
        &self,
        room: &RoomId,
        timeout: Duration,
        call_with: F,
    ) -> Result<T, Status>
    where
        F: Fn(HostClient, RoomId) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let (_, client) = self.route(room).map_err(|e| Status::unavailable(e.to_string()))?;
        match call(timeout, call_with(client, room.clone())).await {
            Err(status) => {
                let Some(moved) = Moved::from_status(&status) else {
                    return Err(status);
                };
                self.redirects.inc();
                let client = moved
                    .address
                    .and_then(|target| self.client(&target, &self.ring()).ok())
                    .ok_or_else(|| Status::unavailable("the room's owner is unknown; retry"))?;
                call(timeout, call_with(client, room.clone())).await
            }
            ok => ok,
        }
    }
}

/// Runs one roomhost call with a deadline; transport failures are UNAVAILABLE.
pub async fn call<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) if status.code() == tonic::Code::Unknown => {
            Err(Status::unavailable(format!("roomhost unreachable: {}", status.message())))
        }
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::unavailable("roomhost did not answer in time")),
    }
}
