//! wasmos-proto: the `wasmos.v1` wire types and gRPC services, and the
//! conversions between them and `wasmos-model`. The only crate that knows prost.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("wasmos.v1");
}

mod convert;

pub use convert::*;

/// Largest gRPC message either side accepts (modules travel in chunks below this).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Chunk size for artifact uploads and downloads.
pub const CHUNK_BYTES: usize = 1 << 20;
