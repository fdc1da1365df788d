//! The text descriptor: header keys, extent lines and the disk database.
//!
//! The grammar follows VMware's VMDK technote and what real writers
//! emit. Parsing is deliberately tolerant where writers differ (CRLF, a
//! UTF-8 BOM, NUL padding, spaces around `=`, four spellings of the
//! signature, case of keywords) and strict where ambiguity would be
//! dangerous (duplicate keys, lone carriage returns, unterminated quotes,
//! unknown `createType`).
//!
//! One file on purpose: the descriptor is one grammar, and its parser,
//! its serializer and the typed header they share are read together
//! (every tolerance of the parser has its counterpart in what the
//! serializer writes).
//!
//! ```
//! use vmdk_format::descriptor::{Descriptor, CreateType, ExtentType};
//!
//! let text = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
//! createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"my disk-flat.vmdk\" 0\n\n\
//! ddb.adapterType = \"lsilogic\"\n";
//! let d = Descriptor::parse(text)?;
//! assert_eq!(d.create_type, CreateType::MonolithicFlat);
//! assert_eq!(d.extents[0].kind, ExtentType::Flat);
//! assert_eq!(d.extents[0].file.as_deref(), Some("my disk-flat.vmdk"));
//! assert_eq!(d.ddb_get("ddb.adapterType"), Some("lsilogic"));
//! assert_eq!(d.capacity_sectors()?, 2048);
//! // Round trip.
//! assert_eq!(Descriptor::parse(&d.to_bytes()?)?, d);
//!
//! // Errors are typed and carry the line.
//! let bad = b"# Disk DescriptorFile\nversion=1\nCID=1\nCID=2\n";
//! assert!(matches!(
//!     Descriptor::parse(bad),
//!     Err(vmdk_format::Error::Descriptor { line: 4, .. })
//! ));
//! # Ok::<(), vmdk_format::Error>(())
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Write as _;

use crate::error::{desc_err, DescriptorError as DE, Error, Result};

/// Largest descriptor this crate parses: 20480 sectors, VirtualBox's cap
/// for an embedded descriptor.
pub const MAX_DESCRIPTOR_LEN: usize = 20480 * 512;
/// Largest number of extent lines accepted (a 2 TiB twoGbMaxExtent disk
/// has 1024; a 64 TiB one 32768).
pub const MAX_EXTENTS: usize = 65536;
/// Largest number of lines of any kind.
pub const MAX_LINES: usize = 200_000;
/// `CID` / `parentCID` value meaning "no parent".
pub const CID_NO_PARENT: u32 = 0xffff_ffff;

/// The disk types a descriptor's `createType` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CreateType {
    /// One KDMV file, descriptor embedded.
    MonolithicSparse,
    /// Descriptor plus one flat extent.
    MonolithicFlat,
    /// Descriptor plus sparse extents of at most 2 GiB.
    TwoGbMaxExtentSparse,
    /// Descriptor plus flat extents of at most 2 GiB.
    TwoGbMaxExtentFlat,
    /// One compressed KDMV file for streaming.
    StreamOptimized,
    /// ESX flat disk (extent type VMFS).
    Vmfs,
    /// ESX redo log (COWD extent).
    VmfsSparse,
    /// ESX space-efficient sparse.
    SeSparse,
    /// ESX thin disk (VMFS extent over a file with holes).
    VmfsThin,
    /// Hand-assembled extents.
    Custom,
    /// A whole physical device.
    FullDevice,
    /// Partitions of a physical device.
    PartitionedDevice,
    /// ESX raw device.
    VmfsRaw,
    /// ESX raw device mapping (virtual compatibility).
    VmfsRdm,
    /// ESX raw device mapping (physical compatibility).
    VmfsPassthroughRawDeviceMap,
    /// ESX eager-zeroed thick disk.
    VmfsEagerZeroedThick,
    /// ESX preallocated (lazy-zeroed thick) disk.
    VmfsPreallocated,
}

impl CreateType {
    /// Every variant, in declaration order.
    pub const ALL: [CreateType; 17] = [
        Self::MonolithicSparse,
        Self::MonolithicFlat,
        Self::TwoGbMaxExtentSparse,
        Self::TwoGbMaxExtentFlat,
        Self::StreamOptimized,
        Self::Vmfs,
        Self::VmfsSparse,
        Self::SeSparse,
        Self::VmfsThin,
        Self::Custom,
        Self::FullDevice,
        Self::PartitionedDevice,
        Self::VmfsRaw,
        Self::VmfsRdm,
        Self::VmfsPassthroughRawDeviceMap,
        Self::VmfsEagerZeroedThick,
        Self::VmfsPreallocated,
    ];

    /// The canonical spelling used in descriptors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MonolithicSparse => "monolithicSparse",
            Self::MonolithicFlat => "monolithicFlat",
            Self::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Self::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Self::StreamOptimized => "streamOptimized",
            Self::Vmfs => "vmfs",
            Self::VmfsSparse => "vmfsSparse",
            Self::SeSparse => "seSparse",
            Self::VmfsThin => "vmfsThin",
            Self::Custom => "custom",
            Self::FullDevice => "fullDevice",
            Self::PartitionedDevice => "partitionedDevice",
            Self::VmfsRaw => "vmfsRaw",
            Self::VmfsRdm => "vmfsRDM",
            Self::VmfsPassthroughRawDeviceMap => "vmfsPassthroughRawDeviceMap",
            Self::VmfsEagerZeroedThick => "vmfsEagerZeroedThick",
            Self::VmfsPreallocated => "vmfsPreallocated",
        }
    }

    /// Parses a `createType` value, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    /// True for the two types whose descriptor lives inside the data file.
    pub fn is_embedded(self) -> bool {
        matches!(self, Self::MonolithicSparse | Self::StreamOptimized)
    }
}

/// Access mode of an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// `RW`
    ReadWrite,
    /// `RDONLY`
    ReadOnly,
    /// `NOACCESS`
    NoAccess,
}

impl Access {
    /// Spelling in a descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "RW",
            Self::ReadOnly => "RDONLY",
            Self::NoAccess => "NOACCESS",
        }
    }
    fn from_token(t: &str) -> Option<Self> {
        [Self::ReadWrite, Self::ReadOnly, Self::NoAccess]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(t))
    }
}

/// Type of an extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtentType {
    /// Raw bytes in a plain file.
    Flat,
    /// A hosted sparse (KDMV) file.
    Sparse,
    /// No file: reads as zeros.
    Zero,
    /// An ESX flat file.
    Vmfs,
    /// An ESX redo log (COWD).
    VmfsSparse,
    /// A raw device mapping.
    VmfsRdm,
    /// A raw device.
    VmfsRaw,
    /// An ESX space-efficient sparse file.
    SeSparse,
}

impl ExtentType {
    const ALL: [ExtentType; 8] = [
        Self::Flat,
        Self::Sparse,
        Self::Zero,
        Self::Vmfs,
        Self::VmfsSparse,
        Self::VmfsRdm,
        Self::VmfsRaw,
        Self::SeSparse,
    ];
    /// Spelling in a descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flat => "FLAT",
            Self::Sparse => "SPARSE",
            Self::Zero => "ZERO",
            Self::Vmfs => "VMFS",
            Self::VmfsSparse => "VMFSSPARSE",
            Self::VmfsRdm => "VMFSRDM",
            Self::VmfsRaw => "VMFSRAW",
            Self::SeSparse => "SESPARSE",
        }
    }
    fn from_token(t: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(t))
    }
    /// True for extents whose file holds the data at a fixed offset.
    pub fn is_flat_like(self) -> bool {
        matches!(
            self,
            Self::Flat | Self::Vmfs | Self::VmfsRdm | Self::VmfsRaw
        )
    }
}

/// One extent line: `ACCESS SECTORS TYPE ["file" [OFFSET [F6 [F7]]]]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentType,
    /// File name as written (relative to the descriptor, or absolute).
    pub file: Option<String>,
    /// Start offset inside the file, in sectors (flat extents).
    pub offset: Option<u64>,
    /// The 6th and 7th fields of device extents (partition UUID, device
    /// identifier), kept verbatim.
    pub extra: Vec<String>,
}

/// Text encoding of a descriptor (`encoding=` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// UTF-8.
    Utf8,
    /// windows-1252 (also accepted for ISO-8859-1 labels).
    Windows1252,
}

impl Encoding {
    /// Canonical label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Utf8 => "UTF-8",
            Self::Windows1252 => "windows-1252",
        }
    }
    fn from_label(l: &str) -> Option<Self> {
        let l = l.trim();
        if ["UTF-8", "UTF8"].iter().any(|x| x.eq_ignore_ascii_case(l)) {
            Some(Self::Utf8)
        } else if [
            "windows-1252",
            "cp1252",
            "ISO-8859-1",
            "latin1",
            "iso8859-1",
        ]
        .iter()
        .any(|x| x.eq_ignore_ascii_case(l))
        {
            Some(Self::Windows1252)
        } else {
            None
        }
    }
}

/// A parsed descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// `version` (1, 2 or 3).
    pub version: u32,
    /// `encoding`, if the descriptor names one.
    pub encoding: Option<Encoding>,
    /// Content id.
    pub cid: u32,
    /// Parent's content id, [`CID_NO_PARENT`] for a base disk.
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: CreateType,
    /// `isNativeSnapshot`, verbatim.
    pub is_native_snapshot: Option<String>,
    /// `parentFileNameHint`, verbatim.
    pub parent_file_name_hint: Option<String>,
    /// `changeTrackPath`, verbatim.
    pub change_track_path: Option<String>,
    /// Other header keys, in order.
    pub extra_header: Vec<(String, String)>,
    /// Extent lines, in order.
    pub extents: Vec<ExtentLine>,
    /// The disk database (`ddb.*` keys), in order.
    pub ddb: Vec<(String, String)>,
}

const SIGNATURES: [&str; 4] = [
    "# Disk DescriptorFile",
    "# Disk Descriptor File",
    "#Disk Descriptor File",
    "#Disk DescriptorFile",
];

/// True when `bytes` starts like a text descriptor (after an optional
/// BOM and blank lines), used to tell a descriptor from a data file.
pub fn looks_like_descriptor(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let mut rest = bytes;
    // Skip blank lines.
    loop {
        let end = rest.iter().position(|&b| b == b'\n');
        let line = &rest[..end.unwrap_or(rest.len())];
        let trimmed = trim_ascii(line);
        if trimmed.is_empty() {
            match end {
                Some(e) if e + 1 < rest.len() => rest = &rest[e + 1..],
                _ => return false,
            }
            continue;
        }
        let _ = text_end;
        // A prefix match, so that a descriptor with bad line endings is
        // still recognised and then refused with a precise error.
        return SIGNATURES.iter().any(|s| {
            trimmed.len() >= s.len()
                && trimmed[..s.len()].eq_ignore_ascii_case(s.as_bytes())
                && trimmed[s.len()..]
                    .first()
                    .is_none_or(|b| b.is_ascii_whitespace())
        });
    }
}

fn trim_ascii(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

fn decode_1252(bytes: &[u8]) -> String {
    const HIGH: [u16; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => {
                char::from_u32(u32::from(HIGH[usize::from(b - 0x80)])).unwrap_or('\u{FFFD}')
            }
            _ => char::from(b),
        })
        .collect()
}

fn encode_1252(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        let cp = c as u32;
        let byte = match cp {
            0..=0x7F | 0xA0..=0xFF => cp as u8,
            _ => (0x80u8..=0x9F).find(|&b| decode_1252(&[b]).starts_with(c))?,
        };
        out.push(byte);
    }
    Some(out)
}

/// Finds the `encoding` key by a byte-level scan (keys are ASCII).
fn sniff_encoding(bytes: &[u8]) -> Result<Option<Encoding>> {
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = trim_ascii(line);
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        if trim_ascii(&line[..eq]).eq_ignore_ascii_case(b"encoding") {
            let raw = trim_ascii(&line[eq + 1..]);
            let raw = raw
                .strip_prefix(b"\"")
                .and_then(|r| r.strip_suffix(b"\""))
                .unwrap_or(raw);
            let label = core::str::from_utf8(raw).map_err(|_| {
                desc_err(
                    i + 1,
                    DE::InvalidValue {
                        key: "encoding".into(),
                    },
                )
            })?;
            return Encoding::from_label(label)
                .map(Some)
                .ok_or_else(|| desc_err(i + 1, DE::UnsupportedEncoding(label.into())));
        }
    }
    Ok(None)
}

/// Splits an extent line into tokens; quoted tokens may hold spaces.
fn tokenize(line: &str, lineno: usize) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if out.len() >= 8 {
            return Err(desc_err(lineno, DE::BadExtent("too many fields")));
        }
        if c == '"' {
            chars.next();
            let body_start = start + 1;
            let mut end = None;
            for (i, c) in chars.by_ref() {
                if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or_else(|| desc_err(lineno, DE::UnterminatedQuote))?;
            if let Some(&(_, next)) = chars.peek() {
                if !next.is_whitespace() {
                    return Err(desc_err(lineno, DE::BadExtent("text after closing quote")));
                }
            }
            out.push((line[body_start..end].to_string(), true));
        } else {
            let mut end = line.len();
            while let Some(&(i, c)) = chars.peek() {
                if c.is_whitespace() {
                    end = i;
                    break;
                }
                if c == '"' {
                    return Err(desc_err(lineno, DE::BadExtent("quote inside a bare field")));
                }
                chars.next();
            }
            out.push((line[start..end].to_string(), false));
        }
    }
    Ok(out)
}

fn parse_u64_dec(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_cid(s: &str) -> Option<u32> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn parse_extent(line: &str, lineno: usize) -> Result<ExtentLine> {
    let tokens = tokenize(line, lineno)?;
    let bad = |m| desc_err(lineno, DE::BadExtent(m));
    if tokens.len() < 3 {
        return Err(bad("fewer than three fields"));
    }
    if tokens.len() > 7 {
        return Err(bad("more than seven fields"));
    }
    let access = Access::from_token(&tokens[0].0).ok_or_else(|| bad("unknown access mode"))?;
    let sectors = parse_u64_dec(&tokens[1].0).ok_or_else(|| bad("sector count is not a number"))?;
    let kind = ExtentType::from_token(&tokens[2].0).ok_or_else(|| bad("unknown extent type"))?;
    let file = tokens.get(3).map(|t| t.0.clone());
    let offset = match tokens.get(4) {
        Some(t) => Some(parse_u64_dec(&t.0).ok_or_else(|| bad("offset is not a number"))?),
        None => None,
    };
    let extra: Vec<String> = tokens.iter().skip(5).map(|t| t.0.clone()).collect();
    match (kind, &file) {
        (ExtentType::Zero, Some(_)) => return Err(bad("ZERO extent with a file name")),
        (ExtentType::Zero, None) => {}
        (_, None) => return Err(bad("extent needs a file name")),
        (_, Some(f)) if f.is_empty() => return Err(bad("empty file name")),
        _ => {}
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
        extra,
    })
}

fn parse_value(raw: &str, key: &str, lineno: usize) -> Result<String> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('"') {
        let inner = rest
            .strip_suffix('"')
            .ok_or_else(|| desc_err(lineno, DE::UnterminatedQuote))?;
        if inner.contains('"') {
            return Err(desc_err(lineno, DE::InvalidValue { key: key.into() }));
        }
        Ok(inner.to_string())
    } else {
        if raw.contains('"') {
            return Err(desc_err(lineno, DE::InvalidValue { key: key.into() }));
        }
        Ok(raw.to_string())
    }
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 256
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

impl Descriptor {
    /// Parses descriptor bytes (a descriptor file, or the embedded area of
    /// a sparse file: parsing stops at the first NUL).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bytes = match bytes.iter().position(|&b| b == 0) {
            Some(n) => &bytes[..n],
            None => bytes,
        };
        if bytes.len() > MAX_DESCRIPTOR_LEN {
            return Err(desc_err(0, DE::TooLarge));
        }
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let encoding = sniff_encoding(bytes)?;
        let text: String = match encoding {
            Some(Encoding::Utf8) => core::str::from_utf8(bytes)
                .map_err(|_| desc_err(0, DE::InvalidText("UTF-8")))?
                .to_string(),
            Some(Encoding::Windows1252) => decode_1252(bytes),
            // Undeclared: UTF-8 when it is valid UTF-8, else the legacy
            // Windows code page older VMware products wrote.
            None => match core::str::from_utf8(bytes) {
                Ok(s) => s.to_string(),
                Err(_) => decode_1252(bytes),
            },
        };

        let mut version = None;
        let mut cid = None;
        let mut parent_cid = None;
        let mut create_type = None;
        let mut is_native_snapshot = None;
        let mut parent_file_name_hint = None;
        let mut change_track_path = None;
        let mut encoding_seen = false;
        let mut extra_header: Vec<(String, String)> = Vec::new();
        let mut extents = Vec::new();
        let mut ddb: Vec<(String, String)> = Vec::new();
        let mut signed = false;

        for (idx, raw_line) in text.split('\n').enumerate() {
            let lineno = idx + 1;
            if lineno > MAX_LINES {
                return Err(desc_err(lineno, DE::TooLarge));
            }
            let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
            if line.contains('\r') {
                return Err(desc_err(lineno, DE::LoneCarriageReturn));
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if !signed {
                if SIGNATURES.iter().any(|s| s.eq_ignore_ascii_case(line)) {
                    signed = true;
                    continue;
                }
                return Err(desc_err(lineno, DE::MissingSignature));
            }
            if line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if Access::from_token(first).is_some() {
                if extents.len() >= MAX_EXTENTS {
                    return Err(desc_err(lineno, DE::TooLarge));
                }
                extents.push(parse_extent(line, lineno)?);
                continue;
            }
            let Some(eq) = line.find('=') else {
                return Err(desc_err(lineno, DE::Unrecognised));
            };
            let key = line[..eq].trim();
            if !valid_key(key) {
                return Err(desc_err(lineno, DE::Unrecognised));
            }
            let value = parse_value(&line[eq + 1..], key, lineno)?;
            let dup = || desc_err(lineno, DE::DuplicateKey(key.to_string()));
            let invalid = || {
                desc_err(
                    lineno,
                    DE::InvalidValue {
                        key: key.to_string(),
                    },
                )
            };
            if key.len() > 4 && key[..4].eq_ignore_ascii_case("ddb.") {
                if ddb.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
                    return Err(dup());
                }
                ddb.push((key.to_string(), value));
                continue;
            }
            let set = |slot: &mut Option<String>, v: String| -> Result<()> {
                if slot.is_some() {
                    return Err(dup());
                }
                *slot = Some(v);
                Ok(())
            };
            match key.to_ascii_lowercase().as_str() {
                "version" => {
                    if version.is_some() {
                        return Err(dup());
                    }
                    let v: u32 = value.trim().parse().map_err(|_| invalid())?;
                    if !(1..=3).contains(&v) {
                        return Err(desc_err(lineno, DE::UnsupportedVersion));
                    }
                    version = Some(v);
                }
                "encoding" => {
                    if encoding_seen {
                        return Err(dup());
                    }
                    encoding_seen = true;
                }
                "cid" => {
                    if cid.is_some() {
                        return Err(dup());
                    }
                    cid = Some(parse_cid(&value).ok_or_else(invalid)?);
                }
                "parentcid" => {
                    if parent_cid.is_some() {
                        return Err(dup());
                    }
                    parent_cid = Some(parse_cid(&value).ok_or_else(invalid)?);
                }
                "createtype" => {
                    if create_type.is_some() {
                        return Err(dup());
                    }
                    create_type =
                        Some(CreateType::from_name(value.trim()).ok_or_else(|| {
                            desc_err(lineno, DE::UnknownCreateType(value.clone()))
                        })?);
                }
                "isnativesnapshot" => set(&mut is_native_snapshot, value)?,
                "parentfilenamehint" => set(&mut parent_file_name_hint, value)?,
                "changetrackpath" => set(&mut change_track_path, value)?,
                _ => {
                    if extra_header
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case(key))
                    {
                        return Err(dup());
                    }
                    extra_header.push((key.to_string(), value));
                }
            }
        }
        if !signed {
            return Err(desc_err(0, DE::MissingSignature));
        }
        let version = version.ok_or(desc_err(0, DE::MissingKey("version")))?;
        let cid = cid.ok_or(desc_err(0, DE::MissingKey("CID")))?;
        let create_type = create_type.ok_or(desc_err(0, DE::MissingKey("createType")))?;
        if extents.is_empty() {
            return Err(desc_err(0, DE::NoExtents));
        }
        Ok(Descriptor {
            version,
            encoding,
            cid,
            parent_cid: parent_cid.unwrap_or(CID_NO_PARENT),
            create_type,
            is_native_snapshot,
            parent_file_name_hint,
            change_track_path,
            extra_header,
            extents,
            ddb,
        })
    }

    /// Serialises the descriptor in its declared encoding (UTF-8 when
    /// none is declared), in the canonical section order.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let text = self.to_text()?;
        match self.encoding {
            Some(Encoding::Windows1252) => {
                encode_1252(&text).ok_or_else(|| Error::Unserializable {
                    key: "encoding".into(),
                    reason: "a character has no windows-1252 form",
                })
            }
            _ => Ok(text.into_bytes()),
        }
    }

    /// Serialises to a `String` (before encoding).
    pub fn to_text(&self) -> Result<String> {
        fn check(key: &str, v: &str) -> Result<()> {
            if v.contains(['"', '\n', '\r', '\0']) {
                return Err(Error::Unserializable {
                    key: key.into(),
                    reason: "contains a quote, a line break or NUL",
                });
            }
            if v.trim() != v && !v.is_empty() {
                // Leading or trailing spaces survive only inside quotes,
                // which we always write; nothing to refuse.
            }
            Ok(())
        }
        fn check_key(key: &str) -> Result<()> {
            if !valid_key(key) {
                return Err(Error::Unserializable {
                    key: key.into(),
                    reason: "not a valid key name",
                });
            }
            Ok(())
        }
        if !(1..=3).contains(&self.version) {
            return Err(Error::Unserializable {
                key: "version".into(),
                reason: "must be 1, 2 or 3",
            });
        }
        if self.extents.is_empty() {
            return Err(Error::Unserializable {
                key: "extents".into(),
                reason: "a descriptor needs at least one extent",
            });
        }
        let mut s = String::new();
        // `write!` into a String cannot fail.
        s.push_str("# Disk DescriptorFile\n");
        let _ = writeln!(s, "version={}", self.version);
        if let Some(e) = self.encoding {
            let _ = writeln!(s, "encoding=\"{}\"", e.label());
        }
        let _ = writeln!(s, "CID={:08x}", self.cid);
        let _ = writeln!(s, "parentCID={:08x}", self.parent_cid);
        if let Some(v) = &self.is_native_snapshot {
            check("isNativeSnapshot", v)?;
            let _ = writeln!(s, "isNativeSnapshot=\"{v}\"");
        }
        let _ = writeln!(s, "createType=\"{}\"", self.create_type.as_str());
        if let Some(v) = &self.parent_file_name_hint {
            check("parentFileNameHint", v)?;
            let _ = writeln!(s, "parentFileNameHint=\"{v}\"");
        }
        if let Some(v) = &self.change_track_path {
            check("changeTrackPath", v)?;
            let _ = writeln!(s, "changeTrackPath=\"{v}\"");
        }
        for (k, v) in &self.extra_header {
            check_key(k)?;
            if k.len() > 4 && k[..4].eq_ignore_ascii_case("ddb.") || Self::is_known_header(k) {
                return Err(Error::Unserializable {
                    key: k.clone(),
                    reason: "reserved key in extra_header",
                });
            }
            check(k, v)?;
            let _ = writeln!(s, "{k}=\"{v}\"");
        }
        s.push_str("\n# Extent description\n");
        for (i, e) in self.extents.iter().enumerate() {
            let _ = write!(s, "{} {} {}", e.access.as_str(), e.sectors, e.kind.as_str());
            let name = format!("extent {i}");
            match (&e.file, e.kind) {
                (Some(_), ExtentType::Zero)
                | (
                    None,
                    ExtentType::Flat
                    | ExtentType::Sparse
                    | ExtentType::Vmfs
                    | ExtentType::VmfsSparse
                    | ExtentType::VmfsRdm
                    | ExtentType::VmfsRaw
                    | ExtentType::SeSparse,
                ) => {
                    return Err(Error::Unserializable {
                        key: name,
                        reason: "file name presence does not match the extent type",
                    })
                }
                _ => {}
            }
            if let Some(f) = &e.file {
                check(&name, f)?;
                if f.is_empty() {
                    return Err(Error::Unserializable {
                        key: name,
                        reason: "empty file name",
                    });
                }
                let _ = write!(s, " \"{f}\"");
            }
            if e.extra.len() > 2
                || (!e.extra.is_empty() && e.offset.is_none())
                || (e.offset.is_some() && e.file.is_none())
            {
                return Err(Error::Unserializable {
                    key: name,
                    reason: "fields out of order",
                });
            }
            if let Some(o) = e.offset {
                let _ = write!(s, " {o}");
            }
            for x in &e.extra {
                check(&name, x)?;
                if x.is_empty() || x.contains(char::is_whitespace) {
                    let _ = write!(s, " \"{x}\"");
                } else {
                    let _ = write!(s, " {x}");
                }
            }
            s.push('\n');
        }
        s.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for (k, v) in &self.ddb {
            check_key(k)?;
            if !(k.len() > 4 && k[..4].eq_ignore_ascii_case("ddb.")) {
                return Err(Error::Unserializable {
                    key: k.clone(),
                    reason: "DDB keys start with `ddb.`",
                });
            }
            check(k, v)?;
            let _ = writeln!(s, "{k} = \"{v}\"");
        }
        Ok(s)
    }

    fn is_known_header(k: &str) -> bool {
        [
            "version",
            "encoding",
            "CID",
            "parentCID",
            "isNativeSnapshot",
            "createType",
            "parentFileNameHint",
            "changeTrackPath",
        ]
        .iter()
        .any(|x| x.eq_ignore_ascii_case(k))
    }

    /// Sum of all extents' sizes, in sectors.
    pub fn capacity_sectors(&self) -> Result<u64> {
        self.extents.iter().try_fold(0u64, |acc, e| {
            acc.checked_add(e.sectors).ok_or(Error::Overflow {
                what: crate::error::Structure::SparseHeader,
                field: "descriptor capacity",
            })
        })
    }

    /// Value of a DDB key (ASCII case-insensitive).
    pub fn ddb_get(&self, key: &str) -> Option<&str> {
        self.ddb
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or inserts at the end) a DDB key.
    pub fn ddb_set(&mut self, key: &str, value: &str) {
        match self
            .ddb
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
        {
            Some((_, v)) => *v = value.to_string(),
            None => self.ddb.push((key.to_string(), value.to_string())),
        }
    }

    /// Removes a DDB key; returns whether it existed.
    pub fn ddb_remove(&mut self, key: &str) -> bool {
        let before = self.ddb.len();
        self.ddb.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        before != self.ddb.len()
    }

    /// True when the disk has a parent (a delta link).
    pub fn has_parent(&self) -> bool {
        self.parent_cid != CID_NO_PARENT || self.parent_file_name_hint.is_some()
    }

    /// `ddb.geometry.{cylinders,heads,sectors}` when all three parse.
    pub fn geometry(&self) -> Option<Geometry> {
        let n = |k| self.ddb_get(k).and_then(|v| v.trim().parse::<u32>().ok());
        Some(Geometry {
            cylinders: n("ddb.geometry.cylinders")?,
            heads: n("ddb.geometry.heads")?,
            sectors: n("ddb.geometry.sectors")?,
        })
    }

    /// `ddb.geometry.bios*` when all three parse.
    pub fn bios_geometry(&self) -> Option<Geometry> {
        let n = |k| self.ddb_get(k).and_then(|v| v.trim().parse::<u32>().ok());
        Some(Geometry {
            cylinders: n("ddb.geometry.biosCylinders")?,
            heads: n("ddb.geometry.biosHeads")?,
            sectors: n("ddb.geometry.biosSectors")?,
        })
    }

    /// `ddb.adapterType`.
    pub fn adapter_type(&self) -> Option<&str> {
        self.ddb_get("ddb.adapterType")
    }

    /// `ddb.virtualHWVersion` as a number.
    pub fn hw_version(&self) -> Option<u32> {
        self.ddb_get("ddb.virtualHWVersion")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Cylinders/heads/sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u32,
    /// Heads.
    pub heads: u32,
    /// Sectors per track.
    pub sectors: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const BASE: &str = "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n# Extent description\nRW 4192256 SPARSE \"a-s001.vmdk\"\nRW 4192256 SPARSE \"a-s002.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"16383\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_base() {
        let d = Descriptor::parse(BASE.as_bytes()).unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.cid, 0x12345678);
        assert_eq!(d.parent_cid, CID_NO_PARENT);
        assert!(!d.has_parent());
        assert_eq!(d.create_type, CreateType::TwoGbMaxExtentSparse);
        assert_eq!(d.extents.len(), 2);
        assert_eq!(d.capacity_sectors().unwrap(), 2 * 4192256);
        assert_eq!(d.hw_version(), Some(4));
        assert_eq!(
            d.geometry(),
            Some(Geometry {
                cylinders: 16383,
                heads: 16,
                sectors: 63
            })
        );
        assert_eq!(Descriptor::parse(&d.to_bytes().unwrap()).unwrap(), d);
    }

    #[test]
    fn crlf_bom_nul_and_spaces() {
        let mut v = b"\xEF\xBB\xBF".to_vec();
        v.extend(
            BASE.replace('\n', "\r\n")
                .replace("CID=12345678", "CID = 12345678")
                .bytes(),
        );
        v.extend([0u8; 100]);
        v.extend(b"garbage after NUL");
        let d = Descriptor::parse(&v).unwrap();
        assert_eq!(d, Descriptor::parse(BASE.as_bytes()).unwrap());
    }

    #[test]
    fn lone_cr_is_refused() {
        let t = BASE.replace("CID=12345678\n", "CID=12345678\rparentCID=1\n");
        assert!(matches!(
            Descriptor::parse(t.as_bytes()),
            Err(Error::Descriptor {
                line: 4,
                kind: DE::LoneCarriageReturn
            })
        ));
    }

    #[test]
    fn four_signatures() {
        for sig in SIGNATURES {
            let t = BASE.replace("# Disk DescriptorFile", sig);
            assert!(Descriptor::parse(t.as_bytes()).is_ok(), "{sig}");
            assert!(looks_like_descriptor(t.as_bytes()));
        }
        let t = BASE.replace("# Disk DescriptorFile", "# Something else");
        assert!(matches!(
            Descriptor::parse(t.as_bytes()),
            Err(Error::Descriptor {
                kind: DE::MissingSignature,
                ..
            })
        ));
    }

    #[test]
    fn quoted_names_utf8_at_and_device_fields() {
        let t = BASE.replace(
            "RW 4192256 SPARSE \"a-s002.vmdk\"",
            "RDONLY 4192256 FLAT \"sp ace ü@ds.vmdk\" 0\nNOACCESS 0 ZERO \nrw 100 vmfsraw \"/dev/disks/naa.1\" 0 part-uuid \"dev id\"",
        );
        let d = Descriptor::parse(t.as_bytes()).unwrap();
        assert_eq!(d.extents[1].file.as_deref(), Some("sp ace ü@ds.vmdk"));
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[2].kind, ExtentType::Zero);
        assert_eq!(d.extents[2].access, Access::NoAccess);
        assert_eq!(d.extents[3].kind, ExtentType::VmfsRaw);
        assert_eq!(
            d.extents[3].extra,
            vec![String::from("part-uuid"), String::from("dev id")]
        );
        assert_eq!(Descriptor::parse(&d.to_bytes().unwrap()).unwrap(), d);
    }

    #[test]
    fn windows_1252() {
        let mut t = BASE
            .replace("encoding=\"UTF-8\"", "encoding=\"windows-1252\"")
            .into_bytes();
        let pos = t.windows(5).position(|w| w == b"a-s00").unwrap();
        t[pos] = 0xE9; // é
        t[pos + 1] = 0x80; // €
        let d = Descriptor::parse(&t).unwrap();
        assert_eq!(d.extents[0].file.as_deref(), Some("é€s001.vmdk"));
        assert_eq!(
            d.to_bytes().unwrap(),
            Descriptor::parse(&d.to_bytes().unwrap())
                .unwrap()
                .to_bytes()
                .unwrap()
        );
        assert_eq!(Descriptor::parse(&d.to_bytes().unwrap()).unwrap(), d);
        // Undeclared, not UTF-8: legacy code page.
        let t2: Vec<u8> = BASE
            .replace("encoding=\"UTF-8\"\n", "")
            .bytes()
            .map(|b| if b == b'-' { 0xE9 } else { b })
            .collect();
        let d2 = Descriptor::parse(&t2).unwrap();
        assert_eq!(d2.extents[0].file.as_deref(), Some("aés001.vmdk"));
        // Declared UTF-8 but invalid bytes.
        let mut t3 = BASE.as_bytes().to_vec();
        t3[pos] = 0xFF;
        assert!(matches!(
            Descriptor::parse(&t3),
            Err(Error::Descriptor {
                kind: DE::InvalidText(_),
                ..
            })
        ));
        let t4 = BASE.replace("UTF-8", "KOI8-R");
        assert!(matches!(
            Descriptor::parse(t4.as_bytes()),
            Err(Error::Descriptor {
                line: 3,
                kind: DE::UnsupportedEncoding(_)
            })
        ));
    }

    #[test]
    fn every_create_type() {
        for t in CreateType::ALL {
            let s = BASE.replace("twoGbMaxExtentSparse", t.as_str());
            assert_eq!(Descriptor::parse(s.as_bytes()).unwrap().create_type, t);
            let s = BASE.replace("twoGbMaxExtentSparse", &t.as_str().to_ascii_uppercase());
            assert_eq!(Descriptor::parse(s.as_bytes()).unwrap().create_type, t);
        }
        let s = BASE.replace("twoGbMaxExtentSparse", "x");
        assert!(matches!(
            Descriptor::parse(s.as_bytes()),
            Err(Error::Descriptor {
                kind: DE::UnknownCreateType(_),
                ..
            })
        ));
    }

    #[test]
    fn malformed_lines() {
        let cases: &[(&str, &str)] = &[
            (
                "RW 4192256 SPARSE \"a-s001.vmdk\"",
                "RW 4192256 SPARSE \"a-s001.vmdk",
            ),
            ("RW 4192256 SPARSE \"a-s001.vmdk\"", "RW -5 SPARSE \"a\""),
            ("RW 4192256 SPARSE \"a-s001.vmdk\"", "RW 5 BOGUS \"a\""),
            ("RW 4192256 SPARSE \"a-s001.vmdk\"", "RW 5 SPARSE"),
            ("RW 4192256 SPARSE \"a-s001.vmdk\"", "RW 5 ZERO \"a\""),
            ("RW 4192256 SPARSE \"a-s001.vmdk\"", "RW 5 FLAT \"a\" x"),
            (
                "RW 4192256 SPARSE \"a-s001.vmdk\"",
                "RW 5 FLAT \"a\" 0 1 2 3",
            ),
            (
                "RW 4192256 SPARSE \"a-s001.vmdk\"",
                "RW 99999999999999999999999 FLAT \"a\"",
            ),
            ("version=1", "version=4"),
            ("version=1", "version=one"),
            ("CID=12345678", "CID=123456789"),
            ("CID=12345678", "CID=xyz"),
            ("parentCID=ffffffff", "parentCID=\"ffff"),
            (
                "ddb.adapterType = \"ide\"",
                "ddb.adapterType = \"ide\"\nddb.ADAPTERTYPE = \"x\"",
            ),
            ("ddb.adapterType = \"ide\"", "just some words"),
        ];
        for (from, to) in cases {
            let s = BASE.replace(from, to);
            assert!(
                matches!(
                    Descriptor::parse(s.as_bytes()),
                    Err(Error::Descriptor { .. })
                ),
                "{to}"
            );
        }
        // Missing keys.
        for key in [
            "version=1\n",
            "CID=12345678\n",
            "createType=\"twoGbMaxExtentSparse\"\n",
        ] {
            let s = BASE.replace(key, "");
            assert!(
                matches!(
                    Descriptor::parse(s.as_bytes()),
                    Err(Error::Descriptor {
                        line: 0,
                        kind: DE::MissingKey(_)
                    })
                ),
                "{key}"
            );
        }
        // No extents.
        let s: String = BASE
            .lines()
            .filter(|l| !l.starts_with("RW"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            Descriptor::parse(s.as_bytes()),
            Err(Error::Descriptor {
                kind: DE::NoExtents,
                ..
            })
        ));
    }

    #[test]
    fn serialize_refuses_unrepresentable() {
        let mut d = Descriptor::parse(BASE.as_bytes()).unwrap();
        d.parent_file_name_hint = Some("a\"b".into());
        assert!(matches!(d.to_bytes(), Err(Error::Unserializable { .. })));
        let mut d = Descriptor::parse(BASE.as_bytes()).unwrap();
        d.encoding = Some(Encoding::Windows1252);
        d.ddb_set("ddb.comment", "日本");
        assert!(matches!(d.to_bytes(), Err(Error::Unserializable { .. })));
    }
}
