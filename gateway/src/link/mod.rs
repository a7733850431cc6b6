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
//! Layout: [`phase`] is where the link stands with its stream (one state
//! enum); [`unanswered`] the chats awaiting their answer; `actor` the link's
//! loop and frame handling; `attach` finding the owner and opening streams.

mod actor;
mod attach;
mod phase;
#[cfg(test)]
mod scripted;
#[cfg(test)]
mod tests;
mod unanswered;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rooms_proto::host::gateway_frame;
use rooms_proto::{RoomId, UserId};
use rooms_server::Stopping;
use tokio::sync::mpsc;
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
const DISPATCH_ATTEMPTS: usize = 4;

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
    stopping: Stopping,
}

impl Links {
    pub fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        gateway_id: String,
        stopping: Stopping,
    ) -> Arc<Self> {
        Arc::new(Self {
            router,
            metrics,
            gateway_id,
            active: Mutex::default(),
            generation: AtomicU64::new(1),
            next_tag: AtomicU64::new(rand::random::<u64>() >> 1 | 1),
            stopping,
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
        tokio::spawn(actor::run(Arc::clone(self), room.clone(), generation, rx));
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

    /// A fresh tag for a chat sent upstream (never 0).
    fn tag(&self) -> u64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed).max(1)
    }
}
