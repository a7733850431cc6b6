//! Recently stored chat messages by (user, client `id`): a message resent
//! after a reconnect or a move is answered with the stored event instead of
//! being stored twice. Bounded per room; rebuilt from recent history when a
//! room loads, so it survives moves between roomhosts.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use crate::store::Event;

/// Client ids remembered per room; older ones are forgotten first.
pub const DEDUP_WINDOW: usize = 256;

type Key = (String, String);

#[derive(Default)]
pub struct Dedup {
    seen: HashMap<Key, u64>,
    order: VecDeque<Key>,
}

#[derive(Deserialize)]
struct ChatIds {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    #[serde(rename = "userId")]
    user_id: Option<String>,
    id: Option<String>,
}

impl Dedup {
    /// The chat ids among stored events (oldest first).
    pub fn from_events(events: &[Event]) -> Self {
        let mut dedup = Self::default();
        for event in events {
            let Ok(ids) = serde_json::from_slice::<ChatIds>(&event.frame) else { continue };
            if let (true, Some(seq), Some(user), Some(id)) =
                (ids.kind == "chat", ids.seq, ids.user_id, ids.id)
            {
                dedup.insert(user, id, seq);
            }
        }
        dedup
    }

    /// The seq a (user, id) was stored as, if remembered.
    pub fn get(&self, user: &str, id: &str) -> Option<u64> {
        self.seen.get(&(user.to_owned(), id.to_owned())).copied()
    }

    pub fn insert(&mut self, user: String, id: String, seq: u64) {
        let key = (user, id);
        if self.seen.insert(key.clone(), seq).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > DEDUP_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Forgets a staged message whose commit failed (it may be resent).
    pub fn remove(&mut self, user: &str, id: &str) {
        let key = (user.to_owned(), id.to_owned());
        if self.seen.remove(&key).is_some() {
            self.order.retain(|k| *k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn remembers_a_bounded_window_and_rebuilds_from_events() {
        let mut dedup = Dedup::default();
        for i in 0..(DEDUP_WINDOW as u64 + 10) {
            dedup.insert("u".into(), format!("m{i}"), i + 1);
        }
        assert_eq!(dedup.get("u", "m0"), None, "oldest forgotten");
        assert_eq!(dedup.get("u", "m265"), Some(266));
        assert_eq!(dedup.get("v", "m265"), None, "per user");
        dedup.remove("u", "m265");
        assert_eq!(dedup.get("u", "m265"), None);

        let frame = rooms_proto::server::chat(7, "c1", "ann", "Ann", "hi", "t");
        let events = [
            Event { seq: 7, frame },
            Event { seq: 8, frame: Bytes::from_static(b"{\"type\":\"name\"}") },
        ];
        assert_eq!(Dedup::from_events(&events).get("ann", "c1"), Some(7));
    }
}
