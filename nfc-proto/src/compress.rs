//! Compressed IO fragments: FastLZ (type 2), zlib (1) and SkipZ (3), each
//! applied to one fragment on its own, as the newest public read/write
//! traces describe them.
//!
//! - **FastLZ**: a raw FastLZ block (the 4-byte length prefix of some
//!   wrappers is not on the wire). The level is in the top three bits of
//!   the first byte (0 = level 1, 1 = level 2). VDDK compresses 64 KiB
//!   fragments at level 2 and smaller ones at level 1; [`compress_fragment`]
//!   does the same. Our encoder is a clean-room greedy LZ77 writing the
//!   published block format; the decoder reads any valid block of either
//!   level (near and far matches).
//! - **zlib**: a bare zlib stream of the fragment (captures begin
//!   `78 01`; the level VDDK uses is not stated: we use 1, which gives
//!   that header).
//! - **SkipZ**: `u32 length, u32 0`, then for each non-zero run in
//!   ascending order `u32 offset, u32 length` and the run's bytes.
//!
//! A writer falls back to type 0 when compressing does not shrink a
//! fragment; a reader accepts any type in any fragment.

use alloc::vec;
use alloc::vec::Vec;

use crate::aio::Compression;
use crate::{put_u32, u32_at};

/// A fragment did not decompress to its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt;

/// Compresses `data` with `kind`, appending to `out`; returns the type
/// used: `kind`, or [`Compression::None`] (with `data` appended as is)
/// when the result would not be smaller.
pub fn compress_fragment(kind: Compression, data: &[u8], out: &mut Vec<u8>) -> Compression {
    let start = out.len();
    match kind {
        Compression::None => {}
        Compression::Zlib => {
            out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec_zlib(data, 1))
        }
        Compression::FastLz => {
            let level = if data.len() >= 64 * 1024 { 2 } else { 1 };
            fastlz_compress(level, data, out);
        }
        Compression::SkipZ => skipz_encode(data, out),
    }
    if kind != Compression::None && out.len() - start < data.len() {
        return kind;
    }
    out.truncate(start);
    out.extend_from_slice(data);
    Compression::None
}

/// Decompresses one fragment into `out`, which it must fill exactly.
pub fn decompress_fragment(kind: Compression, data: &[u8], out: &mut [u8]) -> Result<(), Corrupt> {
    match kind {
        Compression::None if data.len() == out.len() => {
            out.copy_from_slice(data);
            Ok(())
        }
        Compression::None => Err(Corrupt),
        Compression::Zlib => {
            let n = miniz_oxide::inflate::decompress_slice_iter_to_slice(
                out,
                core::iter::once(data),
                true,
                false,
            )
            .map_err(|_| Corrupt)?;
            if n == out.len() {
                Ok(())
            } else {
                Err(Corrupt)
            }
        }
        Compression::FastLz => {
            if fastlz_decompress(data, out)? == out.len() {
                Ok(())
            } else {
                Err(Corrupt)
            }
        }
        Compression::SkipZ => skipz_decode(data, out),
    }
}

const HASH_LOG: u32 = 13;
const MAX_LITERAL: usize = 32;
const L1_MAX_MATCH: usize = 264;
const L1_MAX_DISTANCE: usize = 8191;
/// Level 2 distances of 8191 and up take the far form; ours stay near.
const L2_MAX_NEAR: usize = 8190;
const L2_FAR_BASE: usize = 8191;

fn hash3(b: &[u8]) -> usize {
    let v = u32::from(b[0]) | (u32::from(b[1]) << 8) | (u32::from(b[2]) << 16);
    (v.wrapping_mul(2_654_435_761) >> (32 - HASH_LOG)) as usize
}

fn push_literals(out: &mut Vec<u8>, lit: &[u8]) {
    for run in lit.chunks(MAX_LITERAL) {
        out.push((run.len() - 1) as u8);
        out.extend_from_slice(run);
    }
}

fn push_match(out: &mut Vec<u8>, level: u8, mut len: usize, dist: usize) {
    let (hi, lo) = ((dist >> 8) as u8, dist as u8);
    if level == 1 {
        while len > 0 {
            let mut chunk = len.min(L1_MAX_MATCH);
            if (1..3).contains(&(len - chunk)) {
                chunk = len - 3;
            }
            let l = chunk - 2;
            if l < 7 {
                out.extend_from_slice(&[((l as u8) << 5) | hi, lo]);
            } else {
                out.extend_from_slice(&[(7 << 5) | hi, (l - 7) as u8, lo]);
            }
            len -= chunk;
        }
    } else {
        let l = len - 2;
        if l < 7 {
            out.extend_from_slice(&[((l as u8) << 5) | hi, lo]);
        } else {
            out.push((7 << 5) | hi);
            let mut rest = l - 7;
            while rest >= 255 {
                out.push(255);
                rest -= 255;
            }
            out.extend_from_slice(&[rest as u8, lo]);
        }
    }
}

/// Appends a FastLZ block of `input` at `level` (1 or 2; other values
/// mean 2). Empty input appends nothing.
pub fn fastlz_compress(level: u8, input: &[u8], out: &mut Vec<u8>) {
    let level = if level == 1 { 1 } else { 2 };
    if input.is_empty() {
        return;
    }
    let start = out.len();
    let max_dist = if level == 1 {
        L1_MAX_DISTANCE
    } else {
        L2_MAX_NEAR
    };
    let mut table = vec![0u32; 1 << HASH_LOG];
    let (mut ip, mut lit) = (0usize, 0usize);
    while ip + 3 <= input.len() {
        let h = hash3(&input[ip..]);
        let cand = table[h] as usize;
        table[h] = (ip + 1) as u32;
        if cand > 0 {
            let r = cand - 1;
            let dist = ip - r - 1;
            if dist <= max_dist && input[r..r + 3] == input[ip..ip + 3] {
                let mut len = 3;
                while ip + len < input.len() && input[r + len] == input[ip + len] {
                    len += 1;
                }
                push_literals(out, &input[lit..ip]);
                push_match(out, level, len, dist);
                ip += len;
                lit = ip;
                continue;
            }
        }
        ip += 1;
    }
    push_literals(out, &input[lit..]);
    if level == 2 {
        out[start] |= 1 << 5;
    }
}

/// Decompresses a FastLZ block (either level) into `out`; returns the
/// bytes written. Every reference and length is checked.
pub fn fastlz_decompress(input: &[u8], out: &mut [u8]) -> Result<usize, Corrupt> {
    let first = *input.first().ok_or(Corrupt)?;
    let level = (first >> 5) + 1;
    if level > 2 {
        return Err(Corrupt);
    }
    let mut ip = 1usize;
    let mut op = 0usize;
    let mut ctrl = usize::from(first & 31);
    let next = |ip: &mut usize| -> Result<usize, Corrupt> {
        let b = *input.get(*ip).ok_or(Corrupt)?;
        *ip += 1;
        Ok(usize::from(b))
    };
    loop {
        if ctrl >= 32 {
            let mut len = (ctrl >> 5) - 1;
            let ofs = (ctrl & 31) << 8;
            let back;
            if level == 1 {
                if len == 6 {
                    len += next(&mut ip)?;
                }
                back = ofs + next(&mut ip)? + 1;
            } else {
                if len == 6 {
                    loop {
                        let code = next(&mut ip)?;
                        len += code;
                        if code != 255 {
                            break;
                        }
                    }
                }
                let code = next(&mut ip)?;
                if code == 255 && ofs == 31 << 8 {
                    let far = (next(&mut ip)? << 8) + next(&mut ip)?;
                    back = far + L2_FAR_BASE + 1;
                } else {
                    back = ofs + code + 1;
                }
            }
            len += 3;
            let from = op.checked_sub(back).ok_or(Corrupt)?;
            if op + len > out.len() {
                return Err(Corrupt);
            }
            for i in 0..len {
                out[op + i] = out[from + i];
            }
            op += len;
        } else {
            let run = ctrl + 1;
            let src = input.get(ip..ip + run).ok_or(Corrupt)?;
            out.get_mut(op..op + run)
                .ok_or(Corrupt)?
                .copy_from_slice(src);
            ip += run;
            op += run;
        }
        if ip >= input.len() {
            return Ok(op);
        }
        ctrl = next(&mut ip)?;
    }
}

/// Runs of zeros shorter than a run header are kept inside runs.
const SKIPZ_GAP: usize = 8;

/// Appends the SkipZ encoding of `data`.
pub fn skipz_encode(data: &[u8], out: &mut Vec<u8>) {
    let mut head = [0u8; 8];
    put_u32(&mut head, 0, data.len() as u32);
    out.extend_from_slice(&head);
    let mut i = 0;
    while i < data.len() {
        if data[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut zeros = 0;
        while i < data.len() && zeros < SKIPZ_GAP {
            if data[i] == 0 {
                zeros += 1;
            } else {
                zeros = 0;
                end = i + 1;
            }
            i += 1;
        }
        let mut run = [0u8; 8];
        put_u32(&mut run, 0, start as u32);
        put_u32(&mut run, 4, (end - start) as u32);
        out.extend_from_slice(&run);
        out.extend_from_slice(&data[start..end]);
        i = end;
    }
}

/// Decodes a SkipZ fragment into `out` (zero-filled around the runs): the
/// length must be `out.len()` and the runs ascending, apart and inside it.
pub fn skipz_decode(data: &[u8], out: &mut [u8]) -> Result<(), Corrupt> {
    if data.len() < 8 || u32_at(data, 0) as usize != out.len() || u32_at(data, 4) != 0 {
        return Err(Corrupt);
    }
    out.fill(0);
    let (mut pos, mut end) = (8usize, 0usize);
    while pos < data.len() {
        let head = data.get(pos..pos + 8).ok_or(Corrupt)?;
        let (off, len) = (u32_at(head, 0) as usize, u32_at(head, 4) as usize);
        if off < end || len == 0 {
            return Err(Corrupt);
        }
        let src = data.get(pos + 8..pos + 8 + len).ok_or(Corrupt)?;
        out.get_mut(off..off + len)
            .ok_or(Corrupt)?
            .copy_from_slice(src);
        pos += 8 + len;
        end = off + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                match (i / 700) % 4 {
                    0 => 0,
                    1 => (x >> 24) as u8,
                    2 => b"vddk nbdmode "[i % 13],
                    _ => (i / 300) as u8,
                }
            })
            .collect()
    }

    #[test]
    fn round_trips() {
        for n in [1, 2, 3, 4, 31, 32, 33, 300, 9000, 65536, 66048, 200_000] {
            let data = sample(n, n as u32);
            for kind in [
                Compression::None,
                Compression::Zlib,
                Compression::FastLz,
                Compression::SkipZ,
            ] {
                let mut z = Vec::new();
                let used = compress_fragment(kind, &data, &mut z);
                let mut back = vec![0xEEu8; n];
                decompress_fragment(used, &z, &mut back).unwrap();
                assert!(back == data, "{kind:?} {n}");
            }
            for level in [1, 2] {
                let mut z = Vec::new();
                fastlz_compress(level, &data, &mut z);
                assert_eq!(z[0] >> 5, level - 1);
                let mut back = vec![0u8; n];
                assert_eq!(fastlz_decompress(&z, &mut back), Ok(n));
                assert!(back == data);
            }
        }
        // Compressible data is compressed; noise falls back to type 0.
        let mut z = Vec::new();
        assert_eq!(
            compress_fragment(Compression::FastLz, &[7u8; 65536], &mut z),
            Compression::FastLz
        );
        assert_eq!(z[0] >> 5, 1, "level 2 for 64 KiB");
        let noise: Vec<u8> = sample(4096, 9).iter().map(|b| b ^ 0x5a).collect();
        let noise: Vec<u8> = noise
            .iter()
            .enumerate()
            .map(|(i, b)| b.wrapping_add(((i * 2_654_435_761usize) >> 7) as u8))
            .collect();
        let mut z = Vec::new();
        assert_eq!(
            compress_fragment(Compression::SkipZ, &noise, &mut z),
            Compression::None
        );
        assert_eq!(z, noise);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let data = sample(5000, 3);
        for kind in [Compression::Zlib, Compression::FastLz, Compression::SkipZ] {
            let mut z = Vec::new();
            assert_eq!(compress_fragment(kind, &data, &mut z), kind);
            // Wrong length expected.
            let mut short = vec![0u8; 4999];
            assert!(decompress_fragment(kind, &z, &mut short).is_err());
            // Truncated and bit-flipped.
            let mut out = vec![0u8; 5000];
            assert!(decompress_fragment(kind, &z[..z.len() / 2], &mut out).is_err());
            for i in 0..z.len().min(200) {
                let mut bad = z.clone();
                bad[i] ^= 0xA5;
                let _ = decompress_fragment(kind, &bad, &mut out);
            }
        }
        // A back reference before the start; level 3.
        let mut out = [0u8; 16];
        assert!(fastlz_decompress(&[0, b'a', 0x20, 5], &mut out).is_err());
        assert!(fastlz_decompress(&[0x40, b'a'], &mut out).is_err());
        // SkipZ runs out of order or overlapping.
        let mut z = Vec::new();
        skipz_encode(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0], &mut z);
        let mut out = [0u8; 14];
        skipz_decode(&z, &mut out).unwrap();
        assert_eq!(out, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        let mut bad = z.clone();
        bad[17] = 12; // second run starts before the first
        bad[8] = 13;
        assert!(skipz_decode(&bad, &mut out).is_err());
    }
}
