//! The active rooms of one roomhost: finds or starts the actor of a room,
//! bounds how many are in memory, and stops them all on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rooms_proto::RoomId;
use tokio::sync::mpsc;

use crate::room::{COMMAND_QUEUE, Command, Room, RoomHandle, RoomSettings};
use crate::store::Store;

/// Attempts to load a room from the store before giving up on it.
const LOAD_ATTEMPTS: u32 = 3;
const LOAD_BACKOFF: Duration = Duration::from_millis(200);
/// Attempts to deliver one command when the actor it found was stopping.
const DISPATCH_ATTEMPTS: usize = 4;

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
    generation: AtomicU64,
    /// Held by every room actor; `shutdown` waits until all are dropped.
    done_tx: Mutex<Option<mpsc::Sender<()>>>,
    done_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

struct Rooms {
    active: HashMap<RoomId, RoomHandle>,
    closed: bool,
}

impl Registry {
    pub fn new(store: Store, settings: RoomSettings, max_rooms: usize) -> Arc<Self> {
        let (done_tx, done_rx) = mpsc::channel(1);
        Arc::new(Self {
            rooms: Mutex::new(Rooms { active: HashMap::new(), closed: false }),
            store,
            settings: Arc::new(settings),
            max_rooms,
            generation: AtomicU64::new(1),
            done_tx: Mutex::new(Some(done_tx)),
            done_rx: tokio::sync::Mutex::new(done_rx),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle of an active room, without starting it.
    pub fn get(&self, room: &RoomId) -> Option<RoomHandle> {
        self.lock().active.get(room).cloned()
    }

    /// The handle of a room, starting its actor (which loads it) if needed.
    fn handle(self: &Arc<Self>, room: &RoomId) -> Result<RoomHandle, RegistryError> {
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
        drop(rooms);
        tokio::spawn(Arc::clone(self).start_room(room.clone(), generation, rx, done));
        Ok(handle)
    }

    async fn start_room(
        self: Arc<Self>,
        room: RoomId,
        generation: u64,
        mut rx: mpsc::Receiver<Command>,
        _done: mpsc::Sender<()>,
    ) {
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
                    self.remove_if(&room, generation);
                    // Dropping the queued commands drops their reply channels and
                    // gateway senders: callers see the room as unavailable.
                    rx.close();
                    while rx.try_recv().is_ok() {}
                    return;
                }
            }
        };
        let settings = Arc::clone(&self.settings);
        let store = self.store.clone();
        Room::new(room, generation, loaded, store, settings, self).run(rx).await;
    }

    /// Delivers a command to the room's actor, starting one if needed.
    pub async fn dispatch(
        self: &Arc<Self>,
        room: &RoomId,
        mut cmd: Command,
    ) -> Result<RoomHandle, RegistryError> {
        for _ in 0..DISPATCH_ATTEMPTS {
            let handle = self.handle(room)?;
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
        }
    }

    pub fn active_rooms(&self) -> Vec<RoomId> {
        self.lock().active.keys().cloned().collect()
    }

    pub fn active_count(&self) -> usize {
        self.lock().active.len()
    }

    /// Stops taking rooms, asks every actor to flush and stop, and waits for
    /// them up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let handles: Vec<RoomHandle> = {
            let mut rooms = self.lock();
            rooms.closed = true;
            rooms.active.values().cloned().collect()
        };
        self.done_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        for handle in handles {
            let _ = handle.tx.send(Command::Shutdown).await;
        }
        let mut done = self.done_rx.lock().await;
        if tokio::time::timeout(grace, done.recv()).await.is_err() {
            tracing::warn!("rooms did not stop within {grace:?}");
        }
    }
}
