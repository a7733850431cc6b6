//! Whole rooms driven in-process: the registry and a room actor over the
//! memory store, with gateways played by channels. What each gateway
//! receives is what a real gateway's stream would carry.

use std::time::Duration;

use rooms_proto::host::{Chat, Drained, Join, Leave};
use rooms_proto::server::ServerFrame;

use super::*;
use crate::registry::{LeaseWait, Registry};
use crate::store::{IfHeld, MemoryStore};

mod absentees;
mod roster;

/// Longest wait for one frame; the store answers at once, so only a broken
/// room ever comes near it.
const WAIT: Duration = Duration::from_secs(2);

struct Cluster {
    registry: Arc<Registry>,
    store: MemoryStore,
    room: RoomId,
}

/// One gateway's room stream, as the room sees it.
struct Gateway {
    id: GatewayId,
    rx: mpsc::Receiver<Box<HostFrame>>,
}

impl Cluster {
    fn new() -> Self {
        Self::with_ttl(Duration::from_secs(5))
    }

    fn with_ttl(lease_ttl: Duration) -> Self {
        let store = MemoryStore::new(1000);
        let settings = RoomSettings {
            idle_timeout: Duration::from_secs(60),
            history_limit: 1000,
            lease_ttl,
            owner: Owner::new("here:1"),
        };
        let metrics = Arc::new(Metrics::new());
        let store_ = Store::Memory(store.clone());
        let registry = Registry::new(store_, settings, 10, None, metrics, Vec::new());
        Self { registry, store, room: RoomId::parse("lobby").unwrap() }
    }

    /// A room with one gateway (1) and Alice on it as connection `conn`;
    /// what she was sent on joining.
    async fn with_alice(conn: ConnId) -> (Self, Gateway, Vec<ServerFrame>) {
        let cluster = Self::new();
        let (mut gw, _) = cluster.attach(1, None).await;
        let joined = cluster.join(&mut gw, conn, "alice").await;
        (cluster, gw, joined)
    }

    async fn send(&self, cmd: Command) {
        let room = &self.room;
        self.registry.dispatch(room, cmd, LeaseWait::Redirect).await.unwrap();
    }

    /// Opens a stream for gateway `id` and waits for `Attached` (after the
    /// replay of what followed `resume_after`, returned).
    async fn attach(&self, id: GatewayId, resume_after: Option<u64>) -> (Gateway, Vec<Bytes>) {
        self.attach_as(id, resume_after, false).await
    }

    /// As [`Self::attach`], for a gateway that writes `welcome` itself or not.
    async fn attach_as(
        &self,
        id: GatewayId,
        resume_after: Option<u64>,
        writes_welcome: bool,
    ) -> (Gateway, Vec<Bytes>) {
        self.attach_knowing(id, resume_after, writes_welcome, Vec::new()).await
    }

    /// Opens gateway `id`'s stream; what the room sends on it, whatever it is.
    async fn open(
        &self,
        id: GatewayId,
        resume_after: Option<u64>,
        writes_welcome: bool,
        known_users: Vec<String>,
    ) -> mpsc::Receiver<Box<HostFrame>> {
        let (tx, rx) = mpsc::channel(GATEWAY_QUEUE);
        let (name, rejoins) = ("gw".into(), 0);
        let attach = Command::Attach {
            gateway: id,
            name,
            rejoins,
            tx,
            resume_after,
            writes_welcome,
            known_users,
        };
        self.send(attach).await;
        rx
    }

    /// As [`Self::attach_as`], for a gateway back after a move whose
    /// clients were told these users are present.
    async fn attach_knowing(
        &self,
        id: GatewayId,
        resume_after: Option<u64>,
        writes_welcome: bool,
        known_users: Vec<String>,
    ) -> (Gateway, Vec<Bytes>) {
        let rx = self.open(id, resume_after, writes_welcome, known_users).await;
        let mut gateway = Gateway { id, rx };
        let mut replayed = Vec::new();
        loop {
            match gateway.next().await {
                host_frame::Kind::Attached(_) => return (gateway, replayed),
                host_frame::Kind::Broadcast(b) => replayed.extend(b.frames),
                other => panic!("expected Attached, got {other:?}"),
            }
        }
    }

    async fn frame(&self, gateway: &Gateway, kind: gateway_frame::Kind) {
        self.send(Command::Frame { gateway: gateway.id, frame: kind }).await;
    }

    /// Joins `user` as connection `conn`; returns its welcome and history.
    async fn join(&self, gateway: &mut Gateway, conn: ConnId, user: &str) -> Vec<ServerFrame> {
        self.join_with(gateway, Join { conn, user_id: user.into(), ..Join::default() }).await
    }

    async fn join_with(&self, gateway: &mut Gateway, join: Join) -> Vec<ServerFrame> {
        let conn = join.conn;
        self.frame(gateway, gateway_frame::Kind::Join(join)).await;
        gateway.direct_to(conn).await
    }

    async fn chat(&self, gateway: &Gateway, conn: ConnId, id: &str, tag: u64) {
        let chat =
            Chat { conn, text: format!("text of {id}"), id: id.into(), tag, ..Chat::default() };
        self.frame(gateway, gateway_frame::Kind::Chat(chat)).await;
    }

    /// The seq the store holds, by loading the room as a new owner would.
    async fn stored_seq(&self) -> u64 {
        self.store.load(&self.room).seq
    }
}

impl Gateway {
    async fn next(&mut self) -> host_frame::Kind {
        let frame = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("the room answers in time")
            .expect("the room keeps the stream open");
        frame.kind.expect("every frame has a kind")
    }

    /// The next frame, which must be `Moved`: the address it names.
    async fn moved(&mut self) -> Option<String> {
        match self.next().await {
            host_frame::Kind::Moved(Moved { address }) => address,
            other => panic!("expected Moved, got {other:?}"),
        }
    }

    /// The next broadcast: its client frames and the tags it answers.
    async fn broadcast(&mut self) -> (Vec<ServerFrame>, Vec<u64>) {
        match self.next().await {
            host_frame::Kind::Broadcast(b) => (parse(&b.frames), b.tags),
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }

    /// The next frames for connection `conn`, past the broadcasts it is
    /// excluded from (its own `join`).
    async fn direct_to(&mut self, conn: ConnId) -> Vec<ServerFrame> {
        loop {
            match self.next().await {
                host_frame::Kind::Direct(d) if d.conn == conn => return parse(&d.frames),
                host_frame::Kind::Broadcast(b) if b.except_conn == conn => {}
                other => panic!("expected frames for connection {conn}, got {other:?}"),
            }
        }
    }

    /// Nothing arrives for a little while.
    async fn quiet(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(100), self.rx.recv()).await;
        assert!(next.is_err(), "unexpected frame: {next:?}");
    }
}

fn parse(frames: &[Bytes]) -> Vec<ServerFrame> {
    frames.iter().map(|f| serde_json::from_slice(f).expect("frames are valid JSON")).collect()
}

fn seqs(frames: &[ServerFrame]) -> Vec<u64> {
    frames.iter().filter_map(ServerFrame::seq).collect()
}

fn history(frames: &[ServerFrame]) -> (Vec<u64>, bool) {
    match frames.iter().find(|f| matches!(f, ServerFrame::History { .. })) {
        Some(ServerFrame::History { messages, gap, .. }) => (seqs(messages), *gap),
        _ => panic!("no history in {frames:?}"),
    }
}

#[tokio::test]
async fn chats_get_consecutive_seqs_in_order_and_are_stored_before_anyone_sees_them() {
    let (cluster, mut gw, joined) = Cluster::with_alice(7).await;
    assert!(matches!(&joined[0], ServerFrame::Welcome { seq: 0, .. }), "{joined:?}");
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        cluster.chat(&gw, 7, id, 100 + i as u64).await;
    }
    let mut delivered = Vec::new();
    let mut tags = Vec::new();
    while delivered.len() < 3 {
        let (frames, answered) = gw.broadcast().await;
        // The output gate: whatever is delivered is already stored.
        let last = seqs(&frames).into_iter().max().unwrap_or(0);
        assert!(cluster.stored_seq().await >= last);
        delivered.extend(frames);
        tags.extend(answered);
    }
    assert_eq!(seqs(&delivered), [1, 2, 3]);
    let ids: Vec<_> = delivered
        .iter()
        .map(|f| match f {
            ServerFrame::Chat { id, .. } => id.clone().unwrap_or_default(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(tags, [100, 101, 102]);
}

#[tokio::test]
async fn a_failed_commit_answers_unavailable_and_forgets_the_message_id() {
    let (cluster, mut gw, _) = Cluster::with_alice(7).await;
    cluster.store.refuse_commits(true);
    cluster.chat(&gw, 7, "m1", 5).await;
    let refused = match gw.next().await {
        host_frame::Kind::Direct(d) => {
            assert_eq!(d.tags, [5], "the refusal answers the chat's tag");
            parse(&d.frames)
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(
        matches!(&refused[..], [ServerFrame::Error { code, id: Some(id), .. }] if code == "unavailable" && id == "m1"),
        "{refused:?}"
    );
    assert_eq!(cluster.stored_seq().await, 0);
    // The client retries with the same id: stored now, not taken for a
    // duplicate of the message that was never stored.
    cluster.store.refuse_commits(false);
    cluster.chat(&gw, 7, "m1", 6).await;
    let (frames, tags) = gw.broadcast().await;
    assert_eq!(seqs(&frames), [1]);
    assert_eq!(tags, [6]);
    assert_eq!(cluster.stored_seq().await, 1);
}

#[tokio::test]
async fn a_resent_message_is_stored_once_and_echoed_to_its_sender_only() {
    let (cluster, mut gw, _) = Cluster::with_alice(7).await;
    cluster.chat(&gw, 7, "m1", 1).await;
    assert_eq!(seqs(&gw.broadcast().await.0), [1]);
    cluster.chat(&gw, 7, "m1", 2).await;
    let echo = gw.direct_to(7).await;
    assert_eq!(seqs(&echo), [1], "the sender gets the stored original again");
    assert_eq!(cluster.stored_seq().await, 1);
}

#[tokio::test]
async fn a_joiner_resumes_after_its_seq_and_a_wrong_epoch_gets_the_latest_with_a_gap() {
    let (cluster, mut gw, welcome) = Cluster::with_alice(7).await;
    let ServerFrame::Welcome { epoch, .. } = &welcome[0] else { panic!("{welcome:?}") };
    for id in ["a", "b", "c", "d", "e"] {
        cluster.chat(&gw, 7, id, 0).await;
        gw.broadcast().await;
    }
    let resumed = Join {
        conn: 8,
        user_id: "bob".into(),
        since: Some(3),
        epoch: epoch.clone(),
        ..Join::default()
    };
    let joined = cluster.join_with(&mut gw, resumed).await;
    assert_eq!(history(&joined), (vec![4, 5], false));
    let other = Join {
        conn: 9,
        user_id: "carol".into(),
        since: Some(3),
        epoch: "another".into(),
        ..Join::default()
    };
    let joined = cluster.join_with(&mut gw, other).await;
    assert_eq!(history(&joined), (vec![1, 2, 3, 4, 5], true), "another epoch: latest page, gap");
    // A gateway re-attaching after a move gets what followed its seq.
    let (_, replayed) = cluster.attach(2, Some(2)).await;
    assert_eq!(seqs(&parse(&replayed)), [3, 4, 5]);
}

#[tokio::test]
async fn presence_counts_connections_across_gateways_and_a_rejoin_is_silent() {
    let cluster = Cluster::new();
    let (mut one, _) = cluster.attach(1, None).await;
    let (mut two, _) = cluster.attach(2, None).await;
    cluster.join(&mut one, 1, "alice").await;
    let (joined, _) = two.broadcast().await;
    assert!(matches!(&joined[..], [ServerFrame::Join { user_id, .. }] if user_id == "alice"));
    // Alice again, on the other gateway: no second `join`, and Bob's
    // welcome lists her once.
    cluster.join(&mut two, 2, "alice").await;
    let welcome = cluster.join(&mut two, 3, "bob").await;
    let ServerFrame::Welcome { users, .. } = &welcome[0] else { panic!("{welcome:?}") };
    assert_eq!(users.iter().filter(|u| u.user_id == "alice").count(), 1);
    one.broadcast().await; // bob's join
    // Gateway one goes away: Alice is still here through gateway two.
    cluster.send(Command::Detach { gateway: 1 }).await;
    two.quiet().await;
    // Her last connection leaves: now she is gone.
    cluster.frame(&two, gateway_frame::Kind::Leave(Leave { conn: 2 })).await;
    let (left, _) = two.broadcast().await;
    assert!(matches!(&left[..], [ServerFrame::Leave { user_id, .. }] if user_id == "alice"));
    // A connection re-announced after a move is registered silently.
    let (mut three, _) = cluster.attach(3, None).await;
    let rejoin = Join { conn: 4, user_id: "carol".into(), rejoin: true, ..Join::default() };
    cluster.frame(&three, gateway_frame::Kind::Join(rejoin)).await;
    two.quiet().await;
    three.quiet().await;
    let (reply, info) = oneshot::channel();
    cluster.send(Command::Info { reply }).await;
    let info = info.await.unwrap();
    assert_eq!((info.connections, info.users), (2, 2), "bob and carol");
}

#[tokio::test]
async fn a_handoff_drains_every_gateway_stores_what_they_sent_then_names_the_new_owner() {
    let cluster = Cluster::new();
    let (mut one, _) = cluster.attach(1, None).await;
    let (mut two, _) = cluster.attach(2, None).await;
    cluster.join(&mut one, 1, "alice").await;
    two.broadcast().await;
    cluster.send(Command::Handoff { target: Moved::to("there:1") }).await;
    assert!(matches!(one.next().await, host_frame::Kind::Moving(_)));
    assert!(matches!(two.next().await, host_frame::Kind::Moving(_)));
    // Sent before gateway one saw Moving: still stored here, in order.
    cluster.chat(&one, 1, "late", 9).await;
    cluster.frame(&one, gateway_frame::Kind::Drained(Drained {})).await;
    assert_eq!(seqs(&one.broadcast().await.0), [1]);
    assert_eq!(seqs(&two.broadcast().await.0), [1]);
    // A gateway arriving mid-move is sent on with the others.
    let mut late = cluster.open(3, None, false, Vec::new()).await;
    one.quiet().await;
    cluster.frame(&two, gateway_frame::Kind::Drained(Drained {})).await;
    let moved = |kind| matches!(kind, host_frame::Kind::Moved(Moved { address: Some(a) }) if a == "there:1");
    assert!(moved(one.next().await));
    assert!(moved(two.next().await));
    assert!(moved(late.recv().await.and_then(|f| f.kind).unwrap()));
    // The lease is released: the next owner takes it at once.
    let next = Owner::new("there:1");
    let ttl = Duration::from_secs(5);
    assert!(matches!(
        cluster.store.acquire(&cluster.room, &next, ttl, IfHeld::Report),
        crate::store::Acquired::Ours(_)
    ));
    assert_eq!(cluster.stored_seq().await, 1);
    // The room is gone from this roomhost: what comes now starts it again,
    // and the store (the new owner holds the lease) sends it there.
    let mut again = cluster.open(4, None, false, Vec::new()).await;
    let frame = tokio::time::timeout(WAIT, again.recv()).await.unwrap().unwrap();
    assert!(moved(frame.kind.unwrap()));
}

#[tokio::test]
async fn a_lost_lease_stops_the_room_at_once_and_refuses_queued_writes() {
    let (cluster, mut gw, _) = Cluster::with_alice(1).await;
    // Another roomhost takes the room (this one's lease lapsed meanwhile).
    let thief = Owner::new("thief:1");
    cluster.store.steal_lease(&cluster.room, &thief, Duration::from_secs(5));
    cluster.chat(&gw, 1, "after", 3).await;
    let refused = gw.direct_to(1).await;
    assert!(
        matches!(&refused[..], [ServerFrame::Error { code, .. }] if code == "unavailable"),
        "{refused:?}"
    );
    // No drain: the holder is named at once.
    assert_eq!(gw.moved().await.as_deref(), Some("thief:1"));
    assert_eq!(cluster.stored_seq().await, 0);
}

#[tokio::test]
async fn a_claim_a_commit_finds_hands_the_room_over_without_waiting_for_a_renewal() {
    let (cluster, mut gw, _) = Cluster::with_alice(1).await;
    // Gateways that could not reach this roomhost went to there:1, which
    // claimed the room.
    let claimant = Owner::new("there:1");
    let claim = cluster.store.acquire(&cluster.room, &claimant, WAIT, IfHeld::Claim);
    assert!(matches!(claim, crate::store::Acquired::HeldBy(_)));
    // The chat is stored and delivered; its commit renewed the lease and
    // brought the claim back, so the room drains its gateways at once:
    // before the renewal task's first look at a 5 s lease (at least 1.67 s
    // after the room started).
    cluster.chat(&gw, 1, "m1", 1).await;
    assert_eq!(seqs(&gw.broadcast().await.0), [1]);
    let soon = tokio::time::timeout(Duration::from_secs(1), gw.next()).await;
    assert!(matches!(soon, Ok(host_frame::Kind::Moving(_))), "{soon:?}");
    cluster.frame(&gw, gateway_frame::Kind::Drained(Drained {})).await;
    assert_eq!(gw.moved().await.as_deref(), Some("there:1"));
    assert_eq!(cluster.stored_seq().await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_stops_answering_gives_the_room_up_when_its_lease_runs_out() {
    let ttl = Duration::from_secs(1);
    let cluster = Cluster::with_ttl(ttl);
    let (mut gw, _) = cluster.attach(1, None).await;
    cluster.join(&mut gw, 1, "alice").await;
    // The store goes behind a partition: nothing it is asked is answered.
    // The lease was last extended before this, so it runs out within a TTL.
    cluster.store.silence(true);
    let cut = tokio::time::Instant::now();
    cluster.chat(&gw, 1, "m1", 1).await;
    cluster.chat(&gw, 1, "m2", 2).await;
    // Both chats are refused, and the room is given up ("not here") once
    // the lease ran out and the store stayed silent for the re-check: the
    // commit in flight and the reload after it keep no turn waiting longer.
    let mut refused = Vec::new();
    let address = loop {
        match gw.next().await {
            host_frame::Kind::Direct(d) => {
                for frame in parse(&d.frames) {
                    match frame {
                        ServerFrame::Error { code, id: Some(id), .. } if code == "unavailable" => {
                            refused.push(id);
                        }
                        other => panic!("expected a refusal, got {other:?}"),
                    }
                }
            }
            host_frame::Kind::Moved(Moved { address }) => break address,
            other => panic!("expected refusals, then Moved, got {other:?}"),
        }
    };
    let given_up = cut.elapsed();
    assert_eq!(address, None);
    assert_eq!(refused, ["m1", "m2"]);
    // A renewal tick on top of the lease and the re-check (virtual time).
    let bound = ttl + crate::leases::LAPSE_RECHECK + Duration::from_millis(400);
    assert!(given_up <= bound, "given up after {given_up:?}, bound {bound:?}");
    cluster.store.silence(false);
}
