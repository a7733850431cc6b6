//! Validated identifiers. Every room or user name that enters the system is
//! checked here once; Redis keys and routing use only these types.

use std::fmt;

/// Longest room name, in characters.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest user id, in characters.
pub const MAX_USER_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("room name must be 1-{MAX_ROOM_LEN} characters of [A-Za-z0-9._:-]")]
    InvalidRoom,
    #[error("user id must be 1-{MAX_USER_LEN} printable characters")]
    InvalidUser,
}

/// A room name: 1–128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ROOM_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok { Ok(Self(s.to_owned())) } else { Err(NameError::InvalidRoom) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user id: 1–128 characters, none of them control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let count = s.chars().count();
        if (1..=MAX_USER_LEN).contains(&count) && !s.chars().any(char::is_control) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::InvalidUser)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(RoomId::parse("lobby").is_ok());
        assert!(RoomId::parse("a.b_c:d-9").is_ok());
        assert!(RoomId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(RoomId::parse(""), Err(NameError::InvalidRoom));
        assert_eq!(RoomId::parse(&"x".repeat(129)), Err(NameError::InvalidRoom));
        assert_eq!(RoomId::parse("a b"), Err(NameError::InvalidRoom));
        assert_eq!(RoomId::parse("a/b"), Err(NameError::InvalidRoom));
        assert_eq!(RoomId::parse("é"), Err(NameError::InvalidRoom));
    }

    #[test]
    fn user_ids() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("Zoë 1").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::parse(&"é".repeat(128)).is_ok());
        assert!(UserId::parse(&"é".repeat(129)).is_err());
    }
}
