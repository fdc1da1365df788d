//! Big-endian cursor and the encoders of every server message.
//!
//! The encoders append to the caller's buffer and never fail; lengths that
//! do not fit the wire's 32-bit fields are the caller's to avoid (the
//! session only ever passes bounded values).

use alloc::vec::Vec;

use crate::consts::*;

/// A cursor over untrusted bytes: every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes the next `len` bytes, or `None` when fewer remain.
    pub fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(len)?;
        self.buf = tail;
        Some(head)
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_be_bytes)
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }

    /// Reads a `u32` length followed by that many bytes.
    pub fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// Appends the 18-byte server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting(out: &mut Vec<u8>, flags: u16) {
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
}

/// Appends an option reply header announcing `len` bytes of data.
pub fn option_reply_header(out: &mut Vec<u8>, option: u32, reply: u32, len: u32) {
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends an option reply carrying `data`.
pub fn option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    option_reply_header(out, option, reply, len32(data.len()));
    out.extend_from_slice(data);
}

/// Appends `NBD_REP_SERVER` for `name` (no description).
pub fn rep_server(out: &mut Vec<u8>, name: &str) {
    option_reply_header(out, OPT_LIST, REP_SERVER, len32(4 + name.len()));
    out.extend_from_slice(&len32(name.len()).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// Appends `NBD_REP_META_CONTEXT` with `id` and `name`.
pub fn rep_meta_context(out: &mut Vec<u8>, option: u32, id: u32, name: &str) {
    option_reply_header(out, option, REP_META_CONTEXT, len32(4 + name.len()));
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// Appends `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn info_export(out: &mut Vec<u8>, option: u32, size: u64, flags: u16) {
    option_reply_header(out, option, REP_INFO, 12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
}

/// Appends `NBD_REP_INFO` with a string item (`NBD_INFO_NAME`, `NBD_INFO_DESCRIPTION`).
pub fn info_string(out: &mut Vec<u8>, option: u32, info: u16, text: &str) {
    option_reply_header(out, option, REP_INFO, len32(2 + text.len()));
    out.extend_from_slice(&info.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Appends `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(out: &mut Vec<u8>, option: u32, min: u32, preferred: u32, max: u32) {
    option_reply_header(out, option, REP_INFO, 14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&min.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
}

/// Appends the reply to `NBD_OPT_EXPORT_NAME`: size, flags and, unless
/// `no_zeroes`, 124 zero bytes.
pub fn export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0; 124]);
    }
}

/// Appends a simple reply header (the read payload, if any, follows).
pub fn simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Appends a structured reply chunk header announcing `len` payload bytes.
pub fn chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, len: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends `NBD_REPLY_TYPE_NONE` with `NBD_REPLY_FLAG_DONE`.
pub fn chunk_none(out: &mut Vec<u8>, cookie: u64) {
    chunk_header(out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
}

/// Appends `NBD_REPLY_TYPE_OFFSET_DATA`; `data` must be 1..=2^32-9 bytes.
pub fn chunk_offset_data(out: &mut Vec<u8>, cookie: u64, done: bool, offset: u64, data: &[u8]) {
    chunk_header(
        out,
        done_flag(done),
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        len32(8 + data.len()),
    );
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends `NBD_REPLY_TYPE_OFFSET_HOLE`; `len` must be non-zero.
pub fn chunk_offset_hole(out: &mut Vec<u8>, cookie: u64, done: bool, offset: u64, len: u32) {
    chunk_header(out, done_flag(done), REPLY_TYPE_OFFSET_HOLE, cookie, 12);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends `NBD_REPLY_TYPE_BLOCK_STATUS` for `context` with `(length, flags)` descriptors.
pub fn chunk_block_status(
    out: &mut Vec<u8>,
    cookie: u64,
    done: bool,
    context: u32,
    descriptors: &[(u32, u32)],
) {
    let len = len32(4 + 8 * descriptors.len());
    chunk_header(out, done_flag(done), REPLY_TYPE_BLOCK_STATUS, cookie, len);
    out.extend_from_slice(&context.to_be_bytes());
    for (length, flags) in descriptors {
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
}

/// Appends `NBD_REPLY_TYPE_ERROR` (`offset: None`) or
/// `NBD_REPLY_TYPE_ERROR_OFFSET`, with an optional message (truncated to
/// 4096 bytes).
pub fn chunk_error(
    out: &mut Vec<u8>,
    cookie: u64,
    done: bool,
    error: u32,
    message: &str,
    offset: Option<u64>,
) {
    let msg = &message.as_bytes()[..message.len().min(crate::MAX_STRING)];
    let (kind, extra) = match offset {
        None => (REPLY_TYPE_ERROR, 0),
        Some(_) => (REPLY_TYPE_ERROR_OFFSET, 8),
    };
    chunk_header(
        out,
        done_flag(done),
        kind,
        cookie,
        len32(6 + msg.len() + extra),
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    if let Some(offset) = offset {
        out.extend_from_slice(&offset.to_be_bytes());
    }
}

fn done_flag(done: bool) -> u16 {
    if done {
        REPLY_FLAG_DONE
    } else {
        0
    }
}

/// Lengths here are bounded by the session; saturate rather than wrap if a
/// direct caller passes more than the wire can carry.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
