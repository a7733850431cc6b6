//! Which roomhost serves which room.
//!
//! Layout:
//! * [`membership`]: where the list of roomhosts comes from (`static:`, `file:`,
//!   `dns:`), watched for changes.
//! * [`ring`]: the consistent-hash ring over those members; gateways and
//!   roomhosts derive the same ring from the same members.
#![forbid(unsafe_code)]

pub mod membership;
pub mod ring;

pub use membership::{MembershipError, MembershipSource, MembershipWatch};
pub use ring::Ring;
