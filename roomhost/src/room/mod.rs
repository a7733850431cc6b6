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
//!
//! The room owns its [`Slot`] in the registry's directory: when the actor
//! stops, the slot takes it out (never a successor started meanwhile), and
//! what was still queued goes back to the registry as [`Ended`] says.
//!
//! Layout: this file holds the room's state and the types around it;
//! `lifecycle` the turn loop, lease and moves (renewed by the roomhost's
//! `leases` task); `commands` one handler per command and client frame;
//! `log` seqs, names and history; `roster` `welcome`, and the present users
//! as gateways that write it themselves keep them; `absentees` users no
//! gateway brought back after a move; `commit` group commit and the output
//! gate; `fanout` sending to gateways. Each submodule adds
//! methods to [`Room`] and sees its state; `tests` drives whole rooms over
//! the memory store.

mod absentees;
mod commands;
mod commit;
mod fanout;
mod lifecycle;
mod log;
mod roster;
#[cfg(test)]
mod tests;

use commit::{Origin, Output, Refused, Staged, Write, Writer};
use lifecycle::{Drain, MoveState};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rooms_proto::client::{ErrorCode, validate_name, validate_text};
use rooms_proto::host::{
    Attached, Broadcast, CloseConn, Direct, HandshakeReply, HostFrame, Moved, Moving, Roster,
    gateway_frame, host_frame,
};
use rooms_proto::server::{self, UserEntry, close_code};
use rooms_proto::{RoomId, UserId};
use rooms_server::{Inbox, Slot};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::dedup::Dedup;
use crate::leases::Renewer;
use crate::metrics::Metrics;
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
/// Events per `history` frame when a resume replays more than a page.
pub const REPLAY_PAGE: usize = 100;
/// Longest wait for gateways to answer `Moving` during a handoff.
pub const MOVE_DRAIN: Duration = Duration::from_secs(2);

pub type GatewayId = u64;
pub type ConnId = u64;
/// Frames to one gateway's room stream (the stream wraps them in `Ok`).
/// Boxed: a queue allocates its slots 32 at a time, and 80-byte frames
/// made every gateway of every active room hold 2.5 KB of them.
pub type GatewayTx = mpsc::Sender<Box<HostFrame>>;

/// A gateway's stream in a room.
pub(crate) struct GatewayStream {
    tx: GatewayTx,
    /// It is kept up to date with the room's roster and writes its
    /// connections' `welcome` itself.
    writes_welcome: bool,
}

/// What a room actor is asked to do.
pub enum Command {
    /// A gateway opened a room stream; frames for it go to `tx`. After a
    /// move, `resume_after` asks for the persisted events it missed.
    Attach {
        gateway: GatewayId,
        /// The gateway process's name (`Open.gateway_id`).
        name: Arc<str>,
        /// Class rooms: sockets the stream re-announces next.
        rejoins: u32,
        tx: GatewayTx,
        resume_after: Option<u64>,
        /// The gateway writes its connections' `welcome` itself, from the
        /// room's roster (`Open.writes_welcome`).
        writes_welcome: bool,
        /// Users the gateway's clients were told are present
        /// (`Open.known_users`).
        known_users: Vec<String>,
    },
    /// The gateway's stream ended: its connections left.
    Detach {
        gateway: GatewayId,
    },
    /// A frame from a gateway's stream. Not boxed: the largest variant by
    /// far, but a room's queue holds its commands boxed (`Inbox`), so it
    /// sizes no queue slot.
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
    /// Hand the room over to `target`.
    Handoff {
        target: Moved,
    },
    /// A class room's alarm is due (the alarm index said so); a room in
    /// memory fires it on its own, one that was not starts for it.
    Wake,
    /// An operator calls a method of the room's class.
    Invoke {
        method: String,
        args_json: String,
        reply: oneshot::Sender<Result<String, RoomError>>,
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
    /// The call makes no sense here (a chat room, or not a public method).
    #[error("{0}")]
    Refused(String),
    /// The class's method threw.
    #[error("{0}")]
    Threw(String),
    /// The room is served by another roomhost.
    #[error("room moved to {}", .0.address.as_deref().unwrap_or("an unknown roomhost"))]
    Moved(Moved),
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
pub type RoomHandle = rooms_server::Handle<Command>;
/// A room actor's place in the registry.
pub type RoomSlot = Slot<RoomId, Command>;

/// How a room actor ended.
pub enum Ended {
    /// Stopped or moved: whatever was queued has been answered.
    Done,
    /// Hibernated: these commands arrived meanwhile and go to a fresh actor,
    /// in order.
    Hibernated(Vec<Command>),
}

pub(crate) struct Room {
    id: RoomId,
    /// Removes the room from the registry when it stops.
    slot: RoomSlot,
    store: Store,
    settings: Arc<RoomSettings>,
    metrics: Arc<Metrics>,
    seq: u64,
    epoch: String,
    /// Oldest seq the store still retains (0: no history yet).
    first_seq: u64,
    names: HashMap<String, String>,
    recent: VecDeque<Event>,
    dedup: Dedup,
    gateways: HashMap<GatewayId, GatewayStream>,
    /// Each connection's user: the same allocation as the user's key in
    /// `presence`, however many connections it has.
    conns: HashMap<(GatewayId, ConnId), Arc<str>>,
    /// Connections per present user: `join` on 0 -> 1, `leave` on 1 -> 0.
    presence: HashMap<Arc<str>, u32>,
    staged: Staged,
    /// The last commit failed and may or may not have landed: reload before
    /// the next write so seqs continue from what the store really holds.
    stale: bool,
    /// Reloading failed in this turn (its other writes are refused at once).
    reload_failed: bool,
    lease: Lease,
    /// The lease's renewals (the roomhost's, batched); they tell the actor
    /// when the lease looks lost, was claimed, or could not be confirmed.
    renewer: Renewer,
    /// A commit found the lease gone: re-check it before anything else.
    lease_suspect: bool,
    moving: Option<MoveState>,
    /// Connections and gateway streams last added to the process gauges.
    reported: (i64, i64),
    /// The last commit was large: the next turn lingers for more.
    busy: bool,
    /// When the room started here.
    started: Instant,
    /// Users a re-attaching gateway knew, while they are awaited after a
    /// move (and those told gone); None almost always.
    absentees: Option<Box<absentees::Absentees>>,
}

impl Room {
    pub(crate) fn new(
        slot: RoomSlot,
        loaded: LoadedRoom,
        store: Store,
        settings: Arc<RoomSettings>,
        metrics: Arc<Metrics>,
        (lease, renewer): (Lease, Renewer),
    ) -> Self {
        let id = slot.key().clone();
        let mut room = Self {
            id,
            slot,
            store,
            settings,
            metrics,
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
            renewer,
            lease_suspect: false,
            moving: None,
            reported: (0, 0),
            busy: false,
            started: Instant::now(),
            absentees: None,
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
}

impl Drop for Room {
    fn drop(&mut self) {
        let metrics = &self.metrics;
        metrics.connections.dec_by(self.reported.0);
        metrics.gateway_streams.dec_by(self.reported.1);
    }
}

/// Answers a command for a room this process no longer serves.
pub(crate) fn redirect(cmd: Command, target: &Moved, seq: u64) {
    match cmd {
        Command::Attach { tx, .. } => {
            let kind = host_frame::Kind::Moved(target.clone());
            let _ = tx.try_send(Box::new(HostFrame { kind: Some(kind), room_seq: seq }));
        }
        Command::Publish { reply, .. } => {
            let _ = reply.send(Err(RoomError::Moved(target.clone())));
        }
        Command::Info { reply } => {
            let _ = reply.send(RoomInfo { connections: 0, users: 0, seq });
        }
        Command::Kick { reply, .. } => {
            let _ = reply.send(0);
        }
        Command::Invoke { reply, .. } => {
            let _ = reply.send(Err(RoomError::Moved(target.clone())));
        }
        Command::Detach { .. }
        | Command::Frame { .. }
        | Command::Handoff { .. }
        | Command::Wake => {}
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
