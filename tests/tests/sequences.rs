//! Faults in sequences, as real clusters have them, checked by the history
//! checker for safety (nothing lost, nothing twice) and liveness (every room
//! serves again within its bound after each fault).

use std::time::Duration;

use rooms_tests::checker::{Fault, check};
use rooms_tests::load::Load;
use rooms_tests::{Cluster, TestCluster};
use tokio::time::Instant;

const ROOM: &str = "seq";
const LEASE_TTL: Duration = Duration::from_secs(2);

async fn cluster() -> Cluster {
    TestCluster::new(3, 2)
        .file_membership()
        .roomhost_arg(&format!("--lease-ttl={}s", LEASE_TTL.as_secs()))
        .roomhost_arg("--history-limit=100000")
        .start()
        .await
}

/// Six receivers and two senders (8 messages a second each), spread over
/// both gateways.
async fn start_load(cluster: &Cluster) -> Load {
    let mut clients = Vec::new();
    for (g, gateway) in cluster.gateways.iter().enumerate() {
        for c in 0..4 {
            let user = format!("g{g}c{c}");
            let every = (c == 0).then_some(Duration::from_millis(125));
            clients.push((user.clone(), gateway.join(ROOM, &user).await, every));
        }
    }
    Load::start_mixed(clients)
}

fn members(cluster: &Cluster) -> Vec<String> {
    cluster.roomhosts.iter().map(|r| r.addr.clone()).collect()
}

/// Kill the owner and drop it from the membership; add a fresh roomhost
/// (the room moves to it); SIGTERM the owner as its membership entry
/// disappears (a rolling update).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_then_scale_out_then_rolling_stop() {
    let mut cluster = cluster().await;
    let load = start_load(&cluster).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut faults = Vec::new();

    let owner = cluster.owner_of(ROOM).await;
    faults.push(Fault::crash("sigkill + removal", Instant::now(), LEASE_TTL));
    cluster.roomhosts[owner].process.kill();
    let dead = cluster.roomhosts.remove(owner);
    let dead_addr = dead.addr.clone();
    cluster.set_members(&members(&cluster)).await;
    drop(dead);
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The dead roomhost comes back at its address (a restarted pod), which
    // the ring gives the room again; then more until the room moves.
    let mut address = Some(dead_addr);
    for _ in 0..8 {
        let fresh = match address.take() {
            Some(addr) => cluster.spawn_roomhost_at(&addr).await,
            None => cluster.spawn_roomhost().await,
        };
        let addr = fresh.addr.clone();
        cluster.roomhosts.push(fresh);
        faults.push(Fault::planned("roomhost added", Instant::now()));
        cluster.set_members(&members(&cluster)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        if cluster.roomhosts[cluster.owner_of(ROOM).await].addr == addr {
            break;
        }
    }

    let owner = cluster.owner_of(ROOM).await;
    let mut leaving = cluster.roomhosts.remove(owner);
    faults.push(Fault::planned("sigterm + removal", Instant::now()));
    let remaining = members(&cluster);
    let (stopped, ()) = tokio::join!(
        leaving.process.terminate(Duration::from_secs(15)),
        cluster.set_members(&remaining)
    );
    assert!(stopped, "clean exit");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let outcomes = load.stop().await;
    let report = check(&outcomes, &faults, true);
    eprintln!("{}", report.table());
    report.assert_live();
}
