//! Kura's gRPC API: the code generated from `proto/` (the public `kura.v1`
//! package and the internal services), the domain types the internal
//! services carry, and the thin clients every role uses to reach the others
//! (roles never link each other; they talk through this crate).

pub mod audit;
pub mod codec;
pub mod local;
pub mod meta;
pub mod meta_client;
pub mod net;
pub mod shards_client;

/// The public API, package `kura.v1`.
#[allow(clippy::large_enum_variant)] // generated: oneof of header and chunk
pub mod v1 {
    tonic::include_proto!("kura.v1");

    impl StoreRequest {
        /// The first message of a Store: the tenant (empty: the caller's)
        /// and, when known, the instance's size.
        pub fn header(tenant: impl Into<String>, size: Option<u64>) -> Self {
            StoreRequest {
                msg: Some(store_request::Msg::Header(StoreHeader {
                    tenant: tenant.into(),
                    expected_blake3: None,
                    size,
                })),
            }
        }

        /// A message carrying the next bytes of the instance.
        pub fn chunk(bytes: bytes::Bytes) -> Self {
            StoreRequest {
                msg: Some(store_request::Msg::Chunk(bytes)),
            }
        }

        /// A whole Store call: the header with the size, then `bytes` in
        /// slices of `chunk` bytes (no copy).
        pub fn messages(tenant: impl Into<String>, bytes: bytes::Bytes, chunk: usize) -> Vec<Self> {
            let chunk = chunk.max(1);
            let mut out = Vec::with_capacity(1 + bytes.len().div_ceil(chunk));
            out.push(Self::header(tenant, Some(bytes.len() as u64)));
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + chunk).min(bytes.len());
                out.push(Self::chunk(bytes.slice(at..end)));
                at = end;
            }
            out
        }
    }

    /// Internal services between Kura's own processes (`kura.v1.internal`).
    pub mod internal {
        tonic::include_proto!("kura.v1.internal");
    }
}

/// The canonical gRPC name of a status code, as the proto documents them
/// (`NOT_FOUND`, not tonic's "Some requested entity was not found").
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The file descriptor set of every Kura proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kura_descriptor.bin"));
