//! Scripted roomhosts for the link's tests: real gRPC servers on 127.0.0.1
//! that hand each room stream to the test, which answers it frame by frame.

use std::pin::Pin;
use std::time::Duration;

use rooms_proto::admin;
use rooms_proto::host::room_host_server::{RoomHost, RoomHostServer};
use rooms_proto::host::{
    GatewayFrame, HostFrame, Open, StatusReply, StatusRequest, gateway_frame, host_frame,
};
use rooms_server::Stop;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// Longest wait for one step; only a broken link comes near it.
pub(super) const WAIT: Duration = Duration::from_secs(5);

/// How a scripted roomhost treats room streams.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Behaviour {
    /// Hands each stream to the test.
    Answer,
    /// Never answers an attach (a frozen process).
    Hang,
}

/// A room stream a scripted roomhost accepted.
pub(super) struct Accepted {
    pub(super) open: Open,
    up: Streaming<GatewayFrame>,
    down: mpsc::Sender<Result<HostFrame, Status>>,
}

#[derive(Clone)]
struct Scripted {
    behaviour: Behaviour,
    accepted: mpsc::Sender<Accepted>,
}

type Frames = Pin<Box<dyn Stream<Item = Result<HostFrame, Status>> + Send>>;

#[tonic::async_trait]
impl RoomHost for Scripted {
    type AttachStream = Frames;

    async fn attach(
        &self,
        request: Request<Streaming<GatewayFrame>>,
    ) -> Result<Response<Frames>, Status> {
        if self.behaviour == Behaviour::Hang {
            std::future::pending::<()>().await;
        }
        let mut up = request.into_inner();
        let Some(GatewayFrame { kind: Some(gateway_frame::Kind::Open(open)) }) =
            up.message().await?
        else {
            return Err(Status::invalid_argument("a room stream starts with Open"));
        };
        let (down, rx) = mpsc::channel(64);
        let _ = self.accepted.send(Accepted { open, up, down }).await;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish(
        &self,
        _: Request<admin::PublishRequest>,
    ) -> Result<Response<admin::PublishReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn get_room(
        &self,
        _: Request<admin::GetRoomRequest>,
    ) -> Result<Response<admin::GetRoomReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn list_rooms(
        &self,
        _: Request<admin::ListRoomsRequest>,
    ) -> Result<Response<admin::ListRoomsReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn kick(
        &self,
        _: Request<admin::KickRequest>,
    ) -> Result<Response<admin::KickReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn invoke(
        &self,
        _: Request<admin::InvokeRequest>,
    ) -> Result<Response<admin::InvokeReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Err(Status::unimplemented("scripted"))
    }
}

/// A scripted roomhost serving on 127.0.0.1.
pub(super) struct Host {
    pub(super) address: String,
    accepted: mpsc::Receiver<Accepted>,
    _stop: Stop,
}

impl Host {
    pub(super) async fn start(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (tx, accepted) = mpsc::channel(16);
        let (stop, mut stopping) = Stop::new();
        let service = RoomHostServer::new(Scripted { behaviour, accepted: tx });
        tokio::spawn(
            rooms_server::http2::server()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                    stopping.wait().await
                }),
        );
        Self { address, accepted, _stop: stop }
    }

    /// The next room stream opened here.
    pub(super) async fn accept(&mut self) -> Accepted {
        let next = tokio::time::timeout(WAIT, self.accepted.recv()).await;
        next.expect("a stream is opened in time").expect("the host runs")
    }

    /// Nothing is opened here for a while.
    pub(super) async fn unused(&mut self, wait: Duration) {
        let next = tokio::time::timeout(wait, self.accepted.recv()).await;
        assert!(next.is_err(), "unexpected stream to {}", self.address);
    }
}

impl Accepted {
    pub(super) async fn next(&mut self) -> gateway_frame::Kind {
        let frame = tokio::time::timeout(WAIT, self.up.message()).await;
        let frame = frame.expect("the link sends in time").expect("the stream is sound");
        frame.and_then(|f| f.kind).expect("the stream is open")
    }

    /// The next `n` frames the link sent.
    pub(super) async fn take(&mut self, n: usize) -> Vec<gateway_frame::Kind> {
        let mut frames = Vec::new();
        for _ in 0..n {
            frames.push(self.next().await);
        }
        frames
    }

    pub(super) async fn send(&self, kind: host_frame::Kind, room_seq: u64) {
        self.down.send(Ok(HostFrame { kind: Some(kind), room_seq })).await.unwrap();
    }

    /// The link sends nothing for a while.
    pub(super) async fn quiet(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(150), self.up.message()).await;
        assert!(next.is_err(), "unexpected frame: {next:?}");
    }
}

impl Accepted {
    pub(super) async fn send_error(&self, status: Status) {
        self.down.send(Err(status)).await.unwrap();
    }
}
