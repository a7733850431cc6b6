//! `roomctl bench --preload N`: how fast a room that left memory comes back.
//! Stores N chats in each room, waits until the roomhosts evicted the rooms,
//! then joins each room once and times connect → `welcome` + `history` (the
//! roomhost loads the room from Redis on that join). With `--class-rooms`
//! the rooms run a class with the peers' chat subset: a name and N chats are
//! stored through it, and a join is timed to the completed handshake (the
//! class answers it from a new instance, its storage loaded).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::bench::percentile;
use crate::cli::BenchArgs;

/// Longest wait for any one reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn room_url(base: &str, room: usize, user: &str) -> String {
    format!("{base}/rooms/bench-cold-{room}/ws?user={user}")
}

/// Reads until a frame whose `type` is `kind`; errors on close or timeout.
async fn until<S>(ws: &mut S, kind: &str) -> anyhow::Result<()>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let prefix = format!("{{\"type\":\"{kind}\"");
    loop {
        match tokio::time::timeout(REPLY_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.starts_with(&prefix) => return Ok(()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => anyhow::bail!("socket error: {e}"),
            Ok(None) => anyhow::bail!("socket closed"),
            Err(_) => anyhow::bail!("no `{kind}` within {REPLY_TIMEOUT:?}"),
        }
    }
}

/// Stores `count` chats in room `room` and waits until all are echoed.
async fn preload(
    base: &str,
    room: usize,
    (count, size): (usize, usize),
    class_rooms: bool,
) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(room_url(base, room, "preloader")).await?;
    if class_rooms {
        ws.send(Message::text(json!({"type": "name", "name": "preloader"}).to_string())).await?;
    } else {
        until(&mut ws, "history").await?;
    }
    let text = "p".repeat(size.max(1));
    for _ in 0..count {
        ws.feed(Message::text(json!({"type": "chat", "text": text}).to_string())).await?;
    }
    ws.flush().await?;
    for _ in 0..count {
        until(&mut ws, "chat").await?;
    }
    let _ = ws.close(None).await;
    Ok(())
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let bases: Vec<String> =
        args.url.split(',').map(|u| u.trim().trim_end_matches('/').to_owned()).collect();
    let preloading = Instant::now();
    for room in 0..args.rooms {
        let size = (args.preload, args.size);
        preload(&bases[room % bases.len()], room, size, args.class_rooms).await?;
    }
    let preload_s = preloading.elapsed().as_secs_f64();
    tokio::time::sleep(args.cold_wait).await;

    // One join at a time: each measures one cold load, not a queue.
    let mut join_us = Vec::with_capacity(args.rooms);
    let mut errors = 0u64;
    for room in 0..args.rooms {
        let began = Instant::now();
        let url = room_url(&bases[room % bases.len()], room, "cold");
        let joined = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            if !args.class_rooms {
                until(&mut ws, "welcome").await?;
                until(&mut ws, "history").await?;
            }
            let took = began.elapsed();
            let _ = ws.close(None).await;
            anyhow::Ok(took)
        };
        match joined.await {
            Ok(took) => join_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
            Err(_) => errors += 1,
        }
    }
    join_us.sort_unstable();
    Ok(json!({
        "label": args.label,
        "url": args.url,
        "rooms": args.rooms,
        "preload": args.preload,
        "preload_s": (preload_s * 100.0).round() / 100.0,
        "cold_wait_s": args.cold_wait.as_secs_f64(),
        "join_ms": {
            "p50": percentile(&join_us, 50.0),
            "p99": percentile(&join_us, 99.0),
            "max": join_us.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
            "samples": join_us.len(),
        },
        "errors": errors,
    }))
}
