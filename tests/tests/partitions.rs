//! Network faults, for real: Redis, roomhosts, gateways and the clients each
//! in their own network namespace. Packets between two of them silently
//! dropped, a roomhost frozen for longer than its lease, a slow and lossy
//! Redis, membership seen at different times by gateways and roomhosts. The
//! history checker asks for nothing lost or duplicated, every send answered,
//! and every client served again within the fault's bound.

use std::time::Duration;

use rooms_tests::checker::{Fault, check};
use rooms_tests::load::Load;
use rooms_tests::netcluster::{GATEWAYS, Impairment, NetCluster, REDIS, ROOMHOSTS};
use tokio::time::Instant;

const LEASE_TTL: Duration = Duration::from_secs(2);
const CUT: Duration = Duration::from_secs(8);

/// Two receivers and one sender (8 a second) on each gateway.
async fn load(cluster: &NetCluster, room: &str) -> Load {
    let mut clients = Vec::new();
    for &g in &GATEWAYS {
        for c in 0..3 {
            let user = format!("{room}-g{g}c{c}");
            let every = (c == 0).then_some(Duration::from_millis(125));
            clients.push((user.clone(), cluster.join(g, room, &user).await, every));
        }
    }
    Load::start_mixed(clients)
}

/// Starts load in `room` and lets it run a second before a fault.
async fn begin(cluster: &NetCluster, room: &str) -> Load {
    let load = load(cluster, room).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    load
}

/// Lets the room run on after `fault`, then checks the history.
async fn finish(load: Load, fault: Fault) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;
    let report = check(&outcomes, std::slice::from_ref(&fault), true);
    eprintln!("{}:\n{}", fault.kind, report.table());
    report.assert_live();
}

/// Cuts host pairs for [`CUT`], then heals them.
async fn partition(cluster: &NetCluster, kind: &str, pairs: &[(usize, usize)]) -> Fault {
    let start = Instant::now();
    for &(a, b) in pairs {
        cluster.net.cut(a, b);
    }
    tokio::time::sleep(CUT).await;
    for &(a, b) in pairs {
        cluster.net.heal(a, b);
    }
    Fault::crash(kind, start, LEASE_TTL).until(Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_heal_within_a_lease_and_lose_nothing() {
    let Some(cluster) = NetCluster::start(LEASE_TTL).await else {
        return; // said why: SKIPPED
    };
    let owner = cluster.ring_owner("cut-redis");
    let load = begin(&cluster, "cut-redis").await;
    let fault = partition(&cluster, "owner cut off from Redis", &[(owner, REDIS)]).await;
    finish(load, fault).await;

    let owner = cluster.ring_owner("cut-gateways");
    let load = begin(&cluster, "cut-gateways").await;
    let pairs: Vec<(usize, usize)> = GATEWAYS.iter().map(|&g| (owner, g)).collect();
    let fault = partition(&cluster, "owner cut off from the gateways", &pairs).await;
    finish(load, fault).await;

    let owner = cluster.ring_owner("cut-one-gateway");
    let load = begin(&cluster, "cut-one-gateway").await;
    let fault =
        partition(&cluster, "one gateway cut off from the owner", &[(owner, GATEWAYS[0])]).await;
    finish(load, fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_a_slow_redis_and_skewed_membership() {
    let Some(mut cluster) = NetCluster::start(LEASE_TTL).await else {
        return; // said why: SKIPPED
    };
    let owner = cluster.ring_owner("frozen");
    let load = begin(&cluster, "frozen").await;
    let start = Instant::now();
    cluster.signal(owner, "-STOP");
    tokio::time::sleep(LEASE_TTL * 3).await;
    cluster.signal(owner, "-CONT");
    let kind = "owner frozen (SIGSTOP) for 3 leases";
    finish(load, Fault::crash(kind, start, LEASE_TTL).until(Instant::now())).await;

    let load = begin(&cluster, "slow-redis").await;
    let start = Instant::now();
    cluster.impair_redis(Impairment { delay: Duration::from_millis(200), hold_one_in: 20 });
    tokio::time::sleep(CUT).await;
    cluster.impair_redis(Impairment::default());
    let kind = "Redis 200 ms away, 1 chunk in 20 held longer";
    finish(load, Fault::crash(kind, start, LEASE_TTL).until(Instant::now())).await;

    // A fourth roomhost that the ring gives the room: roomhosts see it 3 s
    // before the gateways do.
    let members: Vec<String> = ROOMHOSTS.iter().map(|&h| cluster.member(h)).collect();
    let ring = rooms_cluster::Ring::new(members, 0);
    let fourth = cluster.member(ROOMHOSTS[3]);
    let room = (0..200)
        .map(|i| format!("skew-{i}"))
        .find(|room| ring.owner(&rooms_proto::RoomId::parse(room).unwrap()) == Some(&fourth))
        .expect("a room for the fourth roomhost");
    cluster.spawn_roomhost(ROOMHOSTS[3]).await;
    let load = begin(&cluster, &room).await;
    let start = Instant::now();
    cluster.set_members(&ROOMHOSTS, Duration::from_secs(3)).await;
    finish(load, Fault::planned("roomhost added, gateways 3 s behind", start)).await;
}
