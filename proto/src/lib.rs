//! wasmos-proto: the `wasmos.v1` wire types and gRPC services, and the
//! conversions between them and `wasmos-model`. The only crate that knows prost.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("wasmos.v1");
}

mod convert;

/// Encodes a wire message (for the master's registry records).
pub fn encode<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// Any wire message (what [`encode`] and [`decode`] take), so other crates
/// can be generic over records without depending on prost.
pub trait Wire: prost::Message + Default {}
impl<M: prost::Message + Default> Wire for M {}

/// Decodes a wire message; `None` if the bytes are not one.
/// Bytes `m` takes on the wire.
pub fn encoded_len<M: prost::Message>(m: &M) -> usize {
    m.encoded_len()
}

pub fn decode<M: prost::Message + Default>(b: &[u8]) -> Option<M> {
    M::decode(b).ok()
}

pub use convert::*;

/// Largest gRPC message either side accepts (modules travel in chunks below this).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Chunk size for artifact uploads and downloads.
pub const CHUNK_BYTES: usize = 1 << 20;
/// The metadata key of Watch's DATA_LOSS answer that holds the oldest
/// sequence number the master still holds: watching from one before it
/// gets everything still held (after a master restart: all it published).
pub const WATCH_OLDEST_HELD: &str = "wasmos-oldest-held";

/// The oldest sequence number a Watch DATA_LOSS answer says is held.
pub fn watch_oldest_held(s: &tonic::Status) -> Option<u64> {
    s.metadata().get(WATCH_OLDEST_HELD)?.to_str().ok()?.parse().ok()
}
