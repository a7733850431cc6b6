//! One active room: an actor task that owns the room's state and is fed by a
//! bounded channel of [`Command`]s.
//!
//! Each turn takes every command already queued (up to [`MAX_BATCH`]), stages
//! persisted events with consecutive seqs, writes them to the store in one
//! round trip (group commit), and only then sends them to the gateways: the
//! output gate. Commands whose answer depends on everything before them
//! (`Join`, `History`, `Info`, `Kick`) first flush what is staged.
//!
//! The actor runs only while it holds the room's lease (renewed every third
//! of its TTL; every commit is fenced by it). It gives the room up by a
//! handoff: `Moving` to every gateway, wait until each answers `Drained`
//! (so every frame they sent is processed), flush, release the lease, then
//! `Moved` to the next owner.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rooms_proto::client::{ErrorCode, validate_name, validate_text};
use rooms_proto::host::{
    Attached, Broadcast, CloseConn, Direct, HostFrame, Moved, Moving, gateway_frame, host_frame,
};
use rooms_proto::server::{self, UserEntry, close_code};
use rooms_proto::{RoomId, UserId};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::dedup::Dedup;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{
    Acquired, Commit, Event, Lease, LoadedRoom, Owner, RECENT_EVENTS, Renewal, Store, StoreError,
};

/// Most commands handled in one turn (one group commit).
pub const MAX_BATCH: usize = 512;
/// A commit of at least this many events marks the room busy: its next
/// turn lingers up to [`BUSY_LINGER`] for more, so a hot room writes and
/// fans out fewer, larger batches (a quiet room never waits).
pub const BUSY_EVENTS: usize = 8;
pub const BUSY_LINGER: Duration = Duration::from_millis(10);
/// Capacity of a room's command channel; senders wait when it is full.
pub const COMMAND_QUEUE: usize = 1024;
/// Capacity of the frame queue towards one gateway. A gateway that lets it
/// fill is dropped from the room; its stream ends and it re-attaches.
pub const GATEWAY_QUEUE: usize = 4096;
/// Most connections one room accepts; a join past it is closed with 1013.
pub const MAX_CONNS_PER_ROOM: usize = 50_000;
/// Most users listed in `welcome`; the rest are counted in `moreUsers`.
pub const MAX_WELCOME_USERS: usize = 1000;
/// Events per `history` frame when a resume replays more than a page.
pub const REPLAY_PAGE: usize = 100;
/// Longest wait for gateways to answer `Moving` during a handoff.
pub const MOVE_DRAIN: Duration = Duration::from_secs(2);

pub type GatewayId = u64;
pub type ConnId = u64;
/// Frames to one gateway's room stream (the stream wraps them in `Ok`).
pub type GatewayTx = mpsc::Sender<HostFrame>;

/// What a room actor is asked to do.
pub enum Command {
    /// A gateway opened a room stream; frames for it go to `tx`. After a
    /// move, `resume_after` asks for the persisted events it missed.
    Attach {
        gateway: GatewayId,
        tx: GatewayTx,
        resume_after: Option<u64>,
    },
    /// The gateway's stream ended: its connections left.
    Detach {
        gateway: GatewayId,
    },
    /// A frame from a gateway's stream.
    Frame {
        gateway: GatewayId,
        frame: gateway_frame::Kind,
    },
    /// Operator publish of a `system` event.
    Publish {
        data: Box<RawValue>,
        persist: bool,
        reply: oneshot::Sender<Result<u64, RoomError>>,
    },
    Info {
        reply: oneshot::Sender<RoomInfo>,
    },
    Kick {
        user: String,
        reason: String,
        reply: oneshot::Sender<u32>,
    },
    /// Hand the room over to `target` (empty: whoever the ring names).
    Handoff {
        target: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomInfo {
    pub connections: u32,
    pub users: u32,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The room is served by another roomhost (its address; empty if unknown).
    #[error("room moved to {0}")]
    Moved(String),
}

/// Settings shared by every room of a roomhost.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    pub idle_timeout: Duration,
    pub history_limit: usize,
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// This process, as lease owner.
    pub owner: Owner,
}

/// The sending side of a room actor.
#[derive(Clone)]
pub struct RoomHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) generation: u64,
}

/// A staged output, emitted in order once the staged events are stored.
enum Output {
    /// A persisted event: dropped if the commit fails.
    Event(Bytes),
    /// An ephemeral frame for everyone.
    All(Bytes),
    /// An ephemeral frame for everyone but one connection.
    Except { gateway: GatewayId, conn: ConnId, frame: Bytes },
}

#[derive(Default)]
struct Staged {
    commit: Commit,
    outputs: Vec<Output>,
    /// Connections whose events are staged, with the index of the chat's
    /// client id in `client_ids`: told `unavailable` if the commit fails.
    senders: Vec<(GatewayId, ConnId, Option<usize>, u64)>,
    /// (user, client id) of staged chats: forgotten if the commit fails.
    client_ids: Vec<(String, String)>,
    replies: Vec<(oneshot::Sender<Result<u64, RoomError>>, u64)>,
    /// Where staged chats came from: their tags go back to the sending
    /// gateway with the event, and their latency and spans end on emit.
    origins: Vec<Origin>,
}

/// A staged chat's origin.
struct Origin {
    gateway: GatewayId,
    tag: u64,
    received: Instant,
    /// The message's span, a child of the gateway's (only when traces are on).
    _span: Option<tracing::Span>,
}

pub(crate) struct Room {
    id: RoomId,
    generation: u64,
    store: Store,
    settings: Arc<RoomSettings>,
    registry: Arc<Registry>,
    seq: u64,
    epoch: String,
    /// Oldest seq the store still retains (0: no history yet).
    first_seq: u64,
    names: HashMap<String, String>,
    recent: VecDeque<Event>,
    dedup: Dedup,
    gateways: HashMap<GatewayId, GatewayTx>,
    conns: HashMap<(GatewayId, ConnId), String>,
    /// Connections per present user: `join` on 0 -> 1, `leave` on 1 -> 0.
    presence: HashMap<String, u32>,
    staged: Staged,
    /// The last commit failed and may or may not have landed: reload before
    /// the next write so seqs continue from what the store really holds.
    stale: bool,
    /// Reloading failed in this turn (its other writes are refused at once).
    reload_failed: bool,
    lease: Lease,
    /// Until when the lease surely holds by this process's clock: the start
    /// of the last call that took or renewed it, plus the TTL. Past it the
    /// room may already be served elsewhere, so this actor stops serving.
    lease_until: Instant,
    /// A commit found the lease gone: re-check it before anything else.
    lease_suspect: bool,
    moving: Option<MoveState>,
    /// Connections and gateway streams last added to the process gauges.
    reported: (i64, i64),
    /// The last commit was large: the next turn lingers for more.
    busy: bool,
}

/// What renewing the lease found.
enum LeaseCheck {
    Held,
    /// The store says the lease is not ours: re-check before the next write.
    Suspect,
    /// Still ours, but gateways that could not reach us went to this
    /// roomhost: hand the room over to it.
    Claimed(String),
    /// The store could not confirm the lease before it ran out.
    Lapsed,
}

/// A handoff in progress.
struct MoveState {
    target: String,
    /// Gateways that have not answered `Moving` yet.
    waiting: Vec<GatewayId>,
    deadline: Instant,
    started: Instant,
    /// Attaches that arrived meanwhile: sent to the new owner at the end.
    deferred: Vec<GatewayTx>,
}

impl Room {
    pub(crate) fn new(
        id: RoomId,
        generation: u64,
        loaded: LoadedRoom,
        store: Store,
        settings: Arc<RoomSettings>,
        registry: Arc<Registry>,
        (lease, lease_until): (Lease, Instant),
    ) -> Self {
        let mut room = Self {
            id,
            generation,
            store,
            settings,
            registry,
            seq: 0,
            epoch: String::new(),
            first_seq: 0,
            names: HashMap::new(),
            recent: VecDeque::with_capacity(RECENT_EVENTS),
            dedup: Dedup::default(),
            gateways: HashMap::new(),
            conns: HashMap::new(),
            presence: HashMap::new(),
            staged: Staged::default(),
            stale: false,
            reload_failed: false,
            lease,
            lease_until,
            lease_suspect: false,
            moving: None,
            reported: (0, 0),
            busy: false,
        };
        room.apply_loaded(loaded);
        room
    }

    fn apply_loaded(&mut self, loaded: LoadedRoom) {
        self.seq = loaded.seq;
        self.epoch = loaded.epoch;
        self.first_seq = loaded.first_seq;
        self.names = loaded.names.into_iter().collect();
        self.dedup = Dedup::from_events(&loaded.recent);
        self.recent = loaded.recent.into();
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        tracing::debug!(room.id = %self.id, seq = self.seq, fence = self.lease.fence, "room loaded");
        // When the last gateway left; the room hibernates `idle_timeout` later
        // whatever else (queries, publishes) happens meanwhile.
        let mut empty_since = Some(Instant::now());
        let mut renew = tokio::time::interval(self.settings.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        loop {
            let idle_at = empty_since.map(|since| since + self.settings.idle_timeout);
            let move_at = self.moving.as_ref().map(|m| m.deadline);
            let first = tokio::select! {
                // Renewals first: a busy room must not outlive its lease.
                biased;
                _ = renew.tick() => {
                    match self.renew_lease().await {
                        LeaseCheck::Held => {}
                        LeaseCheck::Suspect => self.lease_suspect = true,
                        LeaseCheck::Claimed(by) => self.begin_move(by, true),
                        LeaseCheck::Lapsed => {
                            // Nothing can be stored without the lease, and
                            // another roomhost may take the room now: stop
                            // serving, and send the gateways elsewhere.
                            tracing::warn!(room.id = %self.id, "lease could not be renewed in time; giving the room up");
                            self.lease_suspect = true;
                            self.begin_move(String::new(), false);
                            return self.finish_move(rx).await;
                        }
                    }
                    None
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
                () = sleep_until(idle_at), if idle_at.is_some() && self.moving.is_none() => {
                    return self.hibernate(rx).await;
                }
                () = sleep_until(move_at), if move_at.is_some() => {
                    tracing::warn!(room.id = %self.id, "gateways did not drain in time; moving anyway");
                    return self.finish_move(rx).await;
                }
            };
            if let Some(first) = first {
                let turn = Instant::now();
                self.reload_failed = false;
                self.handle(first).await;
                let mut taken = 1;
                while taken < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(cmd) => self.handle(cmd).await,
                        Err(_) => break,
                    }
                    taken += 1;
                }
                if self.busy {
                    let until = turn + BUSY_LINGER;
                    while taken < MAX_BATCH {
                        match tokio::time::timeout_at(until, rx.recv()).await {
                            Ok(Some(cmd)) => self.handle(cmd).await,
                            _ => break,
                        }
                        taken += 1;
                    }
                }
                let events = self.staged.commit.events.len();
                self.flush().await;
                self.busy = events >= BUSY_EVENTS;
                self.report_gauges();
            }
            if self.lease_suspect && !self.recheck_lease().await {
                return self.finish_move(rx).await;
            }
            if self.moving.as_ref().is_some_and(|m| m.waiting.is_empty()) {
                return self.finish_move(rx).await;
            }
            empty_since = match (self.gateways.is_empty(), empty_since) {
                (false, _) => None,
                (true, Some(since)) => Some(since),
                (true, None) => Some(Instant::now()),
            };
        }
        self.flush().await;
        self.release_lease().await;
        self.registry.remove_if(&self.id, self.generation);
        tracing::debug!(room.id = %self.id, "room stopped");
    }

    /// Extends the lease, waiting for the store at most as long as the lease
    /// surely holds. A store error is retried at the next tick while the
    /// lease still holds (commits are fenced anyway).
    async fn renew_lease(&mut self) -> LeaseCheck {
        let (me, ttl) = (&self.settings.owner, self.settings.lease_ttl);
        let started = Instant::now();
        let left = self.lease_until.saturating_duration_since(started);
        let renewal = tokio::time::timeout(left, self.store.renew(&self.id, me, self.lease, ttl));
        match renewal.await {
            Ok(Ok(Renewal::Ours)) => {
                self.lease_until = started + ttl;
                LeaseCheck::Held
            }
            Ok(Ok(Renewal::Claimed(by))) => {
                self.lease_until = started + ttl;
                tracing::info!(room.id = %self.id, claimant = %by.0, "a gateway could not reach this roomhost; handing the room to the roomhost it reached");
                LeaseCheck::Claimed(by.address().to_owned())
            }
            Ok(Ok(Renewal::Lost)) => LeaseCheck::Suspect,
            Ok(Err(error)) if Instant::now() < self.lease_until => {
                tracing::warn!(room.id = %self.id, %error, "lease renewal failed; retrying");
                LeaseCheck::Held
            }
            Ok(Err(_)) | Err(_) => LeaseCheck::Lapsed,
        }
    }

    /// The lease looked lost: take it again if nobody else did (our state
    /// is then reloaded), else hand the room to its holder. False: moving.
    async fn recheck_lease(&mut self) -> bool {
        let (me, ttl) = (&self.settings.owner, self.settings.lease_ttl);
        let started = Instant::now();
        match self.store.acquire(&self.id, me, ttl, false).await {
            Ok(Acquired::Ours(lease)) => {
                self.lease_until = started + ttl;
                if lease != self.lease {
                    tracing::warn!(room.id = %self.id, fence = lease.fence, "lease had expired; took it again");
                    self.lease = lease;
                    self.stale = true;
                }
                self.lease_suspect = false;
                true
            }
            Ok(Acquired::HeldBy(holder)) => {
                tracing::warn!(room.id = %self.id, holder = %holder.0, "lease lost; room moves to its holder");
                self.begin_move(holder.address().to_owned(), false);
                false
            }
            Err(error) => {
                tracing::warn!(room.id = %self.id, %error, "cannot check the lease; retrying");
                true
            }
        }
    }

    async fn release_lease(&self) {
        if let Err(error) = self.store.release(&self.id, &self.settings.owner, self.lease).await {
            tracing::warn!(room.id = %self.id, %error, "releasing the lease failed; it will expire");
        }
    }

    /// Starts a handoff to `target`. With `drain`, gateways are asked to stop
    /// sending first; without (lease lost), the room stops right away.
    fn begin_move(&mut self, target: String, drain: bool) {
        if self.moving.is_some() {
            return;
        }
        let waiting: Vec<GatewayId> =
            if drain { self.gateways.keys().copied().collect() } else { Vec::new() };
        for gateway in &waiting {
            self.send(*gateway, host_frame::Kind::Moving(Moving {}));
        }
        tracing::info!(room.id = %self.id, target = %target, "room moving");
        self.moving = Some(MoveState {
            target,
            waiting,
            deadline: Instant::now() + MOVE_DRAIN,
            started: Instant::now(),
            deferred: Vec::new(),
        });
    }

    /// Ends a handoff: everything is stored, the lease released, and every
    /// gateway told where the room went. Commands still queued are answered
    /// with the new address.
    async fn finish_move(mut self, mut rx: mpsc::Receiver<Command>) {
        self.flush().await;
        let state = self.moving.take();
        if let Some(state) = &state {
            let metrics = self.metrics();
            metrics.room_moves.inc();
            metrics.room_move_seconds.observe(state.started.elapsed().as_secs_f64());
        }
        let target = state.as_ref().map(|m| m.target.clone()).unwrap_or_default();
        if !self.lease_suspect {
            self.release_lease().await;
        }
        self.registry.remove_if(&self.id, self.generation);
        rx.close();
        // Writes still queued were never processed (a move without drain:
        // the lease ran out): refuse them, before the stream says where the
        // room went, so no sender waits for an answer that never comes.
        let mut rest = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Frame { gateway, frame: gateway_frame::Kind::Chat(chat) } => {
                    self.unavailable(gateway, chat.conn, &chat.id, chat.tag);
                }
                Command::Frame { gateway, frame: gateway_frame::Kind::SetName(set) } => {
                    self.unavailable(gateway, set.conn, "", 0);
                }
                other => rest.push(other),
            }
        }
        let mut txs: Vec<GatewayTx> = self.gateways.drain().map(|(_, tx)| tx).collect();
        txs.extend(state.map(|m| m.deferred).unwrap_or_default());
        let moved = self.frame_of(host_frame::Kind::Moved(Moved { address: target.clone() }));
        for tx in &txs {
            let _ = tx.try_send(moved.clone());
        }
        for cmd in rest {
            redirect(cmd, &target, self.seq);
        }
        tracing::info!(room.id = %self.id, target = %target, seq = self.seq, "room moved");
    }

    /// Idle: leave memory and give up the lease. Commands that raced with
    /// the decision are handed to a fresh actor, in order.
    async fn hibernate(self, mut rx: mpsc::Receiver<Command>) {
        self.release_lease().await;
        self.registry.remove_if(&self.id, self.generation);
        self.metrics().rooms_evicted.inc();
        rx.close();
        tracing::debug!(room.id = %self.id, "room idle, evicted");
        while let Ok(cmd) = rx.try_recv() {
            if let Err(error) = self.registry.dispatch(&self.id, cmd, false).await {
                tracing::warn!(room.id = %self.id, %error, "could not hand a command to the reloaded room");
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Attach { gateway, tx, resume_after } => {
                if let Some(moving) = &mut self.moving {
                    moving.deferred.push(tx);
                    return;
                }
                // Staged events go to the gateways that were here before; the
                // newcomer gets them through its replay.
                self.flush().await;
                self.gateways.insert(gateway, tx);
                if let Some(after) = resume_after {
                    self.replay(gateway, after).await;
                }
                self.send(gateway, host_frame::Kind::Attached(Attached {}));
            }
            Command::Detach { gateway } => {
                if let Some(moving) = &mut self.moving {
                    moving.waiting.retain(|g| *g != gateway);
                }
                self.detach(gateway);
            }
            Command::Frame { gateway, frame } => self.frame(gateway, frame).await,
            Command::Publish { data, persist, reply } => {
                let time = server::timestamp(SystemTime::now());
                if !persist {
                    self.staged.outputs.push(Output::All(server::system(0, &data, &time)));
                    let _ = reply.send(Ok(0));
                    return;
                }
                let Some(seq) = self.next_seq().await else {
                    let _ = reply.send(Err(RoomError::Unavailable("store unreachable".into())));
                    return;
                };
                self.stage(Event { seq, frame: server::system(seq, &data, &time) });
                self.staged.replies.push((reply, seq));
            }
            Command::Info { reply } => {
                self.flush().await;
                let _ = reply.send(RoomInfo {
                    connections: self.conns.len() as u32,
                    users: self.presence.len() as u32,
                    seq: self.seq,
                });
            }
            Command::Kick { user, reason, reply } => {
                self.flush().await;
                let targets: Vec<(GatewayId, ConnId)> =
                    self.conns.iter().filter(|(_, u)| **u == user).map(|(k, _)| *k).collect();
                for (gateway, conn) in &targets {
                    let close = CloseConn {
                        conn: *conn,
                        code: close_code::KICKED.into(),
                        reason: reason.clone(),
                    };
                    self.send(*gateway, host_frame::Kind::Close(close));
                }
                let _ = reply.send(targets.len() as u32);
            }
            Command::Handoff { target } => {
                self.flush().await;
                self.begin_move(target, true);
            }
        }
    }

    async fn frame(&mut self, gateway: GatewayId, frame: gateway_frame::Kind) {
        use gateway_frame::Kind;
        match frame {
            Kind::Open(_) => {}
            Kind::Drained(_) => {
                if let Some(moving) = &mut self.moving {
                    moving.waiting.retain(|g| *g != gateway);
                }
            }
            Kind::Join(join) => self.join(gateway, join).await,
            Kind::Leave(leave) => self.leave(gateway, leave.conn),
            Kind::Chat(chat) => {
                let received = Instant::now();
                let Some(user) = self.conns.get(&(gateway, chat.conn)).cloned() else {
                    return;
                };
                if let Err(e) = validate_text(&chat.text) {
                    let refusal = server::error_for(e.code, &e.message, &chat.id);
                    return self.answer(gateway, chat.conn, chat.tag, vec![refusal]);
                }
                if !chat.id.is_empty() && self.dedup.get(&user, &chat.id).is_some() {
                    // A resend. Once the original is stored, the sender gets
                    // it again and nobody else sees it twice (if its commit
                    // failed instead, this one is stored normally). A
                    // gateway's own resend after a broken stream is answered
                    // with its tag alone: its resume replays the event.
                    self.flush().await;
                    if let Some(stored) = self.dedup.get(&user, &chat.id) {
                        let original: Vec<Bytes> = if chat.resent {
                            Vec::new()
                        } else {
                            self.recent
                                .iter()
                                .filter(|e| e.seq == stored)
                                .map(|e| e.frame.clone())
                                .collect()
                        };
                        return self.answer(gateway, chat.conn, chat.tag, original);
                    }
                }
                let Some(seq) = self.next_seq().await else {
                    return self.unavailable(gateway, chat.conn, &chat.id, chat.tag);
                };
                // The error for a failed commit names the client's id, if any.
                let (id, client_id) = if chat.id.is_empty() {
                    (format!("{}-{seq}", self.epoch), None)
                } else {
                    self.dedup.insert(user.clone(), chat.id.clone(), seq);
                    self.staged.client_ids.push((user.clone(), chat.id.clone()));
                    (chat.id, Some(self.staged.client_ids.len() - 1))
                };
                let time = server::timestamp(SystemTime::now());
                let frame =
                    server::chat(seq, &id, &user, self.display_name(&user), &chat.text, &time);
                self.stage(Event { seq, frame });
                self.staged.senders.push((gateway, chat.conn, client_id, chat.tag));
                let span = (!chat.traceparent.is_empty()).then(|| {
                    let span = tracing::info_span!("room.chat", room.id = %self.id, seq);
                    rooms_telemetry::propagation::set_parent(&span, &chat.traceparent);
                    span
                });
                self.staged.origins.push(Origin { gateway, tag: chat.tag, received, _span: span });
            }
            Kind::SetName(set) => {
                let Some(user) = self.conns.get(&(gateway, set.conn)).cloned() else {
                    return;
                };
                let name = match validate_name(&set.name) {
                    Ok(name) => name,
                    Err(e) => {
                        return self.direct(
                            gateway,
                            set.conn,
                            vec![server::error(e.code, &e.message)],
                        );
                    }
                };
                let Some(seq) = self.next_seq().await else {
                    return self.unavailable(gateway, set.conn, "", 0);
                };
                let time = server::timestamp(SystemTime::now());
                self.stage(Event { seq, frame: server::name(seq, &user, &name, &time) });
                self.staged.commit.names.push((user, name));
                self.staged.senders.push((gateway, set.conn, None, 0));
            }
            Kind::Typing(typing) => {
                let Some(user) = self.conns.get(&(gateway, typing.conn)) else {
                    return;
                };
                let frame = server::typing(user);
                self.staged.outputs.push(Output::Except { gateway, conn: typing.conn, frame });
            }
            Kind::History(request) => {
                self.flush().await;
                let frames = self.history_page(request.before, request.limit).await;
                self.direct(gateway, request.conn, frames);
            }
        }
    }

    async fn join(&mut self, gateway: GatewayId, join: rooms_proto::host::Join) {
        self.flush().await;
        let Ok(user) = UserId::parse(&join.user_id) else {
            let close = CloseConn {
                conn: join.conn,
                code: close_code::POLICY.into(),
                reason: "invalid user id".into(),
            };
            return self.send(gateway, host_frame::Kind::Close(close));
        };
        if self.conns.len() >= MAX_CONNS_PER_ROOM {
            let close = CloseConn {
                conn: join.conn,
                code: close_code::TRY_AGAIN_LATER.into(),
                reason: "room is full".into(),
            };
            return self.send(gateway, host_frame::Kind::Close(close));
        }
        let user = user.as_str().to_owned();
        if let Some(previous) = self.conns.insert((gateway, join.conn), user.clone()) {
            self.release(&previous);
        }
        let count = self.presence.entry(user.clone()).or_default();
        *count += 1;
        if join.rejoin {
            // Back after a move: it already has everything up to the gateway's
            // resume point, and the others already know it is here.
            return;
        }
        if *count == 1 {
            let frame = server::join(&user, self.display_name(&user));
            self.staged.outputs.push(Output::Except { gateway, conn: join.conn, frame });
            self.emit();
        }
        let mut frames = vec![self.welcome(&user)];
        frames.extend(self.join_history(join.since, &join.epoch).await);
        self.direct(gateway, join.conn, frames);
    }

    fn leave(&mut self, gateway: GatewayId, conn: ConnId) {
        if let Some(user) = self.conns.remove(&(gateway, conn)) {
            self.release(&user);
        }
    }

    /// One connection of `user` is gone; announce `leave` if it was the last
    /// (unless the room is moving: its connections are not leaving, they
    /// follow it).
    fn release(&mut self, user: &str) {
        let Some(count) = self.presence.get_mut(user) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.presence.remove(user);
            if self.moving.is_some() {
                return;
            }
            let frame = server::leave(user, self.display_name(user));
            self.staged.outputs.push(Output::All(frame));
        }
    }

    fn detach(&mut self, gateway: GatewayId) {
        self.gateways.remove(&gateway);
        let gone: Vec<ConnId> =
            self.conns.keys().filter(|(g, _)| *g == gateway).map(|(_, c)| *c).collect();
        for conn in gone {
            self.leave(gateway, conn);
        }
    }

    /// Sends a re-attaching gateway the persisted events after `after`
    /// (nothing is staged: the caller flushed before attaching it).
    async fn replay(&mut self, gateway: GatewayId, after: u64) {
        if after >= self.seq {
            return;
        }
        let events: Vec<Bytes> = if self.recent.front().is_some_and(|e| e.seq <= after + 1) {
            self.recent.iter().filter(|e| e.seq > after).map(|e| e.frame.clone()).collect()
        } else {
            match self.store.events_after(&self.id, after, self.settings.history_limit).await {
                Ok(events) => events.into_iter().map(|e| e.frame).collect(),
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "replay after a move failed; dropping the gateway");
                    self.drop_gateways(vec![gateway]);
                    return;
                }
            }
        };
        for page in events.chunks(REPLAY_PAGE) {
            let broadcast = Broadcast { frames: page.to_vec(), ..Broadcast::default() };
            self.send(gateway, host_frame::Kind::Broadcast(broadcast));
        }
    }

    fn welcome(&self, user: &str) -> Bytes {
        let users: Vec<UserEntry<'_>> = self
            .presence
            .keys()
            .take(MAX_WELCOME_USERS)
            .map(|u| UserEntry { user_id: u, name: self.display_name(u) })
            .collect();
        let more = self.presence.len().saturating_sub(users.len());
        server::welcome(self.id.as_str(), user, self.seq, &self.epoch, &users, more)
    }

    /// The history frames a joining connection gets: the latest page, or a
    /// replay of everything after `since` (with `gap` when some is gone).
    async fn join_history(&self, since: Option<u64>, epoch: &str) -> Vec<Bytes> {
        let latest = || {
            let has_more = self.recent.front().is_some_and(|e| e.seq > self.first_seq);
            (self.recent.iter().map(|e| e.frame.clone()).collect::<Vec<_>>(), has_more)
        };
        let Some(since) = since else {
            let (events, has_more) = latest();
            return vec![server::history(&events, has_more, false)];
        };
        if !epoch.is_empty() && epoch != self.epoch {
            let (events, has_more) = latest();
            return vec![server::history(&events, has_more, true)];
        }
        if since >= self.seq {
            return vec![server::history(&[], false, false)];
        }
        if self.recent.front().is_some_and(|e| e.seq <= since + 1) {
            let events: Vec<Bytes> =
                self.recent.iter().filter(|e| e.seq > since).map(|e| e.frame.clone()).collect();
            return vec![server::history(&events, false, false)];
        }
        let gap = since + 1 < self.first_seq;
        match self.store.events_after(&self.id, since, self.settings.history_limit).await {
            Ok(events) => {
                let frames: Vec<Bytes> = events.into_iter().map(|e| e.frame).collect();
                let mut pages: Vec<Bytes> = frames
                    .chunks(REPLAY_PAGE)
                    .enumerate()
                    .map(|(i, page)| server::history(page, false, gap && i == 0))
                    .collect();
                if pages.is_empty() {
                    pages.push(server::history(&[], false, gap));
                }
                pages
            }
            Err(error) => {
                tracing::warn!(room.id = %self.id, %error, "history replay failed");
                vec![server::error(
                    ErrorCode::Unavailable,
                    "history is unavailable, reconnect to resume",
                )]
            }
        }
    }

    /// Up to `limit` events with seq < `before` (0 = latest), oldest first.
    async fn history_page(&self, before: u64, limit: u32) -> Vec<Bytes> {
        let limit = (limit as usize).clamp(1, RECENT_EVENTS);
        let before = if before == 0 { self.seq.saturating_add(1) } else { before };
        let in_memory: Vec<&Event> = self.recent.iter().filter(|e| e.seq < before).collect();
        let memory_covers = in_memory.len() >= limit
            || self.recent.front().is_none_or(|e| e.seq <= self.first_seq.max(1));
        let page: Vec<Event> = if memory_covers {
            in_memory[in_memory.len().saturating_sub(limit)..]
                .iter()
                .map(|e| (*e).clone())
                .collect()
        } else {
            match self.store.events_before(&self.id, before, limit).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "history page failed");
                    return vec![server::error(ErrorCode::Unavailable, "history is unavailable")];
                }
            }
        };
        let has_more = page.first().is_some_and(|e| e.seq > self.first_seq.max(1));
        let frames: Vec<Bytes> = page.into_iter().map(|e| e.frame).collect();
        vec![server::history(&frames, has_more, false)]
    }

    /// The seq the next staged event gets, reloading first if the last commit
    /// failed. None when the store cannot be reached.
    async fn next_seq(&mut self) -> Option<u64> {
        if self.stale && self.reload_failed {
            // The store did not answer this turn: refuse the rest at once
            // rather than waiting for it once per message.
            return None;
        }
        if self.stale {
            match self.store.load(&self.id).await {
                Ok(loaded) => {
                    let (before, epoch) = (self.seq, self.epoch.clone());
                    self.apply_loaded(loaded);
                    self.stale = false;
                    // A write that timed out may have landed after all: it is
                    // stored, so it is delivered (late, but in order, and seqs
                    // stay contiguous for every client).
                    if self.epoch == epoch && self.seq > before {
                        let landed: Vec<Bytes> = self
                            .recent
                            .iter()
                            .filter(|e| e.seq > before)
                            .map(|e| e.frame.clone())
                            .collect();
                        tracing::warn!(room.id = %self.id, count = landed.len(), "delivering writes that landed late");
                        self.staged.outputs.extend(landed.into_iter().map(Output::All));
                    }
                }
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "reload after a failed write failed");
                    self.reload_failed = true;
                    return None;
                }
            }
        }
        Some(self.seq + self.staged.commit.events.len() as u64 + 1)
    }

    fn stage(&mut self, event: Event) {
        self.staged.outputs.push(Output::Event(event.frame.clone()));
        self.staged.commit.events.push(event);
    }

    /// A user's display name, seeing staged renames first.
    fn display_name<'a>(&'a self, user: &'a str) -> &'a str {
        self.staged
            .commit
            .names
            .iter()
            .rev()
            .find(|(u, _)| u == user)
            .map(|(_, n)| n.as_str())
            .or_else(|| self.names.get(user).map(String::as_str))
            .unwrap_or(user)
    }

    /// Writes staged events (one round trip), then emits every staged output.
    async fn flush(&mut self) {
        if !self.staged.commit.is_empty() {
            let started = Instant::now();
            let result = self
                .store
                .commit(&self.id, &self.settings.owner, self.lease, &self.staged.commit)
                .await;
            let metrics = self.metrics();
            metrics.redis_write_seconds.observe(started.elapsed().as_secs_f64());
            metrics.redis_batch_events.observe(self.staged.commit.events.len() as f64);
            let staged = std::mem::take(&mut self.staged);
            match result {
                Ok(()) => self.committed(staged),
                Err(error) => self.commit_failed(staged, error),
            }
        }
        self.emit();
    }

    fn committed(&mut self, staged: Staged) {
        let Staged { commit, outputs, replies, origins, .. } = staged;
        self.metrics().events_persisted.inc_by(commit.events.len() as u64);
        if let Some(last) = commit.last_seq() {
            self.seq = last;
        }
        for event in commit.events {
            if self.first_seq == 0 {
                self.first_seq = event.seq;
            }
            if self.recent.len() == RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(event);
        }
        let limit = self.settings.history_limit as u64;
        self.first_seq = self.first_seq.max(self.seq.saturating_sub(limit) + 1);
        self.names.extend(commit.names);
        for (reply, seq) in replies {
            let _ = reply.send(Ok(seq));
        }
        self.staged.outputs = outputs;
        self.staged.origins = origins;
    }

    fn commit_failed(&mut self, staged: Staged, error: StoreError) {
        tracing::warn!(room.id = %self.id, %error, events = staged.commit.events.len(), "commit failed");
        let metrics = self.metrics();
        metrics.commit_failures.inc();
        if matches!(error, StoreError::LeaseLost) {
            metrics.leases_lost.inc();
        }
        self.stale = true;
        self.lease_suspect |= matches!(error, StoreError::LeaseLost);
        for (reply, _) in staged.replies {
            let _ = reply.send(Err(RoomError::Unavailable(error.to_string())));
        }
        for (user, id) in &staged.client_ids {
            self.dedup.remove(user, id);
        }
        for (gateway, conn, client_id, tag) in staged.senders {
            let id = client_id.and_then(|i| staged.client_ids.get(i)).map_or("", |(_, id)| id);
            self.unavailable(gateway, conn, id, tag);
        }
        self.staged.outputs =
            staged.outputs.into_iter().filter(|o| !matches!(o, Output::Event(_))).collect();
    }

    /// Refuses a write the store did not take; `id` and `tag` are the
    /// chat's client id and gateway tag (empty and 0 for other writes).
    fn unavailable(&mut self, gateway: GatewayId, conn: ConnId, id: &str, tag: u64) {
        let frame = server::error_for(
            ErrorCode::Unavailable,
            "not stored: storage is unavailable, retry",
            id,
        );
        self.answer(gateway, conn, tag, vec![frame]);
    }

    /// Sends staged outputs to every gateway, consecutive frames for everyone
    /// grouped into one `Broadcast`.
    fn emit(&mut self) {
        let outputs = std::mem::take(&mut self.staged.outputs);
        let origins = std::mem::take(&mut self.staged.origins);
        let mut run: Vec<Bytes> = Vec::new();
        for output in outputs {
            match output {
                Output::Event(frame) | Output::All(frame) => run.push(frame),
                Output::Except { gateway, conn, frame } => {
                    self.broadcast(std::mem::take(&mut run), None, &[]);
                    self.broadcast(vec![frame], Some((gateway, conn)), &[]);
                }
            }
        }
        self.broadcast(run, None, &origins);
        let metrics = self.metrics();
        for origin in &origins {
            metrics.event_seconds.observe(origin.received.elapsed().as_secs_f64());
        }
    }

    /// Sends `frames` to every gateway; each also gets the tags of the chats
    /// it sent among them.
    fn broadcast(
        &mut self,
        frames: Vec<Bytes>,
        except: Option<(GatewayId, ConnId)>,
        origins: &[Origin],
    ) {
        if frames.is_empty() {
            return;
        }
        self.metrics().broadcasts.inc();
        let mut dead = Vec::new();
        for (id, tx) in &self.gateways {
            let except_conn = match except {
                Some((gateway, conn)) if gateway == *id => conn,
                _ => 0,
            };
            let tags =
                origins.iter().filter(|o| o.gateway == *id && o.tag != 0).map(|o| o.tag).collect();
            let frame = Broadcast { frames: frames.clone(), except_conn, tags };
            let msg =
                HostFrame { kind: Some(host_frame::Kind::Broadcast(frame)), room_seq: self.seq };
            if tx.try_send(msg).is_err() {
                dead.push(*id);
            }
        }
        self.drop_gateways(dead);
    }

    fn direct(&mut self, gateway: GatewayId, conn: ConnId, frames: Vec<Bytes>) {
        self.answer(gateway, conn, 0, frames);
    }

    /// Frames for one connection that answer its chat tagged `tag` (0: none).
    fn answer(&mut self, gateway: GatewayId, conn: ConnId, tag: u64, frames: Vec<Bytes>) {
        let tags = if tag == 0 { Vec::new() } else { vec![tag] };
        self.send(gateway, host_frame::Kind::Direct(Direct { conn, frames, tags }));
    }

    fn metrics(&self) -> &Metrics {
        self.registry.metrics()
    }

    /// Brings the process gauges up to date with this room's connections
    /// and gateway streams.
    fn report_gauges(&mut self) {
        let now = (self.conns.len() as i64, self.gateways.len() as i64);
        let metrics = self.registry.metrics();
        metrics.connections.inc_by(now.0 - self.reported.0);
        metrics.gateway_streams.inc_by(now.1 - self.reported.1);
        self.reported = now;
    }

    fn frame_of(&self, kind: host_frame::Kind) -> HostFrame {
        HostFrame { kind: Some(kind), room_seq: self.seq }
    }

    fn send(&mut self, gateway: GatewayId, kind: host_frame::Kind) {
        let frame = self.frame_of(kind);
        let Some(tx) = self.gateways.get(&gateway) else {
            return;
        };
        if tx.try_send(frame).is_err() {
            self.drop_gateways(vec![gateway]);
        }
    }

    /// Gateways whose queue is full or closed lose their place in the room;
    /// their stream ends, and they re-attach and resume by seq.
    fn drop_gateways(&mut self, dead: Vec<GatewayId>) {
        if dead.is_empty() {
            return;
        }
        for gateway in dead {
            tracing::warn!(room.id = %self.id, gateway, "gateway too slow or gone; detaching it");
            self.metrics().gateways_dropped.inc();
            self.detach(gateway);
        }
        self.emit();
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        let metrics = self.registry.metrics();
        metrics.connections.dec_by(self.reported.0);
        metrics.gateway_streams.dec_by(self.reported.1);
    }
}

/// Answers a command for a room this process no longer serves.
pub(crate) fn redirect(cmd: Command, target: &str, seq: u64) {
    let moved = || Moved { address: target.to_owned() };
    match cmd {
        Command::Attach { tx, .. } => {
            let frame = HostFrame { kind: Some(host_frame::Kind::Moved(moved())), room_seq: seq };
            let _ = tx.try_send(frame);
        }
        Command::Publish { reply, .. } => {
            let _ = reply.send(Err(RoomError::Moved(target.to_owned())));
        }
        Command::Info { reply } => {
            let _ = reply.send(RoomInfo { connections: 0, users: 0, seq });
        }
        Command::Kick { reply, .. } => {
            let _ = reply.send(0);
        }
        Command::Detach { .. } | Command::Frame { .. } | Command::Handoff { .. } => {}
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
