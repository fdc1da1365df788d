//! A `Pair`: an in-memory client driving a server session over a RAM disk,
//! with an independent client-side encoder and decoder.

use nbd_proto::consts::*;
use nbd_proto::{Command, Error, Event, ExportInfo, ServerSession, SessionConfig, TlsPolicy};

struct Pair {
    s: ServerSession,
    /// Client bytes not consumed yet.
    pending: Vec<u8>,
    /// Server bytes not read by the client yet.
    out: Vec<u8>,
    disk: Vec<u8>,
    events: Vec<String>,
    closed: Option<Result<(), Error>>,
    /// Largest `NeedMore::at_least` seen.
    max_need: usize,
}

impl Pair {
    fn new(exports: Vec<ExportInfo>, tls: TlsPolicy) -> Pair {
        let size = exports.first().map_or(0, |e| e.size as usize);
        let s = ServerSession::new(SessionConfig { exports, tls }).unwrap();
        let mut p = Pair {
            s,
            pending: Vec::new(),
            out: Vec::new(),
            disk: vec![0; size],
            events: Vec::new(),
            closed: None,
            max_need: 0,
        };
        p.pump();
        assert_eq!(p.take(), b"NBDMAGICIHAVEOPT\x00\x03");
        p
    }

    fn rw(size: u64) -> Pair {
        let mut e = ExportInfo::new("disk", size);
        e.writable = true;
        Pair::new(vec![e], TlsPolicy::Disabled)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        self.pump();
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn pump(&mut self) {
        let Pair {
            s,
            pending,
            out,
            disk,
            events,
            closed,
            max_need,
        } = self;
        while closed.is_none() {
            let st = match s.handle_input(pending, out) {
                Ok(st) => st,
                Err(e) => {
                    *closed = Some(Err(e));
                    break;
                }
            };
            let consumed = st.consumed;
            let mut stop = false;
            match st.event {
                Event::NeedMore { at_least } => {
                    assert!(at_least > pending.len() - consumed || consumed > 0);
                    *max_need = (*max_need).max(at_least);
                    stop = true;
                }
                Event::Continue => {}
                Event::StartTls => events.push("starttls".into()),
                Event::Ready { export } => events.push(format!("ready {export}")),
                Event::Disconnect => {
                    *closed = Some(Ok(()));
                }
                Event::Request(r) => {
                    let to = r.reply;
                    match r.command {
                        Command::Read { offset, length, .. } => {
                            let o = offset as usize;
                            s.reply_read(&to, &disk[o..o + length as usize], out);
                        }
                        Command::Write { offset, data, fua } => {
                            let o = offset as usize;
                            disk[o..o + data.len()].copy_from_slice(data);
                            events.push(format!("write {offset} {} {fua}", data.len()));
                            s.reply_ok(&to, out);
                        }
                        Command::Flush => {
                            events.push("flush".into());
                            s.reply_ok(&to, out);
                        }
                        Command::Trim { offset, length, .. } => {
                            events.push(format!("trim {offset} {length}"));
                            s.reply_ok(&to, out);
                        }
                        Command::WriteZeroes {
                            offset,
                            length,
                            may_trim,
                            ..
                        } => {
                            let o = offset as usize;
                            disk[o..o + length as usize].fill(0);
                            events.push(format!("zero {offset} {length} {may_trim}"));
                            s.reply_ok(&to, out);
                        }
                        Command::BlockStatus { offset, length, .. } => {
                            // 4 KiB granules: all-zero ones are holes.
                            let mut ext: Vec<(u64, u32)> = Vec::new();
                            let end = offset + u64::from(length);
                            let mut pos = offset;
                            while pos < end {
                                let n = (4096 - pos % 4096).min(end - pos);
                                let z = disk[pos as usize..(pos + n) as usize]
                                    .iter()
                                    .all(|&b| b == 0);
                                ext.push((n, if z { STATE_HOLE | STATE_ZERO } else { 0 }));
                                pos += n;
                            }
                            s.reply_block_status(&to, &ext, out);
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            pending.drain(..consumed);
            if stop {
                break;
            }
        }
    }
}

// ---- An independent client: encoders and decoders. ----

fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = b"IHAVEOPT".to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn name_and_u16s(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

fn meta(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

fn req(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = 0x2560_9513u32.to_be_bytes().to_vec();
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&cmd.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Option replies: (option, type, data).
fn opt_replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert_eq!(be64(b), 0x0003_e889_0455_65a9);
        let len = be32(&b[16..]) as usize;
        v.push((be32(&b[8..]), be32(&b[12..]), b[20..20 + len].to_vec()));
        b = &b[20 + len..];
    }
    v
}

/// A simple reply: (error, cookie).
fn simple(b: &[u8]) -> (u32, u64) {
    assert_eq!(be32(b), 0x6744_6698, "{b:02x?}");
    (be32(&b[4..]), be64(&b[8..]))
}

/// Structured chunks: (flags, type, cookie, payload).
fn chunks(mut b: &[u8]) -> Vec<(u16, u16, u64, Vec<u8>)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        assert_eq!(be32(b), 0x668e_33ef, "{b:02x?}");
        let flags = u16::from_be_bytes([b[4], b[5]]);
        let kind = u16::from_be_bytes([b[6], b[7]]);
        let len = be32(&b[16..]) as usize;
        v.push((flags, kind, be64(&b[8..]), b[20..20 + len].to_vec()));
        b = &b[20 + len..];
    }
    v
}

/// Client flags, structured replies, `base:allocation`, GO "disk".
fn negotiate(p: &mut Pair) {
    p.send(&3u32.to_be_bytes());
    p.send(&opt(OPT_STRUCTURED_REPLY, &[]));
    p.send(&opt(
        OPT_SET_META_CONTEXT,
        &meta("disk", &["base:allocation"]),
    ));
    p.send(&opt(
        OPT_GO,
        &name_and_u16s("disk", &[INFO_NAME, INFO_DESCRIPTION]),
    ));
    let r = opt_replies(&p.take());
    assert_eq!(r[0], (OPT_STRUCTURED_REPLY, REP_ACK, vec![]));
    let mut ctx = 1u32.to_be_bytes().to_vec();
    ctx.extend_from_slice(b"base:allocation");
    assert_eq!(r[1], (OPT_SET_META_CONTEXT, REP_META_CONTEXT, ctx));
    assert_eq!(r[2], (OPT_SET_META_CONTEXT, REP_ACK, vec![]));
    let mut name = INFO_NAME.to_be_bytes().to_vec();
    name.extend_from_slice(b"disk");
    assert_eq!(r[3], (OPT_GO, REP_INFO, name));
    assert_eq!(r[4].1, REP_INFO);
    assert_eq!(r[4].2[..2], INFO_BLOCK_SIZE.to_be_bytes());
    assert_eq!(r[5].1, REP_INFO);
    assert_eq!(r[5].2[..2], INFO_EXPORT.to_be_bytes());
    let flags = u16::from_be_bytes([r[5].2[10], r[5].2[11]]);
    assert_eq!(
        flags,
        TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_SEND_DF
    );
    assert_eq!(r[6], (OPT_GO, REP_ACK, vec![]));
    assert_eq!(r.len(), 7);
    assert_eq!(p.events, ["ready 0"]);
    assert!(p.s.base_allocation() && p.s.structured() && p.s.in_transmission());
}

#[test]
fn whole_structured_session() {
    let mut p = Pair::rw(1 << 20);
    negotiate(&mut p);
    // Write with FUA, then read it back as one OFFSET_DATA chunk.
    let mut w = req(CMD_FLAG_FUA, CMD_WRITE, 1, 8192, 4);
    w.extend_from_slice(b"abcd");
    p.send(&w);
    assert_eq!(simple(&p.take()), (0, 1));
    p.send(&req(0, CMD_READ, 2, 8190, 8));
    let c = chunks(&p.take());
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].0, c[0].1, c[0].2),
        (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 2)
    );
    assert_eq!(be64(&c[0].3), 8190);
    assert_eq!(&c[0].3[8..], b"\0\0abcd\0\0");
    // Block status: hole, data, hole (merged), and REQ_ONE.
    p.send(&req(0, CMD_BLOCK_STATUS, 3, 0, 16384));
    let c = chunks(&p.take());
    assert_eq!((c[0].0, c[0].1), (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS));
    let d: Vec<u32> = c[0].3.chunks(4).map(be32).collect();
    assert_eq!(d, [1, 8192, 3, 4096, 0, 4096, 3]);
    p.send(&req(CMD_FLAG_REQ_ONE, CMD_BLOCK_STATUS, 4, 0, 16384));
    let d: Vec<u32> = chunks(&p.take())[0].3.chunks(4).map(be32).collect();
    assert_eq!(d, [1, 8192, 3]);
    // Zero (NO_HOLE), trim, flush, then disconnect.
    p.send(&req(CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES, 5, 8192, 4096));
    p.send(&req(0, CMD_TRIM, 6, 0, 4096));
    p.send(&req(0, CMD_FLUSH, 7, 0, 0));
    let out = p.take();
    assert_eq!(out.len(), 48);
    assert_eq!(simple(&out), (0, 5));
    assert_eq!(simple(&out[16..]), (0, 6));
    assert_eq!(simple(&out[32..]), (0, 7));
    p.send(&req(0, CMD_DISC, 8, 0, 0));
    assert_eq!(p.closed, Some(Ok(())));
    assert_eq!(
        p.events,
        [
            "ready 0",
            "write 8192 4 true",
            "zero 8192 4096 false",
            "trim 0 4096",
            "flush"
        ]
    );
    assert!(p.disk.iter().all(|&b| b == 0));
}

#[test]
fn byte_at_a_time_gives_the_same_bytes() {
    let mut input = 3u32.to_be_bytes().to_vec();
    input.extend(opt(OPT_STRUCTURED_REPLY, &[]));
    input.extend(opt(OPT_LIST, &[]));
    input.extend(opt(OPT_GO, &name_and_u16s("disk", &[])));
    let mut w = req(0, CMD_WRITE, 1, 0, 3);
    w.extend_from_slice(b"xyz");
    input.extend(w);
    input.extend(req(0, CMD_READ, 2, 0, 3));
    let mut whole = Pair::rw(4096);
    whole.send(&input);
    let mut bytes = Pair::rw(4096);
    for b in &input {
        bytes.send(&[*b]);
    }
    assert_eq!(whole.out, bytes.out);
    assert_eq!(whole.events, bytes.events);
    assert!(whole.closed.is_none());
    let tail = chunks(&whole.out[whole.out.len() - 31..]);
    assert_eq!(&tail[0].3[8..], b"xyz");
}

#[test]
fn option_errors_keep_negotiating() {
    let mut p = Pair::rw(4096);
    p.send(&3u32.to_be_bytes());
    p.send(&opt(99, b"junk"));
    p.send(&opt(OPT_LIST, b"x"));
    p.send(&opt(OPT_STRUCTURED_REPLY, b"x"));
    p.send(&opt(
        OPT_SET_META_CONTEXT,
        &meta("disk", &["base:allocation"]),
    ));
    p.send(&opt(OPT_INFO, &name_and_u16s("nope", &[])));
    p.send(&opt(OPT_INFO, b"\0\0\0\x09disk"));
    p.send(&opt(OPT_STARTTLS, &[]));
    p.send(&opt(OPT_LIST_META_CONTEXT, &meta("disk", &["base:"])));
    p.send(&opt(
        OPT_LIST_META_CONTEXT,
        &meta("disk", &["x-other:thing"]),
    ));
    p.send(&opt(OPT_LIST, &[]));
    let r: Vec<(u32, u32)> = opt_replies(&p.take()).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        r,
        [
            (99, REP_ERR_UNSUP),
            (OPT_LIST, REP_ERR_INVALID),
            (OPT_STRUCTURED_REPLY, REP_ERR_INVALID),
            (OPT_SET_META_CONTEXT, REP_ERR_INVALID),
            (OPT_INFO, REP_ERR_UNKNOWN),
            (OPT_INFO, REP_ERR_INVALID),
            (OPT_STARTTLS, REP_ERR_UNSUP),
            (OPT_LIST_META_CONTEXT, REP_META_CONTEXT),
            (OPT_LIST_META_CONTEXT, REP_ACK),
            (OPT_LIST_META_CONTEXT, REP_ACK),
            (OPT_LIST, REP_SERVER),
            (OPT_LIST, REP_ACK),
        ]
    );
    // Oversized option: skipped in pieces without buffering, TOO_BIG.
    p.send(&opt(OPT_INFO, &[])[..12]);
    p.send(&(1u32 << 24).to_be_bytes());
    for _ in 0..256 {
        p.send(&[0u8; 65536]);
    }
    assert!(p.max_need <= 65536 + 16, "{}", p.max_need);
    assert!(p.pending.is_empty());
    assert_eq!(opt_replies(&p.take())[0].1, REP_ERR_TOO_BIG);
    p.send(&opt(OPT_ABORT, &[]));
    assert_eq!(opt_replies(&p.take()), [(OPT_ABORT, REP_ACK, vec![])]);
    assert_eq!(p.closed, Some(Ok(())));
}

#[test]
fn export_name_unknown_or_huge_closes() {
    let mut p = Pair::rw(4096);
    p.send(&3u32.to_be_bytes());
    p.send(&opt(OPT_EXPORT_NAME, b"nope"));
    assert_eq!(p.closed, Some(Err(Error::ExportNameRefused)));
    let mut p = Pair::rw(4096);
    p.send(&3u32.to_be_bytes());
    p.send(&opt(OPT_EXPORT_NAME, &[])[..12]);
    p.send(&(1u32 << 20).to_be_bytes());
    assert_eq!(p.closed, Some(Err(Error::ExportNameRefused)));
    // Without NO_ZEROES the reply carries 124 zero bytes.
    let mut p = Pair::rw(4096);
    p.send(&1u32.to_be_bytes());
    p.send(&opt(OPT_EXPORT_NAME, b"disk"));
    assert_eq!(p.take().len(), 134);
    assert_eq!(p.events, ["ready 0"]);
}

#[test]
fn client_flags_are_checked() {
    for flags in [0u32, 2, 4, 0xffff_ffff] {
        let mut p = Pair::rw(4096);
        p.send(&flags.to_be_bytes());
        assert_eq!(p.closed, Some(Err(Error::ClientFlags { flags })));
    }
}

#[test]
fn tls_required_until_starttls() {
    let e = ExportInfo::new("disk", 4096);
    let mut p = Pair::new(vec![e], TlsPolicy::Required);
    p.send(&3u32.to_be_bytes());
    p.send(&opt(OPT_STRUCTURED_REPLY, &[]));
    p.send(&opt(OPT_GO, &name_and_u16s("disk", &[])));
    p.send(&opt(OPT_LIST, &[]));
    let r: Vec<u32> = opt_replies(&p.take()).iter().map(|r| r.1).collect();
    assert_eq!(r, [REP_ERR_TLS_REQD; 3]);
    p.send(&opt(OPT_STARTTLS, &[]));
    assert_eq!(opt_replies(&p.take()), [(OPT_STARTTLS, REP_ACK, vec![])]);
    assert_eq!(p.events, ["starttls"]);
    assert!(p.s.tls_active());
    p.send(&opt(OPT_STARTTLS, &[]));
    assert_eq!(opt_replies(&p.take())[0].1, REP_ERR_INVALID);
    p.send(&opt(OPT_GO, &name_and_u16s("disk", &[])));
    let r = opt_replies(&p.take());
    assert_eq!(r.last().unwrap().1, REP_ACK);
    // Read-only export: READ_ONLY flag, no DF (structured not negotiated after TLS).
    let flags = u16::from_be_bytes([r[1].2[10], r[1].2[11]]);
    assert_eq!(
        flags,
        TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA
    );
    // EXPORT_NAME in clear text under a TLS requirement closes.
    let mut p = Pair::new(vec![ExportInfo::new("disk", 4096)], TlsPolicy::Required);
    p.send(&3u32.to_be_bytes());
    p.send(&opt(OPT_EXPORT_NAME, b"disk"));
    assert_eq!(p.closed, Some(Err(Error::TlsRequired)));
}

fn simple_session(writable: bool) -> Pair {
    let mut e = ExportInfo::new("disk", 1 << 20);
    e.writable = writable;
    e.block_size.maximum = 1 << 20;
    let mut p = Pair::new(vec![e], TlsPolicy::Disabled);
    p.send(&3u32.to_be_bytes());
    p.send(&opt(OPT_EXPORT_NAME, b"disk"));
    assert_eq!(p.take().len(), 10);
    p
}

#[test]
fn invalid_requests_get_errnos_and_the_stream_stays_in_sync() {
    let mut p = simple_session(true);
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (req(0, CMD_READ, 1, (1 << 20) - 1, 2), EINVAL),
        (req(0, CMD_READ, 2, u64::MAX - 1, 4), EINVAL),
        (req(0, CMD_READ, 3, 0, 0), EINVAL),
        (req(0, CMD_READ, 4, 0, (1 << 20) + 1), EOVERFLOW),
        (req(CMD_FLAG_DF, CMD_READ, 5, 0, 1), EINVAL),
        (req(0, 99, 6, 0, 1), EINVAL),
        (req(0x8000, CMD_FLUSH, 7, 0, 0), EINVAL),
        (req(0, CMD_FLUSH, 8, 1, 0), EINVAL),
        (req(0, CMD_BLOCK_STATUS, 9, 0, 512), EINVAL),
        (req(0, CMD_TRIM, 10, 1 << 20, 1), ENOSPC),
        (req(CMD_FLAG_FAST_ZERO, CMD_WRITE_ZEROES, 11, 0, 1), EINVAL),
        (req(0, CMD_WRITE_ZEROES, 12, (1 << 20) - 1, 2), ENOSPC),
    ];
    for (r, errno) in &cases {
        p.send(r);
        let out = p.take();
        assert_eq!(out.len(), 16, "{r:02x?}");
        assert_eq!(simple(&out).0, *errno, "{r:02x?}");
    }
    // A write beyond the end: ENOSPC, its payload skipped, the next request parsed.
    let mut w = req(0, CMD_WRITE, 20, (1 << 20) - 2, 4);
    w.extend_from_slice(b"WXYZ");
    w.extend(req(0, CMD_FLUSH, 21, 0, 0));
    p.send(&w);
    let out = p.take();
    assert_eq!(simple(&out), (ENOSPC, 20));
    assert_eq!(simple(&out[16..]), (0, 21));
    // An oversized write (64 MiB): EOVERFLOW, skipped in pieces, no buffering.
    p.send(&req(0, CMD_WRITE, 22, 0, 64 << 20));
    assert_eq!(simple(&p.take()), (EOVERFLOW, 22));
    for _ in 0..(64 << 20) / 65536 {
        p.send(&[0x55; 65536]);
        assert!(p.pending.is_empty());
    }
    p.send(&req(0, CMD_READ, 23, 0, 4));
    let out = p.take();
    assert_eq!(simple(&out), (0, 23));
    assert_eq!(&out[16..], &[0; 4]);
    assert!(p.max_need <= 28 + (1 << 20), "{}", p.max_need);
    assert!(p.disk.iter().all(|&b| b == 0));
    // A bad magic closes.
    p.send(&[0; 28]);
    assert_eq!(p.closed, Some(Err(Error::RequestMagic { magic: 0 })));
}

#[test]
fn read_only_export_refuses_writes_with_eperm() {
    let mut p = simple_session(false);
    let mut w = req(0, CMD_WRITE, 1, 0, 2);
    w.extend_from_slice(b"hi");
    p.send(&w);
    p.send(&req(0, CMD_TRIM, 2, 0, 2));
    p.send(&req(0, CMD_WRITE_ZEROES, 3, 0, 2));
    p.send(&req(CMD_FLAG_FUA, CMD_READ, 4, 0, 2));
    let out = p.take();
    assert_eq!(simple(&out), (EPERM, 1));
    assert_eq!(simple(&out[16..]), (EPERM, 2));
    assert_eq!(simple(&out[32..]), (EPERM, 3));
    assert_eq!(simple(&out[48..]), (0, 4));
    assert_eq!(out.len(), 66);
    assert!(p.events.iter().all(|e| !e.starts_with("write")));
}

#[test]
fn structured_errors_and_block_status_clipping() {
    let mut p = Pair::rw(1 << 20);
    negotiate(&mut p);
    // Errors use an ERROR chunk once structured replies are on.
    p.send(&req(0, CMD_READ, 9, 1 << 20, 1));
    let c = chunks(&p.take());
    assert_eq!(
        (c[0].0, c[0].1, c[0].2),
        (REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 9)
    );
    assert_eq!(be32(&c[0].3), EINVAL);
    // reply_block_status clips, merges, skips empty extents, never sends none.
    let to = nbd_proto::ReplyTo {
        cookie: 1,
        command: CMD_BLOCK_STATUS,
        flags: 0,
        offset: 0,
        length: 1000,
    };
    let mut out = Vec::new();
    p.s.reply_block_status(&to, &[(0, 0), (100, 3), (200, 3), (5000, 0)], &mut out);
    let d: Vec<u32> = chunks(&out)[0].3.chunks(4).map(be32).collect();
    assert_eq!(d, [1, 300, 3, 700, 0]);
    out.clear();
    p.s.reply_block_status(&to, &[], &mut out);
    let d: Vec<u32> = chunks(&out)[0].3.chunks(4).map(be32).collect();
    assert_eq!(d, [1, 1000, 0]);
}
