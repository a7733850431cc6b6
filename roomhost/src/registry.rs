//! The active rooms of one roomhost: finds or starts the actor of a room
//! (which first takes the room's lease), bounds how many are in memory, hands
//! rooms over when the ring moves them elsewhere, and on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rooms_cluster::Ring;
use rooms_proto::RoomId;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::room::{COMMAND_QUEUE, Command, Room, RoomHandle, RoomSettings, redirect};
use crate::store::{Acquired, Lease, Store};

/// Attempts to load a room from the store before giving up on it.
const LOAD_ATTEMPTS: u32 = 3;
const LOAD_BACKOFF: Duration = Duration::from_millis(200);
/// Attempts to deliver one command when the actor it found was stopping.
const DISPATCH_ATTEMPTS: usize = 4;
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

pub struct Registry {
    rooms: Mutex<Rooms>,
    store: Store,
    settings: Arc<RoomSettings>,
    max_rooms: usize,
    /// The membership ring, when this roomhost knows it (`--roomhosts`).
    ring: Option<watch::Receiver<Arc<Ring>>>,
    generation: AtomicU64,
    /// Held by every room actor; `shutdown` waits until all are dropped.
    done_tx: Mutex<Option<mpsc::Sender<()>>>,
    done_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
    metrics: Arc<Metrics>,
}

struct Rooms {
    active: HashMap<RoomId, RoomHandle>,
    closed: bool,
}

impl Registry {
    pub fn new(
        store: Store,
        settings: RoomSettings,
        max_rooms: usize,
        ring: Option<watch::Receiver<Arc<Ring>>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let (done_tx, done_rx) = mpsc::channel(1);
        Arc::new(Self {
            rooms: Mutex::new(Rooms { active: HashMap::new(), closed: false }),
            store,
            settings: Arc::new(settings),
            max_rooms,
            ring,
            generation: AtomicU64::new(1),
            done_tx: Mutex::new(Some(done_tx)),
            done_rx: tokio::sync::Mutex::new(done_rx),
            metrics,
        })
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Where the ring places `room`; None without a ring (a lone roomhost).
    pub fn ring_owner(&self, room: &RoomId) -> Option<String> {
        let ring = self.ring.as_ref()?.borrow().clone();
        ring.owner(room).map(str::to_owned)
    }

    /// Where `room` should go if this roomhost leaves: the ring without it.
    pub fn successor(&self, room: &RoomId) -> String {
        let Some(ring) = self.ring.as_ref().map(|r| r.borrow().clone()) else {
            return String::new();
        };
        let others = ring.members().iter().filter(|m| m.as_str() != self.address()).cloned();
        Ring::new(others, 0).owner(room).unwrap_or_default().to_owned()
    }

    /// The handle of an active room, without starting it.
    pub fn get(&self, room: &RoomId) -> Option<RoomHandle> {
        self.lock().active.get(room).cloned()
    }

    /// The handle of a room, starting its actor (which takes the lease and
    /// loads the room) if needed. `fallback`: the caller could not reach the
    /// ring owner, so wait out a lease held by another roomhost.
    fn handle(
        self: &Arc<Self>,
        room: &RoomId,
        fallback: bool,
    ) -> Result<RoomHandle, RegistryError> {
        let mut rooms = self.lock();
        if rooms.closed {
            return Err(RegistryError::ShuttingDown);
        }
        if let Some(handle) = rooms.active.get(room) {
            return Ok(handle.clone());
        }
        if rooms.active.len() >= self.max_rooms {
            return Err(RegistryError::Full(self.max_rooms));
        }
        let done = self
            .done_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(RegistryError::ShuttingDown)?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let handle = RoomHandle { tx, generation };
        rooms.active.insert(room.clone(), handle.clone());
        self.metrics.rooms_active.set(rooms.active.len() as i64);
        drop(rooms);
        tokio::spawn(Arc::clone(self).start_room(room.clone(), generation, rx, done, fallback));
        Ok(handle)
    }

    async fn start_room(
        self: Arc<Self>,
        room: RoomId,
        generation: u64,
        mut rx: mpsc::Receiver<Command>,
        _done: mpsc::Sender<()>,
        fallback: bool,
    ) {
        let (lease, lease_until) = match self.take_lease(&room, fallback).await {
            Ok(taken) => taken,
            Err(holder) => {
                // Someone else serves the room: send everyone there.
                self.remove_if(&room, generation);
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    redirect(cmd, &holder, 0);
                }
                return;
            }
        };
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
                    self.remove_if(&room, generation);
                    // Dropping the queued commands drops their reply channels and
                    // gateway senders: callers see the room as unavailable.
                    rx.close();
                    while rx.try_recv().is_ok() {}
                    return;
                }
            }
        };
        self.metrics.rooms_loaded.inc();
        let settings = Arc::clone(&self.settings);
        let store = self.store.clone();
        Room::new(room, generation, loaded, store, settings, self, (lease, lease_until))
            .run(rx)
            .await;
    }

    /// Takes the room's lease, with the moment until which it surely holds.
    /// If another roomhost holds it: with `fallback` (a gateway could not
    /// reach that holder) claim it — a live holder hands the room over at
    /// its next renewal, a dead one's lease expires — and wait, for at most
    /// a lease TTL and a second; else, or then, answer the holder's address.
    async fn take_lease(
        &self,
        room: &RoomId,
        fallback: bool,
    ) -> Result<(Lease, tokio::time::Instant), String> {
        let me = &self.settings.owner;
        let ttl = self.settings.lease_ttl;
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
        let mut failures = 0;
        loop {
            let started = tokio::time::Instant::now();
            match self.store.acquire(room, me, ttl, fallback).await {
                Ok(Acquired::Ours(lease)) => return Ok((lease, started + ttl)),
                Ok(Acquired::HeldBy(holder)) => {
                    if !fallback || tokio::time::Instant::now() > deadline {
                        return Err(holder.address().to_owned());
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(room.id = %room, %error, "taking the lease failed");
                    if failures >= LOAD_ATTEMPTS {
                        return Err(String::new());
                    }
                }
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Delivers a command to the room's actor, starting one if needed.
    pub async fn dispatch(
        self: &Arc<Self>,
        room: &RoomId,
        mut cmd: Command,
        fallback: bool,
    ) -> Result<RoomHandle, RegistryError> {
        for _ in 0..DISPATCH_ATTEMPTS {
            let handle = self.handle(room, fallback)?;
            match handle.tx.send(cmd).await {
                Ok(()) => return Ok(handle),
                Err(mpsc::error::SendError(returned)) => {
                    // That actor stopped between lookup and send.
                    self.remove_if(room, handle.generation);
                    cmd = returned;
                }
            }
        }
        Err(RegistryError::Unavailable(room.clone()))
    }

    /// Forgets a room's actor, unless a newer one already replaced it.
    pub fn remove_if(&self, room: &RoomId, generation: u64) {
        let mut rooms = self.lock();
        if rooms.active.get(room).is_some_and(|h| h.generation == generation) {
            rooms.active.remove(room);
            self.metrics.rooms_active.set(rooms.active.len() as i64);
        }
    }

    pub fn active_rooms(&self) -> Vec<RoomId> {
        self.lock().active.keys().cloned().collect()
    }

    pub fn active_count(&self) -> usize {
        self.lock().active.len()
    }

    /// Hands over every active room the ring now places elsewhere.
    pub async fn rebalance(&self, ring: &Ring) {
        let handles: Vec<(RoomId, RoomHandle)> =
            self.lock().active.iter().map(|(r, h)| (r.clone(), h.clone())).collect();
        for (room, handle) in handles {
            match ring.owner(&room) {
                Some(owner) if owner != self.address() => {
                    let _ = handle.tx.send(Command::Handoff { target: owner.to_owned() }).await;
                }
                _ => {}
            }
        }
    }

    /// Stops taking rooms, hands every room to its successor on the ring,
    /// and waits for them up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let handles: Vec<(RoomId, RoomHandle)> = {
            let mut rooms = self.lock();
            rooms.closed = true;
            rooms.active.iter().map(|(r, h)| (r.clone(), h.clone())).collect()
        };
        self.done_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        for (room, handle) in handles {
            let target = self.successor(&room);
            let _ = handle.tx.send(Command::Handoff { target }).await;
        }
        let mut done = self.done_rx.lock().await;
        if tokio::time::timeout(grace, done.recv()).await.is_err() {
            tracing::warn!("rooms did not stop within {grace:?}");
        }
    }
}
