//! The room's log as clients see it: seq assignment (reloading after a
//! failed write), names, and history — on join, on resume after a
//! seq, and paged back on request.

use super::*;
use rooms_proto::server::Page;

impl Room {
    /// Sends a re-attaching gateway the persisted events after `after`
    /// (nothing is staged: the caller flushed before attaching it).
    pub(super) async fn replay(&mut self, gateway: GatewayId, after: u64) {
        if after >= self.seq {
            return;
        }
        let events: Vec<Bytes> = if self.recent.front().is_some_and(|e| e.seq <= after + 1) {
            self.recent.iter().filter(|e| e.seq > after).map(|e| e.frame.clone()).collect()
        } else {
            let events = self.store.events_after(&self.id, after, self.settings.history_limit);
            match self.renewer.within_lease(events).await {
                Ok(events) => events.into_iter().map(|e| e.frame).collect(),
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "replay after a move failed; dropping the gateway");
                    self.drop_gateways(vec![gateway]);
                    return;
                }
            }
        };
        for page in events.chunks(REPLAY_PAGE) {
            let broadcast = Broadcast { frames: page.to_vec(), ..Broadcast::default() };
            self.send(gateway, host_frame::Kind::Broadcast(broadcast));
        }
    }

    /// The history frames a joining connection gets: the latest page, or a
    /// replay of everything after `since` (with `gap` when some is gone).
    pub(super) async fn join_history(&self, since: Option<u64>, epoch: &str) -> Vec<Bytes> {
        let latest = || {
            let has_more = self.recent.front().is_some_and(|e| e.seq > self.first_seq);
            (self.recent.iter().map(|e| e.frame.clone()).collect::<Vec<_>>(), has_more)
        };
        let Some(since) = since else {
            let (events, has_more) = latest();
            return vec![server::history(&events, Page { has_more, gap: false })];
        };
        if !epoch.is_empty() && epoch != self.epoch {
            let (events, has_more) = latest();
            return vec![server::history(&events, Page { has_more, gap: true })];
        }
        if since >= self.seq {
            return vec![server::history(&[], Page::default())];
        }
        if self.recent.front().is_some_and(|e| e.seq <= since + 1) {
            let events: Vec<Bytes> =
                self.recent.iter().filter(|e| e.seq > since).map(|e| e.frame.clone()).collect();
            return vec![server::history(&events, Page::default())];
        }
        let gap = since + 1 < self.first_seq;
        let events = self.store.events_after(&self.id, since, self.settings.history_limit);
        match self.renewer.within_lease(events).await {
            Ok(events) => {
                let frames: Vec<Bytes> = events.into_iter().map(|e| e.frame).collect();
                let mut pages: Vec<Bytes> = frames
                    .chunks(REPLAY_PAGE)
                    .enumerate()
                    .map(|(i, page)| {
                        server::history(page, Page { has_more: false, gap: gap && i == 0 })
                    })
                    .collect();
                if pages.is_empty() {
                    pages.push(server::history(&[], Page { has_more: false, gap }));
                }
                pages
            }
            Err(error) => {
                tracing::warn!(room.id = %self.id, %error, "history replay failed");
                vec![server::error(
                    ErrorCode::Unavailable,
                    "history is unavailable, reconnect to resume",
                )]
            }
        }
    }

    /// Up to `limit` events with seq < `before` (0 = latest), oldest first.
    pub(super) async fn history_page(&self, before: u64, limit: u32) -> Vec<Bytes> {
        let limit = (limit as usize).clamp(1, RECENT_EVENTS);
        let before = if before == 0 { self.seq.saturating_add(1) } else { before };
        let in_memory: Vec<&Event> = self.recent.iter().filter(|e| e.seq < before).collect();
        let memory_covers = in_memory.len() >= limit
            || self.recent.front().is_none_or(|e| e.seq <= self.first_seq.max(1));
        let page: Vec<Event> = if memory_covers {
            in_memory[in_memory.len().saturating_sub(limit)..]
                .iter()
                .map(|e| (*e).clone())
                .collect()
        } else {
            match self.renewer.within_lease(self.store.events_before(&self.id, before, limit)).await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "history page failed");
                    return vec![server::error(ErrorCode::Unavailable, "history is unavailable")];
                }
            }
        };
        let has_more = page.first().is_some_and(|e| e.seq > self.first_seq.max(1));
        let frames: Vec<Bytes> = page.into_iter().map(|e| e.frame).collect();
        vec![server::history(&frames, Page { has_more, gap: false })]
    }

    /// The seq the next staged event gets, reloading first if the last commit
    /// failed. None when the store cannot be reached.
    pub(super) async fn next_seq(&mut self) -> Option<u64> {
        if self.stale && self.reload_failed {
            // The store did not answer this turn: refuse the rest at once
            // rather than waiting for it once per message.
            return None;
        }
        if self.stale {
            match self.renewer.within_lease(self.store.load(&self.id)).await {
                Ok(loaded) => {
                    let (before, epoch) = (self.seq, self.epoch.clone());
                    self.apply_loaded(loaded);
                    self.stale = false;
                    // Renames that landed after all are display names now.
                    self.resend_roster();
                    // A write that timed out may have landed after all: it is
                    // stored, so it is delivered (late, but in order, and seqs
                    // stay contiguous for every client).
                    if self.epoch == epoch && self.seq > before {
                        let landed: Vec<Bytes> = self
                            .recent
                            .iter()
                            .filter(|e| e.seq > before)
                            .map(|e| e.frame.clone())
                            .collect();
                        tracing::warn!(room.id = %self.id, count = landed.len(), "delivering writes that landed late");
                        self.staged.outputs.extend(landed.into_iter().map(Output::All));
                    }
                }
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "reload after a failed write failed");
                    self.reload_failed = true;
                    return None;
                }
            }
        }
        Some(self.seq + self.staged.commit.events.len() as u64 + 1)
    }

    pub(super) fn stage(&mut self, event: Event) {
        self.staged.outputs.push(Output::Event(event.frame.clone()));
        self.staged.commit.events.push(event);
    }

    /// A user's display name, seeing staged renames first.
    pub(super) fn display_name<'a>(&'a self, user: &'a str) -> &'a str {
        self.staged
            .commit
            .names
            .iter()
            .rev()
            .find(|(u, _)| u == user)
            .map(|(_, n)| n.as_str())
            .or_else(|| self.names.get(user).map(String::as_str))
            .unwrap_or(user)
    }
}
