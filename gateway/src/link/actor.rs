//! One link's task: takes its connections' commands, forwards their frames
//! upstream as its [`Phase`] allows, and delivers the roomhost's frames to
//! the local sockets.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use rooms_proto::host::{
    Broadcast, Drained, GatewayFrame, HostFrame, Join, Leave, gateway_frame, host_frame,
};
use rooms_proto::{RoomId, UserId, client::ErrorCode};
use rooms_server::Inbox;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tonic::Streaming;

use super::class::ClassSide;
use super::phase::Phase;
use super::presence::{Arrival, Mark, Presence};
use super::roster::Roster;
use super::unanswered::{Unanswered, tag_of};
use super::{
    FIRST_ATTACH_DEADLINE, HOLD_LIMIT, LINGER, LinkCmd, LinkSlot, Links, REATTACH_DEADLINE,
};
use crate::conn::{ConnHandle, ConnId, Delivery, Frames, close_code};
use crate::metrics::Metrics;

/// A local connection in the room.
pub(super) struct Local {
    pub(super) handle: ConnHandle,
    pub(super) user: UserId,
    /// Set by the connection's `welcome`, to the presence mark of that
    /// moment. Broadcasts that arrive before it were emitted before the
    /// roomhost processed the join, so the welcome and history already
    /// cover them: they are not delivered (nor presence gathered before
    /// it), and nothing reaches a client before its `welcome`.
    pub(super) welcomed: Option<Mark>,
    /// The link's stream its welcome came on (see [`Link::streams`]).
    pub(super) stream: u32,
    /// The resume point it asked for, for a join re-sent after a move.
    pub(super) since: Option<u64>,
    pub(super) epoch: String,
}

pub(super) struct Link {
    pub(super) links: Arc<Links>,
    pub(super) room: RoomId,
    /// Takes the link out of the gateway's directory when it stops.
    slot: LinkSlot,
    pub(super) conns: HashMap<ConnId, Local>,
    pub(super) phase: Phase,
    /// The room's seq as of the last frame received, once a stream was
    /// open: a new owner replays what comes after it.
    pub(super) last_seq: Option<u64>,
    /// Redirects followed without any frame delivered in between.
    pub(super) bounces: u32,
    /// Streams opened so far: the current one's number.
    pub(super) streams: u32,
    unanswered: Unanswered,
    pub(super) class: ClassSide,
    presence: Presence,
    /// The room's users as the stream last told them; a new owner learns
    /// them from it (`Open.known_users`).
    pub(super) roster: Roster,
}

/// Counts a delivery of `frames` frames in the gateway's metrics.
fn count(metrics: &Metrics, frames: usize, delivery: Delivery) {
    match delivery {
        Delivery::Queued => metrics.frames_out.inc_by(frames as u64),
        Delivery::Overflow => metrics.send_queue_full.inc(),
        Delivery::Closed => 0,
    };
}

/// Sleeps until `at`, or forever without a deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Presence any connection may get late, together with more: a rejoined
/// user's `join` is not, being for some connections only.
fn gatherable(broadcast: &Broadcast) -> bool {
    broadcast.presence && !broadcast.rejoined
}

pub(super) fn frame(kind: gateway_frame::Kind) -> GatewayFrame {
    GatewayFrame { kind: Some(kind) }
}

/// The roomhost's bytes as a WebSocket text payload. The roomhost only sends
/// JSON it serialized itself; anything else is dropped.
fn text(bytes: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(bytes).ok()
}

/// Where to attach next.
pub(super) enum Target {
    /// Where a roomhost sent the room.
    Redirect(String),
    /// The ring's choice, skipping this roomhost first: it broke the stream
    /// or said it cannot serve the room (its lease ran out).
    Ring { avoid: Option<String> },
}

pub(super) async fn run(links: Arc<Links>, slot: LinkSlot, mut rx: Inbox<LinkCmd>) {
    let mut link = Link {
        links,
        room: slot.key().clone(),
        slot,
        conns: HashMap::new(),
        phase: Phase::new(),
        last_seq: None,
        bounces: 0,
        streams: 0,
        unanswered: Unanswered::default(),
        class: ClassSide::default(),
        presence: Presence::default(),
        roster: Roster::default(),
    };
    let first = Target::Ring { avoid: None };
    if let Some(inbound) = link.attach(&mut rx, first, FIRST_ATTACH_DEADLINE).await {
        link.serve(&mut rx, inbound).await;
    }
}

impl Link {
    async fn serve(&mut self, rx: &mut Inbox<LinkCmd>, mut inbound: Streaming<HostFrame>) {
        let mut stopping = self.links.stopping.clone();
        loop {
            let idle = self.conns.is_empty() && self.class.is_idle() && self.phase.is_attached();
            let next = tokio::select! {
                biased;
                () = stopping.wait() => return,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        self.command(cmd);
                        None
                    }
                    None => return,
                },
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.deliver(message),
                    Ok(None) => {
                        tracing::warn!(room.id = %self.room, roomhost.addr = ?self.phase.address(), "room stream ended; re-attaching");
                        Some(Target::Ring { avoid: None })
                    }
                    Err(status) => {
                        // A dead connection (crash, partition: found by the
                        // HTTP/2 pings): that roomhost is skipped this time.
                        tracing::warn!(room.id = %self.room, roomhost.addr = ?self.phase.address(), error = %status.message(), "room stream broke; re-attaching elsewhere");
                        Some(Target::Ring { avoid: self.phase.address().map(str::to_owned) })
                    }
                },
                () = sleep_until(self.presence.due()), if self.presence.due().is_some() => {
                    self.deliver_gathered();
                    None
                }
                () = tokio::time::sleep(LINGER), if idle => {
                    // Idle: stop. Commands that raced with this go to a new link.
                    self.slot.vacate();
                    rx.close();
                    while let Ok(cmd) = rx.try_recv() {
                        let _ = self.links.dispatch(&self.room, cmd).await;
                    }
                    return;
                }
            };
            if let Some(target) = next {
                if matches!(target, Target::Redirect(_)) {
                    self.links.metrics.redirects.inc();
                }
                self.phase.broke();
                self.hold_unanswered();
                match self.attach(rx, target, REATTACH_DEADLINE).await {
                    Some(stream) => inbound = stream,
                    None => return,
                }
            }
        }
    }

    /// Chats sent on the stream that just ended and never answered (it
    /// broke, or its roomhost gave the room up without a drain) go first on
    /// the next stream: resent chats the room already stored are answered
    /// without being stored again.
    fn hold_unanswered(&mut self) {
        let resend = self.unanswered.resendable();
        let Some(held) = self.phase.held() else { return };
        let already: Vec<u64> = held.frames.iter().map(tag_of).collect();
        for frame in resend.into_iter().rev() {
            if !already.contains(&tag_of(&frame)) {
                held.frames.push_front(frame);
            }
        }
    }

    /// Handles a command; client commands keep coming while the link looks
    /// for its room's owner too.
    pub(super) fn command(&mut self, cmd: LinkCmd) {
        match cmd {
            LinkCmd::Join { conn, user, since, epoch, handle } => {
                let local = Local {
                    handle,
                    user: user.clone(),
                    welcomed: None,
                    stream: 0,
                    since,
                    epoch: epoch.clone(),
                };
                self.conns.insert(conn, local);
                // Never held: every open re-announces the connections it has.
                let user_id = user.to_string();
                let join = Join { conn, user_id, since, epoch, rejoin: false, socket: None };
                self.send_upstream(conn, frame(gateway_frame::Kind::Join(join)));
            }
            LinkCmd::Leave { conn } => {
                let Some(local) = self.conns.remove(&conn) else { return };
                self.send_upstream(conn, frame(gateway_frame::Kind::Leave(Leave { conn })));
                if let Some(held) = self.phase.held()
                    && local.welcomed.is_some()
                {
                    held.departed.push((conn, local.user));
                }
            }
            LinkCmd::Frame { conn, mut kind, received } => {
                if let gateway_frame::Kind::Chat(chat) = &mut kind {
                    chat.tag = self.links.tag();
                }
                let message = frame(kind);
                self.track_at(&message, received);
                self.forward(conn, message);
            }
            LinkCmd::Kind { reply } => self.ask_kind(reply),
            LinkCmd::Handshake { handshake, handle, reply } => {
                self.handshake(handshake, handle, reply);
            }
            LinkCmd::Socket { conn, kind } => self.socket_frame(conn, kind),
        }
    }

    /// Tracks a tagged frame until the room answers its tag.
    pub(super) fn track(&mut self, message: &GatewayFrame) {
        self.track_at(message, Instant::now());
    }

    fn track_at(&mut self, message: &GatewayFrame, received: Instant) {
        let tag = tag_of(message);
        if tag != 0 {
            self.unanswered.track(tag, received, message);
        }
    }

    /// Queues a client frame for the roomhost, keeping it until the owner
    /// confirmed the stream; a full queue or hold refuses it.
    pub(super) fn forward(&mut self, conn: ConnId, message: GatewayFrame) {
        if let Some(held) = self.phase.held() {
            if held.frames.len() >= HOLD_LIMIT {
                return self.error(
                    conn,
                    ErrorCode::Unavailable,
                    "room moving; message not sent, retry",
                    &message,
                );
            }
            held.frames.push_back(message.clone());
        }
        self.send_upstream(conn, message);
    }

    /// Sends on the current stream, if frames go up now. A closed stream
    /// (the roomhost dropped it; the link hears why next) keeps the frame
    /// for the next one; a full one refuses it.
    fn send_upstream(&mut self, conn: ConnId, message: GatewayFrame) {
        let Some(stream) = self.phase.sending() else { return };
        match stream.up.try_send(Box::new(message)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(message)) => self.phase.upstream_closed(*message),
            Err(mpsc::error::TrySendError::Full(message)) => {
                self.unanswered.answered(tag_of(&message));
                self.error(
                    conn,
                    ErrorCode::Unavailable,
                    "room busy; message not sent, retry",
                    &message,
                );
            }
        }
    }

    /// Delivers `frames` to every welcomed connection but `except`, sharing
    /// them; `newcomers`: only to those welcomed on the current stream.
    fn fan_out(&self, frames: &Frames, except: ConnId, newcomers: bool) {
        let metrics = &self.links.metrics;
        let started = Instant::now();
        for (conn, local) in &self.conns {
            if *conn == except || local.welcomed.is_none() {
                continue;
            }
            if newcomers && local.stream != self.streams {
                continue;
            }
            count(metrics, frames.len(), local.handle.deliver(Arc::clone(frames)));
        }
        metrics.fanout_seconds.observe(started.elapsed().as_secs_f64());
    }

    /// Delivers the gathered presence, one batch per connection.
    fn deliver_gathered(&mut self) {
        let Some(batch) = self.presence.take(Instant::now()) else { return };
        let metrics = &self.links.metrics;
        let started = Instant::now();
        for (conn, local) in &self.conns {
            let Some(welcomed) = local.welcomed else { continue };
            if let Some(frames) = batch.for_conn(*conn, welcomed) {
                count(metrics, frames.len(), local.handle.deliver(frames));
            }
        }
        metrics.fanout_seconds.observe(started.elapsed().as_secs_f64());
    }

    /// Handles a frame from the roomhost; Some: attach again, there.
    fn deliver(&mut self, message: HostFrame) -> Option<Target> {
        if let Some(last) = &mut self.last_seq {
            *last = (*last).max(message.room_seq);
        }
        // Gathered presence goes before anything else of the room, except
        // more presence, the roster, and a connection's welcome (not for it
        // anyway).
        let keeps_order = match &message.kind {
            Some(host_frame::Kind::Broadcast(broadcast)) => gatherable(broadcast),
            Some(host_frame::Kind::Roster(_)) => true,
            Some(host_frame::Kind::Direct(direct)) => {
                self.conns.get(&direct.conn).is_some_and(|local| local.welcomed.is_none())
            }
            _ => false,
        };
        if !keeps_order {
            self.deliver_gathered();
        }
        let metrics = &self.links.metrics;
        match message.kind {
            Some(host_frame::Kind::Broadcast(broadcast)) => {
                self.bounces = 0;
                let gather = gatherable(&broadcast);
                if let Some(roster) = broadcast.roster {
                    self.roster.apply(roster);
                }
                for tag in broadcast.tags {
                    if let Some(received) = self.unanswered.answered(tag) {
                        metrics.e2e_seconds.observe(received.elapsed().as_secs_f64());
                    }
                }
                let frames: Frames = broadcast.frames.into_iter().filter_map(text).collect();
                if frames.is_empty() {
                    return None;
                }
                let except = broadcast.except_conn;
                if gather {
                    match self.presence.arrive(frames, except, Instant::now()) {
                        Arrival::Deliver(frames) => self.fan_out(&frames, except, false),
                        Arrival::Gathered => {}
                        Arrival::Full => self.deliver_gathered(),
                    }
                } else {
                    self.fan_out(&frames, except, broadcast.rejoined);
                }
            }
            Some(host_frame::Kind::Direct(direct)) => {
                self.bounces = 0;
                for tag in direct.tags {
                    self.unanswered.answered(tag);
                }
                if direct.frames.is_empty() && direct.welcome.is_none() {
                    return None; // an answer without anything to show
                }
                let mark = self.presence.welcome_mark();
                let local = self.conns.get_mut(&direct.conn)?;
                if local.welcomed.is_none() {
                    local.welcomed = Some(mark);
                    local.stream = self.streams;
                }
                let welcome = direct
                    .welcome
                    .map(|w| self.roster.welcome(self.room.as_str(), local.user.as_str(), &w));
                let frames: Frames =
                    welcome.into_iter().chain(direct.frames).filter_map(text).collect();
                count(metrics, frames.len(), local.handle.deliver(frames));
            }
            Some(host_frame::Kind::Close(close)) => {
                if self.socket_close(&close) {
                    return None;
                }
                if let Some(Local { handle, .. }) = self.conns.get(&close.conn) {
                    let code = u16::try_from(close.code).unwrap_or(close_code::SERVER_ERROR);
                    handle.close(code, close.reason);
                }
            }
            Some(host_frame::Kind::Moving(_)) => {
                // Everything sent so far will be processed before Drained.
                if let Some(stream) = self.phase.moving() {
                    let _ = stream
                        .up
                        .try_send(Box::new(frame(gateway_frame::Kind::Drained(Drained {}))));
                }
            }
            Some(host_frame::Kind::Attached(_)) => {
                self.bounces = 0;
                if let Some(since) = self.phase.confirmed() {
                    metrics.room_moves.inc();
                    metrics.room_move_pause_seconds.observe(since.elapsed().as_secs_f64());
                }
            }
            Some(host_frame::Kind::Moved(moved)) => {
                tracing::debug!(room.id = %self.room, target = ?moved.address, "room moved");
                // No address: that roomhost cannot serve the room (it lost
                // its lease, or its store is unreachable): ask the ring
                // without it.
                return Some(match moved.address {
                    Some(address) => Target::Redirect(address),
                    None => Target::Ring { avoid: self.phase.address().map(str::to_owned) },
                });
            }
            Some(host_frame::Kind::Roster(roster)) => self.roster.apply(roster),
            Some(host_frame::Kind::RoomKind(kind)) => self.kind_known(kind),
            Some(host_frame::Kind::HandshakeReply(reply)) => self.handshake_answered(reply),
            Some(host_frame::Kind::SocketSend(send)) => self.socket_send(send),
            Some(host_frame::Kind::SocketState(state)) => self.socket_state(state),
            None => {}
        }
        None
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
    pub(super) fn give_up(&mut self, rx: &mut Inbox<LinkCmd>) {
        self.slot.vacate();
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
        self.class.give_up();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                LinkCmd::Join { handle, .. } => {
                    handle.send_error(ErrorCode::Unavailable, "room unavailable; retry", "");
                    handle.close(close_code::TRY_AGAIN_LATER, "room unavailable");
                }
                LinkCmd::Handshake { handshake, reply, .. } => {
                    let body = Some("room unavailable; retry".to_owned());
                    let _ = reply.send(rooms_proto::host::HandshakeReply {
                        conn: handshake.conn,
                        status: 503,
                        headers: Vec::new(),
                        body,
                    });
                }
                _ => {}
            }
        }
    }
}
