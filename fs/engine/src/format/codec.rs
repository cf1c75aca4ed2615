//! How a chunk's bytes are stored: a codec byte, then the bytes raw or lz4-compressed
//! (`Format::chunk_codec`). Locally and in a cluster's packs alike.

use std::borrow::Cow;

use crate::error::{FsError, FsResult};

/// Codec bytes of stored chunk values.
pub(crate) const CHUNK_RAW: u8 = 0;
const CHUNK_LZ4: u8 = 1;
const PROBE_BYTES: usize = 4096;

/// A chunk's stored value. Like ZFS's early abort, the first 4 KiB are compressed as a probe:
/// data that does not shrink there (media, archives, random bytes) is stored raw and costs no
/// compression on write or decompression on read.
pub fn encode_chunk(raw: &[u8]) -> Vec<u8> {
    let probe = &raw[..raw.len().min(PROBE_BYTES)];
    if lz4_flex::block::compress(probe).len() * 8 < probe.len() * 7 {
        let packed = lz4_flex::block::compress_prepend_size(raw);
        if packed.len() * 8 < raw.len() * 7 {
            let mut v = Vec::with_capacity(packed.len() + 1);
            v.push(CHUNK_LZ4);
            v.extend_from_slice(&packed);
            return v;
        }
    }
    let mut v = Vec::with_capacity(raw.len() + 1);
    v.push(CHUNK_RAW);
    v.extend_from_slice(raw);
    v
}

pub fn decode_chunk(stored: &[u8]) -> FsResult<Vec<u8>> {
    chunk_bytes(stored).map(Cow::into_owned)
}

/// A chunk's bytes: borrowed from `stored` where it is raw (no copy), else decompressed.
pub fn chunk_bytes(stored: &[u8]) -> FsResult<Cow<'_, [u8]>> {
    match stored.split_first() {
        Some((&CHUNK_RAW, rest)) => Ok(Cow::Borrowed(rest)),
        Some((&CHUNK_LZ4, rest)) => lz4_flex::block::decompress_size_prepended(rest)
            .map(Cow::Owned)
            .map_err(|e| FsError::corrupt(format!("chunk does not decompress: {e}"))),
        _ => Err(FsError::corrupt("unknown chunk codec")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_compress_only_when_it_pays_and_round_trip() {
        let text: Vec<u8> = b"fn main() { println!(\"hello\"); }\n"
            .iter()
            .cycle()
            .take(65536)
            .copied()
            .collect();
        let mut x = 0x2545f4914f6cdd1du64;
        let noise: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let packed = encode_chunk(&text);
        assert_eq!(packed[0], CHUNK_LZ4);
        assert!(packed.len() < text.len() / 4);
        assert_eq!(decode_chunk(&packed).unwrap(), text);
        let raw = encode_chunk(&noise);
        assert_eq!((raw[0], raw.len()), (CHUNK_RAW, noise.len() + 1));
        assert_eq!(decode_chunk(&raw).unwrap(), noise);
        assert!(decode_chunk(&[9, 1, 2]).is_err());
    }
}
