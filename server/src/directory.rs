//! The directory of a process's actors, one per key: a roomhost's rooms,
//! a gateway's room links.
//!
//! Each actor is a task fed by a bounded channel. The directory finds an
//! actor's [`Handle`] or starts a new actor, handing it a [`Slot`]: the
//! actor owns its slot, and the slot takes the actor out of the directory
//! when it is vacated or dropped — but only if the entry is still that
//! actor's. Generations tell them apart: an actor that stops while its
//! successor has already started never removes the successor.
//!
//! A command sent to an actor that stopped between lookup and send comes
//! back; [`Directory::dispatch`] then forgets that actor and starts
//! another, a bounded number of times.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::mpsc;

/// Attempts to deliver one command when the actor found was stopping.
const DISPATCH_ATTEMPTS: usize = 4;

/// The sending side of one actor.
pub struct Handle<C> {
    tx: mpsc::Sender<Box<C>>,
    generation: u64,
}

/// An actor's queue, as the actor reads it. Commands travel boxed: a queue
/// allocates its slots 32 at a time, and slots the size of the largest
/// command (up to 160 bytes) made every actor hold kilobytes of them, idle
/// or not — one per room on a roomhost, one per room link on a gateway.
pub struct Inbox<C>(mpsc::Receiver<Box<C>>);

impl<C> Inbox<C> {
    /// The next command; None once every handle is gone.
    pub async fn recv(&mut self) -> Option<C> {
        self.0.recv().await.map(|cmd| *cmd)
    }

    /// A command already queued, if any.
    pub fn try_recv(&mut self) -> Result<C, mpsc::error::TryRecvError> {
        self.0.try_recv().map(|cmd| *cmd)
    }

    /// Refuses further commands; those queued can still be read.
    pub fn close(&mut self) {
        self.0.close();
    }
}

impl<C> Clone for Handle<C> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), generation: self.generation }
    }
}

impl<C> Handle<C> {
    /// Queues a command, waiting while the actor's queue is full; the
    /// command comes back if the actor has stopped.
    pub async fn send(&self, cmd: C) -> Result<(), C> {
        self.tx.send(Box::new(cmd)).await.map_err(|mpsc::error::SendError(cmd)| *cmd)
    }

    /// Which actor of its key this is.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Why no actor took a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The directory holds its limit of actors.
    Full(usize),
    /// The directory is closed: the process is stopping.
    Closed,
    /// Every actor found stopped before taking the command.
    Unavailable,
}

/// An actor's place in the directory, owned by the actor.
pub struct Slot<K: Eq + Hash, C> {
    directory: Weak<Directory<K, C>>,
    key: K,
    generation: u64,
}

impl<K: Eq + Hash, C> Slot<K, C> {
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Takes the actor out of the directory now (before it answers what is
    /// left in its queue, so that new commands start a successor).
    pub fn vacate(&self) {
        if let Some(directory) = self.directory.upgrade() {
            directory.remove(&self.key, self.generation);
        }
    }
}

impl<K: Eq + Hash, C> Drop for Slot<K, C> {
    fn drop(&mut self) {
        self.vacate();
    }
}

struct Entries<K, C> {
    active: HashMap<K, Handle<C>>,
    closed: bool,
}

/// Called with the number of actors whenever it changes (for a gauge).
type OnCount = Box<dyn Fn(usize) + Send + Sync>;

pub struct Directory<K, C> {
    entries: Mutex<Entries<K, C>>,
    next_generation: AtomicU64,
    /// Capacity of each actor's command channel.
    queue: usize,
    /// Most actors at once.
    limit: usize,
    on_count: OnCount,
}

impl<K: Eq + Hash, C> Directory<K, C> {
    fn lock(&self) -> MutexGuard<'_, Entries<K, C>> {
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the actor of `key` if it is still generation `generation`.
    fn remove(&self, key: &K, generation: u64) {
        let mut entries = self.lock();
        if entries.active.get(key).is_some_and(|h| h.generation == generation) {
            entries.active.remove(key);
            (self.on_count)(entries.active.len());
        }
    }
}

impl<K: Eq + Hash + Clone, C> Directory<K, C> {
    /// A directory of at most `limit` actors, each fed by a channel of
    /// `queue` commands; `on_count` hears the number of actors.
    pub fn new(
        queue: usize,
        limit: usize,
        on_count: impl Fn(usize) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(Entries { active: HashMap::new(), closed: false }),
            next_generation: AtomicU64::new(1),
            queue,
            limit,
            on_count: Box::new(on_count),
        })
    }

    /// The handle of a running actor, without starting one.
    pub fn get(&self, key: &K) -> Option<Handle<C>> {
        self.lock().active.get(key).cloned()
    }

    /// The actor of `key`, started with `start` (given its slot and its
    /// queue) if there is none.
    pub fn get_or_start(
        self: &Arc<Self>,
        key: &K,
        start: impl FnOnce(Slot<K, C>, Inbox<C>),
    ) -> Result<Handle<C>, Refused> {
        let mut entries = self.lock();
        if entries.closed {
            return Err(Refused::Closed);
        }
        if let Some(handle) = entries.active.get(key) {
            return Ok(handle.clone());
        }
        if entries.active.len() >= self.limit {
            return Err(Refused::Full(self.limit));
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let handle = Handle { tx, generation };
        entries.active.insert(key.clone(), handle.clone());
        (self.on_count)(entries.active.len());
        drop(entries);
        let slot = Slot { directory: Arc::downgrade(self), key: key.clone(), generation };
        start(slot, Inbox(rx));
        Ok(handle)
    }

    /// Delivers `cmd` to the actor of `key`, starting one with `start` if
    /// needed (`start` may run once per attempt).
    pub async fn dispatch(
        self: &Arc<Self>,
        key: &K,
        mut cmd: C,
        start: impl Fn(Slot<K, C>, Inbox<C>),
    ) -> Result<Handle<C>, Refused> {
        for _ in 0..DISPATCH_ATTEMPTS {
            let handle = self.get_or_start(key, &start)?;
            match handle.send(cmd).await {
                Ok(()) => return Ok(handle),
                Err(returned) => {
                    // That actor stopped between lookup and send.
                    self.remove(key, handle.generation);
                    cmd = returned;
                }
            }
        }
        Err(Refused::Unavailable)
    }

    /// Every running actor.
    pub fn all(&self) -> Vec<(K, Handle<C>)> {
        self.lock().active.iter().map(|(k, h)| (k.clone(), h.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.lock().active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts no more actors; returns the running ones.
    pub fn close(&self) -> Vec<(K, Handle<C>)> {
        let mut entries = self.lock();
        entries.closed = true;
        entries.active.iter().map(|(k, h)| (k.clone(), h.clone())).collect()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Test = Directory<&'static str, u32>;
    type Kept = Mutex<Vec<(Slot<&'static str, u32>, Inbox<u32>)>>;

    /// Starts an actor that keeps its slot and queue in `kept`.
    fn keep(kept: &Kept) -> impl Fn(Slot<&'static str, u32>, Inbox<u32>) + '_ {
        move |slot, rx| kept.lock().unwrap().push((slot, rx))
    }

    #[tokio::test]
    async fn one_actor_per_key_until_its_slot_is_dropped() {
        let kept = Mutex::new(Vec::new());
        let directory = Test::new(4, 10, |_| {});
        let first = directory.dispatch(&"a", 1, keep(&kept)).await.unwrap();
        let again = directory.dispatch(&"a", 2, keep(&kept)).await.unwrap();
        assert_eq!(first.generation(), again.generation());
        assert_eq!(kept.lock().unwrap().len(), 1);
        let (slot, mut rx) = kept.lock().unwrap().pop().unwrap();
        assert_eq!((rx.recv().await, rx.recv().await), (Some(1), Some(2)));
        drop(slot);
        assert!(directory.get(&"a").is_none());
    }

    #[tokio::test]
    async fn a_stale_slot_never_removes_its_successor() {
        let kept = Mutex::new(Vec::new());
        let directory = Test::new(4, 10, |_| {});
        directory.get_or_start(&"a", keep(&kept)).unwrap();
        let (old_slot, old_rx) = kept.lock().unwrap().pop().unwrap();
        old_slot.vacate();
        drop(old_rx);
        let successor = directory.dispatch(&"a", 7, keep(&kept)).await.unwrap();
        drop(old_slot);
        assert_eq!(directory.get(&"a").map(|h| h.generation()), Some(successor.generation()));
    }

    #[tokio::test]
    async fn a_command_for_a_stopped_actor_goes_to_a_new_one() {
        let kept = Mutex::new(Vec::new());
        let directory = Test::new(4, 10, |_| {});
        let stale = directory.get_or_start(&"a", keep(&kept)).unwrap();
        // The actor stops without vacating its slot yet: its queue closes.
        let (_slot, rx) = kept.lock().unwrap().pop().unwrap();
        drop(rx);
        let fresh = directory.dispatch(&"a", 9, keep(&kept)).await.unwrap();
        assert_ne!(stale.generation(), fresh.generation());
        let (_, mut rx) = kept.lock().unwrap().pop().unwrap();
        assert_eq!(rx.recv().await, Some(9));
    }

    #[tokio::test]
    async fn limit_close_and_count() {
        let kept = Mutex::new(Vec::new());
        let count = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&count);
        let directory = Test::new(4, 1, move |n| seen.store(n as u64, Ordering::Relaxed));
        directory.get_or_start(&"a", keep(&kept)).unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert_eq!(directory.get_or_start(&"b", keep(&kept)).err(), Some(Refused::Full(1)));
        assert_eq!(directory.close().len(), 1);
        assert_eq!(directory.get_or_start(&"a", keep(&kept)).err(), Some(Refused::Closed));
        kept.lock().unwrap().clear();
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }
}
