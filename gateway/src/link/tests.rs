//! A room link driven in-process against scripted roomhosts: real gRPC
//! servers on 127.0.0.1 whose room streams the test answers frame by frame,
//! so every transition of the link can be provoked and what the link sends
//! upstream (and to its sockets) checked.

use std::time::Duration;

use bytes::Bytes;
use rooms_cluster::{MembershipWatch, Ring};
use rooms_proto::host::{
    Attached, Broadcast, Chat, Direct, Moved, Moving, Roster, RosterUser, host_frame,
};
use rooms_server::Stop;
use tonic::Status;

use super::scripted::{Accepted, Behaviour, Host, WAIT};
use super::*;
use crate::conn::{CloseSignal, ConnHandle, Outbox, Outgoing};
use crate::router::Router;

/// One client connection of the link, with what reaches its socket.
struct Client {
    conn: ConnId,
    outbox: Arc<Outbox>,
    close: Arc<CloseSignal>,
}

impl Client {
    /// Texts queued for the socket so far.
    fn received(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.outbox.try_take(&mut out, usize::MAX);
        out.iter()
            .flat_map(|o| match o {
                Outgoing::Frames(frames) => frames.iter().map(|f| f.as_str().to_owned()).collect(),
                Outgoing::Pong(_) | Outgoing::Binary(_) => Vec::new(),
            })
            .collect()
    }

    /// Waits until the socket was sent `n` texts in all; returns them.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut texts = Vec::new();
        while texts.len() < n {
            assert!(Instant::now() < deadline, "only {texts:?} arrived");
            texts.extend(self.received());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        texts
    }
}

struct Gateway {
    links: Arc<Links>,
    room: RoomId,
    _stop: Stop,
}

impl Gateway {
    /// A gateway whose ring is `members`, for room `room`.
    fn new(members: &[&str], room: &str) -> Self {
        let members = members.iter().map(|m| (*m).to_owned()).collect();
        let metrics = Arc::new(Metrics::new());
        let router = Router::new(MembershipWatch::fixed(members), metrics.redirects.clone());
        let (stop, stopping) = Stop::new();
        let links = Links::new(router, metrics, "gw-test".into(), stopping);
        Self { links, room: RoomId::parse(room).unwrap(), _stop: stop }
    }

    async fn join(&self, conn: ConnId, user: &str) -> Client {
        let outbox = Outbox::new(64);
        let close = Arc::new(CloseSignal::default());
        let handle = ConnHandle::new(Arc::clone(&outbox), Arc::clone(&close));
        let user = UserId::parse(user).unwrap();
        let join = LinkCmd::Join { conn, user, since: None, epoch: String::new(), handle };
        self.links.dispatch(&self.room, join).await.unwrap();
        Client { conn, outbox, close }
    }

    /// Alice (connection 1) joins; `host` opens the room's stream, attaches
    /// it and welcomes her with the room at `seq`.
    async fn welcome_alice(&self, host: &mut Host, seq: u64) -> (Client, Accepted) {
        let alice = self.join(1, "alice").await;
        let mut stream = host.accept().await;
        stream.take(1).await;
        stream.send(host_frame::Kind::Attached(Attached {}), seq).await;
        stream.send(direct(1, "welcome"), seq).await;
        alice.wait_for(1).await;
        (alice, stream)
    }

    async fn chat(&self, client: &Client, id: &str) {
        let chat = Chat { conn: client.conn, text: id.into(), id: id.into(), ..Chat::default() };
        let frame = LinkCmd::Frame {
            conn: client.conn,
            kind: gateway_frame::Kind::Chat(chat),
            received: Instant::now(),
        };
        self.links.dispatch(&self.room, frame).await.unwrap();
    }
}

/// The chat ids among `frames`, with their resent marks.
fn chats(frames: &[gateway_frame::Kind]) -> Vec<(String, bool)> {
    frames
        .iter()
        .filter_map(|f| match f {
            gateway_frame::Kind::Chat(c) => Some((c.id.clone(), c.resent)),
            _ => None,
        })
        .collect()
}

fn join_of(frame: &gateway_frame::Kind) -> &rooms_proto::host::Join {
    match frame {
        gateway_frame::Kind::Join(join) => join,
        other => panic!("expected Join, got {other:?}"),
    }
}

fn direct(conn: ConnId, text: &str) -> host_frame::Kind {
    let frames = vec![Bytes::from(text.to_owned())];
    host_frame::Kind::Direct(Direct { conn, frames, tags: Vec::new(), welcome: None })
}

fn broadcast(text: &str) -> host_frame::Kind {
    host_frame::Kind::Broadcast(Broadcast {
        frames: vec![Bytes::from(text.to_owned())],
        ..Broadcast::default()
    })
}

/// Two scripted roomhosts — the first behaving as told — and a room the
/// ring places on the first.
async fn owner_and_other(behaviour: Behaviour) -> (Host, Host, String) {
    let (owner, other) = (Host::start(behaviour).await, Host::start(Behaviour::Answer).await);
    let ring = Ring::new([owner.address.clone(), other.address.clone()], 0);
    let room = (0..)
        .map(|i| format!("room-{i}"))
        .find(|room| ring.owner(&RoomId::parse(room).unwrap()) == Some(owner.address.as_str()))
        .unwrap_or_default();
    (owner, other, room)
}

#[tokio::test]
async fn the_first_stream_announces_the_connections_and_sockets_get_frames_after_their_welcome() {
    let mut host = Host::start(Behaviour::Answer).await;
    let gateway = Gateway::new(&[&host.address], "lobby");
    let alice = gateway.join(1, "alice").await;
    gateway.chat(&alice, "hello").await;
    let mut stream = host.accept().await;
    assert_eq!(
        (stream.open.room.as_str(), stream.open.resume_after, stream.open.fallback),
        ("lobby", None, false)
    );
    let sent = stream.take(2).await;
    assert!(!join_of(&sent[0]).rejoin);
    assert_eq!(chats(&sent[1..]), [("hello".to_owned(), false)]);
    // Nothing reaches a socket before its welcome.
    stream.send(broadcast("early"), 0).await;
    stream.send(host_frame::Kind::Attached(Attached {}), 0).await;
    stream.send(direct(1, "welcome"), 0).await;
    stream.send(broadcast("hello"), 1).await;
    assert_eq!(alice.wait_for(2).await, ["welcome", "hello"]);
}

#[tokio::test]
async fn a_move_drains_holds_frames_and_follows_the_redirect_resuming_after_the_last_seq() {
    let (mut first, mut second) =
        (Host::start(Behaviour::Answer).await, Host::start(Behaviour::Answer).await);
    let gateway = Gateway::new(&[&first.address], "lobby");
    let (alice, mut stream) = gateway.welcome_alice(&mut first, 7).await;
    // The room's users, as this stream tells them.
    let users = ["alice", "bob"].map(|u| RosterUser { user_id: u.into(), name: None });
    let roster = Roster { reset: true, present: users.to_vec(), absent: Vec::new() };
    stream.send(host_frame::Kind::Roster(roster), 7).await;
    // Moving: the link answers Drained and sends nothing more there.
    stream.send(host_frame::Kind::Moving(Moving {}), 7).await;
    assert!(matches!(stream.next().await, gateway_frame::Kind::Drained(_)));
    gateway.chat(&alice, "while-moving").await;
    stream.quiet().await;
    stream.send(host_frame::Kind::Moved(Moved::to(second.address.clone())), 7).await;
    // The new owner: resume after seq 7, Alice re-announced silently, then
    // what was held.
    let mut next = second.accept().await;
    assert_eq!((next.open.resume_after, next.open.fallback), (Some(7), true));
    // It learns who the clients here were told is present.
    let mut known = next.open.known_users.clone();
    known.sort();
    assert_eq!(known, ["alice", "bob"]);
    let sent = next.take(2).await;
    assert!(join_of(&sent[0]).rejoin, "a welcomed connection rejoins silently");
    assert_eq!(chats(&sent[1..]), [("while-moving".to_owned(), false)]);
    next.send(host_frame::Kind::Attached(Attached {}), 7).await;
    next.send(broadcast("while-moving"), 8).await;
    assert_eq!(alice.wait_for(1).await, ["while-moving"]);
    assert!(alice.close.get().is_none(), "the socket never noticed");
}

#[tokio::test]
async fn a_redirect_before_the_new_owner_confirmed_resends_what_it_was_sent_marked_as_resent() {
    let (mut first, mut second, mut third) = (
        Host::start(Behaviour::Answer).await,
        Host::start(Behaviour::Answer).await,
        Host::start(Behaviour::Answer).await,
    );
    let gateway = Gateway::new(&[&first.address], "lobby");
    let alice = gateway.join(1, "alice").await;
    let mut stream = first.accept().await;
    stream.take(1).await;
    stream.send(host_frame::Kind::Attached(Attached {}), 0).await;
    stream.send(host_frame::Kind::Moving(Moving {}), 0).await;
    stream.next().await; // Drained
    gateway.chat(&alice, "held").await;
    stream.send(host_frame::Kind::Moved(Moved::to(second.address.clone())), 0).await;
    // The second roomhost takes the frames but sends the room on before
    // confirming: it may have stored them, so they go on marked resent.
    let mut unconfirmed = second.accept().await;
    assert_eq!(chats(&unconfirmed.take(2).await), [("held".to_owned(), false)]);
    unconfirmed.send(host_frame::Kind::Moved(Moved::to(third.address.clone())), 0).await;
    let mut last = third.accept().await;
    assert_eq!(chats(&last.take(2).await), [("held".to_owned(), true)]);
}

#[tokio::test]
async fn a_roomhost_that_breaks_the_stream_mid_attach_is_skipped_for_the_next_ring_member() {
    let (mut owner, mut other, room) = owner_and_other(Behaviour::Answer).await;
    let gateway = Gateway::new(&[&owner.address, &other.address], &room);
    let alice = gateway.join(1, "alice").await;
    gateway.chat(&alice, "first").await;
    let mut stream = owner.accept().await;
    assert!(!stream.open.fallback);
    assert_eq!(chats(&stream.take(2).await), [("first".to_owned(), false)]);
    // The owner dies before confirming the stream.
    stream.send_error(Status::unavailable("connection reset")).await;
    let mut next = other.accept().await;
    assert!(next.open.fallback, "the next member is asked to take the room over");
    let sent = next.take(2).await;
    assert!(!join_of(&sent[0]).rejoin, "never welcomed: a plain join");
    assert_eq!(chats(&sent[1..]), [("first".to_owned(), true)]);
    next.send(host_frame::Kind::Attached(Attached {}), 0).await;
    next.send(direct(1, "welcome"), 0).await;
    assert_eq!(alice.wait_for(1).await, ["welcome"]);
}

#[tokio::test]
async fn a_roomhost_that_never_answers_is_skipped_after_the_open_timeout() {
    let (frozen, mut other, room) = owner_and_other(Behaviour::Hang).await;
    let gateway = Gateway::new(&[&frozen.address, &other.address], &room);
    let started = Instant::now();
    let _alice = gateway.join(1, "alice").await;
    let next = other.accept().await;
    assert!(next.open.fallback);
    assert!(started.elapsed() >= OPEN_TIMEOUT, "waited for the frozen owner first");
}

#[tokio::test]
async fn moved_without_an_address_asks_the_ring_without_that_roomhost() {
    let (mut owner, mut other, room) = owner_and_other(Behaviour::Answer).await;
    let gateway = Gateway::new(&[&owner.address, &other.address], &room);
    let _alice = gateway.join(1, "alice").await;
    let stream = owner.accept().await;
    stream.send(host_frame::Kind::Attached(Attached {}), 3).await;
    stream.send(host_frame::Kind::Moved(Moved::unknown()), 3).await;
    let next = other.accept().await;
    assert_eq!((next.open.resume_after, next.open.fallback), (Some(3), true));
    owner.unused(Duration::from_millis(100)).await;
}

/// The users a `welcome` lists (sorted), and its seq.
fn welcomed(text: &str) -> (Vec<String>, u64) {
    let frame: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(frame["type"], "welcome", "{text}");
    let users = frame["users"].as_array().cloned().unwrap_or_default();
    let mut users: Vec<String> =
        users.iter().map(|u| u["userId"].as_str().unwrap_or_default().to_owned()).collect();
    users.sort();
    (users, frame["seq"].as_u64().unwrap_or_default())
}

#[tokio::test]
async fn the_link_writes_each_welcome_from_the_roster_as_the_stream_left_it() {
    use rooms_proto::host::{Roster, RosterUser, Welcome};
    let present = |user: &str| Roster {
        present: vec![RosterUser { user_id: user.into(), name: None }],
        ..Roster::default()
    };
    let welcome_to = |conn, seq, history: &str| {
        let frames = vec![Bytes::from(history.to_owned())];
        let welcome = Some(Welcome { seq, epoch: "e1".into() });
        host_frame::Kind::Direct(Direct { conn, frames, tags: Vec::new(), welcome })
    };
    let mut host = Host::start(Behaviour::Answer).await;
    let gateway = Gateway::new(&[&host.address], "lobby");
    let alice = gateway.join(1, "alice").await;
    let mut stream = host.accept().await;
    assert!(stream.open.writes_welcome);
    stream.take(1).await;
    stream.send(host_frame::Kind::Attached(Attached {}), 4).await;
    let snapshot = Roster { reset: true, ..present("bob") };
    stream.send(host_frame::Kind::Roster(snapshot), 4).await;
    stream.send(host_frame::Kind::Roster(present("alice")), 4).await;
    stream.send(welcome_to(1, 4, "history-a"), 4).await;
    let got = alice.wait_for(2).await;
    assert_eq!(welcomed(&got[0]), (vec!["alice".into(), "bob".into()], 4));
    assert_eq!(got[1], "history-a");
    // Bob leaves and Carol joins: her welcome lists the room as it is then.
    let absent = Roster { absent: vec!["bob".into()], ..Roster::default() };
    stream.send(host_frame::Kind::Roster(absent), 4).await;
    let carol = gateway.join(2, "carol").await;
    stream.take(1).await;
    // Her arrival: the others' `join` carries the roster's change.
    let frames = vec![Bytes::from_static(b"join-carol")];
    let roster = Some(present("carol"));
    let arrival =
        Broadcast { frames, except_conn: 2, presence: true, roster, ..Broadcast::default() };
    stream.send(host_frame::Kind::Broadcast(arrival), 4).await;
    stream.send(welcome_to(2, 4, "history-c"), 4).await;
    let got = carol.wait_for(2).await;
    assert_eq!(welcomed(&got[0]), (vec!["alice".into(), "carol".into()], 4));
    assert_eq!(got[1], "history-c");
    assert_eq!(alice.wait_for(1).await, ["join-carol"], "the roster itself reaches no socket");
}

#[tokio::test]
async fn a_user_back_after_a_move_is_announced_only_to_connections_welcomed_since() {
    let (mut first, mut second) =
        (Host::start(Behaviour::Answer).await, Host::start(Behaviour::Answer).await);
    let gateway = Gateway::new(&[&first.address], "lobby");
    let (alice, stream) = gateway.welcome_alice(&mut first, 0).await;
    stream.send(host_frame::Kind::Moved(Moved::to(second.address.clone())), 0).await;
    let mut next = second.accept().await;
    assert!(join_of(&next.take(1).await[0]).rejoin);
    next.send(host_frame::Kind::Attached(Attached {}), 0).await;
    // Carol is welcomed by the new owner; then Bob's connection, on another
    // gateway, follows the room there.
    let carol = gateway.join(2, "carol").await;
    next.take(1).await;
    next.send(direct(2, "welcome-c"), 0).await;
    carol.wait_for(1).await;
    let frames = vec![Bytes::from_static(b"join-bob")];
    let rejoined = Broadcast { frames, presence: true, rejoined: true, ..Broadcast::default() };
    next.send(host_frame::Kind::Broadcast(rejoined), 0).await;
    next.send(broadcast("after"), 1).await;
    assert_eq!(carol.wait_for(2).await, ["join-bob", "after"]);
    assert_eq!(alice.wait_for(1).await, ["after"], "alice was in the room with bob");
}
