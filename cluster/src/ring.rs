//! The consistent-hash ring: each member is placed at [`VNODES_PER_MEMBER`]
//! points so rooms spread evenly, and adding or removing a member moves only
//! the rooms that member gains or loses.

use hashring::HashRing;
use rooms_proto::RoomId;

/// Virtual nodes per member. 160 keeps the busiest member within ~15% of the
/// mean with a handful of members.
pub const VNODES_PER_MEMBER: u32 = 160;

/// A room name as the ring hashes it.
struct RingKey<'a>(&'a str);

impl std::hash::Hash for RingKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// An immutable ring over a set of member addresses (`HOST:PORT`), with a
/// version that increases on every membership change.
#[derive(Clone)]
pub struct Ring {
    members: Vec<String>,
    ring: HashRing<VNodeKey>,
    version: u64,
}

/// What the ring stores: hashed by address and replica only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VNodeKey {
    member: usize,
    address: String,
    replica: u32,
}

impl std::hash::Hash for VNodeKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.address.hash(state);
        self.replica.hash(state);
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .field("version", &self.version)
            .finish()
    }
}

impl Ring {
    /// Builds a ring; members are de-duplicated and sorted.
    pub fn new(members: impl IntoIterator<Item = String>, version: u64) -> Self {
        let mut members: Vec<String> = members.into_iter().collect();
        members.sort();
        members.dedup();
        // One sort for every point (`add` sorts the ring after each one).
        let mut ring = HashRing::new();
        ring.batch_add(
            members
                .iter()
                .enumerate()
                .flat_map(|(member, address)| {
                    (0..VNODES_PER_MEMBER).map(move |replica| VNodeKey {
                        member,
                        address: address.clone(),
                        replica,
                    })
                })
                .collect(),
        );
        Self { members, ring, version }
    }

    /// The member that should own `room`, or None for an empty ring.
    pub fn owner(&self, room: &RoomId) -> Option<&str> {
        self.ring.get(&RingKey(room.as_str())).map(|v| self.members[v.member].as_str())
    }

    /// The member that owns `room` once the members in `avoid` are gone:
    /// this ring's own answer unless it names one of them (then a ring of
    /// the others is built, which is rare: a member unreachable or leaving).
    pub fn owner_without(&self, room: &RoomId, avoid: &[String]) -> Option<String> {
        let owner = self.owner(room)?;
        if !avoid.iter().any(|a| a == owner) {
            return Some(owner.to_owned());
        }
        let others = self.members.iter().filter(|m| !avoid.contains(m)).cloned();
        Ring::new(others, self.version).owner(room).map(str::to_owned)
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn contains(&self, member: &str) -> bool {
        self.members.binary_search_by(|m| m.as_str().cmp(member)).is_ok()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:50051")).collect()
    }

    fn rooms(n: usize) -> Vec<RoomId> {
        (0..n).map(|i| RoomId::parse(&format!("room-{i}")).unwrap()).collect()
    }

    #[test]
    fn owner_without_is_the_owner_in_a_ring_of_the_others() {
        let ring = Ring::new(members(4), 1);
        for avoid in [vec![], vec![members(4)[1].clone()], members(4)[..2].to_vec(), members(4)] {
            let others = members(4).into_iter().filter(|m| !avoid.contains(m));
            let smaller = Ring::new(others, 1);
            for room in rooms(2_000) {
                let expected = smaller.owner(&room).map(str::to_owned);
                assert_eq!(ring.owner_without(&room, &avoid), expected, "avoiding {avoid:?}");
            }
        }
    }

    #[test]
    fn same_members_same_placement_in_any_order() {
        let a = Ring::new(members(3), 1);
        let mut reversed = members(3);
        reversed.reverse();
        let b = Ring::new(reversed, 2);
        for room in rooms(500) {
            assert_eq!(a.owner(&room), b.owner(&room));
        }
    }

    #[test]
    fn balanced_across_members() {
        let ring = Ring::new(members(4), 1);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let all = rooms(20_000);
        for room in &all {
            *counts.entry(ring.owner(room).unwrap()).or_default() += 1;
        }
        let mean = all.len() as f64 / 4.0;
        for (member, count) in counts {
            let skew = (count as f64 - mean).abs() / mean;
            assert!(skew < 0.25, "{member} has {count} rooms, mean {mean}");
        }
    }

    #[test]
    fn empty_ring_has_no_owner() {
        assert_eq!(Ring::new(Vec::new(), 0).owner(&rooms(1)[0]), None);
    }

    proptest! {
        #[test]
        fn adding_a_member_moves_only_rooms_to_it(n in 1usize..6, extra in 0u8..255) {
            let before = Ring::new(members(n), 1);
            let mut grown = members(n);
            let newcomer = format!("10.1.0.{extra}:50051");
            grown.push(newcomer.clone());
            let after = Ring::new(grown, 2);
            let all = rooms(2_000);
            let mut moved = 0;
            for room in &all {
                let (old, new) = (before.owner(room).unwrap(), after.owner(room).unwrap());
                if old != new {
                    prop_assert_eq!(new, newcomer.as_str());
                    moved += 1;
                }
            }
            // The newcomer takes roughly its fair share, not more.
            let fair = all.len() / (n + 1);
            prop_assert!(moved < fair * 2, "moved {} of {}, fair {}", moved, all.len(), fair);
        }

        #[test]
        fn removing_a_member_moves_only_its_rooms(n in 2usize..6, gone in 0usize..6) {
            let gone = gone % n;
            let before = Ring::new(members(n), 1);
            let mut shrunk = members(n);
            let removed = shrunk.remove(gone);
            let after = Ring::new(shrunk, 2);
            for room in rooms(2_000) {
                let (old, new) = (before.owner(&room).unwrap(), after.owner(&room).unwrap());
                if old != removed {
                    prop_assert_eq!(old, new);
                }
            }
        }
    }
}
