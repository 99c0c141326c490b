//! Where Kura's shards live, and the records that say so.
//!
//! This crate is pure: no I/O, no async, no clock. It owns the data model the
//! metadata cluster replicates (the [`ClusterMap`] and one [`Manifest`] per
//! stored instance) and the algorithms that *decide* what the I/O crates then
//! *do*:
//!
//! - [`place_segment`] / [`Placer`]: which node holds each shard of a segment
//!   (deterministic rendezvous hashing, one shard per node, a per-site cap so
//!   a whole site can be lost; degraded placement when a site is down).
//! - [`check_layout`] / [`tolerance`]: whether a cluster map can hold a profile
//!   at all, and what it survives ("one site + 1 node").
//! - [`read_plan`]: which holders a reader asks first (data shards, same site).
//! - [`read_verdict`]: whether a read that got too few shards met lost data
//!   (DATA_LOSS) or only holders out of reach (UNAVAILABLE), from typed
//!   [`ShardFault`]s.
//! - [`WriteQuorum`]: when a segment's shard writes are enough to
//!   acknowledge, and how long the slower ones get after that.
//! - [`repair_plan`]: which shards to rebuild or move, and onto which nodes;
//!   [`damage_action`]: what to do about a copy a storage node reported
//!   damaged.
//!
//! Everything here fails only on bad input, with a [`PlacementError`] that
//! says why and what would fix it.

mod error;
mod hex;
mod layout;
mod manifest;
mod map;
mod placement;
mod plan;
mod profile;
mod repair;
mod score;
mod survival;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
mod write;

pub use error::PlacementError;
pub use layout::{Tolerance, check_layout, tolerance};
pub use manifest::{
    MANIFEST_FORMAT_VERSION, Manifest, Protection, Sealing, SegmentManifest, ShardLocation,
};
pub use map::{ClusterMap, NAME_BYTES_MAX, NODE_FULL_PERCENT, NodeId, NodeInfo, NodeState, Site};
pub use placement::{Placement, Placer, place_segment, protection_of};
pub use plan::{ReadPlan, ReadVerdict, ShardFault, read_plan, read_verdict};
pub use profile::{Profile, ProfileExt};
pub use repair::{
    DamageAction, DamagedCopy, RepairPlan, RepairReason, SegmentRepair, ShardRepair, damage_action,
    repair_plan,
};
pub use survival::{BadShards, Survival, critical_sites, readable_now, readable_without, survival};
pub use write::{STRAGGLER_GRACE_MIN, WriteQuorum, WriteShort};
