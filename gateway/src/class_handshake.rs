//! A WebSocket handshake into a class room: the request goes to the room's
//! class (`fetch`) as the client sent it, and its answer comes back — 101
//! upgrades the connection with the headers the class chose (its
//! subprotocol among them); any other status goes to the client with its
//! body. Plain HTTP requests under `/rooms/{room}/` go to `fetch` the same
//! way, with their body.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use rooms_proto::RoomId;
use rooms_proto::host::{Handshake, Header, SocketClosed, gateway_frame};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::class_session::{self, ClassConn};
use crate::config::MAX_FRAME_BYTES;
use crate::conn::{CloseSignal, ConnHandle, Outbox};
use crate::http::{Body, HttpState, READ_BUFFER_BYTES};
use crate::link::{LinkCmd, LinkHandle};
use crate::socket;

/// Longest wait for the class's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest body of a plain request to a class (the class's storage takes
/// values up to this size); a larger one is answered 413.
pub(crate) const MAX_REQUEST_BODY: usize = 128 * 1024;

fn plain(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .unwrap_or_default()
}

/// The class's answer, as the response to build on.
struct Answered {
    status: StatusCode,
    response: hyper::http::response::Builder,
    body: Option<String>,
    /// The link that took the request (the socket's, on 101).
    link: LinkHandle,
}

/// Sends the request (as connection `conn`) to the room's class and waits
/// for its answer; Err: the response to give instead.
async fn ask(
    state: &HttpState,
    req: &Parts,
    room: &RoomId,
    (conn, handle): (u64, &ConnHandle),
    body: Option<String>,
) -> Result<Answered, Response<Body>> {
    let host = req.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{host}{path}");
    let headers = req
        .headers
        .iter()
        .filter_map(|(name, value)| {
            Some(Header { name: name.as_str().to_owned(), value: value.to_str().ok()?.to_owned() })
        })
        .collect();
    let method = req.method.as_str().to_owned();
    let handshake = Handshake { conn, url, method, headers, body };
    let (reply, answer) = oneshot::channel();
    let cmd = LinkCmd::Handshake { handshake, handle: handle.clone(), reply };
    let Ok(link) = state.env.links.dispatch(room, cmd).await else {
        return Err(plain(StatusCode::SERVICE_UNAVAILABLE, "room unavailable; retry"));
    };
    let reply = match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => {
            return Err(plain(StatusCode::SERVICE_UNAVAILABLE, "room unavailable; retry"));
        }
        Err(_) => {
            let message = "the room's class did not answer in time";
            return Err(plain(StatusCode::GATEWAY_TIMEOUT, message));
        }
    };
    let status = u16::try_from(reply.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::builder().status(status);
    for Header { name, value } in &reply.headers {
        let (Ok(name), Ok(value)) =
            (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str()))
        else {
            continue;
        };
        response = response.header(name, value);
    }
    Ok(Answered { status, response, body: reply.body, link })
}

/// Tells the room that the socket it took is gone.
async fn gone(link: &LinkHandle, conn: u64) {
    let closed = SocketClosed { conn, code: 1006, reason: String::new(), clean: false };
    let cmd = LinkCmd::Socket { conn, kind: gateway_frame::Kind::SocketClosed(closed) };
    let _ = link.send(cmd).await;
}

/// A plain HTTP request under `/rooms/{room}/` of a class room: the class's
/// `fetch` answers it, as a Worker's Durable Object would.
pub(crate) async fn request(
    state: Arc<HttpState>,
    req: Request<Incoming>,
    room: RoomId,
) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let body = match Limited::new(incoming, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let message = format!("request body over {MAX_REQUEST_BODY} bytes");
            return plain(StatusCode::PAYLOAD_TOO_LARGE, &message);
        }
    };
    let body = match String::from_utf8(body.to_vec()) {
        Ok(text) if text.is_empty() => None,
        Ok(text) => Some(text),
        Err(_) => return plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "request body must be text"),
    };
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let handle = ConnHandle::new(Outbox::new(1), Arc::new(CloseSignal::default()));
    let answered = match ask(&state, &parts, &room, (conn, &handle), body).await {
        Ok(answered) => answered,
        Err(response) => return response,
    };
    if answered.status == StatusCode::SWITCHING_PROTOCOLS {
        gone(&answered.link, conn).await;
        let message = "the room's class accepted a WebSocket for a request that is not an upgrade";
        return plain(StatusCode::INTERNAL_SERVER_ERROR, message);
    }
    let body = Full::new(Bytes::from(answered.body.unwrap_or_default()));
    answered.response.body(body).unwrap_or_default()
}

pub(crate) async fn handshake(
    state: Arc<HttpState>,
    mut req: Request<Incoming>,
    room: RoomId,
    accept: String,
) -> Response<Body> {
    let Ok(permit) = Arc::clone(&state.connections).try_acquire_owned() else {
        state.env.metrics.connections_refused.inc();
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is at its connection limit; retry later",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let outbox = Outbox::new(state.env.send_queue);
    let signal = Arc::new(CloseSignal::default());
    let handle = ConnHandle::new(Arc::clone(&outbox), Arc::clone(&signal));
    let Answered { status, response, body, link } =
        match ask(&state, &parts, &room, (conn, &handle), None).await {
            Ok(answered) => answered,
            Err(response) => return response,
        };
    if status != StatusCode::SWITCHING_PROTOCOLS {
        state.env.metrics.connections_refused.inc();
        return response.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap_or_default();
    }
    let env = state.env.clone();
    tokio::spawn(async move {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES))
            .read_buffer_size(READ_BUFFER_BYTES);
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => socket::split(upgraded, config).await,
            Err(error) => {
                tracing::debug!(%error, "upgrade failed");
                None
            }
        };
        let socket = ClassConn { conn, outbox, signal, handle, link: link.clone(), permit };
        match upgraded {
            // Its own task, as a chat socket's session (`http.rs`).
            Some((reader, writer)) => {
                drop(tokio::spawn(class_session::run(reader, writer, socket, env)))
            }
            // The room took the socket: tell it that it is gone.
            None => gone(&link, conn).await,
        }
    });
    response
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::default())
        .unwrap_or_default()
}
