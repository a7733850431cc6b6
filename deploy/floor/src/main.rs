//! The floor under any gateway/roomhost split: what a message costs when it
//! crosses the same processes as in rooms — a gateway, the room's host, Redis,
//! and the gateways of the room's sockets — and does nothing else there.
//!
//! `rooms-floor gateway WS_ADDR HUB_ADDR` speaks the peers' chat protocol to
//! clients (as `rust-min` does) and forwards each chat to the hub over one
//! TCP connection; `rooms-floor hub ADDR REDIS_ADDR` appends each chat to a
//! Redis stream (`XADD`, one per message, pipelined on one connection),
//! then sends it to every gateway with a member in the room. No gRPC, no
//! sequence numbers, no presence, no leases, no deduplication, no history, no
//! backpressure: a measuring instrument, not a server (queues are unbounded).
//!
//! Frames between gateway and hub: u32 length, then a kind byte (0 join,
//! 1 chat), a u16 room length, the room, and for a chat its JSON.
//! Env: WORKERS (tokio workers per process).

// tungstenite's handshake callback returns its own (large) error response.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const JOIN: u8 = 0;
const CHAT: u8 = 1;

fn frame(kind: u8, room: &str, body: &[u8]) -> Vec<u8> {
    let len = 1 + 2 + room.len() + body.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&(room.len() as u16).to_be_bytes());
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads one frame: (kind, room, body).
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<(u8, String, Vec<u8>)> {
    let len = r.read_u32().await.ok()? as usize;
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await.ok()?;
    let room_len = u16::from_be_bytes([*buf.get(1)?, *buf.get(2)?]) as usize;
    let room = String::from_utf8(buf.get(3..3 + room_len)?.to_vec()).ok()?;
    Some((buf[0], room, buf[3 + room_len..].to_vec()))
}

/// Writes whatever is queued, then flushes once.
async fn writer(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&more);
        }
        if stream.write_all(&batch).await.is_err() {
            return;
        }
    }
}

// ---- gateway -------------------------------------------------------------

#[derive(Default)]
struct Gateway {
    rooms: Mutex<HashMap<String, HashMap<u64, mpsc::UnboundedSender<Utf8Bytes>>>>,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum In {
    Name { name: String },
    Chat { text: String },
}

#[derive(Serialize)]
struct Out<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    #[serde(rename = "userName")]
    user_name: &'a str,
    text: &'a str,
}

async fn gateway(ws_addr: String, hub_addr: String) {
    let hub = TcpStream::connect(&hub_addr).await.expect("hub");
    hub.set_nodelay(true).expect("nodelay");
    let (hub_read, hub_write) = hub.into_split();
    let (to_hub, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(hub_write, rx));
    let state = Arc::new(Gateway::default());
    let from_hub = Arc::clone(&state);
    tokio::spawn(async move {
        let mut hub_read = BufReader::new(hub_read);
        while let Some((_, room, body)) = read_frame(&mut hub_read).await {
            let Ok(text) = Utf8Bytes::try_from(body) else { continue };
            if let Some(members) = from_hub.rooms.lock().unwrap().get(&room) {
                for tx in members.values() {
                    let _ = tx.send(text.clone());
                }
            }
        }
        eprintln!("hub connection closed");
        std::process::exit(1);
    });
    let listener = TcpListener::bind(&ws_addr).await.expect("bind");
    loop {
        if let Ok((s, _)) = listener.accept().await {
            tokio::spawn(session(Arc::clone(&state), to_hub.clone(), s));
        }
    }
}

async fn session(state: Arc<Gateway>, to_hub: mpsc::UnboundedSender<Vec<u8>>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut uri = String::new();
    let cb = |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else { return };
    let (path, query) = uri.split_once('?').unwrap_or((uri.as_str(), ""));
    let Some(room) = path.strip_prefix("/rooms/").and_then(|r| r.strip_suffix("/ws")) else {
        return;
    };
    let room = room.to_owned();
    let user_id =
        query.split('&').find_map(|kv| kv.strip_prefix("user=")).unwrap_or("anon").to_owned();
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let first = {
        let mut rooms = state.rooms.lock().unwrap();
        let members = rooms.entry(room.clone()).or_default();
        members.insert(id, tx);
        members.len() == 1
    };
    if first {
        let _ = to_hub.send(frame(JOIN, &room, b""));
    }
    let (mut sink, mut source) = ws.split();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.feed(Message::Text(m)).await.is_err() {
                return;
            }
            while let Ok(m) = rx.try_recv() {
                if sink.feed(Message::Text(m)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut user_name = user_id.clone();
    while let Some(Ok(msg)) = source.next().await {
        match msg {
            Message::Text(t) => match serde_json::from_str::<In>(t.as_str()) {
                Ok(In::Name { name }) => user_name = name,
                Ok(In::Chat { text }) => {
                    let out =
                        Out { ty: "chat", user_id: &user_id, user_name: &user_name, text: &text };
                    let body = serde_json::to_vec(&out).expect("json");
                    let _ = to_hub.send(frame(CHAT, &room, &body));
                }
                Err(_) => {}
            },
            Message::Close(_) => break,
            _ => {}
        }
    }
    if let Some(members) = state.rooms.lock().unwrap().get_mut(&room) {
        members.remove(&id);
    }
    writer.abort();
}

// ---- hub -----------------------------------------------------------------

#[derive(Default)]
struct Hub {
    /// Which gateways have members in a room.
    rooms: Mutex<HashMap<String, HashSet<usize>>>,
    gateways: Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>,
}

/// A chat waiting for Redis: its room and the frame to send once stored.
type Pending = (String, Vec<u8>);

/// One Redis connection, commands pipelined; each reply (in order) sends its
/// chat to the room's gateways, so a room's chats go out in order, stored.
fn redis(addr: String, state: Arc<Hub>) -> mpsc::UnboundedSender<(Vec<u8>, Pending)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Pending)>();
    tokio::spawn(async move {
        let stream = TcpStream::connect(&addr).await.expect("redis");
        stream.set_nodelay(true).expect("nodelay");
        let (read, mut write) = stream.into_split();
        let waiting: Arc<Mutex<VecDeque<Pending>>> = Arc::default();
        let replies = Arc::clone(&waiting);
        tokio::spawn(async move {
            let mut read = BufReader::new(read);
            loop {
                // Each XADD answers one bulk string: "$N\r\n<id>\r\n".
                for _ in 0..2 {
                    loop {
                        let Ok(b) = read.read_u8().await else { return };
                        if b == b'\n' {
                            break;
                        }
                    }
                }
                let Some((room, out)) = replies.lock().unwrap().pop_front() else { continue };
                let targets: Vec<usize> = state
                    .rooms
                    .lock()
                    .unwrap()
                    .get(&room)
                    .map(|g| g.iter().copied().collect())
                    .unwrap_or_default();
                let gateways = state.gateways.lock().unwrap();
                for g in targets {
                    let _ = gateways[g].send(out.clone());
                }
            }
        });
        let mut batch = Vec::new();
        while let Some((cmd, pending)) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&cmd);
            {
                let mut queued = waiting.lock().unwrap();
                queued.push_back(pending);
                while let Ok((cmd, pending)) = rx.try_recv() {
                    batch.extend_from_slice(&cmd);
                    queued.push_back(pending);
                }
            }
            if write.write_all(&batch).await.is_err() {
                return;
            }
        }
    });
    tx
}

fn xadd(room: &str, body: &[u8]) -> Vec<u8> {
    let key = format!("floor:{{{room}}}:history");
    let args: [&[u8]; 7] = [b"XADD", key.as_bytes(), b"MAXLEN", b"1000", b"*", b"e", body];
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn hub(addr: String, redis_addr: String) {
    let state = Arc::new(Hub::default());
    let store = redis(redis_addr, Arc::clone(&state));
    let listener = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        stream.set_nodelay(true).expect("nodelay");
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(write, rx));
        let me = {
            let mut gateways = state.gateways.lock().unwrap();
            gateways.push(tx);
            gateways.len() - 1
        };
        let (state, store) = (Arc::clone(&state), store.clone());
        tokio::spawn(async move {
            let mut read = BufReader::new(read);
            while let Some((kind, room, body)) = read_frame(&mut read).await {
                if kind == JOIN {
                    state.rooms.lock().unwrap().entry(room).or_default().insert(me);
                    continue;
                }
                let _ = store.send((xadd(&room, &body), (room.clone(), frame(CHAT, &room, &body))));
            }
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Ok(w) = std::env::var("WORKERS") {
        rt.worker_threads(w.parse().expect("WORKERS"));
    }
    let rt = rt.enable_all().build().expect("runtime");
    match (args.get(1).map(String::as_str), args.get(2), args.get(3)) {
        (Some("gateway"), Some(ws), Some(hub_addr)) => {
            rt.block_on(gateway(ws.clone(), hub_addr.clone()))
        }
        (Some("hub"), Some(addr), Some(redis_addr)) => {
            rt.block_on(hub(addr.clone(), redis_addr.clone()))
        }
        _ => {
            eprintln!(
                "usage: rooms-floor gateway WS_ADDR HUB_ADDR | rooms-floor hub ADDR REDIS_ADDR"
            );
            std::process::exit(2);
        }
    }
}
