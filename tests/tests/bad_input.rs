//! Every bad-input rule of the client protocol, each with the response the
//! protocol names, and the connection surviving where it should.

use rooms_proto::server::ServerFrame;
use rooms_tests::client::{Received, http};
use rooms_tests::{Client, TestCluster};
use serde_json::json;

/// After an error the connection still works: a chat round-trips.
async fn still_works(client: &mut Client) {
    client.chat("still here", "probe").await;
    let frame = client.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    assert!(matches!(frame, ServerFrame::Chat { id: Some(id), .. } if id == "probe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_frames_get_error_frames_and_the_connection_stays_open() {
    let cluster = TestCluster::new(1, 1).start().await;
    let gw = &cluster.gateways[0];
    let mut client = gw.join("errors", "eve").await;

    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid_message"),
        ("[1,2]".into(), "invalid_message"),
        (json!({"type": "dance"}).to_string(), "invalid_message"),
        (json!({"type": "chat"}).to_string(), "invalid_message"),
        (json!({"type": "chat", "text": ""}).to_string(), "invalid_message"),
        (json!({"type": "chat", "text": 42}).to_string(), "invalid_message"),
        (json!({"type": "chat", "text": "x".repeat(4097)}).to_string(), "too_large"),
        (json!({"type": "name", "name": "   "}).to_string(), "invalid_message"),
        (json!({"type": "name", "name": "n".repeat(65)}).to_string(), "too_large"),
        (json!({"type": "history", "limit": 1000}).to_string(), "invalid_message"),
    ];
    for (frame, code) in cases {
        client.send_text(&frame).await;
        assert_eq!(client.error_code().await, code, "for {}", &frame[..frame.len().min(60)]);
    }
    // A refused chat with a client id names it in the error.
    client.send_json(json!({"type": "chat", "text": "x".repeat(4097), "id": "long-1"})).await;
    let refused = client.until(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(
        matches!(&refused, ServerFrame::Error { code, id: Some(id), .. } if code == "too_large" && id == "long-1"),
        "{refused:?}"
    );
    // `ping` is answered with `pong` (liveness for clients that cannot see
    // WebSocket pings) and stores nothing.
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.until(|f| matches!(f, ServerFrame::Pong)).await, ServerFrame::Pong);
    client.send_binary(vec![1, 2, 3]).await;
    assert_eq!(client.error_code().await, "invalid_message", "binary frame");
    still_works(&mut client).await;

    // The limits themselves are accepted.
    client.chat(&"é".repeat(4096), "max").await;
    let frame = client.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    assert!(matches!(frame, ServerFrame::Chat { text, .. } if text.chars().count() == 4096));

    // Nothing refused was stored: only the two accepted chats have seqs.
    let (_, hello, _) = Client::join(&gw.ws_url("errors", "user=check")).await;
    assert!(matches!(hello, ServerFrame::Welcome { seq: 2, .. }), "{hello:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_64_kib_close_with_1009() {
    let cluster = TestCluster::new(1, 1).start().await;
    let mut client = cluster.gateways[0].join("big", "bo").await;
    let text = format!(r#"{{"type":"chat","text":"{}"}}"#, "x".repeat(70 * 1024));
    client.send_text(&text).await;
    assert_eq!(client.closed().await, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_rate_limited_then_closed_with_1008() {
    let cluster = TestCluster::new(1, 1).start().await;
    let gw = &cluster.gateways[0];

    // A burst past the limit: the excess is refused, the connection survives.
    let mut client = gw.join("flood", "fay").await;
    for i in 0..50 {
        client.chat(&format!("burst {i}"), &format!("b{i}")).await;
    }
    let mut chats = 0;
    let mut limited = 0;
    while chats + limited < 50 {
        match client.frame().await {
            ServerFrame::Chat { .. } => chats += 1,
            ServerFrame::Error { code, id, .. } if code == "rate_limited" => {
                // The refusal names the message it refused.
                assert!(id.is_some_and(|id| id.starts_with('b')), "rate_limited without id");
                limited += 1;
            }
            _ => {}
        }
    }
    // The burst allowance (40) goes through; a token or two may refill (20/s)
    // while the 50 arrive.
    assert!((40..=43).contains(&chats), "{chats} went through");
    assert_eq!(limited, 50 - chats, "the rest were refused with rate_limited");

    // Sustained flooding: closed with 1008 — after the answers to what came
    // before the close: an echo for each accepted message, a refusal for
    // each refused one, none missing.
    let mut flooder = gw.join("flood", "fred").await;
    let mut sent = 0;
    for i in 0..200 {
        let chat = json!({"type": "chat", "text": format!("flood {i}"), "id": format!("f{i}")});
        if !flooder.try_send_text(&chat.to_string()).await {
            break; // already closed
        }
        sent += 1;
    }
    let mut echoes = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeSet::new();
    let code = loop {
        match flooder.next_within(std::time::Duration::from_secs(15)).await {
            Some(Received::Frame(ServerFrame::Chat { id: Some(id), .. })) => {
                echoes.insert(id);
            }
            Some(Received::Frame(ServerFrame::Error { code, id: Some(id), .. })) => {
                assert_eq!(code, "rate_limited");
                refused.insert(id);
            }
            Some(Received::Frame(_)) => {}
            Some(Received::Closed(code, _)) => break code,
            None => panic!("no close"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(echoes.len() >= 40, "the burst's echoes came before the close: {}", echoes.len());
    // Every refusal up to the one that tripped the flood limit (a burst's
    // worth within a second) was answered too.
    assert!(echoes.is_disjoint(&refused));
    assert_eq!(refused.len(), 40, "refusals before the close (of {sent} sent)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_room_names_are_refused_before_the_upgrade() {
    let cluster = TestCluster::new(1, 1).start().await;
    let gw = &cluster.gateways[0];
    let long = "r".repeat(129);
    for room in ["bad%20room", "a%2Fb", long.as_str(), "caf%C3%A9"] {
        let request = format!(
            "GET /rooms/{room}/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let (status, _) = http(&gw.http, &request).await;
        assert_eq!(status, 400, "room `{room}`");
    }
    let err = Client::connect(&gw.ws_url("bad%20room", "")).await.err();
    assert!(err.is_some(), "a WebSocket client cannot connect to an invalid room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_closed_with_1013_and_never_slows_the_room() {
    let cluster = TestCluster::new(1, 1)
        .gateway_arg("--send-queue=16")
        .gateway_arg("--rate-limit=100000")
        .gateway_arg("--rate-burst=100000")
        .start()
        .await;
    let gw = &cluster.gateways[0];
    let mut slow = gw.join("slow", "sloth").await;
    let mut watcher = gw.join("slow", "watcher").await;
    let mut sender = gw.join("slow", "sender").await;
    // 2,000 messages of 4 KiB (8 MB): more than socket buffers hold, so the
    // slow reader's queue overflows. Sent in steps the readers keep up with.
    let text = "z".repeat(4000);
    let total = 2000;
    let mut seen = Vec::with_capacity(total);
    for _ in 0..total / 10 {
        for _ in 0..10 {
            sender.chat(&text, "").await;
        }
        sender.chats(10).await;
        seen.extend(watcher.chats(10).await.iter().filter_map(ServerFrame::seq));
    }
    assert_eq!(seen.len(), total);
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "the watcher missed nothing");
    // Now read the slow client: after what was buffered, the close 1013.
    let mut code = None;
    let mut received = 0;
    while let Some(event) = slow.next_within(std::time::Duration::from_secs(15)).await {
        match event {
            Received::Frame(ServerFrame::Chat { .. }) => received += 1,
            Received::Frame(_) => {}
            Received::Closed(c, _) => {
                code = c;
                break;
            }
        }
    }
    assert!(received < total, "the slow reader was cut off, got {received}");
    assert_eq!(code, Some(1013));
}
