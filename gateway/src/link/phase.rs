//! Where a link stands with its room's stream: one state, named
//! transitions. What can be sent upstream, and what must be kept to be sent
//! again on the next stream, follow from the state alone.
//!
//! ```text
//!            opened                  Attached
//! Detached ─────────▶ Opened ───────────────────▶ Attached
//!    ▲                  │  Moving / upstream closed  │
//!    │  broke / Moved   ▼                            ▼
//!    └──────────────── Stopped ◀─────────────────────┘
//! ```
//! (`broke` leads every state back to `Detached`.)

use std::collections::VecDeque;

use rooms_proto::UserId;
use rooms_proto::host::{GatewayFrame, gateway_frame};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::conn::ConnId;

/// An open stream to a roomhost.
pub(super) struct Stream {
    /// Frames towards the roomhost (the request body of `Attach`). Boxed:
    /// a queue allocates its slots 32 at a time, and 136-byte frames made
    /// every room link hold 4.3 KB of them.
    pub(super) up: mpsc::Sender<Box<GatewayFrame>>,
    /// The roomhost's advertise address.
    pub(super) address: String,
}

/// What a link keeps while no roomhost has confirmed its stream.
#[derive(Default)]
pub(super) struct Held {
    /// Client frames (never joins or leaves: every open re-announces the
    /// connections), sent again on the next stream.
    pub(super) frames: VecDeque<GatewayFrame>,
    /// Welcomed connections that closed meanwhile: the next owner hears
    /// them join and leave, so that it announces the `leave`.
    pub(super) departed: Vec<(ConnId, UserId)>,
    /// Since when the room has been moving (None while the link's first
    /// stream is being opened): the pause clients saw, for the metrics.
    pub(super) since: Option<Instant>,
}

impl Held {
    fn moving() -> Self {
        Self { since: Some(Instant::now()), ..Self::default() }
    }
}

pub(super) enum Phase {
    /// No stream: the first is being opened, or the last one broke or was
    /// redirected and the room's owner is being looked for.
    Detached(Held),
    /// A stream is open but its roomhost has not confirmed it (`Attached`):
    /// frames go up and are also kept, to be sent again if the stream is
    /// redirected.
    Opened(Stream, Held),
    /// The roomhost confirmed the stream: frames go up only.
    Attached(Stream),
    /// The stream takes no more frames — the room is moving and the link
    /// answered `Drained`, or the roomhost stopped reading — and is about
    /// to end; frames are kept for the next stream.
    Stopped(Stream, Held),
}

impl Phase {
    pub(super) fn new() -> Self {
        Self::Detached(Held::default())
    }

    /// The stream frames go up on, if any.
    pub(super) fn sending(&self) -> Option<&Stream> {
        match self {
            Self::Opened(stream, _) | Self::Attached(stream) => Some(stream),
            Self::Detached(_) | Self::Stopped(..) => None,
        }
    }

    /// The current stream's roomhost.
    pub(super) fn address(&self) -> Option<&str> {
        match self {
            Self::Opened(stream, _) | Self::Attached(stream) | Self::Stopped(stream, _) => {
                Some(&stream.address)
            }
            Self::Detached(_) => None,
        }
    }

    /// What is kept for the next stream (None once confirmed).
    pub(super) fn held(&mut self) -> Option<&mut Held> {
        match self {
            Self::Detached(held) | Self::Opened(_, held) | Self::Stopped(_, held) => Some(held),
            Self::Attached(_) => None,
        }
    }

    pub(super) fn is_attached(&self) -> bool {
        matches!(self, Self::Attached(_))
    }

    fn take(&mut self) -> Self {
        std::mem::replace(self, Self::new())
    }

    /// A stream opened (it was sent what is held).
    pub(super) fn opened(&mut self, stream: Stream) {
        *self = match self.take() {
            Self::Detached(held) | Self::Opened(_, held) | Self::Stopped(_, held) => {
                Self::Opened(stream, held)
            }
            Self::Attached(_) => Self::Opened(stream, Held::moving()),
        };
    }

    /// The roomhost confirmed the stream: what was held is processed. Returns
    /// since when the room was moving, if it was.
    pub(super) fn confirmed(&mut self) -> Option<Instant> {
        match self.take() {
            Self::Opened(stream, held) => {
                *self = Self::Attached(stream);
                held.since
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// The roomhost asked to stop sending (`Moving`): everything sent so far
    /// is processed before it moves, so nothing needs keeping; from now on
    /// frames are held. Returns the stream, to answer `Drained` on it.
    pub(super) fn moving(&mut self) -> Option<&Stream> {
        *self = match self.take() {
            Self::Opened(stream, _) | Self::Attached(stream) | Self::Stopped(stream, _) => {
                Self::Stopped(stream, Held::moving())
            }
            detached @ Self::Detached(_) => detached,
        };
        match self {
            Self::Stopped(stream, _) => Some(stream),
            _ => None,
        }
    }

    /// The roomhost stopped reading the stream (`refused` could not be
    /// sent): hold it and what follows until the link hears why.
    pub(super) fn upstream_closed(&mut self, refused: GatewayFrame) {
        *self = match self.take() {
            Self::Opened(stream, held) | Self::Stopped(stream, held) => Self::Stopped(stream, held),
            Self::Attached(stream) => Self::Stopped(stream, Held::moving()),
            detached @ Self::Detached(_) => detached,
        };
        let is_client_frame = !matches!(
            refused.kind,
            Some(gateway_frame::Kind::Join(_) | gateway_frame::Kind::Leave(_))
        );
        if let Some(held) = self.held()
            && is_client_frame
            && !held.frames.contains(&refused)
        {
            held.frames.push_back(refused);
        }
    }

    /// The stream ended, broke or was redirected: look for the room's owner,
    /// keeping what is held. What an unconfirmed stream was sent is marked
    /// as resent: its roomhost may have stored some of it just before the
    /// stream broke, and then the sender must not get its echo twice (the
    /// resume replays it; the roomhost answers a stored resend by tag alone).
    pub(super) fn broke(&mut self) {
        *self = match self.take() {
            Self::Opened(_, mut held) => {
                for frame in &mut held.frames {
                    match &mut frame.kind {
                        Some(gateway_frame::Kind::Chat(chat)) => chat.resent = true,
                        Some(gateway_frame::Kind::SocketData(data)) => data.resent = true,
                        _ => {}
                    }
                }
                held.since.get_or_insert_with(Instant::now);
                Self::Detached(held)
            }
            Self::Detached(mut held) | Self::Stopped(_, mut held) => {
                held.since.get_or_insert_with(Instant::now);
                Self::Detached(held)
            }
            Self::Attached(_) => Self::Detached(Held::moving()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rooms_proto::host::Chat;

    fn stream(address: &str) -> (Stream, mpsc::Receiver<Box<GatewayFrame>>) {
        let (up, rx) = mpsc::channel(8);
        (Stream { up, address: address.into() }, rx)
    }

    fn chat(tag: u64) -> GatewayFrame {
        GatewayFrame { kind: Some(gateway_frame::Kind::Chat(Chat { tag, ..Chat::default() })) }
    }

    #[tokio::test]
    async fn a_first_stream_is_held_until_confirmed_then_sends_only() {
        let mut phase = Phase::new();
        assert!(phase.sending().is_none());
        phase.held().unwrap().frames.push_back(chat(1));
        phase.opened(stream("a:1").0);
        assert_eq!(phase.sending().map(|s| s.address.as_str()), Some("a:1"));
        assert_eq!(phase.held().unwrap().frames.len(), 1, "kept until confirmed");
        assert_eq!(phase.confirmed(), None, "the first attach is not a move");
        assert!(phase.is_attached());
        assert!(phase.held().is_none());
    }

    #[tokio::test]
    async fn a_move_holds_frames_from_moving_and_measures_the_pause() {
        let mut phase = Phase::new();
        phase.opened(stream("a:1").0);
        phase.confirmed();
        assert_eq!(phase.moving().map(|s| s.address.clone()).as_deref(), Some("a:1"));
        assert!(phase.sending().is_none(), "nothing goes up after Drained");
        phase.held().unwrap().frames.push_back(chat(2));
        phase.broke(); // Moved
        assert!(matches!(phase, Phase::Detached(_)));
        phase.opened(stream("b:1").0);
        assert_eq!(phase.held().unwrap().frames.len(), 1, "sent again on the new stream");
        assert!(phase.confirmed().is_some(), "a move's pause is measured");
    }

    fn resent(phase: &mut Phase) -> Vec<bool> {
        let held = &phase.held().unwrap().frames;
        held.iter()
            .map(|f| matches!(&f.kind, Some(gateway_frame::Kind::Chat(c)) if c.resent))
            .collect()
    }

    #[tokio::test]
    async fn a_redirect_before_confirmation_keeps_what_was_sent_marked_as_resent() {
        let mut phase = Phase::new();
        phase.held().unwrap().frames.push_back(chat(3));
        phase.broke(); // the first stream never opened: nothing was sent
        assert_eq!(resent(&mut phase), [false]);
        phase.opened(stream("a:1").0);
        phase.broke(); // sent on a stream that was never confirmed
        phase.opened(stream("b:1").0);
        assert_eq!(resent(&mut phase), [true]);
    }

    #[tokio::test]
    async fn a_closed_upstream_holds_the_refused_frame_once_and_stops_sending() {
        let mut phase = Phase::new();
        phase.opened(stream("a:1").0);
        phase.confirmed();
        phase.upstream_closed(chat(4));
        phase.upstream_closed(chat(4));
        assert!(phase.sending().is_none());
        assert_eq!(phase.held().unwrap().frames.len(), 1);
        assert_eq!(phase.address(), Some("a:1"));
    }
}
