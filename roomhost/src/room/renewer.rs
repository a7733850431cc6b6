//! A room's lease renewals, on a task of their own: every third of the TTL,
//! whatever the room is doing — a long turn (a slow Redis makes every commit
//! slow) never delays a renewal past the lease. Each renewal waits for the
//! store at most until the lease would run out by this process's clock;
//! what the actor must act on is sent to it.

use std::time::Duration;

use rooms_proto::RoomId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::store::{Lease, Owner, Renewal, Store};

/// After a renewal failed (Redis unreachable for a moment), the next try
/// comes this soon rather than a third of a TTL later: a store that is back
/// keeps the lease.
const RETRY: Duration = Duration::from_millis(100);

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

pub(crate) struct Renewer {
    checks: mpsc::Receiver<LeaseCheck>,
    /// The lease to renew and until when it surely holds, when the room
    /// took it again.
    retaken: watch::Sender<(Lease, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewer {
    /// Starts renewing `lease`, which surely holds until `until`.
    pub(crate) fn start(
        room: RoomId,
        store: Store,
        owner: Owner,
        ttl: Duration,
        (lease, until): (Lease, Instant),
    ) -> Self {
        let (checks_tx, checks) = mpsc::channel(1);
        let (retaken, retaken_rx) = watch::channel((lease, until));
        let task = tokio::spawn(renew(room, store, owner, ttl, retaken_rx, checks_tx));
        Self { checks, retaken, task }
    }

    /// The room took its lease again (`lease`, surely held until `until`).
    pub(super) fn retaken(&self, lease: Lease, until: Instant) {
        let _ = self.retaken.send((lease, until));
    }

    /// The next finding the room must act on.
    pub(crate) async fn next(&mut self) -> LeaseCheck {
        match self.checks.recv().await {
            Some(check) => check,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn renew(
    room: RoomId,
    store: Store,
    owner: Owner,
    ttl: Duration,
    mut retaken: watch::Receiver<(Lease, Instant)>,
    checks: mpsc::Sender<LeaseCheck>,
) {
    let (mut lease, mut until) = *retaken.borrow_and_update();
    let mut next = Instant::now() + ttl / 3;
    loop {
        tokio::time::sleep_until(next).await;
        if retaken.has_changed().unwrap_or(false) {
            (lease, until) = *retaken.borrow_and_update();
        }
        let started = Instant::now();
        next = started + ttl / 3;
        let left = until.saturating_duration_since(started);
        let check = match tokio::time::timeout(left, store.renew(&room, &owner, lease, ttl)).await {
            Ok(Ok(Renewal::Ours)) => {
                until = started + ttl;
                continue;
            }
            Ok(Ok(Renewal::Claimed(by))) => {
                until = started + ttl;
                tracing::info!(room.id = %room, claimant = %by.0, "a gateway could not reach this roomhost; handing the room to the roomhost it reached");
                LeaseCheck::Claimed(by.address().to_owned())
            }
            Ok(Ok(Renewal::Lost)) => LeaseCheck::Suspect,
            Ok(Err(error)) if Instant::now() < until => {
                tracing::warn!(room.id = %room, %error, "lease renewal failed; retrying");
                next = Instant::now() + RETRY;
                continue;
            }
            Ok(Err(_)) | Err(_) => LeaseCheck::Lapsed,
        };
        if checks.send(check).await.is_err() {
            return;
        }
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
    async fn a_renewed_lease_is_kept_and_a_claim_is_reported() {
        let store = Store::Memory(MemoryStore::new(10));
        let room = RoomId::parse("r").unwrap();
        let me = Owner::new("a:1");
        let mut renewer = Renewer::start(
            room.clone(),
            store.clone(),
            me.clone(),
            TTL,
            held(&store, &room, &me).await,
        );
        // Renewed past several TTLs: nobody else can take it.
        tokio::time::sleep(TTL * 3).await;
        let other = Owner::new("b:1");
        assert!(matches!(
            store.acquire(&room, &other, TTL, IfHeld::Claim).await.unwrap(),
            Acquired::HeldBy(_)
        ));
        // ... but the claim reaches the owner at its next renewal.
        let check = tokio::time::timeout(TTL, renewer.next()).await.expect("a check");
        assert_eq!(check, LeaseCheck::Claimed("b:1".into()));
    }

    #[tokio::test]
    async fn a_lease_taken_by_another_is_suspect() {
        let store = Store::Memory(MemoryStore::new(10));
        let room = RoomId::parse("r").unwrap();
        let me = Owner::new("a:1");
        let lease = held(&store, &room, &me).await;
        let mut renewer = Renewer::start(room.clone(), store.clone(), me.clone(), TTL, lease);
        store.release(&room, &me, lease.0).await.unwrap();
        let other = Owner::new("b:1");
        assert!(matches!(
            store.acquire(&room, &other, TTL, IfHeld::Report).await.unwrap(),
            Acquired::Ours(_)
        ));
        let check = tokio::time::timeout(TTL, renewer.next()).await.expect("a check");
        assert_eq!(check, LeaseCheck::Suspect);
    }
}
