//! Durable room state: history (events as serialized frames, by seq), user
//! names, the room's epoch and latest seq, and its ownership lease.
//!
//! The lease names the one roomhost allowed to write a room and carries a
//! fencing token that grows on every change of owner; every commit checks
//! both atomically, so a roomhost that lost its lease can never write.
//!
//! [`Store::Redis`] is the real backend; [`Store::Memory`] serves the embedded
//! zero-setup default and loses everything on exit.

mod memory;
mod redis;
mod redis_class;
mod redis_cmd;
mod redis_conn;
#[cfg(test)]
mod redis_tests;

use std::time::Duration;

use bytes::Bytes;
use rooms_proto::RoomId;

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, cluster_seeds};

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

/// A write to a room class's storage (values kept encoded as the class
/// runtime gives them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageWrite {
    Put(String, String),
    Delete(String),
    DeleteAll,
    /// The room ran the socket messages of this gateway up to this tag
    /// (kept beside the storage, so that a message sent again runs once).
    Ran(String, u64),
    /// Forget what the room ran of this gateway (gone for good).
    Forget(String),
    /// The room's alarm (name empty) or a named timer: when it fires (ms
    /// since the epoch), or deleted.
    Alarm(String, Option<u64>),
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
    #[error("the room's lease is no longer ours")]
    LeaseLost,
    /// The room's lease ran out by this process's clock before the store
    /// answered: like a timeout, the write may or may not have landed.
    #[error("the room's lease ran out before the store answered")]
    LeaseRanOut,
}

/// Who holds (or wants) a room: `ADDRESS#INSTANCE`, unique per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(pub String);

impl Owner {
    pub fn new(address: &str) -> Self {
        Self(format!("{address}#{:08x}", rand::random::<u32>()))
    }

    /// The advertise address part, where gateways reach this owner.
    pub fn address(&self) -> &str {
        self.0.split_once('#').map_or(self.0.as_str(), |(address, _)| address)
    }
}

/// A held lease: the fencing token every commit must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub fence: u64,
}

/// What taking a lease does when another roomhost holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfHeld {
    /// Report the holder.
    Report,
    /// Report the holder and claim the room: gateways cannot reach the
    /// holder, which hands the room over at its next renewal.
    Claim,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Ours(Lease),
    HeldBy(Owner),
}

/// What renewing a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, for another TTL.
    Ours,
    /// Still ours, but another roomhost claimed the room: gateways that
    /// cannot reach us were sent there, so the room should move to it.
    Claimed(Owner),
    /// No longer ours.
    Lost,
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
            Self::Memory(s) => Ok(s.answered().await.load(room)),
            Self::Redis(s) => s.load(room).await,
        }
    }

    /// Appends events and name changes atomically, if `lease` is still
    /// `me`'s; trims history. The commit renews the lease for `ttl` as a
    /// renewal would, and answers what a renewal would (never `Lost`: a
    /// lease no longer ours is [`StoreError::LeaseLost`]).
    pub async fn commit(
        &self,
        room: &RoomId,
        (me, lease): (&Owner, Lease),
        commit: &Commit,
        ttl: Duration,
    ) -> Result<Renewal, StoreError> {
        match self {
            Self::Memory(s) => s.answered().await.commit(room, (me, lease), commit, ttl),
            Self::Redis(s) => s.commit(room, (me, lease), commit, ttl).await,
        }
    }

    /// A room class's stored keys and values, all of them.
    pub async fn load_storage(&self, room: &RoomId) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.answered().await.load_storage(room)),
            Self::Redis(s) => s.load_storage(room).await,
        }
    }

    /// The last tag a class room ran per gateway ([`StorageWrite::Ran`]).
    pub async fn load_ran(&self, room: &RoomId) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.answered().await.load_ran(room)),
            Self::Redis(s) => s.load_ran(room).await,
        }
    }

    /// A class room's alarm and timers: name -> when (ms since the epoch).
    pub async fn load_alarms(&self, room: &RoomId) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.answered().await.load_alarms(room)),
            Self::Redis(s) => s.load_alarms(room).await,
        }
    }

    /// Sets (or, with None, removes) the room's entry in the alarm index.
    pub async fn index_alarm(&self, room: &RoomId, at: Option<u64>) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.answered().await.index_alarm(room, at);
                Ok(())
            }
            Self::Redis(s) => s.index_alarm(room, at).await,
        }
    }

    /// Lowers the room's entry in the alarm index to `at`, adding it if none.
    pub async fn lower_alarm(&self, room: &RoomId, at: u64) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.answered().await.lower_alarm(room, at);
                Ok(())
            }
            Self::Redis(s) => s.lower_alarm(room, at).await,
        }
    }

    /// Up to `limit` rooms with an alarm due at `now` (ms since the epoch),
    /// earliest first, with when it was due.
    pub async fn due_alarms(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<(RoomId, u64)>, StoreError> {
        let due = match self {
            Self::Memory(s) => s.answered().await.due_alarms(now, limit),
            Self::Redis(s) => s.due_alarms(now, limit).await?,
        };
        Ok(due
            .into_iter()
            .filter_map(|(name, at)| Some((RoomId::parse(&name).ok()?, at)))
            .collect())
    }

    /// Applies a room class's writes, in order and all or nothing, if
    /// `lease` is still `me`'s.
    pub async fn commit_storage(
        &self,
        room: &RoomId,
        me: &Owner,
        lease: Lease,
        writes: &[StorageWrite],
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.answered().await.commit_storage(room, me, lease, writes),
            Self::Redis(s) => s.commit_storage(room, me, lease, writes).await,
        }
    }

    /// Takes the room's lease for `ttl` if it is free (or already ours).
    /// With `claim`, a lease held by another roomhost is claimed for `ttl`:
    /// its holder learns it at its next renewal and hands the room over.
    pub async fn acquire(
        &self,
        room: &RoomId,
        me: &Owner,
        ttl: Duration,
        if_held: IfHeld,
    ) -> Result<Acquired, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.answered().await.acquire(room, me, ttl, if_held)),
            Self::Redis(s) => s.acquire(room, me, ttl, if_held).await,
        }
    }

    /// Renews many of `me`'s leases in one round trip where the store can
    /// (one script call on a single Redis; with Redis Cluster, whose rooms
    /// live on many slots, one call per room, all at once). The answers
    /// come in the order of `leases`.
    pub async fn renew_many(
        &self,
        leases: &[(RoomId, Lease)],
        me: &Owner,
        ttl: Duration,
    ) -> Result<Vec<Renewal>, StoreError> {
        match self {
            Self::Memory(s) => {
                let s = s.answered().await;
                Ok(leases.iter().map(|(room, lease)| s.renew(room, me, *lease, ttl)).collect())
            }
            Self::Redis(s) => s.renew_many(leases, me, ttl).await,
        }
    }

    /// Gives the lease up (handoff, hibernation) so the next owner need not wait.
    pub async fn release(&self, room: &RoomId, me: &Owner, lease: Lease) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => {
                s.answered().await.release(room, me, lease);
                Ok(())
            }
            Self::Redis(s) => s.release(room, me, lease).await,
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
            Self::Memory(s) => Ok(s.answered().await.events_after(room, after, limit)),
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
            Self::Memory(s) => Ok(s.answered().await.events_before(room, before, limit)),
            Self::Redis(s) => s.events_before(room, before, limit).await,
        }
    }

    /// Latest seq of a room without loading it (0 if unknown).
    pub async fn latest_seq(&self, room: &RoomId) -> Result<u64, StoreError> {
        match self {
            Self::Memory(s) => Ok(s.answered().await.latest_seq(room)),
            Self::Redis(s) => s.latest_seq(room).await,
        }
    }
}

/// A fresh random epoch: 16 hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
