//! The active rooms of one roomhost: finds or starts the actor of a room
//! (which first takes the room's lease), bounds how many are in memory, hands
//! rooms over when the ring moves them elsewhere, and on shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use rooms_cluster::Ring;
use rooms_proto::RoomId;
use rooms_proto::host::{Moved, RoomKind};
use rooms_server::directory::Refused;
use rooms_server::{Directory, Inbox};
use tokio::sync::{mpsc, watch};

use crate::class_room::{ClassRoom, ClassSetup};
use crate::leases::Leases;
use crate::metrics::Metrics;
use crate::room::{
    COMMAND_QUEUE, Command, Ended, Room, RoomHandle, RoomSettings, RoomSlot, redirect,
};
use crate::store::{Acquired, IfHeld, Lease, Store};

/// Attempts to load a room from the store before giving up on it.
const LOAD_ATTEMPTS: u32 = 3;
const LOAD_BACKOFF: Duration = Duration::from_millis(200);
/// How often a fallback owner polls a lease that another (unreachable)
/// roomhost still holds.
const LEASE_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("this roomhost already holds {0} active rooms")]
    Full(usize),
    #[error("room {0} is unavailable")]
    Unavailable(RoomId),
    #[error("roomhost is shutting down")]
    ShuttingDown,
}

/// What a new room actor does when another roomhost holds the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseWait {
    /// Answer where the room is served (the holder).
    Redirect,
    /// The caller could not reach the room's owner: claim the lease (a live
    /// holder hands the room over at its next renewal, a dead one's lease
    /// expires) and wait for it, for at most a lease TTL and a second.
    Claim,
}

impl LeaseWait {
    /// From an `Open`'s `fallback` flag.
    pub fn fallback(fallback: bool) -> Self {
        if fallback { Self::Claim } else { Self::Redirect }
    }
}

pub struct Registry {
    rooms: Arc<Directory<RoomId, Command>>,
    /// Room classes, in the order configured: the first whose pattern
    /// matches a room runs it; other rooms are chat rooms.
    classes: Vec<Arc<ClassSetup>>,
    store: Store,
    settings: Arc<RoomSettings>,
    /// The membership ring, when this roomhost knows it (`--roomhosts`).
    ring: Option<watch::Receiver<Arc<Ring>>>,
    /// Held by every room actor; `shutdown` waits until all are dropped.
    done_tx: Mutex<Option<mpsc::Sender<()>>>,
    done_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
    metrics: Arc<Metrics>,
    /// Every room's lease, renewed together.
    leases: Arc<Leases>,
}

impl Registry {
    pub fn new(
        store: Store,
        settings: RoomSettings,
        max_rooms: usize,
        ring: Option<watch::Receiver<Arc<Ring>>>,
        metrics: Arc<Metrics>,
        classes: Vec<Arc<ClassSetup>>,
    ) -> Arc<Self> {
        let (done_tx, done_rx) = mpsc::channel(1);
        let gauge = metrics.rooms_active.clone();
        let rooms = Directory::new(COMMAND_QUEUE, max_rooms, move |n| {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        });
        let leases = Leases::start(store.clone(), settings.owner.clone(), settings.lease_ttl);
        Arc::new(Self {
            rooms,
            classes,
            leases,
            store,
            settings: Arc::new(settings),
            ring,
            done_tx: Mutex::new(Some(done_tx)),
            done_rx: tokio::sync::Mutex::new(done_rx),
            metrics,
        })
    }

    /// The class a room runs, if any.
    fn class_of(&self, room: &RoomId) -> Option<&Arc<ClassSetup>> {
        self.classes.iter().find(|class| class.bundle.spec.matches(room.as_str()))
    }

    /// Whether `room` runs a room class here.
    pub fn runs_class(&self, room: &RoomId) -> bool {
        self.class_of(room).is_some()
    }

    /// What kind of room `room` is here, as its streams announce it.
    pub fn kind_of(&self, room: &RoomId) -> RoomKind {
        match self.class_of(room) {
            Some(class) => RoomKind {
                class: Some(class.bundle.spec.class.clone()),
                bundle: class.bundle.hash.clone(),
            },
            None => RoomKind::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This roomhost's advertise address.
    pub fn address(&self) -> &str {
        self.settings.owner.address()
    }

    pub fn is_closed(&self) -> bool {
        self.rooms.is_closed()
    }

    /// Where the ring places `room`; None without a ring (a lone roomhost).
    pub fn ring_owner(&self, room: &RoomId) -> Option<String> {
        let ring = self.ring.as_ref()?.borrow().clone();
        ring.owner(room).map(str::to_owned)
    }

    /// Where `room` should go if this roomhost leaves: the ring without it.
    pub fn successor(&self, room: &RoomId) -> Moved {
        let Some(ring) = self.ring.as_ref().map(|r| r.borrow().clone()) else {
            return Moved::unknown();
        };
        let me = [self.address().to_owned()];
        ring.owner_without(room, &me).map_or_else(Moved::unknown, Moved::to)
    }

    /// The handle of an active room, without starting it.
    pub fn get(&self, room: &RoomId) -> Option<RoomHandle> {
        self.rooms.get(room)
    }

    /// Delivers a command to the room's actor, starting one if needed (it
    /// takes the lease as `wait` says, then loads the room).
    pub async fn dispatch(
        self: &Arc<Self>,
        room: &RoomId,
        cmd: Command,
        wait: LeaseWait,
    ) -> Result<RoomHandle, RegistryError> {
        let done = self.done_tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(done) = done else { return Err(RegistryError::ShuttingDown) };
        let start = |slot: RoomSlot, rx| self.spawn_room(slot, rx, done.clone(), wait);
        self.rooms.dispatch(room, cmd, start).await.map_err(|refused| match refused {
            Refused::Full(limit) => RegistryError::Full(limit),
            Refused::Closed => RegistryError::ShuttingDown,
            Refused::Unavailable => RegistryError::Unavailable(room.clone()),
        })
    }

    /// Spawns a room actor (a plain function: the actor's future may
    /// dispatch again, which an async caller's type cannot contain).
    fn spawn_room(
        self: &Arc<Self>,
        slot: RoomSlot,
        rx: Inbox<Command>,
        done: mpsc::Sender<()>,
        wait: LeaseWait,
    ) {
        tokio::spawn(Arc::clone(self).start_room(slot, rx, done, wait));
    }

    /// A new room actor: takes the lease, loads the room, runs it, and
    /// hands a hibernated room's leftover commands to its successor.
    async fn start_room(
        self: Arc<Self>,
        slot: RoomSlot,
        mut rx: Inbox<Command>,
        done: mpsc::Sender<()>,
        wait: LeaseWait,
    ) {
        let room = slot.key().clone();
        let (lease, lease_until) = match self.take_lease(&room, wait).await {
            Ok(taken) => taken,
            Err(holder) => {
                // Someone else serves the room: send everyone there.
                slot.vacate();
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    redirect(cmd, &holder, 0);
                }
                return;
            }
        };
        if let Some(class) = self.class_of(&room).cloned() {
            self.metrics.rooms_loaded.inc();
            let (store, settings, metrics) =
                (self.store.clone(), Arc::clone(&self.settings), Arc::clone(&self.metrics));
            let renewer = self.leases.watch(room.clone(), (lease, lease_until));
            let actor = ClassRoom::new(slot, store, settings, metrics, class, (lease, renewer));
            let life = actor.run(rx);
            return self.live(room, life, done);
        }
        let mut attempt = 0;
        let loaded = loop {
            attempt += 1;
            match self.store.load(&room).await {
                Ok(loaded) => break loaded,
                Err(error) if attempt < LOAD_ATTEMPTS => {
                    tracing::warn!(room.id = %room, %error, attempt, "loading room failed; retrying");
                    tokio::time::sleep(LOAD_BACKOFF * attempt).await;
                }
                Err(error) => {
                    tracing::error!(room.id = %room, %error, "loading room failed; refusing its commands");
                    let _ = self.store.release(&room, &self.settings.owner, lease).await;
                    slot.vacate();
                    // Dropping the queued commands drops their reply channels and
                    // gateway senders: callers see the room as unavailable.
                    rx.close();
                    while rx.try_recv().is_ok() {}
                    return;
                }
            }
        };
        self.metrics.rooms_loaded.inc();
        let (store, settings, metrics) =
            (self.store.clone(), Arc::clone(&self.settings), Arc::clone(&self.metrics));
        let renewer = self.leases.watch(room.clone(), (lease, lease_until));
        let room_actor = Room::new(slot, loaded, store, settings, metrics, (lease, renewer));
        self.live(room, room_actor.run(rx), done);
    }

    /// Runs a started room as a task of its own, then hands what it left to
    /// its successor. The starting task (its lease and load steps) ends
    /// here: an active room costs only its own life's state.
    fn live(
        self: Arc<Self>,
        room: RoomId,
        life: impl Future<Output = Ended> + Send + 'static,
        done: mpsc::Sender<()>,
    ) {
        // `then`, not an `async` block: one awaiting `life` would keep it
        // twice in its state.
        tokio::spawn(life.then(move |ended| async move {
            let _done = done;
            self.after(&room, ended).await;
        }));
    }

    /// A hibernated room's leftover commands go to its successor.
    async fn after(self: &Arc<Self>, room: &RoomId, ended: Ended) {
        if let Ended::Hibernated(leftover) = ended {
            for cmd in leftover {
                if let Err(error) = self.dispatch(room, cmd, LeaseWait::Redirect).await {
                    tracing::warn!(room.id = %room, %error, "could not hand a command to the reloaded room");
                }
            }
        }
    }

    /// Takes the room's lease, with the moment until which it surely holds.
    /// If another roomhost holds it: with `fallback` (a gateway could not
    /// reach that holder) claim it — a live holder hands the room over at
    /// its next renewal, a dead one's lease expires — and wait, for at most
    /// a lease TTL and a second; else, or then, answer the holder's address.
    async fn take_lease(
        &self,
        room: &RoomId,
        wait: LeaseWait,
    ) -> Result<(Lease, tokio::time::Instant), Moved> {
        let me = &self.settings.owner;
        let ttl = self.settings.lease_ttl;
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
        let mut failures = 0;
        loop {
            let started = tokio::time::Instant::now();
            let if_held = match wait {
                LeaseWait::Redirect => IfHeld::Report,
                LeaseWait::Claim => IfHeld::Claim,
            };
            match self.store.acquire(room, me, ttl, if_held).await {
                Ok(Acquired::Ours(lease)) => return Ok((lease, started + ttl)),
                Ok(Acquired::HeldBy(holder)) => {
                    if wait == LeaseWait::Redirect || tokio::time::Instant::now() > deadline {
                        return Err(Moved::to(holder.address()));
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(room.id = %room, %error, "taking the lease failed");
                    if failures >= LOAD_ATTEMPTS {
                        return Err(Moved::unknown());
                    }
                }
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    pub fn active_rooms(&self) -> Vec<RoomId> {
        self.rooms.all().into_iter().map(|(room, _)| room).collect()
    }

    pub fn active_count(&self) -> usize {
        self.rooms.len()
    }

    /// Hands over every active room the ring now places elsewhere.
    pub async fn rebalance(&self, ring: &Ring) {
        for (room, handle) in self.rooms.all() {
            match ring.owner(&room) {
                Some(owner) if owner != self.address() => {
                    let _ = handle.send(Command::Handoff { target: Moved::to(owner) }).await;
                }
                _ => {}
            }
        }
    }

    /// Stops taking rooms, hands every room to its successor on the ring,
    /// and waits for them up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let handles = self.rooms.close();
        self.done_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        for (room, handle) in handles {
            let target = self.successor(&room);
            let _ = handle.send(Command::Handoff { target }).await;
        }
        let mut done = self.done_rx.lock().await;
        if tokio::time::timeout(grace, done.recv()).await.is_err() {
            tracing::warn!("rooms did not stop within {grace:?}");
        }
    }
}
