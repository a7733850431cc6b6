//! Rooms move between roomhosts — crash, shutdown, scale-out — while clients
//! chat through two gateways: nobody is disconnected, seqs stay contiguous
//! without duplicates, and nothing any client saw is lost. The same holds
//! with a 3-master Redis Cluster as the store.

use std::time::Duration;

use rooms_proto::server::ServerFrame;
use rooms_tests::load::{Load, Outcome, pause_after, verify};
use rooms_tests::{Client, Cluster, TestCluster};
use tokio::time::Instant;

const ROOM: &str = "busy";
const LEASE_TTL: &str = "--lease-ttl=2s";

fn spec(roomhosts: usize) -> TestCluster {
    TestCluster::new(roomhosts, 2)
        .file_membership()
        .roomhost_arg(LEASE_TTL)
        .roomhost_arg("--history-limit=100000")
        .unthrottled()
}

async fn cluster(roomhosts: usize) -> Cluster {
    spec(roomhosts).start().await
}

/// Two clients on each gateway, all sending.
async fn start_load(cluster: &Cluster, room: &str) -> Load {
    let mut clients = Vec::new();
    for (g, gateway) in cluster.gateways.iter().enumerate() {
        for c in 0..2 {
            let user = format!("{room}-g{g}c{c}");
            clients.push((user.clone(), gateway.join(room, &user).await));
        }
    }
    Load::start(clients, Duration::from_millis(20))
}

/// Lets the load run.
async fn run_for(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Every event a client saw is in the room's stored history.
async fn history_has_everything(cluster: &Cluster, room: &str, outcomes: &[Outcome]) {
    let verified = verify(outcomes, false);
    let (&last, _) = verified.events.iter().next_back().expect("events");
    let (reader, hello, first) =
        Client::join(&cluster.gateways[0].ws_url(room, "user=auditor")).await;
    let epoch = match hello {
        ServerFrame::Welcome { epoch, seq, .. } => {
            assert!(seq >= last, "the room's seq {seq} is behind what clients saw ({last})");
            epoch
        }
        other => panic!("{other:?}"),
    };
    drop(first);
    reader.close().await;
    let url = cluster.gateways[1].ws_url(room, &format!("user=auditor&since=0&epoch={epoch}"));
    let mut auditor = Client::connect(&url).await.expect("auditor");
    let mut stored = std::collections::BTreeMap::new();
    while stored.len() < verified.events.len() {
        match auditor.frame().await {
            ServerFrame::History { messages, gap, .. } => {
                assert!(!gap, "history has a gap");
                for m in messages {
                    if let ServerFrame::Chat { seq: Some(seq), text, .. } = m {
                        stored.insert(seq, text);
                    }
                }
                if stored.keys().next_back().is_some_and(|s| *s >= last) {
                    break;
                }
            }
            _ => continue,
        }
    }
    for (seq, text) in &verified.events {
        assert_eq!(stored.get(seq), Some(text), "event {seq} seen by a client is not in history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_owner_disconnects_no_one_and_loses_nothing_seen() {
    sigkill_of_the_owner(cluster(3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cluster_sigkill_of_the_owner_loses_nothing_seen() {
    sigkill_of_the_owner(spec(3).redis_cluster().start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cluster_rooms_spread_over_every_master_and_survive_restarts() {
    let mut cluster = spec(3).redis_cluster().start().await;
    const ROOMS: usize = 30;
    let mut pairs = Vec::new();
    for r in 0..ROOMS {
        let room = format!("spread-{r}");
        let ann = cluster.gateways[0].join(&room, "ann").await;
        let bob = cluster.gateways[1].join(&room, "bob").await;
        pairs.push((room, ann, bob));
    }
    for (room, ann, _) in &mut pairs {
        ann.chat(&format!("hello {room}"), "h").await;
    }
    for (room, ann, bob) in &mut pairs {
        for client in [ann, bob] {
            let chat = client.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
            let expected = format!("hello {room}");
            assert!(
                matches!(&chat, ServerFrame::Chat { text, seq: Some(1), .. } if *text == expected),
                "{chat:?}"
            );
        }
    }
    let keys = cluster.redis_cluster.as_ref().expect("redis cluster").keys_per_node().await;
    assert!(keys.iter().all(|k| *k > 0), "rooms on every master: {keys:?}");
    assert!(keys.iter().sum::<u64>() >= ROOMS as u64 * 3, "{keys:?}");

    // Everything but the Redis Cluster restarts: history and seq are there.
    for (_, ann, bob) in pairs.drain(..) {
        ann.close().await;
        bob.close().await;
    }
    cluster.restart_all_but_redis().await;
    for r in 0..ROOMS {
        let room = format!("spread-{r}");
        let (mut again, hello, history) =
            Client::join(&cluster.gateways[1].ws_url(&room, "user=cy")).await;
        assert!(matches!(hello, ServerFrame::Welcome { seq: 1, .. }), "{hello:?}");
        assert!(
            matches!(&history, ServerFrame::History { messages, .. } if messages.len() == 1),
            "{history:?}"
        );
        again.chat("again", "a").await;
        let chat = again.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
        assert!(matches!(chat, ServerFrame::Chat { seq: Some(2), .. }), "{chat:?}");
    }
}

async fn sigkill_of_the_owner(mut cluster: Cluster) {
    let load = start_load(&cluster, ROOM).await;
    run_for(Duration::from_millis(800)).await;
    let owner = cluster.owner_of(ROOM).await;
    let killed_at = Instant::now();
    cluster.roomhosts[owner].process.kill();
    // The dead roomhost stays in the membership (as with a static list):
    // gateways skip it and the next ring member takes the room once its
    // lease expires. Keep the load going past that.
    run_for(Duration::from_secs(4)).await;
    let outcomes = load.stop().await;
    let verified = verify(&outcomes, false);
    let pause = pause_after(&outcomes, killed_at);
    eprintln!(
        "sigkill: {} events, pause {:?}, refused {}, unacknowledged {}",
        verified.events.len(),
        pause,
        verified.refused,
        verified.unacknowledged
    );
    // The figure is reported (docs/reliability.md); the bound here only
    // catches a takeover that did not happen by lease expiry at all.
    assert!(pause < Duration::from_secs(10), "takeover took {pause:?}");
    history_has_everything(&cluster, ROOM, &outcomes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_owner_hands_the_room_over_losing_nothing() {
    let mut cluster = cluster(3).await;
    let load = start_load(&cluster, ROOM).await;
    run_for(Duration::from_millis(800)).await;
    let owner = cluster.owner_of(ROOM).await;
    let stopped_at = Instant::now();
    assert!(
        cluster.roomhosts[owner].process.terminate(Duration::from_secs(15)).await,
        "clean exit"
    );
    run_for(Duration::from_millis(800)).await;
    let outcomes = load.stop().await;
    let verified = verify(&outcomes, true);
    let pause = pause_after(&outcomes, stopped_at);
    eprintln!(
        "sigterm: {} events, pause {:?}, refused {}",
        verified.events.len(),
        pause,
        verified.refused
    );
    for outcome in &outcomes {
        assert!(
            outcome.joins_and_leaves.iter().all(|f| !matches!(f, ServerFrame::Leave { .. })),
            "{} saw a spurious leave: {:?}",
            outcome.user,
            outcome.joins_and_leaves
        );
    }
    history_has_everything(&cluster, ROOM, &outcomes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_roomhost_moves_rooms_to_it_under_load() {
    let mut cluster = cluster(1).await;
    // The newcomer runs but is not a member yet; pick rooms so that three
    // will move to it and three stay.
    let newcomer = cluster.spawn_roomhost().await;
    let members = vec![cluster.roomhosts[0].addr.clone(), newcomer.addr.clone()];
    let ring = rooms_cluster::Ring::new(members.clone(), 1);
    let owner =
        |room: &String| ring.owner(&rooms_proto::RoomId::parse(room).unwrap()).map(str::to_owned);
    let candidates: Vec<String> = (0..200).map(|i| format!("grow-{i}")).collect();
    let moving = candidates.iter().filter(|r| owner(r).as_deref() == Some(newcomer.addr.as_str()));
    let staying = candidates.iter().filter(|r| owner(r).as_deref() != Some(newcomer.addr.as_str()));
    let rooms: Vec<String> = moving.take(3).chain(staying.take(3)).cloned().collect();
    let mut loads = Vec::new();
    for room in &rooms {
        loads.push(start_load(&cluster, room).await);
    }
    run_for(Duration::from_millis(500)).await;
    cluster.roomhosts.push(newcomer);
    let moved_at = Instant::now();
    cluster.set_members(&members).await;
    run_for(Duration::from_millis(1000)).await;
    let mut moved = 0;
    for room in &rooms {
        if cluster.owner_of(room).await == 1 {
            moved += 1;
        }
    }
    assert_eq!(moved, 3, "the new roomhost took the rooms the ring gives it");
    let all = futures_util::future::join_all(loads.into_iter().map(Load::stop)).await;
    for (room, outcomes) in rooms.iter().zip(all) {
        let verified = verify(&outcomes, true);
        eprintln!(
            "scale-out {room}: {} events, pause {:?}",
            verified.events.len(),
            pause_after(&outcomes, moved_at)
        );
        history_has_everything(&cluster, room, &outcomes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_roomhost_under_load() {
    let mut cluster = cluster(3).await;
    let load = start_load(&cluster, ROOM).await;
    run_for(Duration::from_millis(500)).await;
    let mut pauses = Vec::new();
    for i in 0..cluster.roomhosts.len() {
        // Replace roomhost i: stop it (its rooms move), start a new one on a
        // new port, and swap it into the membership.
        let at = Instant::now();
        assert!(
            cluster.roomhosts[i].process.terminate(Duration::from_secs(15)).await,
            "clean exit"
        );
        let fresh = cluster.spawn_roomhost().await;
        let old = std::mem::replace(&mut cluster.roomhosts[i], fresh);
        drop(old);
        let members: Vec<String> = cluster.roomhosts.iter().map(|r| r.addr.clone()).collect();
        cluster.set_members(&members).await;
        pauses.push(at);
        run_for(Duration::from_millis(500)).await;
    }
    let outcomes = load.stop().await;
    let verified = verify(&outcomes, true);
    let pauses: Vec<Duration> = pauses.iter().map(|at| pause_after(&outcomes, *at)).collect();
    eprintln!(
        "rolling restart: {} events, pauses {pauses:?}, refused {}",
        verified.events.len(),
        verified.refused
    );
    history_has_everything(&cluster, ROOM, &outcomes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_with_different_member_lists_still_have_one_writer() {
    let cluster = cluster(2).await;
    // A third gateway with a stale list that knows only the first roomhost.
    let stale = {
        let mut cmd = std::process::Command::new(rooms_tests::process::binary("gateway"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--rate-limit=1000",
            "--rate-burst=1000",
        ]);
        cmd.args(["--roomhosts", &format!("static:{}", cluster.roomhosts[0].addr)]);
        let process = rooms_tests::process::Process::spawn("stale-gateway", cmd);
        let http = process.wait_for_field("gateway serving", "listen").await;
        (process, http)
    };
    // Rooms the up-to-date ring gives to the second roomhost, which the
    // stale gateway would send to the first.
    let mut clients = Vec::new();
    for i in 0..4 {
        let room = format!("split-{i}");
        for (g, http) in [cluster.gateways[0].http.clone(), stale.1.clone()].iter().enumerate() {
            let user = format!("{room}-g{g}");
            let url = format!("ws://{http}/rooms/{room}/ws?user={user}");
            clients.push((room.clone(), user, Client::join(&url).await.0));
        }
    }
    let mut per_room: std::collections::BTreeMap<String, Vec<(String, Client)>> =
        Default::default();
    for (room, user, client) in clients {
        per_room.entry(room).or_default().push((user, client));
    }
    let loads: Vec<Load> =
        per_room.into_values().map(|c| Load::start(c, Duration::from_millis(20))).collect();
    run_for(Duration::from_millis(1500)).await;
    // Both gateways' clients of each room saw one sequence: one writer.
    for outcomes in futures_util::future::join_all(loads.into_iter().map(Load::stop)).await {
        verify(&outcomes, true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pausing_refuses_events_then_service_resumes_losing_nothing() {
    let cluster = cluster(1).await;
    let load = start_load(&cluster, ROOM).await;
    run_for(Duration::from_millis(500)).await;
    let redis = cluster.redis.as_ref().expect("redis");
    // Freeze Redis for 3 seconds: nothing it would acknowledge is lost, but
    // nothing can be stored meanwhile.
    let pid = redis.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    run_for(Duration::from_secs(3)).await;
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let resumed = Instant::now();
    let refused = recovers_after_outage(&cluster, load, resumed, "redis pause").await;
    assert!(refused > 0, "sends during the outage were refused");
}

/// After a Redis outage ending at `back`: nothing lost, only `unavailable`
/// refusals, service resumed. Returns how many sends were refused.
async fn recovers_after_outage(cluster: &Cluster, load: Load, back: Instant, what: &str) -> usize {
    run_for(Duration::from_secs(3)).await;
    let outcomes = load.stop().await;
    let verified = verify(&outcomes, true);
    eprintln!(
        "{what}: {} events, refused {} (unavailable), longest wait {:?}",
        verified.events.len(),
        verified.refused,
        pause_after(&outcomes, back)
    );
    assert!(outcomes.iter().flat_map(|o| &o.errors).all(|code| code == "unavailable"));
    let after = outcomes.iter().flat_map(|o| &o.chats).filter(|(t, _, _)| *t > back).count();
    assert!(after > 0, "service resumed");
    history_has_everything(cluster, ROOM, &outcomes).await;
    verified.refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gateway_crash_clients_resume_elsewhere_with_exactly_what_they_missed() {
    let mut cluster = cluster(2).await;
    let (mut ann, hello, _) = Client::join(&cluster.gateways[0].ws_url(ROOM, "user=ann")).await;
    let epoch = match hello {
        ServerFrame::Welcome { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };
    let mut bob = cluster.gateways[1].join(ROOM, "bob").await;
    for i in 0..5 {
        bob.chat(&format!("before {i}"), "").await;
    }
    let seen = ann.chats(5).await;
    let last = seen.last().and_then(ServerFrame::seq).expect("seq");
    // Ann's gateway dies; Bob keeps talking meanwhile.
    cluster.gateways[0].process.kill();
    assert!(matches!(
        ann.next_within(Duration::from_secs(5)).await,
        Some(rooms_tests::client::Received::Closed(..))
    ));
    for i in 0..7 {
        bob.chat(&format!("missed {i}"), "").await;
    }
    bob.chats(5 + 7).await;
    let url = cluster.gateways[1].ws_url(ROOM, &format!("user=ann&since={last}&epoch={epoch}"));
    let (_back, _, replay) = Client::join(&url).await;
    match replay {
        ServerFrame::History { messages, gap, .. } => {
            assert!(!gap);
            let texts: Vec<String> = messages
                .into_iter()
                .filter_map(|m| match m {
                    ServerFrame::Chat { text, .. } => Some(text),
                    _ => None,
                })
                .collect();
            let expected: Vec<String> = (0..7).map(|i| format!("missed {i}")).collect();
            assert_eq!(texts, expected, "exactly what was missed, in order");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_refuses_events_then_service_resumes_losing_nothing() {
    let mut cluster = cluster(1).await;
    let load = start_load(&cluster, ROOM).await;
    run_for(Duration::from_millis(500)).await;
    cluster.redis.as_mut().expect("redis").restart(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    recovers_after_outage(&cluster, load, restarted, "redis restart").await;
}

/// A gateway that never answers `Moving` (stuck, or gone without a trace)
/// and later sends a frame on its old stream: the old owner must not start
/// the room again for it — it would take the lease the new owner is waiting
/// for, and the room would serve nobody until that lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_on_a_stale_stream_does_not_bring_the_room_back() {
    use rooms_proto::host::{Chat, gateway_frame, host_frame};
    use rooms_tests::fake_gateway::FakeGateway;

    let mut cluster = cluster(1).await;
    let newcomer = cluster.spawn_roomhost().await;
    let members = vec![cluster.roomhosts[0].addr.clone(), newcomer.addr.clone()];
    let ring = rooms_cluster::Ring::new(members.clone(), 1);
    let room = (0..200)
        .map(|i| format!("stale-{i}"))
        .find(|r| {
            ring.owner(&rooms_proto::RoomId::parse(r).unwrap()) == Some(newcomer.addr.as_str())
        })
        .expect("a room the newcomer gets");
    let mut ann = cluster.gateways[0].join(&room, "ann").await;

    // A silent gateway of our own on the room's current owner.
    let mut silent = FakeGateway::attach(&cluster.roomhosts[0].addr, &room, "sil").await;

    cluster.roomhosts.push(newcomer);
    cluster.set_members(&members).await;
    // The real gateway is slow to follow the room (frozen); ours never
    // answers Moving, so the owner moves after its drain wait.
    let gateway = cluster.gateways[0].process.pid().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").args([sig, &gateway]).status();
        assert!(status.expect("kill").success());
    };
    signal("-STOP");
    silent.until(|kind| matches!(kind, host_frame::Kind::Moved(_))).await;
    let chat = Chat { conn: 1, text: "late".into(), ..Chat::default() };
    silent.send(gateway_frame::Kind::Chat(chat)).await;
    // Give the stale frame its chance to restart the room at the old owner
    // before the real gateway follows the room.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal("-CONT");

    // The room serves from its new owner as after any planned move.
    let sent = Instant::now();
    ann.chat("after the move", "a1").await;
    let echo = ann.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    let waited = sent.elapsed();
    assert!(matches!(&echo, ServerFrame::Chat { text, .. } if text == "after the move"));
    assert!(
        waited < rooms_tests::checker::PLANNED_BOUND,
        "the room stalled {waited:?} after the move"
    );
    assert_eq!(cluster.owner_of(&room).await, 1, "served by the newcomer");
}

/// A message the gateway sent to an owner that then crashed is answered by
/// nobody there: the gateway sends it again to the next owner (same id, so
/// it is stored once), and its sender sees it stored without resending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_to_a_crashed_owner_is_stored_once_all_the_same() {
    let mut cluster = cluster(2).await;
    let mut ann = cluster.gateways[0].join(ROOM, "ann").await;
    let mut bob = cluster.gateways[1].join(ROOM, "bob").await;
    ann.chat("before", "m0").await;
    ann.chats(1).await;
    bob.chats(1).await;
    let owner = cluster.owner_of(ROOM).await;
    let pid = cluster.roomhosts[owner].process.pid().to_string();
    // Frozen: the gateway forwards the message, nobody processes it.
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    ann.chat("in flight", "m1").await;
    bob.chat("also in flight", "b1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.roomhosts[owner].process.kill();
    for client in [&mut ann, &mut bob] {
        let mut texts = Vec::new();
        for chat in client.chats(2).await {
            if let ServerFrame::Chat { text, seq, .. } = chat {
                texts.push((seq, text));
            }
        }
        texts.sort();
        let only: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
        assert!(only.contains(&"in flight") && only.contains(&"also in flight"), "{texts:?}");
        assert_eq!(texts[0].0.map(|s| s + 1), texts[1].0, "stored once each, in a row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_move_a_welcome_lists_everyone_still_there_with_their_names() {
    // Gateways write `welcome` from the roster the room's owner keeps them
    // up to date with: the new owner's must be whole once both gateways
    // followed the room, names included.
    let room = "roster";
    let cluster = cluster(2).await;
    let (mut ann, _, _) = Client::join(&cluster.gateways[0].ws_url(room, "user=ann")).await;
    ann.send_json(serde_json::json!({"type": "name", "name": "Ann B"})).await;
    ann.until(|f| matches!(f, ServerFrame::Name { .. })).await;
    let (_bob, _, _) = Client::join(&cluster.gateways[1].ws_url(room, "user=bob")).await;
    let owner = cluster.owner_of(room).await;
    // The owner leaves the ring: it hands the room over to the other one,
    // whose count of the room's connections is 2 once both gateways followed.
    cluster.set_members(&[cluster.roomhosts[1 - owner].addr.clone()]).await;
    cluster.await_connections(room, 2).await;
    assert_eq!(cluster.owner_of(room).await, 1 - owner, "the room moved");
    let mut joined = Vec::new();
    for (gateway, user) in [(0, "cy"), (1, "dee")] {
        let url = cluster.gateways[gateway].ws_url(room, &format!("user={user}"));
        let (client, welcome, _) = Client::join(&url).await;
        joined.push(client);
        let ServerFrame::Welcome { users, .. } = welcome else { panic!("{welcome:?}") };
        let mut listed: Vec<_> = users.into_iter().map(|u| (u.user_id, u.name)).collect();
        listed.sort();
        let mut expected = vec![("ann", "Ann B"), ("bob", "bob"), (user, user)];
        if user == "dee" {
            expected.push(("cy", "cy"));
        }
        expected.sort();
        let expected: Vec<_> =
            expected.iter().map(|(u, n)| (u.to_string(), n.to_string())).collect();
        assert_eq!(listed, expected, "{user}'s welcome on gateway {gateway}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_gateway_went_down_with_the_owner_is_seen_leaving() {
    // Ann is on gateway 0, Bob on gateway 1. Gateway 0 freezes, then the
    // room's owner and gateway 0 are SIGKILLed: the old owner never learns
    // that Ann's connection is gone, and nobody brings Ann to the new
    // owner. Gateway 1 tells it whom its clients know; once the new owner
    // has waited for them, Bob is told that Ann left.
    let room = "gone";
    let mut cluster = cluster(2).await;
    let (mut bob, _, _) = Client::join(&cluster.gateways[1].ws_url(room, "user=bob")).await;
    let (_ann, _, _) = Client::join(&cluster.gateways[0].ws_url(room, "user=ann")).await;
    bob.until(|f| matches!(f, ServerFrame::Join { user_id, .. } if user_id == "ann")).await;
    let owner = cluster.owner_of(room).await;
    let killed_at = Instant::now();
    cluster.gateways[0].process.freeze();
    cluster.roomhosts[owner].process.kill();
    cluster.gateways[0].process.kill();
    bob.until(|f| matches!(f, ServerFrame::Leave { user_id, .. } if user_id == "ann")).await;
    eprintln!("Bob saw Ann leave {:?} after the kill", killed_at.elapsed());
    // Bob is still served, by the new owner.
    bob.chat("still here", "m1").await;
    bob.until(|f| matches!(f, ServerFrame::Chat { id, .. } if id.as_deref() == Some("m1"))).await;
}
