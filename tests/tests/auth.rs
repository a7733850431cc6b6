//! Who may connect: JWT verification (algorithm pinned, expiry, audience,
//! rooms claim), tokens in the query, header or subprotocol, Origin checks,
//! the Admin token, Kick across gateways, and the connection cap.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use rooms_proto::admin::KickRequest;
use rooms_proto::admin::admin_client::AdminClient;
use rooms_proto::server::ServerFrame;
use rooms_tests::client::http;
use rooms_tests::process::binary;
use rooms_tests::{Client, TestCluster};
use serde_json::{Value, json};

const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The status of a WebSocket handshake with extra header lines.
async fn handshake(addr: &str, path: &str, extra: &str) -> u16 {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    http(addr, &request).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_are_verified_before_the_upgrade() {
    let cluster = TestCluster::new(1, 1)
        .gateway_arg("--auth=jwt")
        .gateway_arg(&format!("--jwt-secret={SECRET}"))
        .gateway_arg("--jwt-audience=rooms")
        .gateway_arg("--allowed-origins=https://app.example.com,*.example.org")
        .start()
        .await;
    let gw = &cluster.gateways[0];
    let good =
        json!({"sub": "ann", "aud": "rooms", "exp": now() + 600, "rooms": ["lobby", "team-*"]});
    let token = hs256(&good, SECRET.as_bytes());
    let path = |room: &str, token: &str| format!("/rooms/{room}/ws?token={token}");

    assert_eq!(handshake(&gw.http, &path("lobby", &token), "").await, 101, "valid token");
    assert_eq!(handshake(&gw.http, &path("team-7", &token), "").await, 101, "prefix pattern");
    assert_eq!(
        handshake(&gw.http, "/rooms/lobby/ws", &format!("Authorization: Bearer {token}\r\n")).await,
        101
    );
    assert_eq!(handshake(&gw.http, &path("other", &token), "").await, 403, "rooms claim");
    assert_eq!(handshake(&gw.http, "/rooms/lobby/ws?user=ann", "").await, 401, "no token");

    let expired =
        hs256(&json!({"sub": "ann", "aud": "rooms", "exp": now() - 3600}), SECRET.as_bytes());
    assert_eq!(handshake(&gw.http, &path("lobby", &expired), "").await, 401, "expired");
    let forged = hs256(&good, b"another-secret-of-32-bytes-long!");
    assert_eq!(handshake(&gw.http, &path("lobby", &forged), "").await, 401, "wrong signature");
    let wrong_aud =
        hs256(&json!({"sub": "ann", "aud": "elsewhere", "exp": now() + 600}), SECRET.as_bytes());
    assert_eq!(handshake(&gw.http, &path("lobby", &wrong_aud), "").await, 401, "wrong audience");
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(good.to_string().as_bytes())
    );
    assert_eq!(handshake(&gw.http, &path("lobby", &none), "").await, 401, "alg none");
    assert_eq!(handshake(&gw.http, &path("lobby", "garbage"), "").await, 401);

    // A plain GET (no upgrade) carrying a token answers what the handshake
    // would refuse it with, so browser clients can learn why they failed;
    // one that would pass, or carries no token, gets 426.
    let plain = |path: String| async move {
        http(&gw.http, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")).await.0
    };
    assert_eq!(plain(path("lobby", &expired)).await, 401, "plain GET, expired");
    assert_eq!(plain(path("other", &token)).await, 403, "plain GET, room not allowed");
    assert_eq!(plain(path("lobby", &token)).await, 426, "plain GET, good token");
    assert_eq!(plain("/rooms/lobby/ws".into()).await, 426, "plain GET, no token");

    // Origins: listed ones pass, others are refused (hijacking protection).
    let origin = |o: &str| format!("Origin: {o}\r\n");
    assert_eq!(
        handshake(&gw.http, &path("lobby", &token), &origin("https://app.example.com")).await,
        101
    );
    assert_eq!(
        handshake(&gw.http, &path("lobby", &token), &origin("https://x.example.org")).await,
        101
    );
    assert_eq!(
        handshake(&gw.http, &path("lobby", &token), &origin("https://evil.example")).await,
        403
    );

    // The token as first subprotocol: accepted, never echoed; `chat` selected.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/rooms/lobby/ws", gw.http).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", format!("{token}, chat").parse().unwrap());
    let (mut ws, response) =
        tokio_tungstenite::connect_async(request).await.expect("subprotocol token");
    assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "chat");
    use futures_util::StreamExt;
    let first: ServerFrame =
        serde_json::from_str(&ws.next().await.unwrap().unwrap().into_text().unwrap()).unwrap();
    assert!(
        matches!(first, ServerFrame::Welcome { user_id, .. } if user_id == "ann"),
        "sub is the user id"
    );

    // `roomctl token` mints what the gateway accepts.
    let out = Command::new(binary("roomctl"))
        .args([
            "token",
            "--secret",
            SECRET,
            "--user",
            "bo",
            "--rooms",
            "lobby",
            "--audience",
            "rooms",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let minted = String::from_utf8(out.stdout).unwrap();
    let (_bo, hello, _) =
        Client::join(&gw.ws_url("lobby", &format!("token={}", minted.trim()))).await;
    assert!(matches!(hello, ServerFrame::Welcome { user_id, .. } if user_id == "bo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_mid_session_closes_it_with_4003() {
    let cluster = TestCluster::new(1, 1)
        .gateway_arg("--auth=jwt")
        .gateway_arg(&format!("--jwt-secret={SECRET}"))
        .start()
        .await;
    let gw = &cluster.gateways[0];
    // Expired 25 s ago: within the 30 s leeway, so accepted, then closed at exp + leeway.
    let token = hs256(&json!({"sub": "ann", "exp": now() - 25}), SECRET.as_bytes());
    let (mut client, _, _) = Client::join(&gw.ws_url("lobby", &format!("token={token}"))).await;
    assert_eq!(client.closed().await, Some(4003));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_is_pinned_and_an_hs256_token_signed_with_the_public_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("rooms-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&private)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status();
    assert!(ok.unwrap().success(), "openssl pkey");
    let cluster = TestCluster::new(1, 1)
        .gateway_arg("--auth=jwt")
        .gateway_arg(&format!("--jwt-public-key={}", public.display()))
        .start()
        .await;
    let gw = &cluster.gateways[0];
    let claims = json!({"sub": "rsa-user", "exp": now() + 600});
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let rs = encode(&Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap();
    assert_eq!(handshake(&gw.http, &format!("/rooms/r/ws?token={rs}"), "").await, 101);
    let confused = hs256(&claims, &std::fs::read(&public).unwrap());
    assert_eq!(handshake(&gw.http, &format!("/rooms/r/ws?token={confused}"), "").await, 401);

    // The same key published as a JWKS: the token's `kid` selects it.
    let modulus = Command::new("openssl")
        .args(["rsa", "-pubin", "-noout", "-modulus", "-in"])
        .arg(&public)
        .output()
        .unwrap();
    let hex = String::from_utf8(modulus.stdout).unwrap();
    let hex = hex.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": b64url(&n), "e": "AQAB"}]});
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let with_jwks = TestCluster::new(1, 1)
        .gateway_arg("--auth=jwt")
        .gateway_arg(&format!("--jwt-jwks={}", jwks_path.display()))
        .start()
        .await;
    let jw = &with_jwks.gateways[0];
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let by_kid = encode(&header, &claims, &key).unwrap();
    assert_eq!(handshake(&jw.http, &format!("/rooms/r/ws?token={by_kid}"), "").await, 101);
    header.kid = Some("other".into());
    let unknown_kid = encode(&header, &claims, &key).unwrap();
    assert_eq!(handshake(&jw.http, &format!("/rooms/r/ws?token={unknown_kid}"), "").await, 401);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_closes_exactly_that_users_connections_on_every_gateway() {
    let cluster = TestCluster::new(1, 2).gateway_arg("--admin-token=ops-token").start().await;
    let (a, b) = (&cluster.gateways[0], &cluster.gateways[1]);
    let mut troll_a = a.join("kick", "troll").await;
    let mut troll_b = b.join("kick", "troll").await;
    let mut nice = b.join("kick", "nice").await;
    let mut admin = AdminClient::connect(a.admin_url()).await.unwrap();
    let kick =
        || KickRequest { room: "kick".into(), user_id: "troll".into(), reason: "spam".into() };
    let denied = admin.kick(kick()).await.expect_err("no token");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(kick());
    request.metadata_mut().insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        admin.kick(request).await.expect_err("wrong token").code(),
        tonic::Code::Unauthenticated
    );
    let mut request = tonic::Request::new(kick());
    request.metadata_mut().insert("authorization", "Bearer ops-token".parse().unwrap());
    assert_eq!(admin.kick(request).await.expect("kick").into_inner().closed, 2);
    assert_eq!(troll_a.closed().await, Some(4001));
    assert_eq!(troll_b.closed().await, Some(4001));
    nice.chat("still here", "").await;
    nice.until(|f| matches!(f, ServerFrame::Chat { text, .. } if text == "still here")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_upgrades_get_503() {
    let cluster = TestCluster::new(1, 1).gateway_arg("--max-connections=2").start().await;
    let gw = &cluster.gateways[0];
    let _one = gw.join("cap", "one").await;
    let _two = gw.join("cap", "two").await;
    assert_eq!(handshake(&gw.http, "/rooms/cap/ws?user=three", "").await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::new(1, 1).gateway_arg("--handshake-timeout=1s").start().await;
    let mut slow = tokio::net::TcpStream::connect(&cluster.gateways[0].http).await.unwrap();
    // Headers that never end (slowloris).
    slow.write_all(b"GET /rooms/lobby/ws HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(rooms_tests::DEADLINE, slow.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "the gateway closed the connection");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}
