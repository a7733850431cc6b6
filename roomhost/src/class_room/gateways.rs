//! A class room's gateways by name: the last socket message the room ran
//! of each (stored with the class's writes, so that a message its gateway
//! sends again after a crash runs once), and the wait for the gateways to
//! come back after the room changed owner (so that nothing the class sends
//! misses a socket that is only moving).
//!
//! * A gateway keeps each socket message until the room answers its tag.
//!   When the stream breaks first, it sends the message again, marked
//!   resent; the room skips a resent message whose tag it already ran.
//! * A new owner learns from the store which gateways had sockets in the
//!   room, and every stream announces how many sockets it re-announces.
//!   Until those gateways attached and re-announced their sockets (at most
//!   [`SETTLE`]), the room runs no event: commands that would run the class
//!   wait, in order, in a queue of at most [`MAX_DEFERRED`]; a full queue
//!   ends the wait.
//! * A gateway gone for [`FORGET_AFTER`] is forgotten, in the store too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::room::{Command, GatewayId};
use crate::store::StorageWrite;

/// Longest a new owner waits for the gateways that had sockets in the room.
pub const SETTLE: Duration = Duration::from_secs(5);
/// Most commands held while the room waits for its gateways.
pub const MAX_DEFERRED: usize = 1024;
/// A gateway detached this long will not send anything again.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct Gateways {
    /// Names of the attached streams.
    names: HashMap<GatewayId, Arc<str>>,
    /// The last tag run per gateway name (None until loaded from the store).
    ran: Option<HashMap<Arc<str>, u64>>,
    /// Names whose tag changed since the last commit.
    dirty: Vec<Arc<str>>,
    /// Names with no stream attached, since when.
    detached: HashMap<Arc<str>, Instant>,
    /// Names the room waits for, and re-announcements it waits for per
    /// stream, until `until`.
    expected: Vec<Arc<str>>,
    rejoins: HashMap<GatewayId, u32>,
    until: Option<Instant>,
    /// Commands held while waiting, in order.
    deferred: VecDeque<Command>,
}

impl Gateways {
    pub(super) fn is_loaded(&self) -> bool {
        self.ran.is_some()
    }

    /// What the store says the room ran; its gateways are waited for.
    pub(super) fn loaded(&mut self, ran: Vec<(String, u64)>) {
        let now = Instant::now();
        let mut known = HashMap::new();
        for (name, tag) in ran {
            let name: Arc<str> = name.into();
            if !self.names.values().any(|n| *n == name) {
                self.expected.push(Arc::clone(&name));
                self.detached.insert(Arc::clone(&name), now);
            }
            known.insert(name, tag);
        }
        if !self.expected.is_empty() {
            self.until.get_or_insert(now + SETTLE);
        }
        self.ran = Some(known);
    }

    /// A stream attached; it re-announces `rejoins` sockets next.
    pub(super) fn attached(&mut self, gateway: GatewayId, name: Arc<str>, rejoins: u32) {
        self.expected.retain(|n| *n != name);
        self.detached.remove(&name);
        if rejoins > 0 {
            self.rejoins.insert(gateway, rejoins);
            self.until.get_or_insert(Instant::now() + SETTLE);
        }
        self.names.insert(gateway, name);
    }

    /// A stream re-announced one of its sockets.
    pub(super) fn rejoined(&mut self, gateway: GatewayId) {
        if let Some(left) = self.rejoins.get_mut(&gateway) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.rejoins.remove(&gateway);
            }
        }
    }

    /// The name of an attached stream's gateway.
    pub(super) fn name(&self, gateway: GatewayId) -> Option<Arc<str>> {
        self.names.get(&gateway).cloned()
    }

    /// A stream ended: it re-announces nothing more.
    pub(super) fn stream_ended(&mut self, gateway: GatewayId) {
        self.rejoins.remove(&gateway);
    }

    pub(super) fn detached(&mut self, gateway: GatewayId) {
        self.rejoins.remove(&gateway);
        if let Some(name) = self.names.remove(&gateway)
            && !self.names.values().any(|n| *n == name)
        {
            self.detached.insert(name, Instant::now());
        }
    }

    /// Whether the room still waits for gateways (and holds commands).
    pub(super) fn settling(&self) -> bool {
        self.until.is_some()
    }

    pub(super) fn settle_deadline(&self) -> Option<Instant> {
        self.until
    }

    /// Stops waiting if nothing is awaited any more, or `force`d (the
    /// deadline passed, the queue filled). Returns the names that never
    /// came, once.
    pub(super) fn settle(&mut self, force: bool) -> Vec<Arc<str>> {
        if self.until.is_none() || !(force || (self.expected.is_empty() && self.rejoins.is_empty()))
        {
            return Vec::new();
        }
        self.until = None;
        self.rejoins.clear();
        std::mem::take(&mut self.expected)
    }

    /// Holds a command while settling; gives it back otherwise, or when the
    /// queue is full (the wait ends; the caller runs what is held first).
    pub(super) fn defer(&mut self, cmd: Command) -> Option<Command> {
        if !self.settling() {
            return Some(cmd);
        }
        if self.deferred.len() >= MAX_DEFERRED {
            return Some(cmd);
        }
        self.deferred.push_back(cmd);
        None
    }

    /// The next held command, once the wait is over.
    pub(super) fn next_deferred(&mut self) -> Option<Command> {
        if self.settling() { None } else { self.deferred.pop_front() }
    }

    /// Everything held (the room moves or leaves memory).
    pub(super) fn take_deferred(&mut self) -> VecDeque<Command> {
        self.until = None;
        std::mem::take(&mut self.deferred)
    }

    /// Whether the message tagged `tag` of `gateway`, sent again, already
    /// ran.
    pub(super) fn already_ran(&self, gateway: GatewayId, tag: u64) -> bool {
        let (Some(name), Some(ran)) = (self.names.get(&gateway), &self.ran) else { return false };
        ran.get(name).is_some_and(|last| *last >= tag)
    }

    /// The message tagged `tag` of `gateway` runs now.
    pub(super) fn run(&mut self, gateway: GatewayId, tag: u64) {
        let (Some(name), Some(ran)) = (self.names.get(&gateway), &mut self.ran) else { return };
        let last = ran.entry(Arc::clone(name)).or_insert(0);
        if tag > *last {
            *last = tag;
            if !self.dirty.contains(name) {
                self.dirty.push(Arc::clone(name));
            }
        }
    }

    /// A socket of `gateway` was accepted: the gateway is one to wait for
    /// if the room changes owner.
    pub(super) fn has_sockets(&mut self, gateway: GatewayId) {
        let (Some(name), Some(ran)) = (self.names.get(&gateway), &mut self.ran) else { return };
        if !ran.contains_key(name) {
            ran.insert(Arc::clone(name), 0);
            self.dirty.push(Arc::clone(name));
        }
    }

    /// Whether the next commit has bookkeeping to store.
    pub(super) fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
            || self.detached.values().any(|since| since.elapsed() >= FORGET_AFTER)
    }

    /// The bookkeeping writes of the next commit: tags run, gateways
    /// forgotten. Taken: a failed commit drops the instance and the room
    /// reloads them.
    pub(super) fn writes(&mut self) -> Vec<StorageWrite> {
        let Some(ran) = &mut self.ran else { return Vec::new() };
        let mut writes: Vec<StorageWrite> = self
            .dirty
            .drain(..)
            .filter_map(|name| Some(StorageWrite::Ran(name.to_string(), *ran.get(&name)?)))
            .collect();
        let gone: Vec<Arc<str>> = self
            .detached
            .iter()
            .filter(|(_, since)| since.elapsed() >= FORGET_AFTER)
            .map(|(name, _)| Arc::clone(name))
            .collect();
        for name in gone {
            self.detached.remove(&name);
            if ran.remove(&name).is_some() {
                writes.push(StorageWrite::Forget(name.to_string()));
            }
        }
        writes
    }

    /// The room leaves memory with no gateway attached: no gateway is to
    /// be waited for or de-duplicated any more.
    pub(super) fn forget_all(&mut self) -> Vec<StorageWrite> {
        self.dirty.clear();
        self.detached.clear();
        let ran = self.ran.take().unwrap_or_default();
        ran.into_keys().map(|name| StorageWrite::Forget(name.to_string())).collect()
    }

    /// A commit failed: what the room ran is the store's again (reloaded
    /// with the next instance).
    pub(super) fn forget_loaded(&mut self) {
        self.ran = None;
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_new_owner_waits_for_the_gateways_it_knows_and_their_sockets() {
        let mut gateways = Gateways::default();
        gateways.attached(1, "a".into(), 2);
        gateways.loaded(vec![("a".into(), 7), ("b".into(), 3)]);
        assert!(gateways.settling());
        gateways.rejoined(1);
        gateways.rejoined(1);
        assert!(gateways.settle(false).is_empty());
        assert!(gateways.settling(), "b has not come back");
        gateways.attached(2, "b".into(), 0);
        gateways.settle(false);
        assert!(!gateways.settling());
        assert!(gateways.already_ran(1, 7) && !gateways.already_ran(1, 8));
        assert!(gateways.already_ran(2, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_that_never_comes_is_given_up_then_forgotten_in_the_store() {
        let mut gateways = Gateways::default();
        gateways.loaded(vec![("gone".into(), 4)]);
        tokio::time::advance(SETTLE).await;
        assert_eq!(gateways.settle(true), vec![Arc::<str>::from("gone")]);
        assert!(gateways.writes().is_empty(), "not yet forgotten");
        tokio::time::advance(FORGET_AFTER).await;
        assert!(gateways.is_dirty());
        assert_eq!(gateways.writes(), [StorageWrite::Forget("gone".into())]);
        assert!(gateways.writes().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn tags_run_are_written_once_and_a_full_queue_ends_the_wait() {
        let mut gateways = Gateways::default();
        gateways.loaded(Vec::new());
        gateways.attached(1, "a".into(), 0);
        gateways.has_sockets(1);
        gateways.run(1, 5);
        gateways.run(1, 4);
        assert_eq!(gateways.writes(), [StorageWrite::Ran("a".into(), 5)]);
        assert!(!gateways.is_dirty());
        gateways.attached(2, "b".into(), 1);
        for _ in 0..MAX_DEFERRED {
            assert!(gateways.defer(Command::Detach { gateway: 9 }).is_none());
        }
        assert!(gateways.defer(Command::Detach { gateway: 9 }).is_some(), "full");
    }
}
