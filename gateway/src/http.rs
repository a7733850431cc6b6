//! The gateway's HTTP surface: WebSocket upgrades on `/rooms/{room}/ws`
//! (and the Nuxflare-compatible `/` and `/ws`), any request under
//! `/rooms/{room}/` of a class room (its class answers), the demo page,
//! health, metrics and room info. Every check happens before the upgrade.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rooms_proto::RoomId;
use rooms_proto::admin::GetRoomRequest;
use rooms_proto::host::StatusRequest;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{Access, Denied};
use crate::config::MAX_FRAME_BYTES;
use crate::session::{self, Session, SessionEnv};
use crate::{class_handshake, socket, subprotocol};

/// Initial read buffer per socket.
pub(crate) const READ_BUFFER_BYTES: usize = 512;
const DEMO_PAGE: &str = include_str!("assets/demo.html");
const DEMO_SCRIPT: &str = include_str!("assets/demo.js");
/// The browser client library, served for the demo page and for apps that
/// want it without a build step.
const CLIENT_LIBRARY: &str = include_str!("../../clients/js/rooms-client.js");
/// The demo page runs only its own scripts; user text never becomes markup.
const DEMO_CSP: &str = "default-src 'self'; style-src 'unsafe-inline'; script-src 'self'; \
                        connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'";
/// Longest wait for one roomhost call made on behalf of an HTTP request.
const UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub type Body = Full<Bytes>;

/// State shared by every HTTP request.
pub struct HttpState {
    pub env: SessionEnv,
    pub access: Arc<Access>,
    pub connections: Arc<Semaphore>,
    pub next_conn: AtomicU64,
    /// The embedded roomhost's metrics (zero-setup mode), served with ours.
    pub embedded_metrics: Option<Arc<roomhost::Metrics>>,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// A refused handshake, with a short reason in the body.
fn refuse(state: &HttpState, denied: Denied) -> Response<Body> {
    state.env.metrics.connections_refused.inc();
    denial(denied)
}

fn denial(denied: Denied) -> Response<Body> {
    match denied {
        Denied::Unauthorized(reason) => text(StatusCode::UNAUTHORIZED, reason),
        Denied::Forbidden(reason) => text(StatusCode::FORBIDDEN, reason),
        Denied::BadRequest(reason) => text(StatusCode::BAD_REQUEST, reason),
    }
}

/// A static file of the demo.
fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header("content-security-policy", DEMO_CSP)
        .header("x-content-type-options", "nosniff")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_default()
}

pub(crate) async fn respond(state: Arc<HttpState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let upgrade = wants_websocket(req.headers());
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") if !upgrade => asset("text/html; charset=utf-8", DEMO_PAGE),
        (&Method::GET, "/demo.js") => asset("text/javascript; charset=utf-8", DEMO_SCRIPT),
        (&Method::GET, "/rooms-client.js") => {
            asset("text/javascript; charset=utf-8", CLIENT_LIBRARY)
        }
        // Browsers ask for it on every page: no icon, and no 404 in their console.
        (&Method::GET, "/favicon.ico") => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::default())
            .unwrap_or_default(),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => ready(&state).await,
        (&Method::GET, "/metrics") => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(rooms_telemetry::prometheus::concat(
                std::iter::once(state.env.metrics.render())
                    .chain(state.embedded_metrics.iter().map(|m| m.render())),
            ))))
            .unwrap_or_default(),
        (&Method::GET, "/" | "/ws") => websocket(state, req, None).await,
        (&Method::GET, p) if p.starts_with("/rooms/") => {
            let rest = &p["/rooms/".len()..];
            if let Some(room) = rest.strip_suffix("/ws") {
                match RoomId::parse(room) {
                    Ok(room) => websocket(state, req, Some(room)).await,
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                }
            } else if !rest.contains('/') {
                match RoomId::parse(rest) {
                    Ok(room) => room_info(&state, room).await,
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                }
            } else {
                class_path(state, req).await
            }
        }
        (_, p) if p.starts_with("/rooms/") => class_path(state, req).await,
        (_, "/" | "/healthz" | "/readyz" | "/metrics" | "/ws") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

fn query_params(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// A token given as `?token=` or `Authorization: Bearer`.
fn explicit_token(headers: &HeaderMap, params: &HashMap<String, String>) -> Option<String> {
    params.get("token").cloned().or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    })
}

/// Anything else under `/rooms/{room}/`: a class room's class answers it
/// (WebSocket or not); a chat room has nothing there.
async fn class_path(state: Arc<HttpState>, req: Request<Incoming>) -> Response<Body> {
    let rest = &req.uri().path()["/rooms/".len()..];
    let Some((room, _)) = rest.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let room = match RoomId::parse(room) {
        Ok(room) => room,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match state.env.links.kind(&room).await {
        None => text(StatusCode::SERVICE_UNAVAILABLE, "room unavailable; retry"),
        Some(kind) if kind.class.is_none() => text(StatusCode::NOT_FOUND, "not found"),
        Some(_) if wants_websocket(req.headers()) => websocket(state, req, Some(room)).await,
        Some(_) => class_handshake::request(state, req, room).await,
    }
}

/// A plain GET of a WebSocket endpoint: 426. When it carries a token that
/// the handshake would refuse, the handshake's 401/403 instead: a browser
/// cannot read the status of a failed handshake, so its client asks again
/// this way to learn whether retrying can help.
fn not_upgraded(
    state: &HttpState,
    req: &Request<Incoming>,
    room: Option<&RoomId>,
) -> Response<Body> {
    let params = query_params(req);
    if let (Some(room), Some(token)) = (room, explicit_token(req.headers(), &params)) {
        let checked = state
            .access
            .check_origin(req.headers())
            .and_then(|()| state.access.identify(room, Some(&token), None));
        if let Err(denied) = checked {
            // Not counted as a refused connection: nothing tried to connect.
            return denial(denied);
        }
    }
    text(
        StatusCode::UPGRADE_REQUIRED,
        "this endpoint speaks WebSocket: connect with a WebSocket client (Upgrade: websocket)",
    )
}

/// Validates the handshake and the session, answers 101, and starts the
/// session task once hyper hands over the upgraded connection.
async fn websocket(
    state: Arc<HttpState>,
    mut req: Request<Incoming>,
    room: Option<RoomId>,
) -> Response<Body> {
    if !wants_websocket(req.headers()) {
        return not_upgraded(&state, &req, room.as_ref());
    }
    let headers = req.headers();
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return text(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    if let Err(denied) = state.access.check_origin(headers) {
        return refuse(&state, denied);
    }
    let offered = subprotocol::offered(headers);
    let params = query_params(&req);
    let jwt_mode = state.access.jwt.is_some();
    // The first offered subprotocol may carry the credential (browsers cannot
    // set headers): a JWT, or Nuxflare's base64(room:user). It is never
    // echoed; the client's next offered subprotocol is selected instead.
    let (token, credential, selected) = if let Some(token) = explicit_token(headers, &params) {
        (Some(token), None, None)
    } else if jwt_mode {
        (offered.first().cloned(), None, offered.get(1).cloned())
    } else {
        let credential = offered.first().and_then(|p| subprotocol::decode_credential(p));
        let selected = if credential.is_some() { offered.get(1).cloned() } else { None };
        (None, credential, selected)
    };
    let room = match (room, &credential) {
        (Some(room), _) => room,
        (None, Some((room, _))) => match RoomId::parse(room) {
            Ok(room) => room,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        },
        (None, None) => {
            return text(
                StatusCode::NOT_FOUND,
                "connect to /rooms/{room}/ws (or pass base64(room:user) as the first subprotocol)",
            );
        }
    };
    // A class room's class answers the handshake itself (its own auth, its
    // own subprotocol); a chat room's is checked here.
    match state.env.links.kind(&room).await {
        None => return text(StatusCode::SERVICE_UNAVAILABLE, "room unavailable; retry"),
        Some(kind) if kind.class.is_some() => {
            return class_handshake::handshake(state, req, room, accept).await;
        }
        Some(_) => {}
    }
    let user_param =
        params.get("user").map(String::as_str).or(credential.as_ref().map(|(_, u)| u.as_str()));
    let identity = match state.access.identify(&room, token.as_deref(), user_param) {
        Ok(identity) => identity,
        Err(denied) => return refuse(&state, denied),
    };
    let since = match params.get("since").map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(since)) => Some(since),
        Some(Err(_)) => {
            return text(StatusCode::BAD_REQUEST, "since must be a non-negative integer");
        }
    };
    let epoch = params.get("epoch").cloned().unwrap_or_default();
    if epoch.len() > 64 {
        return text(StatusCode::BAD_REQUEST, "epoch is too long");
    }
    let Ok(permit) = Arc::clone(&state.connections).try_acquire_owned() else {
        state.env.metrics.connections_refused.inc();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is at its connection limit; retry later",
        );
    };

    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let expires_at = identity.expires_at;
    let session = Session { conn, room, user: identity.user, since, epoch, expires_at, permit };
    let env = state.env.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(%error, "upgrade failed"),
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES))
            // tungstenite zeroes its whole read buffer before every read and keeps
            // it per connection: READ_BUFFER_BYTES (grown on demand for larger
            // frames) instead of the 128 KiB default saves memory and CPU per socket.
            .read_buffer_size(READ_BUFFER_BYTES);
        match socket::split(upgraded, config).await {
            // The session is a task of its own: this one, with the
            // handshake's state, ends, and an idle connection costs only
            // the session's state.
            Some((reader, writer)) => {
                drop(tokio::spawn(session::run(reader, writer, session, env)))
            }
            None => tracing::warn!("upgraded connection is not a TCP stream; dropped"),
        }
    });

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = selected {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response.body(Body::default()).unwrap_or_default()
}

async fn ready(state: &HttpState) -> Response<Body> {
    let router = state.env.links.router();
    let ring = router.ring();
    for member in ring.members() {
        let Ok(mut client) = router.client(member, &ring) else {
            continue;
        };
        let call = tokio::time::timeout(UPSTREAM_TIMEOUT, client.status(StatusRequest {}));
        if let Ok(Ok(_)) = call.await {
            return text(StatusCode::OK, "ready");
        }
    }
    text(StatusCode::SERVICE_UNAVAILABLE, "no roomhost is reachable")
}

async fn room_info(state: &HttpState, room: RoomId) -> Response<Body> {
    let router = state.env.links.router();
    let reply = router
        .call_owner(&room, UPSTREAM_TIMEOUT, |mut client, room| async move {
            client.get_room(GetRoomRequest { room: room.to_string() }).await
        })
        .await;
    match reply {
        Ok(r) => {
            let mut info = serde_json::json!({
                "room": r.room, "owner": r.owner, "connections": r.connections,
                "users": r.users, "seq": r.seq,
            });
            if let Some(class) = r.class {
                info["class"] = serde_json::json!(class);
                info["bundle"] = serde_json::json!(r.bundle);
            }
            json(StatusCode::OK, &info)
        }
        Err(status) => text(StatusCode::SERVICE_UNAVAILABLE, status.message().to_owned()),
    }
}
