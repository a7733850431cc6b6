//! Which rooms run which class: `--room-class 'game-*=/etc/rooms/game.js#GameRoom'`.
//! A pattern is a room name with `*` matching any run of characters; the
//! first spec whose pattern matches a room names its class, and rooms that
//! match none are chat rooms.

use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    pub pattern: String,
    pub path: PathBuf,
    /// The exported class; `default` for a default export.
    pub class: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("expected PATTERN=FILE#Class, e.g. 'game-*=/etc/rooms/game.js#GameRoom'")]
    Shape,
    #[error("the room pattern is empty")]
    EmptyPattern,
    #[error("the class name `{0}` is not a JavaScript identifier")]
    ClassName(String),
}

impl FromStr for ClassSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let (pattern, target) = text.split_once('=').ok_or(SpecError::Shape)?;
        let (path, class) = target.rsplit_once('#').ok_or(SpecError::Shape)?;
        if pattern.is_empty() {
            return Err(SpecError::EmptyPattern);
        }
        if path.is_empty() {
            return Err(SpecError::Shape);
        }
        let identifier =
            class.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && class.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$');
        if !identifier {
            return Err(SpecError::ClassName(class.to_owned()));
        }
        Ok(Self { pattern: pattern.to_owned(), path: path.into(), class: class.to_owned() })
    }
}

impl ClassSpec {
    /// Whether `room` matches this spec's pattern.
    pub fn matches(&self, room: &str) -> bool {
        glob(self.pattern.as_bytes(), room.as_bytes())
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_patterns_match_room_names() {
        let spec: ClassSpec = "game-*=/etc/rooms/game.js#GameRoom".parse().unwrap();
        assert_eq!(spec.path, PathBuf::from("/etc/rooms/game.js"));
        assert_eq!(spec.class, "GameRoom");
        assert!(spec.matches("game-1") && spec.matches("game-"));
        assert!(!spec.matches("lobby") && !spec.matches("agame-1"));
        let all: ClassSpec = "*=a.js#A".parse().unwrap();
        assert!(all.matches("") && all.matches("anything"));
        let mid: ClassSpec = "a*b*c=a.js#A".parse().unwrap();
        assert!(mid.matches("abc") && mid.matches("a-b-c") && !mid.matches("a-c-b"));
        assert_eq!("nope".parse::<ClassSpec>(), Err(SpecError::Shape));
        assert_eq!("x=a.js#1A".parse::<ClassSpec>(), Err(SpecError::ClassName("1A".into())));
        assert_eq!("=a.js#A".parse::<ClassSpec>(), Err(SpecError::EmptyPattern));
    }
}
