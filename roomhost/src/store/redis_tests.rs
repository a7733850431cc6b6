//! The Redis store against a real `redis-server`, started and stopped by
//! each test.

use std::time::Duration;

use rooms_proto::RoomId;
use rooms_tests::redis::Redis;

use super::redis::RedisStore;
use crate::store::{
    Acquired, Commit, Event, IfHeld, Lease, Owner, Renewal, StorageWrite, StoreError,
};

#[tokio::test]
async fn class_storage_writes_apply_in_order_only_under_the_lease() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(&redis.url(), 100).await.unwrap();
    let room = RoomId::parse("game-1").unwrap();
    let me = Owner::new("a:1");
    let ttl = Duration::from_secs(5);
    let Acquired::Ours(lease) = store.acquire(&room, &me, ttl, IfHeld::Report).await.unwrap()
    else {
        panic!("the lease is free");
    };
    let put = |k: &str, v: &str| StorageWrite::Put(k.into(), v.into());
    let writes = [put("a", "j1"), put("b", "j2"), StorageWrite::Delete("a".into())];
    store.commit_storage(&room, &me, lease, &writes).await.unwrap();
    assert_eq!(store.load_storage(&room).await.unwrap(), [("b".to_owned(), "j2".to_owned())]);
    let ran = |gateway: &str, tag| StorageWrite::Ran(gateway.into(), tag);
    let writes = [StorageWrite::DeleteAll, put("c", "b AQI="), ran("gw-a", 7), ran("gw-b", 0)];
    store.commit_storage(&room, &me, lease, &writes).await.unwrap();
    assert_eq!(store.load_storage(&room).await.unwrap(), [("c".to_owned(), "b AQI=".to_owned())]);
    // What the room ran per gateway lives beside the storage: deleting
    // every key leaves it.
    let writes = [StorageWrite::DeleteAll, put("c", "b AQI="), StorageWrite::Forget("gw-b".into())];
    store.commit_storage(&room, &me, lease, &writes).await.unwrap();
    assert_eq!(store.load_ran(&room).await.unwrap(), [("gw-a".to_owned(), 7)]);
    // A stale fence writes nothing.
    let stale = Lease { fence: lease.fence + 1 };
    let refused = store.commit_storage(&room, &me, stale, &[put("d", "j4")]).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)));
    let other = Owner::new("b:1");
    let refused = store.commit_storage(&room, &other, lease, &[put("d", "j4")]).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)));
    let refused = store.commit_storage(&room, &other, lease, &[ran("gw-a", 9)]).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)));
    assert_eq!(store.load_storage(&room).await.unwrap().len(), 1);
    assert_eq!(store.load_ran(&room).await.unwrap(), [("gw-a".to_owned(), 7)]);
}

#[tokio::test]
async fn alarms_are_stored_under_the_lease_and_the_index_finds_rooms_due() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(&redis.url(), 100).await.unwrap();
    let room = RoomId::parse("game-2").unwrap();
    let me = Owner::new("a:1");
    let Acquired::Ours(lease) =
        store.acquire(&room, &me, Duration::from_secs(5), IfHeld::Report).await.unwrap()
    else {
        panic!("the lease is free");
    };
    let alarm = |name: &str, at| StorageWrite::Alarm(name.into(), at);
    let writes = [alarm("", Some(1_000)), alarm("tick", Some(500)), alarm("tock", Some(9))];
    store.commit_storage(&room, &me, lease, &writes).await.unwrap();
    store.commit_storage(&room, &me, lease, &[alarm("tock", None)]).await.unwrap();
    let mut stored = store.load_alarms(&room).await.unwrap();
    stored.sort();
    assert_eq!(stored, [(String::new(), 1_000), ("tick".to_owned(), 500)]);
    let stale = Lease { fence: lease.fence + 1 };
    let refused = store.commit_storage(&room, &me, stale, &[alarm("", None)]).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)));
    // The index: lowered before a commit, exact after; due rooms earliest first.
    let other = RoomId::parse("game-3").unwrap();
    store.lower_alarm(&room, 700).await.unwrap();
    store.lower_alarm(&room, 900).await.unwrap(); // never raises
    store.index_alarm(&other, Some(600)).await.unwrap();
    let due = store.due_alarms(800, 10).await.unwrap();
    assert_eq!(due, [("game-3".to_owned(), 600), ("game-2".to_owned(), 700)]);
    store.index_alarm(&room, Some(500)).await.unwrap();
    store.index_alarm(&other, None).await.unwrap();
    assert_eq!(store.due_alarms(800, 10).await.unwrap(), [("game-2".to_owned(), 500)]);
    assert!(store.due_alarms(499, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn many_leases_renew_in_one_call_each_answered_for_its_room() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(&redis.url(), 100).await.unwrap();
    let (me, other) = (Owner::new("a:1"), Owner::new("b:1"));
    let ttl = Duration::from_millis(500);
    let mut leases = Vec::new();
    for name in ["kept", "claimed", "lost"] {
        let room = RoomId::parse(name).unwrap();
        let Acquired::Ours(lease) = store.acquire(&room, &me, ttl, IfHeld::Report).await.unwrap()
        else {
            panic!("the lease is free");
        };
        leases.push((room, lease));
    }
    let claimed = store.acquire(&leases[1].0, &other, ttl, IfHeld::Claim).await.unwrap();
    assert!(matches!(claimed, Acquired::HeldBy(_)));
    store.release(&leases[2].0, &me, leases[2].1).await.unwrap();
    let renewed = store.renew_many(&leases, &me, Duration::from_secs(60)).await.unwrap();
    assert_eq!(renewed, [Renewal::Ours, Renewal::Claimed(other.clone()), Renewal::Lost]);
    // Renewed for a minute: long after the first TTL, still ours.
    tokio::time::sleep(ttl * 2).await;
    let taken = store.acquire(&leases[0].0, &other, ttl, IfHeld::Report).await.unwrap();
    assert_eq!(taken, Acquired::HeldBy(me.clone()));
    // A stale fence renews nothing.
    let stale = [(leases[0].0.clone(), Lease { fence: leases[0].1.fence + 1 })];
    assert_eq!(store.renew_many(&stale, &me, ttl).await.unwrap(), [Renewal::Lost]);
}

#[tokio::test]
async fn a_commit_renews_its_lease_and_answers_a_claim_as_a_renewal_would() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(&redis.url(), 100).await.unwrap();
    let room = RoomId::parse("chat-1").unwrap();
    let (me, other) = (Owner::new("a:1"), Owner::new("b:1"));
    let ttl = Duration::from_millis(500);
    let Acquired::Ours(lease) = store.acquire(&room, &me, ttl, IfHeld::Report).await.unwrap()
    else {
        panic!("the lease is free");
    };
    let chat = |seq: u64| Commit {
        events: vec![Event { seq, frame: format!("{{\"seq\":{seq}}}").into() }],
        names: vec![("u1".into(), format!("U{seq}"))],
    };
    let minute = Duration::from_secs(60);
    assert_eq!(store.commit(&room, (&me, lease), &chat(1), minute).await.unwrap(), Renewal::Ours);
    // Extended for a minute: long after the first TTL, still ours.
    tokio::time::sleep(ttl * 2).await;
    let claimed = store.acquire(&room, &other, ttl, IfHeld::Claim).await.unwrap();
    assert_eq!(claimed, Acquired::HeldBy(me.clone()));
    // The claim comes back with the next commit, which is stored all the same.
    let answer = store.commit(&room, (&me, lease), &chat(2), minute).await.unwrap();
    assert_eq!(answer, Renewal::Claimed(other.clone()));
    // A stale fence or another owner stores nothing.
    let stale = Lease { fence: lease.fence + 1 };
    let refused = store.commit(&room, (&me, stale), &chat(3), minute).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let refused = store.commit(&room, (&other, lease), &chat(3), minute).await;
    assert!(matches!(refused, Err(StoreError::LeaseLost)), "{refused:?}");
    let loaded = store.load(&room).await.unwrap();
    assert_eq!(loaded.seq, 2);
    assert_eq!(loaded.recent.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(loaded.names, [("u1".to_owned(), "U2".to_owned())]);
}
