//! Durable Object classes from `examples/`, unmodified, running as rooms on
//! a real cluster (Redis, roomhosts, gateways), reached by real WebSocket
//! clients: the workerd peer's `ChatRoom` across two gateways, and the
//! Nuxflare tutorial's class with its base64 `room:user` subprotocol.

use std::time::Duration;

use rooms_proto::server::ServerFrame;
use rooms_tests::process::binary;
use rooms_tests::{Client, TestCluster};
use serde_json::json;

fn example(file: &str) -> String {
    format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Reads this class's chats until the one with `text` (the ones before it
/// are what the client got while the room moved).
async fn skip_until(client: &mut Client, text: &str) -> serde_json::Value {
    loop {
        let chat = client.json().await;
        if chat["text"] == text {
            return chat;
        }
    }
}

fn user_name(frame: &ServerFrame) -> Option<String> {
    match frame {
        ServerFrame::Chat { user_name, .. } => user_name.clone(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workerd_chat_class_serves_clients_on_two_gateways_next_to_chat_rooms() {
    let class = format!("--room-class=chat-*={}#ChatRoom", example("workerd-chat/worker.js"));
    let cluster = TestCluster::new(2, 2).roomhost_arg(&class).start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut alice = Client::connect(&a.ws_url("chat-1", "user=alice")).await.unwrap();
    let mut bob = Client::connect(&b.ws_url("chat-1", "user=bob")).await.unwrap();
    alice.send_json(json!({"type": "name", "name": "Ann"})).await;
    bob.send_json(json!({"type": "chat", "text": "hi"})).await;
    for client in [&mut alice, &mut bob] {
        let chat = client.frame().await;
        assert_eq!(user_name(&chat).as_deref(), Some("bob"), "{chat:?}");
    }
    alice.send_json(json!({"type": "chat", "text": "hello"})).await;
    for client in [&mut alice, &mut bob] {
        let chat = client.frame().await;
        assert_eq!(user_name(&chat).as_deref(), Some("Ann"), "the stored name: {chat:?}");
    }
    // A room no pattern names is still a chat room, with its protocol.
    let mut carol = a.join("lobby", "carol").await;
    carol.chat("plain chat", "c1").await;
    let echoed = carol.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    assert_eq!(echoed.seq(), Some(1));
    // A chat room has no methods to call: INVALID_ARGUMENT, roomctl exits 2.
    let out = std::process::Command::new(binary("roomctl"))
        .args(["--admin", &a.admin_url(), "invoke", "lobby", "publish"])
        .output()
        .expect("roomctl runs");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nuxflare_class_takes_its_subprotocol_credential_and_refuses_without_it() {
    let class = format!("--room-class=*={}#WebSockets", example("nuxflare/websockets.js"));
    let cluster = TestCluster::new(1, 1).roomhost_arg(&class).start().await;
    let gateway = &cluster.gateways[0];
    let url = format!("ws://{}/", gateway.http);
    // base64("lobby:alice") without padding, then the protocol the app speaks.
    let (mut alice, selected) =
        Client::connect_with_protocols(&url, "bG9iYnk6YWxpY2U, chat").await.unwrap();
    assert_eq!(selected.as_deref(), Some("chat"), "the class chose the subprotocol");
    let (mut bob, _) = Client::connect_with_protocols(&url, "bG9iYnk6Ym9i, chat").await.unwrap();
    alice.send_json(json!({"type": "name", "name": "Ann"})).await;
    for client in [&mut alice, &mut bob] {
        let named = client.json().await;
        assert_eq!((named["type"].as_str(), named["name"].as_str()), (Some("name"), Some("Ann")));
    }
    bob.send_json(json!({"type": "chat", "text": "hi all"})).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.json().await["userName"], "bob");
    }
    alice.send_json(json!({"type": "chat", "text": "hello"})).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.json().await["userName"], "Ann", "the name the room stored");
    }
    // An operator calls the class's `publish` (its RPC) through any gateway.
    let out = std::process::Command::new(binary("roomctl"))
        .args(["--admin", &gateway.admin_url(), "invoke", "lobby", "publish", "lobby"])
        .arg(r#"{"type":"system","text":"maintenance at noon"}"#)
        .output()
        .expect("roomctl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null", "publish returns nothing");
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.json().await["text"], "maintenance at noon");
    }
    // Not a public method: refused with the class's reason, exit 1.
    let out = std::process::Command::new(binary("roomctl"))
        .args(["--admin", &gateway.admin_url(), "invoke", "lobby", "webSocketMessage"])
        .output()
        .expect("roomctl runs");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a public method"));
    // No credential: the class's own 400 reaches the client.
    let refused = Client::connect(&gateway.ws_url("lobby", "")).await.err().expect("refused");
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 400),
        other => panic!("expected the class's 400, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_room_keeps_its_sockets_and_storage_through_a_sigkill_of_its_owner() {
    let class = format!("--room-class=chat-*={}#ChatRoom", example("workerd-chat/worker.js"));
    let mut cluster = TestCluster::new(3, 2)
        .file_membership()
        .roomhost_arg("--lease-ttl=2s")
        .roomhost_arg(&class)
        .start()
        .await;
    let room = "chat-kill";
    let mut alice = Client::connect(&cluster.gateways[0].ws_url(room, "user=alice")).await.unwrap();
    let mut bob = Client::connect(&cluster.gateways[1].ws_url(room, "user=bob")).await.unwrap();
    alice.send_json(json!({"type": "name", "name": "Ann"})).await;
    bob.send_json(json!({"type": "chat", "text": "before"})).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.json().await["text"], "before");
    }
    let owner = cluster.owner_of(room).await;
    cluster.roomhosts[owner].process.kill();
    // A frame sent into the dead owner's stream before the gateway notices
    // is lost, and the class's broadcasts reach a gateway's sockets once
    // that gateway re-attached (class frames are delivered at most once and
    // have no replay; see docs/room-classes.md). Bob sends until Alice, on
    // the other gateway, hears him through the next owner, which serves
    // once the dead one's lease is gone. No socket closes.
    let mut heard = false;
    for attempt in 0..20 {
        bob.send_json(json!({"type": "chat", "text": format!("during-{attempt}")})).await;
        if let Some(chat) = alice.json_within(Duration::from_millis(500)).await {
            assert_eq!(chat["userName"], "bob");
            heard = true;
            break;
        }
    }
    assert!(heard, "the room serves both gateways again after its owner's lease");
    // Alice's socket and its attachment came through; her stored name too.
    alice.send_json(json!({"type": "chat", "text": "after"})).await;
    for client in [&mut alice, &mut bob] {
        let chat = skip_until(client, "after").await;
        assert_eq!(
            (chat["text"].as_str(), chat["userName"].as_str()),
            (Some("after"), Some("Ann"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_move_of_a_class_room_loses_nothing_a_client_sends_and_closes_no_socket() {
    let class = format!("--room-class=chat-*={}#ChatRoom", example("workerd-chat/worker.js"));
    let mut cluster = TestCluster::new(3, 2).file_membership().roomhost_arg(&class).start().await;
    let room = "chat-move";
    let mut alice = Client::connect(&cluster.gateways[0].ws_url(room, "user=alice")).await.unwrap();
    let mut bob = Client::connect(&cluster.gateways[1].ws_url(room, "user=bob")).await.unwrap();
    alice.send_json(json!({"type": "name", "name": "Ann"})).await;
    bob.send_json(json!({"type": "chat", "text": "before"})).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.json().await["text"], "before");
    }
    let owner = cluster.owner_of(room).await;
    // Bob keeps sending while the owner hands the room over (SIGTERM).
    const SENT: usize = 30;
    let sender = tokio::spawn(async move {
        for n in 0..SENT {
            bob.send_json(json!({"type": "chat", "text": format!("m{n}")})).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bob
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        cluster.roomhosts[owner].process.terminate(Duration::from_secs(15)).await,
        "clean exit"
    );
    let mut bob = sender.await.unwrap();
    // Every message Bob sent comes back to him once, in order: held by his
    // gateway during the move and sent to the next owner.
    let mut echoed = Vec::new();
    while echoed.len() < SENT {
        let chat = bob.json().await;
        echoed.push(chat["text"].as_str().unwrap_or_default().to_owned());
    }
    let expected: Vec<String> = (0..SENT).map(|n| format!("m{n}")).collect();
    assert_eq!(echoed, expected);
    // Alice's socket stayed open through it, with her name.
    alice.send_json(json!({"type": "chat", "text": "after"})).await;
    for client in [&mut alice, &mut bob] {
        let chat = skip_until(client, "after").await;
        assert_eq!(chat["userName"], "Ann");
    }
}
