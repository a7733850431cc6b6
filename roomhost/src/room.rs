//! One active room: an actor task that owns the room's state and is fed by a
//! bounded channel of [`Command`]s.
//!
//! Each turn takes every command already queued (up to [`MAX_BATCH`]), stages
//! persisted events with consecutive seqs, writes them to the store in one
//! round trip (group commit), and only then sends them to the gateways: the
//! output gate. Commands whose answer depends on everything before them
//! (`Join`, `History`, `Info`, `Kick`) first flush what is staged.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rooms_proto::client::{ErrorCode, validate_name, validate_text};
use rooms_proto::host::{Broadcast, CloseConn, Direct, HostFrame, gateway_frame, host_frame};
use rooms_proto::server::{self, UserEntry};
use rooms_proto::{RoomId, UserId};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;

use crate::registry::Registry;
use crate::store::{Commit, Event, LoadedRoom, RECENT_EVENTS, Store, StoreError};

/// Most commands handled in one turn (one group commit).
pub const MAX_BATCH: usize = 512;
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

pub type GatewayId = u64;
pub type ConnId = u64;
pub type GatewayTx = mpsc::Sender<Result<HostFrame, Status>>;

/// What a room actor is asked to do.
pub enum Command {
    /// A gateway opened a room stream; frames for it go to `tx`.
    Attach {
        gateway: GatewayId,
        tx: GatewayTx,
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
    /// Flush and stop (process shutdown).
    Shutdown,
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
}

/// Settings shared by every room of a roomhost.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    pub idle_timeout: Duration,
    pub history_limit: usize,
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
    /// Connections whose events are staged: told `unavailable` if the commit fails.
    senders: Vec<(GatewayId, ConnId)>,
    replies: Vec<(oneshot::Sender<Result<u64, RoomError>>, u64)>,
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
    gateways: HashMap<GatewayId, GatewayTx>,
    conns: HashMap<(GatewayId, ConnId), String>,
    /// Connections per present user: `join` on 0 -> 1, `leave` on 1 -> 0.
    presence: HashMap<String, u32>,
    staged: Staged,
    /// The last commit failed and may or may not have landed: reload before
    /// the next write so seqs continue from what the store really holds.
    stale: bool,
    stopping: bool,
}

impl Room {
    pub(crate) fn new(
        id: RoomId,
        generation: u64,
        loaded: LoadedRoom,
        store: Store,
        settings: Arc<RoomSettings>,
        registry: Arc<Registry>,
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
            gateways: HashMap::new(),
            conns: HashMap::new(),
            presence: HashMap::new(),
            staged: Staged::default(),
            stale: false,
            stopping: false,
        };
        room.apply_loaded(loaded);
        room
    }

    fn apply_loaded(&mut self, loaded: LoadedRoom) {
        self.seq = loaded.seq;
        self.epoch = loaded.epoch;
        self.first_seq = loaded.first_seq;
        self.names = loaded.names.into_iter().collect();
        self.recent = loaded.recent.into();
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        tracing::debug!(room.id = %self.id, seq = self.seq, "room loaded");
        // When the last gateway left; the room hibernates `idle_timeout` later
        // whatever else (queries, publishes) happens meanwhile.
        let mut empty_since = Some(Instant::now());
        loop {
            let first = match empty_since {
                Some(since) => {
                    match tokio::time::timeout_at(since + self.settings.idle_timeout, rx.recv())
                        .await
                    {
                        Ok(cmd) => cmd,
                        Err(_) => return self.hibernate(rx).await,
                    }
                }
                None => rx.recv().await,
            };
            let Some(first) = first else { break };
            self.handle(first).await;
            for _ in 1..MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd).await,
                    Err(_) => break,
                }
            }
            self.flush().await;
            if self.stopping {
                break;
            }
            empty_since = match (self.gateways.is_empty(), empty_since) {
                (false, _) => None,
                (true, Some(since)) => Some(since),
                (true, None) => Some(Instant::now()),
            };
        }
        self.flush().await;
        self.registry.remove_if(&self.id, self.generation);
        tracing::debug!(room.id = %self.id, "room stopped");
    }

    /// Idle: leave memory. Commands that raced with the decision are handed
    /// to a fresh actor, in order.
    async fn hibernate(self, mut rx: mpsc::Receiver<Command>) {
        self.registry.remove_if(&self.id, self.generation);
        rx.close();
        tracing::debug!(room.id = %self.id, "room idle, evicted");
        while let Ok(cmd) = rx.try_recv() {
            if let Err(error) = self.registry.dispatch(&self.id, cmd).await {
                tracing::warn!(room.id = %self.id, %error, "could not hand a command to the reloaded room");
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Attach { gateway, tx } => {
                self.gateways.insert(gateway, tx);
            }
            Command::Detach { gateway } => self.detach(gateway),
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
                    let close = CloseConn { conn: *conn, code: 4001, reason: reason.clone() };
                    self.send(*gateway, host_frame::Kind::Close(close));
                }
                let _ = reply.send(targets.len() as u32);
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    async fn frame(&mut self, gateway: GatewayId, frame: gateway_frame::Kind) {
        use gateway_frame::Kind;
        match frame {
            Kind::Open(_) => {}
            Kind::Join(join) => self.join(gateway, join).await,
            Kind::Leave(leave) => self.leave(gateway, leave.conn),
            Kind::Chat(chat) => {
                let Some(user) = self.conns.get(&(gateway, chat.conn)).cloned() else {
                    return;
                };
                if let Err(e) = validate_text(&chat.text) {
                    return self.direct(
                        gateway,
                        chat.conn,
                        vec![server::error(e.code, &e.message)],
                    );
                }
                let Some(seq) = self.next_seq().await else {
                    return self.unavailable(gateway, chat.conn);
                };
                let id = if chat.id.is_empty() { format!("{}-{seq}", self.epoch) } else { chat.id };
                let time = server::timestamp(SystemTime::now());
                let frame =
                    server::chat(seq, &id, &user, self.display_name(&user), &chat.text, &time);
                self.stage(Event { seq, frame });
                self.staged.senders.push((gateway, chat.conn));
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
                    return self.unavailable(gateway, set.conn);
                };
                let time = server::timestamp(SystemTime::now());
                self.stage(Event { seq, frame: server::name(seq, &user, &name, &time) });
                self.staged.commit.names.push((user, name));
                self.staged.senders.push((gateway, set.conn));
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
            let close = CloseConn { conn: join.conn, code: 1008, reason: "invalid user id".into() };
            return self.send(gateway, host_frame::Kind::Close(close));
        };
        if self.conns.len() >= MAX_CONNS_PER_ROOM {
            let close = CloseConn { conn: join.conn, code: 1013, reason: "room is full".into() };
            return self.send(gateway, host_frame::Kind::Close(close));
        }
        let user = user.as_str().to_owned();
        if let Some(previous) = self.conns.insert((gateway, join.conn), user.clone()) {
            self.release(&previous);
        }
        let count = self.presence.entry(user.clone()).or_default();
        *count += 1;
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

    /// One connection of `user` is gone; announce `leave` if it was the last.
    fn release(&mut self, user: &str) {
        let Some(count) = self.presence.get_mut(user) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.presence.remove(user);
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
        if self.stale {
            match self.store.load(&self.id).await {
                Ok(loaded) => {
                    self.apply_loaded(loaded);
                    self.stale = false;
                }
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "reload after a failed write failed");
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
            let result = self.store.commit(&self.id, &self.staged.commit).await;
            let staged = std::mem::take(&mut self.staged);
            match result {
                Ok(()) => self.committed(staged),
                Err(error) => self.commit_failed(staged, error),
            }
        }
        self.emit();
    }

    fn committed(&mut self, staged: Staged) {
        let Staged { commit, outputs, replies, .. } = staged;
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
    }

    fn commit_failed(&mut self, staged: Staged, error: StoreError) {
        tracing::warn!(room.id = %self.id, %error, events = staged.commit.events.len(), "commit failed");
        self.stale = true;
        for (reply, _) in staged.replies {
            let _ = reply.send(Err(RoomError::Unavailable(error.to_string())));
        }
        for (gateway, conn) in staged.senders {
            self.unavailable(gateway, conn);
        }
        self.staged.outputs =
            staged.outputs.into_iter().filter(|o| !matches!(o, Output::Event(_))).collect();
    }

    fn unavailable(&mut self, gateway: GatewayId, conn: ConnId) {
        let frame =
            server::error(ErrorCode::Unavailable, "not stored: storage is unavailable, retry");
        self.direct(gateway, conn, vec![frame]);
    }

    /// Sends staged outputs to every gateway, consecutive frames for everyone
    /// grouped into one `Broadcast`.
    fn emit(&mut self) {
        let outputs = std::mem::take(&mut self.staged.outputs);
        let mut run: Vec<Bytes> = Vec::new();
        for output in outputs {
            match output {
                Output::Event(frame) | Output::All(frame) => run.push(frame),
                Output::Except { gateway, conn, frame } => {
                    self.broadcast(std::mem::take(&mut run), None);
                    self.broadcast(vec![frame], Some((gateway, conn)));
                }
            }
        }
        self.broadcast(run, None);
    }

    fn broadcast(&mut self, frames: Vec<Bytes>, except: Option<(GatewayId, ConnId)>) {
        if frames.is_empty() {
            return;
        }
        let mut dead = Vec::new();
        for (id, tx) in &self.gateways {
            let except_conn = match except {
                Some((gateway, conn)) if gateway == *id => conn,
                _ => 0,
            };
            let frame = Broadcast { frames: frames.clone(), except_conn };
            let msg = HostFrame { kind: Some(host_frame::Kind::Broadcast(frame)) };
            if tx.try_send(Ok(msg)).is_err() {
                dead.push(*id);
            }
        }
        self.drop_gateways(dead);
    }

    fn direct(&mut self, gateway: GatewayId, conn: ConnId, frames: Vec<Bytes>) {
        self.send(gateway, host_frame::Kind::Direct(Direct { conn, frames }));
    }

    fn send(&mut self, gateway: GatewayId, kind: host_frame::Kind) {
        let Some(tx) = self.gateways.get(&gateway) else {
            return;
        };
        if tx.try_send(Ok(HostFrame { kind: Some(kind) })).is_err() {
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
            self.detach(gateway);
        }
        self.emit();
    }
}
