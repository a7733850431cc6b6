//! Durable Object classes from `examples/`, unmodified, running as rooms on
//! a real cluster (Redis, roomhosts, gateways), reached by real WebSocket
//! clients: the workerd peer's `ChatRoom` across two gateways, and the
//! Nuxflare tutorial's class with its base64 `room:user` subprotocol;
//! messages through crashes, moves and rolling restarts; hibernation and
//! exceptions (with a test class from `tests/fixtures/`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rooms_proto::server::ServerFrame;
use rooms_tests::client::metric;
use rooms_tests::process::{binary, roomctl_ok};
use rooms_tests::{Client, TestCluster, eventually};
use serde_json::json;

fn example(file: &str) -> String {
    format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"))
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
    let cluster = TestCluster::new(3, 2).roomhost_arg(&class).start().await;
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
    let cluster = TestCluster::new(3, 2).roomhost_arg(&class).start().await;
    let gateway = &cluster.gateways[0];
    // base64("lobby:alice") without padding, then the protocol the app speaks.
    let url = format!("ws://{}/", gateway.http);
    let (mut alice, selected) =
        Client::connect_with_protocols(&url, "bG9iYnk6YWxpY2U, chat").await.unwrap();
    assert_eq!(selected.as_deref(), Some("chat"), "the class chose the subprotocol");
    // Bob on the other gateway.
    let url = format!("ws://{}/", cluster.gateways[1].http);
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

/// What happens to the class room's owner while a client sends.
enum Fault {
    /// SIGSTOP of the owner while messages go into its stream, then SIGKILL.
    Kill,
    /// SIGTERM of the owner: it hands the room over.
    Terminate,
    /// Every roomhost in turn stops (SIGTERM) and a new one takes its place
    /// in the membership.
    RollingRestart,
}

/// Alice (first gateway) and Bob (second) in a workerd `ChatRoom` room on
/// three roomhosts; Bob keeps sending through `fault`. Both hear every
/// message of his once and in order, no socket closes, and Alice's stored
/// name and attachment come through.
async fn nothing_lost_through(fault: Fault, room: &str) {
    let class = format!("--room-class=chat-*={}#ChatRoom", example("workerd-chat/worker.js"));
    let mut cluster = TestCluster::new(3, 2)
        .file_membership()
        .roomhost_arg("--lease-ttl=2s")
        .roomhost_arg(&class)
        .start()
        .await;
    let mut alice = Client::connect(&cluster.gateways[0].ws_url(room, "user=alice")).await.unwrap();
    let mut bob = Client::connect(&cluster.gateways[1].ws_url(room, "user=bob")).await.unwrap();
    alice.send_json(json!({"type": "name", "name": "Ann"})).await;
    bob.send_json(json!({"type": "chat", "text": "before"})).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.json().await["text"], "before");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) || sent < 10 {
                bob.send_json(json!({"type": "chat", "text": format!("m{sent}")})).await;
                sent += 1;
                // Under the gateway's rate limit (20/s): nothing is dropped.
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            (bob, sent)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let owner = cluster.owner_of(room).await;
    match fault {
        Fault::Kill => {
            // Frozen first, so that what Bob sends meanwhile goes into the
            // owner's stream and is never answered.
            cluster.roomhosts[owner].process.freeze();
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.roomhosts[owner].process.kill();
        }
        Fault::Terminate => assert!(
            cluster.roomhosts[owner].process.terminate(Duration::from_secs(15)).await,
            "clean exit"
        ),
        Fault::RollingRestart => {
            for i in 0..cluster.roomhosts.len() {
                assert!(
                    cluster.roomhosts[i].process.terminate(Duration::from_secs(15)).await,
                    "clean exit"
                );
                let fresh = cluster.spawn_roomhost().await;
                drop(std::mem::replace(&mut cluster.roomhosts[i], fresh));
                let members: Vec<String> =
                    cluster.roomhosts.iter().map(|r| r.addr.clone()).collect();
                cluster.set_members(&members).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut bob, sent) = sender.await.unwrap();
    let expected: Vec<String> = (0..sent).map(|n| format!("m{n}")).collect();
    for (who, client) in [("bob", &mut bob), ("alice", &mut alice)] {
        let mut heard = Vec::new();
        while heard.len() < sent {
            let Some(chat) = client.json_within(Duration::from_secs(15)).await else {
                panic!("{who} heard only {heard:?} of {sent}");
            };
            assert_eq!(chat["userName"], "bob", "{who}: {chat}");
            heard.push(chat["text"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(heard, expected, "{who} hears every message once, in order");
    }
    alice.send_json(json!({"type": "chat", "text": "after"})).await;
    for client in [&mut alice, &mut bob] {
        let chat = client.json().await;
        assert_eq!(
            (chat["text"].as_str(), chat["userName"].as_str()),
            (Some("after"), Some("Ann")),
            "the stored name and the attachment came through"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_of_a_class_rooms_owner_loses_nothing_runs_nothing_twice_and_closes_no_socket() {
    nothing_lost_through(Fault::Kill, "chat-kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_move_of_a_class_room_loses_nothing_a_client_sends_and_closes_no_socket() {
    nothing_lost_through(Fault::Terminate, "chat-move").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_room_keeps_every_socket_and_message_through_a_rolling_restart() {
    nothing_lost_through(Fault::RollingRestart, "chat-roll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_class_room_keeps_sockets_storage_attachments_and_a_throw_closes_nothing() {
    let fixture = format!("{}/fixtures/echo-or-throw.js", env!("CARGO_MANIFEST_DIR"));
    let cluster = TestCluster::new(1, 1)
        .roomhost_arg("--room-idle-timeout=1s")
        .roomhost_arg(&format!("--room-class=*={fixture}#EchoOrThrow"))
        .start()
        .await;
    let gateway = &cluster.gateways[0];
    let roomhost = &cluster.roomhosts[0];
    let mut a = Client::connect(&gateway.ws_url("echo", "user=a")).await.unwrap();
    let mut b = Client::connect(&gateway.ws_url("echo", "user=b")).await.unwrap();
    a.send_text("one").await;
    for client in [&mut a, &mut b] {
        let echo = client.json().await;
        assert_eq!((echo["count"].as_u64(), echo["message"].as_str()), (Some(1), Some("one")));
    }
    // A second without events: the instance leaves memory, the sockets stay.
    let instances = "rooms_roomhost_class_instances";
    assert_eq!(metric(&roomhost.metrics, instances).await, 1.0);
    eventually("the instance hibernated", || async {
        (metric(&roomhost.metrics, instances).await == 0.0).then_some(())
    })
    .await;
    // The next message builds it again: the stored count, the sockets with
    // their tags (getWebSockets("echo")) and attachments (the sender's URL).
    b.send_text("two").await;
    for client in [&mut a, &mut b] {
        let echo = client.json().await;
        assert_eq!(echo["count"], 2, "storage survived hibernation: {echo}");
        assert!(echo["from"].as_str().is_some_and(|url| url.contains("user=b")), "{echo}");
    }
    assert_eq!(metric(&roomhost.metrics, instances).await, 1.0);
    // A handler that throws: logged with the room, what it stored before
    // the throw stands, and no socket closes.
    a.send_text("throw").await;
    a.send_text("three").await;
    for client in [&mut a, &mut b] {
        let echo = client.json().await;
        assert_eq!((echo["count"].as_u64(), echo["message"].as_str()), (Some(4), Some("three")));
    }
    assert_eq!(metric(&roomhost.metrics, "rooms_roomhost_class_exceptions_total").await, 1.0);
    let logs = roomhost.process.logs();
    assert!(
        logs.iter().any(|l| l.contains("class threw") && l.contains("room.id=echo")),
        "the exception is logged with its room"
    );
    // The class closes a socket with its own code.
    b.send_text("close").await;
    assert_eq!(b.closed().await, Some(4000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflares_docs_example_serves_its_websocket_and_http_endpoints_under_the_room() {
    let class = format!(
        "--room-class=foo={}#WebSocketServer",
        example("cloudflare-docs/websocket-server.js")
    );
    let cluster = TestCluster::new(3, 2).roomhost_arg(&class).start().await;
    let gateway = &cluster.gateways[1];
    // The example's Worker sends every request to the object named "foo";
    // here the room is in the path, the rest of the path is the class's.
    let url = format!("ws://{}/rooms/foo/websocket", cluster.gateways[0].http);
    let mut client = Client::connect(&url).await.unwrap();
    client.send_text("hi").await;
    let echo = client.text_within(Duration::from_secs(5)).await;
    assert_eq!(echo.as_deref(), Some("[Durable Object]: hi"));
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", gateway.http)
    };
    // Asked through the other gateway: the same instance counts the socket.
    let (status, response) =
        rooms_tests::client::http(&gateway.http, &get("/rooms/foo/getCurrentConnections")).await;
    assert_eq!(status, 200, "{response}");
    assert!(
        response
            .ends_with("There is 1 WebSocket client connected to this Durable Object instance."),
        "{response}"
    );
    let (status, response) = rooms_tests::client::http(&gateway.http, &get("/rooms/foo/")).await;
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("/getCurrentConnections"), "the usage text: {response}");
    // A chat room has nothing under its path but `ws`.
    let (status, _) = rooms_tests::client::http(&gateway.http, &get("/rooms/lobby/other")).await;
    assert_eq!(status, 404);
}

/// Starts a roomhost with `class`, which it must refuse at once (exit 2);
/// what it said.
fn refused_at_startup(class: &str) -> String {
    let out = std::process::Command::new(binary("roomhost"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", class])
        .output()
        .expect("roomhost runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn a_bad_bundle_stops_the_roomhost_at_startup_naming_its_file_and_line() {
    let dir = std::env::temp_dir().join(format!("rooms-bad-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("game.js");
    std::fs::write(&bundle, "export class Game {\n  webSocketMessage(ws, m) { ws.send( }\n}\n")
        .unwrap();
    let stderr = refused_at_startup(&format!("--room-class=game-*={}#Game", bundle.display()));
    assert!(stderr.contains(&format!("{}:2", bundle.display())), "file and line: {stderr}");
    // A class the bundle does not export is as clear.
    let missing = format!("--room-class=game-*={}#Missing", example("workerd-chat/worker.js"));
    let stderr = refused_at_startup(&missing);
    assert!(stderr.contains("Missing"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A class whose replies say which version of the code answered.
fn versioned(version: &str) -> String {
    format!(
        r#"export class Versioned {{
  constructor(ctx) {{ this.ctx = ctx; }}
  async fetch() {{
    const [client, server] = Object.values(new WebSocketPair());
    this.ctx.acceptWebSocket(server);
    return new Response(null, {{ status: 101, webSocket: client }});
  }}
  async webSocketMessage(ws, message) {{
    const count = ((await this.ctx.storage.get("count")) ?? 0) + 1;
    await this.ctx.storage.put("count", count);
    ws.send(JSON.stringify({{ version: "{version}", count, message }}));
  }}
}}
"#
    )
}

fn roomctl_json(admin: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&roomctl_ok(admin, &[&["--json"], args].concat())).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_to_new_code_moves_rooms_onto_it_without_closing_a_socket() {
    let dir = std::env::temp_dir().join(format!("rooms-update-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("versioned.js");
    std::fs::write(&bundle, versioned("v1")).unwrap();
    let class = format!("--room-class=v-*={}#Versioned", bundle.display());
    let mut cluster = TestCluster::new(3, 2).file_membership().roomhost_arg(&class).start().await;
    let admin = cluster.gateways[0].admin_url();
    let mut client = Client::connect(&cluster.gateways[1].ws_url("v-1", "")).await.unwrap();
    client.send_text("a").await;
    assert_eq!(client.json().await["version"], "v1");
    let before = roomctl_json(&admin, &["room", "v-1"]);
    assert_eq!(before["class"], "Versioned");
    // New code: every roomhost in turn is replaced by one that loads it.
    std::fs::write(&bundle, versioned("v2")).unwrap();
    for i in 0..cluster.roomhosts.len() {
        assert!(cluster.roomhosts[i].process.terminate(Duration::from_secs(15)).await);
        let fresh = cluster.spawn_roomhost().await;
        drop(std::mem::replace(&mut cluster.roomhosts[i], fresh));
        let members: Vec<String> = cluster.roomhosts.iter().map(|r| r.addr.clone()).collect();
        cluster.set_members(&members).await;
    }
    // The same socket, the new code, the stored count.
    client.send_text("b").await;
    let reply = client.json().await;
    assert_eq!((reply["version"].as_str(), reply["count"].as_u64()), (Some("v2"), Some(2)));
    let after = roomctl_json(&admin, &["room", "v-1"]);
    assert_eq!(after["class"], "Versioned");
    assert_ne!(after["bundle"], before["bundle"], "the owner reports the new bundle");
    let chat = roomctl_json(&admin, &["room", "lobby"]);
    assert!(chat.get("class").is_none(), "a chat room has no class: {chat}");
    std::fs::remove_dir_all(&dir).unwrap();
}
