//! Presence gathered in storms.
//!
//! When many clients join a room at once (a gateway rollout makes all of
//! them reconnect), every `join` goes to every member already there: a
//! room of n members costs n²/2 presence frames, and delivered one by one,
//! each is a write of its own on every socket. A link therefore delivers a
//! presence broadcast (`join`, `leave`, `typing`; nothing persisted) at
//! once only if it delivered none in the last [`LINGER`]; otherwise it
//! gathers it, and everything gathered goes out together when the linger
//! ends, or before the room's next other frame, whichever comes first. A
//! quiet room's presence never waits; in a storm each socket gets at most
//! one presence write per linger.
//!
//! Order and content stay what each client would have seen one by one: a
//! connection welcomed while presence was gathered already has that
//! presence in its `welcome`, so it only gets what was gathered after it
//! (each gathered broadcast and each welcome take a [`Mark`]).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::{ConnId, Frames};

/// Longest a presence broadcast waits in a storm.
pub const LINGER: Duration = Duration::from_millis(100);
/// Most broadcasts gathered; the next one delivers them all at once.
pub const MAX_GATHERED: usize = 512;

/// Orders gathered broadcasts and welcomes: a connection welcomed at mark
/// `w` gets the gathered broadcasts with a mark above `w`.
pub(super) type Mark = u64;

struct Gathered {
    frames: Frames,
    /// The connection it is not for (the joiner, the typist); 0: none.
    except: ConnId,
    mark: Mark,
}

/// A link's gathered presence.
#[derive(Default)]
pub(super) struct Presence {
    gathered: Vec<Gathered>,
    mark: Mark,
    /// When presence was last delivered.
    last: Option<Instant>,
}

/// What to do with a presence broadcast that just arrived.
pub(super) enum Arrival {
    /// Deliver it now (the room's presence was quiet).
    Deliver(Frames),
    /// Gathered; nothing to do until [`Presence::due`].
    Gathered,
    /// Gathering is full: deliver what [`Presence::take`] returns.
    Full,
}

impl Presence {
    /// The mark a connection welcomed now takes.
    pub(super) fn welcome_mark(&self) -> Mark {
        self.mark
    }

    /// A presence broadcast for everyone but `except`.
    pub(super) fn arrive(&mut self, frames: Frames, except: ConnId, now: Instant) -> Arrival {
        let quiet = self.last.is_none_or(|last| now.duration_since(last) >= LINGER);
        if self.gathered.is_empty() && quiet {
            self.last = Some(now);
            return Arrival::Deliver(frames);
        }
        self.mark += 1;
        self.gathered.push(Gathered { frames, except, mark: self.mark });
        if self.gathered.len() >= MAX_GATHERED { Arrival::Full } else { Arrival::Gathered }
    }

    /// When what is gathered is due (None: nothing gathered).
    pub(super) fn due(&self) -> Option<Instant> {
        // Something is gathered only after a delivery: `last` is set.
        if self.gathered.is_empty() { None } else { self.last.map(|last| last + LINGER) }
    }

    /// Everything gathered, to deliver now; None (and nothing allocated,
    /// as on every other frame of a room) when nothing is.
    pub(super) fn take(&mut self, now: Instant) -> Option<Batch> {
        if self.gathered.is_empty() {
            return None;
        }
        self.last = Some(now);
        Some(Batch::new(std::mem::take(&mut self.gathered)))
    }
}

/// Gathered broadcasts being delivered.
pub(super) struct Batch {
    gathered: Vec<Gathered>,
    /// Every frame, for the connections that get them all (shared).
    all: Frames,
    excepted: HashSet<ConnId>,
}

impl Batch {
    fn new(gathered: Vec<Gathered>) -> Self {
        let all: Frames = gathered.iter().flat_map(|g| g.frames.iter().cloned()).collect();
        let excepted = gathered.iter().map(|g| g.except).filter(|c| *c != 0).collect();
        Self { gathered, all, excepted }
    }

    /// What connection `conn`, welcomed at `welcomed`, gets (None: nothing).
    pub(super) fn for_conn(&self, conn: ConnId, welcomed: Mark) -> Option<Frames> {
        let first = self.gathered.first()?.mark;
        if welcomed < first && !self.excepted.contains(&conn) {
            return Some(self.all.clone());
        }
        let own: Frames = self
            .gathered
            .iter()
            .filter(|g| g.mark > welcomed && g.except != conn)
            .flat_map(|g| g.frames.iter().cloned())
            .collect();
        (!own.is_empty()).then_some(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frames(text: &str) -> Frames {
        vec![Utf8Bytes::from(text.to_owned())].into()
    }

    fn texts(frames: Option<Frames>) -> Vec<String> {
        frames.map(|f| f.iter().map(|t| t.to_string()).collect()).unwrap_or_default()
    }

    #[test]
    fn quiet_presence_goes_at_once_and_a_storm_is_gathered_until_due() {
        let mut presence = Presence::default();
        let t0 = Instant::now();
        assert!(matches!(presence.arrive(frames("a"), 1, t0), Arrival::Deliver(_)));
        assert_eq!(presence.due(), None);
        let soon = t0 + LINGER / 2;
        assert!(matches!(presence.arrive(frames("b"), 2, soon), Arrival::Gathered));
        assert!(matches!(presence.arrive(frames("c"), 3, soon), Arrival::Gathered));
        assert_eq!(presence.due(), Some(t0 + LINGER));
        let batch = presence.take(t0 + LINGER).unwrap();
        assert_eq!(texts(batch.for_conn(9, 0)), ["b", "c"]);
        assert_eq!(texts(batch.for_conn(2, 0)), ["c"], "not its own join");
        assert_eq!(presence.due(), None);
        // Quiet again a linger after the last delivery.
        let later = t0 + LINGER * 2;
        assert!(matches!(presence.arrive(frames("d"), 4, later), Arrival::Deliver(_)));
    }

    #[test]
    fn a_connection_welcomed_meanwhile_gets_only_what_came_after_its_welcome() {
        let mut presence = Presence::default();
        let t0 = Instant::now();
        presence.arrive(frames("first"), 0, t0);
        presence.arrive(frames("join-b"), 2, t0);
        let welcomed_b = presence.welcome_mark();
        presence.arrive(frames("join-c"), 3, t0);
        let welcomed_c = presence.welcome_mark();
        presence.arrive(frames("leave-a"), 0, t0);
        let batch = presence.take(t0 + LINGER).unwrap();
        assert_eq!(texts(batch.for_conn(7, 0)), ["join-b", "join-c", "leave-a"]);
        assert_eq!(texts(batch.for_conn(2, welcomed_b)), ["join-c", "leave-a"]);
        assert_eq!(texts(batch.for_conn(3, welcomed_c)), ["leave-a"]);
    }

    #[test]
    fn gathering_is_bounded() {
        let mut presence = Presence::default();
        let t0 = Instant::now();
        presence.arrive(frames("first"), 0, t0);
        for _ in 1..MAX_GATHERED {
            assert!(matches!(presence.arrive(frames("x"), 0, t0), Arrival::Gathered));
        }
        assert!(matches!(presence.arrive(frames("x"), 0, t0), Arrival::Full));
        assert_eq!(texts(presence.take(t0).unwrap().for_conn(1, 0)).len(), MAX_GATHERED);
        assert!(presence.take(t0).is_none());
    }
}
