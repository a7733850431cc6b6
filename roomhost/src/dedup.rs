//! Recently stored chat messages by (user, client `id`): a message resent
//! after a reconnect or a move is answered with the stored event instead of
//! being stored twice. Bounded per room; rebuilt from recent history when a
//! room loads, so it survives moves between roomhosts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Deserialize;

use crate::store::Event;

/// Client ids remembered per room; older ones are forgotten first.
pub const DEDUP_WINDOW: usize = 256;

/// Per user, the seq each remembered client id was stored as; at most
/// [`DEDUP_WINDOW`] ids in all, a user without any is removed. Users and
/// ids are shared with the room's connections and its staged writes, so a
/// chat costs one allocation here (its id), and a lookup none.
#[derive(Default)]
pub struct Dedup {
    seen: HashMap<Arc<str>, HashMap<Arc<str>, u64>>,
    /// Oldest first: what to forget past the window.
    order: VecDeque<(Arc<str>, Arc<str>)>,
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
                dedup.insert(user.into(), id.into(), seq);
            }
        }
        dedup
    }

    /// The seq a (user, id) was stored as, if remembered.
    pub fn get(&self, user: &str, id: &str) -> Option<u64> {
        self.seen.get(user)?.get(id).copied()
    }

    pub fn insert(&mut self, user: Arc<str>, id: Arc<str>, seq: u64) {
        let ids = self.seen.entry(Arc::clone(&user)).or_default();
        if ids.insert(Arc::clone(&id), seq).is_none() {
            self.order.push_back((user, id));
        }
        while self.order.len() > DEDUP_WINDOW {
            if let Some((user, id)) = self.order.pop_front() {
                self.forget(&user, &id);
            }
        }
    }

    /// Forgets a staged message whose commit failed (it may be resent).
    pub fn remove(&mut self, user: &str, id: &str) {
        if self.forget(user, id) {
            self.order.retain(|(u, i)| !(**u == *user && **i == *id));
        }
    }

    /// Drops (user, id) from the map; whether it was there.
    fn forget(&mut self, user: &str, id: &str) -> bool {
        let Some(ids) = self.seen.get_mut(user) else { return false };
        let removed = ids.remove(id).is_some();
        if ids.is_empty() {
            self.seen.remove(user);
        }
        removed
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
            dedup.insert("u".into(), format!("m{i}").into(), i + 1);
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

    #[test]
    fn users_whose_ids_were_all_forgotten_are_forgotten_too() {
        let mut dedup = Dedup::default();
        for i in 0..(DEDUP_WINDOW + 50) {
            dedup.insert(format!("user{i}").into(), "m".into(), i as u64 + 1);
        }
        assert_eq!(dedup.seen.len(), DEDUP_WINDOW);
        assert_eq!(dedup.get("user0", "m"), None);
        assert_eq!(dedup.get("user50", "m"), Some(51));
        dedup.remove("user50", "m");
        assert_eq!((dedup.seen.len(), dedup.order.len()), (DEDUP_WINDOW - 1, DEDUP_WINDOW - 1));
        // The same id again after a removal is remembered again, once.
        dedup.insert("user50".into(), "m".into(), 900);
        dedup.insert("user50".into(), "m".into(), 901);
        assert_eq!(dedup.get("user50", "m"), Some(901));
        assert_eq!(dedup.order.len(), DEDUP_WINDOW);
    }
}
