//! Room links: one gRPC stream per (gateway, room), multiplexing every local
//! connection in that room. A link is an actor owning the stream and the map
//! of local connections; it forwards client frames upstream and fans the
//! roomhost's pre-serialized frames out to local sockets, sharing the bytes.
//!
//! A link follows its room when it moves, and the sockets never notice
//! beyond a pause: on `Moving` it holds client frames and answers `Drained`;
//! on `Moved` (or when the stream breaks, e.g. the roomhost crashed) it opens
//! a stream to the new owner, re-announces its connections silently, asks
//! for the events after the last seq it delivered, then sends what it held.
//! An unreachable owner is skipped: the next ring member is asked to take
//! the room over once the old owner's lease expires.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rooms_cluster::Ring;
use rooms_proto::host::{
    Drained, GatewayFrame, HostFrame, Join, Leave, Open, gateway_frame, host_frame,
};
use rooms_proto::{RoomId, UserId, client::ErrorCode};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tonic::Streaming;

use crate::conn::{ConnHandle, ConnId, Delivery, Frames, close_code};
use crate::metrics::Metrics;
use crate::router::Router;

/// Capacity of a link's command channel (client frames, joins, leaves);
/// a client sending into a full channel waits.
pub const LINK_QUEUE: usize = 1024;
/// Frames queued towards the roomhost; past it a client frame is refused
/// with `unavailable`.
pub const UPSTREAM_QUEUE: usize = 4096;
/// A link without connections closes its stream after this long.
pub const LINGER: Duration = Duration::from_secs(5);
/// Longest wait for a roomhost to accept a room stream; past it the next
/// ring member is asked.
pub const OPEN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a new link keeps trying to open its first stream.
pub const FIRST_ATTACH_DEADLINE: Duration = Duration::from_secs(5);
/// Client frames held per room while it moves; past it they are refused
/// with `unavailable`.
pub const HOLD_LIMIT: usize = 1024;
/// How long a link keeps trying to reach its room's new owner before it
/// closes its sockets (1012: reconnect and resume).
pub const REATTACH_DEADLINE: Duration = Duration::from_secs(30);
const DISPATCH_ATTEMPTS: usize = 4;
/// Chats per link whose stored event is awaited to time them; past it (the
/// oldest are forgotten after [`PENDING_TTL`]) new chats go untimed.
const MAX_PENDING: usize = 4096;
const PENDING_TTL: Duration = Duration::from_secs(10);

pub enum LinkCmd {
    Join {
        conn: ConnId,
        user: UserId,
        since: Option<u64>,
        epoch: String,
        handle: ConnHandle,
    },
    Leave {
        conn: ConnId,
    },
    /// A client frame, read off its socket at `received`.
    Frame {
        conn: ConnId,
        kind: gateway_frame::Kind,
        received: Instant,
    },
}

#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<LinkCmd>,
    generation: u64,
}

impl LinkHandle {
    /// Sends a command; false when the link has stopped.
    pub async fn send(&self, cmd: LinkCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("room link unavailable")]
pub struct LinkUnavailable;

/// Every room link of this gateway.
pub struct Links {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    gateway_id: String,
    active: Mutex<HashMap<RoomId, LinkHandle>>,
    generation: AtomicU64,
    /// Tags for chats sent upstream: random start, so that another
    /// gateway's tags in a shared broadcast never match ours.
    next_tag: AtomicU64,
    /// Set when the gateway stops: links close instead of following moves.
    stop: watch::Receiver<bool>,
}

impl Links {
    pub fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        gateway_id: String,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            router,
            metrics,
            gateway_id,
            active: Mutex::default(),
            generation: AtomicU64::new(1),
            next_tag: AtomicU64::new(rand::random::<u64>() >> 1 | 1),
            stop,
        })
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    fn handle(self: &Arc<Self>, room: &RoomId) -> LinkHandle {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = active.get(room) {
            return handle.clone();
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let handle = LinkHandle { tx, generation };
        active.insert(room.clone(), handle.clone());
        drop(active);
        self.metrics.room_links.inc();
        tokio::spawn(Link::run(Arc::clone(self), room.clone(), generation, rx));
        handle
    }

    /// Delivers a command to the room's link, starting one if needed.
    pub async fn dispatch(
        self: &Arc<Self>,
        room: &RoomId,
        mut cmd: LinkCmd,
    ) -> Result<LinkHandle, LinkUnavailable> {
        for _ in 0..DISPATCH_ATTEMPTS {
            let handle = self.handle(room);
            match handle.tx.send(cmd).await {
                Ok(()) => return Ok(handle),
                Err(mpsc::error::SendError(returned)) => {
                    self.remove_if(room, handle.generation);
                    cmd = returned;
                }
            }
        }
        Err(LinkUnavailable)
    }

    fn remove_if(&self, room: &RoomId, generation: u64) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.get(room).is_some_and(|h| h.generation == generation) {
            active.remove(room);
        }
    }
}

/// A local connection in the room.
struct Local {
    handle: ConnHandle,
    user: UserId,
    /// Set by the connection's `welcome`. Broadcasts that arrive before it
    /// were emitted before the roomhost processed the join, so the welcome
    /// and history already cover them: they are not delivered, and nothing
    /// reaches a client before its `welcome`.
    welcomed: bool,
    /// The resume point it asked for, for a join re-sent after a move.
    since: Option<u64>,
    epoch: String,
}

struct Link {
    links: Arc<Links>,
    room: RoomId,
    generation: u64,
    conns: HashMap<ConnId, Local>,
    upstream: mpsc::Sender<GatewayFrame>,
    /// The room's seq as of the last frame received: a new owner replays
    /// what comes after it.
    last_seq: u64,
    /// Whether a stream was ever open (then a new one resumes after `last_seq`).
    attached: bool,
    /// Some until the current owner confirmed the stream (`Attached`):
    /// client frames (other than joins and leaves, which are re-announced
    /// from `conns`) that must be resent if the stream is redirected or the
    /// room moves before that.
    held: Option<VecDeque<GatewayFrame>>,
    /// Whether frames also go upstream now (false between `Moving` or a
    /// broken stream and the next open stream).
    streaming: bool,
    /// Welcomed connections that closed while unconfirmed: the new owner
    /// hears them join and leave, so it announces the `leave`.
    departed: Vec<(ConnId, UserId)>,
    /// Redirects followed without any frame delivered in between.
    bounces: u32,
    /// Tagged chats sent upstream, by tag: when each was read off its socket.
    pending: HashMap<u64, Instant>,
    /// Since when the room's frames have been held for a move.
    moving_since: Option<Instant>,
    /// The roomhost of the current stream.
    address: Option<String>,
}

fn frame(kind: gateway_frame::Kind) -> GatewayFrame {
    GatewayFrame { kind: Some(kind) }
}

/// The roomhost's bytes as a WebSocket text payload. The roomhost only sends
/// JSON it serialized itself; anything else is dropped.
fn text(bytes: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(bytes).ok()
}

/// What a frame from the roomhost asks the link to do next.
enum Next {
    Continue,
    Reattach(Target),
}

/// Where to re-attach.
enum Target {
    /// Where a roomhost sent the room.
    Redirect(String),
    /// The ring's choice, skipping this roomhost first: it broke the stream
    /// or said it cannot serve the room (its lease ran out).
    Ring { avoid: Option<String> },
}

impl Link {
    async fn run(
        links: Arc<Links>,
        room: RoomId,
        generation: u64,
        mut rx: mpsc::Receiver<LinkCmd>,
    ) {
        let (upstream, _) = mpsc::channel(1);
        let mut link = Link {
            links,
            room,
            generation,
            conns: HashMap::new(),
            upstream,
            last_seq: 0,
            attached: false,
            held: Some(VecDeque::new()),
            streaming: false,
            departed: Vec::new(),
            bounces: 0,
            pending: HashMap::new(),
            moving_since: None,
            address: None,
        };
        let first = Target::Ring { avoid: None };
        if let Some(inbound) = link.reattach(&mut rx, first, FIRST_ATTACH_DEADLINE).await {
            link.serve(&mut rx, inbound).await;
        }
        link.links.metrics.room_links.dec();
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<LinkCmd>, mut inbound: Streaming<HostFrame>) {
        let mut stop = self.links.stop.clone();
        loop {
            let next = tokio::select! {
                biased;
                () = crate::stopped(&mut stop) => return,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        self.command(cmd);
                        Next::Continue
                    }
                    None => return,
                },
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.deliver(message),
                    Ok(None) => {
                        tracing::warn!(room.id = %self.room, roomhost.addr = ?self.address, "room stream ended; re-attaching");
                        Next::Reattach(Target::Ring { avoid: None })
                    }
                    Err(status) => {
                        // A dead connection (crash, partition: found by the
                        // HTTP/2 pings): that roomhost is skipped this time.
                        tracing::warn!(room.id = %self.room, roomhost.addr = ?self.address, error = %status.message(), "room stream broke; re-attaching elsewhere");
                        Next::Reattach(Target::Ring { avoid: self.address.clone() })
                    }
                },
                () = tokio::time::sleep(LINGER), if self.conns.is_empty() && self.held.is_none() => {
                    // Idle: stop. Commands that raced with this go to a new link.
                    self.links.remove_if(&self.room, self.generation);
                    rx.close();
                    while let Ok(cmd) = rx.try_recv() {
                        let _ = self.links.dispatch(&self.room, cmd).await;
                    }
                    return;
                }
            };
            if let Next::Reattach(target) = next {
                if matches!(target, Target::Redirect(_)) {
                    self.links.metrics.redirects.inc();
                }
                self.moving_since.get_or_insert_with(Instant::now);
                self.held.get_or_insert_with(VecDeque::new);
                self.streaming = false;
                match self.reattach(rx, target, REATTACH_DEADLINE).await {
                    Some(stream) => inbound = stream,
                    None => return,
                }
            }
        }
    }

    /// Opens a stream to the room's owner (`target`, else the ring's choice),
    /// skipping owners that cannot be reached, until `deadline` passes. Client
    /// commands keep being taken meanwhile. None: gave up, sockets closed.
    async fn reattach(
        &mut self,
        rx: &mut mpsc::Receiver<LinkCmd>,
        target: Target,
        deadline: Duration,
    ) -> Option<Streaming<HostFrame>> {
        let started = tokio::time::Instant::now();
        let (mut target, mut unreachable) = match target {
            Target::Redirect(address) => (Some(address), Vec::new()),
            Target::Ring { avoid } => (None, avoid.into_iter().collect()),
        };
        let mut attempt: u32 = 0;
        self.bounces += 1;
        if self.bounces > 3 {
            // Two roomhosts disagree about the room (membership changing):
            // let them settle instead of bouncing between them.
            self.pause(rx, Duration::from_millis(50 * u64::from(self.bounces.min(20)))).await;
        }
        loop {
            if *self.links.stop.borrow() {
                self.give_up(rx);
                return None;
            }
            let ring = self.links.router.ring();
            // Sent there by a roomhost (the previous owner or a lease holder),
            // or the ring's first choice is unreachable: the roomhost asked
            // may serve the room even if its own ring says otherwise, once it
            // holds the lease (waiting out an unreachable owner's lease).
            let redirected = target.is_some();
            let address = if let Some(address) = target.take() {
                Some(address)
            } else {
                let members = ring.members().iter().filter(|m| !unreachable.contains(m)).cloned();
                Ring::new(members, 0).owner(&self.room).map(str::to_owned)
            };
            let Some(address) = address else {
                unreachable.clear();
                self.pause(rx, Duration::from_millis(100)).await;
                continue;
            };
            let fallback = redirected || !unreachable.is_empty();
            match self.open(&address, fallback).await {
                Ok(inbound) => {
                    tracing::debug!(room.id = %self.room, roomhost.addr = %address, fallback, "room stream open");
                    return Some(inbound);
                }
                Err(error) => {
                    tracing::warn!(room.id = %self.room, roomhost.addr = %address, %error, "roomhost unreachable");
                    unreachable.push(address);
                }
            }
            attempt += 1;
            if started.elapsed() > deadline {
                tracing::error!(room.id = %self.room, "no roomhost took the room; closing its sockets");
                self.give_up(rx);
                return None;
            }
            self.pause(rx, Duration::from_millis(50 * u64::from(attempt.min(10)))).await;
        }
    }

    /// Waits, still taking client commands.
    async fn pause(&mut self, rx: &mut mpsc::Receiver<LinkCmd>, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        while let Ok(Some(cmd)) = tokio::time::timeout_at(until, rx.recv()).await {
            self.command(cmd);
        }
    }

    /// Opens the stream: Open, every connection (silently if it was already
    /// welcomed), the departed, then the held client frames.
    async fn open(
        &mut self,
        address: &str,
        fallback: bool,
    ) -> Result<Streaming<HostFrame>, String> {
        let ring = self.links.router.ring();
        let mut client = self.links.router.client(address, &ring).map_err(|e| e.to_string())?;
        let open = Open {
            room: self.room.to_string(),
            gateway_id: self.links.gateway_id.clone(),
            resume_after: self.attached.then_some(self.last_seq),
            fallback,
        };
        let mut first = vec![frame(gateway_frame::Kind::Open(open))];
        for (conn, local) in &self.conns {
            let join = Join {
                conn: *conn,
                user_id: local.user.to_string(),
                since: local.since,
                epoch: local.epoch.clone(),
                rejoin: local.welcomed,
            };
            first.push(frame(gateway_frame::Kind::Join(join)));
        }
        for (conn, user) in &self.departed {
            let join =
                Join { conn: *conn, user_id: user.to_string(), rejoin: true, ..Join::default() };
            first.push(frame(gateway_frame::Kind::Join(join)));
            first.push(frame(gateway_frame::Kind::Leave(Leave { conn: *conn })));
        }
        let held = self.held.clone().unwrap_or_default();
        first.extend(held);
        let (upstream, upstream_rx) = mpsc::channel(UPSTREAM_QUEUE);
        let outbound = tokio_stream::iter(first).chain(ReceiverStream::new(upstream_rx));
        let response = tokio::time::timeout(OPEN_TIMEOUT, client.attach(outbound))
            .await
            .map_err(|_| "did not answer in time".to_owned())?
            .map_err(|status| status.message().to_owned())?;
        self.upstream = upstream;
        self.attached = true;
        self.streaming = true;
        self.address = Some(address.to_owned());
        Ok(response.into_inner())
    }

    fn command(&mut self, cmd: LinkCmd) {
        match cmd {
            LinkCmd::Join { conn, user, since, epoch, handle } => {
                let local = Local {
                    handle,
                    user: user.clone(),
                    welcomed: false,
                    since,
                    epoch: epoch.clone(),
                };
                self.conns.insert(conn, local);
                // Never held: every open re-announces the connections it has.
                if self.streaming {
                    let join =
                        Join { conn, user_id: user.to_string(), since, epoch, rejoin: false };
                    self.send_upstream(conn, frame(gateway_frame::Kind::Join(join)));
                }
            }
            LinkCmd::Leave { conn } => {
                let Some(local) = self.conns.remove(&conn) else { return };
                if self.streaming {
                    self.send_upstream(conn, frame(gateway_frame::Kind::Leave(Leave { conn })));
                }
                if self.held.is_some() && local.welcomed {
                    self.departed.push((conn, local.user));
                }
            }
            LinkCmd::Frame { conn, mut kind, received } => {
                if let gateway_frame::Kind::Chat(chat) = &mut kind {
                    chat.tag = self.track(received);
                }
                self.forward(conn, kind);
            }
        }
    }

    /// A tag for a chat read off its socket at `received`, to time it until
    /// its stored event comes back (0: untimed, too many in flight).
    fn track(&mut self, received: Instant) -> u64 {
        if self.pending.len() >= MAX_PENDING {
            self.pending.retain(|_, at| at.elapsed() < PENDING_TTL);
            if self.pending.len() >= MAX_PENDING {
                return 0;
            }
        }
        let tag = self.links.next_tag.fetch_add(1, Ordering::Relaxed).max(1);
        self.pending.insert(tag, received);
        tag
    }

    /// Queues a client frame for the roomhost, keeping it until the owner
    /// confirmed the stream; a full queue or hold refuses it.
    fn forward(&mut self, conn: ConnId, kind: gateway_frame::Kind) {
        let message = frame(kind);
        if let Some(held) = &mut self.held {
            if held.len() >= HOLD_LIMIT {
                return self.error(
                    conn,
                    ErrorCode::Unavailable,
                    "room moving; message not sent, retry",
                    &message,
                );
            }
            held.push_back(message.clone());
        }
        if self.streaming {
            self.send_upstream(conn, message);
        }
    }

    /// Sends on the current stream. A closed stream (the roomhost dropped
    /// it; the link hears why next) stops streaming and keeps the frame for
    /// the next one; a full one refuses it.
    fn send_upstream(&mut self, conn: ConnId, message: GatewayFrame) {
        match self.upstream.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(message)) => {
                self.streaming = false;
                let held = self.held.get_or_insert_with(VecDeque::new);
                let is_client_frame = !matches!(
                    message.kind,
                    Some(gateway_frame::Kind::Join(_) | gateway_frame::Kind::Leave(_))
                );
                if is_client_frame && !held.contains(&message) {
                    held.push_back(message);
                }
            }
            Err(mpsc::error::TrySendError::Full(message)) => {
                self.error(
                    conn,
                    ErrorCode::Unavailable,
                    "room busy; message not sent, retry",
                    &message,
                );
            }
        }
    }

    fn deliver(&mut self, message: HostFrame) -> Next {
        self.last_seq = self.last_seq.max(message.room_seq);
        let metrics = &self.links.metrics;
        match message.kind {
            Some(host_frame::Kind::Broadcast(broadcast)) => {
                self.bounces = 0;
                let frames: Frames = broadcast.frames.into_iter().filter_map(text).collect();
                if frames.is_empty() {
                    return Next::Continue;
                }
                let started = Instant::now();
                for (conn, local) in &self.conns {
                    if *conn == broadcast.except_conn || !local.welcomed {
                        continue;
                    }
                    match local.handle.deliver(Arc::clone(&frames)) {
                        Delivery::Queued => metrics.frames_out.inc_by(frames.len() as u64),
                        Delivery::Overflow => metrics.send_queue_full.inc(),
                        Delivery::Closed => 0,
                    };
                }
                metrics.fanout_seconds.observe(started.elapsed().as_secs_f64());
                for tag in broadcast.tags {
                    if let Some(received) = self.pending.remove(&tag) {
                        metrics.e2e_seconds.observe(received.elapsed().as_secs_f64());
                    }
                }
            }
            Some(host_frame::Kind::Direct(direct)) => {
                self.bounces = 0;
                let Some(local) = self.conns.get_mut(&direct.conn) else {
                    return Next::Continue;
                };
                local.welcomed = true;
                let frames: Frames = direct.frames.into_iter().filter_map(text).collect();
                if local.handle.deliver(Arc::clone(&frames)) == Delivery::Queued {
                    metrics.frames_out.inc_by(frames.len() as u64);
                }
            }
            Some(host_frame::Kind::Close(close)) => {
                if let Some(Local { handle, .. }) = self.conns.get(&close.conn) {
                    let code = u16::try_from(close.code).unwrap_or(close_code::SERVER_ERROR);
                    handle.close(code, close.reason);
                }
            }
            Some(host_frame::Kind::Moving(_)) => {
                self.moving_since.get_or_insert_with(Instant::now);
                // Everything sent so far will be processed before Drained.
                let _ = self.upstream.try_send(frame(gateway_frame::Kind::Drained(Drained {})));
                self.held = Some(VecDeque::new());
                self.departed.clear();
                self.streaming = false;
            }
            Some(host_frame::Kind::Attached(_)) => {
                self.bounces = 0;
                if let Some(since) = self.moving_since.take() {
                    metrics.room_moves.inc();
                    metrics.room_move_pause_seconds.observe(since.elapsed().as_secs_f64());
                }
                self.held = None;
                self.departed.clear();
            }
            Some(host_frame::Kind::Moved(moved)) => {
                tracing::debug!(room.id = %self.room, target = %moved.address, "room moved");
                // No address: that roomhost cannot serve the room (it lost
                // its lease, or its store is unreachable): ask the ring
                // without it.
                return Next::Reattach(if moved.address.is_empty() {
                    Target::Ring { avoid: self.address.clone() }
                } else {
                    Target::Redirect(moved.address)
                });
            }
            None => {}
        }
        Next::Continue
    }

    /// Refuses `refused` (a client's frame), naming its client id if it is
    /// a chat with one.
    fn error(&self, conn: ConnId, code: ErrorCode, message: &str, refused: &GatewayFrame) {
        if let Some(Local { handle, .. }) = self.conns.get(&conn) {
            let id = match &refused.kind {
                Some(gateway_frame::Kind::Chat(chat)) => chat.id.as_str(),
                _ => "",
            };
            handle.send_error(code, message, id);
        }
    }

    /// No roomhost would take the room: close every socket (1012) so the
    /// clients reconnect and resume, and refuse what is queued.
    fn give_up(&mut self, rx: &mut mpsc::Receiver<LinkCmd>) {
        self.links.remove_if(&self.room, self.generation);
        rx.close();
        for local in self.conns.values() {
            local.handle.send_error(
                ErrorCode::Unavailable,
                "room unavailable; reconnect to resume",
                "",
            );
            local.handle.close(close_code::RESTART, "room unavailable; reconnect");
        }
        self.conns.clear();
        while let Ok(cmd) = rx.try_recv() {
            if let LinkCmd::Join { handle, .. } = cmd {
                handle.send_error(ErrorCode::Unavailable, "room unavailable; retry", "");
                handle.close(close_code::TRY_AGAIN_LATER, "room unavailable");
            }
        }
    }
}
