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
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

struct Cluster {
    registry: Arc<Registry>,
    store: MemoryStore,
    room: RoomId,
    owner: Owner,
}

impl Cluster {
    fn new() -> Self {
        Self::on(MemoryStore::new(1000), "here:1")
    }

    /// Another roomhost over the same store.
    fn beside(other: &Cluster, owner: &str) -> Self {
        Self::on(other.store.clone(), owner)
    }

    fn on(store: MemoryStore, owner: &str) -> Self {
        Self::with_ttl(store, owner, Duration::from_secs(5))
    }

    fn with_ttl(store: MemoryStore, owner: &str, lease_ttl: Duration) -> Self {
        let owner = Owner::new(owner);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workerd-chat/worker.js");
        let spec: ClassSpec = format!("chat-*={path}#ChatRoom").parse().unwrap();
        let bundle = Arc::new(Bundle::load(&spec).unwrap());
        let pool = Pool::new(1, Limits::default()).unwrap();
        let metrics = Arc::new(Metrics::new());
        let class_metrics = ClassMetrics::of(&metrics, "ChatRoom");
        let class = Arc::new(ClassSetup { bundle, env: "{}".into(), pool, metrics: class_metrics });
        let settings = RoomSettings {
            idle_timeout: Duration::from_secs(60),
            history_limit: 1000,
            lease_ttl,
            owner: owner.clone(),
        };
        let registry =
            Registry::new(Store::Memory(store.clone()), settings, 10, None, metrics, vec![class]);
        Self { registry, store, room: RoomId::parse("chat-1").unwrap(), owner }
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

    async fn attach(&self, gateway: GatewayId) -> mpsc::Receiver<Box<HostFrame>> {
        self.rejoin(gateway, &[]).await
    }

    /// Attaches, re-announcing these sockets (conn, user) as kept.
    async fn rejoin(
        &self,
        gateway: GatewayId,
        sockets: &[(u64, &str)],
    ) -> mpsc::Receiver<Box<HostFrame>> {
        let (tx, mut rx) = mpsc::channel(GATEWAY_QUEUE);
        let name = format!("gw{gateway}").into();
        let rejoins = u32::try_from(sockets.len()).unwrap();
        self.send(Command::Attach {
            gateway,
            name,
            rejoins,
            tx,
            resume_after: None,
            writes_welcome: false,
            known_users: Vec::new(),
        })
        .await;
        for (conn, user) in sockets {
            let attachment = Some(format!(r#"{{"userId":"{user}","userName":null}}"#));
            let socket = ClassSocket { tags: vec![], attachment, hibernatable: true };
            let join = Join { conn: *conn, socket: Some(socket), ..Join::default() };
            self.frame(gateway, gateway_frame::Kind::Join(join)).await;
        }
        let first = next(&mut rx).await;
        assert!(matches!(first, host_frame::Kind::Attached(_)), "{first:?}");
        rx
    }

    async fn frame(&self, gateway: GatewayId, kind: gateway_frame::Kind) {
        self.send(Command::Frame { gateway, frame: kind }).await;
    }

    async fn handshake(&self, gateway: GatewayId, conn: u64, user: &str) {
        let headers = vec![Header { name: "upgrade".into(), value: "websocket".into() }];
        let url = format!("http://gw/rooms/chat-1/ws?user={user}");
        let handshake = Handshake { conn, url, method: "GET".into(), headers, body: None };
        self.frame(gateway, gateway_frame::Kind::Handshake(handshake)).await;
    }

    /// A tagged message, maybe sent again.
    async fn tagged(&self, gateway: GatewayId, conn: u64, (tag, resent): (u64, bool), text: &str) {
        let data = Some(socket_data::Data::Text(text.into()));
        let data = SocketData { conn, data, tag, resent };
        self.frame(gateway, gateway_frame::Kind::SocketData(data)).await;
    }

    async fn text(&self, gateway: GatewayId, conn: u64, text: &str) {
        let data = Some(socket_data::Data::Text(text.into()));
        let data = SocketData { conn, data, ..SocketData::default() };
        self.frame(gateway, gateway_frame::Kind::SocketData(data)).await;
    }
}

async fn next(rx: &mut mpsc::Receiver<Box<HostFrame>>) -> host_frame::Kind {
    let frame = tokio::time::timeout(WAIT, rx.recv()).await.expect("in time").expect("open");
    frame.kind.expect("a kind")
}

/// Frames until the next `SocketSend`, which is returned.
async fn next_send(rx: &mut mpsc::Receiver<Box<HostFrame>>) -> SocketSend {
    loop {
        if let host_frame::Kind::SocketSend(send) = next(rx).await {
            return send;
        }
    }
}

/// Frames until the answer to a tagged message; the sends before it.
async fn until_answered(rx: &mut mpsc::Receiver<Box<HostFrame>>, tag: u64) -> Vec<SocketSend> {
    let mut sends = Vec::new();
    loop {
        match next(rx).await {
            host_frame::Kind::Broadcast(answer) if answer.tags.contains(&tag) => return sends,
            host_frame::Kind::SocketSend(send) => sends.push(send),
            _ => {}
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
    // The commit runs beside the room: wait for its failure.
    let chat_room = ClassMetrics::of(cluster.registry.metrics(), "ChatRoom");
    let resets = &chat_room.resets;
    tokio::time::timeout(WAIT, async {
        while resets.get() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the refused commit resets the instance");
    cluster.store.refuse_commits(false);
    cluster.text(1, 10, r#"{"type":"chat","text":"after"}"#).await;
    let send = next_send(&mut one).await;
    assert_eq!(text_of(&send)["userName"], "Ann", "the refused name never took");
    assert_eq!(chat_room.resets.get(), 1, "the instance went with the refused writes");
    assert!(chat_room.events.get() >= 6);
    assert!(chat_room.storage_bytes.get() > 0, "Ann's name is stored");
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

#[tokio::test]
async fn a_message_sent_again_runs_once_even_on_a_new_owner_that_waits_for_its_gateways() {
    let first = Cluster::new();
    let mut one = first.attach(1).await;
    let mut two = first.attach(2).await;
    first.handshake(1, 10, "alice").await;
    first.handshake(2, 20, "bob").await;
    first.tagged(1, 10, (5, false), r#"{"type":"chat","text":"once"}"#).await;
    let sends = until_answered(&mut one, 5).await;
    assert_eq!(sends.iter().map(|s| text_of(s)["text"].clone()).collect::<Vec<_>>(), ["once"]);
    assert_eq!(text_of(&next_send(&mut two).await)["text"], "once");
    // Its stream broke before the answer: sent again, it is answered, not run.
    first.tagged(1, 10, (5, true), r#"{"type":"chat","text":"once"}"#).await;
    assert!(until_answered(&mut one, 5).await.is_empty(), "ran once");
    let mut ran = first.store.load_ran(&first.room);
    ran.sort();
    assert_eq!(ran, [("gw1".to_owned(), 5), ("gw2".to_owned(), 0)], "stored before the send");

    // Its owner dies; a new one takes the room. Gateway 1 comes back first,
    // sends the message again and a new one: nothing runs until gateway 2,
    // which the store names, re-announced its socket.
    let second = Cluster::beside(&first, "here:2");
    first.store.steal_lease(&first.room, &second.owner, Duration::from_secs(30));
    let mut one = second.rejoin(1, &[(10, "alice")]).await;
    second.tagged(1, 10, (5, true), r#"{"type":"chat","text":"once"}"#).await;
    second.tagged(1, 10, (6, false), r#"{"type":"chat","text":"after"}"#).await;
    second.processed().await;
    while let Ok(frame) = one.try_recv() {
        assert!(
            !matches!(
                frame.kind,
                Some(host_frame::Kind::SocketSend(_) | host_frame::Kind::Broadcast(_))
            ),
            "ran before gateway 2 came back: {frame:?}"
        );
    }
    let mut two = second.rejoin(2, &[(20, "bob")]).await;
    assert!(until_answered(&mut one, 5).await.is_empty(), "not run again by the new owner");
    let sends = until_answered(&mut one, 6).await;
    assert_eq!(text_of(&sends[0])["text"], "after");
    assert_eq!(next_send(&mut two).await.conns, [20], "gateway 2's socket heard it");
}

#[tokio::test]
async fn a_gateway_whose_stream_broke_gets_its_sockets_back_with_what_was_sent_meanwhile() {
    let cluster = Cluster::new();
    let mut one = cluster.attach(1).await;
    let mut two = cluster.attach(2).await;
    cluster.handshake(1, 10, "alice").await;
    cluster.handshake(2, 20, "bob").await;
    cluster.text(1, 10, r#"{"type":"name","name":"Ann"}"#).await;
    cluster.processed().await;
    // Gateway 1's stream breaks (a network fault): Alice's socket stays.
    cluster.send(Command::Detach { gateway: 1 }).await;
    cluster.text(2, 20, r#"{"type":"chat","text":"while away"}"#).await;
    assert_eq!(next_send(&mut two).await.conns, [20]);
    // The same gateway (by name) on a new stream, re-announcing her socket.
    let (tx, mut back) = mpsc::channel(GATEWAY_QUEUE);
    let name = "gw1".into();
    cluster
        .send(Command::Attach {
            gateway: 3,
            name,
            rejoins: 1,
            tx,
            resume_after: None,
            writes_welcome: false,
            known_users: Vec::new(),
        })
        .await;
    let socket = ClassSocket { tags: vec![], attachment: None, hibernatable: true };
    let join = Join { conn: 10, socket: Some(socket), ..Join::default() };
    cluster.frame(3, gateway_frame::Kind::Join(join)).await;
    assert!(matches!(next(&mut back).await, host_frame::Kind::Attached(_)));
    let missed = next_send(&mut back).await;
    assert_eq!(missed.conns, [10]);
    assert_eq!(text_of(&missed)["text"], "while away");
    // No close ran, and the room kept her attachment (not the gateway's stale
    // copy): she is still Ann.
    cluster.text(3, 10, r#"{"type":"chat","text":"back"}"#).await;
    let send = next_send(&mut back).await;
    assert_eq!(
        (text_of(&send)["text"].as_str(), text_of(&send)["userName"].as_str()),
        (Some("back"), Some("Ann"))
    );
    assert_eq!(next_send(&mut two).await.conns, [20]);
    while let Ok(frame) = one.try_recv() {
        assert!(!matches!(frame.kind, Some(host_frame::Kind::Close(_))), "{frame:?}");
    }
}

#[tokio::test]
async fn a_room_woken_with_nothing_due_corrects_the_alarm_index() {
    let cluster = Cluster::new();
    // An entry with no stored alarm behind it (a commit that lowered the
    // index failed).
    cluster.store.lower_alarm(&cluster.room, 1);
    assert_eq!(cluster.store.due_alarms(u64::MAX, 10).len(), 1);
    cluster.send(Command::Wake).await;
    cluster.processed().await;
    assert!(cluster.store.due_alarms(u64::MAX, 10).is_empty(), "the room said it has none");
}

#[tokio::test]
async fn a_class_room_whose_store_stops_answering_is_given_up_when_its_lease_runs_out() {
    let ttl = Duration::from_secs(1);
    let cluster = Cluster::with_ttl(MemoryStore::new(1000), "here:1", ttl);
    let mut gw = cluster.attach(1).await;
    cluster.handshake(1, 10, "alice").await;
    while !matches!(next(&mut gw).await, host_frame::Kind::HandshakeReply(_)) {}
    // The store goes behind a partition while a write of the class's is
    // in flight: the re-check of the lapsed lease and the flush before the
    // move wait no longer than the lease, and what the write would have
    // sent never leaves.
    cluster.store.silence(true);
    let cut = tokio::time::Instant::now();
    cluster.text(1, 10, r#"{"type":"name","name":"Ann"}"#).await;
    let address = loop {
        match next(&mut gw).await {
            host_frame::Kind::Moved(Moved { address }) => break address,
            host_frame::Kind::SocketSend(send) => panic!("sent unstored: {send:?}"),
            _ => {}
        }
    };
    let given_up = cut.elapsed();
    assert_eq!(address, None);
    // Real time (the class runs on its own thread): room for a loaded machine.
    let bound = ttl + crate::leases::LAPSE_RECHECK + Duration::from_secs(1);
    assert!(given_up <= bound, "given up after {given_up:?}, bound {bound:?}");
    cluster.store.silence(false);
}
