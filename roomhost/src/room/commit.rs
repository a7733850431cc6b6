//! Group commit and the output gate: staged events are written to the
//! store in one round trip, and only then emitted; a failed commit refuses
//! its writes and forgets their de-duplication entries.

use super::*;

/// A staged output, emitted in order once the staged events are stored.
pub(super) enum Output {
    /// A persisted event: dropped if the commit fails.
    Event(Bytes),
    /// An ephemeral frame for everyone.
    All(Bytes),
    /// Presence for everyone (`leave`).
    Presence(Bytes),
    /// Presence for everyone but one connection (`typing`).
    Except { gateway: GatewayId, conn: ConnId, frame: Bytes },
}

/// A staged write of a client's, refused if its commit fails.
pub(super) struct Writer {
    pub(super) gateway: GatewayId,
    pub(super) conn: ConnId,
    pub(super) write: Write,
}

pub(super) enum Write {
    /// A chat; `client_id` indexes [`Staged::client_ids`] if it has an id.
    Chat {
        client_id: Option<usize>,
        tag: u64,
    },
    Name,
}

/// The write a refusal answers.
pub(super) enum Refused<'a> {
    /// A chat: its client id (empty if none) and its gateway tag.
    Chat {
        id: &'a str,
        tag: u64,
    },
    Name,
}

#[derive(Default)]
pub(super) struct Staged {
    pub(super) commit: Commit,
    pub(super) outputs: Vec<Output>,
    /// Connections whose events are staged: told `unavailable` if the
    /// commit fails.
    pub(super) writers: Vec<Writer>,
    /// (user, client id) of staged chats: forgotten if the commit fails.
    pub(super) client_ids: Vec<(Arc<str>, Arc<str>)>,
    pub(super) replies: Vec<(oneshot::Sender<Result<u64, RoomError>>, u64)>,
    /// Where staged chats came from: their tags go back to the sending
    /// gateway with the event, and their latency and spans end on emit.
    pub(super) origins: Vec<Origin>,
}

/// A staged chat's origin.
pub(super) struct Origin {
    pub(super) gateway: GatewayId,
    pub(super) tag: u64,
    pub(super) received: Instant,
    /// The message's span, a child of the gateway's (only when traces are on).
    pub(super) _span: Option<tracing::Span>,
}

impl Room {
    /// Writes staged events (one round trip), then emits every staged output.
    pub(super) async fn flush(&mut self) {
        let mut claimed = None;
        if !self.staged.commit.is_empty() {
            let started = Instant::now();
            let held = (&self.settings.owner, self.lease);
            let ttl = self.settings.lease_ttl;
            let commit = self.store.commit(&self.id, held, &self.staged.commit, ttl);
            let result = self.renewer.within_lease(commit).await;
            let metrics = self.metrics();
            metrics.redis_write_seconds.observe(started.elapsed().as_secs_f64());
            metrics.redis_batch_events.observe(self.staged.commit.events.len() as f64);
            let staged = std::mem::take(&mut self.staged);
            match result {
                Ok(renewal) => {
                    self.renewer.renewed(self.lease, started);
                    if let Renewal::Claimed(by) = renewal {
                        claimed = Some(by);
                    }
                    self.committed(staged);
                }
                Err(error) => self.commit_failed(staged, error),
            }
        }
        self.emit();
        // What was stored goes out first; then the handoff a claim asks for.
        if let Some(by) = claimed {
            tracing::info!(room.id = %self.id, claimant = %by.0, "a gateway could not reach this roomhost; handing the room to the roomhost it reached");
            self.begin_move(Moved::to(by.address()), Drain::Gateways);
        }
    }

    pub(super) fn committed(&mut self, staged: Staged) {
        let Staged { commit, outputs, replies, origins, .. } = staged;
        self.metrics().events_persisted.inc_by(commit.events.len() as u64);
        if let Some(last) = commit.last_seq() {
            self.seq = last;
        }
        for event in commit.events {
            if self.first_seq == 0 {
                self.first_seq = event.seq;
            }
            if self.recent.len() == RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(event);
        }
        let limit = self.settings.history_limit as u64;
        self.first_seq = self.first_seq.max(self.seq.saturating_sub(limit) + 1);
        self.names.extend(commit.names);
        for (reply, seq) in replies {
            let _ = reply.send(Ok(seq));
        }
        self.staged.outputs = outputs;
        self.staged.origins = origins;
    }

    pub(super) fn commit_failed(&mut self, staged: Staged, error: StoreError) {
        tracing::warn!(room.id = %self.id, %error, events = staged.commit.events.len(), "commit failed");
        let metrics = self.metrics();
        metrics.commit_failures.inc();
        if matches!(error, StoreError::LeaseLost) {
            metrics.leases_lost.inc();
        }
        self.stale = true;
        self.lease_suspect |= matches!(error, StoreError::LeaseLost);
        let renamed = !staged.commit.names.is_empty();
        for (reply, _) in staged.replies {
            let _ = reply.send(Err(RoomError::Unavailable(error.to_string())));
        }
        for (user, id) in &staged.client_ids {
            self.dedup.remove(user, id);
        }
        for Writer { gateway, conn, write } in staged.writers {
            let refused = match write {
                Write::Chat { client_id, tag } => {
                    let id = client_id.and_then(|i| staged.client_ids.get(i));
                    Refused::Chat { id: id.map_or("", |(_, id)| id), tag }
                }
                Write::Name => Refused::Name,
            };
            self.unavailable(gateway, conn, refused);
        }
        self.staged.outputs =
            staged.outputs.into_iter().filter(|o| !matches!(o, Output::Event(_))).collect();
        if renamed {
            // The renames are undone: the names gateways were told are not.
            self.resend_roster();
        }
    }

    /// Refuses a write the store did not take, naming the chat it refuses
    /// (by client id for the client, by tag for its gateway).
    pub(super) fn unavailable(&mut self, gateway: GatewayId, conn: ConnId, refused: Refused<'_>) {
        let (id, tag) = match refused {
            Refused::Chat { id, tag } => (id, tag),
            Refused::Name => ("", 0),
        };
        let frame = server::error_for(
            ErrorCode::Unavailable,
            "not stored: storage is unavailable, retry",
            id,
        );
        self.answer(gateway, conn, tag, vec![frame]);
    }
}
