//! streamOptimized markers and compressed grains.
//!
//! Every marker is one 512-byte sector `{u64 val; u32 size; u32 type}`.
//! When `size` is nonzero the sector instead starts a compressed grain
//! `{u64 lba; u32 size; zlib bytes…}`, padded to a sector boundary.

use crate::error::{Error, Result, Structure};
use crate::SECTOR_SIZE;

/// Size of a grain marker's fixed part (`lba` + `size`).
pub const GRAIN_HEADER_LEN: usize = 12;

/// Kinds of metadata marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerKind {
    /// End of stream (type 0).
    EndOfStream,
    /// A grain table follows (type 1).
    GrainTable,
    /// A grain directory follows (type 2).
    GrainDirectory,
    /// The footer header follows (type 3).
    Footer,
    /// Type 4 and above: seen in vSphere images, undocumented; skipped.
    Unknown(u32),
}

/// One parsed marker sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A compressed grain starts here.
    Grain {
        /// First virtual sector of the grain.
        lba: u64,
        /// Compressed byte count following the 12-byte grain header.
        compressed_len: u32,
    },
    /// A metadata marker; `sectors` of metadata follow it.
    Meta {
        /// Marker type.
        kind: MarkerKind,
        /// The `val` field: sectors of metadata after the marker.
        sectors: u64,
    },
}

impl Marker {
    /// Parses the marker at the start of `bytes` (at least 16 bytes).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 16 {
            return Err(Error::Truncated {
                what: Structure::StreamMarker,
                needed: 16,
                available: bytes.len() as u64,
            });
        }
        let val = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
        let size = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        let kind = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default());
        if size != 0 {
            return Ok(Marker::Grain {
                lba: val,
                compressed_len: size,
            });
        }
        let kind = match kind {
            0 => MarkerKind::EndOfStream,
            1 => MarkerKind::GrainTable,
            2 => MarkerKind::GrainDirectory,
            3 => MarkerKind::Footer,
            n => MarkerKind::Unknown(n),
        };
        Ok(Marker::Meta { kind, sectors: val })
    }

    /// Bytes this marker and what it announces occupy, rounded up to
    /// whole sectors: where the next marker starts.
    pub fn span(&self) -> Result<u64> {
        let overflow = Error::Overflow {
            what: Structure::StreamMarker,
            field: "marker span",
        };
        match *self {
            Marker::Grain { compressed_len, .. } => {
                let n = u64::from(compressed_len) + GRAIN_HEADER_LEN as u64;
                Ok(n.div_ceil(SECTOR_SIZE) * SECTOR_SIZE)
            }
            Marker::Meta { sectors, .. } => sectors
                .checked_add(1)
                .and_then(|s| s.checked_mul(SECTOR_SIZE))
                .ok_or(overflow),
        }
    }
}

/// Largest compressed payload accepted for a grain of `grain_bytes`:
/// deflate's worst case (stored blocks) plus the zlib framing, with room
/// for writers that pad.
pub fn max_compressed_len(grain_bytes: u64) -> u64 {
    grain_bytes + grain_bytes / 16 + 1024
}

/// A compressed grain located in a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrainParse<'a> {
    /// The whole grain is in the buffer.
    Complete {
        /// The zlib stream.
        compressed: &'a [u8],
    },
    /// The buffer must hold at least this many bytes from the marker.
    NeedMore(u64),
}

/// Reads a compressed grain whose marker starts at `bytes[0]` (file
/// offset `file_offset`, for errors), checking it is the grain for
/// virtual sector `expected_lba`.
pub fn parse_grain(
    bytes: &[u8],
    file_offset: u64,
    expected_lba: u64,
    grain_bytes: u64,
) -> Result<GrainParse<'_>> {
    if bytes.len() < GRAIN_HEADER_LEN {
        return Ok(GrainParse::NeedMore(GRAIN_HEADER_LEN as u64));
    }
    let bad = |reason| Error::BadCompressedGrain {
        offset: file_offset,
        reason,
    };
    let lba = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default());
    let compressed_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if compressed_len == 0 {
        return Err(bad("table entry points at a metadata marker, not a grain"));
    }
    if lba != expected_lba {
        return Err(bad("grain marker names another virtual sector"));
    }
    let len = u64::from(compressed_len);
    if len > max_compressed_len(grain_bytes) {
        return Err(bad("compressed size larger than any grain can need"));
    }
    let total = GRAIN_HEADER_LEN as u64 + len;
    if (bytes.len() as u64) < total {
        return Ok(GrainParse::NeedMore(total));
    }
    Ok(GrainParse::Complete {
        compressed: &bytes[GRAIN_HEADER_LEN..total as usize],
    })
}

/// Inflates a zlib-framed grain into `out` (exactly one grain long) and
/// returns the number of bytes produced. Output never exceeds `out`: a
/// stream that would produce more is an error, not a reallocation.
pub fn inflate_grain(compressed: &[u8], out: &mut [u8], file_offset: u64) -> Result<usize> {
    miniz_oxide::inflate::decompress_slice_iter_to_slice(
        out,
        core::iter::once(compressed),
        true,
        false,
    )
    .map_err(|_| Error::Inflate {
        offset: file_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn marker(val: u64, size: u32, kind: u32) -> Vec<u8> {
        let mut v = vec![0u8; 512];
        v[0..8].copy_from_slice(&val.to_le_bytes());
        v[8..12].copy_from_slice(&size.to_le_bytes());
        v[12..16].copy_from_slice(&kind.to_le_bytes());
        v
    }

    #[test]
    fn markers() {
        assert_eq!(
            Marker::parse(&marker(0, 0, 0)).unwrap(),
            Marker::Meta {
                kind: MarkerKind::EndOfStream,
                sectors: 0
            }
        );
        assert_eq!(
            Marker::parse(&marker(4, 0, 1)).unwrap().span().unwrap(),
            5 * 512
        );
        assert_eq!(
            Marker::parse(&marker(1, 0, 4)).unwrap(),
            Marker::Meta {
                kind: MarkerKind::Unknown(4),
                sectors: 1
            }
        );
        assert_eq!(
            Marker::parse(&marker(128, 501, 0)).unwrap().span().unwrap(),
            1024
        );
        assert!(Marker::parse(&marker(u64::MAX, 0, 1))
            .unwrap()
            .span()
            .is_err());
        assert!(Marker::parse(&[0u8; 15]).is_err());
    }

    #[test]
    fn grain_round_trip_and_errors() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let z = miniz_oxide::deflate::compress_to_vec_zlib(&data, 6);
        let mut g = Vec::new();
        g.extend_from_slice(&128u64.to_le_bytes());
        g.extend_from_slice(&(z.len() as u32).to_le_bytes());
        g.extend_from_slice(&z);
        assert_eq!(
            parse_grain(&g[..5], 0, 128, 65536).unwrap(),
            GrainParse::NeedMore(12)
        );
        assert_eq!(
            parse_grain(&g[..20], 0, 128, 65536).unwrap(),
            GrainParse::NeedMore(12 + z.len() as u64)
        );
        let GrainParse::Complete { compressed } = parse_grain(&g, 0, 128, 65536).unwrap() else {
            panic!("incomplete")
        };
        let mut out = vec![0u8; 65536];
        assert_eq!(inflate_grain(compressed, &mut out, 0).unwrap(), 65536);
        assert_eq!(out, data);
        // Wrong LBA.
        assert!(parse_grain(&g, 0, 256, 65536).is_err());
        // Output larger than one grain is refused.
        let mut small = vec![0u8; 4096];
        assert!(inflate_grain(compressed, &mut small, 0).is_err());
        // Corrupt stream.
        let mut bad = compressed.to_vec();
        bad[10] ^= 0xff;
        assert!(inflate_grain(&bad, &mut out, 0).is_err());
        // Absurd size.
        g[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_grain(&g, 0, 128, 65536).is_err());
    }
}
