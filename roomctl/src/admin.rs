//! The operator commands: one Admin call each, printed as a table or JSON.

use anyhow::Context;
use rooms_proto::admin::admin_client::AdminClient;
use rooms_proto::admin::{
    ClusterStatusRequest, GetRoomRequest, InvokeRequest, KickRequest, ListRoomsRequest,
    PublishRequest,
};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::cli::{Cli, Command};

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    /// Bad arguments (also clap's own usage errors).
    pub const USAGE: u8 = 2;
    /// The server could not be reached or had no owner for the room.
    pub const UNAVAILABLE: u8 = 3;
    /// Missing or wrong admin token.
    pub const UNAUTHENTICATED: u8 = 4;
    /// Any other server error.
    pub const FAILED: u8 = 1;
}

/// A failed command with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let code = match status.code() {
            Code::InvalidArgument => exit::USAGE,
            Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
            Code::Unauthenticated | Code::PermissionDenied => exit::UNAUTHENTICATED,
            _ => exit::FAILED,
        };
        let hint = match status.code() {
            Code::Unauthenticated => " (pass --token or set ROOMS_ADMIN_TOKEN)",
            _ => "",
        };
        Self { code, message: format!("{}{hint}", status.message()) }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self { code: exit::UNAVAILABLE, message: format!("{e:#}") }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<AdminClient<Channel>> {
    let endpoint = Endpoint::from_shared(cli.admin.clone())
        .with_context(|| format!("--admin `{}` is not a URL", cli.admin))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the Admin API at {}", cli.admin))?;
    Ok(AdminClient::new(channel))
}

fn request<T>(cli: &Cli, message: T) -> Result<Request<T>, Failure> {
    let mut request = Request::new(message);
    if let Some(token) = &cli.token {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| Failure {
            code: exit::USAGE,
            message: "the token has invalid characters".into(),
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Runs an admin command; returns what to print.
pub async fn run(cli: &Cli) -> Result<String, Failure> {
    let mut client = connect(cli).await?;
    let out = match &cli.command {
        Command::Publish { room, data, no_persist } => {
            if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(data).is_err() {
                return Err(Failure {
                    code: exit::USAGE,
                    message: "--data must be a JSON object".into(),
                });
            }
            let message = PublishRequest {
                room: room.clone(),
                data_json: data.clone(),
                persist: Some(!no_persist),
            };
            let reply = client.publish(request(cli, message)?).await?.into_inner();
            if cli.json {
                json!({"room": room, "seq": reply.seq}).to_string()
            } else if reply.seq == 0 {
                format!("published to {room} (not persisted)")
            } else {
                format!("published to {room} as seq {}", reply.seq)
            }
        }
        Command::Room { room } => {
            let r = client
                .get_room(request(cli, GetRoomRequest { room: room.clone() })?)
                .await?
                .into_inner();
            let kind = r.class.as_ref().map(|class| (class.clone(), r.bundle.clone()));
            if cli.json {
                let mut info = json!({"room": r.room, "owner": r.owner, "connections": r.connections, "users": r.users, "seq": r.seq});
                if let Some((class, bundle)) = kind {
                    info["class"] = json!(class);
                    info["bundle"] = json!(bundle);
                }
                info.to_string()
            } else {
                let (class, bundle) = kind.unwrap_or_else(|| ("chat".into(), "-".into()));
                table(
                    &["ROOM", "OWNER", "CONNECTIONS", "USERS", "SEQ", "CLASS", "BUNDLE"],
                    vec![vec![
                        r.room,
                        r.owner,
                        r.connections.to_string(),
                        r.users.to_string(),
                        r.seq.to_string(),
                        class,
                        bundle,
                    ]],
                )
            }
        }
        Command::Rooms => {
            let reply = client.list_rooms(request(cli, ListRoomsRequest {})?).await?.into_inner();
            if cli.json {
                let rooms: Vec<_> = reply
                    .rooms
                    .iter()
                    .map(
                        |r| json!({"room": r.room, "owner": r.owner, "connections": r.connections}),
                    )
                    .collect();
                json!({ "rooms": rooms }).to_string()
            } else {
                let rows = reply
                    .rooms
                    .into_iter()
                    .map(|r| vec![r.room, r.owner, r.connections.to_string()])
                    .collect();
                table(&["ROOM", "OWNER", "CONNECTIONS"], rows)
            }
        }
        Command::Kick { room, user, reason } => {
            let message =
                KickRequest { room: room.clone(), user_id: user.clone(), reason: reason.clone() };
            let reply = client.kick(request(cli, message)?).await?.into_inner();
            if cli.json {
                json!({"room": room, "user": user, "closed": reply.closed}).to_string()
            } else {
                format!("closed {} connection(s) of {user} in {room}", reply.closed)
            }
        }
        Command::Invoke { room, method, args } => {
            let args: Vec<serde_json::Value> = args
                .iter()
                .map(|a| {
                    serde_json::from_str(a).unwrap_or_else(|_| serde_json::Value::String(a.clone()))
                })
                .collect();
            let message = InvokeRequest {
                room: room.clone(),
                method: method.clone(),
                args_json: serde_json::Value::Array(args).to_string(),
            };
            client.invoke(request(cli, message)?).await?.into_inner().result_json
        }
        Command::Status => {
            let reply =
                client.cluster_status(request(cli, ClusterStatusRequest {})?).await?.into_inner();
            if cli.json {
                let hosts: Vec<_> = reply
                    .roomhosts
                    .iter()
                    .map(|h| json!({"address": h.address, "healthy": h.healthy, "activeRooms": h.active_rooms}))
                    .collect();
                json!({"roomhosts": hosts, "ringVersion": reply.ring_version}).to_string()
            } else {
                let rows = reply
                    .roomhosts
                    .into_iter()
                    .map(|h| {
                        let health = if h.healthy { "healthy" } else { "UNREACHABLE" };
                        vec![h.address, health.to_owned(), h.active_rooms.to_string()]
                    })
                    .collect();
                format!(
                    "ring version {}\n{}",
                    reply.ring_version,
                    table(&["ROOMHOST", "HEALTH", "ROOMS"], rows)
                )
            }
        }
        Command::Bench(_) | Command::Token(_) => {
            return Err(Failure { code: exit::USAGE, message: "not an Admin call".into() });
        }
    };
    Ok(out)
}

/// A plain aligned table.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| (*h).to_owned()).collect())];
    if rows.is_empty() {
        out.push("(none)".into());
    }
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}
