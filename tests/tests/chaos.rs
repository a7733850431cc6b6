//! A chaos run: random roomhost crashes, graceful stops, restarts and
//! additions under steady load in several rooms, then the invariants users
//! rely on: nobody disconnected, contiguous seqs without duplicates, no seq
//! given twice, and everything anyone saw is stored.
//!
//! `ROOMS_CHAOS_SECONDS` sets how long the faults go on (default 10).

use std::time::Duration;

use futures_util::future::join_all;
use rooms_tests::TestCluster;
use rooms_tests::load::{Load, verify};
use rooms_tests::seed::{Rng, chaos_duration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let (mut rng, seed) = Rng::from_env();
    let seconds = chaos_duration(Duration::from_secs(10)).as_secs();
    let mut cluster = TestCluster::new(3, 2)
        .file_membership()
        .roomhost_arg("--lease-ttl=2s")
        .roomhost_arg("--history-limit=100000")
        .unthrottled()
        .start()
        .await;
    let rooms: Vec<String> = (0..4).map(|i| format!("chaos-{i}")).collect();
    let mut loads = Vec::new();
    for room in &rooms {
        let mut clients = Vec::new();
        for (g, gateway) in cluster.gateways.iter().enumerate() {
            let user = format!("{room}-g{g}");
            clients.push((user.clone(), gateway.join(room, &user).await));
        }
        loads.push(Load::start(clients, Duration::from_millis(40)));
    }

    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut actions = Vec::new();
    while tokio::time::Instant::now() < until {
        let victim = rng.below(cluster.roomhosts.len() as u64) as usize;
        let action = match rng.below(4) {
            0 => {
                cluster.roomhosts[victim].process.kill();
                "kill"
            }
            1 => {
                cluster.roomhosts[victim].process.terminate(Duration::from_secs(15)).await;
                "stop"
            }
            2 => {
                // Restart in place: stop, then a fresh process takes its slot.
                cluster.roomhosts[victim].process.terminate(Duration::from_secs(15)).await;
                "restart"
            }
            _ => "add",
        };
        if action != "add" {
            let fresh = cluster.spawn_roomhost().await;
            cluster.roomhosts[victim] = fresh;
        } else if cluster.roomhosts.len() < 5 {
            let fresh = cluster.spawn_roomhost().await;
            cluster.roomhosts.push(fresh);
        } else {
            continue; // at the size limit: nothing to add, the membership stays
        }
        let members: Vec<String> = cluster.roomhosts.iter().map(|r| r.addr.clone()).collect();
        cluster.set_members(&members).await;
        actions.push(action);
        // Let rooms settle after a crash: a lease takes up to its TTL to free.
        tokio::time::sleep(Duration::from_millis(500 + rng.below(2500))).await;
    }

    let mut events = 0;
    let mut refused = 0;
    let mut unacknowledged = 0;
    for outcomes in join_all(loads.into_iter().map(Load::stop)).await {
        let verified = verify(&outcomes, false);
        events += verified.events.len();
        refused += verified.refused;
        unacknowledged += verified.unacknowledged;
    }
    eprintln!(
        "chaos: seed {seed}, {}s, actions {actions:?}: {events} events, 0 disconnected, 0 gaps, \
         0 duplicates, {refused} refused, {unacknowledged} in flight at a crash",
        seconds
    );
}
