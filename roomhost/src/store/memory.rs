//! In-process store for the embedded dev default. Bounded per room by the
//! history limit; holds every room ever used until the process exits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use rooms_proto::RoomId;

use super::{Commit, Event, LoadedRoom, RECENT_EVENTS, new_epoch};

#[derive(Clone)]
pub struct MemoryStore {
    rooms: Arc<Mutex<HashMap<RoomId, MemRoom>>>,
    history_limit: usize,
}

struct MemRoom {
    seq: u64,
    epoch: String,
    names: HashMap<String, String>,
    events: VecDeque<Event>,
}

impl MemoryStore {
    pub fn new(history_limit: usize) -> Self {
        Self { rooms: Arc::default(), history_limit: history_limit.max(1) }
    }

    fn with_room<T>(&self, room: &RoomId, f: impl FnOnce(&mut MemRoom) -> T) -> T {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let entry = rooms.entry(room.clone()).or_insert_with(|| MemRoom {
            seq: 0,
            epoch: new_epoch(),
            names: HashMap::new(),
            events: VecDeque::new(),
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

    pub fn commit(&self, room: &RoomId, commit: &Commit) {
        let limit = self.history_limit;
        self.with_room(room, |r| {
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
