//! Redis commands made without copies. A room's keys and stream ids are
//! written straight into the command that carries them, and a script call
//! is packed into its one `EVALSHA` as it is made. (`redis::Script`'s
//! invocation first copies every key and argument into a buffer of its
//! own, then all of them again into the command: a group commit of one
//! chat made about twenty allocations before it was sent, a quarter of a
//! busy roomhost's time in `malloc` and `free`.)

use redis::aio::ConnectionLike;
use redis::{
    Cmd, ErrorKind, FromRedisValue, RedisResult, RedisWrite, Script, ServerErrorKind, ToRedisArgs,
};
use rooms_proto::RoomId;

/// A room's keys (`rooms:{R}:…`), each written into the command that uses
/// it.
#[derive(Clone, Copy)]
pub(super) struct Keys<'a>(&'a RoomId);

impl<'a> Keys<'a> {
    pub(super) fn of(room: &'a RoomId) -> Self {
        Self(room)
    }

    fn key(&self, what: &'static str) -> Key<'a> {
        Key(self.0, what)
    }

    pub(super) fn history(&self) -> Key<'a> {
        self.key("history")
    }

    pub(super) fn names(&self) -> Key<'a> {
        self.key("names")
    }

    pub(super) fn meta(&self) -> Key<'a> {
        self.key("meta")
    }

    pub(super) fn lease(&self) -> Key<'a> {
        self.key("lease")
    }

    pub(super) fn claim(&self) -> Key<'a> {
        self.key("claim")
    }

    pub(super) fn storage(&self) -> Key<'a> {
        self.key("storage")
    }

    pub(super) fn ran(&self) -> Key<'a> {
        self.key("ran")
    }

    pub(super) fn alarms(&self) -> Key<'a> {
        self.key("alarms")
    }
}

/// One key of a room's.
#[derive(Clone, Copy)]
pub(super) struct Key<'a>(&'a RoomId, &'static str);

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rooms:{{{}}}:{}", self.0, self.1)
    }
}

impl ToRedisArgs for Key<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

/// The history stream's entry id of a seq: `SEQ-0`.
#[derive(Clone, Copy)]
pub(super) struct StreamId(pub(super) u64);

impl ToRedisArgs for StreamId {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(format_args!("{}-0", self.0));
    }
}

/// A script call as one `EVALSHA` command: its keys first, then its
/// arguments, each written once.
pub(super) struct ScriptCall<'s> {
    script: &'s Script,
    cmd: Cmd,
}

impl<'s> ScriptCall<'s> {
    /// A call of `script` with these keys; arguments follow.
    pub(super) fn new(script: &'s Script, keys: &[Key<'_>]) -> Self {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len());
        for key in keys {
            cmd.arg(key);
        }
        Self { script, cmd }
    }

    /// Appends an argument (`ARGV[i]`).
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Runs the call; a server that does not know the script yet (a new or
    /// restarted Redis) is given it, and the call made again.
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> RedisResult<T> {
        match self.cmd.query_async(conn).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command as Redis receives it, its arguments split out.
    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<not a plain argument>".into(),
            })
            .collect()
    }

    #[test]
    fn a_script_call_is_one_evalsha_with_the_rooms_keys_then_its_arguments() {
        let script = Script::new("return 1");
        let room = RoomId::parse("lobby").unwrap();
        let keys = Keys::of(&room);
        let mut call = ScriptCall::new(&script, &[keys.lease(), keys.history()]);
        call.arg("me").arg(7_u64).arg(StreamId(12)).arg(&b"{\"a\":1}"[..]);
        assert_eq!(
            args(&call.cmd),
            [
                "EVALSHA",
                script.get_hash(),
                "2",
                "rooms:{lobby}:lease",
                "rooms:{lobby}:history",
                "me",
                "7",
                "12-0",
                "{\"a\":1}"
            ]
        );
        assert_eq!(keys.meta().to_string(), "rooms:{lobby}:meta");
    }
}
