//! A gateway of the test's own, speaking the gateway↔roomhost protocol on
//! one room stream: for what a real gateway never does on purpose (ignore
//! `Moving`, send on a stale stream, re-send a stored chat).

use rooms_proto::host::room_host_client::RoomHostClient;
use rooms_proto::host::{GatewayFrame, HostFrame, Join, Open, gateway_frame, host_frame};
use tokio::sync::mpsc;
use tonic::Streaming;

pub struct FakeGateway {
    up: mpsc::Sender<GatewayFrame>,
    down: Streaming<HostFrame>,
}

impl FakeGateway {
    /// Opens a stream for `room` on the roomhost at `addr`, with one
    /// connection (id 1) of `user`.
    pub async fn attach(addr: &str, room: &str, user: &str) -> Self {
        let mut client = RoomHostClient::connect(format!("http://{addr}")).await.expect("grpc");
        let (up, up_rx) = mpsc::channel(16);
        let open = Open { room: room.into(), gateway_id: "test".into(), ..Open::default() };
        let join = Join { conn: 1, user_id: user.into(), ..Join::default() };
        let gateway = |kind| GatewayFrame { kind: Some(kind) };
        up.send(gateway(gateway_frame::Kind::Open(open))).await.expect("open");
        up.send(gateway(gateway_frame::Kind::Join(join))).await.expect("join");
        let down = client
            .attach(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await
            .expect("attach")
            .into_inner();
        Self { up, down }
    }

    pub async fn send(&self, kind: gateway_frame::Kind) {
        self.up.send(GatewayFrame { kind: Some(kind) }).await.expect("stream open");
    }

    /// Reads until a frame `matches`.
    pub async fn until(
        &mut self,
        mut matches: impl FnMut(&host_frame::Kind) -> bool,
    ) -> host_frame::Kind {
        loop {
            let message = self.down.message().await.expect("stream").expect("open");
            if let Some(kind) = message.kind
                && matches(&kind)
            {
                return kind;
            }
        }
    }
}
