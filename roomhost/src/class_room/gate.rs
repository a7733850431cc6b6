//! The output gate of a class room, with group commits: while one commit is
//! in flight, the next events run and their writes gather for the next
//! commit; what an event sends leaves once every write before it is
//! stored, in order. One round trip to the store carries the writes of as
//! many events as ran meanwhile.
//!
//! A commit that fails drops every output still held that came from the
//! class (its instance is discarded: later events saw the unstored writes):
//! sends and socket states vanish, a handshake the class accepted is
//! answered 503, a method call `unavailable`. Frames of the room itself
//! (`Attached`, `Moving`) still leave.
//!
//! At most [`MAX_HELD`] outputs wait; a room at the limit takes no command
//! until its commit returns.

use std::collections::VecDeque;

use rooms_proto::host::{HandshakeReply, host_frame};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::room::{GatewayId, RoomError};
use crate::store::{StorageWrite, StoreError};

/// Most outputs held behind commits; past it the room waits for its commit
/// before the next command.
pub const MAX_HELD: usize = 4096;

/// Something an event (or the room) sends.
pub(super) enum Output {
    /// A frame of the room itself: never dropped.
    Room(GatewayId, host_frame::Kind),
    /// A frame the class caused (send, close, socket state).
    Class(GatewayId, host_frame::Kind),
    /// The class's answer to a handshake.
    Handshake(GatewayId, HandshakeReply),
    /// A message ran (the gateway forgets it).
    Ran(GatewayId, u64),
    /// The result of a method call.
    Reply(oneshot::Sender<Result<String, RoomError>>, Result<String, RoomError>),
}

impl Output {
    /// What is left of it when the commit it waited for failed.
    pub(super) fn failed(self) -> Option<Self> {
        match self {
            Self::Room(..) => Some(self),
            Self::Class(..) | Self::Ran(..) => None,
            Self::Handshake(gateway, reply) => {
                let refusal = HandshakeReply {
                    conn: reply.conn,
                    status: 503,
                    headers: Vec::new(),
                    body: Some("room unavailable; retry".into()),
                };
                Some(Self::Handshake(gateway, refusal))
            }
            Self::Reply(reply, _) => {
                let error = RoomError::Unavailable("the room's writes were not stored".into());
                Some(Self::Reply(reply, Err(error)))
            }
        }
    }
}

/// A commit on its way to the store.
pub(super) type Commit = JoinHandle<Result<(), StoreError>>;

#[derive(Default)]
pub(super) struct Gate {
    /// The commit in flight, and the outputs waiting for it.
    inflight: Option<(Commit, VecDeque<Output>)>,
    /// Writes for the next commit.
    writes: Vec<StorageWrite>,
    /// Outputs since the last commit started; those from `barrier` on wait
    /// for `writes`, those before only for the commit in flight.
    held: VecDeque<Output>,
    barrier: Option<usize>,
}

impl Gate {
    /// Nothing in flight or held: an output can leave now.
    pub(super) fn is_open(&self) -> bool {
        self.inflight.is_none() && self.held.is_empty() && self.writes.is_empty()
    }

    pub(super) fn is_full(&self) -> bool {
        let inflight = self.inflight.as_ref().map_or(0, |(_, held)| held.len());
        inflight + self.held.len() >= MAX_HELD
    }

    pub(super) fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// An event's writes: what it outputs from now on waits for them.
    pub(super) fn write(&mut self, writes: Vec<StorageWrite>) {
        if writes.is_empty() {
            return;
        }
        self.barrier.get_or_insert(self.held.len());
        self.writes.extend(writes);
    }

    pub(super) fn hold(&mut self, output: Output) {
        self.held.push_back(output);
    }

    /// Starts the next commit if none is in flight: its writes, and the
    /// outputs that wait for them. Returns the outputs free to leave now.
    pub(super) fn start(
        &mut self,
        commit: impl FnOnce(Vec<StorageWrite>) -> Commit,
    ) -> VecDeque<Output> {
        if self.inflight.is_some() {
            return VecDeque::new();
        }
        let Some(barrier) = self.barrier.take() else {
            return std::mem::take(&mut self.held); // nothing to store first
        };
        let waiting = self.held.split_off(barrier);
        let free = std::mem::take(&mut self.held);
        let handle = commit(std::mem::take(&mut self.writes));
        self.inflight = Some((handle, waiting));
        free
    }

    /// Waits for the commit in flight (forever if there is none).
    pub(super) async fn committed(&mut self) -> Result<(), StoreError> {
        let Some((handle, _)) = &mut self.inflight else {
            return std::future::pending().await;
        };
        match handle.await {
            Ok(result) => result,
            Err(error) => Err(StoreError::Corrupt(format!("the commit task failed: {error}"))),
        }
    }

    /// The commit in flight is done: its outputs.
    pub(super) fn finish(&mut self) -> VecDeque<Output> {
        self.inflight.take().map(|(_, held)| held).unwrap_or_default()
    }

    /// The commit failed: every held output, as it is left (see
    /// [`Output::failed`]), and the writes are dropped.
    pub(super) fn fail(&mut self) -> Vec<Output> {
        self.writes.clear();
        self.barrier = None;
        let inflight = self.inflight.take().map(|(_, held)| held).unwrap_or_default();
        inflight.into_iter().chain(self.held.drain(..)).filter_map(Output::failed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rooms_proto::host::Attached;

    fn room(gateway: GatewayId) -> Output {
        Output::Room(gateway, host_frame::Kind::Attached(Attached {}))
    }

    fn gateways(outputs: impl IntoIterator<Item = Output>) -> Vec<GatewayId> {
        outputs
            .into_iter()
            .map(|o| match o {
                Output::Room(g, _) | Output::Class(g, _) | Output::Handshake(g, _) => g,
                Output::Ran(g, _) => g,
                Output::Reply(..) => 0,
            })
            .collect()
    }

    #[tokio::test]
    async fn outputs_wait_for_the_writes_before_them_and_gather_while_a_commit_flies() {
        let mut gate = Gate::default();
        let (release, released) = oneshot::channel::<()>();
        let commit = |_| {
            tokio::spawn(async move {
                let _ = released.await;
                Ok(())
            })
        };
        gate.hold(room(1)); // before any write: free
        gate.write(vec![StorageWrite::Delete("a".into())]);
        gate.hold(room(2));
        assert_eq!(gateways(gate.start(commit)), [1]);
        assert!(gate.in_flight() && !gate.is_open());
        gate.hold(room(3)); // waits for the commit in flight only
        gate.write(vec![StorageWrite::Delete("b".into())]);
        gate.hold(room(4)); // waits for the next commit
        assert!(gate.start(|_| unreachable!("one commit at a time")).is_empty());
        release.send(()).unwrap();
        gate.committed().await.unwrap();
        assert_eq!(gateways(gate.finish()), [2]);
        let next = gate.start(|writes| {
            assert_eq!(writes, [StorageWrite::Delete("b".into())]);
            tokio::spawn(async { Ok(()) })
        });
        assert_eq!(gateways(next), [3]);
        gate.committed().await.unwrap();
        assert_eq!(gateways(gate.finish()), [4]);
        assert!(gate.start(|_| unreachable!()).is_empty() && gate.is_open());
    }

    #[tokio::test]
    async fn a_failed_commit_keeps_the_rooms_frames_and_refuses_what_the_class_said() {
        let mut gate = Gate::default();
        gate.write(vec![StorageWrite::Delete("a".into())]);
        let (reply, answer) = oneshot::channel();
        gate.hold(Output::Reply(reply, Ok("1".into())));
        let accepted = HandshakeReply { conn: 7, status: 101, ..HandshakeReply::default() };
        gate.hold(Output::Handshake(2, accepted));
        gate.hold(Output::Ran(2, 9));
        gate.hold(room(3));
        let free = gate.start(|_| tokio::spawn(async { Err(StoreError::LeaseLost) }));
        assert!(free.is_empty());
        assert!(gate.committed().await.is_err());
        let left = gate.fail();
        assert_eq!(left.len(), 3, "the acknowledgement is dropped");
        for output in left {
            match output {
                Output::Reply(reply, result) => {
                    let _ = reply.send(result);
                }
                Output::Handshake(_, reply) => assert_eq!((reply.conn, reply.status), (7, 503)),
                Output::Room(gateway, _) => assert_eq!(gateway, 3),
                _ => panic!("a class output survived"),
            }
        }
        assert!(matches!(answer.await.unwrap(), Err(RoomError::Unavailable(_))));
        assert!(gate.is_open());
    }
}
