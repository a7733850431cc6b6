//! The operator API (`rooms.v1.Admin`), served by every gateway and routed to
//! the roomhost that owns the room.

use std::sync::Arc;
use std::time::Duration;

use rooms_proto::RoomId;
use rooms_proto::admin::admin_server::Admin;
use rooms_proto::admin::{
    ClusterStatusReply, ClusterStatusRequest, GetRoomReply, GetRoomRequest, InvokeReply,
    InvokeRequest, KickReply, KickRequest, ListRoomsReply, ListRoomsRequest, PublishReply,
    PublishRequest, RoomhostStatus,
};
use rooms_proto::host::StatusRequest;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::router::{HostClient, Router, call};

/// Longest wait for a roomhost answering one Admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Admits an Admin call only with the configured token (none: every call).
#[derive(Clone)]
pub(crate) struct Authorize {
    token: Option<Arc<str>>,
}

impl Authorize {
    pub(crate) fn new(token: Option<String>) -> Self {
        Self { token: token.map(Arc::from) }
    }
}

impl Interceptor for Authorize {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "a valid admin token is required (authorization: Bearer TOKEN)",
            ))
        }
    }
}

pub(crate) struct AdminService {
    router: Arc<Router>,
}

impl AdminService {
    pub(crate) fn new(router: Arc<Router>) -> Self {
        Self { router }
    }

    async fn on_owner<T, F, Fut>(&self, room: &str, call_with: F) -> Result<T, Status>
    where
        F: Fn(HostClient, RoomId) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let room = RoomId::parse(room).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.router.call_owner(&room, CALL_TIMEOUT, call_with).await
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishReply>, Status> {
        let span = tracing::info_span!("admin.publish", room.id = %request.get_ref().room);
        rooms_telemetry::propagation::extract(request.metadata(), &span);
        let request = request.into_inner();
        rooms_proto::server::parse_system_data(&request.data_json)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let room = request.room.clone();
        let reply = self
            .on_owner(&room, |mut client, room| {
                let request = PublishRequest { room: room.to_string(), ..request.clone() };
                async move { client.publish(request).await }
            })
            .instrument(span)
            .await?;
        Ok(Response::new(reply))
    }

    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<GetRoomReply>, Status> {
        let request = request.into_inner();
        let room = request.room.clone();
        let reply = self
            .on_owner(&room, |mut client, _| {
                let request = request.clone();
                async move { client.get_room(request).await }
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn list_rooms(
        &self,
        _request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsReply>, Status> {
        let ring = self.router.ring();
        let mut rooms = Vec::new();
        for member in ring.members() {
            let mut client =
                self.router.client(member, &ring).map_err(|e| Status::internal(e.to_string()))?;
            match call(CALL_TIMEOUT, client.list_rooms(ListRoomsRequest {})).await {
                Ok(reply) => rooms.extend(reply.rooms),
                Err(status) => {
                    tracing::warn!(roomhost.addr = %member, %status, "list_rooms failed")
                }
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(Response::new(ListRoomsReply { rooms }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickReply>, Status> {
        let request = request.into_inner();
        if request.user_id.is_empty() {
            return Err(Status::invalid_argument("user_id is required"));
        }
        let room = request.room.clone();
        let reply = self
            .on_owner(&room, |mut client, _| {
                let request = request.clone();
                async move { client.kick(request).await }
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeReply>, Status> {
        let request = request.into_inner();
        let room = request.room.clone();
        let reply = self
            .on_owner(&room, |mut client, _| {
                let request = request.clone();
                async move { client.invoke(request).await }
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn cluster_status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        let ring = self.router.ring();
        let mut roomhosts = Vec::new();
        for member in ring.members() {
            let status = match self.router.client(member, &ring) {
                Ok(mut client) => call(CALL_TIMEOUT, client.status(StatusRequest {})).await.ok(),
                Err(_) => None,
            };
            roomhosts.push(RoomhostStatus {
                address: member.clone(),
                healthy: status.is_some(),
                active_rooms: status.map_or(0, |s| s.active_rooms),
            });
        }
        Ok(Response::new(ClusterStatusReply { roomhosts, ring_version: ring.version() }))
    }
}
