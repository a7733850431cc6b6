//! A room actor's life: its turn loop, what it does about its lease (see
//! [`crate::leases`]), handoffs to another owner, and hibernation.

use super::*;
use crate::leases::LeaseCheck;
use crate::store::IfHeld;

use crate::leases::LAPSE_RECHECK;

/// Whether a handoff first asks the gateways to stop sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// `Moving` to every gateway; the room moves once each answered
    /// `Drained` (or [`MOVE_DRAIN`] passed), so nothing they sent is lost.
    Gateways,
    /// The lease is gone: nothing more can be stored, stop at once.
    Skip,
}

/// What re-checking a lease that looked lost found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recheck {
    /// Ours again (the room's state is reloaded before the next write).
    Ours,
    /// Another roomhost holds it: the room is moving there.
    Moving,
    /// The store did not answer.
    NoAnswer,
}

/// A handoff in progress.
pub(super) struct MoveState {
    pub(super) target: Moved,
    /// Gateways that have not answered `Moving` yet.
    pub(super) waiting: Vec<GatewayId>,
    pub(super) deadline: Instant,
    pub(super) started: Instant,
    /// Attaches that arrived meanwhile: sent to the new owner at the end.
    pub(super) deferred: Vec<GatewayTx>,
}

impl Room {
    /// The room's life. A plain `fn` returning an `async move` block, and
    /// its rare ends (a move, hibernation, a lease re-check) boxed: an
    /// `async fn` would keep `self` twice in its state, and the rare steps
    /// would size it for good. This state is what every active room costs.
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps `self` twice")]
    pub(crate) fn run(
        mut self,
        mut rx: Inbox<Command>,
    ) -> impl std::future::Future<Output = Ended> + Send {
        async move {
            tracing::debug!(room.id = %self.id, seq = self.seq, fence = self.lease.fence, "room loaded");
            // When the last gateway left; the room hibernates `idle_timeout` later
            // whatever else (queries, publishes) happens meanwhile.
            let mut empty_since = Some(Instant::now());
            loop {
                let idle_at = empty_since.map(|since| since + self.settings.idle_timeout);
                // One timer for both: each one a room holds costs it memory.
                let settle_at = self.absentees_due();
                let wake_at = [idle_at, settle_at].into_iter().flatten().min();
                let move_at = self.moving.as_ref().map(|m| m.deadline);
                let first = tokio::select! {
                    // The lease first: a busy room must not outlive it.
                    biased;
                    check = self.renewer.next() => {
                        match check {
                            LeaseCheck::Suspect => self.lease_suspect = true,
                            LeaseCheck::Claimed(by) => self.begin_move(Moved::to(by), Drain::Gateways),
                            LeaseCheck::Lapsed => {
                                // Nothing can be stored without the lease, and
                                // another roomhost may take the room now. If the
                                // store answers again and nobody took it, take
                                // it back; else stop serving and send the
                                // gateways elsewhere.
                                let back = tokio::time::timeout(LAPSE_RECHECK, Box::pin(self.recheck_lease()));
                                match back.await {
                                    Ok(Recheck::Ours) => {}
                                    Ok(Recheck::Moving) => return Box::pin(self.finish_move(rx)).await,
                                    Ok(Recheck::NoAnswer) | Err(_) => {
                                        tracing::warn!(room.id = %self.id, "lease could not be renewed in time; giving the room up");
                                        self.lease_suspect = true;
                                        self.begin_move(Moved::unknown(), Drain::Skip);
                                        return Box::pin(self.finish_move(rx)).await;
                                    }
                                }
                            }
                        }
                        None
                    }
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => Some(cmd),
                        None => break,
                    },
                    () = sleep_until(wake_at), if wake_at.is_some() && self.moving.is_none() => {
                        if settle_at.is_some_and(|at| at <= Instant::now()) {
                            self.settle_absentees();
                            None
                        } else {
                            return Box::pin(self.hibernate(rx)).await;
                        }
                    }
                    () = sleep_until(move_at), if move_at.is_some() => {
                        tracing::warn!(room.id = %self.id, "gateways did not drain in time; moving anyway");
                        return Box::pin(self.finish_move(rx)).await;
                    }
                };
                if let Some(first) = first {
                    let turn = Instant::now();
                    self.reload_failed = false;
                    self.command(first).await;
                    let mut taken = 1;
                    while taken < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(cmd) => self.command(cmd).await,
                            Err(_) => break,
                        }
                        taken += 1;
                    }
                    if self.busy {
                        let until = turn + BUSY_LINGER;
                        while taken < MAX_BATCH {
                            match tokio::time::timeout_at(until, rx.recv()).await {
                                Ok(Some(cmd)) => self.command(cmd).await,
                                _ => break,
                            }
                            taken += 1;
                        }
                    }
                    let events = self.staged.commit.events.len();
                    self.flush().await;
                    self.busy = events >= BUSY_EVENTS;
                    self.report_gauges();
                }
                if self.lease_suspect && Box::pin(self.recheck_lease()).await == Recheck::Moving {
                    return Box::pin(self.finish_move(rx)).await;
                }
                if self.moving.as_ref().is_some_and(|m| m.waiting.is_empty()) {
                    return Box::pin(self.finish_move(rx)).await;
                }
                empty_since = match (self.gateways.is_empty(), empty_since) {
                    (false, _) => None,
                    (true, Some(since)) => Some(since),
                    (true, None) => Some(Instant::now()),
                };
            }
            self.flush().await;
            self.release_lease().await;
            tracing::debug!(room.id = %self.id, "room stopped");
            Ended::Done
        }
    }

    /// The lease looked lost: take it again if nobody else did (our state
    /// is then reloaded), else hand the room to its holder.
    pub(super) async fn recheck_lease(&mut self) -> Recheck {
        let (me, ttl) = (&self.settings.owner, self.settings.lease_ttl);
        let started = Instant::now();
        match self.store.acquire(&self.id, me, ttl, IfHeld::Report).await {
            Ok(Acquired::Ours(lease)) => {
                self.renewer.retaken(lease, started + ttl);
                if lease != self.lease {
                    tracing::warn!(room.id = %self.id, fence = lease.fence, "lease had expired; took it again");
                    self.lease = lease;
                    self.stale = true;
                }
                self.lease_suspect = false;
                Recheck::Ours
            }
            Ok(Acquired::HeldBy(holder)) => {
                tracing::warn!(room.id = %self.id, holder = %holder.0, "lease lost; room moves to its holder");
                self.begin_move(Moved::to(holder.address()), Drain::Skip);
                Recheck::Moving
            }
            Err(error) => {
                tracing::warn!(room.id = %self.id, %error, "cannot check the lease; retrying");
                Recheck::NoAnswer
            }
        }
    }

    pub(super) async fn release_lease(&self) {
        if let Err(error) = self.store.release(&self.id, &self.settings.owner, self.lease).await {
            tracing::warn!(room.id = %self.id, %error, "releasing the lease failed; it will expire");
        }
    }

    /// Starts a handoff to `target`, draining the gateways first or not.
    pub(super) fn begin_move(&mut self, target: Moved, drain: Drain) {
        if self.moving.is_some() {
            return;
        }
        let waiting: Vec<GatewayId> = match drain {
            Drain::Gateways => self.gateways.keys().copied().collect(),
            Drain::Skip => Vec::new(),
        };
        for gateway in &waiting {
            self.send(*gateway, host_frame::Kind::Moving(Moving {}));
        }
        tracing::info!(room.id = %self.id, target = ?target.address, "room moving");
        self.moving = Some(MoveState {
            target,
            waiting,
            deadline: Instant::now() + MOVE_DRAIN,
            started: Instant::now(),
            deferred: Vec::new(),
        });
    }

    /// Ends a handoff: everything is stored, the lease released, and every
    /// gateway told where the room went. Commands still queued are answered
    /// with the new address.
    pub(super) async fn finish_move(mut self, mut rx: Inbox<Command>) -> Ended {
        self.flush().await;
        let state = self.moving.take();
        if let Some(state) = &state {
            let metrics = self.metrics();
            metrics.room_moves.inc();
            metrics.room_move_seconds.observe(state.started.elapsed().as_secs_f64());
        }
        let target = state.as_ref().map_or_else(Moved::unknown, |m| m.target.clone());
        if !self.lease_suspect {
            self.release_lease().await;
        }
        self.slot.vacate();
        rx.close();
        // Writes still queued were never processed (a move without drain:
        // the lease ran out): refuse them, before the stream says where the
        // room went, so no sender waits for an answer that never comes.
        let mut rest = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Frame { gateway, frame } => match frame {
                    gateway_frame::Kind::Chat(chat) => {
                        self.unavailable(
                            gateway,
                            chat.conn,
                            Refused::Chat { id: &chat.id, tag: chat.tag },
                        );
                    }
                    gateway_frame::Kind::SetName(set) => {
                        self.unavailable(gateway, set.conn, Refused::Name);
                    }
                    frame => rest.push(Command::Frame { gateway, frame }),
                },
                other => rest.push(other),
            }
        }
        let mut txs: Vec<GatewayTx> = self.gateways.drain().map(|(_, stream)| stream.tx).collect();
        txs.extend(state.map(|m| m.deferred).unwrap_or_default());
        let moved = self.frame_of(host_frame::Kind::Moved(target.clone()));
        for tx in &txs {
            let _ = tx.try_send(Box::new(moved.clone()));
        }
        for cmd in rest {
            redirect(cmd, &target, self.seq);
        }
        tracing::info!(room.id = %self.id, target = ?target.address, seq = self.seq, "room moved");
        Ended::Done
    }

    /// Idle: leave memory and give up the lease. Commands that raced with
    /// the decision are handed back, for a fresh actor.
    pub(super) async fn hibernate(self, mut rx: Inbox<Command>) -> Ended {
        self.release_lease().await;
        self.slot.vacate();
        self.metrics.rooms_evicted.inc();
        rx.close();
        tracing::debug!(room.id = %self.id, "room idle, evicted");
        let mut leftover = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            leftover.push(cmd);
        }
        Ended::Hibernated(leftover)
    }
}
