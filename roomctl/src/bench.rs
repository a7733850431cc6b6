//! `roomctl bench`: opens N WebSocket clients across R rooms, has S of them
//! send chat messages stamped with their send time, and measures delivery
//! throughput and end-to-end latency at every receiver. Speaks only the
//! common subset of the protocol (`chat` with `text`), so it drives the peer
//! servers too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rooms_proto::client::ErrorCode;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::BenchArgs;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most latency samples kept per receiver (bounds the bench's own memory).
const MAX_SAMPLES_PER_CLIENT: usize = 200_000;
/// Time allowed after sending stops for messages in flight to arrive.
const DRAIN: Duration = Duration::from_secs(2);

struct Shared {
    start: Instant,
    /// Receivers count deliveries only while this is set.
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Tells every reader to return its samples.
    stop_rx: tokio::sync::watch::Receiver<bool>,
    delivered: AtomicU64,
    errors: AtomicU64,
    /// Error frames that said `rate_limited`: the load is above the
    /// server's per-connection limit.
    rate_limited: AtomicU64,
    welcomed: AtomicU64,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

/// Parses `b:{sender}:{sent_us}:` out of a chat frame without a full JSON parse.
fn stamp(frame: &str) -> Option<(usize, u64)> {
    let at = frame.find("\"text\":\"b:")? + "\"text\":\"b:".len();
    let mut parts = frame[at..].splitn(3, ':');
    let sender = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((sender, sent))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.rooms >= 1 && args.clients >= 1,
        "--rooms and --clients must be at least 1"
    );
    anyhow::ensure!(args.senders() <= args.clients, "--senders cannot exceed --clients");
    if args.preload > 0 {
        return crate::cold::run(&args).await;
    }
    let bases: Vec<String> =
        args.url.split(',').map(|u| u.trim().trim_end_matches('/').to_owned()).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        stop_rx,
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        welcomed: AtomicU64::new(0),
    });

    // Connect everyone, a bounded number at a time.
    let connecting = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut pending = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let base = &bases[i % bases.len()];
        let url = format!("{base}/rooms/bench-{}/ws?user=u{i}", i % args.rooms);
        let gate = Arc::clone(&gate);
        pending.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            let began = Instant::now();
            // A small read buffer: tungstenite zeroes all of it before each read.
            let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
            let result =
                tokio_tungstenite::connect_async_with_config(url, Some(config), true).await;
            (result.map(|(ws, _)| ws), began.elapsed())
        }));
    }
    let mut sockets = Vec::with_capacity(args.clients);
    let mut connect_ms = Vec::with_capacity(args.clients);
    let mut connect_errors = 0u64;
    for task in pending {
        match task.await? {
            (Ok(ws), took) => {
                sockets.push(ws);
                connect_ms.push(took.as_micros() as u32);
            }
            (Err(_), _) => connect_errors += 1,
        }
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    connect_ms.sort_unstable();
    anyhow::ensure!(!sockets.is_empty(), "no client could connect to {}", args.url);

    // One reader per client; senders get their sink and an in-flight window.
    let senders = args.senders().min(sockets.len());
    let windows: Vec<Arc<Semaphore>> =
        (0..senders).map(|_| Arc::new(Semaphore::new(args.window.max(1)))).collect();
    let mut sinks: Vec<SplitSink<Ws, Message>> = Vec::with_capacity(senders);
    let mut readers = Vec::with_capacity(sockets.len());
    for (i, ws) in sockets.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        if i < senders {
            sinks.push(sink);
        } else {
            // Receivers never write; keep the sink alive by moving it into the reader.
            readers.push(tokio::spawn(read(stream, Some(sink), i, None, Arc::clone(&shared))));
            continue;
        }
        let window = Arc::clone(&windows[i]);
        readers.push(tokio::spawn(read(stream, None, i, Some(window), Arc::clone(&shared))));
    }

    // Servers that greet (rooms) are ready once every client got `welcome`;
    // peers never greet, so stop waiting once none arrives.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(5) {
        let welcomed = shared.welcomed.load(Ordering::Relaxed) as usize;
        if welcomed >= readers.len()
            || (welcomed == 0 && settle.elapsed() > Duration::from_millis(500))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Scripts sample server memory after this line (see deploy/bench.sh).
    eprintln!("bench: {} clients connected", readers.len());

    // Send.
    shared.measuring.store(true, Ordering::Relaxed);
    let sending = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut send_tasks = Vec::with_capacity(senders);
    let per_sender_rate =
        if args.rate == 0 { 0.0 } else { args.rate as f64 / senders.max(1) as f64 };
    for (idx, sink) in sinks.into_iter().enumerate() {
        let plan = SenderPlan {
            me: idx,
            senders,
            rate: per_sender_rate,
            window: Arc::clone(&windows[idx]),
            duration: args.duration,
            size: args.size,
        };
        send_tasks.push(tokio::spawn(send(sink, plan, Arc::clone(&shared), Arc::clone(&sent))));
    }
    let mut sinks_back = Vec::new();
    for task in send_tasks {
        sinks_back.push(task.await?);
    }
    let send_s = sending.elapsed().as_secs_f64();
    tokio::time::sleep(DRAIN).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let delivered = shared.delivered.load(Ordering::Relaxed);

    if !args.hold.is_zero() {
        eprintln!("bench: holding {} idle clients", readers.len());
        tokio::time::sleep(args.hold).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut samples: Vec<u32> = Vec::new();
    for reader in readers {
        if let Ok(mut s) = reader.await {
            samples.append(&mut s);
        }
    }
    for mut sink in sinks_back {
        let _ = sink.close().await;
    }
    samples.sort_unstable();
    let rate_limited = shared.rate_limited.load(Ordering::Relaxed);
    if rate_limited > 0 {
        eprintln!(
            "bench: the server refused {rate_limited} messages as rate limited: each sender \
             sent {:.0}/s, above its per-connection limit (a gateway's --rate-limit); spread \
             --rate over more --senders",
            args.rate as f64 / senders.max(1) as f64
        );
    }
    Ok(json!({
        "label": args.label,
        "url": args.url,
        "rooms": args.rooms,
        "clients": args.clients,
        "senders": senders,
        "rate": args.rate,
        "size": args.size,
        "duration_s": (send_s * 100.0).round() / 100.0,
        "sent": sent.load(Ordering::Relaxed),
        "delivered": delivered,
        "delivered_per_s": (delivered as f64 / send_s).round(),
        "latency_ms": {
            "p50": percentile(&samples, 50.0),
            "p99": percentile(&samples, 99.0),
            "p999": percentile(&samples, 99.9),
            "max": samples.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
            "samples": samples.len(),
        },
        "connect_s": (connect_s * 1000.0).round() / 1000.0,
        "connect_ms": { "p50": percentile(&connect_ms, 50.0), "p99": percentile(&connect_ms, 99.0) },
        "errors": connect_errors + shared.errors.load(Ordering::Relaxed),
        "rate_limited": rate_limited,
    }))
}

/// Reads one client's frames, recording latency of every stamped chat.
async fn read(
    mut stream: SplitStream<Ws>,
    _sink: Option<SplitSink<Ws, Message>>,
    me: usize,
    window: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
) -> Vec<u32> {
    let mut samples = Vec::new();
    let mut stop = shared.stop_rx.clone();
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = stop.changed() => break,
        };
        let Some(message) = message else { break };
        let text = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Ok(_) => continue,
        };
        if let Some((sender, sent_us)) = stamp(&text) {
            if sender == me
                && let Some(window) = &window
            {
                window.add_permits(1);
            }
            if shared.measuring.load(Ordering::Relaxed) {
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                if samples.len() < MAX_SAMPLES_PER_CLIENT {
                    let latency = shared.now_us().saturating_sub(sent_us);
                    samples.push(u32::try_from(latency).unwrap_or(u32::MAX));
                }
            }
        } else if text.starts_with("{\"type\":\"welcome\"") {
            shared.welcomed.fetch_add(1, Ordering::Relaxed);
        } else if text.starts_with("{\"type\":\"error\"") {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            if error_code(&text).as_deref() == Some(ErrorCode::RateLimited.as_str()) {
                shared.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    samples
}

/// The `code` of an `error` frame (parsed only for error frames, which are rare).
fn error_code(text: &str) -> Option<String> {
    let frame: serde_json::Value = serde_json::from_str(text).ok()?;
    frame.get("code")?.as_str().map(str::to_owned)
}

/// What one sender does.
struct SenderPlan {
    me: usize,
    senders: usize,
    /// Messages per second; 0 = as fast as the window allows.
    rate: f64,
    window: Arc<Semaphore>,
    duration: Duration,
    size: usize,
}

async fn send(
    mut sink: SplitSink<Ws, Message>,
    plan: SenderPlan,
    shared: Arc<Shared>,
    sent: Arc<AtomicU64>,
) -> SplitSink<Ws, Message> {
    let SenderPlan { me, senders, rate, window, duration, size } = plan;
    let began = Instant::now();
    let mut ticker = (rate > 0.0).then(|| {
        // Senders are spread evenly over one period, so the load arrives at
        // the configured rate rather than in synchronized bursts.
        let period = Duration::from_secs_f64(1.0 / rate);
        let phase = period.mul_f64(me as f64 / senders.max(1) as f64);
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    while began.elapsed() < duration {
        match &mut ticker {
            Some(t) => {
                t.tick().await;
            }
            None => {
                match tokio::time::timeout(Duration::from_millis(200), window.acquire()).await {
                    Ok(Ok(permit)) => permit.forget(),
                    _ => continue,
                }
            }
        }
        let mut text = format!("b:{me}:{}:", shared.now_us());
        if text.len() < size {
            text.extend(std::iter::repeat_n('x', size - text.len()));
        }
        let frame = json!({"type": "chat", "text": text}).to_string();
        if sink.send(Message::text(frame)).await.is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
    sink
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_parse_from_rooms_and_peer_frames() {
        let rooms = r#"{"type":"chat","seq":3,"id":"x","userId":"u1","userName":"u1","text":"b:7:123456:xxxx","time":"t"}"#;
        assert_eq!(stamp(rooms), Some((7, 123_456)));
        let peer = r#"{"type":"chat","userId":"u1","userName":"u1","text":"b:0:99:","time":"t"}"#;
        assert_eq!(stamp(peer), Some((0, 99)));
        assert_eq!(stamp(r#"{"type":"chat","text":"hello"}"#), None);
    }

    #[test]
    fn an_error_frame_names_its_code_and_a_message_mentioning_one_does_not() {
        let refused = rooms_proto::server::error(ErrorCode::RateLimited, "slow down");
        let refused = std::str::from_utf8(&refused).unwrap();
        assert_eq!(error_code(refused).as_deref(), Some("rate_limited"));
        let other = r#"{"type":"error","code":"too_large","message":"not rate_limited"}"#;
        assert_eq!(error_code(other).as_deref(), Some("too_large"));
        assert_eq!(error_code("not json"), None);
    }

    #[test]
    fn percentiles() {
        let samples: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile(&samples, 50.0), 501.0);
        assert_eq!(percentile(&samples, 99.0), 990.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
