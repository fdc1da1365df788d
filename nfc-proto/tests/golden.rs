//! Golden transcripts of the NFC wire, one per message the public VDDK 8
//! traces describe (OpenVixDiskLib `docs/nfc_auth.md`, `nfc_open.md`,
//! `nfc_read.md`, `nfc_write.md`, newest versions; facts only).
//!
//! **These bytes are derived from documented values, not captured.** No
//! document holds a hex dump of a frame: each gives field values at
//! offsets (or a summary line such as `C: type=7 opId=18 size=44
//! offset=0 length=66048`). The vectors below are our byte encoding of
//! those values, made independently of our encoder. Values the documents
//! elide are assumed and named as such: the handle H =
//! `0x0000000100000007`, the path `[datastore0] vm1/vm1.vmdk`, a 10 GiB
//! capacity, geometry 1305/255/63, op ids 0–9 (14 and 18 are the
//! documents').
//!
//! Each vector is checked both ways: our encoder produces it, and our
//! decoder (and the server session the simulator runs) accepts it and
//! answers with the documented reply bytes.
//!
//! The FastLZ vectors at the end are real: blocks written by the
//! reference FastLZ library (levels 1 and 2) from the inputs given, which
//! our decoder must read.

use nfc_proto::aio::{
    self, Compression, Decoded, Io, Kind, OpenFile, OpenSession, Opened, QueryAllocated, SockOpts,
};
use nfc_proto::authd::{self, Command};
use nfc_proto::classic::{self, ClientHandshake, Message, FRAME_LEN};
use nfc_proto::client::{Event, Tracker};
use nfc_proto::compress;
use nfc_proto::server::{ReadRequest, Request, ServerSession};

/// Hex with spaces, newlines and `|` separators ignored.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    assert_eq!(digits.len() % 2, 0, "odd hex: {s}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// A classic frame: the bytes shown, zero-padded to 264.
fn classic_frame(s: &str) -> Vec<u8> {
    let mut f = hex(s);
    f.resize(FRAME_LEN, 0);
    f
}

const H: u64 = 0x0000_0001_0000_0007;
const PATH: &str = "[datastore0] vm1/vm1.vmdk";
const SESSION_ID: &str = "52cdebc5-b7ee-359a-1dec-76f0bc105ac5";

// ---- nfc_auth.md, "authd" (TCP 902): the lines after the TLS handshake.

/// `SESSION <sessionId>`: 46 bytes, the ssl_hook record of nfc_auth.md.
const SESSION: &str = "53 45 53 53 49 4f 4e 20 35 32 63 64 65 62 63 35 2d 62 37 65 65 2d 33 35 39 61 2d 31 64 65 63 2d 37 36 66 30 62 63 31 30 35 61 63 35 0d 0a";
/// `BANNER ` with its trailing space.
const BANNER: &str = "42 41 4e 4e 45 52 20 0d 0a";
/// `THUMBPRINT_SHA2 PlainText`.
const THUMB: &str =
    "54 48 55 4d 42 50 52 49 4e 54 5f 53 48 41 32 20 50 6c 61 69 6e 54 65 78 74 0d 0a";
/// `PROXY vpxa-nfc` (nbd, vCenter ticket).
const PROXY: &str = "50 52 4f 58 59 20 76 70 78 61 2d 6e 66 63 0d 0a";
/// `PROXY vpxa-nfcssl` (nbdssl).
const PROXY_SSL: &str = "50 52 4f 58 59 20 76 70 78 61 2d 6e 66 63 73 73 6c 0d 0a";
/// `PROXY nfc` (nbd, bare-ESXi ticket).
const PROXY_ESXI: &str = "50 52 4f 58 59 20 6e 66 63 0d 0a";
/// `200 Connect ha-nfc`.
const CONNECT: &str = "32 30 30 20 43 6f 6e 6e 65 63 74 20 68 61 2d 6e 66 63 0d 0a";

#[test]
fn authd_lines() {
    let mut out = Vec::new();
    authd::push_command(&mut out, &Command::Session(SESSION_ID.into()));
    assert_eq!(out, hex(SESSION));
    assert_eq!(out.len(), 46);
    // The ssl_hook record's first bytes.
    assert!(out.starts_with(&hex("53455353494f4e2035326364656263352d")));
    for (cmd, want) in [
        (Command::Banner, BANNER),
        (
            Command::ThumbprintSha2(authd::THUMBPRINT_PLAINTEXT.into()),
            THUMB,
        ),
        (
            Command::Proxy(authd::proxy_service(authd::SERVICE_VCENTER, false)),
            PROXY,
        ),
        (
            Command::Proxy(authd::proxy_service(authd::SERVICE_VCENTER, true)),
            PROXY_SSL,
        ),
        (
            Command::Proxy(authd::proxy_service(authd::SERVICE_ESXI, false)),
            PROXY_ESXI,
        ),
    ] {
        let mut out = Vec::new();
        authd::push_command(&mut out, &cmd);
        assert_eq!(out, hex(want), "{cmd:?}");
        // The server side reads it back.
        let (line, n) = authd::take_line(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(authd::parse_command(&line), cmd);
    }
    let (line, _) = authd::take_line(&hex(SESSION)).unwrap().unwrap();
    assert_eq!(
        authd::parse_command(&line),
        Command::Session(SESSION_ID.into())
    );
    // Replies: 200 Connect, the 220 banner (the answer to BANNER too).
    let mut out = Vec::new();
    authd::push_reply(&mut out, 200, authd::proxy_reply(false));
    assert_eq!(out, hex(CONNECT));
    let banner = "220 VMware Authentication Daemon Version 1.10: SSL Required, ServerDaemonProtocol:SOAP, MKSDisplayProtocol:VNC , VMXARGS supported, NFCSSL supported/t, SHA256 supported";
    assert_eq!(authd::BANNER, banner);
    assert_eq!(authd::parse_reply(banner).unwrap().code, 220);
    let r = authd::parse_reply("200 AB:CD:EF").unwrap();
    assert_eq!((r.code, r.text.as_str()), (200, "AB:CD:EF"));
}

// ---- nfc_open.md, "Classic handshake".

const C43: &str = "2b 00 00 00 50 6c 61 69 6e 54 65 78 74 00 00 00";
const C33: &str = "21 00 00 00";
/// The `1` at frame offset 16 is our reading of "offset 16" (A1).
const S36: &str = "24 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00";
const C51: &str = "33 00 00 00 0b 00 00 00";
const S51: &str = C51;
const C54: &str = "36 00 00 00 04 00 00 00 07 00 00 00";
/// `vddk` then `nbdmode`, raw.
const RAW: &str = "76 64 64 6b 6e 62 64 6d 6f 64 65";
const C55: &str = "37 00 00 00 03 00 00 00";
const C52: &str = "34 00 00 00";
const S52: &str = C52;
/// Session complete, after CLOSE_SESSION.
const C4: &str = "04 00 00 00";

fn client_handshake_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    for f in [C43, C33, C51, C54] {
        b.extend(classic_frame(f));
    }
    b.extend(hex(RAW));
    for f in [C55, C52] {
        b.extend(classic_frame(f));
    }
    b
}

#[test]
fn classic_handshake_both_ways() {
    // Our client writes the documented frames, in order, waiting where
    // VDDK waits.
    let mut c = ClientHandshake::vddk();
    let mut out = Vec::new();
    c.poll_output(&mut out);
    assert_eq!(out, [classic_frame(C43), classic_frame(C33)].concat());
    assert_eq!(c.poll_output(&mut out), 0, "waits for 36");
    assert_eq!(c.handle_input(&classic_frame(S36)).unwrap(), FRAME_LEN);
    let mut out = Vec::new();
    c.poll_output(&mut out);
    assert_eq!(out, classic_frame(C51));
    assert_eq!(c.handle_input(&classic_frame(S51)).unwrap(), FRAME_LEN);
    assert_eq!(c.server_version(), Some(11));
    let mut out = Vec::new();
    c.poll_output(&mut out);
    let want = [
        classic_frame(C54),
        hex(RAW),
        classic_frame(C55),
        classic_frame(C52),
    ]
    .concat();
    assert_eq!(out, want);
    assert_eq!(c.handle_input(&classic_frame(S52)).unwrap(), FRAME_LEN);
    assert!(c.is_done());
    let mut out = Vec::new();
    Message::SessionComplete.encode(&mut out);
    assert_eq!(out, classic_frame(C4));

    // The server session takes the documented bytes and answers 36, 51, 52.
    let mut s = ServerSession::new();
    let input = client_handshake_bytes();
    let mut pos = 0;
    while let (n @ 1.., None) = s.handle_input(&input[pos..]).unwrap() {
        pos += n;
    }
    assert_eq!(pos, input.len());
    let mut out = Vec::new();
    s.poll_output(&mut out);
    assert_eq!(
        out,
        [classic_frame(S36), classic_frame(S51), classic_frame(S52)].concat()
    );
    assert!(s.in_aio());
    // Every frame parses as what it is.
    assert_eq!(
        classic::take_frame(&classic_frame(C43)).unwrap(),
        Some(Message::AuthMode("PlainText".into()))
    );
    assert_eq!(
        classic::take_frame(&classic_frame(C54)).unwrap(),
        Some(Message::ConnectionData {
            name_len: 4,
            op_len: 7
        })
    );
}

// ---- nfc_open.md, "AIO framing", "OPEN_SESSION / sockopts / resource
// pool", "OPEN_FILE", "DDB_GET request/reply layout"; nfc_read.md
// "Request", "Reply", "QueryAllocatedBlocks"; nfc_write.md "Fragments
// and the single reply".

const OPEN_SESSION_REQ: &str = "7a da 00 a1 02 00 00 00 10 00 00 00 00 00 00 00 | 00 00 00 00 00 00 01 00 04 00 00 00 00 00 00 00";
const OPEN_SESSION_REP: &str = "7a da 00 a1 02 00 00 00 10 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
const SOCK_OPTS_REQ: &str =
    "7a da 00 a1 09 00 00 00 0c 00 00 00 01 00 00 00 | 00 00 00 00 00 00 00 00 00 00 00 00";
/// Values as seen; their order is our reading.
const SOCK_OPTS_REP: &str =
    "7a da 00 a1 09 00 00 00 0c 00 00 00 01 00 00 00 | f8 8e 19 00 f8 8e 19 00 01 00 00 00";
const RES_POOL_REQ: &str = "7a da 00 a1 16 00 00 00 04 00 00 00 02 00 00 00 | 01 00 00 00";
/// The reply's payload is undocumented: we echo.
const RES_POOL_REP: &str = RES_POOL_REQ;
const OPEN_FILE_REQ: &str = "
  7a da 00 a1 04 00 00 00 3c 00 00 00 03 00 00 00
  19 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
  02 00 00 00 1e 00 00 00 00 00 00 00 00 00 00 00
  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
  00 00 00 00 00 00 00 00 00 00 00 00 5b 64 61 74
  61 73 74 6f 72 65 30 5d 20 76 6d 31 2f 76 6d 31
  2e 76 6d 64 6b";
const OPEN_FILE_REP: &str = "
  7a da 00 a1 04 00 00 00 3c 00 00 00 03 00 00 00
  00 00 00 00 00 00 00 00 07 00 00 00 01 00 00 00
  02 00 00 00 1e 00 00 00 00 00 00 00 00 00 00 80
  02 00 00 00 00 02 00 00 19 05 00 00 ff 00 00 00
  3f 00 00 00 00 00 00 00 00 00 00 00";
const DDB_REQ: &str = "
  7a da 00 a1 0b 00 00 00 10 00 00 00 04 00 00 00
  07 00 00 00 01 00 00 00 0b 00 00 00 00 00 00 00
  61 64 61 70 74 65 72 54 79 70 65";
const DDB_REP_FOUND: &str = "
  7a da 00 a1 0b 00 00 00 10 00 00 00 04 00 00 00
  00 00 00 00 00 00 00 00 00 00 00 00 08 00 00 00
  6c 73 69 6c 6f 67 69 63";
const DDB_REP_NOT_FOUND: &str = "
  7a da 00 a1 0b 00 00 00 10 00 00 00 04 00 00 00
  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
const READ_1_REQ: &str = "
  7a da 00 a1 07 00 00 00 2c 00 00 00 05 00 00 00
  07 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00
  00 02 00 00 00 00 00 00 00 02 00 00 00 00 00 00
  00 02 00 00 00 02 00 00 00 00 00 00";
/// Then 512 data bytes.
const READ_1_REP: &str = "
  7a da 00 a1 07 00 00 00 2c 00 00 00 05 00 00 00
  00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
  00 02 00 00 00 00 00 00 00 02 00 00 00 00 00 00
  00 02 00 00 00 02 00 00 00 00 00 00";
/// nfc_read.md's example: 129 sectors, op 18.
const READ_129_REQ: &str = "
  7a da 00 a1 07 00 00 00 2c 00 00 00 12 00 00 00
  07 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00
  00 00 00 00 00 00 00 00 00 02 01 00 00 00 00 00
  00 02 01 00 00 02 01 00 00 00 00 00";
const READ_129_REP0: &str = "7a da 00 a1 07 00 00 00 2c 00 00 00 12 00 00 00 | 00 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 02 01 00 | 00 00 00 00 | 00 00 01 00 | 00 00 01 00 | 00 00 00 00";
const READ_129_REP1: &str = "7a da 00 a1 07 00 00 00 2c 00 00 00 12 00 00 00 | 00 00 00 00 00 00 00 00 | 01 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 02 01 00 | 00 00 01 00 | 00 02 00 00 | 00 02 00 00 | 00 00 00 00";
/// nfc_write.md's example: 129 sectors, op 14, one ACK.
const WRITE_129_FRAG0: &str = "7a da 00 a1 07 00 00 00 2c 00 00 00 0e 00 00 00 | 07 00 00 00 01 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 02 01 00 | 00 00 00 00 | 00 00 01 00 | 00 00 01 00 | 00 00 00 00";
const WRITE_129_FRAG1: &str = "7a da 00 a1 07 00 00 00 2c 00 00 00 0e 00 00 00 | 07 00 00 00 01 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 02 01 00 | 00 00 01 00 | 00 02 00 00 | 00 02 00 00 | 00 00 00 00";
/// @0, @8, @16 and @36 undocumented: zeros.
const WRITE_129_ACK: &str = "7a da 00 a1 07 00 00 00 2c 00 00 00 0e 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 02 01 00 | 00 00 00 00 | 00 02 01 00 | 00 00 00 00 | 00 00 00 00";
/// A 64 KiB read asking for FastLZ: opcode `1 | 2 << 32`.
const READ_FASTLZ_REQ: &str = "
  7a da 00 a1 07 00 00 00 2c 00 00 00 06 00 00 00
  07 00 00 00 01 00 00 00 01 00 00 00 02 00 00 00
  00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00
  00 00 01 00 00 00 01 00 00 00 00 00";
const CLOSE_FILE_REQ: &str =
    "7a da 00 a1 05 00 00 00 08 00 00 00 07 00 00 00 | 07 00 00 00 01 00 00 00";
/// Replies echo (payload undocumented).
const CLOSE_FILE_REP: &str = CLOSE_FILE_REQ;
const CLOSE_SESSION_REQ: &str = "7a da 00 a1 03 00 00 00 04 00 00 00 08 00 00 00 | 00 00 00 00";
const CLOSE_SESSION_REP: &str = CLOSE_SESSION_REQ;
/// 1 MiB chunks from 0, 16 chunks.
const QAB_REQ: &str = "
  7a da 00 a1 0d 00 00 00 30 00 00 00 09 00 00 00
  07 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00
  00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00
  10 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
/// The body echoed, then 16 bits padded to 4 bytes (chunks 0 and 2 here).
const QAB_REP: &str = "
  7a da 00 a1 0d 00 00 00 30 00 00 00 09 00 00 00
  07 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00
  00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00
  10 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
  05 00 00 00";

fn sector(i: u32) -> Vec<u8> {
    (0..512u32).map(|b| (b ^ i) as u8).collect()
}

/// The client's AIO requests, in VDDK's order, as our tracker writes them.
#[test]
fn aio_requests_as_our_client_writes_them() {
    let mut t = Tracker::new();
    let mut out = Vec::new();
    let mut next = |f: &mut dyn FnMut(&mut Tracker, &mut Vec<u8>) -> u32, want: &str| {
        out.clear();
        let op = f(&mut t, &mut out);
        assert_eq!(out, hex(want), "op {op}");
        op
    };
    assert_eq!(
        next(
            &mut |t, o| t.open_session(o, OpenSession::default()).unwrap(),
            OPEN_SESSION_REQ
        ),
        0
    );
    next(&mut |t, o| t.set_sock_opts(o).unwrap(), SOCK_OPTS_REQ);
    next(&mut |t, o| t.set_res_pool(o, 1).unwrap(), RES_POOL_REQ);
    let open = OpenFile {
        path: PATH.into(),
        read_only: true,
    };
    next(&mut |t, o| t.open_file(o, &open).unwrap(), OPEN_FILE_REQ);
    next(&mut |t, o| t.ddb_get(o, H, "adapterType").unwrap(), DDB_REQ);
    next(&mut |t, o| t.read(o, H, 512, 512).unwrap(), READ_1_REQ);
    next(
        &mut |t, o| {
            t.set_compression(Compression::FastLz);
            let op = t.read(o, H, 0, 65536).unwrap();
            t.set_compression(Compression::None);
            op
        },
        READ_FASTLZ_REQ,
    );
    next(&mut |t, o| t.close_file(o, H).unwrap(), CLOSE_FILE_REQ);
    next(&mut |t, o| t.close_session(o).unwrap(), CLOSE_SESSION_REQ);
    let q = QueryAllocated {
        handle: H,
        chunk_size: 1 << 20,
        start: 0,
        chunks: 16,
    };
    assert_eq!(
        next(&mut |t, o| t.query_allocated(o, &q).unwrap(), QAB_REQ),
        9
    );
    // Ops 10–13 elsewhere; then the documents' op 14 (write) and 18 (read).
    for _ in 10..14 {
        t.set_res_pool(&mut Vec::new(), 1).unwrap();
    }
    let data: Vec<u8> = (0..129).flat_map(sector).collect();
    out.clear();
    assert_eq!(t.write(&mut out, H, 0, &data).unwrap(), 14);
    let want = [
        hex(WRITE_129_FRAG0),
        data[..65536].to_vec(),
        hex(WRITE_129_FRAG1),
        data[65536..].to_vec(),
    ]
    .concat();
    assert!(out == want, "the write's two fragments");
    for _ in 15..18 {
        t.set_res_pool(&mut Vec::new(), 1).unwrap();
    }
    out.clear();
    assert_eq!(t.read(&mut out, H, 0, 66048).unwrap(), 18);
    assert_eq!(out, hex(READ_129_REQ));
}

fn requests() -> Vec<(&'static str, Vec<u8>)> {
    let data: Vec<u8> = (0..129).flat_map(sector).collect();
    vec![
        ("OPEN_SESSION", hex(OPEN_SESSION_REQ)),
        ("SET_SOCK_OPTS", hex(SOCK_OPTS_REQ)),
        ("SET_RES_POOL", hex(RES_POOL_REQ)),
        ("OPEN_FILE", hex(OPEN_FILE_REQ)),
        ("DDB_GET", hex(DDB_REQ)),
        ("IO read 1", hex(READ_1_REQ)),
        ("IO read FastLZ", hex(READ_FASTLZ_REQ)),
        ("CLOSE_FILE", hex(CLOSE_FILE_REQ)),
        ("CLOSE_SESSION", hex(CLOSE_SESSION_REQ)),
        ("QueryAllocatedBlocks", hex(QAB_REQ)),
        (
            "IO write frag 0",
            [hex(WRITE_129_FRAG0), data[..65536].to_vec()].concat(),
        ),
        (
            "IO write frag 1",
            [hex(WRITE_129_FRAG1), data[65536..].to_vec()].concat(),
        ),
        ("IO read 129", hex(READ_129_REQ)),
    ]
}

/// Every documented request decodes whole.
#[test]
fn aio_requests_decode() {
    for (what, bytes) in requests() {
        match aio::decode_request(&bytes).unwrap() {
            Decoded::Frame { consumed, frame } => {
                assert_eq!(consumed, bytes.len(), "{what}");
                assert_eq!(
                    frame.header.size as usize,
                    Kind::from_u32(frame.header.kind)
                        .unwrap()
                        .fixed_len()
                        .unwrap(),
                    "{what}: size counts the fixed payload only"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let req = hex(READ_129_REQ);
    let d = aio::decode_request(&req).unwrap();
    let Decoded::Frame { frame, .. } = d else {
        panic!()
    };
    let io = Io::parse(frame.fixed).unwrap();
    assert_eq!(
        io,
        Io::read_request(H, 0, 66048, Compression::None),
        "the length at 24, 32 and 36"
    );
}

/// The server session (what the simulator runs) takes the documented
/// requests and answers with the documented replies.
#[test]
fn the_server_answers_in_the_documented_layout() {
    let mut s = ServerSession::new();
    let hs = client_handshake_bytes();
    let mut pos = 0;
    while pos < hs.len() {
        pos += s.handle_input(&hs[pos..]).unwrap().0;
    }
    s.poll_output(&mut Vec::new());
    let disk: Vec<u8> = (0..129).flat_map(sector).collect();
    let mut answers = Vec::new();
    // The requests in order, with ops 10–13 and 15–17 skipped by the
    // session's numbering: feed the transcript up to QueryAllocatedBlocks
    // (op 9), in a second session the write (14) and the read (18).
    for (what, bytes) in requests().into_iter().take(10) {
        if what == "CLOSE_SESSION" {
            // Op 8 is spent on a SET_RES_POOL here, so that the query (op 9)
            // comes inside the session; CLOSE_SESSION goes last, as op 10.
            let mut r = hex(RES_POOL_REQ);
            r[12] = 8;
            s.handle_input(&r).unwrap();
            s.poll_output(&mut Vec::new());
            continue;
        }
        let (n, req) = s
            .handle_input(&bytes)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(n, bytes.len(), "{what}");
        let mut out = Vec::new();
        s.poll_output(&mut out);
        match req {
            None => {}
            Some(Request::OpenFile { op, open }) => {
                assert_eq!(
                    open,
                    OpenFile {
                        path: PATH.into(),
                        read_only: true
                    }
                );
                s.reply_opened(
                    &mut out,
                    op,
                    Opened {
                        handle: H,
                        file_type: 2,
                        flags: 0x1e,
                        capacity: 10 << 30,
                        sector_size: 512,
                        geometry: (1305, 255, 63),
                    },
                );
            }
            Some(Request::DdbGet { op, handle, key }) => {
                assert_eq!((handle, key.as_str()), (H, "adapterType"));
                s.reply_ddb(&mut out, op, Some("lsilogic"));
                s.reply_ddb(&mut out, op, None);
            }
            Some(Request::Read(r)) if r.compression == Compression::None => {
                assert_eq!((r.op, r.handle, r.offset, r.len), (5, H, 512, 512));
                s.reply_read(&mut out, &r, &sector(1)).unwrap();
            }
            Some(Request::Read(r)) => {
                assert_eq!(
                    (r.op, r.len, r.compression),
                    (6, 65536, Compression::FastLz)
                );
                s.reply_read(&mut out, &r, &vec![0u8; 65536]).unwrap();
            }
            Some(Request::CloseFile { op, handle }) => s.reply_file_closed(&mut out, op, handle),
            Some(Request::QueryAllocated { op, query }) => {
                s.reply_allocated(&mut out, op, &query, &[0b101])
            }
            other => panic!("{what}: {other:?}"),
        }
        answers.push((what, out));
    }
    let want = |what: &str| -> Vec<u8> {
        match what {
            "OPEN_SESSION" => hex(OPEN_SESSION_REP),
            "SET_SOCK_OPTS" => hex(SOCK_OPTS_REP),
            "SET_RES_POOL" => hex(RES_POOL_REP),
            "OPEN_FILE" => hex(OPEN_FILE_REP),
            "DDB_GET" => [hex(DDB_REP_FOUND), hex(DDB_REP_NOT_FOUND)].concat(),
            "IO read 1" => [hex(READ_1_REP), sector(1)].concat(),
            "CLOSE_FILE" => hex(CLOSE_FILE_REP),
            "QueryAllocatedBlocks" => hex(QAB_REP),
            _ => Vec::new(),
        }
    };
    for (what, got) in &answers {
        if *what == "IO read FastLZ" {
            // 64 KiB of zeros comes back as one FastLZ (level 2) fragment.
            let io = Io::parse(&got[16..60]).unwrap();
            assert_eq!(io.compression, Compression::FastLz);
            assert_eq!((io.handle, io.frag_len, io.total), (0, 65536, 65536));
            assert_eq!(got[60] >> 5, 1, "level 2");
            let mut back = vec![1u8; 65536];
            compress::decompress_fragment(Compression::FastLz, &got[60..], &mut back).unwrap();
            assert!(back.iter().all(|&b| b == 0));
            continue;
        }
        assert!(
            *got == want(what),
            "{what}: {:02x?}",
            &got[..got.len().min(80)]
        );
    }
    // CLOSE_SESSION, then classic 4 ends the connection.
    let mut close = hex(CLOSE_SESSION_REQ);
    close[12] = 10;
    let (n, _) = s.handle_input(&close).unwrap();
    assert_eq!(n, 20);
    let mut out = Vec::new();
    s.poll_output(&mut out);
    let mut want = hex(CLOSE_SESSION_REP);
    want[12] = 10;
    assert_eq!(out, want);
    s.handle_input(&classic_frame(C4)).unwrap();
    assert!(s.is_finished());

    // The documents' op 14 write and op 18 read, in a session whose ops
    // 0–13 went before.
    let mut s = ServerSession::new();
    let mut pos = 0;
    while pos < hs.len() {
        pos += s.handle_input(&hs[pos..]).unwrap().0;
    }
    s.handle_input(&hex(OPEN_SESSION_REQ)).unwrap();
    for op in 1..14u32 {
        let mut r = hex(RES_POOL_REQ);
        r[12..16].copy_from_slice(&op.to_le_bytes());
        s.handle_input(&r).unwrap();
    }
    let reqs = requests();
    let (n, req) = s.handle_input(&reqs[10].1).unwrap();
    assert_eq!((n, req), (reqs[10].1.len(), None));
    let (_, req) = s.handle_input(&reqs[11].1).unwrap();
    let Some(Request::Write {
        op,
        handle,
        offset,
        data,
    }) = req
    else {
        panic!("{req:?}")
    };
    assert_eq!((op, handle, offset), (14, H, 0));
    assert!(data == disk);
    let mut out = Vec::new();
    s.reply_written(&mut out, op, data.len() as u32);
    assert_eq!(out, hex(WRITE_129_ACK));
    for op in 15..18u32 {
        let mut r = hex(RES_POOL_REQ);
        r[12..16].copy_from_slice(&op.to_le_bytes());
        s.handle_input(&r).unwrap();
    }
    let (_, req) = s.handle_input(&reqs[12].1).unwrap();
    let Some(Request::Read(r)) = req else {
        panic!("{req:?}")
    };
    assert_eq!(
        r,
        ReadRequest {
            op: 18,
            handle: H,
            offset: 0,
            len: 66048,
            compression: Compression::None
        }
    );
    let mut out = Vec::new();
    s.reply_read(&mut out, &r, &disk).unwrap();
    let want = [
        hex(READ_129_REP0),
        disk[..65536].to_vec(),
        hex(READ_129_REP1),
        disk[65536..].to_vec(),
    ]
    .concat();
    assert!(out == want, "two fragments of the session's 64 KiB buffer");
    let mut heads = s.read_reply_heads(&r);
    assert_eq!(heads.len(), 120);
    assert_eq!(heads.split_off(60), hex(READ_129_REP1));
    assert_eq!(heads, hex(READ_129_REP0));
}

/// Our client accepts the documented replies, fragments in either order.
#[test]
fn the_client_accepts_the_documented_replies() {
    let mut sink = Vec::new();
    let mut t = Tracker::new();
    t.open_session(&mut sink, OpenSession::default()).unwrap();
    t.set_sock_opts(&mut sink).unwrap();
    t.set_res_pool(&mut sink, 1).unwrap();
    t.open_file(
        &mut sink,
        &OpenFile {
            path: PATH.into(),
            read_only: true,
        },
    )
    .unwrap();
    t.ddb_get(&mut sink, H, "adapterType").unwrap();
    t.read(&mut sink, H, 512, 512).unwrap();
    let mut got = vec![0u8; 512];
    let feed = |t: &mut Tracker, bytes: &[u8], got: &mut Vec<u8>| {
        let (n, ev) = t
            .handle_input(bytes, &mut |_, at, d| {
                got[at..at + d.len()].copy_from_slice(d)
            })
            .unwrap();
        assert_eq!(n, bytes.len());
        ev
    };
    assert_eq!(
        feed(&mut t, &hex(OPEN_SESSION_REP), &mut got),
        Some(Event::SessionOpened { op: 0 })
    );
    assert_eq!(
        feed(&mut t, &hex(SOCK_OPTS_REP), &mut got),
        Some(Event::SockOpts {
            op: 1,
            opts: SockOpts::ESXI8
        })
    );
    assert_eq!(
        feed(&mut t, &hex(RES_POOL_REP), &mut got),
        Some(Event::ResPoolSet { op: 2 })
    );
    assert_eq!(
        feed(&mut t, &hex(OPEN_FILE_REP), &mut got),
        Some(Event::Opened {
            op: 3,
            opened: Opened {
                handle: H,
                file_type: 2,
                flags: 0x1e,
                capacity: 10 << 30,
                sector_size: 512,
                geometry: (1305, 255, 63)
            }
        })
    );
    assert_eq!(
        feed(&mut t, &hex(DDB_REP_FOUND), &mut got),
        Some(Event::Ddb {
            op: 4,
            value: Some("lsilogic".into())
        })
    );
    assert_eq!(
        feed(&mut t, &[hex(READ_1_REP), sector(1)].concat(), &mut got),
        Some(Event::ReadDone { op: 5 })
    );
    assert_eq!(got, sector(1));
    // Not found; closes; allocation.
    let mut t2 = Tracker::new();
    for _ in 0..4 {
        t2.set_res_pool(&mut sink, 1).unwrap();
    }
    t2.ddb_get(&mut sink, H, "uuid").unwrap();
    assert_eq!(
        feed(&mut t2, &hex(DDB_REP_NOT_FOUND), &mut got),
        Some(Event::Ddb { op: 4, value: None })
    );
    for _ in 5..7 {
        t2.set_res_pool(&mut sink, 1).unwrap();
    }
    t2.close_file(&mut sink, H).unwrap();
    t2.close_session(&mut sink).unwrap();
    let q = QueryAllocated {
        handle: H,
        chunk_size: 1 << 20,
        start: 0,
        chunks: 16,
    };
    t2.query_allocated(&mut sink, &q).unwrap();
    assert_eq!(
        feed(&mut t2, &hex(CLOSE_FILE_REP), &mut got),
        Some(Event::FileClosed { op: 7 })
    );
    assert_eq!(
        feed(&mut t2, &hex(CLOSE_SESSION_REP), &mut got),
        Some(Event::SessionClosed { op: 8 })
    );
    assert_eq!(
        feed(&mut t2, &hex(QAB_REP), &mut got),
        Some(Event::Allocated {
            op: 9,
            bitmap: vec![5, 0, 0, 0]
        })
    );
    // The op 18 read's two fragments, second first; the op 14 write's ACK.
    let mut t3 = Tracker::new();
    for _ in 0..14 {
        t3.set_res_pool(&mut sink, 1).unwrap();
    }
    let disk: Vec<u8> = (0..129).flat_map(sector).collect();
    assert_eq!(t3.write(&mut sink, H, 0, &disk).unwrap(), 14);
    for _ in 15..18 {
        t3.set_res_pool(&mut sink, 1).unwrap();
    }
    assert_eq!(t3.read(&mut sink, H, 0, 66048).unwrap(), 18);
    let mut got = vec![0u8; 66048];
    assert_eq!(
        feed(&mut t3, &hex(WRITE_129_ACK), &mut got),
        Some(Event::WriteDone { op: 14 })
    );
    assert_eq!(
        feed(
            &mut t3,
            &[hex(READ_129_REP1), disk[65536..].to_vec()].concat(),
            &mut got
        ),
        None
    );
    assert_eq!(
        feed(
            &mut t3,
            &[hex(READ_129_REP0), disk[..65536].to_vec()].concat(),
            &mut got
        ),
        Some(Event::ReadDone { op: 18 })
    );
    assert!(got == disk);
}

// ---- nfc_read.md "Request" (FastLZ): blocks written by the reference
// FastLZ library, which our decoder must read.

const FASTLZ_TEXT: &str =
    "The NFC server answers BANNER with its 220 line; VDDK sends PROXY vpxa-nfc. ";
const FASTLZ_TEXT_L1: &str = "1f546865204e46432073657276657220616e73776572732042414e4e45522077691474682069747320323230206c696e653b205644444b202d156e64732050524f585920767078612d6e66632e205468e0fd4be0fd4be0fd4be0fd4be0fd4be0fd4be0fd4be0fd4be0fd4be0fd4be0fd4be0444b02632e20";
const FASTLZ_TEXT_L2: &str = "3f546865204e46432073657276657220616e73776572732042414e4e45522077691474682069747320323230206c696e653b205644444b202d156e64732050524f585920767078612d6e66632e205468e0ffffffffffffffffffffff914b02632e20";
/// 300 random bytes A, 9000 bytes of 0x11, A again (a far match, level
/// 2), 100 random bytes: 9700 bytes.
const FASTLZ_FAR_L2: &str = "3ff5ad132ea35ca2a507059c0baebceeff54cffb18827b7cc1e5240836b76aa0201f5618dca85d5779c7868dc5e935486f576c408d0dd34a4a5ad37e675580fb45df1f8158f934a77eca1e543151b64c2096f9a216c8ff0a66b98de2678b920c664c1b1f010b30d2eb799bc4a80fc980e88b9c609d25a0acb2b098e0ae15360aaaa275a01fc32c19a92ede096bc619eaeea7035edfd223c94f8fb542dc4d2f6b0851056e901fa494efe90d7f91850ad31ec6cf6b93b2eb67721103ae639897fef0a8fb2779c51f698c1a15a47836e526a0036d0102afab1ffcf7db1637de1f21780446b8913e731fbbbe2fec0c5dc6bfb6b1db25bac2154ba08eb57f75abeee341e9f60db708020f1f03e2a6afd19e14634f4fba992af5dcd57c9b0f505ef293ba7078ad2a25f7cc1d0c5cf4a529a1cd6a7a62c7c97311e0ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff4100ffff24ff04541ff145c8c191554a470f9ff9a6b4cdd39955de9bb9fa03d42699d54f956df9e33f1f6063af609ac5e53bce7348b0005243446c2896ebd0c3e3c80a49d524cfe3defe1f922546f9d9ccce8cafc6e97f5888158a8d7ccc6133c9c0b8eefb3b4f9b0ead650377b534ed";

#[test]
fn fastlz_blocks_of_the_reference_library() {
    let text = FASTLZ_TEXT.repeat(40).into_bytes();
    for (block, level) in [(FASTLZ_TEXT_L1, 1), (FASTLZ_TEXT_L2, 2)] {
        let z = hex(block);
        assert_eq!(z[0] >> 5, level - 1);
        let mut out = vec![0u8; text.len()];
        compress::decompress_fragment(Compression::FastLz, &z, &mut out).unwrap();
        assert!(out == text, "level {level}");
    }
    let mut out = vec![0u8; 9700];
    compress::decompress_fragment(Compression::FastLz, &hex(FASTLZ_FAR_L2), &mut out).unwrap();
    assert_eq!(out[..300], out[9300..9600]);
    assert!(out[300..9300].iter().all(|&b| b == 0x11));
    // zlib fragments start as the captures do.
    let mut z = Vec::new();
    assert_eq!(
        compress::compress_fragment(Compression::Zlib, &text, &mut z),
        Compression::Zlib
    );
    assert_eq!(&z[..2], &[0x78, 0x01]);
}
