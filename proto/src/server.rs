//! Frames the server sends (JSON text). Each is serialized exactly once, on the
//! roomhost, and travels as shared [`Bytes`] to every gateway and socket.
//!
//! [`ServerFrame`] is the same protocol read from the client side (tests,
//! `roomctl bench`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::SystemTime;

use crate::client::ErrorCode;

/// WebSocket close codes of the protocol (docs/protocol.md), used by the
/// gateway when it closes a socket and by the roomhost when it asks it to.
pub mod close_code {
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const SERVER_ERROR: u16 = 1011;
    pub const RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const KICKED: u16 = 4001;
    pub const TOKEN_EXPIRED: u16 = 4003;
}

/// RFC 3339 UTC with milliseconds, the `time` of every timed event.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn encode<T: Serialize>(frame: &T) -> Bytes {
    // Serializing these plain structs cannot fail: keys are strings and no
    // value has a fallible Serialize impl.
    let mut bytes = serde_json::to_vec(frame).expect("server frame serializes");
    // Exactly sized: a room keeps its recent events' frames in memory, and a
    // buffer grown by doubling keeps up to twice the bytes, plus the header
    // `Bytes` adds to a `Vec` with spare capacity.
    bytes.shrink_to_fit();
    Bytes::from(bytes)
}

/// Most users listed in `welcome`; the rest are counted in `moreUsers`.
pub const MAX_WELCOME_USERS: usize = 1000;

#[derive(Serialize)]
pub struct UserEntry<'a> {
    #[serde(rename = "userId")]
    pub user_id: &'a str,
    pub name: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "welcome")]
struct Welcome<'a> {
    room: &'a str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    seq: u64,
    epoch: &'a str,
    users: &'a [UserEntry<'a>],
    /// Present users left out of `users` because of the list limit.
    #[serde(rename = "moreUsers", skip_serializing_if = "is_zero")]
    more_users: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub fn welcome(
    room: &str,
    user_id: &str,
    seq: u64,
    epoch: &str,
    users: &[UserEntry<'_>],
    more_users: usize,
) -> Bytes {
    encode(&Welcome { room, user_id, seq, epoch, users, more_users })
}

/// What a `history` frame says about the events around its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Page {
    /// Older events exist (the client may page back).
    pub has_more: bool,
    /// Events between the client's resume point and these are gone.
    pub gap: bool,
}

/// A `history` frame around already-serialized events (oldest first).
pub fn history(events: &[Bytes], page: Page) -> Bytes {
    let Page { has_more, gap } = page;
    let len: usize = events.iter().map(|e| e.len() + 1).sum();
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(br#"{"type":"history","messages":["#);
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(event);
    }
    out.extend_from_slice(br#"],"hasMore":"#);
    out.extend_from_slice(if has_more { b"true" } else { b"false" });
    out.extend_from_slice(br#","gap":"#);
    out.extend_from_slice(if gap { b"true" } else { b"false" });
    out.push(b'}');
    Bytes::from(out)
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "chat")]
struct Chat<'a> {
    seq: u64,
    id: &'a str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    #[serde(rename = "userName")]
    user_name: &'a str,
    text: &'a str,
    time: &'a str,
}

pub fn chat(seq: u64, id: &str, user_id: &str, user_name: &str, text: &str, time: &str) -> Bytes {
    encode(&Chat { seq, id, user_id, user_name, text, time })
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "name")]
struct Name<'a> {
    seq: u64,
    #[serde(rename = "userId")]
    user_id: &'a str,
    name: &'a str,
    time: &'a str,
}

pub fn name(seq: u64, user_id: &str, name: &str, time: &str) -> Bytes {
    encode(&Name { seq, user_id, name, time })
}

#[derive(Serialize)]
struct Presence<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    name: &'a str,
}

pub fn join(user_id: &str, name: &str) -> Bytes {
    encode(&Presence { kind: "join", user_id, name })
}

pub fn leave(user_id: &str, name: &str) -> Bytes {
    encode(&Presence { kind: "leave", user_id, name })
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "typing")]
struct Typing<'a> {
    #[serde(rename = "userId")]
    user_id: &'a str,
}

pub fn typing(user_id: &str) -> Bytes {
    encode(&Typing { user_id })
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "system")]
struct System<'a> {
    seq: u64,
    data: &'a RawValue,
    time: &'a str,
}

/// `data` must be a JSON object; see [`parse_system_data`].
pub fn system(seq: u64, data: &RawValue, time: &str) -> Bytes {
    encode(&System { seq, data, time })
}

/// Why operator data was refused.
#[derive(Debug, thiserror::Error)]
pub enum SystemDataError {
    #[error("data_json is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("data_json must be a JSON object")]
    NotAnObject,
}

/// Checks that operator data is one JSON object and returns it raw.
pub fn parse_system_data(json: &str) -> Result<Box<RawValue>, SystemDataError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(SystemDataError::NotJson)?;
    if !value.is_object() {
        return Err(SystemDataError::NotAnObject);
    }
    // Re-serialize compactly so stored events never carry odd whitespace.
    RawValue::from_string(value.to_string()).map_err(SystemDataError::NotJson)
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "error")]
struct ErrorFrame<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
}

pub fn error(code: ErrorCode, message: &str) -> Bytes {
    error_for(code, message, "")
}

/// An `error` refusing the request whose client `id` was `id` (echoed so
/// the client knows which of its messages failed; omitted when empty).
pub fn error_for(code: ErrorCode, message: &str, id: &str) -> Bytes {
    encode(&ErrorFrame { code: code.as_str(), message, id })
}

/// The answer to a client's `ping`.
pub fn pong() -> Bytes {
    Bytes::from_static(br#"{"type":"pong"}"#)
}

/// A server frame as a client reads it. Fields a peer server may omit
/// (`seq`, `id`, ...) are optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    Welcome {
        room: String,
        #[serde(rename = "userId")]
        user_id: String,
        seq: u64,
        epoch: String,
        users: Vec<UserInfo>,
    },
    History {
        messages: Vec<ServerFrame>,
        #[serde(rename = "hasMore")]
        has_more: bool,
        gap: bool,
    },
    Chat {
        seq: Option<u64>,
        id: Option<String>,
        #[serde(rename = "userId")]
        user_id: String,
        #[serde(rename = "userName")]
        user_name: Option<String>,
        text: String,
        time: Option<String>,
    },
    Name {
        seq: u64,
        #[serde(rename = "userId")]
        user_id: String,
        name: String,
    },
    Join {
        #[serde(rename = "userId")]
        user_id: String,
        name: String,
    },
    Leave {
        #[serde(rename = "userId")]
        user_id: String,
        name: String,
    },
    Typing {
        #[serde(rename = "userId")]
        user_id: String,
    },
    System {
        seq: u64,
        data: serde_json::Value,
    },
    Error {
        code: String,
        message: String,
        #[serde(default)]
        id: Option<String>,
    },
    Pong,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserInfo {
    #[serde(rename = "userId")]
    pub user_id: String,
    pub name: String,
}

impl ServerFrame {
    /// The seq of a persisted event.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Chat { seq, .. } => *seq,
            Self::Name { seq, .. } | Self::System { seq, .. } => Some(*seq),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(b: &Bytes) -> ServerFrame {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn frames_round_trip() {
        let t = timestamp(SystemTime::UNIX_EPOCH);
        assert_eq!(t, "1970-01-01T00:00:00.000Z");
        let c = chat(7, "m1", "u\"1", "Ann", "<b>hi</b>", &t);
        assert_eq!(
            read(&c),
            ServerFrame::Chat {
                seq: Some(7),
                id: Some("m1".into()),
                user_id: "u\"1".into(),
                user_name: Some("Ann".into()),
                text: "<b>hi</b>".into(),
                time: Some(t.clone()),
            }
        );
        let data = parse_system_data(r#" { "a" : [1, 2] } "#).unwrap();
        let s = system(8, &data, &t);
        assert_eq!(
            std::str::from_utf8(&s).unwrap(),
            format!(r#"{{"type":"system","seq":8,"data":{{"a":[1,2]}},"time":"{t}"}}"#)
        );
        let h = history(&[c.clone(), s.clone()], Page { has_more: true, gap: false });
        match read(&h) {
            ServerFrame::History { messages, has_more, gap } => {
                assert_eq!(messages.len(), 2);
                assert_eq!(messages[1].seq(), Some(8));
                assert!(has_more && !gap);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            read(&history(&[], Page { has_more: false, gap: true }))
                == ServerFrame::History { messages: vec![], has_more: false, gap: true }
        );
    }

    #[test]
    fn system_data_must_be_an_object() {
        assert!(parse_system_data("[1]").is_err());
        assert!(parse_system_data("nope").is_err());
        assert!(parse_system_data("{}").is_ok());
    }
}
