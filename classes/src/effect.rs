//! What one event of a room class did, in the order it did it.

/// A message to or from a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

/// Sockets are numbered by the room's owner; storage values are kept
/// encoded (`j` + JSON, or `b` + base64 for bytes) exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The same payload to these sockets (consecutive sends of one text
    /// are one effect).
    Send {
        sockets: Vec<u64>,
        payload: Payload,
    },
    Close {
        socket: u64,
        code: u16,
        reason: String,
    },
    /// The handshake's socket was accepted: with `acceptWebSocket` and
    /// these tags (it outlives the instance), or with `accept()` (it lives
    /// only as long as this instance).
    Accept {
        socket: u64,
        tags: Vec<String>,
        hibernatable: bool,
    },
    /// A socket's attachment (encoded JSON; None: cleared).
    Attach {
        socket: u64,
        value: Option<String>,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    DeleteAll,
    /// The room's alarm (`name` empty) or a named timer is set to fire at
    /// `at` (ms since the epoch), or deleted (None).
    Alarm {
        name: String,
        at: Option<u64>,
    },
}

impl Effect {
    /// Whether this is a storage write (the output gate waits for those).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Self::Put { .. } | Self::Delete { .. } | Self::DeleteAll | Self::Alarm { .. }
        )
    }
}
