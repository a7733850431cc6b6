//! Frames a WebSocket client sends (JSON text), parsed and validated at the
//! edge into [`ClientFrame`]. Nothing past this module sees raw client JSON.

use serde::Deserialize;

/// Longest chat text, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest user name (after trimming), in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest client-chosen message id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Largest page of a `history` request.
pub const MAX_HISTORY_PAGE: u32 = 100;

/// A valid client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Set or change the user's name in this room (already trimmed).
    Name { name: String },
    /// A chat message; `id` is the client's own id, echoed back.
    Chat { text: String, id: Option<String> },
    /// An older page of history: events with seq < `before` (latest if None).
    History { before: Option<u64>, limit: u32 },
    /// Ephemeral "is typing" signal.
    Typing,
    /// A liveness check, answered `pong` by the gateway itself (browsers
    /// cannot see WebSocket pings, so this is how they detect a dead
    /// connection on a quiet room).
    Ping,
}

/// The codes of `error` frames (SPEC: client protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidMessage,
    TooLarge,
    RateLimited,
    Unavailable,
    Forbidden,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "invalid_message",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Forbidden => "forbidden",
        }
    }
}

/// Why a frame was refused; becomes an `error` frame, the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The refused request's client `id`, echoed in the `error` frame.
    pub id: Option<String>,
}

impl FrameError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::InvalidMessage, message: message.into(), id: None }
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::TooLarge, message: message.into(), id: None }
    }

    fn with_id(mut self, id: Option<&String>) -> Self {
        self.id = id.cloned();
        self
    }
}

/// The client `id` of a frame, read without validating the rest, so a
/// request refused before parsing (rate limit) can still be named. None
/// when absent, empty, too long or not JSON.
pub fn request_id(input: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(input)
        .ok()?
        .id
        .filter(|id| !id.is_empty() && id.chars().count() <= MAX_ID_CHARS)
}

/// The union of every field any accepted frame (or alias) carries.
#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    text: Option<String>,
    message: Option<String>,
    id: Option<String>,
    before: Option<u64>,
    limit: Option<u64>,
}

/// Parses one text frame. Never panics, whatever the input.
pub fn parse(input: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame = serde_json::from_str(input)
        .map_err(|e| FrameError::invalid(format!("not a valid frame: {e}")))?;
    match raw.kind.as_str() {
        // `join` is the alias used by blog-post clients.
        "name" | "join" => {
            let name = raw.name.ok_or_else(|| FrameError::invalid("`name` is required"))?;
            Ok(ClientFrame::Name { name: validate_name(&name)? })
        }
        // `message` and `chat` with a `message` field are aliases.
        "chat" | "message" => {
            let text = raw
                .text
                .or(raw.message)
                .ok_or_else(|| FrameError::invalid("`text` is required"))?;
            // An empty id is the same as none: the server makes one.
            let id = raw.id.filter(|id| !id.is_empty());
            if id.as_ref().is_some_and(|id| id.chars().count() > MAX_ID_CHARS) {
                return Err(FrameError::invalid(format!(
                    "`id` must be at most {MAX_ID_CHARS} characters"
                )));
            }
            validate_text(&text).map_err(|e| e.with_id(id.as_ref()))?;
            Ok(ClientFrame::Chat { text, id })
        }
        "history" => {
            let limit = raw.limit.unwrap_or(u64::from(MAX_HISTORY_PAGE));
            if limit == 0 || limit > u64::from(MAX_HISTORY_PAGE) {
                return Err(FrameError::invalid(format!("`limit` must be 1-{MAX_HISTORY_PAGE}")));
            }
            Ok(ClientFrame::History { before: raw.before, limit: limit as u32 })
        }
        "typing" => Ok(ClientFrame::Typing),
        "ping" => Ok(ClientFrame::Ping),
        other => Err(FrameError::invalid(format!("unknown type `{}`", truncate(other, 32)))),
    }
}

/// A name is trimmed, then must be 1–64 characters without control characters.
pub fn validate_name(name: &str) -> Result<String, FrameError> {
    let trimmed = name.trim();
    let count = trimmed.chars().count();
    if count == 0 {
        return Err(FrameError::invalid("`name` must not be empty"));
    }
    if count > MAX_NAME_CHARS {
        return Err(FrameError::too_large(format!(
            "`name` is longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FrameError::invalid("`name` must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

/// Chat text must hold a non-blank character and at most 4096 characters.
pub fn validate_text(text: &str) -> Result<(), FrameError> {
    if text.trim().is_empty() {
        return Err(FrameError::invalid("`text` must not be empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(FrameError::too_large(format!(
            "`text` is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    Ok(())
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refusals_of_chats_name_their_id() {
        let long = format!(r#"{{"type":"chat","text":"{}","id":"c9"}}"#, "x".repeat(4097));
        let error = parse(&long).unwrap_err();
        assert_eq!((error.code, error.id.as_deref()), (ErrorCode::TooLarge, Some("c9")));
        assert_eq!(request_id(r#"{"type":"chat","text":"hi","id":"c3"}"#).as_deref(), Some("c3"));
        assert_eq!(request_id(r#"{"type":"chat","id":""}"#), None);
        assert_eq!(request_id("{broken"), None);
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
    }

    #[test]
    fn accepts_each_frame_and_alias() {
        assert_eq!(
            parse(r#"{"type":"name","name":"  Ann "}"#),
            Ok(ClientFrame::Name { name: "Ann".into() })
        );
        assert_eq!(
            parse(r#"{"type":"join","name":"Bo"}"#),
            Ok(ClientFrame::Name { name: "Bo".into() })
        );
        assert_eq!(
            parse(r#"{"type":"chat","text":"hi","id":"c1"}"#),
            Ok(ClientFrame::Chat { text: "hi".into(), id: Some("c1".into()) })
        );
        assert_eq!(
            parse(r#"{"type":"message","message":"yo"}"#),
            Ok(ClientFrame::Chat { text: "yo".into(), id: None })
        );
        assert_eq!(
            parse(r#"{"type":"chat","message":"yo"}"#),
            Ok(ClientFrame::Chat { text: "yo".into(), id: None })
        );
        assert_eq!(
            parse(r#"{"type":"history","before":10,"limit":5}"#),
            Ok(ClientFrame::History { before: Some(10), limit: 5 })
        );
        assert_eq!(parse(r#"{"type":"typing"}"#), Ok(ClientFrame::Typing));
    }

    #[test]
    fn refuses_bad_frames_with_the_right_code() {
        let code = |s: &str| parse(s).unwrap_err().code;
        assert_eq!(code("{"), ErrorCode::InvalidMessage);
        assert_eq!(code("[]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"chat","text":""}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"chat","text":"   "}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"chat","text":5}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"name","name":" "}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"history","limit":101}"#), ErrorCode::InvalidMessage);
        let long_text = format!(r#"{{"type":"chat","text":"{}"}}"#, "x".repeat(4097));
        assert_eq!(code(&long_text), ErrorCode::TooLarge);
        let long_name = format!(r#"{{"type":"name","name":"{}"}}"#, "é".repeat(65));
        assert_eq!(code(&long_name), ErrorCode::TooLarge);
        let max_text = format!(r#"{{"type":"chat","text":"{}"}}"#, "é".repeat(4096));
        assert!(parse(&max_text).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".*") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_json_like_input(
            kind in prop::sample::select(vec!["name", "join", "chat", "message", "history", "typing", "x"]),
            field in prop::sample::select(vec!["name", "text", "message", "id", "before", "limit"]),
            value in prop_oneof![
                ".*".prop_map(serde_json::Value::String),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(serde_json::Value::from),
                Just(serde_json::Value::Null),
            ],
        ) {
            let frame = serde_json::json!({ "type": kind, field: value }).to_string();
            if let Ok(ClientFrame::Chat { text, .. }) = parse(&frame) {
                prop_assert!(validate_text(&text).is_ok());
            }
        }
    }
}
