//! The gateway's HTTP surface, on the zero-setup default (embedded roomhost,
//! in-memory store), which is also what the README's first command runs.

use rooms_proto::server::ServerFrame;
use rooms_tests::client::{get, http};
use rooms_tests::{Client, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer_as_documented() {
    let cluster = TestCluster::embedded(1).start().await;
    let gw = &cluster.gateways[0];

    let (status, body) = get(&gw.http, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("text/html") && body.contains("<title>rooms"));
    assert!(body.contains("script-src 'self'"), "the page runs only its own scripts");
    for script in ["/demo.js", "/rooms-client.js"] {
        let (status, body) = get(&gw.http, script).await;
        assert_eq!(status, 200, "{script}");
        assert!(body.contains("text/javascript"), "{script}");
        assert!(!body.contains("innerHTML"), "{script} renders user text with textContent");
    }
    assert_eq!(get(&gw.http, "/favicon.ico").await.0, 204, "no icon, and no 404 either");
    assert_eq!(get(&gw.http, "/healthz").await.0, 200);
    assert_eq!(get(&gw.http, "/readyz").await.0, 200);
    let (status, body) = get(&gw.http, "/rooms/lobby/ws").await;
    assert_eq!(status, 426);
    assert!(body.contains("WebSocket"));
    assert_eq!(get(&gw.http, "/nope").await.0, 404);
    assert_eq!(get(&gw.http, "/rooms/lobby/ws/extra").await.0, 404);
    assert_eq!(get(&gw.http, "/rooms/bad%20room").await.0, 400);
    let (status, _) = http(
        &gw.http,
        "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);

    // The embedded default chats end to end.
    let (mut ann, _, _) = Client::join(&gw.ws_url("lobby", "user=ann")).await;
    ann.chat("hello", "h1").await;
    let frame = ann.until(|f| matches!(f, ServerFrame::Chat { .. })).await;
    assert!(matches!(frame, ServerFrame::Chat { seq: Some(1), .. }));

    let (status, body) = get(&gw.http, "/rooms/lobby").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""connections":1"#) && body.contains(r#""seq":1"#), "{body}");

    let (status, body) = get(&gw.http, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "rooms_gateway_connections_open 1",
        "rooms_gateway_frames_in_total 1",
        "rooms_gateway_frames_out_total",
        // The embedded roomhost's own series are served with the gateway's.
        "rooms_roomhost_rooms_active 1",
        "rooms_roomhost_events_persisted_total 1",
    ] {
        assert!(body.contains(series), "missing {series} in\n{body}");
    }
    assert_eq!(body.matches("# EOF").count(), 1, "one exposition, ended once");
    assert!(body.trim_end().ends_with("# EOF"));

    // Without ?user= a random anonymous id is given.
    let (_anon, hello, _) = Client::join(&gw.ws_url("lobby", "")).await;
    assert!(matches!(hello, ServerFrame::Welcome { user_id, .. } if user_id.starts_with("anon-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sockets_with_1012_and_exits_cleanly() {
    let mut cluster = TestCluster::embedded(1).start().await;
    let (mut client, _, _) = Client::join(&cluster.gateways[0].ws_url("bye", "user=u")).await;
    let mut gateway = cluster.gateways.remove(0);
    let stopping =
        tokio::spawn(
            async move { gateway.process.terminate(std::time::Duration::from_secs(15)).await },
        );
    assert_eq!(client.closed().await, Some(1012));
    assert!(stopping.await.unwrap(), "gateway exited with success after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nuxflare_clients_pass_room_and_user_as_the_first_subprotocol() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let cluster = TestCluster::embedded(1).start().await;
    let gw = &cluster.gateways[0];
    // base64("lobby:nux") without padding, then the real subprotocol.
    let mut request = format!("ws://{}/ws", gw.http).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "bG9iYnk6bnV4, chat".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.expect("connect");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap()),
        Some("chat"),
        "the next offered subprotocol is selected, never the credential"
    );
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let welcome: ServerFrame = serde_json::from_str(&first).unwrap();
    assert!(
        matches!(&welcome, ServerFrame::Welcome { room, user_id, .. } if room == "lobby" && user_id == "nux"),
        "{welcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_get_pings() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let cluster = TestCluster::embedded(1).gateway_arg("--ping-interval=300ms").start().await;
    let url = cluster.gateways[0].ws_url("quiet", "user=idle");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    let ping = tokio::time::timeout(rooms_tests::DEADLINE, async {
        while let Some(Ok(message)) = ws.next().await {
            if matches!(message, Message::Ping(_)) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ping, Ok(true), "an idle socket got a ping");
}
