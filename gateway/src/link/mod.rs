//! Room links: one gRPC stream per (gateway, room), multiplexing every local
//! connection in that room. A link is an actor owning the stream and the map
//! of local connections; it forwards client frames upstream and fans the
//! roomhost's pre-serialized frames out to local sockets, sharing the bytes.
//!
//! A link follows its room when it moves, and the sockets never notice
//! beyond a pause: on `Moving` it holds client frames and answers `Drained`;
//! on `Moved` (or when the stream breaks, e.g. the roomhost crashed) it opens
//! a stream to the new owner, re-announces its connections silently, asks
//! for the events after the last seq it delivered, then sends what it held
//! and the chats nobody answered. An unreachable owner is skipped: the next
//! ring member is asked to take the room over.
//!
//! Every link has its place in the gateway's directory of links (the shared
//! `rooms_server::Directory`): a command for a room finds its link or starts
//! one, and a link that stops leaves it.
//!
//! Layout: [`phase`] is where the link stands with its stream (one state
//! enum); [`unanswered`] the chats awaiting their answer; `actor` the link's
//! loop and frame handling; [`presence`] presence gathered in join storms;
//! [`roster`] the room's users, to write `welcome`s;
//! `attach` finding the owner and opening streams;
//! `tests` drive a link against `scripted` roomhosts.

mod actor;
mod attach;
mod class;
mod phase;
mod presence;
mod roster;
#[cfg(test)]
mod scripted;
#[cfg(test)]
mod tests;
mod unanswered;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rooms_proto::host::{Handshake, HandshakeReply, RoomKind, gateway_frame};
use rooms_proto::{RoomId, UserId};
use rooms_server::{Directory, Handle, Inbox, Slot, Stopping};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::conn::{ConnHandle, ConnId};
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

pub(crate) enum LinkCmd {
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
    /// What kind of room this is, once its owner said.
    Kind {
        reply: oneshot::Sender<RoomKind>,
    },
    /// A client's handshake for a class room, answered by its class; on 101
    /// `handle` is the socket's.
    Handshake {
        handshake: Handshake,
        handle: ConnHandle,
        reply: oneshot::Sender<HandshakeReply>,
    },
    /// A class room socket's message (`SocketData`) or close (`SocketClosed`).
    Socket {
        conn: ConnId,
        kind: gateway_frame::Kind,
    },
}

/// The sending side of a room link.
#[derive(Clone)]
pub(crate) struct LinkHandle(Handle<LinkCmd>);

impl LinkHandle {
    /// Sends a command; false when the link has stopped.
    pub(crate) async fn send(&self, cmd: LinkCmd) -> bool {
        self.0.send(cmd).await.is_ok()
    }
}

/// A link's place in the gateway's directory of links.
type LinkSlot = Slot<RoomId, LinkCmd>;

#[derive(Debug, thiserror::Error)]
#[error("room link unavailable")]
pub(crate) struct LinkUnavailable;

/// Every room link of this gateway.
pub(crate) struct Links {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    gateway_id: String,
    active: Arc<Directory<RoomId, LinkCmd>>,
    /// Tags for chats sent upstream: random start, so that another
    /// gateway's tags in a shared broadcast never match ours.
    next_tag: AtomicU64,
    /// Set when the gateway stops: links close instead of following moves.
    stopping: Stopping,
}

impl Links {
    pub(crate) fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        gateway_id: String,
        stopping: Stopping,
    ) -> Arc<Self> {
        let gauge = metrics.room_links.clone();
        let active = Directory::new(LINK_QUEUE, usize::MAX, move |n| {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        });
        Arc::new(Self {
            router,
            metrics,
            gateway_id,
            active,
            next_tag: AtomicU64::new(rand::random::<u64>() >> 1 | 1),
            stopping,
        })
    }

    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Delivers a command to the room's link, starting one if needed.
    pub(crate) async fn dispatch(
        self: &Arc<Self>,
        room: &RoomId,
        cmd: LinkCmd,
    ) -> Result<LinkHandle, LinkUnavailable> {
        let start = |slot, rx| self.spawn_link(slot, rx);
        self.active.dispatch(room, cmd, start).await.map(LinkHandle).map_err(|_| LinkUnavailable)
    }

    /// What kind of room `room` is: a class room's sockets go to its class.
    /// None: its owner did not say in time.
    pub(crate) async fn kind(self: &Arc<Self>, room: &RoomId) -> Option<RoomKind> {
        let (reply, answer) = oneshot::channel();
        self.dispatch(room, LinkCmd::Kind { reply }).await.ok()?;
        tokio::time::timeout(FIRST_ATTACH_DEADLINE, answer).await.ok()?.ok()
    }

    /// Spawns a link (a plain function: a link's future may dispatch again,
    /// which an async caller's type cannot contain).
    fn spawn_link(self: &Arc<Self>, slot: LinkSlot, rx: Inbox<LinkCmd>) {
        tokio::spawn(actor::run(Arc::clone(self), slot, rx));
    }

    /// A fresh tag for a chat sent upstream (never 0).
    fn tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed).max(1)
    }
}
