//! The erasure profile for new writes: RS(k, m) over segments of a size, as
//! [`kura_erasure::EcParams`]. A type alias rather than a newtype so the
//! manifest, the config and the encoder all speak the same type; the few
//! questions placement asks of it live in [`ProfileExt`].

use kura_erasure::EcParams;

use crate::error::PlacementError;

/// The erasure profile for new writes.
pub type Profile = EcParams;

/// What placement needs to know about a profile.
pub trait ProfileExt {
    /// Data shards per segment.
    fn k(&self) -> usize;
    /// Parity shards per segment: how many shards of a segment may be lost.
    fn m(&self) -> usize;
    /// Shards per segment, k + m.
    fn n(&self) -> usize;
    /// Most shards of one segment one site may hold in a map of `sites`
    /// sites: m when there are several (so losing any one site leaves k),
    /// all n in a single-site map (which cannot survive a site loss at all).
    fn site_cap(&self, sites: usize) -> usize;
    /// The erasure crate's limits, as a placement error.
    fn check(&self) -> Result<(), PlacementError>;
}

impl ProfileExt for EcParams {
    fn k(&self) -> usize {
        usize::from(self.data_shards)
    }

    fn m(&self) -> usize {
        usize::from(self.parity_shards)
    }

    fn n(&self) -> usize {
        self.total_shards()
    }

    fn site_cap(&self, sites: usize) -> usize {
        if sites >= 2 { self.m() } else { self.n() }
    }

    fn check(&self) -> Result<(), PlacementError> {
        self.validate().map_err(|e| PlacementError::InvalidProfile {
            profile: self.to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_caps() {
        let p = Profile::new(5, 4);
        assert_eq!((p.k(), p.m(), p.n()), (5, 4, 9));
        assert_eq!(p.site_cap(1), 9);
        assert_eq!(p.site_cap(3), 4);
        p.check().unwrap();
        let err = Profile::new(0, 4).check().unwrap_err();
        assert!(
            matches!(err, PlacementError::InvalidProfile { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("invalid erasure profile RS(0,4): ")
        );
    }
}
