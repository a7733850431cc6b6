//! The roomhost's gRPC service: room streams from gateways, and the unary
//! calls the gateways' Admin API forwards here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rooms_proto::RoomId;
use rooms_proto::admin::{
    GetRoomReply, GetRoomRequest, InvokeReply, InvokeRequest, KickReply, KickRequest,
    ListRoomsReply, ListRoomsRequest, PublishReply, PublishRequest, RoomSummary,
};
use rooms_proto::host::room_host_server::RoomHost;
use rooms_proto::host::{
    GatewayFrame, HostFrame, Moved, StatusReply, StatusRequest, gateway_frame, host_frame,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::registry::{LeaseWait, Registry, RegistryError};
use crate::room::{Command, GATEWAY_QUEUE, RoomError, RoomInfo};

/// The longest gateway name a room keeps (`Open.gateway_id`), in characters.
const MAX_GATEWAY_NAME: usize = 64;

pub struct RoomHostService {
    registry: Arc<Registry>,
    advertise: String,
    next_gateway: AtomicU64,
}

impl RoomHostService {
    pub fn new(registry: Arc<Registry>, advertise: String) -> Self {
        Self { registry, advertise, next_gateway: AtomicU64::new(1) }
    }

    /// Where a room not active here should be served instead: the successor
    /// while this roomhost shuts down, else the ring owner if that is
    /// another roomhost (unless the caller could not reach it and asks this
    /// one to claim the room).
    fn elsewhere(&self, room: &RoomId, wait: LeaseWait) -> Option<Moved> {
        if self.registry.get(room).is_some() {
            return None;
        }
        let target = if self.registry.is_closed() {
            Some(self.registry.successor(room))
        } else if wait == LeaseWait::Claim {
            None
        } else {
            let owner = self.registry.ring_owner(room).filter(|owner| *owner != self.advertise);
            owner.map(Moved::to)
        };
        if target.is_some() {
            self.registry.metrics().redirects.inc();
        }
        target
    }

    async fn publish_in(&self, request: PublishRequest) -> Result<Response<PublishReply>, Status> {
        let room = parse_room(&request.room)?;
        let data = rooms_proto::server::parse_system_data(&request.data_json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(target) = self.elsewhere(&room, LeaseWait::Redirect) {
            return Err(target.into_status());
        }
        let (reply, answer) = oneshot::channel();
        let persist = request.persist.unwrap_or(true);
        let publish = Command::Publish { data, persist, reply };
        self.registry.dispatch(&room, publish, LeaseWait::Redirect).await?;
        let seq = answer.await.map_err(dropped)??;
        Ok(Response::new(PublishReply { seq }))
    }
}

fn parse_room(room: &str) -> Result<RoomId, Status> {
    RoomId::parse(room).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Full(_) => Status::resource_exhausted(e.to_string()),
            RegistryError::Unavailable(_) | RegistryError::ShuttingDown => {
                Status::unavailable(e.to_string())
            }
        }
    }
}

impl From<RoomError> for Status {
    fn from(e: RoomError) -> Self {
        match e {
            RoomError::Moved(target) => target.into_status(),
            RoomError::Unavailable(_) => Status::unavailable(e.to_string()),
            RoomError::Refused(message) => Status::invalid_argument(message),
            // Not a move: no `Moved` rides on it.
            RoomError::Threw(message) => Status::failed_precondition(message),
        }
    }
}

fn dropped<T>(_: T) -> Status {
    Status::unavailable("room stopped before answering")
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<HostFrame, Status>> + Send>>;

#[tonic::async_trait]
impl RoomHost for RoomHostService {
    type AttachStream = FrameStream;

    async fn attach(
        &self,
        request: Request<Streaming<GatewayFrame>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let span = tracing::info_span!("roomhost.attach");
        rooms_telemetry::propagation::extract(request.metadata(), &span);
        let mut inbound = request.into_inner();
        let open = match inbound.message().await? {
            Some(GatewayFrame { kind: Some(gateway_frame::Kind::Open(open)) }) => open,
            _ => return Err(Status::invalid_argument("a room stream starts with Open")),
        };
        let room = parse_room(&open.room)?;
        let (tx, rx) = mpsc::channel(GATEWAY_QUEUE);
        let wait = LeaseWait::fallback(open.fallback);
        if let Some(target) = self.elsewhere(&room, wait) {
            let moved = HostFrame { kind: Some(host_frame::Kind::Moved(target)), room_seq: 0 };
            let _ = tx.try_send(Box::new(moved));
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(unbox))));
        }
        let kind = host_frame::Kind::RoomKind(self.registry.kind_of(&room));
        let _ = tx.try_send(Box::new(HostFrame { kind: Some(kind), room_seq: 0 }));
        let gateway = self.next_gateway.fetch_add(1, Ordering::Relaxed);
        let name: Arc<str> =
            open.gateway_id.chars().take(MAX_GATEWAY_NAME).collect::<String>().into();
        let attach = Command::Attach {
            gateway,
            name,
            rejoins: open.rejoins,
            tx,
            resume_after: open.resume_after,
            writes_welcome: open.writes_welcome,
            known_users: open.known_users,
        };
        let mut handle = self.registry.dispatch(&room, attach, wait).instrument(span).await?;
        tracing::debug!(room.id = %room, gateway, gateway.name = %open.gateway_id, "room stream attached");
        let registry = Arc::clone(&self.registry);
        // Owned by the stream: ends when the gateway closes it or the server stops.
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                let Some(frame) = frame.kind else { continue };
                registry.metrics().frames_in.inc();
                let cmd = Command::Frame { gateway, frame };
                if let Err(cmd) = handle.send(cmd).await {
                    // The actor stopped. If it hibernated, it handed our
                    // Attach to its successor: follow it. Never start an
                    // actor for a stream's frame: one started by a stale
                    // stream (the room moved away) would take the lease the
                    // room's new owner is waiting for, and serve nobody.
                    let Some(next) = registry.get(&room) else { break };
                    if next.send(cmd).await.is_err() {
                        break;
                    }
                    handle = next;
                }
            }
            if let Some(handle) = registry.get(&room) {
                let _ = handle.send(Command::Detach { gateway }).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(unbox))))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let span = tracing::info_span!("roomhost.publish", room.id = %request.get_ref().room);
        rooms_telemetry::propagation::extract(request.metadata(), &span);
        self.publish_in(request.into_inner()).instrument(span).await
    }
    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<GetRoomReply>, Status> {
        let room = parse_room(&request.into_inner().room)?;
        if let Some(target) = self.elsewhere(&room, LeaseWait::Redirect) {
            return Err(target.into_status());
        }
        let info = match self.registry.get(&room) {
            Some(handle) => {
                let (reply, answer) = oneshot::channel();
                handle.send(Command::Info { reply }).await.map_err(dropped)?;
                answer.await.map_err(dropped)?
            }
            // Not in memory: report what the store knows without loading it.
            None => {
                let seq = self
                    .registry
                    .store()
                    .latest_seq(&room)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                RoomInfo { connections: 0, users: 0, seq }
            }
        };
        let kind = self.registry.kind_of(&room);
        Ok(Response::new(GetRoomReply {
            room: room.to_string(),
            owner: self.advertise.clone(),
            connections: info.connections,
            users: info.users,
            seq: info.seq,
            class: kind.class,
            bundle: kind.bundle,
        }))
    }

    async fn list_rooms(
        &self,
        _request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsReply>, Status> {
        let mut rooms = Vec::new();
        for room in self.registry.active_rooms() {
            let Some(handle) = self.registry.get(&room) else {
                continue;
            };
            let (reply, answer) = oneshot::channel();
            if handle.send(Command::Info { reply }).await.is_err() {
                continue;
            }
            if let Ok(info) = answer.await {
                rooms.push(RoomSummary {
                    room: room.to_string(),
                    owner: self.advertise.clone(),
                    connections: info.connections,
                });
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(Response::new(ListRoomsReply { rooms }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        let request = request.into_inner();
        let room = parse_room(&request.room)?;
        if request.user_id.is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        if let Some(target) = self.elsewhere(&room, LeaseWait::Redirect) {
            return Err(target.into_status());
        }
        let Some(handle) = self.registry.get(&room) else {
            return Ok(Response::new(KickReply { closed: 0 }));
        };
        let (reply, answer) = oneshot::channel();
        let reason = if request.reason.is_empty() { "kicked".to_owned() } else { request.reason };
        handle
            .send(Command::Kick { user: request.user_id, reason, reply })
            .await
            .map_err(dropped)?;
        let closed = answer.await.map_err(dropped)?;
        Ok(Response::new(KickReply { closed }))
    }

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeReply>, Status> {
        let InvokeRequest { room, method, args_json } = request.into_inner();
        let room = parse_room(&room)?;
        match serde_json::from_str::<serde_json::Value>(&args_json) {
            Ok(serde_json::Value::Array(_)) => {}
            _ => return Err(Status::invalid_argument("args_json must be a JSON array")),
        }
        if let Some(target) = self.elsewhere(&room, LeaseWait::Redirect) {
            return Err(target.into_status());
        }
        let (reply, answer) = oneshot::channel();
        let invoke = Command::Invoke { method, args_json, reply };
        self.registry.dispatch(&room, invoke, LeaseWait::Redirect).await?;
        let result_json = answer.await.map_err(dropped)??;
        Ok(Response::new(InvokeReply { result_json }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(StatusReply {
            address: self.advertise.clone(),
            active_rooms: self.registry.active_count() as u32,
        }))
    }
}

/// A frame of a room's queue to a gateway, as its stream sends it (the
/// queue holds it boxed, see `GatewayTx`).
#[expect(clippy::boxed_local, reason = "the queue's item type")]
fn unbox(frame: Box<HostFrame>) -> Result<HostFrame, Status> {
    Ok(*frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_that_threw_is_a_failed_precondition_never_taken_for_a_move() {
        let status = Status::from(RoomError::Threw("boom".into()));
        assert_eq!((status.code(), status.message()), (tonic::Code::FailedPrecondition, "boom"));
        assert_eq!(Moved::from_status(&status), None);
        let status = Status::from(RoomError::Refused("no".into()));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}
