//! Room classes: a team's own room logic, written as a JavaScript class with
//! the Cloudflare Durable Object API, run in QuickJS.
//!
//! A class runs as an [`Instance`] per room: its own QuickJS runtime (heap
//! and CPU limits of its own), the Durable Object API of `prelude.js`, the
//! class's bundle, and the class object built with the room's stored values
//! and open sockets. The room's owner feeds it one event at a time — the
//! handshake (`fetch`), messages, closes, operator calls — and gets back what
//! the event did as [`Effect`]s, in order: sends, closes, accepted sockets,
//! attachments, storage writes. Storage lives in the instance (loaded whole
//! when it starts), so a handler never waits for the store; the owner makes
//! the writes durable, then lets the sends out (the output gate). A failed
//! write discards the instance; the next event builds it again from storage.
//!
//! Layout:
//! * [`spec`]: `--room-class PATTERN=FILE#Class`, and which rooms it names.
//! * [`bundle`]: a class's bundle, read and compiled once.
//! * `engine`: a room's QuickJS runtime and context, the prelude and the
//!   bundles loaded as bytecode compiled once per process.
//! * [`instance`]: one room's JavaScript instance and its events.
//! * [`effect`]: what an event did.
//! * [`pool`]: the threads instances run on, off the async runtime.
//! * `natives`: UTF-8, base64, random bytes and logging for the prelude.
//! * `prelude.js`: the Durable Object API in JavaScript, over a few natives.
// Three functions use unsafe, each explained where it is: copying bytes out
// of the engine (`natives::bytes_of`), loading bytecode this process compiled
// (`engine::load_compiled`), lowering the class threads' priority
// (`pool::lower_priority`).
#![deny(unsafe_code)]

pub mod bundle;
pub mod effect;
mod engine;
pub mod instance;
mod natives;
pub mod pool;
pub mod spec;

pub use bundle::{Bundle, BundleError};
pub use effect::{Effect, Payload};
pub use instance::{
    ClassError, HttpRequest, HttpResponse, Instance, Limits, Outcome, Restored, Stored,
};
pub use pool::{InstanceHandle, Pool, PoolError};
pub use spec::{ClassSpec, SpecError};

/// How an operator call to something that is not a public method of the
/// class is refused (the prelude's wording).
pub const NOT_A_METHOD: &str = "is not a public method of this room class";
