//! Durable room state: history (events as serialized frames, by seq), user
//! names, and the room's epoch and latest seq.
//!
//! [`Store::Redis`] is the real backend; [`Store::Memory`] serves the embedded
//! zero-setup default and loses everything on exit.

mod memory;
mod redis;

use bytes::Bytes;
use rooms_proto::RoomId;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// How many recent events a loaded room keeps in memory (the `history` sent on join).
pub const RECENT_EVENTS: usize = 100;

/// One persisted event: its seq and the exact frame clients receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub frame: Bytes,
}

/// What a roomhost needs to serve a room after loading it.
#[derive(Debug, Clone, Default)]
pub struct LoadedRoom {
    /// Latest persisted seq (0 for a new room).
    pub seq: u64,
    /// This incarnation of the room's history; new when the store had none.
    pub epoch: String,
    pub names: Vec<(String, String)>,
    /// Up to [`RECENT_EVENTS`] latest events, oldest first.
    pub recent: Vec<Event>,
    /// Oldest seq still retained (0 when there is no history).
    pub first_seq: u64,
}

/// One group commit: events with consecutive seqs and the name changes among them.
#[derive(Debug, Default)]
pub struct Commit {
    pub events: Vec<Event>,
    pub names: Vec<(String, String)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.events.last().map(|e| e.seq)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
}

/// The storage backend of a roomhost.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// Loads a room, creating its epoch if the store has never seen it.
    pub async fn load(&self, room: &RoomId) -> Result<LoadedRoom, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.load(room)),
            Self::Redis(s) => s.load(room).await,
        }
    }

    /// Appends events and name changes atomically; trims history.
    pub async fn commit(&self, room: &RoomId, commit: &Commit) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.commit(room, commit);
                Ok(())
            }
            Self::Redis(s) => s.commit(room, commit).await,
        }
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.events_after(room, after, limit)),
            Self::Redis(s) => s.events_after(room, after, limit).await,
        }
    }

    /// The `limit` latest events with `seq < before`, oldest first.
    pub async fn events_before(
        &self,
        room: &RoomId,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.events_before(room, before, limit)),
            Self::Redis(s) => s.events_before(room, before, limit).await,
        }
    }

    /// Latest seq of a room without loading it (0 if unknown).
    pub async fn latest_seq(&self, room: &RoomId) -> Result<u64, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.latest_seq(room)),
            Self::Redis(s) => s.latest_seq(room).await,
        }
    }
}

/// A fresh random epoch: 16 hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
