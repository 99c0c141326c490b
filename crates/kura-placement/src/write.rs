//! The write rule: when a segment's shard writes are enough to acknowledge
//! a store, and how long the slower ones get after that.
//!
//! A segment is stored once k + 1 of its shards are durable (k when the
//! profile has no parity): readable, and able to survive one more loss
//! while repair places the rest. Shards still unanswered at that point get
//! a *straggler grace*, then count as unplaced (the instance is stored
//! under-protected and repair places them): a node that holds its
//! connections but never answers must not hold every store up for a whole
//! call timeout.

use std::time::Duration;

use kura_erasure::EcParams;

/// The shortest grace stragglers get once the quorum is durable.
pub const STRAGGLER_GRACE_MIN: Duration = Duration::from_millis(300);

/// How many of a segment's shards must be durable before it counts as
/// written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteQuorum {
    /// Shards in the segment (k + m).
    pub total: usize,
    /// Durable shards needed: k + 1, or k when m is 0.
    pub needed: usize,
}

/// Too few shards of a segment were written: nothing may be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "only {placed} of {total} shards of the segment could be written (at least {needed} must be)"
)]
pub struct WriteShort {
    pub placed: usize,
    pub needed: usize,
    pub total: usize,
}

impl WriteQuorum {
    pub fn of(ec: EcParams) -> WriteQuorum {
        let k = usize::from(ec.data_shards);
        WriteQuorum {
            total: ec.total_shards(),
            needed: k + usize::from(ec.parity_shards > 0),
        }
    }

    /// `durable` shards are enough to acknowledge the segment.
    pub fn met(&self, durable: usize) -> bool {
        durable >= self.needed
    }

    /// The grace the unanswered shards get once the quorum is durable:
    /// three times what the quorum took (a loaded but healthy node keeps
    /// up), at least [`STRAGGLER_GRACE_MIN`], at most `configured`. After a
    /// stall (the writes were already re-sent elsewhere once), only the
    /// minimum: the stragglers had their time.
    pub fn straggler_grace(
        &self,
        quorum_took: Duration,
        after_stall: bool,
        configured: Duration,
    ) -> Duration {
        if after_stall {
            STRAGGLER_GRACE_MIN
        } else {
            quorum_took
                .saturating_mul(3)
                .max(STRAGGLER_GRACE_MIN)
                .min(configured)
        }
    }

    /// The verdict once the writes are over: `placed` durable shards.
    pub fn check(&self, placed: usize) -> Result<(), WriteShort> {
        if self.met(placed) {
            Ok(())
        } else {
            Err(WriteShort {
                placed,
                needed: self.needed,
                total: self.total,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testutil::rs;

    #[test]
    fn parity_buys_one_shard_of_margin_at_acknowledgement() {
        assert_eq!(
            WriteQuorum::of(rs(5, 4)),
            WriteQuorum {
                total: 9,
                needed: 6
            }
        );
        assert_eq!(WriteQuorum::of(rs(3, 0)).needed, 3);
        let q = WriteQuorum::of(rs(2, 1));
        assert_eq!(
            q.check(2),
            Err(WriteShort {
                placed: 2,
                needed: 3,
                total: 3
            })
        );
        assert_eq!(q.check(3), Ok(()));
    }

    proptest! {
        #[test]
        fn the_quorum_survives_one_loss_and_the_grace_stays_in_bounds(
            k in 1u8..=16,
            m in 0u8..=8,
            took_ms in 0u64..100_000,
            configured_ms in 0u64..60_000,
            after_stall: bool,
        ) {
            let q = WriteQuorum::of(rs(k, m));
            prop_assert!(q.needed <= q.total);
            // Readable at acknowledgement, and after one more loss when
            // there is parity to lose.
            prop_assert!(q.needed >= usize::from(k));
            if m > 0 {
                prop_assert!(q.needed > usize::from(k));
            }
            for placed in 0..=q.total {
                prop_assert_eq!(q.check(placed).is_ok(), q.met(placed));
                prop_assert_eq!(q.met(placed), q.met(placed.saturating_sub(1)) || placed == q.needed);
            }
            let configured = Duration::from_millis(configured_ms);
            let grace = q.straggler_grace(Duration::from_millis(took_ms), after_stall, configured);
            if after_stall {
                prop_assert_eq!(grace, STRAGGLER_GRACE_MIN);
            } else {
                prop_assert!(grace <= configured);
                prop_assert!(grace >= STRAGGLER_GRACE_MIN.min(configured));
                prop_assert!(grace <= Duration::from_millis(took_ms * 3).max(STRAGGLER_GRACE_MIN));
            }
        }
    }
}
