//! The payload codec: the only module that names bincode, so the encoding of
//! record payloads can be swapped in one place.
//!
//! bincode's serde mode cannot decode self-describing types such as
//! `serde_json::Value` (it has no `deserialize_any`); records that carry JSON
//! carry it as text.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest payload the decoder will allocate for. Hostile input that
/// claims a longer string or sequence fails instead of allocating.
pub const DECODE_BYTES_MAX: usize = 64 << 20;

/// The largest snapshot body the decoder will allocate for: a whole
/// `State` (a config document of 100 MB and more, the dedup table's
/// 256 MiB budget, the lock and session tables) in one value. Records keep
/// the small cap above; only `decode_snapshot` uses this one.
pub const SNAPSHOT_DECODE_BYTES_MAX: usize = 2 << 30;

const _: () = assert!(SNAPSHOT_DECODE_BYTES_MAX > DECODE_BYTES_MAX);

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

fn snapshot_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<SNAPSHOT_DECODE_BYTES_MAX>()
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    Encode(String),
    Decode(String),
    /// The value decoded but did not use every byte: the payload is not what
    /// its type says.
    TrailingBytes {
        used: usize,
        len: usize,
    },
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Encode(e) => write!(f, "encode failed: {e}"),
            CodecError::Decode(e) => write!(f, "decode failed: {e}"),
            CodecError::TrailingBytes { used, len } => {
                write!(f, "decode used {used} of {len} payload bytes")
            }
        }
    }
}

impl std::error::Error for CodecError {}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encodes into `out` as the encoding goes, without holding the whole
/// result (snapshot bodies of hundreds of MB); the same bytes as `encode`.
/// Returns the number of bytes written.
pub fn encode_to_write<T: Serialize, W: std::io::Write>(
    value: &T,
    out: &mut W,
) -> Result<usize, CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Writes the encoding of a string of `len` bytes whose text `write_text`
/// writes to `out`: the same bytes as `encode_to_write` of that `String`,
/// without the text ever being whole in memory (a snapshot's 100 MB config
/// document streams from its tree). Fails if `write_text` wrote other than
/// `len` bytes; what it wrote is then not a valid encoding. Returns the
/// number of bytes written.
pub fn encode_str_to_write<W: std::io::Write>(
    len: usize,
    write_text: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    out: &mut W,
) -> Result<usize, CodecError> {
    // A string is its length as a u64, in the configured integer encoding,
    // then its bytes (`str_streams_as_its_encoding` checks this).
    let prefix = encode_to_write(&(len as u64), out)?;
    let mut counted = Counted { out, len: 0 };
    write_text(&mut counted).map_err(|e| CodecError::Encode(e.to_string()))?;
    if counted.len != len {
        return Err(CodecError::Encode(format!(
            "a string announced as {len} bytes wrote {}",
            counted.len
        )));
    }
    Ok(prefix + len)
}

/// Passes writes through and counts them.
struct Counted<'a, W> {
    out: &'a mut W,
    len: usize,
}

impl<W: std::io::Write> std::io::Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Decodes a whole payload; trailing bytes are an error, not ignored.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    whole(value, used, bytes.len())
}

/// Decodes a snapshot body, under `SNAPSHOT_DECODE_BYTES_MAX` instead of the
/// record cap; trailing bytes are an error here too. Strings a type may
/// borrow (`#[serde(borrow)]`) are borrowed from `bytes`: the config
/// document's text is read in place from the mapped snapshot.
pub fn decode_snapshot<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::borrow_decode_from_slice(bytes, snapshot_config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    whole(value, used, bytes.len())
}

fn whole<T>(value: T, used: usize, len: usize) -> Result<T, CodecError> {
    if used != len {
        return Err(CodecError::TrailingBytes { used, len });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        token: u64,
        json: String,
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        // Invariant: decode(encode(x)) == x, and extra bytes are refused.
        let s = Sample {
            name: "config".into(),
            token: 7,
            json: "{\"a\":1}".into(),
        };
        let mut bytes = encode(&s).unwrap();
        assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(CodecError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn str_streams_as_its_encoding() {
        // Invariant: a streamed string is byte for byte the encoding of the
        // same `String`, on both sides of each varint width; a text of the
        // wrong length is an error.
        for len in [0, 1, 250, 251, 65_535, 65_536, 70_000] {
            let text: String = "abcdefg".chars().cycle().take(len).collect();
            let mut out = vec![];
            let n = encode_str_to_write(len, |w| w.write_all(text.as_bytes()), &mut out).unwrap();
            assert_eq!(out, encode(&text).unwrap(), "len {len}");
            assert_eq!(n, out.len());
        }
        let e = encode_str_to_write(3, |w| w.write_all(b"ab"), &mut vec![]).unwrap_err();
        assert!(
            e.to_string().contains("announced as 3 bytes wrote 2"),
            "{e}"
        );
    }

    #[test]
    fn hostile_length_is_an_error_not_an_allocation() {
        // Invariant: a claimed string length beyond DECODE_BYTES_MAX fails.
        let bytes = [0xfdu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<String>(&bytes).is_err());
    }
}
