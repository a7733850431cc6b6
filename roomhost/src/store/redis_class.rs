//! A class room's keys in Redis, beside the chat keys (`redis`), under the
//! room's hash tag:
//!
//! * `rooms:{R}:storage`: the class's storage, a hash key -> encoded value.
//! * `rooms:{R}:ran`: the last socket message run per gateway, a hash
//!   gateway name -> tag.
//! * `rooms:{R}:alarms`: the room's alarm (field `""`) and named timers, a
//!   hash name -> when it fires (ms since the epoch).
//!
//! All three change only in one script that checks the room's lease and
//! fencing token. Beside them, one key for every room:
//!
//! * `rooms:alarm-index`: a sorted set room -> its earliest alarm, which
//!   roomhosts scan for rooms to wake. It is a hint, written around each
//!   commit (lowered before, set exactly after): an entry may be early, or
//!   name a room with nothing due, never late.

use std::sync::OnceLock;

use redis::{Script, cmd};
use rooms_proto::RoomId;

use super::redis::RedisStore;
use super::redis_cmd::{Keys, ScriptCall};
use super::{Lease, Owner, StorageWrite, StoreError};

/// The sorted set of rooms by their earliest alarm.
pub(super) const ALARM_INDEX: &str = "rooms:alarm-index";

/// KEYS: lease, storage, ran, alarms. ARGV: me, fence, then writes:
/// 'p' key value | 'd' key | 'c' (delete all) | 'r' gateway tag |
/// 'f' gateway | 'a' name at | 'x' name. -> 1 | 0
fn commit_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new(
            r"
            if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1]
               or redis.call('HGET', KEYS[1], 'fence') ~= ARGV[2] then
              return 0
            end
            local i = 3
            while i <= #ARGV do
              local op = ARGV[i]
              if op == 'p' then
                redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
                i = i + 3
              elseif op == 'd' then
                redis.call('HDEL', KEYS[2], ARGV[i + 1])
                i = i + 2
              elseif op == 'c' then
                redis.call('DEL', KEYS[2])
                i = i + 1
              elseif op == 'r' then
                redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
                i = i + 3
              elseif op == 'f' then
                redis.call('HDEL', KEYS[3], ARGV[i + 1])
                i = i + 2
              elseif op == 'a' then
                redis.call('HSET', KEYS[4], ARGV[i + 1], ARGV[i + 2])
                i = i + 3
              else
                redis.call('HDEL', KEYS[4], ARGV[i + 1])
                i = i + 2
              end
            end
            return 1
            ",
        )
    })
}

impl RedisStore {
    pub async fn load_storage(&self, room: &RoomId) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(cmd("HGETALL").arg(Keys::of(room).storage()).query_async(&mut conn).await?)
    }

    pub async fn load_ran(&self, room: &RoomId) -> Result<Vec<(String, u64)>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(cmd("HGETALL").arg(Keys::of(room).ran()).query_async(&mut conn).await?)
    }

    pub async fn load_alarms(&self, room: &RoomId) -> Result<Vec<(String, u64)>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(cmd("HGETALL").arg(Keys::of(room).alarms()).query_async(&mut conn).await?)
    }

    /// One script per group commit of a class room: checks the lease and
    /// fencing token, then applies the writes in order, all or nothing.
    pub async fn commit_storage(
        &self,
        room: &RoomId,
        me: &Owner,
        lease: Lease,
        writes: &[StorageWrite],
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let keys = Keys::of(room);
        let keys = [keys.lease(), keys.storage(), keys.ran(), keys.alarms()];
        let mut call = ScriptCall::new(commit_script(), &keys);
        call.arg(&me.0).arg(lease.fence);
        for write in writes {
            match write {
                StorageWrite::Put(key, value) => call.arg("p").arg(key).arg(value),
                StorageWrite::Delete(key) => call.arg("d").arg(key),
                StorageWrite::DeleteAll => call.arg("c"),
                StorageWrite::Ran(gateway, tag) => call.arg("r").arg(gateway).arg(tag),
                StorageWrite::Forget(gateway) => call.arg("f").arg(gateway),
                StorageWrite::Alarm(name, Some(at)) => call.arg("a").arg(name).arg(at),
                StorageWrite::Alarm(name, None) => call.arg("x").arg(name),
            };
        }
        let mut conn = self.conn.clone();
        match call.invoke::<i64>(&mut conn).await? {
            1 => Ok(()),
            _ => Err(StoreError::LeaseLost),
        }
    }

    /// The room's entry in the alarm index: its earliest alarm, or none.
    pub async fn index_alarm(&self, room: &RoomId, at: Option<u64>) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let command = match at {
            Some(at) => cmd("ZADD").arg(ALARM_INDEX).arg(at).arg(room.as_str()).to_owned(),
            None => cmd("ZREM").arg(ALARM_INDEX).arg(room.as_str()).to_owned(),
        };
        command.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Lowers the room's entry in the alarm index to `at` (or adds it).
    pub async fn lower_alarm(&self, room: &RoomId, at: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        cmd("ZADD")
            .arg(ALARM_INDEX)
            .arg("LT")
            .arg(at)
            .arg(room.as_str())
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Up to `limit` rooms whose earliest alarm is due at `now` (ms),
    /// earliest first, with when.
    pub async fn due_alarms(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut conn = self.conn.clone();
        let due: Vec<(String, f64)> = cmd("ZRANGEBYSCORE")
            .arg(ALARM_INDEX)
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Ok(due.into_iter().map(|(room, at)| (room, at.max(0.0) as u64)).collect())
    }
}
