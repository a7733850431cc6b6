//! The command line of `roomctl`.

use std::time::Duration;

use clap::{Parser, Subcommand};

pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// Operate a rooms cluster through its Admin API, or load-test it.
#[derive(Debug, Parser)]
#[command(name = "roomctl", version)]
pub struct Cli {
    /// Admin API of any gateway.
    #[arg(long, global = true, env = "ROOMS_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// Admin token (sent as `authorization: Bearer TOKEN`).
    #[arg(long, global = true, env = "ROOMS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish a `system` event (a JSON object) into a room.
    Publish {
        room: String,
        /// The event's data: a JSON object.
        #[arg(long)]
        data: String,
        /// Deliver without storing it in history (no seq).
        #[arg(long)]
        no_persist: bool,
    },
    /// Show one room: owner, connections, users, latest seq.
    Room { room: String },
    /// List the active rooms of the cluster.
    Rooms,
    /// Close every connection of a user in a room (close code 4001).
    Kick {
        room: String,
        user: String,
        #[arg(long, default_value = "kicked by an operator")]
        reason: String,
    },
    /// Roomhosts, their health and rooms, and the ring version.
    Status,
    /// Call a public method of a class room's class; each ARG is JSON (a
    /// bare word is taken as a string). Prints the method's JSON result.
    Invoke { room: String, method: String, args: Vec<String> },
    /// Load generator: N clients across R rooms; prints one JSON line.
    Bench(BenchArgs),
    /// Mint an HS256 client token (for development and tests).
    Token(TokenArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The gateway's --jwt-secret.
    #[arg(long, env = "ROOMS_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The user id (`sub`).
    #[arg(long)]
    pub user: String,
    /// Rooms the token opens, comma-separated: names or `prefix*` (default: all).
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub issuer: Option<String>,
    #[arg(long)]
    pub audience: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Gateway (or peer) base URL, e.g. ws://127.0.0.1:8080; several,
    /// comma-separated, spread the clients round-robin.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Rooms to spread the clients over.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Client connections in all.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How many of the clients send (spread over the rooms). Default: 10,
    /// or every client if fewer; at the default --rate each sends 10
    /// messages/s, within a gateway's default per-connection limit.
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages per second over all senders; 0 = as fast as possible
    /// (each sender keeps --window messages in flight).
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Chat text size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Unacknowledged messages per sender in as-fast-as-possible mode.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Keep the clients connected this long after sending, idle, then report
    /// (for memory-per-connection measurements).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// A label for the JSON line (e.g. the server's name).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Cold-room mode: first store this many chats in each of --rooms rooms
    /// (one client per room), wait --cold-wait for the rooms to leave the
    /// roomhosts' memory, then join each room once and time connect →
    /// `welcome` + `history`. 0 = the usual load.
    #[arg(long, default_value_t = 0)]
    pub preload: usize,
    /// Cold-room mode: how long to wait after preloading (longer than the
    /// roomhosts' --room-idle-timeout).
    #[arg(long, default_value = "7s", value_parser = humantime::parse_duration)]
    pub cold_wait: Duration,
    /// Cold-room mode for class rooms that speak the peers' chat subset (no
    /// `welcome`, no `history`, e.g. the workerd peer's `ChatRoom`): a join
    /// is timed to the completed handshake, which the room's class answers
    /// from a new instance.
    #[arg(long)]
    pub class_rooms: bool,
}

/// Senders when `--senders` is not given.
pub const DEFAULT_SENDERS: usize = 10;

impl BenchArgs {
    /// How many clients send: `--senders`, or the default capped by the clients.
    pub fn senders(&self) -> usize {
        self.senders.unwrap_or(DEFAULT_SENDERS.min(self.clients))
    }
}
