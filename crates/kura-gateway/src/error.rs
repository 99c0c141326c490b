//! The gateway's errors and their one mapping to gRPC status (with
//! google.rpc rich details: `ErrorInfo` always, plus `BadRequest`,
//! `ResourceInfo` or `RetryInfo` where they help a client act).
//!
//! Messages carry UIDs, sizes, hashes and field names, never patient data.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Kura refusal.
pub const ERROR_DOMAIN: &str = "kura.v1";

/// Why a gateway call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed or the instance is not acceptable.
    /// `reason` is a stable UPPER_SNAKE code (e.g. `DICOM_TRUNCATED`).
    #[error("{message}")]
    InvalidArgument {
        field: &'static str,
        reason: String,
        message: String,
    },
    /// Same SOP Instance UID, different bytes.
    #[error(
        "instance {sop_instance_uid} is already stored with different bytes: stored blake3 {existing_blake3} (stored at {stored_at}), offered blake3 {offered_blake3}; the stored instance is unchanged"
    )]
    AlreadyExists {
        sop_instance_uid: String,
        existing_blake3: String,
        offered_blake3: String,
        /// RFC 3339, UTC.
        stored_at: String,
    },
    /// No such instance or study.
    #[error("{message}")]
    NotFound {
        resource_type: &'static str,
        resource_name: String,
        message: String,
    },
    /// Too few storage nodes, no metadata quorum: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Fewer than k good shards remain for a segment.
    #[error("{0}")]
    DataLoss(String),
    /// The call ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bug or an unexpected state; details are logged.
    #[error("{0}")]
    Internal(String),
    /// Refused in the cluster's current state (an operation that would
    /// lose protection); the message says what would be lost and what to do.
    #[error("{0}")]
    FailedPrecondition(String),
    /// This cluster cannot do that by itself.
    #[error("{0}")]
    Unimplemented(String),
    /// No credential, or one that proves no identity.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid identity without the role (or tenant) the call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// A configured limit is reached for now (streams in flight): retry
    /// after `retry_after`. `limit` is its configuration name.
    #[error("{message}")]
    ResourceExhausted {
        limit: &'static str,
        message: String,
        retry_after: Duration,
    },
}

impl GatewayError {
    pub fn invalid(
        field: &'static str,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        GatewayError::InvalidArgument {
            field,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            GatewayError::InvalidArgument { .. } => Code::InvalidArgument,
            GatewayError::AlreadyExists { .. } => Code::AlreadyExists,
            GatewayError::NotFound { .. } => Code::NotFound,
            GatewayError::Unavailable(_) => Code::Unavailable,
            GatewayError::DataLoss(_) => Code::DataLoss,
            GatewayError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            GatewayError::Internal(_) => Code::Internal,
            GatewayError::FailedPrecondition(_) => Code::FailedPrecondition,
            GatewayError::Unimplemented(_) => Code::Unimplemented,
            GatewayError::Unauthenticated(_) => Code::Unauthenticated,
            GatewayError::PermissionDenied(_) => Code::PermissionDenied,
            GatewayError::ResourceExhausted { .. } => Code::ResourceExhausted,
        }
    }

    /// The stable reason code put in `ErrorInfo.reason`.
    pub fn reason(&self) -> String {
        match self {
            GatewayError::InvalidArgument { reason, .. } => reason.clone(),
            GatewayError::AlreadyExists { .. } => "INSTANCE_EXISTS_WITH_OTHER_BYTES".into(),
            GatewayError::NotFound { resource_type, .. } => {
                format!("{}_NOT_FOUND", resource_type.to_ascii_uppercase())
            }
            GatewayError::Unavailable(_) => "CLUSTER_UNAVAILABLE".into(),
            GatewayError::DataLoss(_) => "TOO_FEW_GOOD_SHARDS".into(),
            GatewayError::DeadlineExceeded(_) => "DEADLINE_EXCEEDED".into(),
            GatewayError::Internal(_) => "INTERNAL".into(),
            GatewayError::FailedPrecondition(_) => "REFUSED_IN_THIS_STATE".into(),
            GatewayError::Unimplemented(_) => "UNIMPLEMENTED".into(),
            GatewayError::Unauthenticated(_) => "UNAUTHENTICATED".into(),
            GatewayError::PermissionDenied(_) => "PERMISSION_DENIED".into(),
            GatewayError::ResourceExhausted { .. } => "LIMIT_REACHED".into(),
        }
    }

    /// The gRPC status, with rich details.
    pub fn into_status(self) -> Status {
        let code = self.code();
        let message = self.to_string();
        let mut meta = HashMap::new();
        let mut details = ErrorDetails::new();
        match &self {
            GatewayError::InvalidArgument { field, .. } => {
                details.add_bad_request_violation(*field, message.clone());
            }
            GatewayError::AlreadyExists {
                sop_instance_uid,
                existing_blake3,
                offered_blake3,
                stored_at,
            } => {
                meta.insert("existing_blake3".into(), existing_blake3.clone());
                meta.insert("offered_blake3".into(), offered_blake3.clone());
                meta.insert("existing_stored_at".into(), stored_at.clone());
                details.set_resource_info(
                    "kura.v1.Instance",
                    sop_instance_uid.clone(),
                    "",
                    "already stored with different bytes",
                );
            }
            GatewayError::NotFound {
                resource_type,
                resource_name,
                ..
            } => {
                details.set_resource_info(
                    format!("kura.v1.{}", capitalise(resource_type)),
                    resource_name.clone(),
                    "",
                    "not found",
                );
            }
            GatewayError::Unavailable(_) => {
                details.set_retry_info(Some(Duration::from_secs(1)));
            }
            GatewayError::ResourceExhausted {
                limit, retry_after, ..
            } => {
                meta.insert("limit".into(), (*limit).to_string());
                details.set_retry_info(Some(*retry_after));
            }
            GatewayError::DataLoss(_)
            | GatewayError::DeadlineExceeded(_)
            | GatewayError::Internal(_)
            | GatewayError::FailedPrecondition(_)
            | GatewayError::Unimplemented(_)
            | GatewayError::Unauthenticated(_)
            | GatewayError::PermissionDenied(_) => {}
        }
        details.set_error_info(self.reason(), ERROR_DOMAIN, meta);
        Status::with_error_details(code, message, details)
    }
}

impl From<kura_proto::meta::UnexpectedAnswer> for GatewayError {
    fn from(e: kura_proto::meta::UnexpectedAnswer) -> Self {
        GatewayError::Internal(e.to_string())
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        e.into_status()
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-25T12:00:00.123Z`),
/// without a calendar dependency (civil-from-days, Howard Hinnant's method).
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_611_845_123), "2026-11-25T13:04:05.123Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn statuses_carry_rich_details() {
        let s = GatewayError::invalid(
            "chunk",
            "CHUNK_BEFORE_HEADER",
            "first message must be the header",
        )
        .into_status();
        assert_eq!(s.code(), Code::InvalidArgument);
        let d = s.get_error_details();
        let br = d.bad_request().expect("bad request");
        assert_eq!(br.field_violations[0].field, "chunk");
        assert_eq!(d.error_info().expect("info").reason, "CHUNK_BEFORE_HEADER");

        let s = GatewayError::AlreadyExists {
            sop_instance_uid: "1.2.3".into(),
            existing_blake3: "aa".into(),
            offered_blake3: "bb".into(),
            stored_at: rfc3339_ms(0),
        }
        .into_status();
        assert_eq!(s.code(), Code::AlreadyExists);
        assert!(s.message().contains("aa") && s.message().contains("bb"));
        let d = s.get_error_details();
        assert_eq!(d.resource_info().expect("resource").resource_name, "1.2.3");
        assert_eq!(
            d.error_info().expect("info").metadata["offered_blake3"],
            "bb"
        );

        let s = GatewayError::Unavailable("no quorum".into()).into_status();
        assert!(s.get_error_details().retry_info().is_some());
    }
}
