//! Bytes laid out by `doc/proto.md` (NetworkBlockDevice/nbd), written as hex
//! literals: the encoders must produce them, the session must accept them.

use nbd_proto::consts::*;
use nbd_proto::{wire, Command, Event, ExportInfo, ServerSession, SessionConfig};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn magics() {
    // "NBDMAGIC", "IHAVEOPT", option reply magic, request and reply magics.
    assert_eq!(NBDMAGIC.to_be_bytes().to_vec(), hex("4e42444d41474943"));
    assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
    assert_eq!(IHAVEOPT.to_be_bytes().to_vec(), hex("49484156454F5054"));
    assert_eq!(REPLY_MAGIC.to_be_bytes().to_vec(), hex("0003e889045565a9"));
    assert_eq!(REQUEST_MAGIC.to_be_bytes().to_vec(), hex("25609513"));
    assert_eq!(SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec(), hex("67446698"));
    assert_eq!(
        STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec(),
        hex("668e33ef")
    );
}

#[test]
fn greeting_is_nbdmagic_ihaveopt_and_flags() {
    let mut s = ServerSession::new(SessionConfig::default()).unwrap();
    let mut out = Vec::new();
    s.handle_input(&[], &mut out).unwrap();
    // FIXED_NEWSTYLE (bit 0) | NO_ZEROES (bit 1).
    assert_eq!(out, hex("4e42444d41474943 49484156454f5054 0003"));
}

#[test]
fn option_and_reply_layouts() {
    let mut out = Vec::new();
    wire::option_reply(&mut out, OPT_STRUCTURED_REPLY, REP_ACK, &[]);
    assert_eq!(out, hex("0003e889045565a9 00000008 00000001 00000000"));
    out.clear();
    wire::rep_server(&mut out, "ab");
    assert_eq!(
        out,
        hex("0003e889045565a9 00000003 00000002 00000006 00000002 6162")
    );
    out.clear();
    wire::info_export(&mut out, OPT_GO, 0x10_0000, 0x018d);
    assert_eq!(
        out,
        hex("0003e889045565a9 00000007 00000003 0000000c 0000 0000000000100000 018d")
    );
    out.clear();
    wire::info_block_size(&mut out, OPT_INFO, 1, 4096, 32 << 20);
    assert_eq!(
        out,
        hex("0003e889045565a9 00000006 00000003 0000000e 0003 00000001 00001000 02000000")
    );
    out.clear();
    wire::rep_meta_context(&mut out, OPT_SET_META_CONTEXT, 1, "base:allocation");
    let mut want = hex("0003e889045565a9 0000000a 00000004 00000013 00000001");
    want.extend_from_slice(b"base:allocation");
    assert_eq!(out, want);
    out.clear();
    wire::option_reply(&mut out, 42, REP_ERR_UNSUP, &[]);
    assert_eq!(out, hex("0003e889045565a9 0000002a 80000001 00000000"));
    // EXPORT_NAME reply: size, flags, 124 zero bytes unless NO_ZEROES.
    out.clear();
    wire::export_name_reply(&mut out, 512, 0x0003, false);
    assert_eq!(out.len(), 8 + 2 + 124);
    assert_eq!(out[..10], hex("0000000000000200 0003")[..]);
}

#[test]
fn reply_layouts() {
    let mut out = Vec::new();
    wire::simple_reply(&mut out, EINVAL, 0x0102030405060708);
    assert_eq!(out, hex("67446698 00000016 0102030405060708"));
    out.clear();
    wire::chunk_offset_data(&mut out, 7, true, 0x200, b"xy");
    assert_eq!(
        out,
        hex("668e33ef 0001 0001 0000000000000007 0000000a 0000000000000200 7879")
    );
    out.clear();
    wire::chunk_offset_hole(&mut out, 7, false, 0x200, 0x1000);
    assert_eq!(
        out,
        hex("668e33ef 0000 0002 0000000000000007 0000000c 0000000000000200 00001000")
    );
    out.clear();
    wire::chunk_block_status(&mut out, 7, true, 1, &[(0x1000, 3), (0x200, 0)]);
    assert_eq!(
        out,
        hex("668e33ef 0001 0005 0000000000000007 00000014 00000001 00001000 00000003 00000200 00000000")
    );
    out.clear();
    wire::chunk_none(&mut out, 7);
    assert_eq!(out, hex("668e33ef 0001 0000 0000000000000007 00000000"));
    out.clear();
    wire::chunk_error(&mut out, 7, true, EIO, "", None);
    assert_eq!(
        out,
        hex("668e33ef 0001 8001 0000000000000007 00000006 00000005 0000")
    );
    out.clear();
    wire::chunk_error(&mut out, 7, true, EIO, "e", Some(0x400));
    assert_eq!(
        out,
        hex("668e33ef 0001 8002 0000000000000007 0000000f 00000005 0001 65 0000000000000400")
    );
}

#[test]
fn session_accepts_published_request_bytes() {
    let mut e = ExportInfo::new("", 1 << 20);
    e.writable = true;
    let mut s = ServerSession::new(SessionConfig::new(vec![e])).unwrap();
    let mut out = Vec::new();
    s.handle_input(&[], &mut out).unwrap();
    // Client flags FIXED_NEWSTYLE|NO_ZEROES, then NBD_OPT_EXPORT_NAME "".
    let mut input = hex("00000003 49484156454f5054 00000001 00000000");
    // NBD_CMD_WRITE (FUA) of 2 bytes at 0x200, cookie 0x11.
    input.extend(hex(
        "25609513 0001 0001 0000000000000011 0000000000000200 00000002 abcd",
    ));
    // NBD_CMD_READ of 2 bytes at 0x200, cookie 0x12.
    input.extend(hex(
        "25609513 0000 0000 0000000000000012 0000000000000200 00000002",
    ));
    // NBD_CMD_DISC.
    input.extend(hex(
        "25609513 0000 0002 0000000000000013 0000000000000000 00000000",
    ));
    let mut pos = 0;
    let mut seen = Vec::new();
    out.clear();
    loop {
        let st = s.handle_input(&input[pos..], &mut out).unwrap();
        pos += st.consumed;
        match st.event {
            Event::Continue => {}
            Event::Ready { export } => seen.push(format!("ready {export}")),
            Event::Request(r) => {
                seen.push(format!("{:?}", r.command));
                match r.command {
                    Command::Write { .. } => s.reply_ok(&r.reply, &mut out),
                    Command::Read { .. } => s.reply_read(&r.reply, &[0xab, 0xcd], &mut out),
                    _ => unreachable!(),
                }
            }
            Event::Disconnect => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pos, input.len());
    assert_eq!(
        seen,
        [
            "ready 0",
            "Write { offset: 512, data: [171, 205], fua: true }",
            "Read { offset: 512, length: 2, df: false }"
        ]
    );
    // size 1 MiB, flags HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES
    // (no 124 zeroes), then the two simple replies.
    let want = hex("0000000000100000 006d 67446698 00000000 0000000000000011 \
         67446698 00000000 0000000000000012 abcd");
    assert_eq!(out, want);
}
