//! The operator API through the gateways, and `roomctl` on top of it.

use std::process::Command;

use rooms_proto::admin::admin_client::AdminClient;
use rooms_proto::admin::{GetRoomRequest, KickRequest, PublishRequest};
use rooms_proto::server::ServerFrame;
use rooms_tests::process::binary;
use rooms_tests::{Client, TestCluster};
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_through_one_gateway_reaches_clients_of_another() {
    let cluster = TestCluster::new(2, 2).start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut on_b = b.join("news", "reader").await;
    on_b.chat("first", "").await;
    on_b.chats(1).await;

    let mut admin = AdminClient::connect(a.admin_url()).await.expect("admin");
    let reply = admin
        .publish(PublishRequest {
            room: "news".into(),
            data_json: r#"{"text":"maintenance at noon","level":2}"#.into(),
            persist: Some(true),
        })
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(reply.seq, 2, "a persisted system event takes the next seq");
    match on_b.until(|f| matches!(f, ServerFrame::System { .. })).await {
        ServerFrame::System { seq, data } => {
            assert_eq!(seq, 2);
            assert_eq!(data, json!({"text": "maintenance at noon", "level": 2}));
        }
        _ => unreachable!(),
    }

    // Not persisted: delivered with seq 0 and absent from history.
    let reply = admin
        .publish(PublishRequest {
            room: "news".into(),
            data_json: r#"{"ping":1}"#.into(),
            persist: Some(false),
        })
        .await
        .expect("publish")
        .into_inner();
    assert_eq!(reply.seq, 0);
    assert!(matches!(
        on_b.until(|f| matches!(f, ServerFrame::System { .. })).await,
        ServerFrame::System { seq: 0, .. }
    ));
    let (_late, _, history) = Client::join(&a.ws_url("news", "user=late")).await;
    match history {
        ServerFrame::History { messages, .. } => {
            assert_eq!(
                messages.iter().filter_map(ServerFrame::seq).collect::<Vec<_>>(),
                vec![1, 2]
            );
        }
        other => panic!("{other:?}"),
    }

    // Room info, from either gateway.
    let info = admin
        .get_room(GetRoomRequest { room: "news".into() })
        .await
        .expect("get_room")
        .into_inner();
    assert_eq!((info.room.as_str(), info.connections, info.users, info.seq), ("news", 2, 2, 2));
    assert!(
        cluster.roomhosts.iter().any(|r| r.addr == info.owner),
        "owner is a roomhost: {}",
        info.owner
    );
    let (status, body) = rooms_tests::client::get(&b.http, "/rooms/news").await;
    assert_eq!(status, 200);
    let json_body: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json_body["owner"], info.owner.as_str());
    assert_eq!(json_body["seq"], 2);

    // Bad arguments.
    for (room, data) in [("news", "not json"), ("news", "[1,2]"), ("bad room", "{}")] {
        let err = admin
            .publish(PublishRequest { room: room.into(), data_json: data.into(), persist: None })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{room} {data}");
    }
    let err = admin.get_room(GetRoomRequest { room: "".into() }).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Kick closes exactly that user's connections with 4001.
    let mut kicked = a.join("news", "troll").await;
    let reply = admin
        .kick(KickRequest { room: "news".into(), user_id: "troll".into(), reason: "spam".into() })
        .await
        .expect("kick")
        .into_inner();
    assert_eq!(reply.closed, 1);
    assert_eq!(kicked.closed().await, Some(4001));
    on_b.chat("still here", "").await;
    on_b.until(|f| matches!(f, ServerFrame::Chat { text, .. } if text == "still here")).await;
}

fn roomctl(admin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("roomctl"))
        .arg("--admin")
        .arg(admin)
        .args(args)
        .output()
        .expect("roomctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roomctl_publishes_and_shows_rooms() {
    let cluster = TestCluster::new(1, 2).gateway_arg("--admin-token=s3cret").start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut client = b.join("ops", "watcher").await;
    let admin = a.admin_url();

    let (code, out, err) =
        roomctl(&admin, &["--token", "s3cret", "publish", "ops", "--data", r#"{"text":"hello"}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "published to ops as seq 1");
    let frame = client.until(|f| matches!(f, ServerFrame::System { .. })).await;
    assert!(matches!(frame, ServerFrame::System { seq: 1, data } if data["text"] == "hello"));

    let (code, out, _) = roomctl(&admin, &["--token", "s3cret", "--json", "room", "ops"]);
    assert_eq!(code, 0);
    let room: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (room["room"].as_str(), room["connections"].as_u64(), room["seq"].as_u64()),
        (Some("ops"), Some(1), Some(1))
    );

    let (code, out, _) = roomctl(&admin, &["--token", "s3cret", "room", "ops"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ROOM") && out.contains("ops"), "{out}");

    let (code, out, _) = roomctl(&admin, &["--token", "s3cret", "--json", "rooms"]);
    assert_eq!(code, 0);
    let rooms: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(rooms["rooms"][0]["room"], "ops");
    assert_eq!(rooms["rooms"][0]["connections"], 1);
    let (code, out, _) = roomctl(&admin, &["--token", "s3cret", "--json", "status"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["roomhosts"][0]["address"], cluster.roomhosts[0].addr.as_str());
    assert_eq!(status["roomhosts"][0]["healthy"], true);
    assert_eq!(status["roomhosts"][0]["activeRooms"], 1);
    assert_eq!(status["ringVersion"], 1);
    let (code, out, _) = roomctl(&admin, &["--token", "s3cret", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("healthy") && out.contains(&cluster.roomhosts[0].addr), "{out}");

    // Scripts can tell failures apart.
    let (code, _, err) = roomctl(&admin, &["publish", "ops", "--data", "{}"]);
    assert_eq!(code, 4, "no token: {err}");
    let (code, _, _) = roomctl(&admin, &["--token", "wrong", "room", "ops"]);
    assert_eq!(code, 4);
    let (code, _, err) = roomctl(&admin, &["--token", "s3cret", "publish", "ops", "--data", "[]"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = roomctl("http://127.0.0.1:1", &["status"]);
    assert_eq!(code, 3);
    assert!(err.contains("cannot reach"), "{err}");
}

/// Runs `roomctl bench` against `url` and returns its report and stderr.
fn bench(url: &str, args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(binary("roomctl"))
        .args(["bench", "--url", url, "--duration", "2s"])
        .args(args)
        .output()
        .expect("roomctl bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let report = serde_json::from_slice(&out.stdout).expect("one JSON report");
    (report, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roomctl_bench_defaults_fit_a_default_gateway_and_a_rate_limit_is_named() {
    // The gateway's default per-connection limit: 20 messages/s, burst 40.
    let cluster = TestCluster::new(1, 1).start().await;
    let url = format!("ws://{}", cluster.gateways[0].http);

    let (report, stderr) = bench(&url, &["--clients", "20"]);
    assert_eq!(
        (report["senders"].as_u64(), report["errors"].as_u64()),
        (Some(10), Some(0)),
        "{report}"
    );
    // 10 senders × 10 messages/s for 2 s, each delivered to 20 clients.
    assert!(report["delivered"].as_u64().unwrap_or(0) >= 3000, "{report}");
    assert!(!stderr.contains("rate limited"), "{stderr}");

    // One sender at 100/s: refused past its burst, and told why.
    let (report, stderr) = bench(&url, &["--clients", "5", "--senders", "1", "--rate", "100"]);
    assert!(report["rate_limited"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(stderr.contains("spread --rate over more --senders"), "{stderr}");
}
