//! garrison's one binary encoding of everything it stores or sends, and the
//! framing of its tarpc connections.
//!
//! bincode 2 through serde, with one fixed configuration: little-endian,
//! variable-length integers, and a decode limit, so that a hostile length
//! prefix cannot make a decoder allocate more than [`DECODE_LIMIT_BYTES`].
//! Stored records, peer frames and client frames all use it;
//! `docs/formats.md` lists them. (Signed transactions have their own,
//! fixed-width canonical encoding in `garrison-client`.)
//!
//! Frames are a 4-byte big-endian length and that many bytes; see
//! [`frame_codec`]. Both TLS ends (the peer port's and the client port's)
//! read their CA certificates with [`ca_roots`].

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

/// The most bytes one decode may claim, whatever the input says. A frame can
/// never be larger than this (the configured frame limit is checked against it).
pub const DECODE_LIMIT_BYTES: usize = 256 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT_BYTES>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>();

/// Encodes a value with the crate's fixed bincode configuration.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec fails only for types serde cannot describe, which is
    // a programming error, never a property of the input.
    bincode::serde::encode_to_vec(value, CONFIG)
        .expect("every garrison format is bincode-encodable")
}

/// Decodes a value and checks that the input held exactly one value.
///
/// Some types' own deserializers panic on hostile values (tarpc's request
/// context adds a peer-chosen duration to the clock, which overflows); a
/// panic while decoding is caught and reported as malformed input, so no
/// bytes from outside can take a task down.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bincode::serde::decode_from_slice(bytes, CONFIG)
    }));
    let (value, used) = attempt
        .map_err(|_| DecodeError("a field's value is out of range (the decoder panicked)".into()))?
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Appends a value's encoding (as [`encode`] makes it) to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, CONFIG)
        .expect("every garrison format is bincode-encodable");
}

/// Decodes one value at the start of `bytes`; returns it and how many
/// bytes it took (for values sent one after another, such as a batch's
/// packed events). Panics while decoding are caught as in [`decode`].
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        bincode::serde::decode_from_slice(bytes, CONFIG)
    }));
    attempt
        .map_err(|_| DecodeError("a field's value is out of range (the decoder panicked)".into()))?
        .map_err(|e| DecodeError(e.to_string()))
}

/// serde of a `Vec<u8>` as one run of bytes (a length and the bytes, which
/// bincode copies whole) rather than as a sequence of `u8`s, which it
/// walks one by one: `#[serde(with = "garrison_wire::byte_run")]`. The
/// encoding is the same either way.
pub mod byte_run {
    use serde::{Deserializer, Serializer};

    /// Serializes `bytes` as one run.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    /// Deserializes one run of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        struct Run;
        impl<'de> serde::de::Visitor<'de> for Run {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a run of bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(Run)
    }
}

/// The most bytes one decode of a record this node stored itself (or a
/// snapshot it assembled from chunks) may claim: larger than any frame, so
/// that a state that grew past [`DECODE_LIMIT_BYTES`] can still be read back.
pub const STORED_DECODE_LIMIT_BYTES: usize = 16 * 1024 * 1024 * 1024;

type StoredConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<STORED_DECODE_LIMIT_BYTES>,
>;

const STORED_CONFIG: StoredConfig =
    bincode::config::standard().with_limit::<STORED_DECODE_LIMIT_BYTES>();

/// Like [`decode`], for records this node wrote itself (snapshots): the same
/// encoding with [`STORED_DECODE_LIMIT_BYTES`] as the limit.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, STORED_CONFIG)
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Bytes that do not decode as the expected format.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed encoding: {0}")]
pub struct DecodeError(pub String);

/// The length-prefix framing of garrison's TCP connections: a 4-byte
/// big-endian length, at most `max_frame_bytes`; a longer one is an error
/// that closes the connection.
pub fn frame_codec(max_frame_bytes: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// A tokio-serde codec that frames tarpc messages with [`encode`]/[`decode`].
///
/// tarpc's own bincode transport uses bincode 1; this keeps the whole project
/// on one encoding.
pub struct Bincode2<Item, SinkItem>(PhantomData<(Item, SinkItem)>);

impl<Item, SinkItem> Default for Bincode2<Item, SinkItem> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Item, SinkItem: Serialize> tokio_serde::Serializer<SinkItem> for Bincode2<Item, SinkItem> {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> Result<Bytes, io::Error> {
        bincode::serde::encode_to_vec(item, CONFIG)
            .map(Bytes::from)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

impl<Item: DeserializeOwned, SinkItem> tokio_serde::Deserializer<Item>
    for Bincode2<Item, SinkItem>
{
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Item, io::Error> {
        decode(src).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Accepts TCP connections until `stop` is cancelled, at most
/// `max_connections` open at once: a connection beyond the limit is closed
/// at once (and logged, naming `what`). Each accepted stream (with
/// `TCP_NODELAY` set) is handed to `serve` with the permit that holds its
/// slot; dropping the permit frees the slot.
pub async fn accept_connections<F>(
    listener: tokio::net::TcpListener,
    max_connections: usize,
    what: &'static str,
    stop: tokio_util::sync::CancellationToken,
    mut serve: F,
) where
    F: FnMut(tokio::net::TcpStream, std::net::SocketAddr, tokio::sync::OwnedSemaphorePermit),
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, what, "accepting a connection failed");
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = max_connections, what, "refusing a connection: too many open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        serve(stream, peer, permit);
    }
}

/// Runs `io`, failing with `TimedOut` (naming `what`) after `ms`
/// milliseconds: the bound on connects and handshakes of both ports.
pub async fn within<T>(
    ms: u64,
    what: String,
    io: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let timeout = std::time::Duration::from_millis(ms);
    tokio::time::timeout(timeout, io).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} took over {timeout:?}"),
        )
    })?
}

/// The trust anchors in `pem`, one or more PEM certificates of a CA; an
/// error says what was wrong with them.
pub fn ca_roots(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        let ca = ca.map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
        roots
            .add(ca)
            .map_err(|e| format!("the CA certificate is unusable: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut bytes = encode(&7u64);
        bytes.push(0);
        assert!(decode::<u64>(&bytes).unwrap_err().0.contains("trailing"));
    }

    #[test]
    fn decode_rejects_a_length_prefix_beyond_the_limit() {
        // A Vec<u8> claiming u64::MAX elements: varint marker 253 then 8 bytes.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
