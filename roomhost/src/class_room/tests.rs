//! A class room driven in-process: the registry, a class room actor over
//! the memory store with the workerd peer's `ChatRoom` class, and gateways
//! played by channels.

use std::time::Duration;

use rooms_classes::{Bundle, ClassSpec, Limits, Pool};
use rooms_proto::host::{
    ClassSocket, Handshake, Header, HostFrame, Join, SocketData, SocketSend, gateway_frame,
    socket_data, socket_send,
};

use super::*;
use crate::registry::{LeaseWait, Registry};
use crate::room::{GATEWAY_QUEUE, RoomSettings};
use crate::store::{MemoryStore, Owner};

const WAIT: Duration = Duration::from_secs(5);

struct Cluster {
    registry: Arc<Registry>,
    store: MemoryStore,
    room: RoomId,
}

impl Cluster {
    fn new() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workerd-chat/worker.js");
        let spec: ClassSpec = format!("chat-*={path}#ChatRoom").parse().unwrap();
        let bundle = Arc::new(Bundle::load(&spec).unwrap());
        let pool = Pool::new(1, Limits::default()).unwrap();
        let class = Arc::new(ClassSetup { bundle, env: "{}".into(), pool });
        let store = MemoryStore::new(1000);
        let settings = RoomSettings {
            idle_timeout: Duration::from_secs(60),
            history_limit: 1000,
            lease_ttl: Duration::from_secs(5),
            owner: Owner::new("here:1"),
        };
        let metrics = Arc::new(Metrics::new());
        let registry =
            Registry::new(Store::Memory(store.clone()), settings, 10, None, metrics, vec![class]);
        Self { registry, store, room: RoomId::parse("chat-1").unwrap() }
    }

    async fn send(&self, cmd: Command) {
        self.registry.dispatch(&self.room, cmd, LeaseWait::Redirect).await.unwrap();
    }

    /// Returns once the room has taken every command sent before.
    async fn processed(&self) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Command::Info { reply }).await;
        tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
    }

    async fn attach(&self, gateway: GatewayId) -> mpsc::Receiver<HostFrame> {
        let (tx, mut rx) = mpsc::channel(GATEWAY_QUEUE);
        self.send(Command::Attach { gateway, tx, resume_after: None }).await;
        assert!(matches!(next(&mut rx).await, host_frame::Kind::Attached(_)));
        rx
    }

    async fn frame(&self, gateway: GatewayId, kind: gateway_frame::Kind) {
        self.send(Command::Frame { gateway, frame: kind }).await;
    }

    async fn handshake(&self, gateway: GatewayId, conn: u64, user: &str) {
        let headers = vec![Header { name: "upgrade".into(), value: "websocket".into() }];
        let url = format!("http://gw/rooms/chat-1/ws?user={user}");
        let handshake = Handshake { conn, url, method: "GET".into(), headers };
        self.frame(gateway, gateway_frame::Kind::Handshake(handshake)).await;
    }

    async fn text(&self, gateway: GatewayId, conn: u64, text: &str) {
        let data = Some(socket_data::Data::Text(text.into()));
        self.frame(gateway, gateway_frame::Kind::SocketData(SocketData { conn, data })).await;
    }
}

async fn next(rx: &mut mpsc::Receiver<HostFrame>) -> host_frame::Kind {
    let frame = tokio::time::timeout(WAIT, rx.recv()).await.expect("in time").expect("open");
    frame.kind.expect("a kind")
}

/// Frames until the next `SocketSend`, which is returned.
async fn next_send(rx: &mut mpsc::Receiver<HostFrame>) -> SocketSend {
    loop {
        if let host_frame::Kind::SocketSend(send) = next(rx).await {
            return send;
        }
    }
}

fn text_of(send: &SocketSend) -> serde_json::Value {
    match &send.data {
        Some(socket_send::Data::Text(t)) => serde_json::from_str(t).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_class_room_answers_handshakes_stores_before_sending_and_sends_once_per_gateway() {
    let cluster = Cluster::new();
    let mut one = cluster.attach(1).await;
    let mut two = cluster.attach(2).await;
    cluster.handshake(1, 10, "alice").await;
    match next(&mut one).await {
        host_frame::Kind::SocketState(state) => {
            assert_eq!(state.conn, 10);
            assert!(state.socket.as_ref().is_some_and(|s| s.hibernatable));
        }
        other => panic!("expected the accepted socket's state, got {other:?}"),
    }
    loop {
        match next(&mut one).await {
            host_frame::Kind::HandshakeReply(reply) => {
                assert_eq!((reply.conn, reply.status), (10, 101));
                break;
            }
            host_frame::Kind::SocketState(_) => {}
            other => panic!("{other:?}"),
        }
    }
    cluster.handshake(1, 11, "bob").await;
    cluster.handshake(2, 20, "carol").await;
    // A name is stored before anything else happens.
    cluster.text(1, 10, r#"{"type":"name","name":"Ann"}"#).await;
    cluster.text(2, 20, r#"{"type":"chat","text":"hi"}"#).await;
    let send = next_send(&mut one).await;
    assert_eq!(send.conns.len(), 2, "both of gateway one's sockets in one frame");
    assert_eq!(text_of(&send)["text"], "hi");
    assert_eq!(next_send(&mut two).await.conns, [20]);
    assert_eq!(
        cluster.store.load_storage(&cluster.room),
        [("name:alice".to_owned(), r#"j"Ann""#.to_owned())]
    );
    // The store refuses: nothing the event sent leaves.
    cluster.store.refuse_commits(true);
    cluster.text(1, 10, r#"{"type":"name","name":"Lost"}"#).await;
    cluster.processed().await;
    cluster.store.refuse_commits(false);
    cluster.text(1, 10, r#"{"type":"chat","text":"after"}"#).await;
    let send = next_send(&mut one).await;
    assert_eq!(text_of(&send)["userName"], "Ann", "the refused name never took");
    let metrics = cluster.registry.metrics();
    assert_eq!(metrics.class_resets.get(), 1, "the instance went with the refused writes");
    assert!(metrics.class_events.get() >= 6);
}

#[tokio::test]
async fn sockets_kept_by_gateways_come_back_to_a_new_instance_with_their_attachments() {
    let cluster = Cluster::new();
    let mut gw = cluster.attach(1).await;
    // As after a move: the gateway re-announces a socket it kept.
    let socket = ClassSocket {
        tags: vec![],
        attachment: Some(r#"{"userId":"dave","userName":"Dave"}"#.into()),
        hibernatable: true,
    };
    let join = Join { conn: 7, socket: Some(socket), ..Join::default() };
    cluster.frame(1, gateway_frame::Kind::Join(join)).await;
    cluster.text(1, 7, r#"{"type":"chat","text":"back"}"#).await;
    let send = next_send(&mut gw).await;
    assert_eq!(send.conns, [7]);
    assert_eq!(text_of(&send)["userName"], "Dave", "the attachment came back");
    // A chat connection (a gateway that does not run classes) is refused.
    cluster
        .frame(
            1,
            gateway_frame::Kind::Join(Join { conn: 8, user_id: "x".into(), ..Join::default() }),
        )
        .await;
    match next(&mut gw).await {
        host_frame::Kind::Close(close) => assert_eq!((close.conn, close.code), (8, 1011)),
        other => panic!("{other:?}"),
    }
}
