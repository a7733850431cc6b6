//! One roomhost, a busy chat room, and room classes that misbehave beside
//! it: one loops forever on every message, one fills its heap. Their
//! events fail and their instances start again (sockets stay open), and
//! the chat room's latency stays within twice what it was without them:
//! JavaScript runs on its own threads, at a lower priority, each event
//! bounded by the CPU limit.

use std::collections::HashMap;
use std::time::Duration;

use rooms_tests::client::metric;
use rooms_tests::load::{Load, Outcome};
use rooms_tests::{Client, TestCluster};
use tokio::time::Instant;

/// The 99th percentile of the echo latencies of the chats sent in
/// `[from, to)`.
fn p99(outcomes: &[Outcome], from: Instant, to: Instant) -> Duration {
    let mut latencies = Vec::new();
    for outcome in outcomes {
        let arrived: HashMap<&str, Instant> =
            outcome.chats.iter().map(|(at, _, text)| (text.as_str(), *at)).collect();
        for (sent, text) in &outcome.sent {
            if *sent >= from && *sent < to {
                let at = arrived.get(text.as_str()).expect("every chat comes back");
                latencies.push(at.duration_since(*sent));
            }
        }
    }
    assert!(latencies.len() > 100, "enough samples: {}", latencies.len());
    latencies.sort();
    latencies[latencies.len() * 99 / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_room_and_a_memory_bomb_leave_a_busy_chat_room_within_twice_its_latency() {
    let class = format!(
        "--room-class=bad-*={}/fixtures/misbehaving.js#Misbehaving",
        env!("CARGO_MANIFEST_DIR")
    );
    let cluster = TestCluster::new(1, 1)
        .roomhost_arg(&class)
        .roomhost_arg("--class-cpu-limit=300ms")
        .roomhost_arg("--class-memory-mib=32")
        .start()
        .await;
    let gateway = &cluster.gateways[0];
    let mut chatters = Vec::new();
    for i in 0..10 {
        chatters.push((format!("u{i}"), gateway.join("busy", &format!("u{i}")).await));
    }
    // 10 clients, 10 messages a second each: 100 chats/s, 1,000 deliveries/s.
    let load = Load::start(chatters, Duration::from_millis(100));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attack = Instant::now();
    let mut spinner = Client::connect(&gateway.ws_url("bad-spin", "")).await.unwrap();
    let mut bomber = Client::connect(&gateway.ws_url("bad-bomb", "")).await.unwrap();
    let until = attack + Duration::from_secs(4);
    while Instant::now() < until {
        spinner.send_text("spin").await;
        bomber.send_text("bomb").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let outcomes = load.stop().await;
    let baseline = p99(&outcomes, started + Duration::from_millis(500), attack);
    let attacked = p99(&outcomes, attack + Duration::from_millis(200), until);
    eprintln!(
        "busy chat room p99: {baseline:?} alone, {attacked:?} beside the runaway and the bomb"
    );
    let resets = metric(&cluster.roomhosts[0].metrics, "rooms_roomhost_class_resets_total").await;
    assert!(resets >= 4.0, "the bad rooms' instances were discarded: {resets}");
    assert!(
        attacked <= baseline.max(Duration::from_millis(1)) * 2,
        "p99 {attacked:?} beside the bad rooms against {baseline:?} alone"
    );
    // Their sockets stayed open: the next instance answers.
    for client in [&mut spinner, &mut bomber] {
        client.send_text("still there?").await;
        let echo = loop {
            let text = client.text_within(Duration::from_secs(5)).await.expect("an answer");
            if text.starts_with("echo") {
                break text;
            }
        };
        assert_eq!(echo, "echo: still there?");
    }
}
