//! In-process store for the embedded dev default. Bounded per room by the
//! history limit; holds every room ever used until the process exits. Leases
//! behave as in Redis, for the one process that uses the store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rooms_proto::RoomId;

use super::{
    Acquired, Commit, Event, IfHeld, Lease, LoadedRoom, Owner, RECENT_EVENTS, Renewal,
    StorageWrite, StoreError, new_epoch,
};

#[derive(Clone)]
pub struct MemoryStore {
    rooms: Arc<Mutex<HashMap<RoomId, MemRoom>>>,
    /// Rooms by their earliest alarm (ms since the epoch).
    alarm_index: Arc<Mutex<HashMap<String, u64>>>,
    history_limit: usize,
    /// Tests make commits fail, as a store that does not answer would.
    #[cfg(test)]
    refuse_commits: Arc<std::sync::atomic::AtomicBool>,
    /// Tests make every call wait, as a store behind a partition would.
    #[cfg(test)]
    silent: Arc<tokio::sync::watch::Sender<bool>>,
}

struct MemRoom {
    seq: u64,
    epoch: String,
    names: HashMap<String, String>,
    events: VecDeque<Event>,
    fence: u64,
    lease: Option<(String, u64, Instant)>,
    /// Who claimed the lease, until when.
    claim: Option<(String, Instant)>,
    /// A room class's storage.
    storage: std::collections::BTreeMap<String, String>,
    /// The last socket message a class room ran, per gateway.
    ran: HashMap<String, u64>,
    /// A class room's alarm and timers.
    alarms: HashMap<String, u64>,
}

impl MemRoom {
    fn holder(&self) -> Option<&(String, u64, Instant)> {
        self.lease.as_ref().filter(|(_, _, until)| *until > Instant::now())
    }

    fn holds(&self, me: &Owner, lease: Lease) -> bool {
        self.holder().is_some_and(|(owner, fence, _)| *owner == me.0 && *fence == lease.fence)
    }

    /// Extends a lease `me` holds by `ttl`; says whether another claimed it.
    fn renew(&mut self, me: &Owner, lease: Lease, ttl: Duration) -> Renewal {
        self.lease = Some((me.0.clone(), lease.fence, Instant::now() + ttl));
        match &self.claim {
            Some((by, until)) if *until > Instant::now() && *by != me.0 => {
                Renewal::Claimed(Owner(by.clone()))
            }
            _ => Renewal::Ours,
        }
    }
}

impl MemoryStore {
    pub fn new(history_limit: usize) -> Self {
        Self {
            rooms: Arc::default(),
            alarm_index: Arc::default(),
            history_limit: history_limit.max(1),
            #[cfg(test)]
            refuse_commits: Arc::default(),
            #[cfg(test)]
            silent: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// From now on, calls wait without an answer (`true`), or are answered
    /// again, the waiting ones included.
    #[cfg(test)]
    pub fn silence(&self, silent: bool) {
        self.silent.send_replace(silent);
    }

    /// Itself, once it answers: after a test's silence, at once otherwise.
    pub(super) async fn answered(&self) -> &Self {
        #[cfg(test)]
        {
            let mut silent = self.silent.subscribe();
            let _ = silent.wait_for(|silent| !*silent).await;
        }
        self
    }

    /// From now on, commits fail (`true`) or work again.
    #[cfg(test)]
    pub fn refuse_commits(&self, refuse: bool) {
        self.refuse_commits.store(refuse, std::sync::atomic::Ordering::Relaxed);
    }

    fn with_room<T>(&self, room: &RoomId, f: impl FnOnce(&mut MemRoom) -> T) -> T {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let entry = rooms.entry(room.clone()).or_insert_with(|| MemRoom {
            seq: 0,
            epoch: new_epoch(),
            names: HashMap::new(),
            events: VecDeque::new(),
            fence: 0,
            lease: None,
            claim: None,
            storage: std::collections::BTreeMap::new(),
            ran: HashMap::new(),
            alarms: HashMap::new(),
        });
        f(entry)
    }

    pub fn load(&self, room: &RoomId) -> LoadedRoom {
        self.with_room(room, |r| {
            let skip = r.events.len().saturating_sub(RECENT_EVENTS);
            LoadedRoom {
                seq: r.seq,
                epoch: r.epoch.clone(),
                names: r.names.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                recent: r.events.iter().skip(skip).cloned().collect(),
                first_seq: r.events.front().map_or(0, |e| e.seq),
            }
        })
    }

    pub fn load_storage(&self, room: &RoomId) -> Vec<(String, String)> {
        self.with_room(room, |r| r.storage.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    pub fn load_ran(&self, room: &RoomId) -> Vec<(String, u64)> {
        self.with_room(room, |r| r.ran.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    pub fn load_alarms(&self, room: &RoomId) -> Vec<(String, u64)> {
        self.with_room(room, |r| r.alarms.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    fn with_index<T>(&self, f: impl FnOnce(&mut HashMap<String, u64>) -> T) -> T {
        f(&mut self.alarm_index.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn index_alarm(&self, room: &RoomId, at: Option<u64>) {
        self.with_index(|index| match at {
            Some(at) => index.insert(room.to_string(), at),
            None => index.remove(room.as_str()),
        });
    }

    pub fn lower_alarm(&self, room: &RoomId, at: u64) {
        self.with_index(|index| {
            let entry = index.entry(room.to_string()).or_insert(at);
            *entry = (*entry).min(at);
        });
    }

    pub fn due_alarms(&self, now: u64, limit: usize) -> Vec<(String, u64)> {
        self.with_index(|index| {
            let mut due: Vec<(u64, String)> = index
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(r, at)| (*at, r.clone()))
                .collect();
            due.sort();
            due.into_iter().take(limit).map(|(at, room)| (room, at)).collect()
        })
    }

    pub fn commit_storage(
        &self,
        room: &RoomId,
        me: &Owner,
        lease: Lease,
        writes: &[StorageWrite],
    ) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.refuse_commits.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Corrupt("commits refused by the test".into()));
        }
        self.with_room(room, |r| {
            if !r.holds(me, lease) {
                return Err(StoreError::LeaseLost);
            }
            for write in writes {
                match write {
                    StorageWrite::Put(key, value) => {
                        r.storage.insert(key.clone(), value.clone());
                    }
                    StorageWrite::Delete(key) => {
                        r.storage.remove(key);
                    }
                    StorageWrite::DeleteAll => r.storage.clear(),
                    StorageWrite::Ran(gateway, tag) => {
                        r.ran.insert(gateway.clone(), *tag);
                    }
                    StorageWrite::Forget(gateway) => {
                        r.ran.remove(gateway);
                    }
                    StorageWrite::Alarm(name, Some(at)) => {
                        r.alarms.insert(name.clone(), *at);
                    }
                    StorageWrite::Alarm(name, None) => {
                        r.alarms.remove(name);
                    }
                }
            }
            Ok(())
        })
    }

    pub fn acquire(&self, room: &RoomId, me: &Owner, ttl: Duration, if_held: IfHeld) -> Acquired {
        self.with_room(room, |r| {
            if let Some((owner, fence, _)) = r.holder().cloned() {
                if owner != me.0 {
                    if if_held == IfHeld::Claim {
                        r.claim = Some((me.0.clone(), Instant::now() + ttl));
                    }
                    return Acquired::HeldBy(Owner(owner));
                }
                r.lease = Some((owner, fence, Instant::now() + ttl));
                return Acquired::Ours(Lease { fence });
            }
            r.fence += 1;
            r.lease = Some((me.0.clone(), r.fence, Instant::now() + ttl));
            r.claim = None;
            Acquired::Ours(Lease { fence: r.fence })
        })
    }

    /// Another roomhost takes the lease, as after this one's lapsed.
    #[cfg(test)]
    pub fn steal_lease(&self, room: &RoomId, thief: &Owner, ttl: Duration) {
        self.with_room(room, |r| {
            r.fence += 1;
            r.lease = Some((thief.0.clone(), r.fence, Instant::now() + ttl));
        });
    }

    pub fn renew(&self, room: &RoomId, me: &Owner, lease: Lease, ttl: Duration) -> Renewal {
        self.with_room(room, |r| {
            if !r.holds(me, lease) {
                return Renewal::Lost;
            }
            r.renew(me, lease, ttl)
        })
    }

    pub fn release(&self, room: &RoomId, me: &Owner, lease: Lease) {
        self.with_room(room, |r| {
            if r.holds(me, lease) {
                r.lease = None;
            }
        })
    }

    pub fn commit(
        &self,
        room: &RoomId,
        (me, lease): (&Owner, Lease),
        commit: &Commit,
        ttl: Duration,
    ) -> Result<Renewal, StoreError> {
        let limit = self.history_limit;
        #[cfg(test)]
        if self.refuse_commits.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Corrupt("commits refused by the test".into()));
        }
        self.with_room(room, |r| {
            if !r.holds(me, lease) {
                return Err(StoreError::LeaseLost);
            }
            r.events.extend(commit.events.iter().cloned());
            while r.events.len() > limit {
                r.events.pop_front();
            }
            if let Some(seq) = commit.last_seq() {
                r.seq = seq;
            }
            for (user, name) in &commit.names {
                r.names.insert(user.clone(), name.clone());
            }
            Ok(r.renew(me, lease, ttl))
        })
    }

    pub fn events_after(&self, room: &RoomId, after: u64, limit: usize) -> Vec<Event> {
        self.with_room(room, |r| {
            r.events.iter().filter(|e| e.seq > after).take(limit).cloned().collect()
        })
    }

    pub fn events_before(&self, room: &RoomId, before: u64, limit: usize) -> Vec<Event> {
        self.with_room(room, |r| {
            let mut page: Vec<Event> =
                r.events.iter().rev().filter(|e| e.seq < before).take(limit).cloned().collect();
            page.reverse();
            page
        })
    }

    pub fn latest_seq(&self, room: &RoomId) -> u64 {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.get(room).map_or(0, |r| r.seq)
    }
}
