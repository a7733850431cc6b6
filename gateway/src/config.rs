//! Command-line flags (each also read from an environment variable) and the
//! validated configuration they produce.

use std::net::SocketAddr;
use std::time::Duration;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use rooms_cluster::MembershipSource;
use rooms_telemetry::LogFormat;

use crate::auth::{Access, AuthConfigError, JwtAlgorithm, JwtAuth, Origins};

/// A secret read from a file, without the trailing newline editors add.
fn trim_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";
pub const DEFAULT_RATE_LIMIT: u32 = 20;
pub const DEFAULT_RATE_BURST: u32 = 40;
pub const DEFAULT_SEND_QUEUE: usize = 256;
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Largest client frame; bigger ones close the connection with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Development: the user id comes from `?user=` (or is random).
    None,
    /// A signed JWT identifies the user.
    Jwt,
}

/// A rooms gateway: serves client WebSockets and the operator Admin API.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, args_override_self = true)]
#[allow(rustdoc::bare_urls, reason = "the fields' docs are `--help` in a terminal, not Markdown")]
pub struct Args {
    /// WebSocket + HTTP listen address.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// gRPC Admin API listen address.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Roomhost membership: static:A,B | file:PATH | dns:NAME:PORT.
    /// Absent: an embedded roomhost with an in-memory store (development).
    #[arg(long, env = "GATEWAY_ROOMHOSTS")]
    pub roomhosts: Option<MembershipSource>,
    /// Client authentication.
    #[arg(long, env = "GATEWAY_AUTH", value_enum, default_value = "none")]
    pub auth: AuthMode,
    /// HS256 secret for --auth jwt (at least 16 bytes).
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding the HS256 secret (e.g. a mounted Secret).
    #[arg(long, env = "GATEWAY_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// RS256/ES256 public key (PEM file) for --auth jwt.
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// RS256/ES256 public keys as a JWKS file; the token's `kid` picks one.
    #[arg(long, env = "GATEWAY_JWT_JWKS")]
    pub jwt_jwks: Option<PathBuf>,
    /// The one accepted token algorithm (default: HS256 with a secret,
    /// RS256 with a public key).
    #[arg(long, env = "GATEWAY_JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// Required `iss` claim.
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Origins allowed to open sockets: exact (https://app.example.com) or
    /// *.example.com, comma-separated. Absent: any origin (a warning is logged).
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Bearer token every Admin call must carry (absent: Admin is open).
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Client messages per second per connection.
    #[arg(long, env = "GATEWAY_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,
    /// Client messages a connection may send at once above the rate.
    #[arg(long, env = "GATEWAY_RATE_BURST", default_value_t = DEFAULT_RATE_BURST)]
    pub rate_burst: u32,
    /// Frames queued per connection; a client that lets it fill is closed with 1013.
    #[arg(long, env = "GATEWAY_SEND_QUEUE", default_value_t = DEFAULT_SEND_QUEUE)]
    pub send_queue: usize,
    /// Most WebSocket connections this gateway holds; more get HTTP 503.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Idle sockets get a WebSocket ping this often.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// Slowloris guard: a request's headers must arrive within this time.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Longest time SIGTERM waits for sockets to close.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// tokio worker threads (default: one per CPU the process may use, its
    /// cgroup CPU limit or else every core). Set it to the pod's CPU share
    /// when pods share a node's cores without a CPU limit.
    #[arg(long, env = "GATEWAY_WORKER_THREADS", value_parser = rooms_server::runtime::worker_threads_parser())]
    pub worker_threads: Option<u16>,
    /// Validate the flags (and read the files they name), print the result
    /// and exit without serving: 0 if valid, 2 if not.
    #[arg(long)]
    pub check_config: bool,
}

/// Validated gateway configuration.
#[derive(Clone)]
pub struct Config {
    pub access: Arc<Access>,
    pub roomhosts: Option<MembershipSource>,
    pub admin_token: Option<String>,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub send_queue: usize,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error("reading {0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("--jwt-* flags need --auth jwt")]
    JwtWithoutAuth,
    #[error("--rate-limit and --rate-burst must be at least 1")]
    Rate,
    #[error("--send-queue must be at least 1")]
    SendQueue,
    #[error("--max-connections must be at least 1")]
    MaxConnections,
    #[error("--admin-token must not be empty")]
    AdminToken,
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|e| ConfigError::File(path.clone(), e));
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(secret), _) => Some(secret.as_bytes().to_vec()),
            (None, Some(path)) => Some(trim_newline(read(path)?)),
            (None, None) => None,
        };
        let jwt = match self.auth {
            AuthMode::None => {
                if secret.is_some() || self.jwt_public_key.is_some() || self.jwt_jwks.is_some() {
                    return Err(ConfigError::JwtWithoutAuth);
                }
                None
            }
            AuthMode::Jwt => {
                let algorithm = self.jwt_algorithm;
                let auth = match (secret, &self.jwt_public_key, &self.jwt_jwks) {
                    (Some(secret), None, None) => match algorithm {
                        None | Some(JwtAlgorithm::Hs256) => JwtAuth::hs256(&secret)?,
                        Some(other) => return Err(AuthConfigError::AlgorithmMismatch(other).into()),
                    },
                    (None, Some(path), None) => {
                        JwtAuth::public_key(&read(path)?, algorithm.unwrap_or(JwtAlgorithm::Rs256))?
                    }
                    (None, None, Some(path)) => {
                        JwtAuth::jwks(&read(path)?, algorithm.unwrap_or(JwtAlgorithm::Rs256))?
                    }
                    _ => return Err(AuthConfigError::NoKey.into()),
                };
                let auth = match &self.jwt_issuer {
                    Some(issuer) => auth.with_issuer(issuer),
                    None => auth,
                };
                Some(match &self.jwt_audience {
                    Some(audience) => auth.with_audience(audience),
                    None => auth,
                })
            }
        };
        let origins = Origins::parse(&self.allowed_origins)?;
        let admin_token = match (self.admin_token, &self.admin_token_file) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => {
                Some(String::from_utf8_lossy(&trim_newline(read(path)?)).into_owned())
            }
            (None, None) => None,
        };
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return Err(ConfigError::Rate);
        }
        if self.send_queue == 0 {
            return Err(ConfigError::SendQueue);
        }
        if self.max_connections == 0 {
            return Err(ConfigError::MaxConnections);
        }
        if admin_token.as_deref() == Some("") {
            return Err(ConfigError::AdminToken);
        }
        Ok(Config {
            access: Arc::new(Access { jwt, origins }),
            roomhosts: self.roomhosts,
            admin_token,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            send_queue: self.send_queue,
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval.max(Duration::from_millis(100)),
            shutdown_grace: self.shutdown_grace,
        })
    }
}
