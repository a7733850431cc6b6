//! A seeded random schedule of faults, composed one after another while the
//! history checker records everything: roomhost crashes (SIGKILL, then the
//! same pod back), graceful stops, freezes longer than the lease, additions
//! and removals with membership the gateways see seconds late, network
//! partitions (a roomhost from Redis, from one gateway, from both), Redis
//! restarts and a slow, lossy Redis. At the end: nothing lost, nothing twice,
//! every send answered, and after every fault every client served again
//! within its bound. Prints the seed (`ROOMS_CHAOS_SEED` replays it) and a
//! table of faults, pauses and verdicts.
//!
//! `ROOMS_CHAOS_SECONDS` sets how long faults are injected (default 30);
//! `deploy/chaos.sh` runs a long schedule.

use std::fmt::Write as _;
use std::time::Duration;

use futures_util::future::join_all;
use rooms_tests::checker::{Fault, check};
use rooms_tests::load::Load;
use rooms_tests::netcluster::{GATEWAYS, Impairment, NetCluster, REDIS, ROOMHOSTS};
use rooms_tests::seed::{Rng, chaos_duration};
use tokio::time::Instant;

const LEASE_TTL: Duration = Duration::from_secs(2);
const ROOMS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Stop,
    Freeze,
    Scale,
    CutFromRedis,
    CutFromGateway,
    CutFromGateways,
    RedisRestart,
    RedisSlow,
}

const KINDS: [Kind; 9] = [
    Kind::Kill,
    Kind::Stop,
    Kind::Freeze,
    Kind::Scale,
    Kind::CutFromRedis,
    Kind::CutFromGateway,
    Kind::CutFromGateways,
    Kind::RedisRestart,
    Kind::RedisSlow,
];

/// Injects one fault of `kind` and returns it (with its bound).
async fn inject(cluster: &mut NetCluster, rng: &mut Rng, kind: Kind) -> Fault {
    let crash = |what: String, start| Fault::crash(&what, start, LEASE_TTL);
    let members = |cluster: &NetCluster| -> Vec<usize> {
        let members = cluster.members();
        ROOMHOSTS.iter().copied().filter(|&h| members.contains(&cluster.member(h))).collect()
    };
    // Faults hit roomhosts that are members and running.
    let running = cluster.running();
    let targets: Vec<usize> =
        members(cluster).into_iter().filter(|h| running.contains(h)).collect();
    let victim = rng.pick(&targets);
    let start = Instant::now();
    match kind {
        Kind::Kill => {
            cluster.kill(victim);
            // The pod comes back at its address, as a StatefulSet's does.
            tokio::time::sleep(rng.between(Duration::from_millis(200), LEASE_TTL)).await;
            cluster.spawn_roomhost(victim).await;
            crash(format!("SIGKILL roomhost {victim}, back at its address"), start)
        }
        Kind::Stop => {
            cluster.terminate(victim).await;
            cluster.spawn_roomhost(victim).await;
            Fault::planned(&format!("SIGTERM roomhost {victim}, restarted"), start)
        }
        Kind::Freeze => {
            cluster.signal(victim, "-STOP");
            tokio::time::sleep(rng.between(LEASE_TTL, LEASE_TTL * 3)).await;
            cluster.signal(victim, "-CONT");
            crash(format!("SIGSTOP roomhost {victim} past its lease"), start).until(Instant::now())
        }
        Kind::Scale => {
            let spare = ROOMHOSTS[3];
            let skew = rng.between(Duration::ZERO, Duration::from_secs(3));
            if members(cluster).contains(&spare) {
                let rest: Vec<usize> =
                    members(cluster).into_iter().filter(|&h| h != spare).collect();
                cluster.set_members(&rest, skew).await;
                cluster.terminate(spare).await;
                Fault::planned(
                    &format!("roomhost {spare} removed, gateways {skew:?} behind"),
                    start,
                )
            } else {
                cluster.spawn_roomhost(spare).await;
                let mut all = members(cluster);
                all.push(spare);
                let start = Instant::now();
                cluster.set_members(&all, skew).await;
                Fault::planned(&format!("roomhost {spare} added, gateways {skew:?} behind"), start)
            }
        }
        Kind::CutFromRedis | Kind::CutFromGateway | Kind::CutFromGateways => {
            let pairs: Vec<(usize, usize)> = match kind {
                Kind::CutFromRedis => vec![(victim, REDIS)],
                Kind::CutFromGateway => vec![(victim, rng.pick(&GATEWAYS))],
                _ => GATEWAYS.iter().map(|&g| (victim, g)).collect(),
            };
            for &(a, b) in &pairs {
                cluster.net.cut(a, b);
            }
            tokio::time::sleep(rng.between(Duration::from_secs(3), Duration::from_secs(6))).await;
            for &(a, b) in &pairs {
                cluster.net.heal(a, b);
            }
            crash(format!("partition {pairs:?}"), start).until(Instant::now())
        }
        Kind::RedisRestart => {
            let down = rng.between(Duration::from_millis(500), Duration::from_secs(2));
            cluster.restart_redis(down).await;
            // Nothing can be stored while Redis is down: the bound counts
            // from its return.
            let outage = start.elapsed();
            Fault::at(&format!("Redis restarted ({down:?} down)"), start, outage + LEASE_TTL)
                .until(Instant::now())
        }
        Kind::RedisSlow => {
            cluster.impair_redis(Impairment { delay: Duration::from_millis(200), hold_one_in: 20 });
            tokio::time::sleep(rng.between(Duration::from_secs(3), Duration::from_secs(6))).await;
            cluster.impair_redis(Impairment::default());
            crash("Redis 200 ms away, 1 chunk in 20 held".into(), start).until(Instant::now())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_schedule_of_faults_loses_nothing_and_never_stalls() {
    let Some(mut cluster) = NetCluster::start(LEASE_TTL).await else {
        return; // said why: SKIPPED
    };
    let (mut rng, seed) = Rng::from_env();
    let duration = chaos_duration(Duration::from_secs(30));
    eprintln!("nemesis: seed {seed} (ROOMS_CHAOS_SEED={seed} replays it), {duration:?}");

    let mut loads = Vec::new();
    for r in 0..ROOMS {
        let room = format!("nemesis-{r}");
        let mut clients = Vec::new();
        for &g in &GATEWAYS {
            for c in 0..2 {
                let user = format!("{room}-g{g}c{c}");
                let every = (c == 0).then_some(Duration::from_millis(125));
                clients.push((user.clone(), cluster.join(g, &room, &user).await, every));
            }
        }
        loads.push(Load::start_mixed(clients));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let began = Instant::now();
    let mut faults = Vec::new();
    while began.elapsed() < duration || faults.len() < 3 {
        let kind = rng.pick(&KINDS);
        let fault = inject(&mut cluster, &mut rng, kind).await;
        eprintln!("  {:>6.1}s  {}", fault.start.duration_since(began).as_secs_f64(), fault.kind);
        faults.push(fault);
        tokio::time::sleep(rng.between(Duration::from_secs(1), Duration::from_secs(3))).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Every room checked; per fault the longest pause over all rooms.
    let mut pauses = vec![Duration::ZERO; faults.len()];
    let mut stalls = Vec::new();
    for outcomes in join_all(loads.into_iter().map(Load::stop)).await {
        let report = check(&outcomes, &faults, true);
        eprintln!("{}", report.table());
        stalls.extend(report.stalls);
        for (worst, pause) in pauses.iter_mut().zip(report.pauses) {
            *worst = (*worst).max(pause);
        }
    }
    let mut table =
        String::from("| at | fault | pause | bound | verdict |\n| --- | --- | --- | --- | --- |\n");
    for (fault, pause) in faults.iter().zip(&pauses) {
        let verdict = if *pause <= fault.bound { "ok" } else { "STALL" };
        let _ = writeln!(
            table,
            "| {:.1} s | {} | {} ms | {} ms | {verdict} |",
            fault.start.duration_since(began).as_secs_f64(),
            fault.kind,
            pause.as_millis(),
            fault.bound.as_millis()
        );
    }
    eprintln!("nemesis: seed {seed}, {} faults\n{table}", faults.len());
    assert!(stalls.is_empty(), "seed {seed}: liveness violated: {stalls:?}");
}
