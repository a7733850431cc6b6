//! The contracts of `rooms`, in one place.
//!
//! Layout:
//! * [`admin`] and [`host`]: generated gRPC code for the operator API
//!   (`rooms.v1.Admin`) and the gateway <-> roomhost room stream.
//! * [`names`]: validated identifiers (`RoomId`, `UserId`).
//! * [`client`]: frames a WebSocket client sends, parsed and validated at the edge.
//! * [`server`]: frames the server sends, serialized once and shared as bytes.
//! * [`codec`]: the gRPC codec (small per-stream buffers).
//! * [`moved`]: how a roomhost says a room is served elsewhere.
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod moved;
pub mod names;
pub mod server;

/// Generated code, nested as the protobuf packages are.
pub mod rooms {
    pub mod v1 {
        tonic::include_proto!("rooms.v1");
    }
    pub mod host {
        pub mod v1 {
            tonic::include_proto!("rooms.host.v1");
        }
    }
}

/// `rooms.host.v1`: the gateway <-> roomhost contract.
pub use rooms::host::v1 as host;
/// `rooms.v1`: the operator API.
pub use rooms::v1 as admin;

pub use names::{NameError, RoomId, UserId};
