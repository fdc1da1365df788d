//! The NBD server session fed arbitrary client bytes, from the first byte
//! of the handshake and again after a valid negotiation (structured
//! replies, `base:allocation`, GO): typed errors only, bounded input
//! buffering, bounded output per call, in-bounds requests only.
#![no_main]

use nbd_proto::consts::STATE_HOLE;
use nbd_proto::{Command, Event, ExportInfo, ServerSession, SessionConfig, TlsPolicy};

const SIZE: u64 = 1 << 20;
const MAX_BLOCK: u32 = 64 << 10;

fn config(sel: u8) -> SessionConfig {
    let mut e = ExportInfo::new("disk", SIZE);
    e.writable = sel & 1 != 0;
    e.multi_conn = sel & 2 != 0;
    e.fast_zero = sel & 4 != 0;
    e.description = Some("fuzz".into());
    e.block_size.minimum = if sel & 8 != 0 { 512 } else { 1 };
    e.block_size.maximum = MAX_BLOCK;
    let tls = match sel >> 4 & 3 {
        0 => TlsPolicy::Disabled,
        1 => TlsPolicy::Optional,
        _ => TlsPolicy::Required,
    };
    SessionConfig {
        exports: vec![e, ExportInfo::new("", 4096)],
        tls,
    }
}

/// Feeds `data` in pieces of varying size; returns false once closed.
fn run(s: &mut ServerSession, data: &[u8], split: usize) -> bool {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(split.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = out.len();
            let st = match s.handle_input(&buf, &mut out) {
                Ok(st) => st,
                Err(_) => return false,
            };
            assert!(st.consumed <= buf.len());
            let mut extra = 0usize;
            let mut stop = false;
            match st.event {
                Event::NeedMore { at_least } => {
                    assert!(at_least <= MAX_BLOCK as usize + 28 || at_least <= 65536 + 16);
                    assert!(st.consumed > 0 || at_least > buf.len());
                    stop = true;
                }
                Event::Disconnect => return false,
                Event::Request(r) => {
                    let to = r.reply;
                    match r.command {
                        Command::Read { offset, length, .. } => {
                            assert!(length <= MAX_BLOCK && offset + u64::from(length) <= SIZE);
                            extra = length as usize + 8;
                            s.reply_read_zeroes(&to, &mut out);
                        }
                        Command::Write { offset, data, .. } => {
                            assert!(data.len() <= MAX_BLOCK as usize);
                            assert!(offset + data.len() as u64 <= SIZE);
                            s.reply_ok(&to, &mut out);
                        }
                        Command::BlockStatus { offset, length, .. } => {
                            assert!(offset + u64::from(length) <= SIZE);
                            let ext = [(u64::from(length) / 3, STATE_HOLE), (u64::MAX, 0)];
                            s.reply_block_status(&to, &ext, &mut out);
                        }
                        Command::Trim { offset, length, .. }
                        | Command::WriteZeroes { offset, length, .. } => {
                            assert!(offset + u64::from(length) <= SIZE);
                            s.reply_error(&to, 5, &mut out);
                        }
                        _ => s.reply_ok(&to, &mut out),
                    }
                }
                _ => {}
            }
            // Replies stay proportionate: a few hundred bytes per step
            // plus the read payload the caller supplied.
            assert!(out.len() - before <= 1024 + extra, "{}", out.len() - before);
            buf.drain(..st.consumed);
            out.clear();
            if stop {
                break;
            }
        }
        assert!(buf.len() <= MAX_BLOCK as usize + 28 + split);
    }
    true
}

fn opt(v: &mut Vec<u8>, option: u32, data: &[u8]) {
    v.extend_from_slice(b"IHAVEOPT");
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(sel >> 6) * 7 + 1;
    // From the first handshake byte.
    let mut s = ServerSession::new(config(sel)).unwrap();
    run(&mut s, rest, split);
    // After a valid negotiation.
    let mut s = ServerSession::new(config(sel & 0x0f)).unwrap();
    let mut hs = 3u32.to_be_bytes().to_vec();
    opt(&mut hs, 8, &[]);
    let mut q = 4u32.to_be_bytes().to_vec();
    q.extend_from_slice(b"disk");
    q.extend_from_slice(&1u32.to_be_bytes());
    q.extend_from_slice(&15u32.to_be_bytes());
    q.extend_from_slice(b"base:allocation");
    opt(&mut hs, 10, &q);
    let mut go = 4u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"disk\0\0");
    opt(&mut hs, 7, &go);
    assert!(run(&mut s, &hs, 1 << 20));
    assert!(s.in_transmission() && s.base_allocation());
    run(&mut s, rest, split);
});
