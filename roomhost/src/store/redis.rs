//! Redis backend. Every key of a room shares the hash tag `{room}` so a room
//! lives on one Redis Cluster slot:
//!
//! * `rooms:{R}:history`: a Stream whose entry ids are `SEQ-0`, field `e` = the
//!   event frame; trimmed exactly to the history limit. Redis refuses an id not
//!   above the last one, so a seq can never be written twice.
//! * `rooms:{R}:names`: a hash userId -> name.
//! * `rooms:{R}:meta`: a hash with `epoch` and `seq` (latest persisted).
//!
//! Keys are built only from validated [`RoomId`]s; user input is only ever a
//! command argument, never part of a command.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, Value, cmd, pipe};
use rooms_proto::RoomId;

use super::{Commit, Event, LoadedRoom, RECENT_EVENTS, StoreError, new_epoch};

/// A Redis call that takes longer fails, so a stuck Redis turns into
/// `unavailable` errors instead of a stalled room.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    history_limit: usize,
}

struct Keys {
    history: String,
    names: String,
    meta: String,
}

impl Keys {
    fn of(room: &RoomId) -> Self {
        Self {
            history: format!("rooms:{{{room}}}:history"),
            names: format!("rooms:{{{room}}}:names"),
            meta: format!("rooms:{{{room}}}:meta"),
        }
    }
}

fn stream_id(seq: u64) -> String {
    format!("{seq}-0")
}

impl RedisStore {
    /// Connects (and keeps reconnecting in the background when the link drops).
    pub async fn connect(url: &str, history_limit: usize) -> Result<Self, StoreError> {
        // Group commits from many rooms share one multiplexed connection:
        // without TCP_NODELAY, Nagle holds each small write behind the last
        // unacknowledged one.
        let info =
            url.into_connection_info()?.set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self { conn, history_limit: history_limit.max(1) })
    }

    pub async fn load(&self, room: &RoomId) -> Result<LoadedRoom, StoreError> {
        let keys = Keys::of(room);
        let mut conn = self.conn.clone();
        let (epoch, seq, names, recent, first): (
            String,
            Option<u64>,
            Vec<(String, String)>,
            Value,
            Value,
        ) = pipe()
            .cmd("HSETNX")
            .arg(&keys.meta)
            .arg("epoch")
            .arg(new_epoch())
            .ignore()
            .cmd("HGET")
            .arg(&keys.meta)
            .arg("epoch")
            .cmd("HGET")
            .arg(&keys.meta)
            .arg("seq")
            .cmd("HGETALL")
            .arg(&keys.names)
            .cmd("XREVRANGE")
            .arg(&keys.history)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(RECENT_EVENTS)
            .cmd("XRANGE")
            .arg(&keys.history)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        let mut recent = parse_entries(recent)?;
        recent.reverse();
        let first_seq = parse_entries(first)?.first().map_or(0, |e| e.seq);
        // The stream is the ground truth should `seq` ever lag behind it.
        let seq = seq.unwrap_or(0).max(recent.last().map_or(0, |e| e.seq));
        Ok(LoadedRoom { seq, epoch, names, recent, first_seq })
    }

    pub async fn commit(&self, room: &RoomId, commit: &Commit) -> Result<(), StoreError> {
        let Some(last) = commit.last_seq() else {
            return Ok(());
        };
        let keys = Keys::of(room);
        let mut p = pipe();
        p.atomic();
        for event in &commit.events {
            p.cmd("XADD")
                .arg(&keys.history)
                .arg("MAXLEN")
                .arg(self.history_limit)
                .arg(stream_id(event.seq))
                .arg("e")
                .arg(event.frame.as_ref())
                .ignore();
        }
        if !commit.names.is_empty() {
            let mut hset = cmd("HSET");
            hset.arg(&keys.names);
            for (user, name) in &commit.names {
                hset.arg(user).arg(name);
            }
            p.add_command(hset).ignore();
        }
        p.cmd("HSET").arg(&keys.meta).arg("seq").arg(last).ignore();
        let mut conn = self.conn.clone();
        p.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    pub async fn events_after(
        &self,
        room: &RoomId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let keys = Keys::of(room);
        let mut conn = self.conn.clone();
        let value: Value = cmd("XRANGE")
            .arg(&keys.history)
            .arg(stream_id(after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        parse_entries(value)
    }

    pub async fn events_before(
        &self,
        room: &RoomId,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if before <= 1 {
            return Ok(Vec::new());
        }
        let keys = Keys::of(room);
        let mut conn = self.conn.clone();
        let value: Value = cmd("XREVRANGE")
            .arg(&keys.history)
            .arg(stream_id(before - 1))
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        let mut events = parse_entries(value)?;
        events.reverse();
        Ok(events)
    }

    pub async fn latest_seq(&self, room: &RoomId) -> Result<u64, StoreError> {
        let keys = Keys::of(room);
        let mut conn = self.conn.clone();
        let seq: Option<u64> =
            cmd("HGET").arg(&keys.meta).arg("seq").query_async(&mut conn).await?;
        Ok(seq.unwrap_or(0))
    }
}

/// Parses an XRANGE/XREVRANGE reply: `[[id, [field, value, ...]], ...]`.
fn parse_entries(value: Value) -> Result<Vec<Event>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    let Value::Array(entries) = value else {
        return Err(corrupt("stream reply is not an array"));
    };
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            return Err(corrupt("stream entry"));
        };
        if parts.len() != 2 {
            return Err(corrupt("stream entry arity"));
        }
        let fields = parts.pop();
        let id = parts.pop();
        let seq = match id {
            Some(Value::BulkString(id)) => std::str::from_utf8(&id)
                .ok()
                .and_then(|s| s.split_once('-'))
                .and_then(|(ms, _)| ms.parse::<u64>().ok())
                .ok_or_else(|| corrupt("stream id"))?,
            _ => return Err(corrupt("stream id type")),
        };
        let frame = match fields {
            Some(Value::Array(mut kv)) if kv.len() == 2 => match kv.pop() {
                Some(Value::BulkString(frame)) => Bytes::from(frame),
                _ => return Err(corrupt("stream value type")),
            },
            _ => return Err(corrupt("stream fields")),
        };
        events.push(Event { seq, frame });
    }
    Ok(events)
}
