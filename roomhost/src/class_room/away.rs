//! Gateways whose stream ended while their sockets may still be open (a
//! network fault between a live gateway and this roomhost, or a gateway
//! that crashed). For [`AWAY_GRACE`] their sockets stay in the room: what the
//! class sends them waits in a bounded outbox, and when the gateway (the
//! same process, by name) attaches again, its sockets move to the new
//! stream and the outbox goes first — the class sees no close. After the
//! grace the sockets are closed (`webSocketClose`, 1006).
//!
//! At most [`MAX_AWAY_FRAMES`] frames wait per gateway; past it the rest
//! are dropped and counted (`gateways_dropped`), as for a gateway too slow
//! to take them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rooms_proto::host::host_frame;
use tokio::time::Instant;

use crate::room::GatewayId;

/// How long a gateway's sockets wait for it to come back.
pub const AWAY_GRACE: Duration = Duration::from_secs(10);
/// Most frames kept for one gateway that is away.
pub const MAX_AWAY_FRAMES: usize = 1024;

struct Away {
    name: Arc<str>,
    until: Instant,
    outbox: VecDeque<host_frame::Kind>,
    overflowed: bool,
}

#[derive(Default)]
pub(super) struct AwayGateways {
    /// By the stream that ended (its sockets still name it).
    streams: HashMap<GatewayId, Away>,
}

impl AwayGateways {
    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The stream `gateway` of gateway `name` ended with sockets in the room.
    pub(super) fn left(&mut self, gateway: GatewayId, name: Arc<str>) {
        let away = Away {
            name,
            until: Instant::now() + AWAY_GRACE,
            outbox: VecDeque::new(),
            overflowed: false,
        };
        self.streams.insert(gateway, away);
    }

    /// Keeps a frame for an away stream. False: not away (or full: the
    /// frame is dropped and the caller told once, to count it).
    pub(super) fn keep(&mut self, gateway: GatewayId, kind: host_frame::Kind) -> Option<bool> {
        let away = self.streams.get_mut(&gateway)?;
        if away.outbox.len() >= MAX_AWAY_FRAMES {
            let first = !away.overflowed;
            away.overflowed = true;
            return Some(!first);
        }
        away.outbox.push_back(kind);
        Some(true)
    }

    /// Gateway `name` attached again: its earlier stream, if away, and what
    /// waited for it.
    pub(super) fn back(&mut self, name: &str) -> Option<(GatewayId, VecDeque<host_frame::Kind>)> {
        let old = self.streams.iter().find(|(_, a)| &*a.name == name).map(|(id, _)| *id)?;
        let away = self.streams.remove(&old)?;
        Some((old, away.outbox))
    }

    /// When the next grace ends.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.streams.values().map(|a| a.until).min()
    }

    /// The streams whose grace ended: their sockets are gone.
    pub(super) fn expired(&mut self) -> Vec<GatewayId> {
        let now = Instant::now();
        let gone: Vec<GatewayId> =
            self.streams.iter().filter(|(_, a)| a.until <= now).map(|(id, _)| *id).collect();
        for id in &gone {
            self.streams.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rooms_proto::host::Attached;

    fn frame() -> host_frame::Kind {
        host_frame::Kind::Attached(Attached {})
    }

    #[tokio::test(start_paused = true)]
    async fn an_away_gateway_gets_what_waited_when_it_is_back_or_is_gone_after_the_grace() {
        let mut away = AwayGateways::default();
        assert_eq!(away.keep(1, frame()), None, "not away");
        away.left(1, "gw-a".into());
        away.left(2, "gw-b".into());
        for _ in 0..MAX_AWAY_FRAMES {
            assert_eq!(away.keep(1, frame()), Some(true));
        }
        assert_eq!(away.keep(1, frame()), Some(false), "full: told once");
        assert_eq!(away.keep(1, frame()), Some(true));
        let (old, outbox) = away.back("gw-a").expect("away");
        assert_eq!((old, outbox.len()), (1, MAX_AWAY_FRAMES));
        assert!(away.back("gw-a").is_none());
        assert!(away.expired().is_empty());
        tokio::time::advance(AWAY_GRACE).await;
        assert_eq!(away.expired(), [2]);
        assert!(away.is_empty() && away.deadline().is_none());
    }
}
