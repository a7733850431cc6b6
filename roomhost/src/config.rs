//! Command-line flags (each also read from an environment variable) and the
//! validated configuration they produce.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rooms_classes::{Bundle, BundleError, ClassSpec, Limits};
use rooms_cluster::MembershipSource;
use rooms_telemetry::LogFormat;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9091";
pub const DEFAULT_IDLE_TIMEOUT: &str = "30s";
pub const DEFAULT_HISTORY_LIMIT: usize = 1000;
pub const DEFAULT_MAX_ROOMS: usize = 100_000;
pub const DEFAULT_SHUTDOWN_GRACE: &str = "20s";
pub const DEFAULT_LEASE_TTL: &str = "5s";

/// A rooms roomhost: owns rooms, persists them to Redis, serves gateways over gRPC.
#[derive(Debug, Parser)]
#[command(name = "roomhost", version, args_override_self = true)]
#[allow(
    rustdoc::broken_intra_doc_links,
    reason = "the fields' docs are `--help` in a terminal: `[:PASSWORD@]` is a URL's syntax there"
)]
pub struct Args {
    /// gRPC listen address.
    #[arg(long, env = "ROOMHOST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// HTTP listen address for /metrics (Prometheus), /healthz and /readyz.
    #[arg(long, env = "ROOMHOST_METRICS_LISTEN", default_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,
    /// Address other processes use to reach this roomhost (default: the listen address).
    #[arg(long, env = "ROOMHOST_ADVERTISE")]
    pub advertise: Option<String>,
    /// Roomhost membership: static:A,B | file:PATH | dns:NAME:PORT.
    #[arg(long, env = "ROOMHOST_ROOMHOSTS")]
    pub roomhosts: Option<MembershipSource>,
    /// Redis: redis://[:PASSWORD@]HOST:PORT[/DB] (or rediss:// for TLS), or a
    /// Redis Cluster: redis-cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]
    /// (seed nodes). Absent: an in-memory store, for development only.
    #[arg(long, env = "ROOMHOST_REDIS")]
    pub redis: Option<String>,
    /// Evict a room from memory after this long without connections.
    #[arg(long, env = "ROOMHOST_ROOM_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub room_idle_timeout: Duration,
    /// Events kept per room.
    #[arg(long, env = "ROOMHOST_HISTORY_LIMIT", default_value_t = DEFAULT_HISTORY_LIMIT)]
    pub history_limit: usize,
    /// Most rooms held in memory; more are refused (RESOURCE_EXHAUSTED).
    #[arg(long, env = "ROOMHOST_MAX_ROOMS", default_value_t = DEFAULT_MAX_ROOMS)]
    pub max_rooms: usize,
    /// How long a room's ownership lease lasts unless renewed: a crashed
    /// roomhost's rooms move after at most this long; shorter also means more
    /// renewals and a Redis hiccup of this length costs the lease.
    #[arg(long, env = "ROOMHOST_LEASE_TTL", default_value = DEFAULT_LEASE_TTL, value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Longest time SIGTERM waits for rooms to flush and streams to close.
    #[arg(long, env = "ROOMHOST_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json.
    #[arg(long, env = "ROOMHOST_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// tokio worker threads (default: one per CPU the process may use, its
    /// cgroup CPU limit or else every core). Set it to the pod's CPU share
    /// when pods share a node's cores without a CPU limit.
    #[arg(long, env = "ROOMHOST_WORKER_THREADS", value_parser = rooms_server::runtime::worker_threads_parser())]
    pub worker_threads: Option<u16>,
    /// Rooms that run a JavaScript class with the Durable Object API:
    /// PATTERN=FILE#Class, e.g. 'game-*=/etc/rooms/game.js#GameRoom' (`*`
    /// matches any run of characters; the first matching pattern wins;
    /// rooms matching none are chat rooms). Repeatable.
    #[arg(long = "room-class", value_name = "PATTERN=FILE#Class")]
    pub room_classes: Vec<ClassSpec>,
    /// A variable for room classes' `this.env`: NAME=VALUE. Repeatable.
    #[arg(long = "room-env", value_name = "NAME=VALUE", value_parser = parse_env_var)]
    pub room_env: Vec<(String, String)>,
    /// A file of variables (or secrets) for room classes' `this.env`: a JSON
    /// object, e.g. a Kubernetes Secret mounted as a file. Repeatable; later
    /// ones and --room-env win.
    #[arg(long = "room-env-file", value_name = "PATH")]
    pub room_env_files: Vec<PathBuf>,
    /// Room classes: each room's JavaScript heap, in MiB. An event that needs
    /// more fails, and the room's instance starts again from storage.
    #[arg(long, env = "ROOMHOST_CLASS_MEMORY_MIB", default_value_t = 64)]
    pub class_memory_mib: usize,
    /// Room classes: CPU time one event may take. A longer one fails, and the
    /// room's instance starts again from storage.
    #[arg(long, env = "ROOMHOST_CLASS_CPU_LIMIT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub class_cpu_limit: Duration,
    /// Room classes: stored keys and values per room, in MiB; a write past it
    /// throws in the class.
    #[arg(long, env = "ROOMHOST_CLASS_STORAGE_MIB", default_value_t = 64)]
    pub class_storage_mib: usize,
    /// Validate the flags (and read the files they name), print the result
    /// and exit without serving: 0 if valid, 2 if not.
    #[arg(long)]
    pub check_config: bool,
}

/// Validated roomhost configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub advertise: Option<String>,
    pub roomhosts: Option<MembershipSource>,
    pub redis: Option<String>,
    pub room_idle_timeout: Duration,
    pub history_limit: usize,
    pub max_rooms: usize,
    pub shutdown_grace: Duration,
    pub lease_ttl: Duration,
    /// Room classes, in the order given, their bundles compiled.
    pub classes: Vec<Arc<Bundle>>,
    /// `this.env` of every room class, as a JSON object.
    pub class_env: Arc<str>,
    /// Heap, CPU and storage limits of each class room.
    pub class_limits: Limits,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--history-limit must be at least 100 (the history sent on join)")]
    HistoryLimit,
    #[error("--max-rooms must be at least 1")]
    MaxRooms,
    #[error("--room-idle-timeout must be at least 1s")]
    IdleTimeout,
    #[error(
        "--redis must be a redis:// or rediss:// URL, or redis-cluster://HOST:PORT[,HOST:PORT...]"
    )]
    RedisUrl,
    #[error("--lease-ttl must be between 1s and 5m")]
    LeaseTtl,
    #[error("--room-class {0}")]
    Bundle(#[from] BundleError),
    #[error("--room-env-file {path}: {reason}")]
    EnvFile { path: String, reason: String },
    #[error(
        "room class limits: --class-memory-mib 4 to 4096, --class-cpu-limit 10ms to 60s, --class-storage-mib 1 to 1024"
    )]
    ClassLimits,
}

/// `NAME=VALUE`.
fn parse_env_var(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err("expected NAME=VALUE".to_owned()),
    }
}

/// `this.env` from the env files, then the single variables.
fn class_env(
    files: &[PathBuf],
    vars: &[(String, String)],
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let mut env = serde_json::Map::new();
    for path in files {
        let error =
            |reason: String| ConfigError::EnvFile { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        match serde_json::from_str(&text).map_err(|e| error(e.to_string()))? {
            serde_json::Value::Object(values) => env.extend(values),
            _ => return Err(error("expected a JSON object".to_owned())),
        }
    }
    for (name, value) in vars {
        env.insert(name.clone(), serde_json::Value::String(value.clone()));
    }
    Ok(env)
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.history_limit < crate::store::RECENT_EVENTS {
            return Err(ConfigError::HistoryLimit);
        }
        if self.max_rooms == 0 {
            return Err(ConfigError::MaxRooms);
        }
        if self.room_idle_timeout < Duration::from_secs(1) {
            return Err(ConfigError::IdleTimeout);
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(300) {
            return Err(ConfigError::LeaseTtl);
        }
        if let Some(url) = &self.redis {
            let single = url.starts_with("redis://") || url.starts_with("rediss://");
            let cluster = crate::store::cluster_seeds(url).is_some_and(|s| !s.is_empty());
            if !(single || cluster) {
                return Err(ConfigError::RedisUrl);
            }
        }
        // Compiled here, so that --check-config reports a bad bundle too.
        let classes = self
            .room_classes
            .iter()
            .map(|spec| Bundle::load(spec).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let env = class_env(&self.room_env_files, &self.room_env)?;
        if !(4..=4096).contains(&self.class_memory_mib)
            || !(Duration::from_millis(10)..=Duration::from_secs(60))
                .contains(&self.class_cpu_limit)
            || !(1..=1024).contains(&self.class_storage_mib)
        {
            return Err(ConfigError::ClassLimits);
        }
        let class_limits = Limits {
            memory: self.class_memory_mib << 20,
            cpu: self.class_cpu_limit,
            storage: self.class_storage_mib << 20,
        };
        Ok(Config {
            advertise: self.advertise,
            roomhosts: self.roomhosts,
            redis: self.redis,
            room_idle_timeout: self.room_idle_timeout,
            history_limit: self.history_limit,
            max_rooms: self.max_rooms,
            shutdown_grace: self.shutdown_grace,
            lease_ttl: self.lease_ttl,
            classes,
            class_env: serde_json::Value::Object(env).to_string().into(),
            class_limits,
        })
    }
}

impl Config {
    /// The embedded development roomhost: in-memory store, the flags'
    /// defaults, and a short shutdown grace (its gateway has already closed
    /// every socket when it stops).
    pub fn embedded() -> Self {
        Self {
            advertise: None,
            roomhosts: None,
            redis: None,
            room_idle_timeout: default_duration(DEFAULT_IDLE_TIMEOUT),
            history_limit: DEFAULT_HISTORY_LIMIT,
            max_rooms: DEFAULT_MAX_ROOMS,
            shutdown_grace: EMBEDDED_SHUTDOWN_GRACE,
            lease_ttl: default_duration(DEFAULT_LEASE_TTL),
            classes: Vec::new(),
            class_env: "{}".into(),
            class_limits: Limits::default(),
        }
    }
}

/// How long an embedded roomhost waits for its rooms to flush on shutdown.
const EMBEDDED_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A default written for the flags (`"30s"`), as a duration.
fn default_duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|_| unreachable!("default {text} parses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_class_limits_come_from_flags_within_bounds() {
        let flags = ["roomhost", "--class-memory-mib=16", "--class-cpu-limit=200ms"];
        let limits = Args::parse_from(flags).into_config().unwrap().class_limits;
        assert_eq!((limits.memory, limits.cpu), (16 << 20, Duration::from_millis(200)));
        assert_eq!(limits.storage, 64 << 20, "the default");
        for bad in ["--class-cpu-limit=5ms", "--class-memory-mib=1", "--class-storage-mib=0"] {
            let refused = Args::parse_from(["roomhost", bad]).into_config();
            assert!(matches!(refused, Err(ConfigError::ClassLimits)), "{bad}");
        }
        assert_eq!(Config::embedded().class_limits, Limits::default());
    }

    #[test]
    fn the_embedded_roomhost_uses_the_flags_defaults() {
        let flags = Args::parse_from(["roomhost"]).into_config().unwrap();
        let embedded = Config::embedded();
        assert_eq!(embedded.room_idle_timeout, flags.room_idle_timeout);
        assert_eq!(embedded.lease_ttl, flags.lease_ttl);
        assert_eq!(embedded.history_limit, flags.history_limit);
        assert!(embedded.redis.is_none() && embedded.roomhosts.is_none());
    }
}
