//! What every rooms server process shares, written once.
//!
//! Layout:
//! * [`directory`]: the generation-keyed directory of actors (a roomhost's
//!   rooms, a gateway's room links): find or start one, and forget it when
//!   it stops without forgetting its successor.
//! * [`http2`]: the HTTP/2 settings of the gRPC connections between
//!   gateways and roomhosts (windows, stream limits, keepalive pings).
//! * [`accept`]: the HTTP/1 accept loop (health, metrics, WebSocket upgrades).
//! * [`listen`]: listening sockets with an accept queue for reconnect storms.
//! * [`shutdown`]: SIGTERM / Ctrl-C, and the stop signal tasks watch.
//! * [`check`]: the `--check-config` flag.
//! * [`memory`]: giving the allocator's free pages back to the system.
//! * [`runtime`]: the process's tokio runtime, sized by `--worker-threads`.
// Two calls use unsafe, both into glibc's allocator (`memory`).
#![deny(unsafe_code)]

pub mod accept;
pub mod check;
pub mod directory;
pub mod http2;
pub mod listen;
pub mod memory;
pub mod runtime;
pub mod shutdown;

pub use directory::{Directory, Handle, Inbox, Slot};
pub use shutdown::{Stop, Stopping};
