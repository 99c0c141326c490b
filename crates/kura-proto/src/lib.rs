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
