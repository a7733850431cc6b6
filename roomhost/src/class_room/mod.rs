//! A room that runs a room class: an actor like a chat room's (fed by the
//! same [`Command`]s, holding the lease, moving by drain and `Moved`), whose
//! logic is the class's JavaScript instance on the class pool.
//!
//! Sockets live at the gateways; the room knows each by a room-local
//! number, its gateway connection, its tags and attachment. The instance
//! starts on the first event that needs it, from the room's stored values
//! and the sockets the gateways hold, and is dropped after
//! `--room-idle-timeout` without events (the sockets stay open).
//!
//! Each event's storage writes are committed, fenced by the lease, before
//! anything it sent leaves (the output gate); the writes of events that ran
//! while a commit was in flight share the next one. A write that fails
//! drops what the class sent since and the instance, which starts again
//! from storage; so do a handler over its CPU or memory limit and one that
//! never finishes.
//!
//! Layout: this file holds the state and the turn loop; `events` one
//! handler per command and frame; `effects` what an event's effects do;
//! `gate` the output gate and its group commits; `gateways` the gateways by
//! name (messages run once, the wait for them after a change of owner).

mod alarms;
mod away;
mod effects;
mod events;
mod gate;
mod gateways;
mod metrics;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use rooms_classes::{Bundle, InstanceHandle, Pool};
use rooms_proto::RoomId;
use rooms_proto::host::{HostFrame, Moved, host_frame};
use rooms_server::Inbox;
use tokio::time::Instant;

use crate::leases::{LAPSE_RECHECK, LeaseCheck, Renewer};
use crate::metrics::Metrics;
use crate::room::{
    Command, ConnId, Ended, GatewayId, GatewayTx, MOVE_DRAIN, RoomSettings, RoomSlot, redirect,
};
use crate::store::{Acquired, IfHeld, Lease, Store};

pub(crate) use alarms::now_ms;
pub(crate) use metrics::ClassMetrics;

/// Most sockets one class room holds; a handshake past it gets 503.
pub const MAX_SOCKETS: usize = 50_000;

/// What a class room runs, shared by its rooms.
pub(crate) struct ClassSetup {
    pub(crate) bundle: Arc<Bundle>,
    pub(crate) env: Arc<str>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) metrics: ClassMetrics,
}

/// A socket of the room.
pub(super) struct Socket {
    gateway: GatewayId,
    conn: ConnId,
    tags: Vec<String>,
    attachment: Option<String>,
    /// Accepted with `acceptWebSocket`: it outlives the instance.
    hibernatable: bool,
}

/// A running instance, counted in its class's `class_instances` gauge
/// while it lives.
pub(super) struct Live(InstanceHandle, ClassMetrics);

impl Live {
    fn new(instance: InstanceHandle, metrics: &ClassMetrics) -> Self {
        metrics.instances.inc();
        Self(instance, metrics.clone())
    }
}

impl std::ops::Deref for Live {
    type Target = InstanceHandle;

    fn deref(&self) -> &InstanceHandle {
        &self.0
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.1.instances.dec();
    }
}

/// A room's share of its class's `class_storage_bytes`, given back when
/// the room leaves memory.
pub(super) struct StoredBytes {
    gauge: rooms_telemetry::prometheus::Gauge,
    bytes: u64,
}

impl StoredBytes {
    pub(super) fn set(&mut self, bytes: u64) {
        let delta = i64::try_from(bytes).unwrap_or(i64::MAX)
            - i64::try_from(self.bytes).unwrap_or(i64::MAX);
        self.gauge.inc_by(delta);
        self.bytes = bytes;
    }
}

impl Drop for StoredBytes {
    fn drop(&mut self) {
        self.set(0);
    }
}

pub(crate) struct ClassRoom {
    id: RoomId,
    slot: RoomSlot,
    store: Store,
    settings: Arc<RoomSettings>,
    metrics: Arc<Metrics>,
    class: Arc<ClassSetup>,
    lease: Lease,
    renewer: Renewer,
    instance: Option<Live>,
    gateways: HashMap<GatewayId, GatewayTx>,
    /// The gateways by name: what the room ran of each, who it waits for.
    book: gateways::Gateways,
    /// Writes on their way to the store, and what waits for them.
    gate: gate::Gate,
    /// The room's alarm and timers.
    alarms: alarms::Alarms,
    /// Gateways whose stream ended, while their sockets wait for them.
    away: away::AwayGateways,
    /// Its stored bytes, as its class's `class_storage_bytes` counts them.
    stored: StoredBytes,
    sockets: HashMap<u64, Socket>,
    by_conn: HashMap<(GatewayId, ConnId), u64>,
    /// The socket whose handshake the class is answering, and its connection.
    accepting: Option<(u64, GatewayId, ConnId)>,
    next_socket: u64,
    /// Gateways that have not answered `Moving` yet, where the room goes,
    /// until when; attaches that came meanwhile.
    moving: Option<(Vec<GatewayId>, Moved, Instant, Vec<GatewayTx>)>,
}

impl ClassRoom {
    pub(crate) fn new(
        slot: RoomSlot,
        store: Store,
        settings: Arc<RoomSettings>,
        metrics: Arc<Metrics>,
        class: Arc<ClassSetup>,
        (lease, renewer): (Lease, Renewer),
    ) -> Self {
        let id = slot.key().clone();
        let storage_bytes = class.metrics.storage_bytes.clone();
        Self {
            id,
            slot,
            store,
            settings,
            metrics,
            class,
            lease,
            renewer,
            instance: None,
            gateways: HashMap::new(),
            book: gateways::Gateways::default(),
            gate: gate::Gate::default(),
            alarms: alarms::Alarms::default(),
            away: away::AwayGateways::default(),
            stored: StoredBytes { gauge: storage_bytes, bytes: 0 },
            sockets: HashMap::new(),
            by_conn: HashMap::new(),
            accepting: None,
            next_socket: 1,
            moving: None,
        }
    }

    /// The room's life, shaped as a chat room's (`Room::run`): its state,
    /// what every active class room costs, holds `self` once and boxes the
    /// rare ends (a move, hibernation).
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps `self` twice")]
    pub(crate) fn run(
        mut self,
        mut rx: Inbox<Command>,
    ) -> impl std::future::Future<Output = Ended> + Send {
        async move {
            tracing::debug!(room.id = %self.id, class = %self.class.bundle.spec.class, bundle = %self.class.bundle.hash, "class room started");
            let idle = self.settings.idle_timeout;
            let mut last_event = Instant::now();
            self.load_book().await;
            loop {
                let move_at = self.moving.as_ref().map(|m| m.2);
                let settle_at = self.book.settle_deadline();
                let away_at = self.away.deadline();
                let alarm_at = match self.alarms.next() {
                    Some(at) if self.moving.is_none() && settle_at.is_none() => {
                        let wait = at.saturating_sub(alarms::now_ms());
                        Some(Instant::now() + std::time::Duration::from_millis(wait))
                    }
                    _ => None,
                };
                tokio::select! {
                    biased;
                    check = self.renewer.next() => match check {
                        LeaseCheck::Claimed(by) => self.begin_move(Moved::to(by)),
                        LeaseCheck::Suspect | LeaseCheck::Lapsed => {
                            let me = &self.settings.owner;
                            // As long as a chat room waits for the store's word.
                            let acquire = self.store.acquire(&self.id, me, self.settings.lease_ttl, IfHeld::Report);
                            let target = match tokio::time::timeout(LAPSE_RECHECK, acquire).await {
                                Ok(Ok(Acquired::Ours(lease))) if lease == self.lease => continue,
                                // Taken again after it ran out: this instance may
                                // not have what was stored meanwhile, so the room
                                // moves, and the new lease is not left in the way.
                                Ok(Ok(Acquired::Ours(lease))) => {
                                    if let Err(error) = self.store.release(&self.id, me, lease).await {
                                        tracing::warn!(room.id = %self.id, %error, "releasing the lease failed; it will expire");
                                    }
                                    Moved::unknown()
                                }
                                Ok(Ok(Acquired::HeldBy(holder))) => Moved::to(holder.address()),
                                _ => Moved::unknown(),
                            };
                            tracing::warn!(room.id = %self.id, "lease lost; the room moves");
                            return Box::pin(self.finish_move(rx, target, false)).await;
                        }
                    },
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => {
                            last_event = Instant::now();
                            self.take(cmd).await;
                        }
                        None => break,
                    },
                    () = tokio::time::sleep_until(last_event + idle), if self.moving.is_none() => {
                        if self.gateways.is_empty() && self.away.is_empty() {
                            return Box::pin(self.hibernate(rx)).await;
                        }
                        // Sockets stay open at the gateways; the instance goes.
                        self.drop_instance("idle");
                        last_event = Instant::now();
                    }
                    result = self.gate.committed() => self.committed(result),
                    () = sleep_until(alarm_at), if alarm_at.is_some() => {
                        last_event = Instant::now();
                        self.fire_alarms().await;
                    }
                    () = sleep_until(settle_at), if settle_at.is_some() => self.settled(true).await,
                    () = sleep_until(away_at), if away_at.is_some() => self.gone_for_good().await,
                    () = sleep_until(move_at), if move_at.is_some() => {
                        tracing::warn!(room.id = %self.id, "gateways did not drain in time; moving anyway");
                        let target = self.moving.as_ref().map_or_else(Moved::unknown, |m| m.1.clone());
                        return Box::pin(self.finish_move(rx, target, true)).await;
                    }
                }
                if let Some((waiting, target, _, _)) = &self.moving
                    && waiting.is_empty()
                {
                    let target = target.clone();
                    return Box::pin(self.finish_move(rx, target, true)).await;
                }
            }
            // Writes still on their way are stored while the lease is ours.
            self.flush().await;
            self.release_lease().await;
            Ended::Done
        }
    }

    /// Asks every gateway to stop sending; the room moves once all answered.
    fn begin_move(&mut self, target: Moved) {
        if self.moving.is_some() {
            return;
        }
        let waiting: Vec<GatewayId> = self.gateways.keys().copied().collect();
        for gateway in &waiting {
            self.send(*gateway, host_frame::Kind::Moving(rooms_proto::host::Moving {}));
        }
        tracing::info!(room.id = %self.id, target = ?target.address, "class room moving");
        self.moving = Some((waiting, target, Instant::now() + MOVE_DRAIN, Vec::new()));
    }

    /// Gives the room up: the lease released (if still ours), every gateway
    /// and queued command sent to `target`.
    async fn finish_move(mut self, mut rx: Inbox<Command>, target: Moved, release: bool) -> Ended {
        // What is in flight is waited for while the lease holds: past it no
        // answer could be acted on, and the gateways wait for `Moved`.
        if tokio::time::timeout_at(self.renewer.until(), self.flush()).await.is_err() {
            tracing::warn!(room.id = %self.id, "the lease ran out before the last commit was answered; its outputs are dropped");
        }
        self.instance = None;
        if release {
            self.release_lease().await;
        }
        self.slot.vacate();
        rx.close();
        let moved = HostFrame { kind: Some(host_frame::Kind::Moved(target.clone())), room_seq: 0 };
        let deferred = self.moving.take().map(|m| m.3).unwrap_or_default();
        for tx in self.gateways.values().chain(deferred.iter()) {
            let _ = tx.try_send(Box::new(moved.clone()));
        }
        for cmd in self.book.take_deferred() {
            redirect(cmd, &target, 0);
        }
        while let Ok(cmd) = rx.try_recv() {
            redirect(cmd, &target, 0);
        }
        self.metrics.room_moves.inc();
        tracing::info!(room.id = %self.id, target = ?target.address, "class room moved");
        Ended::Done
    }

    /// No gateway for the idle timeout: leave memory, release the lease.
    async fn hibernate(mut self, mut rx: Inbox<Command>) -> Ended {
        self.flush().await;
        // No gateway has a socket here: none is to be waited for next time.
        let forget = self.book.forget_all();
        if !forget.is_empty() {
            let me = &self.settings.owner;
            if let Err(error) = self.store.commit_storage(&self.id, me, self.lease, &forget).await {
                tracing::debug!(room.id = %self.id, %error, "forgetting the room's gateways failed");
            }
        }
        self.release_lease().await;
        self.slot.vacate();
        self.metrics.rooms_evicted.inc();
        rx.close();
        let mut leftover: Vec<Command> = self.book.take_deferred().into();
        while let Ok(cmd) = rx.try_recv() {
            leftover.push(cmd);
        }
        Ended::Hibernated(leftover)
    }

    async fn release_lease(&self) {
        if let Err(error) = self.store.release(&self.id, &self.settings.owner, self.lease).await {
            tracing::warn!(room.id = %self.id, %error, "releasing the lease failed; it will expire");
        }
    }

    /// Takes a command, or holds it while the room waits for its gateways.
    async fn take(&mut self, cmd: Command) {
        // Too much waits for the store: no more until the commit returns.
        while self.gate.is_full() && self.gate.in_flight() {
            let result = self.gate.committed().await;
            self.committed(result);
        }
        self.take_now(cmd).await;
        self.kick();
    }

    async fn take_now(&mut self, cmd: Command) {
        use rooms_proto::host::gateway_frame::Kind;
        let runs_class = match &cmd {
            Command::Frame { frame, .. } => !matches!(frame, Kind::Join(_) | Kind::Drained(_)),
            Command::Detach { .. } | Command::Invoke { .. } => true,
            _ => false,
        };
        if !runs_class || !self.book.settling() {
            self.command(cmd).await;
            return self.settled(false).await;
        }
        if let Command::Detach { gateway } = &cmd {
            self.book.stream_ended(*gateway);
        }
        if let Some(cmd) = self.book.defer(cmd) {
            tracing::warn!(room.id = %self.id, "too many events while waiting for the room's gateways; running them");
            self.settled(true).await;
            self.command(cmd).await;
        }
        self.settled(false).await;
    }

    /// Ends the wait for gateways once nothing is awaited (or `force`d), and
    /// runs what it held.
    async fn settled(&mut self, force: bool) {
        let missing = self.book.settle(force);
        if !missing.is_empty() {
            tracing::warn!(room.id = %self.id, gateways = ?missing, "gateways that had sockets in the room did not come back");
        }
        while let Some(cmd) = self.book.next_deferred() {
            self.command(cmd).await;
        }
    }

    /// Loads what the room ran per gateway and its alarms (once, and again
    /// after a failed commit; a failure is retried by the next event that
    /// runs the class).
    pub(super) async fn load_book(&mut self) -> bool {
        if !self.book.is_loaded() {
            match self.renewer.within_lease(self.store.load_ran(&self.id)).await {
                Ok(ran) => self.book.loaded(ran),
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "loading the class room's gateways failed");
                    return false;
                }
            }
        }
        if !self.alarms.is_loaded() {
            match self.renewer.within_lease(self.store.load_alarms(&self.id)).await {
                Ok(alarms) => {
                    tracing::debug!(room.id = %self.id, alarms = alarms.len(), "class room alarms loaded");
                    self.alarms.loaded(alarms);
                }
                Err(error) => {
                    tracing::warn!(room.id = %self.id, %error, "loading the class room's alarms failed");
                    return false;
                }
            }
        }
        true
    }

    /// Fires every alarm and timer that is due, each once; a failure is
    /// retried later with a backoff.
    async fn fire_alarms(&mut self) {
        let now = alarms::now_ms();
        for (name, retry) in self.alarms.take_due(now) {
            tracing::debug!(room.id = %self.id, alarm = %name, retry, sockets = self.sockets.len(), gateways = self.gateways.len(), "firing the room's alarm");
            let outcome = match self.instance().await {
                Some(instance) => instance.alarm(name.clone(), retry).await,
                None => Err(rooms_classes::PoolError::Stopped),
            };
            self.class.metrics.alarms_fired.inc();
            if let Some(Ok(())) = self.apply(outcome) {
                self.alarms.succeeded(&name);
                continue;
            }
            match self.alarms.failed(&name, now) {
                Some(at) => {
                    self.class.metrics.alarm_retries.inc();
                    tracing::warn!(room.id = %self.id, alarm = %name, retry = retry + 1, "the room's alarm failed; retrying");
                    self.gate.write(vec![crate::store::StorageWrite::Alarm(name, Some(at))]);
                }
                None => {
                    tracing::error!(room.id = %self.id, alarm = %name, "the room's alarm failed every retry; given up");
                }
            }
        }
        self.kick();
    }

    /// Drops the instance; sockets accepted without hibernation die with it.
    fn drop_instance(&mut self, why: &str) {
        if self.instance.take().is_none() {
            return;
        }
        tracing::debug!(room.id = %self.id, why, "class instance dropped");
        let plain: Vec<u64> =
            self.sockets.iter().filter(|(_, s)| !s.hibernatable).map(|(id, _)| *id).collect();
        for socket in plain {
            self.close_socket(socket, rooms_proto::server::close_code::RESTART, "room restarted");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
