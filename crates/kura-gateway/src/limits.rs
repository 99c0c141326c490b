//! Limits on every input: each a named, configurable value with its unit
//! (`[limits]` in kura.toml), each refusal naming the limit.
//!
//! Streams in flight are admitted per caller identity and per gateway:
//! a stream beyond either gets RESOURCE_EXHAUSTED with `RetryInfo` at once,
//! without touching the metadata cluster or a storage node, so a gateway
//! under many times its limit keeps answering health checks and admits
//! work again as the running streams end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::error::GatewayError;

/// What a gateway accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The identifying attributes must lie within this many first bytes of
    /// an instance (bytes).
    pub header_bytes: usize,
    /// Largest data chunk of one Store message (bytes); the gRPC message
    /// limit is this plus 64 KiB of framing.
    pub chunk_bytes: usize,
    /// Largest instance (bytes).
    pub instance_bytes: u64,
    /// Store, Retrieve and ListStudy streams one caller identity (a client
    /// certificate or token) may run at once.
    pub streams_per_identity: usize,
    /// Those streams the whole gateway runs at once.
    pub streams_per_gateway: usize,
    /// Most entries one page of an Admin listing may ask for (entries).
    pub page_entries: u32,
    /// Deepest sequence nesting in an instance (levels, at most 64).
    pub dicom_nesting_depth: u32,
    /// Most data elements in an instance (elements).
    pub dicom_elements: u64,
}

/// Framing allowed beyond `chunk_bytes` in one gRPC message.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes: 8 * 1024 * 1024,
            chunk_bytes: 4 * 1024 * 1024,
            instance_bytes: 8 * 1024 * 1024 * 1024,
            streams_per_identity: 64,
            streams_per_gateway: 1024,
            page_entries: 1000,
            dicom_nesting_depth: kura_dicom::NESTING_DEPTH_MAX,
            dicom_elements: kura_dicom::ELEMENTS_MAX,
        }
    }
}

impl Limits {
    /// The largest gRPC message the gateway decodes.
    pub fn message_bytes(&self) -> usize {
        self.chunk_bytes.saturating_add(MESSAGE_OVERHEAD_BYTES)
    }

    /// The DICOM parser's share.
    pub fn parse(&self) -> kura_dicom::ParseLimits {
        kura_dicom::ParseLimits {
            nesting_depth: self.dicom_nesting_depth,
            elements: self.dicom_elements,
        }
    }

    /// Checks the values make sense; names the first that does not.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("header_bytes", self.header_bytes as u64),
            ("chunk_bytes", self.chunk_bytes as u64),
            ("instance_bytes", self.instance_bytes),
            ("streams_per_identity", self.streams_per_identity as u64),
            ("streams_per_gateway", self.streams_per_gateway as u64),
            ("page_entries", u64::from(self.page_entries)),
            ("dicom_nesting_depth", u64::from(self.dicom_nesting_depth)),
            ("dicom_elements", self.dicom_elements),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limit {name} must be at least 1"));
        }
        if self.dicom_nesting_depth > kura_dicom::NESTING_DEPTH_MAX {
            return Err(format!(
                "limit dicom_nesting_depth is at most {} levels (the parser recurses), not {}",
                kura_dicom::NESTING_DEPTH_MAX,
                self.dicom_nesting_depth
            ));
        }
        if self.chunk_bytes > 64 * 1024 * 1024 {
            return Err(format!(
                "limit chunk_bytes is at most 64 MiB, not {} bytes",
                self.chunk_bytes
            ));
        }
        Ok(())
    }
}

/// How long a refused caller is asked to wait before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Admission of streams against `streams_per_identity` and
/// `streams_per_gateway`.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_identity: HashMap<String, usize>,
}

/// A stream admitted: its slot is given back when this is dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    identity: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_identity.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_identity.remove(&self.identity);
            }
        }
        metrics::gauge!("kura_gateway_streams_in_flight").set(c.total as f64);
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            state: Mutex::new(Counts::default()),
        })
    }

    /// Admits one stream of `identity` (`rpc` names it in the refusal), or
    /// refuses it with RESOURCE_EXHAUSTED naming the limit reached.
    pub fn admit(self: &Arc<Self>, identity: &str, rpc: &str) -> Result<Admitted, GatewayError> {
        let mut c = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = c.per_identity.get(identity).copied().unwrap_or(0);
        let refused = if c.total >= self.limits.streams_per_gateway {
            Some((
                "streams_per_gateway",
                self.limits.streams_per_gateway,
                "this gateway runs",
            ))
        } else if mine >= self.limits.streams_per_identity {
            Some((
                "streams_per_identity",
                self.limits.streams_per_identity,
                "this caller runs",
            ))
        } else {
            None
        };
        if let Some((limit, max, who)) = refused {
            metrics::counter!("kura_gateway_admission_refused_total", "limit" => limit)
                .increment(1);
            return Err(GatewayError::ResourceExhausted {
                limit,
                message: format!(
                    "{rpc} refused: {who} {max} streams already (limit {limit}: {max} streams); retry in {}s",
                    RETRY_AFTER.as_secs()
                ),
                retry_after: RETRY_AFTER,
            });
        }
        c.total += 1;
        *c.per_identity.entry(identity.to_string()).or_default() += 1;
        metrics::gauge!("kura_gateway_streams_in_flight").set(c.total as f64);
        Ok(Admitted {
            admission: Arc::clone(self),
            identity: identity.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_per_identity_and_gateway_and_gives_slots_back() {
        let a = Admission::new(Limits {
            streams_per_identity: 2,
            streams_per_gateway: 3,
            ..Limits::default()
        });
        let x1 = a.admit("x", "Store").expect("x 1");
        let x2 = a.admit("x", "Store").expect("x 2");
        let e = a.admit("x", "Retrieve").expect_err("x 3");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.to_string()
                .contains("limit streams_per_identity: 2 streams"),
            "{e}"
        );
        let y1 = a.admit("y", "Store").expect("y 1");
        let e = a.admit("z", "Store").expect_err("gateway full");
        assert!(
            e.to_string().contains("limit streams_per_gateway: 3"),
            "{e}"
        );
        let status = e.into_status();
        let details = tonic_types::StatusExt::get_error_details(&status);
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
        drop(x1);
        let z1 = a.admit("z", "Store").expect("a slot came back");
        drop((x2, y1, z1));
        assert_eq!(
            a.state.lock().unwrap_or_else(PoisonError::into_inner).total,
            0
        );
        assert!(
            a.state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .per_identity
                .is_empty()
        );
    }

    #[test]
    fn limits_are_checked() {
        Limits::default().validate().expect("defaults");
        let e = Limits {
            streams_per_gateway: 0,
            ..Limits::default()
        }
        .validate()
        .expect_err("zero");
        assert!(e.contains("streams_per_gateway"), "{e}");
        let e = Limits {
            dicom_nesting_depth: 65,
            ..Limits::default()
        }
        .validate()
        .expect_err("too deep");
        assert!(e.contains("dicom_nesting_depth"), "{e}");
    }
}
