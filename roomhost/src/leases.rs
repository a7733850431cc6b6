//! The leases of every room this roomhost owns, renewed together: one task
//! per roomhost renews whatever is due in batches of [`BATCH`] (one script
//! call each on a single Redis), instead of a task, a timer and a Redis
//! call per room. A lease is due half a TTL after it was last extended;
//! renewals due within the next sixth of a TTL go with the batch at hand,
//! so rooms renewed together stay together.
//!
//! A room's commits extend its lease too, and answer what a renewal would
//! ([`Renewer::renewed`]): a room that commits at least every third of a
//! TTL costs no renewals of its own — in quiet chat rooms that was most of
//! the renewals, a script call's share per message.
//!
//! The renewals run on their own task, whatever the rooms are doing — a
//! long turn (a slow Redis makes every commit slow) never delays a renewal
//! past the lease. Each batch waits for the store at most until the first
//! of its leases would run out by this process's clock. What a room must
//! act on goes to its [`Renewer`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rooms_proto::RoomId;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::store::{Lease, Owner, Renewal, Store, StoreError};

/// Leases renewed by one store call at most.
pub const BATCH: usize = 16;
/// How often the task looks for due renewals; also how soon a failed one
/// is tried again, so that a store that is back keeps the lease.
const TICK: Duration = Duration::from_millis(100);
/// How long after a lease was extended it is renewed (less up to a sixth of
/// the TTL, to join a batch): at least half the TTL is left to retry in.
fn due_after(extended: Instant, ttl: Duration) -> Instant {
    extended + ttl / 2
}

/// When a renewal could not be confirmed in time, how long a room waits
/// for the store to say whether it may keep the lease before giving the
/// room up.
pub(crate) const LAPSE_RECHECK: Duration = Duration::from_millis(500);

/// Checks waiting for a room to take them; past it, newer ones are dropped
/// (the room acts on the ones before, and the next renewal finds the same).
const CHECKS_QUEUED: usize = 4;

/// What a renewal found that the room must act on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaseCheck {
    /// The store says the lease is not ours: re-check before the next write.
    Suspect,
    /// Still ours, but gateways that could not reach us went to this
    /// roomhost: hand the room over to it.
    Claimed(String),
    /// The store could not confirm the lease before it ran out: another
    /// roomhost may take the room now.
    Lapsed,
}

/// The renewals of one roomhost; the task stops when this is dropped.
pub(crate) struct Leases {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    store: Store,
    owner: Owner,
    ttl: Duration,
    /// One entry per room that holds its lease here (bounded by the rooms a
    /// roomhost may hold, `--max-rooms`).
    rooms: Mutex<HashMap<RoomId, Entry>>,
    next_id: std::sync::atomic::AtomicU64,
    /// What each room's `until` is counted from, in its [`Checks`].
    epoch: Instant,
}

struct Entry {
    /// Which renewer registered it (a room started again gets a new one).
    id: u64,
    lease: Lease,
    /// When it is to be renewed next.
    due: Instant,
    /// Also until when the lease surely holds, by this process's clock.
    checks: Arc<Checks>,
}

impl Entry {
    /// The lease surely holds until `until`, and is renewed at `due`.
    fn extend(&mut self, epoch: Instant, until: Instant, due: Instant) {
        self.due = due;
        self.checks.hold_until(epoch, until);
    }

    fn until(&self, epoch: Instant) -> Instant {
        self.checks.until(epoch)
    }
}

/// What the renewals tell a room: its findings, waiting for it to act on
/// them (at most [`CHECKS_QUEUED`]), and until when its lease surely holds,
/// which every store call of the room reads without the map's lock. A
/// queue and a wake-up rather than a channel, whose first block alone (32
/// slots) would cost every active room 800 bytes.
#[derive(Default)]
struct Checks {
    queue: Mutex<VecDeque<LeaseCheck>>,
    ready: Notify,
    /// Until when the lease surely holds, in nanoseconds after
    /// [`Shared::epoch`].
    until: std::sync::atomic::AtomicU64,
}

impl Checks {
    fn hold_until(&self, epoch: Instant, until: Instant) {
        let nanos = u64::try_from(until.saturating_duration_since(epoch).as_nanos());
        self.until.store(nanos.unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    fn until(&self, epoch: Instant) -> Instant {
        epoch + Duration::from_nanos(self.until.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Past the limit the newer finding is dropped: the room acts on the
    /// ones before, and the next renewal finds the same.
    fn push(&self, check: LeaseCheck) {
        let mut queue = self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.len() < CHECKS_QUEUED {
            queue.push_back(check);
            drop(queue);
            self.ready.notify_one();
        }
    }

    fn pop(&self) -> Option<LeaseCheck> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop_front()
    }
}

impl Leases {
    pub(crate) fn start(store: Store, owner: Owner, ttl: Duration) -> Arc<Self> {
        let shared = Arc::new(Shared {
            store,
            owner,
            ttl,
            rooms: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            epoch: Instant::now(),
        });
        let task = tokio::spawn(renew(Arc::clone(&shared)));
        Arc::new(Self { shared, task })
    }

    /// Starts renewing `room`'s `lease`, which surely holds until `until`.
    pub(crate) fn watch(
        self: &Arc<Self>,
        room: RoomId,
        (lease, until): (Lease, Instant),
    ) -> Renewer {
        let id = self.shared.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let checks = Arc::new(Checks::default());
        checks.hold_until(self.shared.epoch, until);
        let due = due_after(Instant::now(), self.shared.ttl);
        let entry = Entry { id, lease, due, checks: Arc::clone(&checks) };
        self.shared.rooms().insert(room.clone(), entry);
        Renewer { leases: Arc::clone(self), room, id, checks }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn rooms(&self) -> MutexGuard<'_, HashMap<RoomId, Entry>> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One room's part: what its renewals found, and its lease taken again.
/// Dropping it stops the renewals.
pub(crate) struct Renewer {
    leases: Arc<Leases>,
    room: RoomId,
    id: u64,
    checks: Arc<Checks>,
}

impl Renewer {
    /// The room took its lease again (`lease`, surely held until `until`).
    pub(crate) fn retaken(&self, lease: Lease, until: Instant) {
        let shared = &self.leases.shared;
        if let Some(entry) = shared.rooms().get_mut(&self.room).filter(|e| e.id == self.id) {
            entry.lease = lease;
            entry.extend(shared.epoch, until, due_after(Instant::now(), shared.ttl));
        }
    }

    /// Until when the lease surely holds, by this process's clock.
    pub(crate) fn until(&self) -> Instant {
        self.checks.until(self.leases.shared.epoch)
    }

    /// A store call the room waits for, waited for only while the lease
    /// surely holds: past that an answer could not be acted on (another
    /// roomhost may hold the room now), and the room must take up the
    /// lapse its renewals report — a partition from the store must not
    /// keep the room, and its gateways, waiting past the lease. Past it
    /// the call fails as a timeout would: what it wrote may have landed.
    pub(crate) async fn within_lease<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let until = self.until();
        tokio::time::timeout_at(until, call).await.unwrap_or(Err(StoreError::LeaseRanOut))
    }

    /// A commit sent at `started` under `lease` extended it: the next
    /// renewal waits. (A claim the commit found, the room acts on itself.)
    pub(crate) fn renewed(&self, lease: Lease, started: Instant) {
        let shared = &self.leases.shared;
        let ttl = shared.ttl;
        let mut rooms = shared.rooms();
        let entry = rooms.get_mut(&self.room).filter(|e| e.id == self.id && e.lease == lease);
        if let Some(entry) = entry.filter(|e| e.until(shared.epoch) < started + ttl) {
            entry.extend(shared.epoch, started + ttl, due_after(started, ttl));
        }
    }

    /// The next finding the room must act on.
    pub(crate) async fn next(&mut self) -> LeaseCheck {
        // Cancel-safe (the room selects on it): a finding stays queued
        // until taken, and a wake-up not waited for is kept for the next.
        loop {
            if let Some(check) = self.checks.pop() {
                return check;
            }
            self.checks.ready.notified().await;
        }
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        let mut rooms = self.leases.shared.rooms();
        if rooms.get(&self.room).is_some_and(|e| e.id == self.id) {
            rooms.remove(&self.room);
        }
    }
}

/// Which renewer registered a lease, and until when it surely holds.
type Holder = (u64, Instant);

async fn renew(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Renewed early rather than a tick later: batches stay together.
        let horizon = Instant::now() + shared.ttl / 6;
        // The leases to renew, and beside them which renewer and until when.
        let (leases, holders): (Vec<(RoomId, Lease)>, Vec<Holder>) = shared
            .rooms()
            .iter()
            .filter(|(_, e)| e.due <= horizon)
            .map(|(room, e)| ((room.clone(), e.lease), (e.id, e.until(shared.epoch))))
            .unzip();
        for (leases, holders) in leases.chunks(BATCH).zip(holders.chunks(BATCH)) {
            renew_batch(&shared, leases, holders).await;
        }
    }
}

async fn renew_batch(shared: &Shared, leases: &[(RoomId, Lease)], holders: &[Holder]) {
    let started = Instant::now();
    // Bounded by the first lease to run out (one that already did gets no
    // say: its room is re-checking it), and by a tick at least.
    let first_end = holders.iter().map(|h| h.1).filter(|until| *until > started).min();
    let wait = first_end.map_or(TICK, |until| until - started).max(TICK);
    let answers =
        tokio::time::timeout(wait, shared.store.renew_many(leases, &shared.owner, shared.ttl));
    let answers = match answers.await {
        Ok(Ok(answers)) => Some(answers),
        Ok(Err(error)) => {
            tracing::warn!(%error, rooms = leases.len(), "lease renewals failed; retrying");
            None
        }
        Err(_) => {
            tracing::warn!(rooms = leases.len(), "lease renewals timed out; retrying");
            None
        }
    };
    let now = Instant::now();
    let mut rooms = shared.rooms();
    for (i, ((room, lease), (id, _))) in leases.iter().zip(holders).enumerate() {
        // Gone, started again, or taken again meanwhile: not this answer's.
        let Some(entry) = rooms.get_mut(room).filter(|e| e.id == *id && e.lease == *lease) else {
            continue;
        };
        let check = match answers.as_ref().map(|a| &a[i]) {
            Some(Renewal::Ours) => {
                entry.extend(shared.epoch, started + shared.ttl, due_after(started, shared.ttl));
                continue;
            }
            Some(Renewal::Claimed(by)) => {
                entry.extend(shared.epoch, started + shared.ttl, due_after(started, shared.ttl));
                tracing::info!(room.id = %room, claimant = %by.0, "a gateway could not reach this roomhost; handing the room to the roomhost it reached");
                LeaseCheck::Claimed(by.address().to_owned())
            }
            Some(Renewal::Lost) => {
                entry.due = started + shared.ttl / 3;
                LeaseCheck::Suspect
            }
            None if now < entry.until(shared.epoch) => {
                entry.due = now + TICK;
                continue;
            }
            // Told once per third of a TTL, as a renewal would be: the room
            // re-checks the lease itself meanwhile.
            None => {
                entry.due = started + shared.ttl / 3;
                LeaseCheck::Lapsed
            }
        };
        // A room that has not taken the checks before acts on those first.
        entry.checks.push(check);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Acquired, IfHeld, MemoryStore};

    const TTL: Duration = Duration::from_millis(300);

    async fn held(store: &Store, room: &RoomId, owner: &Owner) -> (Lease, Instant) {
        match store.acquire(room, owner, TTL, IfHeld::Report).await.unwrap() {
            Acquired::Ours(lease) => (lease, Instant::now() + TTL),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn findings_wait_in_order_up_to_the_limit_and_a_wake_up_is_never_lost() {
        let checks = Arc::new(Checks::default());
        let store = Store::Memory(MemoryStore::new(10));
        let leases = Leases::start(store, Owner::new("a:1"), TTL);
        let room = RoomId::parse("r").unwrap();
        let mut renewer = Renewer { leases, room, id: 0, checks: Arc::clone(&checks) };
        // A finding pushed while the room waits wakes it.
        let pusher = Arc::clone(&checks);
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            pusher.push(LeaseCheck::Lapsed);
        });
        let first = tokio::time::timeout(TTL, renewer.next()).await.expect("woken");
        assert_eq!(first, LeaseCheck::Lapsed);
        // Past the limit, newer findings are dropped; the rest come in order.
        for i in 0..CHECKS_QUEUED + 2 {
            checks.push(LeaseCheck::Claimed(format!("h:{i}")));
        }
        for i in 0..CHECKS_QUEUED {
            assert_eq!(renewer.next().await, LeaseCheck::Claimed(format!("h:{i}")));
        }
        let none = tokio::time::timeout(TTL / 3, renewer.next()).await;
        assert!(none.is_err(), "{none:?}");
    }

    #[tokio::test]
    async fn renewed_leases_are_kept_and_a_claim_is_reported() {
        let store = Store::Memory(MemoryStore::new(10));
        let me = Owner::new("a:1");
        let leases = Leases::start(store.clone(), me.clone(), TTL);
        let rooms: Vec<RoomId> = (0..3).map(|i| RoomId::parse(&format!("r{i}")).unwrap()).collect();
        let mut renewers = Vec::new();
        for room in &rooms {
            renewers.push(leases.watch(room.clone(), held(&store, room, &me).await));
        }
        // Renewed past several TTLs: nobody else can take any of them.
        tokio::time::sleep(TTL * 3).await;
        let other = Owner::new("b:1");
        for room in &rooms {
            assert!(matches!(
                store.acquire(room, &other, TTL, IfHeld::Report).await.unwrap(),
                Acquired::HeldBy(_)
            ));
        }
        // A claim reaches the owner of that room only, at its next renewal.
        assert!(matches!(
            store.acquire(&rooms[1], &other, TTL, IfHeld::Claim).await.unwrap(),
            Acquired::HeldBy(_)
        ));
        let check = tokio::time::timeout(TTL, renewers[1].next()).await.expect("a check");
        assert_eq!(check, LeaseCheck::Claimed("b:1".into()));
        let quiet = tokio::time::timeout(TTL, renewers[0].next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
    }

    #[tokio::test]
    async fn a_commit_that_extended_the_lease_puts_its_renewal_off() {
        let store = Store::Memory(MemoryStore::new(10));
        let me = Owner::new("a:1");
        // A TTL the renewal task never reaches while the test looks.
        let ttl = Duration::from_secs(60);
        let leases = Leases::start(store.clone(), me.clone(), ttl);
        let room = RoomId::parse("r").unwrap();
        let (lease, until) = held(&store, &room, &me).await;
        let renewer = leases.watch(room.clone(), (lease, until));
        let epoch = leases.shared.epoch;
        let entry = || leases.shared.rooms().get(&room).map(|e| (e.until(epoch), e.due)).unwrap();
        let started = Instant::now();
        renewer.renewed(lease, started);
        assert_eq!(entry(), (started + ttl, started + ttl / 2));
        // The room's store calls see the same bound.
        assert_eq!(renewer.until(), started + ttl);
        // An older commit's answer, or one under a lease taken since, changes nothing.
        renewer.renewed(lease, started - ttl / 4);
        renewer.renewed(Lease { fence: lease.fence + 1 }, started + ttl / 4);
        assert_eq!(entry(), (started + ttl, started + ttl / 2));
    }

    #[tokio::test]
    async fn a_lease_taken_by_another_is_suspect_and_a_dropped_renewer_stops_renewing() {
        let store = Store::Memory(MemoryStore::new(10));
        let me = Owner::new("a:1");
        let leases = Leases::start(store.clone(), me.clone(), TTL);
        let (lost, dropped) = (RoomId::parse("lost").unwrap(), RoomId::parse("dropped").unwrap());
        let lease = held(&store, &lost, &me).await;
        let mut renewer = leases.watch(lost.clone(), lease);
        drop(leases.watch(dropped.clone(), held(&store, &dropped, &me).await));
        store.release(&lost, &me, lease.0).await.unwrap();
        let other = Owner::new("b:1");
        assert!(matches!(
            store.acquire(&lost, &other, TTL, IfHeld::Report).await.unwrap(),
            Acquired::Ours(_)
        ));
        let check = tokio::time::timeout(TTL, renewer.next()).await.expect("a check");
        assert_eq!(check, LeaseCheck::Suspect);
        // Nobody renews the dropped room's lease: it runs out.
        tokio::time::sleep(TTL * 2).await;
        assert!(matches!(
            store.acquire(&dropped, &other, TTL, IfHeld::Report).await.unwrap(),
            Acquired::Ours(_)
        ));
    }
}
