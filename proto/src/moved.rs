//! "The room moved": one [`Moved`] message, whether it ends a room stream
//! or answers a unary call. A unary call carries it as a
//! `FAILED_PRECONDITION` status with the encoded message in its
//! [`MOVED_METADATA`] metadata.

use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::host::Moved;

/// The metadata key of the [`Moved`] a status carries.
pub const MOVED_METADATA: &str = "rooms-moved-bin";

impl Moved {
    /// Served by the roomhost at `address`.
    pub fn to(address: impl Into<String>) -> Self {
        Self { address: Some(address.into()) }
    }

    /// Not served here, and this roomhost does not know where: ask the ring
    /// without it.
    pub fn unknown() -> Self {
        Self { address: None }
    }

    /// The status a unary call answers with.
    pub fn into_status(self) -> Status {
        let message = match &self.address {
            Some(address) => format!("room moved to {address}"),
            None => "room moved; its owner is unknown".to_owned(),
        };
        let mut status = Status::failed_precondition(message);
        let encoded = MetadataValue::from_bytes(&self.encode_to_vec());
        status.metadata_mut().insert_bin(MOVED_METADATA, encoded);
        status
    }

    /// The move a status reports, if it reports one.
    pub fn from_status(status: &Status) -> Option<Self> {
        if status.code() != Code::FailedPrecondition {
            return None;
        }
        let encoded = status.metadata().get_bin(MOVED_METADATA)?.to_bytes().ok()?;
        Self::decode(encoded).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_survives_a_status_round_trip_and_other_statuses_are_not_moves() {
        for moved in [Moved::to("10.0.0.7:7100"), Moved::unknown()] {
            assert_eq!(Moved::from_status(&moved.clone().into_status()), Some(moved));
        }
        assert_eq!(Moved::from_status(&Status::failed_precondition("moved:x")), None);
        assert_eq!(Moved::from_status(&Status::unavailable("down")), None);
    }
}
