//! Redis backend. Every key of a room shares the hash tag `{room}` so a room
//! lives on one Redis Cluster slot:
//!
//! * `rooms:{R}:history`: a Stream whose entry ids are `SEQ-0`, field `e` = the
//!   event frame; trimmed exactly to the history limit. Redis refuses an id not
//!   above the last one, so a seq can never be written twice.
//! * `rooms:{R}:names`: a hash userId -> name.
//! * `rooms:{R}:meta`: a hash with `epoch`, `seq` (latest persisted) and
//!   `fence` (the fencing counter, +1 on every change of owner).
//! * `rooms:{R}:lease`: a hash `owner`, `fence` that expires unless renewed.
//! * `rooms:{R}:claim`: the roomhost that wants the room because gateways
//!   could not reach its owner (expires after a lease TTL); the owner sees
//!   it when renewing and hands the room over.
//! * `rooms:{R}:storage`, `rooms:{R}:ran`, `rooms:{R}:alarms` and the
//!   `rooms:alarm-index`: a class room's, see `redis_class`.
//!
//! Keys are built only from validated [`RoomId`]s; user input is only ever a
//! command argument, never part of a command.
//!
//! `--redis redis://…` (or `rediss://`) is one server;
//! `redis-cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]` names seed nodes
//! of a Redis Cluster, which is then discovered and followed through slot
//! moves and failovers. Since a room's keys share one slot, every pipeline
//! and script of a room runs on one node either way.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::{Script, Value, cmd, pipe};
use rooms_proto::RoomId;

use super::redis_cmd::{Keys, ScriptCall, StreamId};
use super::redis_conn::Conn;
pub use super::redis_conn::cluster_seeds;

use super::{
    Acquired, Commit, Event, IfHeld, Lease, LoadedRoom, Owner, RECENT_EVENTS, Renewal, StoreError,
    new_epoch,
};

#[derive(Clone)]
pub struct RedisStore {
    pub(super) conn: Conn,
    history_limit: usize,
    scripts: Arc<Scripts>,
}

/// The lease scripts. `lease` holds `owner` and `fence` and expires; `meta`
/// keeps the fencing counter, which only grows.
struct Scripts {
    acquire: Script,
    renew: Script,
    release: Script,
    commit: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            // KEYS: lease, meta, claim. ARGV: me, ttl_ms, claim (0|1).
            // -> {1, fence} | {0, holder}
            acquire: Script::new(
                r"
                local owner = redis.call('HGET', KEYS[1], 'owner')
                if owner == ARGV[1] then
                  redis.call('PEXPIRE', KEYS[1], ARGV[2])
                  return {1, redis.call('HGET', KEYS[1], 'fence')}
                end
                if owner then
                  if ARGV[3] == '1' then
                    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
                  end
                  return {0, owner}
                end
                local fence = redis.call('HINCRBY', KEYS[2], 'fence', 1)
                redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'fence', fence)
                redis.call('PEXPIRE', KEYS[1], ARGV[2])
                redis.call('DEL', KEYS[3])
                return {1, tostring(fence)}
                ",
            ),
            // KEYS: (lease, claim) per room. ARGV: me, ttl_ms, fence per room.
            // -> per room {1, claimant or ''} | {0, ''}
            renew: Script::new(
                r"
                local out = {}
                for i = 1, #KEYS / 2 do
                  local held = redis.call('HMGET', KEYS[2 * i - 1], 'owner', 'fence')
                  if held[1] == ARGV[1] and held[2] == ARGV[2 + i] then
                    redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[2])
                    local claim = redis.call('GET', KEYS[2 * i])
                    if claim and claim ~= ARGV[1] then out[i] = {1, claim} else out[i] = {1, ''} end
                  else
                    out[i] = {0, ''}
                  end
                end
                return out
                ",
            ),
            // KEYS: lease. ARGV: me, fence. -> 1 | 0
            release: Script::new(
                r"
                if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
                   and redis.call('HGET', KEYS[1], 'fence') == ARGV[2] then
                  return redis.call('DEL', KEYS[1])
                end
                return 0
                ",
            ),
            // KEYS: lease, history, names, meta, claim.
            // ARGV: me, fence, history_limit, last_seq, n, ttl_ms,
            //       n x (id, frame), (user, name)...
            // -> 0 (not ours) | 1 (ours, renewed) | claimant (ours, renewed, claimed)
            commit: Script::new(
                r"
                local held = redis.call('HMGET', KEYS[1], 'owner', 'fence')
                if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] then
                  return 0
                end
                local i = 7
                for _ = 1, tonumber(ARGV[5]) do
                  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], ARGV[i], 'e', ARGV[i + 1])
                  i = i + 2
                end
                while i < #ARGV do
                  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
                  i = i + 2
                end
                redis.call('HSET', KEYS[4], 'seq', ARGV[4])
                redis.call('PEXPIRE', KEYS[1], ARGV[6])
                local claim = redis.call('GET', KEYS[5])
                if claim and claim ~= ARGV[1] then return claim end
                return 1
                ",
            ),
        }
    }
}

impl RedisStore {
    /// Connects (and keeps reconnecting in the background when the link drops).
    pub async fn connect(url: &str, history_limit: usize) -> Result<Self, StoreError> {
        let conn = Conn::open(url).await?;
        Ok(Self { conn, history_limit: history_limit.max(1), scripts: Arc::new(Scripts::new()) })
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
            .arg(keys.meta())
            .arg("epoch")
            .arg(new_epoch())
            .ignore()
            .cmd("HGET")
            .arg(keys.meta())
            .arg("epoch")
            .cmd("HGET")
            .arg(keys.meta())
            .arg("seq")
            .cmd("HGETALL")
            .arg(keys.names())
            .cmd("XREVRANGE")
            .arg(keys.history())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(RECENT_EVENTS)
            .cmd("XRANGE")
            .arg(keys.history())
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

    /// One script per group commit: checks the lease and fencing token,
    /// then appends, renames and advances `seq`, all or nothing, and renews
    /// the lease (a room that commits often is never renewed otherwise).
    pub async fn commit(
        &self,
        room: &RoomId,
        (me, lease): (&Owner, Lease),
        commit: &Commit,
        ttl: Duration,
    ) -> Result<Renewal, StoreError> {
        let Some(last) = commit.last_seq() else {
            return Ok(Renewal::Ours);
        };
        let keys = Keys::of(room);
        let keys = [keys.lease(), keys.history(), keys.names(), keys.meta(), keys.claim()];
        let mut call = ScriptCall::new(&self.scripts.commit, &keys);
        call.arg(&me.0).arg(lease.fence).arg(self.history_limit).arg(last).arg(commit.events.len());
        call.arg(ttl.as_millis() as u64);
        for event in &commit.events {
            call.arg(StreamId(event.seq)).arg(event.frame.as_ref());
        }
        for (user, name) in &commit.names {
            call.arg(user).arg(name);
        }
        let mut conn = self.conn.clone();
        match call.invoke::<Value>(&mut conn).await? {
            Value::Int(1) => Ok(Renewal::Ours),
            Value::Int(_) => Err(StoreError::LeaseLost),
            Value::BulkString(claimant) => String::from_utf8(claimant)
                .map(|claimant| Renewal::Claimed(Owner(claimant)))
                .map_err(|_| StoreError::Corrupt("claimant".into())),
            other => Err(StoreError::Corrupt(format!("commit answered {other:?}"))),
        }
    }

    pub async fn acquire(
        &self,
        room: &RoomId,
        me: &Owner,
        ttl: Duration,
        if_held: IfHeld,
    ) -> Result<Acquired, StoreError> {
        let keys = Keys::of(room);
        let mut call =
            ScriptCall::new(&self.scripts.acquire, &[keys.lease(), keys.meta(), keys.claim()]);
        call.arg(&me.0).arg(ttl.as_millis() as u64);
        call.arg(if if_held == IfHeld::Claim { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let (ours, value): (i64, String) = call.invoke(&mut conn).await?;
        if ours == 1 {
            let fence = value.parse().map_err(|_| StoreError::Corrupt("lease fence".into()))?;
            Ok(Acquired::Ours(Lease { fence }))
        } else {
            Ok(Acquired::HeldBy(Owner(value)))
        }
    }

    /// Many renewals: one script call on a single Redis; on Redis Cluster,
    /// where each room's keys live in a slot of their own, one call per
    /// room, all at once.
    pub async fn renew_many(
        &self,
        leases: &[(RoomId, Lease)],
        me: &Owner,
        ttl: Duration,
    ) -> Result<Vec<Renewal>, StoreError> {
        if matches!(self.conn, Conn::Cluster(_)) {
            let each = leases.chunks(1).map(|one| self.renew_in_one_call(one, me, ttl));
            let answers = futures_util::future::try_join_all(each).await?;
            return Ok(answers.into_iter().flatten().collect());
        }
        self.renew_in_one_call(leases, me, ttl).await
    }

    async fn renew_in_one_call(
        &self,
        leases: &[(RoomId, Lease)],
        me: &Owner,
        ttl: Duration,
    ) -> Result<Vec<Renewal>, StoreError> {
        let keys: Vec<_> = leases
            .iter()
            .flat_map(|(room, _)| [Keys::of(room).lease(), Keys::of(room).claim()])
            .collect();
        let mut call = ScriptCall::new(&self.scripts.renew, &keys);
        call.arg(&me.0).arg(ttl.as_millis() as u64);
        for (_, lease) in leases {
            call.arg(lease.fence);
        }
        let mut conn = self.conn.clone();
        let answers: Vec<(i64, String)> = call.invoke(&mut conn).await?;
        if answers.len() != leases.len() {
            return Err(StoreError::Corrupt("renewals answered".into()));
        }
        Ok(answers
            .into_iter()
            .map(|(renewed, claimant)| match (renewed, claimant.is_empty()) {
                (1, true) => Renewal::Ours,
                (1, false) => Renewal::Claimed(Owner(claimant)),
                _ => Renewal::Lost,
            })
            .collect())
    }

    pub async fn release(&self, room: &RoomId, me: &Owner, lease: Lease) -> Result<(), StoreError> {
        let mut call = ScriptCall::new(&self.scripts.release, &[Keys::of(room).lease()]);
        call.arg(&me.0).arg(lease.fence);
        let mut conn = self.conn.clone();
        let _: i64 = call.invoke(&mut conn).await?;
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
            .arg(keys.history())
            .arg(StreamId(after.saturating_add(1)))
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
            .arg(keys.history())
            .arg(StreamId(before - 1))
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
            cmd("HGET").arg(keys.meta()).arg("seq").query_async(&mut conn).await?;
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

#[cfg(test)]
mod tests {
    use super::cluster_seeds;

    #[test]
    fn cluster_urls_name_seed_nodes() {
        assert_eq!(cluster_seeds("redis://a:1"), None);
        assert_eq!(
            cluster_seeds("redis-cluster://a:7000,b:7001, c:7002"),
            Some(vec!["redis://a:7000".into(), "redis://b:7001".into(), "redis://c:7002".into()])
        );
        assert_eq!(
            cluster_seeds("redis-cluster://:p@ss@a:7000,b:7001"),
            Some(vec!["redis://:p@ss@a:7000".into(), "redis://:p@ss@b:7001".into()])
        );
        assert_eq!(cluster_seeds("redis-cluster://"), Some(vec![]));
    }
}
