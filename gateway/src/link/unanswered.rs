//! Chats and class socket messages a link sent upstream and has no answer
//! for yet, by tag: when each was read off its socket (the end-to-end
//! latency, measured when its answer comes back), and — for chats with a
//! client id and every class socket message — the frame itself, sent again
//! if the stream it went on breaks before an answer (a crashed or
//! partitioned roomhost answers nobody). The roomhost stores a client id, or
//! the last tag a class room ran per gateway, so a resend never doubles a
//! message.

use std::collections::BTreeMap;
use std::time::Duration;

use rooms_proto::host::{GatewayFrame, gateway_frame};
use tokio::time::Instant;

/// Chats tracked per link; past it (after forgetting those older than
/// [`FORGET_AFTER`]) new chats go untracked: untimed, and not sent again if
/// their stream breaks.
pub(super) const MAX_UNANSWERED: usize = 4096;
/// A chat unanswered this long is forgotten: too old to send again (the
/// roomhost remembers only a room's last 256 client ids).
pub(super) const FORGET_AFTER: Duration = Duration::from_secs(10);

struct Entry {
    received: Instant,
    /// The chat, if it has a client id (safe to send again).
    resend: Option<GatewayFrame>,
}

#[derive(Default)]
pub(super) struct Unanswered {
    /// Tags grow, so this is also the order the chats were sent in.
    by_tag: BTreeMap<u64, Entry>,
}

impl Unanswered {
    /// Tracks a chat with `tag`, read at `received`; when full, it goes
    /// untracked (untimed, and not sent again if its stream breaks).
    pub(super) fn track(&mut self, tag: u64, received: Instant, chat: &GatewayFrame) {
        if self.by_tag.len() >= MAX_UNANSWERED {
            self.by_tag.retain(|_, e| e.received.elapsed() < FORGET_AFTER);
            if self.by_tag.len() >= MAX_UNANSWERED {
                return;
            }
        }
        let resend = match &chat.kind {
            Some(gateway_frame::Kind::Chat(c)) if !c.id.is_empty() => Some(chat.clone()),
            Some(gateway_frame::Kind::SocketData(_)) => Some(chat.clone()),
            _ => None,
        };
        self.by_tag.insert(tag, Entry { received, resend });
    }

    /// The chat tagged `tag` was answered; when it was read, if tracked.
    pub(super) fn answered(&mut self, tag: u64) -> Option<Instant> {
        self.by_tag.remove(&tag).map(|e| e.received)
    }

    /// The chats to send again after their stream broke, oldest first,
    /// marked as resent; those too old to send again are forgotten.
    pub(super) fn resendable(&mut self) -> Vec<GatewayFrame> {
        self.by_tag.retain(|_, e| e.received.elapsed() < FORGET_AFTER);
        self.by_tag
            .values()
            .filter_map(|e| e.resend.clone())
            .map(|mut frame| {
                match &mut frame.kind {
                    Some(gateway_frame::Kind::Chat(chat)) => chat.resent = true,
                    Some(gateway_frame::Kind::SocketData(data)) => data.resent = true,
                    _ => {}
                }
                frame
            })
            .collect()
    }
}

/// The tag of a chat or class socket message (0 for anything else).
pub(super) fn tag_of(frame: &GatewayFrame) -> u64 {
    match &frame.kind {
        Some(gateway_frame::Kind::Chat(chat)) => chat.tag,
        Some(gateway_frame::Kind::SocketData(data)) => data.tag,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rooms_proto::host::Chat;

    fn chat(tag: u64, id: &str) -> GatewayFrame {
        let chat = Chat { tag, id: id.into(), ..Chat::default() };
        GatewayFrame { kind: Some(gateway_frame::Kind::Chat(chat)) }
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_chats_with_ids_are_resent_in_order_until_answered_or_too_old() {
        let mut unanswered = Unanswered::default();
        let now = Instant::now();
        unanswered.track(7, now, &chat(7, "b"));
        unanswered.track(5, now, &chat(5, "a"));
        unanswered.track(9, now, &chat(9, "")); // timed only: no id
        assert_eq!(unanswered.answered(9), Some(now));
        unanswered.track(9, now, &chat(9, ""));
        assert_eq!(unanswered.answered(5), Some(now));
        assert_eq!(unanswered.answered(5), None);
        let resend = unanswered.resendable();
        assert_eq!(resend.iter().map(tag_of).collect::<Vec<_>>(), [7]);
        assert!(matches!(&resend[0].kind, Some(gateway_frame::Kind::Chat(c)) if c.resent));
        tokio::time::advance(FORGET_AFTER).await;
        assert!(unanswered.resendable().is_empty(), "too old to send again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_tracker_forgets_the_old_then_refuses() {
        let mut unanswered = Unanswered::default();
        for tag in 1..=MAX_UNANSWERED as u64 {
            unanswered.track(tag, Instant::now(), &chat(tag, "x"));
        }
        let past = MAX_UNANSWERED as u64 + 1;
        unanswered.track(past, Instant::now(), &chat(past, "x"));
        assert_eq!(unanswered.answered(past), None, "full: untracked");
        tokio::time::advance(FORGET_AFTER).await;
        unanswered.track(past, Instant::now(), &chat(past, "x"));
        assert!(unanswered.answered(past).is_some(), "the old ones were forgotten");
    }
}
